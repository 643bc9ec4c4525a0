//! The event/node map: which nodes exist, the version and spec in force for each, and which event
//! types they publish and consume. It sits behind registration and spec changes: the API asks
//! [`Map::check`] what a change would do, refuses it when there are conflicts (unless forced), journals
//! the verdict, and only then calls [`Map::apply`]. Pure logic: no I/O, no clock; the store persists
//! the specs and rebuilds the map with [`Map::from_specs`].
//!
//! # Rules
//!
//! A change is checked against the map as it would be after the change. Conflicts refuse it:
//!
//! 1. `consumed_but_not_published`: the node consumes an event no node publishes (at any major).
//! 2. `major_version_mismatch`: a consumer of `event@b` and a producer that publishes `event` but not
//!    `event@b`. A producer that publishes both `event@1` and `event@2` during a schema migration
//!    matches consumers of either. Only pairs involving the changed node are reported.
//! 3. `published_event_removed`: the node stops publishing an event (no major of it is left) that
//!    another node consumes at a major nobody else publishes. Dropping only one major while keeping
//!    another is a schema change and shows up as rule 2 instead.
//! 4. `name_claimed_with_different_spec`: a registration for the name and version in force whose
//!    spec (publishes, consumes, endpoints) differs. A changed spec needs a new version.
//!
//! Warnings are reported but refuse nothing: an event the node publishes that nobody consumes, and an
//! event another node publishes that nobody consumes any more after this change.
//!
//! # Semantics
//!
//! - **Registration order matters.** A consumer registering before its producer is refused by rule 1;
//!   the message says so and points to `force`, which is how a system is bootstrapped (or register
//!   producers first). When the producer registers later, rule 2 still checks it against the forced
//!   consumer, so a wrong major is caught then.
//! - **One spec per name; the newest registration wins.** During a canary (`payments` 1.0 and 2.0
//!   running side by side) the map holds the spec of whichever version registered last: a new version
//!   replaces the old one's spec and is checked by rules 1–3 against that; re-registering the older
//!   version (a rollback) puts it back in force the same way. Rule 4 compares within the version in
//!   force only; a version no longer in force is forgotten, so a later claim on it is a new
//!   registration, not a rule 4 conflict.
//! - **Identical re-registration is idempotent**: `unchanged` is set and no conflicts are reported,
//!   even if the map holds conflicts that were forced in earlier, because applying it changes nothing.
//! - **Order inside a spec does not matter**: publishes, consumes and endpoints are compared as sets;
//!   specs are stored sorted and without duplicates.
//! - **Self-consumption** counts like any other pair: a node that publishes and consumes `event@1`
//!   satisfies itself; one that publishes `event@2` and consumes `event@1` is a mismatch with itself.
//! - Removing a node is checked with [`Map::check_removal`] (rule 3 and warnings).
//!
//! Messages name the nodes, the events with their majors and, where versions of a node matter, the
//! node versions; [`Conflict::nodes`] lists the nodes in the order the message names them.

mod check;
mod render;

use std::collections::BTreeMap;
use std::fmt;

use remora_config::EventRef;
use serde::{Serialize, Serializer};

/// What a node declares when it registers: the API layer converts the wire type into this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    pub name: String,
    pub version: String,
    pub publishes: Vec<EventRef>,
    pub consumes: Vec<EventRef>,
    pub endpoints: Vec<String>,
}

impl NodeSpec {
    /// Sorted and without duplicates, so that specs compare as sets.
    fn normalized(mut self) -> Self {
        self.publishes.sort_unstable();
        self.publishes.dedup();
        self.consumes.sort_unstable();
        self.consumes.dedup();
        self.endpoints.sort_unstable();
        self.endpoints.dedup();
        self
    }

    fn is_normalized(&self) -> bool {
        fn strictly_sorted<T: Ord>(list: &[T]) -> bool {
            list.windows(2).all(|pair| pair[0] < pair[1])
        }
        strictly_sorted(&self.publishes)
            && strictly_sorted(&self.consumes)
            && strictly_sorted(&self.endpoints)
    }

    fn publishes_event(&self, event: &str) -> bool {
        self.publishes.iter().any(|published| published.name == event)
    }

    /// The majors of `event` this node publishes, ascending.
    fn published_majors(&self, event: &str) -> Vec<u32> {
        self.publishes
            .iter()
            .filter(|published| published.name == event)
            .map(|published| published.major)
            .collect()
    }
}

/// The nodes by name, each with the spec in force.
#[derive(Clone, Debug, Default)]
pub struct Map {
    nodes: BTreeMap<String, NodeSpec>,
}

impl Map {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from stored specs without checking them (they were accepted or forced when they
    /// were registered). A later spec for the same name replaces an earlier one.
    pub fn from_specs(specs: impl IntoIterator<Item = NodeSpec>) -> Self {
        let mut map = Self::new();
        for spec in specs {
            map.apply(spec);
        }
        map
    }

    /// What registering (or changing) `spec` would do, without doing it.
    pub fn check(&self, spec: &NodeSpec) -> Verdict {
        check::registration(&self.nodes, spec.clone().normalized())
    }

    /// What removing the node `name` would do, without doing it. Removing an unknown node is
    /// `unchanged`.
    pub fn check_removal(&self, name: &str) -> Verdict {
        check::removal(&self.nodes, name)
    }

    /// Puts `spec` in force (after [`Map::check`], or forced). Returns the spec it replaces.
    pub fn apply(&mut self, spec: NodeSpec) -> Option<NodeSpec> {
        let spec = spec.normalized();
        let previous = self.nodes.insert(spec.name.clone(), spec);
        self.debug_check_invariants();
        previous
    }

    pub fn remove(&mut self, name: &str) -> Option<NodeSpec> {
        let removed = self.nodes.remove(name);
        self.debug_check_invariants();
        removed
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.get(name)
    }

    /// The specs in force, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.values()
    }

    /// Event types with their producers and consumers, sorted by name (`GET /v1/events`).
    pub fn events(&self) -> Vec<EventType> {
        let mut events: BTreeMap<String, EventType> = BTreeMap::new();
        for node in self.nodes.values() {
            for published in &node.publishes {
                events
                    .entry(published.name.clone())
                    .or_insert_with(|| EventType::empty(&published.name))
                    .producers
                    .push((node.name.clone(), published.major));
            }
            for consumed in &node.consumes {
                events
                    .entry(consumed.name.clone())
                    .or_insert_with(|| EventType::empty(&consumed.name))
                    .consumers
                    .push((node.name.clone(), consumed.major));
            }
        }
        events.into_values().collect()
    }

    /// The whole graph as JSON (`GET /v1/map`): nodes, event types and producer → consumer edges.
    pub fn to_json(&self) -> serde_json::Value {
        render::json(self)
    }

    /// The whole graph as Graphviz dot (`GET /v1/map?format=dot`).
    pub fn to_dot(&self) -> String {
        render::dot(self)
    }

    fn debug_check_invariants(&self) {
        if cfg!(debug_assertions) {
            for (name, spec) in &self.nodes {
                assert_eq!(name, &spec.name, "map key and spec name differ");
                assert!(spec.is_normalized(), "spec of {name} is not normalized");
            }
        }
    }
}

/// What a change would do: refused when `conflicts` is not empty (unless forced).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub conflicts: Vec<Conflict>,
    pub warnings: Vec<String>,
    /// The change is an identical re-registration (or removes an unknown node): applying it does nothing.
    pub unchanged: bool,
}

impl Verdict {
    /// No conflicts: the change may be applied without force.
    pub fn is_accepted(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// One reason to refuse a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The event type at issue, without a major (`order.placed`); `None` for rule 4.
    pub event: Option<String>,
    /// The nodes involved, in the order the message names them.
    pub nodes: Vec<String>,
    pub message: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    ConsumedButNotPublished,
    MajorVersionMismatch,
    PublishedEventRemoved,
    NameClaimedWithDifferentSpec,
}

impl ConflictKind {
    /// The name used on the wire and in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsumedButNotPublished => "consumed_but_not_published",
            Self::MajorVersionMismatch => "major_version_mismatch",
            Self::PublishedEventRemoved => "published_event_removed",
            Self::NameClaimedWithDifferentSpec => "name_claimed_with_different_spec",
        }
    }
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event type with the nodes that publish and consume it, each with the major it uses; sorted by
/// node, then major. Serialized with `{"node", "major"}` objects rather than pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventType {
    pub name: String,
    #[serde(serialize_with = "serialize_uses")]
    pub producers: Vec<(String, u32)>,
    #[serde(serialize_with = "serialize_uses")]
    pub consumers: Vec<(String, u32)>,
}

impl EventType {
    fn empty(name: &str) -> Self {
        Self { name: name.to_owned(), producers: Vec::new(), consumers: Vec::new() }
    }
}

fn serialize_uses<S: Serializer>(uses: &[(String, u32)], serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Use<'a> {
        node: &'a str,
        major: u32,
    }
    serializer.collect_seq(uses.iter().map(|(node, major)| Use { node, major: *major }))
}
