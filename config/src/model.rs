//! The validated configuration. Built only by `validate`, so a value of these types is known to be
//! whole: every reference resolves, every address parses, every weight set has a positive total.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Duration;

/// A whole, validated proxy configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub admin: Admin,
    pub runtime: Runtime,
    pub node: Option<Node>,
    pub control: Option<Control>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub clusters: BTreeMap<String, Cluster>,
    pub stats: Stats,
}

impl Config {
    /// One line for people: what this configuration holds, and where its node's traffic runs.
    pub fn summary(&self) -> String {
        let endpoints: usize = self.clusters.values().map(|cluster| cluster.endpoints.len()).sum();
        let node = self.node_summary().map(|node| format!("; {node}")).unwrap_or_default();
        format!(
            "{} {}, {} {}, {} {} ({} {}){node}",
            self.listeners.len(),
            plural(self.listeners.len(), "listener", "listeners"),
            self.routes.len(),
            plural(self.routes.len(), "route", "routes"),
            self.clusters.len(),
            plural(self.clusters.len(), "cluster", "clusters"),
            endpoints,
            plural(endpoints, "endpoint", "endpoints"),
        )
    }
}

fn plural<'a>(count: usize, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 {
        one
    } else {
        many
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Admin {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Runtime {
    /// Worker threads; 0 means one per core available to the process (cgroup-aware).
    pub workers: usize,
    /// How long in-flight requests get to finish on shutdown.
    pub grace_period: Duration,
    /// On SIGTERM or `POST /drain`: how long listeners keep accepting after `/ready` turns 503, so
    /// that load balancers (Kubernetes endpoints) stop sending first.
    pub drain_delay: Duration,
    /// Where a running proxy hands its listening sockets to a successor (`remora proxy --upgrade`).
    pub handover_socket: Option<std::path::PathBuf>,
    /// Reload when the configuration file changes (SIGHUP and `POST /reload` work either way).
    pub watch_config: bool,
    /// The packet mark (SO_MARK) on every connection a sidecar dials, for `remora init
    /// --proxy-mark` rules that skip marked traffic instead of the proxy's UID. Setting it needs
    /// CAP_NET_ADMIN. `None`, the default: unmarked.
    pub socket_mark: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    pub version: String,
    pub publishes: Vec<EventRef>,
    pub consumes: Vec<EventRef>,
}

/// An event type with its major schema version: `payment.settled@2`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventRef {
    pub name: String,
    pub major: u32,
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.major)
    }
}

impl Serialize for EventRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Control {
    pub url: String,
    pub token_file: Option<String>,
    pub report_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub mode: ListenerMode,
    pub protocol: ListenerProtocol,
    pub limits: HttpLimits,
    /// Inbound and outbound listeners with protocol `auto`: how long to wait for a client's first
    /// bytes before its connection is taken for opaque TCP (a server-speaks-first protocol). Default
    /// 500 ms.
    pub detect_timeout: Duration,
    /// Inbound and outbound listeners: connections whose original destination port is listed are
    /// forwarded as opaque TCP at once, without waiting for the client's first bytes.
    pub opaque_ports: Vec<u16>,
    /// Outbound listeners: original destinations served by the listener's routes, beside the
    /// endpoints of the clusters its routes send to.
    pub services: Vec<SocketAddr>,
    /// Reverse listeners with protocol `tcp`: the cluster each connection is forwarded to.
    pub cluster: Option<String>,
}

impl Listener {
    /// Whether this listener serves HTTP through routes of its own: a reverse listener that is not
    /// opaque TCP. Routes that name no listener serve these.
    pub fn is_reverse_http(&self) -> bool {
        self.mode == ListenerMode::Reverse && self.protocol != ListenerProtocol::Tcp
    }
}

/// How long an inbound or outbound listener waits for a client's first bytes by default.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Limits on what a client may send before its request is refused (431) or its connection closed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpLimits {
    /// Largest request head (request line and headers), in bytes. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in one request. Default 100.
    pub max_headers: usize,
    /// Time a client gets to send a whole request head, counted from the connection's start or the end
    /// of its previous response: it also closes idle keep-alive connections. Default 10 s.
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_header_bytes: 64 * 1024, max_headers: 100, header_read_timeout: Duration::from_secs(10) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    Reverse,
    Inbound,
    Outbound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Auto,
    Http1,
    Http2,
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    pub name: String,
    /// The listeners this route serves; every listener when the file names none.
    pub listeners: Vec<String>,
    /// Deadline for the response head, retries included; `None` when set to `"0s"`.
    pub timeout: Option<Duration>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub sticky: Option<Sticky>,
    pub backends: Vec<Backend>,
    pub retry: Option<Retry>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    /// Lower-case header names with the exact value each must have.
    pub headers: Vec<(String, String)>,
}

/// `api.example.com` (exact, any port) or `*.example.com` (any subdomain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    Exact(String),
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    Prefix(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".to_owned())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    Header(String),
    Cookie(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Retry {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
    pub budget_ratio: f64,
    pub min_retries_per_second: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    RefusedStream,
    /// Any 5xx status.
    ServerError,
    /// 502, 503 and 504.
    GatewayError,
    Status(u16),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub version: String,
    /// The node whose `version` this cluster runs, when named; see [`crate::NodeTraffic`].
    pub node: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub balance: Balance,
    pub limits: Limits,
    pub breaker: Option<Breaker>,
    pub outlier: Option<Outlier>,
}

/// An upstream address: `127.0.0.1:9001`, `[::1]:9001` or `payments.internal:9001`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Set when the host is an IP address, so no lookup is needed.
    pub socket_addr: Option<SocketAddr>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.socket_addr {
            Some(addr) => write!(f, "{addr}"),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// `HOST:PORT` as the config writes endpoints (`127.0.0.1:9002`, `[::1]:80`, `payments.internal:80`);
/// the error says what is wrong, quoting the text.
impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        crate::validate::parse_endpoint(text)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    P2cEwma,
    RoundRobin,
    LeastRequests,
}

/// Envoy-style concurrency limits (Envoy's defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Breaker {
    pub window: BreakerWindow,
    pub min_calls: u32,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub slow_call_duration: Duration,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_calls: u32,
    pub failure_on: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerWindow {
    Time(Duration),
    Calls(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_healthy_percent: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub buckets_ms: Vec<f64>,
    pub access_log: bool,
    /// The span of `/stats`' "last interval" figures.
    pub interval: Duration,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            buckets_ms: vec![
                1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            ],
            access_log: false,
            interval: Duration::from_secs(10),
        }
    }
}
