//! The load/invalidate race, forced. Node B reads the old value from Redis; node A's
//! invalidation reaches B and is applied; only then does B try to put what it read into L1.
//!
//! The pause sits inside the value type's `Deserialize`, which runs exactly between B's Redis
//! read and its L1 insert, so no test-only hook is needed in the library. Remove the generation
//! guard (make `insert_guarded` insert unconditionally) and these tests fail.

mod support;

use support::gate::{arm, release, wait_reading, Gated, SERIAL};
use support::{eventually, node, RedisServer, PATIENCE};
use tiered_cache::TieredCache;

fn applied(cache: &TieredCache) -> u64 {
    cache
        .stats()
        .namespace("quote")
        .unwrap()
        .invalidations_applied
}

enum Write {
    Set,
    Invalidate,
}

async fn race(write: Write, via_get_or_load: bool) {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    race_once(&a, &b, "K", write, via_get_or_load).await;
}

/// One forced interleaving on key `key`; returns nothing, asserts no stale value is left.
async fn race_once(
    a: &TieredCache,
    b: &TieredCache,
    key: &'static str,
    write: Write,
    via_get_or_load: bool,
) {
    let qa = a.namespace::<str, Gated>("quote").unwrap();
    let qb = b.namespace::<str, Gated>("quote").unwrap();
    let before_set = applied(b);
    qa.set(key, Gated(1)).await.unwrap();
    eventually("B saw the first write", PATIENCE, || async {
        applied(b) > before_set
    })
    .await;

    arm();
    let reader = {
        let qb = qb.clone();
        tokio::spawn(async move {
            if via_get_or_load {
                qb.get_or_load(key, || async { Ok::<_, std::io::Error>(Gated(99)) })
                    .await
                    .ok()
            } else {
                qb.get(key).await
            }
        })
    };
    wait_reading().await;
    let before = applied(b);
    match write {
        Write::Set => qa.set(key, Gated(2)).await.unwrap(),
        Write::Invalidate => qa.invalidate(key).await.unwrap(),
    }
    eventually("B applied A's invalidation", PATIENCE, || async {
        applied(b) > before
    })
    .await;
    release();
    let read = reader.await.unwrap();
    // B may answer its caller with what it read (the read was concurrent with the write)...
    assert_eq!(read.as_deref(), Some(&Gated(1)));
    // ...but must not keep it.
    assert_eq!(qb.get_local(key), None, "stale value left in B's L1");
    let expected = match write {
        Write::Set => Some(Gated(2)),
        Write::Invalidate => None,
    };
    assert_eq!(qb.get(key).await.as_deref().cloned(), expected);
    assert_eq!(qa.get(key).await.as_deref().cloned(), expected);
}

/// The same interleavings, many times over, alternating the write and the read path:
/// not one stale entry may be left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_races_many_times_leave_no_stale_entry() {
    const ROUNDS: usize = 60;
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let keys: Vec<&'static str> = (0..ROUNDS)
        .map(|i| &*Box::leak(format!("K{i}").into_boxed_str()))
        .collect();
    for (i, key) in keys.into_iter().enumerate() {
        let write = if i % 2 == 0 {
            Write::Set
        } else {
            Write::Invalidate
        };
        race_once(&a, &b, key, write, i % 3 == 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_racing_a_set_keeps_no_stale_value() {
    race(Write::Set, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_racing_an_invalidate_keeps_no_stale_value() {
    race(Write::Invalidate, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_racing_a_set_keeps_no_stale_value() {
    race(Write::Set, true).await;
}

/// The loader side: B misses everywhere and loads the old value from its database while A
/// invalidates. B's write-back must be refused by Redis, not just kept out of B's L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_cannot_write_back_a_value_invalidated_meanwhile() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let qb = qb.clone();
        tokio::spawn(async move {
            qb.get_or_load("K", || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok::<_, std::io::Error>(1) // what the database held when the load began
            })
            .await
        })
    };
    started_rx.await.unwrap();
    let before = applied(&b);
    qa.invalidate("K").await.unwrap(); // the database changed to 2
    eventually("B applied A's invalidation", PATIENCE, || async {
        applied(&b) > before
    })
    .await;
    release_tx.send(()).unwrap();
    assert_eq!(*reader.await.unwrap().unwrap(), 1);

    assert_eq!(qb.get_local("K"), None);
    assert_eq!(qb.get("K").await, None, "stale value written back to Redis");
    let fresh = qa
        .get_or_load("K", || async { Ok::<_, std::io::Error>(2) })
        .await
        .unwrap();
    assert_eq!(*fresh, 2);
    assert_eq!(b.stats().namespace("quote").unwrap().fills_refused, 1);
}
