//! How fast a write reaches another node's L1: two caches on one private `redis-server`, the
//! application on a one-worker Tokio runtime (as a latency-sensitive service pins it). For
//! each of `INVALIDATION_WRITES` writes (default 2000) of one key by node A, while node B holds
//! the previous value in L1:
//!
//! - **write start → B reads the new value**: B's `get` polled (with a yield between tries)
//!   from the moment A's `set` is called, until it returns the new value; p50 / p99 / max;
//! - **old value on B after A's ack**: how many writes B's L1 still answered with the old
//!   value right after A's `set` returned (legal within the staleness bound, and what
//!   read-your-writes across nodes must wait out).
//!
//! ```text
//! cargo bench --bench invalidation
//! INVALIDATION_WRITES=5000 cargo bench --bench invalidation
//! ```

#[path = "../tests/support/server.rs"]
mod server;

use std::time::{Duration, Instant};
use tiered_cache::{NamespacePolicy, TieredCache};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let writes: u64 = std::env::var("INVALIDATION_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let server = server::RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let build = || {
            TieredCache::builder()
                .redis_url(server.url())
                .namespace(
                    "quote",
                    NamespacePolicy::new(Duration::from_secs(60)).unbounded_staleness(),
                )
                .build()
                .unwrap()
        };
        let (a, b) = (build(), build());
        a.ready(Duration::from_secs(10)).await.unwrap();
        b.ready(Duration::from_secs(10)).await.unwrap();
        let (qa, qb) = (
            a.namespace::<str, u64>("quote").unwrap(),
            b.namespace::<str, u64>("quote").unwrap(),
        );
        qa.set("k", 0).await.unwrap();
        let (mut latency, mut old_after_ack) = (Vec::new(), 0u64);
        for i in 1..=writes {
            // B holds the value before this write in L1.
            while qb.get_local("k").as_deref() != Some(&(i - 1)) {
                let _ = qb.get("k").await;
                tokio::task::yield_now().await;
            }
            let start = Instant::now();
            qa.set("k", i).await.unwrap();
            if qb.get_local("k").as_deref() == Some(&(i - 1)) {
                old_after_ack += 1;
            }
            while qb.get("k").await.as_deref() != Some(&i) {
                tokio::task::yield_now().await;
            }
            latency.push(start.elapsed());
        }
        latency.sort();
        println!(
            "invalidation, {writes} writes: write start -> remote read of the new value p50 {:?} \
             p99 {:?} max {:?}; old value on the other node after the writer's ack: {old_after_ack} \
             ({:.1} %)",
            percentile(&latency, 0.5),
            percentile(&latency, 0.99),
            latency.last().unwrap(),
            100.0 * old_after_ack as f64 / writes as f64
        );
    });
}
