//! The HTTP responder on the embedded default (SQLite + files) or on PostgreSQL + S3.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use sync_blobs::{ObjectBlobs, S3Config};
use sync_engine::{
    core::{
        AppRowStore, BlobStore, ChannelData, ExchangeTransport, RecordStore, Responder,
        ResponderConfig, ResponderParts, RoundConfig,
    },
    hlc::{Clock, ClockConfig, NodeId},
    AppNamespace, Channel, SystemClock,
};
use sync_http::{Scope, ServerConfig, SyncService};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Where the server keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// SQLite and a blob directory under one data directory.
    Embedded { data: PathBuf },
    /// PostgreSQL and an S3 bucket, shareable by several servers.
    ScaleOut {
        database: String,
        /// The PostgreSQL schema (created if missing); `None` for the `search_path`.
        schema: Option<String>,
        bucket: S3Config,
    },
}

/// What a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub storage: Storage,
    /// Bearer tokens and their scopes.
    pub tokens: Vec<(String, Scope)>,
    /// App namespaces to register before serving.
    pub apps: Vec<AppNamespace>,
    /// Largest page a request may ask for.
    pub max_limit: usize,
    /// Largest exchange body, in bytes.
    pub exchange_body_limit: usize,
    /// The largest blob kept in the server's database instead of a file of its own
    /// (decision 0014); 0 keeps every blob a file.
    pub blob_pack_limit: u64,
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub records: Arc<dyn RecordStore>,
    pub rows: Arc<dyn AppRowStore>,
    pub blobs: ObjectBlobs,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), sync_http::Error>>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight requests, and returns.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.context("the server task")??;
        Ok(())
    }

    /// Waits until the server stops by itself (it does not, unless it fails) or
    /// `interrupted` ([`interrupt_signal`]) resolves.
    pub async fn run_until(self, interrupted: impl std::future::Future<Output = ()>) -> Result<()> {
        interrupted.await;
        eprintln!("shutting down: finishing in-flight requests");
        self.stop().await
    }
}

/// Ctrl-C (SIGINT), listened for from this call on. Taken before `serve` announces that it
/// listens: a supervisor that stops the server right after reading that line gets a
/// graceful shutdown, not the default action of the signal (a kill), which it got while
/// the handler was only installed afterwards (found by the start-up crash tests).
pub fn interrupt_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        Ok(async move {
            interrupt.recv().await;
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

fn server_node_id(data: Option<&PathBuf>) -> Result<NodeId> {
    let fresh = || format!("cloud-{}", crate::files::new_id().to_ascii_lowercase());
    let id = match data {
        Some(dir) => {
            let path = dir.join("node-id");
            match std::fs::read_to_string(&path) {
                Ok(s) => s.trim().to_string(),
                Err(_) => {
                    let id = fresh();
                    std::fs::write(&path, &id)
                        .with_context(|| format!("writing {}", path.display()))?;
                    id
                }
            }
        }
        // Servers sharing one database each have their own clock id.
        None => fresh(),
    };
    Ok(NodeId::new(id)?)
}

/// Starts serving; returns once the listener is bound.
pub async fn start(options: ServerOptions) -> Result<RunningServer> {
    start_with(options, |service| service).await
}

/// [`start`], serving `wrap(service)`: more tower layers around the sync service (the
/// benchmark counts the bytes on the wire this way).
pub async fn start_with<S, B>(
    options: ServerOptions,
    wrap: impl FnOnce(SyncService) -> S,
) -> Result<RunningServer>
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
    start_with_metrics(options, Vec::new(), wrap).await
}

/// [`start_with`], also accepting `metrics_tokens` on `GET /metrics` (decision 0032; a
/// token of every channel reads it anyway).
pub async fn start_with_metrics<S, B>(
    options: ServerOptions,
    metrics_tokens: Vec<String>,
    wrap: impl FnOnce(SyncService) -> S,
) -> Result<RunningServer>
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
    let (records, rows, state_dir, blobs): (Arc<dyn RecordStore>, Arc<dyn AppRowStore>, _, _) =
        match &options.storage {
            Storage::Embedded { data } => {
                std::fs::create_dir_all(data)
                    .with_context(|| format!("creating the data directory {}", data.display()))?;
                let store = sync_sqlite::SqliteStore::open(data.join("server.db")).await?;
                let blobs =
                    crate::blobs::local(&data.join("blobs"), &store, options.blob_pack_limit)?;
                (
                    Arc::new(store.clone()),
                    Arc::new(store),
                    Some(data.clone()),
                    blobs,
                )
            }
            Storage::ScaleOut {
                database,
                schema,
                bucket,
            } => {
                let mut pg = sync_postgres::PostgresOptions::default();
                if let Some(schema) = schema {
                    pg = pg.with_schema(schema.clone());
                }
                let store = sync_postgres::PostgresStore::connect_with(database, &pg)
                    .await
                    .context("connecting to PostgreSQL (check --database)")?;
                let blobs =
                    crate::blobs::scale_out(bucket.clone(), &store, options.blob_pack_limit)?;
                (Arc::new(store.clone()), Arc::new(store), None, blobs)
            }
        };
    // Crash points (decision 0031) wrap these ports only while one is armed.
    crate::crash::point("server.start.migrated");
    let (records, rows) = crate::crash::server_stores(records, rows);
    let blobs = crate::crash::server_blobs(blobs);
    for ns in &options.apps {
        rows.register(ns.clone())
            .await
            .with_context(|| format!("registering app {}", ns.app_id))?;
    }
    let node = server_node_id(state_dir.as_ref())?;
    let clock = Arc::new(Mutex::new(Clock::new(node, ClockConfig::default())));
    let blob_check: Arc<dyn BlobStore> = Arc::new(blobs.clone());
    // A default page (1000 items) plus the has-more probe in one scan per origin node, not
    // three of 500, 500 and 1.
    let config = ResponderConfig::default()
        .with_max_limit(options.max_limit)
        .with_scan_page_size(RoundConfig::default().page_limit + 1);
    let mut responders: HashMap<Channel, Arc<dyn ExchangeTransport>> = HashMap::new();
    let channels = std::iter::once(Channel::Drive)
        .chain(options.apps.iter().map(|a| Channel::App(a.app_id.clone())));
    for channel in channels {
        let responder = Responder::new(ResponderParts {
            data: ChannelData::new(channel.clone(), Some(records.clone()), Some(rows.clone())),
            blobs: blob_check.clone(),
            clock: clock.clone(),
            time: Arc::new(SystemClock),
            config: config.clone(),
        });
        responders.insert(channel, crate::crash::server_responder(Arc::new(responder)));
    }
    if options.tokens.is_empty() {
        bail!("no access token configured; pass --token SECRET[:SCOPES]");
    }
    let mut service = SyncService::builder(responders, blobs.object_store().clone())
        .config(
            ServerConfig::default()
                .with_exchange_body_limit(options.exchange_body_limit)
                .with_store_content_type(blobs.writes_content_type()),
        )
        // A filesystem store syncs before each upload is acknowledged (uploads waiting at the
        // same time share one sync; S3 has nothing to do: decision 0013), and learns each
        // upload's digest, so the responder does not read it back to verify it.
        .blob_store(blob_check.clone())
        // GET bodies read local files in large reads with a read-ahead.
        .object_bodies(sync_blobs::object_chunks);
    for (token, scope) in &options.tokens {
        service = service.bearer_token(token.clone(), scope.clone());
    }
    for token in metrics_tokens {
        service = service.metrics_token(token);
    }
    let service = service.build()?;
    let listener = TcpListener::bind(options.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (in use? try another --listen)",
            options.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(sync_http::serve(listener, wrap(service), async {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        addr,
        records,
        rows,
        blobs,
        shutdown: Some(tx),
        task,
    })
}

/// A parsed `--token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// The secret.
    pub secret: String,
    /// The channels it reaches.
    pub scope: Scope,
    /// Whether it was given the `metrics` scope (`GET /metrics`).
    pub metrics: bool,
}

/// Parses `--token SECRET[:SCOPES]`: scopes are comma-separated `drive`, `app:X` or
/// `metrics`; none means every channel (which includes reading `/metrics`).
pub fn parse_token(spec: &str) -> Result<TokenSpec> {
    let (secret, scopes) = match spec.split_once(':') {
        Some((s, scopes)) => (s, Some(scopes)),
        None => (spec, None),
    };
    if secret.len() < 16 {
        bail!("--token: a token must be at least 16 characters long");
    }
    let mut metrics = false;
    let scope = match scopes {
        None | Some("") => Scope::All,
        Some(list) => {
            let mut channels = Vec::new();
            // `app:X` contains a colon itself: split on commas, then parse each.
            for part in list.split(',') {
                if part == "metrics" {
                    metrics = true;
                    continue;
                }
                let channel = Channel::parse(part).with_context(|| {
                    format!(
                        "--token: unknown scope {part:?} (use `drive`, `app:APP_ID` or `metrics`)"
                    )
                })?;
                channels.push(channel);
            }
            Scope::Channels(channels)
        }
    };
    Ok(TokenSpec {
        secret: secret.to_string(),
        scope,
        metrics,
    })
}

/// A random secret (64 hex characters).
pub fn new_token() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for _ in 0..4 {
        h.update(crate::files::new_id());
    }
    h.update(std::process::id().to_le_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_scopes_parse() {
        let t = parse_token("0123456789abcdef0123").unwrap();
        assert_eq!(
            (t.secret.as_str(), t.scope, t.metrics),
            ("0123456789abcdef0123", Scope::All, false)
        );
        let t = parse_token("0123456789abcdef:drive,app:notes").unwrap();
        assert_eq!(
            t.scope,
            Scope::Channels(vec![Channel::Drive, Channel::App("notes".into())])
        );
        let t = parse_token("0123456789abcdef:metrics").unwrap();
        assert_eq!((t.scope, t.metrics), (Scope::Channels(vec![]), true));
        let t = parse_token("0123456789abcdef:drive,metrics").unwrap();
        assert_eq!(
            (t.scope, t.metrics),
            (Scope::Channels(vec![Channel::Drive]), true)
        );
        assert!(parse_token("short").is_err());
        assert!(parse_token("0123456789abcdef:photos").is_err());
    }
}
