use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync_protocol::{AppRow, RESERVED_TABLE};

use crate::channel::valid_app_id;

/// One table of an app: its name and primary-key columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableSpec {
    /// Table name.
    pub name: String,
    /// Primary-key columns, in key order (at least one).
    pub pk_columns: Vec<String>,
}

impl TableSpec {
    /// A table with the given primary-key columns.
    pub fn new(name: impl Into<String>, pk_columns: &[&str]) -> Self {
        Self {
            name: name.into(),
            pk_columns: pk_columns.iter().map(|c| c.to_string()).collect(),
        }
    }
}

/// A registered app namespace: which tables of which app sync, and whether its reserved
/// table moves blobs.
///
/// Every namespace has the reserved, file-backed table `_starkeep_sync_records` (primary key
/// `id`) in addition to the tables it lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppNamespace {
    /// The app id.
    pub app_id: String,
    /// Its tables (the reserved table is implied and need not be listed).
    pub tables: Vec<TableSpec>,
    /// Whether rows of the reserved table carry blobs. When false they travel as metadata
    /// only.
    #[serde(default = "default_true")]
    pub files_enabled: bool,
}

fn default_true() -> bool {
    true
}

/// A namespace that cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid app namespace {app_id:?}: {reason}")]
pub struct NamespaceError {
    /// The app id.
    pub app_id: String,
    /// What is wrong.
    pub reason: String,
}

/// Why an app row has no usable primary key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "row of {app}.{table} does not name its primary key column `{column}` (in `row` or `where`)"
)]
pub struct MissingKey {
    /// App id.
    pub app: String,
    /// Table.
    pub table: String,
    /// The missing column.
    pub column: String,
}

impl AppNamespace {
    /// A namespace with files enabled; the reserved table is added automatically.
    pub fn new(app_id: impl Into<String>, tables: Vec<TableSpec>) -> Self {
        let mut ns = Self {
            app_id: app_id.into(),
            tables,
            files_enabled: true,
        };
        ns.ensure_reserved_table();
        ns
    }

    /// Sets whether the reserved table moves blobs.
    pub fn with_files_enabled(mut self, enabled: bool) -> Self {
        self.files_enabled = enabled;
        self
    }

    fn ensure_reserved_table(&mut self) {
        if !self.tables.iter().any(|t| t.name == RESERVED_TABLE) {
            self.tables.push(TableSpec::new(RESERVED_TABLE, &["id"]));
        }
    }

    /// Checks the namespace and adds the reserved table if it is missing.
    pub fn validated(mut self) -> Result<Self, NamespaceError> {
        let fail = |reason: String| NamespaceError {
            app_id: self.app_id.clone(),
            reason,
        };
        if !valid_app_id(&self.app_id) {
            return Err(fail(
                "an app id is 1..=64 ASCII letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.tables {
            if t.name.is_empty() || t.name.len() > 128 || t.name.chars().any(char::is_control) {
                return Err(fail(format!("table name {:?} is not usable", t.name)));
            }
            if !names.insert(t.name.as_str()) {
                return Err(fail(format!("table {:?} is listed twice", t.name)));
            }
            if t.pk_columns.is_empty() {
                return Err(fail(format!(
                    "table {:?} needs at least one primary-key column",
                    t.name
                )));
            }
            if t.name == RESERVED_TABLE && t.pk_columns != ["id"] {
                return Err(fail(format!("{RESERVED_TABLE} has the primary key (id)")));
            }
        }
        self.ensure_reserved_table();
        Ok(self)
    }

    /// The spec of `table`, if registered.
    pub fn table(&self, table: &str) -> Option<&TableSpec> {
        self.tables.iter().find(|t| t.name == table)
    }

    /// Table names in a stable (sorted) order.
    pub fn table_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names
    }
}

/// The canonical primary key of an app row: the JSON array of its key column values, read
/// from `row`, else from `where`. A row that does not name every key column is refused: a
/// delete without a key would otherwise hit the wrong rows.
pub fn row_key(spec: &TableSpec, row: &AppRow) -> Result<String, MissingKey> {
    let mut values = Vec::with_capacity(spec.pk_columns.len());
    for column in &spec.pk_columns {
        let value = row
            .row
            .as_ref()
            .and_then(|r| r.get(column))
            .filter(|v| !v.is_null())
            .or_else(|| {
                row.where_
                    .as_ref()
                    .and_then(|w| w.get(column))
                    .filter(|v| !v.is_null())
            })
            .ok_or_else(|| MissingKey {
                app: row.app_id.clone(),
                table: row.table.clone(),
                column: column.clone(),
            })?;
        values.push(value.clone());
    }
    Ok(Value::Array(values).to_string())
}
