//! In-memory implementations of every port, with fault injection.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sync_core::{
    row_key, AppNamespace, AppRowStore, Applied, BlobDigest, BlobError, BlobManifest, BlobStamp,
    BlobStore, BlobTransfer, Channel, ChannelState, ExchangeError, ExchangeTransport, RecordStore,
    StoreError, SyncStateStore, TimeSource, Transferred,
};
use sync_hlc::{ClockState, Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, ExchangeRequest, ExchangeResponse, RowOp, SharedRecord};

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a fault can be injected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultPoint {
    /// Applying the item with this name (a record id, or a row's `id` column) fails.
    Apply(String),
    /// Every scan of a store fails.
    Scan,
    /// Every coverage read of a store fails.
    Coverage,
    /// Storing the blob with this key fails (on the destination storage).
    BlobPut(String),
    /// Reading the blob with this key fails (on the source storage).
    BlobGet(String),
    /// Storing any blob fails.
    AnyBlobPut,
    /// The transport fails before the request is sent.
    Send,
    /// The request reaches the responder but the response is lost.
    LoseResponse,
    /// Committing sync state fails.
    StateCommit,
}

/// How often a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Fails this many more times, then succeeds.
    Times(u32),
    /// Always fails.
    Persistent,
}

/// A set of armed faults, shared by the ports of one side.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<BTreeMap<FaultPoint, FaultMode>>,
}

impl Faults {
    /// A shared, empty fault set.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Arms a fault.
    pub fn arm(&self, point: FaultPoint, mode: FaultMode) {
        guard(&self.armed).insert(point, mode);
    }

    /// Disarms a fault.
    pub fn disarm(&self, point: &FaultPoint) {
        guard(&self.armed).remove(point);
    }

    /// Disarms every fault.
    pub fn heal(&self) {
        guard(&self.armed).clear();
    }

    /// Whether `point` is armed (without counting it down).
    pub fn is_armed(&self, point: &FaultPoint) -> bool {
        guard(&self.armed).contains_key(point)
    }

    /// Whether any fault is armed.
    pub fn any(&self) -> bool {
        !guard(&self.armed).is_empty()
    }

    /// Whether `point` fires now (counting down a transient fault).
    pub fn fires(&self, point: &FaultPoint) -> bool {
        let mut armed = guard(&self.armed);
        match armed.get_mut(point) {
            None => false,
            Some(FaultMode::Persistent) => true,
            Some(FaultMode::Times(n)) => {
                *n -= 1;
                if *n == 0 {
                    armed.remove(point);
                }
                true
            }
        }
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::transient(format!("injected fault: {what}"))
}

/// [`FaultPoint::Coverage`]: fails a coverage read (of records or rows) when it fires.
pub(crate) fn coverage_fault(faults: &Faults) -> Result<(), StoreError> {
    match faults.fires(&FaultPoint::Coverage) {
        true => Err(injected("coverage read")),
        false => Ok(()),
    }
}

/// [`FaultPoint::Scan`]: fails a scan (of records or rows) when it fires.
pub(crate) fn scan_fault(faults: &Faults) -> Result<(), StoreError> {
    match faults.fires(&FaultPoint::Scan) {
        true => Err(injected("scan")),
        false => Ok(()),
    }
}

/// [`FaultPoint::Apply`]: fails a batch of records, before anything is written, when the
/// fault of one of its records fires (only the first one armed counts down).
pub(crate) fn record_apply_fault(
    faults: &Faults,
    records: &[SharedRecord],
) -> Result<(), StoreError> {
    match records
        .iter()
        .find(|r| faults.fires(&FaultPoint::Apply(r.id.clone())))
    {
        Some(r) => Err(injected(&format!("apply of record {}", r.id))),
        None => Ok(()),
    }
}

/// [`FaultPoint::Apply`]: fails a batch of rows, before anything is written, when the fault
/// named by one of its rows' `id` column fires.
pub(crate) fn row_apply_fault(faults: &Faults, rows: &[AppRow]) -> Result<(), StoreError> {
    match rows
        .iter()
        .filter_map(row_name)
        .find(|n| faults.fires(&FaultPoint::Apply(n.clone())))
    {
        Some(name) => Err(injected(&format!("apply of row {name}"))),
        None => Ok(()),
    }
}

/// [`FaultPoint::StateCommit`]: fails a sync-state commit when it fires.
pub(crate) fn commit_fault(faults: &Faults) -> Result<(), StoreError> {
    match faults.fires(&FaultPoint::StateCommit) {
        true => Err(injected("state commit")),
        false => Ok(()),
    }
}

/// Per origin node, versions in order with the item they belong to.
type VersionIndex<K> = BTreeMap<NodeId, BTreeSet<(Hlc, K)>>;

fn index_coverage<K: Ord>(index: &VersionIndex<K>) -> Watermarks {
    index
        .values()
        .filter_map(|set| set.last().map(|(h, _)| h.clone()))
        .collect()
}

fn index_below<K: Ord>(index: &VersionIndex<K>, origin: &NodeId, below: &Hlc) -> Option<Hlc> {
    index
        .get(origin)?
        .iter()
        .rev()
        .find(|(h, _)| h < below)
        .map(|(h, _)| h.clone())
}

/// The floor of `origin` (the highest of its versions replaced by a newer version of the
/// same item, decision 0008) if it is strictly below `below`.
fn floor_below(floors: &Watermarks, origin: &NodeId, below: &Hlc) -> Option<Hlc> {
    floors.get(origin.as_str()).filter(|f| *f < below).cloned()
}

fn index_scan<'a, K: Ord>(
    index: &'a VersionIndex<K>,
    origin: &NodeId,
    above: Option<&'a Hlc>,
) -> impl Iterator<Item = &'a K> + 'a {
    index
        .get(origin)
        .into_iter()
        .flat_map(|set| set.iter())
        .filter(move |(h, _)| above.is_none_or(|a| h > a))
        .map(|(_, k)| k)
}

fn lww(stored: Option<&Hlc>, offered: &Hlc) -> Applied {
    match stored {
        Some(s) if s == offered => Applied::Kept,
        Some(s) if s > offered => Applied::Superseded,
        _ => Applied::Written,
    }
}

#[derive(Default)]
struct RecordsInner {
    by_id: HashMap<String, SharedRecord>,
    index: VersionIndex<String>,
    /// Per origin node, the highest of its versions replaced by a newer version of the same
    /// record (monotone coverage, decision 0008).
    floors: Watermarks,
}

/// Shared records in memory.
#[derive(Default)]
pub struct MemoryRecordStore {
    inner: Mutex<RecordsInner>,
    faults: Arc<Faults>,
}

impl MemoryRecordStore {
    /// An empty store whose faults come from `faults`.
    pub fn new(faults: Arc<Faults>) -> Self {
        Self {
            inner: Mutex::default(),
            faults,
        }
    }

    /// Every stored record, by id.
    pub fn all(&self) -> BTreeMap<String, SharedRecord> {
        guard(&self.inner)
            .by_id
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Forgets everything, coverage floors included (a wipe is data loss).
    pub fn wipe(&self) {
        *guard(&self.inner) = RecordsInner::default();
    }
}

#[async_trait]
impl RecordStore for MemoryRecordStore {
    async fn coverage(&self) -> Result<Watermarks, StoreError> {
        coverage_fault(&self.faults)?;
        let inner = guard(&self.inner);
        Ok(index_coverage(&inner.index).merged(&inner.floors))
    }

    async fn coverage_below(
        &self,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        coverage_fault(&self.faults)?;
        let inner = guard(&self.inner);
        Ok(index_below(&inner.index, origin, below).max(floor_below(&inner.floors, origin, below)))
    }

    async fn scan(
        &self,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<SharedRecord>, StoreError> {
        scan_fault(&self.faults)?;
        let inner = guard(&self.inner);
        Ok(index_scan(&inner.index, origin, above)
            .take(limit)
            .map(|id| inner.by_id[id].clone())
            .collect())
    }

    async fn apply(&self, records: &[SharedRecord]) -> Result<Vec<Applied>, StoreError> {
        record_apply_fault(&self.faults, records)?;
        let mut inner = guard(&self.inner);
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let stored = inner.by_id.get(&r.id).map(|s| s.updated_at.clone());
            let outcome = lww(stored.as_ref(), &r.updated_at);
            if outcome == Applied::Written {
                if let Some(old) = stored {
                    if let Some(set) = inner.index.get_mut(old.node_id()) {
                        set.remove(&(old.clone(), r.id.clone()));
                    }
                    inner.floors.advance(&old);
                }
                inner
                    .index
                    .entry(r.origin().clone())
                    .or_default()
                    .insert((r.updated_at.clone(), r.id.clone()));
                inner.by_id.insert(r.id.clone(), r.clone());
            }
            out.push(outcome);
        }
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Option<SharedRecord>, StoreError> {
        Ok(guard(&self.inner).by_id.get(id).cloned())
    }
}

type RowId = (String, String, String);

#[derive(Default)]
struct RowsInner {
    namespaces: BTreeMap<String, AppNamespace>,
    rows: BTreeMap<RowId, AppRow>,
    index: BTreeMap<(String, String), VersionIndex<String>>,
    /// Per (app, table), per origin node, the highest of its versions replaced by a newer
    /// version of the same row (monotone coverage, decision 0008).
    floors: BTreeMap<(String, String), Watermarks>,
}

/// App rows in memory.
#[derive(Default)]
pub struct MemoryAppRowStore {
    inner: Mutex<RowsInner>,
    faults: Arc<Faults>,
}

impl MemoryAppRowStore {
    /// An empty store whose faults come from `faults`.
    pub fn new(faults: Arc<Faults>) -> Self {
        Self {
            inner: Mutex::default(),
            faults,
        }
    }

    /// Every stored row of one app, by (table, canonical key).
    pub fn all(&self, app: &str) -> BTreeMap<(String, String), AppRow> {
        guard(&self.inner)
            .rows
            .iter()
            .filter(|((a, _, _), _)| a == app)
            .map(|((_, t, k), v)| ((t.clone(), k.clone()), v.clone()))
            .collect()
    }

    /// Forgets every row and the coverage floors (a wipe is data loss); namespaces stay
    /// registered.
    pub fn wipe(&self) {
        let mut inner = guard(&self.inner);
        inner.rows.clear();
        inner.index.clear();
        inner.floors.clear();
    }
}

/// The name an apply fault matches for a row: its `id` column (in `row` or `where`).
fn row_name(row: &AppRow) -> Option<String> {
    row.row
        .as_ref()
        .and_then(|r| r.get("id"))
        .or_else(|| row.where_.as_ref().and_then(|w| w.get("id")))
        .and_then(|v| v.as_str().map(str::to_string))
}

#[async_trait]
impl AppRowStore for MemoryAppRowStore {
    async fn register(&self, namespace: AppNamespace) -> Result<(), StoreError> {
        let ns = namespace
            .validated()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        guard(&self.inner).namespaces.insert(ns.app_id.clone(), ns);
        Ok(())
    }

    async fn namespace(&self, app_id: &str) -> Result<Option<AppNamespace>, StoreError> {
        Ok(guard(&self.inner).namespaces.get(app_id).cloned())
    }

    async fn coverage(&self, app_id: &str, table: &str) -> Result<Watermarks, StoreError> {
        coverage_fault(&self.faults)?;
        let inner = guard(&self.inner);
        let stream = (app_id.to_string(), table.to_string());
        let mut coverage = inner
            .index
            .get(&stream)
            .map(index_coverage)
            .unwrap_or_default();
        if let Some(floors) = inner.floors.get(&stream) {
            coverage.merge(floors);
        }
        Ok(coverage)
    }

    async fn coverage_below(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        coverage_fault(&self.faults)?;
        let inner = guard(&self.inner);
        let stream = (app_id.to_string(), table.to_string());
        let stored = inner
            .index
            .get(&stream)
            .and_then(|ix| index_below(ix, origin, below));
        let floor = inner
            .floors
            .get(&stream)
            .and_then(|floors| floor_below(floors, origin, below));
        Ok(stored.max(floor))
    }

    async fn scan(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<AppRow>, StoreError> {
        scan_fault(&self.faults)?;
        let inner = guard(&self.inner);
        let Some(ix) = inner.index.get(&(app_id.to_string(), table.to_string())) else {
            return Ok(Vec::new());
        };
        Ok(index_scan(ix, origin, above)
            .take(limit)
            .map(|k| inner.rows[&(app_id.to_string(), table.to_string(), k.clone())].clone())
            .collect())
    }

    async fn apply(&self, rows: &[AppRow]) -> Result<Vec<Applied>, StoreError> {
        row_apply_fault(&self.faults, rows)?;
        let mut inner = guard(&self.inner);
        // Check the whole batch first: it applies atomically or not at all.
        let mut keyed = Vec::with_capacity(rows.len());
        for r in rows {
            let spec = inner
                .namespaces
                .get(&r.app_id)
                .and_then(|ns| ns.table(&r.table))
                .ok_or_else(|| {
                    StoreError::Invalid(format!("table {}.{} is not registered", r.app_id, r.table))
                })?;
            let key = row_key(spec, r).map_err(|e| StoreError::Invalid(e.to_string()))?;
            keyed.push((key, normalized(spec, r)));
        }
        let mut out = Vec::with_capacity(rows.len());
        for (key, r) in keyed {
            let id = (r.app_id.clone(), r.table.clone(), key.clone());
            let stored = inner.rows.get(&id).map(|s| s.timestamp.clone());
            let outcome = lww(stored.as_ref(), &r.timestamp);
            if outcome == Applied::Written {
                let stream = (r.app_id.clone(), r.table.clone());
                let RowsInner { index, floors, .. } = &mut *inner;
                let ix = index.entry(stream.clone()).or_default();
                if let Some(old) = stored {
                    if let Some(set) = ix.get_mut(old.node_id()) {
                        set.remove(&(old.clone(), key.clone()));
                    }
                    floors.entry(stream).or_default().advance(&old);
                }
                ix.entry(r.origin().clone())
                    .or_default()
                    .insert((r.timestamp.clone(), key.clone()));
                inner.rows.insert(id, r);
            }
            out.push(outcome);
        }
        Ok(out)
    }

    async fn get(
        &self,
        app_id: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<AppRow>, StoreError> {
        Ok(guard(&self.inner)
            .rows
            .get(&(app_id.to_string(), table.to_string(), key.to_string()))
            .cloned())
    }
}

/// A stored snapshot: a tombstone always names its complete primary key in `where`.
fn normalized(spec: &sync_core::TableSpec, r: &AppRow) -> AppRow {
    let mut r = r.clone();
    if r.op == RowOp::Delete {
        let mut w = r.where_.clone().unwrap_or_default();
        for c in &spec.pk_columns {
            if !w.contains_key(c) {
                if let Some(v) = r.row.as_ref().and_then(|row| row.get(c)) {
                    w.insert(c.clone(), v.clone());
                }
            }
        }
        r.where_ = Some(w);
    }
    r
}

/// Sync state in memory.
#[derive(Default)]
pub struct MemorySyncState {
    channels: Mutex<BTreeMap<Channel, ChannelState>>,
    clock: Mutex<Option<ClockState>>,
    faults: Arc<Faults>,
}

impl MemorySyncState {
    /// Empty state whose faults come from `faults`.
    pub fn new(faults: Arc<Faults>) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// Forgets a channel's watermarks (a local state reset).
    pub fn reset(&self, channel: &Channel) {
        guard(&self.channels).remove(channel);
    }

    /// Overwrites a channel's state (to seed scenarios).
    pub fn set(&self, channel: &Channel, state: ChannelState) {
        guard(&self.channels).insert(channel.clone(), state);
    }

    /// A channel's state.
    pub fn get(&self, channel: &Channel) -> ChannelState {
        guard(&self.channels)
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl SyncStateStore for MemorySyncState {
    async fn load(&self, channel: &Channel) -> Result<ChannelState, StoreError> {
        Ok(self.get(channel))
    }

    async fn load_clock(&self) -> Result<Option<ClockState>, StoreError> {
        Ok(*guard(&self.clock))
    }

    async fn commit(
        &self,
        channel: &Channel,
        state: &ChannelState,
        clock: ClockState,
    ) -> Result<(), StoreError> {
        commit_fault(&self.faults)?;
        guard(&self.channels).insert(channel.clone(), state.clone());
        *guard(&self.clock) = Some(clock);
        Ok(())
    }

    async fn save_clock(&self, clock: ClockState) -> Result<(), StoreError> {
        *guard(&self.clock) = Some(clock);
        Ok(())
    }
}

/// Object storage in memory.
#[derive(Default)]
pub struct MemoryBlobs {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    faults: Arc<Faults>,
    puts: AtomicU64,
    inline_limit: AtomicU64,
    digests: AtomicU64,
}

impl MemoryBlobs {
    /// Empty storage whose faults come from `faults`.
    pub fn new(faults: Arc<Faults>) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// Stores bytes directly (seeding; no fault injection).
    pub fn insert(&self, key: &str, bytes: &[u8]) {
        guard(&self.objects).insert(key.to_string(), bytes.to_vec());
    }

    /// The bytes at `key`.
    pub fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        guard(&self.objects).get(key).cloned()
    }

    /// How many times a blob was read back whole to hash it ([`BlobStore::digest`]).
    pub fn digests(&self) -> u64 {
        self.digests.load(Ordering::Relaxed)
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        guard(&self.objects).contains_key(key)
    }

    /// Removes a blob.
    pub fn remove(&self, key: &str) {
        guard(&self.objects).remove(key);
    }

    /// Forgets every blob.
    pub fn wipe(&self) {
        guard(&self.objects).clear();
    }

    /// Number of successful stores so far.
    pub fn put_count(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
    }

    /// Takes and serves blobs up to `bytes` inline (protocol version 2); 0, the default,
    /// turns inline blobs off, so every blob moves through push and pull. Inline reads and
    /// writes go through the same fault points as transfers (`BlobGet`, `BlobPut`).
    pub fn set_inline_limit(&self, bytes: u64) {
        self.inline_limit.store(bytes, Ordering::Relaxed);
    }

    /// Verifies `bytes` against the manifest, then stores them (unless the key is present).
    fn land(&self, m: &BlobManifest, bytes: Vec<u8>) -> Result<Transferred, BlobError> {
        if self.has(&m.key) {
            return Ok(Transferred::AlreadyPresent);
        }
        verify(m, &bytes)?;
        let n = bytes.len() as u64;
        self.put(&m.key, bytes)?;
        Ok(Transferred::Copied { bytes: n })
    }

    fn read_bounded(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
        match self.get(key) {
            Ok(bytes) if bytes.len() as u64 <= max_bytes => Ok(Some(bytes)),
            Ok(_) | Err(BlobError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        if self.faults.fires(&FaultPoint::BlobGet(key.to_string())) {
            return Err(BlobError::Transient {
                key: key.into(),
                message: "injected read fault".into(),
                source: None,
            });
        }
        self.bytes(key)
            .ok_or(BlobError::NotFound { key: key.into() })
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        if self.faults.fires(&FaultPoint::BlobPut(key.to_string()))
            || self.faults.fires(&FaultPoint::AnyBlobPut)
        {
            return Err(BlobError::Transient {
                key: key.into(),
                message: "injected write fault".into(),
                source: None,
            });
        }
        guard(&self.objects).insert(key.to_string(), bytes);
        self.puts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[async_trait]
impl BlobStore for MemoryBlobs {
    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        Ok(self.has(key))
    }

    fn inline_limit(&self) -> u64 {
        self.inline_limit.load(Ordering::Relaxed)
    }

    async fn read_inline(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
        self.read_bounded(key, max_bytes)
    }

    async fn write_inline(
        &self,
        manifest: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        self.land(manifest, bytes)
    }

    // The ETag of an in-memory blob is the hash of its bytes (as S3's is an MD5 of a
    // single-part object): cheap here, and it changes whenever the bytes do.
    async fn stamp(&self, key: &str) -> Result<Option<BlobStamp>, BlobError> {
        Ok(self
            .bytes(key)
            .map(|b| BlobStamp::new(b.len() as u64, Some(sha256_hex(&b)))))
    }

    async fn digest(&self, key: &str) -> Result<BlobDigest, BlobError> {
        self.digests.fetch_add(1, Ordering::Relaxed);
        Ok(match self.get(key) {
            Ok(b) => BlobDigest::Sha256 {
                hex: sha256_hex(&b),
                stamp: BlobStamp::new(b.len() as u64, Some(sha256_hex(&b))),
            },
            Err(BlobError::NotFound { .. }) => BlobDigest::Absent,
            Err(e) => return Err(e),
        })
    }
}

fn verify(m: &BlobManifest, bytes: &[u8]) -> Result<(), BlobError> {
    if let Some(expected) = expected_sha256(&m.content_hash) {
        let actual = sha256_hex(bytes);
        if actual != expected {
            return Err(BlobError::HashMismatch {
                key: m.key.clone(),
                expected,
                actual,
            });
        }
    }
    Ok(())
}

/// The SHA-256 the content hash names, if it names one (64 hex digits, optionally after
/// `sha256:`).
pub fn expected_sha256(content_hash: &str) -> Option<String> {
    let hex = content_hash.strip_prefix("sha256:").unwrap_or(content_hash);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Moves blobs between two in-memory storages, verifying content hashes.
pub struct MemoryTransfer {
    /// This node's storage.
    pub local: Arc<MemoryBlobs>,
    /// The peer's storage.
    pub remote: Arc<MemoryBlobs>,
}

fn copy(m: &BlobManifest, from: &MemoryBlobs, to: &MemoryBlobs) -> Result<Transferred, BlobError> {
    if to.has(&m.key) {
        return Ok(Transferred::AlreadyPresent);
    }
    let bytes = from.get(&m.key)?;
    verify(m, &bytes)?;
    let n = bytes.len() as u64;
    to.put(&m.key, bytes)?;
    Ok(Transferred::Copied { bytes: n })
}

#[async_trait]
impl BlobTransfer for MemoryTransfer {
    async fn push(&self, manifest: &BlobManifest) -> Result<Transferred, BlobError> {
        copy(manifest, &self.local, &self.remote)
    }

    async fn pull(&self, manifest: &BlobManifest) -> Result<Transferred, BlobError> {
        copy(manifest, &self.remote, &self.local)
    }

    fn inline_limit(&self) -> u64 {
        self.local.inline_limit()
    }

    async fn read_local(
        &self,
        manifest: &BlobManifest,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        self.local.read_bounded(&manifest.key, max_bytes)
    }

    async fn land_inline(
        &self,
        manifest: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        self.local.land(manifest, bytes)
    }
}

/// Physical time under the test's control. With `tick`, every read advances it by that
/// many milliseconds (the reference harness's "every clock read moves time by 1").
#[derive(Debug, Default)]
pub struct ManualTime {
    now: AtomicU64,
    tick: AtomicU64,
}

impl ManualTime {
    /// Time starting at `start_ms`, advancing `tick_ms` per read.
    pub fn new(start_ms: u64, tick_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicU64::new(start_ms),
            tick: AtomicU64::new(tick_ms),
        })
    }

    /// Sets the time.
    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }

    /// Moves time forward (or back, with a negative step).
    pub fn advance(&self, ms: i64) {
        let now = self.now.load(Ordering::SeqCst);
        self.now
            .store(now.saturating_add_signed(ms), Ordering::SeqCst);
    }

    /// The current time without ticking.
    pub fn peek(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

impl TimeSource for ManualTime {
    fn now_ms(&self) -> u64 {
        let tick = self.tick.load(Ordering::SeqCst);
        self.now.fetch_add(tick, Ordering::SeqCst)
    }
}

/// A time source offset from another (a node whose clock is ahead or behind).
pub struct SkewedTime {
    /// The true time.
    pub base: Arc<dyn TimeSource>,
    /// Offset in milliseconds.
    pub offset_ms: AtomicI64Wrapper,
}

/// An atomically adjustable signed offset.
#[derive(Debug, Default)]
pub struct AtomicI64Wrapper(std::sync::atomic::AtomicI64);

impl AtomicI64Wrapper {
    /// A new offset.
    pub fn new(v: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(v))
    }
    /// Sets the offset.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::SeqCst);
    }
    /// Reads the offset.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TimeSource for SkewedTime {
    fn now_ms(&self) -> u64 {
        self.base
            .now_ms()
            .saturating_add_signed(self.offset_ms.get())
    }
}

/// Wraps a transport with injected failures: before the request is sent, or after the
/// responder handled it (a lost response).
pub struct FaultyTransport {
    /// The real transport.
    pub inner: Arc<dyn ExchangeTransport>,
    /// Where the faults come from.
    pub faults: Arc<Faults>,
}

#[async_trait]
impl ExchangeTransport for FaultyTransport {
    async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        if self.faults.fires(&FaultPoint::Send) {
            return Err(ExchangeError::Transient {
                message: "injected: connection refused before send".into(),
                source: None,
            });
        }
        let response = self.inner.exchange(request).await?;
        if self.faults.fires(&FaultPoint::LoseResponse) {
            return Err(ExchangeError::Transient {
                message: "injected: response lost after the responder applied the request".into(),
                source: None,
            });
        }
        Ok(response)
    }
}
