//! Pipelined pulls (decision 0012): the next page is asked for while the previous one lands,
//! from the watermarks it will leave. These pin the safety rules: the contiguous-prefix gap
//! rule after a failure, a failed pipelined request, a page that fails to land, and the
//! final normal round before idle.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use async_trait::async_trait;
use futures::executor::block_on;
use sync_core::{
    ExchangeError, ExchangeTransport, Requester, RequesterParts, RoundReport, SyncSummary,
};
use sync_hlc::Hlc;
use sync_protocol::{ExchangeRequest, ExchangeResponse, SharedRecord};
use sync_testkit::{
    harness::{Pair, Side},
    memory::{FaultMode, FaultPoint, MemoryTransfer},
};

/// A pair with page limit 2 whose cloud holds six records by another node `x`, r1..r6 in
/// version order.
fn cloud_with_six() -> (Pair, Vec<SharedRecord>) {
    let p = Pair::drive().with_page_limit(2);
    let x = Side::in_memory("x", p.time.clone());
    let written: Vec<SharedRecord> = (1..=6)
        .map(|i| {
            let r = x.put_record(&format!("r{i}"), None);
            p.cloud.apply_record(&r);
            r
        })
        .collect();
    (p, written)
}

fn own_x(p: &Pair) -> Option<Hlc> {
    p.own().get("x").cloned()
}

fn converged(p: &Pair, written: &[SharedRecord]) {
    for r in written {
        assert_eq!(
            p.local.record(&r.id).map(|l| l.updated_at),
            Some(r.updated_at.clone()),
            "{} did not land",
            r.id
        );
    }
    assert_eq!(own_x(p).as_ref(), written.last().map(|r| &r.updated_at));
}

/// The gap rule: page k stops at a failure of `x`; the pipelined page k+1 (asked from the end
/// of page k) applies, but own[x] stays behind the failure; the next round is a normal one
/// from the gap, delivers the failed item again, and the node converges.
#[test]
fn a_failure_in_page_k_keeps_own_behind_the_gap_through_the_pipelined_page() {
    let (p, written) = cloud_with_six();
    p.local
        .faults
        .arm(FaultPoint::Apply("r2".into()), FaultMode::Persistent);
    let requester = p.requester();
    let mut rounds = requester.rounds();

    // Round 1 (normal): r1 lands, r2 fails; the request for r3.. already went out.
    let first = block_on(rounds.next_round()).expect("round 1");
    assert!(!first.pipelined);
    assert_eq!(first.failures.len(), 1);
    assert_eq!(first.failures[0].at, written[1].updated_at);
    assert_eq!(own_x(&p), Some(written[0].updated_at.clone()));

    // Round 2 (pipelined, asked from r2): r3 and r4 apply, own[x] does not jump the gap.
    let second: RoundReport = block_on(rounds.next_round()).expect("round 2");
    assert!(second.pipelined, "{second:?}");
    assert_eq!(second.applied, 2);
    assert_eq!(second.held_back, vec![written[0].origin().clone()]);
    assert!(second.has_more);
    assert_eq!(own_x(&p), Some(written[0].updated_at.clone()));
    assert!(p.local.record("r3").is_some() && p.local.record("r4").is_some());
    assert!(p.local.record("r2").is_none());

    // Round 3 is normal (a failure is pending) and asks from own[x] = r1: r2 comes again.
    p.local.faults.heal();
    let third = block_on(rounds.next_round()).expect("round 3");
    assert!(!third.pipelined, "{third:?}");
    assert!(third.failures.is_empty());
    assert_eq!(own_x(&p), Some(written[2].updated_at.clone()));
    drop(rounds);

    let summary: SyncSummary = block_on(requester.sync_until_idle(20)).expect("sync");
    assert!(summary.complete);
    assert!(!summary.last.pipelined);
    converged(&p, &written);
}

/// A transport that fails its `nth` request (1-based) after the responder answered it.
struct FailNth {
    inner: Arc<dyn ExchangeTransport>,
    nth: usize,
    seen: AtomicUsize,
}

#[async_trait]
impl ExchangeTransport for FailNth {
    async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        let response = self.inner.exchange(request).await?;
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            return Err(ExchangeError::Transient {
                message: "injected: pipelined response lost".into(),
                source: None,
            });
        }
        Ok(response)
    }
}

fn requester_failing(p: &Pair, nth: usize) -> Requester {
    let inner: Arc<dyn ExchangeTransport> =
        Arc::new(p.cloud.responder(&p.channel, p.responder_config.clone()));
    Requester::new(RequesterParts {
        data: p.local.data(&p.channel),
        state: p.local.state.clone(),
        transfer: Arc::new(MemoryTransfer {
            local: p.local.blobs.clone(),
            remote: p.cloud.blobs.clone(),
        }),
        transport: Arc::new(FailNth {
            inner,
            nth,
            seen: AtomicUsize::new(0),
        }),
        clock: p.local.clock.clone(),
        time: p.local.time.clone(),
        config: p.config.clone(),
    })
}

/// A pipelined request that fails is dropped: a normal round asks again, and nothing of the
/// lost response was used.
#[test]
fn a_failed_pipelined_request_is_discarded_and_asked_again() {
    let (p, written) = cloud_with_six();
    let requester = requester_failing(&p, 2);
    let mut rounds = requester.rounds();
    let first = block_on(rounds.next_round()).expect("round 1");
    assert!(!first.pipelined);
    let after_first = p.state();
    assert_eq!(own_x(&p), Some(written[1].updated_at.clone()));
    // The second request (pipelined) failed: this round is a normal one from the same state.
    let second = block_on(rounds.next_round()).expect("round 2");
    assert!(!second.pipelined, "{second:?}");
    assert_eq!(second.applied, 2);
    assert_eq!(own_x(&p), Some(written[3].updated_at.clone()));
    assert_ne!(p.state(), after_first);
    drop(rounds);
    assert!(
        block_on(requester.sync_until_idle(20))
            .expect("sync")
            .complete
    );
    converged(&p, &written);
}

/// A page that fails to land (its state cannot be committed) takes the pipelined request with
/// it: the bookkeeping is unchanged (INV-10) and the next round is a normal one.
#[test]
fn a_page_that_fails_to_land_drops_the_pipelined_response() {
    let (p, written) = cloud_with_six();
    let requester = p.requester();
    let mut rounds = requester.rounds();
    block_on(rounds.next_round()).expect("round 1");
    let before = p.state();
    // Round 2 is the pipelined one; its commit fails, and round 3's request was in flight.
    p.local
        .faults
        .arm(FaultPoint::StateCommit, FaultMode::Times(1));
    assert!(block_on(rounds.next_round()).is_err());
    assert_eq!(
        p.state(),
        before,
        "INV-10: a failed round changed the bookkeeping"
    );
    let next = block_on(rounds.next_round()).expect("round after the failure");
    assert!(!next.pipelined, "{next:?}");
    drop(rounds);
    assert!(
        block_on(requester.sync_until_idle(20))
            .expect("sync")
            .complete
    );
    converged(&p, &written);
}

/// Without failures a download is pipelined page after page and ends with a normal round;
/// switched off, no round is pipelined; both end in the same state.
#[test]
fn pipelined_and_sequential_downloads_end_alike() {
    let (p, written) = cloud_with_six();
    let mut seen = Vec::new();
    let summary = block_on(
        p.requester()
            .sync_until_idle_with(20, |r| seen.push((r.pipelined, r.applied, r.has_more))),
    )
    .expect("sync");
    assert!(summary.complete);
    // r1-r2 (normal), r3-r4 and r5-r6 (pipelined), then a normal round that finds nothing.
    assert_eq!(
        seen,
        vec![
            (false, 2, true),
            (true, 2, true),
            (true, 2, false),
            (false, 0, false)
        ]
    );
    converged(&p, &written);

    let (mut q, written) = cloud_with_six();
    q.config = q.config.clone().with_pipelined_pulls(false);
    let mut seen = Vec::new();
    let summary = block_on(
        q.requester()
            .sync_until_idle_with(20, |r| seen.push(r.pipelined)),
    )
    .expect("sync");
    assert!(summary.complete);
    assert_eq!(seen, vec![false; 3]);
    converged(&q, &written);
}

/// A node that owes the peer something does not pipeline: its rounds ship and pull as before.
#[test]
fn rounds_that_ship_are_not_pipelined() {
    let (p, written) = cloud_with_six();
    for i in 0..4 {
        p.local.put_record(&format!("mine{i}"), None);
    }
    let mut seen = Vec::new();
    let summary = block_on(
        p.requester()
            .sync_until_idle_with(20, |r| seen.push((r.pipelined, r.shipped))),
    )
    .expect("sync");
    assert!(summary.complete);
    // The first two rounds ship (two pages of the node's own records): never pipelined.
    assert_eq!(&seen[..2], &[(false, 2), (false, 2)]);
    assert!(seen
        .iter()
        .all(|(pipelined, shipped)| !pipelined || *shipped == 0));
    converged(&p, &written);
}
