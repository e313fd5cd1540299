//! Blob durability (decision 0013): blobs that landed are made durable before anything that
//! covers them is persisted. On the requester, one `BlobTransfer::sync` after the round's
//! blobs landed and before its state commit (none when no blob landed, and a failed sync
//! fails the round with nothing persisted); on the responder, one `BlobStore::sync` after
//! the request's inline blobs landed and before the apply that accepts their items.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::executor::block_on;
use sync_core::{
    Applied, BlobError, BlobManifest, BlobStore, BlobTransfer, Channel, ChannelData, ChannelState,
    Error, ExchangeTransport, RecordStore, Requester, RequesterParts, Responder, ResponderParts,
    StoreError, SyncStateStore, Transferred,
};
use sync_hlc::{ClockState, Hlc, NodeId, Watermarks};
use sync_protocol::SharedRecord;
use sync_testkit::{
    harness::Pair,
    memory::{FaultyTransport, MemoryTransfer},
};

/// What the ports saw, in order.
#[derive(Default)]
struct Events {
    seen: Mutex<Vec<&'static str>>,
    /// Make the next syncs fail.
    fail_sync: Mutex<bool>,
}

impl Events {
    fn log(&self, what: &'static str) {
        self.seen.lock().unwrap().push(what);
    }
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
    fn sync(&self, what: &'static str) -> Result<(), BlobError> {
        self.log(what);
        if *self.fail_sync.lock().unwrap() {
            return Err(BlobError::Fatal {
                key: "blobs".into(),
                message: "write-back failed (test)".into(),
                source: None,
            });
        }
        Ok(())
    }
}

/// The requester's blob transfer, counting its syncs.
struct SyncingTransfer {
    inner: MemoryTransfer,
    events: Arc<Events>,
}

#[async_trait]
impl BlobTransfer for SyncingTransfer {
    async fn push(&self, m: &BlobManifest) -> Result<Transferred, BlobError> {
        self.inner.push(m).await
    }
    async fn pull(&self, m: &BlobManifest) -> Result<Transferred, BlobError> {
        self.inner.pull(m).await
    }
    fn inline_limit(&self) -> u64 {
        self.inner.inline_limit()
    }
    async fn read_local(
        &self,
        m: &BlobManifest,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        self.inner.read_local(m, max_bytes).await
    }
    async fn land_inline(
        &self,
        m: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        self.inner.land_inline(m, bytes).await
    }
    async fn sync(&self) -> Result<(), BlobError> {
        self.events.sync("sync")
    }
}

/// The requester's state store, logging its commits.
struct LoggingState {
    inner: Arc<dyn SyncStateStore>,
    events: Arc<Events>,
}

#[async_trait]
impl SyncStateStore for LoggingState {
    async fn load(&self, channel: &Channel) -> Result<ChannelState, StoreError> {
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
        self.events.log("commit");
        self.inner.commit(channel, state, clock).await
    }
    async fn save_clock(&self, clock: ClockState) -> Result<(), StoreError> {
        self.inner.save_clock(clock).await
    }
}

/// The responder's blob storage, counting its syncs.
struct SyncingBlobs {
    inner: Arc<dyn BlobStore>,
    events: Arc<Events>,
}

#[async_trait]
impl BlobStore for SyncingBlobs {
    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        self.inner.contains(key).await
    }
    fn inline_limit(&self) -> u64 {
        self.inner.inline_limit()
    }
    async fn read_inline(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, BlobError> {
        self.inner.read_inline(key, max).await
    }
    async fn write_inline(
        &self,
        m: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        self.inner.write_inline(m, bytes).await
    }
    async fn sync(&self) -> Result<(), BlobError> {
        self.events.sync("blob sync")
    }
}

/// The responder's record store, logging its applies.
struct LoggingRecords {
    inner: Arc<dyn RecordStore>,
    events: Arc<Events>,
}

#[async_trait]
impl RecordStore for LoggingRecords {
    async fn coverage(&self) -> Result<Watermarks, StoreError> {
        self.inner.coverage().await
    }
    async fn coverage_below(
        &self,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        self.inner.coverage_below(origin, below).await
    }
    async fn scan(
        &self,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<SharedRecord>, StoreError> {
        self.inner.scan(origin, above, limit).await
    }
    async fn apply(&self, records: &[SharedRecord]) -> Result<Vec<Applied>, StoreError> {
        self.events.log("apply");
        self.inner.apply(records).await
    }
    async fn get(&self, id: &str) -> Result<Option<SharedRecord>, StoreError> {
        self.inner.get(id).await
    }
}

/// A requester of `p` whose blob syncs and state commits land in `events`, against a
/// responder whose blob syncs and record applies land there too.
fn spied(p: &Pair, events: &Arc<Events>) -> Requester {
    let cloud_records: Arc<dyn RecordStore> = Arc::new(LoggingRecords {
        inner: p.cloud.records.clone(),
        events: events.clone(),
    });
    let responder = Responder::new(ResponderParts {
        data: ChannelData::new(
            p.channel.clone(),
            Some(cloud_records),
            Some(p.cloud.rows.clone()),
        ),
        blobs: Arc::new(SyncingBlobs {
            inner: p.cloud.blobs.clone(),
            events: events.clone(),
        }),
        clock: p.cloud.clock.clone(),
        time: p.cloud.time.clone(),
        config: p.responder_config.clone(),
    });
    let responder: Arc<dyn ExchangeTransport> = Arc::new(responder);
    Requester::new(RequesterParts {
        data: p.local.data(&p.channel),
        state: Arc::new(LoggingState {
            inner: p.local.state.clone(),
            events: events.clone(),
        }),
        transfer: Arc::new(SyncingTransfer {
            inner: MemoryTransfer {
                local: p.local.blobs.clone(),
                remote: p.cloud.blobs.clone(),
            },
            events: events.clone(),
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

fn inline_pair() -> Pair {
    let p = Pair::drive();
    p.local.blobs.set_inline_limit(64 * 1024);
    p.cloud.blobs.set_inline_limit(64 * 1024);
    p
}

#[test]
fn a_round_syncs_pulled_blobs_before_it_persists_the_watermarks_that_cover_them() {
    let p = Pair::drive();
    let events = Arc::new(Events::default());
    let c = p.cloud.put_record("C", Some(b"pulled through /files"));
    let r = block_on(spied(&p, &events).exchange()).unwrap();
    assert_eq!(r.applied, 1, "{r:?}");
    assert_eq!(events.take(), vec!["sync", "commit"]);
    assert_eq!(p.own().get("cloud"), Some(&c.updated_at));
}

#[test]
fn a_round_syncs_inline_blobs_before_it_persists_and_the_responder_before_it_applies() {
    let p = inline_pair();
    let events = Arc::new(Events::default());
    let requester = spied(&p, &events).assume_peer_inline_limit(64 * 1024);
    let c = p.cloud.put_record("C", Some(b"came down inline"));
    let l = p.local.put_record("L", Some(b"went up inline"));
    let r = block_on(requester.exchange()).unwrap();
    assert_eq!((r.applied, r.shipped), (1, 1), "{r:?}");
    // The responder: the uploaded blob is durable before the item naming it is applied.
    // The requester: the downloaded blob is durable before the watermarks are.
    assert_eq!(
        events.take(),
        vec!["blob sync", "apply", "sync", "commit"],
        "responder then requester"
    );
    assert!(p.cloud.blobs.has(&l.object_storage_key));
    assert!(p.local.blobs.has(&c.object_storage_key));
}

#[test]
fn no_sync_when_no_blob_landed() {
    let p = inline_pair();
    let events = Arc::new(Events::default());
    let requester = spied(&p, &events).assume_peer_inline_limit(64 * 1024);
    p.cloud.put_record("C", None);
    p.local.put_record("L", None);
    let r = block_on(requester.exchange()).unwrap();
    assert_eq!((r.applied, r.shipped), (1, 1), "{r:?}");
    assert_eq!(events.take(), vec!["apply", "commit"]);
    // A round with nothing to do syncs nothing either.
    let r = block_on(requester.exchange()).unwrap();
    assert_eq!((r.applied, r.shipped, r.has_more), (0, 0, false), "{r:?}");
    assert_eq!(events.take(), vec!["commit"]);
}

#[test]
fn a_failed_sync_fails_the_round_and_persists_nothing() {
    let p = Pair::drive();
    let events = Arc::new(Events::default());
    let requester = spied(&p, &events);
    let c = p.cloud.put_record("C", Some(b"not durable"));
    let before = p.state();
    *events.fail_sync.lock().unwrap() = true;
    let err = block_on(requester.exchange()).unwrap_err();
    assert!(matches!(err, Error::BlobSync(_)), "{err:?}");
    assert_eq!(events.take(), vec!["sync"], "no commit after a failed sync");
    assert_eq!(p.state(), before, "watermarks stay behind the blob");
    // The next round, with the disk healthy again, covers it.
    *events.fail_sync.lock().unwrap() = false;
    block_on(requester.exchange()).unwrap();
    assert_eq!(events.take(), vec!["sync", "commit"]);
    assert_eq!(p.own().get("cloud"), Some(&c.updated_at));
}

#[test]
fn a_failed_sync_on_the_responder_fails_the_request_and_applies_nothing() {
    let p = inline_pair();
    let events = Arc::new(Events::default());
    let requester = spied(&p, &events).assume_peer_inline_limit(64 * 1024);
    p.local.put_record("L", Some(b"went up inline"));
    *events.fail_sync.lock().unwrap() = true;
    let err = block_on(requester.exchange()).unwrap_err();
    assert!(matches!(err, Error::Exchange(_)), "{err:?}");
    assert_eq!(
        events.take(),
        vec!["blob sync"],
        "no apply after a failed sync"
    );
    assert_eq!(p.cloud.record("L"), None);
    assert_eq!(p.state(), ChannelState::default());
    *events.fail_sync.lock().unwrap() = false;
    let r = block_on(requester.exchange()).unwrap();
    assert_eq!(r.shipped, 1, "{r:?}");
    assert!(p.cloud.record("L").is_some());
}
