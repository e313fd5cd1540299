//! Full exchange rounds through `sync_core::Requester` over real loopback HTTP, in both
//! codecs and with both credential schemes; blobs move over the `/files` routes.

use sync_core::Channel;
use sync_http::Auth;
use sync_protocol::{Codec, RESERVED_TABLE};

use crate::common::*;

async fn drive_round(codec: Codec) {
    let time = shared_time();
    let cloud = Cloud::new(time.clone()).await;
    let server = TestServer::start(builder(&cloud).build().unwrap()).await;
    let local = Node::new("local", time.clone()).await;

    let mine = local.put_record("r-local", b"bytes written locally").await;
    let theirs = cloud
        .put_record("r-cloud", b"bytes written in the cloud")
        .await;

    let client = server.client(Auth::bearer(TOKEN_DRIVE));
    let requester = local.requester(&client, Channel::Drive, codec);
    let report = requester.exchange().await.expect("round over HTTP");
    assert_eq!(report.shipped, 1, "{report:?}");
    assert_eq!(report.applied, 1, "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");

    // The cloud holds the local record and its blob (pushed before the metadata).
    assert_eq!(cloud.records.all()["r-local"], mine);
    assert_eq!(
        cloud.blob(&mine.object_storage_key).await.as_ref(),
        b"bytes written locally"
    );
    // The local node holds the cloud's record and pulled its blob.
    assert_eq!(local.records.all()["r-cloud"], theirs);
    assert_eq!(
        local.blobs.bytes(&theirs.object_storage_key).unwrap(),
        b"bytes written in the cloud"
    );
    // Both watermark vectors were persisted, and the next rounds are quiet.
    let state = local.state.get(&Channel::Drive);
    assert_eq!(state.own.get("cloud"), Some(&theirs.updated_at));
    assert_eq!(state.peer.get("local"), Some(&mine.updated_at));
    let summary = requester.sync_until_idle(10).await.unwrap();
    assert!(summary.complete, "{summary:?}");
    assert_eq!((summary.applied, summary.shipped), (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn drive_round_messagepack_bearer() {
    drive_round(Codec::MessagePack).await;
}

#[tokio::test]
async fn drive_round_json_bearer() {
    drive_round(Codec::Json).await;
}

async fn app_round(codec: Codec, auth: Auth) {
    let time = shared_time();
    let cloud = Cloud::new(time.clone()).await;
    let server = TestServer::start(builder(&cloud).build().unwrap()).await;
    let local = Node::new("local", time.clone()).await;

    let file = local
        .put_row(RESERVED_TABLE, "f-local", Some(b"app file from local"))
        .await;
    let meta = local.put_row(TABLE, "m-local", None).await;
    let theirs = cloud
        .put_row(RESERVED_TABLE, "f-cloud", Some(b"app file from cloud"))
        .await;

    let client = server.client(auth);
    let requester = local.requester(&client, app(), codec);
    let summary = requester
        .sync_until_idle(10)
        .await
        .expect("rounds over HTTP");
    assert!(summary.complete, "{summary:?}");
    assert_eq!(summary.shipped, 2, "{summary:?}");
    assert_eq!(summary.applied, 1, "{summary:?}");

    let stored = cloud.rows.all(APP);
    assert_eq!(stored.len(), 3);
    assert!(stored
        .values()
        .any(|r| r.timestamp == file.timestamp && r.table == RESERVED_TABLE));
    assert!(stored.values().any(|r| r.timestamp == meta.timestamp));
    let key = |r: &sync_protocol::AppRow| {
        r.row.as_ref().unwrap()["object_storage_key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        cloud.blob(&key(&file)).await.as_ref(),
        b"app file from local"
    );
    assert_eq!(local.rows.all(APP).len(), 3);
    assert_eq!(
        local.blobs.bytes(&key(&theirs)).unwrap(),
        b"app file from cloud"
    );
    server.stop().await;
}

#[tokio::test]
async fn app_round_messagepack_bearer() {
    app_round(Codec::MessagePack, Auth::bearer(TOKEN_APP)).await;
}

#[tokio::test]
async fn app_round_json_bearer() {
    app_round(Codec::Json, Auth::bearer(TOKEN_ALL)).await;
}

#[tokio::test]
async fn app_round_messagepack_app_signature() {
    app_round(Codec::MessagePack, Auth::app_signature(APP, APP_SECRET)).await;
}

#[tokio::test]
async fn app_round_json_app_signature() {
    app_round(Codec::Json, Auth::app_signature(APP, APP_SECRET)).await;
}

/// One pooled client serves several channels, and its connections are reused.
#[tokio::test]
async fn one_client_serves_every_channel() {
    let time = shared_time();
    let cloud = Cloud::new(time.clone()).await;
    let server = TestServer::start(builder(&cloud).build().unwrap()).await;
    let local = Node::new("local", time.clone()).await;
    local.put_record("r", b"x").await;
    local.put_row(TABLE, "m", None).await;
    let client = server.client(Auth::bearer(TOKEN_ALL));
    for channel in [Channel::Drive, app()] {
        for codec in [Codec::MessagePack, Codec::Json] {
            let s = local
                .requester(&client, channel.clone(), codec)
                .sync_until_idle(10)
                .await
                .unwrap();
            assert!(s.complete);
        }
    }
    assert_eq!(cloud.records.all().len(), 1);
    assert_eq!(cloud.rows.all(APP).len(), 1);
    server.stop().await;
}
