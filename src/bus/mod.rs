//! The invalidation bus: the coherence logic that keeps every L1 in line with Redis.
//!
//! Messages are published by the L2 write scripts (see `l2.rs`; their format is `wire.rs`), so a
//! write and its broadcast are one atomic step. Here: applying a message (sequencing it,
//! evicting what it names), resynchronising after anything may have been missed, and the tasks
//! that keep the proof of freshness: the subscriber, the heartbeat, the watchdog and
//! external-write tracking.
//!
//! The subscriber owns a dedicated RESP3 connection subscribed to the channel, its messages
//! pushed into a bounded buffer (what does not fit is dropped, counted and replayed by a
//! resync, see `l2/link.rs`), on the bus's own thread (`runtime.rs`). After every
//! (re)subscription is confirmed, it reloads the namespace floors and catches up: whatever was
//! published while it was not listening is lost (pub/sub is at-most-once), so it reads those
//! messages back from the invalidation log (`replay.rs`) and applies them, or, where the log
//! cannot vouch for them, clears every L1. It pings the connection every heartbeat, so a
//! half-open link is replaced, not waited on. A gap in the sequence, or a message from a new epoch
//! of the version counter (Redis flushed or restarted), makes it resynchronise the same way
//! without reconnecting: the subscription is still confirmed, so nothing published from then on
//! is missed. Resyncs a message asks for are spaced (at most one per `RESYNC_GAP`) so a flood
//! of gaps cannot pin a core; a message it cannot parse is skipped (see `apply`).

mod heartbeat;
mod replay;
mod runtime;
mod subscriber;
mod tracking;
mod watchdog;

pub(crate) use heartbeat::run_heartbeat;
pub(crate) use runtime::BusRuntime;
pub(crate) use subscriber::{run_subscriber, BusConfig};
pub(crate) use tracking::run_tracker;
pub(crate) use watchdog::spawn_watchdog;

use crate::codec::unix_ms;
use crate::engine::{Applied, BusState, Engine};
use crate::l2::{L2Error, Stamp};
use crate::wire::{decode, Incoming, Scope};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

pub(crate) use crate::engine::TRIP_AT;

/// What the subscriber must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    Listen,
    /// Something may have been missed: reload floors, and replay it from the log or clear
    /// every L1.
    Resync,
}

/// Applies one received payload to the local tiers.
///
/// Messages are checked against the sequence: within an epoch, published writes carry
/// consecutive versions, and Redis delivers them in that order. A write more than one ahead of
/// the last one seen, or a heartbeat ahead of it, means messages were lost on the way; one
/// behind it, once the backlog from before the last resync is drained, means the counter went
/// back (a restore, a failover to a lagging replica). Either way, L1 stops being trusted at
/// once and the subscriber resynchronises.
///
/// This node's own heartbeat, received in sequence, is the proof of freshness: everything
/// published before it was sent has been applied here.
pub(crate) fn apply(shared: &Engine, payload: &[u8]) -> After {
    let Some(msg) = decode(payload) else {
        // Counted and skipped, never trusted nor acted on: junk must not switch L1 off. A
        // library message this build cannot read still drew a version, so the next message
        // or heartbeat shows the hole and that resynchronises (within the staleness bound).
        shared.bus.metrics.malformed.inc();
        if let Some(n) = shared.bus.metrics.malformed_log.hit() {
            tracing::warn!(target: "tiered_cache::bus", len = payload.len(), unreadable = n,
                "unreadable message on the invalidation channel, skipped; a missed write shows as a gap");
        }
        return After::Listen;
    };
    if shared.epoch_changed(msg.epoch) {
        shared.suspect();
        return After::Resync;
    }
    // Other nodes' versions count too, so this node's next draw is above theirs; a message
    // without an epoch (no library publisher sends one) is no evidence. Only the library's
    // ACL user can publish here (see the README), or a forged version could raise the floor.
    if msg.epoch != 0 {
        shared.l2.epochs().saw(msg.version);
    }
    let order = sequence(&shared.bus, &msg, payload);
    apply_scope(shared, &msg);
    match order {
        Order::InSequence => {}
        Order::Gap(missed) => {
            shared.bus.metrics.gaps.inc();
            shared.bus.metrics.lost.add(missed);
            if let Some(gaps) = shared.bus.metrics.gap_log.hit() {
                tracing::warn!(target: "tiered_cache::bus", missed, version = msg.version, gaps,
                    "invalidation messages were lost; resynchronising");
            }
            shared.suspect();
            return After::Resync;
        }
        Order::Rewound => {
            shared.bus.metrics.gaps.inc();
            tracing::warn!(target: "tiered_cache::bus", version = msg.version,
                "the version counter went back; resynchronising");
            shared.suspect_unlogged();
            return After::Resync;
        }
    }
    if let (Scope::Heartbeat { sent_ms }, true) = (&msg.scope, msg.origin == shared.node_id) {
        shared.bus.proven_fresh_at(*sent_ms);
    }
    After::Listen
}

/// Where a message stands in the sequence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Order {
    InSequence,
    Gap(u64),
    Rewound,
}

pub(super) fn apply_scope(shared: &Engine, msg: &Incoming<'_>) {
    // A namespace this node does not serve: nothing of it is cached here.
    let ns = shared.namespace(msg.namespace);
    if msg.origin == shared.node_id {
        shared.bus.metrics.own_skipped.inc();
        // Our own clear may have timed out on the caller's side after it ran: its floor still
        // applies here. Idempotent otherwise.
        if let (Some(ns), Scope::Namespace) = (ns, &msg.scope) {
            ns.raise_floor(msg.version);
        }
        return;
    }
    let now_ms = unix_ms();
    match (ns, &msg.scope) {
        (Some(ns), Scope::Keys(keys)) => {
            ns.apply_remote_keys(keys);
            ns.metrics.invalidation_lag(msg.sent_ms, now_ms);
        }
        (Some(ns), Scope::Namespace) => {
            ns.apply_remote_clear(msg.version);
            ns.metrics.invalidation_lag(msg.sent_ms, now_ms);
        }
        (_, Scope::Multi(sections)) => {
            for (name, keys) in sections {
                if let Some(ns) = shared.namespace(name) {
                    ns.apply_remote_keys(keys);
                    ns.metrics.invalidation_lag(msg.sent_ms, now_ms);
                }
            }
        }
        _ => {}
    }
}

/// Checks a message against the sequence and advances it. Only the subscriber task calls this.
fn sequence(bus: &BusState, msg: &Incoming<'_>, payload: &[u8]) -> Order {
    let last = bus.last_version.load(SeqCst);
    if msg.version > bus.resync_version.load(SeqCst) {
        bus.past_resync.store(true, SeqCst);
    }
    let behind = msg.version < last && bus.past_resync.load(SeqCst);
    if matches!(msg.scope, Scope::Heartbeat { .. }) {
        return match msg.version {
            _ if behind => Order::Rewound,
            v if v > last => Order::Gap(v - last),
            _ => Order::InSequence,
        };
    }
    if msg.version <= last {
        // Published before the last resync read the counter (already accounted for), or,
        // once past that backlog, a counter that went back.
        return if behind {
            Order::Rewound
        } else {
            Order::InSequence
        };
    }
    bus.advance(Stamp {
        version: msg.version,
        epoch: msg.epoch,
    });
    // Only a run with no hole since the last resync: a replay starts from its end.
    if bus.applied().version == msg.version - 1 {
        bus.set_applied(Applied {
            version: msg.version,
            digest: Applied::digest_of(payload),
        });
    }
    if msg.version > last + 1 {
        Order::Gap(msg.version - last - 1)
    } else {
        Order::InSequence
    }
}

/// After (re)subscribing, or a gap: learn the namespace floors set while away, and apply the
/// invalidations sent while away from the log, or forget every L1 entry where it cannot.
pub(crate) async fn resync(shared: &Engine) -> std::result::Result<(), L2Error> {
    use tracing::Instrument;
    let span = tracing::info_span!(target: "tiered_cache::cache", "resync",
        outcome = tracing::field::Empty, replayed = tracing::field::Empty);
    // Taken now: a reason raised from here on is for the next resync.
    let flush = shared.bus.must_flush.swap(false, SeqCst);
    let result = resync_inner(shared, flush).instrument(span.clone()).await;
    if result.is_err() && flush {
        shared.bus.must_flush.store(true, SeqCst);
    }
    span.record("outcome", if result.is_ok() { "ok" } else { "error" });
    result
}

async fn resync_inner(shared: &Engine, mut flush: bool) -> std::result::Result<(), L2Error> {
    let names: Vec<&str> = shared.namespaces.iter().map(|n| n.name.as_str()).collect();
    let before: Vec<u64> = shared.namespaces.iter().map(|n| n.floor()).collect();
    // Read first: every version it holds was drawn before the counter is read below, so a
    // write landing meanwhile cannot pass for a history gone back.
    let highest = shared.l2.epochs().highest();
    // What this resync vouches for, at best: the state as of the counter's read.
    let read_at = shared.bus.now_ms();
    let (mut stamp, mut floors) = shared.l2.floors(&names).await?;
    if stamp.version < highest {
        // Redis's counter is behind a version it reported before: its history went back (a
        // restore from an older snapshot, a lagging replica promoted, the meta hash lost while
        // values survive). What it holds from before may be older than what was written
        // since, and nothing says which keys: every namespace is cleared above every version
        // ever seen, so its old values are misses and the loaders answer.
        tracing::warn!(target: "tiered_cache::cache", counter = stamp.version, highest,
            "redis's version counter is behind one it reported before (restored, a lagging \
             replica promoted, or its meta hash gone with a restart or a flush): holding every \
             namespace's floor above it");
        if let Err(e) = shared.l2.raise_counter(highest).await {
            // Refused (a replica, say): this node at least holds its own floors above the old
            // history; the next resync that can write repairs Redis.
            tracing::warn!(target: "tiered_cache::cache", error = %e,
                "could not repair redis's version counter; holding this node's floors above it");
            for ns in &shared.namespaces {
                ns.raise_floor(highest + 1);
            }
        }
        shared.bus.metrics.rollbacks.inc();
        flush = true;
        (stamp, floors) = shared.l2.floors(&names).await?;
    }
    // Before the sequence moves to the counter's version: the replay starts where it was.
    let mut applied = match flush {
        true => None,
        false => replay::catch_up(shared, stamp).await,
    };
    // A reason to clear raised while catching up (tracking back, say) is this resync's too.
    if shared.bus.must_flush.swap(false, SeqCst) {
        applied = None;
    }
    let kept = applied.is_some();
    let applied = match applied {
        Some(applied) => applied,
        None => replay::anchor(shared, stamp).await,
    };
    // Everything up to the counter is known now: this node's next draw stays above it.
    shared.l2.epochs().saw(stamp.version);
    // Counted once it happens: an attempt Redis did not answer cleared nothing.
    shared.bus.metrics.resyncs.inc();
    shared.l2.epochs().adopt(stamp.epoch);
    // Everything published up to here is either already delivered or on its way, behind
    // the subscription just confirmed: the sequence continues from this version.
    shared.bus.advance(stamp);
    shared.bus.resync_version.store(stamp.version, SeqCst);
    shared.bus.past_resync.store(false, SeqCst);
    shared.bus.set_applied(applied);
    for ((ns, floor), before) in shared.namespaces.iter().zip(floors).zip(before) {
        if kept && floor > ns.floor() {
            // A floor no replayed message raised (a rollback another node found and
            // repaired first): what L1 holds from below it is dead too.
            ns.clear_l1();
        }
        ns.reset_floor(before, floor);
    }
    if !kept {
        shared.bus.metrics.flushes.inc();
        shared.clear_all_l1();
    }
    shared.bus.touch();
    shared.bus.delivered_at(read_at);
    shared.bus.resync_pending.store(false, SeqCst);
    if shared.bus.must_flush.load(SeqCst) {
        // A reason to clear came up after this resync decided (tracking back, a new epoch):
        // L1 stays distrusted, and the resync that reason asked for follows at once.
        shared.suspect();
        return Ok(());
    }
    // L1 is in sequence with the bus as of the counter's read (emptied, or caught up): it
    // can be trusted from here, not from the watchdog's next tick (unless external-write
    // tracking is still down), for as long as the bound allows from that read.
    if shared.bus.tracking_ok.load(SeqCst) {
        for ns in &shared.namespaces {
            ns.set_bypass(false, Some(Duration::ZERO));
        }
    }
    // And one raised while lifting it: the bypass goes back on.
    if shared.bus.must_flush.load(SeqCst) {
        shared.suspect();
    }
    Ok(())
}
