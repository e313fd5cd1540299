//! Golden wire fixtures of `sync-protocol` (SPEC §6): every message shape in both codecs,
//! built here from Rust values and written to `crates/sync-protocol/fixtures/`.
//!
//! `cargo xtask fixtures` writes them; `cargo xtask fixtures --check` regenerates them in
//! memory and fails, with a diff, when a committed file differs: the encoding drifted. The
//! `ts-*.json` files there are real TypeScript bodies, copied by hand, and are left alone.
//! `crates/sync-protocol/tests/golden.rs` decodes every fixture and re-encodes it.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use similar::TextDiff;
use sync_protocol::{
    refusal_code, AppRow, Codec, ExchangeRequest, ExchangeResponse, FileRecordRow, Hlc, InlineBlob,
    NodeId, Refusal, RowOp, RowValues, SharedRecord, Watermarks, PROTOCOL_VERSION, RESERVED_TABLE,
};

/// Prefix of the hand-copied TypeScript samples, which the generator does not own.
pub const TYPESCRIPT_PREFIX: &str = "ts-";

/// The fixtures directory of `sync-protocol` in the workspace at `root`.
pub fn dir(root: &Path) -> std::path::PathBuf {
    root.join("crates/sync-protocol/fixtures")
}

/// One generated fixture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    /// File name, e.g. `exchange-request-noop.msgpack`.
    pub name: String,
    /// The encoded body.
    pub bytes: Vec<u8>,
}

/// Every generated fixture, in a stable order: each message as `.json` and `.msgpack`.
pub fn generate() -> Vec<Fixture> {
    let mut out = Vec::new();
    both(&mut out, "exchange-request-noop", &request_noop());
    both(&mut out, "exchange-request-upload", &request_upload());
    both(&mut out, "exchange-response-download", &response_download());
    both(&mut out, "exchange-response-noop", &response_noop());
    both(
        &mut out,
        "exchange-response-extensions",
        &response_extensions(),
    );
    both(&mut out, "exchange-request-inline", &request_inline());
    both(&mut out, "exchange-response-inline", &response_inline());
    out
}

fn both<T: Serialize>(out: &mut Vec<Fixture>, stem: &str, message: &T) {
    for (codec, ext) in [(Codec::Json, "json"), (Codec::MessagePack, "msgpack")] {
        out.push(Fixture {
            name: format!("{stem}.{ext}"),
            bytes: codec
                .encode(message)
                .unwrap_or_else(|e| panic!("fixture {stem}.{ext} does not encode: {e}")),
        });
    }
}

/// Writes every generated fixture into `dir` and returns the names of the files it changed.
pub fn write(dir: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut changed = Vec::new();
    for fixture in generate() {
        let path = dir.join(&fixture.name);
        if fs::read(&path).ok().as_deref() != Some(&fixture.bytes[..]) {
            fs::write(&path, &fixture.bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            changed.push(fixture.name);
        }
    }
    Ok(changed)
}

/// Compares the committed fixtures in `dir` with freshly generated ones; fails with a
/// diff-like report naming every file that is missing, different or not generated at all.
pub fn check(dir: &Path) -> Result<()> {
    let generated = generate();
    let mut report = String::new();
    for fixture in &generated {
        let path = dir.join(&fixture.name);
        match fs::read(&path) {
            Ok(bytes) if bytes == fixture.bytes => {}
            Ok(bytes) => report.push_str(&diff(&fixture.name, &bytes, &fixture.bytes)),
            Err(e) => writeln!(report, "{}: cannot read ({e})", path.display())?,
        }
    }
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with(TYPESCRIPT_PREFIX) && !generated.iter().any(|f| f.name == name) {
            writeln!(
                report,
                "{name}: not produced by `cargo xtask fixtures` (stale?)"
            )?;
        }
    }
    if !report.is_empty() {
        bail!(
            "golden fixtures in {} are out of date:\n{report}\n\
             If the wire change is intended, run `cargo xtask fixtures` and commit the result.",
            dir.display()
        );
    }
    Ok(())
}

/// A unified diff of a fixture, committed (`-`) against generated (`+`), in a readable form:
/// pretty-printed JSON, or a hex dump of 16 bytes a line for MessagePack.
fn diff(name: &str, committed: &[u8], generated: &[u8]) -> String {
    let readable = |bytes: &[u8]| -> String {
        if name.ends_with(".json") {
            serde_json::from_slice::<Value>(bytes)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .map(|s| s + "\n")
                .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
        } else {
            bytes
                .chunks(16)
                .enumerate()
                .map(|(i, chunk)| {
                    let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                    format!("{:06x}  {}\n", i * 16, hex.join(" "))
                })
                .collect()
        }
    };
    let (old, new) = (readable(committed), readable(generated));
    let mut text = TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{name} (committed)"),
            &format!("{name} (generated)"),
        )
        .to_string();
    if old == new {
        // Same value, different bytes (key order or number encoding): say so plainly.
        text = format!("{name}: same value, different bytes\n");
    }
    text
}

// The messages. Ids follow the production formats: a UUID for a device, `cloud-<uuid>` for
// the server, ULIDs for records and rows.

const DEVICE: &str = "6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13";
const OTHER_DEVICE: &str = "b7e2d9f4-1c3a-4b6e-8d5f-0a9c7e3b2f61";
const CLOUD: &str = "cloud-0b9e4d2c-71a3-4f86-b5c8-93e2a1d4f607";
const T0: u64 = 1_795_599_880_197;

fn hlc(wall_offset: u64, counter: u16, node: &str) -> Hlc {
    Hlc::new(
        T0 + wall_offset,
        counter,
        NodeId::new(node).expect("valid node id"),
    )
    .expect("wall time in range")
}

fn watermarks(entries: &[(u64, u16, &str)]) -> Watermarks {
    entries.iter().map(|&(w, c, n)| hlc(w, c, n)).collect()
}

fn values(value: Value) -> RowValues {
    match value {
        Value::Object(map) => map,
        other => panic!("row values must be an object, got {other}"),
    }
}

fn image_record(id: &str, at: Hlc, hash: &str, filename: &str) -> SharedRecord {
    SharedRecord {
        id: id.into(),
        kind: "data".into(),
        record_type: "image/jpeg".into(),
        created_at: at.clone(),
        updated_at: at,
        deleted_at: None,
        version: 1,
        content_hash: hash.into(),
        object_storage_key: format!("shared/image/{}/{hash}", &hash[..2]),
        mime_type: Some("image/jpeg".into()),
        size_bytes: 256,
        original_filename: Some(filename.into()),
        origin_app_id: "photos".into(),
        parent_id: None,
        label: None,
    }
}

/// A live record with every optional field set, and a tombstone with the nullable ones null.
fn two_shared_records(node: &str, offset: u64) -> Vec<SharedRecord> {
    let mut live = image_record(
        "01M891FM05H70AHBYVFXPF8VMB",
        hlc(offset, 0, node),
        "b13bf86d047fc67a26bee2eff733b4fd0c550b073373a6d1c1baefdb8a3bfcc2",
        "IMG_000000.jpg",
    );
    live.parent_id = Some("01M891FM05H70AHBYVFXPF8V00".into());
    live.label = Some("Beach, 7 a.m.".into());
    let mut tombstone = image_record(
        "01M891FM06CCZW6NQKP08CFZR4",
        hlc(offset, 1, node),
        "cc47eb746ea922beb09f7bab5f6a894758ca2017811a5b752aaefe29314b0b29",
        "IMG_000001.jpg",
    );
    tombstone.created_at = hlc(0, 0, node);
    tombstone.deleted_at = Some(tombstone.updated_at.clone());
    tombstone.version = 2;
    tombstone.mime_type = None;
    tombstone.original_filename = None;
    vec![live, tombstone]
}

/// A row of the reserved, file-backed table, with HLC string forms in its columns.
fn file_row(node: &str, offset: u64) -> AppRow {
    let at = hlc(offset, 2, node);
    let file = FileRecordRow {
        id: "01M891FM07QK3T9V0WZ5N2B8XA".into(),
        object_storage_key: "apps/photos/syncable/01M891FM07QK3T9V0WZ5N2B8XA".into(),
        content_hash: "sha256:3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"
            .into(),
        mime_type: Some("image/heic".into()),
        size_bytes: 1_048_576,
        original_filename: Some("IMG_4242.HEIC".into()),
        origin_app_id: "photos".into(),
        created_at: at.clone(),
        updated_at: at.clone(),
        deleted_at: None,
    };
    AppRow {
        timestamp: at,
        app_id: "photos".into(),
        table: RESERVED_TABLE.into(),
        op: RowOp::Insert,
        row: Some(file.to_row()),
        where_: None,
    }
}

/// A metadata-only row of an ordinary table, with the column types apps use.
fn album_row(node: &str, offset: u64, op: RowOp, title: &str) -> AppRow {
    let at = hlc(offset, 3, node);
    AppRow {
        timestamp: at.clone(),
        app_id: "photos".into(),
        table: "albums".into(),
        op,
        row: Some(values(json!({
            "id": "01M891FM06CCZW6NQKP08CFZR5",
            "title": title,
            "cover_record_id": "01M891FM05H70AHBYVFXPF8VMB",
            "photo_count": 12,
            "favourite": true,
            "rating": -1,
            "tags": ["summer", "family"],
            "created_at": hlc(0, 0, node).to_string(),
            "updated_at": at.to_string(),
            "deleted_at": null,
            "node_id": node,
        }))),
        where_: None,
    }
}

/// A tombstone that names only the primary key of the deleted row.
fn album_delete(node: &str, offset: u64) -> AppRow {
    AppRow {
        timestamp: hlc(offset, 4, node),
        app_id: "photos".into(),
        table: "albums".into(),
        op: RowOp::Delete,
        row: None,
        where_: Some(values(json!({ "id": "01M891FM06CCZW6NQKP08CFZR6" }))),
    }
}

/// A fresh device's first round: no coverage, nothing to ship, a page limit.
fn request_noop() -> ExchangeRequest {
    ExchangeRequest {
        limit: Some(1000),
        ..ExchangeRequest::default()
    }
}

/// A Rust device pushing records and rows of every kind, with its coverage of two nodes and
/// the request extensions.
fn request_upload() -> ExchangeRequest {
    ExchangeRequest {
        watermarks: watermarks(&[(10, 4, DEVICE), (5, 0, CLOUD)]),
        records: two_shared_records(DEVICE, 10),
        app_syncable_rows: vec![
            file_row(DEVICE, 10),
            album_row(DEVICE, 10, RowOp::Update, "Summer 2025"),
            album_delete(DEVICE, 10),
        ],
        limit: Some(500),
        protocol_version: Some(PROTOCOL_VERSION),
        // The coverage it last heard from the responder, for the node whose items it ships.
        peer_watermarks: Some(watermarks(&[(0, 0, DEVICE)])),
        ..ExchangeRequest::default()
    }
}

/// The bytes of the inline-blob fixtures, and a record naming them by their SHA-256.
const INLINE_BYTES: &[u8] = b"tiny thumbnail bytes\x00\x01\x02\xff";
const INLINE_HASH: &str = "a35f962b3f7f7545ab9639410f45e6ae1c4ab1ca85f3a7f3614598f26c7cc0b2";

fn inline_record(node: &str, offset: u64) -> (SharedRecord, InlineBlob) {
    let mut record = image_record(
        "01M891FM08Q3J5D9S7ZC4Y6B2E",
        hlc(offset, 3, node),
        INLINE_HASH,
        "thumb.jpg",
    );
    record.size_bytes = INLINE_BYTES.len() as u64;
    let blob = InlineBlob {
        key: record.object_storage_key.clone(),
        bytes: INLINE_BYTES.to_vec(),
    };
    (record, blob)
}

/// Protocol version 2: a device shipping a small blob inside the request, to a responder
/// that announced `acceptInlineBlobs`, and taking small blobs inline in the answer.
fn request_inline() -> ExchangeRequest {
    let (record, blob) = inline_record(DEVICE, 12);
    ExchangeRequest {
        watermarks: watermarks(&[(12, 2, DEVICE), (106, 2, CLOUD)]),
        records: vec![record],
        limit: Some(1000),
        protocol_version: Some(PROTOCOL_VERSION),
        peer_watermarks: Some(watermarks(&[(10, 4, DEVICE)])),
        accept_inline_blobs: Some(65536),
        inline_blobs: vec![blob],
        ..ExchangeRequest::default()
    }
}

/// Protocol version 2: a page whose small blob rides inline, and the responder's own limit.
fn response_inline() -> ExchangeResponse {
    let (record, blob) = inline_record(CLOUD, 107);
    ExchangeResponse {
        records: vec![record],
        responder_watermarks: watermarks(&[(107, 3, CLOUD), (12, 3, DEVICE)]),
        protocol_version: Some(PROTOCOL_VERSION),
        accept_inline_blobs: Some(65536),
        inline_blobs: vec![blob],
        ..ExchangeResponse::default()
    }
}

/// The server's page for a device, with more to come.
fn response_download() -> ExchangeResponse {
    ExchangeResponse {
        records: two_shared_records(CLOUD, 106),
        app_syncable_rows: vec![
            file_row(OTHER_DEVICE, 80),
            album_row(CLOUD, 106, RowOp::Insert, "Trip to Lisbon"),
        ],
        responder_watermarks: watermarks(&[(106, 3, CLOUD), (80, 2, OTHER_DEVICE)]),
        has_more: true,
        halted_authors: Vec::new(),
        refusals: Vec::new(),
        protocol_version: None,
        ..ExchangeResponse::default()
    }
}

/// The steady-state answer: nothing new.
fn response_noop() -> ExchangeResponse {
    ExchangeResponse {
        records: Vec::new(),
        app_syncable_rows: Vec::new(),
        responder_watermarks: watermarks(&[(106, 2, CLOUD)]),
        has_more: false,
        halted_authors: Vec::new(),
        refusals: Vec::new(),
        protocol_version: None,
        ..ExchangeResponse::default()
    }
}

/// A Rust responder's answer using every extension: one origin node halted, with the reason.
fn response_extensions() -> ExchangeResponse {
    ExchangeResponse {
        records: Vec::new(),
        app_syncable_rows: vec![album_delete(CLOUD, 110)],
        responder_watermarks: watermarks(&[(110, 4, CLOUD), (10, 1, DEVICE)]),
        has_more: false,
        halted_authors: vec![NodeId::new(DEVICE).expect("valid node id")],
        refusals: vec![Refusal {
            at: hlc(10, 2, DEVICE),
            reason: "blob apps/photos/syncable/01M891FM07QK3T9V0WZ5N2B8XA was not uploaded: \
                     PUT it, then retry the round"
                .into(),
            code: Some(refusal_code::BLOB_MISSING.into()),
        }],
        protocol_version: Some(PROTOCOL_VERSION),
        ..ExchangeResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed fixtures are what the generator produces, so `cargo xtask test` fails
    /// when an encoding drifts even if nobody ran `fixtures --check`.
    #[test]
    fn committed_fixtures_are_up_to_date() {
        check(&dir(&crate::workspace_root())).unwrap();
    }

    #[test]
    fn every_message_has_both_codecs() {
        let names: Vec<String> = generate().into_iter().map(|f| f.name).collect();
        for name in names.iter().filter(|n| n.ends_with(".json")) {
            let twin = name.replace(".json", ".msgpack");
            assert!(names.contains(&twin), "{name} has no {twin}");
        }
        assert_eq!(names.len(), 14, "seven messages, two codecs each");
    }

    #[test]
    fn check_reports_a_readable_diff() {
        let dir = std::env::temp_dir().join(format!("xtask-fixtures-{}", std::process::id()));
        write(&dir).unwrap();
        assert!(
            write(&dir).unwrap().is_empty(),
            "a second write changes nothing"
        );
        check(&dir).unwrap();
        let path = dir.join("exchange-response-noop.json");
        let body = fs::read_to_string(&path).unwrap();
        fs::write(&path, body.replace("\"hasMore\":false", "\"hasMore\":true")).unwrap();
        fs::write(dir.join("leftover.json"), "{}").unwrap();
        let report = check(&dir).unwrap_err().to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(report.contains("-  \"hasMore\": true"), "{report}");
        assert!(report.contains("+  \"hasMore\": false"), "{report}");
        assert!(report.contains("leftover.json: not produced"), "{report}");
    }
}
