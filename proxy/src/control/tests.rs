//! The control client against a fake control process (hyper on 127.0.0.1:0) that speaks the API's
//! contract and tells the test everything it saw. Time is paused: intervals and backoffs pass as fast
//! as the client gets through them, and their lengths are measured on Tokio's clock.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use remora_config::control::{ApiError, DesiredBackend, DesiredState, Registered, Registration};
use remora_config::report::Report;
use remora_config::{EventRef, Source};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::*;
use crate::listener::{self, ListenerSet};
use crate::snapshot::Shared;
use crate::stats::RequestOutcome;

const TOKEN: &str = "s3cret";

/// What the fake saw, in order.
#[derive(Debug)]
enum Seen {
    Registration {
        authorization: Option<String>,
        registration: Registration,
    },
    /// `accepted`: answered 204; otherwise refused (unknown node, or a duplicate).
    Report {
        report: Report,
        accepted: bool,
        at: Instant,
    },
    Poll {
        after: u64,
    },
    /// Answered 500 (the fake is failing).
    Failed {
        path: String,
        at: Instant,
    },
}

#[derive(Debug)]
struct FakeState {
    failing: bool,
    /// Whether the node is registered.
    known: bool,
    last_sequence: u64,
    seen: mpsc::UnboundedSender<Seen>,
}

/// A control process that answers the API's three requests.
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    desired: Arc<watch::Sender<Option<DesiredState>>>,
    server: Option<JoinHandle<()>>,
}

impl Fake {
    async fn start() -> (Fake, mpsc::UnboundedReceiver<Seen>) {
        let (seen, receiver) = mpsc::unbounded_channel();
        let state = FakeState { failing: false, known: false, last_sequence: 0, seen };
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut fake = Fake {
            addr: socket.local_addr().expect("addr"),
            state: Arc::new(Mutex::new(state)),
            desired: Arc::new(watch::channel(None).0),
            server: None,
        };
        fake.serve(socket);
        (fake, receiver)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake state")
    }

    /// Closes the listening socket and every open connection: connections are refused.
    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port (a control process that restarted).
    async fn restart(&mut self) {
        let socket = tokio::net::TcpListener::bind(self.addr).await.expect("bind the same port again");
        self.serve(socket);
    }

    fn serve(&mut self, socket: tokio::net::TcpListener) {
        let (state, desired) = (self.state.clone(), self.desired.clone());
        self.server = Some(tokio::spawn(async move {
            // Dropped with the task: aborting the server closes its connections too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = socket.accept().await else { continue };
                let (state, desired) = (state.clone(), desired.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let (state, desired) = (state.clone(), desired.clone());
                        async move { Ok::<_, Infallible>(answer(&state, &desired, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
}

async fn answer(
    state: &Mutex<FakeState>,
    desired: &watch::Sender<Option<DesiredState>>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let now = Instant::now();
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|value| value.to_str().expect("ascii").to_owned());
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let method = request.method().clone();
    let body = request.into_body().collect().await.expect("body").to_bytes();
    let lock = || state.lock().expect("fake state");
    if lock().failing {
        let _ = lock().seen.send(Seen::Failed { path, at: now });
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the store failed: disk I/O error");
    }
    if authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong token: send Authorization: Bearer TOKEN");
    }
    match (method.as_str(), path.as_str()) {
        ("POST", "/v1/nodes") => {
            let registration: Registration = serde_json::from_slice(&body).expect("a registration");
            let mut state = lock();
            state.known = true;
            let registered = Registered {
                node: registration.node.clone(),
                warnings: Vec::new(),
                desired_revision: desired.borrow().as_ref().map_or(0, |desired| desired.revision),
            };
            let _ = state.seen.send(Seen::Registration { authorization, registration });
            json(StatusCode::OK, &registered)
        }
        ("POST", "/v1/reports") => {
            let report = Report::from_json(&body).expect("a report");
            let mut state = lock();
            if !state.known {
                let message = format!("unknown node {:?}: register it first (POST /v1/nodes)", report.node);
                let _ = state.seen.send(Seen::Report { report, accepted: false, at: now });
                return error(StatusCode::BAD_REQUEST, &message);
            }
            if report.sequence <= state.last_sequence {
                let message =
                    format!("report {} from proxy {:?} was already received", report.sequence, report.proxy);
                let _ = state.seen.send(Seen::Report { report, accepted: false, at: now });
                return error(StatusCode::BAD_REQUEST, &message);
            }
            state.last_sequence = report.sequence;
            let _ = state.seen.send(Seen::Report { report, accepted: true, at: now });
            empty(StatusCode::NO_CONTENT)
        }
        ("GET", path) if path.starts_with("/v1/nodes/") && path.ends_with("/desired") => {
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            let (after, wait_ms) = (param("after").expect("after"), param("wait_ms").expect("wait_ms"));
            if !lock().known {
                return error(StatusCode::NOT_FOUND, "unknown node \"payments\"");
            }
            let _ = lock().seen.send(Seen::Poll { after });
            let mut changes = desired.subscribe();
            let newer = async {
                let newer = |desired: &Option<DesiredState>| {
                    desired.as_ref().is_some_and(|desired| desired.revision > after)
                };
                changes.wait_for(newer).await.ok().and_then(|desired| desired.clone())
            };
            match tokio::time::timeout(Duration::from_millis(wait_ms), newer).await {
                Ok(Some(desired)) if lock().known => json(StatusCode::OK, &desired),
                Ok(_) => error(StatusCode::NOT_FOUND, "unknown node \"payments\""),
                Err(_) => empty(StatusCode::NO_CONTENT),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such path"),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(serde_json::to_vec(value).expect("json"))));
    *response.status_mut() = status;
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &ApiError::new(message))
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A proxy's configuration with `[node]` and `[control]`; `extra` goes to the end.
fn config_text(url: &str, token_file: &std::path::Path, report_interval: &str, extra: &str) -> String {
    format!(
        r#"
[node]
name = "payments"
version = "v2"
publishes = ["payment.settled@2"]
consumes = ["order.placed@1"]

[control]
url = "{url}"
token_file = "{}"
report_interval = "{report_interval}"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "api"
backends = [{{ cluster = "stable", weight = 90 }}, {{ cluster = "canary", weight = 10 }}]

[clusters.stable]
version = "v1"
endpoints = ["127.0.0.1:9001"]

[clusters.canary]
version = "v2"
endpoints = ["127.0.0.1:9002"]
{extra}
"#,
        token_file.display()
    )
}

/// A proxy (its reloader and listener) with the control client running.
struct Proxy {
    reloader: Arc<Reloader>,
    listener: SocketAddr,
    stop: watch::Sender<bool>,
    client: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    async fn start(url: &str, token: &str, report_interval: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("write the token");
        let config =
            remora_config::load_str(&config_text(url, &token_file, report_interval, ""), Source::TextOnly)
                .expect("a valid config");
        Self::with_config(config, dir).await
    }

    async fn with_config(config: remora_config::Config, dir: tempfile::TempDir) -> Proxy {
        let shared = Arc::new(Shared::new(config.clone(), 1));
        let mut set = ListenerSet::default();
        for listener in &config.listeners {
            let socket = listener::bind(listener).await.expect("bind the listener");
            set.start(listener, socket, &shared);
        }
        let listener = set.addrs()[0].1;
        let reloader = Arc::new(Reloader::new(shared, 1, None, set));
        let (stop, stop_rx) = watch::channel(false);
        let client = spawn(&config, reloader.clone(), stop_rx).expect("a control client");
        Proxy { reloader, listener, stop, client, _dir: dir }
    }

    fn shared(&self) -> &Shared {
        self.reloader.shared()
    }

    fn weights(&self) -> Vec<(String, u32)> {
        let snapshot = self.shared().snapshot.load();
        let route = snapshot.config.routes.iter().find(|route| route.name == "api").expect("route api");
        route.backends.iter().map(|backend| (backend.cluster.clone(), backend.weight)).collect()
    }

    fn record(&self, requests: u64) {
        let series = self.shared().stats.series("api", "stable", "v1");
        for _ in 0..requests {
            series.record(RequestOutcome::Success, 200, 500, 1_000);
        }
    }
}

fn weights(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|(cluster, weight)| ((*cluster).to_owned(), *weight)).collect()
}

/// The next thing the fake saw that `wanted` picks, skipping the rest. Fails (rather than hangs) when
/// nothing fits for ten minutes of the test's clock.
async fn next<T>(seen: &mut mpsc::UnboundedReceiver<Seen>, mut wanted: impl FnMut(Seen) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let item = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .expect("what the test waits for comes within ten minutes")
            .expect("the fake is running");
        if let Some(found) = wanted(item) {
            return found;
        }
    }
}

async fn next_registration(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Registration {
    next(seen, |seen| match seen {
        Seen::Registration { registration, .. } => Some(registration),
        _ => None,
    })
    .await
}

async fn next_accepted(seen: &mut mpsc::UnboundedReceiver<Seen>) -> (Report, Instant) {
    next(seen, |seen| match seen {
        Seen::Report { report, accepted: true, at } => Some((report, at)),
        _ => None,
    })
    .await
}

fn desired_state(revision: u64, routes: &[(&str, &[(&str, u32)])]) -> DesiredState {
    let routes = routes
        .iter()
        .map(|(route, backends)| {
            let backends = backends
                .iter()
                .map(|(cluster, weight)| DesiredBackend { cluster: (*cluster).to_owned(), weight: *weight })
                .collect();
            ((*route).to_owned(), backends)
        })
        .collect::<BTreeMap<_, _>>();
    DesiredState { node: "payments".to_owned(), revision, routes, split: None }
}

#[tokio::test(start_paused = true)]
async fn registers_the_node_with_its_spec_and_the_bearer_token() {
    let (fake, mut seen) = Fake::start().await;
    let proxy = Proxy::start(&fake.url(), TOKEN, "1s").await;
    let (authorization, registration) = next(&mut seen, |seen| match seen {
        Seen::Registration { authorization, registration } => Some((authorization, registration)),
        _ => None,
    })
    .await;
    assert_eq!(authorization.as_deref(), Some("Bearer s3cret"), "the token file's content, trimmed");
    let event = |name: &str, major| EventRef { name: name.to_owned(), major };
    assert_eq!(
        registration,
        Registration {
            node: "payments".to_owned(),
            version: "v2".to_owned(),
            proxy: proxy_id(),
            endpoints: vec![proxy.listener.to_string()],
            publishes: vec![event("payment.settled", 2)],
            consumes: vec![event("order.placed", 1)],
        }
    );
    assert!(proxy_id().ends_with(&format!(":{}", std::process::id())));
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_read_again_from_its_file() {
    let (fake, mut seen) = Fake::start().await;
    let proxy = Proxy::start(&fake.url(), "stale", "1s").await;
    // Refused (401) until the file holds the right token; read again after each refusal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!fake.state().known, "a wrong token registers nothing");
    std::fs::write(proxy._dir.path().join("token"), TOKEN).expect("rotate the token");
    let registration = next_registration(&mut seen).await;
    assert_eq!(registration.node, "payments");
}

#[tokio::test(start_paused = true)]
async fn reports_arrive_every_interval_with_increasing_sequences() {
    let (fake, mut seen) = Fake::start().await;
    let proxy = Proxy::start(&fake.url(), TOKEN, "1s").await;
    next_registration(&mut seen).await;
    let mut previous: Option<Instant> = None;
    for sequence in 1..=4 {
        proxy.record(sequence);
        let (report, at) = next_accepted(&mut seen).await;
        assert_eq!(report.sequence, sequence);
        assert_eq!((report.node.as_str(), report.node_version.as_str()), ("payments", "v2"));
        assert_eq!(report.proxy, proxy_id());
        assert_eq!(report.desired_revision, None, "nothing applied yet");
        let requests: u64 = report.series.iter().map(|series| series.counts.requests).sum();
        assert_eq!(requests, sequence, "each report carries what was recorded since the previous one");
        if let Some(previous) = previous {
            let gap = at - previous;
            assert!(gap >= Duration::from_millis(990) && gap <= Duration::from_millis(1_100), "{gap:?}");
        }
        previous = Some(at);
    }
}

#[tokio::test(start_paused = true)]
async fn desired_state_changes_the_weights_and_is_acknowledged() {
    let (fake, mut seen) = Fake::start().await;
    let proxy = Proxy::start(&fake.url(), TOKEN, "1s").await;
    next_registration(&mut seen).await;
    let generation = proxy.shared().stats.generation.load(Ordering::Relaxed);
    fake.desired.send_replace(Some(desired_state(3, &[("api", &[("stable", 25), ("canary", 75)])])));
    let report = next(&mut seen, |seen| match seen {
        Seen::Report { report, accepted: true, .. } if report.desired_revision == Some(3) => Some(report),
        _ => None,
    })
    .await;
    assert_eq!(proxy.weights(), weights(&[("stable", 25), ("canary", 75)]));
    assert_eq!(report.config_generation, generation + 1, "applied through the reload path");

    // A revision naming a route the configuration lacks changes nothing and is not acknowledged.
    fake.desired
        .send_replace(Some(desired_state(4, &[("api", &[("stable", 100)]), ("missing", &[("stable", 1)])])));
    next(&mut seen, |seen| matches!(seen, Seen::Poll { after: 4 }).then_some(())).await;
    let (report, _) = next_accepted(&mut seen).await;
    assert_eq!(report.desired_revision, Some(3));
    assert_eq!(proxy.weights(), weights(&[("stable", 25), ("canary", 75)]));
    assert_eq!(proxy.shared().stats.generation.load(Ordering::Relaxed), generation + 1);

    // A file reload keeps control's weights over the file's.
    let text = config_text(&fake.url(), std::path::Path::new("/nonexistent"), "1s", "");
    let text = text
        .replace(r#"endpoints = ["127.0.0.1:9002"]"#, r#"endpoints = ["127.0.0.1:9002", "127.0.0.1:9003"]"#);
    let applied = proxy.reloader.reload_text(&text, "test").await.expect("the file reloads");
    assert!(!applied.changes.is_empty());
    assert_eq!(proxy.weights(), weights(&[("stable", 25), ("canary", 75)]));
    let snapshot = proxy.shared().snapshot.load();
    assert_eq!(snapshot.config.clusters["canary"].endpoints.len(), 2, "the file's change is applied");
}

#[tokio::test(start_paused = true)]
async fn control_down_leaves_the_proxy_serving_and_the_client_retries_with_backoff() {
    let (mut fake, mut seen) = Fake::start().await;
    fake.state().failing = true;
    let proxy = Proxy::start(&fake.url(), TOKEN, "1s").await;
    let before = proxy.shared().snapshot.load_full();

    // 500s: registration is retried after 100 ms, 200 ms, 400 ms, … (each jittered down to half).
    let mut attempts = Vec::new();
    while attempts.len() < 7 {
        let at = next(&mut seen, |seen| match seen {
            Seen::Failed { path, at } if path == "/v1/nodes" => Some(at),
            _ => None,
        })
        .await;
        attempts.push(at);
    }
    for (index, pair) in attempts.windows(2).enumerate() {
        let ceiling = Duration::from_millis(100 << index).min(Duration::from_secs(5));
        let gap = pair[1] - pair[0];
        assert!(
            gap >= ceiling / 2 && gap <= ceiling + Duration::from_millis(50),
            "retry {index}: {gap:?} for {ceiling:?}"
        );
    }
    proxy.record(5);
    assert!(Arc::ptr_eq(&before, &proxy.shared().snapshot.load_full()), "the running snapshot is untouched");
    assert_eq!(proxy.shared().stats.generation.load(Ordering::Relaxed), 1);

    // Control answers again: the node registers, and the reports queued meanwhile arrive in order.
    fake.state().failing = false;
    next_registration(&mut seen).await;
    let mut requests = 0;
    let mut sequence = 0;
    loop {
        let (report, _) = next_accepted(&mut seen).await;
        sequence += 1;
        assert_eq!(report.sequence, sequence, "no report is lost or sent out of order");
        requests += report.series.iter().map(|series| series.counts.requests).sum::<u64>();
        if requests == 5 {
            break;
        }
    }

    // Connections refused for a while: the client registers again first when control is back.
    fake.stop().await;
    proxy.record(3);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(Arc::ptr_eq(&before, &proxy.shared().snapshot.load_full()));
    fake.restart().await;
    next_registration(&mut seen).await;
    loop {
        let (report, _) = next_accepted(&mut seen).await;
        sequence += 1;
        assert_eq!(report.sequence, sequence, "the queued reports arrive in order after the outage");
        requests += report.series.iter().map(|series| series.counts.requests).sum::<u64>();
        if requests == 8 {
            break;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_outage_fills_the_queue_then_folds_into_one_report() {
    let (fake, mut seen) = Fake::start().await;
    fake.state().failing = true;
    let proxy = Proxy::start(&fake.url(), TOKEN, "1s").await;
    proxy.record(1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    proxy.record(7);
    fake.state().failing = false;
    next_registration(&mut seen).await;
    for sequence in 1..=session::QUEUE_CAPACITY as u64 {
        let (report, _) = next_accepted(&mut seen).await;
        assert_eq!(report.sequence, sequence);
        let requests: u64 = report.series.iter().map(|series| series.counts.requests).sum();
        assert_eq!(requests, u64::from(sequence == 1));
    }
    let (report, _) = next_accepted(&mut seen).await;
    assert_eq!(report.sequence, session::QUEUE_CAPACITY as u64 + 1);
    let requests: u64 = report.series.iter().map(|series| series.counts.requests).sum();
    assert_eq!(requests, 7, "what happened while the queue was full comes in the next report");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_node_on_a_report_registers_again() {
    let (fake, mut seen) = Fake::start().await;
    let _proxy = Proxy::start(&fake.url(), TOKEN, "1s").await;
    next_registration(&mut seen).await;
    assert_eq!(next_accepted(&mut seen).await.0.sequence, 1);

    // Control restarted without its state.
    fake.state().known = false;
    let refused = next(&mut seen, |seen| match seen {
        Seen::Report { report, accepted: false, .. } => Some(report),
        _ => None,
    })
    .await;
    assert_eq!(refused.sequence, 2);
    let next_two = next(&mut seen, |seen| match seen {
        Seen::Registration { .. } => Some(None),
        Seen::Report { report, .. } => Some(Some(report.sequence)),
        _ => None,
    });
    assert_eq!(next_two.await, None, "a registration comes first");
    assert_eq!(next_accepted(&mut seen).await.0.sequence, 2, "then the refused report again");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_node_on_the_desired_state_poll_registers_again() {
    let (fake, mut seen) = Fake::start().await;
    // Reports far apart: only the poll can notice.
    let _proxy = Proxy::start(&fake.url(), TOKEN, "1h").await;
    next_registration(&mut seen).await;
    next(&mut seen, |seen| matches!(seen, Seen::Poll { after: 0 }).then_some(())).await;
    fake.state().known = false;
    // Wakes the pending poll, which finds the node gone: 404.
    fake.desired.send_replace(Some(desired_state(1, &[("api", &[("stable", 1)])])));
    next_registration(&mut seen).await;
    next(&mut seen, |seen| matches!(seen, Seen::Poll { after: 0 }).then_some(())).await;
}

#[tokio::test(start_paused = true)]
async fn stopping_sends_a_last_report() {
    let (fake, mut seen) = Fake::start().await;
    let proxy = Proxy::start(&fake.url(), TOKEN, "1h").await;
    next_registration(&mut seen).await;
    // The poll starts once the client has heard the registration accepted.
    next(&mut seen, |seen| matches!(seen, Seen::Poll { .. }).then_some(())).await;
    proxy.record(2);
    proxy.stop.send_replace(true);
    proxy.client.await.expect("the client ends");
    let (report, _) = next_accepted(&mut seen).await;
    assert_eq!(report.series.iter().map(|series| series.counts.requests).sum::<u64>(), 2);
}

#[tokio::test]
async fn without_a_node_there_is_no_client() {
    let text = config_text("http://127.0.0.1:9", std::path::Path::new("/nonexistent"), "1s", "");
    let node = text.find("[node]").expect("[node]");
    let control = text.find("[control]").expect("[control]");
    let text = format!("{}{}", &text[..node], &text[control..]);
    let config = remora_config::load_str(&text, Source::TextOnly).expect("a valid config");
    assert!(config.node.is_none());
    let shared = Arc::new(Shared::new(config.clone(), 1));
    let reloader = Arc::new(Reloader::new(shared, 1, None, ListenerSet::default()));
    assert!(spawn(&config, reloader, watch::channel(false).1).is_none());
}
