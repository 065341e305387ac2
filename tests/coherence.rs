//! Several cache instances (separate L1s) on one Redis converge after every write and
//! invalidation; a node skips its own messages; anything unreadable on the bus is counted and skipped.

mod support;

use support::{eventually, keys, node, wire, RedisServer, PATIENCE};
use tiered_cache::{Namespace, TieredCache};

async fn nodes(server: &RedisServer, n: usize) -> Vec<TieredCache> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(node(server).await);
    }
    v
}

fn rates(nodes: &[TieredCache]) -> Vec<Namespace<str, u64>> {
    nodes
        .iter()
        .map(|n| n.namespace::<str, u64>("rate").unwrap())
        .collect()
}

/// Waits until no node's L1 holds anything but `want` for `key`.
async fn converged(ns: &[Namespace<str, u64>], key: &str, want: Option<u64>) {
    for (i, n) in ns.iter().enumerate() {
        eventually(
            &format!("node {i} L1 agrees on {key}"),
            PATIENCE,
            || async {
                match n.get_local(key) {
                    None => true,
                    Some(v) => Some(*v) == want,
                }
            },
        )
        .await;
        assert_eq!(n.get(key).await.map(|v| *v), want, "node {i} read of {key}");
    }
}

#[tokio::test]
async fn three_nodes_converge_after_writes_and_invalidations() {
    let server = RedisServer::start();
    let nodes = nodes(&server, 3).await;
    let ns = rates(&nodes);

    ns[0].set("USD:EUR", 1).await.unwrap();
    for n in &nodes[1..] {
        support::await_applied(n, "rate", 1).await;
    }
    for n in &ns {
        assert_eq!(n.get("USD:EUR").await.map(|v| *v), Some(1));
        assert!(n.get_local("USD:EUR").is_some(), "now cached in every L1");
    }
    // Every node writes in turn; every L1 follows.
    for (round, writer) in [1usize, 2, 0, 2].into_iter().enumerate() {
        let v = 10 + round as u64;
        ns[writer].set("USD:EUR", v).await.unwrap();
        converged(&ns, "USD:EUR", Some(v)).await;
    }
    ns[1].invalidate("USD:EUR").await.unwrap();
    converged(&ns, "USD:EUR", None).await;
    // Versions only grow across the fleet.
    let seen = support::applied(&nodes[0], "rate");
    ns[2].set("USD:EUR", 99).await.unwrap();
    let v_set = ns[2].local_version("USD:EUR").unwrap();
    support::await_applied(&nodes[0], "rate", seen + 1).await;
    assert_eq!(ns[0].get("USD:EUR").await.map(|v| *v), Some(99));
    assert_eq!(ns[0].local_version("USD:EUR"), Some(v_set));
    ns[0].set("USD:EUR", 100).await.unwrap();
    assert!(ns[0].local_version("USD:EUR").unwrap() > v_set);
}

#[tokio::test]
async fn a_node_skips_its_own_messages_and_keeps_its_fresh_value() {
    let server = RedisServer::start();
    let nodes = nodes(&server, 2).await;
    let ns = rates(&nodes);
    ns[0].set("k", 1).await.unwrap();
    eventually("own message seen and skipped", PATIENCE, || async {
        nodes[0].stats().bus_own_skipped >= 1
    })
    .await;
    // The writer's L1 still holds its own write: the echo did not evict it.
    assert_eq!(ns[0].get_local("k").map(|v| *v), Some(1));
    let s0 = nodes[0].stats();
    assert_eq!(s0.namespace("rate").unwrap().invalidations_applied, 0);
    eventually("the other node applied it", PATIENCE, || async {
        nodes[1]
            .stats()
            .namespace("rate")
            .unwrap()
            .invalidations_applied
            >= 1
    })
    .await;
}

#[tokio::test]
async fn a_fill_after_a_miss_broadcasts_nothing() {
    let server = RedisServer::start();
    let nodes = nodes(&server, 2).await;
    let ns = rates(&nodes);
    for i in 0..20 {
        let key = format!("k{i}");
        ns[0]
            .get_or_load(&key, || async { Ok::<_, std::io::Error>(1) })
            .await
            .unwrap();
        ns[1].get(&key).await.unwrap();
    }
    // Node 1 caches what node 0 filled; a write makes sure the bus is flowing.
    ns[0].set("probe", 1).await.unwrap();
    eventually("probe applied", PATIENCE, || async {
        nodes[1]
            .stats()
            .namespace("rate")
            .unwrap()
            .invalidations_applied
            >= 1
    })
    .await;
    let s0 = nodes[0].stats();
    let s1 = nodes[1].stats();
    assert_eq!(s0.namespace("rate").unwrap().fills_stored, 20);
    assert_eq!(
        s0.namespace("rate").unwrap().invalidations_sent,
        1,
        "only the set"
    );
    assert_eq!(s1.namespace("rate").unwrap().invalidations_applied, 1);
    assert!(
        ns[1].get_local("k7").is_some(),
        "fills did not evict other nodes"
    );
}

#[tokio::test]
async fn an_unreadable_bus_message_is_counted_and_skipped() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let ns = cache.namespace::<str, u64>("rate").unwrap();
    ns.set("k", 1).await.unwrap();
    assert!(ns.get_local("k").is_some());
    let resyncs = cache.stats().bus_resyncs;
    // A format 1 header (a format this build reads), then nothing it can parse.
    let garbage = wire::with_header(wire::BUS_FORMAT_1, b"garbage");
    let receivers: i64 = server.cmd(&[b"PUBLISH", keys::channel().as_bytes(), &garbage]);
    assert_eq!(receivers, 1);
    eventually("counted", PATIENCE, || async {
        cache.stats().bus_malformed == 1
    })
    .await;
    // Junk carries no version, so it cannot hide a write: a lost one shows as a gap (see
    // `tests/hostile.rs`). Acting on it would let any junk switch L1 off.
    assert_eq!(ns.get_local("k").map(|v| *v), Some(1), "L1 was dropped");
    assert_eq!(cache.stats().bus_resyncs, resyncs, "junk made it resync");
}

#[tokio::test]
async fn nodes_on_other_prefixes_or_databases_do_not_interfere() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = support::node_with(&server, |b| b.prefix("trading")).await;
    let url_db1 = format!("{}/1", server.url());
    let c = support::node_with(&server, |b| b.redis_url(url_db1)).await;
    let (ra, rb, rc) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
        c.namespace::<str, u64>("rate").unwrap(),
    );
    ra.set("k", 1).await.unwrap();
    rb.set("k", 2).await.unwrap();
    rc.set("k", 3).await.unwrap();
    assert_eq!(ra.get("k").await.map(|v| *v), Some(1));
    assert_eq!(rb.get("k").await.map(|v| *v), Some(2));
    assert_eq!(rc.get("k").await.map(|v| *v), Some(3));
    let trading: Vec<u8> = server.cmd(&[b"GET", b"trading:rate:k"]);
    assert!(!trading.is_empty());
    // A probe written by a twin of each node (same prefix and database) is published after
    // every write above; Redis delivers in order, so once the probe is applied any stray
    // message from the other groups would have been applied too.
    let twins = [
        node(&server).await,
        support::node_with(&server, |b| b.prefix("trading")).await,
        support::node_with(&server, |b| b.redis_url(format!("{}/1", server.url()))).await,
    ];
    for (n, twin) in [&a, &b, &c].into_iter().zip(&twins) {
        twin.namespace::<str, u64>("rate")
            .unwrap()
            .set("probe", 0)
            .await
            .unwrap();
        let applied = || n.stats().namespace("rate").unwrap().invalidations_applied;
        eventually("probe applied", PATIENCE, || async { applied() >= 1 }).await;
        assert_eq!(
            applied(),
            1,
            "only the probe, nothing from other prefixes or databases"
        );
    }
}

/// Three writers on a few hot keys, readers on every node: the versions every node's L1 holds
/// only go up, and when the writes stop, every L1 agrees with Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_hot_keys_versions_only_go_up_and_every_l1_ends_equal_to_redis() {
    const NODES: usize = 3;
    const KEYS: [&str; 4] = ["h0", "h1", "h2", "h3"];
    const WRITES_PER_NODE: u64 = 150;
    let server = RedisServer::start();
    let nodes = nodes(&server, NODES).await;
    let ns = rates(&nodes);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(NODES * 2));
    let mut tasks = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let (w, b) = (n.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            for j in 0..WRITES_PER_NODE {
                let key = KEYS[(j as usize + i) % KEYS.len()];
                w.set(key, (i as u64) * 1_000_000 + j).await.unwrap();
            }
        }));
        let (r, b) = (n.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            // The version this node's L1 holds for a key may only go up.
            let mut seen = [0u64; KEYS.len()];
            for j in 0..WRITES_PER_NODE * 2 {
                let k = j as usize % KEYS.len();
                let _ = r.get(KEYS[k]).await;
                if let Some(v) = r.local_version(KEYS[k]) {
                    assert!(v >= seen[k], "{}: version {v} after {}", KEYS[k], seen[k]);
                    seen[k] = v;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reader = node(&server).await;
    let truth = reader.namespace::<str, u64>("rate").unwrap();
    for key in KEYS {
        let want = *truth.get(key).await.expect("written");
        converged(&ns, key, Some(want)).await;
    }
}
