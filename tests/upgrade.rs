//! Zero-downtime binary restart: `remora proxy --upgrade` takes the listening sockets over from the
//! running proxy through `[runtime] handover_socket`; the old one drains and exits 0; a client load
//! running through it all sees no failed request.

mod common;

use std::fmt::Display;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_no_request() {
    let upstream = Upstream::echo("svc").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("handover.sock");
    let text = config(
        r#"{ADMIN}
[runtime]
handover_socket = "{SOCKET}"
grace_period = "10s"

{LISTENER}
[[routes]]
backends = [{ cluster = "svc" }]

[clusters.svc]
endpoints = ["{UPSTREAM}"]
"#,
        &[("SOCKET", &socket.display() as &dyn Display), ("UPSTREAM", &upstream.addr)],
    );
    let mut old = Proxy::start(&text).await;
    let url = old.url("/");

    let load = common::load::Load::start(&url, 16);
    load.wait_sent(1_000).await;

    let new = Proxy::start_with_args(&text, &["--upgrade"]).await;
    assert_eq!(new.addr(), old.addr(), "the successor serves on the very same socket");
    assert_eq!(new.admin, old.admin, "and the same admin socket");
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "the old proxy drains and exits 0: {status:?}\n{}", old.stderr());

    // The load carries on against the successor alone.
    load.wait_sent(load.sent() + 1_000).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed across the upgrade\n{}", new.stderr());
    let stats = admin_json(&new, "/stats").await;
    let served = stats["series"][0]["since_start"]["requests"].as_u64().expect("requests");
    assert!(served >= 1_000, "the successor served the load after the old proxy left: {served}");

    // The successor serves the handover socket in turn: it can be upgraded again.
    let newest = Proxy::start_with_args(&text, &["--upgrade"]).await;
    assert_eq!(newest.addr(), new.addr());
    let reply = get(&h1_client(), &newest.url("/")).await;
    assert!(reply.is_from("svc", 200), "{reply:?}");
}

#[tokio::test]
async fn upgrade_without_a_running_proxy_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("nobody.sock");
    let text = config(
        "{ADMIN}\n[runtime]\nhandover_socket = \"{SOCKET}\"\n{LISTENER}\n[[routes]]\nbackends = [{ cluster = \"svc\" }]\n[clusters.svc]\nendpoints = [\"127.0.0.1:1\"]\n",
        &[("SOCKET", &socket.display() as &dyn Display)],
    );
    let failure = match Proxy::try_start_with(&text, &[], &["--upgrade"]).await {
        Ok(_) => panic!("an upgrade with nobody to take over from must fail"),
        Err(failure) => failure,
    };
    assert!(failure.status.is_some_and(|status| !status.success()), "{failure}");
    assert!(failure.stderr.contains("nobody.sock"), "the error names the socket: {failure}");
}
