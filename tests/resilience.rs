//! The read path's resilience policies against a real Redis: fail-safe, loader timeouts,
//! refresh-ahead, TTL jitter, negative caching and the fleet-wide load lock.

mod support;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::{await_applied, eventually, keys, RedisServer, PATIENCE};
use tiered_cache::{Namespace, NamespacePolicy, TieredCache};
use tokio::sync::Semaphore;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// A node with one namespace, `px`, under `policy`, with the staleness bound
/// [`LOOSE_BOUND`](support::LOOSE_BOUND): none of these tests is about the bound, and they
/// assert what L1 holds, hits and misses, which a loaded machine stalling the heartbeat past
/// the default 250 ms would change (L1 bypassed, correctly) for a reason they do not test.
async fn node(server: &RedisServer, policy: NamespacePolicy) -> TieredCache {
    let policy = policy.staleness_bound(support::LOOSE_BOUND);
    support::node_with(server, |b| b.namespace("px", policy)).await
}

fn px(cache: &TieredCache) -> Namespace<str, u64> {
    cache.namespace::<str, u64>("px").unwrap()
}

fn stats(cache: &TieredCache) -> tiered_cache::NamespaceStats {
    *cache.stats().namespace("px").unwrap()
}

/// A loader that counts its calls and answers `value`, or fails when `value` is `None`.
fn loader(
    calls: &Arc<AtomicU64>,
    value: Option<u64>,
) -> impl FnOnce() -> std::future::Ready<Result<u64, std::io::Error>> + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, SeqCst);
        std::future::ready(value.ok_or_else(|| std::io::Error::other("source down")))
    }
}

/// Waits until `key`'s value is past its freshness in L1 (fail-safe keeps it, unserved) and
/// in Redis. Both hold the same expiry, but L1 turns it into a local deadline at millisecond
/// grain and may let the value go a millisecond before Redis's copy, judged by the wall
/// clock, is: a read just then rightly finds it fresh in Redis. The 20 ms after L1's verdict
/// wait for a known point of the clock, not for the machine to be quick.
async fn until_stale(ns: &Namespace<str, u64>, key: &str) {
    eventually("value past its TTL", PATIENCE, || async {
        ns.get_local(key).is_none()
    })
    .await;
    tokio::time::sleep(MS(20)).await;
}

/// The throttle is long enough that it cannot run out between two lines of a test on a loaded
/// machine; a test that waits for it to end does so with `eventually`.
fn fail_safe_policy() -> NamespacePolicy {
    NamespacePolicy::new(MS(300))
        .fail_safe(Duration::from_secs(30))
        .fail_safe_throttle(Duration::from_secs(2))
}

#[tokio::test]
async fn fail_safe_serves_the_expired_value_while_the_loader_is_down_then_recovers() {
    let server = RedisServer::start();
    let a = node(&server, fail_safe_policy()).await;
    let b = node(&server, fail_safe_policy()).await;
    let (na, nb) = (px(&a), px(&b));
    let calls = Arc::new(AtomicU64::new(0));
    assert_eq!(
        *na.get_or_load("k", loader(&calls, Some(1))).await.unwrap(),
        1
    );
    until_stale(&na, "k").await;

    // The source is down: node a serves its L1 copy, node b (empty L1) the copy Redis keeps.
    assert_eq!(*na.get_or_load("k", loader(&calls, None)).await.unwrap(), 1);
    assert_eq!(*nb.get_or_load("k", loader(&calls, None)).await.unwrap(), 1);
    assert_eq!(stats(&a).stale_served, 1);
    assert_eq!(stats(&b).stale_served, 1);
    let before = calls.load(SeqCst);
    // Throttled: the failing source is not asked again at once.
    assert_eq!(*na.get_or_load("k", loader(&calls, None)).await.unwrap(), 1);
    assert_eq!(calls.load(SeqCst), before);

    // Once the throttle is over and the source is back, the new value replaces the stale one.
    eventually(
        "source asked again and new value served",
        PATIENCE,
        || async { *na.get_or_load("k", loader(&calls, Some(2))).await.unwrap() == 2 },
    )
    .await;
}

#[tokio::test]
async fn without_fail_safe_a_loader_error_surfaces() {
    let server = RedisServer::start();
    let a = node(&server, NamespacePolicy::new(MS(300))).await;
    let na = px(&a);
    let calls = Arc::new(AtomicU64::new(0));
    na.get_or_load("k", loader(&calls, Some(1))).await.unwrap();
    until_stale(&na, "k").await;
    let e = na.get_or_load("k", loader(&calls, None)).await.unwrap_err();
    assert!(e.is_loader(), "{e}");
}

#[tokio::test]
async fn fail_safe_never_serves_an_invalidated_value() {
    let server = RedisServer::start();
    let a = node(&server, fail_safe_policy()).await;
    let b = node(&server, fail_safe_policy()).await;
    let (na, nb) = (px(&a), px(&b));
    let calls = Arc::new(AtomicU64::new(0));
    na.get_or_load("k", loader(&calls, Some(1))).await.unwrap();
    nb.get_or_load("k", loader(&calls, Some(1))).await.unwrap();
    until_stale(&nb, "k").await;
    na.invalidate("k").await.unwrap();
    await_applied(&b, "px", 1).await;
    // Both L1 copies and the Redis copy are gone: nothing stale is left to serve.
    for ns in [&na, &nb] {
        let e = ns.get_or_load("k", loader(&calls, None)).await.unwrap_err();
        assert!(e.is_loader(), "{e}");
    }
    assert_eq!(stats(&a).stale_served + stats(&b).stale_served, 0);
}

#[tokio::test]
async fn a_soft_timeout_serves_stale_and_the_load_finishes_in_the_background() {
    let server = RedisServer::start();
    let policy = fail_safe_policy()
        .soft_timeout(MS(50))
        .hard_timeout(Duration::from_secs(30));
    let a = node(&server, policy).await;
    let na = px(&a);
    let calls = Arc::new(AtomicU64::new(0));
    na.get_or_load("k", loader(&calls, Some(1))).await.unwrap();
    until_stale(&na, "k").await;

    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let slow = move || async move {
        g.acquire().await.unwrap().forget();
        Ok::<_, std::io::Error>(2u64)
    };
    // The loader is held at the gate: only the soft timeout can answer this call.
    let v = tokio::time::timeout(PATIENCE, na.get_or_load("k", slow))
        .await
        .expect("answered at the soft timeout")
        .unwrap();
    assert_eq!(*v, 1);
    assert_eq!(stats(&a).loader_timeouts, 1);
    // Node b is ready before the load finishes: it reads Redis right after.
    let b = node(&server, fail_safe_policy()).await;
    gate.add_permits(1);
    eventually("the background load finished", PATIENCE, || async {
        let s = stats(&a);
        s.loads == 2 && s.fills_stored == 2
    })
    .await;
    // Both read with a failing loader: fresh or (past the 300 ms TTL on a loaded machine)
    // served stale by fail-safe, the value each finds is what the background load stored,
    // never the first one.
    let now = |ns: Namespace<str, u64>| async move {
        *ns.get_or_load("k", loader(&Arc::new(AtomicU64::new(0)), None))
            .await
            .unwrap()
    };
    assert_eq!(now(na).await, 2, "the background load updated L1");
    assert_eq!(now(px(&b)).await, 2, "and Redis");
}

#[tokio::test]
async fn a_hard_timeout_gives_up_with_a_typed_error() {
    let server = RedisServer::start();
    let a = node(&server, NamespacePolicy::new(MS(300)).hard_timeout(MS(100))).await;
    let never = || std::future::pending::<Result<u64, std::io::Error>>();
    let e = tokio::time::timeout(PATIENCE, px(&a).get_or_load("k", never))
        .await
        .expect("the hard timeout answers")
        .unwrap_err();
    assert!(
        matches!(e, tiered_cache::Error::LoaderTimeout(t) if t == MS(100)),
        "{e}"
    );
    assert!(e.is_loader());
    assert_eq!(stats(&a).loader_timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_keeps_a_hot_key_from_ever_missing() {
    let server = RedisServer::start();
    // A read must fall in the second half of each value's life (900 ms wide) to refresh it
    // before it expires: wide enough for a loaded machine's scheduling gaps.
    let ttl = MS(1800);
    let a = node(&server, NamespacePolicy::new(ttl).refresh_ahead(0.5)).await;
    let na = px(&a);
    let calls = Arc::new(AtomicU64::new(0));
    let next = |calls: &Arc<AtomicU64>| {
        let calls = calls.clone();
        move || async move { Ok::<_, std::io::Error>(calls.fetch_add(1, SeqCst) + 1) }
    };
    // Reads until three refreshes have been started and two of their values seen (about 1.5
    // TTLs), so through more than one expiry the key would have had without them.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut seen = std::collections::BTreeSet::new();
    while stats(&a).refreshes < 3 || seen.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no refreshes: {:?}",
            stats(&a)
        );
        seen.insert(*na.get_or_load("hot", next(&calls)).await.unwrap());
        tokio::time::sleep(MS(5)).await;
    }
    let s = stats(&a);
    assert_eq!(s.l1_misses, 1, "only the very first read missed: {s:?}");
    assert!(s.refreshes >= 3, "refreshed along the way: {s:?}");
    assert!(
        seen.len() >= 3,
        "callers saw the refreshed values: {seen:?}"
    );
}

#[tokio::test]
async fn ttl_jitter_spreads_expiry_without_exceeding_the_ttl() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(20);
    let a = node(
        &server,
        NamespacePolicy::new(ttl).ttl_jitter(Duration::from_secs(8)),
    )
    .await;
    let na = px(&a);
    let mut ttls = Vec::new();
    for i in 0..100u64 {
        let key = format!("k{i}");
        na.set(&key, i).await.unwrap();
        let ms: i64 = server.cmd(&[b"PTTL", keys::value("px", &key).as_bytes()]);
        ttls.push(ms);
    }
    let (min, max) = (*ttls.iter().min().unwrap(), *ttls.iter().max().unwrap());
    assert!(
        max <= 20_000 && min >= 11_000,
        "within [ttl - jitter, ttl]: {min}..{max}"
    );
    assert!(max - min > 4_000, "spread out: {min}..{max}");
}

#[tokio::test]
async fn not_found_is_cached_briefly_and_a_write_replaces_it_everywhere() {
    let server = RedisServer::start();
    let policy =
        || NamespacePolicy::new(Duration::from_secs(60)).negative_ttl(Duration::from_secs(2));
    let a = node(&server, policy()).await;
    let b = node(&server, policy()).await;
    let (na, nb) = (px(&a), px(&b));
    let calls = Arc::new(AtomicU64::new(0));
    let absent = |calls: &Arc<AtomicU64>| {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, SeqCst);
            Ok::<Option<u64>, std::io::Error>(None)
        }
    };
    assert!(na
        .get_or_load_optional("ghost", absent(&calls))
        .await
        .unwrap()
        .is_none());
    assert!(na
        .get_or_load_optional("ghost", absent(&calls))
        .await
        .unwrap()
        .is_none());
    // Node b finds the "not found" in Redis.
    assert!(nb
        .get_or_load_optional("ghost", absent(&calls))
        .await
        .unwrap()
        .is_none());
    assert_eq!(calls.load(SeqCst), 1);
    let e = nb
        .get_or_load("ghost", loader(&calls, Some(9)))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");

    // A write replaces the negative entry on every node.
    na.set("ghost", 5).await.unwrap();
    await_applied(&b, "px", 1).await;
    assert_eq!(nb.get("ghost").await.map(|v| *v), Some(5));

    // And a "not found" lives only its negative TTL.
    assert!(na
        .get_or_load_optional("gone", absent(&calls))
        .await
        .unwrap()
        .is_none());
    let before = calls.load(SeqCst);
    eventually("the negative entry expired", PATIENCE, || async {
        na.get_or_load_optional("gone", absent(&calls))
            .await
            .unwrap();
        calls.load(SeqCst) > before
    })
    .await;
}

/// `nodes` nodes, `per_node` concurrent callers each, one loader shared by all and held at a
/// gate until `started` loads have begun, then for `hold` more: how many times it ran on each
/// node.
async fn fleet_stampede(
    policy: NamespacePolicy,
    nodes: usize,
    per_node: usize,
    started: u64,
    hold: Duration,
) -> Vec<u64> {
    let server = RedisServer::start();
    let mut caches = Vec::new();
    for _ in 0..nodes {
        caches.push(node(&server, policy.clone()).await);
    }
    let calls = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let mut tasks = Vec::new();
    for cache in &caches {
        for _ in 0..per_node {
            let (ns, calls, gate) = (px(cache), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                ns.get_or_load("hot", move || async move {
                    calls.fetch_add(1, SeqCst);
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, std::io::Error>(7)
                })
                .await
            }));
        }
    }
    eventually(&format!("{started} loads started"), PATIENCE, || async {
        calls.load(SeqCst) >= started
    })
    .await;
    tokio::time::sleep(hold).await;
    gate.add_permits(Semaphore::MAX_PERMITS);
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap(), 7);
    }
    assert_eq!(
        calls.load(SeqCst),
        caches.iter().map(|c| stats(c).loads).sum::<u64>()
    );
    caches.iter().map(|c| stats(c).loads).collect()
}

/// No load finishes before every node has started its own, so none can find another's fill in
/// Redis: each node loads exactly once, however late its callers are scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_four_nodes_load_once_per_node_without_the_lock() {
    let policy = NamespacePolicy::new(Duration::from_secs(60));
    assert_eq!(
        fleet_stampede(policy, 4, 250, 4, Duration::ZERO).await,
        [1, 1, 1, 1]
    );
}

/// The first load is held 300 ms while the other nodes' callers arrive and find the lock taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_four_nodes_load_once_with_the_fleet_lock() {
    let policy =
        NamespacePolicy::new(Duration::from_secs(60)).fleet_single_flight(Duration::from_secs(5));
    let loads = fleet_stampede(policy, 4, 250, 1, MS(300)).await;
    assert_eq!(loads.iter().sum::<u64>(), 1, "{loads:?}");
}

/// A loader that counts its start, waits at `gate`, then answers `value` (or fails on `None`).
fn gated(
    started: &Arc<AtomicU64>,
    gate: &Arc<Semaphore>,
    value: Option<u64>,
) -> impl FnOnce() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<u64, std::io::Error>> + Send>,
> + Send
       + 'static {
    let (started, gate) = (started.clone(), gate.clone());
    move || {
        Box::pin(async move {
            started.fetch_add(1, SeqCst);
            gate.acquire().await.unwrap().forget();
            value.ok_or_else(|| std::io::Error::other("source down"))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_does_not_serve_a_value_invalidated_while_its_loader_ran() {
    let server = RedisServer::start();
    let a = node(&server, fail_safe_policy()).await;
    let b = node(&server, fail_safe_policy()).await;
    let (na, nb) = (px(&a), px(&b));
    let calls = Arc::new(AtomicU64::new(0));
    na.get_or_load("k", loader(&calls, Some(1))).await.unwrap();
    until_stale(&na, "k").await;

    let (started, gate) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
    let load = {
        let (na, f) = (na.clone(), gated(&started, &gate, None));
        tokio::spawn(async move { na.get_or_load("k", f).await })
    };
    eventually("loader running", PATIENCE, || async {
        started.load(SeqCst) == 1
    })
    .await;
    nb.invalidate("k").await.unwrap();
    await_applied(&a, "px", 1).await;
    gate.add_permits(1);
    let e = load.await.unwrap().unwrap_err();
    assert!(e.is_loader(), "the error, not the invalidated value: {e}");
    assert!(na.get_local("k").is_none());
    assert_eq!(stats(&a).stale_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_started_before_a_write_is_not_shared_with_later_callers() {
    let server = RedisServer::start();
    let policy = || NamespacePolicy::new(Duration::from_secs(60));
    let a = node(&server, policy()).await;
    let b = node(&server, policy()).await;
    let (na, nb) = (px(&a), px(&b));
    let (started, gate) = (Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
    let first = {
        let (na, f) = (na.clone(), gated(&started, &gate, Some(1)));
        tokio::spawn(async move { na.get_or_load("k", f).await })
    };
    eventually("first load running", PATIENCE, || async {
        started.load(SeqCst) == 1
    })
    .await;
    nb.set("k", 2).await.unwrap();
    await_applied(&a, "px", 1).await;

    // Asked after the write: must not wait for, or get, the load that read the source before.
    let calls = Arc::new(AtomicU64::new(0));
    let later = tokio::time::timeout(PATIENCE, na.get_or_load("k", loader(&calls, Some(3))))
        .await
        .expect("not held behind the older load")
        .unwrap();
    assert_eq!(*later, 2);
    gate.add_permits(1);
    assert_eq!(*first.await.unwrap().unwrap(), 1, "asked before the write");
    assert_ne!(na.get_local("k").map(|v| *v), Some(1), "and not cached");
}

/// Short loads racing on many keys across nodes: a node that sees the lock go away, or takes a
/// lock its previous holder has just released, finds the fill in Redis instead of loading
/// again. Each key loads exactly once in the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_loads_racing_on_many_keys_load_each_key_once_in_the_fleet() {
    const KEYS: usize = 200;
    let server = RedisServer::start();
    let policy =
        NamespacePolicy::new(Duration::from_secs(60)).fleet_single_flight(Duration::from_secs(5));
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(node(&server, policy.clone()).await);
    }
    let calls: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for (n, cache) in caches.iter().enumerate() {
        let (ns, calls) = (px(cache), calls.clone());
        tasks.push(tokio::spawn(async move {
            // Each node walks the keys from its own starting point, so they meet mid-load.
            for i in (0..KEYS).map(|i| (i + n * 7) % KEYS) {
                let calls = calls.clone();
                let got = ns
                    .get_or_load(&format!("k{i}"), move || async move {
                        calls[i].fetch_add(1, SeqCst);
                        tokio::time::sleep(MS(1)).await;
                        Ok::<_, std::io::Error>(i as u64)
                    })
                    .await
                    .unwrap();
                assert_eq!(*got, i as u64);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let twice: Vec<usize> = (0..KEYS).filter(|&i| calls[i].load(SeqCst) != 1).collect();
    assert!(twice.is_empty(), "keys loaded other than once: {twice:?}");
}

/// A holder whose unlock never comes (it crashed between its fill and its unlock, or the
/// unlock timed out) still serves the waiters: they find its value in Redis while the lock
/// stands, long before it expires, and run no load of their own.
#[tokio::test]
async fn waiters_take_the_holders_value_even_if_its_unlock_never_comes() {
    let server = RedisServer::start();
    let lock_ttl = Duration::from_secs(60);
    let policy = NamespacePolicy::new(Duration::from_secs(60)).fleet_single_flight(lock_ttl);
    let (a, b) = (
        node(&server, policy.clone()).await,
        node(&server, policy).await,
    );
    // A lock held by a node that will never release it.
    let lock = keys::lock("px", "hot");
    let _: String = server.cmd(&[b"SET", lock.as_bytes(), b"1", b"PX", b"60000"]);
    let calls = Arc::new(AtomicU64::new(0));
    let waiter = {
        let (na, calls) = (px(&a), calls.clone());
        tokio::spawn(async move { na.get_or_load("hot", loader(&calls, Some(1))).await })
    };
    eventually("a is waiting on the lock", PATIENCE, || async {
        stats(&a).l1_misses == 1
    })
    .await;
    // The holder's value lands (here written by another node); its unlock does not.
    px(&b).set("hot", 7).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("still waiting for a lock that outlives the value")
        .unwrap()
        .unwrap();
    assert_eq!(*got, 7);
    assert_eq!(calls.load(SeqCst), 0, "the waiter loaded anyway");
    assert_eq!(stats(&a).fleet_lock_waits, 1);
}
