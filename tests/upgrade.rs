//! Zero-downtime binary restart: `remora proxy --upgrade` takes the listening sockets over from the
//! running proxy through `[runtime] handover_socket`; the old one drains and exits 0; a client load
//! running through it all sees no failed request.

mod common;

use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Request;

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

    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, url, sent, failed, stop) =
            (h1_client(), url.clone(), sent.clone(), failed.clone(), stop_rx.clone());
        load.spawn(async move {
            while !*stop.borrow() {
                let request = Request::get(url.as_str()).body(empty()).expect("request");
                match tokio::time::timeout(TIMEOUT, client.request(request)).await {
                    Ok(Ok(response)) if response.status() == 200 => {
                        let _ = read_body("load", response.into_body()).await;
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {other:?}");
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let wait_sent = |at_least: usize| {
        let sent = sent.clone();
        async move {
            within(&format!("{at_least} requests"), async {
                while sent.load(Ordering::Relaxed) < at_least {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
        }
    };
    wait_sent(1_000).await;

    let new = Proxy::start_with_args(&text, &["--upgrade"]).await;
    assert_eq!(new.addr(), old.addr(), "the successor serves on the very same socket");
    assert_eq!(new.admin, old.admin, "and the same admin socket");
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "the old proxy drains and exits 0: {status:?}\n{}", old.stderr());

    // The load carries on against the successor alone.
    let after_exit = sent.load(Ordering::Relaxed);
    wait_sent(after_exit + 1_000).await;
    let _ = stop_tx.send(true);
    while let Some(joined) = load.join_next().await {
        joined.expect("a load task panicked");
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
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
