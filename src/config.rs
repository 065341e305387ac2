//! Configuration: the builder, per-namespace policies, and the checks `build()` runs.

use crate::error::{Error, Result};
use crate::key::{validate_name, validate_namespace};
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
#[derive(Debug, Clone, PartialEq)]
pub struct NamespacePolicy {
    pub(crate) l2_ttl: Duration,
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) l1_capacity: u64,
    pub(crate) l1_max_bytes: Option<u64>,
    pub(crate) staleness_bound: Option<Duration>,
    pub(crate) ttl_jitter: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) compress_above: Option<usize>,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) refresh_ahead: Option<f64>,
    pub(crate) fleet_lock: Option<Duration>,
}

impl NamespacePolicy {
    /// Default cap on the L1 TTL when none is set: the local tier is a copy, and a short life
    /// bounds how long a copy can outlive an invalidation that never arrived.
    pub const DEFAULT_L1_TTL_CAP: Duration = Duration::from_secs(60);
    /// Default L1 capacity, in entries.
    pub const DEFAULT_L1_CAPACITY: u64 = 10_000;
    /// Default staleness bound.
    pub const DEFAULT_STALENESS_BOUND: Duration = Duration::from_millis(250);
    /// Default TTL of a cached "not found" (or the L2 TTL, if shorter).
    pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
    /// Default size above which payloads are compressed, in bytes.
    pub const DEFAULT_COMPRESS_ABOVE: usize = 1024;
    /// Default pause between loader attempts once fail-safe has served a stale value.
    pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);

    /// A policy whose values live `l2_ttl` in Redis.
    ///
    /// Defaults: L1 TTL = min(`l2_ttl`, 60 s); L1 capacity = 10 000 entries; staleness bound
    /// 250 ms.
    ///
    /// Every resilience feature is off until set, except compression of payloads over 1 KiB.
    pub fn new(l2_ttl: Duration) -> Self {
        Self {
            l2_ttl,
            l1_ttl: None,
            l1_capacity: Self::DEFAULT_L1_CAPACITY,
            l1_max_bytes: None,
            staleness_bound: Some(Self::DEFAULT_STALENESS_BOUND),
            ttl_jitter: Duration::ZERO,
            negative_ttl: None,
            compress_above: Some(Self::DEFAULT_COMPRESS_ABOVE),
            fail_safe: None,
            fail_safe_throttle: Self::DEFAULT_FAIL_SAFE_THROTTLE,
            soft_timeout: None,
            hard_timeout: None,
            refresh_ahead: None,
            fleet_lock: None,
        }
    }

    /// Bounds L1 by the size of its values instead of their number: each entry weighs its
    /// serialized (uncompressed) payload plus its key, and moka evicts beyond `bytes`. An
    /// alternative to [`l1_capacity`](Self::l1_capacity), which it replaces. Default: off.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = Some(bytes);
        self
    }

    /// Shortens each stored value's TTL in Redis by a random amount up to `jitter`, so
    /// keys loaded together do not all expire, and reload, together. A value never lives
    /// longer than its configured TTL. Must be shorter than the L1 TTL. Default: zero.
    pub fn ttl_jitter(mut self, jitter: Duration) -> Self {
        self.ttl_jitter = jitter;
        self
    }

    /// How long a "not found" returned through
    /// [`get_or_load_optional`](crate::Namespace::get_or_load_optional) is cached, on both
    /// tiers. A later write of the key replaces it, like any value. At most the L2 TTL.
    /// Default: min(L2 TTL, 5 s).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// The effective negative TTL.
    pub fn negative_ttl_value(&self) -> Duration {
        self.negative_ttl
            .unwrap_or_else(|| self.l2_ttl.min(Self::DEFAULT_NEGATIVE_TTL))
    }

    /// Compresses (lz4) payloads longer than `bytes` before they go to Redis; incompressible
    /// payloads are stored as they are. `None` turns compression off. Default: 1 KiB.
    pub fn compress_above(mut self, bytes: Option<usize>) -> Self {
        self.compress_above = bytes;
        self
    }

    /// Fail-safe: keeps each value up to `window` past its TTL, on both tiers, and serves it
    /// when the loader fails or times out instead of surfacing the error (counted as stale).
    /// After serving a stale value the loader is left alone for the
    /// [throttle](Self::fail_safe_throttle). A value that was invalidated or overwritten is
    /// gone, not kept: fail-safe only stretches expiry. In a namespace with a staleness bound,
    /// L1's stale copies are not used while L1 is bypassed. Default: off.
    pub fn fail_safe(mut self, window: Duration) -> Self {
        self.fail_safe = Some(window);
        self
    }

    /// After fail-safe serves a stale value, it is served as fresh for this long before the
    /// loader is tried again, so a failing source is not hammered. Default: 30 s.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// Loader soft timeout: when a stale value is at hand (see [`fail_safe`](Self::fail_safe))
    /// and the loader has not answered within `timeout`, callers get the stale value and the
    /// load goes on in the background, updating the cache when it completes. Without a stale
    /// value callers keep waiting, up to the hard timeout, which must be set too (a load that
    /// never ends would otherwise keep the stale value served forever). Default: off.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Loader hard timeout: a load running longer is abandoned, and callers get
    /// [`Error::LoaderTimeout`] (or a stale value, with fail-safe).
    /// Default: off (a loader may run as long as it likes).
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Refresh-ahead: once a value has lived `fraction` (in (0, 1)) of its L1 life, a
    /// `get_or_load` hit still returns it at once but starts one background refresh of the
    /// key (from Redis if another node refreshed it already, else from the loader), so a hot
    /// key never misses. Default: off.
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = Some(fraction);
        self
    }

    /// Fleet-wide single flight: before loading a key Redis does not hold, a node takes a
    /// short lock in Redis (`SET NX PX` with a random token, released by compare-and-delete);
    /// other nodes wait for the holder's value (polling Redis and the lock) up to
    /// `lock_ttl`, then load themselves. An efficiency aid only: coherence never depends on it, and a lost lock
    /// means at worst one more load. Default: off (each node loads once).
    pub fn fleet_single_flight(mut self, lock_ttl: Duration) -> Self {
        self.fleet_lock = Some(lock_ttl);
        self
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
        if self.l1_capacity == 0 || self.l1_max_bytes == Some(0) {
            return Err(format!(
                "namespace {name:?}: L1 capacity must be at least 1"
            ));
        }
        self.validate_resilience(name, l1)
    }

    fn validate_resilience(&self, name: &str, l1: Duration) -> Result<(), String> {
        if self.ttl_jitter >= l1 {
            return Err(format!(
                "namespace {name:?}: TTL jitter {:?} must be shorter than the L1 TTL {l1:?}",
                self.ttl_jitter
            ));
        }
        let negative = self.negative_ttl_value();
        if negative.is_zero() || negative > self.l2_ttl {
            return Err(format!(
                "namespace {name:?}: negative TTL must be greater than zero and at most the L2 TTL"
            ));
        }
        let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
        if zero(self.fail_safe) || self.fail_safe_throttle.is_zero() {
            return Err(format!(
                "namespace {name:?}: fail-safe window and throttle must be greater than zero"
            ));
        }
        if zero(self.soft_timeout) || zero(self.hard_timeout) || zero(self.fleet_lock) {
            return Err(format!(
                "namespace {name:?}: timeouts and the lock TTL must be greater than zero"
            ));
        }
        if self.soft_timeout.is_some() && self.hard_timeout.is_none() {
            return Err(format!(
                "namespace {name:?}: a soft timeout needs a hard timeout too"
            ));
        }
        // Far beyond any sensible setting, and short of what `Instant` arithmetic and moka's
        // TTL (at most 1000 years) can hold.
        const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let durations = [
            Some(self.l2_ttl),
            self.fail_safe,
            Some(self.fail_safe_throttle),
            self.soft_timeout,
            self.hard_timeout,
            self.fleet_lock,
        ];
        if durations.into_iter().flatten().any(|d| d > LONGEST) {
            return Err(format!(
                "namespace {name:?}: TTLs, windows and timeouts must be under 100 years"
            ));
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout) {
            if soft >= hard {
                return Err(format!(
                    "namespace {name:?}: soft timeout {soft:?} must be shorter than the hard timeout {hard:?}"
                ));
            }
        }
        if let Some(f) = self.refresh_ahead {
            if !(f > 0.0 && f < 1.0) {
                return Err(format!(
                    "namespace {name:?}: refresh-ahead fraction {f} must be strictly between 0 and 1"
                ));
            }
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
    /// from L1 or the loader, writes queued, at once) before one probe is let through; also
    /// the longest delay of the L2 connection's own reconnect. Default: 500 ms.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// How often the outbox tries to replay what it holds while Redis stays unreachable
    /// (it also tries at once when the breaker closes or the subscriber resubscribes).
    /// Default: 500 ms.
    pub fn outbox_retry(mut self, interval: Duration) -> Self {
        self.outbox_retry = interval;
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

    /// Fail writes and invalidations (`set`, `set_many`, `invalidate`, `invalidate_many`,
    /// `invalidate_namespace`, the tagged writes and `invalidate_tag`) with `Err(Unavailable)`
    /// when Redis is unreachable, instead of queuing them in the outbox and returning `Ok`.
    /// Per handle: [`Namespace::strict_writes`](crate::Namespace::strict_writes); the
    /// cache-wide [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag) follows
    /// this setting. Default: off (degrade, do not fail: callers of a cache rarely have
    /// anything better to do with the error).
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
