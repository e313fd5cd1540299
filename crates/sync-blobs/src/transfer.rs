//! Copying one blob between two object storages: streamed, hashed while streaming, verified
//! before it becomes visible at the destination.

use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt};
use object_store::{
    path::Path, Attribute, Attributes, GetOptions, GetResult, GetResultPayload, MultipartUpload,
    PutMultipartOptions, PutOptions, PutPayload,
};
use sha2::{Digest, Sha256};
use sync_core::{BlobError, BlobManifest, Transferred};
use tokio::task::JoinSet;

use crate::{error::classify, key::object_path, store::ObjectBlobs};

/// Size of one part of a multipart upload, and the most a transfer buffers before it
/// starts one: objects below it are written with a single put.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts of one upload sent concurrently. With the part being filled, a transfer holds at
/// most `(MAX_PARTS_IN_FLIGHT + 1) * PART_SIZE` bytes, whatever the object's size.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;

/// The SHA-256 a content hash names, lower-case, if it names one: 64 hex digits, optionally
/// after `sha256:`. Any other form is opaque and its blob transfers unverified.
///
/// Upper-case digits are accepted too, as the in-memory transfer of `sync-testkit` does:
/// verifying more is never less safe.
///
/// ```
/// use sync_blobs::expected_sha256;
///
/// let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// assert_eq!(expected_sha256(hex).as_deref(), Some(hex));
/// assert_eq!(expected_sha256(&format!("sha256:{hex}")).as_deref(), Some(hex));
/// assert_eq!(expected_sha256("md5:d41d8cd98f00b204e9800998ecf8427e"), None);
/// ```
pub fn expected_sha256(content_hash: &str) -> Option<String> {
    let hex = content_hash.strip_prefix("sha256:").unwrap_or(content_hash);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// Copies the blob of `manifest` from `from` to `to`.
///
/// * The key is checked first ([`validate_key`](crate::validate_key)); a refused key reaches
///   neither store.
/// * One HEAD on the destination: if it has the key, nothing moves
///   ([`Transferred::AlreadyPresent`]).
/// * The source is read as a stream and written with a single put below [`PART_SIZE`], or a
///   multipart upload of [`PART_SIZE`] parts above it, so memory stays bounded whatever the
///   size.
/// * The SHA-256 is computed while streaming. If the content hash names one
///   ([`expected_sha256`]) it is checked before the object is completed at the destination;
///   on a mismatch the upload is aborted, nothing is left at the key, and
///   [`BlobError::HashMismatch`] is returned. Any other content hash transfers unverified.
///
/// Errors: a source without the blob is [`BlobError::NotFound`]; connection failures,
/// timeouts and 5xx answers are [`BlobError::Transient`]; the rest is [`BlobError::Fatal`].
///
/// This function does not de-duplicate concurrent calls; [`BlobMover`](crate::BlobMover)
/// does.
pub async fn transfer(
    manifest: &BlobManifest,
    from: &ObjectBlobs,
    to: &ObjectBlobs,
) -> Result<Transferred, BlobError> {
    let key = manifest.key.as_str();
    let path = object_path(key)?;
    if to.exists(key, &path).await? {
        tracing::debug!(key, "blob already at the destination");
        return Ok(Transferred::AlreadyPresent);
    }
    let expected = expected_sha256(&manifest.content_hash);
    if expected.is_none() {
        tracing::info!(
            key,
            content_hash = %manifest.content_hash,
            "content hash is not a SHA-256; transferring the blob unverified"
        );
    }
    let source = from
        .object_store()
        .get_opts(&path, GetOptions::default())
        .await
        .map_err(|e| classify(key, "read from the source", e))?;
    if manifest.size_bytes != 0 && manifest.size_bytes != source.meta.size {
        tracing::debug!(
            key,
            manifest = manifest.size_bytes,
            source = source.meta.size,
            "blob size differs from the manifest (informational)"
        );
    }

    let mut copy = Copy {
        key,
        path: &path,
        to,
        mime_type: manifest.mime_type.as_deref(),
        hasher: Sha256::new(),
        bytes: 0,
        part: Part::default(),
        upload: None,
    };
    let mut stream = object_chunks(source);
    let streamed = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(key, "read from the source", e))?;
            copy.push(chunk).await?;
        }
        Ok(())
    }
    .await;
    match streamed {
        Ok(()) => copy.finish(expected).await,
        Err(e) => {
            copy.abort().await;
            Err(e)
        }
    }
}

/// Checks inline bytes against the manifest's content hash before anything is stored: a
/// SHA-256 form must match (a mismatch is [`BlobError::HashMismatch`]); any other form is
/// stored unverified, and logged.
pub(crate) fn verify_inline(manifest: &BlobManifest, bytes: &[u8]) -> Result<(), BlobError> {
    verify_sha256(manifest, &Sha256::digest(bytes).into())
}

/// [`verify_inline`] of bytes whose SHA-256 is `sha256`.
pub(crate) fn verify_sha256(manifest: &BlobManifest, sha256: &[u8; 32]) -> Result<(), BlobError> {
    let key = manifest.key.as_str();
    match expected_sha256(&manifest.content_hash) {
        Some(expected) => {
            let actual = hex::encode(sha256);
            if actual != expected {
                tracing::warn!(key, %expected, %actual, "inline blob refused: hash mismatch");
                return Err(BlobError::HashMismatch {
                    key: key.to_string(),
                    expected,
                    actual,
                });
            }
        }
        None => tracing::info!(
            key,
            content_hash = %manifest.content_hash,
            "content hash is not a SHA-256; storing the inline blob unverified"
        ),
    }
    Ok(())
}

/// Stores bytes that arrived inline (protocol version 2) at the manifest's key: key checked,
/// one HEAD (a key already present is left as is), SHA-256 verified when the content hash
/// names one (a mismatch stores nothing), then a single put.
pub async fn write_inline(
    manifest: &BlobManifest,
    bytes: Vec<u8>,
    to: &ObjectBlobs,
) -> Result<Transferred, BlobError> {
    let key = manifest.key.as_str();
    let path = object_path(key)?;
    if to.exists(key, &path).await? {
        return Ok(Transferred::AlreadyPresent);
    }
    verify_inline(manifest, &bytes)?;
    let mut attributes = Attributes::new();
    if let Some(mime) = manifest
        .mime_type
        .as_deref()
        .filter(|_| to.writes_content_type())
    {
        attributes.insert(Attribute::ContentType, mime.to_string().into());
    }
    let n = bytes.len() as u64;
    let opts = PutOptions {
        attributes,
        ..PutOptions::default()
    };
    to.object_store()
        .put_opts(&path, PutPayload::from(bytes), opts)
        .await
        .map_err(|e| classify(key, "write to the destination", e))?;
    Ok(Transferred::Copied { bytes: n })
}

/// The bytes at `key` when present and at most `max_bytes` long; `None` when absent or
/// larger (a larger object's body is not read).
pub async fn read_inline(
    from: &ObjectBlobs,
    key: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, BlobError> {
    let path = object_path(key)?;
    let found = match from
        .object_store()
        .get_opts(&path, GetOptions::default())
        .await
    {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(classify(key, "inline read", e)),
    };
    if found.meta.size > max_bytes {
        return Ok(None);
    }
    let bytes = found
        .bytes()
        .await
        .map_err(|e| classify(key, "inline read", e))?;
    Ok(Some(bytes.to_vec()))
}

/// A store's read as a stream of bounded chunks: a local file in large reads on the blocking
/// pool with a bounded read-ahead into reused buffers ([`file_chunks`](crate::file_read::file_chunks)),
/// anything else as the backend streams it. Transfers read their source this way, and the
/// HTTP server its `GET /files` bodies (`SyncServiceBuilder::object_bodies`).
pub fn object_chunks(source: GetResult) -> BoxStream<'static, object_store::Result<Bytes>> {
    let GetResultPayload::File(file, path) = source.payload else {
        return source.into_stream();
    };
    crate::file_read::file_chunks(file, path, source.range)
}

/// The part being filled: chunks as they came from the source (no copying).
#[derive(Default)]
struct Part {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Part {
    fn take(&mut self) -> PutPayload {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().collect()
    }
}

/// A multipart upload with at most [`MAX_PARTS_IN_FLIGHT`] parts being sent.
struct Upload {
    inner: Box<dyn MultipartUpload>,
    // Spawned, so parts progress while the source is being read.
    parts: JoinSet<object_store::Result<()>>,
}

struct Copy<'a> {
    key: &'a str,
    path: &'a Path,
    to: &'a ObjectBlobs,
    mime_type: Option<&'a str>,
    hasher: Sha256,
    bytes: u64,
    part: Part,
    upload: Option<Upload>,
}

impl Copy<'_> {
    fn attributes(&self) -> Attributes {
        let mut attributes = Attributes::new();
        if let Some(mime) = self.mime_type.filter(|_| self.to.writes_content_type()) {
            attributes.insert(Attribute::ContentType, mime.to_string().into());
        }
        attributes
    }

    /// Takes one chunk of the source: hashes it and sends every part it completes.
    async fn push(&mut self, mut chunk: Bytes) -> Result<(), BlobError> {
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        while !chunk.is_empty() {
            let take = chunk.len().min(PART_SIZE - self.part.len);
            self.part.len += take;
            self.part.chunks.push(chunk.split_to(take));
            if self.part.len == PART_SIZE {
                let payload = self.part.take();
                self.send_part(payload).await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self, payload: PutPayload) -> Result<(), BlobError> {
        if self.upload.is_none() {
            let opts = PutMultipartOptions {
                attributes: self.attributes(),
                ..PutMultipartOptions::default()
            };
            let inner = self
                .to
                .object_store()
                .put_multipart_opts(self.path, opts)
                .await
                .map_err(|e| classify(self.key, "start the upload", e))?;
            self.upload = Some(Upload {
                inner,
                parts: JoinSet::new(),
            });
        }
        let key = self.key;
        let upload = self.upload.as_mut().expect("started above");
        while upload.parts.len() >= MAX_PARTS_IN_FLIGHT {
            join_part(key, upload.parts.join_next().await)?;
        }
        upload.parts.spawn(upload.inner.put_part(payload));
        Ok(())
    }

    /// The source is read completely: verify, then make the blob visible (or abort).
    async fn finish(mut self, expected: Option<String>) -> Result<Transferred, BlobError> {
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if let Some(expected) = expected {
            if actual != expected {
                tracing::warn!(key = self.key, %expected, %actual, "blob refused: hash mismatch");
                self.abort().await;
                return Err(BlobError::HashMismatch {
                    key: self.key.to_string(),
                    expected,
                    actual,
                });
            }
        }
        let bytes = self.bytes;
        let result = match self.upload.is_some() {
            false => {
                let opts = PutOptions {
                    attributes: self.attributes(),
                    ..PutOptions::default()
                };
                let payload = self.part.take();
                self.to
                    .object_store()
                    .put_opts(self.path, payload, opts)
                    .await
                    .map(drop)
                    .map_err(|e| classify(self.key, "write to the destination", e))
            }
            true => self.complete().await,
        };
        match result {
            Ok(()) => {
                tracing::debug!(key = self.key, bytes, "blob copied");
                Ok(Transferred::Copied { bytes })
            }
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn complete(&mut self) -> Result<(), BlobError> {
        if self.part.len > 0 {
            let payload = self.part.take();
            self.send_part(payload).await?;
        }
        let key = self.key;
        let upload = self.upload.as_mut().expect("multipart upload started");
        while let Some(joined) = upload.parts.join_next().await {
            join_part(key, Some(joined))?;
        }
        upload
            .inner
            .complete()
            .await
            .map(drop)
            .map_err(|e| classify(key, "complete the upload", e))
    }

    /// Drops the parts sent so far; the destination key is left untouched.
    async fn abort(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            upload.parts.shutdown().await;
            if let Err(e) = upload.inner.abort().await {
                // The parts of an unfinished upload are never visible at the key.
                tracing::warn!(key = self.key, error = %e, "cannot abort the upload");
            }
        }
    }
}

fn join_part(
    key: &str,
    joined: Option<Result<object_store::Result<()>, tokio::task::JoinError>>,
) -> Result<(), BlobError> {
    match joined {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(classify(key, "upload a part", e)),
        Some(Err(e)) => Err(classify(key, "upload a part", e.into())),
    }
}
