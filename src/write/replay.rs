//! Routing and replay: where a write goes while the outbox holds something of its namespace,
//! and the replays that land what the outbox queued (see `outbox.rs` for the queue's rules).

use crate::engine::Engine;
use crate::l2::{L2Error, Payload};
use crate::outbox::{fate_of, Fate, Route, Taken};
use crate::space::NamespaceCore;
use crate::wire::Outgoing;
use std::sync::Arc;
use std::time::Duration;

/// Decides where a write or invalidation of `keys` (or of the whole namespace, for `None`)
/// goes while anything of the namespace is queued: behind it in the queue if the call is
/// `queueable` (neither strict nor tagged: a replay cannot carry tags), else straight to
/// Redis after what it must land behind. `Err` only when a queued clear that must land
/// first could not be replayed (the replay counted the failure).
pub(crate) async fn route<'a>(
    shared: &'a Engine,
    core: &'a NamespaceCore,
    keys: Option<&[&str]>,
    queueable: bool,
) -> Result<Route<'a>, L2Error> {
    let outbox = &shared.outbox;
    if !outbox.has_pending(&core.name) {
        return Ok(Route::Direct(None));
    }
    if queueable {
        return Ok(Route::Queue);
    }
    let replays = outbox.replays.lock().await;
    let claimed = match keys {
        // Keys that cannot be queued land behind whatever is queued for them: a queued clear
        // of the namespace is replayed first, then the keys' queued operations are taken out
        // of the queue, superseded if the call lands and put back if it does not.
        Some(keys) => {
            land_queued_clear(shared, core).await?;
            outbox.claim_keys(&core.name, keys)
        }
        // A clear that cannot be queued supersedes everything queued for the namespace.
        None => outbox.claim_all(&core.name),
    };
    Ok(outbox.strict_guard(core, replays, claimed))
}

/// A queued clear of this namespace was issued before the calling operation: it lands
/// first. Called with the replay lock held. `Err` if Redis could not be reached for it.
async fn land_queued_clear(shared: &Engine, core: &NamespaceCore) -> Result<(), L2Error> {
    let outbox = &shared.outbox;
    let Some(clear) = outbox.claim_clear(&core.name) else {
        return Ok(());
    };
    // Out of the queue while this caller replays it: back in if the caller is dropped.
    let mut held = outbox.hold(vec![clear]);
    let outcome = replay(shared, &held.taken[0]).await;
    let clear = held.taken.pop().expect("held until finished");
    let fate = fate_of(&outcome);
    outbox.finish(core, clear, fate);
    match outcome {
        Err(e) if fate == Fate::Retry => Err(e),
        _ => Ok(()),
    }
}

/// Replays one taken operation through the normal scripts and brings this node's L1 in line.
/// `Ok(true)`: a write older than its TTL, or refused, went out as an invalidation.
async fn replay(shared: &Engine, taken: &Taken) -> Result<bool, L2Error> {
    let Some(core) = shared.namespace(taken.ns()) else {
        return Ok(false);
    };
    // A replay the breaker skips is not counted again: it was when it first failed.
    let (l2, target) = (&shared.l2, core.replay_target());
    let ttl = core.policy.l2_ttl;
    let mut expired = false;
    let result = match taken {
        Taken::Clear { ns, .. } => {
            let done = l2
                .clear_namespace(target, &Outgoing::namespace(shared.node_id, ns))
                .await;
            if let Ok(stamp) = &done {
                core.raise_floor(stamp.version);
                shared.outbox.cleared(ns, *stamp);
            }
            if done.is_ok() {
                core.clear_l1();
            }
            done
        }
        Taken::Write {
            ns,
            key,
            bytes,
            at,
            known,
            ..
        } => {
            let message = Outgoing::keys(shared.node_id, ns, &[key]);
            // What is left of its life is what its envelope says (its TTL, the call's if it set
            // one, jittered), not the namespace's: past it, it goes out as an invalidation.
            let left = match bytes.expires_ms() {
                Some(exp) => Duration::from_millis(exp.saturating_sub(crate::codec::unix_ms())),
                None => ttl.saturating_sub(at.elapsed()),
            };
            let mut done = Err(L2Error::Skipped);
            if left >= Duration::from_millis(1) {
                // The envelope keeps its expiry; Redis keeps it the rest of its life.
                let left = left + core.policy.fail_safe.unwrap_or(Duration::ZERO);
                let payload = Payload {
                    encoded: bytes,
                    ttl: left,
                };
                done = match l2
                    .replay_write(target, key, payload, (*known, ttl), &message)
                    .await
                {
                    Ok((stamp, stored)) => {
                        // Something newer than this node knew touched the key meanwhile:
                        // tombstoned rather than written over (counted as a value given up).
                        expired = !stored;
                        Ok(stamp)
                    }
                    Err(e) => Err(e),
                };
            }
            // Expired, or refused (the value may be what Redis refuses: OOM): the key's
            // invalidation goes out instead, which an invalidation-only server still takes.
            if left < Duration::from_millis(1) || matches!(&done, Err(e) if e.is_refused()) {
                expired = true;
                done = l2.invalidate(target, &[key], ttl, shared.node_id).await;
            }
            if done.is_ok() {
                core.evict(key);
            }
            done
        }
        Taken::Invalidate { keys, .. } => {
            let ks: Vec<&str> = keys.iter().map(|(k, _, _)| k.as_str()).collect();
            let done = l2.invalidate(target, &ks, ttl, shared.node_id).await;
            if done.is_ok() {
                for k in &ks {
                    core.evict(k);
                }
            }
            done
        }
    };
    match result {
        Ok(_) => {
            core.metrics.inv_sent.inc();
            Ok(expired)
        }
        Err(e) => {
            if let Some(refusals) = e
                .is_refused()
                .then(|| core.metrics.refusals.hit())
                .flatten()
            {
                tracing::warn!(target: "tiered_cache::outbox", namespace = %core.name, code = e.code(),
                    error = %e, refusals, "redis refused a queued operation on replay; kept to retry");
            }
            Err(e)
        }
    }
}

/// Replays everything queued, one operation at a time, until the outbox is empty or Redis is
/// unreachable again.
async fn drain(shared: &Engine) {
    let outbox = &shared.outbox;
    // Namespaces whose replay Redis refused this pass: the rest still drain (a refusal may be
    // one namespace's, as an ACL's), and the refused one waits for the next pass.
    let mut refused: Vec<String> = Vec::new();
    loop {
        let _replays = outbox.replays.lock().await;
        let Some(taken) = outbox.take_next(&refused) else {
            return;
        };
        let outcome = replay(shared, &taken).await;
        let fate = fate_of(&outcome);
        let ns = taken.ns().to_owned();
        if let Some(core) = shared.namespace(&ns) {
            outbox.finish(core, taken, fate);
        }
        match outcome {
            Err(e) if e.is_unreachable() => return,
            Err(_) => refused.push(ns),
            Ok(_) => {}
        }
    }
}

/// The longest the replayer waits for a due resync before replaying anyway.
const HOLD_FOR_RESYNC: Duration = Duration::from_secs(2);

/// The replayer task: drains the outbox when woken, and every `retry` while it holds anything.
/// Runs until aborted (when the last cache handle is dropped).
pub(crate) async fn run_replayer(shared: Arc<Engine>, retry: Duration) {
    let mut held_since: Option<std::time::Instant> = None;
    loop {
        let idle = shared.outbox.len() == 0;
        tokio::select! {
            _ = shared.outbox.wake.notified() => {}
            _ = tokio::time::sleep(retry), if !idle => {}
        }
        // A resync is due (the subscriber reconnects): it may find Redis's history gone back
        // and clear every namespace, which must come before the replays, or it would clear
        // them too. The subscriber wakes the replayer once it has resynced; a subscriber that
        // cannot resync (refused, say) holds the replays back for at most HOLD_FOR_RESYNC.
        if shared.bus.resync_pending() {
            let since = *held_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < HOLD_FOR_RESYNC {
                continue;
            }
        } else {
            held_since = None;
        }
        if shared.outbox.len() > 0 && shared.l2.breaker().would_admit() {
            let before = shared.outbox.len();
            let span = tracing::info_span!(target: "tiered_cache::outbox", "outbox_replay", entries = before);
            tracing::Instrument::instrument(drain(&shared), span).await;
            let after = shared.outbox.len();
            if after < before {
                tracing::info!(target: "tiered_cache::outbox", replayed_or_superseded = before - after,
                    left = after, "outbox replayed");
            }
        }
    }
}
