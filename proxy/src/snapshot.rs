//! The runtime state as one immutable value: the configuration it came from, each listener's compiled
//! route table, and the clusters they share. It lives behind `ArcSwap` in [`Shared`]; a request reads it
//! with one `load` and never clones it. A reload builds a new snapshot and swaps it in one store.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use remora_config::Config;

use crate::cluster::Cluster;
use crate::events::Events;
use crate::route::{Route, RouteRetry, RouteTable};
use crate::sidecar::Services;
use crate::split::{Split, Target};
use crate::stats::Stats;
use crate::tcp::OwnPorts;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    tables: Box<[(Box<str>, RouteTable)]>,
    clusters: BTreeMap<String, Arc<Cluster>>,
    /// The retry state of every route that retries, by route name (shared by its listeners).
    retries: BTreeMap<String, Arc<RouteRetry>>,
    /// Per inbound and outbound listener: its known services and whether routes serve it.
    services: Box<[(Box<str>, Services)]>,
}

impl Snapshot {
    /// Compiles a validated configuration for a proxy with `workers` worker threads.
    /// Each route's backends get their stats series from `stats` (kept across snapshots by key).
    pub fn build(config: Arc<Config>, workers: usize, shared: Parts<'_>) -> Self {
        Self::rebuild(config, workers, shared, None)
    }

    /// Compiles a reloaded configuration, keeping the state of `previous` (the running snapshot): a
    /// cluster whose settings are unchanged is the same cluster (pools, breaker, ejections, loads);
    /// a changed one carries what its new settings allow (see [`Cluster::carrying`]). Stats series
    /// are found again by route, cluster and version. With an outbound listener, upstream
    /// connections note their local ports in `shared.own_ports`, for loop detection.
    pub fn rebuild(
        config: Arc<Config>,
        workers: usize,
        shared: Parts<'_>,
        previous: Option<&Snapshot>,
    ) -> Self {
        let Parts { events, stats, own_ports } = shared;
        let outbound =
            config.listeners.iter().any(|listener| listener.mode == remora_config::ListenerMode::Outbound);
        // A mark, like noting ports, needs the socket before its connect: marked proxies dial that way.
        let noted = (outbound || config.runtime.socket_mark.is_some()).then_some(own_ports);
        let clusters: BTreeMap<String, Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|(name, cluster)| {
                let running = previous.and_then(|previous| {
                    Some((previous.clusters.get(name)?, previous.config.clusters.get(name)?))
                });
                let cluster = match running {
                    Some((running, settings))
                        if settings == cluster && running.notes_ports() == noted.is_some() =>
                    {
                        running.clone()
                    }
                    running => Arc::new(Cluster::carrying(
                        cluster,
                        workers,
                        events.clone(),
                        running.map(|(running, settings)| (&**running, settings)),
                        noted,
                    )),
                };
                (name.clone(), cluster)
            })
            .collect();
        let retries: BTreeMap<String, Arc<RouteRetry>> = config
            .routes
            .iter()
            .filter_map(|route| {
                let running = previous.and_then(|previous| previous.retries.get(&route.name));
                Some((route.name.clone(), RouteRetry::carrying(route.retry.as_ref()?, running)))
            })
            .collect();
        let tables = config
            .listeners
            .iter()
            .map(|listener| {
                let routes = config
                    .routes
                    .iter()
                    .filter(|route| route.listeners.contains(&listener.name))
                    .map(|route| {
                        let targets = route
                            .backends
                            .iter()
                            .filter_map(|backend| {
                                let cluster = clusters.get(&backend.cluster)?.clone();
                                let series = stats.series(&route.name, &cluster.name, &cluster.version);
                                Some(Target { cluster, weight: backend.weight, series })
                            })
                            .collect();
                        let split = Split::new(targets, route.sticky.as_ref());
                        Route::new(route, split, retries.get(&route.name).cloned())
                    })
                    .collect();
                (listener.name.as_str().into(), RouteTable::new(routes))
            })
            .collect();
        let services = config
            .listeners
            .iter()
            .filter(|listener| listener.mode != remora_config::ListenerMode::Reverse)
            .map(|listener| (listener.name.as_str().into(), Services::of(&config, listener)))
            .collect();
        Self { config, tables, clusters, retries, services }
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The known services of an inbound or outbound listener.
    pub fn services(&self, listener: &str) -> Option<&Services> {
        self.services.iter().find(|(name, _)| &**name == listener).map(|(_, services)| services)
    }

    /// The routes of a listener (few listeners: a scan beats hashing).
    pub fn table(&self, listener: &str) -> Option<&RouteTable> {
        self.tables.iter().find(|(name, _)| &**name == listener).map(|(_, table)| table)
    }
}

/// What a snapshot's build takes from [`Shared`] (and tests from their own).
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub events: &'a Arc<Events>,
    pub stats: &'a Stats,
    pub own_ports: &'a Arc<OwnPorts>,
}

/// What every connection of the process shares.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Set when shutdown begins: `/ready` answers 503 from then on.
    pub draining: AtomicBool,
    /// Set once the listeners stopped accepting: HTTP/1 responses carry `connection: close`, so that
    /// clients leave between requests instead of racing a close of their idle connection.
    pub closing: AtomicBool,
    /// Breaker and ejection events, for the logs and the control report.
    pub events: Arc<Events>,
    /// Every route × cluster × version's figures, and the process' counters.
    pub stats: Arc<Stats>,
    /// The local ports of the proxy's upstream connections that are noted for loop detection.
    pub own_ports: Arc<OwnPorts>,
}

impl Shared {
    pub fn new(config: Config, workers: usize) -> Self {
        let events = Arc::new(Events::default());
        let stats = Arc::new(Stats::new(workers));
        let own_ports = Arc::new(OwnPorts::default());
        own_ports.set_mark(config.runtime.socket_mark);
        let parts = Parts { events: &events, stats: &stats, own_ports: &own_ports };
        let snapshot = Snapshot::build(Arc::new(config), workers, parts);
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            events,
            stats,
            own_ports,
        }
    }

    /// What a snapshot's build takes from here.
    pub fn parts(&self) -> Parts<'_> {
        Parts { events: &self.events, stats: &self.stats, own_ports: &self.own_ports }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(retry: &str) -> Arc<Config> {
        let text = format!(
            r#"
[[listeners]]
name = "a"
listen = "127.0.0.1:0"

[[listeners]]
name = "b"
listen = "127.0.0.1:0"

[[routes]]
name = "pay"
# No `listener`: every listener.
backends = [{{ cluster = "app" }}]
retry = {{ {retry} }}

[clusters.app]
endpoints = ["127.0.0.1:1"]
"#
        );
        Arc::new(remora_config::load_str(&text, remora_config::Source::TextOnly).expect("a valid config"))
    }

    fn retry(snapshot: &Snapshot, listener: &str) -> Arc<RouteRetry> {
        let headers = http::HeaderMap::new();
        let key =
            crate::route::RequestKey { host: None, path: "/", method: &http::Method::GET, headers: &headers };
        snapshot.table(listener).unwrap().find(&key).unwrap().retry.clone().expect("the route retries")
    }

    #[test]
    fn a_reload_keeps_the_retry_budget_spent_and_its_listeners_share_it() {
        let (events, stats, own_ports) = (Arc::default(), Stats::new(1), Arc::default());
        let parts = Parts { events: &events, stats: &stats, own_ports: &own_ports };
        let settings = "attempts = 2, budget_ratio = 0.2, min_retries_per_second = 1";
        let first = Snapshot::build(config(settings), 1, parts);
        let now = tokio::time::Instant::now();
        let budget = &retry(&first, "a").budget;
        for _ in 0..100 {
            budget.deposit(now);
        }
        // 20 earned + 10 of reserve, spent through both listeners' routes.
        let mut granted = 0;
        while retry(&first, if granted % 2 == 0 { "a" } else { "b" }).budget.withdraw(now) {
            granted += 1;
        }
        assert_eq!(granted, 30);

        // An unchanged route keeps its state (control's pushes reload the whole file).
        let same = Snapshot::rebuild(config(settings), 1, parts, Some(&first));
        assert!(Arc::ptr_eq(&retry(&same, "a"), &retry(&first, "a")));
        assert_eq!(retry(&same, "b").budget.remaining(now), 0);

        // New settings: a new policy, the same counts under the new ratio.
        let changed = "attempts = 3, budget_ratio = 0.5, min_retries_per_second = 1";
        let changed = Snapshot::rebuild(config(changed), 1, parts, Some(&same));
        assert!(!Arc::ptr_eq(&retry(&changed, "a"), &retry(&same, "a")));
        assert_eq!(retry(&changed, "a").budget.remaining(now), 50 + 10 - 30);
        assert!(Arc::ptr_eq(&retry(&changed, "a"), &retry(&changed, "b")));
    }
}
