//! The pieces every example's workload uses: latency samples, dice and a bounded wait. One
//! copy for all of them.
// Each example uses its own share of these.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tiered_cache::{NamespacePolicy, TieredCache, TieredCacheBuilder};

/// `policy` with its staleness bound: how long L1 may serve without proof that invalidations
/// still reach this node. `None`: there is no Redis to coordinate through, so L1 serves each
/// node alone instead of being bypassed.
pub fn bounded(policy: NamespacePolicy, bound: Option<Duration>) -> NamespacePolicy {
    match bound {
        Some(bound) => policy.staleness_bound(bound),
        None => policy.unbounded_staleness(),
    }
}

/// The cache's `REDIS_*` variables (`tiered_cache::config::ENV_VARS`) as a seed's configuration
/// read them, for the cache to resolve and check at `build()`. `Debug` names the variables
/// without their values (one may be a password).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisEnv(pub BTreeMap<String, String>);

impl RedisEnv {
    /// The variables `get` has a non-empty value for.
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Self {
        let set = |var: &&str| get(var).filter(|v| !v.trim().is_empty());
        Self(
            (tiered_cache::config::ENV_VARS.iter())
                .filter_map(|var| set(var).map(|value| (var.to_string(), value)))
                .collect(),
        )
    }

    /// A builder that reads these variables (and no others) where the process environment
    /// would be read; `url`, when the run chose its Redis, overrides the address.
    pub fn builder(&self, url: Option<&str>) -> TieredCacheBuilder {
        let vars = self.0.clone();
        at(url).environment(move |var| vars.get(var).cloned())
    }
}

/// A builder pointed at `url`, or, with `None`, at what the process's `REDIS_*` variables say
/// (the builder reads them itself).
pub fn at(url: Option<&str>) -> TieredCacheBuilder {
    let b = TieredCache::builder();
    match url {
        Some(url) => b.redis_url(url),
        None => b,
    }
}

/// What `build()` says of `b`: `Ok` (the cache is dropped at once) or the error's text.
pub fn try_build(b: TieredCacheBuilder) -> Result<(), String> {
    b.build().map(drop).map_err(|e| e.to_string())
}

impl std::fmt::Debug for RedisEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The configuration read from the environment, or exit 2 saying why it was rejected.
pub fn config_or_exit<C, E: std::fmt::Display>(config: Result<C, E>) -> C {
    config.unwrap_or_else(|e| {
        eprintln!("configuration rejected: {e}");
        std::process::exit(2)
    })
}

/// Logs to stderr at level `default`, unless `RUST_LOG` says otherwise.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}

/// A number from the environment variable `name`; `default` when it is unset or unreadable.
pub fn env_number<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies of one kind of operation.
#[derive(Debug, Default, Clone)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn mean(&self) -> Duration {
        mean(&self.0)
    }

    pub fn p99(&self) -> Duration {
        p99(&self.0)
    }

    pub fn slower_than(&self, t: Duration) -> usize {
        self.0.iter().filter(|d| **d > t).count()
    }
}

/// The mean (zero for no samples).
pub fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.iter().sum::<Duration>() / v.len() as u32
}

/// The 99th percentile, nearest rank (zero for no samples).
pub fn p99(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(((v.len().max(1) - 1) as f64 * 0.99).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `n` as a percentage of `of` (0 of 0 is 0 %).
pub fn pct(n: usize, of: usize) -> f64 {
    100.0 * n as f64 / of.max(1) as f64
}

/// xorshift64*: reproducible and dependency-free.
pub fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Skewed choice of an index below `n` from a random `x`: low indexes are hot, as real
/// currency pairs, symbols, wallets and corridors are.
pub fn skewed(n: usize, x: u64) -> usize {
    let u = (x % 10_000) as f64 / 10_000.0;
    ((u * u * u) * n as f64) as usize % n
}

/// Polls `cond` every 10 ms until it holds (`true`) or `within` has passed (`false`).
pub async fn wait_until(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
