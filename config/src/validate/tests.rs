use crate::{load_str, HostMatch, LoadError, PathMatch, RetryOn, Source, Sticky};

/// The proxy example of `shared/CONFIG.md`, verbatim.
const CONTRACT: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[runtime]
workers = 0

[node]
name = "payments"
version = "v1"
publishes = ["payment.settled@2"]
consumes  = ["order.placed@1"]

[control]
url = "http://127.0.0.1:9900"
token_file = "/etc/remora/token"
report_interval = "1s"

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
mode = "reverse"
protocol = "auto"

[[routes]]
name = "api"
listener = "public"
timeout = "15s"
match = { host = "api.example.com", path_prefix = "/", method = "GET", headers = { "x-tenant" = "blue" } }
sticky = { header = "x-user-id" }
backends = [
  { cluster = "payments-v1", weight = 90 },
  { cluster = "payments-v2", weight = 10 },
]
retry = { attempts = 2, per_try_timeout = "500ms", on = ["connect-failure", "reset", "refused-stream", "503"], budget_ratio = 0.2, min_retries_per_second = 10 }

[clusters.payments-v1]
version = "v1"
endpoints = ["127.0.0.1:9001"]
protocol = "http1"
connect_timeout = "1s"
idle_timeout = "60s"
balance = "p2c_ewma"

[clusters.payments-v1.limits]
max_connections = 1024
max_pending_requests = 1024
max_requests = 1024
max_retries = 3

[clusters.payments-v1.breaker]
window = "10s"
min_calls = 20
failure_rate = 0.5
slow_call_rate = 1.0
slow_call_duration = "1s"
open_for = "5s"
max_open_for = "60s"
half_open_calls = 3
failure_on = ["5xx", "connect", "timeout", "reset"]

[clusters.payments-v1.outlier]
consecutive_5xx = 5
consecutive_gateway_errors = 5
base_ejection_time = "30s"
max_ejection_time = "300s"
max_ejection_percent = 10
min_healthy_percent = 50

[clusters.payments-v2]
version = "v2"
endpoints = ["127.0.0.1:9002", "127.0.0.1:9003"]

[stats]
buckets_ms = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
access_log = false
"#;

fn errors(text: &str) -> Vec<String> {
    match load_str(text, Source::TextOnly) {
        Ok(config) => panic!("expected errors, got a config: {config:?}"),
        Err(error) => error.errors(),
    }
}

fn assert_has(errors: &[String], expected: &str) {
    assert!(
        errors.iter().any(|error| error == expected),
        "missing error {expected:?} in:\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_contract_example_loads_as_written() {
    let config = load_str(CONTRACT, Source::TextOnly).expect("CONFIG.md example must load");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9901");
    assert_eq!(config.listeners.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.listeners, ["public"]);
    assert_eq!(route.matcher.host, Some(HostMatch::Exact("api.example.com".into())));
    assert_eq!(route.matcher.path, PathMatch::Prefix("/".into()));
    assert_eq!(route.matcher.methods, ["GET"]);
    assert_eq!(route.matcher.headers, [("x-tenant".to_owned(), "blue".to_owned())]);
    assert_eq!(route.sticky, Some(Sticky::Header("x-user-id".into())));
    assert_eq!(route.backends.iter().map(|backend| backend.weight).collect::<Vec<_>>(), [90, 10]);
    let retry = route.retry.as_ref().unwrap();
    assert_eq!(
        retry.on,
        [RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::RefusedStream, RetryOn::Status(503)]
    );
    let v1 = &config.clusters["payments-v1"];
    assert_eq!(v1.version, "v1");
    assert_eq!(v1.breaker.as_ref().unwrap().half_open_calls, 3);
    assert_eq!(v1.outlier.as_ref().unwrap().max_ejection_time.get().as_secs(), 300);
    assert_eq!(config.clusters["payments-v2"].endpoints.len(), 2);
    assert_eq!(config.node.as_ref().unwrap().publishes[0].to_string(), "payment.settled@2");
    assert_eq!(config.summary(), "1 listener, 1 route, 2 clusters (3 endpoints); node payments v1 served by route api (clusters payments-v1, payments-v2)");
}

#[test]
fn every_error_is_reported_with_its_path() {
    let errors = errors(
        r#"
[runtime]
socket_mark = 0

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[listeners]]
name = "public"
listen = "localhost"

[[routes]]
name = "a"
listener = "publik"
backends = [{ cluster = "payments", weight = 1 }]

[[routes]]
name = "b"
timeout = "soon"
backends = [{ cluster = "payments" }]

[[routes]]
name = "c"
backends = [{ cluster = "payments", weight = 0 }, { cluster = "paymnts", weight = 5 }]

[clusters.payments]
endpoints = ["127.0.0.1:9001", "nowhere"]
balance = "round_robbin"

[clusters.other]
endpoints = ["127.0.0.1:9002"]
node = "not a name"
"#,
    );
    assert_has(&errors, "runtime.socket_mark: must not be 0 (every unmarked packet carries mark 0)");
    assert!(errors.iter().any(|error| error.starts_with("clusters.other.node: ")), "{errors:?}");
    assert_has(&errors, "listeners[1].name: duplicate listener name \"public\"");
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("listeners[1].listen: \"localhost\" is not an IP address")),
        "{errors:?}"
    );
    assert_has(&errors, "routes[0].listener: unknown listener \"publik\" (did you mean \"public\"?)");
    assert!(
        errors.iter().any(|error| error.starts_with("routes[1].timeout: invalid duration \"soon\"")),
        "{errors:?}"
    );
    assert_has(
        &errors,
        "routes[2].backends[1].cluster: unknown cluster \"paymnts\" (did you mean \"payments\"?)",
    );
    assert_has(
        &errors,
        "clusters.payments.balance: unknown value \"round_robbin\" (did you mean \"round_robin\"?)",
    );
}

#[test]
fn unknown_keys_are_errors_with_suggestions() {
    let errors = errors(
        r#"
[admin]
lisen = "127.0.0.1:9901"

[statz]
access_log = true

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
backends = [{ cluster = "a", wieght = 3 }]

[clusters.a]
endpoints = ["127.0.0.1:9001"]
conect_timeout = "1s"
"#,
    );
    assert_has(&errors, "admin.lisen: unknown key (did you mean \"listen\"?)");
    assert_has(&errors, "statz: unknown key (did you mean \"stats\"?)");
    assert_has(&errors, "routes[0].backends[0].wieght: unknown key (did you mean \"weight\"?)");
    assert_has(&errors, "clusters.a.conect_timeout: unknown key (did you mean \"connect_timeout\"?)");
}

#[test]
fn weights_must_not_add_up_to_zero() {
    let errors = errors(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
backends = [{ cluster = "a", weight = 0 }, { cluster = "b", weight = 0 }]

[clusters.a]
endpoints = ["127.0.0.1:9001"]
[clusters.b]
endpoints = ["127.0.0.1:9002"]
"#,
    );
    assert_has(
        &errors,
        "routes[0].backends: the weights add up to 0: at least one backend needs a weight above 0",
    );
}

#[test]
fn missing_required_keys_and_bad_types_are_named() {
    let errors = errors(
        r#"
[[listeners]]
listen = "127.0.0.1:8080"

[[routes]]
name = "r"

[clusters.a]
endpoints = "127.0.0.1:9001"
"#,
    );
    assert_has(&errors, "listeners[0].name: missing required key");
    assert_has(&errors, "routes[0].backends: missing required key: a route needs at least one backend");
    assert!(errors.iter().any(|error| error.starts_with("clusters.a.endpoints: expected")), "{errors:?}");
}

#[test]
fn invalid_toml_is_one_clear_error() {
    let errors = errors("[[listeners]\nname = ");
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn a_missing_file_is_an_error_not_an_empty_config() {
    let error =
        crate::load_file(std::path::Path::new("/nonexistent/remora.toml"), Source::TextOnly).unwrap_err();
    assert!(matches!(error, LoadError::Io { .. }));
    assert!(error.to_string().contains("/nonexistent/remora.toml"));
}

#[test]
fn hostnames_and_wildcards_in_matches_and_endpoints() {
    let config = load_str(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
match = { host = "*.Example.com", path = "/exact" }
backends = [{ cluster = "a" }]

[clusters.a]
endpoints = ["payments.internal:8080", "[::1]:9001"]
"#,
        Source::TextOnly,
    )
    .unwrap();
    assert_eq!(config.routes[0].matcher.host, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!(config.routes[0].matcher.path, PathMatch::Exact("/exact".into()));
    assert_eq!(config.routes[0].timeout.unwrap().get().as_secs(), 15);
    assert_eq!(config.clusters["a"].endpoints[0].to_string(), "payments.internal:8080");
    assert_eq!(config.clusters["a"].endpoints[1].to_string(), "[::1]:9001");
}

/// A pod's sidecar: an inbound and an outbound listener, a reverse `tcp` listener, and routes that
/// name the listeners they serve.
const SIDECAR: &str = r#"
[[listeners]]
name = "inbound"
listen = "0.0.0.0:4143"
mode = "inbound"
opaque_ports = [3306]

[[listeners]]
name = "outbound"
listen = "127.0.0.1:4140"
mode = "outbound"
detect_timeout = "250ms"
services = ["10.96.0.10:80"]

[[listeners]]
name = "db"
listen = "127.0.0.1:5432"
protocol = "tcp"
cluster = "postgres"

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
name = "payments"
listener = "outbound"
backends = [{ cluster = "payments" }]

[[routes]]
name = "anywhere"
backends = [{ cluster = "payments" }]

[clusters.payments]
endpoints = ["10.0.0.5:80"]

[clusters.postgres]
endpoints = ["10.0.0.7:5432"]
"#;

#[test]
fn sidecar_listeners_load_with_their_keys_and_defaults() {
    let config = load_str(SIDECAR, Source::TextOnly).expect("the sidecar example must load");
    let [inbound, outbound, db, public] = &config.listeners[..] else { panic!("four listeners") };
    assert_eq!(
        (inbound.mode, inbound.protocol),
        (crate::ListenerMode::Inbound, crate::ListenerProtocol::Auto)
    );
    assert_eq!(inbound.detect_timeout.to_string(), "500ms");
    assert_eq!(inbound.opaque_ports, [3306]);
    assert_eq!(outbound.detect_timeout.to_string(), "250ms");
    assert_eq!(outbound.services, ["10.96.0.10:80".parse::<std::net::SocketAddr>().unwrap()]);
    assert_eq!(db.cluster.as_deref(), Some("postgres"));
    assert!(public.is_reverse_http() && !db.is_reverse_http() && !outbound.is_reverse_http());
    // A route without `listener` serves the reverse HTTP listeners only.
    assert_eq!(config.routes[0].listeners, ["outbound"]);
    assert_eq!(config.routes[1].listeners, ["public"]);
}

#[test]
fn listener_keys_out_of_their_mode_are_errors() {
    let errors = errors(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
detect_timeout = "1s"
opaque_ports = [0]
services = ["10.0.0.1:80"]
cluster = "db"

[[listeners]]
name = "raw"
listen = "127.0.0.1:8081"
protocol = "tcp"

[[listeners]]
name = "typo"
listen = "127.0.0.1:8082"
protocol = "tcp"
cluster = "dbb"

[[listeners]]
name = "out"
listen = "127.0.0.1:8083"
mode = "outbound"
detect_timeout = "0s"
services = ["10.0.0.1:0", "nope"]

[[routes]]
listener = "raw"
backends = [{ cluster = "db" }]

[clusters.db]
endpoints = ["127.0.0.1:5432"]
"#,
    );
    for expected in [
        "listeners[0].detect_timeout: only inbound and outbound listeners detect protocols (a reverse \
         listener serves HTTP/1.1 and h2c on one port without waiting)",
        "listeners[0].opaque_ports: only inbound and outbound listeners have original destinations (set \
         protocol = \"tcp\" for an opaque reverse listener)",
        "listeners[0].opaque_ports[0]: 0 is not a port",
        "listeners[0].services: only outbound listeners route by original destination",
        "listeners[0].cluster: only reverse listeners with protocol = \"tcp\" forward to a cluster (HTTP \
         listeners use routes; inbound and outbound listeners the original destination)",
        "listeners[1].cluster: missing required key: a reverse tcp listener forwards each connection to a \
         cluster",
        "listeners[2].cluster: unknown cluster \"dbb\" (did you mean \"db\"?)",
        "listeners[3].detect_timeout: must be between 1ms and 60s",
        "listeners[3].services[0]: \"10.0.0.1:0\" needs a port other than 0",
        "routes[0].listener: listener \"raw\" forwards opaque TCP (protocol = \"tcp\"): routes do not apply",
    ] {
        assert_has(&errors, expected);
    }
    assert!(errors.iter().any(|error| error.starts_with("listeners[3].services[1]: \"nope\" is not")));
}

#[test]
fn a_route_without_listener_needs_a_reverse_http_listener() {
    let errors = errors(
        r#"
[[listeners]]
name = "outbound"
listen = "127.0.0.1:4140"
mode = "outbound"

[[routes]]
backends = [{ cluster = "a" }]

[clusters.a]
endpoints = ["127.0.0.1:9001"]
"#,
    );
    assert_has(
        &errors,
        "routes[0].listener: missing required key: a route without `listener` serves the reverse HTTP \
         listeners, and there are none (name the inbound or outbound listener it serves)",
    );
}
