//! The cluster guards end to end: the circuit breaker (open and fail fast, time and count windows,
//! slow calls, half-open probes, re-opening for a doubled time), outlier ejection (traffic moves off a
//! bad endpoint and comes back, longer repeat ejections, `max_ejection_percent`, panic mode, everything
//! ejected), concurrency limits (`max_requests` under concurrent load, `max_connections`), and canary
//! weights that stay exact when the canary's breaker opens. The upstreams are [`Chaos`] servers that
//! the tests turn bad and good again while the proxy runs.
//!
//! Outlier tests balance round robin, so which endpoint gets the next request is known; the default
//! balancer's choice is tested for retries in `retries.rs`.
//!
//! Sleeps appear only where configured time must pass (`open_for`, `base_ejection_time`); each says
//! so. Readiness is awaited on counters and responses, never on time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::client::PooledClient;
use common::*;
use serde_json::Value;
use tokio::task::JoinSet;

/// A breaker section for cluster `svc`, with a `window = "10s"` time window unless `extra` sets
/// `window_calls`.
fn breaker(extra: &str) -> String {
    let window = if extra.contains("window_calls") { "" } else { "window = \"10s\"\n" };
    format!("\n[clusters.svc.breaker]\n{window}{extra}\n")
}

fn state(view: &Value) -> &str {
    view["breaker"]["state"].as_str().unwrap_or_else(|| panic!("no breaker state in {view:#}"))
}

/// Sends `count` requests one after the other, each of which must reach the upstream `label` and
/// come back with `status`.
async fn expect_upstream(client: &PooledClient, url: &str, label: &str, status: u16, count: usize) {
    for index in 0..count {
        let reply = get(client, url).await;
        assert!(reply.is_from(label, status), "request {index}: expected {status} from {label}: {reply:?}");
    }
}

/// Sends `count` requests one after the other, each of which the proxy must refuse itself with 503
/// `x-remora-breaker: CAUSE`.
async fn expect_refused(client: &PooledClient, url: &str, cause: &str, count: usize) {
    for index in 0..count {
        let reply = get(client, url).await;
        assert!(reply.is_breaker(cause), "request {index}: expected 503 {cause}: {reply:?}");
    }
}

#[tokio::test]
async fn breaker_opens_at_the_threshold_then_fails_fast_without_touching_the_upstream() {
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let extra = breaker("min_calls = 5\nfailure_rate = 0.5\nopen_for = \"30s\"");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    // Below min_calls nothing is decided, however bad: all five reach the upstream.
    expect_upstream(&client, &url, "svc", 500, 5).await;
    assert_eq!(state(&cluster_view(&proxy, "svc").await), "open", "5 of 5 calls failed, min_calls = 5");

    expect_refused(&client, &url, "open", 20).await;
    assert_eq!(up.requests(), 5, "an open breaker must not contact the upstream");

    let view = cluster_view(&proxy, "svc").await;
    let breaker = &view["breaker"];
    assert_eq!((breaker["calls"].as_u64(), breaker["failures"].as_u64()), (Some(5), Some(5)), "{view:#}");
    assert_eq!(breaker["failure_rate"].as_f64(), Some(1.0), "{view:#}");
    assert_eq!(breaker["reopenings"].as_u64(), Some(0), "{view:#}");
    let remaining = breaker["open_remaining_ms"].as_u64().unwrap_or_else(|| panic!("{view:#}"));
    assert!(remaining > 0 && remaining <= 30_000, "open_remaining_ms {remaining} for open_for 30s");

    let events = events_of(&proxy, "svc").await;
    assert_eq!(event_names(&events), ["breaker_opened"], "{events:#?}");
    assert_eq!(events[0]["open_for_ms"].as_u64(), Some(30_000), "{events:#?}");
}

#[tokio::test]
async fn connection_resets_count_as_breaker_failures() {
    let up = Chaos::start_with("svc", Behaviour::Reset).await;
    let extra = breaker("min_calls = 3\nfailure_rate = 0.5\nopen_for = \"30s\"");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/reset"));
    for index in 0..3 {
        let reply = get(&client, &url).await;
        assert!(reply.is_error(502, "upstream-reset"), "reset {index}: {reply:?}");
    }
    expect_refused(&client, &url, "open", 5).await;
    assert_eq!(up.requests(), 3, "an open breaker must not contact the upstream");
}

#[tokio::test]
async fn a_count_window_judges_only_the_last_calls() {
    let up = Chaos::start("svc").await;
    let extra = breaker("window_calls = 4\nmin_calls = 4\nfailure_rate = 0.5\nopen_for = \"30s\"");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    expect_upstream(&client, &url, "svc", 200, 10).await;
    up.set(Behaviour::Status(500));
    // The last 4 calls: 3 ok and 1 failed (25%), then 2 and 2 (50%): open. Over all 12 calls it
    // would be 17%.
    expect_upstream(&client, &url, "svc", 500, 2).await;
    expect_refused(&client, &url, "open", 3).await;
    assert_eq!(up.requests(), 12);
    let view = cluster_view(&proxy, "svc").await;
    let breaker = &view["breaker"];
    assert_eq!((breaker["calls"].as_u64(), breaker["failures"].as_u64()), (Some(4), Some(2)), "{view:#}");
}

#[tokio::test]
async fn slow_calls_trip_the_breaker() {
    let up = Chaos::start_with("svc", Behaviour::Delay(Duration::from_millis(250))).await;
    // Failures alone could never trip it (none happen, and the rate needed is 100%).
    let extra = breaker(
        "window_calls = 10\nmin_calls = 4\nfailure_rate = 1.0\nslow_call_rate = 0.5\n\
         slow_call_duration = \"100ms\"\nopen_for = \"30s\"",
    );
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/slow"));

    expect_upstream(&client, &url, "svc", 200, 4).await;
    expect_refused(&client, &url, "open", 5).await;
    assert_eq!(up.requests(), 4, "an open breaker must not contact the upstream");
    let view = cluster_view(&proxy, "svc").await;
    let breaker = &view["breaker"];
    assert_eq!((breaker["slow"].as_u64(), breaker["failures"].as_u64()), (Some(4), Some(0)), "{view:#}");
    assert_eq!(breaker["slow_call_rate"].as_f64(), Some(1.0), "{view:#}");
    assert_eq!(event_names(&events_of(&proxy, "svc").await), ["breaker_opened"]);
}

const PROBE_OPEN_FOR: Duration = Duration::from_millis(300);

#[tokio::test]
async fn half_open_probes_close_the_breaker_once_the_upstream_recovered() {
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let extra = breaker("min_calls = 5\nfailure_rate = 0.5\nopen_for = \"300ms\"\nhalf_open_calls = 2");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    expect_upstream(&client, &url, "svc", 500, 5).await;
    expect_refused(&client, &url, "open", 1).await;
    up.set(Behaviour::Ok);
    // Let open_for (300ms) pass; the margin covers timer granularity.
    tokio::time::sleep(PROBE_OPEN_FOR + Duration::from_millis(100)).await;

    expect_upstream(&client, &url, "svc", 200, 1).await;
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(state(&view), "half_open", "one probe of two done: {view:#}");
    expect_upstream(&client, &url, "svc", 200, 1).await;
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(state(&view), "closed", "both probes passed: {view:#}");

    expect_upstream(&client, &url, "svc", 200, 10).await;
    assert_eq!(up.requests(), 5 + 2 + 10);
    let events = events_of(&proxy, "svc").await;
    assert_eq!(
        event_names(&events),
        ["breaker_opened", "breaker_half_open", "breaker_closed"],
        "{events:#?}"
    );
    let times: Vec<u64> = events.iter().map(|event| event["at_ms"].as_u64().expect("at_ms")).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "events are listed oldest first: {events:#?}");
}

#[tokio::test]
async fn half_open_admits_exactly_half_open_calls_probes() {
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let extra = breaker("min_calls = 5\nfailure_rate = 0.5\nopen_for = \"300ms\"\nhalf_open_calls = 2");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    expect_upstream(&client, &url, "svc", 500, 5).await;
    let gate = Gate::new();
    up.set(Behaviour::Hold(gate.clone()));
    // Let open_for (300ms) pass.
    tokio::time::sleep(PROBE_OPEN_FOR + Duration::from_millis(100)).await;

    let mut probes = JoinSet::new();
    for probe in 1..=2 {
        let (client, url) = (client.clone(), url.clone());
        probes.spawn(async move { get(&client, &url).await });
        up.wait_requests(5 + probe).await;
    }
    // Both probes are out (held at the upstream): the round is full.
    expect_refused(&client, &url, "open", 5).await;
    assert_eq!(state(&cluster_view(&proxy, "svc").await), "half_open");
    assert_eq!(up.requests(), 7, "only half_open_calls = 2 probes may reach the upstream");

    gate.open();
    for reply in within("the two probes", probes.join_all()).await {
        assert!(reply.is_from("svc", 200), "probe: {reply:?}");
    }
    assert_eq!(state(&cluster_view(&proxy, "svc").await), "closed");
    expect_upstream(&client, &url, "svc", 200, 3).await;
}

#[tokio::test]
async fn a_half_open_round_reaching_the_failure_rate_reopens_the_breaker() {
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let extra = breaker("min_calls = 5\nfailure_rate = 0.5\nopen_for = \"300ms\"\nhalf_open_calls = 2");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    expect_upstream(&client, &url, "svc", 500, 5).await;
    // Let open_for (300ms) pass.
    tokio::time::sleep(PROBE_OPEN_FOR + Duration::from_millis(100)).await;
    // One probe passes and one fails: 50% is not below failure_rate = 0.5.
    up.set(Behaviour::Ok);
    expect_upstream(&client, &url, "svc", 200, 1).await;
    up.set(Behaviour::Status(500));
    expect_upstream(&client, &url, "svc", 500, 1).await;
    expect_refused(&client, &url, "open", 3).await;
    assert_eq!(up.requests(), 7);
    let events = events_of(&proxy, "svc").await;
    assert_eq!(
        event_names(&events),
        ["breaker_opened", "breaker_half_open", "breaker_opened"],
        "{events:#?}"
    );
}

#[tokio::test]
async fn failing_probes_reopen_the_breaker_for_twice_as_long_up_to_the_cap() {
    const OPEN_FOR: Duration = Duration::from_millis(400);
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let extra = breaker(
        "min_calls = 5\nfailure_rate = 0.5\nopen_for = \"400ms\"\nmax_open_for = \"1s\"\nhalf_open_calls = 2",
    );
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    expect_upstream(&client, &url, "svc", 500, 5).await;
    // Let the first open time (400ms) pass; the probes fail as the upstream still does.
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(100)).await;
    expect_upstream(&client, &url, "svc", 500, 2).await;
    expect_refused(&client, &url, "open", 3).await;
    let view = cluster_view(&proxy, "svc").await;
    let breaker = &view["breaker"];
    assert_eq!(state(&view), "open", "{view:#}");
    assert_eq!(breaker["reopenings"].as_u64(), Some(1), "{view:#}");
    let remaining = breaker["open_remaining_ms"].as_u64().unwrap_or_else(|| panic!("{view:#}"));
    assert!(
        remaining > OPEN_FOR.as_millis() as u64 && remaining <= 800,
        "re-opened for {remaining}ms more; expected up to 2 × 400ms, and more than the first 400ms"
    );
    assert_eq!(up.requests(), 7, "a re-opened breaker must not contact the upstream");

    // Let the second open time (800ms) pass; the second round of probes fails too.
    tokio::time::sleep(Duration::from_millis(remaining + 100)).await;
    expect_upstream(&client, &url, "svc", 500, 2).await;
    expect_refused(&client, &url, "open", 3).await;
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(view["breaker"]["reopenings"].as_u64(), Some(2), "{view:#}");

    let events = events_of(&proxy, "svc").await;
    assert_eq!(
        event_names(&events),
        ["breaker_opened", "breaker_half_open", "breaker_opened", "breaker_half_open", "breaker_opened"],
        "{events:#?}"
    );
    let open_times: Vec<Option<u64>> = events
        .iter()
        .filter(|event| event["event"] == "breaker_opened")
        .map(|event| event["open_for_ms"].as_u64())
        .collect();
    assert_eq!(open_times, [Some(400), Some(800), Some(1000)], "open_for doubles, capped at max_open_for");
}

#[tokio::test]
async fn a_closed_breaker_starts_from_a_fresh_window() {
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let extra = breaker("min_calls = 5\nfailure_rate = 0.5\nopen_for = \"300ms\"\nhalf_open_calls = 1");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    expect_upstream(&client, &url, "svc", 500, 5).await;
    up.set(Behaviour::Ok);
    // Let open_for (300ms) pass.
    tokio::time::sleep(PROBE_OPEN_FOR + Duration::from_millis(100)).await;
    expect_upstream(&client, &url, "svc", 200, 1).await;
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(state(&view), "closed", "{view:#}");
    assert_eq!(view["breaker"]["calls"].as_u64(), Some(0), "the window starts empty: {view:#}");

    // The 5 failures from before are gone: again min_calls = 5 fresh failures are needed.
    up.set(Behaviour::Status(500));
    expect_upstream(&client, &url, "svc", 500, 5).await;
    expect_refused(&client, &url, "open", 1).await;
}

/// Sends requests (round robin over `bad` and `good`) until `bad` has received `failures` in all;
/// returns when the last of them was sent and when its answer came back.
async fn eject_by_round_robin(
    client: &PooledClient,
    url: &str,
    bad: &Chaos,
    failures: usize,
) -> (tokio::time::Instant, tokio::time::Instant) {
    for index in 0.. {
        assert!(index < 20, "the bad endpoint got only {} of {index} requests", bad.requests());
        let sent = tokio::time::Instant::now();
        let reply = get(client, url).await;
        let answered = tokio::time::Instant::now();
        assert!(reply.is_from("bad", 500) || reply.is_from("good", 200), "{reply:?}");
        if bad.requests() == failures {
            return (sent, answered);
        }
    }
    unreachable!()
}

/// Two endpoints, `bad` and `good`, round robin.
async fn two_endpoints(bad: Behaviour, outlier: &str) -> (Proxy, Chaos, Chaos) {
    let bad = Chaos::start_with("bad", bad).await;
    let good = Chaos::start("good").await;
    let extra = format!("balance = \"round_robin\"\n\n[clusters.svc.outlier]\n{outlier}\n");
    let proxy = Proxy::start(&svc_config(&[bad.addr, good.addr], "", &extra)).await;
    (proxy, bad, good)
}

#[tokio::test]
async fn outlier_ejection_moves_traffic_off_a_bad_endpoint_and_back_after_the_ejection_time() {
    const EJECTION: Duration = Duration::from_millis(500);
    let (proxy, bad, good) = two_endpoints(
        Behaviour::Status(500),
        "consecutive_5xx = 3\nbase_ejection_time = \"500ms\"\nmax_ejection_percent = 50\nmin_healthy_percent = 50",
    )
    .await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    // Round robin until the bad endpoint has failed 3 times in a row. The ejection starts while the
    // third failure is handled, between that request's sending and its answer, so it lasts at least
    // until `sent` + 500ms and at most until `answered` + 500ms.
    let (sent, answered) = eject_by_round_robin(&client, &url, &bad, 3).await;
    let ejected_until = sent + EJECTION;

    let view = cluster_view(&proxy, "svc").await;
    let bad_view = endpoint_view(&view, bad.addr);
    assert_eq!(bad_view["healthy"], false, "3 consecutive 5xx: {view:#}");
    assert_eq!(bad_view["ejections"].as_u64(), Some(1), "{view:#}");
    let remaining = bad_view["ejected_remaining_ms"].as_u64().unwrap_or_else(|| panic!("{view:#}"));
    assert!(remaining > 0 && remaining <= 500, "ejected_remaining_ms {remaining} for 500ms: {view:#}");
    assert_eq!(endpoint_view(&view, good.addr)["healthy"], true, "{view:#}");

    let mut checked = 0;
    for index in 0..10 {
        let reply = get(&client, &url).await;
        if tokio::time::Instant::now() >= ejected_until {
            break; // the ejection may be over: what follows proves nothing
        }
        assert!(reply.is_from("good", 200), "request {index} while `bad` is ejected: {reply:?}");
        checked += 1;
    }
    assert!(checked > 0, "no request completed within the 500ms ejection: the machine is far too slow");
    assert_eq!(bad.requests(), 3, "an ejected endpoint must get no traffic");

    bad.set(Behaviour::Ok);
    // Let base_ejection_time pass: the ejection is over 500ms after the third failure's answer.
    tokio::time::sleep_until(answered + EJECTION + Duration::from_millis(50)).await;
    for index in 0.. {
        assert!(index < 4, "round robin over two endpoints never came back to the restored one");
        if get(&client, &url).await.is_from("bad", 200) {
            break;
        }
    }
    let events = events_of(&proxy, "svc").await;
    assert_eq!(event_names(&events), ["endpoint_ejected", "endpoint_restored"], "{events:#?}");
    let address = bad.addr.to_string();
    assert_eq!(events[0]["endpoint"], address.as_str(), "{events:#?}");
    assert_eq!(events[0]["ejected_for_ms"].as_u64(), Some(500), "{events:#?}");
    assert_eq!(events[0]["ejections"].as_u64(), Some(1), "{events:#?}");
    assert_eq!(events[1]["endpoint"], address.as_str(), "{events:#?}");
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(endpoint_view(&view, bad.addr)["healthy"], true, "{view:#}");
}

#[tokio::test]
async fn repeated_ejections_last_longer_up_to_max_ejection_time() {
    const EJECTION: Duration = Duration::from_millis(300);
    let (proxy, bad, _good) = two_endpoints(
        Behaviour::Status(500),
        "consecutive_5xx = 2\nbase_ejection_time = \"300ms\"\nmax_ejection_time = \"500ms\"\n\
         max_ejection_percent = 50",
    )
    .await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    let (_, answered) = eject_by_round_robin(&client, &url, &bad, 2).await;
    // Let the first ejection (300ms) pass; the endpoint comes back still failing and is ejected again
    // well within a base ejection time of its return, so the ejections count as consecutive.
    tokio::time::sleep_until(answered + EJECTION + Duration::from_millis(50)).await;
    eject_by_round_robin(&client, &url, &bad, 4).await;

    let events = events_of(&proxy, "svc").await;
    assert_eq!(
        event_names(&events),
        ["endpoint_ejected", "endpoint_restored", "endpoint_ejected"],
        "{events:#?}"
    );
    let ejections: Vec<(Option<u64>, Option<u64>)> = events
        .iter()
        .filter(|event| event["event"] == "endpoint_ejected")
        .map(|event| (event["ejected_for_ms"].as_u64(), event["ejections"].as_u64()))
        .collect();
    assert_eq!(
        ejections,
        [(Some(300), Some(1)), (Some(500), Some(2))],
        "base × consecutive ejections (300ms, then 600ms), capped at max_ejection_time 500ms"
    );
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(endpoint_view(&view, bad.addr)["ejections"].as_u64(), Some(2), "{view:#}");
}

#[tokio::test]
async fn connect_failures_count_as_gateway_errors_and_eject_the_endpoint() {
    let good = Chaos::start("good").await;
    let dead = dead_addr();
    let extra = "balance = \"round_robin\"\n\n[clusters.svc.outlier]\nconsecutive_5xx = 0\n\
                 consecutive_gateway_errors = 2\nbase_ejection_time = \"30s\"\nmax_ejection_percent = 50\n";
    let proxy = Proxy::start(&svc_config(&[dead, good.addr], "", extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    let mut refused = 0;
    for index in 0.. {
        assert!(index < 10, "only {refused} connect failures in {index} requests");
        let reply = get(&client, &url).await;
        if reply.is_error(502, "connect") {
            refused += 1;
        } else {
            assert!(reply.is_from("good", 200), "{reply:?}");
        }
        if refused == 2 {
            break;
        }
    }
    let served = good.requests();
    // Base ejection time is 30s: the dead endpoint stays out for the rest of the test.
    expect_upstream(&client, &url, "good", 200, 10).await;
    assert_eq!(good.requests(), served + 10);
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(endpoint_view(&view, dead)["healthy"], false, "{view:#}");
    let events = events_of(&proxy, "svc").await;
    assert_eq!(event_names(&events), ["endpoint_ejected"], "{events:#?}");
    assert_eq!(events[0]["endpoint"], dead.to_string().as_str(), "{events:#?}");
}

#[tokio::test]
async fn max_ejection_percent_lets_one_endpoint_go_and_no_more() {
    let a = Chaos::start_with("a", Behaviour::Status(500)).await;
    let b = Chaos::start_with("b", Behaviour::Status(500)).await;
    // 10% of two endpoints: none is out yet, so one may go; then 50% are out, so no other.
    let extra = "balance = \"round_robin\"\n\n[clusters.svc.outlier]\nconsecutive_5xx = 2\n\
                 base_ejection_time = \"30s\"\nmax_ejection_percent = 10\nmin_healthy_percent = 50\n";
    let proxy = Proxy::start(&svc_config(&[a.addr, b.addr], "", extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    for index in 0..20 {
        let reply = get(&client, &url).await;
        assert!(reply.is_from("a", 500) || reply.is_from("b", 500), "request {index}: {reply:?}");
    }
    let view = cluster_view(&proxy, "svc").await;
    let unhealthy: Vec<&Value> =
        view["endpoints"].as_array().expect("endpoints").iter().filter(|e| e["healthy"] == false).collect();
    assert_eq!(unhealthy.len(), 1, "exactly one of two endpoints may be ejected at 10%: {view:#}");
    let events = events_of(&proxy, "svc").await;
    assert_eq!(event_names(&events), ["endpoint_ejected"], "{events:#?}");
    // The one left serves everything (50% healthy is not below min_healthy_percent = 50).
    let ejected = if endpoint_view(&view, a.addr)["healthy"] == false { &a } else { &b };
    let served = ejected.requests();
    for index in 0..10 {
        let reply = get(&client, &url).await;
        assert!(reply.is_from("a", 500) || reply.is_from("b", 500), "request {index}: {reply:?}");
    }
    assert_eq!(ejected.requests(), served, "the ejected endpoint got traffic outside panic mode");
}

#[tokio::test]
async fn max_ejection_percent_0_ejects_nothing() {
    let up = Chaos::start_with("svc", Behaviour::Status(500)).await;
    let extra = "\n[clusters.svc.outlier]\nconsecutive_5xx = 2\nbase_ejection_time = \"30s\"\n\
                 max_ejection_percent = 0\nmin_healthy_percent = 0\n";
    let proxy = Proxy::start(&svc_config(&[up.addr], "", extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));
    expect_upstream(&client, &url, "svc", 500, 10).await;
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(endpoint_view(&view, up.addr)["healthy"], true, "{view:#}");
    assert_eq!(event_names(&events_of(&proxy, "svc").await), Vec::<&str>::new());
}

#[tokio::test]
async fn panic_mode_keeps_every_endpoint_serving_when_too_few_are_healthy() {
    let a = Chaos::start_with("a", Behaviour::Status(500)).await;
    let b = Chaos::start_with("b", Behaviour::Status(500)).await;
    let extra = "balance = \"round_robin\"\n\n[clusters.svc.outlier]\nconsecutive_5xx = 2\n\
                 base_ejection_time = \"30s\"\nmax_ejection_percent = 100\nmin_healthy_percent = 100\n";
    let proxy = Proxy::start(&svc_config(&[a.addr, b.addr], "", extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    for index in 0..10 {
        let reply = get(&client, &url).await;
        assert!(reply.is_from("a", 500) || reply.is_from("b", 500), "request {index}: {reply:?}");
    }
    let view = cluster_view(&proxy, "svc").await;
    let endpoints = view["endpoints"].as_array().expect("endpoints");
    assert!(
        endpoints.iter().any(|endpoint| endpoint["healthy"] == false),
        "no endpoint was ejected after 10 failures (consecutive_5xx = 2): {view:#}"
    );

    // Panic mode: below min_healthy_percent, ejected endpoints serve as before.
    let (a_before, b_before) = (a.requests(), b.requests());
    for index in 0..10 {
        let reply = get(&client, &url).await;
        assert!(
            reply.is_from("a", 500) || reply.is_from("b", 500),
            "request {index} in panic mode: {reply:?}"
        );
    }
    assert_eq!(a.requests() + b.requests(), a_before + b_before + 10, "every request reached an upstream");
    assert!(
        a.requests() > a_before && b.requests() > b_before,
        "panic mode must use both endpoints: a {a_before} → {}, b {b_before} → {}",
        a.requests(),
        b.requests()
    );
}

#[tokio::test]
async fn every_endpoint_ejected_without_panic_mode_is_503_ejected() {
    let a = Chaos::start_with("a", Behaviour::Status(500)).await;
    let b = Chaos::start_with("b", Behaviour::Status(500)).await;
    let extra = "balance = \"round_robin\"\n\n[clusters.svc.outlier]\nconsecutive_5xx = 2\n\
                 base_ejection_time = \"30s\"\nmax_ejection_percent = 100\nmin_healthy_percent = 0\n";
    let proxy = Proxy::start(&svc_config(&[a.addr, b.addr], "", extra)).await;
    let (client, url) = (h1_client(), proxy.url("/orders"));

    // Each endpoint answers exactly consecutive_5xx = 2 requests before it is ejected.
    for index in 0..4 {
        let reply = get(&client, &url).await;
        assert!(reply.is_from("a", 500) || reply.is_from("b", 500), "request {index}: {reply:?}");
    }
    assert_eq!((a.requests(), b.requests()), (2, 2));
    expect_refused(&client, &url, "ejected", 10).await;
    assert_eq!((a.requests(), b.requests()), (2, 2), "no request may reach an ejected endpoint");

    let view = cluster_view(&proxy, "svc").await;
    for endpoint in [a.addr, b.addr] {
        assert_eq!(endpoint_view(&view, endpoint)["healthy"], false, "{view:#}");
    }
    let events = events_of(&proxy, "svc").await;
    assert_eq!(event_names(&events), ["endpoint_ejected", "endpoint_ejected"], "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_exactly_the_requests_over_max_requests_at_once() {
    const MAX: usize = 4;
    const CLIENTS: usize = 12;
    let gate = Gate::new();
    let up = Chaos::start_with("svc", Behaviour::Hold(gate.clone())).await;
    let extra = format!("\n[clusters.svc.limits]\nmax_requests = {MAX}\n");
    let proxy = Proxy::start(&svc_config(&[up.addr], "", &extra)).await;
    let (client, url) = (h1_client(), proxy.url("/held"));

    let mut replies = JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        replies.spawn(async move { get(&client, &url).await });
    }
    // While the upstream holds every answer, the excess must come back at once.
    let mut refused = 0;
    while refused < CLIENTS - MAX {
        let reply = within_for(
            Duration::from_secs(10),
            "the requests over max_requests to be refused while the upstream holds the rest",
            replies.join_next(),
        )
        .await
        .expect("a reply task")
        .expect("a reply task finished");
        assert!(
            reply.is_breaker("limits"),
            "with the upstream holding, only refusals can come back: {reply:?}"
        );
        refused += 1;
    }
    up.wait_requests(MAX).await;
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(view["limits"]["requests"]["in_use"].as_u64(), Some(MAX as u64), "{view:#}");
    assert_eq!(view["limits"]["requests"]["max"].as_u64(), Some(MAX as u64), "{view:#}");
    assert!(view["breaker"].is_null(), "no breaker is configured: {view:#}");
    assert_eq!(up.requests(), MAX, "requests over the limit must not reach the upstream");

    gate.open();
    let rest = within("the held requests after release", replies.join_all()).await;
    assert_eq!(rest.len(), MAX);
    for reply in rest {
        assert!(reply.is_from("svc", 200), "a held request: {reply:?}");
    }
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(view["limits"]["requests"]["in_use"].as_u64(), Some(0), "{view:#}");
}

#[tokio::test]
async fn a_request_leaves_max_requests_at_its_response_head() {
    let rest = Gate::new();
    let streamed = Arc::new(AtomicUsize::new(0));
    let up = {
        let (rest, streamed) = (rest.clone(), streamed.clone());
        Upstream::start(Proto::H1, move |_request| {
            let (rest, first) = (rest.clone(), streamed.fetch_add(1, Ordering::SeqCst) == 0);
            async move {
                if !first {
                    return http::Response::new(full("whole"));
                }
                // The first answer: its head now, the end of its body when the test says.
                let (sender, body) = channel_body();
                tokio::spawn(async move {
                    sender.data("head on time, ").await;
                    rest.wait().await;
                    sender.data("body late").await;
                });
                http::Response::new(body)
            }
        })
        .await
    };
    let extra = "\n[clusters.svc.limits]\nmax_requests = 1\n";
    let proxy = Proxy::start(&svc_config(&[up.addr], "", extra)).await;
    let client = h1_client();
    let request = || http::Request::get(proxy.url("/stream")).body(empty()).expect("a GET");

    let streaming = within("the first response head", client.request(request())).await.expect("a response");
    assert_eq!(streaming.status(), 200);
    // Its body is still streaming, but the request no longer counts against max_requests = 1.
    let second = send(&client, request()).await;
    assert_eq!((second.status, &second.body[..]), (200, &b"whole"[..]), "{second:?}");
    rest.open();
    let body = read_body("the first body", streaming.into_body()).await;
    assert_eq!(body, "head on time, body late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_a_request_that_needs_one_more_connection() {
    let gate = Gate::new();
    let up = Chaos::start_with("svc", Behaviour::Hold(gate.clone())).await;
    let extra = "\n[clusters.svc.limits]\nmax_connections = 2\n";
    let proxy = Proxy::start(&svc_config(&[up.addr], "", extra)).await;
    let (client, url) = (h1_client(), proxy.url("/held"));

    let mut held = JoinSet::new();
    for count in 1..=2 {
        let (client, url) = (client.clone(), url.clone());
        held.spawn(async move { get(&client, &url).await });
        up.wait_requests(count).await;
    }
    // Both connections are busy with a held HTTP/1.1 exchange: a third needs a third connection.
    expect_refused(&client, &url, "limits", 3).await;
    assert_eq!((up.requests(), up.connections()), (2, 2));
    let view = cluster_view(&proxy, "svc").await;
    assert_eq!(view["limits"]["connections"]["in_use"].as_u64(), Some(2), "{view:#}");

    gate.open();
    for reply in within("the held requests", held.join_all()).await {
        assert!(reply.is_from("svc", 200), "{reply:?}");
    }
    assert_eq!(up.connections(), 2, "the refused requests opened no connection");
}

/// Two connections open and idle at `max_connections = 2` are enough for any one request: sequential
/// requests must reuse them, whichever proxy worker thread serves the request. The rounds repeat the
/// check because which worker serves which request is up to the proxy's scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_max_connections_serve_the_next_requests() {
    const ROUNDS: usize = 20;
    let up = Chaos::start("svc").await;
    let extra = "\n[clusters.svc.limits]\nmax_connections = 2\n";
    let proxy = Proxy::start(&svc_config(&[up.addr], "", extra)).await;
    let (client, url) = (h1_client(), proxy.url("/held"));
    for round in 0..ROUNDS {
        // Two exchanges at once fill both connections, and both go idle when they end.
        let gate = Gate::new();
        up.set(Behaviour::Hold(gate.clone()));
        let before = up.requests();
        let mut held = JoinSet::new();
        for count in 1..=2 {
            let (client, url) = (client.clone(), url.clone());
            held.spawn(async move { get(&client, &url).await });
            tokio::select! {
                () = up.wait_requests(before + count) => {}
                early = held.join_next() => panic!(
                    "round {round}: request {count} of the pair came back before reaching the upstream \
                     (at most one other request in flight, max_connections = 2): {early:?}"
                ),
            }
        }
        up.set(Behaviour::Ok);
        gate.open();
        for reply in within("the held requests", held.join_all()).await {
            assert!(reply.is_from("svc", 200), "round {round}: {reply:?}");
        }
        for index in 0..5 {
            let reply = get(&client, &url).await;
            let view = cluster_view(&proxy, "svc").await;
            assert!(
                reply.is_from("svc", 200),
                "round {round}, request {index} after the held pair: one request at a time, with {} \
                 connections open (max 2) and none busy, must be served: {reply:?}",
                view["limits"]["connections"]["in_use"]
            );
        }
    }
}

#[tokio::test]
async fn an_open_canary_breaker_fails_its_share_fast_instead_of_moving_it_to_stable() {
    const REQUESTS: usize = 400;
    let stable = Chaos::start("stable").await;
    let canary = Chaos::start_with("canary", Behaviour::Status(500)).await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "halves"
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "stable", weight = 50 }, { cluster = "canary", weight = 50 }]

[clusters.stable]
version = "v1"
endpoints = ["{STABLE}"]

[clusters.canary]
version = "v2"
endpoints = ["{CANARY}"]

[clusters.canary.breaker]
window = "10s"
min_calls = 5
failure_rate = 0.5
open_for = "30s"
"#,
        &[("STABLE", &stable.addr), ("CANARY", &canary.addr)],
    );
    let proxy = Proxy::start(&text).await;
    let (client, url) = (h1_client(), proxy.url("/split"));

    for index in 0.. {
        assert!(index < 500, "the canary got only {} of {index} requests", canary.requests());
        let reply = get(&client, &url).await;
        assert!(reply.is_from("stable", 200) || reply.is_from("canary", 500), "{reply:?}");
        if canary.requests() == 5 {
            break;
        }
    }
    let view = cluster_view(&proxy, "canary").await;
    assert_eq!((state(&view), &view["version"]), ("open", &Value::from("v2")), "{view:#}");

    let stable_before = stable.requests();
    let (mut served, mut open) = (0usize, 0usize);
    for index in 0..REQUESTS {
        let reply = get(&client, &url).await;
        if reply.is_from("stable", 200) {
            served += 1;
        } else if reply.is_breaker("open") {
            open += 1;
        } else {
            panic!("request {index}: neither stable's answer nor the canary's fast 503: {reply:?}");
        }
    }
    eprintln!("with the canary open: {served} served by stable, {open} refused");
    assert_eq!(canary.requests(), 5, "the open canary must not be contacted");
    assert_eq!(stable.requests() - stable_before, served);
    // The canary's share is binomial(400, 0.5): σ = 10, and ±5σ fails a correct split about once in
    // 1.7 million runs. Renormalising onto stable would leave it at 0.
    let sigma = (REQUESTS as f64 * 0.25).sqrt();
    assert!(
        (open as f64 - REQUESTS as f64 / 2.0).abs() <= 5.0 * sigma,
        "the canary's 50% share got {open} fast 503s of {REQUESTS}; expected 200 ± {:.0}",
        5.0 * sigma
    );
}
