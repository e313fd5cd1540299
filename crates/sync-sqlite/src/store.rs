//! Opening a database: connection options, the pool, and the schema migrations.

use std::{path::Path, time::Duration};

use sqlx::{
    migrate::{MigrateError, Migrator},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
    Row, Sqlite, Transaction,
};
use sync_core::StoreError;

use crate::{error::db_error, records, rows};

/// The schema migrations, embedded at compile time from `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How many prepared statements each connection keeps (every hot query is prepared once).
const STATEMENT_CACHE: usize = 64;

/// Rows sqlx's worker thread may run ahead of the reading task (sqlx's default is 50). A
/// scan returns a page of up to ~1000 rows; with a small buffer the worker stalls and the
/// two threads wake each other every few rows.
const ROW_BUFFER: usize = 1024;

/// Options for [`SqliteStore::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How long a statement waits for another connection's lock before failing with
    /// [`StoreError::Transient`]. Default: 5 seconds.
    pub busy_timeout: Duration,
    /// Most connections in the pool (readers run in parallel in WAL mode; writers take
    /// turns). Default: 4.
    pub max_connections: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
        }
    }
}

impl SqliteOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets the pool size (at least 1).
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }
}

/// The record store, app-row store and sync-state store of one SQLite database.
///
/// Cheap to clone: clones share one connection pool. Implements
/// [`RecordStore`](sync_core::RecordStore), [`AppRowStore`](sync_core::AppRowStore) and
/// [`SyncStateStore`](sync_core::SyncStateStore).
///
/// Reads run on a pool of connections (in parallel, in WAL mode); every write runs on one
/// writer connection. SQLite takes one writer at a time anyway, and a connection's page
/// cache is dropped whenever another connection wrote, so writes spread over the pool would
/// each start from a cold cache and read the B-tree from the file again.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    pub(crate) writer: SqlitePool,
}

/// The query plan SQLite chose for one of the hot queries (see [`SqliteStore::query_plans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryPlan {
    /// Which query: `records.coverage`, `rows.scan`, ...
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
    /// The `EXPLAIN QUERY PLAN` details, one step per line.
    pub plan: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` with the default options,
    /// and brings its schema up to date.
    ///
    /// The database runs in WAL mode with `synchronous = NORMAL` (a commit survives a
    /// process crash; a power loss may lose the last commits but never corrupts), foreign
    /// keys on and a busy timeout. A database written by a newer version of this software is
    /// refused with [`StoreError::NewerSchema`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default()).await
    }

    /// [`open`](Self::open) with explicit options.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: &SqliteOptions,
    ) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            .statement_cache_capacity(STATEMENT_CACHE)
            .row_buffer_size(ROW_BUFFER);
        let doing = format!("opening SQLite database {}", path.as_ref().display());
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect.clone())
            .await
            .map_err(|e| db_error(&doing, e))?;
        // Migrations first (on the reader pool), so the writer opens an up-to-date schema.
        let pool = Self::migrated(pool).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect)
            .await;
        match writer {
            Ok(writer) => Ok(Self { pool, writer }),
            Err(e) => {
                pool.close().await;
                Err(db_error(&doing, e))
            }
        }
    }

    /// A private database in memory, gone when the last clone is dropped. For tests and
    /// throwaway nodes.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true)
            .statement_cache_capacity(STATEMENT_CACHE)
            .row_buffer_size(ROW_BUFFER);
        // Every connection to `:memory:` is a database of its own: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect)
            .await
            .map_err(|e| db_error("opening an in-memory SQLite database", e))?;
        let pool = Self::migrated(pool).await?;
        // The one connection is the database: it reads and writes.
        Ok(Self {
            writer: pool.clone(),
            pool,
        })
    }

    /// The newest schema version this build knows.
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Closes every connection (waiting for those in use). Later calls on any clone fail.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    async fn migrated(pool: SqlitePool) -> Result<SqlitePool, StoreError> {
        let supported = Self::schema_version();
        let has_history: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| db_error("reading the schema version", e))?;
        if has_history {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| db_error("reading the schema version", e))?;
            if let Some(found) = found.filter(|found| *found > supported) {
                pool.close().await;
                return Err(StoreError::NewerSchema { found, supported });
            }
        }
        if let Err(e) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(migrate_error(e));
        }
        Ok(pool)
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`), so it
    /// waits for other writers under the busy timeout instead of failing when it upgrades
    /// from reading to writing.
    pub(crate) async fn begin_write(
        &self,
        doing: &str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db_error(doing, e))
    }

    /// The plans SQLite chooses for the queries a sync round runs on every page: coverage,
    /// `coverage_below` and scans, of records and of app rows. Each must go through the
    /// `(node_id, hlc)` indexes (`SEARCH ... USING [COVERING] INDEX`), never scan a table;
    /// coverage also reads the stream's coverage floors by their primary key. The tests
    /// check this, and `status` tooling can show it.
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
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            // Bind the same shapes the stores bind.
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
                .map(|row| row.try_get::<String, _>("detail"))
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
