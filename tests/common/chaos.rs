//! A controllable upstream for the resilience tests, and the helpers those tests share.
//!
//! [`Chaos`] is an HTTP/1.1 upstream on `127.0.0.1:0` whose [`Behaviour`] the test changes while the
//! proxy runs: answer 200, answer a status, answer late, hold the answer until a [`Gate`] opens, or
//! close the connection without answering. It counts the requests it received and keeps each one's
//! head and body, so a test can tell what reached it and what did not. (A refused connection needs no
//! upstream: use [`dead_addr`](super::dead_addr).)
//!
//! Beside it: a one-call client that sums up a response ([`Reply`]), the admin's `/clusters` and
//! `/events` read as JSON, and a config template with one route and one cluster.

use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};

use super::client::PooledClient;
use super::{config, empty, full, h1_client, within, Body, Gate, Proxy, Upstream};

/// What a [`Chaos`] upstream does with the next request it receives. The behaviour is read when the
/// request head arrives; the request body is always read whole before answering (and kept), except
/// by [`Behaviour::Reset`].
#[derive(Clone)]
pub enum Behaviour {
    /// 200, `x-upstream: LABEL`, the request body echoed back.
    Ok,
    /// This status, `x-upstream: LABEL`, a short text body.
    Status(u16),
    /// Sleeps this long, then answers as [`Behaviour::Ok`].
    Delay(Duration),
    /// Waits until the gate opens, then answers as [`Behaviour::Ok`].
    Hold(Gate),
    /// Closes the connection after the request head, without a byte of answer.
    Reset,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behaviour::Ok => write!(f, "Ok"),
            Behaviour::Status(status) => write!(f, "Status({status})"),
            Behaviour::Delay(delay) => write!(f, "Delay({delay:?})"),
            Behaviour::Hold(_) => write!(f, "Hold"),
            Behaviour::Reset => write!(f, "Reset"),
        }
    }
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: http::Method,
    pub path: String,
    pub headers: HeaderMap,
    /// `None` when the body was not read ([`Behaviour::Reset`]) or failed mid-way.
    pub body: Option<Bytes>,
}

/// A running controllable upstream. Dropping it closes its port and every connection.
pub struct Chaos {
    pub addr: SocketAddr,
    handle: ChaosHandle,
    _upstream: Upstream,
}

/// Changes a [`Chaos`] upstream's behaviour and reads its counters; clones share the upstream.
#[derive(Clone)]
pub struct ChaosHandle {
    state: Arc<State>,
}

struct State {
    label: String,
    behaviour: Mutex<Behaviour>,
    /// Request heads received so far; a watch so that a test can wait for a count without polling.
    requests: watch::Sender<usize>,
    received: Mutex<Vec<Received>>,
}

impl Chaos {
    /// Starts an upstream answering [`Behaviour::Ok`] with `x-upstream: LABEL`.
    pub async fn start(label: &str) -> Chaos {
        Self::start_with(label, Behaviour::Ok).await
    }

    pub async fn start_with(label: &str, behaviour: Behaviour) -> Chaos {
        let state = Arc::new(State {
            label: label.to_owned(),
            behaviour: Mutex::new(behaviour),
            requests: watch::channel(0).0,
            received: Mutex::new(Vec::new()),
        });
        let served = state.clone();
        let upstream = Upstream::raw(move |tcp| {
            let state = served.clone();
            async move {
                // A `Reset` answer drops the connection: its handler wakes this task, which stops
                // serving the connection and so closes the socket with the request unanswered.
                let reset = Arc::new(Notify::new());
                let service = {
                    let reset = reset.clone();
                    service_fn(move |request| {
                        let (state, reset) = (state.clone(), reset.clone());
                        async move { Ok::<_, Infallible>(state.answer(request, &reset).await) }
                    })
                };
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
                tokio::select! {
                    // A connection ending in an error (the proxy gave up on a try) is part of the tests.
                    _ = connection => {}
                    () = reset.notified() => {}
                }
            }
        })
        .await;
        Chaos { addr: upstream.addr, handle: ChaosHandle { state }, _upstream: upstream }
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> ChaosHandle {
        self.handle.clone()
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.handle.set(behaviour);
    }

    pub fn requests(&self) -> usize {
        self.handle.requests()
    }

    pub async fn wait_requests(&self, count: usize) {
        self.handle.wait_requests(count).await;
    }

    pub fn received(&self) -> Vec<Received> {
        self.handle.received()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self._upstream.connections()
    }

    pub fn label(&self) -> &str {
        &self.handle.state.label
    }
}

impl ChaosHandle {
    pub fn set(&self, behaviour: Behaviour) {
        *lock(&self.state.behaviour) = behaviour;
    }

    /// Request heads received so far.
    pub fn requests(&self) -> usize {
        *self.state.requests.borrow()
    }

    /// Waits (bounded by [`within`]) until at least `count` request heads have arrived.
    pub async fn wait_requests(&self, count: usize) {
        let mut receiver = self.state.requests.subscribe();
        let what = format!("{count} requests at upstream {}", self.state.label);
        let reached = within(&what, receiver.wait_for(|seen| *seen >= count)).await;
        reached.expect("the counter lives as long as the handle");
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }
}

impl State {
    async fn answer(&self, request: Request<Incoming>, reset: &Notify) -> Response<Body> {
        self.requests.send_modify(|count| *count += 1);
        let behaviour = lock(&self.behaviour).clone();
        let (parts, body) = request.into_parts();
        let mut received = Received {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body: None,
        };
        if let Behaviour::Reset = behaviour {
            lock(&self.received).push(received);
            reset.notify_one();
            return std::future::pending().await;
        }
        // Unbounded on purpose: a proxy that stalls a body fails the test through the client's own
        // bounded wait, and this task ends with the connection.
        received.body = body.collect().await.ok().map(|collected| collected.to_bytes());
        let echo = received.body.clone().unwrap_or_default();
        lock(&self.received).push(received);
        let (status, body) = match behaviour {
            Behaviour::Ok => (StatusCode::OK, echo),
            Behaviour::Delay(delay) => {
                tokio::time::sleep(delay).await;
                (StatusCode::OK, echo)
            }
            Behaviour::Hold(gate) => {
                gate.wait().await;
                (StatusCode::OK, echo)
            }
            Behaviour::Status(status) => {
                let status = StatusCode::from_u16(status).expect("a valid status code in the test");
                (status, Bytes::from(format!("{} answers {status}\n", self.label)))
            }
            Behaviour::Reset => unreachable!("answered above"),
        };
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        let label = HeaderValue::from_str(&self.label).expect("the label is a header value");
        response.headers_mut().insert("x-upstream", label);
        response
    }
}

/// A panic in one test task must not hide the real failure behind a poisoned lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A response summed up: the status, who made it (`x-upstream` for a chaos upstream, or the proxy's
/// own `x-remora-breaker` / `x-remora-error`) and the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub upstream: Option<String>,
    pub breaker: Option<String>,
    pub error: Option<String>,
    pub body: Bytes,
}

impl Reply {
    /// The answer of upstream `label` with `status`.
    pub fn is_from(&self, label: &str, status: u16) -> bool {
        self.status == status && self.upstream.as_deref() == Some(label) && self.breaker.is_none()
    }

    /// The proxy's own 503 with `x-remora-breaker: CAUSE`, the upstream untouched.
    pub fn is_breaker(&self, cause: &str) -> bool {
        self.status == 503 && self.breaker.as_deref() == Some(cause) && self.upstream.is_none()
    }

    /// The proxy's own reply with `x-remora-error: CAUSE`.
    pub fn is_error(&self, status: u16, cause: &str) -> bool {
        self.status == status && self.error.as_deref() == Some(cause) && self.upstream.is_none()
    }
}

/// Sends one request and reads the whole response, bounded by [`within`].
pub async fn send(client: &PooledClient, request: Request<Body>) -> Reply {
    let what = format!("{} {}", request.method(), request.uri());
    let response = within(&what, client.request(request))
        .await
        .unwrap_or_else(|error| panic!("{what}: no response: {error:?}"));
    let header = |name: &str| {
        response.headers().get(name).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let (status, upstream) = (response.status().as_u16(), header("x-upstream"));
    let (breaker, error) = (header("x-remora-breaker"), header("x-remora-error"));
    let body = super::read_body(&what, response.into_body()).await;
    Reply { status, upstream, breaker, error, body }
}

pub async fn get(client: &PooledClient, url: &str) -> Reply {
    send(client, Request::get(url).body(empty()).expect("a GET request")).await
}

/// `GET {path}` on the admin server, as JSON.
pub async fn admin_json(proxy: &Proxy, path: &str) -> serde_json::Value {
    let reply = get(&h1_client(), &proxy.admin_url(path)).await;
    assert_eq!(reply.status, 200, "admin {path}: {reply:?}");
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|error| panic!("admin {path} is not JSON ({error}): {reply:?}"))
}

/// One cluster's entry in `/clusters`.
pub async fn cluster_view(proxy: &Proxy, cluster: &str) -> serde_json::Value {
    let clusters = admin_json(proxy, "/clusters").await;
    match clusters.get(cluster) {
        Some(view) => view.clone(),
        None => panic!("/clusters has no cluster {cluster:?}: {clusters:#}"),
    }
}

/// One endpoint's entry in a cluster's view, found by its address.
pub fn endpoint_view(cluster: &serde_json::Value, address: SocketAddr) -> &serde_json::Value {
    let endpoints = cluster["endpoints"].as_array().expect("a cluster view lists its endpoints");
    let address = address.to_string();
    match endpoints.iter().find(|endpoint| endpoint["address"] == address.as_str()) {
        Some(endpoint) => endpoint,
        None => panic!("no endpoint {address} in {cluster:#}"),
    }
}

/// The events of one cluster in `/events`, oldest first.
pub async fn events_of(proxy: &Proxy, cluster: &str) -> Vec<serde_json::Value> {
    let events = admin_json(proxy, "/events").await;
    let all = events.as_array().unwrap_or_else(|| panic!("/events is not an array: {events:#}"));
    all.iter().filter(|event| event["cluster"] == cluster).cloned().collect()
}

/// The `event` names of `events`, in order.
pub fn event_names(events: &[serde_json::Value]) -> Vec<&str> {
    events.iter().map(|event| event["event"].as_str().unwrap_or("(no event name)")).collect()
}

/// A config with one listener, one route `svc` (`/` → cluster `svc`, plus `route_extra` keys such as
/// `retry = { … }` or `timeout = "…"`) and the cluster `svc` over `endpoints` (plus `cluster_extra`:
/// keys first, then sub-tables such as `[clusters.svc.breaker]`).
pub fn svc_config(endpoints: &[SocketAddr], route_extra: &str, cluster_extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|endpoint| format!("\"{endpoint}\"")).collect();
    let endpoints = endpoints.join(", ");
    config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "svc"
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "svc", weight = 1 }]
{ROUTE_EXTRA}

[clusters.svc]
endpoints = [{ENDPOINTS}]
{CLUSTER_EXTRA}
"#,
        &[
            ("ENDPOINTS", &endpoints as &dyn Display),
            ("ROUTE_EXTRA", &route_extra),
            ("CLUSTER_EXTRA", &cluster_extra),
        ],
    )
}
