//! The engine: the plain data every handle, pipeline and background task shares — this node's
//! id, the runtime loads run on, the L2 tier, each namespace's state, the coherence state the
//! bus keeps, and the outbox queue. Behaviour lives above it (the read and write paths, the bus
//! tasks); the few methods here change state that several of them share.

use crate::l2::L2Tier;
use crate::metrics::BusMetrics;
use crate::outbox::Outbox;
use crate::space::NamespaceCore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The state of the invalidation subscriber.
pub(crate) struct BusState {
    pub(crate) subscribed: AtomicBool,
    pub(crate) metrics: BusMetrics,
    pub(crate) started: Instant,
    /// Milliseconds since `started` (plus one) of the last answered PING or subscription.
    pub(crate) last_alive_ms: AtomicU64,
    /// Milliseconds since `started` (plus one) of the newest proof of freshness: the send time
    /// of this node's latest heartbeat received back in sequence, or the last resync.
    /// Everything published before it has been applied here.
    pub(crate) last_delivery_ms: AtomicU64,
    /// The version of the last published write seen in sequence (or read at resync).
    pub(crate) last_version: AtomicU64,
    /// The version read by the last resync, and whether a message past it has arrived (from
    /// then on, a version behind the sequence means the counter went back).
    pub(crate) resync_version: AtomicU64,
    pub(crate) past_resync: AtomicBool,
    /// Set on any suspicion that something was missed; cleared only by a resync, after it has
    /// cleared L1. While set, L1 is not trusted.
    pub(crate) resync_pending: AtomicBool,
    /// False while external-write tracking is on but its connection is down.
    pub(crate) tracking_ok: AtomicBool,
    /// Why Redis refused the subscriber (a permission or authentication error), while it does:
    /// a configuration fault no retry will mend.
    pub(crate) refused: std::sync::Mutex<Option<String>>,
}

impl BusState {
    pub(crate) fn new() -> Self {
        Self {
            subscribed: AtomicBool::new(false),
            metrics: BusMetrics::new(),
            started: Instant::now(),
            last_alive_ms: AtomicU64::new(0),
            last_delivery_ms: AtomicU64::new(0),
            last_version: AtomicU64::new(0),
            resync_version: AtomicU64::new(0),
            past_resync: AtomicBool::new(false),
            resync_pending: AtomicBool::new(true),
            tracking_ok: AtomicBool::new(true),
            refused: std::sync::Mutex::new(None),
        }
    }

    /// Why Redis refuses the subscriber, if it does.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True when every invalidation source this node relies on is connected.
    pub(crate) fn sources_up(&self) -> bool {
        self.subscribed.load(Relaxed) && self.tracking_ok.load(SeqCst)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        // Offset by one so 0 can mean "never".
        self.started.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn touch(&self) {
        self.last_alive_ms.store(self.now_ms(), Relaxed);
    }

    pub(crate) fn delivered(&self) {
        self.last_delivery_ms.store(self.now_ms(), Relaxed);
    }

    /// Records a proof of freshness dated `sent_ms` (this node's clock).
    pub(crate) fn proven_fresh_at(&self, sent_ms: u64) {
        self.last_delivery_ms.fetch_max(sent_ms, Relaxed);
    }

    pub(crate) fn resync_pending(&self) -> bool {
        self.resync_pending.load(SeqCst)
    }

    fn age(&self, at_ms: u64) -> Option<Duration> {
        (at_ms > 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(at_ms)))
    }

    pub(crate) fn last_alive_age(&self) -> Option<Duration> {
        self.age(self.last_alive_ms.load(Relaxed))
    }

    /// Time since the bus last proved it reaches this node; `None` if it never has.
    pub(crate) fn delivery_age(&self) -> Option<Duration> {
        self.age(self.last_delivery_ms.load(Relaxed))
    }
}

/// Everything the handles, the pipelines and the background tasks share.
pub(crate) struct Engine {
    pub(crate) node_id: u64,
    /// Where loads run (see `flight.rs`): the runtime `build()` was called in.
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) l2: L2Tier,
    pub(crate) bus: BusState,
    /// Raised when another path sees a new epoch; the subscriber resynchronises.
    pub(crate) resync_wanted: tokio::sync::Notify,
    /// Writes and invalidations made while Redis was unreachable, to replay.
    pub(crate) outbox: Outbox,
    /// The builder's `strict_writes`: fail instead of queuing.
    pub(crate) strict_writes: bool,
    pub(crate) namespaces: Vec<Arc<NamespaceCore>>,
    pub(crate) by_name: HashMap<String, Arc<NamespaceCore>>,
}

impl Engine {
    pub(crate) fn namespace(&self, name: &str) -> Option<&Arc<NamespaceCore>> {
        self.by_name.get(name)
    }

    pub(crate) fn namespaces(&self) -> &[Arc<NamespaceCore>] {
        &self.namespaces
    }

    /// Something may have been missed: stop trusting L1 now, until a resync has cleared it.
    pub(crate) fn suspect(&self) {
        self.bus.resync_pending.store(true, SeqCst);
        self.distrust_bounded();
    }

    /// Stops trusting L1 in every namespace with a staleness bound, now: an invalidation source
    /// is known lost.
    pub(crate) fn distrust_bounded(&self) {
        for ns in &self.namespaces {
            if ns.policy.staleness_bound.is_some() {
                ns.set_bypass(true, self.bus.delivery_age());
            }
        }
    }

    pub(crate) fn clear_all_l1(&self) {
        for ns in &self.namespaces {
            ns.clear_l1();
        }
    }

    /// For the subscriber: records the epoch a message carries. When it differs from the one
    /// this node's state belongs to, clears every L1 at once and returns true; the subscriber
    /// then resynchronises.
    pub(crate) fn epoch_changed(&self, epoch: u64) -> bool {
        let replaced = self.l2.epochs().replace(epoch);
        if let Some(prev) = replaced {
            self.forget_old_epoch(prev, epoch);
        }
        replaced.is_some()
    }

    /// The hook the L2 tier calls when any other reply shows the version counter started
    /// over: versions and floors from before mean nothing now. Clears every L1 and wakes the
    /// subscriber to resynchronise.
    pub(crate) fn counter_started_over(&self, prev: u64, epoch: u64) {
        self.forget_old_epoch(prev, epoch);
        self.suspect();
        self.resync_wanted.notify_one();
    }

    fn forget_old_epoch(&self, prev: u64, epoch: u64) {
        tracing::warn!(target: "tiered_cache::cache", prev, epoch,
            "redis version counter started over; clearing L1 and resynchronising");
        self.clear_all_l1();
    }
}
