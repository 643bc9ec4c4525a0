//! The control API over HTTP/JSON (hyper): token auth on every `/v1` path, bounded bodies, every
//! refusal a clear 4xx with an `ApiError` body that changes nothing.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/nodes[?force=true]` | register (200 `Registered`, 409 `Conflicts`) |
//! | GET | `/v1/nodes`, `/v1/nodes/{name}` | `NodeView`s |
//! | GET | `/v1/nodes/{name}/desired?after=REV&wait_ms=N` | long-poll: 200 `DesiredState` newer than REV, or 204 |
//! | PUT | `/v1/nodes/{name}/desired` | `DesiredUpdate` → 200 `DesiredState` |
//! | POST | `/v1/reports` | a proxy's `Report` → 204 |
//! | GET | `/v1/events`, `/v1/map[?format=dot]` | the event/node map |
//! | GET | `/v1/journal?after=SEQ&limit=N`, `/v1/journal/stream` | the journal; SSE with `Last-Event-ID` |
//! | POST | `/v1/rollouts` | `RolloutStart` → 201 `RolloutView` (409 if one is under way) |
//! | GET | `/v1/rollouts`, `/v1/rollouts/{node}` | every node's latest rollout, or one node's |
//! | POST | `/v1/rollouts/{node}/{pause,resume,promote,abort}` | → 200 `RolloutView` |
//! | POST | `/v1/nodes/{name}/healing/retry` | a held node's ladder tries again → 200 `HealingView` (409 if not held) |
//! | GET | `/v1/journal?last=N` | the newest N entries, oldest first |
//! | GET | `/live` | no token: the process answers |
//! | GET | `/` (or `/dashboard`), `/dashboard.js`, `/dashboard.css` | no token: the dashboard (it asks for the token) |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_config::control::{ApiError, DesiredUpdate, Registration};
use remora_config::report::{Report, MAX_REPORT_BYTES};
use remora_config::rollout::RolloutStart;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::service::{new_trace_id, Refusal, Service};
use crate::sse;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Bodies other than reports.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The longest a desired-state long-poll waits.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Api {
    pub service: Arc<Service>,
    pub engine: Arc<Engine>,
    pub token: String,
}

/// Serves the API until `stop` changes.
pub async fn serve(socket: TcpListener, api: Arc<Api>, mut stop: watch::Receiver<bool>) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (api, builder) = (api.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(handle(&api, request).await) }
            });
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "API connection ended with an error");
            }
        });
    }
}

async fn handle(api: &Api, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/live" {
        return text(StatusCode::OK, "live\n");
    }
    if request.method() == Method::GET {
        if let Some(asset) = crate::dashboard::asset(&path) {
            return dashboard_file(asset);
        }
    }
    if !authorized(&request, &api.token) {
        tracing::info!(%path, "refused: missing or wrong token");
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer TOKEN",
            Vec::new(),
        );
    }
    let trace_id = trace_id_of(&request);
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let service = &api.service;
    let result: Result<Response<Body>, Refusal> = match (method.clone(), segments.as_slice()) {
        (Method::POST, ["v1", "nodes"]) => match read_json::<Registration>(request, MAX_BODY_BYTES).await {
            Ok(registration) => flag(&query, "force").and_then(|force| {
                service
                    .register(registration, force, &trace_id)
                    .map(|registered| json(StatusCode::OK, &registered))
            }),
            Err(response) => Ok(response),
        },
        (Method::GET, ["v1", "nodes"]) => service.nodes().map(|nodes| json(StatusCode::OK, &nodes)),
        (Method::GET, ["v1", "nodes", name]) => service.node(name).map(|node| json(StatusCode::OK, &node)),
        (Method::GET, ["v1", "nodes", name, "desired"]) => {
            match (number(&query, "after", 0), number(&query, "wait_ms", 0)) {
                (Ok(after), Ok(wait_ms)) => {
                    let wait = Duration::from_millis(wait_ms).min(MAX_WAIT);
                    match service.desired_after(name, after, wait).await {
                        Ok(Some(desired)) => Ok(json(StatusCode::OK, &desired)),
                        Ok(None) => Ok(empty(StatusCode::NO_CONTENT)),
                        Err(refusal) => Err(refusal),
                    }
                }
                (Err(refusal), _) | (_, Err(refusal)) => Err(refusal),
            }
        }
        (Method::PUT, ["v1", "nodes", name, "desired"]) => {
            let name = name.to_string();
            match read_json::<DesiredUpdate>(request, MAX_BODY_BYTES).await {
                Ok(update) => service
                    .put_desired(&name, update, &trace_id)
                    .map(|desired| json(StatusCode::OK, &desired)),
                Err(response) => Ok(response),
            }
        }
        (Method::POST, ["v1", "nodes", name, "healing", "retry"]) => {
            api.engine.retry(name).map(|healing| json(StatusCode::OK, &healing))
        }
        (Method::POST, ["v1", "reports"]) => match read_bytes(request, MAX_REPORT_BYTES).await {
            Ok(bytes) => match Report::from_json(&bytes) {
                Ok(report) => service.report(report, &trace_id).map(|()| empty(StatusCode::NO_CONTENT)),
                Err(refused) => Err(Refusal::BadRequest(format!("the report was refused: {refused}"))),
            },
            Err(response) => Ok(response),
        },
        (Method::POST, ["v1", "rollouts"]) => {
            match read_json::<RolloutStart>(request, MAX_BODY_BYTES).await {
                Ok(start) => {
                    api.engine.start(start, &trace_id).map(|rollout| json(StatusCode::CREATED, &rollout))
                }
                Err(response) => Ok(response),
            }
        }
        (Method::GET, ["v1", "rollouts"]) => Ok(json(StatusCode::OK, &api.engine.rollouts())),
        (Method::GET, ["v1", "rollouts", node]) => {
            api.engine.rollout(node).map(|rollout| json(StatusCode::OK, &rollout))
        }
        (Method::POST, ["v1", "rollouts", node, action]) => {
            api.engine.act(node, action).map(|rollout| json(StatusCode::OK, &rollout))
        }
        (Method::GET, ["v1", "events"]) => Ok(json(StatusCode::OK, &service.events_json())),
        (Method::GET, ["v1", "map"]) => match param(&query, "format").as_deref() {
            Some("dot") => {
                let mut response = text(StatusCode::OK, &service.map_dot());
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/vnd.graphviz"));
                Ok(response)
            }
            None | Some("json") => Ok(json(StatusCode::OK, &service.map_json())),
            Some(other) => Err(Refusal::BadRequest(format!("unknown format {other:?}: use json or dot"))),
        },
        (Method::GET, ["v1", "journal"]) if param(&query, "last").is_some() => {
            match number(&query, "last", 0) {
                Ok(last) => {
                    let last = last.min(10_000);
                    service
                        .store()
                        .journal_head()
                        .and_then(|head| service.journal_after(head.saturating_sub(last), last as usize))
                        .map(|entries| json(StatusCode::OK, &entries))
                        .map_err(Refusal::from)
                }
                Err(refusal) => Err(refusal),
            }
        }
        (Method::GET, ["v1", "journal"]) => {
            match (number(&query, "after", 0), number(&query, "limit", 1000)) {
                (Ok(after), Ok(limit)) => service
                    .journal_after(after, limit.min(10_000) as usize)
                    .map(|entries| json(StatusCode::OK, &entries))
                    .map_err(Refusal::from),
                (Err(refusal), _) | (_, Err(refusal)) => Err(refusal),
            }
        }
        (Method::GET, ["v1", "journal", "stream"]) => {
            let after = match request.headers().get("last-event-id") {
                Some(id) => id.to_str().ok().and_then(|id| id.trim().parse().ok()).ok_or_else(|| {
                    Refusal::BadRequest("Last-Event-ID must be a journal sequence number".into())
                }),
                None => number(&query, "after", 0),
            };
            after.map(|after| stream(service.clone(), after))
        }
        (_, ["v1", ..]) => Err(Refusal::NotFound(format!("no {method} {path} in the API"))),
        _ => Err(Refusal::NotFound(format!("no {path}: the API lives under /v1"))),
    };
    match result {
        Ok(response) => response,
        Err(refusal) => refused(&path, refusal),
    }
}

fn refused(path: &str, refusal: Refusal) -> Response<Body> {
    match refusal {
        Refusal::BadRequest(message) => {
            tracing::info!(%path, %message, "refused");
            error(StatusCode::BAD_REQUEST, &message, Vec::new())
        }
        Refusal::NotFound(message) => error(StatusCode::NOT_FOUND, &message, Vec::new()),
        Refusal::Conflict(message) => {
            tracing::info!(%path, %message, "refused: conflict");
            error(StatusCode::CONFLICT, &message, Vec::new())
        }
        Refusal::Conflicts(conflicts) => {
            tracing::warn!(%path, conflicts = conflicts.conflicts.len(), "registration refused: conflicts");
            json(StatusCode::CONFLICT, &conflicts)
        }
        Refusal::Store(store) => {
            tracing::error!(%path, error = %store, "store failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the store failed: {store}"), Vec::new())
        }
    }
}

/// The journal after `after`, then live, as Server-Sent Events.
fn stream(service: Arc<Service>, after: u64) -> Response<Body> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let mut live = service.subscribe();
    tokio::spawn(async move {
        let mut last = after;
        // The backlog first (subscribed before reading it, so nothing falls between).
        loop {
            let Ok(entries) = service.journal_after(last, 500) else { return };
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                last = entry.seq;
                let data = serde_json::to_string(&entry).unwrap_or_default();
                if sender.send(sse::event(entry.seq, &entry.kind, &data)).await.is_err() {
                    return;
                }
            }
        }
        loop {
            let next = tokio::time::timeout(Duration::from_secs(15), live.recv()).await;
            let frame = match next {
                // A comment keeps proxies and the client's idle timers from closing the stream.
                Err(_) => Bytes::from_static(b": keepalive\n\n"),
                Ok(Ok(entry)) if entry.seq > last => {
                    last = entry.seq;
                    let data = serde_json::to_string(&entry).unwrap_or_default();
                    sse::event(entry.seq, &entry.kind, &data)
                }
                Ok(Ok(_)) => continue,
                // Fell behind: the client reconnects with Last-Event-ID and reads the backlog.
                Ok(Err(_)) => return,
            };
            if sender.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(sse::ChannelBody::new(receiver).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn authorized(request: &Request<Incoming>, token: &str) -> bool {
    let Some(value) = request.headers().get(AUTHORIZATION).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let Some(presented) = value.strip_prefix("Bearer ") else { return false };
    // Constant time in the token's length: no early exit on the first different byte.
    presented.len() == token.len()
        && presented.bytes().zip(token.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// The trace id of a valid incoming `traceparent`, else a new one.
fn trace_id_of(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .map(str::to_owned)
        .unwrap_or_else(new_trace_id)
}

/// A number from the query string, `default` when absent; anything else is a 400.
fn number(query: &str, name: &str, default: u64) -> Result<u64, Refusal> {
    match param(query, name) {
        None => Ok(default),
        Some(value) => value
            .parse()
            .map_err(|_| Refusal::BadRequest(format!("query parameter {name}={value:?} is not a number"))),
    }
}

/// A yes/no from the query string (`true`/`false`, `1`/`0`), false when absent.
fn flag(query: &str, name: &str) -> Result<bool, Refusal> {
    match param(query, name).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(value) => {
            Err(Refusal::BadRequest(format!("query parameter {name}={value:?} must be true or false")))
        }
    }
}

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

/// Reads a body of at most `limit` bytes. A larger one is read on and dropped (up to
/// [`DRAIN_LIMIT`]) so that the client, still writing, gets the 413 rather than a broken pipe.
async fn read_bytes(request: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Body>> {
    let mut body = request.into_body();
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(problem) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body could not be read: {problem}"),
                    Vec::new(),
                ))
            }
        };
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= limit {
                collected.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > limit {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over {limit} bytes"),
            Vec::new(),
        ));
    }
    Ok(collected.freeze())
}

/// How much of an oversized body is read and dropped before the connection is given up.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    limit: usize,
) -> Result<T, Response<Body>> {
    let bytes = read_bytes(request, limit).await?;
    if bytes.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "the body is empty: send JSON", Vec::new()));
    }
    serde_json::from_slice(&bytes).map_err(|problem| {
        error(StatusCode::BAD_REQUEST, &format!("the body is not the expected JSON: {problem}"), Vec::new())
    })
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str, details: Vec<String>) -> Response<Body> {
    json(status, &ApiError { error: message.to_owned(), details })
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn dashboard_file(asset: crate::dashboard::Asset) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(crate::dashboard::CONTENT_SECURITY_POLICY),
    );
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = status;
    response
}
