//! The local-directory fast path of [`ObjectBlobs::filesystem`](crate::ObjectBlobs): a page of
//! small blobs written or read in one blocking task with `std::fs`, and durability with one
//! `syncfs` shared by every caller waiting at the time (group commit).
//!
//! object_store's `LocalFileSystem` spends a blocking-pool task on every call (a HEAD, a put,
//! a get), and a context switch to and from the pool costs more on this class of machine than
//! creating a small file does; a page of 1000 inline blobs cost about 2000 of them per side
//! (docs/benchmarks.md). The files written here are the same as `LocalFileSystem`'s: the path
//! comes from its `path_to_filesystem`, the bytes are staged in `{dest}#{n}` (the staging name
//! the key rules reserve and garbage collection sweeps) and renamed into place, so a reader
//! never sees a partial blob.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    path::{Path as FsPath, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use futures::stream::BoxStream;
use object_store::{
    local::LocalFileSystem, path::Path, CopyOptions, GetOptions, GetResult, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, UploadPart,
};
use sync_core::{BlobError, BlobManifest, Transferred};

use crate::{error::classify, key::object_path, transfer::verify_inline};

/// A filesystem store's directory, for the fast path and for durability.
#[derive(Debug)]
pub(crate) struct LocalDir {
    fs: Arc<LocalFileSystem>,
    durability: GroupSync,
}

impl LocalDir {
    pub(crate) fn new(fs: Arc<LocalFileSystem>, root: &FsPath) -> io::Result<Self> {
        Ok(Self {
            fs,
            durability: GroupSync::open(root)?,
        })
    }

    /// `fs` as the object store every other write goes through: it counts the writes, so
    /// that a sync with nothing written since the last one costs nothing.
    pub(crate) fn tracked(&self) -> Arc<dyn ObjectStore> {
        Arc::new(Tracked {
            inner: Arc::clone(&self.fs) as Arc<dyn ObjectStore>,
            writes: Arc::clone(&self.durability.writes),
        })
    }

    /// Stores inline blobs, each as [`crate::write_inline`] does (key checked, present keys
    /// left as they are, SHA-256 verified before anything is written), in one blocking task.
    pub(crate) async fn write_batch(
        &self,
        blobs: Vec<(BlobManifest, Vec<u8>)>,
    ) -> Vec<Result<Transferred, BlobError>> {
        let fs = Arc::clone(&self.fs);
        let n = blobs.len();
        let keys: Vec<String> = blobs.iter().map(|(m, _)| m.key.clone()).collect();
        let writes = Arc::clone(&self.durability.writes);
        let joined = tokio::task::spawn_blocking(move || {
            let out = blobs
                .into_iter()
                .map(|(manifest, bytes)| write_one(&fs, &manifest, &bytes))
                .collect::<Vec<_>>();
            if out
                .iter()
                .any(|r| matches!(r, Ok(Transferred::Copied { .. })))
            {
                writes.fetch_add(1, Ordering::SeqCst);
            }
            out
        })
        .await;
        joined.unwrap_or_else(|e| {
            keys.iter()
                .take(n)
                .map(|key| Err(join_failed(key, &e)))
                .collect()
        })
    }

    /// Reads blobs of at most `max_bytes` each, as [`crate::read_inline`] does, in one
    /// blocking task.
    pub(crate) async fn read_batch(
        &self,
        keys: &[String],
        max_bytes: u64,
    ) -> Vec<Result<Option<Vec<u8>>, BlobError>> {
        let fs = Arc::clone(&self.fs);
        let owned = keys.to_vec();
        let joined = tokio::task::spawn_blocking(move || {
            owned
                .iter()
                .map(|key| read_one(&fs, key, max_bytes))
                .collect::<Vec<_>>()
        })
        .await;
        joined.unwrap_or_else(|e| keys.iter().map(|key| Err(join_failed(key, &e))).collect())
    }

    /// Makes every blob written under the root so far durable.
    pub(crate) async fn sync(&self) -> Result<(), BlobError> {
        self.durability.sync().await
    }

    /// Filesystem syncs actually run so far.
    #[cfg(test)]
    pub(crate) fn syncs_performed(&self) -> u64 {
        self.durability.performed.load(Ordering::Relaxed)
    }
}

fn join_failed(key: &str, e: &tokio::task::JoinError) -> BlobError {
    BlobError::Fatal {
        key: key.to_string(),
        message: format!("blob task failed: {e}"),
        source: None,
    }
}

/// An I/O error of the fast path, classified as object_store's would be (a full disk is
/// transient, the rest fatal).
fn io_error(key: &str, what: &str, path: &FsPath, e: io::Error) -> BlobError {
    classify(
        key,
        what,
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        },
    )
}

fn write_one(
    fs: &LocalFileSystem,
    manifest: &BlobManifest,
    bytes: &[u8],
) -> Result<Transferred, BlobError> {
    let key = manifest.key.as_str();
    let path = object_path(key)?;
    let dest = fs
        .path_to_filesystem(&path)
        .map_err(|e| classify(key, "write to the destination", e))?;
    // The HEAD of the object_store path, as a stat: a present key is left as it is.
    match std::fs::metadata(&dest) {
        Ok(meta) if meta.is_file() => return Ok(Transferred::AlreadyPresent),
        // A directory is in the way (the key is a prefix of other keys): the rename below
        // fails and says so.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(key, "existence check", &dest, e)),
    }
    verify_inline(manifest, bytes)?;
    let (mut file, staging) = stage(&dest).map_err(|e| io_error(key, "stage", &dest, e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.flush())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&staging, &dest)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(io_error(key, "write to the destination", &dest, e));
    }
    Ok(Transferred::Copied {
        bytes: bytes.len() as u64,
    })
}

/// A new staging file `{dest}#{n}` (the first free `n` from 1, as object_store's own), with
/// the parent directories created when missing.
fn stage(dest: &FsPath) -> io::Result<(File, PathBuf)> {
    let mut n = 1u32;
    let mut created_parents = false;
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staging = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(file) => return Ok((file, staging)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1_000 => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !created_parents => {
                let parent = dest.parent().ok_or(e)?;
                std::fs::create_dir_all(parent)?;
                created_parents = true;
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_one(fs: &LocalFileSystem, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
    let path = object_path(key)?;
    let file_path = fs
        .path_to_filesystem(&path)
        .map_err(|e| classify(key, "inline read", e))?;
    let mut file = match File::open(&file_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(key, "inline read", &file_path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| io_error(key, "inline read", &file_path, e))?;
    // A directory at the key is no blob (object_store's HEAD says not found too).
    if !meta.is_file() || meta.len() > max_bytes {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Never more than one byte past the limit, even if the file grew meanwhile.
    (&mut file)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(key, "inline read", &file_path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// Durability for everything written under one directory, shared among concurrent callers.
///
/// A caller takes a ticket when it asks (after its own writes completed); whoever holds the
/// turn syncs for every ticket issued before it started, so callers that queued meanwhile
/// find their ticket covered and return without a sync of their own. Writes under the root
/// are counted (the fast path and [`Tracked`]); when none completed since the last sync
/// started, there is nothing to sync and none is run (a round whose small blobs all went to
/// a pack, decision 0014). One write-back failure
/// poisons the store: the kernel reports it once, and the blob it hit may be lost, so later
/// calls keep failing rather than let a round persist watermarks over it.
#[derive(Debug)]
struct GroupSync {
    root: Arc<File>,
    path: PathBuf,
    asked: AtomicU64,
    /// Writes completed under the root (bumped after each one).
    writes: Arc<AtomicU64>,
    /// Syncs actually run (for the tests: callers that share one do not add to it).
    performed: AtomicU64,
    /// The highest ticket a completed sync covers, and the writes counted when it started.
    covered: tokio::sync::Mutex<Covered>,
    failed: Mutex<Option<String>>,
}

/// What the last successful sync covers.
#[derive(Debug, Default)]
struct Covered {
    ticket: u64,
    writes: u64,
}

impl GroupSync {
    fn open(root: &FsPath) -> io::Result<Self> {
        Ok(Self {
            // Kept open for the store's lifetime: write-back errors are reported on the
            // descriptor that was open when they happened.
            root: Arc::new(File::open(root)?),
            path: root.to_path_buf(),
            asked: AtomicU64::new(0),
            writes: Arc::default(),
            performed: AtomicU64::new(0),
            covered: tokio::sync::Mutex::new(Covered::default()),
            failed: Mutex::new(None),
        })
    }

    fn poisoned(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn error(&self, message: String) -> BlobError {
        BlobError::Fatal {
            key: self.path.display().to_string(),
            message,
            source: None,
        }
    }

    async fn sync(&self) -> Result<(), BlobError> {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = self.covered.lock().await;
        if let Some(reason) = self.poisoned() {
            return Err(self.error(reason));
        }
        if covered.ticket >= ticket {
            return Ok(());
        }
        // Every ticket issued until now was taken after its writes: this sync covers them.
        let upto = self.asked.load(Ordering::SeqCst);
        let writes = self.writes.load(Ordering::SeqCst);
        if writes == covered.writes {
            // Nothing was written since the last sync started: those writes are covered.
            covered.ticket = upto;
            return Ok(());
        }
        let root = Arc::clone(&self.root);
        let path = self.path.clone();
        self.performed.fetch_add(1, Ordering::Relaxed);
        let synced = tokio::task::spawn_blocking(move || sync_dir(&root, &path))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
        match synced {
            Ok(()) => {
                *covered = Covered {
                    ticket: upto,
                    writes,
                };
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "making blobs durable failed ({e}); blobs written since the last successful \
                     sync may be lost: check the disk, restart, and let the next rounds verify \
                     and fetch them again"
                );
                tracing::error!(root = %self.path.display(), error = %e, "blob sync failed");
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
                Err(self.error(reason))
            }
        }
    }
}

/// Flushes the filesystem holding `root`: one `syncfs` on Linux (every dirty file and
/// directory entry of that filesystem, at the cost of one journal commit).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn sync_dir(root: &File, _path: &FsPath) -> io::Result<()> {
    rustix::fs::syncfs(root).map_err(io::Error::from)
}

/// Flushes every file and directory under `root`, one by one: the portable fallback where
/// `syncfs` is missing (slow for many blobs, but correct).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn sync_dir(_root: &File, path: &FsPath) -> io::Result<()> {
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                OpenOptions::new()
                    .write(true)
                    .open(entry.path())?
                    .sync_all()?;
            }
        }
        // Directory entries (the renames), where directories can be synced.
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

/// The filesystem store as everything but the fast path writes to it: counts the writes
/// that complete, for [`GroupSync`].
#[derive(Debug)]
struct Tracked {
    inner: Arc<dyn ObjectStore>,
    writes: Arc<AtomicU64>,
}

impl Tracked {
    fn wrote<T>(&self, done: object_store::Result<T>) -> object_store::Result<T> {
        if done.is_ok() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        done
    }
}

impl std::fmt::Display for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Tracked {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let done = self.inner.put_opts(location, payload, opts).await;
        self.wrote(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(TrackedUpload {
            inner,
            writes: Arc::clone(&self.writes),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let done = self.inner.copy_opts(from, to, options).await;
        self.wrote(done)
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let done = self.inner.rename_opts(from, to, options).await;
        self.wrote(done)
    }
}

#[derive(Debug)]
struct TrackedUpload {
    inner: Box<dyn MultipartUpload>,
    writes: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl MultipartUpload for TrackedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let done = self.inner.complete().await;
        if done.is_ok() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        done
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn manifest(key: &str, bytes: &[u8]) -> BlobManifest {
        BlobManifest {
            key: key.into(),
            content_hash: hex::encode(Sha256::digest(bytes)),
            size_bytes: bytes.len() as u64,
            mime_type: None,
        }
    }

    fn dir() -> (tempfile::TempDir, LocalDir) {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let local = LocalDir::new(fs, dir.path()).unwrap();
        (dir, local)
    }

    #[tokio::test]
    async fn a_batch_lands_verified_blobs_and_refuses_the_rest_alone() {
        let (root, local) = dir();
        let good = manifest("shared/a/01/good", b"good bytes");
        let mut bad = manifest("shared/a/02/bad", b"expected bytes");
        bad.size_bytes = 3;
        let out = local
            .write_batch(vec![
                (good.clone(), b"good bytes".to_vec()),
                (bad, b"other bytes".to_vec()),
                (manifest("shared/../x", b"x"), b"x".to_vec()),
                (good.clone(), b"good bytes".to_vec()),
            ])
            .await;
        assert!(
            matches!(out[0], Ok(Transferred::Copied { bytes: 10 })),
            "{out:?}"
        );
        assert!(
            matches!(out[1], Err(BlobError::HashMismatch { .. })),
            "{out:?}"
        );
        assert!(
            matches!(out[2], Err(BlobError::InvalidKey { .. })),
            "{out:?}"
        );
        assert!(matches!(out[3], Ok(Transferred::AlreadyPresent)), "{out:?}");
        // Nothing at the refused key, no staging file left anywhere.
        assert!(!root.path().join("shared/a/02").exists());
        let names: Vec<_> = std::fs::read_dir(root.path().join("shared/a/01"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["good"]);
        let read = local
            .read_batch(
                &[
                    "shared/a/01/good".into(),
                    "shared/a/02/bad".into(),
                    "shared/a".into(),
                ],
                1024,
            )
            .await;
        assert_eq!(
            read[0].as_ref().unwrap().as_deref(),
            Some(&b"good bytes"[..])
        );
        assert_eq!(read[1].as_ref().unwrap(), &None);
        // A directory is no blob.
        assert_eq!(read[2].as_ref().unwrap(), &None);
        // Larger than asked for: not read.
        let small = local.read_batch(&["shared/a/01/good".into()], 9).await;
        assert_eq!(small[0].as_ref().unwrap(), &None);
    }

    #[tokio::test]
    async fn sync_works_on_a_real_directory_and_concurrent_callers_share_it() {
        let (_root, local) = dir();
        local
            .write_batch(vec![(manifest("shared/s/00/a", b"a"), b"a".to_vec())])
            .await
            .into_iter()
            .for_each(|r| assert!(r.is_ok(), "{r:?}"));
        local.sync().await.unwrap();
        let local = Arc::new(local);
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let local = Arc::clone(&local);
                tokio::spawn(async move { local.sync().await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        // Every caller's ticket is covered by a sync that started after it asked, and the
        // eight callers shared at most two (the one running when they queued, and the next).
        assert_eq!(
            local.durability.covered.lock().await.ticket,
            local.durability.asked.load(Ordering::SeqCst)
        );
        assert!(local.durability.performed.load(Ordering::Relaxed) <= 3);
    }

    #[tokio::test]
    async fn a_sync_runs_only_when_something_was_written_since_the_last_one() {
        let (_root, local) = dir();
        let performed = || local.durability.performed.load(Ordering::Relaxed);
        // Nothing written yet: nothing to sync.
        local.sync().await.unwrap();
        assert_eq!(performed(), 0);
        local
            .write_batch(vec![(manifest("shared/s/00/a", b"a"), b"a".to_vec())])
            .await
            .into_iter()
            .for_each(|r| assert!(r.is_ok(), "{r:?}"));
        local.sync().await.unwrap();
        assert_eq!(performed(), 1);
        local.sync().await.unwrap();
        assert_eq!(performed(), 1, "no write since: no second sync");
        // A blob already present writes nothing.
        local
            .write_batch(vec![(manifest("shared/s/00/a", b"a"), b"a".to_vec())])
            .await;
        local.sync().await.unwrap();
        assert_eq!(performed(), 1);
        // A write through the object store counts too.
        use object_store::ObjectStoreExt;
        let store = local.tracked();
        store
            .put(
                &object_store::path::Path::from("shared/s/00/b"),
                b"b".to_vec().into(),
            )
            .await
            .unwrap();
        local.sync().await.unwrap();
        assert_eq!(performed(), 2);
    }

    #[tokio::test]
    async fn a_failed_sync_poisons_the_store() {
        let (_root, local) = dir();
        *local.durability.failed.lock().unwrap() = Some("write-back failed".into());
        let err = local.sync().await.unwrap_err();
        assert!(err.to_string().contains("write-back failed"), "{err}");
    }
}
