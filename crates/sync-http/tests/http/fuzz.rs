//! Arbitrary bytes and paths thrown at the service itself (no socket): never a 5xx, never a
//! panic, and nothing written unless the request was a well-formed, authorized write.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::Full;
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use sync_http::ServerConfig;
use tower::ServiceExt;

use crate::common::*;

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "shared", "apps", "test-app", "photos", "nope", "files", "sync", "exchange",
            "stat", "health", "..", ".", "", "%2F", "%2E%2E", "%00", "%zz", "%", "%4", "%FF",
        ])
        .prop_map(String::from),
        2 => "[a-z0-9]{1,8}",
        2 => "[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        // Mostly near the real routes, so the deep checks are reached.
        3 => (
            prop::sample::select(vec!["", "/apps/test-app", "/apps/photos", "/apps/nope", "/apps/..", "/apps/"]),
            prop::sample::select(vec!["/sync/exchange", "/files/shared/", "/files/apps/test-app/", "/files/"]),
            prop::collection::vec(segment(), 0..4),
        )
            .prop_map(|(base, route, rest)| format!("{base}{route}{}", rest.join("/"))),
        1 => prop::collection::vec(segment(), 0..6).prop_map(|s| format!("/{}", s.join("/"))),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..256),
        1 => prop::sample::select(vec![
            r#"{"watermarks":{}}"#,
            r#"{"watermarks":{"L":"x"}}"#,
            r#"{"watermarks":{},"limit":0}"#,
            r#"{"watermarks":{},"records":[{}]}"#,
            r#"{"watermarks":{},"appSyncableRows":[{"appId":"nope"}]}"#,
            "null", "[]", "{", "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => "[ -~]{0,64}".prop_map(String::into_bytes),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Cred {
    None,
    All,
    Drive,
    Bad,
    Signed,
}

#[test]
fn arbitrary_requests_never_get_a_5xx_and_write_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cloud = rt.block_on(Cloud::new(shared_time()));
    let service = builder(&cloud)
        .config(
            ServerConfig::default()
                .with_exchange_body_limit(200)
                .with_blob_body_limit(200)
                .with_blob_part_size(64),
        )
        .build()
        .unwrap();
    let ts = AtomicU64::new(now_ms());
    let strategy = (
        prop::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ]),
        path(),
        prop::option::of(prop::sample::select(vec![
            "application/json",
            "application/msgpack",
            "text/plain",
            "application/json; charset=utf-8",
        ])),
        prop::sample::select(vec![
            Cred::None,
            Cred::All,
            Cred::Drive,
            Cred::Bad,
            Cred::Signed,
        ]),
        body(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let answered = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    runner
        .run(&strategy, |(method, path, content_type, cred, body)| {
            let Ok(uri) = path.parse::<Uri>() else {
                return Ok(());
            };
            let mut request = Request::builder().method(method.clone()).uri(uri);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            match cred {
                Cred::None => {}
                Cred::All => request = request.header("authorization", "Bearer token-all"),
                Cred::Drive => request = request.header("authorization", "Bearer token-drive"),
                Cred::Bad => request = request.header("authorization", "Bearer nope"),
                Cred::Signed => {
                    let t = ts.fetch_add(1, Ordering::Relaxed);
                    for (k, v) in signed(APP, APP_SECRET, method.as_str(), &path, t, &body) {
                        request = request.header(k, v);
                    }
                }
            }
            let request = request.body(Full::new(Bytes::from(body))).unwrap();
            let (status, before, after) = rt.block_on(async {
                let before = cloud.snapshot().await;
                let response = service.clone().oneshot(request).await.unwrap();
                (response.status(), before, cloud.snapshot().await)
            });
            *answered.lock().unwrap().entry(status.as_u16()).or_default() += 1;
            if status.is_server_error() {
                return Err(TestCaseError::fail(format!("{method} {path}: {status}")));
            }
            let may_write = status.is_success()
                && (method == Method::PUT || method == Method::DELETE || method == Method::POST);
            if !may_write && before != after {
                return Err(TestCaseError::fail(format!(
                    "{method} {path} answered {status} but changed the stores"
                )));
            }
            Ok(())
        })
        .unwrap();
    // The generator reaches deep: refusals of several kinds, and some successes.
    let answered = answered.into_inner().unwrap();
    for code in [400u16, 401, 403, 404, 405] {
        assert!(answered.contains_key(&code), "no {code} in {answered:?}");
    }
}
