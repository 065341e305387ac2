//! The circuit breaker and the outbox against a real redis-server: the breaker opens when
//! Redis dies or hangs and answers calls at once while open, lets exactly one probe through
//! when half-open, and closes when Redis answers again; writes and invalidations made
//! meanwhile are queued (newest per key, a clear superseding its namespace's keys, bounded)
//! and replayed through the normal scripts, so every other node's L1 follows.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    await_applied, envelope, eventually, keys, Fault, FaultProxy, RedisServer, Target, PATIENCE,
};
use tiered_cache::{BreakerState, EntryOptions, NamespacePolicy, TieredCache, TieredCacheBuilder};

/// "Never hangs": far above every configured timeout; a functional bound, not a speed claim.
const NO_HANG: Duration = Duration::from_secs(2);
const L2_TIMEOUT: Duration = Duration::from_millis(200);

/// `rate` is strict about staleness (the default), `fees` keeps serving L1 without the bus.
fn builder(url: &str) -> TieredCacheBuilder {
    TieredCache::builder()
        .redis_url(url)
        .namespace("rate", NamespacePolicy::new(Duration::from_secs(90)))
        .namespace(
            "fees",
            NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness(),
        )
        .heartbeat(Duration::from_millis(50))
        .l2_timeout(L2_TIMEOUT)
        .connect_timeout(Duration::from_millis(300))
        .breaker_cooldown(Duration::from_millis(100))
        .outbox_retry(Duration::from_millis(100))
        .subscriber_backoff(Duration::from_millis(100))
}

async fn subscribed(c: &TieredCache) {
    eventually("subscribed", PATIENCE, || async { c.is_subscribed() }).await;
}

async fn breaker_is(c: &TieredCache, want: BreakerState) {
    eventually(&format!("breaker {want:?}"), PATIENCE, || async {
        c.stats().breaker == want
    })
    .await;
}

/// The value Redis itself holds under `key` of `ns` (a library envelope around MessagePack),
/// or `None` for no key or a tombstone.
fn in_redis<T: serde::de::DeserializeOwned>(
    server: &RedisServer,
    ns: &str,
    key: &str,
) -> Option<T> {
    let raw: Option<Vec<u8>> = server.cmd(&[b"GET", keys::value(ns, key).as_bytes()]);
    let raw = raw?;
    assert!(envelope::is_envelope(&raw), "not a library envelope");
    if envelope::has_flag(&raw, envelope::FLAG_TOMBSTONE) {
        return None;
    }
    assert!(
        !envelope::has_flag(&raw, envelope::FLAG_COMPRESSED),
        "test values are too small to be compressed"
    );
    match envelope::open(&raw) {
        Ok(envelope::Envelope::Value {
            payload: Some(payload),
            ..
        }) => Some(rmp_serde::from_slice(&payload).expect("payload decodes")),
        other => panic!("not a stored value: {other:?}"),
    }
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let v = tokio::time::timeout(NO_HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"));
    assert!(t.elapsed() < NO_HANG, "{what} took {:?}", t.elapsed());
    v
}

/// Redis SIGKILLed: the breaker opens by itself, no caller sees an error (reads answered by
/// L1 or the loader, writes queued), and after the restart the breaker closes, every node
/// resyncs, and the queued writes reach the empty Redis and every other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_as_redis_dies_and_closes_after_restart_with_no_caller_error() {
    let mut server = RedisServer::start();
    let a = builder(&server.url()).build().unwrap();
    let b = builder(&server.url()).build().unwrap();
    subscribed(&a).await;
    subscribed(&b).await;
    let (ra, fa) = (
        a.namespace::<str, u64>("rate").unwrap(),
        a.namespace::<str, u64>("fees").unwrap(),
    );
    let (rb, fb) = (
        b.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("fees").unwrap(),
    );
    ra.set("k", 1).await.unwrap();
    fa.set("k", 1).await.unwrap();
    await_applied(&b, "fees", 1).await;
    assert_eq!(fb.get("k").await.map(|v| *v), Some(1));
    assert_eq!(fb.get_local("k").map(|v| *v), Some(1));
    assert_eq!(a.stats().breaker, BreakerState::Closed);

    server.kill();
    // No application call needed: the heartbeat's calls fail and open it.
    breaker_is(&a, BreakerState::Open).await;
    breaker_is(&b, BreakerState::Open).await;
    for i in 0..10 {
        assert_eq!(timed("get", ra.get("nothing")).await, None);
        let v = timed(
            "get_or_load",
            ra.get_or_load(&format!("x{i}"), || async { Ok::<_, std::io::Error>(7) }),
        )
        .await
        .expect("get_or_load answered by the loader");
        assert_eq!(*v, 7);
        timed("set", fa.set("k", 2)).await.expect("set is queued");
        timed("set", ra.set("j", 5)).await.expect("set is queued");
        timed("invalidate", ra.invalidate("k"))
            .await
            .expect("invalidate is queued");
    }
    let h = a.health().await;
    assert!(!h.redis_reachable, "{h:?}");
    assert_ne!(h.breaker, BreakerState::Closed, "{h:?}");
    // Newest per key: three keys queued however often they were written.
    assert_eq!(h.outbox_entries, 3, "{h:?}");
    assert_eq!(a.stats().namespace("rate").unwrap().outbox_queued, 20);
    // (A replay attempt may hold one operation for a moment; a newer one replaces it when it
    // is put back.)
    eventually("older writes superseded", PATIENCE, || async {
        a.stats().namespace("rate").unwrap().outbox_superseded == 18
    })
    .await;
    // Availability first: `fees` reads its own queued write on a, and b (no bus) keeps its
    // copy; `rate` serves neither.
    assert_eq!(fa.get_local("k").map(|v| *v), Some(2));
    assert_eq!(fb.get_local("k").map(|v| *v), Some(1));
    assert_eq!(ra.get_local("j"), None);

    server.restart();
    breaker_is(&a, BreakerState::Closed).await;
    eventually("both resubscribed", PATIENCE, || async {
        a.is_subscribed() && b.is_subscribed()
    })
    .await;
    eventually("a's outbox replayed", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
    // The empty Redis holds the queued writes, and b, whose L1 the resync cleared, follows.
    assert_eq!(in_redis::<u64>(&server, "fees", "k"), Some(2));
    assert_eq!(in_redis::<u64>(&server, "rate", "j"), Some(5));
    assert_eq!(in_redis::<u64>(&server, "rate", "k"), None);
    eventually(
        "b serves the replayed write, never its old copy",
        PATIENCE,
        || async {
            let v = fb.get("k").await.map(|v| *v);
            assert_ne!(
                v,
                Some(1),
                "b served its pre-outage copy after Redis returned"
            );
            v == Some(2)
        },
    )
    .await;
    // Redis's copy is trusted again once the grace after the outage has passed (every node's
    // outbox has had time to replay): poll.
    eventually("b reads the replayed write", PATIENCE, || async {
        rb.get("j").await.map(|v| *v) == Some(5)
    })
    .await;
    assert_eq!(rb.get("k").await, None);
    let s = a.stats();
    assert_eq!(s.namespace("rate").unwrap().outbox_replayed, 2);
    assert_eq!(s.namespace("fees").unwrap().outbox_replayed, 1);
    // closed -> open, then half-open/open rounds while down, and finally closed.
    assert!(s.breaker_transitions >= 3, "{s:?}");
}

/// A Redis that takes requests and never answers (the proxy swallows them): once open, calls
/// answer at once and reach nothing; after the cool-down exactly one of 50 concurrent calls
/// is let through as the probe, its failure re-opens the breaker, and a successful probe
/// closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_answers_at_once_and_half_open_lets_exactly_one_probe_through() {
    const COOL_DOWN: Duration = Duration::from_secs(1);
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let a = TieredCache::builder()
        .redis_url(proxy.url())
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness(),
        )
        // The heartbeat sends once at start, then not within this test: it must not be the
        // probe the test counts.
        .heartbeat(Duration::from_secs(600))
        .l2_timeout(L2_TIMEOUT)
        .breaker_cooldown(COOL_DOWN)
        .outbox_retry(COOL_DOWN)
        .subscriber_backoff(COOL_DOWN)
        .breaker_threshold(2)
        .build()
        .unwrap();
    subscribed(&a).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set("warm", 1).await.unwrap();

    proxy.set(Fault::Swallow, Target::Data);
    for i in 0..2 {
        let t = Instant::now();
        assert_eq!(ra.get(&format!("opening-{i}")).await, None);
        assert!(
            t.elapsed() >= L2_TIMEOUT,
            "closed: the call waited for Redis"
        );
    }
    assert_eq!(a.stats().breaker, BreakerState::Open);
    assert_eq!(proxy.swallowed_count(b"opening-"), 2);

    // Open: answered at once, nothing reaches Redis.
    let t = Instant::now();
    for i in 0..50 {
        assert_eq!(ra.get(&format!("open-{i}")).await, None);
        let v = ra
            .get_or_load(&format!("open-load-{i}"), || async {
                Ok::<_, std::io::Error>(3)
            })
            .await
            .unwrap();
        assert_eq!(*v, 3);
    }
    let took = t.elapsed();
    // Nothing reached Redis, so nothing could wait for its reply. The time is only a backstop
    // against calls that wait out the L2 timeout without sending anything: 100 such calls take
    // 100 timeouts (20 s), twice this bound; 100 in-memory answers stay far below it however
    // loaded the machine is (a bound tight enough to time them measures the scheduler).
    assert_eq!(proxy.swallowed_count(b"open-"), 0, "Redis was contacted");
    assert!(
        took < L2_TIMEOUT * 50,
        "100 calls while open took {took:?}: they waited on Redis"
    );
    assert_eq!(a.stats().breaker, BreakerState::Open);

    // Half-open: 50 concurrent calls, one probe.
    tokio::time::sleep(COOL_DOWN).await; // the configured cool-down, not a hope
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let (ra, barrier) = (ra.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                assert_eq!(ra.get(&format!("half-{i}")).await, None);
                t.elapsed()
            })
        })
        .collect();
    let mut took = Vec::new();
    for c in calls {
        took.push(c.await.unwrap());
    }
    assert_eq!(
        proxy.swallowed_count(b"half-"),
        1,
        "exactly one probe reaches Redis"
    );
    // Only the probe reached Redis (the count above), so only the probe can have waited for
    // it; the others were answered by the open breaker. Whether a call also took 200 ms is no
    // proof either way on a loaded machine: a starved fast answer can. The probe itself waits
    // out the timeout, since nothing answers it: a lower bound no load can break.
    let waited = took.iter().filter(|d| **d >= L2_TIMEOUT).count();
    assert!(waited >= 1, "the probe waited for Redis: {took:?}");
    assert_eq!(
        a.stats().breaker,
        BreakerState::Open,
        "a failed probe re-opens"
    );

    // Redis answers again: the next probe closes the breaker.
    proxy.heal();
    proxy.reset(); // the swallowed requests broke the old connection's reply pairing
    tokio::time::sleep(COOL_DOWN).await;
    eventually("a probe closes the breaker", PATIENCE, || async {
        a.health().await.redis_reachable
    })
    .await;
    assert_eq!(a.stats().breaker, BreakerState::Closed);
    assert_eq!(ra.get("cold").await, None);
    assert_eq!(
        proxy.swallowed_count(b"cold"),
        0,
        "healed: nothing swallowed"
    );
}

/// Two nodes, the writer's data link hung (its bus still up): the writer's write is queued,
/// the other node keeps its old copy meanwhile (the fleet agrees), and when the link heals the
/// replayed write's broadcast evicts that copy, without any resync on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_write_reaches_other_nodes_l1() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let a = builder(&proxy.url()).build().unwrap();
    let b = builder(&server.url()).build().unwrap();
    subscribed(&a).await;
    subscribed(&b).await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    ra.set("k", 1).await.unwrap();
    await_applied(&b, "rate", 1).await;
    assert_eq!(rb.get("k").await.map(|v| *v), Some(1));
    let subscriptions = b.stats().bus_subscriptions;

    proxy.set(Fault::Swallow, Target::Data);
    breaker_is(&a, BreakerState::Open).await;
    ra.set("k", 2).await.expect("queued, not failed");
    assert_eq!(a.stats().outbox_entries, 1);
    assert_eq!(
        ra.get_local("k"),
        None,
        "a bounded namespace drops its copy"
    );
    assert_eq!(
        rb.get_local("k").map(|v| *v),
        Some(1),
        "b never heard of it"
    );

    proxy.heal();
    proxy.reset();
    breaker_is(&a, BreakerState::Closed).await;
    eventually("b evicts on the replayed write", PATIENCE, || async {
        rb.get_local("k").is_none()
    })
    .await;
    assert_eq!(rb.get("k").await.map(|v| *v), Some(2));
    assert_eq!(in_redis::<u64>(&server, "rate", "k"), Some(2));
    eventually("a's outbox empty", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
    assert_eq!(
        b.stats().bus_subscriptions,
        subscriptions,
        "b did not resync: the replay's own broadcast did it"
    );
}

/// A write that times out while the breaker is still closed (a high threshold) is queued too,
/// retried every cool-down, and each failed retry leaves the writer's read-your-writes copy
/// alone; once Redis answers, the retry lands and the other node follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_is_retried_and_keeps_its_local_copy_meanwhile() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let a = builder(&proxy.url())
        .breaker_threshold(1_000)
        .build()
        .unwrap();
    let b = builder(&server.url()).build().unwrap();
    subscribed(&a).await;
    subscribed(&b).await;
    let (fa, fb) = (
        a.namespace::<str, u64>("fees").unwrap(),
        b.namespace::<str, u64>("fees").unwrap(),
    );
    fa.set("k", 1).await.unwrap();
    await_applied(&b, "fees", 1).await;
    assert_eq!(fb.get("k").await.map(|v| *v), Some(1));

    proxy.set(Fault::Swallow, Target::Data);
    let t = Instant::now();
    fa.set("k", 2).await.expect("queued, not failed");
    assert!(
        t.elapsed() >= L2_TIMEOUT,
        "the breaker is closed: the write waited"
    );
    assert_eq!(a.stats().breaker, BreakerState::Closed);
    let errors = || a.stats().namespace("fees").unwrap().l2_errors;
    eventually("a retry failed too", PATIENCE, || async { errors() >= 3 }).await;
    assert_eq!(
        fa.get_local("k").map(|v| *v),
        Some(2),
        "failed retries keep the queued write's local copy"
    );
    assert_eq!(a.stats().outbox_entries, 1);

    proxy.heal();
    proxy.reset();
    eventually("b follows the retried write", PATIENCE, || async {
        fb.get("k").await.map(|v| *v) == Some(2)
    })
    .await;
    assert_eq!(in_redis::<u64>(&server, "fees", "k"), Some(2));
    eventually("a's outbox empty", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
}

/// Sets up a writer `a` behind a proxy and a reader `b` holding `keys` = "old" in L1, then
/// hangs `a`'s data link until its breaker opens.
async fn partitioned_writer(
    server: &RedisServer,
    tweak: impl FnOnce(TieredCacheBuilder) -> TieredCacheBuilder,
    keys: &[&str],
) -> (FaultProxy, TieredCache, TieredCache) {
    let proxy = FaultProxy::start(server.port()).await;
    let a = tweak(builder(&proxy.url())).build().unwrap();
    let b = builder(&server.url()).build().unwrap();
    subscribed(&a).await;
    subscribed(&b).await;
    let (ra, rb) = (
        a.namespace::<str, String>("rate").unwrap(),
        b.namespace::<str, String>("rate").unwrap(),
    );
    for k in keys {
        ra.set(k, "old".into()).await.unwrap();
    }
    await_applied(&b, "rate", keys.len() as u64).await;
    for k in keys {
        assert_eq!(rb.get(k).await.as_deref().map(String::as_str), Some("old"));
        assert!(rb.get_local(k).is_some());
    }
    proxy.set(Fault::Swallow, Target::Data);
    breaker_is(&a, BreakerState::Open).await;
    (proxy, a, b)
}

async fn heal(proxy: &FaultProxy, a: &TieredCache) {
    proxy.heal();
    proxy.reset();
    eventually("a's outbox replayed", PATIENCE, || async {
        a.stats().breaker == BreakerState::Closed && a.stats().outbox_entries == 0
    })
    .await;
}

/// A write queued on a partitioned node never lands over a write another node made meanwhile:
/// its replay finds a version the queuing node had not seen and tombstones the key instead, so
/// the fleet converges on a miss (the loader's answer), never on the older value. A key nobody
/// touched meanwhile takes the queued value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_write_never_lands_over_a_newer_write_from_another_node() {
    let server = RedisServer::start();
    let (proxy, a, b) = partitioned_writer(&server, |b| b, &["k", "j"]).await;
    let (ra, rb) = (
        a.namespace::<str, String>("rate").unwrap(),
        b.namespace::<str, String>("rate").unwrap(),
    );
    ra.set("k", "a, queued first".into()).await.unwrap();
    ra.set("j", "a, alone".into()).await.unwrap();
    assert_eq!(a.stats().outbox_entries, 2);
    rb.set("k", "b, written after".into()).await.unwrap();
    let dropped = a.stats().namespace("rate").unwrap().outbox_dropped;

    heal(&proxy, &a).await;
    assert_eq!(
        in_redis::<String>(&server, "rate", "k"),
        None,
        "the older queued write is tombstoned, not written over the newer one"
    );
    assert_eq!(
        in_redis::<String>(&server, "rate", "j").as_deref(),
        Some("a, alone")
    );
    assert_eq!(
        a.stats().namespace("rate").unwrap().outbox_dropped,
        dropped + 1
    );
    eventually("b drops k and reads j", PATIENCE, || async {
        rb.get("k").await.is_none()
            && rb.get("j").await.as_deref().map(String::as_str) == Some("a, alone")
    })
    .await;
}

/// The same with a clear of the namespace queued first: the write queued after it does not
/// count that clear against itself, but still yields to the other node's newer write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_behind_its_own_clear_still_yields_to_a_newer_write() {
    let server = RedisServer::start();
    let (proxy, a, b) = partitioned_writer(&server, |b| b, &["k", "j"]).await;
    let (ra, rb) = (
        a.namespace::<str, String>("rate").unwrap(),
        b.namespace::<str, String>("rate").unwrap(),
    );
    ra.invalidate_namespace().await.unwrap();
    ra.set("k", "a, queued first".into()).await.unwrap();
    ra.set("j", "a, alone".into()).await.unwrap();
    rb.set("k", "b, written after".into()).await.unwrap();

    heal(&proxy, &a).await;
    assert_eq!(in_redis::<String>(&server, "rate", "k"), None, "tombstoned");
    eventually("b drops k and reads j", PATIENCE, || async {
        rb.get("k").await.is_none()
            && rb.get("j").await.as_deref().map(String::as_str) == Some("a, alone")
    })
    .await;
}

/// A namespace clear made while Redis is unreachable supersedes the keys queued before it,
/// and is replayed before the keys queued after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_while_down_supersedes_the_keys_queued_before_it() {
    let server = RedisServer::start();
    let (proxy, a, b) = partitioned_writer(&server, |b| b, &["k1", "k2", "k3"]).await;
    let (ra, rb) = (
        a.namespace::<str, String>("rate").unwrap(),
        b.namespace::<str, String>("rate").unwrap(),
    );
    ra.set("k1", "new".into()).await.unwrap();
    ra.set("k2", "new".into()).await.unwrap();
    ra.invalidate_namespace().await.unwrap();
    ra.set("k3", "after".into()).await.unwrap();
    // (Settles once a replay attempt in flight, if any, is put back.)
    eventually(
        "the clear and k3 queued, k1 and k2 superseded",
        PATIENCE,
        || async {
            let s = a.stats();
            s.outbox_entries == 2 && s.namespace("rate").unwrap().outbox_superseded == 2
        },
    )
    .await;

    heal(&proxy, &a).await;
    eventually("b follows the replayed clear and k3", PATIENCE, || async {
        rb.get("k3").await.as_deref().map(String::as_str) == Some("after")
    })
    .await;
    for k in ["k1", "k2"] {
        assert_eq!(rb.get(k).await, None, "{k}: written before the clear");
        assert_eq!(ra.get(k).await, None, "{k}: written before the clear");
    }
    assert_eq!(
        in_redis::<String>(&server, "rate", "k3").as_deref(),
        Some("after")
    );
}

/// The outbox's bounds: a value over the byte budget is queued as an invalidation of its key,
/// and a key that does not fit turns its namespace's queue into one clear. The outbox never
/// holds more than its capacity, and what it gave up still reaches every node as an
/// invalidation: no node serves an old value afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_bound_degrades_to_invalidations_never_to_stale_reads() {
    const CAPACITY: usize = 4;
    let server = RedisServer::start();
    let keys = ["big", "k0", "k1", "k2", "k3", "k4", "untouched"];
    let (proxy, a, b) = partitioned_writer(
        &server,
        |b| b.outbox_capacity(CAPACITY).outbox_max_bytes(64),
        &keys,
    )
    .await;
    let (ra, rb) = (
        a.namespace::<str, String>("rate").unwrap(),
        b.namespace::<str, String>("rate").unwrap(),
    );
    let entries = || a.stats().outbox_entries;
    let dropped = || a.stats().namespace("rate").unwrap().outbox_dropped;

    ra.set("big", "x".repeat(100)).await.unwrap();
    assert_eq!((entries(), dropped()), (1, 1), "over the byte budget");
    for k in ["k0", "k1", "k2"] {
        ra.set(k, "new".into()).await.unwrap();
        assert!(entries() <= CAPACITY);
    }
    assert_eq!(entries(), CAPACITY);
    ra.set("k3", "new".into()).await.unwrap();
    assert!(entries() <= CAPACITY);
    // (A write a replay attempt held at that moment is superseded by the clear when it is
    // put back, rather than folded into it.)
    eventually(
        "full: the namespace's keys folded into one clear",
        PATIENCE,
        || async { entries() == 1 },
    )
    .await;
    // big, k3, and k0..k2 (all three, or two if one was in flight).
    assert!(dropped() >= 4, "given up: {}", dropped());
    ra.set("k4", "newer".into()).await.unwrap();
    assert!(entries() <= 2);

    heal(&proxy, &a).await;
    eventually("b follows the replay", PATIENCE, || async {
        rb.get("k4").await.as_deref().map(String::as_str) == Some("newer")
    })
    .await;
    for k in ["big", "k0", "k1", "k2", "k3", "untouched"] {
        assert_eq!(rb.get(k).await, None, "{k}: b serves an old value");
        assert_eq!(ra.get(k).await, None, "{k}: a serves an old value");
    }
}

/// Strict writes (the builder's option, or a per-handle override) fail with the typed error
/// and queue nothing; a lenient handle on a strict cache queues.
#[tokio::test]
async fn strict_writes_return_the_typed_error_and_queue_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // released at once: nothing listens there
    let cache = builder(&support::url_for_port(port))
        .strict_writes(true)
        .build()
        .unwrap();
    let fees = cache.namespace::<str, u64>("fees").unwrap();
    let e = timed("set", fees.set("k", 1)).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert_eq!(fees.get_local("k"), None);
    let e = timed("invalidate", fees.invalidate("k")).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let e = timed("invalidate_namespace", fees.invalidate_namespace())
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert_eq!(cache.stats().outbox_entries, 0);

    let lenient = fees.with(EntryOptions::new().strict(false)).unwrap();
    timed("set", lenient.set("k", 2)).await.unwrap();
    assert_eq!(cache.stats().outbox_entries, 1);
    assert_eq!(lenient.get_local("k").map(|v| *v), Some(2));
}

/// A tagged write replays a queued clear of its namespace itself before it lands. A caller
/// that gives up during that replay (its own timeout) must not take the clear with it: the
/// clear goes back in the queue, is replayed once Redis answers, and the other node evicts
/// the value it was issued against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_while_replaying_a_queued_clear_leaves_it_queued() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    // Calls hang for a long timeout and never open the breaker, and the replayer's own retry
    // waits a minute: the only replay of the clear while the link hangs is the caller's.
    let a = builder(&proxy.url())
        .l2_timeout(Duration::from_millis(1500))
        .breaker_threshold(1000)
        .breaker_cooldown(Duration::from_secs(60))
        .outbox_retry(Duration::from_secs(60))
        .subscriber_backoff(Duration::from_secs(60))
        .build()
        .unwrap();
    let b = builder(&server.url()).build().unwrap();
    subscribed(&a).await;
    subscribed(&b).await;
    let (ra, rb) = (
        a.namespace::<str, u64>("fees").unwrap(),
        b.namespace::<str, u64>("fees").unwrap(),
    );
    ra.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("x", 1)
        .await
        .unwrap();
    await_applied(&b, "fees", 1).await;
    assert_eq!(rb.get("x").await.map(|v| *v), Some(1));

    proxy.set(Fault::Swallow, Target::Data);
    let errors = |c: &TieredCache| c.stats().namespace("fees").unwrap().l2_errors;
    assert_eq!(
        ra.invalidate_tag("T").await.unwrap(),
        0,
        "queued as a clear"
    );
    assert_eq!(a.stats().outbox_entries, 1);
    // The replayer tries the clear once at once (it was just queued) and fails: wait for
    // that, so the caller below finds the clear in the queue, not in the replayer's hands.
    eventually("the replayer's first try failed", PATIENCE, || async {
        errors(&a) >= 2
    })
    .await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        ra.with(EntryOptions::new().tags(["U"]))
            .unwrap()
            .set("w", 5),
    )
    .await;
    assert!(gave_up.is_err(), "the caller was to give up mid-replay");
    assert_eq!(a.stats().outbox_entries, 1, "the clear is still queued");

    proxy.heal();
    proxy.reset();
    // Wakes the replayer, which lands the clear and then this write.
    ra.set("z", 3).await.unwrap();
    eventually("a's outbox drains", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
    eventually("b evicts x on the replayed clear", PATIENCE, || async {
        rb.get_local("x").is_none()
    })
    .await;
    assert_eq!(rb.get("x").await, None, "x's old value survived the clear");
    assert_eq!(rb.get("z").await.map(|v| *v), Some(3));
}
