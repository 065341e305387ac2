//! The handles that carry no namespace: the invalidation bus's and the circuit breaker's.
//! Several caches in one process share them (last writer wins for the gauges).

use super::{LogLimit, Tally};
use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bus-wide counts.
pub(crate) struct BusMetrics {
    pub(crate) subscribed: Tally,
    pub(crate) disconnected: Tally,
    pub(crate) own_skipped: Tally,
    pub(crate) malformed: Tally,
    pub(crate) gaps: Tally,
    /// Resynchronisations (after any subscription, gap or new epoch; spaced 25 ms apart).
    pub(crate) resyncs: Tally,
    /// Resyncs that found Redis's history gone back and cleared every namespace.
    pub(crate) rollbacks: Tally,
    /// Messages known lost: the sum of the holes in the version sequence.
    pub(crate) lost: Tally,
    /// Resyncs that read what was missed back from the invalidation log and kept L1.
    pub(crate) replays: Tally,
    /// Messages applied from the invalidation log.
    pub(crate) replayed: Tally,
    /// Resyncs that could not replay (the log did not cover what was missed) and cleared L1.
    pub(crate) flushes: Tally,
    /// Messages dropped because the subscriber's buffer was full.
    pub(crate) overflowed: Tally,
    pub(crate) connected: Gauge,
    /// Which unreadable messages and gaps are logged (see `LogLimit`).
    pub(crate) malformed_log: LogLimit,
    pub(crate) gap_log: LogLimit,
    pub(crate) flush_log: LogLimit,
    pub(crate) overflow_log: LogLimit,
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
            resyncs: ev("resync"),
            rollbacks: ev("rollback"),
            lost: Tally::new(counter!("tiered_cache_invalidations_lost_total")),
            replays: ev("replay"),
            replayed: Tally::new(counter!("tiered_cache_invalidations_replayed_total")),
            flushes: ev("flush"),
            overflowed: ev("overflow"),
            connected: {
                let g = gauge!("tiered_cache_bus_connected");
                g.set(0.0);
                g
            },
            malformed_log: LogLimit::default(),
            gap_log: LogLimit::default(),
            flush_log: LogLimit::default(),
            overflow_log: LogLimit::default(),
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

    /// Counts a transition to the state whose gauge value is `to` (0 closed, 1 half-open,
    /// 2 open) and sets the gauge.
    pub(crate) fn transition(&self, to: f64) {
        self.state.set(to);
        self.to[(to as usize).min(2)].increment(1);
        self.total.fetch_add(1, Relaxed);
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.total.load(Relaxed)
    }
}
