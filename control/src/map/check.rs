//! The conflict rules and warnings of the map (listed in the parent module), run against the map as it
//! would be after a change.

use std::collections::BTreeMap;
use std::fmt::Display;

use super::{Conflict, ConflictKind, NodeSpec, Verdict};

type Nodes = BTreeMap<String, NodeSpec>;

/// Registering `spec` (already normalized) in place of whatever is in force under its name.
pub(super) fn registration(nodes: &Nodes, spec: NodeSpec) -> Verdict {
    let previous = nodes.get(&spec.name);
    let after = after(nodes, &spec.name, Some(&spec));
    let mut verdict = Verdict::default();
    if previous == Some(&spec) {
        verdict.unchanged = true;
        unconsumed_publishes(&after, &spec, &mut verdict.warnings);
        return verdict;
    }
    consumed_but_not_published(&after, &spec, &mut verdict.conflicts);
    major_version_mismatch(&after, &spec.name, &mut verdict.conflicts);
    if let Some(previous) = previous {
        published_event_removed(&after, previous, Some(&spec), &mut verdict.conflicts);
        // Endpoints differ between replicas of one node (each proxy registers its own): only the
        // events a version publishes and consumes make its spec.
        let events_differ = previous.publishes != spec.publishes || previous.consumes != spec.consumes;
        if previous.version == spec.version && events_differ {
            verdict.conflicts.push(name_claimed_with_different_spec(previous, &spec));
        }
    }
    unconsumed_publishes(&after, &spec, &mut verdict.warnings);
    if let Some(previous) = previous {
        newly_unconsumed(&after, previous, Some(&spec), &mut verdict.warnings);
    }
    verdict
}

/// Removing the node `name`.
pub(super) fn removal(nodes: &Nodes, name: &str) -> Verdict {
    let Some(previous) = nodes.get(name) else {
        return Verdict { unchanged: true, ..Verdict::default() };
    };
    let after = after(nodes, name, None);
    let mut verdict = Verdict::default();
    published_event_removed(&after, previous, None, &mut verdict.conflicts);
    newly_unconsumed(&after, previous, None, &mut verdict.warnings);
    verdict
}

/// The specs in force after `name` is replaced by `next` (or removed), sorted by name.
fn after<'a>(nodes: &'a Nodes, name: &str, next: Option<&'a NodeSpec>) -> Vec<&'a NodeSpec> {
    let mut after: Vec<&NodeSpec> = nodes.values().filter(|node| node.name != name).chain(next).collect();
    after.sort_by(|left, right| left.name.cmp(&right.name));
    after
}

/// Rule 1: the node consumes an event that no node publishes at any major.
fn consumed_but_not_published(after: &[&NodeSpec], spec: &NodeSpec, conflicts: &mut Vec<Conflict>) {
    for consumed in &spec.consumes {
        if after.iter().any(|node| node.publishes_event(&consumed.name)) {
            continue;
        }
        conflicts.push(Conflict {
            kind: ConflictKind::ConsumedButNotPublished,
            event: Some(consumed.name.clone()),
            nodes: vec![spec.name.clone()],
            message: format!(
                "{node} consumes {consumed} but no node publishes {event}; register a producer of {event} \
                 first, or force this registration to let a consumer in before its producer (bootstrapping)",
                node = spec.name,
                event = consumed.name,
            ),
        });
    }
}

/// Rule 2: a consumer of `event@b` and a producer that publishes `event` but not `event@b`, where
/// either is the changed node.
fn major_version_mismatch(after: &[&NodeSpec], changed: &str, conflicts: &mut Vec<Conflict>) {
    for consumer in after {
        for consumed in &consumer.consumes {
            for producer in after {
                if producer.name != changed && consumer.name != changed {
                    continue;
                }
                let majors = producer.published_majors(&consumed.name);
                if majors.is_empty() || majors.contains(&consumed.major) {
                    continue;
                }
                let published =
                    majors.iter().map(|major| format!("{}@{major}", consumed.name)).collect::<Vec<_>>();
                let published = and_list(&published);
                let (nodes, message) = if producer.name == consumer.name {
                    (
                        vec![consumer.name.clone()],
                        format!("{} consumes {consumed} but itself publishes {published}", consumer.name),
                    )
                } else {
                    (
                        vec![consumer.name.clone(), producer.name.clone()],
                        format!(
                            "{} consumes {consumed} but {} publishes {published}",
                            consumer.name, producer.name
                        ),
                    )
                };
                conflicts.push(Conflict {
                    kind: ConflictKind::MajorVersionMismatch,
                    event: Some(consumed.name.clone()),
                    nodes,
                    message,
                });
            }
        }
    }
}

/// Rule 3: `previous` published an event that `next` no longer publishes at any major, and another
/// node consumes it at a major nobody publishes any more.
fn published_event_removed(
    after: &[&NodeSpec],
    previous: &NodeSpec,
    next: Option<&NodeSpec>,
    conflicts: &mut Vec<Conflict>,
) {
    let dropped = previous.publishes.iter().filter(|published| match next {
        Some(next) => !next.publishes_event(&published.name),
        None => true,
    });
    for dropped in dropped {
        if after.iter().any(|node| node.publishes.contains(dropped)) {
            continue;
        }
        let consumers: Vec<&str> = after
            .iter()
            .filter(|node| node.name != previous.name && node.consumes.contains(dropped))
            .map(|node| node.name.as_str())
            .collect();
        if consumers.is_empty() {
            continue;
        }
        let verb = if consumers.len() == 1 { "consumes" } else { "consume" };
        let consumer_list = and_list(&consumers);
        let name = &previous.name;
        let message = match next {
            None => format!(
                "removing {name} {version} leaves {dropped} without a producer, but {consumer_list} {verb} it",
                version = previous.version,
            ),
            Some(next) if next.version != previous.version => format!(
                "{name} {new} no longer publishes {dropped} ({old} did), which {consumer_list} {verb}, and no \
                 other node publishes it",
                new = next.version,
                old = previous.version,
            ),
            Some(_) => format!(
                "{name} would no longer publish {dropped}, which {consumer_list} {verb}, and no other node \
                 publishes it"
            ),
        };
        let mut nodes = vec![name.clone()];
        nodes.extend(consumers.iter().map(|consumer| (*consumer).to_owned()));
        conflicts.push(Conflict {
            kind: ConflictKind::PublishedEventRemoved,
            event: Some(dropped.name.clone()),
            nodes,
            message,
        });
    }
}

/// Rule 4: the name and version in force registered again with another spec.
fn name_claimed_with_different_spec(previous: &NodeSpec, next: &NodeSpec) -> Conflict {
    let mut changes = Vec::new();
    differences("publish", &previous.publishes, &next.publishes, &mut changes);
    differences("consume", &previous.consumes, &next.consumes, &mut changes);
    Conflict {
        kind: ConflictKind::NameClaimedWithDifferentSpec,
        event: None,
        nodes: vec![next.name.clone()],
        message: format!(
            "{name} {version} is already registered with a different spec (this one {changes}); register \
             the change as a new version, or force it",
            name = next.name,
            version = next.version,
            changes = and_list(&changes),
        ),
    }
}

fn differences<T: PartialEq + Display>(what: &str, before: &[T], after: &[T], changes: &mut Vec<String>) {
    for item in after.iter().filter(|item| !before.contains(item)) {
        changes.push(format!("adds {what} {item}"));
    }
    for item in before.iter().filter(|item| !after.contains(item)) {
        changes.push(format!("drops {what} {item}"));
    }
}

/// Warning: the node publishes an event that no node consumes at that major.
fn unconsumed_publishes(after: &[&NodeSpec], spec: &NodeSpec, warnings: &mut Vec<String>) {
    for published in &spec.publishes {
        if !after.iter().any(|node| node.consumes.contains(published)) {
            warnings.push(format!("{} publishes {published} but no node consumes it", spec.name));
        }
    }
}

/// Warning: `previous` was the last consumer of an event other nodes still publish.
fn newly_unconsumed(
    after: &[&NodeSpec],
    previous: &NodeSpec,
    next: Option<&NodeSpec>,
    warnings: &mut Vec<String>,
) {
    let dropped = previous.consumes.iter().filter(|consumed| match next {
        Some(next) => !next.consumes.contains(consumed),
        None => true,
    });
    for dropped in dropped {
        if after.iter().any(|node| node.consumes.contains(dropped)) {
            continue;
        }
        let producers: Vec<&str> = after
            .iter()
            .filter(|node| node.name != previous.name && node.publishes.contains(dropped))
            .map(|node| node.name.as_str())
            .collect();
        if producers.is_empty() {
            continue;
        }
        let verb = if producers.len() == 1 { "publishes" } else { "publish" };
        warnings.push(format!(
            "{} {verb} {dropped} but after this change no node consumes it ({} was the last consumer)",
            and_list(&producers),
            previous.name,
        ));
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list<T: AsRef<str>>(items: &[T]) -> String {
    match items {
        [] => String::new(),
        [only] => only.as_ref().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", init.join(", "), last.as_ref())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use remora_config::EventRef;

    use crate::map::{Conflict, ConflictKind, Map, NodeSpec};

    fn event(text: &str) -> EventRef {
        let (name, major) = text.rsplit_once('@').expect("test events are written name@major");
        EventRef { name: name.to_owned(), major: major.parse().expect("test majors are numbers") }
    }

    pub(crate) fn node(name: &str, version: &str, publishes: &[&str], consumes: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            publishes: publishes.iter().copied().map(event).collect(),
            consumes: consumes.iter().copied().map(event).collect(),
            endpoints: Vec::new(),
        }
    }

    fn conflict(kind: ConflictKind, event: Option<&str>, nodes: &[&str], message: &str) -> Conflict {
        Conflict {
            kind,
            event: event.map(str::to_owned),
            nodes: nodes.iter().map(|node| (*node).to_owned()).collect(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn consumer_registering_before_its_producer_is_consumed_but_not_published() {
        let map = Map::from_specs([node("payments", "1.0", &["payment.settled@1"], &[])]);
        let verdict = map.check(&node("orders", "1.0", &[], &["order.placed@1", "payment.settled@1"]));
        assert_eq!(
            verdict.conflicts,
            [conflict(
                ConflictKind::ConsumedButNotPublished,
                Some("order.placed"),
                &["orders"],
                "orders consumes order.placed@1 but no node publishes order.placed; register a producer of \
                 order.placed first, or force this registration to let a consumer in before its producer \
                 (bootstrapping)",
            )]
        );
        assert!(!verdict.is_accepted());
        assert!(!verdict.unchanged);
    }

    #[test]
    fn self_consumption_at_the_same_major_satisfies_itself() {
        let verdict = Map::new().check(&node("outbox", "1.0", &["job.queued@1"], &["job.queued@1"]));
        assert_eq!(verdict.conflicts, []);
        assert_eq!(verdict.warnings, Vec::<String>::new());
    }

    #[test]
    fn consumer_of_an_older_major_is_major_version_mismatch() {
        let map = Map::from_specs([node("payments", "2.0", &["order.placed@2"], &[])]);
        let verdict = map.check(&node("orders", "1.0", &[], &["order.placed@1"]));
        assert_eq!(
            verdict.conflicts,
            [conflict(
                ConflictKind::MajorVersionMismatch,
                Some("order.placed"),
                &["orders", "payments"],
                "orders consumes order.placed@1 but payments publishes order.placed@2",
            )]
        );
    }

    #[test]
    fn producer_registering_after_a_forced_consumer_is_checked_against_it() {
        let map = Map::from_specs([node("orders", "1.0", &[], &["order.placed@1"])]);
        let verdict = map.check(&node("payments", "2.0", &["order.placed@2"], &[]));
        assert_eq!(
            verdict.conflicts,
            [conflict(
                ConflictKind::MajorVersionMismatch,
                Some("order.placed"),
                &["orders", "payments"],
                "orders consumes order.placed@1 but payments publishes order.placed@2",
            )]
        );
        let verdict = map.check(&node("payments", "2.0", &["order.placed@1"], &[]));
        assert_eq!(verdict.conflicts, []);
    }

    #[test]
    fn producer_publishing_both_majors_matches_consumers_of_either() {
        let map = Map::from_specs([
            node("orders", "1.0", &[], &["order.placed@1"]),
            node("billing", "1.0", &[], &["order.placed@2"]),
        ]);
        let verdict = map.check(&node("payments", "2.0", &["order.placed@1", "order.placed@2"], &[]));
        assert_eq!(verdict.conflicts, []);
    }

    #[test]
    fn self_consumption_across_majors_is_a_mismatch_with_itself() {
        let verdict = Map::new().check(&node("outbox", "1.0", &["job.queued@2"], &["job.queued@1"]));
        assert_eq!(
            verdict.conflicts,
            [conflict(
                ConflictKind::MajorVersionMismatch,
                Some("job.queued"),
                &["outbox"],
                "outbox consumes job.queued@1 but itself publishes job.queued@2",
            )]
        );
    }

    #[test]
    fn major_bump_of_a_consumed_event_is_a_mismatch_not_a_removal() {
        let map = Map::from_specs([
            node("payments", "1.0", &["order.placed@1"], &[]),
            node("orders", "1.0", &[], &["order.placed@1"]),
        ]);
        let verdict = map.check(&node("payments", "2.0", &["order.placed@2"], &[]));
        let kinds: Vec<ConflictKind> = verdict.conflicts.iter().map(|conflict| conflict.kind).collect();
        assert_eq!(kinds, [ConflictKind::MajorVersionMismatch]);
    }

    #[test]
    fn new_version_dropping_a_consumed_event_is_published_event_removed() {
        let map = Map::from_specs([
            node("payments", "1.0", &["order.placed@1", "payment.settled@1"], &[]),
            node("orders", "1.0", &[], &["order.placed@1"]),
            node("shipping", "1.0", &[], &["order.placed@1"]),
        ]);
        let verdict = map.check(&node("payments", "2.0", &["payment.settled@1"], &[]));
        assert_eq!(
            verdict.conflicts,
            [conflict(
                ConflictKind::PublishedEventRemoved,
                Some("order.placed"),
                &["payments", "orders", "shipping"],
                "payments 2.0 no longer publishes order.placed@1 (1.0 did), which orders and shipping consume, \
                 and no other node publishes it",
            )]
        );
    }

    #[test]
    fn removing_the_only_producer_is_published_event_removed() {
        let map = Map::from_specs([
            node("payments", "1.0", &["order.placed@1"], &[]),
            node("orders", "1.0", &[], &["order.placed@1"]),
        ]);
        let verdict = map.check_removal("payments");
        assert_eq!(
            verdict.conflicts,
            [conflict(
                ConflictKind::PublishedEventRemoved,
                Some("order.placed"),
                &["payments", "orders"],
                "removing payments 1.0 leaves order.placed@1 without a producer, but orders consumes it",
            )]
        );
        assert_eq!(map.check_removal("orders").conflicts, []);
        assert!(map.check_removal("nobody").unchanged);
    }

    #[test]
    fn dropping_the_only_producer_of_a_consumed_major_is_published_event_removed() {
        // legacy publishes another major, so orders is left with no producer it can read.
        let map = Map::from_specs([
            node("payments", "1.0", &["order.placed@1"], &[]),
            node("legacy", "1.0", &["order.placed@2"], &[]),
            node("orders", "1.0", &[], &["order.placed@1"]),
        ]);
        let verdict = map.check(&node("payments", "1.1", &[], &[]));
        let kinds: Vec<ConflictKind> = verdict.conflicts.iter().map(|conflict| conflict.kind).collect();
        assert_eq!(kinds, [ConflictKind::PublishedEventRemoved]);
    }

    #[test]
    fn mismatch_forced_in_between_other_nodes_is_not_reported_again() {
        let map = Map::from_specs([
            node("payments", "2.0", &["order.placed@2"], &[]),
            node("orders", "1.0", &[], &["order.placed@1"]),
        ]);
        let verdict = map.check(&node("billing", "1.0", &[], &["order.placed@2"]));
        assert_eq!(verdict.conflicts, []);
    }

    #[test]
    fn dropping_an_event_another_node_still_publishes_is_fine() {
        let map = Map::from_specs([
            node("payments", "1.0", &["order.placed@1"], &[]),
            node("legacy", "1.0", &["order.placed@1"], &[]),
            node("orders", "1.0", &[], &["order.placed@1"]),
        ]);
        let verdict = map.check(&node("payments", "2.0", &[], &[]));
        assert_eq!(verdict.conflicts, []);
        assert_eq!(verdict.warnings, Vec::<String>::new());
    }

    #[test]
    fn spec_change_removing_an_event_nobody_consumes_is_fine() {
        let map = Map::from_specs([
            node("payments", "1.0", &["order.placed@1", "audit.logged@1"], &[]),
            node("orders", "1.0", &[], &["order.placed@1"]),
        ]);
        let verdict = map.check(&node("payments", "1.1", &["order.placed@1"], &[]));
        assert_eq!(verdict.conflicts, []);
        assert_eq!(verdict.warnings, Vec::<String>::new());
        assert!(verdict.is_accepted());
        assert!(!verdict.unchanged);
    }

    #[test]
    fn same_version_with_another_spec_is_name_claimed_with_different_spec() {
        let mut first = node("payments", "1.0", &["payment.settled@1"], &[]);
        first.endpoints = vec!["10.0.0.1:8080".to_owned()];
        let map = Map::from_specs([first, node("orders", "1.0", &[], &["payment.settled@1"])]);
        let mut claim = node("payments", "1.0", &["payment.settled@1", "refund.issued@1"], &[]);
        claim.endpoints = vec!["10.0.0.2:8080".to_owned()];
        let verdict = map.check(&claim);
        assert_eq!(
            verdict.conflicts,
            [conflict(
                ConflictKind::NameClaimedWithDifferentSpec,
                None,
                &["payments"],
                "payments 1.0 is already registered with a different spec (this one adds publish \
                 refund.issued@1); register the change as a new version, or force it",
            )]
        );
        assert_eq!(verdict.warnings, ["payments publishes refund.issued@1 but no node consumes it"]);
    }

    #[test]
    fn another_replica_of_the_same_version_is_no_conflict() {
        let mut first = node("payments", "1.0", &["payment.settled@1"], &[]);
        first.endpoints = vec!["10.0.0.1:8080".to_owned()];
        let map = Map::from_specs([first.clone(), node("orders", "1.0", &[], &["payment.settled@1"])]);
        let mut replica = first;
        replica.endpoints = vec!["10.0.0.1:8080".to_owned(), "10.0.0.2:8080".to_owned()];
        let verdict = map.check(&replica);
        assert_eq!(verdict.conflicts, []);
    }

    #[test]
    fn new_version_with_another_spec_replaces_the_old_one() {
        let mut map = Map::from_specs([node("payments", "1.0", &["payment.settled@1"], &[])]);
        let canary = node("payments", "2.0", &["payment.settled@1", "refund.issued@1"], &[]);
        let verdict = map.check(&canary);
        assert_eq!(verdict.conflicts, []);
        let previous = map.apply(canary.clone());
        assert_eq!(previous.map(|spec| spec.version), Some("1.0".to_owned()));
        assert_eq!(map.node("payments"), Some(&canary));
        assert_eq!(map.nodes().count(), 1);
    }

    #[test]
    fn identical_reregistration_is_unchanged_without_conflicts() {
        let mut registered =
            node("orders", "1.0", &["order.placed@1", "order.cancelled@1"], &["stock.reserved@1"]);
        registered.endpoints = vec!["10.0.0.2:80".to_owned(), "10.0.0.1:80".to_owned()];
        // Forced in before its producer: a conflict in the map that re-registering must not report.
        let map = Map::from_specs([registered.clone()]);
        let mut again = registered;
        again.publishes.reverse();
        again.endpoints.reverse();
        again.endpoints.push("10.0.0.1:80".to_owned());
        let verdict = map.check(&again);
        assert!(verdict.unchanged);
        assert_eq!(verdict.conflicts, []);
        assert_eq!(
            verdict.warnings,
            [
                "orders publishes order.cancelled@1 but no node consumes it",
                "orders publishes order.placed@1 but no node consumes it",
            ]
        );
    }

    #[test]
    fn last_consumer_leaving_warns_for_the_producer() {
        let map = Map::from_specs([
            node("payments", "1.0", &["payment.settled@1"], &[]),
            node("orders", "1.0", &[], &["payment.settled@1"]),
        ]);
        let verdict = map.check(&node("orders", "1.1", &[], &[]));
        assert_eq!(verdict.conflicts, []);
        assert_eq!(
            verdict.warnings,
            ["payments publishes payment.settled@1 but after this change no node consumes it (orders was the \
              last consumer)"]
        );
        assert_eq!(map.check_removal("orders").warnings, verdict.warnings);
    }

    #[test]
    fn conflicts_serialize_with_snake_case_kinds() {
        let verdict = Map::new().check(&node("orders", "1.0", &[], &["order.placed@1"]));
        let value = serde_json::to_value(&verdict).expect("a verdict serializes");
        assert_eq!(value["conflicts"][0]["kind"], "consumed_but_not_published");
        assert_eq!(value["conflicts"][0]["event"], "order.placed");
        assert_eq!(
            ConflictKind::NameClaimedWithDifferentSpec.to_string(),
            "name_claimed_with_different_spec"
        );
        for kind in [
            ConflictKind::ConsumedButNotPublished,
            ConflictKind::MajorVersionMismatch,
            ConflictKind::PublishedEventRemoved,
            ConflictKind::NameClaimedWithDifferentSpec,
        ] {
            assert_eq!(serde_json::to_value(kind).expect("a kind serializes"), kind.as_str());
        }
    }
}
