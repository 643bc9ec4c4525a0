//! Which part of a configuration carries a node's own traffic: the routes that serve it and the
//! clusters behind them. Control's split is laid over those routes only, and a proxy reports only
//! their series as the node's: a sidecar's calls out to other services, or another service's route
//! in a shared reverse proxy, never count for (or move with) the node.

use std::collections::BTreeSet;

use crate::{Cluster, Config, ListenerMode, Route};

/// A node's traffic in a configuration: the node's name and the versions it is known by (its
/// `[node]` version, and a rollout's stable and canary).
///
/// A cluster that names a node (`node = "payments"`) is that node's and no other's. Once any cluster
/// names the node, only the clusters that name it are its; until then a cluster that names no node
/// is the node's when its version is one of the node's. A route serves the node when one of its
/// backends is such a cluster, unless it serves only outbound listeners (a sidecar's outbound routes
/// carry the pod's own calls to other services). Every backend of a serving route that may be the
/// node's (it names the node, or it names none while no cluster names the node) carries the node's
/// traffic, whatever its version: a canary the file lists beside the stable version is the node's too.
#[derive(Debug)]
pub struct NodeTraffic<'a> {
    config: &'a Config,
    node: &'a str,
    versions: Vec<&'a str>,
    /// Some cluster names the node: only those are its.
    named: bool,
}

impl<'a> NodeTraffic<'a> {
    pub fn new(config: &'a Config, node: &'a str, versions: Vec<&'a str>) -> Self {
        let named = config.clusters.values().any(|cluster| cluster.node.as_deref() == Some(node));
        Self { config, node, versions, named }
    }

    /// Whether `cluster` may carry the node's traffic (on a route that serves the node).
    pub fn claims(&self, cluster: &Cluster) -> bool {
        match &cluster.node {
            Some(name) => name == self.node,
            None => !self.named,
        }
    }

    /// Whether `cluster` marks a route as the node's: claimed, and named or of one of its versions.
    fn marks(&self, cluster: &Cluster) -> bool {
        self.claims(cluster) && (self.named || self.versions.contains(&cluster.version.as_str()))
    }

    /// Whether `route` serves the node.
    pub fn serves(&self, route: &Route) -> bool {
        self.template(route).is_some()
    }

    /// The first cluster on `route` that marks it as the node's, if it serves the node.
    pub fn template(&self, route: &Route) -> Option<&'a Cluster> {
        if self.outbound_only(route) {
            return None;
        }
        route
            .backends
            .iter()
            .filter_map(|backend| self.config.clusters.get(&backend.cluster))
            .find(|cluster| self.marks(cluster))
    }

    /// The names of the clusters that carry the node's traffic on the routes that serve it.
    pub fn clusters(&self) -> BTreeSet<&'a str> {
        let mut clusters = BTreeSet::new();
        for route in self.config.routes.iter().filter(|route| self.serves(route)) {
            for backend in &route.backends {
                if let Some((name, cluster)) = self.config.clusters.get_key_value(&backend.cluster) {
                    if self.claims(cluster) {
                        clusters.insert(name.as_str());
                    }
                }
            }
        }
        clusters
    }

    /// The inbound listeners no route names: their connections go to the local app on the original
    /// port (`127.0.0.1` or `[::1]`), under a series named by the listener and that address.
    pub fn local_app_listeners(&self) -> Vec<&'a str> {
        let config = self.config;
        config
            .listeners
            .iter()
            .filter(|listener| listener.mode == ListenerMode::Inbound)
            .filter(|listener| !config.routes.iter().any(|route| route.listeners.contains(&listener.name)))
            .map(|listener| listener.name.as_str())
            .collect()
    }

    /// A route whose listeners (validation names them all) are all outbound.
    fn outbound_only(&self, route: &Route) -> bool {
        let mut modes = self
            .config
            .listeners
            .iter()
            .filter(|listener| route.listeners.contains(&listener.name))
            .map(|listener| listener.mode)
            .peekable();
        modes.peek().is_some() && modes.all(|mode| mode == ListenerMode::Outbound)
    }
}

impl Config {
    /// For people, with `[node]`: the routes and clusters that carry the node's traffic (what
    /// control's rollouts move and what the proxy reports as the node's) and the inbound listeners
    /// whose local app it is.
    pub fn node_summary(&self) -> Option<String> {
        let node = self.node.as_ref()?;
        let traffic = NodeTraffic::new(self, &node.name, vec![node.version.as_str()]);
        let mut parts = Vec::new();
        let routes: Vec<&str> = self
            .routes
            .iter()
            .filter(|route| traffic.serves(route))
            .map(|route| route.name.as_str())
            .collect();
        if !routes.is_empty() {
            let clusters: Vec<&str> = traffic.clusters().into_iter().collect();
            let noun = if routes.len() == 1 { "route" } else { "routes" };
            parts.push(format!("{noun} {} (clusters {})", routes.join(", "), clusters.join(", ")));
        }
        let local = traffic.local_app_listeners();
        if !local.is_empty() {
            parts.push(format!("the local app behind listener {}", local.join(", ")));
        }
        let (name, version) = (&node.name, &node.version);
        Some(if parts.is_empty() {
            format!("node {name} {version}: no route serves it, so rollouts cannot move its traffic")
        } else {
            format!("node {name} {version} served by {}", parts.join(" and "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::load_str(text, crate::Source::TextOnly).unwrap_or_else(|errors| panic!("{errors}"))
    }

    const LISTENERS: &str = r#"
[[listeners]]
name = "in"
listen = "127.0.0.1:0"
mode = "inbound"

[[listeners]]
name = "out"
listen = "127.0.0.1:0"
mode = "outbound"
"#;

    #[test]
    fn unnamed_clusters_go_by_version_and_a_serving_routes_other_versions_come_along() {
        let config = config(&format!(
            r#"{LISTENERS}
[[routes]]
name = "api"
listener = "in"
backends = [{{ cluster = "payments-v1", weight = 90 }}, {{ cluster = "payments-v2", weight = 10 }}]

[[routes]]
name = "reports"
listener = "in"
backends = [{{ cluster = "reports" }}]

[clusters.payments-v1]
version = "v1"
endpoints = ["127.0.0.1:9001"]

[clusters.payments-v2]
version = "v2"
endpoints = ["127.0.0.1:9002"]

[clusters.reports]
endpoints = ["127.0.0.1:9003"]
"#
        ));
        let traffic = NodeTraffic::new(&config, "payments", vec!["v1"]);
        assert!(traffic.serves(&config.routes[0]));
        assert!(!traffic.serves(&config.routes[1]), "version \"default\" is not the node's");
        assert_eq!(traffic.clusters(), BTreeSet::from(["payments-v1", "payments-v2"]));
        assert_eq!(
            traffic.template(&config.routes[0]).map(|cluster| cluster.name.as_str()),
            Some("payments-v1")
        );
    }

    #[test]
    fn outbound_routes_are_other_services_even_of_the_same_version() {
        let config = config(&format!(
            r#"{LISTENERS}
[[routes]]
name = "inbound"
listener = "in"
backends = [{{ cluster = "payments-v1" }}]

[[routes]]
name = "to-orders"
listener = "out"
backends = [{{ cluster = "orders" }}]

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "public"
backends = [{{ cluster = "shared" }}]

[clusters.payments-v1]
version = "v1"
endpoints = ["127.0.0.1:9001"]

[clusters.orders]
version = "v1"
endpoints = ["127.0.0.1:9004"]

[clusters.shared]
version = "v1"
endpoints = ["127.0.0.1:9005"]
"#
        ));
        let traffic = NodeTraffic::new(&config, "payments", vec!["v1"]);
        assert_eq!(config.node_summary(), None, "no [node]");
        assert_eq!(
            config.routes.iter().map(|route| traffic.serves(route)).collect::<Vec<_>>(),
            [true, false, true],
            "inbound and reverse routes serve the node, outbound ones never"
        );
        assert_eq!(traffic.clusters(), BTreeSet::from(["payments-v1", "shared"]));
        assert_eq!(traffic.template(&config.routes[1]), None);
    }

    #[test]
    fn once_a_cluster_names_the_node_only_named_clusters_are_its() {
        let config = config(
            r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "payments"
match = { path_prefix = "/pay" }
backends = [{ cluster = "payments-v1" }, { cluster = "maintenance", weight = 0 }]

[[routes]]
name = "orders"
backends = [{ cluster = "orders-v1" }]

[clusters.payments-v1]
version = "v1"
node = "payments"
endpoints = ["127.0.0.1:9001"]

[clusters.orders-v1]
version = "v1"
node = "orders"
endpoints = ["127.0.0.1:9004"]

[clusters.maintenance]
version = "v1"
endpoints = ["127.0.0.1:9006"]
"#,
        );
        let payments = NodeTraffic::new(&config, "payments", vec!["v1"]);
        assert_eq!(
            config.routes.iter().map(|route| payments.serves(route)).collect::<Vec<_>>(),
            [true, false]
        );
        assert_eq!(payments.clusters(), BTreeSet::from(["payments-v1"]));
        // A node no cluster names goes by version, but never takes a cluster named for another node.
        let orders_only = NodeTraffic::new(&config, "billing", vec!["v1"]);
        assert_eq!(orders_only.clusters(), BTreeSet::from(["maintenance"]));
    }

    #[test]
    fn the_summary_says_where_the_nodes_traffic_runs() {
        let sidecar = |routes: &str| {
            config(&format!(
                "[node]\nname = \"payments\"\nversion = \"v1\"\n{LISTENERS}\n{routes}\n[clusters.orders]\nversion = \"v1\"\nendpoints = [\"127.0.0.1:9004\"]\n"
            ))
        };
        let to_orders =
            "[[routes]]\nname = \"to-orders\"\nlistener = \"out\"\nbackends = [{ cluster = \"orders\" }]\n";
        assert_eq!(
            sidecar(to_orders).node_summary().as_deref(),
            Some("node payments v1 served by the local app behind listener in")
        );
        let inbound =
            "[[routes]]\nname = \"api\"\nlistener = \"in\"\nbackends = [{ cluster = \"orders\" }]\n";
        assert_eq!(
            sidecar(inbound).node_summary().as_deref(),
            Some("node payments v1 served by route api (clusters orders)")
        );
        let reverse = config(
            "[node]\nname = \"payments\"\nversion = \"v2\"\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"api\"\nbackends = [{ cluster = \"a\" }]\n[clusters.a]\nversion = \"v1\"\nendpoints = [\"127.0.0.1:9001\"]\n",
        );
        assert_eq!(
            reverse.node_summary().as_deref(),
            Some("node payments v2: no route serves it, so rollouts cannot move its traffic")
        );
        assert!(reverse.summary().ends_with(
            "(1 endpoint); node payments v2: no route serves it, so rollouts cannot move its traffic"
        ));
    }
}
