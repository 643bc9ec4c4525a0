//! Sidecar mode for real, in network namespaces: `remora init` writing the iptables rules of a pod
//! (each test in a fresh namespace, so the host's own rules are never touched), then a client and
//! a server "pod" joined by a veth pair, with the server's traffic intercepted by those rules and
//! carried by `remora proxy` running as the proxy's UID.
//!
//! These tests need root (namespaces, iptables, setpriv); as another user they say SKIPPED and pass.
//! Everything they create is deleted when they end, failing or not (see tests/common/netns.rs).

mod common;

use std::process::Output;

use common::netns::{self, Namespace};

/// The `remora init` flags of most tests: every kind of skip, IPv4 only (IPv6 has its own test).
const FLAGS: &[&str] = &[
    "init",
    "--skip-inbound-ports",
    "22,5432",
    "--skip-outbound-ports",
    "3306",
    "--skip-outbound-cidrs",
    "10.96.0.1/32",
    "--ipv6",
    "off",
];

/// What `FLAGS` leave in the nat table of a fresh namespace, as iptables-save prints it.
const RULES: &[&str] = &[
    "-A PREROUTING -j REMORA_INBOUND",
    "-A OUTPUT -j REMORA_OUTPUT",
    "-A REMORA_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
    "-A REMORA_INBOUND -p tcp -m tcp --dport 5432 -j RETURN",
    "-A REMORA_INBOUND -p tcp -m tcp --dport 4143 -j RETURN",
    "-A REMORA_INBOUND -p tcp -m tcp --dport 4140 -j RETURN",
    "-A REMORA_INBOUND -p tcp -m tcp --dport 9901 -j RETURN",
    "-A REMORA_INBOUND -p tcp -j REDIRECT --to-ports 4143",
    "-A REMORA_OUTPUT -m owner --uid-owner 2102 -j RETURN",
    "-A REMORA_OUTPUT ! -d 127.0.0.0/8 -o lo -j REMORA_INBOUND",
    "-A REMORA_OUTPUT -o lo -j RETURN",
    "-A REMORA_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN",
    "-A REMORA_OUTPUT -d 10.96.0.1/32 -j RETURN",
    "-A REMORA_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
];

/// The helper the tests run inside namespaces (see `netns::helper_main`); not a test itself.
#[test]
#[ignore = "not a test: the TCP/HTTP helper other tests run inside a network namespace"]
fn netns_helper() {
    netns::helper_main();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `remora init ARGS…` in `namespace`, which must succeed.
fn init(namespace: &Namespace, args: &[&str]) -> Output {
    let output = namespace.remora(args);
    assert!(
        output.status.success(),
        "remora {args:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// Our part of the nat table: chain declarations and rules that name a REMORA chain.
fn ours(nat: &[String]) -> Vec<String> {
    nat.iter().filter(|line| line.contains("REMORA_")).cloned().collect()
}

fn expected(rules: &[&str]) -> Vec<String> {
    let mut lines = vec![":REMORA_INBOUND -".to_owned(), ":REMORA_OUTPUT -".to_owned()];
    lines.extend(rules.iter().map(|rule| (*rule).to_owned()));
    lines
}

#[test]
fn init_installs_the_rules_in_the_nat_table() {
    if !netns::root_or_skip("init_installs_the_rules_in_the_nat_table") {
        return;
    }
    let pod = Namespace::new("p");
    // A rule of someone else's, which must stay where it is.
    netns::run_ok(pod.command("iptables").args([
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "192.0.2.1/32",
        "-j",
        "RETURN",
    ]));

    let output = init(&pod, FLAGS);
    let nat = pod.nat("iptables-save");
    assert_eq!(ours(&nat), expected(RULES), "the nat table:\n{}", nat.join("\n"));
    assert!(nat.contains(&"-A OUTPUT -d 192.0.2.1/32 -j RETURN".to_owned()), "{}", nat.join("\n"));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("IPv4: installing 12 rules"), "{stderr}");
    assert!(stderr.contains("applied with iptables-restore --noflush"), "{stderr}");
    assert!(text(&output.stdout).is_empty(), "a real run prints nothing on stdout");
}

#[test]
fn a_second_init_leaves_exactly_one_set_of_rules() {
    if !netns::root_or_skip("a_second_init_leaves_exactly_one_set_of_rules") {
        return;
    }
    let pod = Namespace::new("p");
    init(&pod, FLAGS);
    let once = pod.nat("iptables-save");
    let again = init(&pod, FLAGS);
    assert_eq!(pod.nat("iptables-save"), once, "a second identical run changed the table");
    assert!(text(&again.stderr).contains("replacing the earlier rules"), "{}", text(&again.stderr));

    // Other flags: the chains are replaced, and still one jump each.
    init(&pod, &["init", "--skip-inbound-ports", "2222", "--proxy-uid", "1337", "--ipv6", "off"]);
    let nat = pod.nat("iptables-save");
    let jumps = |jump: &str| nat.iter().filter(|line| *line == jump).count();
    assert_eq!((jumps("-A PREROUTING -j REMORA_INBOUND"), jumps("-A OUTPUT -j REMORA_OUTPUT")), (1, 1));
    assert!(nat.contains(&"-A REMORA_INBOUND -p tcp -m tcp --dport 2222 -j RETURN".to_owned()));
    assert!(nat.contains(&"-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN".to_owned()));
    assert!(
        !nat.iter().any(|line| line.contains("--dport 22 ") || line.contains("2102")),
        "{}",
        nat.join("\n")
    );

    // A duplicated jump (an older tool, a hand-made rule) is trimmed back to one.
    netns::run_ok(pod.command("iptables").args(["-t", "nat", "-A", "PREROUTING", "-j", "REMORA_INBOUND"]));
    init(&pod, FLAGS);
    assert_eq!(pod.nat("iptables-save"), once);
}

#[test]
fn cleanup_leaves_the_table_as_it_was_and_needs_nothing_there() {
    if !netns::root_or_skip("cleanup_leaves_the_table_as_it_was_and_needs_nothing_there") {
        return;
    }
    let pod = Namespace::new("p");
    // Nothing there yet: succeeds, changes nothing.
    let before = pod.nat("iptables-save");
    let output = init(&pod, &["init", "--cleanup", "--ipv6", "off"]);
    assert!(text(&output.stderr).contains("nothing of remora's"), "{}", text(&output.stderr));
    assert_eq!(pod.nat("iptables-save"), before);

    netns::run_ok(pod.command("iptables").args([
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "192.0.2.1/32",
        "-j",
        "RETURN",
    ]));
    let before = pod.nat("iptables-save");
    init(&pod, FLAGS);
    let output = init(&pod, &["init", "--cleanup", "--ipv6", "off"]);
    assert!(
        text(&output.stderr).contains("removing 2 jumps and REMORA_INBOUND, REMORA_OUTPUT"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(pod.nat("iptables-save"), before, "cleanup left something (or took someone else's rule)");
    init(&pod, &["init", "--cleanup", "--ipv6", "off"]);
    assert_eq!(pod.nat("iptables-save"), before);
}

#[test]
fn dry_run_prints_the_restore_input_and_changes_nothing() {
    if !netns::root_or_skip("dry_run_prints_the_restore_input_and_changes_nothing") {
        return;
    }
    let pod = Namespace::new("p");
    let before = pod.nat("iptables-save");
    let mut args = FLAGS.to_vec();
    args.push("--dry-run");
    let output = init(&pod, &args);
    let mut input =
        String::from("# iptables-restore --noflush\n*nat\n:REMORA_INBOUND - [0:0]\n:REMORA_OUTPUT - [0:0]\n");
    // The jumps come last in the input (they name chains the lines before fill).
    for rule in RULES[2..].iter().chain(&RULES[..2]) {
        input.push_str(rule);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    assert_eq!(text(&output.stdout), input);
    assert_eq!(pod.nat("iptables-save"), before, "--dry-run changed the nat table");

    // The printed input is what a real run applies.
    let file = write_temp(&input);
    let mut restore = pod.command("iptables-restore");
    restore.arg("--noflush").arg(file.path());
    netns::run_ok(&mut restore);
    assert_eq!(ours(&pod.nat("iptables-save")), expected(RULES));

    // A dry cleanup shows the removal, and removes nothing.
    let output = init(&pod, &["init", "--cleanup", "--dry-run", "--ipv6", "off"]);
    assert!(text(&output.stdout).contains("-D PREROUTING -j REMORA_INBOUND\n"), "{}", text(&output.stdout));
    assert_eq!(ours(&pod.nat("iptables-save")), expected(RULES));
}

fn write_temp(contents: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), contents).expect("write temp file");
    file
}

#[test]
fn ipv6_on_writes_the_ip6tables_rules_too() {
    if !netns::root_or_skip("ipv6_on_writes_the_ip6tables_rules_too") {
        return;
    }
    let pod = Namespace::new("p");
    init(
        &pod,
        &["init", "--ipv6", "on", "--skip-outbound-cidrs", "10.96.0.1/32,fd00::/8", "--proxy-mark", "0x66"],
    );
    let v6 = pod.nat("ip6tables-save");
    for rule in [
        "-A PREROUTING -j REMORA_INBOUND",
        "-A OUTPUT -j REMORA_OUTPUT",
        "-A REMORA_OUTPUT -m mark --mark 0x66 -j RETURN",
        "-A REMORA_OUTPUT ! -d ::1/128 -o lo -j REMORA_INBOUND",
        "-A REMORA_OUTPUT -d fd00::/8 -j RETURN",
        "-A REMORA_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert!(v6.contains(&rule.to_owned()), "{rule} missing from ip6tables:\n{}", v6.join("\n"));
    }
    assert!(!v6.iter().any(|line| line.contains("10.96.0.1")), "{}", v6.join("\n"));
    let v4 = pod.nat("iptables-save");
    assert!(v4.contains(&"-A REMORA_OUTPUT -d 10.96.0.1/32 -j RETURN".to_owned()));
    assert!(!v4.iter().any(|line| line.contains("fd00")), "{}", v4.join("\n"));

    // `--cleanup` without `--ipv6` removes the IPv6 rules too.
    init(&pod, &["init", "--cleanup"]);
    assert!(ours(&pod.nat("ip6tables-save")).is_empty());
    assert!(ours(&pod.nat("iptables-save")).is_empty());

    // Installing without `--ipv6` leaves IPv6 alone: its connections are not sent to listeners that
    // may take IPv4 only.
    init(&pod, &["init"]);
    assert!(ours(&pod.nat("ip6tables-save")).is_empty(), "{}", pod.nat("ip6tables-save").join("\n"));
    assert!(!ours(&pod.nat("iptables-save")).is_empty());
    init(&pod, &["init", "--cleanup"]);
}

#[test]
fn init_without_iptables_or_permission_fails_in_one_line() {
    if !netns::root_or_skip("init_without_iptables_or_permission_fails_in_one_line") {
        return;
    }
    let pod = Namespace::new("p");
    let missing =
        netns::output(pod.command("env").args(["PATH=/nonexistent", netns::BINARY, "init", "--ipv6", "off"]));
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        text(&missing.stderr),
        "remora init: IPv4: iptables-save not found on PATH (install the iptables package)\n"
    );

    // Not root (the proxy's own UID, say): refused by the kernel, said once.
    let dir = netns::shared_dir();
    let binary = netns::binary_for_others(dir.path());
    let refused = netns::output(pod.command_as(2102, &binary).args(["init", "--ipv6", "off"]));
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("remora init: IPv4: iptables-save failed ("), "{stderr}");
    assert!(ours(&pod.nat("iptables-save")).is_empty());
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    // Refused while parsing, before anything runs; still inside a namespace when root, so that a
    // value wrongly accepted could not change the host's rules.
    let pod = netns::is_root().then(|| Namespace::new("p"));
    for (args, named) in [
        (&["init", "--skip-inbound-ports", "22,70000"][..], "--skip-inbound-ports"),
        (&["init", "--skip-outbound-cidrs", "10.0.0.0/99"][..], "--skip-outbound-cidrs"),
        (&["init", "--proxy-mark", "0"][..], "--proxy-mark"),
        (&["init", "--ipv6", "sometimes"][..], "--ipv6"),
        (&["init", "--inbound-port", "4140"][..], "--inbound-port"),
    ] {
        let mut command = match &pod {
            Some(pod) => pod.command(netns::BINARY),
            None => std::process::Command::new(netns::BINARY),
        };
        let output = netns::output(command.args(args));
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains(named), "{args:?}: {}", text(&output.stderr));
    }
}

// ---------------------------------------------------------------------------------------------------
// End to end: a client pod and a server pod; the server pod has `remora init`'s rules and the proxy
// as UID 2102 with an inbound listener on 4143 and an outbound one on 4140.

/// The proxy's UID, as `remora init` and `remora inject` default it.
const PROXY_UID: u32 = 2102;

/// The sidecar's listeners and admin, as `remora inject`'s ConfigMap would have them; `{ROUTES}` is
/// whatever a test adds (routes, clusters, listener keys).
const SIDECAR: &str = r#"
[admin]
listen = "0.0.0.0:9901"

[[listeners]]
name = "inbound"
listen = "0.0.0.0:4143"
mode = "inbound"
{INBOUND}

[[listeners]]
name = "outbound"
listen = "127.0.0.1:4140"
mode = "outbound"

{ROUTES}
"#;

/// A server pod: the sidecar (running as [`PROXY_UID`] in the server namespace, behind `remora
/// init`'s rules) and the applications started beside it.
struct Pod {
    proxy: netns::Running,
    apps: Vec<netns::Running>,
    dir: tempfile::TempDir,
}

impl Pod {
    /// `remora init INIT_ARGS…` in the server namespace, then the proxy with `config` as its file.
    fn start(pair: &netns::Pair, init_args: &[&str], config: &str) -> Pod {
        Self::start_as(pair, init_args, config, Some(PROXY_UID))
    }

    /// As [`Pod::start`], the proxy running as `uid` (`None`: root, with CAP_NET_ADMIN).
    fn start_as(pair: &netns::Pair, init_args: &[&str], config: &str, uid: Option<u32>) -> Pod {
        let mut args = vec!["init", "--ipv6", "off"];
        args.extend_from_slice(init_args);
        init(&pair.server, &args);
        let dir = netns::shared_dir();
        let path = dir.path().join("remora.toml");
        std::fs::write(&path, config).expect("write the sidecar's config");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod config");
        let binary = netns::binary_for_others(dir.path());
        let mut command = match uid {
            Some(uid) => pair.server.command_as(uid, &binary),
            None => pair.server.command(&binary),
        };
        command.arg("proxy").arg("--config").arg(&path);
        let mut proxy = netns::Running::spawn("the sidecar proxy", command);
        proxy.wait_for("its ready line", |line| line.starts_with("ready:"));
        Pod { proxy, apps: Vec::new(), dir }
    }

    /// The sidecar's configuration file (watched: a write reloads it).
    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("remora.toml")
    }

    /// `remora demo-service` on `0.0.0.0:PORT` in `namespace`, answering `hello from LABEL`.
    fn app(&mut self, namespace: &Namespace, port: u16, label: &str) {
        self.apps.push(demo_service(namespace, port, label));
    }
}

fn demo_service(namespace: &Namespace, port: u16, label: &str) -> netns::Running {
    let listen = format!("0.0.0.0:{port}");
    let mut command = namespace.command(netns::BINARY);
    command.args(["demo-service", "--listen", &listen, "--label", label]);
    let mut app = netns::Running::spawn(&format!("demo-service {label}"), command);
    app.wait_for("its listening line", |line| line.starts_with("listening on"));
    app
}

fn sidecar_config(inbound: &str, routes: &str) -> String {
    SIDECAR.replace("{INBOUND}", inbound).replace("{ROUTES}", routes)
}

/// The proxy's /metrics, read inside the server namespace (the admin port is never redirected).
fn metrics(pair: &netns::Pair) -> String {
    let response = pair.server.http_get("http://127.0.0.1:9901/metrics", 1, &[]).remove(0);
    assert_eq!(response.status, 200, "/metrics: {response:?}");
    response.body
}

/// Reads /metrics until `ready` holds for it, and returns it. A counter may move a moment after the
/// client saw its last byte (a connection is counted as it ends), so each check waits for its
/// figures instead of reading once; after [`netns::DEADLINE`] the test fails with the last text.
fn metrics_until(pair: &netns::Pair, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + netns::DEADLINE;
    loop {
        let text = metrics(pair);
        if ready(&text) {
            return text;
        }
        if std::time::Instant::now() > deadline {
            panic!("/metrics never showed {what}:\n{text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut sum = 0;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once("} ") {
                Some(split) => split,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        let has = |(key, value): &(&str, &str)| {
            label_text.split(',').any(|pair| pair == format!("{key}=\"{value}\""))
        };
        if labels.iter().all(has) {
            sum += value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    sum
}

fn url(address: std::net::Ipv4Addr, port: u16) -> String {
    format!("http://{address}:{port}/")
}

#[test]
fn inbound_http_reaches_the_app_through_the_proxy() {
    if !netns::root_or_skip("inbound_http_reaches_the_app_through_the_proxy") {
        return;
    }
    let pair = netns::Pair::new();
    let mut pod = Pod::start(&pair, &[], &sidecar_config("", ""));
    pod.app(&pair.server, 8080, "v1");

    let responses = pair.client.http_get(&url(pair.server_ip, 8080), 5, &[]);
    for response in &responses {
        assert_eq!((response.status, response.body.as_str()), (200, "hello from v1\n"), "{response:?}");
    }
    // Counted by the proxy: they went through it.
    metrics_until(&pair, "the 5 requests counted by the inbound listener", |text| {
        metric(text, "remora_responses_total", &[("code", "2xx")]) == 5
            && metric(
                text,
                "remora_protocol_detections_total",
                &[("listener", "inbound"), ("result", "http1")],
            ) == 5
    });
    assert!(pod.proxy.is_running());
}

#[test]
fn inbound_http_follows_a_canary_split() {
    if !netns::root_or_skip("inbound_http_follows_a_canary_split") {
        return;
    }
    let pair = netns::Pair::new();
    let routes = r#"
[[routes]]
name = "app"
listener = "inbound"
backends = [{ cluster = "app-v1", weight = 50 }, { cluster = "app-v2", weight = 50 }]

[clusters.app-v1]
version = "v1"
endpoints = ["127.0.0.1:8080"]

[clusters.app-v2]
version = "v2"
endpoints = ["127.0.0.1:8081"]
"#;
    let mut pod = Pod::start(&pair, &[], &sidecar_config("", routes));
    pod.app(&pair.server, 8080, "v1");
    pod.app(&pair.server, 8081, "v2");

    let responses = pair.client.http_get(&url(pair.server_ip, 8080), 40, &[]);
    let answered = |label: &str| {
        responses.iter().filter(|response| response.header("x-demo-version") == Some(label)).count()
    };
    assert!(responses.iter().all(|response| response.status == 200), "{responses:?}");
    let (v1, v2) = (answered("v1"), answered("v2"));
    assert_eq!(v1 + v2, 40);
    // 50/50 over 40 requests: both sides answer (all on one side has odds of 2 in 10^12).
    assert!(v1 > 0 && v2 > 0, "v1 answered {v1}, v2 {v2}");
    metrics_until(&pair, &format!("route app's responses by version: v1 {v1}, v2 {v2}"), |text| {
        let counted = |version| {
            metric(text, "remora_responses_total", &[("route", "app"), ("version", version), ("code", "2xx")])
        };
        counted("v1") == v1 as u64 && counted("v2") == v2 as u64
    });
}

#[test]
fn inbound_opaque_tcp_is_byte_exact() {
    if !netns::root_or_skip("inbound_opaque_tcp_is_byte_exact") {
        return;
    }
    let pair = netns::Pair::new();
    let _pod = Pod::start(&pair, &[], &sidecar_config("", ""));
    let _echo = netns::Running::helper(&pair.server, &["echo", "0.0.0.0:7000"]);

    let len = 256 * 1024;
    let result =
        pair.client.helper_run(&["send-echo", &format!("{}:7000", pair.server_ip), &len.to_string(), "7"]);
    assert_eq!(result, [format!("echoed {len} bytes")]);
    metrics_until(&pair, &format!("one opaque connection of {len} bytes each way"), |text| {
        let inbound = [("listener", "inbound")];
        metric(text, "remora_tcp_connections_total", &inbound) == 1
            && metric(text, "remora_tcp_received_bytes_total", &inbound) == len as u64
            && metric(text, "remora_tcp_sent_bytes_total", &inbound) == len as u64
    });
}

#[test]
fn a_server_speaks_first_protocol_is_not_stalled() {
    if !netns::root_or_skip("a_server_speaks_first_protocol_is_not_stalled") {
        return;
    }
    let pair = netns::Pair::new();
    // 7001: detected (nothing comes from the client, so after detect_timeout it is TCP); 7002: an
    // opaque port, forwarded at once.
    let _pod =
        Pod::start(&pair, &[], &sidecar_config("detect_timeout = \"300ms\"\nopaque_ports = [7002]", ""));
    let greeting = "220 rmr.test ESMTP ready\r\n";
    let _detected = netns::Running::helper(&pair.server, &["greet", "0.0.0.0:7001", greeting]);
    let _opaque = netns::Running::helper(&pair.server, &["greet", "0.0.0.0:7002", greeting]);

    for port in [7001, 7002] {
        let read = pair.client.read_first(&format!("{}:{port}", pair.server_ip), greeting.len());
        assert_eq!(read, greeting, "port {port}");
    }
    // One detection ran out of time (7001); the opaque port skipped detection (7002).
    metrics_until(&pair, "one detection timeout and two opaque connections", |text| {
        metric(text, "remora_protocol_detections_total", &[("listener", "inbound"), ("result", "timeout")])
            == 1
            && metric(text, "remora_tcp_connections_total", &[("listener", "inbound")]) == 2
    });
}

#[test]
fn outbound_connections_reach_their_original_destination() {
    if !netns::root_or_skip("outbound_connections_reach_their_original_destination") {
        return;
    }
    let pair = netns::Pair::new();
    let _pod = Pod::start(&pair, &[], &sidecar_config("", ""));
    // The remote side: a service and an echo server in the client namespace (no rules there).
    let _remote = demo_service(&pair.client, 8080, "remote");
    let _echo = netns::Running::helper(&pair.client, &["echo", "0.0.0.0:7000"]);

    // The application side of the server pod: root, not the proxy's UID, so redirected to 4140.
    let responses = pair.server.http_get(&url(pair.client_ip, 8080), 3, &[]);
    assert!(responses.iter().all(|response| response.body == "hello from remote\n"), "{responses:?}");
    let len = 64 * 1024;
    let result =
        pair.server.helper_run(&["send-echo", &format!("{}:7000", pair.client_ip), &len.to_string(), "11"]);
    assert_eq!(result, [format!("echoed {len} bytes")]);

    // To no known service, HTTP included: forwarded as opaque TCP to the original destination.
    let metrics = metrics_until(&pair, "4 outbound opaque connections", |text| {
        metric(text, "remora_tcp_connections_total", &[("listener", "outbound")]) == 4
    });
    assert_eq!(metric(&metrics, "remora_loops_detected_total", &[]), 0, "{metrics}");
}

#[test]
fn the_proxys_own_connections_are_not_redirected() {
    if !netns::root_or_skip("the_proxys_own_connections_are_not_redirected") {
        return;
    }
    let pair = netns::Pair::new();
    let mut pod = Pod::start(&pair, &[], &sidecar_config("", ""));
    pod.app(&pair.server, 8080, "local");
    let _remote = demo_service(&pair.client, 8080, "remote");

    // Inbound, outbound, and the pod calling its own address (which goes to the inbound side): the
    // proxy's forwarding connections run as its UID and reach their targets directly.
    let inbound = pair.client.http_get(&url(pair.server_ip, 8080), 3, &[]);
    let outbound = pair.server.http_get(&url(pair.client_ip, 8080), 3, &[]);
    let own = pair.server.http_get(&url(pair.server_ip, 8080), 3, &[]);
    for (what, responses, body) in [
        ("inbound", &inbound, "hello from local\n"),
        ("outbound", &outbound, "hello from remote\n"),
        ("own address", &own, "hello from local\n"),
    ] {
        assert!(
            responses.iter().all(|response| response.status == 200 && response.body == body),
            "{what}: {responses:?}"
        );
    }
    // The own-address calls went through the inbound listener, like the client's.
    let metrics = metrics_until(&pair, "6 inbound HTTP/1 connections and 3 outbound ones", |text| {
        metric(text, "remora_protocol_detections_total", &[("listener", "inbound"), ("result", "http1")]) == 6
            && metric(text, "remora_tcp_connections_total", &[("listener", "outbound")]) == 3
    });
    assert_eq!(metric(&metrics, "remora_loops_detected_total", &[]), 0, "{metrics}");
}

/// The outbound route to the client namespace's port 8080 (a known service, served through a route
/// and its cluster's pool).
fn remote_route(pair: &netns::Pair) -> String {
    format!(
        "[[routes]]\nname = \"remote\"\nlistener = \"outbound\"\nbackends = [{{ cluster = \"remote\" }}]\n\n[clusters.remote]\nendpoints = [\"{}:8080\"]\n",
        pair.client_ip
    )
}

#[test]
fn without_the_uid_exemption_the_proxy_would_loop() {
    if !netns::root_or_skip("without_the_uid_exemption_the_proxy_would_loop") {
        return;
    }
    // The control for the test above: rules that exempt another UID send the proxy's own outbound
    // connections back into it, which it refuses and counts; so a zero there means something.
    // Port 8080 is a known service (HTTP through a route and the cluster's pool), 8081 is not
    // (opaque TCP to the original destination): both kinds of upstream connection are caught.
    let pair = netns::Pair::new();
    let routes = remote_route(&pair);
    let _pod = Pod::start(&pair, &["--proxy-uid", "2103"], &sidecar_config("", &routes));
    let _remote = demo_service(&pair.client, 8080, "remote");
    let _other = demo_service(&pair.client, 8081, "other");
    let looped = netns::output(&mut pair.server.helper(&["get", &url(pair.client_ip, 8081), "1"]));
    assert!(!looped.status.success(), "a looping connection got an answer: {}", text(&looped.stdout));
    metrics_until(&pair, "a TCP loop on the outbound listener", |text| {
        metric(text, "remora_loops_detected_total", &[("listener", "outbound")]) >= 1
    });
    let routed = pair.server.http_get(&url(pair.client_ip, 8080), 1, &[]).remove(0);
    assert_eq!(routed.status, 502, "a looping request is answered by the proxy: {routed:?}");
    let metrics = metrics_until(&pair, "an HTTP loop on the outbound listener", |text| {
        metric(text, "remora_loops_detected_total", &[("listener", "outbound")]) >= 2
    });
    // One loop per request, not a chain of them.
    assert_eq!(metric(&metrics, "remora_loops_detected_total", &[("listener", "outbound")]), 2, "{metrics}");
}

#[test]
fn a_proxy_that_marks_its_connections_is_not_redirected_without_the_uid_exemption() {
    if !netns::root_or_skip("a_proxy_that_marks_its_connections_is_not_redirected_without_the_uid_exemption")
    {
        return;
    }
    // The rules skip another UID (so the UID rule does not spare this proxy) and mark 0x66; the
    // proxy (root, so allowed to set SO_MARK) marks what it dials with 0x66. The same two kinds of
    // upstream connection as in the loop test above now reach their destinations.
    let pair = netns::Pair::new();
    let routes = format!("[runtime]\nsocket_mark = 0x66\n{}", remote_route(&pair));
    let init = ["--proxy-uid", "2103", "--proxy-mark", "0x66"];
    let _pod = Pod::start_as(&pair, &init, &sidecar_config("", &routes), None);
    let _remote = demo_service(&pair.client, 8080, "remote");
    let _other = demo_service(&pair.client, 8081, "other");
    let routed = pair.server.http_get(&url(pair.client_ip, 8080), 2, &[]);
    assert!(routed.iter().all(|response| response.body == "hello from remote\n"), "{routed:?}");
    let opaque = pair.server.http_get(&url(pair.client_ip, 8081), 2, &[]);
    assert!(opaque.iter().all(|response| response.body == "hello from other\n"), "{opaque:?}");
    let metrics = metrics_until(&pair, "2 outbound opaque connections", |text| {
        metric(text, "remora_tcp_connections_total", &[("listener", "outbound")]) == 2
    });
    assert_eq!(metric(&metrics, "remora_loops_detected_total", &[]), 0, "{metrics}");
}

#[test]
fn a_proxy_that_may_not_mark_its_sockets_says_so_at_start() {
    if !netns::root_or_skip("a_proxy_that_may_not_mark_its_sockets_says_so_at_start") {
        return;
    }
    // Not root, so no CAP_NET_ADMIN: SO_MARK is refused, and the proxy stops before serving rather
    // than dial unmarked connections the rules would send back to it.
    let pair = netns::Pair::new();
    let dir = netns::shared_dir();
    let path = dir.path().join("remora.toml");
    std::fs::write(&path, "[runtime]\nsocket_mark = 0x66\n[[listeners]]\nname = \"outbound\"\nlisten = \"127.0.0.1:4140\"\nmode = \"outbound\"\n")
        .expect("write the config");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod config");
    let binary = netns::binary_for_others(dir.path());
    let output =
        netns::output(pair.server.command_as(PROXY_UID, &binary).arg("proxy").arg("--config").arg(&path));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("runtime.socket_mark") && stderr.contains("CAP_NET_ADMIN"), "{stderr}");
}

#[test]
fn a_reload_that_adds_a_mark_the_proxy_may_not_set_is_refused_and_it_keeps_serving() {
    if !netns::root_or_skip("a_reload_that_adds_a_mark_the_proxy_may_not_set_is_refused_and_it_keeps_serving")
    {
        return;
    }
    let pair = netns::Pair::new();
    let config = sidecar_config("", "");
    let pod = Pod::start(&pair, &[], &config);
    let _remote = demo_service(&pair.client, 8080, "remote");
    // Written in place: the file watcher reloads it.
    std::fs::write(pod.config_path(), format!("[runtime]\nsocket_mark = 0x66\n{config}")).expect("rewrite");
    metrics_until(&pair, "the reload refused", |text| {
        metric(text, "remora_config_reloads_total", &[("result", "failed")]) == 1
    });
    let responses = pair.server.http_get(&url(pair.client_ip, 8080), 2, &[]);
    assert!(responses.iter().all(|response| response.body == "hello from remote\n"), "{responses:?}");
    let running = pair.server.http_get("http://127.0.0.1:9901/config", 1, &[]).remove(0);
    let running: serde_json::Value = serde_json::from_str(&running.body).expect("/config is JSON");
    assert_eq!(running["runtime"]["socket_mark"], serde_json::Value::Null, "{running:#}");
    assert!(running["runtime"].get("socket_mark").is_some(), "the key is there: {running:#}");
}
