//! `starkeep-sync bench`: the benchmark suite of issue 7, over real loopback HTTP with SQLite
//! on both sides and filesystem blobs.
//!
//! Processes: this process seeds the databases and blob directories (untimed), then for
//! every run starts the server and each node as child processes of this same binary
//! (`starkeep-sync bench-child`), so every process's peak RSS (`VmHWM`) is its own. The server
//! child counts request and response body bytes in a tower layer around the sync service;
//! the node child times its rounds. Issue 3's storage figures are measured in this process,
//! directly against `SqliteStore` through `sync-core` (no HTTP).

mod child;
mod data;
mod load;
mod pg;
mod report;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use sync_blobs::{BlobMover, ObjectBlobs};
use sync_engine::{
    core::{
        resume_clock, BlobStore, ChannelData, ChannelState, RecordStore, Requester, RequesterParts,
        Responder, ResponderConfig, ResponderParts, RoundConfig, SyncStateStore,
    },
    hlc::{Clock, ClockConfig, NodeId},
    AppNamespace, Channel, SystemClock,
};
use sync_sqlite::SqliteStore;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

pub use child::ChildSpec;
use child::{NodeJob, NodeReport, ServerReport, READY};
use data::{RawInserts, RawRows, Versions, ORIGIN};
use report::{
    percentile, BackendStorage, Machine, Results, Run, Scenario, Stat, StorageReport, Verdict,
    BATCHED_CEILING_PER_S, BATCHED_RATIO, CEILING_PER_S, DISK_MB_PER_S, MB_PER_S, NODE_RSS, P50_MS,
    P99_MS, PULL_MB_PER_S, PUSH_MB_PER_S, RATIO, RECORDS_PER_S, ROUNDS, SERVER_RSS, WIRE_BYTES,
};

use crate::{
    exit,
    node::{Node, NodeConfig},
};

/// `starkeep-sync bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Smaller datasets, for routine checks (under two minutes).
    #[arg(long)]
    quick: bool,
    /// Runs per scenario (default 3); medians and spreads are reported.
    #[arg(long)]
    runs: Option<usize>,
    /// Only these scenarios (repeatable; default: all). Numbers 1-6 work too.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<ScenarioId>,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the results as the Markdown section of docs/benchmarks.md to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the load scenario's results as their Markdown section to this file.
    #[arg(long)]
    load_markdown: Option<PathBuf>,
    /// Keep the seeded datasets in this directory and reuse them on the next run
    /// (default: a temporary directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Items per round (default: the engine's, 1000).
    #[arg(long)]
    page_limit: Option<usize>,
    /// The largest blob the server and nodes keep in their databases (default 65536; 0:
    /// every blob a file, for an A/B against the default; decision 0014).
    #[arg(long, default_value_t = crate::blobs::DEFAULT_PACK_LIMIT)]
    pub blob_pack_limit: u64,
    /// Nodes run their rounds without pipelined pulls (for an A/B against the default).
    #[arg(long)]
    no_pipelined_pulls: bool,
    /// Nodes run their rounds without pipelined pushes (for an A/B against the default).
    #[arg(long)]
    no_pipelined_pushes: bool,
    /// A PostgreSQL database for issue 3's storage figures on PostgreSQL and the load
    /// scenario's scale-out setup (each run works in fresh schemas it drops again).
    #[arg(long, env = "STARKEEP_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    #[command(flatten)]
    load: load::LoadArgs,
}

/// `starkeep-sync bench-child` (internal).
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// What to do, as JSON.
    #[arg(long)]
    spec: String,
}

/// The scenarios of issue 7, plus issue 3's storage figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum ScenarioId {
    /// 1: a fresh node downloads shared records without blobs.
    #[value(alias = "1")]
    Download,
    /// 2: a fresh node downloads shared records with 256-byte blobs.
    #[value(alias = "2")]
    DownloadBlobs,
    /// 3: a node uploads records with 256-byte blobs to an empty server.
    #[value(alias = "3")]
    Upload,
    /// 4: a round with nothing to do, at three stored-record counts.
    #[value(alias = "4")]
    Noop,
    /// 5: one large blob node -> server -> second node.
    #[value(alias = "5")]
    LargeBlob,
    /// 6: app rows over an app channel, half in the reserved file-backed table.
    #[value(alias = "6")]
    AppRows,
    /// Issue 3: a no-op round's storage cost, and apply vs raw inserts.
    Storage,
    /// Issue 8: many nodes syncing at once against SQLite, and against two servers on
    /// PostgreSQL + S3 (only when asked for: not part of the default set).
    Load,
}

/// How big each scenario is.
#[derive(Debug, Clone)]
struct Sizes {
    download: usize,
    blobs: usize,
    upload: usize,
    noop: [usize; 3],
    noop_rounds: usize,
    large_blob: u64,
    app_rows: usize,
    apply: usize,
    storage_rounds: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            download: 1_000_000,
            blobs: 100_000,
            upload: 100_000,
            noop: [1_000, 100_000, 1_000_000],
            noop_rounds: 300,
            large_blob: 1 << 30,
            app_rows: 100_000,
            apply: 100_000,
            storage_rounds: 300,
        }
    }

    fn quick() -> Self {
        Self {
            download: 50_000,
            blobs: 5_000,
            upload: 5_000,
            noop: [1_000, 10_000, 100_000],
            noop_rounds: 100,
            large_blob: 128 << 20,
            app_rows: 10_000,
            apply: 20_000,
            storage_rounds: 100,
        }
    }
}

/// Runs the suite.
pub async fn run(args: BenchArgs) -> Result<u8> {
    let started = Instant::now();
    let load_before = Machine::load_average();
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let runs = args.runs.unwrap_or(3).max(1);
    let mut chosen = if args.scenarios.is_empty() {
        ScenarioId::value_variants()
            .iter()
            .copied()
            .filter(|s| *s != ScenarioId::Load)
            .collect()
    } else {
        args.scenarios.clone()
    };
    chosen.sort();
    chosen.dedup();
    let (work, _temp) = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the work directory {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("starkeep-bench-")
                .tempdir()
                .context("creating a temporary directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let bench = Bench {
        exe: std::env::current_exe().context("locating this binary")?,
        token: crate::server::new_token(),
        work,
        sizes,
        runs,
        page_limit: args.page_limit,
        pipelined_pulls: args.no_pipelined_pulls.then_some(false),
        pipelined_pushes: args.no_pipelined_pushes.then_some(false),
        pack_limit: args.blob_pack_limit,
        postgres_url: args.postgres_url.clone(),
    };
    let load_plan = if chosen.contains(&ScenarioId::Load) {
        Some(
            args.load
                .plan(args.quick, args.postgres_url.as_deref())
                .context("the load scenario")?,
        )
    } else {
        None
    };
    let mut command = String::from("starkeep-sync bench");
    if args.quick {
        command.push_str(" --quick");
    }
    command.push_str(&format!(" --runs {runs}"));
    if let Some(n) = args.page_limit {
        command.push_str(&format!(" --page-limit {n}"));
    }
    if args.no_pipelined_pulls {
        command.push_str(" --no-pipelined-pulls");
    }
    if args.no_pipelined_pushes {
        command.push_str(" --no-pipelined-pushes");
    }
    if args.blob_pack_limit != crate::blobs::DEFAULT_PACK_LIMIT {
        command.push_str(&format!(" --blob-pack-limit {}", args.blob_pack_limit));
    }
    if !args.scenarios.is_empty() {
        for s in &chosen {
            if let Some(v) = s.to_possible_value() {
                command.push_str(&format!(" --scenario {}", v.get_name()));
            }
        }
    }
    if let Some(plan) = &load_plan {
        command.push_str(&plan.options());
    }
    eprintln!(
        "bench: {} run(s) per scenario, work directory {}",
        runs,
        bench.work.display()
    );

    let mut scenarios = Vec::new();
    let mut storage = None;
    let mut load = Vec::new();
    for id in chosen {
        let t = Instant::now();
        match id {
            ScenarioId::Download => scenarios.push(bench.download().await?),
            ScenarioId::DownloadBlobs => scenarios.push(bench.download_blobs().await?),
            ScenarioId::Upload => scenarios.push(bench.upload().await?),
            ScenarioId::Noop => scenarios.extend(bench.noop().await?),
            ScenarioId::LargeBlob => scenarios.push(bench.large_blob().await?),
            ScenarioId::AppRows => scenarios.push(bench.app_rows().await?),
            ScenarioId::Storage => storage = Some(bench.storage().await?),
            ScenarioId::Load => {
                let plan = load_plan.as_ref().expect("planned above");
                load = bench.load(plan).await?;
            }
        }
        eprintln!("bench: {id:?} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    judge(&mut scenarios, args.quick);

    let results = Results {
        command,
        quick: args.quick,
        runs,
        page_limit: args.page_limit,
        date: report::today(),
        duration_s: started.elapsed().as_secs_f64(),
        machine: Machine::detect(load_before),
        scenarios,
        storage,
        load_not_measured: load_plan.and_then(|p| p.not_measured),
        load,
    };
    let markdown = results.markdown();
    let load_markdown = results.load_markdown();
    println!("{markdown}");
    println!("{load_markdown}");
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.load_markdown {
        std::fs::write(path, &load_markdown)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Run directories were kept until now (see `Bench::run_dir`); removing a few hundred
    // thousand blob files takes a while.
    eprintln!("bench: removing the run directories");
    let _ = std::fs::remove_dir_all(bench.work.join("runs"));
    let failed: Vec<&load::LoadReport> = results.load.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        for r in failed {
            eprintln!(
                "bench: the load run on {} FAILED: {} failed request(s), converged: {}",
                r.servers_on, r.failed_requests, r.converged
            );
        }
        return Ok(exit::INCOMPLETE);
    }
    Ok(exit::OK)
}

/// Runs one side of a benchmark run (`bench-child`).
pub async fn child(args: ChildArgs) -> Result<u8> {
    let spec: ChildSpec = serde_json::from_str(&args.spec)
        .context("bench-child is started by `starkeep-sync bench`, with a JSON --spec")?;
    child::run(spec).await
}

/// Issue 7's targets, checked against the medians.
fn judge(scenarios: &mut [Scenario], quick: bool) {
    let caveat = if quick { ", quick sizes" } else { "" };
    let noop = |s: &[Scenario]| -> Option<(f64, f64)> {
        let mut sizes: Vec<(u64, f64)> = s
            .iter()
            .filter(|s| s.number == 4)
            .filter_map(|s| Some((s.items, s.median(P50_MS)?)))
            .collect();
        sizes.sort_by_key(|(n, _)| *n);
        Some((sizes.first()?.1, sizes.last()?.1))
    };
    let noop_figures = noop(scenarios);
    let noop_largest = scenarios
        .iter()
        .filter(|s| s.number == 4)
        .map(|s| s.items)
        .max();
    for s in scenarios.iter_mut() {
        let rate = s.median(RECORDS_PER_S).unwrap_or(0.0);
        let node = s.median(NODE_RSS).unwrap_or(0.0);
        let server = s.median(SERVER_RSS).unwrap_or(0.0);
        let rss = node.max(server);
        let verdict = match s.number {
            1 => {
                let ratio = s.median(RATIO).unwrap_or(0.0);
                Some(Verdict {
                    met: rate >= 100_000.0 && ratio >= 0.25 && rss <= 150.0,
                    detail: format!(
                        "{} /s, {:.0} % of ceiling, {:.0} MiB{caveat}",
                        report::thousands(rate),
                        ratio * 100.0,
                        rss
                    ),
                })
            }
            2 | 3 => {
                let wire = s.median(WIRE_BYTES).unwrap_or(f64::MAX);
                let wire_ok = s.number != 2 || wire <= 450.0;
                Some(Verdict {
                    met: rate >= 30_000.0 && wire_ok,
                    detail: if s.number == 2 {
                        format!(
                            "{} /s, {:.0} B/record{caveat}",
                            report::thousands(rate),
                            wire
                        )
                    } else {
                        format!("{} /s{caveat}", report::thousands(rate))
                    },
                })
            }
            4 if Some(s.items) == noop_largest => noop_figures.map(|(small, large)| Verdict {
                met: large <= 2.0 && large <= 1.5 * small,
                detail: format!(
                    "{large:.2} ms, {:.2}× the 1,000-record round{caveat}",
                    large / small
                ),
            }),
            5 => {
                let mbs = s.median(MB_PER_S).unwrap_or(0.0);
                Some(Verdict {
                    met: mbs >= 300.0 && rss <= 64.0,
                    detail: format!("{mbs:.0} MB/s, {rss:.0} MiB{caveat}"),
                })
            }
            _ => None,
        };
        s.verdict = verdict;
    }
}

/// The orchestrator: where datasets live and how children are started.
struct Bench {
    exe: PathBuf,
    token: String,
    work: PathBuf,
    sizes: Sizes,
    runs: usize,
    page_limit: Option<usize>,
    pipelined_pulls: Option<bool>,
    pipelined_pushes: Option<bool>,
    /// The largest blob kept in a database (decision 0014); datasets with blobs are seeded
    /// (and named) per limit.
    pack_limit: u64,
    postgres_url: Option<String>,
}

/// A running server child.
struct ServerChild {
    child: tokio::process::Child,
    url: String,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ServerChild {
    /// Closes its stdin, which stops it, and reads its report.
    async fn stop(mut self) -> Result<ServerReport> {
        drop(self.child.stdin.take());
        let mut report = None;
        while let Some(line) = self.lines.next_line().await? {
            if let Ok(r) = serde_json::from_str::<ServerReport>(&line) {
                report = Some(r);
            }
        }
        let status = self.child.wait().await?;
        ensure!(status.success(), "the bench server exited with {status}");
        report.context("the bench server printed no report")
    }
}

/// Milliseconds of a run's rounds, as figures.
fn latency(run: &mut Run, node: &NodeReport) {
    run.insert(ROUNDS, node.rounds as f64);
    run.insert(P50_MS, percentile(&node.round_ms, 0.50));
    run.insert(P99_MS, percentile(&node.round_ms, 0.99));
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Bench {
    fn child_command(&self, spec: &ChildSpec) -> Result<Command> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("bench-child")
            .arg("--spec")
            .arg(serde_json::to_string(spec)?)
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Starts a server child on `data` and waits until it listens.
    async fn server(&self, data: &Path, apps: Vec<AppNamespace>) -> Result<ServerChild> {
        self.server_child(ChildSpec::Server {
            data: data.to_path_buf(),
            token: self.token.clone(),
            apps,
            scale_out: None,
            blob_pack_limit: Some(self.pack_limit),
        })
        .await
    }

    /// Starts a server child and waits until it listens.
    async fn server_child(&self, spec: ChildSpec) -> Result<ServerChild> {
        let mut child = self
            .child_command(&spec)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the bench server")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the bench server did not start within 120 s")??
            .context("the bench server exited before listening")?;
        let url = first
            .strip_prefix(READY)
            .with_context(|| format!("unexpected first line from the bench server: {first:?}"))?
            .to_string();
        Ok(ServerChild { child, url, lines })
    }

    /// Runs a node child and returns its report.
    async fn node(&self, home: &Path, channel: &Channel, job: NodeJob) -> Result<NodeReport> {
        let spec = ChildSpec::Node {
            home: home.to_path_buf(),
            channel: channel.to_string(),
            page_limit: self.page_limit,
            pipelined_pulls: self.pipelined_pulls,
            pipelined_pushes: self.pipelined_pushes,
            job,
        };
        let out = self
            .child_command(&spec)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .output()
            .await
            .context("running the bench node")?;
        ensure!(
            out.status.success(),
            "the bench node on {} failed ({})",
            home.display(),
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .with_context(|| format!("unexpected output from the bench node: {text:?}"))
    }

    /// A fresh directory for one run's server or node under `runs/`. Runs keep their
    /// directories until the suite ends: creating files right after deleting tens of
    /// thousands of others is several times slower on ext4 (its inode allocator skips
    /// recently freed inodes one by one), which would charge one run for the last one's
    /// clean-up.
    fn run_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join("runs").join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(dir)
    }

    /// A new node home (any old one removed) pointing at `url`.
    async fn fresh_node(
        &self,
        home: &Path,
        node_id: &str,
        url: &str,
        apps: Vec<AppNamespace>,
    ) -> Result<()> {
        if home.exists() {
            std::fs::remove_dir_all(home)?;
        }
        Node::init(
            home,
            NodeConfig {
                node_id: node_id.into(),
                server: url.into(),
                token: self.token.clone(),
                apps,
                blob_pack_limit: Some(self.pack_limit),
            },
        )
        .await
    }

    /// Points an existing node home at the server at `url` (with this run's token).
    fn point_node(&self, home: &Path, url: &str) -> Result<()> {
        let path = home.join("config.json");
        let mut config: NodeConfig = serde_json::from_slice(&std::fs::read(&path)?)?;
        config.server = url.into();
        config.token = self.token.clone();
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    /// A directory seeded once by `seed` (and reused from an earlier `--work-dir` run).
    async fn dataset<F, Fut>(&self, name: &str, seed: F) -> Result<PathBuf>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let dir = self.work.join(name);
        let ready = dir.join(".seeded");
        if ready.exists() {
            return Ok(dir);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let t = Instant::now();
        eprintln!("bench: seeding {name} ...");
        seed(dir.clone()).await?;
        std::fs::write(&ready, b"")?;
        eprintln!("bench: seeded {name} in {:.1} s", t.elapsed().as_secs_f64());
        Ok(dir)
    }

    /// A server data directory holding shared records `0..n` of [`ORIGIN`] (with their
    /// small blobs when `blobs`).
    async fn server_records(&self, n: usize, blobs: bool) -> Result<PathBuf> {
        let name = if blobs {
            format!("server-records-blobs-{n}-pack{}", self.pack_limit)
        } else {
            format!("server-records-{n}")
        };
        self.dataset(&name, |dir| async move {
            let versions = Versions::new(ORIGIN)?;
            let store = SqliteStore::open(dir.join("server.db")).await?;
            let seed = blobs.then_some("server");
            data::seed_records(&store, &versions, n, seed).await?;
            if let Some(seed) = seed {
                let blobs = crate::blobs::local(&dir.join("blobs"), &store, self.pack_limit)?;
                data::seed_small_blobs(&blobs, seed, 0..n, data::shared_blob_key).await?;
            }
            store.close().await;
            // Remember the versions, so a reused dataset and its ceiling rows agree.
            std::fs::write(dir.join("versions"), versions_tag(&versions))?;
            Ok(())
        })
        .await
    }

    /// The raw ceilings of a scenario's rows: one insert per row (the issue's), and many
    /// rows per insert.
    async fn ceilings(&self, rows: RawRows<'_>) -> Result<Ceilings> {
        let path = self.work.join("ceiling.db");
        Ok(Ceilings {
            per_row: data::raw_ceiling(&path, rows, RawInserts::PerRow).await?,
            batched: data::raw_ceiling(&path, rows, RawInserts::MultiRow).await?,
        })
    }

    /// Scenario 1 or 2: fresh nodes download shared records `0..n` from a seeded server.
    async fn download_runs(&self, n: usize, blobs: bool) -> Result<Vec<Run>> {
        let dataset = self.server_records(n, blobs).await?;
        let versions = load_versions(&dataset)?;
        let mut runs = Vec::new();
        for i in 0..self.runs {
            let ceiling = self
                .ceilings(RawRows::Records {
                    versions: &versions,
                    n,
                    blob_seed: blobs.then_some("server"),
                })
                .await?;
            let server = self.server(&dataset, Vec::new()).await?;
            let home = self.run_dir(&format!("download-{n}-{i}-node"))?;
            self.fresh_node(&home, "bench-node", &server.url, Vec::new())
                .await?;
            let node = self.node(&home, &Channel::Drive, NodeJob::UntilIdle).await;
            let wire = server.stop().await?;
            let node = node?;
            ensure!(
                node.applied == n,
                "the node applied {} of {n} records",
                node.applied
            );
            let run = transfer_run(n, &node, &wire, Some(ceiling));
            progress(if blobs { 2 } else { 1 }, i, &run);
            runs.push(run);
        }
        Ok(runs)
    }

    async fn download(&self) -> Result<Scenario> {
        let n = self.sizes.download;
        Ok(Scenario::new(
            1,
            "initial download, no blobs".into(),
            n as u64,
            self.download_runs(n, false).await?,
            "≥ 100,000 /s, ≥ 25 % of ceiling, ≤ 150 MiB",
        ))
    }

    async fn download_blobs(&self) -> Result<Scenario> {
        let n = self.sizes.blobs;
        Ok(Scenario::new(
            2,
            "initial download, 256-byte blobs".into(),
            n as u64,
            self.download_runs(n, true).await?,
            "≥ 30,000 /s, ≤ 450 B/record",
        ))
    }

    /// Scenario 3: a node with `n` new records and their blobs uploads to an empty server.
    async fn upload(&self) -> Result<Scenario> {
        let n = self.sizes.upload;
        let node_id = "bench-uploader";
        let home = self
            .dataset(
                &format!("node-upload-{n}-pack{}", self.pack_limit),
                |dir| async move {
                    let home = dir.join("home");
                    self.fresh_node(&home, node_id, "http://127.0.0.1:9", Vec::new())
                        .await?;
                    let versions = Versions::new(node_id)?;
                    let store = SqliteStore::open(home.join("node.db")).await?;
                    data::seed_records(&store, &versions, n, Some(node_id)).await?;
                    let blobs = crate::blobs::local(&home.join("blobs"), &store, self.pack_limit)?;
                    data::seed_small_blobs(&blobs, node_id, 0..n, data::shared_blob_key).await?;
                    store.close().await;
                    std::fs::write(dir.join("versions"), versions_tag(&versions))?;
                    Ok(())
                },
            )
            .await?;
        let versions = load_versions(&home)?;
        let home = home.join("home");
        let mut runs = Vec::new();
        for i in 0..self.runs {
            let ceiling = self
                .ceilings(RawRows::Records {
                    versions: &versions,
                    n,
                    blob_seed: Some(node_id),
                })
                .await?;
            let data_dir = self.run_dir(&format!("upload-{i}-server"))?;
            // Start over: the node has shipped nothing yet.
            let store = SqliteStore::open(home.join("node.db")).await?;
            data::set_state(&store, &Channel::Drive, ChannelState::default()).await?;
            store.close().await;
            let server = self.server(&data_dir, Vec::new()).await?;
            self.point_node(&home, &server.url)?;
            let node = self.node(&home, &Channel::Drive, NodeJob::UntilIdle).await;
            let wire = server.stop().await?;
            let node = node?;
            ensure!(
                node.shipped == n,
                "the node shipped {} of {n} records",
                node.shipped
            );
            let run = transfer_run(n, &node, &wire, Some(ceiling));
            progress(3, i, &run);
            runs.push(run);
        }
        Ok(Scenario::new(
            3,
            "upload, 256-byte blobs, empty server".into(),
            n as u64,
            runs,
            "≥ 30,000 /s",
        ))
    }

    /// A node home and a server data directory both holding records `0..n` of [`ORIGIN`],
    /// the node's state saying it is in sync (own and peer watermarks at the coverage).
    async fn in_sync_pair(&self, n: usize) -> Result<(PathBuf, PathBuf)> {
        let server = self.server_records(n, false).await?;
        let versions = load_versions(&server)?;
        let node = self
            .dataset(&format!("node-in-sync-{n}"), |dir| async move {
                let home = dir.join("home");
                self.fresh_node(&home, "bench-node", "http://127.0.0.1:9", Vec::new())
                    .await?;
                let store = SqliteStore::open(home.join("node.db")).await?;
                data::seed_records(&store, &versions, n, None).await?;
                let coverage = RecordStore::coverage(&store).await?;
                let state = ChannelState {
                    own: coverage.clone(),
                    peer: coverage,
                };
                data::set_state(&store, &Channel::Drive, state).await?;
                store.close().await;
                Ok(())
            })
            .await?;
        Ok((node.join("home"), server))
    }

    /// Scenario 4: rounds with nothing to do, at each stored-record count.
    async fn noop(&self) -> Result<Vec<Scenario>> {
        let mut out = Vec::new();
        for n in self.sizes.noop {
            let (home, dataset) = self.in_sync_pair(n).await?;
            let mut runs = Vec::new();
            for i in 0..self.runs {
                let server = self.server(&dataset, Vec::new()).await?;
                self.point_node(&home, &server.url)?;
                let job = NodeJob::Noop {
                    warmup: 20,
                    rounds: self.sizes.noop_rounds,
                };
                let node = self.node(&home, &Channel::Drive, job).await;
                let wire = server.stop().await?;
                let node = node?;
                let mut run = Run::new();
                latency(&mut run, &node);
                run.insert(NODE_RSS, mib(node.peak_rss_kib));
                run.insert(SERVER_RSS, mib(wire.peak_rss_kib));
                progress(4, i, &run);
                runs.push(run);
            }
            out.push(Scenario::new(
                4,
                format!(
                    "no-op round, {} records stored on both sides",
                    report::thousands(n as f64)
                ),
                n as u64,
                runs,
                "p50 ≤ 2 ms at 1,000,000 and ≤ 1.5× the 1,000 figure",
            ));
        }
        Ok(out)
    }

    /// Scenario 5: one large blob from a node to the server, then to a second node.
    async fn large_blob(&self) -> Result<Scenario> {
        let size = self.sizes.large_blob;
        let pusher = self
            .dataset(&format!("node-large-blob-{size}"), |dir| async move {
                let home = dir.join("home");
                self.fresh_node(&home, "bench-pusher", "http://127.0.0.1:9", Vec::new())
                    .await?;
                let blobs = home.join("blobs");
                let (key, hash) =
                    tokio::task::spawn_blocking(move || data::write_large_blob(&blobs, size))
                        .await??;
                let node = Node::open(&home).await?;
                let engine = node
                    .engine(Channel::Drive, &crate::node::EngineOptions::default())
                    .await?;
                engine
                    .put_record(sync_engine::RecordDraft::file(
                        "01BENCHLARGEBLOB000000000",
                        key,
                        hash,
                        size,
                    ))
                    .await?;
                Ok(())
            })
            .await?
            .join("home");
        let mut runs = Vec::new();
        for i in 0..self.runs {
            // What the disk allows right now: the same bytes written and fsynced once.
            let scratch = self.work.join("runs");
            let disk =
                tokio::task::spawn_blocking(move || data::synced_write_ceiling(&scratch, size))
                    .await??;
            let data_dir = self.run_dir(&format!("large-blob-{i}-server"))?;
            let store = SqliteStore::open(pusher.join("node.db")).await?;
            data::set_state(&store, &Channel::Drive, ChannelState::default()).await?;
            store.close().await;
            let server = self.server(&data_dir, Vec::new()).await?;
            self.point_node(&pusher, &server.url)?;
            let puller = self.run_dir(&format!("large-blob-{i}-node"))?;
            self.fresh_node(&puller, "bench-puller", &server.url, Vec::new())
                .await?;
            let legs = async {
                let push = self
                    .node(&pusher, &Channel::Drive, NodeJob::UntilIdle)
                    .await?;
                let pull = self
                    .node(&puller, &Channel::Drive, NodeJob::UntilIdle)
                    .await?;
                anyhow::Ok((push, pull))
            }
            .await;
            let wire = server.stop().await?;
            let (push, pull) = legs?;
            ensure!(
                push.shipped == 1 && pull.applied == 1,
                "the blob did not make it: shipped {}, applied {}",
                push.shipped,
                pull.applied
            );
            let mb = size as f64 / 1e6;
            let mut run = Run::new();
            run.insert(MB_PER_S, mb / (push.elapsed_s + pull.elapsed_s));
            run.insert(PUSH_MB_PER_S, mb / push.elapsed_s);
            run.insert(PULL_MB_PER_S, mb / pull.elapsed_s);
            run.insert(DISK_MB_PER_S, disk);
            run.insert(ROUNDS, (push.rounds + pull.rounds) as f64);
            run.insert(NODE_RSS, mib(push.peak_rss_kib.max(pull.peak_rss_kib)));
            run.insert(SERVER_RSS, mib(wire.peak_rss_kib));
            progress(5, i, &run);
            runs.push(run);
        }
        Ok(Scenario::new(
            5,
            format!("one {} MiB blob, node -> server -> node", size >> 20),
            size,
            runs,
            "≥ 300 MB/s, ≤ 64 MiB per process",
        ))
    }

    /// Scenario 6: a fresh node downloads app rows, half of them in the reserved
    /// file-backed table with 256-byte blobs.
    async fn app_rows(&self) -> Result<Scenario> {
        let n = self.sizes.app_rows;
        let dataset = self
            .dataset(
                &format!("server-app-rows-{n}-pack{}", self.pack_limit),
                |dir| async move {
                    let versions = Versions::new(ORIGIN)?;
                    let store = SqliteStore::open(dir.join("server.db")).await?;
                    data::seed_app_rows(&store, &versions, n, "app").await?;
                    let blobs = crate::blobs::local(&dir.join("blobs"), &store, self.pack_limit)?;
                    data::seed_small_blobs(
                        &blobs,
                        "app",
                        (0..n).filter(|i| i % 2 == 1),
                        data::app_key,
                    )
                    .await?;
                    store.close().await;
                    std::fs::write(dir.join("versions"), versions_tag(&versions))?;
                    Ok(())
                },
            )
            .await?;
        let versions = load_versions(&dataset)?;
        let channel = Channel::App(data::APP.into());
        let mut runs = Vec::new();
        for i in 0..self.runs {
            let ceiling = self
                .ceilings(RawRows::AppRows {
                    versions: &versions,
                    n,
                    seed: "app",
                })
                .await?;
            let server = self.server(&dataset, vec![data::namespace()]).await?;
            let home = self.run_dir(&format!("app-rows-{i}-node"))?;
            self.fresh_node(&home, "bench-node", &server.url, vec![data::namespace()])
                .await?;
            let node = self.node(&home, &channel, NodeJob::UntilIdle).await;
            let wire = server.stop().await?;
            let node = node?;
            ensure!(
                node.applied == n,
                "the node applied {} of {n} rows",
                node.applied
            );
            let run = transfer_run(n, &node, &wire, Some(ceiling));
            progress(6, i, &run);
            runs.push(run);
        }
        Ok(Scenario::new(
            6,
            "app rows download, half file-backed (256-byte blobs)".into(),
            n as u64,
            runs,
            "– (reported)",
        ))
    }

    /// Issue 3: a no-op round's storage cost at the smallest and largest scenario-4 sizes,
    /// and `RecordStore::apply` against raw inserts.
    async fn storage(&self) -> Result<StorageReport> {
        let small = self.sizes.noop[0];
        let large = self.sizes.noop[2];
        let (coverage, rounds) = self.sqlite_storage([small, large]).await?;
        let versions = Versions::new(ORIGIN)?;
        let (mut apply, mut raw, mut ratio, mut batched) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.runs {
            let a =
                data::store_apply_rate(&self.work.join("apply.db"), &versions, self.sizes.apply)
                    .await?;
            let c = self
                .ceilings(RawRows::Records {
                    versions: &versions,
                    n: self.sizes.apply,
                    blob_seed: None,
                })
                .await?;
            batched.push(c.batched);
            let c = c.per_row;
            eprintln!(
                "bench: storage, apply {a:.0} records/s, raw {c:.0} rows/s ({:.2})",
                a / c
            );
            apply.push(a);
            raw.push(c);
            ratio.push(a / c);
        }
        let (postgres, postgres_not_measured) = match &self.postgres_url {
            Some(url) => {
                let (coverage, rounds) = self.pg_storage(url, [small, large]).await?;
                let figures = BackendStorage {
                    coverage_us: (coverage[0], coverage[1]),
                    round_us: (rounds[0], rounds[1]),
                };
                (Some(figures), None)
            }
            None => {
                let why = "no PostgreSQL given (--postgres-url or STARKEEP_BENCH_POSTGRES_URL)";
                eprintln!(
                    "\n{banner}\nbench: WARNING: issue 3's storage figures were NOT measured on \
                     PostgreSQL: {why}.\n{banner}\n",
                    banner = "!".repeat(78)
                );
                (None, Some(why.to_string()))
            }
        };
        let stat = |v: &[f64]| Stat::of(v).expect("at least one run");
        Ok(StorageReport {
            sizes: (small as u64, large as u64),
            coverage_us: (coverage[0], coverage[1]),
            round_us: (rounds[0], rounds[1]),
            postgres,
            postgres_not_measured,
            apply_per_s: stat(&apply),
            raw_per_s: stat(&raw),
            apply_ratio: stat(&ratio),
            batched_per_s: stat(&batched),
        })
    }

    /// Issue 3's no-op storage cost on SQLite at each size: the in-sync node homes and
    /// server datasets of scenario 4, timed in turns (see [`interleaved`]).
    async fn sqlite_storage(&self, sizes: [usize; 2]) -> Result<(Vec<Stat>, Vec<Stat>)> {
        let mut stores = Vec::new();
        let mut rigs = Vec::new();
        for n in sizes {
            let (home, dataset) = self.in_sync_pair(n).await?;
            let node = SqliteStore::open(home.join("node.db")).await?;
            let server = SqliteStore::open(dataset.join("server.db")).await?;
            rigs.push(
                self.noop_rig(
                    Arc::new(node.clone()),
                    Arc::new(node.clone()),
                    Arc::new(server.clone()),
                    &home.join("blobs"),
                    &dataset.join("blobs"),
                )
                .await?,
            );
            stores.extend([node, server]);
        }
        let timed = interleaved(&rigs, self.sizes.storage_rounds).await;
        for store in stores {
            store.close().await;
        }
        let timed = timed?;
        for (n, (c, r)) in sizes.iter().zip(&timed) {
            eprintln!(
                "bench: storage, {n} records: coverage {:.0} µs, no-op round {:.0} µs",
                c.median, r.median
            );
        }
        Ok(timed.into_iter().unzip())
    }

    /// Issue 3's no-op storage cost on PostgreSQL at each size: a node store and a server
    /// store in fresh schemas, in sync (see [`pg`]), timed in turns (see [`interleaved`]).
    /// Every size is seeded, and the database checkpointed, before any is timed, so that
    /// writing back a bulk load does not land in the figures; the schemas are dropped after.
    async fn pg_storage(&self, url: &str, sizes: [usize; 2]) -> Result<(Vec<Stat>, Vec<Stat>)> {
        let versions = Versions::new(ORIGIN)?;
        let mut pairs = Vec::new();
        for n in sizes {
            let prefix = format!("bench_{}_{n}", std::process::id());
            let t = Instant::now();
            eprintln!("bench: seeding PostgreSQL schemas {prefix}_node and {prefix}_server ...");
            let pair = pg::InSyncPair::seed(url, &prefix, &versions, n).await;
            match pair {
                Ok(pair) => pairs.push((n, pair)),
                Err(e) => {
                    for (_, pair) in pairs {
                        let _ = pair.drop_schemas().await;
                    }
                    return Err(e);
                }
            }
            eprintln!(
                "bench: seeded PostgreSQL with {n} records per side in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        pg::checkpoint(url).await;
        let timed = async {
            let mut rigs = Vec::new();
            for (n, pair) in &pairs {
                let (records, state) = pair.node_ports();
                let blobs = self.run_dir(&format!("pg-storage-{n}"))?;
                rigs.push(
                    self.noop_rig(
                        records,
                        state,
                        Arc::new(pair.server.clone()),
                        &blobs.join("node"),
                        &blobs.join("server"),
                    )
                    .await?,
                );
            }
            interleaved(&rigs, self.sizes.storage_rounds).await
        }
        .await;
        for (_, pair) in pairs {
            pair.drop_schemas().await?;
        }
        let timed = timed?;
        for (n, (c, r)) in sizes.iter().zip(&timed) {
            eprintln!(
                "bench: storage on PostgreSQL, {n} records: coverage {:.0} µs, no-op round \
                 {:.0} µs",
                c.median, r.median
            );
        }
        Ok(timed.into_iter().unzip())
    }

    /// A requester on the node's stores against an in-process responder on the server's,
    /// ready to time no-op rounds.
    async fn noop_rig(
        &self,
        node_records: Arc<dyn RecordStore>,
        node_state: Arc<dyn SyncStateStore>,
        server_records: Arc<dyn RecordStore>,
        node_blobs: &Path,
        server_blobs: &Path,
    ) -> Result<NoopRig> {
        let server_blobs = ObjectBlobs::filesystem(server_blobs)?;
        let responder = Responder::new(ResponderParts {
            data: ChannelData::new(Channel::Drive, Some(server_records), None),
            blobs: Arc::new(server_blobs.clone()) as Arc<dyn BlobStore>,
            clock: Arc::new(Mutex::new(Clock::new(
                NodeId::new("bench-server")?,
                ClockConfig::default(),
            ))),
            time: Arc::new(SystemClock),
            config: ResponderConfig::default(),
        });
        let data = ChannelData::new(Channel::Drive, Some(node_records), None);
        let persisted = node_state.load_clock().await?;
        let clock = resume_clock(
            NodeId::new("bench-node")?,
            ClockConfig::default(),
            persisted,
            &data.coverage().await?,
        );
        let requester = Requester::new(RequesterParts {
            data: data.clone(),
            state: node_state,
            transfer: Arc::new(BlobMover::new(
                ObjectBlobs::filesystem(node_blobs)?,
                server_blobs,
            )),
            transport: Arc::new(responder),
            clock: Arc::new(Mutex::new(clock)),
            time: Arc::new(SystemClock),
            config: RoundConfig::default(),
        });
        Ok(NoopRig { data, requester })
    }
}

/// A node in sync with an in-process responder: `ChannelData::coverage` and a whole
/// requester round (selection, the responder's apply and selection, the state commit),
/// with nothing to move.
struct NoopRig {
    data: ChannelData,
    requester: Requester,
}

impl NoopRig {
    /// Times `rounds` coverage reads and no-op rounds, in µs, appending to `coverage` and
    /// `round`. Any round that moves something is an error.
    async fn time(
        &self,
        rounds: usize,
        coverage: &mut Vec<f64>,
        round: &mut Vec<f64>,
    ) -> Result<()> {
        for _ in 0..rounds {
            let t = Instant::now();
            self.data.coverage().await?;
            coverage.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let r = self.requester.exchange().await?;
            round.push(t.elapsed().as_secs_f64() * 1e6);
            if r.applied + r.shipped > 0 || r.has_more {
                bail!("the storage no-op round moved something: {r:?}");
            }
        }
        Ok(())
    }
}

/// Rounds per turn of [`interleaved`].
const TURN: usize = 20;

/// Times `rounds` no-op rounds on each rig (after [`TURN`] untimed ones each), in turns of
/// [`TURN`] rounds, so that the sizes compared share the machine's ups and downs (other
/// work on it, a checkpoint) instead of one size getting a quiet minute and the other a
/// busy one. Medians and spreads in µs, per rig: (coverage, round).
async fn interleaved(rigs: &[NoopRig], rounds: usize) -> Result<Vec<(Stat, Stat)>> {
    let mut samples = vec![(Vec::with_capacity(rounds), Vec::with_capacity(rounds)); rigs.len()];
    for rig in rigs {
        rig.time(TURN, &mut Vec::new(), &mut Vec::new()).await?;
    }
    let mut done = 0;
    while done < rounds {
        let turn = TURN.min(rounds - done);
        for (rig, (coverage, round)) in rigs.iter().zip(samples.iter_mut()) {
            rig.time(turn, coverage, round).await?;
        }
        done += turn;
    }
    Ok(samples
        .iter()
        .map(|(c, r)| {
            (
                Stat::of(c).expect("rounds ran"),
                Stat::of(r).expect("rounds ran"),
            )
        })
        .collect())
}

/// The raw SQLite ceilings of one run, rows per second.
#[derive(Debug, Clone, Copy)]
struct Ceilings {
    per_row: f64,
    batched: f64,
}

/// The figures of a run that moved `n` items.
fn transfer_run(
    n: usize,
    node: &NodeReport,
    wire: &ServerReport,
    ceiling: Option<Ceilings>,
) -> Run {
    let mut run = Run::new();
    let rate = n as f64 / node.elapsed_s;
    run.insert(RECORDS_PER_S, rate);
    if let Some(c) = ceiling {
        run.insert(CEILING_PER_S, c.per_row);
        run.insert(RATIO, rate / c.per_row);
        run.insert(BATCHED_CEILING_PER_S, c.batched);
        run.insert(BATCHED_RATIO, rate / c.batched);
    }
    run.insert(
        WIRE_BYTES,
        (wire.request_bytes + wire.response_bytes) as f64 / n as f64,
    );
    latency(&mut run, node);
    run.insert(NODE_RSS, mib(node.peak_rss_kib));
    run.insert(SERVER_RSS, mib(wire.peak_rss_kib));
    run
}

fn progress(scenario: u8, i: usize, run: &Run) {
    let figures: Vec<String> = run.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    eprintln!(
        "bench: scenario {scenario} run {}: {}",
        i + 1,
        figures.join(", ")
    );
}

/// The versions of a dataset as written next to it.
fn versions_tag(v: &Versions) -> String {
    v.tag()
}

fn load_versions(dataset: &Path) -> Result<Versions> {
    let path = dataset.join("versions");
    let tag =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Versions::from_tag(&tag)
}
