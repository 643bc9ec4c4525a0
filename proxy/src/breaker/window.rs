//! The breaker's sliding window of recent outcomes: what the closed state decides on.
//!
//! Every request on every worker thread records into it, so it takes no lock. Two shapes, as in
//! resilience4j:
//!
//! - a time window (`window = "10s"`): ten buckets, each covering a tenth of the window, each stamped
//!   with the epoch (slice of time since the breaker was built) it counts. A bucket whose epoch has
//!   gone by is taken over by the first record of a newer epoch. The window read is the current
//!   bucket and the nine before it, so an outcome is forgotten between 0.9 and 1.0 window after it
//!   was recorded, never later;
//! - a count window (`window_calls = 100`): a ring of the last N outcomes, one `AtomicU8` per slot,
//!   with running totals adjusted by what each record swaps out.
//!
//! Single-threaded, both are exact. Under concurrency the races below are accepted, because the
//! breaker is a statistical guard and a lock here would serialise every request of the cluster:
//!
//! - time window: a record that arrives with a `now` from the previous bucket while another thread
//!   takes that bucket over may be counted in the new bucket; a totals read that falls between a
//!   takeover and the removal of the stale counts sees them for that instant (the breaker re-reads the
//!   totals under its lock before it opens); a record older than the whole window is dropped; a
//!   thread stalled in the middle of a takeover for a whole window may take a few newer records out;
//! - count window: two records that wrap onto the same slot may land in the opposite order of their
//!   indexes, and a totals read may see a record's totals before its slot (or the reverse). When the
//!   threads are done, the totals equal what the slots hold.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use remora_config::BreakerWindow;
use tokio::time::Instant;

/// How one finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Failed by the cluster's `failure_on`.
    pub failed: bool,
    /// Took at least `slow_call_duration`, failed or not.
    pub slow: bool,
}

/// Counts over a window (or over a half-open round's probes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Totals {
    /// Failures per call; 0 when there are no calls.
    pub fn failure_rate(self) -> f64 {
        share(self.failures, self.calls)
    }

    /// Slow calls per call; 0 when there are no calls.
    pub fn slow_call_rate(self) -> f64 {
        share(self.slow, self.calls)
    }
}

fn share(part: u64, whole: u64) -> f64 {
    match whole {
        0 => 0.0,
        // Precision loss above 2^53 calls does not matter for a rate.
        whole => part as f64 / whole as f64,
    }
}

#[derive(Debug)]
pub enum Window {
    Time(TimeWindow),
    Count(CountWindow),
}

impl Window {
    /// `origin` is the instant epochs are counted from; every `now` given later should be at or after
    /// it (an earlier one counts as the origin).
    pub fn new(shape: BreakerWindow, origin: Instant) -> Window {
        match shape {
            BreakerWindow::Time(length) => Window::Time(TimeWindow::new(length.get(), origin)),
            BreakerWindow::Calls(calls) => Window::Count(CountWindow::new(calls)),
        }
    }

    pub fn record(&self, verdict: Verdict, now: Instant) {
        match self {
            Window::Time(window) => window.record(verdict, now),
            Window::Count(window) => window.record(verdict),
        }
    }

    pub fn totals(&self, now: Instant) -> Totals {
        match self {
            Window::Time(window) => window.totals(now),
            Window::Count(window) => window.totals(),
        }
    }

    /// Forgets every outcome: the breaker closes with a fresh window.
    pub fn reset(&self) {
        match self {
            Window::Time(window) => window.reset(),
            Window::Count(window) => window.reset(),
        }
    }
}

const BUCKETS: usize = 10;
/// The epoch of a bucket that counts nothing. Real epochs stay below it.
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
pub struct TimeWindow {
    origin: Instant,
    bucket_nanos: u128,
    /// Boxed so that a count window does not carry the time window's size.
    buckets: Box<[Bucket; BUCKETS]>,
}

#[derive(Debug)]
struct Bucket {
    epoch: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl Bucket {
    fn empty() -> Bucket {
        Bucket {
            epoch: AtomicU64::new(EMPTY),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    fn counts(&self) -> Totals {
        Totals {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }

    fn add(&self, verdict: Verdict) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if verdict.failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if verdict.slow {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes counts read before the epoch changed. Subtracting (rather than zeroing) keeps every
    /// record made under the new epoch, however the threads interleave. Saturating, because a thread
    /// stalled inside a takeover across a whole window (or a reset) can subtract counts that another
    /// takeover already took out: it then loses a few records instead of wrapping a count.
    fn subtract(&self, stale: Totals) {
        for (counter, amount) in
            [(&self.calls, stale.calls), (&self.failures, stale.failures), (&self.slow, stale.slow)]
        {
            if amount > 0 {
                // The closure always answers `Some`, so the update always happens.
                let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                    Some(count.saturating_sub(amount))
                });
            }
        }
    }

    /// Moves the bucket from epoch `seen` to `next`, taking its old counts out. Only the thread whose
    /// compare-and-swap wins subtracts, and it read the counts before the swap, so nothing recorded
    /// under `next` is lost.
    fn take_over(&self, seen: u64, next: u64) {
        let stale = self.counts();
        if self.epoch.compare_exchange(seen, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.subtract(stale);
        }
    }
}

impl TimeWindow {
    fn new(length: Duration, origin: Instant) -> TimeWindow {
        // A window shorter than ten nanoseconds (validation only refuses zero) still gets
        // one-nanosecond buckets rather than a division by zero.
        let bucket_nanos = (length.as_nanos() / BUCKETS as u128).max(1);
        TimeWindow { origin, bucket_nanos, buckets: Box::new(std::array::from_fn(|_| Bucket::empty())) }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.bucket_nanos).unwrap_or(EMPTY - 1).min(EMPTY - 1)
    }

    fn bucket(&self, epoch: u64) -> &Bucket {
        &self.buckets[(epoch % BUCKETS as u64) as usize]
    }

    fn record(&self, verdict: Verdict, now: Instant) {
        let epoch = self.epoch(now);
        let bucket = self.bucket(epoch);
        // Ends: each pass either records, drops, or sees the epoch changed by a compare-and-swap
        // (its own or another thread's), and epochs only move forward between resets.
        loop {
            let seen = bucket.epoch.load(Ordering::Acquire);
            if seen == epoch {
                bucket.add(verdict);
                return;
            }
            if seen != EMPTY && seen > epoch {
                // A later slice owns the bucket: this outcome is older than the whole window.
                return;
            }
            bucket.take_over(seen, epoch);
        }
    }

    fn totals(&self, now: Instant) -> Totals {
        let epoch = self.epoch(now);
        let mut totals = Totals::default();
        for bucket in self.buckets.iter() {
            let seen = bucket.epoch.load(Ordering::Acquire);
            // EMPTY is above every real epoch, so an empty bucket fails the first test.
            if seen <= epoch && epoch - seen < BUCKETS as u64 {
                let counts = bucket.counts();
                totals.calls = totals.calls.saturating_add(counts.calls);
                totals.failures = totals.failures.saturating_add(counts.failures);
                totals.slow = totals.slow.saturating_add(counts.slow);
            }
        }
        clamped(totals)
    }

    fn reset(&self) {
        for bucket in self.buckets.iter() {
            loop {
                let seen = bucket.epoch.load(Ordering::Acquire);
                if seen == EMPTY {
                    break;
                }
                bucket.take_over(seen, EMPTY);
            }
        }
    }
}

/// The slot bits of a count window.
const RECORDED: u8 = 0b001;
const FAILED: u8 = 0b010;
const SLOW: u8 = 0b100;

#[derive(Debug)]
pub struct CountWindow {
    slots: Box<[AtomicU8]>,
    next: AtomicUsize,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl CountWindow {
    fn new(size: u32) -> CountWindow {
        // Validation refuses 0; a ring of one slot is the harmless reading of it.
        let size = usize::try_from(size).unwrap_or(usize::MAX).max(1);
        CountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    fn record(&self, verdict: Verdict) {
        let bits = RECORDED | if verdict.failed { FAILED } else { 0 } | if verdict.slow { SLOW } else { 0 };
        // The totals go up before the slot is written and down after the old slot value is swapped
        // out. A slot value can only be swapped out after the swap that wrote it (release, then
        // acquire), so every subtraction follows its addition and the totals never wrap below zero.
        self.adjust(bits, Direction::Add);
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let old = self.slots[index].swap(bits, Ordering::AcqRel);
        self.adjust(old, Direction::Subtract);
    }

    fn adjust(&self, bits: u8, direction: Direction) {
        for (bit, total) in [(RECORDED, &self.calls), (FAILED, &self.failures), (SLOW, &self.slow)] {
            if bits & bit != 0 {
                match direction {
                    Direction::Add => total.fetch_add(1, Ordering::Relaxed),
                    Direction::Subtract => total.fetch_sub(1, Ordering::Relaxed),
                };
            }
        }
    }

    fn totals(&self) -> Totals {
        let totals = Totals {
            calls: self.calls.load(Ordering::Relaxed).min(self.slots.len() as u64),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        };
        clamped(totals)
    }

    /// Empties every slot and takes what it held out of the totals, so the totals stay equal to the
    /// slots even if records race the reset.
    fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            self.adjust(old, Direction::Subtract);
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Add,
    Subtract,
}

/// Totals read counter by counter may be out of step under concurrency; never show more failures or
/// slow calls than calls.
fn clamped(totals: Totals) -> Totals {
    Totals {
        calls: totals.calls,
        failures: totals.failures.min(totals.calls),
        slow: totals.slow.min(totals.calls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Verdict = Verdict { failed: false, slow: false };
    const FAILED_CALL: Verdict = Verdict { failed: true, slow: false };
    const SLOW_CALL: Verdict = Verdict { failed: false, slow: true };

    fn totals(calls: u64, failures: u64, slow: u64) -> Totals {
        Totals { calls, failures, slow }
    }

    fn time_window(origin: Instant) -> Window {
        Window::new(BreakerWindow::Time(remora_config::Duration::from_secs(10)), origin)
    }

    #[test]
    fn rates_are_zero_without_calls() {
        assert_eq!(Totals::default().failure_rate(), 0.0);
        assert_eq!(Totals::default().slow_call_rate(), 0.0);
        assert_eq!(totals(4, 1, 3).failure_rate(), 0.25);
        assert_eq!(totals(4, 1, 3).slow_call_rate(), 0.75);
    }

    #[test]
    fn time_window_counts_each_bucket_for_exactly_ten_slices() {
        let origin = Instant::now();
        let window = time_window(origin);
        window.record(FAILED_CALL, origin);
        window.record(SLOW_CALL, origin + Duration::from_millis(999));
        window.record(OK, origin + Duration::from_secs(1));
        assert_eq!(window.totals(origin + Duration::from_millis(9_999)), totals(3, 1, 1));
        // At 10 s the first slice (0 s to 1 s) leaves the window, the second stays.
        assert_eq!(window.totals(origin + Duration::from_secs(10)), totals(1, 0, 0));
        assert_eq!(window.totals(origin + Duration::from_secs(11)), totals(0, 0, 0));
    }

    #[test]
    fn time_window_bucket_reused_by_a_later_slice_drops_its_old_counts() {
        let origin = Instant::now();
        let window = time_window(origin);
        window.record(FAILED_CALL, origin);
        window.record(OK, origin + Duration::from_secs(10));
        assert_eq!(window.totals(origin + Duration::from_secs(10)), totals(1, 0, 0));
        // An outcome stamped before the whole window is dropped rather than counted as new.
        window.record(FAILED_CALL, origin + Duration::from_millis(500));
        assert_eq!(window.totals(origin + Duration::from_secs(10)), totals(1, 0, 0));
    }

    #[test]
    fn time_window_reset_forgets_everything() {
        let origin = Instant::now();
        let window = time_window(origin);
        for second in 0..5 {
            window.record(FAILED_CALL, origin + Duration::from_secs(second));
        }
        window.reset();
        assert_eq!(window.totals(origin + Duration::from_secs(5)), Totals::default());
        window.record(OK, origin + Duration::from_secs(5));
        assert_eq!(window.totals(origin + Duration::from_secs(5)), totals(1, 0, 0));
    }

    #[test]
    fn count_window_keeps_the_last_n_across_wraparound() {
        let window = Window::new(BreakerWindow::Calls(3), Instant::now());
        let now = Instant::now();
        for verdict in [FAILED_CALL, SLOW_CALL, OK, OK] {
            window.record(verdict, now);
        }
        assert_eq!(window.totals(now), totals(3, 0, 1));
        window.record(OK, now);
        assert_eq!(window.totals(now), totals(3, 0, 0));
        window.record(Verdict { failed: true, slow: true }, now);
        assert_eq!(window.totals(now), totals(3, 1, 1));
        window.reset();
        assert_eq!(window.totals(now), Totals::default());
    }

    #[test]
    fn count_window_totals_match_its_slots_after_concurrent_wraparound() {
        let window = CountWindow::new(64);
        std::thread::scope(|scope| {
            for thread in 0..4u32 {
                let window = &window;
                scope.spawn(move || {
                    for call in 0..20_000u32 {
                        let failed = (call + thread) % 3 == 0;
                        let slow = (call + thread) % 7 == 0;
                        window.record(Verdict { failed, slow });
                    }
                });
            }
        });
        let from_slots = window.slots.iter().fold(Totals::default(), |mut sum, slot| {
            let bits = slot.load(Ordering::Relaxed);
            sum.calls += u64::from(bits & RECORDED != 0);
            sum.failures += u64::from(bits & FAILED != 0);
            sum.slow += u64::from(bits & SLOW != 0);
            sum
        });
        assert_eq!(from_slots.calls, 64);
        assert_eq!(window.totals(), from_slots);
        assert_eq!(window.calls.load(Ordering::Relaxed), 64, "the raw total, before clamping");
    }
}
