//! [`HttpObjectStore`]: the peer's `{base}/files/{key}` routes as an `object_store`, so the
//! blob mover keeps one code path for every backend. Bodies stream both ways.

use std::{
    fmt,
    pin::Pin,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{
    channel::{mpsc, oneshot},
    stream::{self, BoxStream},
    FutureExt, StreamExt, TryStreamExt,
};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use object_store::{
    path::Path, Attribute, AttributeValue, Attributes, CopyOptions, GetOptions, GetRange,
    GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutPayloadIntoIter, PutResult, UploadPart,
};
use sync_core::Channel;

use crate::{
    auth::{Signer, APP_SIG_HEADER},
    client::{full, ReqBody},
    keys::encode_key,
    BoxError, Error, HttpClient,
};

const STORE: &str = "HttpObjectStore";

/// The blob store of one channel on a peer, over `HEAD|GET|PUT|DELETE {base}/files/{key}`.
///
/// - `get` streams the body and supports ranges (`Range: bytes=...`); `head` is a `HEAD`.
/// - `put` sends the payload as is; `put_multipart` streams every part, in order, into one
///   chunked `PUT` (memory is bounded by the parts in flight), which the server writes with
///   its own multipart upload, so nothing is visible until `complete`.
/// - `delete` succeeds whether or not the key existed.
/// - Conditional gets, versions, put modes other than overwrite, attributes other than the
///   content type, `list` and `copy` are not supported (`NotSupported` / `NotImplemented`).
///
/// Keys are the full object keys (`shared/...` on the Drive channel, `apps/X/...` on app X's
/// channel), percent-encoded per segment in the URL.
#[derive(Clone)]
pub struct HttpObjectStore {
    client: HttpClient,
    channel: Channel,
}

impl fmt::Display for HttpObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HttpObjectStore({}{}/files)",
            self.client.base_url(),
            self.channel.base_path()
        )
    }
}

impl fmt::Debug for HttpObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpObjectStore")
            .field("client", &self.client)
            .field("channel", &self.channel)
            .finish()
    }
}

fn not_supported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: Box::new(Error::Unsupported(what.to_string())),
    }
}

fn not_implemented(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.into(),
        implementer: STORE.into(),
    }
}

fn generic(e: impl Into<BoxError>) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: e.into(),
    }
}

/// Maps a client error on `location` to the object_store error a caller can act on.
/// Timeouts and connection failures carry an `io::Error` of the matching kind in their
/// source chain, so a caller can tell "retry later" without knowing this crate.
fn store_error(e: Error, location: &Path) -> object_store::Error {
    let path = location.to_string();
    match &e {
        Error::Timeout { .. } => {
            return generic(std::io::Error::new(std::io::ErrorKind::TimedOut, e));
        }
        Error::Connection { .. } => {
            return generic(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                e,
            ));
        }
        _ => {}
    }
    match &e {
        Error::Status { status, .. } => match *status {
            404 => object_store::Error::NotFound {
                path,
                source: Box::new(e),
            },
            401 => object_store::Error::Unauthenticated {
                path,
                source: Box::new(e),
            },
            403 => object_store::Error::PermissionDenied {
                path,
                source: Box::new(e),
            },
            412 => object_store::Error::Precondition {
                path,
                source: Box::new(e),
            },
            _ => generic(e),
        },
        _ => generic(e),
    }
}

fn content_type(attributes: &Attributes) -> object_store::Result<Option<HeaderValue>> {
    let mut out = None;
    for (key, value) in attributes {
        match key {
            Attribute::ContentType => {
                out = Some(HeaderValue::from_str(value).map_err(|_| {
                    not_supported(&format!(
                        "content type {:?} is not a header value",
                        &**value
                    ))
                })?)
            }
            other => {
                return Err(not_supported(&format!(
                    "attribute {other:?} (only the content type is carried)"
                )))
            }
        }
    }
    Ok(out)
}

impl HttpObjectStore {
    /// The blob store of `channel` on `client`'s peer.
    pub fn new(client: HttpClient, channel: Channel) -> Self {
        Self { client, channel }
    }

    /// The channel whose namespace this store reaches.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    fn key_path(&self, location: &Path) -> String {
        self.client.path(
            &self.channel,
            &format!("/files/{}", encode_key(location.as_ref())),
        )
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.client.request_timeout()
    }

    async fn check(
        &self,
        method: &Method,
        path: &str,
        response: Response<Incoming>,
        location: &Path,
    ) -> object_store::Result<Response<Incoming>> {
        if response.status().is_success() {
            Ok(response)
        } else {
            let e = self
                .client
                .status_error(method, path, response, self.deadline())
                .await;
            Err(store_error(e, location))
        }
    }

    async fn delete_one(&self, location: &Path) -> object_store::Result<()> {
        let method = Method::DELETE;
        let path = self.key_path(location);
        let mut headers = HeaderMap::new();
        self.client.authorize(&mut headers, &method, &path, &[]);
        let response = self
            .client
            .send(
                method.clone(),
                &path,
                headers,
                full(Bytes::new()),
                Some(self.deadline()),
            )
            .await
            .map_err(|e| store_error(e, location))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.check(&method, &path, response, location).await?;
        Ok(())
    }
}

fn e_tag(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn header_u64(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `bytes {start}-{end}/{total}` -> (start..end+1, total).
fn content_range(headers: &HeaderMap) -> Option<(std::ops::Range<u64>, u64)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    (start <= end).then_some((start..end + 1, total.parse().ok()?))
}

#[async_trait]
impl ObjectStore for HttpObjectStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if opts.mode != PutMode::Overwrite {
            return Err(not_supported("put modes other than Overwrite"));
        }
        let method = Method::PUT;
        let path = self.key_path(location);
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type(&opts.attributes)? {
            headers.insert(header::CONTENT_TYPE, ct);
        }
        let length = payload.content_length();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        let chunks: Vec<Bytes> = payload.iter().cloned().collect();
        self.client.authorize(&mut headers, &method, &path, &chunks);
        let body: ReqBody = http_body_util::StreamBody::new(stream::iter(
            chunks
                .into_iter()
                .map(|b| Ok::<_, BoxError>(Frame::data(b))),
        ))
        .boxed_unsync();
        // The deadline allows for the upload itself at a modest 1 MiB/s.
        let deadline = self.deadline() + Duration::from_secs((length >> 20) as u64);
        let response = self
            .client
            .send(method.clone(), &path, headers, body, Some(deadline))
            .await
            .map_err(|e| store_error(e, location))?;
        let response = self.check(&method, &path, response, location).await?;
        Ok(PutResult {
            e_tag: e_tag(response.headers()),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let method = Method::PUT;
        let path = self.key_path(location);
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type(&opts.attributes)? {
            headers.insert(header::CONTENT_TYPE, ct);
        }
        let signer = self.client.authorize_streamed(&mut headers, &method, &path);
        let (parts, rx) = mpsc::unbounded();
        let body = UploadBody {
            rx,
            current: None,
            signer,
            finished: false,
        };
        let (done, response) = oneshot::channel();
        let client = self.client.clone();
        let request_path = path.clone();
        let task = tokio::spawn(async move {
            let result = client
                .send(method, &request_path, headers, body.boxed_unsync(), None)
                .await;
            let _ = done.send(result);
        });
        Ok(Box::new(HttpMultipartUpload {
            store: self.clone(),
            location: location.clone(),
            path,
            parts: Some(parts),
            response: Some(response),
            task: task.abort_handle(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
        {
            return Err(not_supported("conditional requests"));
        }
        if options.version.is_some() {
            return Err(not_supported("object versions"));
        }
        let method = if options.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let path = self.key_path(location);
        let mut headers = HeaderMap::new();
        if let Some(range) = &options.range {
            let value = match range {
                GetRange::Bounded(r) if r.end > r.start => {
                    format!("bytes={}-{}", r.start, r.end - 1)
                }
                GetRange::Bounded(r) => {
                    return Err(generic(format!("empty range {}..{}", r.start, r.end)))
                }
                GetRange::Offset(o) => format!("bytes={o}-"),
                GetRange::Suffix(n) => format!("bytes=-{n}"),
            };
            headers.insert(
                header::RANGE,
                HeaderValue::from_str(&value).map_err(generic)?,
            );
        }
        self.client.authorize(&mut headers, &method, &path, &[]);
        let response = self
            .client
            .send(
                method.clone(),
                &path,
                headers,
                full(Bytes::new()),
                Some(self.deadline()),
            )
            .await
            .map_err(|e| store_error(e, location))?;
        let response = self.check(&method, &path, response, location).await?;
        let h = response.headers();
        let length = header_u64(h, header::CONTENT_LENGTH);
        let (range, size) = if response.status() == StatusCode::PARTIAL_CONTENT {
            content_range(h).ok_or_else(|| generic("206 without a valid Content-Range"))?
        } else {
            let size = length.ok_or_else(|| generic("response without Content-Length"))?;
            (0..size, size)
        };
        let last_modified = h
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        let mut attributes = Attributes::new();
        if let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            attributes.insert(Attribute::ContentType, AttributeValue::from(ct.to_string()));
        }
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified,
            size,
            e_tag: e_tag(h),
            version: None,
        };
        let payload = if options.head {
            stream::empty().boxed()
        } else {
            body_stream(response.into_body(), self.client.request_timeout())
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .and_then(move |location| {
                let this = this.clone();
                async move { this.delete_one(&location).await.map(|_| location) }
            })
            .boxed()
    }

    fn list(&self, _prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        stream::once(async { Err(not_implemented("list")) }).boxed()
    }

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&Path>,
    ) -> object_store::Result<ListResult> {
        Err(not_implemented("list_with_delimiter"))
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(not_implemented("copy"))
    }
}

/// The data frames of a response body as a stream of chunks. A body that sends nothing
/// for `idle` fails with a timeout (an `io::ErrorKind::TimedOut` source, so it is transient)
/// instead of holding the transfer forever.
fn body_stream(body: Incoming, idle: Duration) -> BoxStream<'static, object_store::Result<Bytes>> {
    stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the blob body sent nothing for {} ms", idle.as_millis()),
                    );
                    return Some((Err(generic(e)), None));
                }
            };
            match frame {
                None => return None,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), Some(body)));
                    }
                }
                Some(Err(e)) => {
                    let e = generic(format!(
                        "reading the blob body: {}",
                        crate::client::chain(&e)
                    ));
                    return Some((Err(e), None));
                }
            }
        }
    })
    .boxed()
}

enum UploadMsg {
    Part(PutPayload, oneshot::Sender<()>),
    Finish,
}

/// The streamed body of a multipart upload: parts in call order, then (for an app
/// signature) the signature trailer. Ending without [`UploadMsg::Finish`] (an abort or a
/// dropped upload) is a body error, so the server stores nothing.
struct UploadBody {
    rx: mpsc::UnboundedReceiver<UploadMsg>,
    current: Option<(PutPayloadIntoIter, Option<oneshot::Sender<()>>)>,
    signer: Option<Signer>,
    finished: bool,
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            if let Some((chunks, ack)) = &mut this.current {
                if let Some(chunk) = chunks.next() {
                    if chunk.is_empty() {
                        continue;
                    }
                    if let Some(s) = &mut this.signer {
                        s.update(&chunk);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // The whole part was handed to the connection: its future may complete.
                if let Some(ack) = ack.take() {
                    let _ = ack.send(());
                }
                this.current = None;
            }
            match ready!(this.rx.poll_next_unpin(cx)) {
                Some(UploadMsg::Part(payload, ack)) => {
                    this.current = Some((payload.into_iter(), Some(ack)));
                }
                Some(UploadMsg::Finish) => {
                    this.finished = true;
                    return Poll::Ready(this.signer.take().map(|s| {
                        let mut trailers = HeaderMap::new();
                        trailers.insert(
                            APP_SIG_HEADER,
                            HeaderValue::from_str(&s.finish_hex())
                                .unwrap_or_else(|_| HeaderValue::from_static("")),
                        );
                        Ok(Frame::trailers(trailers))
                    }));
                }
                None => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(
                        "multipart upload aborted before completion".into()
                    )));
                }
            }
        }
    }
}

/// A multipart upload streaming into one chunked `PUT`.
struct HttpMultipartUpload {
    store: HttpObjectStore,
    location: Path,
    path: String,
    parts: Option<mpsc::UnboundedSender<UploadMsg>>,
    response: Option<oneshot::Receiver<Result<Response<Incoming>, Error>>>,
    /// The request: aborted with the upload, so a stalled connection does not keep it.
    task: tokio::task::AbortHandle,
}

impl Drop for HttpMultipartUpload {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for HttpMultipartUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMultipartUpload")
            .field("location", &self.location)
            .field("path", &self.path)
            .finish()
    }
}

impl HttpMultipartUpload {
    async fn response(&mut self) -> object_store::Result<Response<Incoming>> {
        let rx = self
            .response
            .take()
            .ok_or_else(|| generic("multipart upload already completed or aborted"))?;
        let deadline = self.store.deadline();
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Err(_) => Err(store_error(
                self.store.client.timeout(&Method::PUT, &self.path),
                &self.location,
            )),
            Ok(Err(_)) => Err(generic("the upload task ended without an answer")),
            Ok(Ok(result)) => result.map_err(|e| store_error(e, &self.location)),
        }
    }
}

#[async_trait]
impl MultipartUpload for HttpMultipartUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length();
        let (ack, acked) = oneshot::channel();
        let sent = self
            .parts
            .as_ref()
            .is_some_and(|tx| tx.unbounded_send(UploadMsg::Part(data, ack)).is_ok());
        let location = self.location.to_string();
        // As for a single put: the request timeout plus the part at a modest 1 MiB/s.
        let allowed = self.store.client.request_timeout() + Duration::from_secs((len >> 20) as u64);
        async move {
            if !sent {
                return Err(generic(format!(
                    "upload of {location} is already completed, aborted or failed"
                )));
            }
            match tokio::time::timeout(allowed, acked).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(generic(format!(
                    "upload of {location} failed before this part was sent; complete() reports why"
                ))),
                Err(_) => Err(generic(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "upload of {location}: a part was not taken within {} ms",
                        allowed.as_millis()
                    ),
                ))),
            }
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if let Some(tx) = self.parts.take() {
            let _ = tx.unbounded_send(UploadMsg::Finish);
        }
        let response = self.response().await?;
        let response = self
            .store
            .check(&Method::PUT, &self.path, response, &self.location)
            .await?;
        Ok(PutResult {
            e_tag: e_tag(response.headers()),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        // Closing the channel without `Finish` fails the body; the server discards it.
        self.parts.take();
        let _ = self.response().await;
        self.task.abort();
        Ok(())
    }
}
