//! [`ObjectBlobs`]: one object storage behind the blob port, whatever the backend.

use std::{
    fmt,
    path::Path as FsPath,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use object_store::{
    aws::AmazonS3Builder, local::LocalFileSystem, memory::InMemory, path::Path, ObjectStore,
    ObjectStoreExt, RetryConfig,
};
use sha2::Digest;
use sync_core::{
    BlobDigest, BlobError, BlobManifest, BlobPack, BlobStamp, BlobStore, DigestMemo, PackedBlob,
    Transferred,
};

use crate::{
    error::{classify, pack_failure, Error},
    key::{object_path, validate_key},
    pack::{now_ms, PackedStore},
    transfer::verify_sha256,
};

/// One object storage (local directory, S3 bucket, memory, the peer's `/files` routes, ...)
/// seen as blob storage. Cheap to clone: clones share the store.
///
/// Every backend is an `Arc<dyn ObjectStore>`, so blobs take one code path whatever the
/// backend; the HTTP peer client plugs in through [`ObjectBlobs::new`].
#[derive(Clone)]
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    content_type: bool,
    /// The directory of a filesystem store, for what object_store cannot list (the staging
    /// files of uploads a crash interrupted).
    root: Option<Arc<std::path::PathBuf>>,
    /// A filesystem store's directory: durability, and the batch fast path when `fast`.
    local: Option<Arc<crate::local_dir::LocalDir>>,
    /// Small blobs in a pack (decision 0014): `store` is then the [`PackedStore`] over them
    /// and the files; batches use the pack directly when `fast`.
    packing: Option<Packing>,
    /// Whether batches may take the fast paths (the local directory's, the pack's): not
    /// when the store is [`wrapped`](Self::wrapped), since they would go around the wrapper.
    fast: bool,
    /// Whether [`BlobStore::sync`] syncs a filesystem store (default on).
    durable: bool,
    /// Digests of blobs written through this store's object storage by someone who hashed
    /// them as they streamed ([`BlobStore::note_written`]): [`BlobStore::digest`] of such a
    /// blob, unchanged since, reads nothing.
    written: Arc<Mutex<DigestMemo>>,
}

/// Blobs whose digest [`ObjectBlobs`] keeps from their writes.
const WRITTEN_DIGESTS: usize = 4096;

impl ObjectBlobs {
    /// Wraps any object store (for example the HTTP client of a peer's `/files` routes).
    ///
    /// Blobs are written with their MIME type as `Content-Type`; use
    /// [`without_content_type`](Self::without_content_type) for a store that keeps no
    /// attributes.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            content_type: true,
            root: None,
            local: None,
            packing: None,
            fast: false,
            durable: true,
            written: Arc::new(Mutex::new(DigestMemo::new(WRITTEN_DIGESTS))),
        }
    }

    /// Keeps blobs of at most `limit` bytes in `pack` (a table of the node's database) and
    /// larger ones in this store (decision 0014): landing a page of small blobs is then one
    /// database transaction instead of a file each. Reads look in the pack first, then in
    /// this store, so blobs stored before the pack existed stay readable. The pack keeps no
    /// attributes: a small blob's `Content-Type` is not kept (a larger one's is, where this
    /// store keeps it).
    ///
    /// Durability: the pack's writes are durable with the next commit of its database, so a
    /// pack in the database that holds the sync state needs no [`BlobStore::sync`]; a sync
    /// still makes the larger blobs durable (and costs nothing when only the pack was
    /// written).
    pub fn with_pack(mut self, pack: Arc<dyn BlobPack>, limit: u64) -> Self {
        let files = Arc::clone(&self.store);
        self.store = Arc::new(PackedStore::new(
            Arc::clone(&pack),
            Arc::clone(&files),
            limit,
        ));
        self.packing = Some(Packing { pack, limit, files });
        self.fast = true;
        self
    }

    /// The files behind a pack as a store of their own (no pack), for what the pack does
    /// not hold.
    fn files_only(&self, files: &Arc<dyn ObjectStore>) -> Self {
        Self {
            store: Arc::clone(files),
            packing: None,
            ..self.clone()
        }
    }

    /// Turns a filesystem store's durability off (`false`) or on (the default): without
    /// it, [`BlobStore::sync`] does nothing, and a power loss may lose blobs whose
    /// watermarks were persisted. For throwaway stores only (tests about something else,
    /// caches): a `syncfs` waits for every dirty file of the filesystem, so on a disk shared
    /// with heavy writers it can take seconds (decision 0013).
    pub fn with_durability(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }

    /// The same storage seen through `store`, a wrapper of this one's object store (crash
    /// points, metrics): every operation goes through the wrapper, and a filesystem store
    /// keeps its durability ([`BlobStore::sync`]) but leaves its batch fast path, which
    /// would go around the wrapper.
    pub fn wrapped(&self, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            fast: false,
            ..self.clone()
        }
    }

    /// The directory of a filesystem store.
    pub(crate) fn root(&self) -> Option<&std::path::Path> {
        self.root.as_deref().map(|p| p.as_path())
    }

    /// Blobs as files under `root` (created if missing): the embedded default.
    ///
    /// Uploads are written to a temporary file next to their destination and renamed into
    /// place when complete, so a reader never sees a partial blob.
    pub fn filesystem(root: impl AsRef<FsPath>) -> Result<Self, Error> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|source| Error::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| {
                Error::config(
                    format!("cannot use {} for blobs", root.display()),
                    Some(Box::new(e)),
                )
            })?
            // Deleting the last blob of a directory removes the directory too.
            .with_automatic_cleanup(true);
        let fs = Arc::new(fs);
        let local =
            crate::local_dir::LocalDir::new(Arc::clone(&fs), root).map_err(|source| Error::Io {
                path: root.to_path_buf(),
                source,
            })?;
        // The local filesystem keeps no attributes (it refuses a put that carries some).
        let mut blobs = Self::new(local.tracked()).without_content_type();
        blobs.root = Some(Arc::new(root.to_path_buf()));
        blobs.local = Some(Arc::new(local));
        blobs.fast = true;
        Ok(blobs)
    }

    /// Blobs in memory (tests, throwaway nodes).
    pub fn memory() -> Self {
        Self::new(Arc::new(InMemory::new()))
    }

    /// Blobs in an S3 bucket (any S3-compatible server).
    pub fn s3(config: S3Config) -> Result<Self, Error> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_allow_http(config.allow_http)
            // Path-style requests (`endpoint/bucket/key`): what S3-compatible servers expect.
            .with_virtual_hosted_style_request(false);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(max_retries) = config.max_retries {
            builder = builder.with_retry(RetryConfig {
                max_retries,
                ..RetryConfig::default()
            });
        }
        let s3 = builder.build().map_err(|e| {
            Error::config(
                format!("cannot use S3 bucket {:?}", config.bucket),
                Some(Box::new(e)),
            )
        })?;
        Ok(Self::new(Arc::new(s3)))
    }

    /// Stops writing the MIME type as an attribute (for stores that refuse attributes).
    pub fn without_content_type(mut self) -> Self {
        self.content_type = false;
        self
    }

    /// Whether blobs are written with their MIME type as `Content-Type`.
    pub fn writes_content_type(&self) -> bool {
        self.content_type
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// One HEAD: whether the object at `path` exists.
    pub(crate) async fn exists(&self, key: &str, path: &Path) -> Result<bool, BlobError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(classify(key, "existence check", e)),
        }
    }
}

/// The pack of an [`ObjectBlobs`] with its limit, and the store of the larger blobs.
#[derive(Clone)]
struct Packing {
    pack: Arc<dyn BlobPack>,
    limit: u64,
    files: Arc<dyn ObjectStore>,
}

impl fmt::Debug for ObjectBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBlobs")
            .field("store", &format_args!("{}", self.store))
            .field("content_type", &self.content_type)
            .finish()
    }
}

impl fmt::Display for ObjectBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.store, f)
    }
}

/// The largest blob an [`ObjectBlobs`] reads or writes inline (protocol version 2): any
/// object store can, and a request carries at most its budget of them anyway.
pub const INLINE_LIMIT: u64 = 1024 * 1024;

/// Blobs a batch reads or writes at once on a store without the fast path.
const BATCH_IO: usize = 16;

#[async_trait]
impl BlobStore for ObjectBlobs {
    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        let path = object_path(key)?;
        self.exists(key, &path).await
    }

    /// A filesystem store: one `syncfs` of the directory's filesystem, shared by the
    /// callers waiting at the time (decision 0013). Other stores: nothing to do.
    async fn sync(&self) -> Result<(), BlobError> {
        match self.local.as_ref().filter(|_| self.durable) {
            Some(local) => local.sync().await,
            None => Ok(()),
        }
    }

    /// A filesystem store reads the whole batch in one blocking task.
    async fn read_inline_batch(
        &self,
        keys: &[String],
        max_bytes: u64,
    ) -> Vec<Result<Option<Vec<u8>>, BlobError>> {
        if let Some(packing) = self.packing.as_ref().filter(|_| self.fast) {
            return self.read_packed(packing, keys, max_bytes).await;
        }
        match self.local.as_ref().filter(|_| self.fast) {
            Some(local) => local.read_batch(keys, max_bytes).await,
            None => {
                use futures::StreamExt;
                futures::stream::iter(keys.iter().cloned())
                    .map(|key| async move { self.read_inline(&key, max_bytes).await })
                    .buffered(BATCH_IO)
                    .collect()
                    .await
            }
        }
    }

    /// A filesystem store writes the whole batch in one blocking task.
    async fn write_inline_batch(
        &self,
        blobs: Vec<(BlobManifest, Vec<u8>)>,
    ) -> Vec<Result<Transferred, BlobError>> {
        if let Some(packing) = self.packing.as_ref().filter(|_| self.fast) {
            return self.write_packed(packing, blobs).await;
        }
        match self.local.as_ref().filter(|_| self.fast) {
            Some(local) => local.write_batch(blobs).await,
            None => {
                use futures::StreamExt;
                futures::stream::iter(blobs)
                    .map(|(manifest, bytes)| async move {
                        self.write_inline(&manifest, bytes).await
                    })
                    .buffered(BATCH_IO)
                    .collect()
                    .await
            }
        }
    }

    fn inline_limit(&self) -> u64 {
        INLINE_LIMIT
    }

    async fn read_inline(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
        crate::transfer::read_inline(self, key, max_bytes).await
    }

    async fn write_inline(
        &self,
        manifest: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        crate::transfer::write_inline(manifest, bytes, self).await
    }

    async fn stamp(&self, key: &str) -> Result<Option<BlobStamp>, BlobError> {
        let path = object_path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(BlobStamp::new(meta.size, meta.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(key, "existence check", e)),
        }
    }

    /// Streams the blob through SHA-256 (a local file in large reads); the stamp is the
    /// one of the read itself, so a blob replaced meanwhile is never remembered under the
    /// replacement's ETag. A blob noted when it was written ([`BlobStore::note_written`])
    /// and unchanged since (one HEAD says so) is not read.
    async fn digest(&self, key: &str) -> Result<BlobDigest, BlobError> {
        use futures::StreamExt;
        use sha2::{Digest, Sha256};
        let path = object_path(key)?;
        if lock(&self.written).knows(key) {
            if let Some(stamp) = self.stamp(key).await? {
                if let Some(hex) = lock(&self.written).sha256(key, &stamp) {
                    return Ok(BlobDigest::Sha256 {
                        hex: hex.to_string(),
                        stamp,
                    });
                }
            }
        }
        let found = match self
            .store
            .get_opts(&path, object_store::GetOptions::default())
            .await
        {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(BlobDigest::Absent),
            Err(e) => return Err(classify(key, "read to verify", e)),
        };
        let stamp = BlobStamp::new(found.meta.size, found.meta.e_tag.clone());
        let mut hasher = Sha256::new();
        let mut stream = crate::transfer::object_chunks(found);
        while let Some(chunk) = stream.next().await {
            hasher.update(chunk.map_err(|e| classify(key, "read to verify", e))?);
        }
        Ok(BlobDigest::Sha256 {
            hex: hex::encode(hasher.finalize()),
            stamp,
        })
    }

    fn note_written(&self, key: &str, sha256: &str, stamp: &BlobStamp) {
        lock(&self.written).remember(key, sha256.to_string(), stamp.clone());
    }
}

fn lock(memo: &Mutex<DigestMemo>) -> std::sync::MutexGuard<'_, DigestMemo> {
    // Plain map updates: a poisoned lock leaves nothing half-done.
    memo.lock().unwrap_or_else(|e| e.into_inner())
}

impl ObjectBlobs {
    /// A batch of inline reads with a pack: one read of the pack for the whole batch, then
    /// the files for the keys it does not hold.
    async fn read_packed(
        &self,
        packing: &Packing,
        keys: &[String],
        max_bytes: u64,
    ) -> Vec<Result<Option<Vec<u8>>, BlobError>> {
        let mut out: Vec<Option<Result<Option<Vec<u8>>, BlobError>>> =
            keys.iter().map(|_| None).collect();
        let mut asked = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            match validate_key(key) {
                Ok(()) => asked.push(i),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let names: Vec<String> = asked.iter().map(|&i| keys[i].clone()).collect();
        let mut missing = Vec::new();
        match packing.pack.get(&names).await {
            Ok(found) => {
                for (&i, blob) in asked.iter().zip(found) {
                    match blob {
                        // Larger than asked for: not sent inline.
                        Some(blob) if blob.bytes.len() as u64 > max_bytes => {
                            out[i] = Some(Ok(None))
                        }
                        Some(blob) => out[i] = Some(Ok(Some(blob.bytes))),
                        None => missing.push(i),
                    }
                }
            }
            Err(e) => {
                for &i in &asked {
                    out[i] = Some(Err(pack_failure(&keys[i], "inline read", &e)));
                }
            }
        }
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
            let read = self
                .files_only(&packing.files)
                .read_inline_batch(&names, max_bytes)
                .await;
            for (&i, r) in missing.iter().zip(read) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every key has its result"))
            .collect()
    }

    /// A batch of inline writes with a pack: every blob verified first (a mismatch stores
    /// nothing of that blob and fails only it), the small ones stored in one transaction of
    /// the pack (a key already packed is left as it is), the larger ones as files.
    async fn write_packed(
        &self,
        packing: &Packing,
        blobs: Vec<(BlobManifest, Vec<u8>)>,
    ) -> Vec<Result<Transferred, BlobError>> {
        let mut out: Vec<Option<Result<Transferred, BlobError>>> =
            blobs.iter().map(|_| None).collect();
        let now = now_ms();
        let (mut packed, mut packed_at, mut larger, mut larger_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, (manifest, bytes)) in blobs.into_iter().enumerate() {
            if let Err(e) = validate_key(&manifest.key) {
                out[i] = Some(Err(e));
            } else if bytes.len() as u64 > packing.limit {
                larger.push((manifest, bytes));
                larger_at.push(i);
            } else {
                let sha256: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                match verify_sha256(&manifest, &sha256) {
                    Ok(()) => {
                        packed.push(PackedBlob::new(manifest.key, sha256, now, bytes));
                        packed_at.push(i);
                    }
                    Err(e) => out[i] = Some(Err(e)),
                }
            }
        }
        if !packed.is_empty() {
            match packing.pack.put(&packed, false).await {
                Ok(stored) => {
                    for ((&i, blob), stored) in packed_at.iter().zip(&packed).zip(stored) {
                        out[i] = Some(Ok(if stored {
                            Transferred::Copied {
                                bytes: blob.bytes.len() as u64,
                            }
                        } else {
                            Transferred::AlreadyPresent
                        }));
                    }
                }
                Err(e) => {
                    for (&i, blob) in packed_at.iter().zip(&packed) {
                        out[i] = Some(Err(pack_failure(&blob.key, "write to the pack", &e)));
                    }
                }
            }
        }
        if !larger.is_empty() {
            // A key the pack holds is present, whatever the size of the blob offered now.
            let mut files = Vec::with_capacity(larger.len());
            let mut files_at = Vec::with_capacity(larger.len());
            for ((manifest, bytes), i) in larger.into_iter().zip(larger_at) {
                match packing.pack.head(&manifest.key).await {
                    Ok(Some(_)) => out[i] = Some(Ok(Transferred::AlreadyPresent)),
                    Ok(None) => {
                        files.push((manifest, bytes));
                        files_at.push(i);
                    }
                    Err(e) => {
                        out[i] = Some(Err(pack_failure(&manifest.key, "existence check", &e)))
                    }
                }
            }
            let written = self
                .files_only(&packing.files)
                .write_inline_batch(files)
                .await;
            for (&i, r) in files_at.iter().zip(written) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every blob has its result"))
            .collect()
    }
}

/// Where and how to reach an S3 bucket: static credentials, path-style requests.
///
/// ```
/// use sync_blobs::S3Config;
///
/// let config = S3Config::new("blobs", "AKIA...", "s3cr3t")
///     .with_endpoint("http://127.0.0.1:9000")
///     .with_allow_http(true);
/// assert_eq!(config.region, "us-east-1");
/// assert!(!format!("{config:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL of an S3-compatible server (`None`: AWS itself).
    pub endpoint: Option<String>,
    /// Region (`us-east-1` unless set; most S3-compatible servers ignore it).
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Whether a plain `http://` endpoint is allowed.
    pub allow_http: bool,
    /// Retries of a failed request within one operation (`None`: object_store's default,
    /// 10 within 3 minutes). A failed transfer is retried next round anyway.
    pub max_retries: Option<usize>,
}

impl S3Config {
    /// A bucket on AWS in `us-east-1` with static credentials.
    pub fn new(
        bucket: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            allow_http: false,
            max_retries: None,
        }
    }

    /// Reads the usual variables for `bucket`: `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (required), `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`, and `AWS_ALLOW_HTTP` (`true`/`1`).
    pub fn from_env(bucket: impl Into<String>) -> Result<Self, Error> {
        Self::from_lookup(bucket.into(), |name| std::env::var(name).ok())
    }

    fn from_lookup(bucket: String, var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let first = |names: &[&str]| names.iter().find_map(|n| var(n).filter(|v| !v.is_empty()));
        let required = |name: &str| {
            first(&[name]).ok_or_else(|| {
                Error::config(
                    format!("{name} is not set; export it to reach S3 bucket {bucket:?}"),
                    None,
                )
            })
        };
        let mut config = S3Config::new(
            bucket.clone(),
            required("AWS_ACCESS_KEY_ID")?,
            required("AWS_SECRET_ACCESS_KEY")?,
        );
        config.endpoint = first(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]);
        if let Some(region) = first(&["AWS_REGION", "AWS_DEFAULT_REGION"]) {
            config.region = region;
        }
        config.allow_http =
            first(&["AWS_ALLOW_HTTP"]).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ok(config)
    }

    /// Sets the endpoint of an S3-compatible server.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Allows (or forbids) a plain `http://` endpoint.
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Sets how often one request is retried before the operation fails.
    pub fn with_max_retries(mut self, retries: usize) -> Self {
        self.max_retries = Some(retries);
        self
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn s3_config_from_environment() {
        let config = S3Config::from_lookup(
            "b".into(),
            lookup(&[
                ("AWS_ACCESS_KEY_ID", "id"),
                ("AWS_SECRET_ACCESS_KEY", "key"),
                ("AWS_ENDPOINT", "http://127.0.0.1:1"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_ALLOW_HTTP", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config,
            S3Config::new("b", "id", "key")
                .with_endpoint("http://127.0.0.1:1")
                .with_region("eu-west-1")
                .with_allow_http(true)
        );
        let preferred = S3Config::from_lookup(
            "b".into(),
            lookup(&[
                ("AWS_ACCESS_KEY_ID", "id"),
                ("AWS_SECRET_ACCESS_KEY", "key"),
                ("AWS_ENDPOINT_URL", "http://a"),
                ("AWS_ENDPOINT", "http://b"),
                ("AWS_REGION", "r1"),
                ("AWS_DEFAULT_REGION", "r2"),
            ]),
        )
        .unwrap();
        assert_eq!(preferred.endpoint.as_deref(), Some("http://a"));
        assert_eq!(preferred.region, "r1");
        assert!(!preferred.allow_http);
    }

    #[test]
    fn s3_config_names_the_missing_variable() {
        let err =
            S3Config::from_lookup("b".into(), lookup(&[("AWS_ACCESS_KEY_ID", "id")])).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    #[tokio::test]
    async fn digest_hashes_the_stored_bytes_and_stamps_them_as_a_head_does() {
        let dir = tempfile::tempdir().unwrap();
        for blobs in [
            ObjectBlobs::memory(),
            ObjectBlobs::filesystem(dir.path()).unwrap(),
        ] {
            assert_eq!(blobs.digest("k/absent").await.unwrap(), BlobDigest::Absent);
            assert_eq!(blobs.stamp("k/absent").await.unwrap(), None);
            // Above one file chunk, so a local file is read in several.
            let bytes = vec![7u8; 600 * 1024];
            blobs
                .object_store()
                .put(&Path::from("k/b"), bytes.clone().into())
                .await
                .unwrap();
            let stamp = blobs.stamp("k/b").await.unwrap().unwrap();
            assert_eq!(stamp.size, bytes.len() as u64);
            assert!(stamp.e_tag.is_some(), "{blobs}");
            assert_eq!(
                blobs.digest("k/b").await.unwrap(),
                BlobDigest::Sha256 {
                    hex: crate::testing::sha256_hex(&bytes),
                    stamp: stamp.clone(),
                }
            );
            // Other bytes at the key: another stamp.
            blobs
                .object_store()
                .put(&Path::from("k/b"), b"other".to_vec().into())
                .await
                .unwrap();
            assert_ne!(blobs.stamp("k/b").await.unwrap().unwrap(), stamp);
        }
    }

    #[tokio::test]
    async fn a_digest_noted_at_write_is_answered_without_reading_while_the_blob_is_unchanged() {
        use crate::testing::{sha256_hex, CountingStore};
        let dir = tempfile::tempdir().unwrap();
        let fs = ObjectBlobs::filesystem(dir.path()).unwrap();
        let counting = Arc::new(CountingStore::new(Arc::clone(fs.object_store())));
        let blobs = fs.wrapped(counting.clone());
        let bytes = vec![3u8; 300 * 1024];
        let put = blobs
            .object_store()
            .put(&Path::from("k/n"), bytes.clone().into())
            .await
            .unwrap();
        let stamp = BlobStamp::new(bytes.len() as u64, put.e_tag);
        blobs.note_written("k/n", &sha256_hex(&bytes), &stamp);
        counting.calls().reset();
        let expected = BlobDigest::Sha256 {
            hex: sha256_hex(&bytes),
            stamp: stamp.clone(),
        };
        assert_eq!(blobs.digest("k/n").await.unwrap(), expected);
        assert_eq!(
            crate::testing::Calls::get(&counting.calls().gets),
            0,
            "noted: not read back"
        );
        // Replaced behind its back: another stamp, so it is read and hashed again.
        blobs
            .object_store()
            .put(&Path::from("k/n"), b"replaced".to_vec().into())
            .await
            .unwrap();
        counting.calls().reset();
        match blobs.digest("k/n").await.unwrap() {
            BlobDigest::Sha256 { hex, .. } => assert_eq!(hex, sha256_hex(b"replaced")),
            other => panic!("{other:?}"),
        }
        assert_eq!(crate::testing::Calls::get(&counting.calls().gets), 1);
        // A note without an ETag is not kept: nothing tells a replaced blob from it.
        blobs.note_written("k/m", &sha256_hex(b"m"), &BlobStamp::new(1, None));
        blobs
            .object_store()
            .put(&Path::from("k/m"), b"x".to_vec().into())
            .await
            .unwrap();
        counting.calls().reset();
        match blobs.digest("k/m").await.unwrap() {
            BlobDigest::Sha256 { hex, .. } => assert_eq!(hex, sha256_hex(b"x")),
            other => panic!("{other:?}"),
        }
        assert_eq!(crate::testing::Calls::get(&counting.calls().gets), 1);
    }

    #[tokio::test]
    async fn a_page_that_only_went_to_the_pack_runs_no_filesystem_sync() {
        use crate::testing::manifest;
        let dir = tempfile::tempdir().unwrap();
        let blobs = ObjectBlobs::filesystem(dir.path())
            .unwrap()
            .with_pack(Arc::new(crate::MemoryPack::new()), 1024);
        let syncs = || blobs.local.as_ref().unwrap().syncs_performed();
        let page: Vec<(BlobManifest, Vec<u8>)> = (0..10u8)
            .map(|i| (manifest(&format!("shared/p/{i}"), &[i; 64]), vec![i; 64]))
            .collect();
        for r in blobs.write_inline_batch(page).await {
            assert!(matches!(r, Ok(Transferred::Copied { .. })), "{r:?}");
        }
        blobs.sync().await.unwrap();
        assert_eq!(syncs(), 0, "nothing was written under the directory");
        // A blob above the pack's limit is a file: the next sync runs.
        let large = vec![9u8; 2048];
        blobs
            .write_inline_batch(vec![(manifest("shared/p/large", &large), large)])
            .await
            .into_iter()
            .for_each(|r| assert!(r.is_ok(), "{r:?}"));
        blobs.sync().await.unwrap();
        assert_eq!(syncs(), 1);
    }

    #[test]
    fn filesystem_creates_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        let blobs = ObjectBlobs::filesystem(&root).unwrap();
        assert!(root.is_dir());
        assert!(!blobs.writes_content_type());
    }

    #[test]
    fn filesystem_reports_an_unusable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = ObjectBlobs::filesystem(file.join("sub")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }
}
