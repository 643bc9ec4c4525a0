//! Route retries end to end: a retryable failure is tried again on a freshly chosen endpoint while the
//! attempts, the budget, the cluster's `max_retries` and the route's timeout allow; small bodies of
//! known length are replayed byte for byte, and streamed or large bodies are sent once.
//!
//! Two-endpoint tests balance round robin, so that a retry lands on the other endpoint for sure
//! rather than by the luck of the balancer's draw; one test runs the same rescue on the default
//! balancer (`p2c_ewma`), on purpose.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::PooledClient;
use common::*;
use http::{Request, Response};
use tokio::sync::watch;
use tokio::task::JoinSet;

const ROUND_ROBIN: &str = "balance = \"round_robin\"\n";

/// A cluster of `bad` and `good` (round robin) behind a route with `retry`.
async fn bad_and_good(bad: Behaviour, retry: &str) -> (Proxy, Chaos, Chaos) {
    let bad = Chaos::start_with("bad", bad).await;
    let good = Chaos::start("good").await;
    let proxy = Proxy::start(&svc_config(&[bad.addr, good.addr], retry, ROUND_ROBIN)).await;
    (proxy, bad, good)
}

async fn expect_all_good(client: &PooledClient, url: &str, count: usize) {
    for index in 0..count {
        let reply = get(client, url).await;
        assert!(reply.is_from("good", 200), "request {index} must be rescued by a retry: {reply:?}");
    }
}

#[tokio::test]
async fn retries_rescue_a_flaky_endpoint() {
    let retry = r#"retry = { attempts = 2, on = ["503"] }"#;
    let (proxy, bad, good) = bad_and_good(Behaviour::Status(503), retry).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    expect_all_good(&client, &url, 20).await;
    assert!(bad.requests() > 0, "the flaky endpoint was never tried, so nothing was retried");
    assert_eq!(good.requests(), 20, "each request is answered once by the good endpoint");
}

/// The same with the cluster's default balancer (`p2c_ewma`): a retry goes to an endpoint the
/// balancer chooses afresh, so a flaky endpoint among two must not fail a request three times over.
#[tokio::test]
async fn retries_rescue_a_flaky_endpoint_with_the_default_balancer() {
    const REQUESTS: usize = 20;
    let bad = Chaos::start_with("bad", Behaviour::Status(503)).await;
    let good = Chaos::start("good").await;
    let retry = r#"retry = { attempts = 2, on = ["503"] }"#;
    let proxy = Proxy::start(&svc_config(&[bad.addr, good.addr], retry, "")).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    let mut failed = Vec::new();
    for index in 0..REQUESTS {
        let reply = get(&client, &url).await;
        if !reply.is_from("good", 200) {
            failed.push((index, reply.status, reply.upstream));
        }
    }
    let (bad_seen, good_seen) = (bad.requests(), good.requests());
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} requests failed despite 2 retries over two endpoints (bad saw {bad_seen} tries, \
         good {good_seen}): {failed:?}",
        failed.len()
    );
    assert!(
        bad_seen > 0,
        "the balancer never tried the bad endpoint in {REQUESTS} requests (good saw {good_seen})"
    );
    assert_eq!(good_seen, REQUESTS);
}

#[tokio::test]
async fn retries_on_connect_failure_reach_the_live_endpoint() {
    let good = Chaos::start("good").await;
    let retry = r#"retry = { attempts = 2, on = ["connect-failure"] }"#;
    let proxy = Proxy::start(&svc_config(&[dead_addr(), good.addr], retry, ROUND_ROBIN)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    expect_all_good(&client, &url, 20).await;
    assert_eq!(good.requests(), 20);
}

#[tokio::test]
async fn retries_on_reset_reach_the_other_endpoint() {
    let retry = r#"retry = { attempts = 2, on = ["reset"] }"#;
    let (proxy, bad, good) = bad_and_good(Behaviour::Reset, retry).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    expect_all_good(&client, &url, 20).await;
    assert!(bad.requests() > 0, "the resetting endpoint was never tried, so nothing was retried");
    assert_eq!(good.requests(), 20);
}

#[tokio::test]
async fn a_failure_not_listed_in_on_is_not_retried() {
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let retry = r#"retry = { attempts = 2, on = ["503"] }"#;
    let proxy = Proxy::start(&svc_config(&[up.addr], retry, "")).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    let reply = get(&client, &url).await;
    assert!(reply.is_from("svc", 500), "{reply:?}");
    assert_eq!(up.requests(), 1, "a 500 is not a 503: no retry");

    up.set(Behaviour::Reset);
    let reply = get(&client, &url).await;
    assert!(reply.is_error(502, "upstream-reset"), "{reply:?}");
    assert_eq!(up.requests(), 2, "`reset` is not listed: no retry");
}

#[tokio::test]
async fn attempts_cap_the_retries() {
    let up = Chaos::start_with("svc", Behaviour::Status(503)).await;
    let retry = r#"retry = { attempts = 2, on = ["503"], budget_ratio = 1.0, min_retries_per_second = 100 }"#;
    let proxy = Proxy::start(&svc_config(&[up.addr], retry, "")).await;
    let reply = get(&h1_client(), &proxy.url("/orders")).await;
    assert!(reply.is_from("svc", 503), "the last try's answer: {reply:?}");
    assert_eq!(up.requests(), 3, "one try and attempts = 2 retries");
}

#[tokio::test]
async fn retries_stop_at_the_budget() {
    const REQUESTS: usize = 50;
    let up = Chaos::start_with("svc", Behaviour::Status(503)).await;
    // No share of the traffic, only the reserve: 1 retry per second over the 10 s window.
    let retry = r#"retry = { attempts = 2, on = ["503"], budget_ratio = 0.0, min_retries_per_second = 1 }"#;
    let proxy = Proxy::start(&svc_config(&[up.addr], retry, "")).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    let started = Instant::now();
    for index in 0..REQUESTS {
        let reply = get(&client, &url).await;
        assert!(reply.is_from("svc", 503), "request {index}: {reply:?}");
    }
    let (elapsed, seen) = (started.elapsed(), up.requests());
    eprintln!("{REQUESTS} requests in {elapsed:?}: the upstream saw {seen}");
    assert!(seen > REQUESTS, "the reserve of 10 retries was not used: the upstream saw {seen}");
    // Within one 10 s window the budget holds 10 retries; past it the first ones have expired.
    let windows = elapsed.as_secs() as usize / 10 + 1;
    assert!(
        seen <= REQUESTS + 10 * windows,
        "{seen} tries for {REQUESTS} requests in {elapsed:?}: more than the budget's 10 retries per 10 s"
    );
}

/// Posts `body` (with a content-length) twice through a route that retries a 503 of the bad endpoint
/// onto the good one: round robin makes at least one of the two start on the bad endpoint. Every copy
/// of the body that reached either endpoint must be the one sent.
async fn assert_replayed_byte_exact(body: Bytes) {
    let retry = r#"retry = { attempts = 1, on = ["503"] }"#;
    let (proxy, bad, good) = bad_and_good(Behaviour::Status(503), retry).await;
    let client = h1_client();
    for index in 0..2 {
        let request = Request::post(proxy.url("/upload")).body(full(body.clone())).expect("a POST");
        let reply = send(&client, request).await;
        assert!(reply.is_from("good", 200), "post {index}: {reply:?}");
        assert!(reply.body == body, "post {index}: the echo differs from the {} bytes sent", body.len());
    }
    let (bad_seen, good_seen) = (bad.received(), good.received());
    assert!(!bad_seen.is_empty(), "no post started on the bad endpoint, so nothing was replayed");
    assert_eq!(good_seen.len(), 2);
    for (endpoint, received) in [("bad", &bad_seen), ("good", &good_seen)] {
        for request in received.iter() {
            let length = request.headers.get("content-length").and_then(|value| value.to_str().ok());
            assert_eq!(length, Some(body.len().to_string().as_str()), "{endpoint}: {request:?}");
            let got = request.body.as_ref().map_or(0, Bytes::len);
            assert!(
                request.body.as_ref() == Some(&body),
                "{endpoint} got a body of {got} bytes that differs from the {} bytes sent",
                body.len()
            );
        }
    }
}

#[tokio::test]
async fn a_small_post_body_is_replayed_byte_exact() {
    assert_replayed_byte_exact(Pattern::new().slice(0, 10_000)).await;
}

#[tokio::test]
async fn a_body_of_exactly_64_kib_is_still_replayed() {
    assert_replayed_byte_exact(Pattern::new().slice(0, 64 * 1024)).await;
}

/// Sends `body` once through a route that would retry the upstream's 503 twice; the request must
/// reach the upstream exactly once, whole, and the client must get that 503.
async fn assert_sent_once(body: Body, expected: Bytes) {
    let up = Chaos::start_with("svc", Behaviour::Status(503)).await;
    let retry = r#"retry = { attempts = 2, on = ["503"] }"#;
    let proxy = Proxy::start(&svc_config(&[up.addr], retry, "")).await;
    let request = Request::post(proxy.url("/upload")).body(body).expect("a POST");
    let reply = send(&h1_client(), request).await;
    assert!(reply.is_from("svc", 503), "the one try's answer: {reply:?}");
    let received = up.received();
    assert_eq!(received.len(), 1, "a body that cannot be replayed must not be retried");
    let got = received[0].body.as_ref().map_or(0, Bytes::len);
    assert!(
        received[0].body.as_ref() == Some(&expected),
        "the upstream got {got} bytes that differ from the {} sent",
        expected.len()
    );
}

#[tokio::test]
async fn a_streamed_body_is_never_retried() {
    let pattern = Pattern::new();
    // No length announced: the client sends it chunked.
    assert_sent_once(pattern.body(4096, 512, false), pattern.slice(0, 4096)).await;
}

#[tokio::test]
async fn a_body_over_64_kib_is_never_retried() {
    let body = Pattern::new().slice(0, 64 * 1024 + 1);
    assert_sent_once(full(body.clone()), body).await;
}

#[tokio::test]
async fn a_per_try_timeout_is_retried_on_another_endpoint() {
    // `on` does not list timeouts: setting per_try_timeout is what makes them retryable.
    let retry = r#"retry = { attempts = 1, per_try_timeout = "200ms", on = ["503"] }"#;
    let (proxy, slow, good) = bad_and_good(Behaviour::Delay(Duration::from_secs(2)), retry).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    for index in 0..6 {
        let started = Instant::now();
        let reply = get(&client, &url).await;
        let elapsed = started.elapsed();
        assert!(reply.is_from("good", 200), "request {index}: {reply:?}");
        assert!(
            elapsed < Duration::from_secs(1),
            "request {index} took {elapsed:?}: the 200ms per-try timeout did not cut the 2s try"
        );
    }
    assert!(slow.requests() > 0, "the slow endpoint was never tried");
    assert_eq!(good.requests(), 6);
}

#[tokio::test]
async fn the_route_timeout_bounds_the_whole_retry_sequence() {
    let up = Chaos::start_with("svc", Behaviour::Delay(Duration::from_secs(1))).await;
    let route = "timeout = \"700ms\"\n\
                 retry = { attempts = 5, per_try_timeout = \"200ms\", on = [\"5xx\"], min_retries_per_second = 100 }";
    let proxy = Proxy::start(&svc_config(&[up.addr], route, "")).await;
    let started = Instant::now();
    let reply = get(&h1_client(), &proxy.url("/orders")).await;
    let elapsed = started.elapsed();
    assert!(reply.is_error(504, "timeout"), "{reply:?}");
    // Tries of 200ms with backoffs of at most 25ms and 50ms before the second and third: at least
    // three tries fit in 700ms, and a fourth would end at the deadline.
    let tries = up.requests();
    eprintln!("504 after {elapsed:?} and {tries} tries");
    assert!(elapsed >= Duration::from_millis(600), "504 after {elapsed:?}: fewer than three 200ms tries");
    assert!(
        elapsed < Duration::from_secs(1),
        "504 after {elapsed:?}: the 700ms route timeout did not bound the retries"
    );
    assert!((3..=4).contains(&tries), "{tries} tries of 200ms in a 700ms route timeout");
}

/// An upstream that answers each client's first request (told apart by `x-client`) with 503 and
/// holds its later ones until `gate` opens, then answers 200. `seen` counts the requests.
async fn first_fails_then_held(gate: Gate, seen: watch::Sender<usize>) -> Upstream {
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = Arc::new(seen);
    Upstream::start(Proto::H1, move |request| {
        let (gate, tries, seen) = (gate.clone(), tries.clone(), seen.clone());
        async move {
            let client = request.headers().get("x-client").map(|value| value.to_str().unwrap().to_owned());
            let try_number = {
                let mut tries = tries.lock().unwrap();
                let count = tries.entry(client.unwrap_or_default()).or_default();
                *count += 1;
                *count
            };
            seen.send_modify(|count| *count += 1);
            let status = if try_number == 1 {
                http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                gate.wait().await;
                http::StatusCode::OK
            };
            let mut response = Response::new(empty());
            *response.status_mut() = status;
            response.headers_mut().insert("x-upstream", http::HeaderValue::from_static("svc"));
            response
        }
    })
    .await
}

#[tokio::test]
async fn max_retries_caps_the_retries_in_flight() {
    let gate = Gate::new();
    let (seen, _) = watch::channel(0usize);
    let mut counter = seen.subscribe();
    let up = first_fails_then_held(gate.clone(), seen).await;
    let retry = r#"retry = { attempts = 1, on = ["503"] }"#;
    let extra = "\n[clusters.svc.limits]\nmax_retries = 1\n";
    let proxy = Proxy::start(&svc_config(&[up.addr], retry, extra)).await;
    let client = h1_client();
    let request = |name: &str| {
        Request::get(proxy.url("/orders")).header("x-client", name).body(empty()).expect("a GET")
    };

    let mut held = JoinSet::new();
    {
        let (client, request) = (client.clone(), request("first"));
        held.spawn(async move { send(&client, request).await });
    }
    // The first client's retry is held at the upstream: it keeps the one retry slot.
    within("the first client's try and retry", counter.wait_for(|count| *count >= 2)).await.unwrap();
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(view["limits"]["retries"]["in_use"].as_u64(), Some(1), "{view:#}");

    let reply = send(&client, request("second")).await;
    assert!(reply.is_from("svc", 503), "no retry slot left: the second client gets its 503: {reply:?}");
    assert_eq!(*counter.borrow(), 3, "the second client's 503 must not be retried while max_retries is full");

    gate.open();
    let first = within("the held retry", held.join_next()).await.expect("a task").expect("the first client");
    assert!(first.is_from("svc", 200), "the first client's retry: {first:?}");
    let reply = send(&client, request("third")).await;
    assert!(reply.is_from("svc", 200), "the retry slot is free again: {reply:?}");
    assert_eq!(*counter.borrow(), 5);
}

#[tokio::test]
async fn every_try_counts_as_one_breaker_call() {
    let up = Chaos::start_with("svc", Behaviour::Status(503)).await;
    let retry = r#"retry = { attempts = 1, on = ["503"] }"#;
    let extra =
        "\n[clusters.svc.breaker]\nwindow = \"10s\"\nmin_calls = 4\nfailure_rate = 0.5\nopen_for = \"30s\"\n";
    let proxy = Proxy::start(&svc_config(&[up.addr], retry, extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    // Two requests of two tries each: four calls, min_calls reached at the last try.
    for index in 0..2 {
        let reply = get(&client, &url).await;
        assert!(reply.is_from("svc", 503), "request {index}: {reply:?}");
    }
    assert_eq!(up.requests(), 4);
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(view["breaker"]["state"], "open", "{view:#}");
    assert_eq!(view["breaker"]["calls"].as_u64(), Some(4), "{view:#}");
    let reply = get(&client, &url).await;
    assert!(reply.is_breaker("open"), "{reply:?}");
    assert_eq!(up.requests(), 4);
}

#[tokio::test]
async fn the_budget_grows_with_the_traffic() {
    const REQUESTS: usize = 40;
    let up = Chaos::start_with("svc", Behaviour::Status(503)).await;
    // No reserve: only half of the requests seen may be retried.
    let retry = r#"retry = { attempts = 1, on = ["503"], budget_ratio = 0.5, min_retries_per_second = 0 }"#;
    let proxy = Proxy::start(&svc_config(&[up.addr], retry, "")).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    let started = Instant::now();
    for index in 0..REQUESTS {
        let reply = get(&client, &url).await;
        assert!(reply.is_from("svc", 503), "request {index}: {reply:?}");
    }
    let (elapsed, retries) = (started.elapsed(), up.requests() - REQUESTS);
    eprintln!("{REQUESTS} requests in {elapsed:?}: {retries} retries");
    assert!(elapsed < Duration::from_secs(10), "the run outlasted the budget's 10 s window: {elapsed:?}");
    assert!(retries > 0, "a budget of 50% of {REQUESTS} requests granted no retry");
    assert!(retries <= REQUESTS / 2, "{retries} retries for {REQUESTS} requests at budget_ratio 0.5");
}

#[tokio::test]
async fn without_a_per_try_timeout_the_route_timeout_ends_the_request_unretried() {
    let up = Chaos::start_with("svc", Behaviour::Delay(Duration::from_secs(2))).await;
    let route = "timeout = \"300ms\"\nretry = { attempts = 3, on = [\"5xx\", \"gateway-error\"] }";
    let proxy = Proxy::start(&svc_config(&[up.addr], route, "")).await;
    let started = Instant::now();
    let reply = get(&h1_client(), &proxy.url("/orders")).await;
    let elapsed = started.elapsed();
    assert!(reply.is_error(504, "timeout"), "{reply:?}");
    // The upstream answers only after 2 s: a 504 before that came from the route timeout. (No tighter
    // bound: wall-clock speed on a loaded machine is not what this test checks.)
    assert!(
        elapsed < Duration::from_secs(2),
        "504 after {elapsed:?}: the 300ms route timeout did not end the wait"
    );
    assert_eq!(up.requests(), 1, "a timeout is retried only when per_try_timeout is set");
}
