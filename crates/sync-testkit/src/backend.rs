//! The storage backend the scenario harness runs on: in memory, SQLite or PostgreSQL.
//!
//! `STARKEEP_TEST_BACKEND` (`memory`, the default; `sqlite`; `postgres`) picks it for every
//! [`Side::new`](crate::harness::Side::new) of a test process, so the scenario suite runs
//! unchanged against each (`cargo xtask test` runs it three times). A side opens its own
//! database: a file in a temporary directory for SQLite, a fresh schema on the server named
//! by `STARKEEP_TEST_POSTGRES_URL` for PostgreSQL; both are removed when the side is dropped.
//!
//! The harness is synchronous and the scenario files drive the ports with
//! `futures::executor::block_on`, but sqlx needs a tokio runtime. So every call into a SQL
//! store is spawned onto one process-wide multi-thread runtime and awaited from wherever the
//! caller runs (any executor, or a plain blocking wait): test code never runs on the
//! runtime's threads, so nothing a test blocks on can starve the stores.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use futures::FutureExt;
use sqlx::{Connection, PgConnection};
use sync_core::{AppRowStore, RecordStore, SyncStateStore};
use sync_postgres::{PostgresOptions, PostgresStore};
use sync_sqlite::SqliteStore;
use tokio::runtime::{Handle, Runtime};

use crate::memory::{Faults, MemoryAppRowStore, MemoryRecordStore, MemorySyncState};

/// The environment variable that picks the backend of [`Side::new`](crate::harness::Side::new).
pub const BACKEND_VAR: &str = "STARKEEP_TEST_BACKEND";
/// The environment variable naming the PostgreSQL test server (`cargo xtask test` sets it).
pub const POSTGRES_URL_VAR: &str = "STARKEEP_TEST_POSTGRES_URL";

/// Where a side keeps its records, app rows and sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The in-memory ports of [`memory`](crate::memory).
    Memory,
    /// `sync-sqlite`, one database file per side in a temporary directory.
    Sqlite,
    /// `sync-postgres`, one fresh schema per side on the server named by
    /// [`POSTGRES_URL_VAR`].
    Postgres,
}

impl Backend {
    /// The backend named by [`BACKEND_VAR`] (default [`Memory`](Self::Memory)), read once
    /// per process. Panics on an unknown name, and for `postgres` without
    /// [`POSTGRES_URL_VAR`]: a run that asked for a backend must not quietly use another.
    pub fn from_env() -> Self {
        static CHOSEN: OnceLock<Backend> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let name = std::env::var(BACKEND_VAR).unwrap_or_default();
            let backend = match name.trim() {
                "" | "memory" => Backend::Memory,
                "sqlite" => Backend::Sqlite,
                "postgres" => Backend::Postgres,
                other => panic!("{BACKEND_VAR}={other:?}: use memory, sqlite or postgres"),
            };
            if backend == Backend::Postgres {
                postgres_url();
            }
            backend
        })
    }

    /// `memory`, `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// A fresh, empty database on this backend.
    pub fn open(self) -> Stores {
        match self {
            Backend::Memory => {
                // The side's faults are injected by the wrappers of `faulty`, not here.
                let none = Faults::new();
                let records = Arc::new(MemoryRecordStore::new(none.clone()));
                let rows = Arc::new(MemoryAppRowStore::new(none.clone()));
                Stores {
                    records: records.clone(),
                    rows: rows.clone(),
                    state: Arc::new(MemorySyncState::new(none)),
                    memory: Some((records, rows)),
                    runtime: None,
                    _database: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("starkeep-scenario-")
                    .tempdir()
                    .expect("temporary directory for a SQLite side");
                let path = dir.path().join("side.sqlite");
                let store = block_on_runtime(async move { SqliteStore::open(path).await })
                    .expect("open the SQLite database of a side");
                Stores::sql(store.clone(), Database::Sqlite { store, _dir: dir })
            }
            Backend::Postgres => {
                let url = postgres_url();
                let schema = fresh_schema();
                let options = PostgresOptions::new()
                    .with_schema(&schema)
                    .with_max_connections(2);
                let store = {
                    let url = url.clone();
                    block_on_runtime(
                        async move { PostgresStore::connect_with(&url, &options).await },
                    )
                    .expect("connect a side to its PostgreSQL schema")
                };
                Stores::sql(store.clone(), Database::Postgres { store, url, schema })
            }
        }
    }
}

/// The test server's URL; panics (with the fix) when it is not set.
fn postgres_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{BACKEND_VAR}=postgres needs {POSTGRES_URL_VAR}: `cargo xtask test` starts a \
             throwaway server and sets it, or point it at a PostgreSQL database you may create \
             schemas in"
        ),
    }
}

/// A schema name no other side (of this or another test process) uses.
fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "scenario_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000_000
    )
}

/// The three stores of one database, and what keeps the database alive: it is closed and
/// removed when the last clone is dropped.
#[derive(Clone)]
pub struct Stores {
    /// Shared records.
    pub records: Arc<dyn RecordStore>,
    /// App rows.
    pub rows: Arc<dyn AppRowStore>,
    /// Sync state.
    pub state: Arc<dyn SyncStateStore>,
    /// The in-memory stores themselves, whose listings are cheaper than a full scan (the
    /// simulator lists everything after every step).
    pub(crate) memory: Option<(Arc<MemoryRecordStore>, Arc<MemoryAppRowStore>)>,
    /// The runtime SQL stores run on (`None` in memory: those futures never wait).
    runtime: Option<Handle>,
    _database: Option<Arc<Database>>,
}

impl Stores {
    fn sql<S>(store: S, database: Database) -> Self
    where
        S: RecordStore + AppRowStore + SyncStateStore + 'static,
    {
        let store = Arc::new(store);
        Self {
            records: store.clone(),
            rows: store.clone(),
            state: store,
            memory: None,
            runtime: Some(runtime().handle().clone()),
            _database: Some(Arc::new(database)),
        }
    }

    /// The runtime the stores' calls must run on; `None` in memory, where a call may be
    /// awaited anywhere.
    pub(crate) fn runtime(&self) -> Option<&Handle> {
        self.runtime.as_ref()
    }

    /// Runs `fut`, a call into one of these stores, to completion from synchronous code.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> T {
        match &self.runtime {
            // In-memory stores never wait; `now_or_never` also works inside another executor.
            None => fut
                .now_or_never()
                .expect("an in-memory store call completes at once"),
            Some(_) => block_on_runtime(fut),
        }
    }
}

/// Awaits `fut`, a call into a SQL store, run as a task on `runtime`: the caller may be
/// polled by any executor. A panic in `fut` resumes here.
pub(crate) async fn on<T: Send + 'static>(
    runtime: &Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    match runtime.spawn(fut).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a store call did not finish: {e}"),
    }
}

/// The process-wide runtime of the SQL stores.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testkit-stores")
            .enable_all()
            .build()
            .expect("tokio runtime for the SQL stores")
    })
}

/// Runs `fut` on the stores' runtime and waits for it on this thread: a plain blocking wait,
/// not an executor, so it may be called from synchronous code anywhere, also inside
/// `futures::executor::block_on` or a `#[tokio::test]`. A panic in `fut` resumes here.
fn block_on_runtime<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    let (done, result) = mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = done.send(AssertUnwindSafe(fut).catch_unwind().await);
    });
    match result.recv() {
        Ok(Ok(out)) => out,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the stores' runtime dropped a call"),
    }
}

/// A database that exists only for one side.
enum Database {
    Sqlite {
        store: SqliteStore,
        // Removed after the store is closed (fields drop after `Drop::drop`).
        _dir: tempfile::TempDir,
    },
    Postgres {
        store: PostgresStore,
        url: String,
        schema: String,
    },
}

impl Drop for Database {
    fn drop(&mut self) {
        let cleanup = match self {
            Database::Sqlite { store, .. } => {
                let store = store.clone();
                async move { store.close().await }.boxed()
            }
            Database::Postgres { store, url, schema } => {
                let (store, url, schema) = (store.clone(), url.clone(), schema.clone());
                async move {
                    store.close().await;
                    // Best effort: a leftover schema only costs space on a test server.
                    if let Ok(mut conn) = PgConnection::connect(&url).await {
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .execute(&mut conn)
                            .await;
                        let _ = conn.close().await;
                    }
                }
                .boxed()
            }
        };
        if std::thread::panicking() {
            // A failing test: do not wait (or risk a second panic) while unwinding.
            runtime().spawn(cleanup);
        } else {
            block_on_runtime(cleanup);
        }
    }
}
