use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{ChangeEvent, Engine};

/// Options of the background supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupervisorConfig {
    /// Rounds run at least this often when nothing else wakes the supervisor.
    pub interval: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
        }
    }
}

impl SupervisorConfig {
    /// Sets the polling interval.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

enum Wake {
    LocalChange,
    RemoteUpdate,
    Shutdown,
}

/// Runs `sync_until_idle` in the background: when told of a local change or a remote
/// update, and otherwise every interval; after an error it waits with exponential backoff and
/// jitter. [`Supervisor::shutdown`] lets a running round finish, then stops.
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Wake>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// Starts supervising `engine` on the current tokio runtime.
    pub fn start(engine: Engine, config: SupervisorConfig) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            let mut wait = Duration::ZERO;
            loop {
                tokio::select! {
                    wake = rx.recv() => match wake {
                        None | Some(Wake::Shutdown) => return,
                        Some(Wake::LocalChange | Wake::RemoteUpdate) => {}
                    },
                    () = tokio::time::sleep(wait) => {}
                }
                // Coalesce wake-ups that arrived meanwhile; stop if asked to.
                while let Ok(w) = rx.try_recv() {
                    if matches!(w, Wake::Shutdown) {
                        return;
                    }
                }
                match engine.sync_until_idle().await {
                    Ok(summary) => {
                        failures = 0;
                        wait = config.interval;
                        if summary.stalled {
                            tracing::warn!(channel = %engine.channel(), "sync stalled: retrying failing items next time");
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        wait = engine.retry_policy().delay(failures, engine.entropy());
                        tracing::warn!(channel = %engine.channel(), error = %e, ?wait, "sync failed; backing off");
                    }
                }
            }
        });
        Self { tx, task }
    }

    /// A local write happened: sync soon.
    pub fn local_change(&self) {
        let _ = self.tx.send(Wake::LocalChange);
    }

    /// The peer announced news: sync soon.
    pub fn remote_update(&self) {
        let _ = self.tx.send(Wake::RemoteUpdate);
    }

    /// Stops after the round in progress (if any) finished.
    pub async fn shutdown(self) {
        let _ = self.tx.send(Wake::Shutdown);
        let _ = self.task.await;
    }
}

impl Engine {
    /// Starts a background [`Supervisor`] for this engine, and wakes it on every
    /// `remote-update-available` event of this channel.
    pub fn supervise(&self, config: SupervisorConfig) -> Supervisor {
        let supervisor = Supervisor::start(self.clone(), config);
        let tx = supervisor.tx.clone();
        let channel = self.channel().clone();
        let _ = self.subscribe(move |event| {
            if matches!(event, ChangeEvent::RemoteUpdateAvailable { channel: c } if *c == channel) {
                let _ = tx.send(Wake::RemoteUpdate);
            }
        });
        supervisor
    }
}
