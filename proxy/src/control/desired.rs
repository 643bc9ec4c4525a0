//! Desired state from control: a long-poll on `/v1/nodes/{node}/desired?after=REV`, each new revision
//! applied through the reload path ([`Reloader::apply_desired`]) as a file change is, and acknowledged
//! by the next report (`desired_revision`).
//!
//! Desired state is an overlay on the file's configuration, not a configuration of its own: each route
//! it names takes its weights (see [`overlay`]), and the reloader lays the last applied revision over
//! every configuration the file brings later, so a file reload does not undo control's rollout.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use remora_config::control::DesiredState;
use remora_config::Config;
use tokio::sync::watch;

use super::api::{Api, Failure, LONG_POLL_WAIT};
use super::backoff::Backoff;
use super::Link;
use crate::reload::Reloader;

/// The largest weight a backend may have (the configuration's validation refuses more).
const MAX_WEIGHT: u32 = 1_000_000;

/// `base` with control's route weights laid over it. A route `desired` names takes the weights listed
/// for its backends and 0 for a backend the list leaves out: the list replaces the route's split, as
/// [`DesiredState`] says. A route whose list does not fit `base` keeps its weights; the reasons come
/// back, one line each: a route or cluster the configuration lacks, a cluster that is not one of the
/// route's backends or is listed twice, a weight over 1,000,000, weights that add up to 0.
///
/// Control's own path ([`Reloader::apply_desired`]) refuses a revision with any such line; a file
/// reload applies what still fits and logs the rest.
pub fn overlay(base: &Config, desired: &DesiredState) -> (Config, Vec<String>) {
    let mut config = base.clone();
    let mut problems = Vec::new();
    for (name, backends) in &desired.routes {
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
    (config, problems)
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
            tracing::info!(revision, generation = applied.generation, "desired state applied");
        }
    }
}

#[cfg(test)]
mod tests {
    use remora_config::control::DesiredBackend;

    use super::*;

    fn base() -> Config {
        remora_config::load_str(
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
            remora_config::Source::TextOnly,
        )
        .expect("a valid config")
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
        DesiredState { node: "payments".to_owned(), revision: 1, routes }
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
}
