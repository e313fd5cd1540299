#![doc = include_str!("../README.md")]

mod codec;
mod error;
mod floors;
mod pack;
mod records;
mod rows;
mod state;
mod store;

pub use pack::PostgresBlobPack;
pub use store::{PostgresOptions, PostgresStore, QueryPlan};
