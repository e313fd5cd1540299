//! The ports the exchange round drives: small traits, one required method set each.

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use sync_hlc::{ClockState, Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, ExchangeRequest, ExchangeResponse, SharedRecord};

use crate::{AppNamespace, BlobError, BlobManifest, Channel, ExchangeError, StoreError};

/// Blobs a default batch method reads or writes at once.
const BATCH_IO: usize = 16;

/// What a last-write-wins apply did with one offered version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Applied {
    /// The offered version was newer and is now stored.
    Written,
    /// The stored version is exactly the offered one (a repeat delivery).
    Kept,
    /// The stored version is newer; the offer lost and changed nothing.
    Superseded,
}

/// Shared records, kept with an index on `(origin node, version)`.
///
/// **Coverage is monotone** (decision 0008): per origin node, it is the highest version this
/// store has held in the stream, stored now or replaced by a newer version of the same item
/// (tombstones included). It goes down only when the store loses data (a wipe, a restore).
/// A store keeps it with a per-origin *floor*: whenever [`apply`](Self::apply) replaces a
/// stored version (a [`Applied::Written`] over an existing item), it raises the floor of the
/// replaced version's origin node to that version, in the same transaction. An offer that
/// loses ([`Applied::Superseded`]) or repeats ([`Applied::Kept`]) was not held and raises
/// nothing.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Per origin node, the highest version held: the maximum of the highest version stored
    /// (from the index) and the origin's floor. Costs O(origin nodes), never O(records).
    async fn coverage(&self) -> Result<Watermarks, StoreError>;

    /// The highest version of `origin` strictly below `below` that the store holds or has
    /// replaced: the highest stored version below `below`, or the origin's floor if that is
    /// higher and still below `below`. Never a version at or above `below`; it may
    /// under-report (the floor keeps only the highest replaced version), which is safe,
    /// where over-reporting is not.
    async fn coverage_below(&self, origin: &NodeId, below: &Hlc)
        -> Result<Option<Hlc>, StoreError>;

    /// Up to `limit` records whose version is from `origin` and above `above` (all when
    /// `None`), in version order.
    async fn scan(
        &self,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<SharedRecord>, StoreError>;

    /// Applies a batch with last-write-wins per record (the newer `updated_at` wins; ties by
    /// node id), atomically: on error nothing of the batch is stored, floors included. Each
    /// replaced version raises its origin's coverage floor (see the trait docs).
    async fn apply(&self, records: &[SharedRecord]) -> Result<Vec<Applied>, StoreError>;

    /// The stored version of a record.
    async fn get(&self, id: &str) -> Result<Option<SharedRecord>, StoreError>;
}

/// App rows of registered namespaces, kept with their primary key, origin node, version and
/// tombstone flag, indexed on `(app, table, origin node, version)`.
///
/// Coverage is monotone per table, as for [`RecordStore`] (decision 0008): each
/// `(app, table)` stream keeps its own per-origin floors, raised when an apply replaces a
/// stored row version, in the same transaction.
#[async_trait]
pub trait AppRowStore: Send + Sync {
    /// Registers (or replaces) an app namespace.
    async fn register(&self, namespace: AppNamespace) -> Result<(), StoreError>;

    /// The registered namespace of `app_id`.
    async fn namespace(&self, app_id: &str) -> Result<Option<AppNamespace>, StoreError>;

    /// Per origin node, the highest version one table has held: stored now or replaced by a
    /// newer version of the same row (tombstones included); the maximum of the index and the
    /// table's floor. It goes down only when the store loses data.
    async fn coverage(&self, app_id: &str, table: &str) -> Result<Watermarks, StoreError>;

    /// The highest version of `origin` in one table strictly below `below` that the table
    /// holds or has replaced (its floor counts if below `below`); never a version at or
    /// above `below`. Under-reporting is safe, over-reporting is not.
    async fn coverage_below(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError>;

    /// Up to `limit` rows of one table whose version is from `origin` and above `above`, in
    /// version order. Tombstones carry the complete primary key in `where`.
    async fn scan(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<AppRow>, StoreError>;

    /// Applies a batch with last-write-wins per (app, table, primary key), atomically (floors
    /// included); each replaced version raises its origin's floor in its table. Rows of
    /// unregistered tables or without their primary key are refused with
    /// [`StoreError::Invalid`].
    async fn apply(&self, rows: &[AppRow]) -> Result<Vec<Applied>, StoreError>;

    /// The stored version of a row, by canonical primary key (see [`crate::row_key`]).
    async fn get(&self, app_id: &str, table: &str, key: &str)
        -> Result<Option<AppRow>, StoreError>;
}

/// Whether blobs are present in one object storage.
///
/// The inline methods carry small blobs inside the exchange (protocol version 2) instead of
/// one `/files` request each. They are optional: a store that keeps the defaults announces
/// no inline support, and blobs go through `/files` as before.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Whether the blob at `key` is present.
    async fn contains(&self, key: &str) -> Result<bool, BlobError>;

    /// Makes every blob this store has written or acknowledged so far durable: after it
    /// returns, a crash or power loss cannot leave any of them truncated or missing. Callers
    /// sync before they persist what covers the blobs (watermarks, an accepted item, an
    /// upload's acknowledgement; decision 0012). The default does nothing, for stores whose
    /// acknowledged writes are durable already (S3) or that keep nothing anyway (memory).
    /// An error means some blob may not survive a crash.
    async fn sync(&self) -> Result<(), BlobError> {
        Ok(())
    }

    /// The largest blob, in bytes, this store reads and writes inline (0: none, the default).
    fn inline_limit(&self) -> u64 {
        0
    }

    /// The bytes at `key` if present and at most `max_bytes` long; `None` when absent or
    /// larger. Never reads more than `max_bytes + 1` bytes of a larger object.
    async fn read_inline(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
        let _ = (key, max_bytes);
        Ok(None)
    }

    /// [`read_inline`](Self::read_inline) of several keys; results follow `keys`. The
    /// default reads them one by one, 16 at a time; a store that can do better
    /// (a local directory: one blocking task for the whole page) overrides it.
    async fn read_inline_batch(
        &self,
        keys: &[String],
        max_bytes: u64,
    ) -> Vec<Result<Option<Vec<u8>>, BlobError>> {
        stream::iter(keys.iter().cloned())
            .map(|key| async move { self.read_inline(&key, max_bytes).await })
            .buffered(BATCH_IO)
            .collect()
            .await
    }

    /// [`write_inline`](Self::write_inline) of several blobs, each verified against its
    /// own manifest (a mismatch stores nothing of that blob and fails only it); results
    /// follow `blobs`. The default writes them one by one, 16 at a time.
    async fn write_inline_batch(
        &self,
        blobs: Vec<(BlobManifest, Vec<u8>)>,
    ) -> Vec<Result<Transferred, BlobError>> {
        stream::iter(blobs)
            .map(|(manifest, bytes)| async move { self.write_inline(&manifest, bytes).await })
            .buffered(BATCH_IO)
            .collect()
            .await
    }

    /// Stores bytes that arrived inline for `manifest`, verified against its content hash
    /// first: on a mismatch nothing is stored ([`BlobError::HashMismatch`]). A key already
    /// present is left as is ([`Transferred::AlreadyPresent`]).
    async fn write_inline(
        &self,
        manifest: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        let _ = bytes;
        Err(inline_unsupported(&manifest.key))
    }

    /// One metadata read (a HEAD): the stamp of the blob at `key`, `None` when absent. The
    /// responder keeps the stamps of blobs it verified, to verify each blob once (decision
    /// 0030). The default answers from [`contains`](Self::contains) with no ETag, so
    /// nothing is remembered and every check reads the blob again.
    async fn stamp(&self, key: &str) -> Result<Option<BlobStamp>, BlobError> {
        Ok(self.contains(key).await?.then(BlobStamp::default))
    }

    /// Reads the whole blob at `key` and hashes it, streaming (never the whole blob in
    /// memory). The default is [`BlobDigest::Unsupported`]: such a store's blobs are accepted
    /// on presence.
    async fn digest(&self, key: &str) -> Result<BlobDigest, BlobError> {
        let _ = key;
        Ok(BlobDigest::Unsupported)
    }

    /// Tells the store that the blob at `key` was just written through its object storage
    /// (a server's `PUT /files`) with bytes whose SHA-256 is `sha256` (hashed while they
    /// streamed), and that the write's result has `stamp`. A store may remember it, so that
    /// [`digest`](Self::digest) answers without reading the blob back while it keeps that
    /// stamp. The default forgets it.
    fn note_written(&self, key: &str, sha256: &str, stamp: &BlobStamp) {
        let _ = (key, sha256, stamp);
    }
}

/// What a metadata read tells of a stored blob: enough to notice it was replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BlobStamp {
    /// Size in bytes (0 when the store does not say).
    pub size: u64,
    /// The store's entity tag; `None` when it has none (then nothing is remembered).
    pub e_tag: Option<String>,
}

impl BlobStamp {
    /// A stamp of `size` bytes with an optional ETag.
    pub fn new(size: u64, e_tag: Option<String>) -> Self {
        Self { size, e_tag }
    }
}

/// A bounded memory of blob digests: per key, the SHA-256 of some bytes and the stamp the
/// blob had when those bytes were hashed (read back, or written). A blob whose stamp is
/// unchanged still holds them. Only stamps with an ETag are kept: a size alone does not tell
/// a replaced blob from the one that was hashed. The oldest entry goes first.
#[derive(Debug, Default)]
pub struct DigestMemo {
    by_key: std::collections::HashMap<String, (String, BlobStamp)>,
    order: std::collections::VecDeque<String>,
    capacity: usize,
}

impl DigestMemo {
    /// A memory of at most `capacity` blobs (0: remembers nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// The SHA-256 (lower-case hex) of the blob at `key`, if it was remembered with exactly
    /// `stamp` (which has an ETag).
    pub fn sha256(&self, key: &str, stamp: &BlobStamp) -> Option<&str> {
        match self.by_key.get(key) {
            Some((hex, s)) if stamp.e_tag.is_some() && s == stamp => Some(hex),
            _ => None,
        }
    }

    /// Whether a digest is remembered for `key` at all (with whatever stamp).
    pub fn knows(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// Whether the blob at `key` with `stamp` is remembered to hash to `sha256`.
    pub fn holds(&self, key: &str, sha256: &str, stamp: &BlobStamp) -> bool {
        self.sha256(key, stamp) == Some(sha256)
    }

    /// Remembers that the blob at `key`, with `stamp`, hashes to `sha256` (nothing when the
    /// stamp has no ETag).
    pub fn remember(&mut self, key: &str, sha256: String, stamp: BlobStamp) {
        if stamp.e_tag.is_none() || self.capacity == 0 {
            return;
        }
        if self
            .by_key
            .insert(key.to_string(), (sha256, stamp))
            .is_none()
        {
            self.order.push_back(key.to_string());
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
    }
}

/// The outcome of [`BlobStore::digest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobDigest {
    /// No blob at the key.
    Absent,
    /// This store does not read blobs back to check them.
    Unsupported,
    /// The blob was read completely.
    Sha256 {
        /// Its SHA-256, lower-case hex.
        hex: String,
        /// The stamp of the bytes that were read (from the same read, not a second HEAD).
        stamp: BlobStamp,
    },
}

/// The error of an inline operation on a store or transfer that does not support them.
pub fn inline_unsupported(key: &str) -> BlobError {
    BlobError::Fatal {
        key: key.to_string(),
        message: "this blob storage does not take inline blobs".into(),
        source: None,
    }
}

/// How a transfer ended when it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transferred {
    /// The destination already had the key; nothing moved.
    AlreadyPresent,
    /// The bytes were copied (and verified where the hash allows).
    Copied {
        /// Bytes moved.
        bytes: u64,
    },
}

/// Moves blobs between this node's object storage and the peer's.
#[async_trait]
///
/// The inline methods (protocol version 2) are optional, as for [`BlobStore`]: with the
/// defaults every blob moves through [`push`](Self::push) and [`pull`](Self::pull).
pub trait BlobTransfer: Send + Sync {
    /// Copies a blob from this node to the peer (before its metadata ships).
    async fn push(&self, manifest: &BlobManifest) -> Result<Transferred, BlobError>;
    /// Copies a blob from the peer to this node (after its metadata applied).
    async fn pull(&self, manifest: &BlobManifest) -> Result<Transferred, BlobError>;

    /// The largest blob, in bytes, this node's storage reads and writes inline (0: none,
    /// the default).
    fn inline_limit(&self) -> u64 {
        0
    }

    /// This node's copy of a blob, to ship inline: `None` when absent or larger than
    /// `max_bytes` (then it is pushed instead).
    async fn read_local(
        &self,
        manifest: &BlobManifest,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        let _ = (manifest, max_bytes);
        Ok(None)
    }

    /// Lands a blob that arrived inline in this node's storage, verified against the
    /// manifest's content hash first (on a mismatch nothing is stored).
    async fn land_inline(
        &self,
        manifest: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        let _ = bytes;
        Err(inline_unsupported(&manifest.key))
    }

    /// [`read_local`](Self::read_local) of several blobs; results follow `manifests`. The
    /// default reads them one by one, 16 at a time.
    async fn read_local_batch(
        &self,
        manifests: &[BlobManifest],
        max_bytes: u64,
    ) -> Vec<Result<Option<Vec<u8>>, BlobError>> {
        stream::iter(manifests.iter().cloned())
            .map(|manifest| async move { self.read_local(&manifest, max_bytes).await })
            .buffered(BATCH_IO)
            .collect()
            .await
    }

    /// [`land_inline`](Self::land_inline) of several blobs, each verified against its own
    /// manifest; results follow `blobs`. The default lands them one by one, 16 at a time.
    async fn land_inline_batch(
        &self,
        blobs: Vec<(BlobManifest, Vec<u8>)>,
    ) -> Vec<Result<Transferred, BlobError>> {
        stream::iter(blobs)
            .map(|(manifest, bytes)| async move { self.land_inline(&manifest, bytes).await })
            .buffered(BATCH_IO)
            .collect()
            .await
    }

    /// Makes every blob this node's storage holds so far durable (see [`BlobStore::sync`]):
    /// a round calls it after blobs landed and before it persists the watermarks that cover
    /// them. The default does nothing.
    async fn sync(&self) -> Result<(), BlobError> {
        Ok(())
    }
}

/// One small blob as a [`BlobPack`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackedBlob {
    /// Object key (the same key the blob has in object storage).
    pub key: String,
    /// SHA-256 of `bytes`, computed by whoever stores the blob (never taken on trust from a
    /// peer): it serves as the blob's ETag and as its verified digest.
    pub sha256: [u8; 32],
    /// When it was stored, milliseconds since the Unix epoch (from the writer's clock).
    pub stored_at_ms: u64,
    /// The blob itself.
    pub bytes: Vec<u8>,
}

impl PackedBlob {
    /// A blob to store.
    pub fn new(
        key: impl Into<String>,
        sha256: [u8; 32],
        stored_at_ms: u64,
        bytes: Vec<u8>,
    ) -> Self {
        Self {
            key: key.into(),
            sha256,
            stored_at_ms,
            bytes,
        }
    }

    /// Its metadata.
    pub fn meta(&self) -> PackedMeta {
        PackedMeta {
            key: self.key.clone(),
            size: self.bytes.len() as u64,
            sha256: self.sha256,
            stored_at_ms: self.stored_at_ms,
        }
    }
}

/// What a [`BlobPack`] tells of a blob without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackedMeta {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// When it was stored, milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
}

impl PackedMeta {
    /// Metadata of a packed blob.
    pub fn new(key: impl Into<String>, size: u64, sha256: [u8; 32], stored_at_ms: u64) -> Self {
        Self {
            key: key.into(),
            size,
            sha256,
            stored_at_ms,
        }
    }
}

/// Small blobs kept by key in a table of a database (decision 0014), so that landing a page
/// of them is one transaction instead of one file each.
///
/// A pack holds bytes for keys and nothing else: it does not decide which blobs are small
/// enough (the blob store in front of it does, `sync_blobs::ObjectBlobs::with_pack`), does
/// not verify content hashes (the bytes are verified before they are offered) and keeps no
/// attributes. Keys are compared byte-wise.
///
/// **Durability.** A pack's writes are durable in commit order with every later commit of
/// the database that holds it. A pack in the same database as the sync state therefore needs
/// no sync of its own: a state commit that survives a crash or power cut implies that every
/// blob written to the pack before it survived too.
#[async_trait]
pub trait BlobPack: Send + Sync {
    /// The blobs at `keys`; results follow `keys` (`None`: not in the pack). One read of
    /// the database for the whole batch, not one per key.
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<PackedBlob>>, StoreError>;

    /// What the pack holds at `key`, without reading the bytes.
    async fn head(&self, key: &str) -> Result<Option<PackedMeta>, StoreError>;

    /// Stores `blobs` in one transaction (all or nothing). A key already in the pack is left
    /// as it is unless `replace`; the result tells, per blob, whether it was stored (`false`:
    /// kept the blob already there, including an earlier blob of the same batch).
    async fn put(&self, blobs: &[PackedBlob], replace: bool) -> Result<Vec<bool>, StoreError>;

    /// Removes the blob at `key`; whether there was one.
    async fn remove(&self, key: &str) -> Result<bool, StoreError>;

    /// Up to `limit` blobs whose key starts with `prefix` (`""`: every blob), in an order of
    /// the pack's choosing, continuing after `cursor` (the [`PackListing::next`] of the
    /// previous page; `None` for the first). A listing in pages visits every blob that was
    /// in the pack throughout exactly once.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PackListing, StoreError>;
}

/// One page of a [`BlobPack`] listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackListing {
    /// The blobs of this page.
    pub blobs: Vec<PackedMeta>,
    /// Where the next page starts (opaque to the caller); `None` when this page is the last.
    pub next: Option<String>,
}

impl PackListing {
    /// A page of `blobs`, continued at `next`.
    pub fn new(blobs: Vec<PackedMeta>, next: Option<String>) -> Self {
        Self { blobs, next }
    }
}

/// The persisted sync state of one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// Own watermarks: per origin node, what this node has fully landed.
    pub own: Watermarks,
    /// The peer's last coverage report (replaced after every round, never merged).
    pub peer: Watermarks,
}

/// Sync state per channel, and the node's clock state.
#[async_trait]
pub trait SyncStateStore: Send + Sync {
    /// The state of one channel (empty if never synced).
    async fn load(&self, channel: &Channel) -> Result<ChannelState, StoreError>;

    /// The persisted clock state, if any.
    async fn load_clock(&self) -> Result<Option<ClockState>, StoreError>;

    /// Stores a channel's state and the clock state atomically.
    async fn commit(
        &self,
        channel: &Channel,
        state: &ChannelState,
        clock: ClockState,
    ) -> Result<(), StoreError>;

    /// Stores the clock state alone (after local writes).
    async fn save_clock(&self, clock: ClockState) -> Result<(), StoreError>;
}

/// One exchange with a responder: implemented by the HTTP client and by the in-process
/// responder, so either can sit behind a round.
#[async_trait]
pub trait ExchangeTransport: Send + Sync {
    /// Sends a request and returns the responder's answer.
    async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError>;
}

/// Physical time, passed in: the core never reads a clock itself.
pub trait TimeSource: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}
