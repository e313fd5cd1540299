//! [`BlobPack`] on SQLite: small blobs as rows of `blob_pack` (decision 0014), appended in
//! insertion order and found through a hash of their key (see the migration for why).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{sqlite::SqliteRow, Row};
use sync_core::{BlobPack, PackListing, PackedBlob, PackedMeta, StoreError};

use crate::{
    batch,
    error::{corrupt, db_error, to_u64},
    SqliteStore,
};

/// Rows per multi-row `INSERT` (5 parameters each).
const PUT_ROWS: usize = 64;

const GET: &str = "SELECT key, sha256, stored_at, bytes FROM blob_pack \
                   WHERE key_hash IN (SELECT value FROM json_each(?))";
const HELD: &str =
    "SELECT id, key FROM blob_pack WHERE key_hash IN (SELECT value FROM json_each(?))";
const HEAD: &str = "SELECT key, sha256, stored_at, length(bytes) AS size FROM blob_pack \
                    WHERE key_hash = ? AND key = ?";
const PUT_HEAD: &str = "INSERT INTO blob_pack (key_hash, key, sha256, stored_at, bytes)";
const REPLACE: &str = "UPDATE blob_pack SET sha256 = ?, stored_at = ?, bytes = ? WHERE id = ?";
const REMOVE: &str = "DELETE FROM blob_pack WHERE key_hash = ? AND key = ?";
/// A page of the listing: rows in insertion order after the cursor, those of the prefix.
const LIST: &str = "SELECT id, key, sha256, stored_at, length(bytes) AS size FROM blob_pack \
                    WHERE id > ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3) \
                    ORDER BY id LIMIT ?4";

/// Small blobs in the same database as the store's records and sync state, so a state commit
/// that survives a crash implies the blobs written before it survived (WAL commits are
/// durable in order). Cheap to clone: clones share the store's connections.
///
/// ```
/// use sync_core::{BlobPack, PackedBlob};
/// use sync_sqlite::SqliteStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open_in_memory().await?;
/// let pack = store.blob_pack();
/// let blob = PackedBlob::new("shared/n/1", [7; 32], 1_700_000_000_000, b"hello".to_vec());
/// assert_eq!(pack.put(&[blob.clone()], false).await?, vec![true]);
/// assert_eq!(pack.get(&["shared/n/1".into()]).await?, vec![Some(blob)]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteBlobPack {
    store: SqliteStore,
}

impl SqliteStore {
    /// The pack of small blobs kept in this database (decision 0014).
    pub fn blob_pack(&self) -> SqliteBlobPack {
        SqliteBlobPack {
            store: self.clone(),
        }
    }
}

/// The index hash of a key: FNV-1a (64-bit) of its bytes, as SQLite's signed integer. Stable
/// across releases: it is stored.
pub(crate) fn key_hash(key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A JSON array of the keys' hashes, bound as one parameter and read with `json_each`.
fn hash_list<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let hashes: Vec<String> = keys.map(|k| key_hash(k).to_string()).collect();
    format!("[{}]", hashes.join(","))
}

fn digest(row: &SqliteRow) -> Result<[u8; 32], StoreError> {
    let bytes: &[u8] = row
        .try_get("sha256")
        .map_err(|e| corrupt("packed blob digest", e))?;
    bytes
        .try_into()
        .map_err(|_| corrupt("packed blob digest", format!("{} bytes", bytes.len())))
}

fn meta_from_row(row: &SqliteRow) -> Result<PackedMeta, StoreError> {
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

fn blob_from_row(row: &SqliteRow) -> Result<PackedBlob, StoreError> {
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

/// The first key after every key that starts with `prefix` (`None`: no such bound, the
/// prefix is empty or ends in non-ASCII bytes), for a prefix as a key range.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            // Only an ASCII byte is raised, so the bound stays valid UTF-8.
            return String::from_utf8(bytes).ok();
        }
        if last >= 0x80 {
            // Part of a multi-byte character: no simple bound; the caller filters.
            return None;
        }
    }
    None
}

#[async_trait]
impl BlobPack for SqliteBlobPack {
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<PackedBlob>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(GET)
            .bind(hash_list(keys.iter().map(String::as_str)))
            .fetch_all(&self.store.pool)
            .await
            .map_err(|e| db_error("reading packed blobs", e))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let blob = blob_from_row(row)?;
            found.insert(blob.key.clone(), blob);
        }
        // A row of another key with the same hash is not asked for and stays out.
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn head(&self, key: &str) -> Result<Option<PackedMeta>, StoreError> {
        let row = sqlx::query(HEAD)
            .bind(key_hash(key))
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
        const DOING: &str = "packing blobs";
        // Under the write lock, what is held is what the inserts see: the key stays unique.
        let mut tx = self.store.begin_write(DOING).await?;
        let held: Vec<(i64, String)> = sqlx::query_as(HELD)
            .bind(hash_list(blobs.iter().map(|b| b.key.as_str())))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(DOING, e))?;
        let held: HashMap<String, i64> = held.into_iter().map(|(id, key)| (key, id)).collect();
        // Per key, the blob that ends up stored: the first new one, or with `replace` the
        // last one; and whether each blob was stored.
        let mut inserts: HashMap<&str, usize> = HashMap::new();
        let mut updates: HashMap<i64, usize> = HashMap::new();
        let mut stored = Vec::with_capacity(blobs.len());
        for (i, b) in blobs.iter().enumerate() {
            let key = b.key.as_str();
            match (held.get(key), inserts.contains_key(key)) {
                (Some(&id), _) if replace => {
                    updates.insert(id, i);
                }
                (None, true) if replace => {
                    inserts.insert(key, i);
                }
                (None, false) => {
                    inserts.insert(key, i);
                }
                _ => {
                    stored.push(false);
                    continue;
                }
            }
            stored.push(true);
        }
        let mut new: Vec<usize> = inserts.into_values().collect();
        new.sort_unstable();
        for chunk in batch::chunks(new.len(), PUT_ROWS) {
            let sql = batch::values_sql(PUT_HEAD, 5, chunk.len(), "");
            let mut query = sqlx::query(&sql);
            for &i in &new[chunk] {
                let b = &blobs[i];
                query = query
                    .bind(key_hash(&b.key))
                    .bind(&b.key)
                    .bind(&b.sha256[..])
                    .bind(stored_at(b.stored_at_ms))
                    .bind(&b.bytes);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(DOING, e))?;
        }
        for (id, i) in updates {
            let b = &blobs[i];
            sqlx::query(REPLACE)
                .bind(&b.sha256[..])
                .bind(stored_at(b.stored_at_ms))
                .bind(&b.bytes)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(DOING, e))?;
        }
        tx.commit().await.map_err(|e| db_error(DOING, e))?;
        Ok(stored)
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(REMOVE)
            .bind(key_hash(key))
            .bind(key)
            .execute(&self.store.writer)
            .await
            .map_err(|e| db_error("removing a packed blob", e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PackListing, StoreError> {
        let after: i64 = match cursor {
            Some(c) => c
                .parse()
                .map_err(|_| StoreError::Invalid(format!("not a pack listing cursor: {c:?}")))?,
            None => 0,
        };
        let rows = sqlx::query(LIST)
            .bind(after)
            .bind(prefix)
            .bind(prefix_end(prefix))
            .bind(i64::try_from(limit.max(1)).unwrap_or(i64::MAX))
            .fetch_all(&self.store.pool)
            .await
            .map_err(|e| db_error("listing packed blobs", e))?;
        let mut blobs = Vec::with_capacity(rows.len());
        let mut last = after;
        for row in &rows {
            last = row.try_get("id").map_err(|e| corrupt("packed blob", e))?;
            let meta = meta_from_row(row)?;
            // Without an upper bound (a prefix ending in a non-ASCII character) the range
            // runs past the prefix.
            if meta.key.starts_with(prefix) {
                blobs.push(meta);
            }
        }
        let next = (rows.len() >= limit.max(1)).then(|| last.to_string());
        Ok(PackListing::new(blobs, next))
    }
}

#[cfg(test)]
mod tests {
    use super::{key_hash, prefix_end};

    #[test]
    fn a_prefix_becomes_a_key_range() {
        assert_eq!(prefix_end("shared/"), Some("shared0".into()));
        assert_eq!(prefix_end("apps/x"), Some("apps/y".into()));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{7f}"), Some("b".into()));
        assert_eq!(prefix_end("é"), None);
        assert_eq!(prefix_end("aé"), None);
    }

    #[test]
    fn the_key_hash_is_fnv_1a() {
        // Published FNV-1a 64 test vectors: the hash is stored, so it must never change.
        assert_eq!(key_hash("") as u64, 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash("a") as u64, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_hash("foobar") as u64, 0x8594_4171_f739_67e8);
    }
}
