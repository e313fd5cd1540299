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

#[test]
fn blob_pack() {
    use sync_core::BlobPack;
    block_on(conformance::blob_pack_suite(|| async {
        Arc::new(sync_blobs::MemoryPack::new()) as Arc<dyn BlobPack>
    }));
    let pack = sync_blobs::MemoryPack::new();
    block_on(conformance::blob_pack_reopen(&pack, &pack.clone()));
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

/// A wipe is data loss: it forgets the coverage floors with the items (decision 0008), so
/// coverage goes down and a requester that cut its page above it is refused and re-ships.
#[test]
fn wipe_forgets_coverage_floors() {
    use conformance::{hlc, namespace, note, record, APP, NOTES};
    use sync_hlc::Watermarks;

    let old = hlc(10, 0, "node-a");
    let new = hlc(20, 0, "node-b");
    let both: Watermarks = [old.clone(), new.clone()].into_iter().collect();

    let records = MemoryRecordStore::default();
    block_on(records.apply(&[record("r1", &old)])).unwrap();
    block_on(records.apply(&[record("r1", &new)])).unwrap();
    assert_eq!(block_on(records.coverage()).unwrap(), both);
    records.wipe();
    assert_eq!(block_on(records.coverage()).unwrap(), Watermarks::new());
    assert_eq!(
        block_on(records.coverage_below(old.node_id(), &hlc(99, 0, "node-a"))).unwrap(),
        None
    );

    let rows = MemoryAppRowStore::default();
    block_on(rows.register(namespace())).unwrap();
    block_on(rows.apply(&[note("k1", &old)])).unwrap();
    block_on(rows.apply(&[note("k1", &new)])).unwrap();
    assert_eq!(block_on(rows.coverage(APP, NOTES)).unwrap(), both);
    rows.wipe();
    assert_eq!(
        block_on(rows.coverage(APP, NOTES)).unwrap(),
        Watermarks::new()
    );
    assert_eq!(
        block_on(rows.coverage_below(APP, NOTES, old.node_id(), &hlc(99, 0, "node-a"))).unwrap(),
        None
    );
}
