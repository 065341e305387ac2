//! The Redis key layout, from the crate's own `KeySpace` (feature `test-util`): the one place
//! tests get key, channel and meta field names from. The free functions are for the default
//! prefix on database 0, what every test node uses unless it says otherwise.
#![allow(dead_code, unused_imports)]

pub use tiered_cache::testing::{Keys, EPOCH_FIELD, LOG_FIELD, VERSION_FIELD};

/// The names of a cache with the default prefix on database 0.
pub fn default() -> Keys {
    Keys::new(tiered_cache::DEFAULT_PREFIX, 0)
}

/// The names of a cache with `prefix` on database 0.
pub fn with_prefix(prefix: &str) -> Keys {
    Keys::new(prefix, 0)
}

/// `{prefix}:{namespace}:{key}`.
pub fn value(ns: &str, key: &str) -> String {
    default().value_key(ns, key)
}

/// What every value key of `ns` starts with.
pub fn value_prefix(ns: &str) -> String {
    value(ns, "")
}

/// The meta hash (version counter, epoch, floors).
pub fn meta() -> String {
    default().meta_key()
}

pub fn log() -> String {
    default().log_key()
}

/// The meta hash field holding `ns`'s floor.
pub fn floor_field(ns: &str) -> String {
    Keys::floor_field(ns)
}

/// The invalidation bus's channel.
pub fn channel() -> String {
    default().channel()
}

/// The set of keys tagged `tag` in `ns`.
pub fn tag(ns: &str, tag: &str) -> String {
    default().tag_key(ns, tag)
}

/// The floor of `tag` in `ns`.
pub fn tag_floor(ns: &str, tag: &str) -> String {
    default().tag_floor_key(ns, tag)
}

/// The fleet-wide load lock of `key` in `ns`.
pub fn lock(ns: &str, key: &str) -> String {
    default().lock_key(ns, key)
}

/// A pattern matching every bookkeeping key.
pub fn bookkeeping_pattern() -> String {
    default().bookkeeping_pattern()
}
