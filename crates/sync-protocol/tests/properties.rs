//! Property tests of the codecs: any message survives a round trip through both codecs, and no
//! input, however broken, makes a decoder panic (a body is untrusted network input).

use std::{fs, path::Path};

use proptest::prelude::*;
use serde_json::{Map, Value};
use sync_hlc::{MAX_NODE_ID_LEN, MAX_WALL_TIME};
use sync_protocol::{
    AppRow, Codec, ExchangeRequest, ExchangeResponse, Hlc, InlineBlob, NodeId, Refusal, RowOp,
    RowValues, SharedRecord, Watermarks,
};

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        prop::sample::select(vec![
            "6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13",
            "cloud-0b9e4d2c-71a3-4f86-b5c8-93e2a1d4f607",
            "local",
        ])
        .prop_map(|s| NodeId::new(s).unwrap()),
        prop::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{MAX_NODE_ID_LEN}}}"))
            .unwrap()
            .prop_map(|s| NodeId::new(s).unwrap()),
    ]
}

fn hlc() -> impl Strategy<Value = Hlc> {
    (0..=MAX_WALL_TIME, any::<u16>(), node()).prop_map(|(w, c, n)| Hlc::new(w, c, n).unwrap())
}

fn watermarks() -> impl Strategy<Value = Watermarks> {
    prop::collection::vec(hlc(), 0..4).prop_map(|v| v.into_iter().collect())
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, escapes and control characters.
    ".{0,24}"
}

/// Column values as apps write them: scalars, HLC strings, and small nested arrays/objects.
fn column_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
        hlc().prop_map(|h| Value::from(h.to_string())),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn row_values() -> impl Strategy<Value = RowValues> {
    prop::collection::vec(("[a-z_]{1,16}", column_value()), 0..6)
        .prop_map(|kv| kv.into_iter().collect())
}

fn shared_record() -> impl Strategy<Value = SharedRecord> {
    (
        (text(), text(), hlc(), hlc(), prop::option::of(hlc())),
        (any::<u64>(), text(), text(), prop::option::of(text())),
        (
            any::<u64>(),
            prop::option::of(text()),
            text(),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (id, record_type, created_at, updated_at, deleted_at),
                (version, content_hash, object_storage_key, mime_type),
                (size_bytes, original_filename, origin_app_id, parent_id, label),
            )| SharedRecord {
                id,
                kind: "data".into(),
                record_type,
                created_at,
                updated_at,
                deleted_at,
                version,
                content_hash,
                object_storage_key,
                mime_type,
                size_bytes,
                original_filename,
                origin_app_id,
                parent_id,
                label,
            },
        )
}

fn app_row() -> impl Strategy<Value = AppRow> {
    (
        hlc(),
        text(),
        text(),
        prop::sample::select(vec![RowOp::Insert, RowOp::Update, RowOp::Delete]),
        prop::option::of(row_values()),
        prop::option::of(row_values()),
    )
        .prop_map(|(timestamp, app_id, table, op, row, where_)| AppRow {
            timestamp,
            app_id,
            table,
            op,
            row,
            where_,
        })
}

fn inline_blobs() -> impl Strategy<Value = Vec<InlineBlob>> {
    prop::collection::vec(
        (text(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(key, bytes)| InlineBlob { key, bytes }),
        0..3,
    )
}

fn request() -> impl Strategy<Value = ExchangeRequest> {
    (
        (
            watermarks(),
            prop::collection::vec(shared_record(), 0..3),
            prop::collection::vec(app_row(), 0..3),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u32>()),
            prop::option::of(watermarks()),
        ),
        prop::option::of(any::<u64>()),
        inline_blobs(),
    )
        .prop_map(
            |(
                (watermarks, records, app_syncable_rows, limit, protocol_version, peer_watermarks),
                accept_inline_blobs,
                inline_blobs,
            )| {
                ExchangeRequest {
                    watermarks,
                    records,
                    app_syncable_rows,
                    limit,
                    protocol_version,
                    peer_watermarks,
                    accept_inline_blobs,
                    inline_blobs,
                }
            },
        )
}

fn response() -> impl Strategy<Value = ExchangeResponse> {
    (
        prop::collection::vec(shared_record(), 0..3),
        prop::collection::vec(app_row(), 0..3),
        watermarks(),
        any::<bool>(),
        prop::collection::vec(node(), 0..3),
        prop::collection::vec((hlc(), text()), 0..3),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u64>()),
        inline_blobs(),
    )
        .prop_map(
            |(
                records,
                app_syncable_rows,
                responder_watermarks,
                has_more,
                halted,
                refusals,
                v,
                accept_inline_blobs,
                inline_blobs,
            )| {
                ExchangeResponse {
                    records,
                    app_syncable_rows,
                    responder_watermarks,
                    has_more,
                    halted_authors: halted,
                    refusals: refusals
                        .into_iter()
                        .map(|(at, reason)| Refusal {
                            code: (reason.len() % 2 == 0).then(|| "skew".to_string()),
                            at,
                            reason,
                        })
                        .collect(),
                    protocol_version: v,
                    accept_inline_blobs,
                    inline_blobs,
                }
            },
        )
}

/// Every fixture, JSON and MessagePack, as raw bytes to mutate.
fn fixture_bodies() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.into_iter().map(|p| fs::read(p).unwrap()).collect()
}

/// A fixture with a few bytes overwritten and maybe cut short: mostly well-formed, so the
/// decoders get past the first byte and into the interesting paths.
fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(fixture_bodies()),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(mut body, edits, cut)| {
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            if let Some(cut) = cut {
                body.truncate(cut.index(body.len() + 1));
            }
            body
        })
}

/// Decodes `body` as both message types in both codecs; a message that decodes must also
/// survive re-encoding. Panics are what this guards against.
fn decode_everything(body: &[u8]) {
    for codec in [Codec::Json, Codec::MessagePack] {
        if let Ok(req) = codec.decode::<ExchangeRequest>(body) {
            let again = codec.encode(&req).unwrap();
            assert_eq!(codec.decode::<ExchangeRequest>(&again).unwrap(), req);
        }
        if let Ok(resp) = codec.decode::<ExchangeResponse>(body) {
            let again = codec.encode(&resp).unwrap();
            assert_eq!(codec.decode::<ExchangeResponse>(&again).unwrap(), resp);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip_through_both_codecs(req in request()) {
        for codec in [Codec::Json, Codec::MessagePack] {
            let body = codec.encode(&req).unwrap();
            prop_assert_eq!(&codec.decode::<ExchangeRequest>(&body).unwrap(), &req);
        }
    }

    #[test]
    fn responses_round_trip_through_both_codecs(resp in response()) {
        for codec in [Codec::Json, Codec::MessagePack] {
            let body = codec.encode(&resp).unwrap();
            prop_assert_eq!(&codec.decode::<ExchangeResponse>(&body).unwrap(), &resp);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(body in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&body);
    }

    #[test]
    fn mutated_fixtures_never_panic_a_decoder(body in mutated_fixture()) {
        decode_everything(&body);
    }
}

#[test]
fn hostile_nesting_is_refused_without_overflowing_the_stack() {
    // Rows nest arrays far deeper than any app would; both decoders must answer with an
    // error (serde_json stops at 128 levels, the MessagePack decoder likewise), not overflow
    // the stack and abort the process.
    let row = |value: Value| {
        serde_json::json!({"watermarks": {}, "appSyncableRows": [{
            "timestamp": {"wallTime": 1, "counter": 0, "nodeId": "a"},
            "appId": "x", "table": "t", "op": "insert", "row": {"v": value}}]})
    };
    let nested = |depth: usize| (0..depth).fold(Value::Null, |v, _| Value::Array(vec![v]));
    for codec in [Codec::Json, Codec::MessagePack] {
        // Deep but reasonable nesting decodes.
        let body = codec.encode(&row(nested(100))).unwrap();
        assert!(codec.decode::<ExchangeRequest>(&body).is_ok(), "{codec}");
    }

    let depth = 100_000;
    let json = serde_json::to_string(&row(Value::Null)).unwrap().replace(
        r#""v":null"#,
        &format!(r#""v":{}{}"#, "[".repeat(depth), "]".repeat(depth)),
    );
    let err = Codec::Json
        .decode::<ExchangeRequest>(json.as_bytes())
        .unwrap_err();
    assert!(err.message.contains("recursion limit"), "{err}");

    // The same shape in MessagePack: the final `0xc0` (nil, the value of `v`) becomes
    // `depth` one-element arrays around nil.
    let prefix = Codec::MessagePack.encode(&row(Value::Null)).unwrap();
    assert_eq!(prefix.last(), Some(&0xc0));
    let mut body = prefix[..prefix.len() - 1].to_vec();
    body.extend(std::iter::repeat_n(0x91u8, depth));
    body.push(0xc0);
    let err = Codec::MessagePack
        .decode::<ExchangeRequest>(&body)
        .unwrap_err();
    assert!(err.message.contains("depth limit"), "{err}");
}
