//! Scenario group 13 (transport failure and round atomicity, TF) of shared/scenarios.md.
//!
//! Not here, covered in sync-blobs / sync-http:
//! - §14 FT-01..FT-07 (file transfer engine: short-circuit, missing source, content type,
//!   concurrent same-key transfers, failed destination put, push/pull listings, manifests);
//! - §15.1 HT-01..HT-09 (HTTP client and handler of the reference) and §15.2 HN-01..HN-07
//!   (HTTP hardening: 400 on bad JSON or sanitizer input, 413 above the cap, `/files` CRUD
//!   and `/stat`, client-side response validation).
//!
//! SPEC differences from the TypeScript reference:
//! - TF-03: an inbound apply that throws on the requester skips that item and the round
//!   completes (W-N2 fixed: the reference rejects every round and wedges the channel).
//! - TF-04 / CN-08 (a throwing change listener) concern the notifier, which lives in the
//!   engine facade, not in sync-core; the core's part is that a round commits its state
//!   before it returns (see scenarios_durability.rs).
//! - TF-05: "fail before the request" and "fail after send" are injected by the harness's
//!   transport; a truncated response cannot reach the core (the HTTP client's decoder rejects
//!   it; see sync-http).

use sync_core::{Direction, Error, ExchangeError, ItemProblem};
use sync_testkit::{
    harness::{ash, Pair},
    memory::{FaultMode, FaultPoint},
};

#[test]
fn tf01_a_failing_transport_changes_no_bookkeeping() {
    let p = Pair::drive();
    let r = p.local.put_record("R", Some(b"photo"));
    p.transport_faults
        .arm(FaultPoint::Send, FaultMode::Times(1));
    let before = p.state();
    let err = p.try_round().unwrap_err();
    assert!(
        matches!(err, Error::Exchange(ExchangeError::Transient { ref message, .. }) if message.contains("injected")),
        "{err}"
    );
    assert_eq!(p.state(), before, "own and peer unchanged");
    // The blob was pushed before the request failed: an orphan at C, harmless.
    assert!(p.cloud.blobs.has(&r.object_storage_key));
    assert!(p.cloud.record("R").is_none());
    // The next round redoes the work (the blob push short-circuits).
    let puts = p.cloud.blobs.put_count();
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert_eq!(p.cloud.blobs.put_count(), puts);
    assert_eq!(p.cloud.record("R").unwrap(), r);
}

#[test]
fn tf02_a_lost_response_is_redone_harmlessly() {
    let p = Pair::drive();
    let rs: Vec<_> = (0..3)
        .map(|i| {
            p.local
                .put_record(&format!("r{i}"), Some(format!("b{i}").as_bytes()))
        })
        .collect();
    p.transport_faults
        .arm(FaultPoint::LoseResponse, FaultMode::Times(1));
    let before = p.state();
    assert!(p.try_round().is_err());
    for r in &rs {
        assert_eq!(
            p.cloud.record(&r.id).as_ref(),
            Some(r),
            "C applied the request"
        );
    }
    assert_eq!(p.state(), before, "L recorded nothing");
    // The next round re-ships all three (LWW no-ops on C), the one after is quiet.
    assert_eq!(ash(&p.round()), (0, 3, false));
    assert_eq!(ash(&p.round()), (0, 0, false));
    for r in &rs {
        assert_eq!(p.cloud.record(&r.id).as_ref(), Some(r));
    }
}

#[test]
fn tf03_an_inbound_apply_failure_skips_the_item_and_the_round_completes() {
    let p = Pair::drive();
    let r0 = p.cloud.put_record("r0", Some(b"zero"));
    let r1 = p.cloud.put_record("r1", Some(b"one"));
    p.local
        .faults
        .arm(FaultPoint::Apply("r0".into()), FaultMode::Persistent);
    // Adjusted: the reference rejects the whole round, every round (W-N2).
    let r = p.round();
    assert_eq!(ash(&r), (1, 0, true), "r1 applies, r0 is held back");
    assert!(p.local.record("r0").is_none());
    assert_eq!(p.local.record("r1").unwrap(), r1);
    assert_eq!(
        p.own().get("cloud"),
        None,
        "own stays behind r0, so it is offered again"
    );
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].direction, Direction::Inbound);
    assert!(matches!(r.failures[0].problem, ItemProblem::Apply(_)));
    // A later round with a healthy store stores it.
    p.local.faults.heal();
    let r = p.round();
    assert_eq!(ash(&r), (1, 0, false));
    assert_eq!(p.local.record("r0").unwrap(), r0);
    assert_eq!(p.own().get("cloud"), Some(&r1.updated_at));
}

#[test]
fn tf05_failures_before_and_after_send_leave_bookkeeping_unchanged() {
    for point in [FaultPoint::Send, FaultPoint::LoseResponse] {
        let p = Pair::drive();
        p.local.put_record("L", None);
        p.cloud.put_record("C", None);
        p.round();
        let l2 = p.local.put_record("L2", None);
        let c2 = p.cloud.put_record("C2", None);
        let before = p.state();
        p.transport_faults.arm(point.clone(), FaultMode::Times(1));
        assert!(p.try_round().is_err(), "{point:?}");
        assert_eq!(p.state(), before, "{point:?}: nothing persisted");
        assert!(p.local.record("C2").is_none(), "{point:?}: nothing applied");
        assert_eq!(
            p.cloud.record("L2").is_some(),
            point == FaultPoint::LoseResponse
        );
        let r = p.round();
        assert_eq!((r.applied, r.shipped), (1, 1), "{point:?}");
        assert_eq!(p.local.record("C2").unwrap(), c2);
        assert_eq!(p.cloud.record("L2").unwrap(), l2);
    }
}
