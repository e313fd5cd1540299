//! [`BlobMover`]: the blob port of a node, with in-flight de-duplication and a bound on
//! concurrent transfers.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use sync_core::{BlobError, BlobManifest, BlobStore, BlobTransfer, Transferred};
use tokio::sync::Semaphore;

use crate::{key::validate_key, store::ObjectBlobs, transfer::transfer};

/// Concurrent transfers a [`BlobMover`] runs unless told otherwise.
pub const DEFAULT_MAX_TRANSFERS: usize = 8;

/// Which way a blob moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Way {
    /// This node to the peer.
    Push,
    /// The peer to this node.
    Pull,
}

type Outcome = Result<Transferred, Arc<BlobError>>;
type Running = Shared<BoxFuture<'static, Outcome>>;
type Entries = HashMap<(Way, String), Running>;
type InFlight = Mutex<Entries>;

/// Moves blobs between this node's storage and the peer's: [`BlobTransfer`] over
/// [`transfer`].
///
/// * A caller asking for a key that is already being moved the same way joins that
///   transfer and gets its result (two rounds racing on one key copy it once; neither sees
///   a false failure).
/// * At most [`max_transfers`](Self::with_max_transfers) transfers run at once (default
///   [`DEFAULT_MAX_TRANSFERS`]), however many rounds ask; the others wait their turn.
/// * Each transfer runs as its own tokio task, so a caller that gives up (a cancelled round)
///   never leaves a half-written upload behind: the transfer completes or aborts cleanly.
///   The mover must therefore be used inside a tokio runtime.
pub struct BlobMover {
    local: ObjectBlobs,
    remote: ObjectBlobs,
    in_flight: Arc<InFlight>,
    limit: Arc<Semaphore>,
}

impl BlobMover {
    /// A mover between this node's storage (`local`) and the peer's (`remote`).
    pub fn new(local: ObjectBlobs, remote: ObjectBlobs) -> Self {
        Self {
            local,
            remote,
            in_flight: Arc::default(),
            limit: Arc::new(Semaphore::new(DEFAULT_MAX_TRANSFERS)),
        }
    }

    /// Sets how many transfers may run at once (at least 1).
    pub fn with_max_transfers(mut self, max: usize) -> Self {
        self.limit = Arc::new(Semaphore::new(max.max(1)));
        self
    }

    /// This node's storage.
    pub fn local(&self) -> &ObjectBlobs {
        &self.local
    }

    /// The peer's storage.
    pub fn remote(&self) -> &ObjectBlobs {
        &self.remote
    }

    /// Transfers started and not yet ended (running or waiting for a turn).
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    async fn run(&self, way: Way, manifest: &BlobManifest) -> Result<Transferred, BlobError> {
        validate_key(&manifest.key)?;
        let entry = (way, manifest.key.clone());
        let shared = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(&entry) {
                Some(running) => {
                    tracing::debug!(key = %manifest.key, ?way, "joining the transfer in flight");
                    running.clone()
                }
                None => {
                    let started = self.start(way, manifest.clone(), entry.clone());
                    in_flight.insert(entry, started.clone());
                    started
                }
            }
        };
        shared.await.map_err(|e| unshare(&manifest.key, e))
    }

    /// Spawns the transfer. Called with the in-flight map locked, so the task cannot remove
    /// its entry before it was inserted.
    fn start(&self, way: Way, manifest: BlobManifest, entry: (Way, String)) -> Running {
        let (from, to) = match way {
            Way::Push => (self.local.clone(), self.remote.clone()),
            Way::Pull => (self.remote.clone(), self.local.clone()),
        };
        let limit = Arc::clone(&self.limit);
        let key = manifest.key.clone();
        let done = Done {
            in_flight: Arc::clone(&self.in_flight),
            entry,
        };
        let task = tokio::spawn(async move {
            // Dropped when the task ends, however it ends: the entry never outlives it.
            let _done = done;
            let _turn = limit.acquire_owned().await;
            transfer(&manifest, &from, &to).await
        });
        async move {
            match task.await {
                Ok(result) => result.map_err(Arc::new),
                Err(e) => Err(Arc::new(BlobError::Fatal {
                    key,
                    message: format!("transfer task failed: {e}"),
                    source: Some(Box::new(e)),
                })),
            }
        }
        .boxed()
        .shared()
    }
}

impl fmt::Debug for BlobMover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobMover")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("in_flight", &self.in_flight())
            .field("free_turns", &self.limit.available_permits())
            .finish()
    }
}

#[async_trait]
impl BlobTransfer for BlobMover {
    async fn push(&self, manifest: &BlobManifest) -> Result<Transferred, BlobError> {
        self.run(Way::Push, manifest).await
    }

    async fn pull(&self, manifest: &BlobManifest) -> Result<Transferred, BlobError> {
        self.run(Way::Pull, manifest).await
    }

    fn inline_limit(&self) -> u64 {
        self.local.inline_limit()
    }

    async fn read_local(
        &self,
        manifest: &BlobManifest,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        self.local.read_inline(&manifest.key, max_bytes).await
    }

    async fn land_inline(
        &self,
        manifest: &BlobManifest,
        bytes: Vec<u8>,
    ) -> Result<Transferred, BlobError> {
        self.local.write_inline(manifest, bytes).await
    }

    async fn read_local_batch(
        &self,
        manifests: &[BlobManifest],
        max_bytes: u64,
    ) -> Vec<Result<Option<Vec<u8>>, BlobError>> {
        let keys: Vec<String> = manifests.iter().map(|m| m.key.clone()).collect();
        self.local.read_inline_batch(&keys, max_bytes).await
    }

    async fn land_inline_batch(
        &self,
        blobs: Vec<(BlobManifest, Vec<u8>)>,
    ) -> Vec<Result<Transferred, BlobError>> {
        self.local.write_inline_batch(blobs).await
    }

    async fn sync(&self) -> Result<(), BlobError> {
        self.local.sync().await
    }
}

/// Removes a transfer's in-flight entry when its task ends.
struct Done {
    in_flight: Arc<InFlight>,
    entry: (Way, String),
}

impl Drop for Done {
    fn drop(&mut self) {
        lock(&self.in_flight).remove(&self.entry);
    }
}

fn lock(in_flight: &InFlight) -> MutexGuard<'_, Entries> {
    in_flight.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared error of a transfer as the port's error, for one of its callers.
fn unshare(key: &str, shared: Arc<BlobError>) -> BlobError {
    let shared = match Arc::try_unwrap(shared) {
        Ok(only_caller) => return only_caller,
        Err(shared) => shared,
    };
    match &*shared {
        BlobError::NotFound { key } => BlobError::NotFound { key: key.clone() },
        BlobError::HashMismatch {
            key,
            expected,
            actual,
        } => BlobError::HashMismatch {
            key: key.clone(),
            expected: expected.clone(),
            actual: actual.clone(),
        },
        BlobError::InvalidKey { key, reason } => BlobError::InvalidKey {
            key: key.clone(),
            reason: reason.clone(),
        },
        BlobError::Transient { key, message, .. } => BlobError::Transient {
            key: key.clone(),
            message: message.clone(),
            source: Some(Box::new(SharedError(Arc::clone(&shared)))),
        },
        BlobError::Fatal { key, message, .. } => BlobError::Fatal {
            key: key.clone(),
            message: message.clone(),
            source: Some(Box::new(SharedError(Arc::clone(&shared)))),
        },
        _ => BlobError::Fatal {
            key: key.to_string(),
            message: shared.to_string(),
            source: Some(Box::new(SharedError(Arc::clone(&shared)))),
        },
    }
}

/// One transfer's error, seen by each caller that joined it.
#[derive(Debug)]
struct SharedError(Arc<BlobError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
