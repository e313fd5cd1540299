#![doc = include_str!("../README.md")]

mod engine;
mod metrics;
mod notifier;
mod retry;
mod supervisor;
mod time;

pub use engine::{Engine, EngineBuilder, EngineStatus, Error, OriginLag, RecordDraft};
pub use metrics::{
    ChannelMetrics, FailingItem, MetricsSnapshot, NodeMetrics, PeerHalt, SkewNote,
    MAX_FAILING_ITEMS,
};
pub use notifier::{ChangeEvent, Notifier, Subscription};
pub use retry::RetryPolicy;
pub use supervisor::{Supervisor, SupervisorConfig};
pub use time::SystemClock;

pub use sync_core as core;
pub use sync_core::{
    AppNamespace, Channel, ItemKey, Residency, RoundReport, SyncSummary, TableSpec,
};
pub use sync_hlc as hlc;
pub use sync_protocol as protocol;
