//! The figures `stats()` and the metrics report, checked against what the workload did: the
//! latency histograms per tier (L1 hits sampled), invalidation lag, lost and coalesced
//! invalidations, time bypassed, and the bus and L1 gauges.

mod support;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use std::time::Duration;
use support::wire::{self, Message};
use support::{await_applied, eventually, keys, node, node_with, RedisServer, PATIENCE};
use tiered_cache::TieredCache;

/// A node whose metric handles are bound to `recorder` (handles are resolved at `build()`).
async fn recorded_node(server: &RedisServer, recorder: &PrometheusRecorder) -> TieredCache {
    let mut out = None;
    metrics::with_local_recorder(recorder, || {
        out = Some(
            TieredCache::builder()
                .redis_url(server.url())
                .namespace(
                    "rate",
                    tiered_cache::NamespacePolicy::new(Duration::from_secs(90))
                        .staleness_bound(support::LOOSE_BOUND),
                )
                .heartbeat(Duration::from_millis(50))
                .build()
                .expect("build"),
        );
    });
    let cache = out.unwrap();
    let c = cache.clone();
    eventually("subscribed", PATIENCE, || {
        let c = c.clone();
        async move { c.is_subscribed() }
    })
    .await;
    cache
}

/// The value of the first line of the rendered exposition that names `metric` and carries
/// every label in `labels`.
fn value(recorder: &PrometheusRecorder, metric: &str, labels: &[&str]) -> Option<f64> {
    recorder.handle().render().lines().find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let name_ok = series == metric || series.starts_with(&format!("{metric}{{"));
        (name_ok && labels.iter().all(|x| series.contains(x)))
            .then(|| v.parse().ok())
            .flatten()
    })
}

#[tokio::test]
async fn latency_per_tier_with_l1_hits_sampled_and_the_gauges() {
    let mut server = RedisServer::start();
    let recorder = PrometheusBuilder::new().build_recorder();
    let a = recorded_node(&server, &recorder).await;
    let b = node(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    let rb = b.namespace::<str, u64>("rate").unwrap();
    rb.set("in-redis", 1).await.unwrap();
    await_applied(&a, "rate", 1).await;
    // One L2 hit, one L2 miss with a loader call.
    assert_eq!(ra.get("in-redis").await.as_deref(), Some(&1));
    ra.get_or_load("loaded", || async { Ok::<_, std::io::Error>(2) })
        .await
        .unwrap();
    let count = |tier: &str| {
        value(
            &recorder,
            "tiered_cache_request_duration_seconds_count",
            &[r#"namespace="rate""#, &format!(r#"tier="{tier}""#)],
        )
    };
    assert_eq!(count("l2"), Some(2.0), "one per Redis read");
    assert_eq!(count("loader"), Some(1.0), "one per loader call");
    // A batch read of three keys L1 lacks: one Redis read (one MGET), one observation.
    assert_eq!(ra.batch().get(["b1", "b2", "b3"]).await, [None, None, None]);
    assert_eq!(count("l2"), Some(3.0), "one per MGET");
    // L1 hits on this thread: one in 64 is timed (the thread's countdown may be anywhere, and
    // the reads above advanced it too).
    let before = count("l1").unwrap_or(0.0);
    for _ in 0..64 * 100 {
        assert!(ra.get_local("in-redis").is_some());
    }
    let timed = count("l1").unwrap() - before;
    assert!(
        (99.0..=101.0).contains(&timed),
        "{timed} of 6400 hits timed"
    );

    // Gauges: the bus, the epoch, L1's size (refreshed by the heartbeat).
    assert_eq!(
        value(&recorder, "tiered_cache_bus_connected", &[]),
        Some(1.0)
    );
    assert!(value(&recorder, "tiered_cache_bus_epoch", &[]).unwrap() >= 1.0);
    eventually("L1 size exported", PATIENCE, || async {
        value(
            &recorder,
            "tiered_cache_l1_entries",
            &[r#"namespace="rate""#],
        ) == Some(2.0)
            && value(
                &recorder,
                "tiered_cache_l1_weighted_size",
                &[r#"namespace="rate""#],
            ) == Some(2.0)
    })
    .await;
    // Lag of the message a applied from b.
    assert_eq!(
        value(
            &recorder,
            "tiered_cache_invalidation_lag_seconds_count",
            &[r#"namespace="rate""#]
        ),
        Some(1.0)
    );
    server.kill();
    eventually("disconnection exported", PATIENCE, || async {
        value(&recorder, "tiered_cache_bus_connected", &[]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn lag_percentiles_coalesced_keys_and_ratios_in_stats() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    let ns = |c: &TieredCache| *c.stats().namespace("rate").unwrap();
    assert_eq!(ns(&b).invalidation_lag.samples, 0);
    for i in 0..10 {
        ra.set("k", i).await.unwrap();
    }
    // One message listing three keys: two coalesced.
    let many = ra
        .batch()
        .set([("x", 1), ("y", 2), ("z", 3)].iter().map(|(k, v)| (*k, *v)))
        .await;
    assert!(many.iter().all(Result::is_ok));
    await_applied(&b, "rate", 11).await;
    let s = ns(&b);
    assert_eq!(s.invalidations_coalesced, 2);
    let lag = s.invalidation_lag;
    assert_eq!(lag.samples, 11);
    assert!(lag.p50 <= lag.p99 && lag.p99 <= lag.max, "{lag:?}");
    // The sender does not measure its own messages.
    assert_eq!(ns(&a).invalidation_lag.samples, 0);

    // Ratios: 3 L1 hits, 1 L2 hit, 1 miss everywhere.
    let base = ns(&b);
    for _ in 0..3 {
        rb.get("k").await; // first: L2 hit, then L1
    }
    rb.get("k").await;
    rb.get("nothing").await;
    let s = ns(&b);
    let (l1, misses, l2) = (
        s.l1_hits - base.l1_hits,
        s.l1_misses - base.l1_misses,
        s.l2_hits - base.l2_hits,
    );
    assert_eq!((l1, misses, l2), (3, 2, 1));
    let all = s.l1_hits + s.l1_misses;
    assert_eq!(
        s.hit_ratio(),
        Some((s.l1_hits + s.l2_hits) as f64 / all as f64)
    );
    assert_eq!(s.l1_hit_ratio(), Some(s.l1_hits as f64 / all as f64));
}

#[tokio::test]
async fn lost_messages_are_counted_from_the_hole_in_the_sequence() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let before = b.stats();
    // Three versions drawn without a message, as if three messages were lost on the way.
    support::draw_versions(&server, 3);
    a.namespace::<str, u64>("rate")
        .unwrap()
        .set("k", 1)
        .await
        .unwrap();
    eventually("b resynchronised", PATIENCE, || async {
        b.stats().bus_resyncs > before.bus_resyncs
    })
    .await;
    let after = b.stats();
    assert_eq!(
        after.bus_invalidations_lost - before.bus_invalidations_lost,
        3
    );
    assert!(after.bus_gaps > before.bus_gaps);
}

#[tokio::test]
async fn time_bypassed_grows_while_the_bus_cannot_vouch() {
    let mut server = RedisServer::start();
    let a = node_with(&server, |b| b.connect_timeout(Duration::from_millis(200))).await;
    let ns = |c: &TieredCache| *c.stats().namespace("rate").unwrap();
    let idle = ns(&a).l1_bypass_time;
    server.kill();
    eventually("bypassing", PATIENCE, || async { ns(&a).l1_bypassed }).await;
    let t1 = ns(&a).l1_bypass_time;
    eventually("the current bypass counts", PATIENCE, || async {
        ns(&a).l1_bypass_time >= t1 + Duration::from_millis(100)
    })
    .await;
    server.restart();
    eventually("trusted again", PATIENCE, || async { !ns(&a).l1_bypassed }).await;
    // The clock stops once trusted (the flag flips an instant before it does): two reads
    // 20 ms apart agree.
    let deadline = std::time::Instant::now() + PATIENCE;
    let done = loop {
        let t = ns(&a).l1_bypass_time;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if ns(&a).l1_bypass_time == t {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bypass clock never stopped"
        );
    };
    assert!(done > t1 && t1 >= idle, "{idle:?} <= {t1:?} < {done:?}");
}

/// A message stamped 5 s ago (a publisher whose clock is behind, or a slow delivery) counts
/// 5 s of lag; one stamped in the future counts none.
#[tokio::test]
async fn lag_is_the_receivers_clock_minus_the_senders() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let meta = |f: &str| -> u64 { support::meta_field(&server, f) };
    // A write first, so the counter and its epoch exist.
    a.namespace::<str, u64>("rate")
        .unwrap()
        .set("k", 1)
        .await
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for sent_ms in [now_ms - 5_000, now_ms + 60_000] {
        let m = Message::keys(wire::FOREIGN_ORIGIN, "rate", &["k"])
            .sent_at(sent_ms)
            .assemble(meta(keys::VERSION_FIELD), meta(keys::EPOCH_FIELD));
        server.cmd::<i64>(&[b"PUBLISH", keys::channel().as_bytes(), &m]);
    }
    await_applied(&a, "rate", 2).await;
    let lag = a.stats().namespace("rate").unwrap().invalidation_lag;
    assert_eq!(lag.samples, 2);
    // No upper bound: how long delivery took is the machine's business, not this test's.
    assert!(lag.max >= Duration::from_secs(5), "{lag:?}");
    assert_eq!(lag.p50, Duration::ZERO, "a sender ahead counts as no lag");
    assert_eq!(a.stats().bus_resyncs, 1, "applied in sequence, no resync");
}
