//! Weighted traffic split: a 90/10 canary cut holds within binomial noise, and weight 0 gets nothing.

mod common;

use std::collections::HashMap;

use common::*;
use http::{Request, StatusCode};

const REQUESTS: usize = 10_000;
const TASKS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_holds_and_weight_0_gets_nothing() {
    let stable = Upstream::echo("v1").await;
    let canary = Upstream::echo("v2").await;
    let drained = Upstream::echo("v3").await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "canary"
listener = "main"
match = { path_prefix = "/" }
backends = [
  { cluster = "stable", weight = 90 },
  { cluster = "canary", weight = 10 },
  { cluster = "drained", weight = 0 },
]

[clusters.stable]
version = "v1"
endpoints = ["{STABLE}"]

[clusters.canary]
version = "v2"
endpoints = ["{CANARY}"]

[clusters.drained]
version = "v3"
endpoints = ["{DRAINED}"]
"#,
        &[("STABLE", &stable.addr), ("CANARY", &canary.addr), ("DRAINED", &drained.addr)],
    );
    let proxy = Proxy::start(&text).await;
    let client = h1_client();
    let url = proxy.url("/split");

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for index in (task..REQUESTS).step_by(TASKS) {
                let request = Request::get(&url).body(empty()).unwrap();
                let response = within(&format!("request {index}"), client.request(request))
                    .await
                    .unwrap_or_else(|error| panic!("request {index}: {error}"));
                assert_eq!(response.status(), StatusCode::OK, "request {index}: {:?}", response.headers());
                let label = match response.headers().get("x-upstream") {
                    Some(label) => label.to_str().unwrap().to_owned(),
                    None => {
                        panic!("request {index} was not answered by an upstream: {:?}", response.headers())
                    }
                };
                read_body("split body", response.into_body()).await;
                *counts.entry(label).or_default() += 1;
            }
            counts
        });
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for partial in within_for(std::time::Duration::from_secs(300), "10,000 requests", tasks.join_all()).await
    {
        for (label, count) in partial {
            *counts.entry(label).or_default() += count;
        }
    }
    eprintln!("split over {REQUESTS} requests: {counts:?}");

    let count = |label: &str| counts.get(label).copied().unwrap_or(0);
    assert_eq!(
        count("v1") + count("v2") + count("v3"),
        REQUESTS,
        "answers from unknown upstreams: {counts:?}"
    );
    assert_eq!(count("v3"), 0, "the weight-0 backend got requests: {counts:?}");
    assert_eq!(drained.requests(), 0, "the weight-0 upstream was sent requests");

    // The canary's count is binomial(n, 0.1); ±5 standard deviations fails a correct split about
    // once in 1.7 million runs, and still catches a 90/10 cut that is really 87/13.
    let n = REQUESTS as f64;
    let p = 0.10;
    let expected = n * p;
    let sigma = (n * p * (1.0 - p)).sqrt();
    let canary_count = count("v2") as f64;
    assert!(
        (canary_count - expected).abs() <= 5.0 * sigma,
        "the 10% backend got {canary_count} of {REQUESTS} requests; expected {expected} ± {:.0} (5σ): {counts:?}",
        5.0 * sigma
    );
}

/// Equal weights over two clusters, through h2c this time: both halves within 5σ of n/2.
#[tokio::test]
async fn equal_weights_split_evenly_over_h2c() {
    let left = Upstream::echo("left").await;
    let right = Upstream::echo("right").await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "halves"
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "left", weight = 1 }, { cluster = "right", weight = 1 }]

[clusters.left]
endpoints = ["{LEFT}"]

[clusters.right]
endpoints = ["{RIGHT}"]
"#,
        &[("LEFT", &left.addr), ("RIGHT", &right.addr)],
    );
    let proxy = Proxy::start(&text).await;
    let conn = H2Conn::connect(proxy.addr()).await;
    const N: usize = 2_000;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..N {
        let conn = conn.clone();
        tasks.spawn(async move {
            let response = conn
                .send(Request::get("http://split.example.test/h2").body(empty()).unwrap())
                .await
                .unwrap_or_else(|error| panic!("h2 request {index}: {error}"));
            assert_eq!(response.status(), StatusCode::OK, "h2 request {index}");
            read_body("h2 split body", response.into_body()).await;
        });
        // At most 32 streams in flight.
        if tasks.len() >= 32 {
            within("h2 requests", tasks.join_next()).await.unwrap().unwrap();
        }
    }
    within("the last h2 requests", tasks.join_all()).await;
    let (left_count, right_count) = (left.requests(), right.requests());
    assert_eq!(left_count + right_count, N, "every request reached exactly one upstream");
    let sigma = (N as f64 * 0.25).sqrt();
    assert!(
        (left_count as f64 - N as f64 / 2.0).abs() <= 5.0 * sigma,
        "equal weights: left got {left_count}, right got {right_count} of {N}"
    );
}
