//! Scenario group 16 (durability and persistence of state, DP-01..DP-05) of
//! shared/scenarios.md, at the state-store level with `MemorySyncState`. The SQLite and
//! PostgreSQL versions (re-opening a database file, migrations) come with those crates; the
//! port contract itself is in `crates/sync-testkit/src/conformance.rs`. ND-01..ND-10
//! (`assessDurability`) are a residency feature outside this scope.
//!
//! SPEC differences from the TypeScript reference:
//! - State is kept per channel, not as three global keys (DP-01).
//! - The clock state is persisted by the state store together with every round and restored
//!   by the engine (SPEC §3; DP-04 says the reference never touches it, W-A7).

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use async_trait::async_trait;
use futures::executor::block_on;
use sync_core::{
    resume_clock, Channel, ChannelState, Error, Requester, RequesterParts, StoreError,
    SyncStateStore,
};
use sync_hlc::{ClockConfig, ClockState, Hlc, NodeId, Watermarks};
use sync_testkit::{
    faulty::FaultySyncState,
    harness::{ash, Pair, TEST_APP},
    memory::{FaultMode, FaultPoint, FaultyTransport, MemorySyncState, MemoryTransfer},
};

/// Counts the state-store calls of the rounds, delegating to the pair's store.
struct Counting {
    inner: Arc<FaultySyncState>,
    loads: AtomicUsize,
    commits: AtomicUsize,
}

#[async_trait]
impl SyncStateStore for Counting {
    async fn load(&self, channel: &Channel) -> Result<ChannelState, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(channel).await
    }
    async fn load_clock(&self) -> Result<Option<ClockState>, StoreError> {
        self.inner.load_clock().await
    }
    async fn commit(
        &self,
        channel: &Channel,
        state: &ChannelState,
        clock: ClockState,
    ) -> Result<(), StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(channel, state, clock).await
    }
    async fn save_clock(&self, clock: ClockState) -> Result<(), StoreError> {
        self.inner.save_clock(clock).await
    }
}

/// A requester of `p` over `state`.
fn requester_with_state(p: &Pair, state: Arc<dyn SyncStateStore>) -> Requester {
    let responder = Arc::new(p.cloud.responder(&p.channel, p.responder_config.clone()));
    Requester::new(RequesterParts {
        data: p.local.data(&p.channel),
        state,
        transfer: Arc::new(MemoryTransfer {
            local: p.local.blobs.clone(),
            remote: p.cloud.blobs.clone(),
        }),
        transport: Arc::new(FaultyTransport {
            inner: responder,
            faults: p.transport_faults.clone(),
        }),
        clock: p.local.clock.clone(),
        time: p.local.time.clone(),
        config: p.config.clone(),
    })
}

fn h(wall: u64, counter: u16, node: &str) -> Hlc {
    Hlc::new(wall, counter, NodeId::new(node).unwrap()).unwrap()
}

#[test]
fn dp01_state_is_per_channel_defaults_empty_and_commits_replace() {
    let store = MemorySyncState::default();
    let app = Channel::App(TEST_APP.into());
    assert_eq!(
        block_on(store.load(&Channel::Drive)).unwrap(),
        ChannelState::default()
    );
    assert_eq!(block_on(store.load_clock()).unwrap(), None);

    let first = ChannelState {
        own: [h(10, 0, "a"), h(20, 0, "b")].into_iter().collect(),
        peer: [h(30, 0, "a")].into_iter().collect(),
    };
    let clock = ClockState {
        wall_time: 40,
        counter: 2,
    };
    block_on(store.commit(&Channel::Drive, &first, clock)).unwrap();
    // A commit replaces the whole value: `b` is gone, nothing is merged.
    let second = ChannelState {
        own: [h(11, 0, "a")].into_iter().collect(),
        peer: Watermarks::new(),
    };
    block_on(store.commit(&Channel::Drive, &second, clock)).unwrap();
    assert_eq!(block_on(store.load(&Channel::Drive)).unwrap(), second);
    assert_eq!(block_on(store.load(&app)).unwrap(), ChannelState::default());
    assert_eq!(block_on(store.load_clock()).unwrap(), Some(clock));
}

#[test]
fn dp02_a_second_instance_reads_back_what_the_first_wrote() {
    let p = Pair::drive();
    let c = p.cloud.put_record("C", None);
    let l = p.local.put_record("L", None);
    // Instance 1 runs a round and is dropped.
    let first = requester_with_state(&p, p.local.state.clone());
    block_on(first.exchange()).unwrap();
    drop(first);
    // The stored values round-trip field for field, through their serialized form too.
    let stored = block_on(p.local.state.load(&p.channel)).unwrap();
    assert_eq!(stored.own.get("cloud"), Some(&c.updated_at));
    assert_eq!(stored.peer.get("local"), Some(&l.updated_at));
    let json = serde_json::to_string(&stored).unwrap();
    let back: ChannelState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, stored);
    let hlc = back.own.get("cloud").unwrap();
    assert_eq!(
        (hlc.wall_time(), hlc.counter(), hlc.node_id().as_str()),
        (c.updated_at.wall_time(), c.updated_at.counter(), "cloud")
    );
    // Instance 2 over the same store starts from there: nothing to redo.
    let second = requester_with_state(&p, p.local.state.clone());
    let r = block_on(second.exchange()).unwrap();
    assert_eq!(ash(&r), (0, 0, false));
}

#[test]
fn dp03_state_is_read_once_and_written_once_per_successful_round_only() {
    let p = Pair::drive();
    p.cloud.put_record("C", None);
    p.local.put_record("L", None);
    let counting = Arc::new(Counting {
        inner: p.local.state.clone(),
        loads: AtomicUsize::new(0),
        commits: AtomicUsize::new(0),
    });
    let req = requester_with_state(&p, counting.clone());

    // A round that fails at the transport writes nothing.
    p.transport_faults
        .arm(FaultPoint::Send, FaultMode::Times(1));
    assert!(block_on(req.exchange()).is_err());
    assert_eq!(counting.loads.load(Ordering::SeqCst), 1);
    assert_eq!(counting.commits.load(Ordering::SeqCst), 0);
    assert_eq!(p.state(), ChannelState::default());

    // A successful round reads once and writes once, at the end.
    block_on(req.exchange()).unwrap();
    assert_eq!(counting.loads.load(Ordering::SeqCst), 2);
    assert_eq!(counting.commits.load(Ordering::SeqCst), 1);
    assert_ne!(p.state(), ChannelState::default());
}

#[test]
fn dp03_a_failed_commit_leaves_the_old_state_and_the_next_round_repairs() {
    let p = Pair::drive();
    let c = p.cloud.put_record("C", Some(b"c"));
    let l = p.local.put_record("L", Some(b"l"));
    p.local
        .faults
        .arm(FaultPoint::StateCommit, FaultMode::Times(1));
    let err = p.try_round().unwrap_err();
    assert!(matches!(err, Error::State(_)), "{err}");
    assert_eq!(p.state(), ChannelState::default(), "nothing persisted");
    // The data moved (harmless under LWW); the next round redoes the bookkeeping.
    assert_eq!(p.local.record("C").unwrap(), c);
    let r = p.round();
    assert_eq!(r.shipped, 1, "re-ships what C did not confirm");
    assert_eq!(p.own().get("cloud"), Some(&c.updated_at));
    assert_eq!(p.peer().get("local"), Some(&l.updated_at));
    assert_eq!(ash(&p.round()), (0, 0, false));
}

#[test]
fn dp04_the_clock_state_is_committed_with_each_round_and_resumes_forward() {
    let p = Pair::drive();
    // C's item is ahead of L's physical time (within the skew guard).
    p.time.advance(20 * 60 * 1000);
    let c = p.cloud.put_record("C", None);
    p.time.advance(-20 * 60 * 1000);
    p.round();
    let persisted = block_on(p.local.state.load_clock())
        .unwrap()
        .expect("clock state committed");
    assert_eq!(persisted, p.local.clock.lock().unwrap().state());
    assert!(
        (persisted.wall_time, persisted.counter)
            >= (c.updated_at.wall_time(), c.updated_at.counter())
    );
    // A restarted node resumes above it, even if its physical clock reads earlier.
    let coverage = block_on(p.local.data(&p.channel).coverage()).unwrap();
    let mut clock = resume_clock(
        p.local.node.clone(),
        ClockConfig::default(),
        Some(persisted),
        &coverage,
    );
    let next = clock.now(0);
    assert!(next > c.updated_at);
    assert!((next.wall_time(), next.counter()) > (persisted.wall_time, persisted.counter));
}

#[test]
fn dp05_an_abandoned_sync_resumes_where_it_stopped() {
    let p = Pair::drive().with_page_limit(2);
    for i in 0..5 {
        p.local.put_record(&format!("r{i}"), None);
    }
    // A budget of one round: not complete, and not stalled (nothing is stuck).
    let first =
        block_on(requester_with_state(&p, p.local.state.clone()).sync_until_idle(1)).unwrap();
    assert_eq!((first.rounds, first.shipped), (1, 2));
    assert!(!first.complete && !first.stalled);
    // A new instance over the same state carries on with the next page.
    let second = requester_with_state(&p, p.local.state.clone());
    let r = block_on(second.exchange()).unwrap();
    assert_eq!(ash(&r), (0, 2, true));
    assert!(p.cloud.record("r2").is_some() && p.cloud.record("r3").is_some());
    // And after a failed round, a new instance with a working transport completes.
    p.transport_faults
        .arm(FaultPoint::Send, FaultMode::Times(1));
    assert!(block_on(second.exchange()).is_err());
    drop(second);
    let s = block_on(requester_with_state(&p, p.local.state.clone()).sync_until_idle(10)).unwrap();
    assert!(s.complete);
    assert_eq!(s.shipped, 1);
    assert_eq!(p.cloud.records.all(), p.local.records.all());
}
