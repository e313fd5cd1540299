use std::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Deepest nesting of arrays and maps a MessagePack body may have (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// A body format of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// `application/json`, the TypeScript shape.
    Json,
    /// `application/msgpack`, the same logical shape with named fields (the Rust default).
    #[default]
    MessagePack,
}

/// A body that could not be decoded; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {codec} body at `{path}`: {message}")]
pub struct DecodeError {
    /// The format being decoded.
    pub codec: Codec,
    /// Path of the offending field, e.g. `records[0].updatedAt.wallTime` (`.` for the root).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// A value that could not be encoded (not expected for the wire types).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {codec} body: {message}")]
pub struct EncodeError {
    /// The target format.
    pub codec: Codec,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Json => "JSON",
            Codec::MessagePack => "MessagePack",
        })
    }
}

impl Codec {
    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::MessagePack => "application/msgpack",
        }
    }

    /// The format named by a `Content-Type` header value (parameters ignored), if known.
    /// `application/x-msgpack` and `application/vnd.msgpack` are accepted as aliases.
    pub fn from_content_type(value: &str) -> Option<Codec> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Some(Codec::Json)
        } else if [
            "application/msgpack",
            "application/x-msgpack",
            "application/vnd.msgpack",
        ]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
        {
            Some(Codec::MessagePack)
        } else {
            None
        }
    }

    /// Encodes a message (compact JSON, or MessagePack with named fields).
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let err = |message: String| EncodeError {
            codec: self,
            message,
        };
        match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| err(e.to_string())),
            Codec::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| err(e.to_string())),
        }
    }

    /// Decodes a message, ignoring unknown fields and naming the field that is wrong.
    ///
    /// The fast path decodes straight from the slice; only a body that fails is decoded a
    /// second time with path tracking, to name the offending field.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        match self.decode_untracked(bytes) {
            Ok(value) => Ok(value),
            Err(Untracked::Trailing) => Err(DecodeError {
                codec: self,
                path: ".".into(),
                message: "trailing data".into(),
            }),
            Err(Untracked::Invalid) => Err(self.decode_tracked::<T>(bytes).err().unwrap_or_else(
                // Both decoders run the same `Deserialize`; should they ever disagree, the
                // body is still refused.
                || DecodeError {
                    codec: self,
                    path: ".".into(),
                    message: "invalid body".into(),
                },
            )),
        }
    }

    fn decode_untracked<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, Untracked> {
        match self {
            Codec::Json => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let value = T::deserialize(&mut de).map_err(|_| Untracked::Invalid)?;
                // Trailing bytes after the value are an error, not ignored.
                de.end().map_err(|_| Untracked::Trailing)?;
                Ok(value)
            }
            Codec::MessagePack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                // rmp-serde allows 1024 levels of nesting, enough for a hostile body to
                // overflow the stack; serde_json stops at 128, so does this.
                de.set_max_depth(MAX_DEPTH);
                let value = T::deserialize(&mut de).map_err(|_| Untracked::Invalid)?;
                // Trailing bytes must be refused. The borrowed reader cannot say how much it
                // read, so try to read one more value: only the end of the input may stop it.
                match serde::de::IgnoredAny::deserialize(&mut de) {
                    Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                        if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        Ok(value)
                    }
                    _ => Err(Untracked::Trailing),
                }
            }
        }
    }

    /// The slow path: decodes with the field path tracked, for the error message.
    fn decode_tracked<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        let fail = |path: String, message: String| DecodeError {
            codec: self,
            path: if path.is_empty() { ".".into() } else { path },
            message,
        };
        match self {
            Codec::Json => {
                let de = &mut serde_json::Deserializer::from_slice(bytes);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| fail(e.path().to_string(), e.into_inner().to_string()))
            }
            Codec::MessagePack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                de.set_max_depth(MAX_DEPTH);
                serde_path_to_error::deserialize(&mut de)
                    .map_err(|e| fail(e.path().to_string(), e.into_inner().to_string()))
            }
        }
    }
}

/// Why the fast path refused a body.
enum Untracked {
    Invalid,
    Trailing,
}
