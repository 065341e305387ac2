//! The demo: three cache nodes in one process share one Redis and serve exchange rates and
//! market quotes to readers while a writer updates them write-through (database first, then
//! the cache). Prints a table of per-tier hits and read latencies per node, and checks that no
//! read returned a value older than a write the cache had already acknowledged.
//!
//! Redis: where the cache's `REDIS_*` variables say (`REDIS_URL`, or `REDIS_HOST`...), if set;
//! else a private `redis-server` started for the run; else L1-only (loaders and local copies,
//! no sharing), with a warning.
//!
//! Metrics: Prometheus text format at `http://{METRICS_ADDR}/metrics` (default
//! `127.0.0.1:9898`; `METRICS_ADDR=off` for none) while the demo runs. `DEMO_HOLD_SECS=N`
//! keeps a paced workload going for N more seconds after the table, so Prometheus can scrape
//! it (default 0: exit at once).
//!
//! ```text
//! cargo run --release --example demo            # or ./scripts/demo.sh, which installs Redis
//! DEMO_READS=50000 cargo run --release --example demo
//! DEMO_HOLD_SECS=600 cargo run --release --example demo   # then scrape 127.0.0.1:9898/metrics
//! ```

#[path = "../tests/support/exporter.rs"]
mod exporter;
#[path = "common/redis.rs"]
mod redis_discovery;
#[path = "common/workload.rs"]
mod workload;

use redis_discovery::RedisMode;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiered_cache::{Namespace, NamespacePolicy, NamespaceStats, TieredCache};
use workload::{rng, skewed};

const NODES: usize = 3;
const PAIRS: &[&str] = &[
    "USD:EUR", "USD:GBP", "USD:JPY", "USD:CHF", "USD:NGN", "USD:KES", "USD:GHS", "USD:ZAR",
    "EUR:GBP", "EUR:JPY", "CNGN:USD", "CNGN:EUR", "GBP:JPY", "AUD:USD", "USD:CAD", "USD:INR",
];
const SYMBOLS: usize = 200;
/// What one database read costs in this simulation.
const DB_LATENCY: Duration = Duration::from_millis(2);

/// An exchange rate as the payments service stores it; `db_version` lets the demo check freshness.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rate {
    pair: String,
    rate: Decimal,
    db_version: u64,
}

/// A market quote as the trading system stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    bid: Decimal,
    ask: Decimal,
    ts_ms: i64,
    db_version: u64,
}

/// The system of record the cache sits in front of: slow, and the only source of truth.
#[derive(Default)]
struct Database {
    rates: Mutex<HashMap<String, Rate>>,
    quotes: Mutex<HashMap<String, Quote>>,
    version: AtomicU64,
}

impl Database {
    async fn rate(&self, pair: &str) -> Result<Rate, std::io::Error> {
        tokio::time::sleep(DB_LATENCY).await;
        Ok(self.rates.lock().unwrap()[pair].clone())
    }

    async fn quote(&self, symbol: &str) -> Result<Quote, std::io::Error> {
        tokio::time::sleep(DB_LATENCY).await;
        Ok(self.quotes.lock().unwrap()[symbol].clone())
    }

    fn update_rate(&self, pair: &str, step: i64) -> Rate {
        let v = self.version.fetch_add(1, Relaxed) + 1;
        let mut rates = self.rates.lock().unwrap();
        let r = rates.get_mut(pair).unwrap();
        r.rate += Decimal::new(step, 4);
        r.db_version = v;
        r.clone()
    }

    fn update_quote(&self, symbol: &str, step: i64) {
        let v = self.version.fetch_add(1, Relaxed) + 1;
        let mut quotes = self.quotes.lock().unwrap();
        let q = quotes.get_mut(symbol).unwrap();
        q.bid += Decimal::new(step, 2);
        q.ask = q.bid + Decimal::new(1, 2);
        q.db_version = v;
    }
}

/// Acknowledged write versions per key, for the freshness check.
#[derive(Default)]
struct Acks(Mutex<HashMap<String, (u64, Instant)>>);

impl Acks {
    fn record(&self, key: &str, version: u64) {
        self.0
            .lock()
            .unwrap()
            .insert(key.to_owned(), (version, Instant::now()));
    }
    fn get(&self, key: &str) -> Option<(u64, Instant)> {
        self.0.lock().unwrap().get(key).copied()
    }
}

/// Read latencies of one node, by the tier that answered.
#[derive(Default)]
struct Latencies {
    l1: Vec<Duration>,
    l2: Vec<Duration>,
    loader: Vec<Duration>,
    stale: u64,
    max_stale_after_ack: Duration,
}

fn symbol(i: usize) -> String {
    format!("SYM{i:03}")
}

/// `bound`: the staleness bound; `None` when there is no Redis to coordinate through, so the
/// namespaces trade it for availability and keep serving L1 (each node alone).
async fn build_node(url: Option<&str>, bound: Option<Duration>) -> TieredCache {
    let policy = |p: NamespacePolicy| workload::bounded(p, bound);
    workload::at(url)
        .prefix("v1")
        // Payments seed: exchange rates live 90 s.
        .namespace(
            "rate",
            policy(NamespacePolicy::new(Duration::from_secs(90)).l1_ttl(Duration::from_secs(30))),
        )
        // Trading seed: market data lives 60 s.
        .namespace(
            "quote",
            policy(NamespacePolicy::new(Duration::from_secs(60)).l1_capacity(50_000)),
        )
        .build()
        .expect("valid configuration")
}

fn tier_of(before: &NamespaceStats, after: &NamespaceStats) -> Option<&'static str> {
    if after.l1_hits > before.l1_hits {
        Some("l1")
    } else if after.l2_hits > before.l2_hits {
        Some("l2")
    } else if after.loads > before.loads {
        Some("loader")
    } else {
        None
    }
}

#[allow(clippy::too_many_arguments)]
async fn reader(
    cache: TieredCache,
    rates: Namespace<str, Rate>,
    quotes: Namespace<str, Quote>,
    db: Arc<Database>,
    acks: Arc<Acks>,
    reads: usize,
    mut seed: u64,
) -> HashMap<&'static str, Latencies> {
    let mut out: HashMap<&'static str, Latencies> = HashMap::new();
    for _ in 0..reads {
        let x = rng(&mut seed);
        let is_rate = x % 4 != 0;
        let (ns, key) = if is_rate {
            ("rate", PAIRS[skewed(PAIRS.len(), x >> 8)].to_string())
        } else {
            ("quote", symbol(skewed(SYMBOLS, x >> 8)))
        };
        let ack = acks.get(&key);
        let before = cache.stats().namespace(ns).copied().unwrap_or_default();
        let started = Instant::now();
        let version = if is_rate {
            let db = db.clone();
            let k = key.clone();
            rates
                .get_or_load(&key, || async move { db.rate(&k).await })
                .await
                .expect("loader cannot fail here")
                .db_version
        } else {
            let db = db.clone();
            let k = key.clone();
            quotes
                .get_or_load(&key, || async move { db.quote(&k).await })
                .await
                .expect("loader cannot fail here")
                .db_version
        };
        let took = started.elapsed();
        let after = cache.stats().namespace(ns).copied().unwrap_or_default();
        let lat = out.entry(ns).or_default();
        match tier_of(&before, &after) {
            Some("l1") => lat.l1.push(took),
            Some("l2") => lat.l2.push(took),
            _ => lat.loader.push(took),
        }
        if let Some((acked, at)) = ack {
            if version < acked {
                lat.stale += 1;
                lat.max_stale_after_ack = lat.max_stale_after_ack.max(started - at);
            }
        }
    }
    out
}

async fn writer(
    rates: Namespace<str, Rate>,
    quotes: Namespace<str, Quote>,
    db: Arc<Database>,
    acks: Arc<Acks>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    let (mut sets, mut invalidations) = (0, 0);
    let mut seed = 0x5EED_u64;
    while !stop.load(Relaxed) {
        let x = rng(&mut seed);
        if x % 3 == 0 {
            // Trading: quote updated in the database, then the cache entry invalidated.
            let s = symbol(skewed(SYMBOLS, x >> 8));
            db.update_quote(&s, (x % 7) as i64 - 3);
            let v = db.quotes.lock().unwrap()[&s].db_version;
            if quotes.invalidate(&s).await.is_ok() {
                acks.record(&s, v);
                invalidations += 1;
            }
        } else {
            // Payments: rate upserted in the database, then written through to the cache.
            let pair = PAIRS[skewed(PAIRS.len(), x >> 8)];
            let r = db.update_rate(pair, (x % 11) as i64 - 5);
            let v = r.db_version;
            if rates.set(pair, r).await.is_ok() {
                acks.record(pair, v);
                sets += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    (sets, invalidations)
}

/// Reads every pair on every node and counts answers that differ from the database.
async fn count_disagreements(nodes: &[TieredCache], db: &Arc<Database>) -> usize {
    let mut n = 0;
    for node in nodes {
        let rates = node.namespace::<str, Rate>("rate").unwrap();
        for p in PAIRS {
            let want = db.rates.lock().unwrap()[*p].db_version;
            let db = db.clone();
            let got = rates
                .get_or_load(p, move || async move { db.rate(p).await })
                .await
                .unwrap();
            n += usize::from(got.db_version != want);
        }
    }
    n
}

fn pct(v: &mut [Duration], p: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.1}", v[i].as_secs_f64() * 1e6)
}

#[tokio::main]
async fn main() {
    workload::init_logging("warn");
    let reads: usize = workload::env_number("DEMO_READS", 20_000);
    let hold = Duration::from_secs(workload::env_number("DEMO_HOLD_SECS", 0));
    // Before any cache is built: metric handles are resolved at `build()`.
    serve_metrics();

    let mode = RedisMode::discover();
    let url = mode.url();

    let db = Arc::new(Database::default());
    for (i, p) in PAIRS.iter().enumerate() {
        let rate = Rate {
            pair: p.to_string(),
            rate: Decimal::new(10_000 + i as i64 * 137, 4),
            db_version: 0,
        };
        db.rates.lock().unwrap().insert(p.to_string(), rate);
    }
    for i in 0..SYMBOLS {
        let bid = Decimal::new(10_000 + i as i64 * 25, 2);
        let q = Quote {
            symbol: symbol(i),
            bid,
            ask: bid + Decimal::new(1, 2),
            ts_ms: 1_763_700_000_000,
            db_version: 0,
        };
        db.quotes.lock().unwrap().insert(symbol(i), q);
    }

    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(build_node(url.as_deref(), mode.staleness_bound()).await);
    }
    if !mode.is_none() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nodes.iter().all(|n| n.is_subscribed()) {
            assert!(
                Instant::now() < deadline,
                "nodes could not subscribe to {mode}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A fresh start: forget what an earlier run left under these keys.
        let rates = nodes[0].namespace::<str, Rate>("rate").unwrap();
        let quotes = nodes[0].namespace::<str, Quote>("quote").unwrap();
        let _ = rates.invalidate_namespace().await;
        let _ = quotes.invalidate_namespace().await;
    }
    println!("{NODES} nodes, {reads} reads each, writer updating rates (write-through) and quotes (invalidate) every ~3 ms\n");

    let acks = Arc::new(Acks::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = tokio::spawn(writer(
        nodes[0].namespace("rate").unwrap(),
        nodes[0].namespace("quote").unwrap(),
        db.clone(),
        acks.clone(),
        stop.clone(),
    ));
    let started = Instant::now();
    let mut readers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        readers.push(tokio::spawn(reader(
            n.clone(),
            n.namespace("rate").unwrap(),
            n.namespace("quote").unwrap(),
            db.clone(),
            acks.clone(),
            reads,
            0xC0FFEE + i as u64,
        )));
    }
    let mut results = Vec::new();
    for r in readers {
        results.push(r.await.unwrap());
    }
    stop.store(true, Relaxed);
    let (sets, invalidations) = w.await.unwrap();
    let elapsed = started.elapsed();

    println!(
        "{:<6} {:<6} {:>7} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8}",
        "node",
        "ns",
        "reads",
        "L1 hit",
        "L2 hit",
        "loaded",
        "hit %",
        "L1 p50",
        "L1 p99",
        "L2 p50",
        "L2 p99",
        "load p50",
        "load p99"
    );
    let mut stale_total = 0;
    let mut max_lag = Duration::ZERO;
    for (i, (node, mut lat)) in nodes.iter().zip(results).enumerate() {
        let stats = node.stats();
        for ns in ["rate", "quote"] {
            let s = stats.namespace(ns).unwrap();
            let l = lat.entry(ns).or_default();
            let total = l.l1.len() + l.l2.len() + l.loader.len();
            let hit = 100.0 * (l.l1.len() + l.l2.len()) as f64 / total.max(1) as f64;
            stale_total += l.stale;
            max_lag = max_lag.max(l.max_stale_after_ack);
            println!("{:<6} {:<6} {:>7} {:>8} {:>8} {:>7} {:>6.1}% | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8}",
                format!("n{i}"), ns, total, s.l1_hits, s.l2_hits, s.loads, hit,
                pct(&mut l.l1, 0.5), pct(&mut l.l1, 0.99),
                pct(&mut l.l2, 0.5), pct(&mut l.l2, 0.99),
                pct(&mut l.loader, 0.5), pct(&mut l.loader, 0.99));
        }
    }
    println!(
        "(latencies in µs; a database read costs {} ms here)\n",
        DB_LATENCY.as_millis()
    );
    let applied: u64 = nodes
        .iter()
        .map(|n| {
            n.stats()
                .namespaces
                .iter()
                .map(|(_, s)| s.invalidations_applied)
                .sum::<u64>()
        })
        .sum();
    let refused: u64 = nodes
        .iter()
        .map(|n| {
            n.stats()
                .namespaces
                .iter()
                .map(|(_, s)| s.fills_refused)
                .sum::<u64>()
        })
        .sum();
    println!("writes: {sets} rate sets, {invalidations} quote invalidations in {:.1} s; invalidations applied by other nodes: {applied}; stale fills refused by Redis: {refused}",
        elapsed.as_secs_f64());
    println!("reads that returned a value older than an acknowledged write: {stale_total} (max {:.0} µs after the ack: the propagation window)",
        max_lag.as_secs_f64() * 1e6);

    // After the writes stop, every node must agree with the database: poll until they do.
    let mut disagreements = 0;
    if !mode.is_none() {
        let stopped = Instant::now();
        loop {
            disagreements = count_disagreements(&nodes, &db).await;
            if disagreements == 0 || stopped.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "after the writes stopped: {disagreements} of {} node/pair reads disagree with the database (checked {:.1} ms after the last write)",
            NODES * PAIRS.len(),
            stopped.elapsed().as_secs_f64() * 1e3
        );
    }
    print_health(&nodes, mode.is_none()).await;
    if !hold.is_zero() {
        println!(
            "holding for {} s: writer and paced readers keep running for the scrapers",
            hold.as_secs()
        );
        hold_workload(&nodes, &db, &acks, hold).await;
        println!("hold over");
    }
    if disagreements > 0 {
        std::process::exit(1);
    }
}

/// What `health()`, `stats()` and `redis_info()` report: the figures an operator would watch.
async fn print_health(nodes: &[TieredCache], l1_only: bool) {
    println!();
    for (i, node) in nodes.iter().enumerate() {
        let h = node.health().await;
        let lag = node.stats().namespace("rate").map(|s| s.invalidation_lag);
        let lag = lag.map_or("-".to_string(), |l| {
            format!(
                "p50 {:?} p99 {:?} max {:?} over {} messages",
                l.p50, l.p99, l.max, l.samples
            )
        });
        println!(
            "node {i}: redis reachable {}, subscribed {}, breaker {:?}, last heartbeat {:?} ago; rate invalidation lag {lag}",
            h.redis_reachable, h.subscribed, h.breaker, h.last_heartbeat_age.unwrap_or_default()
        );
    }
    if l1_only {
        return;
    }
    match nodes[0].redis_info().await {
        Ok(info) => println!(
            "redis: keyspace hit ratio {}, used memory {} bytes, slow log {} entries, version {}",
            info.hit_ratio()
                .map_or("-".into(), |r| format!("{:.1} %", r * 100.0)),
            info.used_memory.map_or("-".into(), |m| m.to_string()),
            info.slowlog_len.map_or("-".into(), |n| n.to_string()),
            info.redis_version.as_deref().unwrap_or("-"),
        ),
        Err(e) => println!("redis: INFO failed: {e}"),
    }
}

/// Installs the Prometheus exporter on `METRICS_ADDR` (default 127.0.0.1:9898). A busy port or
/// a bad address is a warning, not a failure: the demo's point is the table.
fn serve_metrics() {
    let addr = std::env::var("METRICS_ADDR")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| exporter::DEFAULT_METRICS_ADDR.to_string());
    if addr == "off" {
        return;
    }
    match addr
        .parse()
        .map_err(|e| format!("METRICS_ADDR={addr}: {e}"))
        .and_then(exporter::install)
    {
        Ok(()) => println!("Metrics: http://{addr}/metrics (Prometheus text format)"),
        Err(e) => println!("WARNING: no metrics endpoint: {e}"),
    }
}

/// The workload again, paced (batches of reads per node, then a pause) until `hold` is over,
/// so a scraper sees every rate move. Bounded: it stops by itself.
async fn hold_workload(
    nodes: &[TieredCache],
    db: &Arc<Database>,
    acks: &Arc<Acks>,
    hold: Duration,
) {
    let until = Instant::now() + hold;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = tokio::spawn(writer(
        nodes[0].namespace("rate").unwrap(),
        nodes[0].namespace("quote").unwrap(),
        db.clone(),
        acks.clone(),
        stop.clone(),
    ));
    let mut readers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (n, db, acks) = (n.clone(), db.clone(), acks.clone());
        readers.push(tokio::spawn(async move {
            let mut seed = 0xB0B + i as u64;
            while Instant::now() < until {
                seed = rng(&mut seed);
                reader(
                    n.clone(),
                    n.namespace("rate").unwrap(),
                    n.namespace("quote").unwrap(),
                    db.clone(),
                    acks.clone(),
                    100,
                    seed,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for r in readers {
        let _ = r.await;
    }
    stop.store(true, Relaxed);
    let _ = w.await;
}
