//! The typed handle [`Namespace<K, V>`] through which callers read and write one namespace.
//!
//! Write order, as seen by the fleet: the L2 write and the broadcast happen in one script; then
//! this node's own L1 is updated (other nodes evict on the message; this node skips its own).

mod batch;
mod tags;
mod touch;

use crate::cache::TieredCache;
use crate::error::{Error, Result};
use crate::key::{key_string, with_key_str, CacheKey};
use crate::read::{downcast, Reads};
use crate::space::NamespaceCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// Keys per script and message in [`Namespace::invalidate_many`]: bounds one Lua call's run
/// time (Redis serves nothing else meanwhile) and one message's size.
pub const INVALIDATE_BATCH: usize = 1000;

impl TieredCache {
    /// A typed handle on a configured namespace. The first call pins the namespace's key and
    /// value types; a later call with other types is an error rather than a silent mis-decode.
    pub fn namespace<K, V>(&self, name: &str) -> Result<Namespace<K, V>>
    where
        K: CacheKey + ?Sized + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let core = self
            .shared()
            .namespace(name)
            .ok_or_else(|| Error::Namespace(format!("namespace {name:?} is not configured")))?;
        Namespace::open(core.clone(), self.clone())
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
    /// staleness bound cannot be vouched for (see [`NamespacePolicy::staleness_bound`](crate::NamespacePolicy::staleness_bound)), and
    /// for a cached "not found".
    #[inline]
    pub fn get_local(&self, key: &K) -> Option<Arc<V>> {
        self.reads().local_value(key).and_then(downcast)
    }

    /// This namespace's read path.
    #[inline(always)]
    pub(crate) fn reads(&self) -> Reads<'_> {
        Reads {
            shared: self.cache.shared(),
            core: &self.core,
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
        let reads = self.reads();
        if let Some(hit) = reads.local_value(key) {
            return downcast(hit);
        }
        // Boxed: the miss path's state stays out of this future, so an L1 hit through `get`
        // moves a few words, not the whole Redis read. The miss path allocates anyway.
        Box::pin(reads.get_remote(key_string(key))).await
    }

    /// Reads a value, calling `loader` on a miss and caching what it returns on both tiers.
    ///
    /// Concurrent calls for one key share one load (single flight). The load runs as a task of
    /// its own: a caller that stops waiting does not cancel it for the others, and with
    /// [soft timeouts](crate::NamespacePolicy::soft_timeout) or
    /// [refresh-ahead](crate::NamespacePolicy::refresh_ahead) it may finish after every caller has its
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
    /// [negative TTL](crate::NamespacePolicy::negative_ttl) on both tiers, so a key that does not
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
        self.reads().get_or_load_with(key, move || loader).await
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
        crate::write::set(
            self.cache.shared(),
            &self.core,
            key_string(key),
            value,
            self.is_strict(),
        )
        .await
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
        crate::write::invalidate(self.cache.shared(), &self.core, keys, op, self.is_strict()).await
    }

    /// Removes every key of the namespace from Redis and from every node's L1, in O(1): no key
    /// is scanned. Values written before the call are marked dead by the namespace's floor and
    /// expire with their TTL.
    ///
    /// While Redis is unreachable the clear is queued (it supersedes this namespace's queued
    /// keys) and replayed, and this returns `Ok`, unless writes are
    /// [strict](Self::strict_writes).
    pub async fn invalidate_namespace(&self) -> Result<()> {
        crate::write::clear(self.cache.shared(), &self.core, self.is_strict()).await
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
}
