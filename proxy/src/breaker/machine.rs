//! The breaker's state machine, with resilience4j's semantics, free of I/O and of the clock: every
//! step is given `now`. The concurrent shell in `mod.rs` keeps it behind a mutex and consults it only
//! to change state (or count half-open probes); the closed state's hot path never reaches it.
//!
//! - closed → open when the window, holding at least `min_calls` calls, reaches `failure_rate` or
//!   `slow_call_rate`;
//! - open refuses everything until its time is over; the first call after that makes it half-open
//!   and is its first probe;
//! - half-open admits `half_open_calls` probes and, once all are in, judges them alone on the same
//!   rates (no `min_calls`): closed if below both, open again otherwise;
//! - each re-open from half-open doubles the open time (`open_for`, 2×, 4×, … up to `max_open_for`);
//!   closing starts the doubling over.

use std::time::Duration;

use remora_config as config;
use tokio::time::Instant;

use super::window::{Totals, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Refusing every call until `until`. `reopenings` counts the re-opens from half-open since the
    /// breaker last closed: the open time is `open_for × 2^reopenings`, capped.
    Open {
        until: Instant,
        reopenings: u32,
    },
    /// Probing: `admitted` probes let through (released ones given back), `finished` of them done,
    /// with `failures` and `slow` among those.
    HalfOpen {
        admitted: u32,
        finished: u32,
        failures: u32,
        slow: u32,
        reopenings: u32,
    },
}

/// A change of state, for the caller to log or publish as an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Now refusing every call for this long.
    Opened {
        for_: Duration,
    },
    HalfOpened,
    Closed,
}

/// What the machine says to a call asking to go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// An ordinary call: its outcome goes to the window.
    Call,
    /// A half-open probe: its outcome decides the round.
    Probe,
    Refused,
}

/// The rates that open the breaker, shared by the closed window and the half-open round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    min_calls: u64,
    failure_rate: f64,
    slow_call_rate: f64,
}

impl Thresholds {
    pub fn new(settings: &config::Breaker) -> Thresholds {
        Thresholds {
            min_calls: u64::from(settings.min_calls),
            failure_rate: settings.failure_rate,
            slow_call_rate: settings.slow_call_rate,
        }
    }

    /// Whether the closed window should open the breaker.
    pub fn trips(self, window: Totals) -> bool {
        window.calls >= self.min_calls && self.crossed(window)
    }

    /// Whether either rate reaches its threshold, whatever the number of calls. No calls never
    /// crosses, even if a threshold were 0.
    fn crossed(self, totals: Totals) -> bool {
        totals.calls > 0
            && (totals.failure_rate() >= self.failure_rate || totals.slow_call_rate() >= self.slow_call_rate)
    }
}

#[derive(Debug)]
pub struct Machine {
    state: State,
    thresholds: Thresholds,
    open_for: Duration,
    max_open_for: Duration,
    half_open_calls: u32,
}

/// The state a transition goes to, before its details (open time, zeroed counters) are filled in.
#[derive(Clone, Copy, Debug)]
enum Next {
    Open { reopenings: u32 },
    HalfOpen { reopenings: u32 },
    Closed,
}

impl Machine {
    pub fn new(settings: &config::Breaker) -> Machine {
        Machine {
            state: State::Closed,
            thresholds: Thresholds::new(settings),
            open_for: settings.open_for.get(),
            max_open_for: settings.max_open_for.get(),
            // Validation refuses 0, which would leave the breaker half-open for ever.
            half_open_calls: settings.half_open_calls.max(1),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// A call asks to go through. Returns the transition too when the asking itself changed the
    /// state (open → half-open).
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match &mut self.state {
            State::Closed => (Admission::Call, None),
            &mut State::Open { until, reopenings } => {
                if now < until {
                    return (Admission::Refused, None);
                }
                let transition = self.enter(Next::HalfOpen { reopenings }, now);
                // The call that finds the open time over is the first probe.
                let (admission, _) = self.admit(now);
                (admission, Some(transition))
            }
            State::HalfOpen { admitted, .. } => {
                if *admitted < self.half_open_calls {
                    *admitted += 1;
                    (Admission::Probe, None)
                } else {
                    (Admission::Refused, None)
                }
            }
        }
    }

    /// The closed window's totals after a record: opens the breaker if they reach a threshold.
    /// Totals arriving in another state are stale (the state changed since they were read).
    pub fn observe(&mut self, window: Totals, now: Instant) -> Option<Transition> {
        match self.state {
            State::Closed => {
                if self.thresholds.trips(window) {
                    Some(self.enter(Next::Open { reopenings: 0 }, now))
                } else {
                    None
                }
            }
            State::Open { .. } | State::HalfOpen { .. } => None,
        }
    }

    /// A probe's outcome. The last probe of the round decides it.
    pub fn probe_finished(&mut self, verdict: Verdict, now: Instant) -> Option<Transition> {
        match &mut self.state {
            State::HalfOpen { admitted: _, finished, failures, slow, reopenings } => {
                *finished += 1;
                *failures += u32::from(verdict.failed);
                *slow += u32::from(verdict.slow);
                if *finished < self.half_open_calls {
                    return None;
                }
                let probes = Totals {
                    calls: u64::from(*finished),
                    failures: u64::from(*failures),
                    slow: u64::from(*slow),
                };
                let next = if self.thresholds.crossed(probes) {
                    Next::Open { reopenings: reopenings.saturating_add(1) }
                } else {
                    Next::Closed
                };
                Some(self.enter(next, now))
            }
            // A round ends only once all its probes are in, so no probe outlives its round; one
            // arriving here is a caller's mistake and must not move the breaker.
            State::Closed | State::Open { .. } => None,
        }
    }

    /// A probe admitted but never sent (another limit refused it): its slot goes back to the round.
    pub fn probe_released(&mut self) {
        match &mut self.state {
            State::HalfOpen { admitted, finished, .. } => {
                if *admitted > *finished {
                    *admitted -= 1;
                }
            }
            State::Closed | State::Open { .. } => {}
        }
    }

    /// Every change of state goes through here.
    fn enter(&mut self, next: Next, now: Instant) -> Transition {
        match next {
            Next::Open { reopenings } => {
                let for_ = self.open_time(reopenings);
                self.state = State::Open { until: later(now, for_), reopenings };
                Transition::Opened { for_ }
            }
            Next::HalfOpen { reopenings } => {
                self.state = State::HalfOpen { admitted: 0, finished: 0, failures: 0, slow: 0, reopenings };
                Transition::HalfOpened
            }
            Next::Closed => {
                self.state = State::Closed;
                Transition::Closed
            }
        }
    }

    /// `open_for × 2^reopenings`, capped at `max_open_for`.
    fn open_time(&self, reopenings: u32) -> Duration {
        self.open_for.saturating_mul(2u32.saturating_pow(reopenings)).min(self.max_open_for)
    }
}

/// `now + by`, without the panic of `Instant + Duration` on overflow: an absurd `max_open_for` from a
/// config file means "open for a very long time", not a crash.
fn later(now: Instant, by: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    now.checked_add(by).or_else(|| now.checked_add(CENTURY)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Verdict = Verdict { failed: false, slow: false };
    const FAILED: Verdict = Verdict { failed: true, slow: false };

    fn settings() -> config::Breaker {
        config::Breaker {
            window: config::BreakerWindow::Calls(10),
            min_calls: 4,
            failure_rate: 0.5,
            slow_call_rate: 0.5,
            slow_call_duration: config::Duration::from_secs(1),
            open_for: config::Duration::from_secs(5),
            max_open_for: config::Duration::from_secs(60),
            half_open_calls: 2,
            failure_on: vec!["5xx".to_owned()],
        }
    }

    fn totals(calls: u64, failures: u64, slow: u64) -> Totals {
        Totals { calls, failures, slow }
    }

    #[test]
    fn thresholds_need_min_calls_only_in_the_closed_window() {
        let thresholds = Thresholds::new(&settings());
        assert!(!thresholds.trips(totals(3, 3, 3)));
        assert!(thresholds.trips(totals(4, 2, 0)));
        assert!(thresholds.trips(totals(4, 0, 2)));
        assert!(!thresholds.trips(totals(4, 1, 1)));
        assert!(thresholds.crossed(totals(1, 1, 0)));
        assert!(!thresholds.crossed(Totals::default()));
    }

    #[test]
    fn closed_opens_on_tripping_totals_only() {
        let now = Instant::now();
        let mut machine = Machine::new(&settings());
        assert_eq!(machine.observe(totals(4, 1, 0), now), None);
        assert_eq!(machine.state(), State::Closed);
        assert_eq!(machine.admit(now), (Admission::Call, None));
        let opened = machine.observe(totals(4, 2, 0), now);
        assert_eq!(opened, Some(Transition::Opened { for_: Duration::from_secs(5) }));
        assert_eq!(machine.state(), State::Open { until: now + Duration::from_secs(5), reopenings: 0 });
        // Stale totals from before the trip change nothing.
        assert_eq!(machine.observe(totals(10, 10, 0), now), None);
    }

    #[test]
    fn open_turns_half_open_on_the_first_call_after_its_time_and_that_call_is_a_probe() {
        let now = Instant::now();
        let mut machine = Machine::new(&settings());
        machine.observe(totals(4, 4, 0), now);
        let almost = now + Duration::from_millis(4_999);
        assert_eq!(machine.admit(almost), (Admission::Refused, None));
        let over = now + Duration::from_secs(5);
        assert_eq!(machine.admit(over), (Admission::Probe, Some(Transition::HalfOpened)));
        assert_eq!(
            machine.state(),
            State::HalfOpen { admitted: 1, finished: 0, failures: 0, slow: 0, reopenings: 0 }
        );
        assert_eq!(machine.admit(over), (Admission::Probe, None));
        assert_eq!(machine.admit(over), (Admission::Refused, None));
    }

    #[test]
    fn half_open_decides_only_when_every_probe_is_in() {
        let now = Instant::now();
        let mut machine = Machine::new(&settings());
        machine.observe(totals(4, 4, 0), now);
        let later = now + Duration::from_secs(5);
        machine.admit(later);
        machine.admit(later);
        assert_eq!(machine.probe_finished(OK, later), None);
        // One failure in two probes reaches 0.5: open again, for twice as long.
        assert_eq!(
            machine.probe_finished(FAILED, later),
            Some(Transition::Opened { for_: Duration::from_secs(10) })
        );
        assert_eq!(machine.state(), State::Open { until: later + Duration::from_secs(10), reopenings: 1 });
    }

    #[test]
    fn open_time_doubles_up_to_the_cap() {
        let machine = Machine::new(&settings());
        let seconds: Vec<u64> = (0..6).map(|reopenings| machine.open_time(reopenings).as_secs()).collect();
        assert_eq!(seconds, [5, 10, 20, 40, 60, 60]);
        assert_eq!(machine.open_time(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn probes_outside_half_open_are_ignored() {
        let now = Instant::now();
        let mut machine = Machine::new(&settings());
        assert_eq!(machine.probe_finished(FAILED, now), None);
        machine.probe_released();
        assert_eq!(machine.state(), State::Closed);
    }

    #[test]
    fn releasing_never_takes_back_a_finished_probe() {
        let now = Instant::now();
        let mut machine = Machine::new(&settings());
        machine.observe(totals(4, 4, 0), now);
        let later = now + Duration::from_secs(5);
        machine.admit(later);
        machine.probe_finished(OK, later);
        machine.probe_released();
        assert_eq!(
            machine.state(),
            State::HalfOpen { admitted: 1, finished: 1, failures: 0, slow: 0, reopenings: 0 }
        );
    }

    #[test]
    fn an_absurd_open_time_does_not_overflow_the_clock() {
        let now = Instant::now();
        let mut huge = settings();
        huge.open_for = config::Duration(Duration::MAX);
        huge.max_open_for = config::Duration(Duration::MAX);
        let mut machine = Machine::new(&huge);
        machine.observe(totals(4, 4, 0), now);
        assert_eq!(machine.admit(now + Duration::from_secs(365 * 24 * 60 * 60)), (Admission::Refused, None));
    }
}
