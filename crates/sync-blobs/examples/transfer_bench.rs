//! Throughput of one large blob transfer, and of many small ones, between two local
//! directories (or from a directory to S3 when `STARKEEP_TEST_S3_*` name a server).
//!
//! ```sh
//! cargo run --release -p sync-blobs --example transfer_bench -- 1024 10000
//! /usr/bin/time -v cargo run ...   # peak RSS ("Maximum resident set size")
//! ```
//!
//! Arguments: size of the large blob in MiB (default 1024), number of 256-byte blobs
//! (default 10000). The large blob is written to disk in 1 MiB chunks, so the process never
//! holds it: the peak RSS is the transfer's own.

use std::{io::Write, sync::Arc, time::Instant};

use sha2::{Digest, Sha256};
use sync_blobs::{transfer, BlobMover, ObjectBlobs, S3Config};
use sync_core::{BlobManifest, BlobTransfer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(Ok(1024), |a| a.parse())?;
    let small: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let source = ObjectBlobs::filesystem(dir.path().join("source"))?;
    let (destination, label) = match std::env::var("STARKEEP_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let var = |n: &str| std::env::var(n).unwrap_or_default();
            let config = S3Config::new(
                var("STARKEEP_TEST_S3_BUCKET"),
                var("STARKEEP_TEST_S3_ACCESS_KEY"),
                var("STARKEEP_TEST_S3_SECRET_KEY"),
            )
            .with_endpoint(endpoint)
            .with_allow_http(true);
            (ObjectBlobs::s3(config)?, "filesystem -> S3")
        }
        Err(_) => (
            ObjectBlobs::filesystem(dir.path().join("destination"))?,
            "filesystem -> filesystem",
        ),
    };
    let run = format!("bench-{}", std::process::id());

    // The large blob, written straight to the source directory.
    let key = format!("shared/bench/{run}/large");
    let path = dir.path().join("source").join(&key);
    std::fs::create_dir_all(path.parent().expect("key has a parent"))?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..mib {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        hasher.update(&chunk);
        file.write_all(&chunk)?;
    }
    file.flush()?;
    drop(file);
    let manifest = BlobManifest {
        key,
        content_hash: hex::encode(hasher.finalize()),
        size_bytes: (mib as u64) << 20,
        mime_type: None,
    };
    let started = Instant::now();
    let outcome = transfer(&manifest, &source, &destination).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label}: {mib} MiB in {secs:.2} s = {:.0} MB/s ({outcome:?}, verified)",
        (mib as f64 * 1_048_576.0) / 1e6 / secs
    );

    // Many small blobs, pushed concurrently through the mover (at most 8 at a time).
    let mut manifests = Vec::with_capacity(small);
    for i in 0..small {
        let bytes: Vec<u8> = (0..256).map(|j| (i * 31 + j) as u8).collect();
        let key = format!("shared/bench/{run}/small/{:02x}/{i}", i % 256);
        let path = dir.path().join("source").join(&key);
        std::fs::create_dir_all(path.parent().expect("key has a parent"))?;
        std::fs::write(&path, &bytes)?;
        manifests.push(BlobManifest {
            key,
            content_hash: hex::encode(Sha256::digest(&bytes)),
            size_bytes: 256,
            mime_type: None,
        });
    }
    let mover = Arc::new(BlobMover::new(source, destination));
    let started = Instant::now();
    let tasks: Vec<_> = manifests
        .into_iter()
        .map(|m| {
            let mover = Arc::clone(&mover);
            tokio::spawn(async move { mover.push(&m).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label}: {small} blobs of 256 bytes in {secs:.2} s = {:.0} blobs/s (8 at a time)",
        small as f64 / secs
    );
    Ok(())
}
