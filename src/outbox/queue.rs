//! What the outbox keeps (per namespace, the newest operation per key and a clear), and
//! queuing within its bounds: over the byte budget a value becomes an invalidation of its key,
//! over the key capacity a namespace's keys become one clear.

use super::Outbox;
use crate::codec::Encoded;
use crate::l1::L1Entry;
use crate::l2::{Known, Stamp};
use crate::space::NamespaceCore;
use std::collections::HashMap;
use std::time::Instant;

/// A queued operation on one key.
#[derive(Debug)]
pub(super) enum KeyOp {
    /// A value, and what this node had seen of Redis when it was queued: the replay stores it
    /// only over nothing newer (see `l2::scripts::REPLAY_WRITE`).
    Write(Encoded, Known),
    Invalidate,
}

impl KeyOp {
    pub(super) fn bytes(&self) -> usize {
        match self {
            KeyOp::Write(e, _) => e.body.len(),
            KeyOp::Invalidate => 0,
        }
    }
}

#[derive(Debug)]
pub(super) struct Queued<T> {
    pub(super) op: T,
    /// Issue order on this node.
    pub(super) seq: u64,
    pub(super) at: Instant,
}

#[derive(Default)]
pub(super) struct NsQueue {
    pub(super) clear: Option<Queued<()>>,
    pub(super) keys: HashMap<String, Queued<KeyOp>>,
    /// Operations of this namespace taken out for replay (or by a strict call) and not finished.
    pub(super) in_flight: usize,
}

impl NsQueue {
    pub(super) fn is_idle(&self) -> bool {
        self.clear.is_none() && self.keys.is_empty() && self.in_flight == 0
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) namespaces: HashMap<String, NsQueue>,
    /// Key operations held, queued or in flight: bounded by the capacity.
    pub(super) keys: usize,
    /// Bytes of the values held, queued or in flight: bounded by the byte budget.
    pub(super) bytes: usize,
    /// Clears held, queued or in flight (at most two per namespace).
    pub(super) clears: usize,
    seq: u64,
}

impl State {
    pub(super) fn entries(&self) -> usize {
        self.keys + self.clears
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

impl Outbox {
    /// Queues a write. `local` is the value for this node's L1, kept only in a namespace that
    /// serves L1 while the bus is down (read-your-writes); elsewhere the local copy is dropped,
    /// so this node never disagrees with the fleet.
    pub(crate) fn enqueue_write(
        &self,
        core: &NamespaceCore,
        key: String,
        (bytes, known): (Encoded, Known),
        local: Option<L1Entry>,
    ) {
        self.enqueue_key(core, key, KeyOp::Write(bytes, known), local);
    }

    /// A queued clear of `ns` landed at `stamp`: the writes queued after it were issued after
    /// it, so their replay need not take that clear for a newer write (their knowledge of the
    /// keys themselves stays what it was).
    pub(crate) fn cleared(&self, ns: &str, stamp: Stamp) {
        let mut st = self.lock();
        let Some(q) = st.namespaces.get_mut(ns) else {
            return;
        };
        for queued in q.keys.values_mut() {
            if let KeyOp::Write(_, known) = &mut queued.op {
                known.own_clear = stamp;
            }
        }
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
        let is_write = matches!(op, KeyOp::Write(..));
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
                if matches!(old.op, KeyOp::Write(..)) {
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
}
