//! Crash points around object stores: a node's own blob storage, the peer's `/files` routes
//! as the node sees them, and a server's blob storage. Points sit at the level of object
//! operations (HEAD, parts of an upload, chunks of a download), where a transfer can be cut
//! in the middle.

use std::{fmt, ops::Range, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use sync_blobs::{
    object_store::{
        path::Path, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
        MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
        PutResult, RenameOptions, Result, UploadPart,
    },
    ObjectBlobs,
};

use super::{armed, hit, point};

/// The points of one object store; `None` where the store has none.
#[derive(Debug, Clone, Copy, Default)]
struct BlobPoints {
    /// Before a HEAD.
    head: Option<&'static str>,
    /// After each part of a multipart upload was accepted.
    put_part: Option<&'static str>,
    /// Before a multipart upload is completed.
    put_complete: Option<&'static str>,
    /// After a put or a multipart upload completed.
    put_done: Option<&'static str>,
    /// After each chunk of a GET body arrived.
    get_chunk: Option<&'static str>,
}

fn wrap(store: Arc<dyn ObjectStore>, points: BlobPoints) -> Arc<dyn ObjectStore> {
    Arc::new(CrashStore {
        inner: store,
        points,
    })
}

/// A node's own blob storage (downloads land here, `put` imports here), with its crash
/// points when one is armed.
pub fn node_local(blobs: ObjectBlobs) -> ObjectBlobs {
    if !armed() {
        return blobs;
    }
    let points = BlobPoints {
        put_part: Some("node.local.put.part"),
        put_done: Some("node.local.put.done"),
        ..BlobPoints::default()
    };
    rewrap(&blobs, points)
}

/// The peer's `/files` routes as a node uses them, with their crash points when one is armed.
pub fn node_remote(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    if !armed() {
        return store;
    }
    wrap(
        store,
        BlobPoints {
            head: Some("node.remote.head"),
            put_part: Some("node.remote.put.part"),
            put_complete: Some("node.remote.put.complete"),
            put_done: Some("node.remote.put.done"),
            get_chunk: Some("node.remote.get.chunk"),
        },
    )
}

/// A server's blob storage (the responder's blob check and the `/files` routes), with its
/// crash points when one is armed.
pub fn server_blobs(blobs: ObjectBlobs) -> ObjectBlobs {
    if !armed() {
        return blobs;
    }
    let points = BlobPoints {
        head: Some("server.blob.head"),
        put_part: Some("server.blob.put.part"),
        put_complete: Some("server.blob.put.complete"),
        put_done: Some("server.blob.put.done"),
        get_chunk: Some("server.blob.get.chunk"),
    };
    rewrap(&blobs, points)
}

/// `blobs` around a wrapped object store, keeping whether it writes content types and its
/// durability (every operation goes through the wrapper, so the crash points fire).
fn rewrap(blobs: &ObjectBlobs, points: BlobPoints) -> ObjectBlobs {
    blobs.wrapped(wrap(blobs.object_store().clone(), points))
}

#[derive(Debug)]
struct CrashStore {
    inner: Arc<dyn ObjectStore>,
    points: BlobPoints,
}

impl fmt::Display for CrashStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CrashPoints({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CrashStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await?;
        hit(self.points.put_done);
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CrashUpload {
            inner,
            points: self.points,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        if head {
            hit(self.points.head);
        }
        let result = self.inner.get_opts(location, options).await?;
        let Some(chunk_point) = self.points.get_chunk.filter(|_| !head) else {
            return Ok(result);
        };
        let meta = result.meta.clone();
        let range = result.range.clone();
        let attributes = result.attributes.clone();
        let extensions = result.extensions.clone();
        // A local file's payload becomes a stream of chunks, so the point can fire between
        // them (only while a point is armed).
        let chunks = result
            .into_stream()
            .map(move |chunk| {
                if chunk.is_ok() {
                    point(chunk_point);
                }
                chunk
            })
            .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(chunks),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, Result<Path>>,
    ) -> futures::stream::BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> futures::stream::BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct CrashUpload {
    inner: Box<dyn MultipartUpload>,
    points: BlobPoints,
}

#[async_trait]
impl MultipartUpload for CrashUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        let point_name = self.points.put_part;
        async move {
            part.await?;
            hit(point_name);
            Ok(())
        }
        .boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        hit(self.points.put_complete);
        let result = self.inner.complete().await?;
        hit(self.points.put_done);
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
