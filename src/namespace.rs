//! Namespaces: the untyped per-namespace state shared by every handle, and the typed handle
//! [`Namespace<K, V>`] through which callers read and write.
//!
//! Write order, as seen by the fleet: the L2 write and the broadcast happen in one script; then
//! this node's own L1 is updated (other nodes evict on the message; this node skips its own).

use crate::bus::Outgoing;
use crate::cache::TieredCache;
use crate::codec;
use crate::config::NamespacePolicy;
use crate::error::{Error, Result};
use crate::guard::{Generations, Ticket};
use crate::key::{key_string, with_key_str, CacheKey};
use crate::l1::{AnyValue, Bound, L1Entry, L1Tier};
use crate::l2::{Payload, Stamp};
use crate::loader::{self, L2Read, Mode};
use crate::metrics::NamespaceMetrics;
use crate::outbox::Route;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::{type_name, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Keys per script and message in [`Namespace::invalidate_many`]: bounds one Lua call's run
/// time (Redis serves nothing else meanwhile) and one message's size.
pub const INVALIDATE_BATCH: usize = 1000;

/// The key and value types a namespace was first opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types {
    key: TypeId,
    value: TypeId,
    key_name: &'static str,
    value_name: &'static str,
}

/// A namespace's state, shared by all its handles and by the bus subscriber.
pub(crate) struct NamespaceCore {
    pub(crate) name: String,
    pub(crate) policy: NamespacePolicy,
    pub(crate) l1: L1Tier,
    pub(crate) gens: Generations,
    /// Version of the last whole-namespace invalidation: L2 values older than it are dead.
    floor: AtomicU64,
    pub(crate) metrics: NamespaceMetrics,
    pub(crate) flights: crate::flight::Flights,
    types: OnceLock<Types>,
    /// Set while the bus cannot vouch for this namespace's staleness bound: L1 is neither read
    /// nor filled.
    pub(crate) bypass: AtomicBool,
}

impl NamespaceCore {
    pub(crate) fn new(name: String, policy: NamespacePolicy) -> Self {
        let core = Self {
            l1: L1Tier::new(
                match policy.l1_max_bytes {
                    Some(bytes) => Bound::Bytes(bytes),
                    None => Bound::Entries(policy.l1_capacity),
                },
                policy.l1_ttl_value() + policy.fail_safe.unwrap_or(Duration::ZERO),
            ),
            metrics: NamespaceMetrics::new(&name),
            gens: Generations::new(),
            flights: Default::default(),
            floor: AtomicU64::new(0),
            types: OnceLock::new(),
            // Until the first subscription proves the bus works.
            bypass: AtomicBool::new(policy.staleness_bound.is_some()),
            name,
            policy,
        };
        // The gauge follows changes only: a namespace that starts bypassed (and may stay so,
        // Redis being down) must say so from the start.
        if core.bypass.load(Relaxed) {
            core.metrics.bypassing.set(1.0);
            core.metrics.bypass_time.follow(|| true);
        }
        core
    }

    /// Pins the namespace's types on first use; later uses must match.
    fn check_types<K: ?Sized + 'static, V: 'static>(&self) -> Result<()> {
        let want = Types {
            key: TypeId::of::<K>(),
            value: TypeId::of::<V>(),
            key_name: type_name::<K>(),
            value_name: type_name::<V>(),
        };
        let have = self.types.get_or_init(|| want);
        if *have == want {
            return Ok(());
        }
        Err(Error::Namespace(format!(
            "namespace {:?} holds <{}, {}>, not <{}, {}>",
            self.name, have.key_name, have.value_name, want.key_name, want.value_name
        )))
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor.load(SeqCst)
    }

    pub(crate) fn raise_floor(&self, version: u64) {
        self.floor.fetch_max(version, SeqCst);
    }

    /// Adopts the floor Redis holds, even if lower: a Redis that restarted without persistence
    /// starts its versions over, and an old floor would hide every new write. `local_before` is
    /// the floor read before asking Redis; if it moved meanwhile (this node cleared the
    /// namespace), only raise.
    pub(crate) fn reset_floor(&self, local_before: u64, from_redis: u64) {
        if self
            .floor
            .compare_exchange(local_before, from_redis, SeqCst, SeqCst)
            .is_err()
        {
            self.raise_floor(from_redis);
        }
    }

    /// Inserts a value read under `ticket`, and takes it back out if the key was invalidated
    /// meanwhile (see `guard.rs` for why the re-check comes after the insert).
    pub(crate) fn insert_guarded(&self, key: String, entry: L1Entry, ticket: &Ticket) -> bool {
        if self.bypass.load(Relaxed) || !self.gens.is_current(ticket) {
            return false;
        }
        let check = key.clone();
        if !self.l1.insert_if_newer(key, entry) {
            return false;
        }
        // Orders the insert before the re-check on every architecture (see guard.rs).
        std::sync::atomic::fence(SeqCst);
        if self.gens.is_current(ticket) {
            return true;
        }
        self.l1.remove(&check);
        false
    }

    /// Invalidates one key locally: bump first, then evict, so a load in flight either sees
    /// the bump or has its insert removed (see `guard.rs`).
    pub(crate) fn evict(&self, key: &str) {
        self.gens.bump_key(key);
        self.l1.remove(key);
        self.flights.detach(key);
    }

    /// Evicts keys another node invalidated.
    pub(crate) fn apply_remote_keys(&self, keys: &[&str]) {
        for k in keys {
            self.evict(k);
        }
        self.metrics.inv_applied.inc();
        if keys.len() > 1 {
            self.metrics.inv_coalesced.add(keys.len() as u64 - 1);
        }
    }

    /// Refreshes the gauges that follow state rather than events (L1 size, time bypassed).
    pub(crate) fn refresh_gauges(&self) -> (u64, u64) {
        let (entries, weight) = self.l1.size();
        self.metrics.l1_entries.set(entries as f64);
        self.metrics.l1_weighted_size.set(weight as f64);
        self.metrics.bypass_time.total();
        (entries, weight)
    }

    /// Evicts a key Redis reported modified (see `tracking.rs`).
    pub(crate) fn apply_tracked_key(&self, key: &str) {
        self.evict(key);
        self.metrics.inv_tracked.inc();
    }

    /// Forgets a namespace another node cleared.
    pub(crate) fn apply_remote_clear(&self, version: u64) {
        self.raise_floor(version);
        self.clear_l1();
        self.metrics.inv_applied.inc();
    }

    /// Starts or stops bypassing L1, logging and exporting the change.
    pub(crate) fn set_bypass(&self, bypass: bool, delivery_age: Option<std::time::Duration>) {
        if self.bypass.swap(bypass, SeqCst) == bypass {
            return;
        }
        self.metrics.bypassing.set(if bypass { 1.0 } else { 0.0 });
        self.metrics.bypass_time.follow(|| self.bypass.load(SeqCst));
        if bypass {
            tracing::warn!(target: "tiered_cache::bus", namespace = %self.name, ?delivery_age,
                bound = ?self.policy.staleness_bound, "bus cannot vouch for L1: bypassing it");
        } else {
            tracing::info!(target: "tiered_cache::bus", namespace = %self.name,
                "bus back in sequence: serving L1 again");
        }
    }

    /// Empties L1 and fences every load in flight.
    pub(crate) fn clear_l1(&self) {
        self.gens.bump_namespace();
        self.l1.clear();
        self.flights.detach_all();
    }

    /// A TTL shortened by the namespace's jitter (never below 1 ms).
    fn jittered(&self, ttl: Duration) -> Duration {
        let jitter = self.policy.ttl_jitter.as_millis() as u64;
        if jitter == 0 {
            return ttl;
        }
        let cut = Duration::from_millis(rand::random_range(0..=jitter));
        ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// How long a value written now stays fresh, and how long Redis keeps it.
    pub(crate) fn l2_life(&self, negative: bool) -> Life {
        let policy = &self.policy;
        // "Not found" entries are short-lived already: jitter is for values.
        let ttl = if negative {
            policy.negative_ttl_value()
        } else {
            self.jittered(policy.l2_ttl)
        };
        Life {
            expires_ms: codec::unix_ms() + ttl.as_millis() as u64,
            keep_for: ttl + policy.fail_safe.unwrap_or(Duration::ZERO),
        }
    }

    /// An L1 entry for a value that stops being fresh at `expires_ms` in Redis (unix ms),
    /// living at most the L1 TTL (the negative TTL for a "not found") here.
    pub(crate) fn l1_entry(
        &self,
        value: Option<AnyValue>,
        version: u64,
        expires_ms: Option<u64>,
        weight: usize,
    ) -> L1Entry {
        let policy = &self.policy;
        let now = Instant::now();
        // Not jittered: L1 copies are made at different times anyway, and jitter here would
        // make every hit read the clock. The jittered TTL in Redis spreads the reloads.
        let cap = if value.is_some() {
            policy.l1_ttl_value()
        } else {
            policy.negative_ttl_value()
        };
        let left = expires_ms.map_or(cap, |at| {
            Duration::from_millis(at.saturating_sub(codec::unix_ms()))
        });
        let fresh = cap.min(left);
        let refresh_at = policy
            .refresh_ahead
            .filter(|_| value.is_some())
            .map(|f| now + fresh.mul_f64(f));
        self.entry_at(value, version, now + fresh, refresh_at, weight)
    }

    /// Builds an entry. Hits check `fresh_until` only where L1's own TTL would not enforce it
    /// (fail-safe keeps entries longer; or the entry was given a shorter life).
    fn entry_at(
        &self,
        value: Option<AnyValue>,
        version: u64,
        fresh_until: Instant,
        refresh_at: Option<Instant>,
        weight: usize,
    ) -> L1Entry {
        let l1_ttl = self.policy.l1_ttl_value();
        let shorter = fresh_until + Duration::from_millis(1) < Instant::now() + l1_ttl;
        let stale_at = (self.policy.fail_safe.is_some() || shorter).then_some(fresh_until);
        L1Entry {
            value,
            version,
            fresh_until,
            watch_at: match (stale_at, refresh_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            weight: weight.max(1).try_into().unwrap_or(u32::MAX),
        }
    }

    /// A stale entry served by fail-safe, fresh again for the throttle.
    pub(crate) fn throttled(&self, stale: L1Entry) -> L1Entry {
        let until = Instant::now() + self.policy.fail_safe_throttle;
        self.entry_at(
            stale.value,
            stale.version,
            until,
            None,
            stale.weight as usize,
        )
    }

    /// The same entry, not to be refreshed again (its refresh failed).
    pub(crate) fn without_refresh(&self, entry: L1Entry) -> L1Entry {
        let fresh_until = entry.fresh_until;
        self.entry_at(
            entry.value,
            entry.version,
            fresh_until,
            None,
            entry.weight as usize,
        )
    }

    /// Whether a value Redis holds until `expires_ms` would, copied now, live past its own
    /// refresh point: then a refresh-ahead can take it instead of calling the loader.
    pub(crate) fn outlives_refresh(&self, expires_ms: Option<u64>) -> bool {
        let (Some(at), Some(f)) = (expires_ms, self.policy.refresh_ahead) else {
            return false;
        };
        let left = at.saturating_sub(codec::unix_ms());
        left as f64 > self.policy.l1_ttl_value().as_millis() as f64 * (1.0 - f)
    }

    /// Looks a key up in L1, without counting.
    #[inline(always)]
    fn lookup(&self, key: &str) -> Lookup {
        let Some(entry) = self.l1.get(key) else {
            return Lookup::Miss;
        };
        match entry.watch_at {
            None => Lookup::Fresh(entry),
            Some(at) => {
                let now = Instant::now();
                if now < at {
                    Lookup::Fresh(entry)
                } else if entry.is_stale(now) {
                    Lookup::Stale(entry)
                } else {
                    Lookup::Due(entry)
                }
            }
        }
    }
}

/// How long a value written now lives.
pub(crate) struct Life {
    /// When it stops being fresh (unix ms), written into its envelope.
    pub(crate) expires_ms: u64,
    /// How long Redis keeps it: its TTL plus the fail-safe window.
    pub(crate) keep_for: Duration,
}

/// What L1 holds for a key.
enum Lookup {
    Fresh(L1Entry),
    /// Fresh, and due for a refresh-ahead.
    Due(L1Entry),
    /// Past its freshness; kept only for fail-safe.
    Stale(L1Entry),
    Miss,
}

/// A typed handle on one namespace: keys `K`, values `V`. Cheap to clone.
///
/// Obtained from [`TieredCache::namespace`]. Values are returned as `Arc<V>`: an L1 hit hands
/// out the very value the cache holds, with no decoding or copying.
pub struct Namespace<K: ?Sized, V> {
    pub(crate) core: Arc<NamespaceCore>,
    pub(crate) cache: TieredCache,
    /// Overrides the cache's `strict_writes` for this handle.
    strict: Option<bool>,
    _types: PhantomData<fn(&K) -> V>,
}

impl<K: ?Sized, V> Clone for Namespace<K, V> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            cache: self.cache.clone(),
            strict: self.strict,
            _types: PhantomData,
        }
    }
}

impl<K: ?Sized, V> std::fmt::Debug for Namespace<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<K, V> Namespace<K, V>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn open(core: Arc<NamespaceCore>, cache: TieredCache) -> Result<Self> {
        core.check_types::<K, V>()?;
        Ok(Self {
            core,
            cache,
            strict: None,
            _types: PhantomData,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Looks in this process's L1 only: no I/O, never waits. `None` also while the namespace's
    /// staleness bound cannot be vouched for (see [`NamespacePolicy::staleness_bound`]), and
    /// for a cached "not found".
    #[inline]
    pub fn get_local(&self, key: &K) -> Option<Arc<V>> {
        self.local_value(key).and_then(downcast)
    }

    /// L1's fresh value (`Some(None)`: a cached "not found"), counting like `local`. Only the
    /// value leaves this function, so an async caller's state stays small.
    #[inline(always)]
    fn local_value(&self, key: &K) -> Option<Option<AnyValue>> {
        match self.local(key) {
            Lookup::Fresh(e) | Lookup::Due(e) => Some(e.value),
            Lookup::Stale(_) | Lookup::Miss => None,
        }
    }

    /// L1's answer, counting hits and bypasses (a miss is counted by the caller's next step).
    #[inline(always)]
    fn local(&self, key: &K) -> Lookup {
        let core = &*self.core;
        if core.bypass.load(Relaxed) {
            core.metrics.l1_bypass.inc();
            return Lookup::Miss;
        }
        // One lookup in L1_SAMPLE is timed: reading the clock on every hit would double it.
        let timed = crate::metrics::sample_l1().then(Instant::now);
        let found = with_key_str(key, |k| core.lookup(k));
        if let Lookup::Fresh(_) | Lookup::Due(_) = found {
            core.metrics.l1_hit.inc();
            if let Some(start) = timed {
                core.metrics.latency.l1.record(start.elapsed());
            }
        }
        found
    }

    /// The version of the write this node's L1 copy of `key` came from, if it holds one
    /// (0 for a value cached while Redis was unreachable). Within an epoch of Redis's version
    /// counter, the version a node holds for a key never decreases.
    pub fn local_version(&self, key: &K) -> Option<u64> {
        with_key_str(key, |k| self.core.l1.get(k)).map(|e| e.version)
    }

    /// Reads a value: L1, then Redis. `None` when neither has a live value, or when Redis cannot
    /// be reached in time (counted in [`NamespaceStats::l2_errors`](crate::NamespaceStats)).
    pub async fn get(&self, key: &K) -> Option<Arc<V>> {
        if let Some(hit) = self.local_value(key) {
            return downcast(hit);
        }
        // Boxed: the miss path's state stays out of this future, so an L1 hit through `get`
        // moves a few words, not the whole Redis read. The miss path allocates anyway.
        Box::pin(self.get_remote(key_string(key))).await
    }

    async fn get_remote(&self, key: String) -> Option<Arc<V>> {
        let core = &*self.core;
        core.metrics.l1_miss.inc();
        let ticket = core.gens.ticket(&key);
        match loader::read_l2::<V>(core, self.cache.shared(), &key).await {
            L2Read::Hit {
                version,
                expires_ms,
                value,
                weight,
            } => {
                let value = value.map(Arc::new);
                let any = value.clone().map(|v| v as AnyValue);
                let entry = core.l1_entry(any, version, expires_ms, weight);
                core.insert_guarded(key, entry, &ticket);
                value
            }
            L2Read::Expired { .. } | L2Read::Miss | L2Read::Unavailable => None,
        }
    }

    /// Reads a value, calling `loader` on a miss and caching what it returns on both tiers.
    ///
    /// Concurrent calls for one key share one load (single flight). The load runs as a task of
    /// its own: a caller that stops waiting does not cancel it for the others, and with
    /// [soft timeouts](NamespacePolicy::soft_timeout) or
    /// [refresh-ahead](NamespacePolicy::refresh_ahead) it may finish after every caller has its
    /// answer; hence the `Send + 'static` bounds. When Redis is unreachable the loader's value
    /// is served and kept in L1 only. A value loaded while another node wrote or invalidated
    /// the key is returned to this caller but not cached, so the newer write wins everywhere.
    ///
    /// Returns [`Error::NotFound`] when a "not found" cached through
    /// [`get_or_load_optional`](Self::get_or_load_optional) is in the way.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, loader: F) -> Result<Arc<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let found = self
            .get_or_load_optional(key, move || async move { loader().await.map(Some) })
            .await?;
        found.ok_or(Error::NotFound)
    }

    /// Like [`get_or_load`](Self::get_or_load), for a source that may have no value: the
    /// loader returns `Ok(None)` for "not found", which is cached for the namespace's
    /// [negative TTL](NamespacePolicy::negative_ttl) on both tiers, so a key that does not
    /// exist is not looked up at the source on every call. A later write of the key replaces
    /// it everywhere, like any value.
    pub async fn get_or_load_optional<F, Fut, E>(
        &self,
        key: &K,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.get_or_load_with(key, move || loader).await
    }

    /// `get_or_load_optional` with a loader made only when one is needed: a fresh L1 hit
    /// makes none, so a caller whose loader must own a copy of the key (`Memoized`) does not
    /// pay for the copy on a hit.
    pub(crate) async fn get_or_load_with<M, F, Fut, E>(
        &self,
        key: &K,
        make_loader: M,
    ) -> Result<Option<Arc<V>>>
    where
        M: FnOnce() -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let stale = match self.local(key) {
            Lookup::Fresh(e) => return Ok(downcast(e.value)),
            Lookup::Due(e) => {
                let value = downcast(e.value.clone());
                self.refresh(key, e, make_loader);
                return Ok(value);
            }
            Lookup::Stale(e) => Some(e),
            Lookup::Miss => None,
        };
        self.core.metrics.l1_miss.inc();
        // Boxed for the same reason as in `get`.
        Box::pin(self.load_once(key_string(key), make_loader(), stale)).await
    }

    /// Starts one background refresh of a key due for it, unless one is running.
    /// The key's string and the loader are made only by the caller that leads: a hit while
    /// a refresh is already running makes neither.
    fn refresh<M, F, Fut, E>(&self, key: &K, current: L1Entry, make_loader: M)
    where
        M: FnOnce() -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        // A load already in flight (a refresh or a miss) will do: join only to lead.
        let role = with_key_str(key, |k| self.core.flights.join(k));
        if let crate::flight::Role::Leader(leader, _) = role {
            self.core.metrics.refresh_started.inc();
            let mode = Mode::Refresh { current };
            self.spawn_flight(key_string(key), make_loader(), mode, leader);
        }
    }

    fn spawn_flight<F, Fut, E>(
        &self,
        key: String,
        loader: F,
        mode: Mode,
        leader: crate::flight::Leader,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let loader = move || async move { loader().await.map_err(Into::into) };
        let task = loader::fly::<V, _, _>(
            self.core.clone(),
            self.cache.clone(),
            key,
            loader,
            mode,
            leader,
        );
        self.cache.shared().runtime.spawn(task);
    }

    /// The L1 entry of a write Redis has not taken yet: version 0, so any value read from
    /// Redis later replaces it.
    pub(crate) fn local_only(&self, value: V, life: &Life, encoded: &codec::Encoded) -> L1Entry {
        let value = Some(Arc::new(value) as AnyValue);
        (self.core).l1_entry(value, 0, Some(life.expires_ms), encoded.plain_len)
    }

    /// Writes a value to Redis and to this node's L1, and tells every other node to evict it.
    ///
    /// When Redis is unreachable (the breaker is open, or the call timed out or failed at the
    /// connection level) the write is queued in this node's outbox and replayed when Redis is
    /// back, and `set` returns `Ok`; this node's L1 keeps the new value only in a namespace
    /// built with [`unbounded_staleness`](crate::NamespacePolicy::unbounded_staleness), and
    /// drops its copy elsewhere. See the README's degraded mode for the conflict rule.
    ///
    /// With [strict writes](Self::strict_writes) it returns `Err(Unavailable)` instead: this
    /// node's L1 no longer holds the key, and whether Redis and the other nodes saw the write
    /// is unknown (a timeout may come after the write ran): retry, or invalidate once Redis is
    /// back.
    pub async fn set(&self, key: &K, value: V) -> Result<()> {
        let key = key_string(key);
        let shared = self.cache.shared();
        let life = self.core.l2_life(false);
        let encoded = codec::encode(
            Some(&value),
            life.expires_ms,
            self.core.policy.compress_above,
        )
        .map_err(|e| Error::Encode(Arc::new(e)))?;
        let strict = self.is_strict();
        let route = match shared
            .outbox
            .route(shared, &self.core, Some(&[&key]), !strict)
            .await
        {
            Ok(Route::Queue) => {
                let entry = self.local_only(value, &life, &encoded);
                shared
                    .outbox
                    .enqueue_write(&self.core, key, encoded, Some(entry));
                return Ok(());
            }
            Ok(route) => route,
            Err(e) => {
                self.core.evict(&key);
                return Err(e.into_error("set"));
            }
        };
        let before = self.core.gens.ticket(&key);
        let message = Outgoing::keys(shared.node_id, &self.core.name, &[&key]);
        let written = shared
            .l2
            .write(
                &self.core.name,
                &key,
                Payload {
                    encoded: &encoded,
                    ttl: life.keep_for,
                },
                &message,
            )
            .await;
        route.landed(shared, written.is_ok());
        // Fences loads that read Redis before the write landed.
        let after = self.core.gens.bump_key(&key);
        // A load that started before this write must not be shared with later callers.
        self.core.flights.detach(&key);
        match written {
            Ok(stamp) => {
                self.core.metrics.inv_sent.inc();
                shared.observe_epoch(stamp.epoch);
                if after.directly_follows(&before) {
                    let entry = self.core.l1_entry(
                        Some(Arc::new(value)),
                        stamp.version,
                        Some(life.expires_ms),
                        encoded.plain_len,
                    );
                    self.core.insert_guarded(key, entry, &after);
                } else {
                    // Another invalidation of this key landed meanwhile: its order against ours
                    // is unknown here, so let the next read ask Redis.
                    self.core.l1.remove(&key);
                }
                Ok(())
            }
            Err(e) if e.is_unreachable() && !strict => {
                self.core.metrics.l2_failed(e.kind());
                let entry = self.local_only(value, &life, &encoded);
                shared
                    .outbox
                    .enqueue_write(&self.core, key, encoded, Some(entry));
                Ok(())
            }
            Err(e) => {
                self.core.l1.remove(&key);
                self.core.metrics.l2_failed(e.kind());
                Err(e.into_error("set"))
            }
        }
    }

    /// Removes a key from Redis and from every node's L1.
    ///
    /// Redis keeps a small tombstone for the namespace's L2 TTL, so a load that started before
    /// this call cannot write its older value back. While Redis is unreachable the invalidation
    /// is queued and replayed (always safe) and this returns `Ok`, unless writes are
    /// [strict](Self::strict_writes).
    pub async fn invalidate(&self, key: &K) -> Result<()> {
        self.invalidate_strings(vec![key_string(key)], "invalidate")
            .await
    }

    /// Removes many keys from Redis and from every node's L1: one script and one message per
    /// [`INVALIDATE_BATCH`] keys (duplicates removed), instead of one per key. Same guarantees
    /// as [`invalidate`](Self::invalidate), including the queue while Redis is unreachable.
    /// On an error every listed key has left this node's L1, and the batches before the failed
    /// one have been invalidated everywhere.
    ///
    /// ```no_run
    /// # async fn run(metrics: tiered_cache::Namespace<str, f64>) -> tiered_cache::Result<()> {
    /// // A tenant's risk limits changed: drop the metrics of every user it applies to.
    /// metrics.invalidate_many(["tenant-7:alice", "tenant-7:bob"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_many<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Result<()>
    where
        K: 'k,
    {
        let mut keys: Vec<String> = keys.into_iter().map(|k| key_string(k)).collect();
        keys.sort_unstable();
        keys.dedup();
        for chunk in keys.chunks(INVALIDATE_BATCH) {
            if let Err(e) = self
                .invalidate_strings(chunk.to_vec(), "invalidate_many")
                .await
            {
                // What Redis did not get must not be served from here either.
                keys.iter().for_each(|k| self.core.evict(k));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Invalidates keys in one script and message, queued while Redis is unreachable (unless
    /// strict), and always behind what is queued for them.
    async fn invalidate_strings(&self, keys: Vec<String>, op: &'static str) -> Result<()> {
        let shared = self.cache.shared();
        let strict = self.is_strict();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        if refs.is_empty() {
            return Ok(());
        }
        let routed = shared
            .outbox
            .route(shared, &self.core, Some(&refs), !strict);
        let route = match routed.await {
            Ok(Route::Queue) => {
                for key in keys {
                    shared.outbox.enqueue_invalidate(&self.core, key);
                }
                return Ok(());
            }
            Ok(route) => route,
            Err(e) => {
                keys.iter().for_each(|k| self.core.evict(k));
                return Err(e.into_error(op));
            }
        };
        let message = Outgoing::keys(shared.node_id, &self.core.name, &refs);
        let done = shared
            .l2
            .invalidate(&self.core.name, &refs, self.core.policy.l2_ttl, &message)
            .await;
        route.landed(shared, done.is_ok());
        keys.iter().for_each(|k| self.core.evict(k));
        if matches!(&done, Err(e) if e.is_unreachable() && !strict) {
            for key in keys {
                shared.outbox.enqueue_invalidate(&self.core, key);
            }
        }
        self.finish_invalidation(done, op, strict)
    }

    /// Removes every key of the namespace from Redis and from every node's L1, in O(1): no key
    /// is scanned. Values written before the call are marked dead by the namespace's floor and
    /// expire with their TTL.
    ///
    /// While Redis is unreachable the clear is queued (it supersedes this namespace's queued
    /// keys) and replayed, and this returns `Ok`, unless writes are
    /// [strict](Self::strict_writes).
    pub async fn invalidate_namespace(&self) -> Result<()> {
        let shared = self.cache.shared();
        let strict = self.is_strict();
        let route = match shared.outbox.route(shared, &self.core, None, !strict).await {
            Ok(Route::Queue) => {
                shared.outbox.enqueue_clear(&self.core);
                return Ok(());
            }
            Ok(route) => route,
            Err(e) => {
                self.core.clear_l1();
                return Err(e.into_error("invalidate_namespace"));
            }
        };
        let message = Outgoing::namespace(shared.node_id, &self.core.name);
        let done = shared.l2.clear_namespace(&self.core.name, &message).await;
        route.landed(shared, done.is_ok());
        if let Ok(stamp) = &done {
            shared.observe_epoch(stamp.epoch);
            self.core.raise_floor(stamp.version);
        }
        self.core.clear_l1();
        if matches!(&done, Err(e) if e.is_unreachable() && !strict) {
            shared.outbox.enqueue_clear(&self.core);
        }
        self.finish_invalidation(done, "invalidate_namespace", strict)
    }

    /// A handle whose writes and invalidations fail with `Err(Unavailable)` when Redis is
    /// unreachable (`true`), or are queued and replayed when it is back (`false`), whatever
    /// the cache's [`strict_writes`](crate::TieredCacheBuilder::strict_writes) default says.
    /// Cheap: a clone of this handle.
    pub fn strict_writes(&self, strict: bool) -> Self {
        Self {
            strict: Some(strict),
            ..self.clone()
        }
    }

    pub(crate) fn is_strict(&self) -> bool {
        self.strict
            .unwrap_or_else(|| self.cache.shared().strict_writes)
    }

    fn finish_invalidation(
        &self,
        done: crate::l2::L2Result<Stamp>,
        op: &'static str,
        strict: bool,
    ) -> Result<()> {
        match done {
            Ok(stamp) => {
                self.cache.shared().observe_epoch(stamp.epoch);
                self.core.metrics.inv_sent.inc();
                Ok(())
            }
            Err(e) if e.is_unreachable() && !strict => {
                // Queued by the caller: degraded, not failed.
                self.core.metrics.l2_failed(e.kind());
                Ok(())
            }
            Err(e) => {
                self.core.metrics.l2_failed(e.kind());
                Err(e.into_error(op))
            }
        }
    }

    /// Single flight around the miss path: the first caller spawns the load, every caller
    /// waits for its outcome. A waiter whose load panicked goes round again and may start one
    /// itself with its own loader.
    async fn load_once<F, Fut, E>(
        &self,
        key: String,
        loader: F,
        stale: Option<L1Entry>,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        use crate::flight::{self, Role};
        let mut loader = Some(loader);
        let mut stale = stale;
        loop {
            let slot = match self.core.flights.join(&key) {
                Role::Leader(leader, slot) => match loader.take() {
                    Some(f) => {
                        let mode = Mode::Miss {
                            stale: stale.take(),
                        };
                        self.spawn_flight(key.clone(), f, mode, leader);
                        slot
                    }
                    // Our own load went away, and nobody else is loading.
                    None => {
                        drop(leader);
                        return Err(lost_load());
                    }
                },
                Role::Waiter(slot) => {
                    self.core.metrics.coalesced.inc();
                    slot
                }
            };
            match flight::wait(slot).await {
                Some(outcome) => return outcome.map(downcast),
                None if loader.is_none() => return Err(lost_load()),
                None => continue,
            }
        }
    }
}

/// The error of a caller whose own load ended without an outcome.
fn lost_load() -> Error {
    Error::Loader(Arc::new(std::io::Error::other(
        "the load ended without an answer: the loader panicked, or its runtime shut down",
    )))
}

/// Recovers a value's type: the namespace pins its value type, so this cannot fail.
#[inline]
fn downcast<V: Send + Sync + 'static>(value: Option<AnyValue>) -> Option<Arc<V>> {
    value.and_then(|v| v.downcast::<V>().ok())
}
