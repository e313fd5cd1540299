//! Blobs both ways through `HttpObjectStore` and the `/files` routes: small and multi-MiB
//! objects, streamed uploads in parts (bearer and app signature), ranges, stat, delete.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, StatusCode};
use object_store::{
    path::Path, Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt,
    PutOptions,
};
use sha2::{Digest, Sha256};
use sync_core::Channel;
use sync_http::{Auth, ServerConfig};

use crate::common::*;

async fn server_with_small_parts() -> (Arc<Cloud>, TestServer) {
    let cloud = Cloud::new(shared_time()).await;
    let service = builder(&cloud)
        .config(ServerConfig::default().with_blob_part_size(1 << 20))
        .build()
        .unwrap();
    (cloud.clone(), TestServer::start(service).await)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn files_round_trip_put_head_get_stat_delete() {
    // HN-04 over raw HTTP.
    let (_, s) = server_with_small_parts().await;
    let auth = [("authorization", "Bearer token-all")];
    let r = raw(
        &s.base,
        Method::PUT,
        "/files/shared/k",
        &auth,
        vec![1u8, 2, 3],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = raw(&s.base, Method::HEAD, "/files/shared/k", &auth, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("content-length").unwrap(), "3");
    let r = raw(&s.base, Method::GET, "/files/shared/k", &auth, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), &[1, 2, 3]);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/octet-stream"
    );
    let r = raw(&s.base, Method::GET, "/files/shared/k/stat", &auth, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["sizeBytes"], 3);
    let r = raw(&s.base, Method::DELETE, "/files/shared/k", &auth, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = raw(&s.base, Method::HEAD, "/files/shared/k", &auth, "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Deleting a missing key is fine too.
    let r = raw(&s.base, Method::DELETE, "/files/shared/k", &auth, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn object_store_put_get_head_delete_with_content_type_and_odd_keys() {
    let (cloud, s) = server_with_small_parts().await;
    let store = s
        .client(Auth::bearer(TOKEN_DRIVE))
        .object_store(Channel::Drive);
    for key in ["shared/a b/c+d?e#f", "shared/ünï/stat", "shared/x/%41"] {
        let path = Path::parse(key).unwrap();
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "text/plain".into());
        store
            .put_opts(&path, "hello".into(), PutOptions::from(attributes))
            .await
            .unwrap();
        assert_eq!(cloud.blob(key).await.as_ref(), b"hello", "{key}");
        let got = store.get(&path).await.unwrap();
        assert_eq!(got.meta.size, 5);
        assert_eq!(
            got.attributes
                .get(&Attribute::ContentType)
                .map(|v| v.to_string()),
            Some("text/plain".into())
        );
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello");
        let meta = store.head(&path).await.unwrap();
        assert_eq!((meta.size, meta.location.as_ref()), (5, key));
        store.delete(&path).await.unwrap();
        assert!(!cloud.has_blob(key).await);
        assert!(matches!(
            store.get(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(matches!(
            store.head(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
    // Outside the namespace and bad credentials map to object_store's errors.
    let outside = Path::parse("apps/test-app/x").unwrap();
    assert!(matches!(
        store.put(&outside, "x".into()).await,
        Err(object_store::Error::PermissionDenied { .. })
    ));
    let anonymous = s.client(Auth::None).object_store(Channel::Drive);
    assert!(matches!(
        anonymous.head(&Path::parse("shared/x").unwrap()).await,
        Err(object_store::Error::Unauthenticated { .. })
    ));
    assert!(matches!(
        store.list(None).next().await,
        Some(Err(object_store::Error::NotImplemented { .. }))
    ));
}

/// A few MiB up in parts through one chunked PUT, and down as a stream of chunks.
async fn multipart_round_trip(auth: Auth, channel: Channel, key: &str) {
    let (cloud, s) = server_with_small_parts().await;
    let store = s.client(auth).object_store(channel);
    let path = Path::parse(key).unwrap();
    let data = pattern(5 * (1 << 20) + 12345);
    let mut upload = store.put_multipart(&path).await.unwrap();
    for part in data.chunks(700 * 1024) {
        upload
            .put_part(Bytes::copy_from_slice(part).into())
            .await
            .unwrap();
    }
    // Nothing is visible before completion.
    assert!(!cloud.has_blob(key).await);
    upload.complete().await.unwrap();
    assert_eq!(
        Sha256::digest(cloud.blob(key).await),
        Sha256::digest(&data),
        "stored bytes"
    );

    let got = store.get(&path).await.unwrap();
    assert_eq!(got.meta.size, data.len() as u64);
    let mut stream = got.into_stream();
    let (mut chunks, mut hasher, mut total) = (0, Sha256::new(), 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        total += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(total, data.len());
    assert_eq!(hasher.finalize(), Sha256::digest(&data));
    assert!(chunks > 1, "the body arrived as a stream, not one buffer");

    // Ranges: bounded, offset, suffix.
    assert_eq!(
        store.get_range(&path, 1000..1010).await.unwrap().as_ref(),
        &data[1000..1010]
    );
    let tail = store
        .get_opts(
            &path,
            GetOptions::new().with_range(Some(GetRange::Suffix(7))),
        )
        .await
        .unwrap();
    assert_eq!(tail.range, (data.len() as u64 - 7)..data.len() as u64);
    assert_eq!(
        tail.bytes().await.unwrap().as_ref(),
        &data[data.len() - 7..]
    );
    let from = store
        .get_opts(
            &path,
            GetOptions::new().with_range(Some(GetRange::Offset(data.len() as u64 - 3))),
        )
        .await
        .unwrap();
    assert_eq!(
        from.bytes().await.unwrap().as_ref(),
        &data[data.len() - 3..]
    );
    s.stop().await;
}

#[tokio::test]
async fn multipart_upload_streams_a_few_mib_with_bearer() {
    multipart_round_trip(
        Auth::bearer(TOKEN_DRIVE),
        Channel::Drive,
        "shared/big/object",
    )
    .await;
}

#[tokio::test]
async fn multipart_upload_streams_a_few_mib_with_app_signature_trailer() {
    multipart_round_trip(
        Auth::app_signature(APP, APP_SECRET),
        app(),
        "apps/test-app/big/object",
    )
    .await;
}

#[tokio::test]
async fn signed_put_and_get_on_the_app_channel() {
    let (cloud, s) = server_with_small_parts().await;
    let store = s
        .client(Auth::app_signature(APP, APP_SECRET))
        .object_store(app());
    let path = Path::parse("apps/test-app/one").unwrap();
    // Larger than one server part, sent with Content-Length and signed as a whole.
    let data = pattern(3 << 20);
    store.put(&path, data.clone().into()).await.unwrap();
    assert_eq!(cloud.blob("apps/test-app/one").await.as_ref(), &data[..]);
    assert_eq!(
        store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );
    store.delete(&path).await.unwrap();
    assert!(!cloud.has_blob("apps/test-app/one").await);
}

#[tokio::test]
async fn refused_or_aborted_uploads_store_nothing() {
    let (cloud, s) = server_with_small_parts().await;
    let before = cloud.snapshot().await;
    let path = Path::parse("apps/test-app/secret").unwrap();
    let data = pattern(3 << 20);

    // A wrong secret: the trailer signature fails after the body streamed; nothing stored.
    let bad = s
        .client(Auth::app_signature(APP, "not-the-secret"))
        .object_store(app());
    let mut upload = bad.put_multipart(&path).await.unwrap();
    for part in data.chunks(1 << 20) {
        let _ = upload.put_part(Bytes::copy_from_slice(part).into()).await;
    }
    assert!(matches!(
        upload.complete().await,
        Err(object_store::Error::Unauthenticated { .. })
    ));
    assert!(matches!(
        bad.put(&path, "x".into()).await,
        Err(object_store::Error::Unauthenticated { .. })
    ));

    // An aborted upload, and a dropped one.
    let good = s.client(Auth::bearer(TOKEN_APP)).object_store(app());
    let mut upload = good.put_multipart(&path).await.unwrap();
    upload
        .put_part(Bytes::from(data.clone()).into())
        .await
        .unwrap();
    upload.abort().await.unwrap();
    let mut upload = good.put_multipart(&path).await.unwrap();
    upload
        .put_part(Bytes::from(data.clone()).into())
        .await
        .unwrap();
    drop(upload);
    // The server sees a body that ends without finishing and never completes the upload.
    let r = raw(
        &s.base,
        Method::GET,
        "/apps/test-app/files/apps/test-app/secret",
        &[("authorization", "Bearer token-all")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(cloud.snapshot().await, before);
}

#[tokio::test]
async fn range_outside_the_object_is_416() {
    let (_, s) = server_with_small_parts().await;
    let auth = [("authorization", "Bearer token-all")];
    raw(&s.base, Method::PUT, "/files/shared/r", &auth, "abc").await;
    let r = raw(
        &s.base,
        Method::GET,
        "/files/shared/r",
        &[
            ("authorization", "Bearer token-all"),
            ("range", "bytes=10-20"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers.get("content-range").unwrap(), "bytes */3");
    let r = raw(
        &s.base,
        Method::GET,
        "/files/shared/r",
        &[("authorization", "Bearer token-all"), ("range", "bytes=1-")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), b"bc");
    assert_eq!(r.headers.get("content-range").unwrap(), "bytes 1-2/3");
}

/// Whether an `io::Error` of `kind` is in the source chain (how a caller that does not know
/// this crate tells a retryable failure).
fn has_io_kind(e: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[tokio::test]
async fn transport_failures_and_status_codes_are_recognizable_without_this_crate() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let store = sync_http::HttpClient::new(&base, Auth::None)
        .unwrap()
        .object_store(Channel::Drive);
    let e = store
        .head(&Path::parse("shared/x").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, object_store::Error::Generic { .. }), "{e:?}");
    assert!(
        has_io_kind(&e, std::io::ErrorKind::ConnectionAborted),
        "{e:?}"
    );

    // A refused request names its status the way object_store's HTTP stores do.
    let (_, s) = server_with_small_parts().await;
    let outside = s
        .client(Auth::bearer(TOKEN_APP))
        .object_store(Channel::Drive);
    let e = outside
        .head(&Path::parse("shared/x").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("status code: 403 Forbidden"), "{e}");
}

/// The blob store behind the routes (`SyncServiceBuilder::blob_store`): what it was told.
#[derive(Default)]
struct Noting {
    syncs: std::sync::atomic::AtomicUsize,
    notes: std::sync::Mutex<Vec<(String, String, sync_core::BlobStamp)>>,
}

#[async_trait::async_trait]
impl sync_core::BlobStore for Noting {
    async fn contains(&self, _key: &str) -> Result<bool, sync_core::BlobError> {
        Ok(false)
    }

    async fn sync(&self) -> Result<(), sync_core::BlobError> {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn note_written(&self, key: &str, sha256: &str, stamp: &sync_core::BlobStamp) {
        self.notes
            .lock()
            .unwrap()
            .push((key.into(), sha256.into(), stamp.clone()));
    }
}

/// Every upload is synced before it is acknowledged, and the blob store is told its SHA-256
/// (hashed as it streamed) with the stamp a HEAD of the stored object gives, so a responder
/// need not read it back to verify it: a single put and a multipart upload alike. A refused
/// upload (over the cap) tells nothing.
#[tokio::test]
async fn uploads_are_synced_and_their_digests_noted_with_their_stamps() {
    let cloud = Cloud::new(shared_time()).await;
    let noting = Arc::new(Noting::default());
    let service = builder(&cloud)
        .config(
            ServerConfig::default()
                .with_blob_part_size(1 << 20)
                .with_blob_body_limit(8 << 20),
        )
        .blob_store(noting.clone())
        .build()
        .unwrap();
    let s = TestServer::start(service).await;
    let store = s
        .client(Auth::bearer(TOKEN_DRIVE))
        .object_store(Channel::Drive);
    for (key, len) in [("shared/n/small", 300), ("shared/n/parts", 3 << 20)] {
        let data = pattern(len);
        store
            .put(&Path::from(key), data.clone().into())
            .await
            .unwrap();
        let head = cloud.blobs.head(&Path::from(key)).await.unwrap();
        let notes = noting.notes.lock().unwrap().clone();
        let (noted_key, sha, stamp) = notes.last().expect("a note").clone();
        assert_eq!(noted_key, key);
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
        assert_eq!(
            stamp,
            sync_core::BlobStamp::new(head.size, head.e_tag.clone())
        );
        assert!(stamp.e_tag.is_some());
    }
    assert_eq!(noting.notes.lock().unwrap().len(), 2);
    assert_eq!(
        noting.syncs.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one sync per upload"
    );
    let refused = raw(
        &s.base,
        Method::PUT,
        "/files/shared/n/huge",
        &[("authorization", &format!("Bearer {TOKEN_DRIVE}"))],
        pattern(9 << 20),
    )
    .await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(noting.notes.lock().unwrap().len(), 2, "nothing noted");
    s.stop().await;
}
