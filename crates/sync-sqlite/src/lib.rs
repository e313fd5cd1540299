#![doc = include_str!("../README.md")]

mod batch;
mod codec;
mod error;
mod floors;
mod pack;
mod records;
mod rows;
mod state;
mod store;

pub use pack::SqliteBlobPack;
pub use store::{QueryPlan, SqliteOptions, SqliteStore};
