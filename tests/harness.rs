//! The harness's own checks, with no proxy in the way: clients straight to the upstreams. When an
//! end-to-end test fails, these say whether the harness or the proxy is to blame.

mod common;

use common::*;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn echo_reports_what_it_saw_over_http1_and_h2c() {
    let upstream = Upstream::echo("direct").await;
    let mut conn = H1Conn::connect(upstream.addr).await;
    let request = Request::post("/a?b=c")
        .header("host", "h.example.test")
        .header("x-echo-status", "202")
        .header("x-echo-reply-header", "x-r=1")
        .body(full("body"))
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["x-r"], "1");
    let seen = Seen::of(&response);
    assert_eq!(
        (seen.upstream.as_str(), seen.method.as_str(), seen.path().as_str()),
        ("direct", "POST", "/a?b=c")
    );
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.header("host"), Some("h.example.test"));
    assert_eq!(read_body("echo", response.into_body()).await, "body");

    let h2 = H2Conn::connect(upstream.addr).await;
    let response = h2.send(Request::get("http://h.example.test/two").body(empty()).unwrap()).await.unwrap();
    assert_eq!(Seen::of(&response).version, "HTTP/2.0");
    assert_eq!(Seen::of(&response).path(), "/two");
    let pooled =
        h2_client().request(Request::get(format!("http://{}/p", upstream.addr)).body(empty()).unwrap());
    assert_eq!(Seen::of(&within("pooled h2c", pooled).await.unwrap()).version, "HTTP/2.0");
    assert_eq!(upstream.requests(), 3);
}

#[tokio::test]
async fn echo_streams_request_trailers_back_as_response_trailers() {
    let upstream = Upstream::echo_with(Proto::H2, "h2").await;
    let conn = H2Conn::connect(upstream.addr).await;
    let (sender, body) = channel_body();
    let call = tokio::spawn(async move { conn.send(Request::post("http://h/t").body(body).unwrap()).await });
    sender.data("abc").await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-t", HeaderValue::from_static("1"));
    sender.trailers(trailers).await;
    drop(sender);
    let response = within("response", call).await.unwrap().unwrap();
    let collected = collect("body", response.into_body()).await.unwrap();
    assert_eq!(collected.trailers().and_then(|t| t.get("x-t")).map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert_eq!(collected.to_bytes(), "abc");
}

#[tokio::test]
async fn pattern_bodies_check_out_and_catch_a_shift() {
    let pattern = Pattern::new();
    let upstream = Upstream::start(Proto::H1, |_request| async move {
        http::Response::new(Pattern::new().body(1 << 20, 10_000, false))
    })
    .await;
    let response = within(
        "GET",
        h1_client().request(Request::get(format!("http://{}/", upstream.addr)).body(empty()).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(check_pattern_body("pattern", response.into_body(), &pattern).await, Ok(1 << 20));
    assert!(pattern.check(70_000, &pattern.slice(70_000, 30_000)));
    assert!(!pattern.check(70_001, &pattern.slice(70_000, 30_000)));
    let whole = Pattern::new().body(200_000, 65_000, true).collect().await.unwrap().to_bytes();
    assert!(pattern.check(0, &whole) && whole.len() == 200_000);
}

#[tokio::test]
async fn raw_conn_reads_length_chunked_and_closed_responses() {
    let upstream = Upstream::raw(|mut tcp| async move {
        upstream::read_head(&mut tcp).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nx-remora-error: bad-request\r\ncontent-length: 3\r\n\r\nbad")
            .await;
        upstream::read_head(&mut tcp).await;
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\nx-t: 1\r\n\r\n").await;
        upstream::read_head(&mut tcp).await;
    })
    .await;
    let mut conn = RawConn::connect(upstream.addr).await;
    conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let RawOutcome::Response(first) = conn.read_response().await else { panic!("no first response") };
    assert_eq!(
        (first.status, first.header("x-remora-error"), first.body_text().as_str()),
        (400, Some("bad-request"), "bad")
    );
    conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let RawOutcome::Response(second) = conn.read_response().await else { panic!("no second response") };
    assert_eq!((second.status, second.body_text().as_str()), (200, "abc"));
    conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(matches!(conn.read_response().await, RawOutcome::Closed(_)));
}

#[tokio::test]
async fn config_fills_tokens_and_rejects_unfilled_ones() {
    let text = config("{ADMIN}{LISTENER}x = \"{X}\"\nm = { a = 1 }\n", &[("X", &42)]);
    assert!(
        text.contains("x = \"42\"") && text.contains("name = \"main\"") && text.contains("m = { a = 1 }")
    );
    let unfilled = std::panic::catch_unwind(|| config("y = \"{MISSING}\"", &[]));
    assert!(unfilled.is_err(), "an unfilled token must fail loudly");
}
