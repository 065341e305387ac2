//! The heartbeat: each node publishes one every interval; received back in sequence it proves
//! this node's L1 is fresh (see `bus/mod.rs`).

use crate::engine::Engine;
use crate::wire::Outgoing;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// How often the heartbeat task refreshes the state gauges (L1 size, time bypassed), at most:
/// with a heartbeat slower than this, every heartbeat.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Publishes this node's heartbeat every `interval`, until aborted.
pub(crate) async fn run_heartbeat(shared: Arc<Engine>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The gauges that follow state, not events (L1 sizes need a moka maintenance pass), move
    // at most once a second, on a blocking thread: a slow pass (after a large clear) must not
    // hold the bus's one thread, which also applies messages and pings.
    let mut gauges_at = std::time::Instant::now();
    let refreshing = Arc::new(AtomicBool::new(false));
    loop {
        tick.tick().await;
        // Read the clock before sending: the proof covers what was published up to here.
        let sent = shared.bus.now_ms();
        shared.bus.sending(sent);
        let message = Outgoing::heartbeat(shared.node_id, sent);
        // A failure is the breaker's business; the watchdog notices the missing proof, and
        // reads notice Redis not taking writes (see `read/remote.rs`).
        if shared.l2.heartbeat(&message).await.is_ok() {
            // Redis takes writes again after a stall: what is queued should land now, not at
            // the next retry, since every node holds off Redis's copy only for a grace.
            if shared.bus.written_at(sent) && shared.outbox.len() > 0 {
                shared.outbox.wake.notify_one();
            }
        } else {
            shared.bus.heartbeat_failed();
        }
        // One pass at a time: a pass over a second long must not pile up blocking threads.
        if gauges_at.elapsed() >= GAUGES_EVERY && !refreshing.swap(true, SeqCst) {
            gauges_at = std::time::Instant::now();
            let (engine, refreshing) = (shared.clone(), refreshing.clone());
            drop(tokio::task::spawn_blocking(move || {
                for ns in engine.namespaces() {
                    ns.refresh_gauges();
                }
                refreshing.store(false, SeqCst);
            }));
        }
    }
}
