//! Where a node or a server keeps its blobs: small ones packed in its database (SQLite, or
//! the PostgreSQL that scale-out servers share), larger ones as files in its blob directory
//! or objects in its bucket (decision 0014).

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use sync_blobs::{ObjectBlobs, S3Config};
use sync_postgres::PostgresStore;
use sync_sqlite::SqliteStore;

/// The largest blob packed in the database unless configured otherwise: the inline limit
/// of the exchange, so every blob that rides inside an exchange lands in one transaction.
pub const DEFAULT_PACK_LIMIT: u64 = sync_blobs::DEFAULT_PACK_LIMIT;

/// The blob storage of a node home or an embedded server's data directory: files under
/// `root`, with blobs of at most `pack_limit` bytes in `store`'s pack (0: every blob a
/// file, the layout before decision 0014). Blobs stored under another limit stay readable:
/// reads look in the pack, then in the files.
pub fn local(root: &Path, store: &SqliteStore, pack_limit: u64) -> Result<ObjectBlobs> {
    let files = ObjectBlobs::filesystem(root)?;
    Ok(if pack_limit == 0 {
        files
    } else {
        files.with_pack(Arc::new(store.blob_pack()), pack_limit)
    })
}

/// The blob storage of scale-out servers: objects in the S3 bucket of `config`, with blobs
/// of at most `pack_limit` bytes in the pack of the PostgreSQL database they share (0: every
/// blob an object).
pub fn scale_out(config: S3Config, store: &PostgresStore, pack_limit: u64) -> Result<ObjectBlobs> {
    let objects = ObjectBlobs::s3(config).context("opening the S3 bucket")?;
    Ok(if pack_limit == 0 {
        objects
    } else {
        objects.with_pack(Arc::new(store.blob_pack()), pack_limit)
    })
}
