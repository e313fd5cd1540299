//! What an operator sees of a node: the node counters (failing items with their attempts,
//! skew refusals, halts by the peer, failed rounds) and the per-origin lag of `status`.
//! The `round` span has its own test binary (tests/round_spans.rs).

mod drive_world;

use drive_world::World;
use std::{collections::HashMap, sync::Arc};

use sync_engine::{
    core::TimeSource,
    hlc::{Hlc, NodeId},
    ItemKey, MetricsSnapshot, NodeMetrics,
};
use sync_testkit::memory::{FaultMode, FaultPoint};

const HOUR_MS: u64 = 3_600_000;

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
    // The blob bytes that moved: "fine", through `/files` or inline.
    assert_eq!(c.blob_bytes_pushed + c.inline_bytes_sent, 4, "{c:?}");
    assert_eq!(c.blob_bytes_pulled + c.inline_bytes_received, 0);
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
    let c = &s.channels["drive"];
    assert_eq!(c.blob_bytes_pushed + c.inline_bytes_sent, 8, "{c:?}");
    let json = serde_json::to_value(&s).unwrap();
    let bytes = &json["channels"]["drive"];
    assert_eq!(
        bytes["blobBytesPushed"].as_u64().unwrap() + bytes["inlineBytesSent"].as_u64().unwrap(),
        8
    );
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
    assert_eq!(halt.code.as_deref(), Some("skew"));
    // The code is in the metrics JSON too.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["channels"]["drive"]["haltedByPeer"][0]["code"], "skew");
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
