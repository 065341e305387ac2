//! Catching up from the invalidation log (see `l2/log.rs`) instead of clearing L1: after a
//! reconnect or a gap, the messages this node missed are read back by version and applied as
//! if they had arrived, so only the keys they name are evicted. Every doubt falls back to the
//! clear: no run applied here to start from, another epoch, a run the log does not hold whole.

use super::apply_scope;
use crate::engine::Engine;
use crate::l2::log::Logged;
use crate::l2::Stamp;
use crate::wire::decode;
use std::sync::atomic::Ordering::SeqCst;

/// Applies every message published after the last version applied here, up to `stamp` (the
/// counter the resync read). True when it did and L1 may be kept.
pub(super) async fn catch_up(shared: &Engine, stamp: Stamp) -> bool {
    let from = shared.bus.applied_through.load(SeqCst);
    let seen = shared.bus.seen();
    if from == 0 || stamp.epoch == 0 || seen.epoch != stamp.epoch || stamp.version < from {
        return false;
    }
    let messages = match shared.l2.logged(from, stamp.version).await {
        Ok(Logged::Complete(messages)) => messages,
        Ok(Logged::Incomplete(why)) => return fell_back(shared, from, stamp, why),
        Err(e) => return fell_back(shared, from, stamp, &e.to_string()),
    };
    let mut decoded = Vec::with_capacity(messages.len());
    for m in &messages {
        match decode(m) {
            Some(msg) if msg.epoch == stamp.epoch => decoded.push(msg),
            _ => return fell_back(shared, from, stamp, "unreadable entry"),
        }
    }
    for msg in &decoded {
        apply_scope(shared, msg);
    }
    shared.bus.metrics.replays.inc();
    shared.bus.metrics.replayed.add(decoded.len() as u64);
    tracing::Span::current().record("replayed", decoded.len());
    true
}

fn fell_back(shared: &Engine, from: u64, stamp: Stamp, why: &str) -> bool {
    if let Some(n) = shared.bus.metrics.flush_log.hit() {
        tracing::info!(target: "tiered_cache::bus", from, to = stamp.version, why, flushes = n,
            "the invalidation log does not cover what was missed: clearing L1");
    }
    false
}
