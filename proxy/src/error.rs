//! What goes wrong on a request's way, who caused it, and what the client gets.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::ProxyBody;

/// Which side of the proxy caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// A request the proxy answers itself, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matched: 404.
    NoRoute,
    /// The request is malformed in a way the HTTP parser let through: 400.
    BadRequest(&'static str),
    /// No connection to the upstream could be made: 502.
    Connect,
    /// The upstream did not answer within the route's timeout: 504.
    Timeout,
    /// The upstream closed or reset the connection before a response head: 502.
    UpstreamReset,
    /// A concurrency limit of the cluster is full: 503 `x-remora-breaker: limits`.
    Limits,
    /// The cluster's breaker is open (or half-open with its probes out): 503 `x-remora-breaker: open`.
    Open,
    /// Every endpoint of the cluster is ejected: 503 `x-remora-breaker: ejected`.
    Ejected,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest(_) => StatusCode::BAD_REQUEST,
            ErrorKind::Connect | ErrorKind::UpstreamReset => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Limits | ErrorKind::Open | ErrorKind::Ejected => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `x-remora-error` (or, for breakers, `x-remora-breaker`) value.
    pub fn cause(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no-route",
            ErrorKind::BadRequest(_) => "bad-request",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::UpstreamReset => "upstream-reset",
            ErrorKind::Limits => "limits",
            ErrorKind::Open => "open",
            ErrorKind::Ejected => "ejected",
        }
    }

    fn header(self) -> http::HeaderName {
        match self {
            ErrorKind::Limits | ErrorKind::Open | ErrorKind::Ejected => X_REMORA_BREAKER,
            ErrorKind::NoRoute
            | ErrorKind::BadRequest(_)
            | ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::UpstreamReset => X_REMORA_ERROR,
        }
    }

    pub fn side(self) -> Side {
        match self {
            ErrorKind::NoRoute | ErrorKind::BadRequest(_) => Side::Downstream,
            ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::UpstreamReset
            | ErrorKind::Limits
            | ErrorKind::Open
            | ErrorKind::Ejected => Side::Upstream,
        }
    }

    fn body(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no route matches this request\n",
            ErrorKind::BadRequest(reason) => reason,
            ErrorKind::Connect => "could not connect to the upstream\n",
            ErrorKind::Timeout => "the upstream did not answer in time\n",
            ErrorKind::UpstreamReset => "the upstream closed the connection\n",
            ErrorKind::Limits => "the upstream cluster is at its concurrency limit\n",
            ErrorKind::Open => "the upstream cluster's circuit breaker is open\n",
            ErrorKind::Ejected => "every endpoint of the upstream cluster is ejected\n",
        }
    }

    /// The local reply: status, `x-remora-error`, and a short plain-text body.
    /// How the stats count a request the proxy answered this way.
    pub fn outcome(self) -> crate::stats::RequestOutcome {
        use crate::stats::RequestOutcome;
        match self {
            ErrorKind::NoRoute | ErrorKind::BadRequest(_) => RequestOutcome::ClientError,
            ErrorKind::Connect => RequestOutcome::Connect,
            ErrorKind::Timeout => RequestOutcome::Timeout,
            ErrorKind::UpstreamReset => RequestOutcome::Reset,
            ErrorKind::Limits => RequestOutcome::Limits,
            ErrorKind::Open => RequestOutcome::Open,
            ErrorKind::Ejected => RequestOutcome::Ejected,
        }
    }

    pub fn response(self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::local(Bytes::from_static(self.body().as_bytes())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(self.header(), HeaderValue::from_static(self.cause()));
        response
    }
}

pub const X_REMORA_ERROR: http::HeaderName = http::HeaderName::from_static("x-remora-error");
pub const X_REMORA_BREAKER: http::HeaderName = http::HeaderName::from_static("x-remora-breaker");

/// Why the proxy could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: String, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot take over from the running proxy: {0}")]
    Handover(String),
    #[error(
        "runtime.socket_mark: cannot mark sockets with {mark:#x} ({source}; SO_MARK needs CAP_NET_ADMIN)"
    )]
    Mark { mark: u32, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_local_reply_names_its_cause() {
        for (kind, status, cause) in [
            (ErrorKind::NoRoute, 404, "no-route"),
            (ErrorKind::BadRequest("bad\n"), 400, "bad-request"),
            (ErrorKind::Connect, 502, "connect"),
            (ErrorKind::Timeout, 504, "timeout"),
            (ErrorKind::UpstreamReset, 502, "upstream-reset"),
        ] {
            let response = kind.response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[X_REMORA_ERROR], cause);
            assert_eq!(response.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        }
        for (kind, cause) in
            [(ErrorKind::Limits, "limits"), (ErrorKind::Open, "open"), (ErrorKind::Ejected, "ejected")]
        {
            let response = kind.response();
            assert_eq!(response.status().as_u16(), 503);
            assert_eq!(response.headers()[X_REMORA_BREAKER], cause);
            assert!(!response.headers().contains_key(X_REMORA_ERROR));
        }
    }
}
