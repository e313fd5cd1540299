-- Starkeep sync engine, PostgreSQL schema version 3: small blobs packed in the database
-- (decision 0014).
--
-- One row per small blob, by object key (bytewise, as object keys compare): landing a page of
-- them is one transaction instead of one object each, and several servers sharing this
-- database share the pack. `sha256` is the digest of `bytes` computed by the writer (the
-- blob's ETag); `stored_at` is milliseconds since the Unix epoch. Larger blobs stay objects
-- in the bucket.
CREATE TABLE blob_pack (
    key       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    sha256    BYTEA  NOT NULL,
    stored_at BIGINT NOT NULL,
    bytes     BYTEA  NOT NULL
);
