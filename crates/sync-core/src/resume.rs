use sync_hlc::{Clock, ClockConfig, ClockState, NodeId, Watermarks};

/// Resumes a node's clock after a restart, so it never issues a timestamp at or below one
/// it issued or adopted before: above the persisted clock state, and above every version the
/// node stores (a write may have landed after the last time the clock state was saved).
pub fn resume_clock(
    node: NodeId,
    config: ClockConfig,
    persisted: Option<ClockState>,
    stored: &Watermarks,
) -> Clock {
    let from_data = stored
        .iter()
        .map(|(_, h)| ClockState {
            wall_time: h.wall_time(),
            counter: h.counter(),
        })
        .max();
    let state = persisted
        .into_iter()
        .chain(from_data)
        .max()
        .unwrap_or_default();
    Clock::restore(node, config, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_hlc::Hlc;

    #[test]
    fn resumes_above_state_and_data() {
        let me = NodeId::new("me").unwrap();
        let stored: Watermarks = [Hlc::new(50, 3, NodeId::new("x").unwrap()).unwrap()]
            .into_iter()
            .collect();
        let persisted = ClockState {
            wall_time: 40,
            counter: 9,
        };
        let mut c = resume_clock(me.clone(), ClockConfig::default(), Some(persisted), &stored);
        assert_eq!(c.now(0), Hlc::new(50, 4, me.clone()).unwrap());
        let mut c = resume_clock(me.clone(), ClockConfig::default(), None, &Watermarks::new());
        assert_eq!(c.now(7), Hlc::new(7, 0, me).unwrap());
    }
}
