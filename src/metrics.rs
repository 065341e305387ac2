//! Metrics: handles created once per namespace, so the hit path never formats a name or
//! allocates a label.
//!
//! Every event is counted twice: in a local atomic (read back by [`stats`](crate::TieredCache::stats)
//! without any exporter) and through the `metrics` facade, which costs nothing measurable when
//! no recorder is installed. Install your recorder before calling `build()`: handles are
//! resolved then.
//!
//! Every metric, with its labels and meaning: the Metrics table of `docs/observability.md`.
//!
//! An L1 hit reads the clock only when it is sampled (or its entry has a fail-safe or
//! refresh-ahead deadline to check): a thread-local counter picks 1 lookup in [`L1_SAMPLE`] to
//! time (measured in `benches/tiers.rs`, group `metrics`). The local lag record behind
//! [`LagPercentiles`] is a fixed log-linear histogram of atomics (4 sub-buckets per power of
//! two of milliseconds: a percentile is the bucket's upper bound, within 25 %), so recording
//! never locks.
//!
//! Here: the L1 sampling tick, [`Tally`] and [`key_hash`]; in `namespace.rs` a namespace's
//! handles and the [`NamespaceStats`] they give; in `lag.rs` the lag record; in `bus.rs` the
//! handles that carry no namespace (the bus's and the breaker's).

use metrics::Counter;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

mod bus;
mod lag;
mod namespace;

pub(crate) use bus::{BreakerMetrics, BusMetrics};
pub use lag::LagPercentiles;
pub use namespace::NamespaceStats;
pub(crate) use namespace::{NamespaceMetrics, OutboxMetrics};

/// One L1 lookup in this many (per thread) is timed for the `l1` latency histogram.
pub const L1_SAMPLE: u32 = 64;

thread_local! {
    static L1_TICK: Cell<u32> = const { Cell::new(0) };
}

/// True for one call in [`L1_SAMPLE`] on this thread: a thread-local add, no shared cache line.
#[inline(always)]
pub(crate) fn sample_l1() -> bool {
    L1_TICK.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n % L1_SAMPLE == 0
    })
}

/// Picks which occurrences of a repeated event are worth a log line: the 1st, 2nd, 4th,
/// 8th... and any after a minute without one, so a flood is not echoed line by line and a
/// later episode is still heard at once.
#[derive(Default)]
pub(crate) struct LogLimit {
    seen: AtomicU64,
    last_ms: AtomicU64,
}

impl LogLimit {
    /// Counts one occurrence; `Some(count so far)` when it should be logged.
    pub(crate) fn hit(&self) -> Option<u64> {
        let n = self.seen.fetch_add(1, Relaxed) + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let quiet = now.saturating_sub(self.last_ms.load(Relaxed)) >= 60_000;
        (n.is_power_of_two() || quiet).then(|| {
            self.last_ms.store(now, Relaxed);
            n
        })
    }
}

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

    pub(crate) fn add(&self, n: u64) {
        self.local.fetch_add(n, Relaxed);
        self.exported.increment(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.local.load(Relaxed)
    }
}

/// A key as tracing fields show it: FNV-1a, stable across runs and builds, so the same key
/// can be followed across spans and nodes without its text (possibly personal or unbounded)
/// ever reaching a log.
pub(crate) fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lookup_in_sample_is_timed() {
        let n = (0..L1_SAMPLE * 10).filter(|_| sample_l1()).count();
        assert_eq!(n, 10);
    }
}
