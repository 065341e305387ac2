//! Figures and tooling for operators: what Redis says about itself
//! ([`TieredCache::redis_info`]), and, with the `admin` feature, the `Admin` handle behind
//! the `tiered-cache-admin` binary (inspect a stored value, count keys per namespace, flush a
//! namespace or a tag through the library's own invalidation path, watch the bus).

use crate::cache::TieredCache;
use crate::error::Result;

#[cfg(feature = "admin")]
mod tool;
/// Reads stored bytes as the admin tool's `inspect` does (for the fuzz target in `fuzz/`).
#[cfg(all(feature = "admin", feature = "test-util"))]
#[doc(hidden)]
pub fn inspect_bytes(bytes: &[u8]) -> Inspection {
    tool::read_envelope(bytes)
}
#[cfg(feature = "admin")]
pub use tool::{
    Admin, AdminHealth, BusEvent, BusEventKind, Census, EnvelopeFlags, EventTarget, Inspection,
    NamespaceCensus, Watch,
};

/// What Redis reports about itself: `INFO` (default sections) and `SLOWLOG LEN`.
///
/// Every figure is optional: a field missing from `INFO` (an older server, a managed Redis
/// that hides some, a command renamed away) reads as `None`, never as an error.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RedisInfo {
    /// `redis_version`, e.g. `"7.2.4"`.
    pub redis_version: Option<String>,
    /// Lookups of existing keys since the server started (or `CONFIG RESETSTAT`).
    pub keyspace_hits: Option<u64>,
    /// Lookups of missing keys since then.
    pub keyspace_misses: Option<u64>,
    /// `used_memory`, in bytes.
    pub used_memory: Option<u64>,
    /// `maxmemory`, in bytes; `Some(0)` means no limit.
    pub maxmemory: Option<u64>,
    /// `maxmemory_policy`, e.g. `"allkeys-lru"` (a cache wants an LRU or LFU policy, not
    /// `noeviction`, under which writes fail once memory is full).
    pub maxmemory_policy: Option<String>,
    /// Keys evicted for want of memory since the server started.
    pub evicted_keys: Option<u64>,
    /// `connected_clients`.
    pub connected_clients: Option<u64>,
    /// Entries in the slow log (`SLOWLOG LEN`).
    pub slowlog_len: Option<u64>,
}

impl RedisInfo {
    /// Reads the text of an `INFO` reply. Lines are `field:value`, sections start with `#`,
    /// line ends may be `\r\n`; unknown fields are skipped and unreadable numbers read as
    /// `None`. Never panics, whatever the text. (`slowlog_len` is not part of `INFO`.)
    pub fn parse(text: &str) -> Self {
        let mut info = RedisInfo::default();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.starts_with('#') {
                continue;
            }
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            let number = || value.trim().parse::<u64>().ok();
            let text = || Some(value.trim().to_owned()).filter(|v| !v.is_empty());
            match field.trim() {
                "redis_version" => info.redis_version = text(),
                "keyspace_hits" => info.keyspace_hits = number(),
                "keyspace_misses" => info.keyspace_misses = number(),
                "used_memory" => info.used_memory = number(),
                "maxmemory" => info.maxmemory = number(),
                "maxmemory_policy" => info.maxmemory_policy = text(),
                "evicted_keys" => info.evicted_keys = number(),
                "connected_clients" => info.connected_clients = number(),
                _ => {}
            }
        }
        info
    }

    /// `hits / (hits + misses)` over every lookup the server has answered (all clients, not
    /// only this cache), or `None` when either count is unknown or there were no lookups.
    pub fn hit_ratio(&self) -> Option<f64> {
        let (hits, misses) = (self.keyspace_hits?, self.keyspace_misses?);
        let total = hits.checked_add(misses).filter(|t| *t > 0)?;
        Some(hits as f64 / total as f64)
    }
}

impl TieredCache {
    /// What Redis reports about itself: hit ratio, memory and its limit and policy, evictions,
    /// clients, slow log length, version. Two commands (`INFO`, `SLOWLOG LEN`), each bounded by
    /// the L2 timeout and passing the circuit breaker like any other L2 call.
    ///
    /// `Err(Unavailable)` when Redis cannot be reached; a figure Redis does not report is
    /// `None`.
    ///
    /// ```no_run
    /// # async fn run(cache: tiered_cache::TieredCache) -> tiered_cache::Result<()> {
    /// let info = cache.redis_info().await?;
    /// if info.maxmemory_policy.as_deref() == Some("noeviction") {
    ///     eprintln!("Redis will refuse writes when full: use an LRU or LFU policy");
    /// }
    /// println!("server-wide hit ratio: {:?}", info.hit_ratio());
    /// # Ok(()) }
    /// ```
    pub async fn redis_info(&self) -> Result<RedisInfo> {
        read_info(&self.shared().l2).await
    }
}

/// `INFO` and `SLOWLOG LEN` through an L2 tier (the cache's, or a tool's).
pub(crate) async fn read_info(l2: &crate::l2::L2Tier) -> Result<RedisInfo> {
    let text = l2.info().await.map_err(|e| e.into_error("redis_info"))?;
    let mut info = RedisInfo::parse(&text);
    info.slowlog_len = l2
        .slowlog_len()
        .await
        .map_err(|e| e.into_error("redis_info"))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\n\r\n\
        # Clients\r\nconnected_clients:12\r\n\r\n# Memory\r\nused_memory:1048576\r\n\
        used_memory_human:1.00M\r\nmaxmemory:0\r\nmaxmemory_policy:allkeys-lru\r\n\r\n\
        # Stats\r\nevicted_keys:3\r\nkeyspace_hits:75\r\nkeyspace_misses:25\r\n\r\n\
        # Keyspace\r\ndb0:keys=10,expires=10,avg_ttl=1000\r\n";

    #[test]
    fn reads_the_fields_of_a_real_reply() {
        let info = RedisInfo::parse(SAMPLE);
        assert_eq!(info.redis_version.as_deref(), Some("7.2.4"));
        assert_eq!(info.connected_clients, Some(12));
        assert_eq!(info.used_memory, Some(1_048_576));
        assert_eq!(info.maxmemory, Some(0));
        assert_eq!(info.maxmemory_policy.as_deref(), Some("allkeys-lru"));
        assert_eq!(info.evicted_keys, Some(3));
        assert_eq!(info.keyspace_hits, Some(75));
        assert_eq!(info.keyspace_misses, Some(25));
        assert_eq!(info.hit_ratio(), Some(0.75));
        assert_eq!(info.slowlog_len, None);
    }

    #[test]
    fn missing_or_unreadable_fields_are_none() {
        let info = RedisInfo::parse("# Stats\nkeyspace_hits:lots\nevicted_keys:\nmaxmemory:-1\n");
        assert_eq!(info, RedisInfo::default());
        assert_eq!(info.hit_ratio(), None);
        // No lookups yet: no ratio rather than a division by zero.
        let idle = RedisInfo::parse("keyspace_hits:0\nkeyspace_misses:0\n");
        assert_eq!(idle.hit_ratio(), None);
        // Only one of the two counts: unknown.
        assert_eq!(RedisInfo::parse("keyspace_hits:5\n").hit_ratio(), None);
        // Counts that would overflow when added.
        let huge = format!("keyspace_hits:{}\nkeyspace_misses:1\n", u64::MAX);
        assert_eq!(RedisInfo::parse(&huge).hit_ratio(), None);
    }

    #[test]
    fn any_text_parses_without_panicking() {
        for text in [
            "",
            ":",
            "::::",
            "\r\n\r\n",
            "redis_version:",
            "used_memory:18446744073709551616",
            "keyspace_hits:1:2",
            "\u{0}\u{ffff}:é",
            "# only a section",
        ] {
            let _ = RedisInfo::parse(text);
        }
        // Every prefix of a real reply, including ones cut inside a multi-byte character.
        let odd = format!("{SAMPLE}redis_version:7.2.4-é\n");
        for n in (0..odd.len()).filter(|n| odd.is_char_boundary(*n)) {
            let _ = RedisInfo::parse(&odd[..n]);
        }
        // A value with a colon in it keeps everything after the first one.
        assert_eq!(
            RedisInfo::parse("maxmemory_policy:a:b")
                .maxmemory_policy
                .as_deref(),
            Some("a:b")
        );
    }
}
