//! The admin server (default `127.0.0.1:9901`): `/ready`, `/live`, `/config`, `/clusters`, `/events`,
//! `/stats` (JSON) and `/metrics` (Prometheus text); `POST /reload` (200 with the changes, or 400 with
//! every error while the running configuration keeps serving) and `POST /drain`. It keeps answering
//! while the proxy drains, so that orchestrators see `/ready` turn 503.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::body::ProxyBody;
use crate::events::EventKind;
use crate::reload::Reloader;
use crate::snapshot::Shared;

pub async fn serve(
    socket: TcpListener,
    reloader: Arc<Reloader>,
    drain: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (reloader, drain) = (reloader.clone(), drain.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (reloader, drain) = (reloader.clone(), drain.clone());
                async move { Ok::<_, Infallible>(handle(&reloader, &drain, request).await) }
            });
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(reloader: &Reloader, drain: &Notify, request: Request<Incoming>) -> Response<ProxyBody> {
    let shared = &**reloader.shared();
    if request.method() == Method::POST {
        return match request.uri().path() {
            "/reload" => match reloader.reload_file("POST /reload").await {
                Ok(applied) => json(&serde_json::json!(applied)),
                Err(error) => {
                    let mut response = json(&serde_json::json!({ "errors": error.lines() }));
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    response
                }
            },
            "/drain" => {
                // Stored if the proxy is not waiting yet: a drain is never lost.
                drain.notify_one();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found: POST /reload or /drain\n"),
        };
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET, or POST for /reload and /drain\n");
    }
    match request.uri().path() {
        "/ready" => {
            if shared.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/clusters" => json(&clusters(shared)),
        "/events" => json(&events(shared)),
        "/listeners" => {
            let addrs = reloader.addrs().await;
            let addrs: serde_json::Map<String, serde_json::Value> =
                addrs.into_iter().map(|(name, addr)| (name, serde_json::json!(addr.to_string()))).collect();
            json(&serde_json::Value::Object(addrs))
        }
        "/stats" => json(&crate::stats::view::stats_json(shared)),
        "/metrics" => {
            let mut response =
                Response::new(ProxyBody::local(Bytes::from(crate::stats::view::metrics_text(shared))));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(crate::exposition::CONTENT_TYPE));
            response
        }
        "/config" => {
            let snapshot = shared.snapshot.load();
            match serde_json::to_vec_pretty(&*snapshot.config) {
                Ok(mut json) => {
                    json.push(b'\n');
                    let mut response = Response::new(ProxyBody::local(Bytes::from(json)));
                    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                }
                Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /ready, /live, /config, /clusters, /events, /stats or /metrics\n",
        ),
    }
}

/// Per cluster: limits in use, the breaker's state and window, and per endpoint its ejection state and
/// load.
fn clusters(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.snapshot.load();
    let now = tokio::time::Instant::now();
    let clusters: serde_json::Map<String, serde_json::Value> = snapshot
        .clusters()
        .map(|cluster| {
            let limits = cluster.limits.view();
            let limit = |(used, max): (u32, u32)| serde_json::json!({ "in_use": used, "max": max });
            let breaker = cluster.breaker.as_ref().map(|breaker| {
                let view = breaker.view(now);
                serde_json::json!({
                    "state": view.state,
                    "calls": view.calls,
                    "failures": view.failures,
                    "slow": view.slow,
                    "failure_rate": view.failure_rate,
                    "slow_call_rate": view.slow_call_rate,
                    "open_remaining_ms": view.open_for_remaining_ms,
                    "reopenings": view.reopenings,
                })
            });
            let health = cluster.outlier.view(now);
            let endpoints: Vec<serde_json::Value> = cluster
                .endpoints
                .iter()
                .enumerate()
                .map(|(index, endpoint)| {
                    let load = cluster.balancer.view(index);
                    let health = health.get(index);
                    serde_json::json!({
                        "address": endpoint.address,
                        "healthy": !health.is_some_and(|health| health.ejected),
                        "ejected_remaining_ms": health.and_then(|health| health.ejected_remaining_ms),
                        "ejections": health.map(|health| health.ejections),
                        "consecutive_5xx": health.map(|health| health.consecutive_5xx),
                        "consecutive_gateway_errors": health.map(|health| health.consecutive_gateway_errors),
                        "in_flight": load.map(|load| load.in_flight),
                        "ewma_ms": load.map(|load| load.ewma_ms),
                    })
                })
                .collect();
            let value = serde_json::json!({
                "version": &*cluster.version,
                "breaker": breaker,
                "limits": {
                    "requests": limit(limits.requests),
                    "pending": limit(limits.pending),
                    "connections": limit(limits.connections),
                    "retries": limit(limits.retries),
                },
                "endpoints": endpoints,
            });
            (cluster.name.to_string(), value)
        })
        .collect();
    serde_json::Value::Object(clusters)
}

/// The recent events, oldest first.
fn events(shared: &Shared) -> serde_json::Value {
    let events: Vec<serde_json::Value> = shared
        .events
        .recent()
        .into_iter()
        .map(|event| {
            let at = event.at.duration_since(std::time::UNIX_EPOCH).map(|at| at.as_millis()).unwrap_or(0);
            let mut value = serde_json::json!({ "at_ms": at as u64, "cluster": event.cluster, "event": event.kind.name() });
            match &event.kind {
                EventKind::BreakerOpened { open_for } => {
                    value["open_for_ms"] = serde_json::json!(open_for.as_millis() as u64);
                }
                EventKind::EndpointEjected { endpoint, ejected_for, ejections } => {
                    value["endpoint"] = serde_json::json!(endpoint);
                    value["ejected_for_ms"] = serde_json::json!(ejected_for.as_millis() as u64);
                    value["ejections"] = serde_json::json!(ejections);
                }
                EventKind::EndpointRestored { endpoint } => value["endpoint"] = serde_json::json!(endpoint),
                EventKind::BreakerHalfOpen | EventKind::BreakerClosed => {}
            }
            value
        })
        .collect();
    serde_json::Value::Array(events)
}

fn json(value: &serde_json::Value) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut response = Response::new(ProxyBody::local(Bytes::from(body)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
