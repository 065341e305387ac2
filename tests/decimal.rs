//! Exact values through the real codec and Redis: node A `set`s, node B (whose L1 never held
//! the key) `get`s it from Redis. `Decimal`s at every scale 0..=28 with the largest and
//! smallest mantissas, trailing zeros and negative zero are compared with
//! `Decimal::serialize()` (mantissa, scale and sign bits), not just `==`; `SystemTime` to the
//! nanosecond. The codec alone is checked with many more cases in `src/exact.rs`.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::RedisServer;
use tiered_cache::{NamespacePolicy, TieredCache};

const CASES: u32 = 1_000;

fn any_decimal() -> impl Strategy<Value = Decimal> {
    let scale = 0u32..=28;
    prop_oneof![
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            scale.clone()
        )
            .prop_map(|(lo, mid, hi, neg, s)| Decimal::from_parts(lo, mid, hi, neg, s)),
        (any::<bool>(), scale.clone()).prop_map(|(neg, s)| Decimal::from_parts(
            u32::MAX,
            u32::MAX,
            u32::MAX,
            neg,
            s
        )),
        (any::<bool>(), scale.clone()).prop_map(|(neg, s)| Decimal::from_parts(1, 0, 0, neg, s)),
        scale.clone().prop_map(|s| Decimal::new(0, s)),
        scale.clone().prop_map(negative_zero),
        (any::<i64>(), 0u32..=10, 0u32..=18).prop_filter_map(
            "mantissa over 96 bits",
            |(m, s, zeros)| Decimal::try_from_i128_with_scale(
                i128::from(m) * 10i128.pow(zeros),
                s + zeros
            )
            .ok()
        ),
    ]
}

fn negative_zero(scale: u32) -> Decimal {
    let mut z = Decimal::new(0, scale);
    z.set_sign_negative(true);
    z
}

/// Bit-exact, except that the default (string) form gives negative zero back as zero of the
/// same scale: the documented exception (`tiered_cache::exact`).
fn assert_default_form(sent: &Decimal, got: &Decimal) {
    if sent.is_zero() && sent.is_sign_negative() {
        assert_eq!((got, got.scale()), (sent, sent.scale()));
        assert!(
            !got.is_sign_negative(),
            "negative zero now survives: update the docs"
        );
    } else {
        assert_eq!(
            got.serialize(),
            sent.serialize(),
            "{sent} came back as {got}"
        );
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    bid: Decimal,
    ask: Option<Decimal>,
    #[serde(with = "tiered_cache::exact::decimal")]
    exact: Decimal,
    at: SystemTime,
    at_unix_nanos: i64,
}

fn any_quote() -> impl Strategy<Value = Quote> {
    (
        any_decimal(),
        proptest::option::of(any_decimal()),
        any_decimal(),
        (0u64..=(u64::MAX >> 30), 0u32..1_000_000_000),
        any::<i64>(),
    )
        .prop_map(|(bid, ask, exact, (s, n), at_unix_nanos)| Quote {
            bid,
            ask,
            exact,
            at: UNIX_EPOCH + Duration::new(s, n),
            at_unix_nanos,
        })
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Exact(#[serde(with = "tiered_cache::exact::decimal")] Decimal);

/// Two nodes on one private Redis, and a runner that sends each case from A to B.
struct Fixture {
    rt: tokio::runtime::Runtime,
    _server: RedisServer,
    a: TieredCache,
    b: TieredCache,
    next_key: AtomicU64,
}

impl Fixture {
    fn new() -> Self {
        let server = RedisServer::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let node = |url: String| {
            rt.block_on(async {
                let c = TieredCache::builder()
                    .redis_url(url)
                    .namespace("dec", NamespacePolicy::new(Duration::from_secs(60)))
                    .namespace("exact", NamespacePolicy::new(Duration::from_secs(60)))
                    .namespace("quote", NamespacePolicy::new(Duration::from_secs(60)))
                    .namespace("time", NamespacePolicy::new(Duration::from_secs(60)))
                    .strict_writes(true) // a write that did not reach Redis fails the test
                    .build()
                    .unwrap();
                let c2 = c.clone();
                support::eventually("subscribed", support::PATIENCE, || {
                    let c = c2.clone();
                    async move { c.is_subscribed() }
                })
                .await;
                c
            })
        };
        let (a, b) = (node(server.url()), node(server.url()));
        Self {
            rt,
            _server: server,
            a,
            b,
            next_key: AtomicU64::new(0),
        }
    }

    /// A sets a fresh key, B reads it: B's L1 never held it, so it comes from Redis.
    fn send<V>(&self, ns: &str, value: V) -> V
    where
        V: Serialize + serde::de::DeserializeOwned + Send + Sync + Clone + 'static,
    {
        let key = format!("k{}", self.next_key.fetch_add(1, Ordering::Relaxed));
        self.rt.block_on(async {
            let (a, b) = (
                self.a.namespace::<str, V>(ns).unwrap(),
                self.b.namespace::<str, V>(ns).unwrap(),
            );
            a.set(&key, value).await.expect("set reached Redis");
            let got = b.get(&key).await.expect("B reads it from Redis");
            (*got).clone()
        })
    }
}

fn run<S: Strategy>(strategy: S, check: impl Fn(S::Value)) {
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    runner
        .run(&strategy, |v| {
            check(v);
            Ok(())
        })
        .unwrap();
}

#[test]
fn decimals_round_trip_through_redis() {
    let f = Fixture::new();
    run(any_decimal(), |d| {
        assert_default_form(&d, &f.send("dec", d))
    });
    // The exact form keeps every bit, negative zero included.
    run(any_decimal(), |d| {
        assert_eq!(f.send("exact", Exact(d)).0.serialize(), d.serialize());
    });
    for s in [0, 2, 28] {
        let z = negative_zero(s);
        assert_eq!(f.send("exact", Exact(z)).0.serialize(), z.serialize());
    }
    let stats = f.b.stats();
    for ns in ["dec", "exact"] {
        let s = stats.namespace(ns).unwrap();
        assert_eq!(
            s.l2_hits,
            u64::from(CASES) + if ns == "exact" { 3 } else { 0 }
        );
        assert_eq!(s.l1_hits, 0, "every read came from Redis");
    }
}

#[test]
fn structs_with_decimal_and_time_fields_round_trip_through_redis() {
    let f = Fixture::new();
    run(any_quote(), |q| {
        let got = f.send("quote", q.clone());
        assert_default_form(&q.bid, &got.bid);
        match (&q.ask, &got.ask) {
            (Some(sent), Some(got)) => assert_default_form(sent, got),
            (None, None) => {}
            other => panic!("ask: {other:?}"),
        }
        assert_eq!(got.exact.serialize(), q.exact.serialize());
        assert_eq!(got.at, q.at);
        assert_eq!(got.at_unix_nanos, q.at_unix_nanos);
    });
    // And SystemTime alone, at the edges.
    for t in [
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::new(0, 1),
        UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999),
        SystemTime::now(),
    ] {
        assert_eq!(f.send("time", t), t);
    }
    // A time before the epoch has no default serde form: a typed error, nothing cached.
    let before = UNIX_EPOCH - Duration::from_nanos(1);
    let e = f.rt.block_on(async {
        let a = f.a.namespace::<str, SystemTime>("time").unwrap();
        a.set("before", before).await.unwrap_err()
    });
    assert!(matches!(e, tiered_cache::Error::Encode(_)), "{e}");
}
