//! PostgreSQL-specific behaviour: query plans, schema versions, collation, failed batches,
//! failed reads, and concurrent writers.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde_json::json;
use sqlx::Connection;
use sync_core::{
    hlc::{Hlc, NodeId, Watermarks},
    AppRowStore, Applied, RecordStore, StoreError,
};
use sync_postgres::{PostgresOptions, PostgresStore};
use sync_testkit::conformance::{hlc, namespace, note, record, SplitMix64, APP, NOTES};

/// With enough rows for the planner to care (20,000 records and 20,000 rows over three
/// origin nodes, 20,000 coverage floors over many streams, analyzed), every hot query goes
/// through the `(node_id, hlc)` indexes, and coverage reads its stream's floors through the
/// floors' primary key. We do not `SET enable_seqscan = off`: on a table of a few pages a
/// sequential scan is legitimately cheaper, and forcing the index would hide a plan that
/// does not use it at scale.
#[tokio::test]
async fn hot_queries_use_the_node_hlc_indexes() {
    let Some(url) = common::url() else { return };
    let (store, schema) = common::fresh_store(&url).await;
    store.register(namespace()).await.expect("register");
    store
        .register(sync_core::AppNamespace::new(
            "app",
            vec![sync_core::TableSpec::new("table", &["id"])],
        ))
        .await
        .expect("register");
    let mut conn = common::raw(&url, &schema).await;
    sqlx::query(
        "INSERT INTO shared_records (id, kind, record_type, created_at, hlc, node_id, \
         deleted_at, version, content_hash, object_storage_key, mime_type, size_bytes, \
         original_filename, origin_app_id, parent_id, label) \
         SELECT 'r' || g, 'data', 'image/jpeg', h, h, n, NULL, 1, 'hash', 'key', NULL, 0, \
                NULL, 'photos', NULL, repeat('x', 100) \
         FROM generate_series(1, 20000) AS g, \
              LATERAL (SELECT 'node-' || chr(97 + g % 3) AS n) AS node, \
              LATERAL (SELECT lpad(to_hex(g), 12, '0') || ':0000:' || n AS h) AS version",
    )
    .execute(&mut conn)
    .await
    .expect("populate records");
    sqlx::query(
        "INSERT INTO app_rows (app_id, table_name, pk, node_id, hlc, tombstone, op, row_json, \
         where_json) \
         SELECT 'app', 'table', '[\"k' || g || '\"]', n, h, FALSE, 'insert', \
                '{\"id\":\"k' || g || '\"}', NULL \
         FROM generate_series(1, 20000) AS g, \
              LATERAL (SELECT 'node-' || chr(97 + g % 3) AS n) AS node, \
              LATERAL (SELECT lpad(to_hex(g), 12, '0') || ':0000:' || n AS h) AS version",
    )
    .execute(&mut conn)
    .await
    .expect("populate rows");
    sqlx::query(
        "INSERT INTO coverage_floors (app_id, table_name, node_id, hlc) \
         SELECT s.app_id, s.table_name, n, lpad(to_hex(g), 12, '0') || ':0000:' || n \
         FROM generate_series(1, 20000) AS g, \
              LATERAL (SELECT 'node-' || chr(97 + g % 3) AS n) AS node, \
              LATERAL (SELECT CASE WHEN g <= 3 THEN '' WHEN g <= 6 THEN 'app' \
                                   ELSE 'app-' || g END AS app_id, \
                              CASE WHEN g <= 3 THEN '' ELSE 'table' END AS table_name) AS s",
    )
    .execute(&mut conn)
    .await
    .expect("populate floors");
    sqlx::query("ANALYZE shared_records, app_rows, coverage_floors")
        .execute(&mut conn)
        .await
        .expect("analyze");
    conn.close().await.expect("close");

    let plans = store.query_plans().await.expect("query plans");
    assert_eq!(plans.len(), 6);
    for p in &plans {
        let (table, index) = if p.name.starts_with("records.") {
            ("shared_records", "shared_records_node_hlc")
        } else {
            ("app_rows", "app_rows_node_hlc")
        };
        assert!(
            !p.plan.contains("Seq Scan"),
            "{}: sequential scan\n{}",
            p.name,
            p.plan
        );
        assert!(
            !p.plan
                .lines()
                .any(|l| l.contains("Bitmap Heap Scan") && !l.contains(" on coverage_floors")),
            "{}: reads the heap in bulk instead of walking the index\n{}",
            p.name,
            p.plan
        );
        assert!(
            !p.plan.contains("Sort"),
            "{}: sorts instead of reading in index order\n{}",
            p.name,
            p.plan
        );
        let scans: Vec<&str> = p
            .plan
            .lines()
            .filter(|l| l.contains(&format!(" on {table}")))
            .collect();
        assert!(
            !scans.is_empty(),
            "{}: no access to {table}\n{}",
            p.name,
            p.plan
        );
        for line in scans {
            assert!(
                line.contains(&format!("Index Only Scan using {index}"))
                    || line.contains(&format!("Index Only Scan Backward using {index}"))
                    || line.contains(&format!("Index Scan using {index}")),
                "{}: not through {index}: {line}\n{}",
                p.name,
                p.plan
            );
        }
        // Coverage also reads its stream's floors (decision 0008), by their primary key: an
        // index scan, or a bitmap of the few rows of the stream's key range.
        let floors: Vec<&str> = p
            .plan
            .lines()
            .filter(|l| l.contains(" on coverage_floors"))
            .collect();
        assert_eq!(
            floors.is_empty(),
            !p.name.contains("coverage"),
            "{}: coverage reads the floors, nothing else does\n{}",
            p.name,
            p.plan
        );
        for line in floors {
            assert!(
                line.contains("Index Scan using coverage_floors_pkey")
                    || line.contains("Index Only Scan using coverage_floors_pkey")
                    || line.contains("Bitmap Heap Scan on coverage_floors")
                    || line.contains("Bitmap Index Scan on coverage_floors_pkey"),
                "{}: floors not read by their key: {line}\n{}",
                p.name,
                p.plan
            );
        }
    }
    // Coverage reads each origin's maximum from the index alone, a handful of rows per probe.
    let coverage = plans
        .iter()
        .find(|p| p.name == "records.coverage")
        .expect("records.coverage");
    assert!(
        coverage
            .plan
            .contains("Index Only Scan Backward using shared_records_node_hlc"),
        "{}",
        coverage.plan
    );
    assert_eq!(
        RecordStore::coverage(&store).await.expect("coverage").len(),
        3
    );
    assert_eq!(
        AppRowStore::coverage(&store, "app", "table")
            .await
            .expect("coverage")
            .len(),
        3
    );
    store.close().await;
    common::drop_schemas(&url, &[schema]).await;
}

#[tokio::test]
async fn a_database_from_a_newer_schema_is_refused() {
    let Some(url) = common::url() else { return };
    let (store, schema) = common::fresh_store(&url).await;
    store.close().await;
    let supported = PostgresStore::schema_version();
    let mut conn = common::raw(&url, &schema).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from a future version', TRUE, '\\x00', 0)",
    )
    .bind(supported + 1)
    .execute(&mut conn)
    .await
    .expect("fake a future migration");
    conn.close().await.expect("close");

    match PostgresStore::connect_with(&url, &common::options(&schema)).await {
        Err(StoreError::NewerSchema {
            found,
            supported: s,
        }) => {
            assert_eq!(found, supported + 1);
            assert_eq!(s, supported);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    common::drop_schemas(&url, &[schema]).await;
}

/// A schema a crash left half migrated: PostgreSQL commits each migration on its own (as
/// sqlx runs them), so a server killed between two leaves the first ones applied. The next
/// store to connect applies the rest, and works.
#[tokio::test]
async fn a_half_migrated_schema_is_migrated_the_rest_of_the_way() {
    let Some(url) = common::url() else { return };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&source)
        .expect("the migrations")
        .map(|e| e.expect("a migration").path())
        .collect();
    files.sort();
    let all = files.len() as i64;
    assert!(all >= 2, "at least two migrations to stop between");
    assert_eq!(all, PostgresStore::schema_version());
    // What a server killed after its second-to-last migration committed left behind.
    let first = tempfile::tempdir().expect("temp dir");
    for f in &files[..files.len() - 1] {
        std::fs::copy(f, first.path().join(f.file_name().unwrap())).expect("copy");
    }
    let schema = common::fresh_schema();
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("create schema");
    admin.close().await.expect("close");
    let mut conn = common::raw(&url, &schema).await;
    sqlx::migrate::Migrator::new(first.path())
        .await
        .expect("the first migrations")
        .run(&mut conn)
        .await
        .expect("migrate part of the way");
    const APPLIED: &str = "SELECT COUNT(*) FROM _sqlx_migrations";
    let applied: i64 = sqlx::query_scalar(APPLIED)
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(applied, all - 1);

    let store = PostgresStore::connect_with(&url, &common::options(&schema))
        .await
        .expect("a half-migrated schema is migrated on connect");
    let applied: i64 = sqlx::query_scalar(APPLIED)
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(applied, all);
    conn.close().await.expect("close");
    // And it works: a record, and a packed blob (the last migration's table).
    let r = record("r1", &hlc(5, 0, "node-a"));
    assert_eq!(
        RecordStore::apply(&store, std::slice::from_ref(&r))
            .await
            .expect("apply"),
        vec![Applied::Written]
    );
    assert_eq!(RecordStore::get(&store, "r1").await.expect("get"), Some(r));
    let blob = sync_testkit::conformance::packed("shared/k", b"bytes", 1);
    let pack = store.blob_pack();
    assert_eq!(
        sync_core::BlobPack::put(&pack, std::slice::from_ref(&blob), false)
            .await
            .expect("pack"),
        vec![true]
    );
    store.close().await;
    common::drop_schemas(&url, &[schema]).await;
}

/// Version columns compare bytewise (`COLLATE "C"`) whatever the database's collation.
#[tokio::test]
async fn version_columns_compare_bytewise() {
    let Some(url) = common::url() else { return };
    let (store, schema) = common::fresh_store(&url).await;
    let mut conn = common::raw(&url, &schema).await;
    let collations: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, collation_name::text \
         FROM information_schema.columns \
         WHERE table_schema = $1 AND column_name IN ('hlc', 'node_id', 'app_id', 'table_name', 'pk') \
         ORDER BY table_name, column_name",
    )
    .bind(&schema)
    .fetch_all(&mut conn)
    .await
    .expect("columns");
    // app_namespaces.app_id; app_rows: 5; coverage_floors: 4; shared_records: 2.
    assert_eq!(collations.len(), 12, "{collations:?}");
    for (table, column, collation) in &collations {
        assert_eq!(collation.as_deref(), Some("C"), "{table}.{column}");
    }
    conn.close().await.expect("close");

    // Node ids whose order differs under a linguistic collation ('-' and '.' vs letters).
    let tie = [
        hlc(5, 0, "a-z"),
        hlc(5, 0, "a.b"),
        hlc(5, 0, "a_c"),
        hlc(5, 0, "aB"),
    ];
    let mut expected = tie.to_vec();
    expected.sort();
    for v in &tie {
        RecordStore::apply(&store, &[record("x", v)])
            .await
            .expect("apply");
    }
    let stored = RecordStore::get(&store, "x")
        .await
        .expect("get")
        .expect("x");
    assert_eq!(
        Some(&stored.updated_at),
        expected.last(),
        "the byte-wise largest wins"
    );
    store.close().await;
    common::drop_schemas(&url, &[schema]).await;
}

/// A batch that fails inside the database (a trigger refusing its last item, after the
/// others were written in the same transaction) leaves nothing of itself behind.
#[tokio::test]
async fn nothing_half_written_survives_a_failed_batch() {
    let Some(url) = common::url() else { return };
    let (store, schema) = common::fresh_store(&url).await;
    store.register(namespace()).await.expect("register");
    let old = hlc(10, 0, "node-a");
    RecordStore::apply(&store, &[record("r1", &old)])
        .await
        .expect("seed");
    AppRowStore::apply(&store, &[note("k1", &old)])
        .await
        .expect("seed");
    let record_coverage = RecordStore::coverage(&store).await.expect("coverage");
    let row_coverage = AppRowStore::coverage(&store, APP, NOTES)
        .await
        .expect("coverage");

    let mut conn = common::raw(&url, &schema).await;
    for stmt in [
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.id = 'zz-poison' THEN RAISE EXCEPTION 'injected failure'; END IF; \
         RETURN NEW; END $$",
        "CREATE TRIGGER poison BEFORE INSERT ON shared_records \
         FOR EACH ROW EXECUTE FUNCTION poison()",
        "CREATE FUNCTION poison_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.pk = '[\"zz-poison\"]' THEN RAISE EXCEPTION 'injected failure'; END IF; \
         RETURN NEW; END $$",
        "CREATE TRIGGER poison_row BEFORE INSERT ON app_rows \
         FOR EACH ROW EXECUTE FUNCTION poison_row()",
    ] {
        sqlx::query(stmt).execute(&mut conn).await.expect(stmt);
    }

    // Batches are written in key order: the poison sorts last, after the good items.
    let new = hlc(20, 0, "node-b");
    let failed = RecordStore::apply(
        &store,
        &[
            record("zz-poison", &new),
            record("r1", &new),
            record("r2", &new),
        ],
    )
    .await;
    assert!(
        matches!(failed, Err(StoreError::Fatal { .. })),
        "{failed:?}"
    );
    assert_eq!(
        RecordStore::get(&store, "r1").await.expect("get"),
        Some(record("r1", &old))
    );
    assert_eq!(RecordStore::get(&store, "r2").await.expect("get"), None);
    assert_eq!(
        RecordStore::coverage(&store).await.expect("coverage"),
        record_coverage
    );

    let failed = AppRowStore::apply(
        &store,
        &[note("zz-poison", &new), note("k1", &new), note("k2", &new)],
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
    assert_eq!(
        RecordStore::apply(&store, &[record("r1", &new), record("r2", &new)])
            .await
            .expect("apply without the poison"),
        [Applied::Written, Applied::Written]
    );
    conn.close().await.expect("close");
    store.close().await;
    common::drop_schemas(&url, &[schema]).await;
}

/// The coverage floor a replacement raises (decision 0008) is written in the batch's
/// transaction: when that write fails, the replacement is rolled back with it; when it
/// succeeds, every later reader sees the floor.
#[tokio::test]
async fn a_failed_floor_write_rolls_back_the_batch() {
    let Some(url) = common::url() else { return };
    let (store, schema) = common::fresh_store(&url).await;
    store.register(namespace()).await.expect("register");
    let old = hlc(10, 0, "node-a");
    let new = hlc(20, 0, "node-b");
    RecordStore::apply(&store, &[record("r1", &old)])
        .await
        .expect("seed");
    AppRowStore::apply(&store, &[note("k1", &old)])
        .await
        .expect("seed");

    let mut conn = common::raw(&url, &schema).await;
    for stmt in [
        "CREATE FUNCTION poison_floor() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'injected failure'; END $$",
        "CREATE TRIGGER poison_floor BEFORE INSERT ON coverage_floors \
         FOR EACH ROW EXECUTE FUNCTION poison_floor()",
    ] {
        sqlx::query(stmt).execute(&mut conn).await.expect(stmt);
    }
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
    // A batch that replaces nothing writes no floor.
    assert_eq!(
        RecordStore::apply(&store, &[record("r2", &new)])
            .await
            .expect("apply"),
        [Applied::Written]
    );

    sqlx::query("DROP TRIGGER poison_floor ON coverage_floors")
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
    store.close().await;
    common::drop_schemas(&url, &[schema]).await;
}

/// A read that fails is an error, never an empty result.
#[tokio::test]
async fn a_failed_read_is_an_error() {
    let Some(url) = common::url() else { return };
    let (store, schema) = common::fresh_store(&url).await;
    RecordStore::apply(&store, &[record("r1", &hlc(1, 0, "node-a"))])
        .await
        .expect("apply");
    let mut conn = common::raw(&url, &schema).await;
    sqlx::query("UPDATE shared_records SET hlc = 'garbage' WHERE id = 'r1'")
        .execute(&mut conn)
        .await
        .expect("corrupt");
    conn.close().await.expect("close");
    let a = NodeId::new("node-a").expect("node id");
    assert!(matches!(
        RecordStore::coverage(&store).await,
        Err(StoreError::Fatal { .. })
    ));
    assert!(RecordStore::get(&store, "r1").await.is_err());

    store.close().await;
    assert!(RecordStore::coverage(&store).await.is_err());
    assert!(RecordStore::scan(&store, &a, None, 10).await.is_err());
    assert!(AppRowStore::namespace(&store, APP).await.is_err());
    common::drop_schemas(&url, &[schema]).await;
}

#[tokio::test]
async fn bad_connection_settings_are_refused() {
    let Some(url) = common::url() else { return };
    let bad =
        PostgresStore::connect_with(&url, &PostgresOptions::new().with_schema("Bad-Name")).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    let bad = PostgresStore::connect("not a url").await;
    assert!(bad.is_err());
}

/// Two stores (two pools: two server processes) apply conflicting versions of the same
/// items at the same time, in opposite orders, while a reader watches coverage. The highest
/// version of every item wins, no batch deadlocks, and coverage never names a version that
/// is not (or is no longer the newest) committed: every watermark the reader sees is backed
/// by a stored item at that version or newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_max_wins_and_coverage_never_runs_ahead() {
    let Some(url) = common::url() else { return };
    let (first, schema) = common::fresh_store(&url).await;
    let second = PostgresStore::connect_with(&url, &common::options(&schema))
        .await
        .expect("second connect");
    let reader = PostgresStore::connect_with(&url, &common::options(&schema))
        .await
        .expect("reader connect");
    const ITEMS: u64 = 30;
    const ROUNDS: u64 = 12;
    // A version's wall time names its item (wall % 1000), so the reader can check it.
    fn version(round: u64, bump: u64, item: u64, node: &str) -> Hlc {
        hlc((round * 10 + bump) * 1000 + item, 0, node)
    }

    // Each writer returns, per item, the highest version it offered, and the highest of its
    // versions the store wrote (held at some point, so covered for good: decision 0008).
    let writer = |store: PostgresStore, node: &'static str, seed: u64| {
        tokio::spawn(async move {
            let mut rng = SplitMix64::new(seed);
            let mut offered: BTreeMap<u64, Hlc> = BTreeMap::new();
            let mut written = Watermarks::new();
            for round in 0..ROUNDS {
                let mut batch: Vec<_> = (0..ITEMS)
                    .map(|i| {
                        let v = version(round, rng.below(10), i, node);
                        offered
                            .entry(i)
                            .and_modify(|top| {
                                if v > *top {
                                    *top = v.clone()
                                }
                            })
                            .or_insert_with(|| v.clone());
                        record(&format!("r{i:03}"), &v)
                    })
                    .collect();
                rng.shuffle(&mut batch);
                let out = RecordStore::apply(&store, &batch).await.expect("apply");
                assert_eq!(out.len(), batch.len());
                for (r, outcome) in batch.iter().zip(out) {
                    if outcome == Applied::Written {
                        written.advance(&r.updated_at);
                    }
                }
            }
            (offered, written)
        })
    };
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let reader = reader.clone();
        tokio::spawn(async move {
            let mut checks = 0_u64;
            // Bounded: the writers finish; then one last look.
            for _ in 0..100_000 {
                let finished = done.load(Ordering::SeqCst);
                let coverage = RecordStore::coverage(&reader).await.expect("coverage");
                for (_, top) in coverage.iter() {
                    let item = top.wall_time() % 1000;
                    let stored = RecordStore::get(&reader, &format!("r{item:03}"))
                        .await
                        .expect("get")
                        .unwrap_or_else(|| panic!("coverage {top} names a missing item"));
                    // Versions only grow, so the item now holds `top` or something newer.
                    assert!(
                        stored.updated_at >= *top,
                        "coverage {top} ran ahead of the committed item ({})",
                        stored.updated_at
                    );
                    checks += 1;
                }
                if finished {
                    break;
                }
                tokio::task::yield_now().await;
            }
            checks
        })
    };
    let a = writer(first.clone(), "node-a", 1);
    let b = writer(second.clone(), "node-b", 2);
    let (offered_a, written_a) = a.await.expect("writer a");
    let (offered_b, written_b) = b.await.expect("writer b");
    done.store(true, Ordering::SeqCst);
    let checks = watcher.await.expect("watcher");
    assert!(checks > 0);

    let mut expected = Watermarks::new();
    for i in 0..ITEMS {
        let top = std::cmp::max(&offered_a[&i], &offered_b[&i]).clone();
        let stored = RecordStore::get(&reader, &format!("r{i:03}"))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(stored.updated_at, top, "item r{i:03}: the maximum wins");
        expected.advance(&top);
    }
    // Per origin, the highest version ever written: a winner, or one replaced later whose
    // floor was raised exactly, even when the two batches raced to insert the same record.
    let written = written_a.merged(&written_b);
    assert_eq!(
        written.clone().merged(&expected),
        written,
        "every winner was written"
    );
    assert_eq!(
        RecordStore::coverage(&reader).await.expect("coverage"),
        written,
        "coverage is the fold over every version written (winners and floors)"
    );
    for s in [first, second, reader] {
        s.close().await;
    }
    common::drop_schemas(&url, &[schema]).await;
}
