//! A cluster's circuit breaker, with resilience4j's semantics (see `machine` for the rules). It is
//! asked once the request's cluster is known, before an endpoint is picked: an open breaker answers
//! 503 `x-remora-breaker: open` at once, without touching the upstream.
//!
//! This is the concurrent shell around the I/O-free [`machine`]. Every request of the cluster, on every
//! worker thread, passes here, so in the closed state nothing takes a lock: admission reads an atomic
//! state tag, outcomes go into the lock-free [`window`], and the thresholds are checked from the
//! window's totals. The mutex around the machine is taken only to change state (closed → open,
//! open → half-open) and for the half-open round's probes, which are few. An open breaker also
//! refuses without the lock until its time is over.

mod failure_on;
mod machine;
mod window;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use remora_config as config;
use tokio::time::Instant;

use crate::error::ErrorKind;
use crate::outcome::Outcome;

pub use failure_on::FailureOn;
pub use machine::Transition;

use machine::{Admission, Machine, State, Thresholds};
use window::{Verdict, Window};

/// One cluster's breaker, shared by every worker thread (the integrator holds it in an `Arc` or in the
/// cluster).
#[derive(Debug)]
pub struct Breaker {
    failure_on: FailureOn,
    slow_call_duration: Duration,
    thresholds: Thresholds,
    window: Window,
    /// The instant `open_until` is counted from.
    origin: Instant,
    /// The machine's state, published for the lock-free paths. Written only under the mutex.
    tag: AtomicU8,
    /// When open: the end of the open time, in nanoseconds since `origin`.
    open_until: AtomicU64,
    machine: Mutex<Machine>,
}

/// Leave to call the upstream. Hand it back to [`Breaker::record`] with the call's outcome, or to
/// [`Breaker::release`] if the call never reached the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a permit must be recorded or released, or a half-open probe slot is lost"]
pub struct Permit {
    kind: PermitKind,
    /// This admission turned the breaker half-open.
    half_opened: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PermitKind {
    /// Its outcome goes to the window.
    Call,
    /// A half-open probe: its outcome counts in the round that decides whether to close.
    Probe,
}

impl Permit {
    pub fn is_probe(self) -> bool {
        match self.kind {
            PermitKind::Call => false,
            PermitKind::Probe => true,
        }
    }

    /// The transition the admission itself caused, for the caller to log: `HalfOpened` for the call
    /// that found the open time over (it is the round's first probe).
    pub fn transition(self) -> Option<Transition> {
        self.half_opened.then_some(Transition::HalfOpened)
    }
}

/// The breaker refuses the call: open, or half-open with all its probes out. The client gets 503
/// `x-remora-breaker: open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

impl Refused {
    pub fn kind(self) -> ErrorKind {
        ErrorKind::Open
    }
}

/// What `/clusters` shows of a breaker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerView {
    /// `"closed"`, `"open"` or `"half_open"`. An open breaker whose time is over shows `"open"` (with
    /// 0 ms remaining) until a call turns it half-open.
    pub state: &'static str,
    /// The window's counts. In half-open they are those of the window before the breaker opened
    /// (plus late outcomes of calls admitted before it), not of the probes.
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
    /// 0 when there are no calls.
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub open_for_remaining_ms: Option<u64>,
    /// Re-opens from half-open since the breaker last closed.
    pub reopenings: u32,
}

/// `State` without its data, as the atomic `tag` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Closed,
    Open,
    HalfOpen,
}

impl Tag {
    fn of(state: State) -> Tag {
        match state {
            State::Closed => Tag::Closed,
            State::Open { .. } => Tag::Open,
            State::HalfOpen { .. } => Tag::HalfOpen,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Tag::Closed => 0,
            Tag::Open => 1,
            Tag::HalfOpen => 2,
        }
    }

    fn from_bits(bits: u8) -> Tag {
        match bits {
            0 => Tag::Closed,
            1 => Tag::Open,
            // Only `bits` writes the tag, so this is 2.
            _ => Tag::HalfOpen,
        }
    }
}

impl Breaker {
    /// A closed breaker with an empty window. Reads the clock once, for the origin its time window
    /// and open deadlines count from.
    pub fn new(settings: &config::Breaker) -> Breaker {
        let origin = Instant::now();
        Breaker {
            failure_on: FailureOn::new(&settings.failure_on),
            slow_call_duration: settings.slow_call_duration.get(),
            thresholds: Thresholds::new(settings),
            window: Window::new(settings.window, origin),
            origin,
            tag: AtomicU8::new(Tag::Closed.bits()),
            open_until: AtomicU64::new(0),
            machine: Mutex::new(Machine::new(settings)),
        }
    }

    /// Asks to call the upstream. Closed: always, without a lock. Open: refused until the open time
    /// is over; the first call after it turns the breaker half-open (see [`Permit::transition`]).
    /// Half-open: up to `half_open_calls` probes, then refused until the round is decided.
    pub fn admit(&self, now: Instant) -> Result<Permit, Refused> {
        match self.tag() {
            Tag::Closed => return Ok(Permit { kind: PermitKind::Call, half_opened: false }),
            Tag::Open => {
                // A stale deadline is one of an earlier opening, so it is never later than the real
                // one: refusing on it is right. Past it, the machine decides.
                if self.nanos_since_origin(now) < self.open_until.load(Ordering::Acquire) {
                    return Err(Refused);
                }
            }
            Tag::HalfOpen => {}
        }
        let mut machine = self.lock();
        let (admission, transition) = machine.admit(now);
        self.publish(&machine);
        let half_opened = transition == Some(Transition::HalfOpened);
        match admission {
            Admission::Call => Ok(Permit { kind: PermitKind::Call, half_opened }),
            Admission::Probe => Ok(Permit { kind: PermitKind::Probe, half_opened }),
            Admission::Refused => Err(Refused),
        }
    }

    /// Counts a permitted call's outcome. Returns the transition it caused, if any, for the caller to
    /// log or publish.
    pub fn record(&self, permit: Permit, outcome: Outcome, now: Instant) -> Option<Transition> {
        let verdict = Verdict {
            failed: self.failure_on.is_failure(outcome.result),
            slow: outcome.duration >= self.slow_call_duration,
        };
        match permit.kind {
            PermitKind::Call => {
                // Outcomes of calls admitted before the breaker opened still go to the window: they
                // are real, and the window is emptied when the breaker closes.
                self.window.record(verdict, now);
                match self.tag() {
                    Tag::Closed => {
                        if !self.thresholds.trips(self.window.totals(now)) {
                            return None;
                        }
                        let mut machine = self.lock();
                        // Read again under the lock: a close since the first read emptied the window,
                        // and those old totals must not open the new closed state.
                        let transition = machine.observe(self.window.totals(now), now);
                        self.publish(&machine);
                        transition
                    }
                    Tag::Open | Tag::HalfOpen => None,
                }
            }
            PermitKind::Probe => {
                let mut machine = self.lock();
                let transition = machine.probe_finished(verdict, now);
                match transition {
                    // Emptied before the tag says closed, so the new closed state starts from nothing.
                    Some(Transition::Closed) => self.window.reset(),
                    Some(Transition::Opened { .. } | Transition::HalfOpened) | None => {}
                }
                self.publish(&machine);
                transition
            }
        }
    }

    /// Gives back a permit whose call never reached the upstream (refused by another limit, or the
    /// client went away first), so a half-open probe slot is not lost. Nothing is counted.
    pub fn release(&self, permit: Permit) {
        match permit.kind {
            PermitKind::Call => {}
            PermitKind::Probe => self.lock().probe_released(),
        }
    }

    pub fn view(&self, now: Instant) -> BreakerView {
        let totals = self.window.totals(now);
        let state = self.lock().state();
        let (name, open_for_remaining_ms, reopenings) = match state {
            State::Closed => ("closed", None, 0),
            State::Open { until, reopenings } => {
                let remaining = until.saturating_duration_since(now).as_millis();
                ("open", Some(u64::try_from(remaining).unwrap_or(u64::MAX)), reopenings)
            }
            State::HalfOpen { reopenings, .. } => ("half_open", None, reopenings),
        };
        BreakerView {
            state: name,
            calls: totals.calls,
            failures: totals.failures,
            slow: totals.slow,
            failure_rate: totals.failure_rate(),
            slow_call_rate: totals.slow_call_rate(),
            open_for_remaining_ms,
            reopenings,
        }
    }

    fn tag(&self) -> Tag {
        Tag::from_bits(self.tag.load(Ordering::Acquire))
    }

    /// Makes the machine's state visible to the lock-free paths. Called under the lock after every
    /// step that may change it; the deadline is stored before the tag that makes it read.
    fn publish(&self, machine: &MutexGuard<'_, Machine>) {
        let state = machine.state();
        match state {
            State::Open { until, .. } => {
                self.open_until.store(self.nanos_since_origin(until), Ordering::Release)
            }
            State::Closed | State::HalfOpen { .. } => {}
        }
        self.tag.store(Tag::of(state).bits(), Ordering::Release);
    }

    fn nanos_since_origin(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The machine is never left half-changed (its steps do not panic), so a poisoned lock still
    /// guards a whole state: take it rather than fail every request of the cluster.
    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::CallResult;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);

    fn settings(window: config::BreakerWindow) -> config::Breaker {
        config::Breaker {
            window,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: config::Duration::from_secs(1),
            open_for: config::Duration::from_secs(5),
            max_open_for: config::Duration::from_secs(60),
            half_open_calls: 3,
            failure_on: ["5xx", "connect", "timeout", "reset"].map(str::to_owned).to_vec(),
        }
    }

    fn ten_seconds() -> config::BreakerWindow {
        config::BreakerWindow::Time(config::Duration::from_secs(10))
    }

    fn outcome(result: CallResult) -> Outcome {
        Outcome { result, duration: Duration::from_millis(10) }
    }

    const OK: CallResult = CallResult::Status(200);
    const FAILED: CallResult = CallResult::Status(500);

    /// Admits and records one call now; panics if it is refused.
    fn call(breaker: &Breaker, result: CallResult) -> Option<Transition> {
        let now = Instant::now();
        let permit = breaker.admit(now).expect("admitted");
        breaker.record(permit, outcome(result), now)
    }

    fn calls(breaker: &Breaker, results: &[CallResult]) -> Vec<Option<Transition>> {
        results.iter().map(|result| call(breaker, *result)).collect()
    }

    fn is_refused(breaker: &Breaker) -> bool {
        breaker.admit(Instant::now()) == Err(Refused)
    }

    fn opened(seconds: u64) -> Option<Transition> {
        Some(Transition::Opened { for_: Duration::from_secs(seconds) })
    }

    /// Opens a closed breaker with `min_calls` failures.
    fn trip(breaker: &Breaker) -> Option<Transition> {
        calls(breaker, &[FAILED; 4]).pop().flatten()
    }

    /// Waits out the open time and takes every probe of the round.
    async fn probes(breaker: &Breaker, wait: Duration) -> Vec<Permit> {
        advance(wait).await;
        (0..3).map(|_| breaker.admit(Instant::now()).expect("probe admitted")).collect()
    }

    fn finish(breaker: &Breaker, probes: Vec<Permit>, results: [CallResult; 3]) -> Vec<Option<Transition>> {
        let now = Instant::now();
        probes
            .into_iter()
            .zip(results)
            .map(|(probe, result)| breaker.record(probe, outcome(result), now))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_min_calls_even_at_full_failure() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        assert_eq!(calls(&breaker, &[FAILED; 3]), [None; 3]);
        assert_eq!(breaker.view(Instant::now()).failure_rate, 1.0);
        assert_eq!(breaker.view(Instant::now()).state, "closed");
        assert!(!is_refused(&breaker));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_exactly_when_the_failure_rate_reaches_the_threshold() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        // 4 calls at 0.25, 5 at 0.4: min_calls is reached but not the rate.
        assert_eq!(calls(&breaker, &[OK, OK, OK, FAILED, FAILED]), [None; 5]);
        // 6 calls at 0.5 (= failure_rate): open.
        assert_eq!(call(&breaker, FAILED), opened(5));
        let view = breaker.view(Instant::now());
        assert_eq!((view.state, view.calls, view.failures), ("open", 6, 3));
        assert_eq!(view.open_for_remaining_ms, Some(5_000));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_slow_call_rate_even_without_failures() {
        let mut slow_settings = settings(ten_seconds());
        slow_settings.slow_call_rate = 0.5;
        let breaker = Breaker::new(&slow_settings);
        let now = Instant::now();
        let record = |duration| {
            let permit = breaker.admit(now).expect("admitted");
            breaker.record(permit, Outcome { result: OK, duration }, now)
        };
        assert_eq!(record(Duration::from_millis(999)), None);
        assert_eq!(record(SECOND), None);
        assert_eq!(record(Duration::from_millis(10)), None);
        // Exactly slow_call_duration counts as slow: 2 slow in 4.
        assert_eq!(record(SECOND), opened(5));
        assert_eq!(breaker.view(now).slow, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_every_call_while_open() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        assert_eq!(trip(&breaker), opened(5));
        for _ in 0..100 {
            assert!(is_refused(&breaker));
        }
        advance(Duration::from_millis(4_999)).await;
        assert!(is_refused(&breaker));
        assert_eq!(breaker.view(Instant::now()).open_for_remaining_ms, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_after_open_for_and_the_first_call_is_a_probe() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        trip(&breaker);
        advance(5 * SECOND).await;
        assert_eq!(breaker.view(Instant::now()).state, "open", "nothing asked yet");
        let permit = breaker.admit(Instant::now()).expect("probe admitted");
        assert!(permit.is_probe());
        assert_eq!(permit.transition(), Some(Transition::HalfOpened));
        assert_eq!(breaker.view(Instant::now()).state, "half_open");
        let second = breaker.admit(Instant::now()).expect("probe admitted");
        assert_eq!(second.transition(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_half_open_calls_probes_and_refuses_the_next() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        trip(&breaker);
        let probes = probes(&breaker, 5 * SECOND).await;
        assert!(probes.iter().all(|probe| probe.is_probe()));
        assert!(is_refused(&breaker));
        // Two probes in: still deciding, still refusing.
        let now = Instant::now();
        assert_eq!(breaker.record(probes[0], outcome(OK), now), None);
        assert_eq!(breaker.record(probes[1], outcome(OK), now), None);
        assert!(is_refused(&breaker));
    }

    #[tokio::test(start_paused = true)]
    async fn successful_probes_close_with_an_empty_window() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        trip(&breaker);
        let probes = probes(&breaker, 5 * SECOND).await;
        assert_eq!(finish(&breaker, probes, [OK; 3]), [None, None, Some(Transition::Closed)]);
        let view = breaker.view(Instant::now());
        assert_eq!((view.state, view.calls, view.failures, view.reopenings), ("closed", 0, 0, 0));
        let permit = breaker.admit(Instant::now()).expect("admitted");
        assert!(!permit.is_probe());
        // The four failures that opened it are gone: three more do not reopen it.
        assert_eq!(calls(&breaker, &[FAILED; 3]), [None; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_probe_round_reopens_for_twice_as_long() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        trip(&breaker);
        let probes = probes(&breaker, 5 * SECOND).await;
        // Judged alone, without min_calls: 2 failures in 3 probes reach 0.5.
        assert_eq!(finish(&breaker, probes, [FAILED, OK, FAILED]), [None, None, opened(10)]);
        assert_eq!(breaker.view(Instant::now()).reopenings, 1);
        advance(Duration::from_millis(9_999)).await;
        assert!(is_refused(&breaker));
        advance(Duration::from_millis(1)).await;
        assert!(breaker.admit(Instant::now()).expect("probe admitted").is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn one_failure_in_three_probes_is_below_the_rate_and_closes() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        trip(&breaker);
        let probes = probes(&breaker, 5 * SECOND).await;
        assert_eq!(finish(&breaker, probes, [FAILED, OK, OK]), [None, None, Some(Transition::Closed)]);
    }

    #[tokio::test(start_paused = true)]
    async fn reopening_time_doubles_up_to_max_open_for() {
        let mut capped = settings(ten_seconds());
        capped.max_open_for = config::Duration::from_secs(12);
        let breaker = Breaker::new(&capped);
        assert_eq!(trip(&breaker), opened(5));
        let mut wait = 5;
        for expected in [10, 12, 12] {
            let probes = probes(&breaker, Duration::from_secs(wait)).await;
            assert_eq!(finish(&breaker, probes, [FAILED; 3])[2], opened(expected));
            wait = expected;
        }
        assert_eq!(breaker.view(Instant::now()).open_for_remaining_ms, Some(12_000));
        assert_eq!(breaker.view(Instant::now()).reopenings, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_resets_the_doubling() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        trip(&breaker);
        let probes_round = probes(&breaker, 5 * SECOND).await;
        assert_eq!(finish(&breaker, probes_round, [FAILED; 3])[2], opened(10));
        let probes_round = probes(&breaker, 10 * SECOND).await;
        assert_eq!(finish(&breaker, probes_round, [OK; 3])[2], Some(Transition::Closed));
        assert_eq!(trip(&breaker), opened(5));
        assert_eq!(breaker.view(Instant::now()).reopenings, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_a_half_open_slot() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        trip(&breaker);
        let mut probes = probes(&breaker, 5 * SECOND).await;
        assert!(is_refused(&breaker));
        breaker.release(probes.pop().expect("three probes"));
        let replacement = breaker.admit(Instant::now()).expect("the released slot");
        assert!(replacement.is_probe());
        assert!(is_refused(&breaker));
        probes.push(replacement);
        assert_eq!(finish(&breaker, probes, [OK; 3])[2], Some(Transition::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn releasing_an_ordinary_call_counts_nothing() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        let permit = breaker.admit(Instant::now()).expect("admitted");
        breaker.release(permit);
        assert_eq!(breaker.view(Instant::now()).calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_calls_admitted_before_the_trip_are_not_probes() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        let late = breaker.admit(Instant::now()).expect("admitted");
        trip(&breaker);
        let probes = probes(&breaker, 5 * SECOND).await;
        // The slow call admitted while closed finishes during the round: it decides nothing.
        assert_eq!(breaker.record(late, outcome(FAILED), Instant::now()), None);
        assert!(is_refused(&breaker));
        assert_eq!(finish(&breaker, probes, [OK; 3])[2], Some(Transition::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_outcomes_older_than_the_window() {
        let mut five = settings(ten_seconds());
        five.min_calls = 5;
        let breaker = Breaker::new(&five);
        assert_eq!(calls(&breaker, &[FAILED; 4]), [None; 4]);
        advance(9 * SECOND).await;
        assert_eq!(breaker.view(Instant::now()).calls, 4);
        advance(SECOND).await;
        assert_eq!(breaker.view(Instant::now()).calls, 0);
        // A fifth failure alone is below min_calls: the first four no longer count.
        assert_eq!(call(&breaker, FAILED), None);
        assert_eq!(calls(&breaker, &[FAILED; 3]), [None; 3]);
        assert_eq!(call(&breaker, FAILED), opened(5));
    }

    #[tokio::test(start_paused = true)]
    async fn count_window_keeps_exactly_the_last_n() {
        let mut last_five = settings(config::BreakerWindow::Calls(5));
        last_five.min_calls = 5;
        let breaker = Breaker::new(&last_five);
        assert_eq!(calls(&breaker, &[FAILED, FAILED, OK, OK, OK, OK, OK]), [None; 7]);
        let view = breaker.view(Instant::now());
        assert_eq!((view.calls, view.failures), (5, 0));
        // 2 failures in the last 5, then 3: the count window ignores time entirely.
        advance(3_600 * SECOND).await;
        assert_eq!(calls(&breaker, &[FAILED, FAILED]), [None; 2]);
        assert_eq!(call(&breaker, FAILED), opened(5));
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_open_the_breaker_only_when_listed() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        assert_eq!(calls(&breaker, &[CallResult::Status(404); 10]), [None; 10]);
        let mut with_4xx = settings(ten_seconds());
        with_4xx.failure_on.push("4xx".to_owned());
        let breaker = Breaker::new(&with_4xx);
        assert_eq!(calls(&breaker, &[CallResult::Status(404); 4])[3], opened(5));
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_and_exact_statuses_follow_failure_on() {
        let mut gateway = settings(ten_seconds());
        gateway.failure_on = vec!["gateway-error".to_owned(), "429".to_owned()];
        let breaker = Breaker::new(&gateway);
        // 500 and timeouts are not gateway errors.
        let passes = [CallResult::Status(500), CallResult::Timeout, CallResult::Status(501), OK];
        assert_eq!(calls(&breaker, &passes), [None; 4]);
        assert_eq!(
            calls(&breaker, &[CallResult::Status(502), CallResult::Connect, CallResult::Status(429)]),
            [None, None, None]
        );
        // 3 failures in 7 calls, then 4 in 8: open.
        assert_eq!(call(&breaker, CallResult::Status(504)), opened(5));
    }

    #[tokio::test(start_paused = true)]
    async fn view_reports_rates_and_zero_without_calls() {
        let breaker = Breaker::new(&settings(ten_seconds()));
        let empty = breaker.view(Instant::now());
        assert_eq!(
            empty,
            BreakerView {
                state: "closed",
                calls: 0,
                failures: 0,
                slow: 0,
                failure_rate: 0.0,
                slow_call_rate: 0.0,
                open_for_remaining_ms: None,
                reopenings: 0,
            }
        );
        calls(&breaker, &[OK, FAILED, OK]);
        let view = breaker.view(Instant::now());
        assert_eq!((view.calls, view.failures), (3, 1));
        assert!((view.failure_rate - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(Refused.kind(), ErrorKind::Open);
    }

    /// Every worker thread records into the same breaker; when they are done, nothing is lost.
    #[test]
    fn records_from_many_threads_add_up_exactly() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 10_000;
        for window in [ten_seconds(), config::BreakerWindow::Calls(100_000)] {
            let mut never_trips = settings(window);
            never_trips.min_calls = u32::MAX;
            let breaker = Breaker::new(&never_trips);
            let now = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..THREADS {
                    scope.spawn(|| {
                        for call in 0..PER_THREAD {
                            let result = if call % 4 == 0 { FAILED } else { OK };
                            let duration = if call % 5 == 0 { SECOND } else { Duration::ZERO };
                            let permit = breaker.admit(now).expect("closed");
                            assert_eq!(breaker.record(permit, Outcome { result, duration }, now), None);
                        }
                    });
                }
            });
            let view = breaker.view(now);
            assert_eq!(view.calls, THREADS * PER_THREAD, "{window:?}");
            assert_eq!(view.failures, THREADS * PER_THREAD / 4, "{window:?}");
            assert_eq!(view.slow, THREADS * PER_THREAD / 5, "{window:?}");
        }
    }
}
