-- Schema version 2: each node's healing ladder (control/src/healing.rs), written when it changes, so
-- that a restarted control knows which nodes are held, cooling down or counting breaches.
CREATE TABLE ladders (
    node            TEXT PRIMARY KEY NOT NULL,
    state           TEXT NOT NULL CHECK (json_valid(state)),
    updated_unix_ms INTEGER NOT NULL CHECK (updated_unix_ms >= 0)
) STRICT, WITHOUT ROWID;
