//! Shared records: `shared_records`, indexed on `(node_id, hlc)`.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sync_core::{Applied, RecordStore, StoreError};
use sync_hlc::{Hlc, NodeId, Watermarks};
use sync_protocol::SharedRecord;

use crate::{
    batch,
    codec::{col, parse_hlc, parse_opt_hlc},
    error::{db_error, to_i64, to_u64},
    floors::{self, Raised},
    SqliteStore,
};

/// The columns a record is read from, in [`record_from_row`] order.
macro_rules! record_columns {
    () => {
        "id, kind, record_type, created_at, hlc, deleted_at, version, content_hash, \
         object_storage_key, mime_type, size_bytes, original_filename, origin_app_id, \
         parent_id, label"
    };
}

/// Last-write-wins as a conditional upsert: a stored row changes only when the offered
/// version is higher (the string form orders like the timestamps, ties by node id). Written
/// many rows per statement ([`UPSERT_ROWS`]), after the batch was decided (see `batch`).
const UPSERT_HEAD: &str = "\
INSERT INTO shared_records (id, kind, record_type, created_at, hlc, node_id, deleted_at, \
    version, content_hash, object_storage_key, mime_type, size_bytes, original_filename, \
    origin_app_id, parent_id, label)";

const UPSERT_TAIL: &str = "\
ON CONFLICT (id) DO UPDATE SET \
    kind = excluded.kind, record_type = excluded.record_type, \
    created_at = excluded.created_at, hlc = excluded.hlc, node_id = excluded.node_id, \
    deleted_at = excluded.deleted_at, version = excluded.version, \
    content_hash = excluded.content_hash, object_storage_key = excluded.object_storage_key, \
    mime_type = excluded.mime_type, size_bytes = excluded.size_bytes, \
    original_filename = excluded.original_filename, origin_app_id = excluded.origin_app_id, \
    parent_id = excluded.parent_id, label = excluded.label \
WHERE excluded.hlc > shared_records.hlc";

/// Parameters per upserted record.
const UPSERT_COLUMNS: usize = 16;

/// Records per upsert statement: 32 x 16 parameters stays below the 999 that older SQLite
/// builds allow.
const UPSERT_ROWS: usize = 32;

/// The stored versions of a batch's records (a JSON array of ids), read before it is
/// applied: they decide the outcomes, and a replaced version raises its origin's coverage
/// floor.
pub(crate) const VERSIONS: &str = "\
SELECT id, hlc FROM shared_records WHERE id IN (SELECT value FROM json_each(?1))";

const GET: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM shared_records WHERE id = ?1"
);

/// One origin's records above a version, in version order, through the index.
pub(crate) const SCAN: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM shared_records WHERE node_id = ?1 AND hlc > ?2 ORDER BY hlc LIMIT ?3"
);

/// Per origin node, the highest stored version, then the coverage floors of the records
/// (decision 0008); the caller takes the maximum per node. A plain `GROUP BY node_id` reads
/// the whole index (O(rows)); this walks it as a loose index scan instead: one seek to find
/// each next origin node and one to read its maximum, so the cost is O(nodes · log rows),
/// plus one primary-key range of the small floors table.
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
SELECT MAX(hlc) FROM shared_records WHERE node_id = ?1 AND hlc < ?2 \
UNION ALL \
SELECT hlc FROM coverage_floors \
WHERE app_id = '' AND table_name = '' AND node_id = ?1 AND hlc < ?2";

fn record_from_row(row: &SqliteRow) -> Result<SharedRecord, StoreError> {
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

/// A scan limit as SQLite takes it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// What a scan's lower bound is bound as: nothing sorts below the empty string.
pub(crate) fn sql_above(above: Option<&Hlc>) -> String {
    above.map(Hlc::to_string).unwrap_or_default()
}

#[async_trait]
impl RecordStore for SqliteStore {
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
        // Refuse what the schema cannot hold before writing anything.
        let mut numbers = Vec::with_capacity(records.len());
        for r in records {
            numbers.push((
                to_i64("record version number", r.version)?,
                to_i64("record size_bytes", r.size_bytes)?,
            ));
        }
        let versions: Vec<String> = records.iter().map(|r| r.updated_at.to_string()).collect();
        // One transaction per batch: on any error it is dropped unfinished and rolls back. It
        // holds the write lock, so the versions read here are the ones the upserts see.
        let mut tx = self.begin_write(DOING).await?;
        let stored: Vec<(String, String)> = sqlx::query_as(VERSIONS)
            .bind(batch::json_list(records.iter().map(|r| r.id.as_str()))?)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(DOING, e))?;
        let items: Vec<(&str, &str)> = records
            .iter()
            .zip(&versions)
            .map(|(r, v)| (r.id.as_str(), v.as_str()))
            .collect();
        let plan = batch::plan(
            &items,
            stored
                .iter()
                .map(|(id, hlc)| (id.as_str(), hlc.clone()))
                .collect(),
        );
        let mut raised = Raised::default();
        for (_, replaced) in &plan.replaced {
            raised.note(floors::RECORDS, replaced)?;
        }
        let mut written = 0;
        for chunk in batch::chunks(plan.writes.len(), UPSERT_ROWS) {
            let sql = batch::values_sql(UPSERT_HEAD, UPSERT_COLUMNS, chunk.len(), UPSERT_TAIL);
            let mut query = sqlx::query(&sql);
            for &i in &plan.writes[chunk] {
                let r = &records[i];
                query = query
                    .bind(&r.id)
                    .bind(&r.kind)
                    .bind(&r.record_type)
                    .bind(r.created_at.to_string())
                    .bind(&versions[i])
                    .bind(r.origin().as_str())
                    .bind(r.deleted_at.as_ref().map(Hlc::to_string))
                    .bind(numbers[i].0)
                    .bind(&r.content_hash)
                    .bind(&r.object_storage_key)
                    .bind(&r.mime_type)
                    .bind(numbers[i].1)
                    .bind(&r.original_filename)
                    .bind(&r.origin_app_id)
                    .bind(&r.parent_id)
                    .bind(&r.label);
            }
            written += query
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(DOING, e))?
                .rows_affected();
        }
        if written != plan.writes.len() as u64 {
            return Err(batch::unexpected_writes(DOING, plan.writes.len(), written));
        }
        raised.write(&mut tx, DOING).await?;
        tx.commit().await.map_err(|e| db_error(DOING, e))?;
        Ok(plan.outcomes)
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
