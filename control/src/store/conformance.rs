//! What every [`Store`] must do, written against [`open`] and a URL so that the etcd store can run the
//! same tests: today each runs on an SQLite file in a temporary directory.

use serde_json::json;
use tempfile::TempDir;

use super::*;

/// A fresh, empty store location that lives as long as the value.
struct Fixture {
    _dir: TempDir,
    url: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("control.db").display());
        Fixture { _dir: dir, url }
    }

    fn open(&self) -> Box<dyn Store> {
        open(&self.url).unwrap()
    }
}

fn node(name: &str, version: &str, unix_ms: u64) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        version: version.into(),
        spec: json!({"publishes": [{"event": format!("{name}.done"), "schema": 1}], "slo": {"p99_ms": 250}}),
        status: "healthy".into(),
        registered_unix_ms: unix_ms,
        updated_unix_ms: unix_ms,
    }
}

fn entry(unix_ms: u64, kind: &str, node: Option<&str>, detail: serde_json::Value) -> NewJournal {
    NewJournal {
        unix_ms,
        trace_id: format!("trace-{unix_ms}"),
        kind: kind.into(),
        node: node.map(Into::into),
        detail,
    }
}

#[test]
fn everything_written_is_read_back_after_reopen() {
    let fixture = Fixture::new();
    let store = fixture.open();

    let mut payments = node("payments", "v1", 1_000);
    let seq = store.register(&payments, &entry(1_000, "registered", Some("payments"), json!({}))).unwrap();
    assert_eq!(seq, 1);
    store.upsert_node(&node("orders", "v7", 1_100)).unwrap();
    store.set_status("payments", "degraded", 1_200).unwrap();
    payments.status = "degraded".into();
    payments.updated_unix_ms = 1_200;

    let routes_v1 = json!({"routes": [{"match": "/pay", "split": [["v1", 100]]}]});
    let routes_canary = json!({"routes": [{"match": "/pay", "split": [["v1", 90], ["v2", 10]]}]});
    store.put_desired("payments", &routes_v1, &entry(1_300, "desired", Some("payments"), json!({}))).unwrap();
    store
        .put_desired("payments", &routes_canary, &entry(1_400, "desired", Some("payments"), json!({})))
        .unwrap();
    store.set_applied("payments", "proxy-b", 1, 1_350).unwrap();
    store.set_applied("payments", "proxy-a", 1, 1_350).unwrap();
    store.set_applied("payments", "proxy-a", 2, 1_450).unwrap();
    let note = store.append(&entry(1_500, "hook_result", None, json!({"exit": 0, "stdout": "ok"}))).unwrap();
    let rollout = RolloutRecord {
        id: "payments-v2".into(),
        node: "payments".into(),
        state: json!({"step": 10, "phase": "holding"}),
        updated_unix_ms: 1_400,
    };
    store.put_rollout(&rollout).unwrap();
    let rollout =
        RolloutRecord { state: json!({"step": 25, "phase": "holding"}), updated_unix_ms: 1_600, ..rollout };
    store.put_rollout(&rollout).unwrap();
    let done = RolloutRecord {
        id: "orders-v7".into(),
        node: "orders".into(),
        state: json!({"phase": "promoted"}),
        updated_unix_ms: 900,
    };
    store.put_rollout(&done).unwrap();
    let held = LadderRecord {
        node: "payments".into(),
        state: json!({"phase": "watching", "breaches": 1}),
        updated_unix_ms: 1_700,
    };
    store.put_ladder(&held).unwrap();
    let held = LadderRecord {
        state: json!({"phase": "held", "reason": "hook failed"}),
        updated_unix_ms: 1_800,
        ..held
    };
    store.put_ladder(&held).unwrap();
    let watching = LadderRecord {
        node: "orders".into(),
        state: json!({"phase": "watching", "breaches": 0}),
        updated_unix_ms: 50,
    };
    store.put_ladder(&watching).unwrap();
    drop(store);

    let store = fixture.open();
    assert_eq!(store.node("payments").unwrap(), Some(payments.clone()));
    assert_eq!(store.node("nobody").unwrap(), None);
    assert_eq!(store.nodes().unwrap(), vec![node("orders", "v7", 1_100), payments]);
    assert_eq!(
        store.desired("payments").unwrap(),
        Some(DesiredRecord { node: "payments".into(), revision: 2, routes: routes_canary, unix_ms: 1_400 })
    );
    assert_eq!(store.desired("orders").unwrap(), None);
    assert_eq!(
        store.proxies("payments").unwrap(),
        vec![
            ProxyRecord {
                node: "payments".into(),
                proxy: "proxy-a".into(),
                applied_revision: Some(2),
                last_seen_unix_ms: 1_450
            },
            ProxyRecord {
                node: "payments".into(),
                proxy: "proxy-b".into(),
                applied_revision: Some(1),
                last_seen_unix_ms: 1_350
            },
        ]
    );
    assert_eq!(store.proxies("orders").unwrap(), vec![]);
    assert_eq!(store.rollouts().unwrap(), vec![done, rollout]);
    assert_eq!(store.ladders().unwrap(), vec![watching, held], "one per node, the last written");
    let journal = store.journal_after(0, 100).unwrap();
    let kinds: Vec<_> = journal.iter().map(|e| (e.seq, e.kind.as_str())).collect();
    assert_eq!(kinds, vec![(1, "registered"), (2, "desired"), (3, "desired"), (4, "hook_result")]);
    assert_eq!(note, 4);
    assert_eq!(
        journal[3],
        JournalRecord {
            seq: 4,
            unix_ms: 1_500,
            trace_id: "trace-1500".into(),
            kind: "hook_result".into(),
            node: None,
            detail: json!({"exit": 0, "stdout": "ok"}),
        }
    );
    assert_eq!(journal[0].node.as_deref(), Some("payments"));
}

#[test]
fn desired_revisions_count_up_per_node_with_their_journal_entry() {
    let fixture = Fixture::new();
    let store = fixture.open();
    for expected in 1..=3 {
        let routes = json!({"weights": {"v1": 100 - expected * 10, "v2": expected * 10}});
        let journal = entry(expected, "desired", Some("payments"), json!({"reason": "canary step"}));
        assert_eq!(store.put_desired("payments", &routes, &journal).unwrap().revision, expected);
        let desired = store.desired("payments").unwrap().unwrap();
        assert_eq!((desired.revision, desired.routes, desired.unix_ms), (expected, routes, expected));
    }
    // Another node counts on its own; a detail that is not an object is kept as it is.
    assert_eq!(
        store.put_desired("orders", &json!([]), &entry(9, "desired", None, json!("first"))).unwrap().revision,
        1
    );

    let journal = store.journal_after(0, 10).unwrap();
    let details: Vec<_> = journal.iter().map(|e| (e.kind.as_str(), e.detail.clone())).collect();
    assert_eq!(
        details,
        vec![
            ("desired", json!({"reason": "canary step", "revision": 1})),
            ("desired", json!({"reason": "canary step", "revision": 2})),
            ("desired", json!({"reason": "canary step", "revision": 3})),
            ("desired", json!("first")),
        ]
    );
    drop(store);
    let store = fixture.open();
    assert_eq!(
        store.put_desired("payments", &json!({}), &entry(10, "desired", None, json!({}))).unwrap().revision,
        4
    );
}

#[test]
fn journal_seqs_strictly_increase_survive_reopen_and_page() {
    let fixture = Fixture::new();
    let store = fixture.open();
    for n in 1..=25 {
        assert_eq!(store.append(&entry(n, "note", None, json!({"n": n}))).unwrap(), n);
    }
    drop(store);
    let store = fixture.open();
    assert_eq!(store.append(&entry(26, "note", None, json!({"n": 26}))).unwrap(), 26);

    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = store.journal_after(cursor, 10).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        cursor = page.last().unwrap().seq;
        seen.extend(page.into_iter().map(|e| (e.seq, e.detail["n"].as_u64().unwrap())));
    }
    assert_eq!(seen, (1..=26).map(|n| (n, n)).collect::<Vec<_>>());
    assert_eq!(
        store.journal_after(20, 3).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![21, 22, 23]
    );
    assert!(store.journal_after(0, 0).unwrap().is_empty());
    assert!(store.journal_after(26, 10).unwrap().is_empty());
    assert!(store.journal_after(u64::MAX, 10).unwrap().is_empty());
    assert_eq!(store.journal_after(0, usize::MAX).unwrap().len(), 26);
    assert_eq!(
        store.journal_head().unwrap(),
        store.journal_after(0, usize::MAX).unwrap().last().unwrap().seq
    );
}

#[test]
fn upsert_replaces_a_node_by_name() {
    let fixture = Fixture::new();
    let store = fixture.open();
    store.upsert_node(&node("payments", "v1", 1)).unwrap();
    let mut v2 = node("payments", "v2", 1);
    v2.spec = json!({"publishes": []});
    v2.updated_unix_ms = 2;
    store.upsert_node(&v2).unwrap();
    assert_eq!(store.nodes().unwrap(), vec![v2]);
}

#[test]
fn status_of_an_unknown_node_is_refused() {
    let fixture = Fixture::new();
    let store = fixture.open();
    let error = store.set_status("ghost", "healthy", 1).unwrap_err();
    assert!(matches!(&error, StoreError::UnknownNode(name) if name == "ghost"), "{error}");
    assert_eq!(store.nodes().unwrap(), vec![]);
}

#[test]
fn numbers_past_i64_are_refused_and_nothing_is_written() {
    let fixture = Fixture::new();
    let store = fixture.open();
    let too_late = u64::MAX;
    let error = store.append(&entry(too_late, "note", None, json!({}))).unwrap_err();
    assert!(
        matches!(error, StoreError::OutOfRange { field: "unix_ms", value } if value == too_late),
        "{error}"
    );
    let error = store.put_desired("payments", &json!({}), &entry(too_late, "desired", None, json!({})));
    assert!(matches!(error, Err(StoreError::OutOfRange { .. })));
    let mut late = node("payments", "v1", 1);
    late.updated_unix_ms = too_late;
    assert!(matches!(
        store.register(&late, &entry(1, "registered", None, json!({}))),
        Err(StoreError::OutOfRange { .. })
    ));
    assert_eq!(store.desired("payments").unwrap(), None);
    assert_eq!(store.nodes().unwrap(), vec![]);
    assert!(store.journal_after(0, 10).unwrap().is_empty());
    // The refused writes used no sequence number.
    assert_eq!(store.append(&entry(1, "note", None, json!({}))).unwrap(), 1);
}
