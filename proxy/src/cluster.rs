//! A cluster at run time: its endpoints, each with its connection pool, and its balancer.
//! Built from the configuration once per snapshot; clusters are shared by every route that names them.

use std::sync::Arc;

use http::uri::Authority;
use remora_config as config;

use crate::balance::Balancer;
use crate::pool::Pool;

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub protocol: config::UpstreamProtocol,
    pub endpoints: Box<[Endpoint]>,
    pub balancer: Balancer,
}

#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` for upstream request URIs.
    pub authority: Authority,
    pub pool: Pool,
}

impl Cluster {
    /// `workers` sizes each endpoint's pool: one slot per worker thread.
    pub fn new(cluster: &config::Cluster, workers: usize) -> Self {
        let endpoints = cluster
            .endpoints
            .iter()
            .filter_map(|address| {
                // Validation guarantees host:port; an authority that still fails to parse is skipped
                // rather than trusted.
                let authority = address.to_string().parse::<Authority>().ok()?;
                Some(Endpoint { pool: Pool::new(cluster, address, workers), authority })
            })
            .collect();
        Self {
            name: cluster.name.as_str().into(),
            version: cluster.version.as_str().into(),
            protocol: cluster.protocol,
            endpoints,
            balancer: Balancer::new(cluster.balance, cluster.endpoints.len(), tokio::time::Instant::now()),
        }
    }

    /// The endpoint for the next request, or `None` when the cluster has none.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        let now = tokio::time::Instant::now();
        self.balancer.pick(|_| true, now).and_then(|index| self.endpoints.get(index))
    }

    #[cfg(test)]
    pub fn for_tests(version: &str) -> Self {
        Self {
            name: format!("cluster-{version}").into(),
            version: version.into(),
            protocol: config::UpstreamProtocol::Http1,
            endpoints: Box::new([]),
            balancer: Balancer::new(config::Balance::RoundRobin, 0, tokio::time::Instant::now()),
        }
    }
}
