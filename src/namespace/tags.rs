//! Tags: attach names to values when they are written or loaded (through a handle
//! [`with`](crate::Namespace::with) [tags](crate::EntryOptions::tag)) (a clearing window's id on all
//! of that window's net positions, a tenant on a user's risk entries), then invalidate every
//! value carrying a tag, on every node, in one script and one message, without `KEYS` or `SCAN`.
//!
//! Design and trade-off: Redis keeps, per namespace and tag, a set of the value keys written or
//! filled with the tag (`{prefix}:_tc:tag:{ns}:{tag}`). The write and fill scripts add to it in
//! the same atomic step as the value and keep it alive at least as long as the values it lists.
//! [`invalidate_tag`](crate::Namespace::invalidate_tag) is one script: it tombstones every key
//! the set lists (exactly as `invalidate` does, so slower loads cannot fill them back), records
//! the version as the tag's floor (a tagged fill noted before it is refused, even for a key the
//! set did not list yet), deletes the set, and publishes one message naming the keys.
//!
//! - Cost: one `ZADD` per tag per write, and memory for the sets (each lists the keys written
//!   with the tag in the last two TTLs, since its last invalidation). The invalidation is O(keys
//!   listed) inside Redis, as one atomic script, and O(1) messages: fine for thousands of keys,
//!   a noticeable pause of the server for millions.
//! - A listed key may have expired, or been rewritten without the tag since: it is tombstoned
//!   anyway. That is a spurious invalidation (the next read reloads it), never a stale read.
//! - Tags are part of how a key is written: give a key the same tags on every write and load.
//!   A write or fill without the tag does not join the set, so a later invalidation of the tag
//!   would not reach that value. Writing a key without the tag does not take it out of the
//!   set; it leaves two TTLs (and a second) after its last tagged write.
//! - While Redis is unreachable the tag sets cannot be updated or read, and a replay cannot
//!   carry tags, so tagged calls degrade to what is sure to cover them (unless writes are
//!   strict): a tagged write is queued as an invalidation of its key (its value is cached
//!   nowhere; the next read after the replay loads afresh), and a tag invalidation as a clear
//!   of each namespace it covers (more misses, never a stale read).
//! - The alternative, namespace-style floors per tag checked on every read, would need each
//!   read to know its key's tags (stored beside the value and checked against per-tag floors):
//!   more work on every read to save work on the rare invalidation.

use crate::cache::TieredCache;
use crate::error::Result;
use crate::key::CacheKey;
use crate::namespace::Namespace;
use crate::space::NamespaceCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

impl<K, V> Namespace<K, V>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Removes every value of this namespace written or loaded with `tag`, from Redis and
    /// from every node's L1: one script, one message, no key scan. Returns how many keys the
    /// tag listed (each is now a tombstone; some may already have expired, or have been
    /// rewritten without the tag: they are invalidated anyway, harmlessly). Where the keys
    /// would take the message past 256 KiB, or Redis evicted the tag's set, the namespace is
    /// cleared instead (see `docs/coherence.md`, memory pressure and eviction).
    ///
    /// A tagged load that started before this call cannot write its value back afterwards,
    /// even for a key that was not cached yet: the tag's floor refuses it (kept for the
    /// namespace's L2 TTL, as tombstones are).
    ///
    /// When Redis is unreachable (breaker open, timeout, connection failure) which keys the
    /// tag lists is unknown here, so a clear of the whole namespace, the safe superset, is
    /// queued in the outbox and replayed when Redis is back (this node's L1 of the namespace
    /// is cleared now), and this returns `Ok(0)`: 0 because the tag's keys are unknown while
    /// Redis is unreachable; the namespace clear is queued and replayed. `Ok(0)` therefore
    /// does not prove the tag listed nothing; until the replay lands, nodes that can still
    /// reach Redis (a partition, not an outage) may read the tag's old values from it.
    ///
    /// With [strict](crate::EntryOptions::strict) writes it returns `Err(Unavailable)` instead: this
    /// node's L1 of the namespace is cleared, and whether Redis and the other nodes saw the
    /// invalidation is unknown: retry once Redis is back.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<usize> {
        crate::write::invalidate_tag(self.cache.shared(), &[&self.core], tag, self.is_strict())
            .await
    }
}

impl TieredCache {
    /// [`Namespace::invalidate_tag`] in every namespace this node has configured, in one
    /// script and one message (plus one per namespace cleared instead, as there): "the window settled, drop everything cached for it". Returns
    /// how many keys the tag listed in all of them.
    ///
    /// Namespaces only other nodes configure are not covered: they are unknown here.
    ///
    /// With Redis unreachable, a clear of every namespace this node configures is queued and
    /// replayed, and this returns `Ok(0)`, as [`Namespace::invalidate_tag`] does (0: the tag's
    /// keys are unknown while Redis is unreachable). With the builder's
    /// [`strict_writes`](crate::TieredCacheBuilder::strict_writes), nothing is queued: every
    /// namespace's L1 is cleared and it returns `Err(Unavailable)`.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<usize> {
        let cores: Vec<&NamespaceCore> = self.shared().namespaces().iter().map(|c| &**c).collect();
        let strict = self.shared().strict_writes;
        crate::write::invalidate_tag(self.shared(), &cores, tag, strict).await
    }
}
