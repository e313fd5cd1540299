//! The load scenario (issue 8): many nodes, each its own process, syncing at once against
//! real servers over loopback HTTP.
//!
//! Each node child creates a node home (as `starkeep-sync init` does), writes its own data
//! through the engine (shared records with small blobs on the Drive channel, rows of an app
//! table on the app's channel) and reports a digest of it. When every node has written, the
//! orchestrator lets them all sync until idle at once (phase 1: every node uploads, and
//! downloads whatever has arrived so far); when all are done, it lets them all sync until
//! idle again (phase 2: every node downloads the rest). Then every node digests what it
//! holds and lists its blobs, and the orchestrator digests the servers' stores and bucket.
//!
//! Two setups: one `serve` child on SQLite and a blob directory (the embedded default), and
//! two `serve` children sharing one PostgreSQL schema and one S3 bucket (scale-out; nodes
//! alternate between them). The run fails unless every request succeeded (no exchange
//! error or failed item on any node, no status of 400 or above on any server) and every
//! node and every server holds exactly every node's records and rows at the versions their
//! authors wrote, with every record's blob present.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use futures::{future::try_join_all, TryStreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sync_blobs::{
    object_store::{path::Path as ObjectPath, ObjectStore, ObjectStoreExt, PutPayload},
    ObjectBlobs,
};
use sync_engine::{
    core::{AppRowStore, RecordStore},
    protocol::RowValues,
    AppNamespace, Channel, Engine, RecordDraft, TableSpec,
};
use sync_postgres::{PostgresOptions, PostgresStore};
use sync_sqlite::SqliteStore;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

use super::{
    child::{peak_rss_kib, ChildSpec, S3Spec, ScaleOut, ServerReport},
    data::{self, SMALL_BLOB},
    mib,
    report::{percentile, thousands},
    Bench,
};
use crate::node::{EngineOptions, Node, NodeConfig};

/// The app whose channel carries the load's rows.
pub const APP: &str = "load";
/// Its one table.
pub const TABLE: &str = "notes";

/// The load app's namespace: one metadata table (the reserved file table is implied).
pub fn namespace() -> AppNamespace {
    AppNamespace::new(APP, vec![TableSpec::new(TABLE, &["id"])])
}

/// The load scenario's options of `starkeep-sync bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Load scenario: concurrent nodes, each its own process (default 100; 10 with --quick).
    #[arg(long)]
    nodes: Option<usize>,
    /// Load scenario: shared records each node writes, each with a 256-byte blob (default
    /// 1000; 100 with --quick).
    #[arg(long)]
    load_records: Option<usize>,
    /// Load scenario: app rows each node writes (default 1000; 100 with --quick).
    #[arg(long)]
    load_rows: Option<usize>,
    /// Load scenario: the server setups (repeatable). Default: both, the PostgreSQL + S3
    /// one only when --postgres-url and the S3 options are given.
    #[arg(long = "load-setup", value_enum)]
    setups: Vec<SetupId>,
    /// Endpoint of the S3-compatible server for the scale-out setup.
    #[arg(long, env = "STARKEEP_BENCH_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Bucket for the scale-out setup (it must exist).
    #[arg(long, env = "STARKEEP_BENCH_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// Access key id for the bucket.
    #[arg(long, env = "STARKEEP_BENCH_S3_ACCESS_KEY")]
    s3_access_key: Option<String>,
    /// Secret access key for the bucket.
    #[arg(long, env = "STARKEEP_BENCH_S3_SECRET_KEY", hide_env_values = true)]
    s3_secret_key: Option<String>,
}

/// A server setup of the load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SetupId {
    /// One server on SQLite and a blob directory.
    Sqlite,
    /// Two servers sharing one PostgreSQL schema and one S3 bucket.
    Postgres,
}

/// What one load run does.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    nodes: usize,
    records: usize,
    rows: usize,
    setups: Vec<Setup>,
    /// Why a default setup was left out.
    pub not_measured: Option<String>,
}

#[derive(Debug, Clone)]
enum Setup {
    Sqlite,
    ScaleOut { url: String, s3: S3Spec },
}

impl LoadArgs {
    /// The plan for these options (`--quick` sizes if asked).
    pub fn plan(&self, quick: bool, postgres_url: Option<&str>) -> Result<LoadPlan> {
        let (nodes, records, rows) = if quick {
            (10, 100, 100)
        } else {
            (100, 1000, 1000)
        };
        let s3 = match (
            &self.s3_endpoint,
            &self.s3_bucket,
            &self.s3_access_key,
            &self.s3_secret_key,
        ) {
            (Some(endpoint), Some(bucket), Some(access_key), Some(secret_key)) => Some(S3Spec {
                endpoint: endpoint.clone(),
                bucket: bucket.clone(),
                access_key: access_key.clone(),
                secret_key: secret_key.clone(),
            }),
            _ => None,
        };
        let scale_out = match (postgres_url, s3) {
            (Some(url), Some(s3)) => Ok(Setup::ScaleOut {
                url: url.to_string(),
                s3,
            }),
            (url, s3) => Err(format!(
                "the PostgreSQL + S3 setup needs {}",
                [
                    url.is_none().then_some("--postgres-url"),
                    s3.is_none().then_some(
                        "--s3-endpoint, --s3-bucket, --s3-access-key and --s3-secret-key"
                    ),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" and ")
            )),
        };
        let mut setups = Vec::new();
        let mut not_measured = None;
        if self.setups.is_empty() {
            setups.push(Setup::Sqlite);
            match scale_out {
                Ok(s) => setups.push(s),
                Err(why) => not_measured = Some(why),
            }
        } else {
            let mut chosen = self.setups.clone();
            chosen.sort();
            chosen.dedup();
            for id in chosen {
                setups.push(match id {
                    SetupId::Sqlite => Setup::Sqlite,
                    SetupId::Postgres => scale_out.clone().map_err(anyhow::Error::msg)?,
                });
            }
        }
        let plan = LoadPlan {
            nodes: self.nodes.unwrap_or(nodes),
            records: self.load_records.unwrap_or(records),
            rows: self.load_rows.unwrap_or(rows),
            setups,
            not_measured,
        };
        ensure!(plan.nodes >= 1, "--nodes must be at least 1");
        Ok(plan)
    }
}

impl LoadPlan {
    /// The plan as `bench` options (sizes and setups), for the report's command line.
    pub fn options(&self) -> String {
        let mut out = format!(
            " --nodes {} --load-records {} --load-rows {}",
            self.nodes, self.records, self.rows
        );
        for setup in &self.setups {
            out.push_str(match setup {
                Setup::Sqlite => " --load-setup sqlite",
                Setup::ScaleOut { .. } => " --load-setup postgres",
            });
        }
        out
    }
}

/// Digest of one origin node's items in a store: counts, and a SHA-256 over each item's
/// identity and version in version order, so two stores agree exactly when they hold the
/// same items at the same versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginDigest {
    records: u64,
    rows: u64,
    records_sha256: String,
    rows_sha256: String,
}

/// Per origin node, what a store holds.
pub type Holdings = BTreeMap<String, OriginDigest>;

/// Digests everything in a record store and the load app's rows, and lists every live
/// record's blob key and size.
async fn holdings(
    records: &dyn RecordStore,
    rows: &dyn AppRowStore,
) -> Result<(Holdings, Vec<(String, u64)>)> {
    const PAGE: usize = 1000;
    let mut out: BTreeMap<String, (u64, Sha256, u64, Sha256)> = BTreeMap::new();
    let mut keys = Vec::new();
    for (origin, _) in records.coverage().await?.iter() {
        let entry = out
            .entry(origin.to_string())
            .or_insert_with(|| (0, Sha256::new(), 0, Sha256::new()));
        let mut above = None;
        loop {
            let page = records.scan(origin, above.as_ref(), PAGE).await?;
            for r in &page {
                entry.0 += 1;
                let line = format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    r.id,
                    r.updated_at,
                    r.deleted_at.is_some(),
                    r.content_hash,
                    r.object_storage_key
                );
                entry.1.update(line.as_bytes());
                if r.deleted_at.is_none() && !r.object_storage_key.is_empty() {
                    keys.push((r.object_storage_key.clone(), r.size_bytes));
                }
            }
            above = page.last().map(|r| r.updated_at.clone());
            if page.len() < PAGE {
                break;
            }
        }
    }
    for (origin, _) in rows.coverage(APP, TABLE).await?.iter() {
        let entry = out
            .entry(origin.to_string())
            .or_insert_with(|| (0, Sha256::new(), 0, Sha256::new()));
        let mut above = None;
        loop {
            let page = rows.scan(APP, TABLE, origin, above.as_ref(), PAGE).await?;
            for r in &page {
                entry.2 += 1;
                let id = r.row.as_ref().and_then(|v| v.get("id")).cloned();
                let line = format!("{}\t{}\t{:?}\t{}\n", json!(id), r.timestamp, r.op, r.table);
                entry.3.update(line.as_bytes());
            }
            above = page.last().map(|r| r.timestamp.clone());
            if page.len() < PAGE {
                break;
            }
        }
    }
    let holdings = out
        .into_iter()
        .map(|(origin, (records, rh, rows, wh))| {
            (
                origin,
                OriginDigest {
                    records,
                    rows,
                    records_sha256: hex::encode(rh.finalize()),
                    rows_sha256: hex::encode(wh.finalize()),
                },
            )
        })
        .collect();
    Ok((holdings, keys))
}

/// How many of `keys` are missing from `store` (or there with another size): one listing
/// of the `shared/` prefix, not a request per blob.
async fn missing_blobs(store: &dyn ObjectStore, keys: &[(String, u64)]) -> Result<usize> {
    let listed: HashMap<String, u64> = store
        .list(Some(&ObjectPath::from("shared")))
        .map_ok(|meta| (meta.location.to_string(), meta.size))
        .try_collect()
        .await
        .context("listing the blobs")?;
    Ok(keys
        .iter()
        .filter(|(key, size)| listed.get(key) != Some(size))
        .count())
}

/// What the orchestrator tells a load node child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadNodeSpec {
    /// The node's home (created).
    pub home: PathBuf,
    /// Its id.
    pub node_id: String,
    /// The server it syncs with.
    pub server: String,
    /// The bearer token.
    pub token: String,
    /// Shared records to write.
    pub records: usize,
    /// App rows to write.
    pub rows: usize,
    /// Makes this run's blobs differ from any earlier run's (a reused bucket).
    pub blob_seed: String,
    /// Items per round (the engine's default when `None`).
    pub page_limit: Option<usize>,
}

/// The lines a load node child prints, each followed by JSON.
const WRITTEN: &str = "WRITTEN ";
const PHASE: &str = "PHASE ";
const DONE: &str = "DONE ";
/// What the orchestrator sends to start a phase.
const GO: &str = "go";

/// A load node's data, once written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Written {
    origin: String,
    own: OriginDigest,
    write_s: f64,
}

/// One node's rounds of one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhaseReport {
    rounds: usize,
    round_ms: Vec<f64>,
    applied: usize,
    shipped: usize,
    became_resident: usize,
    /// Rounds that failed as a whole (transport error, error status).
    exchange_errors: usize,
    /// Items that failed within rounds (blob pushes and pulls, applies).
    failed_items: usize,
    /// Origin nodes the server halted.
    halted: usize,
    /// The first few errors, for the report.
    errors: Vec<String>,
    elapsed_s: f64,
}

/// What a load node holds at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Done {
    holdings: Holdings,
    blobs: usize,
    missing_blobs: usize,
    peak_rss_kib: u64,
}

/// `bench-child` for a load node.
pub async fn node(spec: LoadNodeSpec) -> Result<u8> {
    Node::init(
        &spec.home,
        NodeConfig {
            node_id: spec.node_id.clone(),
            server: spec.server.clone(),
            token: spec.token.clone(),
            apps: vec![namespace()],
            blob_pack_limit: None,
        },
    )
    .await?;
    let node = Node::open(&spec.home).await?;
    let options = EngineOptions {
        page_limit: spec.page_limit,
        ..EngineOptions::default()
    };
    let drive = node.engine(Channel::Drive, &options).await?;
    let app = node.engine(Channel::App(APP.into()), &options).await?;

    let started = Instant::now();
    write(&spec, &node, &drive, &app).await?;
    let write_s = started.elapsed().as_secs_f64();
    let (mine, _) = holdings(&node.store, &node.store).await?;
    let own = mine
        .get(&spec.node_id)
        .cloned()
        .with_context(|| format!("{} holds none of its own data", spec.node_id))?;
    say(
        WRITTEN,
        &Written {
            origin: spec.node_id.clone(),
            own,
            write_s,
        },
    )
    .await?;

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    for _phase in 0..2 {
        match stdin.next_line().await? {
            Some(line) if line.trim() == GO => {}
            other => bail!(
                "{}: expected {GO:?} from the bench, got {other:?}",
                spec.node_id
            ),
        }
        let report = sync_phase(&spec.node_id, &[&drive, &app]).await?;
        say(PHASE, &report).await?;
    }

    let (holdings, keys) = holdings(&node.store, &node.store).await?;
    let missing = missing_blobs(node.blobs.object_store().as_ref(), &keys).await?;
    say(
        DONE,
        &Done {
            holdings,
            blobs: keys.len(),
            missing_blobs: missing,
            peak_rss_kib: peak_rss_kib(),
        },
    )
    .await?;
    node.store.close().await;
    Ok(crate::exit::OK)
}

/// Prints one protocol line.
async fn say<T: Serialize>(prefix: &str, value: &T) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{prefix}{}\n", serde_json::to_string(value)?).as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(())
}

/// The node's own data, written through its engines: records with their blobs (the blob
/// first, as `put` stores a file), then rows.
async fn write(spec: &LoadNodeSpec, node: &Node, drive: &Engine, app: &Engine) -> Result<()> {
    let seed = format!("{}-{}", spec.blob_seed, spec.node_id);
    let blobs = node.blobs.object_store();
    for i in 0..spec.records {
        let (bytes, hash) = data::small_blob(&seed, i);
        let key = data::shared_blob_key(&hash);
        blobs
            .put(&ObjectPath::parse(&key)?, PutPayload::from(bytes))
            .await?;
        drive
            .put_record(
                RecordDraft::file(
                    format!("{}-r{i:06}", spec.node_id),
                    key,
                    hash,
                    SMALL_BLOB as u64,
                )
                .with_original_filename(format!("file-{i:06}.bin")),
            )
            .await?;
    }
    for i in 0..spec.rows {
        let mut row = RowValues::new();
        row.insert("id".into(), json!(format!("{}-n{i:06}", spec.node_id)));
        row.insert(
            "title".into(),
            json!(format!("Note {i} of {}", spec.node_id)),
        );
        row.insert(
            "body".into(),
            json!("Buy milk, eggs and bread; call the plumber about the kitchen tap."),
        );
        app.put_row(TABLE, row).await?;
    }
    Ok(())
}

/// Each channel in turn synced until idle, as `starkeep-sync sync --until-idle` does
/// (pipelined pulls and pushes; the engine retries a failed round with backoff). Every round
/// is counted as it ends (its time from the end of the one before), and so is every failed
/// round the engine retried, from its counters: failures are counted, not hidden.
async fn sync_phase(node_id: &str, engines: &[&Engine]) -> Result<PhaseReport> {
    let mut report = PhaseReport::default();
    let started = Instant::now();
    for engine in engines {
        let channel = engine.channel().clone();
        let (failed_before, _) = failures(engine, &channel);
        let mut last = Instant::now();
        let result = engine
            .sync_until_idle_with(|r| {
                report.round_ms.push(last.elapsed().as_secs_f64() * 1e3);
                last = Instant::now();
                report.rounds += 1;
                report.applied += r.applied;
                report.shipped += r.shipped;
                report.became_resident += r.became_resident;
                report.failed_items += r.failures.len();
                report.halted += r.halted_by_peer.len();
                for f in r.failures.iter().take(3) {
                    note(&mut report, format!("{channel}: {}: {}", f.at, f.problem));
                }
                if let Some(why) = &r.outbound_blocked {
                    note(&mut report, format!("{channel}: outbound blocked: {why}"));
                }
            })
            .await;
        let (failed_after, last_error) = failures(engine, &channel);
        let failed = failed_after - failed_before;
        report.exchange_errors += failed as usize;
        if failed > 0 {
            let last_error = last_error.unwrap_or_default();
            note(
                &mut report,
                format!("{channel}: {failed} failed round(s), the last: {last_error}"),
            );
            eprintln!(
                "bench: load node {node_id} {channel}: {failed} failed round(s): {last_error}"
            );
        }
        let summary = result.with_context(|| format!("{node_id} {channel}: sync failed"))?;
        ensure!(
            summary.complete,
            "{node_id} {channel}: not idle after {} rounds (stalled: {}): {:?}",
            summary.rounds,
            summary.stalled,
            summary.last
        );
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Rounds of `channel` that failed on this engine so far, and the last failure's message
/// (its counters).
fn failures(engine: &Engine, channel: &Channel) -> (u64, Option<String>) {
    engine
        .metrics()
        .snapshot()
        .channels
        .get(&channel.to_string())
        .map_or((0, None), |c| (c.rounds_failed, c.last_error.clone()))
}

fn note(report: &mut PhaseReport, error: String) {
    if report.errors.len() < 5 {
        report.errors.push(error);
    }
}

/// One load node child, from the orchestrator's side.
struct NodeProc {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeProc {
    /// The next protocol line, which must start with `prefix`.
    async fn expect<T: DeserializeOwned>(&mut self, prefix: &str) -> Result<T> {
        match self.lines.next_line().await? {
            Some(line) => {
                let body = line.strip_prefix(prefix).with_context(|| {
                    format!("{}: expected {prefix:?}..., got {line:?}", self.name)
                })?;
                serde_json::from_str(body)
                    .with_context(|| format!("{}: bad {prefix:?} line {line:?}", self.name))
            }
            None => {
                let status = self.child.wait().await?;
                bail!(
                    "load node {} exited ({status}) before its {prefix:?} line",
                    self.name
                )
            }
        }
    }

    async fn go(&mut self) -> Result<()> {
        self.stdin
            .write_all(format!("{GO}\n").as_bytes())
            .await
            .with_context(|| format!("signalling {}", self.name))?;
        self.stdin.flush().await?;
        Ok(())
    }
}

/// The figures of one phase over every node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseFigures {
    /// Wall time from the signal to the last node's end, seconds.
    pub wall_s: f64,
    /// Items (records and rows) applied or shipped by all nodes.
    pub items: usize,
    /// `items / wall_s`.
    pub items_per_s: f64,
    /// Rounds run by all nodes.
    pub rounds: usize,
    /// Median round, ms.
    pub p50_ms: f64,
    /// 99th-percentile round, ms.
    pub p99_ms: f64,
    /// Rounds that failed as a whole, over all nodes.
    pub exchange_errors: usize,
    /// Items that failed within rounds, over all nodes.
    pub failed_items: usize,
    /// Origin nodes halted by a server, over all rounds.
    pub halted: usize,
}

impl PhaseFigures {
    fn of(reports: &[PhaseReport], wall_s: f64) -> Self {
        let items = reports.iter().map(|r| r.applied + r.shipped).sum();
        let all: Vec<f64> = reports.iter().flat_map(|r| r.round_ms.clone()).collect();
        Self {
            wall_s,
            items,
            items_per_s: items as f64 / wall_s,
            rounds: all.len(),
            p50_ms: percentile(&all, 0.50),
            p99_ms: percentile(&all, 0.99),
            exchange_errors: reports.iter().map(|r| r.exchange_errors).sum(),
            failed_items: reports.iter().map(|r| r.failed_items).sum(),
            halted: reports.iter().map(|r| r.halted).sum(),
        }
    }
}

/// One server's figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerFigures {
    /// HTTP requests served.
    pub requests: u64,
    /// Responses of 400 and above, by status.
    pub error_statuses: BTreeMap<u16, u64>,
    /// Peak RSS, MiB.
    pub peak_rss_mib: f64,
}

/// One setup's load run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    /// Which setup.
    pub setup: SetupId,
    /// What the servers ran on, in words.
    pub servers_on: String,
    /// Node processes.
    pub nodes: usize,
    /// Shared records (with a 256-byte blob each) per node.
    pub records_per_node: usize,
    /// App rows per node.
    pub rows_per_node: usize,
    /// Slowest node's time to write its data through its engines, seconds (untimed).
    pub write_s: f64,
    /// Phase 1: every node syncs until idle at once (uploads and early downloads).
    pub phase1: PhaseFigures,
    /// Phase 2: every node syncs until idle again (the rest of the downloads).
    pub phase2: PhaseFigures,
    /// Both phases: items over their summed wall time.
    pub items_per_s: f64,
    /// Every round of both phases: median and 99th percentile, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Peak RSS of the node processes: median and largest, MiB.
    pub node_rss_mib: (f64, f64),
    /// Each server.
    pub servers: Vec<ServerFigures>,
    /// Disk space one node's home takes at the end (database and blob files), MiB.
    pub node_home_mib: f64,
    /// Requests that failed anywhere: failed rounds and items on the nodes, error statuses
    /// on the servers.
    pub failed_requests: u64,
    /// Whether every node and server holds every node's data at the right versions, blobs
    /// present.
    pub converged: bool,
    /// What did not match, if anything (first few).
    pub problems: Vec<String>,
}

impl LoadReport {
    /// Met: no failed request and full convergence.
    pub fn passed(&self) -> bool {
        self.failed_requests == 0 && self.converged
    }
}

impl Bench {
    /// The load scenario on each setup of `plan`.
    pub(super) async fn load(&self, plan: &LoadPlan) -> Result<Vec<LoadReport>> {
        if let Some(why) = &plan.not_measured {
            eprintln!(
                "\n{banner}\nbench: WARNING: the load scenario's PostgreSQL + S3 setup will NOT \
                 run: {why}.\n{banner}\n",
                banner = "!".repeat(78)
            );
        }
        let mut out = Vec::new();
        for setup in &plan.setups {
            out.push(self.load_setup(plan, setup).await?);
        }
        Ok(out)
    }

    async fn load_setup(&self, plan: &LoadPlan, setup: &Setup) -> Result<LoadReport> {
        let id = match setup {
            Setup::Sqlite => SetupId::Sqlite,
            Setup::ScaleOut { .. } => SetupId::Postgres,
        };
        let dir = self.run_dir(&format!("load-{id:?}").to_lowercase())?;
        std::fs::create_dir_all(&dir)?;
        check_disk(&dir, plan)?;
        let tag = format!(
            "{}{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() % 1_000_000)
        );
        let apps = vec![namespace()];
        let schema = format!("bench_load_{tag}");
        let mut servers = Vec::new();
        let servers_on = match setup {
            Setup::Sqlite => {
                servers.push(self.server(&dir.join("server"), apps.clone()).await?);
                "one server: SQLite + blob directory".to_string()
            }
            Setup::ScaleOut { url, s3 } => {
                // One after the other: the first creates the schema and migrates it.
                for i in 0..2 {
                    servers.push(
                        self.server_child(ChildSpec::Server {
                            data: dir.join(format!("server-{i}")),
                            token: self.token.clone(),
                            apps: apps.clone(),
                            scale_out: Some(ScaleOut {
                                database: url.clone(),
                                schema: schema.clone(),
                                s3: s3.clone(),
                            }),
                            blob_pack_limit: None,
                        })
                        .await?,
                    );
                }
                "two servers sharing one PostgreSQL schema and one S3 bucket".to_string()
            }
        };
        eprintln!(
            "bench: load on {servers_on}: starting {} nodes ({} records with blobs and {} rows each)",
            plan.nodes, plan.records, plan.rows
        );
        let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
        let mut nodes = Vec::with_capacity(plan.nodes);
        for i in 0..plan.nodes {
            let name = format!("load-node-{i:03}");
            let spec = ChildSpec::LoadNode(LoadNodeSpec {
                home: dir.join("nodes").join(&name),
                node_id: name.clone(),
                server: urls[i % urls.len()].clone(),
                token: self.token.clone(),
                records: plan.records,
                rows: plan.rows,
                blob_seed: tag.clone(),
                page_limit: self.page_limit,
            });
            let mut child = self
                .child_command(&spec)?
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting load node {name}"))?;
            let stdin = child.stdin.take().context("a node's stdin")?;
            let stdout = child.stdout.take().context("a node's stdout")?;
            nodes.push(NodeProc {
                name,
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }

        let written: Vec<Written> =
            try_join_all(nodes.iter_mut().map(|n| n.expect::<Written>(WRITTEN))).await?;
        let write_s = written.iter().map(|w| w.write_s).fold(0.0, f64::max);
        eprintln!("bench: load: every node wrote its data (slowest {write_s:.1} s)");
        let expected: Holdings = written
            .iter()
            .map(|w| (w.origin.clone(), w.own.clone()))
            .collect();

        let mut phases = Vec::new();
        for phase in 1..=2 {
            let t = Instant::now();
            for n in nodes.iter_mut() {
                n.go().await?;
            }
            let reports: Vec<PhaseReport> =
                try_join_all(nodes.iter_mut().map(|n| n.expect::<PhaseReport>(PHASE))).await?;
            let figures = PhaseFigures::of(&reports, t.elapsed().as_secs_f64());
            eprintln!(
                "bench: load phase {phase}: {:.1} s, {} items ({:.0}/s), {} rounds, p50 {:.1} ms, \
                 p99 {:.1} ms, {} failed rounds, {} failed items",
                figures.wall_s,
                figures.items,
                figures.items_per_s,
                figures.rounds,
                figures.p50_ms,
                figures.p99_ms,
                figures.exchange_errors,
                figures.failed_items
            );
            for r in &reports {
                for e in &r.errors {
                    eprintln!("bench: load phase {phase}: {e}");
                }
            }
            phases.push((figures, reports));
        }
        let done: Vec<Done> =
            try_join_all(nodes.iter_mut().map(|n| n.expect::<Done>(DONE))).await?;
        for n in nodes.iter_mut() {
            let status = n.child.wait().await?;
            ensure!(
                status.success(),
                "load node {} exited with {status}",
                n.name
            );
        }
        let mut server_reports = Vec::new();
        for s in servers {
            server_reports.push(s.stop().await?);
        }

        // Convergence: every node and every server against what the authors wrote.
        let mut problems = Vec::new();
        for (n, d) in nodes.iter().zip(&done) {
            compare(&n.name, &expected, &d.holdings, &mut problems);
            if d.missing_blobs > 0 {
                problems.push(format!("{}: {} blobs missing", n.name, d.missing_blobs));
            }
        }
        let (server_holdings, server_missing) = match setup {
            Setup::Sqlite => {
                let store = SqliteStore::open(dir.join("server").join("server.db")).await?;
                let blobs = crate::blobs::local(
                    &dir.join("server").join("blobs"),
                    &store,
                    crate::blobs::DEFAULT_PACK_LIMIT,
                )?;
                let (h, keys) = holdings(&store, &store).await?;
                let missing = missing_blobs(blobs.object_store().as_ref(), &keys).await?;
                store.close().await;
                (h, missing)
            }
            Setup::ScaleOut { url, s3 } => {
                let store = PostgresStore::connect_with(
                    url,
                    &PostgresOptions::default().with_schema(schema.clone()),
                )
                .await?;
                let blobs =
                    crate::blobs::scale_out(s3.config(), &store, crate::blobs::DEFAULT_PACK_LIMIT)?;
                let (h, keys) = holdings(&store, &store).await?;
                let missing = missing_blobs(blobs.object_store().as_ref(), &keys).await?;
                store.close().await;
                (h, missing)
            }
        };
        compare(
            "the servers' store",
            &expected,
            &server_holdings,
            &mut problems,
        );
        if server_missing > 0 {
            problems.push(format!(
                "the servers' blob store: {server_missing} blobs missing"
            ));
        }
        for p in problems.iter().take(20) {
            eprintln!("bench: load: NOT CONVERGED: {p}");
        }

        let all_reports: Vec<&PhaseReport> = phases.iter().flat_map(|(_, r)| r.iter()).collect();
        let all_rounds: Vec<f64> = all_reports
            .iter()
            .flat_map(|r| r.round_ms.iter().copied())
            .collect();
        let mut node_rss: Vec<f64> = done.iter().map(|d| mib(d.peak_rss_kib)).collect();
        node_rss.sort_by(f64::total_cmp);
        let client_failures: usize = all_reports
            .iter()
            .map(|r| r.exchange_errors + r.failed_items + r.halted)
            .sum();
        let server_failures: u64 = server_reports
            .iter()
            .flat_map(|r| r.error_statuses.values())
            .sum();
        let (phase1, phase2) = (phases[0].0.clone(), phases[1].0.clone());
        let first_home = dir.join("nodes").join(&nodes[0].name);
        let node_home_mib = disk_usage(&first_home) as f64 / f64::from(1 << 20);
        let report = LoadReport {
            setup: id,
            servers_on,
            nodes: plan.nodes,
            records_per_node: plan.records,
            rows_per_node: plan.rows,
            write_s,
            items_per_s: (phase1.items + phase2.items) as f64 / (phase1.wall_s + phase2.wall_s),
            phase1,
            phase2,
            p50_ms: percentile(&all_rounds, 0.50),
            p99_ms: percentile(&all_rounds, 0.99),
            node_rss_mib: (
                percentile(&node_rss, 0.50),
                node_rss.last().copied().unwrap_or(0.0),
            ),
            servers: server_reports.iter().map(server_figures).collect(),
            node_home_mib,
            failed_requests: client_failures as u64 + server_failures,
            converged: problems.is_empty(),
            problems: problems.into_iter().take(20).collect(),
        };

        // Clean up what this run put outside the work directory, then the (large) node
        // homes: the next setup needs the space.
        if let Setup::ScaleOut { url, s3 } = setup {
            if let Err(e) = drop_scale_out(url, &schema, s3, &tag, &written, plan.records).await {
                eprintln!("bench: warning: cleaning up after the scale-out load run: {e:#}");
            }
        }
        let t = Instant::now();
        eprintln!("bench: load: removing the node homes");
        remove_homes(nodes.iter().map(|n| dir.join("nodes").join(&n.name))).await;
        eprintln!(
            "bench: load: removed the node homes in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Ok(report)
    }
}

fn server_figures(r: &ServerReport) -> ServerFigures {
    ServerFigures {
        requests: r.requests,
        error_statuses: r.error_statuses.clone(),
        peak_rss_mib: mib(r.peak_rss_kib),
    }
}

/// Notes every way `got` differs from `want`.
fn compare(who: &str, want: &Holdings, got: &Holdings, problems: &mut Vec<String>) {
    for (origin, digest) in want {
        match got.get(origin) {
            None => problems.push(format!("{who}: nothing from {origin}")),
            Some(d) if d != digest => problems.push(format!(
                "{who}: {origin}: {} records and {} rows, want {} and {}{}",
                d.records,
                d.rows,
                digest.records,
                digest.rows,
                if d.records == digest.records && d.rows == digest.rows {
                    " (same counts, other versions)"
                } else {
                    ""
                }
            )),
            Some(_) => {}
        }
    }
    for origin in got.keys().filter(|o| !want.contains_key(*o)) {
        problems.push(format!("{who}: items from an unknown origin {origin}"));
    }
}

/// Drops the run's schema and deletes the blobs its nodes wrote into the bucket (their keys
/// follow from the run's blob seed).
async fn drop_scale_out(
    url: &str,
    schema: &str,
    s3: &S3Spec,
    tag: &str,
    written: &[Written],
    records: usize,
) -> Result<()> {
    use futures::{stream, StreamExt};
    use sqlx::Connection;
    let mut admin = sqlx::postgres::PgConnection::connect(url).await?;
    // Our own name (letters, digits and '_'): safe to splice.
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let mut keys = Vec::with_capacity(written.len() * records);
    for w in written {
        let seed = format!("{tag}-{}", w.origin);
        for i in 0..records {
            let (_, hash) = data::small_blob(&seed, i);
            keys.push(Ok(ObjectPath::parse(data::shared_blob_key(&hash))?));
        }
    }
    let store = ObjectBlobs::s3(s3.config())?.object_store().clone();
    let deleted: Vec<ObjectPath> = store
        .delete_stream(stream::iter(keys).boxed())
        .try_collect()
        .await?;
    eprintln!(
        "bench: load: deleted {} blobs from the bucket",
        deleted.len()
    );
    Ok(())
}

/// Refuses a run that would fill the disk: every node ends up with every node's blobs and a
/// database of every item. A 256-byte blob is a row of the node's pack (decision 0014:
/// about 500 bytes with its key, digest and index entry; it was a 4 KiB file each before).
fn check_disk(dir: &Path, plan: &LoadPlan) -> Result<()> {
    let items = (plan.nodes * plan.nodes) as u64;
    let need = items * plan.records as u64 * (500 + 800)
        + items * plan.rows as u64 * 500
        + (plan.nodes * plan.records) as u64 * 500;
    let Some(free) = free_bytes(dir) else {
        eprintln!(
            "bench: warning: cannot tell the free space under {}",
            dir.display()
        );
        return Ok(());
    };
    eprintln!(
        "bench: load: about {:.1} GiB needed under {}, {:.1} GiB free",
        need as f64 / f64::from(1 << 30),
        dir.display(),
        free as f64 / f64::from(1 << 30)
    );
    ensure!(
        need < free / 10 * 8,
        "the load run needs about {:.1} GiB under {} ({} nodes each ending with {} blobs), \
         more than 80 % of the {:.1} GiB free; use fewer --nodes or --load-records, or \
         another --work-dir",
        need as f64 / f64::from(1 << 30),
        dir.display(),
        plan.nodes,
        thousands((plan.nodes * plan.records) as f64),
        free as f64 / f64::from(1 << 30)
    );
    Ok(())
}

/// Removes the node homes, many at a time: one `remove_dir_all` after another runs at a few
/// hundred files a second on a disk mounted with `discard` (each deletion waits for the
/// device), and the homes hold a blob file per record.
async fn remove_homes(homes: impl Iterator<Item = PathBuf>) {
    use futures::{stream, StreamExt};
    stream::iter(homes)
        .map(|home| tokio::task::spawn_blocking(move || std::fs::remove_dir_all(home)))
        .buffer_unordered(16)
        .for_each(|_| async {})
        .await;
}

/// Bytes allocated on disk to the files under `path` (blocks, not lengths: a 256-byte blob
/// file takes a whole block).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => m.blocks() * 512 + disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Free bytes for an unprivileged user on the filesystem of `dir`, from `df`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}
