//! What changed between the running configuration and a new one.
//!
//! A reload (the file changing, SIGHUP, `POST /reload`) loads and validates a whole new [`Config`],
//! diffs it against the running one and stores it in one step. The diff is what the reload logs (one
//! line per [`Change`]), what `POST /reload` answers as JSON, and how the proxy tells whether anything
//! changed at all: an empty diff means the two configurations are equal (listener order aside, which
//! carries no meaning).
//!
//! Listeners, routes and clusters are matched by name. A route the file leaves unnamed is named by its
//! position (`route-0`, …), so moving one shows up as changes to those names, not as a reorder.
//! Field names come from the serialized model (`limits.max_headers`), so a field added to the model is
//! diffed without touching this file.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Backend, Cluster, Config, Listener, Route};

/// One difference between the running configuration and a new one.
///
/// `fields` are dotted paths in the serialized model (`listen`, `limits.max_headers`,
/// `breaker.failure_rate`), sorted. Arrays count as one field (`backends`, `buckets_ms`); an enum that
/// changes variant is named by its own path (`breaker.window`). The path `*` stands for a difference
/// that could not be named (a value that failed to serialize), so that no change goes unreported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    ListenerAdded {
        name: String,
    },
    ListenerRemoved {
        name: String,
    },
    /// Any change restarts the listener on its socket; a changed `listen` moves it.
    ListenerChanged {
        name: String,
        fields: Vec<String>,
    },
    RouteAdded {
        name: String,
    },
    RouteRemoved {
        name: String,
    },
    /// Includes `backends` when the backends changed in more than their weights (or along with other
    /// fields); a change of weights alone is one [`Change::WeightsChanged`].
    RouteChanged {
        name: String,
        fields: Vec<String>,
    },
    /// The route's whole split, `(cluster, weight)` in file order, before and after: reported whenever
    /// the weight each cluster gets differs, traffic moving from one version to another.
    WeightsChanged {
        route: String,
        from: Vec<(String, u32)>,
        to: Vec<(String, u32)>,
    },
    /// Routes present in both configurations come in a different order: the first match wins, so
    /// precedence changed.
    RoutesReordered,
    ClusterAdded {
        name: String,
    },
    ClusterRemoved {
        name: String,
    },
    /// Fields other than the endpoint set; `endpoints` is listed only when the same endpoints come in a
    /// different order.
    ClusterChanged {
        name: String,
        fields: Vec<String>,
    },
    /// In the new file's order.
    EndpointsAdded {
        cluster: String,
        endpoints: Vec<String>,
    },
    /// In the running file's order.
    EndpointsRemoved {
        cluster: String,
        endpoints: Vec<String>,
    },
    /// `admin`, `runtime`, `node`, `control` or `stats`. A section that appears or disappears lists all
    /// its fields.
    SectionChanged {
        section: String,
        fields: Vec<String>,
    },
}

/// Stands for a difference whose path could not be found.
const UNNAMED: &str = "*";

/// Every difference from `old` to `new`, in an order fit for a log: sections, listeners, clusters,
/// routes (so a cluster is added before the route that starts using it). Within listeners, clusters
/// and routes, removals come first (in the old order), then additions and changes in the new order.
#[must_use]
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut changes = Vec::new();
    sections(old, new, &mut changes);
    listeners(&old.listeners, &new.listeners, &mut changes);
    clusters(old, new, &mut changes);
    routes(&old.routes, &new.routes, &mut changes);
    changes
}

fn sections(old: &Config, new: &Config, changes: &mut Vec<Change>) {
    let mut section = |section: &str, fields: Vec<String>| {
        if !fields.is_empty() {
            changes.push(Change::SectionChanged { section: section.to_owned(), fields });
        }
    };
    section("admin", changed_fields(&old.admin, &new.admin));
    section("runtime", changed_fields(&old.runtime, &new.runtime));
    section("node", changed_fields(&old.node, &new.node));
    section("control", changed_fields(&old.control, &new.control));
    section("stats", changed_fields(&old.stats, &new.stats));
}

fn listeners(old: &[Listener], new: &[Listener], changes: &mut Vec<Change>) {
    let running: HashMap<&str, &Listener> =
        old.iter().map(|listener| (listener.name.as_str(), listener)).collect();
    let next: HashMap<&str, &Listener> =
        new.iter().map(|listener| (listener.name.as_str(), listener)).collect();
    for listener in old.iter().filter(|listener| !next.contains_key(listener.name.as_str())) {
        changes.push(Change::ListenerRemoved { name: listener.name.clone() });
    }
    for listener in new {
        match running.get(listener.name.as_str()) {
            None => changes.push(Change::ListenerAdded { name: listener.name.clone() }),
            Some(before) => {
                let fields = changed_fields(*before, listener);
                if !fields.is_empty() {
                    changes.push(Change::ListenerChanged { name: listener.name.clone(), fields });
                }
            }
        }
    }
}

fn clusters(old: &Config, new: &Config, changes: &mut Vec<Change>) {
    for name in old.clusters.keys().filter(|name| !new.clusters.contains_key(*name)) {
        changes.push(Change::ClusterRemoved { name: name.clone() });
    }
    for (name, cluster) in &new.clusters {
        match old.clusters.get(name) {
            None => changes.push(Change::ClusterAdded { name: name.clone() }),
            Some(running) => cluster_changes(name, running, cluster, changes),
        }
    }
}

fn cluster_changes(name: &str, old: &Cluster, new: &Cluster, changes: &mut Vec<Change>) {
    let removed: Vec<String> = old
        .endpoints
        .iter()
        .filter(|endpoint| !new.endpoints.contains(endpoint))
        .map(ToString::to_string)
        .collect();
    let added: Vec<String> = new
        .endpoints
        .iter()
        .filter(|endpoint| !old.endpoints.contains(endpoint))
        .map(ToString::to_string)
        .collect();
    let mut fields = changed_fields(old, new);
    if !(added.is_empty() && removed.is_empty()) {
        fields.retain(|field| field != "endpoints");
    }
    if !fields.is_empty() {
        changes.push(Change::ClusterChanged { name: name.to_owned(), fields });
    }
    if !removed.is_empty() {
        changes.push(Change::EndpointsRemoved { cluster: name.to_owned(), endpoints: removed });
    }
    if !added.is_empty() {
        changes.push(Change::EndpointsAdded { cluster: name.to_owned(), endpoints: added });
    }
}

fn routes(old: &[Route], new: &[Route], changes: &mut Vec<Change>) {
    let running: HashMap<&str, &Route> = old.iter().map(|route| (route.name.as_str(), route)).collect();
    let next: HashMap<&str, &Route> = new.iter().map(|route| (route.name.as_str(), route)).collect();
    for route in old.iter().filter(|route| !next.contains_key(route.name.as_str())) {
        changes.push(Change::RouteRemoved { name: route.name.clone() });
    }
    for route in new {
        match running.get(route.name.as_str()) {
            None => changes.push(Change::RouteAdded { name: route.name.clone() }),
            Some(before) => route_changes(before, route, changes),
        }
    }
    // Only the routes in both: an added or removed route is not a reorder of the others.
    let old_order = old.iter().map(|route| route.name.as_str()).filter(|name| next.contains_key(name));
    let new_order = new.iter().map(|route| route.name.as_str()).filter(|name| running.contains_key(name));
    if !old_order.eq(new_order) {
        changes.push(Change::RoutesReordered);
    }
}

fn route_changes(old: &Route, new: &Route, changes: &mut Vec<Change>) {
    let fields = changed_fields(old, new);
    if fields.is_empty() {
        return;
    }
    let weights_changed = split(&old.backends) != split(&new.backends);
    let same_clusters = old
        .backends
        .iter()
        .map(|backend| &backend.cluster)
        .eq(new.backends.iter().map(|backend| &backend.cluster));
    let weights_only = weights_changed && same_clusters && fields == ["backends"];
    if !weights_only {
        changes.push(Change::RouteChanged { name: new.name.clone(), fields });
    }
    if weights_changed {
        changes.push(Change::WeightsChanged {
            route: new.name.clone(),
            from: pairs(&old.backends),
            to: pairs(&new.backends),
        });
    }
}

/// The weight each cluster gets, whatever the order the file lists them in.
fn split(backends: &[Backend]) -> Vec<(&str, u32)> {
    let mut split: Vec<(&str, u32)> =
        backends.iter().map(|backend| (backend.cluster.as_str(), backend.weight)).collect();
    split.sort_unstable();
    split
}

fn pairs(backends: &[Backend]) -> Vec<(String, u32)> {
    backends.iter().map(|backend| (backend.cluster.clone(), backend.weight)).collect()
}

/// The sorted dotted paths at which `old` and `new` differ; empty when they are equal.
///
/// Equality is the model's own; the serialized form only names the difference. An absent value (a
/// section or an optional sub-table set to `None`) at the top counts as an empty table, so a section
/// that appears names its fields.
fn changed_fields<T: Serialize + PartialEq>(old: &T, new: &T) -> Vec<String> {
    if old == new {
        return Vec::new();
    }
    let mut fields = Vec::new();
    // Serializing the model cannot fail for a configuration read from TOML (its text, paths included,
    // is UTF-8), but a reload must neither panic nor miss a change: an unnamed difference is `*`.
    if let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) {
        if let (Some(old), Some(new)) = (top_table(old), top_table(new)) {
            walk_table("", &old, &new, &mut fields);
        }
    }
    if fields.is_empty() {
        fields.push(UNNAMED.to_owned());
    }
    fields.sort_unstable();
    fields
}

fn top_table(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(table) => Some(table),
        Value::Null => Some(Map::new()),
        _ => None,
    }
}

fn walk_table(prefix: &str, old: &Map<String, Value>, new: &Map<String, Value>, fields: &mut Vec<String>) {
    let added = new.keys().filter(|key| !old.contains_key(*key));
    for key in old.keys().chain(added) {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        walk(path, old.get(key).unwrap_or(&Value::Null), new.get(key).unwrap_or(&Value::Null), fields);
    }
}

fn walk(path: String, old: &Value, new: &Value, fields: &mut Vec<String>) {
    if old == new {
        return;
    }
    match (old, new) {
        // A struct keeps its keys; different keys mean an enum changed variant, named as a whole.
        (Value::Object(old), Value::Object(new))
            if old.len() == new.len() && old.keys().all(|key| new.contains_key(key)) =>
        {
            walk_table(&path, old, new, fields)
        }
        _ => fields.push(path),
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::ListenerAdded { name } => write!(f, "listener {name:?} added"),
            Change::ListenerRemoved { name } => write!(f, "listener {name:?} removed"),
            Change::ListenerChanged { name, fields } => {
                write!(f, "listener {name:?} changed: {}", fields.join(", "))
            }
            Change::RouteAdded { name } => write!(f, "route {name:?} added"),
            Change::RouteRemoved { name } => write!(f, "route {name:?} removed"),
            Change::RouteChanged { name, fields } => {
                write!(f, "route {name:?} changed: {}", fields.join(", "))
            }
            Change::WeightsChanged { route, from, to } => {
                write!(f, "route {route:?}: weights ")?;
                write_weights(f, from, to)
            }
            Change::RoutesReordered => f.write_str("routes reordered"),
            Change::ClusterAdded { name } => write!(f, "cluster {name:?} added"),
            Change::ClusterRemoved { name } => write!(f, "cluster {name:?} removed"),
            Change::ClusterChanged { name, fields } => {
                write!(f, "cluster {name:?} changed: {}", fields.join(", "))
            }
            Change::EndpointsAdded { cluster, endpoints } => {
                write!(f, "cluster {cluster:?}: endpoints added {}", endpoints.join(", "))
            }
            Change::EndpointsRemoved { cluster, endpoints } => {
                write!(f, "cluster {cluster:?}: endpoints removed {}", endpoints.join(", "))
            }
            Change::SectionChanged { section, fields } => {
                write!(f, "[{section}] changed: {}", fields.join(", "))
            }
        }
    }
}

/// `a 90 → 0, b 10 → 100` when the same clusters share the traffic; `[a 100] → [a 90, b 10]` when the
/// set of clusters changed.
fn write_weights(f: &mut fmt::Formatter<'_>, from: &[(String, u32)], to: &[(String, u32)]) -> fmt::Result {
    if names(from) == names(to) {
        for (index, (cluster, weight)) in to.iter().enumerate() {
            let before = from.iter().find(|(name, _)| name == cluster).map_or(0, |(_, weight)| *weight);
            let separator = if index == 0 { "" } else { ", " };
            write!(f, "{separator}{cluster} {before} → {weight}")?;
        }
        Ok(())
    } else {
        write!(f, "[{}] → [{}]", list(from), list(to))
    }
}

fn names(pairs: &[(String, u32)]) -> Vec<&str> {
    let mut names: Vec<&str> = pairs.iter().map(|(cluster, _)| cluster.as_str()).collect();
    names.sort_unstable();
    names
}

fn list(pairs: &[(String, u32)]) -> String {
    pairs.iter().map(|(cluster, weight)| format!("{cluster} {weight}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::{diff, Change};
    use crate::{load_str, Config, Source};

    const BASE: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
name = "api"
match = { path_prefix = "/api" }
backends = [
  { cluster = "payments-v1", weight = 100 },
  { cluster = "payments-v2", weight = 0 },
]

[[routes]]
name = "web"
backends = [{ cluster = "payments-v1" }]

[clusters.payments-v1]
version = "v1"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[clusters.payments-v1.breaker]
failure_rate = 0.5

[clusters.payments-v2]
version = "v2"
endpoints = ["127.0.0.1:9003"]
"#;

    fn load(text: &str) -> Config {
        load_str(text, Source::TextOnly).unwrap_or_else(|error| panic!("test config: {:?}", error.errors()))
    }

    /// `BASE` with each `(from, to)` replaced once; a `from` that is not there fails the test, so an
    /// edit cannot silently test nothing.
    fn edited(edits: &[(&str, &str)]) -> Config {
        let mut text = BASE.to_owned();
        for (from, to) in edits {
            assert!(text.contains(from), "{from:?} is not in the test config");
            text = text.replacen(from, to, 1);
        }
        load(&text)
    }

    /// The diff, checked against the model's equality both ways: empty exactly when nothing changed.
    fn changes(old: &Config, new: &Config) -> Vec<Change> {
        let forward = diff(old, new);
        assert_eq!(forward.is_empty(), old == new, "{forward:?}");
        assert_eq!(diff(new, old).is_empty(), old == new);
        forward
    }

    fn lines(changes: &[Change]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    #[test]
    fn identical_configs_have_no_changes() {
        assert_eq!(changes(&load(BASE), &load(BASE)), []);
    }

    #[test]
    fn a_weight_flip_is_one_weights_changed() {
        let new = edited(&[(
            "weight = 100 },\n  { cluster = \"payments-v2\", weight = 0",
            "weight = 0 },\n  { cluster = \"payments-v2\", weight = 100",
        )]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::WeightsChanged {
                route: "api".to_owned(),
                from: vec![("payments-v1".to_owned(), 100), ("payments-v2".to_owned(), 0)],
                to: vec![("payments-v1".to_owned(), 0), ("payments-v2".to_owned(), 100)],
            }]
        );
    }

    #[test]
    fn weights_with_other_fields_are_a_route_change_and_a_weights_change() {
        let new = edited(&[
            ("match = { path_prefix = \"/api\" }", "timeout = \"5s\"\nmatch = { path_prefix = \"/api\" }"),
            ("weight = 100 }", "weight = 90 }"),
            ("weight = 0 }", "weight = 10 }"),
        ]);
        let found = changes(&load(BASE), &new);
        assert_eq!(
            found[0],
            Change::RouteChanged { name: "api".to_owned(), fields: strings(&["backends", "timeout"]) }
        );
        assert!(matches!(&found[1], Change::WeightsChanged { route, .. } if route == "api"), "{found:?}");
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn a_new_backend_cluster_changes_backends_and_weights() {
        let new = edited(&[(
            "[{ cluster = \"payments-v1\" }]",
            "[{ cluster = \"payments-v1\" }, { cluster = \"payments-v2\" }]",
        )]);
        assert_eq!(
            lines(&changes(&load(BASE), &new)),
            [
                "route \"web\" changed: backends",
                "route \"web\": weights [payments-v1 1] → [payments-v1 1, payments-v2 1]",
            ]
        );
    }

    #[test]
    fn backends_reordered_with_the_same_weights_are_no_weights_change() {
        let new = edited(&[(
            "{ cluster = \"payments-v1\", weight = 100 },\n  { cluster = \"payments-v2\", weight = 0 },",
            "{ cluster = \"payments-v2\", weight = 0 },\n  { cluster = \"payments-v1\", weight = 100 },",
        )]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::RouteChanged { name: "api".to_owned(), fields: strings(&["backends"]) }]
        );
    }

    #[test]
    fn a_route_added_and_one_removed() {
        let new = edited(&[("name = \"web\"", "name = \"www\"")]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::RouteRemoved { name: "web".to_owned() }, Change::RouteAdded { name: "www".to_owned() }]
        );
    }

    #[test]
    fn routes_reordered() {
        let api = "[[routes]]\nname = \"api\"\nmatch = { path_prefix = \"/api\" }\nbackends = [\n  { cluster = \"payments-v1\", weight = 100 },\n  { cluster = \"payments-v2\", weight = 0 },\n]\n\n";
        let web = "[[routes]]\nname = \"web\"\nbackends = [{ cluster = \"payments-v1\" }]\n\n";
        let new = edited(&[(api, ""), (web, &format!("{web}{api}"))]);
        assert_eq!(changes(&load(BASE), &new), [Change::RoutesReordered]);
    }

    #[test]
    fn a_route_added_in_front_is_not_a_reorder() {
        let first = "[[routes]]\nname = \"health\"\nmatch = { path = \"/health\" }\nbackends = [{ cluster = \"payments-v1\" }]\n\n[[routes]]\nname = \"api\"";
        let new = edited(&[("[[routes]]\nname = \"api\"", first)]);
        assert_eq!(changes(&load(BASE), &new), [Change::RouteAdded { name: "health".to_owned() }]);
    }

    #[test]
    fn a_new_cluster_comes_before_the_route_that_uses_it() {
        let new = edited(&[
            ("[{ cluster = \"payments-v1\" }]", "[{ cluster = \"web\" }]"),
            ("[clusters.payments-v2]", "[clusters.web]\nversion = \"v1\"\nendpoints = [\"127.0.0.1:9010\"]\n\n[clusters.payments-v2]"),
        ]);
        assert_eq!(
            lines(&changes(&load(BASE), &new)),
            [
                "cluster \"web\" added",
                "route \"web\" changed: backends",
                "route \"web\": weights [payments-v1 1] → [web 1]",
            ]
        );
    }

    #[test]
    fn endpoints_added_and_removed_in_one_cluster() {
        let new = edited(&[(
            "[\"127.0.0.1:9001\", \"127.0.0.1:9002\"]",
            "[\"127.0.0.1:9002\", \"127.0.0.1:9004\", \"127.0.0.1:9005\"]",
        )]);
        assert_eq!(
            changes(&load(BASE), &new),
            [
                Change::EndpointsRemoved {
                    cluster: "payments-v1".to_owned(),
                    endpoints: strings(&["127.0.0.1:9001"])
                },
                Change::EndpointsAdded {
                    cluster: "payments-v1".to_owned(),
                    endpoints: strings(&["127.0.0.1:9004", "127.0.0.1:9005"]),
                },
            ]
        );
    }

    #[test]
    fn endpoints_reordered_are_a_cluster_change() {
        let new = edited(&[(
            "[\"127.0.0.1:9001\", \"127.0.0.1:9002\"]",
            "[\"127.0.0.1:9002\", \"127.0.0.1:9001\"]",
        )]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::ClusterChanged { name: "payments-v1".to_owned(), fields: strings(&["endpoints"]) }]
        );
    }

    #[test]
    fn a_breaker_threshold_names_its_field() {
        let new = edited(&[("failure_rate = 0.5", "failure_rate = 0.25")]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::ClusterChanged {
                name: "payments-v1".to_owned(),
                fields: strings(&["breaker.failure_rate"])
            }]
        );
    }

    #[test]
    fn cluster_fields_and_endpoints_together() {
        let new = edited(&[
            (
                "[clusters.payments-v2]\nversion = \"v2\"",
                "[clusters.payments-v2]\nversion = \"v3\"\nlimits = { max_requests = 10 }",
            ),
            ("[\"127.0.0.1:9003\"]", "[\"127.0.0.1:9004\"]"),
        ]);
        assert_eq!(
            lines(&changes(&load(BASE), &new)),
            [
                "cluster \"payments-v2\" changed: limits.max_requests, version",
                "cluster \"payments-v2\": endpoints removed 127.0.0.1:9003",
                "cluster \"payments-v2\": endpoints added 127.0.0.1:9004",
            ]
        );
    }

    #[test]
    fn a_breaker_window_changing_kind_names_the_window() {
        let new = edited(&[("failure_rate = 0.5", "failure_rate = 0.5\nwindow_calls = 50")]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::ClusterChanged { name: "payments-v1".to_owned(), fields: strings(&["breaker.window"]) }]
        );
    }

    #[test]
    fn a_listener_moved_names_listen() {
        let new = edited(&[("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8081\"")]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::ListenerChanged { name: "public".to_owned(), fields: strings(&["listen"]) }]
        );
    }

    #[test]
    fn a_listener_added_reaches_routes_that_name_no_listener() {
        let new = edited(&[(
            "[[routes]]\nname = \"api\"",
            "[[listeners]]\nname = \"internal\"\nlisten = \"127.0.0.1:8090\"\n\n[[routes]]\nname = \"api\"",
        )]);
        assert_eq!(
            lines(&changes(&load(BASE), &new)),
            [
                "listener \"internal\" added",
                "route \"api\" changed: listeners",
                "route \"web\" changed: listeners",
            ]
        );
    }

    #[test]
    fn stats_buckets_are_a_section_change() {
        let new = edited(&[("[[listeners]]", "[stats]\nbuckets_ms = [1, 10, 100]\n\n[[listeners]]")]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::SectionChanged { section: "stats".to_owned(), fields: strings(&["buckets_ms"]) }]
        );
    }

    #[test]
    fn a_section_that_appears_names_its_fields() {
        let new =
            edited(&[("[[listeners]]", "[node]\nname = \"payments\"\nversion = \"v1\"\n\n[[listeners]]")]);
        assert_eq!(
            changes(&load(BASE), &new),
            [Change::SectionChanged {
                section: "node".to_owned(),
                fields: strings(&["consumes", "name", "publishes", "version"]),
            }]
        );
    }

    #[test]
    fn changes_come_sections_listeners_clusters_routes() {
        let new = edited(&[
            ("127.0.0.1:9901", "127.0.0.1:9902"),
            ("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8081\""),
            ("failure_rate = 0.5", "failure_rate = 0.25"),
            ("name = \"web\"", "name = \"www\""),
        ]);
        assert_eq!(
            lines(&changes(&load(BASE), &new)),
            [
                "[admin] changed: listen",
                "listener \"public\" changed: listen",
                "cluster \"payments-v1\" changed: breaker.failure_rate",
                "route \"web\" removed",
                "route \"www\" added",
            ]
        );
    }

    #[test]
    fn display_lines() {
        let change = |change: Change| change.to_string();
        assert_eq!(
            change(Change::WeightsChanged {
                route: "api".to_owned(),
                from: vec![("payments-v1".to_owned(), 90), ("payments-v2".to_owned(), 10)],
                to: vec![("payments-v1".to_owned(), 0), ("payments-v2".to_owned(), 100)],
            }),
            "route \"api\": weights payments-v1 90 → 0, payments-v2 10 → 100"
        );
        assert_eq!(
            change(Change::ListenerChanged {
                name: "public".to_owned(),
                fields: strings(&["limits.max_headers", "listen"])
            }),
            "listener \"public\" changed: limits.max_headers, listen"
        );
        assert_eq!(
            change(Change::ClusterRemoved { name: "payments-v1".to_owned() }),
            "cluster \"payments-v1\" removed"
        );
        assert_eq!(
            change(Change::EndpointsAdded {
                cluster: "payments-v2".to_owned(),
                endpoints: strings(&["127.0.0.1:9004", "db.internal:5432"]),
            }),
            "cluster \"payments-v2\": endpoints added 127.0.0.1:9004, db.internal:5432"
        );
        assert_eq!(change(Change::RoutesReordered), "routes reordered");
        assert_eq!(
            change(Change::SectionChanged { section: "stats".to_owned(), fields: strings(&["buckets_ms"]) }),
            "[stats] changed: buckets_ms"
        );
    }

    #[test]
    fn json_shape() {
        let change = Change::WeightsChanged {
            route: "api".to_owned(),
            from: vec![("payments-v1".to_owned(), 100), ("payments-v2".to_owned(), 0)],
            to: vec![("payments-v1".to_owned(), 0), ("payments-v2".to_owned(), 100)],
        };
        assert_eq!(
            serde_json::to_value(&change).unwrap_or_default(),
            serde_json::json!({
                "change": "weights_changed",
                "route": "api",
                "from": [["payments-v1", 100], ["payments-v2", 0]],
                "to": [["payments-v1", 0], ["payments-v2", 100]],
            })
        );
        assert_eq!(
            serde_json::to_value(Change::RoutesReordered).unwrap_or_default(),
            serde_json::json!({ "change": "routes_reordered" })
        );
    }
}
