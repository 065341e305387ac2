//! Errors, shaped around what the caller has to decide.
//!
//! A caller of a cache mostly needs to tell three situations apart: the shared tier is
//! unreachable (degrade, retry later), its own loader failed (its error, handed back), or the
//! configuration is wrong (fix the code). [`Error`] is non-exhaustive and comes with predicates
//! for each, in the style of `redis::RedisError`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A boxed error that can be shared between the waiters of one load.
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in `tiered-cache`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The builder's configuration was rejected. Only [`build`](crate::TieredCacheBuilder::build)
    /// returns it.
    Config(String),
    /// Redis (the L2 tier) could not be reached or did not answer within the L2 timeout. The
    /// local tier has still been updated or evicted, so this node stays correct; other nodes did
    /// not hear of the change.
    Unavailable {
        /// The operation that failed, e.g. `"set"`.
        op: &'static str,
        /// The underlying cause, if any.
        source: Option<SharedError>,
    },
    /// The loader passed to `get_or_load` returned an error (or panicked).
    Loader(SharedError),
    /// The loader ran past the namespace's hard timeout and was abandoned, with no stale value
    /// to serve instead (see `NamespacePolicy::hard_timeout`).
    LoaderTimeout(std::time::Duration),
    /// The key's source reported no value, and that "not found" is cached (see
    /// `Namespace::get_or_load_optional`); `get_or_load` returns it rather than call its loader
    /// again within the namespace's negative TTL.
    NotFound,
    /// A value could not be serialized for the shared tier.
    Encode(SharedError),
    /// A namespace was asked for that is not configured, or with other key/value types than
    /// the ones it was first opened with.
    Namespace(String),
    /// A tag name was rejected. Tags become part of Redis key names, so they follow the
    /// namespace rules: 1 to 64 bytes of `[A-Za-z0-9_.-]`. Nothing was read or written.
    InvalidTag(String),
    /// Per-call options were rejected by [`Namespace::with`](crate::Namespace::with): a TTL
    /// this namespace cannot honour. Nothing was read or written.
    InvalidOptions(String),
    /// The Redis key (named here) holds bytes this crate did not write: no envelope magic byte.
    /// Returned by tooling that reads raw values (`Admin::inspect`); the cache itself reads such
    /// a value as a miss.
    ForeignValue(String),
    /// Nothing is stored under the Redis key named here. Returned by tooling that reads raw
    /// values (`Admin::inspect`).
    NoSuchKey(String),
}

impl Error {
    /// True when the configuration was rejected at build time.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }

    /// True when Redis was unreachable or too slow: degrade, do not fail the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// True when the caller's own loader failed or timed out.
    pub fn is_loader(&self) -> bool {
        matches!(self, Error::Loader(_) | Error::LoaderTimeout(_))
    }

    /// True when a cached "not found" answered the call.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound)
    }

    /// True when a tag name was rejected (see [`Error::InvalidTag`]).
    pub fn is_invalid_tag(&self) -> bool {
        matches!(self, Error::InvalidTag(_))
    }

    /// True when per-call options were rejected (see [`Error::InvalidOptions`]).
    pub fn is_invalid_options(&self) -> bool {
        matches!(self, Error::InvalidOptions(_))
    }

    /// True when a value read by tooling was not written by this crate.
    pub fn is_foreign_value(&self) -> bool {
        matches!(self, Error::ForeignValue(_))
    }

    /// True when tooling found nothing stored under a key.
    pub fn is_no_such_key(&self) -> bool {
        matches!(self, Error::NoSuchKey(_))
    }

    /// The loader's error, when this is one.
    pub fn loader_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            Error::Loader(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    pub(crate) fn unavailable(op: &'static str, source: impl Into<Option<SharedError>>) -> Self {
        Error::Unavailable {
            op,
            source: source.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) => write!(f, "invalid cache configuration: {msg}"),
            Error::Unavailable { op, source: None } => write!(f, "redis unavailable during {op}"),
            Error::Unavailable {
                op,
                source: Some(e),
            } => write!(f, "redis unavailable during {op}: {e}"),
            Error::Loader(e) => write!(f, "loader failed: {e}"),
            Error::LoaderTimeout(t) => write!(f, "loader gave no answer within {t:?}"),
            Error::NotFound => f.write_str("not found (cached)"),
            Error::Encode(e) => write!(f, "value could not be encoded: {e}"),
            Error::Namespace(msg) => write!(f, "namespace error: {msg}"),
            Error::InvalidTag(msg) => write!(f, "invalid tag: {msg}"),
            Error::InvalidOptions(msg) => write!(f, "invalid options: {msg}"),
            Error::ForeignValue(key) => write!(
                f,
                "foreign value at {key:?}: not written by tiered-cache (no envelope magic byte)"
            ),
            Error::NoSuchKey(key) => write!(f, "no such key: {key:?}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Unavailable {
                source: Some(e), ..
            }
            | Error::Loader(e)
            | Error::Encode(e) => Some(e.as_ref() as &(dyn StdError + 'static)),
            _ => None,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
