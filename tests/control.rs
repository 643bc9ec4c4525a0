//! The control process end to end (real binary, real SQLite): registration and conflicts, desired
//! state with long-poll, the journal and its SSE stream, token auth and bad input, and kill -9.

mod common;

use common::control::{registration, Control, TOKEN};
use common::*;
use http::Method;
use serde_json::{json, Value};

async fn node_names(control: &Control) -> Vec<String> {
    let (status, nodes) = control.call(Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, 200, "{nodes:#}");
    nodes
        .as_array()
        .expect("a list")
        .iter()
        .map(|node| node["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn journal_kinds(control: &Control) -> Vec<String> {
    let (status, entries) = control.call(Method::GET, "/v1/journal?after=0", None).await;
    assert_eq!(status, 200, "{entries:#}");
    entries
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn registrations_are_checked_for_conflicts_and_journaled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = Control::start_in(dir.path().to_owned(), "").await;

    // Nobody publishes order.placed yet: refused with the reason, nothing stored.
    let orders = registration("orders", "v1", &["order.shipped@1"], &["order.placed@1"]);
    let (status, refused) = control.call(Method::POST, "/v1/nodes", Some(&orders)).await;
    assert_eq!(status, 409, "{refused:#}");
    assert_eq!(refused["conflicts"][0]["kind"], "consumed_but_not_published", "{refused:#}");
    assert!(
        refused["conflicts"][0]["message"].as_str().unwrap_or("").contains("order.placed"),
        "{refused:#}"
    );
    assert!(node_names(&control).await.is_empty());

    // The producer first, then the consumer.
    let payments = registration("payments", "v1", &["order.placed@1"], &[]);
    let (status, registered) = control.call(Method::POST, "/v1/nodes", Some(&payments)).await;
    assert_eq!(status, 200, "{registered:#}");
    let (status, _) = control.call(Method::POST, "/v1/nodes", Some(&orders)).await;
    assert_eq!(status, 200);
    // Registering again is idempotent.
    let (status, _) = control.call(Method::POST, "/v1/nodes", Some(&payments)).await;
    assert_eq!(status, 200);
    assert_eq!(node_names(&control).await, ["orders", "payments"]);

    // A producer moving to a new major version while a consumer reads the old one: refused.
    let payments_v2 = registration("payments", "v2", &["order.placed@2"], &[]);
    let (status, refused) = control.call(Method::POST, "/v1/nodes", Some(&payments_v2)).await;
    assert_eq!(status, 409, "{refused:#}");
    let kinds: Vec<&str> =
        refused["conflicts"].as_array().unwrap().iter().filter_map(|c| c["kind"].as_str()).collect();
    assert!(kinds.contains(&"major_version_mismatch"), "{refused:#}");
    let (_, view) = control.call(Method::GET, "/v1/nodes/payments", None).await;
    assert_eq!(view["version"], "v1", "a refused change changes nothing: {view:#}");

    // Forced: applied, and the journal says so.
    let (status, _) = control.call(Method::POST, "/v1/nodes?force=true", Some(&payments_v2)).await;
    assert_eq!(status, 200);
    let kinds = journal_kinds(&control).await;
    for kind in ["control_started", "registration_refused", "registered", "reregistered"] {
        assert!(kinds.iter().any(|seen| seen == kind), "no {kind} in the journal: {kinds:?}");
    }

    let (status, events) = control.call(Method::GET, "/v1/events", None).await;
    assert_eq!(status, 200);
    assert!(events.to_string().contains("order.placed"), "{events:#}");
    let dot = get(&h1_client(), &control.url("/v1/map?format=dot")).await;
    assert_eq!(dot.status, 401, "the map needs the token too");
}

#[tokio::test]
async fn desired_state_is_versioned_and_long_polled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = Control::start_in(dir.path().to_owned(), "").await;
    let payments = registration("payments", "v1", &[], &[]);
    assert_eq!(control.call(Method::POST, "/v1/nodes", Some(&payments)).await.0, 200);

    // Nothing newer than revision 0 yet: the long-poll answers 204 after its wait.
    let (status, _) = control.call(Method::GET, "/v1/nodes/payments/desired?after=0&wait_ms=50", None).await;
    assert_eq!(status, 204);

    // A waiting poll is answered as soon as the state changes.
    let poll = {
        let url = control.url("/v1/nodes/payments/desired?after=0&wait_ms=20000");
        tokio::spawn(async move {
            let request =
                http::Request::get(url).header("authorization", format!("Bearer {TOKEN}")).body(empty());
            send(&h1_client(), request.expect("request")).await
        })
    };
    let update = json!({ "routes": { "api": [{ "cluster": "payments-v1", "weight": 90 }, { "cluster": "payments-v2", "weight": 10 }] } });
    let (status, desired) = control.call(Method::PUT, "/v1/nodes/payments/desired", Some(&update)).await;
    assert_eq!(status, 200, "{desired:#}");
    assert_eq!(desired["revision"], 1);
    let reply = within("the long-poll", poll).await.expect("task");
    assert_eq!(reply.status, 200);
    let polled: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(polled["revision"], 1);
    assert_eq!(polled["routes"]["api"][1]["weight"], 10);

    let (_, desired) = control.call(Method::PUT, "/v1/nodes/payments/desired", Some(&update)).await;
    assert_eq!(desired["revision"], 2, "revisions only grow");
    let (status, refused) = control.call(Method::PUT, "/v1/nodes/nobody/desired", Some(&update)).await;
    assert_eq!(status, 404, "{refused:#}");
    let zero = json!({ "routes": { "api": [{ "cluster": "payments-v1", "weight": 0 }] } });
    let (status, refused) = control.call(Method::PUT, "/v1/nodes/payments/desired", Some(&zero)).await;
    assert_eq!(status, 400, "{refused:#}");
}

/// A bad request: method, path, body, token, the status expected.
type Case<'a> = (Method, &'a str, Option<Vec<u8>>, Option<&'a str>, u16);

/// Every endpoint fed bad input answers a clear 4xx and changes nothing.
#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = Control::start_in(dir.path().to_owned(), "").await;
    let payments = registration("payments", "v1", &[], &[]);
    assert_eq!(control.call(Method::POST, "/v1/nodes", Some(&payments)).await.0, 200);
    // The analysis tick adds a node's `healing` on its own schedule: that is not the bad input's doing.
    let nodes = || async {
        let mut nodes = control.call(Method::GET, "/v1/nodes", None).await.1;
        for node in nodes.as_array_mut().into_iter().flatten() {
            node.as_object_mut().map(|node| node.remove("healing"));
        }
        nodes
    };
    let nodes_before = nodes().await;
    let desired_before = control.call(Method::GET, "/v1/nodes/payments/desired", None).await;

    let big = vec![b'x'; 10 * 1024 * 1024];
    let cases: Vec<Case> = vec![
        (Method::POST, "/v1/nodes", Some(b"{not json".to_vec()), Some(TOKEN), 400),
        (Method::POST, "/v1/nodes", Some(br#"{"node": 7}"#.to_vec()), Some(TOKEN), 400),
        (Method::POST, "/v1/nodes", Some(Vec::new()), Some(TOKEN), 400),
        (Method::POST, "/v1/nodes", Some(big.clone()), Some(TOKEN), 413),
        (Method::POST, "/v1/nodes", Some(payments.to_string().into_bytes()), Some("wrong"), 401),
        (Method::POST, "/v1/nodes", Some(payments.to_string().into_bytes()), None, 401),
        (
            Method::PUT,
            "/v1/nodes/payments/desired",
            Some(br#"{"routes": {"api": "heavy"}}"#.to_vec()),
            Some(TOKEN),
            400,
        ),
        (Method::PUT, "/v1/nodes/payments/desired", Some(big.clone()), Some(TOKEN), 413),
        (Method::POST, "/v1/reports", Some(b"[]".to_vec()), Some(TOKEN), 400),
        (Method::POST, "/v1/reports", Some(br#"{"schema": 99}"#.to_vec()), Some(TOKEN), 400),
        (Method::POST, "/v1/reports", Some(big), Some(TOKEN), 413),
        (Method::GET, "/v1/nodes/nobody", None, Some(TOKEN), 404),
        (Method::GET, "/v1/map?format=png", None, Some(TOKEN), 400),
        (Method::DELETE, "/v1/nodes", None, Some(TOKEN), 404),
        (Method::GET, "/v1/journal?after=yesterday", None, Some(TOKEN), 400),
        (Method::GET, "/v1/journal?limit=-1", None, Some(TOKEN), 400),
        (Method::GET, "/v1/nodes/payments/desired?after=1&wait_ms=soon", None, Some(TOKEN), 400),
        (Method::POST, "/v1/nodes?force=maybe", Some(payments.to_string().into_bytes()), Some(TOKEN), 400),
    ];
    for (method, path, body, token, expected) in cases {
        let (status, answer) = control.call_with(method.clone(), path, body, token).await;
        assert_eq!(status, expected, "{method} {path}: {answer:#}");
        assert!(
            answer["error"].as_str().is_some_and(|error| !error.is_empty()),
            "{method} {path}: no error message: {answer:#}"
        );
    }
    // A report from a node nobody registered.
    let report = json!({
        "schema": 1, "node": "ghost", "node_version": "v1", "proxy": "p", "sequence": 1,
        "start_unix_ms": 0, "end_unix_ms": 1, "config_generation": 1,
    });
    let (status, answer) = control.call(Method::POST, "/v1/reports", Some(&report)).await;
    assert_eq!(status, 400, "{answer:#}");
    assert!(answer["error"].as_str().unwrap_or("").contains("unknown node"), "{answer:#}");

    assert_eq!(nodes().await, nodes_before);
    assert_eq!(control.call(Method::GET, "/v1/nodes/payments/desired", None).await, desired_before);
}

/// kill -9 and a restart on the same store: nodes, desired state and the journal are intact.
#[tokio::test]
async fn kill_9_and_restart_keep_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = Control::start_in(dir.path().to_owned(), "").await;
    let payments = registration("payments", "v1", &["payment.settled@2"], &[]);
    assert_eq!(control.call(Method::POST, "/v1/nodes", Some(&payments)).await.0, 200);
    let update = json!({ "routes": { "api": [{ "cluster": "payments-v1", "weight": 100 }] } });
    for _ in 0..3 {
        assert_eq!(control.call(Method::PUT, "/v1/nodes/payments/desired", Some(&update)).await.0, 200);
    }
    let journal_before = control.call(Method::GET, "/v1/journal?after=0", None).await.1;
    control.kill9().await;

    let control = Control::start_in(dir.path().to_owned(), "").await;
    assert_eq!(node_names(&control).await, ["payments"]);
    let (_, desired) = control.call(Method::GET, "/v1/nodes/payments/desired", None).await;
    assert_eq!(desired["revision"], 3, "{desired:#}");
    let journal_after = control.call(Method::GET, "/v1/journal?after=0", None).await.1;
    let before = journal_before.as_array().expect("journal");
    let after = journal_after.as_array().expect("journal");
    assert_eq!(&after[..before.len()], &before[..], "the journal before the kill is intact");
    assert_eq!(after[before.len()]["kind"], "control_started");
    assert!(
        after[before.len()]["seq"].as_u64() > before.last().and_then(|entry| entry["seq"].as_u64()),
        "seqs never reused"
    );
}

/// The journal stream: the backlog after `Last-Event-ID`, then live entries.
#[tokio::test]
async fn the_journal_streams_with_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = Control::start_in(dir.path().to_owned(), "").await;
    let payments = registration("payments", "v1", &[], &[]);
    assert_eq!(control.call(Method::POST, "/v1/nodes", Some(&payments)).await.0, 200);
    let (_, journal) = control.call(Method::GET, "/v1/journal?after=0", None).await;
    let first_seq = journal[0]["seq"].as_u64().expect("seq");

    let request = http::Request::get(control.url("/v1/journal/stream"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("last-event-id", first_seq.to_string())
        .body(empty())
        .expect("request");
    let response = within("the stream", h1_client().request(request)).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut text = String::new();
    let mut updated = false;
    within("registered and desired_changed on the stream", async {
        use http_body_util::BodyExt;
        while !(text.contains("event: registered") && text.contains("event: desired_changed")) {
            if text.contains("event: registered") && !updated {
                updated = true;
                let update = json!({ "routes": { "api": [{ "cluster": "c", "weight": 1 }] } });
                assert_eq!(
                    control.call(Method::PUT, "/v1/nodes/payments/desired", Some(&update)).await.0,
                    200
                );
            }
            let frame = body.frame().await.expect("the stream goes on").expect("a frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await;
    assert!(!text.contains(&format!("id: {first_seq}\n")), "resume starts after Last-Event-ID: {text}");
}

#[tokio::test]
async fn sighup_does_not_stop_control() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = Control::start_in(dir.path().to_owned(), "").await;
    control.signal(nix::sys::signal::Signal::SIGHUP);
    // The warning is the readiness signal that the signal was handled.
    within("the SIGHUP warning", async {
        while !control.stderr().contains("SIGHUP ignored") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, nodes) = control.call(Method::GET, "/v1/nodes", None).await;
    assert_eq!((status, nodes), (200, json!([])));
}
