//! The report a proxy sends to the control process: what every series recorded since the previous
//! report (histograms and counts), each cluster's breaker and ejection state, and the events raised
//! since. The wire type lives in `remora-config` ([`remora_config::report`]), shared with control.

use std::time::{SystemTime, UNIX_EPOCH};

use remora_config::report::{
    BreakerReport, BreakerState, Counts, EncodedHistogram, EventReport, Report, SeriesReport, REPORT_SCHEMA,
};

use remora_config::NodeTraffic;

use super::{Recorder, RequestOutcome};
use crate::events::{Event, EventKind};
use crate::snapshot::Shared;

/// Who reports, and where the previous report ended.
#[derive(Debug)]
pub struct Reporter {
    pub node: String,
    pub node_version: String,
    pub proxy: String,
    sequence: u64,
    last_event: u64,
}

impl Reporter {
    pub fn new(node: String, node_version: String, proxy: String) -> Self {
        Self { node, node_version, proxy, sequence: 0, last_event: 0 }
    }

    /// The next report: takes what was recorded since the previous one, so nothing is counted twice.
    ///
    /// Only the node's own traffic is reported as the node's: the series of the clusters that carry
    /// it ([`NodeTraffic`]) and of an inbound listener's local app. A sidecar's calls out to other
    /// services (or another service's route in a shared proxy) stay in `/stats` and `/metrics`; were
    /// they reported, another service's failures would degrade this node and heal the wrong one.
    pub fn next(&mut self, shared: &Shared, desired_revision: Option<u64>) -> Report {
        let (taken, start, end) = shared.stats.take_unreported();
        let snapshot = shared.snapshot.load();
        let config = &snapshot.config;
        let traffic = NodeTraffic::new(config, &self.node, vec![self.node_version.as_str()]);
        let (own, local_apps) = (traffic.clusters(), traffic.local_app_listeners());
        let local_app = |route: &str, cluster: &str| {
            local_apps.contains(&route) && !config.clusters.contains_key(cluster)
        };
        let series = taken
            .into_iter()
            .filter(|(key, _)| own.contains(&*key.cluster) || local_app(&key.route, &key.cluster))
            .map(|(key, recorder)| SeriesReport {
                route: key.route.to_string(),
                cluster: key.cluster.to_string(),
                version: key.version.to_string(),
                counts: counts(&recorder),
                latency: EncodedHistogram::new(recorder.latency),
                headers_latency: EncodedHistogram::new(recorder.headers),
            })
            .collect();
        let now = tokio::time::Instant::now();
        let breakers = snapshot
            .clusters()
            .map(|cluster| BreakerReport {
                cluster: cluster.name.to_string(),
                state: match cluster.breaker.as_ref().map(|breaker| breaker.view(now).state) {
                    None => BreakerState::Disabled,
                    Some("open") => BreakerState::Open,
                    Some("half_open") => BreakerState::HalfOpen,
                    Some(_) => BreakerState::Closed,
                },
                ejected_endpoints: cluster.outlier.view(now).iter().filter(|health| health.ejected).count()
                    as u32,
                endpoints: cluster.endpoints.len() as u32,
            })
            .collect();
        let events = shared.events.after(self.last_event);
        if let Some(last) = events.last() {
            self.last_event = last.sequence;
        }
        self.sequence += 1;
        Report {
            schema: REPORT_SCHEMA,
            node: self.node.clone(),
            node_version: self.node_version.clone(),
            proxy: self.proxy.clone(),
            sequence: self.sequence,
            start_unix_ms: unix_ms(start),
            end_unix_ms: unix_ms(end),
            config_generation: shared.stats.generation.load(std::sync::atomic::Ordering::Relaxed),
            desired_revision,
            series,
            breakers,
            events: events.iter().map(event).collect(),
        }
    }
}

fn counts(recorder: &Recorder) -> Counts {
    let count = |outcome| recorder.count(outcome);
    Counts {
        requests: recorder.requests(),
        success: count(RequestOutcome::Success),
        client_error: count(RequestOutcome::ClientError),
        server_error: count(RequestOutcome::ServerError),
        limits: count(RequestOutcome::Limits),
        open: count(RequestOutcome::Open),
        ejected: count(RequestOutcome::Ejected),
        timeout: count(RequestOutcome::Timeout),
        connect: count(RequestOutcome::Connect),
        reset: count(RequestOutcome::Reset),
        status_1xx: recorder.classes[0],
        status_2xx: recorder.classes[1],
        status_3xx: recorder.classes[2],
        status_4xx: recorder.classes[3],
        status_5xx: recorder.classes[4],
        latency_sum_us: recorder.latency_sum_us,
    }
}

fn event(event: &Event) -> EventReport {
    let detail = match &event.kind {
        EventKind::BreakerOpened { open_for } => format!("open for {} ms", open_for.as_millis()),
        EventKind::BreakerHalfOpen | EventKind::BreakerClosed => String::new(),
        EventKind::EndpointEjected { endpoint, ejected_for, ejections } => {
            format!("{endpoint} ejected for {} ms (ejection {ejections})", ejected_for.as_millis())
        }
        EventKind::EndpointRestored { endpoint } => format!("{endpoint} restored"),
    };
    EventReport {
        unix_ms: unix_ms(event.at),
        cluster: event.cluster.clone(),
        kind: event.kind.name().to_owned(),
        detail,
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|since| since.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let config = remora_config::load_str(
            r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[[routes]]
name = "api"
backends = [{ cluster = "stable", weight = 90 }, { cluster = "canary", weight = 10 }]
[clusters.stable]
version = "v1"
endpoints = ["127.0.0.1:9001"]
[clusters.canary]
version = "v2"
endpoints = ["127.0.0.1:9002"]
[clusters.canary.breaker]
window = "10s"
"#,
            remora_config::Source::TextOnly,
        )
        .expect("a valid config");
        Shared::new(config, 2)
    }

    /// Two proxies' reports, sent over the wire and merged, give exactly the histogram of every
    /// request both recorded; a report takes each request once.
    #[test]
    fn reports_round_trip_and_merge_exactly() {
        let (a, b) = (shared(), shared());
        let mut everything = super::super::histogram();
        let mut value = 977u64;
        for index in 0..5_000u64 {
            value = (value * 48_271) % 2_147_483_647;
            let latency = 200 + value % 120_000;
            let proxy = if index % 3 == 0 { &a } else { &b };
            let series = proxy.stats.series("api", "canary", "v2");
            series.record(RequestOutcome::Success, 200, latency / 2, latency);
            everything.record(latency).expect("record");
        }
        a.events.raise("canary", EventKind::BreakerOpened { open_for: std::time::Duration::from_secs(5) });

        let mut merged = EncodedHistogram::default();
        let mut requests = 0;
        for (index, proxy) in [&a, &b].into_iter().enumerate() {
            let mut reporter = Reporter::new("payments".into(), "v1".into(), format!("proxy-{index}"));
            let report = reporter.next(proxy, Some(7));
            let decoded = Report::from_json(&report.to_json()).expect("a report reads back");
            assert_eq!(decoded, report);
            assert_eq!(decoded.sequence, 1);
            assert_eq!(decoded.series.len(), 1, "only series with requests are reported");
            let series = &decoded.series[0];
            assert_eq!((series.route.as_str(), series.version.as_str()), ("api", "v2"));
            requests += series.counts.requests;
            merged.merge(&series.latency).expect("merge");
            let canary = decoded.breakers.iter().find(|breaker| breaker.cluster == "canary").expect("canary");
            assert_eq!(canary.state, BreakerState::Closed);
            let stable = decoded.breakers.iter().find(|breaker| breaker.cluster == "stable").expect("stable");
            assert_eq!(stable.state, BreakerState::Disabled);

            let again = reporter.next(proxy, Some(7));
            assert_eq!(again.sequence, 2);
            assert!(again.series.is_empty(), "the second report has nothing new");
            assert!(again.events.is_empty(), "events are reported once");
        }
        assert_eq!(requests, 5_000);
        assert_eq!(merged, EncodedHistogram::new(everything));
        let events = Reporter::new(String::new(), String::new(), String::new()).next(&a, None).events;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "breaker_opened");
        assert_eq!(events[0].detail, "open for 5000 ms");
    }

    /// A sidecar reports the traffic to its node (inbound routes, its local app) and not its own calls
    /// out to another service, even one whose clusters carry the same version label.
    #[test]
    fn only_the_nodes_own_traffic_is_reported() {
        let config = remora_config::load_str(
            r#"
[node]
name = "payments"
version = "v1"

[[listeners]]
name = "in"
listen = "127.0.0.1:0"
mode = "inbound"

[[listeners]]
name = "app"
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
backends = [{ cluster = "orders" }]

[clusters.payments-v1]
version = "v1"
endpoints = ["127.0.0.1:9001"]

[clusters.orders]
version = "v1"
endpoints = ["127.0.0.1:9004"]
"#,
            remora_config::Source::TextOnly,
        )
        .expect("a valid config");
        let shared = Shared::new(config, 1);
        for (route, cluster) in [
            ("api", "payments-v1"),
            ("app", "127.0.0.1:8080"),
            ("to-orders", "orders"),
            ("out", "10.0.0.9:80"),
        ] {
            shared.stats.series(route, cluster, "v1").record(RequestOutcome::Success, 200, 100, 200);
        }
        let report = Reporter::new("payments".into(), "v1".into(), "proxy".into()).next(&shared, None);
        let reported: Vec<(&str, &str)> =
            report.series.iter().map(|series| (series.route.as_str(), series.cluster.as_str())).collect();
        assert_eq!(reported, [("api", "payments-v1"), ("app", "127.0.0.1:8080")]);
        // Still served locally: /stats has every series.
        assert_eq!(shared.stats.all().len(), 4);
    }
}
