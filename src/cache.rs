//! The cache handle, its health and stats, and `build()`, which assembles the engine and
//! starts the background tasks.

use crate::breaker::{Breaker, BreakerState};
use crate::bus::{self, BusConfig, BusRuntime};
use crate::config::TieredCacheBuilder;
use crate::engine::{BusState, Engine};
use crate::error::{Error, Result};
use crate::l2::connect::ConnectionCensus;
use crate::l2::{L2Settings, L2Tier};
use crate::metrics::NamespaceStats;
use crate::outbox::Outbox;
use crate::space::NamespaceCore;
use std::sync::atomic::{Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

struct Inner {
    shared: Arc<Engine>,
    /// The replayer (on the application's runtime), and the subscriber, the heartbeat and the
    /// rest of the bus (on `bus`). (The watchdog thread exits on its own once `shared` is
    /// gone.)
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The bus's thread: stopped after the tasks are aborted.
    _bus: BusRuntime,
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
/// The background subscriber stops when the last clone (and the last [`Namespace`](crate::Namespace) handle) is
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
    /// Where Redis is (its URL, any password shown as `***`).
    pub redis: String,
    /// Redis answered a PING within the L2 timeout just now.
    pub redis_reachable: bool,
    /// The connections reads and writes are spread over, by how their last call went
    /// (`redis_connections`; the bus's own connections are `subscribed`).
    pub connections: ConnectionCensus,
    /// The invalidation subscriber is connected and listening.
    pub subscribed: bool,
    /// Why Redis refuses the subscriber (the user lacks the channel permission, or a wrong
    /// password), while it does. See [`TieredCache::ready`].
    pub subscriber_refused: Option<String>,
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
    /// Unreadable messages received (skipped: a write they hid shows as a gap).
    pub bus_malformed: u64,
    /// Holes found in the message sequence (each caused a resync).
    pub bus_gaps: u64,
    /// The circuit breaker in front of Redis, now (read without a call).
    pub breaker: BreakerState,
    /// Breaker transitions (to any state) since the cache was built.
    pub breaker_transitions: u64,
    /// Writes and invalidations queued (or being replayed) while Redis was unreachable.
    pub outbox_entries: usize,
    /// Resynchronisations (floors reloaded; what was missed replayed from the invalidation
    /// log, or L1 cleared): after every subscription, hole in the sequence or new epoch of
    /// Redis's version counter.
    pub bus_resyncs: u64,
    /// Resyncs that replayed what was missed from the invalidation log and kept L1.
    pub bus_replays: u64,
    /// Messages applied from the invalidation log by those replays.
    pub bus_replayed: u64,
    /// Resyncs that cleared every L1 (the log could not cover what was missed, or nothing
    /// could be trusted: a new epoch, a history gone back, external writes unseen).
    pub bus_flushes: u64,
    /// Invalidation messages known lost: the sum of the holes in the version sequence. Each
    /// hole caused a resync once found (by the next message or heartbeat): stale reads were
    /// possible only until then, within the staleness bound where one is set.
    pub bus_invalidations_lost: u64,
    /// Messages dropped because the subscriber's buffer was full
    /// ([`subscriber_buffer`](crate::TieredCacheBuilder::subscriber_buffer)): each time, L1 was
    /// distrusted and a resync replayed or cleared what they named.
    pub bus_overflowed: u64,
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

    pub(crate) fn shared(&self) -> &Arc<Engine> {
        &self.inner.shared
    }

    /// This instance's id on the bus (random per instance).
    pub fn node_id(&self) -> u64 {
        self.shared().node_id
    }

    /// True while the invalidation subscriber is listening.
    pub fn is_subscribed(&self) -> bool {
        self.shared().bus.subscribed.load(Relaxed)
    }

    /// Waits until the invalidation subscriber listens (at most `within`): call it after
    /// [`build`](TieredCacheBuilder::build), which does not wait for Redis, to fail at start
    /// on a configuration Redis refuses. `Err(Config)` at once when Redis refuses the
    /// subscriber (the ACL user lacks the channel permission or SUBSCRIBE, or the password is
    /// wrong); `Err(Unavailable)` when Redis did not answer within `within` (the cache still
    /// works, degraded, and joins the fleet when Redis is back).
    pub async fn ready(&self, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.is_subscribed() {
                return Ok(());
            }
            if let Some(why) = self.shared().bus.refusal() {
                return Err(Error::Config(format!(
                    "Redis at {} refuses the invalidation subscriber: {why}",
                    self.shared().l2.describe()
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable("ready", None));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Checks Redis now (one PING, bounded by the L2 timeout, through the breaker: while it is
    /// open, Redis is reported unreachable without being asked) and reports the subscriber.
    pub async fn health(&self) -> Health {
        let shared = self.shared();
        let redis_reachable = shared.l2.ping().await;
        Health {
            redis: shared.l2.describe().to_owned(),
            redis_reachable,
            connections: shared.l2.connections(),
            breaker: shared.l2.breaker().state(),
            outbox_entries: shared.outbox.len(),
            subscribed: self.is_subscribed(),
            subscriber_refused: shared.bus.refusal(),
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
            bus_replays: shared.bus.metrics.replays.get(),
            bus_replayed: shared.bus.metrics.replayed.get(),
            bus_flushes: shared.bus.metrics.flushes.get(),
            bus_invalidations_lost: shared.bus.metrics.lost.get(),
            bus_overflowed: shared.bus.metrics.overflowed.get(),
        }
    }
}

impl TieredCacheBuilder {
    /// Checks the configuration and starts the cache. Must be called inside a Tokio runtime:
    /// loads and the outbox's replays run there (the bus runs on a thread of its own).
    ///
    /// Does not wait for Redis: a cache built while Redis is down serves from L1 and loaders,
    /// and joins the fleet when Redis comes back.
    pub fn build(self) -> Result<TieredCache> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("build() must be called inside a Tokio runtime".into()))?;
        let endpoint = self.endpoint()?;
        let replay_wanted = Arc::new(tokio::sync::Notify::new());
        let breaker = Breaker::new(
            self.breaker_threshold,
            self.breaker_cooldown,
            replay_wanted.clone(),
        );
        let settings = L2Settings {
            endpoint: &endpoint,
            prefix: &self.prefix,
            reconnect_delay: self.breaker_cooldown,
            replay_log: self.replay_log,
        };
        let l2 = L2Tier::open(settings, breaker)?;

        let namespaces: Vec<Arc<NamespaceCore>> = self
            .namespaces
            .into_iter()
            .map(|(name, policy)| Arc::new(NamespaceCore::new(name, policy)))
            .collect();
        let by_name = namespaces
            .iter()
            .map(|ns| (ns.name.clone(), ns.clone()))
            .collect();
        let widest = namespaces
            .iter()
            .filter_map(|ns| ns.policy.staleness_bound)
            .max();
        let shared = Arc::new(Engine {
            node_id: rand::random(),
            runtime: runtime.clone(),
            l2,
            bus: BusState::new(self.heartbeat, self.breaker_cooldown, widest),
            resync_wanted: tokio::sync::Notify::new(),
            outbox: Outbox::new(self.outbox_capacity, self.outbox_max_bytes, replay_wanted),
            strict_writes: self.strict_writes,
            namespaces,
            by_name,
        });
        // The L2 tier reports a counter that started over from any reply; the engine acts.
        let weak = Arc::downgrade(&shared);
        shared.l2.epochs().on_change(move |prev, epoch| {
            if let Some(engine) = weak.upgrade() {
                engine.counter_started_over(prev, epoch);
            }
        });
        let bus_config = BusConfig {
            command_timeout: endpoint.command_timeout,
            heartbeat: self.heartbeat,
            max_backoff: self.subscriber_backoff.max(Duration::from_millis(100)),
            buffer: self.subscriber_buffer,
        };
        let bus = BusRuntime::start()?;
        let mut tasks = vec![
            bus.spawn(bus::run_heartbeat(shared.clone(), self.heartbeat)),
            runtime.spawn(crate::write::run_replayer(
                shared.clone(),
                self.outbox_retry,
            )),
        ];
        if self.track_external_writes {
            shared.bus.tracking_ok.store(false, SeqCst);
            tasks.push(bus.spawn(bus::run_tracker(shared.clone(), bus_config.clone())));
        }
        tasks.push(bus.spawn(bus::run_subscriber(shared.clone(), bus_config)));
        let engine = shared.clone();
        tasks.push(bus.spawn(async move { engine.l2.watch_primary().await }));
        bus::spawn_watchdog(&shared);
        Ok(TieredCache {
            inner: Arc::new(Inner {
                shared,
                tasks,
                _bus: bus,
            }),
        })
    }
}
