#![doc = include_str!("../README.md")]

mod error;
mod file_read;
mod gc;
mod key;
mod local_dir;
mod mover;
mod pack;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod transfer;

pub use error::Error;
pub use gc::{collect_garbage, residency, GcReport, STAGING_GRACE};
pub use key::{key_in_namespace, validate_key, MAX_KEY_BYTES};
pub use mover::{BlobMover, DEFAULT_MAX_TRANSFERS};
pub use pack::{MemoryPack, PackedStore, DEFAULT_PACK_LIMIT};
pub use store::{ObjectBlobs, S3Config, INLINE_LIMIT};
pub use transfer::{
    expected_sha256, object_chunks, read_inline, transfer, write_inline, MAX_PARTS_IN_FLIGHT,
    PART_SIZE,
};

/// The object_store version this crate is built on, for implementing or constructing stores
/// ([`ObjectBlobs::new`]) with the same trait.
pub use object_store;
