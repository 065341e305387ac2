//! Operations taken out of the queue, to replay them or for a strict call that supersedes
//! them, and how each ends: forgotten once it landed (or was refused, or superseded), put back
//! when Redis could not be reached, unless something newer replaced it meanwhile.

use super::queue::{KeyOp, NsQueue, Queued, State};
use super::Outbox;
use crate::codec::Encoded;
use crate::l2::L2Error;
use crate::space::NamespaceCore;
use std::time::Instant;

/// Most keys replayed in one invalidation script.
const INVALIDATION_BATCH: usize = 64;

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
        /// What this node had seen of Redis when it queued the write.
        known: crate::l2::Known,
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
    /// Redis could not be reached, or refused it (READONLY, OOM...): back into the queue,
    /// unless replaced meanwhile, to be retried. Nothing queued is ever given up.
    Retry,
    /// A strict call's own operation reached Redis and replaced it.
    Superseded,
}

impl Outbox {
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

    /// Takes the next operation to replay, from a namespace not in `skip`: a namespace's clear
    /// before its keys; invalidations of one namespace batched.
    pub(crate) fn take_next(&self, skip: &[String]) -> Option<Taken> {
        let mut guard = self.lock();
        let st = &mut *guard;
        for (name, q) in st.namespaces.iter_mut() {
            if skip.contains(name) {
                continue;
            }
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
                .find(|(_, o)| matches!(o.op, KeyOp::Write(..)))
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
            Fate::Superseded => {
                m.superseded.add(taken.ops());
                self.forget(&mut st, &taken);
            }
            Fate::Retry => self.restore(&mut st, taken, Some(m)),
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
    pub(super) fn restore(
        &self,
        st: &mut State,
        taken: Taken,
        m: Option<&crate::metrics::OutboxMetrics>,
    ) {
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
                known,
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
                            op: KeyOp::Write(bytes, known),
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
        KeyOp::Write(bytes, known) => Taken::Write {
            ns: ns.to_owned(),
            key,
            bytes,
            known,
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
        Err(_) => Fate::Retry,
    }
}
