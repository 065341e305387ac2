//! Batch writes: one version drawn for the whole batch (per run, where its message would be
//! over the cap), every value stored, one invalidation message listing every key, in one script (see `namespace/batch.rs` for the contract with the outbox).

use crate::codec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::guard::Ticket;
use crate::l1::AnyValue;
use crate::outbox::Route;
use crate::space::{NamespaceCore, TtlOverride};
use crate::wire::Outgoing;
use serde::Serialize;
use std::sync::Arc;

/// Writes many values in one script, with `tags` (see `Batch::set`): one outcome per entry, in
/// order. A batch whose invalidation would be over the message cap (`wire::MAX_MESSAGE`) is
/// written as several runs, each one script and one message under its own version.
pub(crate) async fn write_many<V: Serialize + Send + Sync + 'static>(
    shared: &Engine,
    core: &NamespaceCore,
    mut entries: Vec<(String, V)>,
    tags: &[&str],
    how: (bool, TtlOverride),
    op: &'static str,
) -> Vec<Result<()>> {
    if entries.len() < 2 {
        // `set`: nothing to split (a key over the cap goes out alone anyway).
        return write_run(shared, core, entries, tags, how, op).await;
    }
    let runs: Vec<usize> = {
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        crate::wire::key_chunks(&core.name, &keys)
            .iter()
            .map(|r| r.len())
            .collect()
    };
    if runs.len() == 1 {
        return write_run(shared, core, entries, tags, how, op).await;
    }
    let mut out = Vec::with_capacity(entries.len());
    for n in runs {
        let rest = entries.split_off(n);
        let run = std::mem::replace(&mut entries, rest);
        out.extend(write_run(shared, core, run, tags, how, op).await);
    }
    out
}

/// One run of a batch: the one write sequence (encode, route around the outbox, one script,
/// fence loads in flight, settle L1, degrade once). `op` names the call in errors.
async fn write_run<V: Serialize + Send + Sync + 'static>(
    shared: &Engine,
    core: &NamespaceCore,
    entries: Vec<(String, V)>,
    tags: &[&str],
    (strict, ttl): (bool, TtlOverride),
    op: &'static str,
) -> Vec<Result<()>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    for (i, (key, value)) in entries.into_iter().enumerate() {
        // Each value its own life: with jitter, keys written together expire apart.
        let life = core.l2_life(false, ttl);
        match codec::encode(Some(&value), life.expires_ms, core.policy.compress_above) {
            Ok(encoded) => {
                batch.push((i, key, (encoded, life), value));
                out.push(Ok(()));
            }
            Err(e) => out.push(Err(Error::Encode(Arc::new(e)))),
        }
    }
    if batch.is_empty() {
        return out;
    }
    let keys: Vec<&str> = batch.iter().map(|(_, k, ..)| k.as_str()).collect();
    // While writes of this namespace are queued, an untagged batch joins them; a strict or
    // tagged one (a replay would lose the tags) lands behind what is queued for its keys.
    // A route error is the replay of a queued clear failing; the replay counted it.
    let queueable = tags.is_empty() && !strict;
    let route = match crate::write::route(shared, core, Some(&keys), queueable).await {
        Ok(Route::Queue) => {
            enqueue_writes(shared, core, batch);
            return out;
        }
        Ok(route) => route,
        Err(e) if !strict => {
            // A queued clear could not be replayed first: degraded, not failed.
            degrade(shared, core, batch, tags, &e);
            return out;
        }
        Err(e) => {
            let err = e.into_error(op);
            for (i, key, ..) in &batch {
                core.evict(key);
                out[*i] = Err(err.clone());
            }
            return out;
        }
    };
    let before: Vec<Ticket> = keys.iter().map(|k| core.gens.ticket(k)).collect();
    // Out of L1 before Redis is asked: a call dropped once its script ran must not leave the
    // old copy here (this node never applies its own message).
    keys.iter().for_each(|k| core.l1.remove(k));
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
            for ((_, key, (encoded, life), value), (ticket, alone)) in batch.into_iter().zip(after)
            {
                if alone {
                    let value = Some(Arc::new(value) as AnyValue);
                    let entry = core.l1_entry_for(value, stamp.version, &life, encoded.plain_len);
                    core.insert_guarded(key, entry, &ticket);
                } else {
                    // Another invalidation of the key landed meanwhile (as in `set`).
                    core.l1.remove(&key);
                }
            }
        }
        Err(e) if !strict => {
            super::refused(core, &e, op);
            degrade(shared, core, batch, tags, &e);
        }
        Err(e) => {
            let err = e.into_error(op);
            for (i, key, ..) in batch {
                core.l1.remove(&key);
                out[i] = Err(err.clone());
            }
        }
    }
    out
}

/// A non-strict batch Redis could not be reached for, or refused: degraded, not failed.
/// Untagged writes Redis could not be reached for are queued as `set` queues them. A
/// refused write (the value may be what Redis refuses: OOM) or a tagged one is queued as
/// an invalidation of its key instead: a replayed write would not join the tags' sets, so a
/// later invalidation of a tag could not reach it. Its value is cached nowhere (this node's
/// L1 drops the key too) and the next read after the replay loads afresh.
fn degrade<V: Send + Sync + 'static>(
    shared: &Engine,
    core: &NamespaceCore,
    batch: Vec<Encoded<V>>,
    tags: &[&str],
    why: &crate::l2::L2Error,
) {
    if tags.is_empty() && why.is_unreachable() {
        return enqueue_writes(shared, core, batch);
    }
    for (_, key, ..) in batch {
        shared.outbox.enqueue_unwritten(core, key);
    }
}

/// Queues each write in the outbox, as `set` does while Redis is unreachable.
fn enqueue_writes<V: Send + Sync + 'static>(
    shared: &Engine,
    core: &NamespaceCore,
    batch: Vec<Encoded<V>>,
) {
    for (_, key, (encoded, life), value) in batch {
        let entry = super::local_only(core, value, &life, &encoded);
        let known = shared.known();
        shared
            .outbox
            .enqueue_write(core, key, (encoded, known), Some(entry));
    }
}

/// One entry of a batch write: its place in the caller's list, its key, its encoded form and
/// life, and its value.
type Encoded<V> = (usize, String, (codec::Encoded, crate::space::Life), V);
