//! [`BlobPack`] on PostgreSQL: small blobs as rows of `blob_pack` (decision 0014).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::{postgres::PgRow, Row};
use sync_core::{BlobPack, PackListing, PackedBlob, PackedMeta, StoreError};

use crate::{
    error::{corrupt, db_error, to_u64},
    PostgresStore,
};

const GET: &str = "SELECT key, sha256, stored_at, bytes FROM blob_pack WHERE key = ANY($1)";
const HEAD: &str =
    "SELECT key, sha256, stored_at, octet_length(bytes)::BIGINT AS size FROM blob_pack WHERE key = $1";
const PUT_KEEP: &str = "INSERT INTO blob_pack (key, sha256, stored_at, bytes) \
                        SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[], $4::BYTEA[]) \
                        ON CONFLICT (key) DO NOTHING RETURNING key";
const PUT_REPLACE: &str = "INSERT INTO blob_pack (key, sha256, stored_at, bytes) \
                           SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[], $4::BYTEA[]) \
                           ON CONFLICT (key) DO UPDATE SET sha256 = excluded.sha256, \
                           stored_at = excluded.stored_at, bytes = excluded.bytes RETURNING key";
const REMOVE: &str = "DELETE FROM blob_pack WHERE key = $1";
/// Keys from `$1` on, after `$2`: a prefix is a contiguous key range from itself on (the
/// rows past it are cut off here, see [`BlobPack::list`]).
const LIST: &str = "SELECT key, sha256, stored_at, octet_length(bytes)::BIGINT AS size \
                    FROM blob_pack WHERE key >= $1 AND ($2::TEXT IS NULL OR key > $2) \
                    ORDER BY key LIMIT $3";

/// Small blobs in the database (or schema) of a [`PostgresStore`], shared by every server
/// that shares the database. A commit is durable when it returns (PostgreSQL's default
/// `synchronous_commit`), so a packed blob needs no sync of its own. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PostgresBlobPack {
    store: PostgresStore,
}

impl PostgresStore {
    /// The pack of small blobs kept in this database (decision 0014).
    pub fn blob_pack(&self) -> PostgresBlobPack {
        PostgresBlobPack {
            store: self.clone(),
        }
    }
}

fn digest(row: &PgRow) -> Result<[u8; 32], StoreError> {
    let bytes: &[u8] = row
        .try_get("sha256")
        .map_err(|e| corrupt("packed blob digest", e))?;
    bytes
        .try_into()
        .map_err(|_| corrupt("packed blob digest", format!("{} bytes", bytes.len())))
}

fn meta_from_row(row: &PgRow) -> Result<PackedMeta, StoreError> {
    let key: String = row.try_get("key").map_err(|e| corrupt("packed blob", e))?;
    let size: i64 = row.try_get("size").map_err(|e| corrupt("packed blob", e))?;
    let stored_at: i64 = row
        .try_get("stored_at")
        .map_err(|e| corrupt("packed blob", e))?;
    Ok(PackedMeta::new(
        key,
        to_u64("packed blob size", size)?,
        digest(row)?,
        to_u64("packed blob time", stored_at)?,
    ))
}

fn blob_from_row(row: &PgRow) -> Result<PackedBlob, StoreError> {
    let key: String = row.try_get("key").map_err(|e| corrupt("packed blob", e))?;
    let stored_at: i64 = row
        .try_get("stored_at")
        .map_err(|e| corrupt("packed blob", e))?;
    let bytes: Vec<u8> = row
        .try_get("bytes")
        .map_err(|e| corrupt("packed blob", e))?;
    Ok(PackedBlob::new(
        key,
        digest(row)?,
        to_u64("packed blob time", stored_at)?,
        bytes,
    ))
}

/// A time as the schema holds it: a time too far in the future for a signed 64-bit
/// millisecond count is stored as the largest one (it is informational).
fn stored_at(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[async_trait]
impl BlobPack for PostgresBlobPack {
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<PackedBlob>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(GET)
            .bind(keys)
            .fetch_all(&self.store.pool)
            .await
            .map_err(|e| db_error("reading packed blobs", e))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let blob = blob_from_row(row)?;
            found.insert(blob.key.clone(), blob);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn head(&self, key: &str) -> Result<Option<PackedMeta>, StoreError> {
        let row = sqlx::query(HEAD)
            .bind(key)
            .fetch_optional(&self.store.pool)
            .await
            .map_err(|e| db_error("reading a packed blob's metadata", e))?;
        row.as_ref().map(meta_from_row).transpose()
    }

    async fn put(&self, blobs: &[PackedBlob], replace: bool) -> Result<Vec<bool>, StoreError> {
        if blobs.is_empty() {
            return Ok(Vec::new());
        }
        // One statement can update a row once: with `replace`, the last blob of each key.
        let chosen: Vec<&PackedBlob> = if replace {
            let last: HashMap<&str, usize> = blobs
                .iter()
                .enumerate()
                .map(|(i, b)| (b.key.as_str(), i))
                .collect();
            let mut at: Vec<usize> = last.into_values().collect();
            at.sort_unstable();
            at.into_iter().map(|i| &blobs[i]).collect()
        } else {
            blobs.iter().collect()
        };
        let keys: Vec<&str> = chosen.iter().map(|b| b.key.as_str()).collect();
        let digests: Vec<&[u8]> = chosen.iter().map(|b| &b.sha256[..]).collect();
        let times: Vec<i64> = chosen.iter().map(|b| stored_at(b.stored_at_ms)).collect();
        let bytes: Vec<&[u8]> = chosen.iter().map(|b| b.bytes.as_slice()).collect();
        let rows = sqlx::query(if replace { PUT_REPLACE } else { PUT_KEEP })
            .bind(&keys)
            .bind(&digests)
            .bind(&times)
            .bind(&bytes)
            .fetch_all(&self.store.pool)
            .await
            .map_err(|e| db_error("packing blobs", e))?;
        if replace {
            return Ok(vec![true; blobs.len()]);
        }
        let mut stored: HashSet<String> = HashSet::with_capacity(rows.len());
        for row in &rows {
            stored.insert(row.try_get("key").map_err(|e| corrupt("packed blob", e))?);
        }
        // A key stored by this batch counts for its first blob only; later ones were kept out.
        Ok(blobs.iter().map(|b| stored.remove(&b.key)).collect())
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(REMOVE)
            .bind(key)
            .execute(&self.store.pool)
            .await
            .map_err(|e| db_error("removing a packed blob", e))?;
        Ok(done.rows_affected() > 0)
    }

    /// In key order; the cursor is the last key of the previous page.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PackListing, StoreError> {
        let limit = limit.max(1);
        let rows = sqlx::query(LIST)
            .bind(prefix)
            .bind(cursor)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.store.pool)
            .await
            .map_err(|e| db_error("listing packed blobs", e))?;
        // Keys with the prefix are one contiguous range from the prefix on: stop at its end.
        let mut blobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let meta = meta_from_row(row)?;
            if !meta.key.starts_with(prefix) {
                return Ok(PackListing::new(blobs, None));
            }
            blobs.push(meta);
        }
        let next = (rows.len() == limit)
            .then(|| blobs.last().map(|m| m.key.clone()))
            .flatten();
        Ok(PackListing::new(blobs, next))
    }
}
