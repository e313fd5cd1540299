//! Last-write-wins over a whole batch with a handful of statements instead of two per item.
//!
//! Every statement is a round trip to sqlx's SQLite worker thread (two thread wake-ups), which
//! costs more than SQLite's own work for a small row. So a batch is applied in three steps,
//! all inside its write transaction (`BEGIN IMMEDIATE`, so nothing moves in between):
//! one statement reads the stored versions of every key of the batch, the outcomes are
//! decided here in batch order exactly as the per-item conditional upsert would decide them,
//! and only the versions that win are written, many rows per `INSERT` (still conditional, so
//! the statement itself can never store an older version).

use std::{collections::HashMap, hash::Hash, ops::Range};

use sync_core::{Applied, StoreError};

/// The outcome of each item of a batch, in batch order, and what to write.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per item, what last-write-wins does with it.
    pub outcomes: Vec<Applied>,
    /// The items to write, in batch order: per key, the last item that wins (earlier winners
    /// of the same key are replaced within the batch and never reach the table).
    pub writes: Vec<usize>,
    /// Per replaced version, the item that replaced it and the version (string form), for
    /// the coverage floors.
    pub replaced: Vec<(usize, String)>,
}

/// Decides a batch: `items` are `(key, version)` in batch order, `stored` the versions held
/// before the batch. An item wins when its key is absent or its version is higher (string
/// order is version order); an equal version is kept, a lower one superseded. Later items
/// see the winners before them, as sequential upserts would.
pub(crate) fn plan<K: Hash + Eq + Copy>(
    items: &[(K, &str)],
    mut stored: HashMap<K, String>,
) -> Plan {
    let mut out = Plan {
        outcomes: Vec::with_capacity(items.len()),
        ..Plan::default()
    };
    let mut last_win: HashMap<K, usize> = HashMap::with_capacity(items.len());
    for (i, (key, version)) in items.iter().enumerate() {
        match stored.get(key) {
            Some(current) if *version == current.as_str() => out.outcomes.push(Applied::Kept),
            Some(current) if *version < current.as_str() => out.outcomes.push(Applied::Superseded),
            current => {
                if let Some(current) = current {
                    out.replaced.push((i, current.clone()));
                }
                out.outcomes.push(Applied::Written);
                stored.insert(*key, (*version).to_string());
                last_win.insert(*key, i);
            }
        }
    }
    out.writes = last_win.into_values().collect();
    out.writes.sort_unstable();
    out
}

/// Splits `n` rows into statements of at most `max` rows (a power of two): full chunks,
/// then the rest in descending powers of two, so a table's upserts use few distinct SQL
/// texts and the prepared-statement cache keeps them all.
pub(crate) fn chunks(n: usize, max: usize) -> Vec<Range<usize>> {
    debug_assert!(max.is_power_of_two());
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = max;
    while start < n {
        while size > n - start {
            size /= 2;
        }
        out.push(start..start + size);
        start += size;
    }
    out
}

/// `head` followed by `rows` groups of `columns` placeholders and `tail`: a multi-row
/// `INSERT ... VALUES (?, ...), (?, ...) ...`.
pub(crate) fn values_sql(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let group = format!("({})", vec!["?"; columns].join(", "));
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * (group.len() + 2));
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&group);
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

/// A JSON array of strings, bound as one parameter and read back with `json_each`.
pub(crate) fn json_list<'a>(items: impl Iterator<Item = &'a str>) -> Result<String, StoreError> {
    serde_json::to_string(&items.collect::<Vec<_>>())
        .map_err(|e| StoreError::fatal(format!("cannot encode a key list: {e}")))
}

/// The error for a multi-row upsert that wrote a different number of rows than decided:
/// only possible if the table changed under the write lock.
pub(crate) fn unexpected_writes(doing: &str, expected: usize, written: u64) -> StoreError {
    StoreError::fatal(format!(
        "{doing}: expected to write {expected} rows, wrote {written}; the batch was rolled back"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_like_sequential_upserts() {
        let stored: HashMap<&str, String> = [("a", "05".to_string()), ("b", "05".to_string())]
            .into_iter()
            .collect();
        let items = [
            ("a", "07"), // newer: written, replaces 05
            ("b", "05"), // same: kept
            ("b", "03"), // older: superseded
            ("c", "01"), // new key: written
            ("a", "06"), // older than the 07 written just before: superseded
            ("c", "02"), // newer than the 01 of this batch: written, replaces 01
            ("c", "02"), // the same again: kept
        ];
        let p = plan(&items, stored);
        use Applied::*;
        assert_eq!(
            p.outcomes,
            vec![Written, Kept, Superseded, Written, Superseded, Written, Kept]
        );
        assert_eq!(p.writes, vec![0, 5], "only the last winner of each key");
        assert_eq!(p.replaced, vec![(0, "05".into()), (5, "01".into())]);
    }

    #[test]
    fn chunks_cover_everything_with_few_sizes() {
        let c = chunks(1000, 32);
        assert_eq!(c.first(), Some(&(0..32)));
        assert_eq!(c.last().map(|r| r.end), Some(1000));
        assert!(c.windows(2).all(|w| w[0].end == w[1].start));
        assert!(c.iter().all(|r| r.len().is_power_of_two() && r.len() <= 32));
        assert_eq!(c.len(), 31 + 1, "31 x 32 + 8");
        assert!(chunks(0, 32).is_empty());
        assert_eq!(chunks(7, 32), vec![0..4, 4..6, 6..7]);
    }

    /// The version reads of a batch probe the primary keys; they never scan a table.
    #[tokio::test]
    async fn version_reads_use_the_primary_keys() {
        use sqlx::Row;
        let store = crate::SqliteStore::open_in_memory().await.expect("open");
        for (sql, table) in [
            (crate::records::VERSIONS, "shared_records"),
            (crate::rows::VERSIONS, "app_rows"),
        ] {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain);
            if table == "app_rows" {
                query = query.bind("app").bind("table");
            }
            let plan: Vec<String> = query
                .bind(r#"["a", "b"]"#)
                .fetch_all(&store.pool)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect();
            assert!(
                plan.iter()
                    .any(|s| s.starts_with(&format!("SEARCH {table} USING"))
                        && s.contains("INDEX sqlite_autoindex")),
                "{table}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|s| s.starts_with(&format!("SCAN {table}"))),
                "{table}: {plan:?}"
            );
        }
    }

    #[test]
    fn multi_row_values() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 2, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ON CONFLICT DO NOTHING"
        );
    }
}
