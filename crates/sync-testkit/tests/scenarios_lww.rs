//! Scenario group 7 (concurrent last-writer-wins, LW) of shared/scenarios.md.
//!
//! Both sides read one wall clock that moves on every read, so the later write always has the
//! higher HLC. SPEC differences from the TypeScript figures: `applied` counts app rows too
//! (LW-15's cloud-wins variant is ⟨1,1,F⟩, not ⟨0,1,F⟩); blob keys are content-addressed,
//! so an update that rewrites the blob gets a new key (the reference reuses the key, LW-10);
//! an inbound LWW loser pulls no blob (W-O6 fixed).

use futures::executor::block_on;
use serde_json::json;
use sync_core::Residency;
use sync_hlc::{Hlc, NodeId};
use sync_protocol::{AppRow, ExchangeRequest, RowOp, SharedRecord, RESERVED_TABLE};
use sync_testkit::{
    harness::{ash, Pair, TEST_TABLE},
    memory::{sha256_hex, FaultMode, FaultPoint},
};

fn payload(r: &AppRow) -> serde_json::Value {
    r.row.as_ref().unwrap()["payload"].clone()
}

fn hash(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

#[test]
fn lw01_both_update_local_second_wins() {
    let p = Pair::drive();
    p.both_same_record("R", Some(b"v1"));
    p.cloud.put_record("R", Some(b"cloud-updated"));
    let u = p.local.put_record("R", Some(b"local-updated"));
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    let c = p.cloud.record("R").unwrap();
    assert_eq!(c.updated_at, u.updated_at);
    assert_eq!(c.content_hash, hash(b"local-updated"));
}

#[test]
fn lw02_both_update_cloud_second_wins() {
    let p = Pair::drive();
    p.both_same_record("R", Some(b"v1"));
    p.local.put_record("R", Some(b"local-updated"));
    let u = p.cloud.put_record("R", Some(b"cloud-updated"));
    assert_eq!(ash(&p.round()), (1, 1, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    assert_eq!(p.local.record("R").unwrap(), u);
    assert_eq!(
        p.local.record("R").unwrap().content_hash,
        hash(b"cloud-updated")
    );
    assert_eq!(p.local.record_residency("R"), Residency::Resident);
}

#[test]
fn lw03_diverged_then_both_update_local_second() {
    let p = Pair::drive();
    p.local.put_record("R", Some(b"base-local"));
    p.cloud.put_record("R", Some(&[4, 5, 6]));
    p.cloud.put_record("R", Some(b"cloud-updated"));
    let u = p.local.put_record("R", Some(b"local-updated"));
    assert_eq!(ash(&p.round()), (0, 1, false));
    let r2 = p.round();
    assert_eq!(ash(&r2), (0, 0, false));
    assert_eq!(r2.applied, 0);
    assert_eq!(p.cloud.record("R").unwrap().updated_at, u.updated_at);
    assert_eq!(p.local.record("R").unwrap().updated_at, u.updated_at);
}

#[test]
fn lw04_cloud_delete_then_later_local_update() {
    let p = Pair::drive();
    p.both_same_record("R", Some(b"v1"));
    p.cloud.delete_record("R");
    let u = p.local.put_record("R", Some(b"local-updated"));
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    let c = p.cloud.record("R").unwrap();
    assert_eq!(c.deleted_at, None);
    assert_eq!(c, u);
    assert_eq!(c.content_hash, hash(b"local-updated"));
}

#[test]
fn lw05_local_delete_then_later_cloud_update() {
    let p = Pair::drive();
    p.both_same_record("R", Some(b"v1"));
    p.local.delete_record("R");
    let u = p.cloud.put_record("R", Some(b"cloud-updated"));
    assert_eq!(ash(&p.round()), (1, 1, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    let l = p.local.record("R").unwrap();
    assert_eq!(l.deleted_at, None);
    assert_eq!(l, u);
    assert_eq!(p.local.record_residency("R"), Residency::Resident);
}

#[test]
fn lw06_ar_both_update_local_second() {
    let p = Pair::app();
    p.both_same_row(RESERVED_TABLE, "A", "v1", Some(b"v1"));
    p.cloud
        .put_row(RESERVED_TABLE, "A", "cloud", Some(b"cloud-updated"));
    let u = p
        .local
        .put_row(RESERVED_TABLE, "A", "local", Some(b"local-updated"));
    p.round();
    let c = p.cloud.row(RESERVED_TABLE, "A").unwrap();
    assert_eq!(
        c.row.as_ref().unwrap()["content_hash"],
        json!(hash(b"local-updated"))
    );
    assert_eq!(c.timestamp, u.timestamp);
    assert_eq!(
        p.cloud.row_residency(RESERVED_TABLE, "A"),
        Residency::Resident
    );
}

#[test]
fn lw07_ar_local_delete_then_later_cloud_update() {
    let p = Pair::app();
    p.both_same_row(RESERVED_TABLE, "A", "v1", Some(b"v1"));
    p.local.delete_row(RESERVED_TABLE, "A");
    p.cloud
        .put_row(RESERVED_TABLE, "A", "cloud", Some(b"cloud-updated"));
    p.round();
    let l = p.local.row(RESERVED_TABLE, "A").unwrap();
    assert_eq!(l.op, RowOp::Insert);
    assert_eq!(
        l.row.as_ref().unwrap()["content_hash"],
        json!(hash(b"cloud-updated"))
    );
    assert_eq!(
        p.local.row_residency(RESERVED_TABLE, "A"),
        Residency::Resident
    );
}

#[test]
fn lw08_aw_both_update_local_second() {
    let p = Pair::app();
    p.both_same_row(TEST_TABLE, "w", "base", None);
    p.cloud.put_row(TEST_TABLE, "w", "cloud-updated", None);
    p.local.put_row(TEST_TABLE, "w", "local-updated", None);
    p.round();
    assert_eq!(
        payload(&p.cloud.row(TEST_TABLE, "w").unwrap()),
        json!("local-updated")
    );
}

#[test]
fn lw09_aw_local_delete_then_later_cloud_update() {
    let p = Pair::app();
    p.both_same_row(TEST_TABLE, "w", "base", None);
    p.local.delete_row(TEST_TABLE, "w");
    p.cloud.put_row(TEST_TABLE, "w", "cloud-updated", None);
    p.round();
    let l = p.local.row(TEST_TABLE, "w").unwrap();
    assert_eq!(l.op, RowOp::Insert);
    assert_eq!(payload(&l), json!("cloud-updated"));
}

#[test]
fn lw10_both_rewrite_the_blob_the_loser_is_orphaned() {
    let p = Pair::drive();
    p.both_same_record("R", Some(b"v1"));
    let lost = p.cloud.put_record("R", Some(b"cloud-updated"));
    let won = p.local.put_record("R", Some(b"local-updated"));
    // Content addressing: the two rewrites have different keys (the reference reused one).
    assert_ne!(lost.object_storage_key, won.object_storage_key);
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    let c = p.cloud.record("R").unwrap();
    assert_eq!(c.content_hash, won.content_hash);
    assert_eq!(
        p.cloud.blobs.bytes(&c.object_storage_key).unwrap(),
        b"local-updated".to_vec()
    );
    // The loser's bytes are "discarded": no live row names them, and L never pulled them.
    assert!(!p.local.blobs.has(&lost.object_storage_key));
}

#[test]
fn lw10_wo6_an_inbound_lww_loser_pulls_no_blob() {
    // L holds a newer version it cannot ship (its upload fails); C returns its older version,
    // whose blob C does not even have. The reference pulls the loser's blob (and, when it is
    // missing, wedges the author for good). Here the loser is skipped without any pull.
    let p = Pair::drive();
    let old = p.cloud.put_record("R", Some(b"cloud-old"));
    p.cloud.blobs.remove(&old.object_storage_key);
    let new = p.local.put_record("R", Some(b"local-new"));
    p.cloud.faults.arm(
        FaultPoint::BlobPut(new.object_storage_key.clone()),
        FaultMode::Persistent,
    );
    let r = p.round();
    assert_eq!(r.applied, 0);
    assert!(r.landed.is_empty(), "a loser is not announced");
    assert!(
        r.failures.iter().all(|f| f.at != old.updated_at),
        "no failed pull for the loser"
    );
    assert_eq!(
        p.local.record("R").unwrap(),
        new,
        "L keeps its newer version"
    );
    assert!(!p.local.blobs.has(&old.object_storage_key));
    assert_eq!(
        p.own().get("cloud"),
        Some(&old.updated_at),
        "the loser still counts as seen"
    );
}

#[test]
fn lw11_timestamp_tie_the_larger_node_id_wins() {
    let p = Pair::drive();
    p.time.set(9_999_990);
    let tie = |node: &str| Hlc::new(9_999_999, 7, NodeId::new(node).unwrap()).unwrap();
    let stamp = |mut r: SharedRecord, at: Hlc| {
        r.created_at = at.clone();
        r.updated_at = at;
        r
    };
    let l = stamp(p.local.make_record("R", Some(b"local")), tie("local"));
    let c = stamp(p.cloud.make_record("R", Some(b"cloud")), tie("cloud"));
    p.local.apply_record(&l);
    p.cloud.apply_record(&c);
    assert!(l.updated_at > c.updated_at, "\"local\" > \"cloud\"");
    p.round();
    assert_eq!(p.local.record("R").unwrap(), l);
    assert_eq!(p.cloud.record("R").unwrap(), l);
    assert!(p.cloud.blobs.has(&l.object_storage_key));
}

#[test]
fn lw12_lw15_aw_cloud_delete_then_later_local_update() {
    for diverged in [false, true] {
        let p = Pair::app();
        if diverged {
            // LW-14
            p.local.put_row(TEST_TABLE, "w", "base-local", None);
            p.cloud.put_row(TEST_TABLE, "w", "base-cloud", None);
        } else {
            p.both_same_row(TEST_TABLE, "w", "base", None);
        }
        p.cloud.delete_row(TEST_TABLE, "w");
        p.local.put_row(TEST_TABLE, "w", "local-updated", None);
        // LW-15: round 1 does work, round 2 applies nothing.
        assert_eq!(ash(&p.round()), (0, 1, false));
        assert_eq!(p.round().applied, 0);
        let c = p.cloud.row(TEST_TABLE, "w").unwrap();
        assert_eq!(c.op, RowOp::Insert);
        assert_eq!(payload(&c), json!("local-updated"));
    }
}

#[test]
fn lw13_lw15_aw_local_update_then_later_cloud_delete() {
    for diverged in [false, true] {
        let p = Pair::app();
        if diverged {
            // LW-14
            p.local.put_row(TEST_TABLE, "w", "base-local", None);
            p.cloud.put_row(TEST_TABLE, "w", "base-cloud", None);
        } else {
            p.both_same_row(TEST_TABLE, "w", "base", None);
        }
        p.local.put_row(TEST_TABLE, "w", "local-updated", None);
        let tomb = p.cloud.delete_row(TEST_TABLE, "w");
        // LW-15, adjusted: the reference gives ⟨0,1,F⟩; the applied tombstone counts here.
        assert_eq!(ash(&p.round()), (1, 1, false));
        assert_eq!(p.round().applied, 0);
        let l = p.local.row(TEST_TABLE, "w").unwrap();
        assert_eq!(l.timestamp, tomb.timestamp);
        assert_eq!(
            p.local.row_residency(TEST_TABLE, "w"),
            Residency::Tombstoned
        );
    }
}

#[test]
fn lw16_aw_tie_the_larger_node_id_wins() {
    let p = Pair::app();
    p.time.set(9_999_990);
    let tie = |node: &str| Hlc::new(9_999_999, 7, NodeId::new(node).unwrap()).unwrap();
    let mut l = p.local.make_row(TEST_TABLE, "w", "local", None);
    l.timestamp = tie("local");
    let mut c = p.cloud.make_row(TEST_TABLE, "w", "cloud", None);
    c.timestamp = tie("cloud");
    p.local.apply_row(&l);
    p.cloud.apply_row(&c);
    p.round();
    assert_eq!(
        payload(&p.local.row(TEST_TABLE, "w").unwrap()),
        json!("local")
    );
    assert_eq!(
        payload(&p.cloud.row(TEST_TABLE, "w").unwrap()),
        json!("local")
    );
}

#[test]
fn lw17_responder_applies_out_of_order_deliveries_by_version() {
    let p = Pair::drive();
    let responder = p.cloud.responder(&p.channel, p.responder_config.clone());
    // a. [late, early] of one author: both stored, coverage = late.
    let early = p.local.put_record("early", None);
    let late = p.local.put_record("late", None);
    let resp = block_on(responder.respond(ExchangeRequest {
        records: vec![late.clone(), early.clone()],
        limit: Some(100),
        ..ExchangeRequest::default()
    }))
    .unwrap();
    assert_eq!(p.cloud.record("early").unwrap(), early);
    assert_eq!(p.cloud.record("late").unwrap(), late);
    assert_eq!(
        resp.responder_watermarks.get("local"),
        Some(&late.updated_at)
    );
    // b. one id as [newer, older]: the newer stays.
    let older = p.local.put_record("R", None);
    let newer = p.local.put_record("R", None);
    block_on(responder.respond(ExchangeRequest {
        records: vec![newer.clone(), older],
        limit: Some(100),
        ..ExchangeRequest::default()
    }))
    .unwrap();
    assert_eq!(p.cloud.record("R").unwrap(), newer);
}
