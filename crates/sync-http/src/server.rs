//! [`SyncService`]: the responder and the blob routes as a hardened tower service.
//!
//! Every request goes through the same gates, in order: route (404, or 400 for a bad app id
//! or key), method (405 with `Allow`), credentials (401, 403), channel served (404), then
//! the handler's own checks (415, 413, 400, 403 for a key outside the namespace). A client
//! mistake is always a 4xx with a JSON `{"error": ...}` body; only a failing responder or
//! store gives a 5xx (503 when retrying may help, 500 otherwise).

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{stream::BoxStream, FutureExt, StreamExt, TryStreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, LengthLimitError, Limited};
use object_store::{
    path::Path, Attribute, AttributeValue, Attributes, GetOptions, GetRange, GetResult,
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use sync_core::{valid_app_id, BlobStamp, BlobStore, Channel, ExchangeError, ExchangeTransport};
use sync_protocol::{error_code, Codec, ExchangeRequest};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::{
    auth::{system_clock, Admission, AuthFailure, Authenticator, WallClock, APP_SIG_HEADER},
    client::require_map,
    encoding,
    keys::{decode_key, in_namespace},
    metrics::{MeteredProvider, ServerMetrics},
    BoxError, Error, Scope,
};

/// The response body type of [`SyncService`].
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Finds the responder of a channel: `None` means the channel is not served here (an
/// unknown app), answered with 404.
///
/// Implemented for closures `Fn(&Channel) -> Option<Arc<dyn ExchangeTransport>>` and for a
/// `HashMap<Channel, Arc<dyn ExchangeTransport>>`.
pub trait ResponderProvider: Send + Sync + 'static {
    /// The responder of `channel`, if it is served.
    fn responder(&self, channel: &Channel) -> Option<Arc<dyn ExchangeTransport>>;
}

impl<F> ResponderProvider for F
where
    F: Fn(&Channel) -> Option<Arc<dyn ExchangeTransport>> + Send + Sync + 'static,
{
    fn responder(&self, channel: &Channel) -> Option<Arc<dyn ExchangeTransport>> {
        self(channel)
    }
}

impl ResponderProvider for HashMap<Channel, Arc<dyn ExchangeTransport>> {
    fn responder(&self, channel: &Channel) -> Option<Arc<dyn ExchangeTransport>> {
        self.get(channel).cloned()
    }
}

/// Limits and windows of a [`SyncService`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest exchange request body (default 32 MiB); above it, 413.
    pub exchange_body_limit: usize,
    /// Largest blob upload (default 4 GiB); above it, 413. Uploads stream, so this bounds
    /// storage, not memory.
    pub blob_body_limit: u64,
    /// Size of the parts a large upload is written to the store in (default 8 MiB; S3 needs
    /// at least 5 MiB). Memory per upload is about one part.
    pub blob_part_size: usize,
    /// Exchanges handled at once (default 64); more wait their turn.
    pub max_concurrent_exchanges: usize,
    /// How far an app signature's timestamp may be from the server's time (default ±5 min).
    pub signature_window: Duration,
    /// Signatures remembered to refuse replays (default 100,000). When full of signatures
    /// still inside the window, new signed requests get 503 until some expire.
    pub replay_cache_capacity: usize,
    /// Whether uploads are stored with their `Content-Type` (default true). Turn it off for
    /// stores that keep no attributes, such as the local filesystem.
    pub store_content_type: bool,
    /// Whether exchange bodies may be compressed (zstd; default true): responses to clients
    /// that send `Accept-Encoding: zstd`, and requests, announced with `Accept-Encoding:
    /// zstd` on every exchange response. A compressed request is capped at
    /// `exchange_body_limit` once inflated.
    pub compression: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            exchange_body_limit: 32 << 20,
            blob_body_limit: 4 << 30,
            blob_part_size: 8 << 20,
            max_concurrent_exchanges: 64,
            signature_window: Duration::from_secs(300),
            replay_cache_capacity: 100_000,
            store_content_type: true,
            compression: true,
        }
    }
}

impl ServerConfig {
    /// Sets whether exchange bodies may be compressed.
    #[must_use]
    pub fn with_compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Sets whether uploads keep their `Content-Type`.
    #[must_use]
    pub fn with_store_content_type(mut self, store: bool) -> Self {
        self.store_content_type = store;
        self
    }

    /// Sets the exchange body cap.
    #[must_use]
    pub fn with_exchange_body_limit(mut self, bytes: usize) -> Self {
        self.exchange_body_limit = bytes;
        self
    }
    /// Sets the blob upload cap.
    #[must_use]
    pub fn with_blob_body_limit(mut self, bytes: u64) -> Self {
        self.blob_body_limit = bytes;
        self
    }
    /// Sets the part size of streamed uploads.
    #[must_use]
    pub fn with_blob_part_size(mut self, bytes: usize) -> Self {
        self.blob_part_size = bytes;
        self
    }
    /// Sets how many exchanges run at once.
    #[must_use]
    pub fn with_max_concurrent_exchanges(mut self, n: usize) -> Self {
        self.max_concurrent_exchanges = n;
        self
    }
    /// Sets the signature time window.
    #[must_use]
    pub fn with_signature_window(mut self, window: Duration) -> Self {
        self.signature_window = window;
        self
    }
    /// Sets the replay cache capacity.
    #[must_use]
    pub fn with_replay_cache_capacity(mut self, n: usize) -> Self {
        self.replay_cache_capacity = n;
        self
    }
}

/// Builds a [`SyncService`]; start with [`SyncService::builder`].
#[must_use]
pub struct SyncServiceBuilder {
    provider: Arc<dyn ResponderProvider>,
    blobs: Arc<dyn ObjectStore>,
    tokens: Vec<(String, Scope)>,
    metrics_tokens: Vec<String>,
    apps: HashMap<String, String>,
    anonymous: Option<Scope>,
    config: ServerConfig,
    clock: WallClock,
    blob_store: Option<Arc<dyn BlobStore>>,
    object_body: ObjectBody,
}

/// Turns a `GET`'s store result into the response body's chunks: see
/// [`SyncServiceBuilder::object_bodies`].
pub type ObjectBody = fn(GetResult) -> BoxStream<'static, object_store::Result<Bytes>>;

impl SyncServiceBuilder {
    /// Accepts `Authorization: Bearer <token>` for the channels in `scope`.
    pub fn bearer_token(mut self, token: impl Into<String>, scope: Scope) -> Self {
        self.tokens.push((token.into(), scope));
        self
    }

    /// Accepts `Authorization: Bearer <token>` on `GET /metrics` (a scraper's token). It
    /// reaches no channel unless also given with [`bearer_token`](Self::bearer_token); a
    /// token whose scope is [`Scope::All`] reads the metrics without this.
    pub fn metrics_token(mut self, token: impl Into<String>) -> Self {
        self.metrics_tokens.push(token.into());
        self
    }

    /// Accepts the app signature of `app_id` made with `secret`, on that app's channel.
    pub fn app_secret(mut self, app_id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.apps.insert(app_id.into(), secret.into());
        self
    }

    /// Serves requests without credentials on the channels in `scope` (for a loopback demo
    /// or a deployment that authenticates in front). Off by default.
    pub fn anonymous(mut self, scope: Scope) -> Self {
        self.anonymous = Some(scope);
        self
    }

    /// Limits and windows.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// The wall clock signatures are checked against, in milliseconds since the Unix epoch
    /// (default: the system clock).
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The storage behind the service's object store, seen through the blob port (the same
    /// storage the responders check blobs in). Every upload is made durable with its
    /// [`BlobStore::sync`] before it is acknowledged (a local directory's uploads are
    /// otherwise only in the page cache; concurrent uploads share one sync where the store
    /// does: `sync_blobs::ObjectBlobs` runs one `syncfs` for all callers waiting), and its
    /// SHA-256, hashed while the body streamed, is passed on with
    /// [`BlobStore::note_written`], so a responder verifying the blob against an item's
    /// content hash need not read it back (decision 0030). Off by default.
    pub fn blob_store(mut self, store: Arc<dyn BlobStore>) -> Self {
        self.blob_store = Some(store);
        self
    }

    /// How a `GET /files` body is read from the store. The default streams as the store
    /// does (object_store reads a local file 8 KiB at a time, one blocking task per read,
    /// which caps a large download at about 200 MB/s); `starkeep-sync serve` passes
    /// `sync_blobs::object_chunks` (large reads with a bounded read-ahead into reused
    /// buffers), which this crate cannot name itself: adapters do not depend on each other.
    pub fn object_bodies(mut self, body: ObjectBody) -> Self {
        self.object_body = body;
        self
    }

    /// Builds the service, checking the configuration.
    pub fn build(self) -> Result<SyncService, Error> {
        let c = &self.config;
        if c.exchange_body_limit == 0
            || c.blob_body_limit == 0
            || c.blob_part_size == 0
            || c.max_concurrent_exchanges == 0
            || c.replay_cache_capacity == 0
        {
            return Err(Error::Config(
                "body limits, part size, exchange concurrency and replay capacity must be \
                 at least 1"
                    .into(),
            ));
        }
        if self
            .tokens
            .iter()
            .map(|(t, _)| t)
            .chain(&self.metrics_tokens)
            .any(|t| t.trim().is_empty())
        {
            return Err(Error::Config("a bearer token may not be empty".into()));
        }
        // A metrics-only token is known on the channel routes too, reaching none of them
        // (403 there, not 401).
        let mut tokens = self.tokens;
        for t in &self.metrics_tokens {
            if !tokens.iter().any(|(known, _)| known == t) {
                tokens.push((t.clone(), Scope::Channels(Vec::new())));
            }
        }
        if let Some((app, _)) = self
            .apps
            .iter()
            .find(|(app, secret)| !valid_app_id(app) || secret.is_empty())
        {
            return Err(Error::Config(format!(
                "app {app:?}: the app id must be 1..=64 letters, digits, '-', '_' or '.', and \
                 the secret non-empty"
            )));
        }
        let auth = Authenticator::new(
            tokens,
            self.apps,
            self.anonymous,
            c.signature_window.as_millis() as u64,
            c.replay_cache_capacity,
            self.clock,
        )
        .with_metrics_tokens(&self.metrics_tokens);
        let metrics = Arc::new(ServerMetrics::default());
        Ok(SyncService {
            inner: Arc::new(Inner {
                exchanges: Semaphore::new(c.max_concurrent_exchanges),
                // Every responder handed out is counted (exchanges, items, refusals).
                provider: Arc::new(MeteredProvider {
                    inner: self.provider,
                    metrics: metrics.clone(),
                }),
                blobs: self.blobs,
                blob_store: self.blob_store,
                object_body: self.object_body,
                auth,
                config: self.config,
                metrics,
            }),
        })
    }
}

/// The sync server as a tower `Service`: cheap to clone (one `Arc` inside), generic over the
/// request body so it serves `hyper::body::Incoming` and test bodies alike.
///
/// Routes, for the Drive channel at the root and app `X`'s channel at `/apps/X`:
///
/// | route | methods |
/// |---|---|
/// | `/health` | `GET`, `HEAD` (no credentials needed) |
/// | `/metrics` | `GET`, `HEAD`: Prometheus text ([`ServerMetrics`]); a token for every channel or with the metrics scope |
/// | `{base}/sync/exchange` | `POST`, JSON or MessagePack in, the same out |
/// | `{base}/files/{key}` | `HEAD`, `GET` (ranges), `PUT` (streamed), `DELETE` |
/// | `{base}/files/{key}/stat` | `GET`: `{"sizeBytes": n}` |
#[derive(Clone)]
pub struct SyncService {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn ResponderProvider>,
    blobs: Arc<dyn ObjectStore>,
    blob_store: Option<Arc<dyn BlobStore>>,
    object_body: ObjectBody,
    auth: Authenticator,
    config: ServerConfig,
    exchanges: Semaphore,
    metrics: Arc<ServerMetrics>,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService")
            .field("blobs", &self.inner.blobs.to_string())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl SyncService {
    /// A service answering exchanges with `provider`'s responders and blob requests from
    /// `blobs` (one store for every channel; each channel reaches its own key prefix).
    pub fn builder(
        provider: impl ResponderProvider,
        blobs: Arc<dyn ObjectStore>,
    ) -> SyncServiceBuilder {
        SyncServiceBuilder {
            provider: Arc::new(provider),
            blobs,
            tokens: Vec::new(),
            metrics_tokens: Vec::new(),
            apps: HashMap::new(),
            anonymous: None,
            config: ServerConfig::default(),
            clock: system_clock(),
            blob_store: None,
            object_body: GetResult::into_stream,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The counters `GET /metrics` exposes.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.inner.metrics
    }
}

impl<B> tower::Service<Request<B>> for SyncService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        // Counted, and its `request` span closed, when the response body ends.
        let (tracker, span) = inner.metrics.track(request.method(), request.uri().path());
        let request = request.map(|body| tracker.count_request(body));
        Box::pin(
            async move {
                // A panic is a bug, never an answer: it becomes a 500 and the connection lives.
                let handled = AssertUnwindSafe(inner.handle(request)).catch_unwind().await;
                Ok(tracker.finish(handled.unwrap_or_else(|_| {
                    tracing::error!("request handler panicked");
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                })))
            }
            .instrument(span),
        )
    }
}

fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn empty_body() -> ResponseBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(full_body(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The stable code of an error body (`sync_protocol::error_code`) for a status.
fn status_error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => error_code::BAD_REQUEST,
        401 => error_code::UNAUTHORIZED,
        403 => error_code::FORBIDDEN,
        404 => error_code::NOT_FOUND,
        405 => error_code::METHOD_NOT_ALLOWED,
        409 => error_code::CONFLICT,
        412 => error_code::PRECONDITION_FAILED,
        413 => error_code::TOO_LARGE,
        415 => error_code::UNSUPPORTED_MEDIA_TYPE,
        500 => error_code::INTERNAL,
        501 => error_code::NOT_IMPLEMENTED,
        503 => error_code::UNAVAILABLE,
        _ => error_code::OTHER,
    }
}

/// A JSON error body, `{"error": message, "code": ...}`, with the status's code.
fn error_response(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
    coded_error_response(status, status_error_code(status), message)
}

/// A JSON error body with a more specific code than the status's.
fn coded_error_response(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> Response<ResponseBody> {
    let message = message.into();
    if status.is_server_error() {
        tracing::warn!(%status, %message, "request failed");
    } else {
        tracing::debug!(%status, %message, "request refused");
    }
    let mut r = json_response(status, json!({ "error": message, "code": code }));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Response<ResponseBody> {
    let mut r = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here; allowed: {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn auth_failure(f: AuthFailure) -> Response<ResponseBody> {
    match f {
        AuthFailure::Unauthorized(m) => {
            let mut r = error_response(StatusCode::UNAUTHORIZED, m);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"starkeep-sync\""),
            );
            r
        }
        AuthFailure::Forbidden(m) => error_response(StatusCode::FORBIDDEN, m),
        AuthFailure::Busy(m) => error_response(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

/// How a responder failure is answered.
fn exchange_failure(e: ExchangeError) -> Response<ResponseBody> {
    match e {
        ExchangeError::BadRequest(m) => error_response(StatusCode::BAD_REQUEST, m),
        ExchangeError::Unauthorized(m) => error_response(StatusCode::FORBIDDEN, m),
        ExchangeError::Refused { code, message } => {
            coded_error_response(StatusCode::BAD_REQUEST, code, message)
        }
        e if e.is_transient() => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry later"))
        }
        e => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// How a blob store failure is answered.
fn store_failure(e: object_store::Error) -> Response<ResponseBody> {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => error_response(StatusCode::NOT_FOUND, "no object at this key"),
        E::AlreadyExists { .. } => error_response(StatusCode::CONFLICT, e.to_string()),
        E::Precondition { .. } => error_response(StatusCode::PRECONDITION_FAILED, e.to_string()),
        E::InvalidPath { .. } => error_response(StatusCode::BAD_REQUEST, e.to_string()),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            error_response(StatusCode::NOT_IMPLEMENTED, e.to_string())
        }
        // The local filesystem reports a key below an object (or an object where a prefix of
        // other objects is) as a generic error: there is no object at that key, and nothing
        // to retry.
        E::Generic { .. } if is_path_conflict(&e) => {
            error_response(StatusCode::NOT_FOUND, "no object at this key")
        }
        // Backend errors (network to S3, a busy disk) are worth retrying.
        E::Generic { .. } => error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        e => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Whether a store error is the local filesystem refusing a key that collides with the
/// directory layout (`a/b` when `a` is an object, or `a` when objects live under `a/`).
fn is_path_conflict(e: &object_store::Error) -> bool {
    use std::io::ErrorKind;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::NotADirectory | ErrorKind::IsADirectory
            );
        }
        source = s.source();
    }
    false
}

/// How a failed upload is answered: a key that collides with the local filesystem's layout
/// is a conflict (409), not a failing store (503, retried forever).
fn upload_failure(e: object_store::Error) -> Response<ResponseBody> {
    if is_path_conflict(&e) {
        return key_collision();
    }
    store_failure(e)
}

/// 503: the store took the upload but could not make it durable; the client retries.
fn unavailable(message: String) -> Response<ResponseBody> {
    error_response(StatusCode::SERVICE_UNAVAILABLE, message)
}

fn key_collision() -> Response<ResponseBody> {
    error_response(
        StatusCode::CONFLICT,
        "the key collides with an existing object: on this store a key cannot be both an \
         object and the prefix of other keys",
    )
}

/// Longest key segment: a file name is at most 255 bytes, and the filesystem store stages
/// an upload as `<name>#<n>`.
const MAX_SEGMENT_BYTES: usize = 240;

/// Keys the local filesystem (the embedded default) cannot hold, refused up front: a
/// segment longer than [`MAX_SEGMENT_BYTES`], or a last segment ending in `#<digits>` (the
/// filesystem store's name for an upload in progress, which sync-blobs refuses too).
fn unstorable_key(key: &str) -> Option<String> {
    if key.split('/').any(|s| s.len() > MAX_SEGMENT_BYTES) {
        return Some(format!(
            "object key has a segment longer than {MAX_SEGMENT_BYTES} bytes"
        ));
    }
    let last = key.rsplit('/').next().unwrap_or(key);
    match last.rsplit_once('#') {
        Some((_, digits)) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some("object key ends in `#<digits>`, reserved for uploads in progress".into())
        }
        _ => None,
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What a path addresses.
enum Target {
    Exchange,
    File(Path),
    Stat(Path),
}

struct Route {
    channel: Channel,
    target: Target,
    /// The decoded key, for the namespace check.
    key: Option<String>,
}

impl Route {
    fn allow(&self) -> &'static str {
        match self.target {
            Target::Exchange => "POST",
            Target::File(_) => "GET, HEAD, PUT, DELETE",
            Target::Stat(_) => "GET",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match self.target {
            Target::Exchange => method == Method::POST,
            Target::File(_) => {
                [Method::GET, Method::HEAD, Method::PUT, Method::DELETE].contains(method)
            }
            Target::Stat(_) => method == Method::GET,
        }
    }
}

fn parse_route(path: &str, method: &Method) -> Result<Route, Box<Response<ResponseBody>>> {
    let (channel, tail) = match path.strip_prefix("/apps/") {
        Some(rest) => {
            let (app, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if !valid_app_id(app) {
                return Err(Box::new(error_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid app id {app:?} in the path: 1..=64 letters, digits, '-', '_' \
                         or '.'"
                    ),
                )));
            }
            (Channel::App(app.to_string()), tail)
        }
        None => (Channel::Drive, path),
    };
    if tail == "/sync/exchange" {
        return Ok(Route {
            channel,
            target: Target::Exchange,
            key: None,
        });
    }
    let Some(raw) = tail.strip_prefix("/files/") else {
        return Err(Box::new(error_response(
            StatusCode::NOT_FOUND,
            format!("no route {path}"),
        )));
    };
    // `GET .../files/{key}/stat` is the stat route; a key whose last segment really is
    // `stat` is sent encoded (`%73tat`) by the client.
    let (raw, stat) = match raw.strip_suffix("/stat") {
        Some(k) if method == Method::GET => (k, true),
        _ => (raw, false),
    };
    let key = decode_key(raw).map_err(|m| error_response(StatusCode::BAD_REQUEST, m))?;
    if let Some(m) = unstorable_key(&key) {
        return Err(Box::new(error_response(StatusCode::BAD_REQUEST, m)));
    }
    let parsed = Path::parse(&key)
        .map_err(|e| error_response(StatusCode::BAD_REQUEST, format!("invalid object key: {e}")))?;
    Ok(Route {
        channel,
        target: if stat {
            Target::Stat(parsed)
        } else {
            Target::File(parsed)
        },
        key: Some(key),
    })
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range; anything else is ignored, as RFC 9110
/// allows).
fn parse_range(headers: &HeaderMap) -> Option<GetRange> {
    let spec = headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .trim()
        .strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    match (start.trim(), end.trim()) {
        ("", n) => Some(GetRange::Suffix(n.parse().ok()?)),
        (s, "") => Some(GetRange::Offset(s.parse().ok()?)),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().ok()?, e.parse().ok()?);
            (s <= e).then(|| GetRange::Bounded(s..e.saturating_add(1)))
        }
    }
}

/// The concrete byte range of `range` in an object of `size` bytes; `None` if unsatisfiable.
fn resolve_range(range: &GetRange, size: u64) -> Option<std::ops::Range<u64>> {
    let r = match range {
        GetRange::Bounded(r) => r.start..r.end.min(size),
        GetRange::Offset(o) => *o..size,
        GetRange::Suffix(n) => size.saturating_sub(*n)..size,
    };
    (r.start < r.end).then_some(r)
}

impl Inner {
    async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let (parts, body) = request.into_parts();
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        if path == "/health" {
            return if method == Method::GET || method == Method::HEAD {
                json_response(StatusCode::OK, json!({ "status": "ok" }))
            } else {
                method_not_allowed(&method, "GET, HEAD")
            };
        }
        if path == "/metrics" {
            if method != Method::GET && method != Method::HEAD {
                return method_not_allowed(&method, "GET, HEAD");
            }
            return match self.auth.admit_metrics(&parts.headers) {
                Ok(()) => {
                    let mut r = Response::new(full_body(self.metrics.render()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                }
                Err(f) => auth_failure(f),
            };
        }
        let route = match parse_route(&path, &method) {
            Ok(r) => r,
            Err(response) => return *response,
        };
        if !route.allows(&method) {
            return method_not_allowed(&method, route.allow());
        }
        let streamed = method == Method::PUT;
        let admission = match self.auth.admit(
            method.as_str(),
            &path,
            &parts.headers,
            &route.channel,
            streamed,
        ) {
            Ok(a) => a,
            Err(f) => return auth_failure(f),
        };
        let Some(responder) = self.provider.responder(&route.channel) else {
            return coded_error_response(
                StatusCode::NOT_FOUND,
                error_code::UNKNOWN_APP,
                match &route.channel {
                    Channel::App(app) => format!("unknown app {app}: it is not registered here"),
                    Channel::Drive => "the Drive channel is not served here".to_string(),
                },
            );
        };
        if let Some(key) = &route.key {
            if !in_namespace(&route.channel, key) {
                return error_response(
                    StatusCode::FORBIDDEN,
                    format!(
                        "key {key:?} is outside the {} channel's namespace {}...",
                        route.channel,
                        route.channel.key_prefix()
                    ),
                );
            }
        }
        match route.target {
            Target::Exchange => {
                self.exchange(&parts.headers, body, admission, responder)
                    .await
            }
            Target::File(key) if method == Method::PUT => {
                self.put(&parts.headers, body, key, admission).await
            }
            Target::Stat(key) => match self.verify_bodiless(admission) {
                Ok(()) => self.stat(&key).await,
                Err(f) => auth_failure(f),
            },
            Target::File(key) => match self.verify_bodiless(admission) {
                Ok(()) if method == Method::DELETE => self.delete(&key).await,
                Ok(()) => self.get(&parts.headers, &key, method == Method::HEAD).await,
                Err(f) => auth_failure(f),
            },
        }
    }

    /// Bodiless routes: a signature covers an empty body.
    fn verify_bodiless(&self, admission: Admission) -> Result<(), AuthFailure> {
        match admission {
            Admission::Signed(pending) => self.auth.verify(pending, None),
            Admission::Granted => Ok(()),
        }
    }

    async fn exchange<B>(
        &self,
        headers: &HeaderMap,
        body: B,
        admission: Admission,
        responder: Arc<dyn ExchangeTransport>,
    ) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let Some(codec) = content_type.as_deref().and_then(Codec::from_content_type) else {
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type {:?}: send application/json or \
                     application/msgpack",
                    content_type.unwrap_or_default()
                ),
            );
        };
        let limit = self.config.exchange_body_limit;
        let too_large = || {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("exchange body larger than {limit} bytes: lower the page limit"),
            )
        };
        if content_length(headers).is_some_and(|n| n > limit as u64) {
            return too_large();
        }
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return too_large(),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                )
            }
        };
        if let Admission::Signed(mut pending) = admission {
            // The signature covers the body as sent (compressed or not).
            pending.update(&bytes);
            if let Err(f) = self.auth.verify(pending, None) {
                return auth_failure(f);
            }
        }
        let bytes = match encoding::content_coding(headers) {
            Ok(false) => bytes,
            Ok(true) if self.config.compression => match encoding::decompress(&bytes, limit) {
                Ok(inflated) => Bytes::from(inflated),
                Err(encoding::Inflate::TooLarge) => return too_large(),
                Err(encoding::Inflate::Invalid(e)) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        format!("invalid zstd request body: {e}"),
                    )
                }
            },
            Ok(true) | Err(_) => {
                return error_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "unsupported content encoding {:?}: send the body uncompressed{}",
                        headers
                            .get(header::CONTENT_ENCODING)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .unwrap_or_default(),
                        if self.config.compression {
                            " or as zstd"
                        } else {
                            ""
                        }
                    ),
                )
            }
        };
        // The decode error names the format (JSON or MessagePack) and the offending field.
        if let Err(m) = require_map(codec, &bytes) {
            return error_response(StatusCode::BAD_REQUEST, m);
        }
        let request: ExchangeRequest = match codec.decode(&bytes) {
            Ok(r) => r,
            Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let _permit = match self.exchanges.acquire().await {
            Ok(p) => p,
            Err(_) => {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, "server shutting down")
            }
        };
        let compress =
            self.config.compression && encoding::lists_zstd(headers, &header::ACCEPT_ENCODING);
        match responder.exchange(request).await {
            Ok(response) => match codec.encode(&response) {
                Ok(encoded) => {
                    let packed = compress && encoded.len() >= encoding::MIN_COMPRESSED;
                    let body = if packed {
                        encoding::compress(&encoded)
                    } else {
                        encoded
                    };
                    let mut r = Response::new(full_body(body));
                    let h = r.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(codec.content_type()),
                    );
                    if self.config.compression {
                        // RFC 7694: this server takes zstd request bodies.
                        h.insert(
                            header::ACCEPT_ENCODING,
                            HeaderValue::from_static(encoding::ZSTD),
                        );
                        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
                    }
                    if packed {
                        h.insert(
                            header::CONTENT_ENCODING,
                            HeaderValue::from_static(encoding::ZSTD),
                        );
                    }
                    r
                }
                Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Err(e) => exchange_failure(e),
        }
    }

    async fn get(&self, headers: &HeaderMap, key: &Path, head: bool) -> Response<ResponseBody> {
        let mut options = GetOptions::new().with_head(head);
        let mut partial = false;
        if let Some(range) = parse_range(headers).filter(|_| !head) {
            let meta = match self.blobs.head(key).await {
                Ok(m) => m,
                Err(e) => return store_failure(e),
            };
            match resolve_range(&range, meta.size) {
                Some(r) => {
                    options = options.with_range(Some(r));
                    partial = true;
                }
                None => {
                    let mut r = error_response(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        format!("range outside the object's {} bytes", meta.size),
                    );
                    r.headers_mut().insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{}", meta.size))
                            .unwrap_or_else(|_| HeaderValue::from_static("bytes */0")),
                    );
                    return r;
                }
            }
        }
        let result = match self.blobs.get_opts(key, options).await {
            Ok(r) => r,
            Err(e) => return store_failure(e),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let mut response = Response::new(empty_body());
        let h = response.headers_mut();
        let ct = result
            .attributes
            .get(&Attribute::ContentType)
            .and_then(|v| HeaderValue::from_str(v).ok())
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        h.insert(header::CONTENT_TYPE, ct);
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(tag) = result
            .meta
            .e_tag
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            h.insert(header::ETAG, tag);
        }
        if let Ok(v) = HeaderValue::from_str(
            &result
                .meta
                .last_modified
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        ) {
            h.insert(header::LAST_MODIFIED, v);
        }
        if partial {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) =
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", range.start, range.end - 1))
            {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        let length = if head { size } else { range.end - range.start };
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if !head {
            let stream = (self.object_body)(result)
                .map_ok(Frame::data)
                .map_err(|e| -> BoxError { Box::new(e) });
            *response.body_mut() = http_body_util::StreamBody::new(stream).boxed_unsync();
        }
        response
    }

    async fn stat(&self, key: &Path) -> Response<ResponseBody> {
        match self.blobs.head(key).await {
            Ok(meta) => json_response(StatusCode::OK, json!({ "sizeBytes": meta.size })),
            Err(e) => store_failure(e),
        }
    }

    async fn delete(&self, key: &Path) -> Response<ResponseBody> {
        match self.blobs.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                let mut r = Response::new(empty_body());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            // Nothing at a key that collides with the filesystem layout either.
            Err(e) if is_path_conflict(&e) => {
                let mut r = Response::new(empty_body());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            Err(e) => store_failure(e),
        }
    }

    /// Streams an upload into the store: small bodies in one put, larger ones part by part
    /// through a multipart upload that is completed only once the whole body arrived within
    /// the cap and its signature (if any) checked out, and aborted otherwise. Nothing is
    /// visible before that, and memory holds about one part.
    async fn put<B>(
        &self,
        headers: &HeaderMap,
        body: B,
        key: Path,
        admission: Admission,
    ) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let limit = self.config.blob_body_limit;
        let too_large = || {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("upload larger than the server's {limit}-byte blob limit"),
            )
        };
        if content_length(headers).is_some_and(|n| n > limit) {
            return too_large();
        }
        let mut attributes = Attributes::new();
        if let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| self.config.store_content_type)
        {
            attributes.insert(Attribute::ContentType, AttributeValue::from(ct.to_string()));
        }
        let mut pending = match admission {
            Admission::Signed(p) => Some(p),
            Admission::Granted => None,
        };
        let part_size = self.config.blob_part_size;
        let mut body = Box::pin(body);
        let mut buffered: Vec<Bytes> = Vec::new();
        let mut buffered_len = 0usize;
        let mut total = 0u64;
        // Hashed as it streams, for the blob store (see `blob_store`).
        let mut sha256 = self.blob_store.as_ref().map(|_| Sha256::new());
        let mut upload: Option<Box<dyn MultipartUpload>> = None;
        let mut trailer_sig: Option<String> = None;

        let streamed: Result<(), Box<Response<ResponseBody>>> = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    Box::new(error_response(
                        StatusCode::BAD_REQUEST,
                        format!("the upload body failed mid-stream: {}", e.into()),
                    ))
                })?;
                let data = match frame.into_data() {
                    Ok(d) => d,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            trailer_sig = trailers
                                .get(APP_SIG_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                        }
                        continue;
                    }
                };
                total += data.len() as u64;
                if total > limit {
                    return Err(Box::new(too_large()));
                }
                if let Some(p) = &mut pending {
                    p.update(&data);
                }
                if let Some(h) = &mut sha256 {
                    h.update(&data);
                }
                buffered_len += data.len();
                buffered.push(data);
                if buffered_len >= part_size {
                    if upload.is_none() {
                        // A key that is also the prefix of other objects cannot be completed
                        // on the filesystem store, which then leaves its staged file behind
                        // (object_store's local multipart `complete`): refuse it up front.
                        if matches!(self.blobs.list(Some(&key)).next().await, Some(Ok(_))) {
                            return Err(Box::new(key_collision()));
                        }
                        let opts = PutMultipartOptions::from(attributes.clone());
                        upload = Some(
                            self.blobs
                                .put_multipart_opts(&key, opts)
                                .await
                                .map_err(|e| Box::new(upload_failure(e)))?,
                        );
                    }
                    if let Some(u) = upload.as_mut() {
                        let part: PutPayload = buffered.drain(..).collect();
                        buffered_len = 0;
                        u.put_part(part)
                            .await
                            .map_err(|e| Box::new(upload_failure(e)))?;
                    }
                }
            }
            Ok(())
        }
        .await;
        let verified = streamed.and_then(|()| match pending {
            Some(p) => self
                .auth
                .verify(p, trailer_sig.as_deref())
                .map_err(|f| Box::new(auth_failure(f))),
            None => Ok(()),
        });
        if let Err(response) = verified {
            if let Some(mut u) = upload {
                let _ = u.abort().await;
            }
            return *response;
        }
        let rest: PutPayload = buffered.into_iter().collect();
        let stored = match upload {
            Some(mut u) => {
                let last = if rest.content_length() > 0 {
                    u.put_part(rest).await
                } else {
                    Ok(())
                };
                match last {
                    Ok(()) => u.complete().await,
                    Err(e) => {
                        let _ = u.abort().await;
                        Err(e)
                    }
                }
            }
            None => {
                self.blobs
                    .put_opts(&key, rest, PutOptions::from(attributes))
                    .await
            }
        };
        // Durable before acknowledged: the requester ships the metadata that names the blob
        // once this answer says it is stored.
        let stored = match (stored, &self.blob_store) {
            (Ok(result), Some(store)) => match store.sync().await {
                Ok(()) => {
                    if let Some(h) = sha256 {
                        let stamp = BlobStamp::new(total, result.e_tag.clone());
                        store.note_written(key.as_ref(), &hex::encode(h.finalize()), &stamp);
                    }
                    Ok(result)
                }
                Err(e) => return unavailable(format!("the upload could not be made durable: {e}")),
            },
            (stored, _) => stored,
        };
        match stored {
            Ok(result) => {
                let mut r = json_response(StatusCode::OK, json!({ "sizeBytes": total }));
                if let Some(tag) = result
                    .e_tag
                    .as_deref()
                    .and_then(|t| HeaderValue::from_str(t).ok())
                {
                    r.headers_mut().insert(header::ETAG, tag);
                }
                r
            }
            Err(e) => upload_failure(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(parse_range(&h("bytes=0-9")), Some(GetRange::Bounded(0..10)));
        assert_eq!(parse_range(&h("bytes=5-")), Some(GetRange::Offset(5)));
        assert_eq!(parse_range(&h("bytes=-3")), Some(GetRange::Suffix(3)));
        assert_eq!(parse_range(&h("bytes=9-1")), None);
        assert_eq!(parse_range(&h("bytes=0-1,4-5")), None);
        assert_eq!(parse_range(&h("items=0-1")), None);
        assert_eq!(resolve_range(&GetRange::Bounded(0..100), 10), Some(0..10));
        assert_eq!(resolve_range(&GetRange::Offset(10), 10), None);
        assert_eq!(resolve_range(&GetRange::Suffix(100), 10), Some(0..10));
    }
}
