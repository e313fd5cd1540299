#![doc = include_str!("../README.md")]

mod auth;
mod client;
mod encoding;
mod error;
mod keys;
mod metrics;
mod serve;
mod server;
mod store;

pub use auth::{
    system_clock, Auth, Scope, WallClock, APP_ID_HEADER, APP_SIG_HEADER, APP_TS_HEADER,
};
pub use client::{HttpClient, HttpClientBuilder, HttpTransport};
pub use error::{BoxError, Error};
pub use metrics::ServerMetrics;
pub use serve::{serve, serve_with, ServeConfig};
pub use server::{
    ObjectBody, ResponderProvider, ResponseBody, ServerConfig, SyncService, SyncServiceBuilder,
};
pub use store::HttpObjectStore;
