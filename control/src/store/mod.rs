//! The control process' durable state: the event/node map, desired state per node, what each proxy has
//! applied, rollouts in progress and the journal.
//!
//! Everything the control process must still know after `kill -9` goes through one [`Store`]. The
//! default is SQLite in one file ([`open`] with `sqlite://…`), so `remora control` needs no server; an
//! etcd store for high availability comes later behind the same trait, and the same tests will run
//! against both.
//!
//! The records here are plain: shapes that belong to `remora-config` (node specs, routes, journal
//! details, rollout state) are held as [`serde_json::Value`] and stored as JSON text, so the store
//! neither depends on those types nor needs a migration when they grow a field. The API layer converts.
//!
//! The trait is synchronous. Callers on the async runtime go through `tokio::task::spawn_blocking` (an
//! `Arc<dyn Store>` moves into the closure): a write waits for the disk, and that must not stall a
//! runtime worker.

mod sqlite;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The control process' durable state.
///
/// **Each method is one transaction**: it either happens whole or not at all, also across a crash of
/// the process, and once it has returned `Ok` the write survives `kill -9`. Methods that write two
/// things (`put_desired`, `register`) write both or neither. Reads see only committed writes.
///
/// Lists are ordered (nodes and proxies by name, the journal by sequence number, rollouts by id) so
/// that what callers show or diff is stable.
pub trait Store: Send + Sync + 'static {
    /// Inserts `node`, or replaces every field of the node with the same name.
    fn upsert_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// The node called `name`, if it is known.
    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// Every known node, by name.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Sets a known node's status and its `updated_unix_ms`; [`StoreError::UnknownNode`] otherwise.
    fn set_status(&self, name: &str, status: &str, unix_ms: u64) -> Result<(), StoreError>;
    /// The latest desired state for `node`, if any was ever put.
    fn desired(&self, node: &str) -> Result<Option<DesiredRecord>, StoreError>;
    /// Stores new desired state for `node` with revision = previous + 1 (1 for the first), stamped with
    /// `journal.unix_ms`, and appends `journal` in the SAME transaction; returns the revision.
    ///
    /// So that the entry names what it records, when `journal.detail` is a JSON object the store sets
    /// its `"revision"` field to the new revision (the caller cannot know it beforehand without racing
    /// another writer). Any other `detail` is stored as given.
    fn put_desired(
        &self,
        node: &str,
        routes: &serde_json::Value,
        journal: &NewJournal,
    ) -> Result<DesiredWritten, StoreError>;
    /// Records that `proxy` has applied `revision` of `node`'s desired state (a proxy's ack), and when
    /// it was last seen. The last ack wins, also if it names an older revision: it is the proxy's word.
    fn set_applied(&self, node: &str, proxy: &str, revision: u64, unix_ms: u64) -> Result<(), StoreError>;
    /// The proxies that have acked `node`'s desired state, by proxy name.
    fn proxies(&self, node: &str) -> Result<Vec<ProxyRecord>, StoreError>;
    /// The journal's last sequence number (0 when empty).
    fn journal_head(&self) -> Result<u64, StoreError>;
    /// Appends one entry; returns its sequence number (strictly increasing, never reused, survives
    /// restarts; the first is 1).
    fn append(&self, entry: &NewJournal) -> Result<u64, StoreError>;
    /// At most `limit` entries with a sequence number greater than `seq`, oldest first. `seq = 0`
    /// starts at the beginning; the last entry's `seq` is the cursor for the next page (and an SSE
    /// stream's `Last-Event-ID`).
    fn journal_after(&self, seq: u64, limit: usize) -> Result<Vec<JournalRecord>, StoreError>;
    /// Inserts `rollout`, or replaces the rollout with the same id.
    fn put_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError>;
    /// Every stored rollout, by id; the rollout engine decides from `state` which are in progress.
    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;
    /// Inserts or replaces `node`'s healing ladder.
    fn put_ladder(&self, ladder: &LadderRecord) -> Result<(), StoreError>;
    /// Every stored ladder, by node.
    fn ladders(&self) -> Result<Vec<LadderRecord>, StoreError>;
    /// A registration or spec change plus its journal entry, atomically ([`Store::upsert_node`] and
    /// [`Store::append`] in one transaction); returns the entry's sequence number.
    fn register(&self, node: &NodeRecord, journal: &NewJournal) -> Result<u64, StoreError>;
}

/// A node of the event/node map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub version: String,
    /// The node's spec (events published and consumed, SLOs, hooks), as `remora-config` serializes it.
    pub spec: serde_json::Value,
    pub status: String,
    pub registered_unix_ms: u64,
    pub updated_unix_ms: u64,
}

/// The desired state of one node's proxies at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub node: String,
    /// 1 for the first desired state of a node, one more for each after it.
    pub revision: u64,
    pub routes: serde_json::Value,
    pub unix_ms: u64,
}

/// What one proxy in front of a node has applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub node: String,
    pub proxy: String,
    pub applied_revision: Option<u64>,
    pub last_seen_unix_ms: u64,
}

/// A journal entry to append; the store gives it its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJournal {
    pub unix_ms: u64,
    pub trace_id: String,
    /// What happened, e.g. `registered`, `desired`, `hook_result`.
    pub kind: String,
    /// The node it concerns, if one.
    pub node: Option<String>,
    pub detail: serde_json::Value,
}

/// A journal entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub seq: u64,
    pub unix_ms: u64,
    pub trace_id: String,
    pub kind: String,
    pub node: Option<String>,
    pub detail: serde_json::Value,
}

/// What `put_desired` wrote: the node's new revision and the journal entry's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesiredWritten {
    pub revision: u64,
    pub seq: u64,
}

/// A rollout's state, owned by the rollout engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub node: String,
    pub state: serde_json::Value,
    pub updated_unix_ms: u64,
}

/// A node's healing ladder, owned by the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LadderRecord {
    pub node: String,
    pub state: serde_json::Value,
    pub updated_unix_ms: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL cannot be understood (a configuration error).
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// The URL names a kind of store this build does not have.
    #[error("unsupported store: {0}")]
    Unsupported(String),
    /// The store could not be opened or set up (missing directory, permissions, not a database).
    #[error("cannot open the store at {location}: {source}")]
    Open { location: String, source: BoxError },
    /// The store was written by a newer Remora: this binary refuses to touch it rather than guess.
    #[error(
        "the store at {location} has schema version {found}, newer than this binary knows ({known}); \
         run a Remora at least as new as the one that wrote it"
    )]
    NewerSchema { location: String, found: u32, known: u32 },
    /// The file is an SQLite database of some other application.
    #[error("{location} is not a Remora store (SQLite application_id {found:#x})")]
    Foreign { location: String, found: i32 },
    /// Bringing the schema up to date failed; the store stays at the version before it.
    #[error("cannot migrate the store at {location} to schema version {version}: {source}")]
    Migration { location: String, version: u32, source: BoxError },
    /// `set_status` of a node that was never stored.
    #[error("no node named {0:?} in the store")]
    UnknownNode(String),
    /// A number too large for the store (SQLite integers are signed 64-bit).
    #[error("{field} = {value} is too large to store (at most {})", i64::MAX)]
    OutOfRange { field: &'static str, value: u64 },
    /// A stored value cannot be read back (edited by hand, or a bug).
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
    /// The backend failed an operation (disk full, I/O error, locked by another process for too long).
    #[error("store {operation} failed: {source}")]
    Backend { operation: &'static str, source: BoxError },
}

/// Opens the store a URL names:
///
/// - `sqlite:///abs/path.db`: an SQLite file at an absolute path, created with its schema if missing
///   (its directory must exist);
/// - `sqlite://relative.db` (or `sqlite:relative.db`): a path relative to the working directory;
/// - `sqlite::memory:`: an in-memory database, gone with the process (tests, `remora demo`);
/// - `etcd://…`: [`StoreError::Unsupported`] until the etcd store lands.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    match parse_url(url)? {
        Location::Memory => Ok(Box::new(sqlite::SqliteStore::open_memory()?)),
        Location::File(path) => Ok(Box::new(sqlite::SqliteStore::open_file(&path)?)),
    }
}

/// Where a store URL points.
#[derive(Debug, PartialEq)]
enum Location {
    Memory,
    File(PathBuf),
}

fn parse_url(url: &str) -> Result<Location, StoreError> {
    let invalid = |reason| StoreError::InvalidUrl { url: url.to_owned(), reason };
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(invalid("expected sqlite:///path/to/file.db, sqlite://relative.db or sqlite::memory:"));
    };
    match scheme {
        "sqlite" => {}
        "etcd" => return Err(StoreError::Unsupported("the etcd store comes later".to_owned())),
        _ => return Err(invalid("the scheme must be sqlite (sqlite:///path/to/file.db or sqlite::memory:)")),
    }
    if rest == ":memory:" {
        return Ok(Location::Memory);
    }
    // `sqlite:///abs` keeps the third slash as the root; `sqlite://rel` and `sqlite:rel` are relative.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(invalid("no file path after sqlite://"));
    }
    if path.contains('?') || path.contains('#') {
        return Err(invalid("query strings and fragments are not supported"));
    }
    Ok(Location::File(PathBuf::from(path)))
}

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_name_their_location() {
        assert_eq!(parse_url("sqlite::memory:").unwrap(), Location::Memory);
        assert_eq!(
            parse_url("sqlite:///var/lib/remora/control.db").unwrap(),
            Location::File(PathBuf::from("/var/lib/remora/control.db"))
        );
        assert_eq!(parse_url("sqlite://control.db").unwrap(), Location::File(PathBuf::from("control.db")));
        assert_eq!(parse_url("sqlite://data/control.db").unwrap(), Location::File("data/control.db".into()));
        assert_eq!(parse_url("sqlite:control.db").unwrap(), Location::File(PathBuf::from("control.db")));
    }

    #[test]
    fn etcd_is_unsupported_for_now() {
        let error = open("etcd://127.0.0.1:2379/remora").err().unwrap();
        assert!(matches!(&error, StoreError::Unsupported(why) if why.contains("etcd")), "{error}");
    }

    #[test]
    fn malformed_urls_are_refused_with_the_url() {
        for url in [
            "",
            "control.db",
            "/abs/control.db",
            "postgres://db/remora",
            "sqlite://",
            "sqlite:",
            "sqlite:///x.db?mode=ro",
        ] {
            match open(url) {
                Err(error @ StoreError::InvalidUrl { .. }) => {
                    assert!(error.to_string().contains(&format!("{url:?}")), "{error}")
                }
                Err(other) => panic!("{url:?}: expected InvalidUrl, got {other}"),
                Ok(_) => panic!("{url:?}: opened"),
            }
        }
    }

    #[test]
    fn missing_directory_is_an_open_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("control.db");
        let error = open(&format!("sqlite://{}", path.display())).err().unwrap();
        assert!(matches!(error, StoreError::Open { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn each_memory_store_is_its_own() {
        let first = open("sqlite::memory:").unwrap();
        let second = open("sqlite::memory:").unwrap();
        let entry = NewJournal {
            unix_ms: 1,
            trace_id: "t".into(),
            kind: "note".into(),
            node: None,
            detail: serde_json::json!({}),
        };
        assert_eq!(first.append(&entry).unwrap(), 1);
        assert_eq!(first.append(&entry).unwrap(), 2);
        assert_eq!(second.append(&entry).unwrap(), 1);
    }
}
