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
//! | `tiered_cache_fleet_locks_total` | namespace, result (`acquired`, `waited`, `gave_up`) | fleet-wide single flight: lock taken and loaded under; another node's value found in Redis instead of loading (also when found right after taking the lock, or after giving up); waited too long (then `waited` too if the value was there at the last look) |
//! | `tiered_cache_l1_bypass_total` | namespace | reads that skipped L1 while the bus could not vouch for the staleness bound |
//! | `tiered_cache_l1_bypassed` (gauge) | namespace | 1 while L1 is bypassed |
//! | `tiered_cache_bus_events_total` | event (`subscribed`, `disconnected`, `own_skipped`, `malformed`, `gap`, `resync`) | subscriber life |
//! | `tiered_cache_breaker_state` (gauge) | | the breaker in front of Redis: 0 closed, 1 half-open, 2 open |
//! | `tiered_cache_breaker_transitions_total` | to (`closed`, `half_open`, `open`) | breaker transitions |
//! | `tiered_cache_outbox_total` | namespace, event (`queued`, `replayed`, `superseded`, `dropped`) | writes and invalidations queued while Redis was unreachable, and their fate |
//! | `tiered_cache_outbox_entries` (gauge) | | entries queued or being replayed |
//! | `tiered_cache_request_duration_seconds` (histogram) | namespace, tier (`l1`, `l2`, `loader`) | `l2`: one Redis read with its decode, every read that reached Redis (a batch read: one for its MGET, when it succeeded); `loader`: one loader call, every call; `l1`: a hit, timed on 1 lookup in [`L1_SAMPLE`] per thread |
//! | `tiered_cache_invalidation_lag_seconds` (histogram) | namespace | receiver's wall clock minus the publisher's, per message from another node applied here (negative skew counts as 0): only as good as the nodes' clock sync |
//! | `tiered_cache_invalidations_coalesced_total` | namespace | keys beyond the first carried by one applied message (batch and tag invalidations): keys evicted = applied key messages + this |
//! | `tiered_cache_invalidations_lost_total` | | messages known lost: the holes in the version sequence (each hole also counts a `gap` event and causes a resync) |
//! | `tiered_cache_l1_bypass_seconds_total` | namespace | time spent with L1 bypassed, in whole seconds (the facade's counters are integers), refreshed on every change, about once a second and by `stats()` |
//! | `tiered_cache_l1_entries` (gauge) | namespace | L1 entries (approximate), refreshed about once a second (after a heartbeat) and by `stats()` |
//! | `tiered_cache_l1_weighted_size` (gauge) | namespace | L1's summed weight (bytes under `l1_max_bytes`, else entries), refreshed with the above |
//! | `tiered_cache_bus_connected` (gauge) | | 1 while the invalidation subscriber is listening |
//! | `tiered_cache_bus_epoch` (gauge) | | the epoch of Redis's version counter this node follows (changes when Redis lost it) |
//!
//! The bus-wide gauges carry no namespace: several caches in one process share them, last
//! writer wins (as for the breaker's). Histogram buckets are the exporter's choice; the demo's
//! start at 1 µs so L1 hits do not all land in the first one.
//!
//! An L1 hit reads the clock only when it is sampled (or its entry has a fail-safe or
//! refresh-ahead deadline to check): a thread-local counter picks 1 lookup in [`L1_SAMPLE`] to
//! time (measured in `benches/tiers.rs`, group `metrics`). The local lag record behind
//! [`LagPercentiles`] is a fixed log-linear histogram of atomics (4 sub-buckets per power of
//! two of milliseconds: a percentile is the bucket's upper bound, within 25 %), so recording
//! never locks.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Invalidation lag percentiles of one namespace (see [`NamespaceStats::invalidation_lag`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LagPercentiles {
    /// Messages from other nodes applied here.
    pub samples: u64,
    /// Median lag (upper bound of its bucket, within 25 %).
    pub p50: Duration,
    /// 99th percentile lag (upper bound of its bucket, within 25 %).
    pub p99: Duration,
    /// Largest lag seen (exact, to the millisecond).
    pub max: Duration,
}

/// Lag values at and above this many milliseconds (about 49 days) share the last bucket.
const LAG_CAP_MS: u64 = u32::MAX as u64;
/// 4 exact buckets (0-3 ms), then 4 per power of two up to 2^31.
const LAG_BUCKETS: usize = 4 + 4 * 30;

/// A fixed log-linear histogram of milliseconds, recorded with relaxed atomics.
pub(crate) struct LagRecord {
    buckets: [AtomicU64; LAG_BUCKETS],
    max_ms: AtomicU64,
}

impl LagRecord {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max_ms: AtomicU64::new(0),
        }
    }

    fn bucket(ms: u64) -> usize {
        let ms = ms.min(LAG_CAP_MS);
        if ms < 4 {
            return ms as usize;
        }
        let e = 63 - ms.leading_zeros() as usize; // 2..=31
        let sub = (ms >> (e - 2)) as usize & 3;
        4 + (e - 2) * 4 + sub
    }

    /// The largest value a bucket holds.
    fn upper(b: usize) -> u64 {
        if b < 4 {
            return b as u64;
        }
        let (e, sub) = ((b - 4) / 4 + 2, (b - 4) % 4);
        ((4 + sub as u64 + 1) << (e - 2)) - 1
    }

    pub(crate) fn record(&self, ms: u64) {
        self.buckets[Self::bucket(ms)].fetch_add(1, Relaxed);
        self.max_ms.fetch_max(ms, Relaxed);
    }

    pub(crate) fn percentiles(&self) -> LagPercentiles {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let samples: u64 = counts.iter().sum();
        let max = self.max_ms.load(Relaxed);
        let at = |q: f64| {
            let rank = ((q * samples as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (b, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_millis(Self::upper(b).min(max));
                }
            }
            Duration::from_millis(max)
        };
        if samples == 0 {
            return LagPercentiles::default();
        }
        LagPercentiles {
            samples,
            p50: at(0.5),
            p99: at(0.99),
            max: Duration::from_millis(max),
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

/// Bus-wide counts.
pub(crate) struct BusMetrics {
    pub(crate) subscribed: Tally,
    pub(crate) disconnected: Tally,
    pub(crate) own_skipped: Tally,
    pub(crate) malformed: Tally,
    pub(crate) gaps: Tally,
    /// Resynchronisations (after any subscription, gap, unreadable message, new epoch).
    pub(crate) resyncs: Tally,
    /// Messages known lost: the sum of the holes in the version sequence.
    pub(crate) lost: Tally,
    pub(crate) connected: Gauge,
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
            lost: Tally::new(counter!("tiered_cache_invalidations_lost_total")),
            connected: {
                let g = gauge!("tiered_cache_bus_connected");
                g.set(0.0);
                g
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_buckets_are_contiguous_and_hold_their_values() {
        for ms in (0..5000).chain([u32::MAX as u64 - 1, u32::MAX as u64, u64::MAX]) {
            let b = LagRecord::bucket(ms);
            assert!(b < LAG_BUCKETS, "{ms} -> {b}");
            assert!(
                ms.min(LAG_CAP_MS) <= LagRecord::upper(b),
                "{ms} above its bucket {b}"
            );
            if b > 0 {
                assert!(ms > LagRecord::upper(b - 1), "{ms} belongs below {b}");
            }
            // Within 25 %.
            let ms = ms.min(LAG_CAP_MS);
            assert!(LagRecord::upper(b) as f64 <= (ms as f64 * 1.25).max(ms as f64 + 1.0));
        }
    }

    #[test]
    fn lag_percentiles() {
        let r = LagRecord::new();
        assert_eq!(r.percentiles(), LagPercentiles::default());
        for ms in 1..=100 {
            r.record(ms);
        }
        let p = r.percentiles();
        assert_eq!((p.samples, p.max), (100, Duration::from_millis(100)));
        assert!((50..=63).contains(&p.p50.as_millis()), "{p:?}");
        assert!((99..=100).contains(&p.p99.as_millis()), "{p:?}");
    }

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

    #[test]
    fn one_lookup_in_sample_is_timed() {
        let n = (0..L1_SAMPLE * 10).filter(|_| sample_l1()).count();
        assert_eq!(n, 10);
    }
}
