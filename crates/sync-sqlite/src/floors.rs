//! Coverage floors (`coverage_floors`, decision 0008): per stream and origin node, the
//! highest version of that node that a newer version of the same item replaced. They keep
//! coverage monotone: it does not go down when another node's write replaces an origin's
//! newest version.

use std::collections::BTreeMap;

use sqlx::SqliteConnection;
use sync_core::StoreError;
use sync_hlc::{Hlc, Watermarks};

use crate::{codec::parse_hlc, error::db_error};

/// The stream key of the shared records: no registered app id is empty.
pub(crate) const RECORDS: (&str, &str) = ("", "");

/// Raises one floor; it never goes down.
const RAISE: &str = "\
INSERT INTO coverage_floors (app_id, table_name, node_id, hlc) VALUES (?1, ?2, ?3, ?4) \
ON CONFLICT (app_id, table_name, node_id) DO UPDATE SET hlc = excluded.hlc \
WHERE excluded.hlc > coverage_floors.hlc";

/// The floors a batch raises, per stream `(app_id, table_name)`, collected while it applies
/// and written once per (stream, origin node) before it commits.
#[derive(Debug, Default)]
pub(crate) struct Raised(BTreeMap<(String, String), Watermarks>);

impl Raised {
    /// Notes that `replaced` (the stored version, in its string form) of an item of
    /// `stream` was replaced by a newer version.
    pub(crate) fn note(&mut self, stream: (&str, &str), replaced: &str) -> Result<(), StoreError> {
        let replaced: Hlc = parse_hlc("replaced version", replaced)?;
        self.0
            .entry((stream.0.to_string(), stream.1.to_string()))
            .or_default()
            .advance(&replaced);
        Ok(())
    }

    /// Writes the floors inside the batch's transaction.
    pub(crate) async fn write(
        self,
        conn: &mut SqliteConnection,
        doing: &str,
    ) -> Result<(), StoreError> {
        for ((app_id, table), floors) in self.0 {
            for (node, hlc) in floors.iter() {
                sqlx::query(RAISE)
                    .bind(&app_id)
                    .bind(&table)
                    .bind(node.as_str())
                    .bind(hlc.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| db_error(doing, e))?;
            }
        }
        Ok(())
    }
}
