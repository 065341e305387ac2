//! The watchdog: the thread that switches L1 off when the bus cannot vouch for a namespace's
//! staleness bound.

use super::TRIP_AT;
use crate::engine::Engine;
use std::sync::Arc;
use std::time::Duration;

/// Keeps each namespace's bypass flag in line with its staleness bound: set when the bus has
/// not proved it reaches this node for 70 % of the bound (the rest is margin for the thread's
/// own wake-up and for reads already past the check), cleared once it has again.
///
/// A plain thread rather than a task: on a runtime saturated by the application, a task's
/// timer can fire tens of milliseconds late, and the bound is a promise. Exits when the cache
/// is dropped.
pub(crate) fn spawn_watchdog(shared: &Arc<Engine>) -> Option<std::thread::JoinHandle<()>> {
    let tightest = shared
        .namespaces()
        .iter()
        .filter_map(|ns| ns.policy.staleness_bound)
        .min()?;
    let tick = (tightest / 20).clamp(Duration::from_millis(1), Duration::from_millis(25));
    let weak = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("tiered-cache-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            let Some(shared) = weak.upgrade() else {
                return;
            };
            // Trust needs every source connected, no resync pending, and a recent proof of
            // freshness. The watchdog may restore trust after a benign delay (the proof came
            // back in sequence: nothing was lost); after a suspected loss only the resync may.
            let trusted_age = |shared: &Engine| {
                let ok = shared.bus.sources_up() && !shared.bus.resync_pending();
                shared.bus.delivery_age().filter(|_| ok)
            };
            let age = trusted_age(&shared);
            for ns in shared.namespaces() {
                if let Some(bound) = ns.policy.staleness_bound {
                    let trip = bound.mul_f64(TRIP_AT);
                    // Redis not taking writes (a pause, a demotion) distrusts L1 as well:
                    // invalidations other nodes queued meanwhile have not reached it.
                    let stuck = shared.bus.writes_stuck(bound);
                    ns.set_bypass(stuck || age.is_none_or(|age| age + tick > trip), age);
                }
            }
            // A suspicion raised while deciding must not be overwritten by the decision.
            if age.is_some() && trusted_age(&shared).is_none() {
                shared.distrust_bounded();
            }
        })
        .ok()
}
