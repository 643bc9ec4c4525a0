//! How the control client waits between failed attempts, and how it tells people that control is
//! down (once per outage, not once per attempt).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with full jitter: each wait is drawn from `[ceiling / 2, ceiling]`, the ceiling
/// doubling from `first` up to `max`. Jitter keeps a fleet of proxies from retrying in step when
/// control comes back.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// For an unreachable control: 100 ms doubling to 5 s.
    pub fn outage() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// For a registration control refused (conflicts, a wrong token): a person has to act, so the
    /// retries are slower and the error log quieter. 1 s doubling to 30 s.
    pub fn refused() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, ceiling: first }
    }

    /// The next wait; each call doubles the ceiling until `max`.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(self.max);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(fastrand::u64(0..=spread))
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }
}

/// Whether control is reachable, shared by the client's loops so that an outage is logged once at
/// warn when it starts and once at info when it ends, however many attempts fail in between.
#[derive(Debug, Default)]
pub struct Outage {
    down: AtomicBool,
    since: std::sync::Mutex<Option<Instant>>,
}

impl Outage {
    /// A request could not reach control (connection refused or reset, a timeout, a 5xx). True when
    /// this starts an outage.
    pub fn failed(&self, error: &dyn std::fmt::Display) -> bool {
        if self.down.swap(true, Ordering::AcqRel) {
            tracing::debug!(%error, "control still unreachable");
            return false;
        }
        *lock(&self.since) = Some(Instant::now());
        tracing::warn!(%error, "control unreachable: serving on the last good state, retrying with backoff");
        true
    }

    /// A request reached control. True when this ends an outage.
    pub fn reached(&self) -> bool {
        if !self.down.swap(false, Ordering::AcqRel) {
            return false;
        }
        let down_for = lock(&self.since).take().map(|since| since.elapsed()).unwrap_or_default();
        tracing::info!(?down_for, "control reachable again");
        true
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_within_jitter_and_resets() {
        let mut backoff = Backoff::outage();
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..10 {
            let wait = backoff.next_wait();
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{wait:?} within [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(5));
        }
        assert_eq!(ceiling, Duration::from_secs(5));
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn an_outage_starts_and_ends_once() {
        let outage = Outage::default();
        assert!(!outage.reached(), "reaching control outside an outage ends nothing");
        assert!(outage.failed(&"connection refused"));
        assert!(!outage.failed(&"connection refused"), "the second failure is the same outage");
        assert!(outage.is_down());
        assert!(outage.reached());
        assert!(!outage.reached());
    }
}
