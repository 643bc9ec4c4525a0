//! The self-healing loop: every analysis interval each node's serving version is judged and its
//! healing ladder climbed (remedy, cool-down, regeneration) through its hooks; rollouts are judged
//! as soon as reports arrive, and their decisions carried out as desired state (pushed to every proxy
//! at once through the long-poll) with a journal entry, written in one transaction.
//!
//! State: each node's ladder is stored when it changes and a restarted control takes it up where it
//! was (held stays held, a cool-down runs out, breaches keep counting), except that a step waiting
//! for a hook whose answer was lost with the old process cannot go on: a remedy under way starts the
//! episode over (the node is detected again and the remedy called again), a regeneration under way
//! holds the node (its new version may exist somewhere; an operator decides). Rollouts are stored
//! after every change and a restarted control resumes them: an active step starts over (its traffic
//! was not judged meanwhile), paused stays paused, promotion goes on. The proxies keep the last
//! split they applied while control is away, so traffic never moves without control.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use remora_config::control::DesiredVersion;
use remora_config::control_config::{ControlConfig, Hook};
use remora_config::rollout::{HealingView, RolloutStart, RolloutView};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::analysis;
use crate::healing::{self, Ladder, Step};
use crate::hooks::{self, HookError, HookKind};
use crate::rollout::{Decision, Origin, Phase, Rollout, Settings};
use crate::service::{new_trace_id, now_ms, Refusal, Service};
use crate::store::{LadderRecord, RolloutRecord, StoreError};

pub struct Engine {
    service: Arc<Service>,
    config: ControlConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    ladders: BTreeMap<String, Episode>,
    /// Per node, its latest rollout (under way or finished).
    rollouts: BTreeMap<String, Rollout>,
    /// Per node, its episode as last written to the store.
    stored: BTreeMap<String, Episode>,
}

/// A node's ladder and the trace id that ties the journal entries of one episode together.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Episode {
    ladder: Ladder,
    trace_id: String,
    /// When the node was found degraded (for "time to recover").
    degraded_unix_ms: Option<u64>,
    /// Automatic retries (`held_retry`) since the node last recovered or an operator stepped in: each
    /// doubles the wait before the next.
    #[serde(default)]
    auto_retries: u32,
}

/// How long a node held after `retries` automatic retries waits before the next: `base` doubled per
/// retry, at most `max` (never less than `base`).
fn held_wait(base_ms: u64, max_ms: u64, retries: u32) -> u64 {
    let doubled = base_ms.saturating_mul(1u64.checked_shl(retries).unwrap_or(u64::MAX));
    doubled.min(max_ms.max(base_ms))
}

impl Engine {
    /// The engine, with the stored ladders taken up and the stored rollouts resumed.
    pub fn new(service: Arc<Service>, config: ControlConfig) -> Result<Self, StoreError> {
        let engine = Self { service, config, state: Mutex::default() };
        let now = now_ms();
        engine.take_up_ladders(now)?;
        let mut latest: BTreeMap<String, Rollout> = BTreeMap::new();
        for record in engine.service.store().rollouts()? {
            match serde_json::from_value::<Rollout>(record.state) {
                Ok(rollout) => {
                    let newer = latest
                        .get(&rollout.node)
                        .is_none_or(|known| known.started_unix_ms <= rollout.started_unix_ms);
                    if newer {
                        latest.insert(rollout.node.clone(), rollout);
                    }
                }
                Err(error) => {
                    tracing::error!(id = record.id, %error, "a stored rollout cannot be read; left alone")
                }
            }
        }
        {
            let mut state = engine.lock();
            for (node, mut rollout) in latest {
                if rollout.phase.is_active() {
                    rollout.resumed_after_restart(now);
                    let detail = json!({
                        "id": rollout.id, "phase": rollout.phase.name(), "weight": rollout.weight(),
                        "reason": "control restarted: the step starts over",
                    });
                    engine.journal("rollout_resumed", &node, &trace_of(&rollout), detail);
                    if rollout.origin == Origin::Healing {
                        let episode = state.ladders.entry(node.clone()).or_default();
                        episode.trace_id = trace_of(&rollout);
                        episode.ladder = Ladder::Canary {
                            since_unix_ms: rollout.started_unix_ms,
                            rollout: rollout.id.clone(),
                            version: rollout.canary.version.clone(),
                        };
                    }
                    engine.save(&rollout);
                }
                state.rollouts.insert(node, rollout);
            }
            let nodes: Vec<String> = state.rollouts.keys().cloned().collect();
            for node in nodes {
                engine.show(&mut state, &node);
            }
        }
        Ok(engine)
    }

    /// Judges every interval, and rollouts whenever reports arrive, until `stop` changes.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.config.analysis.interval.get());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.tick(true),
                () = self.service.reported.notified() => self.tick(false),
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass: rollouts always; ladders on the interval's tick (`full`).
    pub fn tick(self: &Arc<Self>, full: bool) {
        let now = now_ms();
        let mut state = self.lock();
        for node in self.service.node_names() {
            let (active, unacked) = state.rollouts.get(&node).map_or((false, false), |rollout| {
                (rollout.phase.is_active(), rollout.acked_unix_ms.is_none())
            });
            if active || unacked {
                // A finished rollout is still watched until every proxy has applied its last split.
                self.judge_rollout(&mut state, &node, now);
            }
            if !active && full {
                self.climb(&mut state, &node, now);
            }
            self.show(&mut state, &node);
        }
    }

    // ---- the healing ladder ----

    fn climb(self: &Arc<Self>, state: &mut State, node: &str, now: u64) {
        let Ok(serving) = self.service.serving(node) else { return };
        // `held_retry`: a node held that long tries its healing again by itself, each time waiting
        // twice as long as before (up to `held_retry_max`) while its healing keeps ending held.
        let analysis = &self.config.analysis;
        let held_retry = crate::rollout::millis(analysis.held_retry.get());
        let held = match state.ladders.get(node) {
            Some(Episode { ladder: Ladder::Held { since_unix_ms, .. }, auto_retries, .. }) => {
                Some((*since_unix_ms, *auto_retries))
            }
            _ => None,
        };
        if let Some((since, retries)) = held.filter(|_| held_retry > 0) {
            let wait = held_wait(held_retry, crate::rollout::millis(analysis.held_retry_max.get()), retries);
            if now.saturating_sub(since) >= wait {
                if let Some(episode) = state.ladders.get_mut(node) {
                    episode.auto_retries = retries.saturating_add(1);
                }
                let detail =
                    json!({ "by": "control", "held_retry_ms": wait, "attempt": retries.saturating_add(1) });
                self.release(state, node, detail);
            }
        }
        let slo = self.config.slo(node);
        let breach_windows = self.config.analysis.breach_windows;
        let episode = state.ladders.entry(node.to_owned()).or_default();
        let since = match &episode.ladder {
            Ladder::CoolingDown { since_unix_ms, .. } => *since_unix_ms,
            _ => 0,
        };
        let merged = self.service.merged_since(node, since, now);
        let verdict = analysis::judge(merged.get(&serving.version), &slo);
        let from = episode.ladder.name();
        match healing::judge(&mut episode.ladder, &verdict, now, breach_windows) {
            Step::Nothing => {}
            Step::Breached { breaches } => {
                tracing::debug!(node, breaches, symptoms = verdict.symptoms().line(), "window breached");
            }
            // Breaches that never made the node degraded: nothing to undo. (A node released from
            // held comes back one breach short of degraded, still in its episode: its recovery is
            // the episode's end like any other.)
            Step::Recovered { from: "breaching" } if episode.degraded_unix_ms.is_none() => {}
            Step::Recovered { from } => {
                let trace = episode.trace_id.clone();
                episode.degraded_unix_ms = None;
                episode.auto_retries = 0;
                self.journal(
                    "recovered",
                    node,
                    &trace,
                    json!({ "from": from, "version": serving.version, "symptoms": verdict.symptoms() }),
                );
                self.set_degraded(node, false, &format!("recovered while {from}"), &trace);
            }
            Step::Degraded { symptoms, constraints } => {
                episode.trace_id = new_trace_id();
                episode.degraded_unix_ms = Some(now);
                let trace = episode.trace_id.clone();
                let detail = json!({
                    "version": serving.version, "symptoms": symptoms, "constraints": constraints,
                    "breach_windows": breach_windows, "from": from,
                });
                self.journal("degraded", node, &trace, detail);
                self.set_degraded(node, true, &constraints.join("; "), &trace);
                self.call(state, HookKind::Remediate, node, &serving, symptoms, constraints, now);
            }
            Step::StillDegraded { symptoms, constraints } => {
                let trace = episode.trace_id.clone();
                let detail =
                    json!({ "version": serving.version, "symptoms": symptoms, "constraints": constraints });
                self.journal("remedy_did_not_help", node, &trace, detail);
                self.call(state, HookKind::Regenerate, node, &serving, symptoms, constraints, now);
            }
        }
    }

    /// The next rung: the remediate hook (without one, regenerate), or the regenerate hook (without
    /// one, held). `kind` is Remediate or Regenerate.
    #[allow(clippy::too_many_arguments)]
    fn call(
        self: &Arc<Self>,
        state: &mut State,
        kind: HookKind,
        node: &str,
        serving: &DesiredVersion,
        symptoms: analysis::Symptoms,
        constraints: Vec<String>,
        now: u64,
    ) {
        let Some(hook) = self.hook(node, kind) else {
            return match kind {
                HookKind::Remediate => {
                    self.call(state, HookKind::Regenerate, node, serving, symptoms, constraints, now)
                }
                _ => self.hold(state, node, "degraded and no regenerate hook is configured".into(), now),
            };
        };
        let episode = state.ladders.entry(node.to_owned()).or_default();
        let input = self.hook_input(kind, node, serving, &symptoms, &constraints);
        let (ladder, entry) = match kind {
            HookKind::Remediate => {
                (Ladder::Remediating { since_unix_ms: now, symptoms, constraints }, "remediating")
            }
            _ => (Ladder::Regenerating { since_unix_ms: now, symptoms, constraints }, "regenerating"),
        };
        episode.ladder = ladder;
        let trace = episode.trace_id.clone();
        self.journal(entry, node, &trace, json!({ "hook": describe(&hook), "input": input }));
        self.spawn_hook(node, kind, hook, input);
    }

    /// Stops the ladder in its safe state: traffic stays where it is (the last good version).
    fn hold(&self, state: &mut State, node: &str, reason: String, now: u64) {
        let episode = state.ladders.entry(node.to_owned()).or_default();
        episode.ladder = Ladder::Held { since_unix_ms: now, reason: reason.clone(), recoveries: 0 };
        let serving = self.service.serving(node).map(|serving| serving.version).unwrap_or_default();
        let trace = episode.trace_id.clone();
        self.journal("held", node, &trace, json!({ "reason": reason, "serving": serving }));
    }

    fn hook(&self, node: &str, kind: HookKind) -> Option<Hook> {
        let hooks = &self.config.node(node)?.hooks;
        match kind {
            HookKind::Remediate => hooks.remediate.clone(),
            HookKind::Regenerate => hooks.regenerate.clone(),
            HookKind::Retire => hooks.retire.clone(),
        }
    }

    /// The document a hook receives.
    fn hook_input(
        &self,
        kind: HookKind,
        node: &str,
        serving: &DesiredVersion,
        symptoms: &analysis::Symptoms,
        constraints: &[String],
    ) -> Value {
        let slo = self.config.slo(node);
        json!({
            "hook": kind.as_str(),
            "node": node,
            "version": serving.version,
            "endpoints": serving.endpoints,
            "spec": self.service.registration(node).ok().flatten(),
            "slo": {
                "success_rate": slo.success_rate,
                "p99_ms": slo.p99.map(|p99| p99.get().as_millis() as u64),
                "min_requests": slo.min_requests,
            },
            "symptoms": symptoms,
            "constraints": constraints,
        })
    }

    fn spawn_hook(self: &Arc<Self>, node: &str, kind: HookKind, hook: Hook, input: Value) {
        let (engine, node) = (self.clone(), node.to_owned());
        tokio::spawn(async move {
            let outcome = hooks::run(kind, &hook, &input).await;
            engine.hook_done(&node, kind, &hook, outcome);
        });
    }

    fn hook_done(
        self: &Arc<Self>,
        node: &str,
        kind: HookKind,
        hook: &Hook,
        outcome: Result<hooks::Answer, HookError>,
    ) {
        let now = now_ms();
        let mut state = self.lock();
        let episode = state.ladders.entry(node.to_owned()).or_default();
        let trace = episode.trace_id.clone();
        let answer = match outcome {
            Ok(answer) => answer,
            Err(error) => {
                let detail =
                    json!({ "hook": kind.as_str(), "target": describe(hook), "error": error.to_string() });
                self.journal("hook_failed", node, &trace, detail);
                if kind != HookKind::Retire && self.expects(&state, node, kind) {
                    let reason = format!("the {kind} hook failed: {error}");
                    self.hold(&mut state, node, reason, now);
                }
                self.show(&mut state, node);
                return;
            }
        };
        let elapsed_ms = answer.elapsed.as_millis() as u64;
        match kind {
            HookKind::Retire => {
                self.journal(
                    "retired",
                    node,
                    &trace,
                    json!({ "answer": answer.body, "elapsed_ms": elapsed_ms }),
                );
            }
            HookKind::Remediate if self.expects(&state, node, kind) => {
                let cooldown = self.config.analysis.cooldown.get().as_millis() as u64;
                let episode = state.ladders.entry(node.to_owned()).or_default();
                if let Ladder::Remediating { symptoms, constraints, .. } = &episode.ladder {
                    episode.ladder = Ladder::CoolingDown {
                        since_unix_ms: now,
                        until_unix_ms: now + cooldown,
                        symptoms: symptoms.clone(),
                        constraints: constraints.clone(),
                    };
                }
                let detail =
                    json!({ "answer": answer.body, "elapsed_ms": elapsed_ms, "cooldown_ms": cooldown });
                self.journal("remediated", node, &trace, detail);
            }
            HookKind::Regenerate if self.expects(&state, node, kind) => {
                match hooks::regenerated(&answer.body) {
                    Ok(regenerated) => {
                        let detail = json!({
                            "version": regenerated.version, "endpoints": regenerated.endpoints, "elapsed_ms": elapsed_ms,
                        });
                        self.journal("regenerated", node, &trace, detail);
                        let canary =
                            DesiredVersion { version: regenerated.version, endpoints: regenerated.endpoints };
                        match self.begin(&mut state, node, canary.clone(), None, Origin::Healing, &trace, now)
                        {
                            Ok(id) => {
                                let episode = state.ladders.entry(node.to_owned()).or_default();
                                episode.ladder = Ladder::Canary {
                                    since_unix_ms: now,
                                    rollout: id,
                                    version: canary.version,
                                };
                            }
                            Err(refusal) => {
                                let reason =
                                    format!("the regenerated version cannot be rolled out: {refusal}");
                                self.hold(&mut state, node, reason, now);
                            }
                        }
                    }
                    Err(problem) => {
                        let detail =
                            json!({ "hook": "regenerate", "target": describe(hook), "error": problem });
                        self.journal("hook_failed", node, &trace, detail);
                        self.hold(
                            &mut state,
                            node,
                            format!("the regenerate hook's answer is unusable: {problem}"),
                            now,
                        );
                    }
                }
            }
            _ => tracing::info!(node, kind = %kind, "a hook answered after its step was over; ignored"),
        }
        self.show(&mut state, node);
    }

    /// Whether the node's ladder is waiting for `kind`'s answer.
    fn expects(&self, state: &State, node: &str, kind: HookKind) -> bool {
        matches!(
            (state.ladders.get(node).map(|episode| &episode.ladder), kind),
            (Some(Ladder::Remediating { .. }), HookKind::Remediate)
                | (Some(Ladder::Regenerating { .. }), HookKind::Regenerate)
        )
    }

    // ---- rollouts ----

    /// Starts a rollout of `canary` on `node` and pushes its first step.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &self,
        state: &mut State,
        node: &str,
        canary: DesiredVersion,
        steps: Option<Vec<u32>>,
        origin: Origin,
        trace: &str,
        now: u64,
    ) -> Result<String, Refusal> {
        let stable = self.service.serving(node)?;
        if let Some(active) = state.rollouts.get(node).filter(|rollout| rollout.phase.is_active()) {
            return Err(Refusal::Conflict(format!(
                "node {node:?} already has a {} rollout of {} ({}): promote or abort it first",
                active.phase.name(),
                active.canary.version,
                active.id
            )));
        }
        if canary.endpoints.is_empty() {
            return Err(Refusal::BadRequest("a rollout needs the new version's endpoints".into()));
        }
        canary.check().map_err(|problems| Refusal::BadRequest(problems.join("; ")))?;
        if canary.version == stable.version {
            return Err(Refusal::BadRequest(format!("{} is already the serving version", canary.version)));
        }
        let mut settings = Settings::new(&self.config.rollout, &self.config.analysis);
        if let Some(steps) = steps {
            check_steps(&steps).map_err(Refusal::BadRequest)?;
            settings.steps = steps;
        }
        let id = format!("{node}-{}-{now}", canary.version);
        let mut rollout = Rollout::new(id.clone(), node.to_owned(), origin, stable, canary, settings, now);
        rollout.trace_id = trace.to_owned();
        let detail = json!({
            "id": id, "origin": origin_name(origin), "stable": rollout.stable, "canary": rollout.canary,
            "steps": rollout.settings.steps, "weight": rollout.weight(),
        });
        let desired = self.service.put_split(node, rollout.split(), "rollout_started", detail, trace)?;
        rollout.revision = desired.revision;
        rollout.pushed_unix_ms = now;
        self.save(&rollout);
        state.rollouts.insert(node.to_owned(), rollout);
        Ok(id)
    }

    fn judge_rollout(self: &Arc<Self>, state: &mut State, node: &str, now: u64) {
        let Some(mut rollout) = state.rollouts.get(node).cloned() else { return };
        let trace = trace_of(&rollout);
        let mut changed = false;
        if let Some((kind, detail)) = rollout.unpushed.clone() {
            self.push(&mut rollout, &kind, detail, now);
            if rollout.unpushed.is_some() {
                state.rollouts.insert(node.to_owned(), rollout);
                return;
            }
            changed = true;
        }
        if rollout.acked_unix_ms.is_none() {
            let proxies = self.service.live_proxies(node);
            let acked = !proxies.is_empty()
                && proxies
                    .iter()
                    .all(|(_, applied)| applied.is_some_and(|applied| applied >= rollout.revision));
            if acked {
                rollout.acked_unix_ms = Some(now);
                changed = true;
                let detail = json!({
                    "id": rollout.id, "revision": rollout.revision, "phase": rollout.phase.name(),
                    "weight": rollout.weight(), "proxies": proxies.len(),
                    "push_to_ack_ms": now.saturating_sub(rollout.pushed_unix_ms),
                });
                self.journal("rollout_acked", node, &trace, detail);
                if rollout.phase == Phase::Promoting {
                    self.succeed(state, &mut rollout, now);
                }
            }
        }
        // A promotion some live proxy never applies (it refuses the revision, say) fails at the
        // progress deadline instead of holding the node, and its healing, for good.
        let deadline = rollout.settings.progress_deadline_ms;
        if rollout.phase == Phase::Promoting
            && rollout.acked_unix_ms.is_none()
            && now.saturating_sub(rollout.pushed_unix_ms) >= deadline
        {
            let reason = format!(
                "the promotion was not applied by every proxy within the progress deadline ({} s)",
                deadline / 1000
            );
            let decision = Decision::Fail { reason };
            rollout.apply(&decision, now);
            changed |= self.carry_out(state, &mut rollout, &decision, now);
        }
        if rollout.phase == Phase::Progressing {
            let merged = self.service.merged_since(node, rollout.step_started_unix_ms, now);
            let slo = self.config.slo(node);
            let canary = merged.get(&rollout.canary.version);
            let stable = merged.get(&rollout.stable.version);
            let verdict = analysis::judge_canary(canary, stable, &slo);
            rollout.stable_verdict = Some(analysis::judge(stable, &slo));
            let decision = rollout.check(verdict, now);
            rollout.apply(&decision, now);
            changed |= self.carry_out(state, &mut rollout, &decision, now);
        }
        if changed {
            self.save(&rollout);
        }
        state.rollouts.insert(node.to_owned(), rollout);
    }

    /// Carries a decision out; true when the rollout changed in a way worth storing.
    fn carry_out(&self, state: &mut State, rollout: &mut Rollout, decision: &Decision, now: u64) -> bool {
        let node = rollout.node.clone();
        let trace = trace_of(rollout);
        let symptoms = rollout.last_verdict.as_ref().map(|verdict| verdict.symptoms().clone());
        let (kind, detail) = match decision {
            Decision::Hold => return false,
            Decision::FailedCheck { failed, constraints } => {
                let detail = json!({
                    "id": rollout.id, "failed_checks": failed, "max_failed_checks": rollout.settings.max_failed_checks,
                    "weight": rollout.weight(), "symptoms": symptoms, "constraints": constraints,
                });
                self.journal("rollout_check_failed", &node, &trace, detail);
                return true;
            }
            Decision::Advance => (
                "rollout_step",
                json!({ "id": rollout.id, "step": rollout.step, "weight": rollout.weight(), "canary": symptoms }),
            ),
            Decision::Promote => (
                "rollout_promoting",
                json!({ "id": rollout.id, "version": rollout.canary.version, "canary": symptoms, "by": "analysis" }),
            ),
            Decision::RollBack { reason } => (
                "rollout_rolled_back",
                json!({ "id": rollout.id, "reason": reason, "canary": symptoms, "version": rollout.canary.version }),
            ),
            Decision::Fail { reason } => (
                "rollout_failed",
                json!({ "id": rollout.id, "reason": reason, "canary": symptoms, "version": rollout.canary.version }),
            ),
        };
        self.push(rollout, kind, detail, now);
        if !rollout.phase.is_active() {
            self.ended(state, rollout, now);
        }
        true
    }

    /// Pushes the rollout's split to every proxy (through desired state) with its journal entry.
    fn push(&self, rollout: &mut Rollout, kind: &str, detail: Value, now: u64) {
        match self.service.put_split(&rollout.node, rollout.split(), kind, detail.clone(), &trace_of(rollout))
        {
            Ok(desired) => {
                rollout.revision = desired.revision;
                rollout.pushed_unix_ms = now;
                rollout.acked_unix_ms = None;
                rollout.unpushed = None;
            }
            Err(refusal) => {
                tracing::error!(
                    node = rollout.node,
                    error = refusal.to_string(),
                    "cannot push a rollout's split; trying again at the next pass"
                );
                rollout.acked_unix_ms = None;
                rollout.unpushed = Some((kind.to_owned(), detail));
            }
        }
    }

    /// Every proxy runs the canary alone: it is the stable version now.
    fn succeed(&self, state: &mut State, rollout: &mut Rollout, now: u64) {
        let trace = trace_of(rollout);
        let node = rollout.node.clone();
        rollout.finish(Phase::Succeeded, format!("{} is serving", rollout.canary.version), now);
        let detail = json!({
            "id": rollout.id, "version": rollout.canary.version, "replaced": rollout.stable.version,
            "duration_ms": now.saturating_sub(rollout.started_unix_ms),
        });
        self.journal("rollout_succeeded", &node, &trace, detail);
        if let Some(hook) = self.hook(&node, HookKind::Retire) {
            let input = json!({
                "hook": "retire", "node": node, "version": rollout.stable.version,
                "endpoints": rollout.stable.endpoints, "replaced_by": rollout.canary,
            });
            // Retiring runs beside the loop: the new version serves whatever it answers.
            let (service, node, trace) = (self.service.clone(), node.clone(), trace.clone());
            tokio::spawn(async move {
                let (kind, detail) = match hooks::run(HookKind::Retire, &hook, &input).await {
                    Ok(answer) => (
                        "retired",
                        json!({ "version": input["version"], "elapsed_ms": answer.elapsed.as_millis() as u64 }),
                    ),
                    Err(error) => (
                        "hook_failed",
                        json!({ "hook": "retire", "target": describe(&hook), "error": error.to_string() }),
                    ),
                };
                if let Err(error) = service.record(kind, Some(&node), &trace, detail) {
                    tracing::error!(%error, "cannot journal a retire hook's outcome");
                }
            });
        }
        self.ended(state, rollout, now);
    }

    /// A rollout is over: the ladder learns how it went.
    fn ended(&self, state: &mut State, rollout: &Rollout, now: u64) {
        let node = rollout.node.clone();
        match rollout.phase {
            Phase::Succeeded => {
                let episode = state.ladders.entry(node.clone()).or_default();
                let healed = matches!(episode.ladder, Ladder::Canary { .. } | Ladder::Held { .. })
                    || episode.degraded_unix_ms.is_some();
                episode.ladder = Ladder::Watching { breaches: 0 };
                episode.auto_retries = 0;
                if healed {
                    let trace = episode.trace_id.clone();
                    let since = episode.degraded_unix_ms.take();
                    let detail = json!({
                        "version": rollout.canary.version,
                        "degraded_to_healed_ms": since.map(|since| now.saturating_sub(since)),
                    });
                    self.journal("healed", &node, &trace, detail);
                    self.set_degraded(
                        &node,
                        false,
                        &format!("{} is serving", rollout.canary.version),
                        &trace,
                    );
                }
            }
            Phase::RolledBack | Phase::Failed if rollout.origin == Origin::Healing => {
                let reason = format!(
                    "the regenerated version {} was {}: {}",
                    rollout.canary.version,
                    rollout.phase.name().replace('_', " "),
                    rollout.reason.as_deref().unwrap_or("")
                );
                self.hold(state, &node, reason, now);
            }
            _ => {}
        }
    }

    // ---- the operator's side ----

    pub fn start(self: &Arc<Self>, start: RolloutStart, trace: &str) -> Result<RolloutView, Refusal> {
        let now = now_ms();
        let mut state = self.lock();
        let canary = DesiredVersion { version: start.version, endpoints: start.endpoints };
        self.begin(&mut state, &start.node, canary, start.steps, Origin::Manual, trace, now)?;
        self.show(&mut state, &start.node);
        Ok(view(&state.rollouts[&start.node]))
    }

    /// `pause`, `resume`, `promote` or `abort` the node's active rollout.
    pub fn act(self: &Arc<Self>, node: &str, action: &str) -> Result<RolloutView, Refusal> {
        let now = now_ms();
        let mut state = self.lock();
        let Some(mut rollout) = state.rollouts.get(node).filter(|rollout| rollout.phase.is_active()).cloned()
        else {
            return Err(Refusal::NotFound(format!("node {node:?} has no rollout under way")));
        };
        let trace = trace_of(&rollout);
        let detail = json!({ "id": rollout.id, "by": "operator", "weight": rollout.weight() });
        match action {
            "pause" => {
                rollout.pause("paused by an operator".into()).map_err(Refusal::Conflict)?;
                self.journal("rollout_paused", node, &trace, detail);
            }
            "resume" => {
                rollout.resume(now).map_err(Refusal::Conflict)?;
                self.journal("rollout_resumed", node, &trace, detail);
            }
            "promote" if rollout.phase == Phase::Promoting => {
                return Err(Refusal::Conflict("the rollout is already promoting".into()));
            }
            "promote" => {
                rollout.apply(&Decision::Promote, now);
                let detail = json!({ "id": rollout.id, "version": rollout.canary.version, "by": "operator" });
                self.push(&mut rollout, "rollout_promoting", detail, now);
            }
            "abort" => {
                let decision = Decision::RollBack { reason: "aborted by an operator".into() };
                rollout.apply(&decision, now);
                self.carry_out(&mut state, &mut rollout, &decision, now);
            }
            other => {
                return Err(Refusal::NotFound(format!(
                    "no rollout action {other:?}: use pause, resume, promote or abort"
                )))
            }
        }
        self.save(&rollout);
        state.rollouts.insert(node.to_owned(), rollout);
        self.show(&mut state, node);
        Ok(view(&state.rollouts[node]))
    }

    /// An operator's "try again" for a held node (after mending a hook, say): the ladder goes back to
    /// watching one breached window short of degraded, so a node that still breaches climbs the
    /// ladder again at the next interval, and one that recovered meanwhile is simply watched.
    pub fn retry(&self, node: &str) -> Result<HealingView, Refusal> {
        self.service.serving(node)?;
        let mut state = self.lock();
        let episode = state.ladders.entry(node.to_owned()).or_default();
        if !matches!(episode.ladder, Ladder::Held { .. }) {
            return Err(Refusal::Conflict(format!(
                "node {node:?} is {}: only a held node is retried",
                episode.ladder.name()
            )));
        }
        if let Some(episode) = state.ladders.get_mut(node) {
            episode.auto_retries = 0;
        }
        let view = self.release(&mut state, node, json!({ "by": "operator" }));
        self.show(&mut state, node);
        Ok(view)
    }

    /// A held node back to watching, one breached window short of degraded (see [`Engine::retry`]).
    fn release(&self, state: &mut State, node: &str, mut detail: Value) -> HealingView {
        let episode = state.ladders.entry(node.to_owned()).or_default();
        if let Ladder::Held { reason, .. } = &episode.ladder {
            detail["was"] = json!(reason);
        }
        let breach_windows = self.config.analysis.breach_windows;
        episode.ladder = Ladder::Watching { breaches: breach_windows.saturating_sub(1) };
        let trace = episode.trace_id.clone();
        self.journal("retried", node, &trace, detail);
        healing_view(&episode.ladder)
    }

    /// The node's latest rollout.
    pub fn rollout(&self, node: &str) -> Result<RolloutView, Refusal> {
        let state = self.lock();
        state
            .rollouts
            .get(node)
            .map(view)
            .ok_or_else(|| Refusal::NotFound(format!("node {node:?} has had no rollout")))
    }

    /// Every node's latest rollout.
    pub fn rollouts(&self) -> Vec<RolloutView> {
        self.lock().rollouts.values().map(view).collect()
    }

    // ---- plumbing ----

    /// Publishes the node's views, and stores its episode if it changed.
    fn show(&self, state: &mut State, node: &str) {
        let healing = state.ladders.get(node).map_or_else(
            || HealingView { phase: "healthy".into(), since_unix_ms: None, reason: None, breaches: 0 },
            |episode| healing_view(&episode.ladder),
        );
        self.service.publish_loop(node, healing, state.rollouts.get(node).map(view));
        self.store_episode(state, node);
    }

    fn store_episode(&self, state: &mut State, node: &str) {
        let episode = state.ladders.get(node).cloned().unwrap_or_default();
        if state.stored.get(node).unwrap_or(&Episode::default()) == &episode {
            return;
        }
        let record = LadderRecord {
            node: node.to_owned(),
            state: serde_json::to_value(&episode).unwrap_or(Value::Null),
            updated_unix_ms: now_ms(),
        };
        match self.service.store().put_ladder(&record) {
            Ok(()) => {
                state.stored.insert(node.to_owned(), episode);
            }
            // Tried again at the next change or tick.
            Err(error) => tracing::error!(%error, node, "cannot store a healing ladder"),
        }
    }

    /// Takes up the stored ladders (see the module's documentation); before the rollouts are resumed,
    /// which put a node whose regenerated version is rolling out back on its canary step.
    fn take_up_ladders(&self, now: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        for record in self.service.store().ladders()? {
            let node = record.node;
            let stored = match serde_json::from_value::<Episode>(record.state) {
                Ok(episode) => episode,
                Err(error) => {
                    tracing::error!(node, %error, "a stored healing ladder cannot be read; the node is watched afresh");
                    continue;
                }
            };
            state.stored.insert(node.clone(), stored.clone());
            let trace = stored.trace_id.clone();
            let ladder = stored.ladder.clone();
            let episode = state.ladders.entry(node.clone()).or_insert(stored);
            match ladder {
                Ladder::Remediating { .. } => {
                    episode.ladder = Ladder::Watching { breaches: 0 };
                    let reason = "control restarted while the remediate hook ran: the episode starts over";
                    self.journal(
                        "ladder_restarted",
                        &node,
                        &trace,
                        json!({ "from": "remediating", "reason": reason }),
                    );
                }
                Ladder::Regenerating { .. } => {
                    let reason = "control restarted while the regenerate hook ran; its answer is lost";
                    self.hold(&mut state, &node, reason.to_owned(), now);
                }
                // The rollouts, resumed next, put a node whose canary is still under way back on it.
                Ladder::Canary { .. } => episode.ladder = Ladder::Watching { breaches: 0 },
                Ladder::Watching { .. } | Ladder::CoolingDown { .. } | Ladder::Held { .. } => {}
            }
            // The node's status is the process' own: a node whose episode goes on is degraded again,
            // or its first report after the restart would call it healthy.
            let breach_windows = self.config.analysis.breach_windows;
            if let Some(episode) = state.ladders.get(&node) {
                if episode.ladder.degraded(breach_windows) || episode.degraded_unix_ms.is_some() {
                    let reason = format!("control restarted while {}", episode.ladder.name());
                    self.set_degraded(&node, true, &reason, &trace);
                }
            }
            if let Some(episode) = state.ladders.get(&node).filter(|episode| **episode != Episode::default())
            {
                tracing::info!(node, ladder = episode.ladder.name(), "healing ladder taken up");
            }
        }
        Ok(())
    }

    fn journal(&self, kind: &str, node: &str, trace: &str, detail: Value) {
        tracing::info!(node, kind, %detail, "healing");
        if let Err(error) = self.service.record(kind, Some(node), trace, detail) {
            tracing::error!(%error, kind, "cannot journal");
        }
    }

    fn set_degraded(&self, node: &str, degraded: bool, reason: &str, trace: &str) {
        if let Err(error) = self.service.set_degraded(node, degraded, reason, trace) {
            tracing::error!(%error, node, "cannot store a status change");
        }
    }

    fn save(&self, rollout: &Rollout) {
        let record = RolloutRecord {
            id: rollout.id.clone(),
            node: rollout.node.clone(),
            state: serde_json::to_value(rollout).unwrap_or(Value::Null),
            updated_unix_ms: now_ms(),
        };
        if let Err(error) = self.service.store().put_rollout(&record) {
            tracing::error!(%error, id = rollout.id, "cannot store a rollout");
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn trace_of(rollout: &Rollout) -> String {
    if rollout.trace_id.is_empty() {
        new_trace_id()
    } else {
        rollout.trace_id.clone()
    }
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Manual => "manual",
        Origin::Healing => "healing",
    }
}

fn describe(hook: &Hook) -> String {
    match &hook.target {
        remora_config::control_config::HookTarget::Url(url) => url.clone(),
        remora_config::control_config::HookTarget::Command(argv) => argv.join(" "),
    }
}

/// Steps as the config checks them: increasing, each in 1..=100, the last 100.
fn check_steps(steps: &[u32]) -> Result<(), String> {
    let increasing = steps.windows(2).all(|pair| pair[0] < pair[1]);
    let in_range = steps.iter().all(|step| (1..=100).contains(step));
    if steps.is_empty() || !increasing || !in_range || steps.last() != Some(&100) {
        return Err(format!("steps {steps:?} must increase, each in 1..=100, and end at 100"));
    }
    Ok(())
}

fn view(rollout: &Rollout) -> RolloutView {
    RolloutView {
        id: rollout.id.clone(),
        node: rollout.node.clone(),
        origin: origin_name(rollout.origin).into(),
        phase: rollout.phase.name().into(),
        stable: rollout.stable.clone(),
        canary: rollout.canary.clone(),
        weight: rollout.weight(),
        step: rollout.step,
        steps: rollout.settings.steps.clone(),
        failed_checks: rollout.failed_checks,
        max_failed_checks: rollout.settings.max_failed_checks,
        started_unix_ms: rollout.started_unix_ms,
        step_started_unix_ms: rollout.step_started_unix_ms,
        step_interval_ms: rollout.settings.step_interval_ms,
        finished_unix_ms: rollout.finished_unix_ms,
        reason: rollout.reason.clone(),
        revision: rollout.revision,
        acked: rollout.acked_unix_ms.is_some(),
        canary_verdict: rollout.last_verdict.as_ref().and_then(|verdict| serde_json::to_value(verdict).ok()),
        stable_verdict: rollout
            .stable_verdict
            .as_ref()
            .and_then(|verdict| serde_json::to_value(verdict).ok()),
    }
}

fn healing_view(ladder: &Ladder) -> HealingView {
    let (since, reason, breaches) = match ladder {
        Ladder::Watching { breaches } => (None, None, *breaches),
        Ladder::Remediating { since_unix_ms, constraints, .. }
        | Ladder::Regenerating { since_unix_ms, constraints, .. } => {
            (Some(*since_unix_ms), Some(constraints.join("; ")), 0)
        }
        Ladder::CoolingDown { since_unix_ms, until_unix_ms, .. } => (
            Some(*since_unix_ms),
            Some(format!(
                "waiting {} ms for the remedy to work",
                until_unix_ms.saturating_sub(*since_unix_ms)
            )),
            0,
        ),
        Ladder::Canary { since_unix_ms, version, .. } => {
            (Some(*since_unix_ms), Some(format!("rolling out the regenerated version {version}")), 0)
        }
        Ladder::Held { since_unix_ms, reason, .. } => (Some(*since_unix_ms), Some(reason.clone()), 0),
    };
    HealingView { phase: ladder.name().into(), since_unix_ms: since, reason, breaches }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_checked_like_the_config() {
        assert!(check_steps(&[10, 50, 100]).is_ok());
        assert!(check_steps(&[100]).is_ok());
        for bad in [&[][..], &[50, 10, 100], &[10, 50], &[0, 100], &[10, 10, 100], &[10, 101]] {
            assert!(check_steps(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn held_retries_wait_twice_as_long_each_time_up_to_the_max() {
        let minute = 60_000;
        let waits: Vec<u64> = (0..6).map(|retries| held_wait(15 * minute, 60 * minute, retries)).collect();
        assert_eq!(waits, [15, 30, 60, 60, 60, 60].map(|m| m * minute));
        assert_eq!(
            held_wait(2 * 60 * minute, 60 * minute, 3),
            2 * 60 * minute,
            "a max below the base is the base"
        );
        assert_eq!(held_wait(minute, u64::MAX, 200), u64::MAX, "no overflow");
    }
}
