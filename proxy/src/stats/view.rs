//! The stats as operators read them: `/stats` (JSON, exact percentiles from the HDR histograms) and
//! `/metrics` (Prometheus text: the histograms folded into the configured buckets, counters, gauges).

use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::tcp::{Detected, Refusal, TcpFigures};
use super::{Recorder, RequestOutcome};
use crate::exposition::{Exposition, Kind};
use crate::snapshot::Shared;

/// `/stats`: per route × cluster × version, the last complete interval and everything since start.
pub fn stats_json(shared: &Shared) -> Value {
    let stats = &shared.stats;
    let (uptime, interval) = stats.spans();
    let series: Vec<Value> = stats
        .all()
        .iter()
        .map(|series| {
            let views = series.views();
            json!({
                "route": &*series.key.route,
                "cluster": &*series.key.cluster,
                "version": &*series.key.version,
                "last_interval": figures(&views.last, interval.as_secs_f64()),
                "since_start": figures(&views.since_start, uptime.as_secs_f64()),
            })
        })
        .collect();
    json!({
        "generation": stats.generation.load(Ordering::Relaxed),
        "uptime_seconds": uptime.as_secs_f64(),
        "interval_seconds": interval.as_secs_f64(),
        "unrouted": {
            "no_route": stats.no_route.load(Ordering::Relaxed),
            "bad_request": stats.bad_request.load(Ordering::Relaxed),
        },
        "series": series,
        "tcp": tcp_json(stats),
        "listeners": listeners_json(stats),
    })
}

/// Opaque TCP forwarding per listener × cluster (`cluster` null: the original destination).
fn tcp_json(stats: &super::Stats) -> Value {
    let all: Vec<Value> = stats
        .all_tcp()
        .iter()
        .map(|series| {
            let figures = series.figures();
            json!({
                "listener": &*series.listener,
                "cluster": if series.cluster.is_empty() { Value::Null } else { json!(&*series.cluster) },
                "connections": figures.connections,
                "active": figures.active,
                "received_bytes": figures.received,
                "sent_bytes": figures.sent,
                "connect_failures": figures.connect_failures,
            })
        })
        .collect();
    Value::Array(all)
}

/// Per sidecar listener: protocols detected, loops refused, connections with nowhere to go.
fn listeners_json(stats: &super::Stats) -> Value {
    let all: serde_json::Map<String, Value> = stats
        .all_listeners()
        .iter()
        .map(|(name, counters)| {
            let detected: serde_json::Map<String, Value> = Detected::ALL
                .iter()
                .map(|detected| (detected.name().to_owned(), json!(counters.detections(*detected))))
                .collect();
            let refused: serde_json::Map<String, Value> = Refusal::ALL
                .iter()
                .map(|refusal| (refusal.name().to_owned(), json!(counters.refusals(*refusal))))
                .collect();
            let figures =
                json!({ "detected": detected, "refused": refused, "loops_detected": counters.loops() });
            (name.to_string(), figures)
        })
        .collect();
    Value::Object(all)
}

fn figures(recorder: &Recorder, seconds: f64) -> Value {
    let requests = recorder.requests();
    let outcomes: serde_json::Map<String, Value> = RequestOutcome::ALL
        .iter()
        .map(|outcome| (outcome.name().to_owned(), json!(recorder.count(*outcome))))
        .collect();
    let classes: serde_json::Map<String, Value> = recorder
        .classes
        .iter()
        .enumerate()
        .map(|(class, count)| (format!("{}xx", class + 1), json!(count)))
        .collect();
    json!({
        "requests": requests,
        "rps": if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
        "success_rate": recorder.success_rate(),
        "outcomes": outcomes,
        "status": classes,
        "latency_ms": percentiles(&recorder.latency),
        "headers_latency_ms": percentiles(&recorder.headers),
    })
}

/// p50, p90, p99, p99.9, max and mean in milliseconds; `null` without samples.
fn percentiles(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "p50": ms(histogram.value_at_quantile(0.5)),
        "p90": ms(histogram.value_at_quantile(0.9)),
        "p99": ms(histogram.value_at_quantile(0.99)),
        "p999": ms(histogram.value_at_quantile(0.999)),
        "max": ms(histogram.max()),
        "mean": histogram.mean() / 1000.0,
    })
}

/// `/metrics`: Prometheus text exposition.
pub fn metrics_text(shared: &Shared) -> String {
    let stats = &shared.stats;
    let snapshot = shared.snapshot.load();
    let buckets_ms = &snapshot.config.stats.buckets_ms;
    let all = stats.all();
    let views: Vec<_> = all.iter().map(|series| (series, series.views().since_start.clone())).collect();

    let mut out = Exposition::new();
    out.family(
        "remora_requests_total",
        Kind::Counter,
        "Requests by route, backend cluster, version and outcome.",
    );
    for (series, recorder) in &views {
        let [route, cluster, version] = labels(series);
        for outcome in RequestOutcome::ALL {
            out.sample_u64(&[route, cluster, version, ("outcome", outcome.name())], recorder.count(outcome));
        }
    }
    out.family(
        "remora_responses_total",
        Kind::Counter,
        "Responses by route, backend cluster, version and status class.",
    );
    for (series, recorder) in &views {
        let [route, cluster, version] = labels(series);
        for (class, count) in recorder.classes.iter().enumerate() {
            const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
            out.sample_u64(&[route, cluster, version, ("code", CLASSES[class])], *count);
        }
    }
    out.family(
        "remora_request_duration_seconds",
        Kind::Histogram,
        "Request received to end of response body, from the proxy's HDR histograms.",
    );
    for (series, recorder) in &views {
        let buckets = fold(&recorder.latency, buckets_ms);
        out.histogram(
            &labels(series),
            &buckets,
            recorder.latency_sum_us as f64 / 1e6,
            recorder.latency.len(),
        );
    }
    out.family(
        "remora_response_headers_duration_seconds",
        Kind::Histogram,
        "Request received to response head sent, from the proxy's HDR histograms.",
    );
    for (series, recorder) in &views {
        let buckets = fold(&recorder.headers, buckets_ms);
        // HDR keeps no exact sum; the bucketed values' sum is exact to its 3 significant digits.
        let sum: f64 = recorder
            .headers
            .iter_recorded()
            .map(|value| value.value_iterated_to() as f64 * value.count_at_value() as f64)
            .sum();
        out.histogram(&labels(series), &buckets, sum / 1e6, recorder.headers.len());
    }
    out.family(
        "remora_unrouted_requests_total",
        Kind::Counter,
        "Requests answered before a route was chosen, by reason.",
    );
    out.sample_u64(&[("reason", "no_route")], stats.no_route.load(Ordering::Relaxed));
    out.sample_u64(&[("reason", "bad_request")], stats.bad_request.load(Ordering::Relaxed));

    let now = tokio::time::Instant::now();
    let clusters: Vec<_> = snapshot.clusters().collect();
    out.family("remora_breaker_state", Kind::Gauge, "1 for the state each cluster's circuit breaker is in.");
    for cluster in &clusters {
        if let Some(breaker) = &cluster.breaker {
            let state = breaker.view(now).state;
            for candidate in ["closed", "open", "half_open"] {
                let value = if candidate == state { 1 } else { 0 };
                out.sample_u64(&[("cluster", &cluster.name), ("state", candidate)], value);
            }
        }
    }
    out.family("remora_endpoints", Kind::Gauge, "Endpoints configured per cluster.");
    for cluster in &clusters {
        out.sample_u64(&[("cluster", &cluster.name)], cluster.endpoints.len() as u64);
    }
    out.family(
        "remora_ejected_endpoints",
        Kind::Gauge,
        "Endpoints ejected by outlier detection per cluster.",
    );
    for cluster in &clusters {
        let ejected = cluster.outlier.view(now).iter().filter(|health| health.ejected).count();
        out.sample_u64(&[("cluster", &cluster.name)], ejected as u64);
    }
    out.family("remora_active_requests", Kind::Gauge, "Requests in flight per cluster.");
    for cluster in &clusters {
        out.sample_u64(&[("cluster", &cluster.name)], u64::from(cluster.limits.view().requests.0));
    }
    out.family("remora_active_connections", Kind::Gauge, "Open downstream connections per listener.");
    for (listener, open) in stats.open_connections() {
        out.sample_u64(&[("listener", &listener)], open);
    }
    tcp_metrics(&mut out, stats);
    out.family("process_start_time_seconds", Kind::Gauge, "Start time of the process since the Unix epoch.");
    let (uptime, _) = stats.spans();
    let started = std::time::SystemTime::now() - uptime;
    let started = started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    out.sample(&[], started.as_secs_f64());
    out.family(
        "remora_config_generation",
        Kind::Gauge,
        "The generation of the configuration serving (1 at start).",
    );
    out.sample_u64(&[], stats.generation.load(Ordering::Relaxed));
    out.family("remora_config_reloads_total", Kind::Counter, "Configuration reloads by result.");
    out.sample_u64(&[("result", "ok")], stats.reloads_ok.load(Ordering::Relaxed));
    out.sample_u64(&[("result", "failed")], stats.reloads_failed.load(Ordering::Relaxed));
    out.finish()
}

/// The connection-level families: opaque TCP forwarding and sidecar listeners' decisions.
fn tcp_metrics(out: &mut Exposition, stats: &super::Stats) {
    let tcp: Vec<_> = stats.all_tcp().iter().map(|series| (series.clone(), series.figures())).collect();
    /// A family: name, kind, help, and the figure it shows.
    type Family = (&'static str, Kind, &'static str, fn(&TcpFigures) -> u64);
    let families: [Family; 5] = [
        (
            "remora_tcp_connections_total",
            Kind::Counter,
            "Connections forwarded as opaque TCP, by listener and cluster (empty: the original destination).",
            |figures| figures.connections,
        ),
        ("remora_tcp_active_connections", Kind::Gauge, "Opaque TCP connections open.", |figures| {
            figures.active
        }),
        (
            "remora_tcp_received_bytes_total",
            Kind::Counter,
            "Bytes received from downstream clients and forwarded upstream over opaque TCP.",
            |figures| figures.received,
        ),
        (
            "remora_tcp_sent_bytes_total",
            Kind::Counter,
            "Bytes received from upstreams and sent to downstream clients over opaque TCP.",
            |figures| figures.sent,
        ),
        (
            "remora_tcp_connect_failures_total",
            Kind::Counter,
            "Upstream connects that failed for opaque TCP connections.",
            |figures| figures.connect_failures,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for (series, figures) in &tcp {
            // Forwarded to the original destination: no cluster label (Prometheus reads an empty
            // value as no label anyway).
            let labels: &[(&str, &str)] = &[("listener", &series.listener), ("cluster", &series.cluster)];
            let labels = if series.cluster.is_empty() { &labels[..1] } else { labels };
            out.sample_u64(labels, value(figures));
        }
    }
    let listeners = stats.all_listeners();
    out.family(
        "remora_protocol_detections_total",
        Kind::Counter,
        "Protocols detected on inbound and outbound connections (timeout: nothing decisive within detect_timeout, forwarded as TCP).",
    );
    for (listener, counters) in &listeners {
        for detected in Detected::ALL {
            out.sample_u64(
                &[("listener", listener), ("result", detected.name())],
                counters.detections(detected),
            );
        }
    }
    out.family(
        "remora_loops_detected_total",
        Kind::Counter,
        "Connections refused because their original destination was this proxy's own listener.",
    );
    for (listener, counters) in &listeners {
        out.sample_u64(&[("listener", listener)], counters.loops());
    }
    out.family(
        "remora_connections_refused_total",
        Kind::Counter,
        "Sidecar connections closed without forwarding: not redirected and nothing to serve them.",
    );
    for (listener, counters) in &listeners {
        for refusal in Refusal::ALL {
            out.sample_u64(&[("listener", listener), ("reason", refusal.name())], counters.refusals(refusal));
        }
    }
}

fn labels(series: &super::Series) -> [(&'static str, &str); 3] {
    [("route", &*series.key.route), ("cluster", &*series.key.cluster), ("version", &*series.key.version)]
}

/// Cumulative counts at each bucket bound (ms in, seconds out). A value counts under a bound when its
/// HDR bucket starts at or below it: exact to the histogram's 3 significant digits.
fn fold(histogram: &Histogram<u64>, buckets_ms: &[f64]) -> Vec<(f64, u64)> {
    let mut counts = vec![0u64; buckets_ms.len()];
    for value in histogram.iter_recorded() {
        let lowest_us = histogram.lowest_equivalent(value.value_iterated_to()) as f64;
        if let Some(first) = buckets_ms.iter().position(|bound| lowest_us <= bound * 1000.0) {
            counts[first] += value.count_at_value();
        }
    }
    let mut cumulative = 0;
    buckets_ms
        .iter()
        .zip(counts)
        .map(|(bound, count)| {
            cumulative += count;
            (bound / 1000.0, cumulative)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_counts_each_value_under_its_first_bound() {
        let mut histogram = super::super::histogram();
        for value in [500, 1_000, 1_001, 4_000, 80_000, 20_000_000] {
            histogram.record(value).unwrap();
        }
        let folded = fold(&histogram, &[1.0, 5.0, 100.0]);
        assert_eq!(folded, vec![(0.001, 2), (0.005, 4), (0.1, 5)]);
    }
}
