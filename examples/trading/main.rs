//! The trading system's cache design on `tiered-cache`: three nodes on one Redis serve market
//! quotes (batch-published, read singly and in batches), memoized price fetches and portfolio
//! valuations (compressed), risk figures and sessions extended on use. Prints hit ratios per
//! tier, latencies against the design's targets (get < 1 ms mean and < 5 ms p99, set < 2 ms
//! mean and < 10 ms p99, batch < 0.1 ms per key), slow operations, and what compression saved.
//!
//! Redis: where the design's `REDIS_*` variables say (the cache reads them itself: TLS with
//! `REDIS_SSL=true`, `REDIS_PASSWORD`, `REDIS_MAX_CONNECTIONS`), if they name an address; else
//! a private `redis-server` for the run; else L1-only, with a warning. `CACHE_*` variables: see
//! `TradingConfig`.
//!
//! ```text
//! cargo run --release --example trading
//! TRADING_READS=50000 CACHE_MAX_BATCH_SIZE=50 cargo run --release --example trading
//! ```

#[path = "../common/redis.rs"]
mod redis_discovery;
mod scenario;

use redis_discovery::RedisMode;
use scenario::{Fleet, PortfolioId, Report, Samples, TradingConfig};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const NODES: usize = 3;
const SYMBOLS: usize = 2_000;

fn ms(d: Duration) -> String {
    format!("{:.4} ms", d.as_secs_f64() * 1e3)
}

/// One operation's figures against its targets (`p99_target` `None`: the design sets none).
fn line(what: &str, s: &Samples, mean_target: Duration, p99_target: Option<Duration>) {
    let ok = s.mean() < mean_target && p99_target.is_none_or(|t| s.p99() < t);
    let p99 = p99_target.map_or(String::new(), |t| format!(", p99 < {}", ms(t)));
    println!(
        "{what:<22} n={:<6} mean {}  p99 {}  (target mean < {}{p99}: {})",
        s.0.len(),
        ms(s.mean()),
        ms(s.p99()),
        ms(mean_target),
        if ok { "meets" } else { "MISSES" }
    );
}

fn print_report(config: &TradingConfig, fleet: &Fleet, report: &Report) {
    let ms_ = Duration::from_millis;
    println!();
    line("get (single key)", &report.get, ms_(1), Some(ms_(5)));
    line("set (single key)", &report.set, ms_(2), Some(ms_(10)));
    let per_key = Duration::from_micros(100);
    line("batch get, per key", &report.batch_per_key, per_key, None);
    line(
        "batch set, per key",
        &report.batch_set_per_key,
        per_key,
        None,
    );
    if config.log_slow_ops {
        let t = config.slow_op_threshold;
        let slow = report.get.slower_than(t) + report.set.slower_than(t);
        println!("operations slower than CACHE_SLOW_OP_THRESHOLD ({t:?}): {slow}");
    }
    println!(
        "source calls: price fetches {} (memoized, {NODES} nodes asked), portfolio valuations {}",
        fleet.sources.price_fetches.load(Relaxed),
        fleet.sources.valuations.load(Relaxed)
    );
    if !config.enable_metrics {
        return;
    }
    println!(
        "\n{:<10} {:>9} {:>9} {:>8} {:>9} {:>8}",
        "namespace", "L1 hits", "L2 hits", "loads", "L2 miss", "hit %"
    );
    for ns in [
        scenario::MARKET,
        scenario::PRICE,
        scenario::PORTFOLIO,
        scenario::SESSION,
    ] {
        let (mut l1, mut l2, mut loads, mut l2m, mut lookups) = (0, 0, 0, 0, 0);
        for n in &fleet.nodes {
            let s = *n.cache.stats().namespace(ns).unwrap();
            l1 += s.l1_hits;
            l2 += s.l2_hits;
            loads += s.loads;
            l2m += s.l2_misses;
            lookups += s.l1_hits + s.l1_misses;
        }
        let hit = 100.0 * (l1 + l2) as f64 / lookups.max(1) as f64;
        println!("{ns:<10} {l1:>9} {l2:>9} {loads:>8} {l2m:>9} {hit:>7.1}%");
    }
}

/// The valuation's size serialized and as Redis stores it (measured where this run knows the
/// URL: a private server, or `REDIS_URL` without TLS).
async fn compression(
    url: Option<String>,
    config: &TradingConfig,
    fleet: &Fleet,
) -> Option<(usize, Option<(usize, bool)>)> {
    let id = PortfolioId("portfolio_123".into());
    let value = fleet.nodes[0].valuation.get(&id).await.ok()?;
    let plain = rmp_serde::to_vec_named(&*value).ok()?.len();
    let url = url.or_else(|| config.redis_env.0.get("REDIS_URL").cloned());
    let stored = url.and_then(|url| {
        let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
        let key = format!(
            "{}:{}:portfolio_123",
            config.key_prefix,
            scenario::PORTFOLIO
        );
        let stored: Vec<u8> = redis::cmd("GET").arg(key).query(&mut conn).ok()?;
        // Envelope byte 2 holds the flags; bit 1: compressed.
        Some((stored.len(), stored.get(2)? & 0b10 != 0))
    });
    Some((plain, stored))
}

#[tokio::main]
async fn main() {
    scenario::workload::init_logging("warn");
    let reads: usize = scenario::workload::env_number("TRADING_READS", 20_000);
    let mode = RedisMode::discover();
    let mut config = scenario::workload::config_or_exit(TradingConfig::from_env());
    config.redis_url = mode.url();
    println!(
        "config: prefix {:?}, TTLs market {:?} portfolio {:?} risk {:?} session {:?} default {:?}, compress above {:?} bytes, batches of {}; REDIS_* set: {:?}",
        config.key_prefix,
        config.market_data_ttl,
        config.portfolio_ttl,
        config.risk_ttl,
        config.session_ttl,
        config.default_ttl,
        config.compress_threshold,
        config.max_batch_size,
        config.redis_env
    );
    let fleet = scenario::workload::config_or_exit(
        Fleet::start(&config, NODES, mode.staleness_bound(), |b| b).await,
    );
    if !mode.is_none() {
        assert!(
            fleet.subscribed(Duration::from_secs(10)).await,
            "nodes could not subscribe to {mode}"
        );
        let n = &fleet.nodes[0];
        // A fresh start: forget what an earlier run left under these keys.
        let _ = n.market.invalidate_namespace().await;
        let _ = n.price.namespace().invalidate_namespace().await;
        let _ = n.valuation.namespace().invalidate_namespace().await;
    }
    println!("{NODES} nodes, {SYMBOLS} symbols, {reads} reads per node (every 50th a batch)");
    let started = Instant::now();
    let report = scenario::run(&fleet, SYMBOLS, reads, config.max_batch_size).await;
    println!("ran in {:.2} s", started.elapsed().as_secs_f64());
    print_report(&config, &fleet, &report);
    match compression(mode.url(), &config, &fleet).await {
        Some((plain, Some((stored, compressed)))) => println!(
            "portfolio valuation: {plain} bytes serialized, {stored} bytes in Redis (compressed: {compressed})"
        ),
        Some((plain, None)) => println!("portfolio valuation: {plain} bytes serialized"),
        None => {}
    }
    // Clearing a namespace on one node empties it on every node.
    fleet.nodes[0]
        .market
        .invalidate_namespace()
        .await
        .expect("clear");
    let cleared = Instant::now();
    let deadline = cleared + Duration::from_secs(2);
    let ids: Vec<_> = (0..SYMBOLS).map(scenario::symbol).collect();
    while fleet.nodes[1..]
        .iter()
        .any(|n| ids.iter().any(|s| n.market.get_local(s).is_some()))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let left: usize = fleet.nodes[1..]
        .iter()
        .map(|n| {
            ids.iter()
                .filter(|s| n.market.get_local(s).is_some())
                .count()
        })
        .sum();
    println!(
        "cleared `market` on node 0: the other nodes' L1s held {left} quotes after {:.1} ms",
        cleared.elapsed().as_secs_f64() * 1e3
    );
    let health = fleet.nodes[0].cache.health().await;
    let c = &health.connections;
    println!(
        "health: {}, reachable {}, subscribed {}; connections {} configured, {} open, {} reconnecting",
        health.redis, health.redis_reachable, health.subscribed, c.configured, c.open, c.reconnecting
    );
}
