//! Configuration: the builder, per-namespace policies, and the checks `build()` runs.

use crate::error::{Error, Result};
use crate::key::validate_name;
use std::time::Duration;

/// The Redis URL used when none is given and `REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The key prefix used when none is given: the `v1:{namespace}:{id}` convention.
pub const DEFAULT_PREFIX: &str = "v1";

/// How one namespace is cached: TTLs on both tiers and the size of its L1.
///
/// ```
/// use std::time::Duration;
/// use tiered_cache::NamespacePolicy;
///
/// // Exchange rates: 90 s in Redis, at most 10 s in process memory, 50 000 pairs.
/// let rates = NamespacePolicy::new(Duration::from_secs(90))
///     .l1_ttl(Duration::from_secs(10))
///     .l1_capacity(50_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub(crate) l2_ttl: Duration,
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) l1_capacity: u64,
    pub(crate) staleness_bound: Option<Duration>,
}

impl NamespacePolicy {
    /// Default cap on the L1 TTL when none is set: the local tier is a copy, and a short life
    /// bounds how long a copy can outlive an invalidation that never arrived.
    pub const DEFAULT_L1_TTL_CAP: Duration = Duration::from_secs(60);
    /// Default L1 capacity, in entries.
    pub const DEFAULT_L1_CAPACITY: u64 = 10_000;
    /// Default staleness bound.
    pub const DEFAULT_STALENESS_BOUND: Duration = Duration::from_millis(250);

    /// A policy whose values live `l2_ttl` in Redis.
    ///
    /// Defaults: L1 TTL = min(`l2_ttl`, 60 s); L1 capacity = 10 000 entries; staleness bound
    /// 250 ms.
    pub fn new(l2_ttl: Duration) -> Self {
        Self {
            l2_ttl,
            l1_ttl: None,
            l1_capacity: Self::DEFAULT_L1_CAPACITY,
            staleness_bound: Some(Self::DEFAULT_STALENESS_BOUND),
        }
    }

    /// The longest this namespace's L1 may go on serving without proof that invalidations
    /// still reach this node. Every message delivered on the bus (each node publishes a
    /// heartbeat) is such proof; when none has arrived for this long, or the subscriber is
    /// disconnected, reads skip L1 and go to Redis (or the loader), and nothing is added to
    /// L1, until the bus is back and in sequence. The switch is made at 70 % of the bound, to
    /// land within it. Must be at least 2.5 times the heartbeat interval. Default: 250 ms.
    pub fn staleness_bound(mut self, bound: Duration) -> Self {
        self.staleness_bound = Some(bound);
        self
    }

    /// Availability over freshness: keep serving L1 while the bus is down, so a node without
    /// Redis still answers from memory. Staleness is then bounded only by the L1 TTL.
    pub fn unbounded_staleness(mut self) -> Self {
        self.staleness_bound = None;
        self
    }

    /// How long a value stays in this process's L1; at most the L2 TTL.
    /// Default: min(L2 TTL, 60 s).
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// The most entries this namespace keeps in L1 (moka evicts by TinyLFU beyond it).
    /// Default: 10 000.
    pub fn l1_capacity(mut self, entries: u64) -> Self {
        self.l1_capacity = entries;
        self
    }

    /// The TTL of values in Redis.
    pub fn l2_ttl_value(&self) -> Duration {
        self.l2_ttl
    }

    /// The effective L1 TTL.
    pub fn l1_ttl_value(&self) -> Duration {
        self.l1_ttl
            .unwrap_or_else(|| self.l2_ttl.min(Self::DEFAULT_L1_TTL_CAP))
    }

    fn validate(&self, name: &str, heartbeat: Duration) -> Result<(), String> {
        if let Some(bound) = self.staleness_bound {
            if bound.as_secs_f64() < heartbeat.as_secs_f64() * 2.5 {
                return Err(format!(
                    "namespace {name:?}: staleness bound {bound:?} is shorter than 2.5 times \
                     the heartbeat interval {heartbeat:?}: it would trip between heartbeats"
                ));
            }
        }
        if self.l2_ttl.is_zero() {
            return Err(format!(
                "namespace {name:?}: L2 TTL must be greater than zero"
            ));
        }
        if self.l2_ttl.as_millis() > i64::MAX as u128 {
            return Err(format!("namespace {name:?}: L2 TTL is out of range"));
        }
        let l1 = self.l1_ttl_value();
        if l1.is_zero() {
            return Err(format!(
                "namespace {name:?}: L1 TTL must be greater than zero"
            ));
        }
        if l1 > self.l2_ttl {
            return Err(format!(
                "namespace {name:?}: L1 TTL {l1:?} is longer than its L2 TTL {:?}",
                self.l2_ttl
            ));
        }
        if self.l1_capacity == 0 {
            return Err(format!(
                "namespace {name:?}: L1 capacity must be at least 1"
            ));
        }
        Ok(())
    }
}

/// Builds a [`TieredCache`](crate::TieredCache). Every setter documents its default;
/// [`build`](Self::build) checks the whole configuration and returns an error instead of a cache
/// that would misbehave later.
#[derive(Debug, Clone)]
pub struct TieredCacheBuilder {
    pub(crate) redis_url: Option<String>,
    pub(crate) prefix: String,
    pub(crate) namespaces: Vec<(String, NamespacePolicy)>,
    pub(crate) l2_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) track_external_writes: bool,
    pub(crate) breaker_threshold: u32,
    pub(crate) outbox_capacity: usize,
    pub(crate) outbox_max_bytes: usize,
    pub(crate) strict_writes: bool,
}

impl Default for TieredCacheBuilder {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            namespaces: Vec::new(),
            l2_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            reconnect_backoff: Duration::from_millis(500),
            heartbeat: Duration::from_millis(100),
            track_external_writes: false,
            breaker_threshold: Self::DEFAULT_BREAKER_THRESHOLD,
            outbox_capacity: Self::DEFAULT_OUTBOX_CAPACITY,
            outbox_max_bytes: Self::DEFAULT_OUTBOX_MAX_BYTES,
            strict_writes: false,
        }
    }
}

impl TieredCacheBuilder {
    /// Default for [`breaker_threshold`](Self::breaker_threshold).
    pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;
    /// Default for [`outbox_capacity`](Self::outbox_capacity).
    pub const DEFAULT_OUTBOX_CAPACITY: usize = 10_000;
    /// Default for [`outbox_max_bytes`](Self::outbox_max_bytes): 16 MiB.
    pub const DEFAULT_OUTBOX_MAX_BYTES: usize = 16 << 20;

    /// The Redis server. Default: the `REDIS_URL` environment variable, else
    /// `redis://127.0.0.1:6379`. Add `/N` to select database N.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// The first part of every Redis key and of the bus channel's name. Default: `v1`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Adds a namespace and its policy. Names use `[A-Za-z0-9_.-]` and do not start with `_`.
    pub fn namespace(mut self, name: impl Into<String>, policy: NamespacePolicy) -> Self {
        self.namespaces.push((name.into(), policy));
        self
    }

    /// The longest any single Redis call may take before the cache gives up on it and degrades
    /// (serves from L1 or the loader). Default: 250 ms.
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// The longest a connection attempt to Redis may take. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The circuit breaker's cool-down: once open, how long calls skip Redis (reads answered
    /// from L1 or the loader, writes queued, at once) before one probe is let through. Also
    /// the outbox's retry interval and the subscriber's longest reconnect delay.
    /// Default: 500 ms.
    pub fn reconnect_backoff(mut self, backoff: Duration) -> Self {
        self.reconnect_backoff = backoff;
        self
    }

    /// How many consecutive Redis calls must time out or fail at the connection level before
    /// the circuit breaker opens. A dead or hung Redis then costs callers at most this many
    /// L2 timeouts; an error reply, or a success, resets the count. At least 1.
    /// Default: 3 (one lost packet or slow call does not cut a node off Redis).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures;
        self
    }

    /// The most keys the outbox holds: writes and invalidations made while Redis is
    /// unreachable, newest per key, replayed when it is back. When full, an operation on a key
    /// not yet queued turns into a clear of its namespace that replaces that namespace's queued
    /// keys (safe: every node drops the namespace; counted as `dropped`). At least 1.
    /// Default: 10 000 keys.
    pub fn outbox_capacity(mut self, keys: usize) -> Self {
        self.outbox_capacity = keys;
        self
    }

    /// The most bytes of encoded values the outbox holds. A write that would go over is queued
    /// as an invalidation of its key instead (safe: every node drops the key; counted as
    /// `dropped`). 0 queues invalidations only. Default: 16 MiB.
    pub fn outbox_max_bytes(mut self, bytes: usize) -> Self {
        self.outbox_max_bytes = bytes;
        self
    }

    /// Fail `set`, `invalidate` and `invalidate_namespace` with `Err(Unavailable)` when Redis
    /// is unreachable, instead of queuing them in the outbox and returning `Ok`. Per handle:
    /// [`Namespace::strict_writes`](crate::Namespace::strict_writes). Default: off (degrade,
    /// do not fail: callers of a cache rarely have anything better to do with the error).
    pub fn strict_writes(mut self, strict: bool) -> Self {
        self.strict_writes = strict;
        self
    }

    /// How often this node publishes a heartbeat on the bus (carrying the current version, so
    /// receivers notice lost messages even when no write follows) and pings its subscriber
    /// connection (so a dead or half-open link is replaced). Default: 100 ms.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Also evict L1 copies of keys written or deleted outside the library (`redis-cli`,
    /// another service), through Redis's `CLIENT TRACKING` in broadcast mode on the prefix.
    /// Costs one more connection per cache, and a writer's own fresh L1 copy is read back once
    /// after each write. Needs Redis 6 or later. Default: off.
    pub fn track_external_writes(mut self, on: bool) -> Self {
        self.track_external_writes = on;
        self
    }

    /// The URL that `build()` will use.
    pub(crate) fn effective_url(&self) -> String {
        self.redis_url
            .clone()
            .or_else(|| std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
    }

    /// Checks everything that does not need Redis.
    pub(crate) fn validate(&self) -> Result<()> {
        let config = |msg: String| Error::Config(msg);
        validate_name("prefix", &self.prefix).map_err(config)?;
        if self.namespaces.is_empty() {
            return Err(config("no namespace configured".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, policy) in &self.namespaces {
            validate_name("namespace", name).map_err(config)?;
            if name.starts_with('_') {
                return Err(config(format!(
                    "namespace {name:?} starts with '_', which is reserved"
                )));
            }
            if !seen.insert(name.as_str()) {
                return Err(config(format!("namespace {name:?} is configured twice")));
            }
            policy.validate(name, self.heartbeat).map_err(config)?;
        }
        for (what, d) in [
            ("l2_timeout", self.l2_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_backoff", self.reconnect_backoff),
            ("heartbeat", self.heartbeat),
        ] {
            if d.is_zero() {
                return Err(config(format!("{what} must be greater than zero")));
            }
        }
        if self.breaker_threshold == 0 {
            return Err(config("breaker_threshold must be at least 1".into()));
        }
        if self.outbox_capacity == 0 {
            return Err(config(
                "outbox_capacity must be at least 1 (use strict_writes to queue nothing)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> TieredCacheBuilder {
        TieredCacheBuilder::default()
            .namespace("rate", NamespacePolicy::new(Duration::from_secs(90)))
    }

    fn err(b: TieredCacheBuilder) -> String {
        b.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let p = NamespacePolicy::new(Duration::from_secs(90));
        assert_eq!(p.l1_ttl_value(), Duration::from_secs(60));
        let p = NamespacePolicy::new(Duration::from_secs(30));
        assert_eq!(p.l1_ttl_value(), Duration::from_secs(30));
        assert!(ok().validate().is_ok());
    }

    #[test]
    fn rejects_bad_config() {
        let s = Duration::from_secs;
        assert!(err(TieredCacheBuilder::default()).contains("no namespace"));
        assert!(err(ok().namespace("z", NamespacePolicy::new(s(0)))).contains("L2 TTL"));
        assert!(
            err(ok().namespace("z", NamespacePolicy::new(s(5)).l1_ttl(s(6)))).contains("longer")
        );
        assert!(
            err(ok().namespace("z", NamespacePolicy::new(s(5)).l1_ttl(s(0)))).contains("L1 TTL")
        );
        assert!(err(ok().namespace("rate", NamespacePolicy::new(s(5)))).contains("twice"));
        assert!(err(ok().namespace("", NamespacePolicy::new(s(5)))).contains("empty"));
        assert!(err(ok().namespace("a:b", NamespacePolicy::new(s(5)))).contains("separator"));
        assert!(err(ok().namespace("_x", NamespacePolicy::new(s(5)))).contains("reserved"));
        assert!(err(ok().prefix("v1:x")).contains("separator"));
        assert!(
            err(ok().namespace("z", NamespacePolicy::new(s(5)).l1_capacity(0)))
                .contains("capacity")
        );
        assert!(err(ok().l2_timeout(s(0))).contains("l2_timeout"));
        assert!(err(ok().breaker_threshold(0)).contains("breaker_threshold"));
        assert!(err(ok().outbox_capacity(0)).contains("outbox_capacity"));
        assert!(ok().outbox_max_bytes(0).validate().is_ok());
        let ms = Duration::from_millis;
        let tight = NamespacePolicy::new(s(5)).staleness_bound(ms(150));
        assert!(err(ok().namespace("z", tight)).contains("2.5 times the heartbeat"));
        let relaxed = NamespacePolicy::new(s(5)).unbounded_staleness();
        assert!(ok().namespace("z", relaxed).validate().is_ok());
    }
}
