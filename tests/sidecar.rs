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

    init(&pod, &["init", "--cleanup", "--ipv6", "on"]);
    assert!(ours(&pod.nat("ip6tables-save")).is_empty());
    assert!(ours(&pod.nat("iptables-save")).is_empty());
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
