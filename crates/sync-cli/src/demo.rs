//! `starkeep-sync demo`: a server and two nodes on loopback, with concurrent edits and
//! deletes, synced until they agree.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Arc, time::Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sync_blobs::object_store::{path::Path as ObjectPath, ObjectStore, ObjectStoreExt, PutPayload};
use sync_engine::{
    core::{AppRowStore, RecordStore},
    protocol::{AppRow, RowValues, SharedRecord},
    AppNamespace, Channel, Engine, RecordDraft, TableSpec,
};

use crate::{
    cli::all_records,
    exit,
    files::{new_id, store_file},
    node::{EngineOptions, Node, NodeConfig},
    server::{self, ServerOptions, Storage},
};

const APP: &str = "notes";

struct DemoNode {
    name: &'static str,
    node: Node,
    drive: Engine,
    notes: Engine,
}

impl DemoNode {
    async fn start(
        name: &'static str,
        dir: &Path,
        url: &str,
        token: &str,
        ns: &AppNamespace,
    ) -> Result<Self> {
        let home = dir.join(name);
        Node::init(
            &home,
            NodeConfig {
                node_id: name.into(),
                server: url.into(),
                token: token.into(),
                apps: vec![ns.clone()],
                blob_pack_limit: None,
            },
        )
        .await?;
        let node = Node::open(&home).await?;
        let drive = node
            .engine(Channel::Drive, &EngineOptions::default())
            .await?;
        let notes = node
            .engine(Channel::App(APP.into()), &EngineOptions::default())
            .await?;
        Ok(Self {
            name,
            node,
            drive,
            notes,
        })
    }

    async fn file(&self, dir: &Path, id: &str, name: &str, content: &[u8]) -> Result<SharedRecord> {
        let path = dir.join(format!("{}-{name}", self.name));
        std::fs::write(&path, content)?;
        let stored = store_file(&path, &self.node.blobs).await?;
        Ok(self
            .drive
            .put_record(
                RecordDraft::file(id, stored.key, stored.sha256, stored.size)
                    .with_mime_type(stored.mime)
                    .with_original_filename(name),
            )
            .await?)
    }

    async fn note(&self, id: &str, title: &str, body: &str) -> Result<AppRow> {
        let mut row = RowValues::new();
        row.insert("id".into(), json!(id));
        row.insert("title".into(), json!(title));
        row.insert("body".into(), json!(body));
        Ok(self.notes.put_row("notes", row).await?)
    }

    async fn attachment(&self, id: &str, content: &[u8]) -> Result<AppRow> {
        let hash = hex::encode(Sha256::digest(content));
        let key = format!("apps/{APP}/syncable/{}/{hash}", &hash[..2]);
        self.node
            .blobs
            .object_store()
            .put(
                &ObjectPath::parse(&key)?,
                PutPayload::from(content.to_vec()),
            )
            .await?;
        let mut row = RowValues::new();
        row.insert("id".into(), json!(id));
        row.insert("object_storage_key".into(), json!(key));
        row.insert("content_hash".into(), json!(hash));
        row.insert("mime_type".into(), json!("text/plain"));
        row.insert("size_bytes".into(), json!(content.len()));
        row.insert("original_filename".into(), json!(format!("{id}.txt")));
        row.insert("origin_app_id".into(), json!(APP));
        row.insert("deleted_at".into(), Value::Null);
        Ok(self
            .notes
            .put_row(sync_engine::protocol::RESERVED_TABLE, row)
            .await?)
    }

    async fn sync(&self) -> Result<(usize, usize)> {
        let mut moved = (0, 0);
        for engine in [&self.drive, &self.notes] {
            let s = engine.sync_until_idle().await?;
            if !s.complete {
                bail!(
                    "{} did not finish syncing {}: {:?}",
                    self.name,
                    engine.channel(),
                    s.last.failures
                );
            }
            moved.0 += s.shipped;
            moved.1 += s.applied + s.became_resident;
        }
        Ok(moved)
    }
}

/// Everything one side holds: records by id, rows by (table, key).
struct Snapshot {
    records: BTreeMap<String, SharedRecord>,
    rows: BTreeMap<(String, String), AppRow>,
}

async fn snapshot(
    records: &dyn RecordStore,
    rows: &dyn AppRowStore,
    ns: &AppNamespace,
) -> Result<Snapshot> {
    let records = all_records(records)
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut all_rows = BTreeMap::new();
    for table in ns.table_names() {
        for (origin, _) in rows.coverage(APP, table).await?.iter() {
            for r in rows.scan(APP, table, origin, None, 1 << 30).await? {
                let key = sync_engine::core::row_key(ns.table(table).expect("registered"), &r)?;
                all_rows.insert((table.to_string(), key), r);
            }
        }
    }
    Ok(Snapshot {
        records,
        rows: all_rows,
    })
}

async fn blob_ok(store: &Arc<dyn ObjectStore>, key: &str, hash: &str) -> bool {
    let Ok(path) = ObjectPath::parse(key) else {
        return false;
    };
    match store.get(&path).await {
        Ok(r) => match r.bytes().await {
            Ok(b) => hex::encode(Sha256::digest(&b)) == hash,
            Err(_) => false,
        },
        Err(_) => false,
    }
}

/// Runs the demo; exits 0 only if both nodes and the server agree.
pub async fn run() -> Result<u8> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let token = server::new_token();
    let ns = AppNamespace::new(APP, vec![TableSpec::new("notes", &["id"])]).validated()?;
    let running = server::start(ServerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        storage: Storage::Embedded {
            data: dir.path().join("server"),
        },
        tokens: vec![(token.clone(), sync_http::Scope::All)],
        apps: vec![ns.clone()],
        max_limit: 10_000,
        exchange_body_limit: 32 << 20,
        blob_pack_limit: crate::blobs::DEFAULT_PACK_LIMIT,
    })
    .await?;
    let url = format!("http://{}", running.addr);
    println!(
        "server    listening on {url} (SQLite + files in {})",
        dir.path().display()
    );
    let alice = DemoNode::start("alice-laptop", dir.path(), &url, &token, &ns).await?;
    let bob = DemoNode::start("bob-phone", dir.path(), &url, &token, &ns).await?;
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files)?;

    // 1. Both write while apart.
    let report = new_id();
    let photo = new_id();
    alice
        .file(
            &files,
            &report,
            "report.txt",
            b"Quarterly report, draft 1\n",
        )
        .await?;
    alice
        .file(
            &files,
            &photo,
            "photo.png",
            &[0x89, b'P', b'N', b'G', 1, 2, 3, 4],
        )
        .await?;
    alice.note("n1", "Groceries", "milk, eggs").await?;
    alice
        .attachment("a1", b"receipt from the corner shop\n")
        .await?;
    bob.file(&files, &new_id(), "song.mp3", b"ID3 not really a song")
        .await?;
    bob.file(&files, &new_id(), "todo.md", b"- call mum\n")
        .await?;
    bob.note("n2", "Ideas", "a sync engine in Rust").await?;
    println!("step 1    alice wrote 2 files, 1 note, 1 attachment; bob wrote 2 files, 1 note");
    let (a, b, c) = (alice.sync().await?, bob.sync().await?, alice.sync().await?);
    println!(
        "step 2    synced alice -> bob -> alice: shipped {}, received {}",
        a.0 + b.0 + c.0,
        a.1 + b.1 + c.1
    );

    // 2. A concurrent edit of one record and of one note, and deletes, on both sides.
    let alice_edit = alice
        .file(
            &files,
            &report,
            "report.txt",
            b"Quarterly report, alice's edit\n",
        )
        .await?;
    let bob_edit = bob
        .file(
            &files,
            &report,
            "report.txt",
            b"Quarterly report, bob's edit\n",
        )
        .await?;
    alice.note("n1", "Groceries", "milk, eggs, bread").await?;
    bob.note("n1", "Groceries", "oat milk").await?;
    bob.drive.delete_record(&photo).await?;
    let mut key = RowValues::new();
    key.insert("id".into(), json!("n2"));
    alice.notes.delete_row("notes", key).await?;
    println!("step 3    both edited report.txt and note n1 while apart; bob deleted photo.png, alice deleted note n2");
    let (a, b, c) = (alice.sync().await?, bob.sync().await?, alice.sync().await?);
    println!(
        "step 4    synced alice -> bob -> alice: shipped {}, received {}",
        a.0 + b.0 + c.0,
        a.1 + b.1 + c.1
    );

    // 3. Check that everyone agrees, down to the bytes.
    let sides = [
        (
            "alice-laptop",
            snapshot(&alice.node.store, &alice.node.store, &ns).await?,
            alice.node.blobs.object_store().clone(),
        ),
        (
            "bob-phone",
            snapshot(&bob.node.store, &bob.node.store, &ns).await?,
            bob.node.blobs.object_store().clone(),
        ),
        (
            "server",
            snapshot(running.records.as_ref(), running.rows.as_ref(), &ns).await?,
            running.blobs.object_store().clone(),
        ),
    ];
    let mut problems = Vec::new();
    let reference = &sides[2].1;
    for (name, snap, blobs) in &sides {
        let versions = |s: &Snapshot| -> (Vec<(String, String)>, Vec<String>) {
            (
                s.records
                    .values()
                    .map(|r| (r.id.clone(), r.updated_at.to_string()))
                    .collect(),
                s.rows.values().map(|r| r.timestamp.to_string()).collect(),
            )
        };
        if versions(snap) != versions(reference) {
            problems.push(format!(
                "{name} does not hold the same versions as the server"
            ));
        }
        for r in snap.records.values().filter(|r| r.deleted_at.is_none()) {
            if !blob_ok(blobs, &r.object_storage_key, &r.content_hash).await {
                problems.push(format!(
                    "{name}: the file of {} is missing or corrupt",
                    r.original_filename.as_deref().unwrap_or(&r.id)
                ));
            }
        }
        for r in snap
            .rows
            .values()
            .filter(|r| r.table == sync_engine::protocol::RESERVED_TABLE && !r.is_tombstone())
        {
            let row = r.row.clone().unwrap_or_default();
            let (Some(k), Some(h)) = (
                row.get("object_storage_key").and_then(Value::as_str),
                row.get("content_hash").and_then(Value::as_str),
            ) else {
                continue;
            };
            if !blob_ok(blobs, k, h).await {
                problems.push(format!("{name}: attachment {k} is missing or corrupt"));
            }
        }
    }

    println!();
    println!(
        "{:<32} {:<8} {:<14} why this version",
        "item", "state", "written by"
    );
    for r in reference.records.values() {
        let name = format!("file {}", r.original_filename.as_deref().unwrap_or(&r.id));
        let (state, why) = if r.deleted_at.is_some() {
            (
                "deleted",
                "a delete is a write: the latest write wins".to_string(),
            )
        } else if r.id == report {
            let (a, b) = (&alice_edit.updated_at, &bob_edit.updated_at);
            (
                "live",
                format!(
                    "concurrent edits: {} > {}, the later timestamp wins",
                    a.max(b),
                    a.min(b)
                ),
            )
        } else {
            ("live", "only one writer".to_string())
        };
        println!(
            "{:<32} {:<8} {:<14} {}",
            name,
            state,
            r.updated_at.node_id(),
            why
        );
    }
    for ((table, key), r) in &reference.rows {
        let state = if r.is_tombstone() { "deleted" } else { "live" };
        let why = if key == "[\"n1\"]" {
            "concurrent edits: the later timestamp wins"
        } else if r.is_tombstone() {
            "a delete is a write: the latest write wins"
        } else {
            "only one writer"
        };
        println!(
            "{:<32} {:<8} {:<14} {}",
            format!("row {table}{key}"),
            state,
            r.timestamp.node_id(),
            why
        );
    }
    println!();
    running.stop().await?;
    if problems.is_empty() {
        println!(
            "converged: alice-laptop, bob-phone and the server hold the same {} records and {} rows, every live file present and matching its hash ({:.2} s)",
            reference.records.len(),
            reference.rows.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(exit::OK)
    } else {
        for p in &problems {
            println!("NOT CONVERGED: {p}");
        }
        Ok(exit::FAILURE)
    }
}
