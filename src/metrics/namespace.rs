//! One namespace's handles and local counts, and the [`NamespaceStats`] snapshot they give.

use super::lag::{LagPercentiles, LagRecord};
use super::Tally;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latency histograms of one namespace, one per tier.
pub(crate) struct Latency {
    pub(crate) l1: Histogram,
    pub(crate) l2: Histogram,
    pub(crate) loader: Histogram,
}

impl Latency {
    fn new(ns: &str) -> Self {
        let tier = |tier: &'static str| {
            histogram!("tiered_cache_request_duration_seconds",
                "namespace" => ns.to_owned(), "tier" => tier)
        };
        Self {
            l1: tier("l1"),
            l2: tier("l2"),
            loader: tier("loader"),
        }
    }
}

/// Time spent with L1 bypassed, exported in whole seconds (the facade's counters are
/// integers; `stats()` has it to the nanosecond).
pub(crate) struct BypassTime {
    /// When the current bypass began, if one is on; and the total of the finished ones.
    state: Mutex<(Option<Instant>, Duration)>,
    exported: Counter,
}

impl BypassTime {
    fn new(ns: &str) -> Self {
        let exported =
            counter!("tiered_cache_l1_bypass_seconds_total", "namespace" => ns.to_owned());
        exported.absolute(0);
        Self {
            state: Mutex::new((None, Duration::ZERO)),
            exported,
        }
    }

    /// Brings the clock in line with the bypass flag as it is now (called after a transition,
    /// with the flag re-read under the lock, so racing transitions settle on the last one).
    pub(crate) fn follow(&self, bypassed: impl FnOnce() -> bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (bypassed(), st.0) {
            (true, None) => st.0 = Some(Instant::now()),
            (false, Some(since)) => {
                st.1 += since.elapsed();
                st.0 = None;
            }
            _ => {}
        }
        self.exported
            .absolute((st.1 + st.0.map_or(Duration::ZERO, |s| s.elapsed())).as_secs());
    }

    /// Total time bypassed, the current bypass included; refreshes the gauge.
    pub(crate) fn total(&self) -> Duration {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let total = st.1 + st.0.map_or(Duration::ZERO, |s| s.elapsed());
        self.exported.absolute(total.as_secs());
        total
    }
}

/// Every count kept for one namespace.
pub(crate) struct NamespaceMetrics {
    pub(crate) l1_hit: Tally,
    pub(crate) l1_miss: Tally,
    pub(crate) l2_hit: Tally,
    pub(crate) l2_miss: Tally,
    /// Reads that skipped Redis: its copy could not be vouched for (see `remote.rs`).
    pub(crate) l2_bypass: Tally,
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
    /// Which writes and replays Redis refused (`READONLY`, `OOM`...) are logged.
    pub(crate) refusals: super::LogLimit,
    /// 1 while L1 is bypassed.
    pub(crate) bypassing: Gauge,
    pub(crate) bypass_time: BypassTime,
    pub(crate) latency: Latency,
    /// Keys beyond the first in one applied message.
    pub(crate) inv_coalesced: Tally,
    lag_exported: Histogram,
    lag: LagRecord,
    pub(crate) l1_entries: Gauge,
    pub(crate) l1_weighted_size: Gauge,
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
            l2_bypass: req("l2", "bypass"),
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
            bypass_time: BypassTime::new(&ns),
            refusals: super::LogLimit::default(),
            latency: Latency::new(&ns),
            inv_coalesced: Tally::new(counter!("tiered_cache_invalidations_coalesced_total",
                "namespace" => ns.clone())),
            lag_exported: histogram!("tiered_cache_invalidation_lag_seconds",
                "namespace" => ns.clone()),
            lag: LagRecord::new(),
            l1_entries: gauge!("tiered_cache_l1_entries", "namespace" => ns.clone()),
            l1_weighted_size: gauge!("tiered_cache_l1_weighted_size", "namespace" => ns.clone()),
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

    /// Records the lag of a message from another node: `now_ms` minus `sent_ms`, both wall
    /// clocks (unix ms); a sender's clock ahead of ours counts as no lag. Nothing for a
    /// message without a send time (format 1).
    pub(crate) fn invalidation_lag(&self, sent_ms: Option<u64>, now_ms: u64) {
        let Some(sent_ms) = sent_ms else { return };
        let lag = now_ms.saturating_sub(sent_ms);
        self.lag.record(lag);
        self.lag_exported.record(lag as f64 / 1000.0);
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
            l2_bypasses: self.l2_bypass.get(),
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
            invalidations_coalesced: self.inv_coalesced.get(),
            invalidation_lag: self.lag.percentiles(),
            l1_bypass_time: self.bypass_time.total(),
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
    /// Reads that skipped Redis's copy because it could not be vouched for: the key queued in
    /// this node's outbox, Redis taking no writes (a pause, a demotion), or its history not
    /// yet checked after it went back (also counted as L2 misses).
    pub l2_bypasses: u64,
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
    /// budget, older than the L2 TTL when replayed, or a tagged write, which a replay could
    /// not tag), folded into a namespace clear (queue full), or refused by Redis on replay.
    /// Other nodes still drop their copies.
    pub outbox_dropped: u64,
    /// Keys beyond the first carried by one applied invalidation message (batch and tag
    /// invalidations): keys evicted on other nodes' word = applied key messages + this.
    pub invalidations_coalesced: u64,
    /// How long messages from other nodes took to be applied here: this node's wall clock
    /// minus the publisher's, so only as good as the clocks' sync (a sender ahead counts as
    /// 0). Per namespace; a tag invalidation counts in each namespace it lists.
    pub invalidation_lag: LagPercentiles,
    /// Time spent with L1 bypassed since the cache was built, the current bypass included.
    pub l1_bypass_time: Duration,
}

impl NamespaceStats {
    /// Lookups answered by either tier, over lookups (`None` before the first). A lookup is
    /// one L1 check: bypassed reads count as L1 misses, loader results are not hits.
    pub fn hit_ratio(&self) -> Option<f64> {
        let lookups = self.l1_hits + self.l1_misses;
        (lookups > 0).then(|| (self.l1_hits + self.l2_hits) as f64 / lookups as f64)
    }

    /// Lookups answered by L1, over lookups (`None` before the first).
    pub fn l1_hit_ratio(&self) -> Option<f64> {
        let lookups = self.l1_hits + self.l1_misses;
        (lookups > 0).then(|| self.l1_hits as f64 / lookups as f64)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        let s = NamespaceStats {
            l1_hits: 6,
            l1_misses: 4,
            l2_hits: 2,
            ..Default::default()
        };
        assert_eq!(s.hit_ratio(), Some(0.8));
        assert_eq!(s.l1_hit_ratio(), Some(0.6));
        assert_eq!(NamespaceStats::default().hit_ratio(), None);
    }
}
