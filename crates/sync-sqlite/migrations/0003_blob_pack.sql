-- Starkeep sync engine, SQLite schema version 3: small blobs packed in the database
-- (decision 0014).
--
-- One row per small blob: landing a page of them is one transaction instead of a file each,
-- and a blob written here is durable whenever a later commit of this database (the round's
-- state commit) is, so it needs no filesystem sync of its own. Larger blobs stay files.
--
-- Object keys of blobs are content hashes, so they arrive in random order. Rows are kept in
-- insertion order (`id`), which appends, and found through an index on a 64-bit hash of the
-- key (`key_hash`, FNV-1a of the key's bytes as a signed integer): a page of 1000 blobs then
-- writes a few dozen pages of rows and of a small index, where a table keyed by the key text
-- (as the rows themselves) rewrites about one B-tree page per blob (measured: 6 against
-- 35 ms a page on ext4). The key is unique; the hash is not (lookups compare the key), and
-- the single writer connection keeps the key unique. `sha256` is the digest of `bytes`
-- computed by the writer (the blob's ETag); `stored_at` is milliseconds since the Unix epoch.
CREATE TABLE blob_pack (
    id        INTEGER PRIMARY KEY,
    key_hash  INTEGER NOT NULL,
    key       TEXT    NOT NULL,
    sha256    BLOB    NOT NULL,
    stored_at INTEGER NOT NULL,
    bytes     BLOB    NOT NULL
);
CREATE INDEX blob_pack_key_hash ON blob_pack (key_hash);
