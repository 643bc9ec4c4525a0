//! One rollout's state and its decisions (Flagger/Argo semantics): the canary takes each step's share
//! of the node's traffic, holds it for `step_interval` while analysis judges it against the stable
//! version, and moves on, is promoted after the last step, or is rolled back once `max_failed_checks`
//! checks failed or no step was passed within `progress_deadline`.
//!
//! The state is plain data (stored as JSON, so a restarted control resumes it) and [`Rollout::check`]
//! is a pure function of it, a verdict and the time: the engine (`engine.rs`) carries the decisions
//! out (desired state, journal, hooks).

use remora_config::control::{DesiredSplit, DesiredVersion};
use remora_config::control_config;
use serde::{Deserialize, Serialize};

use crate::analysis::Verdict;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Taking steps.
    Progressing,
    /// Held on its step by an operator; the deadline does not run.
    Paused,
    /// All traffic is going to the canary, which becomes stable once every proxy has it.
    Promoting,
    /// The canary is the stable version.
    Succeeded,
    /// The canary failed its checks (or an operator aborted): its weight is 0.
    RolledBack,
    /// The rollout could not be carried out (no conclusive analysis before the deadline): its weight
    /// is 0.
    Failed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoting => "promoting",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
        }
    }

    /// Still under way (the node has an active rollout).
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Progressing | Phase::Paused | Phase::Promoting)
    }
}

/// Who started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `remora rollout start` or the API.
    Manual,
    /// The healing ladder, with a regenerated version.
    Healing,
}

/// The settings a rollout runs by (from `[rollout]` and `[analysis] interval`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub steps: Vec<u32>,
    pub step_interval_ms: u64,
    pub max_failed_checks: u32,
    pub progress_deadline_ms: u64,
    /// Checks are counted at most once per analysis interval.
    pub check_interval_ms: u64,
}

impl Settings {
    pub fn new(rollout: &control_config::Rollout, analysis: &control_config::Analysis) -> Self {
        Self {
            steps: rollout.steps.clone(),
            step_interval_ms: millis(rollout.step_interval.get()),
            max_failed_checks: rollout.max_failed_checks.max(1),
            progress_deadline_ms: millis(rollout.progress_deadline.get()),
            check_interval_ms: millis(analysis.interval.get()),
        }
    }
}

pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A rollout, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub node: String,
    pub origin: Origin,
    /// Ties the rollout's journal entries together (the healing episode's, for a regenerated version).
    #[serde(default)]
    pub trace_id: String,
    pub stable: DesiredVersion,
    pub canary: DesiredVersion,
    pub settings: Settings,
    pub phase: Phase,
    /// Index into `settings.steps` of the current step.
    pub step: usize,
    pub failed_checks: u32,
    pub started_unix_ms: u64,
    pub step_started_unix_ms: u64,
    /// When the last counted check was made (0: none yet).
    pub last_check_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    /// Why it ended, or why it is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The desired-state revision of the latest weight change, when it was pushed, and when every
    /// proxy had applied it.
    pub revision: u64,
    pub pushed_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_unix_ms: Option<u64>,
    /// The latest verdict on the canary (and the stable version beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_verdict: Option<Verdict>,
    /// A split the store refused to take (journal kind and detail): pushed again on every pass until
    /// it is taken, and nothing is acked or judged meanwhile, so control and the proxies never
    /// disagree for good about where the traffic goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpushed: Option<(String, serde_json::Value)>,
}

/// What a check decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do now.
    Hold,
    /// A check failed but fewer than `max_failed_checks` so far.
    FailedCheck { failed: u32, constraints: Vec<String> },
    /// On to the next step.
    Advance,
    /// The last step held: all traffic to the canary.
    Promote,
    /// Back to the stable version: the checks failed.
    RollBack { reason: String },
    /// Back to the stable version: the deadline passed without progress.
    Fail { reason: String },
}

impl Rollout {
    pub fn new(
        id: String,
        node: String,
        origin: Origin,
        stable: DesiredVersion,
        canary: DesiredVersion,
        settings: Settings,
        now: u64,
    ) -> Self {
        Self {
            id,
            node,
            origin,
            trace_id: String::new(),
            stable,
            canary,
            settings,
            phase: Phase::Progressing,
            step: 0,
            failed_checks: 0,
            started_unix_ms: now,
            step_started_unix_ms: now,
            last_check_unix_ms: 0,
            finished_unix_ms: None,
            reason: None,
            revision: 0,
            pushed_unix_ms: now,
            acked_unix_ms: None,
            last_verdict: None,
            stable_verdict: None,
            unpushed: None,
        }
    }

    /// The canary's share now, in percent.
    pub fn weight(&self) -> u32 {
        match self.phase {
            Phase::Progressing | Phase::Paused => self.settings.steps.get(self.step).copied().unwrap_or(100),
            Phase::Promoting | Phase::Succeeded => 100,
            Phase::RolledBack | Phase::Failed => 0,
        }
    }

    /// The node's traffic as this rollout wants it now.
    pub fn split(&self) -> DesiredSplit {
        match self.phase {
            Phase::Progressing | Phase::Paused => DesiredSplit {
                stable: self.stable.clone(),
                canary: Some(self.canary.clone()),
                canary_weight: self.weight(),
            },
            Phase::Promoting | Phase::Succeeded => {
                DesiredSplit { stable: self.canary.clone(), canary: None, canary_weight: 0 }
            }
            Phase::RolledBack | Phase::Failed => {
                DesiredSplit { stable: self.stable.clone(), canary: None, canary_weight: 0 }
            }
        }
    }

    /// Judges the canary (`verdict`, over the current step's traffic) at `now`.
    pub fn check(&mut self, verdict: Verdict, now: u64) -> Decision {
        if self.phase != Phase::Progressing {
            return Decision::Hold;
        }
        let settings = &self.settings;
        if now.saturating_sub(self.step_started_unix_ms) >= settings.progress_deadline_ms {
            return Decision::Fail {
                reason: format!(
                    "no step passed within the progress deadline ({} s): {} at {}%",
                    settings.progress_deadline_ms / 1000,
                    verdict_line(&verdict),
                    self.weight()
                ),
            };
        }
        // One counted check per analysis interval: reports arriving in between are judged but not
        // counted again, except that the first failure after a counted pass counts at once.
        let due = now.saturating_sub(self.last_check_unix_ms) >= settings.check_interval_ms;
        let decision = match &verdict {
            Verdict::Breach { constraints, .. } if due || self.failed_checks == 0 => {
                self.last_check_unix_ms = now;
                self.failed_checks += 1;
                if self.failed_checks >= settings.max_failed_checks {
                    Decision::RollBack {
                        reason: format!(
                            "{} of {} checks failed at {}%: {}",
                            self.failed_checks,
                            settings.max_failed_checks,
                            self.weight(),
                            constraints.join("; ")
                        ),
                    }
                } else {
                    Decision::FailedCheck { failed: self.failed_checks, constraints: constraints.clone() }
                }
            }
            Verdict::Pass { .. } if due => {
                self.last_check_unix_ms = now;
                // Beside a stable version that breaches its SLO, a passing canary moves on at this
                // check: the step interval is for comparing two healthy versions, and waiting on a
                // failing one only fails more requests. Each step still needs its own passing traffic.
                let stable_failing = matches!(self.stable_verdict, Some(Verdict::Breach { .. }));
                let held = stable_failing
                    || now.saturating_sub(self.step_started_unix_ms) >= settings.step_interval_ms;
                if !held {
                    Decision::Hold
                } else if self.step + 1 >= settings.steps.len() {
                    Decision::Promote
                } else {
                    Decision::Advance
                }
            }
            _ => Decision::Hold,
        };
        self.last_verdict = Some(verdict);
        decision
    }

    /// Applies a decision to the state (the engine pushes the new split afterwards).
    pub fn apply(&mut self, decision: &Decision, now: u64) {
        match decision {
            Decision::Hold | Decision::FailedCheck { .. } => {}
            Decision::Advance => {
                self.step += 1;
                self.step_started_unix_ms = now;
            }
            Decision::Promote => self.phase = Phase::Promoting,
            Decision::RollBack { reason } => self.finish(Phase::RolledBack, reason.clone(), now),
            Decision::Fail { reason } => self.finish(Phase::Failed, reason.clone(), now),
        }
    }

    pub fn finish(&mut self, phase: Phase, reason: String, now: u64) {
        self.phase = phase;
        self.reason = Some(reason);
        self.finished_unix_ms = Some(now);
    }

    pub fn pause(&mut self, reason: String) -> Result<(), String> {
        match self.phase {
            Phase::Progressing => {
                self.phase = Phase::Paused;
                self.reason = Some(reason);
                Ok(())
            }
            phase => Err(format!("a {} rollout cannot be paused", phase.name())),
        }
    }

    /// Resumes a paused rollout: its step starts over (the deadline too).
    pub fn resume(&mut self, now: u64) -> Result<(), String> {
        match self.phase {
            Phase::Paused => {
                self.phase = Phase::Progressing;
                self.reason = None;
                self.step_started_unix_ms = now;
                Ok(())
            }
            phase => Err(format!("a {} rollout cannot be resumed", phase.name())),
        }
    }

    /// After a control restart: an active step starts over (its traffic was not watched meanwhile),
    /// a paused rollout stays paused, promotion goes on.
    pub fn resumed_after_restart(&mut self, now: u64) {
        if self.phase == Phase::Progressing {
            self.step_started_unix_ms = now;
            self.last_check_unix_ms = 0;
        }
        self.acked_unix_ms = None;
        self.pushed_unix_ms = now;
    }
}

fn verdict_line(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Inconclusive { symptoms, min_requests } => {
            format!("inconclusive ({} requests, {min_requests} needed)", symptoms.requests)
        }
        other => format!("{} ({})", other.name(), other.symptoms().line()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Symptoms;

    fn version(name: &str) -> DesiredVersion {
        DesiredVersion { version: name.into(), endpoints: vec![] }
    }

    fn rollout(max_failed_checks: u32) -> Rollout {
        let settings = Settings {
            steps: vec![10, 50, 100],
            step_interval_ms: 3_000,
            max_failed_checks,
            progress_deadline_ms: 20_000,
            check_interval_ms: 1_000,
        };
        Rollout::new("r".into(), "n".into(), Origin::Manual, version("v1"), version("v2"), settings, 0)
    }

    fn pass() -> Verdict {
        Verdict::Pass { symptoms: Symptoms { requests: 100, success_rate: Some(1.0), ..Symptoms::default() } }
    }

    fn breach() -> Verdict {
        Verdict::Breach {
            symptoms: Symptoms::default(),
            constraints: vec!["success rate must be >= 99%".into()],
        }
    }

    fn inconclusive() -> Verdict {
        Verdict::Inconclusive { symptoms: Symptoms::default(), min_requests: 20 }
    }

    fn run(rollout: &mut Rollout, verdict: Verdict, now: u64) -> Decision {
        let decision = rollout.check(verdict, now);
        rollout.apply(&decision, now);
        decision
    }

    #[test]
    fn passing_steps_advance_after_the_step_interval_and_promote_after_the_last() {
        let mut rollout = rollout(1);
        assert_eq!(rollout.split().canary_weight, 10);
        assert_eq!(run(&mut rollout, pass(), 1_000), Decision::Hold);
        assert_eq!(run(&mut rollout, pass(), 2_000), Decision::Hold);
        assert_eq!(run(&mut rollout, pass(), 3_000), Decision::Advance);
        assert_eq!(rollout.weight(), 50);
        assert_eq!(run(&mut rollout, pass(), 6_000), Decision::Advance);
        assert_eq!(rollout.weight(), 100);
        assert_eq!(run(&mut rollout, pass(), 9_000), Decision::Promote);
        assert_eq!(rollout.phase, Phase::Promoting);
        let split = rollout.split();
        assert_eq!((split.stable.version.as_str(), split.canary), ("v2", None));
    }

    #[test]
    fn beside_a_failing_stable_version_a_passing_canary_moves_on_at_each_check() {
        let mut hurried = rollout(1);
        hurried.stable_verdict = Some(breach());
        assert_eq!(run(&mut hurried, pass(), 1_000), Decision::Advance);
        assert_eq!(hurried.weight(), 50);
        // Still one counted check per interval: a report in between does not advance again.
        assert_eq!(run(&mut hurried, pass(), 1_500), Decision::Hold);
        // The new step needs its own passing traffic.
        assert_eq!(run(&mut hurried, inconclusive(), 2_000), Decision::Hold);
        assert_eq!(run(&mut hurried, pass(), 3_000), Decision::Advance);
        assert_eq!(run(&mut hurried, pass(), 4_000), Decision::Promote);
        // A stable version without enough traffic to judge is no reason to hurry.
        let mut calm = rollout(1);
        calm.stable_verdict = Some(inconclusive());
        assert_eq!(run(&mut calm, pass(), 1_000), Decision::Hold);
    }

    #[test]
    fn a_failed_check_rolls_back_at_once_with_the_constraint() {
        let mut rollout = rollout(1);
        let Decision::RollBack { reason } = run(&mut rollout, breach(), 500) else { panic!() };
        assert!(reason.contains("1 of 1 checks failed at 10%: success rate"), "{reason}");
        assert_eq!(rollout.phase, Phase::RolledBack);
        let split = rollout.split();
        assert_eq!((split.stable.version.as_str(), split.canary, split.canary_weight), ("v1", None, 0));
    }

    #[test]
    fn failed_checks_count_once_per_interval() {
        let mut rollout = rollout(2);
        assert!(matches!(run(&mut rollout, breach(), 1_000), Decision::FailedCheck { failed: 1, .. }));
        // Another report within the same interval: judged, not counted.
        assert_eq!(run(&mut rollout, breach(), 1_500), Decision::Hold);
        assert!(matches!(run(&mut rollout, breach(), 2_000), Decision::RollBack { .. }));
    }

    #[test]
    fn inconclusive_never_passes_and_the_deadline_fails_the_rollout() {
        let mut rollout = rollout(1);
        for now in (1_000..20_000).step_by(1_000) {
            assert_eq!(run(&mut rollout, inconclusive(), now), Decision::Hold, "at {now}");
        }
        assert_eq!(rollout.weight(), 10, "never promoted without traffic");
        let Decision::Fail { reason } = run(&mut rollout, inconclusive(), 20_000) else { panic!() };
        assert!(reason.contains("inconclusive (0 requests, 20 needed) at 10%"), "{reason}");
        assert_eq!(rollout.phase, Phase::Failed);
        assert_eq!(rollout.weight(), 0);
    }

    #[test]
    fn paused_rollouts_hold_and_resume_starts_the_step_over() {
        let mut rollout = rollout(1);
        rollout.pause("operator".into()).unwrap();
        assert_eq!(run(&mut rollout, breach(), 1_000), Decision::Hold);
        assert_eq!(run(&mut rollout, pass(), 30_000), Decision::Hold, "no deadline while paused");
        assert!(rollout.pause("again".into()).is_err());
        rollout.resume(30_000).unwrap();
        assert_eq!(run(&mut rollout, pass(), 31_000), Decision::Hold);
        assert_eq!(run(&mut rollout, pass(), 33_000), Decision::Advance);
        assert!(rollout.resume(33_000).is_err());
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut rollout = rollout(1);
        run(&mut rollout, pass(), 1_000);
        let json = serde_json::to_value(&rollout).unwrap();
        assert_eq!(serde_json::from_value::<Rollout>(json).unwrap(), rollout);
    }
}
