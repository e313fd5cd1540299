//! TypeScript compatibility: the TypeScript client's request body (golden fixture) is
//! answered with JSON that client reads: `records`, `appSyncableRows`,
//! `responderWatermarks`, `hasMore`, camelCase, nulls preserved.

use http::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

const FIXTURE: &str =
    include_str!("../../../sync-protocol/fixtures/ts-exchange-request-upload.json");

const RECORD_FIELDS: [&str; 15] = [
    "id",
    "kind",
    "type",
    "createdAt",
    "updatedAt",
    "deletedAt",
    "version",
    "contentHash",
    "objectStorageKey",
    "mimeType",
    "sizeBytes",
    "originalFilename",
    "originAppId",
    "parentId",
    "label",
];

fn check_hlc(v: &Value) {
    let o = v.as_object().expect("an HLC object");
    assert!(
        o["wallTime"].is_u64() && o["counter"].is_u64() && o["nodeId"].is_string(),
        "{v}"
    );
}

/// The fields the TypeScript client reads, with the right JSON types.
fn check_ts_shape(body: &Value) {
    let o = body.as_object().expect("a JSON object");
    assert!(o["records"].is_array(), "records");
    assert!(o["appSyncableRows"].is_array(), "appSyncableRows");
    assert!(o["hasMore"].is_boolean(), "hasMore");
    let w = o["responderWatermarks"]
        .as_object()
        .expect("responderWatermarks");
    for (node, hlc) in w {
        check_hlc(hlc);
        assert_eq!(hlc["nodeId"].as_str(), Some(node.as_str()));
    }
    for key in o.keys() {
        assert!(!key.contains('_'), "camelCase only: {key}");
    }
}

#[tokio::test]
async fn typescript_request_is_answered_in_the_typescript_shape() {
    // The cloud's clock reads a minute after the sample was recorded, so its timestamps
    // pass the skew guard whatever today's date is.
    let cloud = Cloud::new(sync_testkit::memory::ManualTime::new(1_795_599_940_000, 1)).await;
    let server = TestServer::start(builder(&cloud).build().unwrap()).await;
    let mut fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let auth = ("authorization", "Bearer token-all");
    let json = ("content-type", "application/json");

    // The blobs the records name are uploaded first, as the TypeScript client does. The
    // sample's bytes are not in the fixture, so its SHA-256 content hashes are replaced by
    // the hash of the bytes uploaded here (the responder verifies them, decision 0030).
    let bytes = vec![7u8; 256];
    for r in fixture["records"].as_array_mut().unwrap() {
        r["contentHash"] = Value::String(sync_testkit::memory::sha256_hex(&bytes));
        let key = r["objectStorageKey"].as_str().unwrap();
        let put = raw(
            &server.base,
            Method::PUT,
            &format!("/files/{key}"),
            &[auth, ("content-type", "image/jpeg")],
            bytes.clone(),
        )
        .await;
        assert_eq!(put.status, StatusCode::OK);
    }

    // SPEC's channel split: the sample mixes both kinds, so its records go to Drive and
    // its rows to the app's channel, each otherwise byte-shaped as the TypeScript client
    // sent it.
    let mut drive = fixture.clone();
    drive.as_object_mut().unwrap().remove("appSyncableRows");
    let mut photos = fixture.clone();
    photos.as_object_mut().unwrap().remove("records");

    let r = raw(
        &server.base,
        Method::POST,
        "/sync/exchange",
        &[auth, json],
        drive.to_string(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    let body = r.json();
    check_ts_shape(&body);
    // Nothing was refused, and the shipped records come back (the requester advertised no
    // coverage), with every field and their nulls.
    assert!(body.get("haltedAuthors").is_none(), "{body}");
    let records = body["records"].as_array().unwrap();
    assert_eq!(records, fixture["records"].as_array().unwrap());
    for rec in records {
        for field in RECORD_FIELDS {
            assert!(
                rec.get(field).is_some(),
                "record field {field} missing: {rec}"
            );
        }
        assert!(rec["deletedAt"].is_null() && rec["parentId"].is_null() && rec["label"].is_null());
        check_hlc(&rec["createdAt"]);
        check_hlc(&rec["updatedAt"]);
    }
    assert_eq!(body["appSyncableRows"], Value::Array(vec![]));
    let author = "6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13";
    assert_eq!(
        body["responderWatermarks"][author],
        fixture["records"][1]["updatedAt"]
    );
    assert_eq!(body["hasMore"], false);
    assert_eq!(cloud.records.all().len(), 2);

    let r = raw(
        &server.base,
        Method::POST,
        "/apps/photos/sync/exchange",
        &[auth, json],
        photos.to_string(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let body = r.json();
    check_ts_shape(&body);
    assert_eq!(body["records"], Value::Array(vec![]));
    let rows = body["appSyncableRows"].as_array().unwrap();
    assert_eq!(rows, fixture["appSyncableRows"].as_array().unwrap());
    let row = &rows[0];
    for field in ["timestamp", "appId", "table", "op", "row"] {
        assert!(row.get(field).is_some(), "row field {field}");
    }
    assert!(row["row"]["cover_record_id"].is_null() && row["row"]["deleted_at"].is_null());
    assert_eq!(
        body["responderWatermarks"][author],
        fixture["appSyncableRows"][0]["timestamp"]
    );

    // The TypeScript no-op request (watermarks at the cloud's coverage) gets the no-op shape.
    let noop = include_str!("../../../sync-protocol/fixtures/ts-exchange-request-noop.json");
    let r = raw(
        &server.base,
        Method::POST,
        "/sync/exchange",
        &[auth, json],
        noop,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    check_ts_shape(&r.json());
    server.stop().await;
}
