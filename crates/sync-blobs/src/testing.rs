//! The blob conformance suite, written once and run against every backend (feature
//! `testing`).
//!
//! [`blob_conformance!`](crate::blob_conformance) expands to one `#[tokio::test]` per case
//! for a [`Backend`]; each case works in its own key prefix of the backend, through
//! [`CountingStore`] wrappers that count every storage call (to prove what was *not* called)
//! and can hold GETs back ([`Gate`]) to make races deterministic.
//!
//! ```text
//! mod memory {
//!     sync_blobs::blob_conformance!(Some(sync_blobs::testing::Backend::memory()));
//! }
//! ```
//!
//! The crate using the macro needs `tokio` (features `macros`, `rt-multi-thread`).

use std::{
    any::Any,
    collections::BTreeSet,
    fmt,
    ops::Range,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{stream::BoxStream, FutureExt, StreamExt, TryStreamExt};
use object_store::{
    path::Path, prefix::PrefixStore, Attribute, CopyOptions, GetOptions, GetResult, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, RenameOptions, UploadPart,
};
use sha2::{Digest, Sha256};
use sync_core::{
    hlc::{Hlc, NodeId},
    protocol::SharedRecord,
    BlobError, BlobManifest, BlobPack, BlobStore, BlobTransfer, Item, Residency, Transferred,
};
use tokio::sync::{watch, Notify};

use crate::{
    collect_garbage, residency, transfer, BlobMover, ObjectBlobs, S3Config, MAX_KEY_BYTES,
    PART_SIZE,
};

/// Environment variable naming the S3-compatible endpoint of the test server.
pub const S3_ENDPOINT_VAR: &str = "STARKEEP_TEST_S3_ENDPOINT";
/// Environment variable naming the test bucket.
pub const S3_BUCKET_VAR: &str = "STARKEEP_TEST_S3_BUCKET";
/// Environment variable naming the test access key id.
pub const S3_ACCESS_KEY_VAR: &str = "STARKEEP_TEST_S3_ACCESS_KEY";
/// Environment variable naming the test secret key.
pub const S3_SECRET_KEY_VAR: &str = "STARKEEP_TEST_S3_SECRET_KEY";

// -------------------------------------------------------------------------------------------
// Backends

/// One backend under test: an object store, and whatever must live as long as it.
pub struct Backend {
    name: &'static str,
    store: Arc<dyn ObjectStore>,
    content_type: bool,
    root: Option<PathBuf>,
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

impl Backend {
    /// A backend over the store of `blobs`.
    pub fn new(name: &'static str, blobs: &ObjectBlobs) -> Self {
        Self {
            name,
            store: Arc::clone(blobs.object_store()),
            content_type: blobs.writes_content_type(),
            root: None,
            _keep: None,
        }
    }

    /// object_store's in-memory store.
    pub fn memory() -> Self {
        Self::new("memory", &ObjectBlobs::memory())
    }

    /// A local directory (a fresh temporary one, removed when the backend is dropped).
    pub fn filesystem() -> Self {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let blobs = ObjectBlobs::filesystem(dir.path().join("blobs"))
            .expect("cannot open the temporary directory as blob storage");
        let mut backend = Self::new("filesystem", &blobs);
        backend.root = Some(dir.path().join("blobs"));
        backend._keep = Some(Box::new(dir));
        backend
    }

    /// This backend with small blobs (at most `limit` bytes) kept in `pack`, through a
    /// [`PackedStore`](crate::PackedStore) in front of its store (decision 0014), as
    /// [`ObjectBlobs::with_pack`] combines them.
    pub fn with_pack(mut self, name: &'static str, pack: Arc<dyn BlobPack>, limit: u64) -> Self {
        self.store = Arc::new(crate::PackedStore::new(
            pack,
            Arc::clone(&self.store),
            limit,
        ));
        self.name = name;
        // The pack keeps no attributes: the cases do not expect a small blob's MIME type back.
        self.content_type = false;
        self
    }

    /// The S3-compatible server named by [`S3_ENDPOINT_VAR`] and friends (`cargo xtask test`
    /// starts one). `None`, with a loud message, when they are not set; under `CI=true` a
    /// missing server is a failure instead.
    pub fn s3_from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(endpoint), Some(bucket), Some(key), Some(secret)) = (
            var(S3_ENDPOINT_VAR),
            var(S3_BUCKET_VAR),
            var(S3_ACCESS_KEY_VAR),
            var(S3_SECRET_KEY_VAR),
        ) else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{S3_ENDPOINT_VAR} (and bucket/keys) not set under CI=true: the S3 conformance \
                 suite must run in CI; run the tests with `cargo xtask test`"
            );
            eprintln!(
                "\n{bang}\nSKIPPED: S3 blob conformance test: {S3_ENDPOINT_VAR} is not set.\n\
                 Run `cargo xtask test` to start an S3-compatible server for the tests.\n{bang}\n",
                bang = "!".repeat(78)
            );
            return None;
        };
        let config = S3Config::new(bucket, key, secret)
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_max_retries(2);
        let blobs = ObjectBlobs::s3(config).expect("the test S3 configuration is usable");
        Some(Self::new("s3", &blobs))
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The directory of a filesystem backend.
    pub fn root(&self) -> Option<&std::path::Path> {
        self.root.as_deref()
    }

    /// The backend's store, unwrapped.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// A fresh, isolated area of the backend for one case.
    pub fn scope(&self, case: &str) -> Scope {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Scope {
            store: Arc::clone(&self.store),
            content_type: self.content_type,
            prefix: format!(
                "conformance/{case}-{}-{nanos}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({}: {})", self.name, self.store)
    }
}

/// One case's area of a backend, from which it takes its sides (storages).
#[derive(Debug)]
pub struct Scope {
    store: Arc<dyn ObjectStore>,
    content_type: bool,
    prefix: String,
}

impl Scope {
    /// A storage of its own (`local`, `remote`, ...) inside the scope, with its calls counted.
    pub fn side(&self, name: &str) -> Side {
        let inner: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(
            Arc::clone(&self.store),
            format!("{}/{name}", self.prefix),
        ));
        let counting = Arc::new(CountingStore::new(inner));
        let mut blobs = ObjectBlobs::new(Arc::clone(&counting) as Arc<dyn ObjectStore>);
        if !self.content_type {
            blobs = blobs.without_content_type();
        }
        Side { blobs, counting }
    }
}

/// One storage of a case: the blobs, and the counters of the calls made to it.
#[derive(Debug, Clone)]
pub struct Side {
    /// The storage.
    pub blobs: ObjectBlobs,
    /// Its counted (and gateable) store.
    pub counting: Arc<CountingStore>,
}

impl Side {
    /// The calls made so far.
    pub fn calls(&self) -> &Calls {
        &self.counting.calls
    }

    /// Stores bytes directly (seeding; counted like any other put, so reset afterwards).
    pub async fn seed(&self, key: &str, bytes: impl Into<Bytes>) {
        self.counting
            .inner
            .put(&Path::from(key), PutPayload::from(bytes.into()))
            .await
            .expect("seeding a blob");
    }

    /// The bytes at `key`, read directly.
    pub async fn read(&self, key: &str) -> Option<Bytes> {
        match self.counting.inner.get(&Path::from(key)).await {
            Ok(got) => Some(got.bytes().await.expect("reading a blob")),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {key}: {e}"),
        }
    }

    /// Every key stored, read directly, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .counting
            .inner
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("listing a side");
        keys.sort();
        keys
    }
}

// -------------------------------------------------------------------------------------------
// A counting, gateable store

/// Calls made to a [`CountingStore`].
#[derive(Debug, Default)]
pub struct Calls {
    /// Single puts.
    pub puts: AtomicUsize,
    /// Multipart uploads started.
    pub multipart_starts: AtomicUsize,
    /// Parts sent.
    pub parts: AtomicUsize,
    /// Multipart uploads completed.
    pub completes: AtomicUsize,
    /// Multipart uploads aborted.
    pub aborts: AtomicUsize,
    /// GETs (with a body).
    pub gets: AtomicUsize,
    /// HEADs.
    pub heads: AtomicUsize,
    /// Objects deleted.
    pub deletes: AtomicUsize,
    /// Listings.
    pub lists: AtomicUsize,
    /// Copies and renames.
    pub copies: AtomicUsize,
    /// The largest payload of one put or part, in bytes.
    pub max_payload: AtomicUsize,
}

impl Calls {
    fn add(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    /// Every call of any kind.
    pub fn total(&self) -> usize {
        [
            &self.puts,
            &self.multipart_starts,
            &self.parts,
            &self.completes,
            &self.aborts,
            &self.gets,
            &self.heads,
            &self.deletes,
            &self.lists,
            &self.copies,
        ]
        .iter()
        .map(|c| Calls::get(c))
        .sum()
    }

    /// Writes that could make an object visible: single puts and multipart uploads started.
    pub fn writes(&self) -> usize {
        Calls::get(&self.puts) + Calls::get(&self.multipart_starts)
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        for c in [
            &self.puts,
            &self.multipart_starts,
            &self.parts,
            &self.completes,
            &self.aborts,
            &self.gets,
            &self.heads,
            &self.deletes,
            &self.lists,
            &self.copies,
            &self.max_payload,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }

    fn payload(&self, len: usize) {
        self.max_payload.fetch_max(len, Ordering::SeqCst);
    }
}

/// Holds GETs back until opened: a test can see a transfer in flight, start a second one,
/// then let both go.
#[derive(Debug)]
pub struct Gate {
    open: watch::Sender<bool>,
    started: AtomicUsize,
    notify: Notify,
}

impl Gate {
    fn closed() -> Self {
        Self {
            open: watch::Sender::new(false),
            started: AtomicUsize::new(0),
            notify: Notify::new(),
        }
    }

    /// Lets every held and future GET through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until `n` GETs have reached the gate.
    pub async fn reached(&self, n: usize) {
        loop {
            let notified = self.notify.notified();
            futures::pin_mut!(notified);
            notified.as_mut().enable();
            if self.started.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }

    async fn pass(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// An object store that counts every call to the store it wraps and can hold GETs back.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    calls: Arc<Calls>,
    gate: std::sync::Mutex<Option<Arc<Gate>>>,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            gate: std::sync::Mutex::new(None),
        }
    }

    /// The counters.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// From now on, GETs wait at the returned gate until it is opened.
    pub fn close_gate(&self) -> Arc<Gate> {
        let gate = Arc::new(Gate::closed());
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&gate));
        gate
    }

    fn gate(&self) -> Option<Arc<Gate>> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Calls::add(&self.calls.puts);
        self.calls.payload(payload.content_length());
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Calls::add(&self.calls.multipart_starts);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner,
            calls: Arc::clone(&self.calls),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            Calls::add(&self.calls.heads);
        } else {
            Calls::add(&self.calls.gets);
            if let Some(gate) = self.gate() {
                gate.pass().await;
            }
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        Calls::add(&self.calls.gets);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let calls = Arc::clone(&self.calls);
        self.inner.delete_stream(
            locations
                .inspect(move |_| Calls::add(&calls.deletes))
                .boxed(),
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        Calls::add(&self.calls.lists);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        Calls::add(&self.calls.lists);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        Calls::add(&self.calls.lists);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        Calls::add(&self.calls.copies);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        Calls::add(&self.calls.copies);
        self.inner.rename_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    calls: Arc<Calls>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        Calls::add(&self.calls.parts);
        self.calls.payload(data.content_length());
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        Calls::add(&self.calls.completes);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        Calls::add(&self.calls.aborts);
        self.inner.abort().await
    }
}

// -------------------------------------------------------------------------------------------
// Helpers

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `len` reproducible pseudo-random bytes (xorshift), incompressible and cheap to make.
pub fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

/// A manifest for `key` whose content hash is the plain SHA-256 of `bytes`.
pub fn manifest(key: &str, bytes: &[u8]) -> BlobManifest {
    BlobManifest {
        key: key.to_string(),
        content_hash: sha256_hex(bytes),
        size_bytes: bytes.len() as u64,
        mime_type: Some("application/octet-stream".into()),
    }
}

/// A live shared record whose blob is `key` (empty: a metadata-only record).
pub fn record_with_blob(id: &str, key: &str) -> SharedRecord {
    let node = NodeId::new("node-a").expect("valid node id");
    let version = Hlc::new(1_700_000_000_000, 0, node).expect("valid timestamp");
    SharedRecord {
        id: id.to_string(),
        kind: "data".into(),
        record_type: "image/jpeg".into(),
        created_at: version.clone(),
        updated_at: version,
        deleted_at: None,
        version: 1,
        content_hash: format!("opaque-{id}"),
        object_storage_key: key.to_string(),
        mime_type: Some("image/jpeg".into()),
        size_bytes: 3,
        original_filename: None,
        origin_app_id: "photos".into(),
        parent_id: None,
        label: None,
    }
}

fn assert_copied(result: Result<Transferred, BlobError>, bytes: usize, what: &str) {
    match result {
        Ok(Transferred::Copied { bytes: n }) => assert_eq!(n, bytes as u64, "{what}: bytes"),
        other => panic!("{what}: expected a copy of {bytes} bytes, got {other:?}"),
    }
}

fn assert_mismatch(result: Result<Transferred, BlobError>, key: &str, bytes: &[u8]) {
    match result {
        Err(BlobError::HashMismatch { key: k, actual, .. }) => {
            assert_eq!(k, key);
            assert_eq!(actual, sha256_hex(bytes), "the hash of the bytes received");
        }
        other => panic!("expected a hash mismatch for {key}, got {other:?}"),
    }
}

/// Nothing at all is left at the destination: no object, no visible leftover.
async fn assert_nothing_at(side: &Side, key: &str) {
    assert!(
        !side.blobs.contains(key).await.expect("existence check"),
        "{key} must not exist at the destination"
    );
    assert_eq!(
        side.keys().await,
        Vec::<String>::new(),
        "destination not empty"
    );
}

// -------------------------------------------------------------------------------------------
// The cases

/// Push copies a blob to the peer byte for byte; pull brings it to another node.
pub async fn push_and_pull_round_trip(backend: &Backend) {
    let scope = backend.scope("round-trip");
    let (local, remote, other) = (
        scope.side("local"),
        scope.side("remote"),
        scope.side("other"),
    );
    let bytes = Bytes::from_static(b"the quick brown fox jumps over the lazy dog");
    let m = manifest("shared/doc/ab/round-trip", &bytes);
    local.seed(&m.key, bytes.clone()).await;

    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_copied(mover.push(&m).await, bytes.len(), "push");
    assert_eq!(remote.read(&m.key).await, Some(bytes.clone()));
    assert!(remote.blobs.contains(&m.key).await.unwrap());

    let other_node = BlobMover::new(other.blobs.clone(), remote.blobs.clone());
    assert_copied(other_node.pull(&m).await, bytes.len(), "pull");
    assert_eq!(other.read(&m.key).await, Some(bytes));
    assert_eq!(mover.in_flight(), 0);
    assert_eq!(other_node.in_flight(), 0);
}

/// A destination that has the key costs one HEAD and nothing else, on either side.
pub async fn short_circuit_costs_one_head(backend: &Backend) {
    let scope = backend.scope("short-circuit");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let bytes = Bytes::from_static(b"already there");
    let m = manifest("shared/doc/ab/present", &bytes);
    local.seed(&m.key, bytes.clone()).await;
    remote.seed(&m.key, bytes.clone()).await;
    local.calls().reset();
    remote.calls().reset();

    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_eq!(mover.push(&m).await.unwrap(), Transferred::AlreadyPresent);
    assert_eq!(Calls::get(&remote.calls().heads), 1);
    assert_eq!(
        remote.calls().total(),
        1,
        "only the HEAD on the destination"
    );
    assert_eq!(local.calls().total(), 0, "the source is not read");

    assert_eq!(mover.pull(&m).await.unwrap(), Transferred::AlreadyPresent);
    assert_eq!(local.calls().total(), 1, "only the HEAD on the destination");
    assert_eq!(
        transfer(&m, &local.blobs, &remote.blobs).await.unwrap(),
        Transferred::AlreadyPresent
    );
}

/// A source without the blob is `NotFound`; nothing is written.
pub async fn missing_source_is_not_found(backend: &Backend) {
    let scope = backend.scope("not-found");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let m = manifest("shared/doc/ab/missing", b"never stored");
    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    for result in [mover.push(&m).await, mover.pull(&m).await] {
        match result {
            Err(BlobError::NotFound { key }) => assert_eq!(key, m.key),
            other => panic!("expected not found, got {other:?}"),
        }
    }
    assert_eq!(local.calls().writes() + remote.calls().writes(), 0);
    assert_eq!(
        mover.in_flight(),
        0,
        "failed transfers leave no in-flight entry"
    );
    assert_nothing_at(&remote, &m.key).await;
}

/// 64 lower-case hex digits are the SHA-256 of the bytes: checked both ways.
pub async fn plain_sha256_is_verified(backend: &Backend) {
    let scope = backend.scope("plain-sha256");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let bytes = Bytes::from_static(b"verified by plain hex");
    let good = manifest("shared/doc/ab/good", &bytes);
    let bad = BlobManifest {
        key: "shared/doc/ab/bad".into(),
        content_hash: sha256_hex(b"something else"),
        ..good.clone()
    };
    local.seed(&good.key, bytes.clone()).await;
    local.seed(&bad.key, bytes.clone()).await;

    assert_copied(
        transfer(&good, &local.blobs, &remote.blobs).await,
        bytes.len(),
        "good hash",
    );
    assert_mismatch(
        transfer(&bad, &local.blobs, &remote.blobs).await,
        &bad.key,
        &bytes,
    );
    assert!(!remote.blobs.contains(&bad.key).await.unwrap());
    assert_eq!(remote.keys().await, vec![good.key]);
}

/// `sha256:<hex>` is verified too (upper-case digits as well).
pub async fn prefixed_sha256_is_verified(backend: &Backend) {
    let scope = backend.scope("prefixed-sha256");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let bytes = Bytes::from_static(b"verified by prefixed hex");
    let mut good = manifest("shared/doc/ab/good", &bytes);
    good.content_hash = format!("sha256:{}", good.content_hash.to_ascii_uppercase());
    let bad = BlobManifest {
        key: "shared/doc/ab/bad".into(),
        content_hash: format!("sha256:{}", sha256_hex(b"something else")),
        ..good.clone()
    };
    local.seed(&good.key, bytes.clone()).await;
    local.seed(&bad.key, bytes.clone()).await;

    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_copied(mover.push(&good).await, bytes.len(), "good hash");
    assert_mismatch(mover.push(&bad).await, &bad.key, &bytes);
    assert_eq!(remote.keys().await, vec![good.key]);
}

/// Any other content hash (an ETag, an MD5, the key itself) transfers unverified.
pub async fn opaque_hash_transfers_unverified(backend: &Backend) {
    let scope = backend.scope("opaque");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let bytes = Bytes::from_static(b"whatever the hash says");
    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    for (i, hash) in [
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
        "\"etag-1234\"".to_string(),
        // 63 digits: not a SHA-256.
        sha256_hex(b"x")[1..].to_string(),
        "shared/doc/ab/opaque-3".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let m = BlobManifest {
            key: format!("shared/doc/ab/opaque-{i}"),
            content_hash: hash,
            size_bytes: 0,
            mime_type: None,
        };
        local.seed(&m.key, bytes.clone()).await;
        assert_copied(mover.push(&m).await, bytes.len(), &m.content_hash);
        assert_eq!(remote.read(&m.key).await, Some(bytes.clone()));
    }
}

/// A zero-byte blob is a blob like any other.
pub async fn empty_blob_round_trips(backend: &Backend) {
    let scope = backend.scope("empty");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let m = manifest("shared/doc/e3/empty", b"");
    local.seed(&m.key, Bytes::new()).await;
    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_copied(mover.push(&m).await, 0, "empty blob");
    assert_eq!(remote.read(&m.key).await, Some(Bytes::new()));
    assert_eq!(mover.push(&m).await.unwrap(), Transferred::AlreadyPresent);
}

/// Bytes that do not match their hash are refused and leave nothing behind; once the source
/// is fixed, the next attempt (the next round) copies it.
pub async fn corrupted_blob_is_refused_then_retried(backend: &Backend) {
    let scope = backend.scope("corrupted");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let good = Bytes::from_static(b"the real photo bytes");
    let corrupt = Bytes::from_static(b"the real photo bytez");
    let m = manifest("shared/photo/ab/corrupted", &good);
    local.seed(&m.key, corrupt.clone()).await;

    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_mismatch(mover.push(&m).await, &m.key, &corrupt);
    assert_eq!(
        remote.calls().writes(),
        0,
        "a small blob is checked before any write"
    );
    assert_nothing_at(&remote, &m.key).await;
    assert_eq!(mover.in_flight(), 0);

    local.seed(&m.key, good.clone()).await;
    assert_copied(mover.push(&m).await, good.len(), "retry");
    assert_eq!(remote.read(&m.key).await, Some(good));
}

/// A corrupted blob large enough for a multipart upload: the upload is aborted and nothing
/// is left at the key; the retry after fixing the source succeeds.
pub async fn corrupted_multipart_blob_leaves_nothing(backend: &Backend) {
    let scope = backend.scope("corrupted-multipart");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let good = pseudo_random(2 * PART_SIZE + 4096, 7);
    let mut corrupt = good.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let corrupt = Bytes::from(corrupt);
    let m = manifest("shared/video/ab/corrupted-large", &good);
    local.seed(&m.key, corrupt.clone()).await;

    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_mismatch(mover.push(&m).await, &m.key, &corrupt);
    assert_eq!(Calls::get(&remote.calls().multipart_starts), 1);
    assert_eq!(Calls::get(&remote.calls().completes), 0, "never completed");
    assert_eq!(Calls::get(&remote.calls().aborts), 1, "aborted");
    assert_nothing_at(&remote, &m.key).await;

    local.seed(&m.key, good.clone()).await;
    assert_copied(mover.push(&m).await, good.len(), "retry");
    assert!(
        remote.read(&m.key).await == Some(good),
        "retried blob differs"
    );
}

/// Unsafe keys are refused by every operation before any storage call.
pub async fn keys_are_checked_before_any_storage_call(backend: &Backend) {
    let scope = backend.scope("key-hygiene");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    let long = format!("shared/{}", "x".repeat(MAX_KEY_BYTES));
    let bad_keys = [
        "",
        "/shared/abs",
        "shared//empty",
        "shared/trailing/",
        "shared/../escape",
        "shared/./dot",
        "..",
        "shared\\back",
        "shared/ctl\u{1}",
        "shared/nl\n",
        "shared/upload#1",
        long.as_str(),
    ];
    for key in bad_keys {
        let m = BlobManifest {
            key: key.to_string(),
            content_hash: sha256_hex(b""),
            size_bytes: 0,
            mime_type: None,
        };
        let record = Item::Record(record_with_blob("r", key));
        let mut results: Vec<Result<(), BlobError>> = vec![
            local.blobs.contains(key).await.map(drop),
            mover.push(&m).await.map(drop),
            mover.pull(&m).await.map(drop),
            transfer(&m, &local.blobs, &remote.blobs).await.map(drop),
        ];
        // An empty key on a row means "no blob" (resident), not a bad key.
        if !key.is_empty() {
            results.push(residency(Some(&record), true, &local.blobs).await.map(drop));
        }
        for result in results {
            assert!(
                matches!(&result, Err(BlobError::InvalidKey { key: k, .. }) if k == key),
                "{key:?}: expected InvalidKey, got {result:?}"
            );
        }
    }
    for prefix in ["", "/", "shared/../x", "a//b"] {
        let gc = collect_garbage(&remote.blobs, prefix, |_| false, false).await;
        assert!(
            matches!(gc, Err(BlobError::InvalidKey { .. })),
            "GC prefix {prefix:?}: {gc:?}"
        );
    }
    assert_eq!(
        local.calls().total(),
        0,
        "no storage call on the local side"
    );
    assert_eq!(
        remote.calls().total(),
        0,
        "no storage call on the remote side"
    );
    assert_eq!(mover.in_flight(), 0);
}

/// Two rounds racing on one key: the second joins the first, the blob is copied once, and
/// both get the same success.
pub async fn racing_transfers_copy_once(backend: &Backend) {
    let scope = backend.scope("race");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let bytes = pseudo_random(100_000, 3);
    let m = manifest("shared/doc/ab/raced", &bytes);
    local.seed(&m.key, bytes.clone()).await;
    local.calls().reset();
    let gate = local.counting.close_gate();

    let mover = Arc::new(BlobMover::new(local.blobs.clone(), remote.blobs.clone()));
    let first = tokio::spawn({
        let (mover, m) = (Arc::clone(&mover), m.clone());
        async move { mover.push(&m).await }
    });
    // The first transfer is now reading the source, held at the gate.
    gate.reached(1).await;
    let mut second = mover.push(&m).boxed();
    assert!(
        futures::poll!(&mut second).is_pending(),
        "the second caller waits for the first transfer"
    );
    assert_eq!(mover.in_flight(), 1, "one transfer for one key");
    gate.open();

    let (first, second) = (first.await.expect("first caller"), second.await);
    assert_copied(first, bytes.len(), "first caller");
    assert_copied(second, bytes.len(), "second caller");
    assert_eq!(remote.calls().writes(), 1, "copied exactly once");
    assert_eq!(Calls::get(&local.calls().gets), 1, "read exactly once");
    assert_eq!(remote.read(&m.key).await, Some(bytes));
    assert_eq!(mover.in_flight(), 0);

    // After it ended, a new caller starts afresh (and short-circuits).
    assert_eq!(mover.push(&m).await.unwrap(), Transferred::AlreadyPresent);
}

/// A racing caller joining a failing transfer gets the same typed failure (not a false
/// success, not a different error), and the failure leaves no in-flight entry.
pub async fn racing_transfers_share_a_failure(backend: &Backend) {
    let scope = backend.scope("race-failure");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let corrupt = Bytes::from_static(b"not what the hash says");
    let m = manifest("shared/doc/ab/raced-corrupt", b"what the hash says");
    local.seed(&m.key, corrupt.clone()).await;
    let gate = local.counting.close_gate();

    let mover = Arc::new(BlobMover::new(local.blobs.clone(), remote.blobs.clone()));
    let first = tokio::spawn({
        let (mover, m) = (Arc::clone(&mover), m.clone());
        async move { mover.push(&m).await }
    });
    gate.reached(1).await;
    let mut second = mover.push(&m).boxed();
    assert!(futures::poll!(&mut second).is_pending());
    gate.open();

    assert_mismatch(first.await.expect("first caller"), &m.key, &corrupt);
    assert_mismatch(second.await, &m.key, &corrupt);
    assert_eq!(
        Calls::get(&local.calls().gets),
        1,
        "one transfer for both callers"
    );
    assert_eq!(mover.in_flight(), 0);
    assert_nothing_at(&remote, &m.key).await;
}

/// A 20 MiB blob goes through a multipart upload of bounded parts and round-trips byte for
/// byte.
pub async fn large_blob_streams_in_bounded_parts(backend: &Backend) {
    let scope = backend.scope("large");
    let (local, remote, other) = (
        scope.side("local"),
        scope.side("remote"),
        scope.side("other"),
    );
    let bytes = pseudo_random(20 * 1024 * 1024, 11);
    let m = manifest("shared/video/ab/large", &bytes);
    local.seed(&m.key, bytes.clone()).await;
    local.calls().reset();

    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_copied(mover.push(&m).await, bytes.len(), "push");
    let calls = remote.calls();
    assert_eq!(
        Calls::get(&calls.puts),
        0,
        "no single put of the whole blob"
    );
    assert_eq!(Calls::get(&calls.multipart_starts), 1);
    assert_eq!(Calls::get(&calls.parts), 3, "8 + 8 + 4 MiB");
    assert_eq!(Calls::get(&calls.completes), 1);
    assert!(
        Calls::get(&calls.max_payload) <= PART_SIZE,
        "no payload above one part ({} bytes)",
        Calls::get(&calls.max_payload)
    );

    let other_node = BlobMover::new(other.blobs.clone(), remote.blobs.clone());
    assert_copied(other_node.pull(&m).await, bytes.len(), "pull");
    let back = other.read(&m.key).await.expect("pulled blob");
    assert_eq!(back.len(), bytes.len());
    assert!(back == bytes, "pulled blob differs");
}

/// The MIME type travels as `Content-Type` where the backend keeps attributes.
pub async fn mime_type_is_kept(backend: &Backend) {
    let scope = backend.scope("mime");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let bytes = Bytes::from_static(b"%PDF-1.7");
    let mut m = manifest("shared/doc/ab/typed", &bytes);
    m.mime_type = Some("application/pdf".into());
    local.seed(&m.key, bytes.clone()).await;
    assert_copied(
        transfer(&m, &local.blobs, &remote.blobs).await,
        bytes.len(),
        "push",
    );
    if !remote.blobs.writes_content_type() {
        return;
    }
    let got = remote
        .counting
        .inner
        .get(&Path::from(m.key.as_str()))
        .await
        .expect("stored blob");
    assert_eq!(
        got.attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("application/pdf")
    );
}

/// Residency: rows that need no blob cost no storage call; a row with a blob costs one.
pub async fn residency_costs_at_most_one_check(backend: &Backend) {
    let scope = backend.scope("residency");
    let side = scope.side("local");
    let key = "shared/photo/ab/resident";
    let live = Item::Record(record_with_blob("live", key));
    let missing = Item::Record(record_with_blob("staged", "shared/photo/ab/staged"));
    let no_blob = Item::Record(record_with_blob("meta", ""));
    let mut tomb = record_with_blob("tomb", key);
    tomb.deleted_at = Some(tomb.updated_at.clone());
    let tomb = Item::Record(tomb);

    assert_eq!(
        residency(None, true, &side.blobs).await.unwrap(),
        Residency::Absent
    );
    assert_eq!(
        residency(Some(&no_blob), true, &side.blobs).await.unwrap(),
        Residency::Resident
    );
    assert_eq!(
        residency(Some(&tomb), true, &side.blobs).await.unwrap(),
        Residency::Tombstoned
    );
    assert_eq!(
        side.calls().total(),
        0,
        "no check for rows that need no blob"
    );

    side.seed(key, Bytes::from_static(b"jpg")).await;
    side.calls().reset();
    assert_eq!(
        residency(Some(&live), true, &side.blobs).await.unwrap(),
        Residency::Resident
    );
    assert_eq!(
        residency(Some(&missing), true, &side.blobs).await.unwrap(),
        Residency::Staged
    );
    assert_eq!(Calls::get(&side.calls().heads), 2, "one HEAD per row");
    assert_eq!(side.calls().total(), 2);
}

/// GC removes only unreferenced blobs under its prefix; a dry run removes nothing.
pub async fn garbage_collection_spares_referenced_blobs(backend: &Backend) {
    let scope = backend.scope("gc");
    let side = scope.side("server");
    let keep = "shared/photo/ab/keep";
    let staged = "shared/photo/cd/staged-row";
    let orphan_a = "shared/photo/ab/orphan-a";
    let orphan_b = "shared/doc/ef/orphan-b";
    let other_namespace = "apps/notes/syncable/orphan-c";
    for (key, len) in [
        (keep, 10),
        (staged, 20),
        (orphan_a, 300),
        (orphan_b, 4000),
        (other_namespace, 5),
    ] {
        side.seed(key, pseudo_random(len, len as u64)).await;
    }
    // What live and staged rows reference (tombstoned rows reference nothing).
    let referenced: BTreeSet<&str> = [keep, staged].into_iter().collect();
    let expected_removed: BTreeSet<String> =
        [orphan_a, orphan_b].into_iter().map(String::from).collect();

    let dry = collect_garbage(&side.blobs, "shared/", |k| referenced.contains(k), true)
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        dry.removed.iter().cloned().collect::<BTreeSet<_>>(),
        expected_removed
    );
    assert_eq!(dry.kept, 2);
    assert_eq!(dry.bytes_freed, 4300);
    assert_eq!(
        Calls::get(&side.calls().deletes),
        0,
        "a dry run deletes nothing"
    );
    assert_eq!(side.keys().await.len(), 5);

    let real = collect_garbage(&side.blobs, "shared", |k| referenced.contains(k), false)
        .await
        .unwrap();
    assert!(!real.dry_run);
    assert_eq!(
        real.removed.iter().cloned().collect::<BTreeSet<_>>(),
        expected_removed
    );
    assert_eq!((real.kept, real.bytes_freed), (2, 4300));
    assert_eq!(
        side.keys().await,
        vec![
            other_namespace.to_string(),
            keep.to_string(),
            staged.to_string()
        ],
        "referenced blobs and other namespaces stay"
    );

    let again = collect_garbage(&side.blobs, "shared", |k| referenced.contains(k), false)
        .await
        .unwrap();
    assert!(again.removed.is_empty());
    assert_eq!(again.kept, 2);
}

/// Inline blobs (protocol version 2): read back exactly, `None` when absent or larger than
/// asked; written only after verification (a mismatch leaves nothing), once per key.
pub async fn inline_blobs_are_verified_and_bounded(backend: &Backend) {
    let scope = backend.scope("inline");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let bytes = pseudo_random(300, 7);
    let m = manifest("shared/doc/ab/inline", &bytes);
    assert!(remote.blobs.inline_limit() >= 64 * 1024);

    // A corrupted inline blob is refused and nothing is stored.
    let mut corrupted = bytes.to_vec();
    corrupted[0] ^= 1;
    assert_mismatch(
        remote.blobs.write_inline(&m, corrupted.clone()).await,
        &m.key,
        &corrupted,
    );
    assert_nothing_at(&remote, &m.key).await;

    // A hostile key never reaches the store.
    let evil = BlobManifest {
        key: "shared/../escape".into(),
        ..m.clone()
    };
    assert!(matches!(
        remote.blobs.write_inline(&evil, bytes.to_vec()).await,
        Err(BlobError::InvalidKey { .. })
    ));
    assert_eq!(remote.calls().writes(), 0);

    // The good bytes land, once; a second write is a no-op.
    assert_copied(
        remote.blobs.write_inline(&m, bytes.to_vec()).await,
        bytes.len(),
        "inline write",
    );
    assert_eq!(remote.read(&m.key).await, Some(bytes.clone()));
    assert_eq!(
        remote.blobs.write_inline(&m, bytes.to_vec()).await.unwrap(),
        Transferred::AlreadyPresent
    );

    // Reads: exact bytes within the bound, `None` above it or when absent.
    assert_eq!(
        remote.blobs.read_inline(&m.key, 300).await.unwrap(),
        Some(bytes.to_vec())
    );
    assert_eq!(remote.blobs.read_inline(&m.key, 299).await.unwrap(), None);
    assert_eq!(
        remote
            .blobs
            .read_inline("shared/doc/ab/absent", 1000)
            .await
            .unwrap(),
        None
    );

    // The mover lands inline bytes in the node's storage and reads them from there.
    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert_eq!(mover.inline_limit(), local.blobs.inline_limit());
    assert_copied(mover.land_inline(&m, bytes.to_vec()).await, 300, "land");
    assert_eq!(
        mover.read_local(&m, 1000).await.unwrap(),
        Some(bytes.to_vec())
    );
}

/// Expands to one `#[tokio::test]` per conformance case for a backend.
///
/// `$backend` is an expression of type `Option<sync_blobs::testing::Backend>`, evaluated in
/// each test; `None` skips (the backend prints why).
#[macro_export]
macro_rules! blob_conformance {
    ($backend:expr) => {
        $crate::blob_conformance!(@cases $backend;
            push_and_pull_round_trip,
            short_circuit_costs_one_head,
            missing_source_is_not_found,
            plain_sha256_is_verified,
            prefixed_sha256_is_verified,
            opaque_hash_transfers_unverified,
            empty_blob_round_trips,
            corrupted_blob_is_refused_then_retried,
            corrupted_multipart_blob_leaves_nothing,
            keys_are_checked_before_any_storage_call,
            racing_transfers_copy_once,
            racing_transfers_share_a_failure,
            large_blob_streams_in_bounded_parts,
            mime_type_is_kept,
            residency_costs_at_most_one_check,
            garbage_collection_spares_referenced_blobs,
            inline_blobs_are_verified_and_bounded,
        );
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend: ::core::option::Option<$crate::testing::Backend> = $backend;
                let ::core::option::Option::Some(backend) = backend else { return };
                $crate::testing::$case(&backend).await;
            }
        )*
    };
}
