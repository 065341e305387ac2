//! Round trips of every API call against a real Redis, TTLs on both tiers, configuration errors.

mod support;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{envelope, eventually, keys, node, node_with, RedisServer, PATIENCE};
use tiered_cache::{NamespacePolicy, TieredCache};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    bid: rust_decimal::Decimal,
    ask: rust_decimal::Decimal,
    ts_ms: i64,
}

fn quote(bid: &str) -> Quote {
    Quote {
        symbol: "AAPL".into(),
        bid: bid.parse().unwrap(),
        ask: "150.0100".parse().unwrap(),
        ts_ms: 1_763_700_000_123,
    }
}

#[tokio::test]
async fn set_get_invalidate_round_trip() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let quotes = cache.namespace::<str, Quote>("quote").unwrap();

    assert_eq!(quotes.get("AAPL").await, None);
    quotes.set("AAPL", quote("149.99")).await.unwrap();
    // Own write lands in L1 (no Redis needed to read it back) and in Redis.
    assert_eq!(quotes.get_local("AAPL").as_deref(), Some(&quote("149.99")));
    let raw: Vec<u8> = server.cmd(&[b"GET", keys::value("quote", "AAPL").as_bytes()]);
    assert!(
        envelope::is_envelope(&raw),
        "stored in the versioned envelope"
    );

    quotes.invalidate("AAPL").await.unwrap();
    assert_eq!(quotes.get_local("AAPL"), None);
    assert_eq!(
        quotes.get("AAPL").await,
        None,
        "a tombstone reads as a miss"
    );
    let s = cache.stats();
    assert_eq!(s.namespace("quote").unwrap().invalidations_sent, 2);
}

#[tokio::test]
async fn get_reads_through_to_redis_and_fills_l1() {
    let server = RedisServer::start();
    let writer = node(&server).await;
    let reader = node(&server).await;
    let w = writer.namespace::<str, Quote>("quote").unwrap();
    let r = reader.namespace::<str, Quote>("quote").unwrap();
    w.set("MSFT", quote("410.5")).await.unwrap();
    support::await_applied(&reader, "quote", 1).await;

    assert_eq!(r.get_local("MSFT"), None);
    assert_eq!(r.get("MSFT").await.as_deref(), Some(&quote("410.5")));
    assert_eq!(r.get_local("MSFT").as_deref(), Some(&quote("410.5")));
    let s = reader.stats();
    let s = s.namespace("quote").unwrap();
    assert_eq!((s.l1_misses, s.l2_hits, s.l1_hits), (1, 1, 1));
}

#[tokio::test]
async fn get_or_load_loads_once_then_serves_from_the_tiers() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |calls: Arc<AtomicUsize>| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(1.2345f64)
    };
    let ra = a.namespace::<(&str, &str), f64>("rate").unwrap();
    let rb = b.namespace::<(&str, &str), f64>("rate").unwrap();
    let key = ("CNGN", "USD");

    assert_eq!(
        *ra.get_or_load(&key, {
            let c = calls.clone();
            move || load(c)
        })
        .await
        .unwrap(),
        1.2345
    );
    assert_eq!(
        *ra.get_or_load(&key, {
            let c = calls.clone();
            move || load(c)
        })
        .await
        .unwrap(),
        1.2345
    );
    // Node b finds it in Redis: the loader is not called again.
    assert_eq!(
        *rb.get_or_load(&key, {
            let c = calls.clone();
            move || load(c)
        })
        .await
        .unwrap(),
        1.2345
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let raw: Option<Vec<u8>> = server.cmd(&[b"GET", keys::value("rate", "CNGN:USD").as_bytes()]);
    assert!(raw.is_some(), "filled under the seed's key layout");
    assert_eq!(b.stats().namespace("rate").unwrap().l2_hits, 1);
}

#[tokio::test]
async fn loader_errors_are_returned_and_not_cached() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let rates = cache.namespace::<str, f64>("rate").unwrap();
    let err = rates
        .get_or_load("X", || async {
            Err::<f64, _>(std::io::Error::other("db down"))
        })
        .await
        .unwrap_err();
    assert!(err.is_loader(), "{err}");
    assert!(err.to_string().contains("db down"));
    let v = rates
        .get_or_load("X", || async { Ok::<_, std::io::Error>(2.0) })
        .await
        .unwrap();
    assert_eq!(*v, 2.0);
}

#[tokio::test]
async fn invalidate_namespace_clears_every_key_without_scanning() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, Quote>("quote").unwrap();
    let qb = b.namespace::<str, Quote>("quote").unwrap();
    let rates = a.namespace::<str, f64>("rate").unwrap();
    for (i, s) in ["A", "B", "C"].into_iter().enumerate() {
        qa.set(s, quote("1")).await.unwrap();
        support::await_applied(&b, "quote", i as u64 + 1).await;
        assert!(qb.get(s).await.is_some());
    }
    rates.set("keep", 1.0).await.unwrap();

    qb.invalidate_namespace().await.unwrap();
    for s in ["A", "B", "C"] {
        assert_eq!(qb.get(s).await, None, "{s} on the clearing node");
    }
    eventually("node a forgets the namespace", PATIENCE, || async {
        qa.get_local("A").is_none() && qa.get_local("B").is_none()
    })
    .await;
    for s in ["A", "B", "C"] {
        assert_eq!(qa.get(s).await, None, "{s} read through on the other node");
    }
    assert_eq!(
        *rates.get("keep").await.unwrap(),
        1.0,
        "other namespaces untouched"
    );
    // Writes after the clear are live again, on both nodes.
    qa.set("A", quote("2")).await.unwrap();
    assert_eq!(qb.get("A").await.as_deref(), Some(&quote("2")));
    // The crate's only bookkeeping keys: one hash with the version counter and the floors,
    // and the invalidation log beside it.
    let mut meta: Vec<String> = server.cmd(&[b"KEYS", keys::bookkeeping_pattern().as_bytes()]);
    meta.sort();
    assert_eq!(meta, vec![keys::meta(), keys::log()]);
    let floor: u64 = server.cmd(&[
        b"HGET",
        keys::meta().as_bytes(),
        keys::floor_field("quote").as_bytes(),
    ]);
    assert!(floor > 0);
    // A node that starts later learns the floor from Redis and does not serve the old values.
    let c = node(&server).await;
    assert_eq!(
        c.namespace::<str, Quote>("quote").unwrap().get("B").await,
        None
    );
}

#[tokio::test]
async fn ttls_apply_on_both_tiers() {
    let server = RedisServer::start();
    let cache = node_with(&server, |b| {
        b.namespace(
            "short",
            NamespacePolicy::new(Duration::from_millis(1500))
                .l1_ttl(Duration::from_millis(300))
                .staleness_bound(support::LOOSE_BOUND),
        )
    })
    .await;
    let ns = cache.namespace::<str, u32>("short").unwrap();
    ns.set("k", 7).await.unwrap();
    let key = keys::value("short", "k");
    let pttl: i64 = server.cmd(&[b"PTTL", key.as_bytes()]);
    assert!((1..=1500).contains(&pttl), "L2 TTL set on the key: {pttl}");
    assert!(ns.get_local("k").is_some());
    eventually("L1 entry expires", PATIENCE, || async {
        ns.get_local("k").is_none()
    })
    .await;
    assert_eq!(ns.get("k").await.as_deref(), Some(&7), "still in L2");
    eventually("L2 entry expires", PATIENCE, || async {
        server
            .cmd::<Option<Vec<u8>>>(&[b"GET", key.as_bytes()])
            .is_none()
    })
    .await;
    eventually("L1 copy refilled from L2 expires too", PATIENCE, || async {
        ns.get_local("k").is_none()
    })
    .await;
    assert_eq!(ns.get("k").await, None);
}

#[tokio::test]
async fn corrupt_or_foreign_bytes_are_a_counted_miss() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let quotes = cache.namespace::<str, Quote>("quote").unwrap();
    let key = keys::value("quote", "BAD");
    let key = key.as_bytes();
    let (format, unknown_format) = (envelope::FORMAT, envelope::FORMAT + 8);
    let bad: [Vec<u8>; 4] = [
        b"{\"bid\":\"1.0\"}".to_vec(),                    // foreign JSON
        envelope::forge(format, 0, 0, &[])[..5].to_vec(), // truncated envelope
        envelope::forge(unknown_format, 0, 1, &[0x90]),   // unknown format
        envelope::forge(format, 0, 1, &[0xFF, 0x00]),     // bad payload
    ];
    for (i, bytes) in bad.iter().enumerate() {
        server.cmd::<()>(&[b"SET", key, bytes]);
        assert_eq!(quotes.get("BAD").await, None, "case {i}");
        assert_eq!(
            quotes.get_local("BAD"),
            None,
            "case {i}: not served from L1 either"
        );
    }
    assert_eq!(cache.stats().namespace("quote").unwrap().decode_errors, 4);

    // A well-formed envelope whose payload does not decode may be a newer schema written by
    // another deploy: the loader's value is served, but Redis keeps what it has.
    let q = quotes
        .get_or_load("BAD", || async { Ok::<_, std::io::Error>(quote("3")) })
        .await
        .unwrap();
    assert_eq!(*q, quote("3"));
    let kept: Vec<u8> = server.cmd(&[b"GET", key]);
    assert_eq!(kept, bad[3]);
    assert_eq!(cache.stats().namespace("quote").unwrap().fills_refused, 1);

    // So is an envelope of a format this build does not know: a newer deploy may have written it.
    // (Shorter than a format-1 header: only the format check keeps it.)
    let newer: &[u8] = &[&envelope::head(envelope::NEWER_FORMAT, 0)[..], &[0xAB]].concat();
    server.cmd::<()>(&[b"SET", key, newer]);
    let q = quotes
        .get_or_load("BAD", || async { Ok::<_, std::io::Error>(quote("4")) })
        .await
        .unwrap();
    assert_eq!(*q, quote("4"));
    let kept: Vec<u8> = server.cmd(&[b"GET", key]);
    assert_eq!(&kept[..], newer);

    // Bytes that are not ours at all are replaced by the loaded value.
    server.cmd::<()>(&[b"SET", key, &bad[0]]);
    let q = quotes
        .get_or_load("BAD", || async { Ok::<_, std::io::Error>(quote("3")) })
        .await
        .unwrap();
    assert_eq!(*q, quote("3"));
    let other = node(&server).await;
    let got = other
        .namespace::<str, Quote>("quote")
        .unwrap()
        .get("BAD")
        .await;
    assert_eq!(got.as_deref(), Some(&quote("3")));
}

#[tokio::test]
async fn wrong_types_and_unknown_namespaces_are_errors() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    cache.namespace::<str, f64>("rate").unwrap();
    let e = cache.namespace::<str, String>("rate").unwrap_err();
    assert!(e.to_string().contains("holds"), "{e}");
    assert!(cache.namespace::<str, f64>("nope").is_err());
}

#[tokio::test]
async fn bad_config_fails_at_build() {
    let ns = || NamespacePolicy::new(Duration::from_secs(1));
    let e = TieredCache::builder()
        .redis_url("not a url")
        .namespace("rate", ns())
        .build()
        .unwrap_err();
    assert!(e.is_config() && e.to_string().contains("URL"), "{e}");
    let e = TieredCache::builder()
        .namespace("rate", ns())
        .namespace("rate", ns())
        .build()
        .unwrap_err();
    assert!(e.is_config(), "{e}");
    let e = TieredCache::builder()
        .prefix(format!(
            "{}{}bad",
            tiered_cache::DEFAULT_PREFIX,
            tiered_cache::key::SEPARATOR
        ))
        .namespace("rate", ns())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("separator"), "{e}");
}

#[test]
fn build_outside_a_runtime_is_a_config_error() {
    let e = TieredCache::builder()
        .namespace("rate", NamespacePolicy::new(Duration::from_secs(1)))
        .build()
        .unwrap_err();
    assert!(e.is_config() && e.to_string().contains("Tokio"), "{e}");
}

#[tokio::test]
async fn health_reports_redis_and_the_subscriber() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let h = cache.health().await;
    assert!(h.redis_reachable && h.subscribed, "{h:?}");
    assert!(h.last_heartbeat_age.unwrap() < PATIENCE);
}
