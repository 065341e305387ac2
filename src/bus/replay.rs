//! Catching up from the invalidation log (see `l2/log.rs`) instead of clearing L1: after a
//! reconnect or a gap, the messages this node missed are read back by version and applied as
//! if they had arrived, so only the keys they name are evicted. Every doubt falls back to the
//! clear: no run applied here to start from, another epoch, a run the log does not hold whole,
//! or a log whose entry at the start of the run is not the message this node applied there
//! (Redis's history changed under the same epoch: a lagging replica promoted, whose new
//! writes reuse versions this node saw from the old primary).

use super::apply_scope;
use crate::engine::{Applied, Engine};
use crate::l2::log::{Entry, Logged};
use crate::l2::Stamp;
use crate::wire::decode;

/// Applies every message published after the last version applied here, up to `stamp` (the
/// counter the resync read). The new end of the applied run when it did and L1 may be kept.
pub(super) async fn catch_up(shared: &Engine, stamp: Stamp) -> Option<Applied> {
    let from = shared.bus.applied();
    let seen = shared.bus.seen();
    let anchored = from.version > 0 && from.digest.is_some();
    if !anchored || stamp.epoch == 0 || seen.epoch != stamp.epoch || stamp.version < from.version {
        return None;
    }
    // From the last message applied here, which must be the log's too.
    let entries = match shared.l2.logged(from.version, stamp.version).await {
        Ok(Logged::Complete(entries)) => entries,
        Ok(Logged::Incomplete(why)) => return fell_back(shared, from.version, stamp, why),
        Err(e) => return fell_back(shared, from.version, stamp, &e.to_string()),
    };
    let (anchor, missed) = entries.split_first()?;
    if Applied::digest_of(anchor.bytes()) != from.digest {
        return fell_back(shared, from.version, stamp, "another history");
    }
    let mut decoded = Vec::with_capacity(missed.len());
    for entry in missed {
        let Entry::Whole(m) = entry else {
            return fell_back(shared, from.version, stamp, "too large");
        };
        match decode(m) {
            Some(msg) if msg.epoch == stamp.epoch => decoded.push(msg),
            _ => return fell_back(shared, from.version, stamp, "unreadable entry"),
        }
    }
    for msg in &decoded {
        apply_scope(shared, msg);
    }
    shared.bus.metrics.replays.inc();
    shared.bus.metrics.replayed.add(decoded.len() as u64);
    tracing::Span::current().record("replayed", decoded.len());
    Some(Applied {
        version: stamp.version,
        digest: Applied::digest_of(entries.last().expect("the anchor at least").bytes()),
    })
}

/// After a resync that cleared L1: the applied run ends at the counter, anchored on the log's
/// entry there when it has one (one more read; a clear is rare and costs far more anyway).
pub(super) async fn anchor(shared: &Engine, stamp: Stamp) -> Applied {
    let digest = match shared.l2.logged(stamp.version, stamp.version).await {
        Ok(Logged::Complete(entries)) if stamp.version > 0 => {
            entries.first().and_then(|e| Applied::digest_of(e.bytes()))
        }
        _ => None,
    };
    Applied {
        version: stamp.version,
        digest,
    }
}

fn fell_back(shared: &Engine, from: u64, stamp: Stamp, why: &str) -> Option<Applied> {
    if let Some(n) = shared.bus.metrics.flush_log.hit() {
        tracing::info!(target: "tiered_cache::bus", from, to = stamp.version, why, flushes = n,
            "the invalidation log does not cover what was missed: clearing L1");
    }
    None
}
