//! Golden wire fixtures (SPEC §6): every message shape in both codecs, decoded and re-encoded
//! byte for byte, plus the real TypeScript bodies (`ts-*.json`), which must survive a decode
//! and re-encode as the same JSON value.
//!
//! The fixtures are written by `cargo xtask fixtures` from values built in `xtask`; a change
//! here that makes these tests fail is a wire change: TypeScript peers and older Rust nodes
//! would see different bytes.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    fs,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use sync_protocol::{
    Codec, ExchangeRequest, ExchangeResponse, FileRecordRow, InlineBlob, RowOp, PROTOCOL_VERSION,
    RESERVED_TABLE,
};

/// The messages `cargo xtask fixtures` writes, each as `.json` and `.msgpack`.
const GENERATED: &[&str] = &[
    "exchange-request-noop",
    "exchange-request-upload",
    "exchange-response-download",
    "exchange-response-noop",
    "exchange-response-extensions",
    "exchange-request-inline",
    "exchange-response-inline",
];

/// Bodies captured from the TypeScript reference (`shared/wire-samples/`, compacted).
const TYPESCRIPT: &[&str] = &[
    "ts-exchange-request-noop",
    "ts-exchange-request-upload",
    "ts-exchange-response-download",
    "ts-exchange-response-noop",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn is_request(stem: &str) -> bool {
    stem.contains("exchange-request-")
}

fn decode<T: DeserializeOwned>(codec: Codec, name: &str) -> T {
    codec
        .decode(&read(name))
        .unwrap_or_else(|e| panic!("{name} does not decode: {e}"))
}

/// Decodes both files of a message, re-encodes each, and compares bytes and values.
fn check_pair<T>(stem: &str)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let mut decoded = Vec::new();
    for (codec, ext) in [(Codec::Json, "json"), (Codec::MessagePack, "msgpack")] {
        let name = format!("{stem}.{ext}");
        let bytes = read(&name);
        let value: T = decode(codec, &name);
        let again = codec.encode(&value).unwrap();
        assert!(
            again == bytes,
            "{name} does not re-encode byte for byte:\n committed: {}\n re-encoded: {}",
            String::from_utf8_lossy(&bytes).escape_debug(),
            String::from_utf8_lossy(&again).escape_debug()
        );
        decoded.push(value);
    }
    assert_eq!(
        decoded[0], decoded[1],
        "{stem}.json and {stem}.msgpack are different messages"
    );
}

/// Decodes a TypeScript body, re-encodes it as JSON and compares JSON values (key order aside);
/// the decoded message must also survive a MessagePack round trip unchanged.
fn check_typescript<T>(stem: &str)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let name = format!("{stem}.json");
    let original: Value = serde_json::from_slice(&read(&name)).unwrap();
    let message: T = decode(Codec::Json, &name);
    let again: Value = serde_json::from_slice(&Codec::Json.encode(&message).unwrap()).unwrap();
    assert_eq!(
        again, original,
        "{name} changes when decoded and re-encoded"
    );
    let packed = Codec::MessagePack.encode(&message).unwrap();
    assert_eq!(Codec::MessagePack.decode::<T>(&packed).unwrap(), message);
}

#[test]
fn the_fixture_set_is_complete() {
    let on_disk: BTreeSet<String> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = GENERATED
        .iter()
        .flat_map(|s| [format!("{s}.json"), format!("{s}.msgpack")])
        .chain(TYPESCRIPT.iter().map(|s| format!("{s}.json")))
        .collect();
    assert_eq!(on_disk, expected);
}

#[test]
fn generated_fixtures_re_encode_byte_for_byte_in_both_codecs() {
    for stem in GENERATED {
        if is_request(stem) {
            check_pair::<ExchangeRequest>(stem);
        } else {
            check_pair::<ExchangeResponse>(stem);
        }
    }
}

#[test]
fn typescript_samples_re_encode_to_the_same_json() {
    for stem in TYPESCRIPT {
        if is_request(stem) {
            check_typescript::<ExchangeRequest>(stem);
        } else {
            check_typescript::<ExchangeResponse>(stem);
        }
    }
}

/// The fixtures hold the shapes they are named for, so a generator change cannot quietly
/// drop one from the golden set.
#[test]
fn fixtures_cover_every_shape() {
    let noop: ExchangeRequest = decode(Codec::Json, "exchange-request-noop.json");
    assert!(noop.watermarks.is_empty() && noop.records.is_empty());
    assert!(noop.app_syncable_rows.is_empty() && noop.limit.is_some());

    let upload: ExchangeRequest = decode(Codec::Json, "exchange-request-upload.json");
    assert_eq!(upload.records.len(), 2);
    assert!(upload.records.iter().any(|r| r.is_tombstone()));
    assert!(upload.records.iter().any(|r| !r.is_tombstone()));
    let rows = &upload.app_syncable_rows;
    let file = rows.iter().find(|r| r.table == RESERVED_TABLE).unwrap();
    let file_row = FileRecordRow::from_row(file.row.as_ref().unwrap()).unwrap();
    assert_eq!(
        &file_row.updated_at,
        file.hlc(),
        "HLC string form in the columns"
    );
    let columns: Vec<&str> = file
        .row
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        columns,
        [
            "id",
            "object_storage_key",
            "content_hash",
            "mime_type",
            "size_bytes",
            "original_filename",
            "origin_app_id",
            "created_at",
            "updated_at",
            "deleted_at"
        ]
    );
    assert!(rows
        .iter()
        .any(|r| r.table != RESERVED_TABLE && r.op != RowOp::Delete && r.row.is_some()));
    let delete = rows.iter().find(|r| r.op == RowOp::Delete).unwrap();
    assert!(delete.is_tombstone() && delete.where_.is_some() && delete.row.is_none());

    assert!(upload.protocol_version.is_some() && upload.peer_watermarks.is_some());

    let download: ExchangeResponse = decode(Codec::Json, "exchange-response-download.json");
    assert!(download.has_more && !download.records.is_empty());
    assert!(!download.app_syncable_rows.is_empty() && !download.responder_watermarks.is_empty());

    let noop: ExchangeResponse = decode(Codec::Json, "exchange-response-noop.json");
    assert!(!noop.has_more && noop.records.is_empty() && noop.app_syncable_rows.is_empty());

    let ext: ExchangeResponse = decode(Codec::Json, "exchange-response-extensions.json");
    assert!(!ext.halted_authors.is_empty() && !ext.refusals.is_empty());
    assert_eq!(ext.protocol_version, Some(PROTOCOL_VERSION));
    for refusal in &ext.refusals {
        assert!(ext.halted_authors.contains(refusal.at.node_id()));
    }

    // Version 2: small blobs inline, base64 in JSON and `bin` in MessagePack, the same bytes
    // either way, each naming the key of an item in the message.
    for stem in ["exchange-request-inline", "exchange-response-inline"] {
        let (json, msgpack): (Vec<InlineBlob>, Vec<InlineBlob>) =
            if stem.starts_with("exchange-request") {
                let j: ExchangeRequest = decode(Codec::Json, &format!("{stem}.json"));
                let m: ExchangeRequest = decode(Codec::MessagePack, &format!("{stem}.msgpack"));
                assert_eq!(j.accept_inline_blobs, Some(65536));
                assert!(j
                    .records
                    .iter()
                    .any(|r| r.object_storage_key == j.inline_blobs[0].key));
                (j.inline_blobs, m.inline_blobs)
            } else {
                let j: ExchangeResponse = decode(Codec::Json, &format!("{stem}.json"));
                let m: ExchangeResponse = decode(Codec::MessagePack, &format!("{stem}.msgpack"));
                assert!(j
                    .records
                    .iter()
                    .any(|r| r.object_storage_key == j.inline_blobs[0].key));
                (j.inline_blobs, m.inline_blobs)
            };
        assert_eq!(json, msgpack, "{stem}");
        assert_eq!(
            json[0].bytes, b"tiny thumbnail bytes\x00\x01\x02\xff",
            "{stem}"
        );
        let raw = read(&format!("{stem}.msgpack"));
        assert!(
            raw.windows(2)
                .any(|w| w == [0xc4, json[0].bytes.len() as u8]),
            "{stem}: the bytes travel as a MessagePack bin"
        );
    }
}
