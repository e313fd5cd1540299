#![doc = include_str!("../README.md")]

mod batch;
mod codec;
mod error;
mod floors;
mod records;
mod rows;
mod state;
mod store;

pub use store::{QueryPlan, SqliteOptions, SqliteStore};
