//! Test support: a private `redis-server` per test, on a free loopback port, stopped on drop.
//!
//! Tests never use a shared Redis: each one owns its server so it can kill, pause and restart
//! it. Waiting is always a poll against a deadline, never a bare sleep.
#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn redis_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("REDIS_SERVER_BIN") {
        return p.into();
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!(
        "redis-server not found: the tests start their own. Install it (Debian: \
         `apt-get install redis-server`), or run the README's test command, which installs it, \
         or point REDIS_SERVER_BIN at the binary."
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tiered-cache-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--enable-debug-command", "local", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("could not start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not answer within 10 s", self.port);
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server: no goodbye to clients, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain connection for the test's own commands.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> T {
        let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn()).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// A cache on `server` with the namespaces the tests use, subscribed before it is returned.
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
        .namespace("rate", NamespacePolicy::new(Duration::from_secs(90)))
        .namespace("quote", NamespacePolicy::new(Duration::from_secs(60)))
        .heartbeat(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(100));
    let cache = tweak(b).build().expect("build");
    let c = cache.clone();
    eventually("subscribed", PATIENCE, || {
        let c = c.clone();
        async move { c.is_subscribed() }
    })
    .await;
    cache
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
    eventually(&format!("{n} invalidations applied in {ns}"), PATIENCE, || async {
        applied(cache, ns) >= n
    })
    .await;
}
