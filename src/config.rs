//! Configuration: the builder, per-namespace policies, and the checks `build()` runs.

use crate::error::{Error, Result};
use crate::key::{validate_name, validate_namespace};
mod connection;
mod policy;

pub use connection::{redact_url, ENV_VARS};
pub(crate) use connection::{Address, Endpoint};
use connection::{ConnectionSettings, Pem, Secret};
pub use policy::NamespacePolicy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where `build()` reads `REDIS_*` variables from.
type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The Redis URL used when none is given and `REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The key prefix used when none is given: the `v1:{namespace}:{id}` convention.
pub const DEFAULT_PREFIX: &str = "v1";

/// Builds a [`TieredCache`](crate::TieredCache). Every setter documents its default;
/// [`build`](Self::build) checks the whole configuration and returns an error instead of a cache
/// that would misbehave later.
#[derive(Clone)]
pub struct TieredCacheBuilder {
    pub(crate) connection: ConnectionSettings,
    env: Option<EnvLookup>,
    pub(crate) prefix: String,
    pub(crate) namespaces: Vec<(String, NamespacePolicy)>,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) outbox_retry: Duration,
    pub(crate) subscriber_backoff: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) track_external_writes: bool,
    pub(crate) breaker_threshold: u32,
    pub(crate) outbox_capacity: usize,
    pub(crate) outbox_max_bytes: usize,
    pub(crate) replay_log: usize,
    pub(crate) subscriber_buffer: usize,
    pub(crate) strict_writes: bool,
}

impl Default for TieredCacheBuilder {
    fn default() -> Self {
        Self {
            connection: ConnectionSettings::default(),
            env: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            namespaces: Vec::new(),
            breaker_cooldown: Self::DEFAULT_BACKOFF,
            outbox_retry: Self::DEFAULT_BACKOFF,
            subscriber_backoff: Self::DEFAULT_BACKOFF,
            heartbeat: Duration::from_millis(100),
            track_external_writes: false,
            breaker_threshold: Self::DEFAULT_BREAKER_THRESHOLD,
            outbox_capacity: Self::DEFAULT_OUTBOX_CAPACITY,
            outbox_max_bytes: Self::DEFAULT_OUTBOX_MAX_BYTES,
            replay_log: Self::DEFAULT_REPLAY_LOG,
            subscriber_buffer: Self::DEFAULT_SUBSCRIBER_BUFFER,
            strict_writes: false,
        }
    }
}

impl TieredCacheBuilder {
    /// Default for [`breaker_cooldown`](Self::breaker_cooldown),
    /// [`outbox_retry`](Self::outbox_retry) and [`subscriber_backoff`](Self::subscriber_backoff).
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
    /// Default for [`breaker_threshold`](Self::breaker_threshold).
    pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;
    /// Default for [`outbox_capacity`](Self::outbox_capacity).
    pub const DEFAULT_OUTBOX_CAPACITY: usize = 10_000;
    /// Default for [`outbox_max_bytes`](Self::outbox_max_bytes): 16 MiB.
    pub const DEFAULT_OUTBOX_MAX_BYTES: usize = 16 << 20;
    /// Default for [`subscriber_buffer`](Self::subscriber_buffer): 64 MiB.
    pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 64 << 20;
    /// The least [`subscriber_buffer`](Self::subscriber_buffer): the largest message the
    /// library publishes (256 KiB) must fit.
    pub const MIN_SUBSCRIBER_BUFFER: usize = 256 << 10;
    /// Default for [`replay_log`](Self::replay_log): 10 000 messages.
    pub const DEFAULT_REPLAY_LOG: usize = 10_000;
}

impl std::fmt::Debug for TieredCacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand: the URL may hold a password, and the environment lookup is a closure.
        let c = &self.connection;
        f.debug_struct("TieredCacheBuilder")
            .field("redis_url", &c.url.as_ref().map(|u| redact_url(u.expose())))
            .field("redis_username", &c.username)
            .field("redis_password", &c.password)
            .field("redis_tls", &c.tls)
            .field("tls_ca", &c.ca)
            .field(
                "tls_client_identity",
                &c.identity.as_ref().map(|(cert, _)| cert),
            )
            .field("redis_connections", &c.connections)
            .field("l2_timeout", &c.command_timeout)
            .field("connect_timeout", &c.connect_timeout)
            .field("custom_environment", &self.env.is_some())
            .field("prefix", &self.prefix)
            .field("namespaces", &self.namespaces)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("outbox_retry", &self.outbox_retry)
            .field("subscriber_backoff", &self.subscriber_backoff)
            .field("heartbeat", &self.heartbeat)
            .field("track_external_writes", &self.track_external_writes)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("outbox_max_bytes", &self.outbox_max_bytes)
            .field("replay_log", &self.replay_log)
            .field("subscriber_buffer", &self.subscriber_buffer)
            .field("strict_writes", &self.strict_writes)
            .finish()
    }
}

/// # Where Redis is, and how to reach it.
///
/// Each of these settings not given in code is read from the environment at `build()` (see
/// [`environment`](Self::environment) and `docs/configuration.md`): `REDIS_URL`, or
/// `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`; `REDIS_USERNAME`, `REDIS_PASSWORD`, `REDIS_SSL`,
/// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`/`REDIS_TLS_KEY_FILE`, `REDIS_MAX_CONNECTIONS`,
/// `REDIS_CONNECTION_TIMEOUT`, `REDIS_COMMAND_TIMEOUT`. A bad or conflicting value fails
/// `build()` with `Error::Config` naming the variable (never its secret value).
impl TieredCacheBuilder {
    /// The Redis server: `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS.
    /// Percent-encode `@ / # % ?` and `:` in a password, or give it with
    /// [`redis_password`](Self::redis_password) instead. Default: `REDIS_URL`, else
    /// `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB` (127.0.0.1, 6379, 0), else `redis://127.0.0.1:6379`.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.connection.url = Some(Secret::new(url));
        self
    }

    /// The ACL user to authenticate as. Default: `REDIS_USERNAME`, else the URL's, else
    /// `default`. Giving one here and another in the URL fails `build()`.
    pub fn redis_username(mut self, user: impl Into<String>) -> Self {
        self.connection.username = Some(user.into());
        self
    }

    /// The password, as it is (no percent-encoding). Never printed. Default: `REDIS_PASSWORD`,
    /// else the URL's, else none. Giving one here and another in the URL fails `build()`.
    pub fn redis_password(mut self, password: impl Into<String>) -> Self {
        self.connection.password = Some(Secret::new(password));
        self
    }

    /// TLS on (even for a `redis://` URL or host/port) or off (a `rediss://` URL then fails
    /// `build()`). Default: `REDIS_SSL`, else what the URL's scheme says.
    pub fn redis_tls(mut self, on: bool) -> Self {
        self.connection.tls = Some(on);
        self
    }

    /// The CA certificates (PEM) that Redis's certificate must chain to, instead of the
    /// system's trust store. Default: the file `REDIS_TLS_CA_FILE` names, else the system's.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.connection.ca = Some(Pem::Bytes(pem.into()));
        self
    }

    /// Like [`tls_ca_pem`](Self::tls_ca_pem), from a file read at `build()`.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.connection.ca = Some(Pem::File(path.into()));
        self
    }

    /// A client certificate and its private key (PEM), for servers that ask for one (mutual
    /// TLS, `tls-auth-clients yes`). Default: the files `REDIS_TLS_CERT_FILE` and
    /// `REDIS_TLS_KEY_FILE` name, else none.
    pub fn tls_client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.connection.identity = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
        self
    }

    /// Like [`tls_client_identity_pem`](Self::tls_client_identity_pem), from files read at
    /// `build()`.
    pub fn tls_client_identity_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.connection.identity = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// How many multiplexed connections reads and writes are spread over (each pipelines many
    /// concurrent commands; the bus has connections of its own). 1 to 256. Default:
    /// `REDIS_MAX_CONNECTIONS`, else 1.
    pub fn redis_connections(mut self, n: usize) -> Self {
        self.connection.connections = Some(n);
        self
    }

    /// Redis behind Sentinel: the primary of `master` as the Sentinels at `nodes` (`host:port`,
    /// port 26379 if left out) report it, followed through failovers. The same as a
    /// `redis+sentinel://host:port,host:port/master[/db]` URL (`rediss+sentinel://` for TLS
    /// to every node); credentials and TLS settings apply to the data nodes and Sentinels alike.
    pub fn redis_sentinel<S: AsRef<str>>(
        self,
        nodes: impl IntoIterator<Item = S>,
        master: impl AsRef<str>,
    ) -> Self {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        self.redis_url(format!(
            "redis+sentinel://{}/{}",
            nodes.join(","),
            master.as_ref()
        ))
    }

    /// The Sentinels' own password (`requirepass` in sentinel.conf), when they need one.
    /// Default: `REDIS_SENTINEL_PASSWORD`, else none.
    pub fn redis_sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.connection.sentinel_password = Some(Secret::new(password));
        self
    }

    /// Where `build()` reads the `REDIS_*` variables from. Default: the process environment.
    /// `|_| None` ignores the environment.
    pub fn environment(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.env = Some(Arc::new(lookup));
        self
    }
}

/// # What is cached: the key prefix, the namespaces.
impl TieredCacheBuilder {
    /// The first part of every Redis key and of the bus channel's name. Default: `v1`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Adds a namespace and its policy. Names use `[A-Za-z0-9_.-]` and do not start with `_`.
    pub fn namespace(mut self, name: impl Into<String>, policy: NamespacePolicy) -> Self {
        self.namespaces.push((name.into(), policy));
        self
    }
}

/// # Timeouts and the circuit breaker in front of Redis.
impl TieredCacheBuilder {
    /// The longest any single Redis call may take before the cache gives up on it and degrades
    /// (serves from L1 or the loader). Default: `REDIS_COMMAND_TIMEOUT`, else 250 ms.
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.connection.command_timeout = Some(timeout);
        self
    }

    /// The longest a connection attempt to Redis (TLS handshake and authentication included)
    /// may take. Default: `REDIS_CONNECTION_TIMEOUT`, else 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connection.connect_timeout = Some(timeout);
        self
    }

    /// How many consecutive Redis calls must time out or fail at the connection level before
    /// the circuit breaker opens. A dead or hung Redis then costs callers at most this many
    /// L2 timeouts; an error reply, or a success, resets the count. At least 1.
    /// Default: 3 (one lost packet or slow call does not cut a node off Redis).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures;
        self
    }

    /// The circuit breaker's cool-down: once open, how long calls skip Redis (reads answered
    /// from L1 or the loader, writes queued, at once) before one probe is let through; also
    /// the longest delay of the L2 connection's own reconnect. Default: 500 ms.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }
}

/// # Writes while Redis is unreachable: the outbox, or strict writes.
impl TieredCacheBuilder {
    /// Fail writes and invalidations (`set`, `invalidate`, `invalidate_namespace`,
    /// `invalidate_tag` and their batch forms) with `Err(Unavailable)` when Redis is
    /// unreachable, instead of queuing them in the outbox and returning `Ok`. Per handle:
    /// [`EntryOptions::strict`](crate::EntryOptions::strict); the
    /// cache-wide [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag) follows
    /// this setting. Default: off (degrade, do not fail: callers of a cache rarely have
    /// anything better to do with the error).
    pub fn strict_writes(mut self, strict: bool) -> Self {
        self.strict_writes = strict;
        self
    }

    /// The most keys the outbox holds: writes and invalidations made while Redis is
    /// unreachable, newest per key, replayed when it is back. When full, an operation on a key
    /// not yet queued turns into a clear of its namespace that replaces that namespace's queued
    /// keys (safe: every node drops the namespace; counted as `dropped`). At least 1.
    /// Default: 10 000 keys.
    pub fn outbox_capacity(mut self, keys: usize) -> Self {
        self.outbox_capacity = keys;
        self
    }

    /// The most bytes of encoded values the outbox holds. A write that would go over is queued
    /// as an invalidation of its key instead (safe: every node drops the key; counted as
    /// `dropped`). 0 queues invalidations only. Default: 16 MiB.
    pub fn outbox_max_bytes(mut self, bytes: usize) -> Self {
        self.outbox_max_bytes = bytes;
        self
    }

    /// How often the outbox tries to replay what it holds while Redis stays unreachable
    /// (it also tries at once when the breaker closes or the subscriber resubscribes).
    /// Default: 500 ms.
    pub fn outbox_retry(mut self, interval: Duration) -> Self {
        self.outbox_retry = interval;
        self
    }
}

/// # The invalidation bus: heartbeat, reconnects, external writes.
impl TieredCacheBuilder {
    /// How often this node publishes a heartbeat on the bus (carrying the current version, so
    /// receivers notice lost messages even when no write follows) and pings its subscriber
    /// connection (so a dead or half-open link is replaced). Default: 100 ms.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The longest delay between the invalidation subscriber's (and external-write
    /// tracking's) reconnect attempts; they start at 50 ms and double up to this (at least
    /// 100 ms). While the subscriber is away, namespaces with a staleness bound bypass L1.
    /// Default: 500 ms.
    pub fn subscriber_backoff(mut self, max: Duration) -> Self {
        self.subscriber_backoff = max;
        self
    }

    /// The most bytes of received messages waiting to be applied. Past it (a flood on the
    /// channel, or a subscriber held up by a resync) messages are dropped and counted
    /// (`Stats::bus_overflowed`), L1 is distrusted, and the resync replays what they named:
    /// memory stays bounded whatever is published. At least 256 KiB. Default: 64 MiB.
    pub fn subscriber_buffer(mut self, bytes: usize) -> Self {
        self.subscriber_buffer = bytes;
        self
    }

    /// Also evict L1 copies of keys written or deleted outside the library (`redis-cli`,
    /// another service), through Redis's `CLIENT TRACKING` in broadcast mode on the prefix.
    /// Costs one more connection per cache, and a writer's own fresh L1 copy is read back once
    /// after each write. Needs Redis 6 or later. Default: off.
    pub fn track_external_writes(mut self, on: bool) -> Self {
        self.track_external_writes = on;
        self
    }

    /// How many recent invalidation messages Redis keeps in a capped stream beside the meta
    /// hash, so a node that missed some (a reconnect, a lost message) replays them and keeps
    /// the rest of its L1; past the log, or across a message over 4 KiB, it clears L1
    /// instead. A single-key message takes about 100 bytes, so the default costs about 1 MiB
    /// of Redis memory, at most 40 MiB. Every node of a fleet should use the same length (the
    /// last writer's trims). 0 keeps no log. Default: 10 000.
    pub fn replay_log(mut self, messages: usize) -> Self {
        self.replay_log = messages;
        self
    }
}

impl TieredCacheBuilder {
    /// The connection settings `build()` will use: the builder's, completed from the
    /// environment.
    pub(crate) fn endpoint(&self) -> Result<Endpoint> {
        let resolved = match &self.env {
            Some(lookup) => self.connection.resolve(&|k| lookup(k)),
            None => self.connection.resolve(&|k| std::env::var(k).ok()),
        };
        resolved.map_err(Error::Config)
    }

    /// Checks everything that does not need Redis.
    pub(crate) fn validate(&self) -> Result<()> {
        let config = |msg: String| Error::Config(msg);
        validate_name("prefix", &self.prefix).map_err(config)?;
        if self.namespaces.is_empty() {
            return Err(config("no namespace configured".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, policy) in &self.namespaces {
            validate_namespace(name).map_err(config)?;
            if !seen.insert(name.as_str()) {
                return Err(config(format!("namespace {name:?} is configured twice")));
            }
            policy.validate(name, self.heartbeat).map_err(config)?;
        }
        let c = &self.connection;
        for (what, d) in [
            ("l2_timeout", c.command_timeout.unwrap_or(Duration::MAX)),
            (
                "connect_timeout",
                c.connect_timeout.unwrap_or(Duration::MAX),
            ),
            ("breaker_cooldown", self.breaker_cooldown),
            ("outbox_retry", self.outbox_retry),
            ("subscriber_backoff", self.subscriber_backoff),
            ("heartbeat", self.heartbeat),
        ] {
            if d.is_zero() {
                return Err(config(format!("{what} must be greater than zero")));
            }
        }
        if self.breaker_threshold == 0 {
            return Err(config("breaker_threshold must be at least 1".into()));
        }
        if self.subscriber_buffer < Self::MIN_SUBSCRIBER_BUFFER {
            return Err(config(format!(
                "subscriber_buffer must be at least {} bytes (the largest message), not {}",
                Self::MIN_SUBSCRIBER_BUFFER,
                self.subscriber_buffer
            )));
        }
        if self.outbox_capacity == 0 {
            return Err(config(
                "outbox_capacity must be at least 1 (use strict_writes to queue nothing)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> TieredCacheBuilder {
        TieredCacheBuilder::default()
            .namespace("rate", NamespacePolicy::new(Duration::from_secs(90)))
    }

    fn err(b: TieredCacheBuilder) -> String {
        b.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let p = NamespacePolicy::new(Duration::from_secs(90));
        assert_eq!(p.l1_ttl_value(), Duration::from_secs(60));
        let p = NamespacePolicy::new(Duration::from_secs(30));
        assert_eq!(p.l1_ttl_value(), Duration::from_secs(30));
        assert!(ok().validate().is_ok());
    }

    #[test]
    fn rejects_bad_config() {
        let s = Duration::from_secs;
        assert!(err(TieredCacheBuilder::default()).contains("no namespace"));
        assert!(err(ok().namespace("z", NamespacePolicy::new(s(0)))).contains("L2 TTL"));
        assert!(
            err(ok().namespace("z", NamespacePolicy::new(s(5)).l1_ttl(s(6)))).contains("longer")
        );
        assert!(
            err(ok().namespace("z", NamespacePolicy::new(s(5)).l1_ttl(s(0)))).contains("L1 TTL")
        );
        assert!(err(ok().namespace("rate", NamespacePolicy::new(s(5)))).contains("twice"));
        assert!(err(ok().namespace("", NamespacePolicy::new(s(5)))).contains("empty"));
        assert!(err(ok().namespace("a:b", NamespacePolicy::new(s(5)))).contains("separator"));
        assert!(err(ok().namespace("_x", NamespacePolicy::new(s(5)))).contains("reserved"));
        assert!(err(ok().prefix("v1:x")).contains("separator"));
        assert!(
            err(ok().namespace("z", NamespacePolicy::new(s(5)).l1_capacity(0)))
                .contains("capacity")
        );
        assert!(err(ok().l2_timeout(s(0))).contains("l2_timeout"));
        assert!(err(ok().breaker_threshold(0)).contains("breaker_threshold"));
        assert!(err(ok().outbox_capacity(0)).contains("outbox_capacity"));
        assert!(ok().outbox_max_bytes(0).validate().is_ok());
        let ms = Duration::from_millis;
        let tight = NamespacePolicy::new(s(5)).staleness_bound(ms(150));
        assert!(err(ok().namespace("z", tight)).contains("2.5 times the heartbeat"));
        let relaxed = NamespacePolicy::new(s(5)).unbounded_staleness();
        assert!(ok().namespace("z", relaxed).validate().is_ok());
        let p = || NamespacePolicy::new(s(5));
        assert!(err(ok().namespace("z", p().ttl_jitter(s(5)))).contains("jitter"));
        assert!(err(ok().namespace("z", p().negative_ttl(s(6)))).contains("negative"));
        assert!(err(ok().namespace("z", p().fail_safe(s(0)))).contains("fail-safe"));
        assert!(err(ok().namespace("z", p().soft_timeout(s(1)))).contains("hard timeout"));
        assert!(
            err(ok().namespace("z", p().fail_safe_throttle(Duration::MAX))).contains("100 years")
        );
        let inverted = p().soft_timeout(s(2)).hard_timeout(s(1));
        assert!(err(ok().namespace("z", inverted)).contains("soft timeout"));
        assert!(err(ok().namespace("z", p().refresh_ahead(1.0))).contains("refresh-ahead"));
        assert!(err(ok().namespace("z", p().refresh_ahead(f64::NAN))).contains("refresh-ahead"));
        assert!(err(ok().namespace("z", p().fleet_single_flight(s(0)))).contains("lock"));
        assert!(err(ok().namespace("z", p().l1_max_bytes(0))).contains("capacity"));
    }
}
