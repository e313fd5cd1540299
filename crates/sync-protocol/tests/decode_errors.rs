//! Decoding refuses bad bodies with a typed error that names the offending field, in both
//! codecs, and ignores fields it does not know (SPEC §6).
//!
//! Each case starts from a golden fixture, breaks one thing in its JSON value, and encodes the
//! result in both codecs (MessagePack through the same logical shape).

use std::{fs, path::Path};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sync_protocol::{Codec, DecodeError, ExchangeRequest, ExchangeResponse};

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The body in each codec.
fn bodies(value: &Value) -> [(Codec, Vec<u8>); 2] {
    [
        (Codec::Json, serde_json::to_vec(value).unwrap()),
        (Codec::MessagePack, rmp_serde::to_vec_named(value).unwrap()),
    ]
}

/// Decodes `value` in both codecs, expecting an error at `path` whose message contains
/// `needle`.
fn refused<T: DeserializeOwned + std::fmt::Debug>(value: &Value, path: &str, needle: &str) {
    for (codec, err) in errors::<T>(value, path) {
        assert!(err.message.contains(needle), "{codec}: {err}");
    }
}

/// Decodes `value` in both codecs, expecting a wrong-type error at `path`. Only the path is
/// pinned: the message is the codec's own ("invalid type" for JSON, "wrong msgpack marker"
/// for MessagePack).
fn wrong_type<T: DeserializeOwned + std::fmt::Debug>(value: &Value, path: &str) {
    errors::<T>(value, path);
}

fn errors<T: DeserializeOwned + std::fmt::Debug>(
    value: &Value,
    path: &str,
) -> Vec<(Codec, DecodeError)> {
    bodies(value)
        .into_iter()
        .map(|(codec, body)| {
            let err = codec.decode::<T>(&body).unwrap_err();
            assert_eq!(err.codec, codec);
            assert_eq!(err.path, path, "{codec}: {err}");
            assert!(err.to_string().contains(path), "{codec}: {err}");
            (codec, err)
        })
        .collect()
}

#[test]
fn a_response_without_has_more_names_it() {
    let mut v = fixture("exchange-response-noop.json");
    v.as_object_mut().unwrap().remove("hasMore");
    refused::<ExchangeResponse>(&v, ".", "hasMore");
}

#[test]
fn a_response_without_responder_watermarks_names_them() {
    let mut v = fixture("exchange-response-noop.json");
    v.as_object_mut().unwrap().remove("responderWatermarks");
    refused::<ExchangeResponse>(&v, ".", "responderWatermarks");
}

#[test]
fn a_bad_wall_time_is_named_down_to_the_field() {
    let mut v = fixture("exchange-response-download.json");
    v["records"][1]["updatedAt"]["wallTime"] = json!("yesterday");
    wrong_type::<ExchangeResponse>(&v, "records[1].updatedAt.wallTime");
    v["records"][1]["updatedAt"]["wallTime"] = json!(-5);
    refused::<ExchangeResponse>(&v, "records[1].updatedAt.wallTime", "invalid value");
    // In range for u64 but not for the 48-bit HLC: refused by the timestamp as a whole.
    v["records"][1]["updatedAt"]["wallTime"] = json!(1u64 << 48);
    refused::<ExchangeResponse>(&v, "records[1].updatedAt", "wall time");
}

#[test]
fn a_bad_counter_or_node_id_in_a_row_timestamp_is_named() {
    let mut v = fixture("exchange-request-upload.json");
    v["appSyncableRows"][2]["timestamp"]["counter"] = json!(65_536);
    refused::<ExchangeRequest>(&v, "appSyncableRows[2].timestamp", "counter");
    let mut v = fixture("exchange-request-upload.json");
    v["appSyncableRows"][0]["timestamp"]["nodeId"] = json!("a device");
    refused::<ExchangeRequest>(&v, "appSyncableRows[0].timestamp.nodeId", "invalid node id");
}

#[test]
fn an_unknown_row_op_is_named() {
    let mut v = fixture("exchange-request-upload.json");
    v["appSyncableRows"][1]["op"] = json!("upsert");
    refused::<ExchangeRequest>(&v, "appSyncableRows[1].op", "upsert");
}

#[test]
fn a_missing_record_field_is_named_with_its_record() {
    let mut v = fixture("exchange-request-upload.json");
    v["records"][0]
        .as_object_mut()
        .unwrap()
        .remove("contentHash");
    refused::<ExchangeRequest>(&v, "records[0]", "contentHash");
}

#[test]
fn an_hlc_in_string_form_is_refused_on_the_envelope() {
    // The string form belongs in row columns only; the envelope carries the object shape.
    let mut v = fixture("exchange-request-upload.json");
    v["records"][0]["createdAt"] = json!("01a21217d00f:0000:6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13");
    wrong_type::<ExchangeRequest>(&v, "records[0].createdAt");
}

#[test]
fn a_watermark_key_differing_from_its_node_id_is_refused() {
    let mut v = fixture("exchange-request-upload.json");
    let watermarks = v["watermarks"].as_object_mut().unwrap();
    let stolen = watermarks
        .remove("6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13")
        .unwrap();
    watermarks.insert("someone-else".into(), stolen);
    refused::<ExchangeRequest>(&v, "watermarks", "differs");

    let mut v = fixture("exchange-response-noop.json");
    v["responderWatermarks"]["cloud-0b9e4d2c-71a3-4f86-b5c8-93e2a1d4f607"]["nodeId"] =
        json!("cloud-impostor");
    refused::<ExchangeResponse>(&v, "responderWatermarks", "differs");
}

#[test]
fn an_invalid_watermark_key_is_refused() {
    let mut v = fixture("exchange-request-noop.json");
    v["watermarks"] = json!({"a:b": {"wallTime": 1, "counter": 0, "nodeId": "a:b"}});
    for (codec, body) in bodies(&v) {
        let err = codec.decode::<ExchangeRequest>(&body).unwrap_err();
        assert!(err.path.starts_with("watermarks"), "{codec}: {err}");
        assert!(err.message.contains("invalid node id"), "{codec}: {err}");
    }
}

#[test]
fn a_field_of_the_wrong_shape_is_named() {
    let mut v = fixture("exchange-response-download.json");
    v["appSyncableRows"] = json!({});
    wrong_type::<ExchangeResponse>(&v, "appSyncableRows");
    let mut v = fixture("exchange-response-noop.json");
    v["hasMore"] = json!("no");
    wrong_type::<ExchangeResponse>(&v, "hasMore");
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    let extra = json!({"nested": [1, {"deep": null}], "flag": true});
    for (name, paths) in [
        (
            "exchange-request-upload.json",
            &[
                "",
                "/records/0",
                "/records/0/createdAt",
                "/appSyncableRows/2",
            ][..],
        ),
        (
            "exchange-response-extensions.json",
            &[
                "",
                "/refusals/0",
                "/refusals/0/at",
                "/responderWatermarks/6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13",
            ][..],
        ),
    ] {
        let original = fixture(name);
        let mut extended = original.clone();
        for path in paths {
            let object = extended.pointer_mut(path).unwrap().as_object_mut().unwrap();
            object.insert("futureExtension".into(), extra.clone());
        }
        for ((codec, plain), (_, with_extras)) in
            bodies(&original).into_iter().zip(bodies(&extended))
        {
            if name.contains("request") {
                let a = codec.decode::<ExchangeRequest>(&plain).unwrap();
                assert_eq!(codec.decode::<ExchangeRequest>(&with_extras).unwrap(), a);
            } else {
                let a = codec.decode::<ExchangeResponse>(&plain).unwrap();
                assert_eq!(codec.decode::<ExchangeResponse>(&with_extras).unwrap(), a);
            }
        }
    }
}

#[test]
fn trailing_bytes_and_truncated_bodies_are_refused() {
    let v = fixture("exchange-response-noop.json");
    for (codec, mut body) in bodies(&v) {
        let whole = body.clone();
        body.extend_from_slice(&whole);
        let err = codec.decode::<ExchangeResponse>(&body).unwrap_err();
        assert_eq!(
            (err.path.as_str(), err.message.as_str()),
            (".", "trailing data")
        );
        for cut in 0..whole.len() {
            assert!(
                codec.decode::<ExchangeResponse>(&whole[..cut]).is_err(),
                "{codec}: a body cut at {cut} decoded"
            );
        }
    }
}

#[test]
fn inline_blob_bytes_must_be_base64_in_json_and_bin_in_messagepack() {
    let mut bad = fixture("exchange-request-inline.json");
    bad["inlineBlobs"][0]["bytes"] = json!("not base64!");
    let err = Codec::Json
        .decode::<ExchangeRequest>(&serde_json::to_vec(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.path, "inlineBlobs[0].bytes", "{err}");
    assert!(err.message.contains("base64"), "{err}");

    // A MessagePack string where `bin` belongs is refused too, naming the field.
    let err = Codec::MessagePack
        .decode::<ExchangeRequest>(&rmp_serde::to_vec_named(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.path, "inlineBlobs[0].bytes", "{err}");

    // A missing key is named.
    let mut bad = fixture("exchange-response-inline.json");
    bad["inlineBlobs"][0].as_object_mut().unwrap().remove("key");
    let err = Codec::Json
        .decode::<ExchangeResponse>(&serde_json::to_vec(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.path, "inlineBlobs[0]", "{err}");
    assert!(err.message.contains("key"), "{err}");
}

#[test]
fn trailing_bytes_are_refused_in_both_codecs() {
    let value = fixture("exchange-request-noop.json");
    for (codec, mut body) in bodies(&value) {
        assert!(codec.decode::<ExchangeRequest>(&body).is_ok());
        body.extend_from_slice(match codec {
            Codec::Json => b" {}",
            Codec::MessagePack => &[0x80],
        });
        let err = codec.decode::<ExchangeRequest>(&body).unwrap_err();
        assert!(err.message.contains("trailing"), "{codec}: {err}");
        // An invalid marker after the value is trailing data too, not a panic.
        if codec == Codec::MessagePack {
            body.pop();
            body.push(0xc1);
            let err = codec.decode::<ExchangeRequest>(&body).unwrap_err();
            assert!(err.message.contains("trailing"), "{codec}: {err}");
        }
    }
}
