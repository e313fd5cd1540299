use std::{fmt, str::FromStr};

use serde::{de, ser::SerializeStruct, Deserialize, Deserializer, Serialize, Serializer};

use crate::{error::truncated, Error, NodeId};

/// Largest wall time: 12 hex digits of milliseconds (about the year 10889).
pub const MAX_WALL_TIME: u64 = (1 << 48) - 1;
/// Largest counter value.
pub const MAX_COUNTER: u16 = u16::MAX;

/// A hybrid logical clock timestamp: wall time in milliseconds since the Unix epoch, a counter
/// for events within one millisecond, and the id of the node that issued it.
///
/// Ordered by wall time, then counter, then node id byte-wise; the string form
/// (`%012x:%04x:<node id>`) sorts the same way.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    wall_time: u64,
    counter: u16,
    node_id: NodeId,
}

impl Hlc {
    /// A timestamp, refused if the wall time is past [`MAX_WALL_TIME`].
    pub fn new(wall_time: u64, counter: u16, node_id: NodeId) -> Result<Self, Error> {
        if wall_time > MAX_WALL_TIME {
            return Err(Error::WallTimeOutOfRange(wall_time));
        }
        Ok(Self {
            wall_time,
            counter,
            node_id,
        })
    }

    /// The lowest timestamp of a node: what "nothing seen yet" compares as.
    pub fn zero(node_id: NodeId) -> Self {
        Self {
            wall_time: 0,
            counter: 0,
            node_id,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_time(&self) -> u64 {
        self.wall_time
    }

    /// Events within the same millisecond.
    pub fn counter(&self) -> u16 {
        self.counter
    }

    /// The node that issued this timestamp: the item's origin node.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:012x}:{:04x}:{}",
            self.wall_time, self.counter, self.node_id
        )
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Hlc {
    type Err = Error;

    /// Parses the string form `<12 lower-case hex>:<4 lower-case hex>:<node id>`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason| Error::MalformedString {
            input: truncated(s),
            reason,
        };
        let mut parts = s.splitn(3, ':');
        let (Some(wall), Some(counter), Some(node)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected three ':'-separated parts"));
        };
        let is_hex = |p: &str| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if wall.len() != 12 || !is_hex(wall) {
            return Err(bad("wall time must be 12 lower-case hex digits"));
        }
        if counter.len() != 4 || !is_hex(counter) {
            return Err(bad("counter must be 4 lower-case hex digits"));
        }
        let wall = u64::from_str_radix(wall, 16).map_err(|_| bad("wall time is not hex"))?;
        let counter = u16::from_str_radix(counter, 16).map_err(|_| bad("counter is not hex"))?;
        Hlc::new(wall, counter, NodeId::new(node)?)
    }
}

impl Serialize for Hlc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Hlc", 3)?;
        st.serialize_field("wallTime", &self.wall_time)?;
        st.serialize_field("counter", &self.counter)?;
        st.serialize_field("nodeId", &self.node_id)?;
        st.end()
    }
}

/// The wire shape `{wallTime, counter, nodeId}`; extra fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireHlc {
    wall_time: u64,
    counter: u64,
    node_id: NodeId,
}

impl<'de> Deserialize<'de> for Hlc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireHlc::deserialize(d)?;
        let counter = u16::try_from(w.counter)
            .map_err(|_| de::Error::custom(Error::CounterOutOfRange(w.counter)))?;
        Hlc::new(w.wall_time, counter, w.node_id).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn string_form_matches_the_reference() {
        let h = Hlc::new(0x01a21217d006, 1, n("6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13")).unwrap();
        assert_eq!(
            h.to_string(),
            "01a21217d006:0001:6f1c2a8e-3b7d-4e59-9a41-2d5f0c7b8e13"
        );
        assert_eq!(h.to_string().parse::<Hlc>().unwrap(), h);
    }

    #[test]
    fn string_parse_rejects_malformed_input() {
        for s in [
            "",
            "0000000003e8:0001",
            "3e8:0001:a",
            "0000000003E8:0001:a",
            "0000000003e8:00001:a",
            "0000000003e8:0001:",
            "0000000003e8:0001:a b",
            "00000000-3e8:0001:a",
        ] {
            assert!(s.parse::<Hlc>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn order_is_wall_then_counter_then_node() {
        let a = Hlc::new(5, 9, n("z")).unwrap();
        let b = Hlc::new(6, 0, n("a")).unwrap();
        let c = Hlc::new(6, 1, n("a")).unwrap();
        let d = Hlc::new(6, 1, n("b")).unwrap();
        assert!(a < b && b < c && c < d);
    }

    #[test]
    fn json_shape_is_the_typescript_shape() {
        let h = Hlc::new(1000, 2, n("local")).unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"wallTime":1000,"counter":2,"nodeId":"local"}"#);
        assert_eq!(serde_json::from_str::<Hlc>(&json).unwrap(), h);
    }

    #[test]
    fn json_decode_refuses_out_of_range_values() {
        for bad in [
            r#"{"wallTime":-1,"counter":0,"nodeId":"a"}"#,
            r#"{"wallTime":1.5,"counter":0,"nodeId":"a"}"#,
            r#"{"wallTime":281474976710656,"counter":0,"nodeId":"a"}"#,
            r#"{"wallTime":1,"counter":65536,"nodeId":"a"}"#,
            r#"{"wallTime":1,"counter":-1,"nodeId":"a"}"#,
            r#"{"wallTime":1,"counter":0,"nodeId":"a b"}"#,
            r#"{"wallTime":1,"counter":0}"#,
            r#""0000000003e8:0001:a""#,
        ] {
            assert!(serde_json::from_str::<Hlc>(bad).is_err(), "{bad} decoded");
        }
        // Extra fields are ignored.
        let h: Hlc =
            serde_json::from_str(r#"{"wallTime":1,"counter":0,"nodeId":"a","x":true}"#).unwrap();
        assert_eq!(h, Hlc::new(1, 0, n("a")).unwrap());
    }
}
