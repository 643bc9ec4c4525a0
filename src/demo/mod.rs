//! `remora demo`: the whole self-healing loop on one machine, with no set-up. Every part is a child
//! process of this binary on 127.0.0.1: control (SQLite in a temporary directory), the demo service
//! v1, and a proxy in front of it that reports to control; the demo drives traffic itself.
//!
//! 1. v1 starts leaking (errors and latency grow); control finds the node degraded, runs its remedy
//!    (which does not help), regenerates it (the demo's hook starts a healthy v2), and rolls v2 out as
//!    a canary, step by step, to 100%, then retires v1.
//! 2. A bad v3 is rolled out by hand (as `remora rollout start` would) and rolled back at its first
//!    step.
//!
//! It prints what happens as it happens, and a summary: time to detect, time to recover, requests
//! sent and failed in each episode, and how fast a failing canary was pulled back.

pub mod hook;
pub mod service;
mod traffic;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use remora_config::control::{JournalEntry, NodeView};
use serde_json::{json, Value};

use crate::cli::client::Control;
use traffic::{Tally, Traffic};

/// The node the demo's proxy registers.
const NODE: &str = "demo";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Run the scenario once and exit (0 when every step happened); without it the demo stays up
    /// afterwards, with the URLs to look at, until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Requests per second the demo sends through the proxy.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(20..=5000))]
    rate: u32,
    /// Proxies in front of the service (replicas of one node; the traffic goes to each in turn, and
    /// a rollback is over when every one has applied it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    proxies: u32,
}

/// A child process that is stopped (SIGTERM, then waited for) when dropped.
struct Part {
    name: &'static str,
    child: Child,
}

impl Drop for Part {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            let _ = self.child.kill();
        }
        match self.child.wait() {
            Ok(status) => tracing::debug!(part = self.name, %status, "stopped"),
            Err(error) => tracing::warn!(part = self.name, %error, "could not wait for child"),
        }
    }
}

/// Starts `remora ARGS`, reads its stdout until `ready_prefix` and returns the lines read.
fn start(
    name: &'static str,
    args: &[&str],
    env: &[(&str, &str)],
    ready_prefix: &str,
) -> Result<(Part, Vec<String>), String> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find this binary: {error}"))?;
    let mut child = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .env("REMORA_LOG", std::env::var("REMORA_LOG").unwrap_or_else(|_| "error".to_owned()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("cannot start {name}: {error}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let part = Part { name, child };
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|error| format!("{name}: {error}"))?;
        let done = line.starts_with(ready_prefix);
        lines.push(line);
        if done {
            return Ok((part, lines));
        }
    }
    Err(format!("{name} exited before it was ready"))
}

fn address(lines: &[String], prefix: &str) -> Result<SocketAddr, String> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.trim().strip_prefix("http://"))
        .and_then(|addr| addr.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| format!("no line starting {prefix:?} in {lines:?}"))
}

pub fn run(args: DemoArgs) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("remora-demo-{}", std::process::id()));
    let result = demo(&args, &dir);
    // The versions the hooks started are not our children: stop them by their pid files.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|extension| extension == "pid") {
                if let Some(pid) = hook::read_pid(&entry.path()) {
                    hook::stop(pid);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("remora demo: {error}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: &DemoArgs, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|error| format!("cannot find this binary: {error}"))?;
    let token = format!("{:032x}", fastrand::u128(..));
    let env = [("REMORA_CONTROL_TOKEN", token.as_str())];
    println!("remora demo: the self-healing loop on 127.0.0.1 (files in {})", dir.display());

    let (v1, lines) = start("service v1", &["demo-service", "--label", "v1"], &[], "listening on")?;
    let v1_addr = address(&lines, "listening on")?;
    std::fs::write(hook::pid_file(dir, "v1"), v1.child.id().to_string())
        .map_err(|error| error.to_string())?;
    println!("  service v1   http://{v1_addr}");

    let control_path = dir.join("control.toml");
    std::fs::write(&control_path, control_config(dir, &exe, v1_addr)).map_err(|error| error.to_string())?;
    let control_arg = control_path.to_string_lossy().into_owned();
    let (control_part, lines) = start("control", &["control", "--config", &control_arg], &env, "ready:")?;
    let control_addr = address(&lines, "control on")?;
    println!("  control      http://{control_addr}  (remora status --control http://{control_addr})");
    println!("  dashboard    http://{control_addr}/#token={token}");

    let proxy_path = dir.join("proxy.toml");
    std::fs::write(&proxy_path, proxy_config(control_addr, v1_addr)).map_err(|error| error.to_string())?;
    let proxy_arg = proxy_path.to_string_lossy().into_owned();
    let (mut proxy_parts, mut proxy_addrs, mut admin_addrs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.proxies {
        let (part, lines) = start("proxy", &["proxy", "--config", &proxy_arg], &env, "ready:")?;
        let (proxy_addr, admin_addr) = (address(&lines, "listener public on")?, address(&lines, "admin on")?);
        println!("  proxy        http://{proxy_addr}  (admin http://{admin_addr}/stats)");
        proxy_parts.push(part);
        proxy_addrs.push(proxy_addr);
        admin_addrs.push(admin_addr);
    }
    let (proxy_addr, admin_addr) = (proxy_addrs[0], admin_addrs[0]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let outcome = runtime.block_on(async {
        let control = Control::new(&format!("http://{control_addr}"), Some(token.clone()))
            .map_err(|error| error.to_string())?;
        let mut scenario = Scenario { control, journal_seq: 0, started: Instant::now(), dir: dir.to_owned() };
        let result = scenario.play(proxy_addrs.clone(), v1_addr, args.rate).await;
        if result.is_ok() && !args.once {
            println!();
            println!("the demo stays up; look around, then Ctrl-C:");
            println!("  open http://{control_addr}/#token={token}   (the dashboard)");
            println!("  curl http://{proxy_addr}/hello");
            println!("  remora status --control http://{control_addr} --token {token}");
            println!("  remora events --control http://{control_addr} --token {token}");
            println!("  curl http://{admin_addr}/metrics");
            remora_proxy::shutdown_signal().await;
        }
        result
    });
    drop(proxy_parts);
    drop(control_part);
    drop(v1);
    outcome
}

fn control_config(dir: &Path, exe: &Path, v1: SocketAddr) -> String {
    let store = dir.join("control.db");
    let exe = toml_string(&exe.to_string_lossy());
    let dir = toml_string(&dir.to_string_lossy());
    format!(
        r#"# Written by `remora demo`.
listen = "127.0.0.1:0"
store = {store}

[analysis]
interval = "1s"
window = "3s"
breach_windows = 3
cooldown = "3s"

[rollout]
steps = [10, 25, 50, 100]
step_interval = "2s"
max_failed_checks = 1
progress_deadline = "30s"

[[nodes]]
name = "{NODE}"
slo = {{ success_rate = 0.95, p99 = "250ms", min_requests = 10 }}
hooks.remediate = {{ url = "http://{v1}/admin/remediate", timeout = "2s" }}
hooks.regenerate = {{ command = [{exe}, "demo-hook", "regenerate", "--dir", {dir}], timeout = "20s" }}
hooks.retire = {{ command = [{exe}, "demo-hook", "retire", "--dir", {dir}], timeout = "10s" }}
"#,
        store = toml_string(&format!("sqlite://{}", store.display())),
    )
}

fn proxy_config(control: SocketAddr, v1: SocketAddr) -> String {
    format!(
        r#"# Written by `remora demo`.
[admin]
listen = "127.0.0.1:0"

[node]
name = "{NODE}"
version = "v1"

[control]
url = "http://{control}"
report_interval = "1s"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "demo"
match = {{ path_prefix = "/" }}
backends = [{{ cluster = "demo-v1", weight = 100 }}]

[clusters.demo-v1]
version = "v1"
endpoints = ["{v1}"]
"#
    )
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

struct Scenario {
    control: Control,
    journal_seq: u64,
    started: Instant,
    dir: PathBuf,
}

/// What an episode measured.
struct Episode {
    name: &'static str,
    requests: (u64, u64),
    lines: Vec<String>,
}

impl Scenario {
    async fn play(&mut self, proxies: Vec<SocketAddr>, v1: SocketAddr, rate: u32) -> Result<(), String> {
        self.wait_registered(proxies.len()).await?;
        self.journal_seq = self.head().await?;
        println!();
        let through =
            if proxies.len() == 1 { "the proxy".to_owned() } else { format!("{} proxies", proxies.len()) };
        println!("sending {rate} requests/s through {through}; v1 is healthy");
        let traffic = Traffic::start(proxies, rate);
        self.watch(&traffic, Duration::from_secs(4), |_| false).await?;

        // Episode 1: v1 leaks; the loop heals the node.
        println!();
        println!("v1 starts leaking: errors and latency grow over 1.5 s");
        let before = traffic.tally();
        let leak_ms = now_ms();
        post(v1, "/admin/fault", &json!({ "error_rate": 0.35, "latency_ms": 400, "ramp_ms": 1500 })).await?;
        let healed = self
            .watch(&traffic, Duration::from_secs(120), |entry| {
                matches!(entry.kind.as_str(), "healed" | "held")
            })
            .await?
            .ok_or("the node was not healed within 120 s")?;
        if healed.kind != "healed" {
            return Err(format!("the loop stopped: {}", healed.detail));
        }
        let entries = self.journal_since(0).await?;
        let degraded = entries.iter().find(|entry| entry.kind == "degraded" && entry.unix_ms >= leak_ms);
        let version = healed.detail.get("version").and_then(Value::as_str).unwrap_or("?").to_owned();
        let mut heal = Episode {
            name: "v1 leaks; healed by a regenerated version",
            requests: traffic.tally().since(&before),
            lines: vec![],
        };
        let canary_started =
            entries.iter().find(|entry| entry.kind == "rollout_started" && entry.unix_ms >= leak_ms);
        if let Some(degraded) = degraded {
            heal.lines
                .push(format!("time to detect   {}", seconds(degraded.unix_ms.saturating_sub(leak_ms))));
        }
        if let Some(started) = canary_started {
            heal.lines.push(format!(
                "time to canary   {} (leak → first traffic on the regenerated {version})",
                seconds(started.unix_ms.saturating_sub(leak_ms))
            ));
        }
        heal.lines.push(format!(
            "time to recover  {} (leak → {version} serving all traffic)",
            seconds(healed.unix_ms.saturating_sub(leak_ms))
        ));

        // Episode 2: a bad v3 is rolled out by hand and rolled back at its first step.
        println!();
        let (v3, lines) = start(
            "service v3",
            &["demo-service", "--label", "v3", "--error-rate", "0.5"],
            &[],
            "listening on",
        )?;
        let v3_addr = address(&lines, "listening on")?;
        std::fs::write(hook::pid_file(&self.dir, "v3"), v3.child.id().to_string())
            .map_err(|error| error.to_string())?;
        println!("a bad v3 (half its answers are 500s) on http://{v3_addr}; rolling it out:");
        println!("  remora rollout start {NODE} --version v3 --endpoint {v3_addr}");
        let before = traffic.tally();
        let url = self.control.url(&["v1", "rollouts"], &[]);
        let body = json!({ "node": NODE, "version": "v3", "endpoints": [v3_addr.to_string()] });
        let started =
            self.control.post_json(&url, &body, "a rollout").await.map_err(|error| error.to_string())?;
        let id = started.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut rolled_back = false;
        let acked = self
            .watch(&traffic, Duration::from_secs(60), |entry| {
                let ours = entry.detail.get("id").and_then(Value::as_str) == Some(id.as_str());
                if ours && matches!(entry.kind.as_str(), "rollout_rolled_back" | "rollout_failed") {
                    rolled_back = true;
                }
                ours && rolled_back && entry.kind == "rollout_acked"
                    || ours && entry.kind == "rollout_succeeded"
            })
            .await?
            .ok_or("the bad canary was not rolled back within 60 s")?;
        if acked.kind != "rollout_acked" {
            return Err("the bad canary was promoted".into());
        }
        // A little longer on the stable version alone.
        self.watch(&traffic, Duration::from_secs(2), |_| false).await?;
        let tally = traffic.stop().await;
        let mut canary =
            Episode { name: "bad v3 canary; rolled back", requests: tally.since(&before), lines: vec![] };
        let view: NodeView = self.node().await?;
        if let Some(rollout) = &view.rollout {
            canary.lines.push(format!(
                "rolled back at   {}% ({})",
                rollout.steps.get(rollout.step).copied().unwrap_or(0),
                rollout.reason.as_deref().unwrap_or("-")
            ));
        }
        if let Some(first) = tally.first_failure_unix_ms.get("v3") {
            canary.lines.push(format!(
                "first failed v3 answer → weight 0 applied by every proxy: {}",
                seconds(acked.unix_ms.saturating_sub(*first))
            ));
        }
        if let Some(ms) = acked.detail.get("push_to_ack_ms").and_then(Value::as_u64) {
            canary.lines.push(format!("rollback pushed → acked by every proxy: {ms} ms"));
        }
        drop(v3);

        println!();
        println!("summary after {}:", seconds(self.started.elapsed().as_millis() as u64));
        for episode in [&heal, &canary] {
            println!("  {}", episode.name);
            for line in &episode.lines {
                println!("    {line}");
            }
            let (sent, failed) = episode.requests;
            println!("    requests         {sent} sent, {failed} failed ({:.2}%)", percent(failed, sent));
        }
        println!(
            "  all traffic        {} sent, {} failed ({:.2}%)",
            tally.sent,
            tally.failed,
            percent(tally.failed, tally.sent)
        );
        let mut by_version: Vec<String> = tally
            .versions
            .iter()
            .map(|(version, (answered, failed))| format!("{version} {answered} ({failed} failed)"))
            .collect();
        by_version.sort();
        println!("  answered by        {}", by_version.join(", "));
        Ok(())
    }

    async fn wait_registered(&mut self, proxies: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.node().await.is_ok_and(|node| node.proxies.len() >= proxies) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the proxy did not register with control within 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn node(&self) -> Result<NodeView, String> {
        let url = self.control.url(&["v1", "nodes", NODE], &[]);
        let value = self.control.fetch_json(&url, "a node").await.map_err(|error| error.to_string())?;
        serde_json::from_value(value).map_err(|error| error.to_string())
    }

    async fn head(&self) -> Result<u64, String> {
        Ok(self.journal_since(0).await?.last().map_or(0, |entry| entry.seq))
    }

    async fn journal_since(&self, after: u64) -> Result<Vec<JournalEntry>, String> {
        let after = after.to_string();
        let url = self.control.url(&["v1", "journal"], &[("after", &after), ("limit", "10000")]);
        let value =
            self.control.fetch_json(&url, "journal entries").await.map_err(|error| error.to_string())?;
        serde_json::from_value(value).map_err(|error| error.to_string())
    }

    /// Shows what happens for up to `limit`: the journal's healing entries as they come, and a status
    /// line every second. Returns the first entry `until` accepts, if one came.
    async fn watch(
        &mut self,
        traffic: &Traffic,
        limit: Duration,
        mut until: impl FnMut(&JournalEntry) -> bool,
    ) -> Result<Option<JournalEntry>, String> {
        let deadline = Instant::now() + limit;
        let mut next_line = Instant::now();
        while Instant::now() < deadline {
            for entry in self.journal_since(self.journal_seq).await? {
                self.journal_seq = entry.seq;
                if let Some(line) = describe(&entry) {
                    println!("  {:>6}  {line}", seconds(self.started.elapsed().as_millis() as u64));
                }
                if until(&entry) {
                    return Ok(Some(entry));
                }
            }
            if Instant::now() >= next_line {
                next_line += Duration::from_secs(1);
                if let Ok(node) = self.node().await {
                    println!(
                        "  {:>6}  {}",
                        seconds(self.started.elapsed().as_millis() as u64),
                        status_line(&node, &traffic.tally())
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(None)
    }
}

/// `healing: healthy | v1 100% | v1 99.8% ok p99 2ms | sent 1200, failed 3`, with a progress bar
/// for a rollout's step.
fn status_line(node: &NodeView, tally: &Tally) -> String {
    let serving = node.serving_version.clone().unwrap_or_else(|| node.version.clone());
    let active = node
        .rollout
        .as_ref()
        .filter(|rollout| matches!(rollout.phase.as_str(), "progressing" | "paused" | "promoting"));
    let phase = match (node.healing.as_ref().map(|healing| healing.phase.as_str()), active) {
        (Some("healthy") | None, Some(_)) => "rollout",
        (Some(phase), _) => phase,
        (None, None) => "healthy",
    };
    let weights = match active {
        Some(rollout) => format!(
            "{} {}% / {} {}%",
            rollout.stable.version,
            100 - rollout.weight,
            rollout.canary.version,
            rollout.weight
        ),
        None => format!("{serving} 100%"),
    };
    let mut figures: Vec<String> = node
        .versions
        .iter()
        .map(|(version, stats)| {
            format!(
                "{version} {} ok p99 {}",
                stats.success_rate.map_or_else(|| "-".to_owned(), |rate| format!("{:.1}%", rate * 100.0)),
                stats.p99_ms.map_or_else(|| "-".to_owned(), |p99| format!("{p99:.0}ms"))
            )
        })
        .collect();
    if figures.is_empty() {
        figures.push("no figures yet".into());
    }
    let mut line = format!(
        "{phase:<12} | {weights:<16} | {} | sent {}, failed {}",
        figures.join(", "),
        tally.sent,
        tally.failed
    );
    if let Some(rollout) = active {
        let held = now_ms().saturating_sub(rollout.step_started_unix_ms) as f64;
        let share = (held / rollout.step_interval_ms.max(1) as f64).clamp(0.0, 1.0);
        let filled = (share * 10.0).round() as usize;
        line.push_str(&format!(
            "\n          rollout {} [{}{}] step {}/{} at {}%",
            rollout.canary.version,
            "#".repeat(filled),
            "-".repeat(10 - filled),
            rollout.step + 1,
            rollout.steps.len(),
            rollout.weight
        ));
    }
    line
}

/// The journal entries the demo shows (the healing loop's), one line each as `remora events` reads
/// them; `None` for the others.
fn describe(entry: &JournalEntry) -> Option<String> {
    const SHOWN: &[&str] = &[
        "degraded",
        "remediating",
        "remediated",
        "remedy_did_not_help",
        "regenerating",
        "regenerated",
        "rollout_started",
        "rollout_step",
        "rollout_check_failed",
        "rollout_promoting",
        "rollout_succeeded",
        "rollout_rolled_back",
        "rollout_failed",
        "rollout_acked",
        "retired",
        "healed",
        "hook_failed",
        "held",
        "recovered",
    ];
    SHOWN
        .contains(&entry.kind.as_str())
        .then(|| format!("{:<20} {}", entry.kind, crate::cli::render::summary(&entry.kind, &entry.detail)))
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// POSTs JSON to a demo service's admin path.
async fn post(service: SocketAddr, path: &str, body: &Value) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = hyper::Request::post(format!("http://{service}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .map_err(|error| error.to_string())?;
    let response = client.request(request).await.map_err(|error| format!("{path}: {error}"))?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{path} answered {status}"))
    }
}
