//! Shared records: `shared_records`, indexed on `(node_id, hlc)`.

use async_trait::async_trait;
use sqlx::{
    postgres::{PgArguments, PgRow},
    query::Query,
    Postgres,
};
use sync_core::{Applied, RecordStore, StoreError};
use sync_hlc::{Hlc, NodeId, Watermarks};
use sync_protocol::SharedRecord;

use crate::{
    codec::{col, parse_hlc, parse_opt_hlc},
    error::{db_error, to_i64, to_u64},
    floors::{self, Raised},
    PostgresStore,
};

/// The columns a record is read from, in [`record_from_row`] order.
macro_rules! record_columns {
    () => {
        "id, kind, record_type, created_at, hlc, deleted_at, version, content_hash, \
         object_storage_key, mime_type, size_bytes, original_filename, origin_app_id, \
         parent_id, label"
    };
}

/// The first step of last-write-wins: a record not stored yet is inserted, and nothing is
/// replaced. If it exists (or a concurrent batch inserts it first: `ON CONFLICT` waits for
/// that batch and then does nothing), nothing changes and the next steps decide.
const INSERT: &str = "\
INSERT INTO shared_records (id, kind, record_type, created_at, hlc, node_id, deleted_at, \
    version, content_hash, object_storage_key, mime_type, size_bytes, original_filename, \
    origin_app_id, parent_id, label) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
ON CONFLICT (id) DO NOTHING";

/// The stored version of a record that exists, locked until the batch ends: the version it
/// reads is the latest committed one, and no other batch can replace it meanwhile, so if
/// [`UPSERT`] then replaces it, it is exactly the version whose coverage floor rises.
const LOCKED_VERSION: &str = "SELECT hlc FROM shared_records WHERE id = $1 FOR UPDATE";

/// Last-write-wins as one conditional upsert: the stored row changes only when the offered
/// version is higher (the string form orders like the timestamps, ties by node id). Under
/// concurrent writers `ON CONFLICT` locks the existing row and evaluates the condition
/// against its latest committed version, so the maximum wins whatever the interleaving
/// (here the row is already locked by [`LOCKED_VERSION`]).
const UPSERT: &str = "\
INSERT INTO shared_records (id, kind, record_type, created_at, hlc, node_id, deleted_at, \
    version, content_hash, object_storage_key, mime_type, size_bytes, original_filename, \
    origin_app_id, parent_id, label) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
ON CONFLICT (id) DO UPDATE SET \
    kind = excluded.kind, record_type = excluded.record_type, \
    created_at = excluded.created_at, hlc = excluded.hlc, node_id = excluded.node_id, \
    deleted_at = excluded.deleted_at, version = excluded.version, \
    content_hash = excluded.content_hash, object_storage_key = excluded.object_storage_key, \
    mime_type = excluded.mime_type, size_bytes = excluded.size_bytes, \
    original_filename = excluded.original_filename, origin_app_id = excluded.origin_app_id, \
    parent_id = excluded.parent_id, label = excluded.label \
WHERE excluded.hlc > shared_records.hlc";

const GET: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM shared_records WHERE id = $1"
);

/// One origin's records above a version, in version order, through the index.
pub(crate) const SCAN: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM shared_records WHERE node_id = $1 AND hlc > $2 ORDER BY hlc LIMIT $3"
);

/// Per origin node, the highest stored version, then the coverage floors of the records
/// (decision 0008); the caller takes the maximum per node. A plain `GROUP BY node_id` reads
/// the whole index (O(rows)); this walks it as a loose index scan instead: one index probe
/// to find each next origin node and one to read its maximum, so the cost is
/// O(nodes · log rows), plus one primary-key range of the small floors table. One
/// statement, so both parts read one snapshot.
pub(crate) const COVERAGE: &str = "\
WITH RECURSIVE origins (node_id) AS ( \
    SELECT MIN(node_id) FROM shared_records \
    UNION ALL \
    SELECT (SELECT MIN(s.node_id) FROM shared_records AS s WHERE s.node_id > origins.node_id) \
    FROM origins WHERE origins.node_id IS NOT NULL \
) \
SELECT (SELECT MAX(s.hlc) FROM shared_records AS s WHERE s.node_id = origins.node_id) \
FROM origins WHERE origins.node_id IS NOT NULL \
UNION ALL \
SELECT hlc FROM coverage_floors WHERE app_id = '' AND table_name = ''";

/// The highest stored version of one origin below a bound, and its floor if that is below
/// the bound too; the caller takes the maximum.
pub(crate) const COVERAGE_BELOW: &str = "\
SELECT MAX(hlc) FROM shared_records WHERE node_id = $1 AND hlc < $2 \
UNION ALL \
SELECT hlc FROM coverage_floors \
WHERE app_id = '' AND table_name = '' AND node_id = $1 AND hlc < $2";

fn record_from_row(row: &PgRow) -> Result<SharedRecord, StoreError> {
    Ok(SharedRecord {
        id: col(row, 0)?,
        kind: col(row, 1)?,
        record_type: col(row, 2)?,
        created_at: parse_hlc("record created_at", &col::<String>(row, 3)?)?,
        updated_at: parse_hlc("record version", &col::<String>(row, 4)?)?,
        deleted_at: parse_opt_hlc("record deleted_at", col(row, 5)?)?,
        version: to_u64("record version number", col(row, 6)?)?,
        content_hash: col(row, 7)?,
        object_storage_key: col(row, 8)?,
        mime_type: col(row, 9)?,
        size_bytes: to_u64("record size_bytes", col(row, 10)?)?,
        original_filename: col(row, 11)?,
        origin_app_id: col(row, 12)?,
        parent_id: col(row, 13)?,
        label: col(row, 14)?,
    })
}

/// Per origin node, the maximum of the versions a coverage query read (the highest stored
/// ones and the floors).
pub(crate) fn watermarks(tops: Vec<Option<String>>) -> Result<Watermarks, StoreError> {
    tops.into_iter()
        .flatten()
        .map(|top| parse_hlc("coverage", &top))
        .collect()
}

/// The maximum of the versions a `coverage_below` query read.
pub(crate) fn highest(tops: Vec<Option<String>>) -> Result<Option<Hlc>, StoreError> {
    let mut best: Option<Hlc> = None;
    for top in tops.into_iter().flatten() {
        best = best.max(Some(parse_hlc("coverage", &top)?));
    }
    Ok(best)
}

/// `sql` ([`INSERT`] or [`UPSERT`]) with a record's values bound.
fn bind_record<'q>(
    sql: &'q str,
    r: &'q SharedRecord,
    version: &'q str,
) -> Result<Query<'q, Postgres, PgArguments>, StoreError> {
    Ok(sqlx::query(sql)
        .bind(&r.id)
        .bind(&r.kind)
        .bind(&r.record_type)
        .bind(r.created_at.to_string())
        .bind(version)
        .bind(r.origin().as_str())
        .bind(r.deleted_at.as_ref().map(Hlc::to_string))
        .bind(to_i64("record version number", r.version)?)
        .bind(&r.content_hash)
        .bind(&r.object_storage_key)
        .bind(&r.mime_type)
        .bind(to_i64("record size_bytes", r.size_bytes)?)
        .bind(&r.original_filename)
        .bind(&r.origin_app_id)
        .bind(&r.parent_id)
        .bind(&r.label))
}

/// A scan limit as PostgreSQL takes it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// What a scan's lower bound is bound as: nothing sorts below the empty string.
pub(crate) fn sql_above(above: Option<&Hlc>) -> String {
    above.map(Hlc::to_string).unwrap_or_default()
}

/// The order to write a batch in: by key, so concurrent batches lock rows in one global
/// order and cannot deadlock. The sort is stable, so repeats of one key keep their batch
/// order and get the same outcomes as applying the batch front to back.
pub(crate) fn write_order<K: Ord>(keys: &[K]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
    order
}

#[async_trait]
impl RecordStore for PostgresStore {
    async fn coverage(&self) -> Result<Watermarks, StoreError> {
        let tops: Vec<Option<String>> = sqlx::query_scalar(COVERAGE)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading record coverage", e))?;
        watermarks(tops)
    }

    async fn coverage_below(
        &self,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        let tops: Vec<Option<String>> = sqlx::query_scalar(COVERAGE_BELOW)
            .bind(origin.as_str())
            .bind(below.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading record coverage", e))?;
        highest(tops)
    }

    async fn scan(
        &self,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<SharedRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SCAN)
            .bind(origin.as_str())
            .bind(sql_above(above))
            .bind(sql_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("scanning shared records", e))?;
        rows.iter().map(record_from_row).collect()
    }

    async fn apply(&self, records: &[SharedRecord]) -> Result<Vec<Applied>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        const DOING: &str = "applying shared records";
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        // One transaction per batch: on any error it is dropped unfinished and rolls back.
        let mut tx = self.pool.begin().await.map_err(|e| db_error(DOING, e))?;
        let mut out = vec![Applied::Kept; records.len()];
        let mut raised = Raised::default();
        for i in write_order(&ids) {
            let r = &records[i];
            let version = r.updated_at.to_string();
            // A new record: inserted, nothing replaced (one statement, the common case).
            let inserted = bind_record(INSERT, r, &version)?
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(DOING, e))?;
            if inserted.rows_affected() > 0 {
                out[i] = Applied::Written;
                continue;
            }
            // It exists: lock it and read the version it holds, then replace it if older.
            let stored: String = sqlx::query_scalar(LOCKED_VERSION)
                .bind(&r.id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error(DOING, e))?;
            out[i] = if version == stored {
                Applied::Kept
            } else if version < stored {
                Applied::Superseded
            } else {
                let done = bind_record(UPSERT, r, &version)?
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(DOING, e))?;
                if done.rows_affected() == 0 {
                    // Not expected (we hold the row's lock and compared the same strings
                    // bytewise, as `COLLATE "C"` does); the database's verdict stands.
                    Applied::Superseded
                } else {
                    raised.note(floors::RECORDS, &stored)?;
                    Applied::Written
                }
            };
        }
        raised.write(&mut tx, DOING).await?;
        tx.commit().await.map_err(|e| db_error(DOING, e))?;
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Option<SharedRecord>, StoreError> {
        let row = sqlx::query(GET)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading a shared record", e))?;
        row.as_ref().map(record_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::write_order;

    #[test]
    fn write_order_is_by_key_and_stable() {
        assert_eq!(write_order(&["b", "a", "b", "a"]), [1, 3, 0, 2]);
        assert_eq!(write_order::<&str>(&[]), Vec::<usize>::new());
    }
}
