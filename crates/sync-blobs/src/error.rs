//! The crate's own error (opening a store) and the mapping of object_store errors onto
//! [`BlobError`]'s semantic variants.

use std::{error::Error as StdError, io, path::PathBuf};

use object_store::client::{HttpError, HttpErrorKind};
use sync_core::{BlobError, BoxError};

/// A blob store could not be opened or configured.
///
/// Blob operations themselves report [`sync_core::BlobError`], the port's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is incomplete or refused by the backend.
    #[error("blob store configuration: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
        /// The backend error.
        #[source]
        source: Option<BoxError>,
    },
    /// A local directory could not be created or opened.
    #[error("blob directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn config(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Error::Config {
            message: message.into(),
            source,
        }
    }
}

/// Maps a backend error of operation `what` on `key` onto the port's error.
///
/// Not found stays not found. Connection failures, timeouts, throttling, 5xx answers and a
/// full disk are transient (the next round retries); everything else (permissions,
/// credentials, unsupported operations, invalid paths) is fatal.
pub(crate) fn classify(key: &str, what: &str, e: object_store::Error) -> BlobError {
    let message = format!("{what}: {e}");
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound {
            key: key.to_string(),
        },
        // Another writer stored the key concurrently: the next attempt short-circuits.
        object_store::Error::AlreadyExists { .. } => transient(key, message, e),
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            if is_transient(&e) =>
        {
            transient(key, message, e)
        }
        _ => BlobError::Fatal {
            key: key.to_string(),
            message,
            source: Some(Box::new(e)),
        },
    }
}

/// A failed batch operation of a blob pack, for one of its keys: transient when the
/// database said so (busy, locked), fatal otherwise.
pub(crate) fn pack_failure(key: &str, what: &str, e: &sync_core::StoreError) -> BlobError {
    let key = key.to_string();
    let message = format!("{what}: {e}");
    match e {
        sync_core::StoreError::Transient { .. } => BlobError::Transient {
            key,
            message,
            source: None,
        },
        _ => BlobError::Fatal {
            key,
            message,
            source: None,
        },
    }
}

fn transient(key: &str, message: String, e: object_store::Error) -> BlobError {
    BlobError::Transient {
        key: key.to_string(),
        message,
        source: Some(Box::new(e)),
    }
}

/// Whether anything in the error's source chain says "try again later".
fn is_transient(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if transient_io(io.kind()) {
                return true;
            }
        }
        // A blob pack's database was busy or locked (decision 0014).
        if let Some(sync_core::StoreError::Transient { .. }) = e.downcast_ref() {
            return true;
        }
        if let Some(http) = e.downcast_ref::<HttpError>() {
            if matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            ) {
                return true;
            }
        }
        if transient_status_text(&e.to_string()) {
            return true;
        }
        next = e.source();
    }
    false
}

fn transient_io(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | AddrNotAvailable
            | BrokenPipe
            | TimedOut
            | Interrupted
            | UnexpectedEof
            | WouldBlock
            | StorageFull
            | ResourceBusy
            | QuotaExceeded
    )
}

/// object_store keeps the HTTP status of a failed request in an error type it does not
/// export (`RetryError`), so the status is read from its message: "Server returned non-2xx
/// status code: 503 Service Unavailable", or an S3 error body naming a retryable code.
fn transient_status_text(text: &str) -> bool {
    if let Some((_, rest)) = text.split_once("status code: ") {
        let code: String = rest.chars().take(3).collect();
        if code.starts_with('5') || code == "429" || code == "408" {
            return true;
        }
    }
    [
        "<Code>SlowDown</Code>",
        "<Code>InternalError</Code>",
        "<Code>ServiceUnavailable</Code>",
    ]
    .iter()
    .any(|c| text.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: BoxError) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source,
        }
    }

    #[test]
    fn not_found_stays_not_found() {
        let e = object_store::Error::NotFound {
            path: "k".into(),
            source: "gone".into(),
        };
        assert!(matches!(classify("k", "get", e), BlobError::NotFound { key } if key == "k"));
    }

    #[test]
    fn connection_and_timeouts_are_transient() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let wrapped = HttpError::new(HttpErrorKind::Connect, io::Error::other("dns"));
        let timeout = HttpError::new(HttpErrorKind::Timeout, io::Error::other("slow"));
        for source in [
            Box::new(refused) as BoxError,
            Box::new(wrapped),
            Box::new(timeout),
            Box::new(io::Error::new(io::ErrorKind::StorageFull, "disk full")),
            "Server returned non-2xx status code: 503 Service Unavailable: ".into(),
            "Server returned non-2xx status code: 429 Too Many Requests: ".into(),
            "Server returned error response: <Error><Code>SlowDown</Code></Error>".into(),
        ] {
            let text = source.to_string();
            assert!(
                matches!(
                    classify("k", "get", generic(source)),
                    BlobError::Transient { .. }
                ),
                "{text} should be transient"
            );
        }
    }

    #[test]
    fn everything_else_is_fatal() {
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "no".into(),
        };
        let unsupported = object_store::Error::NotImplemented {
            operation: "put".into(),
            implementer: "test".into(),
        };
        for e in [
            denied,
            unsupported,
            generic("Server returned non-2xx status code: 400 Bad Request: ".into()),
            generic(Box::new(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "ro",
            ))),
            generic(Box::new(HttpError::new(
                HttpErrorKind::Decode,
                io::Error::other("garbled"),
            ))),
        ] {
            let text = e.to_string();
            let mapped = classify("k", "put", e);
            assert!(
                matches!(mapped, BlobError::Fatal { .. }),
                "{text} should be fatal"
            );
            assert!(StdError::source(&mapped).is_some(), "the cause is kept");
        }
    }
}
