//! The control process' logic behind its API: registrations checked against the event/node map,
//! reports merged into per-node windows, desired state with revisions, node status, and the journal.
//! Everything that must survive a restart goes through the [`Store`] (one transaction per change,
//! journal entry included); the map and the windows are rebuilt from it or from fresh reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use remora_config::control::{
    Conflict, ConflictKind, Conflicts, DesiredBackend, DesiredSplit, DesiredState, DesiredUpdate,
    DesiredVersion, JournalEntry, NodeStats, NodeStatus, NodeView, ProxyView, Registered, Registration,
};
use remora_config::report::Report;
use remora_config::rollout::{HealingView, RolloutView};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::ingest::{Merged, Windows};
use crate::map::{self, Map, NodeSpec};
use crate::store::{JournalRecord, NewJournal, NodeRecord, Store, StoreError};

/// Why a request changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("conflicts")]
    Conflicts(Conflicts),
    /// The request contradicts the state (a second rollout for one node, say): 409.
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

pub struct Service {
    store: Arc<dyn Store>,
    map: Mutex<Map>,
    windows: Mutex<Windows>,
    /// Node statuses as last journaled.
    statuses: Mutex<BTreeMap<String, NodeStatus>>,
    /// Bumped on every desired-state change: long-polls wake and look.
    desired_changed: watch::Sender<u64>,
    journal: broadcast::Sender<JournalEntry>,
    /// A node is unreachable when none of its proxies reported for this long.
    unreachable_after: Duration,
    /// The last journal sequence sent to the streams.
    last_seq: AtomicU64,
    /// Per node, its latest journal entries.
    recent: Mutex<BTreeMap<String, std::collections::VecDeque<JournalEntry>>>,
    /// Nodes the healing engine judges degraded (their status stays degraded while reports arrive).
    degraded: Mutex<BTreeSet<String>>,
    /// Per node, its healing ladder and latest rollout as the engine last published them.
    loop_views: Mutex<BTreeMap<String, (HealingView, Option<RolloutView>)>>,
    /// Woken by every report taken, so that rollouts are judged as soon as figures arrive.
    pub reported: tokio::sync::Notify,
}

/// How many journal entries a node view shows.
const RECENT_EVENTS: usize = 20;

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        window: Duration,
        unreachable_after: Duration,
    ) -> Result<Self, StoreError> {
        let nodes = store.nodes()?;
        let specs = nodes.iter().filter_map(|node| spec_of(node).ok());
        let statuses = nodes.iter().map(|node| (node.name.clone(), status_of(&node.status))).collect();
        let (journal, _) = broadcast::channel(1024);
        Ok(Self {
            map: Mutex::new(Map::from_specs(specs)),
            windows: Mutex::new(Windows::new(window)),
            statuses: Mutex::new(statuses),
            desired_changed: watch::channel(0).0,
            journal,
            unreachable_after,
            recent: Mutex::default(),
            degraded: Mutex::default(),
            loop_views: Mutex::default(),
            reported: tokio::sync::Notify::new(),
            last_seq: AtomicU64::new(store.journal_head()?),
            store,
        })
    }

    /// Appends to the journal and tells the SSE streams.
    pub fn record(
        &self,
        kind: &str,
        node: Option<&str>,
        trace_id: &str,
        detail: Value,
    ) -> Result<u64, StoreError> {
        let entry = NewJournal {
            unix_ms: now_ms(),
            trace_id: trace_id.to_owned(),
            kind: kind.to_owned(),
            node: node.map(str::to_owned),
            detail,
        };
        let seq = self.store.append(&entry)?;
        self.announce(seq, entry);
        Ok(seq)
    }

    fn announce(&self, seq: u64, entry: NewJournal) {
        self.last_seq.fetch_max(seq, Ordering::Relaxed);
        self.publish(JournalEntry::new(
            seq,
            entry.unix_ms,
            entry.trace_id,
            entry.kind,
            entry.node,
            entry.detail,
        ));
    }

    /// To the streams, and to the node's recent events.
    fn publish(&self, entry: JournalEntry) {
        if let Some(node) = &entry.node {
            let mut recent = lock(&self.recent);
            let recent = recent.entry(node.clone()).or_default();
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(entry.clone());
        }
        let _ = self.journal.send(entry);
    }

    /// A proxy registering its node: checked against the map, refused with the conflicts (409) unless
    /// forced, otherwise stored with its journal entry in one transaction.
    pub fn register(
        &self,
        registration: Registration,
        force: bool,
        trace_id: &str,
    ) -> Result<Registered, Refusal> {
        if registration.node.is_empty() || registration.version.is_empty() {
            return Err(Refusal::BadRequest("a registration needs a node name and a version".into()));
        }
        let mut map = lock(&self.map);
        // Replicas of one version each register their own endpoints: the node has them all.
        let mut endpoints = registration.endpoints.clone();
        if let Some(known) =
            map.node(&registration.node).filter(|known| known.version == registration.version)
        {
            for endpoint in &known.endpoints {
                if !endpoints.contains(endpoint) {
                    endpoints.push(endpoint.clone());
                }
            }
        }
        let spec = NodeSpec {
            name: registration.node.clone(),
            version: registration.version.clone(),
            publishes: registration.publishes.clone(),
            consumes: registration.consumes.clone(),
            endpoints: endpoints.clone(),
        };
        let verdict = map.check(&spec);
        let conflicts: Vec<Conflict> = verdict.conflicts.iter().map(wire_conflict).collect();
        if !conflicts.is_empty() && !force {
            drop(map);
            let detail = json!({ "proxy": registration.proxy, "conflicts": conflicts, "forced": false });
            self.record("registration_refused", Some(&registration.node), trace_id, detail)?;
            return Err(Refusal::Conflicts(Conflicts {
                error: "conflicts".into(),
                conflicts,
                warnings: verdict.warnings.clone(),
            }));
        }
        let now = now_ms();
        let existing = self.store.node(&registration.node)?;
        let stored = Registration { endpoints, ..registration.clone() };
        let record = NodeRecord {
            name: registration.node.clone(),
            version: registration.version.clone(),
            spec: serde_json::to_value(&stored).unwrap_or(Value::Null),
            status: existing.as_ref().map_or_else(|| "registered".to_owned(), |node| node.status.clone()),
            registered_unix_ms: existing.as_ref().map_or(now, |node| node.registered_unix_ms),
            updated_unix_ms: now,
        };
        let kind = if verdict.unchanged { "reregistered" } else { "registered" };
        let detail = json!({
            "proxy": registration.proxy,
            "version": registration.version,
            "warnings": verdict.warnings,
            "forced_over": conflicts,
        });
        let journal = NewJournal {
            unix_ms: now,
            trace_id: trace_id.to_owned(),
            kind: kind.to_owned(),
            node: Some(registration.node.clone()),
            detail: detail.clone(),
        };
        let seq = self.store.register(&record, &journal)?;
        map.apply(spec);
        drop(map);
        self.announce(seq, journal);
        lock(&self.statuses).entry(registration.node.clone()).or_insert(NodeStatus::Registered);
        let desired_revision = self.store.desired(&registration.node)?.map_or(0, |desired| desired.revision);
        Ok(Registered { node: registration.node, warnings: verdict.warnings, desired_revision })
    }

    /// A report: its node must be registered.
    pub fn report(&self, report: Report, trace_id: &str) -> Result<(), Refusal> {
        if self.store.node(&report.node)?.is_none() {
            return Err(Refusal::BadRequest(format!(
                "unknown node {:?}: register it first (POST /v1/nodes)",
                report.node
            )));
        }
        let now = now_ms();
        let acked_before = {
            let mut windows = lock(&self.windows);
            let before = windows.acked(&report.node, &report.proxy);
            windows.ingest(&report, now).map_err(|refused| Refusal::BadRequest(refused.to_string()))?;
            before
        };
        // Stored when it changes (a write per report would be an fsync per proxy per second); the
        // time of each report is in the windows.
        if let Some(revision) = report.desired_revision.filter(|revision| acked_before != Some(*revision)) {
            self.store.set_applied(&report.node, &report.proxy, revision, now)?;
        }
        for event in &report.events {
            let detail = json!({ "proxy": report.proxy, "cluster": event.cluster, "event": event.kind, "detail": event.detail });
            self.record("proxy_event", Some(&report.node), trace_id, detail)?;
        }
        if lock(&self.degraded).contains(&report.node) {
            self.set_status(
                &report.node,
                NodeStatus::Degraded,
                "reports arrive; the node is degraded",
                trace_id,
            )?;
        } else {
            self.set_status(&report.node, NodeStatus::Healthy, "reports arrive", trace_id)?;
        }
        self.reported.notify_one();
        Ok(())
    }

    /// Marks nodes whose proxies stopped reporting as unreachable (journaled once per change).
    pub fn check_reachability(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let nodes: Vec<String> = lock(&self.statuses).keys().cloned().collect();
        for node in nodes {
            let last = lock(&self.windows).last_report(&node);
            let silent = match last {
                Some(last) => now.saturating_sub(last) > self.unreachable_after.as_millis() as u64,
                None => false,
            };
            if silent {
                let reason = format!("no report for more than {} ms", self.unreachable_after.as_millis());
                self.set_status(&node, NodeStatus::Unreachable, &reason, &new_trace_id())?;
            }
        }
        Ok(())
    }

    fn set_status(
        &self,
        node: &str,
        status: NodeStatus,
        reason: &str,
        trace_id: &str,
    ) -> Result<(), StoreError> {
        let previous = lock(&self.statuses).insert(node.to_owned(), status);
        if previous != Some(status) {
            let name = status_name(status);
            self.store.set_status(node, name, now_ms())?;
            let detail = json!({ "from": previous.map(status_name), "to": name, "reason": reason });
            self.record("status_changed", Some(node), trace_id, detail)?;
        }
        Ok(())
    }

    /// An operator's route weights. The node's split stays as the rollout engine set it.
    pub fn put_desired(
        &self,
        node: &str,
        update: DesiredUpdate,
        trace_id: &str,
    ) -> Result<DesiredState, Refusal> {
        if self.store.node(node)?.is_none() {
            return Err(Refusal::NotFound(format!("unknown node {node:?}")));
        }
        if update.split.is_some() {
            return Err(Refusal::BadRequest(
                "split is set by rollouts: start one with POST /v1/rollouts (remora rollout start)".into(),
            ));
        }
        for (route, backends) in &update.routes {
            if backends.is_empty() || backends.iter().all(|backend| backend.weight == 0) {
                return Err(Refusal::BadRequest(format!(
                    "route {route:?} needs at least one backend with a positive weight"
                )));
            }
        }
        let split = self.desired(node)?.split;
        let routes = serde_json::to_value(&update.routes).unwrap_or(Value::Null);
        let detail = json!({ "routes": routes });
        self.write_desired(
            node,
            DesiredUpdate { routes: update.routes, split },
            "desired_changed",
            detail,
            trace_id,
        )
    }

    /// The rollout engine's split of the node's traffic between its versions; the operator's route
    /// weights stay. Journaled as `kind` with `detail` (an object; the store adds the revision).
    pub fn put_split(
        &self,
        node: &str,
        split: DesiredSplit,
        kind: &str,
        mut detail: Value,
        trace_id: &str,
    ) -> Result<DesiredState, Refusal> {
        let routes = self.desired(node)?.routes;
        if let Value::Object(fields) = &mut detail {
            fields.insert("split".into(), serde_json::to_value(&split).unwrap_or(Value::Null));
        }
        self.write_desired(node, DesiredUpdate { routes, split: Some(split) }, kind, detail, trace_id)
    }

    fn write_desired(
        &self,
        node: &str,
        update: DesiredUpdate,
        kind: &str,
        detail: Value,
        trace_id: &str,
    ) -> Result<DesiredState, Refusal> {
        let stored = serde_json::to_value(&update).unwrap_or(Value::Null);
        let journal = NewJournal {
            unix_ms: now_ms(),
            trace_id: trace_id.to_owned(),
            kind: kind.to_owned(),
            node: Some(node.to_owned()),
            detail,
        };
        let written = self.store.put_desired(node, &stored, &journal)?;
        let revision = written.revision;
        // The store put the revision into the entry's detail, in the same transaction.
        let mut journal = journal;
        if let Value::Object(fields) = &mut journal.detail {
            fields.insert("revision".to_owned(), revision.into());
        }
        self.announce(written.seq, journal);
        self.desired_changed.send_modify(|generation| *generation += 1);
        Ok(DesiredState { node: node.to_owned(), revision, routes: update.routes, split: update.split })
    }

    pub fn desired(&self, node: &str) -> Result<DesiredState, Refusal> {
        if self.store.node(node)?.is_none() {
            return Err(Refusal::NotFound(format!("unknown node {node:?}")));
        }
        Ok(match self.store.desired(node)? {
            Some(desired) => {
                // Stored as a `DesiredUpdate`; a bare route map is the first schema's form.
                let update =
                    serde_json::from_value::<DesiredUpdate>(desired.routes.clone()).unwrap_or_else(|_| {
                        DesiredUpdate {
                            routes: serde_json::from_value::<BTreeMap<String, Vec<DesiredBackend>>>(
                                desired.routes,
                            )
                            .unwrap_or_default(),
                            split: None,
                        }
                    });
                DesiredState {
                    node: node.to_owned(),
                    revision: desired.revision,
                    routes: update.routes,
                    split: update.split,
                }
            }
            None => DesiredState { node: node.to_owned(), revision: 0, routes: BTreeMap::new(), split: None },
        })
    }

    /// Waits (up to `wait`) for desired state newer than `after`.
    pub async fn desired_after(
        &self,
        node: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<DesiredState>, Refusal> {
        let mut changed = self.desired_changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let desired = self.desired(node)?;
            if desired.revision > after {
                return Ok(Some(desired));
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return Ok(None);
            }
        }
    }

    pub fn nodes(&self) -> Result<Vec<NodeView>, Refusal> {
        let records = self.store.nodes()?;
        records.iter().map(|record| self.view(record)).collect()
    }

    pub fn node(&self, name: &str) -> Result<NodeView, Refusal> {
        match self.store.node(name)? {
            Some(record) => self.view(&record),
            None => Err(Refusal::NotFound(format!("unknown node {name:?}"))),
        }
    }

    fn view(&self, record: &NodeRecord) -> Result<NodeView, Refusal> {
        let registration: Option<Registration> = serde_json::from_value(record.spec.clone()).ok();
        let now = now_ms();
        let windows = lock(&self.windows);
        let merged = windows.merged(&record.name, now);
        let seen = windows.proxies(&record.name);
        let last_report = windows.last_report(&record.name);
        drop(windows);
        let proxies_stored = self.store.proxies(&record.name)?;
        let mut proxies: BTreeMap<String, ProxyView> = proxies_stored
            .into_iter()
            .map(|proxy| {
                let view = ProxyView {
                    proxy: proxy.proxy.clone(),
                    applied_revision: proxy.applied_revision,
                    last_report_unix_ms: Some(proxy.last_seen_unix_ms),
                };
                (proxy.proxy, view)
            })
            .collect();
        for (proxy, seen) in &seen {
            let view = proxies.entry(proxy.clone()).or_insert(ProxyView {
                proxy: proxy.clone(),
                applied_revision: seen.desired_revision,
                last_report_unix_ms: Some(seen.last_unix_ms),
            });
            view.last_report_unix_ms = view.last_report_unix_ms.max(Some(seen.last_unix_ms));
        }
        let breakers: Vec<(String, String)> = seen
            .values()
            .flat_map(|seen| seen.breakers.iter())
            .map(|(cluster, state)| (cluster.clone(), format!("{state:?}").to_lowercase()))
            .collect();
        let figures = |merged: &Merged, breakers: Vec<(String, String)>| NodeStats {
            window_seconds: merged.span.as_secs_f64(),
            requests: merged.counts.requests,
            rps: merged.rps(),
            success_rate: merged.counts.success_rate(),
            p50_ms: merged.p(0.5),
            p99_ms: merged.p(0.99),
            breakers,
        };
        let stats = merged.get("*").map(|all| figures(all, breakers));
        let versions = merged
            .iter()
            .filter(|(version, _)| version.as_str() != "*")
            .map(|(version, merged)| (version.clone(), figures(merged, Vec::new())))
            .collect();
        let desired = self.desired(&record.name)?;
        let (healing, rollout) = lock(&self.loop_views).get(&record.name).cloned().unzip();
        let status =
            lock(&self.statuses).get(&record.name).copied().unwrap_or_else(|| status_of(&record.status));
        Ok(NodeView {
            name: record.name.clone(),
            version: record.version.clone(),
            status,
            endpoints: registration
                .as_ref()
                .map(|registration| registration.endpoints.clone())
                .unwrap_or_default(),
            publishes: registration
                .as_ref()
                .map(|registration| registration.publishes.clone())
                .unwrap_or_default(),
            consumes: registration
                .as_ref()
                .map(|registration| registration.consumes.clone())
                .unwrap_or_default(),
            proxies: proxies.into_values().collect(),
            last_report_unix_ms: last_report,
            desired_revision: desired.revision,
            stats,
            serving_version: desired.split.map(|split| split.stable.version),
            versions,
            healing,
            rollout: rollout.flatten(),
            recent_events: lock(&self.recent)
                .get(&record.name)
                .map(|recent| recent.iter().cloned().collect())
                .unwrap_or_default(),
        })
    }

    /// The nodes control knows, by name.
    pub fn node_names(&self) -> Vec<String> {
        lock(&self.statuses).keys().cloned().collect()
    }

    /// A node's figures per version (and `"*"`) over the window, counting reports after `since`.
    pub fn merged_since(&self, node: &str, since_unix_ms: u64, now_unix_ms: u64) -> BTreeMap<String, Merged> {
        lock(&self.windows).merged_since(node, since_unix_ms, now_unix_ms)
    }

    /// The node's proxies that reported recently, each with the desired revision it last acked.
    pub fn live_proxies(&self, node: &str) -> Vec<(String, Option<u64>)> {
        let now = now_ms();
        let silent_after = self.unreachable_after.as_millis() as u64;
        lock(&self.windows)
            .proxies(node)
            .into_iter()
            .filter(|(_, seen)| now.saturating_sub(seen.last_unix_ms) <= silent_after)
            .map(|(proxy, seen)| (proxy, seen.desired_revision))
            .collect()
    }

    /// The node as its proxy registered it.
    pub fn registration(&self, node: &str) -> Result<Option<Registration>, StoreError> {
        Ok(self.store.node(node)?.and_then(|record| serde_json::from_value(record.spec).ok()))
    }

    /// The version serving the node: the stable version of its split, else the registered one (its
    /// endpoints then are the proxies' own clusters').
    pub fn serving(&self, node: &str) -> Result<DesiredVersion, Refusal> {
        if let Some(split) = self.desired(node)?.split {
            return Ok(split.stable);
        }
        let record =
            self.store.node(node)?.ok_or_else(|| Refusal::NotFound(format!("unknown node {node:?}")))?;
        Ok(DesiredVersion { version: record.version, endpoints: Vec::new() })
    }

    /// Marks a node degraded (or not) for the healing engine; the status follows.
    pub fn set_degraded(
        &self,
        node: &str,
        degraded: bool,
        reason: &str,
        trace_id: &str,
    ) -> Result<(), StoreError> {
        let changed = if degraded {
            lock(&self.degraded).insert(node.to_owned())
        } else {
            lock(&self.degraded).remove(node)
        };
        let current = lock(&self.statuses).get(node).copied();
        if changed && current != Some(NodeStatus::Unreachable) {
            let status = if degraded { NodeStatus::Degraded } else { NodeStatus::Healthy };
            self.set_status(node, status, reason, trace_id)?;
        }
        Ok(())
    }

    /// What the healing engine shows for a node.
    pub fn publish_loop(&self, node: &str, healing: HealingView, rollout: Option<RolloutView>) {
        lock(&self.loop_views).insert(node.to_owned(), (healing, rollout));
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn events_json(&self) -> Value {
        serde_json::to_value(lock(&self.map).events()).unwrap_or(Value::Null)
    }

    pub fn map_json(&self) -> Value {
        lock(&self.map).to_json()
    }

    pub fn map_dot(&self) -> String {
        lock(&self.map).to_dot()
    }

    pub fn journal_after(&self, after: u64, limit: usize) -> Result<Vec<JournalEntry>, StoreError> {
        Ok(self.store.journal_after(after, limit)?.into_iter().map(journal_entry).collect())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JournalEntry> {
        self.journal.subscribe()
    }
}

fn journal_entry(record: JournalRecord) -> JournalEntry {
    JournalEntry::new(record.seq, record.unix_ms, record.trace_id, record.kind, record.node, record.detail)
}

fn spec_of(record: &NodeRecord) -> Result<NodeSpec, serde_json::Error> {
    let registration: Registration = serde_json::from_value(record.spec.clone())?;
    Ok(NodeSpec {
        name: registration.node,
        version: registration.version,
        publishes: registration.publishes,
        consumes: registration.consumes,
        endpoints: registration.endpoints,
    })
}

fn wire_conflict(conflict: &map::Conflict) -> Conflict {
    Conflict {
        kind: match conflict.kind {
            map::ConflictKind::ConsumedButNotPublished => ConflictKind::ConsumedButNotPublished,
            map::ConflictKind::MajorVersionMismatch => ConflictKind::MajorVersionMismatch,
            map::ConflictKind::PublishedEventRemoved => ConflictKind::PublishedEventRemoved,
            map::ConflictKind::NameClaimedWithDifferentSpec => ConflictKind::NameClaimedWithDifferentSpec,
        },
        event: conflict.event.clone(),
        nodes: conflict.nodes.clone(),
        message: conflict.message.clone(),
    }
}

pub fn status_name(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Healthy => "healthy",
        NodeStatus::Degraded => "degraded",
        NodeStatus::Unreachable => "unreachable",
        NodeStatus::Registered => "registered",
    }
}

fn status_of(name: &str) -> NodeStatus {
    match name {
        "healthy" => NodeStatus::Healthy,
        "degraded" => NodeStatus::Degraded,
        "unreachable" => NodeStatus::Unreachable,
        _ => NodeStatus::Registered,
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_millis() as u64).unwrap_or(0)
}

/// A W3C-style trace id (32 lowercase hex digits).
pub fn new_trace_id() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
