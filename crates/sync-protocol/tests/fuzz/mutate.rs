//! Mutations for the fuzz targets: byte-level (flip, overwrite, insert, delete, splice,
//! truncate, hostile MessagePack headers and JSON tokens) and structure-aware on a JSON value
//! (numbers made negative, fractional or huge, strings made into bad node ids, fields removed
//! or retyped, subtrees nested deeply, watermark keys renamed, ...).

#![allow(dead_code)] // Each test binary that includes this file uses a different part of it.

use serde_json::{Map, Number, Value};

use super::engine::Rng;

/// Numbers a decoder must refuse or take exactly: around the HLC limits and the integer
/// widths, negative, fractional, huge.
pub fn hostile_number(rng: &mut Rng) -> Value {
    let n: Value = match rng.below(16) {
        0 => (-1i64).into(),
        1 => 1.5f64.into(),
        2 => ((1u64 << 48) - 1).into(),
        3 => (1u64 << 48).into(),
        4 => 65_535u64.into(),
        5 => 65_536u64.into(),
        6 => u64::MAX.into(),
        7 => i64::MIN.into(),
        8 => 1e300f64.into(),
        9 => (-0.0f64).into(),
        10 => 0u64.into(),
        11 => u32::MAX.into(),
        12 => (u64::from(u32::MAX) + 1).into(),
        13 => Value::Number(Number::from_f64(1.8446744073709552e19).unwrap()),
        14 => 4.0f64.into(),
        _ => (rng.next_u64() >> rng.below(64)).into(),
    };
    n
}

/// Strings that are bad (or borderline) node ids, HLC strings, keys and ids.
pub fn hostile_string(rng: &mut Rng) -> String {
    match rng.below(22) {
        0 => String::new(),
        1 => "a".repeat(64),
        2 => "a".repeat(65),
        3 => "a b".into(),
        4 => "é".into(),
        5 => "a\u{0}b".into(),
        6 => "a:b".into(),
        7 => "../../etc/passwd".into(),
        8 => "shared/%2e%2e/%2e%2e/x".into(),
        9 => "shared/..%2F..%2Fx".into(),
        10 => "0000000003e8:0001:a".into(),
        11 => "ffffffffffff:ffff:z".into(),
        12 => "1000000000000:0000:a".into(),
        13 => "0000000003e8:10000:a".into(),
        14 => "cloud-0b9e4d2c-71a3-4f86-b5c8-93e2a1d4f607".into(),
        15 => "6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13".into(),
        16 => "x".repeat(20_000),
        17 => "\u{feff}a".into(),
        18 => "a\\b".into(),
        19 => "apps/photos/syncable/x".into(),
        20 => "\u{202e}evil".into(),
        _ => {
            let len = rng.below(12);
            (0..len)
                .map(|_| char::from_u32(rng.below(0x250) as u32).unwrap_or('?'))
                .collect()
        }
    }
}

/// Any small value, of any JSON type.
pub fn any_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => hostile_number(rng),
        3 => Value::String(hostile_string(rng)),
        4 => Value::Array(
            (0..rng.below(3))
                .map(|_| any_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(3))
                .map(|_| (hostile_string(rng), any_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A valid HLC object `{wallTime, counter, nodeId}`.
pub fn hlc_value(rng: &mut Rng, node: &str) -> Value {
    serde_json::json!({
        "wallTime": 1_795_599_880_000u64 + rng.below(1000) as u64,
        "counter": rng.below(4),
        "nodeId": node,
    })
}

/// Walks down from the root, stopping at a random depth.
fn nth_mut_simple<'a>(v: &'a mut Value, rng: &mut Rng) -> &'a mut Value {
    let stop = rng.chance(1, 4);
    let len = match v {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        _ => 0,
    };
    if stop || len == 0 {
        return v;
    }
    let i = rng.below(len);
    match v {
        Value::Array(a) => nth_mut_simple(&mut a[i], rng),
        Value::Object(o) => {
            let (_, child) = o.iter_mut().nth(i).unwrap();
            nth_mut_simple(child, rng)
        }
        _ => unreachable!(),
    }
}

/// Marks a string that [`encode`] replaces with deep nesting: `NEST_MARK<depth><a|o>`.
const NEST_MARK: &str = "\u{1}nest:";

/// Wraps `v` in `depth` arrays or one-key objects.
pub fn nest(v: Value, depth: usize, objects: bool) -> Value {
    (0..depth).fold(v, |inner, _| {
        if objects {
            let mut m = Map::new();
            m.insert("n".into(), inner);
            Value::Object(m)
        } else {
            Value::Array(vec![inner])
        }
    })
}

/// Field names of the wire messages, to add or rename into.
const FIELDS: &[&str] = &[
    "watermarks",
    "records",
    "appSyncableRows",
    "limit",
    "protocolVersion",
    "peerWatermarks",
    "responderWatermarks",
    "hasMore",
    "haltedAuthors",
    "refusals",
    "wallTime",
    "counter",
    "nodeId",
    "updatedAt",
    "createdAt",
    "deletedAt",
    "timestamp",
    "row",
    "where",
    "op",
    "appId",
    "table",
    "objectStorageKey",
    "contentHash",
    "sizeBytes",
    "version",
    "id",
];

/// Up to `n` structure-aware mutations of `root`, stopping before it encodes to more than
/// 1 MiB (a value that size is plenty, and growth compounds).
pub fn mutate_value_n(rng: &mut Rng, root: &mut Value, n: usize) {
    for _ in 0..n {
        let before = root.clone();
        mutate_value(rng, root);
        if serde_json::to_vec(root).map_or(true, |b| b.len() > 1 << 20) {
            *root = before;
            return;
        }
    }
}

/// One structure-aware mutation of `root`.
pub fn mutate_value(rng: &mut Rng, root: &mut Value) {
    let choice = rng.below(15);
    let depths = [2usize, 50, 126, 127, 128, 129, 200, 5_000];
    let node = nth_mut_simple(root, rng);
    match choice {
        0 | 1 => {
            // Numbers: negative, fractional, huge, at the limits.
            *node = if node.is_number() || rng.chance(1, 3) {
                hostile_number(rng)
            } else {
                node.clone()
            };
        }
        2 => *node = Value::String(hostile_string(rng)),
        3 => *node = any_value(rng, 2),
        4 => {
            if let Value::Object(o) = node {
                if !o.is_empty() {
                    let k = o.keys().nth(rng.below(o.len())).unwrap().clone();
                    o.remove(&k);
                }
            }
        }
        5 => {
            if let Value::Object(o) = node {
                o.insert((*rng.pick(FIELDS)).to_string(), any_value(rng, 2));
            }
        }
        6 => {
            // Rename a key: watermark keys that differ from their node id, wrong case, ...
            if let Value::Object(o) = node {
                if !o.is_empty() {
                    let k = o.keys().nth(rng.below(o.len())).unwrap().clone();
                    let v = o.remove(&k).unwrap();
                    let new = match rng.below(3) {
                        0 => hostile_string(rng),
                        1 => k.to_lowercase(),
                        _ => (*rng.pick(FIELDS)).to_string(),
                    };
                    o.insert(new, v);
                }
            }
        }
        7 => {
            if let Value::Array(a) = node {
                if !a.is_empty() {
                    let i = rng.below(a.len());
                    match rng.below(3) {
                        0 => {
                            a.remove(i);
                        }
                        1 => {
                            let c = a[i].clone();
                            a.insert(i, c);
                        }
                        _ => a.reverse(),
                    }
                }
            }
        }
        8 => {
            let depth = *rng.pick(&depths);
            let objects = rng.chance(1, 2);
            if depth <= 120 {
                let inner = std::mem::take(node);
                *node = nest(inner, depth, objects);
            } else {
                // Deeper than a `Value` may safely be (building, printing and dropping one
                // recurses): a marker that `encode` expands into the nesting.
                *node = Value::String(format!(
                    "{NEST_MARK}{depth}{}",
                    if objects { "o" } else { "a" }
                ));
            }
        }
        9 => {
            // A valid HLC where something else was, or a node id swapped inside one.
            let n = hostile_string(rng);
            *node = hlc_value(rng, &n);
        }
        10 => *node = Value::Null,
        11 => {
            // Many copies of one element: large but shallow, and bounded (repeated, this
            // mutation alone once grew a value to 18 GB and the soak was killed for memory).
            let size = serde_json::to_vec(node).map_or(usize::MAX, |b| b.len());
            let copies = (1 + rng.below(64)).min((256 << 10) / size.max(1)).max(1);
            let c = node.clone();
            *node = Value::Array(vec![c; copies]);
        }
        12 => {
            // Type confusion: the same content as another type.
            *node = match std::mem::take(node) {
                Value::Object(o) => Value::Array(o.into_iter().map(|(_, v)| v).collect()),
                Value::Array(a) => Value::Object(
                    a.into_iter()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v))
                        .collect(),
                ),
                Value::Number(n) => Value::String(n.to_string()),
                Value::String(s) => s
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or(Value::Bool(true)),
                other => other,
            }
        }
        13 => {
            // Shift an HLC's wall time or counter by one around the limits.
            if let Value::Object(o) = node {
                for key in ["wallTime", "counter"] {
                    if let Some(v) = o.get_mut(key) {
                        *v = hostile_number(rng);
                    }
                }
            }
        }
        _ => {
            // Copy a random subtree of the whole message over this node.
            let copy = {
                let mut c = root.clone();
                nth_mut_simple(&mut c, rng).clone()
            };
            let node = nth_mut_simple(root, rng);
            *node = copy;
        }
    }
}

/// Interesting bytes to write over others.
const MAGIC_BYTES: &[u8] = &[
    0x00, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc2, 0xc3, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd3, 0xca, 0xcb,
    0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xc4, 0xc6, 0xc7, 0xd4, 0xd8, 0x90, 0x9f, 0x80, 0x8f,
    0xa0, 0xbf, b'{', b'}', b'[', b']', b'"', b'\\', b':', b',', b'-', b'.', b'e', b'0', b'9',
];

/// Byte runs that decoders must refuse cheaply: MessagePack headers announcing huge arrays,
/// maps, strings and binaries, and JSON tokens at the edges of the number grammar.
const MAGIC_RUNS: &[&[u8]] = &[
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdf, 0xff, 0xff, 0xff, 0xff],
    &[0xdb, 0xff, 0xff, 0xff, 0xff],
    &[0xc6, 0xff, 0xff, 0xff, 0xff],
    &[0xdc, 0xff, 0xff],
    &[0xde, 0xff, 0xff],
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xd7, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
    &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
    &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
    b"1e999",
    b"-0",
    b"1.0",
    b"18446744073709551616",
    b"281474976710656",
    b"0.000000000000000000000000000001",
    b"-9223372036854775809",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"NaN",
    b"Infinity",
    b"null",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":",
];

/// One byte-level mutation of `data` (may splice in a piece of `other`).
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(10) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = *rng.pick(MAGIC_BYTES);
        }
        2 => {
            let i = at(rng, data.len());
            let run = rng.pick(MAGIC_RUNS);
            data.splice(i..i, run.iter().copied());
        }
        3 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(16));
            data.drain(i..i + n);
        }
        4 => data.truncate(at(rng, data.len())),
        5 if !other.is_empty() => {
            // Splice: our head, the other input's tail.
            let i = at(rng, data.len());
            let j = rng.below(other.len());
            data.truncate(i);
            data.extend_from_slice(&other[j..]);
        }
        6 if !data.is_empty() => {
            // Duplicate a chunk.
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(64));
            let chunk = data[i..i + n].to_vec();
            let j = at(rng, data.len());
            data.splice(j..j, chunk);
        }
        7 => {
            let i = at(rng, data.len());
            let n = 1 + rng.below(8);
            let random = rng.bytes(n);
            data.splice(i..i, random);
        }
        8 if !data.is_empty() => {
            // Overwrite a run of digits (JSON numbers) with an edge token.
            let i = rng.below(data.len());
            if let Some(start) = data[i..].iter().position(u8::is_ascii_digit).map(|p| p + i) {
                let end = data[start..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(data.len(), |p| p + start);
                let token = rng.pick(&MAGIC_RUNS[11..18]);
                data.splice(start..end, token.iter().copied());
            }
        }
        _ => {
            let i = at(rng, data.len());
            data.insert(i, rng.byte());
        }
    }
}

/// A JSON value of a body in either codec, if it parses as one.
pub fn parse_any(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes)
        .ok()
        .or_else(|| msgpack_value(bytes))
}

/// A MessagePack body as a JSON value (the codec refuses nesting deeper than 128 levels, so
/// the value is safe to build and drop).
pub fn msgpack_value(bytes: &[u8]) -> Option<Value> {
    sync_protocol::Codec::MessagePack.decode(bytes).ok()
}

/// Whether to encode as JSON (else MessagePack with named fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MessagePack,
}

/// Encodes `v`, expanding nesting markers into `depth` levels of arrays or one-key maps
/// around a null, at the byte level (no deep `Value` is ever built). At most about 1 MiB of
/// nesting is written in all.
pub fn encode(format: Format, v: &Value) -> Vec<u8> {
    let out = match format {
        Format::Json => serde_json::to_vec(v).unwrap(),
        Format::MessagePack => sync_protocol::Codec::MessagePack.encode(v).unwrap(),
    };
    // JSON escapes the marker's control character; MessagePack keeps it raw.
    let mark: &[u8] = match format {
        Format::Json => b"\\u0001nest:",
        Format::MessagePack => NEST_MARK.as_bytes(),
    };
    let mut budget = 1usize << 20;
    let mut result = Vec::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        if !out[i..].starts_with(mark) {
            result.push(out[i]);
            i += 1;
            continue;
        }
        let digits = i + mark.len();
        let digits_end = digits
            + out[digits..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap();
        let depth: usize = std::str::from_utf8(&out[digits..digits_end])
            .unwrap()
            .parse()
            .unwrap();
        let depth = depth.min(budget / 4);
        budget -= depth * 4;
        let objects = out[digits_end] == b'o';
        // Drop what opened the marker string (a JSON quote, a MessagePack fixstr header) and
        // skip what closes it (the kind letter, and a JSON quote).
        result.pop();
        i = digits_end + 1 + usize::from(format == Format::Json);
        match (format, objects) {
            (Format::Json, false) => {
                result.extend(b"[".repeat(depth));
                result.extend(b"null");
                result.extend(b"]".repeat(depth));
            }
            (Format::Json, true) => {
                result.extend(b"{\"n\":".repeat(depth));
                result.extend(b"null");
                result.extend(b"}".repeat(depth));
            }
            (Format::MessagePack, false) => {
                result.extend(std::iter::repeat_n(0x91u8, depth));
                result.push(0xc0);
            }
            (Format::MessagePack, true) => {
                result.extend([0x81u8, 0xa1, b'n'].repeat(depth));
                result.push(0xc0);
            }
        }
    }
    result
}
