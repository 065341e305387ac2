//! The typed handle [`Namespace<K, V>`] through which callers read and write one namespace.
//!
//! Write order, as seen by the fleet: the L2 write and the broadcast happen in one script; then
//! this node's own L1 is updated (other nodes evict on the message; this node skips its own).

mod batch;
mod tags;
mod touch;

pub use batch::Batch;

use crate::cache::TieredCache;
use crate::error::{Error, Result};
use crate::key::{key_string, with_key_str, CacheKey};
use crate::options::EntryOptions;
use crate::read::{downcast, Fill, Reads};
use crate::space::NamespaceCore;
use crate::space::TtlOverride;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// Keys per script and message in [`Batch::invalidate`]: bounds one Lua call's run
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
///
/// # Verbs
/// - reads: [`get_local`](Self::get_local) (L1 only), [`get`](Self::get) (L1, then Redis),
///   [`get_or_load`](Self::get_or_load) and [`get_or_load_optional`](Self::get_or_load_optional)
///   (then the loader, caching what it returns);
/// - writes: [`set`](Self::set), [`invalidate`](Self::invalidate),
///   [`invalidate_namespace`](Self::invalidate_namespace), [`invalidate_tag`](Self::invalidate_tag);
/// - sliding expiry: [`touch`](Self::touch), [`get_and_touch`](Self::get_and_touch);
/// - many keys at once: [`batch`](Self::batch);
/// - per-call options (tags, strictness, TTLs): [`with`](Self::with), which gives a handle
///   whose every verb applies them.
pub struct Namespace<K: ?Sized, V> {
    pub(crate) core: Arc<NamespaceCore>,
    pub(crate) cache: TieredCache,
    /// What [`with`](Self::with) set; `None`: the policy and the cache's defaults.
    options: Option<Arc<EntryOptions>>,
    _types: PhantomData<fn(&K) -> V>,
}

impl<K: ?Sized, V> Clone for Namespace<K, V> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            cache: self.cache.clone(),
            options: self.options.clone(),
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
            options: None,
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
        Box::pin(reads.get_remote(key_string(key), self.ttl().l1)).await
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
        let make = move || move || async move { loader().await.map(Some) };
        let found = self
            .reads()
            .get_or_load_with(key, make, self.fill())
            .await?;
        found.ok_or(Error::NotFound)
    }

    /// Like [`get_or_load`](Self::get_or_load), for a source that may have no value: the
    /// loader returns `Ok(None)` for "not found", which is cached for the namespace's
    /// [negative TTL](crate::NamespacePolicy::negative_ttl) on both tiers, so a key that does not
    /// exist is not looked up at the source on every call. A later write of the key replaces
    /// it everywhere, like any value.
    ///
    /// On a tagged handle a cached "not found" joins the tags' sets too: invalidating a tag
    /// drops it like any value.
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
        self.reads()
            .get_or_load_with(key, move || loader, self.fill())
            .await
    }

    /// Writes a value to Redis and to this node's L1, and tells every other node to evict it.
    ///
    /// When Redis is unreachable (the breaker is open, or the call timed out or failed at the
    /// connection level) the write is queued in this node's outbox and replayed when Redis is
    /// back, and `set` returns `Ok`. One Redis refuses (an error reply: `READONLY`, `OOM`...)
    /// is queued as an invalidation of the key instead (every node's copy, this one's too, is
    /// dropped once Redis takes it). For a write queued as a value, this node's L1 keeps the new value only in a namespace
    /// built with [`unbounded_staleness`](crate::NamespacePolicy::unbounded_staleness), and
    /// drops its copy elsewhere. Its replay never lands over a write another node made
    /// meanwhile (the key is invalidated instead): see docs/degraded-mode.md.
    ///
    /// With [strict](EntryOptions::strict) writes it returns `Err(Unavailable)` instead: this
    /// node's L1 no longer holds the key, and whether Redis and the other nodes saw the write
    /// is unknown (a timeout may come after the write ran): retry, or invalidate once Redis is
    /// back.
    ///
    /// On a handle with [tags](EntryOptions::tag) the key joins each tag's set in the same
    /// script, so a later [`invalidate_tag`](Self::invalidate_tag) of any of them reaches this
    /// value. With Redis unreachable such a write is not queued as a value (a replayed write
    /// would not join the tags' sets): an invalidation of the key is queued instead, this
    /// node's L1 drops the key, and this returns `Ok`; the value is then cached nowhere, and
    /// the next read after the replay loads afresh. Counted in the outbox's `queued` and
    /// `dropped`.
    pub async fn set(&self, key: &K, value: V) -> Result<()> {
        let (shared, how) = (self.cache.shared(), (self.is_strict(), self.ttl()));
        let entry = (key_string(key), value);
        crate::write::set(shared, &self.core, entry, &self.tags(), how).await
    }

    /// Stores `value` only if it is newer, by the writer's own version of it (a database LSN,
    /// a change-stream offset: any number that grows with every change of the key), than what
    /// Redis holds for the key: writes then land in the source's order, whatever order they
    /// arrive in. Redis keeps `source_version` in the entry; an entry written without one (a
    /// plain `set`, a load, a plain invalidation) counts as older. Returns
    /// [`SourceWrite::Superseded`](crate::SourceWrite::Superseded) (nothing written) when Redis holds this version or a newer
    /// one, a value or an [`invalidate_if_newer`](Self::invalidate_if_newer).
    ///
    /// Always strict: with Redis unreachable, or refusing, it returns `Err(Unavailable)` and
    /// this node's L1 no longer holds the key; retry from the source. Nothing is queued, since
    /// a replay could not keep the source's order. Takes no [tags](EntryOptions::tag): on a
    /// tagged handle it returns `Err(InvalidOptions)`.
    pub async fn set_if_newer(
        &self,
        key: &K,
        value: V,
        source_version: u64,
    ) -> Result<crate::SourceWrite> {
        self.untagged("set_if_newer")?;
        let entry = (key_string(key), value);
        let (shared, ttl) = (self.cache.shared(), self.ttl());
        crate::write::set_if_newer(shared, &self.core, entry, source_version, ttl).await
    }

    /// Removes a key from Redis and from every node's L1 only if `source_version` is newer than
    /// what Redis holds for it (see [`set_if_newer`](Self::set_if_newer)): the tombstone keeps
    /// `source_version`, so a late write of an older version cannot bring the key back while
    /// it lasts (the namespace's L2 TTL). Always strict, and takes no tags, like `set_if_newer`.
    pub async fn invalidate_if_newer(
        &self,
        key: &K,
        source_version: u64,
    ) -> Result<crate::SourceWrite> {
        self.untagged("invalidate_if_newer")?;
        let shared = self.cache.shared();
        crate::write::invalidate_if_newer(shared, &self.core, key_string(key), source_version).await
    }

    fn untagged(&self, op: &str) -> Result<()> {
        if self.tags().is_empty() {
            return Ok(());
        }
        Err(crate::Error::InvalidOptions(format!(
            "{op} takes no tags: call it on a handle without them"
        )))
    }

    /// Removes a key from Redis and from every node's L1.
    ///
    /// Redis keeps a small tombstone for the namespace's L2 TTL, so a load that started before
    /// this call cannot write its older value back. It runs even when Redis 7 is out of memory.
    /// While Redis is unreachable, or refuses it (`READONLY`...), the invalidation is queued
    /// and retried until it lands (always safe) and this returns `Ok`, unless writes are
    /// [strict](EntryOptions::strict).
    pub async fn invalidate(&self, key: &K) -> Result<()> {
        self.invalidate_strings(vec![key_string(key)], "invalidate")
            .await
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
    /// While Redis is unreachable, or refuses it, the clear is queued (it supersedes this
    /// namespace's queued keys) and retried until it lands, and this returns `Ok`, unless writes are
    /// [strict](EntryOptions::strict).
    pub async fn invalidate_namespace(&self) -> Result<()> {
        crate::write::clear(self.cache.shared(), &self.core, self.is_strict()).await
    }

    /// A handle whose every verb applies `options` (tags, strictness, TTLs) on top of this
    /// handle's: what `options` sets replaces this handle's setting, and its tags are added to
    /// this handle's. Cheap (a clone of the handle and the options behind an `Arc`): build it
    /// once and keep it, or make one per call.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn run(positions: tiered_cache::Namespace<str, i64>) -> tiered_cache::Result<()> {
    /// use tiered_cache::EntryOptions;
    /// let window = positions.with(EntryOptions::new().tag("window-42").ttl(Duration::from_secs(600)))?;
    /// window.set("acct-1", 1_500).await?;
    /// window.batch().set([("acct-2", 200), ("acct-3", -75)]).await;
    /// positions.invalidate_tag("window-42").await?; // the window closed
    /// # Ok(()) }
    /// ```
    ///
    /// `Err(InvalidTag)` for a bad tag name and `Err(InvalidOptions)` for a TTL this namespace
    /// cannot honour (zero, or an L1 TTL longer than the namespace's), before any I/O.
    pub fn with(&self, options: EntryOptions) -> Result<Self> {
        let options = self.options().layered(options);
        options.validate(&self.core.name, &self.core.policy)?;
        Ok(Self {
            options: Some(Arc::new(options)),
            ..self.clone()
        })
    }

    /// The options [`with`](Self::with) gave this handle (the defaults on a plain handle).
    pub fn options(&self) -> EntryOptions {
        self.options.as_deref().cloned().unwrap_or_default()
    }

    /// Many keys at once: one MGET, one script and one message per call instead of one per key.
    pub fn batch(&self) -> Batch<'_, K, V> {
        Batch { ns: self }
    }

    pub(crate) fn tags(&self) -> Vec<&str> {
        self.options
            .as_ref()
            .map_or_else(Vec::new, |o| o.tag_refs())
    }

    /// What loads through this handle store with their values.
    pub(crate) fn fill(&self) -> Fill<'_> {
        Fill {
            ttl: self.ttl(),
            tags: self.options.as_ref().map_or(&[], |o| &o.tags[..]),
        }
    }

    pub(crate) fn ttl(&self) -> TtlOverride {
        self.options
            .as_ref()
            .map_or_else(TtlOverride::default, |o| o.ttl_override())
    }

    pub(crate) fn is_strict(&self) -> bool {
        self.options
            .as_ref()
            .and_then(|o| o.strict)
            .unwrap_or_else(|| self.cache.shared().strict_writes)
    }
}
