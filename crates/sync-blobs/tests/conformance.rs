//! The blob conformance suite against every backend: object_store's in-memory store, a local
//! directory, and the S3-compatible server `cargo xtask test` starts (skipped with a loud
//! message when it is not running, failing under `CI=true`); and the last two again with a
//! pack of small blobs in front (decision 0014).

mod memory {
    sync_blobs::blob_conformance!(Some(sync_blobs::testing::Backend::memory()));
}

mod filesystem {
    sync_blobs::blob_conformance!(Some(sync_blobs::testing::Backend::filesystem()));
}

mod s3 {
    sync_blobs::blob_conformance!(sync_blobs::testing::Backend::s3_from_env());
}

mod packed_filesystem {
    sync_blobs::blob_conformance!(Some(sync_blobs::testing::Backend::filesystem().with_pack(
        "packed-filesystem",
        std::sync::Arc::new(sync_blobs::MemoryPack::new()),
        sync_blobs::DEFAULT_PACK_LIMIT
    )));
}

mod packed_s3 {
    sync_blobs::blob_conformance!(sync_blobs::testing::Backend::s3_from_env().map(|b| b
        .with_pack(
            "packed-s3",
            std::sync::Arc::new(sync_blobs::MemoryPack::new()),
            sync_blobs::DEFAULT_PACK_LIMIT
        )));
}
