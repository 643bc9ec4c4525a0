//! The Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! The admin server's `/metrics` renders through this: our numbers live in HDR histograms and atomics,
//! not in a metrics registry, so the handler walks them and writes each family here. One `String` is
//! the only allocation that grows with the output; the current family's name reuses its buffer.
//!
//! What the format asks (and `promtool check metrics` checks):
//! - `# HELP` text escapes `\` and newline; label values escape `\`, `"` and newline. Anything else,
//!   non-ASCII included, is written as it is (the output is UTF-8).
//! - Values are Go-parseable floats: `+Inf`, `-Inf`, `NaN`, plain decimals, and an exponent only far
//!   from 1 (`1e21`, `1e-7`). Integer samples and histogram counts are written as integers, exact
//!   past 2^53.
//! - A counter's family name keeps its `_total` suffix in `# TYPE` (the classic text format does).
//!
//! Metric and label names come from our code, never from users, so they are checked by
//! `debug_assert!` only.

use std::fmt::Write as _;

/// The `Content-Type` of a response carrying [`Exposition::finish`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type, as written in `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition being written: families, each followed by its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    /// The current family's name; empty before the first [`family`](Exposition::family).
    name: String,
    kind: Option<Kind>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: `# HELP name help` and `# TYPE name kind`. Every sample that follows until the
    /// next `family` belongs to it. A family with no samples is valid (Prometheus and promtool accept
    /// HELP and TYPE alone), so both lines are written at once.
    ///
    /// A counter's `name` ends in `_total`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        debug_assert!(!help.is_empty(), "metric {name} has no help text");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "counter {name} must end in _total");
        self.name.clear();
        self.name.push_str(name);
        self.kind = Some(kind);

        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        write_escaped(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// A counter or gauge sample of the current family: `name{k="v",...} value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample_line(labels);
        write_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// An integer sample of the current family, exact for values above 2^53.
    pub fn sample_u64(&mut self, labels: &[(&str, &str)], value: u64) {
        self.sample_line(labels);
        write_u64(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram's series for one label set: `name_bucket{..., le="bound"} n` for every bucket, then
    /// `le="+Inf"` with `count`, then `name_sum` and `name_count`.
    ///
    /// `buckets` are `(upper bound, cumulative count)` with strictly increasing finite bounds and
    /// non-decreasing counts no greater than `count`. The `+Inf` bucket is written from `count`: a
    /// non-finite bound in `buckets` is skipped rather than written twice.
    pub fn histogram(&mut self, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        debug_assert_eq!(self.kind, Some(Kind::Histogram), "{} is not a histogram", self.name);
        debug_assert!(labels.iter().all(|(name, _)| *name != "le"), "`le` is reserved in histograms");
        debug_assert!(
            buckets.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1),
            "{}: bucket bounds must increase and counts must not decrease: {buckets:?}",
            self.name
        );
        debug_assert!(
            buckets.iter().all(|&(bound, n)| bound.is_finite() && n <= count),
            "{}: bounds must be finite and bucket counts at most {count}: {buckets:?}",
            self.name
        );
        for &(bound, n) in buckets.iter().filter(|(bound, _)| bound.is_finite()) {
            self.series_start("_bucket", labels);
            self.bound_label(labels, bound);
            write_u64(&mut self.out, n);
            self.out.push('\n');
        }
        self.series_start("_bucket", labels);
        self.bound_label(labels, f64::INFINITY);
        write_u64(&mut self.out, count);
        self.out.push('\n');

        self.series_start("_sum", labels);
        self.labels_end(labels);
        write_f64(&mut self.out, sum);
        self.out.push('\n');

        self.series_start("_count", labels);
        self.labels_end(labels);
        write_u64(&mut self.out, count);
        self.out.push('\n');
    }

    /// The text, to be served with [`CONTENT_TYPE`].
    pub fn finish(self) -> String {
        self.out
    }

    /// Writes `name{labels} ` for a counter or gauge sample.
    fn sample_line(&mut self, labels: &[(&str, &str)]) {
        debug_assert!(
            matches!(self.kind, Some(Kind::Counter | Kind::Gauge)),
            "a sample needs a counter or gauge family first (current: {:?} {:?})",
            self.kind,
            self.name
        );
        self.series_start("", labels);
        self.labels_end(labels);
    }

    /// Writes `name suffix` and, if there are labels, `{k="v",...` (without the closing brace).
    fn series_start(&mut self, suffix: &str, labels: &[(&str, &str)]) {
        self.out.push_str(&self.name);
        self.out.push_str(suffix);
        for (index, (name, value)) in labels.iter().enumerate() {
            debug_assert!(is_label_name(name), "invalid label name {name:?}");
            self.out.push(if index == 0 { '{' } else { ',' });
            self.out.push_str(name);
            self.out.push_str("=\"");
            write_escaped(&mut self.out, value, true);
            self.out.push('"');
        }
    }

    /// Closes what [`series_start`](Self::series_start) opened, then the space before the value.
    fn labels_end(&mut self, labels: &[(&str, &str)]) {
        self.out.push_str(if labels.is_empty() { " " } else { "} " });
    }

    /// Adds `le="bound"` to the labels [`series_start`](Self::series_start) wrote, and closes them.
    fn bound_label(&mut self, labels: &[(&str, &str)], bound: f64) {
        self.out.push_str(if labels.is_empty() { "{le=\"" } else { ",le=\"" });
        write_f64(&mut self.out, bound);
        self.out.push_str("\"} ");
    }
}

/// Writes `text` with `\` and newline escaped, and `"` too when `quotes` (label values; HELP text
/// keeps its quotes). The escaped bytes are ASCII, so the runs between them are whole characters.
fn write_escaped(out: &mut String, text: &str, quotes: bool) {
    let mut run_start = 0;
    for (index, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'"' if quotes => "\\\"",
            _ => continue,
        };
        out.push_str(&text[run_start..index]);
        out.push_str(escaped);
        run_start = index + 1;
    }
    out.push_str(&text[run_start..]);
}

/// Writes a float as Go's `strconv.ParseFloat` (Prometheus's parser) reads it back exactly.
///
/// Rust's `{}` prints the shortest decimal that round-trips, never with an exponent, so 1e300 would
/// take 301 digits; far from 1 the exponent form (`1e21`, `1.5e-7`, also shortest) is used instead.
/// The limits are JavaScript's, so every integer-valued float below 1e21 prints without exponent.
fn write_f64(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if value == 0.0 || (1e-6..1e21).contains(&value.abs()) {
        // Writing into a String cannot fail.
        let _ = write!(out, "{value}");
    } else {
        let _ = write!(out, "{value:e}");
    }
}

fn write_u64(out: &mut String, value: u64) {
    let _ = write!(out, "{value}");
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|first| first.is_ascii_alphabetic() || first == b'_' || first == b':')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__`-prefixed (reserved for Prometheus's own labels).
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use openmetrics_parser::prometheus::parse_prometheus;
    use openmetrics_parser::{MetricNumber, PrometheusType, PrometheusValue};

    use super::*;

    fn render(value: f64) -> String {
        let mut out = String::new();
        write_f64(&mut out, value);
        out
    }

    #[test]
    fn golden_counter_gauge_histogram() {
        let mut exposition = Exposition::new();
        exposition.family("remora_requests_total", Kind::Counter, "Requests answered.");
        exposition.sample_u64(&[("cluster", "api"), ("code", "200")], 1027);
        exposition.sample_u64(&[("cluster", "api"), ("code", "503")], 3);
        exposition.family("remora_connections", Kind::Gauge, "Open downstream connections.");
        exposition.sample(&[], 12.0);
        exposition.family("remora_request_duration_seconds", Kind::Histogram, "Request latency.");
        exposition.histogram(&[("cluster", "api")], &[(0.005, 800), (0.05, 1020), (0.5, 1029)], 9.25, 1030);
        let expected = "\
# HELP remora_requests_total Requests answered.
# TYPE remora_requests_total counter
remora_requests_total{cluster=\"api\",code=\"200\"} 1027
remora_requests_total{cluster=\"api\",code=\"503\"} 3
# HELP remora_connections Open downstream connections.
# TYPE remora_connections gauge
remora_connections 12
# HELP remora_request_duration_seconds Request latency.
# TYPE remora_request_duration_seconds histogram
remora_request_duration_seconds_bucket{cluster=\"api\",le=\"0.005\"} 800
remora_request_duration_seconds_bucket{cluster=\"api\",le=\"0.05\"} 1020
remora_request_duration_seconds_bucket{cluster=\"api\",le=\"0.5\"} 1029
remora_request_duration_seconds_bucket{cluster=\"api\",le=\"+Inf\"} 1030
remora_request_duration_seconds_sum{cluster=\"api\"} 9.25
remora_request_duration_seconds_count{cluster=\"api\"} 1030
";
        assert_eq!(exposition.finish(), expected);
    }

    #[test]
    fn histogram_without_labels_puts_le_alone_in_braces() {
        let mut exposition = Exposition::new();
        exposition.family("remora_wait_seconds", Kind::Histogram, "Wait.");
        exposition.histogram(&[], &[(1.0, 0)], 0.0, 0);
        assert_eq!(
            exposition.finish(),
            "# HELP remora_wait_seconds Wait.\n# TYPE remora_wait_seconds histogram\n\
             remora_wait_seconds_bucket{le=\"1\"} 0\nremora_wait_seconds_bucket{le=\"+Inf\"} 0\n\
             remora_wait_seconds_sum 0\nremora_wait_seconds_count 0\n"
        );
    }

    #[test]
    fn escapes_label_values_and_help_as_the_spec_says() {
        let mut exposition = Exposition::new();
        exposition.family("remora_up", Kind::Gauge, "Path C:\\remora\nsecond \"line\" é");
        exposition.sample(&[("route", "a\\b\"c\nd"), ("host", "café 🦀")], 1.0);
        assert_eq!(
            exposition.finish(),
            "# HELP remora_up Path C:\\\\remora\\nsecond \"line\" é\n\
             # TYPE remora_up gauge\n\
             remora_up{route=\"a\\\\b\\\"c\\nd\",host=\"café 🦀\"} 1\n"
        );
    }

    #[test]
    fn floats_print_as_prometheus_reads_them() {
        let cases = [
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (0.0, "0"),
            (0.005, "0.005"),
            (2.5e-6, "0.0000025"),
            (1.5e-7, "1.5e-7"),
            (123.0, "123"),
            (-7.25, "-7.25"),
            (9_007_199_254_740_993.0, "9007199254740992"),
            (1e20, "100000000000000000000"),
            (1e21, "1e21"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
        ];
        for (value, text) in cases {
            assert_eq!(render(value), text, "{value:?}");
        }
        for (value, text) in cases.iter().filter(|(value, _)| value.is_finite()) {
            assert_eq!(text.parse::<f64>().ok(), Some(*value), "{text} reads back");
        }
    }

    /// An exposition shaped like the admin server's, with the awkward values in it.
    fn realistic() -> String {
        let mut exposition = Exposition::new();
        exposition.family("remora_requests_total", Kind::Counter, "Requests answered, by code.");
        for (cluster, code, n) in [("api", "200", 120_331), ("api", "503", 2), ("web \"v2\"", "200", 7)] {
            exposition.sample_u64(&[("cluster", cluster), ("code", code)], n);
        }
        exposition.family("remora_retries_total", Kind::Counter, "Retries sent.");
        exposition.family(
            "remora_endpoint_weight",
            Kind::Gauge,
            "Current weight\\share (a literal \\n is no newline).",
        );
        exposition.sample(&[("endpoint", "10.0.0.1:8080")], 0.25);
        exposition.sample(&[("endpoint", "10.0.0.2:8080")], f64::NAN);
        exposition.sample(&[("endpoint", "[::1]:8080")], 1e21);
        exposition.sample(&[("endpoint", "x\ny")], f64::NEG_INFINITY);
        exposition.sample(&[("endpoint", "C:\\new\\pipe\\")], -0.5);
        exposition.family("remora_request_duration_seconds", Kind::Histogram, "Latency.\nBy route.");
        let buckets = [(0.001, 10), (0.005, 90), (0.025, 99), (0.1, 100), (2.5, 100)];
        exposition.histogram(&[("route", "/api/{id}"), ("method", "GET")], &buckets, 0.42, 101);
        exposition.histogram(&[("route", "café"), ("method", "POST")], &buckets, 1.5e-7, 100);
        exposition.finish()
    }

    #[test]
    fn promtool_check_metrics_passes() {
        let text = realistic();
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                panic!("cannot run promtool ({error}): `apt-get install prometheus` brings it (.ci/run does)")
            }
        };
        child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).expect("write to promtool");
        let output = child.wait_with_output().expect("promtool runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
            "promtool check metrics: {}\nstdout: {stdout}\nstderr: {stderr}\ninput:\n{text}",
            output.status
        );
    }

    /// What a parsed value is, in a shape that compares exactly (NaN as its text).
    #[derive(Debug, PartialEq)]
    enum Parsed {
        Counter(String),
        Gauge(String),
        Histogram { buckets: Vec<(String, String)>, sum: String, count: u64 },
    }

    fn number(value: &MetricNumber) -> String {
        match value {
            MetricNumber::Int(n) => n.to_string(),
            MetricNumber::Float(f) => render(*f),
        }
    }

    type Series = BTreeMap<(String, Vec<(String, String)>), Parsed>;

    /// Every series the parser found, keyed by family name and sorted labels.
    fn parse(text: &str) -> (Series, BTreeMap<String, (PrometheusType, String)>) {
        let exposition = parse_prometheus(text).expect("the exposition parses");
        let mut series = Series::new();
        let mut families = BTreeMap::new();
        for (name, family) in &exposition.families {
            families.insert(name.clone(), (family.family_type.clone(), family.help.clone()));
            for sample in family.iter_samples() {
                let labelset = sample.get_labelset().expect("a sample of a family has label names");
                let mut labels: Vec<_> =
                    labelset.iter().map(|(name, value)| (name.clone(), value.clone())).collect();
                labels.sort();
                let value = match &sample.value {
                    PrometheusValue::Counter(counter) => Parsed::Counter(number(&counter.value)),
                    PrometheusValue::Gauge(value) => Parsed::Gauge(number(value)),
                    PrometheusValue::Histogram(histogram) => Parsed::Histogram {
                        buckets: histogram
                            .buckets
                            .iter()
                            .map(|bucket| (render(bucket.upper_bound), number(&bucket.count)))
                            .collect(),
                        sum: histogram.sum.as_ref().map(number).expect("a histogram has a sum"),
                        count: histogram.count.expect("a histogram has a count"),
                    },
                    other => panic!("unexpected value {other:?}"),
                };
                assert!(series.insert((name.clone(), labels), value).is_none(), "duplicate series");
            }
        }
        (series, families)
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut labels: Vec<_> =
            pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        labels.sort();
        labels
    }

    #[test]
    fn a_prometheus_parser_reads_back_what_was_written() {
        let (series, families) = parse(&realistic());

        let family = |kind, help: &str| (kind, help.to_owned());
        let expected_families = BTreeMap::from([
            (
                "remora_requests_total".to_owned(),
                family(PrometheusType::Counter, "Requests answered, by code."),
            ),
            ("remora_retries_total".to_owned(), family(PrometheusType::Counter, "Retries sent.")),
            (
                "remora_endpoint_weight".to_owned(),
                family(PrometheusType::Gauge, "Current weight\\share (a literal \\n is no newline)."),
            ),
            (
                "remora_request_duration_seconds".to_owned(),
                family(PrometheusType::Histogram, "Latency.\nBy route."),
            ),
        ]);
        assert_eq!(families, expected_families);

        let requests = |cluster, code| {
            ("remora_requests_total".to_owned(), labels(&[("cluster", cluster), ("code", code)]))
        };
        let weight = |endpoint| ("remora_endpoint_weight".to_owned(), labels(&[("endpoint", endpoint)]));
        let duration = |route, method| {
            ("remora_request_duration_seconds".to_owned(), labels(&[("route", route), ("method", method)]))
        };
        let buckets = |counts: [&str; 6]| {
            ["0.001", "0.005", "0.025", "0.1", "2.5", "+Inf"]
                .iter()
                .zip(counts)
                .map(|(bound, count)| (bound.to_string(), count.to_owned()))
                .collect()
        };
        let expected = Series::from([
            (requests("api", "200"), Parsed::Counter("120331".to_owned())),
            (requests("api", "503"), Parsed::Counter("2".to_owned())),
            (requests("web \"v2\"", "200"), Parsed::Counter("7".to_owned())),
            (weight("10.0.0.1:8080"), Parsed::Gauge("0.25".to_owned())),
            (weight("10.0.0.2:8080"), Parsed::Gauge("NaN".to_owned())),
            (weight("[::1]:8080"), Parsed::Gauge("1e21".to_owned())),
            (weight("x\ny"), Parsed::Gauge("-Inf".to_owned())),
            (weight("C:\\new\\pipe\\"), Parsed::Gauge("-0.5".to_owned())),
            (
                duration("/api/{id}", "GET"),
                Parsed::Histogram {
                    buckets: buckets(["10", "90", "99", "100", "100", "101"]),
                    sum: "0.42".to_owned(),
                    count: 101,
                },
            ),
            (
                duration("café", "POST"),
                Parsed::Histogram {
                    buckets: buckets(["10", "90", "99", "100", "100", "100"]),
                    sum: "1.5e-7".to_owned(),
                    count: 100,
                },
            ),
        ]);
        assert_eq!(series, expected);
    }

    #[test]
    fn histogram_count_above_2_pow_53_is_exact() {
        let count = (1_u64 << 53) + 1;
        let mut exposition = Exposition::new();
        exposition.family("remora_bytes_seconds", Kind::Histogram, "Huge.");
        exposition.histogram(&[], &[(1.0, count - 1)], 1e6, count);
        exposition.family("remora_big_total", Kind::Counter, "Bigger.");
        exposition.sample_u64(&[], u64::MAX);
        let text = exposition.finish();

        assert!(text.contains("remora_bytes_seconds_bucket{le=\"1\"} 9007199254740992\n"), "{text}");
        assert!(text.contains("remora_bytes_seconds_bucket{le=\"+Inf\"} 9007199254740993\n"), "{text}");
        assert!(text.contains("remora_bytes_seconds_count 9007199254740993\n"), "{text}");
        assert!(text.contains("remora_big_total 18446744073709551615\n"), "{text}");
        let (series, _) = parse(&text);
        match &series[&("remora_bytes_seconds".to_owned(), Vec::new())] {
            Parsed::Histogram { count: parsed, .. } => assert_eq!(*parsed, count),
            other => panic!("not a histogram: {other:?}"),
        }
    }

    #[test]
    fn names_follow_the_grammar() {
        for good in ["remora_up", "_x", "a:b:c", "A1"] {
            assert!(is_metric_name(good), "{good}");
        }
        for bad in ["", "1a", "a-b", "a.b", "é"] {
            assert!(!is_metric_name(bad), "{bad}");
        }
        for good in ["cluster", "_x", "A1"] {
            assert!(is_label_name(good), "{good}");
        }
        for bad in ["", "1a", "a:b", "__name__", "a-b"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic = "invalid label name"]
    fn an_invalid_label_name_is_a_bug_in_debug_builds() {
        let mut exposition = Exposition::new();
        exposition.family("remora_up", Kind::Gauge, "Up.");
        exposition.sample(&[("route-name", "x")], 1.0);
    }
}
