//! A node's healing ladder: healthy → degraded → remediating → (cool-down) → regenerating → canary →
//! healthy again, or held in a safe state (traffic on the last good version) when a step cannot go on.
//! Plain data and pure transitions; the engine (`engine.rs`) runs the hooks and the rollouts.

use serde::{Deserialize, Serialize};

use crate::analysis::{Symptoms, Verdict};

/// Where a node is on its ladder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Ladder {
    /// Judged every interval; `breaches` breached windows in a row so far.
    Watching { breaches: u32 },
    /// The remediate hook is running.
    Remediating { since_unix_ms: u64, symptoms: Symptoms, constraints: Vec<String> },
    /// The remedy ran; the node gets until `until_unix_ms` to recover.
    CoolingDown { since_unix_ms: u64, until_unix_ms: u64, symptoms: Symptoms, constraints: Vec<String> },
    /// The regenerate hook is running.
    Regenerating { since_unix_ms: u64, symptoms: Symptoms, constraints: Vec<String> },
    /// A regenerated version is being rolled out.
    Canary { since_unix_ms: u64, rollout: String, version: String },
    /// Stopped in a safe state: traffic stays on the last good version until the node recovers by
    /// itself (judged healthy `breach_windows` times in a row) or an operator rolls a version out.
    Held { since_unix_ms: u64, reason: String, recoveries: u32 },
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder::Watching { breaches: 0 }
    }
}

impl Ladder {
    pub fn name(&self) -> &'static str {
        match self {
            Ladder::Watching { .. } => "healthy",
            Ladder::Remediating { .. } => "remediating",
            Ladder::CoolingDown { .. } => "cooling_down",
            Ladder::Regenerating { .. } => "regenerating",
            Ladder::Canary { .. } => "canary",
            Ladder::Held { .. } => "held",
        }
    }

    /// Whether the node counts as degraded while here.
    pub fn degraded(&self, breach_windows: u32) -> bool {
        match self {
            Ladder::Watching { breaches } => *breaches >= breach_windows,
            _ => true,
        }
    }
}

/// What the engine must do after a judgement of the serving version.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Nothing,
    /// A breached window, not yet enough in a row.
    Breached {
        breaches: u32,
    },
    /// Enough breaches in a row: the node is degraded; climb the ladder.
    Degraded {
        symptoms: Symptoms,
        constraints: Vec<String>,
    },
    /// A breach after a streak of passes ended: the count starts over.
    Recovered {
        from: &'static str,
    },
    /// The cool-down is over and the node is still breaching: regenerate.
    StillDegraded {
        symptoms: Symptoms,
        constraints: Vec<String>,
    },
}

/// Judges the serving version while no rollout runs. While cooling down, `verdict` must judge only the
/// traffic since the remedy.
pub fn judge(ladder: &mut Ladder, verdict: &Verdict, now: u64, breach_windows: u32) -> Step {
    match ladder {
        Ladder::Watching { breaches } => match verdict {
            Verdict::Breach { symptoms, constraints } => {
                *breaches += 1;
                // `>=`: a count stored under a larger `breach_windows` still degrades.
                if *breaches >= breach_windows {
                    Step::Degraded { symptoms: symptoms.clone(), constraints: constraints.clone() }
                } else {
                    Step::Breached { breaches: *breaches }
                }
            }
            Verdict::Pass { .. } => {
                let was = *breaches;
                *breaches = 0;
                if was > 0 {
                    Step::Recovered { from: "breaching" }
                } else {
                    Step::Nothing
                }
            }
            // Too little traffic says nothing: the streak neither grows nor ends.
            Verdict::Inconclusive { .. } => Step::Nothing,
        },
        Ladder::CoolingDown { until_unix_ms, .. } if now >= *until_unix_ms => match verdict {
            Verdict::Pass { .. } => {
                *ladder = Ladder::Watching { breaches: 0 };
                Step::Recovered { from: "cooling_down" }
            }
            Verdict::Breach { symptoms, constraints } => {
                Step::StillDegraded { symptoms: symptoms.clone(), constraints: constraints.clone() }
            }
            Verdict::Inconclusive { .. } => Step::Nothing,
        },
        Ladder::Held { recoveries, .. } => match verdict {
            Verdict::Pass { .. } => {
                *recoveries += 1;
                if *recoveries >= breach_windows {
                    *ladder = Ladder::Watching { breaches: 0 };
                    Step::Recovered { from: "held" }
                } else {
                    Step::Nothing
                }
            }
            Verdict::Breach { .. } => {
                *recoveries = 0;
                Step::Nothing
            }
            Verdict::Inconclusive { .. } => Step::Nothing,
        },
        _ => Step::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breach() -> Verdict {
        Verdict::Breach { symptoms: Symptoms::default(), constraints: vec!["p99 must be <= 250ms".into()] }
    }

    fn pass() -> Verdict {
        Verdict::Pass { symptoms: Symptoms::default() }
    }

    fn inconclusive() -> Verdict {
        Verdict::Inconclusive { symptoms: Symptoms::default(), min_requests: 20 }
    }

    #[test]
    fn breach_windows_in_a_row_make_a_node_degraded() {
        let mut ladder = Ladder::default();
        assert_eq!(judge(&mut ladder, &breach(), 0, 3), Step::Breached { breaches: 1 });
        assert_eq!(judge(&mut ladder, &inconclusive(), 0, 3), Step::Nothing, "no traffic: no verdict");
        assert_eq!(judge(&mut ladder, &breach(), 0, 3), Step::Breached { breaches: 2 });
        assert_eq!(judge(&mut ladder, &pass(), 0, 3), Step::Recovered { from: "breaching" });
        assert!(!ladder.degraded(3));
        for expected in [1, 2] {
            assert_eq!(judge(&mut ladder, &breach(), 0, 3), Step::Breached { breaches: expected });
        }
        assert!(matches!(judge(&mut ladder, &breach(), 0, 3), Step::Degraded { .. }));
        assert!(ladder.degraded(3));
    }

    #[test]
    fn a_cool_down_ends_in_recovery_or_regeneration() {
        let cooling = Ladder::CoolingDown {
            since_unix_ms: 0,
            until_unix_ms: 5_000,
            symptoms: Symptoms::default(),
            constraints: vec![],
        };
        let mut ladder = cooling.clone();
        assert_eq!(judge(&mut ladder, &breach(), 4_999, 3), Step::Nothing, "still cooling down");
        assert!(matches!(judge(&mut ladder, &breach(), 5_000, 3), Step::StillDegraded { .. }));
        let mut ladder = cooling;
        assert_eq!(judge(&mut ladder, &pass(), 5_000, 3), Step::Recovered { from: "cooling_down" });
        assert_eq!(ladder, Ladder::Watching { breaches: 0 });
    }

    #[test]
    fn a_held_node_is_released_only_by_passes_in_a_row() {
        let mut ladder = Ladder::Held { since_unix_ms: 0, reason: "hook timed out".into(), recoveries: 0 };
        assert_eq!(judge(&mut ladder, &pass(), 0, 2), Step::Nothing);
        assert_eq!(judge(&mut ladder, &breach(), 0, 2), Step::Nothing);
        assert_eq!(judge(&mut ladder, &pass(), 0, 2), Step::Nothing);
        assert_eq!(judge(&mut ladder, &pass(), 0, 2), Step::Recovered { from: "held" });
        assert_eq!(ladder, Ladder::Watching { breaches: 0 });
    }

    #[test]
    fn hooks_and_canaries_are_not_interrupted_by_verdicts() {
        for mut ladder in [
            Ladder::Remediating { since_unix_ms: 0, symptoms: Symptoms::default(), constraints: vec![] },
            Ladder::Regenerating { since_unix_ms: 0, symptoms: Symptoms::default(), constraints: vec![] },
            Ladder::Canary { since_unix_ms: 0, rollout: "r".into(), version: "v2".into() },
        ] {
            let before = ladder.clone();
            assert_eq!(judge(&mut ladder, &pass(), 0, 1), Step::Nothing);
            assert_eq!(judge(&mut ladder, &breach(), 0, 1), Step::Nothing);
            assert_eq!(ladder, before);
        }
    }
}
