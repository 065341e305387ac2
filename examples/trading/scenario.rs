//! The trading system's cache design (market quotes, portfolio valuations, risk figures,
//! sessions) on `tiered-cache`: exact `Decimal` prices and timestamps, compression of values
//! over the threshold, batch writes and reads of many symbols, clearing a namespace, sessions
//! extended on use (`get_and_touch`), memoized fetches and calculations (`memoize`, the
//! design's `@cache_market_data` / `@cache_result` decorators), and configuration from the
//! design's `REDIS_*` / `CACHE_*` variables.
//!
//! Shared by `main.rs` (which prints the figures against the design's latency targets) and
//! `tests/seed_trading.rs` (which asserts the promises across nodes).

#![allow(dead_code)]

#[path = "../common/workload.rs"]
pub mod workload;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tiered_cache::{
    CacheKey, Memoized, Namespace, NamespacePolicy, TieredCache, TieredCacheBuilder,
};
pub use workload::Samples;
use workload::{rng, wait_until, RedisEnv};

// ---------------------------------------------------------------------------------------------
// Keys and values.

/// A ticker symbol: `trading:market:AAPL`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Symbol(pub String);
impl CacheKey for Symbol {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}

/// A portfolio: `trading:portfolio:portfolio_123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortfolioId(pub String);
impl CacheKey for PortfolioId {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}

/// A risk calculation of a portfolio: `trading:risk:portfolio_123:var`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RiskKey {
    pub portfolio: String,
    pub metric: String,
}
impl CacheKey for RiskKey {
    fn write_key(&self, out: &mut String) {
        (self.portfolio.as_str(), self.metric.as_str()).write_key(out)
    }
}

/// A market quote. Prices keep their exact scale; the timestamp its nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub symbol: String,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub price: Decimal,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub bid: Decimal,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub ask: Decimal,
    pub volume: u64,
    pub timestamp: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub symbol: String,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub quantity: Decimal,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub value: Decimal,
}

/// A portfolio valuation: with a few dozen positions, well over 1 KiB, so it is compressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Valuation {
    pub portfolio_id: String,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub total_value: Decimal,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub total_pnl: Decimal,
    pub positions: Vec<Position>,
    pub as_of: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskFigures {
    #[serde(with = "tiered_cache::exact::decimal")]
    pub var_95: Decimal,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub beta: Decimal,
    pub computed_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    pub started: SystemTime,
}

/// The namespaces, and which TTL variable each takes.
pub const MARKET: &str = "market";
pub const PRICE: &str = "price";
pub const PORTFOLIO: &str = "portfolio";
pub const RISK: &str = "risk";
pub const SESSION: &str = "session";
pub const GENERAL: &str = "general";

// ---------------------------------------------------------------------------------------------
// Configuration from the design's environment variables.

/// A variable that was set to something unusable.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// Not a number of the expected kind.
    NotANumber { var: &'static str, value: String },
    /// Not `true`/`false` (or `1`/`0`, `yes`/`no`).
    NotABool { var: &'static str, value: String },
    /// A number outside what the variable allows.
    OutOfRange {
        var: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    /// `CACHE_KEY_PREFIX` is not 1 to 64 characters of `[A-Za-z0-9_.-]`.
    BadPrefix(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotANumber { var, value } => write!(f, "{var}={value:?} is not a number"),
            ConfigError::NotABool { var, value } => {
                write!(f, "{var}={value:?} is not true or false")
            }
            ConfigError::OutOfRange {
                var,
                value,
                min,
                max,
            } => write!(f, "{var}={value} is outside {min}..={max}"),
            ConfigError::BadPrefix(p) => write!(
                f,
                "CACHE_KEY_PREFIX={p:?} must be 1 to 64 characters of [A-Za-z0-9_.-]"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The design's variables, parsed and checked.
///
/// | variable | default | used as |
/// |---|---|---|
/// | `REDIS_URL`, or `REDIS_HOST`, `REDIS_PORT`, `REDIS_DB` | 127.0.0.1, 6379, 0 | handed to the cache, which reads them itself (as every `REDIS_*` variable of `docs/configuration.md`) and checks them at `build()` |
/// | `REDIS_PASSWORD` (and `REDIS_USERNAME`) | none | the cache's credentials; never printed |
/// | `REDIS_SSL` | false | `true`: TLS (with `REDIS_TLS_CA_FILE` for a private CA) |
/// | `REDIS_MAX_CONNECTIONS` | 1 | the multiplexed connections the cache spreads its commands over (the design's 20 is more than one process needs: see `benches/connections.rs`) |
/// | `CACHE_DEFAULT_TTL` (s) | 3600 | the `general` namespace |
/// | `CACHE_MARKET_DATA_TTL` (s) | 60 | `market` and `price` |
/// | `CACHE_PORTFOLIO_TTL` (s) | 300 | `portfolio` |
/// | `CACHE_RISK_TTL` (s) | 180 | `risk` |
/// | `CACHE_SESSION_TTL` (s) | 1800 | `session`, extended on use; every TTL 1..=2 592 000 |
/// | `CACHE_KEY_PREFIX` | trading | the key prefix (`trading:market:AAPL`) |
/// | `CACHE_COMPRESS_THRESHOLD` (bytes) | 1024 | compress payloads above it; 0 turns compression off; at most 16 MiB |
/// | `CACHE_MAX_BATCH_SIZE` | 100 | the largest `batch().set`/`batch().get` the example sends (1..=10 000) |
/// | `CACHE_ENABLE_METRICS` | true | accepted: the cache always emits its metrics through the `metrics` facade (install a recorder to collect them); `true` prints per-namespace stats |
/// | `CACHE_LOG_SLOW_OPS`, `CACHE_SLOW_OP_THRESHOLD` (s) | true, 0.1 | the example counts and reports operations slower than the threshold (0 < t <= 60) |
#[derive(Debug, Clone, PartialEq)]
pub struct TradingConfig {
    /// The `REDIS_*` variables, for the cache to read.
    pub redis_env: RedisEnv,
    /// Where Redis is when the run chose it (a private server): over the variables.
    pub redis_url: Option<String>,
    pub default_ttl: Duration,
    pub market_data_ttl: Duration,
    pub portfolio_ttl: Duration,
    pub risk_ttl: Duration,
    pub session_ttl: Duration,
    pub key_prefix: String,
    /// `None`: compression off.
    pub compress_threshold: Option<usize>,
    pub max_batch_size: usize,
    pub enable_metrics: bool,
    pub log_slow_ops: bool,
    pub slow_op_threshold: Duration,
}

struct Vars<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn raw(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn number(
        &self,
        var: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Result<f64, ConfigError> {
        let value = match self.raw(var) {
            None => default,
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or(ConfigError::NotANumber { var, value: s })?,
        };
        if !(min..=max).contains(&value) {
            return Err(ConfigError::OutOfRange {
                var,
                value,
                min,
                max,
            });
        }
        Ok(value)
    }

    fn whole(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        if let Some(s) = self.raw(var) {
            if s.parse::<u64>().is_err() {
                return Err(ConfigError::NotANumber { var, value: s });
            }
        }
        self.number(var, default as f64, min as f64, max as f64)
            .map(|v| v as u64)
    }

    fn ttl(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.whole(var, default, 1, 30 * 86_400)
            .map(Duration::from_secs)
    }

    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var).map(|s| s.to_ascii_lowercase()) {
            None => Ok(default),
            Some(s) => match s.as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::NotABool { var, value: s }),
            },
        }
    }
}

impl TradingConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars(get);
        let redis_env = RedisEnv::read(&v.0);
        let key_prefix = v
            .raw("CACHE_KEY_PREFIX")
            .unwrap_or_else(|| "trading".into());
        let name_ok = (1..=64).contains(&key_prefix.len())
            && key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            return Err(ConfigError::BadPrefix(key_prefix));
        }
        let compress = v.whole("CACHE_COMPRESS_THRESHOLD", 1024, 0, 16 << 20)? as usize;
        Ok(Self {
            redis_env,
            redis_url: None,
            default_ttl: v.ttl("CACHE_DEFAULT_TTL", 3600)?,
            market_data_ttl: v.ttl("CACHE_MARKET_DATA_TTL", 60)?,
            portfolio_ttl: v.ttl("CACHE_PORTFOLIO_TTL", 300)?,
            risk_ttl: v.ttl("CACHE_RISK_TTL", 180)?,
            session_ttl: v.ttl("CACHE_SESSION_TTL", 1800)?,
            key_prefix,
            compress_threshold: (compress > 0).then_some(compress),
            max_batch_size: v.whole("CACHE_MAX_BATCH_SIZE", 100, 1, 10_000)? as usize,
            enable_metrics: v.flag("CACHE_ENABLE_METRICS", true)?,
            log_slow_ops: v.flag("CACHE_LOG_SLOW_OPS", true)?,
            slow_op_threshold: Duration::from_secs_f64(v.number(
                "CACHE_SLOW_OP_THRESHOLD",
                0.1,
                1e-6,
                60.0,
            )?),
        })
    }

    /// The cache builder: Redis, prefix, and one namespace per kind of data with its TTL and
    /// the compression threshold. `bound`: the staleness bound (`None`: no Redis, each node
    /// serves its L1 alone).
    pub fn builder(&self, bound: Option<Duration>) -> TieredCacheBuilder {
        let policy = |ttl: Duration| {
            let p = NamespacePolicy::new(ttl).compress_above(self.compress_threshold);
            workload::bounded(p, bound)
        };
        self.redis_env
            .builder(self.redis_url.as_deref())
            .prefix(&self.key_prefix)
            .namespace(MARKET, policy(self.market_data_ttl).l1_capacity(50_000))
            // Memoized fetches and calculations: one call per key across the fleet, not per node.
            .namespace(
                PRICE,
                policy(self.market_data_ttl).fleet_single_flight(Duration::from_secs(2)),
            )
            .namespace(
                PORTFOLIO,
                policy(self.portfolio_ttl).fleet_single_flight(Duration::from_secs(2)),
            )
            .namespace(RISK, policy(self.risk_ttl))
            .namespace(SESSION, policy(self.session_ttl))
            .namespace(GENERAL, policy(self.default_ttl))
    }
}

// ---------------------------------------------------------------------------------------------
// The sources the cache sits in front of: a market-data feed and a portfolio service.

/// Deterministic prices: 100 + the symbol's index, with four decimals.
pub fn symbol(i: usize) -> Symbol {
    Symbol(format!("SYM{i:04}"))
}

/// A quote for symbol `i` at revision `rev`, timestamped to the nanosecond.
pub fn quote(i: usize, rev: u64) -> Quote {
    let price = Decimal::new(1_000_000 + i as i64 * 1_234 + rev as i64, 4);
    Quote {
        symbol: symbol(i).0,
        price,
        bid: price - Decimal::new(5, 4),
        ask: price + Decimal::new(5, 4),
        volume: 1_000_000 + i as u64,
        timestamp: UNIX_EPOCH + Duration::new(1_764_000_000 + rev, 123_456_789 + i as u32),
    }
}

/// The external price API and the portfolio service: each call is counted and takes a while.
#[derive(Default)]
pub struct Sources {
    pub price_fetches: AtomicU64,
    pub valuations: AtomicU64,
}

impl Sources {
    /// The external API call the design wraps in `@cache_market_data`.
    pub async fn fetch_price(&self, sym: &Symbol) -> Result<Quote, std::io::Error> {
        self.price_fetches.fetch_add(1, Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let i: usize = sym
            .0
            .trim_start_matches("SYM")
            .parse()
            .map_err(std::io::Error::other)?;
        Ok(quote(i, 0))
    }

    /// The calculation the design wraps in `@cache_result(namespace="portfolio")`: 40
    /// positions, so the result is several KiB.
    pub async fn value_portfolio(&self, id: &PortfolioId) -> Result<Valuation, std::io::Error> {
        self.valuations.fetch_add(1, Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let positions: Vec<Position> = (0..40)
            .map(|i| {
                let q = quote(i, 0);
                let quantity = Decimal::new(100 + i as i64, 0);
                Position {
                    value: q.price * quantity,
                    symbol: q.symbol,
                    quantity,
                }
            })
            .collect();
        let total_value = positions.iter().map(|p| p.value).sum();
        Ok(Valuation {
            portfolio_id: id.0.clone(),
            total_value,
            total_pnl: Decimal::new(500_000, 2),
            positions,
            as_of: UNIX_EPOCH + Duration::new(1_764_000_000, 987_654_321),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One node: its namespaces and memoized functions.

/// One node's handles on the trading data.
#[derive(Clone)]
pub struct Node {
    pub cache: TieredCache,
    pub market: Namespace<Symbol, Quote>,
    pub risk: Namespace<RiskKey, RiskFigures>,
    pub sessions: Namespace<str, Session>,
    /// `fetch_price`, memoized in `price` (TTL: market data).
    pub price: Memoized<Symbol, Quote>,
    /// `value_portfolio`, memoized in `portfolio` (TTL: portfolio).
    pub valuation: Memoized<PortfolioId, Valuation>,
}

impl Node {
    pub fn new(cache: TieredCache, sources: Arc<Sources>) -> tiered_cache::Result<Self> {
        Ok(Self {
            market: cache.namespace(MARKET)?,
            risk: cache.namespace(RISK)?,
            sessions: cache.namespace(SESSION)?,
            price: {
                let s = sources.clone();
                cache.memoize::<Symbol, Quote, _, _, _>(PRICE, move |sym| {
                    let s = s.clone();
                    async move { s.fetch_price(&sym).await }
                })?
            },
            valuation: cache.memoize::<PortfolioId, Valuation, _, _, _>(PORTFOLIO, move |id| {
                let s = sources.clone();
                async move { s.value_portfolio(&id).await }
            })?,
            cache,
        })
    }

    /// Writes quotes in batches of at most `max_batch`; returns the time each batch took.
    pub async fn publish_quotes(
        &self,
        quotes: Vec<Quote>,
        max_batch: usize,
    ) -> Vec<(usize, Duration)> {
        let mut out = Vec::new();
        let mut quotes = quotes.into_iter().peekable();
        while quotes.peek().is_some() {
            let batch: Vec<(Symbol, Quote)> = quotes
                .by_ref()
                .take(max_batch)
                .map(|q| (Symbol(q.symbol.clone()), q))
                .collect();
            let started = Instant::now();
            let results = self
                .market
                .batch()
                .set(batch.iter().map(|(s, q)| (s, q.clone())))
                .await;
            out.push((batch.len(), started.elapsed()));
            for r in results {
                r.expect("batch write");
            }
        }
        out
    }
}

/// Several nodes (cache instances) on one Redis, over the same sources.
pub struct Fleet {
    pub nodes: Vec<Node>,
    pub sources: Arc<Sources>,
}

impl Fleet {
    pub async fn start(
        config: &TradingConfig,
        nodes: usize,
        bound: Option<Duration>,
        tweak: impl Fn(TieredCacheBuilder) -> TieredCacheBuilder,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let sources = Arc::new(Sources::default());
        let mut built = Vec::new();
        for _ in 0..nodes {
            let cache = tweak(config.builder(bound)).build()?;
            built.push(Node::new(cache, sources.clone())?);
        }
        Ok(Self {
            nodes: built,
            sources,
        })
    }

    /// Waits (up to `within`) until every node listens on the bus.
    pub async fn subscribed(&self, within: Duration) -> bool {
        wait_until(within, || {
            self.nodes.iter().all(|n| n.cache.is_subscribed())
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// The workload and what it measures.

/// What a workload run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Single-key reads of quotes (L1 or Redis).
    pub get: Samples,
    /// Single-key writes.
    pub set: Samples,
    /// Batch reads: time per key, per batch.
    pub batch_per_key: Samples,
    /// Batch writes: time per key, per batch.
    pub batch_set_per_key: Samples,
    pub batch_keys: u64,
}

/// The market-data workload: node 0 publishes every symbol in batches, then every node reads
/// them singly and in batches of `batch` while node 0 republishes a few, and each node runs the
/// memoized price fetch and portfolio valuation and uses a session.
pub async fn run(fleet: &Fleet, symbols: usize, reads_per_node: usize, batch: usize) -> Report {
    let mut report = Report::default();
    let writer = &fleet.nodes[0];
    let all: Vec<Quote> = (0..symbols).map(|i| quote(i, 0)).collect();
    for (n, took) in writer.publish_quotes(all, batch).await {
        report.batch_set_per_key.0.push(took / n as u32);
    }
    let tasks: Vec<_> = fleet
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut r = Report::default();
                let mut seed = 0x7EAD_u64 + i as u64;
                for op in 0..reads_per_node {
                    let x = rng(&mut seed);
                    if op % 50 == 0 {
                        // A batch read of `batch` symbols.
                        let keys: Vec<Symbol> = (0..batch)
                            .map(|k| symbol((x as usize + k * 7) % symbols))
                            .collect();
                        let started = Instant::now();
                        let got = node.market.batch().get(keys.iter()).await;
                        r.batch_per_key
                            .0
                            .push(started.elapsed() / keys.len() as u32);
                        r.batch_keys += got.iter().filter(|v| v.is_some()).count() as u64;
                    } else if i == 0 && op % 20 == 0 {
                        let s = (x as usize) % symbols;
                        let started = Instant::now();
                        node.market
                            .set(&symbol(s), quote(s, op as u64))
                            .await
                            .expect("set");
                        r.set.0.push(started.elapsed());
                    } else {
                        let s = symbol((x as usize >> 3) % symbols);
                        let started = Instant::now();
                        node.market.get(&s).await;
                        r.get.0.push(started.elapsed());
                    }
                }
                // The memoized calls and a session, as a request handler would make them.
                node.price.get(&symbol(1)).await.expect("price");
                node.valuation
                    .get(&PortfolioId("portfolio_123".into()))
                    .await
                    .expect("valuation");
                let sid = format!("session_{i}");
                node.sessions
                    .set(
                        &sid,
                        Session {
                            user: format!("trader_{i}"),
                            started: SystemTime::now(),
                        },
                    )
                    .await
                    .expect("session");
                node.sessions
                    .get_and_touch(&sid)
                    .await
                    .expect("session read");
                r
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("node task");
        report.get.0.extend(r.get.0);
        report.set.0.extend(r.set.0);
        report.batch_per_key.0.extend(r.batch_per_key.0);
        report.batch_keys += r.batch_keys;
    }
    report
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<TradingConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TradingConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn the_documents_values_parse() {
        let c = parse(&[
            ("REDIS_HOST", "localhost"),
            ("REDIS_PORT", "6379"),
            ("REDIS_DB", "0"),
            ("REDIS_PASSWORD", "your_password"),
            ("REDIS_SSL", "false"),
            ("REDIS_MAX_CONNECTIONS", "20"),
            ("CACHE_DEFAULT_TTL", "3600"),
            ("CACHE_MARKET_DATA_TTL", "60"),
            ("CACHE_PORTFOLIO_TTL", "300"),
            ("CACHE_RISK_TTL", "180"),
            ("CACHE_SESSION_TTL", "1800"),
            ("CACHE_KEY_PREFIX", "trading"),
            ("CACHE_COMPRESS_THRESHOLD", "1024"),
            ("CACHE_MAX_BATCH_SIZE", "100"),
            ("CACHE_ENABLE_METRICS", "true"),
            ("CACHE_LOG_SLOW_OPS", "true"),
            ("CACHE_SLOW_OP_THRESHOLD", "0.1"),
        ])
        .unwrap();
        assert_eq!(c.redis_env.0["REDIS_PASSWORD"], "your_password");
        assert_eq!(c.redis_env.0["REDIS_MAX_CONNECTIONS"], "20");
        assert!(!format!("{c:?}").contains("your_password"));
        assert_eq!(c.market_data_ttl, Duration::from_secs(60));
        assert_eq!(c.session_ttl, Duration::from_secs(1800));
        assert_eq!(c.compress_threshold, Some(1024));
        assert_eq!(c.slow_op_threshold, Duration::from_millis(100));
        assert_eq!(c.key_prefix, "trading");
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.redis_env, RedisEnv::default());
        assert_eq!(
            TradingConfig {
                redis_env: c.redis_env.clone(),
                ..defaults
            },
            c
        );
    }

    #[tokio::test]
    async fn the_builder_accepts_the_configuration() {
        // No Redis needed: build() does not connect.
        parse(&[("CACHE_COMPRESS_THRESHOLD", "0")])
            .unwrap()
            .builder(Some(NamespacePolicy::DEFAULT_STALENESS_BOUND))
            // This configuration only: not the REDIS_* variables of the process running it.
            .environment(|_| None)
            .build()
            .unwrap();
    }

    #[test]
    fn bad_values_are_typed_errors() {
        assert!(matches!(
            parse(&[("CACHE_MARKET_DATA_TTL", "1m")]),
            Err(ConfigError::NotANumber {
                var: "CACHE_MARKET_DATA_TTL",
                ..
            })
        ));
        assert!(matches!(
            parse(&[("CACHE_SESSION_TTL", "0")]),
            Err(ConfigError::OutOfRange {
                var: "CACHE_SESSION_TTL",
                ..
            })
        ));
        assert!(matches!(
            parse(&[("CACHE_RISK_TTL", "1.5")]),
            Err(ConfigError::NotANumber { .. })
        ));
        assert!(matches!(
            parse(&[("CACHE_KEY_PREFIX", "trading:prod")]),
            Err(ConfigError::BadPrefix(_))
        ));
        assert!(matches!(
            parse(&[("CACHE_SLOW_OP_THRESHOLD", "-1")]),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse(&[("CACHE_SLOW_OP_THRESHOLD", "NaN")]),
            Err(ConfigError::NotANumber { .. })
        ));
        assert!(matches!(
            parse(&[("CACHE_MAX_BATCH_SIZE", "0")]),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert_eq!(
            parse(&[("CACHE_COMPRESS_THRESHOLD", "0")])
                .unwrap()
                .compress_threshold,
            None
        );
    }

    #[tokio::test]
    async fn the_cache_checks_the_redis_variables_at_build() {
        let build = |vars: &[(&str, &str)]| {
            let config = parse(vars).unwrap();
            workload::try_build(config.builder(Some(NamespacePolicy::DEFAULT_STALENESS_BOUND)))
        };
        for (var, value) in [
            ("REDIS_PORT", "70000"),
            ("REDIS_SSL", "maybe"),
            ("REDIS_MAX_CONNECTIONS", "0"),
        ] {
            let err = build(&[(var, value)]).unwrap_err();
            assert!(err.contains(var), "{var}={value}: {err}");
        }
        let err = build(&[
            ("REDIS_URL", "redis://10.0.0.5:6380/2"),
            ("REDIS_HOST", "10.0.0.6"),
            ("REDIS_PASSWORD", "marker-7f3a"),
        ])
        .unwrap_err();
        assert!(
            err.contains("REDIS_URL") && !err.contains("marker-7f3a"),
            "{err}"
        );
        build(&[
            ("REDIS_HOST", "10.0.0.5"),
            ("REDIS_SSL", "true"),
            ("REDIS_MAX_CONNECTIONS", "20"),
        ])
        .unwrap();
    }
}
