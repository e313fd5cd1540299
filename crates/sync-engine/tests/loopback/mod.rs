//! A real server and real nodes on 127.0.0.1, for the end-to-end tests of this crate
//! (`network_faults.rs`, `clocks.rs`): SQLite files and filesystem blobs in a temporary
//! directory, the sync-http `serve` loop and `HttpClient`, built the way the CLI builds them
//! (crates/sync-cli/src/server.rs and node.rs), with the physical time of every side under
//! the test's control. Also the bookkeeping the tests check convergence with: every write
//! of the run, the latest version of every item, and the checks themselves.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use sync_blobs::{
    object_store::{path::Path as ObjectPath, ObjectStoreExt, PutPayload},
    BlobMover, ObjectBlobs,
};
use sync_engine::{
    core::{
        AppRowStore, BlobStore, ChannelData, ExchangeTransport, Item, RecordStore, Responder,
        ResponderConfig, ResponderParts, SharedClock, SyncStateStore, TimeSource,
    },
    hlc::{Clock, ClockConfig, Hlc, NodeId, Watermarks},
    protocol::{AppRow, Codec, RowValues, SharedRecord, RESERVED_TABLE},
    AppNamespace, Channel, Engine, RecordDraft, RetryPolicy, TableSpec,
};
use sync_http::{Auth, HttpClient, Scope, ServerConfig, SyncService};
use sync_sqlite::SqliteStore;
use sync_testkit::memory::sha256_hex;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The app whose channel the tests use besides the Drive channel.
pub const APP: &str = "notes-app";
/// Its plain (metadata-only) table.
pub const NOTES: &str = "notes";
/// The bearer token every node presents.
pub const TOKEN: &str = "loopback-test-token-0123456789";

/// The app's namespace: `notes` (pk `id`) and the reserved, file-backed table.
pub fn namespace() -> AppNamespace {
    AppNamespace::new(APP, vec![TableSpec::new(NOTES, &["id"])])
}

/// The app channel.
pub fn app_channel() -> Channel {
    Channel::App(APP.into())
}

/// The server: SQLite + filesystem blobs under one directory, served over HTTP on an
/// ephemeral loopback port.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its records, rows (and unused sync state).
    pub store: SqliteStore,
    /// Its object storage.
    pub blobs: ObjectBlobs,
    /// Its clock, shared by the responders of both channels.
    pub clock: SharedClock,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), sync_http::Error>>,
}

impl Server {
    /// Starts a server on `dir` with physical time from `time`.
    pub async fn start(dir: &Path, time: Arc<dyn TimeSource>) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let store = SqliteStore::open(dir.join("server.db")).await.unwrap();
        store.register(namespace()).await.unwrap();
        // Not synced (decision 0013): these tests are about the network, with a 500 ms
        // request timeout, and a `syncfs` of a disk shared with builds can take longer.
        // The ordering of blob syncs is tested in sync-testkit and sync-blobs.
        let blobs = ObjectBlobs::filesystem(dir.join("blobs"))
            .unwrap()
            .with_durability(false);
        let clock: SharedClock = Arc::new(Mutex::new(Clock::new(
            NodeId::new("cloud").unwrap(),
            ClockConfig::default(),
        )));
        let records: Arc<dyn RecordStore> = Arc::new(store.clone());
        let rows: Arc<dyn AppRowStore> = Arc::new(store.clone());
        let blob_check: Arc<dyn BlobStore> = Arc::new(blobs.clone());
        let mut responders: HashMap<Channel, Arc<dyn ExchangeTransport>> = HashMap::new();
        for channel in [Channel::Drive, app_channel()] {
            let responder = Responder::new(ResponderParts {
                data: ChannelData::new(channel.clone(), Some(records.clone()), Some(rows.clone())),
                blobs: blob_check.clone(),
                clock: clock.clone(),
                time: time.clone(),
                config: ResponderConfig::default(),
            });
            responders.insert(channel, Arc::new(responder));
        }
        let service = SyncService::builder(responders, blobs.object_store().clone())
            .config(ServerConfig::default().with_store_content_type(blobs.writes_content_type()))
            .bearer_token(TOKEN, Scope::All)
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sync_http::serve(listener, service, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            store,
            blobs,
            clock,
            shutdown: Some(tx),
            task,
        }
    }

    /// Its data, for the checks.
    pub fn view(&self) -> View {
        View {
            name: "server".into(),
            records: Arc::new(self.store.clone()),
            rows: Arc::new(self.store.clone()),
            blobs: self.blobs.clone(),
        }
    }

    /// The last timestamp its clock issued or adopted.
    pub fn clock_last(&self) -> Hlc {
        self.clock.lock().unwrap().last()
    }

    /// Stops accepting and waits for the serve loop to end. In-flight requests may be
    /// held by a stalled proxy, so this only waits a little.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

/// How a node talks to the server.
#[derive(Clone)]
pub struct NodeOptions {
    /// The body format of its exchanges.
    pub codec: Codec,
    /// The HTTP client's request (and connect) timeout.
    pub request_timeout: Duration,
    /// Retries of `sync_until_idle`.
    pub retry: RetryPolicy,
    /// Its physical time.
    pub time: Arc<dyn TimeSource>,
}

/// A node: a SQLite file and a blob directory under its own directory (kept across a
/// restart), and one engine per channel sharing the node's clock.
pub struct Node {
    /// Its id.
    pub id: String,
    /// Where it lives.
    pub dir: PathBuf,
    /// Its records, rows and sync state.
    pub store: SqliteStore,
    /// Its object storage.
    pub blobs: ObjectBlobs,
    /// The Drive channel's engine.
    pub drive: Engine,
    /// The app channel's engine.
    pub app: Engine,
}

impl Node {
    /// Opens (or reopens) node `id` in `dir`, syncing with the server at `url`.
    pub async fn open(dir: &Path, id: &str, url: &str, options: &NodeOptions) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let store = SqliteStore::open(dir.join("node.db")).await.unwrap();
        store.register(namespace()).await.unwrap();
        let blobs = ObjectBlobs::filesystem(dir.join("blobs"))
            .unwrap()
            .with_durability(false);
        let client = HttpClient::builder(url)
            .auth(Auth::bearer(TOKEN))
            .codec(options.codec)
            .request_timeout(options.request_timeout)
            .connect_timeout(options.request_timeout)
            .build()
            .unwrap();
        let engine = |channel: Channel, clock: Option<SharedClock>| {
            let remote = ObjectBlobs::new(Arc::new(client.object_store(channel.clone())));
            let mut builder = Engine::builder(id, channel.clone())
                .unwrap()
                .records(Arc::new(store.clone()))
                .app_rows(Arc::new(store.clone()))
                .state(Arc::new(store.clone()))
                .blob_transfer(Arc::new(BlobMover::new(blobs.clone(), remote)))
                .transport(Arc::new(client.transport(channel)))
                .time_source(options.time.clone())
                .retry(options.retry.clone());
            if let Some(clock) = clock {
                builder = builder.clock(clock);
            }
            builder.build()
        };
        let drive = engine(Channel::Drive, None).await.unwrap();
        let app = engine(app_channel(), Some(drive.clock())).await.unwrap();
        Node {
            id: id.into(),
            dir: dir.to_path_buf(),
            store,
            blobs,
            drive,
            app,
        }
    }

    /// Closes the node's database (for a restart).
    pub async fn close(self) {
        self.store.close().await;
    }

    /// The engine of `channel`.
    pub fn engine(&self, channel: &Channel) -> &Engine {
        match channel {
            Channel::Drive => &self.drive,
            _ => &self.app,
        }
    }

    /// Its data, for the checks.
    pub fn view(&self) -> View {
        View {
            name: self.id.clone(),
            records: Arc::new(self.store.clone()),
            rows: Arc::new(self.store.clone()),
            blobs: self.blobs.clone(),
        }
    }

    /// Stores `bytes` in the node's object storage under a content-addressed key below
    /// `prefix`; returns (key, hash).
    pub async fn store_blob(&self, prefix: &str, bytes: &[u8]) -> (String, String) {
        let hash = sha256_hex(bytes);
        let key = format!("{prefix}/{}/{hash}", &hash[..2]);
        self.blobs
            .object_store()
            .put(
                &ObjectPath::from(key.as_str()),
                PutPayload::from(bytes.to_vec()),
            )
            .await
            .unwrap();
        (key, hash)
    }

    /// Writes a file-backed shared record (insert or update) with `bytes` as its blob.
    pub async fn put_file(&self, id: &str, bytes: &[u8]) -> SharedRecord {
        let (key, hash) = self.store_blob("shared/test", bytes).await;
        self.drive
            .put_record(
                RecordDraft::file(id, key, hash, bytes.len() as u64)
                    .with_original_filename(format!("{id}.bin")),
            )
            .await
            .unwrap()
    }

    /// Writes a row of the reserved table with `bytes` as its blob.
    pub async fn put_file_row(&self, id: &str, bytes: &[u8], payload: &str) -> AppRow {
        let (key, hash) = self
            .store_blob(&format!("apps/{APP}/syncable"), bytes)
            .await;
        let mut row = RowValues::new();
        row.insert("id".into(), json!(id));
        row.insert("object_storage_key".into(), json!(key));
        row.insert("content_hash".into(), json!(hash));
        row.insert("mime_type".into(), json!("application/octet-stream"));
        row.insert("size_bytes".into(), json!(bytes.len()));
        row.insert("original_filename".into(), Value::Null);
        row.insert("origin_app_id".into(), json!(APP));
        row.insert("created_at".into(), Value::Null);
        row.insert("updated_at".into(), Value::Null);
        row.insert("deleted_at".into(), Value::Null);
        row.insert("payload".into(), json!(payload));
        self.app.put_row(RESERVED_TABLE, row).await.unwrap()
    }

    /// Writes a plain row of `notes`.
    pub async fn put_note(&self, id: &str, text: &str) -> AppRow {
        let mut row = RowValues::new();
        row.insert("id".into(), json!(id));
        row.insert("text".into(), json!(text));
        self.app.put_row(NOTES, row).await.unwrap()
    }

    /// Soft-deletes a row of `table`.
    pub async fn delete_row(&self, table: &str, id: &str) -> AppRow {
        let mut key = RowValues::new();
        key.insert("id".into(), json!(id));
        self.app.delete_row(table, key).await.unwrap()
    }
}

/// What one item is called across sides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// A shared record by id.
    Record(String),
    /// A row of the app by table and id.
    Row(String, String),
}

impl Key {
    fn channel(&self) -> Channel {
        match self {
            Key::Record(_) => Channel::Drive,
            Key::Row(..) => app_channel(),
        }
    }
}

fn key_of(item: &Item) -> Key {
    match item {
        Item::Record(r) => Key::Record(r.id.clone()),
        Item::Row(r) => {
            let id = r
                .row
                .as_ref()
                .and_then(|v| v.get("id"))
                .or_else(|| r.where_.as_ref().and_then(|w| w.get("id")))
                .and_then(Value::as_str)
                .expect("test rows have a string id");
            Key::Row(r.table.clone(), id.into())
        }
    }
}

/// Every write of a run, and the latest version of every item.
#[derive(Default)]
pub struct Truth {
    /// Every version written, in write order.
    pub writes: Vec<Item>,
    /// The newest version of every item.
    pub latest: BTreeMap<Key, Item>,
}

impl Truth {
    /// Notes a written version.
    pub fn record(&mut self, item: Item) {
        let key = key_of(&item);
        let newer = self
            .latest
            .get(&key)
            .is_none_or(|held| held.hlc() < item.hlc());
        if newer {
            self.latest.insert(key, item.clone());
        }
        self.writes.push(item);
    }

    /// Per origin node, the newest version it wrote on `channel`.
    pub fn authored(&self, channel: &Channel) -> Watermarks {
        let mut w = Watermarks::new();
        for item in self
            .writes
            .iter()
            .filter(|i| key_of(i).channel() == *channel)
        {
            w.advance(item.hlc());
        }
        w
    }
}

/// One side's stores, for the checks.
pub struct View {
    /// For messages.
    pub name: String,
    /// Its records.
    pub records: Arc<dyn RecordStore>,
    /// Its rows.
    pub rows: Arc<dyn AppRowStore>,
    /// Its blobs.
    pub blobs: ObjectBlobs,
}

impl View {
    /// Every item stored, read through the ports' per-origin scans (each item is listed
    /// under the origin of its stored version), with how many times each key was listed.
    pub async fn items(&self) -> (BTreeMap<Key, Item>, Vec<Key>) {
        let mut all = BTreeMap::new();
        let mut duplicates = Vec::new();
        let mut take = |item: Item| {
            let key = key_of(&item);
            if all.insert(key.clone(), item).is_some() {
                duplicates.push(key);
            }
        };
        let coverage = self.records.coverage().await.unwrap();
        for (origin, _) in coverage.iter() {
            for r in self.records.scan(origin, None, 1_000_000).await.unwrap() {
                take(Item::Record(r));
            }
        }
        for table in [NOTES, RESERVED_TABLE] {
            let coverage = self.rows.coverage(APP, table).await.unwrap();
            for (origin, _) in coverage.iter() {
                for r in self
                    .rows
                    .scan(APP, table, origin, None, 1_000_000)
                    .await
                    .unwrap()
                {
                    take(Item::Row(r));
                }
            }
        }
        (all, duplicates)
    }

    /// The stored version of one item.
    pub async fn get(&self, key: &Key) -> Option<Item> {
        match key {
            Key::Record(id) => self.records.get(id).await.unwrap().map(Item::Record),
            Key::Row(table, id) => self
                .rows
                .get(APP, table, &json!([id]).to_string())
                .await
                .unwrap()
                .map(Item::Row),
        }
    }

    /// `Ok` when the blob `item` needs is here and hashes to its content hash.
    pub async fn blob_ok(&self, item: &Item) -> Result<(), String> {
        let Some(manifest) = item.blob(true) else {
            return Ok(());
        };
        let path = ObjectPath::from(manifest.key.as_str());
        let bytes = match self.blobs.object_store().get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| format!("{}: reading blob {}: {e}", self.name, manifest.key))?,
            Err(e) => return Err(format!("{}: blob {} missing: {e}", self.name, manifest.key)),
        };
        let actual = sha256_hex(&bytes);
        if actual != manifest.content_hash || bytes.len() as u64 != manifest.size_bytes {
            return Err(format!(
                "{}: blob {} is {} bytes hashing to {actual}, expected {} bytes with {}",
                self.name,
                manifest.key,
                bytes.len(),
                manifest.size_bytes,
                manifest.content_hash
            ));
        }
        Ok(())
    }

    /// Coverage honesty: for every version written by origin `o` at or below `covered[o]`
    /// (on `channel`), this side holds the item at that version or a newer one, and holds
    /// the blob of the version if it is the one stored; or else a newer version of the item
    /// exists that `covered` does not cover yet (a peer sends only the current version of
    /// an item, so a side may cover a replaced version it never saw; it still expects the
    /// version that replaced it). A watermark ahead of the data breaks it: nothing would
    /// ever bring the item.
    pub async fn check_covered(
        &self,
        what: &str,
        channel: &Channel,
        covered: &Watermarks,
        truth: &Truth,
    ) -> Vec<String> {
        let is_covered = |item: &Item| {
            covered
                .get(item.origin().as_str())
                .is_some_and(|mark| item.hlc() <= mark)
        };
        let mut problems = Vec::new();
        for w in &truth.writes {
            let key = key_of(w);
            if key.channel() != *channel || !is_covered(w) {
                continue;
            }
            let awaited = truth
                .writes
                .iter()
                .find(|n| key_of(n) == key && n.hlc() > w.hlc() && !is_covered(n));
            let mark = covered.get(w.origin().as_str()).expect("covered");
            match self.get(&key).await {
                Some(held) if held.hlc() >= w.hlc() => {
                    if held.hlc() == w.hlc() {
                        if let Err(e) = self.blob_ok(&held).await {
                            problems.push(format!("{what} covers {}: {e}", w.hlc()));
                        }
                    }
                }
                _ if awaited.is_some() => {}
                held => {
                    let history: Vec<String> = truth
                        .writes
                        .iter()
                        .filter(|n| key_of(n) == key)
                        .map(|n| n.hlc().to_string())
                        .collect();
                    problems.push(format!(
                        "{}: {what} covers {} up to {mark}, but {key:?} (written at {}) is held \
                         at {:?} and no newer version of it is still awaited; its versions: \
                         {history:?}; the watermarks: {covered:?}",
                        self.name,
                        w.origin(),
                        w.hlc(),
                        held.map(|h| h.hlc().to_string()),
                    ))
                }
            }
        }
        problems
    }

    /// Full convergence: exactly the latest version of every item, each listed once, with
    /// its blob byte-identical to its hash.
    pub async fn check_converged(&self, truth: &Truth) -> Vec<String> {
        let mut problems = Vec::new();
        let (held, duplicates) = self.items().await;
        for key in duplicates {
            problems.push(format!("{}: {key:?} is listed more than once", self.name));
        }
        for (key, want) in &truth.latest {
            match held.get(key) {
                None => problems.push(format!("{}: {key:?} is missing", self.name)),
                Some(got) if got != want => problems.push(format!(
                    "{}: {key:?} is held at {}, the latest is {}{}",
                    self.name,
                    got.hlc(),
                    want.hlc(),
                    if got.hlc() == want.hlc() {
                        format!(" (same version, different content: {got:?} vs {want:?})")
                    } else {
                        String::new()
                    }
                )),
                Some(got) => {
                    if let Err(e) = self.blob_ok(got).await {
                        problems.push(e);
                    }
                }
            }
        }
        for key in held.keys().filter(|k| !truth.latest.contains_key(*k)) {
            problems.push(format!("{}: {key:?} was never written", self.name));
        }
        problems
    }
}

/// A node's watermarks on `channel`: (own, peer).
pub async fn watermarks(node: &Node, channel: &Channel) -> (Watermarks, Watermarks) {
    let state = node.store.load(channel).await.unwrap();
    (state.own, state.peer)
}

/// `n` bytes drawn from `seed` (blobs that differ by seed and by writer).
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
