//! SQLite-specific behaviour: query plans, schema versions, failed batches, busy databases
//! and failed reads.

use std::{path::Path, time::Duration};

use serde_json::json;
use sqlx::{sqlite::SqliteConnectOptions, ConnectOptions, Connection, SqliteConnection};
use sync_core::{hlc::Watermarks, AppRowStore, Applied, RecordStore, StoreError};
use sync_sqlite::{SqliteOptions, SqliteStore};
use sync_testkit::conformance::{hlc, namespace, note, record, APP, NOTES};
use tempfile::TempDir;

async fn fresh() -> (TempDir, std::path::PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("node.sqlite");
    let store = SqliteStore::open(&path).await.expect("open");
    (dir, path, store)
}

/// A plain connection to the same file, to do what the store never would.
async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .expect("raw connection")
}

#[tokio::test]
async fn hot_queries_use_the_node_hlc_indexes() {
    let (_dir, _path, store) = fresh().await;
    let plans = store.query_plans().await.expect("query plans");
    assert_eq!(plans.len(), 6);
    for p in &plans {
        let index = if p.name.starts_with("records.") {
            "shared_records_node_hlc"
        } else {
            "app_rows_node_hlc"
        };
        let mut searches = 0;
        for step in p.plan.lines() {
            // Coverage also reads the stream's coverage floors (decision 0008), a range of
            // the small table's primary key.
            if step.starts_with("SEARCH coverage_floors ") {
                assert!(
                    step.starts_with(
                        "SEARCH coverage_floors USING PRIMARY KEY (app_id=? AND table_name=?"
                    ),
                    "{}: floors not read by their key: {step}\n{}",
                    p.name,
                    p.plan
                );
                assert!(
                    p.name.contains("coverage"),
                    "{}: reads the floors: {step}",
                    p.name
                );
                continue;
            }
            if step.starts_with("SEARCH ") {
                assert!(
                    step.contains(&format!("USING COVERING INDEX {index}"))
                        || step.contains(&format!("USING INDEX {index}")),
                    "{}: a search not through {index}: {step}\n{}",
                    p.name,
                    p.plan
                );
                searches += 1;
            }
            // The only scan allowed is of the recursive CTE's few rows (one per origin).
            if step.starts_with("SCAN ") {
                assert_eq!(
                    step, "SCAN origins",
                    "{}: scans a table: {step}\n{}",
                    p.name, p.plan
                );
            }
            assert!(
                !step.contains("TEMP B-TREE"),
                "{}: sorts instead of reading in index order: {step}",
                p.name
            );
        }
        assert!(searches > 0, "{}: no index search:\n{}", p.name, p.plan);
        if p.name.contains("coverage") {
            assert!(
                p.plan.contains("SEARCH coverage_floors USING PRIMARY KEY"),
                "{}: coverage without its floors:\n{}",
                p.name,
                p.plan
            );
        }
    }
    let scan = plans
        .iter()
        .find(|p| p.name == "records.scan")
        .expect("records.scan");
    assert!(
        scan.plan
            .contains("USING INDEX shared_records_node_hlc (node_id=? AND hlc>?)"),
        "the watermark is pushed into the index range: {}",
        scan.plan
    );
    let coverage = plans
        .iter()
        .find(|p| p.name == "records.coverage")
        .expect("records.coverage");
    assert!(
        coverage
            .plan
            .contains("USING COVERING INDEX shared_records_node_hlc (node_id=?)"),
        "coverage reads each origin's maximum from the index alone: {}",
        coverage.plan
    );
}

#[tokio::test]
async fn a_database_from_a_newer_schema_is_refused() {
    let (_dir, path, store) = fresh().await;
    let supported = SqliteStore::schema_version();
    assert!(supported >= 1);
    store.close().await;

    let mut conn = raw(&path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?1, 'from a future version', TRUE, X'00', 0)",
    )
    .bind(supported + 1)
    .execute(&mut conn)
    .await
    .expect("fake a future migration");
    conn.close().await.expect("close");

    match SqliteStore::open(&path).await {
        Err(StoreError::NewerSchema {
            found,
            supported: s,
        }) => {
            assert_eq!(found, supported + 1);
            assert_eq!(s, supported);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let message = SqliteStore::open(&path)
        .await
        .expect_err("refused")
        .to_string();
    assert!(message.contains("newer"), "{message}");
}

#[tokio::test]
async fn reopening_a_current_database_migrates_nothing() {
    let (_dir, path, store) = fresh().await;
    store.close().await;
    let again = SqliteStore::open(&path).await.expect("reopen");
    again.close().await;
    let mut conn = raw(&path).await;
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(applied, SqliteStore::schema_version());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal", "the file is in WAL mode");
}

/// A database of schema version 1 (before coverage floors) is migrated on open, keeps its
/// data, and starts keeping floors.
#[tokio::test]
async fn a_version_1_database_gains_coverage_floors() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("v1.sqlite");
    let v1 = dir.path().join("v1-migrations");
    std::fs::create_dir(&v1).expect("mkdir");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_initial.sql"),
        v1.join("0001_initial.sql"),
    )
    .expect("copy the first migration");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .expect("create");
    sqlx::migrate::Migrator::new(v1.as_path())
        .await
        .expect("version-1 migrator")
        .run_direct(&mut conn)
        .await
        .expect("migrate to version 1");
    sqlx::query(
        "INSERT INTO shared_records (id, kind, record_type, created_at, hlc, node_id, \
         version, content_hash, object_storage_key, size_bytes, origin_app_id) \
         VALUES ('r1', 'data', 't', ?1, ?1, 'node-a', 1, '', '', 0, 'app')",
    )
    .bind(hlc(10, 0, "node-a").to_string())
    .execute(&mut conn)
    .await
    .expect("a version-1 record");
    conn.close().await.expect("close");

    let store = SqliteStore::open(&path).await.expect("open migrates");
    assert!(SqliteStore::schema_version() >= 2);
    let replaced = hlc(10, 0, "node-a");
    assert_eq!(
        RecordStore::coverage(&store).await.expect("coverage"),
        [replaced.clone()].into_iter().collect::<Watermarks>()
    );
    let new = hlc(20, 0, "node-b");
    RecordStore::apply(&store, &[record("r1", &new)])
        .await
        .expect("replace");
    assert_eq!(
        RecordStore::coverage(&store).await.expect("coverage"),
        [replaced, new].into_iter().collect::<Watermarks>()
    );
    store.close().await;
}

/// A batch that fails inside the database (here: a trigger refusing one item, after others
/// were written in the same transaction) leaves nothing of itself behind.
#[tokio::test]
async fn nothing_half_written_survives_a_failed_batch() {
    let (_dir, path, store) = fresh().await;
    store.register(namespace()).await.expect("register");
    let old = hlc(10, 0, "node-a");
    RecordStore::apply(&store, &[record("r1", &old)])
        .await
        .expect("seed record");
    AppRowStore::apply(&store, &[note("k1", &old)])
        .await
        .expect("seed row");
    let record_coverage = RecordStore::coverage(&store).await.expect("coverage");
    let row_coverage = AppRowStore::coverage(&store, APP, NOTES)
        .await
        .expect("coverage");

    let mut conn = raw(&path).await;
    sqlx::query(
        "CREATE TRIGGER poison_record BEFORE INSERT ON shared_records \
         WHEN NEW.id = 'poison' BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut conn)
    .await
    .expect("trigger");
    sqlx::query(
        "CREATE TRIGGER poison_row BEFORE INSERT ON app_rows \
         WHEN NEW.pk = '[\"poison\"]' BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut conn)
    .await
    .expect("trigger");

    let new = hlc(20, 0, "node-b");
    let failed = RecordStore::apply(
        &store,
        &[
            record("r1", &new),
            record("r2", &new),
            record("poison", &new),
        ],
    )
    .await;
    assert!(
        matches!(failed, Err(StoreError::Fatal { .. })),
        "{failed:?}"
    );
    assert_eq!(
        RecordStore::get(&store, "r1").await.expect("get"),
        Some(record("r1", &old)),
        "the update before the failure was rolled back"
    );
    assert_eq!(RecordStore::get(&store, "r2").await.expect("get"), None);
    assert_eq!(
        RecordStore::coverage(&store).await.expect("coverage"),
        record_coverage
    );

    let failed = AppRowStore::apply(
        &store,
        &[note("k1", &new), note("k2", &new), note("poison", &new)],
    )
    .await;
    assert!(
        matches!(failed, Err(StoreError::Fatal { .. })),
        "{failed:?}"
    );
    assert_eq!(
        AppRowStore::get(&store, APP, NOTES, &json!(["k1"]).to_string())
            .await
            .expect("get"),
        Some(note("k1", &old))
    );
    assert_eq!(
        AppRowStore::get(&store, APP, NOTES, &json!(["k2"]).to_string())
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        AppRowStore::coverage(&store, APP, NOTES)
            .await
            .expect("coverage"),
        row_coverage
    );

    // The store is usable afterwards, and the same batch without the poison applies.
    assert_eq!(
        RecordStore::apply(&store, &[record("r1", &new), record("r2", &new)])
            .await
            .expect("apply"),
        [Applied::Written, Applied::Written]
    );
    conn.close().await.expect("close");
}

/// The coverage floor a replacement raises (decision 0008) is written in the batch's
/// transaction: when that write fails, the replacement is rolled back with it, and when it
/// succeeds the floor is there for every later reader.
#[tokio::test]
async fn a_failed_floor_write_rolls_back_the_batch() {
    let (_dir, path, store) = fresh().await;
    store.register(namespace()).await.expect("register");
    let old = hlc(10, 0, "node-a");
    let new = hlc(20, 0, "node-b");
    RecordStore::apply(&store, &[record("r1", &old)])
        .await
        .expect("seed record");
    AppRowStore::apply(&store, &[note("k1", &old)])
        .await
        .expect("seed row");

    let mut conn = raw(&path).await;
    sqlx::query(
        "CREATE TRIGGER poison_floor BEFORE INSERT ON coverage_floors \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut conn)
    .await
    .expect("trigger");
    let failed = RecordStore::apply(&store, &[record("r1", &new), record("r2", &new)]).await;
    assert!(
        matches!(failed, Err(StoreError::Fatal { .. })),
        "{failed:?}"
    );
    assert_eq!(
        RecordStore::get(&store, "r1").await.expect("get"),
        Some(record("r1", &old)),
        "the replacement was rolled back with its floor"
    );
    assert_eq!(RecordStore::get(&store, "r2").await.expect("get"), None);
    let failed = AppRowStore::apply(&store, &[note("k1", &new)]).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        AppRowStore::get(&store, APP, NOTES, &json!(["k1"]).to_string())
            .await
            .expect("get"),
        Some(note("k1", &old))
    );
    // A batch that replaces nothing writes no floor and is not affected.
    assert_eq!(
        RecordStore::apply(&store, &[record("r2", &new)])
            .await
            .expect("apply"),
        [Applied::Written]
    );

    sqlx::query("DROP TRIGGER poison_floor")
        .execute(&mut conn)
        .await
        .expect("drop trigger");
    RecordStore::apply(&store, &[record("r1", &new)])
        .await
        .expect("apply");
    AppRowStore::apply(&store, &[note("k1", &new)])
        .await
        .expect("apply");
    let floors: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT app_id, table_name, node_id, hlc FROM coverage_floors \
         ORDER BY app_id, table_name, node_id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("floors");
    assert_eq!(
        floors,
        [
            (
                String::new(),
                String::new(),
                "node-a".into(),
                old.to_string()
            ),
            (APP.into(), NOTES.into(), "node-a".into(), old.to_string()),
        ]
    );
    let both: Watermarks = [old.clone(), new.clone()].into_iter().collect();
    assert_eq!(RecordStore::coverage(&store).await.expect("coverage"), both);
    assert_eq!(
        AppRowStore::coverage(&store, APP, NOTES)
            .await
            .expect("coverage"),
        both
    );
    conn.close().await.expect("close");
}

#[tokio::test]
async fn a_busy_database_is_transient() {
    let (_dir, path, store) = fresh().await;
    store.close().await;
    let store = SqliteStore::open_with(
        &path,
        &SqliteOptions::new().with_busy_timeout(Duration::from_millis(50)),
    )
    .await
    .expect("open");
    RecordStore::apply(&store, &[record("r1", &hlc(1, 0, "node-a"))])
        .await
        .expect("apply");

    // Another process holds the write lock.
    let mut other = raw(&path).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .expect("take the write lock");

    let err = RecordStore::apply(&store, &[record("r2", &hlc(2, 0, "node-a"))])
        .await
        .expect_err("the write lock is held");
    assert!(err.is_transient(), "busy must be transient: {err:?}");
    // Readers are not blocked in WAL mode.
    assert_eq!(
        RecordStore::coverage(&store).await.expect("coverage"),
        [hlc(1, 0, "node-a")].into_iter().collect::<Watermarks>()
    );

    sqlx::query("ROLLBACK")
        .execute(&mut other)
        .await
        .expect("release");
    assert_eq!(
        RecordStore::apply(&store, &[record("r2", &hlc(2, 0, "node-a"))])
            .await
            .expect("apply after the lock is released"),
        [Applied::Written]
    );
    other.close().await.expect("close");
}

/// A read that fails is an error, never an empty result.
#[tokio::test]
async fn a_failed_read_is_an_error() {
    let (_dir, path, store) = fresh().await;
    RecordStore::apply(&store, &[record("r1", &hlc(1, 0, "node-a"))])
        .await
        .expect("apply");

    // A value that does not decode.
    let mut conn = raw(&path).await;
    sqlx::query("UPDATE shared_records SET hlc = 'garbage' WHERE id = 'r1'")
        .execute(&mut conn)
        .await
        .expect("corrupt");
    conn.close().await.expect("close");
    let a = sync_core::hlc::NodeId::new("node-a").expect("node id");
    assert!(matches!(
        RecordStore::coverage(&store).await,
        Err(StoreError::Fatal { .. })
    ));
    assert!(RecordStore::scan(&store, &a, None, 10).await.is_err());
    assert!(RecordStore::get(&store, "r1").await.is_err());

    // A closed store.
    store.close().await;
    assert!(RecordStore::coverage(&store).await.is_err());
    assert!(RecordStore::scan(&store, &a, None, 10).await.is_err());
    assert!(AppRowStore::namespace(&store, APP).await.is_err());
}

/// Two store instances (two pools, as two processes would) apply conflicting versions of
/// the same items at once; the highest version of each item wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_converge_on_the_maximum() {
    let (_dir, path, first) = fresh().await;
    let second = SqliteStore::open(&path).await.expect("second open");
    let items = 40_u64;
    let rounds = 5_u64;
    // Each writer returns the highest of its versions that was written (held at some point).
    let writer = |store: SqliteStore, node: &'static str, offset: u64| {
        tokio::spawn(async move {
            let mut written = Watermarks::new();
            for round in 0..rounds {
                // Opposite orders on the two writers.
                let mut batch: Vec<_> = (0..items)
                    .map(|i| record(&format!("r{i}"), &hlc(round * 100 + offset + i, 0, node)))
                    .collect();
                if offset == 0 {
                    batch.reverse();
                }
                let outcomes = RecordStore::apply(&store, &batch).await.expect("apply");
                for (r, outcome) in batch.iter().zip(outcomes) {
                    if outcome == Applied::Written {
                        written.advance(&r.updated_at);
                    }
                }
            }
            written
        })
    };
    let a = writer(first.clone(), "node-a", 0);
    let b = writer(second.clone(), "node-b", 50);
    let held_a = a.await.expect("writer a");
    b.await.expect("writer b");
    let last = rounds - 1;
    for i in 0..items {
        let stored = RecordStore::get(&first, &format!("r{i}"))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(stored.updated_at, hlc(last * 100 + 50 + i, 0, "node-b"));
    }
    // node-b's newest version, and node-a's floor: the highest of its versions the store
    // held before node-b's replaced it (decision 0008), whichever interleaving happened.
    assert_eq!(
        RecordStore::coverage(&second).await.expect("coverage"),
        [hlc(last * 100 + 50 + items - 1, 0, "node-b")]
            .into_iter()
            .collect::<Watermarks>()
            .merged(&held_a)
    );
}
