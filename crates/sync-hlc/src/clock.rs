use serde::{Deserialize, Serialize};

use crate::{Hlc, NodeId, MAX_WALL_TIME};

/// Default skew guard: a remote timestamp more than one hour ahead of local physical time is
/// refused.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 60 * 60 * 1000;

/// Clock options.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClockConfig {
    /// How far (ms) a remote wall time may run ahead of local physical time before the
    /// timestamp is refused instead of adopted.
    pub max_drift_ms: u64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            max_drift_ms: DEFAULT_MAX_DRIFT_MS,
        }
    }
}

impl ClockConfig {
    /// Sets the skew guard in milliseconds.
    pub fn with_max_drift_ms(mut self, max_drift_ms: u64) -> Self {
        self.max_drift_ms = max_drift_ms;
        self
    }
}

/// The persisted part of a clock: the last `(wall_time, counter)` it issued or adopted.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct ClockState {
    /// Wall time in milliseconds.
    pub wall_time: u64,
    /// Counter within that millisecond.
    pub counter: u16,
}

/// A remote timestamp refused by the skew guard: its wall time is further ahead of local
/// physical time than the configured maximum drift.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {remote} is {ahead_ms} ms ahead of this node's clock (limit {max_drift_ms} ms); \
     check the clock of node {} and of this machine",
    remote.node_id()
)]
pub struct SkewRefusal {
    /// The refused timestamp.
    pub remote: Hlc,
    /// Local physical time when it was refused.
    pub physical_ms: u64,
    /// How far ahead it was.
    pub ahead_ms: u64,
    /// The configured limit.
    pub max_drift_ms: u64,
}

/// A hybrid logical clock for one node.
///
/// Every timestamp it issues is strictly greater than every timestamp it issued or received
/// before, whatever physical time does (it may stall or go backwards). Physical time is passed
/// in by the caller: this crate never reads the operating system's clock.
#[derive(Debug, Clone)]
pub struct Clock {
    node_id: NodeId,
    config: ClockConfig,
    state: ClockState,
}

impl Clock {
    /// A clock that has issued nothing yet.
    pub fn new(node_id: NodeId, config: ClockConfig) -> Self {
        Self::restore(node_id, config, ClockState::default())
    }

    /// A clock resumed from persisted state: it never issues a timestamp at or below it.
    pub fn restore(node_id: NodeId, config: ClockConfig, state: ClockState) -> Self {
        Self {
            node_id,
            config,
            state,
        }
    }

    /// This clock's node.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The options in force.
    pub fn config(&self) -> &ClockConfig {
        &self.config
    }

    /// What to persist.
    pub fn state(&self) -> ClockState {
        self.state
    }

    /// The last timestamp issued or adopted, as a timestamp of this node.
    pub fn last(&self) -> Hlc {
        Hlc::new(
            self.state.wall_time,
            self.state.counter,
            self.node_id.clone(),
        )
        .expect("clock state stays within range")
    }

    /// Issues a new timestamp for a local event.
    pub fn now(&mut self, physical_ms: u64) -> Hlc {
        let physical = physical_ms.min(MAX_WALL_TIME);
        if physical > self.state.wall_time {
            self.state = ClockState {
                wall_time: physical,
                counter: 0,
            };
        } else {
            self.bump(self.state.wall_time, u32::from(self.state.counter) + 1);
        }
        self.last()
    }

    /// Issues a timestamp for a message being sent; the same as [`Clock::now`].
    pub fn send(&mut self, physical_ms: u64) -> Hlc {
        self.now(physical_ms)
    }

    /// Checks the skew guard alone, without moving the clock.
    pub fn check_skew(&self, remote: &Hlc, physical_ms: u64) -> Result<(), SkewRefusal> {
        let limit = physical_ms.saturating_add(self.config.max_drift_ms);
        if remote.wall_time() > limit {
            return Err(SkewRefusal {
                remote: remote.clone(),
                physical_ms,
                ahead_ms: remote.wall_time() - physical_ms,
                max_drift_ms: self.config.max_drift_ms,
            });
        }
        Ok(())
    }

    /// Merges a remote timestamp into the clock and issues a timestamp above both.
    ///
    /// A remote wall time more than `max_drift_ms` ahead of physical time is refused and
    /// leaves the clock untouched: one peer with a broken clock cannot drag this node's clock
    /// into the future.
    pub fn receive(&mut self, remote: &Hlc, physical_ms: u64) -> Result<Hlc, SkewRefusal> {
        self.check_skew(remote, physical_ms)?;
        let physical = physical_ms.min(MAX_WALL_TIME);
        let local = self.state;
        let wall = local.wall_time.max(remote.wall_time()).max(physical);
        let (lc, rc) = (u32::from(local.counter), u32::from(remote.counter()));
        let counter = match (wall == local.wall_time, wall == remote.wall_time()) {
            (true, true) => lc.max(rc) + 1,
            (true, false) => lc + 1,
            (false, true) => rc + 1,
            (false, false) => 0,
        };
        self.bump(wall, counter);
        Ok(self.last())
    }

    /// Sets the state to `(wall, counter)`, moving wall time forward by 1 ms when the counter
    /// would pass 0xFFFF.
    fn bump(&mut self, wall: u64, counter: u32) {
        self.state = match u16::try_from(counter) {
            Ok(counter) => ClockState {
                wall_time: wall,
                counter,
            },
            _ => ClockState {
                wall_time: (wall + 1).min(MAX_WALL_TIME),
                counter: 0,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(node: &str) -> Clock {
        Clock::new(NodeId::new(node).unwrap(), ClockConfig::default())
    }

    fn h(wall: u64, counter: u16, node: &str) -> Hlc {
        Hlc::new(wall, counter, NodeId::new(node).unwrap()).unwrap()
    }

    #[test]
    fn now_takes_physical_time_when_it_moved_ahead() {
        // CK-01
        let mut c = clock("l");
        assert_eq!(c.now(1000), h(1000, 0, "l"));
        assert_eq!(c.now(1000), h(1000, 1, "l"));
        assert_eq!(c.now(999), h(1000, 2, "l"));
        assert_eq!(c.send(1001), h(1001, 0, "l"));
    }

    #[test]
    fn receive_follows_the_reference_rules() {
        // CK-02: remote ahead of local and physical.
        let mut c = clock("l");
        c.now(1000);
        assert_eq!(c.receive(&h(2000, 5, "r"), 1000).unwrap(), h(2000, 6, "l"));
        // CK-03: equal wall times.
        let mut c = clock("l");
        c.now(1000);
        assert_eq!(c.receive(&h(1000, 5, "r"), 1000).unwrap(), h(1000, 6, "l"));
        // CK-04: physical ahead of both.
        let mut c = clock("l");
        c.now(1000);
        assert_eq!(c.receive(&h(2000, 10, "r"), 3000).unwrap(), h(3000, 0, "l"));
        // CK-05: local ahead of remote, physical not ahead.
        let mut c = clock("l");
        c.now(5000);
        assert_eq!(c.receive(&h(2000, 10, "r"), 1000).unwrap(), h(5000, 1, "l"));
    }

    #[test]
    fn counter_overflow_moves_wall_time_forward() {
        use crate::MAX_COUNTER;
        let mut c = Clock::restore(
            NodeId::new("l").unwrap(),
            ClockConfig::default(),
            ClockState {
                wall_time: 7,
                counter: MAX_COUNTER,
            },
        );
        assert_eq!(c.now(0), h(8, 0, "l"));
        let mut c = clock("l");
        assert_eq!(
            c.receive(&h(50, MAX_COUNTER, "r"), 0).unwrap(),
            h(51, 0, "l")
        );
    }

    #[test]
    fn skew_guard_refuses_and_leaves_the_clock_alone() {
        // CK-09 fixed (W-A4): a far-future timestamp is refused, not adopted.
        let mut c = clock("l");
        c.now(1000);
        let before = c.state();
        let err = c.receive(&h(9_000_000_000_000, 0, "r"), 1000).unwrap_err();
        assert_eq!(c.state(), before);
        assert!(
            err.to_string().contains("check the clock of node r"),
            "{err}"
        );
        // Accepted once physical time has caught up.
        assert!(c
            .receive(&h(9_000_000_000_000, 0, "r"), 9_000_000_000_000)
            .is_ok());
        // Exactly at the limit is fine.
        let mut c = clock("l");
        assert!(c
            .receive(&h(1000 + DEFAULT_MAX_DRIFT_MS, 0, "r"), 1000)
            .is_ok());
    }

    #[test]
    fn restored_clock_never_goes_backwards() {
        // CK-10: state (1000, 5) with physical 1000 gives (1000, >=6).
        let mut c = Clock::restore(
            NodeId::new("l").unwrap(),
            ClockConfig::default(),
            ClockState {
                wall_time: 1000,
                counter: 5,
            },
        );
        assert_eq!(c.now(1000), h(1000, 6, "l"));
    }
}
