//! The read path: L1, then Redis, then the loader, with every policy on the way (single
//! flight, fleet lock, timeouts, fail-safe, refresh-ahead, negative caching, the staleness
//! bound), and L1 settled through the generation guard in one place (see `load.rs`).

pub(crate) mod batch;
pub(crate) mod load;
pub(crate) mod remote;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::key::{key_string, with_key_str, CacheKey};
use crate::l1::{AnyValue, L1Entry};
use crate::space::{Lookup, NamespaceCore, TtlOverride};
use load::Mode;
use remote::L2Read;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a load stores along with its value: the caller's TTL overrides and tags.
#[derive(Clone, Copy, Default)]
pub(crate) struct Fill<'a> {
    pub(crate) ttl: TtlOverride,
    pub(crate) tags: &'a [String],
}

impl Fill<'_> {
    /// An owned copy for a flight (made by each caller that misses L1, for the flight it may
    /// start).
    fn owned(&self) -> (TtlOverride, Vec<String>) {
        (self.ttl, self.tags.to_vec())
    }
}

/// One namespace's read path, over the engine and the namespace's state.
pub(crate) struct Reads<'a> {
    pub(crate) shared: &'a Arc<Engine>,
    pub(crate) core: &'a Arc<NamespaceCore>,
}

impl Reads<'_> {
    /// L1's fresh value (`Some(None)`: a cached "not found"), counting like `local`. Only the
    /// value leaves this function, so an async caller's state stays small.
    #[inline(always)]
    pub(crate) fn local_value<K: CacheKey + ?Sized>(&self, key: &K) -> Option<Option<AnyValue>> {
        match self.local(key) {
            Lookup::Fresh(e) | Lookup::Due(e) => Some(e.value),
            Lookup::Stale(_) | Lookup::Miss => None,
        }
    }

    /// L1's answer, counting hits and bypasses (a miss is counted by the caller's next step).
    #[inline(always)]
    pub(crate) fn local<K: CacheKey + ?Sized>(&self, key: &K) -> Lookup {
        let core: &NamespaceCore = self.core;
        if core.bypass.load(Relaxed) {
            core.metrics.l1_bypass.inc();
            return Lookup::Miss;
        }
        // One lookup in L1_SAMPLE is timed: reading the clock on every hit would double it.
        let timed = crate::metrics::sample_l1().then(Instant::now);
        let found = with_key_str(key, |k| core.lookup(k));
        if let Lookup::Fresh(_) | Lookup::Due(_) = found {
            core.metrics.l1_hit.inc();
            if let Some(start) = timed {
                core.metrics.latency.l1.record(start.elapsed());
            }
        }
        found
    }

    /// Reads Redis after an L1 miss; a hit is cached within `l1_ttl` (the handle's L1 TTL,
    /// if it set one).
    pub(crate) async fn get_remote<V: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: String,
        l1_ttl: Option<Duration>,
    ) -> Option<Arc<V>> {
        let core: &NamespaceCore = self.core;
        core.metrics.l1_miss.inc();
        let ticket = core.gens.ticket(&key);
        match remote::read_l2::<V>(core, self.shared, &key).await {
            L2Read::Hit {
                version,
                expires_ms,
                value,
                weight,
            } => {
                let value = value.map(Arc::new);
                let any = value.clone().map(|v| v as AnyValue);
                let entry = core.l1_entry_within(any, version, expires_ms, l1_ttl, weight);
                core.insert_guarded(key, entry, &ticket);
                value
            }
            L2Read::Expired { .. } | L2Read::Miss | L2Read::Unavailable => None,
        }
    }

    /// `get_or_load_optional` with a loader made only when one is needed: a fresh L1 hit
    /// makes none, so a caller whose loader must own a copy of the key (`Memoized`) does not
    /// pay for the copy on a hit.
    pub(crate) async fn get_or_load_with<K, V, M, F, Fut, E>(
        &self,
        key: &K,
        make_loader: M,
        fill: Fill<'_>,
    ) -> Result<Option<Arc<V>>>
    where
        K: CacheKey + ?Sized,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        M: FnOnce() -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let stale = match self.local(key) {
            Lookup::Fresh(e) => return Ok(downcast(e.value)),
            Lookup::Due(e) => {
                let value = downcast(e.value.clone());
                self.refresh(key, e, make_loader, fill);
                return Ok(value);
            }
            Lookup::Stale(e) => Some(e),
            Lookup::Miss => None,
        };
        self.core.metrics.l1_miss.inc();
        // Boxed for the same reason as in `get`.
        Box::pin(self.load_once(key_string(key), make_loader(), stale, fill.owned())).await
    }

    /// Starts one background refresh of a key due for it, unless one is running.
    /// The key's string and the loader are made only by the caller that leads: a hit while
    /// a refresh is already running makes neither.
    fn refresh<K, V, M, F, Fut, E>(&self, key: &K, current: L1Entry, make_loader: M, fill: Fill<'_>)
    where
        K: CacheKey + ?Sized,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        M: FnOnce() -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        // A load already in flight (a refresh or a miss) will do: join only to lead.
        let role = with_key_str(key, |k| self.core.flights.join(k));
        if let crate::flight::Role::Leader(leader, _) = role {
            self.core.metrics.refresh_started.inc();
            let mode = Mode::Refresh { current };
            self.spawn_flight(key_string(key), make_loader(), (mode, fill.owned()), leader);
        }
    }

    fn spawn_flight<V, F, Fut, E>(
        &self,
        key: String,
        loader: F,
        (mode, fill): (Mode, (TtlOverride, Vec<String>)),
        leader: crate::flight::Leader,
    ) where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let loader = move || async move { loader().await.map_err(Into::into) };
        let task = load::fly::<V, _, _>(
            self.core.clone(),
            self.shared.clone(),
            key,
            loader,
            mode,
            leader,
            fill,
        );
        self.shared.runtime.spawn(task);
    }

    /// Single flight around the miss path: the first caller spawns the load, every caller
    /// waits for its outcome. A waiter whose load panicked goes round again and may start one
    /// itself with its own loader.
    async fn load_once<V, F, Fut, E>(
        &self,
        key: String,
        loader: F,
        stale: Option<L1Entry>,
        fill: (TtlOverride, Vec<String>),
    ) -> Result<Option<Arc<V>>>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        use crate::flight::{self, Role};
        let mut loader = Some(loader);
        let mut stale = stale;
        loop {
            let slot = match self.core.flights.join(&key) {
                Role::Leader(leader, slot) => match loader.take() {
                    Some(f) => {
                        let mode = Mode::Miss {
                            stale: stale.take(),
                        };
                        self.spawn_flight(key.clone(), f, (mode, fill.clone()), leader);
                        slot
                    }
                    // Our own load went away, and nobody else is loading.
                    None => {
                        drop(leader);
                        return Err(lost_load());
                    }
                },
                Role::Waiter(slot) => {
                    self.core.metrics.coalesced.inc();
                    slot
                }
            };
            match flight::wait(slot).await {
                Some(outcome) => return outcome.map(downcast),
                None if loader.is_none() => return Err(lost_load()),
                None => continue,
            }
        }
    }
}

/// The error of a caller whose own load ended without an outcome.
pub(super) fn lost_load() -> Error {
    Error::Loader(Arc::new(std::io::Error::other(
        "the load ended without an answer: the loader panicked, or its runtime shut down",
    )))
}

/// Recovers a value's type: the namespace pins its value type, so this cannot fail.
#[inline]
pub(crate) fn downcast<V: Send + Sync + 'static>(value: Option<AnyValue>) -> Option<Arc<V>> {
    value.and_then(|v| v.downcast::<V>().ok())
}
