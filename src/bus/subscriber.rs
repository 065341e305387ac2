//! The subscriber: one dedicated pub/sub connection per cache instance, resynchronised after
//! every (re)subscription, pinged every heartbeat.

use super::{apply, After};
use crate::engine::Engine;
use crate::l2::link::{Delivery, Messages, Pinger, Subscription};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the subscriber task.
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    /// Bounds each PING (with the heartbeat, whichever is longer).
    pub(crate) command_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) max_backoff: Duration,
    /// The most bytes of messages waiting to be applied (see `l2::link::Messages`).
    pub(crate) buffer: usize,
}

/// The least time between two resyncs a message asked for: bounds what a flood of gaps costs
/// to one round trip and one L1 clear per period (a new epoch clears L1 at once, as it
/// arrives; only the ACL line keeps such messages out).
const RESYNC_GAP: Duration = Duration::from_millis(25);

/// Runs until aborted (when the last cache handle is dropped).
pub(crate) async fn run_subscriber(shared: Arc<Engine>, cfg: BusConfig) {
    let min_backoff = Duration::from_millis(50);
    let mut backoff = min_backoff;
    let mut first = true;
    loop {
        let outcome = session(&shared, &cfg).await;
        let was_subscribed = shared.bus.subscribed.swap(false, Relaxed);
        shared.bus.metrics.connected.set(0.0);
        // The link is known lost: stop trusting L1 now, not when the watchdog notices, and
        // not again before a resync.
        shared.suspect();
        if was_subscribed {
            shared.bus.metrics.disconnected.inc();
            backoff = min_backoff;
        }
        let reason = outcome.unwrap_err();
        let retry_in_ms = backoff.as_millis() as u64;
        let refused = is_refusal(&reason);
        *shared.bus.refused.lock().unwrap_or_else(|e| e.into_inner()) =
            refused.then(|| reason.clone());
        if refused {
            // A configuration fault: loud on every attempt, since no retry will mend it.
            tracing::error!(target: "tiered_cache::bus", %reason, retry_in_ms,
                channel = shared.l2.keys().channel(),
                "Redis refuses the invalidation subscriber's commands (an ACL or password \
                 problem, or a Redis older than 6, which has no HELLO): its user needs HELLO, \
                 SUBSCRIBE and the channel (`&{{prefix}}:_tc:*`), and the README's rights for \
                 the resync; L1 is bypassed where a staleness bound is set");
        } else if was_subscribed || first {
            // Loud once when the link is lost; quiet while retrying against a server still down.
            tracing::warn!(target: "tiered_cache::bus", %reason, retry_in_ms,
                "invalidation subscriber not listening; L1 is caught up (or cleared) on resubscription");
        } else {
            tracing::debug!(target: "tiered_cache::bus", %reason, retry_in_ms, "subscriber retry failed");
        }
        first = false;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
}

/// Whether Redis answered the subscriber with a refusal (ACL or authentication) rather than
/// being out of reach.
fn is_refusal(reason: &str) -> bool {
    [
        "NOPERM",
        "WRONGPASS",
        "NOAUTH",
        "permission",
        "AuthenticationFailed",
        // HELLO on a Redis older than 6 (redis-rs's wording of it): RESP3 is not there, and
        // no retry brings it.
        "RESP3NotSupported",
    ]
    .iter()
    .any(|code| reason.contains(code))
}

/// One connection's life: subscribe, resync, then listen until something fails.
async fn session(shared: &Arc<Engine>, cfg: &BusConfig) -> Result<(), String> {
    let Subscription {
        mut messages,
        pinger,
        mut moved,
    } = shared.l2.subscribe(cfg.buffer).await?;
    // Confirmed: from here on nothing is missed, so now (not earlier) forget what may have been.
    super::resync(shared)
        .await
        .map_err(|e| format!("resync: {e}"))?;
    *shared.bus.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
    shared.bus.subscribed.store(true, Relaxed);
    shared.bus.metrics.connected.set(1.0);
    shared.bus.metrics.subscribed.inc();
    // Redis is back for this node: replay what was queued while it was not.
    shared.outbox.wake.notify_one();
    tracing::info!(target: "tiered_cache::bus", channel = shared.l2.keys().channel(), "subscribed");

    // The PING runs beside the message loop, never blocking it: a slow link must not hold
    // back the messages it does deliver.
    let (failed_tx, mut ping_failed) = tokio::sync::oneshot::channel::<String>();
    // Aborted when the session returns.
    let _pinging = AbortOnDrop(tokio::spawn(ping_loop(
        pinger,
        shared.clone(),
        cfg.clone(),
        failed_tx,
    )));
    let outcome = listen(shared, &mut messages, &mut ping_failed, &mut moved).await;
    // Drops not reported before the session ended are counted still (its resync follows).
    let unreported = messages.take_dropped();
    if unreported > 0 {
        overflowed(shared, unreported);
    }
    outcome
}

/// Applies what the subscription delivers and runs the resyncs it (or this node) asks for,
/// until something fails.
async fn listen(
    shared: &Arc<Engine>,
    messages: &mut Messages,
    ping_failed: &mut tokio::sync::oneshot::Receiver<String>,
    moved: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), String> {
    // A resync a message asked for waits until `RESYNC_GAP` after the last one, while messages
    // go on being applied: bounded namespaces distrust L1 from the suspicion on, and the
    // resync replays what was missed or clears L1 (unbounded ones serve theirs up to
    // `RESYNC_GAP` longer).
    let (mut due, mut last) = (false, tokio::time::Instant::now());
    loop {
        tokio::select! {
            msg = messages.next() => match msg {
                Some(Delivery::Message(msg)) => due |= apply(shared, msg.payload()) == After::Resync,
                Some(Delivery::Overflowed(n)) => {
                    overflowed(shared, n);
                    due = true;
                }
                None => return Err("connection closed".into()),
            },
            // Asked for by this node itself (tracking, a reply showing a new epoch): not
            // spaced, so a suspicion a running resync wiped is followed at once.
            _ = shared.resync_wanted.notified() => {
                super::resync(shared).await.map_err(|e| format!("resync: {e}"))?;
                (due, last) = (false, tokio::time::Instant::now());
            }
            _ = tokio::time::sleep_until(last + RESYNC_GAP), if due => {
                super::resync(shared).await.map_err(|e| format!("resync: {e}"))?;
                (due, last) = (false, tokio::time::Instant::now());
            }
            reason = &mut *ping_failed => {
                return Err(reason.unwrap_or_else(|_| "ping task ended".into()));
            }
            _ = moved.changed() => {
                return Err("the Redis primary moved: resubscribing on the new one".into());
            }
        }
    }
}

#[cfg(test)]
#[test]
fn a_redis_without_hello_is_a_refusal() {
    // As redis-rs reports Redis 5's answer to HELLO, through `link.rs`.
    let reason = "connect: Redis Server doesn't support HELLO command therefore resp3 cannot be \
                  used - RESP3NotSupported";
    assert!(is_refusal(reason));
    assert!(!is_refusal("connect: Connection refused (os error 111)"));
}

/// Messages were dropped for want of buffer: what they invalidated is unknown until the resync
/// replays it, so L1 is distrusted now.
fn overflowed(shared: &Engine, n: u64) {
    shared.bus.metrics.overflowed.add(n);
    if let Some(times) = shared.bus.metrics.overflow_log.hit() {
        tracing::warn!(target: "tiered_cache::bus", dropped = n, times,
            "the subscriber's buffer is full (a flood on the channel, or a stalled subscriber): \
             messages dropped; resynchronising");
    }
    shared.suspect();
}

/// Pings the subscriber connection every heartbeat; reports the first failure and stops.
async fn ping_loop(
    mut pinger: Pinger,
    shared: Arc<Engine>,
    cfg: BusConfig,
    failed: tokio::sync::oneshot::Sender<String>,
) {
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        heartbeat.tick().await;
        match pinger.ping(cfg.command_timeout.max(cfg.heartbeat)).await {
            Ok(()) => shared.bus.touch(),
            Err(reason) => {
                let _ = failed.send(reason);
                return;
            }
        }
    }
}

/// Aborts a task when dropped, so a session's helpers end with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
