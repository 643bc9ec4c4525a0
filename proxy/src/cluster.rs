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

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub protocol: config::UpstreamProtocol,
    pub endpoints: Box<[Endpoint]>,
    pub balancer: Balancer,
    pub outlier: Detector,
    pub breaker: Option<Breaker>,
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
        let limits = Arc::new(Limits::new(&cluster.limits));
        let endpoints: Box<[Endpoint]> = cluster
            .endpoints
            .iter()
            .filter_map(|address| {
                // Validation guarantees host:port; an authority that still fails to parse is skipped
                // rather than trusted.
                let authority = address.to_string().parse::<Authority>().ok()?;
                Some(Endpoint {
                    address: address.to_string(),
                    pool: Pool::new(cluster, address, workers, limits.clone()),
                    authority,
                })
            })
            .collect();
        let now = Instant::now();
        Self {
            name: cluster.name.as_str().into(),
            version: cluster.version.as_str().into(),
            protocol: cluster.protocol,
            balancer: Balancer::new(cluster.balance, endpoints.len(), now),
            outlier: Detector::new(cluster.outlier.as_ref(), endpoints.len(), now),
            breaker: cluster.breaker.as_ref().map(Breaker::new),
            limits,
            events,
            endpoints,
        }
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
