//! The two sides of a benchmark run, each a child process of its own (`starkeep-sync
//! bench-child --spec JSON`), so that each reports its own peak RSS: the server, with a tower
//! layer counting the body bytes of every request and response, and a node running rounds.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use sync_blobs::S3Config;
use sync_engine::{AppNamespace, Channel};
use sync_http::{ResponseBody, Scope, SyncService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    node::{EngineOptions, Node},
    server::{self, ServerOptions, Storage},
};

/// What a child process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum ChildSpec {
    /// Serve `data` (SQLite + files), or PostgreSQL + S3 when `scale_out` is given, on an
    /// ephemeral loopback port until stdin closes.
    Server {
        /// The data directory.
        data: PathBuf,
        /// The one bearer token.
        token: String,
        /// App namespaces to serve.
        apps: Vec<AppNamespace>,
        /// PostgreSQL and S3 instead of `data` (the `serve --database --blobs` path).
        #[serde(default)]
        scale_out: Option<ScaleOut>,
        /// The largest blob kept in the database (the server's default when `None`).
        #[serde(default)]
        blob_pack_limit: Option<u64>,
    },
    /// One node of the load scenario (see `load.rs`): writes its data, then syncs on the
    /// orchestrator's signals.
    LoadNode(super::load::LoadNodeSpec),
    /// Open the node in `home` and run rounds on one channel.
    Node {
        /// The node's home (config, database, blobs).
        home: PathBuf,
        /// `drive` or `app:X`.
        channel: String,
        /// Items per round (the engine's default when `None`).
        page_limit: Option<usize>,
        /// Pipelined pulls on or off (the engine's default when `None`).
        #[serde(default)]
        pipelined_pulls: Option<bool>,
        /// Pipelined pushes on or off (the engine's default when `None`).
        #[serde(default)]
        pipelined_pushes: Option<bool>,
        /// Which rounds.
        job: NodeJob,
    },
}

/// Where a scale-out server child keeps its data: one PostgreSQL schema and one S3 bucket,
/// shareable by several servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleOut {
    /// The PostgreSQL URL.
    pub database: String,
    /// The schema (created if missing).
    pub schema: String,
    /// The bucket.
    pub s3: S3Spec,
}

/// An S3-compatible bucket with static credentials.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Endpoint URL (`http://` allowed).
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl std::fmt::Debug for S3Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Spec")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Spec {
    /// The blob store's configuration.
    pub fn config(&self) -> S3Config {
        S3Config::new(&self.bucket, &self.access_key, &self.secret_key)
            .with_endpoint(self.endpoint.clone())
            .with_allow_http(true)
    }
}

/// The rounds a node child runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeJob {
    /// Rounds until neither side has more; any failed item is an error.
    UntilIdle,
    /// `warmup` untimed rounds, then `rounds` timed ones; each must move nothing.
    Noop {
        /// Untimed rounds first.
        warmup: usize,
        /// Timed rounds.
        rounds: usize,
    },
}

/// What a server child reports when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerReport {
    /// HTTP requests served.
    pub requests: u64,
    /// Request body bytes read.
    pub request_bytes: u64,
    /// Response body bytes written.
    pub response_bytes: u64,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Responses with a status of 400 or above, by status (not counting `404` answers to
    /// `HEAD`: the blob mover's "is it there yet?").
    #[serde(default)]
    pub error_statuses: BTreeMap<u16, u64>,
}

/// What a node child reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// Timed rounds.
    pub rounds: usize,
    /// Items applied (fully landed, blob included).
    pub applied: usize,
    /// Items shipped.
    pub shipped: usize,
    /// Wall time of the timed rounds, seconds.
    pub elapsed_s: f64,
    /// Each timed round's duration, milliseconds.
    pub round_ms: Vec<f64>,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

/// The first line a server child prints, followed by its URL.
pub const READY: &str = "READY ";

/// Runs a child process's part; prints its report as one JSON line on stdout.
pub async fn run(spec: ChildSpec) -> Result<u8> {
    match spec {
        ChildSpec::Server {
            data,
            token,
            apps,
            scale_out,
            blob_pack_limit,
        } => serve(data, token, apps, scale_out, blob_pack_limit).await,
        ChildSpec::LoadNode(spec) => super::load::node(spec).await,
        ChildSpec::Node {
            home,
            channel,
            page_limit,
            pipelined_pulls,
            pipelined_pushes,
            job,
        } => {
            let channel = Channel::parse(&channel)
                .with_context(|| format!("bad channel {channel:?} in the bench spec"))?;
            let options = EngineOptions {
                page_limit,
                pipelined_pulls,
                pipelined_pushes,
            };
            let report = rounds(&home, channel, &options, job).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(crate::exit::OK)
        }
    }
}

async fn serve(
    data: PathBuf,
    token: String,
    apps: Vec<AppNamespace>,
    scale_out: Option<ScaleOut>,
    blob_pack_limit: Option<u64>,
) -> Result<u8> {
    let counters = Arc::new(WireCounters::default());
    let layer = counters.clone();
    let storage = match scale_out {
        None => Storage::Embedded { data },
        Some(s) => Storage::ScaleOut {
            database: s.database,
            schema: Some(s.schema),
            bucket: s.s3.config(),
        },
    };
    let running = server::start_with(
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage,
            tokens: vec![(token, Scope::All)],
            apps,
            max_limit: 10_000,
            exchange_body_limit: 64 << 20,
            blob_pack_limit: blob_pack_limit.unwrap_or(crate::blobs::DEFAULT_PACK_LIMIT),
        },
        move |service| Counted {
            inner: service,
            counters: layer,
        },
    )
    .await?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{READY}http://{}\n", running.addr).as_bytes())
        .await?;
    stdout.flush().await?;
    // Serve until the bench closes our stdin (or dies).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    running.stop().await?;
    let report = ServerReport {
        requests: counters.requests.load(Ordering::Relaxed),
        request_bytes: counters.request_bytes.load(Ordering::Relaxed),
        response_bytes: counters.response_bytes.load(Ordering::Relaxed),
        peak_rss_kib: peak_rss_kib(),
        error_statuses: counters
            .error_statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    };
    stdout
        .write_all(format!("{}\n", serde_json::to_string(&report)?).as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(crate::exit::OK)
}

async fn rounds(
    home: &std::path::Path,
    channel: Channel,
    options: &EngineOptions,
    job: NodeJob,
) -> Result<NodeReport> {
    let node = Node::open(home).await?;
    let engine = node.engine(channel.clone(), options).await?;
    let mut report = NodeReport::default();
    match job {
        NodeJob::UntilIdle => {
            // `sync_until_idle`, as `starkeep-sync sync --until-idle` runs it (pipelined
            // pulls included). A round's time is from the previous round's end to its own:
            // with pipelining, the request of a round goes out while the previous one lands.
            let started = Instant::now();
            let mut last = started;
            let mut trouble: Option<String> = None;
            let summary = engine
                .sync_until_idle_with(|r| {
                    let now = Instant::now();
                    report.round_ms.push((now - last).as_secs_f64() * 1e3);
                    last = now;
                    report.rounds += 1;
                    report.applied += r.applied;
                    report.shipped += r.shipped;
                    if trouble.is_some() {
                        return;
                    }
                    if let Some(f) = r.failures.first() {
                        trouble = Some(format!(
                            "round {} had {} failed item(s), the first at {}: {}",
                            report.rounds,
                            r.failures.len(),
                            f.at,
                            f.problem
                        ));
                    } else if !r.halted_by_peer.is_empty() || r.outbound_blocked.is_some() {
                        trouble = Some(format!("round {} stalled: {r:?}", report.rounds));
                    }
                })
                .await?;
            report.elapsed_s = started.elapsed().as_secs_f64();
            if let Some(t) = trouble {
                bail!("{channel}: {t}");
            }
            ensure!(summary.complete, "{channel}: did not finish: {summary:?}");
        }
        NodeJob::Noop { warmup, rounds } => {
            let mut started = Instant::now();
            for i in 0..warmup + rounds {
                if i == warmup {
                    started = Instant::now();
                }
                let t = Instant::now();
                let r = engine.exchange().await?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if r.applied + r.shipped + r.became_resident > 0 || r.has_more {
                    bail!("{channel}: a no-op round moved something: {r:?}");
                }
                if i >= warmup {
                    report.round_ms.push(ms);
                    report.rounds += 1;
                }
            }
            report.elapsed_s = started.elapsed().as_secs_f64();
        }
    }
    report.peak_rss_kib = peak_rss_kib();
    Ok(report)
}

/// This process's peak resident set size (`VmHWM` of `/proc/self/status`), KiB; 0 where
/// there is no `/proc`.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes on the wire, counted at the HTTP layer: request and response bodies (headers are
/// not counted).
#[derive(Debug, Default)]
struct WireCounters {
    requests: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    /// Responses of 400 and above, by status (rare: a lock is fine).
    error_statuses: Mutex<BTreeMap<u16, u64>>,
}

/// The sync service with every request and response body counted.
#[derive(Clone)]
struct Counted {
    inner: SyncService,
    counters: Arc<WireCounters>,
}

impl tower::Service<Request<Incoming>> for Counted {
    type Response = Response<CountingBody<ResponseBody>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request<CountingBody<Incoming>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let counters = self.counters.clone();
        let head = request.method() == http::Method::HEAD;
        let request = request.map(|body| CountingBody {
            inner: body,
            counters: counters.clone(),
            response: false,
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let status = response.status().as_u16();
            // A `HEAD` answered 404 is the blob mover asking whether a blob is there yet
            // before it pushes it: an answer, not a failure.
            let probe = head && status == 404;
            if status >= 400 && !probe {
                tracing::warn!(status, "bench server: error response");
                *counters
                    .error_statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(status)
                    .or_default() += 1;
            }
            Ok(response.map(|body| CountingBody {
                inner: body,
                counters,
                response: true,
            }))
        })
    }
}

/// A body that adds the length of every data frame to a counter.
struct CountingBody<B> {
    inner: B,
    counters: Arc<WireCounters>,
    response: bool,
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let counter = if this.response {
                    &this.counters.response_bytes
                } else {
                    &this.counters.request_bytes
                };
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
