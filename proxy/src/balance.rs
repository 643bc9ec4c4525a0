//! Step 6 of a request's way: which endpoint of a cluster serves a request.
//!
//! Round robin for now, whatever the configured policy: peak-EWMA power-of-two-choices and
//! least-requests come with the resilience work, and will skip ejected endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};

use remora_config as config;

#[derive(Debug)]
pub struct Balancer {
    next: AtomicUsize,
}

impl Balancer {
    /// The configured policy is not consulted yet: every cluster is balanced round robin.
    pub fn new(_policy: config::Balance) -> Self {
        // Start each balancer at a different place so that many proxies do not all begin on the
        // first endpoint.
        Self { next: AtomicUsize::new(fastrand::usize(..)) }
    }

    pub fn pick<'a, T>(&self, endpoints: &'a [T]) -> Option<&'a T> {
        match endpoints.len() {
            0 => None,
            1 => endpoints.first(),
            count => endpoints.get(self.next.fetch_add(1, Ordering::Relaxed) % count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let balancer = Balancer::new(config::Balance::RoundRobin);
        let endpoints = [1, 2, 3];
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[*balancer.pick(&endpoints).unwrap() - 1] += 1;
        }
        assert_eq!(seen, [100, 100, 100]);
        assert_eq!(balancer.pick::<u8>(&[]), None);
    }
}
