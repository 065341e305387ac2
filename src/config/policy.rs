//! The per-namespace policy: TTLs, L1 sizing, staleness, fail-safe, timeouts, stampede
//! protection, grouped by concern, with the checks `build()` runs on them.

use std::time::Duration;

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
}

/// # L1 sizing: how long and how much this node keeps in process memory.
impl NamespacePolicy {
    /// How long a value stays in this process's L1; at most the L2 TTL.
    /// Default: min(L2 TTL, 60 s).
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// The effective L1 TTL.
    pub fn l1_ttl_value(&self) -> Duration {
        self.l1_ttl
            .unwrap_or_else(|| self.l2_ttl.min(Self::DEFAULT_L1_TTL_CAP))
    }

    /// The most entries this namespace keeps in L1 (moka evicts by TinyLFU beyond it).
    /// Default: 10 000.
    pub fn l1_capacity(mut self, entries: u64) -> Self {
        self.l1_capacity = entries;
        self
    }

    /// The L1 capacity, in entries (unused when bounded by bytes).
    pub fn l1_capacity_value(&self) -> u64 {
        self.l1_capacity
    }

    /// Bounds L1 by the size of its values instead of their number: each entry weighs its
    /// serialized (uncompressed) payload plus its key, and moka evicts beyond `bytes`. An
    /// alternative to [`l1_capacity`](Self::l1_capacity), which it replaces. Default: off.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = Some(bytes);
        self
    }

    /// The L1 byte bound, if set.
    pub fn l1_max_bytes_value(&self) -> Option<u64> {
        self.l1_max_bytes
    }
}

/// # Staleness: how long L1 may serve without proof that invalidations still arrive.
impl NamespacePolicy {
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

    /// The staleness bound (`None`: unbounded).
    pub fn staleness_bound_value(&self) -> Option<Duration> {
        self.staleness_bound
    }

    /// Availability over freshness: keep serving L1 while the bus is down, so a node without
    /// Redis still answers from memory. Staleness is then bounded only by the L1 TTL.
    pub fn unbounded_staleness(mut self) -> Self {
        self.staleness_bound = None;
        self
    }
}

/// # Expiry and storage in Redis.
impl NamespacePolicy {
    /// The TTL of values in Redis.
    pub fn l2_ttl_value(&self) -> Duration {
        self.l2_ttl
    }

    /// Shortens each stored value's TTL in Redis by a random amount up to `jitter`, so
    /// keys loaded together do not all expire, and reload, together. A value never lives
    /// longer than its configured TTL. Must be shorter than the L1 TTL. Default: zero.
    pub fn ttl_jitter(mut self, jitter: Duration) -> Self {
        self.ttl_jitter = jitter;
        self
    }

    /// The TTL jitter.
    pub fn ttl_jitter_value(&self) -> Duration {
        self.ttl_jitter
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

    /// The size above which payloads are compressed (`None`: never).
    pub fn compress_above_value(&self) -> Option<usize> {
        self.compress_above
    }
}

/// # Fail-safe: serving an expired value when the loader fails.
impl NamespacePolicy {
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

    /// The fail-safe window, if on.
    pub fn fail_safe_value(&self) -> Option<Duration> {
        self.fail_safe
    }

    /// After fail-safe serves a stale value, it is served as fresh for this long before the
    /// loader is tried again, so a failing source is not hammered. Default: 30 s.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// The fail-safe throttle.
    pub fn fail_safe_throttle_value(&self) -> Duration {
        self.fail_safe_throttle
    }
}

/// # Loader timeouts.
impl NamespacePolicy {
    /// Loader soft timeout: when a stale value is at hand (see [`fail_safe`](Self::fail_safe))
    /// and the loader has not answered within `timeout`, callers get the stale value and the
    /// load goes on in the background, updating the cache when it completes. Without a stale
    /// value callers keep waiting, up to the hard timeout, which must be set too (a load that
    /// never ends would otherwise keep the stale value served forever). Default: off.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// The loader's soft timeout, if set.
    pub fn soft_timeout_value(&self) -> Option<Duration> {
        self.soft_timeout
    }

    /// Loader hard timeout: a load running longer is abandoned, and callers get
    /// [`Error::LoaderTimeout`](crate::Error::LoaderTimeout) (or a stale value, with fail-safe).
    /// Default: off (a loader may run as long as it likes).
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// The loader's hard timeout, if set.
    pub fn hard_timeout_value(&self) -> Option<Duration> {
        self.hard_timeout
    }
}

/// # Stampedes: refreshing before expiry, one load across the fleet.
impl NamespacePolicy {
    /// Refresh-ahead: once a value has lived `fraction` (in (0, 1)) of its L1 life, a
    /// `get_or_load` hit still returns it at once but starts one background refresh of the
    /// key (from Redis if another node refreshed it already, else from the loader), so a hot
    /// key never misses. Default: off.
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = Some(fraction);
        self
    }

    /// The refresh-ahead fraction, if on.
    pub fn refresh_ahead_value(&self) -> Option<f64> {
        self.refresh_ahead
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

    /// The fleet lock's TTL, if on.
    pub fn fleet_single_flight_value(&self) -> Option<Duration> {
        self.fleet_lock
    }
}

impl NamespacePolicy {
    pub(super) fn validate(&self, name: &str, heartbeat: Duration) -> Result<(), String> {
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
