//! The control client commands as a user runs them: the real `remora` binary against a small fake
//! control API served from this test on `127.0.0.1:0` (the real control process has its own tests;
//! here the answers are fixed so that the output can be checked to the character).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::mpsc;

const BINARY: &str = env!("CARGO_BIN_EXE_remora");
const TOKEN: &str = "cli-test-token";
const TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

fn nodes() -> Value {
    let three_days_ago = now_ms() - 3 * 86_400_000 - 1_000;
    json!([
        {
            "name": "payments", "version": "v2", "status": "degraded",
            "endpoints": ["127.0.0.1:8080"], "publishes": ["payment.settled@2"], "consumes": [],
            "proxies": [{"proxy": "a:1", "applied_revision": 3, "last_report_unix_ms": three_days_ago}],
            "last_report_unix_ms": three_days_ago, "desired_revision": 3,
            "stats": {
                "window_seconds": 10.0, "requests": 1000, "rps": 100.0, "success_rate": 0.95,
                "p50_ms": 1.5, "p99_ms": 250.0, "breakers": [["payments-v2", "open"]]
            }
        },
        {
            "name": "orders", "version": "1.10.3", "status": "registered",
            "endpoints": [], "publishes": [], "consumes": [], "proxies": [],
            "last_report_unix_ms": null, "desired_revision": 0, "stats": null
        }
    ])
}

fn journal_entry(seq: u64) -> Value {
    json!({
        "seq": seq, "unix_ms": 1_700_000_000_000_u64 + seq * 1000, "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "kind": "status_changed", "node": "payments",
        "detail": {"from": "healthy", "to": "degraded", "reason": format!("check {seq}")}
    })
}

/// What the fake control saw and how it behaves.
#[derive(Default)]
struct Fake {
    /// Answer `/v1/nodes` with something that is not JSON.
    broken: bool,
    /// The `Last-Event-ID` of each `/v1/journal/stream` request, in order.
    resumes: Mutex<Vec<Option<String>>>,
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec_pretty(value).expect("JSON")))
        .map_err(|never| match never {});
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.boxed())
        .expect("response")
}

/// The SSE frames of journal entries `seqs`, cut into chunks at awkward places.
fn sse_chunks(seqs: &[u64]) -> Vec<Bytes> {
    let mut text = String::from(": keepalive\n\n");
    for &seq in seqs {
        text.push_str(&format!("id: {seq}\nevent: status_changed\ndata: {}\n\n", journal_entry(seq)));
    }
    text.as_bytes().chunks(7).map(Bytes::copy_from_slice).collect()
}

async fn handle(fake: Arc<Fake>, request: Request<Incoming>) -> Response<Body> {
    let authorized = request.headers().get("authorization").and_then(|value| value.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "missing or wrong token: send Authorization: Bearer TOKEN"}),
        );
    }
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    match path.as_str() {
        "/v1/nodes" if fake.broken => Response::new(
            Full::new(Bytes::from_static(b"<html>gateway</html>")).map_err(|never| match never {}).boxed(),
        ),
        "/v1/nodes" => json_response(StatusCode::OK, &nodes()),
        "/v1/nodes/payments" => json_response(StatusCode::OK, &nodes()[0]),
        "/v1/journal" if query.starts_with("after=0&") => {
            json_response(StatusCode::OK, &json!([journal_entry(1)]))
        }
        "/v1/journal" => json_response(StatusCode::OK, &json!([])),
        "/v1/journal/stream" => {
            let resume =
                request.headers().get("last-event-id").and_then(|id| id.to_str().ok()).map(str::to_owned);
            let after: u64 = resume.as_deref().and_then(|id| id.parse().ok()).unwrap_or(0);
            let first = {
                let mut resumes = fake.resumes.lock().expect("lock");
                resumes.push(resume);
                resumes.len() == 1
            };
            let (sender, receiver) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(64);
            tokio::spawn(async move {
                // Like control, the backlog after `Last-Event-ID` (the client skips what it already
                // printed). The first connection stops at 3 and breaks in the middle of an event; the
                // next one goes on to 4 and stays open.
                let last = if first { 3 } else { 4 };
                let seqs: Vec<u64> = (after.max(1) - 1..=last).filter(|seq| *seq >= 1).collect();
                for chunk in sse_chunks(&seqs) {
                    if sender.send(Ok(Frame::data(chunk))).await.is_err() {
                        return;
                    }
                }
                if first {
                    // A pause, so that hyper flushes what was sent before the break.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = sender.send(Ok(Frame::data(Bytes::from_static(b"id: 99\ndata: {\"trunc")))).await;
                    let _ = sender.send(Err("dropped on purpose".into())).await;
                } else {
                    sender.closed().await;
                }
            });
            let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|frame| (frame, receiver))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .expect("response")
        }
        _ => match path.strip_prefix("/v1/nodes/") {
            Some(name) => {
                json_response(StatusCode::NOT_FOUND, &json!({"error": format!("unknown node \"{name}\"")}))
            }
            None => {
                json_response(StatusCode::NOT_FOUND, &json!({"error": format!("no GET {path} in the API")}))
            }
        },
    }
}

/// Serves the fake API on `127.0.0.1:0` until the test ends.
async fn fake_control(fake: Arc<Fake>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(handle(fake, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_remove("REMORA_CONTROL_URL")
        .env_remove("REMORA_CONTROL_TOKEN")
        .env("REMORA_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn remora(args: &[&str]) -> Output {
    run(&mut command(args)).await
}

async fn run(command: &mut Command) -> Output {
    tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("remora finished in time")
        .expect("remora ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn nodes_prints_a_table_and_json_as_the_api_sent_it() {
    let addr = fake_control(Arc::default()).await;
    let url = format!("http://{addr}");

    let output = remora(&["nodes", "--control", &url, "--token", TOKEN]).await;
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "\
NAME      VERSION  STATUS      RPS  SUCCESS    P99  PROXIES  LAST REPORT  HEALING
payments  v2       degraded    100    95.0%  250ms  1 (3/3)  3d ago       -
orders    1.10.3   registered    -        -      -  0        never        -
"
    );

    let output = remora(&["nodes", "--control", &url, "--token", TOKEN, "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    let mut expected = nodes();
    // The fixture's times are computed per call; everything else must be as sent.
    for (printed, expected) in printed.as_array().unwrap().iter().zip(expected.as_array_mut().unwrap()) {
        expected["last_report_unix_ms"] = printed["last_report_unix_ms"].clone();
        if let Some(proxy) = expected["proxies"].get_mut(0) {
            proxy["last_report_unix_ms"] = printed["proxies"][0]["last_report_unix_ms"].clone();
        }
    }
    assert_eq!(printed, expected);
    assert!(text(&output.stdout).starts_with("[\n  {\n"), "pretty-printed");
}

#[tokio::test]
async fn status_and_one_node_in_detail() {
    let addr = fake_control(Arc::default()).await;
    let url = format!("http://{addr}");
    let output = run(command(&["status", "--token", TOKEN]).env("REMORA_CONTROL_URL", &url)).await;
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let summary = format!(
        "control  {url} (reachable)\nnodes    2 (1 degraded, 1 registered)\njournal  head at seq 1\n\nNAME "
    );
    assert!(stdout.starts_with(&summary), "{stdout}");

    let output = remora(&["nodes", "payments", "--control", &url, "--token", TOKEN]).await;
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("name:        payments\nversion:     v2\nstatus:      degraded\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\nbreakers:    payments-v2 open\n"), "{stdout}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_a_401_with_the_api_message_and_exit_1() {
    let addr = fake_control(Arc::default()).await;
    let url = format!("http://{addr}");
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "wrong\n").expect("write token");

    let output = remora(&["nodes", "--control", &url, "--token-file", token_file.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "");
    assert_eq!(
        text(&output.stderr),
        "remora nodes: control refused the token (401): missing or wrong token: send Authorization: Bearer TOKEN\n"
    );

    let output = remora(&["nodes", "--control", &url]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "remora nodes: control refused the token (401): missing or wrong token: send Authorization: Bearer \
         TOKEN (no token was given: use --token or --token-file, or set REMORA_CONTROL_TOKEN)\n"
    );
}

#[tokio::test]
async fn an_unreachable_control_is_named_with_a_hint() {
    // A port that was just free: nothing listens there once the listener is gone.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let output = remora(&["nodes", "--control", &format!("http://{addr}"), "--token", TOKEN]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "");
    assert_eq!(
        text(&output.stderr),
        format!(
            "remora nodes: cannot reach control at http://{addr}: connection refused — is `remora control` running?\n"
        )
    );
}

#[tokio::test]
async fn an_unknown_node_and_a_body_that_is_not_json() {
    let addr = fake_control(Arc::default()).await;
    let url = format!("http://{addr}");
    let output = remora(&["nodes", "nope", "--control", &url, "--token", TOKEN]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "remora nodes: not found (404): unknown node \"nope\"\n");

    let addr = fake_control(Arc::new(Fake { broken: true, ..Fake::default() })).await;
    let output = remora(&["nodes", "--control", &format!("http://{addr}"), "--token", TOKEN]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "remora nodes: unexpected answer from http://{addr}/v1/nodes: expected a list of nodes (JSON), but the \
             body is not JSON (expected value at line 1 column 1): \"<html>gateway</html>\"\n"
        )
    );
}

#[tokio::test]
async fn events_follow_resumes_with_last_event_id_after_a_dropped_connection() {
    let fake = Arc::new(Fake::default());
    let addr = fake_control(fake.clone()).await;
    let mut child =
        command(&["events", "--follow", "--control", &format!("http://{addr}"), "--token", TOKEN])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn remora events");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut lines = Vec::new();
    let until_four = async {
        while let Some(line) = stdout.next_line().await.expect("read stdout") {
            let done = line.trim_start().starts_with("4 ");
            lines.push(line);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(TIMEOUT, until_four).await.expect("entry 4 printed in time");
    let seqs: Vec<&str> =
        lines.iter().skip(1).map(|line| line.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(seqs, ["1", "2", "3", "4"], "each entry once, in order: {lines:#?}");
    assert!(lines[0].trim_start().starts_with("SEQ  TIME"), "{lines:#?}");
    assert!(
        lines[4].ends_with("status_changed        payments        healthy → degraded: check 4"),
        "{lines:#?}"
    );
    // The first connection resumes after the entry printed from the journal, the second after the
    // last entry received whole (not the half-sent 99).
    assert_eq!(*fake.resumes.lock().unwrap(), [Some("1".to_owned()), Some("3".to_owned())]);

    // Ctrl-C ends it cleanly.
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let output =
        tokio::time::timeout(TIMEOUT, child.wait_with_output()).await.expect("exits").expect("waited");
    assert_eq!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("remora events: the event stream broke: "), "{stderr}");
    assert!(stderr.contains("; reconnecting in 0.5s…"), "{stderr}");
}
