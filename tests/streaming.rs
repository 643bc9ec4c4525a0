//! Bodies stream through the proxy: 256 MiB each way with the proxy's peak memory far below that,
//! and a first chunk gets through while the rest is not even written yet.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

const BIG: u64 = 256 * 1024 * 1024;
const PEAK_LIMIT: u64 = 64 * 1024 * 1024;
/// Moving 256 MiB through a debug build on a small machine: generous, but bounded.
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);

async fn proxy_to(upstream: &Upstream) -> Proxy {
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "all"
listener = "main"
timeout = "300s"
match = { path_prefix = "/" }
backends = [{ cluster = "up", weight = 1 }]

[clusters.up]
endpoints = ["{UP}"]
"#,
        &[("UP", &upstream.addr)],
    );
    Proxy::start(&text).await
}

fn assert_peak_below_limit(proxy: &Proxy, what: &str) {
    let memory = proxy.memory();
    eprintln!("{what}: remora VmRSS {} KiB, VmHWM {} KiB", memory.rss / 1024, memory.peak / 1024);
    assert!(
        memory.peak < PEAK_LIMIT,
        "{what}: remora's peak RSS (VmHWM) was {} MiB, the limit is {} MiB: is the body buffered?",
        memory.peak / (1024 * 1024),
        PEAK_LIMIT / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_256_mib_streams_with_bounded_memory() {
    let upstream = Upstream::start(Proto::H1, |request: Request<hyper::body::Incoming>| async move {
        let pattern = Pattern::new();
        let declared = request.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned());
        let verdict =
            match check_pattern_body("the upload at the upstream", request.into_body(), &pattern).await {
                Ok(length) => format!("ok {length} content-length={declared:?}"),
                Err(error) => format!("bad {error}"),
            };
        Response::new(full(verdict))
    })
    .await;
    let proxy = proxy_to(&upstream).await;

    let started = Instant::now();
    let request =
        Request::post(proxy.url("/upload")).body(Pattern::new().body(BIG, 64 * 1024, true)).unwrap();
    let response = within_for(TRANSFER_LIMIT, "the 256 MiB upload", h1_client().request(request))
        .await
        .expect("the 256 MiB upload through the proxy");
    assert_eq!(response.status(), StatusCode::OK);
    let verdict = read_body("the upload verdict", response.into_body()).await;
    eprintln!("upload of {BIG} bytes took {:?}", started.elapsed());
    assert_eq!(
        verdict,
        format!("ok {BIG} content-length={:?}", Some(BIG.to_string())),
        "the upstream must receive all 256 MiB, byte for byte"
    );
    assert_peak_below_limit(&proxy, "upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_256_mib_streams_with_bounded_memory() {
    // No content-length: the download is chunked all the way.
    let upstream = Upstream::start(Proto::H1, |_request| async move {
        Response::new(Pattern::new().body(BIG, 64 * 1024, false))
    })
    .await;
    let proxy = proxy_to(&upstream).await;

    let started = Instant::now();
    let request = Request::get(proxy.url("/download")).body(empty()).unwrap();
    let response = within("the download's response head", h1_client().request(request))
        .await
        .expect("the 256 MiB download");
    assert_eq!(response.status(), StatusCode::OK);
    let received = within_for(
        TRANSFER_LIMIT,
        "the 256 MiB download",
        check_pattern_body("download", response.into_body(), &Pattern::new()),
    )
    .await;
    eprintln!("download of {BIG} bytes took {:?}", started.elapsed());
    assert_eq!(received, Ok(BIG), "the client must receive all 256 MiB, byte for byte");
    assert_peak_below_limit(&proxy, "download");
}

/// The upstream writes a first chunk and then waits for the test: the client must see that chunk
/// while the rest of the response does not exist yet.
#[tokio::test]
async fn response_first_chunk_arrives_before_the_rest_is_written() {
    let gate = Gate::new();
    let upstream = {
        let gate = gate.clone();
        Upstream::start(Proto::H1, move |_request| {
            let gate = gate.clone();
            async move {
                let (sender, body) = channel_body();
                tokio::spawn(async move {
                    sender.data("first chunk;").await;
                    gate.wait().await;
                    sender.data("the rest").await;
                });
                Response::new(body)
            }
        })
        .await
    };
    let proxy = proxy_to(&upstream).await;

    let response = within(
        "the response head",
        h1_client().request(Request::get(proxy.url("/slow")).body(empty()).unwrap()),
    )
    .await
    .expect("GET /slow");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.len() < "first chunk;".len() {
        let frame = within_for(
            Duration::from_secs(10),
            "the first chunk while the upstream holds back the rest (is the response buffered?)",
            body.frame(),
        )
        .await;
        match frame {
            Some(Ok(frame)) => received.extend_from_slice(&frame.into_data().unwrap_or_default()),
            other => panic!("the body ended or failed before the first chunk: {other:?}"),
        }
    }
    assert_eq!(received, b"first chunk;");

    gate.open();
    let rest = read_body("the rest of the response", body).await;
    assert_eq!(rest, "the rest");
}

/// The client writes a first chunk and then waits: the upstream must get it before the rest exists.
#[tokio::test]
async fn request_first_chunk_arrives_before_the_rest_is_written() {
    let (arrived_sender, mut arrived) = mpsc::unbounded_channel::<Bytes>();
    let upstream = Upstream::start(Proto::H1, move |request: Request<hyper::body::Incoming>| {
        let arrived = arrived_sender.clone();
        async move {
            let mut body = request.into_body();
            let mut total = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                    let _ = arrived.send(data);
                }
            }
            Response::new(full(format!("{total}")))
        }
    })
    .await;
    let proxy = proxy_to(&upstream).await;

    let (sender, body) = channel_body();
    let client = h1_client();
    let response = tokio::spawn(client.request(Request::post(proxy.url("/trickle")).body(body).unwrap()));
    sender.data("first chunk;").await;
    let mut first = Vec::new();
    while first.len() < "first chunk;".len() {
        let data = within_for(
            Duration::from_secs(10),
            "the upstream to get the first chunk while the client holds back the rest (is the request buffered?)",
            arrived.recv(),
        )
        .await
        .expect("upstream handler alive");
        first.extend_from_slice(&data);
    }
    assert_eq!(first, b"first chunk;");
    sender.data("the rest").await;
    drop(sender);

    let response = within("the response", response).await.unwrap().expect("POST /trickle");
    assert_eq!(response.status(), StatusCode::OK);
    let total = read_body("the count", response.into_body()).await;
    assert_eq!(total, format!("{}", "first chunk;the rest".len()));
}
