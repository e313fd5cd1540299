-- Starkeep sync engine, SQLite schema version 1.
--
-- Versions (HLCs) are stored in their string form `%012x:%04x:<node id>`, whose byte order
-- (SQLite's BINARY collation) equals timestamp order, so `hlc > ?` and `MAX(hlc)` compare
-- versions. `node_id` repeats the origin node so that coverage and scans go through the
-- `(node_id, hlc)` indexes.

-- Shared records (the Drive channel). `hlc` is the version: `updatedAt`.
CREATE TABLE shared_records (
    id                 TEXT    NOT NULL PRIMARY KEY,
    kind               TEXT    NOT NULL,
    record_type        TEXT    NOT NULL,
    created_at         TEXT    NOT NULL,
    hlc                TEXT    NOT NULL,
    node_id            TEXT    NOT NULL,
    deleted_at         TEXT,
    version            INTEGER NOT NULL,
    content_hash       TEXT    NOT NULL,
    object_storage_key TEXT    NOT NULL,
    mime_type          TEXT,
    size_bytes         INTEGER NOT NULL,
    original_filename  TEXT,
    origin_app_id      TEXT    NOT NULL,
    parent_id          TEXT,
    label              TEXT
);
CREATE INDEX shared_records_node_hlc ON shared_records (node_id, hlc);

-- Registered app namespaces: which tables of which app sync, with their key columns.
CREATE TABLE app_namespaces (
    app_id        TEXT    NOT NULL PRIMARY KEY,
    tables_json   TEXT    NOT NULL,
    files_enabled INTEGER NOT NULL
);

-- App rows, one snapshot per (app, table, canonical primary key). `pk` is the JSON array of
-- the key values (`sync_core::row_key`); a tombstone's `where_json` names the complete key.
CREATE TABLE app_rows (
    app_id     TEXT    NOT NULL REFERENCES app_namespaces (app_id),
    table_name TEXT    NOT NULL,
    pk         TEXT    NOT NULL,
    node_id    TEXT    NOT NULL,
    hlc        TEXT    NOT NULL,
    tombstone  INTEGER NOT NULL,
    op         TEXT    NOT NULL,
    row_json   TEXT,
    where_json TEXT,
    PRIMARY KEY (app_id, table_name, pk)
);
CREATE INDEX app_rows_node_hlc ON app_rows (app_id, table_name, node_id, hlc);

-- Sync state per channel (`drive`, `app:X`): own and peer watermarks as JSON maps.
CREATE TABLE sync_state (
    channel   TEXT NOT NULL PRIMARY KEY,
    own_json  TEXT NOT NULL,
    peer_json TEXT NOT NULL
);

-- The node's clock state: a single row.
CREATE TABLE clock_state (
    id        INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    wall_time INTEGER NOT NULL,
    counter   INTEGER NOT NULL
);
