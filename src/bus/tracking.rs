//! Writes made outside the library (opt-in): Redis's `CLIENT TRACKING` in broadcast mode on
//! the cache's key prefix, so a `SET` or `DEL` from `redis-cli` or another service evicts every
//! node's L1 copy too.
//!
//! A dedicated RESP3 connection turns tracking on; Redis then pushes the name of every key
//! modified under the prefix, by anyone. Library writes are pushed as well (they are also on
//! the bus): the only cost is that a writer's own fresh L1 copy is evicted and read back once.
//! A null push means the whole keyspace was flushed. While this connection is down, writes go
//! unseen, so it counts as part of the bus: namespaces with a staleness bound stop trusting L1
//! at once, and when tracking is back the subscriber resynchronises (clears L1) before they
//! trust it again.

use crate::bus::BusConfig;
use crate::engine::Engine;
use crate::key::SEPARATOR;
use crate::l2::link::Tracked;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

/// Runs until aborted.
pub(crate) async fn run_tracker(shared: Arc<Engine>, cfg: BusConfig) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let reason = session(&shared, &cfg).await.unwrap_err();
        if shared.bus.tracking_ok.swap(false, SeqCst) {
            tracing::warn!(target: "tiered_cache::tracking", %reason,
                "lost the tracking connection: external writes go unseen until it is back");
            backoff = Duration::from_millis(50);
        }
        shared.suspect_unlogged();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
}

async fn session(shared: &Engine, cfg: &BusConfig) -> Result<(), String> {
    let prefix = format!("{}{SEPARATOR}", shared.l2.keys().prefix());
    // Taken first: a move from here on ends this session (the new primary's writes would go
    // unseen on the old one's connection).
    let mut moved = shared.l2.moves();
    moved.borrow_and_update();
    let mut tracker = shared.l2.track(&prefix).await?;
    // Every write from here on reaches us; what happened before may not have: the subscriber
    // clears L1 before anything is trusted again.
    shared.suspect_unlogged();
    shared.bus.tracking_ok.store(true, SeqCst);
    shared.resync_wanted.notify_one();
    tracing::info!(target: "tiered_cache::tracking", %prefix, "tracking external writes");

    let mut ping = tokio::time::interval(cfg.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            tracked = tracker.next() => match tracked {
                Tracked::Lost(reason) => return Err(reason.into()),
                Tracked::Flushed => flushed(shared),
                Tracked::Keys(keys) => apply(shared, &prefix, &keys),
            },
            _ = ping.tick() => tracker.ping().await?,
            _ = moved.changed() => return Err("the Redis primary moved: tracking on the new one".into()),
        }
    }
}

/// The whole keyspace was flushed: nothing cached here may be trusted.
fn flushed(shared: &Engine) {
    tracing::warn!(target: "tiered_cache::tracking", "keyspace flushed: clearing L1");
    shared.suspect_unlogged();
    shared.clear_all_l1();
    shared.resync_wanted.notify_one();
}

/// Evicts the keys Redis reported modified.
fn apply(shared: &Engine, prefix: &str, keys: &[String]) {
    for name in keys {
        // `{prefix}:{namespace}:{key}`; anything else (the meta hash, another namespace) is
        // not cached here.
        let Some((ns, key)) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once(SEPARATOR))
        else {
            continue;
        };
        if let Some(ns) = shared.namespace(ns) {
            ns.apply_tracked_key(key);
        }
    }
}
