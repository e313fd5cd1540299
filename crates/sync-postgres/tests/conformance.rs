//! The conformance suites of `sync-testkit` against PostgreSQL, one fresh schema per case.

mod common;

use std::sync::{Arc, Mutex};

use sync_core::{hlc::ClockState, AppRowStore, BlobPack, RecordStore, SyncStateStore};
use sync_postgres::PostgresStore;
use sync_testkit::conformance;

/// Makes stores on fresh schemas and remembers the schemas to drop them afterwards.
struct Schemas {
    url: String,
    made: Mutex<Vec<String>>,
}

impl Schemas {
    fn new(url: String) -> Arc<Self> {
        Arc::new(Self {
            url,
            made: Mutex::default(),
        })
    }

    async fn store(&self) -> PostgresStore {
        let (store, schema) = common::fresh_store(&self.url).await;
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(schema);
        store
    }

    async fn drop_all(&self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|e| e.into_inner()));
        common::drop_schemas(&self.url, &made).await;
    }
}

#[tokio::test]
async fn record_store() {
    let Some(url) = common::url() else { return };
    let schemas = Schemas::new(url);
    conformance::record_store_suite(|| {
        let schemas = schemas.clone();
        async move { Arc::new(schemas.store().await) as Arc<dyn RecordStore> }
    })
    .await;
    schemas.drop_all().await;
}

#[tokio::test]
async fn app_row_store() {
    let Some(url) = common::url() else { return };
    let schemas = Schemas::new(url);
    conformance::app_row_store_suite(|| {
        let schemas = schemas.clone();
        async move { Arc::new(schemas.store().await) as Arc<dyn AppRowStore> }
    })
    .await;
    schemas.drop_all().await;
}

#[tokio::test]
async fn sync_state_store() {
    let Some(url) = common::url() else { return };
    let schemas = Schemas::new(url);
    conformance::sync_state_suite(|| {
        let schemas = schemas.clone();
        async move { Arc::new(schemas.store().await) as Arc<dyn SyncStateStore> }
    })
    .await;
    schemas.drop_all().await;
}

#[tokio::test]
async fn blob_pack() {
    let Some(url) = common::url() else { return };
    let schemas = Schemas::new(url);
    conformance::blob_pack_suite(|| {
        let schemas = schemas.clone();
        async move { Arc::new(schemas.store().await.blob_pack()) as Arc<dyn BlobPack> }
    })
    .await;
    schemas.drop_all().await;
}

/// Two stores (two pools, as two server processes would have) on one schema: what the
/// first wrote, the second reads while both are connected, and a third after both closed.
#[tokio::test]
async fn reopen() {
    let Some(url) = common::url() else { return };
    let (first, schema) = common::fresh_store(&url).await;
    let second = PostgresStore::connect_with(&url, &common::options(&schema))
        .await
        .expect("second connect");
    conformance::record_store_reopen(&first, &second).await;
    conformance::app_row_store_reopen(&first, &second).await;
    conformance::sync_state_reopen(&first, &second).await;
    conformance::blob_pack_reopen(&first.blob_pack(), &second.blob_pack()).await;
    first.close().await;
    second.close().await;

    let third = PostgresStore::connect_with(&url, &common::options(&schema))
        .await
        .expect("reconnect");
    assert!(RecordStore::get(&third, "r1").await.expect("get").is_some());
    assert!(third
        .namespace(conformance::APP)
        .await
        .expect("namespace")
        .is_some());
    assert_eq!(
        third.load_clock().await.expect("load clock"),
        Some(ClockState {
            wall_time: 71,
            counter: 2
        })
    );
    third.close().await;
    common::drop_schemas(&url, &[schema]).await;
}
