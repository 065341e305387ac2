//! The outbox: writes and invalidations made while Redis is unreachable, queued and replayed
//! through the normal write scripts (so every other node evicts) once it answers again.
//!
//! A `set`, `set_many`, `invalidate`, `invalidate_many` or `invalidate_namespace` that finds
//! the breaker open, or whose call times out or fails at the connection level, is queued here
//! instead of failing its caller (unless the caller asked for strict writes). Tagged calls are
//! queued as what they are sure to cover, since a replay cannot carry tags: a `set_tagged` or
//! `set_many_tagged` as an invalidation of each key (its value is given up, counted
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
//! namespace a queued clear goes first. A replay that finds Redis unreachable again puts the
//! operation back unless something newer replaced it meanwhile. A replayed write keeps what
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
//! **Conflicts.** Redis orders replays after whatever other nodes wrote during the outage:
//! a replayed write overwrites a newer write made elsewhere meanwhile (last replayed writer
//! wins). Invalidations and clears are always safe to replay. The outbox lives in process
//! memory: a process that exits before Redis is back loses it.

use crate::codec::Encoded;
use crate::l1::L1Entry;
use crate::l2::L2Error;
use crate::space::NamespaceCore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// Most keys replayed in one invalidation script.
const INVALIDATION_BATCH: usize = 64;

/// A queued operation on one key.
#[derive(Debug)]
enum KeyOp {
    Write(Encoded),
    Invalidate,
}

impl KeyOp {
    fn bytes(&self) -> usize {
        match self {
            KeyOp::Write(e) => e.body.len(),
            KeyOp::Invalidate => 0,
        }
    }
}

#[derive(Debug)]
struct Queued<T> {
    op: T,
    /// Issue order on this node.
    seq: u64,
    at: Instant,
}

#[derive(Default)]
struct NsQueue {
    clear: Option<Queued<()>>,
    keys: HashMap<String, Queued<KeyOp>>,
    /// Operations of this namespace taken out for replay (or by a strict call) and not finished.
    in_flight: usize,
}

impl NsQueue {
    fn is_idle(&self) -> bool {
        self.clear.is_none() && self.keys.is_empty() && self.in_flight == 0
    }
}

#[derive(Default)]
struct State {
    namespaces: HashMap<String, NsQueue>,
    /// Key operations held, queued or in flight: bounded by the capacity.
    keys: usize,
    /// Bytes of the values held, queued or in flight: bounded by the byte budget.
    bytes: usize,
    /// Clears held, queued or in flight (at most two per namespace).
    clears: usize,
    seq: u64,
}

impl State {
    fn entries(&self) -> usize {
        self.keys + self.clears
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// Operations taken out of the queue, to replay or to be superseded by a strict call.
#[derive(Debug)]
pub(crate) enum Taken {
    Clear {
        ns: String,
        seq: u64,
    },
    Write {
        ns: String,
        key: String,
        bytes: Encoded,
        seq: u64,
        at: Instant,
    },
    /// One or more invalidations of one namespace, each with its seq.
    Invalidate {
        ns: String,
        keys: Vec<(String, u64, Instant)>,
    },
}

impl Taken {
    pub(crate) fn ns(&self) -> &str {
        match self {
            Taken::Clear { ns, .. } | Taken::Write { ns, .. } | Taken::Invalidate { ns, .. } => ns,
        }
    }

    fn ops(&self) -> u64 {
        match self {
            Taken::Invalidate { keys, .. } => keys.len() as u64,
            _ => 1,
        }
    }
}

/// How a taken operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Reached Redis. `expired`: a write older than its TTL, replayed as an invalidation.
    Landed { expired: bool },
    /// Redis answered with an error: given up.
    Refused,
    /// Redis could not be reached: back into the queue, unless replaced meanwhile.
    Unreachable,
    /// A strict call's own operation reached Redis and replaced it.
    Superseded,
}

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
        let fate = if ok {
            Fate::Superseded
        } else {
            Fate::Unreachable
        };
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

    /// Takes out, for a strict clear of the namespace that supersedes them, its queued clear
    /// and every queued key.
    pub(crate) fn claim_all(&self, ns: &str) -> Vec<Taken> {
        let mut st = self.lock();
        let q = st.namespaces.entry(ns.to_owned()).or_default();
        let mut claimed = Vec::new();
        if let Some(c) = q.clear.take() {
            q.in_flight += 1;
            claimed.push(Taken::Clear {
                ns: ns.to_owned(),
                seq: c.seq,
            });
        }
        for (k, old) in q.keys.drain() {
            q.in_flight += 1;
            claimed.push(taken_key(ns, k, old));
        }
        claimed
    }

    /// Takes out the namespace's queued clear, if any, for a caller to replay first.
    pub(crate) fn claim_clear(&self, ns: &str) -> Option<Taken> {
        let mut st = self.lock();
        let q = st.namespaces.entry(ns.to_owned()).or_default();
        q.clear.take().map(|c| {
            q.in_flight += 1;
            Taken::Clear {
                ns: ns.to_owned(),
                seq: c.seq,
            }
        })
    }

    /// Takes out the queued operations of `keys`, for a strict call that supersedes them.
    pub(crate) fn claim_keys(&self, ns: &str, keys: &[&str]) -> Vec<Taken> {
        let mut st = self.lock();
        let q = st.namespaces.entry(ns.to_owned()).or_default();
        let mut claimed = Vec::new();
        for k in keys {
            if let Some(old) = q.keys.remove(*k) {
                q.in_flight += 1;
                claimed.push(taken_key(ns, (*k).to_owned(), old));
            }
        }
        claimed
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

    /// Queues a write. `local` is the value for this node's L1, kept only in a namespace that
    /// serves L1 while the bus is down (read-your-writes); elsewhere the local copy is dropped,
    /// so this node never disagrees with the fleet.
    pub(crate) fn enqueue_write(
        &self,
        core: &NamespaceCore,
        key: String,
        bytes: Encoded,
        local: Option<L1Entry>,
    ) {
        self.enqueue_key(core, key, KeyOp::Write(bytes), local);
    }

    /// Queues an invalidation of one key (this node's copy is dropped).
    pub(crate) fn enqueue_invalidate(&self, core: &NamespaceCore, key: String) {
        self.enqueue_key(core, key, KeyOp::Invalidate, None);
    }

    /// Queues an invalidation of a key whose tagged write could not reach Redis: the value is
    /// given up (counted `dropped`), since a replayed write would not join its tags' sets.
    /// This node's copy is dropped, and every node's once the invalidation is replayed.
    pub(crate) fn enqueue_unwritten(&self, core: &NamespaceCore, key: String) {
        core.metrics.outbox.dropped.inc();
        self.enqueue_invalidate(core, key);
    }

    fn enqueue_key(&self, core: &NamespaceCore, key: String, op: KeyOp, local: Option<L1Entry>) {
        let m = &core.metrics.outbox;
        m.queued.inc();
        let mut guard = self.lock();
        let st = &mut *guard;
        let seq = st.next_seq();
        let q = st.namespaces.entry(core.name.clone()).or_default();
        let old_bytes = q.keys.get(&key).map_or(0, |o| o.op.bytes());
        let mut op = op;
        if op.bytes() > 0 && st.bytes - old_bytes + op.bytes() > self.max_bytes {
            // Over the byte budget: keep the key's invalidation, give up its value.
            tracing::warn!(target: "tiered_cache::outbox", namespace = %core.name,
                len = op.bytes(), budget = self.max_bytes,
                "outbox over its byte budget: queuing an invalidation instead of the value");
            m.dropped.inc();
            op = KeyOp::Invalidate;
        }
        let is_write = matches!(op, KeyOp::Write(_));
        if let Some(old) = q.keys.get_mut(&key) {
            st.bytes = st.bytes - old.op.bytes() + op.bytes();
            *old = Queued {
                op,
                seq,
                at: Instant::now(),
            };
            m.superseded.inc();
        } else if st.keys >= self.capacity {
            // Full: this namespace's queued keys and this one become one clear.
            let n = q.keys.len();
            for (_, old) in q.keys.drain() {
                st.bytes -= old.op.bytes();
                st.keys -= 1;
                if matches!(old.op, KeyOp::Write(_)) {
                    m.dropped.inc();
                } else {
                    m.superseded.inc();
                }
            }
            if is_write {
                m.dropped.inc();
            }
            if q.clear.is_none() {
                st.clears += 1;
            }
            q.clear = Some(Queued {
                op: (),
                seq,
                at: Instant::now(),
            });
            tracing::warn!(target: "tiered_cache::outbox", namespace = %core.name,
                capacity = self.capacity, folded = n,
                "outbox full: queuing a clear of the namespace instead of its keys");
            core.clear_l1();
            self.publish_len(st);
            self.wake.notify_one();
            return;
        } else {
            st.keys += 1;
            st.bytes += op.bytes();
            q.keys.insert(
                key.clone(),
                Queued {
                    op,
                    seq,
                    at: Instant::now(),
                },
            );
        }
        // This node's L1, in the same order as the queue.
        core.evict(&key);
        if let (true, Some(entry), None) = (is_write, local, core.policy.staleness_bound) {
            let ticket = core.gens.ticket(&key);
            core.insert_guarded(key, entry, &ticket);
        }
        self.publish_len(st);
        self.wake.notify_one();
    }

    /// Queues a clear of the namespace: it supersedes every key of it queued so far.
    pub(crate) fn enqueue_clear(&self, core: &NamespaceCore) {
        let m = &core.metrics.outbox;
        m.queued.inc();
        let mut guard = self.lock();
        let st = &mut *guard;
        let seq = st.next_seq();
        let q = st.namespaces.entry(core.name.clone()).or_default();
        for (_, old) in q.keys.drain() {
            st.bytes -= old.op.bytes();
            st.keys -= 1;
            m.superseded.inc();
        }
        if q.clear.is_some() {
            m.superseded.inc();
        } else {
            st.clears += 1;
        }
        q.clear = Some(Queued {
            op: (),
            seq,
            at: Instant::now(),
        });
        core.clear_l1();
        self.publish_len(st);
        self.wake.notify_one();
    }

    /// Takes the next operation to replay: a namespace's clear before its keys; invalidations
    /// of one namespace batched.
    pub(crate) fn take_next(&self) -> Option<Taken> {
        let mut guard = self.lock();
        let st = &mut *guard;
        for (name, q) in st.namespaces.iter_mut() {
            if let Some(c) = q.clear.take() {
                q.in_flight += 1;
                return Some(Taken::Clear {
                    ns: name.clone(),
                    seq: c.seq,
                });
            }
            let write = q
                .keys
                .iter()
                .find(|(_, o)| matches!(o.op, KeyOp::Write(_)))
                .map(|(k, _)| k.clone());
            if let Some(k) = write {
                let old = q.keys.remove(&k).expect("found");
                q.in_flight += 1;
                return Some(taken_key(name, k, old));
            }
            if !q.keys.is_empty() {
                let ks: Vec<String> = q.keys.keys().take(INVALIDATION_BATCH).cloned().collect();
                let keys = ks
                    .into_iter()
                    .map(|k| {
                        let o = q.keys.remove(&k).expect("listed");
                        (k, o.seq, o.at)
                    })
                    .collect();
                q.in_flight += 1;
                return Some(Taken::Invalidate {
                    ns: name.clone(),
                    keys,
                });
            }
        }
        st.namespaces.retain(|_, q| !q.is_idle());
        None
    }

    /// Ends a taken operation: forgotten, or put back.
    pub(crate) fn finish(&self, core: &NamespaceCore, taken: Taken, fate: Fate) {
        let m = &core.metrics.outbox;
        let mut st = self.lock();
        match fate {
            Fate::Landed { expired } => {
                m.replayed.add(taken.ops());
                if expired {
                    m.dropped.inc();
                }
                self.forget(&mut st, &taken);
            }
            Fate::Refused => {
                m.dropped.add(taken.ops());
                self.forget(&mut st, &taken);
            }
            Fate::Superseded => {
                m.superseded.add(taken.ops());
                self.forget(&mut st, &taken);
            }
            Fate::Unreachable => self.restore(&mut st, taken, Some(m)),
        }
        self.publish_len(&st);
    }

    fn forget(&self, st: &mut State, taken: &Taken) {
        match taken {
            Taken::Clear { .. } => st.clears -= 1,
            Taken::Write { bytes, .. } => {
                st.keys -= 1;
                st.bytes -= bytes.body.len();
            }
            Taken::Invalidate { keys, .. } => st.keys -= keys.len(),
        }
        if let Some(q) = st.namespaces.get_mut(taken.ns()) {
            q.in_flight -= 1;
        }
    }

    /// Puts a taken operation back, unless something newer replaced it meanwhile.
    fn restore(&self, st: &mut State, taken: Taken, m: Option<&crate::metrics::OutboxMetrics>) {
        let st = &mut *st;
        let q = st.namespaces.entry(taken.ns().to_owned()).or_default();
        q.in_flight -= 1;
        let cleared_after = |seq: u64, q: &NsQueue| q.clear.as_ref().is_some_and(|c| c.seq > seq);
        let superseded = |m: Option<&crate::metrics::OutboxMetrics>| {
            if let Some(m) = m {
                m.superseded.inc();
            }
        };
        match taken {
            Taken::Clear { seq, .. } => match &q.clear {
                Some(_) => {
                    st.clears -= 1;
                    superseded(m);
                }
                None => {
                    q.clear = Some(Queued {
                        op: (),
                        seq,
                        at: Instant::now(),
                    })
                }
            },
            Taken::Write {
                key,
                bytes,
                seq,
                at,
                ..
            } => {
                if q.keys.contains_key(&key) || cleared_after(seq, q) {
                    st.keys -= 1;
                    st.bytes -= bytes.body.len();
                    superseded(m);
                } else {
                    q.keys.insert(
                        key,
                        Queued {
                            op: KeyOp::Write(bytes),
                            seq,
                            at,
                        },
                    );
                }
            }
            Taken::Invalidate { keys, .. } => {
                for (key, seq, at) in keys {
                    if q.keys.contains_key(&key) || cleared_after(seq, q) {
                        st.keys -= 1;
                        superseded(m);
                    } else {
                        q.keys.insert(
                            key,
                            Queued {
                                op: KeyOp::Invalidate,
                                seq,
                                at,
                            },
                        );
                    }
                }
            }
        }
    }
}

fn taken_key(ns: &str, key: String, old: Queued<KeyOp>) -> Taken {
    match old.op {
        KeyOp::Write(bytes) => Taken::Write {
            ns: ns.to_owned(),
            key,
            bytes,
            seq: old.seq,
            at: old.at,
        },
        KeyOp::Invalidate => Taken::Invalidate {
            ns: ns.to_owned(),
            keys: vec![(key, old.seq, old.at)],
        },
    }
}

pub(crate) fn fate_of(outcome: &Result<bool, L2Error>) -> Fate {
    match outcome {
        Ok(expired) => Fate::Landed { expired: *expired },
        Err(e) if e.is_unreachable() => Fate::Unreachable,
        Err(_) => Fate::Refused,
    }
}
