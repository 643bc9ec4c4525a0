//! Retries: which failed tries may be tried again, how long to wait first, how many retries the
//! upstream can take, and which request bodies can be sent twice.
//!
//! It sits in `forward`, around the upstream call. Per request: [`replay`] the body (small bodies of
//! known length are read into memory so that a retry sends the same bytes; anything else is streamed
//! once and never retried), [`Budget::deposit`] once. Per failed try: retry only when
//! [`RetryPolicy::should_retry`] says the result is retryable *and* [`Budget::withdraw`] grants a
//! retry (in that order, so results that are not retryable never spend budget), after sleeping
//! [`RetryPolicy::backoff`]. The route's own timeout bounds the whole sequence.
//!
//! Everything here is free of I/O except [`replay`], which reads the body: time comes in as `now`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use remora_config::RetryOn;
use tokio::time::Instant;

use crate::outcome::CallResult;

/// Request bodies up to this size, with a known length, are held in memory so that they can be retried.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// A route's retry rules, compiled from `[routes.retry]`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    attempts: u32,
    per_try_timeout: Option<Duration>,
    on: Box<[RetryOn]>,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl RetryPolicy {
    pub fn new(config: &remora_config::Retry) -> Self {
        Self {
            attempts: config.attempts,
            per_try_timeout: config.per_try_timeout.map(remora_config::Duration::get),
            on: config.on.iter().copied().collect(),
            backoff_base: config.backoff_base.get(),
            backoff_max: config.backoff_max.get(),
        }
    }

    /// Whether a try that ended with `result` may be retried, `attempt` retries having been made already.
    ///
    /// A [`CallResult::Timeout`] is retryable exactly when the policy sets a per-try timeout: cutting
    /// a slow try short only helps if another try follows, so that is what the setting asks for. The
    /// caller must not ask once the route's own deadline has passed: a timeout then ends the request.
    pub fn should_retry(&self, result: CallResult, attempt: u32) -> bool {
        if attempt >= self.attempts {
            return false;
        }
        match result {
            CallResult::Timeout => self.per_try_timeout.is_some(),
            CallResult::Status(_) | CallResult::Connect | CallResult::Reset | CallResult::RefusedStream => {
                self.on.iter().any(|&condition| is_listed(condition, result))
            }
        }
    }

    /// How long one try may wait for its response head; `None` leaves only the route's timeout.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// The pause before retry number `attempt` (0 for the first retry): "full jitter", uniform in
    /// `[0, min(backoff_max, backoff_base × 2^attempt)]`, so that clients failing together do not
    /// come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = 2u32
            .checked_pow(attempt)
            .and_then(|factor| self.backoff_base.checked_mul(factor))
            .map_or(self.backoff_max, |backoff| backoff.min(self.backoff_max));
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=cap_nanos))
    }
}

/// Whether `condition` in a policy's `on` list covers `result`.
fn is_listed(condition: RetryOn, result: CallResult) -> bool {
    match condition {
        RetryOn::ConnectFailure => result == CallResult::Connect,
        RetryOn::Reset => result == CallResult::Reset,
        RetryOn::RefusedStream => result == CallResult::RefusedStream,
        RetryOn::ServerError => result.is_5xx(),
        // Not `CallResult::is_gateway_error`: that one also counts connect failures and timeouts,
        // which have their own conditions here.
        RetryOn::GatewayError => matches!(result, CallResult::Status(502..=504)),
        RetryOn::Status(status) => result == CallResult::Status(status),
    }
}

/// The span a [`Budget`] looks back over, in one-second buckets.
const WINDOW_SECONDS: u64 = 10;

/// Ratios are kept in millionths so that the allowance is integer arithmetic: `0.2 × 100` is 20,
/// not 19 after a floating-point rounding.
const RATIO_SCALE: u64 = 1_000_000;

/// A retry budget, as Linkerd and Finagle have it: over the last 10 s, retries may not exceed
/// `ratio` × the requests seen, plus a reserve of `min_per_second` retries per second so that a
/// quiet route can still retry. It caps the extra load retries add when an upstream struggles,
/// where a fixed count of attempts would multiply it.
///
/// Shared by every worker without a lock: ten one-second buckets of atomic counters, each stamped
/// with the second it counts. Races are tolerated on purpose: two threads may both pass the check for
/// the last retry left (the budget overshoots by at most the number of threads racing), and an
/// increment landing while its bucket is being recycled for a new second may be lost.
#[derive(Debug)]
pub struct Budget {
    origin: Instant,
    ratio_millionths: u64,
    /// `min_per_second` × the window.
    reserve: u64,
    buckets: [Bucket; WINDOW_SECONDS as usize],
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second (since the budget's origin) whose counts the bucket holds.
    second: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

impl Budget {
    /// `ratio` is the share of requests that may be retried (0.2: one retry per five requests);
    /// `now` is when the budget starts counting.
    pub fn new(ratio: f64, min_per_second: u32, now: Instant) -> Self {
        // `as` saturates: a negative or NaN ratio (refused by config validation anyway) becomes 0.
        let ratio_millionths = (ratio * RATIO_SCALE as f64).round() as u64;
        Self {
            origin: now,
            ratio_millionths,
            reserve: u64::from(min_per_second) * WINDOW_SECONDS,
            buckets: Default::default(),
        }
    }

    /// A budget with new settings that keeps this one's counts (its requests and spent retries).
    pub fn carrying(&self, ratio: f64, min_per_second: u32) -> Budget {
        let budget = Budget::new(ratio, min_per_second, self.origin);
        for (kept, bucket) in budget.buckets.iter().zip(&self.buckets) {
            kept.second.store(bucket.second.load(Ordering::Relaxed), Ordering::Relaxed);
            kept.deposits.store(bucket.deposits.load(Ordering::Relaxed), Ordering::Relaxed);
            kept.withdrawals.store(bucket.withdrawals.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        budget
    }

    /// Counts one request. Call it once per downstream request, not per try.
    pub fn deposit(&self, now: Instant) {
        self.bucket(now).deposits.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget: true if it was there (and is now spent), false if the
    /// retry must not be made.
    pub fn withdraw(&self, now: Instant) -> bool {
        if self.remaining(now) == 0 {
            return false;
        }
        self.bucket(now).withdrawals.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Retries the budget would grant right now.
    pub fn remaining(&self, now: Instant) -> u64 {
        let second = self.second(now);
        let (mut deposits, mut withdrawals) = (0u64, 0u64);
        for bucket in &self.buckets {
            // A bucket is counted while its second is within the window. `abs_diff` rather than a
            // subtraction: a caller whose `now` was read a moment before another's may see a bucket
            // already stamped with the next second, which is just as recent.
            if bucket.second.load(Ordering::Relaxed).abs_diff(second) < WINDOW_SECONDS {
                deposits = deposits.saturating_add(bucket.deposits.load(Ordering::Relaxed));
                withdrawals = withdrawals.saturating_add(bucket.withdrawals.load(Ordering::Relaxed));
            }
        }
        let earned = u128::from(deposits) * u128::from(self.ratio_millionths) / u128::from(RATIO_SCALE);
        let allowance = u64::try_from(earned).unwrap_or(u64::MAX).saturating_add(self.reserve);
        allowance.saturating_sub(withdrawals)
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// The bucket for `now`'s second, emptied first if it still holds a second that has left the
    /// window. Only the thread that wins the stamp empties it.
    fn bucket(&self, now: Instant) -> &Bucket {
        let second = self.second(now);
        let bucket = &self.buckets[(second % WINDOW_SECONDS) as usize];
        let stamped = bucket.second.load(Ordering::Relaxed);
        if stamped < second
            && bucket.second.compare_exchange(stamped, second, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            bucket.deposits.store(0, Ordering::Relaxed);
            bucket.withdrawals.store(0, Ordering::Relaxed);
        }
        bucket
    }
}

/// The request body as sent upstream on one try.
///
/// Both variants fail with `hyper::Error`: only the streamed downstream body can fail, and it
/// fails with that.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The downstream body, passed on frame by frame as it arrives. It can be sent once only.
    Streaming(Incoming),
    /// A complete body held in memory: a fresh copy for each try comes from [`ReplayableBody::body`].
    /// Each part is `None` once sent (or when there is none).
    Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Streaming(body) => Pin::new(body).poll_frame(context),
            UpstreamBody::Buffered { data, trailers } => match data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(trailers.take().map(|trailers| Ok(Frame::trailers(trailers)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streaming(body) => body.is_end_stream(),
            UpstreamBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Streaming(body) => body.size_hint(),
            UpstreamBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

/// A complete request body in memory, sent again as it was on every try.
#[derive(Clone, Debug, Default)]
pub struct ReplayableBody {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl ReplayableBody {
    /// A fresh copy for one try; cheap, as `Bytes` is reference-counted.
    pub fn body(&self) -> UpstreamBody {
        UpstreamBody::Buffered {
            // No data frame at all for an empty body, so that it reads as ended from the start.
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            trailers: self.trailers.clone(),
        }
    }
}

/// A request body, ready for the tries.
#[derive(Debug)]
pub enum Replay {
    /// In memory: every try may send it.
    Replayable(ReplayableBody),
    /// Unknown or large length: sent by the first try as it arrives, so no retry may follow a try
    /// that has started sending it.
    Streaming(Incoming),
}

/// What to do with a request body before the first try; [`replay`] does it.
#[derive(Debug)]
pub enum Prepared {
    /// The body had already ended: nothing to read, replayable as it is.
    Replayable(ReplayableBody),
    /// A known length within the limit: read it with [`collect_small`] before the first try.
    Collect(Incoming),
    /// Unknown or larger length: stream it, once.
    Streaming(Incoming),
}

/// Sorts a request body by what its length allows (see [`Prepared`]). Only bodies known to be small
/// are held, so a try never has to be retried after it began streaming.
pub fn prepare(body: Incoming, limit: usize) -> Prepared {
    match plan(&body, limit) {
        Plan::AlreadyEnded => Prepared::Replayable(ReplayableBody::default()),
        Plan::Collect => Prepared::Collect(body),
        Plan::Stream => Prepared::Streaming(body),
    }
}

/// [`prepare`], then [`collect_small`] when the body is to be held. Fails only when the downstream
/// body fails while it is read.
pub async fn replay(body: Incoming, limit: usize) -> Result<Replay, hyper::Error> {
    match prepare(body, limit) {
        Prepared::Replayable(body) => Ok(Replay::Replayable(body)),
        Prepared::Collect(body) => collect_small(body).await.map(Replay::Replayable),
        Prepared::Streaming(body) => Ok(Replay::Streaming(body)),
    }
}

/// Reads a whole body, data and trailers, into memory.
///
/// Only for bodies whose exact length is known and within the limit (what [`prepare`] picks):
/// hyper refuses a downstream body that runs past its declared length, so memory stays bounded.
pub async fn collect_small<B>(body: B) -> Result<ReplayableBody, B::Error>
where
    B: Body<Data = Bytes>,
{
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(ReplayableBody { data: collected.to_bytes(), trailers })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    AlreadyEnded,
    Collect,
    Stream,
}

/// The decision behind [`prepare`], for any body (a downstream `Incoming` cannot be built in tests).
fn plan(body: &impl Body, limit: usize) -> Plan {
    if body.is_end_stream() {
        return Plan::AlreadyEnded;
    }
    match body.size_hint().exact() {
        Some(length) if length <= limit as u64 => Plan::Collect,
        Some(_) | None => Plan::Stream,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::HeaderValue;
    use http_body_util::{Empty, Full, StreamBody};

    use super::*;

    fn policy(on: Vec<RetryOn>, attempts: u32, per_try_timeout: Option<Duration>) -> RetryPolicy {
        RetryPolicy::new(&remora_config::Retry {
            attempts,
            per_try_timeout: per_try_timeout.map(remora_config::Duration),
            on,
            budget_ratio: 0.2,
            min_retries_per_second: 10,
            backoff_base: remora_config::Duration::from_millis(25),
            backoff_max: remora_config::Duration::from_millis(250),
        })
    }

    fn backoff_policy(base: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy::new(&remora_config::Retry {
            attempts: 3,
            per_try_timeout: None,
            on: vec![RetryOn::ConnectFailure],
            budget_ratio: 0.2,
            min_retries_per_second: 10,
            backoff_base: remora_config::Duration(base),
            backoff_max: remora_config::Duration(max),
        })
    }

    /// Every kind of result, with the statuses the conditions draw lines between.
    const RESULTS: [CallResult; 12] = [
        CallResult::Connect,
        CallResult::Timeout,
        CallResult::Reset,
        CallResult::RefusedStream,
        CallResult::Status(200),
        CallResult::Status(429),
        CallResult::Status(499),
        CallResult::Status(500),
        CallResult::Status(502),
        CallResult::Status(503),
        CallResult::Status(504),
        CallResult::Status(599),
    ];

    /// The results among [`RESULTS`] that a policy retrying only on `condition` retries.
    fn retried_on(condition: RetryOn) -> Vec<CallResult> {
        let policy = policy(vec![condition], 1, None);
        RESULTS.into_iter().filter(|&result| policy.should_retry(result, 0)).collect()
    }

    #[test]
    fn connect_failure_retries_connect_errors_only() {
        assert_eq!(retried_on(RetryOn::ConnectFailure), [CallResult::Connect]);
    }

    #[test]
    fn reset_retries_resets_only() {
        assert_eq!(retried_on(RetryOn::Reset), [CallResult::Reset]);
    }

    #[test]
    fn refused_stream_retries_refused_streams_only() {
        assert_eq!(retried_on(RetryOn::RefusedStream), [CallResult::RefusedStream]);
    }

    #[test]
    fn server_error_retries_every_5xx() {
        assert_eq!(retried_on(RetryOn::ServerError), [500, 502, 503, 504, 599].map(CallResult::Status));
    }

    #[test]
    fn gateway_error_retries_502_503_504_only() {
        assert_eq!(retried_on(RetryOn::GatewayError), [502, 503, 504].map(CallResult::Status));
    }

    #[test]
    fn status_retries_exactly_that_status() {
        assert_eq!(retried_on(RetryOn::Status(429)), [CallResult::Status(429)]);
        assert_eq!(retried_on(RetryOn::Status(503)), [CallResult::Status(503)]);
    }

    #[test]
    fn conditions_add_up() {
        let policy = policy(vec![RetryOn::ConnectFailure, RetryOn::Status(429)], 1, None);
        assert!(policy.should_retry(CallResult::Connect, 0));
        assert!(policy.should_retry(CallResult::Status(429), 0));
        assert!(!policy.should_retry(CallResult::Status(503), 0));
    }

    #[test]
    fn attempts_cap_the_retries() {
        let policy = policy(vec![RetryOn::ConnectFailure], 2, None);
        assert!(policy.should_retry(CallResult::Connect, 0));
        assert!(policy.should_retry(CallResult::Connect, 1));
        assert!(!policy.should_retry(CallResult::Connect, 2));
        assert!(!policy.should_retry(CallResult::Connect, u32::MAX));
    }

    #[test]
    fn zero_attempts_never_retry() {
        let policy = policy(vec![RetryOn::ConnectFailure], 0, Some(Duration::from_secs(1)));
        assert!(!policy.should_retry(CallResult::Connect, 0));
        assert!(!policy.should_retry(CallResult::Timeout, 0));
    }

    #[test]
    fn timeout_is_retried_only_with_a_per_try_timeout() {
        let without = policy(vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::ServerError], 1, None);
        assert!(!without.should_retry(CallResult::Timeout, 0));
        assert_eq!(without.per_try_timeout(), None);

        let with = policy(vec![], 1, Some(Duration::from_millis(300)));
        assert!(with.should_retry(CallResult::Timeout, 0));
        assert!(!with.should_retry(CallResult::Timeout, 1));
        assert_eq!(with.per_try_timeout(), Some(Duration::from_millis(300)));
    }

    #[test]
    fn backoff_stays_within_its_cap() {
        fastrand::seed(7);
        let base = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        let policy = backoff_policy(base, max);
        for attempt in 0..8 {
            let cap = (base * 2u32.pow(attempt)).min(max);
            for _ in 0..1000 {
                assert!(policy.backoff(attempt) <= cap, "attempt {attempt} over {cap:?}");
            }
        }
    }

    #[test]
    fn backoff_grows_with_attempt() {
        fastrand::seed(11);
        let policy = backoff_policy(Duration::from_millis(25), Duration::from_secs(10));
        let longest = |attempt| (0..1000).map(|_| policy.backoff(attempt)).max().unwrap_or_default();
        let (first, third, sixth) = (longest(0), longest(2), longest(5));
        // Over 1000 uniform samples the longest lies within 1% of the cap.
        assert!(first > Duration::from_millis(24) && first <= Duration::from_millis(25), "{first:?}");
        assert!(third > Duration::from_millis(99) && third <= Duration::from_millis(100), "{third:?}");
        assert!(sixth > Duration::from_millis(792) && sixth <= Duration::from_millis(800), "{sixth:?}");
    }

    #[test]
    fn backoff_saturates_at_the_max_for_huge_attempts() {
        let max = Duration::from_millis(250);
        let policy = backoff_policy(Duration::from_millis(25), max);
        for attempt in [31, 32, 64, u32::MAX] {
            assert!(policy.backoff(attempt) <= max);
        }
    }

    #[test]
    fn backoff_is_zero_with_a_zero_base() {
        let policy = backoff_policy(Duration::ZERO, Duration::from_millis(250));
        assert_eq!(policy.backoff(3), Duration::ZERO);
    }

    fn withdrawals(budget: &Budget, now: Instant) -> u64 {
        let mut granted = 0;
        while budget.withdraw(now) {
            granted += 1;
            assert!(granted <= 1_000_000, "the budget never runs out");
        }
        granted
    }

    #[test]
    fn budget_grants_its_ratio_of_the_requests() {
        let start = Instant::now();
        let budget = Budget::new(0.2, 0, start);
        for _ in 0..100 {
            budget.deposit(start);
        }
        assert_eq!(budget.remaining(start), 20);
        assert_eq!(withdrawals(&budget, start), 20);
        assert!(!budget.withdraw(start));
    }

    #[test]
    fn budget_counts_requests_across_the_window() {
        let start = Instant::now();
        let budget = Budget::new(0.2, 0, start);
        for second in 0..10 {
            for _ in 0..10 {
                budget.deposit(start + Duration::from_secs(second));
            }
        }
        assert_eq!(withdrawals(&budget, start + Duration::from_millis(9_500)), 20);
    }

    #[test]
    fn budget_reserve_grants_min_per_second_times_the_window_without_traffic() {
        let start = Instant::now();
        let budget = Budget::new(0.2, 3, start);
        assert_eq!(withdrawals(&budget, start), 30);
    }

    #[test]
    fn budget_adds_the_reserve_to_the_ratio() {
        let start = Instant::now();
        let budget = Budget::new(0.5, 1, start);
        for _ in 0..10 {
            budget.deposit(start);
        }
        assert_eq!(withdrawals(&budget, start), 15);
    }

    #[test]
    fn budget_without_ratio_or_reserve_grants_nothing() {
        let start = Instant::now();
        let budget = Budget::new(0.0, 0, start);
        for _ in 0..1000 {
            budget.deposit(start);
        }
        assert!(!budget.withdraw(start));
    }

    #[test]
    fn budget_deposits_expire_after_ten_seconds() {
        let start = Instant::now();
        let budget = Budget::new(0.2, 0, start);
        for _ in 0..100 {
            budget.deposit(start);
        }
        assert_eq!(budget.remaining(start + Duration::from_millis(9_999)), 20);
        assert_eq!(budget.remaining(start + Duration::from_secs(10)), 0);
        assert!(!budget.withdraw(start + Duration::from_secs(10)));
    }

    #[test]
    fn budget_withdrawals_expire_after_ten_seconds() {
        let start = Instant::now();
        let budget = Budget::new(0.2, 1, start);
        assert_eq!(withdrawals(&budget, start), 10);
        assert_eq!(withdrawals(&budget, start + Duration::from_secs(9)), 0);
        assert_eq!(withdrawals(&budget, start + Duration::from_secs(10)), 10);
    }

    #[test]
    fn budget_recycles_a_bucket_for_its_next_second() {
        let start = Instant::now();
        let budget = Budget::new(0.1, 0, start);
        for _ in 0..50 {
            budget.deposit(start + Duration::from_secs(3));
        }
        // Second 13 takes the same bucket as second 3: the old deposits must not carry over.
        let later = start + Duration::from_secs(13);
        budget.deposit(later);
        assert_eq!(budget.remaining(later), 0);
        for _ in 0..9 {
            budget.deposit(later);
        }
        assert_eq!(budget.remaining(later), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_follows_paused_time() {
        let budget = Budget::new(0.2, 0, Instant::now());
        for _ in 0..10 {
            budget.deposit(Instant::now());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.remaining(Instant::now()), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.remaining(Instant::now()), 0);
    }

    #[test]
    fn budget_before_its_origin_counts_as_its_first_second() {
        let start = Instant::now() + Duration::from_secs(60);
        let budget = Budget::new(0.2, 0, start);
        for _ in 0..10 {
            budget.deposit(start - Duration::from_secs(30));
        }
        assert_eq!(budget.remaining(start), 2);
    }

    fn trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers
    }

    /// Reads a body to its end, frame by frame.
    async fn frames(mut body: UpstreamBody) -> (Vec<Bytes>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("a buffered body does not fail");
            match frame.into_data() {
                Ok(bytes) => {
                    assert!(trailers.is_none(), "data after trailers");
                    data.push(bytes);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert!(body.is_end_stream());
        (data, trailers)
    }

    #[tokio::test]
    async fn buffered_body_yields_data_then_trailers_then_end() {
        let body =
            UpstreamBody::Buffered { data: Some(Bytes::from_static(b"hello")), trailers: Some(trailers()) };
        assert!(!body.is_end_stream());
        assert_eq!(frames(body).await, (vec![Bytes::from_static(b"hello")], Some(trailers())));
    }

    #[tokio::test]
    async fn replayable_body_gives_the_same_frames_on_every_copy() {
        let replayable = ReplayableBody { data: Bytes::from_static(b"hello"), trailers: Some(trailers()) };
        let expected = (vec![Bytes::from_static(b"hello")], Some(trailers()));
        assert_eq!(frames(replayable.body()).await, expected);
        assert_eq!(frames(replayable.body()).await, expected);
    }

    #[test]
    fn buffered_size_hint_is_exact() {
        let replayable = ReplayableBody { data: Bytes::from_static(b"hello"), trailers: Some(trailers()) };
        assert_eq!(replayable.body().size_hint().exact(), Some(5));
        let empty = ReplayableBody::default().body();
        assert_eq!(empty.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn empty_replayable_body_has_ended_from_the_start() {
        let body = ReplayableBody::default().body();
        assert!(body.is_end_stream());
        assert_eq!(frames(body).await, (vec![], None));
    }

    #[tokio::test]
    async fn collect_small_keeps_data_and_trailers() {
        let body = Full::new(Bytes::from_static(b"payload"))
            .with_trailers(async { Some(Ok::<_, Infallible>(trailers())) });
        let replayable = collect_small(body).await.expect("infallible");
        let expected = (vec![Bytes::from_static(b"payload")], Some(trailers()));
        assert_eq!(frames(replayable.body()).await, expected);
        assert_eq!(frames(replayable.body()).await, expected);
    }

    #[tokio::test]
    async fn collect_small_joins_data_frames() {
        let chunks = [b"pay".as_slice(), b"load".as_slice()]
            .map(|chunk| Ok::<_, Infallible>(Frame::data(Bytes::from_static(chunk))));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let replayable = collect_small(body).await.expect("infallible");
        assert_eq!(frames(replayable.body()).await, (vec![Bytes::from_static(b"payload")], None));
    }

    #[test]
    fn plan_keeps_an_ended_body_as_it_is() {
        assert_eq!(plan(&Empty::<Bytes>::new(), REPLAY_LIMIT), Plan::AlreadyEnded);
    }

    #[test]
    fn plan_collects_a_small_body_of_known_length() {
        let body = Full::new(Bytes::from(vec![0u8; 100]));
        assert_eq!(plan(&body, REPLAY_LIMIT), Plan::Collect);
        let at_limit = Full::new(Bytes::from(vec![0u8; REPLAY_LIMIT]));
        assert_eq!(plan(&at_limit, REPLAY_LIMIT), Plan::Collect);
    }

    #[test]
    fn plan_streams_a_body_over_the_limit() {
        let body = Full::new(Bytes::from(vec![0u8; REPLAY_LIMIT + 1]));
        assert_eq!(plan(&body, REPLAY_LIMIT), Plan::Stream);
    }

    #[test]
    fn plan_streams_a_body_of_unknown_length() {
        let chunks = [Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"tiny")))];
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(plan(&body, REPLAY_LIMIT), Plan::Stream);
    }
}
