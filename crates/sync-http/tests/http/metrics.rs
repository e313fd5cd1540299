//! `GET /metrics` over real loopback HTTP: refused without the right credentials, and after
//! a round with blobs, a missing blob and a skew refusal, Prometheus text whose counters say
//! exactly what happened. The `request` span has its own test binary (tests/request_spans.rs).

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use object_store::{path::Path, ObjectStoreExt};
use sync_core::{Channel, RecordStore};
use sync_hlc::Hlc;
use sync_http::Auth;
use sync_protocol::Codec;

use crate::common::*;

const TOKEN_METRICS: &str = "token-metrics-scraper";
const HOUR_MS: u64 = 3_600_000;

/// One sample: metric name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// A small parser of the Prometheus text exposition format (0.0.4): every sample belongs
/// to a family announced by `# HELP` and `# TYPE` before it, counters end in `_total`,
/// label values are quoted with `\\`, `\"` and `\n` escapes, values are numbers, and no
/// series appears twice.
fn parse_prometheus(text: &str) -> BTreeMap<Series, f64> {
    let mut helped = Vec::<String>::new();
    let mut types = BTreeMap::<String, String>::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "{line}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helped.last().map(String::as_str) == Some(name), "{line}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(types.insert(name.into(), kind.into()).is_none(), "{line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let name_end = line.find(['{', ' ']).expect("a name");
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        assert!(types.contains_key(name), "sample before its TYPE: {line}");
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            loop {
                let (start, _) = *chars.peek().expect("label");
                let eq = inner[start..].find('=').expect("label=") + start;
                let key = &inner[start..eq];
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("closing quote").1 {
                        '"' => break,
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        c => value.push(c),
                    }
                }
                labels.insert(key.to_string(), value);
                match chars.next().expect(", or }").1 {
                    ',' => continue,
                    '}' => {
                        let (i, _) = chars.next().expect("value after labels");
                        rest = &inner[i..];
                        break;
                    }
                    c => panic!("unexpected {c} in {line}"),
                }
            }
        }
        let value: f64 = rest
            .strip_prefix(' ')
            .expect("space before the value")
            .parse()
            .unwrap_or_else(|e| panic!("value of {line}: {e}"));
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "duplicate series: {line}"
        );
    }
    samples
}

fn get(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {key:?} in {samples:#?}"))
}

async fn scrape(base: &str, headers: &[(&str, &str)]) -> Raw {
    raw(base, Method::GET, "/metrics", headers, "").await
}

#[tokio::test]
async fn metrics_are_behind_auth_and_count_a_round_with_blobs_a_missing_blob_and_a_skew_refusal() {
    let time = shared_time();
    let cloud = Cloud::new(time.clone()).await;
    let service = builder(&cloud)
        .metrics_token(TOKEN_METRICS)
        .build()
        .unwrap();
    let metrics_reader = service.clone();
    let server = TestServer::start(service).await;
    let local = Node::new("local", time.clone()).await;

    // Two files to upload (100 + 50 bytes), then two items whose clock ran two hours ahead:
    // the first is refused for skew, the second held back behind it.
    local.put_record("r1", &[1u8; 100]).await;
    local.put_record("r2", &[2u8; 50]).await;
    let ahead = time.peek() + 2 * HOUR_MS;
    for (i, id) in ["ahead-1", "ahead-2"].into_iter().enumerate() {
        let at = Hlc::new(ahead + i as u64, 0, local.node.clone()).unwrap();
        let r = record(id, at, "", "", 0);
        local.records.apply(std::slice::from_ref(&r)).await.unwrap();
    }
    // The cloud has a 40-byte file to send, and one whose blob is missing at the source.
    cloud.put_record("c1", &[3u8; 40]).await;
    let lost = cloud.put_record("c2", &[4u8; 30]).await;
    cloud
        .blobs
        .delete(&Path::parse(&lost.object_storage_key).unwrap())
        .await
        .unwrap();

    let client = server.client(Auth::bearer(TOKEN_DRIVE));
    let report = local
        .requester(&client, Channel::Drive, Codec::MessagePack)
        .exchange()
        .await
        .unwrap();
    assert_eq!((report.shipped, report.applied), (4, 1), "{report:?}");
    assert_eq!(report.halted_by_peer, vec![local.node.clone()]);
    assert_eq!(report.failures.len(), 1, "the missing blob: {report:?}");

    // Without credentials, with a token of one channel, or with an app signature: refused.
    let none = scrape(&server.base, &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(
        none.error().contains("missing credentials"),
        "{}",
        none.error()
    );
    assert!(none.headers.contains_key("www-authenticate"));
    let bad = scrape(&server.base, &[("authorization", "Bearer nope")]).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let drive = format!("Bearer {TOKEN_DRIVE}");
    let scoped = scrape(&server.base, &[("authorization", &drive)]).await;
    assert_eq!(scoped.status, StatusCode::FORBIDDEN);
    let sig = signed(APP, APP_SECRET, "GET", "/metrics", now_ms(), b"");
    let sig: Vec<(&str, &str)> = sig.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        scrape(&server.base, &sig).await.status,
        StatusCode::UNAUTHORIZED
    );
    let post = raw(&server.base, Method::POST, "/metrics", &[], "").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    // The scraper's token reads the metrics and nothing else.
    let scraper = format!("Bearer {TOKEN_METRICS}");
    let denied = raw(
        &server.base,
        Method::GET,
        "/files/shared/x/stat",
        &[("authorization", &scraper)],
        "",
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    // A token for every channel, and the scraper's token, read them.
    let all = format!("Bearer {TOKEN_ALL}");
    assert_eq!(
        scrape(&server.base, &[("authorization", &all)])
            .await
            .status,
        StatusCode::OK
    );
    let ok = scrape(&server.base, &[("authorization", &scraper)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.headers.get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(ok.body.to_vec()).unwrap();
    let m = parse_prometheus(&text);

    // The exchange: 4 shipped; 2 accepted, 1 refused for skew, 1 held back behind it; the
    // origin node halted; 2 records sent back.
    let drive_label = [("channel", "drive")];
    assert_eq!(
        get(
            &m,
            "starkeep_exchanges_total",
            &[("channel", "drive"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        get(&m, "starkeep_exchange_items_received_total", &drive_label),
        4.0
    );
    assert_eq!(
        get(&m, "starkeep_exchange_items_accepted_total", &drive_label),
        2.0
    );
    assert_eq!(
        get(
            &m,
            "starkeep_exchange_items_refused_total",
            &[("channel", "drive"), ("reason", "skew")]
        ),
        1.0
    );
    assert_eq!(
        get(&m, "starkeep_exchange_items_held_back_total", &drive_label),
        1.0
    );
    assert_eq!(
        get(&m, "starkeep_exchange_halted_origins_total", &drive_label),
        1.0
    );
    assert_eq!(
        get(&m, "starkeep_exchange_items_sent_total", &drive_label),
        2.0
    );
    assert_eq!(
        get(&m, "starkeep_exchange_pages_cut_total", &drive_label),
        0.0
    );
    assert_eq!(get(&m, "starkeep_exchanges_in_flight", &[]), 0.0);
    let refused: f64 = m
        .iter()
        .filter(|((n, _), _)| n == "starkeep_exchange_items_refused_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(refused, 1.0, "only the skew refusal");

    // Blobs: two uploads of 150 bytes in all, one 40-byte download; the missing one is a
    // 404 that counts as a request but not as a download.
    assert_eq!(get(&m, "starkeep_blob_uploads_total", &[]), 2.0);
    assert_eq!(get(&m, "starkeep_blob_upload_bytes_total", &[]), 150.0);
    assert_eq!(get(&m, "starkeep_blob_downloads_total", &[]), 1.0);
    assert_eq!(get(&m, "starkeep_blob_download_bytes_total", &[]), 40.0);
    let requests = |route: &str, method: &str, status: &str| {
        get(
            &m,
            "starkeep_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("/files/{key}", "PUT", "2xx"), 2.0);
    assert_eq!(requests("/files/{key}", "GET", "2xx"), 1.0);
    assert_eq!(requests("/files/{key}", "GET", "4xx"), 1.0);
    assert_eq!(requests("/sync/exchange", "POST", "2xx"), 1.0);
    assert_eq!(requests("/files/{key}/stat", "GET", "4xx"), 1.0);
    // Five refused scrapes (none, bad, scoped, signed, POST); the first 200 is done, this
    // one is still streaming.
    assert_eq!(requests("/metrics", "GET", "4xx"), 4.0);
    assert_eq!(requests("/metrics", "POST", "4xx"), 1.0);
    assert_eq!(requests("/metrics", "GET", "2xx"), 1.0);
    assert_eq!(get(&m, "starkeep_http_requests_in_flight", &[]), 1.0);
    // Bytes: uploads are the PUT bodies; downloads the GET bodies; the exchange both ways.
    let bytes = |name: &str, route: &str| get(&m, name, &[("route", route)]);
    assert_eq!(
        bytes("starkeep_http_request_body_bytes_total", "/files/{key}"),
        150.0
    );
    assert!(bytes("starkeep_http_response_body_bytes_total", "/files/{key}") > 40.0);
    assert!(bytes("starkeep_http_request_body_bytes_total", "/sync/exchange") > 0.0);
    assert!(bytes("starkeep_http_response_body_bytes_total", "/sync/exchange") > 0.0);
    // No raw key or app id became a label value.
    assert!(!text.contains("shared/"), "{text}");

    // The service's own rendering is the same text, now with this scrape counted.
    let after = parse_prometheus(&metrics_reader.metrics().render());
    assert_eq!(
        get(
            &after,
            "starkeep_http_requests_total",
            &[("method", "GET"), ("route", "/metrics"), ("status", "2xx")]
        ),
        2.0
    );
    server.stop().await;
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 3\n";
    let m = parse_prometheus(ok);
    assert_eq!(get(&m, "a_total", &[("k", "v\"")]), 3.0);
    for bad in [
        "a_total 1\n",
        "# HELP a x\n# TYPE a counter\na 1\n",
        "# HELP a_total x\n# TYPE a_total counter\na_total{k=v} 1\n",
        "# HELP a_total x\n# TYPE a_total counter\na_total 1\na_total 2\n",
        "# HELP a_total x\n# TYPE a_total counter\na_total one\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}
