//! Test support: a private `redis-server` per test (see `server.rs`), and polling helpers.
//! Waiting is always a poll against a deadline, never a bare sleep.
//!
//! What tests know of the crate's formats comes from here, and from the crate itself through
//! its `test-util` feature: Redis key names from `keys`, bus messages from `wire`, stored
//! values from `envelope`. No test spells a key, an offset or a message byte by hand.
#![allow(dead_code)]

pub mod envelope;
pub mod gate;
pub mod keys;
pub mod listener;
mod proxy;
mod server;
pub mod wire;
#[allow(unused_imports)]
pub use proxy::{Fault, FaultProxy, Target};
#[allow(unused_imports)]
pub use server::{acl_rules, client, free_port, secure, url_for_port, RedisServer};

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// An example's binary, built (or found up to date) in this test's target directory and
/// profile, with the default features (as a user runs it).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/..
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .arg("--quiet")
        .args(["--example", name])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "building example {name} failed:\n{text}"
    );
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// Polls `cond` until it holds, or panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long tests wait for something that normally takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The staleness bound of namespaces in tests that are not about the bound: far above what a
/// loaded machine can stall a heartbeat for. With the default 250 ms, a few hundred
/// milliseconds without CPU make a node stop trusting its L1 (correctly), and a test asserting
/// what L1 holds would fail for a reason it does not test. Losing the subscriber still
/// switches L1 off at once.
pub const LOOSE_BOUND: Duration = Duration::from_secs(3);

/// A cache on `server` with the namespaces the tests use (bound [`LOOSE_BOUND`]), subscribed
/// before it is returned.
pub async fn node(server: &RedisServer) -> tiered_cache::TieredCache {
    node_with(server, |b| b).await
}

pub async fn node_with(
    server: &RedisServer,
    tweak: impl FnOnce(tiered_cache::TieredCacheBuilder) -> tiered_cache::TieredCacheBuilder,
) -> tiered_cache::TieredCache {
    use tiered_cache::{NamespacePolicy, TieredCache};
    let b = TieredCache::builder()
        .redis_url(server.url())
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).staleness_bound(LOOSE_BOUND),
        )
        .namespace(
            "quote",
            NamespacePolicy::new(Duration::from_secs(60)).staleness_bound(LOOSE_BOUND),
        )
        .heartbeat(Duration::from_millis(50))
        .breaker_cooldown(Duration::from_millis(100))
        .outbox_retry(Duration::from_millis(100))
        .subscriber_backoff(Duration::from_millis(100));
    let cache = tweak(b).build().expect("build");
    let c = cache.clone();
    eventually("subscribed", PATIENCE, || {
        let c = c.clone();
        async move { c.is_subscribed() }
    })
    .await;
    cache
}

/// A node with the usual namespaces plus `fees`, an `unbounded_staleness()` one (L1 keeps
/// serving while Redis is down), and short timeouts, for tests that kill Redis.
pub async fn node_with_fees(server: &RedisServer) -> tiered_cache::TieredCache {
    node_with(server, |b| {
        b.namespace(
            "fees",
            tiered_cache::NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness(),
        )
        .l2_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(300))
    })
    .await
}

/// Invalidations from other nodes that `cache` has applied in namespace `ns`.
pub fn applied(cache: &tiered_cache::TieredCache, ns: &str) -> u64 {
    cache.stats().namespace(ns).unwrap().invalidations_applied
}

/// Waits until `cache` has applied at least `n` invalidations from other nodes in `ns`.
///
/// A read racing the invalidation of the very write it reads is (correctly) kept out of L1 by
/// the generation guard; tests that assert what L1 holds wait for the write's message first.
pub async fn await_applied(cache: &tiered_cache::TieredCache, ns: &str, n: u64) {
    eventually(
        &format!("{n} invalidations applied in {ns}"),
        PATIENCE,
        || async { applied(cache, ns) >= n },
    )
    .await;
}

/// The staleness bound the fault tests use.
pub const BOUND: Duration = Duration::from_millis(250);

/// A node with one strict namespace (`rate`, bound [`BOUND`]), a 50 ms heartbeat and short
/// timeouts, for the fault and staleness tests. Not waited on: call `eventually` yourself.
pub fn strict_node(url: &str) -> tiered_cache::TieredCache {
    tiered_cache::TieredCache::builder()
        .redis_url(url)
        .namespace(
            "rate",
            tiered_cache::NamespacePolicy::new(Duration::from_secs(90)).staleness_bound(BOUND),
        )
        .heartbeat(Duration::from_millis(50))
        .l2_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(300))
        .breaker_cooldown(Duration::from_millis(100))
        .outbox_retry(Duration::from_millis(100))
        .subscriber_backoff(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// The Redis key of `key` in namespace `ns` under the default prefix (see [`keys::value`]).
pub fn value_key(ns: &str, key: &str) -> String {
    keys::value(ns, key)
}

/// A numeric field of the meta hash (default prefix): [`keys::VERSION_FIELD`],
/// [`keys::EPOCH_FIELD`] or a [`keys::floor_field`].
pub fn meta_field(server: &RedisServer, field: &str) -> u64 {
    server.cmd(&[b"HGET", keys::meta().as_bytes(), field.as_bytes()])
}

/// The version counter (default prefix).
pub fn meta_version(server: &RedisServer) -> u64 {
    meta_field(server, keys::VERSION_FIELD)
}

/// Draws `n` versions without publishing anything, as if their messages were lost on the
/// way (default prefix). Returns the counter after.
pub fn draw_versions(server: &RedisServer, n: u64) -> u64 {
    server.cmd(&[
        b"HINCRBY",
        keys::meta().as_bytes(),
        keys::VERSION_FIELD.as_bytes(),
        n.to_string().as_bytes(),
    ])
}
