//! The payments backend's cache design on `tiered-cache`: three nodes over one SQLite store
//! and one Redis, a mixed workload of balance, rate, conversion, trustline and fee reads with
//! write-through transfers and rate updates. Prints hit ratios per tier and namespace against
//! the design's targets, latencies (mean, p99) against its response-time targets, and the
//! store load saved.
//!
//! Redis: where `REDIS_URL` (or the cache's other `REDIS_*` variables) says, read by the cache
//! itself; else a private `redis-server` for the run; else L1-only, with a warning. The
//! design's pool variables: see `PaymentsConfig`.
//!
//! ```text
//! cargo run --release --example payments
//! PAYMENTS_OPS=20000 cargo run --release --example payments
//! ```

#[path = "../common/redis.rs"]
mod redis_discovery;
mod scenario;

use redis_discovery::RedisMode;
use scenario::{Fleet, PaymentKey, PaymentsConfig, Report};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const WALLETS: usize = 500;

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets"
    } else {
        "MISSES"
    }
}

fn print_report(fleet: &Fleet, report: &Report, elapsed: Duration) {
    println!(
        "\n{:<18} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}  target",
        "namespace", "L1 hits", "L2 hits", "loads", "inv.in", "L1 %", "hit %"
    );
    let targets = [
        (scenario::BalanceKey::NAMESPACE, 70.0),
        (scenario::CurrencyPairKey::NAMESPACE, 90.0),
        (scenario::TrustlineKey::NAMESPACE, 95.0),
        (scenario::ConversionKey::NAMESPACE, 0.0),
        (scenario::FeeKey::NAMESPACE, 0.0),
    ];
    for (ns, target) in targets {
        let (mut l1, mut l2, mut loads, mut applied, mut lookups) = (0, 0, 0, 0, 0);
        for n in &fleet.nodes {
            let s = *n.cache.stats().namespace(ns).unwrap();
            l1 += s.l1_hits;
            l2 += s.l2_hits;
            loads += s.loads;
            applied += s.invalidations_applied;
            lookups += s.l1_hits + s.l1_misses;
        }
        let pct = |n: u64| 100.0 * n as f64 / lookups.max(1) as f64;
        let hit = pct(l1 + l2);
        let target = if target > 0.0 {
            format!(">= {target:.0} %: {}", verdict(hit >= target))
        } else {
            "-".to_string()
        };
        println!(
            "{ns:<18} {l1:>9} {l2:>9} {loads:>9} {applied:>9} {:>7.1}% {hit:>7.1}%  {target}",
            pct(l1)
        );
    }
    println!("(from a cold start: every key's first read on the fleet goes to the store)");
    let hit = &report.hit;
    let miss = &report.miss;
    let write = &report.write;
    println!(
        "\n{} reads, {} writes in {:.2} s over {NODES} nodes",
        report.reads,
        report.writes,
        elapsed.as_secs_f64()
    );
    println!(
        "cache hit   mean {}  p99 {}  (target < 2 ms: {})",
        ms(hit.mean()),
        ms(hit.p99()),
        verdict(hit.p99() < Duration::from_millis(2))
    );
    println!(
        "cache miss  mean {}  p99 {}  (design: 10-50 ms, the store's cost; SQLite in memory here)",
        ms(miss.mean()),
        ms(miss.p99())
    );
    println!(
        "write       mean {}  p99 {}  (whole write-through: store + up to 4 invalidations, one Redis round trip each; design's cache write < 5 ms: {})",
        ms(write.mean()),
        ms(write.p99()),
        verdict(write.p99() < Duration::from_millis(5))
    );
    let saved = 100.0 * (1.0 - report.store_reads as f64 / report.reads.max(1) as f64);
    println!(
        "store queries saved by the cache: {saved:.1} % of reads (design: 60-80 %: {})",
        verdict(saved >= 60.0)
    );
}

#[tokio::main]
async fn main() {
    scenario::workload::init_logging("warn");
    let ops: usize = scenario::workload::env_number("PAYMENTS_OPS", 10_000);
    let mode = RedisMode::discover();
    let mut config = scenario::workload::config_or_exit(PaymentsConfig::from_env());
    if let Some(url) = mode.url() {
        config.redis_url = Some(url);
    }
    println!(
        "config: connect timeout {:?}, {} connections (REDIS_MAX_CONNECTIONS), health read every {:?} (REDIS_HEALTH_CHECK_INTERVAL); REDIS_MIN_IDLE={}, REDIS_MAX_LIFETIME={:?}, REDIS_IDLE_TIMEOUT={:?} checked (multiplexed connections: none idle, replaced on failure)",
        config.connection_timeout,
        config.max_connections,
        config.health_check_interval,
        config.min_idle,
        config.max_lifetime,
        config.idle_timeout,
    );
    let fleet = scenario::workload::config_or_exit(
        Fleet::start(&config, NODES, WALLETS, mode.staleness_bound(), |b| b).await,
    );
    if !mode.is_none() {
        assert!(
            fleet.subscribed(Duration::from_secs(10)).await,
            "nodes could not subscribe to {mode}"
        );
        // A fresh start: forget what an earlier run left under these keys.
        let n = &fleet.nodes[0];
        let _ = n.balances.invalidate_namespace().await;
        let _ = n.rates.invalidate_namespace().await;
        let _ = n.conversions.invalidate_namespace().await;
        let _ = n.trustlines.invalidate_namespace().await;
        let _ = n.fees.invalidate_namespace().await;
    }
    println!(
        "{NODES} nodes, {WALLETS} wallets, {ops} operations per node (3 % transfers, 0.5 % rate updates)"
    );
    // The design's periodic health check, beside the workload.
    let health_check = {
        let (cache, every) = (fleet.nodes[0].cache.clone(), config.health_check_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                print_health(&cache).await;
            }
        })
    };
    let started = Instant::now();
    let report = scenario::run_fleet(&fleet, WALLETS, ops).await;
    print_report(&fleet, &report, started.elapsed());

    // Every node agrees with the store once the invalidations have landed.
    let mut disagree = 0;
    for n in &fleet.nodes {
        for i in 0..20 {
            let w = scenario::wallet_id(i);
            let cached = n.balance(&w).await.expect("balance").amount;
            disagree += usize::from(cached != fleet.store.balance(&w).expect("store"));
        }
    }
    println!(
        "balances disagreeing with the store after the run: {disagree} of {}",
        20 * NODES
    );
    health_check.abort();
    print_health(&fleet.nodes[0].cache).await;
}

/// The design's health check: the connections' figures, the subscriber and the breaker.
async fn print_health(cache: &tiered_cache::TieredCache) {
    let health = cache.health().await;
    let c = &health.connections;
    println!(
        "health: {} reachable {}, subscribed {}, breaker {:?}; connections {} configured, {} open, {} reconnecting",
        health.redis, health.redis_reachable, health.subscribed, health.breaker,
        c.configured, c.open, c.reconnecting
    );
}
