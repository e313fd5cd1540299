//! App namespaces and app rows: `app_namespaces`, and `app_rows` indexed on
//! `(app_id, table_name, node_id, hlc)`.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sqlx::{sqlite::SqliteRow, SqliteConnection};
use sync_core::{row_key, AppNamespace, AppRowStore, Applied, StoreError, TableSpec};
use sync_hlc::{Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, RowOp, RowValues};

use crate::{
    batch,
    codec::{col, op_name, parse_hlc, parse_op, parse_values, values_json},
    error::{corrupt, db_error},
    floors::Raised,
    records::{highest, sql_above, sql_limit, watermarks},
    SqliteStore,
};

const REGISTER: &str = "\
INSERT INTO app_namespaces (app_id, tables_json, files_enabled) VALUES (?1, ?2, ?3) \
ON CONFLICT (app_id) DO UPDATE SET \
    tables_json = excluded.tables_json, files_enabled = excluded.files_enabled";

const NAMESPACE: &str = "SELECT tables_json, files_enabled FROM app_namespaces WHERE app_id = ?1";

/// Last-write-wins as a conditional upsert per (app, table, primary key), many rows per
/// statement ([`UPSERT_ROWS`]) after the batch was decided (see `batch`).
const UPSERT_HEAD: &str = "\
INSERT INTO app_rows (app_id, table_name, pk, node_id, hlc, tombstone, op, row_json, where_json)";

const UPSERT_TAIL: &str = "\
ON CONFLICT (app_id, table_name, pk) DO UPDATE SET \
    node_id = excluded.node_id, hlc = excluded.hlc, tombstone = excluded.tombstone, \
    op = excluded.op, row_json = excluded.row_json, where_json = excluded.where_json \
WHERE excluded.hlc > app_rows.hlc";

/// Parameters per upserted row.
const UPSERT_COLUMNS: usize = 9;

/// Rows per upsert statement: 64 x 9 parameters stays below the 999 that older SQLite builds
/// allow.
const UPSERT_ROWS: usize = 64;

/// The stored versions of a batch's rows of one table (a JSON array of canonical keys), read
/// before it is applied: they decide the outcomes, and a replaced version raises its origin's
/// coverage floor in the row's table.
pub(crate) const VERSIONS: &str = "\
SELECT pk, hlc FROM app_rows \
WHERE app_id = ?1 AND table_name = ?2 AND pk IN (SELECT value FROM json_each(?3))";

const GET: &str = "\
SELECT app_id, table_name, hlc, op, row_json, where_json FROM app_rows \
WHERE app_id = ?1 AND table_name = ?2 AND pk = ?3";

/// One origin's rows of one table above a version, in version order, through the index.
pub(crate) const SCAN: &str = "\
SELECT app_id, table_name, hlc, op, row_json, where_json FROM app_rows \
WHERE app_id = ?1 AND table_name = ?2 AND node_id = ?3 AND hlc > ?4 ORDER BY hlc LIMIT ?5";

/// Per origin node, the highest stored version in one table as a loose index scan (see the
/// record store's coverage query), then the table's coverage floors; the caller takes the
/// maximum per node.
pub(crate) const COVERAGE: &str = "\
WITH RECURSIVE origins (node_id) AS ( \
    SELECT MIN(node_id) FROM app_rows WHERE app_id = ?1 AND table_name = ?2 \
    UNION ALL \
    SELECT (SELECT MIN(s.node_id) FROM app_rows AS s \
            WHERE s.app_id = ?1 AND s.table_name = ?2 AND s.node_id > origins.node_id) \
    FROM origins WHERE origins.node_id IS NOT NULL \
) \
SELECT (SELECT MAX(s.hlc) FROM app_rows AS s \
        WHERE s.app_id = ?1 AND s.table_name = ?2 AND s.node_id = origins.node_id) \
FROM origins WHERE origins.node_id IS NOT NULL \
UNION ALL \
SELECT hlc FROM coverage_floors WHERE app_id = ?1 AND table_name = ?2";

/// The highest stored version of one origin in one table below a bound, and its floor if
/// that is below the bound too; the caller takes the maximum.
pub(crate) const COVERAGE_BELOW: &str = "\
SELECT MAX(hlc) FROM app_rows \
WHERE app_id = ?1 AND table_name = ?2 AND node_id = ?3 AND hlc < ?4 \
UNION ALL \
SELECT hlc FROM coverage_floors \
WHERE app_id = ?1 AND table_name = ?2 AND node_id = ?3 AND hlc < ?4";

fn row_from_row(row: &SqliteRow) -> Result<AppRow, StoreError> {
    Ok(AppRow {
        app_id: col(row, 0)?,
        table: col(row, 1)?,
        timestamp: parse_hlc("row version", &col::<String>(row, 2)?)?,
        op: parse_op(&col::<String>(row, 3)?)?,
        row: parse_values("row values", col(row, 4)?)?,
        where_: parse_values("row key (where)", col(row, 5)?)?,
    })
}

/// The `where` a row is stored with. A tombstone always names its complete primary key
/// there, taking the key columns it lacks from `row`, so a peer can apply it by key alone.
fn stored_where(spec: &TableSpec, r: &AppRow) -> Option<RowValues> {
    if r.op != RowOp::Delete {
        return r.where_.clone();
    }
    let mut w = r.where_.clone().unwrap_or_default();
    for c in &spec.pk_columns {
        if !w.contains_key(c) {
            if let Some(v) = r.row.as_ref().and_then(|row| row.get(c)) {
                w.insert(c.clone(), v.clone());
            }
        }
    }
    Some(w)
}

async fn load_namespace(
    conn: &mut SqliteConnection,
    app_id: &str,
) -> Result<Option<AppNamespace>, StoreError> {
    let row: Option<(String, bool)> = sqlx::query_as(NAMESPACE)
        .bind(app_id)
        .fetch_optional(conn)
        .await
        .map_err(|e| db_error("reading an app namespace", e))?;
    row.map(|(tables, files_enabled)| {
        Ok(AppNamespace {
            app_id: app_id.to_string(),
            tables: serde_json::from_str(&tables)
                .map_err(|e| corrupt(&format!("namespace of app {app_id}"), e))?,
            files_enabled,
        })
    })
    .transpose()
}

/// A row ready to write: its canonical key and stored `where`.
struct Keyed {
    key: String,
    where_json: Option<String>,
}

#[async_trait]
impl AppRowStore for SqliteStore {
    async fn register(&self, namespace: AppNamespace) -> Result<(), StoreError> {
        let ns = namespace
            .validated()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let tables = serde_json::to_string(&ns.tables)
            .map_err(|e| StoreError::Invalid(format!("namespace does not encode: {e}")))?;
        sqlx::query(REGISTER)
            .bind(&ns.app_id)
            .bind(tables)
            .bind(ns.files_enabled)
            .execute(&self.writer)
            .await
            .map_err(|e| db_error("registering an app namespace", e))?;
        Ok(())
    }

    async fn namespace(&self, app_id: &str) -> Result<Option<AppNamespace>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("reading an app namespace", e))?;
        load_namespace(&mut conn, app_id).await
    }

    async fn coverage(&self, app_id: &str, table: &str) -> Result<Watermarks, StoreError> {
        let tops: Vec<Option<String>> = sqlx::query_scalar(COVERAGE)
            .bind(app_id)
            .bind(table)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading app-row coverage", e))?;
        watermarks(tops)
    }

    async fn coverage_below(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        let tops: Vec<Option<String>> = sqlx::query_scalar(COVERAGE_BELOW)
            .bind(app_id)
            .bind(table)
            .bind(origin.as_str())
            .bind(below.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading app-row coverage", e))?;
        highest(tops)
    }

    async fn scan(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<AppRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SCAN)
            .bind(app_id)
            .bind(table)
            .bind(origin.as_str())
            .bind(sql_above(above))
            .bind(sql_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("scanning app rows", e))?;
        rows.iter().map(row_from_row).collect()
    }

    async fn apply(&self, rows: &[AppRow]) -> Result<Vec<Applied>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        const DOING: &str = "applying app rows";
        let mut tx = self.begin_write(DOING).await?;

        // Key every row before writing any: a batch with an unregistered table or a missing
        // key is refused whole. Namespaces are read inside the transaction, so a concurrent
        // re-registration cannot slip between the check and the writes.
        let mut namespaces: HashMap<&str, Option<AppNamespace>> = HashMap::new();
        let mut keyed = Vec::with_capacity(rows.len());
        for r in rows {
            if !namespaces.contains_key(r.app_id.as_str()) {
                let ns = load_namespace(&mut tx, &r.app_id).await?;
                namespaces.insert(&r.app_id, ns);
            }
            let spec = namespaces
                .get(r.app_id.as_str())
                .and_then(Option::as_ref)
                .and_then(|ns| ns.table(&r.table))
                .ok_or_else(|| {
                    StoreError::Invalid(format!("table {}.{} is not registered", r.app_id, r.table))
                })?;
            let key = row_key(spec, r).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let where_json = values_json(stored_where(spec, r).as_ref())?;
            keyed.push(Keyed { key, where_json });
        }

        // We hold the write lock: the versions read here are the ones the upserts see.
        let versions: Vec<String> = rows.iter().map(|r| r.timestamp.to_string()).collect();
        let mut tables: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for (r, k) in rows.iter().zip(&keyed) {
            tables
                .entry((r.app_id.as_str(), r.table.as_str()))
                .or_default()
                .push(k.key.as_str());
        }
        let mut stored = Vec::new();
        for ((app_id, table), keys) in &tables {
            let found: Vec<(String, String)> = sqlx::query_as(VERSIONS)
                .bind(*app_id)
                .bind(*table)
                .bind(batch::json_list(keys.iter().copied())?)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db_error(DOING, e))?;
            stored.extend(
                found
                    .into_iter()
                    .map(|(pk, hlc)| (*app_id, *table, pk, hlc)),
            );
        }
        let items: Vec<((&str, &str, &str), &str)> = rows
            .iter()
            .zip(&keyed)
            .zip(&versions)
            .map(|((r, k), v)| {
                (
                    (r.app_id.as_str(), r.table.as_str(), k.key.as_str()),
                    v.as_str(),
                )
            })
            .collect();
        let plan = batch::plan(
            &items,
            stored
                .iter()
                .map(|(app_id, table, pk, hlc)| ((*app_id, *table, pk.as_str()), hlc.clone()))
                .collect(),
        );
        let mut raised = Raised::default();
        for (i, replaced) in &plan.replaced {
            raised.note((&rows[*i].app_id, &rows[*i].table), replaced)?;
        }
        let mut written = 0;
        for chunk in batch::chunks(plan.writes.len(), UPSERT_ROWS) {
            let sql = batch::values_sql(UPSERT_HEAD, UPSERT_COLUMNS, chunk.len(), UPSERT_TAIL);
            let mut query = sqlx::query(&sql);
            for &i in &plan.writes[chunk] {
                let (r, k) = (&rows[i], &keyed[i]);
                query = query
                    .bind(&r.app_id)
                    .bind(&r.table)
                    .bind(&k.key)
                    .bind(r.origin().as_str())
                    .bind(&versions[i])
                    .bind(r.is_tombstone())
                    .bind(op_name(r.op))
                    .bind(values_json(r.row.as_ref())?)
                    .bind(&k.where_json);
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

    async fn get(
        &self,
        app_id: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<AppRow>, StoreError> {
        let row = sqlx::query(GET)
            .bind(app_id)
            .bind(table)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading an app row", e))?;
        row.as_ref().map(row_from_row).transpose()
    }
}
