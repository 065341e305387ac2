//! The [`Admin`] handle: what an operator asks of a fleet's Redis, without being a node.

use crate::breaker::BreakerState;
use crate::cache::TieredCache;
use crate::codec;
use crate::config::NamespacePolicy;
use crate::error::{Error, Result};
use crate::key::{validate_name, validate_namespace, KeySpace, SEPARATOR};
use crate::l2::admin::{AdminLink, BusTap};
use crate::wire::{self, Scope};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

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

    /// A handle on the caches under `prefix` in the Redis at `url`. `Err(Config)` for a URL
    /// that does not parse or a prefix the library would refuse. Does not connect.
    pub fn new(url: &str, prefix: &str) -> Result<Self> {
        validate_name("prefix", prefix).map_err(Error::Config)?;
        let timeout = Self::DEFAULT_TIMEOUT;
        Ok(Self {
            link: AdminLink::new(url, prefix, timeout, timeout)?,
            url: url.to_owned(),
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
        self.link = AdminLink::new(&self.url, &self.prefix, timeout, timeout)?;
        self.timeout = timeout;
        Ok(self)
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

    /// The Redis URL this handle talks to.
    pub fn url(&self) -> &str {
        &self.url
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
        let mut b = TieredCache::builder()
            .redis_url(self.url.as_str())
            .prefix(self.prefix.as_str())
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

    /// The cheap proofs that Redis knows a namespace, first: its floor in the meta hash, or any
    /// value key (a `SCAN` of the namespace's pattern that stops at the first key found).
    async fn has_trace_of(&self, namespace: &str) -> Result<bool> {
        let floor = KeySpace::floor_field(namespace);
        let meta = self.link.meta().await.map_err(|e| e.into_error("admin"))?;
        if meta.iter().any(|(field, _)| *field == floor) {
            return Ok(true);
        }
        let pattern = self.keys().value_key(namespace, "*");
        let mut cursor = 0;
        loop {
            let page = self
                .link
                .scan(cursor, &pattern)
                .await
                .map_err(|e| e.into_error("admin"))?;
            if !page.keys.is_empty() {
                return Ok(true);
            }
            cursor = page.cursor;
            if cursor == 0 {
                return Ok(false);
            }
        }
    }

    /// One full `SCAN` of the prefix plus the meta hash; keeps up to `sample` value keys per
    /// namespace.
    async fn scan_all(&self, sample: usize) -> Result<Census> {
        let mut by_ns: BTreeMap<String, NamespaceCensus> = BTreeMap::new();
        let mut census = Census::default();
        let pattern = format!("{}{SEPARATOR}*", self.prefix);
        let mut cursor = 0;
        loop {
            let page = self
                .link
                .scan(cursor, &pattern)
                .await
                .map_err(|e| e.into_error("census"))?;
            for key in page.keys {
                match classify(&self.prefix, &key) {
                    Class::Value(ns) => {
                        let entry = by_ns.entry(ns.to_owned()).or_insert_with(|| named(ns));
                        entry.keys += 1;
                        if entry.samples.len() < sample {
                            entry.samples.push(key.clone());
                        }
                    }
                    Class::Internal(ns, kind) => {
                        census.internal_keys += 1;
                        if let Some(ns) = ns {
                            let entry = by_ns.entry(ns.to_owned()).or_insert_with(|| named(ns));
                            entry.tag_sets += u64::from(kind == "tag");
                        }
                    }
                    Class::Other => census.other_keys += 1,
                }
            }
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        let meta = self.link.meta().await.map_err(|e| e.into_error("census"))?;
        for (field, value) in meta {
            let number = value.parse::<u64>().ok();
            match field.split_once(SEPARATOR) {
                Some(("floor", ns)) if check_namespace(ns).is_ok() => {
                    by_ns
                        .entry(ns.to_owned())
                        .or_insert_with(|| named(ns))
                        .floor = number;
                }
                _ if field == "version" => census.version = number,
                _ if field == "epoch" => census.epoch = number,
                _ => {}
            }
        }
        census.namespaces = by_ns.into_values().collect();
        Ok(census)
    }
}

fn named(ns: &str) -> NamespaceCensus {
    NamespaceCensus {
        name: ns.to_owned(),
        ..NamespaceCensus::default()
    }
}

/// A namespace name as the library accepts it.
fn check_namespace(namespace: &str) -> Result<()> {
    validate_namespace(namespace).map_err(Error::Namespace)
}

/// What a Redis key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
enum Class<'a> {
    /// `{prefix}:{ns}:{key}`.
    Value(&'a str),
    /// `{prefix}:_tc:...`: bookkeeping, of a namespace for tag sets, tag floors and locks.
    Internal(Option<&'a str>, &'a str),
    /// Anything else (not written by the library).
    Other,
}

fn classify<'a>(prefix: &str, key: &'a str) -> Class<'a> {
    let Some(rest) = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(SEPARATOR))
    else {
        return Class::Other;
    };
    let Some((ns, rest)) = rest.split_once(SEPARATOR) else {
        return Class::Other;
    };
    if ns == "_tc" {
        let mut parts = rest.splitn(3, SEPARATOR);
        let kind = parts.next().unwrap_or("");
        let owner = match (kind, parts.next(), parts.next()) {
            ("tag" | "tagfloor" | "lock", Some(ns), Some(_)) if check_namespace(ns).is_ok() => {
                Some(ns)
            }
            _ => None,
        };
        return Class::Internal(owner, kind);
    }
    match check_namespace(ns) {
        Ok(()) => Class::Value(ns),
        Err(_) => Class::Other,
    }
}

/// A stored value, as [`Admin::inspect`] found it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Inspection {
    /// The Redis key read (`{prefix}:{namespace}:{key}`).
    pub redis_key: String,
    /// The envelope's size in Redis, in bytes.
    pub stored_bytes: usize,
    /// The envelope format (1 today).
    pub format: u8,
    /// The envelope's flags.
    pub flags: EnvelopeFlags,
    /// The version of the write that stored it; `None` if the envelope is cut short.
    pub version: Option<u64>,
    /// When the value stops being fresh, unix milliseconds, if the writer said (Redis may
    /// keep it longer, for fail-safe).
    pub expires_at_ms: Option<u64>,
    /// Time left before Redis drops the key; `None` when it has no expiry.
    pub pttl: Option<Duration>,
    /// The payload as a generic value; `None` for a tombstone, a cached "not found", or a
    /// payload that could not be read (see [`problem`](Self::problem)).
    pub value: Option<serde_json::Value>,
    /// Why the envelope could not be read in full, if it could not.
    pub problem: Option<String>,
}

/// The flags byte of an envelope (see the codec's layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EnvelopeFlags {
    /// The byte as stored.
    pub raw: u8,
    /// An invalidated key: nothing to serve.
    pub tombstone: bool,
    /// The payload is lz4-compressed.
    pub compressed: bool,
    /// An expiry (fresh-until time) is present.
    pub expiry: bool,
    /// A cached "not found".
    pub absent: bool,
}

impl EnvelopeFlags {
    fn from_byte(raw: u8) -> Self {
        Self {
            raw,
            tombstone: raw & codec::FLAG_TOMBSTONE != 0,
            compressed: raw & codec::FLAG_COMPRESSED != 0,
            expiry: raw & codec::FLAG_EXPIRY != 0,
            absent: raw & codec::FLAG_ABSENT != 0,
        }
    }
}

/// Reads an envelope that starts with the magic byte, as far as it goes. Never panics.
fn read_envelope(bytes: &[u8]) -> Inspection {
    let flags = bytes.get(2).copied().unwrap_or(0);
    let mut seen = Inspection {
        redis_key: String::new(),
        stored_bytes: bytes.len(),
        format: bytes.get(1).copied().unwrap_or(0),
        flags: EnvelopeFlags::from_byte(flags),
        version: bytes
            .get(3..codec::HEADER_LEN)
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes),
        expires_at_ms: None,
        pttl: None,
        value: None,
        problem: None,
    };
    let problem = match read_body(bytes, &mut seen) {
        Ok(()) => return seen,
        Err(p) => p,
    };
    seen.problem = Some(problem);
    seen
}

fn read_body(bytes: &[u8], seen: &mut Inspection) -> std::result::Result<(), String> {
    let opened = codec::open(bytes).map_err(|e| match e {
        codec::DecodeError::UnknownFormat if seen.format != codec::FORMAT => format!(
            "envelope format {} is unknown to this build (it reads {})",
            seen.format,
            codec::FORMAT
        ),
        codec::DecodeError::UnknownFormat => {
            format!("flags {:#04x} unknown to this build", seen.flags.raw)
        }
        codec::DecodeError::Foreign => "not an envelope of this crate".into(),
        _ => "envelope cut short".into(),
    })?;
    let codec::Opened::Value {
        expires_ms,
        payload,
        ..
    } = opened
    else {
        return Ok(()); // a tombstone
    };
    seen.expires_at_ms = expires_ms;
    let plain = payload
        .bytes()
        .map_err(|e| format!("compressed payload: {e}"))?;
    let Some(payload) = plain else {
        return Ok(()); // a cached "not found"
    };
    let mut reader = &payload[..];
    let value = rmpv::decode::read_value(&mut reader)
        .map_err(|e| format!("payload is not MessagePack: {e}"))?;
    seen.value = Some(to_json(value));
    if !reader.is_empty() {
        return Err(format!("{} bytes after the payload", reader.len()));
    }
    Ok(())
}

/// MessagePack to JSON, losing nothing a JSON reader could need: integers stay exact, binary
/// becomes an array of byte values (serde_json's own form for bytes).
fn to_json(value: rmpv::Value) -> serde_json::Value {
    use rmpv::Value as M;
    use serde_json::Value as J;
    match value {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => J::from(u),
            (None, Some(s)) => J::from(s),
            (None, None) => J::Null,
        },
        // An f32 widened to f64 shows the digits the f32 really holds (0.1f32 is
        // 0.10000000149011612), which is what the cache stores.
        M::F32(f) => float(f64::from(f)),
        M::F64(f) => float(f),
        M::String(s) => match s.into_str() {
            Some(s) => J::String(s),
            None => J::Null,
        },
        M::Binary(b) => bytes(&b),
        M::Array(items) => J::Array(items.into_iter().map(to_json).collect()),
        M::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) if s.is_str() => s.into_str().unwrap_or_default(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        M::Ext(kind, data) => serde_json::json!({ "ext": kind, "data": bytes(&data) }),
    }
}

/// A float; NaN and infinities, which JSON cannot hold, as their names.
fn float(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(f.to_string()))
}

fn bytes(b: &[u8]) -> serde_json::Value {
    serde_json::Value::Array(b.iter().map(|x| serde_json::Value::from(*x)).collect())
}

/// Key counts and memory per namespace, from [`Admin::census`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Census {
    /// Per namespace, sorted by name.
    pub namespaces: Vec<NamespaceCensus>,
    /// The crate's own bookkeeping keys (`{prefix}:_tc:...`), not counted in any namespace.
    pub internal_keys: u64,
    /// Keys under the prefix that the library did not write (no namespace part).
    pub other_keys: u64,
    /// The shared version counter: how many writes and invalidations were published.
    pub version: Option<u64>,
    /// The counter's incarnation (changes when Redis was flushed or restarted empty).
    pub epoch: Option<u64>,
}

impl Census {
    /// One namespace's figures.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceCensus> {
        self.namespaces.iter().find(|n| n.name == name)
    }
}

/// One namespace's keys in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceCensus {
    /// The namespace.
    pub name: String,
    /// Value keys (live values, cached "not found"s and tombstones alike).
    pub keys: u64,
    /// The version of its last whole-namespace invalidation, if any.
    pub floor: Option<u64>,
    /// Tag sets (one per tag with values written since its last invalidation).
    pub tag_sets: u64,
    /// Keys measured with `MEMORY USAGE`.
    pub memory_sampled_keys: u64,
    /// Their total, in bytes.
    pub memory_sampled_bytes: u64,
    /// The sample scaled to every key of the namespace; `None` when nothing was sampled.
    pub memory_estimate_bytes: Option<u64>,
    samples: Vec<String>,
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

/// A subscription to the invalidation bus, from [`Admin::watch`].
pub struct Watch {
    tap: BusTap,
    malformed: u64,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("malformed", &self.malformed)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The next message on the bus, heartbeats included. Messages that do not parse are
    /// skipped and counted ([`malformed`](Self::malformed)). `Err(Unavailable)` once the
    /// connection is lost.
    pub async fn next(&mut self) -> Result<BusEvent> {
        loop {
            let payload = self
                .tap
                .next()
                .await
                .ok_or_else(|| Error::unavailable("watch", None))?;
            match wire::decode(&payload) {
                Some(msg) => return Ok(BusEvent::from_message(&msg, codec::unix_ms())),
                None => self.malformed += 1,
            }
        }
    }

    /// The next invalidation (heartbeats skipped).
    pub async fn next_invalidation(&mut self) -> Result<BusEvent> {
        loop {
            let event = self.next().await?;
            if event.kind != BusEventKind::Heartbeat {
                return Ok(event);
            }
        }
    }

    /// Messages received that did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// What a bus message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEventKind {
    /// Some keys of one namespace were written or invalidated.
    Keys,
    /// A whole namespace was invalidated.
    Namespace,
    /// Keys of several namespaces at once: a tag invalidation.
    Tag,
    /// A node's heartbeat (carries the current version; invalidates nothing).
    Heartbeat,
}

impl BusEventKind {
    /// A short lowercase name: `keys`, `namespace`, `tag`, `heartbeat`.
    pub fn as_str(self) -> &'static str {
        match self {
            BusEventKind::Keys => "keys",
            BusEventKind::Namespace => "namespace",
            BusEventKind::Tag => "tag",
            BusEventKind::Heartbeat => "heartbeat",
        }
    }
}

/// What one message invalidates in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventTarget {
    /// The namespace.
    pub namespace: String,
    /// The keys; `None` for the whole namespace.
    pub keys: Option<Vec<String>>,
}

/// One message seen on the bus, from [`Watch::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusEvent {
    /// What it invalidates.
    pub kind: BusEventKind,
    /// The bus id of the node that published it.
    pub origin: u64,
    /// The version of the write (a heartbeat: the current version).
    pub version: u64,
    /// The incarnation of the version counter.
    pub epoch: u64,
    /// Per namespace, what it invalidates (empty for a heartbeat).
    pub targets: Vec<EventTarget>,
    /// When the publisher built it: its wall clock, unix milliseconds (a replayed write
    /// carries its replay time). `None` from a publisher of the older format without it.
    pub sent_ms: Option<u64>,
    /// When it was received here, unix milliseconds.
    pub received_ms: u64,
    /// `received_ms - sent_ms`: the invalidation's lag, as good as the clock sync between
    /// the publisher's host and this one. Zero when the publisher's clock is ahead; `None`
    /// without a send time.
    pub lag: Option<Duration>,
}

impl BusEvent {
    fn from_message(msg: &wire::Incoming<'_>, received_ms: u64) -> Self {
        let owned = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect();
        let (kind, targets) = match &msg.scope {
            Scope::Keys(keys) => (
                BusEventKind::Keys,
                vec![EventTarget {
                    namespace: msg.namespace.to_owned(),
                    keys: Some(owned(keys)),
                }],
            ),
            Scope::Namespace => (
                BusEventKind::Namespace,
                vec![EventTarget {
                    namespace: msg.namespace.to_owned(),
                    keys: None,
                }],
            ),
            Scope::Multi(sections) => (
                BusEventKind::Tag,
                sections
                    .iter()
                    .map(|(ns, keys)| EventTarget {
                        namespace: (*ns).to_owned(),
                        keys: Some(owned(keys)),
                    })
                    .collect(),
            ),
            Scope::Heartbeat { .. } => (BusEventKind::Heartbeat, Vec::new()),
        };
        BusEvent {
            kind,
            origin: msg.origin,
            version: msg.version,
            epoch: msg.epoch,
            targets,
            sent_ms: msg.sent_ms,
            received_ms,
            lag: msg
                .sent_ms
                .map(|sent| Duration::from_millis(received_ms.saturating_sub(sent))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_their_layout() {
        assert_eq!(classify("v1", "v1:rate:CNGN:USD"), Class::Value("rate"));
        assert_eq!(classify("v1", "v1:_tc:meta"), Class::Internal(None, "meta"));
        assert_eq!(
            classify("v1", "v1:_tc:tag:rate:W1"),
            Class::Internal(Some("rate"), "tag")
        );
        assert_eq!(
            classify("v1", "v1:_tc:lock:quote:a:b"),
            Class::Internal(Some("quote"), "lock")
        );
        assert_eq!(classify("v1", "v10:rate:x"), Class::Other);
        assert_eq!(classify("v1", "v1:plain"), Class::Other);
        assert_eq!(classify("v1", "v1:bad ns:x"), Class::Other);
    }

    #[test]
    fn envelopes_are_read_as_far_as_they_go() {
        let e = codec::encode(Some(&("a", 7u32)), 1234, None).unwrap();
        let bytes = codec::envelope(9, &e);
        let seen = read_envelope(&bytes);
        assert_eq!(seen.version, Some(9));
        assert_eq!(seen.expires_at_ms, Some(1234));
        assert_eq!(seen.value, Some(serde_json::json!(["a", 7])));
        assert_eq!(seen.problem, None);
        // Every prefix reads without panicking, and says what is wrong.
        for n in 1..bytes.len() {
            assert!(read_envelope(&bytes[..n]).problem.is_some(), "prefix {n}");
        }
        let mut future = bytes.clone();
        future[1] = 2;
        assert!(read_envelope(&future).problem.unwrap().contains("format 2"));
    }
}
