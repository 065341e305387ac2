//! The risk module's caches (design document "Risk Module Redis Caching Implementation") on
//! `tiered-cache`: three risk-service nodes in one process share one Redis. Active users are
//! warmed up in batches, dashboards refresh every 5 s, profiles and limits change, a tenant's
//! users are invalidated in a batch, and no tenant can reach another's entries. Prints the
//! dashboard's measured average against the document's 208 ms arithmetic, hit ratios per tier
//! against its targets, and read latencies.
//!
//! Time runs 50 times faster than in the document (TTLs, the refresh interval and backend
//! costs all divided by 50), so the run takes seconds; figures are scaled back.
//!
//! Redis: where the cache's `REDIS_*` variables say (`REDIS_URL`, or `REDIS_HOST`...), if set;
//! else a private `redis-server` started for the run; else L1-only (each node alone: the
//! document's "fallback to in-memory"), with a warning.
//!
//! ```text
//! cargo run --release --example risk
//! ```

#[path = "../common/redis.rs"]
mod redis_discovery;
mod scenario;

use redis_discovery::RedisMode;
use rust_decimal::Decimal;
use scenario::workload::{mean, ms, p99};
use scenario::{RiskNode, RiskStore, Timing, Tolerance, UserId};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const NODES: usize = 3;
const USERS_PER_TENANT: usize = 10;
const SCALE: u32 = 50;
/// Dashboard refreshes per user: 36 × 5 s = 3 minutes of the document's time, six metrics TTLs.
const ROUNDS: usize = 36;

async fn within<F, Fut>(mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if cond().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

fn report(what: &str, took: Option<Duration>) -> bool {
    match took {
        Some(d) => println!("  {what}: yes, after {:.1} ms", ms(d)),
        None => println!("  {what}: NO (not within 5 s)"),
    }
    took.is_some()
}

#[tokio::main]
async fn main() {
    let mode = RedisMode::discover();
    // Without Redis every node warns that it cannot reach it, over and over: errors only then.
    let quiet = if mode.is_none() { "error" } else { "warn" };
    scenario::workload::init_logging(quiet);
    let url = mode.url();
    let shared = !mode.is_none();
    let timing = Timing {
        ttl_divisor: SCALE,
        cost_divisor: SCALE,
    };
    let store = RiskStore::new(timing);
    let nodes: Vec<RiskNode> = (0..NODES)
        .map(|_| {
            RiskNode::new(
                scenario::build_cache(url.as_deref(), mode.staleness_bound(), timing),
                store.clone(),
            )
        })
        .collect();
    if shared {
        let subscribed = scenario::workload::wait_until(Duration::from_secs(10), || {
            nodes.iter().all(RiskNode::is_subscribed)
        })
        .await;
        assert!(subscribed, "nodes could not subscribe to {mode}");
        // A fresh start: forget what an earlier run left under these keys.
        let _ = nodes[0].clear_all_cache().await;
    }
    let tenants = scenario::tenants();
    let users = scenario::users(USERS_PER_TENANT);
    println!(
        "{NODES} risk-service nodes; tenants {} and {}, each with users user-1..user-{USERS_PER_TENANT}",
        tenants[0].as_str(),
        tenants[1].as_str()
    );
    println!(
        "time runs {SCALE}x faster: metrics TTL {:.0} ms (30 s), profile TTL {:.0} s (1 h), dashboard refresh {:.0} ms (5 s), calculation {:.0} ms (1000 ms), profile query {:.0} ms (50 ms)\n",
        ms(timing.metrics_ttl()),
        timing.profile_ttl().as_secs_f64(),
        ms(timing.refresh()),
        ms(store.metrics_cost),
        ms(store.profile_cost)
    );
    scenario::seed(&nodes[0], &tenants, &users)
        .await
        .expect("seed");
    // A cold start (a deploy, say): nothing cached. Warm-up of the active users, on node 0.
    if shared {
        nodes[0].clear_all_cache().await.expect("clear");
    }

    // Then node 1's first reads.
    for t in &tenants {
        let w = nodes[0].tenant(t).warm_up(&users).await;
        println!(
            "warm-up {}: {} profiles loaded in {} batch(es), {} metrics computed in {} batch(es), {} failed",
            t.as_str(), w.profiles_loaded, w.profile_batches, w.metrics_computed, w.metrics_batches, w.failed
        );
    }
    let before = *nodes[1].stats().namespace("risk_metrics").unwrap();
    let calcs = store.calls.metrics_calculations.load(Relaxed);
    for u in &users {
        let _ = nodes[1].tenant(&tenants[0]).calculate_risk_metrics(u).await;
    }
    let after = *nodes[1].stats().namespace("risk_metrics").unwrap();
    println!(
        "node 1's first metrics reads after the warm-up: {} from Redis, {} from its L1, {} calculated\n",
        after.l2_hits - before.l2_hits,
        after.l1_hits - before.l1_hits,
        store.calls.metrics_calculations.load(Relaxed) - calcs
    );

    // The document's example: dashboards refreshing every 5 s.
    let d = scenario::run_dashboards(&nodes, &tenants, &users, ROUNDS, timing.refresh()).await;
    let scale = f64::from(SCALE);
    let (hit, miss) = (mean(&d.hits), mean(&d.misses));
    println!(
        "dashboards: {} users x {ROUNDS} refreshes = {} metrics requests in {:.1} s: {} calculated, {} from cache ({:.1} %)",
        d.dashboards,
        d.requests,
        d.elapsed.as_secs_f64(),
        d.misses.len(),
        d.hits.len(),
        100.0 * d.hits.len() as f64 / d.requests.max(1) as f64
    );
    println!(
        "  measured average per request: {:.3} ms here = {:.0} ms in the document's time (document: {:.0} ms; without caching 1000 ms)",
        ms(d.mean()),
        ms(d.mean()) * scale,
        scenario::DOC_DASHBOARD_AVG_MS
    );
    println!(
        "  miss {:.1} ms (= {:.0} ms), cache hit mean {:.1} µs p99 {:.1} µs (document: 50 ms); {:.1} requests per calculation (document: 6)\n",
        ms(miss),
        ms(miss) * scale,
        hit.as_secs_f64() * 1e6,
        p99(&d.hits).as_secs_f64() * 1e6,
        d.requests as f64 / d.misses.len().max(1) as f64
    );

    // Invalidation across nodes.
    let (a, b) = (&tenants[0], &tenants[1]);
    let u1 = UserId::new("user-1");
    let mut ok = true;
    println!("invalidation across nodes:");
    if shared {
        let calcs = store.calls.metrics_calculations.load(Relaxed);
        let old = nodes[1]
            .tenant(a)
            .calculate_risk_metrics(&u1)
            .await
            .expect("metrics");
        let p = nodes[0]
            .tenant(a)
            .update_risk_profile(&u1, Tolerance::Aggressive)
            .await
            .expect("update");
        let n1 = nodes[1].tenant(a);
        ok &= report(
            &format!(
                "profile updated on node 0 (v{}): node 1 reads the new profile",
                p.version
            ),
            within(|| async {
                n1.get_risk_profile(&u1).await.ok().map(|x| x.version) == Some(p.version)
            })
            .await,
        );
        let m = n1.calculate_risk_metrics(&u1).await.expect("metrics");
        ok &= m.profile_version == p.version && m.profile_version != old.profile_version;
        println!(
            "  node 1 recomputed the metrics with it: profile v{} -> v{}, score {} -> {} ({} calculation)",
            old.profile_version,
            m.profile_version,
            old.overall_risk_score,
            m.overall_risk_score,
            store.calls.metrics_calculations.load(Relaxed) - calcs
        );
        for n in &nodes {
            n.tenant(a)
                .calculate_risk_metrics(&u1)
                .await
                .expect("metrics");
        }
        nodes[2]
            .tenant(a)
            .create_risk_limit(&u1, "max_leverage", Decimal::new(300, 2))
            .await
            .expect("limit");
        ok &= report(
            "limit created on node 2: nodes 0 and 1 dropped the user's metrics",
            within(|| async {
                nodes[..2]
                    .iter()
                    .all(|n| !n.tenant(a).cache_presence(&u1).metrics_exists)
            })
            .await,
        );
        for t in [a, b] {
            // Both cached on node 1 first, so "dropped" below means something.
            let h = nodes[1].tenant(t);
            for u in &users {
                h.calculate_risk_metrics(u).await.expect("metrics");
                h.get_risk_profile(u).await.expect("profile");
                ok &= h.cache_presence(u).metrics_exists && h.cache_presence(u).profile_exists;
            }
        }
        let batch: Vec<UserId> = users[..5].to_vec();
        let n = nodes[0]
            .tenant(a)
            .batch_invalidate(&batch)
            .await
            .expect("batch");
        ok &= report(
            &format!(
                "batch invalidation of {} on node 0 ({n} entries): node 1 dropped them",
                a.as_str()
            ),
            within(|| async {
                batch.iter().all(|u| {
                    nodes[1].tenant(a).cache_presence(u)
                        == scenario::Presence {
                            metrics_exists: false,
                            profile_exists: false,
                        }
                })
            })
            .await,
        );
        let kept = users
            .iter()
            .filter(|u| nodes[1].tenant(b).cache_presence(u).metrics_exists)
            .count();
        ok &= kept == users.len();
        println!(
            "  {}'s users with the same ids, still in node 1's L1: {kept} of {}",
            b.as_str(),
            users.len()
        );
    } else {
        println!("  skipped: no Redis, nodes do not share invalidations");
    }

    // Stats, summed over the nodes.
    println!(
        "\n{:<13} {:>8} {:>6} {:>6} {:>7} {:>6} {:>9}",
        "namespace", "lookups", "L1 %", "L2 %", "load %", "hit %", "target"
    );
    for (ns, target) in [("risk_metrics", "70-85%"), ("risk_profile", "95%+")] {
        let (mut l1, mut miss, mut l2, mut loads) = (0, 0, 0, 0);
        for n in &nodes {
            let s = n.stats();
            let s = s.namespace(ns).unwrap();
            (l1, miss, l2, loads) = (
                l1 + s.l1_hits,
                miss + s.l1_misses,
                l2 + s.l2_hits,
                loads + s.loads,
            );
        }
        let total = (l1 + miss).max(1) as f64;
        println!(
            "{:<13} {:>8} {:>6.1} {:>6.1} {:>7.1} {:>6.1} {:>9}",
            ns,
            l1 + miss,
            100.0 * l1 as f64 / total,
            100.0 * l2 as f64 / total,
            100.0 * loads as f64 / total,
            100.0 * (l1 + l2) as f64 / total,
            target
        );
    }
    println!(
        "profile reads on the dashboards: mean {:.1} µs, p99 {:.1} µs (document: 10 ms cached, 50 ms uncached)",
        mean(&d.profile_reads).as_secs_f64() * 1e6,
        p99(&d.profile_reads).as_secs_f64() * 1e6
    );
    let c = &store.calls;
    println!(
        "backend: {} calculation runs ({} users), {} profile queries ({} users)",
        c.metrics_calculations.load(Relaxed),
        c.metrics_rows.load(Relaxed),
        c.profile_queries.load(Relaxed),
        c.profile_rows.load(Relaxed)
    );
    if !ok || d.errors > 0 {
        println!("FAILED: see above ({} dashboard errors)", d.errors);
        std::process::exit(1);
    }
}
