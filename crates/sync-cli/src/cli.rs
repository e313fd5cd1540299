//! Command-line arguments and the commands.

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use sync_blobs::{
    object_store::{path::Path as ObjectPath, ObjectStoreExt},
    residency, S3Config,
};
use sync_engine::{
    core::{BlobStore, ExchangeError, RecordStore},
    protocol::{RowValues, SharedRecord},
    AppNamespace, Channel, Engine, RecordDraft, Residency,
};

use crate::{
    exit,
    files::{new_id, store_file, walk},
    node::{EngineOptions, Node, NodeConfig},
    server::{self, ServerOptions, Storage},
};

/// Sync files and app data between devices and a server.
#[derive(Debug, Parser)]
#[command(name = "starkeep-sync", version, about)]
pub struct Args {
    /// The node's directory (config, database, blobs).
    #[arg(
        long,
        global = true,
        env = "STARKEEP_SYNC_HOME",
        default_value = ".starkeep-sync"
    )]
    home: PathBuf,
    /// Log filter for stderr: a level (error, warn, info, debug, trace) or tracing
    /// directives such as `sync_engine=info,sync_http=debug`. At info, every round and every
    /// served request is logged with what it did.
    #[arg(
        long,
        global = true,
        env = "RUST_LOG",
        default_value = "warn",
        value_name = "FILTER",
        value_parser = parse_log_filter
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

fn parse_log_filter(spec: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(spec)
        .map(|_| spec.to_string())
        .map_err(|e| format!("{e} (use a level such as `info`, or `sync_engine=debug`)"))
}

impl Args {
    /// The log filter of `--log` (or `RUST_LOG`).
    pub fn log_filter(&self) -> tracing_subscriber::EnvFilter {
        // Checked when the arguments were parsed.
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the sync responder over HTTP.
    Serve(ServeArgs),
    /// Set up a node in --home.
    Init {
        /// This node's id (1..=64 of A-Z a-z 0-9 - _ .).
        #[arg(long)]
        node_id: String,
        /// The server's URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        server: String,
        /// The access token the server gave you.
        #[arg(long, env = "STARKEEP_SYNC_TOKEN")]
        token: String,
        /// Sync this app's channel too (its reserved file table only; use --apps for tables).
        #[arg(long = "app")]
        apps: Vec<String>,
        /// A JSON file of app namespaces: [{"appId", "tables": [{"name", "pkColumns"}], "filesEnabled"}].
        #[arg(long = "apps")]
        apps_file: Option<PathBuf>,
        /// Keep blobs of at most this many bytes in the node's database instead of a file
        /// each (default 65536; 0: every blob a file).
        #[arg(long)]
        blob_pack_limit: Option<u64>,
    },
    /// Add files (or directories, recursively) as shared records.
    Put {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the new records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a record's bytes to a file (or stdout).
    Get {
        /// Record id.
        id: String,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List shared records with their residency.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a shared record (a tombstone that syncs).
    Rm {
        /// Record id.
        id: String,
    },
    /// App rows.
    Row {
        #[command(subcommand)]
        command: RowCommand,
    },
    /// Run exchange rounds with the server.
    Sync {
        /// Keep going until neither side has more.
        #[arg(long)]
        until_idle: bool,
        /// Items per round in each direction.
        #[arg(long)]
        page_limit: Option<usize>,
        /// `drive` or `app:X` (default: every channel of the node).
        #[arg(long)]
        channel: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Watermarks, residency and pending work.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// A server and two nodes on loopback: writes, conflicts, deletes, convergence.
    Demo,
    /// The benchmark suite: rounds over loopback HTTP, SQLite on both sides (docs/benchmarks.md).
    Bench(crate::bench::BenchArgs),
    /// One side of a benchmark run (started by `bench`).
    #[command(hide = true)]
    BenchChild(crate::bench::ChildArgs),
}

#[derive(Debug, Subcommand)]
enum RowCommand {
    /// Insert or update a row: `row put --app X --table T '{"id": "1", ...}'`.
    Put {
        #[arg(long)]
        app: String,
        #[arg(long)]
        table: String,
        /// The row as a JSON object (must name its primary key).
        json: String,
    },
    /// Delete a row by its primary key: `row rm --app X --table T '{"id": "1"}'`.
    Rm {
        #[arg(long)]
        app: String,
        #[arg(long)]
        table: String,
        /// The primary key as a JSON object.
        key: String,
    },
    /// List rows.
    Ls {
        #[arg(long)]
        app: String,
        /// Only this table.
        #[arg(long)]
        table: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", env = "STARKEEP_SYNC_LISTEN")]
    listen: SocketAddr,
    /// Data directory for the embedded default (SQLite + files).
    #[arg(long, required_unless_present = "database")]
    data: Option<PathBuf>,
    /// PostgreSQL URL (scale-out); needs --blobs.
    #[arg(long, env = "STARKEEP_SYNC_DATABASE", requires = "blobs")]
    database: Option<String>,
    /// PostgreSQL schema for the tables (created if missing; default: the search path).
    #[arg(long, requires = "database")]
    database_schema: Option<String>,
    /// S3 bucket for blobs, `s3://bucket` (scale-out); needs --database.
    #[arg(long, requires = "database")]
    blobs: Option<String>,
    /// S3 endpoint of an S3-compatible server (else AWS_ENDPOINT_URL).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Access token, `SECRET[:SCOPES]` with scopes `drive`, `app:X` or `metrics` (read
    /// `GET /metrics`), comma-separated; none = every channel, metrics included.
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// A JSON file of app namespaces to serve.
    #[arg(long = "apps")]
    apps_file: Option<PathBuf>,
    /// Largest page a request may ask for.
    #[arg(long, default_value_t = 10_000)]
    max_limit: usize,
    /// Largest exchange request body in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_body: usize,
    /// Keep blobs of at most this many bytes in the server's database instead of a file
    /// (or S3 object) each; 0: every blob a file or object.
    #[arg(long, default_value_t = crate::blobs::DEFAULT_PACK_LIMIT)]
    blob_pack_limit: u64,
}

/// The exit code of an error.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(sync_engine::Error::Round(sync_engine::core::Error::Exchange(
            ExchangeError::Unauthorized(_),
        ))) = cause.downcast_ref::<sync_engine::Error>()
        {
            return exit::UNAUTHORIZED;
        }
    }
    exit::FAILURE
}

fn read_apps(path: &Path) -> Result<Vec<AppNamespace>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let apps: Vec<AppNamespace> = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} must be a JSON array of {{\"appId\", \"tables\": [{{\"name\", \"pkColumns\"}}], \"filesEnabled\"}}",
            path.display()
        )
    })?;
    apps.into_iter()
        .map(|a| a.validated().map_err(anyhow::Error::from))
        .collect()
}

/// Runs a command; returns the exit code.
pub async fn run(args: Args) -> Result<u8> {
    let home = args.home;
    match args.command {
        Command::Serve(a) => serve(a).await,
        Command::Init {
            node_id,
            server,
            token,
            apps,
            apps_file,
            blob_pack_limit,
        } => {
            let mut namespaces = match apps_file {
                Some(p) => read_apps(&p)?,
                None => Vec::new(),
            };
            for app in apps {
                if !namespaces.iter().any(|n| n.app_id == app) {
                    namespaces.push(AppNamespace::new(app, Vec::new()).validated()?);
                }
            }
            Node::init(
                &home,
                NodeConfig {
                    node_id: node_id.clone(),
                    server,
                    token,
                    apps: namespaces,
                    blob_pack_limit,
                },
            )
            .await?;
            println!("node {node_id} ready in {}", home.display());
            Ok(exit::OK)
        }
        Command::Put { paths, json } => put(&home, &paths, json).await,
        Command::Get { id, out } => get(&home, &id, out.as_deref()).await,
        Command::Ls { json } => ls(&home, json).await,
        Command::Rm { id } => {
            let node = Node::open(&home).await?;
            let engine = node
                .engine(Channel::Drive, &EngineOptions::default())
                .await?;
            engine.delete_record(&id).await?;
            println!("deleted {id} (syncs as a tombstone)");
            Ok(exit::OK)
        }
        Command::Row { command } => row(&home, command).await,
        Command::Sync {
            until_idle,
            page_limit,
            channel,
            json,
        } => sync(&home, until_idle, page_limit, channel.as_deref(), json).await,
        Command::Status { json } => status(&home, json).await,
        Command::Demo => crate::demo::run().await,
        Command::Bench(a) => crate::bench::run(a).await,
        Command::BenchChild(a) => crate::bench::child(a).await,
    }
}

async fn serve(a: ServeArgs) -> Result<u8> {
    let apps = match &a.apps_file {
        Some(p) => read_apps(p)?,
        None => Vec::new(),
    };
    let storage = match (&a.data, &a.database, &a.blobs) {
        (_, Some(db), Some(blobs)) => {
            let bucket = blobs
                .strip_prefix("s3://")
                .filter(|b| !b.is_empty())
                .with_context(|| format!("--blobs {blobs:?}: use s3://BUCKET"))?;
            let mut config = S3Config::from_env(bucket)?;
            if let Some(endpoint) = &a.s3_endpoint {
                config = config.with_endpoint(endpoint.clone());
            }
            Storage::ScaleOut {
                database: db.clone(),
                schema: a.database_schema.clone(),
                bucket: config,
            }
        }
        (Some(data), None, None) => Storage::Embedded { data: data.clone() },
        _ => bail!("give --data DIR, or --database postgres://... with --blobs s3://BUCKET"),
    };
    let specs = a
        .tokens
        .iter()
        .map(|t| server::parse_token(t))
        .collect::<Result<Vec<_>>>()?;
    let metrics_tokens: Vec<String> = specs
        .iter()
        .filter(|t| t.metrics)
        .map(|t| t.secret.clone())
        .collect();
    let mut tokens: Vec<(String, sync_http::Scope)> =
        specs.into_iter().map(|t| (t.secret, t.scope)).collect();
    let mut announce_token = None;
    if tokens.is_empty() {
        let Storage::Embedded { data } = &storage else {
            bail!("with --database, pass at least one --token SECRET[:SCOPES]");
        };
        std::fs::create_dir_all(data)?;
        let path = data.join("access-token");
        let token = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_string(),
            Err(_) => {
                let t = server::new_token();
                std::fs::write(&path, &t).with_context(|| format!("writing {}", path.display()))?;
                announce_token = Some(t.clone());
                t
            }
        };
        tokens.push((token, sync_http::Scope::All));
    }
    let running = server::start_with_metrics(
        ServerOptions {
            listen: a.listen,
            storage,
            tokens,
            apps,
            max_limit: a.max_limit,
            exchange_body_limit: a.max_body,
            blob_pack_limit: a.blob_pack_limit,
        },
        metrics_tokens,
        |service| service,
    )
    .await?;
    let interrupted = crate::server::interrupt_signal()?;
    println!("listening on http://{}", running.addr);
    if let Some(t) = announce_token {
        println!("access token (shown once; also in the data directory): {t}");
    }
    std::io::stdout().flush()?;
    running.run_until(interrupted).await?;
    Ok(exit::OK)
}

async fn put(home: &Path, paths: &[PathBuf], json: bool) -> Result<u8> {
    let node = Node::open(home).await?;
    let engine = node
        .engine(Channel::Drive, &EngineOptions::default())
        .await?;
    let mut stored_files = Vec::new();
    for root in paths {
        for file in walk(root)? {
            let stored = store_file(&file, &node.blobs).await?;
            stored_files.push((file, stored));
        }
    }
    // The blobs are durable before any record naming them is written (decision 0013): a
    // power cut leaves no record whose own blob is lost.
    node.blobs
        .sync()
        .await
        .context("making the stored files durable")?;
    let mut added = Vec::new();
    for (file, stored) in stored_files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let record = engine
            .put_record(
                RecordDraft::file(new_id(), stored.key, stored.sha256, stored.size)
                    .with_mime_type(stored.mime)
                    .with_original_filename(name.clone()),
            )
            .await?;
        if !json {
            println!(
                "{}  {}  {} bytes",
                record.id,
                file.display(),
                record.size_bytes
            );
        }
        added.push(record);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&added)?);
    }
    Ok(exit::OK)
}

/// Every record of a store, by origin node then version.
pub async fn all_records(store: &dyn RecordStore) -> Result<Vec<SharedRecord>> {
    let mut out = Vec::new();
    for (origin, _) in store.coverage().await?.iter() {
        let mut above = None;
        loop {
            let page = store.scan(origin, above.as_ref(), 1000).await?;
            let done = page.len() < 1000;
            above = page.last().map(|r| r.updated_at.clone());
            out.extend(page);
            if done {
                break;
            }
        }
    }
    Ok(out)
}

async fn get(home: &Path, id: &str, out: Option<&Path>) -> Result<u8> {
    let node = Node::open(home).await?;
    let engine = node
        .engine(Channel::Drive, &EngineOptions::default())
        .await?;
    let record = engine
        .record(id)
        .await?
        .with_context(|| format!("no record {id} on this node (run `starkeep-sync ls`)"))?;
    if record.deleted_at.is_some() {
        bail!("record {id} was deleted");
    }
    if record.object_storage_key.is_empty() {
        bail!("record {id} has no file (metadata only)");
    }
    let location = ObjectPath::parse(&record.object_storage_key)?;
    let result = node
        .blobs
        .object_store()
        .get(&location)
        .await
        .with_context(|| {
            format!("the file of {id} is not here yet (staged): run `starkeep-sync sync` first")
        })?;
    let mut stream = result.into_stream();
    use futures::StreamExt;
    let copy = |w: &mut dyn Write, bytes: &[u8]| w.write_all(bytes);
    match out {
        Some(path) => {
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            while let Some(chunk) = stream.next().await {
                let chunk: sync_blobs::object_store::Result<_> = chunk;
                copy(&mut file, &chunk?)?;
            }
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                let chunk: sync_blobs::object_store::Result<_> = chunk;
                copy(&mut stdout, &chunk?)?;
            }
        }
    }
    Ok(exit::OK)
}

fn residency_name(r: Residency) -> &'static str {
    match r {
        Residency::Absent => "absent",
        Residency::Staged => "staged",
        Residency::Resident => "resident",
        Residency::Tombstoned => "deleted",
    }
}

async fn ls(home: &Path, json: bool) -> Result<u8> {
    let node = Node::open(home).await?;
    let mut records = all_records(&node.store).await?;
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let mut rows = Vec::new();
    for r in &records {
        let item = sync_engine::core::Item::Record(r.clone());
        let res = residency(Some(&item), true, &node.blobs).await?;
        rows.push((r, res));
    }
    if json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(r, res)| {
                json!({
                    "id": r.id, "name": r.original_filename, "sizeBytes": r.size_bytes,
                    "mimeType": r.mime_type, "contentHash": r.content_hash,
                    "updatedAt": r.updated_at.to_string(), "residency": residency_name(*res),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (r, res) in rows {
            println!(
                "{}  {:<9} {:>10}  {}",
                r.id,
                residency_name(res),
                r.size_bytes,
                r.original_filename.as_deref().unwrap_or("")
            );
        }
    }
    Ok(exit::OK)
}

fn parse_object(text: &str, what: &str) -> Result<RowValues> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("{what} must be a JSON object, e.g. '{{\"id\": \"1\"}}'"),
        Err(e) => bail!("{what} is not valid JSON: {e}"),
    }
}

async fn row(home: &Path, command: RowCommand) -> Result<u8> {
    let node = Node::open(home).await?;
    match command {
        RowCommand::Put { app, table, json } => {
            node.app(&app)?;
            let engine = node
                .engine(Channel::App(app), &EngineOptions::default())
                .await?;
            let row = engine
                .put_row(&table, parse_object(&json, "the row")?)
                .await?;
            println!("wrote {}.{} at {}", row.app_id, row.table, row.timestamp);
        }
        RowCommand::Rm { app, table, key } => {
            node.app(&app)?;
            let engine = node
                .engine(Channel::App(app), &EngineOptions::default())
                .await?;
            let row = engine
                .delete_row(&table, parse_object(&key, "the key")?)
                .await?;
            println!(
                "deleted from {}.{} at {}",
                row.app_id, row.table, row.timestamp
            );
        }
        RowCommand::Ls { app, table, json } => {
            let ns = node.app(&app)?.clone();
            let mut out = Vec::new();
            for t in ns.table_names() {
                if table.as_deref().is_some_and(|only| only != t) {
                    continue;
                }
                use sync_engine::core::AppRowStore;
                let store: &dyn AppRowStore = &node.store;
                for (origin, _) in store.coverage(&app, t).await?.iter() {
                    out.extend(store.scan(&app, t, origin, None, usize::MAX >> 1).await?);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for r in out {
                    let tomb = if r.is_tombstone() { " (deleted)" } else { "" };
                    println!(
                        "{}  {}{}  {}",
                        r.table,
                        Value::Object(r.row.clone().or(r.where_.clone()).unwrap_or_default()),
                        tomb,
                        r.timestamp
                    );
                }
            }
        }
    }
    Ok(exit::OK)
}

async fn sync(
    home: &Path,
    until_idle: bool,
    page_limit: Option<usize>,
    channel: Option<&str>,
    json: bool,
) -> Result<u8> {
    let node = Node::open(home).await?;
    let channels = match channel {
        Some(c) => vec![Channel::parse(c)
            .with_context(|| format!("--channel {c:?}: use `drive` or `app:APP_ID`"))?],
        None => node.channels(),
    };
    let options = EngineOptions {
        page_limit,
        ..EngineOptions::default()
    };
    let progress = !json && std::io::stderr().is_terminal();
    let mut summaries = Vec::new();
    let mut code = exit::OK;
    let error_path = node.home.join("last-error.json");
    for channel in channels {
        let engine = node.engine(channel.clone(), &options).await?;
        let outcome = run_channel(&engine, until_idle, progress).await;
        let (rounds, applied, shipped, resident, complete, stalled) = match outcome {
            Ok(o) => o,
            Err(e) => {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let record = json!({"channel": channel.to_string(), "error": format!("{e:#}"), "unixTime": at});
                let _ = std::fs::write(&error_path, serde_json::to_vec_pretty(&record)?);
                if let Err(m) = node.save_metrics() {
                    tracing::warn!(error = %m, "could not save the node's counters");
                }
                return Err(e);
            }
        };
        if !complete {
            code = exit::INCOMPLETE;
        }
        summaries.push(json!({
            "channel": channel.to_string(), "rounds": rounds, "applied": applied,
            "shipped": shipped, "becameResident": resident, "complete": complete, "stalled": stalled,
        }));
        if !json {
            let state = if complete {
                "up to date"
            } else if stalled {
                "stalled: some items keep failing (`starkeep-sync status` lists them); retry later"
            } else {
                "more to do: run again (or use --until-idle)"
            };
            println!(
                "{channel}: {rounds} round(s), shipped {shipped}, received {applied}, files landed {resident}; {state}"
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    }
    let status_path = node.home.join("last-sync.json");
    let _ = std::fs::write(status_path, serde_json::to_vec_pretty(&summaries)?);
    node.save_metrics()?;
    let _ = std::fs::remove_file(error_path);
    Ok(code)
}

async fn run_channel(
    engine: &Engine,
    until_idle: bool,
    progress: bool,
) -> Result<(usize, usize, usize, usize, bool, bool)> {
    if until_idle {
        let channel = engine.channel().clone();
        let (mut rounds, mut shipped, mut received) = (0usize, 0usize, 0usize);
        let s = engine
            .sync_until_idle_with(|r| {
                rounds += 1;
                shipped += r.shipped;
                received += r.applied + r.became_resident;
                if progress {
                    let more = if r.has_more { "..." } else { "" };
                    eprint!(
                        "\r{channel}: round {rounds}, shipped {shipped}, received {received}{more}   "
                    );
                }
            })
            .await;
        if progress {
            eprintln!();
        }
        let s = s?;
        return Ok((
            s.rounds,
            s.applied,
            s.shipped,
            s.became_resident,
            s.complete,
            s.stalled,
        ));
    }
    let r = engine.exchange().await?;
    Ok((
        1,
        r.applied,
        r.shipped,
        r.became_resident,
        !r.has_more,
        r.stalled(),
    ))
}

async fn status(home: &Path, json: bool) -> Result<u8> {
    let node = Node::open(home).await?;
    let mut out = Vec::new();
    let records = all_records(&node.store).await?;
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for r in &records {
        let item = sync_engine::core::Item::Record(r.clone());
        let res = residency(Some(&item), true, &node.blobs).await?;
        *counts.entry(residency_name(res)).or_default() += 1;
    }
    let metrics = node.metrics.snapshot();
    for channel in node.channels() {
        let engine = node
            .engine(channel.clone(), &EngineOptions::default())
            .await?;
        let s = engine.status().await?;
        let wm = |w: &sync_engine::hlc::Watermarks| -> Value {
            w.iter()
                .map(|(n, h)| (n.to_string(), Value::String(h.to_string())))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let text = |h: &Option<sync_engine::hlc::Hlc>| h.as_ref().map(|h| h.to_string());
        let lag: Vec<Value> = s
            .lag
            .iter()
            .map(|l| {
                json!({
                    "node": l.node.to_string(), "local": text(&l.local), "own": text(&l.own),
                    "peer": text(&l.peer), "outboundPending": l.outbound_pending,
                    "outboundMs": l.outbound_ms, "inboundPending": l.inbound_pending,
                    "inboundMs": l.inbound_ms,
                })
            })
            .collect();
        out.push(json!({
            "channel": channel.to_string(),
            "own": wm(&s.own), "peer": wm(&s.peer), "local": wm(&s.local),
            "pendingOutboundNodes": s.pending_outbound_nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "lag": lag,
            "counters": metrics.channels.get(&channel.to_string()),
        }));
    }
    let last = std::fs::read(node.home.join("last-sync.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let last_error = std::fs::read(node.home.join("last-error.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let report = json!({
        "nodeId": node.config.node_id, "server": node.config.server,
        "records": counts, "channels": out, "lastSync": last, "lastError": last_error,
        "failingItems": metrics.failing_items,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(exit::OK);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    println!("node {} -> {}", node.config.node_id, node.config.server);
    println!("records: {}", serde_json::to_string(&counts)?);
    if let Some(e) = report["lastError"].as_object() {
        println!(
            "last error: {}",
            e.get("error").and_then(Value::as_str).unwrap_or("")
        );
    }
    for c in &out {
        let name = c["channel"].as_str().unwrap_or("");
        println!(
            "{name}: pending outbound from {} node(s); own {} ; peer {}",
            c["pendingOutboundNodes"].as_array().map_or(0, Vec::len),
            c["own"],
            c["peer"]
        );
        if let Some(m) = metrics.channels.get(name) {
            print_counters(m, now);
        }
        for l in c["lag"].as_array().into_iter().flatten() {
            let node = l["node"].as_str().unwrap_or("");
            let behind =
                |pending: &str, ms: &str, who: &str| match (l[pending].as_bool(), l[ms].as_u64()) {
                    (Some(true), Some(ms)) => Some(format!("{who} behind by {ms} ms")),
                    (Some(true), None) => Some(format!("{who} has none of it yet")),
                    _ => None,
                };
            let parts: Vec<String> = [
                behind("outboundPending", "outboundMs", "the server"),
                behind("inboundPending", "inboundMs", "this node"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !parts.is_empty() {
                println!("  lag of {node}'s data: {}", parts.join("; "));
            }
        }
    }
    if !metrics.failing_items.is_empty() {
        println!("failing items (most recent first; each round retries them):");
        for f in &metrics.failing_items {
            let item = f
                .item
                .as_ref()
                .map_or_else(|| format!("version {}", f.at), ToString::to_string);
            println!(
                "  {} {} {item}: {}, {} attempt(s), first {}, last {}: {}",
                f.channel,
                f.direction,
                f.kind,
                f.attempts,
                ago(f.first_failed_ms, now),
                ago(f.last_failed_ms, now),
                f.last_error
            );
        }
    }
    Ok(exit::OK)
}

/// A channel's counters, two lines (more when the peer halts nodes or a round failed).
fn print_counters(m: &sync_engine::ChannelMetrics, now: u64) {
    let last = m
        .last_round_ms
        .map_or_else(|| "never".to_string(), |t| ago(t, now));
    println!(
        "  rounds: {} ok ({} stalled), {} failed; last {last}; shipped {}, received {}, files landed {}",
        m.rounds_ok, m.rounds_stalled, m.rounds_failed, m.shipped, m.applied, m.became_resident
    );
    println!(
        "  item failures: {} ({} blob), skew refusals: {}, origin nodes halted by the server: {}",
        m.item_failures, m.blob_failures, m.skew_refusals, m.peer_halts
    );
    println!(
        "  blob bytes: pushed {}, pulled {} (inline: sent {}, received {})",
        m.blob_bytes_pushed, m.blob_bytes_pulled, m.inline_bytes_sent, m.inline_bytes_received
    );
    if let Some(e) = &m.last_error {
        let when = m
            .last_error_ms
            .map_or_else(String::new, |t| format!(" ({})", ago(t, now)));
        println!("  last round failed{when}: {e}");
    }
    if let Some(k) = &m.last_skew_refusal {
        println!(
            "  last skew refusal: {} was {} ms ahead (limit {} ms): check that node's clock",
            k.at, k.ahead_ms, k.max_drift_ms
        );
    }
    for h in &m.halted_by_peer {
        println!(
            "  halted by the server: node {}{}{}{}",
            h.node,
            h.at.as_deref()
                .map_or_else(String::new, |a| format!(" at {a}")),
            h.code
                .as_deref()
                .map_or_else(String::new, |c| format!(" [{c}]")),
            h.reason
                .as_deref()
                .map_or_else(String::new, |r| format!(": {r}"))
        );
    }
}

/// `12 s ago` from milliseconds since the Unix epoch.
fn ago(ms: u64, now: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}
