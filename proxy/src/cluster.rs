//! A cluster at run time: its endpoints (each with its connection pool) and the policies that guard
//! them: concurrency limits, the circuit breaker, outlier ejection and the balancer. Built from the
//! configuration once per snapshot; shared by every route that names the cluster.

use std::sync::Arc;

use http::uri::Authority;
use remora_config as config;
use tokio::time::Instant;

use crate::balance::Balancer;
use crate::breaker::Breaker;
use crate::events::{EventKind, Events};
use crate::limits::Limits;
use crate::outlier::{Detector, OutlierEvent};
use crate::pool::Pool;
use crate::tcp::OwnPorts;

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub protocol: config::UpstreamProtocol,
    pub endpoints: Box<[Endpoint]>,
    pub balancer: Balancer,
    pub outlier: Detector,
    pub breaker: Option<Arc<Breaker>>,
    pub limits: Arc<Limits>,
    pub events: Arc<Events>,
}

#[derive(Debug)]
pub struct Endpoint {
    /// As written in the configuration, for logs and the admin page.
    pub address: String,
    /// `host:port` for upstream request URIs.
    pub authority: Authority,
    pub pool: Pool,
}

impl Cluster {
    /// `workers` sizes each endpoint's pool: one slot per worker thread.
    pub fn new(cluster: &config::Cluster, workers: usize, events: Arc<Events>) -> Self {
        Self::carrying(cluster, workers, events, None, None)
    }

    /// A cluster for a reloaded configuration that keeps what it can of `previous` (the running
    /// cluster of the same name): the limits' counters (with the new maxima), each kept endpoint's
    /// pool (when the connection settings are unchanged), load and outlier state, and the breaker
    /// when its settings are unchanged (new thresholds start a new breaker, closed). With `noted`,
    /// the pools note their connections' local ports there (see [`crate::pool::Pool::new`]).
    pub fn carrying(
        cluster: &config::Cluster,
        workers: usize,
        events: Arc<Events>,
        previous: Option<(&Cluster, &config::Cluster)>,
        noted: Option<&Arc<OwnPorts>>,
    ) -> Self {
        let limits = match previous {
            Some((running, _)) => {
                running.limits.update(&cluster.limits);
                running.limits.clone()
            }
            None => Arc::new(Limits::new(&cluster.limits)),
        };
        let previous_endpoint = |address: &str| {
            let (running, _) = previous?;
            running.endpoints.iter().position(|endpoint| endpoint.address == address)
        };
        let endpoints: Box<[Endpoint]> = cluster
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                // Validation guarantees host:port; an authority that still fails to parse is skipped
                // rather than trusted.
                let address = endpoint.to_string();
                let authority = address.parse::<Authority>().ok()?;
                let kept = previous.zip(previous_endpoint(&address)).and_then(|((running, _), index)| {
                    let pool = &running.endpoints[index].pool;
                    pool.settings_match(cluster, noted.is_some()).then(|| pool.clone())
                });
                let pool = kept
                    .unwrap_or_else(|| Pool::new(cluster, endpoint, workers, limits.clone(), noted.cloned()));
                Some(Endpoint { address, pool, authority })
            })
            .collect();
        let now = Instant::now();
        let index_in_previous = |index: usize| previous_endpoint(&endpoints[index].address);
        let running = previous.map(|(running, _)| running);
        let breaker = match (cluster.breaker.as_ref(), previous) {
            (Some(settings), Some((running, old))) if old.breaker.as_ref() == Some(settings) => {
                running.breaker.clone()
            }
            (settings, _) => settings.map(|settings| Arc::new(Breaker::new(settings))),
        };
        Self {
            name: cluster.name.as_str().into(),
            version: cluster.version.as_str().into(),
            protocol: cluster.protocol,
            balancer: Balancer::carrying(
                cluster.balance,
                endpoints.len(),
                now,
                running.map(|running| &running.balancer),
                index_in_previous,
            ),
            outlier: Detector::carrying(
                cluster.outlier.as_ref(),
                endpoints.len(),
                now,
                running.map(|running| &running.outlier),
                index_in_previous,
            ),
            breaker,
            limits,
            events,
            endpoints,
        }
    }

    /// Whether the endpoints' pools note their connections' ports (every one of them, or none).
    pub fn notes_ports(&self) -> bool {
        self.endpoints.iter().all(|endpoint| endpoint.pool.notes_ports())
    }

    /// Logs and queues what the outlier detector reports.
    pub fn outlier_event(&self, event: OutlierEvent) {
        let address = |endpoint: usize| {
            self.endpoints.get(endpoint).map(|endpoint| endpoint.address.clone()).unwrap_or_default()
        };
        let kind = match event {
            OutlierEvent::Ejected { endpoint, for_, ejections } => {
                EventKind::EndpointEjected { endpoint: address(endpoint), ejected_for: for_, ejections }
            }
            OutlierEvent::Restored { endpoint } => {
                EventKind::EndpointRestored { endpoint: address(endpoint) }
            }
            OutlierEvent::EjectionSkipped { endpoint } => {
                tracing::debug!(cluster = %self.name, endpoint = %address(endpoint), "ejection skipped: max_ejection_percent reached");
                return;
            }
        };
        self.events.raise(&self.name, kind);
    }

    #[cfg(test)]
    pub fn for_tests(version: &str) -> Self {
        Self::new(
            &config::Cluster {
                name: format!("cluster-{version}"),
                version: version.to_owned(),
                node: None,
                endpoints: Vec::new(),
                protocol: config::UpstreamProtocol::Http1,
                connect_timeout: config::Duration::from_secs(1),
                idle_timeout: config::Duration::from_secs(60),
                balance: config::Balance::RoundRobin,
                limits: config::Limits::default(),
                breaker: None,
                outlier: None,
            },
            1,
            Arc::default(),
        )
    }
}
