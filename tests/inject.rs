//! `remora inject` as a user runs it: the real binary on the fixtures in tests/fixtures/inject/,
//! through a path and through stdin, against the reviewed golden output; idempotence; and the exit
//! code and message for bad input.
//!
//! `REMORA_BLESS=1 cargo nextest run --test inject` rewrites the golden file from the binary's
//! output; review the diff before committing it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use yaml_serde::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_remora");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// `remora inject ARGS…`, with `stdin` written to its standard input when given.
fn inject(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BINARY)
        .arg("inject")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {BINARY}: {error}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("remora inject output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Injects `input` (a path) successfully and returns stdout.
fn injected(args: &[&str], stdin: Option<&str>) -> String {
    let output = inject(args, stdin);
    assert_eq!(output.status.code(), Some(0), "remora inject {args:?} failed: {}", stderr(&output));
    stdout(&output)
}

/// Compares with a golden file, or rewrites it under `REMORA_BLESS=1`.
fn assert_golden(actual: &str, golden: &Path) {
    if std::env::var_os("REMORA_BLESS").is_some() {
        std::fs::write(golden, actual).unwrap_or_else(|error| panic!("write {}: {error}", golden.display()));
        return;
    }
    let expected = read(golden);
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| actual.lines().count().min(expected.lines().count()) + 1, |index| index + 1);
        panic!(
            "output differs from {} from line {line} (REMORA_BLESS=1 rewrites it; review the diff)\n--- got ---\n{actual}",
            golden.display()
        );
    }
}

fn documents(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    list.as_sequence()
        .map(|items| items.iter().filter_map(|item| item["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn the_sample_workloads_inject_to_the_reviewed_golden_file() {
    let input = fixture("workloads.yaml");
    let output = inject(&[input.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_golden(&stdout(&output), &fixture("workloads.injected.yaml"));
}

#[test]
fn stdin_and_a_path_give_the_same_output() {
    let input = fixture("workloads.yaml");
    let from_path = injected(&[input.to_str().unwrap()], None);
    let text = read(&input);
    assert_eq!(injected(&["-"], Some(&text)), from_path, "`remora inject -` reads stdin");
    assert_eq!(injected(&[], Some(&text)), from_path, "`remora inject` with no file reads stdin");
}

#[test]
fn injecting_the_output_again_changes_no_byte() {
    let once = injected(&[fixture("workloads.yaml").to_str().unwrap()], None);
    let twice = injected(&["-"], Some(&once));
    assert!(
        once == twice,
        "a second injection changed the output:\n--- once ---\n{once}\n--- twice ---\n{twice}"
    );
}

#[test]
fn the_summary_on_stderr_names_every_document() {
    let output = inject(&[fixture("workloads.yaml").to_str().unwrap()], None);
    assert_eq!(
        stderr(&output).trim_end(),
        "injected deployment/web, injected statefulset/ledger, injected daemonset/log-shipper, \
         injected cronjob/nightly-report, injected job/backfill, injected pod/debug, \
         skipped service/web (not a workload), skipped configmap/shop-settings (not a workload), \
         skipped deployment/db (remora.io/inject: disabled), injected replicaset/legacy"
    );
}

/// What the golden file says, checked by structure (the golden is reviewed once; this pins the
/// properties a reviewer looks for, for every future change of it).
#[test]
fn the_output_has_one_of_each_remora_part_and_passes_the_rest_through() {
    let input = read(&fixture("workloads.yaml"));
    let output = injected(&["-"], Some(&input));
    let before = documents(&input);
    let after = documents(&output);
    assert_eq!(before.len(), after.len(), "no document lost or added");

    for (original, object) in before.iter().zip(&after) {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let template = match kind {
            "Service" | "ConfigMap" => {
                assert_eq!(original, object, "{kind}/{name} passes through");
                continue;
            }
            "Pod" => object,
            "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"],
            _ => &object["spec"]["template"],
        };
        if name == "db" {
            assert_eq!(original, object, "the disabled deployment passes through");
            continue;
        }
        let spec = &template["spec"];
        let (containers, init_containers) = (names(&spec["containers"]), names(&spec["initContainers"]));
        let every: Vec<&String> = containers.iter().chain(&init_containers).collect();
        for part in ["remora-proxy", "remora-init"] {
            assert_eq!(every.iter().filter(|name| **name == part).count(), 1, "{kind}/{name}: one {part}");
        }
        assert_eq!(names(&spec["volumes"]).iter().filter(|name| *name == "remora-config").count(), 1);
        assert_eq!(template["metadata"]["annotations"]["remora.io/injected"].as_str(), Some(VERSION));
        let native = matches!(kind, "Job" | "CronJob");
        assert_eq!(
            init_containers.contains(&"remora-proxy".to_owned()),
            native,
            "{kind}/{name}: sidecar placement"
        );
        let image = format!("ghcr.io/remora-mesh/remora:{VERSION}");
        let all = spec["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .chain(spec["initContainers"].as_sequence().unwrap());
        for container in all.filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("remora-"))) {
            assert_eq!(container["image"].as_str(), Some(image.as_str()), "{kind}/{name}: the default image");
        }
    }

    // The ledger's annotations reach the init container; the legacy one's old parts are updated.
    let ledger = &after[1]["spec"]["template"]["spec"];
    assert_eq!(names(&ledger["initContainers"]), ["migrate", "remora-init"]);
    let args: Vec<&str> =
        ledger["initContainers"][1]["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(
        args,
        [
            "init",
            "--proxy-uid",
            "2102",
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--skip-inbound-ports",
            "9901,22,5432",
            "--skip-outbound-ports",
            "3306"
        ]
    );
    let legacy = after.last().unwrap();
    assert_eq!(legacy["kind"], "ReplicaSet");
    assert_eq!(names(&legacy["spec"]["template"]["spec"]["containers"]), ["remora-proxy", "legacy"]);
    assert_eq!(legacy["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"], "remora-proxy");
}

#[test]
fn the_flags_set_image_uid_ports_and_config_map() {
    let output = injected(
        &[
            fixture("workloads.yaml").to_str().unwrap(),
            "--image",
            "registry.local/remora:dev",
            "--proxy-uid",
            "3000",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--admin-port",
            "15000",
            "--config-map",
            "mesh-proxy",
        ],
        None,
    );
    let web = &documents(&output)[0]["spec"]["template"]["spec"];
    let init = &web["initContainers"][0];
    assert_eq!(init["image"], "registry.local/remora:dev");
    let args: Vec<&str> = init["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(
        args,
        [
            "init",
            "--proxy-uid",
            "3000",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--skip-inbound-ports",
            "15000"
        ]
    );
    let proxy = &web["containers"][1];
    assert_eq!(proxy["name"], "remora-proxy");
    assert_eq!(proxy["securityContext"]["runAsUser"], 3000);
    let ports: Vec<u64> =
        proxy["ports"].as_sequence().unwrap().iter().filter_map(|p| p["containerPort"].as_u64()).collect();
    assert_eq!(ports, [15006, 15001, 15000]);
    assert_eq!(web["volumes"][1]["configMap"]["name"], "mesh-proxy");
}

#[test]
fn bad_yaml_exits_2_naming_the_document_and_line() {
    let path = fixture("bad-yaml.yaml");
    for (args, stdin) in [(vec![path.to_str().unwrap()], None), (vec!["-"], Some(read(&path)))] {
        let output = inject(&args, stdin.as_deref());
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "stderr: {message}");
        assert!(output.stdout.is_empty(), "nothing on stdout after an error");
        assert!(message.contains("document 2: invalid YAML"), "{message}");
        assert!(message.contains("line 15"), "the line in the whole file: {message}");
    }
}

#[test]
fn a_bad_annotation_exits_2_naming_the_document_object_and_annotation() {
    let output = inject(&[fixture("bad-annotation.yaml").to_str().unwrap()], None);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "stderr: {message}");
    assert!(output.stdout.is_empty(), "nothing on stdout after an error");
    assert!(
        message.contains(
            r#"document 2 (deployment/web): annotation remora.io/skip-inbound-ports: "22,ssh": "ssh" is not a port"#
        ),
        "{message}"
    );
}

#[test]
fn a_missing_file_exits_2_naming_it() {
    let path = fixture("no-such-file.yaml");
    let output = inject(&[path.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("no-such-file.yaml"), "{}", stderr(&output));
}
