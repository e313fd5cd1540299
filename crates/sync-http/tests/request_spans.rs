//! One `request` span per request, with its route template, status, bytes and duration.
//!
//! A test binary of its own: tracing caches per call site whether anyone listens, and other
//! test threads serving requests without a subscriber while this one installs its own can
//! race that cache (the span is then never created here). Alone in its process, it cannot.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use object_store::{memory::InMemory, ObjectStore};
use sync_core::{Channel, ExchangeError, ExchangeTransport};
use sync_http::{Scope, SyncService};
use sync_protocol::{ExchangeRequest, ExchangeResponse};
use tower::ServiceExt;
use tracing::{
    field::{Field, Visit},
    span, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};

const TOKEN: &str = "token-all";

/// Serves the Drive channel's blob routes; its exchanges are never called here.
struct NoExchanges;

#[async_trait]
impl ExchangeTransport for NoExchanges {
    async fn exchange(&self, _: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        Err(ExchangeError::BadRequest("not in this test".into()))
    }
}

type Fields = HashMap<String, String>;

/// Keeps the fields of every closed `request` span.
#[derive(Clone, Default)]
struct RequestSpans {
    open: Arc<Mutex<HashMap<u64, Fields>>>,
    closed: Arc<Mutex<Vec<Fields>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for RequestSpans {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "request" {
            let mut fields = Fields::new();
            attrs.record(&mut Collect(&mut fields));
            self.open.lock().unwrap().insert(id.into_u64(), fields);
        }
    }
    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }
    fn on_close(&self, id: span::Id, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(fields);
        }
    }
}

async fn call(service: &SyncService, method: Method, path: &str, body: &'static [u8]) -> Bytes {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn every_request_has_one_span_with_its_route_template_status_and_bytes() {
    let spans = RequestSpans::default();
    let _guard = tracing_subscriber::registry()
        .with(spans.clone())
        .set_default();
    let provider = |channel: &Channel| -> Option<Arc<dyn ExchangeTransport>> {
        (*channel == Channel::Drive).then(|| Arc::new(NoExchanges) as Arc<dyn ExchangeTransport>)
    };
    let blobs: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let service = SyncService::builder(provider, blobs)
        .bearer_token(TOKEN, Scope::All)
        .build()
        .unwrap();

    let key = "/files/shared/secret-name/blob";
    let put = call(&service, Method::PUT, key, b"twelve bytes").await;
    let got = call(&service, Method::GET, key, b"").await;
    assert_eq!(got.as_ref(), b"twelve bytes");
    let missing = call(&service, Method::GET, "/apps/nope/files/apps/nope/x", b"").await;

    let closed = spans.closed.lock().unwrap().clone();
    assert_eq!(closed.len(), 3, "{closed:#?}");
    let expect = [
        ("PUT", "/files/{key}", "200", 12, put.len()),
        ("GET", "/files/{key}", "200", 0, 12),
        ("GET", "/apps/{app}/files/{key}", "404", 0, missing.len()),
    ];
    for (f, (method, route, status, bytes_in, bytes_out)) in closed.iter().zip(expect) {
        assert_eq!(
            (
                f["method"].as_str(),
                f["route"].as_str(),
                f["status"].as_str()
            ),
            (method, route, status),
            "{f:?}"
        );
        assert_eq!(f["bytes_in"], bytes_in.to_string(), "{f:?}");
        assert_eq!(f["bytes_out"], bytes_out.to_string(), "{f:?}");
        let ms: f64 = f["duration_ms"].parse().unwrap();
        assert!(ms >= 0.0);
        // The template, never the raw key or app id.
        assert!(f
            .values()
            .all(|v| !v.contains("secret-name") && !v.contains("nope")));
    }
}
