//! Conformance suites, one per port, run unchanged against every implementation.
//!
//! Every backend (in-memory, SQLite, PostgreSQL) runs the same cases, so a behaviour the
//! exchange round relies on is pinned down once:
//!
//! - [`record_store_suite`]: last-write-wins apply, coverage (tombstones included, monotone
//!   when another node's write replaces an origin's version: decision 0008),
//!   `coverage_below` (honouring the floor, never at or above its bound), per-origin scans,
//!   get, and a seeded randomized check.
//! - [`app_row_store_suite`]: the same for app rows, plus namespace registration, batch
//!   atomicity (an invalid row refuses the whole batch) and tombstones with composite keys.
//! - [`sync_state_suite`]: per-channel state, the clock, commit replacing (not merging).
//! - [`blob_pack_suite`]: small blobs by key (decision 0014): batch reads in key order of the
//!   request, keep-or-replace writes, removal, listings by prefix in pages.
//! - [`record_store_reopen`], [`app_row_store_reopen`], [`sync_state_reopen`],
//!   [`blob_pack_reopen`]: what one instance wrote, a second instance opened on the same
//!   backend reads back.
//!
//! Each suite takes a factory that makes a fresh, empty store per case; each case is also
//! public, taking the store it runs against. Cases panic with a message naming the case
//! (and the seed, for randomized ones) when the implementation disagrees.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use serde_json::{json, Value};
use sync_core::{
    row_key, AppNamespace, AppRowStore, Applied, BlobPack, Channel, ChannelState, PackedBlob,
    RecordStore, StoreError, SyncStateStore, TableSpec,
};
use sync_hlc::{ClockState, Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, RowOp, RowValues, SharedRecord, RESERVED_TABLE};

/// The app the app-row cases register.
pub const APP: &str = "conformance-app";
/// A table keyed by `id`.
pub const NOTES: &str = "notes";
/// A table keyed by `(tenant, id)`.
pub const MEMBERS: &str = "members";

/// Seeds the randomized cases run by the suites.
pub const RANDOM_SEEDS: [u64; 6] = [1, 2, 3, 0x5eed, 0xdead_beef, 20_261_125];

/// The namespace the app-row cases register: [`NOTES`] (key `id`), [`MEMBERS`] (key
/// `(tenant, id)`) and the reserved table.
pub fn namespace() -> AppNamespace {
    AppNamespace::new(
        APP,
        vec![
            TableSpec::new(NOTES, &["id"]),
            TableSpec::new(MEMBERS, &["tenant", "id"]),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Suites

/// Runs every record-store case, each against a fresh store from `make`.
pub async fn record_store_suite<F, Fut>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn RecordStore>>,
{
    records_lww(&*make().await).await;
    records_lww_within_batch(&*make().await).await;
    records_get_round_trip(&*make().await).await;
    records_coverage(&*make().await).await;
    records_coverage_survives_replacement(&*make().await).await;
    records_coverage_below(&*make().await).await;
    records_coverage_below_floor(&*make().await).await;
    records_scan(&*make().await).await;
    for seed in RANDOM_SEEDS {
        records_random(&*make().await, seed).await;
    }
}

/// Runs every app-row-store case, each against a fresh store from `make`.
pub async fn app_row_store_suite<F, Fut>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn AppRowStore>>,
{
    rows_namespaces(&*make().await).await;
    rows_lww(&*make().await).await;
    rows_batch_atomic(&*make().await).await;
    rows_get_by_key(&*make().await).await;
    rows_coverage(&*make().await).await;
    rows_coverage_survives_replacement(&*make().await).await;
    rows_coverage_below(&*make().await).await;
    rows_coverage_below_floor(&*make().await).await;
    rows_scan(&*make().await).await;
    rows_unknown_table(&*make().await).await;
    rows_tombstone_composite_key(&*make().await).await;
    for seed in RANDOM_SEEDS {
        rows_random(&*make().await, seed).await;
    }
}

/// Runs every sync-state case, each against a fresh store from `make`.
pub async fn sync_state_suite<F, Fut>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn SyncStateStore>>,
{
    state_never_synced(&*make().await).await;
    state_commit_round_trip(&*make().await).await;
    state_channels_independent(&*make().await).await;
    state_commit_replaces(&*make().await).await;
    state_save_clock(&*make().await).await;
}

/// Runs every blob-pack case, each against a fresh pack from `make`.
pub async fn blob_pack_suite<F, Fut>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn BlobPack>>,
{
    pack_round_trip(&*make().await).await;
    pack_keep_or_replace(&*make().await).await;
    pack_remove(&*make().await).await;
    pack_list(&*make().await).await;
    pack_large_batch(&*make().await).await;
}

// ---------------------------------------------------------------------------------------------
// Builders

/// A node id (panics on an invalid one: test input).
pub fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("valid node id")
}

/// A timestamp.
pub fn hlc(wall_time: u64, counter: u16, node_id: &str) -> Hlc {
    Hlc::new(wall_time, counter, node(node_id)).expect("valid timestamp")
}

/// A live shared record at `version`, with every optional field set and a label naming the
/// version (so a test can tell which version is stored).
pub fn record(id: &str, version: &Hlc) -> SharedRecord {
    SharedRecord {
        id: id.to_string(),
        kind: "data".into(),
        record_type: "image/jpeg".into(),
        created_at: Hlc::new(1, 0, version.node_id().clone()).expect("valid timestamp"),
        updated_at: version.clone(),
        deleted_at: None,
        version: 1,
        content_hash: format!("hash-of-{id}"),
        object_storage_key: format!("shared/{id}"),
        mime_type: Some("image/jpeg".into()),
        size_bytes: 1234,
        original_filename: Some(format!("{id}.jpg")),
        origin_app_id: "photos".into(),
        parent_id: Some("parent-1".into()),
        label: Some(format!("v{version}")),
    }
}

/// A tombstone of a shared record at `version`.
pub fn record_tombstone(id: &str, version: &Hlc) -> SharedRecord {
    SharedRecord {
        deleted_at: Some(version.clone()),
        ..record(id, version)
    }
}

fn values(v: Value) -> RowValues {
    match v {
        Value::Object(map) => map,
        other => panic!("row values must be a JSON object, got {other}"),
    }
}

/// An insert of `row` into `APP.table` at `version`.
pub fn row_insert(table: &str, version: &Hlc, row: Value) -> AppRow {
    AppRow {
        timestamp: version.clone(),
        app_id: APP.into(),
        table: table.into(),
        op: RowOp::Insert,
        row: Some(values(row)),
        where_: None,
    }
}

/// A delete in `APP.table` at `version` naming its key in `where`.
pub fn row_delete(table: &str, version: &Hlc, where_: Value) -> AppRow {
    AppRow {
        timestamp: version.clone(),
        app_id: APP.into(),
        table: table.into(),
        op: RowOp::Delete,
        row: None,
        where_: Some(values(where_)),
    }
}

/// A note (table [`NOTES`]) with key `id` at `version`.
pub fn note(id: &str, version: &Hlc) -> AppRow {
    row_insert(
        NOTES,
        version,
        json!({ "id": id, "body": format!("v{version}"), "deleted_at": null }),
    )
}

fn note_key(id: &str) -> String {
    json!([id]).to_string()
}

fn spec(table: &str) -> TableSpec {
    namespace()
        .table(table)
        .cloned()
        .unwrap_or_else(|| panic!("table {table} is in the conformance namespace"))
}

fn wm(hlcs: &[&Hlc]) -> Watermarks {
    hlcs.iter().map(|h| (*h).clone()).collect()
}

fn expect_ok<T>(case: &str, what: &str, r: Result<T, StoreError>) -> T {
    r.unwrap_or_else(|e| panic!("[{case}] {what} failed: {e}"))
}

fn expect_invalid<T: std::fmt::Debug>(case: &str, what: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("[{case}] {what}: expected StoreError::Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Record store cases

async fn apply_records(
    store: &dyn RecordStore,
    case: &str,
    records: &[SharedRecord],
) -> Vec<Applied> {
    let out = expect_ok(case, "apply", store.apply(records).await);
    assert_eq!(
        out.len(),
        records.len(),
        "[{case}] apply returns one outcome per record"
    );
    out
}

async fn stored_record(store: &dyn RecordStore, case: &str, id: &str) -> Option<SharedRecord> {
    expect_ok(case, "get", store.get(id).await)
}

/// Last-write-wins: newer wins, an equal version is kept, an older one is superseded, and a
/// tie on `(wall time, counter)` goes to the larger node id.
pub async fn records_lww(store: &dyn RecordStore) {
    const CASE: &str = "records_lww";
    let v10 = hlc(10, 0, "node-a");
    let v20 = hlc(20, 0, "node-a");
    let v15 = hlc(15, 0, "node-b");

    assert_eq!(
        stored_record(store, CASE, "r1").await,
        None,
        "[{CASE}] empty store"
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r1", &v10)]).await,
        [Applied::Written],
        "[{CASE}] first version is written"
    );
    assert_eq!(
        stored_record(store, CASE, "r1").await,
        Some(record("r1", &v10)),
        "[{CASE}] stored as applied"
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r1", &v10)]).await,
        [Applied::Kept],
        "[{CASE}] a repeat delivery is kept"
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r1", &v20)]).await,
        [Applied::Written],
        "[{CASE}] newer wins"
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r1", &v15)]).await,
        [Applied::Superseded],
        "[{CASE}] older (from another node) loses"
    );
    assert_eq!(
        stored_record(store, CASE, "r1").await,
        Some(record("r1", &v20)),
        "[{CASE}] a superseded offer changes nothing"
    );

    // Tie on (wall time, counter): the larger node id wins, whichever arrives first.
    let tie_a = hlc(30, 7, "node-a");
    let tie_b = hlc(30, 7, "node-b");
    assert_eq!(
        apply_records(store, CASE, &[record("r2", &tie_a)]).await,
        [Applied::Written]
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r2", &tie_b)]).await,
        [Applied::Written],
        "[{CASE}] tie broken by the larger node id"
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r2", &tie_a)]).await,
        [Applied::Superseded],
        "[{CASE}] the smaller node id loses the tie"
    );
    // A node id that is a prefix of another sorts first.
    let tie_ab = hlc(30, 7, "node-b.1");
    assert_eq!(
        apply_records(store, CASE, &[record("r2", &tie_ab)]).await,
        [Applied::Written],
        "[{CASE}] node-b.1 > node-b"
    );
    // A higher counter beats a larger node id; a higher wall time beats a higher counter.
    assert_eq!(
        apply_records(store, CASE, &[record("r2", &hlc(30, 8, "a"))]).await,
        [Applied::Written]
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r2", &hlc(31, 0, "a"))]).await,
        [Applied::Written]
    );
    assert_eq!(
        apply_records(store, CASE, &[record("r2", &hlc(30, 0xffff, "z"))]).await,
        [Applied::Superseded]
    );
    assert_eq!(
        stored_record(store, CASE, "r2").await,
        Some(record("r2", &hlc(31, 0, "a")))
    );

    // A tombstone travels like an update and can be overwritten by a newer live version.
    let del = hlc(40, 0, "node-a");
    assert_eq!(
        apply_records(store, CASE, &[record_tombstone("r1", &del)]).await,
        [Applied::Written]
    );
    assert_eq!(
        stored_record(store, CASE, "r1").await,
        Some(record_tombstone("r1", &del))
    );
    let revived = hlc(41, 0, "node-b");
    assert_eq!(
        apply_records(store, CASE, &[record("r1", &revived)]).await,
        [Applied::Written]
    );
    assert_eq!(
        stored_record(store, CASE, "r1").await,
        Some(record("r1", &revived))
    );
}

/// Outcomes within one batch are decided in order, each against what the batch stored
/// before it.
pub async fn records_lww_within_batch(store: &dyn RecordStore) {
    const CASE: &str = "records_lww_within_batch";
    let v3 = hlc(3, 0, "n1");
    let v5 = hlc(5, 0, "n1");
    let v4 = hlc(4, 0, "n2");
    let out = apply_records(
        store,
        CASE,
        &[
            record("x", &v5),
            record("x", &v3),
            record("x", &v5),
            record("y", &v4),
            record("x", &hlc(6, 0, "n2")),
        ],
    )
    .await;
    assert_eq!(
        out,
        [
            Applied::Written,
            Applied::Superseded,
            Applied::Kept,
            Applied::Written,
            Applied::Written
        ],
        "[{CASE}] per-position outcomes"
    );
    assert_eq!(
        stored_record(store, CASE, "x").await,
        Some(record("x", &hlc(6, 0, "n2")))
    );
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&v5, &hlc(6, 0, "n2")]),
        "[{CASE}] n1's x@5 was held, then replaced by x@6 in the same batch: n1 stays \
         covered up to 5; n2's max is x@6 (y@4 is below it)"
    );
    assert_eq!(
        apply_records(store, CASE, &[]).await,
        Vec::<Applied>::new(),
        "[{CASE}] empty batch"
    );
}

/// Every field survives the round trip, including absent optional ones and large numbers.
pub async fn records_get_round_trip(store: &dyn RecordStore) {
    const CASE: &str = "records_get_round_trip";
    let full = record("full", &hlc(0x0000_ffff_ffff_ffff, 0xffff, "node-z"));
    let sparse = SharedRecord {
        id: "01J9Z3K8Q4W5E6R7T8Y9U0I1O2".into(),
        kind: "data".into(),
        record_type: String::new(),
        created_at: hlc(5, 1, "creator"),
        updated_at: hlc(9, 2, "writer"),
        deleted_at: None,
        version: 42,
        content_hash: String::new(),
        object_storage_key: String::new(),
        mime_type: None,
        size_bytes: (1 << 53) + 1,
        original_filename: None,
        origin_app_id: "notes-app".into(),
        parent_id: None,
        label: None,
    };
    let unicode = SharedRecord {
        label: Some("Ünïcødé ✓ 'quotes' \"double\" ; DROP TABLE x; --".into()),
        original_filename: Some("名前.txt".into()),
        ..record("unicode", &hlc(7, 0, "node-a"))
    };
    let dead = SharedRecord {
        deleted_at: Some(hlc(8, 3, "node-b")),
        ..record("dead", &hlc(8, 3, "node-b"))
    };
    let all = [full, sparse, unicode, dead];
    assert_eq!(
        apply_records(store, CASE, &all).await,
        [Applied::Written; 4]
    );
    for r in &all {
        assert_eq!(
            stored_record(store, CASE, &r.id).await.as_ref(),
            Some(r),
            "[{CASE}] record {} round-trips",
            r.id
        );
    }
    assert_eq!(stored_record(store, CASE, "missing").await, None);
    assert_eq!(stored_record(store, CASE, "").await, None);
}

/// Coverage per origin node is the highest stored version, tombstones included.
pub async fn records_coverage(store: &dyn RecordStore) {
    const CASE: &str = "records_coverage";
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        Watermarks::new(),
        "[{CASE}] empty store covers nothing"
    );
    let a1 = hlc(10, 0, "node-a");
    let a2 = hlc(12, 0, "node-a");
    let a3 = hlc(14, 0, "node-a");
    let b1 = hlc(11, 0, "node-b");
    let c1 = hlc(9, 5, "node-c");
    apply_records(
        store,
        CASE,
        &[
            record("r1", &a1),
            record("r2", &b1),
            record("r3", &a2),
            record("r4", &c1),
        ],
    )
    .await;
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a2, &b1, &c1])
    );
    // The highest version of node-a is a tombstone: it still counts.
    apply_records(store, CASE, &[record_tombstone("r1", &a3)]).await;
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a3, &b1, &c1]),
        "[{CASE}] a tombstone is covered"
    );
}

/// Coverage is monotone (decision 0008): when another node's write replaces an origin
/// node's highest version, that node's coverage stays at the replaced version (the store
/// held it; what replaced it is newer), even when nothing of that node is stored any more.
/// An offer that loses (superseded) or repeats (kept) was never held in addition and raises
/// nothing.
pub async fn records_coverage_survives_replacement(store: &dyn RecordStore) {
    const CASE: &str = "records_coverage_survives_replacement";
    let a5 = hlc(5, 0, "node-a");
    let a10 = hlc(10, 0, "node-a");
    let b20 = hlc(20, 0, "node-b");
    let b30 = hlc(30, 0, "node-b");
    apply_records(store, CASE, &[record("x", &a10), record("y", &a5)]).await;
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a10])
    );
    assert_eq!(
        apply_records(store, CASE, &[record("x", &b20)]).await,
        [Applied::Written]
    );
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a10, &b20]),
        "[{CASE}] node-a's replaced x@10 stays covered (it does not fall back to y@5)"
    );
    apply_records(store, CASE, &[record_tombstone("y", &b30)]).await;
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a10, &b30]),
        "[{CASE}] node-a holds nothing any more and is still covered up to 10"
    );
    assert_eq!(
        expect_ok(CASE, "scan", store.scan(&node("node-a"), None, 10).await),
        Vec::<SharedRecord>::new(),
        "[{CASE}] nothing of node-a left to scan"
    );
    // Losing and repeated offers change nothing: node-c was never held.
    assert_eq!(
        apply_records(
            store,
            CASE,
            &[
                record("x", &hlc(15, 0, "node-c")),
                record("x", &b20),
                record("x", &a10)
            ]
        )
        .await,
        [Applied::Superseded, Applied::Kept, Applied::Superseded]
    );
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a10, &b30]),
        "[{CASE}] a superseded or kept offer raises no coverage"
    );
    // Replacing a lower version of node-a does not lower its floor.
    apply_records(store, CASE, &[record("z", &hlc(3, 0, "node-a"))]).await;
    apply_records(store, CASE, &[record("z", &hlc(40, 0, "node-b"))]).await;
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a10, &hlc(40, 0, "node-b")]),
        "[{CASE}] the floor only rises"
    );
    // An origin replacing its own version: the newer one is stored and covered.
    apply_records(store, CASE, &[record("z", &hlc(45, 0, "node-b"))]).await;
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a10, &hlc(45, 0, "node-b")])
    );
}

/// `coverage_below`: the highest stored version of one origin strictly below a bound.
pub async fn records_coverage_below(store: &dyn RecordStore) {
    const CASE: &str = "records_coverage_below";
    let a = node("node-a");
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            store.coverage_below(&a, &hlc(100, 0, "node-a")).await
        ),
        None,
        "[{CASE}] empty store"
    );
    let a1 = hlc(1, 0, "node-a");
    let a3 = hlc(3, 0, "node-a");
    let a5 = hlc(5, 0, "node-a");
    let b4 = hlc(4, 0, "node-b");
    apply_records(
        store,
        CASE,
        &[
            record("r5", &a5),
            record("r1", &a1),
            record("b", &b4),
            record_tombstone("r3", &a3),
        ],
    )
    .await;
    let below = |bound: Hlc| async move {
        expect_ok(
            CASE,
            "coverage_below",
            store.coverage_below(&node("node-a"), &bound).await,
        )
    };
    assert_eq!(
        below(a5.clone()).await,
        Some(a3.clone()),
        "[{CASE}] strictly below"
    );
    assert_eq!(below(hlc(4, 0, "node-a")).await, Some(a3.clone()));
    assert_eq!(below(hlc(3, 1, "node-a")).await, Some(a3.clone()));
    assert_eq!(below(a3.clone()).await, Some(a1.clone()));
    assert_eq!(
        below(a1.clone()).await,
        None,
        "[{CASE}] nothing below the lowest"
    );
    assert_eq!(below(hlc(99, 0, "node-a")).await, Some(a5.clone()));
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            store
                .coverage_below(&node("node-b"), &hlc(99, 0, "node-b"))
                .await
        ),
        Some(b4),
        "[{CASE}] per origin"
    );
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            store
                .coverage_below(&node("node-c"), &hlc(99, 0, "node-c"))
                .await
        ),
        None,
        "[{CASE}] unknown origin"
    );
}

/// `coverage_below` honours the floor: the highest version of the origin strictly below the
/// bound that the store holds or has replaced, and never a version at or above the bound
/// (under-reporting is safe, over-reporting is not).
pub async fn records_coverage_below_floor(store: &dyn RecordStore) {
    const CASE: &str = "records_coverage_below_floor";
    let a = node("node-a");
    let a1 = hlc(1, 0, "node-a");
    let a3 = hlc(3, 0, "node-a");
    let a5 = hlc(5, 0, "node-a");
    apply_records(
        store,
        CASE,
        &[record("r1", &a1), record("r3", &a3), record("r5", &a5)],
    )
    .await;
    // node-b replaces node-a's newest version: node-a's floor is 5.
    apply_records(store, CASE, &[record("r5", &hlc(6, 0, "node-b"))]).await;
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        wm(&[&a5, &hlc(6, 0, "node-b")]),
        "[{CASE}] coverage does not go down"
    );
    let below = |bound: Hlc| {
        let a = a.clone();
        async move {
            let got = expect_ok(
                CASE,
                "coverage_below",
                store.coverage_below(&a, &bound).await,
            );
            assert!(
                got.as_ref().is_none_or(|g| *g < bound),
                "[{CASE}] coverage_below({bound}) = {got:?} is not strictly below its bound"
            );
            got
        }
    };
    assert_eq!(
        below(hlc(9, 0, "node-a")).await,
        Some(a5.clone()),
        "[{CASE}] the floor counts"
    );
    assert_eq!(
        below(hlc(5, 1, "node-a")).await,
        Some(a5.clone()),
        "[{CASE}] the floor just below the bound"
    );
    assert_eq!(
        below(a5.clone()).await,
        Some(a3.clone()),
        "[{CASE}] a floor at the bound is not reported; the stored version below it is"
    );
    assert_eq!(below(hlc(4, 0, "node-a")).await, Some(a3.clone()));
    assert_eq!(below(a3.clone()).await, Some(a1.clone()));
    assert_eq!(below(a1.clone()).await, None);
    // node-a's lowest version is replaced too; the floor stays 5, and below 3 nothing
    // is reported any more (the floor keeps the maximum only: an under-report, safe).
    apply_records(store, CASE, &[record("r1", &hlc(7, 0, "node-b"))]).await;
    assert_eq!(below(a3.clone()).await, None);
    assert_eq!(below(a5.clone()).await, Some(a3.clone()));
    assert_eq!(below(hlc(99, 0, "node-a")).await, Some(a5.clone()));
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            store
                .coverage_below(&node("node-b"), &hlc(99, 0, "node-b"))
                .await
        ),
        Some(hlc(7, 0, "node-b")),
        "[{CASE}] per origin"
    );
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            store
                .coverage_below(&node("node-c"), &hlc(99, 0, "node-c"))
                .await
        ),
        None,
        "[{CASE}] unknown origin"
    );
}

/// Scans return one origin's records strictly above the bound, in version order, up to the
/// limit.
pub async fn records_scan(store: &dyn RecordStore) {
    const CASE: &str = "records_scan";
    let a = node("node-a");
    let a_versions: Vec<Hlc> = (1..=6).map(|i| hlc(i * 10, 0, "node-a")).collect();
    let mut batch: Vec<SharedRecord> = a_versions
        .iter()
        .enumerate()
        .map(|(i, v)| record(&format!("a{i}"), v))
        .collect();
    batch.push(record("b0", &hlc(15, 0, "node-b")));
    batch.push(record("b1", &hlc(35, 0, "node-b")));
    batch.push(record("ab", &hlc(25, 0, "node-ab")));
    // node-a's highest version is a tombstone; apply out of version order.
    batch[5] = record_tombstone("a5", &a_versions[5]);
    batch.reverse();
    apply_records(store, CASE, &batch).await;

    let versions =
        |rs: Vec<SharedRecord>| -> Vec<Hlc> { rs.into_iter().map(|r| r.updated_at).collect() };
    let scan = |above: Option<Hlc>, limit: usize| {
        let a = a.clone();
        async move {
            versions(expect_ok(
                CASE,
                "scan",
                store.scan(&a, above.as_ref(), limit).await,
            ))
        }
    };
    assert_eq!(
        scan(None, 100).await,
        a_versions,
        "[{CASE}] all of node-a, in order"
    );
    assert_eq!(scan(None, 2).await, a_versions[..2], "[{CASE}] limit");
    assert_eq!(
        scan(Some(a_versions[1].clone()), 100).await,
        a_versions[2..],
        "[{CASE}] strictly above"
    );
    assert_eq!(
        scan(Some(hlc(25, 0, "node-a")), 2).await,
        a_versions[2..4],
        "[{CASE}] above a version that is not stored"
    );
    assert_eq!(
        scan(Some(a_versions[5].clone()), 100).await,
        Vec::<Hlc>::new()
    );
    assert_eq!(scan(None, 0).await, Vec::<Hlc>::new(), "[{CASE}] limit 0");
    assert_eq!(
        expect_ok(
            CASE,
            "scan",
            store.scan(&a, Some(&a_versions[4]), 100).await
        ),
        [record_tombstone("a5", &a_versions[5])],
        "[{CASE}] tombstones are scanned"
    );
    assert_eq!(
        versions(expect_ok(
            CASE,
            "scan",
            store.scan(&node("node-b"), None, 100).await
        )),
        [hlc(15, 0, "node-b"), hlc(35, 0, "node-b")]
    );
    assert_eq!(
        versions(expect_ok(
            CASE,
            "scan",
            store.scan(&node("node-ab"), None, 100).await
        )),
        [hlc(25, 0, "node-ab")],
        "[{CASE}] node-ab is not node-a"
    );
    assert_eq!(
        expect_ok(CASE, "scan", store.scan(&node("nobody"), None, 100).await),
        Vec::<SharedRecord>::new()
    );
    // Scanned records are complete.
    let full = expect_ok(CASE, "scan", store.scan(&a, None, 1).await);
    assert_eq!(full, [record("a0", &a_versions[0])]);
}

/// A small deterministic PRNG (SplitMix64), so randomized cases need no dependency and
/// replay from their seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Shuffles a slice (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

const RANDOM_NODES: [&str; 4] = ["n-a", "n-b", "n-c", "n-ab"];

/// Random versions of a few items, offered in random order and random batches.
///
/// A timestamp names one event, so a version belongs to one item only (a clock never issues
/// the same timestamp twice); the same version of the same item may be offered again.
fn random_versions(rng: &mut SplitMix64, items: usize, offers: usize) -> Vec<(usize, Hlc)> {
    let mut owner: BTreeMap<Hlc, usize> = BTreeMap::new();
    let mut out: Vec<(usize, Hlc)> = Vec::with_capacity(offers + offers / 5);
    // Bounded: a draw only fails when its version already belongs to another item.
    for _ in 0..offers * 100 {
        if out.len() == offers {
            break;
        }
        let item = rng.below(items as u64) as usize;
        // Small ranges so ties on (wall, counter) across nodes happen often.
        let version = hlc(
            1_700_000_000_000 + rng.below(8),
            rng.below(3) as u16,
            RANDOM_NODES[rng.below(RANDOM_NODES.len() as u64) as usize],
        );
        if *owner.entry(version.clone()).or_insert(item) == item {
            out.push((item, version));
        }
    }
    // Repeat deliveries of earlier offers.
    for _ in 0..offers / 5 {
        let pick = out[rng.below(out.len() as u64) as usize].clone();
        out.push(pick);
    }
    rng.shuffle(&mut out);
    out
}

/// What the reference fold expects of one offer, given the version stored so far.
fn reference_outcome(stored: Option<&Hlc>, offered: &Hlc) -> Applied {
    match stored {
        Some(s) if s == offered => Applied::Kept,
        Some(s) if s > offered => Applied::Superseded,
        _ => Applied::Written,
    }
}

/// Pages through one origin with a small limit and checks the pages join up to `expected`.
async fn check_paged_scan<T, F, Fut>(case: &str, seed: u64, origin: &str, expected: &[Hlc], scan: F)
where
    F: Fn(Option<Hlc>, usize) -> Fut,
    Fut: Future<Output = Result<Vec<T>, StoreError>>,
    T: HasVersion,
{
    let mut above: Option<Hlc> = None;
    let mut seen = Vec::new();
    for _ in 0..=expected.len() {
        let page = expect_ok(case, "scan", scan(above.clone(), 3).await);
        assert!(page.len() <= 3, "[{case}] seed {seed}: limit exceeded");
        let Some(last) = page.last() else { break };
        above = Some(last.version().clone());
        seen.extend(page.iter().map(|i| i.version().clone()));
    }
    assert_eq!(
        seen, expected,
        "[{case}] seed {seed}: paged scan of {origin} (limit 3)"
    );
}

trait HasVersion {
    fn version(&self) -> &Hlc;
}

impl HasVersion for SharedRecord {
    fn version(&self) -> &Hlc {
        &self.updated_at
    }
}

impl HasVersion for AppRow {
    fn version(&self) -> &Hlc {
        &self.timestamp
    }
}

/// The reference of `coverage_below`: the highest stored version of `origin` strictly below
/// `probe` (`stored` sorted), or the origin's floor if that is higher and still below it.
fn reference_below(stored: &[Hlc], floors: &Watermarks, origin: &str, probe: &Hlc) -> Option<Hlc> {
    let below = stored.iter().rev().find(|v| *v < probe).cloned();
    let floor = floors.get(origin).filter(|f| *f < probe).cloned();
    below.max(floor)
}

/// Randomized: random versions in random order end with the maximum per item, outcomes
/// follow the reference fold, and coverage (stored versions and the floors of replaced
/// ones), `coverage_below` and paged scans agree with it.
pub async fn records_random(store: &dyn RecordStore, seed: u64) {
    const CASE: &str = "records_random";
    let mut rng = SplitMix64::new(seed);
    let offers = random_versions(&mut rng, 12, 120);
    let mut reference: BTreeMap<usize, Hlc> = BTreeMap::new();
    // Per origin, the highest of its versions that a newer version replaced.
    let mut floors = Watermarks::new();
    let mut rest = &offers[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(8) as usize).min(rest.len());
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let records: Vec<SharedRecord> = batch
            .iter()
            .map(|(item, v)| {
                if rng.below(4) == 0 {
                    record_tombstone(&format!("item-{item}"), v)
                } else {
                    record(&format!("item-{item}"), v)
                }
            })
            .collect();
        let mut expected = Vec::with_capacity(batch.len());
        for (item, v) in batch {
            let outcome = reference_outcome(reference.get(item), v);
            if outcome == Applied::Written {
                if let Some(replaced) = reference.insert(*item, v.clone()) {
                    floors.advance(&replaced);
                }
            }
            expected.push(outcome);
        }
        assert_eq!(
            apply_records(store, CASE, &records).await,
            expected,
            "[{CASE}] seed {seed}: outcomes of batch {batch:?}"
        );
    }
    for (item, top) in &reference {
        let stored = stored_record(store, CASE, &format!("item-{item}"))
            .await
            .unwrap_or_else(|| panic!("[{CASE}] seed {seed}: item-{item} missing"));
        assert_eq!(&stored.updated_at, top, "[{CASE}] seed {seed}: item-{item}");
    }
    let coverage: Watermarks = reference
        .values()
        .cloned()
        .collect::<Watermarks>()
        .merged(&floors);
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage().await),
        coverage,
        "[{CASE}] seed {seed}: coverage equals the reference fold (with floors)"
    );
    for origin in RANDOM_NODES {
        let mut versions: Vec<Hlc> = reference
            .values()
            .filter(|v| v.node_id().as_str() == origin)
            .cloned()
            .collect();
        versions.sort();
        let origin_id = node(origin);
        check_paged_scan(CASE, seed, origin, &versions, |above, limit| {
            let origin_id = origin_id.clone();
            async move { store.scan(&origin_id, above.as_ref(), limit).await }
        })
        .await;
        let offered = offers
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v.node_id().as_str() == origin);
        for probe in offered.chain([&hlc(1_700_000_000_003, 1, origin)]) {
            let expected = reference_below(&versions, &floors, origin, probe);
            assert_eq!(
                expect_ok(
                    CASE,
                    "coverage_below",
                    store.coverage_below(&origin_id, probe).await
                ),
                expected,
                "[{CASE}] seed {seed}: coverage_below({origin}, {probe})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// App-row store cases

async fn registered(store: &dyn AppRowStore, case: &str) {
    expect_ok(case, "register", store.register(namespace()).await);
}

async fn apply_rows(store: &dyn AppRowStore, case: &str, rows: &[AppRow]) -> Vec<Applied> {
    let out = expect_ok(case, "apply", store.apply(rows).await);
    assert_eq!(
        out.len(),
        rows.len(),
        "[{case}] apply returns one outcome per row"
    );
    out
}

async fn stored_row(store: &dyn AppRowStore, case: &str, table: &str, key: &str) -> Option<AppRow> {
    expect_ok(case, "get", store.get(APP, table, key).await)
}

async fn row_coverage(store: &dyn AppRowStore, case: &str, table: &str) -> Watermarks {
    expect_ok(case, "coverage", store.coverage(APP, table).await)
}

/// Namespaces are registered, looked up and replaced by re-registering; invalid ones are
/// refused.
pub async fn rows_namespaces(store: &dyn AppRowStore) {
    const CASE: &str = "rows_namespaces";
    assert_eq!(
        expect_ok(CASE, "namespace", store.namespace(APP).await),
        None,
        "[{CASE}] nothing registered"
    );
    registered(store, CASE).await;
    let ns = expect_ok(CASE, "namespace", store.namespace(APP).await)
        .unwrap_or_else(|| panic!("[{CASE}] registered namespace not found"));
    assert_eq!(ns, namespace(), "[{CASE}] round trip");
    assert!(
        ns.table(RESERVED_TABLE).is_some(),
        "[{CASE}] reserved table"
    );
    assert_eq!(
        ns.table(MEMBERS).map(|t| t.pk_columns.clone()),
        Some(vec!["tenant".to_string(), "id".to_string()]),
        "[{CASE}] key column order"
    );

    // Re-registering replaces: tables, key columns and the files flag.
    let replaced = AppNamespace::new(APP, vec![TableSpec::new("tasks", &["list", "pos"])])
        .with_files_enabled(false);
    expect_ok(CASE, "register", store.register(replaced.clone()).await);
    let ns = expect_ok(CASE, "namespace", store.namespace(APP).await);
    assert_eq!(ns, Some(replaced), "[{CASE}] replaced");

    // The reserved table is added even when the caller leaves it out.
    let bare = AppNamespace {
        app_id: "bare-app".into(),
        tables: vec![TableSpec::new("t", &["id"])],
        files_enabled: true,
    };
    expect_ok(CASE, "register", store.register(bare).await);
    let ns = expect_ok(CASE, "namespace", store.namespace("bare-app").await)
        .unwrap_or_else(|| panic!("[{CASE}] bare-app not found"));
    assert!(
        ns.table(RESERVED_TABLE).is_some(),
        "[{CASE}] reserved table added"
    );
    assert!(ns.table("t").is_some());

    // Namespaces are independent.
    assert!(expect_ok(CASE, "namespace", store.namespace(APP).await)
        .is_some_and(|ns| ns.table("t").is_none()));
    assert_eq!(
        expect_ok(CASE, "namespace", store.namespace("other").await),
        None
    );

    // Invalid namespaces are refused and change nothing.
    expect_invalid(
        CASE,
        "register bad app id",
        store
            .register(AppNamespace::new(
                "bad/app",
                vec![TableSpec::new("t", &["id"])],
            ))
            .await,
    );
    expect_invalid(
        CASE,
        "register keyless table",
        store
            .register(AppNamespace::new(APP, vec![TableSpec::new("t", &[])]))
            .await,
    );
    assert!(
        expect_ok(CASE, "namespace", store.namespace(APP).await)
            .is_some_and(|ns| ns.table("tasks").is_some()),
        "[{CASE}] a refused registration leaves the old one"
    );
}

/// Last-write-wins per (app, table, primary key), with the same rules as records.
pub async fn rows_lww(store: &dyn AppRowStore) {
    const CASE: &str = "rows_lww";
    registered(store, CASE).await;
    let v10 = hlc(10, 0, "node-a");
    let v20 = hlc(20, 0, "node-a");
    let v15 = hlc(15, 0, "node-b");
    assert_eq!(
        apply_rows(store, CASE, &[note("k1", &v10)]).await,
        [Applied::Written]
    );
    assert_eq!(
        stored_row(store, CASE, NOTES, &note_key("k1")).await,
        Some(note("k1", &v10))
    );
    assert_eq!(
        apply_rows(store, CASE, &[note("k1", &v10)]).await,
        [Applied::Kept]
    );
    assert_eq!(
        apply_rows(store, CASE, &[note("k1", &v20)]).await,
        [Applied::Written]
    );
    assert_eq!(
        apply_rows(store, CASE, &[note("k1", &v15)]).await,
        [Applied::Superseded]
    );
    assert_eq!(
        stored_row(store, CASE, NOTES, &note_key("k1")).await,
        Some(note("k1", &v20))
    );
    let tie_a = hlc(30, 1, "node-a");
    let tie_b = hlc(30, 1, "node-b");
    assert_eq!(
        apply_rows(store, CASE, &[note("k2", &tie_b), note("k2", &tie_a)]).await,
        [Applied::Written, Applied::Superseded],
        "[{CASE}] tie broken by the larger node id"
    );
    // The same key in another table, or of another app, is another item.
    let other_ns = AppNamespace::new("other-app", vec![TableSpec::new(NOTES, &["id"])]);
    expect_ok(CASE, "register", store.register(other_ns).await);
    let mut foreign = note("k1", &hlc(1, 0, "node-c"));
    foreign.app_id = "other-app".into();
    let reserved = row_insert(
        RESERVED_TABLE,
        &hlc(1, 0, "node-c"),
        json!({ "id": "k1", "object_storage_key": "apps/x/k1" }),
    );
    assert_eq!(
        apply_rows(store, CASE, &[foreign.clone(), reserved.clone()]).await,
        [Applied::Written, Applied::Written]
    );
    assert_eq!(
        expect_ok(
            CASE,
            "get",
            store.get("other-app", NOTES, &note_key("k1")).await
        ),
        Some(foreign)
    );
    assert_eq!(
        stored_row(store, CASE, RESERVED_TABLE, &note_key("k1")).await,
        Some(reserved)
    );
    assert_eq!(
        stored_row(store, CASE, NOTES, &note_key("k1")).await,
        Some(note("k1", &v20))
    );
    // An update snapshot replaces the whole row; a tombstone by `deleted_at` is a version too.
    let mut update = note("k1", &hlc(40, 0, "node-b"));
    update.op = RowOp::Update;
    update.row = Some(values(json!({ "id": "k1", "body": "edited" })));
    update.where_ = Some(values(json!({ "id": "k1" })));
    assert_eq!(
        apply_rows(store, CASE, std::slice::from_ref(&update)).await,
        [Applied::Written]
    );
    assert_eq!(
        stored_row(store, CASE, NOTES, &note_key("k1")).await,
        Some(update)
    );
    let soft = row_insert(
        NOTES,
        &hlc(41, 0, "node-b"),
        json!({ "id": "k1", "body": "edited", "deleted_at": 41 }),
    );
    assert!(soft.is_tombstone());
    assert_eq!(
        apply_rows(store, CASE, std::slice::from_ref(&soft)).await,
        [Applied::Written]
    );
    assert_eq!(
        stored_row(store, CASE, NOTES, &note_key("k1")).await,
        Some(soft)
    );
}

/// A batch with a row of an unregistered app or table, or without its primary key, is
/// refused as a whole with [`StoreError::Invalid`] and changes nothing.
pub async fn rows_batch_atomic(store: &dyn AppRowStore) {
    const CASE: &str = "rows_batch_atomic";
    // Nothing registered yet: every row is refused.
    expect_invalid(
        CASE,
        "apply before register",
        store.apply(&[note("k0", &hlc(1, 0, "node-a"))]).await,
    );
    registered(store, CASE).await;
    let old = hlc(10, 0, "node-a");
    apply_rows(store, CASE, &[note("k1", &old)]).await;
    let before = row_coverage(store, CASE, NOTES).await;

    let update = note("k1", &hlc(20, 0, "node-b"));
    let fresh = note("k2", &hlc(21, 0, "node-b"));
    let mut unknown_table = note("k3", &hlc(22, 0, "node-b"));
    unknown_table.table = "nope".into();
    let mut unknown_app = note("k3", &hlc(22, 0, "node-b"));
    unknown_app.app_id = "nope-app".into();
    let keyless = row_insert(NOTES, &hlc(23, 0, "node-b"), json!({ "body": "no id" }));
    let null_key = row_insert(NOTES, &hlc(23, 0, "node-b"), json!({ "id": null }));
    let keyless_delete = row_delete(NOTES, &hlc(24, 0, "node-b"), json!({ "body": "x" }));
    let half_key = row_delete(MEMBERS, &hlc(25, 0, "node-b"), json!({ "tenant": "acme" }));

    for (what, bad) in [
        ("unregistered table", unknown_table),
        ("unregistered app", unknown_app),
        ("missing key", keyless),
        ("null key", null_key),
        ("delete without key", keyless_delete),
        ("delete with half a composite key", half_key),
    ] {
        // The bad row last, so an implementation that applies as it goes would already have
        // written the good ones.
        expect_invalid(
            CASE,
            what,
            store
                .apply(&[update.clone(), fresh.clone(), bad.clone()])
                .await,
        );
        assert_eq!(
            stored_row(store, CASE, NOTES, &note_key("k1")).await,
            Some(note("k1", &old)),
            "[{CASE}] {what}: the update in the refused batch is not stored"
        );
        assert_eq!(
            stored_row(store, CASE, NOTES, &note_key("k2")).await,
            None,
            "[{CASE}] {what}: the insert in the refused batch is not stored"
        );
        assert_eq!(
            row_coverage(store, CASE, NOTES).await,
            before,
            "[{CASE}] {what}: coverage unchanged"
        );
        // The bad row first as well.
        expect_invalid(CASE, what, store.apply(&[bad, fresh.clone()]).await);
        assert_eq!(stored_row(store, CASE, NOTES, &note_key("k2")).await, None);
    }
    // The same batch without the bad row applies.
    assert_eq!(
        apply_rows(store, CASE, &[update.clone(), fresh.clone()]).await,
        [Applied::Written, Applied::Written]
    );
    assert_eq!(
        stored_row(store, CASE, NOTES, &note_key("k1")).await,
        Some(update)
    );
}

/// Rows are found by their canonical key: the JSON array of key values, in key order, with
/// the value's JSON type (`"42"` and `42` are different keys).
pub async fn rows_get_by_key(store: &dyn AppRowStore) {
    const CASE: &str = "rows_get_by_key";
    registered(store, CASE).await;
    let v = hlc(10, 0, "node-a");
    let text = row_insert(NOTES, &v, json!({ "id": "42", "body": "text key" }));
    let number = row_insert(NOTES, &v, json!({ "id": 42, "body": "number key" }));
    let member = row_insert(
        MEMBERS,
        &v,
        json!({ "id": "r1", "name": "Ada", "tenant": "acme" }),
    );
    assert_eq!(
        apply_rows(store, CASE, &[text.clone(), number.clone(), member.clone()]).await,
        [Applied::Written; 3]
    );
    let text_key = row_key(&spec(NOTES), &text).expect("key");
    let number_key = row_key(&spec(NOTES), &number).expect("key");
    assert_eq!(text_key, r#"["42"]"#);
    assert_eq!(number_key, "[42]");
    assert_eq!(stored_row(store, CASE, NOTES, &text_key).await, Some(text));
    assert_eq!(
        stored_row(store, CASE, NOTES, &number_key).await,
        Some(number)
    );
    let member_key = row_key(&spec(MEMBERS), &member).expect("key");
    assert_eq!(
        member_key, r#"["acme","r1"]"#,
        "[{CASE}] key order, not row order"
    );
    assert_eq!(
        stored_row(store, CASE, MEMBERS, &member_key).await,
        Some(member)
    );
    assert_eq!(
        stored_row(store, CASE, MEMBERS, r#"["r1","acme"]"#).await,
        None
    );
    assert_eq!(stored_row(store, CASE, NOTES, r#"["43"]"#).await, None);
    assert_eq!(stored_row(store, CASE, "nope", &text_key).await, None);
    assert_eq!(
        expect_ok(CASE, "get", store.get("nope-app", NOTES, &text_key).await),
        None
    );
}

/// Coverage per table: per origin node the highest stored version, tombstones included;
/// tables are independent; an unknown table covers nothing.
pub async fn rows_coverage(store: &dyn AppRowStore) {
    const CASE: &str = "rows_coverage";
    registered(store, CASE).await;
    assert_eq!(row_coverage(store, CASE, NOTES).await, Watermarks::new());
    let a1 = hlc(10, 0, "node-a");
    let a2 = hlc(12, 0, "node-a");
    let b1 = hlc(11, 0, "node-b");
    let c1 = hlc(50, 0, "node-c");
    apply_rows(
        store,
        CASE,
        &[
            note("k1", &a1),
            note("k2", &b1),
            row_delete(NOTES, &a2, json!({ "id": "k3" })),
            row_insert(MEMBERS, &c1, json!({ "tenant": "t", "id": "m" })),
        ],
    )
    .await;
    assert_eq!(
        row_coverage(store, CASE, NOTES).await,
        wm(&[&a2, &b1]),
        "[{CASE}] the tombstone k3@12 is node-a's highest"
    );
    assert_eq!(row_coverage(store, CASE, MEMBERS).await, wm(&[&c1]));
    assert_eq!(
        row_coverage(store, CASE, RESERVED_TABLE).await,
        Watermarks::new()
    );
    assert_eq!(row_coverage(store, CASE, "nope").await, Watermarks::new());
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage("nope-app", NOTES).await),
        Watermarks::new()
    );
}

/// Coverage per table is monotone (decision 0008): replacing an origin's highest row keeps
/// that origin covered up to the replaced version, in that table only.
pub async fn rows_coverage_survives_replacement(store: &dyn AppRowStore) {
    const CASE: &str = "rows_coverage_survives_replacement";
    registered(store, CASE).await;
    let other_ns = AppNamespace::new("other-app", vec![TableSpec::new(NOTES, &["id"])]);
    expect_ok(CASE, "register", store.register(other_ns).await);
    let a5 = hlc(5, 0, "node-a");
    let a10 = hlc(10, 0, "node-a");
    let b20 = hlc(20, 0, "node-b");
    let b21 = hlc(21, 0, "node-b");
    let m = row_insert(
        MEMBERS,
        &hlc(3, 0, "node-a"),
        json!({ "tenant": "t", "id": "m" }),
    );
    apply_rows(store, CASE, &[note("x", &a10), note("y", &a5), m]).await;
    assert_eq!(
        apply_rows(
            store,
            CASE,
            &[row_delete(NOTES, &b20, json!({ "id": "x" }))]
        )
        .await,
        [Applied::Written]
    );
    assert_eq!(
        row_coverage(store, CASE, NOTES).await,
        wm(&[&a10, &b20]),
        "[{CASE}] node-a's replaced x@10 stays covered (it does not fall back to y@5)"
    );
    apply_rows(store, CASE, &[note("y", &b21)]).await;
    assert_eq!(
        row_coverage(store, CASE, NOTES).await,
        wm(&[&a10, &b21]),
        "[{CASE}] node-a holds no note any more and is still covered up to 10"
    );
    assert_eq!(
        row_coverage(store, CASE, MEMBERS).await,
        wm(&[&hlc(3, 0, "node-a")]),
        "[{CASE}] the floor is per table"
    );
    assert_eq!(
        expect_ok(CASE, "coverage", store.coverage("other-app", NOTES).await),
        Watermarks::new(),
        "[{CASE}] and per app"
    );
    // A losing or repeated offer raises nothing.
    assert_eq!(
        apply_rows(
            store,
            CASE,
            &[note("y", &hlc(15, 0, "node-c")), note("y", &b21)]
        )
        .await,
        [Applied::Superseded, Applied::Kept]
    );
    assert_eq!(row_coverage(store, CASE, NOTES).await, wm(&[&a10, &b21]));
}

/// `coverage_below` per (app, table, origin).
pub async fn rows_coverage_below(store: &dyn AppRowStore) {
    const CASE: &str = "rows_coverage_below";
    registered(store, CASE).await;
    let a1 = hlc(1, 0, "node-a");
    let a3 = hlc(3, 0, "node-a");
    let a5 = hlc(5, 0, "node-a");
    apply_rows(
        store,
        CASE,
        &[
            note("k5", &a5),
            row_delete(NOTES, &a3, json!({ "id": "k3" })),
            note("k1", &a1),
            row_insert(
                MEMBERS,
                &hlc(4, 0, "node-a"),
                json!({ "tenant": "t", "id": "m" }),
            ),
        ],
    )
    .await;
    let below = |table: &'static str, bound: Hlc| async move {
        expect_ok(
            CASE,
            "coverage_below",
            store
                .coverage_below(APP, table, &node("node-a"), &bound)
                .await,
        )
    };
    assert_eq!(below(NOTES, a5.clone()).await, Some(a3.clone()));
    assert_eq!(below(NOTES, a3.clone()).await, Some(a1.clone()));
    assert_eq!(below(NOTES, a1.clone()).await, None);
    assert_eq!(below(NOTES, hlc(9, 0, "node-a")).await, Some(a5.clone()));
    assert_eq!(
        below(MEMBERS, hlc(9, 0, "node-a")).await,
        Some(hlc(4, 0, "node-a")),
        "[{CASE}] per table"
    );
    assert_eq!(below("nope", hlc(9, 0, "node-a")).await, None);
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            store
                .coverage_below(APP, NOTES, &node("node-b"), &hlc(9, 0, "node-b"))
                .await
        ),
        None,
        "[{CASE}] per origin"
    );
}

/// `coverage_below` per table honours that table's floor and never reports a version at or
/// above its bound.
pub async fn rows_coverage_below_floor(store: &dyn AppRowStore) {
    const CASE: &str = "rows_coverage_below_floor";
    registered(store, CASE).await;
    let a1 = hlc(1, 0, "node-a");
    let a3 = hlc(3, 0, "node-a");
    let a5 = hlc(5, 0, "node-a");
    apply_rows(
        store,
        CASE,
        &[
            note("k1", &a1),
            row_delete(NOTES, &a3, json!({ "id": "k3" })),
            note("k5", &a5),
            row_insert(
                MEMBERS,
                &hlc(2, 0, "node-a"),
                json!({ "tenant": "t", "id": "m" }),
            ),
        ],
    )
    .await;
    apply_rows(store, CASE, &[note("k5", &hlc(6, 0, "node-b"))]).await;
    assert_eq!(
        row_coverage(store, CASE, NOTES).await,
        wm(&[&a5, &hlc(6, 0, "node-b")]),
        "[{CASE}] coverage does not go down"
    );
    let below = |table: &'static str, bound: Hlc| async move {
        let got = expect_ok(
            CASE,
            "coverage_below",
            store
                .coverage_below(APP, table, &node("node-a"), &bound)
                .await,
        );
        assert!(
            got.as_ref().is_none_or(|g| *g < bound),
            "[{CASE}] coverage_below({table}, {bound}) = {got:?} is not strictly below its bound"
        );
        got
    };
    assert_eq!(
        below(NOTES, hlc(9, 0, "node-a")).await,
        Some(a5.clone()),
        "[{CASE}] the floor counts"
    );
    assert_eq!(
        below(NOTES, a5.clone()).await,
        Some(a3.clone()),
        "[{CASE}] a floor at the bound is not reported"
    );
    assert_eq!(below(NOTES, a3.clone()).await, Some(a1.clone()));
    assert_eq!(below(NOTES, a1.clone()).await, None);
    assert_eq!(
        below(MEMBERS, hlc(9, 0, "node-a")).await,
        Some(hlc(2, 0, "node-a")),
        "[{CASE}] another table's floor does not leak in"
    );
    assert_eq!(below("nope", hlc(9, 0, "node-a")).await, None);
}

/// Scans of one table return one origin's rows strictly above the bound, in version order,
/// up to the limit; other tables and other apps stay out.
pub async fn rows_scan(store: &dyn AppRowStore) {
    const CASE: &str = "rows_scan";
    registered(store, CASE).await;
    let other_ns = AppNamespace::new("other-app", vec![TableSpec::new(NOTES, &["id"])]);
    expect_ok(CASE, "register", store.register(other_ns).await);
    let a: Vec<Hlc> = (1..=5).map(|i| hlc(i * 10, 0, "node-a")).collect();
    let mut batch: Vec<AppRow> = a
        .iter()
        .enumerate()
        .map(|(i, v)| note(&format!("k{i}"), v))
        .collect();
    batch[3] = row_delete(NOTES, &a[3], json!({ "id": "k3" }));
    batch.push(note("b", &hlc(15, 0, "node-b")));
    batch.push(row_insert(
        MEMBERS,
        &hlc(25, 0, "node-a"),
        json!({ "tenant": "t", "id": "m" }),
    ));
    let mut foreign = note("f", &hlc(35, 0, "node-a"));
    foreign.app_id = "other-app".into();
    batch.push(foreign);
    batch.reverse();
    apply_rows(store, CASE, &batch).await;

    let scan = |above: Option<Hlc>, limit: usize| async move {
        expect_ok(
            CASE,
            "scan",
            store
                .scan(APP, NOTES, &node("node-a"), above.as_ref(), limit)
                .await,
        )
        .into_iter()
        .map(|r| r.timestamp)
        .collect::<Vec<_>>()
    };
    assert_eq!(
        scan(None, 100).await,
        a,
        "[{CASE}] one table, one origin, in order"
    );
    assert_eq!(scan(None, 3).await, a[..3]);
    assert_eq!(scan(Some(a[1].clone()), 2).await, a[2..4]);
    assert_eq!(scan(Some(a[4].clone()), 100).await, Vec::<Hlc>::new());
    assert_eq!(scan(None, 0).await, Vec::<Hlc>::new());
    let rows = expect_ok(
        CASE,
        "scan",
        store.scan(APP, NOTES, &node("node-a"), None, 100).await,
    );
    assert_eq!(
        rows[0],
        note("k0", &a[0]),
        "[{CASE}] scanned rows are complete"
    );
    assert_eq!(
        rows[3],
        row_delete(NOTES, &a[3], json!({ "id": "k3" })),
        "[{CASE}] the tombstone is scanned with its key"
    );
    assert_eq!(
        expect_ok(
            CASE,
            "scan",
            store.scan(APP, MEMBERS, &node("node-a"), None, 100).await
        )
        .len(),
        1
    );
    assert_eq!(
        expect_ok(
            CASE,
            "scan",
            store
                .scan("other-app", NOTES, &node("node-a"), None, 100)
                .await
        )
        .len(),
        1
    );
    assert_eq!(
        expect_ok(
            CASE,
            "scan",
            store.scan(APP, NOTES, &node("node-c"), None, 100).await
        ),
        Vec::<AppRow>::new()
    );
}

/// Reading an unknown table or app is empty, not an error.
pub async fn rows_unknown_table(store: &dyn AppRowStore) {
    const CASE: &str = "rows_unknown_table";
    let n = node("node-a");
    let top = hlc(99, 0, "node-a");
    assert_eq!(
        expect_ok(CASE, "scan", store.scan(APP, NOTES, &n, None, 10).await),
        Vec::<AppRow>::new(),
        "[{CASE}] unregistered app"
    );
    registered(store, CASE).await;
    for (app, table) in [(APP, "nope"), (APP, NOTES), ("nope-app", NOTES)] {
        assert_eq!(
            expect_ok(CASE, "scan", store.scan(app, table, &n, None, 10).await),
            Vec::<AppRow>::new(),
            "[{CASE}] scan {app}.{table}"
        );
        assert_eq!(
            expect_ok(CASE, "coverage", store.coverage(app, table).await),
            Watermarks::new()
        );
        assert_eq!(
            expect_ok(
                CASE,
                "coverage_below",
                store.coverage_below(app, table, &n, &top).await
            ),
            None
        );
    }
}

/// Tombstones carry their complete primary key in `where`. With the composite key
/// `(tenant, id)`, deleting `(acme, r1)` leaves `acme/r2` and `globex/r1` live, and a delete
/// naming only `tenant` is refused.
pub async fn rows_tombstone_composite_key(store: &dyn AppRowStore) {
    const CASE: &str = "rows_tombstone_composite_key";
    registered(store, CASE).await;
    let v1 = hlc(10, 0, "node-a");
    let member = |tenant: &str, id: &str, version: &Hlc| {
        row_insert(
            MEMBERS,
            version,
            json!({ "tenant": tenant, "id": id, "name": format!("{tenant}/{id}") }),
        )
    };
    let key = |tenant: &str, id: &str| json!([tenant, id]).to_string();
    apply_rows(
        store,
        CASE,
        &[
            member("acme", "r1", &v1),
            member("acme", "r2", &v1),
            member("globex", "r1", &v1),
        ],
    )
    .await;

    // Half a key: refused, nothing deleted.
    expect_invalid(
        CASE,
        "delete naming only tenant",
        store
            .apply(&[row_delete(
                MEMBERS,
                &hlc(15, 0, "node-b"),
                json!({ "tenant": "acme" }),
            )])
            .await,
    );
    for (t, i) in [("acme", "r1"), ("acme", "r2"), ("globex", "r1")] {
        let live = stored_row(store, CASE, MEMBERS, &key(t, i)).await;
        assert!(
            live.is_some_and(|r| !r.is_tombstone()),
            "[{CASE}] {t}/{i} still live after the refused delete"
        );
    }

    let del = hlc(20, 0, "node-b");
    let tombstone = row_delete(MEMBERS, &del, json!({ "tenant": "acme", "id": "r1" }));
    assert_eq!(
        apply_rows(store, CASE, std::slice::from_ref(&tombstone)).await,
        [Applied::Written]
    );
    assert_eq!(
        stored_row(store, CASE, MEMBERS, &key("acme", "r1")).await,
        Some(tombstone.clone())
    );
    for (t, i) in [("acme", "r2"), ("globex", "r1")] {
        assert_eq!(
            stored_row(store, CASE, MEMBERS, &key(t, i)).await,
            Some(member(t, i, &v1)),
            "[{CASE}] {t}/{i} untouched"
        );
    }

    // A delete naming its key in `row` only is stored with the complete key in `where`.
    let del2 = hlc(21, 0, "node-b");
    let by_row = AppRow {
        timestamp: del2.clone(),
        app_id: APP.into(),
        table: MEMBERS.into(),
        op: RowOp::Delete,
        row: Some(values(json!({ "tenant": "globex", "id": "r1" }))),
        where_: None,
    };
    // And one naming half in `where`, half in `row`.
    let del3 = hlc(22, 0, "node-b");
    let split = AppRow {
        timestamp: del3.clone(),
        app_id: APP.into(),
        table: MEMBERS.into(),
        op: RowOp::Delete,
        row: Some(values(json!({ "id": "r2" }))),
        where_: Some(values(json!({ "tenant": "acme" }))),
    };
    assert_eq!(
        apply_rows(store, CASE, &[by_row, split]).await,
        [Applied::Written, Applied::Written]
    );

    let scanned = expect_ok(
        CASE,
        "scan",
        store.scan(APP, MEMBERS, &node("node-b"), None, 100).await,
    );
    assert_eq!(scanned.len(), 3, "[{CASE}] three tombstones of node-b");
    for r in &scanned {
        assert!(r.is_tombstone(), "[{CASE}] {r:?} is a tombstone");
        let w = r
            .where_
            .as_ref()
            .unwrap_or_else(|| panic!("[{CASE}] tombstone without where: {r:?}"));
        assert!(
            w.get("tenant").is_some_and(Value::is_string)
                && w.get("id").is_some_and(Value::is_string),
            "[{CASE}] tombstone {} names its complete key in where: {w:?}",
            r.timestamp
        );
    }
    let wheres: Vec<Value> = scanned
        .iter()
        .map(|r| {
            let w = r.where_.clone().unwrap_or_default();
            json!([w.get("tenant"), w.get("id")])
        })
        .collect();
    assert_eq!(
        wheres,
        [
            json!(["acme", "r1"]),
            json!(["globex", "r1"]),
            json!(["acme", "r2"])
        ]
    );
    // Each scanned tombstone's key is the key it is stored under.
    for r in &scanned {
        let k = row_key(&spec(MEMBERS), r).expect("complete key");
        assert_eq!(
            stored_row(store, CASE, MEMBERS, &k).await.as_ref(),
            Some(r),
            "[{CASE}] get by the tombstone's key"
        );
    }
    assert_eq!(
        row_coverage(store, CASE, MEMBERS).await,
        wm(&[&v1, &del3]),
        "[{CASE}] node-a's rows are all replaced; it stays covered up to them"
    );
}

/// Randomized app rows: random versions (inserts, updates, deletes) of a few keys in random
/// order end with the maximum per key, and coverage and paged scans agree with the fold.
pub async fn rows_random(store: &dyn AppRowStore, seed: u64) {
    const CASE: &str = "rows_random";
    registered(store, CASE).await;
    let mut rng = SplitMix64::new(seed);
    let offers = random_versions(&mut rng, 10, 100);
    // Keys alternate between the two tables so coverage is checked per table.
    let table_of = |item: usize| if item % 2 == 0 { NOTES } else { MEMBERS };
    let make = |rng: &mut SplitMix64, item: usize, v: &Hlc| -> AppRow {
        let table = table_of(item);
        let key = if table == NOTES {
            json!({ "id": format!("k{item}") })
        } else {
            json!({ "tenant": format!("t{}", item % 3), "id": format!("k{item}") })
        };
        match rng.below(3) {
            0 => row_delete(table, v, key),
            1 => {
                let mut r = row_insert(table, v, key.clone());
                r.op = RowOp::Update;
                r.where_ = Some(values(key));
                r
            }
            _ => {
                let mut row = values(key);
                row.insert("body".into(), json!(format!("v{v}")));
                row_insert(table, v, Value::Object(row))
            }
        }
    };
    let mut reference: BTreeMap<usize, Hlc> = BTreeMap::new();
    // Per table, per origin, the highest of its versions that a newer version replaced.
    let mut floors: BTreeMap<&str, Watermarks> = BTreeMap::new();
    let mut rest = &offers[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(8) as usize).min(rest.len());
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let rows: Vec<AppRow> = batch.iter().map(|(i, v)| make(&mut rng, *i, v)).collect();
        let mut expected = Vec::with_capacity(n);
        for (item, v) in batch {
            let outcome = reference_outcome(reference.get(item), v);
            if outcome == Applied::Written {
                if let Some(replaced) = reference.insert(*item, v.clone()) {
                    floors
                        .entry(table_of(*item))
                        .or_default()
                        .advance(&replaced);
                }
            }
            expected.push(outcome);
        }
        assert_eq!(
            apply_rows(store, CASE, &rows).await,
            expected,
            "[{CASE}] seed {seed}: outcomes"
        );
    }
    for table in [NOTES, MEMBERS] {
        let in_table: Vec<(usize, &Hlc)> = reference
            .iter()
            .filter(|(item, _)| table_of(**item) == table)
            .map(|(i, v)| (*i, v))
            .collect();
        for (item, top) in &in_table {
            let key = if table == NOTES {
                json!([format!("k{item}")]).to_string()
            } else {
                json!([format!("t{}", item % 3), format!("k{item}")]).to_string()
            };
            let stored = stored_row(store, CASE, table, &key)
                .await
                .unwrap_or_else(|| panic!("[{CASE}] seed {seed}: {table}{key} missing"));
            assert_eq!(
                &&stored.timestamp, top,
                "[{CASE}] seed {seed}: {table}{key}"
            );
        }
        let table_floors = floors.get(table).cloned().unwrap_or_default();
        let coverage: Watermarks = in_table
            .iter()
            .map(|(_, v)| (*v).clone())
            .collect::<Watermarks>()
            .merged(&table_floors);
        assert_eq!(
            row_coverage(store, CASE, table).await,
            coverage,
            "[{CASE}] seed {seed}: coverage of {table} (with floors)"
        );
        for origin in RANDOM_NODES {
            let mut versions: Vec<Hlc> = in_table
                .iter()
                .filter(|(_, v)| v.node_id().as_str() == origin)
                .map(|(_, v)| (*v).clone())
                .collect();
            versions.sort();
            let origin_id = node(origin);
            check_paged_scan(CASE, seed, origin, &versions, |above, limit| {
                let origin_id = origin_id.clone();
                async move {
                    store
                        .scan(APP, table, &origin_id, above.as_ref(), limit)
                        .await
                }
            })
            .await;
            let offered = offers
                .iter()
                .filter(|(item, v)| table_of(*item) == table && v.node_id().as_str() == origin)
                .map(|(_, v)| v);
            for probe in offered.chain([&hlc(1_700_000_000_003, 1, origin)]) {
                assert_eq!(
                    expect_ok(
                        CASE,
                        "coverage_below",
                        store.coverage_below(APP, table, &origin_id, probe).await
                    ),
                    reference_below(&versions, &table_floors, origin, probe),
                    "[{CASE}] seed {seed}: coverage_below({table}, {origin}, {probe})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sync state cases

fn sample_state(salt: u64) -> ChannelState {
    ChannelState {
        own: wm(&[&hlc(100 + salt, 1, "node-a"), &hlc(90 + salt, 0, "node-b")]),
        peer: wm(&[
            &hlc(80 + salt, 7, "node-c"),
            &hlc(0x0000_ffff_ffff_ffff, 0xffff, "node-z"),
        ]),
    }
}

fn clock(wall_time: u64, counter: u16) -> ClockState {
    ClockState { wall_time, counter }
}

async fn load(store: &dyn SyncStateStore, case: &str, channel: &Channel) -> ChannelState {
    expect_ok(case, "load", store.load(channel).await)
}

/// A never-synced channel loads empty, and there is no clock state yet.
pub async fn state_never_synced(store: &dyn SyncStateStore) {
    const CASE: &str = "state_never_synced";
    assert_eq!(
        load(store, CASE, &Channel::Drive).await,
        ChannelState::default()
    );
    assert_eq!(
        load(store, CASE, &Channel::App("photos".into())).await,
        ChannelState::default()
    );
    assert_eq!(
        expect_ok(CASE, "load_clock", store.load_clock().await),
        None
    );
}

/// Commit stores both watermark maps and the clock; load reads them back.
pub async fn state_commit_round_trip(store: &dyn SyncStateStore) {
    const CASE: &str = "state_commit_round_trip";
    let state = sample_state(0);
    expect_ok(
        CASE,
        "commit",
        store
            .commit(&Channel::Drive, &state, clock(1_700_000_000_123, 4))
            .await,
    );
    assert_eq!(load(store, CASE, &Channel::Drive).await, state);
    assert_eq!(
        expect_ok(CASE, "load_clock", store.load_clock().await),
        Some(clock(1_700_000_000_123, 4))
    );
    // Empty maps round-trip too.
    let empty_peer = ChannelState {
        own: state.own.clone(),
        peer: Watermarks::new(),
    };
    expect_ok(
        CASE,
        "commit",
        store
            .commit(&Channel::Drive, &empty_peer, clock(1_700_000_000_124, 0))
            .await,
    );
    assert_eq!(load(store, CASE, &Channel::Drive).await, empty_peer);
}

/// The Drive channel and each app channel keep their own state.
pub async fn state_channels_independent(store: &dyn SyncStateStore) {
    const CASE: &str = "state_channels_independent";
    let photos = Channel::App("photos".into());
    let notes = Channel::App("notes".into());
    expect_ok(
        CASE,
        "commit",
        store
            .commit(&Channel::Drive, &sample_state(1), clock(10, 0))
            .await,
    );
    expect_ok(
        CASE,
        "commit",
        store.commit(&photos, &sample_state(2), clock(11, 0)).await,
    );
    assert_eq!(load(store, CASE, &Channel::Drive).await, sample_state(1));
    assert_eq!(load(store, CASE, &photos).await, sample_state(2));
    assert_eq!(
        load(store, CASE, &notes).await,
        ChannelState::default(),
        "[{CASE}] another app's channel is untouched"
    );
    assert_eq!(
        expect_ok(CASE, "load_clock", store.load_clock().await),
        Some(clock(11, 0)),
        "[{CASE}] one clock per node, whichever channel committed last"
    );
}

/// A commit replaces the channel's state (the peer's coverage may go down after a wipe).
pub async fn state_commit_replaces(store: &dyn SyncStateStore) {
    const CASE: &str = "state_commit_replaces";
    expect_ok(
        CASE,
        "commit",
        store
            .commit(&Channel::Drive, &sample_state(50), clock(20, 0))
            .await,
    );
    let lower = ChannelState {
        own: wm(&[&hlc(1, 0, "node-a")]),
        peer: wm(&[&hlc(2, 0, "node-c")]),
    };
    expect_ok(
        CASE,
        "commit",
        store.commit(&Channel::Drive, &lower, clock(21, 0)).await,
    );
    assert_eq!(
        load(store, CASE, &Channel::Drive).await,
        lower,
        "[{CASE}] replaced, not merged"
    );
}

/// `save_clock` stores the clock alone.
pub async fn state_save_clock(store: &dyn SyncStateStore) {
    const CASE: &str = "state_save_clock";
    expect_ok(CASE, "save_clock", store.save_clock(clock(5, 1)).await);
    assert_eq!(
        expect_ok(CASE, "load_clock", store.load_clock().await),
        Some(clock(5, 1))
    );
    assert_eq!(
        load(store, CASE, &Channel::Drive).await,
        ChannelState::default()
    );
    expect_ok(
        CASE,
        "save_clock",
        store
            .save_clock(clock(0x0000_ffff_ffff_ffff, u16::MAX))
            .await,
    );
    assert_eq!(
        expect_ok(CASE, "load_clock", store.load_clock().await),
        Some(clock(0x0000_ffff_ffff_ffff, u16::MAX))
    );
}

// ---------------------------------------------------------------------------------------------
// Two instances on one backend

/// What `first` commits, `second` (another instance on the same backend, e.g. the same
/// database file reopened) reads back.
pub async fn sync_state_reopen(first: &dyn SyncStateStore, second: &dyn SyncStateStore) {
    const CASE: &str = "sync_state_reopen";
    let photos = Channel::App("photos".into());
    expect_ok(
        CASE,
        "commit",
        first
            .commit(&Channel::Drive, &sample_state(7), clock(70, 1))
            .await,
    );
    expect_ok(
        CASE,
        "commit",
        first.commit(&photos, &sample_state(8), clock(71, 2)).await,
    );
    assert_eq!(load(second, CASE, &Channel::Drive).await, sample_state(7));
    assert_eq!(load(second, CASE, &photos).await, sample_state(8));
    assert_eq!(
        load(second, CASE, &Channel::App("notes".into())).await,
        ChannelState::default()
    );
    assert_eq!(
        expect_ok(CASE, "load_clock", second.load_clock().await),
        Some(clock(71, 2))
    );
}

/// What `first` stores, `second` reads back: records, coverage and scans.
pub async fn record_store_reopen(first: &dyn RecordStore, second: &dyn RecordStore) {
    const CASE: &str = "record_store_reopen";
    let a = hlc(10, 0, "node-a");
    let b = hlc(11, 0, "node-b");
    apply_records(first, CASE, &[record("r1", &a), record_tombstone("r2", &b)]).await;
    // node-c's version of r3 is replaced: its floor must persist too.
    let c = hlc(12, 0, "node-c");
    let a2 = hlc(13, 0, "node-a");
    apply_records(first, CASE, &[record("r3", &c)]).await;
    apply_records(first, CASE, &[record("r3", &a2)]).await;
    assert_eq!(
        stored_record(second, CASE, "r1").await,
        Some(record("r1", &a))
    );
    assert_eq!(
        stored_record(second, CASE, "r2").await,
        Some(record_tombstone("r2", &b))
    );
    assert_eq!(
        expect_ok(CASE, "coverage", second.coverage().await),
        wm(&[&a2, &b, &c]),
        "[{CASE}] stored versions and the floor of a replaced one"
    );
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            second
                .coverage_below(&node("node-c"), &hlc(99, 0, "node-c"))
                .await
        ),
        Some(c)
    );
    assert_eq!(
        apply_records(second, CASE, &[record("r1", &a)]).await,
        [Applied::Kept],
        "[{CASE}] the second instance sees the stored version"
    );
}

/// What `first` stores, `second` reads back: namespaces and rows.
pub async fn app_row_store_reopen(first: &dyn AppRowStore, second: &dyn AppRowStore) {
    const CASE: &str = "app_row_store_reopen";
    registered(first, CASE).await;
    let v = hlc(10, 0, "node-a");
    apply_rows(first, CASE, &[note("k1", &v)]).await;
    // node-c's version of k2 is replaced: its floor must persist too.
    let c = hlc(12, 0, "node-c");
    let b = hlc(13, 0, "node-b");
    apply_rows(first, CASE, &[note("k2", &c)]).await;
    apply_rows(first, CASE, &[note("k2", &b)]).await;
    assert_eq!(
        expect_ok(CASE, "namespace", second.namespace(APP).await),
        Some(namespace())
    );
    assert_eq!(
        stored_row(second, CASE, NOTES, &note_key("k1")).await,
        Some(note("k1", &v))
    );
    assert_eq!(row_coverage(second, CASE, NOTES).await, wm(&[&v, &b, &c]));
    assert_eq!(
        expect_ok(
            CASE,
            "coverage_below",
            second
                .coverage_below(APP, NOTES, &node("node-c"), &hlc(99, 0, "node-c"))
                .await
        ),
        Some(c)
    );
}

// ---------------------------------------------------------------------------------------------
// Blob pack cases

/// A blob for the pack cases: the digest is the bytes' SHA-256, as a real writer computes it.
pub fn packed(key: &str, bytes: &[u8], stored_at_ms: u64) -> PackedBlob {
    use sha2::{Digest, Sha256};
    PackedBlob::new(
        key,
        Sha256::digest(bytes).into(),
        stored_at_ms,
        bytes.to_vec(),
    )
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

/// Every key the pack lists under `prefix`, in pages of `page`, sorted.
async fn listed(pack: &dyn BlobPack, case: &str, prefix: &str, page: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100_000 {
        let listing = expect_ok(
            case,
            "list",
            pack.list(prefix, cursor.as_deref(), page).await,
        );
        assert!(
            listing.blobs.len() <= page,
            "[{case}] a page holds at most its limit"
        );
        keys.extend(listing.blobs.into_iter().map(|m| m.key));
        match listing.next {
            Some(next) => cursor = Some(next),
            None => {
                keys.sort();
                return keys;
            }
        }
    }
    panic!("[{case}] the listing of {prefix:?} never ends");
}

async fn pack_keys(pack: &dyn BlobPack, case: &str, prefix: &str) -> Vec<String> {
    listed(pack, case, prefix, 10_000).await
}

/// What is put comes back byte for byte, digest and time included; a batch read answers in
/// the order asked, `None` for keys the pack does not hold; `head` tells the size without
/// the bytes; an empty blob is a blob.
pub async fn pack_round_trip(pack: &dyn BlobPack) {
    const CASE: &str = "pack_round_trip";
    let a = packed("shared/a/1", b"first blob", 1_700_000_000_001);
    let b = packed("apps/notes/b", &[0, 255, 7, 0], 1_700_000_000_002);
    let empty = packed("shared/empty", b"", 1_700_000_000_003);
    let stored = expect_ok(
        CASE,
        "put",
        pack.put(&[a.clone(), b.clone(), empty.clone()], false)
            .await,
    );
    assert_eq!(
        stored,
        vec![true, true, true],
        "[{CASE}] three new keys are stored"
    );
    let got = expect_ok(
        CASE,
        "get",
        pack.get(&keys(&[
            "apps/notes/b",
            "shared/missing",
            "shared/a/1",
            "shared/empty",
        ]))
        .await,
    );
    assert_eq!(
        got,
        vec![Some(b.clone()), None, Some(a.clone()), Some(empty.clone())],
        "[{CASE}] get"
    );
    assert_eq!(
        expect_ok(CASE, "get nothing", pack.get(&[]).await),
        Vec::<Option<PackedBlob>>::new(),
        "[{CASE}] a read of no key"
    );
    assert_eq!(
        expect_ok(CASE, "head", pack.head("shared/a/1").await),
        Some(a.meta()),
        "[{CASE}] head"
    );
    assert_eq!(
        expect_ok(CASE, "head", pack.head("shared/empty").await).map(|m| m.size),
        Some(0),
        "[{CASE}] an empty blob has size 0"
    );
    assert_eq!(
        expect_ok(CASE, "head", pack.head("shared/a").await),
        None,
        "[{CASE}] a prefix is no key"
    );
}

/// Without `replace`, a key already held keeps its blob (and a second blob of the same key
/// in one batch is kept out); with it, the new blob replaces the old.
pub async fn pack_keep_or_replace(pack: &dyn BlobPack) {
    const CASE: &str = "pack_keep_or_replace";
    let first = packed("shared/k", b"first", 1);
    let second = packed("shared/k", b"second", 2);
    assert_eq!(
        expect_ok(
            CASE,
            "put",
            pack.put(std::slice::from_ref(&first), false).await
        ),
        vec![true]
    );
    assert_eq!(
        expect_ok(
            CASE,
            "put again",
            pack.put(std::slice::from_ref(&second), false).await
        ),
        vec![false],
        "[{CASE}] a held key is kept"
    );
    assert_eq!(
        expect_ok(CASE, "get", pack.get(&keys(&["shared/k"])).await),
        vec![Some(first.clone())]
    );
    assert_eq!(
        expect_ok(
            CASE,
            "replace",
            pack.put(std::slice::from_ref(&second), true).await
        ),
        vec![true],
        "[{CASE}] replace stores"
    );
    assert_eq!(
        expect_ok(CASE, "get", pack.get(&keys(&["shared/k"])).await),
        vec![Some(second.clone())]
    );
    let x1 = packed("shared/x", b"one", 3);
    let x2 = packed("shared/x", b"two", 4);
    assert_eq!(
        expect_ok(
            CASE,
            "put twice",
            pack.put(&[x1.clone(), x2, packed("shared/y", b"y", 5)], false)
                .await
        ),
        vec![true, false, true],
        "[{CASE}] the first blob of a key in a batch is stored, the second kept out"
    );
    assert_eq!(
        expect_ok(CASE, "get", pack.get(&keys(&["shared/x"])).await),
        vec![Some(x1)]
    );
}

/// Removal says whether there was a blob, and a removed key reads as absent.
pub async fn pack_remove(pack: &dyn BlobPack) {
    const CASE: &str = "pack_remove";
    expect_ok(
        CASE,
        "put",
        pack.put(
            &[packed("shared/r", b"r", 1), packed("shared/s", b"s", 1)],
            false,
        )
        .await,
    );
    assert!(
        expect_ok(CASE, "remove", pack.remove("shared/r").await),
        "[{CASE}] removed"
    );
    assert!(
        !expect_ok(CASE, "remove again", pack.remove("shared/r").await),
        "[{CASE}] already gone"
    );
    assert_eq!(
        expect_ok(
            CASE,
            "get",
            pack.get(&keys(&["shared/r", "shared/s"])).await
        )
        .iter()
        .map(Option::is_some)
        .collect::<Vec<_>>(),
        vec![false, true],
        "[{CASE}] only the removed key is gone"
    );
    assert_eq!(pack_keys(pack, CASE, "").await, keys(&["shared/s"]));
}

/// A listing gives exactly the keys that start with the prefix, each once, in pages that
/// continue where the previous one ended.
pub async fn pack_list(pack: &dyn BlobPack) {
    const CASE: &str = "pack_list";
    let all = [
        "a/b/2",
        "a/b/1",
        "a/b0",
        "a/bc",
        "a/b",
        "b/1",
        "a/b/é",
        "a/b/z",
        "é/1",
        "a/b/\u{7f}",
        "aé/1",
        "aé/2",
        "aêx",
    ];
    let blobs: Vec<PackedBlob> = all.iter().map(|k| packed(k, k.as_bytes(), 9)).collect();
    expect_ok(CASE, "put", pack.put(&blobs, false).await);
    let mut sorted: Vec<String> = keys(&all);
    sorted.sort();
    assert_eq!(
        pack_keys(pack, CASE, "").await,
        sorted,
        "[{CASE}] everything"
    );
    assert_eq!(
        pack_keys(pack, CASE, "a/b/").await,
        keys(&["a/b/1", "a/b/2", "a/b/z", "a/b/\u{7f}", "a/b/é"]),
        "[{CASE}] the prefix's keys only"
    );
    assert_eq!(
        pack_keys(pack, CASE, "é").await,
        keys(&["é/1"]),
        "[{CASE}] a non-ASCII prefix"
    );
    assert_eq!(
        pack_keys(pack, CASE, "aé").await,
        keys(&["aé/1", "aé/2"]),
        "[{CASE}] a prefix ending in a non-ASCII character"
    );
    assert_eq!(
        pack_keys(pack, CASE, "c").await,
        Vec::<String>::new(),
        "[{CASE}] no match"
    );
    for page in [1, 2, 3] {
        let expected: Vec<String> = sorted
            .iter()
            .filter(|k| k.starts_with("a/"))
            .cloned()
            .collect();
        assert_eq!(
            listed(pack, CASE, "a/", page).await,
            expected,
            "[{CASE}] pages of {page} cover the prefix once"
        );
    }
    let listing = expect_ok(CASE, "list", pack.list("b/", None, 10).await);
    assert_eq!(
        listing.blobs,
        vec![blobs[5].meta()],
        "[{CASE}] a listing carries each blob's metadata"
    );
    assert_eq!(
        listing.next, None,
        "[{CASE}] a page short of its limit is the last"
    );
    // Blobs removed or added between pages: the ones there throughout are listed once.
    let first = expect_ok(CASE, "list", pack.list("", None, 4).await);
    let cursor = first.next.clone().expect("more pages");
    expect_ok(CASE, "remove", pack.remove(&first.blobs[0].key).await);
    expect_ok(
        CASE,
        "put",
        pack.put(&[packed("zz/new", b"n", 1)], false).await,
    );
    let mut rest = listed_from(pack, CASE, cursor).await;
    rest.extend(first.blobs.iter().map(|m| m.key.clone()));
    rest.retain(|k| k != "zz/new");
    rest.sort();
    assert_eq!(
        rest, sorted,
        "[{CASE}] a listing across writes lists the steady blobs once"
    );
}

async fn listed_from(pack: &dyn BlobPack, case: &str, cursor: String) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = Some(cursor);
    while let Some(c) = cursor {
        let listing = expect_ok(case, "list", pack.list("", Some(&c), 3).await);
        keys.extend(listing.blobs.into_iter().map(|m| m.key));
        cursor = listing.next;
    }
    keys
}

/// A page's worth of small blobs and a few of 64 KiB go in one batch and come back intact.
pub async fn pack_large_batch(pack: &dyn BlobPack) {
    const CASE: &str = "pack_large_batch";
    let blobs: Vec<PackedBlob> = (0..1200u32)
        .map(|i| {
            let len = if i % 400 == 7 { 64 * 1024 } else { 256 };
            let bytes: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
            packed(
                &format!("shared/batch/{:02x}/{i}", i % 256),
                &bytes,
                u64::from(i),
            )
        })
        .collect();
    let stored = expect_ok(CASE, "put", pack.put(&blobs, false).await);
    assert!(
        stored.iter().all(|s| *s),
        "[{CASE}] every new key is stored"
    );
    let asked: Vec<String> = blobs.iter().rev().map(|b| b.key.clone()).collect();
    let got = expect_ok(CASE, "get", pack.get(&asked).await);
    let expected: Vec<Option<PackedBlob>> = blobs.iter().rev().cloned().map(Some).collect();
    assert!(
        got == expected,
        "[{CASE}] every blob comes back intact, in the order asked"
    );
    assert_eq!(pack_keys(pack, CASE, "shared/batch/").await.len(), 1200);
}

/// What one instance packed, a second instance on the same backend reads back.
pub async fn blob_pack_reopen(first: &dyn BlobPack, second: &dyn BlobPack) {
    const CASE: &str = "blob_pack_reopen";
    let blob = packed("shared/reopen/1", b"kept across instances", 42);
    expect_ok(
        CASE,
        "put",
        first.put(std::slice::from_ref(&blob), false).await,
    );
    assert_eq!(
        expect_ok(CASE, "get", second.get(&keys(&["shared/reopen/1"])).await),
        vec![Some(blob)],
        "[{CASE}] the second instance reads what the first packed"
    );
}
