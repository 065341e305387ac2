//! Writes ordered by the writer's own version (see `l2/source.rs`): `set_if_newer` and
//! `invalidate_if_newer`. The one write sequence (route behind what the outbox holds for the
//! key, one script, fence loads in flight, settle L1), always strict: a source-ordered write
//! Redis cannot check is reported, never queued, since the outbox's replay could not keep the
//! source's order. The writer (a change-stream consumer, say) retries from its offset.

use crate::codec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::l2::{L2Result, Payload, Stamp};
use crate::space::{NamespaceCore, TtlOverride};
use crate::wire::Outgoing;
use serde::Serialize;
use std::sync::Arc;

/// What a source-ordered write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceWrite {
    /// Stored (or tombstoned) in Redis, and every other node's copy dropped.
    Applied,
    /// Redis already holds this source version of the key or a newer one (a value or an
    /// invalidation): nothing was written, nothing published.
    Superseded,
}

/// Stores `value` unless Redis holds `source` or a newer source version of the key.
pub(crate) async fn set_if_newer<V: Serialize + Send + Sync + 'static>(
    shared: &Engine,
    core: &NamespaceCore,
    (key, value): (String, V),
    source: u64,
    ttl: TtlOverride,
) -> Result<SourceWrite> {
    const OP: &str = "set_if_newer";
    let life = core.l2_life(false, ttl);
    let encoded = codec::encode(Some(&value), life.expires_ms, core.policy.compress_above)
        .map_err(|e| Error::Encode(Arc::new(e)))?
        .with_source(source);
    let payload = Payload {
        encoded: &encoded,
        ttl: life.keep_for,
    };
    let message = Outgoing::keys(shared.node_id, &core.name, &[&key]);
    let written = ordered(shared, core, &key, OP, async {
        (shared.l2)
            .write_if_newer(core.target(), &key, payload, source, &message)
            .await
    });
    Ok(match written.await? {
        (Some(stamp), ticket) => {
            // Unless another invalidation of the key landed meanwhile (as in `set`).
            if let Some(ticket) = ticket {
                let value = Some(Arc::new(value) as crate::l1::AnyValue);
                let entry = core.l1_entry_for(value, stamp.version, &life, encoded.plain_len);
                core.insert_guarded(key, entry, &ticket);
            }
            SourceWrite::Applied
        }
        (None, _) => SourceWrite::Superseded,
    })
}

/// Tombstones the key unless Redis holds `source` or a newer source version of it.
pub(crate) async fn invalidate_if_newer(
    shared: &Engine,
    core: &NamespaceCore,
    key: String,
    source: u64,
) -> Result<SourceWrite> {
    const OP: &str = "invalidate_if_newer";
    let done = ordered(shared, core, &key, OP, async {
        (shared.l2)
            .invalidate_if_newer(
                core.target(),
                &key,
                core.policy.l2_ttl,
                source,
                shared.node_id,
            )
            .await
    });
    let (done, _) = done.await?;
    Ok(match done {
        Some(_) => SourceWrite::Applied,
        None => SourceWrite::Superseded,
    })
}

/// Routes one key's source-ordered call behind what the outbox holds for it, runs it, and
/// fences loads that read Redis before it. This node's copy is dropped whatever happened (a
/// stored value is put back by the caller, under the returned ticket, if no other
/// invalidation of the key landed meanwhile): a superseded write means Redis holds something
/// newer than what this node may have cached.
async fn ordered(
    shared: &Engine,
    core: &NamespaceCore,
    key: &str,
    op: &'static str,
    call: impl std::future::Future<Output = L2Result<Option<Stamp>>>,
) -> Result<(Option<Stamp>, Option<crate::guard::Ticket>)> {
    let route = match crate::write::route(shared, core, Some(&[key]), false).await {
        Ok(route) => route,
        Err(e) => {
            core.evict(key);
            return Err(e.into_error(op));
        }
    };
    let before = core.gens.ticket(key);
    core.l1.remove(key);
    let done = call.await;
    // Superseded wrote nothing: what the outbox holds for the key must still be replayed.
    route.landed(matches!(done, Ok(Some(_))));
    let (ticket, alone) = core
        .gens
        .bump_keys(&[key], &[before])
        .pop()
        .expect("one key");
    core.l1.remove(key);
    core.flights.detach(key);
    match done {
        Ok(Some(stamp)) => {
            core.metrics.inv_sent.inc();
            Ok((Some(stamp), alone.then_some(ticket)))
        }
        Ok(None) => Ok((None, None)),
        Err(e) => Err(e.into_error(op)),
    }
}
