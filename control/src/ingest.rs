//! Reports from proxies, merged per node and version over a sliding window. Histograms merge exactly
//! (HDR), so the percentiles control decides on are those of every request the node's proxies saw,
//! not an average of averages.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use hdrhistogram::Histogram;
use remora_config::report::{BreakerState, Counts, Report};

/// What one report brought for one version of a node.
#[derive(Debug)]
struct Entry {
    end_unix_ms: u64,
    version: String,
    counts: Counts,
    latency: Histogram<u64>,
}

/// The recent reports of every node.
#[derive(Debug)]
pub struct Windows {
    window: Duration,
    nodes: BTreeMap<String, NodeWindow>,
}

#[derive(Debug, Default)]
struct NodeWindow {
    entries: VecDeque<Entry>,
    /// Per proxy: the last report's sequence and time, and its breakers.
    proxies: BTreeMap<String, ProxySeen>,
}

#[derive(Clone, Debug, Default)]
pub struct ProxySeen {
    pub sequence: u64,
    pub last_unix_ms: u64,
    pub breakers: Vec<(String, BreakerState)>,
    pub desired_revision: Option<u64>,
}

/// One version's figures over the window.
#[derive(Clone, Debug)]
pub struct Merged {
    pub counts: Counts,
    pub latency: Histogram<u64>,
    pub span: Duration,
}

impl Merged {
    pub fn p(&self, quantile: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(quantile) as f64 / 1000.0)
    }

    pub fn rps(&self) -> f64 {
        let seconds = self.span.as_secs_f64();
        if seconds > 0.0 {
            self.counts.requests as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Why a report was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("report {sequence} from proxy {proxy:?} was already received (last was {last})")]
    Duplicate { proxy: String, sequence: u64, last: u64 },
}

impl Windows {
    pub fn new(window: Duration) -> Self {
        Self { window, nodes: BTreeMap::new() }
    }

    /// Takes a report (already decoded and checked). A report whose sequence is not above the
    /// proxy's last is a duplicate and refused; a proxy that restarted starts over at 1, which is
    /// taken when its previous report is older than the window.
    pub fn ingest(&mut self, report: &Report, now_unix_ms: u64) -> Result<(), Refused> {
        let node = self.nodes.entry(report.node.clone()).or_default();
        if let Some(seen) = node.proxies.get(&report.proxy) {
            let stale = now_unix_ms.saturating_sub(seen.last_unix_ms) > self.window.as_millis() as u64;
            if report.sequence <= seen.sequence && !stale && report.sequence != 1 {
                return Err(Refused::Duplicate {
                    proxy: report.proxy.clone(),
                    sequence: report.sequence,
                    last: seen.sequence,
                });
            }
        }
        node.proxies.insert(
            report.proxy.clone(),
            ProxySeen {
                sequence: report.sequence,
                last_unix_ms: now_unix_ms,
                breakers: report
                    .breakers
                    .iter()
                    .map(|breaker| (breaker.cluster.clone(), breaker.state))
                    .collect(),
                desired_revision: report.desired_revision,
            },
        );
        for series in &report.series {
            node.entries.push_back(Entry {
                end_unix_ms: now_unix_ms,
                version: series.version.clone(),
                counts: series.counts,
                latency: series.latency.as_histogram().clone(),
            });
        }
        self.expire(now_unix_ms);
        Ok(())
    }

    /// Drops what is older than the window.
    pub fn expire(&mut self, now_unix_ms: u64) {
        let oldest = now_unix_ms.saturating_sub(self.window.as_millis() as u64);
        for node in self.nodes.values_mut() {
            while node.entries.front().is_some_and(|entry| entry.end_unix_ms < oldest) {
                node.entries.pop_front();
            }
        }
    }

    /// A node's figures over the window, per version (all versions merged under `None`'s key `"*"`).
    pub fn merged(&self, node: &str, now_unix_ms: u64) -> BTreeMap<String, Merged> {
        self.merged_since(node, 0, now_unix_ms)
    }

    /// Like [`Windows::merged`], counting only reports received after `since_unix_ms` (a rollout
    /// step judges the traffic it saw itself).
    pub fn merged_since(&self, node: &str, since_unix_ms: u64, now_unix_ms: u64) -> BTreeMap<String, Merged> {
        let mut merged: BTreeMap<String, Merged> = BTreeMap::new();
        let Some(window) = self.nodes.get(node) else { return merged };
        let oldest = now_unix_ms.saturating_sub(self.window.as_millis() as u64).max(since_unix_ms);
        let first =
            window.entries.iter().find(|entry| entry.end_unix_ms >= oldest).map(|entry| entry.end_unix_ms);
        let span = Duration::from_millis(now_unix_ms.saturating_sub(first.unwrap_or(now_unix_ms)))
            .max(Duration::from_secs(1))
            .min(self.window);
        for entry in window.entries.iter().filter(|entry| entry.end_unix_ms >= oldest) {
            for key in [entry.version.as_str(), "*"] {
                let slot = merged.entry(key.to_owned()).or_insert_with(|| Merged {
                    counts: Counts::default(),
                    latency: empty_histogram(),
                    span,
                });
                slot.counts.merge(&entry.counts);
                let _ = slot.latency.add(&entry.latency);
            }
        }
        merged
    }

    /// The proxies seen for a node, by id.
    pub fn proxies(&self, node: &str) -> BTreeMap<String, ProxySeen> {
        self.nodes.get(node).map(|window| window.proxies.clone()).unwrap_or_default()
    }

    /// The desired revision `proxy` acknowledged in its last report, if it has reported.
    pub fn acked(&self, node: &str, proxy: &str) -> Option<u64> {
        self.nodes.get(node)?.proxies.get(proxy)?.desired_revision
    }

    /// When any proxy of the node last reported.
    pub fn last_report(&self, node: &str) -> Option<u64> {
        self.nodes.get(node)?.proxies.values().map(|seen| seen.last_unix_ms).max()
    }
}

fn empty_histogram() -> Histogram<u64> {
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_config::report::{EncodedHistogram, SeriesReport, REPORT_SCHEMA};

    fn report(proxy: &str, sequence: u64, version: &str, latencies: &[u64], failures: u64) -> Report {
        let mut histogram = empty_histogram();
        for latency in latencies {
            histogram.record(*latency).expect("record");
        }
        let requests = latencies.len() as u64;
        Report {
            schema: REPORT_SCHEMA,
            node: "payments".into(),
            node_version: version.into(),
            proxy: proxy.into(),
            sequence,
            start_unix_ms: 0,
            end_unix_ms: 0,
            config_generation: 1,
            desired_revision: Some(3),
            series: vec![SeriesReport {
                route: "api".into(),
                cluster: format!("payments-{version}"),
                version: version.into(),
                counts: Counts {
                    requests,
                    success: requests - failures,
                    server_error: failures,
                    ..Counts::default()
                },
                latency: EncodedHistogram::new(histogram.clone()),
                headers_latency: EncodedHistogram::new(histogram),
            }],
            breakers: Vec::new(),
            events: Vec::new(),
        }
    }

    #[test]
    fn two_proxies_merge_exactly_per_version() {
        let mut windows = Windows::new(Duration::from_secs(10));
        let fast: Vec<u64> = (0..98).map(|index| 1_000 + index).collect();
        windows.ingest(&report("a", 1, "v1", &fast, 0), 1_000).unwrap();
        windows.ingest(&report("b", 1, "v1", &[80_000, 81_000], 2), 1_500).unwrap();
        windows.ingest(&report("a", 2, "v2", &[2_000], 0), 2_000).unwrap();
        let merged = windows.merged("payments", 2_000);
        let v1 = &merged["v1"];
        assert_eq!(v1.counts.requests, 100);
        assert_eq!(v1.counts.success, 98);
        assert!(v1.p(0.99).unwrap() >= 80.0, "p99 among the slow: {:?}", v1.p(0.99));
        assert!(v1.p(0.5).unwrap() < 2.0);
        assert_eq!(merged["v2"].counts.requests, 1);
        assert_eq!(merged["*"].counts.requests, 101);
        assert_eq!(windows.proxies("payments").len(), 2);
        assert_eq!(windows.last_report("payments"), Some(2_000));
    }

    #[test]
    fn old_reports_leave_the_window_and_duplicates_are_refused() {
        let mut windows = Windows::new(Duration::from_secs(10));
        windows.ingest(&report("a", 1, "v1", &[1_000], 0), 1_000).unwrap();
        windows.ingest(&report("a", 2, "v1", &[1_000], 0), 2_000).unwrap();
        assert_eq!(
            windows.ingest(&report("a", 2, "v1", &[1_000], 0), 2_500),
            Err(Refused::Duplicate { proxy: "a".into(), sequence: 2, last: 2 })
        );
        assert_eq!(windows.merged("payments", 2_500)["v1"].counts.requests, 2);
        assert_eq!(windows.merged("payments", 11_500)["v1"].counts.requests, 1, "the first left the window");
        assert!(windows.merged("payments", 30_000).is_empty());
        // A restarted proxy starts over at 1.
        windows.ingest(&report("a", 1, "v1", &[1_000], 0), 30_000).unwrap();
    }
}
