use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sync_core::{
    resume_clock, row_key, AppRowStore, BlobTransfer, Channel, ChannelData, ExchangeTransport,
    ItemKey, RecordStore, Requester, RequesterParts, RoundConfig, RoundReport, SharedClock,
    StoreError, SyncStateStore, SyncSummary, TimeSource,
};
use sync_hlc::{Clock, ClockConfig, Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, RowOp, RowValues, SharedRecord};
use tracing::{field, Instrument};

use crate::{
    retry::splitmix, ChangeEvent, NodeMetrics, Notifier, RetryPolicy, Subscription, SystemClock,
};

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A round failed as a whole (nothing was persisted).
    #[error(transparent)]
    Round(#[from] sync_core::Error),
    /// A local store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The engine is missing a part or was given a bad option.
    #[error("engine configuration: {0}")]
    Config(String),
    /// The operation does not belong to this engine's channel.
    #[error("{what} is not carried by channel {channel}")]
    WrongChannel {
        /// What was attempted.
        what: &'static str,
        /// This engine's channel.
        channel: Channel,
    },
    /// No such item.
    #[error("{0} not found")]
    NotFound(String),
    /// Bad input to a local write.
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Round(sync_core::Error::Exchange(e)) => e.is_transient(),
            Error::Round(sync_core::Error::State(e)) | Error::Store(e) => e.is_transient(),
            Error::Round(sync_core::Error::BlobSync(e)) => {
                matches!(e, sync_core::BlobError::Transient { .. })
            }
            _ => false,
        }
    }
}

/// A new shared record, before the engine stamps it with a timestamp.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordDraft {
    /// Record id (time-ordered ids insert faster).
    pub id: String,
    /// Record type (e.g. the MIME type).
    pub record_type: String,
    /// Blob hash (SHA-256 hex).
    pub content_hash: String,
    /// Blob key (`shared/<category>/<2 hex>/<hash>`); empty for metadata only.
    pub object_storage_key: String,
    /// MIME type.
    pub mime_type: Option<String>,
    /// Blob size.
    pub size_bytes: u64,
    /// Imported file name.
    pub original_filename: Option<String>,
    /// The app that creates it.
    pub origin_app_id: String,
    /// Parent record.
    pub parent_id: Option<String>,
    /// Display label.
    pub label: Option<String>,
}

impl RecordDraft {
    /// A file-backed record whose blob is already stored under `key`.
    pub fn file(
        id: impl Into<String>,
        key: impl Into<String>,
        content_hash: impl Into<String>,
        size_bytes: u64,
    ) -> Self {
        Self {
            id: id.into(),
            record_type: "application/octet-stream".into(),
            content_hash: content_hash.into(),
            object_storage_key: key.into(),
            mime_type: Some("application/octet-stream".into()),
            size_bytes,
            original_filename: None,
            origin_app_id: "drive".into(),
            parent_id: None,
            label: None,
        }
    }

    /// Sets the MIME type (also the record type).
    pub fn with_mime_type(mut self, mime: impl Into<String>) -> Self {
        let mime = mime.into();
        self.record_type = mime.clone();
        self.mime_type = Some(mime);
        self
    }

    /// Sets the original file name.
    pub fn with_original_filename(mut self, name: impl Into<String>) -> Self {
        self.original_filename = Some(name.into());
        self
    }

    /// Sets the creating app.
    pub fn with_origin_app_id(mut self, app: impl Into<String>) -> Self {
        self.origin_app_id = app.into();
        self
    }
}

/// Assembles an [`Engine`].
pub struct EngineBuilder {
    node_id: NodeId,
    channel: Channel,
    records: Option<Arc<dyn RecordStore>>,
    rows: Option<Arc<dyn AppRowStore>>,
    state: Option<Arc<dyn SyncStateStore>>,
    transfer: Option<Arc<dyn BlobTransfer>>,
    transport: Option<Arc<dyn ExchangeTransport>>,
    time: Arc<dyn TimeSource>,
    clock: Option<SharedClock>,
    notifier: Option<Notifier>,
    metrics: Option<NodeMetrics>,
    round: RoundConfig,
    clock_config: ClockConfig,
    retry: RetryPolicy,
    max_rounds: usize,
}

impl EngineBuilder {
    /// The node's shared records (required for the Drive channel).
    pub fn records(mut self, store: Arc<dyn RecordStore>) -> Self {
        self.records = Some(store);
        self
    }
    /// The node's app rows (required for an app channel).
    pub fn app_rows(mut self, store: Arc<dyn AppRowStore>) -> Self {
        self.rows = Some(store);
        self
    }
    /// Where watermarks and the clock are persisted (required).
    pub fn state(mut self, store: Arc<dyn SyncStateStore>) -> Self {
        self.state = Some(store);
        self
    }
    /// How blobs move to and from the peer (required).
    pub fn blob_transfer(mut self, transfer: Arc<dyn BlobTransfer>) -> Self {
        self.transfer = Some(transfer);
        self
    }
    /// How to reach the peer's responder for this channel (required).
    pub fn transport(mut self, transport: Arc<dyn ExchangeTransport>) -> Self {
        self.transport = Some(transport);
        self
    }
    /// Physical time (default: the system clock).
    pub fn time_source(mut self, time: Arc<dyn TimeSource>) -> Self {
        self.time = time;
        self
    }
    /// Shares the node's clock with another engine of the same node (see [`Engine::clock`]).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }
    /// Shares a notifier with other engines of the node.
    pub fn notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }
    /// Counts into `metrics`: share one [`NodeMetrics`] among a node's engines, or continue
    /// from a persisted snapshot (default: fresh counters for this engine).
    pub fn metrics(mut self, metrics: NodeMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
    /// Most items per round in each direction (default 1000).
    pub fn page_limit(mut self, n: usize) -> Self {
        self.round = self.round.with_page_limit(n);
        self
    }
    /// Most items per store scan (default 500).
    pub fn scan_page_size(mut self, n: usize) -> Self {
        self.round = self.round.with_scan_page_size(n);
        self
    }
    /// Blob transfers in flight at once (default 8).
    pub fn blob_concurrency(mut self, n: usize) -> Self {
        self.round = self.round.with_blob_concurrency(n);
        self
    }
    /// The largest blob carried inside an exchange, both ways (default 64 KiB; protocol
    /// version 2). 0 moves every blob through the peer's `/files` routes, as a TypeScript
    /// peer does.
    pub fn inline_blob_limit(mut self, bytes: u64) -> Self {
        self.round = self.round.with_inline_blob_limit(bytes);
        self
    }
    /// The skew guard (default one hour).
    pub fn max_drift(mut self, drift: Duration) -> Self {
        self.clock_config = self
            .clock_config
            .with_max_drift_ms(drift.as_millis() as u64);
        self
    }
    /// Pipelined pulls in [`Engine::sync_until_idle`] (default on): while a page lands,
    /// the next is already asked for, when nothing is owed outbound and no failure is
    /// pending (decision 0012).
    pub fn pipelined_pulls(mut self, on: bool) -> Self {
        self.round = self.round.with_pipelined_pulls(on);
        self
    }
    /// Pipelined pushes in [`Engine::sync_until_idle`] (default on): while a full page is
    /// out, the next is already cut, and sent once the peer's coverage shows it still holds
    /// (decision 0015).
    pub fn pipelined_pushes(mut self, on: bool) -> Self {
        self.round = self.round.with_pipelined_pushes(on);
        self
    }
    /// Retries of transient failures in [`Engine::sync_until_idle`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Most rounds per [`Engine::sync_until_idle`] call (default 10,000).
    pub fn max_rounds(mut self, n: usize) -> Self {
        self.max_rounds = n.max(1);
        self
    }

    /// Builds the engine, resuming the node's clock above its persisted state and above
    /// every version stored on the channel (unless a shared clock was given).
    pub async fn build(self) -> Result<Engine, Error> {
        let missing = |what: &str| Error::Config(format!("{what} is required"));
        let state = self.state.ok_or_else(|| missing("a sync state store"))?;
        let transfer = self.transfer.ok_or_else(|| missing("a blob transfer"))?;
        let transport = self.transport.ok_or_else(|| missing("a transport"))?;
        match &self.channel {
            Channel::Drive if self.records.is_none() => {
                return Err(missing("a record store (for the Drive channel)"))
            }
            Channel::App(_) if self.rows.is_none() => {
                return Err(missing("an app-row store (for an app channel)"))
            }
            _ => {}
        }
        let data = ChannelData::new(
            self.channel.clone(),
            self.records.clone(),
            self.rows.clone(),
        );
        let coverage = data.coverage().await?;
        let clock = match self.clock {
            Some(c) => {
                // A shared clock must still be above this channel's data.
                let mut guard = c.lock().unwrap_or_else(|e| e.into_inner());
                let resumed = resume_clock(
                    self.node_id.clone(),
                    guard.config().clone(),
                    Some(guard.state()),
                    &coverage,
                );
                *guard = resumed;
                drop(guard);
                c
            }
            None => {
                let persisted = state.load_clock().await?;
                Arc::new(Mutex::new(resume_clock(
                    self.node_id.clone(),
                    self.clock_config,
                    persisted,
                    &coverage,
                )))
            }
        };
        let requester = Requester::new(RequesterParts {
            data: data.clone(),
            state: state.clone(),
            transfer,
            transport,
            clock: clock.clone(),
            time: self.time.clone(),
            config: self.round,
        });
        Ok(Engine {
            inner: Arc::new(Inner {
                node_id: self.node_id,
                channel: self.channel,
                data,
                records: self.records,
                rows: self.rows,
                state,
                requester,
                clock,
                time: self.time,
                notifier: self.notifier.unwrap_or_default(),
                metrics: self.metrics.unwrap_or_default(),
                writes: tokio::sync::Mutex::new(()),
                rounds: AtomicU64::new(0),
                retry: self.retry,
                max_rounds: self.max_rounds,
            }),
        })
    }
}

struct Inner {
    node_id: NodeId,
    channel: Channel,
    data: ChannelData,
    records: Option<Arc<dyn RecordStore>>,
    rows: Option<Arc<dyn AppRowStore>>,
    state: Arc<dyn SyncStateStore>,
    requester: Requester,
    clock: SharedClock,
    time: Arc<dyn TimeSource>,
    notifier: Notifier,
    metrics: NodeMetrics,
    /// Held by a local write from its timestamp to its commit, so this node's writes commit
    /// in timestamp order: a page cut while they commit can then never hold a later one
    /// without an earlier one (see `ChannelData::select`).
    writes: tokio::sync::Mutex<()>,
    /// Rounds this engine started, to number them in traces.
    rounds: AtomicU64,
    retry: RetryPolicy,
    max_rounds: usize,
}

/// The sync engine of one channel of one node. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A snapshot of a channel's sync state, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStatus {
    /// The channel.
    pub channel: Channel,
    /// Per origin node, what this node has fully landed.
    pub own: Watermarks,
    /// The peer's last coverage report.
    pub peer: Watermarks,
    /// Per origin node, the highest version stored here.
    pub local: Watermarks,
    /// Origin nodes with versions here the peer has not reported covering.
    pub pending_outbound_nodes: Vec<NodeId>,
    /// Per origin node, how far each side trails the other.
    pub lag: Vec<OriginLag>,
}

/// How far this node and its peer trail each other for one origin node's data, measured
/// on the watermarks (no store scan), as of the peer's last coverage report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OriginLag {
    /// The origin node.
    pub node: NodeId,
    /// The newest version of it stored here.
    pub local: Option<Hlc>,
    /// What this node has fully landed of it (its contiguous prefix).
    pub own: Option<Hlc>,
    /// What the peer last reported covering.
    pub peer: Option<Hlc>,
    /// The peer's coverage is below what is stored here: this node has more to ship.
    pub outbound_pending: bool,
    /// When pending, how far (ms of HLC wall time) the peer's coverage trails what is stored
    /// here; `None` when not pending or when the peer holds nothing of this node yet.
    pub outbound_ms: Option<u64>,
    /// This node holds less than the peer's coverage: it has more to receive.
    pub inbound_pending: bool,
    /// When pending, how far (ms) this node trails the peer's coverage; `None` when not
    /// pending or when nothing of this node landed here yet.
    pub inbound_ms: Option<u64>,
}

impl OriginLag {
    fn between(
        node: &NodeId,
        me: &NodeId,
        own: &Watermarks,
        peer: &Watermarks,
        local: &Watermarks,
    ) -> Self {
        let get = |w: &Watermarks| w.get(node.as_str()).cloned();
        let (local_v, own_v, peer_v) = (get(local), get(own), get(peer));
        // What this node holds of the origin: its contiguous landed prefix; of its own
        // writes, everything stored (it authored them).
        let held = if node == me {
            local_v.clone().max(own_v.clone())
        } else {
            own_v.clone()
        };
        let distance = |high: &Option<Hlc>, low: &Option<Hlc>| match (high, low) {
            (Some(h), Some(l)) if h > l => Some(h.wall_time().saturating_sub(l.wall_time())),
            _ => None,
        };
        Self {
            node: node.clone(),
            outbound_pending: local_v > peer_v,
            outbound_ms: distance(&local_v, &peer_v),
            inbound_pending: peer_v > held,
            inbound_ms: distance(&peer_v, &held),
            local: local_v,
            own: own_v,
            peer: peer_v,
        }
    }
}

impl Engine {
    /// Starts building an engine for `node_id` on `channel`.
    pub fn builder(node_id: &str, channel: Channel) -> Result<EngineBuilder, Error> {
        let node_id = NodeId::new(node_id).map_err(|e| Error::Config(e.to_string()))?;
        Ok(EngineBuilder {
            node_id,
            channel,
            records: None,
            rows: None,
            state: None,
            transfer: None,
            transport: None,
            time: Arc::new(SystemClock),
            clock: None,
            notifier: None,
            metrics: None,
            round: RoundConfig::default(),
            clock_config: ClockConfig::default(),
            retry: RetryPolicy::default(),
            max_rounds: 10_000,
        })
    }

    /// This engine's channel.
    pub fn channel(&self) -> &Channel {
        &self.inner.channel
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    /// The node's clock, to share with the node's other engines.
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// The notifier events go to.
    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// Subscribes to this engine's events.
    pub fn subscribe(
        &self,
        listener: impl Fn(&ChangeEvent) + Send + Sync + 'static,
    ) -> Subscription {
        self.inner.notifier.subscribe(listener)
    }

    /// The counters this engine counts into.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.inner.metrics
    }

    /// One exchange round. `local-data-synced` is emitted after its state was persisted.
    pub async fn exchange(&self) -> Result<RoundReport, Error> {
        self.round().await
    }

    /// One round inside its `round` span (channel and number first; what it did, whether
    /// more remains and how long it took recorded when it ends), counted in the metrics and
    /// announced to listeners.
    async fn round(&self) -> Result<RoundReport, Error> {
        self.round_of(self.inner.requester.exchange()).await
    }

    /// [`Engine::round`] of a round run by `exchange`.
    async fn round_of(
        &self,
        exchange: impl std::future::Future<Output = Result<RoundReport, sync_core::Error>>,
    ) -> Result<RoundReport, Error> {
        let number = self.inner.rounds.fetch_add(1, Ordering::Relaxed) + 1;
        let span = tracing::info_span!(
            "round",
            channel = %self.inner.channel,
            round = number,
            applied = field::Empty,
            became_resident = field::Empty,
            shipped = field::Empty,
            failures = field::Empty,
            halted_by_peer = field::Empty,
            has_more = field::Empty,
            stalled = field::Empty,
            pipelined = field::Empty,
            duration_ms = field::Empty,
            error = field::Empty,
        );
        let started = Instant::now();
        let result = exchange.instrument(span.clone()).await.map_err(Error::from);
        let elapsed = started.elapsed();
        let now = self.inner.time.now_ms();
        match &result {
            Ok(report) => {
                span.record("applied", report.applied as u64);
                span.record("became_resident", report.became_resident as u64);
                span.record("shipped", report.shipped as u64);
                span.record("failures", report.failures.len() as u64);
                span.record("halted_by_peer", report.halted_by_peer.len() as u64);
                span.record("has_more", report.has_more);
                span.record("stalled", report.stalled());
                // How the round overlapped the one before it (decisions 0012, 0015).
                if report.pipelined {
                    span.record("pipelined", "pull");
                } else if report.cut_ahead {
                    span.record("pipelined", "push");
                }
                // Failing items are cleared once a watermark covers them; the state is read
                // back only while there are some.
                let state = if self.inner.metrics.has_failing_items(&self.inner.channel) {
                    self.inner.state.load(&self.inner.channel).await.ok()
                } else {
                    None
                };
                self.inner.metrics.round_completed(
                    &self.inner.channel,
                    report,
                    state.as_ref().map(|s| (&s.own, &s.peer)),
                    now,
                );
                self.announce(report);
            }
            Err(e) => {
                span.record("error", field::display(e));
                self.inner
                    .metrics
                    .round_failed(&self.inner.channel, &e.to_string(), now);
            }
        }
        span.record("duration_ms", elapsed.as_secs_f64() * 1e3);
        result
    }

    fn announce(&self, report: &RoundReport) {
        if !report.landed.is_empty() {
            self.inner.notifier.emit(ChangeEvent::LocalDataSynced {
                channel: self.inner.channel.clone(),
                items: report.landed.clone(),
            });
        }
    }

    /// Rounds until neither side has more (or only failing items remain: `stalled`), with
    /// retries, exponential backoff and jitter for transient errors.
    pub async fn sync_until_idle(&self) -> Result<SyncSummary, Error> {
        self.sync_until_idle_with(|_| {}).await
    }

    /// [`Engine::sync_until_idle`], calling `on_round` after every round (for progress
    /// displays; its state is persisted by then).
    pub async fn sync_until_idle_with(
        &self,
        mut on_round: impl FnMut(&RoundReport) + Send,
    ) -> Result<SyncSummary, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.rounds_until_idle(&mut on_round).await {
                Err(e) if e.is_transient() && attempt < self.inner.retry.max_attempts => {
                    let delay = self.inner.retry.delay(attempt, self.entropy());
                    tracing::warn!(channel = %self.inner.channel, error = %e, ?delay, "round failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// The loop of `sync_core::Requester::sync_until_idle_with` (same stopping rules: idle,
    /// two stalled rounds in a row, or `max_rounds`; pipelined pulls when configured), run
    /// here so that every round gets its own span and is counted.
    async fn rounds_until_idle(
        &self,
        on_round: &mut (impl FnMut(&RoundReport) + Send),
    ) -> Result<SyncSummary, Error> {
        let mut summary = SyncSummary::default();
        let mut stalled_rounds = 0;
        let mut rounds = self.inner.requester.rounds();
        while summary.rounds < self.inner.max_rounds {
            let r = self.round_of(rounds.next_round()).await?;
            on_round(&r);
            summary.rounds += 1;
            summary.applied += r.applied;
            summary.shipped += r.shipped;
            summary.became_resident += r.became_resident;
            // A pipelined round did not read the outbound side: idle needs a normal round.
            let (more, stalled) = (r.has_more || r.pipelined, r.stalled());
            summary.last = r;
            if !more {
                summary.complete = true;
                break;
            }
            stalled_rounds = if stalled { stalled_rounds + 1 } else { 0 };
            if stalled_rounds >= 2 {
                summary.stalled = true;
                break;
            }
        }
        Ok(summary)
    }

    pub(crate) fn entropy(&self) -> u64 {
        splitmix(self.inner.time.now_ms() ^ (Arc::as_ptr(&self.inner) as usize as u64))
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    fn stamp(&self) -> Hlc {
        let now = self.inner.time.now_ms();
        let mut clock = self.inner.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.now(now)
    }

    async fn save_clock(&self) -> Result<(), Error> {
        let state = {
            let clock: std::sync::MutexGuard<'_, Clock> =
                self.inner.clock.lock().unwrap_or_else(|e| e.into_inner());
            clock.state()
        };
        self.inner.state.save_clock(state).await?;
        Ok(())
    }

    fn records(&self, what: &'static str) -> Result<&Arc<dyn RecordStore>, Error> {
        match (&self.inner.channel, &self.inner.records) {
            (Channel::Drive, Some(r)) => Ok(r),
            _ => Err(Error::WrongChannel {
                what,
                channel: self.inner.channel.clone(),
            }),
        }
    }

    fn rows(&self, what: &'static str) -> Result<(&str, &Arc<dyn AppRowStore>), Error> {
        match (&self.inner.channel, &self.inner.rows) {
            (Channel::App(app), Some(r)) => Ok((app, r)),
            _ => Err(Error::WrongChannel {
                what,
                channel: self.inner.channel.clone(),
            }),
        }
    }

    fn recorded(&self, item: ItemKey, origin_app_id: Option<String>) {
        self.inner.notifier.emit(ChangeEvent::LocalChangeRecorded {
            channel: self.inner.channel.clone(),
            item,
            origin_app_id,
        });
    }

    /// Writes a shared record (insert or update) with a new timestamp (Drive channel).
    pub async fn put_record(&self, draft: RecordDraft) -> Result<SharedRecord, Error> {
        let _in_order = self.inner.writes.lock().await;
        let store = self.records("a shared record")?;
        if draft.id.is_empty() {
            return Err(Error::Invalid("a record id must not be empty".into()));
        }
        let existing = store.get(&draft.id).await?;
        let at = self.stamp();
        let record = SharedRecord {
            id: draft.id,
            kind: "data".into(),
            record_type: draft.record_type,
            created_at: existing
                .as_ref()
                .map_or_else(|| at.clone(), |e| e.created_at.clone()),
            updated_at: at,
            deleted_at: None,
            version: existing.as_ref().map_or(1, |e| e.version + 1),
            content_hash: draft.content_hash,
            object_storage_key: draft.object_storage_key,
            mime_type: draft.mime_type,
            size_bytes: draft.size_bytes,
            original_filename: draft.original_filename,
            origin_app_id: draft.origin_app_id,
            parent_id: draft.parent_id,
            label: draft.label,
        };
        store.apply(std::slice::from_ref(&record)).await?;
        self.save_clock().await?;
        self.recorded(
            ItemKey::Record {
                id: record.id.clone(),
            },
            None,
        );
        Ok(record)
    }

    /// Soft-deletes a shared record (a tombstone that travels like an update).
    pub async fn delete_record(&self, id: &str) -> Result<SharedRecord, Error> {
        let _in_order = self.inner.writes.lock().await;
        let store = self.records("a shared record")?;
        let mut record = store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("record {id}")))?;
        let at = self.stamp();
        record.updated_at = at.clone();
        record.deleted_at = Some(at);
        record.version += 1;
        store.apply(std::slice::from_ref(&record)).await?;
        self.save_clock().await?;
        self.recorded(ItemKey::Record { id: id.into() }, None);
        Ok(record)
    }

    /// A stored shared record.
    pub async fn record(&self, id: &str) -> Result<Option<SharedRecord>, Error> {
        Ok(self.records("a shared record")?.get(id).await?)
    }

    /// Writes an app row (insert or update) with a new timestamp (app channel).
    pub async fn put_row(&self, table: &str, row: RowValues) -> Result<AppRow, Error> {
        let _in_order = self.inner.writes.lock().await;
        let (app, store) = self.rows("an app row")?;
        let (spec_key, existing) = self.row_identity(app, store, table, &row).await?;
        let r = AppRow {
            timestamp: self.stamp(),
            app_id: app.into(),
            table: table.into(),
            op: if existing.is_some() {
                RowOp::Update
            } else {
                RowOp::Insert
            },
            row: Some(row),
            where_: None,
        };
        store.apply(std::slice::from_ref(&r)).await?;
        self.save_clock().await?;
        self.recorded(
            ItemKey::Row {
                app: app.into(),
                table: table.into(),
                key: spec_key,
            },
            Some(app.into()),
        );
        Ok(r)
    }

    /// Soft-deletes an app row named by its primary-key values.
    pub async fn delete_row(&self, table: &str, key: RowValues) -> Result<AppRow, Error> {
        let _in_order = self.inner.writes.lock().await;
        let (app, store) = self.rows("an app row")?;
        let (canonical, existing) = self.row_identity(app, store, table, &key).await?;
        let existing =
            existing.ok_or_else(|| Error::NotFound(format!("row {app}.{table}{canonical}")))?;
        let at = self.stamp();
        let mut values = existing.row.unwrap_or_default();
        if values.contains_key("deleted_at") || table == sync_protocol::RESERVED_TABLE {
            values.insert("deleted_at".into(), Value::String(at.to_string()));
        }
        let r = AppRow {
            timestamp: at,
            app_id: app.into(),
            table: table.into(),
            op: RowOp::Delete,
            row: Some(values),
            where_: Some(key),
        };
        store.apply(std::slice::from_ref(&r)).await?;
        self.save_clock().await?;
        self.recorded(
            ItemKey::Row {
                app: app.into(),
                table: table.into(),
                key: canonical,
            },
            Some(app.into()),
        );
        Ok(r)
    }

    async fn row_identity(
        &self,
        app: &str,
        store: &Arc<dyn AppRowStore>,
        table: &str,
        values: &RowValues,
    ) -> Result<(String, Option<AppRow>), Error> {
        let ns = store
            .namespace(app)
            .await?
            .ok_or_else(|| Error::Config(format!("app {app} is not registered")))?;
        let spec = ns.table(table).ok_or_else(|| {
            Error::Invalid(format!("table {table:?} is not registered for app {app}"))
        })?;
        let probe = AppRow {
            timestamp: Hlc::zero(self.inner.node_id.clone()),
            app_id: app.into(),
            table: table.into(),
            op: RowOp::Insert,
            row: Some(values.clone()),
            where_: None,
        };
        let key = row_key(spec, &probe).map_err(|e| Error::Invalid(e.to_string()))?;
        let existing = store.get(app, table, &key).await?;
        Ok((key, existing))
    }

    /// A stored app row by its canonical key (the JSON array of its primary-key values).
    pub async fn row(&self, table: &str, key: &str) -> Result<Option<AppRow>, Error> {
        let (app, store) = self.rows("an app row")?;
        Ok(store.get(app, table, key).await?)
    }

    /// Watermarks and pending work of this channel.
    pub async fn status(&self) -> Result<EngineStatus, Error> {
        let state = self
            .inner
            .state
            .load(&self.inner.channel)
            .await
            .map_err(sync_core::Error::State)?;
        let local = self.inner.data.coverage().await?;
        // Probed, not compared: a version that lost last-write-wins here is covered locally
        // but will never ship, and is no pending work.
        let pending_outbound_nodes = self
            .inner
            .data
            .pending_origins(&state.peer, &self.inner.node_id, &state.own)
            .await?;
        let nodes: std::collections::BTreeSet<&NodeId> = state
            .own
            .iter()
            .chain(state.peer.iter())
            .chain(local.iter())
            .map(|(n, _)| n)
            .collect();
        let lag = nodes
            .into_iter()
            .map(|n| OriginLag::between(n, &self.inner.node_id, &state.own, &state.peer, &local))
            .collect();
        Ok(EngineStatus {
            channel: self.inner.channel.clone(),
            own: state.own,
            peer: state.peer,
            local,
            pending_outbound_nodes,
            lag,
        })
    }
}
