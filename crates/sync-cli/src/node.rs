//! A node's home directory: its configuration, database, blobs, and engines.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sync_blobs::{BlobMover, ObjectBlobs};
use sync_engine::{
    core::{AppRowStore, RoundConfig, SharedClock},
    AppNamespace, Channel, Engine, MetricsSnapshot, NodeMetrics, Notifier,
};
use sync_http::{Auth, HttpClient};
use sync_sqlite::SqliteStore;

/// `config.json` in a node's home.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: String,
    /// The server's base URL.
    pub server: String,
    /// The bearer token.
    pub token: String,
    /// App namespaces this node syncs.
    #[serde(default)]
    pub apps: Vec<AppNamespace>,
    /// The largest blob kept in the node's database instead of a file of its own (decision
    /// 0014); 0 keeps every blob a file. Absent: [`crate::blobs::DEFAULT_PACK_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_pack_limit: Option<u64>,
}

/// An opened node.
pub struct Node {
    pub config: NodeConfig,
    pub home: PathBuf,
    pub store: SqliteStore,
    pub blobs: ObjectBlobs,
    pub client: HttpClient,
    pub notifier: Notifier,
    /// The node's counters, continued from `metrics.json` (see [`Node::save_metrics`]).
    pub metrics: NodeMetrics,
    clock: std::sync::Mutex<Option<SharedClock>>,
}

/// Where a node keeps its counters between runs (`starkeep-sync status` shows them).
const METRICS_FILE: &str = "metrics.json";

/// Options for the engines of a command.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Page limit override.
    pub page_limit: Option<usize>,
    /// Pipelined pulls on or off (the engine's default, on, when `None`).
    pub pipelined_pulls: Option<bool>,
    /// Pipelined pushes on or off (the engine's default, on, when `None`).
    pub pipelined_pushes: Option<bool>,
}

impl Node {
    /// Creates a node home, registers its apps, and writes its configuration.
    pub async fn init(home: &Path, config: NodeConfig) -> Result<()> {
        let config_path = home.join("config.json");
        if config_path.exists() {
            bail!(
                "{} already holds a node; use another --home, or delete {} to start over",
                home.display(),
                config_path.display()
            );
        }
        sync_engine::hlc::NodeId::new(&config.node_id)
            .with_context(|| "--node-id: use 1..=64 ASCII letters, digits, '-', '_' or '.'")?;
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        let store = SqliteStore::open(home.join("node.db")).await?;
        for ns in &config.apps {
            store
                .register(ns.clone())
                .await
                .with_context(|| format!("registering app {}", ns.app_id))?;
        }
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        Ok(())
    }

    /// Opens the node in `home`.
    pub async fn open(home: &Path) -> Result<Node> {
        let config_path = home.join("config.json");
        let bytes = std::fs::read(&config_path).with_context(|| {
            format!(
                "no node in {}: run `starkeep-sync init --node-id ID --server URL --token SECRET` \
                 first (or pass --home / set STARKEEP_SYNC_HOME)",
                home.display()
            )
        })?;
        let config: NodeConfig = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a valid node configuration",
                config_path.display()
            )
        })?;
        let store = SqliteStore::open(home.join("node.db")).await?;
        let pack_limit = config
            .blob_pack_limit
            .unwrap_or(crate::blobs::DEFAULT_PACK_LIMIT);
        let blobs = crate::crash::node_local(crate::blobs::local(
            &home.join("blobs"),
            &store,
            pack_limit,
        )?);
        let client = HttpClient::new(config.server.clone(), Auth::bearer(config.token.clone()))
            .with_context(|| format!("the configured server URL {:?}", config.server))?;
        Ok(Node {
            config,
            home: home.to_path_buf(),
            store,
            blobs,
            client,
            notifier: Notifier::new(),
            metrics: load_metrics(home),
            clock: std::sync::Mutex::new(None),
        })
    }

    /// Persists the counters for the next run (write, then rename: never half a file).
    pub fn save_metrics(&self) -> Result<()> {
        let path = self.home.join(METRICS_FILE);
        let tmp = self.home.join(format!("{METRICS_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.metrics.snapshot())?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Every channel this node syncs: Drive, then each app.
    pub fn channels(&self) -> Vec<Channel> {
        std::iter::once(Channel::Drive)
            .chain(
                self.config
                    .apps
                    .iter()
                    .map(|a| Channel::App(a.app_id.clone())),
            )
            .collect()
    }

    /// The namespace of `app`, if this node syncs it.
    pub fn app(&self, app: &str) -> Result<&AppNamespace> {
        self.config
            .apps
            .iter()
            .find(|a| a.app_id == app)
            .with_context(|| format!("this node does not sync app {app:?}; add it with `init --app {app}` on a new home, or edit config.json"))
    }

    /// The engine of one channel (engines of one node share its clock).
    pub async fn engine(&self, channel: Channel, options: &EngineOptions) -> Result<Engine> {
        // Crash points (decision 0031) wrap these ports only while one is armed.
        let remote = ObjectBlobs::new(crate::crash::node_remote(Arc::new(
            self.client.object_store(channel.clone()),
        )));
        let (records, rows) =
            crate::crash::node_stores(Arc::new(self.store.clone()), Arc::new(self.store.clone()));
        let mut builder = Engine::builder(&self.config.node_id, channel.clone())?
            .records(records)
            .app_rows(rows)
            .state(crate::crash::node_state(Arc::new(self.store.clone())))
            .blob_transfer(Arc::new(BlobMover::new(self.blobs.clone(), remote)))
            .transport(crate::crash::node_transport(Arc::new(
                self.client.transport(channel),
            )))
            .notifier(self.notifier.clone())
            .metrics(self.metrics.clone());
        if let Some(n) = options.page_limit {
            builder = builder.page_limit(n);
        } else {
            builder = builder.page_limit(RoundConfig::default().page_limit);
        }
        if let Some(on) = options.pipelined_pulls {
            builder = builder.pipelined_pulls(on);
        }
        if let Some(on) = options.pipelined_pushes {
            builder = builder.pipelined_pushes(on);
        }
        let shared = self.clock.lock().expect("clock slot").clone();
        if let Some(clock) = shared {
            builder = builder.clock(clock);
        }
        let engine = builder.build().await?;
        *self.clock.lock().expect("clock slot") = Some(engine.clock());
        Ok(engine)
    }
}

/// The counters of earlier runs; unreadable ones are set aside, not fatal (they are
/// figures for the operator, not sync state).
fn load_metrics(home: &Path) -> NodeMetrics {
    let path = home.join(METRICS_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return NodeMetrics::new();
    };
    match serde_json::from_slice::<MetricsSnapshot>(&bytes) {
        Ok(snapshot) => NodeMetrics::from_snapshot(snapshot),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable metrics; counting from zero");
            NodeMetrics::new()
        }
    }
}
