use yaml_serde::Value;

use super::*;

fn options() -> Options {
    Options { image: "remora:test".to_owned(), version: "9.9.9".to_owned(), ..Options::default() }
}

fn run(input: &str) -> (String, Vec<Summary>) {
    match inject(input, &options()) {
        Ok(result) => result,
        Err(error) => panic!("inject failed: {error}\n{input}"),
    }
}

fn error(input: &str) -> Error {
    match inject(input, &options()) {
        Ok((output, _)) => panic!("inject should fail, wrote:\n{output}"),
        Err(error) => error,
    }
}

fn parse(text: &str) -> Vec<Value> {
    stream::split(text)
        .iter()
        .map(|document| document.parse().unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .map(|items| items.iter().filter_map(|item| item["name"].as_str()).collect())
        .unwrap_or_default()
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1
";

#[test]
fn a_deployment_gets_the_init_container_the_sidecar_the_volume_and_the_mark() {
    let (output, summaries) = run(DEPLOYMENT);
    let object = &parse(&output)[0];
    let template = &object["spec"]["template"];
    assert_eq!(names(&template["spec"]["containers"]), ["web", "remora-proxy"]);
    assert_eq!(names(&template["spec"]["initContainers"]), ["remora-init"]);
    assert_eq!(names(&template["spec"]["volumes"]), ["remora-config"]);
    assert_eq!(template["spec"]["volumes"][0]["configMap"]["name"], "remora-proxy");
    assert_eq!(template["metadata"]["annotations"]["remora.io/injected"], "9.9.9");
    assert_eq!(template["metadata"]["labels"]["app"], "web", "untouched fields stay");
    assert_eq!(object["spec"]["replicas"], 2);

    let proxy = &template["spec"]["containers"][1];
    assert_eq!(proxy["image"], "remora:test");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], "remora-admin");
    assert_eq!(proxy["ports"][2]["containerPort"], 9901);
    let init = &template["spec"]["initContainers"][0];
    let args: Vec<&str> = init["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
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
            "9901"
        ]
    );
    assert_eq!(summaries.iter().map(ToString::to_string).collect::<Vec<_>>(), ["injected deployment/web"]);
}

#[test]
fn the_flags_reach_the_containers() {
    let options = Options {
        image: "registry.local/remora:dev".to_owned(),
        proxy_uid: 3000,
        inbound_port: 15006,
        outbound_port: 15001,
        admin_port: 15000,
        config_map: "mesh".to_owned(),
        version: "1.2.3".to_owned(),
    };
    let (output, _) = inject(DEPLOYMENT, &options).unwrap();
    let spec = &parse(&output)[0]["spec"]["template"]["spec"];
    let init = &spec["initContainers"][0];
    assert_eq!(init["image"], "registry.local/remora:dev");
    assert_eq!(init["args"][2], "3000");
    assert_eq!(init["args"][4], "15006");
    assert_eq!(init["args"][6], "15001");
    assert_eq!(init["args"][8], "15000");
    let proxy = &spec["containers"][1];
    assert_eq!(proxy["securityContext"]["runAsUser"], 3000);
    assert_eq!(proxy["ports"][0]["containerPort"], 15006);
    assert_eq!(proxy["ports"][1]["containerPort"], 15001);
    assert_eq!(proxy["ports"][2]["containerPort"], 15000);
    assert_eq!(proxy["env"][0]["value"], "0.0.0.0:15000");
    assert_eq!(spec["volumes"][0]["configMap"]["name"], "mesh");
}

#[test]
fn injecting_twice_changes_nothing_more() {
    let input = format!(
        "# lead\n{DEPLOYMENT}---\n# svc\napiVersion: v1\nkind: Service\nmetadata: {{name: web}} # kept\n---\n{}",
        DEPLOYMENT.replace("Deployment", "Job")
    );
    let (once, _) = run(&input);
    let (twice, _) = run(&once);
    assert_eq!(once, twice);
}

#[test]
fn existing_remora_parts_are_replaced_where_they_are() {
    let (once, _) = run(DEPLOYMENT);
    let edited = once.replace("image: remora:test", "image: remora:old");
    assert_ne!(edited, once);
    let mut object = parse(&edited).remove(0);
    let spec = &mut object["spec"]["template"]["spec"];
    // Move the sidecar first: it must be updated there, not added again.
    let containers = spec["containers"].as_sequence_mut().unwrap();
    containers.rotate_right(1);
    let moved = yaml_serde::to_string(&object).unwrap();
    let (output, _) = run(&moved);
    let spec = &parse(&output)[0]["spec"]["template"]["spec"];
    assert_eq!(names(&spec["containers"]), ["remora-proxy", "web"]);
    assert_eq!(names(&spec["initContainers"]), ["remora-init"]);
    assert_eq!(names(&spec["volumes"]), ["remora-config"]);
    assert_eq!(spec["containers"][0]["image"], "remora:test");
    assert_eq!(spec["initContainers"][0]["image"], "remora:test");
}

#[test]
fn jobs_get_a_native_sidecar_so_that_they_can_finish() {
    let job = DEPLOYMENT.replace("Deployment", "Job");
    let (output, _) = run(&job);
    let spec = &parse(&output)[0]["spec"]["template"]["spec"];
    assert_eq!(names(&spec["containers"]), ["web"]);
    assert_eq!(names(&spec["initContainers"]), ["remora-init", "remora-proxy"]);
    assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");

    let cron = "kind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: '0 3 * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          initContainers: [{name: migrate, image: m}]\n          containers: [{name: run, image: r}]\n";
    let (output, summaries) = run(cron);
    let spec = &parse(&output)[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(names(&spec["initContainers"]), ["remora-init", "remora-proxy", "migrate"]);
    assert_eq!(summaries[0].to_string(), "injected cronjob/nightly");
}

#[test]
fn user_init_containers_run_before_remora_init_in_container_placement() {
    let input = DEPLOYMENT.replace(
        "      containers:\n",
        "      initContainers:\n      - {name: fetch, image: f}\n      containers:\n",
    );
    let (output, _) = run(&input);
    let spec = &parse(&output)[0]["spec"]["template"]["spec"];
    assert_eq!(names(&spec["initContainers"]), ["fetch", "remora-init"]);
}

#[test]
fn a_pod_is_injected_and_gets_metadata_when_it_has_none_in_first_place() {
    let (output, summaries) = run("apiVersion: v1\nkind: Pod\nspec:\n  containers: [{name: a, image: a}]\n");
    let object = &parse(&output)[0];
    assert_eq!(names(&object["spec"]["containers"]), ["a", "remora-proxy"]);
    assert_eq!(object["metadata"]["annotations"]["remora.io/injected"], "9.9.9");
    assert_eq!(summaries[0].to_string(), "injected pod/(unnamed)");

    let template = "kind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers: [{name: a}]\n";
    let (output, _) = run(template);
    let objects = parse(&output);
    let keys: Vec<&str> =
        objects[0]["spec"]["template"].as_mapping().unwrap().keys().filter_map(Value::as_str).collect();
    assert_eq!(keys, ["metadata", "spec"]);
}

#[test]
fn other_kinds_disabled_and_host_network_workloads_pass_through_byte_for_byte() {
    let input = "\
kind: ConfigMap # a comment
metadata: {name: x}
data: {a: '1'}
---
kind: Deployment
metadata: {name: db}
spec:
  template:
    metadata:
      annotations: {remora.io/inject: disabled}
    spec: {containers: [{name: db}]}   # odd but kept
---
kind: DaemonSet
metadata: {name: agent}
spec: {template: {spec: {hostNetwork: true, containers: [{name: agent}]}}}
---
- a list
";
    let (output, summaries) = run(input);
    assert_eq!(output, input);
    let lines: Vec<String> = summaries.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "skipped configmap/x (not a workload)",
            "skipped deployment/db (remora.io/inject: disabled)",
            "skipped daemonset/agent (hostNetwork: the init rules would change the node's network)",
            "skipped document 4 (not a workload)",
        ]
    );
}

#[test]
fn skip_annotations_become_init_flags() {
    let input = DEPLOYMENT.replace(
        "      labels: {app: web}\n",
        "      labels: {app: web}\n      annotations:\n        remora.io/skip-inbound-ports: \"22, 5432\"\n        remora.io/skip-outbound-ports: 3306\n",
    );
    let (output, _) = run(&input);
    let init = &parse(&output)[0]["spec"]["template"]["spec"]["initContainers"][0];
    let args: Vec<&str> = init["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(args[7..], ["--skip-inbound-ports", "9901,22,5432", "--skip-outbound-ports", "3306"]);
}

#[test]
fn bad_annotations_are_errors_naming_the_document_object_and_annotation() {
    let with = |annotation: &str| {
        format!(
            "kind: Service\nmetadata: {{name: s}}\n---\n{}",
            DEPLOYMENT
                .replace("      labels: {app: web}\n", &format!("      annotations: {{{annotation}}}\n"))
        )
    };
    for (annotation, expected) in [
        (
            "remora.io/skip-inbound-ports: '22,ssh'",
            r#"document 2 (deployment/web): annotation remora.io/skip-inbound-ports: "22,ssh": "ssh" is not a port"#,
        ),
        (
            "remora.io/skip-outbound-ports: '70000'",
            r#"document 2 (deployment/web): annotation remora.io/skip-outbound-ports: "70000": "70000" is not a port"#,
        ),
        ("remora.io/skip-outbound-ports: '0'", r#""0" is not a port"#),
        ("remora.io/skip-outbound-ports: ''", "remora.io/skip-outbound-ports: \"\": no ports"),
        (
            "remora.io/inject: disbled",
            r#"annotation remora.io/inject: "disbled": must be "enabled" or "disabled""#,
        ),
    ] {
        let message = error(&with(annotation)).to_string();
        assert!(message.contains(expected), "{annotation}: got {message:?}, want {expected:?}");
    }
    assert!(matches!(
        error(&with("remora.io/skip-inbound-ports: '1,,2'")),
        Error::Annotation { document: 2, .. }
    ));
}

#[test]
fn invalid_yaml_is_an_error_with_the_document_and_line() {
    let input = "kind: ConfigMap\nmetadata: {name: a}\n---\n# two\nkind: Deployment\nmetadata: {name: [\n";
    match error(input) {
        Error::Yaml { document, message } => {
            assert_eq!(document, 2);
            assert!(message.contains("line 6") || message.contains("line 7"), "{message}");
        }
        other => panic!("not a YAML error: {other}"),
    }
    assert!(error("a: 1\n---\nb: :\n  - c\n d").to_string().starts_with("document 2: invalid YAML: "));
}

#[test]
fn a_workload_without_its_template_is_an_error() {
    let message = error("kind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n").to_string();
    assert_eq!(message, "document 1 (deployment/d): spec.template is missing or not a mapping");
    let message = error("kind: Pod\nmetadata: {name: p}\nspec: {containers: {a: 1}}\n").to_string();
    assert_eq!(message, "document 1 (pod/p): spec.containers is missing or not a list");
}

#[test]
fn empty_and_comment_only_input_passes_through() {
    for input in ["", "\n", "# nothing\n", "---\n---\n# x\n"] {
        let (output, summaries) = run(input);
        assert_eq!(output, input);
        assert!(summaries.is_empty());
    }
}

#[test]
fn ports_parse_as_comma_separated_lists() {
    assert_eq!(pod::parse_ports("22"), Ok(vec![22]));
    assert_eq!(pod::parse_ports(" 22 , 5432,65535"), Ok(vec![22, 5432, 65535]));
    for bad in ["", " ", "22,", "-1", "0", "65536", "22;23", "1-10", "http"] {
        assert!(pod::parse_ports(bad).is_err(), "{bad:?} should be refused");
    }
}
