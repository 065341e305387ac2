//! Batch operations on a namespace: many keys per call, through both tiers, with the single-key
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
//!   one invalidation message listing every key. While writes of the namespace are queued in
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
//! Batch loads do not take part in single flight: a `get_or_load` and a batch loading the same
//! key at the same time both run their loaders. Coherence does not depend on it; both fills
//! are conditional.

use crate::codec;
use crate::error::{Error, Result};
use crate::guard::Ticket;
use crate::key::{key_string, CacheKey};
use crate::l1::AnyValue;
use crate::l2::{Payload, Stamp};
use crate::namespace::Namespace;
use crate::outbox::Route;
use crate::read::load::{self as loader, L2Read};
use crate::wire::Outgoing;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::hash_map::{Entry, HashMap};
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

/// A key of a batch that L1 could not answer.
pub(crate) struct Pending<'k, K: ?Sized> {
    key: &'k K,
    string: String,
    /// Taken before Redis is asked (see `guard.rs`).
    ticket: Ticket,
    /// Where the key stands in the caller's list.
    at: Vec<usize>,
}

impl<'k, K: ?Sized> Pending<'k, K> {
    /// One key about to be read from Redis, at position 0.
    pub(crate) fn one(key: &'k K, string: String, ticket: Ticket) -> Self {
        Self {
            key,
            string,
            ticket,
            at: vec![0],
        }
    }
}

/// The loader of a batch returned a list whose length does not match the keys it was given.
#[derive(Debug)]
struct LoaderShape {
    asked: usize,
    returned: usize,
}

impl std::fmt::Display for LoaderShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the batch loader returned {} values for {} keys (one Option per key, in order)",
            self.returned, self.asked
        )
    }
}

impl std::error::Error for LoaderShape {}

/// Puts each pending key's outcome at every position it was asked at.
fn scatter<K: ?Sized, T: Clone>(out: &mut [T], pending: &[Pending<'_, K>], outcomes: Vec<T>) {
    for (p, outcome) in pending.iter().zip(outcomes) {
        for &i in &p.at {
            out[i] = outcome.clone();
        }
    }
}

impl<K, V> Namespace<K, V>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reads many keys: L1, then one MGET to Redis for all the keys L1 did not have. One
    /// outcome per key, in order; `None` as for [`get`](Self::get) (no live value, or Redis
    /// unreachable).
    ///
    /// ```no_run
    /// # async fn run(quotes: tiered_cache::Namespace<str, f64>) {
    /// let prices = quotes.get_many(["AAPL", "MSFT", "NVDA"]).await;
    /// # }
    /// ```
    pub async fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Vec<Option<Arc<V>>>
    where
        K: 'k,
    {
        let (mut out, pending) = self.local_many(keys);
        if pending.is_empty() {
            return out;
        }
        let (found, _) = self.read_many(&pending, false).await;
        scatter(&mut out, &pending, found);
        out
    }

    /// Reads many keys, loading the ones neither tier has with one call of `loader`, and caches
    /// what it returns on both tiers.
    ///
    /// `loader` receives the keys still missing (each once, in the order first asked) and
    /// returns one `Option` per key, in the same order: `None` for a key it has no value for.
    /// Per key, the outcome is `Ok(Some(value))`, `Ok(None)` when the loader had none, or
    /// `Err` when the loader failed (every key it was asked for gets its error; so does a list
    /// of the wrong length). As with [`get_or_load`](Self::get_or_load): when Redis is
    /// unreachable loaded values are kept in L1 only, a value loaded while its key was written
    /// or invalidated elsewhere is returned but not cached, and a value that cannot be encoded
    /// is returned but not cached.
    ///
    /// ```no_run
    /// # use std::collections::HashMap;
    /// # async fn db_prices(symbols: &[&str]) -> Result<HashMap<String, f64>, std::io::Error> {
    /// #     let table = [("AAPL", 189.5), ("MSFT", 415.2)];
    /// #     Ok(table.iter().filter(|(s, _)| symbols.contains(s)).map(|(s, p)| (s.to_string(), *p)).collect())
    /// # }
    /// # async fn run(quotes: tiered_cache::Namespace<str, f64>) {
    /// let prices = quotes
    ///     .get_or_load_many(["AAPL", "MSFT", "NVDA"], |missing| async move {
    ///         let mut rows = db_prices(&missing).await?;
    ///         Ok::<_, std::io::Error>(missing.iter().map(|s| rows.remove(*s)).collect())
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn get_or_load_many<'k, F, Fut, E>(
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
        self.load_many(keys, &[], loader).await
    }

    /// Writes many values in one script: one version for all of them, every value stored in
    /// Redis, one invalidation message listing every key, then this node's L1 updated.
    ///
    /// One outcome per entry, in order. A value that cannot be encoded fails alone
    /// (`Error::Encode`) and is not written. If Redis cannot be reached, or writes of this
    /// namespace are still queued from an outage, every entry is queued in the outbox and
    /// replayed in order, as [`set`](Self::set) does, and each returns `Ok`. With
    /// [strict writes](Self::strict_writes), Redis unreachable fails them with
    /// `Error::Unavailable` (and this node's L1 no longer holds those keys), and with writes
    /// still queued the batch lands after what is queued for its keys, as `set` does. A
    /// [tagged](Self::set_many_tagged) batch is never queued as values (a replay would lose the
    /// tags): it lands after what is queued for its keys too, and with Redis unreachable each
    /// key is queued as an invalidation instead (unless strict).
    pub async fn set_many<'k>(
        &self,
        entries: impl IntoIterator<Item = (&'k K, V)>,
    ) -> Vec<Result<()>>
    where
        K: 'k,
    {
        self.write_many(entries, &[]).await
    }

    /// L1 for each key; the keys it could not answer, each once, with a ticket taken now.
    fn local_many<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> (Vec<Option<Arc<V>>>, Vec<Pending<'k, K>>)
    where
        K: 'k,
    {
        let keys = keys.into_iter();
        let mut out = Vec::with_capacity(keys.size_hint().0);
        let mut pending: Vec<Pending<'k, K>> = Vec::new();
        let mut index = HashMap::<String, usize>::new();
        for (i, key) in keys.enumerate() {
            let hit = self.get_local(key);
            if hit.is_none() {
                self.core.metrics.l1_miss.inc();
                match index.entry(key_string(key)) {
                    Entry::Occupied(e) => pending[*e.get()].at.push(i),
                    Entry::Vacant(e) => {
                        let ticket = self.core.gens.ticket(e.key());
                        pending.push(Pending {
                            key,
                            string: e.key().clone(),
                            ticket,
                            at: vec![i],
                        });
                        e.insert(pending.len() - 1);
                    }
                }
            }
            out.push(hit);
        }
        (out, pending)
    }

    /// One MGET for the pending keys (and the version counter, with `stamp`); hits go to L1
    /// through the guard. The stamp is `None` when Redis could not be asked.
    async fn read_many(
        &self,
        pending: &[Pending<'_, K>],
        stamp: bool,
    ) -> (Vec<Option<Arc<V>>>, Option<Stamp>) {
        let (core, shared) = (&*self.core, self.cache.shared());
        let keys: Vec<&str> = pending.iter().map(|p| p.string.as_str()).collect();
        let span = tracing::debug_span!("l2_read_many", namespace = %core.name, tier = "l2",
            keys = keys.len(), hits = tracing::field::Empty);
        // One latency observation per MGET, with the decodes, as `get` has one per GET.
        let start = std::time::Instant::now();
        let read = shared
            .l2
            .get_many(core.target(), &keys, stamp)
            .instrument(span.clone())
            .await;
        let (values, seen) = match read {
            Ok(read) => read,
            Err(_) => return (vec![None; pending.len()], None),
        };
        let mut found = Vec::with_capacity(pending.len());
        for (p, bytes) in pending.iter().zip(values) {
            let read = match bytes {
                Some(bytes) => loader::judge_l2::<V>(core, shared, &bytes).await,
                None => {
                    core.metrics.l2_miss.inc();
                    L2Read::Miss
                }
            };
            found.push(match read {
                L2Read::Hit {
                    version,
                    expires_ms,
                    value: Some(value),
                    weight,
                } => {
                    let value = Arc::new(value);
                    let any = Some(value.clone() as AnyValue);
                    let entry = core.l1_entry(any, version, expires_ms, weight);
                    core.insert_guarded(p.string.clone(), entry, &p.ticket);
                    Some(value)
                }
                // A cached "not found" (see `get_or_load_optional`) is asked of the loader
                // again by a batch, which has no way to return it.
                L2Read::Hit { value: None, .. }
                | L2Read::Expired { .. }
                | L2Read::Miss
                | L2Read::Unavailable => None,
            });
        }
        core.metrics.latency.l2.record(start.elapsed());
        span.record("hits", found.iter().filter(|f| f.is_some()).count());
        (found, seen)
    }

    /// `get_or_load_many`, with tags for the fills.
    pub(crate) async fn load_many<'k, F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
        tags: &[&str],
        loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        K: 'k,
        F: FnOnce(Vec<&'k K>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<Option<V>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (hits, pending) = self.local_many(keys);
        let mut out: Vec<Result<Option<Arc<V>>>> = hits.into_iter().map(Ok).collect();
        if pending.is_empty() {
            return out;
        }
        // Boxed, as `get_or_load`'s miss path is.
        let loaded = Box::pin(self.load_pending(&pending, tags, loader)).await;
        scatter(&mut out, &pending, loaded);
        out
    }

    /// The miss path for keys L1 could not answer: Redis, then one loader call for what Redis
    /// had not, then guarded fills to both tiers. One outcome per pending key.
    pub(crate) async fn load_pending<'k, F, Fut, E>(
        &self,
        pending: &[Pending<'k, K>],
        tags: &[&str],
        loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        F: FnOnce(Vec<&'k K>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<Option<V>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (core, shared) = (&*self.core, self.cache.shared());
        // `seen`: the version counter noted before the loader runs; `None` when Redis is out
        // of reach (cache locally only).
        let (found, seen) = self.read_many(pending, true).await;
        let missing: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        let mut out: Vec<Result<Option<Arc<V>>>> = found.into_iter().map(Ok).collect();
        if missing.is_empty() {
            return out;
        }

        let asked = missing.iter().map(|&i| pending[i].key).collect();
        let values = match loader(asked).await {
            Ok(values) if values.len() == missing.len() => values,
            failed => {
                let cause: crate::error::SharedError = match failed {
                    Err(e) => Arc::from(e.into()),
                    Ok(values) => Arc::new(LoaderShape {
                        asked: missing.len(),
                        returned: values.len(),
                    }),
                };
                let err = Error::Loader(cause);
                for &i in &missing {
                    core.metrics.loader_error.inc();
                    out[i] = Err(err.clone());
                }
                return out;
            }
        };

        let mut fills = Vec::new();
        for (&i, value) in missing.iter().zip(values) {
            let Some(value) = value else { continue };
            core.metrics.loader_ok.inc();
            let p = &pending[i];
            let life = core.l2_life(false);
            let encoded = codec::encode(Some(&value), life.expires_ms, core.policy.compress_above);
            let value = Arc::new(value);
            out[i] = Ok(Some(value.clone()));
            let any = Some(value as AnyValue);
            match (encoded, seen) {
                (Ok(encoded), Some(_)) => fills.push((p, any, encoded, life)),
                (Ok(encoded), None) => {
                    let entry = core.l1_entry(any, 0, Some(life.expires_ms), encoded.plain_len);
                    core.insert_guarded(p.string.clone(), entry, &p.ticket);
                }
                (Err(e), _) => {
                    tracing::warn!(target: "tiered_cache::loader", namespace = %core.name,
                        error = %e, "loaded value could not be encoded; not cached");
                }
            }
        }
        let Some(seen) = seen else { return out };
        // Sent together: the multiplexed connection pipelines them into one round trip.
        let filled = futures_util::future::join_all(fills.iter().map(|(p, _, encoded, life)| {
            let payload = Payload {
                encoded,
                ttl: life.keep_for,
            };
            shared
                .l2
                .fill_tagged(core.target(), &p.string, seen, payload, tags)
        }))
        .await;
        for ((p, value, encoded, life), filled) in fills.into_iter().zip(filled) {
            let key = p.string.clone();
            let encoded = (life.expires_ms, encoded.plain_len);
            loader::settle_fill(core, key, value, encoded, &p.ticket, filled);
        }
        out
    }

    /// `set_many`, with tags.
    pub(crate) async fn write_many<'k>(
        &self,
        entries: impl IntoIterator<Item = (&'k K, V)>,
        tags: &[&str],
    ) -> Vec<Result<()>>
    where
        K: 'k,
    {
        let (core, shared) = (&*self.core, self.cache.shared());
        let mut out = Vec::new();
        let mut batch = Vec::new();
        for (i, (key, value)) in entries.into_iter().enumerate() {
            // Each value its own life: with jitter, keys written together expire apart.
            let life = core.l2_life(false);
            match codec::encode(Some(&value), life.expires_ms, core.policy.compress_above) {
                Ok(encoded) => {
                    batch.push((i, key_string(key), (encoded, life), value));
                    out.push(Ok(()));
                }
                Err(e) => out.push(Err(Error::Encode(Arc::new(e)))),
            }
        }
        if batch.is_empty() {
            return out;
        }
        let strict = self.is_strict();
        let keys: Vec<&str> = batch.iter().map(|(_, k, ..)| k.as_str()).collect();
        // While writes of this namespace are queued, an untagged batch joins them; a strict or
        // tagged one (a replay would lose the tags) lands behind what is queued for its keys.
        // A route error is the replay of a queued clear failing; the replay counted it.
        let queueable = tags.is_empty() && !strict;
        let route = match crate::write::route(shared, core, Some(&keys), queueable).await {
            Ok(Route::Queue) => {
                self.enqueue_writes(batch);
                return out;
            }
            Ok(route) => route,
            Err(e) if e.is_unreachable() && !strict => {
                // A queued clear could not be replayed first: degraded, not failed.
                self.degrade(batch, tags);
                return out;
            }
            Err(e) => {
                let err = e.into_error("set_many");
                for (i, key, ..) in &batch {
                    core.evict(key);
                    out[*i] = Err(err.clone());
                }
                return out;
            }
        };
        let before: Vec<Ticket> = keys.iter().map(|k| core.gens.ticket(k)).collect();
        let message = Outgoing::keys(shared.node_id, &core.name, &keys);
        let entries: Vec<_> = batch
            .iter()
            .map(|(_, k, (encoded, life), _)| (k.as_str(), encoded, life.keep_for))
            .collect();
        let written = shared
            .l2
            .write_many(core.target(), &entries, tags, &message)
            .await;
        route.landed(written.is_ok());
        // Fences loads that read Redis before the write landed.
        let after = core.gens.bump_keys(&keys, &before);
        for k in &keys {
            core.flights.detach(k);
        }
        match written {
            Ok(stamp) => {
                core.metrics.inv_sent.inc();
                for ((_, key, (encoded, life), value), (ticket, alone)) in
                    batch.into_iter().zip(after)
                {
                    if alone {
                        let entry = core.l1_entry(
                            Some(Arc::new(value)),
                            stamp.version,
                            Some(life.expires_ms),
                            encoded.plain_len,
                        );
                        core.insert_guarded(key, entry, &ticket);
                    } else {
                        // Another invalidation of the key landed meanwhile (as in `set`).
                        core.l1.remove(&key);
                    }
                }
            }
            Err(e) if e.is_unreachable() && !strict => self.degrade(batch, tags),
            Err(e) => {
                let err = e.into_error("set_many");
                for (i, key, ..) in batch {
                    core.l1.remove(&key);
                    out[i] = Err(err.clone());
                }
            }
        }
        out
    }

    /// A non-strict batch Redis could not be reached for: degraded, not failed. Untagged
    /// writes are queued as `set` queues them. A tagged write is queued as an invalidation of
    /// its key instead: a replayed write would not join the tags' sets, so a later
    /// invalidation of a tag could not reach it. Its value is cached nowhere (this node's L1
    /// drops the key too, for the same reason) and the next read after the replay loads afresh.
    fn degrade(&self, batch: Vec<Encoded<V>>, tags: &[&str]) {
        if tags.is_empty() {
            return self.enqueue_writes(batch);
        }
        let shared = self.cache.shared();
        for (_, key, ..) in batch {
            shared.outbox.enqueue_unwritten(&self.core, key);
        }
    }

    /// Queues each write in the outbox, as `set` does while Redis is unreachable.
    fn enqueue_writes(&self, batch: Vec<Encoded<V>>) {
        let shared = self.cache.shared();
        for (_, key, (encoded, life), value) in batch {
            let entry = crate::write::local_only(&self.core, value, &life, &encoded);
            shared
                .outbox
                .enqueue_write(&self.core, key, encoded, Some(entry));
        }
    }
}

/// One entry of a batch write: its place in the caller's list, its key, its encoded form and
/// life, and its value.
type Encoded<V> = (usize, String, (codec::Encoded, crate::space::Life), V);
