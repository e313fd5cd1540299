-- Starkeep sync engine, PostgreSQL schema version 1 (the SQLite schema, adapted).
--
-- Versions (HLCs) are stored in their string form `%012x:%04x:<node id>`, whose byte order
-- equals timestamp order. Every column compared as a version or used in a version index is
-- `COLLATE "C"` (bytewise), whatever the database's default collation: under a linguistic
-- collation such as en_US, ':' '-' '.' and '_' are ignored at the first level and the order
-- would not be version order. `node_id` repeats the origin node so that coverage and scans
-- go through the `(node_id, hlc)` indexes.

-- Shared records (the Drive channel). `hlc` is the version: `updatedAt`.
CREATE TABLE shared_records (
    id                 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind               TEXT    NOT NULL,
    record_type        TEXT    NOT NULL,
    created_at         TEXT    NOT NULL,
    hlc                TEXT COLLATE "C" NOT NULL,
    node_id            TEXT COLLATE "C" NOT NULL,
    deleted_at         TEXT,
    version            BIGINT  NOT NULL,
    content_hash       TEXT    NOT NULL,
    object_storage_key TEXT    NOT NULL,
    mime_type          TEXT,
    size_bytes         BIGINT  NOT NULL,
    original_filename  TEXT,
    origin_app_id      TEXT    NOT NULL,
    parent_id          TEXT,
    label              TEXT
);
CREATE INDEX shared_records_node_hlc ON shared_records (node_id, hlc);

-- Registered app namespaces: which tables of which app sync, with their key columns.
CREATE TABLE app_namespaces (
    app_id        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tables_json   TEXT    NOT NULL,
    files_enabled BOOLEAN NOT NULL
);

-- App rows, one snapshot per (app, table, canonical primary key). `pk` is the JSON array of
-- the key values (`sync_core::row_key`); a tombstone's `where_json` names the complete key.
-- Row values are kept as text, not jsonb, so their column order survives.
CREATE TABLE app_rows (
    app_id     TEXT COLLATE "C" NOT NULL REFERENCES app_namespaces (app_id),
    table_name TEXT COLLATE "C" NOT NULL,
    pk         TEXT COLLATE "C" NOT NULL,
    node_id    TEXT COLLATE "C" NOT NULL,
    hlc        TEXT COLLATE "C" NOT NULL,
    tombstone  BOOLEAN NOT NULL,
    op         TEXT    NOT NULL,
    row_json   TEXT,
    where_json TEXT,
    PRIMARY KEY (app_id, table_name, pk)
);
CREATE INDEX app_rows_node_hlc ON app_rows (app_id, table_name, node_id, hlc);

-- Sync state per channel (`drive`, `app:X`): own and peer watermarks as JSON maps.
CREATE TABLE sync_state (
    channel   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    own_json  TEXT NOT NULL,
    peer_json TEXT NOT NULL
);

-- The node's clock state: a single row.
CREATE TABLE clock_state (
    id        SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    wall_time BIGINT   NOT NULL,
    counter   INTEGER  NOT NULL
);
