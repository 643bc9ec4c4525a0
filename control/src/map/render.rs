//! The map as JSON (`GET /v1/map`) and as Graphviz dot (`GET /v1/map?format=dot`).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{EventType, Map};

/// A producer → consumer edge for one event type at the major the consumer reads.
struct Edge<'a> {
    event: &'a str,
    producer: &'a str,
    consumer: &'a str,
    /// `[consumed]` when the producer publishes that major, else every major it publishes.
    published: Vec<u32>,
    consumed: u32,
}

impl Edge<'_> {
    fn is_mismatch(&self) -> bool {
        !self.published.contains(&self.consumed)
    }
}

/// Edges by event, then producer, then consumer and major.
fn edges(events: &[EventType]) -> Vec<Edge<'_>> {
    let mut edges = Vec::new();
    for event in events {
        // Producers are sorted by node, so a node's majors are consecutive.
        for producer in event.producers.chunk_by(|left, right| left.0 == right.0) {
            let majors: Vec<u32> = producer.iter().map(|(_, major)| *major).collect();
            for (consumer, consumed) in &event.consumers {
                let published = if majors.contains(consumed) { vec![*consumed] } else { majors.clone() };
                edges.push(Edge {
                    event: &event.name,
                    producer: &producer[0].0,
                    consumer,
                    published,
                    consumed: *consumed,
                });
            }
        }
    }
    edges
}

pub(super) fn json(map: &Map) -> Value {
    let events = map.events();
    let edges: Vec<Value> = edges(&events)
        .iter()
        .map(|edge| {
            json!({
                "event": edge.event,
                "producer": edge.producer,
                "consumer": edge.consumer,
                "consumed_major": edge.consumed,
                "published_majors": edge.published,
                "mismatch": edge.is_mismatch(),
            })
        })
        .collect();
    let nodes: Vec<_> = map.nodes().collect();
    json!({ "nodes": nodes, "events": events, "edges": edges })
}

pub(super) fn dot(map: &Map) -> String {
    let mut out = String::from("digraph remora {\n  rankdir=LR;\n  node [shape=box];\n");
    // Writing to a String cannot fail.
    for node in map.nodes() {
        let label = format!("{}\n{}", node.name, node.version);
        let _ = writeln!(out, "  {} [label={}];", quote(&node.name), quote(&label));
    }
    for edge in edges(&map.events()) {
        let (label, style) = if edge.is_mismatch() {
            let published: Vec<String> = edge.published.iter().map(|major| format!("@{major}")).collect();
            let label = format!("{}{}, consumed as @{}", edge.event, published.join("/"), edge.consumed);
            (label, ", color=red, fontcolor=red")
        } else {
            (format!("{}@{}", edge.event, edge.consumed), "")
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}{style}];",
            quote(edge.producer),
            quote(edge.consumer),
            quote(&label)
        );
    }
    out.push_str("}\n");
    out
}

/// A dot quoted string. Quotes and backslashes are escaped (so a name cannot close the string or
/// smuggle in label escapes such as `\N`); a newline becomes the label line break `\n`. Other control
/// characters have no dot escape and become spaces.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            character if character.is_control() => quoted.push(' '),
            character => quoted.push(character),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::map::check::tests::node;
    use crate::map::{EventType, Map};

    /// orders and payments feed each other; shipping reads an old major of `order.placed`.
    fn three_nodes() -> Map {
        Map::from_specs([
            node("shipping", "0.3", &[], &["order.placed@1", "payment.settled@1"]),
            node("payments", "2.1", &["payment.settled@1"], &["order.placed@2"]),
            node("orders", "1.0", &["order.placed@2"], &["payment.settled@1"]),
        ])
    }

    #[test]
    fn events_list_producers_and_consumers_by_name() {
        let uses = |list: &[(&str, u32)]| -> Vec<(String, u32)> {
            list.iter().map(|(node, major)| ((*node).to_owned(), *major)).collect()
        };
        assert_eq!(
            three_nodes().events(),
            [
                EventType {
                    name: "order.placed".to_owned(),
                    producers: uses(&[("orders", 2)]),
                    consumers: uses(&[("payments", 2), ("shipping", 1)]),
                },
                EventType {
                    name: "payment.settled".to_owned(),
                    producers: uses(&[("payments", 1)]),
                    consumers: uses(&[("orders", 1), ("shipping", 1)]),
                },
            ]
        );
    }

    #[test]
    fn json_holds_nodes_events_and_edges() {
        let edge = |event: &str, producer: &str, consumer: &str, consumed: u32, published: &[u32]| {
            json!({
                "event": event,
                "producer": producer,
                "consumer": consumer,
                "consumed_major": consumed,
                "published_majors": published,
                "mismatch": !published.contains(&consumed),
            })
        };
        assert_eq!(
            three_nodes().to_json(),
            json!({
                "nodes": [
                    {"name": "orders", "version": "1.0", "publishes": ["order.placed@2"],
                     "consumes": ["payment.settled@1"], "endpoints": []},
                    {"name": "payments", "version": "2.1", "publishes": ["payment.settled@1"],
                     "consumes": ["order.placed@2"], "endpoints": []},
                    {"name": "shipping", "version": "0.3", "publishes": [],
                     "consumes": ["order.placed@1", "payment.settled@1"], "endpoints": []},
                ],
                "events": [
                    {"name": "order.placed", "producers": [{"node": "orders", "major": 2}],
                     "consumers": [{"node": "payments", "major": 2}, {"node": "shipping", "major": 1}]},
                    {"name": "payment.settled", "producers": [{"node": "payments", "major": 1}],
                     "consumers": [{"node": "orders", "major": 1}, {"node": "shipping", "major": 1}]},
                ],
                "edges": [
                    edge("order.placed", "orders", "payments", 2, &[2]),
                    edge("order.placed", "orders", "shipping", 1, &[2]),
                    edge("payment.settled", "payments", "orders", 1, &[1]),
                    edge("payment.settled", "payments", "shipping", 1, &[1]),
                ],
            })
        );
    }

    #[test]
    fn dot_draws_boxes_and_edges_with_mismatches_in_red() {
        let expected = r#"digraph remora {
  rankdir=LR;
  node [shape=box];
  "orders" [label="orders\n1.0"];
  "payments" [label="payments\n2.1"];
  "shipping" [label="shipping\n0.3"];
  "orders" -> "payments" [label="order.placed@2"];
  "orders" -> "shipping" [label="order.placed@2, consumed as @1", color=red, fontcolor=red];
  "payments" -> "orders" [label="payment.settled@1"];
  "payments" -> "shipping" [label="payment.settled@1"];
}
"#;
        assert_eq!(three_nodes().to_dot(), expected);
    }

    #[test]
    fn dot_escapes_quotes_backslashes_and_newlines_in_names() {
        let map = Map::from_specs([
            node("say \"hi\"\\N", "1\n2", &["a\"b@1", "a\"b@3"], &[]),
            node("tab\there", "x", &[], &["a\"b@2"]),
        ]);
        let expected = r#"digraph remora {
  rankdir=LR;
  node [shape=box];
  "say \"hi\"\\N" [label="say \"hi\"\\N\n1\n2"];
  "tab here" [label="tab here\nx"];
  "say \"hi\"\\N" -> "tab here" [label="a\"b@1/@3, consumed as @2", color=red, fontcolor=red];
}
"#;
        assert_eq!(map.to_dot(), expected);
    }

    #[test]
    fn dot_of_an_empty_map_is_an_empty_graph() {
        assert_eq!(Map::new().to_dot(), "digraph remora {\n  rankdir=LR;\n  node [shape=box];\n}\n");
    }
}
