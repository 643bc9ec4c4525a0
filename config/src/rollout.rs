//! Wire types of the self-healing loop in control's API: a rollout as shown (`GET /v1/rollouts`), the
//! body that starts one (`POST /v1/rollouts`), and a node's healing ladder as its view shows it.

use serde::{Deserialize, Serialize};

use crate::control::DesiredVersion;

/// `POST /v1/rollouts`: roll `version` of `node`, listening on `endpoints`, out as a canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStart {
    pub node: String,
    pub version: String,
    pub endpoints: Vec<String>,
    /// The canary's share at each step; default the control config's `[rollout] steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<u32>>,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: String,
    pub node: String,
    /// `manual` or `healing`.
    pub origin: String,
    /// `progressing`, `paused`, `promoting`, `succeeded`, `rolled_back` or `failed`.
    pub phase: String,
    pub stable: DesiredVersion,
    pub canary: DesiredVersion,
    /// The canary's share of the node's traffic now, in percent.
    pub weight: u32,
    /// The current step (0-based) of `steps`.
    pub step: usize,
    pub steps: Vec<u32>,
    pub failed_checks: u32,
    pub max_failed_checks: u32,
    pub started_unix_ms: u64,
    pub step_started_unix_ms: u64,
    pub step_interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The desired-state revision of the latest weight change, and whether every proxy applied it.
    pub revision: u64,
    pub acked: bool,
    /// The latest judgement of the canary and of the stable version beside it (`verdict`,
    /// `symptoms`, `constraints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_verdict: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_verdict: Option<serde_json::Value>,
}

/// A node's place on its healing ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealingView {
    /// `healthy`, `remediating`, `cooling_down`, `regenerating`, `canary` or `held`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix_ms: Option<u64>,
    /// Why it is held, or what the current step is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Breached windows in a row (while healthy).
    #[serde(default)]
    pub breaches: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_body_round_trips_and_refuses_unknown_fields() {
        let start: RolloutStart =
            serde_json::from_str(r#"{"node":"n","version":"v2","endpoints":["127.0.0.1:1"]}"#).unwrap();
        assert_eq!(start.steps, None);
        let back: RolloutStart = serde_json::from_value(serde_json::to_value(&start).unwrap()).unwrap();
        assert_eq!(back, start);
        assert!(serde_json::from_str::<RolloutStart>(r#"{"node":"n","version":"v2","endpoints":[],"x":1}"#)
            .is_err());
        assert!(serde_json::from_str::<RolloutStart>(r#"{"node":"n","endpoints":[]}"#).is_err());
    }
}
