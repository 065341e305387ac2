//! # tiered-cache
//!
//! A typed in-process L1 ([moka]) in front of a shared L2 (Redis), kept coherent across every
//! process that shares the Redis: each write is broadcast as an invalidation over Redis
//! pub/sub, in the same atomic step as the write itself.
//!
//! ```text
//!   caller ── Namespace<K, V> ──► L1 (moka, Arc<V>) ── miss ──► L2 (Redis, envelope) ── miss ──► loader
//!                 │                     ▲                            │
//!                 │ set / invalidate    │ evict                      │ one Lua script:
//!                 └─────────────────────┼──────────────────────────► write + version + PUBLISH
//!                                       │                            │
//!                               bus subscriber ◄──── invalidation channel ◄─┘  (other nodes)
//! ```
//!
//! ```no_run
//! use std::time::Duration;
//! use tiered_cache::{NamespacePolicy, TieredCache};
//!
//! # async fn run() -> Result<(), tiered_cache::Error> {
//! let cache = TieredCache::builder()
//!     .redis_url("redis://127.0.0.1:6379")
//!     .namespace("rate", NamespacePolicy::new(Duration::from_secs(90)))
//!     .build()?;
//! let rates = cache.namespace::<str, f64>("rate")?;
//! let usd = rates
//!     .get_or_load("CNGN:USD", || async { Ok::<_, std::io::Error>(0.00065) })
//!     .await?;
//! rates.set("CNGN:USD", 0.00066).await?; // every node's L1 drops its copy
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// The modules, top to bottom: each uses only the ones below it (data goes down, behaviour goes
// up through callbacks installed at build time). `tests/architecture.rs` enforces the order.
//
//   handle       admin, testing (feature `test-util`) · memo · namespace (+ its batch, tags, touch verbs) · cache, options
//   paths        read · write (with the outbox's routing and replay) · bus
//   engine       engine (plain data) · outbox (the queue) · space (one namespace's state)
//   tiers        l1 (the only moka user) · l2 (the only redis user) · flight · guard
//   support      breaker · config · wire · exact
//   base         codec · key · metrics, then error

/// Figures and tooling for operators: `redis_info`, and the `Admin` handle (feature `admin`).
pub mod admin;
/// The handle, its builder's `build()`, health and stats.
pub mod cache;
/// Memoized async functions: a namespace plus the function that fills it.
pub mod memo;
/// Typed namespace handles: the verbs (single key, batch, tags, sliding expiry).
pub mod namespace;
/// Per-call options: tags, strictness and TTL overrides, as values.
pub mod options;
/// The crate's formats (key layout, bus messages, value envelope) for its own integration
/// tests (feature `test-util`, on for every test build through the self dev-dependency). Not a
/// stable API.
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod testing;

/// The invalidation bus: applying messages, resync, the subscriber, heartbeat, watchdog and
/// external-write tracking.
mod bus;
/// The read path: L1, then Redis, then the loader, with every policy on the way.
mod read;
/// The write path: encode, route around the outbox, one script, fence, settle L1, degrade.
mod write;

/// The engine: the plain data shared by handles, paths and background tasks.
mod engine;
/// Writes and invalidations made while Redis is unreachable, queued to be replayed.
mod outbox;
/// A namespace's state: L1, generations, floor, flights, bypass, metric handles.
mod space;

/// Single flight: one load per key at a time in this process.
mod flight;
/// The generation guard against the load/invalidate race.
mod guard;
/// L1 tier: moka, decoded values (the only module that imports moka).
mod l1;
/// L2 tier: Redis, versioned envelopes, write+publish scripts (the only module that issues
/// Redis commands); records epochs and counts its own failures.
mod l2;

/// The circuit breaker in front of every Redis call.
mod breaker;
/// Configuration: the builder and per-namespace policies.
pub mod config;
/// Bit-exact serde forms (`Decimal` as 16 bytes), and what the default forms keep.
pub mod exact;
/// The bus's wire format (what write scripts publish, what the subscriber parses).
mod wire;

/// The value envelope around MessagePack: expiry, compression, "not found" entries.
mod codec;
/// Errors, with predicates for the caller's decision.
pub mod error;
/// Keys: the `CacheKey` trait and the Redis key layout.
pub mod key;
/// Metric handles and local counts.
mod metrics;

/// The README's examples are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "admin")]
pub use admin::Admin;
pub use admin::RedisInfo;
pub use breaker::BreakerState;
pub use cache::{Health, Stats, TieredCache};
pub use config::{NamespacePolicy, TieredCacheBuilder, DEFAULT_PREFIX, DEFAULT_REDIS_URL};
pub use error::{Error, Result, SharedError};
pub use key::CacheKey;
pub use l2::connect::ConnectionCensus;
pub use memo::Memoized;
pub use metrics::{LagPercentiles, NamespaceStats};
pub use namespace::{Batch, Namespace};
pub use options::EntryOptions;
pub use write::SourceWrite;
