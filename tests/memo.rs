//! Memoized functions and sliding expiry against a real Redis: a memoized function runs once
//! for a key across nodes (single flight, then Redis), its errors are not cached; a touched
//! session outlives its TTL in Redis and on another node, an untouched one expires, a touch
//! never revives a dead value, and a write racing touches is not lost.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{await_applied, envelope, eventually, keys, node_with, RedisServer, PATIENCE};
use tiered_cache::{NamespacePolicy, TieredCache};

/// Session TTL: short, so the test can outlive it several times over.
const SESSION_TTL: Duration = Duration::from_millis(1500);

/// A policy whose L1 a loaded machine does not switch off (see `support::LOOSE_BOUND`).
fn loose(ttl: Duration) -> NamespacePolicy {
    NamespacePolicy::new(ttl).staleness_bound(support::LOOSE_BOUND)
}

async fn memo_node(server: &RedisServer) -> TieredCache {
    node_with(server, |b| {
        b.namespace("price", loose(Duration::from_secs(60)))
            .namespace("session", loose(SESSION_TTL))
    })
    .await
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    server.cmd(&[b"PTTL", keys::value("session", key).as_bytes()])
}

#[tokio::test]
async fn memoized_function_runs_once_per_key_across_nodes() {
    let server = RedisServer::start();
    let (a, b) = (memo_node(&server).await, memo_node(&server).await);
    let calls = Arc::new(AtomicUsize::new(0));
    // The function holds here until the test lets it finish (one permit per call).
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let memo = |cache: &TieredCache| {
        let (calls, gate) = (calls.clone(), gate.clone());
        cache
            .memoize::<String, u64, _, _, _>("price", move |sym: String| {
                let (calls, gate) = (calls.clone(), gate.clone());
                async move {
                    calls.fetch_add(1, SeqCst);
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, std::io::Error>(sym.len() as u64 * 100)
                }
            })
            .unwrap()
    };
    let (on_a, on_b) = (memo(&a), memo(&b));
    let key = "AAPL".to_string();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let m = on_a.clone();
            let k = key.clone();
            tokio::spawn(async move { *m.get(&k).await.unwrap() })
        })
        .collect();
    // Every caller is in before the call may finish: one leads, seven wait on its flight.
    eventually(
        "seven callers join the first one's call",
        PATIENCE,
        || async { a.stats().namespace("price").unwrap().coalesced_loads == 7 },
    )
    .await;
    gate.add_permits(1);
    for w in waiters {
        assert_eq!(w.await.unwrap(), 400);
    }
    assert_eq!(calls.load(SeqCst), 1, "eight concurrent callers, one call");
    // From here on every call may finish at once.
    gate.add_permits(usize::MAX >> 4);
    // Node B finds it in Redis: no second call.
    assert_eq!(*on_b.get(&key).await.unwrap(), 400);
    assert_eq!(calls.load(SeqCst), 1, "node B called the function again");
    assert_eq!(b.stats().namespace("price").unwrap().l2_hits, 1);
    // Another key is another call.
    assert_eq!(*on_b.get(&"MSFT".to_string()).await.unwrap(), 400);
    assert_eq!(calls.load(SeqCst), 2);
    // An invalidation through the namespace makes the next read call again.
    on_a.namespace().invalidate(&key).await.unwrap();
    // B still holds the key in L1 until the message lands (the first in `price`: fills
    // publish nothing).
    await_applied(&b, "price", 1).await;
    assert_eq!(*on_b.get(&key).await.unwrap(), 400);
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test]
async fn memoized_errors_are_returned_not_cached() {
    let server = RedisServer::start();
    let a = memo_node(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let memo = a
        .memoize::<String, u64, _, _, _>("price", move |_sym: String| {
            let n = c.fetch_add(1, SeqCst);
            async move {
                if n == 0 {
                    Err(std::io::Error::other("source down"))
                } else {
                    Ok(7)
                }
            }
        })
        .unwrap();
    let err = memo.get(&"X".to_string()).await.unwrap_err();
    assert!(err.is_loader(), "{err:?}");
    assert_eq!(*memo.get(&"X".to_string()).await.unwrap(), 7);
    assert_eq!(*memo.get(&"X".to_string()).await.unwrap(), 7);
    assert_eq!(
        calls.load(SeqCst),
        2,
        "the error was cached, or the value was not"
    );
    // A namespace of other types cannot be memoized into.
    assert!(a
        .memoize::<String, String, _, _, _>("price", |s: String| async move {
            Ok::<_, std::io::Error>(s)
        })
        .is_err());
}

#[tokio::test]
async fn touched_session_outlives_its_ttl_untouched_one_expires() {
    let server = RedisServer::start();
    let (a, b) = (memo_node(&server).await, memo_node(&server).await);
    let sa = a.namespace::<str, String>("session").unwrap();
    let sb = b.namespace::<str, String>("session").unwrap();
    let start = Instant::now();
    sa.set("kept", "user_1".into()).await.unwrap();
    sa.set("idle", "user_2".into()).await.unwrap();
    // Node B holds both in L1, with the original expiry.
    assert_eq!(sb.get("kept").await.as_deref().unwrap(), "user_1");
    assert_eq!(sb.get("idle").await.as_deref().unwrap(), "user_2");

    // Use the session on A every 200 ms for twice its TTL.
    let mut grew = 0;
    while start.elapsed() < SESSION_TTL * 2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = pttl(&server, "kept");
        assert_eq!(sa.get_and_touch("kept").await.as_deref().unwrap(), "user_1");
        let after = pttl(&server, "kept");
        assert!(after > before, "PTTL did not grow: {before} -> {after}");
        grew += 1;
    }
    assert!(grew >= 5);
    // Past the original TTL: alive in Redis, and on B (whose L1 copy expired at the old time
    // and re-read Redis).
    assert!(pttl(&server, "kept") > 0);
    assert_eq!(sb.get("kept").await.as_deref(), Some(&"user_1".to_string()));
    // The untouched one is gone everywhere.
    assert_eq!(
        pttl(&server, "idle"),
        -2,
        "the idle session is still in Redis"
    );
    assert!(sb.get("idle").await.is_none());
    assert!(sa.get("idle").await.is_none());
    // A dead session is not revived by a touch.
    assert!(!sa.touch("idle").await.unwrap());
    assert!(sa.get_and_touch("idle").await.is_none());
    assert!(!sa.touch("never").await.unwrap());
}

#[tokio::test]
async fn touch_refuses_invalidated_and_keeps_a_racing_write() {
    let server = RedisServer::start();
    let (a, b) = (memo_node(&server).await, memo_node(&server).await);
    let sa = a.namespace::<str, String>("session").unwrap();
    let sb = b.namespace::<str, String>("session").unwrap();
    sa.set("s", "v0".into()).await.unwrap();
    assert!(sa.touch("s").await.unwrap());
    sb.invalidate("s").await.unwrap();
    assert!(!sa.touch("s").await.unwrap(), "a tombstone was touched");

    // A touches continuously while B writes: every write survives, the last one everywhere.
    sb.set("s", "w0".into()).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let (sa, stop) = (sa.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(SeqCst) {
                let _ = sa.get_and_touch("s").await;
                let _ = sa.touch("s").await;
                n += 1;
            }
            n
        })
    };
    const WRITES: usize = 50;
    for i in 1..=WRITES {
        sb.set("s", format!("w{i}")).await.unwrap();
        tokio::task::yield_now().await;
    }
    stop.store(true, SeqCst);
    assert!(toucher.await.unwrap() > 0);
    let last = format!("w{WRITES}");
    let raw: Vec<u8> = server.cmd(&[b"GET", keys::value("session", "s").as_bytes()]);
    assert!(
        raw.windows(last.len()).any(|w| w == last.as_bytes()),
        "Redis does not hold the last write"
    );
    await_applied(&a, "session", WRITES as u64 + 2).await;
    let sa2 = sa.clone();
    eventually("A reads the last write", PATIENCE, || {
        let sa = sa2.clone();
        let last = last.clone();
        async move { sa.get("s").await.as_deref() == Some(&last) }
    })
    .await;
    assert_eq!(sb.get("s").await.as_deref(), Some(&last));
    // The last write is still touchable: its version is the live one.
    assert!(sa.touch("s").await.unwrap());
}

/// What Redis holds for a session key, and its PTTL.
fn raw(server: &RedisServer, ns: &str, key: &str) -> (Vec<u8>, i64) {
    let k = keys::value(ns, key);
    (
        server.cmd(&[b"GET", k.as_bytes()]),
        server.cmd(&[b"PTTL", k.as_bytes()]),
    )
}

#[tokio::test]
async fn touch_refuses_what_is_not_a_live_value_and_leaves_it_untouched() {
    let server = RedisServer::start();
    let a = node_with(&server, |b| {
        b.namespace("session", NamespacePolicy::new(SESSION_TTL))
            .namespace(
                "safe",
                NamespacePolicy::new(Duration::from_millis(300)).fail_safe(Duration::from_secs(60)),
            )
    })
    .await;
    let sessions = a.namespace::<str, String>("session").unwrap();
    let safe = a.namespace::<str, String>("safe").unwrap();
    // Refused, with the bytes and the (shrinking) TTL left as they were.
    let refused = |ns: &'static str, key: &'static str| {
        let (sessions, safe, server) = (sessions.clone(), safe.clone(), &server);
        async move {
            let before = raw(server, ns, key);
            let handle = if ns == "safe" { safe } else { sessions };
            assert!(!handle.touch(key).await.unwrap(), "{ns}:{key} was touched");
            let after = raw(server, ns, key);
            assert_eq!(after.0, before.0, "{ns}:{key}: bytes changed");
            assert!(after.1 <= before.1, "{ns}:{key}: TTL extended");
        }
    };

    // A cached "not found".
    let absent = sessions
        .get_or_load_optional("absent", || async { Ok::<_, std::io::Error>(None) })
        .await
        .unwrap();
    assert!(absent.is_none());
    assert!(
        envelope::has_flag(&raw(&server, "session", "absent").0, envelope::FLAG_ABSENT),
        "an absent entry"
    );
    refused("session", "absent").await;

    // Foreign bytes, and an envelope with a flag this build does not know.
    let _: () = server.cmd(&[
        b"SET",
        keys::value("session", "foreign").as_bytes(),
        b"hello, not ours",
        b"PX",
        b"60000",
    ]);
    refused("session", "foreign").await;
    sessions.set("flagged", "v".into()).await.unwrap();
    let (mut bytes, _) = raw(&server, "session", "flagged");
    envelope::add_flag(&mut bytes, envelope::UNKNOWN_FLAG);
    let flagged = keys::value("session", "flagged");
    let _: () = server.cmd(&[b"SET", flagged.as_bytes(), &bytes, b"PX", b"60000"]);
    refused("session", "flagged").await;

    // A live value under a namespace clear: still in Redis, dead by the floor.
    sessions.set("cleared", "v".into()).await.unwrap();
    assert!(
        sessions.touch("cleared").await.unwrap(),
        "live before the clear"
    );
    sessions.invalidate_namespace().await.unwrap();
    refused("session", "cleared").await;

    // A value past its expiry, kept in Redis only for fail-safe.
    safe.set("old", "v".into()).await.unwrap();
    let expiry = envelope::expires_ms(&raw(&server, "safe", "old").0).expect("an expiry");
    eventually("the value is past its expiry", PATIENCE, || async {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            > expiry
    })
    .await;
    refused("safe", "old").await;
}
