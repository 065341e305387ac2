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
use crate::l1::{L1Entry, L1Tier};
use crate::l2::{Payload, Stamp};
use crate::loader;
use crate::metrics::NamespaceMetrics;
use crate::outbox::Route;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::{type_name, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

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
        Self {
            l1: L1Tier::new(policy.l1_capacity, policy.l1_ttl_value()),
            metrics: NamespaceMetrics::new(&name),
            gens: Generations::new(),
            flights: Default::default(),
            floor: AtomicU64::new(0),
            types: OnceLock::new(),
            // Until the first subscription proves the bus works.
            bypass: AtomicBool::new(policy.staleness_bound.is_some()),
            name,
            policy,
        }
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
    }

    /// Evicts keys another node invalidated.
    pub(crate) fn apply_remote_keys(&self, keys: &[&str]) {
        for k in keys {
            self.evict(k);
        }
        self.metrics.inv_applied.inc();
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
    }
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
    /// staleness bound cannot be vouched for (see [`NamespacePolicy::staleness_bound`]).
    #[inline]
    pub fn get_local(&self, key: &K) -> Option<Arc<V>> {
        let core = &*self.core;
        if core.bypass.load(Relaxed) {
            core.metrics.l1_bypass.inc();
            return None;
        }
        match with_key_str(key, |k| core.l1.get(k)) {
            Some(entry) => {
                core.metrics.l1_hit.inc();
                // The namespace's value type is pinned, so this cannot fail.
                entry.value.downcast::<V>().ok()
            }
            None => None,
        }
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
        if let Some(v) = self.get_local(key) {
            return Some(v);
        }
        // Boxed: the miss path's state stays out of this future, so an L1 hit through `get`
        // moves a few words, not the whole Redis read. The miss path allocates anyway.
        Box::pin(self.get_remote(key_string(key))).await
    }

    async fn get_remote(&self, key: String) -> Option<Arc<V>> {
        self.core.metrics.l1_miss.inc();
        let ticket = self.core.gens.ticket(&key);
        match loader::read_l2::<V>(&self.core, self.cache.shared(), &key).await {
            loader::L2Read::Hit { version, value } => {
                let value = Arc::new(value);
                self.insert_read(key, &value, version, &ticket);
                Some(value)
            }
            loader::L2Read::Miss | loader::L2Read::Unavailable => None,
        }
    }

    /// Reads a value, calling `loader` on a miss and caching what it returns on both tiers.
    ///
    /// When Redis is unreachable the loader's value is served and kept in L1 only. A value
    /// loaded while another node wrote or invalidated the key is returned to this caller but
    /// not cached, so the newer write wins everywhere.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, loader: F) -> Result<Arc<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(v) = self.get_local(key) {
            return Ok(v);
        }
        self.core.metrics.l1_miss.inc();
        // Boxed for the same reason as in `get`.
        Box::pin(self.load_once(key_string(key), loader)).await
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
        let shared = self.cache.shared();
        let key = key_string(key);
        let payload = codec::encode_payload(&value).map_err(|e| Error::Encode(Arc::new(e)))?;
        let strict = self.is_strict();
        let route = match shared
            .outbox
            .route(shared, &self.core, Some(&key), strict)
            .await
        {
            Ok(Route::Queue) => {
                let entry = L1Entry {
                    value: Arc::new(value),
                    version: 0,
                };
                shared
                    .outbox
                    .enqueue_write(&self.core, key, payload, Some(entry));
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
                    bytes: &payload,
                    ttl: self.core.policy.l2_ttl,
                },
                &message,
            )
            .await;
        route.landed(shared, written.is_ok());
        // Fences loads that read Redis before the write landed.
        let after = self.core.gens.bump_key(&key);
        match written {
            Ok(stamp) => {
                self.core.metrics.inv_sent.inc();
                shared.observe_epoch(stamp.epoch);
                if after.directly_follows(&before) {
                    let entry = L1Entry {
                        value: Arc::new(value),
                        version: stamp.version,
                    };
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
                let entry = L1Entry {
                    value: Arc::new(value),
                    version: 0,
                };
                shared
                    .outbox
                    .enqueue_write(&self.core, key, payload, Some(entry));
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
        let shared = self.cache.shared();
        let key = key_string(key);
        let strict = self.is_strict();
        let route = match shared
            .outbox
            .route(shared, &self.core, Some(&key), strict)
            .await
        {
            Ok(Route::Queue) => {
                shared.outbox.enqueue_invalidate(&self.core, key);
                return Ok(());
            }
            Ok(route) => route,
            Err(e) => {
                self.core.evict(&key);
                return Err(e.into_error("invalidate"));
            }
        };
        let message = Outgoing::keys(shared.node_id, &self.core.name, &[&key]);
        let done = shared
            .l2
            .invalidate(&self.core.name, &[&key], self.core.policy.l2_ttl, &message)
            .await;
        route.landed(shared, done.is_ok());
        self.core.evict(&key);
        if matches!(&done, Err(e) if e.is_unreachable() && !strict) {
            shared.outbox.enqueue_invalidate(&self.core, key);
        }
        self.finish_invalidation(done, "invalidate", strict)
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
        let route = match shared.outbox.route(shared, &self.core, None, strict).await {
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

    fn is_strict(&self) -> bool {
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

    /// Single flight around the miss path: one caller loads, the others share its outcome. A
    /// waiter whose leader was cancelled or panicked goes round again and may lead itself; it
    /// keeps its own loader for that.
    async fn load_once<F, Fut, E>(&self, key: String, loader: F) -> Result<Arc<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use crate::flight::{self, Role};
        loop {
            match self.core.flights.join(&key) {
                Role::Leader(leader) => {
                    let outcome = loader::load_through(self, key, loader).await;
                    let shared = outcome
                        .clone()
                        .map(|v| v as Arc<dyn std::any::Any + Send + Sync>);
                    leader.finish(shared);
                    return outcome;
                }
                Role::Waiter(slot) => {
                    self.core.metrics.coalesced.inc();
                    match flight::wait(slot).await {
                        // The value type is pinned per namespace: the downcast cannot fail.
                        Some(Ok(v)) => return Ok(v.downcast::<V>().expect("pinned type")),
                        Some(Err(e)) => return Err(e),
                        None => continue,
                    }
                }
            }
        }
    }

    /// Puts a value read from Redis (or loaded) into L1, unless the key changed meanwhile.
    pub(crate) fn insert_read(&self, key: String, value: &Arc<V>, version: u64, ticket: &Ticket) {
        let entry = L1Entry {
            value: value.clone(),
            version,
        };
        self.core.insert_guarded(key, entry, ticket);
    }
}
