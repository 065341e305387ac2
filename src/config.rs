//! Configuration: the builder, per-namespace policies, and the checks `build()` runs.

use crate::error::{Error, Result};
use crate::key::{validate_name, validate_namespace};
mod policy;

pub use policy::NamespacePolicy;

use std::time::Duration;

/// The Redis URL used when none is given and `REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The key prefix used when none is given: the `v1:{namespace}:{id}` convention.
pub const DEFAULT_PREFIX: &str = "v1";

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
    pub(crate) breaker_cooldown: Duration,
    pub(crate) outbox_retry: Duration,
    pub(crate) subscriber_backoff: Duration,
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
            breaker_cooldown: Self::DEFAULT_BACKOFF,
            outbox_retry: Self::DEFAULT_BACKOFF,
            subscriber_backoff: Self::DEFAULT_BACKOFF,
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
    /// Default for [`breaker_cooldown`](Self::breaker_cooldown),
    /// [`outbox_retry`](Self::outbox_retry) and [`subscriber_backoff`](Self::subscriber_backoff).
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
    /// Default for [`breaker_threshold`](Self::breaker_threshold).
    pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;
    /// Default for [`outbox_capacity`](Self::outbox_capacity).
    pub const DEFAULT_OUTBOX_CAPACITY: usize = 10_000;
    /// Default for [`outbox_max_bytes`](Self::outbox_max_bytes): 16 MiB.
    pub const DEFAULT_OUTBOX_MAX_BYTES: usize = 16 << 20;
}

/// # What is cached, and where: the Redis server, the key prefix, the namespaces.
impl TieredCacheBuilder {
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
}

/// # Timeouts and the circuit breaker in front of Redis.
impl TieredCacheBuilder {
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

    /// How many consecutive Redis calls must time out or fail at the connection level before
    /// the circuit breaker opens. A dead or hung Redis then costs callers at most this many
    /// L2 timeouts; an error reply, or a success, resets the count. At least 1.
    /// Default: 3 (one lost packet or slow call does not cut a node off Redis).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures;
        self
    }

    /// The circuit breaker's cool-down: once open, how long calls skip Redis (reads answered
    /// from L1 or the loader, writes queued, at once) before one probe is let through; also
    /// the longest delay of the L2 connection's own reconnect. Default: 500 ms.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }
}

/// # Writes while Redis is unreachable: the outbox, or strict writes.
impl TieredCacheBuilder {
    /// Fail writes and invalidations (`set`, `invalidate`, `invalidate_namespace`,
    /// `invalidate_tag` and their batch forms) with `Err(Unavailable)` when Redis is
    /// unreachable, instead of queuing them in the outbox and returning `Ok`. Per handle:
    /// [`EntryOptions::strict`](crate::EntryOptions::strict); the
    /// cache-wide [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag) follows
    /// this setting. Default: off (degrade, do not fail: callers of a cache rarely have
    /// anything better to do with the error).
    pub fn strict_writes(mut self, strict: bool) -> Self {
        self.strict_writes = strict;
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

    /// How often the outbox tries to replay what it holds while Redis stays unreachable
    /// (it also tries at once when the breaker closes or the subscriber resubscribes).
    /// Default: 500 ms.
    pub fn outbox_retry(mut self, interval: Duration) -> Self {
        self.outbox_retry = interval;
        self
    }
}

/// # The invalidation bus: heartbeat, reconnects, external writes.
impl TieredCacheBuilder {
    /// How often this node publishes a heartbeat on the bus (carrying the current version, so
    /// receivers notice lost messages even when no write follows) and pings its subscriber
    /// connection (so a dead or half-open link is replaced). Default: 100 ms.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The longest delay between the invalidation subscriber's (and external-write
    /// tracking's) reconnect attempts; they start at 50 ms and double up to this (at least
    /// 100 ms). While the subscriber is away, namespaces with a staleness bound bypass L1.
    /// Default: 500 ms.
    pub fn subscriber_backoff(mut self, max: Duration) -> Self {
        self.subscriber_backoff = max;
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
}

impl TieredCacheBuilder {
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
            validate_namespace(name).map_err(config)?;
            if !seen.insert(name.as_str()) {
                return Err(config(format!("namespace {name:?} is configured twice")));
            }
            policy.validate(name, self.heartbeat).map_err(config)?;
        }
        for (what, d) in [
            ("l2_timeout", self.l2_timeout),
            ("connect_timeout", self.connect_timeout),
            ("breaker_cooldown", self.breaker_cooldown),
            ("outbox_retry", self.outbox_retry),
            ("subscriber_backoff", self.subscriber_backoff),
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
        let p = || NamespacePolicy::new(s(5));
        assert!(err(ok().namespace("z", p().ttl_jitter(s(5)))).contains("jitter"));
        assert!(err(ok().namespace("z", p().negative_ttl(s(6)))).contains("negative"));
        assert!(err(ok().namespace("z", p().fail_safe(s(0)))).contains("fail-safe"));
        assert!(err(ok().namespace("z", p().soft_timeout(s(1)))).contains("hard timeout"));
        assert!(
            err(ok().namespace("z", p().fail_safe_throttle(Duration::MAX))).contains("100 years")
        );
        let inverted = p().soft_timeout(s(2)).hard_timeout(s(1));
        assert!(err(ok().namespace("z", inverted)).contains("soft timeout"));
        assert!(err(ok().namespace("z", p().refresh_ahead(1.0))).contains("refresh-ahead"));
        assert!(err(ok().namespace("z", p().refresh_ahead(f64::NAN))).contains("refresh-ahead"));
        assert!(err(ok().namespace("z", p().fleet_single_flight(s(0)))).contains("lock"));
        assert!(err(ok().namespace("z", p().l1_max_bytes(0))).contains("capacity"));
    }
}
