//! The blob conformance suite against every backend: object_store's in-memory store, a local
//! directory, and the S3-compatible server `cargo xtask test` starts (skipped with a loud
//! message when it is not running, failing under `CI=true`).

mod memory {
    sync_blobs::blob_conformance!(Some(sync_blobs::testing::Backend::memory()));
}

mod filesystem {
    sync_blobs::blob_conformance!(Some(sync_blobs::testing::Backend::filesystem()));
}

mod s3 {
    sync_blobs::blob_conformance!(sync_blobs::testing::Backend::s3_from_env());
}
