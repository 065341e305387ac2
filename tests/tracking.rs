//! Writes made outside the library (opt-in `track_external_writes`): a `SET` or `DEL` from
//! another client evicts every node's L1 copy; a flush clears L1; losing the tracking
//! connection stops L1 being trusted until it is back.

mod support;

use support::{eventually, keys, node_with, RedisServer, PATIENCE};
use tiered_cache::TieredCache;

async fn tracked(server: &RedisServer) -> TieredCache {
    let c = node_with(server, |b| b.track_external_writes(true)).await;
    let c2 = c.clone();
    eventually("tracking up and L1 trusted", PATIENCE, || {
        let c = c2.clone();
        async move { c.health().await.bypassing.is_empty() }
    })
    .await;
    c
}

/// Waits until `key` is in Redis and in this node's L1.
async fn cached(ns: &tiered_cache::Namespace<str, u64>, key: &str) {
    eventually("cached", PATIENCE, || async {
        ns.get(key).await.is_some() && ns.get_local(key).is_some()
    })
    .await;
}

#[tokio::test]
async fn writes_from_outside_the_library_evict_l1() {
    let server = RedisServer::start();
    let a = tracked(&server).await;
    let b = tracked(&server).await;
    let untracked = support::node(&server).await;
    let (ra, rb, ru) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
        untracked.namespace::<str, u64>("rate").unwrap(),
    );
    ra.set("k", 1).await.unwrap();
    for r in [&ra, &rb, &ru] {
        eventually("cached", PATIENCE, || async {
            r.get("k").await.is_some() && r.get_local("k").is_some()
        })
        .await;
    }

    // Another service deletes the key directly.
    server.cmd::<()>(&[b"DEL", keys::value("rate", "k").as_bytes()]);
    for (name, r) in [("a", &ra), ("b", &rb)] {
        eventually(&format!("{name} evicted k"), PATIENCE, || async {
            r.get_local("k").is_none()
        })
        .await;
        assert_eq!(r.get("k").await, None);
    }
    // Without tracking, nothing tells a node: its copy lives until its L1 TTL.
    assert_eq!(ru.get_local("k").map(|v| *v), Some(1));

    // And overwrites it with something of its own.
    ra.set("k", 2).await.unwrap();
    eventually("b cached 2", PATIENCE, || async {
        rb.get("k").await.map(|v| *v) == Some(2) && rb.get_local("k").is_some()
    })
    .await;
    server.cmd::<()>(&[
        b"SET",
        keys::value("rate", "k").as_bytes(),
        b"{\"rate\": 3}",
    ]);
    eventually("b evicted k", PATIENCE, || async {
        rb.get_local("k").is_none()
    })
    .await;
    assert_eq!(rb.get("k").await, None, "a foreign value reads as a miss");
    assert!(b.stats().namespace("rate").unwrap().tracked_invalidations > 0);
}

#[tokio::test]
async fn a_flush_clears_l1() {
    let server = RedisServer::start();
    let a = tracked(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set("k", 1).await.unwrap();
    cached(&ra, "k").await;
    server.cmd::<()>(&[b"FLUSHDB"]);
    eventually("L1 cleared", PATIENCE, || async {
        ra.get_local("k").is_none()
    })
    .await;
    assert_eq!(ra.get("k").await, None);
}

#[tokio::test]
async fn losing_the_tracking_connection_stops_trusting_l1_until_it_is_back() {
    let server = RedisServer::start();
    let a = tracked(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set("k", 1).await.unwrap();
    cached(&ra, "k").await;
    // The tracking connection is the one with the `t` flag.
    let list: String = server.cmd(&[b"CLIENT", b"LIST"]);
    let id = list
        .lines()
        .find(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("a tracking client")
        .to_string();
    server.cmd::<i64>(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]);
    eventually("L1 bypassed", PATIENCE, || async {
        !a.health().await.bypassing.is_empty()
    })
    .await;
    // Written while tracking was down: must not be served from the old copy afterwards.
    server.cmd::<()>(&[b"DEL", keys::value("rate", "k").as_bytes()]);
    eventually("trusted again", PATIENCE, || async {
        a.health().await.bypassing.is_empty()
    })
    .await;
    assert_eq!(
        ra.get_local("k"),
        None,
        "L1 cleared when tracking came back"
    );
    assert_eq!(ra.get("k").await, None);
}
