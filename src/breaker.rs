//! The circuit breaker in front of every Redis call (see `L2Tier::call`).
//!
//! ```text
//!             N consecutive failures                cool-down elapsed: the next call is the probe
//!   Closed ──────────────────────────► Open ─────────────────────────────────────► HalfOpen
//!     ▲                                  ▲                                             │
//!     │                                  └──────────── the probe fails ◄───────────────┤
//!     └────────────────────────────────────────────── the probe succeeds ◄─────────────┘
//! ```
//!
//! A failure is a call that timed out or failed at the connection level; an error *answer*
//! from Redis (a script error, `OOM`) proves Redis reachable and counts as a success. While
//! open, every call is refused at once (`L2Error::Skipped`), so a dead or hung Redis costs
//! callers nothing but the first N timeouts. Half-open lets exactly one call through; every
//! other call keeps failing fast until that probe has answered. A probe whose caller gives up
//! (its future dropped) hands the probe to the next call instead of wedging the breaker.
//!
//! Results of calls admitted in an earlier state (a slow call let through while closed that
//! answers after the breaker opened) are ignored: only the probe decides a half-open breaker.

use crate::metrics::BreakerMetrics;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Where the breaker in front of Redis stands (see [`Health::breaker`](crate::Health)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to Redis. The normal state.
    Closed,
    /// The cool-down has elapsed: one probe call is (or may be) on its way to Redis; every
    /// other call is answered at once without it.
    HalfOpen,
    /// Redis failed repeatedly: calls are answered at once (reads from L1 or the loader, writes
    /// queued) without touching it, until the cool-down has elapsed.
    Open,
}

impl BreakerState {
    /// The value of the `tiered_cache_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

struct Inner {
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    opened_at: Instant,
    /// True while the half-open probe is out.
    probing: bool,
    /// Bumped on every transition: permits from an earlier state are not counted.
    generation: u64,
}

/// The breaker. One per cache instance (one Redis).
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
    metrics: BreakerMetrics,
    /// Woken when the breaker closes: the outbox replays what was queued meanwhile.
    on_close: Arc<Notify>,
}

/// Leave to make one call. Record its outcome with [`Permit::record`]; a probe permit dropped
/// unrecorded (its caller gave up) lets the next call probe instead.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    /// `threshold` consecutive failures open it; `cooldown` later one probe is let through.
    pub(crate) fn new(threshold: u32, cooldown: Duration, on_close: Arc<Notify>) -> Self {
        let metrics = BreakerMetrics::new();
        metrics.state.set(BreakerState::Closed.gauge_value());
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probing: false,
                generation: 0,
            }),
            metrics,
            on_close,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Transitions since the cache was built.
    pub(crate) fn transitions(&self) -> u64 {
        self.metrics.transitions()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing that can panic runs under this lock; recover rather than propagate.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call now would be let through (without asking for leave): the replayer does
    /// not bother while the breaker would refuse it.
    pub(crate) fn would_admit(&self) -> bool {
        let inner = self.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => inner.opened_at.elapsed() >= self.cooldown,
            BreakerState::HalfOpen => !inner.probing,
        }
    }

    /// Asks to make a call now; `None` means answer without Redis.
    pub(crate) fn acquire(&self) -> Option<Permit<'_>> {
        self.acquire_at(Instant::now())
    }

    fn acquire_at(&self, now: Instant) -> Option<Permit<'_>> {
        let mut inner = self.lock();
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open if now.duration_since(inner.opened_at) >= self.cooldown => {
                self.transition(&mut inner, BreakerState::HalfOpen);
                inner.probing = true;
                true
            }
            BreakerState::Open => return None,
            BreakerState::HalfOpen if !inner.probing => {
                inner.probing = true;
                true
            }
            BreakerState::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self,
            generation: inner.generation,
            probe,
            recorded: false,
        })
    }

    fn record_at(&self, generation: u64, probe: bool, ok: bool, now: Instant) {
        let mut inner = self.lock();
        if generation != inner.generation {
            return;
        }
        match (probe, ok) {
            (true, true) => {
                inner.probing = false;
                inner.failures = 0;
                self.transition(&mut inner, BreakerState::Closed);
            }
            (true, false) => {
                inner.probing = false;
                inner.opened_at = now;
                self.transition(&mut inner, BreakerState::Open);
            }
            (false, true) => inner.failures = 0,
            (false, false) => {
                inner.failures = inner.failures.saturating_add(1);
                if inner.failures >= self.threshold {
                    inner.opened_at = now;
                    self.transition(&mut inner, BreakerState::Open);
                }
            }
        }
    }

    fn release_probe(&self, generation: u64) {
        let mut inner = self.lock();
        if generation == inner.generation && inner.state == BreakerState::HalfOpen {
            inner.probing = false;
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        inner.state = to;
        inner.generation += 1;
        self.metrics.transition(to.gauge_value());
        match to {
            BreakerState::Open => tracing::warn!(target: "tiered_cache::breaker",
                from = from.label(), failures = inner.failures, cooldown = ?self.cooldown,
                "redis breaker open: calls answered without redis, writes queued"),
            BreakerState::HalfOpen => tracing::info!(target: "tiered_cache::breaker",
                "redis breaker half-open: letting one probe through"),
            BreakerState::Closed => {
                tracing::info!(target: "tiered_cache::breaker", "redis breaker closed: redis answered the probe");
                self.on_close.notify_one();
            }
        }
    }
}

impl Permit<'_> {
    /// Records the call's outcome: `ok` when Redis answered (even with an error reply).
    pub(crate) fn record(mut self, ok: bool) {
        self.recorded = true;
        self.breaker
            .record_at(self.generation, self.probe, ok, Instant::now());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.release_probe(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_millis(100);

    fn breaker(threshold: u32) -> Breaker {
        Breaker::new(threshold, COOL, Arc::new(Notify::new()))
    }

    fn fail(b: &Breaker, now: Instant) {
        let p = b.acquire_at(now).expect("admitted");
        b.record_at(p.generation, p.probe, false, now);
        std::mem::forget(p);
    }

    #[test]
    fn opens_after_n_consecutive_failures_only() {
        let b = breaker(3);
        let t = Instant::now();
        fail(&b, t);
        fail(&b, t);
        // A success in between resets the count.
        b.acquire_at(t).unwrap().record(true);
        fail(&b, t);
        fail(&b, t);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, t);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire_at(t + COOL / 2).is_none(), "open refuses at once");
    }

    #[test]
    fn half_open_admits_exactly_one_probe() {
        let b = breaker(1);
        let t = Instant::now();
        fail(&b, t);
        let later = t + COOL;
        let admitted: Vec<_> = (0..50).filter_map(|_| b.acquire_at(later)).collect();
        assert_eq!(admitted.len(), 1);
        assert!(admitted[0].probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn probe_success_closes_and_failure_reopens() {
        let b = breaker(1);
        let t = Instant::now();
        fail(&b, t);
        let p = b.acquire_at(t + COOL).unwrap();
        b.record_at(p.generation, true, false, t + COOL);
        std::mem::forget(p);
        assert_eq!(b.state(), BreakerState::Open);
        // A new cool-down starts at the failed probe.
        assert!(b.acquire_at(t + COOL + COOL / 2).is_none());
        let p = b.acquire_at(t + COOL * 2).unwrap();
        assert!(p.probe);
        p.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire_at(t + COOL * 2).is_some_and(|p| !p.probe));
        // closed -> open -> half-open -> open -> half-open -> closed
        assert_eq!(b.transitions(), 5);
    }

    #[test]
    fn an_abandoned_probe_hands_over() {
        let b = breaker(1);
        let t = Instant::now();
        fail(&b, t);
        drop(b.acquire_at(t + COOL).unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire_at(t + COOL).is_some_and(|p| p.probe));
    }

    #[test]
    fn a_late_answer_from_before_the_opening_does_not_decide() {
        let b = breaker(1);
        let t = Instant::now();
        let slow = b.acquire_at(t).unwrap();
        fail(&b, t);
        assert_eq!(b.state(), BreakerState::Open);
        slow.record(true);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
