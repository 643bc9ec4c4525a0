//! `remora check` and configuration loading: every sample under `deploy/` is valid, invalid files
//! get every error as `path: message` with exit 2, and `REMORA_<SECTION>__<KEY>` overrides the file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use http::{Request, StatusCode};

fn toml_files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| panic!("read {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            toml_files_under(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "toml") {
            found.push(path);
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn every_sample_config_under_deploy_passes_check() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut samples = Vec::new();
    toml_files_under(&deploy, &mut samples);
    samples.sort();
    assert!(
        !samples.is_empty(),
        "no *.toml under {}: every sample config must be checked here",
        deploy.display()
    );

    let mut failures = Vec::new();
    for sample in &samples {
        let output = remora_check(sample, &[]).await;
        let stdout = text(&output.stdout);
        let summary: Vec<&str> = stdout.lines().filter(|line| !line.trim().is_empty()).collect();
        if output.status.code() != Some(0) || summary.len() != 1 {
            failures.push(format!(
                "{}: exit {:?}, stdout {:?}, stderr:\n{}",
                sample.display(),
                output.status.code(),
                stdout,
                text(&output.stderr)
            ));
        }
    }
    eprintln!("checked {} sample configs: {samples:?}", samples.len());
    assert!(
        failures.is_empty(),
        "`remora check` must pass (exit 0, one summary line) on:\n{}",
        failures.join("\n")
    );
}

const VALID: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
name = "all"
listener = "public"
match = { path_prefix = "/" }
backends = [{ cluster = "payments", weight = 1 }]

[clusters.payments]
version = "v1"
endpoints = ["127.0.0.1:9001"]
"#;

async fn check_text(toml: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.toml");
    std::fs::write(&path, toml).unwrap();
    remora_check(&path, env).await
}

#[tokio::test]
async fn a_valid_file_passes_with_a_one_line_summary() {
    let output = check_text(VALID, &[]).await;
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "one summary line, got {stdout:?}");
}

/// (what, file, lines that must each appear on stderr exactly)
fn invalid_cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let route = |listener: &str, cluster: &str, weight: u32| {
        format!(
            "[[routes]]\nlistener = \"{listener}\"\nmatch = {{ path_prefix = \"/\" }}\nbackends = [{{ cluster = \"{cluster}\", weight = {weight} }}]\n"
        )
    };
    let public = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n";
    let payments = "[clusters.payments]\nendpoints = [\"127.0.0.1:9001\"]\n";
    vec![
        (
            "a misspelt cluster",
            format!(
                "{public}{}{}{}{payments}",
                route("public", "payments", 1),
                route("public", "payments", 1),
                route("public", "paymnts", 1)
            ),
            vec![r#"routes[2].backends[0].cluster: unknown cluster "paymnts" (did you mean "payments"?)"#],
        ),
        (
            "a misspelt key",
            format!(
                "[admin]\nlisen = \"127.0.0.1:9901\"\n{public}{}{payments}",
                route("public", "payments", 1)
            ),
            vec![r#"admin.lisen: unknown key (did you mean "listen"?)"#],
        ),
        (
            "two listeners with one name",
            format!(
                "{public}[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8081\"\n{}{payments}",
                route("public", "payments", 1)
            ),
            vec![r#"listeners[1].name: duplicate listener name "public""#],
        ),
        (
            "weights adding up to 0",
            format!("{public}{}{payments}", route("public", "payments", 0)),
            vec!["routes[0].backends: the weights add up to 0: at least one backend needs a weight above 0"],
        ),
        (
            "a listener without a name",
            format!("[[listeners]]\nlisten = \"127.0.0.1:8080\"\n{payments}"),
            vec!["listeners[0].name: missing required key"],
        ),
        (
            "a misspelt balance",
            format!("{public}{}{payments}balance = \"round_robbin\"\n", route("public", "payments", 1)),
            vec![r#"clusters.payments.balance: unknown value "round_robbin" (did you mean "round_robin"?)"#],
        ),
        (
            "a misspelt listener",
            format!("{public}{}{payments}", route("publik", "payments", 1)),
            vec![r#"routes[0].listener: unknown listener "publik" (did you mean "public"?)"#],
        ),
        (
            "five mistakes at once, each reported",
            format!(
                "[admin]\nlisen = \"127.0.0.1:9901\"\n{public}{}{}{}{payments}balance = \"round_robbin\"\n",
                route("publik", "payments", 1),
                route("public", "payments", 0),
                route("public", "paymnts", 1)
            ),
            vec![
                r#"admin.lisen: unknown key (did you mean "listen"?)"#,
                r#"routes[0].listener: unknown listener "publik" (did you mean "public"?)"#,
                "routes[1].backends: the weights add up to 0: at least one backend needs a weight above 0",
                r#"routes[2].backends[0].cluster: unknown cluster "paymnts" (did you mean "payments"?)"#,
                r#"clusters.payments.balance: unknown value "round_robbin" (did you mean "round_robin"?)"#,
            ],
        ),
    ]
}

#[tokio::test]
async fn invalid_configs_fail_with_exit_2_and_every_error_as_path_colon_message() {
    let mut failures = Vec::new();
    for (what, toml, expected) in invalid_cases() {
        let output = check_text(&toml, &[]).await;
        let stderr = text(&output.stderr);
        let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
        let missing: Vec<&&str> = expected.iter().filter(|line| !lines.contains(line)).collect();
        if output.status.code() != Some(2) || !missing.is_empty() {
            failures.push(format!(
                "{what}: exit {:?}; missing lines {missing:#?}\n--- stderr ---\n{stderr}--- file ---\n{toml}",
                output.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[tokio::test]
async fn a_missing_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere").join("remora.toml");
    let output = remora_check(&path, &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a missing file is never an empty config; stderr: {stderr}");
    assert!(stderr.contains(&path.display().to_string()), "the error names {}: {stderr}", path.display());
}

#[tokio::test]
async fn env_fixes_a_bad_value_for_check() {
    let bad_access_log = format!("{VALID}\n[stats]\naccess_log = \"maybe\"\n");
    let output = check_text(&bad_access_log, &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "`access_log = \"maybe\"` is not a bool; stderr: {stderr}");
    assert!(stderr.lines().any(|line| line.starts_with("stats.access_log: ")), "stderr: {stderr}");
    let output = check_text(&bad_access_log, &[("REMORA_STATS__ACCESS_LOG", "true")]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "REMORA_STATS__ACCESS_LOG=true overrides it; stderr: {}",
        text(&output.stderr)
    );

    let bad_balance = format!("{VALID}balance = \"round_robbin\"\n");
    assert_eq!(check_text(&bad_balance, &[]).await.status.code(), Some(2));
    let output = check_text(&bad_balance, &[("REMORA_CLUSTERS__PAYMENTS__BALANCE", "round_robin")]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "the env var fixes the balance; stderr: {}",
        text(&output.stderr)
    );
}

/// A file whose admin port is taken (we hold it), and a route to an echo upstream.
fn busy_admin_config(busy: std::net::SocketAddr, up: std::net::SocketAddr) -> String {
    config(
        r#"[admin]
listen = "{BUSY}"

{LISTENER}
[[routes]]
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "up", weight = 1 }]

[clusters.up]
endpoints = ["{UP}"]
"#,
        &[("BUSY", &busy), ("UP", &up)],
    )
}

#[tokio::test]
async fn a_busy_admin_port_stops_start_up() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = Upstream::echo("up").await;
    match Proxy::try_start(&busy_admin_config(held.local_addr().unwrap(), up.addr), &[]).await {
        Ok(proxy) => {
            panic!("remora printed `{}` although its admin port {} is taken", proxy.ready, proxy.admin)
        }
        Err(failure) => {
            let status = failure.status.expect("remora should exit when it cannot bind its admin port");
            assert!(!status.success(), "exit status {status} after failing to bind");
        }
    }
}

#[tokio::test]
async fn env_override_moves_the_admin_server_off_a_busy_port() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap();
    let up = Upstream::echo("up").await;
    let proxy =
        Proxy::start_with_env(&busy_admin_config(busy, up.addr), &[("REMORA_ADMIN__LISTEN", "127.0.0.1:0")])
            .await;
    assert_ne!(proxy.admin, busy, "the admin server must not be on the file's (busy) address");

    let client = h1_client();
    let response = within(
        "GET /config",
        client.request(Request::get(proxy.admin_url("/config")).body(empty()).unwrap()),
    )
    .await
    .expect("GET /config on the overridden admin address");
    assert_eq!(response.status(), StatusCode::OK);
    let body = read_body("/config", response.into_body()).await;
    let running: serde_json::Value = serde_json::from_slice(&body).expect("/config is JSON");
    let listen =
        running["admin"]["listen"].as_str().unwrap_or_else(|| panic!("no admin.listen in {running}"));
    assert!(
        listen == "127.0.0.1:0" || listen == proxy.admin.to_string(),
        "/config shows admin.listen = {listen:?}; the override said 127.0.0.1:0 (bound at {})",
        proxy.admin
    );

    let response =
        within("GET via the proxy", client.request(Request::get(proxy.url("/x")).body(empty()).unwrap()))
            .await
            .expect("a request through the proxy started with the override");
    assert_eq!(Seen::of(&response).upstream, "up");
    drop(held);
}
