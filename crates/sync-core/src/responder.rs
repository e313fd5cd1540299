//! The responder (SPEC §5): applies what a requester ships and answers with what it lacks.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use sync_protocol::{
    error_code, refusal_code, ExchangeRequest, ExchangeResponse, InlineBlob, Refusal,
    PROTOCOL_VERSION,
};

/// Inline blob reads or writes in flight at once.
const INLINE_IO: usize = 16;

use crate::{
    local::{channel_violation, union},
    round::lock,
    BlobDigest, BlobManifest, BlobStore, ChannelData, CutOrder, DigestMemo, Error, ExchangeError,
    ExchangeTransport, Item, PrefixLedger, SharedClock, TimeSource, Transferred,
};

fn lock_verified(cache: &Mutex<DigestMemo>) -> std::sync::MutexGuard<'_, DigestMemo> {
    // Plain map updates: a poisoned lock leaves nothing half-done.
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options of a responder.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResponderConfig {
    /// Page size when the request names no limit (default 1000, as the reference).
    pub default_limit: usize,
    /// Largest page a request may ask for; larger limits are clamped (default 10,000).
    pub max_limit: usize,
    /// Most items read per store scan (default 500).
    pub scan_page_size: usize,
    /// Largest blob taken or sent inside the exchange (protocol version 2), when the blob
    /// store supports it (default 64 KiB; 0 turns it off).
    pub inline_blob_limit: u64,
    /// Most bytes of inline blobs one response carries (default 8 MiB); past it the
    /// requester fetches blobs through `/files`.
    pub inline_budget: u64,
    /// Most milliseconds one response spends reading blobs to send inline (default 2000).
    /// Reads not started by then are left to `/files`: inlining is optional, and on slow
    /// or saturated object storage a page of small blobs read inline would otherwise keep
    /// one exchange open past the requester's timeout (as 100 nodes against a shared S3
    /// bucket did), where separate `/files` requests each stay short.
    pub inline_time_budget_ms: u64,
    /// Most blobs remembered as verified, by key and stamp (default 10,000): a blob named
    /// by a SHA-256 content hash is read and hashed before its item is accepted, once per
    /// stored version of the blob while it is remembered (decision 0030).
    pub verified_blob_cache: usize,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        Self {
            default_limit: 1000,
            max_limit: 10_000,
            scan_page_size: 500,
            inline_blob_limit: 64 * 1024,
            inline_budget: 8 * 1024 * 1024,
            inline_time_budget_ms: 2000,
            verified_blob_cache: 10_000,
        }
    }
}

impl ResponderConfig {
    /// Sets the largest page a request may ask for (at least 1).
    pub fn with_max_limit(mut self, n: usize) -> Self {
        self.max_limit = n.max(1);
        self.default_limit = self.default_limit.min(self.max_limit);
        self
    }
    /// Sets the scan page size (at least 1).
    pub fn with_scan_page_size(mut self, n: usize) -> Self {
        self.scan_page_size = n.max(1);
        self
    }
    /// Sets the largest blob carried inline (0: never inline).
    pub fn with_inline_blob_limit(mut self, bytes: u64) -> Self {
        self.inline_blob_limit = bytes;
        self
    }
    /// Sets the most inline blob bytes per response.
    pub fn with_inline_budget(mut self, bytes: u64) -> Self {
        self.inline_budget = bytes;
        self
    }
    /// Sets the most milliseconds per response spent reading blobs to send inline.
    pub fn with_inline_time_budget_ms(mut self, ms: u64) -> Self {
        self.inline_time_budget_ms = ms;
        self
    }
    /// Sets how many verified blobs are remembered (0: every check reads the blob).
    pub fn with_verified_blob_cache(mut self, entries: usize) -> Self {
        self.verified_blob_cache = entries;
        self
    }
}

/// The parts a responder is made of.
#[derive(Clone)]
pub struct ResponderParts {
    /// The responder's data on the channel.
    pub data: ChannelData,
    /// The responder's object storage (to check pushed blobs arrived).
    pub blobs: Arc<dyn BlobStore>,
    /// The responder's clock.
    pub clock: SharedClock,
    /// Physical time.
    pub time: Arc<dyn TimeSource>,
    /// Options.
    pub config: ResponderConfig,
}

/// Answers exchange requests for one channel. Cheap to clone (clones share the memory of
/// verified blobs).
#[derive(Clone)]
pub struct Responder {
    parts: ResponderParts,
    verified: Arc<Mutex<DigestMemo>>,
}

impl Responder {
    /// A responder over the given parts.
    pub fn new(parts: ResponderParts) -> Self {
        let memo = DigestMemo::new(parts.config.verified_blob_cache);
        Self {
            parts,
            verified: Arc::new(Mutex::new(memo)),
        }
    }

    /// Whether the stored blob of an item may be accepted: present, and when the content
    /// hash names a SHA-256, holding those bytes (decision 0030). A blob verified before
    /// and unchanged since (same ETag and size) is not read again. `Err` is the refusal,
    /// with its code.
    async fn check_stored_blob(
        &self,
        manifest: &BlobManifest,
    ) -> Result<(), (&'static str, String)> {
        let blobs = &self.parts.blobs;
        let key = &manifest.key;
        let missing = || {
            let reason = format!(
                "blob {key} is not in the responder's storage; upload it before its metadata"
            );
            (refusal_code::BLOB_MISSING, reason)
        };
        let cannot = |e: crate::BlobError| {
            let reason = format!("cannot check blob {key}: {e}");
            (refusal_code::BLOB_CHECK_FAILED, reason)
        };
        let Some(expected) = manifest.sha256() else {
            // An opaque content hash: presence is all that can be checked.
            return match blobs.contains(key).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(missing()),
                Err(e) => Err(cannot(e)),
            };
        };
        let stamp = blobs
            .stamp(key)
            .await
            .map_err(cannot)?
            .ok_or_else(missing)?;
        if lock_verified(&self.verified).holds(key, &expected, &stamp) {
            return Ok(());
        }
        match blobs.digest(key).await.map_err(cannot)? {
            BlobDigest::Absent => Err(missing()),
            BlobDigest::Unsupported => Ok(()),
            BlobDigest::Sha256 { hex, stamp } if hex == expected => {
                lock_verified(&self.verified).remember(key, hex, stamp);
                Ok(())
            }
            BlobDigest::Sha256 { hex, .. } => Err((
                refusal_code::BLOB_MISMATCH,
                format!(
                    "blob {key} does not match its content hash (expected {expected}, the \
                     stored bytes hash to {hex}); upload the right bytes and ship the item again"
                ),
            )),
        }
    }

    /// The options in force.
    pub fn config(&self) -> &ResponderConfig {
        &self.parts.config
    }

    /// Handles one request.
    pub async fn respond(
        &self,
        request: ExchangeRequest,
    ) -> Result<ExchangeResponse, ExchangeError> {
        let p = &self.parts;
        let channel = p.data.channel().clone();

        // 1. Validate: the limit, and the channel split (a Drive channel never carries app
        //    rows, an app channel never shared records or another app's rows).
        let limit = match request.limit {
            None => p.config.default_limit,
            Some(0) => return Err(ExchangeError::BadRequest("limit must be at least 1".into())),
            Some(n) => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(p.config.max_limit),
        };
        let scope = p.data.scope().await.map_err(|e| match e {
            Error::Config { reason, .. } => ExchangeError::Refused {
                code: error_code::CHANNEL_NOT_CONFIGURED,
                message: reason,
            },
            other => ExchangeError::Fatal {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        })?;
        let files = scope.files_enabled();
        let inline_limit = p.config.inline_blob_limit.min(p.blobs.inline_limit());
        // Blobs that came inside the request, by key. Only those an accepted item names are
        // ever stored, after verification against that item's content hash.
        let mut inline_in: HashMap<String, Vec<u8>> = request
            .inline_blobs
            .into_iter()
            .map(|b| (b.key, b.bytes))
            .collect();
        let mut inbound: Vec<Item> = request
            .records
            .into_iter()
            .map(Item::Record)
            .chain(request.app_syncable_rows.into_iter().map(Item::Row))
            .collect();
        if let Some(violation) = inbound.iter().find_map(|i| channel_violation(&channel, i)) {
            return Err(ExchangeError::Refused {
                code: error_code::CHANNEL_VIOLATION,
                message: violation,
            });
        }

        // 2. Apply per origin node in version order. A skewed item, an unknown table, a
        //    missing key, a blob not yet in our storage or a failed apply halts that origin
        //    node for the rest of the request.
        inbound.sort_by(|a, b| a.hlc().cmp(b.hlc()));
        let now = p.time.now_ms();
        let mut ledger = PrefixLedger::new();
        let mut refusals = Vec::new();

        // Coverage honesty across data loss: the requester cut its page above the coverage
        // it last heard from us. If we now cover less for an origin node (we lost data since),
        // its items would leave a gap that our coverage (a maximum) would then jump over, so
        // that node is refused this time; the report tells the requester where to re-ship from.
        if let Some(basis) = request
            .peer_watermarks
            .as_ref()
            .filter(|_| !inbound.is_empty())
        {
            let before = union(&p.data.stream_coverage(&scope.streams).await?);
            for item in &inbound {
                let Some(assumed) = basis.get(item.origin().as_str()) else {
                    continue;
                };
                if ledger.first_failure(item.origin()).is_none() && !before.covers(assumed) {
                    ledger.failed(item.hlc());
                    refusals.push(Refusal::new(
                        item.hlc().clone(),
                        refusal_code::COVERAGE_GAP,
                        format!(
                            "coverage gap: this responder holds node {} only up to {:?}, but the \
                             page was cut above {assumed}; ship again from the reported coverage",
                            item.origin(),
                            before.get(item.origin().as_str()),
                        ),
                    ));
                }
            }
        }
        // A new version below our coverage of its origin is accepted like any other (LWW):
        // coverage does not prove we held every version below it, because a device relays
        // another node's versions skipping those it holds superseded (decision 0030).
        // Inline blobs first, concurrently: verified against the content hash of the item
        // naming them and stored, for items that pass the per-item checks (a refused item's
        // blob is never stored). The apply below accepts an item only once its blob is here.
        let candidates: Vec<(BlobManifest, Vec<u8>)> = inbound
            .iter()
            .filter(|i| ledger.first_failure(i.origin()).is_none())
            .filter(|i| {
                lock(&p.clock).check_skew(i.hlc(), now).is_ok() && p.data.key_of(&scope, i).is_ok()
            })
            .filter_map(|i| i.blob(files))
            .filter_map(|m| inline_in.remove(&m.key).map(|bytes| (m, bytes)))
            .collect();
        let prefix = channel.key_prefix();
        let mut inline_landed: HashMap<String, Result<Transferred, String>> = HashMap::new();
        let mut to_write = Vec::with_capacity(candidates.len());
        for (manifest, bytes) in candidates {
            if !(manifest.key.starts_with(&prefix) && manifest.key.len() > prefix.len()) {
                // The channel's namespace bounds what its requests may write.
                let reason = format!(
                    "inline blob {} is outside this channel's namespace {prefix}",
                    manifest.key
                );
                inline_landed.insert(manifest.key, Err(reason));
            } else if bytes.len() as u64 > inline_limit {
                let reason = format!(
                    "inline blob {} is {} bytes, above this responder's limit of \
                     {inline_limit}; upload it to /files instead",
                    manifest.key,
                    bytes.len()
                );
                inline_landed.insert(manifest.key, Err(reason));
            } else {
                to_write.push((manifest, bytes));
            }
        }
        // One batch (one blocking task on a local directory, rather than one per blob).
        let keys: Vec<String> = to_write.iter().map(|(m, _)| m.key.clone()).collect();
        let written = p.blobs.write_inline_batch(to_write).await;
        for (key, landed) in keys.into_iter().zip(written) {
            let landed = landed.map_err(|e| format!("inline blob refused: {e}"));
            inline_landed.insert(key, landed);
        }
        // Durable before the apply below commits the items that name them (decision 0013).
        if inline_landed.values().any(Result::is_ok) {
            p.blobs.sync().await.map_err(blobs_not_durable)?;
        }
        let mut accepted: Vec<&Item> = Vec::with_capacity(inbound.len());
        for item in &inbound {
            if ledger.first_failure(item.origin()).is_some() {
                continue;
            }
            let skew = lock(&p.clock).check_skew(item.hlc(), now);
            let refused = if let Err(skew) = skew {
                Some((refusal_code::SKEW, skew.to_string()))
            } else if let Err(reason) = p.data.key_of(&scope, item) {
                let code = match (item, &scope.namespace) {
                    (Item::Row(r), Some(ns)) if ns.table(&r.table).is_some() => {
                        refusal_code::MISSING_KEY
                    }
                    _ => refusal_code::UNKNOWN_TABLE,
                };
                Some((code, reason))
            } else if let Some(manifest) = item.blob(files) {
                match inline_landed.get(&manifest.key) {
                    // Verified on arrival, before it was stored: not read again.
                    Some(Ok(Transferred::Copied { .. })) => None,
                    Some(Err(reason)) => Some((refusal_code::INLINE_BLOB, reason.clone())),
                    // Absent from the request, or already stored (those bytes were not
                    // checked): the stored blob is.
                    Some(Ok(Transferred::AlreadyPresent)) | None => {
                        self.check_stored_blob(&manifest).await.err()
                    }
                }
            } else {
                None
            };
            match refused {
                Some((code, reason)) => {
                    ledger.failed(item.hlc());
                    refusals.push(Refusal::new(item.hlc().clone(), code, reason));
                }
                None => accepted.push(item),
            }
        }
        let applied = p.data.apply(&accepted, true).await;
        for (item, result) in accepted.iter().zip(applied) {
            match result {
                Ok(_) => ledger.landed(item.hlc()),
                Err(reason) => {
                    if ledger.in_prefix(item.hlc()) {
                        refusals.push(Refusal::new(
                            item.hlc().clone(),
                            refusal_code::STORE_FAILED,
                            format!("could not be stored: {reason}"),
                        ));
                    }
                    ledger.failed(item.hlc());
                }
            }
        }
        if let Some(top) = accepted
            .iter()
            .filter(|i| ledger.in_prefix(i.hlc()))
            .map(|i| i.hlc())
            .max()
        {
            let _ = lock(&p.clock).receive(top, now);
        }

        // 3. Coverage after the apply. It never overstates: for a halted origin node it is
        //    capped below the failed item, whatever else of that node is stored. A failed
        //    read fails the request; it never shrinks to "nothing there".
        let per_stream = p.data.stream_coverage(&scope.streams).await?;
        let mut coverage = union(&per_stream);
        for (origin, failure) in ledger.halted() {
            let below = p
                .data
                .coverage_below(&scope.streams, origin, failure)
                .await?;
            coverage.remove(origin.as_str());
            if let Some(h) = below {
                coverage.advance(&h);
            }
        }

        // 4. Select what the requester has not covered, with the same per-origin cut, and
        //    probe one past it so has_more is exact.
        let selection = p
            .data
            .select(
                &per_stream,
                &request.watermarks,
                None,
                limit,
                p.config.scan_page_size,
                CutOrder::PerOriginVersion,
            )
            .await?;
        let mut response = ExchangeResponse {
            records: Vec::new(),
            app_syncable_rows: Vec::new(),
            responder_watermarks: coverage,
            has_more: selection.has_more,
            halted_authors: ledger.halted().map(|(n, _)| n.clone()).collect(),
            refusals,
            protocol_version: Some(PROTOCOL_VERSION),
            accept_inline_blobs: (inline_limit > 0).then_some(inline_limit),
            inline_blobs: Vec::new(),
        };

        // 5. Small blobs of the page go inline when the requester asked for them, up to
        //    the budget; whatever is not here it fetches from `/files`.
        let send_inline = request.accept_inline_blobs.unwrap_or(0).min(inline_limit);
        if send_inline > 0 {
            let mut budget = p.config.inline_budget;
            let mut seen = HashSet::new();
            let wanted: Vec<String> = selection
                .items
                .iter()
                .filter_map(|item| item.blob(files))
                .filter(|m| m.size_bytes <= send_inline && seen.insert(m.key.clone()))
                .filter(|m| {
                    let fits = budget >= m.size_bytes;
                    if fits {
                        budget -= m.size_bytes;
                    }
                    fits
                })
                .map(|m| m.key)
                .collect();
            // Read in batches (one blocking task each on a local directory); no batch
            // starts after the time budget, the one in flight finishes.
            let deadline = p
                .time
                .now_ms()
                .saturating_add(p.config.inline_time_budget_ms);
            let mut read = Vec::with_capacity(wanted.len());
            for batch in wanted.chunks(INLINE_IO * 4) {
                if p.time.now_ms() >= deadline {
                    break;
                }
                let bytes = p.blobs.read_inline_batch(batch, send_inline).await;
                read.extend(batch.iter().cloned().zip(bytes));
            }
            for (key, bytes) in read {
                match bytes {
                    Ok(Some(bytes)) => response.inline_blobs.push(InlineBlob { key, bytes }),
                    // Absent (a staged item) or larger than announced: `/files` will say.
                    Ok(None) => {}
                    // Not worth failing the page: the requester pulls it instead.
                    Err(e) => tracing::debug!(%key, error = %e, "inline read failed"),
                }
            }
        }
        for item in selection.items {
            match item {
                Item::Record(r) => response.records.push(r),
                Item::Row(r) => response.app_syncable_rows.push(r),
            }
        }
        Ok(response)
    }
}

/// The request fails when blobs it stored cannot be made durable: nothing of it is applied,
/// and the requester ships the page again.
fn blobs_not_durable(e: crate::BlobError) -> ExchangeError {
    let message = format!("inline blobs could not be made durable: {e}");
    match e {
        crate::BlobError::Transient { .. } => ExchangeError::Transient {
            message,
            source: Some(Box::new(e)),
        },
        _ => ExchangeError::Fatal {
            message,
            source: Some(Box::new(e)),
        },
    }
}

#[async_trait]
impl ExchangeTransport for Responder {
    async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        self.respond(request).await
    }
}
