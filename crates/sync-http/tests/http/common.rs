//! Shared fixtures: a cloud (responders on in-memory ports, blobs in `InMemory`) served over
//! real loopback HTTP, local nodes that run rounds through `HttpTransport`, and a raw client.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use object_store::{memory::InMemory, path::Path, ObjectStore, ObjectStoreExt};
use serde_json::json;
use sync_core::{
    AppNamespace, AppRowStore, BlobDigest, BlobError, BlobManifest, BlobStamp, BlobStore,
    BlobTransfer, Channel, ChannelData, ExchangeTransport, RecordStore, Requester, RequesterParts,
    Responder, ResponderConfig, ResponderParts, RoundConfig, SharedClock, TableSpec, TimeSource,
    Transferred,
};
use sync_hlc::{Clock, ClockConfig, Hlc, NodeId};
use sync_http::{serve, Auth, HttpClient, HttpObjectStore, Scope, SyncService, SyncServiceBuilder};
use sync_protocol::{AppRow, Codec, RowOp, RowValues, SharedRecord, RESERVED_TABLE};
use sync_testkit::memory::{
    sha256_hex, Faults, ManualTime, MemoryAppRowStore, MemoryBlobs, MemoryRecordStore,
    MemorySyncState,
};
use tokio::sync::oneshot;

pub const APP: &str = "test-app";
pub const TABLE: &str = "test_rows";
pub const APP_SECRET: &str = "test-app-secret";
pub const TOKEN_ALL: &str = "token-all";
pub const TOKEN_DRIVE: &str = "token-drive";
pub const TOKEN_APP: &str = "token-app";

pub fn app() -> Channel {
    Channel::App(APP.into())
}

pub fn namespace() -> AppNamespace {
    AppNamespace::new(APP, vec![TableSpec::new(TABLE, &["id"])])
}

/// The app of the TypeScript samples.
pub fn photos_namespace() -> AppNamespace {
    AppNamespace::new("photos", vec![TableSpec::new("albums", &["id"])])
}

/// Wall time for both sides' HLCs (the reference harness's ticking clock).
pub fn shared_time() -> Arc<ManualTime> {
    ManualTime::new(1_700_000_000_000, 1)
}

/// Physical time of the HTTP signatures: the real clock, read by client and server alike.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The responder's `BlobStore` port over the server's object store (a `HEAD`, and a read
/// to verify a blob against its SHA-256).
pub struct StoreBlobs(pub Arc<dyn ObjectStore>);

fn store_path(key: &str) -> Result<Path, BlobError> {
    Path::parse(key).map_err(|e| BlobError::InvalidKey {
        key: key.into(),
        reason: e.to_string(),
    })
}

fn store_error(key: &str, e: object_store::Error) -> BlobError {
    BlobError::Transient {
        key: key.into(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

#[async_trait]
impl BlobStore for StoreBlobs {
    async fn contains(&self, key: &str) -> Result<bool, BlobError> {
        Ok(self.stamp(key).await?.is_some())
    }

    async fn stamp(&self, key: &str) -> Result<Option<BlobStamp>, BlobError> {
        match self.0.head(&store_path(key)?).await {
            Ok(meta) => Ok(Some(BlobStamp::new(meta.size, meta.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(key, e)),
        }
    }

    async fn digest(&self, key: &str) -> Result<BlobDigest, BlobError> {
        let found = match self.0.get(&store_path(key)?).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(BlobDigest::Absent),
            Err(e) => return Err(store_error(key, e)),
        };
        let stamp = BlobStamp::new(found.meta.size, found.meta.e_tag.clone());
        let bytes = found.bytes().await.map_err(|e| store_error(key, e))?;
        Ok(BlobDigest::Sha256 {
            hex: sha256_hex(&bytes),
            stamp,
        })
    }
}

/// The server side: in-memory records and rows, blobs in `InMemory`.
pub struct Cloud {
    pub records: Arc<MemoryRecordStore>,
    pub rows: Arc<MemoryAppRowStore>,
    pub blobs: Arc<InMemory>,
    pub clock: SharedClock,
    pub time: Arc<dyn TimeSource>,
}

impl Cloud {
    pub async fn new(time: Arc<dyn TimeSource>) -> Arc<Self> {
        let faults = Faults::new();
        let rows = Arc::new(MemoryAppRowStore::new(faults.clone()));
        rows.register(namespace()).await.unwrap();
        rows.register(photos_namespace()).await.unwrap();
        Arc::new(Self {
            records: Arc::new(MemoryRecordStore::new(faults)),
            rows,
            blobs: Arc::new(InMemory::new()),
            clock: Arc::new(Mutex::new(Clock::new(
                NodeId::new("cloud").unwrap(),
                ClockConfig::default(),
            ))),
            time,
        })
    }

    pub fn responder(&self, channel: &Channel) -> Responder {
        let records: Arc<dyn RecordStore> = self.records.clone();
        let rows: Arc<dyn AppRowStore> = self.rows.clone();
        let store: Arc<dyn ObjectStore> = self.blobs.clone();
        Responder::new(ResponderParts {
            data: ChannelData::new(channel.clone(), Some(records), Some(rows)),
            blobs: Arc::new(StoreBlobs(store)),
            clock: self.clock.clone(),
            time: self.time.clone(),
            config: ResponderConfig::default(),
        })
    }

    /// Responders for Drive, `test-app` and `photos`; any other app is unknown.
    pub fn responders(&self) -> HashMap<Channel, Arc<dyn ExchangeTransport>> {
        [Channel::Drive, app(), Channel::App("photos".into())]
            .into_iter()
            .map(|c| {
                let r: Arc<dyn ExchangeTransport> = Arc::new(self.responder(&c));
                (c, r)
            })
            .collect()
    }

    pub fn now(&self) -> Hlc {
        let now = self.time.now_ms();
        self.clock.lock().unwrap().now(now)
    }

    /// Stores a record authored here, with its blob in the object store.
    pub async fn put_record(&self, id: &str, blob: &[u8]) -> SharedRecord {
        let hash = sha256_hex(blob);
        let key = format!("shared/cloud/{}/{hash}", &hash[..2]);
        self.blobs
            .put(
                &Path::parse(&key).unwrap(),
                Bytes::copy_from_slice(blob).into(),
            )
            .await
            .unwrap();
        let r = record(id, self.now(), &key, &hash, blob.len());
        self.records.apply(std::slice::from_ref(&r)).await.unwrap();
        r
    }

    /// Stores an app row authored here (reserved table: with its blob).
    pub async fn put_row(&self, table: &str, id: &str, blob: Option<&[u8]>) -> AppRow {
        let at = self.now();
        let mut key = String::new();
        if let Some(b) = blob {
            key = format!("apps/{APP}/syncable/{}", sha256_hex(b));
            self.blobs
                .put(
                    &Path::parse(&key).unwrap(),
                    Bytes::copy_from_slice(b).into(),
                )
                .await
                .unwrap();
        }
        let r = row(table, id, at, &key, blob);
        self.rows.apply(std::slice::from_ref(&r)).await.unwrap();
        r
    }

    pub async fn has_blob(&self, key: &str) -> bool {
        self.blobs.head(&Path::parse(key).unwrap()).await.is_ok()
    }

    pub async fn blob(&self, key: &str) -> Bytes {
        self.blobs
            .get(&Path::parse(key).unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }

    /// Everything stored, to check that refused requests wrote nothing.
    pub async fn snapshot(&self) -> String {
        use futures::TryStreamExt;
        let metas: Vec<_> = self.blobs.list(None).try_collect().await.unwrap();
        let mut keys: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        keys.sort();
        format!(
            "{:?}|{:?}|{:?}|{:?}",
            self.records.all(),
            self.rows.all(APP),
            self.rows.all("photos"),
            keys
        )
    }
}

pub fn record(id: &str, at: Hlc, key: &str, hash: &str, size: usize) -> SharedRecord {
    SharedRecord {
        id: id.into(),
        kind: "data".into(),
        record_type: "application/octet-stream".into(),
        created_at: at.clone(),
        updated_at: at,
        deleted_at: None,
        version: 1,
        content_hash: hash.into(),
        object_storage_key: key.into(),
        mime_type: Some("application/octet-stream".into()),
        size_bytes: size as u64,
        original_filename: Some(format!("{id}.bin")),
        origin_app_id: "test".into(),
        parent_id: None,
        label: None,
    }
}

pub fn row(table: &str, id: &str, at: Hlc, key: &str, blob: Option<&[u8]>) -> AppRow {
    let mut values = RowValues::new();
    values.insert("id".into(), json!(id));
    if table == RESERVED_TABLE {
        values.insert("object_storage_key".into(), json!(key));
        values.insert(
            "content_hash".into(),
            json!(blob.map(sha256_hex).unwrap_or_default()),
        );
        values.insert("mime_type".into(), json!("application/octet-stream"));
        values.insert("size_bytes".into(), json!(blob.map_or(0, <[u8]>::len)));
        values.insert("original_filename".into(), serde_json::Value::Null);
        values.insert("origin_app_id".into(), json!(APP));
        values.insert("created_at".into(), json!(at.to_string()));
        values.insert("updated_at".into(), json!(at.to_string()));
        values.insert("deleted_at".into(), serde_json::Value::Null);
    }
    values.insert("payload".into(), json!(format!("payload of {id}")));
    AppRow {
        timestamp: at,
        app_id: APP.into(),
        table: table.into(),
        op: RowOp::Insert,
        row: Some(values),
        where_: None,
    }
}

/// The standard service: a token for everything, one for Drive, one for the app, and the
/// app's signature secret.
pub fn builder(cloud: &Cloud) -> SyncServiceBuilder {
    let store: Arc<dyn ObjectStore> = cloud.blobs.clone();
    SyncService::builder(cloud.responders(), store)
        .bearer_token(TOKEN_ALL, Scope::All)
        .bearer_token(TOKEN_DRIVE, Scope::Channels(vec![Channel::Drive]))
        .bearer_token(TOKEN_APP, Scope::Channels(vec![app()]))
        .app_secret(APP, APP_SECRET)
}

/// A server on 127.0.0.1 with an ephemeral port; stops (gracefully) when dropped or on
/// [`TestServer::stop`].
pub struct TestServer {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), sync_http::Error>>>,
}

impl TestServer {
    pub async fn start(service: SyncService) -> Self {
        Self::start_service(service).await
    }

    /// Serves any service (a `SyncService` wrapped in more layers).
    pub async fn start_service<S, B>(service: S) -> Self
    where
        S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<sync_http::BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<sync_http::BoxError>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, service, async {
            let _ = stopped.await;
        }));
        Self {
            base,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub fn client(&self, auth: Auth) -> HttpClient {
        HttpClient::new(&self.base, auth).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A local node with in-memory ports whose blobs move over the HTTP blob routes.
pub struct Node {
    pub node: NodeId,
    pub records: Arc<MemoryRecordStore>,
    pub rows: Arc<MemoryAppRowStore>,
    pub state: Arc<MemorySyncState>,
    pub blobs: Arc<MemoryBlobs>,
    pub clock: SharedClock,
    pub time: Arc<dyn TimeSource>,
}

impl Node {
    pub async fn new(name: &str, time: Arc<dyn TimeSource>) -> Self {
        let faults = Faults::new();
        let rows = Arc::new(MemoryAppRowStore::new(faults.clone()));
        rows.register(namespace()).await.unwrap();
        let node = NodeId::new(name).unwrap();
        Self {
            clock: Arc::new(Mutex::new(Clock::new(node.clone(), ClockConfig::default()))),
            node,
            records: Arc::new(MemoryRecordStore::new(faults.clone())),
            rows,
            state: Arc::new(MemorySyncState::new(faults.clone())),
            blobs: Arc::new(MemoryBlobs::new(faults)),
            time,
        }
    }

    pub fn now(&self) -> Hlc {
        let now = self.time.now_ms();
        self.clock.lock().unwrap().now(now)
    }

    pub async fn put_record(&self, id: &str, blob: &[u8]) -> SharedRecord {
        let hash = sha256_hex(blob);
        let key = format!("shared/{}/{}/{hash}", self.node, &hash[..2]);
        self.blobs.insert(&key, blob);
        let r = record(id, self.now(), &key, &hash, blob.len());
        self.records.apply(std::slice::from_ref(&r)).await.unwrap();
        r
    }

    pub async fn put_row(&self, table: &str, id: &str, blob: Option<&[u8]>) -> AppRow {
        let at = self.now();
        let mut key = String::new();
        if let Some(b) = blob {
            key = format!("apps/{APP}/syncable/{}", sha256_hex(b));
            self.blobs.insert(&key, b);
        }
        let r = row(table, id, at, &key, blob);
        self.rows.apply(std::slice::from_ref(&r)).await.unwrap();
        r
    }

    /// A requester for `channel` over HTTP: exchanges through `client.transport(channel)`
    /// with `codec`, blobs through `client.object_store(channel)`.
    pub fn requester(&self, client: &HttpClient, channel: Channel, codec: Codec) -> Requester {
        let records: Arc<dyn RecordStore> = self.records.clone();
        let rows: Arc<dyn AppRowStore> = self.rows.clone();
        Requester::new(RequesterParts {
            data: ChannelData::new(channel.clone(), Some(records), Some(rows)),
            state: self.state.clone(),
            transfer: Arc::new(HttpTransfer {
                local: self.blobs.clone(),
                remote: client.object_store(channel.clone()),
            }),
            transport: Arc::new(client.transport(channel).with_codec(codec)),
            clock: self.clock.clone(),
            time: self.time.clone(),
            config: RoundConfig::default(),
        })
    }
}

/// Moves blobs between a node's memory and the peer's `/files` routes.
pub struct HttpTransfer {
    pub local: Arc<MemoryBlobs>,
    pub remote: HttpObjectStore,
}

fn transient(key: &str, e: object_store::Error) -> BlobError {
    BlobError::Transient {
        key: key.into(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

#[async_trait]
impl BlobTransfer for HttpTransfer {
    async fn push(&self, m: &BlobManifest) -> Result<Transferred, BlobError> {
        let path = Path::parse(&m.key).map_err(|e| BlobError::InvalidKey {
            key: m.key.clone(),
            reason: e.to_string(),
        })?;
        if self.remote.head(&path).await.is_ok() {
            return Ok(Transferred::AlreadyPresent);
        }
        let bytes = self
            .local
            .bytes(&m.key)
            .ok_or(BlobError::NotFound { key: m.key.clone() })?;
        let n = bytes.len() as u64;
        self.remote
            .put(&path, bytes.into())
            .await
            .map_err(|e| transient(&m.key, e))?;
        Ok(Transferred::Copied { bytes: n })
    }

    async fn pull(&self, m: &BlobManifest) -> Result<Transferred, BlobError> {
        if self.local.has(&m.key) {
            return Ok(Transferred::AlreadyPresent);
        }
        let path = Path::parse(&m.key).map_err(|e| BlobError::InvalidKey {
            key: m.key.clone(),
            reason: e.to_string(),
        })?;
        let bytes = match self.remote.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| transient(&m.key, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobError::NotFound { key: m.key.clone() })
            }
            Err(e) => return Err(transient(&m.key, e)),
        };
        self.local.insert(&m.key, &bytes);
        Ok(Transferred::Copied {
            bytes: bytes.len() as u64,
        })
    }
}

/// A raw answer: status, headers, body.
pub struct Raw {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Raw {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/json",
            "error bodies are JSON"
        );
        self.json()["error"]
            .as_str()
            .expect("an `error` string")
            .to_string()
    }
}

/// Sends one request as written, with no credentials unless given in `headers`.
pub async fn raw(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Raw {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .body(Full::new(body.into()))
        .unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Raw {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// The app-signature headers for a request, signed at `ts`.
pub fn signed(
    app: &str,
    secret: &str,
    method: &str,
    path: &str,
    ts: u64,
    body: &[u8],
) -> Vec<(String, String)> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{app}:{method}:{path}:{ts}:").as_bytes());
    mac.update(body);
    vec![
        ("x-starkeep-app-id".into(), app.into()),
        ("x-starkeep-app-ts".into(), ts.to_string()),
        (
            "x-starkeep-app-sig".into(),
            hex::encode(mac.finalize().into_bytes()),
        ),
    ]
}

/// `(&str, &str)` views of owned header pairs.
pub fn h(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}
