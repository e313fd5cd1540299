//! Connecting: connection options, the pool, the schema and its migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    migrate::{MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    Row,
};
use sync_core::StoreError;

use crate::{error::db_error, records, rows};

/// The schema migrations, embedded at compile time from `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How many prepared statements each connection keeps (every hot query is prepared once).
const STATEMENT_CACHE: usize = 64;

/// Options for [`PostgresStore::connect_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Most connections in the pool. Default: 10.
    pub max_connections: u32,
    /// How long to wait for a free connection before failing with
    /// [`StoreError::Transient`]. Default: 10 seconds.
    pub acquire_timeout: Duration,
    /// The PostgreSQL schema the tables live in (created if missing), so several stores can
    /// share one database. Default: none, i.e. the server's `search_path` (normally `public`).
    pub schema: Option<String>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            schema: None,
        }
    }
}

impl PostgresOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the pool size (at least 1).
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the acquire timeout.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Puts the tables in `schema`: 1..=63 lower-case ASCII letters, digits and `_`, not
    /// starting with a digit (checked on connect).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

/// Whether `name` is a schema name we put into SQL unquoted-safe form.
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The record store, app-row store and sync-state store of one PostgreSQL database (or
/// schema).
///
/// Cheap to clone: clones share one connection pool. Several processes may share one
/// database: last-write-wins is a conditional upsert, correct under concurrent writers.
/// Implements [`RecordStore`](sync_core::RecordStore),
/// [`AppRowStore`](sync_core::AppRowStore) and [`SyncStateStore`](sync_core::SyncStateStore).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
}

/// The plan PostgreSQL chose for one of the hot queries (see
/// [`PostgresStore::query_plans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryPlan {
    /// Which query: `records.coverage`, `rows.scan`, ...
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
    /// The `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)` output, one line per row.
    pub plan: String,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database?...`) with the
    /// default options and brings the schema up to date. A database written by a newer
    /// version of this software is refused with [`StoreError::NewerSchema`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &PostgresOptions::default()).await
    }

    /// [`connect`](Self::connect) with explicit options.
    pub async fn connect_with(url: &str, options: &PostgresOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| db_error("parsing the PostgreSQL URL", e))?
            .statement_cache_capacity(STATEMENT_CACHE)
            .application_name("starkeep-sync");
        if let Some(schema) = &options.schema {
            if !valid_schema(schema) {
                return Err(StoreError::Invalid(format!(
                    "schema name {schema:?}: use 1..=63 lower-case letters, digits and '_'"
                )));
            }
            // A schema that does not exist yet is allowed in `search_path`; it is created
            // below, before anything else runs.
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| db_error("connecting to PostgreSQL", e))?;
        if let Some(schema) = &options.schema {
            // Validated above: safe to splice.
            if let Err(e) = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&pool)
                .await
            {
                pool.close().await;
                return Err(db_error(&format!("creating schema {schema}"), e));
            }
        }
        Self::migrated(pool).await
    }

    /// The newest schema version this build knows.
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Closes every connection (waiting for those in use). Later calls on any clone fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrated(pool: PgPool) -> Result<Self, StoreError> {
        match Self::check_version(&pool).await {
            Ok(()) => {}
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        }
        // sqlx serializes concurrent migrators with an advisory lock.
        if let Err(e) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(migrate_error(e));
        }
        Ok(Self { pool })
    }

    /// Refuses a database whose migration history is ahead of this build.
    async fn check_version(pool: &PgPool) -> Result<(), StoreError> {
        let supported = Self::schema_version();
        let has_history: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(pool)
                .await
                .map_err(|e| db_error("reading the schema version", e))?;
        if !has_history {
            return Ok(());
        }
        let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await
            .map_err(|e| db_error("reading the schema version", e))?;
        match found {
            Some(found) if found > supported => Err(StoreError::NewerSchema { found, supported }),
            _ => Ok(()),
        }
    }

    /// The plans PostgreSQL chooses for the queries a sync round runs on every page:
    /// coverage, `coverage_below` and scans, of records and of app rows. Each must go through
    /// the `(node_id, hlc)` indexes (`Index [Only] Scan using ...`), never a sequential scan,
    /// once the tables are big enough for the difference to matter; coverage also reads the
    /// stream's coverage floors by their primary key. The queries are read-only, so they are
    /// explained with `ANALYZE` (which also shows every sub-plan).
    pub async fn query_plans(&self) -> Result<Vec<QueryPlan>, StoreError> {
        use Arg::{Int, Text};
        const N: Arg = Text("node-a");
        const H: Arg = Text("000000000001:0000:node-a");
        const APP: Arg = Text("app");
        const TABLE: Arg = Text("table");
        let queries: [(&'static str, &'static str, &[Arg]); 6] = [
            ("records.coverage", records::COVERAGE, &[]),
            ("records.coverage_below", records::COVERAGE_BELOW, &[N, H]),
            ("records.scan", records::SCAN, &[N, H, Int(10)]),
            ("rows.coverage", rows::COVERAGE, &[APP, TABLE]),
            (
                "rows.coverage_below",
                rows::COVERAGE_BELOW,
                &[APP, TABLE, N, H],
            ),
            ("rows.scan", rows::SCAN, &[APP, TABLE, N, H, Int(10)]),
        ];
        let mut out = Vec::with_capacity(queries.len());
        for (name, sql, args) in queries {
            let explain = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}");
            let mut query = sqlx::query(&explain);
            for arg in args {
                query = match *arg {
                    Text(s) => query.bind(s),
                    Int(i) => query.bind(i),
                };
            }
            let doing = format!("explaining {name}");
            let plan = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(&doing, e))?
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| db_error(&doing, e))?
                .join("\n");
            out.push(QueryPlan { name, sql, plan });
        }
        Ok(out)
    }
}

/// A sample parameter of an explained query.
#[derive(Clone, Copy)]
enum Arg {
    Text(&'static str),
    Int(i64),
}

fn migrate_error(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) => db_error("migrating the schema", e),
        MigrateError::ExecuteMigration(e, version) => {
            db_error(&format!("applying schema migration {version}"), e)
        }
        other => StoreError::Fatal {
            message: format!("migrating the schema: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schema_names() {
        for ok in [
            "starkeep",
            "t_1",
            "_x",
            "a234567890123456789012345678901234567890123456789012345678901",
        ] {
            assert!(valid_schema(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Upper",
            "a-b",
            "a;drop",
            "a b",
            "\"q\"",
            &"a".repeat(64),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
