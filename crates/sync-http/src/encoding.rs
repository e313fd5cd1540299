//! Compressed exchange bodies: `Content-Encoding: zstd`, negotiated with standard headers so
//! a peer that knows nothing of it (the TypeScript reference) never sees a compressed body.
//!
//! * A client that can read zstd says so with `Accept-Encoding: zstd`; the server then
//!   compresses its response (above [`MIN_COMPRESSED`] bytes).
//! * A server that takes zstd request bodies says so in its exchange responses with
//!   `Accept-Encoding: zstd` (RFC 7694); only then does a client compress its requests.
//! * Decompression is bounded: a body that inflates past the receiver's cap is refused as
//!   too large, whatever its compressed size (no decompression bombs).

use std::io::Read;

use http::{header, HeaderMap};

/// The content coding used.
pub(crate) const ZSTD: &str = "zstd";

/// Bodies smaller than this are sent as they are: compressing them saves nothing.
pub(crate) const MIN_COMPRESSED: usize = 1024;

/// zstd level: the fastest standard level; exchange pages compress 3-6x at it.
const LEVEL: i32 = 1;

/// Why a compressed body was refused.
#[derive(Debug)]
pub(crate) enum Inflate {
    /// It inflates past the cap.
    TooLarge,
    /// It is not valid zstd.
    Invalid(String),
}

/// Compresses a body.
pub(crate) fn compress(bytes: &[u8]) -> Vec<u8> {
    // Encoding into memory cannot fail for a valid level.
    zstd::bulk::compress(bytes, LEVEL).unwrap_or_else(|_| bytes.to_vec())
}

/// Decompresses a body of at most `limit` bytes once inflated.
pub(crate) fn decompress(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Inflate> {
    let decoder =
        zstd::stream::read::Decoder::new(bytes).map_err(|e| Inflate::Invalid(e.to_string()))?;
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(limit));
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Inflate::Invalid(e.to_string()))?;
    if out.len() > limit {
        return Err(Inflate::TooLarge);
    }
    Ok(out)
}

/// Whether a header of `name` (`Accept-Encoding` or `Content-Encoding` style: a comma
/// separated list, with optional `;q=` weights) lists zstd with a non-zero weight.
pub(crate) fn lists_zstd(headers: &HeaderMap, name: &header::HeaderName) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let zero = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case(ZSTD) && !zero
        })
}

/// The body's content coding: `Ok(false)` for none or `identity`, `Ok(true)` for zstd, and
/// the name of anything else.
pub(crate) fn content_coding(headers: &HeaderMap) -> Result<bool, String> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let value = value.to_str().unwrap_or("").trim();
    if value.is_empty() || value.eq_ignore_ascii_case("identity") {
        Ok(false)
    } else if value.eq_ignore_ascii_case(ZSTD) {
        Ok(true)
    } else {
        Err(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn round_trips_and_bounds_the_inflated_size() {
        let body: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let packed = compress(&body);
        assert!(packed.len() < body.len() / 4, "{}", packed.len());
        assert_eq!(decompress(&packed, body.len()).unwrap(), body);
        assert!(matches!(
            decompress(&packed, body.len() - 1),
            Err(Inflate::TooLarge)
        ));
        assert!(matches!(
            decompress(b"definitely not zstd", 1000),
            Err(Inflate::Invalid(_))
        ));
        // A bomb: a gigabyte of zeros in a few kilobytes stops at the cap.
        let zeros = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        assert!(zeros.len() < 64 << 10);
        assert!(matches!(
            decompress(&zeros, 1 << 20),
            Err(Inflate::TooLarge)
        ));
    }

    #[test]
    fn negotiation_reads_lists_and_weights() {
        let ae = header::ACCEPT_ENCODING;
        assert!(lists_zstd(&headers(ae.clone(), "zstd"), &ae));
        assert!(lists_zstd(&headers(ae.clone(), "gzip, ZSTD;q=0.5"), &ae));
        assert!(!lists_zstd(&headers(ae.clone(), "gzip, br"), &ae));
        assert!(!lists_zstd(&headers(ae.clone(), "zstd;q=0"), &ae));
        assert!(!lists_zstd(&HeaderMap::new(), &ae));
        let ce = header::CONTENT_ENCODING;
        assert_eq!(content_coding(&HeaderMap::new()), Ok(false));
        assert_eq!(content_coding(&headers(ce.clone(), "identity")), Ok(false));
        assert_eq!(content_coding(&headers(ce.clone(), "zstd")), Ok(true));
        assert_eq!(
            content_coding(&headers(ce, "gzip")),
            Err("gzip".to_string())
        );
    }
}
