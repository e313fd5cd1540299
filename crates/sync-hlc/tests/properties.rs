//! Property tests of the clock, the timestamp order and the watermark algebra (SPEC §3).

use proptest::prelude::*;
use sync_hlc::{Clock, ClockConfig, ClockState, Hlc, NodeId, Watermarks, MAX_WALL_TIME};

fn node() -> impl Strategy<Value = NodeId> {
    "[A-Za-z0-9._-]{1,12}".prop_map(|s| NodeId::new(s).unwrap())
}

fn hlc() -> impl Strategy<Value = Hlc> {
    (0..=MAX_WALL_TIME, any::<u16>(), node()).prop_map(|(w, c, n)| Hlc::new(w, c, n).unwrap())
}

/// Timestamps drawn from a small space so that equal wall times and counters are common.
fn dense_hlc() -> impl Strategy<Value = Hlc> {
    (
        0u64..20,
        0u16..4,
        prop::sample::select(vec!["a", "b", "c", "local", "cloud"]),
    )
        .prop_map(|(w, c, n)| Hlc::new(w, c, NodeId::new(n).unwrap()).unwrap())
}

fn watermarks() -> impl Strategy<Value = Watermarks> {
    prop::collection::vec(dense_hlc(), 0..8).prop_map(|v| v.into_iter().collect())
}

#[derive(Debug, Clone)]
enum Step {
    Now { physical: u64 },
    Receive { remote: Hlc, physical: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    // Physical time jumps around, including backwards and far ahead.
    let physical = prop_oneof![0u64..5_000, 1_000_000u64..1_000_100, Just(MAX_WALL_TIME)];
    prop_oneof![
        physical.clone().prop_map(|physical| Step::Now { physical }),
        (
            (0u64..12_000_000, any::<u16>(), node())
                .prop_map(|(w, c, n)| Hlc::new(w, c, n).unwrap()),
            physical
        )
            .prop_map(|(remote, physical)| Step::Receive { remote, physical }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn clock_is_strictly_monotonic_over_any_interleaving(
        start in (0u64..5_000, any::<u16>()),
        drift in 0u64..10_000_000,
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let me = NodeId::new("me").unwrap();
        let state = ClockState { wall_time: start.0, counter: start.1 };
        let mut clock = Clock::restore(me, ClockConfig::default().with_max_drift_ms(drift), state);
        // Everything produced or received so far; the next value must exceed all of it.
        let mut high = clock.last();
        for step in steps {
            match step {
                Step::Now { physical } => {
                    let t = clock.now(physical);
                    prop_assert!(t > high, "now {t} not above {high}");
                    high = t;
                }
                Step::Receive { remote, physical } => {
                    let before = clock.state();
                    match clock.receive(&remote, physical) {
                        Ok(t) => {
                            prop_assert!(t > high && t > remote, "receive {t} vs {high}/{remote}");
                            // Never more than max_drift past physical time, unless the clock
                            // was already there (or one overflow millisecond past it).
                            let bound = before.wall_time.max(physical.saturating_add(drift)) + 1;
                            prop_assert!(t.wall_time() <= bound);
                            high = t;
                        }
                        Err(refusal) => {
                            prop_assert_eq!(clock.state(), before);
                            prop_assert!(remote.wall_time() > physical + drift);
                            prop_assert_eq!(refusal.remote, remote);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn string_order_equals_ord(a in hlc(), b in hlc()) {
        prop_assert_eq!(a.to_string().cmp(&b.to_string()), a.cmp(&b));
        prop_assert_eq!(a.to_string().parse::<Hlc>().unwrap(), a);
    }

    #[test]
    fn dense_string_order_equals_ord(a in dense_hlc(), b in dense_hlc()) {
        prop_assert_eq!(a.to_string().cmp(&b.to_string()), a.cmp(&b));
    }

    #[test]
    fn merge_is_commutative(a in watermarks(), b in watermarks()) {
        prop_assert_eq!(a.clone().merged(&b), b.merged(&a));
    }

    #[test]
    fn merge_is_associative(a in watermarks(), b in watermarks(), c in watermarks()) {
        prop_assert_eq!(a.clone().merged(&b).merged(&c), a.merged(&b.merged(&c)));
    }

    #[test]
    fn merge_is_idempotent(a in watermarks(), b in watermarks()) {
        let once = a.clone().merged(&b);
        prop_assert_eq!(once.clone().merged(&b), once.clone());
        prop_assert_eq!(a.clone().merged(&a), a);
    }

    #[test]
    fn merge_covers_exactly_what_either_side_covers(a in watermarks(), b in watermarks(), h in dense_hlc()) {
        let m = a.clone().merged(&b);
        prop_assert_eq!(m.covers(&h), a.covers(&h) || b.covers(&h));
    }

    #[test]
    fn hlc_round_trips_through_json_and_msgpack(h in hlc()) {
        let json = serde_json::to_vec(&h).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Hlc>(&json).unwrap(), h.clone());
        let mp = rmp_serde::to_vec_named(&h).unwrap();
        prop_assert_eq!(rmp_serde::from_slice::<Hlc>(&mp).unwrap(), h);
    }

    #[test]
    fn watermarks_round_trip_through_json_and_msgpack(w in watermarks()) {
        let json = serde_json::to_vec(&w).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Watermarks>(&json).unwrap(), w.clone());
        let mp = rmp_serde::to_vec_named(&w).unwrap();
        prop_assert_eq!(rmp_serde::from_slice::<Watermarks>(&mp).unwrap(), w);
    }
}
