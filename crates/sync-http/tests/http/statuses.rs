//! Every status the service answers, pinned one test each, and how the client reports them.

use std::{convert::Infallible, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{Full, StreamBody};
use object_store::{memory::InMemory, ObjectStore};
use sync_core::{Channel, ExchangeError, ExchangeTransport};
use sync_http::{serve, Auth, HttpClient, ServerConfig, SyncService};
use sync_protocol::{Codec, ExchangeRequest, ExchangeResponse};

use crate::common::*;

const EXCHANGE: &str = "/sync/exchange";
const APP_EXCHANGE: &str = "/apps/test-app/sync/exchange";

async fn server() -> (Arc<Cloud>, TestServer) {
    let cloud = Cloud::new(shared_time()).await;
    let server = TestServer::start(builder(&cloud).build().unwrap()).await;
    (cloud, server)
}

async fn post_json(base: &str, path: &str, token: &str, body: &str) -> Raw {
    let auth = format!("Bearer {token}");
    raw(
        base,
        Method::POST,
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn status_200_health_needs_no_credentials() {
    let (_, s) = server().await;
    let r = raw(&s.base, Method::GET, "/health", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test]
async fn status_400_malformed_json_mentions_json() {
    let (_, s) = server().await;
    let r = post_json(&s.base, EXCHANGE, TOKEN_ALL, "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("JSON"), "{}", r.error());
}

#[tokio::test]
async fn status_400_malformed_messagepack_mentions_messagepack() {
    let (_, s) = server().await;
    let r = raw(
        &s.base,
        Method::POST,
        EXCHANGE,
        &[
            ("content-type", "application/msgpack"),
            ("authorization", "Bearer token-all"),
        ],
        vec![0xc1u8, 0x00, 0xff],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("MessagePack"), "{}", r.error());
}

#[tokio::test]
async fn status_400_bad_watermark_hlc_and_node_id_name_the_field() {
    let (_, s) = server().await;
    let not_json = post_json(&s.base, EXCHANGE, TOKEN_ALL, "{not json")
        .await
        .error();
    for (body, mentions) in [
        (r#"{"watermarks":{"L":"not-an-hlc"}}"#, "watermarks"),
        (r#"{"watermarks":[]}"#, "watermarks"),
        (
            r#"{"watermarks":{"L":{"wallTime":-1,"counter":0,"nodeId":"L"}}}"#,
            "watermarks",
        ),
        (
            r#"{"watermarks":{"L":{"wallTime":1.5,"counter":0,"nodeId":"L"}}}"#,
            "watermarks",
        ),
        (
            r#"{"watermarks":{"bad id!":{"wallTime":1,"counter":0,"nodeId":"bad id!"}}}"#,
            "watermarks",
        ),
        (
            r#"{"watermarks":{"L":{"wallTime":1,"counter":0,"nodeId":"M"}}}"#,
            "watermarks",
        ),
        (r#"{"watermarks":{},"records":{}}"#, "records"),
        (r#"{"watermarks":{},"limit":"5"}"#, "limit"),
        ("[]", "JSON"),
        ("null", "JSON"),
    ] {
        let r = post_json(&s.base, EXCHANGE, TOKEN_ALL, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let e = r.error();
        assert!(e.contains(mentions), "{body}: {e}");
        assert_ne!(e, not_json);
    }
}

#[tokio::test]
async fn status_400_limit_zero() {
    let (_, s) = server().await;
    let r = post_json(
        &s.base,
        EXCHANGE,
        TOKEN_ALL,
        r#"{"watermarks":{},"limit":0}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("limit"), "{}", r.error());
}

#[tokio::test]
async fn status_400_channel_split_violation() {
    let (cloud, s) = server().await;
    // A shared record on an app channel is refused loudly (SPEC §5.5).
    let fixture = include_str!("../../../sync-protocol/fixtures/ts-exchange-request-upload.json");
    let mut v: serde_json::Value = serde_json::from_str(fixture).unwrap();
    v.as_object_mut().unwrap().remove("appSyncableRows");
    let before = cloud.snapshot().await;
    let r = post_json(&s.base, APP_EXCHANGE, TOKEN_ALL, &v.to_string()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("does not carry shared records"),
        "{}",
        r.error()
    );
    assert_eq!(cloud.snapshot().await, before);
}

#[tokio::test]
async fn status_400_path_traversal_and_bad_percent_encoding() {
    let (cloud, s) = server().await;
    let before = cloud.snapshot().await;
    for path in [
        "/files/shared/../etc/passwd",
        "/files/shared/%2E%2E/x",
        "/files/shared/./x",
        "/files/shared//x",
        "/files/shared/x/",
        "/files/%2Fetc/passwd",
        "/files/shared/%zz",
        "/files/shared/%4",
        "/files/shared/%00x",
        "/files/shared/a%5Cb",
        "/files/shared/%FF%FE",
        "/apps/../files/shared/x",
        "/apps/b%20d/files/apps/x/y",
    ] {
        for method in [Method::PUT, Method::GET] {
            let r = raw(
                &s.base,
                method.clone(),
                path,
                &[("authorization", "Bearer token-all")],
                "x",
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert!(!r.error().is_empty());
        }
    }
    assert_eq!(cloud.snapshot().await, before);
}

#[tokio::test]
async fn status_401_missing_or_bad_token() {
    let (_, s) = server().await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
        vec![("authorization", "Bearer ")],
    ] {
        let mut all = vec![("content-type", "application/json")];
        all.extend(headers.iter().copied());
        let r = raw(&s.base, Method::POST, EXCHANGE, &all, "{}").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(r.headers.contains_key("www-authenticate"));
        r.error();
        let r = raw(&s.base, Method::GET, "/files/shared/x", &headers, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn status_401_bad_app_signature() {
    let (_, s) = server().await;
    let body = br#"{"watermarks":{}}"#;
    let ts = now_ms();
    for (secret, signed_body) in [
        ("wrong-secret", &body[..]),
        (APP_SECRET, &br#"{"watermarks":{},"limit":5}"#[..]),
    ] {
        let mut headers = signed(APP, secret, "POST", APP_EXCHANGE, ts, signed_body);
        headers.push(("content-type".into(), "application/json".into()));
        let r = raw(&s.base, Method::POST, APP_EXCHANGE, &h(&headers), &body[..]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.error().contains("signature"), "{}", r.error());
    }
    // Signed for another path.
    let mut headers = signed(APP, APP_SECRET, "POST", "/sync/exchange", ts, body);
    headers.push(("content-type".into(), "application/json".into()));
    let r = raw(&s.base, Method::POST, APP_EXCHANGE, &h(&headers), &body[..]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Unknown app, and an incomplete header set.
    let headers = signed(
        "other-app",
        APP_SECRET,
        "GET",
        "/apps/other-app/files/apps/other-app/x",
        ts,
        b"",
    );
    let r = raw(
        &s.base,
        Method::GET,
        "/apps/other-app/files/apps/other-app/x",
        &h(&headers),
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = raw(
        &s.base,
        Method::GET,
        "/apps/test-app/files/apps/test-app/x",
        &[("x-starkeep-app-id", APP)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn status_401_expired_or_future_timestamp() {
    let (_, s) = server().await;
    let body = br#"{"watermarks":{}}"#;
    for ts in [now_ms() - 6 * 60_000, now_ms() + 6 * 60_000] {
        let mut headers = signed(APP, APP_SECRET, "POST", APP_EXCHANGE, ts, body);
        headers.push(("content-type".into(), "application/json".into()));
        let r = raw(&s.base, Method::POST, APP_EXCHANGE, &h(&headers), &body[..]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.error().contains("outside"), "{}", r.error());
    }
    // Through the client, with its injected clock 10 minutes behind.
    let client = HttpClient::builder(&s.base)
        .auth(Auth::app_signature(APP, APP_SECRET))
        .clock(|| now_ms() - 10 * 60_000)
        .build()
        .unwrap();
    let e = client
        .transport(app())
        .exchange(ExchangeRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ExchangeError::Unauthorized(_)), "{e:?}");
    assert!(e.to_string().contains("401"), "{e}");
}

#[tokio::test]
async fn status_401_replayed_signature() {
    let (_, s) = server().await;
    let body = br#"{"watermarks":{}}"#;
    let mut headers = signed(APP, APP_SECRET, "POST", APP_EXCHANGE, now_ms(), body);
    headers.push(("content-type".into(), "application/json".into()));
    let first = raw(&s.base, Method::POST, APP_EXCHANGE, &h(&headers), &body[..]).await;
    assert_eq!(first.status, StatusCode::OK);
    let replay = raw(&s.base, Method::POST, APP_EXCHANGE, &h(&headers), &body[..]).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(replay.error().contains("replayed"), "{}", replay.error());
    // The same body signed a millisecond later is a new request.
    let mut fresh = signed(APP, APP_SECRET, "POST", APP_EXCHANGE, now_ms() + 1, body);
    fresh.push(("content-type".into(), "application/json".into()));
    let r = raw(&s.base, Method::POST, APP_EXCHANGE, &h(&fresh), &body[..]).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn status_403_token_outside_its_channels() {
    let (_, s) = server().await;
    let r = post_json(&s.base, APP_EXCHANGE, TOKEN_DRIVE, "{}").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    r.error();
    let r = post_json(&s.base, EXCHANGE, TOKEN_APP, "{}").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // An app signature reaches its own channel only.
    let body = b"{}";
    let mut headers = signed(APP, APP_SECRET, "POST", EXCHANGE, now_ms(), body);
    headers.push(("content-type".into(), "application/json".into()));
    let r = raw(&s.base, Method::POST, EXCHANGE, &h(&headers), &body[..]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // And the client reports it as Unauthorized.
    let e = s
        .client(Auth::bearer(TOKEN_DRIVE))
        .transport(app())
        .exchange(ExchangeRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ExchangeError::Unauthorized(_)), "{e:?}");
}

#[tokio::test]
async fn status_403_key_outside_the_channel_namespace() {
    let (cloud, s) = server().await;
    let before = cloud.snapshot().await;
    for (method, path) in [
        (Method::PUT, "/files/apps/test-app/x"),
        (Method::PUT, "/files/private/x"),
        (Method::GET, "/files/apps/test-app/x"),
        (Method::PUT, "/apps/test-app/files/shared/x"),
        (Method::PUT, "/apps/test-app/files/apps/test-app2/x"),
        (Method::DELETE, "/apps/test-app/files/shared/x"),
        (Method::HEAD, "/apps/test-app/files/apps/other/x"),
    ] {
        let r = raw(
            &s.base,
            method.clone(),
            path,
            &[("authorization", "Bearer token-all")],
            "x",
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
        if method != Method::HEAD {
            assert!(r.error().contains("namespace"), "{}", r.error());
        }
    }
    assert_eq!(cloud.snapshot().await, before);
}

#[tokio::test]
async fn status_404_unknown_app_route_and_key() {
    let (_, s) = server().await;
    let r = post_json(&s.base, "/apps/nope/sync/exchange", TOKEN_ALL, "{}").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("unknown app nope"), "{}", r.error());
    let r = raw(
        &s.base,
        Method::GET,
        "/apps/nope/files/apps/nope/x",
        &[("authorization", "Bearer token-all")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for path in [
        "/",
        "/sync",
        "/sync/exchange/",
        "/files",
        "/apps/test-app",
        "/nope",
    ] {
        let r = raw(
            &s.base,
            Method::POST,
            path,
            &[("authorization", "Bearer token-all")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        r.error();
    }
    for path in ["/files/shared/missing", "/files/shared/missing/stat"] {
        let r = raw(
            &s.base,
            Method::GET,
            path,
            &[("authorization", "Bearer token-all")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    // The client reports a 404 as a refused request, with the body's stable code.
    let e = s
        .client(Auth::bearer(TOKEN_ALL))
        .transport(Channel::App("nope".into()))
        .exchange(ExchangeRequest::default())
        .await
        .unwrap_err();
    match &e {
        ExchangeError::Refused { code, message } => {
            assert_eq!(*code, "unknown_app");
            assert!(message.contains("unknown app nope"), "{message}");
        }
        other => panic!("expected a coded refusal, got {other:?}"),
    }
    assert!(!e.is_transient(), "{e:?}");
}

#[tokio::test]
async fn status_405_wrong_method_names_the_allowed_ones() {
    let (_, s) = server().await;
    for (method, path, allow) in [
        (Method::GET, EXCHANGE, "POST"),
        (Method::PUT, APP_EXCHANGE, "POST"),
        (Method::POST, "/files/shared/x", "GET, HEAD, PUT, DELETE"),
        (
            Method::PATCH,
            "/apps/test-app/files/apps/test-app/x",
            "GET, HEAD, PUT, DELETE",
        ),
        (Method::POST, "/health", "GET, HEAD"),
    ] {
        let r = raw(&s.base, method.clone(), path, &[], "").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.headers.get("allow").unwrap(), allow);
        r.error();
    }
}

#[tokio::test]
async fn status_413_oversized_exchange_body() {
    let (cloud, s) = server().await;
    let before = cloud.snapshot().await;
    // Over the default 32 MiB cap, announced by Content-Length: refused before reading.
    let big = vec![b' '; (32 << 20) + 1];
    let r = raw(
        &s.base,
        Method::POST,
        EXCHANGE,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer token-all"),
        ],
        big,
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.error().contains("larger than"), "{}", r.error());
    assert_eq!(cloud.snapshot().await, before);
}

/// Streams `chunks` as a chunked body (no Content-Length) through the service.
async fn chunked(
    service: SyncService,
    path: &str,
    method: Method,
    chunks: Vec<Bytes>,
) -> StatusCode {
    use tower::ServiceExt;
    let body = StreamBody::new(futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(c))),
    ));
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", "Bearer token-all")
        .body(body)
        .unwrap();
    service.oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn status_413_oversized_chunked_bodies_exchange_and_blob() {
    let cloud = Cloud::new(shared_time()).await;
    let service = builder(&cloud)
        .config(
            ServerConfig::default()
                .with_exchange_body_limit(1024)
                .with_blob_body_limit(4096)
                .with_blob_part_size(1024),
        )
        .build()
        .unwrap();
    let before = cloud.snapshot().await;
    let chunks = || vec![Bytes::from(vec![b' '; 1000]); 5];
    assert_eq!(
        chunked(service.clone(), EXCHANGE, Method::POST, chunks()).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The blob cap is separate: 5000 bytes streamed in 1 KiB parts, refused at 4 KiB, and
    // the multipart upload it had started is aborted.
    assert_eq!(
        chunked(service.clone(), "/files/shared/big", Method::PUT, chunks()).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(cloud.snapshot().await, before);
    // At the cap it is fine.
    assert_eq!(
        chunked(
            service,
            "/files/shared/big",
            Method::PUT,
            vec![Bytes::from(vec![1u8; 4096])]
        )
        .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn status_415_unsupported_content_type() {
    let (_, s) = server().await;
    for headers in [
        vec![
            ("content-type", "text/plain"),
            ("authorization", "Bearer token-all"),
        ],
        vec![("authorization", "Bearer token-all")],
    ] {
        let r = raw(&s.base, Method::POST, EXCHANGE, &headers, "{}").await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(r.error().contains("application/msgpack"), "{}", r.error());
    }
}

/// A responder that always fails with the given error.
struct Failing(fn() -> ExchangeError);

#[async_trait]
impl ExchangeTransport for Failing {
    async fn exchange(&self, _: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        Err((self.0)())
    }
}

#[tokio::test]
async fn status_503_transient_and_500_fatal_responder_failures() {
    let provider = |channel: &Channel| -> Option<Arc<dyn ExchangeTransport>> {
        match channel {
            Channel::App(a) if a == "flaky" => {
                Some(Arc::new(Failing(|| ExchangeError::Transient {
                    message: "database busy".into(),
                    source: None,
                })))
            }
            Channel::App(a) if a == "broken" => Some(Arc::new(Failing(|| ExchangeError::Fatal {
                message: "schema is newer".into(),
                source: None,
            }))),
            _ => None,
        }
    };
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let service = SyncService::builder(provider, store)
        .bearer_token(TOKEN_ALL, sync_http::Scope::All)
        .build()
        .unwrap();
    let s = TestServer::start(service).await;
    let r = post_json(&s.base, "/apps/flaky/sync/exchange", TOKEN_ALL, "{}").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert!(r.error().contains("database busy"));
    let r = post_json(&s.base, "/apps/broken/sync/exchange", TOKEN_ALL, "{}").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.error().contains("schema is newer"));
    // The client maps them: 503 -> Transient (retry), 500 -> Transient too (5xx).
    let client = s.client(Auth::bearer(TOKEN_ALL));
    let e = client
        .transport(Channel::App("flaky".into()))
        .exchange(ExchangeRequest::default())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains("503") && e.to_string().contains("database busy"),
        "{e}"
    );
}

#[tokio::test]
async fn client_connection_refused_is_transient() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = HttpClient::builder(&base)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let e = client
        .transport(Channel::Drive)
        .exchange(ExchangeRequest::default())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("connect"), "{e}");
}

#[tokio::test]
async fn client_rejects_bad_base_urls() {
    for url in [
        "https://example.invalid",
        "not a url",
        "/relative",
        "http://h/x?q=1",
    ] {
        assert!(HttpClient::new(url, Auth::None).is_err(), "{url}");
    }
    let c = HttpClient::new("http://127.0.0.1:1/prefix//", Auth::None).unwrap();
    assert_eq!(c.base_url(), "http://127.0.0.1:1/prefix");
}

/// A peer that answers every exchange with a fixed status, content type and body.
async fn fake_peer(
    content_type: &'static str,
    body: &'static str,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let service = tower::service_fn(
        move |_req: http::Request<hyper::body::Incoming>| async move {
            let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            r.headers_mut()
                .insert("content-type", http::HeaderValue::from_static(content_type));
            Ok::<_, Infallible>(r)
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, service, async {
        let _ = stopped.await;
    }));
    (base, stop)
}

#[tokio::test]
async fn client_validates_every_response() {
    const HLC: &str = r#"{"wallTime":1,"counter":0,"nodeId":"c"}"#;
    let ok = Box::leak(
        format!(r#"{{"responderWatermarks":{{"c":{HLC}}},"hasMore":false}}"#).into_boxed_str(),
    );
    let cases: Vec<(&'static str, &'static str, Option<&str>)> = vec![
        ("application/json", ok, None),
        (
            "application/json",
            r#"{"records":[],"appSyncableRows":[],"responderWatermarks":{}}"#,
            Some("hasMore"),
        ),
        (
            "application/json",
            r#"{"records":[],"appSyncableRows":[],"hasMore":true}"#,
            Some("responderWatermarks"),
        ),
        (
            "application/json",
            r#"{"responderWatermarks":{"L":"not-an-hlc"},"hasMore":false}"#,
            Some("responderWatermarks.L"),
        ),
        (
            "application/json",
            r#"{"records":{},"responderWatermarks":{},"hasMore":false}"#,
            Some("records"),
        ),
        (
            "application/json",
            r#"{"responderWatermarks":{},"hasMore":false,"haltedAuthors":[1]}"#,
            Some("haltedAuthors"),
        ),
        ("text/html", ok, Some("content type")),
        ("application/msgpack", ok, Some("content type")),
    ];
    for (content_type, body, names) in cases {
        let (base, _stop) = fake_peer(content_type, body).await;
        let client = HttpClient::builder(&base)
            .codec(Codec::Json)
            .build()
            .unwrap();
        let result = client
            .transport(Channel::Drive)
            .exchange(ExchangeRequest::default())
            .await;
        match names {
            None => {
                let r = result.unwrap();
                assert!(!r.has_more && r.records.is_empty());
            }
            Some(field) => {
                let e = result.unwrap_err();
                assert!(matches!(e, ExchangeError::MalformedResponse(_)), "{e:?}");
                assert!(e.to_string().contains(field), "{field}: {e}");
            }
        }
    }
}
