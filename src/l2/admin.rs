//! The Redis side of tooling: server figures (`INFO`, `SLOWLOG LEN`), raw reads for
//! inspection, the key census (`SCAN`, `MEMORY USAGE`) and a listener on the bus channel.
//!
//! Every command goes through [`L2Tier::call`], so it is bounded by the tier's timeout and
//! passes its circuit breaker like any other L2 call. Nothing here writes: flushes go through
//! the library's own invalidation path (see `admin.rs`).

use super::{L2Result, L2Tier};

#[cfg(feature = "admin")]
pub(crate) use tooling::{AdminLink, BusTap};

impl L2Tier {
    /// The text of `INFO` (default sections).
    pub(crate) async fn info(&self) -> L2Result<String> {
        self.call(None, |mut c| async move {
            redis::cmd("INFO").query_async(&mut c).await
        })
        .await
    }

    /// `SLOWLOG LEN`. A server that refuses it (renamed or disabled on a managed Redis)
    /// answers `Ok(None)`: the figure is unknown, Redis is still there.
    pub(crate) async fn slowlog_len(&self) -> L2Result<Option<u64>> {
        let len = self
            .call(None, |mut c| async move {
                redis::cmd("SLOWLOG")
                    .arg("LEN")
                    .query_async::<u64>(&mut c)
                    .await
            })
            .await;
        match len {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_unreachable() => Err(e),
            Err(_) => Ok(None),
        }
    }
}

/// The connection the `Admin` handle uses (feature `admin`).
#[cfg(feature = "admin")]
mod tooling {
    use super::super::link::{Delivery, Messages, Pinger};
    use super::{L2Result, L2Tier};
    use crate::breaker::Breaker;
    use crate::error::{Error, Result};
    use crate::l2::L2Settings;
    use std::sync::Arc;
    use std::time::Duration;

    /// A raw value as stored, and its remaining life in Redis.
    pub(crate) struct RawEntry {
        pub(crate) bytes: Vec<u8>,
        /// `PTTL`: milliseconds left, or `None` when the key has no expiry.
        pub(crate) pttl_ms: Option<u64>,
    }

    /// One page of a `SCAN`.
    pub(crate) struct ScanPage {
        /// 0 when the scan is complete.
        pub(crate) cursor: u64,
        pub(crate) keys: Vec<String>,
    }

    /// A connection for tooling: an L2 tier of its own (timeout, breaker), which also opens
    /// the bus listener's dedicated connection.
    pub(crate) struct AdminLink {
        l2: L2Tier,
    }

    impl AdminLink {
        /// Checks the URL and prepares the connection; nothing is connected until the first call.
        pub(crate) fn new(endpoint: &crate::config::Endpoint, prefix: &str) -> Result<Self> {
            // A tool makes a handful of calls: one failure is enough to stop asking.
            let breaker = Breaker::new(1, Duration::from_millis(500), Arc::default());
            let settings = L2Settings {
                endpoint,
                prefix,
                reconnect_delay: Duration::from_millis(100),
                // As a node's: the tool's writes go through a node, but any script run here
                // logs the same way (a replay across an unlogged version would clear L1).
                replay_log: crate::config::TieredCacheBuilder::DEFAULT_REPLAY_LOG,
            };
            Ok(Self {
                l2: L2Tier::open(settings, breaker)?,
            })
        }

        pub(crate) fn l2(&self) -> &L2Tier {
            &self.l2
        }

        /// `GET` and `PTTL` of a Redis key, in one atomic round trip. `None`: no such key.
        pub(crate) async fn raw(&self, redis_key: &str) -> L2Result<Option<RawEntry>> {
            let (bytes, pttl): (Option<Vec<u8>>, i64) = self
                .l2
                .call(None, |mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("GET")
                        .arg(redis_key)
                        .cmd("PTTL")
                        .arg(redis_key)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(bytes.map(|bytes| RawEntry {
                bytes,
                pttl_ms: u64::try_from(pttl).ok(),
            }))
        }

        /// One page of `SCAN cursor MATCH pattern COUNT 1000` (never `KEYS`: the server stays
        /// responsive however many keys it holds).
        pub(crate) async fn scan(&self, cursor: u64, pattern: &str) -> L2Result<ScanPage> {
            let (cursor, keys): (u64, Vec<Vec<u8>>) = self
                .l2
                .call(None, |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let keys = keys
                .into_iter()
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .collect();
            Ok(ScanPage { cursor, keys })
        }

        /// `MEMORY USAGE` of each key, pipelined; `None` for a key gone meanwhile.
        pub(crate) async fn memory_usage(&self, keys: &[String]) -> L2Result<Vec<Option<u64>>> {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            self.l2
                .call(None, |mut c| async move {
                    let mut pipe = redis::pipe();
                    for k in keys {
                        pipe.cmd("MEMORY").arg("USAGE").arg(k);
                    }
                    pipe.query_async(&mut c).await
                })
                .await
        }

        /// Every field of the meta hash (version, epoch, namespace floors) with its value.
        pub(crate) async fn meta(&self) -> L2Result<Vec<(String, String)>> {
            let meta = self.l2.keys().meta_key();
            self.l2
                .call(None, |mut c| async move {
                    redis::cmd("HGETALL").arg(meta).query_async(&mut c).await
                })
                .await
        }

        /// How many connections are subscribed to the bus channel (`PUBSUB NUMSUB`): the nodes
        /// listening, plus any tool watching.
        pub(crate) async fn listeners(&self) -> L2Result<u64> {
            let channel = self.l2.keys().channel();
            let counts: Vec<(String, u64)> = self
                .l2
                .call(None, |mut c| async move {
                    redis::cmd("PUBSUB")
                        .arg("NUMSUB")
                        .arg(channel)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(counts.first().map_or(0, |(_, n)| *n))
        }

        /// Subscribes a dedicated connection to the bus channel; returns once Redis confirmed the
        /// subscription, so nothing published afterwards is missed.
        pub(crate) async fn tap(&self) -> Result<BusTap> {
            let sub = (self.l2.subscribe(TAP_BUFFER).await).map_err(|reason| {
                Error::unavailable(
                    "subscribe",
                    Some(Arc::new(std::io::Error::other(reason)) as _),
                )
            })?;
            Ok(BusTap {
                _pinger: sub.pinger,
                messages: sub.messages,
            })
        }
    }

    /// What a watcher holds of messages it has not read yet.
    const TAP_BUFFER: usize = 64 << 20;

    /// A subscription to the bus channel, yielding raw messages.
    pub(crate) struct BusTap {
        // Kept: dropping the sink would end the subscription.
        _pinger: Pinger,
        messages: Messages,
    }

    impl BusTap {
        /// The next message's payload; `None` once the connection is closed. Messages dropped
        /// for a full buffer (a watcher slower than the bus) are skipped.
        pub(crate) async fn next(&mut self) -> Option<Vec<u8>> {
            loop {
                match self.messages.next().await? {
                    Delivery::Message(m) => return Some(m.payload().to_vec()),
                    Delivery::Overflowed(_) => continue,
                }
            }
        }
    }
}
