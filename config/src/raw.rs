//! The file's shape, key for key as `shared/CONFIG.md` writes it. Every struct refuses unknown keys;
//! lists whose elements can each be wrong on their own (`backends`) stay as raw values here and are
//! read one by one in `validate`, so that each error gets its own index in its path.

use std::collections::BTreeMap;

use figment::value::Value;
use serde::Deserialize;

use crate::Duration;

/// Top-level keys, for unknown-key suggestions.
pub const TOP_LEVEL_KEYS: &[&str] =
    &["admin", "runtime", "node", "control", "listeners", "routes", "clusters", "stats"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub workers: Option<usize>,
    pub socket_mark: Option<u32>,
    pub grace_period: Option<Duration>,
    pub drain_delay: Option<Duration>,
    pub handover_socket: Option<std::path::PathBuf>,
    pub watch_config: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    pub version: Option<String>,
    #[serde(default)]
    pub publishes: Vec<String>,
    #[serde(default)]
    pub consumes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub url: String,
    pub token_file: Option<String>,
    pub report_interval: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub mode: Option<crate::ListenerMode>,
    pub protocol: Option<crate::ListenerProtocol>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub header_read_timeout: Option<Duration>,
    pub detect_timeout: Option<Duration>,
    pub opaque_ports: Option<Vec<u16>>,
    pub services: Option<Vec<String>>,
    pub cluster: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub listener: Option<String>,
    pub timeout: Option<Duration>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub sticky: Option<RawSticky>,
    pub backends: Option<Vec<Value>>,
    pub retry: Option<RawRetry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub method: Option<OneOrMany>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `method = "GET"` or `method = ["GET", "HEAD"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub cluster: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub per_try_timeout: Option<Duration>,
    pub on: Option<Vec<Value>>,
    pub budget_ratio: Option<f64>,
    pub min_retries_per_second: Option<u32>,
    pub backoff_base: Option<Duration>,
    pub backoff_max: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub version: Option<String>,
    pub node: Option<String>,
    pub endpoints: Vec<String>,
    pub protocol: Option<crate::UpstreamProtocol>,
    pub connect_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub balance: Option<crate::Balance>,
    pub limits: Option<RawLimits>,
    pub breaker: Option<RawBreaker>,
    pub outlier: Option<RawOutlier>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub window: Option<Duration>,
    pub window_calls: Option<u32>,
    pub min_calls: Option<u32>,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub slow_call_duration: Option<Duration>,
    pub open_for: Option<Duration>,
    pub max_open_for: Option<Duration>,
    pub half_open_calls: Option<u32>,
    pub failure_on: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
    pub min_healthy_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStats {
    pub buckets_ms: Option<Vec<f64>>,
    pub access_log: Option<bool>,
    pub interval: Option<Duration>,
}
