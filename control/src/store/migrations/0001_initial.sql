-- Schema version 1: the event/node map, desired state, proxy acks, the journal and rollouts.
-- JSON columns hold shapes owned by remora-config; SQLite only checks that they are JSON.

-- Marks the file as a Remora store, so that opening some other application's database is refused.
PRAGMA application_id = 1382370671; -- 0x52654d6f, "ReMo"

CREATE TABLE nodes (
    name               TEXT PRIMARY KEY NOT NULL,
    version            TEXT NOT NULL,
    spec               TEXT NOT NULL CHECK (json_valid(spec)),
    status             TEXT NOT NULL,
    registered_unix_ms INTEGER NOT NULL CHECK (registered_unix_ms >= 0),
    updated_unix_ms    INTEGER NOT NULL CHECK (updated_unix_ms >= 0)
) STRICT;

-- The latest desired state per node; the journal keeps what came before.
CREATE TABLE desired (
    node     TEXT PRIMARY KEY NOT NULL,
    revision INTEGER NOT NULL CHECK (revision > 0),
    routes   TEXT NOT NULL CHECK (json_valid(routes)),
    unix_ms  INTEGER NOT NULL CHECK (unix_ms >= 0)
) STRICT;

CREATE TABLE proxies (
    node              TEXT NOT NULL,
    proxy             TEXT NOT NULL,
    applied_revision  INTEGER CHECK (applied_revision > 0),
    last_seen_unix_ms INTEGER NOT NULL CHECK (last_seen_unix_ms >= 0),
    PRIMARY KEY (node, proxy)
) STRICT, WITHOUT ROWID;

-- AUTOINCREMENT: a sequence number is never handed out twice, even if the newest rows were deleted.
CREATE TABLE journal (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    unix_ms  INTEGER NOT NULL CHECK (unix_ms >= 0),
    trace_id TEXT NOT NULL,
    kind     TEXT NOT NULL,
    node     TEXT,
    detail   TEXT NOT NULL CHECK (json_valid(detail))
) STRICT;

CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY NOT NULL,
    node            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (json_valid(state)),
    updated_unix_ms INTEGER NOT NULL CHECK (updated_unix_ms >= 0)
) STRICT;
