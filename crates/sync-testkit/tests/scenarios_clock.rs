//! Scenario group 18 (clock behaviour, CK) of shared/scenarios.md, at the round level. The
//! pure clock rules (CK-01..CK-07, CK-11: now/receive arithmetic, ordering, the string form)
//! are unit and property tests of sync-hlc.
//!
//! SPEC differences from the TypeScript reference:
//! - Skew guard (CK-09, W-A4 fixed): a remote timestamp more than `max_drift` (default 1 h)
//!   ahead of local physical time never drags the clock forward. The item is refused, its
//!   author halted for the round, the refusal reported with the offending value and a hint;
//!   it is accepted once physical time has caught up.
//! - The engine persists and restores the clock state itself (CK-10, W-A7).

use std::sync::{Arc, Mutex};

use futures::executor::block_on;
use sync_core::{Direction, ItemProblem, SyncStateStore};
use sync_hlc::{Clock, ClockConfig, Hlc};
use sync_testkit::{
    harness::{ash, Pair, Side},
    memory::{AtomicI64Wrapper, SkewedTime},
};

const HOUR: u64 = 60 * 60 * 1000;

/// A record of C stamped `ahead_ms` ahead of the current physical time, stored at C as-is
/// (as if written by a node with a broken clock).
fn future_record(p: &Pair, id: &str, ahead_ms: u64) -> sync_protocol::SharedRecord {
    let mut r = p.cloud.make_record(id, Some(id.as_bytes()));
    let at = Hlc::new(p.time.peek() + ahead_ms, 0, p.cloud.node.clone()).unwrap();
    r.created_at = at.clone();
    r.updated_at = at;
    p.cloud.apply_record(&r);
    r
}

#[test]
fn ck09_an_inbound_item_far_in_the_future_is_refused_until_time_catches_up() {
    let p = Pair::drive();
    let ok = p.cloud.put_record("ok", Some(b"ok"));
    let far = future_record(&p, "far", 2 * HOUR);
    let r = p.round();
    // Adjusted: the reference applies it and its clock stays in the future (W-A4).
    assert_eq!(
        ash(&r),
        (1, 0, true),
        "the earlier item lands; the skewed one is held"
    );
    assert!(p.local.record("far").is_none());
    let f = &r.failures[0];
    assert_eq!((f.direction, &f.at), (Direction::Inbound, &far.updated_at));
    match &f.problem {
        ItemProblem::Skew(refusal) => {
            assert_eq!(refusal.remote, far.updated_at, "the offending value");
            assert!(refusal.ahead_ms > HOUR);
            let msg = f.problem.to_string();
            assert!(msg.contains(&far.updated_at.to_string()), "{msg}");
            assert!(
                msg.contains("check the clock"),
                "a hint to fix the clock: {msg}"
            );
        }
        other => panic!("expected a skew refusal, got {other:?}"),
    }
    assert!(
        p.local.now() < far.updated_at,
        "the local clock was not dragged forward"
    );
    assert_eq!(
        p.own().get("cloud"),
        Some(&ok.updated_at),
        "held below the refused item"
    );

    // Once physical time has caught up, it is accepted.
    p.time.advance(2 * HOUR as i64);
    let r = p.round();
    assert_eq!(ash(&r), (1, 0, false));
    assert_eq!(p.local.record("far").unwrap(), far);
    assert_eq!(p.own().get("cloud"), Some(&far.updated_at));
}

#[test]
fn ck09_the_responder_refuses_items_from_a_node_whose_clock_runs_ahead() {
    let mut p = Pair::drive();
    let skew = Arc::new(SkewedTime {
        base: p.time.clone(),
        offset_ms: AtomicI64Wrapper::new(2 * HOUR as i64),
    });
    p.local = Side::new("local", skew.clone());
    let r = p.local.put_record("R", Some(b"x"));
    let round = p.round();
    assert_eq!(round.halted_by_peer, vec![p.local.node.clone()]);
    let refusal = &round.peer_refusals[0];
    assert_eq!(refusal.at, r.updated_at);
    assert!(
        refusal.reason.contains("check the clock"),
        "{}",
        refusal.reason
    );
    assert!(p.cloud.record("R").is_none());
    assert_eq!(p.peer().get("local"), None);
    assert!(
        p.cloud.now() < r.updated_at,
        "C's clock was not dragged forward"
    );
    assert!(round.has_more && round.stalled());

    // Fix the clock and let real time catch up: accepted.
    skew.offset_ms.set(0);
    p.time.advance(2 * HOUR as i64);
    let round = p.round();
    assert_eq!(ash(&round), (0, 1, false));
    assert_eq!(p.cloud.record("R").unwrap(), r);
}

#[test]
fn ck09_the_drift_limit_is_configurable() {
    let mut p = Pair::drive();
    p.local.clock = Arc::new(Mutex::new(Clock::new(
        p.local.node.clone(),
        ClockConfig::default().with_max_drift_ms(60_000),
    )));
    let near = future_record(&p, "near", 30_000);
    let far = future_record(&p, "far", 5 * 60_000);
    let r = p.round();
    assert_eq!(r.applied, 1);
    assert_eq!(p.local.record("near").unwrap(), near);
    assert!(p.local.record("far").is_none());
    assert!(
        matches!(r.failures[0].problem, ItemProblem::Skew(ref s) if s.max_drift_ms == 60_000 && s.remote == far.updated_at)
    );
}

#[test]
fn ck08_receive_keeps_each_clock_above_what_it_applied() {
    // Requester: C's item is ahead of L's physical time, within the guard.
    let p = Pair::drive();
    let ahead = future_record(&p, "ahead", 30 * 60 * 1000);
    assert_eq!(ash(&p.round()), (1, 0, false));
    let next = p.local.put_record("mine", None);
    assert!(
        next.updated_at > ahead.updated_at,
        "L's next write orders after what it applied"
    );

    // Responder: L's clock runs 30 minutes ahead; C's clock follows what it stored.
    let mut p = Pair::drive();
    p.local = Side::new(
        "local",
        Arc::new(SkewedTime {
            base: p.time.clone(),
            offset_ms: AtomicI64Wrapper::new(30 * 60 * 1000),
        }),
    );
    let r = p.local.put_record("R", None);
    assert_eq!(ash(&p.round()), (0, 1, false));
    assert!(p.cloud.put_record("C", None).updated_at > r.updated_at);
}

#[test]
fn ck10_a_restored_clock_never_goes_backwards() {
    let p = Pair::drive();
    p.local.put_record("a", None);
    let ahead = future_record(&p, "ahead", 30 * 60 * 1000);
    p.round();
    let last_issued = p.local.put_record("b", None).updated_at;
    p.round();
    let persisted = block_on(p.local.state.load_clock())
        .unwrap()
        .expect("the round committed the clock state");
    // Restart with a physical clock that reads far earlier.
    let mut restored = Clock::restore(p.local.node.clone(), ClockConfig::default(), persisted);
    let next = restored.now(1000);
    assert!(next > last_issued, "{next} after {last_issued}");
    assert!(next > ahead.updated_at);
}
