use sync_hlc::{Hlc, SkewRefusal};

/// A boxed backend error, kept as the source of a port error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A storage port failed. A failed read is always an error, never an empty result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Worth retrying later: busy, locked, connection lost, serialization conflict.
    #[error("storage temporarily unavailable: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// The backend error.
        #[source]
        source: Option<BoxError>,
    },
    /// Will not go away by retrying.
    #[error("storage failure: {message}")]
    Fatal {
        /// What happened.
        message: String,
        /// The backend error.
        #[source]
        source: Option<BoxError>,
    },
    /// The item itself is unacceptable (missing key, unknown table, ...).
    #[error("item refused: {0}")]
    Invalid(String),
    /// The database was written by a newer version of this software.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); \
         upgrade starkeep-sync or open a copy made by this version"
    )]
    NewerSchema {
        /// Schema version found in the database.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
}

impl StoreError {
    /// A transient error with a message and no source.
    pub fn transient(message: impl Into<String>) -> Self {
        StoreError::Transient {
            message: message.into(),
            source: None,
        }
    }

    /// A fatal error with a message and no source.
    pub fn fatal(message: impl Into<String>) -> Self {
        StoreError::Fatal {
            message: message.into(),
            source: None,
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
}

/// A blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The source does not have the blob.
    #[error("blob {key} not found")]
    NotFound {
        /// Object key.
        key: String,
    },
    /// The bytes do not hash to the content hash; nothing was stored.
    #[error("blob {key} does not match its content hash (expected {expected}, got {actual})")]
    HashMismatch {
        /// Object key.
        key: String,
        /// The manifest's hash.
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// The key is not acceptable (traversal, empty segment, outside the channel).
    #[error("blob key {key:?} refused: {reason}")]
    InvalidKey {
        /// Object key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Retry next round.
    #[error("blob {key}: transient failure: {message}")]
    Transient {
        /// Object key.
        key: String,
        /// What happened.
        message: String,
        /// The backend error.
        #[source]
        source: Option<BoxError>,
    },
    /// Will not go away by retrying.
    #[error("blob {key}: {message}")]
    Fatal {
        /// Object key.
        key: String,
        /// What happened.
        message: String,
        /// The backend error.
        #[source]
        source: Option<BoxError>,
    },
}

/// An exchange could not be carried out (transport or responder failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The responder refused the request as malformed or outside its channel (HTTP 4xx).
    #[error("request refused: {0}")]
    BadRequest(String),
    /// Missing or bad credentials, or outside the caller's scope (HTTP 401/403).
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The responder refused the request as a whole, for a reason with a stable code
    /// (`sync_protocol::error_code`: a channel violation, a channel not configured; HTTP 400).
    #[error("request refused: {message}")]
    Refused {
        /// The stable code.
        code: &'static str,
        /// Why, for a person.
        message: String,
    },
    /// The response does not follow the protocol (missing field, bad HLC, wrong channel).
    #[error("malformed response: {0}")]
    MalformedResponse(String),
    /// Worth retrying: connection failure, timeout, 5xx, a busy store.
    #[error("transient exchange failure: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// Will not go away by retrying.
    #[error("exchange failed: {message}")]
    Fatal {
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl ExchangeError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ExchangeError::Transient { .. })
    }
}

impl From<StoreError> for ExchangeError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            ExchangeError::Transient {
                message: e.to_string(),
                source: Some(Box::new(e)),
            }
        } else {
            ExchangeError::Fatal {
                message: e.to_string(),
                source: Some(Box::new(e)),
            }
        }
    }
}

/// The crate's error: a round that failed as a whole. Nothing was persisted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The exchange with the peer failed.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// Reading or writing the node's own state failed.
    #[error("sync state: {0}")]
    State(#[source] StoreError),
    /// The blobs that landed this round could not be made durable, so nothing that
    /// covers them was persisted (decision 0013).
    #[error("making this round's blobs durable failed: {0}")]
    BlobSync(#[source] BlobError),
    /// The channel is not usable on this node (e.g. the app is not registered).
    #[error("channel {channel} is not configured: {reason}")]
    Config {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
}

/// Why one item did not fully land (or ship) this round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemProblem {
    /// Its timestamp is too far in the future.
    #[error(transparent)]
    Skew(#[from] SkewRefusal),
    /// Its blob could not be transferred or verified.
    #[error("blob: {0}")]
    Blob(String),
    /// The store would not apply it.
    #[error("apply: {0}")]
    Apply(String),
    /// It is not acceptable on this channel (unknown app or table, missing key).
    #[error("refused: {0}")]
    Refused(String),
    /// An earlier item of the same origin node failed in the same round.
    #[error("held back behind an earlier failure of the same origin node at {0}")]
    HeldBack(Hlc),
}
