//! Everything under `deploy/` is checked here against the real binary: the configs inside the
//! Kubernetes ConfigMaps and the compose directory pass `remora check`, every YAML file parses (every
//! Kubernetes document with apiVersion, kind and metadata.name), the injected example is exactly what
//! `remora inject` makes of its source, the Grafana dashboard asks only for metrics (and labels) a
//! running proxy exports, the Prometheus config passes `promtool check config`, the systemd units pass
//! `systemd-analyze verify` (and have their sandboxing keys), and the Dockerfile builds the image the
//! rest expects. The plain `deploy/**/*.toml` files are also checked by tests/config_check.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use http::Request;
use serde::Deserialize;
use yaml_serde::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const BINARY: &str = env!("CARGO_BIN_EXE_remora");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn files_under(dir: &Path, extensions: &[&str], found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| panic!("read {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_under(&path, extensions, found);
        } else if path
            .extension()
            .is_some_and(|extension| extensions.iter().any(|wanted| extension == *wanted))
        {
            found.push(path);
        }
    }
    found.sort();
}

/// Every non-empty document of a YAML file.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut documents = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => documents.push(value),
            Err(error) => panic!("{} document {}: invalid YAML: {error}", path.display(), index + 1),
        }
    }
    documents
}

fn kubernetes_documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    files_under(&deploy().join("kubernetes"), &["yaml", "yml"], &mut files);
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    files
        .into_iter()
        .flat_map(|path| yaml_documents(&path).into_iter().map(move |doc| (path.clone(), doc)))
        .collect()
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("run {BINARY} {args:?}: {error}"))
}

/// `remora check [--control] FILE` must pass with one summary line.
fn assert_check_passes(file: &Path, control: bool, what: &str) {
    let mut args = vec!["check", file.to_str().expect("UTF-8 path")];
    if control {
        args.push("--control");
    }
    let output = run(&args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "`remora {}` ({what}) failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_yaml_file_under_deploy_parses_and_every_manifest_names_itself() {
    let mut files = Vec::new();
    files_under(&deploy(), &["yaml", "yml"], &mut files);
    assert!(files.len() >= 5, "expected the manifests, compose and Prometheus files, found {files:?}");
    for file in &files {
        assert!(!yaml_documents(file).is_empty(), "{}: no documents", file.display());
    }
    for (path, document) in kubernetes_documents() {
        let name = document["metadata"]["name"].as_str().unwrap_or_default();
        let where_ = format!("{}: {}/{name}", path.display(), document["kind"].as_str().unwrap_or("?"));
        assert!(document["apiVersion"].as_str().is_some_and(|v| !v.is_empty()), "{where_}: apiVersion");
        assert!(document["kind"].as_str().is_some_and(|v| !v.is_empty()), "{where_}: kind");
        assert!(!name.is_empty(), "{where_}: metadata.name");
    }
}

#[test]
fn every_config_inside_a_configmap_passes_remora_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for (path, document) in kubernetes_documents() {
        if document["kind"] != "ConfigMap" {
            continue;
        }
        let map = document["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        for (key, value) in document["data"].as_mapping().into_iter().flatten() {
            let key = key.as_str().unwrap_or_default();
            if !key.ends_with(".toml") {
                continue;
            }
            let file = dir.path().join(format!("{map}-{key}"));
            std::fs::write(&file, value.as_str().expect("ConfigMap data are strings")).unwrap();
            let control = key.starts_with("control");
            assert_check_passes(&file, control, &format!("{} ConfigMap {map} key {key}", path.display()));
            checked.push(format!("{map}/{key}"));
        }
    }
    checked.sort();
    assert_eq!(checked, ["remora-control/control.toml", "remora-proxy/remora.toml"]);
}

#[test]
fn the_injected_example_is_what_remora_inject_makes_of_its_source() {
    let example = deploy().join("kubernetes/example");
    let output = run(&["inject", example.join("app.yaml").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let generated = String::from_utf8(output.stdout).unwrap();
    let golden = example.join("app.injected.yaml");
    if std::env::var_os("REMORA_BLESS").is_some() {
        std::fs::write(&golden, &generated).unwrap();
    }
    assert!(
        read(&golden) == generated,
        "{} is stale: regenerate it with `remora inject deploy/kubernetes/example/app.yaml > {}` (or \
         REMORA_BLESS=1) and review the diff",
        golden.display(),
        golden.display()
    );
}

/// The example's parts fit together: the sidecar's ConfigMap and token Secret exist in its
/// namespace, its config reports to the control Service, and the images are this version's.
#[test]
fn the_kubernetes_manifests_refer_to_each_other_consistently() {
    let documents = kubernetes_documents();
    let find = |kind: &str, namespace: &str, name: &str| {
        documents.iter().map(|(_, document)| document).find(|document| {
            document["kind"] == kind
                && document["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
                && document["metadata"]["name"] == name
        })
    };
    let control = find("Service", "remora-system", "remora-control").expect("the control Service");
    let port = control["spec"]["ports"][0]["port"].as_u64().unwrap();
    let payments = find("Deployment", "shop", "payments").expect("the injected payments Deployment");
    let spec = &payments["spec"]["template"]["spec"];
    let volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "remora-config")
        .unwrap();
    let map = volume["configMap"]["name"].as_str().unwrap();
    let proxy_config = find("ConfigMap", "shop", map).unwrap_or_else(|| panic!("ConfigMap shop/{map}"));
    let toml = proxy_config["data"]["remora.toml"].as_str().unwrap();
    let url = format!("url = \"http://remora-control.remora-system.svc.cluster.local:{port}\"");
    assert!(toml.contains(&url), "the proxy config reports to the control Service ({url})");
    assert!(find("Secret", "shop", "remora-control-token").is_some(), "the sidecar's token Secret");
    assert!(find("Secret", "remora-system", "remora-control-token").is_some(), "control's token Secret");

    let image = format!("ghcr.io/remora-mesh/remora:{VERSION}");
    for (path, document) in &documents {
        let text = yaml_serde::to_string(document).unwrap();
        for line in text.lines().filter(|line| line.contains("image: ghcr.io/remora-mesh/remora")) {
            assert!(
                line.trim_start_matches("- ").trim().ends_with(&image),
                "{}: {line} (want {image})",
                path.display()
            );
        }
    }
}

/// A mapping with its YAML merge key (`<<: *anchor`, which compose uses and `yaml_serde` leaves as
/// a plain key) applied: the merged entries first, the mapping's own winning.
fn merged(value: &Value) -> Value {
    let mut out = yaml_serde::Mapping::new();
    if let Some(Value::Mapping(base)) = value.get("<<") {
        out.extend(base.clone());
    }
    for (key, inner) in value.as_mapping().into_iter().flatten() {
        if key.as_str() != Some("<<") {
            out.insert(key.clone(), inner.clone());
        }
    }
    Value::Mapping(out)
}

#[test]
fn the_compose_file_runs_real_commands_with_checked_configs() {
    let dir = deploy().join("compose");
    let compose = &yaml_documents(&dir.join("compose.yaml"))[0];
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    assert_eq!(names, BTreeSet::from(["control", "demo-v1", "proxy"]));
    let uses = |service: &str, other: &str| {
        services[service]["depends_on"]
            .as_sequence()
            .is_some_and(|list| list.iter().any(|item| item == other))
    };
    assert!(uses("proxy", "control") && uses("proxy", "demo-v1"), "the proxy starts after what it talks to");
    let mut configs = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let service = &merged(service);
        let command: Vec<&str> =
            service["command"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        // clap refuses an unknown subcommand or flag, or a bad value, before it gets to --help.
        let mut help = command.clone();
        help.push("--help");
        let output = run(&help);
        assert!(
            output.status.success(),
            "{name}: `remora {}` is refused: {}",
            command.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(service["image"].as_str(), Some(format!("ghcr.io/remora-mesh/remora:{VERSION}").as_str()));
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if !source.starts_with("./") {
                continue;
            }
            let source = dir.join(source);
            let mut tomls = Vec::new();
            if source.is_dir() {
                files_under(&source, &["toml"], &mut tomls);
            } else {
                tomls.push(source.clone());
            }
            assert!(!tomls.is_empty(), "{name}: {} holds no config", source.display());
            for toml in tomls {
                assert!(toml.exists(), "{name} mounts {}, which is missing", toml.display());
                assert_check_passes(&toml, name == "control", &format!("compose service {name}"));
                configs += 1;
            }
        }
    }
    assert_eq!(configs, 2, "the control and proxy configs");
    // The proxy reaches the demo service and control by their compose names and ports.
    let proxy = read(&dir.join("proxy/remora.toml"));
    let demo: Vec<&str> =
        services["demo-v1"]["command"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    let listen =
        demo.iter().position(|arg| *arg == "--listen").map(|index| demo[index + 1]).expect("--listen");
    let port = listen.rsplit(':').next().unwrap();
    assert!(proxy.contains(&format!("\"demo-v1:{port}\"")), "the proxy's endpoint is demo-v1:{port}");
    let control = read(&dir.join("control.toml"));
    let control_port = control
        .lines()
        .find_map(|line| line.strip_prefix("listen = "))
        .unwrap()
        .trim_matches('"')
        .rsplit(':')
        .next()
        .unwrap();
    assert!(
        proxy.contains(&format!("url = \"http://control:{control_port}\"")),
        "the proxy reports to control:{control_port}"
    );
}

/// Sample names and label names of every series in a Prometheus text exposition, and the families
/// its `# TYPE` lines declare (some have no samples until something happens).
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap().to_owned(), words.next().unwrap_or_default());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    metrics.entry(format!("{name}{suffix}")).or_default();
                }
            }
            metrics.entry(name).or_default();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap();
            let labels = metrics.entry(line[..end].to_owned()).or_default();
            if line[end..].starts_with('{') {
                let inside = &line[end + 1..line.rfind('}').unwrap()];
                for pair in inside.split("\",") {
                    labels.insert(pair.split('=').next().unwrap().trim().to_owned());
                }
            }
        }
    }
    metrics
}

/// Every `expr` in a Grafana dashboard (panels, rows' panels), and the variables' queries.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("expr" | "definition", serde_json::Value::String(query)) => {
                            found.push(query.clone())
                        }
                        _ => walk(inner, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dashboard, &mut found);
    found
}

/// Identifiers in a PromQL query that name metrics (ours start with `remora_` or `process_`), and
/// label names used in `by (...)`, `on (...)` and `{...}` matchers.
fn promql_names(query: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let bytes: Vec<char> = query.chars().collect();
    let mut index = 0;
    while index < bytes.len() {
        if word(bytes[index]) && (index == 0 || !word(bytes[index - 1])) {
            let start = index;
            while index < bytes.len() && word(bytes[index]) {
                index += 1;
            }
            let ident: String = bytes[start..index].iter().collect();
            if ident.starts_with("remora_") || ident.starts_with("process_") {
                metrics.insert(ident);
            }
            continue;
        }
        index += 1;
    }
    // `by (a, b)` / `on (a)` groupings and `{a="x", b!~"y"}` matchers.
    for opener in ["by (", "on ("] {
        for piece in query.split(opener).skip(1) {
            let inside = piece.split(')').next().unwrap_or_default();
            labels.extend(
                inside.split(',').map(|label| label.trim().to_owned()).filter(|label| !label.is_empty()),
            );
        }
    }
    for piece in query.split('{').skip(1) {
        let inside = piece.split('}').next().unwrap_or_default();
        for matcher in inside.split(',') {
            let name: String = matcher.trim().chars().take_while(|c| word(*c)).collect();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
    }
    (metrics, labels)
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_and_labels_a_running_proxy_exports() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "all"
backends = [{ cluster = "up" }]

[clusters.up]
version = "v1"
endpoints = ["{UP}"]
breaker = { min_calls = 5 }
outlier = { consecutive_5xx = 5 }
"#,
        &[("UP", &up.addr)],
    ))
    .await;
    let client = h1_client();
    for path in ["/", "/x"] {
        let response =
            within("GET via the proxy", client.request(Request::get(proxy.url(path)).body(empty()).unwrap()))
                .await
                .expect("a request through the proxy");
        read_body(path, response.into_body()).await;
    }
    let response = within(
        "GET /metrics",
        client.request(Request::get(proxy.admin_url("/metrics")).body(empty()).unwrap()),
    )
    .await
    .expect("GET /metrics");
    let text = String::from_utf8(read_body("/metrics", response.into_body()).await.to_vec()).unwrap();
    let exported = exposition(&text);

    let path = deploy().join("grafana/remora.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array(), "a Grafana dashboard");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "the panels' queries: {queries:?}");
    // Labels the scrape adds (prometheus.yml's relabelling), and `le` of the histogram buckets.
    let target_labels = ["job", "instance", "namespace", "pod", "app", "node", "le"];
    let mut used = BTreeSet::new();
    for query in &queries {
        let (metrics, labels) = promql_names(query);
        for metric in &metrics {
            assert!(
                exported.contains_key(metric),
                "{}: {metric} is not in the proxy's /metrics:\n{query}\n{text}",
                path.display()
            );
        }
        let known: BTreeSet<&String> = metrics.iter().flat_map(|metric| &exported[metric]).collect();
        for label in &labels {
            assert!(
                target_labels.contains(&label.as_str()) || known.contains(label),
                "{}: label {label} is not on {metrics:?}:\n{query}",
                path.display()
            );
        }
        used.extend(metrics);
    }
    for wanted in [
        "remora_requests_total",
        "remora_request_duration_seconds_bucket",
        "remora_breaker_state",
        "remora_active_connections",
        "remora_config_reloads_total",
    ] {
        assert!(used.contains(wanted), "the dashboard shows {wanted}");
    }
}

#[test]
fn the_prometheus_config_scrapes_the_admin_port_and_passes_promtool() {
    let path = deploy().join("prometheus/prometheus.yml");
    let config = &yaml_documents(&path)[0];
    let jobs = config["scrape_configs"].as_sequence().expect("scrape_configs");
    let kubernetes =
        jobs.iter().find(|job| job["kubernetes_sd_configs"].is_sequence()).expect("a kubernetes_sd job");
    assert_eq!(kubernetes["kubernetes_sd_configs"][0]["role"], "pod");
    let keeps_admin = kubernetes["relabel_configs"].as_sequence().unwrap().iter().any(|rule| {
        rule["action"] == "keep"
            && rule["regex"] == "remora-admin"
            && rule["source_labels"][0] == "__meta_kubernetes_pod_container_port_name"
    });
    assert!(
        keeps_admin,
        "the kubernetes job keeps the pods' remora-admin port (what `remora inject` names it)"
    );
    assert!(jobs.iter().any(|job| job["static_configs"].is_sequence()), "a static example");
    assert!(jobs.iter().all(|job| job["metrics_path"].as_str().unwrap_or("/metrics") == "/metrics"));

    let promtool = |file: &Path| Command::new("promtool").args(["check", "config"]).arg(file).output();
    let output = match promtool(&path) {
        Ok(output) => output,
        Err(error) => {
            eprintln!("promtool not run ({error}); CI installs Debian's prometheus package for it");
            return;
        }
    };
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        return;
    }
    // Debian's promtool is built without Kubernetes discovery: check the rest of the file with it.
    assert!(
        said.contains("field kubernetes_sd_configs not found"),
        "promtool check config {}:\n{said}",
        path.display()
    );
    let mut without = config.clone();
    if let Some(jobs) = without["scrape_configs"].as_sequence_mut() {
        jobs.retain(|job| !job["kubernetes_sd_configs"].is_sequence());
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("prometheus.yml");
    std::fs::write(&copy, yaml_serde::to_string(&without).unwrap()).unwrap();
    let output = promtool(&copy).expect("promtool ran a moment ago");
    assert!(
        output.status.success(),
        "promtool check config (without the kubernetes_sd job this promtool lacks):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `[Section]` → key → values (a key may repeat), from a unit file.
fn unit_file(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = String::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            current = section.to_owned();
            sections.entry(current.clone()).or_default();
            continue;
        }
        let (key, value) =
            line.split_once('=').unwrap_or_else(|| panic!("line {}: not KEY=VALUE: {line}", number + 1));
        assert!(!current.is_empty(), "line {}: a key outside a section", number + 1);
        sections
            .entry(current.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

#[test]
fn the_systemd_units_are_sandboxed_and_pass_systemd_analyze_verify() {
    let dir = deploy().join("systemd");
    let mut units = Vec::new();
    files_under(&dir, &["service"], &mut units);
    let names: Vec<String> =
        units.iter().map(|unit| unit.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["remora-control.service", "remora-proxy.service"]);

    let scratch = tempfile::tempdir().unwrap();
    for unit in &units {
        let name = unit.file_name().unwrap().to_string_lossy().into_owned();
        let text = read(unit);
        let sections = unit_file(&text);
        let service = &sections["Service"];
        let value = |key: &str| service.get(key).and_then(|values| values.last()).map(String::as_str);
        for (key, wanted) in [
            ("ProtectSystem", Some("strict")),
            ("NoNewPrivileges", Some("yes")),
            ("AmbientCapabilities", Some("")),
            ("CapabilityBoundingSet", Some("")),
            ("KillSignal", Some("SIGTERM")),
        ] {
            assert_eq!(value(key), wanted, "{name}: {key}");
        }
        assert!(
            value("DynamicUser") == Some("yes") || value("User") == Some("remora"),
            "{name}: its own user"
        );
        let start = value("ExecStart").unwrap_or_default();
        let check = value("ExecStartPre").unwrap_or_default();
        if name == "remora-proxy.service" {
            assert_eq!(value("ExecReload"), Some("/bin/kill -HUP $MAINPID"), "the proxy reloads on SIGHUP");
            assert!(start.contains(" proxy --config "), "{start}");
        } else {
            assert_eq!(value("ExecReload"), None, "control does not reload on SIGHUP (it would end)");
            assert!(start.contains(" control --config "), "{start}");
            assert_eq!(value("StateDirectory"), Some("remora"), "the SQLite store's directory");
        }
        // The commands are the real binary's: clap accepts them (with --help, nothing runs).
        for command in [start, check] {
            let args: Vec<&str> = command.split_whitespace().skip(1).chain(["--help"]).collect();
            let output = run(&args);
            assert!(
                output.status.success(),
                "{name}: `{command}` is refused: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }

        // systemd-analyze checks the binary exists: point the copy at the one under test.
        let copy = scratch.path().join(&name);
        std::fs::write(&copy, text.replace("/usr/local/bin/remora", BINARY)).unwrap();
        match Command::new("systemd-analyze").arg("verify").arg(&copy).output() {
            Ok(output) => {
                let said = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                assert!(
                    output.status.success() && said.trim().is_empty(),
                    "systemd-analyze verify {name}:\n{said}"
                );
            }
            Err(error) => eprintln!("systemd-analyze not run ({error}); the units were checked as INI only"),
        }
    }
}

#[test]
fn the_dockerfile_builds_the_image_the_manifests_and_inject_expect() {
    let text = read(&deploy().join("Dockerfile"));
    let instructions: Vec<String> = text
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let has = |prefix: &str, needle: &str| {
        instructions.iter().any(|line| line.starts_with(prefix) && line.contains(needle))
    };
    assert!(has("FROM ", "rust:1-bookworm AS builder"), "a Rust builder stage");
    assert!(has("RUN ", "cargo build --release --locked"), "a locked release build");
    let runtime = instructions.iter().rev().find(|line| line.starts_with("FROM ")).unwrap();
    assert!(
        runtime.contains("debian:bookworm-slim") || runtime.contains("distroless/cc"),
        "a small runtime: {runtime}"
    );
    assert!(has("RUN ", "iptables"), "iptables for `remora init`");
    assert!(has("RUN ", "--uid 2102"), "the remora user has the UID the init rules skip");
    assert!(has("USER ", "2102"), "runs as remora by default");
    assert!(has("ENTRYPOINT ", "[\"remora\"]"), "remora is the entrypoint");
    assert!(
        deploy().join("Dockerfile.dockerignore").exists(),
        "the context (the repo root) leaves target/ out"
    );

    // The UID matches what `remora inject` puts in the sidecar's securityContext.
    let injected = &yaml_documents(&deploy().join("kubernetes/example/app.injected.yaml"));
    let payments = injected.iter().find(|document| document["kind"] == "Deployment").unwrap();
    let containers = payments["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
    let proxy = containers.iter().find(|container| container["name"] == "remora-proxy").unwrap();
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
}
