/// Why a node id, a timestamp or a watermark was refused at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node id that is empty, longer than 64 bytes, or holds a character outside
    /// `[A-Za-z0-9._-]`.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId {
        /// The offending id (truncated to 80 characters).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A wall time past the 48-bit range the string form can order.
    #[error("wall time {0} is beyond the supported range (at most 2^48 - 1 ms)")]
    WallTimeOutOfRange(u64),
    /// A counter past 0xFFFF.
    #[error("counter {0} is beyond the supported range (at most 65535)")]
    CounterOutOfRange(u64),
    /// The string form is not `<12 hex>:<4 hex>:<node id>`.
    #[error("malformed HLC string {input:?}: {reason}")]
    MalformedString {
        /// The offending input (truncated to 80 characters).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A watermark whose map key names a different node than its timestamp.
    #[error("watermark key {key:?} differs from its timestamp's node id {node_id:?}")]
    WatermarkKeyMismatch {
        /// The map key.
        key: String,
        /// The node id inside the timestamp.
        node_id: String,
    },
}

pub(crate) fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}
