use std::net::SocketAddr;
use std::path::PathBuf;

use super::*;

/// The control example of `shared/CONFIG.md`, verbatim.
const CONTRACT: &str = r#"
listen = "127.0.0.1:9900"
store = "sqlite:///var/lib/remora/control.db"   # or "etcd://127.0.0.1:2379"
token_file = "/etc/remora/token"

[analysis]
interval = "1s"
window = "10s"
breach_windows = 3                  # degraded after this many breached windows in a row
held_retry = "0s"                   # a held node waits for an operator (`remora heal`); "15m": retried by itself
held_retry_max = "1h"               # each retry that ends held again doubles the wait, up to this

[rollout]
steps = [10, 25, 50, 100]
step_interval = "30s"
max_failed_checks = 1
progress_deadline = "10m"

[[nodes]]                           # per-node policy; the node itself registers from its proxy
name = "payments"
slo = { success_rate = 0.99, p99 = "250ms", min_requests = 20 }
hooks.remediate = { url = "http://127.0.0.1:9001/admin/remediate", timeout = "5s" }
hooks.regenerate = { command = ["deploy/demo/regenerate.sh"], timeout = "2m" }
hooks.retire = { command = ["deploy/demo/retire.sh"], timeout = "30s" }
"#;

fn load(text: &str) -> ControlConfig {
    load_control_str(text, Source::TextOnly).unwrap_or_else(|error| panic!("{error}"))
}

fn load_env(text: &str, variables: &[(&str, &str)]) -> Result<ControlConfig, LoadError> {
    let variables: Vec<(String, String)> =
        variables.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    load_with(text, &variables)
}

/// Every `path: message` of an invalid text.
fn errors(text: &str) -> Vec<String> {
    errors_of(load_control_str(text, Source::TextOnly))
}

fn errors_of(result: Result<ControlConfig, LoadError>) -> Vec<String> {
    match result {
        Ok(config) => panic!("expected errors, loaded {config:?}"),
        Err(error) => error.errors(),
    }
}

fn has(errors: &[String], expected: &str) -> bool {
    errors.iter().any(|error| error == expected)
}

#[test]
fn empty_file_gives_the_documented_defaults() {
    let config = load("");
    assert_eq!(config, ControlConfig::default());
    assert_eq!(config.listen, "127.0.0.1:9900".parse::<SocketAddr>().unwrap());
    assert_eq!(config.store, Store::Sqlite { path: PathBuf::from("remora-control.db") });
    assert_eq!(config.token, None);
    assert_eq!(
        config.analysis,
        Analysis {
            interval: Duration::from_secs(1),
            window: Duration::from_secs(10),
            breach_windows: 3,
            cooldown: Duration::from_secs(30),
            held_retry: Duration::from_secs(0),
            held_retry_max: Duration::from_secs(3600),
        }
    );
    assert_eq!(
        config.rollout,
        Rollout {
            steps: vec![10, 25, 50, 100],
            step_interval: Duration::from_secs(30),
            max_failed_checks: 1,
            progress_deadline: Duration::from_secs(600),
        }
    );
    assert!(config.nodes.is_empty());
    assert_eq!(config.slo("anyone"), Slo { success_rate: 0.99, p99: None, min_requests: 20 });
    assert_eq!(
        config.summary(),
        "listen 127.0.0.1:9900, store sqlite://remora-control.db, no token, 0 node policies"
    );
}

#[test]
fn contract_example_loads() {
    let config = load(CONTRACT);
    assert_eq!(config.store, Store::Sqlite { path: PathBuf::from("/var/lib/remora/control.db") });
    assert_eq!(config.token, Some(TokenSource::File(PathBuf::from("/etc/remora/token"))));
    assert_eq!(config.analysis, Analysis::default());
    assert_eq!(config.rollout, Rollout::default());
    assert_eq!(
        config.nodes,
        vec![NodePolicy {
            name: "payments".to_owned(),
            slo: Slo { success_rate: 0.99, p99: Some(Duration::from_millis(250)), min_requests: 20 },
            hooks: Hooks {
                remediate: Some(Hook {
                    target: HookTarget::Url("http://127.0.0.1:9001/admin/remediate".to_owned()),
                    timeout: Duration::from_secs(5),
                }),
                regenerate: Some(Hook {
                    target: HookTarget::Command(vec!["deploy/demo/regenerate.sh".to_owned()]),
                    timeout: Duration::from_secs(120),
                }),
                retire: Some(Hook {
                    target: HookTarget::Command(vec!["deploy/demo/retire.sh".to_owned()]),
                    timeout: Duration::from_secs(30),
                }),
            },
        }]
    );
    assert_eq!(config.slo("payments").p99, Some(Duration::from_millis(250)));
    assert!(config.node("orders").is_none());
}

#[test]
fn deploy_sample_loads() {
    let config = load(include_str!("../../../deploy/configs/control.toml"));
    assert_eq!(config.nodes.len(), 2);
    assert_eq!(config.nodes[1].slo, Slo { p99: Some(Duration::from_millis(500)), ..Slo::default() });
    assert_eq!(config.nodes[1].hooks, Hooks::default());
}

#[test]
fn hook_timeouts_default_per_hook() {
    let config = load(
        r#"
        [[nodes]]
        name = "a"
        hooks.remediate = { url = "https://heal.internal/a" }
        hooks.regenerate = { command = ["regen", "--node", "a"] }
        hooks.retire = { command = ["retire"] }
        "#,
    );
    let hooks = &config.nodes[0].hooks;
    assert_eq!(hooks.remediate.as_ref().unwrap().timeout, Duration::from_secs(5));
    assert_eq!(hooks.regenerate.as_ref().unwrap().timeout, Duration::from_secs(120));
    assert_eq!(
        hooks.regenerate.as_ref().unwrap().target,
        HookTarget::Command(vec!["regen".to_owned(), "--node".to_owned(), "a".to_owned()])
    );
    assert_eq!(hooks.retire.as_ref().unwrap().timeout, Duration::from_secs(30));
}

#[test]
fn store_urls_parse_and_display_back() {
    for (text, store) in [
        ("sqlite://remora-control.db", Store::Sqlite { path: PathBuf::from("remora-control.db") }),
        ("sqlite::memory:", Store::SqliteMemory),
        (
            "sqlite:///var/lib/remora/control.db",
            Store::Sqlite { path: PathBuf::from("/var/lib/remora/control.db") },
        ),
        (
            "etcd://127.0.0.1:2379,etcd-2.internal:2379",
            Store::Etcd {
                endpoints: vec![
                    Endpoint {
                        host: "127.0.0.1".to_owned(),
                        port: 2379,
                        socket_addr: Some("127.0.0.1:2379".parse().unwrap()),
                    },
                    Endpoint { host: "etcd-2.internal".to_owned(), port: 2379, socket_addr: None },
                ],
            },
        ),
    ] {
        assert_eq!(text.parse::<Store>(), Ok(store.clone()), "{text}");
        assert_eq!(store.to_string(), text);
        assert_eq!(load(&format!("store = {text:?}")).store, store);
    }
}

#[test]
fn bad_store_urls_are_refused_with_the_reason() {
    for (text, reason) in [
        ("sqlit://x.db", "unknown store scheme \"sqlit\" in \"sqlit://x.db\" (did you mean \"sqlite\"?)"),
        ("redis://x:1", "unknown store scheme \"redis\" in \"redis://x:1\" (expected one of: sqlite, etcd)"),
        ("control.db", "\"control.db\" is not a store URL"),
        ("sqlite://", "\"sqlite://\" names no file"),
        ("sqlite:control.db", "\"sqlite:control.db\" is not a store URL"),
        ("etcd://", "in \"etcd://\": \"\" is not an address with a port"),
        ("etcd://127.0.0.1", "in \"etcd://127.0.0.1\": \"127.0.0.1\" is not an address with a port"),
        ("etcd://a:2379,a:2379", "in \"etcd://a:2379,a:2379\": a:2379 is listed twice"),
        ("etcd://a:0", "in \"etcd://a:0\": \"a:0\" is not an address with a port"),
    ] {
        let error = text.parse::<Store>().unwrap_err();
        assert!(error.starts_with(reason), "{text}: {error}");
        let errors = errors(&format!("store = {text:?}"));
        assert_eq!(errors, vec![format!("store: {error}")]);
    }
}

#[test]
fn every_invalid_value_is_reported_with_its_path_at_once() {
    let errors = errors(
        r#"
        listen = "localhost"
        store = "sqlit:///x.db"
        token_file = ""

        [analysis]
        interval = "5s"
        window = "2s"
        breach_windows = 0

        [rollout]
        steps = [25, 10, 150, 12.5, "50%", 90]
        step_interval = "0s"
        max_failed_checks = 0
        progress_deadline = "0s"

        [[nodes]]
        name = "payments"
        slo = { success_rate = 1.5, p99 = "0s", min_requests = 0 }
        hooks.remediate = { url = "ftp://x", timeout = "0s" }
        hooks.regenerate = { command = "deploy/regenerate.sh --fast" }
        hooks.retire = { url = "http://x", command = ["retire"] }

        [[nodes]]
        name = "payments"
        hooks.remediate = {}

        [[nodes]]
        name = "bad name"
        slo = { success_rate = 0.0 }
        hooks.regenerate = { command = [] }
        "#,
    );
    let expected = [
        "listen: \"localhost\" is not an IP address with a port (e.g. \"127.0.0.1:9900\")",
        "store: unknown store scheme \"sqlit\" in \"sqlit:///x.db\" (did you mean \"sqlite\"?)",
        "token_file: cannot be empty (leave it out for no token)",
        "analysis.window: 2s is shorter than interval (5s): some reports would never be judged",
        "analysis.breach_windows: must be at least 1",
        "rollout.steps[1]: 10 does not increase on 25",
        "rollout.steps[2]: 150 is not a percentage in 1..=100",
        "rollout.steps[3]: 12.5 is not a whole percentage",
        "rollout.steps[4]: expected a percentage such as 25, found string \"50%\"",
        "rollout.step_interval: must be greater than zero",
        "rollout.progress_deadline: must be greater than zero",
        "rollout.max_failed_checks: must be at least 1 (1 rolls back at the first failed check)",
        "nodes[0].slo.success_rate: 1.5 is not a share in (0, 1] (0.99 is 99%)",
        "nodes[0].slo.p99: must be greater than zero (leave p99 out to judge no latency)",
        "nodes[0].slo.min_requests: must be at least 1",
        "nodes[0].hooks.remediate.url: \"ftp://x\" is not an http:// or https:// URL",
        "nodes[0].hooks.remediate.timeout: must be greater than zero",
        "nodes[0].hooks.regenerate.command: expected a list: the program, then its arguments, as in \
         [\"deploy/regenerate.sh --fast\"] (no shell is used)",
        "nodes[0].hooks.retire: set either url or command, not both",
        "nodes[1].name: duplicate node name \"payments\"",
        "nodes[1].hooks.remediate: set url (a webhook) or command (a program to run)",
        "nodes[2].name: \"bad name\" may only hold letters, digits, '-', '_' and '.'",
        "nodes[2].slo.success_rate: 0 is not a share in (0, 1] (0.99 is 99%)",
        "nodes[2].hooks.regenerate.command: needs at least the program to run",
    ];
    for error in expected {
        assert!(has(&errors, error), "missing {error:?} in:\n{}", errors.join("\n"));
    }
    assert_eq!(errors.len(), expected.len(), "{}", errors.join("\n"));
}

#[test]
fn steps_must_end_at_100() {
    assert_eq!(
        errors("rollout.steps = [10, 50]"),
        vec!["rollout.steps[1]: the last step must be 100 (the whole traffic), not 50"]
    );
    assert_eq!(
        errors("rollout.steps = []"),
        vec!["rollout.steps: needs at least one step, the last one 100"]
    );
    assert_eq!(
        errors("rollout.steps = [0, 100]"),
        vec!["rollout.steps[0]: 0 is not a percentage in 1..=100"]
    );
    assert_eq!(errors("rollout.steps = [100, 100]"), vec!["rollout.steps[1]: 100 does not increase on 100"]);
    assert_eq!(load("rollout.steps = [100]").rollout.steps, vec![100]);
    assert_eq!(load("rollout.steps = [1, 2, 100]").rollout.steps, vec![1, 2, 100]);
}

#[test]
fn progress_deadline_must_cover_a_step() {
    assert_eq!(
        errors("[rollout]\nstep_interval = \"1m\"\nprogress_deadline = \"30s\""),
        vec![
            "rollout.progress_deadline: 30s is shorter than step_interval (1m): no step could ever complete"
        ]
    );
}

#[test]
fn unknown_keys_get_a_suggestion_and_their_path() {
    let errors = errors(
        r#"
        lisen = "127.0.0.1:9900"
        [analysis]
        windw = "10s"
        [rollout]
        step = [10, 100]
        [[nodes]]
        name = "a"
        slo = { succes_rate = 0.9 }
        hooks.remedate = { url = "http://x" }
        [[nodes]]
        name = "b"
        hooks.retire = { url = "http://x", timout = "1s" }
        [[nodes]]
        nam = "c"
        "#,
    );
    let expected = [
        "lisen: unknown key (did you mean \"listen\"?)",
        "analysis.windw: unknown key (did you mean \"window\"?)",
        "rollout.step: unknown key (did you mean \"steps\"?)",
        "nodes[0].slo.succes_rate: unknown key (did you mean \"success_rate\"?)",
        "nodes[0].hooks.remedate: unknown key (did you mean \"remediate\"?)",
        "nodes[1].hooks.retire.timout: unknown key (did you mean \"timeout\"?)",
        "nodes[2].nam: unknown key (did you mean \"name\"?)",
    ];
    for error in expected {
        assert!(has(&errors, error), "missing {error:?} in:\n{}", errors.join("\n"));
    }
    assert_eq!(errors.len(), expected.len(), "{}", errors.join("\n"));
    let errors = self::errors("[admin]\nlisten = \"127.0.0.1:1\"");
    assert_eq!(
        errors,
        vec!["admin: unknown key (expected one of: listen, store, token_file, analysis, rollout, nodes)"]
    );
}

#[test]
fn type_errors_name_their_path() {
    let errors = errors("listen = 9900\nnodes = { name = \"a\" }\n[analysis]\ninterval = 5\n[[x]]\n");
    assert!(has(&errors, "listen: expected a string, found signed int `9900`"), "{errors:?}");
    assert!(has(&errors, "nodes: expected a list ([[nodes]])"), "{errors:?}");
    assert!(
        has(&errors, "analysis.interval: a duration needs a unit: write \"5s\" or \"5ms\""),
        "{errors:?}"
    );
    assert!(errors.iter().any(|error| error.starts_with("x: unknown key")), "{errors:?}");
    let errors = self::errors("[[nodes]]\nslo = { p99 = \"fast\" }");
    assert!(has(&errors, "nodes[0].name: missing required key"), "{errors:?}");
}

#[test]
fn environment_overrides_the_file() {
    let config = load_env(
        CONTRACT,
        &[
            ("REMORA_LISTEN", "0.0.0.0:9999"),
            ("REMORA_STORE", "etcd://127.0.0.1:2379"),
            ("REMORA_ANALYSIS__WINDOW", "30s"),
            ("REMORA_ROLLOUT__STEPS", "[5, 50, 100]"),
            ("REMORA_ROLLOUT__MAX_FAILED_CHECKS", "2"),
            ("REMORA_TOKEN_FILE", "/run/secrets/remora-token"),
            ("REMORA_NODES", r#"[{ name = "orders", slo = { p99 = "1s" } }]"#),
            // Not the control's: the proxy's keys, and variables that are not configuration.
            ("REMORA_ADMIN__LISTEN", "127.0.0.1:1"),
            ("REMORA_CONTROL__URL", "http://x"),
            ("REMORA_LOG", "debug"),
            ("PATH", "/usr/bin"),
        ],
    )
    .unwrap();
    assert_eq!(config.listen, "0.0.0.0:9999".parse::<SocketAddr>().unwrap());
    assert_eq!(config.store.to_string(), "etcd://127.0.0.1:2379");
    assert_eq!(config.analysis.window, Duration::from_secs(30));
    assert_eq!(config.analysis.interval, Duration::from_secs(1));
    assert_eq!(config.rollout.steps, vec![5, 50, 100]);
    assert_eq!(config.rollout.max_failed_checks, 2);
    assert_eq!(config.token, Some(TokenSource::File(PathBuf::from("/run/secrets/remora-token"))));
    assert_eq!(config.nodes.len(), 1);
    assert_eq!(config.nodes[0].name, "orders");
    assert_eq!(config.nodes[0].slo.p99, Some(Duration::from_secs(1)));
    // On an empty file too, and the prefix in any case.
    assert_eq!(load_env("", &[("remora_analysis__breach_windows", "5")]).unwrap().analysis.breach_windows, 5);
}

#[test]
fn environment_errors_are_reported_like_the_file_s() {
    let errors = errors_of(load_env(
        "",
        &[
            ("REMORA_ANALYSIS__WINDW", "30s"),
            ("REMORA_ROLLOUT__STEPS", "[50, 10]"),
            ("REMORA_LISTEN", "nowhere"),
        ],
    ));
    assert!(has(&errors, "analysis.windw: unknown key (did you mean \"window\"?)"), "{errors:?}");
    assert!(has(&errors, "rollout.steps[1]: 10 does not increase on 50"), "{errors:?}");
    assert!(
        has(&errors, "listen: \"nowhere\" is not an IP address with a port (e.g. \"127.0.0.1:9900\")"),
        "{errors:?}"
    );
}

#[test]
fn text_only_ignores_the_environment() {
    // `load_control_str` with `TextOnly` never looks; `load_with` is what `WithEnv` feeds.
    assert_eq!(load_with("", &[]).unwrap(), ControlConfig::default());
    assert_eq!(load(CONTRACT).token, Some(TokenSource::File(PathBuf::from("/etc/remora/token"))));
}

#[test]
fn token_from_the_environment_wins_over_token_file() {
    let config = load_env(CONTRACT, &[(TOKEN_ENV, "s3cret\n")]).unwrap();
    let Some(TokenSource::Environment(token)) = &config.token else { panic!("{:?}", config.token) };
    assert_eq!(token.as_str(), "s3cret");
    assert_eq!(config.token().unwrap().map(Token::into_string).as_deref(), Some("s3cret"));
    // An empty variable counts as unset.
    assert_eq!(load_env(CONTRACT, &[(TOKEN_ENV, "")]).unwrap().token, load(CONTRACT).token);
    // Without token_file.
    assert!(matches!(load_env("", &[(TOKEN_ENV, "t")]).unwrap().token, Some(TokenSource::Environment(_))));
    assert_eq!(
        errors_of(load_env("", &[(TOKEN_ENV, "two words")])),
        vec!["REMORA_CONTROL_TOKEN: the token may only hold visible ASCII characters (no spaces)"]
    );
}

#[test]
fn token_file_is_read_when_asked_and_trimmed() {
    let dir = std::env::temp_dir().join(format!("remora-control-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    let source = TokenSource::File(path.clone());
    assert!(matches!(source.read(), Err(LoadError::Io { .. })));
    let config = ControlConfig { token: Some(source.clone()), ..ControlConfig::default() };
    assert!(matches!(config.token(), Err(LoadError::Io { .. })));
    assert_eq!(ControlConfig::default().token().unwrap(), None);
    std::fs::write(&path, "  abc123\n").unwrap();
    assert_eq!(source.read().unwrap().as_str(), "abc123");
    std::fs::write(&path, "rotated\n").unwrap();
    assert_eq!(source.read().unwrap().as_str(), "rotated");
    std::fs::write(&path, "\n").unwrap();
    let error = source.read().unwrap_err();
    assert_eq!(error.errors(), vec![format!("token_file: {}: the token is empty", path.display())]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn token_never_shows_and_compares_whole() {
    let token = Token::new("abc").unwrap();
    assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    assert_eq!(
        serde_json::to_string(&TokenSource::Environment(token.clone())).unwrap(),
        r#"{"environment":"<redacted>"}"#
    );
    assert!(token.matches(b"abc"));
    assert!(!token.matches(b"abd"));
    assert!(!token.matches(b"ab"));
    assert!(!token.matches(b"abcd"));
    assert!(Token::new(&"x".repeat(Token::MAX_LEN + 1)).is_err());
}

#[test]
fn missing_file_is_an_error_not_defaults() {
    let error =
        load_control_file(std::path::Path::new("/nonexistent/control.toml"), Source::TextOnly).unwrap_err();
    assert!(matches!(error, LoadError::Io { .. }), "{error}");
}

#[test]
fn malformed_toml_is_reported() {
    let errors = errors("listen = \n");
    assert_eq!(errors.len(), 1, "{errors:?}");
}
