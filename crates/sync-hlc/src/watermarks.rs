use std::{collections::BTreeMap, fmt};

use serde::{
    de::{self, MapAccess},
    ser::SerializeMap,
    Deserialize, Deserializer, Serialize, Serializer,
};

use crate::{Error, Hlc, NodeId};

/// Per origin node, the highest timestamp from that node that a side has durably incorporated
/// (its coverage). Keys always equal the node id of their timestamp.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Watermarks(BTreeMap<NodeId, Hlc>);

impl Watermarks {
    /// No coverage at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The watermark of `node`, if any.
    pub fn get(&self, node: &str) -> Option<&Hlc> {
        self.0.get(node)
    }

    /// The watermark of `node`, or that node's zero timestamp.
    pub fn get_or_zero(&self, node: &NodeId) -> Hlc {
        self.get(node.as_str())
            .cloned()
            .unwrap_or_else(|| Hlc::zero(node.clone()))
    }

    /// Whether `hlc` is at or below its origin node's watermark (already covered).
    pub fn covers(&self, hlc: &Hlc) -> bool {
        self.get(hlc.node_id().as_str()).is_some_and(|w| hlc <= w)
    }

    /// Raises the watermark of `hlc`'s origin node to `hlc` if it is higher. Returns whether
    /// it moved.
    pub fn advance(&mut self, hlc: &Hlc) -> bool {
        match self.0.get_mut(hlc.node_id().as_str()) {
            Some(w) if *w >= *hlc => false,
            Some(w) => {
                *w = hlc.clone();
                true
            }
            None => {
                self.0.insert(hlc.node_id().clone(), hlc.clone());
                true
            }
        }
    }

    /// Per-node maximum of both sides. Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &Watermarks) {
        for hlc in other.0.values() {
            self.advance(hlc);
        }
    }

    /// The merge of two watermark sets, as a new value.
    pub fn merged(mut self, other: &Watermarks) -> Watermarks {
        self.merge(other);
        self
    }

    /// Removes a node's watermark, returning it.
    pub fn remove(&mut self, node: &str) -> Option<Hlc> {
        self.0.remove(node)
    }

    /// The origin nodes of `coverage` that hold something these watermarks do not cover,
    /// each with the watermark to scan above (`None`: from the beginning).
    pub fn unseen<'a>(
        &'a self,
        coverage: &'a Watermarks,
    ) -> impl Iterator<Item = (&'a NodeId, Option<&'a Hlc>)> + 'a {
        coverage
            .0
            .iter()
            .filter(|(_, top)| !self.covers(top))
            .map(|(node, _)| (node, self.get(node.as_str())))
    }

    /// Iterates over `(node, watermark)` in node order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Hlc)> {
        self.0.iter()
    }

    /// Number of nodes with a watermark.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no node has a watermark.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Hlc> for Watermarks {
    /// Builds watermarks holding, per node, the maximum of the given timestamps.
    fn from_iter<I: IntoIterator<Item = Hlc>>(iter: I) -> Self {
        let mut w = Watermarks::new();
        for h in iter {
            w.advance(&h);
        }
        w
    }
}

impl fmt::Debug for Watermarks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.values()).finish()
    }
}

impl Serialize for Watermarks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Watermarks {
    /// A map `{nodeId: HLC}`. A key that differs from its timestamp's node id is refused: it
    /// would let one node's coverage stand for another's.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Watermarks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of node id to HLC")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Watermarks, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<NodeId>()? {
                    let hlc: Hlc = map.next_value()?;
                    if *hlc.node_id() != key {
                        return Err(de::Error::custom(Error::WatermarkKeyMismatch {
                            key: key.to_string(),
                            node_id: hlc.node_id().to_string(),
                        }));
                    }
                    out.insert(key, hlc);
                }
                Ok(Watermarks(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(wall: u64, node: &str) -> Hlc {
        Hlc::new(wall, 0, NodeId::new(node).unwrap()).unwrap()
    }

    #[test]
    fn advance_keeps_the_maximum() {
        let mut w = Watermarks::new();
        assert!(w.advance(&h(5, "a")));
        assert!(!w.advance(&h(3, "a")));
        assert!(w.advance(&h(9, "a")));
        assert_eq!(w.get("a"), Some(&h(9, "a")));
        assert!(w.covers(&h(9, "a")) && !w.covers(&h(10, "a")) && !w.covers(&h(1, "b")));
        assert_eq!(w.get_or_zero(&NodeId::new("b").unwrap()).wall_time(), 0);
    }

    #[test]
    fn unseen_lists_nodes_with_uncovered_items() {
        let peer: Watermarks = [h(5, "a"), h(7, "b")].into_iter().collect();
        let local: Watermarks = [h(5, "a"), h(9, "b"), h(1, "c")].into_iter().collect();
        let unseen: Vec<_> = peer
            .unseen(&local)
            .map(|(n, w)| (n.to_string(), w.map(|w| w.wall_time())))
            .collect();
        assert_eq!(
            unseen,
            vec![("b".to_string(), Some(7)), ("c".to_string(), None)]
        );
    }

    #[test]
    fn decode_refuses_a_key_that_names_another_node() {
        let bad = r#"{"a":{"wallTime":1,"counter":0,"nodeId":"b"}}"#;
        let err = serde_json::from_str::<Watermarks>(bad).unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
        let bad_key = r#"{"a b":{"wallTime":1,"counter":0,"nodeId":"a b"}}"#;
        assert!(serde_json::from_str::<Watermarks>(bad_key).is_err());
    }
}
