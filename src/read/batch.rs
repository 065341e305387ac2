//! Batch reads: L1 for every key, then one MGET for the keys L1 could not answer (with the
//! version counter in the same round trip when a load may follow), then one loader call for
//! the keys still missing, then guarded fills to both tiers (see `namespace/batch.rs` for the contract).

use super::remote::{self, L2Read};
use super::{downcast, Reads};
use crate::codec;
use crate::error::{Error, Result};
use crate::flight::{self, Leader, Role};
use crate::guard::Ticket;
use crate::key::{key_string, CacheKey};
use crate::l1::{AnyValue, L1Entry};
use crate::l2::{L2Error, Payload, Stamp};
use crate::space::{Lookup, NamespaceCore, TtlOverride};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::hash_map::{Entry, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// A key of a batch that L1 could not answer.
pub(crate) struct Pending<'k, K: ?Sized> {
    key: &'k K,
    string: String,
    /// Taken before Redis is asked (see `guard.rs`).
    ticket: Ticket,
    /// Where the key stands in the caller's list.
    at: Vec<usize>,
    /// L1's expired copy, read before the ticket, kept for fail-safe (`None` without it).
    stale: Option<L1Entry>,
}

/// What one MGET answered for a batch's pending keys.
pub(crate) struct ManyRead<V> {
    /// Per key: `Some` when Redis answered it (a value, or a cached "not found"), `None` when
    /// it has no live value or could not be asked.
    pub(crate) answered: Vec<Option<Option<Arc<V>>>>,
    /// The version counter, when asked for and Redis answered.
    pub(crate) seen: Option<Stamp>,
    /// Per key: a value past its expiry that Redis keeps for fail-safe.
    pub(crate) expired: Vec<Option<L1Entry>>,
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

/// Why a batch load cannot apply a namespace's policy, if it cannot: it answers every key at
/// once, so it can neither hand out stale values at a soft timeout while loading on, nor wait
/// on one fleet lock per key.
fn batch_refuses(policy: &crate::config::NamespacePolicy) -> Option<&'static str> {
    if policy.soft_timeout.is_some() {
        return Some("a batch load cannot apply the soft timeout (it answers every key at once); load these keys one by one with get_or_load");
    }
    if policy.fleet_lock.is_some() {
        return Some("a batch load cannot take the fleet-wide load lock of each key; load these keys one by one with get_or_load");
    }
    None
}

/// Puts each pending key's outcome at every position it was asked at.
pub(crate) fn scatter<K: ?Sized, T: Clone>(
    out: &mut [T],
    pending: &[Pending<'_, K>],
    outcomes: Vec<T>,
) {
    for (p, outcome) in pending.iter().zip(outcomes) {
        for &i in &p.at {
            out[i] = outcome.clone();
        }
    }
}

impl Reads<'_> {
    /// Awaits a batch loader under the namespace's hard timeout, checking it returned one
    /// value per key asked.
    async fn call_batch_loader<V, E>(
        &self,
        load: impl Future<Output = std::result::Result<Vec<Option<V>>, E>>,
        asked: usize,
    ) -> Result<Vec<Option<V>>>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let result = super::load::call_timed(self.core, load).await;
        match result? {
            values if values.len() == asked => Ok(values),
            values => Err(Error::Loader(Arc::new(LoaderShape {
                asked,
                returned: values.len(),
            }))),
        }
    }

    /// A failed batch load's outcome for one key: with fail-safe, its stale copy (L1's, read
    /// before its ticket, or Redis's expired one, read under it) if nobody invalidated it
    /// meanwhile, served as fresh for the throttle; else the error.
    fn fail_safe<K: ?Sized, V: Send + Sync + 'static>(
        &self,
        p: &Pending<'_, K>,
        expired: Option<L1Entry>,
        err: Error,
    ) -> Result<Option<Arc<V>>> {
        let core: &NamespaceCore = self.core;
        if core.policy.fail_safe.is_none() {
            return Err(err);
        }
        // The newer of the two fallbacks (Redis's on a tie), as a single-key flight picks.
        let fallback = match (p.stale.clone(), expired) {
            (Some(l1), Some(l2)) if l1.version <= l2.version => Some((l2, false)),
            (Some(l1), _) => Some((l1, true)),
            (None, l2) => l2.map(|e| (e, false)),
        };
        let Some((stale, from_l1)) = fallback else {
            return Err(err);
        };
        let value = stale.value.clone();
        if !core.put_back(&p.string, core.throttled(stale), from_l1, &p.ticket) {
            return Err(err);
        }
        core.metrics.stale_served.inc();
        Ok(downcast::<V>(value))
    }

    /// L1 for each key; the keys it could not answer, each once, with a ticket taken now.
    pub(crate) fn local_many<'k, K, V>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> (Vec<Option<Arc<V>>>, Vec<Pending<'k, K>>)
    where
        K: CacheKey + ?Sized + 'k,
        V: Send + Sync + 'static,
    {
        let keys = keys.into_iter();
        let mut out = Vec::with_capacity(keys.size_hint().0);
        let mut pending: Vec<Pending<'k, K>> = Vec::new();
        let mut index = HashMap::<String, usize>::new();
        let fail_safe = self.core.policy.fail_safe.is_some();
        for (i, key) in keys.enumerate() {
            // A cached "not found" answers its key as `None`, as it does for a single key.
            let (hit, stale, answered) = match self.local(key) {
                Lookup::Fresh(e) | Lookup::Due(e) => (e.value, None, true),
                Lookup::Stale(e) => (None, Some(e).filter(|_| fail_safe), false),
                Lookup::Miss => (None, None, false),
            };
            let hit = downcast::<V>(hit);
            if !answered {
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
                            stale,
                        });
                        e.insert(pending.len() - 1);
                    }
                }
            }
            out.push(hit);
        }
        (out, pending)
    }

    /// One MGET for the pending keys (and the version counter, with `stamp`); hits (values
    /// and cached "not found"s) go to L1 through the guard.
    pub(crate) async fn read_many<K, V>(
        &self,
        pending: &[Pending<'_, K>],
        (stamp, l1_ttl): (bool, Option<Duration>),
    ) -> ManyRead<V>
    where
        K: ?Sized,
        V: DeserializeOwned + Send + Sync + 'static,
    {
        let (core, shared) = (&**self.core, self.shared);
        let keys: Vec<&str> = pending.iter().map(|p| p.string.as_str()).collect();
        let span = tracing::debug_span!(target: "tiered_cache::batch", "l2_read_many", namespace = %core.name, tier = "l2",
            keys = keys.len(), hits = tracing::field::Empty);
        // One latency observation per MGET, with the decodes, as `get` has one per GET.
        let start = std::time::Instant::now();
        // While a resync is due, Redis's history is checked after the values (as `get` does
        // in its round trip): a history gone back makes them all misses.
        let checked = core.policy.staleness_bound.is_some() && shared.bus.resync_pending();
        let highest = shared.l2.epochs().highest();
        let read = shared
            .l2
            .get_many(core.target(), &keys, stamp)
            .instrument(span.clone())
            .await;
        let read = match (read, checked) {
            (Ok((values, seen)), true) => match shared.l2.check_history(highest).await {
                Ok(c) if c.intact => {
                    core.raise_floor_over_l1(c.rollback_floor);
                    Ok((values, seen))
                }
                Ok(_) => {
                    core.metrics.l2_bypass.add(keys.len() as u64);
                    Ok((vec![None; keys.len()], seen))
                }
                Err(e) => Err(e),
            },
            (read, _) => read,
        };
        let (values, seen) = match read {
            Ok(read) => read,
            Err(_) => {
                return ManyRead {
                    answered: vec![None; pending.len()],
                    seen: None,
                    expired: vec![None; pending.len()],
                }
            }
        };
        let mut found = Vec::with_capacity(pending.len());
        let mut expired = vec![None; pending.len()];
        for (i, (p, bytes)) in pending.iter().zip(values).enumerate() {
            let read = match bytes {
                // Held in this node's outbox: Redis's copy is older (as for `get`).
                Some(bytes) if remote::vouched(core, shared, &p.string) => {
                    remote::judge_l2::<V>(core, shared, &bytes).await
                }
                _ => {
                    core.metrics.l2_miss.inc();
                    L2Read::Miss
                }
            };
            found.push(match read {
                L2Read::Hit {
                    version,
                    expires_ms,
                    value,
                    weight,
                } => {
                    let value = value.map(Arc::new);
                    let any = value.clone().map(|v| v as AnyValue);
                    let entry = core.l1_entry_within(any, version, expires_ms, l1_ttl, weight);
                    core.insert_guarded(p.string.clone(), entry, &p.ticket);
                    Some(value)
                }
                L2Read::Expired {
                    version,
                    value: value @ Some(_),
                    weight,
                } => {
                    let value = value.map(|v| Arc::new(v) as AnyValue);
                    expired[i] = Some(core.l1_entry(value, version, Some(0), weight));
                    None
                }
                L2Read::Expired { .. } | L2Read::Miss | L2Read::Unavailable => None,
            });
        }
        core.metrics.latency.l2.record(start.elapsed());
        span.record("hits", found.iter().filter(|f| f.is_some()).count());
        ManyRead {
            answered: found,
            seen,
            expired,
        }
    }

    /// `get_or_load_many`, with tags for the fills.
    pub(crate) async fn load_many<'k, K, V, F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
        (tags, ttl): (&[&str], TtlOverride),
        loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        K: CacheKey + ?Sized + 'k,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
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
        let loaded = Box::pin(self.load_pending(&pending, (tags, ttl), loader)).await;
        scatter(&mut out, &pending, loaded);
        out
    }

    /// The miss path for keys L1 could not answer: Redis, then single flight (a key another
    /// call is loading is waited for), then one loader call for the keys this batch leads,
    /// then guarded fills to both tiers. One outcome per pending key.
    pub(crate) async fn load_pending<'k, K, V, F, Fut, E>(
        &self,
        pending: &[Pending<'k, K>],
        fill: (&[&str], TtlOverride),
        loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        K: ?Sized,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce(Vec<&'k K>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<Option<V>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let core: &NamespaceCore = self.core;
        // `seen`: the version counter noted before the loader runs; `None` when Redis is out
        // of reach (cache locally only).
        let read = self.read_many(pending, (true, fill.1.l1)).await;
        let ManyRead {
            answered,
            seen,
            expired,
        } = read;
        let missing: Vec<usize> = (0..answered.len())
            .filter(|&i| answered[i].is_none())
            .collect();
        let mut out: Vec<Result<Option<Arc<V>>>> =
            answered.into_iter().map(|a| Ok(a.flatten())).collect();
        if missing.is_empty() {
            return out;
        }
        // Refused only when the loader would run: what the tiers answered stands.
        if let Some(why) = batch_refuses(&core.policy) {
            let err = Error::InvalidOptions(format!("namespace {:?}: {why}", core.name));
            missing.iter().for_each(|&i| out[i] = Err(err.clone()));
            return out;
        }
        // Single flight, in rounds: a key another call is loading is waited for, the rest is
        // led by this batch (one loader call). A key whose load ended without an answer (its
        // caller was cancelled, or its loader panicked) is joined again while this batch's
        // loader is unspent; once it is spent, such a key gets its fail-safe copy or an error.
        let mut loader = Some(loader);
        let mut todo = missing;
        for _round in 0..3 {
            if todo.is_empty() {
                break;
            }
            let (mut leading, mut waiting) = (Vec::new(), Vec::new());
            for &i in &todo {
                match core.flights.join(&pending[i].string) {
                    Role::Leader(leader, _) => leading.push((i, leader)),
                    Role::Waiter(slot) => {
                        core.metrics.coalesced.inc();
                        waiting.push((i, slot));
                    }
                }
            }
            let spend = if leading.is_empty() {
                None
            } else {
                loader.take()
            };
            if spend.is_none() {
                // Keys to lead with the loader spent: released at once for others to lead.
                for (i, leader) in leading.drain(..) {
                    drop(leader);
                    out[i] = self.fail_safe(&pending[i], expired[i].clone(), super::lost_load());
                }
            }
            // Our own load runs while we wait for the others': two batches each leading a
            // key the other waits for both finish.
            let own = async {
                match spend {
                    Some(loader) => {
                        self.load_leading(pending, leading, (seen, &expired), fill, loader)
                            .await
                    }
                    None => Vec::new(),
                }
            };
            let others = futures_util::future::join_all(
                waiting.iter().map(|(_, slot)| flight::wait(slot.clone())),
            );
            let (own, others) = futures_util::future::join(own, others).await;
            for (i, outcome) in own {
                out[i] = outcome;
            }
            todo = Vec::new();
            for ((i, _), outcome) in waiting.into_iter().zip(others) {
                match outcome {
                    Some(Ok(value)) => out[i] = Ok(downcast(value)),
                    // The joined load failed: this batch's fallbacks for the key still count.
                    Some(Err(e)) => out[i] = self.fail_safe(&pending[i], expired[i].clone(), e),
                    None if loader.is_some() => todo.push(i),
                    None => {
                        out[i] = self.fail_safe(&pending[i], expired[i].clone(), super::lost_load())
                    }
                }
            }
        }
        for i in todo {
            out[i] = self.fail_safe(&pending[i], expired[i].clone(), super::lost_load());
        }
        out
    }

    /// This batch's share of a load: one loader call for the keys it leads, guarded fills,
    /// then each key's outcome handed to whoever waits on it. One outcome per led key.
    async fn load_leading<'k, K, V, F, Fut, E>(
        &self,
        pending: &[Pending<'k, K>],
        leading: Vec<(usize, Leader)>,
        (seen, expired): (Option<Stamp>, &[Option<L1Entry>]),
        fill: (&[&str], TtlOverride),
        loader: F,
    ) -> Vec<(usize, Result<Option<Arc<V>>>)>
    where
        K: ?Sized,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce(Vec<&'k K>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<Option<V>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if leading.is_empty() {
            return Vec::new();
        }
        let led: Vec<&Pending<'k, K>> = leading.iter().map(|(i, _)| &pending[*i]).collect();
        let asked = led.iter().map(|p| p.key).collect();
        let outcomes = match self.call_batch_loader(loader(asked), led.len()).await {
            Ok(values) => self.store_loaded(&led, values, seen, fill).await,
            Err(err) => (leading.iter())
                .map(|&(i, _)| {
                    self.core.metrics.loader_error.inc();
                    self.fail_safe(&pending[i], expired[i].clone(), err.clone())
                })
                .collect(),
        };
        (leading.into_iter().zip(outcomes))
            .map(|((i, leader), outcome)| {
                leader.finish(outcome.clone().map(|v| v.map(|v| v as AnyValue)));
                (i, outcome)
            })
            .collect()
    }

    /// Caches what the loader returned (a "not found" too, for the negative TTL) on both
    /// tiers, as a single-key load stores its value. One outcome per key, in order.
    async fn store_loaded<K, V>(
        &self,
        led: &[&Pending<'_, K>],
        values: Vec<Option<V>>,
        seen: Option<Stamp>,
        (tags, ttl): (&[&str], TtlOverride),
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        K: ?Sized,
        V: Serialize + Send + Sync + 'static,
    {
        let (core, shared) = (&**self.core, self.shared);
        let mut out = Vec::with_capacity(led.len());
        let mut fills = Vec::new();
        for (&p, value) in led.iter().zip(values) {
            core.metrics.loader_ok.inc();
            let life = core.l2_life(value.is_none(), ttl);
            let encoded =
                codec::encode(value.as_ref(), life.expires_ms, core.policy.compress_above);
            let value = value.map(Arc::new);
            out.push(Ok(value.clone()));
            let any = value.map(|v| v as AnyValue);
            match (encoded, seen) {
                (Ok(encoded), Some(_)) => fills.push((p, any, encoded, life)),
                // Redis could not be asked: settled as a fill that could not reach it.
                (Ok(encoded), None) => {
                    let key = (p.string.clone(), !tags.is_empty());
                    let how = (&life, encoded.plain_len);
                    let unasked = Err(L2Error::Skipped);
                    remote::settle_fill(core, key, any, how, &p.ticket, unasked);
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
                .fill_tagged(core.target(), &p.string, (seen, None), payload, tags)
        }))
        .await;
        for ((p, value, encoded, life), filled) in fills.into_iter().zip(filled) {
            let key = (p.string.clone(), !tags.is_empty());
            let weight = encoded.plain_len;
            remote::settle_fill(core, key, value, (&life, weight), &p.ticket, filled);
        }
        out
    }
}
