//! The epoch of Redis's version counter this node's state belongs to, recorded by the L2 tier
//! from every reply that carries one, so no caller has to remember to.
//!
//! When Redis reports another epoch than the one recorded, the counter started over (Redis
//! flushed, restarted, or lost the meta hash): versions and floors from before mean nothing
//! now. The tier then calls the hook the engine installed at build time, which clears every
//! L1 and has the bus resynchronise: behaviour goes up through the hook, never through an
//! import of the layers above.

use metrics::{gauge, Gauge};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;

type Hook = Box<dyn Fn(u64, u64) + Send + Sync>;

pub(crate) struct Epochs {
    /// 0 until Redis first reports one.
    current: AtomicU64,
    gauge: Gauge,
    on_change: OnceLock<Hook>,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Self {
            current: AtomicU64::new(0),
            gauge: gauge!("tiered_cache_bus_epoch"),
            on_change: OnceLock::new(),
        }
    }

    /// Installs what to do when the epoch changes (called with the old and the new one).
    /// Only the first call installs.
    pub(crate) fn on_change(&self, hook: impl Fn(u64, u64) + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(hook));
    }

    /// Records an epoch Redis reported; the epoch it replaced, when that was another known
    /// one (0, "no write since the counter was created", changes nothing). Does not
    /// call the hook: for the subscriber, which handles the change itself.
    pub(crate) fn replace(&self, epoch: u64) -> Option<u64> {
        if epoch == 0 {
            return None;
        }
        let prev = self.current.swap(epoch, SeqCst);
        // Epochs are below 2^52 (see `l2::new_epoch`): exact as a float.
        self.gauge.set(epoch as f64);
        (prev != 0 && prev != epoch).then_some(prev)
    }

    /// Records an epoch from a reply, calling the hook when it changed.
    pub(crate) fn observe(&self, epoch: u64) {
        if let Some(prev) = self.replace(epoch) {
            if let Some(hook) = self.on_change.get() {
                hook(prev, epoch);
            }
        }
    }

    /// Adopts the epoch a resync read, without calling the hook (the resync clears L1 itself).
    pub(crate) fn adopt(&self, epoch: u64) {
        if epoch != 0 {
            self.current.store(epoch, SeqCst);
            self.gauge.set(epoch as f64);
        }
    }
}
