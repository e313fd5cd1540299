//! The change notifier: subscribe to what happens on a node, delivered off the sync path.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
};

use sync_core::{Channel, ItemKey};

/// Something listeners may want to react to. The three kinds of the TypeScript package.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeEvent {
    /// The peer has news for this channel (e.g. a push notification); a round should run.
    RemoteUpdateAvailable {
        /// The channel.
        channel: Channel,
    },
    /// A round landed these items locally (newly applied, or staged items whose blob
    /// arrived), in processing order. Sent after the round's state was persisted.
    LocalDataSynced {
        /// The channel.
        channel: Channel,
        /// What landed.
        items: Vec<ItemKey>,
    },
    /// A local write was recorded and awaits its next round.
    LocalChangeRecorded {
        /// The channel it belongs to.
        channel: Channel,
        /// The item written.
        item: ItemKey,
        /// The app that wrote it, for app-specific writes.
        origin_app_id: Option<String>,
    },
}

type Listener = Arc<dyn Fn(&ChangeEvent) + Send + Sync>;

enum Message {
    Event(ChangeEvent),
    Flush(mpsc::Sender<()>),
}

struct Shared {
    listeners: Mutex<Vec<(u64, Listener)>>,
    next_id: AtomicU64,
}

/// Delivers [`ChangeEvent`]s to listeners on a dedicated thread, in subscription order.
///
/// Emitting never waits for listeners: a slow listener delays only later deliveries, and a
/// panicking one is caught and logged, so neither can block or fail a round. Cheap to clone;
/// clones share listeners.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    tx: Arc<Mutex<mpsc::Sender<Message>>>,
}

/// A listener's registration; [`Subscription::unsubscribe`] removes it. Dropping it keeps the
/// listener subscribed.
#[derive(Debug)]
#[must_use = "keep the subscription to be able to unsubscribe"]
pub struct Subscription {
    id: u64,
    shared: std::sync::Weak<Shared>,
}

impl Subscription {
    /// Stops deliveries to this listener (events already queued may still arrive).
    pub fn unsubscribe(self) {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.listeners).retain(|(id, _)| *id != self.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    /// A notifier with its delivery thread.
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            listeners: Mutex::default(),
            next_id: AtomicU64::new(1),
        });
        let (tx, rx) = mpsc::channel::<Message>();
        let weak = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("starkeep-notifier".into())
            .spawn(move || {
                for message in rx {
                    match message {
                        Message::Flush(done) => {
                            let _ = done.send(());
                        }
                        Message::Event(event) => {
                            let Some(shared) = weak.upgrade() else { return };
                            let listeners: Vec<Listener> = lock(&shared.listeners)
                                .iter()
                                .map(|(_, l)| l.clone())
                                .collect();
                            for listener in listeners {
                                if catch_unwind(AssertUnwindSafe(|| listener(&event))).is_err() {
                                    tracing::error!(?event, "a change listener panicked; ignored");
                                }
                            }
                        }
                    }
                }
            })
            .expect("spawn the notifier thread");
        Self {
            shared,
            tx: Arc::new(Mutex::new(tx)),
        }
    }

    /// Adds a listener.
    pub fn subscribe(
        &self,
        listener: impl Fn(&ChangeEvent) + Send + Sync + 'static,
    ) -> Subscription {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.listeners).push((id, Arc::new(listener)));
        Subscription {
            id,
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Queues an event for delivery and returns at once.
    pub fn emit(&self, event: ChangeEvent) {
        let _ = lock(&self.tx).send(Message::Event(event));
    }

    /// Waits until every event emitted before this call was delivered.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        if lock(&self.tx).send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(n: usize) -> ChangeEvent {
        ChangeEvent::LocalDataSynced {
            channel: Channel::Drive,
            items: (0..n)
                .map(|i| ItemKey::Record { id: i.to_string() })
                .collect(),
        }
    }

    #[test]
    fn delivers_in_order_and_stops_after_unsubscribe() {
        // CN-06
        let n = Notifier::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (seen.clone(), seen.clone());
        let first = n.subscribe(move |e| a.lock().unwrap().push(("first", e.clone())));
        let _second = n.subscribe(move |e| b.lock().unwrap().push(("second", e.clone())));
        n.emit(synced(1));
        n.flush();
        first.unsubscribe();
        n.emit(synced(2));
        n.flush();
        let seen = seen.lock().unwrap();
        let who: Vec<&str> = seen.iter().map(|(w, _)| *w).collect();
        assert_eq!(who, vec!["first", "second", "second"]);
        assert_eq!(seen[2].1, synced(2));
    }

    #[test]
    fn a_panicking_listener_does_not_stop_the_others() {
        let n = Notifier::new();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let _bad = n.subscribe(|_| panic!("listener bug"));
        let _good = n.subscribe(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
        n.emit(synced(1));
        n.emit(synced(1));
        n.flush();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn emit_does_not_wait_for_a_slow_listener() {
        let n = Notifier::new();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let _slow = n.subscribe(move |_| {
            let _ = gate.lock().unwrap().recv();
        });
        // Both emits return while the listener is still blocked on the first event.
        n.emit(synced(1));
        n.emit(synced(2));
        gate_tx.send(()).unwrap();
        gate_tx.send(()).unwrap();
        n.flush();
    }
}
