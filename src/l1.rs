//! The L1 tier: one moka cache per namespace, in process memory, holding decoded values.
//!
//! An entry is the decoded value behind an `Arc` plus the version of the write it came from, so
//! a hit is a hash lookup and a few word copies: no decoding, no allocation, no Redis. Values are
//! stored type-erased (`Arc<dyn Any>`) because namespaces are declared before their types are
//! known; the namespace pins its value type on first use, so the downcast on a hit cannot fail.
//!
//! moka drops entries after the namespace's L1 TTL (plus the fail-safe window, which keeps
//! entries past their freshness). An entry that must stop being fresh earlier (the value's
//! remaining life in Redis is shorter; a cached "not found"; fail-safe) carries `watch_at`, the
//! one instant a hit compares against; for the others it is `None` and a hit reads no clock.
//! moka's per-entry expiry would do the same, but costs about 30 ns on every hit.
//!
//! This is the only module that imports moka; keeping the interface this narrow leaves room to
//! offer a faster engine for hot, read-mostly namespaces.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A type-erased value.
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// A decoded value and the version of the write that stored it.
#[derive(Clone)]
pub(crate) struct L1Entry {
    /// `None`: a cached "not found".
    pub(crate) value: Option<AnyValue>,
    pub(crate) version: u64,
    /// When the value stops being fresh.
    pub(crate) fresh_until: Instant,
    /// The earliest of the instants a hit must check (stale, refresh), if any.
    pub(crate) watch_at: Option<Instant>,
    /// What the entry counts for against a byte-bounded L1.
    pub(crate) weight: u32,
}

impl L1Entry {
    /// Whether the value is past its freshness (only kept for fail-safe).
    pub(crate) fn is_stale(&self, now: Instant) -> bool {
        now >= self.fresh_until
    }
}

/// How an L1 is bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bound {
    Entries(u64),
    Bytes(u64),
}

/// One namespace's local tier.
pub(crate) struct L1Tier {
    cache: moka::sync::Cache<String, L1Entry>,
}

impl L1Tier {
    /// `keep` is how long an entry stays, fresh or (with fail-safe) not.
    pub(crate) fn new(bound: Bound, keep: Duration) -> Self {
        let builder = moka::sync::Cache::builder().time_to_live(keep);
        let cache = match bound {
            Bound::Entries(n) => builder.max_capacity(n).build(),
            Bound::Bytes(n) => builder
                .max_capacity(n)
                .weigher(|k: &String, e: &L1Entry| e.weight.saturating_add(k.len() as u32))
                .build(),
        };
        Self { cache }
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<L1Entry> {
        self.cache.get(key)
    }

    /// Inserts unless the key already holds a newer version: an L1 entry never goes back.
    /// Atomic per key (moka serialises computations on one key), so a reader that found a
    /// newer value in Redis cannot be overwritten by a writer finishing an older write.
    /// Returns whether the entry was stored.
    pub(crate) fn insert_if_newer(&self, key: String, entry: L1Entry) -> bool {
        use moka::ops::compute::{CompResult, Op};
        let result = self
            .cache
            .entry(key)
            .and_compute_with(|existing| match existing {
                Some(e) if e.value().version > entry.version => Op::Nop,
                _ => Op::Put(entry),
            });
        matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        )
    }

    /// Replaces the entry of `key` only if it holds `entry`'s very version; does nothing if
    /// the key is absent (an invalidation removed it) or holds another version. Returns
    /// whether it replaced.
    pub(crate) fn replace_same_version(&self, key: &str, entry: L1Entry) -> bool {
        use moka::ops::compute::{CompResult, Op};
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|existing| match existing {
                Some(e) if e.value().version == entry.version => Op::Put(entry),
                _ => Op::Nop,
            });
        matches!(result, CompResult::ReplacedWith(_))
    }

    /// Removes the entry of `key` if it holds a version older than `version`, but not a
    /// write of this node's that Redis has not taken yet (version 0: see `write::local_only`).
    pub(crate) fn remove_older(&self, key: &str, version: u64) {
        use moka::ops::compute::Op;
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|existing| match existing {
                Some(e) if e.value().version < version && e.value().version != 0 => Op::Remove,
                _ => Op::Nop,
            });
    }

    pub(crate) fn remove(&self, key: &str) {
        self.cache.invalidate(key)
    }

    /// Hides every entry present now. Loads in flight are fenced by the generation guard.
    pub(crate) fn clear(&self) {
        self.cache.invalidate_all()
    }

    /// Entries and summed weight, after one maintenance pass.
    pub(crate) fn size(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
