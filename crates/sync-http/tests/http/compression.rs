//! Compressed exchange bodies (zstd), negotiated with standard headers: responses for a
//! client that sends `Accept-Encoding: zstd`, requests once the server announced it takes
//! them; bounded inflation; a peer without it sees plain bodies.

use std::sync::{Arc, Mutex};

use http::{header, Method, StatusCode};
use serde_json::json;
use sync_core::Channel;
use sync_http::{Auth, HttpClient, ServerConfig};
use sync_protocol::{Codec, ExchangeResponse};

use crate::common::*;

const EXCHANGE: &str = "/sync/exchange";

/// A cloud holding enough records that a page is well above the compression threshold.
async fn busy_cloud() -> Arc<Cloud> {
    let cloud = Cloud::new(shared_time()).await;
    for i in 0..40 {
        cloud
            .put_record(&format!("r{i:03}"), format!("blob {i}").as_bytes())
            .await;
    }
    cloud
}

fn bearer() -> (String, String) {
    ("authorization".into(), format!("Bearer {TOKEN_DRIVE}"))
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, 3).unwrap()
}

#[tokio::test]
async fn a_response_is_compressed_only_for_a_client_that_asks() {
    let cloud = busy_cloud().await;
    let server = TestServer::start(builder(&cloud).build().unwrap()).await;
    let body = serde_json::to_vec(&json!({ "watermarks": {}, "limit": 1000 })).unwrap();

    let auth = bearer();
    let plain = raw(
        &server.base,
        Method::POST,
        EXCHANGE,
        &[("content-type", "application/json"), (&auth.0, &auth.1)],
        body.clone(),
    )
    .await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.headers.get(header::CONTENT_ENCODING).is_none());
    // The server announces that it takes compressed requests (RFC 7694).
    assert_eq!(plain.headers.get(header::ACCEPT_ENCODING).unwrap(), "zstd");
    let expected: ExchangeResponse = Codec::Json.decode(&plain.body).unwrap();
    assert_eq!(expected.records.len(), 40);

    let packed = raw(
        &server.base,
        Method::POST,
        EXCHANGE,
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip, zstd"),
            (&auth.0, &auth.1),
        ],
        body,
    )
    .await;
    assert_eq!(packed.status, StatusCode::OK);
    assert_eq!(
        packed.headers.get(header::CONTENT_ENCODING).unwrap(),
        "zstd"
    );
    assert!(
        packed.body.len() * 3 < plain.body.len(),
        "{} vs {} bytes",
        packed.body.len(),
        plain.body.len()
    );
    let inflated = zstd::stream::decode_all(&packed.body[..]).unwrap();
    let got: ExchangeResponse = Codec::Json.decode(&inflated).unwrap();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_compressed_request_is_read_and_a_signed_one_verifies_over_what_was_sent() {
    let cloud = Cloud::new(shared_time()).await;
    let server = TestServer::start(builder(&cloud).build().unwrap()).await;
    let at = cloud.now();
    let r = record("r1", at, "", "", 0);
    let request = json!({ "watermarks": {}, "records": [r], "limit": 10 });
    let body = zstd(&serde_json::to_vec(&request).unwrap());
    let auth = bearer();
    let answer = raw(
        &server.base,
        Method::POST,
        EXCHANGE,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "zstd"),
            (&auth.0, &auth.1),
        ],
        body,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert!(cloud.records.all().contains_key("r1"));

    // The app signature covers the compressed bytes, as sent.
    let row = row(TABLE, "row-1", cloud.now(), "", None);
    let body = zstd(&serde_json::to_vec(&json!({ "appSyncableRows": [row] })).unwrap());
    let path = format!("/apps/{APP}{EXCHANGE}");
    let sig = signed(APP, APP_SECRET, "POST", &path, now_ms(), &body);
    let mut headers = h(&sig);
    headers.push(("content-type", "application/json"));
    headers.push(("content-encoding", "zstd"));
    let answer = raw(&server.base, Method::POST, &path, &headers, body).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(cloud.rows.all(APP).len(), 1);
}

#[tokio::test]
async fn bad_encodings_are_refused_and_write_nothing() {
    let cloud = Cloud::new(shared_time()).await;
    let config = ServerConfig::default().with_exchange_body_limit(64 * 1024);
    let server = TestServer::start(builder(&cloud).config(config).build().unwrap()).await;
    let before = cloud.snapshot().await;
    let auth = bearer();
    let post = |encoding: &'static str, body: Vec<u8>| {
        let base = server.base.clone();
        let auth = auth.clone();
        async move {
            raw(
                &base,
                Method::POST,
                EXCHANGE,
                &[
                    ("content-type", "application/json"),
                    ("content-encoding", encoding),
                    (&auth.0, &auth.1),
                ],
                body,
            )
            .await
        }
    };
    let r = record("r1", cloud.now(), "", "", 0);
    let valid = serde_json::to_vec(&json!({ "records": [r] })).unwrap();

    let gzip = post("gzip", valid.clone()).await;
    assert_eq!(gzip.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(gzip.error().contains("gzip"), "{}", gzip.error());

    let garbage = post("zstd", b"this is not zstd at all".to_vec()).await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert!(garbage.error().contains("zstd"), "{}", garbage.error());

    // A small body that inflates past the cap: 413, however small it was on the wire.
    let mut bomb = b"{\"watermarks\":{},\"x\":\"".to_vec();
    bomb.extend(std::iter::repeat_n(b'a', 4 << 20));
    bomb.extend(b"\"}");
    let bomb = zstd(&bomb);
    assert!(bomb.len() < 64 * 1024);
    let answer = post("zstd", bomb).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Declared zstd but sent plain: refused as invalid.
    let plain = post("zstd", valid).await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    assert_eq!(cloud.snapshot().await, before, "nothing was written");
}

#[tokio::test]
async fn a_server_without_compression_refuses_it_and_never_compresses() {
    let cloud = busy_cloud().await;
    let config = ServerConfig::default().with_compression(false);
    let server = TestServer::start(builder(&cloud).config(config).build().unwrap()).await;
    let auth = bearer();
    let body = serde_json::to_vec(&json!({ "watermarks": {} })).unwrap();
    let answer = raw(
        &server.base,
        Method::POST,
        EXCHANGE,
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "zstd"),
            (&auth.0, &auth.1),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers.get(header::CONTENT_ENCODING).is_none());
    assert!(answer.headers.get(header::ACCEPT_ENCODING).is_none());
    let answer = raw(
        &server.base,
        Method::POST,
        EXCHANGE,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "zstd"),
            (&auth.0, &auth.1),
        ],
        zstd(&body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// What the server saw of each exchange: the request's and the response's content coding.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// The standard service behind a layer that records each exchange's content codings.
async fn recording_server(cloud: &Cloud, config: ServerConfig) -> (TestServer, Seen) {
    let service = builder(cloud).config(config).build().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let recording = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        let log = log.clone();
        async move {
            let coding = |h: &http::HeaderMap| {
                h.get(header::CONTENT_ENCODING)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            let asked = coding(req.headers());
            let exchange = req.uri().path().ends_with(EXCHANGE);
            let response = tower::Service::call(&mut service, req).await?;
            if exchange {
                log.lock()
                    .unwrap()
                    .push((asked, coding(response.headers())));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    (TestServer::start_service(recording).await, seen)
}

async fn rounds_with(client_compression: bool, server_compression: bool) -> Seen {
    let time = shared_time();
    let cloud = Cloud::new(time.clone()).await;
    let config = ServerConfig::default().with_compression(server_compression);
    let (server, seen) = recording_server(&cloud, config).await;
    let local = Node::new("local", time).await;
    let client = HttpClient::builder(&server.base)
        .auth(Auth::bearer(TOKEN_DRIVE))
        .compression(client_compression)
        .build()
        .unwrap();
    let requester = local.requester(&client, Channel::Drive, Codec::MessagePack);
    for round in 0..3 {
        for i in 0..30 {
            local
                .put_record(&format!("up-{round}-{i}"), b"local bytes")
                .await;
            cloud
                .put_record(&format!("down-{round}-{i}"), b"cloud bytes")
                .await;
        }
        let report = requester.exchange().await.expect("round");
        assert_eq!((report.shipped, report.applied), (30, 30), "{report:?}");
        assert!(report.failures.is_empty(), "{report:?}");
    }
    assert_eq!(cloud.records.all().len(), 180);
    assert_eq!(local.records.all().len(), 180);
    server.stop().await;
    seen
}

#[tokio::test]
async fn rounds_compress_both_ways_once_negotiated_and_never_with_a_plain_peer() {
    let seen = rounds_with(true, true).await;
    let seen = seen.lock().unwrap().clone();
    let zstd = Some("zstd".to_string());
    // First request: the server has not said it takes zstd yet. Every response: compressed.
    assert_eq!(seen[0], (None, zstd.clone()));
    assert_eq!(seen[1], (zstd.clone(), zstd.clone()));
    assert_eq!(seen[2], (zstd.clone(), zstd.clone()));

    for (client, server) in [(false, true), (true, false), (false, false)] {
        let seen = rounds_with(client, server).await;
        assert!(
            seen.lock().unwrap().iter().all(|s| *s == (None, None)),
            "client {client}, server {server}: {:?}",
            seen.lock().unwrap()
        );
    }
}
