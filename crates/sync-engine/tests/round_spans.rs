//! One `round` span per exchange round, with what the round did.
//!
//! A test binary of its own: tracing caches per call site whether anyone listens, and a
//! test thread that runs rounds without a subscriber while this one installs its own can
//! race that cache (the span is then never created here). Alone in its process, it cannot.

mod drive_world;

use drive_world::World;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sync_engine::NodeMetrics;
use sync_testkit::memory::{FaultMode, FaultPoint};
use tracing::{
    field::{Field, Visit},
    span, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};

/// The fields of one closed span, as text.
type Fields = HashMap<String, String>;

/// A layer that keeps the fields of every `round` span, in the order they close.
#[derive(Clone, Default)]
struct RoundSpans {
    open: Arc<Mutex<HashMap<u64, Fields>>>,
    closed: Arc<Mutex<Vec<Fields>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for RoundSpans {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "round" {
            let mut fields = Fields::new();
            attrs.record(&mut Collect(&mut fields));
            self.open.lock().unwrap().insert(id.into_u64(), fields);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }

    fn on_close(&self, id: span::Id, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(fields);
        }
    }
}

#[tokio::test]
async fn every_round_has_one_span_with_what_it_did() {
    let spans = RoundSpans::default();
    let _guard = tracing_subscriber::registry()
        .with(spans.clone())
        .set_default();

    let w = World::new();
    let engine = w
        .engine_with(1, NodeMetrics::new(), w.local.time.clone())
        .await;
    engine.put_record(w.file("a", b"one")).await.unwrap();
    engine.put_record(w.file("b", b"two")).await.unwrap();
    w.cloud.put_record("c", Some(b"three"));

    let summary = engine.sync_until_idle().await.unwrap();
    assert!(summary.complete, "{summary:?}");
    let extra = engine.exchange().await.unwrap();
    assert!(!extra.has_more);

    let closed = spans.closed.lock().unwrap().clone();
    assert_eq!(closed.len(), summary.rounds + 1, "{closed:#?}");
    let number = |f: &Fields, k: &str| -> u64 {
        f.get(k)
            .unwrap_or_else(|| panic!("{k} recorded in {f:?}"))
            .parse()
            .unwrap()
    };
    let (mut applied, mut shipped) = (0, 0);
    for (i, f) in closed.iter().enumerate() {
        assert_eq!(f["channel"], "drive");
        assert_eq!(number(f, "round"), i as u64 + 1);
        applied += number(f, "applied");
        shipped += number(f, "shipped");
        assert!(number(f, "shipped") <= 1, "page limit 1: {f:?}");
        assert_eq!(number(f, "failures"), 0);
        assert_eq!(f["stalled"], "false");
        let ms: f64 = f["duration_ms"].parse().unwrap();
        assert!(ms >= 0.0, "{f:?}");
        assert!(!f.contains_key("error"));
    }
    assert_eq!((applied, shipped), (1, 2));
    // Every round but the last of the loop said there was more; the extra one did not.
    let more: Vec<&str> = closed.iter().map(|f| f["has_more"].as_str()).collect();
    assert!(
        more[..summary.rounds - 1].iter().all(|m| *m == "true"),
        "{more:?}"
    );
    assert_eq!(&more[summary.rounds - 1..], ["false", "false"]);

    // A failed round records its error instead.
    w.transport_faults
        .arm(FaultPoint::Send, FaultMode::Persistent);
    engine.exchange().await.unwrap_err();
    let closed = spans.closed.lock().unwrap().clone();
    let last = closed.last().unwrap();
    assert_eq!(number(last, "round"), summary.rounds as u64 + 2);
    assert!(
        last.contains_key("error") && !last.contains_key("applied"),
        "{last:?}"
    );
}
