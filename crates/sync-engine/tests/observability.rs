//! What an operator sees of a node: one `round` span per round with what it did, the node
//! counters (failing items with their attempts, skew refusals, halts by the peer, failed
//! rounds) and the per-origin lag of `status`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sync_engine::{
    core::{ExchangeTransport, TimeSource},
    hlc::{Hlc, NodeId},
    Channel, Engine, ItemKey, MetricsSnapshot, NodeMetrics, RecordDraft, RetryPolicy,
};
use sync_testkit::{
    harness::Side,
    memory::{
        sha256_hex, FaultMode, FaultPoint, Faults, FaultyTransport, ManualTime, MemoryTransfer,
    },
};
use tracing::{
    field::{Field, Visit},
    span, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};

const HOUR_MS: u64 = 3_600_000;

struct World {
    local: Side,
    cloud: Side,
    time: Arc<ManualTime>,
    transport_faults: Arc<Faults>,
}

impl World {
    fn new() -> Self {
        let time = ManualTime::new(1_700_000_000_000, 1);
        Self {
            local: Side::new("laptop", time.clone()),
            cloud: Side::new("cloud", time.clone()),
            time,
            transport_faults: Faults::new(),
        }
    }

    async fn engine_with(
        &self,
        page_limit: usize,
        metrics: NodeMetrics,
        time: Arc<dyn TimeSource>,
    ) -> Engine {
        let responder: Arc<dyn ExchangeTransport> =
            Arc::new(self.cloud.responder(&Channel::Drive, Default::default()));
        Engine::builder("laptop", Channel::Drive)
            .unwrap()
            .records(self.local.records.clone())
            .state(self.local.state.clone())
            .blob_transfer(Arc::new(MemoryTransfer {
                local: self.local.blobs.clone(),
                remote: self.cloud.blobs.clone(),
            }))
            .transport(Arc::new(FaultyTransport {
                inner: responder,
                faults: self.transport_faults.clone(),
            }))
            .time_source(time)
            .page_limit(page_limit)
            .metrics(metrics)
            .retry(RetryPolicy::none())
            .build()
            .await
            .unwrap()
    }

    async fn engine(&self, metrics: NodeMetrics) -> Engine {
        self.engine_with(1000, metrics, self.local.time.clone())
            .await
    }

    fn file(&self, id: &str, bytes: &[u8]) -> RecordDraft {
        let hash = sha256_hex(bytes);
        let key = format!("shared/test/{}/{hash}", &hash[..2]);
        self.local.blobs.insert(&key, bytes);
        RecordDraft::file(id, key, hash, bytes.len() as u64)
    }
}

/// The fields of one closed span, as text.
type Fields = HashMap<String, String>;

/// A layer that keeps the fields of every `round` span, in the order they close.
#[derive(Clone, Default)]
struct RoundSpans {
    open: Arc<Mutex<HashMap<u64, Fields>>>,
    closed: Arc<Mutex<Vec<Fields>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for RoundSpans {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "round" {
            let mut fields = Fields::new();
            attrs.record(&mut Collect(&mut fields));
            self.open.lock().unwrap().insert(id.into_u64(), fields);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }

    fn on_close(&self, id: span::Id, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(fields);
        }
    }
}

#[tokio::test]
async fn every_round_has_one_span_with_what_it_did() {
    let spans = RoundSpans::default();
    let _guard = tracing_subscriber::registry()
        .with(spans.clone())
        .set_default();

    let w = World::new();
    let engine = w
        .engine_with(1, NodeMetrics::new(), w.local.time.clone())
        .await;
    engine.put_record(w.file("a", b"one")).await.unwrap();
    engine.put_record(w.file("b", b"two")).await.unwrap();
    w.cloud.put_record("c", Some(b"three"));

    let summary = engine.sync_until_idle().await.unwrap();
    assert!(summary.complete, "{summary:?}");
    let extra = engine.exchange().await.unwrap();
    assert!(!extra.has_more);

    let closed = spans.closed.lock().unwrap().clone();
    assert_eq!(closed.len(), summary.rounds + 1, "{closed:#?}");
    let number = |f: &Fields, k: &str| -> u64 {
        f.get(k)
            .unwrap_or_else(|| panic!("{k} recorded in {f:?}"))
            .parse()
            .unwrap()
    };
    let (mut applied, mut shipped) = (0, 0);
    for (i, f) in closed.iter().enumerate() {
        assert_eq!(f["channel"], "drive");
        assert_eq!(number(f, "round"), i as u64 + 1);
        applied += number(f, "applied");
        shipped += number(f, "shipped");
        assert!(number(f, "shipped") <= 1, "page limit 1: {f:?}");
        assert_eq!(number(f, "failures"), 0);
        assert_eq!(f["stalled"], "false");
        let ms: f64 = f["duration_ms"].parse().unwrap();
        assert!(ms >= 0.0, "{f:?}");
        assert!(!f.contains_key("error"));
    }
    assert_eq!((applied, shipped), (1, 2));
    // Every round but the last of the loop said there was more; the extra one did not.
    let more: Vec<&str> = closed.iter().map(|f| f["has_more"].as_str()).collect();
    assert!(
        more[..summary.rounds - 1].iter().all(|m| *m == "true"),
        "{more:?}"
    );
    assert_eq!(&more[summary.rounds - 1..], ["false", "false"]);

    // A failed round records its error instead.
    w.transport_faults
        .arm(FaultPoint::Send, FaultMode::Persistent);
    engine.exchange().await.unwrap_err();
    let closed = spans.closed.lock().unwrap().clone();
    let last = closed.last().unwrap();
    assert_eq!(number(last, "round"), summary.rounds as u64 + 2);
    assert!(
        last.contains_key("error") && !last.contains_key("applied"),
        "{last:?}"
    );
}

#[tokio::test]
async fn failing_blobs_count_attempts_until_they_land() {
    let w = World::new();
    let metrics = NodeMetrics::new();
    let engine = w.engine(metrics.clone()).await;
    engine.put_record(w.file("a", b"fine")).await.unwrap();
    let lost = engine.put_record(w.file("b", b"lost")).await.unwrap();
    // Missing at the source: the push fails every round until the file is back.
    w.local.blobs.remove(&lost.object_storage_key);

    let summary = engine.sync_until_idle().await.unwrap();
    assert!(summary.stalled, "{summary:?}");
    let s = metrics.snapshot();
    let c = &s.channels["drive"];
    assert_eq!(c.rounds_ok, summary.rounds as u64);
    assert_eq!(c.shipped, 1);
    assert_eq!(c.blob_failures, summary.rounds as u64);
    assert_eq!(s.failing_items.len(), 1, "{s:?}");
    let f = &s.failing_items[0];
    assert_eq!(f.item, Some(ItemKey::Record { id: "b".into() }));
    assert_eq!(
        (f.direction.as_str(), f.kind.as_str()),
        ("outbound", "blob")
    );
    assert_eq!(f.attempts, summary.rounds as u64);
    assert_eq!(f.at, lost.updated_at.to_string());
    assert!(f.last_error.contains(&lost.object_storage_key), "{f:?}");
    assert!(f.first_failed_ms < f.last_failed_ms);

    // A later run continues from the persisted counters.
    let persisted: MetricsSnapshot =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    let restored = NodeMetrics::from_snapshot(persisted);
    let engine = w.engine(restored.clone()).await;
    engine.exchange().await.unwrap();
    assert_eq!(
        restored.snapshot().failing_items[0].attempts,
        f.attempts + 1
    );

    // The file is back: it ships, the peer covers it, and it is no longer failing.
    w.local.blobs.insert(&lost.object_storage_key, b"lost");
    assert!(engine.sync_until_idle().await.unwrap().complete);
    let s = restored.snapshot();
    assert!(s.failing_items.is_empty(), "{s:?}");
    assert_eq!(s.channels["drive"].shipped, 2);
    assert_eq!(s.channels["drive"].blob_failures, f.attempts + 1);
}

#[tokio::test]
async fn skew_refusals_halts_by_the_peer_and_failed_rounds_are_counted() {
    let w = World::new();
    let metrics = NodeMetrics::new();
    // The cloud holds an item from a node whose clock is two hours ahead.
    let ahead = w.cloud.time.now_ms() + 2 * HOUR_MS;
    let mut future = w.cloud.make_record("future", Some(b"from the future"));
    future.updated_at = Hlc::new(ahead, 0, NodeId::new("skewed").unwrap()).unwrap();
    future.created_at = future.updated_at.clone();
    w.cloud.apply_record(&future);
    // And this node's own clock runs two hours ahead for its writes.
    let skewed: Arc<dyn TimeSource> = Arc::new(sync_testkit::memory::SkewedTime {
        base: w.local.time.clone(),
        offset_ms: sync_testkit::memory::AtomicI64Wrapper::new(2 * HOUR_MS as i64),
    });
    let engine = w.engine_with(1000, metrics.clone(), skewed).await;
    let mine = engine.put_record(w.file("mine", b"written")).await.unwrap();
    // Rounds read time through the engine too: refuse the cloud's item on true time.
    let engine = w.engine(metrics.clone()).await;

    let r = engine.exchange().await.unwrap();
    assert_eq!(r.halted_by_peer.len(), 1, "{r:?}");
    let s = metrics.snapshot();
    let c = &s.channels["drive"];
    assert_eq!((c.skew_refusals, c.peer_halts), (1, 1));
    let skew = c.last_skew_refusal.as_ref().unwrap();
    assert_eq!(skew.at, future.updated_at.to_string());
    assert!(
        skew.ahead_ms > HOUR_MS && skew.max_drift_ms == HOUR_MS,
        "{skew:?}"
    );
    let halt = &c.halted_by_peer[0];
    assert_eq!(halt.node, "laptop");
    assert_eq!(
        halt.at.as_deref(),
        Some(mine.updated_at.to_string().as_str())
    );
    assert!(
        halt.reason.as_deref().unwrap().contains("ahead"),
        "{halt:?}"
    );
    let kinds: Vec<(&str, &str)> = s
        .failing_items
        .iter()
        .map(|f| (f.direction.as_str(), f.kind.as_str()))
        .collect();
    assert_eq!(kinds, [("inbound", "skew")]);

    // A round that fails as a whole is counted with its error, and cleared by the next.
    w.transport_faults
        .arm(FaultPoint::Send, FaultMode::Times(1));
    let err = engine.exchange().await.unwrap_err();
    let c = metrics.snapshot().channels["drive"].clone();
    assert_eq!((c.rounds_ok, c.rounds_failed), (1, 1));
    assert_eq!(c.last_error, Some(err.to_string()));
    engine.exchange().await.unwrap();
    let c = metrics.snapshot().channels["drive"].clone();
    assert_eq!((c.rounds_ok, c.rounds_failed, c.peer_halts), (2, 1, 2));
    assert_eq!(c.last_error, None);
}

#[tokio::test]
async fn status_reports_the_lag_per_origin_node() {
    let w = World::new();
    let engine = w.engine(NodeMetrics::new()).await;
    let mine = engine.put_record(w.file("a", b"local")).await.unwrap();
    let lag = engine.status().await.unwrap().lag;
    assert_eq!(lag.len(), 1);
    assert_eq!(lag[0].node.as_str(), "laptop");
    assert!(lag[0].outbound_pending && !lag[0].inbound_pending);
    assert_eq!(lag[0].local.as_ref(), Some(&mine.updated_at));
    // The peer holds nothing of it yet: pending, with no distance to measure.
    assert_eq!((lag[0].peer.as_ref(), lag[0].outbound_ms), (None, None));

    // The cloud holds three records of its own; the second one's file is missing there,
    // so this node lands the first, cannot land the second, and stays behind the third.
    let first = w.cloud.put_record("b0", Some(b"first"));
    let broken = w.cloud.put_record("b1", Some(b"broken"));
    w.time.advance(5_000);
    let last = w.cloud.put_record("b2", Some(b"last"));
    w.cloud.blobs.remove(&broken.object_storage_key);
    engine.exchange().await.unwrap();

    let lag = engine.status().await.unwrap().lag;
    let by_node: HashMap<&str, _> = lag.iter().map(|l| (l.node.as_str(), l)).collect();
    let me = by_node["laptop"];
    assert!(!me.outbound_pending && !me.inbound_pending, "{me:?}");
    assert_eq!((me.outbound_ms, me.inbound_ms), (None, None));
    let cloud = by_node["cloud"];
    assert!(
        cloud.inbound_pending && !cloud.outbound_pending,
        "{cloud:?}"
    );
    assert_eq!(cloud.peer.as_ref(), Some(&last.updated_at));
    assert_eq!(cloud.own.as_ref(), Some(&first.updated_at));
    let behind = cloud.inbound_ms.unwrap();
    assert_eq!(
        behind,
        last.updated_at.wall_time() - first.updated_at.wall_time()
    );
    assert!(behind >= 5_000, "{cloud:?}");

    w.cloud.blobs.insert(&broken.object_storage_key, b"broken");
    engine.sync_until_idle().await.unwrap();
    let lag = engine.status().await.unwrap().lag;
    assert!(
        lag.iter()
            .all(|l| !l.inbound_pending && !l.outbound_pending),
        "{lag:?}"
    );
}
