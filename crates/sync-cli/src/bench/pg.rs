//! Issue 3's storage figures on PostgreSQL: a node store and a server store, each in a fresh
//! schema of the database named by `--postgres-url`, seeded in bulk with the same records the
//! SQLite datasets hold and left in sync.
//!
//! Seeding is untimed and uses `COPY` (one statement streaming every row) instead of the
//! store's `apply`, which writes one statement per record; the rows are the ones
//! [`data::record`] builds, in the stores' own column encoding, and a few are read back
//! through the store and compared with the originals. The node's copy is an
//! `INSERT ... SELECT` of the server's table. Both tables are then vacuumed and analysed:
//! autovacuum does the same to a table that grew by more than 10-20 % within about a minute
//! (PostgreSQL 13 and later count inserts for both), so this is the steady state of a
//! server that holds the data, not a special tuning.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use sqlx::{postgres::PgConnection, Connection};
use sync_engine::{
    core::{ChannelState, RecordStore, SyncStateStore},
    Channel,
};
use sync_postgres::{PostgresOptions, PostgresStore};

use super::data::{self, RawRow, RawValue, Versions, PAGE};

/// The columns of `shared_records` in the order [`RawRow::record`] lists them.
const RECORD_COLUMNS: &str = "id, kind, record_type, created_at, hlc, node_id, deleted_at, \
    version, content_hash, object_storage_key, mime_type, size_bytes, original_filename, \
    origin_app_id, parent_id, label";

/// A node store and a server store in sync, each in its own schema (dropped by
/// [`InSyncPair::drop_schemas`]).
pub struct InSyncPair {
    /// The node's records and sync state.
    pub node: PostgresStore,
    /// The server's records.
    pub server: PostgresStore,
    url: String,
    schemas: [String; 2],
}

impl InSyncPair {
    /// Fresh schemas `{prefix}_node` and `{prefix}_server` holding records `0..n` of
    /// `versions`, the node's Drive state saying it is in sync (own and peer watermarks at
    /// the coverage).
    pub async fn seed(url: &str, prefix: &str, versions: &Versions, n: usize) -> Result<Self> {
        let schemas = [format!("{prefix}_node"), format!("{prefix}_server")];
        let mut admin = PgConnection::connect(url)
            .await
            .context("connecting to the benchmark's PostgreSQL (--postgres-url)")?;
        for schema in &schemas {
            // The names are ours (letters, digits and '_'): safe to splice.
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut admin)
                .await?;
        }
        let node = open(url, &schemas[0]).await?;
        let server = open(url, &schemas[1]).await?;
        let (node_schema, server_schema) = (&schemas[0], &schemas[1]);

        let mut copy = admin
            .copy_in_raw(&format!(
                "COPY {server_schema}.shared_records ({RECORD_COLUMNS}) FROM STDIN"
            ))
            .await?;
        let mut buffer = String::new();
        for start in (0..n).step_by(PAGE * 10) {
            buffer.clear();
            for i in start..(start + PAGE * 10).min(n) {
                copy_line(
                    &RawRow::record(&data::record(versions, i, None)),
                    &mut buffer,
                );
            }
            copy.send(buffer.as_bytes()).await?;
        }
        let copied = copy.finish().await?;
        ensure!(copied == n as u64, "COPY wrote {copied} of {n} records");
        sqlx::query(&format!(
            "INSERT INTO {node_schema}.shared_records ({RECORD_COLUMNS}) \
             SELECT {RECORD_COLUMNS} FROM {server_schema}.shared_records"
        ))
        .execute(&mut admin)
        .await?;
        for schema in &schemas {
            sqlx::query(&format!("VACUUM (ANALYZE) {schema}.shared_records"))
                .execute(&mut admin)
                .await?;
        }
        admin.close().await?;

        // The bulk rows are what the store itself would have written.
        for i in [0, n / 2, n.saturating_sub(1)] {
            let want = data::record(versions, i, None);
            for store in [&node, &server] {
                let got = RecordStore::get(store, &want.id).await?;
                ensure!(
                    got.as_ref() == Some(&want),
                    "record {i} read back from PostgreSQL differs: {got:?}"
                );
            }
        }
        let coverage = RecordStore::coverage(&node).await?;
        ensure!(
            coverage == RecordStore::coverage(&server).await?,
            "the node and the server cover different versions after seeding"
        );
        data::set_state(
            &node,
            &Channel::Drive,
            ChannelState {
                own: coverage.clone(),
                peer: coverage,
            },
        )
        .await?;
        Ok(Self {
            node,
            server,
            url: url.to_string(),
            schemas,
        })
    }

    /// The node's store as the ports a requester needs.
    pub fn node_ports(&self) -> (Arc<dyn RecordStore>, Arc<dyn SyncStateStore>) {
        (Arc::new(self.node.clone()), Arc::new(self.node.clone()))
    }

    /// Closes both stores and drops both schemas.
    pub async fn drop_schemas(self) -> Result<()> {
        self.node.close().await;
        self.server.close().await;
        let mut admin = PgConnection::connect(&self.url).await?;
        for schema in &self.schemas {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut admin)
                .await?;
        }
        admin.close().await?;
        Ok(())
    }
}

/// Asks the server to write back everything dirty now (`CHECKPOINT`), so that a bulk load's
/// write-back does not run during timed rounds. It needs a superuser (as the throwaway
/// server of `cargo xtask bench` has); without one the figures are taken anyway, with a
/// warning.
pub async fn checkpoint(url: &str) {
    let done = async {
        let mut admin = PgConnection::connect(url).await?;
        sqlx::query("CHECKPOINT").execute(&mut admin).await?;
        admin.close().await?;
        anyhow::Ok(())
    };
    if let Err(e) = done.await {
        eprintln!(
            "bench: warning: CHECKPOINT after seeding PostgreSQL failed ({e:#}); timing anyway"
        );
    }
}

/// A store in `schema` (created and migrated if new).
async fn open(url: &str, schema: &str) -> Result<PostgresStore> {
    PostgresStore::connect_with(url, &PostgresOptions::default().with_schema(schema))
        .await
        .with_context(|| format!("opening a PostgreSQL store in schema {schema}"))
}

/// One row in `COPY`'s text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_line(row: &RawRow, out: &mut String) {
    for (i, value) in row.0.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        match value {
            RawValue::Null => out.push_str("\\N"),
            RawValue::Int(v) => out.push_str(&v.to_string()),
            RawValue::Text(t) => {
                for c in t.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_escape_and_mark_nulls() {
        let mut out = String::new();
        copy_line(
            &RawRow(vec![
                RawValue::Text("a\tb\\c\nd".into()),
                RawValue::Int(-3),
                RawValue::Null,
            ]),
            &mut out,
        );
        assert_eq!(out, "a\\tb\\\\c\\nd\t-3\t\\N\n");
    }
}
