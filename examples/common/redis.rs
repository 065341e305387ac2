//! How every example finds Redis: the cache's own `REDIS_*` variables if any address is set
//! (`REDIS_URL`, or `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`, with `REDIS_SSL`, `REDIS_PASSWORD`,
//! `REDIS_MAX_CONNECTIONS` and the rest read by the library, see `docs/configuration.md`); else
//! a private `redis-server` started for the run (stopped when the example exits); else none, and
//! the example says so and runs L1-only.

#[path = "../../tests/support/server.rs"]
mod server;

/// Where this run's Redis is.
pub enum RedisMode {
    /// Set in the environment: the cache reads it there. Holds where, safe to print.
    External(String),
    /// A private `redis-server` on a free loopback port, for this run.
    Private(server::RedisServer),
    /// No Redis: why not.
    None(String),
}

impl RedisMode {
    /// Looks for Redis as described above, and prints what it found.
    pub fn discover() -> Self {
        let mode = match from_environment() {
            Some(place) => RedisMode::External(place),
            None => match server::RedisServer::try_start() {
                Ok(s) => RedisMode::Private(s),
                Err(e) => RedisMode::None(e),
            },
        };
        match &mode {
            RedisMode::External(place) => println!("Redis: {place}"),
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

    /// The URL to build caches with (an unreachable one when there is no Redis); `None`: build
    /// without `redis_url`, so the cache reads the `REDIS_*` variables itself.
    pub fn url(&self) -> Option<String> {
        match self {
            RedisMode::External(_) => None,
            RedisMode::Private(s) => Some(s.url()),
            RedisMode::None(_) => Some("redis://127.0.0.1:1".to_string()),
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

impl std::fmt::Display for RedisMode {
    /// Where Redis is, with no password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisMode::External(place) => f.write_str(place),
            RedisMode::Private(s) => write!(f, "the private redis-server on {}", s.url()),
            RedisMode::None(why) => write!(f, "no Redis ({why})"),
        }
    }
}

/// Where the environment puts Redis, redacted; `None` when it names no address.
fn from_environment() -> Option<String> {
    let var = |v: &str| std::env::var(v).ok().filter(|s| !s.trim().is_empty());
    if let Some(url) = var("REDIS_URL") {
        return Some(format!(
            "{} (from REDIS_URL)",
            tiered_cache::config::redact_url(&url)
        ));
    }
    let parts = ["REDIS_HOST", "REDIS_PORT", "REDIS_DB"];
    let set: Vec<String> = (parts.iter())
        .filter_map(|v| var(v).map(|value| format!("{v}={value}")))
        .collect();
    (!set.is_empty()).then(|| format!("{} (read by the cache)", set.join(" ")))
}
