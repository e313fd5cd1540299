//! The conformance suites against the in-memory ports.

use std::sync::Arc;

use futures::executor::block_on;
use sync_core::{AppRowStore, RecordStore, SyncStateStore};
use sync_testkit::{
    conformance,
    memory::{MemoryAppRowStore, MemoryRecordStore, MemorySyncState},
};

#[test]
fn record_store() {
    block_on(conformance::record_store_suite(|| async {
        Arc::new(MemoryRecordStore::default()) as Arc<dyn RecordStore>
    }));
}

#[test]
fn app_row_store() {
    block_on(conformance::app_row_store_suite(|| async {
        Arc::new(MemoryAppRowStore::default()) as Arc<dyn AppRowStore>
    }));
}

#[test]
fn sync_state_store() {
    block_on(conformance::sync_state_suite(|| async {
        Arc::new(MemorySyncState::default()) as Arc<dyn SyncStateStore>
    }));
}

/// In memory, "the same backend" is the same instance.
#[test]
fn reopen() {
    let records = MemoryRecordStore::default();
    block_on(conformance::record_store_reopen(&records, &records));
    let rows = MemoryAppRowStore::default();
    block_on(conformance::app_row_store_reopen(&rows, &rows));
    let state = MemorySyncState::default();
    block_on(conformance::sync_state_reopen(&state, &state));
}
