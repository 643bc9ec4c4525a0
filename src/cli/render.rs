//! What `remora status`, `nodes`, `map` and `events` print: plain text from the API's values, with
//! hand-measured columns. Pure functions of their inputs (the current time included), so the tests
//! pin the exact text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use remora_config::control::{DesiredVersion, JournalEntry, NodeStats, NodeStatus, NodeView, ProxyView};
use remora_config::rollout::RolloutView;
use serde::Deserialize;
use serde_json::Value;

/// How a column lines its cells up.
#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Columns two spaces apart, each as wide as its widest cell; no trailing spaces.
fn table(indent: &str, headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(header, _)| header.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|(header, _)| (*header).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = indent.to_owned();
        for (index, ((cell, width), (_, align))) in row.iter().zip(&widths).zip(headers).enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn status_name(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Healthy => "healthy",
        NodeStatus::Degraded => "degraded",
        NodeStatus::Unreachable => "unreachable",
        NodeStatus::Registered => "registered",
    }
}

/// `nodes`: one line per node.
pub fn nodes_table(nodes: &[NodeView], now_ms: u64) -> String {
    if nodes.is_empty() {
        return "no nodes have registered\n".to_owned();
    }
    let headers = [
        ("NAME", Align::Left),
        ("VERSION", Align::Left),
        ("STATUS", Align::Left),
        ("RPS", Align::Right),
        ("SUCCESS", Align::Right),
        ("P99", Align::Right),
        ("PROXIES", Align::Left),
        ("LAST REPORT", Align::Left),
        ("HEALING", Align::Left),
    ];
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            let stats = node.stats.as_ref();
            vec![
                node.name.clone(),
                node.serving_version.clone().unwrap_or_else(|| node.version.clone()),
                status_name(node.status).to_owned(),
                stats.map_or_else(dash, |stats| rps(stats.rps)),
                stats.and_then(|stats| stats.success_rate).map_or_else(dash, percent),
                stats.and_then(|stats| stats.p99_ms).map_or_else(dash, millis),
                proxies_cell(&node.proxies, node.desired_revision),
                ago(node.last_report_unix_ms, now_ms),
                healing_cell(node),
            ]
        })
        .collect();
    table("", &headers, &rows)
}

/// `-` for a healthy node without a rollout under way; else its ladder step and the rollout:
/// `regenerating`, `canary, v2 at 25%`, `held`, `v3 at 10% (paused)`.
fn healing_cell(node: &NodeView) -> String {
    let mut parts = Vec::new();
    if let Some(healing) = node.healing.as_ref().filter(|healing| healing.phase != "healthy") {
        parts.push(one_line(&healing.phase));
    }
    if let Some(rollout) = node
        .rollout
        .as_ref()
        .filter(|rollout| matches!(rollout.phase.as_str(), "progressing" | "paused" | "promoting"))
    {
        let mut text = format!("{} at {}%", one_line(&rollout.canary.version), rollout.weight);
        if rollout.phase != "progressing" {
            let _ = write!(text, " ({})", rollout.phase);
        }
        parts.push(text);
    }
    if parts.is_empty() {
        dash()
    } else {
        parts.join(", ")
    }
}

/// `status`: the summary above the nodes table.
pub fn status_summary(control: &str, nodes: &[NodeView], journal_head: Option<u64>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for node in nodes {
        *counts.entry(status_name(node.status)).or_default() += 1;
    }
    // In the order a reader scans for trouble: the bad ones first.
    let order = [NodeStatus::Degraded, NodeStatus::Unreachable, NodeStatus::Registered, NodeStatus::Healthy];
    let by_status: Vec<String> = order
        .iter()
        .filter_map(|status| {
            counts.get(status_name(*status)).map(|count| format!("{count} {}", status_name(*status)))
        })
        .collect();
    let nodes_line = match nodes.len() {
        0 => "none registered".to_owned(),
        count => format!("{count} ({})", by_status.join(", ")),
    };
    let journal = match journal_head {
        Some(seq) => format!("head at seq {seq}"),
        None => "empty".to_owned(),
    };
    format!("control  {control} (reachable)\nnodes    {nodes_line}\njournal  {journal}\n")
}

/// `nodes NAME`: everything about one node.
pub fn node_details(node: &NodeView, now_ms: u64) -> String {
    let mut fields: Vec<(&str, String)> = vec![
        ("name", node.name.clone()),
        ("version", node.version.clone()),
        ("status", status_name(node.status).to_owned()),
        ("endpoints", list(node.endpoints.iter())),
        ("publishes", list(node.publishes.iter())),
        ("consumes", list(node.consumes.iter())),
        ("desired", format!("revision {}", node.desired_revision)),
        ("last report", ago(node.last_report_unix_ms, now_ms)),
    ];
    if let Some(serving) = &node.serving_version {
        fields.push(("serving", serving.clone()));
    }
    if let Some(healing) = &node.healing {
        let mut text = healing.phase.clone();
        if let Some(reason) = &healing.reason {
            let _ = write!(text, ": {}", one_line(reason));
        }
        if healing.breaches > 0 {
            let _ = write!(text, " ({} breached windows in a row)", healing.breaches);
        }
        fields.push(("healing", text));
    }
    if let Some(rollout) = &node.rollout {
        fields.push(("rollout", rollout_line(rollout)));
    }
    match &node.stats {
        Some(stats) => fields.extend(stats_fields(stats)),
        None => fields.push(("stats", "none yet (no report judged)".to_owned())),
    }
    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (key, value) in &fields {
        let _ = writeln!(out, "{:<width$}{value}", format!("{key}:"));
    }
    if node.proxies.is_empty() {
        let _ = writeln!(out, "{:<width$}none", "proxies:");
    } else {
        out.push_str("proxies:\n");
        let headers = [("PROXY", Align::Left), ("APPLIED", Align::Right), ("LAST REPORT", Align::Left)];
        let rows: Vec<Vec<String>> = node
            .proxies
            .iter()
            .map(|proxy| {
                vec![
                    proxy.proxy.clone(),
                    proxy.applied_revision.map_or_else(dash, |revision| revision.to_string()),
                    ago(proxy.last_report_unix_ms, now_ms),
                ]
            })
            .collect();
        out.push_str(&table("  ", &headers, &rows));
    }
    out
}

/// `progressing v2 at 25% (step 2/4), 0/1 failed checks`.
fn rollout_line(rollout: &RolloutView) -> String {
    let mut text = format!(
        "{} {} at {}% (step {}/{}), {}/{} failed checks",
        rollout.phase,
        one_line(&rollout.canary.version),
        rollout.weight,
        rollout.step + 1,
        rollout.steps.len(),
        rollout.failed_checks,
        rollout.max_failed_checks
    );
    if let Some(reason) = &rollout.reason {
        let _ = write!(text, ": {}", one_line(reason));
    }
    text
}

fn version_text(version: &DesiredVersion) -> String {
    if version.endpoints.is_empty() {
        one_line(&version.version)
    } else {
        format!(
            "{} on {}",
            one_line(&version.version),
            list(version.endpoints.iter().map(|endpoint| one_line(endpoint)))
        )
    }
}

/// `pass: 120 requests, 100% ok, p99 3.0ms` from a verdict's JSON.
fn verdict_text(verdict: Option<&Value>) -> String {
    let Some(verdict) = verdict else { return dash() };
    let name = verdict.get("verdict").and_then(Value::as_str).unwrap_or("?");
    let symptoms = verdict.get("symptoms");
    let number = |key: &str| symptoms.and_then(|symptoms| symptoms.get(key)).and_then(Value::as_f64);
    format!(
        "{name}: {} requests, {} ok, p99 {}",
        number("requests").unwrap_or(0.0),
        number("success_rate").map_or_else(dash, percent),
        number("p99_ms").map_or_else(dash, millis)
    )
}

/// `rollout status`: one rollout in detail.
pub fn rollout(rollout: &RolloutView, now_ms: u64) -> String {
    let applied = if rollout.acked { "applied by every proxy" } else { "not yet applied by every proxy" };
    let fields = [
        ("rollout", format!("{} ({})", one_line(&rollout.id), rollout.origin)),
        ("node", one_line(&rollout.node)),
        ("phase", rollout_line(rollout)),
        ("stable", version_text(&rollout.stable)),
        ("canary", version_text(&rollout.canary)),
        ("steps", list(rollout.steps.iter().map(|step| format!("{step}%")))),
        ("started", ago(Some(rollout.started_unix_ms), now_ms)),
        ("step since", ago(Some(rollout.step_started_unix_ms), now_ms)),
        ("pushed", format!("revision {}, {applied}", rollout.revision)),
        ("canary says", verdict_text(rollout.canary_verdict.as_ref())),
        ("stable says", verdict_text(rollout.stable_verdict.as_ref())),
    ];
    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (key, value) in &fields {
        let _ = writeln!(out, "{:<width$}{value}", format!("{key}:"));
    }
    out
}

fn stats_fields(stats: &NodeStats) -> Vec<(&'static str, String)> {
    vec![
        ("window", format!("{}s", trim_float(stats.window_seconds))),
        ("requests", format!("{} ({} rps)", stats.requests, rps(stats.rps))),
        ("success", stats.success_rate.map_or_else(dash, percent)),
        (
            "latency",
            format!(
                "p50 {}, p99 {}",
                stats.p50_ms.map_or_else(dash, millis),
                stats.p99_ms.map_or_else(dash, millis)
            ),
        ),
        ("breakers", breakers(&stats.breakers)),
    ]
}

/// The breakers that are not closed by name, then how many are: `payments-v2 open, 3 closed`.
fn breakers(states: &[(String, String)]) -> String {
    if states.is_empty() {
        return "none reported".to_owned();
    }
    let mut parts: Vec<String> = states
        .iter()
        .filter(|(_, state)| state != "closed")
        .map(|(cluster, state)| format!("{} {}", one_line(cluster), one_line(state)))
        .collect();
    let closed = states.len() - parts.len();
    if closed > 0 {
        parts.push(format!("{closed} closed"));
    }
    parts.join(", ")
}

/// `3 (5/5)`: how many proxies, the revisions they applied, and the desired one.
fn proxies_cell(proxies: &[ProxyView], desired: u64) -> String {
    if proxies.is_empty() {
        return "0".to_owned();
    }
    let mut applied: Vec<Option<u64>> = proxies.iter().map(|proxy| proxy.applied_revision).collect();
    applied.sort_unstable();
    applied.dedup();
    let applied: Vec<String> =
        applied.iter().map(|revision| revision.map_or_else(dash, |revision| revision.to_string())).collect();
    format!("{} ({}/{desired})", proxies.len(), applied.join(","))
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|item| item.to_string()).collect();
    if items.is_empty() {
        dash()
    } else {
        items.join(", ")
    }
}

fn dash() -> String {
    "-".to_owned()
}

fn rps(rps: f64) -> String {
    if rps < 99.95 {
        format!("{rps:.1}")
    } else {
        format!("{rps:.0}")
    }
}

/// A share in [0, 1] as a percentage, rounded down: 99.96% shows as 99.9%, never as 100%.
fn percent(rate: f64) -> String {
    if rate >= 1.0 {
        return "100%".to_owned();
    }
    format!("{:.1}%", (rate.max(0.0) * 1000.0).floor() / 10.0)
}

fn millis(ms: f64) -> String {
    // Thresholds at the rounding points, so that 999.6 ms prints as 1.00s rather than 1000ms.
    if ms < 0.995 {
        format!("{ms:.2}ms")
    } else if ms < 9.95 {
        format!("{ms:.1}ms")
    } else if ms < 999.5 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
}

/// `2s ago`, `5m ago`, `3h ago`, `2d ago`; `never` without a time. A time ahead of ours (clock skew)
/// counts as now.
pub fn ago(unix_ms: Option<u64>, now_ms: u64) -> String {
    let Some(then) = unix_ms else { return "never".to_owned() };
    let seconds = now_ms.saturating_sub(then) / 1000;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86_400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// UTC, to the second: `2023-11-14T22:13:20Z`. Any u64 is a valid input (no panic, no overflow).
pub fn utc(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Howard Hinnant's civil_from_days, shifted so that years start in March.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// `events`: one line per entry, `SEQ  TIME  KIND  NODE  summary`, with fixed minimum widths so that
/// lines printed one by one (`--follow`) line up with a batch.
pub fn journal_line(entry: &JournalEntry) -> String {
    let node = entry.node.as_deref().unwrap_or("-");
    let line = format!(
        "{:>6}  {}  {:<20}  {:<14}  {}",
        entry.seq,
        utc(entry.unix_ms),
        one_line(&entry.kind),
        one_line(node),
        summary(&entry.kind, &entry.detail)
    );
    format!("{}\n", line.trim_end())
}

use remora_config::journal::one_line;
pub use remora_config::journal::summary;

pub fn journal_header() -> String {
    format!("{:>6}  {:<20}  {:<20}  {:<14}  {}\n", "SEQ", "TIME", "KIND", "NODE", "SUMMARY")
}

/// The parts of `GET /v1/map` that `map` prints. Fields this does not know are ignored: the map is
/// shown, not checked.
#[derive(Debug, Deserialize)]
pub struct MapView {
    pub nodes: Vec<MapNode>,
    pub events: Vec<MapEvent>,
    #[serde(default)]
    pub edges: Vec<MapEdge>,
}

#[derive(Debug, Deserialize)]
pub struct MapNode {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub publishes: Vec<String>,
    #[serde(default)]
    pub consumes: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct MapEvent {
    pub name: String,
    pub producers: Vec<MapUse>,
    pub consumers: Vec<MapUse>,
}

#[derive(Debug, Deserialize)]
pub struct MapUse {
    pub node: String,
    pub major: u32,
}

#[derive(Debug, Deserialize)]
pub struct MapEdge {
    pub event: String,
    pub producer: String,
    pub consumer: String,
    pub consumed_major: u32,
    pub published_majors: Vec<u32>,
    pub mismatch: bool,
}

/// `map`: each event type, who publishes it → who consumes it; then what does not line up.
pub fn map_text(map: &MapView) -> String {
    if map.nodes.is_empty() && map.events.is_empty() {
        return "the map is empty: no node has registered\n".to_owned();
    }
    let uses = |uses: &[MapUse], nobody: &str| {
        if uses.is_empty() {
            return nobody.to_owned();
        }
        let uses: Vec<String> = uses.iter().map(|used| format!("{}@{}", used.node, used.major)).collect();
        uses.join(", ")
    };
    let mut out = String::new();
    let width = map.events.iter().map(|event| event.name.chars().count()).max().unwrap_or(0);
    for event in &map.events {
        let name = one_line(&event.name);
        let pad = " ".repeat(width.saturating_sub(name.chars().count()));
        let producers = uses(&event.producers, "(no producer)");
        let consumers = uses(&event.consumers, "(no consumer)");
        let _ = writeln!(out, "{name}{pad}  {} → {}", one_line(&producers), one_line(&consumers));
    }
    let mismatches: Vec<&MapEdge> = map.edges.iter().filter(|edge| edge.mismatch).collect();
    if !mismatches.is_empty() {
        out.push_str("\nmajor version mismatches:\n");
        for edge in mismatches {
            let published: Vec<String> =
                edge.published_majors.iter().map(|major| format!("@{major}")).collect();
            let _ = writeln!(
                out,
                "  {}: {} publishes {}, {} consumes @{}",
                one_line(&edge.event),
                one_line(&edge.producer),
                published.join(" and "),
                one_line(&edge.consumer),
                edge.consumed_major
            );
        }
    }
    let silent: Vec<String> = map
        .nodes
        .iter()
        .filter(|node| node.publishes.is_empty() && node.consumes.is_empty())
        .map(|node| format!("{} {}", one_line(&node.name), one_line(&node.version)))
        .collect();
    if !silent.is_empty() {
        let _ = writeln!(out, "\nnodes without events: {}", silent.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use remora_config::control::{JournalEntry, NodeStats, NodeStatus, NodeView, ProxyView};
    use remora_config::EventRef;
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_700_000_100_000;

    fn payments() -> NodeView {
        NodeView {
            name: "payments".to_owned(),
            version: "v2".to_owned(),
            status: NodeStatus::Degraded,
            endpoints: vec!["127.0.0.1:8080".to_owned(), "127.0.0.1:8081".to_owned()],
            publishes: vec![EventRef { name: "payment.settled".to_owned(), major: 2 }],
            consumes: vec![],
            proxies: vec![
                ProxyView {
                    proxy: "a:1".to_owned(),
                    applied_revision: Some(3),
                    last_report_unix_ms: Some(NOW - 2_000),
                },
                ProxyView { proxy: "b:2".to_owned(), applied_revision: Some(2), last_report_unix_ms: None },
            ],
            last_report_unix_ms: Some(NOW - 2_000),
            desired_revision: 3,
            stats: Some(NodeStats {
                window_seconds: 10.0,
                requests: 1_000,
                rps: 100.0,
                success_rate: Some(0.95),
                p50_ms: Some(1.5),
                p99_ms: Some(250.0),
                breakers: vec![("payments-v2".to_owned(), "open".to_owned())],
            }),
            recent_events: Vec::new(),
            serving_version: None,
            versions: Default::default(),
            healing: None,
            rollout: None,
        }
    }

    fn orders() -> NodeView {
        NodeView {
            name: "orders".to_owned(),
            version: "1.10.3".to_owned(),
            status: NodeStatus::Registered,
            endpoints: vec![],
            publishes: vec![],
            consumes: vec![],
            proxies: vec![],
            last_report_unix_ms: None,
            desired_revision: 0,
            stats: None,
            recent_events: Vec::new(),
            serving_version: None,
            versions: Default::default(),
            healing: None,
            rollout: None,
        }
    }

    #[test]
    fn the_nodes_table() {
        let mut checkout = payments();
        checkout.name = "checkout".to_owned();
        checkout.status = NodeStatus::Healthy;
        checkout.proxies.truncate(1);
        checkout.last_report_unix_ms = Some(NOW - 3_700_000);
        checkout.stats = Some(NodeStats {
            window_seconds: 10.0,
            requests: 12,
            rps: 1.25,
            success_rate: Some(0.99995),
            p50_ms: Some(0.2),
            p99_ms: Some(0.42),
            breakers: vec![],
        });
        checkout.serving_version = Some("v3".to_owned());
        checkout.healing = Some(remora_config::rollout::HealingView {
            phase: "canary".to_owned(),
            since_unix_ms: None,
            reason: None,
            breaches: 0,
        });
        checkout.rollout = Some(
            serde_json::from_value(json!({
                "id": "r", "node": "checkout", "origin": "healing", "phase": "paused",
                "stable": {"version": "v3"}, "canary": {"version": "v4", "endpoints": ["127.0.0.1:1"]},
                "weight": 25, "step": 1, "steps": [10, 25, 100], "failed_checks": 0, "max_failed_checks": 1,
                "started_unix_ms": 0, "step_started_unix_ms": 0, "step_interval_ms": 1000, "revision": 3,
                "acked": true
            }))
            .expect("a rollout view"),
        );
        let text = nodes_table(&[payments(), orders(), checkout], NOW);
        assert_eq!(
            text,
            "\
NAME      VERSION  STATUS      RPS  SUCCESS     P99  PROXIES    LAST REPORT  HEALING
payments  v2       degraded    100    95.0%   250ms  2 (2,3/3)  2s ago       -
orders    1.10.3   registered    -        -       -  0          never        -
checkout  v3       healthy     1.2    99.9%  0.42ms  1 (3/3)    1h ago       canary, v4 at 25% (paused)
"
        );
    }

    #[test]
    fn no_nodes() {
        assert_eq!(nodes_table(&[], NOW), "no nodes have registered\n");
        assert_eq!(
            status_summary("http://127.0.0.1:9900", &[], None),
            "control  http://127.0.0.1:9900 (reachable)\nnodes    none registered\njournal  empty\n"
        );
    }

    #[test]
    fn the_status_summary_counts_nodes_by_status_trouble_first() {
        let mut other = payments();
        other.status = NodeStatus::Healthy;
        let text = status_summary("http://c:9900", &[other.clone(), payments(), orders(), other], Some(42));
        assert_eq!(
            text,
            "control  http://c:9900 (reachable)\nnodes    4 (1 degraded, 1 registered, 2 healthy)\njournal  head at seq 42\n"
        );
    }

    #[test]
    fn one_node_in_detail() {
        assert_eq!(
            node_details(&payments(), NOW),
            "\
name:        payments
version:     v2
status:      degraded
endpoints:   127.0.0.1:8080, 127.0.0.1:8081
publishes:   payment.settled@2
consumes:    -
desired:     revision 3
last report: 2s ago
window:      10s
requests:    1000 (100 rps)
success:     95.0%
latency:     p50 1.5ms, p99 250ms
breakers:    payments-v2 open
proxies:
  PROXY  APPLIED  LAST REPORT
  a:1          3  2s ago
  b:2          2  never
"
        );
        assert_eq!(
            node_details(&orders(), NOW),
            "\
name:        orders
version:     1.10.3
status:      registered
endpoints:   -
publishes:   -
consumes:    -
desired:     revision 0
last report: never
stats:       none yet (no report judged)
proxies:     none
"
        );
    }

    #[test]
    fn breakers_not_closed_by_name_the_closed_counted() {
        let states = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(cluster, state)| ((*cluster).to_owned(), (*state).to_owned())).collect()
        };
        assert_eq!(breakers(&states(&[])), "none reported");
        assert_eq!(breakers(&states(&[("a", "closed"), ("b", "closed")])), "2 closed");
        assert_eq!(
            breakers(&states(&[("a", "closed"), ("b", "half_open"), ("c", "disabled"), ("d", "closed")])),
            "b half_open, c disabled, 2 closed"
        );
    }

    #[test]
    fn numbers_in_their_units() {
        assert_eq!(
            [0.004, 0.996, 3.08, 9.96, 42.4, 999.4, 999.6, 1234.5].map(millis),
            ["0.00ms", "1.0ms", "3.1ms", "10ms", "42ms", "999ms", "1.00s", "1.23s"]
        );
        assert_eq!([0.0, 0.5, 0.9996, 1.0, -0.1].map(percent), ["0.0%", "50.0%", "99.9%", "100%", "0.0%"]);
        assert_eq!([0.0, 9.96, 99.96, 150.4].map(rps), ["0.0", "10.0", "100", "150"]);
        let ages =
            [Some(NOW), Some(NOW + 5_000), Some(NOW - 59_999), Some(NOW - 60_000), Some(NOW - 7_200_000)];
        assert_eq!(ages.map(|then| ago(then, NOW)), ["0s ago", "0s ago", "59s ago", "1m ago", "2h ago"]);
        assert_eq!(ago(Some(NOW - 3 * 86_400_000), NOW), "3d ago");
        assert_eq!(ago(None, NOW), "never");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28T23:59:59Z");
        // Nonsense from the network still prints (far in the future) instead of panicking.
        assert!(utc(u64::MAX).ends_with('Z'));
    }

    fn entry(seq: u64, kind: &str, node: Option<&str>, detail: Value) -> JournalEntry {
        JournalEntry::new(
            seq,
            1_700_000_000_000,
            "0af7651916cd43dd8448eb211c80319c".to_owned(),
            kind.to_owned(),
            node.map(str::to_owned),
            detail,
        )
    }

    #[test]
    fn journal_lines() {
        let lines = [
            entry(
                7,
                "registered",
                Some("payments"),
                json!({"proxy": "a:1", "version": "v2", "warnings": ["w"], "forced_over": []}),
            ),
            entry(
                8,
                "status_changed",
                Some("payments"),
                json!({"from": "registered", "to": "healthy", "reason": "reports arrive"}),
            ),
            entry(
                9,
                "desired_changed",
                Some("payments"),
                json!({"revision": 4, "routes": {"api": [{"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}]}}),
            ),
            entry(
                10,
                "proxy_event",
                Some("payments"),
                json!({"proxy": "a:1", "cluster": "v2", "event": "breaker_opened", "detail": "5 failures"}),
            ),
            entry(
                11,
                "registration_refused",
                Some("orders"),
                json!({"proxy": "b:1", "forced": false, "conflicts": [{"message": "nobody publishes x@1"}, {"message": "m"}]}),
            ),
            entry(
                1234567,
                "hook_called",
                None,
                json!({"hook": "regenerate", "attempt": 2, "ok": true, "skip": null}),
            ),
        ];
        let text: String = std::iter::once(journal_header()).chain(lines.iter().map(journal_line)).collect();
        assert_eq!(
            text,
            "   SEQ  TIME                  KIND                  NODE            SUMMARY
     7  2023-11-14T22:13:20Z  registered            payments        version v2 from proxy a:1, 1 warning
     8  2023-11-14T22:13:20Z  status_changed        payments        registered → healthy: reports arrive
     9  2023-11-14T22:13:20Z  desired_changed       payments        revision 4, weights api: v1 90, v2 10
    10  2023-11-14T22:13:20Z  proxy_event           payments        breaker_opened on v2 (proxy a:1): 5 failures
    11  2023-11-14T22:13:20Z  registration_refused  orders          from proxy b:1: nobody publishes x@1 (+1 more)
1234567  2023-11-14T22:13:20Z  hook_called           -               attempt=2 hook=regenerate ok=true
"
        );
    }

    #[test]
    fn a_journal_line_stays_on_one_line() {
        let line = journal_line(&entry(1, "odd\nkind", Some("evil\r\nnode"), json!({})));
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn the_map_as_a_list() {
        let map: MapView = serde_json::from_value(json!({
            "nodes": [
                {"name": "billing", "version": "v1", "publishes": [], "consumes": ["order.placed@1"], "endpoints": []},
                {"name": "checkout", "version": "v3", "publishes": ["order.placed@2"], "consumes": [], "endpoints": []},
                {"name": "idle", "version": "v1", "publishes": [], "consumes": [], "endpoints": []},
                {"name": "payments", "version": "v2", "publishes": ["payment.settled@1"], "consumes": [], "endpoints": []}
            ],
            "events": [
                {"name": "order.placed", "producers": [{"node": "checkout", "major": 2}], "consumers": [{"node": "billing", "major": 1}]},
                {"name": "payment.settled", "producers": [{"node": "payments", "major": 1}], "consumers": []}
            ],
            "edges": [
                {"event": "order.placed", "producer": "checkout", "consumer": "billing", "consumed_major": 1, "published_majors": [2], "mismatch": true}
            ]
        }))
        .unwrap();
        assert_eq!(
            map_text(&map),
            "\
order.placed     checkout@2 → billing@1
payment.settled  payments@1 → (no consumer)

major version mismatches:
  order.placed: checkout publishes @2, billing consumes @1

nodes without events: idle v1
"
        );
        let empty: MapView = serde_json::from_value(json!({"nodes": [], "events": [], "edges": []})).unwrap();
        assert_eq!(map_text(&empty), "the map is empty: no node has registered\n");
    }
}
