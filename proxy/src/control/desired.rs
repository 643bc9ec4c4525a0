//! Desired state from control: a long-poll on `/v1/nodes/{node}/desired?after=REV`, each new revision
//! applied through the reload path ([`Reloader::apply_desired`]) as a file change is, and acknowledged
//! by the next report (`desired_revision`).
//!
//! Desired state is an overlay on the file's configuration, not a configuration of its own (see
//! [`overlay`]): its split shifts the node's traffic between its versions, adding a cluster for a
//! version only control knows, and each route it names takes its weights. The reloader lays the last
//! applied revision over every configuration the file brings later, so a file reload does not undo
//! control's rollout.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use remora_config::control::{DesiredBackend, DesiredSplit, DesiredState};
use remora_config::{Backend, Cluster, Config, Endpoint, NodeTraffic, Route};
use tokio::sync::watch;

use super::api::{Api, Failure, LONG_POLL_WAIT};
use super::backoff::Backoff;
use super::Link;
use crate::reload::Reloader;

/// The largest weight a backend may have (the configuration's validation refuses more).
const MAX_WEIGHT: u32 = 1_000_000;

/// Weight per percent of a split: a route's versions add up to 10,000, so that a version's share
/// divides among its clusters with little rounding, far under [`MAX_WEIGHT`].
const WEIGHT_PER_PERCENT: u64 = 100;

/// `base` with control's desired state laid over it: first the split, then the routes.
///
/// **The split** changes every route that serves the node ([`NodeTraffic`]: one of whose backends'
/// clusters names the node, or, while none does, has a version of the node — the configuration's
/// `[node]` version, the split's stable or canary — and that is not only on outbound listeners);
/// other routes are untouched. On such a route the stable version's clusters share
/// `100 - canary_weight` percent and the canary's `canary_weight`, each version's share divided in
/// proportion to its clusters' own weights (equally when those are all 0); every other backend gets 0.
/// A version with endpoints gets them on its clusters; on a route with no cluster of it, a cluster
/// `{node}-{version}` (`{node}-{version}-desired` when a cluster of another version has that name) is
/// added, a copy of the route's first cluster of the node with the version and endpoints replaced.
///
/// **A route** `desired` names takes the weights listed for its backends (a cluster the split added
/// included) and 0 for a backend the list leaves out: the list replaces the route's split.
///
/// What does not fit comes back, one line each, and the route it concerns keeps its weights: a split
/// that is wrong in itself (canary_weight over 100, or above 0 without a canary; an empty or unusual
/// version name; the canary's version also the stable one; an endpoint that is not `host:port`), a
/// version with neither a cluster on a route nor endpoints, no route serving the node; a route or
/// cluster the configuration lacks, a cluster that is not one of the route's backends or is listed
/// twice, a weight over 1,000,000, weights that add up to 0.
///
/// Control's own path ([`Reloader::apply_desired`]) refuses a revision with any such line; a file
/// reload applies what still fits and logs the rest.
pub fn overlay(base: &Config, desired: &DesiredState) -> (Config, Vec<String>) {
    let mut config = base.clone();
    let mut problems = Vec::new();
    if let Some(split) = &desired.split {
        match Shares::check(base, &desired.node, split) {
            Ok(shares) => shares.lay_over(&mut config, &mut problems),
            Err(lines) => problems.extend(lines),
        }
    }
    set_routes(&mut config, &desired.routes, &mut problems);
    (config, problems)
}

/// A split checked whole, ready to be laid over each route that serves the node.
struct Shares<'a> {
    node: &'a str,
    /// Every version of the node: the configuration's `[node]` version, the stable, the canary.
    versions: Vec<&'a str>,
    /// The stable version, then the canary if there is one.
    shares: Vec<Share<'a>>,
}

/// One version's share of the node's traffic.
struct Share<'a> {
    version: &'a str,
    percent: u32,
    /// Where it listens; empty: the configuration's own clusters of the version.
    endpoints: Vec<Endpoint>,
}

/// A route as the split leaves it, and the clusters it adds or gives new endpoints.
struct Laid {
    backends: Vec<Backend>,
    clusters: Vec<Cluster>,
}

impl<'a> Shares<'a> {
    fn check(base: &'a Config, node: &'a str, split: &'a DesiredSplit) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if let Some(own) = base.node.as_ref().filter(|own| own.name != node) {
            problems.push(format!("split: desired state for node {node:?} laid over node {:?}", own.name));
        }
        let canary_weight = split.canary_weight;
        if canary_weight > 100 {
            problems.push(format!("split: canary_weight {canary_weight} is more than 100"));
        } else if canary_weight > 0 && split.canary.is_none() {
            problems.push(format!("split: canary_weight {canary_weight} without a canary"));
        }
        if split.canary.as_ref().is_some_and(|canary| canary.version == split.stable.version) {
            problems.push(format!(
                "split: the canary's version {:?} is the stable one as well",
                split.stable.version
            ));
        }
        let mut shares = Vec::new();
        let stable = ("stable", Some(&split.stable), 100u32.saturating_sub(canary_weight));
        for (role, version, percent) in [stable, ("canary", split.canary.as_ref(), canary_weight)] {
            let Some(version) = version else { continue };
            match version.check() {
                Ok(endpoints) => shares.push(Share { version: &version.version, percent, endpoints }),
                Err(lines) => problems.extend(lines.into_iter().map(|line| format!("split: {role} {line}"))),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut versions: Vec<&str> = base.node.iter().map(|own| own.version.as_str()).collect();
        for share in &shares {
            if !versions.contains(&share.version) {
                versions.push(share.version);
            }
        }
        Ok(Self { node, versions, shares })
    }

    /// Lays the split over every route that serves the node; a route it does not fit keeps its
    /// weights, and clusters only that route would have added are not added.
    fn lay_over(&self, config: &mut Config, problems: &mut Vec<String>) {
        let mut serving = false;
        for index in 0..config.routes.len() {
            let Some(laid) = self.route(config, &config.routes[index]) else { continue };
            serving = true;
            match laid {
                Ok(Laid { backends, clusters }) => {
                    for cluster in clusters {
                        config.clusters.insert(cluster.name.clone(), cluster);
                    }
                    config.routes[index].backends = backends;
                }
                Err(lines) => problems.extend(lines),
            }
        }
        if !serving {
            problems.push(format!(
                "split: no route serves node {:?} (none has a backend whose cluster's version is {})",
                self.node,
                self.versions.iter().map(|version| format!("{version:?}")).collect::<Vec<_>>().join(" or ")
            ));
        }
    }

    /// `None` when the route does not serve the node.
    fn route(&self, config: &Config, route: &Route) -> Option<Result<Laid, Vec<String>>> {
        let traffic = NodeTraffic::new(config, self.node, self.versions.clone());
        let template = traffic.template(route)?;
        // The version of a backend's cluster when that cluster may be the node's.
        let version_of = |backend: &Backend| {
            let cluster = config.clusters.get(&backend.cluster)?;
            traffic.claims(cluster).then_some(cluster.version.as_str())
        };
        let name = &route.name;
        let mut backends: Vec<Backend> =
            route.backends.iter().map(|backend| Backend { weight: 0, ..backend.clone() }).collect();
        let mut clusters: Vec<Cluster> = Vec::new();
        let mut problems = Vec::new();
        for share in &self.shares {
            // The route's clusters of this version: (index in `backends`, configured weight).
            let mut own: Vec<(usize, u32)> = route
                .backends
                .iter()
                .enumerate()
                .filter(|(_, backend)| version_of(backend) == Some(share.version))
                .map(|(index, backend)| (index, backend.weight))
                .collect();
            if !own.is_empty() && !share.endpoints.is_empty() {
                for &(index, _) in &own {
                    if let Some(cluster) = config.clusters.get(&route.backends[index].cluster) {
                        clusters.push(Cluster { endpoints: share.endpoints.clone(), ..cluster.clone() });
                    }
                }
            } else if own.is_empty() && share.endpoints.is_empty() {
                problems.push(format!(
                    "route {name:?}: version {:?} has no cluster in the configuration and desired state \
                     gives no endpoints",
                    share.version
                ));
                continue;
            } else if own.is_empty() {
                match self.cluster_for(config, &traffic, &clusters, template, share) {
                    Ok(cluster) => {
                        own.push((backends.len(), 0));
                        backends.push(Backend { cluster: cluster.name.clone(), weight: 0 });
                        clusters.push(cluster);
                    }
                    Err(problem) => {
                        problems.push(format!("route {name:?}: {problem}"));
                        continue;
                    }
                }
            }
            let pool = u64::from(share.percent) * WEIGHT_PER_PERCENT;
            let configured: u64 = own.iter().map(|&(_, weight)| u64::from(weight)).sum();
            let count = own.len() as u64;
            for &(index, weight) in &own {
                let weight = match configured {
                    0 => pool / count,
                    _ => pool * u64::from(weight) / configured,
                };
                // At most 100 × WEIGHT_PER_PERCENT: within MAX_WEIGHT.
                backends[index].weight = u32::try_from(weight).unwrap_or(MAX_WEIGHT);
            }
        }
        if problems.is_empty() && backends.iter().all(|backend| backend.weight == 0) {
            problems.push(format!("route {name:?}: the weights add up to 0"));
        }
        Some(if problems.is_empty() { Ok(Laid { backends, clusters }) } else { Err(problems) })
    }

    /// The cluster a version with endpoints gets on a route that has none of it: `{node}-{version}`,
    /// or `{node}-{version}-desired` when a cluster of another version holds that name. A cluster of
    /// the version by that name (the file's, or added for another route) is taken with the endpoints;
    /// a new one copies `template` (limits, breaker, outlier, protocol, timeouts, balance).
    fn cluster_for(
        &self,
        config: &Config,
        traffic: &NodeTraffic<'_>,
        added: &[Cluster],
        template: &Cluster,
        share: &Share<'_>,
    ) -> Result<Cluster, String> {
        let plain = format!("{}-{}", self.node, share.version);
        let desired = format!("{plain}-desired");
        for name in [&plain, &desired] {
            let taken =
                added.iter().find(|cluster| &cluster.name == name).or_else(|| config.clusters.get(name));
            match taken {
                None => {
                    return Ok(Cluster {
                        name: name.clone(),
                        version: share.version.to_owned(),
                        endpoints: share.endpoints.clone(),
                        ..template.clone()
                    })
                }
                Some(cluster) if cluster.version == share.version && traffic.claims(cluster) => {
                    return Ok(Cluster { endpoints: share.endpoints.clone(), ..cluster.clone() })
                }
                Some(_) => {}
            }
        }
        Err(format!(
            "no name for a cluster of version {:?}: {plain:?} and {desired:?} are clusters of other versions",
            share.version
        ))
    }
}

/// Each route `routes` names takes the weights listed (see [`overlay`]).
fn set_routes(
    config: &mut Config,
    routes: &BTreeMap<String, Vec<DesiredBackend>>,
    problems: &mut Vec<String>,
) {
    for (name, backends) in routes {
        let Some(route) = config.routes.iter_mut().find(|route| &route.name == name) else {
            problems.push(format!("route {name:?} is not in the configuration"));
            continue;
        };
        let mut listed = HashSet::new();
        let mut fits = true;
        let mut total = 0u64;
        for backend in backends {
            let cluster = &backend.cluster;
            let problem = if !route.backends.iter().any(|own| &own.cluster == cluster) {
                Some(if config.clusters.contains_key(cluster) {
                    format!("route {name:?}: cluster {cluster:?} is not one of its backends")
                } else {
                    format!("route {name:?}: cluster {cluster:?} is not in the configuration")
                })
            } else if !listed.insert(cluster.as_str()) {
                Some(format!("route {name:?}: cluster {cluster:?} is listed twice"))
            } else if backend.weight > MAX_WEIGHT {
                Some(format!(
                    "route {name:?}: cluster {cluster:?} weight {} is more than {MAX_WEIGHT}",
                    backend.weight
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                problems.push(problem);
                fits = false;
            }
            total += u64::from(backend.weight);
        }
        if fits && total == 0 {
            problems.push(format!("route {name:?}: the weights add up to 0"));
            fits = false;
        }
        if fits {
            for own in &mut route.backends {
                own.weight = backends
                    .iter()
                    .find(|backend| backend.cluster == own.cluster)
                    .map_or(0, |backend| backend.weight);
            }
        }
    }
}

/// The desired-state loop.
pub struct Poller {
    api: Arc<Api>,
    reloader: Arc<Reloader>,
    link: Arc<Link>,
    node: String,
    outage_backoff: Backoff,
    refused_backoff: Backoff,
}

impl Poller {
    pub fn new(api: Arc<Api>, reloader: Arc<Reloader>, link: Arc<Link>, node: String) -> Self {
        Self {
            api,
            reloader,
            link,
            node,
            outage_backoff: Backoff::outage(),
            refused_backoff: Backoff::refused(),
        }
    }

    /// Polls until `stop` changes, from the node's first registration on.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut registrations = self.link.registrations.subscribe();
        // Control knows the node once it has registered, not before.
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            registered = registrations.wait_for(|registrations| registrations.count > 0) => {
                if registered.is_err() {
                    return;
                }
            }
        }
        // The revision seen last (applied or refused): control answers only newer ones.
        let mut after = 0;
        loop {
            if registrations.has_changed().unwrap_or(false) {
                let revision = registrations.borrow_and_update().desired_revision;
                if revision < after {
                    // Revisions never go back in one store: this control's store is another one.
                    tracing::info!(
                        revision,
                        seen = after,
                        "control's desired revision went back: reading it again"
                    );
                    after = 0;
                }
            }
            let polled = tokio::select! {
                biased;
                _ = stop.changed() => return,
                polled = self.api.desired(&self.node, after, LONG_POLL_WAIT) => polled,
            };
            let wait = match polled {
                Ok(Some(desired)) => {
                    self.reached();
                    after = desired.revision;
                    self.apply(desired).await;
                    continue;
                }
                Ok(None) => {
                    self.reached();
                    continue;
                }
                Err(Failure::Unreachable(error)) => {
                    self.link.outage.failed(&error);
                    // Control may be restarting: the session registers again before its next report,
                    // even when its own reports happened to miss the outage.
                    self.link.reregister.notify_one();
                    self.outage_backoff.next_wait()
                }
                Err(Failure::UnknownNode(message)) => {
                    self.link.outage.reached();
                    tracing::info!(
                        node = %self.node,
                        %message,
                        "control does not know the node: asking for a registration"
                    );
                    self.link.reregister.notify_one();
                    tokio::select! {
                        biased;
                        _ = stop.changed() => return,
                        changed = registrations.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                    }
                    // Short, and growing if control keeps forgetting the node it was just told of.
                    self.outage_backoff.next_wait()
                }
                Err(failure) => {
                    self.link.outage.reached();
                    tracing::error!(node = %self.node, "control refused the desired-state read: {failure}");
                    if failure.is_unauthorized() {
                        self.api.reload_token();
                    }
                    self.refused_backoff.next_wait()
                }
            };
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn reached(&mut self) {
        self.link.outage.reached();
        self.outage_backoff.reset();
        self.refused_backoff.reset();
    }

    /// Applies a revision; acknowledged (in the next report) only when applied.
    async fn apply(&self, desired: DesiredState) {
        let revision = desired.revision;
        if desired.node != self.node {
            tracing::error!(
                node = %self.node,
                other = %desired.node,
                revision,
                "desired state for another node: ignored"
            );
            return;
        }
        // A refusal is logged and counted by the reloader; the running configuration keeps serving.
        if let Ok(applied) = self.reloader.apply_desired(desired, "control").await {
            self.link.applied.store(revision, Ordering::Release);
            self.link.report_now.notify_one();
            tracing::info!(revision, generation = applied.generation, "desired state applied");
        }
    }
}

#[cfg(test)]
mod tests {
    use remora_config::control::DesiredVersion;

    use super::*;

    fn base() -> Config {
        load(
            r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[[routes]]
name = "api"
backends = [{ cluster = "stable", weight = 90 }, { cluster = "canary", weight = 10 }]
[[routes]]
name = "admin"
backends = [{ cluster = "stable" }]
[clusters.stable]
endpoints = ["127.0.0.1:9001"]
[clusters.canary]
endpoints = ["127.0.0.1:9002"]
[clusters.other]
endpoints = ["127.0.0.1:9003"]
"#,
        )
    }

    fn desired(routes: &[(&str, &[(&str, u32)])]) -> DesiredState {
        let routes = routes
            .iter()
            .map(|(route, backends)| {
                let backends = backends
                    .iter()
                    .map(|(cluster, weight)| DesiredBackend {
                        cluster: (*cluster).to_owned(),
                        weight: *weight,
                    })
                    .collect();
                ((*route).to_owned(), backends)
            })
            .collect();
        DesiredState { node: "payments".to_owned(), revision: 1, routes, split: None }
    }

    fn weights(config: &Config, route: &str) -> Vec<(String, u32)> {
        let route = config.routes.iter().find(|own| own.name == route).expect("route");
        route.backends.iter().map(|backend| (backend.cluster.clone(), backend.weight)).collect()
    }

    #[test]
    fn listed_weights_replace_the_split_and_the_rest_is_untouched() {
        let base = base();
        let (config, problems) = overlay(&base, &desired(&[("api", &[("canary", 100)])]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(weights(&config, "api"), [("stable".to_owned(), 0), ("canary".to_owned(), 100)]);
        assert_eq!(weights(&config, "admin"), weights(&base, "admin"));
        assert_eq!(config.clusters, base.clusters);
    }

    #[test]
    fn a_route_that_does_not_fit_keeps_its_weights_with_a_reason() {
        let base = base();
        for (routes, reason) in [
            (desired(&[("missing", &[("stable", 1)])]), r#"route "missing" is not in the configuration"#),
            (
                desired(&[("api", &[("other", 1)])]),
                r#"route "api": cluster "other" is not one of its backends"#,
            ),
            (
                desired(&[("api", &[("gone", 1)])]),
                r#"route "api": cluster "gone" is not in the configuration"#,
            ),
            (
                desired(&[("api", &[("stable", 1), ("stable", 2)])]),
                r#"route "api": cluster "stable" is listed twice"#,
            ),
            (
                desired(&[("api", &[("stable", 1_000_001)])]),
                r#"route "api": cluster "stable" weight 1000001 is more than 1000000"#,
            ),
            (desired(&[("api", &[("stable", 0), ("canary", 0)])]), r#"route "api": the weights add up to 0"#),
            (desired(&[("api", &[])]), r#"route "api": the weights add up to 0"#),
        ] {
            let (config, problems) = overlay(&base, &routes);
            assert_eq!(problems, [reason]);
            assert_eq!(config, base, "{reason}: nothing changes");
        }
        // What fits is applied beside what does not (a file reload takes it; control's path refuses).
        let (config, problems) = overlay(&base, &desired(&[("api", &[("stable", 5)]), ("missing", &[])]));
        assert_eq!(problems.len(), 1);
        assert_eq!(weights(&config, "api"), [("stable".to_owned(), 5), ("canary".to_owned(), 0)]);
    }

    /// The node `payments` at v1, its file canary at v2 on "api" only, and a route of another service.
    const NODE: &str = r#"
[node]
name = "payments"
version = "v1"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[[routes]]
name = "api"
backends = [{ cluster = "stable", weight = 90 }, { cluster = "canary", weight = 10 }]
[[routes]]
name = "admin"
backends = [{ cluster = "stable" }]
[[routes]]
name = "orders"
backends = [{ cluster = "orders" }]
[clusters.stable]
version = "v1"
endpoints = ["127.0.0.1:9001"]
protocol = "http2"
connect_timeout = "250ms"
balance = "round_robin"
limits = { max_requests = 7 }
breaker = { min_calls = 5 }
outlier = { consecutive_5xx = 3 }
[clusters.canary]
version = "v2"
endpoints = ["127.0.0.1:9002"]
[clusters.orders]
endpoints = ["127.0.0.1:9003"]
"#;

    fn load(text: &str) -> Config {
        remora_config::load_str(text, remora_config::Source::TextOnly).expect("a valid config")
    }

    fn version(version: &str, endpoints: &[&str]) -> DesiredVersion {
        DesiredVersion {
            version: version.to_owned(),
            endpoints: endpoints.iter().map(|endpoint| (*endpoint).to_owned()).collect(),
        }
    }

    /// The new version only control knows, where it listens.
    fn v3() -> DesiredVersion {
        version("v3", &["127.0.0.1:9103"])
    }

    fn split(stable: DesiredVersion, canary: Option<DesiredVersion>, canary_weight: u32) -> DesiredState {
        DesiredState {
            node: "payments".to_owned(),
            revision: 1,
            routes: BTreeMap::new(),
            split: Some(DesiredSplit { stable, canary, canary_weight }),
        }
    }

    fn pairs(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(cluster, weight)| ((*cluster).to_owned(), *weight)).collect()
    }

    fn addresses(cluster: &Cluster) -> Vec<String> {
        cluster.endpoints.iter().map(ToString::to_string).collect()
    }

    /// Applies `desired` to the node's configuration, expecting no problem.
    fn laid(desired: &DesiredState) -> Config {
        let (config, problems) = overlay(&load(NODE), desired);
        assert!(problems.is_empty(), "{problems:?}");
        config
    }

    #[test]
    fn a_canary_with_endpoints_gets_a_cluster_copied_from_the_stable_one() {
        let base = load(NODE);
        let config = laid(&split(version("v1", &[]), Some(v3()), 10));
        // The file's v2 is no version the split names: 0.
        assert_eq!(
            weights(&config, "api"),
            pairs(&[("stable", 9_000), ("canary", 0), ("payments-v3", 1_000)])
        );
        assert_eq!(weights(&config, "admin"), pairs(&[("stable", 9_000), ("payments-v3", 1_000)]));
        assert_eq!(weights(&config, "orders"), weights(&base, "orders"));
        let generated = &config.clusters["payments-v3"];
        assert_eq!(addresses(generated), ["127.0.0.1:9103"]);
        let expected = Cluster {
            name: "payments-v3".to_owned(),
            version: "v3".to_owned(),
            endpoints: generated.endpoints.clone(),
            ..base.clusters["stable"].clone()
        };
        assert_eq!(generated, &expected, "limits, breaker, outlier, protocol and timeouts carry over");
        assert_eq!(config.clusters.len(), base.clusters.len() + 1, "one cluster for both routes");
        for (name, cluster) in &base.clusters {
            assert_eq!(&config.clusters[name], cluster, "the file's {name} is untouched");
        }
    }

    #[test]
    fn a_canary_at_zero_or_none_sends_everything_to_the_stable_version() {
        let config = laid(&split(version("v1", &[]), Some(v3()), 0));
        assert_eq!(weights(&config, "api"), pairs(&[("stable", 10_000), ("canary", 0), ("payments-v3", 0)]));
        assert_eq!(weights(&config, "admin"), pairs(&[("stable", 10_000), ("payments-v3", 0)]));
        assert!(config.clusters.contains_key("payments-v3"), "kept, with its pools, for the next step");

        let config = laid(&split(version("v1", &[]), None, 0));
        assert_eq!(weights(&config, "api"), pairs(&[("stable", 10_000), ("canary", 0)]));
        assert_eq!(weights(&config, "admin"), pairs(&[("stable", 10_000)]));
        assert_eq!(config.clusters, load(NODE).clusters);
    }

    #[test]
    fn promoted_the_new_version_takes_everything_and_the_files_own_gets_nothing() {
        let config = laid(&split(v3(), None, 0));
        assert_eq!(weights(&config, "api"), pairs(&[("stable", 0), ("canary", 0), ("payments-v3", 10_000)]));
        assert_eq!(weights(&config, "admin"), pairs(&[("stable", 0), ("payments-v3", 10_000)]));
        assert_eq!(config.clusters["payments-v3"].version, "v3");
    }

    #[test]
    fn a_versions_share_is_divided_by_its_clusters_weights() {
        let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[[routes]]
name = "api"
backends = [
  { cluster = "a", weight = 3 }, { cluster = "b", weight = 1 },
  { cluster = "c", weight = 0 }, { cluster = "d", weight = 0 },
]
[clusters.a]
version = "v1"
endpoints = ["127.0.0.1:9001"]
[clusters.b]
version = "v1"
endpoints = ["127.0.0.1:9002"]
[clusters.c]
version = "v2"
endpoints = ["127.0.0.1:9003"]
[clusters.d]
version = "v2"
endpoints = ["127.0.0.1:9004"]
"#;
        let (config, problems) =
            overlay(&load(text), &split(version("v1", &[]), Some(version("v2", &[])), 20));
        assert!(problems.is_empty(), "{problems:?}");
        // v1 takes 80% as 3:1; v2's clusters are all at 0 in the file, so they halve its 20%.
        assert_eq!(weights(&config, "api"), pairs(&[("a", 6_000), ("b", 2_000), ("c", 1_000), ("d", 1_000)]));
    }

    #[test]
    fn endpoints_for_a_version_the_file_has_replace_its_clusters_endpoints() {
        let config = laid(&split(version("v1", &["127.0.0.1:9101", "127.0.0.1:9102"]), None, 0));
        assert_eq!(addresses(&config.clusters["stable"]), ["127.0.0.1:9101", "127.0.0.1:9102"]);
        assert_eq!(config.clusters.len(), load(NODE).clusters.len(), "no cluster added");
        assert_eq!(weights(&config, "api"), pairs(&[("stable", 10_000), ("canary", 0)]));
    }

    #[test]
    fn a_version_without_endpoints_needs_a_cluster_on_each_route_it_serves() {
        let base = load(NODE);
        // The file's v2 is on "api" only: "admin" keeps its weights (a file reload applies the rest;
        // control's path refuses the whole revision).
        let (config, problems) = overlay(&base, &split(version("v1", &[]), Some(version("v2", &[])), 25));
        assert_eq!(
            problems,
            [
                r#"route "admin": version "v2" has no cluster in the configuration and desired state gives no endpoints"#
            ]
        );
        assert_eq!(weights(&config, "api"), pairs(&[("stable", 7_500), ("canary", 2_500)]));
        assert_eq!(weights(&config, "admin"), weights(&base, "admin"));

        let (config, problems) = overlay(&base, &split(version("v1", &[]), Some(version("v3", &[])), 10));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with(r#"route "api": version "v3" has no cluster"#), "{problems:?}");
        assert!(problems[1].starts_with(r#"route "admin": version "v3" has no cluster"#), "{problems:?}");
        assert_eq!(config, base);
    }

    #[test]
    fn a_split_wrong_in_itself_changes_nothing() {
        let base = load(NODE);
        let mut other_node = split(version("v1", &[]), None, 0);
        other_node.node = "orders".to_owned();
        for (desired, reason) in [
            (
                split(version("v1", &[]), Some(version("v3", &["nope"])), 10),
                r#"split: canary version "v3": "nope" is not an address with a port (e.g. "127.0.0.1:9001" or "payments.internal:80")"#,
            ),
            (
                split(version("v1", &[]), Some(version("v3", &["127.0.0.1:9103", "127.0.0.1:9103"])), 10),
                r#"split: canary version "v3": duplicate endpoint 127.0.0.1:9103"#,
            ),
            (split(version("v1", &[]), Some(v3()), 101), "split: canary_weight 101 is more than 100"),
            (split(version("v1", &[]), None, 5), "split: canary_weight 5 without a canary"),
            (split(version("", &[]), None, 0), "split: stable version cannot be empty"),
            (
                split(version("v 1", &[]), None, 0),
                r#"split: stable version "v 1" may only hold letters, digits, '-', '_' and '.'"#,
            ),
            (
                split(version("v1", &[]), Some(version("v1", &["127.0.0.1:9103"])), 10),
                r#"split: the canary's version "v1" is the stable one as well"#,
            ),
            (other_node, r#"split: desired state for node "orders" laid over node "payments""#),
        ] {
            let (config, problems) = overlay(&base, &desired);
            assert_eq!(problems, [reason]);
            assert_eq!(config, base, "{reason}: nothing changes");
        }
    }

    #[test]
    fn routes_that_do_not_serve_the_node_are_untouched() {
        // "orders" (another service's cluster) is checked with every split above; here no route serves
        // the node at all, which control hears of rather than a split that moves nothing.
        let base = base();
        let (config, problems) = overlay(&base, &split(version("v1", &[]), Some(v3()), 10));
        assert_eq!(
            problems,
            [
                r#"split: no route serves node "payments" (none has a backend whose cluster's version is "v1" or "v3")"#
            ]
        );
        assert_eq!(config, base);
    }

    #[test]
    fn a_sidecars_outbound_route_is_another_service_even_with_the_nodes_version() {
        let base = load(
            r#"
[node]
name = "payments"
version = "v1"
[[listeners]]
name = "in"
listen = "127.0.0.1:0"
mode = "inbound"
[[listeners]]
name = "out"
listen = "127.0.0.1:0"
mode = "outbound"
[[routes]]
name = "api"
listener = "in"
backends = [{ cluster = "payments-v1" }]
[[routes]]
name = "to-orders"
listener = "out"
backends = [{ cluster = "orders-v1" }]
[clusters.payments-v1]
version = "v1"
endpoints = ["127.0.0.1:9001"]
[clusters.orders-v1]
version = "v1"
endpoints = ["127.0.0.1:9004"]
"#,
        );
        let (config, problems) = overlay(&base, &split(version("v1", &[]), Some(v3()), 10));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(weights(&config, "api"), pairs(&[("payments-v1", 9_000), ("payments-v3", 1_000)]));
        assert_eq!(weights(&config, "to-orders"), weights(&base, "to-orders"), "orders' traffic never moves");
    }

    #[test]
    fn clusters_that_name_their_node_keep_other_nodes_of_the_same_version_out() {
        // A reverse proxy in front of two services, both at "v1".
        let base = load(
            r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[[routes]]
name = "payments"
match = { path_prefix = "/pay" }
backends = [{ cluster = "payments-v1" }]
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
"#,
        );
        let (config, problems) = overlay(&base, &split(version("v1", &[]), Some(v3()), 10));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(weights(&config, "payments"), pairs(&[("payments-v1", 9_000), ("payments-v3", 1_000)]));
        assert_eq!(weights(&config, "orders"), weights(&base, "orders"));
        assert_eq!(
            config.clusters["payments-v3"].node.as_deref(),
            Some("payments"),
            "the copy names its node"
        );
    }

    #[test]
    fn listed_routes_win_over_the_split() {
        let mut desired = split(version("v1", &[]), Some(v3()), 10);
        desired.routes = BTreeMap::from([(
            "admin".to_owned(),
            vec![DesiredBackend { cluster: "payments-v3".to_owned(), weight: 1 }],
        )]);
        let config = laid(&desired);
        assert_eq!(weights(&config, "admin"), pairs(&[("stable", 0), ("payments-v3", 1)]));
        assert_eq!(
            weights(&config, "api"),
            pairs(&[("stable", 9_000), ("canary", 0), ("payments-v3", 1_000)])
        );
    }

    #[test]
    fn a_name_held_by_another_version_gets_the_desired_suffix() {
        let taken =
            format!("{NODE}[clusters.payments-v3]\nversion = \"v9\"\nendpoints = [\"127.0.0.1:9009\"]\n");
        let base = load(&taken);
        let (config, problems) = overlay(&base, &split(version("v1", &[]), Some(v3()), 10));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(weights(&config, "admin"), pairs(&[("stable", 9_000), ("payments-v3-desired", 1_000)]));
        assert_eq!(config.clusters["payments-v3-desired"].version, "v3");
        assert_eq!(config.clusters["payments-v3"], base.clusters["payments-v3"]);

        // Both names held by other versions: no cluster can be added.
        let both = format!("{taken}[clusters.payments-v3-desired]\nendpoints = [\"127.0.0.1:9008\"]\n");
        let base = load(&both);
        let (config, problems) = overlay(&base, &split(version("v1", &[]), Some(v3()), 10));
        let reason = r#"no name for a cluster of version "v3": "payments-v3" and "payments-v3-desired" are clusters of other versions"#;
        assert_eq!(problems, [format!(r#"route "api": {reason}"#), format!(r#"route "admin": {reason}"#)]);
        assert_eq!(config, base);

        // A cluster of the version by that name (on no route) is taken, with the endpoints desired.
        let same =
            format!("{NODE}[clusters.payments-v3]\nversion = \"v3\"\nendpoints = [\"127.0.0.1:9009\"]\n");
        let (config, problems) = overlay(&load(&same), &split(version("v1", &[]), Some(v3()), 10));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(weights(&config, "admin"), pairs(&[("stable", 9_000), ("payments-v3", 1_000)]));
        assert_eq!(addresses(&config.clusters["payments-v3"]), ["127.0.0.1:9103"]);
    }

    /// An upstream on 127.0.0.1:0 answering every request with `name`.
    async fn upstream(name: &'static str) -> std::net::SocketAddr {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;

        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                let service = service_fn(move |_request| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(name.as_bytes()),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    /// A GET through the proxy, pinned to `version` when given; the upstream's answer.
    async fn get(proxy: std::net::SocketAddr, version: Option<&str>) -> String {
        use http_body_util::BodyExt;

        let stream = tokio::net::TcpStream::connect(proxy).await.expect("connect to the proxy");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let mut request = http::Request::get("/").header(http::header::HOST, "payments.test");
        if let Some(version) = version {
            request = request.header(crate::split::X_REMORA_VERSION, version);
        }
        let request = request.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("a request");
        let response = sender.send_request(request).await.expect("a response");
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = response.into_body().collect().await.expect("the body").to_bytes();
        String::from_utf8(body.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn a_split_applied_by_the_reloader_sends_requests_to_a_version_only_control_knows() {
        use crate::listener::{self, ListenerSet};
        use crate::snapshot::Shared;

        let (v1, v2) = (upstream("v1").await, upstream("v2").await);
        let text = format!(
            r#"
[node]
name = "payments"
version = "v1"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[[routes]]
name = "api"
backends = [{{ cluster = "stable" }}]
[clusters.stable]
version = "v1"
endpoints = ["{v1}"]
"#
        );
        let config = load(&text);
        let shared = Arc::new(Shared::new(config.clone(), 1));
        let mut listeners = ListenerSet::default();
        for listener in &config.listeners {
            let socket = listener::bind(listener).await.expect("bind the listener");
            listeners.start(listener, socket, &shared);
        }
        let proxy = listeners.addrs()[0].1;
        let reloader = Reloader::new(shared, 1, None, listeners);
        let generated = || {
            let snapshot = reloader.shared().snapshot.load();
            let cluster = snapshot.clusters().find(|cluster| &*cluster.name == "payments-v2").cloned();
            cluster
        };
        let desired = |revision, canary_weight| {
            let mut desired =
                split(version("v1", &[]), Some(version("v2", &[v2.to_string().as_str()])), canary_weight);
            desired.revision = revision;
            desired
        };
        assert_eq!(get(proxy, None).await, "v1");

        reloader.apply_desired(desired(1, 50), "test").await.expect("the split applies");
        assert_eq!(get(proxy, Some("v2")).await, "v2");
        assert_eq!(get(proxy, Some("v1")).await, "v1");
        let series = reloader.shared().stats.series("api", "payments-v2", "v2");
        assert_eq!(series.views().since_start.requests(), 1, "the canary's request counts under its version");
        let cluster = generated().expect("the generated cluster runs");

        // The next step keeps the very cluster (its pools, breaker and loads): only weights changed.
        reloader.apply_desired(desired(2, 100), "test").await.expect("the next step applies");
        assert!(Arc::ptr_eq(&cluster, &generated().expect("still there")));
        for _ in 0..4 {
            assert_eq!(get(proxy, None).await, "v2");
        }

        // A file reload keeps the overlay (and the cluster).
        let reloaded = text.replace(r#"name = "api""#, "name = \"api\"\ntimeout = \"5s\"");
        let applied = reloader.reload_text(&reloaded, "test").await.expect("the file reloads");
        assert!(!applied.changes.is_empty(), "the route's timeout changed");
        assert!(Arc::ptr_eq(&cluster, &generated().expect("kept over the file reload")));
        assert_eq!(get(proxy, None).await, "v2");

        // A split that does not fit is refused whole; the running one keeps serving.
        let refused = reloader.apply_desired(desired(3, 101), "test").await;
        assert!(
            matches!(refused, Err(crate::reload::ReloadError::Desired { revision: 3, .. })),
            "{refused:?}"
        );
        assert_eq!(get(proxy, None).await, "v2");
        assert_eq!(series.views().since_start.requests(), 7);
    }
}
