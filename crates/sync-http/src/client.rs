//! The client: one pooled hyper connection set per peer, shared by the exchange transport of
//! every channel and by the blob client ([`HttpObjectStore`]).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use sync_core::{Channel, ExchangeError, ExchangeTransport};
use sync_protocol::{Codec, ExchangeRequest, ExchangeResponse};

use crate::{
    auth::{system_clock, Signer, WallClock, APP_ID_HEADER, APP_SIG_HEADER, APP_TS_HEADER},
    encoding, Auth, BoxError, Error, HttpObjectStore,
};

/// The request body type of the client.
pub(crate) type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// How much of an error body is kept in an error message.
const ERROR_BODY_BYTES: usize = 4096;

/// Options of an [`HttpClient`]; start with [`HttpClient::builder`].
#[derive(Clone)]
#[must_use]
pub struct HttpClientBuilder {
    base_url: String,
    auth: Auth,
    codec: Codec,
    connect_timeout: Duration,
    request_timeout: Duration,
    pool_idle_timeout: Duration,
    max_response_bytes: usize,
    clock: WallClock,
    compression: bool,
}

impl HttpClientBuilder {
    /// Whether exchange bodies are compressed (zstd) where the peer takes it (default on):
    /// responses when the server can, requests once the server said it accepts them. A
    /// peer without it (the TypeScript reference) gets plain bodies.
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// The credentials sent with every request (default: none).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// The exchange body format (default MessagePack; JSON for a TypeScript-style peer).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long establishing a TCP connection may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an exchange may take end to end, and a blob request until its response
    /// headers (default 60 s). Blob bodies stream without a total deadline.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long an idle pooled connection is kept for reuse (default 90 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Largest exchange response accepted (default 256 MiB).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The wall clock that stamps app signatures, in milliseconds since the Unix epoch
    /// (default: the system clock). Tests inject their own.
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the client. Only `http://` URLs are supported: put TLS in front with a proxy.
    pub fn build(self) -> Result<HttpClient, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: self.base_url.clone(),
            reason: reason.into(),
        };
        let uri: Uri = self
            .base_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "https is not supported by this client; terminate TLS in a proxy and use \
                     http:// on the private side",
                ))
            }
            _ => return Err(invalid("expected an absolute http:// URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("the URL has no host"))?
            .clone();
        if uri.query().is_some() {
            return Err(invalid("the base URL may not have a query"));
        }
        // Trailing slashes are stripped, as the TypeScript client does.
        let prefix = uri.path().trim_end_matches('/').to_string();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .build(connector);
        Ok(HttpClient {
            inner: Arc::new(ClientInner {
                http,
                origin: format!("http://{authority}"),
                prefix,
                auth: self.auth,
                codec: self.codec,
                request_timeout: self.request_timeout,
                max_response_bytes: self.max_response_bytes,
                clock: self.clock,
                last_ts: AtomicU64::new(0),
                compression: self.compression,
                peer_takes_zstd: AtomicBool::new(false),
            }),
        })
    }
}

/// A client of one peer (a `starkeep-sync serve`, or any host mounting [`SyncService`]),
/// cheap to clone: connections are pooled and reused by every channel's transport and blob
/// store made from it.
///
/// [`SyncService`]: crate::SyncService
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: Client<HttpConnector, ReqBody>,
    origin: String,
    prefix: String,
    auth: Auth,
    codec: Codec,
    request_timeout: Duration,
    max_response_bytes: usize,
    clock: WallClock,
    /// The last signature timestamp: each is strictly greater, so two identical requests
    /// in the same millisecond do not look like a replay to the server.
    last_ts: AtomicU64,
    /// Compress exchange bodies where the peer takes it.
    compression: bool,
    /// The peer announced (`Accept-Encoding: zstd` on an exchange response) that it takes
    /// compressed request bodies.
    peer_takes_zstd: AtomicBool,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("base_url", &self.base_url())
            .field("auth", &self.inner.auth)
            .field("codec", &self.inner.codec)
            .finish()
    }
}

impl HttpClient {
    /// Options for a client of the peer at `base_url` (e.g. `http://127.0.0.1:8080`; the
    /// Drive channel is served at its root, app `X` at `/apps/X` below it).
    pub fn builder(base_url: impl Into<String>) -> HttpClientBuilder {
        HttpClientBuilder {
            base_url: base_url.into(),
            auth: Auth::None,
            codec: Codec::MessagePack,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            max_response_bytes: 256 << 20,
            clock: system_clock(),
            compression: true,
        }
    }

    /// A client with default options.
    pub fn new(base_url: impl Into<String>, auth: Auth) -> Result<Self, Error> {
        Self::builder(base_url).auth(auth).build()
    }

    /// The exchange transport of `channel` (`POST {base}/sync/exchange`).
    pub fn transport(&self, channel: Channel) -> HttpTransport {
        HttpTransport {
            client: self.clone(),
            codec: self.inner.codec,
            channel,
        }
    }

    /// The blob store of `channel` over the peer's `{base}/files/{key}` routes.
    pub fn object_store(&self, channel: Channel) -> HttpObjectStore {
        HttpObjectStore::new(self.clone(), channel)
    }

    /// The peer's base URL, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("{}{}", self.inner.origin, self.inner.prefix)
    }

    /// The request path of `route` on `channel` (what is sent and signed).
    pub(crate) fn path(&self, channel: &Channel, route: &str) -> String {
        format!("{}{}{route}", self.inner.prefix, channel.base_path())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Adds the credentials for a request whose whole body is `body`.
    pub(crate) fn authorize(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
        body: &[Bytes],
    ) {
        if let Some(mut signer) = self.start_signature(headers, method, path) {
            for chunk in body {
                signer.update(chunk);
            }
            headers.insert(APP_SIG_HEADER, header_value(&signer.finish_hex()));
        }
    }

    /// Adds the credentials for a streamed body; for an app signature the signature goes
    /// in a trailer and the returned signer must be fed the body.
    pub(crate) fn authorize_streamed(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
    ) -> Option<Signer> {
        let signer = self.start_signature(headers, method, path)?;
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("x-starkeep-app-sig"),
        );
        Some(signer)
    }

    fn start_signature(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
    ) -> Option<Signer> {
        match &self.inner.auth {
            Auth::None => None,
            Auth::Bearer(token) => {
                headers.insert(
                    header::AUTHORIZATION,
                    header_value(&format!("Bearer {token}")),
                );
                None
            }
            Auth::AppSignature { app_id, secret } => {
                let now = (self.inner.clock)();
                let previous = self
                    .inner
                    .last_ts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                        Some(now.max(last + 1))
                    })
                    .unwrap_or_else(|last| last);
                let ts = now.max(previous + 1);
                headers.insert(APP_ID_HEADER, header_value(app_id));
                headers.insert(APP_TS_HEADER, HeaderValue::from(ts));
                Some(Signer::new(
                    secret.as_bytes(),
                    app_id,
                    method.as_str(),
                    path,
                    ts,
                ))
            }
        }
    }

    /// Sends a request; the deadline covers the response head.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: ReqBody,
        deadline: Option<Instant>,
    ) -> Result<Response<Incoming>, Error> {
        let uri = format!("{}{path}", self.inner.origin);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .body(body)
            .map_err(|e| Error::Config(format!("cannot build a request for {uri}: {e}")))?;
        *request.headers_mut() = headers;
        let sent = self.inner.http.request(request);
        let result = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), sent)
                .await
                .map_err(|_| self.timeout(&method, path))?,
            None => sent.await,
        };
        result.map_err(|e| {
            let message = if e.is_connect() {
                format!("cannot connect to {}: {}", self.inner.origin, chain(&e))
            } else {
                chain(&e)
            };
            Error::Connection {
                method: method.to_string(),
                path: path.into(),
                message,
                source: Some(Box::new(e)),
            }
        })
    }

    pub(crate) fn timeout(&self, method: &Method, path: &str) -> Error {
        Error::Timeout {
            method: method.to_string(),
            path: path.into(),
            millis: self.inner.request_timeout.as_millis(),
        }
    }

    /// The error for a non-success response, with (the start of) its body text.
    pub(crate) async fn status_error(
        &self,
        method: &Method,
        path: &str,
        response: Response<Incoming>,
        deadline: Instant,
    ) -> Error {
        let status = response.status();
        let body = match tokio::time::timeout_at(
            deadline.into(),
            Limited::new(response.into_body(), ERROR_BODY_BYTES).collect(),
        )
        .await
        {
            Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            _ => String::new(),
        };
        let reason = status.canonical_reason().unwrap_or("");
        Error::Status {
            method: method.to_string(),
            path: path.into(),
            status: status.as_u16(),
            body: if body.is_empty() {
                reason.to_string()
            } else {
                format!("{reason}: {body}")
            },
        }
    }
}

fn header_value(s: &str) -> HeaderValue {
    // Credentials with bytes that cannot appear in a header are sent as an empty value and
    // refused by the server with a 401 rather than failing here.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An error and its sources, one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// The exchange transport over HTTP: `POST {base}/sync/exchange` of one channel.
///
/// Every response is validated before the round sees it: a wrong content type, a missing
/// `hasMore` or `responderWatermarks`, a malformed HLC or node id is
/// [`ExchangeError::MalformedResponse`] naming the field; never a default value.
#[derive(Clone, Debug)]
pub struct HttpTransport {
    client: HttpClient,
    codec: Codec,
    channel: Channel,
}

impl HttpTransport {
    /// The transport of `channel` on `client`'s peer.
    pub fn new(client: &HttpClient, channel: Channel) -> Self {
        client.transport(channel)
    }

    /// Uses `codec` for this transport's bodies.
    #[must_use]
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The channel this transport exchanges on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The body format in use.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    async fn round_trip(&self, request: &ExchangeRequest) -> Result<ExchangeResponse, Error> {
        let method = Method::POST;
        let path = self.client.path(&self.channel, "/sync/exchange");
        let malformed = |message: String| Error::MalformedResponse {
            method: method.to_string(),
            path: path.clone(),
            message,
        };
        let encoded = self
            .codec
            .encode(request)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_static(self.codec.content_type());
        headers.insert(header::CONTENT_TYPE, content_type.clone());
        headers.insert(header::ACCEPT, content_type);
        let inner = &self.client.inner;
        let body = if inner.compression {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static(encoding::ZSTD),
            );
            if inner.peer_takes_zstd.load(Ordering::Relaxed)
                && encoded.len() >= encoding::MIN_COMPRESSED
            {
                headers.insert(
                    header::CONTENT_ENCODING,
                    HeaderValue::from_static(encoding::ZSTD),
                );
                Bytes::from(encoding::compress(&encoded))
            } else {
                Bytes::from(encoded)
            }
        } else {
            Bytes::from(encoded)
        };
        self.client
            .authorize(&mut headers, &method, &path, std::slice::from_ref(&body));
        let deadline = Instant::now() + self.client.request_timeout();
        let response = self
            .client
            .send(method.clone(), &path, headers, full(body), Some(deadline))
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self
                .client
                .status_error(&method, &path, response, deadline)
                .await);
        }
        if status != StatusCode::OK {
            return Err(malformed(format!("expected 200, got {status}")));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if Codec::from_content_type(content_type) != Some(self.codec) {
            return Err(malformed(format!(
                "content type {content_type:?} is not the {} that was sent ({})",
                self.codec,
                self.codec.content_type()
            )));
        }
        if inner.compression {
            inner.peer_takes_zstd.store(
                encoding::lists_zstd(response.headers(), &header::ACCEPT_ENCODING),
                Ordering::Relaxed,
            );
        }
        let compressed = match encoding::content_coding(response.headers()) {
            Ok(compressed) if !compressed || inner.compression => compressed,
            Ok(_) => return Err(malformed("a zstd body that was not asked for".into())),
            Err(other) => return Err(malformed(format!("unsupported content encoding {other:?}"))),
        };
        let limit = self.client.inner.max_response_bytes;
        let collected = tokio::time::timeout_at(
            deadline.into(),
            Limited::new(response.into_body(), limit).collect(),
        )
        .await
        .map_err(|_| self.client.timeout(&method, &path))?;
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(malformed(format!("body larger than {limit} bytes")))
            }
            Err(e) => {
                return Err(Error::Connection {
                    method: method.to_string(),
                    path: path.clone(),
                    message: format!("reading the response body: {}", chain(&*e)),
                    source: Some(e),
                })
            }
        };
        let bytes = if compressed {
            match encoding::decompress(&bytes, limit) {
                Ok(inflated) => Bytes::from(inflated),
                Err(encoding::Inflate::TooLarge) => {
                    return Err(malformed(format!("body inflates past {limit} bytes")))
                }
                Err(encoding::Inflate::Invalid(e)) => {
                    return Err(malformed(format!("invalid zstd body: {e}")))
                }
            }
        } else {
            bytes
        };
        require_map(self.codec, &bytes).map_err(malformed)?;
        self.codec
            .decode::<ExchangeResponse>(&bytes)
            .map_err(|e| malformed(e.to_string()))
    }
}

#[async_trait]
impl ExchangeTransport for HttpTransport {
    async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        self.round_trip(&request).await.map_err(exchange_error)
    }
}

/// Refuses a body that is not a map at the top level. The serde-derived decoders also
/// accept a struct written as a positional array (`[]` decodes as an empty request), which
/// is no form either peer writes.
pub(crate) fn require_map(codec: Codec, bytes: &[u8]) -> Result<(), String> {
    let is_map = match codec {
        Codec::Json => bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{'),
        // fixmap, map 16, map 32
        Codec::MessagePack => bytes
            .first()
            .is_some_and(|b| (0x80..=0x8f).contains(b) || *b == 0xde || *b == 0xdf),
    };
    if is_map {
        Ok(())
    } else {
        Err(format!(
            "invalid {codec} body at `.`: expected an object (a map) at the top level"
        ))
    }
}

/// A whole request refused for a reason with a stable code (the server's JSON error body
/// `{"error", "code"}`): a channel violation, an app not served here, a channel not
/// configured. Other 4xx answers stay [`ExchangeError::BadRequest`].
fn refusal_of(e: &Error) -> Option<ExchangeError> {
    use sync_protocol::error_code::{CHANNEL_NOT_CONFIGURED, CHANNEL_VIOLATION, UNKNOWN_APP};
    let Error::Status { body, .. } = e else {
        return None;
    };
    // `{reason}: {body}`, the body a JSON object (unless truncated: then no code).
    let json = &body[body.find('{')?..];
    let body: serde_json::Value = serde_json::from_str(json).ok()?;
    let code = body.get("code")?.as_str()?;
    let code = [CHANNEL_VIOLATION, UNKNOWN_APP, CHANNEL_NOT_CONFIGURED]
        .into_iter()
        .find(|known| *known == code)?;
    let message = body
        .get("error")
        .and_then(|m| m.as_str())
        .unwrap_or(code)
        .to_string();
    Some(ExchangeError::Refused { code, message })
}

/// How a client error is reported to the round.
fn exchange_error(e: Error) -> ExchangeError {
    match &e {
        Error::Status { status, .. } => match *status {
            401 | 403 => ExchangeError::Unauthorized(e.to_string()),
            s if e.is_transient() || s >= 500 => ExchangeError::Transient {
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            400..=499 => match refusal_of(&e) {
                Some(refused) => refused,
                None => ExchangeError::BadRequest(e.to_string()),
            },
            _ => ExchangeError::MalformedResponse(e.to_string()),
        },
        Error::MalformedResponse { .. } => ExchangeError::MalformedResponse(e.to_string()),
        _ if e.is_transient() => ExchangeError::Transient {
            message: e.to_string(),
            source: Some(Box::new(e)),
        },
        _ => ExchangeError::Fatal {
            message: e.to_string(),
            source: Some(Box::new(e)),
        },
    }
}
