//! Per-call options (`EntryOptions` through `Namespace::with`): TTL overrides reach Redis and
//! L1 on every write and fill path, strictness and tags reach batches, and options a namespace
//! cannot honour are refused when the handle is made, before any I/O.

mod support;

use std::time::Duration;
use support::{eventually, node, value_key, RedisServer, PATIENCE};
use tiered_cache::EntryOptions;

/// Milliseconds Redis keeps `key` of `ns` (`PTTL`).
fn pttl(server: &RedisServer, ns: &str, key: &str) -> i64 {
    server.cmd(&[b"PTTL", value_key(ns, key).as_bytes()])
}

#[tokio::test]
async fn a_call_ttl_is_the_values_life_in_redis_on_every_write_and_fill() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    // "rate" keeps values 90 s.
    let rates = cache.namespace::<str, u64>("rate").unwrap();
    let short = rates
        .with(EntryOptions::new().ttl(Duration::from_secs(5)))
        .unwrap();
    let long = rates
        .with(EntryOptions::new().ttl(Duration::from_secs(600)))
        .unwrap();

    rates.set("plain", 1).await.unwrap();
    short.set("set", 1).await.unwrap();
    long.set("long", 1).await.unwrap();
    short.batch().set([("b1", 1), ("b2", 2)]).await;
    short
        .get_or_load("filled", || async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    let loaded = short
        .batch()
        .get_or_load(["bf"], |_| async { Ok::<_, std::io::Error>(vec![Some(8)]) })
        .await;
    assert_eq!(loaded[0].as_ref().unwrap().as_deref(), Some(&8));

    let plain = pttl(&server, "rate", "plain");
    assert!((60_000..=90_000).contains(&plain), "namespace TTL: {plain}");
    for key in ["set", "b1", "b2", "filled", "bf"] {
        let ms = pttl(&server, "rate", key);
        assert!(
            (1..=5_000).contains(&ms),
            "{key}: PTTL {ms}, wanted at most the call's 5 s"
        );
    }
    let ms = pttl(&server, "rate", "long");
    assert!(ms > 90_000, "a longer call TTL: {ms}");
    // The L1 copy of a value written with a long TTL still lives at most the namespace's L1
    // TTL; it is there now.
    assert_eq!(long.get_local("long").as_deref(), Some(&1));
}

#[tokio::test]
async fn a_call_l1_ttl_ends_the_local_copy_while_redis_keeps_the_value() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let rates = cache.namespace::<str, u64>("rate").unwrap();
    let brief = rates
        .with(EntryOptions::new().l1_ttl(Duration::from_millis(1000)))
        .unwrap();
    brief.set("k", 1).await.unwrap();
    brief
        .get_or_load("loaded", || async { Ok::<_, std::io::Error>(2) })
        .await
        .unwrap();
    assert_eq!(rates.get_local("k").as_deref(), Some(&1));
    assert_eq!(rates.get_local("loaded").as_deref(), Some(&2));
    eventually(
        "the L1 copies expire after the call's L1 TTL",
        PATIENCE,
        || async { rates.get_local("k").is_none() && rates.get_local("loaded").is_none() },
    )
    .await;
    // Redis still holds both for the namespace's TTL: the next read finds them there.
    assert_eq!(rates.get("k").await.as_deref(), Some(&1));
    assert_eq!(rates.get("loaded").await.as_deref(), Some(&2));
}

#[tokio::test]
async fn touch_extends_by_the_call_ttl() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let rates = cache.namespace::<str, u64>("rate").unwrap();
    rates.set("k", 1).await.unwrap();
    let longer = rates
        .with(EntryOptions::new().ttl(Duration::from_secs(900)))
        .unwrap();
    assert!(longer.touch("k").await.unwrap());
    let ms = pttl(&server, "rate", "k");
    assert!(ms > 90_000, "extended by the call's 900 s: {ms}");
}

#[tokio::test]
async fn options_a_namespace_cannot_honour_are_refused_before_any_io() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    // "rate": L2 TTL 90 s, L1 TTL 60 s.
    let rates = cache.namespace::<str, u64>("rate").unwrap();
    let refused = |o: EntryOptions| rates.with(o).unwrap_err();
    for e in [
        refused(EntryOptions::new().ttl(Duration::ZERO)),
        refused(EntryOptions::new().l1_ttl(Duration::ZERO)),
        refused(EntryOptions::new().l1_ttl(Duration::from_secs(61))),
        refused(
            EntryOptions::new()
                .ttl(Duration::from_secs(5))
                .l1_ttl(Duration::from_secs(10)),
        ),
        refused(EntryOptions::new().ttl(Duration::from_secs(200 * 365 * 24 * 3600))),
    ] {
        assert!(e.is_invalid_options(), "{e}");
    }
    assert!(refused(EntryOptions::new().tag("a b")).is_invalid_tag());
    let tagged = rates.with(EntryOptions::new().tag("t")).unwrap();
    let touched: i64 = server.cmd(&[b"EXISTS", value_key("rate", "k").as_bytes()]);
    assert_eq!(touched, 0, "nothing was written");
    // What a handle holds can be read back.
    assert_eq!(tagged.options(), EntryOptions::new().tag("t"));
}

#[tokio::test]
async fn strictness_reaches_batches_and_invalidations() {
    let mut server = RedisServer::start();
    let cache = node(&server).await;
    let rates = cache.namespace::<str, u64>("rate").unwrap();
    let strict = rates.with(EntryOptions::new().strict(true)).unwrap();
    server.kill();
    let out = strict.batch().set([("a", 1), ("b", 2)]).await;
    assert!(
        out.iter().all(|r| r.as_ref().unwrap_err().is_unavailable()),
        "{out:?}"
    );
    assert!(strict
        .batch()
        .invalidate(["a"])
        .await
        .unwrap_err()
        .is_unavailable());
    assert!(strict
        .invalidate_namespace()
        .await
        .unwrap_err()
        .is_unavailable());
    // The plain handle queues instead.
    assert!(rates.batch().set([("a", 1)]).await[0].is_ok());
    assert!(cache.health().await.outbox_entries > 0);
}

#[tokio::test]
async fn tagged_loads_take_the_namespaces_policies() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;
    let server = RedisServer::start();
    let cache = support::node_with(&server, |b| {
        b.namespace(
            "slow",
            tiered_cache::NamespacePolicy::new(Duration::from_secs(60))
                .staleness_bound(support::LOOSE_BOUND)
                .hard_timeout(Duration::from_millis(100)),
        )
    })
    .await;
    let slow = cache.namespace::<str, u64>("slow").unwrap();
    let tagged = slow.with(EntryOptions::new().tag("t")).unwrap();
    // The hard timeout applies to a tagged load as to an untagged one.
    let e = tagged
        .get_or_load("k", || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, std::io::Error>(1)
        })
        .await
        .unwrap_err();
    assert!(e.is_loader(), "{e}");

    // Negative caching on a tagged handle: the "not found" is cached, and joins the tag.
    let calls = Arc::new(AtomicU32::new(0));
    let load = |calls: &Arc<AtomicU32>| {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, SeqCst);
            Ok::<Option<u64>, std::io::Error>(None)
        }
    };
    assert_eq!(
        tagged
            .get_or_load_optional("gone", load(&calls))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        tagged
            .get_or_load_optional("gone", load(&calls))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        calls.load(SeqCst),
        1,
        "the cached \"not found\" answered the second call"
    );
    assert_eq!(
        slow.invalidate_tag("t").await.unwrap(),
        1,
        "the tag listed the key"
    );
    assert_eq!(
        tagged
            .get_or_load_optional("gone", load(&calls))
            .await
            .unwrap(),
        None
    );
    assert_eq!(calls.load(SeqCst), 2, "invalidating the tag dropped it");
}

#[tokio::test]
async fn with_layers_options_on_the_handles_own() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let rates = cache.namespace::<str, u64>("rate").unwrap();
    let strict = rates
        .with(EntryOptions::new().strict(true).tag("a"))
        .unwrap();
    let both = strict
        .with(EntryOptions::new().tag("b").ttl(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        both.options(),
        EntryOptions::new()
            .tags(["a", "b"])
            .strict(true)
            .ttl(Duration::from_secs(5))
    );
    let lax = both.with(EntryOptions::new().strict(false)).unwrap();
    assert_eq!(lax.options().strict_value(), Some(false));
}

#[tokio::test]
async fn a_queued_write_is_replayed_with_what_is_left_of_its_call_ttl() {
    let mut server = RedisServer::start();
    let cache = support::node_with_fees(&server).await;
    // "fees" keeps values 90 s; these writes are for 20 s and for 10 minutes.
    let fees = cache.namespace::<str, u64>("fees").unwrap();
    let brief = fees
        .with(EntryOptions::new().ttl(Duration::from_secs(20)))
        .unwrap();
    let long = fees
        .with(EntryOptions::new().ttl(Duration::from_secs(600)))
        .unwrap();
    server.kill();
    brief.set("brief", 1).await.unwrap();
    long.set("long", 2).await.unwrap();
    assert_eq!(cache.health().await.outbox_entries, 2, "both queued");
    server.restart();
    eventually("the outbox replayed", PATIENCE, || async {
        cache.health().await.outbox_entries == 0
    })
    .await;
    let ms = pttl(&server, "fees", "brief");
    assert!(
        (1..=20_000).contains(&ms),
        "brief: PTTL {ms}, wanted what is left of 20 s"
    );
    let ms = pttl(&server, "fees", "long");
    assert!(ms > 90_000, "long: PTTL {ms}, wanted what is left of 600 s");
}

#[tokio::test]
async fn a_call_l1_ttl_holds_for_values_read_from_redis_and_refreshed() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;
    let server = RedisServer::start();
    let cache = support::node_with(&server, |b| {
        b.namespace(
            "hot",
            tiered_cache::NamespacePolicy::new(Duration::from_secs(90))
                .l1_ttl(Duration::from_secs(60))
                .refresh_ahead(0.5)
                .staleness_bound(support::LOOSE_BOUND),
        )
    })
    .await;
    let hot = cache.namespace::<str, u64>("hot").unwrap();
    let brief = hot
        .with(EntryOptions::new().l1_ttl(Duration::from_millis(1000)))
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let load = |calls: &Arc<AtomicU32>| {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, SeqCst);
            Ok::<_, std::io::Error>(1)
        }
    };
    let gone = |key: &'static str| {
        let hot = hot.clone();
        move || {
            let hot = hot.clone();
            async move { hot.get_local(key).is_none() }
        }
    };

    // A refresh-ahead that finds the same version in Redis keeps the call's L1 TTL.
    brief.get_or_load("r", load(&calls)).await.unwrap();
    eventually(
        "a hit past half the L1 TTL starts a refresh",
        PATIENCE,
        || async {
            brief.get_or_load("r", load(&calls)).await.unwrap();
            cache.stats().namespace("hot").unwrap().refreshes > 0
        },
    )
    .await;
    eventually(
        "the refreshed copy ends with the call's L1 TTL",
        PATIENCE,
        gone("r"),
    )
    .await;

    // A second load answered by Redis keeps it too.
    brief.get_or_load("k", load(&calls)).await.unwrap();
    eventually("the first copy expires", PATIENCE, gone("k")).await;
    let before = calls.load(SeqCst);
    brief.get_or_load("k", load(&calls)).await.unwrap();
    assert_eq!(calls.load(SeqCst), before, "Redis answered the second load");
    assert!(hot.get_local("k").is_some());
    eventually(
        "the copy read from Redis ends with the call's L1 TTL",
        PATIENCE,
        gone("k"),
    )
    .await;

    // So does a plain read through the handle.
    hot.set("g", 1).await.unwrap();
    hot.invalidate("g").await.unwrap();
    hot.set("g", 2).await.unwrap();
    let other = support::node_with(&server, |b| {
        b.namespace(
            "hot",
            tiered_cache::NamespacePolicy::new(Duration::from_secs(90))
                .staleness_bound(support::LOOSE_BOUND),
        )
    })
    .await;
    let other_hot = other.namespace::<str, u64>("hot").unwrap();
    let other_brief = other_hot
        .with(EntryOptions::new().l1_ttl(Duration::from_millis(1000)))
        .unwrap();
    assert_eq!(other_brief.get("g").await.as_deref(), Some(&2));
    assert!(other_hot.get_local("g").is_some());
    eventually(
        "a read's copy ends with the call's L1 TTL",
        PATIENCE,
        || async { other_hot.get_local("g").is_none() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_loads_share_one_flight_and_fall_back_on_fail_safe() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;
    let server = RedisServer::start();
    let cache = support::node_with(&server, |b| {
        b.namespace(
            "safe",
            tiered_cache::NamespacePolicy::new(Duration::from_millis(300))
                .fail_safe(Duration::from_secs(30))
                .staleness_bound(support::LOOSE_BOUND),
        )
        // A fill that timed out on a busy machine would leave the tag empty: not what is
        // tested here.
        .l2_timeout(Duration::from_secs(5))
    })
    .await;
    let safe = cache.namespace::<str, u64>("safe").unwrap();
    let tagged = safe.with(EntryOptions::new().tag("t")).unwrap();

    // Single flight: four concurrent tagged loads of one key run the loader once.
    let calls = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (tagged, calls, gate) = (tagged.clone(), calls.clone(), gate.clone());
        let node = cache.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            tagged
                .get_or_load("k", move || async move {
                    calls.fetch_add(1, SeqCst);
                    // Held until the other three callers have joined this load.
                    eventually("the other callers join the flight", PATIENCE, || async {
                        node.stats().namespace("safe").unwrap().coalesced_loads >= 3
                    })
                    .await;
                    Ok::<_, std::io::Error>(7)
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(*t.await.unwrap(), 7);
    }
    assert_eq!(calls.load(SeqCst), 1, "one load for four callers");
    assert_eq!(
        tagged.invalidate_tag("t").await.unwrap(),
        1,
        "the fill joined the tag"
    );

    // Fail-safe: an expired tagged value is served when the loader fails.
    tagged
        .get_or_load("f", || async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    eventually("the value expires (300 ms TTL)", PATIENCE, || async {
        safe.get_local("f").is_none()
    })
    .await;
    let got = tagged
        .get_or_load("f", || async {
            Err::<u64, _>(std::io::Error::other("source down"))
        })
        .await
        .unwrap();
    assert_eq!(*got, 1);
    assert_eq!(cache.stats().namespace("safe").unwrap().stale_served, 1);
}
