//! The generation guard that closes the load/invalidate race.
//!
//! A load reads Redis, then inserts into L1. An invalidation for that key can be applied in
//! between (it travels on another connection), and moka's `invalidate` does not stop a later
//! insert: without a guard the old value would sit in L1 until its TTL.
//!
//! Each namespace keeps a namespace-wide generation and a table of striped per-key generations.
//! Invalidations bump the generation *then* evict. A load takes a [`Ticket`] before its Redis
//! read, inserts, then re-checks the ticket and evicts what it inserted if the generation moved.
//! With sequentially consistent counters, either the load's re-check sees the bump (and evicts),
//! or the bump comes after the re-check, and so does the invalidation's own eviction, which then
//! removes the inserted value. Either way no stale value survives. moka's map uses weaker
//! (acquire/release) atomics, so both sides put a `SeqCst` fence between their own step and
//! moka's: after the bump on the invalidating side, after the insert on the loading side. A stripe shared by two keys
//! only costs a spurious re-load, never a stale read.

use std::sync::atomic::{fence, AtomicU64, Ordering::SeqCst};

const STRIPES: usize = 1024;

/// A snapshot of the generations covering one key, taken before reading Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    stripe: usize,
    key_gen: u64,
    ns_gen: u64,
}

pub(crate) struct Generations {
    namespace: AtomicU64,
    stripes: Box<[AtomicU64]>,
}

impl Generations {
    pub(crate) fn new() -> Self {
        Self {
            namespace: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = stripe_of(key);
        Ticket {
            stripe,
            // Namespace first: a namespace bump between the two loads is still caught.
            ns_gen: self.namespace.load(SeqCst),
            key_gen: self.stripes[stripe].load(SeqCst),
        }
    }

    /// True when nothing covering the ticket's key has been invalidated since it was taken.
    pub(crate) fn is_current(&self, t: &Ticket) -> bool {
        self.stripes[t.stripe].load(SeqCst) == t.key_gen && self.namespace.load(SeqCst) == t.ns_gen
    }

    /// Marks the key invalidated; call before evicting it from L1.
    pub(crate) fn bump_key(&self, key: &str) {
        self.stripes[stripe_of(key)].fetch_add(1, SeqCst);
        // The caller's eviction (moka's own, weaker atomics) must not be seen before the bump.
        fence(SeqCst);
    }

    /// [`bump_key`](Self::bump_key) for every key of one batch write. Returns, per key, the
    /// ticket as of after all the bumps, and whether the batch's own bumps are the only thing
    /// its stripe and the namespace saw since `before`: then the writer's own write is the
    /// latest thing that happened to the key (two keys of a batch may share a stripe).
    pub(crate) fn bump_keys(&self, keys: &[&str], before: &[Ticket]) -> Vec<(Ticket, bool)> {
        let mut own = std::collections::HashMap::<usize, u64>::with_capacity(keys.len());
        for key in keys {
            let stripe = stripe_of(key);
            self.stripes[stripe].fetch_add(1, SeqCst);
            *own.entry(stripe).or_default() += 1;
        }
        fence(SeqCst);
        let ns_gen = self.namespace.load(SeqCst);
        before
            .iter()
            .map(|b| {
                let now = Ticket {
                    stripe: b.stripe,
                    key_gen: self.stripes[b.stripe].load(SeqCst),
                    ns_gen,
                };
                let alone = ns_gen == b.ns_gen && now.key_gen == b.key_gen + own[&b.stripe];
                (now, alone)
            })
            .collect()
    }

    /// Marks every key of the namespace invalidated; call before clearing L1.
    pub(crate) fn bump_namespace(&self) {
        self.namespace.fetch_add(1, SeqCst);
        fence(SeqCst);
    }
}

/// FNV-1a: only needs to spread keys over the stripes, and runs only off the hit path.
fn stripe_of(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h as usize) % STRIPES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_go_stale_on_key_and_namespace_bumps() {
        let g = Generations::new();
        let t = g.ticket("a");
        assert!(g.is_current(&t));
        g.bump_key("a");
        assert!(!g.is_current(&t));
        let t = g.ticket("a");
        g.bump_namespace();
        assert!(!g.is_current(&t));
    }

    #[test]
    fn own_bump_directly_follows_unless_interleaved() {
        // A one-key write (`set` is a one-entry batch).
        let g = Generations::new();
        let before = [g.ticket("k")];
        let [(after, alone)] = g.bump_keys(&["k"], &before)[..] else {
            panic!("one key")
        };
        assert!(alone && g.is_current(&after));
        let before = [g.ticket("k")];
        g.bump_key("k"); // someone else's invalidation lands first
        assert!(!g.bump_keys(&["k"], &before)[0].1);
    }

    #[test]
    fn a_batch_counts_its_own_bumps_per_stripe() {
        let g = Generations::new();
        // Two keys sharing a stripe, and one elsewhere.
        let a = "k0".to_string();
        let b = (1..)
            .map(|i| format!("k{i}"))
            .find(|k| stripe_of(k) == stripe_of(&a))
            .unwrap();
        let c = (1..)
            .map(|i| format!("k{i}"))
            .find(|k| stripe_of(k) != stripe_of(&a))
            .unwrap();
        let keys = [a.as_str(), b.as_str(), c.as_str()];
        let before: Vec<_> = keys.iter().map(|k| g.ticket(k)).collect();
        let after = g.bump_keys(&keys, &before);
        assert!(after.iter().all(|(t, alone)| *alone && g.is_current(t)));

        let before: Vec<_> = keys.iter().map(|k| g.ticket(k)).collect();
        g.bump_key(&b); // someone else's invalidation of b lands during the write
        let after = g.bump_keys(&keys, &before);
        let alone: Vec<bool> = after.iter().map(|(_, alone)| *alone).collect();
        assert_eq!(alone, [false, false, true], "a and b share the stripe");

        let before: Vec<_> = keys.iter().map(|k| g.ticket(k)).collect();
        g.bump_namespace();
        assert!(g.bump_keys(&keys, &before).iter().all(|(_, alone)| !alone));
    }
}
