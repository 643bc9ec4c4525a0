//! The proxy's own answers (404, 502, 504, 400, 431) and its robustness: bad input on one connection
//! never disturbs another, and a broken upstream never hangs a client.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

/// A listener `main` (with `LISTENER_EXTRA` keys), a route `/api` to `{UP}` and a route `/slow` to `{SLOW}`
/// with a 300 ms timeout.
fn proxy_config(up: SocketAddr, slow: SocketAddr, listener_extra: &str) -> String {
    config(
        r#"{ADMIN}
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
{LISTENER_EXTRA}

[[routes]]
name = "api"
listener = "main"
match = { path_prefix = "/api" }
backends = [{ cluster = "up", weight = 1 }]

[[routes]]
name = "slow"
listener = "main"
timeout = "300ms"
match = { path_prefix = "/slow" }
backends = [{ cluster = "slow", weight = 1 }]

[clusters.up]
endpoints = ["{UP}"]
connect_timeout = "1s"

[clusters.slow]
endpoints = ["{SLOW}"]
"#,
        &[("UP", &up), ("SLOW", &slow), ("LISTENER_EXTRA", &listener_extra)],
    )
}

async fn get(proxy: &Proxy, path: &str) -> Response<Incoming> {
    within(&format!("GET {path}"), h1_client().request(Request::get(proxy.url(path)).body(empty()).unwrap()))
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"))
}

/// A reply made by Remora itself: the status, `x-remora-error`, and a short plain-text body.
async fn assert_local_reply(response: Response<Incoming>, status: StatusCode, error: &str) {
    let head = format!("{:?} {:?}", response.status(), response.headers());
    assert_eq!(response.status(), status, "{head}");
    assert_eq!(
        response.headers().get("x-remora-error").and_then(|v| v.to_str().ok()),
        Some(error),
        "x-remora-error: {head}"
    );
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("text/plain"), "a local reply is text/plain: {head}");
    let body = read_body("local reply", response.into_body()).await;
    assert!(!body.is_empty(), "a local reply says what happened in its body: {head}");
}

fn assert_raw_local_reply(outcome: RawOutcome, status: u16, error: &str, what: &str) {
    let RawOutcome::Response(response) = outcome else {
        panic!("{what}: expected a {status} response, got {outcome:?}")
    };
    assert_eq!(response.status, status, "{what}: {response:?}");
    assert_eq!(response.header("x-remora-error"), Some(error), "{what}: {response:?}");
    assert!(response.header("content-type").unwrap_or("").starts_with("text/plain"), "{what}: {response:?}");
    assert!(!response.body.is_empty(), "{what}: a local reply has a body: {response:?}");
}

async fn echo_and_proxy(listener_extra: &str) -> (Proxy, Upstream, Upstream) {
    let up = Upstream::echo("up").await;
    // Never answers: its handler waits on a gate nobody opens.
    let never = Gate::new();
    let slow = Upstream::start(Proto::H1, move |request| {
        let never = never.clone();
        async move {
            never.wait().await;
            upstream::echo_response("slow", request)
        }
    })
    .await;
    let proxy = Proxy::start(&proxy_config(up.addr, slow.addr, listener_extra)).await;
    (proxy, up, slow)
}

#[tokio::test]
async fn no_route_is_404() {
    let (proxy, up, _slow) = echo_and_proxy("").await;
    assert_local_reply(get(&proxy, "/nothing/here").await, StatusCode::NOT_FOUND, "no-route").await;
    assert_local_reply(get(&proxy, "/apiary").await, StatusCode::NOT_FOUND, "no-route").await;
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn connect_failure_is_502() {
    let slow = Upstream::echo("unused").await;
    let proxy = Proxy::start(&proxy_config(dead_addr(), slow.addr, "")).await;
    assert_local_reply(get(&proxy, "/api/x").await, StatusCode::BAD_GATEWAY, "connect").await;
}

#[tokio::test]
async fn route_timeout_is_504() {
    let (proxy, _up, slow) = echo_and_proxy("").await;
    let started = Instant::now();
    let response = get(&proxy, "/slow").await;
    let elapsed = started.elapsed();
    assert_local_reply(response, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
    assert_eq!(slow.requests(), 1, "the request reached the upstream before timing out");
    assert!(elapsed >= Duration::from_millis(250), "504 after {elapsed:?}, before the 300ms route timeout");
    assert!(
        elapsed < Duration::from_secs(10),
        "504 after {elapsed:?}: the route's 300ms timeout was not used"
    );
}

/// The route timeout bounds the wait for the response head, not the body: a head that arrives in
/// time followed by a body slower than the timeout is passed whole.
#[tokio::test]
async fn route_timeout_bounds_only_the_wait_for_the_response_head() {
    let rest = Gate::new();
    let streaming = {
        let rest = rest.clone();
        Upstream::start(Proto::H1, move |_request| {
            let rest = rest.clone();
            async move {
                let (sender, body) = channel_body();
                tokio::spawn(async move {
                    sender.data("head on time, ").await;
                    rest.wait().await;
                    sender.data("body late").await;
                });
                Response::new(body)
            }
        })
        .await
    };
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&proxy_config(up.addr, streaming.addr, "")).await;
    let response = get(&proxy, "/slow/stream").await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.headers());
    // Not a readiness wait: the point is to let the 300ms route timeout pass mid-body.
    tokio::time::sleep(Duration::from_millis(800)).await;
    rest.open();
    let body = read_body("a body slower than the route timeout", response.into_body()).await;
    assert_eq!(body, "head on time, body late", "the body was cut by the route timeout");
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let (proxy, up, _slow) = echo_and_proxy("").await;

    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.write(b"GET /api/x HTTP/1.1\r\nHost: a.example.test\r\nHost: b.example.test\r\n\r\n").await.unwrap();
    assert_raw_local_reply(conn.read_response().await, 400, "bad-request", "two different Host headers");

    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.write(b"GET /api/x HTTP/1.1\r\nUser-Agent: raw\r\n\r\n").await.unwrap();
    assert_raw_local_reply(conn.read_response().await, 400, "bad-request", "HTTP/1.1 without Host");

    assert_eq!(up.requests(), 0, "a malformed request must not reach the upstream");
}

#[tokio::test]
async fn garbage_on_one_connection_leaves_a_kept_alive_neighbour_working() {
    let (proxy, _up, _slow) = echo_and_proxy("").await;
    let mut neighbour = H1Conn::connect(proxy.addr()).await;
    let request = || Request::get("/api/neighbour").header("host", "app.example.test").body(empty()).unwrap();
    assert_eq!(neighbour.send(request()).await.expect("neighbour before").status(), StatusCode::OK);

    let mut garbage = RawConn::connect(proxy.addr()).await;
    garbage.write(b"\x00\x01\x02\xff this is not HTTP at all \x7f\r\n\r\n").await.unwrap();
    match garbage.read_response().await {
        RawOutcome::Response(response) => assert_eq!(response.status, 400, "garbage: {response:?}"),
        other => panic!("garbage bytes should get a 400 from the HTTP parser, got {other:?}"),
    }

    let response = neighbour.send(request()).await.expect("the kept-alive neighbour after the garbage");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        get(&proxy, "/api/fresh").await.status(),
        StatusCode::OK,
        "a new connection after the garbage"
    );
}

/// A request head the proxy must refuse: 431, or the connection closed, and nothing else.
async fn assert_refused(proxy: &Proxy, head: &[u8], what: &str) {
    let mut conn = RawConn::connect(proxy.addr()).await;
    if let Err(error) = conn.write(head).await {
        eprintln!("{what}: closed while the head was written ({error})");
        return;
    }
    match conn.read_response().await {
        RawOutcome::Response(response) => assert_eq!(response.status, 431, "{what}: {response:?}"),
        closed => eprintln!("{what}: {closed:?}"),
    }
}

fn head_with(headers: &[(String, String)]) -> Vec<u8> {
    let mut head = String::from("GET /api/limits HTTP/1.1\r\nHost: app.example.test\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[tokio::test]
async fn header_limits_are_enforced_and_neighbours_keep_working() {
    let (mut proxy, _up, _slow) = echo_and_proxy("max_header_bytes = 8192\nmax_headers = 100").await;
    let mut neighbour = H1Conn::connect(proxy.addr()).await;
    let request = || Request::get("/api/neighbour").header("host", "app.example.test").body(empty()).unwrap();
    assert_eq!(neighbour.send(request()).await.expect("neighbour before").status(), StatusCode::OK);

    // Under both limits: served.
    let fine = Request::get("/api/fine")
        .header("host", "app.example.test")
        .header("x-big", "a".repeat(4096))
        .body(empty())
        .unwrap();
    assert_eq!(
        neighbour.send(fine).await.expect("4 KiB header").status(),
        StatusCode::OK,
        "a 4 KiB header is allowed"
    );

    assert_refused(
        &proxy,
        &head_with(&[("x-big".into(), "a".repeat(16 * 1024))]),
        "a 16 KiB header over 8192",
    )
    .await;
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h-{i}"), "v".into())).collect();
    assert_refused(&proxy, &head_with(&many), "150 headers over max_headers = 100").await;
    let huge: Vec<(String, String)> = (0..64).map(|i| (format!("x-fill-{i}"), "z".repeat(1024))).collect();
    assert_refused(&proxy, &head_with(&huge), "64 KiB of headers").await;

    assert_eq!(proxy.exit_status(), None, "remora must survive oversized headers");
    let response =
        neighbour.send(request()).await.expect("the kept-alive neighbour after the oversized heads");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn default_header_limit_refuses_a_1_mib_head() {
    let (mut proxy, _up, _slow) = echo_and_proxy("").await;
    let mut neighbour = H1Conn::connect(proxy.addr()).await;
    let request = || Request::get("/api/neighbour").header("host", "app.example.test").body(empty()).unwrap();
    let mut conn = RawConn::connect(proxy.addr()).await;
    // Written in pieces so the proxy can refuse mid-way.
    let _ = conn.write(b"GET /api/limits HTTP/1.1\r\nHost: app.example.test\r\nx-huge: ").await;
    for _ in 0..1024 {
        if conn.write(&[b'q'; 1024]).await.is_err() {
            break;
        }
    }
    let _ = conn.write(b"\r\n\r\n").await;
    match conn.read_response().await {
        RawOutcome::Response(response) => assert_eq!(response.status, 431, "1 MiB head: {response:?}"),
        closed => eprintln!("1 MiB head: {closed:?}"),
    }
    assert_eq!(proxy.exit_status(), None, "remora must survive a 1 MiB head");
    assert_eq!(neighbour.send(request()).await.expect("neighbour after").status(), StatusCode::OK);
}

/// A raw upstream that answers every request head with `head`, then `body_bytes` bytes, then closes.
async fn truncating_upstream(head: &'static str, body_bytes: usize) -> Upstream {
    Upstream::raw(move |mut tcp| async move {
        upstream::read_head(&mut tcp).await;
        let _ = tcp.write_all(head.as_bytes()).await;
        let _ = tcp.write_all(&vec![b'x'; body_bytes]).await;
        let _ = tcp.flush().await;
        // Dropping the socket closes it mid-response.
    })
    .await
}

async fn assert_truncation_is_visible(upstream: Upstream, promised: usize) {
    let healthy = Upstream::echo("healthy").await;
    let proxy = Proxy::start(&proxy_config(upstream.addr, healthy.addr, "")).await;
    match within(
        "the response from an upstream that dies mid-body",
        h1_client().request(Request::get(proxy.url("/api/truncated")).body(empty()).unwrap()),
    )
    .await
    {
        Err(error) => eprintln!("client saw an error: {error}"),
        Ok(response) if response.status() == StatusCode::BAD_GATEWAY => {
            eprintln!("client saw a 502: {:?}", response.headers());
        }
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK, "{:?}", response.headers());
            match collect("the truncated body (must end or fail, never hang)", response.into_body()).await {
                Err(error) => eprintln!("client saw a body error: {error}"),
                Ok(body) => {
                    let length = body.to_bytes().len();
                    assert!(
                        length < promised,
                        "the client got {length} bytes: a whole body from a dead upstream?"
                    );
                    eprintln!("client saw a truncated body of {length} bytes");
                }
            }
        }
    }
    // The proxy still serves others.
    let response = get(&proxy, "/slow/ok").await;
    assert_eq!(Seen::of(&response).upstream, "healthy");
}

#[tokio::test]
async fn upstream_dying_mid_body_with_content_length_never_hangs_the_client() {
    let upstream = truncating_upstream("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", 1000).await;
    assert_truncation_is_visible(upstream, 100_000).await;
}

#[tokio::test]
async fn upstream_dying_mid_chunked_body_never_hangs_the_client() {
    let upstream =
        truncating_upstream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n", 1000).await;
    assert_truncation_is_visible(upstream, 4096).await;
}

#[tokio::test]
async fn upstream_closing_before_the_response_is_502_upstream_reset() {
    let upstream = Upstream::raw(|mut tcp| async move {
        upstream::read_head(&mut tcp).await;
    })
    .await;
    let healthy = Upstream::echo("healthy").await;
    let proxy = Proxy::start(&proxy_config(upstream.addr, healthy.addr, "")).await;
    assert_local_reply(get(&proxy, "/api/reset").await, StatusCode::BAD_GATEWAY, "upstream-reset").await;
}
