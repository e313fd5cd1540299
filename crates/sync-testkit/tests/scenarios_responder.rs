//! Scenario groups 11 (responder coverage report, RW) and 12 (responder contiguity and
//! failure, RC) of shared/scenarios.md, plus the request checks of §15.3 (NQ) that belong to
//! the core responder: a zero limit is refused, a limit above the maximum is clamped, and
//! channel violations are refused. (Malformed bodies, bad HLCs and the other NQ items are
//! decoding concerns of sync-protocol / sync-http.)
//!
//! SPEC differences from the TypeScript reference:
//! - A coverage read that fails fails the request; it never shrinks to "nothing there"
//!   (RW-05: the reference leaves the table's authors out and succeeds).
//! - A failed shared-record apply halts that origin node (the response lists it in
//!   `halted_authors`, coverage is capped below the failure) instead of aborting the whole
//!   exchange (RC-05); the responder sorts per origin by HLC, so this is safe (W-A10).
//! - Rows of another app, or app rows on the Drive channel, are a channel violation refused
//!   with `ExchangeError::BadRequest` (RC-03, RC-04; the reference halts the authors, W-O12,
//!   W-O14). An unknown *table* of the channel's own app halts its author, as RC-03 did.
//! - Halted authors are reported to the requester (W-N9 fixed) and its round reports
//!   `has_more` (items held back).
//!
//! Beyond the reference: coverage is monotone (decision 0008). When another device's write
//! replaces an origin's newest version, the responder's report for that origin does not go
//! down, so the origin's next shipment is not refused as a "coverage gap" (RW-08 below).

use futures::executor::block_on;
use sync_core::{ExchangeError, Responder, ResponderConfig};
use sync_hlc::{Hlc, NodeId, Watermarks};
use sync_protocol::{ExchangeRequest, ExchangeResponse, RESERVED_TABLE};
use sync_testkit::{
    harness::{ash, Pair, Side, TEST_APP, TEST_TABLE},
    memory::{FaultMode, FaultPoint},
};

fn responder(p: &Pair) -> Responder {
    p.cloud.responder(&p.channel, p.responder_config.clone())
}

fn respond(p: &Pair, req: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
    block_on(responder(p).respond(req))
}

#[test]
fn rw01_an_empty_responder_reports_nothing() {
    let p = Pair::drive();
    let resp = respond(&p, ExchangeRequest::default()).unwrap();
    assert!(resp.responder_watermarks.is_empty());
    assert!(resp.records.is_empty() && !resp.has_more);
}

#[test]
fn rw02_the_report_spans_the_whole_state_not_the_delta() {
    let p = Pair::drive();
    let a = Side::new("a", p.time.clone());
    let b = Side::new("b", p.time.clone());
    a.put_record("a1", None);
    let a2 = a.put_record("a2", None);
    let b1 = b.put_record("b1", None);
    for (side, id) in [(&a, "a1"), (&a, "a2"), (&b, "b1")] {
        p.cloud.copy_record_from(side, id);
    }
    let covered: Watermarks = [a2.updated_at.clone(), b1.updated_at.clone()]
        .into_iter()
        .collect();
    let resp = respond(
        &p,
        ExchangeRequest {
            watermarks: covered.clone(),
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert!(resp.records.is_empty());
    assert_eq!(resp.responder_watermarks, covered);
}

#[test]
fn rw03_the_report_is_computed_after_the_apply() {
    let p = Pair::drive();
    let r = p.local.make_record("R", None);
    let resp = respond(
        &p,
        ExchangeRequest {
            records: vec![r.clone()],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert_eq!(resp.responder_watermarks.get("local"), Some(&r.updated_at));
}

#[test]
fn rw04_the_indexed_report_equals_the_reference_fold() {
    let p = Pair::drive();
    let authors: Vec<Side> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Side::new(n, p.time.clone()))
        .collect();
    for i in 0..12 {
        let side = &authors[i % 3];
        let id = format!("r{}", i % 7); // some ids are rewritten by another author
        side.put_record(&id, None);
        p.cloud.copy_record_from(side, &id);
    }
    // The reference fold of the monotone contract (decision 0008): per origin, the highest
    // version the cloud has held, stored now or replaced since. Every copy above was newer
    // than what it replaced, so each was held.
    let mut fold = Watermarks::new();
    for r in p.cloud.records.all().values() {
        fold.advance(&r.updated_at);
    }
    for side in &authors {
        for r in side.records.all().values() {
            fold.advance(&r.updated_at);
        }
    }
    let resp = respond(&p, ExchangeRequest::default()).unwrap();
    assert_eq!(resp.responder_watermarks, fold);
    assert_eq!(resp.responder_watermarks.len(), 3);
}

#[test]
fn rw05_a_failed_coverage_read_fails_the_request() {
    let p = Pair::drive();
    p.cloud.put_record("C", None);
    let l = p.local.put_record("L", None);
    p.cloud
        .faults
        .arm(FaultPoint::Coverage, FaultMode::Persistent);
    // Adjusted: the reference answers with the table's authors left out (an under-report
    // that makes the requester re-ship forever, W-N10); SPEC fails the request.
    let err = respond(&p, ExchangeRequest::default()).unwrap_err();
    assert!(err.is_transient(), "{err}");
    let before = p.state();
    assert!(p.try_round().is_err());
    assert_eq!(p.state(), before, "the requester persists nothing");
    p.cloud.faults.heal();
    assert_eq!(ash(&p.round()), (1, 1, false));
    assert_eq!(p.cloud.record("L").unwrap(), l);
}

#[test]
fn rw06_the_report_includes_tombstones() {
    let p = Pair::drive();
    p.cloud.put_record("R", None);
    let tomb = p.cloud.delete_record("R");
    let resp = respond(&p, ExchangeRequest::default()).unwrap();
    assert_eq!(
        resp.responder_watermarks.get("cloud"),
        Some(&tomb.updated_at)
    );
}

#[test]
fn rw07_the_requester_stores_the_report_verbatim() {
    let p = Pair::drive();
    let c = p.cloud.put_record("C", None);
    p.local.put_record("L", None);
    let mut stale = Watermarks::new();
    stale.advance(&Hlc::new(5, 0, NodeId::new("gone").unwrap()).unwrap());
    p.set_watermarks(Watermarks::new(), stale);
    p.round();
    let report = respond(
        &p,
        ExchangeRequest {
            watermarks: [c.updated_at.clone()].into_iter().collect(),
            ..ExchangeRequest::default()
        },
    )
    .unwrap()
    .responder_watermarks;
    assert_eq!(p.peer(), report);
    assert_eq!(p.peer().get("gone"), None);
}

/// RW-08 (decision 0008): device A writes r1 and r2 and syncs; device B overwrites r2 and
/// syncs; A writes r3 and syncs. The cloud's report for A must not have dropped to r1 when
/// B's version replaced r2, or A's r3 is refused once as a "coverage gap" (halted [A]) and
/// costs a round.
#[test]
fn rw08_an_overwrite_by_another_device_does_not_lower_the_report() {
    let a = Pair::drive();
    let b = a.second_device("device-b");
    a.local.put_record("r1", None);
    let a2 = a.local.put_record("r2", None);
    assert_eq!(ash(&a.round()), (0, 2, false));
    assert_eq!(a.peer().get("local"), Some(&a2.updated_at));

    assert_eq!(ash(&b.round()), (2, 0, false));
    let b2 = b.local.put_record("r2", None);
    assert_eq!(ash(&b.round()), (0, 1, false));
    assert_eq!(a.cloud.record("r2").unwrap(), b2);
    assert_eq!(
        b.peer().get("local"),
        Some(&a2.updated_at),
        "the cloud still covers A's replaced r2"
    );

    let a3 = a.local.put_record("r3", None);
    let r = a.round();
    assert!(
        r.halted_by_peer.is_empty() && r.peer_refusals.is_empty(),
        "no coverage gap: {:?}",
        r.peer_refusals
    );
    assert_eq!(ash(&r), (1, 1, false), "ships r3, receives B's r2");
    assert_eq!(a.cloud.record("r3").unwrap(), a3);
    assert_eq!(a.local.record("r2").unwrap(), b2);
    assert_eq!(a.peer().get("local"), Some(&a3.updated_at));
    assert_eq!(a.peer().get("device-b"), Some(&b2.updated_at));
    assert_eq!(ash(&a.round()), (0, 0, false));
    assert_eq!(ash(&b.round()), (1, 0, false));
}

/// RW-08 on an app channel: rows behave like records.
#[test]
fn rw08_an_overwrite_by_another_device_does_not_lower_the_report_of_a_table() {
    let a = Pair::app();
    let b = a.second_device("device-b");
    a.local.put_row(TEST_TABLE, "r1", "a", None);
    let a2 = a.local.put_row(TEST_TABLE, "r2", "a", None);
    assert_eq!(ash(&a.round()), (0, 2, false));
    assert_eq!(ash(&b.round()), (2, 0, false));
    let b2 = b.local.put_row(TEST_TABLE, "r2", "b", None);
    assert_eq!(ash(&b.round()), (0, 1, false));
    assert_eq!(b.peer().get("local"), Some(&a2.timestamp));

    let a3 = a.local.put_row(TEST_TABLE, "r3", "a", None);
    let r = a.round();
    assert!(
        r.halted_by_peer.is_empty() && r.peer_refusals.is_empty(),
        "no coverage gap: {:?}",
        r.peer_refusals
    );
    assert_eq!(ash(&r), (1, 1, false));
    assert_eq!(a.cloud.row(TEST_TABLE, "r3").unwrap(), a3);
    assert_eq!(a.local.row(TEST_TABLE, "r2").unwrap(), b2);
    assert_eq!(ash(&a.round()), (0, 0, false));
}

#[test]
fn rc01_an_app_row_that_fails_to_apply_is_not_covered() {
    let p = Pair::app();
    p.local.put_row(TEST_TABLE, "r1", "x", None);
    p.cloud
        .faults
        .arm(FaultPoint::Apply("r1".into()), FaultMode::Persistent);
    let r = p.round();
    assert_eq!(r.shipped, 1);
    assert_eq!(p.cloud.row_count(TEST_TABLE), 0);
    assert_eq!(p.peer().get("local"), None);
    // Adjusted: the halt is reported (W-N9) and the round asks to be run again.
    assert_eq!(r.halted_by_peer, vec![p.local.node.clone()]);
    assert!(r.has_more && r.stalled());
    assert!(r.peer_refusals[0].reason.contains("could not be stored"));

    p.cloud.faults.heal();
    let r = p.round();
    assert_eq!(r.shipped, 1);
    assert_eq!(p.cloud.row_count(TEST_TABLE), 1);
    assert!(p.peer().get("local").is_some());
    assert!(r.halted_by_peer.is_empty() && !r.has_more);
}

#[test]
fn rc02_a_later_row_is_not_applied_past_an_earlier_failed_one() {
    let p = Pair::app();
    p.local.put_row(TEST_TABLE, "r1", "x", None);
    let r2 = p.local.put_row(TEST_TABLE, "r2", "x", None);
    p.cloud
        .faults
        .arm(FaultPoint::Apply("r1".into()), FaultMode::Persistent);
    let r = p.round();
    assert_eq!(r.shipped, 2);
    assert_eq!(
        p.cloud.row_count(TEST_TABLE),
        0,
        "r2 must not land past the failed r1"
    );
    assert_eq!(p.peer().get("local"), None);
    p.cloud.faults.heal();
    assert_eq!(ash(&p.round()), (0, 2, false));
    assert_eq!(p.cloud.row_count(TEST_TABLE), 2);
    assert_eq!(p.peer().get("local"), Some(&r2.timestamp));
}

#[test]
fn rc03_an_unknown_table_halts_the_author() {
    let p = Pair::app();
    let mut a = p.local.make_row(TEST_TABLE, "a", "x", None);
    a.table = "not_registered".into();
    let b = p.local.make_row(TEST_TABLE, "b", "x", None);
    let other = Side::new("other", p.time.clone()).make_row(TEST_TABLE, "o", "x", None);
    let resp = respond(
        &p,
        ExchangeRequest {
            app_syncable_rows: vec![b, a, other.clone()],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert_eq!(
        p.cloud.row(TEST_TABLE, "b"),
        None,
        "the later row of the author is held"
    );
    assert_eq!(
        p.cloud.row(TEST_TABLE, "o").unwrap(),
        other,
        "other authors flow"
    );
    assert_eq!(resp.responder_watermarks.get("local"), None);
    assert_eq!(resp.halted_authors, vec![p.local.node.clone()]);
    assert!(resp.refusals[0].reason.contains("not_registered"));
    assert_eq!(resp.refusals[0].code.as_deref(), Some("unknown_table"));
}

#[test]
fn rc03_rc04_rows_outside_the_channel_are_refused_loudly() {
    // A row of an app this channel does not carry (the reference halts the author).
    let p = Pair::app();
    let mut foreign = p.local.make_row(TEST_TABLE, "a", "x", None);
    foreign.app_id = "unknown-app".into();
    let own = p.local.make_row(TEST_TABLE, "b", "x", None);
    let err = respond(
        &p,
        ExchangeRequest {
            app_syncable_rows: vec![foreign, own],
            ..ExchangeRequest::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ExchangeError::Refused { code: "channel_violation", ref message } if message.contains("unknown-app")),
        "{err}"
    );
    assert!(p.cloud.rows.all(TEST_APP).is_empty());

    // RC-04: app rows sent to the Drive channel, with a record of the same author.
    let p = Pair::drive();
    let sr = p.local.make_record("S", None);
    let row = p.local.make_row(TEST_TABLE, "w", "x", None);
    let err = respond(
        &p,
        ExchangeRequest {
            records: vec![sr],
            app_syncable_rows: vec![row],
            ..ExchangeRequest::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ExchangeError::Refused {
                code: "channel_violation",
                ..
            }
        ),
        "{err}"
    );
    assert!(p.cloud.records.all().is_empty() && p.cloud.rows.all(TEST_APP).is_empty());
}

#[test]
fn rc05_a_failed_record_apply_halts_its_origin_instead_of_aborting() {
    let p = Pair::drive();
    let r0 = p.local.put_record("r0", Some(b"zero"));
    p.local.put_record("r1", Some(b"one"));
    p.local.put_record("r2", Some(b"two"));
    let other = Side::new("other", p.time.clone());
    let o = other.make_record("o", None);
    p.cloud
        .faults
        .arm(FaultPoint::Apply("r1".into()), FaultMode::Persistent);

    // Directly: the response names the halted node and caps its coverage below the failure.
    let mut records = vec![
        p.local.record("r2").unwrap(),
        p.local.record("r1").unwrap(),
        r0.clone(),
        o.clone(),
    ];
    for r in &records {
        if let Some(b) = p.local.blobs.bytes(&r.object_storage_key) {
            p.cloud.blobs.insert(&r.object_storage_key, &b);
        }
    }
    records.rotate_left(1); // wire order is not version order
    let resp = respond(
        &p,
        ExchangeRequest {
            records,
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert_eq!(resp.halted_authors, vec![p.local.node.clone()]);
    assert_eq!(p.cloud.record("r0").unwrap(), r0);
    assert!(p.cloud.record("r1").is_none() && p.cloud.record("r2").is_none());
    assert_eq!(resp.responder_watermarks.get("local"), Some(&r0.updated_at));
    assert_eq!(
        p.cloud.record("o").unwrap(),
        o,
        "other origins are not affected"
    );

    // Through a round: the round completes, reports the halt, and retries after the fix.
    let r = p.round();
    assert_eq!(r.halted_by_peer, vec![p.local.node.clone()]);
    assert!(r.has_more);
    assert_eq!(p.peer().get("local"), Some(&r0.updated_at));
    p.cloud.faults.heal();
    assert_eq!(ash(&p.round()), (0, 2, false));
    assert_eq!(p.cloud.records.all().len(), 4);
    assert_eq!(
        p.peer().get("local"),
        Some(&p.local.record("r2").unwrap().updated_at)
    );
}

#[test]
fn rc05_out_of_order_delivery_with_a_failing_early_record_covers_nothing() {
    // The [N] responder-ordering case: [late, early] with `early` failing must not store
    // `late` and report coverage over the hole (W-A10).
    let p = Pair::drive();
    let early = p.local.make_record("early", None);
    let late = p.local.make_record("late", None);
    p.cloud
        .faults
        .arm(FaultPoint::Apply("early".into()), FaultMode::Persistent);
    let resp = respond(
        &p,
        ExchangeRequest {
            records: vec![late.clone(), early.clone()],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert!(p.cloud.record("late").is_none());
    assert_eq!(resp.responder_watermarks.get("local"), None);
    p.cloud.faults.heal();
    let resp = respond(
        &p,
        ExchangeRequest {
            records: vec![late.clone(), early],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert_eq!(
        resp.responder_watermarks.get("local"),
        Some(&late.updated_at)
    );
    assert!(resp.halted_authors.is_empty());
}

#[test]
fn rc06_rows_apply_per_author_in_version_order_and_advance_the_clock() {
    let p = Pair::app();
    // Rows stamped ahead of C's clock (within the skew guard), sent newest first.
    p.time.advance(10 * 60 * 1000);
    let r1 = p.local.make_row(TEST_TABLE, "w", "first", None);
    let r2 = p.local.make_row(TEST_TABLE, "w", "second", None);
    p.time.advance(-10 * 60 * 1000);
    let resp = respond(
        &p,
        ExchangeRequest {
            app_syncable_rows: vec![r2.clone(), r1],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert_eq!(
        p.cloud.row(TEST_TABLE, "w").unwrap(),
        r2,
        "the newer version wins"
    );
    assert_eq!(resp.responder_watermarks.get("local"), Some(&r2.timestamp));
    assert!(
        p.cloud.now() > r2.timestamp,
        "receive moved C's clock above what it applied"
    );
}

#[test]
fn nq_a_zero_limit_is_refused() {
    let p = Pair::drive();
    let err = respond(
        &p,
        ExchangeRequest {
            limit: Some(0),
            ..ExchangeRequest::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ExchangeError::BadRequest(ref m) if m.contains("limit")),
        "{err}"
    );
}

#[test]
fn nq01_a_limit_above_the_maximum_is_clamped() {
    let mut p = Pair::drive();
    p.responder_config = ResponderConfig::default().with_max_limit(5);
    for i in 0..8 {
        p.cloud.put_record(&format!("r{i}"), None);
    }
    let resp = respond(
        &p,
        ExchangeRequest {
            limit: Some(1_000_000),
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert_eq!(resp.records.len(), 5);
    assert!(resp.has_more);
    // A requester asking for more than the maximum still drains everything.
    let p = Pair {
        config: p.config.clone().with_page_limit(100),
        ..p
    };
    let s = p.sync_until_idle();
    assert!(s.complete);
    assert_eq!(s.applied, 8);
}

#[test]
fn nq_channel_violations_are_refused() {
    // A shared record on an app channel.
    let p = Pair::app();
    let err = respond(
        &p,
        ExchangeRequest {
            records: vec![p.local.make_record("S", None)],
            ..ExchangeRequest::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ExchangeError::Refused { code: "channel_violation", ref message } if message.contains("shared records")),
        "{err}"
    );
    // An app row on the Drive channel.
    let p = Pair::drive();
    let err = respond(
        &p,
        ExchangeRequest {
            app_syncable_rows: vec![p.local.make_row(RESERVED_TABLE, "a", "x", None)],
            ..ExchangeRequest::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ExchangeError::Refused { code: "channel_violation", ref message } if message.contains("app rows")),
        "{err}"
    );
    assert!(p.cloud.rows.all(TEST_APP).is_empty());
}

// Decision 0030: a blob named by a SHA-256 content hash is verified before its item is
// accepted, once per stored version of the blob.

fn ship(r: &Responder, records: Vec<sync_protocol::SharedRecord>) -> ExchangeResponse {
    block_on(r.respond(ExchangeRequest {
        records,
        ..ExchangeRequest::default()
    }))
    .unwrap()
}

#[test]
fn hv01_a_correct_blob_is_read_once_across_requests() {
    let p = Pair::drive();
    let r1 = p.local.make_record("r1", Some(b"the bytes"));
    p.cloud.blobs.insert(&r1.object_storage_key, b"the bytes");
    let responder = responder(&p);
    let resp = ship(&responder, vec![r1.clone()]);
    assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    assert_eq!(p.cloud.blobs.digests(), 1);
    // A repeat, through a clone (as the server shares one responder per channel), and
    // another record naming the same blob: no read.
    let mut r2 = p.local.make_record("r2", None);
    r2.object_storage_key = r1.object_storage_key.clone();
    r2.content_hash = r1.content_hash.clone();
    let resp = ship(&responder.clone(), vec![r1.clone(), r2.clone()]);
    assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    assert_eq!(p.cloud.blobs.digests(), 1, "read once");
    assert_eq!(p.cloud.record("r2").unwrap(), r2);
    // Replaced by other bytes: read again, and refused.
    p.cloud.blobs.insert(&r1.object_storage_key, b"other bytes");
    let mut r3 = p.local.make_record("r2", None);
    r3.object_storage_key = r1.object_storage_key.clone();
    r3.content_hash = r1.content_hash.clone();
    let resp = ship(&responder, vec![r3.clone()]);
    assert_eq!(p.cloud.blobs.digests(), 2);
    assert_eq!(resp.halted_authors, vec![NodeId::new("local").unwrap()]);
    assert_eq!(p.cloud.record("r2").unwrap(), r2, "nothing applied");
    // A responder that remembers nothing reads every time.
    let forgetful = p.cloud.responder(
        &p.channel,
        ResponderConfig::default().with_verified_blob_cache(0),
    );
    p.cloud.blobs.insert(&r1.object_storage_key, b"the bytes");
    for _ in 0..2 {
        let resp = ship(&forgetful, vec![r1.clone()]);
        assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    }
    assert_eq!(p.cloud.blobs.digests(), 4);
}

#[test]
fn hv02_a_blob_with_other_bytes_halts_its_origin_and_nothing_applies() {
    let p = Pair::drive();
    let r1 = p.local.make_record("r1", Some(b"the real bytes"));
    let later = p.local.make_record("r2", None);
    p.cloud.blobs.insert(&r1.object_storage_key, b"other bytes");
    let resp = ship(&responder(&p), vec![later, r1.clone()]);
    assert_eq!(resp.halted_authors, vec![NodeId::new("local").unwrap()]);
    assert_eq!(resp.refusals.len(), 1);
    assert_eq!(resp.refusals[0].at, r1.updated_at);
    assert_eq!(resp.refusals[0].code.as_deref(), Some("blob_mismatch"));
    let reason = &resp.refusals[0].reason;
    assert!(
        reason.contains("does not match its content hash") && reason.contains(&r1.content_hash),
        "{reason}"
    );
    assert!(p.cloud.records.all().is_empty());
    assert_eq!(resp.responder_watermarks.get("local"), None);

    // An opaque content hash cannot be checked: accepted on presence, never read.
    let mut opaque = p.local.make_record("r3", Some(b"anything"));
    opaque.content_hash = "md5:0123".into();
    p.cloud
        .blobs
        .insert(&opaque.object_storage_key, b"something else");
    let resp = ship(&responder(&p), vec![opaque.clone()]);
    assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    assert_eq!(p.cloud.record("r3").unwrap(), opaque);
    assert_eq!(
        p.cloud.blobs.digests(),
        1,
        "only the mismatching blob was read"
    );
}

#[test]
fn hv03_an_inline_blob_is_verified_on_arrival_and_not_read_again() {
    let p = Pair::drive();
    p.cloud.blobs.set_inline_limit(64 * 1024);
    let r1 = p.local.make_record("r1", Some(b"small bytes"));
    let inline = sync_protocol::InlineBlob {
        key: r1.object_storage_key.clone(),
        bytes: b"small bytes".to_vec(),
    };
    let resp = block_on(responder(&p).respond(ExchangeRequest {
        records: vec![r1.clone()],
        inline_blobs: vec![inline.clone()],
        ..ExchangeRequest::default()
    }))
    .unwrap();
    assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    assert_eq!(
        p.cloud.blobs.bytes(&r1.object_storage_key).unwrap(),
        b"small bytes"
    );
    assert_eq!(p.cloud.blobs.digests(), 0);
    // Inline bytes for a key already stored with other bytes: the stored blob is what
    // devices would pull, so it is the one checked.
    let r2 = p.local.make_record("r2", Some(b"more bytes"));
    p.cloud.blobs.insert(&r2.object_storage_key, b"wrong");
    let resp = block_on(responder(&p).respond(ExchangeRequest {
        records: vec![r2.clone()],
        inline_blobs: vec![sync_protocol::InlineBlob {
            key: r2.object_storage_key.clone(),
            bytes: b"more bytes".to_vec(),
        }],
        ..ExchangeRequest::default()
    }))
    .unwrap();
    assert_eq!(resp.refusals.len(), 1, "{:?}", resp.refusals);
    assert!(resp.refusals[0].reason.contains("does not match"));
    assert_eq!(resp.refusals[0].code.as_deref(), Some("blob_mismatch"));
    assert_eq!(p.cloud.record("r2"), None);
}

// Decision 0030: a new version below its origin's coverage is applied like any other. A
// device relays another node's versions skipping those it holds superseded, so coverage can
// pass a version the responder never held; refusing it wedged devices (simulator seed
// 39224). Runs on every backend (`STARKEEP_TEST_BACKEND`).

#[test]
fn hv04_a_new_record_version_below_coverage_is_applied_under_lww() {
    let p = Pair::drive();
    let r1 = p.local.put_record("r1", None);
    let r2 = p.local.put_record("r2", None);
    let r3 = p.local.put_record("r3", None);
    assert_eq!(ash(&p.round()), (0, 3, false));
    // A version below the cloud's coverage of `local`, for an id it never held.
    let mut unseen = r2.clone();
    unseen.id = "unseen".into();
    let after = p.local.make_record("r4", None);
    let resp = respond(
        &p,
        ExchangeRequest {
            records: vec![r1.clone(), unseen.clone(), after.clone()],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert!(resp.halted_authors.is_empty(), "{resp:?}");
    assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    assert_eq!(p.cloud.record("unseen").unwrap(), unseen);
    assert_eq!(p.cloud.record("r4").unwrap(), after);
    // An older version of a stored record loses and changes nothing.
    let mut older = r1.clone();
    older.id = "r3".into();
    let resp = respond(
        &p,
        ExchangeRequest {
            records: vec![older],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    assert_eq!(p.cloud.record("r3").unwrap(), r3);
    assert_eq!(
        resp.responder_watermarks.get("local"),
        Some(&after.updated_at)
    );
}

#[test]
fn hv05_a_new_row_version_below_coverage_is_applied_in_any_table() {
    let p = Pair::app();
    let w1 = p.local.put_row(TEST_TABLE, "w1", "a", None);
    let w2 = p.local.put_row(RESERVED_TABLE, "w2", "b", None);
    assert_eq!(ash(&p.round()), (0, 2, false));
    // w1's version for another primary key: below the channel's coverage of `local` (w2, in
    // another table), never held, applied.
    let mut unseen = w1.clone();
    unseen
        .row
        .as_mut()
        .unwrap()
        .insert("id".into(), serde_json::json!("unseen"));
    let resp = respond(
        &p,
        ExchangeRequest {
            app_syncable_rows: vec![unseen, w2.clone()],
            ..ExchangeRequest::default()
        },
    )
    .unwrap();
    assert!(resp.refusals.is_empty(), "{:?}", resp.refusals);
    assert!(p.cloud.row(TEST_TABLE, "unseen").is_some());
    assert_eq!(resp.responder_watermarks.get("local"), Some(&w2.timestamp));
}
