//! Small blobs packed in a database (decision 0014): [`PackedStore`], an object store that
//! keeps objects of at most a size limit in a [`BlobPack`] and larger ones in another object
//! store, and [`MemoryPack`], a pack in memory.
//!
//! Creating a file per blob costs more than everything else a sync does with a blob of a
//! few hundred bytes (a staged file, a rename, an inode, a directory entry, a sync of the
//! filesystem); a pack lands a page of them in one database transaction. Everything above
//! the object store (transfers, the `/files` routes, garbage collection, residency) sees one
//! store with one key space: reads look in the pack first, then in the files.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    ops::Range,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use object_store::{
    path::Path, CopyMode, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, UploadPart,
};
use sha2::{Digest, Sha256};
use sync_core::{BlobPack, PackListing, PackedBlob, PackedMeta, StoreError};

/// The name this store gives in its errors.
const STORE: &str = "PackedStore";

/// Packed blobs a listing reads from the pack at once.
const LIST_PAGE: usize = 1000;

/// The largest blob a pack keeps unless told otherwise: the inline limit of the exchange
/// (64 KiB), so every blob that rides inside an exchange lands in the pack.
pub const DEFAULT_PACK_LIMIT: u64 = 64 * 1024;

/// An object store that keeps objects of at most `limit` bytes in a [`BlobPack`] and larger
/// ones in `files` (decision 0014).
///
/// * **Writes** of at most `limit` bytes go to the pack (with the SHA-256 of the bytes as
///   their ETag); larger ones and every multipart upload go to `files`, and then any packed
///   blob at the same key is removed, so it cannot shadow the new object.
/// * **Reads** (`get`, `head`) look in the pack first, then in `files`: a packed blob
///   shadows a file left at the same key (by a version that did not pack, say).
/// * **Listings** give the packed blobs, then the files the pack does not shadow.
/// * The pack keeps no attributes: a small blob's `Content-Type` is dropped (a large one
///   keeps it where `files` does).
///
/// Durability is the pack's (see [`BlobPack`]): a pack in the database that holds the sync
/// state needs no sync of its own.
pub struct PackedStore {
    pack: Arc<dyn BlobPack>,
    files: Arc<dyn ObjectStore>,
    limit: u64,
}

impl PackedStore {
    /// Objects of at most `limit` bytes in `pack`, the rest in `files`.
    pub fn new(pack: Arc<dyn BlobPack>, files: Arc<dyn ObjectStore>, limit: u64) -> Self {
        Self { pack, files, limit }
    }

    /// The store larger objects go to.
    pub fn files(&self) -> &Arc<dyn ObjectStore> {
        &self.files
    }

    /// The pack.
    pub fn pack(&self) -> &Arc<dyn BlobPack> {
        &self.pack
    }

    /// The largest object kept in the pack.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    async fn packed(&self, location: &Path) -> object_store::Result<Option<PackedBlob>> {
        let mut found = self
            .pack
            .get(&[location.to_string()])
            .await
            .map_err(pack_error)?;
        Ok(found.pop().flatten())
    }

    /// Stores `bytes` in the pack; `Create` refuses a key present in either place.
    async fn put_packed(
        &self,
        location: &Path,
        bytes: Vec<u8>,
        mode: &PutMode,
    ) -> object_store::Result<PutResult> {
        let blob = packed_blob(location.to_string(), bytes);
        let e_tag = e_tag(&blob.sha256);
        let stored = match mode {
            PutMode::Create => {
                match self.files.head(location).await {
                    Ok(_) => return Err(already_exists(location)),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                self.pack.put(&[blob], false).await
            }
            _ => self.pack.put(&[blob], true).await,
        }
        .map_err(pack_error)?;
        if stored.first() != Some(&true) {
            return Err(already_exists(location));
        }
        Ok(PutResult {
            e_tag: Some(e_tag),
            version: None,
            extensions: Default::default(),
        })
    }

    /// After an object was written to `files`: a packed blob at its key would shadow it.
    async fn unshadow(&self, location: &Path) -> object_store::Result<()> {
        self.pack
            .remove(location.as_ref())
            .await
            .map(|_| ())
            .map_err(pack_error)
    }
}

impl fmt::Debug for PackedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedStore")
            .field("files", &format_args!("{}", self.files))
            .field("limit", &self.limit)
            .finish()
    }
}

impl fmt::Display for PackedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} with a pack of blobs up to {} bytes",
            self.files, self.limit
        )
    }
}

/// A blob for the pack, hashed and stamped now.
pub(crate) fn packed_blob(key: String, bytes: Vec<u8>) -> PackedBlob {
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    PackedBlob::new(key, sha256, now_ms(), bytes)
}

/// Milliseconds since the Unix epoch, for the time a blob was stored.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A packed blob's ETag: its SHA-256, quoted as HTTP writes entity tags.
fn e_tag(sha256: &[u8; 32]) -> String {
    format!("\"{}\"", hex::encode(sha256))
}

fn meta(location: Path, m: &PackedMeta) -> ObjectMeta {
    ObjectMeta {
        location,
        last_modified: modified(m.stored_at_ms),
        size: m.size,
        e_tag: Some(e_tag(&m.sha256)),
        version: None,
    }
}

fn modified(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_default()
}

/// A pack failure as an object store error; the [`StoreError`] stays in the source chain,
/// so a transient one is classified as transient.
fn pack_error(e: StoreError) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

fn already_exists(location: &Path) -> object_store::Error {
    object_store::Error::AlreadyExists {
        path: location.to_string(),
        source: "an object is already stored at this key".into(),
    }
}

fn not_implemented(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.to_string(),
        implementer: STORE.to_string(),
    }
}

/// The payload as one contiguous buffer.
fn contiguous(payload: PutPayload) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.content_length());
    for chunk in payload.iter() {
        bytes.extend_from_slice(chunk);
    }
    bytes
}

/// The object path of a stored key: keys are stored as their paths' strings (a key that
/// passed [`validate_key`](crate::validate_key) parses as itself).
fn path_of(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| Path::from(key))
}

/// The pack's prefix for an object store prefix: `a/b` lists `a/b/...`, never `a/bc`.
fn pack_prefix(prefix: Option<&Path>) -> String {
    match prefix {
        Some(p) if !p.as_ref().is_empty() => {
            format!("{}{}", p.as_ref(), object_store::path::DELIMITER)
        }
        _ => String::new(),
    }
}

#[async_trait]
impl ObjectStore for PackedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        // The pack keeps no attributes: a small blob's `Content-Type` is not kept.
        if payload.content_length() as u64 <= self.limit {
            return match &opts.mode {
                PutMode::Update(_) => Err(not_implemented("a conditional update of a packed blob")),
                mode => self.put_packed(location, contiguous(payload), mode).await,
            };
        }
        let done = self.files.put_opts(location, payload, opts).await?;
        self.unshadow(location).await?;
        Ok(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.files.put_multipart_opts(location, opts).await?;
        Ok(Box::new(Unshadowing {
            inner,
            pack: Arc::clone(&self.pack),
            location: location.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            let found = self
                .pack
                .head(location.as_ref())
                .await
                .map_err(pack_error)?;
            let Some(found) = found else {
                return self.files.get_opts(location, options).await;
            };
            let meta = meta(location.clone(), &found);
            options.check_preconditions(&meta)?;
            return Ok(GetResult {
                payload: GetResultPayload::Stream(futures::stream::empty().boxed()),
                range: 0..meta.size,
                meta,
                attributes: Default::default(),
                extensions: Default::default(),
            });
        }
        let Some(blob) = self.packed(location).await? else {
            return self.files.get_opts(location, options).await;
        };
        if options.version.is_some() {
            return Err(not_implemented("a versioned read of a packed blob"));
        }
        let meta = meta(location.clone(), &blob.meta());
        options.check_preconditions(&meta)?;
        let size = meta.size;
        let range: Range<u64> = match &options.range {
            Some(range) => range
                .as_range(size)
                .map_err(|e| object_store::Error::Generic {
                    store: STORE,
                    source: Box::new(e),
                })?,
            None => 0..size,
        };
        // Within a buffer of at most `limit` bytes: the range was checked against its size.
        let bytes = Bytes::from(blob.bytes).slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let pack = Arc::clone(&self.pack);
        let files = Arc::clone(&self.files);
        locations
            .and_then(move |location| {
                let pack = Arc::clone(&pack);
                let files = Arc::clone(&files);
                async move {
                    let was_packed = pack.remove(location.as_ref()).await.map_err(pack_error)?;
                    match files.delete(&location).await {
                        Ok(()) => Ok(location),
                        // Deleting a packed blob that has no file is done.
                        Err(object_store::Error::NotFound { .. }) if was_packed => Ok(location),
                        Err(e) => Err(e),
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let pack = Arc::clone(&self.pack);
        let files = Arc::clone(&self.files);
        let prefix = prefix.cloned();
        let pack_prefix = pack_prefix(prefix.as_ref());
        // The pack page by page, remembering its keys; then the files the pack does not
        // shadow.
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let packed = {
            let seen = Arc::clone(&seen);
            futures::stream::try_unfold(
                (Some(None::<String>), pack, seen),
                move |(cursor, pack, seen)| {
                    let pack_prefix = pack_prefix.clone();
                    async move {
                        let Some(cursor) = cursor else {
                            return Ok::<_, object_store::Error>(None);
                        };
                        let page = pack
                            .list(&pack_prefix, cursor.as_deref(), LIST_PAGE)
                            .await
                            .map_err(pack_error)?;
                        let mut metas = Vec::with_capacity(page.blobs.len());
                        {
                            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                            for m in &page.blobs {
                                seen.insert(m.key.clone());
                                metas.push(Ok(meta(path_of(&m.key), m)));
                            }
                        }
                        Ok(Some((
                            futures::stream::iter(metas),
                            (page.next.map(Some), pack, seen),
                        )))
                    }
                },
            )
            .try_flatten()
        };
        let unshadowed = futures::stream::once(async move { files.list(prefix.as_ref()) })
            .flatten()
            .try_filter(move |m| {
                let shadowed = seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(m.location.as_ref());
                futures::future::ready(!shadowed)
            });
        packed.chain(unshadowed).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut listed = self.files.list_with_delimiter(prefix).await?;
        let base = pack_prefix(prefix);
        let mut prefixes: BTreeMap<String, ()> = listed
            .common_prefixes
            .iter()
            .map(|p| (p.to_string(), ()))
            .collect();
        let mut objects = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .pack
                .list(&base, cursor.as_deref(), LIST_PAGE)
                .await
                .map_err(pack_error)?;
            for m in &page.blobs {
                match m.key[base.len()..].split_once(object_store::path::DELIMITER) {
                    Some((dir, _)) => {
                        prefixes.insert(format!("{base}{dir}"), ());
                    }
                    None => objects.push(meta(path_of(&m.key), m)),
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let packed: HashSet<&str> = objects.iter().map(|m| m.location.as_ref()).collect();
        listed
            .objects
            .retain(|m| !packed.contains(m.location.as_ref()));
        objects.append(&mut listed.objects);
        listed.objects = objects;
        listed.common_prefixes = prefixes.into_keys().map(|p| path_of(&p)).collect();
        Ok(listed)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let Some(blob) = self.packed(from).await? else {
            self.files.copy_opts(from, to, options).await?;
            return self.unshadow(to).await;
        };
        let mode = match options.mode {
            CopyMode::Overwrite => PutMode::Overwrite,
            CopyMode::Create => PutMode::Create,
        };
        self.put_packed(to, blob.bytes, &mode).await.map(|_| ())
    }
}

/// A multipart upload to the files store that removes a packed blob at its key once it is
/// complete, so the pack cannot shadow it.
struct Unshadowing {
    inner: Box<dyn MultipartUpload>,
    pack: Arc<dyn BlobPack>,
    location: Path,
}

impl fmt::Debug for Unshadowing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unshadowing")
            .field("location", &self.location)
            .finish()
    }
}

#[async_trait]
impl MultipartUpload for Unshadowing {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let done = self.inner.complete().await?;
        self.pack
            .remove(self.location.as_ref())
            .await
            .map_err(pack_error)?;
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// A [`BlobPack`] in memory: tests, throwaway nodes, and stores whose blobs need not survive
/// the process (the companion of [`ObjectBlobs::memory`](crate::ObjectBlobs::memory)).
#[derive(Debug, Clone, Default)]
pub struct MemoryPack {
    blobs: Arc<Mutex<BTreeMap<String, PackedBlob>>>,
}

impl MemoryPack {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PackedBlob>> {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl BlobPack for MemoryPack {
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<PackedBlob>>, StoreError> {
        let blobs = self.lock();
        Ok(keys.iter().map(|k| blobs.get(k).cloned()).collect())
    }

    async fn head(&self, key: &str) -> Result<Option<PackedMeta>, StoreError> {
        Ok(self.lock().get(key).map(PackedBlob::meta))
    }

    async fn put(&self, blobs: &[PackedBlob], replace: bool) -> Result<Vec<bool>, StoreError> {
        let mut stored = self.lock();
        Ok(blobs
            .iter()
            .map(|b| {
                if !replace && stored.contains_key(&b.key) {
                    return false;
                }
                stored.insert(b.key.clone(), b.clone());
                true
            })
            .collect())
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.lock().remove(key).is_some())
    }

    /// In key order; the cursor is the last key of the previous page.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PackListing, StoreError> {
        use std::ops::Bound;
        let start = match cursor {
            Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let limit = limit.max(1);
        let blobs: Vec<PackedMeta> = self
            .lock()
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(_, b)| b.meta())
            .collect();
        let next = (blobs.len() == limit)
            .then(|| blobs.last().map(|m| m.key.clone()))
            .flatten();
        Ok(PackListing::new(blobs, next))
    }
}
