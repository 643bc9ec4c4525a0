//! The wire contract between proxies, the control process and the CLI: the JSON bodies of control's
//! HTTP API (`/v1/...`). Proxies register their node and read their desired state; the CLI and the
//! dashboard read nodes and the journal; control answers refusals with [`Conflicts`] and every other
//! error with [`ApiError`]. Reports, the other thing proxies send, have their own module
//! ([`crate::report`]) because of their histograms.
//!
//! Every type refuses fields it does not know, so a writer and a reader that disagree fail loudly
//! instead of dropping data. Event types travel as strings, `"payment.settled@2"` (see
//! [`event_refs`]). Bodies read from the network go through [`bounded_json`], which bounds their size
//! before parsing.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Endpoint, EventRef};

/// The API's version: every path starts with `/v1/`. A change an older peer could misread (a field
/// added, removed or changing meaning) comes with a new version.
pub const API_VERSION: &str = "v1";

/// A proxy registering its node: when it starts, and again whenever control seems to have forgotten
/// it (a report or a desired-state read answered 404).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The node's name (`[node].name`).
    pub node: String,
    /// The node's version (`[node].version`), as canary analysis compares it.
    pub version: String,
    /// This proxy instance's id (e.g. `host:pid`), which tells a node's replicas apart.
    pub proxy: String,
    /// Where the node's proxy listens, `host:port` each. May be left out when empty.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Event types the node publishes. May be left out when empty.
    #[serde(default, with = "event_refs")]
    pub publishes: Vec<EventRef>,
    /// Event types the node consumes. May be left out when empty.
    #[serde(default, with = "event_refs")]
    pub consumes: Vec<EventRef>,
}

/// What control answers an accepted registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// The node registered, as control spells it.
    pub node: String,
    /// Accepted, but worth a look (e.g. an event consumed that nobody publishes yet). May be left out
    /// when empty.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The revision of the node's desired state; the proxy reads it when it differs from what it
    /// applied.
    pub desired_revision: u64,
}

/// A refused change: the body of an HTTP 409. `error` is always `"conflicts"` (see
/// [`Conflicts::new`]). A client reads a 409 as `Conflicts` and any other error status as an
/// [`ApiError`]; both carry `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conflicts {
    /// `"conflicts"`.
    pub error: String,
    /// Every reason the change was refused.
    pub conflicts: Vec<Conflict>,
    /// What would not have refused the change on its own. May be left out when empty.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Conflicts {
    /// The `error` text of every [`Conflicts`] body.
    pub const ERROR: &'static str = "conflicts";

    pub fn new(conflicts: Vec<Conflict>, warnings: Vec<String>) -> Self {
        Self { error: Self::ERROR.to_owned(), conflicts, warnings }
    }
}

/// One reason a change was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The event type concerned (`"payment.settled@2"`, or a bare name when majors differ), if any.
    pub event: Option<String>,
    /// The nodes concerned.
    pub nodes: Vec<String>,
    /// The reason in words, for people.
    pub message: String,
}

/// What kind of conflict a change would create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// An event would be consumed that no node publishes.
    ConsumedButNotPublished,
    /// A producer and a consumer of one event name disagree on its major schema version.
    MajorVersionMismatch,
    /// A node would stop publishing an event that others still consume.
    PublishedEventRemoved,
    /// A name (node, route) is already claimed with a different spec.
    NameClaimedWithDifferentSpec,
}

/// One node's desired state: how its traffic is split between its versions and the route weights its
/// proxies must apply, under a revision that only grows, so a proxy can tell a newer state from one it
/// already applied. A proxy applies `split` first, then `routes`: a route listed wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub node: String,
    /// Assigned by control; grows with every change and never goes back.
    pub revision: u64,
    /// Route name to the backends and weights that replace the route's own.
    pub routes: BTreeMap<String, Vec<DesiredBackend>>,
    /// The node's traffic between its versions, set by the rollout engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<DesiredSplit>,
}

/// One backend of a route in desired state, with its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredBackend {
    pub cluster: String,
    pub weight: u32,
}

/// Setting a node's desired state (a PUT body); control assigns the revision. `routes` is required,
/// so an empty body cannot clear a node's routes by accident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredUpdate {
    pub routes: BTreeMap<String, Vec<DesiredBackend>>,
    /// The node's traffic between its versions (see [`DesiredState::split`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<DesiredSplit>,
}

/// Which version of the node serves, and the canary's share. A proxy applies it to every route that
/// serves the node (one of whose backends' clusters has a version of the node): the stable version's
/// clusters share `100 - canary_weight` percent, the canary's `canary_weight`, and the node's other
/// versions get nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredSplit {
    pub stable: DesiredVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<DesiredVersion>,
    /// The canary's share of the node's traffic in percent, 0..=100 (0 without a canary).
    #[serde(default)]
    pub canary_weight: u32,
}

/// One version of the node in a [`DesiredSplit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredVersion {
    pub version: String,
    /// Where this version listens. Empty: the configuration's own cluster(s) of this version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

impl DesiredVersion {
    /// Checks the version as the configuration checks a cluster's, since it becomes one: a plain name
    /// (letters, digits, `-`, `_`, `.`: it is a stats label and part of a cluster's name), and
    /// endpoints written as the file writes them (`host:port`), none twice. The endpoints parsed, or
    /// every problem, one line each.
    pub fn check(&self) -> Result<Vec<Endpoint>, Vec<String>> {
        let mut problems = Vec::new();
        if let Err(message) = crate::validate::check_name(&self.version) {
            problems.push(format!("version {message}"));
        }
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(self.endpoints.len());
        for text in &self.endpoints {
            match crate::validate::parse_endpoint(text) {
                Ok(endpoint) if endpoints.contains(&endpoint) => {
                    problems.push(format!("version {:?}: duplicate endpoint {endpoint}", self.version));
                }
                Ok(endpoint) => endpoints.push(endpoint),
                Err(message) => problems.push(format!("version {:?}: {message}", self.version)),
            }
        }
        if problems.is_empty() {
            Ok(endpoints)
        } else {
            Err(problems)
        }
    }
}

/// Every error body of the API: `{"error": "...", "details": [...]}`; `details` is left out when
/// empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What went wrong, in one line.
    pub error: String,
    /// One line per specific problem (e.g. each invalid field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl ApiError {
    pub fn new(error: impl Into<String>) -> Self {
        Self { error: error.into(), details: Vec::new() }
    }

    pub fn with_details(error: impl Into<String>, details: Vec<String>) -> Self {
        Self { error: error.into(), details }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)?;
        for detail in &self.details {
            write!(f, "\n  {detail}")?;
        }
        Ok(())
    }
}

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    pub name: String,
    pub version: String,
    pub status: NodeStatus,
    /// Where the node's proxies listen, `host:port` each.
    pub endpoints: Vec<String>,
    #[serde(with = "event_refs")]
    pub publishes: Vec<EventRef>,
    #[serde(with = "event_refs")]
    pub consumes: Vec<EventRef>,
    /// The node's proxies that registered or reported.
    pub proxies: Vec<ProxyView>,
    /// When any of its proxies last reported (milliseconds since the Unix epoch); `null` if none has.
    pub last_report_unix_ms: Option<u64>,
    /// The revision of the node's desired state.
    pub desired_revision: u64,
    /// Figures over analysis' window; `null` until a report has arrived.
    pub stats: Option<NodeStats>,
    /// The node's latest journal entries since control started (proxy events such as
    /// `breaker_opened`, status changes, desired-state changes), oldest first; the journal has all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<JournalEntry>,
    /// The version taking the node's traffic (a promoted rollout's), when control has set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_version: Option<String>,
    /// Figures over analysis' window per version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, NodeStats>,
    /// The node's healing ladder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healing: Option<crate::rollout::HealingView>,
    /// The node's latest rollout, under way or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutView>,
}

/// One proxy of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyView {
    /// The proxy's instance id (`host:pid`).
    pub proxy: String,
    /// The desired-state revision it last said it applied; `null` if it has applied none.
    pub applied_revision: Option<u64>,
    /// When it last reported (milliseconds since the Unix epoch); `null` if it never has.
    pub last_report_unix_ms: Option<u64>,
}

/// A node's health as control judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Reporting, and within its SLO.
    Healthy,
    /// Reporting, and out of its SLO for `analysis.breach_windows` windows in a row.
    Degraded,
    /// Registered proxies stopped reporting.
    Unreachable,
    /// Registered, with no report judged yet.
    Registered,
}

/// A node's figures over analysis' window, all its proxies together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStats {
    /// The span the figures cover.
    pub window_seconds: f64,
    pub requests: u64,
    pub rps: f64,
    /// Share of requests that succeeded, in [0, 1]; `null` without requests.
    pub success_rate: Option<f64>,
    /// `null` without requests.
    pub p50_ms: Option<f64>,
    /// `null` without requests.
    pub p99_ms: Option<f64>,
    /// `[cluster, state]` per cluster, the state as proxies report it
    /// ([`crate::report::BreakerState`] in `snake_case`: `"closed"`, `"open"`, `"half_open"`,
    /// `"disabled"`).
    pub breakers: Vec<(String, String)>,
}

/// One journal entry: something control saw or did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    /// Grows by one with every entry; an SSE client resumes after it (`Last-Event-ID`).
    pub seq: u64,
    /// When (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// Ties the entries of one chain of events together (a degradation, its hooks, its rollout).
    pub trace_id: String,
    /// What happened (`"registered"`, `"hook_called"`, `"weights_changed"`, ...).
    pub kind: String,
    /// The node concerned, if any.
    pub node: Option<String>,
    /// The kind's own fields.
    pub detail: serde_json::Value,
    /// The entry in a few words ([`crate::journal::summary`]), as control serves it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

impl JournalEntry {
    /// An entry with its summary.
    pub fn new(
        seq: u64,
        unix_ms: u64,
        trace_id: String,
        kind: String,
        node: Option<String>,
        detail: serde_json::Value,
    ) -> Self {
        let summary = crate::journal::summary(&kind, &detail);
        Self { seq, unix_ms, trace_id, kind, node, detail, summary }
    }
}

/// Reads one JSON document of type `T` from a body that came from the network: refuses an empty body
/// and one over `limit` bytes before parsing, and names line and column of any other problem.
pub fn bounded_json<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, String> {
    if bytes.len() > limit {
        return Err(format!("body is {} bytes, over the limit of {limit}", bytes.len()));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("body is empty: expected a JSON document".to_owned());
    }
    // serde_json's messages end with "at line L column C".
    serde_json::from_slice(bytes).map_err(|error| format!("invalid JSON body: {error}"))
}

/// Parses an event type with its major schema version, `payment.settled@2`: a name of letters,
/// digits, `.`, `-` and `_`, then `@` and a major version written in digits.
pub fn parse_event_ref(text: &str) -> Result<EventRef, String> {
    let Some((name, major)) = text.rsplit_once('@') else {
        return Err(format!("{text:?} needs a major schema version: \"{text}@1\""));
    };
    if name.is_empty() {
        return Err(format!("{text:?} has no event name before '@'"));
    }
    if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_')) {
        return Err(format!("{name:?} in {text:?} is not an event name (letters, digits, '.', '-', '_')"));
    }
    if major.is_empty() {
        return Err(format!("{text:?} has no major version after '@' (e.g. \"{name}@1\")"));
    }
    // Digits only: `u32::from_str` would also take "+1", which would not read back as written.
    let parsed = major.bytes().all(|byte| byte.is_ascii_digit()).then(|| major.parse::<u32>().ok()).flatten();
    match parsed {
        Some(major) => Ok(EventRef { name: name.to_owned(), major }),
        None => Err(format!("{major:?} in {text:?} is not a major version number (0 to {})", u32::MAX)),
    }
}

/// `#[serde(with = "event_refs")]` for a `Vec<EventRef>`: a list of `"name@major"` strings.
pub mod event_refs {
    use serde::de::{Error as _, SeqAccess, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    use crate::EventRef;

    pub fn serialize<S: Serializer>(refs: &[EventRef], serializer: S) -> Result<S::Ok, S::Error> {
        refs.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<EventRef>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<EventRef>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of event types such as \"payment.settled@2\"")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Bounded by the body's size, which `bounded_json` checks first; the hint is not trusted.
                let mut refs = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(text) = seq.next_element::<String>()? {
                    refs.push(super::parse_event_ref(&text).map_err(A::Error::custom)?);
                }
                Ok(refs)
            }
        }
        deserializer.deserialize_seq(List)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use serde_json::json;

    use super::*;

    fn event(name: &str, major: u32) -> EventRef {
        EventRef { name: name.to_owned(), major }
    }

    /// Writes `value`, reads it back, and checks both the value and that the JSON is `expected`.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
        value: T,
        expected: serde_json::Value,
    ) {
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), expected);
        let back: T = bounded_json(text.as_bytes(), 1 << 20).unwrap();
        assert_eq!(back, value);
    }

    fn registration() -> Registration {
        Registration {
            node: "payments".to_owned(),
            version: "v1".to_owned(),
            proxy: "host-a:4242".to_owned(),
            endpoints: vec!["127.0.0.1:8080".to_owned()],
            publishes: vec![event("payment.settled", 2)],
            consumes: vec![event("order.placed", 1), event("order.cancelled", 3)],
        }
    }

    #[test]
    fn registration_round_trips_with_event_refs_as_strings() {
        round_trip(
            registration(),
            json!({
                "node": "payments", "version": "v1", "proxy": "host-a:4242",
                "endpoints": ["127.0.0.1:8080"],
                "publishes": ["payment.settled@2"],
                "consumes": ["order.placed@1", "order.cancelled@3"],
            }),
        );
    }

    #[test]
    fn registration_lists_may_be_left_out() {
        let read: Registration =
            bounded_json(br#"{"node": "a", "version": "v1", "proxy": "h:1"}"#, 1024).unwrap();
        assert!(read.endpoints.is_empty() && read.publishes.is_empty() && read.consumes.is_empty());
    }

    #[test]
    fn registered_round_trips() {
        round_trip(
            Registered { node: "payments".to_owned(), warnings: vec!["w".to_owned()], desired_revision: 7 },
            json!({"node": "payments", "warnings": ["w"], "desired_revision": 7}),
        );
    }

    #[test]
    fn conflicts_round_trip_and_are_not_an_api_error() {
        let conflicts = Conflicts::new(
            vec![Conflict {
                kind: ConflictKind::MajorVersionMismatch,
                event: Some("order.placed".to_owned()),
                nodes: vec!["orders".to_owned(), "payments".to_owned()],
                message: "orders publishes order.placed@2, payments consumes order.placed@1".to_owned(),
            }],
            vec![],
        );
        let expected = json!({
            "error": "conflicts",
            "conflicts": [{
                "kind": "major_version_mismatch", "event": "order.placed", "nodes": ["orders", "payments"],
                "message": "orders publishes order.placed@2, payments consumes order.placed@1",
            }],
            "warnings": [],
        });
        round_trip(conflicts, expected);
        // A 409 body is not an `ApiError`: each type refuses the other's fields.
        let text = br#"{"error": "conflicts", "conflicts": [], "warnings": []}"#;
        assert!(bounded_json::<ApiError>(text, 1024).unwrap_err().contains("unknown field `conflicts`"));
    }

    #[test]
    fn conflict_kinds_are_snake_case() {
        for (kind, text) in [
            (ConflictKind::ConsumedButNotPublished, "consumed_but_not_published"),
            (ConflictKind::MajorVersionMismatch, "major_version_mismatch"),
            (ConflictKind::PublishedEventRemoved, "published_event_removed"),
            (ConflictKind::NameClaimedWithDifferentSpec, "name_claimed_with_different_spec"),
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(text));
            assert_eq!(serde_json::from_value::<ConflictKind>(json!(text)).unwrap(), kind);
        }
        assert!(serde_json::from_value::<ConflictKind>(json!("ConsumedButNotPublished")).is_err());
    }

    #[test]
    fn desired_state_and_update_round_trip() {
        let routes = BTreeMap::from([(
            "api".to_owned(),
            vec![
                DesiredBackend { cluster: "payments-v1".to_owned(), weight: 90 },
                DesiredBackend { cluster: "payments-v2".to_owned(), weight: 10 },
            ],
        )]);
        let backends =
            json!([{"cluster": "payments-v1", "weight": 90}, {"cluster": "payments-v2", "weight": 10}]);
        round_trip(
            DesiredState { node: "payments".to_owned(), revision: 3, routes: routes.clone(), split: None },
            json!({"node": "payments", "revision": 3, "routes": {"api": backends.clone()}}),
        );
        round_trip(DesiredUpdate { routes, split: None }, json!({"routes": {"api": backends}}));
    }

    fn version(version: &str, endpoints: &[&str]) -> DesiredVersion {
        DesiredVersion {
            version: version.to_owned(),
            endpoints: endpoints.iter().map(|endpoint| (*endpoint).to_owned()).collect(),
        }
    }

    #[test]
    fn desired_split_round_trips_and_leaves_out_what_is_empty() {
        let split = DesiredSplit {
            stable: version("v1", &[]),
            canary: Some(version("v2", &["127.0.0.1:9002", "payments-v2.internal:80"])),
            canary_weight: 10,
        };
        let expected = json!({
            "stable": {"version": "v1"},
            "canary": {"version": "v2", "endpoints": ["127.0.0.1:9002", "payments-v2.internal:80"]},
            "canary_weight": 10,
        });
        round_trip(
            DesiredState {
                node: "payments".to_owned(),
                revision: 4,
                routes: BTreeMap::new(),
                split: Some(split.clone()),
            },
            json!({"node": "payments", "revision": 4, "routes": {}, "split": expected.clone()}),
        );
        round_trip(
            DesiredUpdate { routes: BTreeMap::new(), split: Some(split) },
            json!({"routes": {}, "split": expected}),
        );
        // Promoted: no canary; `canary_weight` is still written.
        round_trip(
            DesiredSplit { stable: version("v2", &["127.0.0.1:9002"]), canary: None, canary_weight: 0 },
            json!({"stable": {"version": "v2", "endpoints": ["127.0.0.1:9002"]}, "canary_weight": 0}),
        );
        let read: DesiredSplit = bounded_json(br#"{"stable": {"version": "v1"}}"#, 1024).unwrap();
        assert_eq!(read, DesiredSplit { stable: version("v1", &[]), canary: None, canary_weight: 0 });
        let error = bounded_json::<DesiredSplit>(br#"{"canary_weight": 5}"#, 1024).unwrap_err();
        assert!(error.contains("missing field `stable`"), "{error}");
    }

    #[test]
    fn a_desired_version_is_checked_as_a_cluster_is() {
        let parsed = version("v2", &["127.0.0.1:9002", "Payments.internal:80"]).check().unwrap();
        let written: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(written, ["127.0.0.1:9002", "payments.internal:80"]);
        assert_eq!(version("v1", &[]).check(), Ok(Vec::new()));
        assert_eq!(version("", &[]).check(), Err(vec!["version cannot be empty".to_owned()]));
        assert_eq!(
            version("v 2", &["nope", "127.0.0.1:1", "127.0.0.1:1"]).check(),
            Err(vec![
                r#"version "v 2" may only hold letters, digits, '-', '_' and '.'"#.to_owned(),
                r#"version "v 2": "nope" is not an address with a port (e.g. "127.0.0.1:9001" or "payments.internal:80")"#
                    .to_owned(),
                r#"version "v 2": duplicate endpoint 127.0.0.1:1"#.to_owned(),
            ])
        );
    }

    #[test]
    fn desired_update_without_routes_is_refused() {
        let error = bounded_json::<DesiredUpdate>(b"{}", 1024).unwrap_err();
        assert!(error.contains("missing field `routes`"), "{error}");
    }

    #[test]
    fn api_error_leaves_out_empty_details() {
        round_trip(ApiError::new("not found"), json!({"error": "not found"}));
        round_trip(
            ApiError::with_details("invalid registration", vec!["publishes[0]: bad".to_owned()]),
            json!({"error": "invalid registration", "details": ["publishes[0]: bad"]}),
        );
        assert_eq!(
            ApiError::with_details("invalid", vec!["a".to_owned(), "b".to_owned()]).to_string(),
            "invalid\n  a\n  b"
        );
    }

    #[test]
    fn node_view_round_trips() {
        let view = NodeView {
            status: NodeStatus::Degraded,
            stats: Some(NodeStats {
                window_seconds: 10.0,
                requests: 1_000,
                rps: 100.0,
                success_rate: Some(0.95),
                p50_ms: Some(1.5),
                p99_ms: Some(250.0),
                breakers: vec![("payments-v2".to_owned(), "open".to_owned())],
            }),
            ..registered_view()
        };
        round_trip(
            view.clone(),
            json!({
                "name": "payments", "version": "v2", "status": "degraded", "endpoints": ["127.0.0.1:8080"],
                "publishes": ["payment.settled@2"], "consumes": [],
                "proxies": [
                    {"proxy": "a:1", "applied_revision": 3, "last_report_unix_ms": 1700},
                    {"proxy": "b:2", "applied_revision": null, "last_report_unix_ms": null},
                ],
                "last_report_unix_ms": 1700, "desired_revision": 3,
                "stats": {
                    "window_seconds": 10.0, "requests": 1000, "rps": 100.0, "success_rate": 0.95,
                    "p50_ms": 1.5, "p99_ms": 250.0, "breakers": [["payments-v2", "open"]],
                },
            }),
        );
        let mut expected = serde_json::to_value(&view).unwrap();
        expected["status"] = json!("registered");
        expected["stats"] = json!(null);
        round_trip(NodeView { status: NodeStatus::Registered, stats: None, ..view.clone() }, expected);

        // What the healing loop adds: each field appears only when set, and comes back as it went.
        let figures = view.stats.clone().expect("stats");
        let healing = NodeView {
            serving_version: Some("v3".to_owned()),
            versions: BTreeMap::from([("v3".to_owned(), figures)]),
            healing: Some(crate::rollout::HealingView {
                phase: "canary".to_owned(),
                since_unix_ms: Some(1_600),
                reason: Some("rolling out the regenerated version v3".to_owned()),
                breaches: 0,
            }),
            ..view
        };
        let value = serde_json::to_value(&healing).unwrap();
        assert_eq!(value["serving_version"], "v3");
        assert_eq!(value["versions"]["v3"]["requests"], 1000);
        assert_eq!(value["healing"]["phase"], "canary");
        assert!(value.get("rollout").is_none(), "{value}");
        assert_eq!(serde_json::from_value::<NodeView>(value).unwrap(), healing);
    }

    fn registered_view() -> NodeView {
        NodeView {
            name: "payments".to_owned(),
            version: "v2".to_owned(),
            status: NodeStatus::Registered,
            endpoints: vec!["127.0.0.1:8080".to_owned()],
            publishes: vec![event("payment.settled", 2)],
            consumes: vec![],
            proxies: vec![
                ProxyView {
                    proxy: "a:1".to_owned(),
                    applied_revision: Some(3),
                    last_report_unix_ms: Some(1_700),
                },
                ProxyView { proxy: "b:2".to_owned(), applied_revision: None, last_report_unix_ms: None },
            ],
            last_report_unix_ms: Some(1_700),
            desired_revision: 3,
            stats: None,
            recent_events: Vec::new(),
            serving_version: None,
            versions: Default::default(),
            healing: None,
            rollout: None,
        }
    }

    #[test]
    fn node_statuses_are_snake_case() {
        for (status, text) in [
            (NodeStatus::Healthy, "healthy"),
            (NodeStatus::Degraded, "degraded"),
            (NodeStatus::Unreachable, "unreachable"),
            (NodeStatus::Registered, "registered"),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), json!(text));
            assert_eq!(serde_json::from_value::<NodeStatus>(json!(text)).unwrap(), status);
        }
    }

    #[test]
    fn journal_entry_round_trips() {
        round_trip(
            JournalEntry {
                seq: 42,
                unix_ms: 1_700_000_000_000,
                trace_id: "4bf92f3577b34da6".to_owned(),
                kind: "weights_changed".to_owned(),
                node: Some("payments".to_owned()),
                detail: json!({"route": "api", "weights": [90, 10]}),
                summary: String::new(),
            },
            json!({
                "seq": 42, "unix_ms": 1_700_000_000_000_u64, "trace_id": "4bf92f3577b34da6",
                "kind": "weights_changed", "node": "payments",
                "detail": {"route": "api", "weights": [90, 10]},
            }),
        );
        // As control serves it: with its summary.
        let entry = JournalEntry::new(
            7,
            1,
            "t".to_owned(),
            "status_changed".to_owned(),
            Some("payments".to_owned()),
            json!({"from": "healthy", "to": "degraded", "reason": "p99 must be <= 250ms; measured 912ms"}),
        );
        assert_eq!(entry.summary, "healthy → degraded: p99 must be <= 250ms; measured 912ms");
        let wire = serde_json::to_value(&entry).unwrap();
        assert_eq!(wire["summary"], entry.summary);
        assert_eq!(serde_json::from_value::<JournalEntry>(wire).unwrap(), entry);
    }

    #[test]
    fn unknown_fields_are_refused_by_every_type() {
        fn refused<T: DeserializeOwned + Debug>(mut body: serde_json::Value) {
            body["surprise"] = json!(1);
            let error = bounded_json::<T>(body.to_string().as_bytes(), 1 << 20).unwrap_err();
            assert!(error.contains("unknown field `surprise`"), "{error}");
        }
        refused::<Registration>(serde_json::to_value(registration()).unwrap());
        refused::<Registered>(json!({"node": "a", "warnings": [], "desired_revision": 1}));
        refused::<Conflicts>(json!({"error": "conflicts", "conflicts": [], "warnings": []}));
        refused::<Conflict>(
            json!({"kind": "published_event_removed", "event": null, "nodes": [], "message": "m"}),
        );
        refused::<DesiredState>(json!({"node": "a", "revision": 1, "routes": {}}));
        refused::<DesiredBackend>(json!({"cluster": "a", "weight": 1}));
        refused::<DesiredUpdate>(json!({"routes": {}}));
        refused::<DesiredSplit>(json!({"stable": {"version": "v1"}, "canary_weight": 0}));
        refused::<DesiredVersion>(json!({"version": "v1", "endpoints": []}));
        // Nested in a desired state too: a proxy that does not know a field refuses the revision.
        let body = br#"{"node": "a", "revision": 1, "routes": {}, "split": {"stable": {"version": "v1", "weight": 1}}}"#;
        let error = bounded_json::<DesiredState>(body, 1024).unwrap_err();
        assert!(error.contains("unknown field `weight`"), "{error}");
        refused::<ApiError>(json!({"error": "e"}));
        refused::<NodeView>(serde_json::to_value(registered_view()).unwrap());
        refused::<ProxyView>(json!({"proxy": "a:1", "applied_revision": null, "last_report_unix_ms": null}));
        refused::<NodeStats>(json!({
            "window_seconds": 10.0, "requests": 0, "rps": 0.0, "success_rate": null, "p50_ms": null,
            "p99_ms": null, "breakers": [],
        }));
        refused::<JournalEntry>(
            json!({"seq": 1, "unix_ms": 1, "trace_id": "t", "kind": "k", "node": null, "detail": {}}),
        );
    }

    #[test]
    fn event_refs_read_and_write_as_name_at_major() {
        assert_eq!(parse_event_ref("payment.settled@2"), Ok(event("payment.settled", 2)));
        // The name may hold '@'-free punctuation only; the last '@' splits.
        assert_eq!(parse_event_ref("a-b_c.d@0"), Ok(event("a-b_c.d", 0)));
        let body = br#"{"node": "a", "version": "v1", "proxy": "h:1", "publishes": ["name@2"]}"#;
        let read: Registration = bounded_json(body, 1024).unwrap();
        assert_eq!(read.publishes, vec![event("name", 2)]);
        assert_eq!(serde_json::to_value(&read).unwrap()["publishes"], json!(["name@2"]));
    }

    #[test]
    fn bad_event_refs_are_refused_with_the_reason() {
        for (text, reason) in [
            ("x@", "\"x@\" has no major version after '@' (e.g. \"x@1\")"),
            ("@1", "\"@1\" has no event name before '@'"),
            ("x@-1", "\"-1\" in \"x@-1\" is not a major version number"),
            ("x@+1", "\"+1\" in \"x@+1\" is not a major version number"),
            ("x@1.5", "\"1.5\" in \"x@1.5\" is not a major version number"),
            ("x@99999999999", "\"99999999999\" in \"x@99999999999\" is not a major version number"),
            ("x", "\"x\" needs a major schema version: \"x@1\""),
            ("a b@1", "\"a b\" in \"a b@1\" is not an event name"),
            ("a@b@1", "\"a@b\" in \"a@b@1\" is not an event name"),
        ] {
            let error = parse_event_ref(text).unwrap_err();
            assert!(error.starts_with(reason), "{text}: {error}");
        }
        // In a body: the reason, then where.
        let body = br#"{"node": "a", "version": "v1", "proxy": "h:1", "consumes": ["ok@1", "x@-1"]}"#;
        let error = bounded_json::<Registration>(body, 1024).unwrap_err();
        assert!(error.contains("\"-1\" in \"x@-1\" is not a major version number"), "{error}");
        assert!(error.contains("line 1 column"), "{error}");
        let error = bounded_json::<Registration>(
            br#"{"node": "a", "version": "v1", "proxy": "h", "consumes": [1]}"#,
            1024,
        )
        .unwrap_err();
        assert!(error.contains("invalid type: integer `1`, expected a string"), "{error}");
    }

    #[test]
    fn bounded_json_refuses_empty_and_oversized_bodies() {
        assert_eq!(bounded_json::<ApiError>(b"", 10).unwrap_err(), "body is empty: expected a JSON document");
        assert_eq!(
            bounded_json::<ApiError>(b" \n\t", 10).unwrap_err(),
            "body is empty: expected a JSON document"
        );
        let body = br#"{"error": "a long error message"}"#;
        assert_eq!(
            bounded_json::<ApiError>(body, 10).unwrap_err(),
            format!("body is {} bytes, over the limit of 10", body.len())
        );
        assert!(bounded_json::<ApiError>(body, body.len()).is_ok());
        let error = bounded_json::<ApiError>(b"{\n  \"error\": }", 1024).unwrap_err();
        assert!(error.starts_with("invalid JSON body: ") && error.contains("line 2 column"), "{error}");
    }
}
