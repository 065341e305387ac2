//! The miss path: read Redis, call the loader, write the result back without racing writers;
//! and around it the resilience policies: fail-safe, soft and hard timeouts, refresh-ahead and
//! the fleet-wide load lock.
//!
//! One flight per key runs as a spawned task (see `flight.rs`), so a load outlives a caller
//! that stops waiting: at a soft timeout callers get the stale value while the load goes on,
//! and a refresh-ahead runs while hits keep being served.

use super::remote::{peek_l2, read_l2, settle_fill, L2Read};
use crate::codec;
use crate::engine::Engine;
use crate::error::Error;
use crate::flight::{Leader, Outcome};
use crate::guard::Ticket;
use crate::l1::{AnyValue, L1Entry};
use crate::l2::{L2Error, Payload, Stamp};
use crate::metrics::key_hash;
use crate::space::{NamespaceCore, TtlOverride};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::field::Empty;
use tracing::Instrument;

/// What a loader returns: the value, `None` for "not found", or its error.
pub(crate) type Loaded<V> = Result<Option<V>, Box<dyn std::error::Error + Send + Sync>>;

/// Awaits a loader under the namespace's hard timeout, recording its latency: the one place
/// a loader is called (a single-key flight, or a batch).
pub(super) async fn call_timed<T, E>(
    core: &NamespaceCore,
    load: impl Future<Output = Result<T, E>>,
) -> Result<T, Error>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let m = &core.metrics;
    let start = Instant::now();
    let result = match core.policy.hard_timeout {
        Some(hard) => match tokio::time::timeout(hard, load).await {
            Ok(r) => r,
            Err(_) => {
                m.latency.loader.record(start.elapsed());
                m.loader_hard_timeout.inc();
                return Err(Error::LoaderTimeout(hard));
            }
        },
        None => load.await,
    };
    m.latency.loader.record(start.elapsed());
    result.map_err(|e| Error::Loader(Arc::from(e.into())))
}

/// Why a flight runs.
pub(crate) enum Mode {
    /// L1 holds no fresh value; `stale` is its expired copy, kept for fail-safe.
    Miss { stale: Option<L1Entry> },
    /// L1's value is due for refresh-ahead; callers are being served it meanwhile.
    Refresh { current: L1Entry },
}

/// Runs one flight to its end and hands its outcome to the waiters.
pub(crate) async fn fly<V, F, Fut>(
    core: Arc<NamespaceCore>,
    shared: Arc<Engine>,
    key: String,
    loader: F,
    mode: Mode,
    leader: Leader,
    (ttl, tags): (TtlOverride, Vec<String>),
) where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Loaded<V>>,
{
    let flight = Flight {
        core: &core,
        shared: &shared,
        ticket: core.gens.ticket(&key),
        key,
        leader: &leader,
        ttl,
        tags,
    };
    let outcome = flight.run(loader, mode).await;
    leader.finish(outcome);
}

struct Flight<'a> {
    core: &'a NamespaceCore,
    shared: &'a Engine,
    key: String,
    ticket: Ticket,
    leader: &'a Leader,
    /// The leading caller's TTL overrides and tags, for what this flight stores.
    ttl: TtlOverride,
    tags: Vec<String>,
}

impl Flight<'_> {
    async fn run<V, F, Fut>(&self, loader: F, mode: Mode) -> Outcome
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Loaded<V>>,
    {
        // A fallback and whether it came from L1 (read before this flight's ticket was taken,
        // so only L1 itself can tell whether it was invalidated since: see `put_back`).
        let (mut fallback, current) = match mode {
            Mode::Miss { stale } => (stale.map(|e| (e, true)), None),
            Mode::Refresh { current } => (None, Some(current)),
        };
        // `seen` is the version counter noted before the loader runs: the fill is refused if
        // the key is invalidated after it. `None` means Redis is out of reach: cache locally.
        let mut replaces = None;
        let seen = match read_l2::<V>(self.core, self.shared, &self.key).await {
            L2Read::Hit {
                version,
                expires_ms,
                value,
                weight,
            } => {
                let usable = match &current {
                    None => true,
                    // Another node refreshed it already, or Redis's copy outlives L1's.
                    Some(cur) => {
                        version > cur.version || self.core.outlives_refresh(expires_ms, self.ttl.l1)
                    }
                };
                if usable {
                    return Ok(self.keep(value, version, expires_ms, weight));
                }
                replaces = Some(version);
                self.note_stamp().await
            }
            L2Read::Expired {
                version,
                value,
                weight,
            } => {
                if fallback.as_ref().is_none_or(|(f, _)| f.version <= version) {
                    let value = value.map(|v| Arc::new(v) as AnyValue);
                    let entry = self.core.l1_entry(value, version, Some(0), weight);
                    fallback = Some((entry, false));
                }
                self.note_stamp().await
            }
            L2Read::Miss => self.note_stamp().await,
            L2Read::Unavailable => None,
        };
        if let (None, Some(current)) = (seen, &current) {
            // Redis is out of reach: a refreshed value could only be kept at version 0, which
            // L1 would not let replace the current one. Keep it until it expires instead of
            // starting a refresh on every hit.
            let value = current.value.clone();
            if self.put_back(self.core.without_refresh(current.clone()), true) {
                return Ok(value);
            }
            return Err(Error::unavailable("refresh", None));
        }

        let mut lock = None;
        if let (Some(ttl), Some(_), None) = (self.core.policy.fleet_lock, seen, &current) {
            match self.fleet_lock::<V>(ttl).await {
                Locked::Held(token) => lock = Some(token),
                Locked::Filled(value) => return Ok(value),
                Locked::Proceed => {}
            }
        }
        let loaded = self.call_loader(loader, fallback.as_ref()).await;
        let outcome = match (loaded, current) {
            (Ok(value), _) => Ok(self.store(value, seen, replaces).await),
            (Err(e), Some(current)) => {
                self.core.metrics.refresh_failed.inc();
                tracing::debug!(target: "tiered_cache::loader", namespace = %self.core.name,
                    error = %e, "refresh-ahead failed; the current value stays until it expires");
                let value = current.value.clone();
                if self.put_back(self.core.without_refresh(current), true) {
                    Ok(value)
                } else {
                    Err(e)
                }
            }
            (Err(e), None) => self.fail_safe(e, fallback),
        };
        if let Some(token) = lock {
            // A failed unlock is counted by the tier; the lock expires by itself.
            let _ = (self.shared.l2)
                .unlock(self.core.target(), &self.key, token)
                .await;
        }
        outcome
    }

    /// Notes the version counter before loading, so the fill can tell what happened since.
    async fn note_stamp(&self) -> Option<Stamp> {
        (self.shared.l2)
            .current_stamp(Some(self.core.target()))
            .await
            .ok()
    }

    /// Calls the loader under the namespace's timeouts. At the soft timeout, when a stale value
    /// is at hand, the waiters get it and the load goes on.
    async fn call_loader<V, F, Fut>(
        &self,
        loader: F,
        fallback: Option<&(L1Entry, bool)>,
    ) -> Result<Option<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Loaded<V>>,
    {
        let policy = &self.core.policy;
        let m = &self.core.metrics;
        let span = tracing::debug_span!(target: "tiered_cache::loader", "load", namespace = %self.core.name, tier = "loader",
            key_hash = key_hash(&self.key), outcome = Empty);
        let load = call_timed(self.core, loader()).instrument(span.clone());
        let mut load = std::pin::pin!(load);
        let result = match (policy.soft_timeout, fallback) {
            (Some(soft), Some((stale, from_l1))) if policy.fail_safe.is_some() => {
                match tokio::time::timeout(soft, load.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => {
                        m.loader_soft_timeout.inc();
                        // Only a fallback nobody invalidated meanwhile; an invalidation also
                        // detaches this flight, so no later caller sees the interim.
                        if self.still_valid(stale, *from_l1) {
                            m.stale_served.inc();
                            self.leader.interim(Ok(stale.value.clone()));
                        }
                        load.await
                    }
                }
            }
            _ => load.await,
        };
        match &result {
            Ok(_) => m.loader_ok.inc(),
            Err(_) => m.loader_error.inc(),
        }
        span.record(
            "outcome",
            match &result {
                Ok(Some(_)) => "value",
                Ok(None) => "not_found",
                Err(Error::LoaderTimeout(_)) => "timeout",
                Err(_) => "error",
            },
        );
        result
    }

    /// The loader failed: serve the stale value if fail-safe holds one, else the error.
    fn fail_safe(&self, error: Error, fallback: Option<(L1Entry, bool)>) -> Outcome {
        let Some((stale, from_l1)) = fallback.filter(|_| self.core.policy.fail_safe.is_some())
        else {
            return Err(error);
        };
        let value = stale.value.clone();
        // Served as fresh for the throttle, so a failing source is not asked on every read;
        // and served at all only if nobody invalidated it meanwhile.
        if !self.put_back(self.core.throttled(stale), from_l1) {
            return Err(error);
        }
        self.core.metrics.stale_served.inc();
        tracing::debug!(target: "tiered_cache::loader", namespace = %self.core.name,
            %error, "loader failed; fail-safe serves the stale value");
        Ok(value)
    }

    /// Whether a fallback may still be served: one read from L1 before this flight's ticket
    /// was taken only while L1 still holds that very version (every invalidation removes it);
    /// one read from Redis during the flight only while its ticket is current.
    fn still_valid(&self, fallback: &L1Entry, from_l1: bool) -> bool {
        let held = || self.core.l1.get(&self.key).map(|e| e.version) == Some(fallback.version);
        self.core.gens.is_current(&self.ticket) && (!from_l1 || held())
    }

    /// Writes a fallback (or the current value of a failed refresh) back into L1 and says
    /// whether it may be served (see `still_valid`). A copy from L1 is only put back over
    /// that same version, never into a key an invalidation emptied.
    fn put_back(&self, entry: L1Entry, from_l1: bool) -> bool {
        (self.core).put_back(&self.key, entry, from_l1, &self.ticket)
    }

    /// Caches a loaded value on both tiers (unless the key changed meanwhile) and returns it.
    async fn store<V: Serialize + Send + Sync + 'static>(
        &self,
        value: Option<V>,
        seen: Option<Stamp>,
        replaces: Option<u64>,
    ) -> Option<AnyValue> {
        let core = self.core;
        let life = core.l2_life(value.is_none(), self.ttl);
        let encoded = codec::encode(value.as_ref(), life.expires_ms, core.policy.compress_above);
        let value = value.map(|v| Arc::new(v) as AnyValue);
        let (encoded, seen) = match (encoded, seen) {
            (Ok(e), Some(seen)) => (e, seen),
            (Ok(e), None) => {
                // Redis could not be asked: settled as a fill that could not reach it.
                let key = (self.key.clone(), !self.tags.is_empty());
                let how = (&life, e.plain_len);
                settle_fill(
                    core,
                    key,
                    value.clone(),
                    how,
                    &self.ticket,
                    Err(L2Error::Skipped),
                );
                return value;
            }
            (Err(e), _) => {
                tracing::warn!(target: "tiered_cache::loader", namespace = %core.name, error = %e,
                    "loaded value could not be encoded; not cached");
                return value;
            }
        };
        // The fill is attempted even if this node already heard of an invalidation: Redis
        // decides for L2 (it refuses a fill older than the key's last invalidation), the ticket
        // for L1.
        let payload = Payload {
            encoded: &encoded,
            ttl: life.keep_for,
        };
        let span = tracing::debug_span!(target: "tiered_cache::loader", "l2_fill", namespace = %core.name, tier = "l2",
            key_hash = key_hash(&self.key), outcome = Empty);
        let tags: Vec<&str> = self.tags.iter().map(String::as_str).collect();
        // With tags, the fill joins each tag's set and is refused if one was invalidated
        // after `seen` (see `l2/multi.rs`).
        let filled = (self.shared.l2)
            .fill_tagged(core.target(), &self.key, (seen, replaces), payload, &tags)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            match &filled {
                Ok(Ok(_)) => "stored",
                Ok(Err(_)) => "refused",
                Err(_) => "error",
            },
        );
        let (key, ticket) = ((self.key.clone(), !self.tags.is_empty()), &self.ticket);
        settle_fill(
            core,
            key,
            value.clone(),
            (&life, encoded.plain_len),
            ticket,
            filled,
        );
        value
    }

    /// Caches a value read from Redis in L1 and returns it.
    fn keep<V: Send + Sync + 'static>(
        &self,
        value: Option<V>,
        version: u64,
        expires_ms: Option<u64>,
        weight: usize,
    ) -> Option<AnyValue> {
        let value = value.map(|v| Arc::new(v) as AnyValue);
        // Within the loading call's L1 TTL, as a value it loaded itself would be.
        let l1_ttl = self.ttl.l1;
        let entry = (self.core).l1_entry_within(value.clone(), version, expires_ms, l1_ttl, weight);
        self.insert(entry);
        value
    }

    fn insert(&self, entry: L1Entry) {
        self.core
            .insert_guarded(self.key.clone(), entry, &self.ticket);
    }

    /// Takes the fleet-wide load lock, or waits for the node holding it to fill Redis.
    ///
    /// A waiter reads Redis on every poll (a holder whose unlock is lost still serves it), and
    /// once more after seeing the lock free: the holder fills before it unlocks, so a fill and
    /// unlock landing between a poll's read and its lock check are seen then, instead of
    /// looking like a failed load and starting a second one. For the same reason a lock just
    /// taken is checked against Redis once (the previous holder may have filled and unlocked
    /// between this node's miss and its lock), as is giving up.
    async fn fleet_lock<V: DeserializeOwned + Send + Sync + 'static>(
        &self,
        ttl: Duration,
    ) -> Locked {
        let (l2, ns, key) = (&self.shared.l2, self.core.target(), &self.key);
        let m = &self.core.metrics;
        let deadline = Instant::now() + ttl;
        let poll = (ttl / 50).clamp(Duration::from_millis(2), Duration::from_millis(20));
        loop {
            let token = rand::random::<u64>();
            match l2.try_lock(ns, key, token, ttl).await {
                Ok(true) => {
                    if let Some(value) = self.filled::<V>().await {
                        let _ = l2.unlock(ns, key, token).await;
                        return Locked::Filled(value);
                    }
                    m.lock_acquired.inc();
                    return Locked::Held(token);
                }
                Ok(false) => {}
                Err(_) => return Locked::Proceed,
            }
            // Another node is loading: wait for its fill, or for its lock to go away.
            loop {
                if Instant::now() >= deadline {
                    m.lock_gave_up.inc();
                    return self.last_look::<V>().await;
                }
                tokio::time::sleep(poll).await;
                if let Some(value) = self.filled::<V>().await {
                    return Locked::Filled(value);
                }
                match l2.is_locked(ns, key).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(_) => return self.last_look::<V>().await,
                }
            }
            if let Some(value) = self.filled::<V>().await {
                return Locked::Filled(value);
            }
            // Released without a fill (its loader failed): try to take it.
        }
    }

    /// Before loading without the lock: the value, if the holder filled it meanwhile.
    async fn last_look<V: DeserializeOwned + Send + Sync + 'static>(&self) -> Locked {
        match self.filled::<V>().await {
            Some(value) => Locked::Filled(value),
            None => Locked::Proceed,
        }
    }

    /// What another node's load left in Redis, kept in L1 and counted as a wait that paid off.
    async fn filled<V: DeserializeOwned + Send + Sync + 'static>(
        &self,
    ) -> Option<Option<AnyValue>> {
        let L2Read::Hit {
            version,
            expires_ms,
            value,
            weight,
        } = peek_l2::<V>(self.core, self.shared, &self.key).await
        else {
            return None;
        };
        let m = &self.core.metrics;
        m.lock_waited.inc();
        m.l2_hit.inc();
        Some(self.keep(value, version, expires_ms, weight))
    }
}

/// How the fleet-wide lock turned out.
enum Locked {
    /// This node holds it, under this token.
    Held(u64),
    /// Another node loaded the value meanwhile.
    Filled(Option<AnyValue>),
    /// Load without it (Redis unreachable, or the holder took too long).
    Proceed,
}
