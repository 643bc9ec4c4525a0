//! How one upstream call ended, as the policies (breaker, outlier ejection, retries, balancing) see it.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// A response head arrived with this status.
    Status(u16),
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect,
    /// No response head within the route's or the try's timeout.
    Timeout,
    /// The connection closed or was reset before a response head.
    Reset,
    /// HTTP/2: the upstream refused the stream (REFUSED_STREAM); nothing was processed.
    RefusedStream,
}

impl CallResult {
    pub fn is_5xx(self) -> bool {
        matches!(self, CallResult::Status(status) if (500..600).contains(&status))
    }

    /// "Gateway errors": 502, 503, 504, local connect failures, and timeouts (which the client sees
    /// as the proxy's own 504).
    pub fn is_gateway_error(self) -> bool {
        match self {
            CallResult::Status(status) => matches!(status, 502..=504),
            CallResult::Connect | CallResult::Timeout => true,
            CallResult::Reset | CallResult::RefusedStream => false,
        }
    }
}

/// A finished call: its result and how long the response head took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub result: CallResult,
    pub duration: Duration,
}
