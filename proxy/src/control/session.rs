//! Registration and reports: one loop, because a report needs a registered node.
//!
//! Every `report_interval` the loop takes a report ([`Reporter::next`]) into a queue and sends the
//! queue in order. A report control did not take (control down, or refusing the node until it
//! registers again) stays queued and is sent when control is back: control refuses a sequence it
//! already has, so sending again is safe. The queue holds at most [`QUEUE_CAPACITY`] reports; once it
//! is full no new report is taken, so what happens meanwhile stays in the stats' unreported views and
//! arrives, whole, in the first report taken after the queue drains (covering a longer span). No count
//! or histogram is lost and memory stays bounded; what a long outage loses is the per-interval detail,
//! and events beyond what the event queue holds (`events::CAPACITY`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use remora_config::control::{Registered, Registration};
use remora_config::Node;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::api::{Api, Failure};
use super::backoff::Backoff;
use super::Link;
use crate::reload::Reloader;
use crate::stats::report::Reporter;

/// The most reports kept for a control that does not take them (a minute at the default interval).
pub const QUEUE_CAPACITY: usize = 60;
/// How long the last report, at shutdown, may take.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the loop stands with control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Control may not know the node: register before reporting.
    Unregistered,
    Registered,
}

/// A report taken and not yet delivered.
#[derive(Debug)]
struct Pending {
    sequence: u64,
    json: Bytes,
}

/// What woke the loop.
enum Wake {
    Tick,
    Retry,
    Reregister,
    Stop,
}

pub struct Session {
    api: Arc<Api>,
    reloader: Arc<Reloader>,
    link: Arc<Link>,
    node: Node,
    reporter: Reporter,
    interval: Duration,
    state: State,
    queue: VecDeque<Pending>,
    outage_backoff: Backoff,
    refused_backoff: Backoff,
}

impl Session {
    pub fn new(
        api: Arc<Api>,
        reloader: Arc<Reloader>,
        link: Arc<Link>,
        node: Node,
        proxy: String,
        interval: Duration,
    ) -> Self {
        let reporter = Reporter::new(node.name.clone(), node.version.clone(), proxy);
        Self {
            api,
            reloader,
            link,
            node,
            reporter,
            interval,
            state: State::Unregistered,
            queue: VecDeque::new(),
            outage_backoff: Backoff::outage(),
            refused_backoff: Backoff::refused(),
        }
    }

    /// Registers, then reports every interval, until `stop` changes; then one last report.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Backing off until then; `Some(now)` registers at once.
        let mut retry_at = Some(Instant::now());
        loop {
            let wake = tokio::select! {
                biased;
                _ = stop.changed() => Wake::Stop,
                _ = self.link.reregister.notified() => Wake::Reregister,
                _ = ticks.tick() => Wake::Tick,
                _ = self.link.report_now.notified() => Wake::Tick,
                _ = sleep_until(retry_at), if retry_at.is_some() => Wake::Retry,
            };
            match wake {
                Wake::Stop => break,
                Wake::Tick => self.take_report(),
                Wake::Reregister => self.state = State::Unregistered,
                Wake::Retry => retry_at = None,
            }
            if retry_at.is_some() {
                // Backing off: a tick only queued its report.
                continue;
            }
            // A request in flight when the proxy stops is abandoned: its report stays queued.
            let stepped = tokio::select! {
                biased;
                _ = stop.changed() => break,
                stepped = self.step() => stepped,
            };
            if let Err(wait) = stepped {
                retry_at = Some(Instant::now() + wait);
            }
        }
        self.farewell().await;
    }

    /// Queues the next report, unless the queue is full (see the module's documentation).
    fn take_report(&mut self) {
        if self.queue.len() >= QUEUE_CAPACITY {
            tracing::debug!(queued = self.queue.len(), "report queue full: the next report will cover more");
            return;
        }
        let applied = self.link.applied.load(Ordering::Acquire);
        let report = self.reporter.next(self.reloader.shared(), (applied > 0).then_some(applied));
        self.queue.push_back(Pending { sequence: report.sequence, json: Bytes::from(report.to_json()) });
    }

    /// Registers when needed, then sends every queued report in order. `Err` is the time to wait before
    /// trying again.
    async fn step(&mut self) -> Result<(), Duration> {
        // One registration per step: a control that still does not know the node after it is backed
        // off from, not spun on.
        let mut registered_now = false;
        loop {
            if self.state == State::Unregistered {
                self.register().await?;
                registered_now = true;
            }
            let Some(pending) = self.queue.front() else {
                self.outage_backoff.reset();
                self.refused_backoff.reset();
                return Ok(());
            };
            let sequence = pending.sequence;
            match self.api.report(pending.json.clone()).await {
                Ok(()) => {
                    self.link.outage.reached();
                    self.queue.pop_front();
                }
                Err(Failure::Unreachable(error)) => return Err(self.unreachable(&error)),
                Err(Failure::UnknownNode(message)) => {
                    self.link.outage.reached();
                    self.state = State::Unregistered;
                    if registered_now {
                        tracing::error!(
                            node = %self.node.name,
                            %message,
                            "control does not know the node right after registering it"
                        );
                        return Err(self.refused_backoff.next_wait());
                    }
                    tracing::info!(
                        node = %self.node.name,
                        %message,
                        "control does not know the node: registering again"
                    );
                }
                Err(failure) if failure.is_unauthorized() => {
                    self.link.outage.reached();
                    tracing::error!(node = %self.node.name, "control refused a report: {failure}");
                    self.api.reload_token();
                    return Err(self.refused_backoff.next_wait());
                }
                Err(failure @ (Failure::Refused { .. } | Failure::Conflicts(_))) => {
                    self.link.outage.reached();
                    // Control will never take this report; kept, it would hold back every report
                    // behind it. A duplicate is expected after an answer that was lost.
                    self.queue.pop_front();
                    if failure.to_string().contains("already received") {
                        tracing::debug!(sequence, "control already had this report");
                    } else {
                        tracing::error!(sequence, "control refused a report, dropped: {failure}");
                    }
                }
            }
        }
    }

    /// `POST /v1/nodes`; on success, the desired-state loop hears of it.
    async fn register(&mut self) -> Result<(), Duration> {
        let endpoints = self.reloader.addrs().await.into_iter().map(|(_, addr)| addr.to_string()).collect();
        let registration = Registration {
            node: self.node.name.clone(),
            version: self.node.version.clone(),
            proxy: self.reporter.proxy.clone(),
            endpoints,
            publishes: self.node.publishes.clone(),
            consumes: self.node.consumes.clone(),
        };
        let failure = match self.api.register(&registration).await {
            Ok(Registered { node, warnings, desired_revision }) => {
                self.link.outage.reached();
                for warning in &warnings {
                    tracing::warn!(%node, "control accepted the registration with a warning: {warning}");
                }
                let proxy = &registration.proxy;
                tracing::info!(%node, %proxy, desired_revision, "registered with control");
                self.state = State::Registered;
                self.link.registrations.send_modify(|registrations| {
                    registrations.count += 1;
                    registrations.desired_revision = desired_revision;
                });
                return Ok(());
            }
            Err(Failure::Unreachable(error)) => return Err(self.unreachable(&error)),
            Err(failure) => failure,
        };
        self.link.outage.reached();
        match &failure {
            Failure::Conflicts(conflicts) => {
                for conflict in &conflicts.conflicts {
                    tracing::error!(
                        node = %self.node.name,
                        kind = ?conflict.kind,
                        event = conflict.event.as_deref().unwrap_or(""),
                        nodes = ?conflict.nodes,
                        "control refused the registration: {}",
                        conflict.message
                    );
                }
            }
            failure => tracing::error!(node = %self.node.name, "control refused the registration: {failure}"),
        }
        if failure.is_unauthorized() {
            self.api.reload_token();
        }
        // A person has to act (a spec, a token): retry slowly, in case they did.
        Err(self.refused_backoff.next_wait())
    }

    /// Control could not be reached: it may restart meanwhile, so register again before reporting.
    fn unreachable(&mut self, error: &str) -> Duration {
        self.link.outage.failed(&error);
        self.state = State::Unregistered;
        self.outage_backoff.next_wait()
    }

    /// At shutdown: the last interval's report, if control is there to take it (at most a second).
    async fn farewell(&mut self) {
        if self.state != State::Registered || self.link.outage.is_down() {
            return;
        }
        self.take_report();
        match tokio::time::timeout(FAREWELL_TIMEOUT, self.step()).await {
            Ok(Ok(())) => tracing::debug!("last report sent"),
            _ => tracing::info!(unsent = self.queue.len(), "stopping with reports control did not take"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
