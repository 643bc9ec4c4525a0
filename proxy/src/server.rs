//! Step 2 of a request's way, and the place that shows the order of all of them: hyper hands each
//! request to [`ProxyService`], which routes it (step 3) and picks a backend (4) under one `ArcSwap`
//! load, synchronously; then, in the request's own future:
//!
//! 5. the cluster's guards: a concurrency-limit slot (`limits`), the circuit breaker's permission
//!    (`breaker`), and the endpoints outlier ejection leaves eligible (`outlier`);
//! 6. the endpoint, chosen among the eligible by the cluster's balancer (`balance`);
//! 7. the try, on a pooled connection (`forward`, `pool`), bounded by the per-try timeout and the
//!    route's deadline; its outcome is recorded by the breaker, the detector and the balancer, and a
//!    retryable failure is tried again (`retry`) while the policy, the budget, `max_retries` and the
//!    deadline allow it and the body can be replayed.
//!
//! 8. the stats: the response's [`Record`](crate::stats::Record) (outcome, status, time to the head)
//!    rides on its body and is written into the route × cluster × version series when the body ends.
//!
//! No snapshot is cloned per request: only the chosen cluster's and series' `Arc`s (and the route's
//! retry state, when it has one) travel into the future. Every request leaves with a valid W3C
//! `traceparent` (`trace`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::breaker::Permit;
use crate::cluster::Cluster;
use crate::error::ErrorKind;
use crate::events::EventKind;
use crate::forward;
use crate::headers;
use crate::outcome::{CallResult, Outcome};
use crate::pool::{Lease, UpstreamError};
use crate::retry::{Replay, UpstreamBody, REPLAY_LIMIT};
use crate::route::{host_of, RequestKey, RouteRetry};
use crate::snapshot::{Shared, Snapshot};
use crate::stats::{micros, AccessEntry, Record, RequestOutcome, Series};

/// The service of one downstream connection. `T` chooses each request's target: the listener's
/// routes ([`Routes`], every reverse listener), or a fixed local app ([`LocalApp`], an inbound
/// listener without routes); each is compiled on its own, so the routed path carries nothing of the
/// other.
#[derive(Clone)]
pub struct ProxyService<T = Routes> {
    shared: Arc<Shared>,
    listener: Arc<str>,
    /// The client's IP, formatted once per connection for `x-forwarded-for`.
    client_ip: HeaderValue,
    targets: T,
}

/// How a request's target is chosen (step 3 and 4, or a fixed target).
pub trait Targets: Clone + Send + Sync + 'static {
    /// The cluster and series for `request`, with the route's timeout and retry state.
    fn target<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        listener: &str,
        request: &Request<Incoming>,
        host: Option<&str>,
    ) -> Result<Target<'a>, ErrorKind>;
}

/// What [`Targets`] chose for one request, borrowed from the snapshot (or the local app).
pub struct Target<'a> {
    pub cluster: &'a Arc<Cluster>,
    pub series: &'a Arc<Series>,
    pub timeout: Option<Duration>,
    pub retry: Option<&'a Arc<RouteRetry>>,
}

/// The listener's route table, then the route's weighted split.
#[derive(Clone, Copy, Debug, Default)]
pub struct Routes;

impl Targets for Routes {
    #[inline]
    fn target<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        listener: &str,
        request: &Request<Incoming>,
        host: Option<&str>,
    ) -> Result<Target<'a>, ErrorKind> {
        let table = snapshot.table(listener).ok_or(ErrorKind::NoRoute)?;
        let key = RequestKey {
            host: host.map(host_of),
            path: request.uri().path(),
            method: request.method(),
            headers: request.headers(),
        };
        let route = table.find(&key).ok_or(ErrorKind::NoRoute)?;
        let target = route.split.pick(request.headers());
        Ok(Target {
            cluster: &target.cluster,
            series: &target.series,
            timeout: route.timeout,
            retry: route.retry.as_ref(),
        })
    }
}

/// A target chosen without a route: a cluster, and the series its requests are counted in.
#[derive(Debug)]
pub struct Fixed {
    pub cluster: Arc<Cluster>,
    pub series: Arc<Series>,
}

/// The local app behind an inbound listener without routes, on one port: HTTP/2 requests go to it
/// over HTTP/2 (gRPC keeps its trailers), others over HTTP/1.1; no route timeout, no retries.
#[derive(Debug)]
pub struct LocalApp {
    pub http1: Fixed,
    pub http2: Fixed,
}

impl Targets for Arc<LocalApp> {
    fn target<'a>(
        &'a self,
        _: &'a Snapshot,
        _: &str,
        request: &Request<Incoming>,
        _: Option<&str>,
    ) -> Result<Target<'a>, ErrorKind> {
        let fixed = if request.version() == Version::HTTP_2 { &self.http2 } else { &self.http1 };
        Ok(Target { cluster: &fixed.cluster, series: &fixed.series, timeout: None, retry: None })
    }
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl ProxyService {
    pub fn new(shared: Arc<Shared>, listener: Arc<str>, client: std::net::SocketAddr) -> Self {
        Self::with(shared, listener, client, Routes)
    }
}

impl ProxyService<Arc<LocalApp>> {
    /// The service of a connection to the local app behind an inbound listener without routes.
    pub fn local(
        shared: Arc<Shared>,
        listener: Arc<str>,
        client: std::net::SocketAddr,
        app: Arc<LocalApp>,
    ) -> Self {
        Self::with(shared, listener, client, app)
    }
}

impl<T: Targets> ProxyService<T> {
    fn with(shared: Arc<Shared>, listener: Arc<str>, client: std::net::SocketAddr, targets: T) -> Self {
        let client_ip = HeaderValue::from_str(&client.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { shared, listener, client_ip, targets }
    }

    /// Routes and picks the backend; cleans the headers.
    fn prepare(&self, mut request: Request<Incoming>, started: Instant) -> Result<Exchange, ErrorKind> {
        let host = request_host(&request)?;
        let snapshot = self.shared.snapshot.load();
        let access_log = snapshot.config.stats.access_log;
        let target = self.targets.target(&snapshot, &self.listener, &request, host)?;
        let (cluster, series, timeout, retry) =
            (target.cluster.clone(), target.series.clone(), target.timeout, target.retry);
        let access = access_log.then(|| {
            Box::new(AccessEntry {
                method: request.method().clone(),
                path: request.uri().path().into(),
                host: host.unwrap_or_default().into(),
                client: self.client_ip.clone(),
                traceparent: HeaderValue::from_static(""),
            })
        });

        let upgrade = cluster.protocol == remora_config::UpstreamProtocol::Http1
            && request.version() <= Version::HTTP_11
            && headers::is_upgrade(request.headers());
        headers::remove_hop_by_hop(request.headers_mut(), upgrade);
        headers::add_forwarded(request.headers_mut(), &self.client_ip, "http");
        let traceparent = crate::trace::ensure_traceparent(request.headers_mut());
        let access = access.map(|mut access| {
            access.traceparent = traceparent;
            access
        });
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        Ok(Exchange {
            request,
            close: false,
            started,
            series,
            access,
            cluster,
            timeout,
            // A protocol switch is never retried: the handshake cannot be replayed.
            retry: if upgrade { None } else { retry.cloned() },
            downstream_upgrade,
        })
    }
}

impl<T: Targets> hyper::service::Service<Request<Incoming>> for ProxyService<T> {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let close = request.version() <= Version::HTTP_11
            && self.shared.closing.load(std::sync::atomic::Ordering::Relaxed);
        match self.prepare(request, started) {
            Ok(mut exchange) => {
                exchange.close = close;
                Box::pin(exchange.finish())
            }
            Err(kind) => {
                self.shared.stats.unrouted(kind);
                let mut response = kind.response();
                if close {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

/// A routed request on its way to the cluster.
struct Exchange {
    request: Request<Incoming>,
    /// Answer with `connection: close` (the proxy is shutting down).
    close: bool,
    started: Instant,
    series: Arc<Series>,
    access: Option<Box<AccessEntry>>,
    cluster: Arc<Cluster>,
    timeout: Option<Duration>,
    retry: Option<Arc<RouteRetry>>,
    downstream_upgrade: Option<OnUpgrade>,
}

/// What the client gets: the upstream's response, or the proxy's own answer.
// Moved once per request: boxing the larger variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Upstream(Response<ProxyBody>),
    Local(ErrorKind),
}

/// How one try ended.
enum Tried {
    Response(Response<Incoming>, Option<Lease>),
    Failed(ErrorKind),
}

impl Exchange {
    /// Forwards the request and attaches its stats record to the response.
    async fn finish(self) -> Result<Response<ProxyBody>, Infallible> {
        let Exchange { request, close, started, series, access, cluster, timeout, retry, downstream_upgrade } =
            self;
        let reply = forward(request, started, &cluster, timeout, retry, downstream_upgrade).await;
        let (mut response, outcome) = match reply {
            Reply::Upstream(response) => {
                let outcome = RequestOutcome::of_status(response.status().as_u16());
                (response, outcome)
            }
            Reply::Local(kind) => (kind.response(), kind.outcome()),
        };
        if close && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let record = Record {
            series,
            started,
            headers_us: micros(started.elapsed()),
            status: response.status().as_u16(),
            outcome,
            access,
        };
        Ok(response.map(|body| body.with_record(record)))
    }
}

/// Steps 5 to 7: guards, endpoint, tries.
async fn forward(
    request: Request<Incoming>,
    started: Instant,
    cluster: &Arc<Cluster>,
    timeout: Option<Duration>,
    retry: Option<Arc<RouteRetry>>,
    downstream_upgrade: Option<OnUpgrade>,
) -> Reply {
    let deadline = timeout.map(|timeout| started + timeout);
    let Ok(_in_flight) = cluster.limits.request() else {
        return Reply::Local(ErrorKind::Limits);
    };
    if let Some(retry) = &retry {
        retry.budget.deposit(started);
    }
    let (parts, body) = request.into_parts();
    // Only a body known to be small is held for replay; any other is streamed once and its
    // request never retried.
    let mut body = match &retry {
        Some(_) => match crate::retry::replay(body, REPLAY_LIMIT).await {
            Ok(replay) => replay,
            Err(error) => {
                tracing::debug!(%error, "reading the request body failed");
                return Reply::Local(ErrorKind::BadRequest("the request body could not be read\n"));
            }
        },
        None => Replay::Streaming(body),
    };
    let mut parts = Some(parts);
    let mut attempt = 0u32;
    let mut _retry_slot = None;
    let mut last_endpoint = None;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Reply::Local(ErrorKind::Timeout);
        }
        let replayable = matches!(body, Replay::Replayable(_));
        let last_try = retry.is_none() || !replayable;
        let head = if last_try { parts.take() } else { parts.as_ref().map(clone_head) };
        let try_body = match &mut body {
            Replay::Replayable(replayable) => Some(replayable.body()),
            Replay::Streaming(_) => {
                match std::mem::replace(&mut body, Replay::Replayable(Default::default())) {
                    Replay::Streaming(streaming) => Some(UpstreamBody::Streaming(streaming)),
                    Replay::Replayable(_) => None,
                }
            }
        };
        let (Some(head), Some(try_body)) = (head, try_body) else {
            return Reply::Local(ErrorKind::UpstreamReset);
        };
        let per_try = retry.as_ref().and_then(|retry| retry.policy.per_try_timeout());
        let limit = match (per_try, deadline) {
            (Some(per_try), Some(deadline)) => Some(per_try.min(deadline - now)),
            (Some(per_try), None) => Some(per_try),
            (None, Some(deadline)) => Some(deadline - now),
            (None, None) => None,
        };
        let (tried, result, used) =
            try_once(cluster, Request::from_parts(head, try_body), limit, last_endpoint).await;
        last_endpoint = used;
        if let (Some(retry), Some(result), false) = (&retry, result, last_try) {
            if let Some(backoff) = retry_after(retry, cluster, result, attempt, deadline, &mut _retry_slot) {
                attempt += 1;
                tracing::debug!(cluster = %cluster.name, attempt, ?result, "retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        return respond(tried, cluster, downstream_upgrade);
    }
}

/// Whether a failed try is tried again, and after what pause: the policy must list the failure and
/// allow another attempt, the pause must end before the deadline, the budget must have room and the
/// cluster's `max_retries` a free slot (held until the request ends).
fn retry_after(
    retry: &RouteRetry,
    cluster: &Cluster,
    result: CallResult,
    attempt: u32,
    deadline: Option<Instant>,
    slot: &mut Option<crate::limits::Slot>,
) -> Option<Duration> {
    if !retry.policy.should_retry(result, attempt) {
        return None;
    }
    let now = Instant::now();
    let backoff = retry.policy.backoff(attempt);
    if deadline.is_some_and(|deadline| now + backoff >= deadline) {
        return None;
    }
    if slot.is_none() {
        *slot = Some(cluster.limits.retry().ok()?);
    }
    if !retry.budget.withdraw(now) {
        return None;
    }
    Some(backoff)
}

/// One try: the breaker's permission, an eligible endpoint, the exchange, and its outcome recorded.
/// The result is `None` when the proxy refused the try itself (breaker open, all ejected, limits):
/// nothing reached the upstream, and nothing is retried.
async fn try_once(
    cluster: &Cluster,
    mut request: Request<UpstreamBody>,
    limit: Option<Duration>,
    avoid: Option<usize>,
) -> (Tried, Option<CallResult>, Option<usize>) {
    let now = Instant::now();
    let permit: Option<Permit> = match &cluster.breaker {
        None => None,
        Some(breaker) => match breaker.admit(now) {
            Ok(permit) => {
                if let Some(transition) = permit.transition() {
                    breaker_event(cluster, transition);
                }
                Some(permit)
            }
            Err(refused) => return (Tried::Failed(refused.kind()), None, None),
        },
    };
    let eligible = cluster.outlier.eligible(now);
    for restored in &eligible.restored {
        cluster.outlier_event(*restored);
    }
    // A retry goes to another endpoint than the one that just failed, when there is one.
    let chosen = if !eligible.any() {
        None
    } else {
        cluster
            .balancer
            .pick(|index| eligible.allows(index) && Some(index) != avoid, now)
            .or_else(|| cluster.balancer.pick(|index| eligible.allows(index), now))
    };
    let Some(index) = chosen else {
        if let (Some(breaker), Some(permit)) = (&cluster.breaker, permit) {
            breaker.release(permit);
        }
        return (Tried::Failed(ErrorKind::Ejected), None, None);
    };
    let endpoint = &cluster.endpoints[index];
    forward::aim(&mut request, endpoint, cluster.protocol);
    let in_flight = cluster.balancer.start(index);
    let send = endpoint.pool.handle().send(request);
    let exchanged = match limit {
        Some(limit) => tokio::time::timeout(limit, send).await.ok(),
        None => Some(send.await),
    };
    drop(in_flight);
    let finished = Instant::now();
    let (tried, result) = match exchanged {
        None => (Tried::Failed(ErrorKind::Timeout), CallResult::Timeout),
        Some(Ok((response, lease))) => {
            let status = response.status().as_u16();
            (Tried::Response(response, lease), CallResult::Status(status))
        }
        Some(Err(UpstreamError::Limits(_))) => {
            // Refused before reaching the upstream: nothing to record against it.
            if let (Some(breaker), Some(permit)) = (&cluster.breaker, permit) {
                breaker.release(permit);
            }
            return (Tried::Failed(ErrorKind::Limits), None, Some(index));
        }
        Some(Err(error)) => {
            let result = if error.is_refused_stream() {
                CallResult::RefusedStream
            } else {
                match forward::classify(&error) {
                    ErrorKind::Connect => CallResult::Connect,
                    _ => CallResult::Reset,
                }
            };
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, %error, "upstream failed");
            (Tried::Failed(forward::classify(&error)), result)
        }
    };
    let duration = finished - now;
    cluster.balancer.observe(index, duration, finished);
    if let (Some(breaker), Some(permit)) = (&cluster.breaker, permit) {
        if let Some(transition) = breaker.record(permit, Outcome { result, duration }, finished) {
            breaker_event(cluster, transition);
        }
    }
    if let Some(event) = cluster.outlier.record(index, result, finished) {
        cluster.outlier_event(event);
    }
    (tried, Some(result), Some(index))
}

fn breaker_event(cluster: &Cluster, transition: crate::breaker::Transition) {
    let kind = match transition {
        crate::breaker::Transition::Opened { for_ } => EventKind::BreakerOpened { open_for: for_ },
        crate::breaker::Transition::HalfOpened => EventKind::BreakerHalfOpen,
        crate::breaker::Transition::Closed => EventKind::BreakerClosed,
    };
    cluster.events.raise(&cluster.name, kind);
}

/// The client's response: the upstream's (hop-by-hop headers removed, a protocol switch joined), or
/// the proxy's own.
fn respond(tried: Tried, cluster: &Cluster, downstream_upgrade: Option<OnUpgrade>) -> Reply {
    let (mut response, lease) = match tried {
        Tried::Response(response, lease) => (response, lease),
        Tried::Failed(kind) => return Reply::Local(kind),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(downstream) = downstream_upgrade else {
            tracing::debug!(cluster = %cluster.name, "upstream switched protocols unasked");
            return Reply::Local(ErrorKind::UpstreamReset);
        };
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(downstream, upstream));
        headers::remove_hop_by_hop(response.headers_mut(), true);
    } else {
        headers::remove_hop_by_hop(response.headers_mut(), false);
    }
    Reply::Upstream(response.map(|body| ProxyBody::upstream(body, lease)))
}

/// A copy of a request head for another try.
fn clone_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// Once both sides have switched protocols, copies bytes both ways until either side closes.
async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(downstream, upstream) {
        Ok((downstream, upstream)) => {
            let mut downstream = TokioIo::new(downstream);
            let mut upstream = TokioIo::new(upstream);
            if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        Err(error) => tracing::debug!(%error, "protocol switch failed"),
    }
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or the one `Host`
/// header. Missing on HTTP/1.1, repeated or malformed is a bad request.
fn request_host(request: &Request<Incoming>) -> Result<Option<&str>, ErrorKind> {
    if let Some(authority) = request.uri().authority() {
        return Ok(Some(authority.as_str()));
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => {
            Err(ErrorKind::BadRequest("an HTTP/1.1 request needs a Host header\n"))
        }
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(ErrorKind::BadRequest("a request may carry only one Host header\n")),
        (Some(host), None) if host.is_empty() => Ok(None),
        (Some(host), None) => match host.to_str() {
            Ok(host) if is_valid_host(host.as_bytes()) => Ok(Some(host)),
            _ => Err(ErrorKind::BadRequest("the Host header is not a valid host\n")),
        },
    }
}

/// `host[:port]` with RFC 3986 reg-name, IPv4 or bracketed IPv6 characters, and no user info.
fn is_valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.iter().all(|byte| {
            byte.is_ascii_alphanumeric()
                || matches!(
                    byte,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'['
                        | b']'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_user_info_or_spaces_are_refused() {
        assert!(is_valid_host(b"api.example.com:8080"));
        assert!(is_valid_host(b"[::1]:80"));
        assert!(!is_valid_host(b"user@example.com"));
        assert!(!is_valid_host(b"exa mple.com"));
        assert!(!is_valid_host(b"example.com/path"));
    }
}
