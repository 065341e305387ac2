//! What the library tells `tracing`: spans on the slow paths only (the Redis read, the loader
//! call, the fill), named after their module, with structured fields; keys only as a hash,
//! values never; nothing at all on an L1 hit.
//!
//! A capturing `Layer` records every span (with the fields recorded on it later) and every
//! event. The runtime is the test's own thread (`current_thread`), so the subscriber installed
//! with `set_default` sees the loads too (they run as tasks of the runtime the cache was built
//! in).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use support::{await_applied, node, RedisServer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One span or event, as captured.
#[derive(Debug, Clone)]
struct Seen {
    span: bool,
    id: Option<u64>,
    name: String,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// Everything it says, for "does it contain ..." checks.
    fn text(&self) -> String {
        format!("{} {} {:?}", self.name, self.target, self.fields)
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl Capture {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            span: true,
            id: Some(id.into_u64()),
            name: attrs.metadata().name().into(),
            target: attrs.metadata().target().into(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some(s) = seen
            .iter_mut()
            .rev()
            .find(|s| s.span && s.id == Some(id.into_u64()))
        {
            values.record(&mut Fields(&mut s.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            span: false,
            id: None,
            name: event.metadata().name().into(),
            target: event.metadata().target().into(),
            fields,
        });
    }
}

/// FNV-1a, as the library documents its `key_hash` field.
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const KEY: &str = "customer-7741:iban";
const VALUE: &str = "NG-SECRET-VALUE-0042";

fn spans<'a>(seen: &'a [Seen], name: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.span && s.name == name).collect()
}

#[tokio::test]
async fn a_miss_is_traced_through_l2_and_the_loader_without_its_key_or_value() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let (ra, rb) = (
        a.namespace::<str, String>("rate").unwrap(),
        b.namespace::<str, String>("rate").unwrap(),
    );
    capture.take();

    let got = ra
        .get_or_load(KEY, || async { Ok::<_, std::io::Error>(VALUE.to_owned()) })
        .await
        .unwrap();
    assert_eq!(*got, VALUE);
    // Another node reads it from Redis: an L2 hit.
    assert_eq!(
        rb.get(KEY).await.as_deref().map(String::as_str),
        Some(VALUE)
    );
    let seen = capture.take();

    let hash = fnv1a(KEY).to_string();
    let expect = |name: &str, tier: &str, outcome: &str| {
        let found = spans(&seen, name);
        assert!(
            found.iter().any(|s| s.field("namespace") == Some("rate")
                && s.field("tier") == Some(tier)
                && s.field("key_hash") == Some(hash.as_str())
                && s.field("outcome") == Some(outcome)
                && s.target == "tiered_cache::loader"),
            "no {name} span with tier {tier}, outcome {outcome}, key hash {hash}: {found:#?}"
        );
    };
    expect("l2_read", "l2", "miss");
    expect("load", "loader", "value");
    expect("l2_fill", "l2", "stored");
    expect("l2_read", "l2", "hit");

    for s in &seen {
        let text = s.text();
        assert!(!text.contains(KEY), "the raw key leaked: {s:#?}");
        assert!(!text.contains(VALUE), "the value leaked: {s:#?}");
    }
}

#[tokio::test]
async fn an_l1_hit_emits_nothing() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let ra = a.namespace::<str, String>("rate").unwrap();
    let rb = b.namespace::<str, String>("rate").unwrap();
    ra.set(KEY, VALUE.to_owned()).await.unwrap();
    await_applied(&b, "rate", 1).await;
    // Loaded into b's L1 from Redis (a span), then served from L1.
    rb.get(KEY).await.unwrap();
    assert!(
        !spans(&capture.take(), "l2_read").is_empty(),
        "the capture sees the miss"
    );
    // Neither call yields on a hit, so no background task can slip an event in between.
    for _ in 0..1000 {
        assert!(rb.get_local(KEY).is_some(), "an L1 hit");
        assert!(rb.get(KEY).await.is_some(), "an L1 hit");
    }
    let seen = capture.take();
    assert!(
        seen.is_empty(),
        "L1 hits produced spans or events: {seen:#?}"
    );
    // Sanity: the capture still works on the same thread once something slow happens.
    ra.set(KEY, "other".to_owned()).await.unwrap();
    await_applied(&b, "rate", 2).await;
    rb.get(KEY).await.unwrap();
    assert!(!spans(&capture.take(), "l2_read").is_empty());
}
