//! Crash points around the store ports and the exchange: pass-through wrappers that mark a
//! point before and after the calls a round makes.

use std::sync::Arc;

use async_trait::async_trait;
use sync_engine::{
    core::{
        AppRowStore, Applied, ChannelState, ExchangeError, ExchangeTransport, RecordStore,
        StoreError, SyncStateStore,
    },
    hlc::{ClockState, Hlc, NodeId, Watermarks},
    protocol::{AppRow, ExchangeRequest, ExchangeResponse, SharedRecord},
    AppNamespace, Channel,
};

use super::{armed, point};

/// The points of one side's record and app-row stores.
#[derive(Clone, Copy)]
struct StorePoints {
    coverage: &'static str,
    scan: &'static str,
    apply_before: &'static str,
    apply_after: &'static str,
}

const NODE: StorePoints = StorePoints {
    coverage: "node.store.coverage",
    scan: "node.store.scan",
    apply_before: "node.store.apply.before",
    apply_after: "node.store.apply.after",
};

const SERVER: StorePoints = StorePoints {
    coverage: "server.store.coverage",
    scan: "server.store.scan",
    apply_before: "server.store.apply.before",
    apply_after: "server.store.apply.after",
};

type Stores = (Arc<dyn RecordStore>, Arc<dyn AppRowStore>);

fn stores(
    records: Arc<dyn RecordStore>,
    rows: Arc<dyn AppRowStore>,
    points: StorePoints,
) -> Stores {
    if !armed() {
        return (records, rows);
    }
    (
        Arc::new(Records {
            inner: records,
            points,
        }),
        Arc::new(Rows {
            inner: rows,
            points,
        }),
    )
}

/// A node's record and app-row stores, with their crash points when one is armed.
pub fn node_stores(records: Arc<dyn RecordStore>, rows: Arc<dyn AppRowStore>) -> Stores {
    stores(records, rows, NODE)
}

/// A server's record and app-row stores, with their crash points when one is armed.
pub fn server_stores(records: Arc<dyn RecordStore>, rows: Arc<dyn AppRowStore>) -> Stores {
    stores(records, rows, SERVER)
}

/// A node's sync-state store, with its crash points when one is armed.
pub fn node_state(state: Arc<dyn SyncStateStore>) -> Arc<dyn SyncStateStore> {
    if armed() {
        Arc::new(State { inner: state })
    } else {
        state
    }
}

/// A node's exchange transport, with its crash points when one is armed.
pub fn node_transport(transport: Arc<dyn ExchangeTransport>) -> Arc<dyn ExchangeTransport> {
    if !armed() {
        return transport;
    }
    Arc::new(Exchange {
        inner: transport,
        before: "node.exchange.send",
        after: "node.exchange.response",
    })
}

/// A server's responder, with its crash points when one is armed.
pub fn server_responder(responder: Arc<dyn ExchangeTransport>) -> Arc<dyn ExchangeTransport> {
    if !armed() {
        return responder;
    }
    Arc::new(Exchange {
        inner: responder,
        before: "server.exchange.received",
        after: "server.exchange.responded",
    })
}

struct Records {
    inner: Arc<dyn RecordStore>,
    points: StorePoints,
}

#[async_trait]
impl RecordStore for Records {
    async fn coverage(&self) -> Result<Watermarks, StoreError> {
        point(self.points.coverage);
        self.inner.coverage().await
    }

    async fn coverage_below(
        &self,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        point(self.points.coverage);
        self.inner.coverage_below(origin, below).await
    }

    async fn scan(
        &self,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<SharedRecord>, StoreError> {
        point(self.points.scan);
        self.inner.scan(origin, above, limit).await
    }

    async fn apply(&self, records: &[SharedRecord]) -> Result<Vec<Applied>, StoreError> {
        point(self.points.apply_before);
        let applied = self.inner.apply(records).await?;
        point(self.points.apply_after);
        Ok(applied)
    }

    async fn get(&self, id: &str) -> Result<Option<SharedRecord>, StoreError> {
        self.inner.get(id).await
    }
}

struct Rows {
    inner: Arc<dyn AppRowStore>,
    points: StorePoints,
}

#[async_trait]
impl AppRowStore for Rows {
    async fn register(&self, namespace: AppNamespace) -> Result<(), StoreError> {
        self.inner.register(namespace).await
    }

    async fn namespace(&self, app_id: &str) -> Result<Option<AppNamespace>, StoreError> {
        self.inner.namespace(app_id).await
    }

    async fn coverage(&self, app_id: &str, table: &str) -> Result<Watermarks, StoreError> {
        point(self.points.coverage);
        self.inner.coverage(app_id, table).await
    }

    async fn coverage_below(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        point(self.points.coverage);
        self.inner
            .coverage_below(app_id, table, origin, below)
            .await
    }

    async fn scan(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<AppRow>, StoreError> {
        point(self.points.scan);
        self.inner.scan(app_id, table, origin, above, limit).await
    }

    async fn apply(&self, rows: &[AppRow]) -> Result<Vec<Applied>, StoreError> {
        point(self.points.apply_before);
        let applied = self.inner.apply(rows).await?;
        point(self.points.apply_after);
        Ok(applied)
    }

    async fn get(
        &self,
        app_id: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<AppRow>, StoreError> {
        self.inner.get(app_id, table, key).await
    }
}

struct State {
    inner: Arc<dyn SyncStateStore>,
}

#[async_trait]
impl SyncStateStore for State {
    async fn load(&self, channel: &Channel) -> Result<ChannelState, StoreError> {
        point("node.state.load");
        self.inner.load(channel).await
    }

    async fn load_clock(&self) -> Result<Option<ClockState>, StoreError> {
        self.inner.load_clock().await
    }

    async fn commit(
        &self,
        channel: &Channel,
        state: &ChannelState,
        clock: ClockState,
    ) -> Result<(), StoreError> {
        point("node.state.commit.before");
        self.inner.commit(channel, state, clock).await?;
        point("node.state.commit.after");
        Ok(())
    }

    async fn save_clock(&self, clock: ClockState) -> Result<(), StoreError> {
        point("node.state.save-clock");
        self.inner.save_clock(clock).await
    }
}

struct Exchange {
    inner: Arc<dyn ExchangeTransport>,
    before: &'static str,
    after: &'static str,
}

#[async_trait]
impl ExchangeTransport for Exchange {
    async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        point(self.before);
        let response = self.inner.exchange(request).await?;
        point(self.after);
        Ok(response)
    }
}
