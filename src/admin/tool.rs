//! The [`Admin`] handle: what an operator asks of a fleet's Redis, without being a node.
//!
//! The handle and its methods are here; the key scan behind the census, the reading of a stored
//! envelope and the bus watch, with the types they return, are in `census.rs`, `inspect.rs`
//! and `watch.rs`.

use crate::breaker::BreakerState;
use crate::cache::TieredCache;
use crate::codec;
use crate::config::{NamespacePolicy, TieredCacheBuilder};
use crate::error::{Error, Result};
use crate::key::{validate_name, validate_namespace, KeySpace};
use crate::l2::admin::AdminLink;
use std::fmt;
use std::time::{Duration, Instant};

mod census;
mod inspect;
mod watch;

pub use census::{Census, NamespaceCensus};
pub(crate) use inspect::read_envelope;
pub use inspect::{EnvelopeFlags, Inspection};
pub use watch::{BusEvent, BusEventKind, EventTarget, Watch};

/// A handle for tooling on the Redis a fleet of caches shares: inspect a stored value, count
/// keys and memory per namespace, flush a namespace or a tag, watch the invalidation bus.
///
/// Built from the Redis URL and the caches' key prefix (see
/// [`TieredCacheBuilder::prefix`](crate::TieredCacheBuilder::prefix)). Every command is bounded
/// by [`timeout`](Self::with_timeout) and passes a circuit breaker; nothing connects until the
/// first call. Reads never change anything; flushes go through the very invalidation path the
/// library uses, so every node drops its L1 copies.
///
/// Needs the `admin` feature.
///
/// ```no_run
/// # async fn run() -> tiered_cache::Result<()> {
/// let admin = tiered_cache::Admin::new("redis://127.0.0.1:6379", "v1")?;
/// let seen = admin.inspect("rate", "CNGN:USD").await?;
/// println!("version {:?}: {:?}", seen.version, seen.value);
/// admin.flush_namespace("rate").await?; // every node drops its L1 copies of `rate`
/// # Ok(()) }
/// ```
pub struct Admin {
    link: AdminLink,
    /// The connection settings, completed from the environment (see `TieredCacheBuilder`).
    builder: TieredCacheBuilder,
    /// Where Redis is, redacted.
    url: String,
    prefix: String,
    timeout: Duration,
    tombstone_ttl: Duration,
    memory_sample: usize,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Default for [`with_timeout`](Self::with_timeout): 2 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default for [`with_tombstone_ttl`](Self::with_tombstone_ttl): 1 hour.
    pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
    /// Default for [`with_memory_sample`](Self::with_memory_sample): 64 keys per namespace.
    pub const DEFAULT_MEMORY_SAMPLE: usize = 64;

    /// A handle on the caches under `prefix` in the Redis at `url`. What the URL does not say
    /// (a password, TLS files) is read from the environment, as the cache's builder does.
    /// `Err(Config)` for a URL that does not parse, a bad `REDIS_*` variable or a prefix the
    /// library would refuse. Does not connect.
    pub fn new(url: &str, prefix: &str) -> Result<Self> {
        Self::with_builder(TieredCache::builder().redis_url(url), prefix)
    }

    /// Like [`new`](Self::new), with the address from the environment as well (`REDIS_URL`,
    /// or `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`), as a node built without `redis_url` finds it.
    pub fn from_env(prefix: &str) -> Result<Self> {
        Self::with_builder(TieredCache::builder(), prefix)
    }

    fn with_builder(builder: TieredCacheBuilder, prefix: &str) -> Result<Self> {
        validate_name("prefix", prefix).map_err(Error::Config)?;
        let timeout = Self::DEFAULT_TIMEOUT;
        let builder = builder.prefix(prefix);
        let url = builder.endpoint()?.describe();
        Ok(Self {
            link: Self::link(&builder, prefix, timeout)?,
            builder,
            url,
            prefix: prefix.to_owned(),
            timeout,
            tombstone_ttl: Self::DEFAULT_TOMBSTONE_TTL,
            memory_sample: Self::DEFAULT_MEMORY_SAMPLE,
        })
    }

    /// The longest one command, or one connection attempt, may take. Default: 2 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::Config("admin timeout must be above zero".into()));
        }
        self.link = Self::link(&self.builder, &self.prefix, timeout)?;
        self.timeout = timeout;
        Ok(self)
    }

    fn link(builder: &TieredCacheBuilder, prefix: &str, timeout: Duration) -> Result<AdminLink> {
        let b = builder.clone().l2_timeout(timeout).connect_timeout(timeout);
        AdminLink::new(&b.endpoint()?, prefix)
    }

    /// How long the tombstones of a [`flush_tag`](Self::flush_tag) (and the tag's floor) are
    /// kept. Nodes keep them for their namespace's L2 TTL; a tool does not know it, so give the
    /// longest L2 TTL in use if it is over the default. Default: 1 hour.
    pub fn with_tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// How many keys per namespace [`census`](Self::census) measures with `MEMORY USAGE`.
    /// Default: 64.
    pub fn with_memory_sample(mut self, keys: usize) -> Self {
        self.memory_sample = keys;
        self
    }

    /// The Redis URL this handle talks to, its password (if any) replaced by `***`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The key prefix this handle looks under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self) -> &KeySpace {
        self.link.l2().keys()
    }

    /// Reads the value stored under `(namespace, key)` and decodes its envelope: header
    /// (format, flags, version, expiry), remaining TTL in Redis, and the payload as a generic
    /// value (lz4 undone, MessagePack to JSON: binary as an array of byte values, extension
    /// types as `{"ext": type, "data": [...]}`, map keys that are not strings as their JSON
    /// text).
    ///
    /// Errors: [`Error::NoSuchKey`] when nothing is stored there, [`Error::Namespace`] when the
    /// namespace is not known at all (see [`known_namespaces`](Self::known_namespaces)),
    /// [`Error::ForeignValue`] for bytes not written by this crate. An envelope of this crate
    /// that cannot be read in full (a newer format, corrupt payload) is an `Ok` whose
    /// [`Inspection::problem`] says why.
    pub async fn inspect(&self, namespace: &str, key: &str) -> Result<Inspection> {
        check_namespace(namespace)?;
        let redis_key = self.keys().value_key(namespace, key);
        let raw = self
            .link
            .raw(&redis_key)
            .await
            .map_err(|e| e.into_error("inspect"))?;
        let Some(raw) = raw else {
            self.require_known(namespace).await?;
            return Err(Error::NoSuchKey(redis_key));
        };
        if raw.bytes.first() != Some(&codec::MAGIC) {
            return Err(Error::ForeignValue(redis_key));
        }
        let mut seen = read_envelope(&raw.bytes);
        seen.redis_key = redis_key;
        seen.pttl = raw.pttl_ms.map(Duration::from_millis);
        Ok(seen)
    }

    /// Counts the keys of every namespace by `SCAN` (1000 keys a page, never `KEYS`), and
    /// estimates their memory by sampling: `MEMORY USAGE` of the first
    /// [`memory_sample`](Self::with_memory_sample) keys the scan returns per namespace, scaled
    /// to the namespace's key count. The crate's own bookkeeping keys (`{prefix}:_tc:...`:
    /// the version counter, tag sets, locks) are counted apart, not in any namespace.
    ///
    /// Keys written or expiring during the scan may be counted or not (`SCAN` guarantees only
    /// the keys present throughout).
    pub async fn census(&self) -> Result<Census> {
        let mut census = self.scan_all(self.memory_sample).await?;
        for ns in census.namespaces.iter_mut() {
            let samples = std::mem::take(&mut ns.samples);
            let sizes = self
                .link
                .memory_usage(&samples)
                .await
                .map_err(|e| e.into_error("census"))?;
            let sizes: Vec<u64> = sizes.into_iter().flatten().collect();
            ns.memory_sampled_keys = sizes.len() as u64;
            ns.memory_sampled_bytes = sizes.iter().sum();
            ns.memory_estimate_bytes = (ns.memory_sampled_keys > 0).then(|| {
                let scaled = u128::from(ns.memory_sampled_bytes) * u128::from(ns.keys)
                    / u128::from(ns.memory_sampled_keys);
                u64::try_from(scaled).unwrap_or(u64::MAX)
            });
        }
        Ok(census)
    }

    /// The namespaces Redis holds anything of under the prefix: value keys, a floor (a past
    /// `invalidate_namespace`), tag sets or floors, load locks. Sorted.
    pub async fn known_namespaces(&self) -> Result<Vec<String>> {
        let census = self.scan_all(0).await?;
        Ok(census.namespaces.into_iter().map(|n| n.name).collect())
    }

    /// Invalidates a whole namespace on every node, through the library's own path
    /// ([`Namespace::invalidate_namespace`](crate::Namespace::invalidate_namespace)): one
    /// script raises the namespace's floor and publishes the invalidation, so every node
    /// drops its L1 copies. Strict: `Err(Unavailable)` if Redis did not take it.
    /// `Err(Namespace)` for a namespace not known in Redis (a typo must not create a floor).
    pub async fn flush_namespace(&self, namespace: &str) -> Result<()> {
        self.require_known(namespace).await?;
        let node = self.node(&[namespace])?;
        node.namespace::<str, ()>(namespace)?
            .invalidate_namespace()
            .await
    }

    /// Invalidates every value carrying `tag`, in `namespace` or (`None`) in every known
    /// namespace, through the library's own path
    /// ([`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag)): tombstones,
    /// tag floor and one message, so every node drops its L1 copies. Returns how many keys the
    /// tag listed.
    pub async fn flush_tag(&self, tag: &str, namespace: Option<&str>) -> Result<usize> {
        crate::key::validate_tags(&[tag])?;
        match namespace {
            Some(ns) => {
                self.require_known(ns).await?;
                let node = self.node(&[ns])?;
                node.namespace::<str, ()>(ns)?.invalidate_tag(tag).await
            }
            None => {
                let known = self.known_namespaces().await?;
                let names: Vec<&str> = known.iter().map(String::as_str).collect();
                if names.is_empty() {
                    return Err(Error::Namespace(format!(
                        "no namespace found under prefix {:?}",
                        self.prefix
                    )));
                }
                self.node(&names)?.invalidate_tag(tag).await
            }
        }
    }

    /// What Redis reports about itself, as [`TieredCache::redis_info`] does.
    pub async fn redis_info(&self) -> Result<super::RedisInfo> {
        super::read_info(self.link.l2()).await
    }

    /// The bus channel [`watch`](Self::watch) subscribes to (`{prefix}:_tc:inv:db{N}`).
    pub fn channel(&self) -> &str {
        self.keys().channel()
    }

    /// Subscribes to the invalidation bus. Returns once Redis has confirmed the subscription:
    /// every message published from then on is yielded by [`Watch::next`].
    pub async fn watch(&self) -> Result<Watch> {
        Ok(Watch {
            tap: self.link.tap().await?,
            malformed: 0,
        })
    }

    /// Checks Redis now: a PING (timed), how many connections listen on the bus channel (the
    /// nodes, plus any watcher), and whether a subscription to it is confirmed.
    pub async fn health(&self) -> AdminHealth {
        let l2 = self.link.l2();
        let start = Instant::now();
        let redis_reachable = l2.ping().await;
        let ping = redis_reachable.then(|| start.elapsed());
        let listeners = match redis_reachable {
            true => self.link.listeners().await.ok(),
            false => None,
        };
        let subscribed = redis_reachable && self.link.tap().await.is_ok();
        AdminHealth {
            redis_reachable,
            ping,
            subscribed,
            listeners,
            breaker: l2.breaker().state(),
        }
    }

    /// A node of the fleet for one invalidation: the given namespaces, writes strict (a tool
    /// must say when Redis did not take it, not queue it in a process about to exit).
    fn node(&self, namespaces: &[&str]) -> Result<TieredCache> {
        let mut b = (self.builder.clone())
            .l2_timeout(self.timeout)
            .connect_timeout(self.timeout)
            .strict_writes(true);
        for ns in namespaces {
            b = b.namespace(*ns, NamespacePolicy::new(self.tombstone_ttl));
        }
        b.build()
    }

    /// `Ok` when Redis holds anything of the namespace; else `Err(Namespace)` naming the known
    /// ones.
    async fn require_known(&self, namespace: &str) -> Result<()> {
        check_namespace(namespace)?;
        if self.has_trace_of(namespace).await? {
            return Ok(());
        }
        // Unknown: the full scan, to name the namespaces that do exist.
        let known = self.known_namespaces().await?;
        if known.iter().any(|n| n == namespace) {
            return Ok(());
        }
        let list = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        Err(Error::Namespace(format!(
            "unknown namespace {namespace:?} under prefix {:?}: Redis holds no key, floor or \
             tag of it (known: {list})",
            self.prefix
        )))
    }
}

/// A namespace name as the library accepts it.
fn check_namespace(namespace: &str) -> Result<()> {
    validate_namespace(namespace).map_err(Error::Namespace)
}

/// The result of [`Admin::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminHealth {
    /// Redis answered a PING within the timeout.
    pub redis_reachable: bool,
    /// How long that PING took.
    pub ping: Option<Duration>,
    /// A subscription to the bus channel was confirmed.
    pub subscribed: bool,
    /// Connections subscribed to the bus channel (`PUBSUB NUMSUB`): the listening nodes.
    pub listeners: Option<u64>,
    /// The handle's circuit breaker after these calls.
    pub breaker: BreakerState,
}
