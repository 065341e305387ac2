//! What `redis_connections` (`REDIS_MAX_CONNECTIONS`) buys under concurrency: 64 tasks on a
//! multi-threaded runtime each doing L1-missing reads (`get` of a namespace whose L1 holds one
//! entry, over 10 000 keys: every read a Redis GET, envelope check, decode and guarded L1
//! insert), with 1, 4 and 16 connections, against raw redis-rs GET + rmp-serde decode spread
//! the same way over the same number of multiplexed connections. Rounds alternate between the
//! sides, so drift hits both.
//!
//! ```text
//! cargo bench --bench connections            # a private redis-server is started
//! ```

#[path = "../tests/support/server.rs"]
mod server;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiered_cache::{NamespacePolicy, TieredCache};

const TASKS: usize = 64;
const KEYS: usize = 10_000;
const READS_PER_TASK: usize = 400;
const ROUNDS: usize = 5;

async fn tiered_round(cache: &TieredCache) -> Duration {
    let ns = cache.namespace::<str, u64>("q").unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let ns = ns.clone();
            tokio::spawn(async move {
                for i in 0..READS_PER_TASK {
                    let k = format!("k{}", (t * 7919 + i * 104_729) % KEYS);
                    assert!(ns.get(&k).await.is_some());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

async fn raw_round(conns: &[redis::aio::MultiplexedConnection]) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (conns, next) = (conns.to_vec(), next.clone());
            tokio::spawn(async move {
                for i in 0..READS_PER_TASK {
                    let k = format!("raw:k{}", (t * 7919 + i * 104_729) % KEYS);
                    let mut c = conns[next.fetch_add(1, Relaxed) % conns.len()].clone();
                    let raw: Vec<u8> = redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
                    let v: u64 = rmp_serde::from_slice(&raw).unwrap();
                    std::hint::black_box(v);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / nextest probing
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = server::RedisServer::start();
    let url = server.url();
    rt.block_on(async {
        let writer = node(&url, 1).await;
        let ns = writer.namespace::<str, u64>("q").unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        for i in 0..KEYS {
            ns.set(&format!("k{i}"), i as u64).await.unwrap();
            let bytes = rmp_serde::to_vec(&(i as u64)).unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("raw:k{i}"))
                .arg(bytes)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let reads = (TASKS * READS_PER_TASK) as f64;
        println!("64 tasks of L1-missing reads, {reads} reads per round, best of {ROUNDS} rounds");
        println!(
            "{:>12} {:>14} {:>14} {:>8}",
            "connections", "tiered ops/s", "raw ops/s", "ratio"
        );
        for n in [1usize, 4, 16] {
            let cache = node(&url, n).await;
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conns = Vec::new();
            for _ in 0..n {
                conns.push(client.get_multiplexed_async_connection().await.unwrap());
            }
            let (mut best_t, mut best_r) = (Duration::MAX, Duration::MAX);
            for _ in 0..ROUNDS {
                best_t = best_t.min(tiered_round(&cache).await);
                best_r = best_r.min(raw_round(&conns).await);
            }
            let (t, r) = (reads / best_t.as_secs_f64(), reads / best_r.as_secs_f64());
            println!("{n:>12} {t:>14.0} {r:>14.0} {:>8.2}", t / r);
        }
    });
}

async fn node(url: &str, connections: usize) -> TieredCache {
    let cache = TieredCache::builder()
        .redis_url(url)
        .redis_connections(connections)
        .namespace(
            "q",
            NamespacePolicy::new(Duration::from_secs(600))
                .l1_capacity(1)
                .unbounded_staleness(),
        )
        .build()
        .unwrap();
    cache.ready(Duration::from_secs(10)).await.unwrap();
    cache
}
