//! Scenario group 10 (app rows: AR vs AW, AA; the applier contract, AP) of
//! shared/scenarios.md.
//!
//! AR = a row of the reserved, file-backed table `_starkeep_sync_records`; AW = a row of any
//! other table (here `test_rows`), metadata only.
//!
//! SPEC differences from the TypeScript figures:
//! - `applied` counts app rows, and `RoundReport::landed` lists them (AA-03, AA-05, AA-07,
//!   AA-09, AA-11: the reference never counts or announces app rows, W-O4).
//! - Blob keys are content-addressed (`apps/test-app/syncable/<2>/<sha256>`), not
//!   `app/test-app/photos/<id>` (AA-01).
//! - A namespace with files disabled moves no blobs (AA-10, W-O9 fixed).
//! - A failed local scan blocks the outbound side instead of being read as "nothing" (AA-13,
//!   W-N1 fixed).
//!
//! The applier contract AP-01..AP-14 is a store contract: AP-02, AP-03, AP-04, AP-08..AP-14
//! (scan pages and cursors, coverage queries, key validation, ceilings, zero limits, unknown
//! and unreadable tables, digests, composite keys) are covered by the port conformance suite
//! `crates/sync-testkit/src/conformance.rs` (run by `tests/conformance_memory.rs` and by
//! each storage backend). The exchange-level ones are ported here: AP-01 and AP-06 (LWW,
//! stale writes inert), AP-05 (tombstone identity on the wire) and AP-07 (only rows above
//! the peer's watermark ship).

use futures::executor::block_on;
use serde_json::json;
use sync_core::{AppRowStore, Direction, Item, ItemKey, ItemProblem, Residency};
use sync_protocol::{AppRow, RowOp, RowValues, RESERVED_TABLE};
use sync_testkit::{
    harness::{ash, test_namespace, Pair, TEST_APP, TEST_TABLE},
    memory::{FaultMode, FaultPoint},
};

fn ar_key(r: &AppRow) -> String {
    r.row.as_ref().unwrap()["object_storage_key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn col(r: &AppRow, c: &str) -> serde_json::Value {
    r.row.as_ref().unwrap()[c].clone()
}

#[test]
fn aa01_an_ar_row_ships_with_its_blob() {
    let p = Pair::app();
    let row = p
        .local
        .put_row(RESERVED_TABLE, "local-photo-1", "x", Some(&[7, 8, 9]));
    // Adjusted: the key is content-addressed rather than `app/test-app/photos/<id>`.
    assert!(ar_key(&row).starts_with("apps/test-app/"));
    let r = p.round();
    assert_eq!(r.shipped, 1);
    let held = p.cloud.rows.all(TEST_APP);
    let reserved: Vec<_> = held.keys().filter(|(t, _)| t == RESERVED_TABLE).collect();
    assert_eq!(reserved.len(), 1);
    assert_eq!(
        col(&p.cloud.row(RESERVED_TABLE, "local-photo-1").unwrap(), "id"),
        json!("local-photo-1")
    );
    assert_eq!(p.cloud.blobs.bytes(&ar_key(&row)).unwrap(), vec![7, 8, 9]);
    assert_eq!(
        p.peer().get("local").map(|h| h.to_string()),
        Some(row.timestamp.to_string())
    );
}

#[test]
fn aa02_local_ar_insert() {
    let p = Pair::app();
    let row = p.local.put_row(RESERVED_TABLE, "A", "x", Some(b"ar"));
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    assert_eq!(p.cloud.row(RESERVED_TABLE, "A").unwrap(), row);
    assert!(p.cloud.blobs.has(&ar_key(&row)));
}

#[test]
fn aa03_cloud_ar_insert() {
    let p = Pair::app();
    let row = p.cloud.put_row(RESERVED_TABLE, "A", "x", Some(b"ar"));
    // Adjusted: ⟨0,0,F⟩×2 in the reference, which never counts app rows.
    assert_eq!(ash(&p.round()), (1, 0, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    assert_eq!(p.local.row(RESERVED_TABLE, "A").unwrap(), row);
    assert!(p.local.blobs.has(&ar_key(&row)));
    assert_eq!(
        p.local.row_residency(RESERVED_TABLE, "A"),
        Residency::Resident
    );
}

#[test]
fn aa04_local_ar_update() {
    let p = Pair::app();
    p.both_same_row(RESERVED_TABLE, "A", "v1", Some(b"v1"));
    let u = p
        .local
        .put_row(RESERVED_TABLE, "A", "v2", Some(b"local-updated"));
    assert_eq!(ash(&p.round()), (0, 1, false));
    let c = p.cloud.row(RESERVED_TABLE, "A").unwrap();
    assert_eq!(c.timestamp, u.timestamp);
    assert_eq!(col(&c, "content_hash"), col(&u, "content_hash"));
    assert!(p.cloud.blobs.has(&ar_key(&u)));
}

#[test]
fn aa05_cloud_ar_update_of_a_diverged_row() {
    let p = Pair::app();
    p.local
        .put_row(RESERVED_TABLE, "A", "base-local", Some(b"base-local"));
    p.cloud
        .put_row(RESERVED_TABLE, "A", "base-cloud", Some(&[4, 5, 6]));
    let u = p
        .cloud
        .put_row(RESERVED_TABLE, "A", "cloud-updated", Some(b"cloud-updated"));
    // Adjusted: ⟨0,1,F⟩ in the reference; the applied row counts here.
    assert_eq!(ash(&p.round()), (1, 1, false));
    let l = p.local.row(RESERVED_TABLE, "A").unwrap();
    assert_eq!(l.timestamp, u.timestamp);
    assert_eq!(col(&l, "content_hash"), col(&u, "content_hash"));
    assert!(p.local.blobs.has(&ar_key(&u)));
}

#[test]
fn aa06_local_aw_insert() {
    let p = Pair::app();
    let row = p.local.put_row(TEST_TABLE, "w", "local-insert", None);
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    assert_eq!(p.local.row(TEST_TABLE, "w").unwrap(), row);
    assert_eq!(
        col(&p.cloud.row(TEST_TABLE, "w").unwrap(), "payload"),
        json!("local-insert")
    );
}

#[test]
fn aa07_cloud_aw_insert() {
    let p = Pair::app();
    let row = p.cloud.put_row(TEST_TABLE, "w", "cloud-insert", None);
    // Adjusted: ⟨0,0,F⟩×2 in the reference.
    assert_eq!(ash(&p.round()), (1, 0, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    assert_eq!(p.local.row(TEST_TABLE, "w").unwrap(), row);
    assert_eq!(p.cloud.row(TEST_TABLE, "w").unwrap(), row);
}

#[test]
fn aa08_local_aw_update() {
    let p = Pair::app();
    p.both_same_row(TEST_TABLE, "w", "base", None);
    let u = p.local.put_row(TEST_TABLE, "w", "local-updated", None);
    p.round();
    let c = p.cloud.row(TEST_TABLE, "w").unwrap();
    assert_eq!(c.timestamp, u.timestamp);
    assert_eq!(col(&c, "payload"), json!("local-updated"));
}

#[test]
fn aa09_cloud_aw_update_of_a_diverged_row() {
    let p = Pair::app();
    p.local.put_row(TEST_TABLE, "w", "base-local", None);
    p.cloud.put_row(TEST_TABLE, "w", "base-cloud", None);
    let u = p.cloud.put_row(TEST_TABLE, "w", "cloud-updated", None);
    assert_eq!(ash(&p.round()), (1, 1, false));
    let l = p.local.row(TEST_TABLE, "w").unwrap();
    assert_eq!(l.timestamp, u.timestamp);
    assert_eq!(col(&l, "payload"), json!("cloud-updated"));
}

#[test]
fn aa10_blob_manifest_rules_for_app_rows() {
    let p = Pair::app();
    let ar = p.local.make_row(RESERVED_TABLE, "A", "x", Some(b"bytes"));
    let m = Item::Row(ar.clone())
        .blob(true)
        .expect("a live AR with a key needs its blob");
    assert_eq!(m.key, ar_key(&ar));
    assert_eq!(json!(m.content_hash), col(&ar, "content_hash"));
    assert_eq!(m.size_bytes, 5);
    assert_eq!(m.mime_type.as_deref(), Some("application/octet-stream"));

    let with = |f: &dyn Fn(&mut RowValues)| {
        let mut r = ar.clone();
        f(r.row.as_mut().unwrap());
        Item::Row(r).blob(true)
    };
    // No content hash: the key stands in for it.
    let m = with(&|r| {
        r.insert("content_hash".into(), json!(""));
    })
    .unwrap();
    assert_eq!(m.content_hash, m.key);
    // size_bytes as a string, or unusable.
    assert_eq!(
        with(&|r| {
            r.insert("size_bytes".into(), json!("12"));
        })
        .unwrap()
        .size_bytes,
        12
    );
    assert_eq!(
        with(&|r| {
            r.insert("size_bytes".into(), json!(null));
        })
        .unwrap()
        .size_bytes,
        0
    );
    // No manifest: empty key, tombstone (op or deleted_at), files disabled, an AW table.
    assert!(with(&|r| {
        r.insert("object_storage_key".into(), json!(""));
    })
    .is_none());
    assert!(with(&|r| {
        r.insert("deleted_at".into(), json!("x"));
    })
    .is_none());
    let mut del = ar.clone();
    del.op = RowOp::Delete;
    assert!(Item::Row(del).blob(true).is_none());
    assert!(Item::Row(ar.clone()).blob(false).is_none());
    let mut aw = ar.clone();
    aw.table = TEST_TABLE.into();
    assert!(Item::Row(aw).blob(true).is_none());
}

#[test]
fn aa10_wo9_a_namespace_with_files_disabled_moves_no_blobs() {
    let p = Pair::app();
    for side in [&p.local, &p.cloud] {
        block_on(
            side.rows
                .register(test_namespace().with_files_enabled(false)),
        )
        .unwrap();
    }
    let row = p.local.put_row(RESERVED_TABLE, "A", "x", Some(b"bytes"));
    // Adjusted: the reference ignores `filesEnabled` and moves the blob (W-O9).
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert_eq!(p.cloud.row(RESERVED_TABLE, "A").unwrap(), row);
    assert!(!p.cloud.blobs.has(&ar_key(&row)));
    assert_eq!(p.cloud.blobs.put_count(), 0);
}

#[test]
fn aa11_app_rows_are_counted_and_announced() {
    let p = Pair::app();
    let row = p.cloud.put_row(TEST_TABLE, "w", "x", None);
    let r = p.round();
    // Adjusted: the reference gives ⟨0,0,F⟩ and no event (W-O4); SPEC counts app rows.
    assert_eq!(ash(&r), (1, 0, false));
    assert_eq!(
        r.landed,
        vec![ItemKey::Row {
            app: TEST_APP.into(),
            table: TEST_TABLE.into(),
            key: json!(["w"]).to_string(),
        }]
    );
    assert_eq!(p.own().get("cloud"), Some(&row.timestamp));
}

#[test]
fn aa12_a_local_apply_failure_skips_the_row_and_holds_the_watermark() {
    let p = Pair::app();
    let r0 = p.cloud.put_row(TEST_TABLE, "r0", "x", None);
    let r1 = p.cloud.put_row(TEST_TABLE, "r1", "x", None);
    p.cloud.put_row(RESERVED_TABLE, "r2", "x", None);
    p.local
        .faults
        .arm(FaultPoint::Apply("r1".into()), FaultMode::Persistent);
    let r = p.round();
    assert_eq!(
        ash(&r),
        (2, 0, true),
        "later rows still apply; has_more: held back"
    );
    assert!(p.local.row(TEST_TABLE, "r0").is_some());
    assert!(p.local.row(TEST_TABLE, "r1").is_none());
    assert!(p.local.row(RESERVED_TABLE, "r2").is_some());
    assert_eq!(
        p.own().get("cloud"),
        Some(&r0.timestamp),
        "own stops before the failed row"
    );
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].direction, Direction::Inbound);
    assert_eq!(r.failures[0].at, r1.timestamp);
    assert!(matches!(r.failures[0].problem, ItemProblem::Apply(_)));

    p.local.faults.heal();
    let r = p.round();
    assert_eq!(ash(&r), (1, 0, false), "the failed row arrives once healed");
    assert!(p.local.row(TEST_TABLE, "r1").is_some());
}

#[test]
fn aa13_wn1_a_failed_local_scan_blocks_the_outbound_side() {
    // Do not replicate the reference (a failed scan read as "nothing", W-N1).
    for point in [FaultPoint::Scan, FaultPoint::Coverage] {
        let p = Pair::app();
        p.local.put_row(TEST_TABLE, "t1", "x", None);
        p.local.put_row(RESERVED_TABLE, "t2", "x", None);
        let inbound = p.cloud.put_row(TEST_TABLE, "c", "x", None);
        p.local.faults.arm(point.clone(), FaultMode::Persistent);
        let r = p.round();
        assert_eq!(
            ash(&r),
            (1, 0, true),
            "{point:?}: nothing ships, inbound still applies"
        );
        assert!(r.outbound_blocked.is_some());
        assert!(p.cloud.row(TEST_TABLE, "t1").is_none());
        assert!(p.cloud.row(RESERVED_TABLE, "t2").is_none());
        assert_eq!(p.local.row(TEST_TABLE, "c").unwrap(), inbound);
        let r = p.round();
        assert!(r.stalled(), "{point:?}: retrying a failure");

        p.local.faults.heal();
        assert_eq!(ash(&p.round()), (0, 2, false));
        assert!(p.cloud.row(TEST_TABLE, "t1").is_some());
        assert!(p.cloud.row(RESERVED_TABLE, "t2").is_some());
    }
}

#[test]
fn ap01_ap06_stale_and_equal_versions_are_inert_at_exchange_level() {
    let p = Pair::app();
    let old = p.local.make_row(TEST_TABLE, "w", "old", None);
    let new = p.cloud.put_row(TEST_TABLE, "w", "new", None);
    p.local.apply_row(&old);
    // L offers its older version; C keeps the newer and returns it.
    assert_eq!(ash(&p.round()), (1, 1, false));
    assert_eq!(p.cloud.row(TEST_TABLE, "w").unwrap(), new);
    assert_eq!(p.local.row(TEST_TABLE, "w").unwrap(), new);
    // An equal version offered again changes nothing and is not counted.
    p.local.state.reset(&p.channel);
    let r = p.round();
    assert_eq!(r.applied, 0);
    assert_eq!(p.cloud.row(TEST_TABLE, "w").unwrap(), new);
}

#[test]
fn ap05_tombstones_carry_their_full_key_and_reproduce_the_live_rows() {
    let p = Pair::app();
    for i in 0..4 {
        p.local.put_row(TEST_TABLE, &format!("r{i}"), "x", None);
    }
    p.local.delete_row(TEST_TABLE, "r1");
    // A tombstone written with its key only in `where` (no `row`).
    let mut bare = p.local.delete_row(TEST_TABLE, "r3");
    bare.timestamp = p.local.now();
    bare.row = None;
    p.local.apply_row(&bare);
    p.until_converged();
    let shipped = p.cloud.row(TEST_TABLE, "r3").unwrap();
    assert_eq!(shipped.op, RowOp::Delete);
    assert_eq!(shipped.where_.as_ref().unwrap()["id"], json!("r3"));
    let live = |side: &sync_testkit::harness::Side| {
        side.rows
            .all(TEST_APP)
            .into_iter()
            .filter(|(_, r)| !r.is_tombstone())
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(live(&p.cloud), live(&p.local));
    assert_eq!(live(&p.cloud).len(), 2);
    assert_eq!(p.cloud.rows.all(TEST_APP), p.local.rows.all(TEST_APP));
}

#[test]
fn ap07_only_rows_above_the_peers_watermark_ship() {
    let p = Pair::app();
    for i in 0..3 {
        p.both_same_row(TEST_TABLE, &format!("old{i}"), "x", None);
    }
    p.set_current_watermarks();
    let new = p.local.put_row(TEST_TABLE, "new", "x", None);
    assert_eq!(
        ash(&p.round()),
        (0, 1, false),
        "only the row above peer[local] ships"
    );
    assert_eq!(p.cloud.row(TEST_TABLE, "new").unwrap(), new);
    assert_eq!(
        block_on(p.cloud.rows.coverage(TEST_APP, TEST_TABLE))
            .unwrap()
            .get("local"),
        Some(&new.timestamp)
    );
}
