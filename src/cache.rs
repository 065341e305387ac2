//! The cache handle, what it shares with its background task, and `build()`.

use crate::breaker::{Breaker, BreakerState};
use crate::bus::{self, BusConfig};
use crate::config::TieredCacheBuilder;
use crate::error::{Error, Result};
use crate::key::{CacheKey, KeySpace};
use crate::l2::{L2Error, L2Tier};
use crate::metrics::{BusMetrics, NamespaceStats};
use crate::namespace::{Namespace, NamespaceCore};
use crate::outbox::{self, Outbox};
use crate::tracking;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The state of the invalidation subscriber.
pub(crate) struct BusState {
    pub(crate) subscribed: AtomicBool,
    pub(crate) metrics: BusMetrics,
    started: Instant,
    /// Milliseconds since `started` (plus one) of the last answered PING or subscription.
    last_alive_ms: AtomicU64,
    /// Milliseconds since `started` (plus one) of the newest proof of freshness: the send time
    /// of this node's latest heartbeat received back in sequence, or the last resync.
    /// Everything published before it has been applied here.
    last_delivery_ms: AtomicU64,
    /// The version of the last published write seen in sequence (or read at resync).
    last_version: AtomicU64,
    /// The version read by the last resync, and whether a message past it has arrived (from
    /// then on, a version behind the sequence means the counter went back).
    resync_version: AtomicU64,
    past_resync: AtomicBool,
    /// Set on any suspicion that something was missed; cleared only by a resync, after it has
    /// cleared L1. While set, L1 is not trusted.
    resync_pending: AtomicBool,
    /// False while external-write tracking is on but its connection is down.
    pub(crate) tracking_ok: AtomicBool,
}

impl BusState {
    fn new() -> Self {
        Self {
            subscribed: AtomicBool::new(false),
            metrics: BusMetrics::new(),
            started: Instant::now(),
            last_alive_ms: AtomicU64::new(0),
            last_delivery_ms: AtomicU64::new(0),
            last_version: AtomicU64::new(0),
            resync_version: AtomicU64::new(0),
            past_resync: AtomicBool::new(false),
            resync_pending: AtomicBool::new(true),
            tracking_ok: AtomicBool::new(true),
        }
    }

    /// True when every invalidation source this node relies on is connected.
    pub(crate) fn sources_up(&self) -> bool {
        self.subscribed.load(Relaxed) && self.tracking_ok.load(SeqCst)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        // Offset by one so 0 can mean "never".
        self.started.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn touch(&self) {
        self.last_alive_ms.store(self.now_ms(), Relaxed);
    }

    pub(crate) fn delivered(&self) {
        self.last_delivery_ms.store(self.now_ms(), Relaxed);
    }

    /// Records a proof of freshness dated `sent_ms` (this node's clock).
    pub(crate) fn proven_fresh_at(&self, sent_ms: u64) {
        self.last_delivery_ms.fetch_max(sent_ms, Relaxed);
    }

    pub(crate) fn resync_pending(&self) -> bool {
        self.resync_pending.load(SeqCst)
    }

    fn age(&self, at_ms: u64) -> Option<Duration> {
        (at_ms > 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(at_ms)))
    }

    fn last_alive_age(&self) -> Option<Duration> {
        self.age(self.last_alive_ms.load(Relaxed))
    }

    /// Time since the bus last proved it reaches this node; `None` if it never has.
    pub(crate) fn delivery_age(&self) -> Option<Duration> {
        self.age(self.last_delivery_ms.load(Relaxed))
    }

    /// Checks a message against the sequence and advances it. Only the subscriber task calls
    /// this.
    pub(crate) fn sequence(&self, msg: &crate::bus::Incoming<'_>) -> crate::bus::Order {
        use crate::bus::Order;
        let last = self.last_version.load(SeqCst);
        if msg.version > self.resync_version.load(SeqCst) {
            self.past_resync.store(true, SeqCst);
        }
        let behind = msg.version < last && self.past_resync.load(SeqCst);
        if matches!(msg.scope, crate::bus::Scope::Heartbeat { .. }) {
            return match msg.version {
                _ if behind => Order::Rewound,
                v if v > last => Order::Gap(v - last),
                _ => Order::InSequence,
            };
        }
        if msg.version <= last {
            // Published before the last resync read the counter (already accounted for), or,
            // once past that backlog, a counter that went back.
            return if behind {
                Order::Rewound
            } else {
                Order::InSequence
            };
        }
        self.last_version.store(msg.version, SeqCst);
        if msg.version > last + 1 {
            Order::Gap(msg.version - last - 1)
        } else {
            Order::InSequence
        }
    }
}

/// Everything the handles and the subscriber task share.
pub(crate) struct Shared {
    pub(crate) node_id: u64,
    /// Where loads run (see `flight.rs`): the runtime `build()` was called in.
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) l2: L2Tier,
    pub(crate) bus: BusState,
    /// The epoch of Redis's version counter this node's state belongs to (0: not known yet).
    epoch: AtomicU64,
    /// Raised when another path sees a new epoch; the subscriber resynchronises.
    pub(crate) resync_wanted: tokio::sync::Notify,
    /// Writes and invalidations made while Redis was unreachable, to replay.
    pub(crate) outbox: Outbox,
    /// The builder's `strict_writes`: fail instead of queuing.
    pub(crate) strict_writes: bool,
    namespaces: Vec<Arc<NamespaceCore>>,
    by_name: HashMap<String, Arc<NamespaceCore>>,
}

impl Shared {
    pub(crate) fn namespace(&self, name: &str) -> Option<&Arc<NamespaceCore>> {
        self.by_name.get(name)
    }

    pub(crate) fn namespaces(&self) -> &[Arc<NamespaceCore>] {
        &self.namespaces
    }

    /// Something may have been missed: stop trusting L1 now, until a resync has cleared it.
    pub(crate) fn suspect(&self) {
        self.bus.resync_pending.store(true, SeqCst);
        self.distrust_bounded();
    }

    /// Stops trusting L1 in every namespace with a staleness bound, now: an invalidation source
    /// is known lost.
    pub(crate) fn distrust_bounded(&self) {
        for ns in &self.namespaces {
            if ns.policy.staleness_bound.is_some() {
                ns.set_bypass(true, self.bus.delivery_age());
            }
        }
    }

    pub(crate) fn clear_all_l1(&self) {
        for ns in &self.namespaces {
            ns.clear_l1();
        }
    }

    /// Records an epoch reported by Redis. When it differs from the one this node's state
    /// belongs to, the version counter started over (Redis flushed, restarted, or lost the meta
    /// hash): versions and floors from before mean nothing now. Clears every L1 at once and
    /// returns true; the caller (or the subscriber, woken here) then resynchronises.
    pub(crate) fn epoch_changed(&self, epoch: u64) -> bool {
        if epoch == 0 {
            return false;
        }
        let prev = self.epoch.swap(epoch, SeqCst);
        self.bus.metrics.epoch.set(epoch as f64);
        if prev == 0 || prev == epoch {
            return false;
        }
        tracing::warn!(target: "tiered_cache::cache", prev, epoch,
            "redis version counter started over; clearing L1 and resynchronising");
        self.clear_all_l1();
        true
    }

    /// Like [`epoch_changed`](Self::epoch_changed), for paths other than the subscriber: wakes
    /// it to resynchronise.
    pub(crate) fn observe_epoch(&self, epoch: u64) {
        if self.epoch_changed(epoch) {
            self.suspect();
            self.resync_wanted.notify_one();
        }
    }

    /// After (re)subscribing: learn the namespace floors set while away, and forget every L1
    /// entry, since invalidations sent while away were lost.
    pub(crate) async fn resync(&self) -> std::result::Result<(), L2Error> {
        use tracing::Instrument;
        let span = tracing::info_span!("resync", outcome = tracing::field::Empty);
        let result = self.resync_inner().instrument(span.clone()).await;
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        result
    }

    async fn resync_inner(&self) -> std::result::Result<(), L2Error> {
        let names: Vec<&str> = self.namespaces.iter().map(|n| n.name.as_str()).collect();
        let before: Vec<u64> = self.namespaces.iter().map(|n| n.floor()).collect();
        let (stamp, floors) = self.l2.floors(&names).await?;
        // Counted once it happens: an attempt Redis did not answer cleared nothing.
        self.bus.metrics.resyncs.inc();
        if stamp.epoch != 0 {
            self.epoch.store(stamp.epoch, SeqCst);
            // Epochs are below 2^52 (see `l2::new_epoch`): exact as a float.
            self.bus.metrics.epoch.set(stamp.epoch as f64);
        }
        // Everything published up to here is either already delivered or on its way, behind
        // the subscription just confirmed: the sequence continues from this version.
        self.bus.last_version.store(stamp.version, SeqCst);
        self.bus.resync_version.store(stamp.version, SeqCst);
        self.bus.past_resync.store(false, SeqCst);
        for ((ns, floor), before) in self.namespaces.iter().zip(floors).zip(before) {
            ns.reset_floor(before, floor);
        }
        self.clear_all_l1();
        self.bus.touch();
        self.bus.delivered();
        self.bus.resync_pending.store(false, SeqCst);
        // L1 is empty and in sequence with the bus: it can be trusted from this instant, not
        // from the watchdog's next tick (unless external-write tracking is still down).
        if self.bus.tracking_ok.load(SeqCst) {
            for ns in &self.namespaces {
                ns.set_bypass(false, Some(Duration::ZERO));
            }
        }
        Ok(())
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// The subscriber and the heartbeat. (The watchdog thread exits on its own once `shared`
    /// is gone.)
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A two-tier cache: L1 in this process (moka), L2 in Redis, kept coherent across every
/// process sharing the Redis by an invalidation bus.
///
/// Cheap to clone (an `Arc` inside): clone it into tasks rather than wrapping it in a lock.
/// The background subscriber stops when the last clone (and the last [`Namespace`] handle) is
/// dropped.
#[derive(Clone)]
pub struct TieredCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("node_id", &self.node_id())
            .field("prefix", &self.shared().l2.keys().prefix())
            .finish_non_exhaustive()
    }
}

/// A point-in-time view of the cache's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Redis answered a PING within the L2 timeout just now.
    pub redis_reachable: bool,
    /// The invalidation subscriber is connected and listening.
    pub subscribed: bool,
    /// Time since the subscriber last heard from Redis (subscription or heartbeat).
    pub last_heartbeat_age: Option<Duration>,
    /// Age of the newest proof that everything published has been applied here: the send
    /// time of this node's latest heartbeat received back in sequence (or the last resync).
    pub last_delivery_age: Option<Duration>,
    /// Namespaces whose L1 is bypassed right now: the bus cannot vouch for their staleness
    /// bound.
    pub bypassing: Vec<String>,
    /// The circuit breaker in front of Redis, after this call's PING.
    pub breaker: BreakerState,
    /// Writes and invalidations queued (or being replayed) while Redis was unreachable.
    pub outbox_entries: usize,
}

/// Counts per namespace, since the cache was built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Per namespace, in configuration order.
    pub namespaces: Vec<(String, NamespaceStats)>,
    /// Times the subscriber (re)subscribed.
    pub bus_subscriptions: u64,
    /// Own messages received and skipped.
    pub bus_own_skipped: u64,
    /// Unreadable messages received (each caused a resync).
    pub bus_malformed: u64,
    /// Holes found in the message sequence (each caused a resync).
    pub bus_gaps: u64,
    /// The circuit breaker in front of Redis, now (read without a call).
    pub breaker: BreakerState,
    /// Breaker transitions (to any state) since the cache was built.
    pub breaker_transitions: u64,
    /// Writes and invalidations queued (or being replayed) while Redis was unreachable.
    pub outbox_entries: usize,
    /// Resynchronisations (L1 cleared, floors reloaded): after every subscription, hole in the
    /// sequence, unreadable message or new epoch of Redis's version counter.
    pub bus_resyncs: u64,
    /// Invalidation messages known lost: the sum of the holes in the version sequence. Each
    /// hole caused a resync once found (by the next message or heartbeat): stale reads were
    /// possible only until then, within the staleness bound where one is set.
    pub bus_invalidations_lost: u64,
}

impl Stats {
    /// The counts of one namespace.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceStats> {
        self.namespaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }
}

impl TieredCache {
    /// Starts configuring a cache.
    pub fn builder() -> TieredCacheBuilder {
        TieredCacheBuilder::default()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// A typed handle on a configured namespace. The first call pins the namespace's key and
    /// value types; a later call with other types is an error rather than a silent mis-decode.
    pub fn namespace<K, V>(&self, name: &str) -> Result<Namespace<K, V>>
    where
        K: CacheKey + ?Sized + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let core = self
            .shared()
            .namespace(name)
            .ok_or_else(|| Error::Namespace(format!("namespace {name:?} is not configured")))?;
        Namespace::open(core.clone(), self.clone())
    }

    /// This instance's id on the bus (random per instance).
    pub fn node_id(&self) -> u64 {
        self.shared().node_id
    }

    /// True while the invalidation subscriber is listening.
    pub fn is_subscribed(&self) -> bool {
        self.shared().bus.subscribed.load(Relaxed)
    }

    /// Checks Redis now (one PING, bounded by the L2 timeout, through the breaker: while it is
    /// open, Redis is reported unreachable without being asked) and reports the subscriber.
    pub async fn health(&self) -> Health {
        let shared = self.shared();
        let redis_reachable = shared.l2.ping().await;
        Health {
            redis_reachable,
            breaker: shared.l2.breaker().state(),
            outbox_entries: shared.outbox.len(),
            subscribed: self.is_subscribed(),
            last_heartbeat_age: shared.bus.last_alive_age(),
            last_delivery_age: shared.bus.delivery_age(),
            bypassing: shared
                .namespaces
                .iter()
                .filter(|ns| ns.bypass.load(Relaxed))
                .map(|ns| ns.name.clone())
                .collect(),
        }
    }

    /// Counts per namespace since the cache was built.
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        Stats {
            namespaces: shared
                .namespaces
                .iter()
                .map(|ns| {
                    let mut s = ns.metrics.snapshot();
                    (s.l1_entries, s.l1_weight) = ns.refresh_gauges();
                    s.l1_bypassed = ns.bypass.load(Relaxed);
                    (ns.name.clone(), s)
                })
                .collect(),
            bus_subscriptions: shared.bus.metrics.subscribed.get(),
            bus_own_skipped: shared.bus.metrics.own_skipped.get(),
            bus_malformed: shared.bus.metrics.malformed.get(),
            bus_gaps: shared.bus.metrics.gaps.get(),
            breaker: shared.l2.breaker().state(),
            breaker_transitions: shared.l2.breaker().transitions(),
            outbox_entries: shared.outbox.len(),
            bus_resyncs: shared.bus.metrics.resyncs.get(),
            bus_invalidations_lost: shared.bus.metrics.lost.get(),
        }
    }
}

/// The same server, spoken to in RESP3 (tracking pushes need it on the same connection).
fn tracking_client(client: &redis::Client) -> Result<redis::Client> {
    let info = client.get_connection_info().clone();
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(redis))
        .map_err(|e| Error::Config(format!("tracking connection settings rejected: {e}")))
}

impl TieredCacheBuilder {
    /// Checks the configuration and starts the cache. Must be called inside a Tokio runtime: it
    /// spawns the invalidation subscriber.
    ///
    /// Does not wait for Redis: a cache built while Redis is down serves from L1 and loaders,
    /// and joins the fleet when Redis comes back.
    pub fn build(self) -> Result<TieredCache> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("build() must be called inside a Tokio runtime".into()))?;
        let url = self.effective_url();
        let client = redis::Client::open(url.as_str())
            .map_err(|e| Error::Config(format!("redis URL {url:?} is not valid: {e}")))?;
        let db = client.get_connection_info().redis_settings().db();
        let keys = KeySpace::new(&self.prefix, db);
        let replay_wanted = Arc::new(tokio::sync::Notify::new());
        let breaker = Breaker::new(
            self.breaker_threshold,
            self.reconnect_backoff,
            replay_wanted.clone(),
        );
        let l2 = L2Tier::new(
            &client,
            keys,
            self.l2_timeout,
            self.connect_timeout,
            self.reconnect_backoff,
            breaker,
        )
        .map_err(|e| Error::Config(format!("redis connection settings rejected: {e}")))?;

        let namespaces: Vec<Arc<NamespaceCore>> = self
            .namespaces
            .into_iter()
            .map(|(name, policy)| Arc::new(NamespaceCore::new(name, policy)))
            .collect();
        let by_name = namespaces
            .iter()
            .map(|ns| (ns.name.clone(), ns.clone()))
            .collect();
        let shared = Arc::new(Shared {
            node_id: rand::random(),
            runtime: runtime.clone(),
            l2,
            bus: BusState::new(),
            epoch: AtomicU64::new(0),
            resync_wanted: tokio::sync::Notify::new(),
            outbox: Outbox::new(self.outbox_capacity, self.outbox_max_bytes, replay_wanted),
            strict_writes: self.strict_writes,
            namespaces,
            by_name,
        });
        let bus_config = BusConfig {
            connect_timeout: self.connect_timeout,
            command_timeout: self.l2_timeout,
            heartbeat: self.heartbeat,
            max_backoff: self.reconnect_backoff.max(Duration::from_millis(100)),
        };
        let mut tasks = vec![
            runtime.spawn(bus::run_heartbeat(shared.clone(), self.heartbeat)),
            runtime.spawn(outbox::run_replayer(shared.clone(), self.reconnect_backoff)),
        ];
        if self.track_external_writes {
            shared.bus.tracking_ok.store(false, SeqCst);
            let resp3 = tracking_client(&client)?;
            tasks.push(runtime.spawn(tracking::run_tracker(
                resp3,
                shared.clone(),
                bus_config.clone(),
            )));
        }
        tasks.push(runtime.spawn(bus::run_subscriber(client, shared.clone(), bus_config)));
        bus::spawn_watchdog(&shared);
        Ok(TieredCache {
            inner: Arc::new(Inner { shared, tasks }),
        })
    }
}
