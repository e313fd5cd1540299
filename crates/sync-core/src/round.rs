//! The exchange round, requester side (SPEC §4), read top to bottom in
//! [`Requester::exchange`].

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use futures_util::{stream, StreamExt};
use serde::Serialize;
use sync_hlc::{Clock, Hlc, NodeId, Watermarks};
use sync_protocol::{ExchangeRequest, ExchangeResponse, InlineBlob, Refusal, PROTOCOL_VERSION};

use crate::{
    local::{channel_violation, Scope},
    Applied, BlobManifest, BlobTransfer, ChannelData, ChannelState, CutOrder, Error, ExchangeError,
    ExchangeTransport, Item, ItemKey, ItemProblem, PrefixLedger, Selection, SyncStateStore,
    TimeSource, Transferred,
};

/// A node's clock, shared by its local writes and every channel's rounds.
pub type SharedClock = Arc<Mutex<Clock>>;

pub(crate) fn lock(clock: &SharedClock) -> MutexGuard<'_, Clock> {
    // A panic while holding the lock cannot leave the clock half-updated (its updates are
    // single assignments), so a poisoned lock is still usable.
    clock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options of the requester's rounds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RoundConfig {
    /// Most items shipped, and asked for, per round (default 1000).
    pub page_limit: usize,
    /// Most items read per store scan (default 500).
    pub scan_page_size: usize,
    /// Blob transfers in flight at once (default 8).
    pub blob_concurrency: usize,
    /// Largest blob carried inside the exchange instead of through `/files`, both ways,
    /// when the blob transfer and the peer support it (protocol version 2; default
    /// 64 KiB, 0 turns it off).
    pub inline_blob_limit: u64,
    /// Most bytes of inline blobs one request carries (default 8 MiB); the blobs past it
    /// are pushed through `/files`.
    pub inline_budget: u64,
    /// Pipelined pulls in [`Requester::rounds`] (default on): while a page lands, the next
    /// page is already asked for, when nothing is owed outbound and no failure is pending
    /// (decision 0012).
    pub pipelined_pulls: bool,
    /// Pipelined pushes in [`Requester::rounds`] (default on): while a full page is out, the
    /// next page is cut (and its blobs read or pushed), assuming the peer accepts the page
    /// whole; it is sent only if the peer's coverage then is exactly what it was cut
    /// against, else it is cut again (decision 0015).
    pub pipelined_pushes: bool,
    /// Whether a pipelined page keeps own[origin] behind a gap the previous page left; only
    /// the default (true) is correct (the simulator's teeth tests turn it off).
    #[doc(hidden)]
    pub pipelined_gap_rule: bool,
    /// Whether a page cut ahead (pipelined pushes) is checked before it is sent; only the
    /// default (true) is correct (the simulator's teeth tests turn it off).
    #[doc(hidden)]
    pub cut_ahead_check: bool,
    /// The page-cut order; only the default is correct (the simulator's teeth tests use
    /// the other).
    #[doc(hidden)]
    pub cut_order: CutOrder,
}

impl Default for RoundConfig {
    fn default() -> Self {
        Self {
            page_limit: 1000,
            scan_page_size: 500,
            blob_concurrency: 8,
            inline_blob_limit: 64 * 1024,
            inline_budget: 8 * 1024 * 1024,
            pipelined_pulls: true,
            pipelined_pushes: true,
            pipelined_gap_rule: true,
            cut_ahead_check: true,
            cut_order: CutOrder::PerOriginVersion,
        }
    }
}

impl RoundConfig {
    /// Sets the page limit (at least 1).
    pub fn with_page_limit(mut self, n: usize) -> Self {
        self.page_limit = n.max(1);
        self
    }
    /// Sets the scan page size (at least 1).
    pub fn with_scan_page_size(mut self, n: usize) -> Self {
        self.scan_page_size = n.max(1);
        self
    }
    /// Sets the number of concurrent blob transfers (at least 1).
    pub fn with_blob_concurrency(mut self, n: usize) -> Self {
        self.blob_concurrency = n.max(1);
        self
    }
    /// Sets the largest blob carried inline (0: never inline).
    pub fn with_inline_blob_limit(mut self, bytes: u64) -> Self {
        self.inline_blob_limit = bytes;
        self
    }
    /// Sets the most inline blob bytes per request.
    pub fn with_inline_budget(mut self, bytes: u64) -> Self {
        self.inline_budget = bytes;
        self
    }
    /// Turns pipelined pulls on or off.
    pub fn with_pipelined_pulls(mut self, on: bool) -> Self {
        self.pipelined_pulls = on;
        self
    }
    /// Turns pipelined pushes on or off.
    pub fn with_pipelined_pushes(mut self, on: bool) -> Self {
        self.pipelined_pushes = on;
        self
    }
}

/// Which way an item was travelling when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From this node to the peer.
    Outbound,
    /// From the peer to this node.
    Inbound,
}

/// One item that did not make it this round; its origin node's watermark stays behind it
/// and the next round retries.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemFailure {
    /// Which way it was going.
    pub direction: Direction,
    /// Its identity, when known.
    pub key: Option<ItemKey>,
    /// Its version (the origin node is `at`'s node).
    pub at: Hlc,
    /// What went wrong.
    pub problem: ItemProblem,
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RoundReport {
    /// Items (shared records and app rows) newly applied this round that fully landed.
    pub applied: usize,
    /// Items applied in an earlier round whose blob landed this round (staged -> resident).
    pub became_resident: usize,
    /// Items shipped to the peer.
    pub shipped: usize,
    /// Everything that landed this round (newly applied or newly resident), in order.
    pub landed: Vec<ItemKey>,
    /// The responder has more for us than this page.
    pub inbound_has_more: bool,
    /// We have more for the responder than this page.
    pub outbound_has_more: bool,
    /// Either side still has work, including items held back by failures.
    pub has_more: bool,
    /// The outbound side was skipped because a local read failed (never read as "nothing").
    pub outbound_blocked: Option<String>,
    /// Items that failed, in either direction.
    pub failures: Vec<ItemFailure>,
    /// Origin nodes the responder halted, and why.
    pub halted_by_peer: Vec<NodeId>,
    /// The responder's reasons, when it gave them.
    pub peer_refusals: Vec<Refusal>,
    /// Whether own watermarks moved.
    pub own_moved: bool,
    /// Whether the peer's coverage report differs from the previous one.
    pub peer_moved: bool,
    /// Blob bytes pushed to the peer through `/files` this round (copies only: a blob the
    /// peer already had moved nothing).
    pub blob_bytes_pushed: u64,
    /// Blob bytes pulled from the peer through `/files` this round.
    pub blob_bytes_pulled: u64,
    /// Blob bytes carried inline in this round's request.
    pub inline_bytes_sent: u64,
    /// Blob bytes that came inline in the response and were stored here.
    pub inline_bytes_received: u64,
    /// This round was a pipelined pull: its request went out while the previous page was
    /// still landing, so it shipped nothing and its outbound side was not read (a normal
    /// round follows before the channel counts as idle).
    pub pipelined: bool,
    /// This round's page was cut while the previous round was out (a pipelined push), and
    /// sent once that round had landed and the peer's coverage was exactly what the page
    /// was cut against.
    pub cut_ahead: bool,
    /// Origin nodes whose items in a pipelined round applied but whose watermark stayed:
    /// the previous page stopped at a failure of theirs, so the request had asked from
    /// above the gap.
    pub held_back: Vec<NodeId>,
}

impl RoundReport {
    /// Whether the round moved anything forward.
    pub fn progressed(&self) -> bool {
        self.applied > 0 || self.became_resident > 0 || self.own_moved || self.peer_moved
    }

    /// More work remains only because items keep failing: "stalled: retrying failures"
    /// rather than "more data".
    pub fn stalled(&self) -> bool {
        self.has_more
            && !self.progressed()
            && (!self.failures.is_empty()
                || !self.halted_by_peer.is_empty()
                || self.outbound_blocked.is_some())
    }
}

/// The outcome of [`Requester::sync_until_idle`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SyncSummary {
    /// Rounds run.
    pub rounds: usize,
    /// Items applied over all rounds.
    pub applied: usize,
    /// Items shipped over all rounds.
    pub shipped: usize,
    /// Items that became resident over all rounds.
    pub became_resident: usize,
    /// Neither side has more.
    pub complete: bool,
    /// Stopped because only failing items remain (never together with `complete`).
    pub stalled: bool,
    /// The last round's report.
    pub last: RoundReport,
}

/// The parts a requester is made of.
pub struct RequesterParts {
    /// This node's data on the channel.
    pub data: ChannelData,
    /// Where the channel's watermarks and the clock are persisted.
    pub state: Arc<dyn SyncStateStore>,
    /// Moves blobs to and from the peer.
    pub transfer: Arc<dyn BlobTransfer>,
    /// Talks to the responder.
    pub transport: Arc<dyn ExchangeTransport>,
    /// The node's clock.
    pub clock: SharedClock,
    /// Physical time.
    pub time: Arc<dyn TimeSource>,
    /// Options.
    pub config: RoundConfig,
}

/// Runs exchange rounds for one channel of a local node against one peer.
pub struct Requester {
    parts: RequesterParts,
    /// The largest inline blob the peer announced it takes (0 until it says so): learned
    /// from each response, so the first round with a new peer pushes through `/files`.
    peer_inline_limit: AtomicU64,
    /// Whether `peer_inline_limit` was learned (or assumed) yet.
    peer_inline_known: AtomicBool,
}

enum Inbound {
    Landed { written: bool, copied: bool },
    Failed(ItemProblem),
}

/// Blob bytes a round moved, by way (the sums of `Transferred::Copied`).
#[derive(Default)]
struct BlobBytes {
    pushed: AtomicU64,
    pulled: AtomicU64,
    inline_received: AtomicU64,
}

/// Adds the bytes a transfer copied to `counter`, passing its result on.
fn counted(
    counter: &AtomicU64,
    moved: Result<Transferred, crate::BlobError>,
) -> Result<Transferred, crate::BlobError> {
    if let Ok(Transferred::Copied { bytes }) = &moved {
        counter.fetch_add(*bytes, Ordering::Relaxed);
    }
    moved
}

/// What a round's request may ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shipping {
    /// Everything selected, small blobs through `/files` while the peer's inline limit is
    /// not known (a single [`Requester::exchange`] ships what it can).
    All,
    /// Nothing while the peer's inline limit is not known and the page has small blobs to
    /// push: one pull-only round learns it, and the next ships them inline (the rounds of
    /// [`Requester::rounds`]).
    AfterLearningInlineLimit,
}

/// A round's request on its way out, with what landing its response needs.
pub(crate) struct Outgoing {
    /// The watermarks the request asked from (own plus our own authorship).
    pub asked: Watermarks,
    /// Own and peer as loaded when the round started; `None` for a pipelined round, which
    /// reads them when it lands (after the previous round persisted).
    pub loaded: Option<ChannelState>,
    /// The outbound half of the report.
    pub report: RoundReport,
    pub scope: Scope,
    /// The largest blob this node takes inline.
    pub own_inline: u64,
}

/// Pushes one item's blob unless its origin node already failed this round, or ships it
/// inline when it was read for that (`read`, from the page's batch read; a push instead when
/// this node's copy is absent or larger than announced). `Ok(Some)` is an inline blob;
/// `Err("")` means held back behind an earlier failure.
async fn push_one(
    transfer: Arc<dyn BlobTransfer>,
    halted: Arc<Mutex<BTreeSet<NodeId>>>,
    origin: NodeId,
    manifest: Option<BlobManifest>,
    read: Option<Result<Option<Vec<u8>>, crate::BlobError>>,
    moved: Arc<BlobBytes>,
) -> Result<Option<InlineBlob>, String> {
    let Some(manifest) = manifest else {
        return Ok(None);
    };
    let is_halted = |h: &Mutex<BTreeSet<NodeId>>| {
        h.lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&origin)
    };
    if is_halted(&halted) {
        return Err(String::new());
    }
    let res = match read {
        Some(read) => match read {
            Ok(Some(bytes)) => Ok(Some(InlineBlob {
                key: manifest.key.clone(),
                bytes,
            })),
            Ok(None) => counted(&moved.pushed, transfer.push(&manifest).await).map(|_| None),
            Err(e) => Err(e),
        },
        None => counted(&moved.pushed, transfer.push(&manifest).await).map(|_| None),
    };
    if res.is_err() {
        halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(origin.clone());
    }
    res.map_err(|e| e.to_string())
}

/// Pulls the blob of an item that applied (never for an LWW loser; again for a repeat
/// delivery, which re-pulls a staged row), unless the copy that came inline already landed
/// (`landed`, from the page's batch).
async fn pull_one(
    transfer: Arc<dyn BlobTransfer>,
    applied: Result<Applied, String>,
    manifest: Option<BlobManifest>,
    landed: Option<Result<Transferred, crate::BlobError>>,
    moved: Arc<BlobBytes>,
) -> Inbound {
    let written = match applied {
        Err(msg) => return Inbound::Failed(ItemProblem::Apply(msg)),
        Ok(Applied::Superseded) => {
            return Inbound::Landed {
                written: false,
                copied: false,
            }
        }
        Ok(a) => a == Applied::Written,
    };
    match manifest {
        None => Inbound::Landed {
            written,
            copied: false,
        },
        Some(manifest) => match match landed {
            Some(landed) => counted(&moved.inline_received, landed),
            None => counted(&moved.pulled, transfer.pull(&manifest).await),
        } {
            Ok(t) => Inbound::Landed {
                written,
                copied: matches!(t, Transferred::Copied { .. }),
            },
            Err(e) => Inbound::Failed(ItemProblem::Blob(e.to_string())),
        },
    }
}

impl Requester {
    /// A requester over the given parts.
    pub fn new(parts: RequesterParts) -> Self {
        Self {
            parts,
            peer_inline_limit: AtomicU64::new(0),
            peer_inline_known: AtomicBool::new(false),
        }
    }

    /// Assumes the peer takes inline blobs up to `bytes` until its first response says
    /// otherwise (by default a requester learns it from that response, so its first round
    /// pushes every blob through `/files`). A peer that takes none refuses the items whose
    /// blobs came inline, and the next round ships them again the usual way.
    pub fn assume_peer_inline_limit(self, bytes: u64) -> Self {
        self.peer_inline_limit.store(bytes, Ordering::Relaxed);
        self.peer_inline_known.store(true, Ordering::Relaxed);
        self
    }

    /// Whether this requester knows yet how large a blob the peer takes inline (from a
    /// response, or assumed).
    pub fn peer_inline_known(&self) -> bool {
        self.peer_inline_known.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn config(&self) -> &RoundConfig {
        &self.parts.config
    }

    /// One exchange round. On error nothing was persisted (applying the same round again
    /// is harmless); item-level failures are reported in the result instead.
    pub async fn exchange(&self) -> Result<RoundReport, Error> {
        let (outgoing, request) = self.prepare(Shipping::All).await?;
        let response = self.parts.transport.exchange(request).await?;
        self.land(outgoing, response).await
    }

    pub(crate) fn parts(&self) -> &RequesterParts {
        &self.parts
    }

    /// Steps 1-4 of a round: the request, with its blobs pushed.
    pub(crate) async fn prepare(
        &self,
        shipping: Shipping,
    ) -> Result<(Outgoing, ExchangeRequest), Error> {
        self.prepare_from(shipping, None).await
    }

    /// [`prepare`](Self::prepare), cutting the page against `assumed` (own and peer as they
    /// will be once the round in flight has landed) instead of the persisted state: a
    /// pipelined push. Its [`Outgoing`] loads the state when it lands.
    pub(crate) async fn prepare_from(
        &self,
        shipping: Shipping,
        assumed: Option<ChannelState>,
    ) -> Result<(Outgoing, ExchangeRequest), Error> {
        let p = &self.parts;
        let channel = p.data.channel().clone();
        let scope = p.data.scope().await?;
        let files = scope.files_enabled();
        let conc = p.config.blob_concurrency.max(1);
        let mut report = RoundReport::default();

        // 1. Load own and peer watermarks.
        let cut_ahead = assumed.is_some();
        let ChannelState { own, peer } = match assumed {
            Some(state) => state,
            None => p.state.load(&channel).await.map_err(Error::State)?,
        };
        report.cut_ahead = cut_ahead;

        // 2. Select outbound: per origin node, its lowest versions above peer[origin],
        //    across every stream; another node's versions only as far as our own contiguous
        //    prefix of that node reaches. A failed read blocks the outbound side; it is never
        //    taken for "nothing to ship".
        let node = lock(&p.clock).node_id().clone();
        let selection = match p.data.stream_coverage(&scope.streams).await {
            Ok(cov) => {
                p.data
                    .select(
                        &cov,
                        &peer,
                        Some((&node, &own)),
                        p.config.page_limit,
                        p.config.scan_page_size,
                        p.config.cut_order,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let mut selection = selection.unwrap_or_else(|e| {
            tracing::warn!(%channel, error = %e, "outbound scan failed; shipping nothing this round");
            report.outbound_blocked = Some(e.to_string());
            Selection::default()
        });
        report.outbound_has_more = selection.has_more;

        // 3. Push blobs before their metadata, per origin node in version order. The first
        //    failed push stops that origin node for the round; others continue.
        //    Small blobs ride inside the request when both sides take them inline (protocol
        //    version 2), up to a per-request budget; the rest go through `/files`.
        let own_inline = p.config.inline_blob_limit.min(p.transfer.inline_limit());
        let send_inline = own_inline.min(self.peer_inline_limit.load(Ordering::Relaxed));
        if shipping == Shipping::AfterLearningInlineLimit
            && !self.peer_inline_known()
            && own_inline > 0
            && selection
                .items
                .iter()
                .filter_map(|item| item.blob(files))
                .any(|m| m.size_bytes <= own_inline)
        {
            // Small blobs to push and the peer's inline limit not known yet: this round only
            // pulls (and learns it from the response); the next ships them inline instead of
            // one `/files` request each.
            tracing::debug!(%channel, "learning the peer's inline limit before shipping");
            selection = Selection::default();
            report.outbound_has_more = true;
        }
        let mut budget = p.config.inline_budget;
        let mut outbound = PrefixLedger::new();
        let halted: Arc<Mutex<BTreeSet<NodeId>>> = Arc::default();
        let moved: Arc<BlobBytes> = Arc::default();
        let manifests: Vec<Option<BlobManifest>> = selection
            .items
            .iter()
            .map(|item| item.blob(files))
            .collect();
        let inline: Vec<bool> = manifests
            .iter()
            .map(|manifest| {
                manifest
                    .as_ref()
                    .filter(|m| send_inline > 0 && m.size_bytes <= send_inline)
                    .filter(|m| budget >= m.size_bytes)
                    .map(|m| budget -= m.size_bytes)
                    .is_some()
            })
            .collect();
        // The page's inline blobs are read in one batch (one blocking task on a local
        // directory, rather than one per blob).
        let to_read: Vec<BlobManifest> = manifests
            .iter()
            .zip(&inline)
            .filter(|(_, inline)| **inline)
            .filter_map(|(m, _)| m.clone())
            .collect();
        let mut read = p
            .transfer
            .read_local_batch(&to_read, send_inline)
            .await
            .into_iter();
        let jobs: Vec<_> = selection
            .items
            .iter()
            .zip(manifests)
            .zip(inline)
            .map(|((item, manifest), inline)| {
                let read = if inline { read.next() } else { None };
                push_one(
                    p.transfer.clone(),
                    halted.clone(),
                    item.origin().clone(),
                    manifest,
                    read,
                    moved.clone(),
                )
            })
            .collect();
        let pushes: Vec<Result<Option<InlineBlob>, String>> =
            stream::iter(jobs).buffered(conc).collect().await;
        let mut inline_out: Vec<(Hlc, InlineBlob)> = Vec::new();
        for (item, pushed) in selection.items.iter().zip(pushes) {
            match pushed {
                Ok(inline) => {
                    outbound.landed(item.hlc());
                    if let Some(blob) = inline {
                        inline_out.push((item.hlc().clone(), blob));
                    }
                }
                Err(msg) => {
                    outbound.failed(item.hlc());
                    if !msg.is_empty() {
                        report.failures.push(ItemFailure {
                            direction: Direction::Outbound,
                            key: p.data.key_of(&scope, item).ok(),
                            at: item.hlc().clone(),
                            problem: ItemProblem::Blob(msg),
                        });
                    }
                }
            }
        }
        let mut request = ExchangeRequest {
            limit: Some(p.config.page_limit as u64),
            protocol_version: Some(PROTOCOL_VERSION),
            accept_inline_blobs: (own_inline > 0).then_some(own_inline),
            ..ExchangeRequest::default()
        };
        // Only the blobs of items that ship: one behind a failure of its origin stays home.
        request.inline_blobs = inline_out
            .into_iter()
            .filter(|(at, _)| outbound.in_prefix(at))
            .map(|(_, blob)| blob)
            .collect();
        report.inline_bytes_sent = request
            .inline_blobs
            .iter()
            .map(|b| b.bytes.len() as u64)
            .sum();
        report.blob_bytes_pushed = moved.pushed.load(Ordering::Relaxed);
        for item in selection
            .items
            .iter()
            .filter(|i| outbound.in_prefix(i.hlc()))
        {
            match item {
                Item::Record(r) => request.records.push(r.clone()),
                Item::Row(r) => request.app_syncable_rows.push(r.clone()),
            }
        }
        report.shipped = request.records.len() + request.app_syncable_rows.len();
        // Tell the responder which coverage this page was cut against, so a responder that
        // lost data since (a wipe, a restore) refuses rather than covers the gap.
        if report.shipped > 0 {
            let basis: Watermarks = request
                .records
                .iter()
                .map(|r| r.origin())
                .chain(request.app_syncable_rows.iter().map(|r| r.origin()))
                .filter_map(|n| peer.get(n.as_str()).cloned())
                .collect();
            request.peer_watermarks = Some(basis);
        }

        // 4. Transmit our coverage plus our own authorship, so the peer never echoes back
        //    what we wrote ourselves.
        request.watermarks = own.clone();
        {
            let clock = lock(&p.clock);
            if clock.state().wall_time > 0 {
                request.watermarks.advance(&clock.last());
            }
        }
        let outgoing = Outgoing {
            asked: request.watermarks.clone(),
            loaded: (!cut_ahead).then_some(ChannelState { own, peer }),
            report,
            scope,
            own_inline,
        };
        Ok((outgoing, request))
    }

    /// A page cut ahead ([`prepare_from`](Self::prepare_from)), once the round before it
    /// has landed: `Some` with the request asking from the watermarks now persisted, if the
    /// peer's coverage of every origin node the page ships is exactly what the page was cut
    /// against (so it is still each node's lowest versions the peer has not covered: INV-06);
    /// `None` when it must be cut again.
    pub(crate) async fn cut_ahead_still_holds(
        &self,
        outgoing: Outgoing,
        mut request: ExchangeRequest,
    ) -> Result<Option<(Outgoing, ExchangeRequest)>, Error> {
        let p = &self.parts;
        let state = p.state.load(p.data.channel()).await.map_err(Error::State)?;
        let basis = request.peer_watermarks.clone().unwrap_or_default();
        let mut shipped = request
            .records
            .iter()
            .map(|r| r.origin())
            .chain(request.app_syncable_rows.iter().map(|r| r.origin()));
        if p.config.cut_ahead_check
            && shipped.any(|origin| state.peer.get(origin.as_str()) != basis.get(origin.as_str()))
        {
            return Ok(None);
        }
        request.watermarks = state.own.clone();
        {
            let clock = lock(&p.clock);
            if clock.state().wall_time > 0 {
                request.watermarks.advance(&clock.last());
            }
        }
        // From here on it is a normal round that started now: it lands onto this state (and
        // the page after it can be cut ahead of it in turn).
        let outgoing = Outgoing {
            asked: request.watermarks.clone(),
            loaded: Some(state),
            ..outgoing
        };
        Ok(Some((outgoing, request)))
    }

    /// Steps 5-7 of a round: apply the response, persist, report.
    pub(crate) async fn land(
        &self,
        outgoing: Outgoing,
        response: ExchangeResponse,
    ) -> Result<RoundReport, Error> {
        let p = &self.parts;
        let channel = p.data.channel().clone();
        let Outgoing {
            asked,
            loaded,
            mut report,
            scope,
            own_inline,
        } = outgoing;
        let files = scope.files_enabled();
        let conc = p.config.blob_concurrency.max(1);
        let ChannelState { own, peer } = match loaded {
            Some(state) => state,
            None => p.state.load(&channel).await.map_err(Error::State)?,
        };
        self.peer_inline_limit
            .store(response.accept_inline_blobs.unwrap_or(0), Ordering::Relaxed);
        self.peer_inline_known.store(true, Ordering::Relaxed);
        // Blobs the responder sent inline, by key; an item whose blob is not among them (or
        // is larger than we asked for) is pulled through `/files` instead.
        let inline_in: HashMap<String, Vec<u8>> = response
            .inline_blobs
            .into_iter()
            .filter(|b| (b.bytes.len() as u64) <= own_inline)
            .map(|b| (b.key, b.bytes))
            .collect();
        let mut inbound: Vec<Item> = response
            .records
            .into_iter()
            .map(Item::Record)
            .chain(response.app_syncable_rows.into_iter().map(Item::Row))
            .collect();
        if let Some(violation) = inbound.iter().find_map(|i| channel_violation(&channel, i)) {
            return Err(Error::Exchange(ExchangeError::MalformedResponse(violation)));
        }

        // 5. Apply inbound per origin node in version order: refuse skewed or unknown items,
        //    apply with last-write-wins, then pull the blob of what applied (never for an
        //    LWW loser; again for a staged row).
        inbound.sort_by(|a, b| a.hlc().cmp(b.hlc()));
        let now = p.time.now_ms();
        let mut ledger = PrefixLedger::new();
        let mut accepted: Vec<(&Item, ItemKey)> = Vec::with_capacity(inbound.len());
        for item in &inbound {
            let checked = lock(&p.clock)
                .check_skew(item.hlc(), now)
                .map_err(ItemProblem::Skew)
                .and_then(|()| p.data.key_of(&scope, item).map_err(ItemProblem::Refused));
            match checked {
                Ok(key) => accepted.push((item, key)),
                Err(problem) => {
                    ledger.failed(item.hlc());
                    report.failures.push(ItemFailure {
                        direction: Direction::Inbound,
                        key: p.data.key_of(&scope, item).ok(),
                        at: item.hlc().clone(),
                        problem,
                    });
                }
            }
        }
        let items: Vec<&Item> = accepted.iter().map(|(i, _)| *i).collect();
        let applied = p.data.apply(&items, false).await;
        if let Some(top) = items
            .iter()
            .zip(&applied)
            .filter(|(_, a)| a.is_ok())
            .map(|(i, _)| i.hlc())
            .max()
        {
            // Passed the skew guard above, so this cannot be refused.
            let _ = lock(&p.clock).receive(top, now);
        }
        //    The blobs that came inline land in one batch (one blocking task on a local
        //    directory, rather than one per blob); the others are pulled.
        let manifests: Vec<Option<BlobManifest>> =
            items.iter().map(|item| item.blob(files)).collect();
        let wants_blob: Vec<bool> = manifests
            .iter()
            .zip(&applied)
            .map(|(m, a)| m.is_some() && matches!(a, Ok(Applied::Written | Applied::Kept)))
            .collect();
        let mut to_land = Vec::new();
        let lands_inline: Vec<bool> = manifests
            .iter()
            .zip(&wants_blob)
            .map(|(m, wants)| match m.as_ref().filter(|_| *wants) {
                Some(m) => inline_in
                    .get(&m.key)
                    .map(|bytes| to_land.push((m.clone(), bytes.clone())))
                    .is_some(),
                None => false,
            })
            .collect();
        let mut landed = p.transfer.land_inline_batch(to_land).await.into_iter();
        let moved: Arc<BlobBytes> = Arc::default();
        let jobs: Vec<_> = applied
            .into_iter()
            .zip(manifests)
            .zip(lands_inline)
            .map(|((applied, manifest), inline)| {
                let landed = if inline { landed.next() } else { None };
                pull_one(p.transfer.clone(), applied, manifest, landed, moved.clone())
            })
            .collect();
        let outcomes: Vec<Inbound> = stream::iter(jobs).buffered(conc).collect().await;
        report.blob_bytes_pulled = moved.pulled.load(Ordering::Relaxed);
        report.inline_bytes_received = moved.inline_received.load(Ordering::Relaxed);
        // Blobs are durable before anything that covers them is persisted (step 6): one
        // sync of this node's blob storage when any landed (or was found there) this round.
        if outcomes
            .iter()
            .zip(&wants_blob)
            .any(|(outcome, wants)| *wants && matches!(outcome, Inbound::Landed { .. }))
        {
            p.transfer.sync().await.map_err(Error::BlobSync)?;
        }
        for ((item, key), outcome) in accepted.into_iter().zip(outcomes) {
            match outcome {
                Inbound::Landed { written, copied } => {
                    ledger.landed(item.hlc());
                    if written {
                        report.applied += 1;
                        report.landed.push(key);
                    } else if copied {
                        report.became_resident += 1;
                        report.landed.push(key);
                    }
                }
                Inbound::Failed(problem) => {
                    ledger.failed(item.hlc());
                    report.failures.push(ItemFailure {
                        direction: Direction::Inbound,
                        key: Some(key),
                        at: item.hlc().clone(),
                        problem,
                    });
                }
            }
        }

        // A pipelined request asked from watermarks that assumed the previous page landed
        // whole. Where own is not what was asked (that page stopped at a failure of the
        // origin node), the items applied under last-write-wins, but the watermark must not
        // jump the gap (contiguous prefix, INV-03): it stays, and the next normal round
        // delivers them again from the gap.
        let mut advance = ledger.advance();
        if report.pipelined && p.config.pipelined_gap_rule {
            let gapped: Vec<NodeId> = advance
                .iter()
                .map(|(origin, _)| origin)
                .filter(|o| asked.get(o.as_str()) != own.get(o.as_str()))
                .cloned()
                .collect();
            for origin in gapped {
                advance.remove(origin.as_str());
                report.held_back.push(origin);
            }
        }

        // 6. Persist, only now that the data it covers is durable: own advances over each
        //    origin node's contiguous landed prefix; peer is replaced by the coverage report
        //    (it may go down after a peer wipe, which makes us ship again).
        let state = ChannelState {
            own: own.clone().merged(&advance),
            peer: response.responder_watermarks,
        };
        let clock_state = lock(&p.clock).state();
        p.state
            .commit(&channel, &state, clock_state)
            .await
            .map_err(Error::State)?;

        // 7. Report.
        report.own_moved = state.own != own;
        report.peer_moved = state.peer != peer;
        report.inbound_has_more = response.has_more;
        report.halted_by_peer = response.halted_authors;
        report.peer_refusals = response.refusals;
        report.has_more = report.inbound_has_more
            || report.outbound_has_more
            || report.outbound_blocked.is_some()
            || !report.failures.is_empty()
            || !report.halted_by_peer.is_empty()
            || !report.held_back.is_empty();
        for f in &report.failures {
            tracing::warn!(%channel, at = %f.at, direction = ?f.direction, problem = %f.problem, "item did not land this round");
        }
        Ok(report)
    }

    /// Runs rounds until neither side has more, stopping early when two rounds in a row
    /// only retried failing items (stalled), or after `max_rounds`; pulls are pipelined
    /// when the configuration says so (see [`Requester::rounds`]). Errors end the loop;
    /// retrying with backoff is the caller's choice.
    pub async fn sync_until_idle(&self, max_rounds: usize) -> Result<SyncSummary, Error> {
        self.sync_until_idle_with(max_rounds, |_| {}).await
    }

    /// [`Requester::sync_until_idle`], calling `on_round` after every round (its state is
    /// persisted by then).
    pub async fn sync_until_idle_with(
        &self,
        max_rounds: usize,
        mut on_round: impl FnMut(&RoundReport) + Send,
    ) -> Result<SyncSummary, Error> {
        let mut summary = SyncSummary::default();
        let mut stalled_rounds = 0;
        let mut rounds = self.rounds();
        while summary.rounds < max_rounds {
            let r = rounds.next_round().await?;
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
}
