//! Redis refusing what it is asked: error replies (OOM under `noeviction`, READONLY from a
//! demoted server) must never drop a write or an invalidation. Each is landed some other way
//! (an invalidation runs under OOM), or queued and retried until Redis takes it, and this
//! node never serves Redis's older copy of a key it acknowledged a change of.

mod support;

use std::time::Duration;
use support::{eventually, free_port, RedisServer, PATIENCE};
use tiered_cache::TieredCache;

async fn rate(node: &TieredCache, key: &str) -> Option<u64> {
    let ns = node.namespace::<str, u64>("rate").unwrap();
    ns.get(key).await.map(|v| *v)
}

fn local(node: &TieredCache, key: &str) -> Option<u64> {
    let ns = node.namespace::<str, u64>("rate").unwrap();
    ns.get_local(key).map(|v| *v)
}

/// Two nodes, both holding `key` = 1 in L1.
async fn warm(server: &RedisServer, key: &str) -> (TieredCache, TieredCache) {
    let (a, b) = (support::node(server).await, support::node(server).await);
    let ns = a.namespace::<str, u64>("rate").unwrap();
    ns.set(key, 1).await.unwrap();
    eventually("b holds the value in L1", PATIENCE, || async {
        rate(&b, key).await == Some(1) && local(&b, key) == Some(1)
    })
    .await;
    (a, b)
}

/// Puts Redis over its `maxmemory` under `noeviction` (some filler, then a limit below what
/// is used), until a plain SET is refused with OOM.
fn fill_to_oom(server: &RedisServer) {
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    let mut conn = server.conn();
    let filler = vec![b'x'; 64 * 1024];
    for i in 0..32 {
        let _: () = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&filler)
            .query(&mut conn)
            .unwrap();
    }
    let used = server.info().used_memory.unwrap();
    let limit = (used - 1024 * 1024).to_string();
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory", limit.as_bytes()]);
    let set: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg(1).query(&mut conn);
    assert_eq!(set.unwrap_err().code(), Some("OOM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_and_writes_land_when_redis_is_out_of_memory() {
    let server = RedisServer::start();
    let (a, b) = warm(&server, "k").await;
    fill_to_oom(&server);
    let ns = a.namespace::<str, u64>("rate").unwrap();

    // An invalidation runs under OOM (a tombstone is a few bytes): every node drops the key,
    // told by the message (the heartbeat runs under OOM too, so nothing else switches L1 off).
    let applied = support::applied(&b, "rate");
    ns.invalidate("k")
        .await
        .expect("an invalidation is not refused for OOM");
    eventually("b drops the invalidated key", PATIENCE, || async {
        support::applied(&b, "rate") > applied
            && local(&b, "k").is_none()
            && rate(&b, "k").await.is_none()
    })
    .await;
    assert!(
        b.health().await.bypassing.is_empty(),
        "L1 stays on under OOM"
    );

    // A write Redis refuses for OOM lands as the key's invalidation: no node keeps the
    // value it replaced.
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"0"]);
    ns.set("w", 1).await.unwrap();
    eventually("b reads w", PATIENCE, || async {
        rate(&b, "w").await == Some(1)
    })
    .await;
    fill_to_oom(&server);
    let applied = support::applied(&b, "rate");
    ns.set("w", 2).await.expect("degraded, not failed");
    eventually(
        "the refused write becomes an invalidation",
        PATIENCE,
        || async {
            support::applied(&b, "rate") > applied
                && local(&b, "w").is_none()
                && rate(&b, "w").await.is_none()
                && rate(&a, "w").await.is_none()
        },
    )
    .await;
    assert_eq!(a.health().await.outbox_entries, 0);

    // Memory back: writes land again, on every node.
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"0"]);
    ns.set("w", 3).await.unwrap();
    eventually(
        "b reads the write made after the fault",
        PATIENCE,
        || async { rate(&b, "w").await == Some(3) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_a_read_only_server_refuses_is_retried_until_it_lands() {
    let server = RedisServer::start();
    let (a, b) = warm(&server, "k").await;
    // Demoted, as in a failover, to a primary that never answers: it keeps its data, serves
    // reads, and refuses every write with READONLY.
    let dead = free_port().to_string();
    let _: () = server.cmd(&[b"REPLICAOF", b"127.0.0.1", dead.as_bytes()]);

    let ns = a.namespace::<str, u64>("rate").unwrap();
    ns.invalidate("k").await.expect("degraded, not failed");
    assert!(a.health().await.outbox_entries > 0, "queued to retry");
    // Redis still holds 1, older than what this node acknowledged: not served here.
    let bypassed = || a.stats().namespace("rate").unwrap().l2_bypasses;
    let before = bypassed();
    assert_eq!(rate(&a, "k").await, None);
    assert!(
        bypassed() > before,
        "the skipped Redis copy was not counted"
    );
    // Retried, not given up, while the server refuses.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.health().await.outbox_entries > 0, "still queued");

    let _: () = server.cmd(&[b"REPLICAOF", b"NO", b"ONE"]);
    eventually("the queued invalidation lands", PATIENCE, || async {
        a.health().await.outbox_entries == 0
    })
    .await;
    eventually("every node drops the key", PATIENCE, || async {
        local(&b, "k").is_none() && rate(&b, "k").await.is_none() && rate(&a, "k").await.is_none()
    })
    .await;
    ns.set("k", 2).await.unwrap();
    eventually(
        "b reads the write made after the fault",
        PATIENCE,
        || async { rate(&b, "k").await == Some(2) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pause_leaves_no_read_past_the_bound() {
    use std::time::Instant;
    let server = RedisServer::start();
    let (a, b) = (
        support::strict_node(&server.url()),
        support::strict_node(&server.url()),
    );
    for n in [&a, &b] {
        n.ready(PATIENCE).await.unwrap();
    }
    let ns = a.namespace::<str, u64>("rate").unwrap();
    ns.set("k", 1).await.unwrap();
    eventually("b holds the value in L1", PATIENCE, || async {
        rate(&b, "k").await == Some(1) && local(&b, "k") == Some(1)
    })
    .await;

    // b reads throughout; Redis pauses writes for 1 s (as in a manual failover) and a
    // invalidates the key meanwhile: queued, since the script cannot run.
    let end = Instant::now() + Duration::from_millis(2500);
    let reader = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut reads = Vec::new();
            while Instant::now() < end {
                let started = Instant::now();
                reads.push((started, rate(&b, "k").await));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            reads
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paused = Instant::now();
    let _: () = server.cmd(&[b"CLIENT", b"PAUSE", b"1000", b"WRITE"]);
    ns.invalidate("k").await.expect("degraded, not failed");
    let acked = Instant::now();
    assert_eq!(rate(&a, "k").await, None, "not read around on the writer");
    let reads = reader.await.unwrap();

    let stale: Vec<Duration> = reads
        .iter()
        .filter(|(at, v)| *at > acked && *v == Some(1))
        .map(|(at, _)| *at - acked)
        .collect();
    let worst = stale.iter().max().copied().unwrap_or_default();
    let during = reads
        .iter()
        .filter(|(at, _)| *at > paused + Duration::from_millis(300))
        .filter(|(at, _)| *at < paused + Duration::from_millis(900))
        .count();
    eprintln!(
        "FIGURE CLIENT PAUSE 1 s: invalidation acknowledged {:?} into it, {} reads during it, {} stale after the ack, worst {worst:?}",
        acked - paused,
        during,
        stale.len()
    );
    assert!(during > 10, "b kept reading through the pause");
    assert!(worst <= support::BOUND, "a read {worst:?} stale");
    eventually("the invalidation lands everywhere", PATIENCE, || async {
        a.health().await.outbox_entries == 0 && rate(&b, "k").await.is_none()
    })
    .await;
    ns.set("k", 2).await.unwrap();
    eventually(
        "b reads the write made after the pause",
        PATIENCE,
        || async { rate(&b, "k").await == Some(2) },
    )
    .await;
}
