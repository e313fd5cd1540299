//! Object keys in URLs: percent-encoded per segment by the client, strictly decoded and
//! checked (traversal, empty segments, control characters, namespace) by the server.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sync_core::Channel;

/// Everything but the RFC 3986 unreserved characters is encoded in a key segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Longest key accepted (S3's limit).
pub(crate) const MAX_KEY_BYTES: usize = 1024;

/// The URL form of a key: each `/`-separated segment percent-encoded. A last segment that is
/// literally `stat` is written `%73tat`, so `GET .../files/{key}` never collides with the
/// `.../files/{key}/stat` route.
pub(crate) fn encode_key(key: &str) -> String {
    let segments: Vec<&str> = key.split('/').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i == last && *s == "stat" {
                "%73tat".to_string()
            } else {
                utf8_percent_encode(s, SEGMENT).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Decodes the raw (still percent-encoded) key of a `/files/{key}` URL and checks it is a
/// plain relative key. Errors are client mistakes (400).
pub(crate) fn decode_key(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(format!(
                    "bad percent-encoding in object key at byte {i}: `%` must be followed by \
                     two hex digits"
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "object key is not valid UTF-8 after percent-decoding".to_string())?
        .into_owned();
    check_key(&key)?;
    Ok(key)
}

/// Whether a decoded key is a plain relative key: not empty, not absolute, no empty, `.` or
/// `..` segments, no control characters or backslashes, at most [`MAX_KEY_BYTES`].
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("object key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("object key is longer than {MAX_KEY_BYTES} bytes"));
    }
    if key.starts_with('/') {
        return Err("object key must be relative (it starts with `/`)".into());
    }
    if let Some(c) = key.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!("object key contains a forbidden character {c:?}"));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("object key has an empty segment (`//` or a trailing `/`)".into()),
            "." | ".." => {
                return Err(format!(
                    "object key has a `{segment}` segment (path traversal)"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `key` lies in `channel`'s namespace: `shared/...` for Drive, `apps/X/...` for
/// app X. Outside it is a 403.
pub(crate) fn in_namespace(channel: &Channel, key: &str) -> bool {
    let prefix = channel.key_prefix();
    key.len() > prefix.len() && key.starts_with(&prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        for key in [
            "shared/image/b1/b13bf86d",
            "apps/photos/syncable/a b+c%d?e#f",
            "shared/ü/ñ/stat",
            "shared/x/stat/y",
        ] {
            let enc = encode_key(key);
            assert!(!enc.contains(' ') && !enc.contains('?') && !enc.contains('#'));
            assert!(!enc.ends_with("/stat"), "{enc}");
            assert_eq!(decode_key(&enc).unwrap(), key);
        }
    }

    #[test]
    fn refuses_traversal_and_bad_encoding() {
        for raw in [
            "shared/../etc",
            "shared/%2E%2E/etc",
            "shared//x",
            "shared/x/",
            "%2Fetc/passwd",
            "shared/%zz",
            "shared/%4",
            "shared/%00x",
            "shared/a%5Cb",
            "shared/%FF",
            "",
        ] {
            assert!(decode_key(raw).is_err(), "{raw} accepted");
        }
    }

    #[test]
    fn namespaces() {
        assert!(in_namespace(&Channel::Drive, "shared/a"));
        assert!(!in_namespace(&Channel::Drive, "shared/"));
        assert!(!in_namespace(&Channel::Drive, "apps/x/a"));
        let app = Channel::App("x".into());
        assert!(in_namespace(&app, "apps/x/a"));
        assert!(!in_namespace(&app, "apps/xy/a"));
        assert!(!in_namespace(&app, "shared/a"));
    }
}
