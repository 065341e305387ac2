//! [`Batch`]: many keys per call, through both tiers, with the single-key
//! paths' guarantees.
//!
//! - **Reads** look in L1 first, then ask Redis for every key L1 could not answer in one MGET
//!   (with the version counter in the same round trip when a load may follow), then call the
//!   loader once with the keys still missing. Every L1 insert goes through the generation
//!   guard, with a ticket taken before Redis was asked; values below the namespace floor,
//!   tombstones and bytes that do not decode are (counted) misses.
//! - **Fills** of loaded values are each FILL's conditional script (a load that raced an
//!   invalidation cannot write back an older value), sent together on the multiplexed
//!   connection: one round trip, and each goes through the same timeout and back-off as every
//!   other Redis call.
//! - **Writes** are one script: one version drawn for the whole batch, every value stored,
//!   one invalidation message listing every key (a batch whose message would pass 256 KiB of
//!   keys runs as several such scripts, in order). While writes of the namespace are queued in
//!   the outbox (Redis unreachable, or not yet replayed), an untagged batch joins the queue
//!   (its keys then get versions of their own); a strict or tagged one takes its keys' queued
//!   operations out of the queue and lands after them, in one script. A tagged batch that
//!   cannot reach Redis queues an invalidation of each key (unless strict): its values are
//!   given up, since a replayed write would not join the tags' sets.
//!
//! Outcomes are per key, in the caller's order. A key asked twice is fetched and loaded once.
//! Counts are per key too (a batch of 100 counts like 100 single calls), except Redis errors,
//! which count failed calls.
//!
//! Batch loads take part in single flight: a key another call is loading is waited for, and
//! the keys a batch loads are flights other callers join. A key the loader has no value for is
//! cached as "not found" for the negative TTL, as `get_or_load_optional` does. Refresh-ahead
//! is left to single-key reads (see `docs/resilience.md`).

use crate::error::Result;
use crate::key::{key_string, CacheKey};
use crate::namespace::{Namespace, INVALIDATE_BATCH};
use crate::read::batch::scatter;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// Many keys of one namespace at once, from [`Namespace::batch`]: one MGET for the keys L1
/// lacks, one loader call for the keys neither tier has, one script and one message per write
/// or invalidation. Applies the handle's [options](crate::EntryOptions) (tags, strictness,
/// TTLs) as the single-key verbs do.
pub struct Batch<'a, K: ?Sized, V> {
    pub(crate) ns: &'a Namespace<K, V>,
}

impl<K, V> Batch<'_, K, V>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reads many keys: L1, then one MGET to Redis for all the keys L1 did not have. One
    /// outcome per key, in order; `None` as for [`Namespace::get`] (no live value, or Redis
    /// unreachable).
    ///
    /// ```no_run
    /// # async fn run(quotes: tiered_cache::Namespace<str, f64>) {
    /// let prices = quotes.batch().get(["AAPL", "MSFT", "NVDA"]).await;
    /// # }
    /// ```
    pub async fn get<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Vec<Option<Arc<V>>>
    where
        K: 'k,
    {
        let reads = self.ns.reads();
        let (mut out, pending) = reads.local_many(keys);
        if pending.is_empty() {
            return out;
        }
        let read = reads.read_many(&pending, (false, self.ns.ttl().l1)).await;
        let found = read.answered.into_iter().map(Option::flatten).collect();
        scatter(&mut out, &pending, found);
        out
    }

    /// Reads many keys, loading the ones neither tier has with one call of `loader`, and caches
    /// what it returns on both tiers.
    ///
    /// `loader` receives the keys still missing (each once, in the order first asked) and
    /// returns one `Option` per key, in the same order: `None` for a key it has no value for.
    /// Per key, the outcome is `Ok(Some(value))`, `Ok(None)` when the loader had none (cached
    /// as "not found" for the namespace's negative TTL, on both tiers), or
    /// `Err` when the loader failed (every key it was asked for gets its error; so does a list
    /// of the wrong length). As with [`Namespace::get_or_load`]: when Redis is unreachable
    /// loaded values are kept in L1 only, a value loaded while its key was written or
    /// invalidated elsewhere is returned but not cached, and a value that cannot be encoded is
    /// returned but not cached. On a tagged handle the fills join the tags' sets. A key that
    /// another call is loading is not asked of `loader`: its outcome is that load's.
    ///
    /// ```no_run
    /// # use std::collections::HashMap;
    /// # async fn db_prices(symbols: &[&str]) -> Result<HashMap<String, f64>, std::io::Error> {
    /// #     let table = [("AAPL", 189.5), ("MSFT", 415.2)];
    /// #     Ok(table.iter().filter(|(s, _)| symbols.contains(s)).map(|(s, p)| (s.to_string(), *p)).collect())
    /// # }
    /// # async fn run(quotes: tiered_cache::Namespace<str, f64>) {
    /// let prices = quotes
    ///     .batch()
    ///     .get_or_load(["AAPL", "MSFT", "NVDA"], |missing| async move {
    ///         let mut rows = db_prices(&missing).await?;
    ///         Ok::<_, std::io::Error>(missing.iter().map(|s| rows.remove(*s)).collect())
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn get_or_load<'k, F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
        loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        K: 'k,
        F: FnOnce(Vec<&'k K>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<Option<V>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (tags, ttl) = (self.ns.tags(), self.ns.ttl());
        self.ns.reads().load_many(keys, (&tags, ttl), loader).await
    }

    /// Writes many values in one script: one version for all of them, every value stored in
    /// Redis, one invalidation message listing every key, then this node's L1 updated. A
    /// batch whose keys would take that message past 256 KiB runs as several scripts, each
    /// with its own version and message (a failure leaves the runs before it written).
    ///
    /// One outcome per entry, in order. A value that cannot be encoded fails alone
    /// (`Error::Encode`) and is not written. If Redis cannot be reached, or writes of this
    /// namespace are still queued from an outage, every entry is queued in the outbox and
    /// replayed in order, as [`Namespace::set`] does, and each returns `Ok`. With
    /// [strict](crate::EntryOptions::strict) writes, Redis unreachable fails them with
    /// `Error::Unavailable` (and this node's L1 no longer holds those keys), and with writes
    /// still queued the batch lands after what is queued for its keys, as `set` does. A
    /// [tagged](crate::EntryOptions::tag) batch is never queued as values (a replay would lose
    /// the tags): it lands after what is queued for its keys too, and with Redis unreachable
    /// each key is queued as an invalidation instead (unless strict).
    pub async fn set<'k>(&self, entries: impl IntoIterator<Item = (&'k K, V)>) -> Vec<Result<()>>
    where
        K: 'k,
    {
        // Collected here, so the write's future holds no caller's iterator.
        let entries: Vec<(String, V)> = entries
            .into_iter()
            .map(|(k, v)| (key_string(k), v))
            .collect();
        let ns = self.ns;
        let (shared, how) = (ns.cache.shared(), (ns.is_strict(), ns.ttl()));
        let tags = ns.tags();
        crate::write::batch::write_many(shared, &ns.core, entries, &tags, how, "set_many").await
    }

    /// Removes many keys from Redis and from every node's L1: one script and one message per
    /// [`INVALIDATE_BATCH`] keys (duplicates removed), instead of one per key. Same guarantees
    /// as [`Namespace::invalidate`], including the queue while Redis is unreachable. On an
    /// error every listed key has left this node's L1, and the batches before the failed one
    /// have been invalidated everywhere.
    ///
    /// ```no_run
    /// # async fn run(metrics: tiered_cache::Namespace<str, f64>) -> tiered_cache::Result<()> {
    /// // A tenant's risk limits changed: drop the metrics of every user it applies to.
    /// metrics.batch().invalidate(["tenant-7:alice", "tenant-7:bob"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Result<()>
    where
        K: 'k,
    {
        let ns = self.ns;
        let mut keys: Vec<String> = keys.into_iter().map(|k| key_string(k)).collect();
        keys.sort_unstable();
        keys.dedup();
        for chunk in keys.chunks(INVALIDATE_BATCH) {
            if let Err(e) = ns
                .invalidate_strings(chunk.to_vec(), "invalidate_many")
                .await
            {
                // What Redis did not get must not be served from here either.
                keys.iter().for_each(|k| ns.core.evict(k));
                return Err(e);
            }
        }
        Ok(())
    }
}
