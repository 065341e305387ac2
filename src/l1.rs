//! The L1 tier: one moka cache per namespace, in process memory, holding decoded values.
//!
//! An entry is the decoded value behind an `Arc` plus the version of the write it came from, so
//! a hit is a hash lookup and two word copies: no decoding, no allocation, no Redis. Values are
//! stored type-erased (`Arc<dyn Any>`) because namespaces are declared before their types are
//! known; the namespace pins its value type on first use, so the downcast on a hit cannot fail.
//!
//! This is the only module that imports moka; keeping the interface this narrow leaves room to
//! offer a faster engine for hot, read-mostly namespaces.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// A decoded value and the version of the write that stored it.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) version: u64,
}

/// One namespace's local tier.
pub(crate) struct L1Tier {
    cache: moka::sync::Cache<String, L1Entry>,
}

impl L1Tier {
    pub(crate) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
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

    pub(crate) fn remove(&self, key: &str) {
        self.cache.invalidate(key)
    }

    /// Hides every entry present now. Loads in flight are fenced by the generation guard.
    pub(crate) fn clear(&self) {
        self.cache.invalidate_all()
    }

    /// Approximate: moka applies some bookkeeping lazily.
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
