use std::{borrow::Borrow, fmt, str::FromStr, sync::Arc};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::{error::truncated, Error};

/// Longest node id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// The id of an origin node (a device or a server): 1..=64 bytes of ASCII letters, digits,
/// `-`, `_` or `.`.
///
/// The restricted alphabet makes byte order equal the TypeScript reference's string order,
/// so timestamps tie-break the same way on both sides. Cloning is cheap (shared string).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        validate(id)?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(id: &str) -> Result<(), Error> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_NODE_ID_LEN {
        "it is longer than 64 bytes"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "only ASCII letters, digits, '-', '_' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidNodeId {
        id: truncated(id),
        reason,
    })
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeId, E> {
                NodeId::new(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_production_formats() {
        for id in [
            "local",
            "6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13",
            "cloud-0b9e4d2c-71a3-4f86-b5c8-93e2a1d4f607",
            "a.b_c-D9",
            &"x".repeat(64),
        ] {
            assert_eq!(NodeId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn rejects_bad_ids_with_a_reason() {
        for id in ["", "a b", "a:b", "é", "a/b", "a\nb", &"x".repeat(65)] {
            let err = NodeId::new(id).unwrap_err();
            assert!(matches!(err, Error::InvalidNodeId { .. }), "{id:?}");
        }
        let msg = NodeId::new("a:b").unwrap_err().to_string();
        assert!(msg.contains("only ASCII letters"), "{msg}");
    }

    #[test]
    fn orders_like_the_typescript_reference() {
        // "local" > "cloud", so L wins a timestamp tie in the reference's scenarios.
        assert!(NodeId::new("local").unwrap() > NodeId::new("cloud").unwrap());
        assert!(NodeId::new("Z").unwrap() < NodeId::new("a").unwrap());
    }
}
