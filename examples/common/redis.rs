//! How every example finds Redis: `REDIS_URL` if set; else a private `redis-server` started for
//! the run (stopped when the example exits); else none, and the example says so and runs L1-only.

#[path = "../../tests/support/server.rs"]
mod server;

/// Where this run's Redis is.
pub enum RedisMode {
    /// `REDIS_URL`, as given.
    External(String),
    /// A private `redis-server` on a free loopback port, for this run.
    Private(server::RedisServer),
    /// No Redis: why not.
    None(String),
}

impl RedisMode {
    /// Looks for Redis as described above, and prints what it found.
    pub fn discover() -> Self {
        let mode = match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => RedisMode::External(url),
            _ => match server::RedisServer::try_start() {
                Ok(s) => RedisMode::Private(s),
                Err(e) => RedisMode::None(e),
            },
        };
        match &mode {
            RedisMode::External(url) => println!("Redis: {url} (from REDIS_URL)"),
            RedisMode::Private(s) => {
                println!("Redis: private redis-server on {} for this run", s.url())
            }
            RedisMode::None(why) => {
                println!("WARNING: no Redis: {why}");
                println!("WARNING: running L1-only: each node caches alone, nothing is shared or invalidated across nodes.");
            }
        }
        mode
    }

    /// The URL to build caches with (an unreachable one when there is no Redis).
    pub fn url(&self) -> String {
        match self {
            RedisMode::External(url) => url.clone(),
            RedisMode::Private(s) => s.url(),
            RedisMode::None(_) => "redis://127.0.0.1:1".to_string(),
        }
    }

    /// The staleness bound for this run's namespaces: the library's default, or none (L1
    /// serves each node alone) when there is no Redis to coordinate through.
    pub fn staleness_bound(&self) -> Option<std::time::Duration> {
        (!self.is_none()).then_some(tiered_cache::NamespacePolicy::DEFAULT_STALENESS_BOUND)
    }

    /// True when there is no Redis to share through.
    pub fn is_none(&self) -> bool {
        matches!(self, RedisMode::None(_))
    }
}
