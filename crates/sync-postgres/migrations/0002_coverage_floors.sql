-- Starkeep sync engine, PostgreSQL schema version 2: monotone coverage (decision 0008).
--
-- Per stream and origin node, the highest version of that node that a newer version of the
-- same item replaced (tombstones included), raised in the transaction of the apply that
-- replaced it. Coverage is, per origin node, the maximum of this floor and the highest
-- version stored, so it does not go down when another node's write replaces an origin's
-- newest version; it goes down only when data is lost (a wipe or a restore loses or rolls
-- back this table with the items).
--
-- A stream is the shared records (`app_id = ''` and `table_name = ''`: no registered app id
-- is empty) or one table of one app. One row per (stream, origin node): a small table, read
-- per stream by its primary key next to the coverage index walk. Databases migrated from
-- version 1 start without floors (coverage as before until the next replacement). Version
-- columns are `COLLATE "C"` like every other version column.
CREATE TABLE coverage_floors (
    app_id     TEXT COLLATE "C" NOT NULL,
    table_name TEXT COLLATE "C" NOT NULL,
    node_id    TEXT COLLATE "C" NOT NULL,
    hlc        TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (app_id, table_name, node_id)
);
