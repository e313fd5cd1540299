//! Scenario group 17 (change notifications, CN) of shared/scenarios.md, at the level of what
//! the core guarantees: `RoundReport::landed` is what the engine's `local-data-synced`
//! notification announces after the round persisted. The notifier itself (subscribe and
//! unsubscribe, delivery order, a listener that throws: CN-06, CN-07, CN-08) lives in the
//! engine facade and is tested there.
//!
//! SPEC differences from the TypeScript reference:
//! - App rows are announced (CN-05: the reference never announces them, W-O4).
//! - An item whose blob lands in a later round than its metadata is announced in the round
//!   the blob lands (CN-03 adjusted, and the CN-04 quirk fixed: the reference never announces
//!   it, W-O5). It counts in `became_resident`, not `applied`.

use serde_json::json;
use sync_core::ItemKey;
use sync_hlc::Watermarks;
use sync_protocol::RESERVED_TABLE;
use sync_testkit::{
    harness::{Pair, Side, TEST_APP, TEST_TABLE},
    memory::{FaultMode, FaultPoint},
};

fn rec(id: &str) -> ItemKey {
    ItemKey::Record { id: id.into() }
}

fn row(table: &str, id: &str) -> ItemKey {
    ItemKey::Row {
        app: TEST_APP.into(),
        table: table.into(),
        key: json!([id]).to_string(),
    }
}

#[test]
fn cn01_landed_lists_newly_applied_items_in_processing_order() {
    let p = Pair::drive();
    let other = Side::new("device-b", p.time.clone());
    // Interleaved versions of two authors, all held by C.
    let mut expected = Vec::new();
    for i in 0..3 {
        p.cloud
            .put_record(&format!("c{i}"), Some(format!("c{i}").as_bytes()));
        expected.push(rec(&format!("c{i}")));
        other.put_record(&format!("b{i}"), Some(format!("b{i}").as_bytes()));
        p.cloud.copy_record_from(&other, &format!("b{i}"));
        expected.push(rec(&format!("b{i}")));
    }
    let r = p.round();
    assert_eq!(r.applied, 6);
    assert_eq!(
        r.landed, expected,
        "per author by HLC (here: global HLC order)"
    );
    assert_eq!(r.landed.len(), r.applied + r.became_resident);
    // Nothing is announced twice.
    assert!(p.round().landed.is_empty());
}

#[test]
fn cn02_nothing_is_announced_for_own_items_redeliveries_lww_losers_or_no_ops() {
    // Own items: never sent back (no echo), so never announced.
    let p = Pair::drive();
    p.local.put_record("mine", Some(b"m"));
    assert!(p.round().landed.is_empty());
    // A no-op round.
    assert!(p.round().landed.is_empty());

    // A redelivery of what L already holds (after a local state reset): kept, not announced.
    let p = Pair::drive();
    p.cloud.put_record("c", Some(b"c"));
    assert_eq!(p.round().landed, vec![rec("c")]);
    p.local.state.reset(&p.channel);
    let r = p.round();
    assert!(r.landed.is_empty());
    assert_eq!((r.applied, r.became_resident), (0, 0));

    // An LWW loser: L holds a newer version it cannot ship yet; C's older one is skipped.
    let p = Pair::drive();
    p.cloud.put_record("R", Some(b"old"));
    let newer = p.local.put_record("R", Some(b"new"));
    p.cloud.faults.arm(
        FaultPoint::BlobPut(newer.object_storage_key.clone()),
        FaultMode::Persistent,
    );
    let r = p.round();
    assert!(r.landed.is_empty());
    assert_eq!(p.local.record("R").unwrap(), newer);
}

#[test]
fn cn03_cn04_an_item_whose_blob_lands_late_is_announced_once_when_it_lands() {
    let p = Pair::drive();
    let r0 = p.cloud.put_record("r0", Some(b"zero"));
    p.cloud.put_record("r1", Some(b"one"));
    p.local.faults.arm(
        FaultPoint::BlobPut(r0.object_storage_key.clone()),
        FaultMode::Times(2),
    );
    // Round 1: r0's metadata applied but its blob failed: not announced; r1 is.
    let r = p.round();
    assert_eq!(r.landed, vec![rec("r1")]);
    // Round 2: the retry fails again: nothing announced (r1 is re-delivered and kept).
    let r = p.round();
    assert!(r.landed.is_empty());
    // Round 3: the blob lands, with a new item of C in the same round: both announced,
    // in order. Adjusted: the reference never announces r0 (CN-04, W-O5).
    p.cloud.put_record("r2", Some(b"two"));
    let r = p.round();
    assert_eq!(r.landed, vec![rec("r0"), rec("r2")]);
    assert_eq!((r.applied, r.became_resident), (1, 1));
    // Round 4: nothing new.
    assert!(p.round().landed.is_empty());
}

#[test]
fn cn05_app_rows_are_announced() {
    let p = Pair::app();
    p.cloud.put_row(TEST_TABLE, "w", "x", None);
    p.cloud.put_row(RESERVED_TABLE, "a", "x", Some(b"ar"));
    p.cloud.put_row(TEST_TABLE, "gone", "x", None);
    let tomb = p.cloud.delete_row(TEST_TABLE, "gone");
    let r = p.round();
    // Adjusted: the reference never announces app rows (W-O4).
    assert_eq!(
        r.landed,
        vec![
            row(TEST_TABLE, "w"),
            row(RESERVED_TABLE, "a"),
            row(TEST_TABLE, "gone")
        ]
    );
    assert_eq!(r.applied, 3);
    assert!(p.round().landed.is_empty());
    let own: Watermarks = [tomb.timestamp].into_iter().collect();
    assert_eq!(p.own(), own);
}
