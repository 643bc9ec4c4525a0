//! criterion micro-benchmarks of the proxy's hot paths: `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use remora_config::{load_str, Source};
use remora_proxy::internals::{
    route_and_pick, snapshot, Balancer, Breaker, CallResult, Outcome, RequestKey, RequestOutcome, Snapshot,
    Stats,
};
use tokio::time::Instant;

/// 1,000 routes on distinct hosts and paths; the benchmark asks for the last one (the worst case of
/// an in-order table) and for one in the middle.
fn thousand_routes() -> Snapshot {
    let mut text = String::from("[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n");
    for index in 0..1000 {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{index}\"\nmatch = {{ host = \"svc{index}.example.com\", path_prefix = \"/api/{index}\", method = \"GET\" }}\nbackends = [{{ cluster = \"a\", weight = 90 }}, {{ cluster = \"b\", weight = 10 }}]\n"
        ));
    }
    text.push_str(
        "[clusters.a]\nendpoints = [\"127.0.0.1:9001\"]\n[clusters.b]\nendpoints = [\"127.0.0.1:9002\"]\n",
    );
    let config = load_str(&text, Source::TextOnly).expect("generated config is valid");
    snapshot(config)
}

fn route_match(criterion: &mut Criterion) {
    let snapshot = thousand_routes();
    let headers = HeaderMap::new();
    let method = Method::GET;
    for (label, index) in
        [("route match: 1,000 routes, last", 999), ("route match: 1,000 routes, middle", 500)]
    {
        let host = format!("svc{index}.example.com");
        let path = format!("/api/{index}/users");
        criterion.bench_function(label, |bench| {
            bench.iter(|| {
                let key = RequestKey {
                    host: Some(black_box(&host)),
                    path: black_box(&path),
                    method: &method,
                    headers: &headers,
                };
                black_box(route_and_pick(&snapshot, "public", &key))
            })
        });
    }
}

fn weighted_pick(criterion: &mut Criterion) {
    let text = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nbackends = [{ cluster = \"a\", weight = 90 }, { cluster = \"b\", weight = 10 }]\n[clusters.a]\nendpoints = [\"127.0.0.1:9001\"]\n[clusters.b]\nendpoints = [\"127.0.0.1:9002\"]\n";
    let snapshot = snapshot(load_str(text, Source::TextOnly).unwrap());
    let headers = HeaderMap::new();
    let method = Method::GET;
    criterion.bench_function("route + weighted pick: one route, 90/10", |bench| {
        bench.iter(|| {
            let key = RequestKey { host: None, path: black_box("/"), method: &method, headers: &headers };
            black_box(route_and_pick(&snapshot, "public", &key))
        })
    });
}

fn breaker(criterion: &mut Criterion) {
    let text = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nbackends = [{ cluster = \"a\" }]\n[clusters.a]\nendpoints = [\"127.0.0.1:9001\"]\n[clusters.a.breaker]\nwindow = \"10s\"\n";
    let config = load_str(text, Source::TextOnly).unwrap();
    let breaker = Breaker::new(config.clusters["a"].breaker.as_ref().unwrap());
    let outcome = Outcome { result: CallResult::Status(200), duration: std::time::Duration::from_millis(1) };
    criterion.bench_function("breaker admit + record (closed, time window)", |bench| {
        bench.iter(|| {
            let now = Instant::now();
            let permit = breaker.admit(now).unwrap();
            black_box(breaker.record(permit, outcome, now))
        })
    });
}

fn p2c_pick(criterion: &mut Criterion) {
    let now = Instant::now();
    let balancer = Balancer::new(remora_config::Balance::P2cEwma, 8, now);
    for endpoint in 0..8 {
        balancer.observe(endpoint, std::time::Duration::from_micros(500 + endpoint as u64 * 100), now);
    }
    criterion.bench_function("P2C peak-EWMA pick over 8 endpoints + start/observe", |bench| {
        bench.iter(|| {
            let now = Instant::now();
            let endpoint = balancer.pick(|_| true, now).unwrap();
            let in_flight = balancer.start(endpoint);
            balancer.observe(endpoint, std::time::Duration::from_micros(700), now);
            drop(in_flight);
            black_box(endpoint)
        })
    });
}

fn histogram_record(criterion: &mut Criterion) {
    let stats = Stats::new(1);
    let series = stats.series("api", "payments", "v1");
    let mut latency = 700u64;
    criterion.bench_function(
        "stats record: one request into its series (2 HDR histograms + counts)",
        |bench| {
            bench.iter(|| {
                // A spread of latencies, so the histograms' counts are not one hot cache line.
                latency = (latency * 7 + 13) % 90_000 + 100;
                series.record(RequestOutcome::Success, 200, latency / 2, black_box(latency));
            })
        },
    );
}

criterion_group!(benches, route_match, weighted_pick, breaker, p2c_pick, histogram_record);
criterion_main!(benches);
