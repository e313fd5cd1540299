//! Mapping sqlx errors onto the port error: conflicts between concurrent transactions,
//! lost connections and an overloaded server are worth retrying, the rest is not. The sqlx
//! error is kept as the source and never appears in a public signature.

use std::fmt::Display;

use sync_core::StoreError;

/// Whether a SQLSTATE is worth retrying.
fn is_transient_state(state: &str) -> bool {
    matches!(
        state,
        // serialization_failure, deadlock_detected
        "40001" | "40P01"
        // lock_not_available, query_canceled (statement/lock timeout)
        | "55P03" | "57014"
        // admin_shutdown, crash_shutdown, cannot_connect_now
        | "57P01" | "57P02" | "57P03"
        // too_many_connections, insufficient_resources
        | "53300" | "53000"
    ) || state.starts_with("08") // connection_exception
}

/// Whether an sqlx error is worth retrying.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|state| is_transient_state(&state)),
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

/// A value the schema cannot hold (`BIGINT` is signed 64-bit).
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

#[cfg(test)]
mod tests {
    use super::is_transient_state;

    #[test]
    fn transient_states() {
        for s in [
            "40001", "40P01", "55P03", "57P01", "53300", "08006", "08001",
        ] {
            assert!(is_transient_state(s), "{s}");
        }
        for s in ["23505", "42P01", "22P02", "XX000"] {
            assert!(!is_transient_state(s), "{s}");
        }
    }
}
