//! Column values to domain values and back.

use sqlx::{postgres::PgRow, Decode, Postgres, Row, Type};
use sync_core::StoreError;
use sync_hlc::Hlc;
use sync_protocol::{RowOp, RowValues};

use crate::error::corrupt;

/// Column `index` of `row`; a value that does not decode is an error.
pub(crate) fn col<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(index)
        .map_err(|e| corrupt(&format!("column {index}"), e))
}

/// A stored timestamp (string form).
pub(crate) fn parse_hlc(what: &str, s: &str) -> Result<Hlc, StoreError> {
    s.parse().map_err(|e| corrupt(what, e))
}

/// A stored optional timestamp.
pub(crate) fn parse_opt_hlc(what: &str, s: Option<String>) -> Result<Option<Hlc>, StoreError> {
    s.map(|s| parse_hlc(what, &s)).transpose()
}

/// The stored name of a row operation.
pub(crate) fn op_name(op: RowOp) -> &'static str {
    match op {
        RowOp::Insert => "insert",
        RowOp::Update => "update",
        RowOp::Delete => "delete",
    }
}

/// A row operation from its stored name.
pub(crate) fn parse_op(s: &str) -> Result<RowOp, StoreError> {
    match s {
        "insert" => Ok(RowOp::Insert),
        "update" => Ok(RowOp::Update),
        "delete" => Ok(RowOp::Delete),
        other => Err(corrupt("row operation", format!("{other:?}"))),
    }
}

/// Column values as stored JSON.
pub(crate) fn values_json(values: Option<&RowValues>) -> Result<Option<String>, StoreError> {
    values
        .map(|v| {
            serde_json::to_string(v)
                .map_err(|e| StoreError::Invalid(format!("row values do not encode: {e}")))
        })
        .transpose()
}

/// Column values from stored JSON.
pub(crate) fn parse_values(what: &str, s: Option<String>) -> Result<Option<RowValues>, StoreError> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what, e)))
        .transpose()
}
