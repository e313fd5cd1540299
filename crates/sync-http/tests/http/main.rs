//! sync-http over real loopback HTTP: rounds, every status code, blobs, TypeScript
//! compatibility, graceful shutdown, and a property test of the service.

mod blobs;
mod common;
mod compression;
mod fuzz;
mod fuzz_service;
mod hostile;
mod metrics;
mod rounds;
mod shutdown;
mod statuses;
mod ts_compat;
