//! The benchmark's datasets: deterministic records, app rows and blobs, seeded in bulk, and
//! the raw SQLite ceiling (plain sqlx inserts of the same rows, no sync logic).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
    ConnectOptions, Connection, SqliteConnection,
};
use sync_blobs::ObjectBlobs;
use sync_engine::{
    core::{AppRowStore, BlobManifest, BlobStore, ChannelState, RecordStore, SyncStateStore},
    hlc::{Hlc, NodeId},
    protocol::{AppRow, RowOp, RowValues, SharedRecord, RESERVED_TABLE},
    AppNamespace, Channel, TableSpec,
};
use sync_sqlite::SqliteStore;

/// Items per seeding batch and per raw-ceiling transaction: one page.
pub const PAGE: usize = 1000;

/// Size of the small blobs of scenarios 2, 3 and 6.
pub const SMALL_BLOB: usize = 256;

/// The app of scenario 6.
pub const APP: &str = "bench";

/// The origin node of everything the server is seeded with.
pub const ORIGIN: &str = "bench-origin";

/// The app namespace of scenario 6: one metadata table plus the reserved file-backed one.
pub fn namespace() -> AppNamespace {
    AppNamespace::new(APP, vec![TableSpec::new("notes", &["id"])])
}

/// The versions of a dataset: one day in the past (well inside the skew guard), 1000 per
/// millisecond, so item `i` of origin `o` is always the same version.
#[derive(Debug, Clone)]
pub struct Versions {
    origin: NodeId,
    base_ms: u64,
}

impl Versions {
    /// Versions authored by `origin`, starting a day ago.
    pub fn new(origin: &str) -> Result<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        Ok(Self {
            origin: NodeId::new(origin)?,
            base_ms: now - 86_400_000,
        })
    }

    /// `origin base_ms`, to store next to a dataset.
    pub fn tag(&self) -> String {
        format!("{} {}", self.origin, self.base_ms)
    }

    /// The versions of a [`tag`](Self::tag).
    pub fn from_tag(tag: &str) -> Result<Self> {
        let (origin, base) = tag
            .trim()
            .split_once(' ')
            .with_context(|| format!("bad dataset versions {tag:?}"))?;
        Ok(Self {
            origin: NodeId::new(origin)?,
            base_ms: base.parse()?,
        })
    }

    /// The version of item `i`.
    pub fn at(&self, i: usize) -> Hlc {
        Hlc::new(
            self.base_ms + (i / 1000) as u64,
            (i % 1000) as u16,
            self.origin.clone(),
        )
        .expect("a valid version")
    }
}

/// A small blob: `SMALL_BLOB` pseudo-random bytes, unique per `(seed, i)`, and its SHA-256.
pub fn small_blob(seed: &str, i: usize) -> (Vec<u8>, String) {
    let mut bytes = Vec::with_capacity(SMALL_BLOB);
    let mut k = 0u32;
    while bytes.len() < SMALL_BLOB {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update((i as u64).to_le_bytes());
        h.update(k.to_le_bytes());
        bytes.extend_from_slice(&h.finalize());
        k += 1;
    }
    bytes.truncate(SMALL_BLOB);
    let hash = hex::encode(Sha256::digest(&bytes));
    (bytes, hash)
}

/// Shared record `i`: metadata only, or with the small blob of `(seed, i)`.
pub fn record(versions: &Versions, i: usize, blob_seed: Option<&str>) -> SharedRecord {
    let at = versions.at(i);
    let (hash, key, size) = match blob_seed {
        Some(seed) => {
            let (_, hash) = small_blob(seed, i);
            let key = crate::files::shared_key("application/octet-stream", &hash);
            (hash, key, SMALL_BLOB as u64)
        }
        // A metadata-only record still names a content hash, as a real one would.
        None => (
            hex::encode(Sha256::digest((i as u64).to_le_bytes())),
            String::new(),
            0,
        ),
    };
    SharedRecord {
        id: format!("01BENCH{i:019}"),
        kind: "data".into(),
        record_type: "application/octet-stream".into(),
        created_at: at.clone(),
        updated_at: at,
        deleted_at: None,
        version: 1,
        content_hash: hash,
        object_storage_key: key,
        mime_type: Some("application/octet-stream".into()),
        size_bytes: size,
        original_filename: Some(format!("file-{i:07}.bin")),
        origin_app_id: "drive".into(),
        parent_id: None,
        label: None,
    }
}

/// App row `i` of scenario 6: even rows go to `notes` (metadata), odd rows to the reserved
/// file-backed table with the small blob of `(seed, i)`.
pub fn app_row(versions: &Versions, i: usize, seed: &str) -> AppRow {
    let at = versions.at(i);
    let mut row = RowValues::new();
    let table = if i % 2 == 0 {
        row.insert("id".into(), json!(format!("note-{i:08}")));
        row.insert("title".into(), json!(format!("Note number {i}")));
        row.insert(
            "body".into(),
            json!("Buy milk, eggs and bread; call the plumber about the kitchen tap."),
        );
        "notes"
    } else {
        let (_, hash) = small_blob(seed, i);
        row.insert("id".into(), json!(format!("file-{i:08}")));
        row.insert("object_storage_key".into(), json!(app_key(&hash)));
        row.insert("content_hash".into(), json!(hash));
        row.insert("mime_type".into(), json!("application/octet-stream"));
        row.insert("size_bytes".into(), json!(SMALL_BLOB));
        row.insert(
            "original_filename".into(),
            json!(format!("attachment-{i}.bin")),
        );
        row.insert("origin_app_id".into(), json!(APP));
        row.insert("created_at".into(), json!(at.to_string()));
        row.insert("updated_at".into(), json!(at.to_string()));
        row.insert("deleted_at".into(), Value::Null);
        RESERVED_TABLE
    };
    AppRow {
        timestamp: at,
        app_id: APP.into(),
        table: table.into(),
        op: RowOp::Insert,
        row: Some(row),
        where_: None,
    }
}

/// The app-namespace key of a blob.
pub fn app_key(hash: &str) -> String {
    format!("apps/{APP}/syncable/{}/{hash}", &hash[..2])
}

/// Items `range` in pages of [`PAGE`].
fn pages(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n).step_by(PAGE).map(move |s| s..(s + PAGE).min(n))
}

/// Seeds `n` shared records into `store` through its own apply, a page at a time.
pub async fn seed_records(
    store: &SqliteStore,
    versions: &Versions,
    n: usize,
    blob_seed: Option<&str>,
) -> Result<()> {
    for page in pages(n) {
        let batch: Vec<SharedRecord> = page.map(|i| record(versions, i, blob_seed)).collect();
        RecordStore::apply(store, &batch).await?;
    }
    Ok(())
}

/// Seeds `n` app rows of scenario 6 into `store` (registering the namespace first).
pub async fn seed_app_rows(
    store: &SqliteStore,
    versions: &Versions,
    n: usize,
    seed: &str,
) -> Result<()> {
    store.register(namespace()).await?;
    for page in pages(n) {
        let batch: Vec<AppRow> = page.map(|i| app_row(versions, i, seed)).collect();
        AppRowStore::apply(store, &batch).await?;
    }
    Ok(())
}

/// Stores the small blobs of items `indices` in `blobs`.
pub async fn seed_small_blobs(
    blobs: &ObjectBlobs,
    seed: &str,
    indices: impl Iterator<Item = usize>,
    key_of: fn(&str) -> String,
) -> Result<()> {
    // Through the store's batch write, as blobs arriving inline land: packed in the
    // database when the store has a pack, files otherwise.
    let indices: Vec<usize> = indices.collect();
    for page in indices.chunks(1000) {
        let batch: Vec<(BlobManifest, Vec<u8>)> = page
            .iter()
            .map(|&i| {
                let (bytes, hash) = small_blob(seed, i);
                let manifest = BlobManifest {
                    key: key_of(&hash),
                    content_hash: hash,
                    size_bytes: bytes.len() as u64,
                    mime_type: None,
                };
                (manifest, bytes)
            })
            .collect();
        for stored in blobs.write_inline_batch(batch).await {
            stored?;
        }
    }
    Ok(blobs.sync().await?)
}

/// The shared key of a small blob.
pub fn shared_blob_key(hash: &str) -> String {
    crate::files::shared_key("application/octet-stream", hash)
}

/// Sets a node's sync state on the Drive channel or an app channel: own and peer
/// watermarks (empty to start over, the channel's coverage for "in sync").
pub async fn set_state(
    store: &dyn SyncStateStore,
    channel: &Channel,
    state: ChannelState,
) -> Result<()> {
    let clock = store.load_clock().await?.unwrap_or_default();
    store.commit(channel, &state, clock).await?;
    Ok(())
}

/// Writes a large pseudo-random blob of `size` bytes into the blob directory `root` under
/// its shared key; returns the key and the SHA-256. Written straight to the file the
/// filesystem store reads (`root/<key>`), hashing as it goes.
pub fn write_large_blob(root: &Path, size: u64) -> Result<(String, String)> {
    use std::io::Write;
    std::fs::create_dir_all(root)?;
    let tmp = root.join("large-blob.tmp");
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            // xorshift64*: fast, and incompressible enough for a transfer benchmark.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    drop(file);
    let hash = hex::encode(hasher.finalize());
    let key = shared_blob_key(&hash);
    let dest: PathBuf = key.split('/').fold(root.to_path_buf(), |p, s| p.join(s));
    std::fs::create_dir_all(dest.parent().expect("a key has a directory"))?;
    std::fs::rename(&tmp, &dest)?;
    Ok((key, hash))
}

/// The disk's ceiling for scenario 5: `size` bytes written to a new file under `dir` in
/// 8 MiB writes and fsynced, as each leg must leave its copy durable; MB/s (10^6 bytes). The
/// file is removed again.
pub fn synced_write_ceiling(dir: &Path, size: u64) -> Result<f64> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("disk-ceiling.tmp");
    let chunk: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let started = Instant::now();
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(size as f64 / 1e6 / elapsed)
}

/// A blank SQLite database with the stores' connection settings (WAL, `synchronous =
/// NORMAL`, a statement cache).
async fn raw_connection(path: &Path) -> Result<SqliteConnection> {
    let _ = std::fs::remove_file(path);
    let conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .statement_cache_capacity(64)
        .connect()
        .await?;
    Ok(conn)
}

/// The stores' `shared_records` table and its `(node_id, hlc)` index, as the migration
/// creates them.
const RAW_RECORDS_SCHEMA: &str = "\
CREATE TABLE shared_records (id TEXT NOT NULL PRIMARY KEY, kind TEXT NOT NULL, \
    record_type TEXT NOT NULL, created_at TEXT NOT NULL, hlc TEXT NOT NULL, \
    node_id TEXT NOT NULL, deleted_at TEXT, version INTEGER NOT NULL, \
    content_hash TEXT NOT NULL, object_storage_key TEXT NOT NULL, mime_type TEXT, \
    size_bytes INTEGER NOT NULL, original_filename TEXT, origin_app_id TEXT NOT NULL, \
    parent_id TEXT, label TEXT); \
CREATE INDEX shared_records_node_hlc ON shared_records (node_id, hlc);";

const RAW_RECORDS_INSERT: &str = "\
INSERT INTO shared_records (id, kind, record_type, created_at, hlc, node_id, deleted_at, \
    version, content_hash, object_storage_key, mime_type, size_bytes, original_filename, \
    origin_app_id, parent_id, label)";

/// The stores' `app_rows` table and its index.
const RAW_ROWS_SCHEMA: &str = "\
CREATE TABLE app_rows (app_id TEXT NOT NULL, table_name TEXT NOT NULL, pk TEXT NOT NULL, \
    node_id TEXT NOT NULL, hlc TEXT NOT NULL, tombstone INTEGER NOT NULL, op TEXT NOT NULL, \
    row_json TEXT, where_json TEXT, PRIMARY KEY (app_id, table_name, pk)); \
CREATE INDEX app_rows_node_hlc ON app_rows (app_id, table_name, node_id, hlc);";

const RAW_ROWS_INSERT: &str = "\
INSERT INTO app_rows (app_id, table_name, pk, node_id, hlc, tombstone, op, row_json, where_json)";

/// Which rows the raw ceiling inserts.
#[derive(Debug, Clone, Copy)]
pub enum RawRows<'a> {
    /// Shared records `0..n`, metadata only or with the small blob of a seed.
    Records {
        /// Whose versions.
        versions: &'a Versions,
        /// How many.
        n: usize,
        /// The blob seed, if the records carry blobs.
        blob_seed: Option<&'a str>,
    },
    /// App rows `0..n` of scenario 6.
    AppRows {
        /// Whose versions.
        versions: &'a Versions,
        /// How many.
        n: usize,
        /// The blob seed.
        seed: &'a str,
    },
}

/// How the raw ceiling inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawInserts {
    /// One prepared `INSERT` per row: the "plain sqlx inserts".
    PerRow,
    /// Multi-row `INSERT ... VALUES (...), (...)`, 32 records or 64 app rows per statement,
    /// as the stores write: what SQLite itself can do when sqlx's per-statement round trip to
    /// its worker thread is amortised.
    MultiRow,
}

/// The raw ceiling: sqlx inserts of the same rows into an empty SQLite database with the
/// stores' schema and settings, [`PAGE`] rows per transaction, no sync logic. Only the
/// transactions are timed (generating and encoding the rows is not). Returns rows per
/// second.
pub async fn raw_ceiling(path: &Path, rows: RawRows<'_>, inserts: RawInserts) -> Result<f64> {
    let mut conn = raw_connection(path).await?;
    let (n, schema, head, columns, multi) = match rows {
        RawRows::Records { n, .. } => (n, RAW_RECORDS_SCHEMA, RAW_RECORDS_INSERT, 16, 32),
        RawRows::AppRows { n, .. } => (n, RAW_ROWS_SCHEMA, RAW_ROWS_INSERT, 9, 64),
    };
    let per_statement = match inserts {
        RawInserts::PerRow => 1,
        RawInserts::MultiRow => multi,
    };
    sqlx::raw_sql(schema).execute(&mut conn).await?;
    let group = format!("({})", vec!["?"; columns].join(", "));
    let statement =
        |rows: usize| format!("{head} VALUES {}", vec![group.as_str(); rows].join(", "));
    let full = statement(per_statement);
    let mut timed = Duration::ZERO;
    for page in pages(n) {
        let batch: Vec<RawRow> = page
            .map(|i| match rows {
                RawRows::Records {
                    versions,
                    blob_seed,
                    ..
                } => RawRow::record(&record(versions, i, blob_seed)),
                RawRows::AppRows { versions, seed, .. } => {
                    RawRow::app_row(&app_row(versions, i, seed))
                }
            })
            .collect();
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        for chunk in batch.chunks(per_statement) {
            let rest;
            let sql = if chunk.len() == per_statement {
                &full
            } else {
                rest = statement(chunk.len());
                &rest
            };
            let mut query = sqlx::query(sql);
            for row in chunk {
                for value in &row.0 {
                    query = match value {
                        RawValue::Text(t) => query.bind(t),
                        RawValue::Int(i) => query.bind(*i),
                        RawValue::Null => query.bind(None::<String>),
                    };
                }
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        timed += started.elapsed();
    }
    conn.close().await?;
    remove_database(path);
    Ok(n as f64 / timed.as_secs_f64())
}

/// One column value, encoded before the clock starts.
pub(super) enum RawValue {
    Text(String),
    Int(i64),
    Null,
}

/// A row's column values in insert order.
pub(super) struct RawRow(pub(super) Vec<RawValue>);

impl RawRow {
    pub(super) fn record(r: &SharedRecord) -> Self {
        use RawValue::{Int, Null, Text};
        let opt = |v: Option<String>| v.map_or(Null, Text);
        Self(vec![
            Text(r.id.clone()),
            Text(r.kind.clone()),
            Text(r.record_type.clone()),
            Text(r.created_at.to_string()),
            Text(r.updated_at.to_string()),
            Text(r.origin().to_string()),
            opt(r.deleted_at.as_ref().map(Hlc::to_string)),
            Int(r.version as i64),
            Text(r.content_hash.clone()),
            Text(r.object_storage_key.clone()),
            opt(r.mime_type.clone()),
            Int(r.size_bytes as i64),
            opt(r.original_filename.clone()),
            Text(r.origin_app_id.clone()),
            opt(r.parent_id.clone()),
            opt(r.label.clone()),
        ])
    }

    fn app_row(r: &AppRow) -> Self {
        use RawValue::{Int, Null, Text};
        let id = r.row.as_ref().and_then(|v| v.get("id")).cloned();
        Self(vec![
            Text(r.app_id.clone()),
            Text(r.table.clone()),
            Text(json!([id]).to_string()),
            Text(r.origin().to_string()),
            Text(r.timestamp.to_string()),
            Int(0),
            Text("insert".into()),
            Text(serde_json::to_string(&r.row).expect("JSON values encode")),
            Null,
        ])
    }
}

/// Applies shared records `0..n` into a fresh store through `RecordStore::apply`, a page of
/// [`PAGE`] at a time, timing only the applies. Returns records per second.
pub async fn store_apply_rate(path: &Path, versions: &Versions, n: usize) -> Result<f64> {
    remove_database(path);
    let store = SqliteStore::open(path).await?;
    let mut timed = Duration::ZERO;
    for page in pages(n) {
        let batch: Vec<SharedRecord> = page.map(|i| record(versions, i, None)).collect();
        let started = Instant::now();
        RecordStore::apply(&store, &batch).await?;
        timed += started.elapsed();
    }
    store.close().await;
    remove_database(path);
    Ok(n as f64 / timed.as_secs_f64())
}

/// Removes a SQLite database and its WAL files.
pub fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}
