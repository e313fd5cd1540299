use serde_json::Value;
use sync_hlc::Hlc;

use crate::RowValues;

/// The reserved, file-backed table every app has: its rows carry a blob.
pub const RESERVED_TABLE: &str = "_starkeep_sync_records";

/// A typed view of a row of [`RESERVED_TABLE`]. Timestamps in its columns use the HLC string
/// form (`%012x:%04x:<nodeId>`), as the TypeScript reference writes them.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRecordRow {
    /// Row id (the primary key).
    pub id: String,
    /// Where the blob lives; empty for none.
    pub object_storage_key: String,
    /// Hash of the blob.
    pub content_hash: String,
    /// MIME type of the blob.
    pub mime_type: Option<String>,
    /// Size of the blob in bytes.
    pub size_bytes: u64,
    /// The file name it was imported from.
    pub original_filename: Option<String>,
    /// The app that created it.
    pub origin_app_id: String,
    /// When it was created.
    pub created_at: Hlc,
    /// When it was last written.
    pub updated_at: Hlc,
    /// When it was soft-deleted.
    pub deleted_at: Option<Hlc>,
}

/// A reserved-table row whose columns are missing or of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {table} row: column `{column}` {problem}", table = RESERVED_TABLE)]
pub struct FileRowError {
    /// The offending column.
    pub column: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl FileRecordRow {
    /// Reads the typed view out of a row's column values.
    pub fn from_row(row: &RowValues) -> Result<Self, FileRowError> {
        let text = |column: &'static str| -> Result<Option<String>, FileRowError> {
            match row.get(column) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(FileRowError {
                    column,
                    problem: format!("must be a string, got {other}"),
                }),
            }
        };
        let required = |column: &'static str| -> Result<String, FileRowError> {
            text(column)?.ok_or(FileRowError {
                column,
                problem: "is missing".into(),
            })
        };
        let hlc = |column: &'static str| -> Result<Option<Hlc>, FileRowError> {
            text(column)?
                .map(|s| {
                    s.parse::<Hlc>().map_err(|e| FileRowError {
                        column,
                        problem: e.to_string(),
                    })
                })
                .transpose()
        };
        let size_bytes = match row.get("size_bytes") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| FileRowError {
                column: "size_bytes",
                problem: format!("must be a non-negative integer, got {n}"),
            })?,
            Some(Value::String(s)) => s.parse().map_err(|_| FileRowError {
                column: "size_bytes",
                problem: format!("must be a non-negative integer, got {s:?}"),
            })?,
            Some(other) => {
                return Err(FileRowError {
                    column: "size_bytes",
                    problem: format!("must be a number, got {other}"),
                })
            }
        };
        let missing = |column| FileRowError {
            column,
            problem: "is missing".into(),
        };
        Ok(Self {
            id: required("id")?,
            object_storage_key: text("object_storage_key")?.unwrap_or_default(),
            content_hash: text("content_hash")?.unwrap_or_default(),
            mime_type: text("mime_type")?,
            size_bytes,
            original_filename: text("original_filename")?,
            origin_app_id: text("origin_app_id")?.unwrap_or_default(),
            created_at: hlc("created_at")?.ok_or_else(|| missing("created_at"))?,
            updated_at: hlc("updated_at")?.ok_or_else(|| missing("updated_at"))?,
            deleted_at: hlc("deleted_at")?,
        })
    }

    /// The row's column values, in the reference's column order.
    pub fn to_row(&self) -> RowValues {
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let mut row = RowValues::new();
        row.insert("id".into(), Value::String(self.id.clone()));
        row.insert(
            "object_storage_key".into(),
            Value::String(self.object_storage_key.clone()),
        );
        row.insert(
            "content_hash".into(),
            Value::String(self.content_hash.clone()),
        );
        row.insert("mime_type".into(), opt(&self.mime_type));
        row.insert("size_bytes".into(), Value::from(self.size_bytes));
        row.insert("original_filename".into(), opt(&self.original_filename));
        row.insert(
            "origin_app_id".into(),
            Value::String(self.origin_app_id.clone()),
        );
        row.insert(
            "created_at".into(),
            Value::String(self.created_at.to_string()),
        );
        row.insert(
            "updated_at".into(),
            Value::String(self.updated_at.to_string()),
        );
        row.insert(
            "deleted_at".into(),
            self.deleted_at
                .as_ref()
                .map_or(Value::Null, |h| Value::String(h.to_string())),
        );
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_hlc::NodeId;

    #[test]
    fn round_trips_and_names_bad_columns() {
        let at = Hlc::new(1000, 1, NodeId::new("dev").unwrap()).unwrap();
        let row = FileRecordRow {
            id: "p1".into(),
            object_storage_key: "apps/photos/syncable/p1".into(),
            content_hash: "sha256:abc".into(),
            mime_type: Some("image/png".into()),
            size_bytes: 3,
            original_filename: None,
            origin_app_id: "photos".into(),
            created_at: at.clone(),
            updated_at: at,
            deleted_at: None,
        };
        assert_eq!(FileRecordRow::from_row(&row.to_row()).unwrap(), row);
        let mut bad = row.to_row();
        bad.insert("size_bytes".into(), Value::from(-3));
        assert_eq!(
            FileRecordRow::from_row(&bad).unwrap_err().column,
            "size_bytes"
        );
        let mut bad = row.to_row();
        bad.insert("updated_at".into(), Value::from("yesterday"));
        assert_eq!(
            FileRecordRow::from_row(&bad).unwrap_err().column,
            "updated_at"
        );
    }
}
