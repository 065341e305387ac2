//! The local record of invalidation lag behind [`LagPercentiles`]: a fixed log-linear
//! histogram of atomics, so recording never locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Invalidation lag percentiles of one namespace (see
/// [`NamespaceStats::invalidation_lag`](crate::NamespaceStats::invalidation_lag)).
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
}
