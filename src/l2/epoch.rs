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
    /// The highest version Redis has reported to this node, in any epoch: a counter found
    /// below it is history going back (see `bus::resync`).
    highest: AtomicU64,
    /// The highest version reported in the current epoch, with it.
    latest: std::sync::Mutex<crate::l2::Stamp>,
    gauge: Gauge,
    on_change: OnceLock<Hook>,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Self {
            current: AtomicU64::new(0),
            highest: AtomicU64::new(0),
            latest: std::sync::Mutex::new(crate::l2::Stamp::default()),
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

    /// Records a version Redis reported (a reply, a message).
    pub(crate) fn saw(&self, version: u64) {
        self.highest.fetch_max(version, SeqCst);
    }

    /// The highest version Redis has reported to this node.
    pub(crate) fn highest(&self) -> u64 {
        self.highest.load(SeqCst)
    }

    /// The highest version a reply reported in the current epoch.
    pub(crate) fn latest(&self) -> crate::l2::Stamp {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch recorded (0: none yet).
    pub(crate) fn current(&self) -> u64 {
        self.current.load(SeqCst)
    }

    /// Records a stamp from a reply, calling the hook when its epoch changed.
    pub(crate) fn observe(&self, epoch: u64, version: u64) {
        self.saw(version);
        if epoch != 0 {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            if latest.epoch != epoch {
                *latest = crate::l2::Stamp { version, epoch };
            } else if latest.version < version {
                latest.version = version;
            }
        }
        if let Some(prev) = self.replace(epoch) {
            if let Some(hook) = self.on_change.get() {
                hook(prev, epoch);
            }
        }
    }

    /// Adopts the epoch a resync read, without calling the hook (the resync deals with L1
    /// itself).
    pub(crate) fn adopt(&self, epoch: u64) {
        if epoch != 0 {
            self.current.store(epoch, SeqCst);
            self.gauge.set(epoch as f64);
        }
    }
}
