//! Why an L2 call did not answer, and where its failure is counted.

use crate::error::{Error, SharedError};
use crate::metrics::NamespaceMetrics;
use std::sync::Arc;

/// Why an L2 call did not produce an answer.
#[derive(Debug)]
pub(crate) enum L2Error {
    /// Skipped: the breaker is open (Redis failed repeatedly), or half-open with its one probe
    /// already out.
    Skipped,
    /// No answer within the L2 timeout.
    Timeout,
    /// Redis answered with an error, or the connection failed.
    Redis(redis::RedisError),
}

impl std::fmt::Display for L2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            L2Error::Redis(e) => write!(f, "{}: {e}", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

impl L2Error {
    /// A short label for metrics and logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            L2Error::Skipped => "skipped",
            L2Error::Timeout => "timeout",
            L2Error::Redis(e) if e.is_io_error() || e.is_connection_dropped() => "connection",
            L2Error::Redis(_) => "server",
        }
    }

    /// True when Redis could not be reached or did not answer: skipped by the breaker, timed
    /// out, or failed at the connection level. (An error *reply* is not: Redis is there.) Such
    /// a call counts against the breaker, and a write that fails so is queued in the outbox.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self.kind(), "skipped" | "timeout" | "connection")
    }

    /// Redis answered with an error reply (READONLY, OOM, NOPERM, LOADING, MASTERDOWN, BUSY,
    /// a script error). It does not count against the breaker (Redis is there, and may
    /// serve reads), but a write or invalidation it refused is not done: it is queued and
    /// retried as if Redis were unreachable, never dropped.
    pub(crate) fn is_refused(&self) -> bool {
        !self.is_unreachable()
    }

    /// The error code of a refusal (`READONLY`, `OOM`...), for logs.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            L2Error::Redis(e) => e.code(),
            _ => None,
        }
    }

    pub(crate) fn into_error(self, op: &'static str) -> Error {
        let source: Option<SharedError> = match self {
            L2Error::Skipped => None,
            L2Error::Timeout => Some(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within the L2 timeout",
            ))),
            L2Error::Redis(e) => Some(Arc::new(e)),
        };
        Error::unavailable(op, source)
    }
}

pub(crate) type L2Result<T> = Result<T, L2Error>;

/// The namespace an L2 call is made for: its name, for its keys, and where the call's failure
/// is counted (`tiered_cache_l2_errors_total`). The tier counts every failed call made with a
/// target, once; calls made for no namespace (heartbeat, resync, health, the epoch check of
/// a value below the floor) count nowhere.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) name: &'a str,
    pub(crate) metrics: &'a NamespaceMetrics,
    /// For replays: a call the breaker skipped is not counted again (the operation was
    /// counted when it first failed).
    pub(crate) quiet_skips: bool,
}

impl Target<'_> {
    pub(crate) fn count(&self, e: &L2Error) {
        if !(self.quiet_skips && matches!(e, L2Error::Skipped)) {
            self.metrics.l2_failed(e.kind());
        }
    }
}
