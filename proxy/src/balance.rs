//! Step 6 of a request's way: which endpoint of a cluster serves a request.
//!
//! The balancer picks among the endpoints the caller calls eligible (outlier ejection and breakers
//! decide that; the balancer does not know they exist) with the cluster's policy:
//! - `p2c_ewma` (the default): power of two choices on peak-EWMA latency × (in flight + 1), the cost
//!   of Finagle's and linkerd2's balancers. The latency estimate jumps to any slower observation at once
//!   and moves toward faster ones with weight `1 − exp(−elapsed / 10 s)`. Between observations it
//!   decays toward zero with the same time constant, as Finagle's and tower's do, so that an endpoint
//!   that was slow once is tried again after a while instead of being starved for good. An endpoint
//!   with no observation yet is free while it has nothing in flight (so it gets one request to be
//!   measured by) and costs 30 ms (linkerd2's default) while that request is out: never flooded, never
//!   shunned.
//! - `round_robin`: each eligible endpoint in turn.
//! - `least_requests`: power of two choices on the requests in flight.
//!
//! Per-endpoint load lives in atomics: no lock on the request path. Each pick reads the eligibility of
//! every endpoint once or twice; clusters are small enough that this costs less than one atomic
//! read-modify-write shared between cores.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use remora_config as config;
use tokio::time::Instant;

/// How fast the latency estimate forgets (Finagle's and linkerd2's default).
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed of an endpoint that has not answered yet (linkerd2's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);

#[derive(Debug)]
pub struct Balancer {
    policy: config::Balance,
    /// Shared with the [`InFlight`] guards, which may outlive a borrow of the balancer.
    loads: Box<[Arc<Load>]>,
    /// Round robin's turn.
    next: AtomicUsize,
    /// Observation times are kept as nanoseconds since this instant, so that they fit in an atomic.
    base: Instant,
}

/// One endpoint's load, for the admin page.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadView {
    pub in_flight: u32,
    /// The latency estimate as of the last observation (30 ms before the first).
    pub ewma_ms: f64,
}

/// Counts a request as in flight on its endpoint until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    load: Option<Arc<Load>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(load) = &self.load {
            load.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Balancer {
    pub fn new(policy: config::Balance, endpoints: usize, now: Instant) -> Self {
        Self::carrying(policy, endpoints, now, None, |_| None)
    }

    /// A balancer for a reloaded cluster: endpoint `i` keeps the load (in-flight count and latency
    /// estimate) of the previous balancer's endpoint `previous_index(i)`, when there is one.
    pub fn carrying(
        policy: config::Balance,
        endpoints: usize,
        now: Instant,
        previous: Option<&Balancer>,
        previous_index: impl Fn(usize) -> Option<usize>,
    ) -> Self {
        let carried = |index: usize| {
            let previous = previous?;
            previous.loads.get(previous_index(index)?).cloned()
        };
        Self {
            policy,
            loads: (0..endpoints).map(|index| carried(index).unwrap_or_default()).collect(),
            // Start each balancer at a different place so that many proxies do not all begin on the
            // first endpoint.
            next: AtomicUsize::new(fastrand::usize(..)),
            // Carried loads keep their time stamps, which count from the previous base.
            base: previous.map_or(now, |previous| previous.base),
        }
    }

    /// The endpoint for the next request, among those `eligible` allows; `None` when it allows none.
    /// `eligible` must answer the same for an endpoint throughout the call (a snapshot such as the
    /// outlier detector's `Eligible` does).
    pub fn pick(&self, eligible: impl Fn(usize) -> bool, now: Instant) -> Option<usize> {
        match self.policy {
            config::Balance::RoundRobin => {
                // Counting turns among the eligible endpoints, rather than skipping ineligible ones
                // from a turn over all, keeps the shares equal: skipping would hand an ejected
                // endpoint's turns to its next neighbour.
                let count = self.eligible_count(&eligible);
                if count == 0 {
                    return None;
                }
                self.nth_eligible(&eligible, self.next.fetch_add(1, Ordering::Relaxed) % count)
            }
            config::Balance::LeastRequests => {
                self.two_choices(&eligible, |load| f64::from(load.in_flight.load(Ordering::Relaxed)))
            }
            config::Balance::P2cEwma => {
                let now_nanos = self.nanos_since_base(now);
                self.two_choices(&eligible, |load| load.cost(now_nanos))
            }
        }
    }

    /// Counts a request to `endpoint` as in flight until the guard drops. An index out of range gives
    /// a guard that counts nothing.
    pub fn start(&self, endpoint: usize) -> InFlight {
        let load = self.loads.get(endpoint).cloned();
        if let Some(load) = &load {
            load.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight { load }
    }

    /// Feeds the time `endpoint` took to answer into its latency estimate.
    pub fn observe(&self, endpoint: usize, rtt: Duration, now: Instant) {
        let Some(load) = self.loads.get(endpoint) else { return };
        // Stamps are offset by one so that 0 can mean "never observed". `fetch_max` keeps them
        // monotonic when observations race, and hands each the time elapsed since the one before.
        let stamp = self.nanos_since_base(now).saturating_add(1);
        let previous = load.observed_at.fetch_max(stamp, Ordering::AcqRel);
        let rtt_nanos = nanos(rtt) as f64;
        let elapsed_nanos = stamp.saturating_sub(previous) as f64;
        let update = |bits: u64| {
            let estimate = match previous {
                // The default was a guess: the first answer replaces it.
                0 => rtt_nanos,
                _ => next_estimate(f64::from_bits(bits), rtt_nanos, elapsed_nanos),
            };
            Some(estimate.to_bits())
        };
        // The closure always returns `Some`, so the update cannot fail.
        let _ = load.ewma_nanos.fetch_update(Ordering::AcqRel, Ordering::Acquire, update);
    }

    #[allow(dead_code)] // reason: wired into the admin page by the integration step
    pub fn view(&self, endpoint: usize) -> Option<LoadView> {
        let load = self.loads.get(endpoint)?;
        Some(LoadView {
            in_flight: load.in_flight.load(Ordering::Relaxed),
            ewma_ms: f64::from_bits(load.ewma_nanos.load(Ordering::Relaxed)) / 1e6,
        })
    }

    /// Power of two choices: the cheaper of two distinct eligible endpoints drawn at random, which
    /// avoids the herd that "always the cheapest" sends to one endpoint between two updates.
    fn two_choices(&self, eligible: &impl Fn(usize) -> bool, cost: impl Fn(&Load) -> f64) -> Option<usize> {
        let count = self.eligible_count(eligible);
        let (first, second) = match count {
            0 => return None,
            1 => return self.nth_eligible(eligible, 0),
            _ => {
                let first = fastrand::usize(..count);
                let second = fastrand::usize(..count - 1);
                let second = if second >= first { second + 1 } else { second };
                (self.nth_eligible(eligible, first)?, self.nth_eligible(eligible, second)?)
            }
        };
        // Ties go to `first`, itself a random choice.
        match (self.loads.get(first), self.loads.get(second)) {
            (Some(first_load), Some(second_load)) if cost(second_load) < cost(first_load) => Some(second),
            _ => Some(first),
        }
    }

    fn eligible_count(&self, eligible: &impl Fn(usize) -> bool) -> usize {
        (0..self.loads.len()).filter(|&endpoint| eligible(endpoint)).count()
    }

    fn nth_eligible(&self, eligible: &impl Fn(usize) -> bool, rank: usize) -> Option<usize> {
        (0..self.loads.len()).filter(|&endpoint| eligible(endpoint)).nth(rank)
    }

    fn nanos_since_base(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base))
    }
}

#[derive(Debug)]
struct Load {
    in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds, as `f64` bits.
    ewma_nanos: AtomicU64,
    /// When `ewma_nanos` was last updated: nanoseconds since the balancer's base, plus one; 0 before
    /// the first observation.
    observed_at: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma_nanos: AtomicU64::new((nanos(DEFAULT_RTT) as f64).to_bits()),
            observed_at: AtomicU64::new(0),
        }
    }
}

impl Load {
    /// Peak-EWMA's cost: expected latency, scaled by the queue a new request would join.
    fn cost(&self, now_nanos: u64) -> f64 {
        let estimate = f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed));
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let estimate = match self.observed_at.load(Ordering::Relaxed) {
            // Unobserved and idle: free, so that a new endpoint gets one request to be measured by
            // (one at a time: with a request in flight it costs the default, not nothing).
            0 if in_flight == 0 => return 0.0,
            // Unobserved: the default does not decay, or a new endpoint would soon look free.
            0 => estimate,
            stamp => {
                let idle_nanos = now_nanos.saturating_add(1).saturating_sub(stamp) as f64;
                estimate * (-idle_nanos / nanos(DECAY) as f64).exp()
            }
        };
        estimate * f64::from(in_flight.saturating_add(1))
    }
}

/// Peak EWMA: a slower observation becomes the estimate at once; a faster one pulls the estimate toward
/// itself, the more the longer since the last update.
fn next_estimate(estimate: f64, rtt: f64, elapsed_nanos: f64) -> f64 {
    if rtt >= estimate {
        return rtt;
    }
    let weight = (-elapsed_nanos / nanos(DECAY) as f64).exp();
    estimate * weight + rtt * (1.0 - weight)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILLISECOND: Duration = Duration::from_millis(1);

    fn all(_endpoint: usize) -> bool {
        true
    }

    #[test]
    fn round_robin_visits_every_eligible_endpoint_in_turn() {
        let now = Instant::now();
        let balancer = Balancer::new(config::Balance::RoundRobin, 3, now);
        let first = balancer.pick(all, now).unwrap();
        let turns: Vec<usize> = (0..6).map(|_| balancer.pick(all, now).unwrap()).collect();
        let expected: Vec<usize> = (1..7).map(|turn| (first + turn) % 3).collect();
        assert_eq!(turns, expected);
    }

    #[test]
    fn round_robin_skips_ineligible_endpoints_and_keeps_shares_equal() {
        let now = Instant::now();
        let balancer = Balancer::new(config::Balance::RoundRobin, 4, now);
        let eligible = |endpoint: usize| endpoint != 1;
        let mut seen = [0; 4];
        for _ in 0..300 {
            seen[balancer.pick(eligible, now).unwrap()] += 1;
        }
        assert_eq!(seen, [100, 0, 100, 100]);
    }

    #[test]
    fn least_requests_prefers_the_idle_endpoint() {
        let now = Instant::now();
        let balancer = Balancer::new(config::Balance::LeastRequests, 2, now);
        let busy = balancer.start(0);
        // With two endpoints both are always the candidates: the one with fewer in flight wins.
        for _ in 0..100 {
            assert_eq!(balancer.pick(all, now), Some(1));
        }
        drop(busy);
        let mut seen = [0; 2];
        for _ in 0..200 {
            seen[balancer.pick(all, now).unwrap()] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "ties are broken at random: {seen:?}");
    }

    #[test]
    fn least_requests_never_picks_the_busiest_of_many() {
        let now = Instant::now();
        let balancer = Balancer::new(config::Balance::LeastRequests, 4, now);
        let _busy: Vec<InFlight> = (0..3).map(|_| balancer.start(2)).collect();
        for _ in 0..200 {
            assert_ne!(balancer.pick(all, now), Some(2));
        }
    }

    #[test]
    fn p2c_ewma_sends_nearly_all_traffic_to_the_fast_endpoint() {
        let mut now = Instant::now();
        let balancer = Balancer::new(config::Balance::P2cEwma, 3, now);
        let latency = [MILLISECOND, MILLISECOND, 100 * MILLISECOND];
        let mut seen = [0; 3];
        for _ in 0..3000 {
            let endpoint = balancer.pick(all, now).unwrap();
            seen[endpoint] += 1;
            let in_flight = balancer.start(endpoint);
            now += MILLISECOND;
            balancer.observe(endpoint, latency[endpoint], now);
            drop(in_flight);
        }
        assert!(seen[2] <= 30, "the slow endpoint got {} of 3000: {seen:?}", seen[2]);
        assert!(seen[0] > 1000 && seen[1] > 1000, "{seen:?}");
    }

    #[test]
    fn peak_ewma_jumps_to_a_slow_observation_and_decays_after() {
        let mut now = Instant::now();
        let balancer = Balancer::new(config::Balance::P2cEwma, 1, now);
        assert_eq!(balancer.view(0).unwrap().ewma_ms, 30.0);
        balancer.observe(0, MILLISECOND, now);
        assert_eq!(balancer.view(0).unwrap().ewma_ms, 1.0);
        now += MILLISECOND;
        balancer.observe(0, 100 * MILLISECOND, now);
        assert_eq!(balancer.view(0).unwrap().ewma_ms, 100.0);
        // One decay period later a fast answer pulls the estimate most of the way down:
        // 100 × e⁻¹ + 1 × (1 − e⁻¹).
        now += DECAY;
        balancer.observe(0, MILLISECOND, now);
        let expected = 100.0 * (-1.0f64).exp() + (1.0 - (-1.0f64).exp());
        assert!((balancer.view(0).unwrap().ewma_ms - expected).abs() < 1e-6);
        // A fast answer right after barely moves it.
        balancer.observe(0, MILLISECOND, now);
        assert!((balancer.view(0).unwrap().ewma_ms - expected).abs() < 1e-6);
    }

    #[test]
    fn an_unobserved_endpoint_gets_tried() {
        let now = Instant::now();
        let balancer = Balancer::new(config::Balance::P2cEwma, 2, now);
        balancer.observe(0, 100 * MILLISECOND, now);
        assert_eq!(balancer.pick(all, now), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_once_slow_endpoint_is_tried_again_after_idling() {
        let balancer = Balancer::new(config::Balance::P2cEwma, 2, Instant::now());
        balancer.observe(0, MILLISECOND, Instant::now());
        balancer.observe(1, 100 * MILLISECOND, Instant::now());
        assert_eq!(balancer.pick(all, Instant::now()), Some(0));
        // Endpoint 0 keeps answering in 1 ms; endpoint 1, unused, decays: 100 ms × e^(−t/10 s) falls
        // below 1 ms after about 46 s.
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            balancer.observe(0, MILLISECOND, Instant::now());
        }
        assert_eq!(balancer.pick(all, Instant::now()), Some(1));
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let now = Instant::now();
        let balancer = Balancer::new(config::Balance::P2cEwma, 2, now);
        let first = balancer.start(1);
        let second = balancer.start(1);
        assert_eq!(balancer.view(1).unwrap().in_flight, 2);
        drop(first);
        assert_eq!(balancer.view(1).unwrap().in_flight, 1);
        drop(second);
        assert_eq!(balancer.view(1).unwrap().in_flight, 0);
        // Out of range: nothing to count, nothing to show.
        drop(balancer.start(9));
        assert_eq!(balancer.view(9), None);
        balancer.observe(9, MILLISECOND, now);
    }

    #[test]
    fn only_eligible_endpoints_are_picked_by_every_policy() {
        let now = Instant::now();
        for policy in [config::Balance::P2cEwma, config::Balance::RoundRobin, config::Balance::LeastRequests]
        {
            let balancer = Balancer::new(policy, 5, now);
            assert_eq!(balancer.pick(|_| false, now), None, "{policy:?}");
            for _ in 0..50 {
                assert_eq!(balancer.pick(|endpoint| endpoint == 3, now), Some(3), "{policy:?}");
                let picked = balancer.pick(|endpoint| endpoint % 2 == 0, now).unwrap();
                assert_eq!(picked % 2, 0, "{policy:?}");
            }
            assert_eq!(Balancer::new(policy, 0, now).pick(all, now), None, "{policy:?}");
        }
    }
}
