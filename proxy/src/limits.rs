//! Step 5 (a) of a request's way: Envoy-style concurrency limits per cluster. Each limit is an atomic
//! counter with an RAII guard; a request that would overflow one is refused at once (503
//! `x-remora-breaker: limits`) instead of queueing.
//!
//! - `max_requests`: requests in flight to the cluster (from admission to the end of the response head);
//! - `max_pending_requests`: requests waiting for a new upstream connection to be made;
//! - `max_connections`: upstream connections open;
//! - `max_retries`: retries in flight.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use remora_config as config;

#[derive(Debug)]
pub struct Limits {
    /// The maxima, replaced in place by a reload (the counters carry on).
    max_requests: AtomicU32,
    max_pending: AtomicU32,
    max_connections: AtomicU32,
    max_retries: AtomicU32,
    requests: Arc<AtomicU32>,
    pending: Arc<AtomicU32>,
    connections: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    Requests,
    Pending,
    Connections,
    Retries,
}

/// A unit of one limit held; released on drop.
#[derive(Debug)]
pub struct Slot {
    counter: Arc<AtomicU32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What `/clusters` shows: each limit's use and its maximum.
#[derive(Clone, Copy, Debug)]
pub struct LimitsView {
    pub requests: (u32, u32),
    pub pending: (u32, u32),
    pub connections: (u32, u32),
    pub retries: (u32, u32),
}

impl Limits {
    pub fn new(settings: &config::Limits) -> Self {
        Self {
            max_requests: AtomicU32::new(settings.max_requests),
            max_pending: AtomicU32::new(settings.max_pending_requests),
            max_connections: AtomicU32::new(settings.max_connections),
            max_retries: AtomicU32::new(settings.max_retries),
            requests: Arc::default(),
            pending: Arc::default(),
            connections: Arc::default(),
            retries: Arc::default(),
        }
    }

    /// New maxima from a reload; what is in use stays counted (a lower maximum refuses new requests
    /// until enough in-flight ones end).
    pub fn update(&self, settings: &config::Limits) {
        self.max_requests.store(settings.max_requests, Ordering::Relaxed);
        self.max_pending.store(settings.max_pending_requests, Ordering::Relaxed);
        self.max_connections.store(settings.max_connections, Ordering::Relaxed);
        self.max_retries.store(settings.max_retries, Ordering::Relaxed);
    }

    pub fn request(&self) -> Result<Slot, Overflow> {
        take(&self.requests, self.max_requests.load(Ordering::Relaxed)).ok_or(Overflow::Requests)
    }

    pub fn pending(&self) -> Result<Slot, Overflow> {
        take(&self.pending, self.max_pending.load(Ordering::Relaxed)).ok_or(Overflow::Pending)
    }

    pub fn connection(&self) -> Result<Slot, Overflow> {
        take(&self.connections, self.max_connections.load(Ordering::Relaxed)).ok_or(Overflow::Connections)
    }

    pub fn retry(&self) -> Result<Slot, Overflow> {
        take(&self.retries, self.max_retries.load(Ordering::Relaxed)).ok_or(Overflow::Retries)
    }

    pub fn view(&self) -> LimitsView {
        let load = |counter: &AtomicU32| counter.load(Ordering::Relaxed);
        LimitsView {
            requests: (load(&self.requests), load(&self.max_requests)),
            pending: (load(&self.pending), load(&self.max_pending)),
            connections: (load(&self.connections), load(&self.max_connections)),
            retries: (load(&self.retries), load(&self.max_retries)),
        }
    }
}

/// Takes one unit if the counter is below `max`. A compare-and-swap loop: an increment followed by a
/// check would let two racing requests both see room that only one of them has.
fn take(counter: &Arc<AtomicU32>, max: u32) -> Option<Slot> {
    let mut current = counter.load(Ordering::Relaxed);
    loop {
        if current >= max {
            return None;
        }
        match counter.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(Slot { counter: counter.clone() }),
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32) -> Limits {
        Limits::new(&config::Limits {
            max_connections: max,
            max_pending_requests: max,
            max_requests: max,
            max_retries: max,
        })
    }

    #[test]
    fn a_limit_refuses_the_one_over_and_frees_on_drop() {
        let limits = limits(2);
        let first = limits.request().unwrap();
        let second = limits.request().unwrap();
        assert_eq!(limits.request().unwrap_err(), Overflow::Requests);
        assert_eq!(limits.view().requests, (2, 2));
        drop(first);
        let third = limits.request().unwrap();
        drop((second, third));
        assert_eq!(limits.view().requests, (0, 2));
    }

    #[test]
    fn limits_are_independent() {
        let limits = limits(1);
        let _request = limits.request().unwrap();
        let _retry = limits.retry().unwrap();
        assert_eq!(limits.retry().unwrap_err(), Overflow::Retries);
        assert!(limits.pending().is_ok());
        assert!(limits.connection().is_ok());
    }

    #[test]
    fn racing_threads_never_exceed_the_limit() {
        let limits = limits(5);
        let peak = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        if let Ok(slot) = limits.request() {
                            let now = limits.view().requests.0;
                            peak.fetch_max(now, Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 5);
        assert_eq!(limits.view().requests.0, 0);
    }
}
