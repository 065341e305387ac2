//! The L2 tier: the shared Redis. The only module that issues commands on values.
//!
//! Every write is one Lua script (the texts are in `scripts.rs`) that draws a version from the
//! shared counter, stores the value (or a tombstone) with that version spliced into its
//! envelope, and publishes the invalidation carrying the same version: Redis runs a script
//! atomically, so no crash or cut connection can leave a write without its broadcast, or the
//! reverse.
//!
//! Fills after a miss go through a conditional script instead of a plain `SET`: a load that
//! started before an invalidation must not put its older value back into Redis. The reader
//! notes the version counter before calling its loader; the fill is refused if the key holds a
//! live value (someone else wrote or filled it), a tombstone newer than that note, or if the
//! namespace was cleared after it.
//!
//! Every call is bounded by the L2 timeout and passes the circuit breaker (`breaker.rs`): after
//! N consecutive timeouts or connection failures, calls skip Redis and answer at once until one
//! probe, after the cool-down, finds it answering again. A dead server costs callers nothing
//! but the first N timeouts.

use crate::breaker::Breaker;
use crate::codec;
use crate::error::Error;
use crate::key::KeySpace;
use crate::wire::Outgoing;
use epoch::Epochs;
pub(crate) use error::{L2Error, L2Result, Target};
pub(crate) use history::Known;
use redis::aio::ConnectionManager;
use redis::Script;
use scripts::{script, CLEAR_NAMESPACE, FILL, HEARTBEAT, INVALIDATE, REPLAY_WRITE, UNLOCK, WRITE};
use std::future::Future;
use std::time::Duration;

/// A write's version and the epoch of the counter it was drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    pub(crate) version: u64,
    pub(crate) epoch: u64,
}

/// A fresh epoch candidate: non-zero and below 2^53, so Lua's doubles hold it exactly.
pub(crate) fn new_epoch() -> u64 {
    (rand::random::<u64>() & ((1 << 52) - 1)) | 1
}

/// How the L2 tier reaches Redis.
pub(crate) struct L2Settings<'a> {
    /// Address, credentials, TLS, connection count, connect and command timeouts (the
    /// command timeout bounds every call, and the bus connections' commands).
    pub(crate) endpoint: &'a crate::config::Endpoint,
    /// The first part of every key and of the bus channel's name.
    pub(crate) prefix: &'a str,
    /// The longest delay of the connection's own reconnect.
    pub(crate) reconnect_delay: Duration,
    /// How many messages the invalidation log keeps (0: none; see `log.rs`).
    pub(crate) replay_log: usize,
}

/// An encoded entry ready to be written, and how long Redis keeps it.
pub(crate) struct Payload<'a> {
    pub(crate) encoded: &'a codec::Encoded,
    pub(crate) ttl: Duration,
}

pub(crate) struct L2Tier {
    /// The current server (followed through failovers behind Sentinel): its client, for the
    /// bus's dedicated connections (see `link.rs`), and the pool calls are spread over.
    topology: topology::Topology,
    /// Where the address is, safe to print.
    describe: String,
    connect_timeout: Duration,
    epochs: Epochs,
    keys: KeySpace,
    timeout: Duration,
    breaker: Breaker,
    write: Script,
    replay_write: Script,
    invalidate: scripts::Flagged,
    clear_namespace: scripts::Flagged,
    fill: Script,
    heartbeat: scripts::Flagged,
    /// Redis is older than 7 (it failed to compile a `#!lua` line): flagged scripts are run
    /// in their plain form.
    legacy: std::sync::atomic::AtomicBool,
    unlock: Script,
    raise_counter: scripts::Flagged,
    /// The invalidation log's length (see `log.rs`).
    log_len: usize,
}

impl L2Tier {
    /// Checks the URL and creates the tier without connecting: the connection is made on
    /// first use, so a cache can start while Redis is down. Its keys live under `prefix`, in
    /// the database the URL selects.
    pub(crate) fn open(settings: L2Settings<'_>, breaker: Breaker) -> Result<Self, Error> {
        let L2Settings {
            endpoint,
            prefix,
            reconnect_delay,
            replay_log,
        } = settings;
        let (timeout, connect_timeout) = (endpoint.command_timeout, endpoint.connect_timeout);
        let (topology, db) = connect::open(endpoint, reconnect_delay)?;
        let keys = KeySpace::new(prefix, db);
        Ok(Self {
            topology,
            describe: endpoint.describe(),
            connect_timeout,
            epochs: Epochs::new(),
            keys,
            timeout,
            breaker,
            write: script(WRITE),
            replay_write: script(REPLAY_WRITE),
            invalidate: scripts::invalidating_script(INVALIDATE),
            clear_namespace: scripts::invalidating_script(CLEAR_NAMESPACE),
            fill: script(FILL),
            heartbeat: scripts::invalidating_script(HEARTBEAT),
            legacy: std::sync::atomic::AtomicBool::new(false),
            unlock: Script::new(UNLOCK),
            raise_counter: scripts::invalidating_script(scripts::RAISE_COUNTER),
            log_len: replay_log,
        })
    }

    /// Every script's first argument: a fresh epoch candidate, the highest version this
    /// node has seen, and the invalidation log's length and largest entry (see
    /// `scripts::PREAMBLE`).
    pub(crate) fn first_arg(&self) -> String {
        let (epoch, least) = (new_epoch(), self.epochs.highest());
        format!("{epoch}:{least}:{}:{}", self.log_len, log::ENTRY_MAX)
    }

    pub(crate) fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// How the pooled connections stand.
    pub(crate) fn connections(&self) -> connect::ConnectionCensus {
        self.topology.census()
    }

    /// Where Redis is, safe to print: the address given, and behind Sentinel the primary
    /// followed now.
    pub(crate) fn describe(&self) -> String {
        match (&self.topology.at(), self.describe.contains("+sentinel://")) {
            (Some(at), true) => format!("{} (primary {at})", self.describe),
            _ => self.describe.clone(),
        }
    }

    /// Behind Sentinel, follows its decisions until aborted (see `topology.rs`); returns at
    /// once otherwise.
    pub(crate) async fn watch_primary(&self) {
        self.topology.watch().await
    }

    /// Bumped whenever the tier switches to another server (a failover behind Sentinel).
    pub(crate) fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.topology.moves()
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The epoch of the version counter, as recorded from every reply that carries one (but
    /// the resync's `floors`, whose caller adopts it).
    pub(crate) fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// Runs one Redis call under the timeout and the breaker.
    ///
    /// A call that finds its connection dropped (Redis restarted since the last call) is
    /// retried once on the connection the manager re-opens. Behind Sentinel, a call that still
    /// fails so, or is answered READONLY (its server was demoted), asks Sentinel for the
    /// primary and, if it moved, is retried once there. Every call here is safe to repeat:
    /// a repeated write or tombstone changes nothing visible, a repeated fill is refused. A
    /// call that timed out is not repeated: Redis may be slow, and the breaker should hear of
    /// it rather than Redis get the command twice.
    async fn call<T, F, Fut>(&self, target: Option<Target<'_>>, f: F) -> L2Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(permit) = self.breaker.acquire() else {
            if let Some(target) = target {
                target.count(&L2Error::Skipped);
            }
            return Err(L2Error::Skipped);
        };
        let attempt = async {
            let Some(mut live) = self.topology.live().await else {
                return (None, Err(no_primary()));
            };
            let (mut i, mut conn) = live.pool().pick();
            let mut result = f(conn.clone()).await;
            if result.as_ref().is_err_and(dropped) {
                result = f(conn.clone()).await;
            }
            let moved = match &result {
                Err(e) if dropped(e) || readonly(e) => {
                    self.topology.rediscover_from(Some(&live)).await
                }
                _ => false,
            };
            if let Some(now) = self.topology.current().filter(|_| moved) {
                live = now;
                (i, conn) = live.pool().pick();
                result = f(conn).await;
            }
            (Some((live, i)), result)
        };
        let (used, result) = match tokio::time::timeout(self.timeout, attempt).await {
            Ok((used, Ok(v))) => (used, Ok(v)),
            Ok((used, Err(e))) => (used, Err(L2Error::Redis(e))),
            Err(_) => (None, Err(L2Error::Timeout)),
        };
        let reached = (result.as_ref()).map_or_else(|e| !e.is_unreachable(), |_| true);
        if let Some((live, i)) = used {
            live.pool().record(i, reached);
        }
        permit.record(reached);
        if let (Some(target), Err(e)) = (target, &result) {
            target.count(e);
        }
        result
    }

    /// Reads the raw envelope stored under a key.
    pub(crate) async fn get(&self, ns: Target<'_>, key: &str) -> L2Result<Option<Vec<u8>>> {
        let (namespace, ns) = (ns.name, Some(ns));
        let k = &self.keys.value_key(namespace, key);
        self.call(ns, |mut c| async move {
            redis::cmd("GET").arg(k).query_async(&mut c).await
        })
        .await
    }

    /// The current version and epoch; noted before a load, checked by its fill. An epoch of 0
    /// means no write has happened since the counter was created.
    /// `counted`: the namespace a failure counts for, if any.
    pub(crate) async fn current_stamp(&self, counted: Option<Target<'_>>) -> L2Result<Stamp> {
        let (k, ns) = (self.keys.meta_key(), counted);
        self.call(ns, |mut c| async move {
            let (v, e): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(k)
                .arg(KeySpace::VERSION_FIELD)
                .arg(KeySpace::EPOCH_FIELD)
                .query_async(&mut c)
                .await?;
            Ok(Stamp {
                version: lenient_u64(v.as_deref()),
                epoch: lenient_u64(e.as_deref()),
            })
        })
        .await
        .inspect(|stamp| self.epochs.observe(stamp.epoch, stamp.version))
    }

    /// Stores a value and publishes its invalidation, atomically. Returns the write's version.
    pub(crate) async fn write(
        &self,
        ns: Target<'_>,
        key: &str,
        value: Payload<'_>,
        message: &Outgoing,
    ) -> L2Result<Stamp> {
        let inv = self.write_invocation(&self.write, (ns.name, key), value, message);
        self.invoke(Some(ns), &inv).await
    }

    /// WRITE's keys and arguments, which REPLAY_WRITE extends.
    fn write_invocation<'a>(
        &'a self,
        script: &'a Script,
        (namespace, key): (&str, &str),
        value: Payload<'_>,
        message: &Outgoing,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.meta_key())
            .key(self.keys.value_key(namespace, key))
            .arg(self.first_arg())
            .arg(&value.encoded.head[..])
            .arg(&value.encoded.body)
            .arg(ttl_ms(value.ttl))
            .arg(self.keys.channel())
            .arg(message.head())
            .arg(message.tail());
        inv
    }

    /// Stores a loaded value unless the key was written or invalidated after `seen` (or the
    /// counter started over since), or holds a live value other than version `replaces`.
    /// Returns the fill's stamp, or Redis's current epoch when it was refused.
    pub(crate) async fn fill(
        &self,
        ns: Target<'_>,
        key: &str,
        seen: Stamp,
        replaces: Option<u64>,
        value: Payload<'_>,
    ) -> L2Result<Result<Stamp, u64>> {
        self.fill_with(&self.fill, ns, key, (seen, replaces), value, |_| {})
            .await
    }

    /// [`fill`](Self::fill) through `script` (FILL itself, or a script that wraps its text:
    /// see `multi.rs`), with `extra` keys and arguments appended after FILL's own.
    pub(crate) async fn fill_with(
        &self,
        script: &Script,
        ns: Target<'_>,
        key: &str,
        (seen, replaces): (Stamp, Option<u64>),
        value: Payload<'_>,
        extra: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> L2Result<Result<Stamp, u64>> {
        let (namespace, ns) = (ns.name, Some(ns));
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.meta_key())
            .key(self.keys.value_key(namespace, key))
            .arg(self.first_arg())
            .arg(seen.version)
            .arg(seen.epoch)
            .arg(&value.encoded.head[..])
            .arg(&value.encoded.body)
            .arg(ttl_ms(value.ttl))
            .arg(KeySpace::floor_field(namespace))
            .arg(codec::unix_ms())
            // Versions start at 1 (a fill before any write takes 0, and is never replaced).
            .arg(replaces.unwrap_or(u64::MAX));
        extra(&mut inv);
        let inv = &inv;
        let (stored, version, epoch): (u8, u64, u64) = self
            .call(ns, |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        self.epochs.observe(epoch, version);
        Ok(if stored == 1 {
            Ok(Stamp { version, epoch })
        } else {
            Err(epoch)
        })
    }

    /// Publishes this node's heartbeat, stamped with the current version.
    pub(crate) async fn heartbeat(&self, message: &Outgoing) -> L2Result<Stamp> {
        let args = |inv: &mut redis::ScriptInvocation<'_>| {
            inv.key(self.keys.meta_key())
                .arg(self.first_arg())
                .arg(self.keys.channel())
                .arg(message.head())
                .arg(message.tail());
        };
        self.invoke_flagged(None, &self.heartbeat, args).await
    }

    /// Replaces keys by tombstones (kept `ttl`, so a slower load cannot fill them back) and
    /// publishes their invalidation from `origin`: one script and one message, or one per run
    /// of keys where the list is over the message cap (`wire::MAX_MESSAGE`). Returns the last
    /// version; an error leaves the runs before it landed (invalidating them again is harmless).
    pub(crate) async fn invalidate(
        &self,
        ns: Target<'_>,
        keys: &[&str],
        ttl: Duration,
        origin: u64,
    ) -> L2Result<Stamp> {
        let runs = crate::wire::key_chunks(ns.name, keys);
        let (last, before) = runs.split_last().expect("at least one run");
        for run in before {
            self.invalidate_run(ns, run, ttl, origin).await?;
        }
        self.invalidate_run(ns, last, ttl, origin).await
    }

    async fn invalidate_run(
        &self,
        ns: Target<'_>,
        keys: &[&str],
        ttl: Duration,
        origin: u64,
    ) -> L2Result<Stamp> {
        let message = Outgoing::keys(origin, ns.name, keys);
        let (namespace, ns) = (ns.name, Some(ns));
        let args = |inv: &mut redis::ScriptInvocation<'_>| {
            inv.key(self.keys.meta_key());
            for k in keys {
                inv.key(self.keys.value_key(namespace, k));
            }
            inv.arg(self.first_arg())
                .arg(&codec::tombstone_head()[..])
                .arg(ttl_ms(ttl))
                .arg(self.keys.channel())
                .arg(message.head())
                .arg(message.tail());
        };
        self.invoke_flagged(ns, &self.invalidate, args).await
    }

    /// Marks every value of the namespace written so far as dead, without scanning keys, and
    /// publishes it. The returned version becomes the namespace's floor.
    pub(crate) async fn clear_namespace(
        &self,
        ns: Target<'_>,
        message: &Outgoing,
    ) -> L2Result<Stamp> {
        let (namespace, ns) = (ns.name, Some(ns));
        let args = |inv: &mut redis::ScriptInvocation<'_>| {
            inv.key(self.keys.meta_key())
                .arg(self.first_arg())
                .arg(KeySpace::floor_field(namespace))
                .arg(self.keys.channel())
                .arg(message.head())
                .arg(message.tail());
        };
        self.invoke_flagged(ns, &self.clear_namespace, args).await
    }

    /// The current stamp and the floors of the given namespaces, in order (0 when never
    /// cleared). The one read that does not record the epoch: the resync that asks adopts it. A field that is not a number reads as 0, with a warning, rather than wedging
    /// resync.
    pub(crate) async fn floors(&self, namespaces: &[&str]) -> L2Result<(Stamp, Vec<u64>)> {
        let fields = &namespaces
            .iter()
            .map(|n| KeySpace::floor_field(n))
            .collect::<Vec<_>>();
        let meta = self.keys.meta_key();
        self.call(None, |mut c| async move {
            let v: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(meta)
                .arg(KeySpace::EPOCH_FIELD)
                .arg(KeySpace::VERSION_FIELD)
                .arg(KeySpace::ROLLBACK_FLOOR_FIELD)
                .arg(fields)
                .query_async(&mut c)
                .await?;
            let mut v = v.iter().map(|f| lenient_u64(f.as_deref()));
            let epoch = v.next().unwrap_or(0);
            let version = v.next().unwrap_or(0);
            // Every namespace's floor is at least the rollback floor.
            let rollback = v.next().unwrap_or(0);
            Ok((
                Stamp { version, epoch },
                v.map(|f| f.max(rollback)).collect(),
            ))
        })
        .await
    }

    async fn invoke(
        &self,
        ns: Option<Target<'_>>,
        inv: &redis::ScriptInvocation<'_>,
    ) -> L2Result<Stamp> {
        let (version, epoch): (u64, u64) = self
            .call(ns, |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        self.epochs.observe(epoch, version);
        Ok(Stamp { version, epoch })
    }

    /// [`invoke`](Self::invoke) of a flagged script, in its plain form on a Redis older than
    /// 7 (which fails to compile the `#!lua` line: noticed at the first failure).
    async fn invoke_flagged(
        &self,
        ns: Option<Target<'_>>,
        script: &scripts::Flagged,
        args: impl Fn(&mut redis::ScriptInvocation<'_>),
    ) -> L2Result<Stamp> {
        let (version, epoch): (u64, u64) = self.call_flagged(ns, script, args).await?;
        self.epochs.observe(epoch, version);
        Ok(Stamp { version, epoch })
    }

    /// Runs a flagged script (see [`scripts::Flagged`]) and returns its raw reply.
    pub(crate) async fn call_flagged<T: redis::FromRedisValue>(
        &self,
        ns: Option<Target<'_>>,
        script: &scripts::Flagged,
        args: impl Fn(&mut redis::ScriptInvocation<'_>),
    ) -> L2Result<T> {
        use std::sync::atomic::Ordering::Relaxed;
        let legacy = self.legacy.load(Relaxed);
        let mut inv = script.pick(legacy).prepare_invoke();
        args(&mut inv);
        let inv = &inv;
        let result = self
            .call(ns, |mut c| async move { inv.invoke_async(&mut c).await })
            .await;
        match &result {
            // Redis 6 reads `#!lua` as Lua: from now on the plain scripts (without the
            // refusal on replicas and under OOM, or the leave to run under OOM, that Redis 7
            // gives the flagged ones).
            Err(L2Error::Redis(e)) if !legacy && e.to_string().contains("compiling") => {
                tracing::warn!(target: "tiered_cache::l2", error = %e,
                    "Redis cannot compile a #!lua script (older than 7): plain scripts from now on");
                self.legacy.store(true, Relaxed);
                let mut inv = script.pick(true).prepare_invoke();
                args(&mut inv);
                let inv = &inv;
                self.call(ns, |mut c| async move { inv.invoke_async(&mut c).await })
                    .await
            }
            _ => result,
        }
    }

    /// True when Redis answers a PING within the timeout.
    pub(crate) async fn ping(&self) -> bool {
        self.call(None, |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .is_ok()
    }
}

/// Parses a bookkeeping field; anything unreadable counts as 0 (and is logged).
fn lenient_u64(field: Option<&str>) -> u64 {
    match field.map(str::parse) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            tracing::warn!(target: "tiered_cache::l2", field = ?field, "unreadable field in the meta hash, read as 0");
            0
        }
    }
}

/// A connection that failed, not a command: worth one more try on a fresh connection.
fn dropped(e: &redis::RedisError) -> bool {
    (e.is_connection_dropped() || e.is_io_error()) && !e.is_timeout()
}

/// The server answered READONLY: it is a replica now (it was demoted in a failover).
fn readonly(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY") || e.to_string().contains("READONLY")
}

/// Behind Sentinel, before any Sentinel named a primary: counted as unreachable.
fn no_primary() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no Redis primary known yet: no Sentinel answered",
    ))
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

/// Opening Redis: the client from the connection settings, and the connection pool.
pub(crate) mod connect;
/// The epoch of the version counter, recorded from every reply.
mod epoch;
mod error;
mod history;
/// The bus's dedicated connections: the subscription and external-write tracking.
pub(crate) mod link;
mod lock;
pub(crate) mod log;
/// Batches and tags: multi-key reads, writes and fills, and tag invalidation (a child module,
/// so its scripts can wrap the ones in `scripts` and its calls go through `call`).
pub(crate) mod multi;
/// The Lua scripts of the single-key calls above.
mod scripts;
mod source;
/// One fixed server, or the primary Sentinel names, followed through failovers.
pub(crate) mod topology;
/// Sliding expiry: extending a live value's TTL and envelope expiry in one script.
pub(crate) mod touch;

/// Server figures for [`TieredCache::redis_info`](crate::TieredCache::redis_info), and the
/// reads, census and bus listener of the `admin` feature's tooling.
pub(crate) mod admin;
