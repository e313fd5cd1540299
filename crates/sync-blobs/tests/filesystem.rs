//! What only the local filesystem backend can show: the files on disk.

use std::path::{Path, PathBuf};

use sync_blobs::{
    testing::{manifest, pseudo_random, Backend},
    BlobMover, PART_SIZE,
};
use sync_core::{BlobError, BlobTransfer, Transferred};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A refused multipart upload leaves no staging file behind either; the accepted one is a
/// plain file named by its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upload_leaves_no_file_on_disk() {
    let backend = Backend::filesystem();
    let root = backend.root().unwrap().to_path_buf();
    let scope = backend.scope("disk");
    let (local, remote) = (scope.side("local"), scope.side("remote"));
    let good = pseudo_random(PART_SIZE + 1, 5);
    let m = manifest("shared/video/ab/on-disk", &good);
    local.seed(&m.key, pseudo_random(PART_SIZE + 1, 6)).await;
    let before = files_under(&root);

    let mover = BlobMover::new(local.blobs.clone(), remote.blobs.clone());
    assert!(matches!(
        mover.push(&m).await,
        Err(BlobError::HashMismatch { .. })
    ));
    assert_eq!(
        files_under(&root),
        before,
        "no file added by a refused upload"
    );

    local.seed(&m.key, good.clone()).await;
    assert_eq!(
        mover.push(&m).await.unwrap(),
        Transferred::Copied {
            bytes: good.len() as u64
        }
    );
    let added: Vec<_> = files_under(&root)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(
        added[0].ends_with("remote/shared/video/ab/on-disk"),
        "{added:?}"
    );
    assert_eq!(std::fs::read(&added[0]).unwrap(), good.to_vec());
}
