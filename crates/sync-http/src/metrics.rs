//! Server counters, the `request` span of every request, and their Prometheus text
//! exposition for `GET /metrics` (docs/decisions/0032).
//!
//! Requests are counted by route *template* (never the raw key or app id, so the label
//! values stay few), method and status class; bodies are counted as they stream, so a
//! download's bytes and duration are known when its body ends, not when its headers leave.
//! Exchanges are counted by wrapping each channel's responder: what requesters shipped,
//! what was accepted, refused (by reason) or held back, what was sent back.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    pin::Pin,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
    time::Instant,
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use sync_core::{Channel, ExchangeError, ExchangeTransport};
use sync_protocol::{ExchangeRequest, ExchangeResponse};

use crate::{server::ResponseBody, BoxError, ResponderProvider};

/// The counters of a [`SyncService`](crate::SyncService), shared by its clones. Read them
/// as Prometheus text with [`ServerMetrics::render`] (what `GET /metrics` answers).
///
/// They count since the service was built, per process: several servers sharing one
/// database each expose their own, and Prometheus sums them.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    tallies: Mutex<Tallies>,
    requests_in_flight: AtomicI64,
    exchanges_in_flight: AtomicI64,
}

#[derive(Debug, Default)]
struct Tallies {
    /// (route, method, status class) -> requests.
    requests: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    request_bytes: BTreeMap<&'static str, u64>,
    response_bytes: BTreeMap<&'static str, u64>,
    blob_uploads: u64,
    blob_upload_bytes: u64,
    blob_downloads: u64,
    blob_download_bytes: u64,
    /// (channel, outcome) -> exchanges.
    exchanges: BTreeMap<(String, &'static str), u64>,
    items: BTreeMap<String, ItemTallies>,
    /// (channel, reason) -> refused items.
    refused: BTreeMap<(String, &'static str), u64>,
}

#[derive(Debug, Default)]
struct ItemTallies {
    received: u64,
    accepted: u64,
    held_back: u64,
    sent: u64,
    halted_origins: u64,
    has_more: u64,
}

/// The route template of a path: what the `route` label and the span say instead of the
/// raw path (keys and app ids would make every request its own series).
pub(crate) fn route_template(path: &str, method: &Method) -> &'static str {
    match path {
        "/health" => return "/health",
        "/metrics" => return "/metrics",
        _ => {}
    }
    let (app, tail) = match path.strip_prefix("/apps/") {
        Some(rest) => match rest.find('/') {
            Some(i) => (true, &rest[i..]),
            None => return "unmatched",
        },
        None => (false, path),
    };
    let stat = method == Method::GET && tail.ends_with("/stat");
    match (app, tail) {
        (false, "/sync/exchange") => "/sync/exchange",
        (true, "/sync/exchange") => "/apps/{app}/sync/exchange",
        (false, t) if t.starts_with("/files/") && stat => "/files/{key}/stat",
        (false, t) if t.starts_with("/files/") => "/files/{key}",
        (true, t) if t.starts_with("/files/") && stat => "/apps/{app}/files/{key}/stat",
        (true, t) if t.starts_with("/files/") => "/apps/{app}/files/{key}",
        _ => "unmatched",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

fn status_class(status: Option<StatusCode>) -> &'static str {
    match status.map(|s| s.as_u16() / 100) {
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        // The client went away before an answer was ready.
        _ => "aborted",
    }
}

/// The reason label of a responder's refusal: its `code` when it is one of
/// `sync_protocol::refusal_code`'s (the label set stays bounded), else recognized by wording
/// (a responder that sends no codes).
pub(crate) fn refusal_label(refusal: &sync_protocol::Refusal) -> &'static str {
    let known = refusal
        .code
        .as_deref()
        .and_then(|c| sync_protocol::refusal_code::ALL.iter().find(|k| **k == c));
    match known {
        Some(code) => code,
        None => refusal_reason(&refusal.reason),
    }
}

/// The reason label of a refusal without a code, recognized by wording; anything new is
/// `other` rather than mislabelled.
pub(crate) fn refusal_reason(reason: &str) -> &'static str {
    if reason.contains("ahead of this node's clock") {
        "skew"
    } else if reason.starts_with("coverage gap") {
        "coverage_gap"
    } else if reason.contains("is not in the responder's storage") {
        "blob_missing"
    } else if reason.starts_with("inline blob") {
        "inline_blob"
    } else if reason.starts_with("cannot check blob") {
        "blob_check_failed"
    } else if reason.starts_with("could not be stored") {
        "store_failed"
    } else if reason.contains("is not registered")
        || reason.contains("not accepted on this channel")
    {
        "not_accepted"
    } else {
        "other"
    }
}

fn exchange_outcome(e: &ExchangeError) -> &'static str {
    match e {
        ExchangeError::BadRequest(_) | ExchangeError::Refused { .. } => "bad_request",
        ExchangeError::Unauthorized(_) => "unauthorized",
        e if e.is_transient() => "transient",
        _ => "failed",
    }
}

impl ServerMetrics {
    fn tallies(&self) -> MutexGuard<'_, Tallies> {
        // Counters are plain additions: a panic elsewhere cannot leave them inconsistent.
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts accounting for one request: counted, and its span closed, when the returned
    /// tracker is dropped (with the response body, or with the request if it never
    /// answered).
    pub(crate) fn track(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
    ) -> (RequestTracker, tracing::Span) {
        let route = route_template(path, method);
        let span = tracing::info_span!(
            "request",
            method = %method,
            route,
            status = tracing::field::Empty,
            bytes_in = tracing::field::Empty,
            bytes_out = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let tracker = RequestTracker {
            metrics: self.clone(),
            route,
            method: method_label(method),
            span: span.clone(),
            started: Instant::now(),
            bytes_in: Arc::default(),
            bytes_out: 0,
            expected_out: None,
            status: None,
            done: false,
        };
        (tracker, span)
    }

    /// The counters in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let t = self.tallies();
        let mut out = String::new();
        family(
            &mut out,
            "starkeep_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status class.",
            t.requests.iter().map(|((route, method, status), n)| {
                (
                    vec![("route", *route), ("method", *method), ("status", *status)],
                    *n,
                )
            }),
        );
        family(
            &mut out,
            "starkeep_http_requests_in_flight",
            "gauge",
            "Requests being handled or streaming their response now.",
            [(vec![], gauge(&self.requests_in_flight))],
        );
        family(
            &mut out,
            "starkeep_http_request_body_bytes_total",
            "counter",
            "Request body bytes read, by route template.",
            t.request_bytes
                .iter()
                .map(|(route, n)| (vec![("route", *route)], *n)),
        );
        family(
            &mut out,
            "starkeep_http_response_body_bytes_total",
            "counter",
            "Response body bytes sent, by route template.",
            t.response_bytes
                .iter()
                .map(|(route, n)| (vec![("route", *route)], *n)),
        );
        for (name, help, value) in [
            (
                "starkeep_blob_uploads_total",
                "Blobs stored by a successful PUT.",
                t.blob_uploads,
            ),
            (
                "starkeep_blob_upload_bytes_total",
                "Bytes of blobs stored by a successful PUT.",
                t.blob_upload_bytes,
            ),
            (
                "starkeep_blob_downloads_total",
                "Blob GETs answered with 200 or 206.",
                t.blob_downloads,
            ),
            (
                "starkeep_blob_download_bytes_total",
                "Blob bytes sent by GET.",
                t.blob_download_bytes,
            ),
        ] {
            family(&mut out, name, "counter", help, [(vec![], value)]);
        }
        family(
            &mut out,
            "starkeep_exchanges_total",
            "counter",
            "Exchange rounds the responder handled, by channel and outcome (ok, bad_request, \
             unauthorized, transient, failed).",
            t.exchanges.iter().map(|((channel, outcome), n)| {
                (
                    vec![("channel", channel.as_str()), ("outcome", *outcome)],
                    *n,
                )
            }),
        );
        family(
            &mut out,
            "starkeep_exchanges_in_flight",
            "gauge",
            "Exchange rounds inside the responder now.",
            [(vec![], gauge(&self.exchanges_in_flight))],
        );
        let per_channel = |pick: fn(&ItemTallies) -> u64| {
            t.items
                .iter()
                .map(move |(c, i)| (vec![("channel", c.as_str())], pick(i)))
                .collect::<Vec<_>>()
        };
        family(
            &mut out,
            "starkeep_exchange_items_received_total",
            "counter",
            "Items requesters shipped, by channel.",
            per_channel(|i| i.received),
        );
        family(
            &mut out,
            "starkeep_exchange_items_accepted_total",
            "counter",
            "Shipped items stored, or already superseded by a newer version, by channel.",
            per_channel(|i| i.accepted),
        );
        family(
            &mut out,
            "starkeep_exchange_items_refused_total",
            "counter",
            "Shipped items refused, by channel and reason (the refusal's code: skew, \
             coverage_gap, unknown_table, missing_key, blob_missing, \
             blob_mismatch, blob_check_failed, inline_blob, store_failed; or other).",
            t.refused.iter().map(|((channel, reason), n)| {
                (vec![("channel", channel.as_str()), ("reason", *reason)], *n)
            }),
        );
        family(
            &mut out,
            "starkeep_exchange_items_held_back_total",
            "counter",
            "Shipped items skipped because an earlier item of the same origin node was \
             refused, by channel.",
            per_channel(|i| i.held_back),
        );
        family(
            &mut out,
            "starkeep_exchange_items_sent_total",
            "counter",
            "Items sent back to requesters, by channel.",
            per_channel(|i| i.sent),
        );
        family(
            &mut out,
            "starkeep_exchange_halted_origins_total",
            "counter",
            "Origin nodes halted for the rest of a request, summed over requests, by channel.",
            per_channel(|i| i.halted_origins),
        );
        family(
            &mut out,
            "starkeep_exchange_pages_cut_total",
            "counter",
            "Responses that said the requester has more to fetch (hasMore), by channel.",
            per_channel(|i| i.has_more),
        );
        out
    }

    fn exchange_done(
        &self,
        channel: &str,
        request: &RequestFigures,
        result: &Result<ExchangeResponse, ExchangeError>,
    ) {
        let mut t = self.tallies();
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => exchange_outcome(e),
        };
        *t.exchanges
            .entry((channel.to_string(), outcome))
            .or_default() += 1;
        let Ok(response) = result else {
            return;
        };
        // Per origin node, the responder stops at its first refusal: what came before was
        // accepted, the refused items are listed, the rest was held back.
        let mut first_refusal: BTreeMap<&str, &sync_core::hlc::Hlc> = BTreeMap::new();
        for r in &response.refusals {
            let origin = r.at.node_id().as_str();
            if first_refusal.get(origin).is_none_or(|f| r.at < **f) {
                first_refusal.insert(origin, &r.at);
            }
        }
        let mut accepted = 0u64;
        for at in &request.versions {
            if response.halted_authors.iter().all(|n| n != at.node_id())
                || first_refusal
                    .get(at.node_id().as_str())
                    .is_some_and(|first| at < *first)
            {
                accepted += 1;
            }
        }
        let refused = response.refusals.len() as u64;
        let items = t.items.entry(channel.to_string()).or_default();
        items.received += request.versions.len() as u64;
        items.accepted += accepted;
        items.held_back += (request.versions.len() as u64)
            .saturating_sub(accepted)
            .saturating_sub(refused);
        items.sent += (response.records.len() + response.app_syncable_rows.len()) as u64;
        items.halted_origins += response.halted_authors.len() as u64;
        items.has_more += u64::from(response.has_more);
        for r in &response.refusals {
            *t.refused
                .entry((channel.to_string(), refusal_label(r)))
                .or_default() += 1;
        }
    }
}

/// Writes one metric family: `# HELP`, `# TYPE`, then its samples.
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape_label(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

fn gauge(g: &AtomicI64) -> u64 {
    u64::try_from(g.load(Ordering::Relaxed)).unwrap_or(0)
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One request's accounting: completed as soon as its response body is known to be
/// complete (before its last bytes are written, so a client that has the whole answer can
/// rely on the count), or else when dropped.
pub(crate) struct RequestTracker {
    metrics: Arc<ServerMetrics>,
    route: &'static str,
    method: &'static str,
    span: tracing::Span,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    /// The response's `Content-Length`, when it has a body of that length.
    expected_out: Option<u64>,
    status: Option<StatusCode>,
    done: bool,
}

impl RequestTracker {
    /// Counts the request body as it is read.
    pub(crate) fn count_request<B>(&self, body: B) -> CountingBody<B> {
        CountingBody {
            inner: Box::pin(body),
            count: self.bytes_in.clone(),
        }
    }

    /// The response, its body counted; the request is accounted for when the body ends
    /// or is dropped.
    pub(crate) fn finish(mut self, response: Response<ResponseBody>) -> Response<ResponseBody> {
        self.status = Some(response.status());
        self.span.record("status", response.status().as_u16());
        if self.method != "HEAD" {
            self.expected_out = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
        }
        if response.body().is_end_stream() {
            self.complete();
        }
        response.map(|inner| {
            MeteredBody {
                inner,
                tracker: self,
            }
            .boxed_unsync()
        })
    }

    /// Records the span's final fields and counts the request, once.
    fn complete(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.span.record("bytes_in", bytes_in);
        self.span.record("bytes_out", self.bytes_out);
        self.span.record("duration_ms", ms);
        let m = &self.metrics;
        m.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        let class = status_class(self.status);
        let mut t = m.tallies();
        *t.requests
            .entry((self.route, self.method, class))
            .or_default() += 1;
        *t.request_bytes.entry(self.route).or_default() += bytes_in;
        *t.response_bytes.entry(self.route).or_default() += self.bytes_out;
        let blob_route = matches!(self.route, "/files/{key}" | "/apps/{app}/files/{key}");
        if blob_route && class == "2xx" {
            match self.method {
                "PUT" => {
                    t.blob_uploads += 1;
                    t.blob_upload_bytes += bytes_in;
                }
                "GET" => {
                    t.blob_downloads += 1;
                    t.blob_download_bytes += self.bytes_out;
                }
                _ => {}
            }
        }
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.complete();
    }
}

/// A request body that counts the bytes read from it.
pub(crate) struct CountingBody<B> {
    inner: Pin<Box<B>>,
    count: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes>> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes sent and owns the request's tracker.
struct MeteredBody {
    inner: ResponseBody,
    tracker: RequestTracker,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.tracker.bytes_out += data.len() as u64;
                }
                let t = &this.tracker;
                if this.inner.is_end_stream() || t.expected_out.is_some_and(|n| t.bytes_out >= n) {
                    this.tracker.complete();
                }
            }
            Poll::Ready(None) => this.tracker.complete(),
            // A failed body is counted when dropped.
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the metered responder remembers of a request: the versions shipped.
struct RequestFigures {
    versions: Vec<sync_core::hlc::Hlc>,
}

/// Wraps every responder a provider hands out so its exchanges are counted.
pub(crate) struct MeteredProvider {
    pub(crate) inner: Arc<dyn ResponderProvider>,
    pub(crate) metrics: Arc<ServerMetrics>,
}

impl ResponderProvider for MeteredProvider {
    fn responder(&self, channel: &Channel) -> Option<Arc<dyn ExchangeTransport>> {
        let inner = self.inner.responder(channel)?;
        Some(Arc::new(MeteredResponder {
            inner,
            channel: channel.to_string(),
            metrics: self.metrics.clone(),
        }))
    }
}

struct MeteredResponder {
    inner: Arc<dyn ExchangeTransport>,
    channel: String,
    metrics: Arc<ServerMetrics>,
}

/// Keeps the in-flight gauge honest even if the exchange future is dropped.
struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl ExchangeTransport for MeteredResponder {
    async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        let figures = RequestFigures {
            versions: request
                .records
                .iter()
                .map(|r| r.updated_at.clone())
                .chain(
                    request
                        .app_syncable_rows
                        .iter()
                        .map(|r| r.timestamp.clone()),
                )
                .collect(),
        };
        self.metrics
            .exchanges_in_flight
            .fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.metrics.exchanges_in_flight);
        let result = self.inner.exchange(request).await;
        self.metrics.exchange_done(&self.channel, &figures, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_hide_keys_and_app_ids() {
        let t = |p: &str, m: Method| route_template(p, &m);
        assert_eq!(t("/sync/exchange", Method::POST), "/sync/exchange");
        assert_eq!(
            t("/apps/notes/sync/exchange", Method::POST),
            "/apps/{app}/sync/exchange"
        );
        assert_eq!(t("/files/shared/a/b", Method::PUT), "/files/{key}");
        assert_eq!(t("/files/shared/a/stat", Method::GET), "/files/{key}/stat");
        assert_eq!(t("/files/shared/a/stat", Method::HEAD), "/files/{key}");
        assert_eq!(
            t("/apps/notes/files/apps/notes/x", Method::GET),
            "/apps/{app}/files/{key}"
        );
        assert_eq!(t("/metrics", Method::GET), "/metrics");
        assert_eq!(t("/apps/notes", Method::GET), "unmatched");
        assert_eq!(t("/anything", Method::GET), "unmatched");
    }

    #[test]
    fn refusal_reasons_are_recognized_by_their_wording() {
        assert_eq!(
            refusal_reason("timestamp 1 is 7200000 ms ahead of this node's clock (limit 1)"),
            "skew"
        );
        assert_eq!(
            refusal_reason("blob shared/x is not in the responder's storage; upload it"),
            "blob_missing"
        );
        assert_eq!(refusal_reason("coverage gap: ..."), "coverage_gap");
        assert_eq!(
            refusal_reason("inline blob refused: hash mismatch"),
            "inline_blob"
        );
        assert_eq!(refusal_reason("could not be stored: disk"), "store_failed");
        assert_eq!(
            refusal_reason("table \"t\" is not registered for app a"),
            "not_accepted"
        );
        assert_eq!(refusal_reason("something new"), "other");
    }

    #[test]
    fn refusal_labels_are_the_codes_when_known() {
        let at = sync_protocol::Hlc::new(1, 0, sync_protocol::NodeId::new("n").unwrap()).unwrap();
        let coded = |code: Option<&str>, reason: &str| sync_protocol::Refusal {
            at: at.clone(),
            reason: reason.into(),
            code: code.map(str::to_string),
        };
        assert_eq!(
            refusal_label(&coded(Some("coverage_gap"), "anything")),
            "coverage_gap"
        );
        assert_eq!(
            refusal_label(&coded(Some("blob_mismatch"), "")),
            "blob_mismatch"
        );
        // Unknown codes do not make new labels; no code: the wording.
        assert_eq!(
            refusal_label(&coded(Some("made-up"), "coverage gap: x")),
            "coverage_gap"
        );
        assert_eq!(refusal_label(&coded(None, "something new")), "other");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        family(
            &mut out,
            "x_total",
            "counter",
            "help",
            [(vec![("a", "q\"b\\n\nz")], 2)],
        );
        assert_eq!(
            out,
            "# HELP x_total help\n# TYPE x_total counter\nx_total{a=\"q\\\"b\\\\n\\nz\"} 2\n"
        );
    }
}
