//! Redis's history going back: a restart from an older snapshot, or the meta hash lost while
//! values survive. What Redis holds from before the rollback point may be older than what was
//! acknowledged since, and nothing says which keys: no node may serve it (a miss is fine),
//! and writes made afterwards are read everywhere.

mod support;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, RedisServer, PATIENCE};
use tiered_cache::TieredCache;

async fn read(node: &TieredCache, ns: &str, key: &str) -> Option<u64> {
    let h = node.namespace::<str, u64>(ns).unwrap();
    h.get(key).await.map(|v| *v)
}

/// Reads `key` of `rate` on `node` every millisecond until `stop`, and returns whether it ever
/// read `stale`.
fn watch(
    node: &TieredCache,
    key: &'static str,
    stale: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let node = node.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        while !stop.load(SeqCst) {
            if read(&node, "rate", key).await == Some(stale) {
                seen += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_an_older_snapshot_serves_nothing_written_over_since() {
    let mut server = RedisServer::start();
    let (a, b) = (support::node(&server).await, support::node(&server).await);
    let (ra, qa) = (
        a.namespace::<str, u64>("rate").unwrap(),
        a.namespace::<str, u64>("quote").unwrap(),
    );
    ra.set("k", 1).await.unwrap();
    qa.set("q", 1).await.unwrap();
    eventually("b reads both", PATIENCE, || async {
        read(&b, "rate", "k").await == Some(1) && read(&b, "quote", "q").await == Some(1)
    })
    .await;
    let _: () = server.cmd(&[b"SAVE"]);
    // Acknowledged after the snapshot, then lost with the crash.
    ra.set("k", 2).await.unwrap();
    qa.invalidate_namespace().await.unwrap();
    eventually("b reads the overwrite", PATIENCE, || async {
        read(&b, "rate", "k").await == Some(2)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let watchers = [
        watch(&a, "k", 1, stop.clone()),
        watch(&b, "k", 1, stop.clone()),
    ];
    server.restart();
    let raw: Option<Vec<u8>> = server.cmd(&[b"GET", support::value_key("rate", "k").as_bytes()]);
    assert!(raw.is_some(), "the snapshot holds k's older value");
    eventually("both nodes resubscribe", PATIENCE, || async {
        a.is_subscribed() && b.is_subscribed()
    })
    .await;
    eventually(
        "the snapshot's values are misses everywhere",
        PATIENCE,
        || async {
            read(&a, "rate", "k").await.is_none()
                && read(&b, "rate", "k").await.is_none()
                && read(&b, "quote", "q").await.is_none()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, SeqCst);
    for w in watchers {
        assert_eq!(
            w.await.unwrap(),
            0,
            "a node served the value written over after the snapshot"
        );
    }
    assert!(
        read(&b, "quote", "q").await.is_none(),
        "the clear made after the snapshot holds"
    );

    // Writes after the rollback are versioned above everything before it: read everywhere.
    ra.set("k", 3).await.unwrap();
    eventually(
        "b reads the write made after the restore",
        PATIENCE,
        || async { read(&b, "rate", "k").await == Some(3) },
    )
    .await;
    ra.invalidate("k").await.unwrap();
    eventually("and its invalidation", PATIENCE, || async {
        read(&b, "rate", "k").await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_meta_hash_while_values_survive_makes_them_misses() {
    let server = RedisServer::start();
    let (a, b) = (support::node(&server).await, support::node(&server).await);
    let ra = a.namespace::<str, u64>("rate").unwrap();
    for i in 0..50 {
        ra.set(&format!("w{i}"), i).await.unwrap();
    }
    ra.set("k", 1).await.unwrap();
    // A value a clear made dead, which Redis still holds: the clear lives in the meta hash.
    let qa = a.namespace::<str, u64>("quote").unwrap();
    qa.set("old", 1).await.unwrap();
    qa.invalidate_namespace().await.unwrap();
    eventually("b reads k", PATIENCE, || async {
        read(&b, "rate", "k").await == Some(1) && read(&b, "quote", "old").await.is_none()
    })
    .await;
    let _: () = server.cmd(&[b"DEL", support::keys::meta().as_bytes()]);
    // The next write installs a new epoch, its counter from 1.
    ra.set("x", 1).await.unwrap();
    eventually(
        "k, from the lost history, is a miss on both",
        PATIENCE,
        || async { read(&a, "rate", "k").await.is_none() && read(&b, "rate", "k").await.is_none() },
    )
    .await;
    for node in [&a, &b] {
        assert!(
            read(node, "quote", "old").await.is_none(),
            "the clear from before stays in force"
        );
    }
    // The repair shows in the admin tool's census (plain servers: the secure pass's TLS and
    // ACL settings for the admin handle are `tests/tls.rs`'s).
    #[cfg(feature = "admin")]
    if support::secure().is_none() {
        let admin = tiered_cache::Admin::new(&server.url(), "v1").unwrap();
        eventually("the census shows the rollback floor", PATIENCE, || async {
            admin.census().await.unwrap().rollback_floor.is_some()
        })
        .await;
    }
    // New writes and invalidations order correctly against everything before.
    ra.set("k", 2).await.unwrap();
    eventually("b reads the new write", PATIENCE, || async {
        read(&b, "rate", "k").await == Some(2)
    })
    .await;
    ra.invalidate("k").await.unwrap();
    eventually("and its invalidation", PATIENCE, || async {
        read(&b, "rate", "k").await.is_none()
    })
    .await;
}
