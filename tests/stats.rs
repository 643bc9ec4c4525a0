//! Stats end to end: `/stats` percentiles against an upstream whose latency distribution is known,
//! counts that equal the requests sent, outcomes by kind, the interval roll-over, `/metrics` checked by
//! `promtool` and a Prometheus text parser, and the access log with W3C `traceparent`.

mod common;

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use common::*;
use http::{Request, Response};
use serde_json::Value;
use tokio::task::JoinSet;

/// An upstream that answers `/slow…` after 80 ms and everything else after 1 ms.
async fn timed_upstream() -> Upstream {
    Upstream::start(Proto::H1, |request| async move {
        let slow = request.uri().path().starts_with("/slow");
        tokio::time::sleep(Duration::from_millis(if slow { 80 } else { 1 })).await;
        Response::new(full("ok"))
    })
    .await
}

fn one_route(upstream: impl Display, stats: &str) -> String {
    config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "api"
backends = [{ cluster = "payments", weight = 1 }]

[clusters.payments]
version = "v7"
endpoints = ["{UPSTREAM}"]

[stats]
{STATS}
"#,
        &[("UPSTREAM", &upstream as &dyn Display), ("STATS", &stats)],
    )
}

/// The series of route × cluster in `/stats`.
fn series<'a>(stats: &'a Value, route: &str, cluster: &str) -> &'a Value {
    let all = stats["series"].as_array().unwrap_or_else(|| panic!("/stats has no series: {stats:#}"));
    all.iter()
        .find(|series| series["route"] == route && series["cluster"] == cluster)
        .unwrap_or_else(|| panic!("/stats has no series {route} × {cluster}: {stats:#}"))
}

fn number(value: &Value, what: &str) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

/// 500 requests, 2% of them slow (80 ms), 10 at a time.
async fn send_known_mix(proxy: &Proxy) {
    let client = h1_client();
    let mut tasks = JoinSet::new();
    for worker in 0..10 {
        let (client, base) = (client.clone(), proxy.url(""));
        tasks.spawn(async move {
            for index in 0..50 {
                let path = if index == 25 { "/slow" } else { "/fast" };
                let reply = get(&client, &format!("{base}{path}?w={worker}")).await;
                assert_eq!(reply.status, 200, "{path}: {reply:?}");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a client task panicked");
    }
}

#[tokio::test]
async fn stats_place_percentiles_where_the_latency_is_and_count_every_request() {
    let upstream = timed_upstream().await;
    let proxy = Proxy::start(&one_route(upstream.addr, "")).await;
    send_known_mix(&proxy).await;

    let stats = admin_json(&proxy, "/stats").await;
    let series = series(&stats, "api", "payments");
    assert_eq!(series["version"], "v7");
    let total = &series["since_start"];
    assert_eq!(total["requests"], 500, "{total:#}");
    assert_eq!(total["outcomes"]["success"], 500, "{total:#}");
    assert_eq!(total["status"]["2xx"], 500, "{total:#}");
    assert_eq!(total["success_rate"], 1.0);
    for latency in ["latency_ms", "headers_latency_ms"] {
        let figures = &total[latency];
        let (p50, p90, p99, max) = (
            number(&figures["p50"], "p50"),
            number(&figures["p90"], "p90"),
            number(&figures["p99"], "p99"),
            number(&figures["max"], "max"),
        );
        // 98% of the answers take ~1 ms, 2% ~80 ms: p50 and p90 fall among the fast, p99 among the slow.
        assert!((1.0..80.0).contains(&p50), "{latency} p50 {p50} ms: {figures:#}");
        assert!((1.0..80.0).contains(&p90), "{latency} p90 {p90} ms: {figures:#}");
        assert!(p99 >= 80.0, "{latency} p99 {p99} ms must be a slow answer's: {figures:#}");
        assert!(max >= p99, "{figures:#}");
    }
    assert_eq!(upstream.requests(), 500);

    // The same requests in /metrics: the histogram's count, and its buckets around 80 ms.
    let metrics = metrics(&proxy).await;
    let labels = [("route", "api"), ("cluster", "payments"), ("version", "v7")];
    assert_eq!(metrics.value("remora_request_duration_seconds_count", &labels), 500.0);
    let bucket = |le: &str| {
        let mut labels = labels.to_vec();
        labels.push(("le", le));
        metrics.value("remora_request_duration_seconds_bucket", &labels)
    };
    assert_eq!(bucket("+Inf"), 500.0);
    assert_eq!(bucket("10"), 500.0, "every answer took less than 10 s");
    assert!(bucket("0.05") <= 490.0, "the 10 slow answers (80 ms) are above 50 ms");
    assert!(bucket("0.001") == 0.0, "no answer can take less than the upstream's 1 ms");
    let sum = metrics.value("remora_request_duration_seconds_sum", &labels);
    assert!(sum >= 490.0 * 0.001 + 10.0 * 0.08, "sum {sum} s is below what the upstream slept");
    let mut success = labels.to_vec();
    success.push(("outcome", "success"));
    assert_eq!(metrics.value("remora_requests_total", &success), 500.0);
}

/// Each way a request can end is counted under its own outcome, and `/metrics` with all of them in
/// passes `promtool check metrics`.
#[tokio::test]
async fn outcomes_are_counted_by_kind_and_metrics_pass_promtool() {
    let ok = Upstream::echo("ok").await;
    let failing = Chaos::start_with("failing", Behaviour::Status(503)).await;
    let dead = dead_addr();
    let proxy = Proxy::start(&config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "ok"
match = { path_prefix = "/ok" }
backends = [{ cluster = "ok", weight = 1 }]

[[routes]]
name = "failing"
match = { path_prefix = "/failing" }
backends = [{ cluster = "failing", weight = 1 }]

[[routes]]
name = "dead"
match = { path_prefix = "/dead" }
backends = [{ cluster = "dead", weight = 1 }]

[clusters.ok]
endpoints = ["{OK}"]

[clusters.failing]
version = "v2"
endpoints = ["{FAILING}"]
[clusters.failing.breaker]
window = "10s"
min_calls = 100

[clusters.dead]
endpoints = ["{DEAD}"]
"#,
        &[("OK", &ok.addr as &dyn Display), ("FAILING", &failing.addr), ("DEAD", &dead)],
    ))
    .await;
    let client = h1_client();
    for _ in 0..3 {
        assert_eq!(get(&client, &proxy.url("/ok")).await.status, 200);
    }
    let not_found = Request::get(proxy.url("/ok/missing")).header("x-echo-status", "404").body(empty());
    assert_eq!(send(&client, not_found.expect("request")).await.status, 404);
    for _ in 0..2 {
        assert!(get(&client, &proxy.url("/failing")).await.is_from("failing", 503));
    }
    assert!(get(&client, &proxy.url("/dead")).await.is_error(502, "connect"));
    assert!(get(&client, &proxy.url("/nowhere")).await.is_error(404, "no-route"));

    let stats = admin_json(&proxy, "/stats").await;
    let counts = |route: &str, cluster: &str| series(&stats, route, cluster)["since_start"].clone();
    let ok_counts = counts("ok", "ok");
    assert_eq!(
        (ok_counts["requests"].clone(), ok_counts["outcomes"]["success"].clone()),
        (4.into(), 3.into())
    );
    assert_eq!(ok_counts["outcomes"]["client_error"], 1);
    assert_eq!(ok_counts["status"]["4xx"], 1);
    assert_eq!(ok_counts["success_rate"], 0.75);
    let failing_counts = counts("failing", "failing");
    assert_eq!(failing_counts["outcomes"]["server_error"], 2, "{failing_counts:#}");
    assert_eq!(failing_counts["status"]["5xx"], 2);
    assert_eq!(failing_counts["success_rate"], 0.0);
    let dead_counts = counts("dead", "dead");
    assert_eq!(dead_counts["outcomes"]["connect"], 1, "{dead_counts:#}");
    assert_eq!(dead_counts["status"]["5xx"], 1);
    assert_eq!(stats["unrouted"]["no_route"], 1);

    let metrics = metrics(&proxy).await;
    let requests = |route: &str, cluster: &str, version: &str, outcome: &str| {
        let labels = [("route", route), ("cluster", cluster), ("version", version), ("outcome", outcome)];
        metrics.value("remora_requests_total", &labels)
    };
    assert_eq!(requests("ok", "ok", "default", "client_error"), 1.0);
    assert_eq!(requests("failing", "failing", "v2", "server_error"), 2.0);
    assert_eq!(requests("dead", "dead", "default", "connect"), 1.0);
    assert_eq!(metrics.value("remora_unrouted_requests_total", &[("reason", "no_route")]), 1.0);
    assert_eq!(metrics.value("remora_breaker_state", &[("cluster", "failing"), ("state", "closed")]), 1.0);
    assert_eq!(metrics.value("remora_breaker_state", &[("cluster", "failing"), ("state", "open")]), 0.0);
    assert_eq!(metrics.value("remora_endpoints", &[("cluster", "ok")]), 1.0);
    assert_eq!(metrics.value("remora_ejected_endpoints", &[("cluster", "ok")]), 0.0);
    assert_eq!(metrics.value("remora_config_generation", &[]), 1.0);
    assert_eq!(metrics.value("remora_config_reloads_total", &[("result", "failed")]), 0.0);
    // The client's pooled connection is still open.
    assert!(metrics.value("remora_active_connections", &[("listener", "main")]) >= 1.0);
}

/// `last_interval` holds the last complete interval only; `since_start` keeps everything.
#[tokio::test]
async fn the_last_interval_rolls_over() {
    let upstream = timed_upstream().await;
    let proxy = Proxy::start(&one_route(upstream.addr, "interval = \"1s\"")).await;
    let client = h1_client();
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy.url("/fast")).await.status, 200);
    }
    // An interval in which the requests fell closes (on a busy machine they may straddle two), then
    // one with no requests closes after it.
    let last_with = wait_stats(&proxy, "an interval holding the requests", |series| {
        series["last_interval"]["requests"].as_u64().unwrap_or_default() > 0
    })
    .await;
    assert!(last_with["last_interval"]["requests"].as_u64() <= Some(20), "{last_with:#}");
    assert!(number(&last_with["last_interval"]["rps"], "rps") > 0.0);
    let empty =
        wait_stats(&proxy, "an interval with no requests", |series| series["last_interval"]["requests"] == 0)
            .await;
    assert_eq!(empty["since_start"]["requests"], 20);
    assert_eq!(empty["last_interval"]["latency_ms"], Value::Null, "no requests, no percentiles");
    assert_eq!(empty["last_interval"]["success_rate"], Value::Null, "no requests is neither good nor bad");
}

/// Polls `/stats` (a readiness wait, not a timing assumption) until the `api` series matches.
async fn wait_stats(proxy: &Proxy, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    within(what, async {
        loop {
            let stats = admin_json(proxy, "/stats").await;
            let series = series(&stats, "api", "payments").clone();
            if matches(&series) {
                return series;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// With `access_log = true`, every request is a JSON line on stdout, and every request leaves with a
/// valid `traceparent`: the client's when valid (with its `tracestate`), else a new one.
#[tokio::test]
async fn access_log_and_traceparent() {
    let upstream = Upstream::echo("echo").await;
    let proxy = Proxy::start(&one_route(upstream.addr, "access_log = true")).await;
    let client = h1_client();
    let send_seen = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let (client, url) = (client.clone(), proxy.url(path));
        async move {
            let mut request = Request::get(url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = within(path, client.request(request.body(empty()).expect("request")))
                .await
                .expect("a response");
            assert_eq!(response.status(), 200);
            Seen::of(&response)
        }
    };
    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let kept = send_seen("/kept", vec![("traceparent", VALID), ("tracestate", "vendor=1")]).await;
    assert_eq!(kept.header("traceparent"), Some(VALID), "a valid traceparent passes unchanged");
    assert_eq!(kept.header("tracestate"), Some("vendor=1"));

    let started = send_seen("/started", vec![]).await;
    let new_trace = started.header("traceparent").expect("a traceparent is started").to_owned();
    assert!(is_traceparent(&new_trace), "{new_trace:?} is not a valid traceparent");

    let invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    let replaced = send_seen("/replaced", vec![("traceparent", invalid), ("tracestate", "vendor=1")]).await;
    let replacement = replaced.header("traceparent").expect("an invalid traceparent is replaced");
    assert!(is_traceparent(replacement) && replacement != invalid, "{replacement:?}");
    assert_eq!(replaced.header("tracestate"), None, "tracestate goes with an invalid traceparent");
    assert_ne!(replacement, new_trace, "each new trace has its own id");

    for (path, traceparent) in [("/kept", VALID), ("/started", &new_trace), ("/replaced", replacement)] {
        let line = proxy
            .stdout_line(&format!("\"path\":\"{path}\""), |line| {
                line.contains(&format!("\"path\":\"{path}\""))
            })
            .await;
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|error| panic!("{line:?}: {error}"));
        assert_eq!(entry["traceparent"], traceparent, "{entry:#}");
        assert_eq!(entry["status"], 200);
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["outcome"], "success");
        assert_eq!(
            (&entry["route"], &entry["cluster"], &entry["version"]),
            (&"api".into(), &"payments".into(), &"v7".into())
        );
        assert_eq!(entry["client"], "127.0.0.1");
        let (headers_us, duration_us) =
            (number(&entry["headers_us"], "headers_us"), number(&entry["duration_us"], "duration_us"));
        assert!(headers_us <= duration_us, "{entry:#}");
    }
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|byte| byte != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|byte| byte != b'0')
        && hex(parts[3], 2)
}

/// `/metrics`, checked by `promtool check metrics` and parsed.
struct Metrics {
    samples: Vec<(String, HashMap<String, String>, f64)>,
    text: String,
}

impl Metrics {
    /// The value of the one sample `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: HashMap<String, String> =
            labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(sample, sample_labels, _)| sample == name && *sample_labels == wanted)
            .map(|(_, _, value)| *value)
            .collect();
        match found.as_slice() {
            [value] => *value,
            _ => panic!("{} samples {name}{labels:?} in /metrics:\n{}", found.len(), self.text),
        }
    }
}

async fn metrics(proxy: &Proxy) -> Metrics {
    let reply = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body.to_vec()).expect("UTF-8 metrics");
    promtool_check(&text);
    Metrics { samples: parse_metrics(&text), text }
}

/// `promtool check metrics` must pass without a lint (CI installs Debian's `prometheus` for it).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => panic!("cannot run promtool ({error}): `apt-get install prometheus` (CI does)"),
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

/// Every sample, parsed by a Prometheus text parser; a histogram gives `_bucket` (with `le`), `_sum`
/// and `_count` samples, as in the text.
fn parse_metrics(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    use openmetrics_parser::{MetricNumber, PrometheusValue};
    let number = |number: &MetricNumber| match number {
        MetricNumber::Int(int) => *int as f64,
        MetricNumber::Float(float) => *float,
    };
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|error| panic!("/metrics does not parse as Prometheus text: {error:?}\n{text}"));
    let mut samples = Vec::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let labelset = sample.get_labelset().expect("a sample of a family has label names");
            let labels: HashMap<String, String> =
                labelset.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
            match &sample.value {
                PrometheusValue::Counter(counter) => {
                    samples.push((name.clone(), labels, number(&counter.value)))
                }
                PrometheusValue::Gauge(gauge) => samples.push((name.clone(), labels, number(gauge))),
                PrometheusValue::Histogram(histogram) => {
                    for bucket in &histogram.buckets {
                        let mut labels = labels.clone();
                        let le = if bucket.upper_bound.is_infinite() {
                            "+Inf".to_owned()
                        } else {
                            bucket.upper_bound.to_string()
                        };
                        labels.insert("le".to_owned(), le);
                        samples.push((format!("{name}_bucket"), labels, number(&bucket.count)));
                    }
                    let sum = histogram.sum.as_ref().map(number).unwrap_or(f64::NAN);
                    samples.push((format!("{name}_sum"), labels.clone(), sum));
                    let count = histogram.count.map(|count| count as f64).unwrap_or(f64::NAN);
                    samples.push((format!("{name}_count"), labels, count));
                }
                other => panic!("unexpected sample {other:?} in {name}"),
            }
        }
    }
    samples
}
