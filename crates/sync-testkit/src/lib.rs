//! Dev-only test kit of the Starkeep sync engine (`publish = false`).
//!
//! - [`memory`]: in-memory implementations of every port of `sync-core`, with fault
//!   injection (blob put/get failures per key, apply, scan and coverage-read failures,
//!   transport failures before and after send, wipes and resets).
//! - [`conformance`]: one suite per port, run unchanged against every implementation.
//! - [`harness`]: a local node and a responder wired together, for scenario tests, on the
//!   [`backend`] `STARKEEP_TEST_BACKEND` names (memory, SQLite or PostgreSQL) behind the
//!   fault-injecting wrappers of [`faulty`].
//! - [`sim`]: the seeded deterministic simulator that checks the invariants.
//! - [`proxy`]: a fault-injecting TCP proxy on 127.0.0.1 (delays, drops, truncates, resets
//!   and stalls connections by a seeded schedule) for end-to-end tests over real HTTP.

pub mod backend;
pub mod conformance;
pub mod faulty;
pub mod harness;
pub mod memory;
pub mod proxy;
pub mod sim;
