#![doc = include_str!("../README.md")]

mod codec;
mod error;
mod floors;
mod records;
mod rows;
mod state;
mod store;

pub use store::{PostgresOptions, PostgresStore, QueryPlan};
