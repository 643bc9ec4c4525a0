//! `remora demo-service`: the demo's backend. It answers every request with its version
//! (`x-demo-version`), and can be made to misbehave like a leaking service: a share of requests
//! answered 500 and added latency, both ramping up over `ramp_ms` from when they were set.
//!
//! - `POST /admin/fault` `{"error_rate": 0.3, "latency_ms": 300, "ramp_ms": 2000}` sets the faults;
//! - `POST /admin/remediate` is the demo's remediate hook: it answers, and changes nothing (a leak in
//!   the code is not cured by dropping caches);
//! - anything else is a normal request.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;

/// How a demo service misbehaves.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered 500, 0..=1.
    #[serde(default)]
    pub error_rate: f64,
    /// Latency added to every request.
    #[serde(default)]
    pub latency_ms: u64,
    /// The faults grow from nothing to the full amount over this long.
    #[serde(default)]
    pub ramp_ms: u64,
}

impl Faults {
    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!("error_rate {} is not in 0..=1", self.error_rate));
        }
        if self.latency_ms > 60_000 || self.ramp_ms > 3_600_000 {
            return Err("latency_ms is at most 60000 and ramp_ms at most 3600000".into());
        }
        Ok(())
    }
}

struct State {
    version: String,
    faults: Mutex<(Faults, Instant)>,
}

impl State {
    /// The faults now: the set amount times how far the ramp has come.
    fn now(&self) -> (f64, Duration) {
        let (faults, since) = *self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let progress = if faults.ramp_ms == 0 {
            1.0
        } else {
            (since.elapsed().as_secs_f64() * 1000.0 / faults.ramp_ms as f64).min(1.0)
        };
        (faults.error_rate * progress, Duration::from_secs_f64(faults.latency_ms as f64 * progress / 1000.0))
    }
}

pub fn run(listen: SocketAddr, version: String, faults: Faults) -> ExitCode {
    if let Err(error) = faults.check() {
        eprintln!("demo-service: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo-service: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen, version, faults)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-service: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, version: String, faults: Faults) -> std::io::Result<()> {
    let shutdown = remora_proxy::shutdown_signal();
    let socket = tokio::net::TcpListener::bind(listen).await?;
    // The only line this process prints: whoever started it may stop reading afterwards.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{}", socket.local_addr()?);
        let _ = out.flush();
    }
    let state = Arc::new(State { version, faults: Mutex::new((faults, Instant::now())) });
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(state: &State, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/admin/fault") => {
            let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return answer(state, StatusCode::BAD_REQUEST, "unreadable body\n".into()),
            };
            match serde_json::from_slice::<Faults>(&body).map_err(|error| error.to_string()).and_then(
                |faults| {
                    faults.check()?;
                    Ok(faults)
                },
            ) {
                Ok(faults) => {
                    *state.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        (faults, Instant::now());
                    answer(state, StatusCode::OK, format!("{faults:?}\n"))
                }
                Err(error) => answer(state, StatusCode::BAD_REQUEST, format!("{error}\n")),
            }
        }
        (&Method::POST, "/admin/remediate") => {
            let (error_rate, latency) = state.now();
            let body = serde_json::json!({
                "remedied": false,
                "version": state.version,
                "note": "caches dropped; the leak is in the code, so it comes back",
                "error_rate": error_rate,
                "latency_ms": latency.as_millis() as u64,
            });
            answer(state, StatusCode::OK, format!("{body}\n"))
        }
        _ => {
            let (error_rate, latency) = state.now();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if error_rate > 0.0 && fastrand::f64() < error_rate {
                return answer(
                    state,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{} is failing\n", state.version),
                );
            }
            answer(state, StatusCode::OK, format!("hello from {}\n", state.version))
        }
    }
}

fn answer(state: &State, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(version) = hyper::header::HeaderValue::from_str(&state.version) {
        response.headers_mut().insert("x-demo-version", version);
    }
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
    response
}
