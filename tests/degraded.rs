//! Redis unreachable at start-up, hung, or killed mid-test: callers keep getting answers from
//! L1 and their loaders, within bounded time; when Redis returns, the cache rejoins by itself.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, node, RedisServer, PATIENCE};
use tiered_cache::{EntryOptions, NamespacePolicy, TieredCache};

/// "Never hangs": a generous bound, far above the configured timeouts, not a speed claim.
const NO_HANG: Duration = Duration::from_secs(5);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(NO_HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

fn cache_at(url: String) -> TieredCache {
    TieredCache::builder()
        .redis_url(url)
        // Strict (the default): L1 is bypassed while the bus cannot vouch for it.
        .namespace("rate", NamespacePolicy::new(Duration::from_secs(90)))
        // Availability first: L1 keeps serving without Redis.
        .namespace(
            "fees",
            NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness(),
        )
        .l2_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(300))
        .breaker_cooldown(Duration::from_millis(100))
        .outbox_retry(Duration::from_millis(100))
        .subscriber_backoff(Duration::from_millis(100))
        .heartbeat(Duration::from_millis(50))
        .build()
        .expect("building does not need Redis")
}

/// Calls `get_or_load` five times and returns how often the loader ran.
async fn load_five_times(ns: &tiered_cache::Namespace<str, f64>) -> usize {
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..5 {
        let c = calls.clone();
        let load = ns.get_or_load("USD:EUR", || async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(0.92)
        });
        assert_eq!(*bounded("get_or_load", load).await.unwrap(), 0.92);
    }
    calls.load(Ordering::SeqCst)
}

async fn serves_without_redis(cache: &TieredCache) {
    let rates = cache.namespace::<str, f64>("rate").unwrap();
    let fees = cache.namespace::<str, f64>("fees").unwrap();
    // Strict: no bus, no L1; every call is answered by the loader.
    assert_eq!(load_five_times(&rates).await, 5);
    assert_eq!(rates.get_local("USD:EUR"), None);
    assert!(cache.stats().namespace("rate").unwrap().l1_bypasses >= 5);
    // Availability first: loaded once, then served from L1.
    assert_eq!(load_five_times(&fees).await, 1);
    assert!(fees.get_local("USD:EUR").is_some());

    assert_eq!(bounded("get", rates.get("other")).await, None);
    // Writes degrade rather than fail: queued in the outbox, replayed once Redis is back.
    bounded("set", fees.set("USD:EUR", 0.93)).await.unwrap();
    assert_eq!(
        fees.get_local("USD:EUR").map(|v| *v),
        Some(0.93),
        "availability first: this node reads its own queued write"
    );
    bounded("invalidate", rates.invalidate("USD:EUR"))
        .await
        .unwrap();
    assert_eq!(cache.stats().outbox_entries, 2);
    // Strict writes fail instead, and leave no local copy.
    let e = bounded(
        "set",
        fees.with(EntryOptions::new().strict(true))
            .unwrap()
            .set("USD:EUR", 0.94),
    )
    .await
    .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert_eq!(
        fees.get_local("USD:EUR"),
        None,
        "an unpropagated write leaves no local copy"
    );
    let e = bounded(
        "invalidate",
        rates
            .with(EntryOptions::new().strict(true))
            .unwrap()
            .invalidate("USD:EUR"),
    )
    .await
    .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let h = bounded("health", cache.health()).await;
    assert!(!h.redis_reachable && !h.subscribed, "{h:?}");
    assert_ne!(h.breaker, tiered_cache::BreakerState::Closed, "{h:?}");
    assert_eq!(
        h.outbox_entries, 2,
        "strict calls leave the outbox as it was"
    );
    assert_eq!(h.bypassing, vec!["rate".to_string()]);
    assert!(cache.stats().namespace("rate").unwrap().l2_errors > 0);
}

#[tokio::test]
async fn nothing_listening_at_start_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // released at once: nothing listens there
    serves_without_redis(&cache_at(support::url_for_port(port))).await;
}

#[tokio::test]
async fn a_hung_server_at_start_up() {
    // Accepts connections (the kernel completes the handshake) but never answers a byte.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = support::url_for_port(hung.local_addr().unwrap().port());
    serves_without_redis(&cache_at(url)).await;
    drop(hung);
}

#[tokio::test]
async fn redis_killed_mid_test_then_restarted() {
    let mut server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let (ra, rb) = (
        a.namespace::<str, f64>("rate").unwrap(),
        b.namespace::<str, f64>("rate").unwrap(),
    );
    ra.set("USD:EUR", 0.92).await.unwrap();
    support::await_applied(&b, "rate", 1).await;
    assert_eq!(rb.get("USD:EUR").await.map(|v| *v), Some(0.92));
    assert!(rb.get_local("USD:EUR").is_some());

    server.kill();
    eventually("both subscribers notice", PATIENCE, || async {
        !a.is_subscribed() && !b.is_subscribed()
    })
    .await;
    eventually(
        "b bypasses L1 within its staleness bound",
        PATIENCE,
        || async { b.health().await.bypassing == vec!["rate".to_string(), "quote".to_string()] },
    )
    .await;
    // Reads keep being answered, never from a copy the bus can no longer vouch for: with
    // neither L1 nor L2, `get` misses and `get_or_load` loads.
    assert_eq!(bounded("get", rb.get("USD:EUR")).await, None);
    let v = bounded(
        "load",
        rb.get_or_load("USD:GBP", || async { Ok::<_, std::io::Error>(0.79) }),
    )
    .await
    .unwrap();
    assert_eq!(*v, 0.79);
    assert!(bounded(
        "set",
        ra.with(EntryOptions::new().strict(true))
            .unwrap()
            .set("USD:EUR", 0.95)
    )
    .await
    .unwrap_err()
    .is_unavailable());

    server.restart();
    eventually(
        "both resubscribe without any application call",
        PATIENCE,
        || async { a.is_subscribed() && b.is_subscribed() },
    )
    .await;
    // L1 was emptied on resubscription: nothing learned before the outage is trusted.
    assert_eq!(rb.get_local("USD:EUR"), None);
    assert_eq!(rb.get_local("USD:GBP"), None);
    // The fleet is coherent again, with versions starting over on the empty server.
    ra.set("USD:EUR", 0.96).await.unwrap();
    assert_eq!(rb.get("USD:EUR").await.map(|v| *v), Some(0.96));
    ra.set("USD:EUR", 0.97).await.unwrap();
    eventually("b follows the next write", PATIENCE, || async {
        rb.get_local("USD:EUR").is_none_or(|v| *v == 0.97)
    })
    .await;
    assert_eq!(rb.get("USD:EUR").await.map(|v| *v), Some(0.97));
}

#[tokio::test]
async fn a_namespace_cleared_before_a_restart_serves_new_writes_after_it() {
    let mut server = RedisServer::start();
    let a = node(&server).await;
    let ra = a.namespace::<str, f64>("rate").unwrap();
    for i in 0..10 {
        ra.set(&format!("k{i}"), 1.0).await.unwrap();
    }
    ra.invalidate_namespace().await.unwrap(); // a's floor is now 11
    server.restart(); // the empty server counts versions from 1 again
    eventually("resubscribed to the new server", PATIENCE, || async {
        a.stats().bus_subscriptions >= 2 && a.is_subscribed()
    })
    .await;

    // Another node writes after the restart, with versions below a's old floor.
    let b = node(&server).await;
    let rb = b.namespace::<str, f64>("rate").unwrap();
    for i in 0..3 {
        rb.set(&format!("new{i}"), 2.0).await.unwrap();
    }
    // a reads them through Redis: they are live, not hidden by the floor of a lost past.
    for i in 0..3 {
        assert_eq!(
            ra.get(&format!("new{i}")).await.map(|v| *v),
            Some(2.0),
            "new{i}"
        );
    }
}
