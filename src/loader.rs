//! The miss path: read Redis, call the loader, write the result back without racing writers.

use crate::cache::Shared;
use crate::codec::{self, Stored};
use crate::error::{Error, Result};
use crate::guard::Ticket;
use crate::l2::{L2Result, Payload, Stamp};
use crate::namespace::{Namespace, NamespaceCore};
use crate::CacheKey;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// The outcome of one Redis read.
pub(crate) enum L2Read<V> {
    Hit {
        version: u64,
        value: V,
    },
    /// No live value: absent, a tombstone, older than the namespace floor, or undecodable.
    Miss,
    /// Redis could not be asked.
    Unavailable,
}

/// Reads and decodes one key from Redis. Bad bytes are a counted miss, never a panic.
pub(crate) async fn read_l2<V: DeserializeOwned>(
    core: &NamespaceCore,
    shared: &Shared,
    key: &str,
) -> L2Read<V> {
    let m = &core.metrics;
    let bytes = match shared.l2.get(&core.name, key).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            m.l2_miss.inc();
            return L2Read::Miss;
        }
        Err(e) => {
            m.l2_failed(e.kind());
            return L2Read::Unavailable;
        }
    };
    judge_l2(core, shared, &bytes).await
}

/// Judges bytes read from Redis under a key: a live value at or above the namespace floor is a
/// hit; a tombstone, an older value or bytes that do not decode are (counted) misses.
pub(crate) async fn judge_l2<V: DeserializeOwned>(
    core: &NamespaceCore,
    shared: &Shared,
    bytes: &[u8],
) -> L2Read<V> {
    let m = &core.metrics;
    match codec::decode::<V>(bytes) {
        Ok(Stored::Value { version, value }) if version >= core.floor() => {
            m.l2_hit.inc();
            L2Read::Hit { version, value }
        }
        Ok(Stored::Value { .. }) => {
            // Below the floor: cleared, or written after the counter started over while this
            // node still holds the old floor. Asking for the epoch tells the two apart.
            if let Ok(stamp) = shared.l2.current_stamp().await {
                shared.observe_epoch(stamp.epoch);
            }
            m.l2_miss.inc();
            L2Read::Miss
        }
        Ok(Stored::Tombstone) => {
            m.l2_miss.inc();
            L2Read::Miss
        }
        Err(e) => {
            m.decode_error.inc();
            m.l2_miss.inc();
            tracing::warn!(
                target: "tiered_cache::loader",
                namespace = %core.name,
                kind = e.kind(),
                len = bytes.len(),
                error = %e,
                "undecodable value in redis, served as a miss"
            );
            L2Read::Miss
        }
    }
}

/// L2, then the loader, then a guarded write-back to both tiers.
pub(crate) async fn load_through<K, V, F, Fut, E>(
    ns: &Namespace<K, V>,
    key: String,
    loader: F,
) -> Result<Arc<V>>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::result::Result<V, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let core = &*ns.core;
    let shared = ns.cache.shared();
    let l2 = &shared.l2;
    let ticket = core.gens.ticket(&key);
    // `seen` is the version counter noted before the loader runs: the fill is refused if the
    // key is invalidated after it. `None` means Redis is out of reach: cache locally only.
    let seen = match read_l2::<V>(core, shared, &key).await {
        L2Read::Hit { version, value } => {
            let value = Arc::new(value);
            ns.insert_read(key, &value, version, &ticket);
            return Ok(value);
        }
        L2Read::Miss => match l2.current_stamp().await {
            Ok(stamp) => {
                shared.observe_epoch(stamp.epoch);
                Some(stamp)
            }
            Err(e) => {
                core.metrics.l2_failed(e.kind());
                None
            }
        },
        L2Read::Unavailable => None,
    };

    let value = match loader().await {
        Ok(v) => {
            core.metrics.loader_ok.inc();
            Arc::new(v)
        }
        Err(e) => {
            core.metrics.loader_error.inc();
            return Err(Error::Loader(Arc::from(e.into())));
        }
    };

    let Some(seen) = seen else {
        ns.insert_read(key, &value, 0, &ticket);
        return Ok(value);
    };
    // The fill is attempted even if this node already heard of an invalidation: Redis decides
    // for L2 (it refuses a fill older than the key's last invalidation), the ticket for L1.
    let bytes = match codec::encode_payload(&*value) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(target: "tiered_cache::loader", namespace = %core.name, error = %e,
                "loaded value could not be encoded; not cached");
            return Ok(value);
        }
    };
    let payload = Payload {
        bytes: &bytes,
        ttl: core.policy.l2_ttl,
    };
    let filled = l2.fill(&core.name, &key, seen, payload).await;
    settle_fill(ns, key, &value, &ticket, filled);
    Ok(value)
}

/// After a fill: L1 gets the value at the fill's version if Redis stored it, nothing if Redis
/// refused it (the key changed while loading), and version 0 if Redis could not be asked.
pub(crate) fn settle_fill<K, V>(
    ns: &Namespace<K, V>,
    key: String,
    value: &Arc<V>,
    ticket: &Ticket,
    filled: L2Result<Result<Stamp, u64>>,
) where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let (core, shared) = (&*ns.core, ns.cache.shared());
    match filled {
        Ok(Err(epoch)) => {
            shared.observe_epoch(epoch);
            core.metrics.fill_refused.inc();
        }
        Ok(Ok(stamp)) => {
            shared.observe_epoch(stamp.epoch);
            core.metrics.fill_stored.inc();
            ns.insert_read(key, value, stamp.version, ticket);
        }
        Err(e) => {
            core.metrics.l2_failed(e.kind());
            ns.insert_read(key, value, 0, ticket);
        }
    }
}
