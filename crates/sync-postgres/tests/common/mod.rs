//! Shared by the PostgreSQL tests: the server URL, and a fresh schema per store so tests
//! run in parallel against one database.

#![allow(dead_code)] // Each test file uses a different subset.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Once,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, PgConnection};
use sync_postgres::{PostgresOptions, PostgresStore};

/// Where the test server's URL comes from (`cargo xtask test` sets it).
pub const URL_VAR: &str = "STARKEEP_TEST_POSTGRES_URL";

/// The server URL, or `None` (with a loud message) when there is no server. Under
/// `CI=true` a missing server fails the test instead: CI must run these.
pub fn url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true but {URL_VAR} is not set: the PostgreSQL tests must run in CI \
             (`cargo xtask test` starts a throwaway server and sets it)"
        ),
        _ => {
            // Written to the stderr handle itself, not through `eprintln!`: the test harness
            // swallows `eprintln!` output of passing tests, and a skip must not go unseen.
            static ONCE: Once = Once::new();
            ONCE.call_once(|| {
                let _ = std::io::stderr().write_all(
                    format!(
                        "\n\
                         ************************************************************************\n\
                         *** SKIPPED: {URL_VAR} is not set, so the PostgreSQL tests\n\
                         *** of this binary did NOT run. `cargo xtask test` starts a throwaway\n\
                         *** server and sets it (set CI=true to make this an error).\n\
                         ************************************************************************\n\n"
                    )
                    .as_bytes(),
                );
            });
            None
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000_000
    )
}

/// Store options for a test: its own schema, a small pool.
pub fn options(schema: &str) -> PostgresOptions {
    PostgresOptions::new()
        .with_schema(schema)
        .with_max_connections(3)
}

/// A store on a fresh schema.
pub async fn fresh_store(url: &str) -> (PostgresStore, String) {
    let schema = fresh_schema();
    let store = PostgresStore::connect_with(url, &options(&schema))
        .await
        .expect("connect");
    (store, schema)
}

/// A plain connection with `schema` first on the search path, to do what the store never
/// would.
pub async fn raw(url: &str, schema: &str) -> PgConnection {
    url.parse::<PgConnectOptions>()
        .expect("URL")
        .options([("search_path", schema)])
        .connect()
        .await
        .expect("raw connection")
}

/// Drops test schemas (best effort: the server is thrown away after the run anyway).
pub async fn drop_schemas(url: &str, schemas: &[String]) {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return;
    };
    for s in schemas {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
            .execute(&mut conn)
            .await;
    }
    let _ = conn.close().await;
}
