//! The stores of a harness side: any backend's stores behind wrappers that inject the
//! side's faults, plus the synchronous accessors the scenarios read and seed them with.
//!
//! The wrappers consult the same [`Faults`] and [`FaultPoint`](crate::memory::FaultPoint)s
//! as the in-memory stores ([`Apply`](crate::memory::FaultPoint::Apply),
//! [`Scan`](crate::memory::FaultPoint::Scan),
//! [`Coverage`](crate::memory::FaultPoint::Coverage),
//! [`StateCommit`](crate::memory::FaultPoint::StateCommit)), before the call reaches the
//! store, so a failed call changes nothing on every backend. The accessors (`all`, `get`,
//! `set`, `reset`) go through the port methods only and never fire faults.
//!
//! In memory a call goes straight to the store; a SQL store's call runs on the stores'
//! tokio runtime ([`backend`](crate::backend)), so its arguments are copied into the task.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use sync_core::{
    row_key, AppNamespace, AppRowStore, Applied, Channel, ChannelState, RecordStore, StoreError,
    SyncStateStore,
};
use sync_hlc::{ClockState, Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, SharedRecord};

use crate::{
    backend::{on, Stores},
    memory::{
        commit_fault, coverage_fault, record_apply_fault, row_apply_fault, scan_fault, Faults,
    },
};

/// Page size of the accessors' full scans.
const PAGE: usize = 500;

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A side's record store: the current database's, behind the side's faults. A wipe swaps in
/// a fresh database ([`replace`](Self::replace)).
pub struct FaultyRecordStore {
    faults: Arc<Faults>,
    current: Mutex<Stores>,
}

impl FaultyRecordStore {
    /// The record store of `stores`, failing as `faults` say.
    pub fn new(stores: Stores, faults: Arc<Faults>) -> Self {
        Self {
            faults,
            current: Mutex::new(stores),
        }
    }

    fn stores(&self) -> Stores {
        guard(&self.current).clone()
    }

    /// From now on, the records of `stores` (an empty database: a wipe).
    pub fn replace(&self, stores: Stores) {
        *guard(&self.current) = stores;
    }

    /// Every stored record, by id (every origin the coverage names, scanned to the end).
    pub fn all(&self) -> BTreeMap<String, SharedRecord> {
        let stores = self.stores();
        if let Some((records, _)) = &stores.memory {
            return records.all();
        }
        let store = stores.records.clone();
        stores.block_on(async move {
            let mut out = BTreeMap::new();
            let coverage = store.coverage().await.expect("record coverage");
            for (_, top) in coverage.iter() {
                let mut above: Option<Hlc> = None;
                loop {
                    let page = store
                        .scan(top.node_id(), above.as_ref(), PAGE)
                        .await
                        .expect("record scan");
                    let more = page.len() == PAGE;
                    above = page.last().map(|r| r.updated_at.clone());
                    out.extend(page.into_iter().map(|r| (r.id.clone(), r)));
                    if !more {
                        break;
                    }
                }
            }
            out
        })
    }
}

#[async_trait]
impl RecordStore for FaultyRecordStore {
    async fn coverage(&self) -> Result<Watermarks, StoreError> {
        coverage_fault(&self.faults)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.records.coverage().await;
        };
        let store = stores.records.clone();
        on(rt, async move { store.coverage().await }).await
    }

    async fn coverage_below(
        &self,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        coverage_fault(&self.faults)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.records.coverage_below(origin, below).await;
        };
        let store = stores.records.clone();
        let (origin, below) = (origin.clone(), below.clone());
        on(
            rt,
            async move { store.coverage_below(&origin, &below).await },
        )
        .await
    }

    async fn scan(
        &self,
        origin: &NodeId,
        above: Option<&Hlc>,
        limit: usize,
    ) -> Result<Vec<SharedRecord>, StoreError> {
        scan_fault(&self.faults)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.records.scan(origin, above, limit).await;
        };
        let store = stores.records.clone();
        let (origin, above) = (origin.clone(), above.cloned());
        on(rt, async move {
            store.scan(&origin, above.as_ref(), limit).await
        })
        .await
    }

    async fn apply(&self, records: &[SharedRecord]) -> Result<Vec<Applied>, StoreError> {
        record_apply_fault(&self.faults, records)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.records.apply(records).await;
        };
        let store = stores.records.clone();
        let records = records.to_vec();
        on(rt, async move { store.apply(&records).await }).await
    }

    async fn get(&self, id: &str) -> Result<Option<SharedRecord>, StoreError> {
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.records.get(id).await;
        };
        let store = stores.records.clone();
        let id = id.to_string();
        on(rt, async move { store.get(&id).await }).await
    }
}

/// A side's app-row store: the current database's, behind the side's faults. It remembers
/// the namespaces registered through it, and registers them again on the fresh database a
/// wipe swaps in (a wipe loses rows, not the apps a node knows).
pub struct FaultyAppRowStore {
    faults: Arc<Faults>,
    current: Mutex<Stores>,
    registered: Mutex<BTreeMap<String, AppNamespace>>,
}

impl FaultyAppRowStore {
    /// The app-row store of `stores`, failing as `faults` say.
    pub fn new(stores: Stores, faults: Arc<Faults>) -> Self {
        Self {
            faults,
            current: Mutex::new(stores),
            registered: Mutex::default(),
        }
    }

    fn stores(&self) -> Stores {
        guard(&self.current).clone()
    }

    /// From now on, the rows of `stores` (an empty database: a wipe), with the namespaces
    /// registered so far.
    pub fn replace(&self, stores: Stores) {
        let namespaces: Vec<AppNamespace> = guard(&self.registered).values().cloned().collect();
        let store = stores.rows.clone();
        stores.block_on(async move {
            for ns in namespaces {
                store
                    .register(ns)
                    .await
                    .expect("register again after a wipe");
            }
        });
        *guard(&self.current) = stores;
    }

    /// Every stored row of one app, by (table, canonical key): every table of its
    /// namespace, every origin the table's coverage names, scanned to the end.
    pub fn all(&self, app: &str) -> BTreeMap<(String, String), AppRow> {
        let stores = self.stores();
        if let Some((_, rows)) = &stores.memory {
            return rows.all(app);
        }
        let store = stores.rows.clone();
        let app = app.to_string();
        stores.block_on(async move {
            let mut out = BTreeMap::new();
            let Some(ns) = store.namespace(&app).await.expect("namespace") else {
                return out;
            };
            for spec in &ns.tables {
                let table = spec.name.as_str();
                let coverage = store.coverage(&app, table).await.expect("row coverage");
                for (_, top) in coverage.iter() {
                    let mut above: Option<Hlc> = None;
                    loop {
                        let page = store
                            .scan(&app, table, top.node_id(), above.as_ref(), PAGE)
                            .await
                            .expect("row scan");
                        let more = page.len() == PAGE;
                        above = page.last().map(|r| r.timestamp.clone());
                        for r in page {
                            let key = row_key(spec, &r).expect("stored rows have their key");
                            out.insert((table.to_string(), key), r);
                        }
                        if !more {
                            break;
                        }
                    }
                }
            }
            out
        })
    }
}

#[async_trait]
impl AppRowStore for FaultyAppRowStore {
    async fn register(&self, namespace: AppNamespace) -> Result<(), StoreError> {
        let stores = self.stores();
        match stores.runtime() {
            None => stores.rows.register(namespace.clone()).await?,
            Some(rt) => {
                let (store, ns) = (stores.rows.clone(), namespace.clone());
                on(rt, async move { store.register(ns).await }).await?
            }
        }
        guard(&self.registered).insert(namespace.app_id.clone(), namespace);
        Ok(())
    }

    async fn namespace(&self, app_id: &str) -> Result<Option<AppNamespace>, StoreError> {
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.rows.namespace(app_id).await;
        };
        let store = stores.rows.clone();
        let app_id = app_id.to_string();
        on(rt, async move { store.namespace(&app_id).await }).await
    }

    async fn coverage(&self, app_id: &str, table: &str) -> Result<Watermarks, StoreError> {
        coverage_fault(&self.faults)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.rows.coverage(app_id, table).await;
        };
        let store = stores.rows.clone();
        let (app_id, table) = (app_id.to_string(), table.to_string());
        on(rt, async move { store.coverage(&app_id, &table).await }).await
    }

    async fn coverage_below(
        &self,
        app_id: &str,
        table: &str,
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        coverage_fault(&self.faults)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores
                .rows
                .coverage_below(app_id, table, origin, below)
                .await;
        };
        let store = stores.rows.clone();
        let (app_id, table) = (app_id.to_string(), table.to_string());
        let (origin, below) = (origin.clone(), below.clone());
        on(rt, async move {
            store.coverage_below(&app_id, &table, &origin, &below).await
        })
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
        scan_fault(&self.faults)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.rows.scan(app_id, table, origin, above, limit).await;
        };
        let store = stores.rows.clone();
        let (app_id, table) = (app_id.to_string(), table.to_string());
        let (origin, above) = (origin.clone(), above.cloned());
        on(rt, async move {
            store
                .scan(&app_id, &table, &origin, above.as_ref(), limit)
                .await
        })
        .await
    }

    async fn apply(&self, rows: &[AppRow]) -> Result<Vec<Applied>, StoreError> {
        row_apply_fault(&self.faults, rows)?;
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.rows.apply(rows).await;
        };
        let store = stores.rows.clone();
        let rows = rows.to_vec();
        on(rt, async move { store.apply(&rows).await }).await
    }

    async fn get(
        &self,
        app_id: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<AppRow>, StoreError> {
        let stores = self.stores();
        let Some(rt) = stores.runtime() else {
            return stores.rows.get(app_id, table, key).await;
        };
        let store = stores.rows.clone();
        let (app_id, table, key) = (app_id.to_string(), table.to_string(), key.to_string());
        on(rt, async move { store.get(&app_id, &table, &key).await }).await
    }
}

/// A side's sync-state store, behind the side's faults. It stays on the side's first
/// database: a wipe loses data, and a state reset is a separate event
/// ([`reset`](Self::reset)).
pub struct FaultySyncState {
    faults: Arc<Faults>,
    stores: Stores,
}

impl FaultySyncState {
    /// The sync-state store of `stores`, failing as `faults` say.
    pub fn new(stores: Stores, faults: Arc<Faults>) -> Self {
        Self { faults, stores }
    }

    /// A channel's state.
    pub fn get(&self, channel: &Channel) -> ChannelState {
        let store = self.stores.state.clone();
        let channel = channel.clone();
        self.stores
            .block_on(async move { store.load(&channel).await })
            .expect("load sync state")
    }

    /// Overwrites a channel's state (to seed scenarios), keeping the clock state.
    pub fn set(&self, channel: &Channel, state: ChannelState) {
        let store = self.stores.state.clone();
        let channel = channel.clone();
        self.stores
            .block_on(async move {
                let clock = store.load_clock().await?.unwrap_or_default();
                store.commit(&channel, &state, clock).await
            })
            .expect("seed sync state");
    }

    /// Forgets a channel's watermarks (a local state reset).
    pub fn reset(&self, channel: &Channel) {
        self.set(channel, ChannelState::default());
    }
}

#[async_trait]
impl SyncStateStore for FaultySyncState {
    async fn load(&self, channel: &Channel) -> Result<ChannelState, StoreError> {
        let Some(rt) = self.stores.runtime() else {
            return self.stores.state.load(channel).await;
        };
        let store = self.stores.state.clone();
        let channel = channel.clone();
        on(rt, async move { store.load(&channel).await }).await
    }

    async fn load_clock(&self) -> Result<Option<ClockState>, StoreError> {
        let Some(rt) = self.stores.runtime() else {
            return self.stores.state.load_clock().await;
        };
        let store = self.stores.state.clone();
        on(rt, async move { store.load_clock().await }).await
    }

    async fn commit(
        &self,
        channel: &Channel,
        state: &ChannelState,
        clock: ClockState,
    ) -> Result<(), StoreError> {
        commit_fault(&self.faults)?;
        let Some(rt) = self.stores.runtime() else {
            return self.stores.state.commit(channel, state, clock).await;
        };
        let store = self.stores.state.clone();
        let (channel, state) = (channel.clone(), state.clone());
        on(
            rt,
            async move { store.commit(&channel, &state, clock).await },
        )
        .await
    }

    async fn save_clock(&self, clock: ClockState) -> Result<(), StoreError> {
        let Some(rt) = self.stores.runtime() else {
            return self.stores.state.save_clock(clock).await;
        };
        let store = self.stores.state.clone();
        on(rt, async move { store.save_clock(clock).await }).await
    }
}
