//! Fuzz targets of the wire boundary: the JSON and MessagePack decoders of both exchange
//! messages, and the HLC, node id and watermark parsers. Every `cargo test` replays each
//! target's corpus (`tests/corpus/<target>/`, crashers found earlier included) and runs a
//! short seeded burst; `cargo xtask soak` runs the same targets for minutes each. The engine
//! and the environment variables are described in `engine.rs` and `docs/testing.md`.
//!
//! What each input must satisfy (besides not panicking and not overflowing the stack):
//! * a message that decodes re-encodes and decodes to itself, in both codecs;
//! * a decoded message holds only valid values: wall times below 2^48, counters within
//!   u16, node ids of 1..=64 `[A-Za-z0-9._-]`, watermark keys equal to their node id
//!   (checked again here, independently of the types that enforce it);
//! * a body that is the canonical encoding of a JSON value decodes the same way (same
//!   message, or both refused) when that value is encoded in the other codec.
//! * the HLC string parser accepts exactly the canonical form (checked against an
//!   independent reference), its order equals the string order, and node id validation
//!   agrees with the reference.

mod engine;
mod mutate;

use std::{
    fmt::Debug,
    fs,
    path::{Path, PathBuf},
};

use engine::{fuzz, replay_corpus, Rng, Settings, Target};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use sync_protocol::{Codec, ExchangeRequest, ExchangeResponse};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target)
}

/// The golden fixtures of one extension (`json` or `msgpack`).
fn fixtures(ext: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| fs::read(p).unwrap()).collect()
}

fn encode_value(codec: Codec, v: &Value) -> Vec<u8> {
    match codec {
        Codec::Json => serde_json::to_vec(v).unwrap(),
        Codec::MessagePack => rmp_serde::to_vec_named(v).unwrap(),
    }
}

fn format(codec: Codec) -> mutate::Format {
    match codec {
        Codec::Json => mutate::Format::Json,
        Codec::MessagePack => mutate::Format::MessagePack,
    }
}

fn other(codec: Codec) -> Codec {
    match codec {
        Codec::Json => Codec::MessagePack,
        Codec::MessagePack => Codec::Json,
    }
}

/// Reference check of a node id, independent of `sync-hlc`.
fn valid_node_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Walks a decoded message's JSON form and checks every HLC and every watermark map.
fn check_values(v: &Value, path: &str) -> Result<(), String> {
    match v {
        Value::Object(o) => {
            if let (Some(w), Some(c), Some(n)) =
                (o.get("wallTime"), o.get("counter"), o.get("nodeId"))
            {
                let ok = w.as_u64().is_some_and(|w| w < 1 << 48)
                    && c.as_u64().is_some_and(|c| c <= 0xffff)
                    && n.as_str().is_some_and(valid_node_id);
                if !ok {
                    return Err(format!("decoded an invalid HLC at {path}: {v}"));
                }
            }
            for (k, child) in o {
                // Row columns are the app's own data: anything goes there.
                if k == "row" || k == "where" {
                    continue;
                }
                if k.ends_with("atermarks") {
                    let Value::Object(map) = child else {
                        return Err(format!("{path}.{k} is not a map"));
                    };
                    for (node, hlc) in map {
                        if hlc.get("nodeId").and_then(Value::as_str) != Some(node.as_str()) {
                            return Err(format!(
                                "decoded a watermark under key {node:?} for another node: {hlc}"
                            ));
                        }
                    }
                }
                check_values(child, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, c)| check_values(c, &format!("{path}[{i}]"))),
        _ => Ok(()),
    }
}

/// An error's kind for the outcome signature: its path without indices and the start of
/// its message.
fn error_kind(e: &sync_protocol::DecodeError) -> String {
    let path: String = e.path.chars().filter(|c| !c.is_ascii_digit()).collect();
    let msg: String = e.message.chars().take(24).collect();
    format!("{path}:{msg}")
}

/// Decodes `body` as `M` in `codec` and checks what came out. Returns the outcome.
fn decode_and_check<M>(codec: Codec, body: &[u8]) -> Result<(String, Option<M>), String>
where
    M: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let m = match codec.decode::<M>(body) {
        Ok(m) => m,
        Err(e) => {
            if e.codec != codec {
                return Err(format!("error names the wrong codec: {e}"));
            }
            return Ok((error_kind(&e), None));
        }
    };
    for c in [codec, other(codec)] {
        let again = c
            .encode(&m)
            .map_err(|e| format!("a decoded message does not encode in {c}: {e}"))?;
        let back: M = c
            .decode(&again)
            .map_err(|e| format!("a decoded message does not decode after {c} encoding: {e}"))?;
        if back != m {
            return Err(format!(
                "{c} round trip changed the message: {m:?} -> {back:?}"
            ));
        }
    }
    let value = serde_json::to_value(&m).map_err(|e| e.to_string())?;
    check_values(&value, "")?;
    Ok(("ok".into(), Some(m)))
}

/// Whether a decode error is about nesting depth (where the codecs' limits count
/// differently by a level or so).
fn depth_error<M>(codec: Codec, body: &[u8]) -> bool
where
    M: DeserializeOwned,
{
    codec
        .decode::<M>(body)
        .err()
        .is_some_and(|e| e.message.contains("recursion limit") || e.message.contains("depth limit"))
}

/// Both messages in one codec, plus the cross-codec differential for canonical bodies.
fn check_body(codec: Codec, body: &[u8]) -> Result<String, String> {
    let (req, req_m) = decode_and_check::<ExchangeRequest>(codec, body)?;
    let (resp, resp_m) = decode_and_check::<ExchangeResponse>(codec, body)?;
    // Differential: the same logical value in the other codec decodes the same way.
    let canonical = match codec {
        Codec::Json => serde_json::from_slice::<Value>(body).ok(),
        Codec::MessagePack => mutate::msgpack_value(body),
    }
    .filter(|v| encode_value(codec, v) == body);
    if let Some(v) = canonical {
        let twin = encode_value(other(codec), &v);
        let (_, req_twin) = decode_and_check::<ExchangeRequest>(other(codec), &twin)?;
        let (_, resp_twin) = decode_and_check::<ExchangeResponse>(other(codec), &twin)?;
        let depth = depth_error::<ExchangeRequest>(codec, body)
            || depth_error::<ExchangeRequest>(other(codec), &twin);
        if !depth && (req_m != req_twin || resp_m != resp_twin) {
            let why = |c: Codec, b: &[u8]| {
                let req = c.decode::<ExchangeRequest>(b).err().map(|e| e.to_string());
                let resp = c.decode::<ExchangeResponse>(b).err().map(|e| e.to_string());
                format!("request error {req:?}, response error {resp:?}")
            };
            return Err(format!(
                "{codec} and {} disagree on the same value: {codec}: {}; {}: {}",
                other(codec),
                why(codec, body),
                other(codec),
                why(other(codec), &twin),
            ));
        }
    }
    Ok(format!("{req}|{resp}"))
}

/// The decoders of one codec.
struct Decode {
    codec: Codec,
}

impl Target for Decode {
    fn name(&self) -> &'static str {
        match self.codec {
            Codec::Json => "json",
            Codec::MessagePack => "msgpack",
        }
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut s = fixtures("json");
        s.extend(fixtures("msgpack"));
        s
    }

    fn generate(&mut self, rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
        let base = rng.pick(pool);
        let structural = rng.chance(3, 4);
        let mut out = match mutate::parse_any(base).filter(|_| structural) {
            Some(mut v) => {
                let n = 1 + rng.below(4);
                mutate::mutate_value_n(rng, &mut v, n);
                mutate::encode(format(self.codec), &v)
            }
            None => base.clone(),
        };
        // Raw mutations on top (always when the structure was kept).
        if !structural || rng.chance(1, 4) {
            let other = rng.pick(pool).clone();
            for _ in 0..1 + rng.below(4) {
                mutate::mutate_bytes(rng, &mut out, &other);
            }
        }
        out
    }

    fn check(&mut self, input: &[u8]) -> Result<String, String> {
        check_body(self.codec, input)
    }
}

/// The HLC string form, node ids and watermark maps.
struct Hlcs;

/// Reference parse of the HLC string form: `<12 lower hex>:<4 lower hex>:<node id>`.
fn reference_hlc(s: &str) -> Option<(u64, u16, &str)> {
    let (wall, rest) = s.split_at_checked(12)?;
    let rest = rest.strip_prefix(':')?;
    let (counter, rest) = rest.split_at_checked(4)?;
    let node = rest.strip_prefix(':')?;
    let hex = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(wall) || !hex(counter) || !valid_node_id(node) {
        return None;
    }
    Some((
        u64::from_str_radix(wall, 16).ok()?,
        u16::from_str_radix(counter, 16).ok()?,
        node,
    ))
}

impl Target for Hlcs {
    fn name(&self) -> &'static str {
        "hlc"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            "0000000003e8:0001:a",
            "01a21217d006:0001:6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13\nffffffffffff:ffff:z",
            "000000000000:0000:local\n000000000000:0000:cloud",
            r#"{"wallTime":1000,"counter":2,"nodeId":"local"}"#,
            r#"{"a":{"wallTime":1,"counter":0,"nodeId":"a"},"b":{"wallTime":2,"counter":1,"nodeId":"b"}}"#,
            "cloud-0b9e4d2c-71a3-4f86-b5c8-93e2a1d4f607",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn generate(&mut self, rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
        let mut out = rng.pick(pool).clone();
        match rng.below(4) {
            0 => {
                if let Some(mut v) = mutate::parse_any(&out) {
                    mutate::mutate_value_n(rng, &mut v, 1);
                    let f = if rng.chance(1, 2) {
                        mutate::Format::Json
                    } else {
                        mutate::Format::MessagePack
                    };
                    out = mutate::encode(f, &v);
                }
            }
            1 => {
                // Two lines: an order check of two timestamps.
                let other = rng.pick(pool);
                out.push(b'\n');
                out.extend_from_slice(other);
            }
            _ => {
                let other = rng.pick(pool).clone();
                for _ in 0..1 + rng.below(3) {
                    mutate::mutate_bytes(rng, &mut out, &other);
                }
            }
        }
        out
    }

    fn check(&mut self, input: &[u8]) -> Result<String, String> {
        use sync_hlc::{Hlc, NodeId, Watermarks};
        let mut outcome = String::new();
        if let Ok(text) = std::str::from_utf8(input) {
            let mut parsed = Vec::new();
            for line in text.split('\n') {
                let ours = line.parse::<Hlc>();
                let reference = reference_hlc(line);
                match (&ours, reference) {
                    (Ok(h), Some((w, c, n))) => {
                        if h.wall_time() != w || h.counter() != c || h.node_id().as_str() != n {
                            return Err(format!("{line:?} parsed as {h:?}"));
                        }
                        if h.to_string() != line {
                            return Err(format!("{line:?} does not print back: {h}"));
                        }
                        parsed.push(h.clone());
                    }
                    (Err(_), None) => {}
                    (Ok(h), None) => {
                        return Err(format!("{line:?} parsed ({h:?}) but is not canonical"))
                    }
                    (Err(e), Some(_)) => {
                        return Err(format!("{line:?} is canonical but refused: {e}"))
                    }
                }
                let node_ok = NodeId::new(line).is_ok();
                if node_ok != valid_node_id(line) {
                    return Err(format!("node id {line:?}: accepted = {node_ok}"));
                }
                outcome.push_str(if ours.is_ok() { "h" } else { "-" });
                outcome.push_str(if node_ok { "n" } else { "-" });
            }
            // Order of timestamps equals the order of their string forms.
            for pair in parsed.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if a.cmp(b) != a.to_string().cmp(&b.to_string()) {
                    return Err(format!("order of {a} and {b} differs from their strings"));
                }
            }
        }
        for codec in [Codec::Json, Codec::MessagePack] {
            let value = match codec {
                Codec::Json => serde_json::from_slice::<Value>(input).ok(),
                Codec::MessagePack => mutate::msgpack_value(input),
            };
            if let Ok(h) = codec.decode::<Hlc>(input) {
                let v = serde_json::to_value(&h).unwrap();
                check_values(&v, "")?;
                // The input held the same numbers (no rounding, no wrapping).
                if let Some(Value::Object(o)) = &value {
                    if o.get("wallTime").and_then(Value::as_u64) != Some(h.wall_time())
                        || o.get("counter").and_then(Value::as_u64) != Some(u64::from(h.counter()))
                    {
                        return Err(format!(
                            "{codec} HLC {h:?} differs from its input {value:?}"
                        ));
                    }
                }
                outcome.push('H');
            }
            match codec.decode::<Watermarks>(input) {
                Ok(w) => {
                    for (k, h) in w.iter() {
                        if k != h.node_id() {
                            return Err(format!("watermark key {k} holds {h:?}"));
                        }
                    }
                    let again = codec.encode(&w).map_err(|e| e.to_string())?;
                    if codec
                        .decode::<Watermarks>(&again)
                        .map_err(|e| e.to_string())?
                        != w
                    {
                        return Err(format!("{codec} watermarks do not round-trip: {w:?}"));
                    }
                    outcome.push('W');
                }
                Err(e) => outcome.push_str(&error_kind(&e)),
            }
        }
        Ok(outcome)
    }
}

fn run(target: &mut dyn Target, default_secs: f64) {
    let settings = Settings::for_target(target.name(), default_secs);
    let dir = corpus_dir(target.name());
    fuzz(target, &dir, &settings, engine::BATCH);
}

fn replay(target: &mut dyn Target) {
    let dir = corpus_dir(target.name());
    let n = replay_corpus(target, &dir);
    assert!(
        n > 0,
        "the corpus of {} is empty: {}",
        target.name(),
        dir.display()
    );
}

#[test]
fn corpus_json_replays() {
    replay(&mut Decode { codec: Codec::Json });
}

#[test]
fn corpus_msgpack_replays() {
    replay(&mut Decode {
        codec: Codec::MessagePack,
    });
}

#[test]
fn corpus_hlc_replays() {
    replay(&mut Hlcs);
}

#[test]
fn fuzz_json_decoders() {
    run(&mut Decode { codec: Codec::Json }, 0.7);
}

#[test]
fn fuzz_msgpack_decoders() {
    run(
        &mut Decode {
            codec: Codec::MessagePack,
        },
        0.7,
    );
}

#[test]
fn fuzz_hlc_parsers() {
    run(&mut Hlcs, 0.3);
}

/// The oracle is not vacuous: known-bad inputs fail it.
#[test]
fn the_checks_catch_what_they_claim_to() {
    assert!(check_values(
        &serde_json::json!({"watermarks": {"a": {"wallTime": 1, "counter": 0, "nodeId": "b"}}}),
        ""
    )
    .is_err());
    assert!(check_values(
        &serde_json::json!({"x": {"wallTime": 1u64 << 48, "counter": 0, "nodeId": "b"}}),
        ""
    )
    .is_err());
    assert!(check_values(
        &serde_json::json!({"x": {"wallTime": 1, "counter": 0, "nodeId": "a b"}}),
        ""
    )
    .is_err());
    assert_eq!(reference_hlc("0000000003e8:0001:a"), Some((1000, 1, "a")));
    assert_eq!(reference_hlc("0000000003E8:0001:a"), None);
    assert_eq!(reference_hlc("0000000003e8:0001:a:b"), None);
}
