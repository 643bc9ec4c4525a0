//! criterion micro-benchmarks of the proxy's hot paths: `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use remora_config::{load_str, Source};
use remora_proxy::internals::{route_and_pick, snapshot, RequestKey, Snapshot};

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

criterion_group!(benches, route_match, weighted_pick);
criterion_main!(benches);
