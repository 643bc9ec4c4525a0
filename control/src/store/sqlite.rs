//! The default [`Store`]: one SQLite file (rusqlite, SQLite compiled in).
//!
//! **Durability.** The file is in WAL mode with `synchronous = FULL`. A transaction is committed when
//! its frames are in the write-ahead log; with `NORMAL` that write reaches the OS page cache but is
//! synced only at checkpoints, which survives `kill -9` of the process (the kernel still holds the
//! pages) but can lose the last transactions when the machine loses power. `FULL` syncs the log at every
//! commit, so an acknowledged write also survives power loss. That matters here: a desired state lost
//! after proxies applied it would let the control process hand out the same revision again with other
//! routes, and a proxy that already holds that revision would ignore them. The price is one fsync per
//! write: measured on the project's 2-core VM (ext4 on a virtual disk, other builds running), a journal
//! append took 0.25 to 3 ms with FULL against 25 to 65 µs with NORMAL, and `put_desired` a p99 of 8 ms
//! against 0.2 ms. The control plane writes on registrations, decisions, rollout steps and proxy acks
//! (not on every 1 s report), so that is affordable; if acks from many proxies ever queue, they can be
//! batched into one transaction.
//!
//! **One connection behind a mutex.** SQLite runs one write transaction at a time whatever the number
//! of connections, and the control plane's load is tens of small writes and point reads a second, each
//! taking microseconds besides the fsync. A pool would only let reads overlap a write's fsync; if the
//! dashboard's reads ever queue behind writes, a second, read-only connection can be added here without
//! touching the trait.
//!
//! **Schema.** `PRAGMA user_version` is the schema version; [`MIGRATIONS`] are applied at open, each in
//! its own transaction. A file with a newer version than this binary knows is refused, not guessed at.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, Row, Transaction, TransactionBehavior};
use serde_json::Value;

use super::{
    DesiredRecord, DesiredWritten, JournalRecord, LadderRecord, NewJournal, NodeRecord, ProxyRecord,
    RolloutRecord, Store, StoreError,
};

/// The schema: `MIGRATIONS[i]` takes a store from version `i` to `i + 1`. Append only: a released
/// migration is never edited, since stores out there already ran it.
const MIGRATIONS: &[&str] =
    &[include_str!("migrations/0001_initial.sql"), include_str!("migrations/0002_ladders.sql")];

/// `PRAGMA application_id` of a Remora store ("ReMo"), set by the first migration.
const APPLICATION_ID: i32 = 0x5265_4d6f;

/// How long a write waits for a lock held by another connection to the same file (an operator's
/// `sqlite3` shell, a second control process by mistake) before failing with [`StoreError::Backend`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An SQLite store: a file, or memory for tests and demos.
pub(super) struct SqliteStore {
    /// Every write, and the reads of an in-memory store.
    conn: Mutex<Connection>,
    /// A file store's reads: WAL lets them go on beside a write, so a slow fsync (seconds, on a disk
    /// busy with other writers) holds up no reader (the API, the proxies' long-polls).
    reader: Option<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the store in the file at `path` and brings its schema up to date.
    /// The file's directory must exist and be writable: WAL keeps `-wal` and `-shm` files beside it.
    pub(super) fn open_file(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        // No SQLITE_OPEN_URI: a path is a path. NO_MUTEX: the connection is only used under `conn`.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(&location, e))?;
        let mut store = Self::set_up(conn, &location, MIGRATIONS)?;
        // Opened after the writer has set up WAL and the schema.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(&location, e))?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(&location, e))?;
        store.reader = Some(Mutex::new(reader));
        Ok(store)
    }

    /// A store in memory: the same schema and behaviour, gone with the process.
    pub(super) fn open_memory() -> Result<Self, StoreError> {
        let location = ":memory:";
        let conn = Connection::open_in_memory().map_err(|e| open_error(location, e))?;
        Self::set_up(conn, location, MIGRATIONS)
    }

    fn set_up(mut conn: Connection, location: &str, migrations: &[&str]) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(location, e))?;
        // Look before writing anything: a file that is not a database fails here, and a database of
        // another application or of a newer Remora is refused untouched.
        let (application_id, version) = header(&conn).map_err(|e| open_error(location, e))?;
        let known = schema_version(migrations);
        if application_id != APPLICATION_ID && (application_id != 0 || version != 0 || has_tables(&conn)?) {
            return Err(StoreError::Foreign { location: location.to_owned(), found: application_id });
        }
        if version > known {
            return Err(StoreError::NewerSchema { location: location.to_owned(), found: version, known });
        }
        // In-memory databases keep their own journal mode ("memory"); WAL is for files.
        if location != ":memory:" {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .map_err(|e| open_error(location, e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Open {
                    location: location.to_owned(),
                    source: format!("SQLite kept journal_mode {mode} instead of WAL").into(),
                });
            }
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| open_error(location, e))?;
        migrate(&mut conn, location, migrations)?;
        tracing::debug!(store = %location, schema = known, "store open");
        Ok(SqliteStore { conn: Mutex::new(conn), reader: None })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held dropped that Transaction, which rolled it back: the
        // connection is as good as before, so a poisoned lock is not a reason to stop.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one write transaction: committed if it returns `Ok`, rolled back otherwise.
    /// IMMEDIATE takes the write lock up front, so a transaction never fails half-way for want of it.
    fn write<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let run = |conn: &mut Connection| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut conn).map_err(|failure: Failure| failure.during(operation))
    }

    /// Runs `f`, a single SELECT (and so one implicit transaction), on the connection.
    fn read<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let result = match &self.reader {
            Some(reader) => f(&reader.lock().unwrap_or_else(PoisonError::into_inner)),
            None => f(&self.lock()),
        };
        result.map_err(|failure| failure.during(operation))
    }

    #[cfg(test)]
    fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.lock())
    }
}

impl Store for SqliteStore {
    fn upsert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.write("upsert_node", |tx| upsert_node(tx, node))
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.read("node", |conn| {
            let mut stmt = conn.prepare(&format!("{SELECT_NODE} WHERE name = ?1"))?;
            let mut rows = stmt.query([name])?;
            rows.next()?.map(node_from_row).transpose()
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read("nodes", |conn| {
            let mut stmt = conn.prepare(&format!("{SELECT_NODE} ORDER BY name"))?;
            collect(&mut stmt, [], node_from_row)
        })
    }

    fn set_status(&self, name: &str, status: &str, unix_ms: u64) -> Result<(), StoreError> {
        self.write("set_status", |tx| {
            let changed = tx.execute(
                "UPDATE nodes SET status = ?2, updated_unix_ms = ?3 WHERE name = ?1",
                params![name, status, int("unix_ms", unix_ms)?],
            )?;
            if changed == 0 {
                return Err(StoreError::UnknownNode(name.to_owned()).into());
            }
            Ok(())
        })
    }

    fn desired(&self, node: &str) -> Result<Option<DesiredRecord>, StoreError> {
        self.read("desired", |conn| {
            let mut stmt =
                conn.prepare("SELECT node, revision, routes, unix_ms FROM desired WHERE node = ?1")?;
            let mut rows = stmt.query([node])?;
            rows.next()?.map(desired_from_row).transpose()
        })
    }

    fn put_desired(
        &self,
        node: &str,
        routes: &Value,
        journal: &NewJournal,
    ) -> Result<DesiredWritten, StoreError> {
        self.write("put_desired", |tx| {
            let stored: i64 = tx.query_row(
                "INSERT INTO desired (node, revision, routes, unix_ms) VALUES (?1, 1, ?2, ?3)
                 ON CONFLICT (node) DO UPDATE SET
                     revision = desired.revision + 1, routes = excluded.routes, unix_ms = excluded.unix_ms
                 RETURNING revision",
                params![node, routes.to_string(), int("unix_ms", journal.unix_ms)?],
                |row| row.get(0),
            )?;
            let revision = uint(|| format!("desired revision of {node:?}"), stored)?;
            let mut detail = journal.detail.clone();
            if let Value::Object(fields) = &mut detail {
                fields.insert("revision".to_owned(), revision.into());
            }
            let seq = append(tx, journal, &detail)?;
            Ok(DesiredWritten { revision, seq })
        })
    }

    fn set_applied(&self, node: &str, proxy: &str, revision: u64, unix_ms: u64) -> Result<(), StoreError> {
        self.write("set_applied", |tx| {
            tx.execute(
                "INSERT INTO proxies (node, proxy, applied_revision, last_seen_unix_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (node, proxy) DO UPDATE SET
                     applied_revision = excluded.applied_revision,
                     last_seen_unix_ms = excluded.last_seen_unix_ms",
                params![node, proxy, int("revision", revision)?, int("unix_ms", unix_ms)?],
            )?;
            Ok(())
        })
    }

    fn proxies(&self, node: &str) -> Result<Vec<ProxyRecord>, StoreError> {
        self.read("proxies", |conn| {
            let mut stmt = conn.prepare(
                "SELECT node, proxy, applied_revision, last_seen_unix_ms FROM proxies
                 WHERE node = ?1 ORDER BY proxy",
            )?;
            collect(&mut stmt, [node], proxy_from_row)
        })
    }

    fn append(&self, entry: &NewJournal) -> Result<u64, StoreError> {
        self.write("append", |tx| append(tx, entry, &entry.detail))
    }

    fn journal_head(&self) -> Result<u64, StoreError> {
        self.read("journal_head", |conn| {
            let head: Option<i64> = conn.query_row("SELECT MAX(seq) FROM journal", [], |row| row.get(0))?;
            Ok(uint(|| "journal sequence number".to_owned(), head.unwrap_or(0))?)
        })
    }

    fn journal_after(&self, seq: u64, limit: usize) -> Result<Vec<JournalRecord>, StoreError> {
        // Past i64::MAX there is nothing (sequence numbers are SQLite rowids), and a page can't be
        // larger than the table, so both clamp instead of failing.
        let after = i64::try_from(seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("journal_after", |conn| {
            let mut stmt = conn.prepare(
                "SELECT seq, unix_ms, trace_id, kind, node, detail FROM journal
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            collect(&mut stmt, params![after, limit], journal_from_row)
        })
    }

    fn put_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError> {
        self.write("put_rollout", |tx| {
            tx.execute(
                "INSERT INTO rollouts (id, node, state, updated_unix_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET
                     node = excluded.node, state = excluded.state, updated_unix_ms = excluded.updated_unix_ms",
                params![
                    rollout.id,
                    rollout.node,
                    rollout.state.to_string(),
                    int("updated_unix_ms", rollout.updated_unix_ms)?
                ],
            )?;
            Ok(())
        })
    }

    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.read("rollouts", |conn| {
            let mut stmt =
                conn.prepare("SELECT id, node, state, updated_unix_ms FROM rollouts ORDER BY id")?;
            collect(&mut stmt, [], rollout_from_row)
        })
    }

    fn put_ladder(&self, ladder: &LadderRecord) -> Result<(), StoreError> {
        self.write("put_ladder", |tx| {
            tx.execute(
                "INSERT INTO ladders (node, state, updated_unix_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (node) DO UPDATE SET state = excluded.state, updated_unix_ms = excluded.updated_unix_ms",
                params![ladder.node, ladder.state.to_string(), int("updated_unix_ms", ladder.updated_unix_ms)?],
            )?;
            Ok(())
        })
    }

    fn ladders(&self) -> Result<Vec<LadderRecord>, StoreError> {
        self.read("ladders", |conn| {
            let mut stmt = conn.prepare("SELECT node, state, updated_unix_ms FROM ladders ORDER BY node")?;
            collect(&mut stmt, [], ladder_from_row)
        })
    }

    fn register(&self, node: &NodeRecord, journal: &NewJournal) -> Result<u64, StoreError> {
        self.write("register", |tx| {
            upsert_node(tx, node)?;
            append(tx, journal, &journal.detail)
        })
    }
}

/// What went wrong inside a transaction: an SQLite error (named after the operation on the way out) or
/// a store error of its own. `?` converts both, which keeps the method bodies plain.
enum Failure {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Sql(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Store(error)
    }
}

impl Failure {
    fn during(self, operation: &'static str) -> StoreError {
        match self {
            Failure::Sql(error) => StoreError::Backend { operation, source: Box::new(error) },
            Failure::Store(error) => error,
        }
    }
}

fn open_error(location: &str, error: rusqlite::Error) -> StoreError {
    StoreError::Open { location: location.to_owned(), source: Box::new(error) }
}

fn schema_version(migrations: &[&str]) -> u32 {
    u32::try_from(migrations.len()).unwrap_or(u32::MAX)
}

/// `application_id` and `user_version` from the database header.
fn header(conn: &Connection) -> rusqlite::Result<(i32, u32)> {
    let application_id = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let version = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    Ok((application_id, version))
}

fn has_tables(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table')", [], |row| row.get(0))
        .map_err(|e| StoreError::Backend { operation: "open", source: Box::new(e) })
}

/// Applies the migrations the store has not run yet, each in its own transaction together with the
/// `user_version` it reaches, so a failure leaves the store whole at the version before.
fn migrate(conn: &mut Connection, location: &str, migrations: &[&str]) -> Result<(), StoreError> {
    for (index, sql) in migrations.iter().enumerate() {
        let version = schema_version(&migrations[..=index]);
        let step = |conn: &mut Connection| -> rusqlite::Result<bool> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Read again under the write lock: another process may have migrated since we looked.
            let current: u32 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
            if current >= version {
                return Ok(false);
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            Ok(true)
        };
        let applied = step(conn).map_err(|e| StoreError::Migration {
            location: location.to_owned(),
            version,
            source: Box::new(e),
        })?;
        if applied {
            tracing::info!(store = %location, version, "store schema migrated");
        }
    }
    Ok(())
}

fn upsert_node(tx: &Transaction<'_>, node: &NodeRecord) -> Result<(), Failure> {
    tx.execute(
        "INSERT INTO nodes (name, version, spec, status, registered_unix_ms, updated_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET
             version = excluded.version, spec = excluded.spec, status = excluded.status,
             registered_unix_ms = excluded.registered_unix_ms, updated_unix_ms = excluded.updated_unix_ms",
        params![
            node.name,
            node.version,
            node.spec.to_string(),
            node.status,
            int("registered_unix_ms", node.registered_unix_ms)?,
            int("updated_unix_ms", node.updated_unix_ms)?
        ],
    )?;
    Ok(())
}

/// Appends `entry` with `detail` in its place; returns the new sequence number.
fn append(tx: &Transaction<'_>, entry: &NewJournal, detail: &Value) -> Result<u64, Failure> {
    tx.execute(
        "INSERT INTO journal (unix_ms, trace_id, kind, node, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![int("unix_ms", entry.unix_ms)?, entry.trace_id, entry.kind, entry.node, detail.to_string()],
    )?;
    Ok(uint(|| "journal sequence number".to_owned(), tx.last_insert_rowid())?)
}

const SELECT_NODE: &str =
    "SELECT name, version, spec, status, registered_unix_ms, updated_unix_ms FROM nodes";

fn node_from_row(row: &Row<'_>) -> Result<NodeRecord, Failure> {
    let name: String = row.get(0)?;
    let what = |field: &str| format!("{field} of node {name:?}");
    Ok(NodeRecord {
        version: row.get(1)?,
        spec: json(what("spec"), &row.get::<_, String>(2)?)?,
        status: row.get(3)?,
        registered_unix_ms: uint(|| what("registered_unix_ms"), row.get(4)?)?,
        updated_unix_ms: uint(|| what("updated_unix_ms"), row.get(5)?)?,
        name,
    })
}

fn desired_from_row(row: &Row<'_>) -> Result<DesiredRecord, Failure> {
    let node: String = row.get(0)?;
    let what = |field: &str| format!("desired {field} of {node:?}");
    Ok(DesiredRecord {
        revision: uint(|| what("revision"), row.get(1)?)?,
        routes: json(what("routes"), &row.get::<_, String>(2)?)?,
        unix_ms: uint(|| what("unix_ms"), row.get(3)?)?,
        node,
    })
}

fn proxy_from_row(row: &Row<'_>) -> Result<ProxyRecord, Failure> {
    let node: String = row.get(0)?;
    let proxy: String = row.get(1)?;
    let what = |field: &str| format!("{field} of proxy {proxy:?} of {node:?}");
    let applied: Option<i64> = row.get(2)?;
    Ok(ProxyRecord {
        applied_revision: applied.map(|revision| uint(|| what("applied_revision"), revision)).transpose()?,
        last_seen_unix_ms: uint(|| what("last_seen_unix_ms"), row.get(3)?)?,
        node,
        proxy,
    })
}

fn journal_from_row(row: &Row<'_>) -> Result<JournalRecord, Failure> {
    let seq: i64 = row.get(0)?;
    let what = |field: &str| format!("{field} of journal entry {seq}");
    Ok(JournalRecord {
        seq: uint(|| what("seq"), seq)?,
        unix_ms: uint(|| what("unix_ms"), row.get(1)?)?,
        trace_id: row.get(2)?,
        kind: row.get(3)?,
        node: row.get(4)?,
        detail: json(what("detail"), &row.get::<_, String>(5)?)?,
    })
}

fn rollout_from_row(row: &Row<'_>) -> Result<RolloutRecord, Failure> {
    let id: String = row.get(0)?;
    let what = |field: &str| format!("{field} of rollout {id:?}");
    Ok(RolloutRecord {
        node: row.get(1)?,
        state: json(what("state"), &row.get::<_, String>(2)?)?,
        updated_unix_ms: uint(|| what("updated_unix_ms"), row.get(3)?)?,
        id,
    })
}

fn ladder_from_row(row: &Row<'_>) -> Result<LadderRecord, Failure> {
    let node: String = row.get(0)?;
    let what = |field: &str| format!("{field} of the ladder of {node:?}");
    Ok(LadderRecord {
        state: json(what("state"), &row.get::<_, String>(1)?)?,
        updated_unix_ms: uint(|| what("updated_unix_ms"), row.get(2)?)?,
        node,
    })
}

fn collect<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>) -> Result<T, Failure>,
) -> Result<Vec<T>, Failure> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// A `u64` as an SQLite integer, refused if it does not fit.
fn int(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// A stored integer as a `u64`; the schema's CHECKs keep them non-negative, so a negative one was
/// written by hand.
fn uint(what: impl FnOnce() -> String, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt { what: what(), reason: format!("{value} is negative") })
}

fn json(what: String, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { what, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use serde_json::json;

    use super::*;

    fn entry(unix_ms: u64, kind: &str, node: Option<&str>, detail: Value) -> NewJournal {
        NewJournal {
            unix_ms,
            trace_id: format!("trace-{unix_ms}"),
            kind: kind.into(),
            node: node.map(Into::into),
            detail,
        }
    }

    fn node(name: &str, version: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            version: version.into(),
            spec: json!({}),
            status: "healthy".into(),
            registered_unix_ms: 1,
            updated_unix_ms: 1,
        }
    }

    fn temp_db() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        (dir, path)
    }

    /// Makes the journal refuse entries of kind `boom`, so a write fails after its first statement.
    fn fail_journal_kind_boom(store: &SqliteStore) {
        store.with_connection(|conn| {
            conn.execute_batch(
                "CREATE TEMP TRIGGER refuse_boom BEFORE INSERT ON main.journal WHEN NEW.kind = 'boom'
                 BEGIN SELECT RAISE(ABORT, 'injected journal failure'); END;",
            )
            .unwrap()
        });
    }

    #[test]
    fn failed_journal_append_rolls_back_the_desired_state() {
        let (_dir, path) = temp_db();
        let store = SqliteStore::open_file(&path).unwrap();
        let first = json!({"weights": {"v1": 100}});
        assert_eq!(
            store.put_desired("payments", &first, &entry(1, "desired", None, json!({}))).unwrap().revision,
            1
        );
        fail_journal_kind_boom(&store);

        let error = store
            .put_desired("payments", &json!({"weights": {"v2": 100}}), &entry(2, "boom", None, json!({})))
            .unwrap_err();
        assert!(matches!(error, StoreError::Backend { operation: "put_desired", .. }), "{error}");
        assert!(error.to_string().contains("injected journal failure"), "{error}");

        let desired = store.desired("payments").unwrap().unwrap();
        assert_eq!((desired.revision, desired.routes), (1, first));
        assert_eq!(store.journal_after(0, 10).unwrap().len(), 1);
        // The failed write took neither a revision nor a sequence number.
        assert_eq!(
            store.put_desired("payments", &json!({}), &entry(3, "desired", None, json!({}))).unwrap(),
            DesiredWritten { revision: 2, seq: 2 }
        );
        assert_eq!(store.journal_after(0, 10).unwrap().last().unwrap().seq, 2);
        assert_eq!(store.journal_head().unwrap(), 2);
    }

    #[test]
    fn failed_journal_append_rolls_back_the_registration() {
        let (_dir, path) = temp_db();
        let store = SqliteStore::open_file(&path).unwrap();
        store.register(&node("payments", "v1"), &entry(1, "registered", None, json!({}))).unwrap();
        fail_journal_kind_boom(&store);
        let error = store.register(&node("payments", "v2"), &entry(2, "boom", None, json!({}))).unwrap_err();
        assert!(matches!(error, StoreError::Backend { operation: "register", .. }), "{error}");
        assert_eq!(store.node("payments").unwrap().unwrap().version, "v1");
        assert_eq!(store.journal_after(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn reads_go_on_while_a_write_is_under_way_and_see_only_what_is_committed() {
        let (_dir, path) = temp_db();
        let store = SqliteStore::open_file(&path).unwrap();
        store.append(&entry(1, "first", None, json!({}))).unwrap();
        // Inside a write transaction (the writer's lock held, as during a slow fsync) a read still
        // answers, without the uncommitted entry.
        let seen = store
            .write("test", |tx| {
                append(tx, &entry(2, "second", None, json!({})), &json!({}))?;
                Ok(store.journal_after(0, 10).map(|entries| entries.len()))
            })
            .unwrap()
            .unwrap();
        assert_eq!(seen, 1);
        assert_eq!(store.journal_after(0, 10).unwrap().len(), 2, "committed now");
        assert_eq!(store.journal_head().unwrap(), 2);
    }

    #[test]
    fn a_file_store_is_wal_with_full_sync_at_the_current_schema() {
        let (_dir, path) = temp_db();
        let store = SqliteStore::open_file(&path).unwrap();
        store.with_connection(|conn| {
            let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
            assert_eq!(mode, "wal");
            let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0)).unwrap();
            assert_eq!(synchronous, 2, "FULL");
            let busy: i64 = conn.pragma_query_value(None, "busy_timeout", |row| row.get(0)).unwrap();
            assert_eq!(busy, 5_000);
            assert_eq!(header(conn).unwrap(), (APPLICATION_ID, schema_version(MIGRATIONS)));
        });
    }

    #[test]
    fn an_empty_file_is_migrated_to_the_current_schema() {
        let (_dir, path) = temp_db();
        std::fs::File::create(&path).unwrap();
        let store = SqliteStore::open_file(&path).unwrap();
        store.append(&entry(1, "note", None, json!({}))).unwrap();
        drop(store);
        // Reopening runs no migration again and keeps the data.
        let store = SqliteStore::open_file(&path).unwrap();
        assert_eq!(store.journal_after(0, 10).unwrap().len(), 1);
        store.with_connection(|conn| {
            assert_eq!(header(conn).unwrap().1, schema_version(MIGRATIONS));
            let tables: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(tables, ["desired", "journal", "ladders", "nodes", "proxies", "rollouts"]);
        });
    }

    #[test]
    fn a_newer_schema_is_refused_untouched() {
        let (_dir, path) = temp_db();
        drop(SqliteStore::open_file(&path).unwrap());
        let newer = schema_version(MIGRATIONS) + 1;
        Connection::open(&path).unwrap().pragma_update(None, "user_version", newer).unwrap();
        let before = std::fs::read(&path).unwrap();

        let error = SqliteStore::open_file(&path).err().unwrap();
        match &error {
            StoreError::NewerSchema { found, known, .. } => {
                assert_eq!((*found, *known), (newer, schema_version(MIGRATIONS)))
            }
            other => panic!("expected NewerSchema, got {other}"),
        }
        assert!(error.to_string().contains("newer than this binary knows"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_failed_migration_leaves_the_store_at_the_version_before() {
        let (_dir, path) = temp_db();
        let open = |migrations: &[&str]| {
            SqliteStore::set_up(Connection::open(&path).unwrap(), &path.display().to_string(), migrations)
        };
        let broken = [MIGRATIONS[0], "CREATE TABLE extra (a INTEGER); INSERT INTO no_such_table VALUES (1);"];
        let error = open(&broken).err().unwrap();
        assert!(matches!(error, StoreError::Migration { version: 2, .. }), "{error}");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(header(&conn).unwrap(), (APPLICATION_ID, 1));
        let extra: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'extra')", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert!(!extra, "the failed migration's first statement was rolled back");
        drop(conn);

        let fixed = [MIGRATIONS[0], "CREATE TABLE extra (a INTEGER);"];
        let store = open(&fixed).unwrap();
        store.with_connection(|conn| assert_eq!(header(conn).unwrap().1, 2));
    }

    #[test]
    fn a_version_1_store_gains_the_ladders_and_keeps_its_data() {
        let (_dir, path) = temp_db();
        let v1 = SqliteStore::set_up(Connection::open(&path).unwrap(), "v1", &MIGRATIONS[..1]).unwrap();
        v1.append(&entry(1, "note", None, json!({}))).unwrap();
        drop(v1);
        let store = SqliteStore::open_file(&path).unwrap();
        assert_eq!(store.journal_after(0, 10).unwrap().len(), 1);
        let ladder =
            LadderRecord { node: "payments".into(), state: json!({"phase": "held"}), updated_unix_ms: 5 };
        store.put_ladder(&ladder).unwrap();
        assert_eq!(store.ladders().unwrap(), [ladder]);
        store.with_connection(|conn| assert_eq!(header(conn).unwrap().1, 2));
    }

    #[test]
    fn another_applications_database_is_refused() {
        let (_dir, path) = temp_db();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY);").unwrap();
        drop(conn);
        let error = SqliteStore::open_file(&path).err().unwrap();
        assert!(matches!(error, StoreError::Foreign { found: 0, .. }), "{error}");

        Connection::open(&path).unwrap().pragma_update(None, "application_id", 42).unwrap();
        let error = SqliteStore::open_file(&path).err().unwrap();
        assert!(matches!(error, StoreError::Foreign { found: 42, .. }), "{error}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_open_error() {
        let (_dir, path) = temp_db();
        std::fs::write(&path, "[listener]\nbind = \"127.0.0.1:8080\"\n".repeat(100)).unwrap();
        let error = SqliteStore::open_file(&path).err().unwrap();
        assert!(matches!(error, StoreError::Open { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn a_hand_edited_row_is_reported_corrupt_not_panicked_on() {
        let (_dir, path) = temp_db();
        let store = SqliteStore::open_file(&path).unwrap();
        store.upsert_node(&node("payments", "v1")).unwrap();
        store.with_connection(|conn| {
            conn.execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE nodes SET updated_unix_ms = -5, spec = 'not json';",
            )
            .unwrap()
        });
        let error = store.node("payments").unwrap_err();
        assert!(matches!(&error, StoreError::Corrupt { what, .. } if what.contains("payments")), "{error}");
    }

    /// Set for the child of `kill9_loses_no_committed_write`: the database file it writes to.
    const KILL9_DB: &str = "REMORA_STORE_KILL9_DB";

    /// The writer: every round registers a node, puts its desired state (with its journal entry), moves
    /// a rollout and records a proxy ack, each its own transaction, then prints `committed <round>` on
    /// stdout, which is how the parent learns what it may expect after the kill.
    #[test]
    #[ignore = "the writer half of kill9_loses_no_committed_write, which runs it as a child process"]
    fn kill9_writer() {
        let Some(path) = std::env::var_os(KILL9_DB) else { return };
        let store = SqliteStore::open_file(Path::new(&path)).unwrap();
        let mut stdout = std::io::stdout().lock();
        // Bounded, in case the parent died before killing it.
        let deadline = Instant::now() + Duration::from_secs(60);
        for round in 0u64.. {
            if Instant::now() > deadline {
                break;
            }
            let name = format!("node-{}", round % 3);
            let mut record = node(&name, &format!("v{round}"));
            record.spec = json!({"round": round});
            store
                .register(&record, &entry(round, "registered", Some(&name), json!({"round": round})))
                .unwrap();
            let revision = store
                .put_desired(
                    &name,
                    &json!({"round": round}),
                    &entry(round, "desired", Some(&name), json!({})),
                )
                .unwrap()
                .revision;
            let rollout = RolloutRecord {
                id: format!("rollout-{name}"),
                node: name.clone(),
                state: json!({"round": round}),
                updated_unix_ms: round,
            };
            store.put_rollout(&rollout).unwrap();
            store.set_applied(&name, "proxy-1", revision, round).unwrap();
            writeln!(stdout, "committed {round}").unwrap();
            stdout.flush().unwrap();
        }
    }

    #[test]
    fn kill9_loses_no_committed_write() {
        let (_dir, path) = temp_db();
        let test_name = format!("{}::kill9_writer", module_path!().split_once("::").unwrap().1);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test_name.as_str(), "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(KILL9_DB, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let committed =
            |line: &str| line.strip_prefix("committed ").map(|round| round.parse::<u64>().unwrap());

        let mut last = None;
        for line in lines.by_ref() {
            if let Some(round) = committed(&line.unwrap()) {
                last = Some(round);
                if round == 99 {
                    break;
                }
            }
        }
        assert_eq!(last, Some(99), "the writer stopped early; its stderr is above");
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
        // Lines printed before the kill are commits too.
        for line in lines {
            if let Some(round) = committed(&line.unwrap()) {
                last = Some(round);
            }
        }
        let last = last.unwrap();

        let store = SqliteStore::open_file(&path).unwrap();
        let integrity: String = store
            .with_connection(|conn| conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap());
        assert_eq!(integrity, "ok");

        // The journal: contiguous sequence numbers, and both entries of every committed round.
        let journal = store.journal_after(0, usize::MAX).unwrap();
        assert_eq!(
            journal.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=journal.len() as u64).collect::<Vec<_>>()
        );
        let rounds = |kind: &str| -> Vec<u64> {
            journal.iter().filter(|e| e.kind == kind).map(|e| e.unix_ms).take_while(|r| *r <= last).collect()
        };
        assert_eq!(rounds("registered"), (0..=last).collect::<Vec<_>>());
        assert_eq!(rounds("desired"), (0..=last).collect::<Vec<_>>());

        // The map, desired state, rollouts and acks: each node at least at its last committed round.
        for slot in 0..3 {
            let name = format!("node-{slot}");
            let Some(newest) = (0..=last).rev().find(|round| round % 3 == slot) else { continue };
            let at_least = |value: &Value, what: &str| {
                let round = value["round"].as_u64().unwrap();
                assert!(round >= newest, "{name}'s {what} is at round {round}, committed {newest}");
            };
            let node = store.node(&name).unwrap().unwrap();
            at_least(&node.spec, "spec");
            let desired = store.desired(&name).unwrap().unwrap();
            at_least(&desired.routes, "desired state");
            assert!(
                desired.revision > newest / 3,
                "{name}'s revision {} at round {newest}",
                desired.revision
            );
            let rollout = store.rollouts().unwrap().into_iter().find(|r| r.node == name).unwrap();
            at_least(&rollout.state, "rollout");
            let proxy = &store.proxies(&name).unwrap()[0];
            assert!(proxy.last_seen_unix_ms >= newest);
        }
        // And it goes on from there.
        let next = store.append(&entry(0, "restarted", None, json!({}))).unwrap();
        assert_eq!(next, journal.len() as u64 + 1);
    }
}
