//! Judging a version of a node by its merged figures against the node's SLO: a pass, a breach (with
//! the numbers behind it and the constraints a fix must meet), or inconclusive when there were too
//! few requests to say (never a pass, never a fail: Flagger #883, #1689).

use remora_config::control_config::Slo;
use serde::{Deserialize, Serialize};

use crate::ingest::Merged;

/// What was measured, in the units people read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Symptoms {
    pub requests: u64,
    /// Share of requests that succeeded, 0..=1; `None` without requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    pub window_seconds: f64,
}

impl Symptoms {
    pub fn of(merged: Option<&Merged>) -> Self {
        match merged {
            Some(merged) => Self {
                requests: merged.counts.requests,
                success_rate: merged.counts.success_rate(),
                p99_ms: merged.p(0.99),
                window_seconds: merged.span.as_secs_f64(),
            },
            None => Self::default(),
        }
    }

    /// One line: `120 requests, 71.2% ok, p99 912 ms`.
    pub fn line(&self) -> String {
        let rate = self.success_rate.map_or_else(|| "-".to_owned(), |rate| format!("{:.1}%", rate * 100.0));
        let p99 = self.p99_ms.map_or_else(|| "-".to_owned(), |p99| format!("{p99:.0} ms"));
        format!("{} requests, {rate} ok, p99 {p99}", self.requests)
    }
}

/// A judgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Pass {
        symptoms: Symptoms,
    },
    /// The SLO is breached; `constraints` say what a fix must meet and what was measured.
    Breach {
        symptoms: Symptoms,
        constraints: Vec<String>,
    },
    /// Fewer requests than the SLO's `min_requests`.
    Inconclusive {
        symptoms: Symptoms,
        min_requests: u64,
    },
}

impl Verdict {
    pub fn symptoms(&self) -> &Symptoms {
        match self {
            Verdict::Pass { symptoms }
            | Verdict::Breach { symptoms, .. }
            | Verdict::Inconclusive { symptoms, .. } => symptoms,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass { .. } => "pass",
            Verdict::Breach { .. } => "breach",
            Verdict::Inconclusive { .. } => "inconclusive",
        }
    }

    pub fn is_breach(&self) -> bool {
        matches!(self, Verdict::Breach { .. })
    }
}

/// Judges one version's figures against `slo`.
pub fn judge(merged: Option<&Merged>, slo: &Slo) -> Verdict {
    let symptoms = Symptoms::of(merged);
    if symptoms.requests < slo.min_requests {
        return Verdict::Inconclusive { symptoms, min_requests: slo.min_requests };
    }
    let mut constraints = Vec::new();
    if let Some(rate) = symptoms.success_rate {
        if rate < slo.success_rate {
            constraints.push(format!(
                "success rate must be >= {}; measured {}",
                percent(slo.success_rate),
                percent(rate)
            ));
        }
    }
    if let (Some(limit), Some(p99)) = (slo.p99, symptoms.p99_ms) {
        let limit_ms = limit.get().as_secs_f64() * 1000.0;
        if p99 > limit_ms {
            constraints.push(format!("p99 must be <= {limit_ms:.0}ms; measured {p99:.0}ms"));
        }
    }
    if constraints.is_empty() {
        Verdict::Pass { symptoms }
    } else {
        Verdict::Breach { symptoms, constraints }
    }
}

/// How much worse than stable a canary's success rate may be, when both are conclusive, even while
/// it meets the SLO.
pub const CANARY_SUCCESS_MARGIN: f64 = 0.02;

/// Judges a canary: by the SLO, and not worse than the stable version by more than
/// [`CANARY_SUCCESS_MARGIN`] in success rate when the stable version is conclusive and passing (a
/// canary beside a failing stable version is judged by the SLO alone: it may be the fix).
pub fn judge_canary(canary: Option<&Merged>, stable: Option<&Merged>, slo: &Slo) -> Verdict {
    let verdict = judge(canary, slo);
    let Verdict::Pass { symptoms } = &verdict else { return verdict };
    if let (Verdict::Pass { symptoms: stable }, Some(rate)) = (judge(stable, slo), symptoms.success_rate) {
        if let Some(stable_rate) = stable.success_rate {
            if rate + CANARY_SUCCESS_MARGIN < stable_rate {
                return Verdict::Breach {
                    symptoms: symptoms.clone(),
                    constraints: vec![format!(
                        "success rate must be within {} of the stable version's {}; measured {}",
                        percent(CANARY_SUCCESS_MARGIN),
                        percent(stable_rate),
                        percent(rate)
                    )],
                };
            }
        }
    }
    verdict
}

fn percent(share: f64) -> String {
    let value = share * 100.0;
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}%")
    } else {
        format!("{value:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;
    use remora_config::report::Counts;
    use std::time::Duration;

    fn merged(requests: u64, failures: u64, latency_us: u64) -> Merged {
        let mut latency = Histogram::new(3).unwrap();
        for _ in 0..requests {
            latency.record(latency_us).unwrap();
        }
        Merged {
            counts: Counts {
                requests,
                success: requests - failures,
                server_error: failures,
                ..Counts::default()
            },
            latency,
            span: Duration::from_secs(10),
        }
    }

    fn slo(p99_ms: Option<u64>) -> Slo {
        Slo { success_rate: 0.99, p99: p99_ms.map(remora_config::Duration::from_millis), min_requests: 20 }
    }

    #[test]
    fn a_healthy_version_passes() {
        let verdict = judge(Some(&merged(100, 0, 5_000)), &slo(Some(250)));
        assert_eq!(verdict.name(), "pass");
        assert_eq!(verdict.symptoms().requests, 100);
    }

    #[test]
    fn errors_and_latency_breach_with_the_numbers() {
        let Verdict::Breach { constraints, symptoms } =
            judge(Some(&merged(100, 29, 912_000)), &slo(Some(250)))
        else {
            panic!("expected a breach")
        };
        assert_eq!(
            constraints,
            ["success rate must be >= 99%; measured 71%", "p99 must be <= 250ms; measured 912ms"]
        );
        assert_eq!(symptoms.success_rate, Some(0.71));
    }

    #[test]
    fn latency_is_judged_only_with_a_p99_in_the_slo() {
        assert_eq!(judge(Some(&merged(100, 0, 912_000)), &slo(None)).name(), "pass");
    }

    #[test]
    fn too_little_traffic_is_inconclusive_not_a_pass_nor_a_fail() {
        assert_eq!(judge(None, &slo(None)).name(), "inconclusive");
        // 19 failing requests: below min_requests, so no verdict either way.
        assert_eq!(judge(Some(&merged(19, 19, 5_000)), &slo(None)).name(), "inconclusive");
        assert_eq!(judge(Some(&merged(20, 19, 5_000)), &slo(None)).name(), "breach");
    }

    #[test]
    fn a_canary_must_not_fall_behind_a_passing_stable() {
        let slo = Slo { success_rate: 0.9, p99: None, min_requests: 20 };
        let stable = merged(1000, 0, 1_000);
        assert_eq!(judge_canary(Some(&merged(100, 5, 1_000)), Some(&stable), &slo).name(), "breach");
        assert_eq!(judge_canary(Some(&merged(100, 1, 1_000)), Some(&stable), &slo).name(), "pass");
        // Beside a failing stable version, the SLO alone judges the canary.
        let failing = merged(1000, 500, 1_000);
        assert_eq!(judge_canary(Some(&merged(100, 5, 1_000)), Some(&failing), &slo).name(), "pass");
        assert_eq!(judge_canary(None, Some(&stable), &slo).name(), "inconclusive");
    }
}
