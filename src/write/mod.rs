//! The write path: `set`, invalidations of keys and of a whole namespace, and, around them,
//! routing through the outbox and replaying it.
//!
//! Every write goes the same way: encode, route (straight to Redis, or behind what the outbox
//! holds for the namespace), one script that writes and publishes atomically, fence loads in
//! flight (bump the generation, detach flights), settle this node's L1, and degrade (queue)
//! when Redis could not be reached and the call is not strict. Failures are counted by the L2
//! tier itself.

pub(crate) mod batch;
mod replay;
mod source;
mod tags;
mod touch;

pub(crate) use replay::{route, run_replayer};
pub use source::SourceWrite;
pub(crate) use source::{invalidate_if_newer, set_if_newer};
pub(crate) use tags::invalidate_tag;
pub(crate) use touch::touch;

use crate::codec;
use crate::engine::Engine;
use crate::error::Result;
use crate::l1::{AnyValue, L1Entry};
use crate::l2::{L2Result, Stamp};
use crate::outbox::Route;
use crate::space::{Life, NamespaceCore, TtlOverride};
use crate::wire::Outgoing;
use serde::Serialize;
use std::sync::Arc;

/// The L1 entry of a write Redis has not taken yet: version 0, so any value read from
/// Redis later replaces it.
pub(crate) fn local_only<V: Send + Sync + 'static>(
    core: &NamespaceCore,
    value: V,
    life: &Life,
    encoded: &codec::Encoded,
) -> L1Entry {
    let value = Some(Arc::new(value) as AnyValue);
    core.l1_entry_for(value, 0, life, encoded.plain_len)
}

/// Writes `value` under `key` in Redis and this node's L1, and has every other node evict it
/// (see [`Namespace::set`](crate::Namespace::set) for the degraded and strict cases): the
/// batch write of one entry, so one sequence serves every write.
pub(crate) async fn set<V: Serialize + Send + Sync + 'static>(
    shared: &Engine,
    core: &NamespaceCore,
    (key, value): (String, V),
    tags: &[&str],
    how: (bool, TtlOverride),
) -> Result<()> {
    let mut out = batch::write_many(shared, core, vec![(key, value)], tags, how, "set").await;
    out.pop().expect("one outcome per entry")
}

/// Invalidates keys in one script and message, queued while Redis is unreachable (unless
/// strict), and always behind what is queued for them.
pub(crate) async fn invalidate(
    shared: &Engine,
    core: &NamespaceCore,
    keys: Vec<String>,
    op: &'static str,
    strict: bool,
) -> Result<()> {
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    if refs.is_empty() {
        return Ok(());
    }
    let routed = crate::write::route(shared, core, Some(&refs), !strict);
    let route = match routed.await {
        Ok(Route::Queue) => {
            for key in keys {
                shared.outbox.enqueue_invalidate(core, key);
            }
            return Ok(());
        }
        Ok(route) => route,
        Err(e) => {
            keys.iter().for_each(|k| core.evict(k));
            return Err(e.into_error(op));
        }
    };
    // Evicted before Redis is asked as well: a call dropped once its script ran must not leave
    // the old copy here (this node never applies its own message).
    keys.iter().for_each(|k| core.evict(k));
    let done = shared
        .l2
        .invalidate(core.target(), &refs, core.policy.l2_ttl, shared.node_id)
        .await;
    route.landed(done.is_ok());
    keys.iter().for_each(|k| core.evict(k));
    // Unreachable or refused (READONLY, OOM...): queued and retried, never dropped.
    if done.is_err() && !strict {
        for key in keys {
            shared.outbox.enqueue_invalidate(core, key);
        }
    }
    finish_invalidation(core, done, op, strict)
}

/// Clears the namespace in Redis and on every node (see
/// [`Namespace::invalidate_namespace`](crate::Namespace::invalidate_namespace)).
pub(crate) async fn clear(shared: &Engine, core: &NamespaceCore, strict: bool) -> Result<()> {
    let route = match crate::write::route(shared, core, None, !strict).await {
        Ok(Route::Queue) => {
            shared.outbox.enqueue_clear(core);
            return Ok(());
        }
        Ok(route) => route,
        Err(e) => {
            core.clear_l1();
            return Err(e.into_error("invalidate_namespace"));
        }
    };
    let message = Outgoing::namespace(shared.node_id, &core.name);
    // Cleared before Redis is asked as well (see `invalidate`).
    core.clear_l1();
    let done = shared.l2.clear_namespace(core.target(), &message).await;
    route.landed(done.is_ok());
    if let Ok(stamp) = &done {
        core.raise_floor(stamp.version);
    }
    core.clear_l1();
    if done.is_err() && !strict {
        shared.outbox.enqueue_clear(core);
    }
    finish_invalidation(core, done, "invalidate_namespace", strict)
}

fn finish_invalidation(
    core: &NamespaceCore,
    done: L2Result<Stamp>,
    op: &'static str,
    strict: bool,
) -> Result<()> {
    match done {
        Ok(_) => {
            core.metrics.inv_sent.inc();
            Ok(())
        }
        Err(e) if !strict => {
            // Queued by the caller: degraded, not failed.
            refused(core, &e, op);
            Ok(())
        }
        Err(e) => Err(e.into_error(op)),
    }
}

/// Logs a write or invalidation Redis refused (it was queued): an operator must hear of a
/// server that takes no writes, since nothing fails for the caller.
pub(crate) fn refused(core: &NamespaceCore, e: &crate::l2::L2Error, op: &'static str) {
    if let Some(refusals) = e
        .is_refused()
        .then(|| core.metrics.refusals.hit())
        .flatten()
    {
        tracing::warn!(target: "tiered_cache::outbox", namespace = %core.name, op, code = e.code(),
            error = %e, refusals, "redis refused a write; queued to retry");
    }
}
