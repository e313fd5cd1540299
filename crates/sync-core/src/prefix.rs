//! Contiguous-prefix watermarks: how far each origin node's watermark may advance.
//!
//! **Invariant (contiguous prefix).** A watermark for node `n` claims every version of `n`
//! at or below it has fully landed (metadata and blob). So it may only advance to the
//! highest landed version strictly below `n`'s first failure in the round; items after a
//! failure may still apply, but stay uncovered and are delivered again next round. Equal
//! versions form one group: a failure anywhere in the group holds the whole group back.

use std::collections::BTreeMap;

use sync_hlc::{Hlc, NodeId, Watermarks};

#[derive(Debug, Default)]
struct Progress {
    landed: Vec<Hlc>,
    first_failure: Option<Hlc>,
}

/// Records, per origin node, which versions landed and which failed, in any order.
#[derive(Debug, Default)]
pub struct PrefixLedger {
    origins: BTreeMap<NodeId, Progress>,
}

impl PrefixLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// This version fully landed (or was already covered by a newer local version).
    pub fn landed(&mut self, hlc: &Hlc) {
        self.entry(hlc).landed.push(hlc.clone());
    }

    /// This version failed (apply, blob, refusal): its node's prefix breaks here.
    pub fn failed(&mut self, hlc: &Hlc) {
        let p = self.entry(hlc);
        if p.first_failure.as_ref().is_none_or(|f| hlc < f) {
            p.first_failure = Some(hlc.clone());
        }
    }

    fn entry(&mut self, hlc: &Hlc) -> &mut Progress {
        self.origins.entry(hlc.node_id().clone()).or_default()
    }

    /// The first failed version of `origin`, if any.
    pub fn first_failure(&self, origin: &NodeId) -> Option<&Hlc> {
        self.origins.get(origin)?.first_failure.as_ref()
    }

    /// Whether `hlc` lies within its node's contiguous prefix (below any failure).
    pub fn in_prefix(&self, hlc: &Hlc) -> bool {
        self.first_failure(hlc.node_id()).is_none_or(|f| hlc < f)
    }

    /// Origin nodes with a failure.
    pub fn halted(&self) -> impl Iterator<Item = (&NodeId, &Hlc)> {
        self.origins
            .iter()
            .filter_map(|(n, p)| p.first_failure.as_ref().map(|f| (n, f)))
    }

    /// Per origin node, the highest landed version strictly below its first failure.
    pub fn advance(&self) -> Watermarks {
        self.origins
            .values()
            .filter_map(|p| {
                p.landed
                    .iter()
                    .filter(|h| p.first_failure.as_ref().is_none_or(|f| *h < f))
                    .max()
                    .cloned()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(wall: u64, node: &str) -> Hlc {
        Hlc::new(wall, 0, NodeId::new(node).unwrap()).unwrap()
    }

    #[test]
    fn advances_over_the_prefix_before_the_first_failure() {
        let mut l = PrefixLedger::new();
        l.landed(&h(1, "a"));
        l.landed(&h(2, "a"));
        l.failed(&h(3, "a"));
        l.landed(&h(4, "a"));
        l.landed(&h(7, "b"));
        let adv = l.advance();
        assert_eq!(adv.get("a"), Some(&h(2, "a")));
        assert_eq!(adv.get("b"), Some(&h(7, "b")));
        assert!(l.in_prefix(&h(2, "a")) && !l.in_prefix(&h(4, "a")));
    }

    #[test]
    fn a_failure_first_gives_no_advance_and_groups_hold_together() {
        let mut l = PrefixLedger::new();
        l.landed(&h(5, "a"));
        l.failed(&h(5, "a"));
        l.landed(&h(6, "a"));
        assert_eq!(l.advance().get("a"), None);
        // Order of reports does not matter.
        let mut l = PrefixLedger::new();
        l.failed(&h(4, "a"));
        l.landed(&h(3, "a"));
        l.failed(&h(2, "a"));
        l.landed(&h(1, "a"));
        assert_eq!(l.advance().get("a"), Some(&h(1, "a")));
    }
}
