//! HTTP/2 through the proxy: h2c prior knowledge from the client, to HTTP/1.1 and HTTP/2 upstreams,
//! many streams at once on one connection, and gRPC-style framing with trailers both ways.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

async fn proxy_to(upstream: &Upstream, protocol: &str) -> Proxy {
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "all"
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "up", weight = 1 }]

[clusters.up]
endpoints = ["{UP}"]
protocol = "{PROTOCOL}"
"#,
        &[("UP", &upstream.addr), ("PROTOCOL", &protocol)],
    );
    Proxy::start(&text).await
}

/// The authority the upstream saw: the Host header (HTTP/1.1) or :authority (HTTP/2).
fn authority(seen: &Seen) -> String {
    let uri: http::Uri = seen.uri.parse().unwrap();
    match (seen.header("host"), uri.authority()) {
        (Some(host), _) => host.to_owned(),
        (None, Some(authority)) => authority.to_string(),
        (None, None) => panic!("the upstream saw neither a Host header nor an authority: {seen:?}"),
    }
}

async fn get_and_post_over_h2c(proxy: &Proxy, upstream_version: &str) {
    let conn = H2Conn::connect(proxy.addr()).await;
    let response = conn
        .send(Request::get("http://app.example.test/h2?x=1").body(empty()).unwrap())
        .await
        .expect("h2c GET through the proxy");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let seen = Seen::of(&response);
    assert_eq!(seen.version, upstream_version, "the protocol spoken to the upstream");
    assert_eq!((seen.method.as_str(), seen.path().as_str()), ("GET", "/h2?x=1"));
    assert_eq!(authority(&seen), "app.example.test", "the authority must reach the upstream unchanged");
    assert_eq!(seen.all("x-forwarded-for").join(", "), "127.0.0.1");

    let response = conn
        .send(Request::post("http://app.example.test/echo").body(full("h2 body")).unwrap())
        .await
        .expect("h2c POST through the proxy");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(read_body("h2c POST body", response.into_body()).await, "h2 body");
}

#[tokio::test]
async fn h2c_client_to_http1_upstream() {
    let upstream = Upstream::echo_with(Proto::H1, "h1").await;
    let proxy = proxy_to(&upstream, "http1").await;
    get_and_post_over_h2c(&proxy, "HTTP/1.1").await;
}

#[tokio::test]
async fn h2c_client_to_http2_upstream() {
    let upstream = Upstream::echo_with(Proto::H2, "h2").await;
    let proxy = proxy_to(&upstream, "http2").await;
    get_and_post_over_h2c(&proxy, "HTTP/2.0").await;
}

#[tokio::test]
async fn http1_client_to_http2_upstream() {
    let upstream = Upstream::echo_with(Proto::H2, "h2").await;
    let proxy = proxy_to(&upstream, "http2").await;
    let mut conn = H1Conn::connect(proxy.addr()).await;
    let request = Request::post("/from-h1").header("host", "app.example.test").body(full("over h2")).unwrap();
    let response = conn.send(request).await.expect("HTTP/1.1 POST to an h2 upstream");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = Seen::of(&response);
    assert_eq!(seen.version, "HTTP/2.0");
    assert_eq!(authority(&seen), "app.example.test");
    assert_eq!(read_body("body", response.into_body()).await, "over h2");
}

/// The upstream answers nobody until all `STREAMS` requests have arrived: a proxy that handled the
/// streams of one connection one after another would never get there.
async fn concurrent_streams_on_one_connection(proto: Proto, protocol: &str) {
    const STREAMS: usize = 50;
    let arrived = Arc::new(AtomicUsize::new(0));
    let all_here = Gate::new();
    let upstream = {
        let (arrived, all_here) = (arrived.clone(), all_here.clone());
        Upstream::start(proto, move |request| {
            let (arrived, all_here) = (arrived.clone(), all_here.clone());
            async move {
                if arrived.fetch_add(1, Ordering::SeqCst) + 1 == STREAMS {
                    all_here.open();
                }
                all_here.wait().await;
                upstream::echo_response("barrier", request)
            }
        })
        .await
    };
    let proxy = proxy_to(&upstream, protocol).await;
    let conn = H2Conn::connect(proxy.addr()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..STREAMS {
        let conn = conn.clone();
        tasks.spawn(async move {
            let uri = format!("http://app.example.test/stream/{index}");
            let response = conn.send(Request::get(uri).body(empty()).unwrap()).await;
            (index, response)
        });
    }
    let results = within("all streams (the upstream waits for every one of them)", tasks.join_all()).await;
    for (index, response) in results {
        let response = response.unwrap_or_else(|error| panic!("stream {index}: {error}"));
        assert_eq!(response.status(), StatusCode::OK, "stream {index}");
        assert_eq!(
            Seen::of(&response).path(),
            format!("/stream/{index}"),
            "stream {index} got another's answer"
        );
    }
    assert_eq!(arrived.load(Ordering::SeqCst), STREAMS);
}

#[tokio::test]
async fn many_concurrent_streams_on_one_connection_to_http1_upstream() {
    concurrent_streams_on_one_connection(Proto::H1, "http1").await;
}

#[tokio::test]
async fn many_concurrent_streams_on_one_connection_to_http2_upstream() {
    concurrent_streams_on_one_connection(Proto::H2, "http2").await;
}

// ---- gRPC-style framing: 1 byte flag, 4 bytes big-endian length, message ----

fn grpc_message(message: &[u8]) -> Bytes {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// Reads length-prefixed messages from a body whose frames may split or join them.
struct GrpcReader<B> {
    body: B,
    buffer: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl<B> GrpcReader<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    fn new(body: B) -> Self {
        GrpcReader { body, buffer: Vec::new(), trailers: None }
    }

    /// The next message, or `None` at the end of the body.
    async fn next(&mut self, what: &str) -> Option<Vec<u8>> {
        loop {
            if self.buffer.len() >= 5 {
                let length = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() >= 5 + length {
                    let message = self.buffer[5..5 + length].to_vec();
                    self.buffer.drain(..5 + length);
                    return Some(message);
                }
            }
            match within_for(Duration::from_secs(10), what, self.body.frame()).await {
                None => {
                    assert!(self.buffer.is_empty(), "{what}: the body ended inside a message");
                    return None;
                }
                Some(Err(error)) => panic!("{what}: body error: {error:?}"),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => self.trailers = frame.into_trailers().ok(),
                },
            }
        }
    }
}

fn header(map: &HeaderMap, name: &str) -> Option<String> {
    map.get(name).map(|value| value.to_str().unwrap().to_owned())
}

/// A gRPC-shaped echo service on an h2-only upstream. Each message comes back as `echo:MESSAGE` as
/// soon as it arrives; at the end, trailers: `grpc-status: 0`, `x-custom-trailer`, and
/// `x-request-trailer` (the value of the request's own `x-client-trailer` trailer, or `none`).
async fn grpc_upstream() -> Upstream {
    Upstream::start(Proto::H2, |request: Request<Incoming>| async move {
        let saw_te = header(request.headers(), "te").unwrap_or_else(|| "none".into());
        let saw_type = header(request.headers(), "content-type").unwrap_or_else(|| "none".into());
        let (sender, body) = channel_body();
        tokio::spawn(async move {
            let mut reader = GrpcReader::new(request.into_body());
            while let Some(message) = reader.next("the request stream at the upstream").await {
                sender.data(grpc_message(&[b"echo:", &message[..]].concat())).await;
            }
            let request_trailer = reader.trailers.as_ref().and_then(|t| header(t, "x-client-trailer"));
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("x-custom-trailer", HeaderValue::from_static("from-upstream"));
            trailers.insert(
                "x-request-trailer",
                HeaderValue::from_str(&request_trailer.unwrap_or("none".into())).unwrap(),
            );
            sender.trailers(trailers).await;
        });
        Response::builder()
            .header("content-type", "application/grpc")
            .header("x-saw-te", saw_te)
            .header("x-saw-content-type", saw_type)
            .body(body)
            .unwrap()
    })
    .await
}

fn grpc_request(path: &str, body: Body) -> Request<Body> {
    Request::post(format!("http://grpc.example.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

fn assert_grpc_head(response: &Response<Incoming>) {
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(header(headers, "content-type").as_deref(), Some("application/grpc"));
    assert_eq!(
        header(headers, "x-saw-te").as_deref(),
        Some("trailers"),
        "`te: trailers` must reach the upstream"
    );
    assert_eq!(header(headers, "x-saw-content-type").as_deref(), Some("application/grpc"));
}

#[tokio::test]
async fn grpc_unary_call_with_trailers() {
    let upstream = grpc_upstream().await;
    let proxy = proxy_to(&upstream, "http2").await;
    let conn = H2Conn::connect(proxy.addr()).await;
    let response =
        conn.send(grpc_request("/test.Echo/Unary", full(grpc_message(b"hello")))).await.expect("unary call");
    assert_grpc_head(&response);
    let mut reader = GrpcReader::new(response.into_body());
    assert_eq!(reader.next("the unary answer").await.as_deref(), Some(&b"echo:hello"[..]));
    assert_eq!(reader.next("the end of the unary answer").await, None);
    let trailers = reader.trailers.expect("the response trailers must reach the client");
    assert_eq!(header(&trailers, "grpc-status").as_deref(), Some("0"));
    assert_eq!(header(&trailers, "x-custom-trailer").as_deref(), Some("from-upstream"));
}

/// Message N's echo must arrive before message N+1 is sent: streaming in both directions at once.
#[tokio::test]
async fn grpc_bidirectional_stream_is_interleaved_and_trailers_pass_both_ways() {
    let upstream = grpc_upstream().await;
    let proxy = proxy_to(&upstream, "http2").await;
    let conn = H2Conn::connect(proxy.addr()).await;
    let (sender, body) = channel_body();
    let call = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.send(grpc_request("/test.Echo/Chat", body)).await })
    };
    sender.data(grpc_message(b"message 1")).await;
    let response = within("the stream's response head", call).await.unwrap().expect("streaming call");
    assert_grpc_head(&response);
    let mut reader = GrpcReader::new(response.into_body());
    for index in 1..=5 {
        if index > 1 {
            sender.data(grpc_message(format!("message {index}").as_bytes())).await;
        }
        let echo =
            reader.next(&format!("the echo of message {index} before message {} is sent", index + 1)).await;
        assert_eq!(echo, Some(format!("echo:message {index}").into_bytes()), "message {index}");
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client-trailer", HeaderValue::from_static("done"));
    sender.trailers(trailers).await;
    drop(sender);
    assert_eq!(reader.next("the end of the stream").await, None);
    let trailers = reader.trailers.expect("the response trailers must reach the client");
    assert_eq!(header(&trailers, "grpc-status").as_deref(), Some("0"));
    assert_eq!(header(&trailers, "x-custom-trailer").as_deref(), Some("from-upstream"));
    assert_eq!(
        header(&trailers, "x-request-trailer").as_deref(),
        Some("done"),
        "the request's trailers must reach the upstream"
    );
}

#[tokio::test]
async fn local_replies_reach_h2c_clients() {
    let upstream = Upstream::echo("up").await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "api"
listener = "main"
match = { path_prefix = "/api" }
backends = [{ cluster = "up", weight = 1 }]

[[routes]]
name = "dead"
listener = "main"
match = { path_prefix = "/dead" }
backends = [{ cluster = "dead", weight = 1 }]

[clusters.up]
endpoints = ["{UP}"]

[clusters.dead]
endpoints = ["{DEAD}"]
"#,
        &[("UP", &upstream.addr), ("DEAD", &dead_addr())],
    );
    let proxy = Proxy::start(&text).await;
    let conn = H2Conn::connect(proxy.addr()).await;
    for (path, status, error) in
        [("/nowhere", StatusCode::NOT_FOUND, "no-route"), ("/dead", StatusCode::BAD_GATEWAY, "connect")]
    {
        let response = conn
            .send(Request::get(format!("http://app.example.test{path}")).body(empty()).unwrap())
            .await
            .unwrap_or_else(|error| panic!("h2c GET {path}: {error}"));
        assert_eq!(response.status(), status, "h2c GET {path}: {:?}", response.headers());
        assert_eq!(header(response.headers(), "x-remora-error").as_deref(), Some(error), "h2c GET {path}");
        assert!(
            !read_body("local reply", response.into_body()).await.is_empty(),
            "h2c GET {path}: empty body"
        );
    }
    // The connection survives local replies.
    let response =
        conn.send(Request::get("http://app.example.test/api").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
