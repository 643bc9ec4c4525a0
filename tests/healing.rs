//! The self-healing loop with every part real: control, a proxy reporting to it, upstreams whose
//! behaviour the test changes, and hooks that are shell scripts. A degraded node climbs the whole
//! ladder to a promoted regenerated version; a bad canary is rolled back at its first step; an
//! operator pauses, resumes and aborts; a hanging hook leaves the node held on its version; control
//! restarted mid-rollout resumes it; a rollout without traffic is never promoted.

mod common;

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::control::{Control, TOKEN};
use common::load::Load;
use common::*;
use http::Method;
use serde_json::{json, Value};

/// A proxy for node `payments` v1 (cluster `stable`), reporting every 200 ms.
fn proxy_config(control: SocketAddr, token_file: &Path, stable: SocketAddr) -> String {
    config(
        r#"{ADMIN}
[node]
name = "payments"
version = "v1"

[control]
url = "http://{CONTROL}"
token_file = "{TOKEN_FILE}"
report_interval = "200ms"

{LISTENER}
[[routes]]
name = "api"
backends = [{ cluster = "stable", weight = 100 }]

[clusters.stable]
version = "v1"
endpoints = ["{STABLE}"]
"#,
        &[("CONTROL", &control as &dyn Display), ("TOKEN_FILE", &token_file.display()), ("STABLE", &stable)],
    )
}

/// Control's `[analysis]` tail, `[rollout]` and the node's policy; `hooks` is TOML for `[[nodes]]`.
fn control_extra(rollout: &str, hooks: &str) -> String {
    format!(
        "breach_windows = 3\ncooldown = \"600ms\"\n\n[rollout]\n{rollout}\n\n[[nodes]]\nname = \"payments\"\nslo = {{ success_rate = 0.95, min_requests = 10 }}\n{hooks}\n"
    )
}

const FAST_ROLLOUT: &str =
    "steps = [10, 50, 100]\nstep_interval = \"600ms\"\nmax_failed_checks = 1\nprogress_deadline = \"20s\"";

/// Steps long enough that a test acting at 50% gets there before the rollout moves on, even on a
/// starved machine (with 600 ms steps a busy CI run once saw 10% and then 100%, never 50%).
const STEADY_ROLLOUT: &str =
    "steps = [10, 50, 100]\nstep_interval = \"3s\"\nmax_failed_checks = 1\nprogress_deadline = \"30s\"";

/// A hook script in `dir`: saves its input to `NAME.json`, then runs `then`.
fn hook_script(dir: &Path, name: &str, then: &str) -> String {
    let script = dir.join(format!("{name}.sh"));
    let input = dir.join(format!("{name}.json"));
    std::fs::write(&script, format!("cat > '{}'\n{then}\n", input.display())).expect("hook script");
    format!("{{ command = [\"sh\", \"{}\"], timeout = \"2s\" }}", script.display())
}

struct Mesh {
    dir: tempfile::TempDir,
    /// `None` only while it restarts.
    control_slot: Option<Control>,
    proxy: Proxy,
    stable: Chaos,
}

impl Mesh {
    async fn start(extra: impl FnOnce(&Path) -> String) -> Mesh {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let control = Control::start_in(dir.path().to_owned(), &extra(dir.path())).await;
        let stable = Chaos::start("v1").await;
        let proxy = Proxy::start(&proxy_config(control.addr, &token_file, stable.addr)).await;
        let mesh = Mesh { dir, control_slot: Some(control), proxy, stable };
        mesh.wait_node("the node registered", |node| node["status"] != "unreachable").await;
        mesh
    }

    fn control(&self) -> &Control {
        self.control_slot.as_ref().expect("control is running")
    }

    /// kill -9, then a new control on the same port and store.
    async fn restart_control(&mut self, extra: &str) {
        let control = self.control_slot.take().expect("control is running");
        let (dir, addr) = (control.dir.clone(), control.addr);
        control.kill9().await;
        self.control_slot = Some(Control::start_at(dir, &addr.to_string(), extra).await);
    }

    async fn journal(&self) -> Vec<Value> {
        let (status, entries) =
            self.control().call(Method::GET, "/v1/journal?after=0&limit=10000", None).await;
        assert_eq!(status, 200, "{entries}");
        entries.as_array().cloned().unwrap_or_default()
    }

    /// The kinds of the node's journal entries, in order.
    async fn kinds(&self) -> Vec<String> {
        self.journal()
            .await
            .iter()
            .filter(|entry| entry["node"] == "payments")
            .filter_map(|entry| entry["kind"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits (bounded by `TIMEOUT`) for a journal entry of `kind` that `matches`; on timeout the
    /// failure shows the journal.
    async fn wait_entry(&self, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(entry) =
                    self.journal().await.into_iter().find(|entry| entry["kind"] == kind && matches(entry))
                {
                    return entry;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match found {
            Ok(entry) => entry,
            Err(_) => panic!("no {kind} entry within {TIMEOUT:?}\n{}", self.diagnosis().await),
        }
    }

    async fn node(&self) -> Value {
        let (status, node) = self.control().call(Method::GET, "/v1/nodes/payments", None).await;
        assert_eq!(status, 200, "{node}");
        node
    }

    /// Waits (bounded by `TIMEOUT`) until the node's view `matches`; on timeout the failure shows the
    /// last view, the journal and control's log.
    async fn wait_node(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                let (status, node) = self.control().call(Method::GET, "/v1/nodes/payments", None).await;
                if status == 200 && matches(&node) {
                    return node;
                }
                last = node;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match found {
            Ok(node) => node,
            Err(_) => {
                let mut diagnosis = format!("the node's last view: {last:#}\n");
                diagnosis.push_str(&self.diagnosis().await);
                panic!("timed out after {TIMEOUT:?} waiting for {what}\n{diagnosis}")
            }
        }
    }

    /// The journal and the end of control's log, for a failure message.
    async fn diagnosis(&self) -> String {
        let journal: Vec<String> = self
            .journal()
            .await
            .iter()
            .map(|entry| format!("{} {}", entry["kind"], entry["detail"]))
            .collect();
        let stderr = self.control().stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("the journal:\n{}\ncontrol's log (last 30 lines):\n{tail}", journal.join("\n"))
    }

    async fn start_rollout(&self, canary: SocketAddr, steps: Option<&[u32]>) -> Value {
        let mut body = json!({ "node": "payments", "version": "v2", "endpoints": [canary.to_string()] });
        if let Some(steps) = steps {
            body["steps"] = json!(steps);
        }
        let (status, rollout) = self.control().call(Method::POST, "/v1/rollouts", Some(&body)).await;
        assert_eq!(status, 201, "{rollout:#}");
        rollout
    }

    async fn act(&self, action: &str) -> (u16, Value) {
        self.control().call(Method::POST, &format!("/v1/rollouts/payments/{action}"), Some(&json!({}))).await
    }

    /// Who answers `count` requests through the proxy: (label, status) per request.
    async fn answers(&self, count: usize) -> Vec<(String, u16)> {
        let client = h1_client();
        let mut answers = Vec::new();
        for _ in 0..count {
            let reply = get(&client, &self.proxy.url("/")).await;
            answers.push((reply.upstream.unwrap_or_else(|| "-".to_owned()), reply.status));
        }
        answers
    }
}

/// `needle` entries appear in `kinds` in this order (others may sit between them).
fn in_order(kinds: &[String], needles: &[&str]) -> bool {
    let mut rest = kinds.iter();
    needles.iter().all(|needle| rest.any(|kind| kind == needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_node_is_remedied_then_regenerated_and_the_new_version_promoted() {
    let canary = Chaos::start("v2").await;
    let canary_addr = canary.addr;
    let mesh = Mesh::start(|dir| {
        let answer = format!("echo '{{\"version\": \"v2\", \"endpoints\": [\"{canary_addr}\"]}}'");
        control_extra(
            FAST_ROLLOUT,
            &format!(
                "hooks.remediate = {}\nhooks.regenerate = {}\nhooks.retire = {}",
                hook_script(dir, "remediate", "echo '{\"remedied\": false}'"),
                hook_script(dir, "regenerate", &answer),
                hook_script(dir, "retire", "true"),
            ),
        )
    })
    .await;
    let load = Load::start(&mesh.proxy.url("/"), 2);
    mesh.wait_node("healthy with traffic", |node| {
        node["status"] == "healthy" && node["stats"]["requests"].as_u64() >= Some(50)
    })
    .await;

    // v1 starts failing every request.
    mesh.stable.set(Behaviour::Status(500));
    let healed = mesh.wait_entry("healed", |_| true).await;
    assert_eq!(healed["detail"]["version"], "v2", "{healed:#}");
    let kinds = mesh.kinds().await;
    let ladder = [
        "degraded",
        "remediating",
        "remediated",
        "remedy_did_not_help",
        "regenerating",
        "regenerated",
        "rollout_started",
        "rollout_step",
        "rollout_step",
        "rollout_promoting",
        "rollout_succeeded",
        "healed",
    ];
    assert!(in_order(&kinds, &ladder), "the journal: {kinds:?}");
    assert!(!kinds.iter().any(|kind| kind == "rollout_rolled_back" || kind == "held"), "{kinds:?}");

    // The numbers behind each step are in the journal and in the hooks' inputs.
    let degraded = mesh.wait_entry("degraded", |_| true).await;
    let constraint = degraded["detail"]["constraints"][0].as_str().unwrap_or_default().to_owned();
    assert!(constraint.starts_with("success rate must be >= 95%; measured "), "{degraded:#}");
    let remediate: Value = serde_json::from_slice(
        &std::fs::read(mesh.dir.path().join("remediate.json")).expect("remediate input"),
    )
    .expect("JSON");
    assert_eq!(
        (remediate["hook"].as_str(), remediate["node"].as_str()),
        (Some("remediate"), Some("payments"))
    );
    assert!(remediate["symptoms"]["requests"].as_u64() >= Some(10), "{remediate:#}");
    let regenerate: Value = serde_json::from_slice(
        &std::fs::read(mesh.dir.path().join("regenerate.json")).expect("regenerate input"),
    )
    .expect("JSON");
    assert_eq!(regenerate["version"], "v1");
    assert_eq!(regenerate["spec"]["node"], "payments", "{regenerate:#}");
    assert!(
        regenerate["constraints"].as_array().is_some_and(|list| list.iter().any(|constraint| constraint
            .as_str()
            .is_some_and(|text| text.starts_with("success rate must be >= 95%")))),
        "{regenerate:#}"
    );
    let retired = mesh.wait_entry("retired", |_| true).await;
    assert_eq!(retired["detail"]["version"], "v1");
    let retire: Value =
        serde_json::from_slice(&std::fs::read(mesh.dir.path().join("retire.json")).expect("retire input"))
            .expect("JSON");
    assert_eq!(
        (retire["version"].as_str(), retire["replaced_by"]["version"].as_str()),
        (Some("v1"), Some("v2"))
    );

    // v2 serves everything; the node is healthy again.
    let node = mesh
        .wait_node("healthy again on v2", |node| {
            node["status"] == "healthy" && node["serving_version"] == "v2"
        })
        .await;
    assert_eq!(node["healing"]["phase"], "healthy", "{node:#}");
    assert_eq!(node["rollout"]["phase"], "succeeded", "{node:#}");
    let (sent, _failed) = load.stop().await;
    assert!(sent > 100, "{sent} requests sent");
    let answers = mesh.answers(20).await;
    assert!(answers.iter().all(|answer| answer == &("v2".to_owned(), 200)), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_at_its_first_step_and_the_stable_version_is_untouched() {
    let mesh = Mesh::start(|_| control_extra(FAST_ROLLOUT, "")).await;
    let canary = Chaos::start_with("v2", Behaviour::Status(500)).await;
    let load = Load::start(&mesh.proxy.url("/"), 2);
    mesh.wait_node("traffic in control's stats", |node| node["stats"]["requests"].as_u64() >= Some(200))
        .await;
    let before = mesh.stable.requests();

    let rollout = mesh.start_rollout(canary.addr, None).await;
    assert_eq!((rollout["phase"].as_str(), rollout["weight"].as_u64()), (Some("progressing"), Some(10)));
    let id = rollout["id"].as_str().expect("id").to_owned();
    let rolled_back = mesh.wait_entry("rollout_rolled_back", |entry| entry["detail"]["id"] == id).await;
    let reason = rolled_back["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("at 10%: success rate must be >= 95%"), "{rolled_back:#}");
    let acked = mesh
        .wait_entry("rollout_acked", |entry| {
            entry["detail"]["id"] == id && entry["detail"]["phase"] == "rolled_back"
        })
        .await;
    assert_eq!(acked["detail"]["weight"], 0);

    // Keep the traffic going a while on the stable version alone: the failures stay a sliver.
    let sent_at_rollback = load.sent();
    load.wait_sent(sent_at_rollback + 15_000).await;
    let (sent, failed) = load.stop().await;
    assert!(canary.requests() > 0, "the canary took its 10%");
    assert!((failed as f64) < sent as f64 * 0.01, "{failed} of {sent} requests failed");
    assert!(mesh.stable.requests() > before, "the stable version kept serving");

    let node = mesh.node().await;
    assert_eq!(node["rollout"]["phase"], "rolled_back", "{node:#}");
    assert_eq!(node["rollout"]["step"], 0);
    assert_eq!(node["serving_version"], "v1", "{node:#}");
    let kinds = mesh.kinds().await;
    assert!(!kinds.iter().any(|kind| kind == "rollout_step" || kind == "rollout_promoting"), "{kinds:?}");
    let answers = mesh.answers(20).await;
    assert!(answers.iter().all(|answer| answer == &("v1".to_owned(), 200)), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_resumes_and_aborts_a_rollout() {
    let mesh = Mesh::start(|_| control_extra(STEADY_ROLLOUT, "")).await;
    let canary = Chaos::start("v2").await;
    let load = Load::start(&mesh.proxy.url("/"), 1);
    mesh.start_rollout(canary.addr, None).await;
    let (status, paused) = mesh.act("pause").await;
    assert_eq!((status, paused["phase"].as_str()), (200, Some("paused")), "{paused:#}");
    let (status, again) = mesh.act("pause").await;
    assert_eq!(status, 409, "{again:#}");

    // Reports spanning longer than the 3 s step later, still on its first step.
    let first = mesh.node().await["last_report_unix_ms"].as_u64().unwrap_or_default();
    mesh.wait_node("reports spanning more than a step", |node| {
        node["last_report_unix_ms"].as_u64().is_some_and(|at| at > first + 3_500)
    })
    .await;
    let node = mesh.node().await;
    assert_eq!(
        (node["rollout"]["phase"].as_str(), node["rollout"]["weight"].as_u64()),
        (Some("paused"), Some(10))
    );

    let (status, resumed) = mesh.act("resume").await;
    assert_eq!((status, resumed["phase"].as_str()), (200, Some("progressing")), "{resumed:#}");
    mesh.wait_entry("rollout_step", |entry| entry["detail"]["weight"] == 50).await;
    let (status, aborted) = mesh.act("abort").await;
    assert_eq!(
        (status, aborted["phase"].as_str(), aborted["weight"].as_u64()),
        (200, Some("rolled_back"), Some(0))
    );
    assert_eq!(aborted["reason"], "aborted by an operator");
    mesh.wait_node("the abort applied", |node| node["rollout"]["acked"] == true).await;
    let (_, _) = load.stop().await;
    let answers = mesh.answers(20).await;
    assert!(answers.iter().all(|answer| answer == &("v1".to_owned(), 200)), "{answers:?}");
    let (status, none) = mesh.act("resume").await;
    assert_eq!(status, 404, "no rollout under way: {none:#}");
    let kinds = mesh.kinds().await;
    assert!(
        in_order(
            &kinds,
            &["rollout_started", "rollout_paused", "rollout_resumed", "rollout_step", "rollout_rolled_back"]
        ),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_is_timed_out_and_the_node_held_on_its_version() {
    let mesh = Mesh::start(|dir| {
        let script = dir.join("hang.sh");
        std::fs::write(&script, "sleep 30 &\nsleep 30\n").expect("script");
        control_extra(
            FAST_ROLLOUT,
            &format!(
                "hooks.regenerate = {{ command = [\"sh\", \"{}\"], timeout = \"500ms\" }}",
                script.display()
            ),
        )
    })
    .await;
    let load = Load::start(&mesh.proxy.url("/"), 1);
    mesh.wait_node("traffic in control's stats", |node| node["stats"]["requests"].as_u64() >= Some(50)).await;
    let revision = mesh.node().await["desired_revision"].as_u64();
    mesh.stable.set(Behaviour::Status(500));

    let failed = mesh.wait_entry("hook_failed", |_| true).await;
    assert_eq!(failed["detail"]["hook"], "regenerate");
    assert!(
        failed["detail"]["error"].as_str().unwrap_or_default().contains("no answer within"),
        "{failed:#}"
    );
    let held = mesh.wait_entry("held", |_| true).await;
    assert!(
        held["detail"]["reason"].as_str().unwrap_or_default().contains("regenerate hook failed"),
        "{held:#}"
    );
    // Degraded (reports keep coming, so not unreachable), and held.
    let node = mesh
        .wait_node("held", |node| node["healing"]["phase"] == "held" && node["status"] == "degraded")
        .await;
    assert_eq!(node["desired_revision"].as_u64(), revision, "traffic was not moved: {node:#}");
    assert!(node.get("rollout").is_none_or(Value::is_null), "{node:#}");
    let kinds = mesh.kinds().await;
    assert!(in_order(&kinds, &["degraded", "regenerating", "hook_failed", "held"]), "{kinds:?}");

    // An operator tries again (`remora heal`): still breaching, the ladder climbs at once, and the
    // hook, still hanging, holds the node again. Only a held node can be retried.
    let heal = |node: &str| {
        let url = format!("http://{}", mesh.control().addr);
        let output = tokio::process::Command::new(common::process::BINARY)
            .args(["heal", node, "--control", &url, "--token", TOKEN])
            .output();
        async move {
            let output = within("remora heal", output).await.expect("run remora heal");
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            (output.status.code(), text(&output.stdout), text(&output.stderr))
        }
    };
    let (code, out, err) = heal("payments").await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("payments: retrying"), "{out}");
    let retried = mesh.wait_entry("retried", |_| true).await;
    assert_eq!(retried["detail"]["by"], "operator", "{retried:#}");
    mesh.wait_entry("held", |entry| entry["seq"].as_u64() > retried["seq"].as_u64()).await;
    let kinds = mesh.kinds().await;
    assert!(
        in_order(&kinds, &["held", "retried", "regenerating", "hook_failed", "held"]),
        "the ladder climbed again: {kinds:?}"
    );
    let (code, _, err) = heal("nobody").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown node"), "{err}");
    // Mended and tried again: the node recovers on v1 once its window clears (by the ladder climbing
    // and being held again first, or not), and its status follows.
    mesh.stable.set(Behaviour::Ok);
    let (code, out, err) = heal("payments").await;
    assert_eq!(code, Some(0), "{out}{err}");
    let recovered = mesh.wait_entry("recovered", |_| true).await;
    mesh.wait_node("healthy again", |node| {
        node["status"] == "healthy" && node["healing"]["phase"] == "healthy"
    })
    .await;
    assert_eq!(recovered["detail"]["version"], "v1", "{recovered:#}");
    load.stop().await;
    // Still on its version (not moved anywhere).
    let answers = mesh.answers(10).await;
    assert!(answers.iter().all(|answer| answer == &("v1".to_owned(), 200)), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_held_retry_a_held_node_tries_its_healing_again_by_itself() {
    let mesh = Mesh::start(|dir| {
        let hook = hook_script(dir, "regenerate", "exit 3");
        format!("held_retry = \"1s\"\n{}", control_extra(FAST_ROLLOUT, &format!("hooks.regenerate = {hook}")))
    })
    .await;
    let load = Load::start(&mesh.proxy.url("/"), 1);
    mesh.wait_node("traffic in control's stats", |node| node["stats"]["requests"].as_u64() >= Some(50)).await;
    mesh.stable.set(Behaviour::Status(500));
    let first = mesh.wait_entry("held", |_| true).await;
    let retried = mesh.wait_entry("retried", |_| true).await;
    assert_eq!(retried["detail"]["by"], "control", "{retried:#}");
    assert_eq!(retried["detail"]["held_retry_ms"], 1000, "{retried:#}");
    let waited =
        retried["unix_ms"].as_u64().unwrap_or_default() - first["unix_ms"].as_u64().unwrap_or_default();
    assert!(waited >= 1000, "retried after {waited} ms");
    // Still failing, and the hook still fails: held again, and so on while nobody mends it, each
    // wait twice the last.
    let second = mesh.wait_entry("held", |entry| entry["seq"].as_u64() > retried["seq"].as_u64()).await;
    let again = mesh.wait_entry("retried", |entry| entry["seq"].as_u64() > second["seq"].as_u64()).await;
    assert_eq!(
        (again["detail"]["held_retry_ms"].as_u64(), again["detail"]["attempt"].as_u64()),
        (Some(2000), Some(2))
    );
    let waited =
        again["unix_ms"].as_u64().unwrap_or_default() - second["unix_ms"].as_u64().unwrap_or_default();
    assert!(waited >= 2000, "retried after {waited} ms");
    load.stop().await;
    let kinds = mesh.kinds().await;
    assert!(
        in_order(&kinds, &["held", "retried", "degraded", "regenerating", "hook_failed", "held"]),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_holds_a_node_whose_regeneration_it_lost_and_keeps_it_held() {
    // The regenerate hook notes its process group and answers only after control is gone.
    let hooks = |dir: &Path| {
        let script = dir.join("slow.sh");
        let pid = dir.join("hook.pid");
        std::fs::write(&script, format!("echo $$ > '{}'\nsleep 20\n", pid.display())).expect("script");
        let hook = format!("{{ command = [\"sh\", \"{}\"], timeout = \"30s\" }}", script.display());
        control_extra(FAST_ROLLOUT, &format!("hooks.regenerate = {hook}"))
    };
    let mut mesh = Mesh::start(hooks).await;
    let extra = hooks(mesh.dir.path());
    let pid_file = mesh.dir.path().join("hook.pid");
    let load = Load::start(&mesh.proxy.url("/"), 1);
    mesh.wait_node("traffic in control's stats", |node| node["stats"]["requests"].as_u64() >= Some(50)).await;
    mesh.stable.set(Behaviour::Status(500));
    mesh.wait_node("regenerating", |node| node["healing"]["phase"] == "regenerating").await;
    let hook_pid = tokio::time::timeout(TIMEOUT, async {
        loop {
            let pid =
                std::fs::read_to_string(&pid_file).ok().and_then(|text| text.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the hook started");

    mesh.restart_control(&extra).await;
    let held = mesh.wait_entry("held", |_| true).await;
    assert!(
        held["detail"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("control restarted while the regenerate hook ran"),
        "{held:#}"
    );
    let node = mesh.wait_node("held after the restart", |node| node["healing"]["phase"] == "held").await;
    let since = node["healing"]["since_unix_ms"].clone();
    assert!(since.is_u64(), "{node:#}");
    load.stop().await;

    // Once more: the stored ladder, not a new episode (no traffic now: nothing would be detected).
    let restarted_ms = u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis(),
    )
    .expect("ms");
    mesh.restart_control(&extra).await;
    let node = mesh.wait_node("still held", |node| node["healing"]["phase"] == "held").await;
    assert_eq!(node["healing"]["since_unix_ms"], since, "{node:#}");
    // Reports arriving after the restart do not make a held node healthy.
    let node = mesh
        .wait_node("a report after the restart", |node| {
            node["last_report_unix_ms"].as_u64().is_some_and(|at| at > restarted_ms + 500)
        })
        .await;
    assert_eq!(node["status"], "degraded", "{node:#}");
    let kinds = mesh.kinds().await;
    let count = |kind: &str| kinds.iter().filter(|have| *have == kind).count();
    assert_eq!((count("degraded"), count("regenerating"), count("held")), (1, 1, 1), "{kinds:?}");
    // The lost hook's processes end with the test.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(hook_pid), nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_restarted_mid_rollout_resumes_it_and_promotes() {
    let mut mesh = Mesh::start(|_| control_extra(STEADY_ROLLOUT, "")).await;
    let canary = Chaos::start("v2").await;
    let load = Load::start(&mesh.proxy.url("/"), 1);
    let rollout = mesh.start_rollout(canary.addr, Some(&[10, 50, 100])).await;
    let id = rollout["id"].as_str().expect("id").to_owned();
    mesh.wait_entry("rollout_step", |entry| entry["detail"]["weight"] == 50).await;
    mesh.wait_node("the second step applied", |node| {
        node["rollout"]["weight"] == 50 && node["rollout"]["acked"] == true
    })
    .await;

    // Control dies mid-rollout; the proxy keeps the 50% split; control comes back on its port.
    mesh.restart_control(&control_extra(STEADY_ROLLOUT, "")).await;
    let answers = mesh.answers(40).await;
    assert!(answers.iter().any(|answer| answer.0 == "v2") && answers.iter().any(|answer| answer.0 == "v1"));

    let resumed = mesh.wait_entry("rollout_resumed", |entry| entry["detail"]["id"] == id).await;
    assert!(
        resumed["detail"]["reason"].as_str().unwrap_or_default().contains("control restarted"),
        "{resumed:#}"
    );
    let succeeded = mesh.wait_entry("rollout_succeeded", |entry| entry["detail"]["id"] == id).await;
    assert_eq!(succeeded["detail"]["version"], "v2");
    load.stop().await;
    mesh.wait_node("v2 serving", |node| node["serving_version"] == "v2" && node["rollout"]["acked"] == true)
        .await;
    let answers = mesh.answers(20).await;
    assert!(answers.iter().all(|answer| answer == &("v2".to_owned(), 200)), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_without_traffic_is_inconclusive_and_never_promoted() {
    let rollout =
        "steps = [10, 100]\nstep_interval = \"300ms\"\nmax_failed_checks = 1\nprogress_deadline = \"2s\"";
    let mesh = Mesh::start(|_| control_extra(rollout, "")).await;
    let canary = Chaos::start("v2").await;
    let started = mesh.start_rollout(canary.addr, None).await;
    let id = started["id"].as_str().expect("id").to_owned();
    let failed = mesh.wait_entry("rollout_failed", |entry| entry["detail"]["id"] == id).await;
    let reason = failed["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("inconclusive (0 requests, 10 needed) at 10%"), "{failed:#}");
    let node = mesh.node().await;
    assert_eq!(
        (node["rollout"]["phase"].as_str(), node["rollout"]["weight"].as_u64()),
        (Some("failed"), Some(0))
    );
    assert_ne!(node["serving_version"], "v2", "{node:#}");
    let kinds = mesh.kinds().await;
    assert!(!kinds.iter().any(|kind| kind == "rollout_step" || kind == "rollout_promoting"), "{kinds:?}");
    assert_eq!(canary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rollout_requests_are_refused_and_change_nothing() {
    let mesh = Mesh::start(|_| control_extra(FAST_ROLLOUT, "")).await;
    let canary = Chaos::start("v2").await;
    let revision = mesh.node().await["desired_revision"].clone();
    let endpoint = canary.addr.to_string();
    let cases = [
        (json!({ "node": "nobody", "version": "v2", "endpoints": [endpoint] }), 404),
        (json!({ "node": "payments", "version": "v1", "endpoints": [endpoint] }), 400),
        (json!({ "node": "payments", "version": "v2", "endpoints": [] }), 400),
        (json!({ "node": "payments", "version": "v 2", "endpoints": [endpoint] }), 400),
        (json!({ "node": "payments", "version": "v2", "endpoints": ["nowhere"] }), 400),
        (json!({ "node": "payments", "version": "v2", "endpoints": [endpoint], "steps": [50, 10] }), 400),
        (json!({ "node": "payments", "version": "v2", "endpoints": [endpoint], "extra": 1 }), 400),
        (json!({ "node": "payments" }), 400),
    ];
    for (body, expected) in cases {
        let (status, answer) = mesh.control().call(Method::POST, "/v1/rollouts", Some(&body)).await;
        assert_eq!(status, expected, "{body} → {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, _) = mesh.act("promote").await;
    assert_eq!(status, 404, "no rollout to promote");
    let (status, _) = mesh.act("explode").await;
    assert_eq!(status, 404);
    // Only a held node's healing is retried.
    for (path, expected) in
        [("/v1/nodes/payments/healing/retry", 409), ("/v1/nodes/nobody/healing/retry", 404)]
    {
        let (status, answer) = mesh.control().call(Method::POST, path, Some(&json!({}))).await;
        assert_eq!(status, expected, "{path} → {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    assert_eq!(mesh.node().await["desired_revision"], revision, "nothing was pushed");
    // One rollout at a time.
    mesh.start_rollout(canary.addr, None).await;
    let body = json!({ "node": "payments", "version": "v3", "endpoints": [endpoint] });
    let (status, answer) = mesh.control().call(Method::POST, "/v1/rollouts", Some(&body)).await;
    assert_eq!(status, 409, "{answer}");
    // A split cannot be set by hand through desired state.
    let update = json!({ "routes": {}, "split": { "stable": { "version": "v1" } } });
    let (status, answer) =
        mesh.control().call(Method::PUT, "/v1/nodes/payments/desired", Some(&update)).await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_command_starts_shows_pauses_and_aborts() {
    let mesh = Mesh::start(|_| control_extra(FAST_ROLLOUT, "")).await;
    let canary = Chaos::start("v2").await;
    let url = format!("http://{}", mesh.control().addr);
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            let output = tokio::process::Command::new(common::process::BINARY)
                .arg("rollout")
                .args(&args)
                .args(["--control", &url, "--token", TOKEN])
                .output();
            let output = within("remora rollout", output).await.expect("run remora rollout");
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };
    let args = |list: &[&str]| list.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();

    let endpoint = canary.addr.to_string();
    let (code, out, err) =
        run(args(&["start", "payments", "--version", "v2", "--endpoint", &endpoint, "--steps", "20,100"]))
            .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("progressing v2 at 20% (step 1/2), 0/1 failed checks"), "{out}");
    assert!(out.contains(&format!("v2 on {endpoint}")), "{out}");
    let (code, out, _) = run(args(&["pause", "payments"])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("paused v2 at 20%"), "{out}");
    let (code, out, _) = run(args(&["status", "payments", "--json"])).await;
    assert_eq!(code, Some(0));
    let status: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!((status["phase"].as_str(), status["weight"].as_u64()), (Some("paused"), Some(20)));
    let (code, out, _) = run(args(&["abort", "payments"])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("rolled_back v2 at 0%") && out.contains("aborted by an operator"), "{out}");
    let (code, _, err) = run(args(&["abort", "payments"])).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("has no rollout under way"), "{err}");
    let (code, _, err) = run(args(&["start", "payments", "--version", "v2", "--endpoint", "nowhere"])).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("400") && err.contains("nowhere"), "{err}");
    let (code, out, _) = run(args(&["status"])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("rollout:") && out.contains("(manual)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_released_from_held_that_passes_recovers_and_is_healthy_again() {
    // Ten passing windows (2 s) release a held node by themselves; a retry within them releases it
    // one breach short of degraded, and its next passing window ends the episode.
    let mesh = Mesh::start(|dir| {
        let hook = hook_script(dir, "regenerate", "exit 3");
        format!(
            "breach_windows = 10\ncooldown = \"600ms\"\n\n[rollout]\n{FAST_ROLLOUT}\n\n[[nodes]]\nname = \"payments\"\nslo = {{ success_rate = 0.95, min_requests = 10 }}\nhooks.regenerate = {hook}\n"
        )
    })
    .await;
    let load = Load::start(&mesh.proxy.url("/"), 1);
    mesh.wait_node("traffic in control's stats", |node| node["stats"]["requests"].as_u64() >= Some(50)).await;
    mesh.stable.set(Behaviour::Status(500));
    mesh.wait_node("held and degraded", |node| {
        node["healing"]["phase"] == "held" && node["status"] == "degraded"
    })
    .await;
    mesh.stable.set(Behaviour::Ok);
    mesh.wait_node("a passing window", |node| {
        node["stats"]["success_rate"].as_f64().is_some_and(|rate| rate >= 0.95)
    })
    .await;
    let (status, view) =
        mesh.control().call(Method::POST, "/v1/nodes/payments/healing/retry", Some(&json!({}))).await;
    assert_eq!(status, 200, "still held when retried: {view:#}");
    let recovered = mesh.wait_entry("recovered", |_| true).await;
    assert_eq!(recovered["detail"]["from"], "breaching", "{recovered:#}");
    mesh.wait_node("healthy again", |node| {
        node["status"] == "healthy" && node["healing"]["phase"] == "healthy"
    })
    .await;
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_a_live_proxy_never_applies_fails_at_the_progress_deadline() {
    let rollout =
        "steps = [10, 100]\nstep_interval = \"300ms\"\nmax_failed_checks = 1\nprogress_deadline = \"3s\"";
    let mesh = Mesh::start(|_| control_extra(rollout, "")).await;
    let canary = Chaos::start("v2").await;
    let load = Load::start(&mesh.proxy.url("/"), 1);
    // A second proxy of the node that keeps reporting but never applies a revision.
    let url = format!("http://{}/v1/reports", mesh.control().addr);
    let stuck = tokio::spawn(async move {
        let client = h1_client();
        for sequence in 1.. {
            let now = u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_millis(),
            )
            .expect("ms");
            let report = json!({
                "schema": 1, "node": "payments", "node_version": "v1", "proxy": "stuck:1",
                "sequence": sequence, "start_unix_ms": now.saturating_sub(200), "end_unix_ms": now,
                "config_generation": 1,
            });
            let request = http::Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(full(report.to_string().into_bytes()))
                .expect("request");
            let reply = send(&client, request).await;
            assert_eq!(reply.status, 204, "the stuck proxy's report: {:?}", reply.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = mesh.start_rollout(canary.addr, None).await;
    let id = started["id"].as_str().expect("id").to_owned();
    mesh.wait_entry("rollout_promoting", |entry| entry["detail"]["id"] == id).await;
    let failed = mesh.wait_entry("rollout_failed", |entry| entry["detail"]["id"] == id).await;
    let reason = failed["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the promotion was not applied by every proxy"), "{failed:#}");
    stuck.abort();
    let node = mesh.wait_node("back on v1", |node| node["rollout"]["acked"] == true).await;
    assert_eq!(node["rollout"]["phase"], "failed", "{node:#}");
    load.stop().await;
    let answers = mesh.answers(10).await;
    assert!(answers.iter().all(|answer| answer == &("v1".to_owned(), 200)), "{answers:?}");
}
