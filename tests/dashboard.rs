//! The dashboard in a real browser (Debian's Chromium, headless, through chromedriver) against the
//! real control binary: the nodes with their rollout, the event map, the journal live over SSE, the
//! rollout buttons, the token taken from the link's fragment and a refused token asked for again.

mod common;

use common::browser::Browser;
use common::control::{registration, Control, TOKEN};
use common::*;
use http::{Method, Request};
use serde_json::{json, Value};

async fn register(control: &Control, registration: &Value) {
    let (status, answer) = control.call(Method::POST, "/v1/nodes", Some(registration)).await;
    assert_eq!(status, 200, "{answer:#}");
}

/// The text of a node's cell (`.status`, `.rollout`, …) as the page shows it now.
fn cell(node: &str, class: &str) -> String {
    format!("const cell = document.querySelector('tr[data-node=\"{node}\"] .{class}'); return cell ? cell.innerText : null;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_mesh_live_and_drives_a_rollout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let extra =
        "[rollout]\nsteps = [10, 50, 100]\nprogress_deadline = \"10m\"\n\n[[nodes]]\nname = \"payments\"\n";
    let control = Control::start_in(dir.path().to_owned(), extra).await;
    register(&control, &registration("payments", "v1", &["payment.completed@1"], &[])).await;
    register(&control, &registration("orders", "v1", &["order.placed@1"], &["payment.completed@1"])).await;
    let body = json!({ "node": "payments", "version": "v2", "endpoints": ["127.0.0.1:9"] });
    let (status, rollout) = control.call(Method::POST, "/v1/rollouts", Some(&body)).await;
    assert_eq!(status, 201, "{rollout:#}");

    // The page itself needs no token and may load nothing from elsewhere.
    let response = h1_client()
        .request(Request::get(control.url("/")).body(empty()).expect("request"))
        .await
        .expect("GET /");
    assert_eq!(response.status(), 200);
    let policy = response.headers().get("content-security-policy").and_then(|value| value.to_str().ok());
    assert!(policy.is_some_and(|policy| policy.contains("default-src 'none'")), "{policy:?}");
    assert_eq!(
        control.call_with(Method::GET, "/v1/nodes", None, None).await.0,
        401,
        "the data still needs it"
    );
    // The page starts from the journal's newest entries.
    let (_, all) = control.call(Method::GET, "/v1/journal?after=0", None).await;
    let (status, last) = control.call(Method::GET, "/v1/journal?last=2", None).await;
    let all = all.as_array().expect("entries");
    assert_eq!((status, last.as_array().map(Vec::len)), (200, Some(2)), "{last:#}");
    assert_eq!(last[1], all[all.len() - 1], "oldest first, ending at the head");
    assert_eq!(control.call(Method::GET, "/v1/journal?last=x", None).await.0, 400);

    let browser = Browser::start().await;
    browser.open(&format!("{}#token={TOKEN}", control.url("/"))).await;
    browser.wait_for("the payments row", &cell("payments", "status")).await;
    assert_eq!(browser.eval("return location.hash;").await, "", "the token left the address bar");
    assert_eq!(browser.text("tr[data-node=\"orders\"] .status").await, "registered");
    let rollout = browser
        .wait_for("the rollout at 10%", &format!("const text = (() => {{ {} }})(); return text && text.includes('progressing v2 at 10%') ? text : null;", cell("payments", "rollout")))
        .await;
    assert!(rollout.as_str().unwrap_or_default().contains("step 1/3"), "{rollout}");
    let map = browser.text("#map tr[data-event=\"payment.completed\"]").await;
    assert!(map.contains("payments@1") && map.contains("orders@1"), "{map}");
    browser
        .wait_for(
            "the registrations in the journal",
            "return document.querySelectorAll('#journal li[data-kind=\"registered\"]').length === 2;",
        )
        .await;

    // Live: a node registered now shows up in the journal (SSE) and the table.
    let kept =
        "window.kept = document.querySelector('tr[data-node=\"payments\"] button[data-action=\"pause\"]'); \
                return window.kept !== null;";
    assert_eq!(browser.eval(kept).await, Value::Bool(true));
    register(&control, &registration("shipping", "v1", &[], &["order.placed@1"])).await;
    browser
        .wait_for(
            "the new node's journal entry",
            "return document.querySelectorAll('#journal li[data-kind=\"registered\"]').length === 3;",
        )
        .await;
    browser.wait_for("the new node's row", &cell("shipping", "status")).await;
    // The redraw moved rows about but kept an unchanged button the same element: a click is not lost.
    let same = "return document.querySelector('tr[data-node=\"payments\"] button[data-action=\"pause\"]') === window.kept;";
    assert_eq!(browser.eval(same).await, Value::Bool(true), "the pause button was redrawn");

    // The rollout's buttons act through the API.
    browser.click("tr[data-node=\"payments\"] button[data-action=\"pause\"]").await;
    browser
        .wait_for(
            "paused",
            &format!(
                "const text = (() => {{ {} }})(); return text && text.includes('paused v2 at 10%');",
                cell("payments", "rollout")
            ),
        )
        .await;
    let (_, rollout) = control.call(Method::GET, "/v1/rollouts/payments", None).await;
    assert_eq!(rollout["phase"], "paused", "{rollout:#}");
    browser.click("tr[data-node=\"payments\"] button[data-action=\"abort\"]").await;
    let rollback = browser
        .wait_for(
            "the rollback in the journal",
            "const item = document.querySelector('#journal li[data-kind=\"rollout_rolled_back\"]'); \
             return item ? item.innerText : null;",
        )
        .await;
    // In words, as `remora events` says it.
    assert!(rollback.as_str().unwrap_or_default().contains("v1 100%: aborted by an operator"), "{rollback}");
    browser
        .wait_for(
            "rolled back",
            &format!(
                "const text = (() => {{ {} }})(); return text && text.includes('rolled_back v2 at 0%');",
                cell("payments", "rollout")
            ),
        )
        .await;
    assert_eq!(
        browser.eval("return document.querySelectorAll('tr[data-node=\"payments\"] button').length;").await,
        0
    );
    assert_eq!(browser.severe_logs().await, Vec::<String>::new(), "no errors on the page");

    // A wrong token: the page asks for one instead of showing nothing.
    browser.eval("sessionStorage.clear(); return true;").await;
    browser.open(&format!("{}#token=wrong", control.url("/"))).await;
    let state = browser.wait_for("the token form", "return document.querySelector('#token-form').hidden ? null : document.querySelector('#state').innerText;").await;
    assert!(state.as_str().unwrap_or_default().contains("refused"), "{state}");
    assert!(browser.eval("return document.querySelector('#main').hidden;").await == Value::Bool(true));
}
