//! Two proxies and the control process, all real: registration, reports reflected in control's
//! stats, desired weights applied by both proxies and acknowledged, and fail-static: control down →
//! traffic unaffected, then re-registration and reports when it returns.

mod common;

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::control::{Control, TOKEN};
use common::*;
use http::Method;
use serde_json::{json, Value};

fn proxy_config(control: SocketAddr, token_file: &Path, stable: SocketAddr, canary: SocketAddr) -> String {
    config(
        r#"{ADMIN}
[node]
name = "payments"
version = "v1"
publishes = ["payment.settled@1"]

[control]
url = "http://{CONTROL}"
token_file = "{TOKEN_FILE}"
report_interval = "200ms"

{LISTENER}
[[routes]]
name = "api"
backends = [{ cluster = "stable", weight = 100 }, { cluster = "canary", weight = 0 }]

[clusters.stable]
version = "v1"
endpoints = ["{STABLE}"]

[clusters.canary]
version = "v2"
endpoints = ["{CANARY}"]
"#,
        &[
            ("CONTROL", &control as &dyn Display),
            ("TOKEN_FILE", &token_file.display()),
            ("STABLE", &stable),
            ("CANARY", &canary),
        ],
    )
}

/// Polls control (bounded) until `matches` holds for node `payments`.
async fn wait_node(control: &Control, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    within(what, async {
        loop {
            let (status, node) = control.call(Method::GET, "/v1/nodes/payments", None).await;
            if status == 200 && matches(&node) {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_register_report_apply_desired_weights_and_survive_control_going_away() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let control = Control::start_in(dir.path().to_owned(), "").await;
    let (stable, canary) = (Upstream::echo("stable").await, Upstream::echo("canary").await);
    let text = proxy_config(control.addr, &token_file, stable.addr, canary.addr);
    let (first, second) = (Proxy::start(&text).await, Proxy::start(&text).await);

    // Both register; their traffic shows in control's stats.
    let client = h1_client();
    for proxy in [&first, &second] {
        for _ in 0..20 {
            assert!(get(&client, &proxy.url("/")).await.is_from("stable", 200));
        }
    }
    let node = wait_node(&control, "40 requests in control's stats", |node| {
        node["stats"]["requests"].as_u64() >= Some(40)
    })
    .await;
    assert_eq!(node["proxies"].as_array().map(Vec::len), Some(2), "{node:#}");
    assert_eq!(node["version"], "v1");

    // Desired weights: both proxies apply them and acknowledge the revision.
    let update = json!({ "routes": { "api": [{ "cluster": "stable", "weight": 0 }, { "cluster": "canary", "weight": 100 }] } });
    let (status, desired) = control.call(Method::PUT, "/v1/nodes/payments/desired", Some(&update)).await;
    assert_eq!(status, 200, "{desired:#}");
    let revision = desired["revision"].as_u64().expect("revision");
    let node = wait_node(&control, "both proxies acknowledging the revision", |node| {
        node["proxies"].as_array().is_some_and(|proxies| {
            proxies.len() == 2 && proxies.iter().all(|proxy| proxy["applied_revision"] == revision)
        })
    })
    .await;
    let recent: Vec<&str> = node["recent_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["kind"].as_str())
        .collect();
    assert!(recent.contains(&"desired_changed"), "the node's recent events: {recent:?}");
    for proxy in [&first, &second] {
        for _ in 0..10 {
            assert!(get(&client, &proxy.url("/")).await.is_from("canary", 200), "desired weights applied");
        }
    }

    // Control goes away: traffic through both proxies is unaffected.
    let dir_path = control.dir.clone();
    control.kill9().await;
    let failed = Arc::new(AtomicUsize::new(0));
    for proxy in [&first, &second] {
        for _ in 0..50 {
            let reply = get(&client, &proxy.url("/")).await;
            if !reply.is_from("canary", 200) {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "control down must not touch traffic");

    // Control returns where the proxies know it, on the same store.
    let control = restart_on(dir_path, control_addr_of(&text)).await;
    let node = wait_node(&control, "reports resuming after control's return", |node| {
        node["status"] == "healthy" && node["proxies"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert_eq!(node["desired_revision"], revision, "desired state survived: {node:#}");
    // Both proxies registered again with the restarted control.
    within("both proxies re-registering", async {
        loop {
            let (_, journal) = control.call(Method::GET, "/v1/journal?after=0", None).await;
            let entries = journal.as_array().cloned().unwrap_or_default();
            let restart = entries.iter().rposition(|entry| entry["kind"] == "control_started").unwrap_or(0);
            let again = entries[restart..]
                .iter()
                .filter(|entry| entry["kind"] == "reregistered" || entry["kind"] == "registered")
                .count();
            if again >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(get(&client, &first.url("/")).await.is_from("canary", 200));
}

fn control_addr_of(text: &str) -> SocketAddr {
    let line = text.lines().find(|line| line.starts_with("url = \"http://")).expect("a control url");
    line.trim_start_matches("url = \"http://").trim_end_matches('"').parse().expect("an address")
}

/// Starts control again on the same store and the same address.
async fn restart_on(dir: std::path::PathBuf, addr: SocketAddr) -> Control {
    within("control to restart on its port", async {
        loop {
            let control = Control::start_at(dir.clone(), &addr.to_string(), "").await;
            if control.addr == addr {
                return control;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A node whose proxies stop reporting turns `unreachable` (journaled) and `healthy` again when
/// reports resume.
#[tokio::test]
async fn a_silent_node_turns_unreachable_and_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let control = Control::start_in(dir.path().to_owned(), "").await;
    let (stable, canary) = (Upstream::echo("stable").await, Upstream::echo("canary").await);
    let text = proxy_config(control.addr, &token_file, stable.addr, canary.addr);
    let proxy = Proxy::start(&text).await;
    wait_node(&control, "the node healthy", |node| node["status"] == "healthy").await;
    drop(proxy);
    wait_node(&control, "the node unreachable", |node| node["status"] == "unreachable").await;
    let _proxy = Proxy::start(&text).await;
    wait_node(&control, "the node healthy again", |node| node["status"] == "healthy").await;
    let (_, journal) = control.call(Method::GET, "/v1/journal?after=0", None).await;
    let changes: Vec<String> = journal
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["kind"] == "status_changed")
        .map(|entry| entry["detail"]["to"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(changes, ["healthy", "unreachable", "healthy"], "{journal:#}");
}
