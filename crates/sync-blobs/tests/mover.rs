//! The mover's bound on concurrent transfers.

use std::{sync::Arc, time::Duration};

use sync_blobs::{
    testing::{manifest, Backend, Calls},
    BlobMover,
};
use sync_core::{BlobTransfer, Transferred};

/// With a limit of 2, a third transfer waits for a turn: it does not even read its source
/// until one of the first two ended.
///
/// The clock is paused, so the `sleep` below is not a wait: tokio only advances a paused
/// clock once every task is idle, which makes it a deterministic "until nothing can move".
#[tokio::test(start_paused = true)]
async fn transfers_beyond_the_limit_wait_their_turn() {
    let backend = Backend::memory();
    let scope = backend.scope("limit");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let manifests: Vec<_> = (0..3)
        .map(|i| manifest(&format!("shared/doc/ab/limit-{i}"), b"bytes"))
        .collect();
    for m in &manifests {
        local.seed(&m.key, &b"bytes"[..]).await;
    }
    local.calls().reset();
    let gate = local.counting.close_gate();

    let mover =
        Arc::new(BlobMover::new(local.blobs.clone(), remote.blobs.clone()).with_max_transfers(2));
    let tasks: Vec<_> = manifests
        .iter()
        .cloned()
        .map(|m| {
            let mover = Arc::clone(&mover);
            tokio::spawn(async move { mover.push(&m).await })
        })
        .collect();
    gate.reached(2).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        Calls::get(&local.calls().gets),
        2,
        "the third waits for a turn"
    );
    assert_eq!(mover.in_flight(), 3, "all three are in flight");

    gate.open();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap(),
            Transferred::Copied { bytes: 5 }
        );
    }
    assert_eq!(Calls::get(&local.calls().gets), 3);
    assert_eq!(mover.in_flight(), 0);
}
