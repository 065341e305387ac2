//! The engine: the plain data every handle, pipeline and background task shares — this node's
//! id, the runtime loads run on, the L2 tier, each namespace's state, the coherence state the
//! bus keeps, and the outbox queue. Behaviour lives above it (the read and write paths, the bus
//! tasks); the few methods here change state that several of them share.

use crate::l2::{L2Tier, Stamp};
use crate::metrics::BusMetrics;
use crate::outbox::Outbox;
use crate::space::NamespaceCore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The state of the invalidation subscriber.
pub(crate) struct BusState {
    pub(crate) subscribed: AtomicBool,
    pub(crate) metrics: BusMetrics,
    pub(crate) started: Instant,
    /// Milliseconds since `started` (plus one) of the last answered PING or subscription.
    pub(crate) last_alive_ms: AtomicU64,
    /// Milliseconds since `started` (plus one) of the newest proof of freshness: the send time
    /// of this node's latest heartbeat received back in sequence, or the last resync.
    /// Everything published before it has been applied here.
    pub(crate) last_delivery_ms: AtomicU64,
    /// Milliseconds since `started` (plus one) of the send time of this node's latest
    /// heartbeat Redis ran: Redis was taking this node's writes then. Starts at creation.
    pub(crate) last_written_ms: AtomicU64,
    /// Send times of this node's recent heartbeats, oldest first (see `proven_fresh_at`).
    sent: std::sync::Mutex<std::collections::VecDeque<u64>>,
    sent_kept: usize,
    /// The last long gap between heartbeats Redis ran, and when it ended: for `grace_ms`
    /// after one, other nodes may still be landing what they queued during it.
    last_gap_ms: AtomicU64,
    /// A heartbeat failed (refused, timed out, unreachable) since the last one Redis ran: a
    /// heartbeat that is merely late (a busy runtime) is no stall.
    heartbeat_failing: AtomicBool,
    recovered_ms: AtomicU64,
    /// How long every node's outbox may take to start replaying once Redis takes writes
    /// again: the breaker's cool-down (its probe) plus two heartbeats (the replayer's wake).
    grace_ms: u64,
    /// The version of the last published write seen in sequence (or read at resync).
    pub(crate) last_version: AtomicU64,
    /// The same version with its epoch, read together: what a write queued now knew of
    /// Redis (see `Outbox::enqueue_write`).
    seen: std::sync::Mutex<Stamp>,
    /// Every version up to this one has been applied here (in sequence, or by a resync), and
    /// what the message at it was: a resync replays the invalidation log from there once the
    /// log's entry there is that message (see `bus::replay`).
    pub(crate) applied: std::sync::Mutex<Applied>,
    /// Something was missed that the invalidation log does not cover (external writes unseen,
    /// a keyspace flush, a new epoch, a counter gone back): the next resync clears L1.
    pub(crate) must_flush: AtomicBool,
    /// The version read by the last resync, and whether a message past it has arrived (from
    /// then on, a version behind the sequence means the counter went back).
    pub(crate) resync_version: AtomicU64,
    pub(crate) past_resync: AtomicBool,
    /// Set on any suspicion that something was missed; cleared only by a resync, after it has
    /// replayed what was missed or cleared L1. While set, L1 is not trusted.
    pub(crate) resync_pending: AtomicBool,
    /// False while external-write tracking is on but its connection is down.
    pub(crate) tracking_ok: AtomicBool,
    /// Why Redis refused the subscriber (a permission or authentication error), while it does:
    /// a configuration fault no retry will mend.
    pub(crate) refused: std::sync::Mutex<Option<String>>,
}

impl BusState {
    /// `heartbeat`: its interval; `cooldown`: the breaker's; `widest`: the longest staleness
    /// bound of any namespace, so every heartbeat that could still prove a bound is
    /// remembered as sent.
    pub(crate) fn new(heartbeat: Duration, cooldown: Duration, widest: Option<Duration>) -> Self {
        let spans = widest.map_or(0, |b| {
            (b.as_secs_f64() / heartbeat.as_secs_f64().max(1e-3)).ceil() as usize + 2
        });
        Self {
            subscribed: AtomicBool::new(false),
            metrics: BusMetrics::new(),
            started: Instant::now(),
            last_alive_ms: AtomicU64::new(0),
            last_delivery_ms: AtomicU64::new(0),
            last_written_ms: AtomicU64::new(1),
            sent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(
                spans.max(SENT_KEPT),
            )),
            sent_kept: spans.max(SENT_KEPT),
            last_gap_ms: AtomicU64::new(0),
            heartbeat_failing: AtomicBool::new(false),
            recovered_ms: AtomicU64::new(0),
            grace_ms: (cooldown + 2 * heartbeat).as_millis() as u64,
            last_version: AtomicU64::new(0),
            seen: std::sync::Mutex::new(Stamp::default()),
            applied: std::sync::Mutex::new(Applied::default()),
            must_flush: AtomicBool::new(true),
            resync_version: AtomicU64::new(0),
            past_resync: AtomicBool::new(false),
            resync_pending: AtomicBool::new(true),
            tracking_ok: AtomicBool::new(true),
            refused: std::sync::Mutex::new(None),
        }
    }

    /// Why Redis refuses the subscriber, if it does.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Records a proof of freshness dated `at_ms` (see [`now_ms`](Self::now_ms)).
    pub(crate) fn delivered_at(&self, at_ms: u64) {
        self.last_delivery_ms.store(at_ms, Relaxed);
    }

    /// Advances the sequence to `stamp` (a message in sequence, or a resync's read).
    pub(crate) fn advance(&self, stamp: Stamp) {
        self.last_version.store(stamp.version, SeqCst);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
    }

    /// The last version seen in sequence, with its epoch: never ahead of what Redis holds.
    pub(crate) fn seen(&self) -> Stamp {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that Redis failed to run a heartbeat.
    pub(crate) fn heartbeat_failed(&self) {
        self.heartbeat_failing.store(true, SeqCst);
    }

    /// Records that Redis ran this node's heartbeat sent at `sent_ms` (this node's clock).
    /// True when it ends a stall (heartbeats failed since the last one that ran).
    pub(crate) fn written_at(&self, sent_ms: u64) -> bool {
        let prev = self.last_written_ms.load(SeqCst);
        let stalled = self.heartbeat_failing.load(SeqCst);
        let gap = sent_ms.saturating_sub(prev);
        // The grace is set before the stall is declared over, so no read sees neither. A
        // shorter stall never cuts the grace of a longer one short.
        let now = self.now_ms();
        let in_grace = now < self.recovered_ms.load(SeqCst) + self.grace_ms;
        if stalled && (!in_grace || gap >= self.last_gap_ms.load(SeqCst)) {
            self.last_gap_ms.store(gap, SeqCst);
            self.recovered_ms.store(now, SeqCst);
        }
        self.last_written_ms.fetch_max(sent_ms, SeqCst);
        self.heartbeat_failing.store(false, SeqCst);
        stalled
    }

    /// Redis has refused or not answered this node's heartbeat (a script it runs only where
    /// it would take writes) for [`TRIP_AT`] of `bound`: other nodes' invalidations may be
    /// stuck too. For [`grace_ms`](Self::grace_ms) after such a stall ended too: what other
    /// nodes queued meanwhile may not have landed yet.
    pub(crate) fn writes_stuck(&self, bound: Duration) -> bool {
        let trip = bound.mul_f64(TRIP_AT).as_millis() as u64;
        let now = self.now_ms();
        let age = now.saturating_sub(self.last_written_ms.load(SeqCst));
        if self.heartbeat_failing.load(SeqCst) && age > trip {
            return true;
        }
        if self.last_gap_ms.load(SeqCst) <= trip {
            return false;
        }
        // The grace lasts until the resync after the stall has checked Redis's history (it
        // may have gone back: see `bus::resync`), up to ten graces if it never comes.
        let since = now.saturating_sub(self.recovered_ms.load(SeqCst));
        since < self.grace_ms || (self.resync_pending() && since < 10 * self.grace_ms)
    }

    /// Notes the send time of a heartbeat about to go out: only those prove freshness.
    pub(crate) fn sending(&self, sent_ms: u64) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if sent.len() >= self.sent_kept {
            sent.pop_front();
        }
        sent.push_back(sent_ms);
    }

    /// Records a proof of freshness dated `sent_ms` (this node's clock), if this node really
    /// sent a heartbeat at that time: a message that only claims to be its heartbeat (any
    /// client that may publish can forge the origin) must not extend its freshness, least of
    /// all with a send time in the future.
    pub(crate) fn proven_fresh_at(&self, sent_ms: u64) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = sent.iter().position(|&s| s == sent_ms) else {
            return;
        };
        // Each is proof once; those before it were lost or are late, and prove less.
        sent.drain(..=at);
        drop(sent);
        self.last_delivery_ms.fetch_max(sent_ms, Relaxed);
    }

    pub(crate) fn resync_pending(&self) -> bool {
        self.resync_pending.load(SeqCst)
    }

    fn age(&self, at_ms: u64) -> Option<Duration> {
        (at_ms > 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(at_ms)))
    }

    pub(crate) fn last_alive_age(&self) -> Option<Duration> {
        self.age(self.last_alive_ms.load(Relaxed))
    }

    /// Time since the bus last proved it reaches this node; `None` if it never has.
    pub(crate) fn delivery_age(&self) -> Option<Duration> {
        self.age(self.last_delivery_ms.load(Relaxed))
    }
}

/// The end of the run of versions applied here with no hole (see `BusState::applied`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) version: u64,
    /// A digest of the message at `version` (see `digest_of`); `None` when unknown (after a
    /// clear the log could not anchor).
    pub(crate) digest: Option<u64>,
}

impl Applied {
    /// The digest of a message, or of its log entry: of its header (`wire::HEADER`: kind,
    /// origin, version, epoch, send time), which the log keeps even of a message too large to
    /// keep whole. Two histories' messages at one version differ in it unless one node wrote
    /// both in the same millisecond.
    pub(crate) fn digest_of(message: &[u8]) -> Option<u64> {
        use std::hash::{DefaultHasher, Hasher};
        let head = &message[..message.len().min(crate::wire::HEADER)];
        if head.is_empty() {
            return None;
        }
        let mut h = DefaultHasher::new();
        h.write(head);
        Some(h.finish())
    }
}

impl BusState {
    pub(crate) fn applied(&self) -> Applied {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_applied(&self, applied: Applied) {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = applied;
    }
}

/// Heartbeats remembered as sent, at least: more when the staleness bound spans more
/// heartbeats (see `BusState::new`).
const SENT_KEPT: usize = 64;

/// The fraction of a staleness bound after which the watchdog stops trusting L1, and reads
/// stop trusting a Redis that has not taken this node's heartbeat.
pub(crate) const TRIP_AT: f64 = 0.7;

/// Everything the handles, the pipelines and the background tasks share.
pub(crate) struct Engine {
    pub(crate) node_id: u64,
    /// Where loads run (see `flight.rs`): the runtime `build()` was called in.
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) l2: L2Tier,
    pub(crate) bus: BusState,
    /// Raised when another path sees a new epoch; the subscriber resynchronises.
    pub(crate) resync_wanted: tokio::sync::Notify,
    /// Writes and invalidations made while Redis was unreachable, to replay.
    pub(crate) outbox: Outbox,
    /// The builder's `strict_writes`: fail instead of queuing.
    pub(crate) strict_writes: bool,
    pub(crate) namespaces: Vec<Arc<NamespaceCore>>,
    pub(crate) by_name: HashMap<String, Arc<NamespaceCore>>,
}

impl Engine {
    pub(crate) fn namespace(&self, name: &str) -> Option<&Arc<NamespaceCore>> {
        self.by_name.get(name)
    }

    pub(crate) fn namespaces(&self) -> &[Arc<NamespaceCore>] {
        &self.namespaces
    }

    /// Something was missed that the invalidation log cannot replay: stop trusting L1 now, and
    /// have the next resync clear it.
    pub(crate) fn suspect_unlogged(&self) {
        self.bus.must_flush.store(true, SeqCst);
        self.suspect();
    }

    /// Something may have been missed: stop trusting L1 now, until a resync has replayed what
    /// was missed or cleared it.
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

    /// What a write queued now knows of Redis: the latest version seen, in sequence on the
    /// bus or in any reply (every version up to it was drawn before now).
    pub(crate) fn known(&self) -> crate::l2::Known {
        let (bus, replies) = (self.bus.seen(), self.l2.epochs().latest());
        let seen = match (bus.epoch == replies.epoch, self.l2.epochs().current()) {
            (true, _) => Stamp {
                version: bus.version.max(replies.version),
                epoch: bus.epoch,
            },
            (false, current) if replies.epoch == current => replies,
            _ => bus,
        };
        crate::l2::Known {
            seen,
            own_clear: Stamp::default(),
        }
    }

    /// For the subscriber: records the epoch a message carries. When it differs from the one
    /// this node's state belongs to, clears every L1 at once and returns true; the subscriber
    /// then resynchronises.
    pub(crate) fn epoch_changed(&self, epoch: u64) -> bool {
        let replaced = self.l2.epochs().replace(epoch);
        if let Some(prev) = replaced {
            self.forget_old_epoch(prev, epoch);
        }
        replaced.is_some()
    }

    /// The hook the L2 tier calls when any other reply shows the version counter started
    /// over: versions and floors from before mean nothing now. Clears every L1 and wakes the
    /// subscriber to resynchronise.
    pub(crate) fn counter_started_over(&self, prev: u64, epoch: u64) {
        self.forget_old_epoch(prev, epoch);
        self.suspect();
        self.resync_wanted.notify_one();
    }

    fn forget_old_epoch(&self, prev: u64, epoch: u64) {
        tracing::warn!(target: "tiered_cache::cache", prev, epoch,
            "redis version counter started over; clearing L1 and resynchronising");
        self.bus.must_flush.store(true, SeqCst);
        self.clear_all_l1();
    }
}

#[cfg(test)]
mod tests {
    use super::BusState;
    use std::time::Duration;

    /// Any client that may publish on the channel can claim to be this node: only the send
    /// times of heartbeats it really sent prove freshness, each once, and never a future one.
    #[test]
    fn only_heartbeats_this_node_sent_prove_freshness() {
        let bus = BusState::new(Duration::from_millis(100), Duration::from_millis(500), None);
        bus.sending(10);
        bus.sending(20);
        bus.proven_fresh_at(u64::MAX / 2);
        assert_eq!(
            bus.last_delivery_ms.load(super::SeqCst),
            0,
            "a forged send time"
        );
        bus.proven_fresh_at(15);
        assert_eq!(bus.last_delivery_ms.load(super::SeqCst), 0, "never sent");
        bus.proven_fresh_at(20);
        assert_eq!(bus.last_delivery_ms.load(super::SeqCst), 20);
        // The older one, late, proves nothing more; and 20 proves only once.
        bus.proven_fresh_at(10);
        bus.last_delivery_ms.store(0, super::SeqCst);
        bus.proven_fresh_at(20);
        assert_eq!(bus.last_delivery_ms.load(super::SeqCst), 0);
    }
}
