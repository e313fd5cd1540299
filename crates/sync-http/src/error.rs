//! The crate's error type.

/// A boxed error, kept as the source of this crate's errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in the HTTP adapter, on the client or the server side.
///
/// The transport reports through [`sync_core::ExchangeError`] and the blob client through
/// [`object_store::Error`], as their traits require; this type is what they carry as the
/// source, and what the builders and [`serve`](crate::serve) return. hyper's own errors are
/// kept as boxed sources, never exposed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The base URL cannot be used.
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A configuration value is not acceptable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The peer answered with a non-success status. The message reads
    /// `... returned status code: 503 Service Unavailable: ...`, the wording object_store's
    /// own HTTP stores use, so callers that classify by message treat both alike.
    #[error("{method} {path} returned status code: {status} {body}")]
    Status {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The HTTP status code.
        status: u16,
        /// The response body (truncated), usually a JSON `{"error": ...}`.
        body: String,
    },
    /// The peer did not answer in time.
    #[error("{method} {path} timed out after {millis} ms")]
    Timeout {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The timeout in force.
        millis: u128,
    },
    /// The connection failed (refused, reset, closed mid-body).
    #[error("{method} {path}: connection failed: {message}")]
    Connection {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The peer's answer does not follow the protocol.
    #[error("{method} {path}: malformed response: {message}")]
    MalformedResponse {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A local operation was refused because the client cannot carry it out.
    #[error("not supported by the HTTP blob client: {0}")]
    Unsupported(String),
    /// Socket I/O of the server failed.
    #[error("server I/O failed: {message}")]
    Io {
        /// What was being done.
        message: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying later may succeed (timeouts, connection failures, 5xx, 408, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Connection { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}
