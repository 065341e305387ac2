//! The invalidation bus: the message format, and the one subscriber task per cache instance.
//!
//! Messages are published by the L2 write scripts (see `l2.rs`), so a write and its broadcast
//! are one atomic step. Layout, all integers big-endian:
//!
//! ```text
//! 0      0xC1     magic          1      1        format
//! 2      kind     0 keys, 1 whole namespace, 2 heartbeat (then 8 bytes: the sender's clock)
//! 3-10   origin   node id of the writer (a node skips its own messages: its L1 is already right)
//! 11-18  version  the write's version, spliced in by the script
//! 19-26  epoch    the incarnation of Redis's version counter (see `l2.rs`)
//! 27-34  sent     the publisher's wall clock when it built the message, unix ms
//! 35-36  ns len   then the namespace's bytes
//! ...    count    u32, then per key: u32 length and the key's bytes
//! ```
//!
//! `sent` feeds the invalidation lag metric only (receiver's wall clock minus `sent`): it is
//! as good as the clock sync between nodes, and never decides what is applied. A message the
//! outbox replays is built at replay time and carries that time.
//!
//! Format 1 (before the send time) is still read, without a lag sample. A format 1 node reads
//! format 2 as unreadable and resynchronises on every message, heartbeats included: safe, but
//! its L1 is as good as off until it is upgraded, so upgrade a fleet's nodes together.
//!
//! Kind 3 (keys of several namespaces, one tag invalidation: see `l2/multi.rs`) has an empty
//! namespace, then a u16 count of sections, each a u16-length namespace and a key list as above.
//! Its script appends the sections after the tail it is handed, so the send time (built here,
//! into the tail) sits at the same offset as in every other kind.
//! A node older than kind 3 reads it as unreadable and resynchronises: safe, if costly.
//!
//! The subscriber owns a dedicated RESP2 pub/sub connection. After every (re)subscription is
//! confirmed, it reloads the namespace floors and clears every L1: whatever was published while
//! it was not listening is lost (pub/sub is at-most-once), so nothing cached before may be
//! trusted. It pings the connection every heartbeat, so a half-open link is replaced, not
//! waited on. A message it cannot parse, or one from a new epoch of the version counter (Redis
//! flushed or restarted), makes it resynchronise the same way without reconnecting: the
//! subscription is still confirmed, so nothing published from then on is missed.

use crate::cache::Shared;
use crate::codec::unix_ms;
use futures_util::StreamExt;
use std::sync::atomic::Ordering::Relaxed;

use std::sync::Arc;
use std::time::Duration;

const MAGIC: u8 = 0xC1;
const FORMAT: u8 = 2;
/// The format before the send time: still read (without a lag sample), so nodes of this
/// version tolerate older ones during a rolling upgrade.
const FORMAT_1: u8 = 1;
const KIND_KEYS: u8 = 0;
const KIND_NAMESPACE: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_MULTI: u8 = 3;

/// The fraction of a staleness bound after which the watchdog stops trusting L1.
pub(crate) const TRIP_AT: f64 = 0.7;
const VERSION_AT: usize = 11;

/// A message to publish, split around the version and epoch the script will splice in.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Outgoing {
    /// Invalidates the given keys of a namespace.
    pub(crate) fn keys(origin: u64, namespace: &str, keys: &[&str]) -> Self {
        let mut tail = Self::tail_start(namespace);
        tail.extend_from_slice(&(keys.len() as u32).to_be_bytes());
        for k in keys {
            tail.extend_from_slice(&(k.len() as u32).to_be_bytes());
            tail.extend_from_slice(k.as_bytes());
        }
        Self {
            head: Self::head_bytes(KIND_KEYS, origin),
            tail,
        }
    }

    /// Invalidates a whole namespace.
    pub(crate) fn namespace(origin: u64, namespace: &str) -> Self {
        Self {
            head: Self::head_bytes(KIND_NAMESPACE, origin),
            tail: Self::tail_start(namespace),
        }
    }

    /// A node's heartbeat: carries the current version, so a receiver behind it knows it has
    /// missed a message even when no write follows; and the sender's own clock reading when it
    /// sent it, so the sender, receiving it back in sequence, knows how fresh its L1 is.
    pub(crate) fn heartbeat(origin: u64, sent_ms: u64) -> Self {
        let mut tail = Self::tail_start("");
        tail.extend_from_slice(&sent_ms.to_be_bytes());
        Self {
            head: Self::head_bytes(KIND_HEARTBEAT, origin),
            tail,
        }
    }

    /// Keys of several namespaces, listed by the script that publishes it (a tag
    /// invalidation): after this tail it appends a u16 count of sections, and per namespace
    /// that has keys, its [`section_head`](Self::section_head) and its key list.
    pub(crate) fn multi(origin: u64) -> Self {
        Self {
            head: Self::head_bytes(KIND_MULTI, origin),
            tail: Self::tail_start(""),
        }
    }

    /// What precedes a namespace's key list in a [`multi`](Self::multi) message.
    pub(crate) fn section_head(namespace: &str) -> Vec<u8> {
        let mut t = Vec::with_capacity(2 + namespace.len());
        t.extend_from_slice(&(namespace.len() as u16).to_be_bytes());
        t.extend_from_slice(namespace.as_bytes());
        t
    }

    fn head_bytes(kind: u8, origin: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(VERSION_AT);
        h.extend_from_slice(&[MAGIC, FORMAT, kind]);
        h.extend_from_slice(&origin.to_be_bytes());
        h
    }

    /// The send time, then the namespace.
    fn tail_start(namespace: &str) -> Vec<u8> {
        let mut t = Vec::with_capacity(8 + 2 + namespace.len() + 4);
        t.extend_from_slice(&unix_ms().to_be_bytes());
        t.extend_from_slice(&Self::section_head(namespace));
        t
    }

    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    pub(crate) fn tail(&self) -> &[u8] {
        &self.tail
    }

    #[cfg(test)]
    fn assemble(&self, version: u64, epoch: u64) -> Vec<u8> {
        [
            &self.head[..],
            &version.to_be_bytes(),
            &epoch.to_be_bytes(),
            &self.tail,
        ]
        .concat()
    }
}

/// What a received message invalidates.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    Keys(Vec<&'a str>),
    /// Keys of several namespaces (the message's own namespace is empty).
    Multi(Vec<(&'a str, Vec<&'a str>)>),
    Namespace,
    /// `sent_ms` is on the sender's own clock: meaningful to the sender only.
    Heartbeat {
        sent_ms: u64,
    },
}

/// A parsed message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Incoming<'a> {
    pub(crate) origin: u64,
    pub(crate) version: u64,
    pub(crate) epoch: u64,
    /// The publisher's wall clock when it built the message, unix ms (`None` from a format 1
    /// publisher, which did not send it).
    pub(crate) sent_ms: Option<u64>,
    pub(crate) namespace: &'a str,
    pub(crate) scope: Scope<'a>,
}

/// Parses a message; `None` for anything malformed. Never panics.
pub(crate) fn decode(bytes: &[u8]) -> Option<Incoming<'_>> {
    let mut r = Reader(bytes);
    let format = match r.take(2)? {
        [MAGIC, f @ (FORMAT_1 | FORMAT)] => *f,
        _ => return None,
    };
    let kind = r.take(1)?[0];
    let origin = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let version = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let epoch = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let sent_ms = if format == FORMAT_1 {
        None
    } else {
        Some(u64::from_be_bytes(r.take(8)?.try_into().ok()?))
    };
    let ns_len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
    let namespace = std::str::from_utf8(r.take(ns_len)?).ok()?;
    let scope = match kind {
        KIND_NAMESPACE => Scope::Namespace,
        KIND_HEARTBEAT => Scope::Heartbeat {
            sent_ms: u64::from_be_bytes(r.take(8)?.try_into().ok()?),
        },
        KIND_KEYS => Scope::Keys(r.keys()?),
        KIND_MULTI if namespace.is_empty() => {
            let count = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
            // Each section needs at least 6 bytes: bounds the allocation by the input.
            if count > r.0.len() / 6 {
                return None;
            }
            let mut sections = Vec::with_capacity(count);
            for _ in 0..count {
                let len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
                let ns = std::str::from_utf8(r.take(len)?).ok()?;
                sections.push((ns, r.keys()?));
            }
            Scope::Multi(sections)
        }
        _ => return None,
    };
    r.0.is_empty().then_some(Incoming {
        origin,
        version,
        epoch,
        sent_ms,
        namespace,
        scope,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A key list: u32 count, then per key a u32 length and its bytes.
    fn keys(&mut self) -> Option<Vec<&'a str>> {
        let count = self.u32()? as usize;
        // Each key needs at least its 4-byte length: bounds the allocation by the input.
        if count > self.0.len() / 4 {
            return None;
        }
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            let len = self.u32()? as usize;
            keys.push(std::str::from_utf8(self.take(len)?).ok()?);
        }
        Some(keys)
    }
}

/// What the subscriber must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    Listen,
    /// Something may have been missed: reload floors and clear every L1.
    Resync,
}

/// Applies one received payload to the local tiers.
///
/// Messages are checked against the sequence: within an epoch, published writes carry
/// consecutive versions, and Redis delivers them in that order. A write more than one ahead of
/// the last one seen, or a heartbeat ahead of it, means messages were lost on the way; one
/// behind it, once the backlog from before the last resync is drained, means the counter went
/// back (a restore, a failover to a lagging replica). Either way, L1 stops being trusted at
/// once and the subscriber resynchronises.
///
/// This node's own heartbeat, received in sequence, is the proof of freshness: everything
/// published before it was sent has been applied here.
pub(crate) fn apply(shared: &Shared, payload: &[u8]) -> After {
    let Some(msg) = decode(payload) else {
        shared.bus.metrics.malformed.inc();
        tracing::warn!(
            target: "tiered_cache::bus",
            len = payload.len(),
            "unreadable message on the invalidation channel; resynchronising to stay safe"
        );
        shared.suspect();
        return After::Resync;
    };
    if shared.epoch_changed(msg.epoch) {
        shared.suspect();
        return After::Resync;
    }
    let order = shared.bus.sequence(&msg);
    apply_scope(shared, &msg);
    match order {
        Order::InSequence => {}
        Order::Gap(missed) => {
            shared.bus.metrics.gaps.inc();
            shared.bus.metrics.lost.add(missed);
            tracing::warn!(target: "tiered_cache::bus", missed, version = msg.version,
                "invalidation messages were lost; resynchronising");
            shared.suspect();
            return After::Resync;
        }
        Order::Rewound => {
            shared.bus.metrics.gaps.inc();
            tracing::warn!(target: "tiered_cache::bus", version = msg.version,
                "the version counter went back; resynchronising");
            shared.suspect();
            return After::Resync;
        }
    }
    if let (Scope::Heartbeat { sent_ms }, true) = (&msg.scope, msg.origin == shared.node_id) {
        shared.bus.proven_fresh_at(*sent_ms);
    }
    After::Listen
}

/// Where a message stands in the sequence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Order {
    InSequence,
    Gap(u64),
    Rewound,
}

fn apply_scope(shared: &Shared, msg: &Incoming<'_>) {
    // A namespace this node does not serve: nothing of it is cached here.
    let ns = shared.namespace(msg.namespace);
    if msg.origin == shared.node_id {
        shared.bus.metrics.own_skipped.inc();
        // Our own clear may have timed out on the caller's side after it ran: its floor still
        // applies here. Idempotent otherwise.
        if let (Some(ns), Scope::Namespace) = (ns, &msg.scope) {
            ns.raise_floor(msg.version);
        }
        return;
    }
    let now_ms = unix_ms();
    match (ns, &msg.scope) {
        (Some(ns), Scope::Keys(keys)) => {
            ns.apply_remote_keys(keys);
            ns.metrics.invalidation_lag(msg.sent_ms, now_ms);
        }
        (Some(ns), Scope::Namespace) => {
            ns.apply_remote_clear(msg.version);
            ns.metrics.invalidation_lag(msg.sent_ms, now_ms);
        }
        (_, Scope::Multi(sections)) => {
            for (name, keys) in sections {
                if let Some(ns) = shared.namespace(name) {
                    ns.apply_remote_keys(keys);
                    ns.metrics.invalidation_lag(msg.sent_ms, now_ms);
                }
            }
        }
        _ => {}
    }
}

/// How often the heartbeat task refreshes the state gauges (L1 size, time bypassed), at most:
/// with a heartbeat slower than this, every heartbeat.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Publishes this node's heartbeat every `interval`, until aborted.
pub(crate) async fn run_heartbeat(shared: Arc<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The gauges that follow state, not events (L1 sizes need a moka maintenance pass), move
    // at most once a second, and after the heartbeat is out: a slow pass can push back the
    // next tick by its length, never hold this one.
    let mut gauges_at = std::time::Instant::now();
    loop {
        tick.tick().await;
        // Read the clock before sending: the proof covers what was published up to here.
        let message = Outgoing::heartbeat(shared.node_id, shared.bus.now_ms());
        if let Ok(stamp) = shared.l2.heartbeat(&message).await {
            shared.observe_epoch(stamp.epoch);
        }
        if gauges_at.elapsed() >= GAUGES_EVERY {
            gauges_at = std::time::Instant::now();
            for ns in shared.namespaces() {
                ns.refresh_gauges();
            }
        }
    }
}

/// Keeps each namespace's bypass flag in line with its staleness bound: set when the bus has
/// not proved it reaches this node for 70 % of the bound (the rest is margin for the thread's
/// own wake-up and for reads already past the check), cleared once it has again.
///
/// A plain thread rather than a task: on a runtime saturated by the application, a task's
/// timer can fire tens of milliseconds late, and the bound is a promise. Exits when the cache
/// is dropped.
pub(crate) fn spawn_watchdog(shared: &Arc<Shared>) -> Option<std::thread::JoinHandle<()>> {
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
            let trusted_age = |shared: &Shared| {
                let ok = shared.bus.sources_up() && !shared.bus.resync_pending();
                shared.bus.delivery_age().filter(|_| ok)
            };
            let age = trusted_age(&shared);
            for ns in shared.namespaces() {
                if let Some(bound) = ns.policy.staleness_bound {
                    let trip = bound.mul_f64(TRIP_AT);
                    ns.set_bypass(age.is_none_or(|age| age + tick > trip), age);
                }
            }
            // A suspicion raised while deciding must not be overwritten by the decision.
            if age.is_some() && trusted_age(&shared).is_none() {
                shared.distrust_bounded();
            }
        })
        .ok()
}

/// Settings of the subscriber task.
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) max_backoff: Duration,
}

/// Runs until aborted (when the last cache handle is dropped).
pub(crate) async fn run_subscriber(client: redis::Client, shared: Arc<Shared>, cfg: BusConfig) {
    let min_backoff = Duration::from_millis(50);
    let mut backoff = min_backoff;
    let mut first = true;
    loop {
        let outcome = session(&client, &shared, &cfg).await;
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
        // Loud once when the link is lost; quiet while retrying against a server still down.
        if was_subscribed || first {
            tracing::warn!(target: "tiered_cache::bus", %reason, retry_in_ms,
                "invalidation subscriber not listening; L1 will be cleared on resubscription");
        } else {
            tracing::debug!(target: "tiered_cache::bus", %reason, retry_in_ms, "subscriber retry failed");
        }
        first = false;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
}

/// One connection's life: subscribe, resync, then listen until something fails.
async fn session(
    client: &redis::Client,
    shared: &Arc<Shared>,
    cfg: &BusConfig,
) -> Result<(), String> {
    let pubsub = tokio::time::timeout(cfg.connect_timeout, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sink, mut stream) = pubsub.split();
    tokio::time::timeout(
        cfg.command_timeout,
        sink.subscribe(shared.l2.keys().channel()),
    )
    .await
    .map_err(|_| "subscribe timed out".to_string())?
    .map_err(|e| format!("subscribe: {e}"))?;
    // Confirmed: from here on nothing is missed, so now (not earlier) forget what may have been.
    shared.resync().await.map_err(|e| format!("resync: {e}"))?;
    shared.bus.subscribed.store(true, Relaxed);
    shared.bus.metrics.connected.set(1.0);
    shared.bus.metrics.subscribed.inc();
    // Redis is back for this node: replay what was queued while it was not.
    shared.outbox.wake.notify_one();
    tracing::info!(target: "tiered_cache::bus", channel = shared.l2.keys().channel(), "subscribed");

    // The PING runs beside the message loop, never blocking it: a slow link must not hold
    // back the messages it does deliver.
    let (failed_tx, mut ping_failed) = tokio::sync::oneshot::channel::<String>();
    let pinger = AbortOnDrop(tokio::spawn(ping_loop(
        sink,
        shared.clone(),
        cfg.clone(),
        failed_tx,
    )));
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => if apply(shared, msg.get_payload_bytes()) == After::Resync {
                    shared.resync().await.map_err(|e| format!("resync: {e}"))?;
                },
                None => return Err("connection closed".into()),
            },
            _ = shared.resync_wanted.notified() => {
                shared.resync().await.map_err(|e| format!("resync: {e}"))?;
            }
            reason = &mut ping_failed => {
                drop(pinger);
                return Err(reason.unwrap_or_else(|_| "ping task ended".into()));
            }
        }
    }
}

/// Pings the subscriber connection every heartbeat; reports the first failure and stops.
async fn ping_loop(
    mut sink: redis::aio::PubSubSink,
    shared: Arc<Shared>,
    cfg: BusConfig,
    failed: tokio::sync::oneshot::Sender<String>,
) {
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        heartbeat.tick().await;
        let ping = sink.ping::<redis::Value>();
        let reason = match tokio::time::timeout(cfg.command_timeout.max(cfg.heartbeat), ping).await
        {
            Ok(Ok(_)) => {
                shared.bus.touch();
                continue;
            }
            Ok(Err(e)) => format!("ping: {e}"),
            Err(_) => "ping timed out".to_string(),
        };
        let _ = failed.send(reason);
        return;
    }
}

/// Aborts a task when dropped, so a session's helpers end with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let before = unix_ms();
        let m = Outgoing::keys(7, "rate", &["CNGN:USD", "", "é"]).assemble(42, 5);
        let after = unix_ms();
        let d = decode(&m).unwrap();
        let sent = d.sent_ms.unwrap();
        assert!(
            (before..=after).contains(&sent),
            "send time {sent} not within [{before}, {after}]"
        );
        assert_eq!(
            d,
            Incoming {
                origin: 7,
                version: 42,
                epoch: 5,
                sent_ms: d.sent_ms,
                namespace: "rate",
                scope: Scope::Keys(vec!["CNGN:USD", "", "é"])
            }
        );
    }

    #[test]
    fn every_kind_carries_its_send_time_after_the_epoch() {
        let before = unix_ms();
        let messages = [
            Outgoing::keys(7, "rate", &["a"]).assemble(1, 5),
            Outgoing::namespace(7, "rate").assemble(2, 5),
            Outgoing::heartbeat(7, 77).assemble(3, 5),
            multi_message(7, 4, &[("rate", &["a"])]),
        ];
        let after = unix_ms();
        for m in &messages {
            assert_eq!(m[1], 2, "format");
            let at = u64::from_be_bytes(m[27..35].try_into().unwrap());
            assert!((before..=after).contains(&at), "kind {}: {at}", m[2]);
            assert_eq!(decode(m).unwrap().sent_ms, Some(at));
        }
    }

    #[test]
    fn a_format_1_message_is_read_without_a_send_time() {
        // Format 1 is format 2 without the 8 bytes of send time after the epoch.
        let mut m = Outgoing::keys(7, "rate", &["a", "b"]).assemble(1, 5);
        m[1] = 1;
        m.drain(27..35);
        let d = decode(&m).unwrap();
        assert_eq!(
            (d.sent_ms, d.version, d.namespace, d.scope),
            (None, 1, "rate", Scope::Keys(vec!["a", "b"]))
        );
        m[1] = 3;
        assert!(decode(&m).is_none(), "an unknown format is unreadable");
    }

    #[test]
    fn namespace_round_trip() {
        let m = Outgoing::namespace(1, "quote").assemble(3, 5);
        assert_eq!(decode(&m).unwrap().scope, Scope::Namespace);
        let h = Outgoing::heartbeat(1, 77).assemble(9, 5);
        let h = decode(&h).unwrap();
        assert_eq!(
            (h.scope, h.version, h.namespace),
            (Scope::Heartbeat { sent_ms: 77 }, 9, "")
        );
    }

    /// A kind 3 message as the tag invalidation script builds it.
    fn multi_message(origin: u64, version: u64, sections: &[(&str, &[&str])]) -> Vec<u8> {
        let mut m = Outgoing::multi(origin).assemble(version, 5);
        m.extend_from_slice(&(sections.len() as u16).to_be_bytes());
        for (ns, keys) in sections {
            m.extend(Outgoing::section_head(ns));
            m.extend_from_slice(&(keys.len() as u32).to_be_bytes());
            for k in *keys {
                m.extend_from_slice(&(k.len() as u32).to_be_bytes());
                m.extend_from_slice(k.as_bytes());
            }
        }
        m
    }

    #[test]
    fn multi_round_trip_and_malformed() {
        let m = multi_message(7, 42, &[("rate", &["a", "b:c"]), ("quote", &["é"])]);
        let d = decode(&m).unwrap();
        assert_eq!((d.origin, d.version, d.namespace), (7, 42, ""));
        assert_eq!(
            d.scope,
            Scope::Multi(vec![("rate", vec!["a", "b:c"]), ("quote", vec!["é"])])
        );
        let empty = multi_message(7, 43, &[]);
        assert_eq!(decode(&empty).unwrap().scope, Scope::Multi(vec![]));
        for n in 0..m.len() {
            assert!(decode(&m[..n]).is_none(), "prefix of {n} bytes accepted");
        }
        let mut trailing = m.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_none());
        let mut huge = empty.clone();
        let at = huge.len() - 2;
        huge[at..].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(decode(&huge).is_none());
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
    }

    #[test]
    fn malformed_messages_are_rejected_without_panic() {
        let good = Outgoing::keys(7, "rate", &["a", "bc"]).assemble(42, 5);
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_none(), "prefix of {n} bytes accepted");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_none());
        let mut huge = Outgoing::keys(7, "rate", &[]).assemble(1, 5);
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge).is_none());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
    }
}
