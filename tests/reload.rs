//! Live reconfiguration end to end: the config file rewritten (watched), SIGHUP and `POST /reload`;
//! a bad config refused while the old one serves; state that survives; listeners added and removed;
//! drain on SIGTERM and `POST /drain`; and the zero-loss proof under continuous load.

mod common;

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use common::client::PooledClient;
use common::*;
use http::Request;
use nix::sys::signal::Signal;
use serde_json::Value;

/// One listener, one route `svc` over `backends` (`cluster = weight` pairs), a cluster per upstream.
fn weighted(upstreams: &[(&str, SocketAddr)], weights: &[(&str, u32)], runtime: &str) -> String {
    let backends: Vec<String> = weights
        .iter()
        .map(|(cluster, weight)| format!("{{ cluster = \"{cluster}\", weight = {weight} }}"))
        .collect();
    let clusters: String = upstreams
        .iter()
        .filter(|(name, _)| weights.iter().any(|(cluster, _)| cluster == name))
        .map(|(name, addr)| format!("[clusters.{name}]\nversion = \"{name}\"\nendpoints = [\"{addr}\"]\n"))
        .collect();
    config(
        r#"{ADMIN}
[runtime]
{RUNTIME}

{LISTENER}
[[routes]]
name = "svc"
backends = [{BACKENDS}]

{CLUSTERS}
"#,
        &[("RUNTIME", &runtime as &dyn Display), ("BACKENDS", &backends.join(", ")), ("CLUSTERS", &clusters)],
    )
}

/// Writes a config file the way editors do: a temp file renamed over the old one.
fn rewrite(proxy: &Proxy, text: &str) {
    let path = proxy.config_path();
    let temp = path.with_extension("toml.tmp");
    std::fs::write(&temp, text).expect("write temp config");
    std::fs::rename(&temp, &path).expect("rename over config");
}

async fn generation(proxy: &Proxy) -> u64 {
    admin_json(proxy, "/stats").await["generation"].as_u64().expect("a generation")
}

/// Waits (polling, bounded) until the proxy serves generation `wanted`.
async fn wait_generation(proxy: &Proxy, wanted: u64) {
    within(&format!("generation {wanted}"), async {
        while generation(proxy).await < wanted {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn post(proxy: &Proxy, path: &str) -> (u16, Value) {
    let request = Request::post(proxy.admin_url(path)).body(empty()).expect("request");
    let reply = send(&h1_client(), request).await;
    let body = serde_json::from_slice(&reply.body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&reply.body).into()));
    (reply.status, body)
}

/// Who answers `count` requests: the `x-upstream` labels, in order.
async fn answers(client: &PooledClient, url: &str, count: usize) -> Vec<String> {
    let mut labels = Vec::with_capacity(count);
    for _ in 0..count {
        let reply = get(client, url).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        labels.push(reply.upstream.unwrap_or_default());
    }
    labels
}

#[tokio::test]
async fn a_rewritten_file_is_applied_and_traffic_follows_the_new_weights() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let upstreams = [("a", a.addr), ("b", b.addr)];
    let proxy = Proxy::start(&weighted(&upstreams, &[("a", 100), ("b", 0)], "")).await;
    let (client, url) = (h1_client(), proxy.url("/"));
    assert!(answers(&client, &url, 10).await.iter().all(|label| label == "a"));

    rewrite(&proxy, &weighted(&upstreams, &[("a", 0), ("b", 100)], ""));
    wait_generation(&proxy, 2).await;
    assert!(answers(&client, &url, 10).await.iter().all(|label| label == "b"));

    // Rewriting the same content again is no change.
    rewrite(&proxy, &weighted(&upstreams, &[("a", 0), ("b", 100)], ""));
    rewrite(&proxy, &weighted(&upstreams, &[("a", 100), ("b", 0)], ""));
    wait_generation(&proxy, 3).await;
    assert!(answers(&client, &url, 10).await.iter().all(|label| label == "a"));
    assert_eq!(generation(&proxy).await, 3);
}

#[tokio::test]
async fn post_reload_and_sighup_apply_the_file_and_report_the_changes() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let upstreams = [("a", a.addr), ("b", b.addr)];
    let manual = "watch_config = false";
    let proxy = Proxy::start(&weighted(&upstreams, &[("a", 100), ("b", 0)], manual)).await;
    let (client, url) = (h1_client(), proxy.url("/"));

    std::fs::write(proxy.config_path(), weighted(&upstreams, &[("a", 0), ("b", 100)], manual))
        .expect("write");
    let (status, applied) = post(&proxy, "/reload").await;
    assert_eq!(status, 200, "{applied:#}");
    assert_eq!(applied["generation"], 2);
    let changes = applied["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{applied:#}");
    assert_eq!(changes[0]["change"], "weights_changed");
    assert!(answers(&client, &url, 10).await.iter().all(|label| label == "b"));

    std::fs::write(proxy.config_path(), weighted(&upstreams, &[("a", 100), ("b", 0)], manual))
        .expect("write");
    proxy.signal(Signal::SIGHUP);
    wait_generation(&proxy, 3).await;
    assert!(answers(&client, &url, 10).await.iter().all(|label| label == "a"));

    // Nothing changed: 200, no changes, same generation.
    let (status, applied) = post(&proxy, "/reload").await;
    assert_eq!(
        (status, applied["generation"].clone(), applied["changes"].clone()),
        (200, 3.into(), Value::Array(vec![]))
    );
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_running_one_keeps_serving() {
    let a = Upstream::echo("a").await;
    let manual = "watch_config = false";
    let proxy = Proxy::start(&weighted(&[("a", a.addr)], &[("a", 1)], manual)).await;
    let before = admin_json(&proxy, "/config").await;

    std::fs::write(
        proxy.config_path(),
        "[[listeners]]\nname = \"main\"\nlisten = \"nowhere:port\"\n[[routes]]\nbackends = [{ cluster = \"nowhere\" }]\n[clusters.a]\nendpoints = [\"127.0.0.1:1\"]\n[stats]\nbuckets_ms = [5, 1]\n",
    )
    .expect("write");
    let (status, refused) = post(&proxy, "/reload").await;
    assert_eq!(status, 400, "{refused:#}");
    let errors: Vec<&str> =
        refused["errors"].as_array().expect("errors").iter().filter_map(Value::as_str).collect();
    assert!(errors.len() >= 3, "every error is listed: {errors:?}");
    for path in ["routes[0].backends[0].cluster", "listeners[0].listen", "stats.buckets_ms[1]"] {
        assert!(errors.iter().any(|error| error.contains(path)), "no error names {path}: {errors:?}");
    }
    assert_eq!(admin_json(&proxy, "/config").await, before, "/config still shows the running configuration");
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.upstream.as_deref(), Some("a"));
    assert_eq!(generation(&proxy).await, 1);
    let metrics = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(metrics.contains("remora_config_reloads_total{result=\"failed\"} 1"), "{metrics}");
    // The refusal is in the log, with its paths.
    assert!(proxy.stderr().contains("routes[0].backends[0].cluster"), "{}", proxy.stderr());
}

/// Ejections, breaker state, pools and stats carry over a reload that keeps their keys.
#[tokio::test]
async fn state_survives_a_reload() {
    let bad = Chaos::start_with("bad", Behaviour::Status(503)).await;
    let good = Chaos::start("good").await;
    let cluster = |max_requests: u32| {
        format!(
            "balance = \"round_robin\"\n[clusters.svc.outlier]\nconsecutive_5xx = 3\nbase_ejection_time = \"300s\"\nmax_ejection_percent = 50\n[clusters.svc.limits]\nmax_requests = {max_requests}\n"
        )
    };
    // One worker: with more, a request may run on another worker's pool slot and open a connection.
    let manual = "\n[runtime]\nwatch_config = false\nworkers = 1\n";
    let text = |max_requests| svc_config(&[bad.addr, good.addr], "", &cluster(max_requests)) + manual;
    let proxy = Proxy::start(&text(100)).await;
    let client = h1_client();
    for _ in 0..8 {
        get(&client, &proxy.url("/")).await;
    }
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(endpoint_view(&view, bad.addr)["healthy"], false, "the bad endpoint is ejected: {view:#}");
    let connections = good.connections();

    // A change to the cluster (its limits) and to the route (a timeout): the ejection, the good
    // endpoint's pooled connection and the counts carry over.
    std::fs::write(proxy.config_path(), text(50).replace("[[routes]]\n", "[[routes]]\ntimeout = \"5s\"\n"))
        .expect("write");
    let (status, applied) = post(&proxy, "/reload").await;
    assert_eq!(status, 200, "{applied:#}");
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(endpoint_view(&view, bad.addr)["healthy"], false, "the ejection survived: {view:#}");
    assert_eq!(view["limits"]["requests"]["max"], 50, "the new limit applies: {view:#}");
    for _ in 0..5 {
        assert!(get(&client, &proxy.url("/")).await.is_from("good", 200));
    }
    assert_eq!(good.connections(), connections, "the pooled upstream connection was kept");
    let stats = admin_json(&proxy, "/stats").await;
    assert_eq!(stats["series"][0]["since_start"]["requests"], 13, "the counts carried over: {stats:#}");
}

#[tokio::test]
async fn listeners_are_added_and_removed_live() {
    let a = Upstream::echo("a").await;
    let manual = "watch_config = false";
    let base = weighted(&[("a", a.addr)], &[("a", 1)], manual);
    let proxy = Proxy::start(&base).await;
    let second = base
        .replace("[[routes]]", "[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\n\n[[routes]]");
    std::fs::write(proxy.config_path(), &second).expect("write");
    let (status, applied) = post(&proxy, "/reload").await;
    assert_eq!(status, 200, "{applied:#}");
    let listeners = admin_json(&proxy, "/listeners").await;
    let addr: SocketAddr = listeners["second"].as_str().expect("second listener").parse().expect("address");
    let client = h1_client();
    assert_eq!(get(&client, &format!("http://{addr}/")).await.upstream.as_deref(), Some("a"));
    assert_eq!(get(&client, &proxy.url("/")).await.upstream.as_deref(), Some("a"));

    // Removed: a request in flight on it finishes, then the port refuses connections.
    let gate = Gate::new();
    let held = Chaos::start_with("held", Behaviour::Hold(gate.clone())).await;
    let hold_config = |text: &str| text.replace(&a.addr.to_string(), &held.addr.to_string());
    std::fs::write(proxy.config_path(), hold_config(&second)).expect("write");
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { get(&client, &format!("http://{addr}/")).await }
    });
    held.wait_requests(1).await;
    std::fs::write(proxy.config_path(), hold_config(&base)).expect("write");
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    assert!(admin_json(&proxy, "/listeners").await.get("second").is_none());
    gate.open();
    let reply = within("the in-flight request", in_flight).await.expect("task");
    assert!(reply.is_from("held", 200), "{reply:?}");
    within("the removed port to refuse", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// SIGTERM and `POST /drain`: `/ready` turns 503 at once, listeners keep accepting for the drain
/// delay, then the process exits 0.
#[tokio::test]
async fn drain_keeps_accepting_for_the_delay_then_exits() {
    for how in ["SIGTERM", "POST /drain"] {
        let a = Upstream::echo("a").await;
        let mut proxy = Proxy::start(&weighted(&[("a", a.addr)], &[("a", 1)], "drain_delay = \"2s\"")).await;
        match how {
            "SIGTERM" => proxy.signal(Signal::SIGTERM),
            _ => assert_eq!(post(&proxy, "/drain").await.0, 202),
        }
        within("/ready to turn 503", async {
            while get(&h1_client(), &proxy.admin_url("/ready")).await.status != 503 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        // A new connection during the delay is still served.
        let reply = get(&h1_client(), &proxy.url("/")).await;
        assert!(reply.is_from("a", 200), "{how}: {reply:?}");
        let status = proxy.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{how}: exit {status:?}");
    }
}

/// The zero-loss proof: continuous load at concurrency 32 while the file is rewritten 60 times
/// (100/0 ↔ 0/100 ↔ 50/50, a cluster added and removed); no request fails, and after each change the
/// traffic follows the new weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_while_the_config_is_rewritten_under_load() {
    const REWRITES: usize = 60;
    const MIN_REQUESTS: usize = 20_000;
    let (a, b, c) = (Upstream::echo("a").await, Upstream::echo("b").await, Upstream::echo("c").await);
    let upstreams = [("a", a.addr), ("b", b.addr), ("c", c.addr)];
    let variants: [&[(&str, u32)]; 4] =
        [&[("a", 100), ("b", 0)], &[("a", 0), ("b", 100)], &[("a", 50), ("b", 50)], &[("a", 50), ("c", 50)]];
    let proxy = Proxy::start(&weighted(&upstreams, variants[0], "")).await;
    let url = proxy.url("/load");

    let load = common::load::Load::start(&url, 32);

    let probe = h1_client();
    for rewrite_index in 1..=REWRITES {
        let weights = variants[rewrite_index % variants.len()];
        rewrite(&proxy, &weighted(&upstreams, weights, ""));
        wait_generation(&proxy, rewrite_index as u64 + 1).await;
        let seen = answers(&probe, &proxy.url("/probe"), 20).await;
        for (cluster, weight) in weights {
            let count = seen.iter().filter(|label| label == cluster).count();
            match weight {
                0 => assert_eq!(
                    count, 0,
                    "rewrite {rewrite_index}: {weights:?} but {cluster} answered: {seen:?}"
                ),
                100 => assert_eq!(count, 20, "rewrite {rewrite_index}: {weights:?}: {seen:?}"),
                _ => assert!(
                    count > 0,
                    "rewrite {rewrite_index}: {weights:?} but {cluster} never answered: {seen:?}"
                ),
            }
        }
        assert!(seen.iter().all(|label| weights.iter().any(|(cluster, _)| cluster == label)), "{seen:?}");
    }
    load.wait_sent(MIN_REQUESTS).await;
    let (sent, failed) = load.stop().await;
    assert!(sent >= MIN_REQUESTS, "{sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed across {REWRITES} reloads");
    assert_eq!(generation(&proxy).await, REWRITES as u64 + 1);
}
