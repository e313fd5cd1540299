//! Fuzz target `http`: the tower service over in-memory record and row stores and blobs in
//! a real directory (`LocalFileSystem`, the embedded default), fed arbitrary methods, paths
//! (traversal and percent-encoding tricks included), credentials (valid, expired, replayed,
//! out of scope) and bodies (golden fixtures mutated structurally and byte by byte, records
//! pointing at blobs that were or were not uploaded, with right or wrong hashes).
//!
//! Every answer must be: no 5xx (the stores are healthy; a handler panic is a 500), nothing
//! written unless the request was a successful `PUT`, `DELETE` or exchange, no file outside
//! the blob root's namespaces, an upload only inside its own channel's namespace, and a
//! successful exchange answered in the request's codec with a decodable body.
//!
//! The engine (`engine.rs`, shared with the decoder targets of `sync-protocol`) replays
//! `tests/corpus/http/` on every `cargo test` and runs a short burst; `cargo xtask soak`
//! runs it for minutes. Each batch starts a fresh server in a fresh directory, so a batch
//! (and a corpus file) replays alone.

#[path = "../../../sync-protocol/tests/fuzz/engine.rs"]
mod engine;
#[path = "../../../sync-protocol/tests/fuzz/mutate.rs"]
mod mutate;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path as FsPath, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use engine::{fuzz, replay_corpus, Rng, Settings, Target};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use object_store::{local::LocalFileSystem, ObjectStore};
use serde_json::{json, Value};
use sync_core::{
    AppRowStore, Channel, ChannelData, ExchangeTransport, RecordStore, Responder, ResponderConfig,
    ResponderParts,
};
use sync_hlc::{Hlc, NodeId};
use sync_http::{Scope, ServerConfig, SyncService};
use sync_protocol::{Codec, ExchangeResponse, RESERVED_TABLE};
use sync_testkit::memory::{sha256_hex, ManualTime};
use tower::ServiceExt;

use crate::common::*;

/// The servers' physical time: after the golden fixtures' timestamps, so their items are
/// not refused as clock skew.
const NOW: u64 = 1_795_600_000_000;

/// One request as stored in the corpus: JSON `{"m", "p", "h": [[name, value]], "b": hex}`.
#[derive(Debug, Clone)]
struct Case {
    m: String,
    p: String,
    h: Vec<(String, String)>,
    /// The body, hex.
    b: String,
}

impl Case {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"m": self.m, "p": self.p, "h": self.h, "b": self.b})).unwrap()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Case> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let text = |k: &str| v.get(k)?.as_str().map(str::to_string);
        let h = v
            .get("h")?
            .as_array()?
            .iter()
            .map(|pair| {
                let pair = pair.as_array()?;
                Some((
                    pair.first()?.as_str()?.to_string(),
                    pair.get(1)?.as_str()?.to_string(),
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Case {
            m: text("m")?,
            p: text("p")?,
            h,
            b: text("b")?,
        })
    }
}

/// A fresh server: stores, a blob directory, the service. Also used by `hostile.rs`.
pub(crate) struct World {
    pub(crate) rt: tokio::runtime::Runtime,
    dir: PathBuf,
    cloud: Arc<Cloud>,
    pub(crate) service: SyncService,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

static WORLDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl World {
    pub(crate) fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "starkeep-fuzz-http-{}-{}",
            std::process::id(),
            WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("blobs")).unwrap();
        let time = ManualTime::new(NOW, 1);
        let cloud = rt.block_on(Cloud::new(time));
        let store: Arc<dyn ObjectStore> = Arc::new(
            LocalFileSystem::new_with_prefix(dir.join("blobs"))
                .unwrap()
                .with_automatic_cleanup(true),
        );
        let responders: std::collections::HashMap<Channel, Arc<dyn ExchangeTransport>> =
            [Channel::Drive, app(), Channel::App("photos".into())]
                .into_iter()
                .map(|channel| {
                    let records: Arc<dyn RecordStore> = cloud.records.clone();
                    let rows: Arc<dyn AppRowStore> = cloud.rows.clone();
                    let responder: Arc<dyn ExchangeTransport> =
                        Arc::new(Responder::new(ResponderParts {
                            data: ChannelData::new(channel.clone(), Some(records), Some(rows)),
                            blobs: Arc::new(StoreBlobs(store.clone())),
                            clock: cloud.clock.clone(),
                            time: cloud.time.clone(),
                            config: ResponderConfig::default(),
                        }));
                    (channel, responder)
                })
                .collect();
        let service = SyncService::builder(responders, store)
            .bearer_token(TOKEN_ALL, Scope::All)
            .bearer_token(TOKEN_DRIVE, Scope::Channels(vec![Channel::Drive]))
            .bearer_token(TOKEN_APP, Scope::Channels(vec![app()]))
            .app_secret(APP, APP_SECRET)
            .clock(|| NOW)
            .config(
                ServerConfig::default()
                    .with_exchange_body_limit(256 << 10)
                    .with_blob_body_limit(64 << 10)
                    .with_blob_part_size(4 << 10)
                    .with_store_content_type(false),
            )
            .build()
            .unwrap();
        Self {
            rt,
            dir,
            cloud,
            service,
        }
    }

    /// Every file under the world's directory, relative to it, with its size.
    pub(crate) fn files(&self) -> BTreeMap<String, u64> {
        fn walk(root: &FsPath, dir: &FsPath, out: &mut BTreeMap<String, u64>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let path = e.path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.insert(rel, meta.len());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dir, &self.dir, &mut out);
        out
    }

    /// Records, rows and files.
    pub(crate) fn snapshot(&self) -> (String, BTreeMap<String, u64>) {
        (
            format!(
                "{:?}|{:?}|{:?}",
                self.cloud.records.all(),
                self.cloud.rows.all(APP),
                self.cloud.rows.all("photos")
            ),
            self.files(),
        )
    }
}

/// The HTTP service target.
pub struct Http {
    world: Option<World>,
    /// Blobs uploaded earlier in the batch (channel prefix, key, hash), for records to use.
    uploaded: Vec<(String, String)>,
    /// This batch's requests that succeeded and may have written (for a crasher's replay).
    writes: Vec<Vec<u8>>,
    /// The last signed request's headers, to replay.
    last_signed: Option<Vec<(String, String)>>,
    signed_ts: u64,
}

impl Http {
    pub fn new() -> Self {
        Self {
            world: None,
            uploaded: Vec::new(),
            writes: Vec::new(),
            last_signed: None,
            signed_ts: 0,
        }
    }
}

const SEGMENTS: &[&str] = &[
    "a",
    "b1",
    "x.bin",
    "..",
    ".",
    "",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e",
    "%252e%252e",
    "%252E%252E",
    "..%2F..%2Fx",
    "..%252F..%252Fx",
    "%2F",
    "%252F",
    "%5C",
    "%255C",
    "..%5C..%5Cx",
    "a%00b",
    "%2500",
    "%C0%AE%C0%AE",
    "%E0%80%AE",
    "%c0%af",
    "%ef%bc%8f",
    "%e2%80%ae",
    "x%23123",
    "stat",
    "%73tat",
    "%25",
    "%zz",
    "%",
    "%4",
    "%FF",
    "%C3%BC",
    "~",
    "a%20b",
    "a;b",
    "a@b:c",
];

fn hostile_segment(rng: &mut Rng) -> String {
    if rng.chance(1, 8) {
        "y".repeat(1 + rng.below(1100))
    } else {
        (*rng.pick(SEGMENTS)).to_string()
    }
}

/// The golden request fixtures as JSON values.
fn request_fixtures() -> Vec<Value> {
    let dir = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../sync-protocol/fixtures");
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name().unwrap().to_string_lossy().contains("request")
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect()
}

impl Http {
    fn hlc(&self, rng: &mut Rng) -> Hlc {
        let node = match rng.below(6) {
            0 => "cloud".to_string(),
            1 => "dev-b".to_string(),
            2 => "6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13".to_string(),
            _ => "dev-a".to_string(),
        };
        // Mostly in the past, sometimes far ahead (skew refusals).
        let wall = if rng.chance(1, 10) {
            NOW + 2 * 3_600_000
        } else {
            NOW - 10_000 + rng.below(9_000) as u64
        };
        Hlc::new(wall, rng.below(3) as u16, NodeId::new(node).unwrap()).unwrap()
    }

    /// An exchange body for `channel` as a JSON value.
    fn exchange_value(&self, rng: &mut Rng, channel: &str) -> Value {
        let mut v = match rng.below(3) {
            0 => rng.pick(&request_fixtures()).clone(),
            _ => {
                let n = rng.below(4);
                let mut items = Vec::new();
                for i in 0..n {
                    let at = self.hlc(rng);
                    let (key, hash, size) =
                        match self.uploaded.get(rng.below(self.uploaded.len() + 2)) {
                            Some((key, hash)) if rng.chance(4, 5) => (key.clone(), hash.clone(), 3),
                            // A hash that does not match the uploaded bytes.
                            Some((key, _)) => (key.clone(), sha256_hex(b"other bytes"), 3),
                            None => (
                                format!("{channel}x/{}", rng.below(100)),
                                sha256_hex(b"never uploaded"),
                                3,
                            ),
                        };
                    let id = format!("id-{}", rng.below(8) + i);
                    if channel == "shared/" {
                        items.push(
                            serde_json::to_value(record(&id, at, &key, &hash, size)).unwrap(),
                        );
                    } else {
                        let table = if rng.chance(1, 2) {
                            RESERVED_TABLE
                        } else {
                            TABLE
                        };
                        let mut r =
                            serde_json::to_value(row(table, &id, at, &key, Some(b"abc"))).unwrap();
                        if table == RESERVED_TABLE {
                            r["row"]["content_hash"] = json!(hash);
                        }
                        if channel == "apps/photos/" {
                            r["appId"] = json!("photos");
                            r["table"] = json!("albums");
                        }
                        items.push(r);
                    }
                }
                let field = if channel == "shared/" {
                    "records"
                } else {
                    "appSyncableRows"
                };
                json!({ "watermarks": {}, field: items, "limit": 1 + rng.below(5) })
            }
        };
        if rng.chance(1, 2) {
            let n = 1 + rng.below(3);
            mutate::mutate_value_n(rng, &mut v, n);
        }
        v
    }
}

impl Target for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let case = |m: &str, p: &str, h: Vec<(&str, &str)>, b: &[u8]| {
            Case {
                m: m.into(),
                p: p.into(),
                h: h.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                b: hex::encode(b),
            }
            .to_bytes()
        };
        let auth = ("authorization", "Bearer token-all");
        vec![
            case("GET", "/health", vec![], b""),
            case("PUT", "/files/shared/a/b", vec![auth], b"abc"),
            case(
                "POST",
                "/sync/exchange",
                vec![auth, ("content-type", "application/json")],
                br#"{"watermarks":{}}"#,
            ),
        ]
    }

    fn begin_batch(&mut self) {
        self.world = Some(World::new());
        self.uploaded.clear();
        self.writes.clear();
        self.last_signed = None;
        self.signed_ts = NOW - 60_000;
    }

    fn generate(&mut self, rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
        // Now and then, a stored case mutated a little.
        if rng.chance(1, 6) {
            if let Some(mut case) = Case::from_bytes(&pool[rng.below(pool.len())]) {
                match rng.below(3) {
                    0 => case.p.push_str(&format!("/{}", hostile_segment(rng))),
                    1 => {
                        let mut body = hex::decode(&case.b).unwrap_or_default();
                        mutate::mutate_bytes(rng, &mut body, b"{}");
                        case.b = hex::encode(body);
                    }
                    _ => case.h.retain(|_| rng.chance(2, 3)),
                }
                return case.to_bytes();
            }
        }
        let method = match rng.below(20) {
            0..=4 => "GET",
            5..=9 => "PUT",
            10..=14 => "POST",
            15 | 16 => "DELETE",
            17 => "HEAD",
            18 => "PATCH",
            _ => "OPTIONS",
        };
        let (base, prefix) = *rng.pick(&[
            ("", "shared/"),
            ("", "shared/"),
            ("/apps/test-app", "apps/test-app/"),
            ("/apps/test-app", "apps/test-app/"),
            ("/apps/photos", "apps/photos/"),
            ("/apps/nope", "apps/nope/"),
            ("/apps/..", "shared/"),
            ("/apps/%74est-app", "apps/test-app/"),
            ("/apps/", "shared/"),
        ]);
        let mut key = String::new();
        if rng.chance(4, 5) {
            key.push_str(prefix);
        } else {
            let other: &[&str] = &["apps/test-app/", "shared/", "apps/photos/", "", "apps/"];
            key.push_str(other[rng.below(other.len())]);
        }
        let segments = 1 + rng.below(3);
        for i in 0..segments {
            if i > 0 {
                key.push('/');
            }
            key.push_str(&if rng.chance(1, 2) {
                hostile_segment(rng)
            } else {
                format!("f{}", rng.below(6))
            });
        }
        let exchange = method == "POST" || rng.chance(1, 10);
        let path = if exchange {
            format!("{base}/sync/exchange")
        } else {
            match rng.below(12) {
                0 => format!("{base}/files/{key}/stat"),
                1 => "/health".to_string(),
                2 => format!("/{}/{}", hostile_segment(rng), hostile_segment(rng)),
                _ => format!("{base}/files/{key}"),
            }
        };
        let codec = if rng.chance(1, 2) {
            Codec::Json
        } else {
            Codec::MessagePack
        };
        let body: Vec<u8> = if exchange {
            let v = self.exchange_value(rng, prefix);
            let mut b = mutate::encode(
                match codec {
                    Codec::Json => mutate::Format::Json,
                    Codec::MessagePack => mutate::Format::MessagePack,
                },
                &v,
            );
            if rng.chance(1, 5) {
                mutate::mutate_bytes(rng, &mut b, b"[]");
            }
            b
        } else if method == "PUT" {
            let len = if rng.chance(1, 10) {
                4096 + rng.below(8192)
            } else {
                rng.below(16)
            };
            let b = if len == 3 {
                b"abc".to_vec()
            } else {
                rng.bytes(len)
            };
            if path.starts_with(&format!("{base}/files/")) && !path.ends_with("/stat") {
                self.uploaded.push((key.clone(), sha256_hex(&b)));
            }
            b
        } else {
            let n = rng.below(3);
            rng.bytes(n)
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        if exchange || rng.chance(1, 5) {
            let ct = match rng.below(8) {
                0 => "text/plain",
                1 => "application/json; charset=utf-8",
                2 => "application/x-msgpack",
                _ => codec.content_type(),
            };
            headers.push(("content-type".into(), ct.into()));
        }
        match rng.below(12) {
            0 => {}
            1..=3 => headers.push(("authorization".into(), "Bearer token-all".into())),
            4 => headers.push(("authorization".into(), "Bearer token-drive".into())),
            5 => headers.push(("authorization".into(), "Bearer token-app".into())),
            6 => headers.push(("authorization".into(), "Bearer nope".into())),
            7 => {
                if let Some(h) = &self.last_signed {
                    headers.extend(h.iter().cloned());
                }
            }
            _ => {
                self.signed_ts += 1;
                let (ts, secret, app_id, signed_path) = match rng.below(8) {
                    0 => (NOW - 6 * 60_000, APP_SECRET, APP, path.as_str()),
                    1 => (NOW + 6 * 60_000, APP_SECRET, APP, path.as_str()),
                    2 => (self.signed_ts, "wrong", APP, path.as_str()),
                    3 => (self.signed_ts, APP_SECRET, "photos", path.as_str()),
                    4 => (self.signed_ts, APP_SECRET, APP, "/sync/exchange"),
                    _ => (self.signed_ts, APP_SECRET, APP, path.as_str()),
                };
                let h = signed(app_id, secret, method, signed_path, ts, &body);
                self.last_signed = Some(h.clone());
                headers.extend(h);
            }
        }
        if rng.chance(1, 10) {
            headers.push((
                "range".into(),
                (*rng.pick(&[
                    "bytes=0-1",
                    "bytes=5-",
                    "bytes=-2",
                    "bytes=9-1",
                    "bytes=0-0,2-3",
                    "bytes=99999-",
                ]))
                .into(),
            ));
        }
        if rng.chance(1, 20) {
            headers.push(("content-length".into(), rng.below(1 << 20).to_string()));
        }
        Case {
            m: method.into(),
            p: path,
            h: headers,
            b: hex::encode(body),
        }
        .to_bytes()
    }

    fn check(&mut self, input: &[u8]) -> Result<String, String> {
        // A saved crasher may be a sequence: the writes that built the state, then the case.
        if let Ok(Value::Array(cases)) = serde_json::from_slice::<Value>(input) {
            let mut last = String::from("empty sequence");
            for case in cases {
                last = self.check_one(&serde_json::to_vec(&case).unwrap())?;
            }
            return Ok(last);
        }
        let outcome = self.check_one(input)?;
        // Successful writes shape what later cases meet: remembered for a crasher's replay.
        if outcome.contains(":2") && !outcome.starts_with("GET") && !outcome.starts_with("HEAD") {
            self.writes.push(input.to_vec());
        }
        Ok(outcome)
    }

    fn crasher(&mut self, input: &[u8]) -> Vec<u8> {
        // The batch's successful writes, then the failing case, if that sequence fails on a
        // fresh server too; otherwise the case alone.
        let mut cases: Vec<Value> = self
            .writes
            .iter()
            .chain(std::iter::once(&input.to_vec()))
            .filter_map(|c| serde_json::from_slice(c).ok())
            .collect();
        if cases.len() == 1 {
            return input.to_vec();
        }
        let sequence = serde_json::to_vec(&Value::Array(std::mem::take(&mut cases))).unwrap();
        let mut fresh = Http::new();
        fresh.begin_batch();
        if fresh.check(&sequence).is_err() {
            sequence
        } else {
            input.to_vec()
        }
    }
}

impl Http {
    /// Checks one request against the oracle.
    fn check_one(&mut self, input: &[u8]) -> Result<String, String> {
        let Some(case) = Case::from_bytes(input) else {
            return Ok("not a case".into());
        };
        let Ok(body) = hex::decode(&case.b) else {
            return Ok("bad hex".into());
        };
        let Ok(uri) = case.p.parse::<Uri>() else {
            return Ok("bad uri".into());
        };
        let Ok(method) = Method::from_bytes(case.m.as_bytes()) else {
            return Ok("bad method".into());
        };
        let mut request = Request::builder().method(method.clone()).uri(uri);
        for (k, v) in &case.h {
            let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) else {
                return Ok("bad header".into());
            };
            request = request.header(k, v);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let world = self.world.as_ref().expect("begin_batch ran");
        let before = world.snapshot();
        let (status, headers, response_body) = world.rt.block_on(async {
            let response = world.service.clone().oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            (parts.status, parts.headers, bytes)
        });
        let after = world.snapshot();
        let what = format!("{} {} -> {status}", case.m, case.p);
        if status.is_server_error() {
            return Err(format!(
                "{what}: {}",
                String::from_utf8_lossy(&response_body)
            ));
        }
        let writes = status.is_success()
            && (method == Method::PUT || method == Method::DELETE || method == Method::POST);
        if !writes && before != after {
            return Err(format!("{what} changed the stores"));
        }
        // Nothing outside the blob root's namespaces, ever.
        for file in after.1.keys() {
            let ok = [
                "blobs/shared/",
                "blobs/apps/test-app/",
                "blobs/apps/photos/",
            ]
            .iter()
            .any(|p| file.starts_with(p));
            if !ok {
                return Err(format!("{what} left a file outside the namespaces: {file}"));
            }
        }
        // An upload lands in its own channel's namespace only.
        if method == Method::PUT && status.is_success() {
            let prefix = match case.p.strip_prefix("/apps/") {
                Some(rest) => format!("blobs/apps/{}/", rest.split('/').next().unwrap_or("")),
                None => "blobs/shared/".to_string(),
            };
            for (file, size) in &after.1 {
                if before.1.get(file) != Some(size) && !file.starts_with(&prefix) {
                    return Err(format!("{what} wrote {file} outside {prefix}"));
                }
            }
        }
        // A successful exchange answers in the request's codec.
        if method == Method::POST && status.is_success() {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .and_then(Codec::from_content_type)
                .ok_or_else(|| format!("{what}: no codec in the answer"))?;
            let asked = case
                .h
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .and_then(|(_, v)| Codec::from_content_type(v));
            if Some(ct) != asked {
                return Err(format!("{what}: answered in {ct}, asked {asked:?}"));
            }
            ct.decode::<ExchangeResponse>(&response_body)
                .map_err(|e| format!("{what}: the answer does not decode: {e}"))?;
        }
        let error: String = String::from_utf8_lossy(&response_body)
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(40)
            .collect();
        Ok(format!("{}:{status}:{error}", case.m))
    }
}

fn corpus_dir() -> PathBuf {
    FsPath::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/http")
}

#[test]
fn corpus_http_replays() {
    let n = replay_corpus(&mut Http::new(), &corpus_dir());
    assert!(n > 0, "the http corpus is empty");
}

#[test]
fn fuzz_http_service() {
    let settings = Settings::for_target("http", 1.5);
    fuzz(&mut Http::new(), &corpus_dir(), &settings, 200);
}
