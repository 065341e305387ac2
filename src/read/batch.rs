//! Batch reads: L1 for every key, then one MGET for the keys L1 could not answer (with the
//! version counter in the same round trip when a load may follow), then one loader call for
//! the keys still missing, then guarded fills to both tiers (see `batch.rs` for the contract).

use super::remote::{self, L2Read};
use super::{downcast, Reads};
use crate::codec;
use crate::error::{Error, Result};
use crate::guard::Ticket;
use crate::key::{key_string, CacheKey};
use crate::l1::AnyValue;
use crate::l2::{Payload, Stamp};
use crate::space::TtlOverride;
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
        for (i, key) in keys.enumerate() {
            let hit = self.local_value(key).and_then(downcast::<V>);
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
    pub(crate) async fn read_many<K, V>(
        &self,
        pending: &[Pending<'_, K>],
        stamp: bool,
    ) -> (Vec<Option<Arc<V>>>, Option<Stamp>)
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
                Some(bytes) => remote::judge_l2::<V>(core, shared, &bytes).await,
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

    /// The miss path for keys L1 could not answer: Redis, then one loader call for what Redis
    /// had not, then guarded fills to both tiers. One outcome per pending key.
    pub(crate) async fn load_pending<'k, K, V, F, Fut, E>(
        &self,
        pending: &[Pending<'k, K>],
        (tags, ttl): (&[&str], TtlOverride),
        loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        K: ?Sized,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce(Vec<&'k K>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<Option<V>>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (core, shared) = (&**self.core, self.shared);
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
            let life = core.l2_life(false, ttl);
            let encoded = codec::encode(Some(&value), life.expires_ms, core.policy.compress_above);
            let value = Arc::new(value);
            out[i] = Ok(Some(value.clone()));
            let any = Some(value as AnyValue);
            match (encoded, seen) {
                (Ok(encoded), Some(_)) => fills.push((p, any, encoded, life)),
                (Ok(encoded), None) => {
                    let entry = core.l1_entry_for(any, 0, &life, encoded.plain_len);
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
                .fill_tagged(core.target(), &p.string, (seen, None), payload, tags)
        }))
        .await;
        for ((p, value, encoded, life), filled) in fills.into_iter().zip(filled) {
            let key = p.string.clone();
            let weight = encoded.plain_len;
            remote::settle_fill(core, key, value, (&life, weight), &p.ticket, filled);
        }
        out
    }
}
