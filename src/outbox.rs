//! The outbox: writes and invalidations made while Redis is unreachable, queued and replayed
//! through the normal write scripts (so every other node evicts) once it answers again.
//!
//! A `set`, `invalidate` or `invalidate_namespace` (or a batch `set` or `invalidate`) that finds
//! the breaker open, whose call times out or fails at the connection level, or that Redis
//! refuses with an error reply (a refused `set` as an invalidation of its key), is queued here
//! instead of failing its caller (unless the caller asked for strict writes). Tagged calls are
//! queued as what they are sure to cover, since a replay cannot carry tags: a tagged `set` or
//! batch `set` as an invalidation of each key (its value is given up, counted
//! `dropped`), an `invalidate_tag` as a clear of each namespace it covers (which keys the tag
//! lists is known only to Redis). What is kept, per namespace:
//!
//! - per key, only the newest operation: a write (its encoded value) or an invalidation;
//! - a namespace clear, which supersedes every key of that namespace queued before it (keys
//!   queued after it stay, and are replayed after it).
//!
//! Bounds, both checked when an operation is queued, so the outbox never holds more:
//! - **bytes** (`outbox_max_bytes`): a write whose value would take the queued values over
//!   the budget is queued as an invalidation of its key instead (always safe: every node drops
//!   its copy, the next read loads afresh);
//! - **keys** (`outbox_capacity`): an operation on a key not yet queued, when the outbox
//!   already holds that many keys, turns into a clear of its namespace, which replaces that
//!   namespace's queued keys (again safe, at the price of misses).
//!
//! Each degradation is counted (`dropped`) and this node's L1 is made to agree with it.
//!
//! **Replay** is tried when something is queued, when the breaker closes, when the subscriber
//! has resubscribed, and every cool-down while anything is queued, whenever the breaker would
//! let a call through. One operation is in flight at a time; within a
//! namespace a queued clear goes first. A replay that finds Redis unreachable again, or that
//! Redis refuses (READONLY, OOM, a script error), puts the operation back unless something
//! newer replaced it meanwhile: nothing queued is given up. A refused write is replayed as
//! its key's invalidation (which runs even under OOM). A replayed write keeps what
//! was left of its L2 TTL; one older than the TTL is replayed as an invalidation.
//!
//! **Order with new calls.** While a namespace has anything queued or in flight, a new write
//! or invalidation of that namespace joins the queue behind it (it is newer), so a replay can
//! never land after, and overwrite, a write made after it. A strict call instead waits for the
//! replay in flight, replays a queued clear of its namespace itself, then goes to Redis
//! directly, taking the queued operations it supersedes out of the queue (and putting them back
//! if it fails). A tagged write does the same; if Redis then proves unreachable, what it took out
//! goes back and the invalidations it queues replace it (newest per key, as always).
//!
//! **Conflicts.** A queued write carries what this node had seen of Redis when it was queued;
//! its replay stores the value only over nothing newer, and tombstones the key otherwise (see
//! `l2::scripts::REPLAY_WRITE`), so a replay never lands over a write made elsewhere
//! meanwhile. Invalidations and clears are always safe to replay. The outbox lives in process
//! memory: a process that exits before Redis is back loses it.
//!
//! Here: the handle, and the guard a strict call holds while it goes around the queue;
//! `queue.rs`: what is kept per namespace, and queuing within the bounds; `taken.rs`: taking
//! operations out (to replay, or for a strict call that supersedes them) and how each ends.

use crate::space::NamespaceCore;
use queue::State;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

mod queue;
mod taken;

pub(crate) use taken::{fate_of, Fate, Taken};

/// Where a write or invalidation should go.
pub(crate) enum Route<'a> {
    /// Straight to Redis. A strict call holds the replay lock and the operations it
    /// supersedes; report the outcome with [`StrictGuard::landed`].
    Direct(Option<StrictGuard<'a>>),
    /// Into the outbox, behind what this namespace already has queued.
    Queue,
}

impl Route<'_> {
    /// Reports whether the direct call reached Redis.
    pub(crate) fn landed(self, ok: bool) {
        if let Route::Direct(Some(guard)) = self {
            guard.landed(ok);
        }
    }
}

/// Held by a strict call while it goes to Redis around the outbox.
pub(crate) struct StrictGuard<'a> {
    // Declared first, so an abandoned call's claims go back before the replay lock is freed.
    claimed: Held<'a>,
    core: &'a NamespaceCore,
    _replays: tokio::sync::MutexGuard<'a, ()>,
}

impl StrictGuard<'_> {
    fn landed(mut self, ok: bool) {
        let fate = if ok { Fate::Superseded } else { Fate::Retry };
        for t in std::mem::take(&mut self.claimed.taken) {
            self.claimed.outbox.finish(self.core, t, fate);
        }
    }
}

/// Operations a caller took out of the queue to land or replay itself: whatever is still
/// here when the caller is dropped (it was abandoned mid-call) goes back, or nothing ever
/// would put it back.
pub(crate) struct Held<'a> {
    outbox: &'a Outbox,
    pub(crate) taken: Vec<Taken>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let mut st = self.outbox.lock();
        for t in std::mem::take(&mut self.taken) {
            self.outbox.restore(&mut st, t, None);
        }
        self.outbox.publish_len(&st);
    }
}

/// This node's outbox.
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Entries held; 0 lets every call skip the outbox without taking its lock.
    entries: AtomicUsize,
    /// Held by the replayer for each operation it replays, and by a strict call around its
    /// own: one operation in flight at a time.
    pub(crate) replays: tokio::sync::Mutex<()>,
    /// Wakes the replayer: something was queued, the breaker closed, or the subscriber
    /// resubscribed.
    pub(crate) wake: Arc<Notify>,
    capacity: usize,
    max_bytes: usize,
    gauge: metrics::Gauge,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, max_bytes: usize, wake: Arc<Notify>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            entries: AtomicUsize::new(0),
            replays: tokio::sync::Mutex::new(()),
            wake,
            capacity: capacity.max(1),
            max_bytes,
            gauge: metrics::gauge!("tiered_cache_outbox_entries"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_len(&self, st: &State) {
        let n = st.entries();
        self.entries.store(n, SeqCst);
        self.gauge.set(n as f64);
    }

    /// Operations held: queued, or being replayed.
    pub(crate) fn len(&self) -> usize {
        self.entries.load(SeqCst)
    }

    pub(crate) fn has_pending(&self, ns: &str) -> bool {
        if self.len() == 0 {
            return false;
        }
        self.lock().namespaces.get(ns).is_some_and(|q| !q.is_idle())
    }

    /// Whether a queued (or in-flight) operation covers `key`: its own, a clear of its
    /// namespace, or one being replayed there. Redis's copy of such a key is older than what
    /// this node has acknowledged, so reads here must not serve it (see `remote.rs`).
    pub(crate) fn holds(&self, ns: &str, key: &str) -> bool {
        if self.len() == 0 {
            return false;
        }
        self.lock()
            .namespaces
            .get(ns)
            .is_some_and(|q| q.clear.is_some() || q.in_flight > 0 || q.keys.contains_key(key))
    }

    /// Holds operations a caller took out: they go back if it is dropped before finishing
    /// them.
    pub(crate) fn hold(&self, taken: Vec<Taken>) -> Held<'_> {
        Held {
            outbox: self,
            taken,
        }
    }

    /// A direct route for a strict call holding the replay lock and what it `claimed`.
    pub(crate) fn strict_guard<'a>(
        &'a self,
        core: &'a NamespaceCore,
        replays: tokio::sync::MutexGuard<'a, ()>,
        claimed: Vec<Taken>,
    ) -> Route<'a> {
        Route::Direct(Some(StrictGuard {
            claimed: self.hold(claimed),
            core,
            _replays: replays,
        }))
    }
}
