//! The facade over in-memory ports and an in-process responder.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use sync_engine::{
    core::{ChannelState, ExchangeTransport, SyncStateStore},
    hlc::{ClockState, Watermarks},
    protocol::RowValues,
    ChangeEvent, Channel, Engine, Error, ItemKey, RecordDraft, RetryPolicy, SupervisorConfig,
};
use sync_testkit::{
    harness::{Side, TEST_APP, TEST_TABLE},
    memory::{
        sha256_hex, FaultMode, FaultPoint, Faults, FaultyTransport, ManualTime, MemoryTransfer,
    },
};

struct World {
    local: Side,
    cloud: Side,
    transport_faults: Arc<Faults>,
}

impl World {
    fn new() -> Self {
        let time = ManualTime::new(1_700_000_000_000, 1);
        Self {
            local: Side::new("laptop", time.clone()),
            cloud: Side::new("cloud", time),
            transport_faults: Faults::new(),
        }
    }

    async fn engine(&self, channel: Channel) -> Engine {
        let responder: Arc<dyn ExchangeTransport> =
            Arc::new(self.cloud.responder(&channel, Default::default()));
        Engine::builder("laptop", channel)
            .unwrap()
            .records(self.local.records.clone())
            .app_rows(self.local.rows.clone())
            .state(self.local.state.clone())
            .blob_transfer(Arc::new(MemoryTransfer {
                local: self.local.blobs.clone(),
                remote: self.cloud.blobs.clone(),
            }))
            .transport(Arc::new(FaultyTransport {
                inner: responder,
                faults: self.transport_faults.clone(),
            }))
            .time_source(self.local.time.clone())
            .retry(
                RetryPolicy::default()
                    .with_delays(Duration::from_millis(1), Duration::from_millis(4)),
            )
            .build()
            .await
            .unwrap()
    }

    fn file(&self, id: &str, bytes: &[u8]) -> RecordDraft {
        let hash = sha256_hex(bytes);
        let key = format!("shared/test/{}/{hash}", &hash[..2]);
        self.local.blobs.insert(&key, bytes);
        RecordDraft::file(id, key, hash, bytes.len() as u64)
    }
}

fn recorder(engine: &Engine) -> Arc<Mutex<Vec<ChangeEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _ = engine.subscribe(move |e| s.lock().unwrap().push(e.clone()));
    seen
}

#[tokio::test]
async fn writes_sync_and_announce_after_persisting() {
    let w = World::new();
    let engine = w.engine(Channel::Drive).await;
    let seen = recorder(&engine);
    let mine = engine.put_record(w.file("a", b"hello")).await.unwrap();
    let theirs = w.cloud.put_record("b", Some(b"world"));

    let summary = engine.sync_until_idle().await.unwrap();
    assert!(summary.complete && !summary.stalled);
    assert_eq!((summary.shipped, summary.applied), (1, 1));
    assert_eq!(w.cloud.record("a").unwrap(), mine);
    assert_eq!(w.local.record("b").unwrap(), theirs);

    engine.notifier().flush();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ChangeEvent::LocalChangeRecorded {
                channel: Channel::Drive,
                item: ItemKey::Record { id: "a".into() },
                origin_app_id: None,
            },
            ChangeEvent::LocalDataSynced {
                channel: Channel::Drive,
                items: vec![ItemKey::Record { id: "b".into() }],
            },
        ]
    );
    // The event was sent after the state it reports was persisted.
    let state = w.local.state.get(&Channel::Drive);
    assert_eq!(state.own.get("cloud"), Some(&theirs.updated_at));
}

#[tokio::test]
async fn a_panicking_listener_cannot_fail_a_round() {
    let w = World::new();
    let engine = w.engine(Channel::Drive).await;
    let _ = engine.subscribe(|_| panic!("listener bug"));
    w.cloud.put_record("b", Some(b"x"));
    let r = engine.exchange().await.unwrap();
    assert_eq!(r.applied, 1);
    engine.notifier().flush();
    assert!(w.local.record("b").is_some());
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let w = World::new();
    let engine = w.engine(Channel::Drive).await;
    engine.put_record(w.file("a", b"x")).await.unwrap();
    w.transport_faults
        .arm(FaultPoint::Send, FaultMode::Times(2));
    let summary = engine.sync_until_idle().await.unwrap();
    assert!(summary.complete);
    assert!(w.cloud.record("a").is_some());

    // Beyond the attempts, the error is returned, and it says it is transient.
    w.transport_faults
        .arm(FaultPoint::Send, FaultMode::Persistent);
    let err = engine.sync_until_idle().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn stalled_when_only_failing_items_remain() {
    let w = World::new();
    let engine = w.engine(Channel::Drive).await;
    engine.put_record(w.file("a", b"x")).await.unwrap();
    w.cloud
        .faults
        .arm(FaultPoint::AnyBlobPut, FaultMode::Persistent);
    let summary = engine.sync_until_idle().await.unwrap();
    assert!(summary.stalled && !summary.complete);
    assert!(
        summary.rounds <= 3,
        "stops instead of spinning: {}",
        summary.rounds
    );
    w.cloud.faults.heal();
    assert!(engine.sync_until_idle().await.unwrap().complete);
}

#[tokio::test]
async fn app_rows_go_through_the_app_channel_only() {
    let w = World::new();
    let app = w.engine(Channel::App(TEST_APP.into())).await;
    let drive = w.engine(Channel::Drive).await;
    let mut row = RowValues::new();
    row.insert("id".into(), json!("w1"));
    row.insert("payload".into(), json!("hello"));
    app.put_row(TEST_TABLE, row.clone()).await.unwrap();
    assert!(matches!(
        drive.put_row(TEST_TABLE, row).await,
        Err(Error::WrongChannel { .. })
    ));
    assert!(matches!(
        app.put_record(w.file("a", b"x")).await,
        Err(Error::WrongChannel { .. })
    ));
    app.sync_until_idle().await.unwrap();
    assert_eq!(
        w.cloud.row(TEST_TABLE, "w1").unwrap().row.unwrap()["payload"],
        "hello"
    );

    let mut key = RowValues::new();
    key.insert("id".into(), json!("w1"));
    let tomb = app.delete_row(TEST_TABLE, key).await.unwrap();
    app.sync_until_idle().await.unwrap();
    assert_eq!(
        w.cloud.row(TEST_TABLE, "w1").unwrap().timestamp,
        tomb.timestamp
    );
    let mut no_key = RowValues::new();
    no_key.insert("payload".into(), json!("x"));
    assert!(matches!(
        app.put_row(TEST_TABLE, no_key).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn a_restarted_engine_never_reissues_a_timestamp() {
    let w = World::new();
    let engine = w.engine(Channel::Drive).await;
    let first = engine.put_record(w.file("a", b"x")).await.unwrap();
    // Persisted clock state is older than the data (a crash before it was saved).
    w.local
        .state
        .save_clock(ClockState {
            wall_time: 0,
            counter: 0,
        })
        .await
        .unwrap();
    w.local.state.set(&Channel::Drive, ChannelState::default());
    // Physical time goes backwards too.
    let restarted = Engine::builder("laptop", Channel::Drive)
        .unwrap()
        .records(w.local.records.clone())
        .state(w.local.state.clone())
        .blob_transfer(Arc::new(MemoryTransfer {
            local: w.local.blobs.clone(),
            remote: w.cloud.blobs.clone(),
        }))
        .transport(Arc::new(
            w.cloud.responder(&Channel::Drive, Default::default()),
        ))
        .time_source(ManualTime::new(5, 0))
        .build()
        .await
        .unwrap();
    let second = restarted.put_record(w.file("b", b"y")).await.unwrap();
    assert!(second.updated_at > first.updated_at);
    assert_eq!(restarted.status().await.unwrap().own, Watermarks::new());
}

#[tokio::test]
async fn the_supervisor_syncs_on_a_local_change_and_shuts_down_cleanly() {
    let w = World::new();
    let engine = w.engine(Channel::Drive).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = engine.subscribe(move |e| {
        let _ = tx.send(e.clone());
    });
    let supervisor =
        engine.supervise(SupervisorConfig::default().with_interval(Duration::from_secs(3600)));
    // The first pass runs at once; afterwards only a wake-up triggers a round.
    w.cloud.put_record("from-cloud", Some(b"c"));
    supervisor.remote_update();
    loop {
        match rx.recv().await.unwrap() {
            ChangeEvent::LocalDataSynced { items, .. } => {
                assert_eq!(
                    items,
                    vec![ItemKey::Record {
                        id: "from-cloud".into()
                    }]
                );
                break;
            }
            _ => continue,
        }
    }
    engine.put_record(w.file("a", b"x")).await.unwrap();
    supervisor.local_change();
    supervisor.shutdown().await;
    // Shutdown waited for the round it had started, if any; a final round makes sure.
    engine.sync_until_idle().await.unwrap();
    assert!(w.cloud.record("a").is_some());
}

#[tokio::test]
async fn build_refuses_missing_parts_and_unregistered_apps() {
    let w = World::new();
    let err = Engine::builder("laptop", Channel::Drive)
        .unwrap()
        .state(w.local.state.clone())
        .build()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("required"), "{err}");
    assert!(Engine::builder("bad id", Channel::Drive).is_err());
    let err = Engine::builder("laptop", Channel::App("nope".into()))
        .unwrap()
        .app_rows(w.local.rows.clone())
        .state(w.local.state.clone())
        .blob_transfer(Arc::new(MemoryTransfer {
            local: w.local.blobs.clone(),
            remote: w.cloud.blobs.clone(),
        }))
        .transport(Arc::new(
            w.cloud.responder(&Channel::Drive, Default::default()),
        ))
        .build()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not registered"), "{err}");
}
