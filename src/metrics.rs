//! Metrics: handles created once per namespace, so the hit path never formats a name or
//! allocates a label.
//!
//! Every event is counted twice: in a local atomic (read back by [`stats`](crate::TieredCache::stats)
//! without any exporter) and through the `metrics` facade, which costs nothing measurable when
//! no recorder is installed. Install your recorder before calling `build()`: handles are
//! resolved then.
//!
//! | name | labels | meaning |
//! |---|---|---|
//! | `tiered_cache_requests_total` | namespace, tier (`l1`, `l2`, `loader`), result (`hit`, `miss`, `error`) | lookups per tier |
//! | `tiered_cache_decode_errors_total` | namespace | values in Redis that could not be decoded (served as misses) |
//! | `tiered_cache_l2_errors_total` | namespace, kind (`skipped`, `timeout`, `connection`, `server`) | failed Redis calls |
//! | `tiered_cache_fills_total` | namespace, result (`stored`, `refused`) | loaded values written back to Redis |
//! | `tiered_cache_invalidations_total` | namespace, event (`sent`, `applied`, `tracked`) | invalidation messages (`tracked`: keys reported by `CLIENT TRACKING`) |
//! | `tiered_cache_loads_coalesced_total` | namespace | `get_or_load` calls that shared another caller's load (single flight) |
//! | `tiered_cache_stale_served_total` | namespace | stale values served by fail-safe (loader failed or past its soft timeout) |
//! | `tiered_cache_loader_timeouts_total` | namespace, kind (`soft`, `hard`) | loads past a timeout |
//! | `tiered_cache_refreshes_total` | namespace, result (`started`, `failed`) | refresh-ahead loads |
//! | `tiered_cache_fleet_locks_total` | namespace, result (`acquired`, `waited`, `gave_up`) | fleet-wide single flight: lock taken, another node's value waited for, waited too long |
//! | `tiered_cache_l1_bypass_total` | namespace | reads that skipped L1 while the bus could not vouch for the staleness bound |
//! | `tiered_cache_l1_bypassed` (gauge) | namespace | 1 while L1 is bypassed |
//! | `tiered_cache_bus_events_total` | event (`subscribed`, `disconnected`, `own_skipped`, `malformed`, `gap`) | subscriber life |
//! | `tiered_cache_breaker_state` (gauge) | | the breaker in front of Redis: 0 closed, 1 half-open, 2 open |
//! | `tiered_cache_breaker_transitions_total` | to (`closed`, `half_open`, `open`) | breaker transitions |
//! | `tiered_cache_outbox_total` | namespace, event (`queued`, `replayed`, `superseded`, `dropped`) | writes and invalidations queued while Redis was unreachable, and their fate |
//! | `tiered_cache_outbox_entries` (gauge) | | entries queued or being replayed |

use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One count, kept locally and exported.
pub(crate) struct Tally {
    local: AtomicU64,
    exported: Counter,
}

impl Tally {
    fn new(exported: Counter) -> Self {
        Self {
            local: AtomicU64::new(0),
            exported,
        }
    }

    #[inline]
    pub(crate) fn inc(&self) {
        self.local.fetch_add(1, Relaxed);
        self.exported.increment(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.local.load(Relaxed)
    }
}

/// Every count kept for one namespace.
pub(crate) struct NamespaceMetrics {
    pub(crate) l1_hit: Tally,
    pub(crate) l1_miss: Tally,
    pub(crate) l2_hit: Tally,
    pub(crate) l2_miss: Tally,
    pub(crate) l2_error: Tally,
    pub(crate) loader_ok: Tally,
    pub(crate) loader_error: Tally,
    pub(crate) decode_error: Tally,
    pub(crate) fill_stored: Tally,
    pub(crate) fill_refused: Tally,
    pub(crate) inv_sent: Tally,
    pub(crate) inv_applied: Tally,
    pub(crate) inv_tracked: Tally,
    pub(crate) l1_bypass: Tally,
    /// `get_or_load` calls that waited for another caller's load instead of loading.
    pub(crate) coalesced: Tally,
    pub(crate) stale_served: Tally,
    pub(crate) loader_soft_timeout: Tally,
    pub(crate) loader_hard_timeout: Tally,
    pub(crate) refresh_started: Tally,
    pub(crate) refresh_failed: Tally,
    pub(crate) lock_acquired: Tally,
    pub(crate) lock_waited: Tally,
    pub(crate) lock_gave_up: Tally,
    /// 1 while L1 is bypassed.
    pub(crate) bypassing: Gauge,
    /// Writes and invalidations queued while Redis was unreachable, and their fate.
    pub(crate) outbox: OutboxMetrics,
    l2_error_kinds: [Counter; 4],
}

impl NamespaceMetrics {
    pub(crate) fn new(namespace: &str) -> Self {
        let ns = namespace.to_owned();
        let req = |tier: &'static str, result: &'static str| {
            Tally::new(counter!("tiered_cache_requests_total",
                "namespace" => ns.clone(), "tier" => tier, "result" => result))
        };
        let l2_kind = |kind: &'static str| counter!("tiered_cache_l2_errors_total", "namespace" => ns.clone(), "kind" => kind);
        let fill = |result: &'static str| {
            Tally::new(counter!("tiered_cache_fills_total",
                "namespace" => ns.clone(), "result" => result))
        };
        let inv = |event: &'static str| {
            Tally::new(counter!("tiered_cache_invalidations_total",
                "namespace" => ns.clone(), "event" => event))
        };
        let labelled = |name: &'static str, label: &'static str, value: &'static str| {
            Tally::new(counter!(name, "namespace" => ns.clone(), label => value))
        };
        Self {
            stale_served: Tally::new(counter!("tiered_cache_stale_served_total",
                "namespace" => ns.clone())),
            loader_soft_timeout: labelled("tiered_cache_loader_timeouts_total", "kind", "soft"),
            loader_hard_timeout: labelled("tiered_cache_loader_timeouts_total", "kind", "hard"),
            refresh_started: labelled("tiered_cache_refreshes_total", "result", "started"),
            refresh_failed: labelled("tiered_cache_refreshes_total", "result", "failed"),
            lock_acquired: labelled("tiered_cache_fleet_locks_total", "result", "acquired"),
            lock_waited: labelled("tiered_cache_fleet_locks_total", "result", "waited"),
            lock_gave_up: labelled("tiered_cache_fleet_locks_total", "result", "gave_up"),
            l1_hit: req("l1", "hit"),
            l1_miss: req("l1", "miss"),
            l2_hit: req("l2", "hit"),
            l2_miss: req("l2", "miss"),
            l2_error: req("l2", "error"),
            loader_ok: req("loader", "hit"),
            loader_error: req("loader", "error"),
            decode_error: Tally::new(counter!("tiered_cache_decode_errors_total",
                "namespace" => ns.clone())),
            fill_stored: fill("stored"),
            fill_refused: fill("refused"),
            inv_sent: inv("sent"),
            inv_applied: inv("applied"),
            inv_tracked: inv("tracked"),
            coalesced: Tally::new(counter!("tiered_cache_loads_coalesced_total",
                "namespace" => ns.clone())),
            l1_bypass: Tally::new(counter!("tiered_cache_l1_bypass_total",
                "namespace" => ns.clone())),
            bypassing: gauge!("tiered_cache_l1_bypassed", "namespace" => ns.clone()),
            outbox: OutboxMetrics::new(&ns),
            l2_error_kinds: [
                l2_kind("skipped"),
                l2_kind("timeout"),
                l2_kind("connection"),
                l2_kind("server"),
            ],
        }
    }

    /// Counts a failed Redis call by kind (see `L2Error::kind`).
    pub(crate) fn l2_failed(&self, kind: &'static str) {
        self.l2_error.inc();
        let i = match kind {
            "skipped" => 0,
            "timeout" => 1,
            "connection" => 2,
            _ => 3,
        };
        self.l2_error_kinds[i].increment(1);
    }

    pub(crate) fn snapshot(&self) -> NamespaceStats {
        NamespaceStats {
            l1_hits: self.l1_hit.get(),
            l1_misses: self.l1_miss.get(),
            l2_hits: self.l2_hit.get(),
            l2_misses: self.l2_miss.get(),
            l2_errors: self.l2_error.get(),
            loads: self.loader_ok.get(),
            load_errors: self.loader_error.get(),
            decode_errors: self.decode_error.get(),
            fills_stored: self.fill_stored.get(),
            fills_refused: self.fill_refused.get(),
            invalidations_sent: self.inv_sent.get(),
            invalidations_applied: self.inv_applied.get(),
            tracked_invalidations: self.inv_tracked.get(),
            l1_bypasses: self.l1_bypass.get(),
            coalesced_loads: self.coalesced.get(),
            stale_served: self.stale_served.get(),
            loader_timeouts: self.loader_soft_timeout.get() + self.loader_hard_timeout.get(),
            refreshes: self.refresh_started.get(),
            fleet_lock_waits: self.lock_waited.get(),
            l1_entries: 0,
            l1_weight: 0,
            l1_bypassed: false,
            outbox_queued: self.outbox.queued.get(),
            outbox_replayed: self.outbox.replayed.get(),
            outbox_superseded: self.outbox.superseded.get(),
            outbox_dropped: self.outbox.dropped.get(),
        }
    }
}

/// Bus-wide counts.
pub(crate) struct BusMetrics {
    pub(crate) subscribed: Tally,
    pub(crate) disconnected: Tally,
    pub(crate) own_skipped: Tally,
    pub(crate) malformed: Tally,
    pub(crate) gaps: Tally,
}

impl BusMetrics {
    pub(crate) fn new() -> Self {
        let ev = |event: &'static str| {
            Tally::new(counter!("tiered_cache_bus_events_total", "event" => event))
        };
        Self {
            subscribed: ev("subscribed"),
            disconnected: ev("disconnected"),
            own_skipped: ev("own_skipped"),
            malformed: ev("malformed"),
            gaps: ev("gap"),
        }
    }
}

/// Counts for one namespace of one cache instance, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceStats {
    /// Lookups answered by L1.
    pub l1_hits: u64,
    /// Lookups L1 could not answer.
    pub l1_misses: u64,
    /// L1 misses answered by Redis.
    pub l2_hits: u64,
    /// L1 misses Redis had no live value for (including undecodable ones).
    pub l2_misses: u64,
    /// Redis calls that failed or were skipped while Redis was down.
    pub l2_errors: u64,
    /// Successful loader calls.
    pub loads: u64,
    /// Failed loader calls.
    pub load_errors: u64,
    /// Values found in Redis that could not be decoded (treated as misses).
    pub decode_errors: u64,
    /// Loaded values written back to Redis.
    pub fills_stored: u64,
    /// Loaded values not written back, because the key changed while loading.
    pub fills_refused: u64,
    /// Invalidation messages this node published.
    pub invalidations_sent: u64,
    /// Invalidation messages from other nodes applied to this node's L1.
    pub invalidations_applied: u64,
    /// `get_or_load` calls that shared another caller's load instead of running their own.
    pub coalesced_loads: u64,
    /// Keys Redis reported modified through `CLIENT TRACKING` (when enabled), evicted here.
    pub tracked_invalidations: u64,
    /// Reads that skipped L1 because the bus could not vouch for the staleness bound (also
    /// counted as L1 misses).
    pub l1_bypasses: u64,
    /// Stale values served by fail-safe instead of a loader error or a slow load.
    pub stale_served: u64,
    /// Loads that ran past the soft or the hard timeout.
    pub loader_timeouts: u64,
    /// Refresh-ahead loads started.
    pub refreshes: u64,
    /// Loads this node did not run because another node held the fleet lock and filled Redis.
    pub fleet_lock_waits: u64,
    /// Entries in L1 (approximate).
    pub l1_entries: u64,
    /// L1's summed weight: bytes for a namespace bounded by
    /// [`l1_max_bytes`](crate::NamespacePolicy::l1_max_bytes), else the entry count.
    pub l1_weight: u64,
    /// True while L1 is bypassed (the bus cannot vouch for the staleness bound).
    pub l1_bypassed: bool,
    /// Writes and invalidations (a namespace clear counts as one) queued because Redis was
    /// unreachable, instead of failing the caller.
    pub outbox_queued: u64,
    /// Queued operations that reached Redis (and so every node) once it was back.
    pub outbox_replayed: u64,
    /// Queued operations replaced by a newer one on the same key, or by a namespace clear,
    /// before being replayed: nothing was lost.
    pub outbox_superseded: u64,
    /// Queued values given up: replaced by an invalidation of their key (queue over its byte
    /// budget, or older than the L2 TTL when replayed), folded into a namespace clear (queue
    /// full), or refused by Redis on replay. Other nodes still drop their copies.
    pub outbox_dropped: u64,
}

/// One namespace's outbox counts.
pub(crate) struct OutboxMetrics {
    pub(crate) queued: Tally,
    pub(crate) replayed: Tally,
    pub(crate) superseded: Tally,
    pub(crate) dropped: Tally,
}

impl OutboxMetrics {
    fn new(ns: &str) -> Self {
        let ev = |event: &'static str| {
            Tally::new(counter!("tiered_cache_outbox_total",
                "namespace" => ns.to_owned(), "event" => event))
        };
        Self {
            queued: ev("queued"),
            replayed: ev("replayed"),
            superseded: ev("superseded"),
            dropped: ev("dropped"),
        }
    }
}

/// The breaker's state gauge and transition counts.
pub(crate) struct BreakerMetrics {
    pub(crate) state: Gauge,
    /// To closed, half-open, open.
    to: [Counter; 3],
    total: AtomicU64,
}

impl BreakerMetrics {
    pub(crate) fn new() -> Self {
        let to =
            |state: &'static str| counter!("tiered_cache_breaker_transitions_total", "to" => state);
        Self {
            state: gauge!("tiered_cache_breaker_state"),
            to: [to("closed"), to("half_open"), to("open")],
            total: AtomicU64::new(0),
        }
    }

    pub(crate) fn transition(&self, to: crate::breaker::BreakerState) {
        use crate::breaker::BreakerState;
        let i = match to {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        self.to[i].increment(1);
        self.total.fetch_add(1, Relaxed);
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.total.load(Relaxed)
    }
}
