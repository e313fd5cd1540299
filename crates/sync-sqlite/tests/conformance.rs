//! The conformance suites of `sync-testkit` against SQLite files in a temporary directory.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use sync_core::{hlc::ClockState, AppRowStore, BlobPack, RecordStore, SyncStateStore};
use sync_sqlite::SqliteStore;
use sync_testkit::conformance;
use tempfile::TempDir;

/// Fresh database files, one per case, in one temporary directory.
struct Files {
    dir: TempDir,
    next: AtomicUsize,
}

impl Files {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            dir: tempfile::tempdir().expect("temporary directory"),
            next: AtomicUsize::new(0),
        })
    }

    fn path(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("case-{n}.sqlite"))
    }

    async fn open(&self) -> SqliteStore {
        SqliteStore::open(self.path()).await.expect("open")
    }
}

#[tokio::test]
async fn record_store() {
    let files = Files::new();
    conformance::record_store_suite(|| {
        let files = files.clone();
        async move { Arc::new(files.open().await) as Arc<dyn RecordStore> }
    })
    .await;
}

#[tokio::test]
async fn app_row_store() {
    let files = Files::new();
    conformance::app_row_store_suite(|| {
        let files = files.clone();
        async move { Arc::new(files.open().await) as Arc<dyn AppRowStore> }
    })
    .await;
}

#[tokio::test]
async fn sync_state_store() {
    let files = Files::new();
    conformance::sync_state_suite(|| {
        let files = files.clone();
        async move { Arc::new(files.open().await) as Arc<dyn SyncStateStore> }
    })
    .await;
}

#[tokio::test]
async fn blob_pack() {
    let files = Files::new();
    conformance::blob_pack_suite(|| {
        let files = files.clone();
        async move { Arc::new(files.open().await.blob_pack()) as Arc<dyn BlobPack> }
    })
    .await;
}

/// The in-memory database passes the same suites.
#[tokio::test]
async fn in_memory() {
    async fn fresh() -> SqliteStore {
        SqliteStore::open_in_memory().await.expect("open")
    }
    conformance::record_store_suite(|| async { Arc::new(fresh().await) as Arc<dyn RecordStore> })
        .await;
    conformance::app_row_store_suite(|| async { Arc::new(fresh().await) as Arc<dyn AppRowStore> })
        .await;
    conformance::sync_state_suite(|| async { Arc::new(fresh().await) as Arc<dyn SyncStateStore> })
        .await;
    conformance::blob_pack_suite(|| async {
        Arc::new(fresh().await.blob_pack()) as Arc<dyn BlobPack>
    })
    .await;
}

/// Two store instances on the same file: what the first wrote, the second reads while both
/// are open, and a third reads after both are closed.
#[tokio::test]
async fn reopen() {
    let files = Files::new();
    let path = files.path();
    let first = SqliteStore::open(&path).await.expect("open");
    let second = SqliteStore::open(&path).await.expect("second open");
    conformance::record_store_reopen(&first, &second).await;
    conformance::app_row_store_reopen(&first, &second).await;
    conformance::sync_state_reopen(&first, &second).await;
    conformance::blob_pack_reopen(&first.blob_pack(), &second.blob_pack()).await;
    first.close().await;
    second.close().await;

    let third = SqliteStore::open(&path).await.expect("reopen after close");
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
}
