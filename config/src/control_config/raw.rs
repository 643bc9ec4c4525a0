//! The control file's shape, key for key as `shared/CONFIG.md` writes it. Every struct refuses unknown
//! keys. Parts that can each be wrong on their own (a node's `slo` and each of its hooks, each rollout
//! step) stay as raw values here and are read one by one in `validate`, so that one mistake does not
//! hide the next and each error gets its own path.

use figment::value::Value;
use serde::Deserialize;

use crate::Duration;

/// Top-level keys, for unknown-key suggestions (`listen`, `store` and `token_file` are plain values).
pub const TOP_LEVEL_KEYS: &[&str] = &["listen", "store", "token_file", "analysis", "rollout", "nodes"];

/// The sections, whose keys come from `REMORA_<SECTION>__<KEY>`.
pub const SECTIONS: &[&str] = &["analysis", "rollout"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub interval: Option<Duration>,
    pub window: Option<Duration>,
    pub breach_windows: Option<u32>,
    pub cooldown: Option<Duration>,
    pub held_retry: Option<Duration>,
    pub held_retry_max: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub steps: Option<Vec<Value>>,
    pub step_interval: Option<Duration>,
    pub max_failed_checks: Option<u32>,
    pub progress_deadline: Option<Duration>,
}

/// One `[[nodes]]` element.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    /// A [`RawSlo`].
    pub slo: Option<Value>,
    /// A [`RawHooks`].
    pub hooks: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    pub success_rate: Option<f64>,
    pub p99: Option<Duration>,
    pub min_requests: Option<u64>,
}

/// Each hook is a [`RawHook`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub remediate: Option<Value>,
    pub regenerate: Option<Value>,
    pub retire: Option<Value>,
}

/// `{ url = "http://…", timeout = "5s" }` or `{ command = ["prog", "arg"], timeout = "2m" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub url: Option<String>,
    /// A list of strings; read by hand so that a single string gets a useful message.
    pub command: Option<Value>,
    pub timeout: Option<Duration>,
}
