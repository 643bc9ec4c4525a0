//! One series' figures over some span: two HDR histograms (µs, 3 significant digits) and the counts
//! by outcome and status class. The same type is a worker's recorder on the request path and, on the
//! reading side, every accumulated view (since start, this interval, the last one, not yet reported).

use hdrhistogram::Histogram;

/// How a request ended, as the stats count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The upstream answered 1xx, 2xx or 3xx.
    Success,
    /// The upstream answered 4xx.
    ClientError,
    /// The upstream answered 5xx.
    ServerError,
    /// Refused by a concurrency limit.
    Limits,
    /// Refused by the open breaker.
    Open,
    /// Refused: every endpoint ejected.
    Ejected,
    /// The route's timeout (or the last try's) ran out.
    Timeout,
    /// No connection to the upstream could be made.
    Connect,
    /// The upstream reset or closed the exchange, before the head or in the body.
    Reset,
}

impl RequestOutcome {
    pub const ALL: [RequestOutcome; 9] = [
        RequestOutcome::Success,
        RequestOutcome::ClientError,
        RequestOutcome::ServerError,
        RequestOutcome::Limits,
        RequestOutcome::Open,
        RequestOutcome::Ejected,
        RequestOutcome::Timeout,
        RequestOutcome::Connect,
        RequestOutcome::Reset,
    ];

    /// The outcome of an upstream's answer.
    pub fn of_status(status: u16) -> Self {
        match status {
            500.. => RequestOutcome::ServerError,
            400..=499 => RequestOutcome::ClientError,
            _ => RequestOutcome::Success,
        }
    }

    /// The label value in `/metrics` and the key in `/stats`.
    pub fn name(self) -> &'static str {
        match self {
            RequestOutcome::Success => "success",
            RequestOutcome::ClientError => "client_error",
            RequestOutcome::ServerError => "server_error",
            RequestOutcome::Limits => "limits",
            RequestOutcome::Open => "open",
            RequestOutcome::Ejected => "ejected",
            RequestOutcome::Timeout => "timeout",
            RequestOutcome::Connect => "connect",
            RequestOutcome::Reset => "reset",
        }
    }
}

/// Latencies above an hour are recorded as an hour: a histogram's size grows with its largest value.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

#[derive(Clone, Debug)]
pub struct Recorder {
    /// Request received → end of the response body.
    pub latency: Histogram<u64>,
    /// Request received → response head handed to the connection.
    pub headers: Histogram<u64>,
    pub outcomes: [u64; RequestOutcome::ALL.len()],
    /// Responses by status class, 1xx to 5xx (the proxy's own answers included).
    pub classes: [u64; 5],
    /// Sum of `latency`'s values (HDR keeps no exact sum; Prometheus' `_sum` wants one).
    pub latency_sum_us: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: histogram(),
            headers: histogram(),
            outcomes: [0; RequestOutcome::ALL.len()],
            classes: [0; 5],
            latency_sum_us: 0,
        }
    }
}

/// An empty histogram that grows to the largest value recorded (it starts a few KiB small).
pub fn histogram() -> Histogram<u64> {
    // 3 significant digits is within hdrhistogram's accepted 0..=5.
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
}

impl Recorder {
    pub fn record(&mut self, outcome: RequestOutcome, status: u16, headers_us: u64, latency_us: u64) {
        let latency_us = latency_us.min(MAX_LATENCY_US);
        let headers_us = headers_us.min(latency_us);
        // Auto-resizing histograms take any value up to the cap; a failure cannot happen, and losing one
        // sample would be better than failing the request.
        let _ = self.latency.record(latency_us);
        let _ = self.headers.record(headers_us);
        self.latency_sum_us = self.latency_sum_us.saturating_add(latency_us);
        self.outcomes[outcome as usize] += 1;
        if let Some(class) =
            (status / 100).checked_sub(1).and_then(|class| self.classes.get_mut(class as usize))
        {
            *class += 1;
        }
    }

    pub fn requests(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    pub fn count(&self, outcome: RequestOutcome) -> u64 {
        self.outcomes[outcome as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.requests() == 0
    }

    /// Adds another span's figures, exactly.
    pub fn add(&mut self, other: &Recorder) {
        if other.is_empty() {
            return;
        }
        let _ = self.latency.add(&other.latency);
        let _ = self.headers.add(&other.headers);
        for (mine, theirs) in self.outcomes.iter_mut().zip(other.outcomes) {
            *mine += theirs;
        }
        for (mine, theirs) in self.classes.iter_mut().zip(other.classes) {
            *mine += theirs;
        }
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
    }

    /// Empties the figures; the histograms keep their memory for the next span.
    pub fn reset(&mut self) {
        self.latency.reset();
        self.headers.reset();
        self.outcomes = [0; RequestOutcome::ALL.len()];
        self.classes = [0; 5];
        self.latency_sum_us = 0;
    }

    /// Success over all requests; `None` without requests (no traffic is neither good nor bad).
    pub fn success_rate(&self) -> Option<f64> {
        let requests = self.requests();
        (requests > 0).then(|| self.count(RequestOutcome::Success) as f64 / requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_outcomes_and_classes() {
        let mut recorder = Recorder::default();
        recorder.record(RequestOutcome::Success, 200, 900, 1_000);
        recorder.record(RequestOutcome::ServerError, 503, 50, 80);
        recorder.record(RequestOutcome::Limits, 503, 5, 5);
        assert_eq!(recorder.requests(), 3);
        assert_eq!(recorder.count(RequestOutcome::Success), 1);
        assert_eq!(recorder.count(RequestOutcome::Limits), 1);
        assert_eq!(recorder.classes, [0, 1, 0, 0, 2]);
        assert_eq!(recorder.latency_sum_us, 1_085);
        assert_eq!(recorder.latency.len(), 3);
        assert_eq!(recorder.latency.max(), recorder.latency.highest_equivalent(1_000));
        assert_eq!(recorder.success_rate(), Some(1.0 / 3.0));
    }

    #[test]
    fn adding_is_exact_and_reset_empties() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        let mut both = Recorder::default();
        for value in 1..2_000u64 {
            let value = value * value;
            let target = if value % 3 == 0 { &mut a } else { &mut b };
            target.record(RequestOutcome::Success, 200, value / 2, value);
            both.record(RequestOutcome::Success, 200, value / 2, value);
        }
        a.add(&b);
        assert_eq!(a.latency, both.latency);
        assert_eq!(a.headers, both.headers);
        assert_eq!(a.outcomes, both.outcomes);
        assert_eq!(a.latency_sum_us, both.latency_sum_us);
        a.reset();
        assert!(a.is_empty());
        assert_eq!(a.latency.len(), 0);
        assert_eq!(a.success_rate(), None);
    }

    #[test]
    fn a_latency_past_the_cap_is_recorded_at_the_cap() {
        let mut recorder = Recorder::default();
        recorder.record(RequestOutcome::Timeout, 504, u64::MAX, u64::MAX);
        assert_eq!(recorder.latency.len(), 1);
        assert!(recorder.latency.max() >= MAX_LATENCY_US);
        assert_eq!(recorder.latency_sum_us, MAX_LATENCY_US);
    }
}
