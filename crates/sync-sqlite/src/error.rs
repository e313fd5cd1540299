//! Mapping sqlx errors onto the port error: busy and locked are worth retrying, the rest is
//! not. The sqlx error is kept as the source and never appears in a public signature.

use std::fmt::Display;

use sync_core::StoreError;

/// `SQLITE_BUSY`: another connection holds the lock (after the busy timeout ran out).
const SQLITE_BUSY: i32 = 5;
/// `SQLITE_LOCKED`: a conflict inside this process (shared cache, open statement).
const SQLITE_LOCKED: i32 = 6;

/// Whether an sqlx error is worth retrying.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        // sqlx reports the extended result code; its low byte is the primary code.
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        _ => false,
    }
}

/// A port error for a failed database operation, with what was being done.
pub(crate) fn db_error(doing: &str, e: sqlx::Error) -> StoreError {
    let message = format!("{doing}: {e}");
    if is_transient(&e) {
        StoreError::Transient {
            message,
            source: Some(Box::new(e)),
        }
    } else {
        StoreError::Fatal {
            message,
            source: Some(Box::new(e)),
        }
    }
}

/// A port error for a stored value that does not decode: the database was changed behind
/// our back. Never read as "absent".
pub(crate) fn corrupt(what: &str, detail: impl Display) -> StoreError {
    StoreError::fatal(format!("unreadable {what} in the database: {detail}"))
}

/// A value the schema cannot hold (SQLite integers are signed 64-bit).
pub(crate) fn to_i64(field: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::Invalid(format!(
            "{field} {value} is larger than the store can hold (at most {})",
            i64::MAX
        ))
    })
}

/// A stored integer that must be non-negative.
pub(crate) fn to_u64(field: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(field, format!("negative value {value}")))
}
