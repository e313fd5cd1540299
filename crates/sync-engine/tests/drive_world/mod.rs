//! The fixture of the node-observability tests (tests/observability.rs and
//! tests/round_spans.rs, separate binaries): a laptop's Drive engine over in-memory ports
//! against an in-process cloud responder, with transport faults and time under control.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;

use sync_engine::{
    core::{ExchangeTransport, TimeSource},
    Channel, Engine, NodeMetrics, RecordDraft, RetryPolicy,
};
use sync_testkit::{
    harness::Side,
    memory::{sha256_hex, Faults, FaultyTransport, ManualTime, MemoryTransfer},
};

pub struct World {
    pub local: Side,
    pub cloud: Side,
    pub time: Arc<ManualTime>,
    pub transport_faults: Arc<Faults>,
}

impl World {
    pub fn new() -> Self {
        let time = ManualTime::new(1_700_000_000_000, 1);
        Self {
            local: Side::new("laptop", time.clone()),
            cloud: Side::new("cloud", time.clone()),
            time,
            transport_faults: Faults::new(),
        }
    }

    pub async fn engine_with(
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

    pub async fn engine(&self, metrics: NodeMetrics) -> Engine {
        self.engine_with(1000, metrics, self.local.time.clone())
            .await
    }

    pub fn file(&self, id: &str, bytes: &[u8]) -> RecordDraft {
        let hash = sha256_hex(bytes);
        let key = format!("shared/test/{}/{hash}", &hash[..2]);
        self.local.blobs.insert(&key, bytes);
        RecordDraft::file(id, key, hash, bytes.len() as u64)
    }
}
