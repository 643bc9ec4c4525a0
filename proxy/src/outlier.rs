//! Outlier ejection, Envoy's passive health checking: an endpoint that answers with too many consecutive
//! 5xx, or too many consecutive gateway errors, leaves its cluster's balancing set for a while.
//!
//! Where it sits in a request's way: once `split` has chosen the cluster, the proxy asks
//! [`Detector::eligible`] which endpoints may serve and hands that to `balance`, which picks among them;
//! when the upstream call ends, the proxy tells [`Detector::record`] how it went. Both are cheap: a few
//! relaxed atomics per call, and no scan or allocation while nothing is ejected.
//!
//! Semantics, following Envoy where Envoy has an answer:
//! - A 5xx status, a connect failure, a timeout or a reset counts toward `consecutive_5xx` (Envoy counts
//!   local-origin failures as 5xx unless told to split them). Gateway errors
//!   ([`CallResult::is_gateway_error`]) count toward `consecutive_gateway_errors` too; any other 5xx
//!   resets that second counter, as in Envoy. A non-5xx status resets both. `RefusedStream` counts
//!   neither way: the upstream processed nothing, so it says little about its health.
//! - An endpoint is ejected for `base_ejection_time × n`, capped at `max_ejection_time`, where n is its
//!   number of consecutive ejections. n starts again from 1 when the endpoint has been back for a full
//!   `base_ejection_time` without being ejected again (a simplification of Envoy, which counts n down one
//!   step per detection interval while the endpoint stays healthy).
//! - An ejection happens only while fewer than `max_ejection_percent` of the endpoints are ejected
//!   (Envoy's exact test), so at least one endpoint can be ejected unless the percentage is 0. A
//!   skipped ejection still resets the endpoint's counters and is reported as
//!   [`OutlierEvent::EjectionSkipped`] (Envoy's `ejections_overflow`).
//! - Ejections end lazily: [`Detector::eligible`] notices that an ejection's time is up, restores the
//!   endpoint and returns a [`OutlierEvent::Restored`] for the caller to log.
//! - Panic mode: when fewer than `min_healthy_percent` of the endpoints are healthy, every endpoint
//!   serves, ejected or not (Envoy's panic threshold), so an outage of most endpoints does not pile all
//!   traffic onto the few left.
//!
//! Under concurrency a few races are accepted rather than locked away: two calls failing at the same
//! moment may both be counted after a third call's success reset the counters, and the ejected count
//! may briefly run one ahead of the endpoints' states while an ejection is being recorded. Each can
//! shift an ejection by a request or make one request see a slightly stale set; none can eject an
//! endpoint twice, restore it twice, or lose track of the ejected count.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use remora_config as config;
use tokio::time::Instant;

use crate::outcome::CallResult;

/// Something the caller should log (and count): the detector itself does no I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutlierEvent {
    /// The endpoint leaves the balancing set for `for_`; `ejections` is its number of consecutive
    /// ejections, this one included.
    Ejected { endpoint: usize, for_: Duration, ejections: u32 },
    /// The endpoint deserved an ejection, but `max_ejection_percent` of the endpoints are already out.
    EjectionSkipped { endpoint: usize },
    /// The endpoint's ejection time is over: it serves again.
    Restored { endpoint: usize },
}

/// Which endpoints may serve one request: a snapshot taken by [`Detector::eligible`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eligible {
    /// Too few endpoints are healthy: every endpoint serves, ejected or not.
    pub panic: bool,
    /// Endpoints whose ejection ended since the previous call, for the caller to log.
    pub restored: Vec<OutlierEvent>,
    endpoints: usize,
    /// Indexed by endpoint; left empty while nothing is ejected so the usual case does not allocate.
    ejected: Vec<bool>,
    ejected_count: usize,
}

impl Eligible {
    pub fn allows(&self, endpoint: usize) -> bool {
        endpoint < self.endpoints && (self.panic || !self.ejected.get(endpoint).copied().unwrap_or(false))
    }

    /// False when no endpoint may serve: the caller answers 503 at once rather than queue.
    pub fn any(&self) -> bool {
        self.panic || self.ejected_count < self.endpoints
    }
}

/// One endpoint's outlier state, for the admin page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointHealthView {
    pub ejected: bool,
    /// Rounded up, so an ejected endpoint never shows 0.
    pub ejected_remaining_ms: Option<u64>,
    /// Consecutive ejections that still count: while ejected, the n of the ejection in force; once
    /// back, the n the next ejection would follow on from (0 after a full base ejection time back).
    pub ejections: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
}

/// Outlier ejection for the endpoints of one cluster, indexed as the cluster indexes them.
#[derive(Debug)]
pub struct Detector {
    /// `None`: ejection is off and nothing is ever counted.
    settings: Option<Settings>,
    /// Times are kept as nanoseconds since this instant, so that they fit in an atomic.
    base: Instant,
    endpoints: Box<[EndpointState]>,
    /// Endpoints ejected now; kept apart so that the usual case (none) costs one load per request.
    ejected: AtomicUsize,
}

impl Detector {
    pub fn new(settings: Option<&config::Outlier>, endpoints: usize, now: Instant) -> Self {
        Self::carrying(settings, endpoints, now, None, |_| None)
    }

    /// A detector for a reloaded cluster: endpoint `i` starts from the counts and ejection of the
    /// previous detector's endpoint `previous_index(i)`, when there is one (a copy: outcomes of calls
    /// still in flight on the previous snapshot are not carried).
    pub fn carrying(
        settings: Option<&config::Outlier>,
        endpoints: usize,
        now: Instant,
        previous: Option<&Detector>,
        previous_index: impl Fn(usize) -> Option<usize>,
    ) -> Self {
        let copy = |index: usize| {
            settings?;
            let state = previous?.endpoints.get(previous_index(index)?)?;
            let load = |counter: &AtomicU32| AtomicU32::new(counter.load(Ordering::Acquire));
            Some(EndpointState {
                consecutive_5xx: load(&state.consecutive_5xx),
                consecutive_gateway_errors: load(&state.consecutive_gateway_errors),
                ejections: load(&state.ejections),
                ejection: AtomicU64::new(state.ejection.load(Ordering::Acquire)),
            })
        };
        let endpoints: Box<[EndpointState]> =
            (0..endpoints).map(|index| copy(index).unwrap_or_default()).collect();
        let ejected =
            endpoints.iter().filter(|state| matches!(state.ejection(), Ejection::Ejected { .. })).count();
        Self {
            settings: settings.map(Settings::from_config),
            // Carried ejection times count from the previous base.
            base: previous.map_or(now, |previous| previous.base),
            endpoints,
            ejected: AtomicUsize::new(ejected),
        }
    }

    /// Counts how a call to `endpoint` ended; returns the ejection it caused, if any.
    pub fn record(&self, endpoint: usize, result: CallResult, now: Instant) -> Option<OutlierEvent> {
        let settings = self.settings.as_ref()?;
        let state = self.endpoints.get(endpoint)?;
        // Calls that end while their endpoint is ejected (sent before the ejection, or in panic mode)
        // do not count: the ejection runs its time and the endpoint comes back with clean counters.
        match state.ejection() {
            Ejection::Ejected { .. } => return None,
            Ejection::Never | Ejection::Returned { .. } => {}
        }
        let (consecutive_5xx, consecutive_gateway_errors) = match Verdict::of(result) {
            Verdict::Success => {
                reset(&state.consecutive_5xx);
                reset(&state.consecutive_gateway_errors);
                return None;
            }
            Verdict::Neutral => return None,
            Verdict::ServerError => {
                reset(&state.consecutive_gateway_errors);
                (increment(&state.consecutive_5xx), 0)
            }
            Verdict::GatewayError => {
                (increment(&state.consecutive_5xx), increment(&state.consecutive_gateway_errors))
            }
        };
        // `==` rather than `>=`, as in Envoy: when racing calls push a counter past its threshold, only
        // the one that reached it ejects.
        let tripped = (settings.consecutive_5xx != 0 && consecutive_5xx == settings.consecutive_5xx)
            || (settings.consecutive_gateway_errors != 0
                && consecutive_gateway_errors == settings.consecutive_gateway_errors);
        if tripped {
            self.eject(endpoint, state, settings, now)
        } else {
            None
        }
    }

    /// Which endpoints may serve now. Restores the endpoints whose ejection time is over and returns
    /// them in [`Eligible::restored`]: call it once per request, before balancing.
    pub fn eligible(&self, now: Instant) -> Eligible {
        let endpoints = self.endpoints.len();
        let mut eligible =
            Eligible { panic: false, restored: Vec::new(), endpoints, ejected: Vec::new(), ejected_count: 0 };
        let Some(settings) = &self.settings else { return eligible };
        if self.ejected.load(Ordering::Acquire) == 0 {
            return eligible;
        }
        let now_nanos = self.nanos_since_base(now);
        eligible.ejected = vec![false; endpoints];
        for (endpoint, state) in self.endpoints.iter().enumerate() {
            let packed = state.ejection.load(Ordering::Acquire);
            match Ejection::unpack(packed) {
                Ejection::Ejected { until } if until <= now_nanos => {
                    // Only the caller that wins the exchange reports the restoration; a loser sees an
                    // endpoint that another caller has just restored, which is just as eligible.
                    let returned = Ejection::Returned { at: until }.pack();
                    if state
                        .ejection
                        .compare_exchange(packed, returned, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.ejected.fetch_sub(1, Ordering::AcqRel);
                        eligible.restored.push(OutlierEvent::Restored { endpoint });
                    }
                }
                Ejection::Ejected { .. } => {
                    eligible.ejected[endpoint] = true;
                    eligible.ejected_count += 1;
                }
                Ejection::Never | Ejection::Returned { .. } => {}
            }
        }
        eligible.panic = settings.panics(endpoints - eligible.ejected_count, endpoints);
        eligible
    }

    /// Every endpoint's state, for the admin page. Reads only: an ejection whose time is over shows as
    /// ended even before [`Detector::eligible`] has restored it.
    pub fn view(&self, now: Instant) -> Vec<EndpointHealthView> {
        let now_nanos = self.nanos_since_base(now);
        self.endpoints
            .iter()
            .map(|state| {
                let ejection = state.ejection();
                let remaining_nanos = match ejection {
                    Ejection::Ejected { until } if until > now_nanos => Some(until - now_nanos),
                    Ejection::Ejected { .. } | Ejection::Never | Ejection::Returned { .. } => None,
                };
                let ejections = match (&self.settings, remaining_nanos) {
                    (None, _) => 0,
                    (Some(_), Some(_)) => state.ejections.load(Ordering::Relaxed),
                    // Not ejected: the n the next ejection would follow on from.
                    (Some(settings), None) => {
                        self.consecutive_ejections(state, ejection, settings, now_nanos) - 1
                    }
                };
                EndpointHealthView {
                    ejected: remaining_nanos.is_some(),
                    ejected_remaining_ms: remaining_nanos.map(|nanos| nanos.div_ceil(1_000_000)),
                    ejections,
                    consecutive_5xx: state.consecutive_5xx.load(Ordering::Relaxed),
                    consecutive_gateway_errors: state.consecutive_gateway_errors.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    fn eject(
        &self,
        endpoint: usize,
        state: &EndpointState,
        settings: &Settings,
        now: Instant,
    ) -> Option<OutlierEvent> {
        // Whether or not the ejection happens, the next one takes a fresh run of failures (Envoy).
        state.consecutive_5xx.store(0, Ordering::Relaxed);
        state.consecutive_gateway_errors.store(0, Ordering::Relaxed);
        let now_nanos = self.nanos_since_base(now);
        let packed = state.ejection.load(Ordering::Acquire);
        let ejection = Ejection::unpack(packed);
        let ejections = match ejection {
            // Another call ejected it a moment ago.
            Ejection::Ejected { .. } => return None,
            Ejection::Never | Ejection::Returned { .. } => {
                self.consecutive_ejections(state, ejection, settings, now_nanos)
            }
        };
        let endpoints = self.endpoints.len();
        let reserved = self.ejected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |ejected| {
            settings.may_eject(ejected, endpoints).then_some(ejected + 1)
        });
        if reserved.is_err() {
            return Some(OutlierEvent::EjectionSkipped { endpoint });
        }
        let for_ = settings.ejection_time(ejections);
        let until = now_nanos.saturating_add(nanos(for_));
        let ejected = Ejection::Ejected { until }.pack();
        if state.ejection.compare_exchange(packed, ejected, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // Another call ejected it between our load and now: give back the slot we reserved.
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        state.ejections.store(ejections, Ordering::Relaxed);
        Some(OutlierEvent::Ejected { endpoint, for_, ejections })
    }

    /// The n of an ejection starting now: one more than the last, unless the endpoint has been back for
    /// a full base ejection time since. Always at least 1.
    fn consecutive_ejections(
        &self,
        state: &EndpointState,
        ejection: Ejection,
        settings: &Settings,
        now_nanos: u64,
    ) -> u32 {
        let returned_at = match ejection {
            Ejection::Never => return 1,
            Ejection::Ejected { until } => until,
            Ejection::Returned { at } => at,
        };
        if now_nanos.saturating_sub(returned_at) >= nanos(settings.base_ejection_time) {
            1
        } else {
            state.ejections.load(Ordering::Relaxed).saturating_add(1)
        }
    }

    fn nanos_since_base(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base))
    }
}

/// The configuration, with plain `std` durations.
#[derive(Clone, Copy, Debug)]
struct Settings {
    consecutive_5xx: u32,
    consecutive_gateway_errors: u32,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejection_percent: u32,
    min_healthy_percent: u32,
}

impl Settings {
    fn from_config(outlier: &config::Outlier) -> Self {
        Self {
            consecutive_5xx: outlier.consecutive_5xx,
            consecutive_gateway_errors: outlier.consecutive_gateway_errors,
            base_ejection_time: outlier.base_ejection_time.get(),
            max_ejection_time: outlier.max_ejection_time.get(),
            max_ejection_percent: outlier.max_ejection_percent,
            min_healthy_percent: outlier.min_healthy_percent,
        }
    }

    /// Envoy's test: the share ejected *before* this ejection is below the maximum. It lets one
    /// endpoint be ejected whatever the cluster's size (unless the maximum is 0), and may overshoot
    /// the percentage by the last ejection.
    fn may_eject(&self, ejected: usize, endpoints: usize) -> bool {
        widen(ejected) * 100 < u64::from(self.max_ejection_percent) * widen(endpoints)
    }

    fn panics(&self, healthy: usize, endpoints: usize) -> bool {
        widen(healthy) * 100 < u64::from(self.min_healthy_percent) * widen(endpoints)
    }

    fn ejection_time(&self, ejections: u32) -> Duration {
        // Validation keeps max ≥ base; were it not, the base time would still hold (as in Envoy).
        self.base_ejection_time
            .saturating_mul(ejections)
            .min(self.max_ejection_time.max(self.base_ejection_time))
    }
}

#[derive(Debug, Default)]
struct EndpointState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_errors: AtomicU32,
    /// n of the last ejection.
    ejections: AtomicU32,
    /// An [`Ejection`], packed into one word so that ejecting and restoring are single exchanges.
    ejection: AtomicU64,
}

impl EndpointState {
    fn ejection(&self) -> Ejection {
        Ejection::unpack(self.ejection.load(Ordering::Acquire))
    }
}

/// An endpoint's ejection state; times in nanoseconds since the detector's base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ejection {
    Never,
    Ejected {
        until: u64,
    },
    /// Back in service since `at` (the end of its last ejection).
    Returned {
        at: u64,
    },
}

impl Ejection {
    const TAG_BITS: u32 = 2;
    const TAG_MASK: u64 = 0b11;
    const EJECTED: u64 = 0b01;
    const RETURNED: u64 = 0b10;
    /// 62 bits of nanoseconds: 146 years after the detector was built.
    const MAX_NANOS: u64 = u64::MAX >> Self::TAG_BITS;

    fn pack(self) -> u64 {
        match self {
            Ejection::Never => 0,
            Ejection::Ejected { until } => (until.min(Self::MAX_NANOS) << Self::TAG_BITS) | Self::EJECTED,
            Ejection::Returned { at } => (at.min(Self::MAX_NANOS) << Self::TAG_BITS) | Self::RETURNED,
        }
    }

    fn unpack(packed: u64) -> Self {
        let nanos = packed >> Self::TAG_BITS;
        match packed & Self::TAG_MASK {
            Self::EJECTED => Ejection::Ejected { until: nanos },
            Self::RETURNED => Ejection::Returned { at: nanos },
            // 0, and the tag `pack` never writes.
            _ => Ejection::Never,
        }
    }
}

/// What a call's result means to the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Success,
    /// Counts toward `consecutive_5xx` and resets the gateway-error run.
    ServerError,
    /// Counts toward both rules.
    GatewayError,
    /// Changes nothing.
    Neutral,
}

impl Verdict {
    fn of(result: CallResult) -> Self {
        if result.is_gateway_error() {
            return Verdict::GatewayError;
        }
        match result {
            CallResult::Status(_) if result.is_5xx() => Verdict::ServerError,
            CallResult::Status(_) => Verdict::Success,
            CallResult::Connect | CallResult::Timeout | CallResult::Reset => Verdict::ServerError,
            CallResult::RefusedStream => Verdict::Neutral,
        }
    }
}

fn increment(counter: &AtomicU32) -> u32 {
    counter.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

/// Resets a counter, writing only when it is not already 0: successes are most calls, and a write on
/// every one would bounce the cache line between cores.
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn widen(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn settings() -> config::Outlier {
        config::Outlier {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            base_ejection_time: config::Duration::from_secs(30),
            max_ejection_time: config::Duration::from_secs(300),
            max_ejection_percent: 100,
            min_healthy_percent: 0,
        }
    }

    fn fail(detector: &Detector, endpoint: usize, times: u32, now: Instant) -> Option<OutlierEvent> {
        let mut last = None;
        for _ in 0..times {
            last = detector.record(endpoint, CallResult::Status(500), now);
        }
        last
    }

    fn ejected_for(event: Option<OutlierEvent>) -> Duration {
        match event {
            Some(OutlierEvent::Ejected { for_, .. }) => for_,
            other => panic!("expected an ejection, got {other:?}"),
        }
    }

    #[test]
    fn ejects_after_exactly_n_consecutive_5xx_and_not_before() {
        let now = Instant::now();
        let detector = Detector::new(Some(&settings()), 2, now);
        assert_eq!(fail(&detector, 0, 4, now), None);
        assert!(detector.eligible(now).allows(0));
        assert_eq!(
            detector.record(0, CallResult::Status(503), now),
            Some(OutlierEvent::Ejected { endpoint: 0, for_: 30 * SECOND, ejections: 1 })
        );
        let eligible = detector.eligible(now);
        assert!(!eligible.allows(0));
        assert!(eligible.allows(1));
        assert!(eligible.any());
        assert!(!eligible.panic);
    }

    #[test]
    fn local_failures_count_as_5xx() {
        let now = Instant::now();
        let detector = Detector::new(Some(&settings()), 1, now);
        for result in [CallResult::Connect, CallResult::Timeout, CallResult::Reset, CallResult::Status(599)] {
            assert_eq!(detector.record(0, result, now), None);
        }
        assert!(matches!(
            detector.record(0, CallResult::Reset, now),
            Some(OutlierEvent::Ejected { endpoint: 0, .. })
        ));
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let now = Instant::now();
        let detector = Detector::new(Some(&settings()), 1, now);
        assert_eq!(fail(&detector, 0, 4, now), None);
        // A 4xx is the upstream answering correctly: a success for outlier purposes.
        assert_eq!(detector.record(0, CallResult::Status(404), now), None);
        assert_eq!(detector.view(now)[0].consecutive_5xx, 0);
        assert_eq!(fail(&detector, 0, 4, now), None);
        assert!(fail(&detector, 0, 1, now).is_some());
    }

    #[test]
    fn refused_streams_neither_count_nor_reset() {
        let now = Instant::now();
        let detector = Detector::new(Some(&settings()), 1, now);
        assert_eq!(fail(&detector, 0, 4, now), None);
        assert_eq!(detector.record(0, CallResult::RefusedStream, now), None);
        assert_eq!(detector.view(now)[0].consecutive_5xx, 4);
        assert!(fail(&detector, 0, 1, now).is_some());
    }

    #[test]
    fn gateway_error_rule_counts_gateway_errors_only() {
        let now = Instant::now();
        let outlier = config::Outlier { consecutive_5xx: 0, consecutive_gateway_errors: 3, ..settings() };
        let detector = Detector::new(Some(&outlier), 1, now);
        assert_eq!(detector.record(0, CallResult::Status(502), now), None);
        assert_eq!(detector.record(0, CallResult::Connect, now), None);
        // A 500 is a 5xx but no gateway error: it breaks the run, as in Envoy.
        assert_eq!(detector.record(0, CallResult::Status(500), now), None);
        assert_eq!(detector.view(now)[0].consecutive_gateway_errors, 0);
        assert_eq!(detector.record(0, CallResult::Status(503), now), None);
        assert_eq!(detector.record(0, CallResult::Status(504), now), None);
        assert!(matches!(
            detector.record(0, CallResult::Connect, now),
            Some(OutlierEvent::Ejected { endpoint: 0, ejections: 1, .. })
        ));
    }

    #[test]
    fn a_threshold_of_zero_disables_its_rule() {
        let now = Instant::now();
        let outlier = config::Outlier { consecutive_5xx: 0, consecutive_gateway_errors: 0, ..settings() };
        let detector = Detector::new(Some(&outlier), 1, now);
        assert_eq!(fail(&detector, 0, 100, now), None);
        assert!(detector.eligible(now).allows(0));
    }

    #[test]
    fn ejection_time_grows_with_consecutive_ejections_and_caps() {
        let outlier = config::Outlier {
            base_ejection_time: config::Duration::from_secs(10),
            max_ejection_time: config::Duration::from_secs(25),
            ..settings()
        };
        let mut now = Instant::now();
        let detector = Detector::new(Some(&outlier), 1, now);
        let mut times = Vec::new();
        for _ in 0..4 {
            let for_ = ejected_for(fail(&detector, 0, 5, now));
            times.push(for_.as_secs());
            // Back just as the ejection ends, and failing again at once.
            now += for_;
            assert_eq!(detector.eligible(now).restored, vec![OutlierEvent::Restored { endpoint: 0 }]);
        }
        assert_eq!(times, [10, 20, 25, 25]);
        assert_eq!(detector.view(now)[0].ejections, 4);
    }

    #[test]
    fn consecutive_ejections_start_over_after_a_full_base_time_back() {
        let mut now = Instant::now();
        let detector = Detector::new(Some(&settings()), 1, now);
        assert_eq!(ejected_for(fail(&detector, 0, 5, now)), 30 * SECOND);
        now += 30 * SECOND;
        detector.eligible(now);
        now += 29 * SECOND;
        assert_eq!(ejected_for(fail(&detector, 0, 5, now)), 60 * SECOND);
        now += 60 * SECOND;
        detector.eligible(now);
        assert_eq!(detector.view(now)[0].ejections, 2);
        now += 30 * SECOND;
        assert_eq!(detector.view(now)[0].ejections, 0);
        assert_eq!(ejected_for(fail(&detector, 0, 5, now)), 30 * SECOND);
    }

    #[test]
    fn max_ejection_percent_caps_the_endpoints_ejected_at_once() {
        let outlier = config::Outlier { max_ejection_percent: 10, ..settings() };
        let mut now = Instant::now();
        let detector = Detector::new(Some(&outlier), 10, now);
        assert!(fail(&detector, 0, 5, now).is_some());
        assert_eq!(fail(&detector, 1, 5, now), Some(OutlierEvent::EjectionSkipped { endpoint: 1 }));
        // The skipped endpoint's counters were reset all the same.
        assert_eq!(detector.view(now)[1].consecutive_5xx, 0);
        let eligible = detector.eligible(now);
        assert_eq!((0..10).filter(|&endpoint| !eligible.allows(endpoint)).count(), 1);
        // Once the first is back, the second may go.
        now += 30 * SECOND;
        assert_eq!(detector.eligible(now).restored, vec![OutlierEvent::Restored { endpoint: 0 }]);
        assert!(matches!(fail(&detector, 1, 5, now), Some(OutlierEvent::Ejected { endpoint: 1, .. })));
    }

    #[test]
    fn one_endpoint_may_always_be_ejected_and_none_at_zero_percent() {
        let now = Instant::now();
        let outlier = config::Outlier { max_ejection_percent: 1, ..settings() };
        let detector = Detector::new(Some(&outlier), 3, now);
        assert!(matches!(fail(&detector, 0, 5, now), Some(OutlierEvent::Ejected { .. })));
        assert_eq!(fail(&detector, 1, 5, now), Some(OutlierEvent::EjectionSkipped { endpoint: 1 }));

        let outlier = config::Outlier { max_ejection_percent: 0, ..settings() };
        let detector = Detector::new(Some(&outlier), 3, now);
        assert_eq!(fail(&detector, 0, 5, now), Some(OutlierEvent::EjectionSkipped { endpoint: 0 }));
    }

    #[test]
    fn panic_mode_below_min_healthy_percent_makes_every_endpoint_eligible() {
        let now = Instant::now();
        let outlier = config::Outlier { min_healthy_percent: 50, ..settings() };
        let detector = Detector::new(Some(&outlier), 4, now);
        fail(&detector, 0, 5, now);
        fail(&detector, 1, 5, now);
        // Two of four healthy: 50 % is not below 50 %.
        let eligible = detector.eligible(now);
        assert!(!eligible.panic);
        assert!(!eligible.allows(0) && !eligible.allows(1) && eligible.allows(2));
        fail(&detector, 2, 5, now);
        let eligible = detector.eligible(now);
        assert!(eligible.panic);
        assert!((0..4).all(|endpoint| eligible.allows(endpoint)));
        assert!(eligible.any());
        assert!(!eligible.allows(4));
    }

    #[tokio::test(start_paused = true)]
    async fn restored_after_its_time_with_a_restored_event() {
        let detector = Detector::new(Some(&settings()), 2, Instant::now());
        fail(&detector, 1, 5, Instant::now());
        tokio::time::advance(29 * SECOND).await;
        let eligible = detector.eligible(Instant::now());
        assert!(!eligible.allows(1));
        assert!(eligible.restored.is_empty());
        let view = &detector.view(Instant::now())[1];
        assert!(view.ejected);
        assert_eq!(view.ejected_remaining_ms, Some(1000));
        assert_eq!(view.ejections, 1);

        tokio::time::advance(SECOND).await;
        let eligible = detector.eligible(Instant::now());
        assert!(eligible.allows(1));
        assert_eq!(eligible.restored, vec![OutlierEvent::Restored { endpoint: 1 }]);
        // Reported once only.
        assert!(detector.eligible(Instant::now()).restored.is_empty());
        let view = &detector.view(Instant::now())[1];
        assert!(!view.ejected);
        assert_eq!(view.ejected_remaining_ms, None);
    }

    #[test]
    fn results_while_ejected_do_not_count() {
        let now = Instant::now();
        let detector = Detector::new(Some(&settings()), 2, now);
        fail(&detector, 0, 5, now);
        assert_eq!(fail(&detector, 0, 20, now), None);
        assert_eq!(detector.view(now)[0].consecutive_5xx, 0);
        assert_eq!(detector.view(now)[0].ejections, 1);
    }

    #[test]
    fn without_settings_nothing_is_ever_ejected() {
        let now = Instant::now();
        let detector = Detector::new(None, 2, now);
        assert_eq!(fail(&detector, 0, 1000, now), None);
        let eligible = detector.eligible(now);
        assert!(eligible.allows(0) && eligible.allows(1) && eligible.any());
        assert!(!eligible.panic);
        assert_eq!(detector.view(now)[0].consecutive_5xx, 0);
    }

    #[test]
    fn all_ejected_without_panic_mode_leaves_no_endpoint() {
        let now = Instant::now();
        let detector = Detector::new(Some(&settings()), 2, now);
        fail(&detector, 0, 5, now);
        fail(&detector, 1, 5, now);
        let eligible = detector.eligible(now);
        assert!(!eligible.panic);
        assert!(!eligible.any());
        assert!(!eligible.allows(0) && !eligible.allows(1));
    }

    #[test]
    fn out_of_range_endpoints_are_ignored() {
        let now = Instant::now();
        let detector = Detector::new(Some(&settings()), 1, now);
        assert_eq!(fail(&detector, 7, 10, now), None);
        assert!(!detector.eligible(now).allows(7));
        assert!(!Detector::new(Some(&settings()), 0, now).eligible(now).any());
    }

    #[test]
    fn ejection_state_survives_packing() {
        for ejection in [
            Ejection::Never,
            Ejection::Ejected { until: 0 },
            Ejection::Ejected { until: 123_456_789 },
            Ejection::Returned { at: 0 },
            Ejection::Returned { at: Ejection::MAX_NANOS },
        ] {
            assert_eq!(Ejection::unpack(ejection.pack()), ejection);
        }
    }
}
