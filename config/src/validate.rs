//! Validation: raw values in, a whole [`Config`] or every error (with its path) out.
//!
//! Sections, list elements and clusters are read one at a time, so a mistake in `routes[0]` does not
//! hide another in `clusters.payments`. Cross-references (a route's listener, a backend's cluster)
//! are checked after every part has been read.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use figment::error::Kind;
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;

use crate::model::*;
use crate::raw::*;
use crate::{ConfigErrors, Duration};

pub fn figment(figment: &Figment) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let dict: Dict = match figment.extract() {
        Ok(dict) => dict,
        Err(error) => {
            for error in error {
                push_figment_error(&mut errors, "", error);
            }
            return Err(errors);
        }
    };
    let config = Validator { errors: &mut errors }.config(&dict);
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(errors),
    }
}

struct Validator<'a> {
    errors: &'a mut ConfigErrors,
}

/// A listener's mode- and protocol-specific keys, as read.
struct SidecarKeys {
    detect_timeout: Duration,
    opaque_ports: Vec<u16>,
    services: Vec<SocketAddr>,
}

impl Validator<'_> {
    fn config(&mut self, dict: &Dict) -> Option<Config> {
        for key in dict.keys() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                self.errors.push(key.clone(), unknown_key(key, TOP_LEVEL_KEYS));
            }
        }
        let admin = self.admin(dict.get("admin"));
        let runtime = self.runtime(dict.get("runtime"));
        let node = dict.get("node").and_then(|value| self.node(value));
        let control = dict.get("control").and_then(|value| self.control(value));
        let listeners = self.listeners(dict.get("listeners"));
        let clusters = self.clusters(dict.get("clusters"));
        // Names of clusters declared, even those with errors of their own, so that a route naming one
        // is not reported as well.
        let declared: Vec<&str> = match dict.get("clusters").and_then(Value::as_dict) {
            Some(clusters) => clusters.keys().map(String::as_str).collect(),
            None => Vec::new(),
        };
        let routes = self.routes(dict.get("routes"), &listeners, &declared);
        for (index, listener) in listeners.iter().enumerate() {
            if let Some(cluster) = &listener.cluster {
                if !declared.contains(&cluster.as_str()) {
                    self.errors.push(
                        format!("listeners[{index}].cluster"),
                        unknown_reference("cluster", cluster, &declared),
                    );
                }
            }
        }
        let stats = self.stats(dict.get("stats"));

        if let Some(admin) = &admin {
            for (index, listener) in listeners.iter().enumerate() {
                if listener.listen == admin.listen && admin.listen.port() != 0 {
                    self.errors.push(
                        format!("listeners[{index}].listen"),
                        format!("{} is also the admin address", listener.listen),
                    );
                }
            }
        }
        Some(Config {
            admin: admin?,
            runtime: runtime?,
            node,
            control,
            listeners,
            routes,
            clusters,
            stats: stats?,
        })
    }

    fn read<T: DeserializeOwned>(&mut self, value: &Value, path: &str) -> Option<T> {
        match value.deserialize::<T>() {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                for error in error {
                    push_figment_error(self.errors, path, error);
                }
                None
            }
        }
    }

    fn section<T: DeserializeOwned + Default>(&mut self, value: Option<&Value>, path: &str) -> Option<T> {
        match value {
            None => Some(T::default()),
            Some(value) => self.read(value, path),
        }
    }

    fn admin(&mut self, value: Option<&Value>) -> Option<Admin> {
        let raw: RawAdmin = self.section(value, "admin")?;
        let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:9901");
        let listen = self.socket_addr(listen, "admin.listen")?;
        Some(Admin { listen })
    }

    fn runtime(&mut self, value: Option<&Value>) -> Option<Runtime> {
        let raw: RawRuntime = self.section(value, "runtime")?;
        let workers = raw.workers.unwrap_or(0);
        if workers > 1024 {
            self.errors.push("runtime.workers", format!("{workers} worker threads is more than 1024"));
        }
        if raw.socket_mark == Some(0) {
            self.errors.push("runtime.socket_mark", "must not be 0 (every unmarked packet carries mark 0)");
        }
        Some(Runtime {
            workers,
            socket_mark: raw.socket_mark,
            grace_period: raw.grace_period.unwrap_or(Duration::from_secs(30)),
            drain_delay: raw.drain_delay.unwrap_or(Duration::from_secs(0)),
            handover_socket: raw.handover_socket,
            watch_config: raw.watch_config.unwrap_or(true),
        })
    }

    fn node(&mut self, value: &Value) -> Option<Node> {
        let raw: RawNode = self.read(value, "node")?;
        self.name(&raw.name, "node.name");
        let mut events = |list: &[String], key: &str| -> Vec<EventRef> {
            let mut parsed = Vec::new();
            for (index, text) in list.iter().enumerate() {
                match parse_event(text) {
                    Ok(event) => parsed.push(event),
                    Err(message) => self.errors.push(format!("node.{key}[{index}]"), message),
                }
            }
            parsed
        };
        let publishes = events(&raw.publishes, "publishes");
        let consumes = events(&raw.consumes, "consumes");
        Some(Node {
            name: raw.name,
            version: raw.version.unwrap_or_else(|| "v1".to_owned()),
            publishes,
            consumes,
        })
    }

    fn control(&mut self, value: &Value) -> Option<Control> {
        let raw: RawControl = self.read(value, "control")?;
        if !(raw.url.starts_with("http://") || raw.url.starts_with("https://")) {
            self.errors.push("control.url", format!("{:?} is not an http:// or https:// URL", raw.url));
        }
        let report_interval = raw.report_interval.unwrap_or(Duration::from_secs(1));
        if report_interval.is_zero() {
            self.errors.push("control.report_interval", "must be greater than zero");
        }
        Some(Control { url: raw.url, token_file: raw.token_file, report_interval })
    }

    fn listeners(&mut self, value: Option<&Value>) -> Vec<Listener> {
        let mut listeners: Vec<Listener> = Vec::new();
        let Some(elements) = self.array(value, "listeners") else { return listeners };
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (index, value) in elements.iter().enumerate() {
            let path = format!("listeners[{index}]");
            let Some(raw) = self.read::<RawListener>(value, &path) else { continue };
            self.name(&raw.name, &format!("{path}.name"));
            if !names.insert(raw.name.clone()) {
                self.errors.push(format!("{path}.name"), format!("duplicate listener name {:?}", raw.name));
            }
            let Some(listen) = self.socket_addr(&raw.listen, &format!("{path}.listen")) else { continue };
            if listen.port() != 0 && !addresses.insert(listen) {
                self.errors.push(format!("{path}.listen"), format!("{listen} is used by another listener"));
            }
            let defaults = HttpLimits::default();
            let limits = HttpLimits {
                max_header_bytes: raw.max_header_bytes.unwrap_or(defaults.max_header_bytes),
                max_headers: raw.max_headers.unwrap_or(defaults.max_headers),
                header_read_timeout: raw.header_read_timeout.unwrap_or(defaults.header_read_timeout),
            };
            if !(8192..=16 * 1024 * 1024).contains(&limits.max_header_bytes) {
                self.errors.push(format!("{path}.max_header_bytes"), "must be between 8192 and 16777216");
            }
            if !(1..=10_000).contains(&limits.max_headers) {
                self.errors.push(format!("{path}.max_headers"), "must be between 1 and 10000");
            }
            if limits.header_read_timeout.is_zero() {
                self.errors.push(format!("{path}.header_read_timeout"), "must be greater than zero");
            }
            let mode = raw.mode.unwrap_or(ListenerMode::Reverse);
            let protocol = raw.protocol.unwrap_or(ListenerProtocol::Auto);
            let sidecar = self.sidecar_keys(&raw, mode, protocol, &path);
            listeners.push(Listener {
                name: raw.name,
                listen,
                mode,
                protocol,
                limits,
                detect_timeout: sidecar.detect_timeout,
                opaque_ports: sidecar.opaque_ports,
                services: sidecar.services,
                cluster: raw.cluster,
            });
        }
        listeners
    }

    /// The keys that belong to one listener mode or protocol: `detect_timeout` and `opaque_ports`
    /// (inbound, outbound), `services` (outbound), `cluster` (reverse `tcp`, where it is required).
    /// Whether `cluster` names a cluster is checked once every cluster is read.
    fn sidecar_keys(
        &mut self,
        raw: &RawListener,
        mode: ListenerMode,
        protocol: ListenerProtocol,
        path: &str,
    ) -> SidecarKeys {
        let sidecar = mode != ListenerMode::Reverse;
        let detect_timeout = raw.detect_timeout.unwrap_or(DEFAULT_DETECT_TIMEOUT);
        if raw.detect_timeout.is_some() {
            if !sidecar {
                self.errors.push(
                    format!("{path}.detect_timeout"),
                    "only inbound and outbound listeners detect protocols (a reverse listener serves \
                     HTTP/1.1 and h2c on one port without waiting)",
                );
            } else if detect_timeout.is_zero() || detect_timeout.get() > std::time::Duration::from_secs(60) {
                self.errors.push(format!("{path}.detect_timeout"), "must be between 1ms and 60s");
            }
        }
        let opaque_ports = raw.opaque_ports.clone().unwrap_or_default();
        if raw.opaque_ports.is_some() && !sidecar {
            self.errors.push(
                format!("{path}.opaque_ports"),
                "only inbound and outbound listeners have original destinations (set protocol = \"tcp\" \
                 for an opaque reverse listener)",
            );
        }
        for (index, port) in opaque_ports.iter().enumerate() {
            if *port == 0 {
                self.errors.push(format!("{path}.opaque_ports[{index}]"), "0 is not a port");
            }
        }
        let mut services = Vec::new();
        if let Some(raw_services) = &raw.services {
            if mode != ListenerMode::Outbound {
                self.errors.push(
                    format!("{path}.services"),
                    "only outbound listeners route by original destination",
                );
            }
            for (index, text) in raw_services.iter().enumerate() {
                let at = format!("{path}.services[{index}]");
                if let Some(addr) = self.socket_addr(text, &at) {
                    if addr.port() == 0 {
                        self.errors.push(at, format!("{text:?} needs a port other than 0"));
                    } else {
                        services.push(addr);
                    }
                }
            }
        }
        let forwards_to_cluster = mode == ListenerMode::Reverse && protocol == ListenerProtocol::Tcp;
        match (&raw.cluster, forwards_to_cluster) {
            (None, true) => self.errors.push(
                format!("{path}.cluster"),
                "missing required key: a reverse tcp listener forwards each connection to a cluster",
            ),
            (Some(_), false) => self.errors.push(
                format!("{path}.cluster"),
                "only reverse listeners with protocol = \"tcp\" forward to a cluster (HTTP listeners \
                 use routes; inbound and outbound listeners the original destination)",
            ),
            _ => {}
        }
        SidecarKeys { detect_timeout, opaque_ports, services }
    }

    fn clusters(&mut self, value: Option<&Value>) -> BTreeMap<String, Cluster> {
        let mut clusters = BTreeMap::new();
        let Some(value) = value else { return clusters };
        let Some(dict) = value.as_dict() else {
            self.errors.push("clusters", "expected a table of clusters ([clusters.NAME])");
            return clusters;
        };
        for (name, value) in dict {
            let path = format!("clusters.{}", quote_key(name));
            self.name(name, &path);
            let Some(raw) = self.read::<RawCluster>(value, &path) else { continue };
            if let Some(cluster) = self.cluster(name, raw, &path) {
                clusters.insert(name.clone(), cluster);
            }
        }
        clusters
    }

    fn cluster(&mut self, name: &str, raw: RawCluster, path: &str) -> Option<Cluster> {
        if raw.endpoints.is_empty() {
            self.errors.push(format!("{path}.endpoints"), "a cluster needs at least one endpoint");
        }
        let mut endpoints = Vec::new();
        let mut seen = HashSet::new();
        for (index, text) in raw.endpoints.iter().enumerate() {
            let at = format!("{path}.endpoints[{index}]");
            match parse_endpoint(text) {
                Ok(endpoint) => {
                    if !seen.insert(endpoint.clone()) {
                        self.errors.push(at, format!("duplicate endpoint {endpoint}"));
                    } else {
                        endpoints.push(endpoint);
                    }
                }
                Err(message) => self.errors.push(at, message),
            }
        }
        let version = raw.version.unwrap_or_else(|| "default".to_owned());
        self.name(&version, &format!("{path}.version"));
        if let Some(node) = &raw.node {
            self.name(node, &format!("{path}.node"));
        }
        let connect_timeout = raw.connect_timeout.unwrap_or(Duration::from_secs(1));
        if connect_timeout.is_zero() {
            self.errors.push(format!("{path}.connect_timeout"), "must be greater than zero");
        }
        let limits = raw.limits.map(|raw| self.limits(raw, &format!("{path}.limits")));
        let breaker = raw.breaker.map(|raw| self.breaker(raw, &format!("{path}.breaker")));
        let outlier = raw.outlier.map(|raw| self.outlier(raw, &format!("{path}.outlier")));
        Some(Cluster {
            name: name.to_owned(),
            version,
            node: raw.node,
            endpoints,
            protocol: raw.protocol.unwrap_or(UpstreamProtocol::Http1),
            connect_timeout,
            idle_timeout: raw.idle_timeout.unwrap_or(Duration::from_secs(60)),
            balance: raw.balance.unwrap_or(Balance::P2cEwma),
            limits: limits.unwrap_or_default(),
            breaker,
            outlier,
        })
    }

    fn limits(&mut self, raw: RawLimits, path: &str) -> Limits {
        let defaults = Limits::default();
        let limits = Limits {
            max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
            max_pending_requests: raw.max_pending_requests.unwrap_or(defaults.max_pending_requests),
            max_requests: raw.max_requests.unwrap_or(defaults.max_requests),
            max_retries: raw.max_retries.unwrap_or(defaults.max_retries),
        };
        for (key, value) in
            [("max_connections", limits.max_connections), ("max_requests", limits.max_requests)]
        {
            if value == 0 {
                self.errors.push(format!("{path}.{key}"), "must be at least 1");
            }
        }
        limits
    }

    fn breaker(&mut self, raw: RawBreaker, path: &str) -> Breaker {
        let window = match (raw.window, raw.window_calls) {
            (Some(_), Some(_)) => {
                self.errors.push(
                    format!("{path}.window_calls"),
                    "set either window (time) or window_calls (count), not both",
                );
                BreakerWindow::Calls(100)
            }
            (Some(window), None) => {
                if window.is_zero() {
                    self.errors.push(format!("{path}.window"), "must be greater than zero");
                }
                BreakerWindow::Time(window)
            }
            (None, Some(calls)) => {
                if calls == 0 {
                    self.errors.push(format!("{path}.window_calls"), "must be at least 1");
                }
                BreakerWindow::Calls(calls)
            }
            (None, None) => BreakerWindow::Time(Duration::from_secs(10)),
        };
        let breaker = Breaker {
            window,
            min_calls: raw.min_calls.unwrap_or(20),
            failure_rate: raw.failure_rate.unwrap_or(0.5),
            slow_call_rate: raw.slow_call_rate.unwrap_or(1.0),
            slow_call_duration: raw.slow_call_duration.unwrap_or(Duration::from_secs(1)),
            open_for: raw.open_for.unwrap_or(Duration::from_secs(5)),
            max_open_for: raw.max_open_for.unwrap_or(Duration::from_secs(60)),
            half_open_calls: raw.half_open_calls.unwrap_or(3),
            failure_on: raw
                .failure_on
                .unwrap_or_else(|| ["5xx", "connect", "timeout", "reset"].map(str::to_owned).to_vec()),
        };
        for (key, rate) in
            [("failure_rate", breaker.failure_rate), ("slow_call_rate", breaker.slow_call_rate)]
        {
            if !(rate > 0.0 && rate <= 1.0) {
                self.errors.push(format!("{path}.{key}"), format!("{rate} is not a share in (0, 1]"));
            }
        }
        if breaker.min_calls == 0 {
            self.errors.push(format!("{path}.min_calls"), "must be at least 1");
        }
        if breaker.half_open_calls == 0 {
            self.errors.push(format!("{path}.half_open_calls"), "must be at least 1");
        }
        if breaker.open_for.is_zero() {
            self.errors.push(format!("{path}.open_for"), "must be greater than zero");
        }
        if breaker.max_open_for < breaker.open_for {
            self.errors.push(
                format!("{path}.max_open_for"),
                format!("{} is shorter than open_for ({})", breaker.max_open_for, breaker.open_for),
            );
        }
        const FAILURES: &[&str] = &["5xx", "4xx", "connect", "timeout", "reset", "gateway-error"];
        for (index, kind) in breaker.failure_on.iter().enumerate() {
            if !FAILURES.contains(&kind.as_str()) && parse_status(kind).is_none() {
                self.errors.push(format!("{path}.failure_on[{index}]"), unknown_value(kind, FAILURES));
            }
        }
        breaker
    }

    fn outlier(&mut self, raw: RawOutlier, path: &str) -> Outlier {
        let outlier = Outlier {
            consecutive_5xx: raw.consecutive_5xx.unwrap_or(5),
            consecutive_gateway_errors: raw.consecutive_gateway_errors.unwrap_or(5),
            base_ejection_time: raw.base_ejection_time.unwrap_or(Duration::from_secs(30)),
            max_ejection_time: raw.max_ejection_time.unwrap_or(Duration::from_secs(300)),
            max_ejection_percent: raw.max_ejection_percent.unwrap_or(10),
            min_healthy_percent: raw.min_healthy_percent.unwrap_or(50),
        };
        for (key, value) in [
            ("max_ejection_percent", outlier.max_ejection_percent),
            ("min_healthy_percent", outlier.min_healthy_percent),
        ] {
            if value > 100 {
                self.errors.push(format!("{path}.{key}"), format!("{value} is not a percentage (0 to 100)"));
            }
        }
        if outlier.max_ejection_time < outlier.base_ejection_time {
            self.errors.push(
                format!("{path}.max_ejection_time"),
                format!(
                    "{} is shorter than base_ejection_time ({})",
                    outlier.max_ejection_time, outlier.base_ejection_time
                ),
            );
        }
        outlier
    }

    fn routes(
        &mut self,
        value: Option<&Value>,
        listeners: &[Listener],
        cluster_names: &[&str],
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        let Some(elements) = self.array(value, "routes") else { return routes };
        let listener_names: Vec<&str> = listeners.iter().map(|listener| listener.name.as_str()).collect();
        let mut names = HashSet::new();
        for (index, value) in elements.iter().enumerate() {
            let path = format!("routes[{index}]");
            let Some(raw) = self.read::<RawRoute>(value, &path) else { continue };
            let name = raw.name.clone().unwrap_or_else(|| format!("route-{index}"));
            self.name(&name, &format!("{path}.name"));
            if !names.insert(name.clone()) {
                self.errors.push(format!("{path}.name"), format!("duplicate route name {name:?}"));
            }
            let route_listeners = match &raw.listener {
                Some(listener) => {
                    match listeners.iter().find(|candidate| candidate.name == *listener) {
                        None => self.errors.push(
                            format!("{path}.listener"),
                            unknown_reference("listener", listener, &listener_names),
                        ),
                        Some(named) if named.protocol == ListenerProtocol::Tcp => self.errors.push(
                            format!("{path}.listener"),
                            format!(
                                "listener {listener:?} forwards opaque TCP (protocol = \"tcp\"): routes do not apply"
                            ),
                        ),
                        Some(_) => {}
                    }
                    vec![listener.clone()]
                }
                // Sidecar listeners serve only the routes that name them: a route written for the
                // public port must not capture a pod's inbound or outbound traffic.
                None => {
                    let serving: Vec<String> = listeners
                        .iter()
                        .filter(|listener| listener.is_reverse_http())
                        .map(|listener| listener.name.clone())
                        .collect();
                    if serving.is_empty() && !listeners.is_empty() {
                        self.errors.push(
                            format!("{path}.listener"),
                            "missing required key: a route without `listener` serves the reverse HTTP \
                             listeners, and there are none (name the inbound or outbound listener it serves)",
                        );
                    }
                    serving
                }
            };
            let matcher = self.route_match(raw.matcher.unwrap_or_default(), &format!("{path}.match"));
            let sticky = raw.sticky.and_then(|sticky| self.sticky(sticky, &format!("{path}.sticky")));
            let backends = self.backends(raw.backends, &path, cluster_names);
            let retry = raw.retry.map(|retry| self.retry(retry, &format!("{path}.retry")));
            let timeout = raw.timeout.unwrap_or(Duration::from_secs(15));
            routes.push(Route {
                name,
                listeners: route_listeners,
                timeout: (!timeout.is_zero()).then_some(timeout),
                matcher,
                sticky,
                backends,
                retry,
            });
        }
        routes
    }

    fn route_match(&mut self, raw: RawMatch, path: &str) -> RouteMatch {
        let host = raw.host.map(|host| {
            let host = host.trim().to_ascii_lowercase();
            if let Some(suffix) = host.strip_prefix("*.") {
                if !is_hostname(suffix) {
                    self.errors.push(format!("{path}.host"), format!("{host:?} is not a host name"));
                }
                HostMatch::Suffix(format!(".{suffix}"))
            } else {
                if !is_hostname(&host) {
                    self.errors.push(format!("{path}.host"), format!("{host:?} is not a host name"));
                }
                HostMatch::Exact(host)
            }
        });
        let path_match = match (raw.path, raw.path_prefix) {
            (Some(_), Some(_)) => {
                self.errors
                    .push(format!("{path}.path_prefix"), "set either path (exact) or path_prefix, not both");
                PathMatch::default()
            }
            (Some(exact), None) => {
                self.url_path(&exact, &format!("{path}.path"));
                PathMatch::Exact(exact)
            }
            (None, Some(prefix)) => {
                self.url_path(&prefix, &format!("{path}.path_prefix"));
                PathMatch::Prefix(prefix)
            }
            (None, None) => PathMatch::default(),
        };
        let methods = match raw.method {
            None => Vec::new(),
            Some(OneOrMany::One(method)) => vec![method],
            Some(OneOrMany::Many(methods)) => methods,
        };
        let methods = methods
            .into_iter()
            .map(|method| {
                if method.is_empty() || !method.bytes().all(is_token_byte) {
                    self.errors.push(format!("{path}.method"), format!("{method:?} is not an HTTP method"));
                }
                method.to_ascii_uppercase()
            })
            .collect();
        let headers = raw
            .headers
            .into_iter()
            .map(|(name, value)| {
                if name.is_empty() || !name.bytes().all(is_token_byte) {
                    self.errors.push(format!("{path}.headers"), format!("{name:?} is not a header name"));
                }
                if value.bytes().any(|byte| byte < 0x20 && byte != b'\t' || byte == 0x7f) {
                    self.errors.push(
                        format!("{path}.headers.{name}"),
                        "header values cannot hold control characters",
                    );
                }
                (name.to_ascii_lowercase(), value)
            })
            .collect();
        RouteMatch { host, path: path_match, methods, headers }
    }

    fn sticky(&mut self, raw: RawSticky, path: &str) -> Option<Sticky> {
        match (raw.header, raw.cookie) {
            (Some(header), None) => {
                if header.is_empty() || !header.bytes().all(is_token_byte) {
                    self.errors.push(format!("{path}.header"), format!("{header:?} is not a header name"));
                }
                Some(Sticky::Header(header.to_ascii_lowercase()))
            }
            (None, Some(cookie)) => {
                if cookie.is_empty() || !cookie.bytes().all(is_token_byte) {
                    self.errors.push(format!("{path}.cookie"), format!("{cookie:?} is not a cookie name"));
                }
                Some(Sticky::Cookie(cookie))
            }
            (Some(_), Some(_)) => {
                self.errors.push(path.to_owned(), "set either header or cookie, not both");
                None
            }
            (None, None) => {
                self.errors.push(path.to_owned(), "set header or cookie");
                None
            }
        }
    }

    fn backends(&mut self, raw: Option<Vec<Value>>, path: &str, clusters: &[&str]) -> Vec<Backend> {
        let Some(raw) = raw else {
            self.errors
                .push(format!("{path}.backends"), "missing required key: a route needs at least one backend");
            return Vec::new();
        };
        if raw.is_empty() {
            self.errors.push(format!("{path}.backends"), "a route needs at least one backend");
        }
        let mut backends = Vec::new();
        let mut total: u64 = 0;
        let mut seen = HashSet::new();
        for (index, value) in raw.iter().enumerate() {
            let at = format!("{path}.backends[{index}]");
            let Some(backend) = self.read::<RawBackend>(value, &at) else { continue };
            if !clusters.contains(&backend.cluster.as_str()) {
                self.errors
                    .push(format!("{at}.cluster"), unknown_reference("cluster", &backend.cluster, clusters));
            }
            if !seen.insert(backend.cluster.clone()) {
                self.errors.push(
                    format!("{at}.cluster"),
                    format!("cluster {:?} is listed twice in this route", backend.cluster),
                );
            }
            let weight = backend.weight.unwrap_or(1);
            if weight > 1_000_000 {
                self.errors.push(format!("{at}.weight"), format!("{weight} is more than 1000000"));
            }
            total += u64::from(weight);
            backends.push(Backend { cluster: backend.cluster, weight });
        }
        if !raw.is_empty() && backends.len() == raw.len() && total == 0 {
            self.errors.push(
                format!("{path}.backends"),
                "the weights add up to 0: at least one backend needs a weight above 0",
            );
        }
        backends
    }

    fn retry(&mut self, raw: RawRetry, path: &str) -> Retry {
        let attempts = raw.attempts.unwrap_or(1);
        if attempts > 10 {
            self.errors.push(format!("{path}.attempts"), format!("{attempts} retries is more than 10"));
        }
        let budget_ratio = raw.budget_ratio.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&budget_ratio) {
            self.errors
                .push(format!("{path}.budget_ratio"), format!("{budget_ratio} is not a share in [0, 1]"));
        }
        let mut on = Vec::new();
        let conditions =
            raw.on.unwrap_or_else(|| vec![Value::from("connect-failure"), Value::from("refused-stream")]);
        const CONDITIONS: &[&str] = &["connect-failure", "reset", "refused-stream", "5xx", "gateway-error"];
        for (index, value) in conditions.iter().enumerate() {
            let at = format!("{path}.on[{index}]");
            let text = match value {
                Value::String(_, text) => text.clone(),
                Value::Num(_, number) => number.to_u128().map(|n| n.to_string()).unwrap_or_default(),
                _ => String::new(),
            };
            let condition = match text.as_str() {
                "connect-failure" => Some(RetryOn::ConnectFailure),
                "reset" => Some(RetryOn::Reset),
                "refused-stream" => Some(RetryOn::RefusedStream),
                "5xx" => Some(RetryOn::ServerError),
                "gateway-error" => Some(RetryOn::GatewayError),
                other => parse_status(other).map(RetryOn::Status),
            };
            match condition {
                Some(condition) => on.push(condition),
                None => self
                    .errors
                    .push(at, unknown_value(&text, CONDITIONS) + " or a status code such as \"503\""),
            }
        }
        let backoff_base = raw.backoff_base.unwrap_or(Duration::from_millis(25));
        let backoff_max = raw.backoff_max.unwrap_or(Duration::from_millis(250));
        if backoff_max < backoff_base {
            self.errors.push(
                format!("{path}.backoff_max"),
                format!("{backoff_max} is shorter than backoff_base ({backoff_base})"),
            );
        }
        Retry {
            attempts,
            per_try_timeout: raw.per_try_timeout.filter(|timeout| !timeout.is_zero()),
            on,
            budget_ratio,
            min_retries_per_second: raw.min_retries_per_second.unwrap_or(10),
            backoff_base,
            backoff_max,
        }
    }

    fn stats(&mut self, value: Option<&Value>) -> Option<Stats> {
        let raw: RawStats = self.section(value, "stats")?;
        let defaults = Stats::default();
        let stats = Stats {
            buckets_ms: raw.buckets_ms.unwrap_or(defaults.buckets_ms),
            access_log: raw.access_log.unwrap_or(defaults.access_log),
            interval: raw.interval.unwrap_or(defaults.interval),
        };
        if stats.interval.get() < std::time::Duration::from_millis(100) {
            self.errors.push("stats.interval", "must be at least 100ms");
        }
        if stats.buckets_ms.is_empty() {
            self.errors.push("stats.buckets_ms", "needs at least one bucket");
        }
        for (index, pair) in stats.buckets_ms.windows(2).enumerate() {
            if pair[1] <= pair[0] {
                self.errors.push(
                    format!("stats.buckets_ms[{}]", index + 1),
                    format!("{} does not increase on {}", pair[1], pair[0]),
                );
            }
        }
        if stats.buckets_ms.first().is_some_and(|first| *first <= 0.0 || !first.is_finite()) {
            self.errors.push("stats.buckets_ms[0]", "buckets must be positive");
        }
        Some(stats)
    }

    fn array<'v>(&mut self, value: Option<&'v Value>, path: &str) -> Option<&'v [Value]> {
        match value {
            None => None,
            Some(Value::Array(_, elements)) => Some(elements),
            Some(_) => {
                self.errors.push(path.to_owned(), format!("expected a list ([[{path}]])"));
                None
            }
        }
    }

    fn socket_addr(&mut self, text: &str, path: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.errors.push(
                    path.to_owned(),
                    format!("{text:?} is not an IP address with a port (e.g. \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }

    fn name(&mut self, name: &str, path: &str) {
        if let Err(message) = check_name(name) {
            self.errors.push(path.to_owned(), message);
        }
    }

    fn url_path(&mut self, text: &str, path: &str) {
        if !text.starts_with('/') {
            self.errors.push(path.to_owned(), format!("{text:?} must start with '/'"));
        } else if text.bytes().any(|byte| byte <= b' ' || byte == 0x7f || byte == b'?' || byte == b'#') {
            self.errors.push(path.to_owned(), format!("{text:?} is not a URL path"));
        }
    }
}

pub(crate) fn push_figment_error(errors: &mut ConfigErrors, base: &str, error: figment::Error) {
    let mut path = base.to_owned();
    for segment in &error.path {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(segment);
    }
    let message = match &error.kind {
        // figment's path already ends with the unknown key.
        Kind::UnknownField(field, expected) => unknown_key(field, expected),
        Kind::UnknownVariant(actual, expected) => unknown_value(actual, expected),
        Kind::MissingField(field) => {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(field);
            "missing required key".to_owned()
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::Message(message) => message.clone(),
        other => other.to_string(),
    };
    errors.push(path, message);
}

pub(crate) fn unknown_key(key: &str, expected: &[&str]) -> String {
    match did_you_mean(key, expected) {
        Some(candidate) => format!("unknown key (did you mean {candidate:?}?)"),
        None => format!("unknown key (expected one of: {})", expected.join(", ")),
    }
}

fn unknown_value(value: &str, expected: &[&str]) -> String {
    match did_you_mean(value, expected) {
        Some(candidate) => format!("unknown value {value:?} (did you mean {candidate:?}?)"),
        None => format!("unknown value {value:?} (expected one of: {})", expected.join(", ")),
    }
}

fn unknown_reference(kind: &str, name: &str, known: &[&str]) -> String {
    match did_you_mean(name, known) {
        Some(candidate) => format!("unknown {kind} {name:?} (did you mean {candidate:?}?)"),
        None if known.is_empty() => format!("unknown {kind} {name:?} (none are defined)"),
        None => format!("unknown {kind} {name:?} (known: {})", known.join(", ")),
    }
}

/// The closest candidate, when it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(word.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn quote_key(key: &str) -> String {
    if key.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn parse_event(text: &str) -> Result<EventRef, String> {
    let Some((name, major)) = text.rsplit_once('@') else {
        return Err(format!("{text:?} needs a major schema version: \"{text}@1\""));
    };
    let major =
        major.parse::<u32>().map_err(|_| format!("{major:?} in {text:?} is not a major version number"))?;
    if name.is_empty()
        || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'))
    {
        return Err(format!("{name:?} is not an event name (letters, digits, '.', '-', '_')"));
    }
    Ok(EventRef { name: name.to_owned(), major })
}

/// Names appear in metric labels and URLs: keep them plain. Also checks the versions desired state
/// brings (`crate::control`).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("cannot be empty".to_owned())
    } else if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')) {
        Err(format!("{name:?} may only hold letters, digits, '-', '_' and '.'"))
    } else {
        Ok(())
    }
}

/// A cluster's endpoint as the file writes it; also reads the endpoints desired state brings.
pub(crate) fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{text:?} needs a port other than 0"));
        }
        return Ok(Endpoint { host: addr.ip().to_string(), port: addr.port(), socket_addr: Some(addr) });
    }
    let invalid = || {
        format!(
            "{text:?} is not an address with a port (e.g. \"127.0.0.1:9001\" or \"payments.internal:80\")"
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if port == 0 || host.parse::<IpAddr>().is_ok() || !is_hostname(host) {
        return Err(invalid());
    }
    Ok(Endpoint { host: host.to_ascii_lowercase(), port, socket_addr: None })
}

fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

fn parse_status(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|status| (100..=599).contains(status))
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests;
