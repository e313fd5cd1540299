#![doc = include_str!("../README.md")]

mod clock;
mod error;
mod node;
mod timestamp;
mod watermarks;

pub use clock::{Clock, ClockConfig, ClockState, SkewRefusal, DEFAULT_MAX_DRIFT_MS};
pub use error::Error;
pub use node::{NodeId, MAX_NODE_ID_LEN};
pub use timestamp::{Hlc, MAX_COUNTER, MAX_WALL_TIME};
pub use watermarks::Watermarks;
