//! A local node and a responder wired together in one process, for scenario tests.
//!
//! Mirrors the reference harness (shared/scenarios.md §0.4): both sides read one wall clock
//! that starts at 1000 and moves by 1 ms on every read, so a later operation always wins
//! last-write-wins; blobs are content-addressed; faults are armed per side.
//!
//! Each side keeps its records, rows and sync state on the [`Backend`] that
//! `STARKEEP_TEST_BACKEND` names (in memory by default, or a SQLite file, or a PostgreSQL
//! schema), behind the fault-injecting wrappers of [`faulty`](crate::faulty); its blobs are
//! always in memory (the blob stores have their own conformance suite in `sync-blobs`).

use std::sync::{Arc, Mutex};

use futures::executor::block_on;
use serde_json::{json, Value};
use sync_core::{
    AppNamespace, AppRowStore, Channel, ChannelData, ChannelState, ExchangeTransport, Item,
    RecordStore, Requester, RequesterParts, Residency, Responder, ResponderConfig, ResponderParts,
    RoundConfig, RoundReport, SharedClock, SyncSummary, TableSpec, TimeSource,
};
use sync_hlc::{Clock, ClockConfig, Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, RowOp, RowValues, SharedRecord, RESERVED_TABLE};

use crate::{
    backend::Backend,
    faulty::{FaultyAppRowStore, FaultyRecordStore, FaultySyncState},
    memory::{sha256_hex, Faults, FaultyTransport, ManualTime, MemoryBlobs, MemoryTransfer},
};

/// The app the harness registers on both sides.
pub const TEST_APP: &str = "test-app";
/// Its metadata-only table.
pub const TEST_TABLE: &str = "test_rows";

/// The namespace of [`TEST_APP`]: `test_rows` (pk `id`) and the reserved table.
pub fn test_namespace() -> AppNamespace {
    AppNamespace::new(TEST_APP, vec![TableSpec::new(TEST_TABLE, &["id"])])
}

/// One side (a device or the cloud): its stores on one backend, blobs in memory.
pub struct Side {
    /// Node id.
    pub node: NodeId,
    /// Faults of this side's ports.
    pub faults: Arc<Faults>,
    /// The backend of its stores.
    pub backend: Backend,
    /// Shared records.
    pub records: Arc<FaultyRecordStore>,
    /// App rows.
    pub rows: Arc<FaultyAppRowStore>,
    /// Sync state.
    pub state: Arc<FaultySyncState>,
    /// Object storage.
    pub blobs: Arc<MemoryBlobs>,
    /// Clock.
    pub clock: SharedClock,
    /// Physical time of this side.
    pub time: Arc<dyn TimeSource>,
}

/// A blob: its bytes; `None` for a metadata-only record.
pub type Blob<'a> = Option<&'a [u8]>;

impl Side {
    /// A side with empty stores on the backend `STARKEEP_TEST_BACKEND` names
    /// ([`Backend::from_env`]) and [`test_namespace`] registered.
    pub fn new(node: &str, time: Arc<dyn TimeSource>) -> Self {
        Self::on(Backend::from_env(), node, time)
    }

    /// [`new`](Self::new) in memory, whatever the environment says (the simulator).
    pub fn in_memory(node: &str, time: Arc<dyn TimeSource>) -> Self {
        Self::on(Backend::Memory, node, time)
    }

    /// [`new`](Self::new) on `backend`.
    pub fn on(backend: Backend, node: &str, time: Arc<dyn TimeSource>) -> Self {
        let faults = Faults::new();
        let node = NodeId::new(node).expect("valid node id");
        let stores = backend.open();
        let side = Self {
            clock: Arc::new(Mutex::new(Clock::new(node.clone(), ClockConfig::default()))),
            node,
            backend,
            records: Arc::new(FaultyRecordStore::new(stores.clone(), faults.clone())),
            rows: Arc::new(FaultyAppRowStore::new(stores.clone(), faults.clone())),
            state: Arc::new(FaultySyncState::new(stores, faults.clone())),
            blobs: Arc::new(MemoryBlobs::new(faults.clone())),
            faults,
            time,
        };
        block_on(side.rows.register(test_namespace())).expect("register");
        side
    }

    /// This side's data on `channel`.
    pub fn data(&self, channel: &Channel) -> ChannelData {
        let records: Arc<dyn RecordStore> = self.records.clone();
        let rows: Arc<dyn AppRowStore> = self.rows.clone();
        ChannelData::new(channel.clone(), Some(records), Some(rows))
    }

    /// A responder over this side.
    pub fn responder(&self, channel: &Channel, config: ResponderConfig) -> Responder {
        Responder::new(ResponderParts {
            data: self.data(channel),
            blobs: self.blobs.clone(),
            clock: self.clock.clone(),
            time: self.time.clone(),
            config,
        })
    }

    /// A fresh timestamp from this side's clock.
    pub fn now(&self) -> Hlc {
        let now = self.time.now_ms();
        self.clock.lock().unwrap().now(now)
    }

    /// Merges a timestamp into this side's clock (as when it stores a copy it was sent).
    pub fn observe(&self, hlc: &Hlc) {
        let now = self.time.now_ms();
        let _ = self.clock.lock().unwrap().receive(hlc, now);
    }

    fn store_blob(&self, bytes: Blob<'_>, prefix: &str) -> (String, String, u64) {
        match bytes {
            None => (String::new(), String::new(), 0),
            Some(b) => {
                let hash = sha256_hex(b);
                let key = format!("{prefix}/{}/{hash}", &hash[..2]);
                self.blobs.insert(&key, b);
                (key, hash, b.len() as u64)
            }
        }
    }

    /// A record version with this side's next timestamp; the blob (if any) is stored here
    /// under a content-addressed key.
    pub fn make_record(&self, id: &str, blob: Blob<'_>) -> SharedRecord {
        let at = self.now();
        let (key, hash, size) = self.store_blob(blob, "shared/test");
        let created = self
            .record(id)
            .map(|r| r.created_at)
            .unwrap_or_else(|| at.clone());
        SharedRecord {
            id: id.into(),
            kind: "data".into(),
            record_type: "application/octet-stream".into(),
            created_at: created,
            updated_at: at,
            deleted_at: None,
            version: 1,
            content_hash: hash,
            object_storage_key: key,
            mime_type: Some("application/octet-stream".into()),
            size_bytes: size,
            original_filename: Some(format!("{id}.bin")),
            origin_app_id: "test".into(),
            parent_id: None,
            label: None,
        }
    }

    /// Writes (inserts or updates) a record locally.
    pub fn put_record(&self, id: &str, blob: Blob<'_>) -> SharedRecord {
        let r = self.make_record(id, blob);
        self.apply_record(&r);
        r
    }

    /// Soft-deletes a record locally (deletedAt = updatedAt = a new timestamp).
    pub fn delete_record(&self, id: &str) -> SharedRecord {
        let mut r = self.record(id).expect("record to delete exists");
        let at = self.now();
        r.updated_at = at.clone();
        r.deleted_at = Some(at);
        self.apply_record(&r);
        r
    }

    /// Stores a record version as-is (LWW applies).
    pub fn apply_record(&self, r: &SharedRecord) {
        block_on(self.records.apply(std::slice::from_ref(r))).expect("apply record");
    }

    /// The stored record.
    pub fn record(&self, id: &str) -> Option<SharedRecord> {
        block_on(self.records.get(id)).expect("get record")
    }

    /// An app row version of [`TEST_APP`] with this side's next timestamp. For the reserved
    /// table, `blob` is stored here and named by the row.
    pub fn make_row(&self, table: &str, id: &str, payload: &str, blob: Blob<'_>) -> AppRow {
        let at = self.now();
        let mut row = RowValues::new();
        row.insert("id".into(), json!(id));
        if table == RESERVED_TABLE {
            let (key, hash, size) = self.store_blob(blob, &format!("apps/{TEST_APP}/syncable"));
            row.insert("object_storage_key".into(), json!(key));
            row.insert("content_hash".into(), json!(hash));
            row.insert("mime_type".into(), json!("application/octet-stream"));
            row.insert("size_bytes".into(), json!(size));
            row.insert("original_filename".into(), Value::Null);
            row.insert("origin_app_id".into(), json!(TEST_APP));
            row.insert("created_at".into(), json!(at.to_string()));
            row.insert("updated_at".into(), json!(at.to_string()));
            row.insert("deleted_at".into(), Value::Null);
        }
        row.insert("payload".into(), json!(payload));
        AppRow {
            timestamp: at,
            app_id: TEST_APP.into(),
            table: table.into(),
            op: RowOp::Insert,
            row: Some(row),
            where_: None,
        }
    }

    /// Writes an app row locally.
    pub fn put_row(&self, table: &str, id: &str, payload: &str, blob: Blob<'_>) -> AppRow {
        let r = self.make_row(table, id, payload, blob);
        self.apply_row(&r);
        r
    }

    /// Soft-deletes an app row locally (op `delete`, `deleted_at` set, key in `where`).
    pub fn delete_row(&self, table: &str, id: &str) -> AppRow {
        let at = self.now();
        let mut row = self.row(table, id).and_then(|r| r.row).unwrap_or_default();
        row.insert("deleted_at".into(), json!(at.to_string()));
        let mut where_ = RowValues::new();
        where_.insert("id".into(), json!(id));
        let r = AppRow {
            timestamp: at,
            app_id: TEST_APP.into(),
            table: table.into(),
            op: RowOp::Delete,
            row: Some(row),
            where_: Some(where_),
        };
        self.apply_row(&r);
        r
    }

    /// Stores an app row version as-is (LWW applies).
    pub fn apply_row(&self, r: &AppRow) {
        block_on(self.rows.apply(std::slice::from_ref(r))).expect("apply row");
    }

    /// The stored row of [`TEST_APP`].
    pub fn row(&self, table: &str, id: &str) -> Option<AppRow> {
        block_on(self.rows.get(TEST_APP, table, &json!([id]).to_string())).expect("get row")
    }

    /// Number of rows stored in a table of [`TEST_APP`].
    pub fn row_count(&self, table: &str) -> usize {
        self.rows
            .all(TEST_APP)
            .keys()
            .filter(|(t, _)| t == table)
            .count()
    }

    /// Residency of a record on this side.
    pub fn record_residency(&self, id: &str) -> Residency {
        let item = self.record(id).map(Item::Record);
        let present = item
            .as_ref()
            .and_then(|i| i.blob(true))
            .is_some_and(|m| self.blobs.has(&m.key));
        Residency::derive(item.as_ref(), true, present)
    }

    /// Residency of a row of [`TEST_APP`] on this side.
    pub fn row_residency(&self, table: &str, id: &str) -> Residency {
        let item = self.row(table, id).map(Item::Row);
        let present = item
            .as_ref()
            .and_then(|i| i.blob(true))
            .is_some_and(|m| self.blobs.has(&m.key));
        Residency::derive(item.as_ref(), true, present)
    }

    /// Copies a record version (and its blob) from `other`, as if it had been synced.
    pub fn copy_record_from(&self, other: &Side, id: &str) {
        let r = other.record(id).expect("record exists on the other side");
        if !r.object_storage_key.is_empty() {
            if let Some(b) = other.blobs.bytes(&r.object_storage_key) {
                self.blobs.insert(&r.object_storage_key, &b);
            }
        }
        self.observe(&r.updated_at);
        self.apply_record(&r);
    }

    /// Copies an app row version (and its blob) from `other`.
    pub fn copy_row_from(&self, other: &Side, table: &str, id: &str) {
        let r = other.row(table, id).expect("row exists on the other side");
        if let Some(m) = Item::Row(r.clone()).blob(true) {
            if let Some(b) = other.blobs.bytes(&m.key) {
                self.blobs.insert(&m.key, &b);
            }
        }
        self.observe(&r.timestamp);
        self.apply_row(&r);
    }

    /// Wipes every record, row and blob (a cloud reset): records and rows move to a fresh
    /// database of the same backend, with the same namespaces registered. Coverage floors
    /// go too (a wipe is data loss); the sync state stays where it was.
    pub fn wipe(&self) {
        let fresh = self.backend.open();
        self.records.replace(fresh.clone());
        self.rows.replace(fresh);
        self.blobs.wipe();
    }

    /// A handle on the same stores, clock and faults (a second connection to one node).
    pub fn share(&self) -> Side {
        Side {
            node: self.node.clone(),
            faults: self.faults.clone(),
            backend: self.backend,
            records: self.records.clone(),
            rows: self.rows.clone(),
            state: self.state.clone(),
            blobs: self.blobs.clone(),
            clock: self.clock.clone(),
            time: self.time.clone(),
        }
    }
}

/// A local node L (`local`) and the cloud C (`cloud`) on one channel.
pub struct Pair {
    /// The requester.
    pub local: Side,
    /// The responder.
    pub cloud: Side,
    /// The channel synced.
    pub channel: Channel,
    /// The requester's options.
    pub config: RoundConfig,
    /// The responder's options.
    pub responder_config: ResponderConfig,
    /// Transport faults (send failure, lost response).
    pub transport_faults: Arc<Faults>,
    /// The shared wall clock.
    pub time: Arc<ManualTime>,
}

impl Pair {
    /// A pair on `channel`, sharing one ticking wall clock starting at 1000.
    pub fn new(channel: Channel) -> Self {
        let time = ManualTime::new(1000, 1);
        Self {
            local: Side::new("local", time.clone()),
            cloud: Side::new("cloud", time.clone()),
            channel,
            config: RoundConfig::default(),
            responder_config: ResponderConfig::default(),
            transport_faults: Faults::new(),
            time,
        }
    }

    /// A second device `node` (fresh stores, same wall clock) syncing the same channel
    /// against the same cloud, with the same options and transport faults.
    pub fn second_device(&self, node: &str) -> Pair {
        Pair {
            local: Side::new(node, self.time.clone()),
            cloud: self.cloud.share(),
            channel: self.channel.clone(),
            config: self.config.clone(),
            responder_config: self.responder_config.clone(),
            transport_faults: self.transport_faults.clone(),
            time: self.time.clone(),
        }
    }

    /// A pair on the Drive channel.
    pub fn drive() -> Self {
        Self::new(Channel::Drive)
    }

    /// A pair on [`TEST_APP`]'s channel.
    pub fn app() -> Self {
        Self::new(Channel::App(TEST_APP.into()))
    }

    /// Sets the requester's page limit.
    pub fn with_page_limit(mut self, n: usize) -> Self {
        self.config = self.config.with_page_limit(n);
        self
    }

    /// Sets the requester's scan page size.
    pub fn with_scan_page_size(mut self, n: usize) -> Self {
        self.config = self.config.with_scan_page_size(n);
        self
    }

    /// The requester for L against C over an in-process responder.
    pub fn requester(&self) -> Requester {
        let responder: Arc<dyn ExchangeTransport> = Arc::new(
            self.cloud
                .responder(&self.channel, self.responder_config.clone()),
        );
        Requester::new(RequesterParts {
            data: self.local.data(&self.channel),
            state: self.local.state.clone(),
            transfer: Arc::new(MemoryTransfer {
                local: self.local.blobs.clone(),
                remote: self.cloud.blobs.clone(),
            }),
            transport: Arc::new(FaultyTransport {
                inner: responder,
                faults: self.transport_faults.clone(),
            }),
            clock: self.local.clock.clone(),
            time: self.local.time.clone(),
            config: self.config.clone(),
        })
    }

    /// One round; panics if the round fails as a whole.
    pub fn round(&self) -> RoundReport {
        self.try_round().expect("round failed")
    }

    /// One round.
    pub fn try_round(&self) -> Result<RoundReport, sync_core::Error> {
        block_on(self.requester().exchange())
    }

    /// `sync_until_idle` with a bound of 100 rounds.
    pub fn sync_until_idle(&self) -> SyncSummary {
        block_on(self.requester().sync_until_idle(100)).expect("sync failed")
    }

    /// Rounds until one ships and applies nothing, has nothing more, and leaves the peer
    /// watermarks unchanged (the reference's "until-converged"); more than 100 rounds panics.
    pub fn until_converged(&self) -> Vec<RoundReport> {
        let mut rounds = Vec::new();
        loop {
            assert!(rounds.len() < 100, "did not converge in 100 rounds");
            let before = self.state();
            let r = self.round();
            let quiet =
                r.applied == 0 && r.shipped == 0 && !r.has_more && before.peer == self.state().peer;
            rounds.push(r);
            if quiet {
                return rounds;
            }
        }
    }

    /// L's sync state on the channel.
    pub fn state(&self) -> ChannelState {
        self.local.state.get(&self.channel)
    }

    /// L's own watermarks.
    pub fn own(&self) -> Watermarks {
        self.state().own
    }

    /// L's copy of C's coverage.
    pub fn peer(&self) -> Watermarks {
        self.state().peer
    }

    /// Seeds both watermark maps of L (e.g. `cur`: what both sides hold).
    pub fn set_watermarks(&self, own: Watermarks, peer: Watermarks) {
        self.local
            .state
            .set(&self.channel, ChannelState { own, peer });
    }

    /// Seeds `cur`: own = peer = per-origin max over everything both sides hold.
    pub fn set_current_watermarks(&self) {
        let mut w = block_on(self.local.data(&self.channel).coverage()).unwrap();
        w.merge(&block_on(self.cloud.data(&self.channel).coverage()).unwrap());
        self.set_watermarks(w.clone(), w);
    }

    /// L writes a record and C stores an identical copy (`both-same`).
    pub fn both_same_record(&self, id: &str, blob: Blob<'_>) -> SharedRecord {
        let r = self.local.put_record(id, blob);
        self.cloud.copy_record_from(&self.local, id);
        r
    }

    /// L writes a row and C stores an identical copy.
    pub fn both_same_row(&self, table: &str, id: &str, payload: &str, blob: Blob<'_>) -> AppRow {
        let r = self.local.put_row(table, id, payload, blob);
        self.cloud.copy_row_from(&self.local, table, id);
        r
    }
}

/// `⟨applied, shipped, has_more⟩` of a round, for compact assertions.
pub fn ash(r: &RoundReport) -> (usize, usize, bool) {
    (r.applied, r.shipped, r.has_more)
}
