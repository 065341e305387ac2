//! Keys: the [`CacheKey`] trait users implement, and the one place that turns
//! `(prefix, namespace, key)` into Redis key and channel names.
//!
//! Redis keys are `{prefix}:{namespace}:{key}`. Prefixes and namespaces are restricted to
//! `[A-Za-z0-9_.-]` (and a namespace may not start with `_`, which is reserved for the crate's
//! own bookkeeping keys), so everything after the second `:` is the key, verbatim: two distinct
//! `(namespace, key)` pairs can never map to the same Redis key, whatever the key contains.
//! Composite keys (tuples) escape `%` and `:` inside their parts, so `("a:b", "c")` and
//! `("a", "b:c")` stay distinct too.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::Arc;

/// The separator between prefix, namespace and key in Redis key names.
pub const SEPARATOR: char = ':';

/// The longest prefix or namespace name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A type with a stable, injective string form, usable as a cache key.
///
/// Implemented for strings, integers, `char`, `bool`, and tuples of up to four keys. For your own
/// types, write the form users would recognise in `redis-cli`:
///
/// ```
/// use tiered_cache::CacheKey;
///
/// struct CurrencyPair { base: &'static str, quote: &'static str }
///
/// impl CacheKey for CurrencyPair {
///     fn write_key(&self, out: &mut String) {
///         // `v1:rate:CNGN:USD`, as in the payments team's key table.
///         (self.base, self.quote).write_key(out)
///     }
/// }
/// ```
pub trait CacheKey {
    /// Appends the key's string form to `out`. Two different keys of one type must write
    /// different strings.
    fn write_key(&self, out: &mut String);

    /// The key's string form when the key already is one, so a lookup can skip the copy.
    fn as_key_str(&self) -> Option<&str> {
        None
    }
}

impl CacheKey for str {
    fn write_key(&self, out: &mut String) {
        out.push_str(self)
    }
    fn as_key_str(&self) -> Option<&str> {
        Some(self)
    }
}

impl CacheKey for String {
    fn write_key(&self, out: &mut String) {
        out.push_str(self)
    }
    fn as_key_str(&self) -> Option<&str> {
        Some(self)
    }
}

impl<T: CacheKey + ?Sized> CacheKey for &T {
    fn write_key(&self, out: &mut String) {
        (**self).write_key(out)
    }
    fn as_key_str(&self) -> Option<&str> {
        (**self).as_key_str()
    }
}

impl<T: CacheKey + ?Sized> CacheKey for Box<T> {
    fn write_key(&self, out: &mut String) {
        (**self).write_key(out)
    }
    fn as_key_str(&self) -> Option<&str> {
        (**self).as_key_str()
    }
}

impl<T: CacheKey + ?Sized> CacheKey for Arc<T> {
    fn write_key(&self, out: &mut String) {
        (**self).write_key(out)
    }
    fn as_key_str(&self) -> Option<&str> {
        (**self).as_key_str()
    }
}

macro_rules! display_key {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
display_key!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, char, bool);

/// Writes one part of a composite key, escaping `%` and `:` so parts cannot run together.
fn write_part<T: CacheKey + ?Sized>(part: &T, out: &mut String) {
    let start = out.len();
    part.write_key(out);
    if !out[start..].contains(['%', SEPARATOR]) {
        return;
    }
    let raw = out.split_off(start);
    for c in raw.chars() {
        match c {
            '%' => out.push_str("%25"),
            SEPARATOR => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

macro_rules! tuple_key {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: CacheKey $(, $rest: CacheKey)*> CacheKey for ($first, $($rest,)*) {
            #[allow(non_snake_case)]
            fn write_key(&self, out: &mut String) {
                let ($first, $($rest,)*) = self;
                write_part($first, out);
                $(
                    out.push(SEPARATOR);
                    write_part($rest, out);
                )*
            }
        }
    };
}
tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);

thread_local! {
    // Reused so an L1 lookup of a composite key allocates nothing once warmed up.
    static KEY_BUF: RefCell<String> = RefCell::new(String::with_capacity(128));
}

/// Runs `f` on the key's string form without allocating on the hot path.
pub(crate) fn with_key_str<K: CacheKey + ?Sized, R>(key: &K, f: impl FnOnce(&str) -> R) -> R {
    if let Some(s) = key.as_key_str() {
        return f(s);
    }
    KEY_BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            key.write_key(&mut buf);
            f(&buf)
        }
        // Only reachable if `write_key` itself reads the cache; stay correct, just allocate.
        Err(_) => f(&key_string(key)),
    })
}

/// The key's string form, owned.
pub(crate) fn key_string<K: CacheKey + ?Sized>(key: &K) -> String {
    match key.as_key_str() {
        Some(s) => s.to_owned(),
        None => {
            let mut s = String::new();
            key.write_key(&mut s);
            s
        }
    }
}

/// Checks a prefix or namespace name; `what` names it in the error.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} {name:?} is longer than {MAX_NAME_LEN} bytes"
        ));
    }
    if name.contains(SEPARATOR) {
        return Err(format!(
            "{what} {name:?} contains the key separator {SEPARATOR:?}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{what} {name:?} contains {c:?}; use only ASCII letters, digits, '_', '.', '-'"
        ));
    }
    Ok(())
}

/// Checks a namespace name: [`validate_name`]'s rules, and no leading `_` (reserved for the
/// crate's own keys, `{prefix}:_tc:...`).
pub(crate) fn validate_namespace(name: &str) -> Result<(), String> {
    validate_name("namespace", name)?;
    if name.starts_with('_') {
        return Err(format!(
            "namespace {name:?} starts with '_', which is reserved for the crate's own keys"
        ));
    }
    Ok(())
}

/// All Redis names the cache uses, derived from the prefix in one place.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
    channel: String,
    meta_key: String,
}

impl KeySpace {
    /// `db` is the Redis database number: pub/sub ignores it, so the channel carries it.
    pub(crate) fn new(prefix: &str, db: i64) -> Self {
        Self {
            prefix: prefix.to_owned(),
            channel: format!("{prefix}{SEPARATOR}_tc{SEPARATOR}inv{SEPARATOR}db{db}"),
            meta_key: format!("{prefix}{SEPARATOR}_tc{SEPARATOR}meta"),
        }
    }

    /// `{prefix}:{namespace}:{key}`.
    pub(crate) fn value_key(&self, namespace: &str, key: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + namespace.len() + key.len() + 2);
        s.push_str(&self.prefix);
        s.push(SEPARATOR);
        s.push_str(namespace);
        s.push(SEPARATOR);
        s.push_str(key);
        s
    }

    /// One hash holding the version counter (field `version`) and every namespace's floor
    /// (field `floor:{namespace}`, the version of its last whole-namespace invalidation; values
    /// written before it are dead). One key, touched by every write, so an LRU eviction policy
    /// keeps it; and if it is ever evicted, counter and floors reset together.
    pub(crate) fn meta_key(&self) -> &str {
        &self.meta_key
    }

    /// The invalidation log: a capped stream of the messages published, by version (see
    /// `l2/log.rs`). The scripts derive it from the meta key the same way.
    pub(crate) fn log_key(&self) -> String {
        format!("{}{SEPARATOR}log", self.meta_key)
    }

    /// The meta hash's field holding the version counter (the Lua scripts in `l2/scripts.rs`
    /// spell it, and the epoch's, themselves).
    pub(crate) const VERSION_FIELD: &'static str = "version";
    /// The meta hash's field holding the counter's epoch (see `l2.rs`).
    pub(crate) const EPOCH_FIELD: &'static str = "epoch";
    /// A floor of every namespace, set above a history that went back (see
    /// `l2::scripts::PREAMBLE`).
    pub(crate) const ROLLBACK_FLOOR_FIELD: &'static str = "rollback_floor";

    /// A pattern matching every bookkeeping key of the prefix (`{prefix}:_tc:*`).
    #[cfg(feature = "test-util")]
    pub(crate) fn bookkeeping_pattern(&self) -> String {
        format!("{p}{SEPARATOR}_tc{SEPARATOR}*", p = self.prefix)
    }

    /// The fleet-wide load lock of a key (see `NamespacePolicy::fleet_single_flight`). Under the
    /// reserved `_tc` part, so it can never collide with a value key.
    pub(crate) fn lock_key(&self, namespace: &str, key: &str) -> String {
        format!(
            "{p}{SEPARATOR}_tc{SEPARATOR}lock{SEPARATOR}{namespace}{SEPARATOR}{key}",
            p = self.prefix
        )
    }

    /// The field of the meta hash holding a namespace's floor.
    pub(crate) fn floor_field(namespace: &str) -> String {
        format!("floor{SEPARATOR}{namespace}")
    }

    /// The invalidation bus's channel.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Tag bookkeeping keys (see `tags.rs`). Tags follow the namespace rules, so these names stay
/// unambiguous, and `_tc` is never a namespace.
impl KeySpace {
    /// `{prefix}:_tc:tag:{namespace}:{tag}`: the set of value keys written or filled with `tag`
    /// since its last invalidation.
    pub(crate) fn tag_key(&self, namespace: &str, tag: &str) -> String {
        self.bookkeeping_key("tag", namespace, tag)
    }

    /// `{prefix}:_tc:tagfloor:{namespace}:{tag}`: the version and epoch of the tag's last
    /// invalidation; a tagged fill that noted an older version is refused.
    pub(crate) fn tag_floor_key(&self, namespace: &str, tag: &str) -> String {
        self.bookkeeping_key("tagfloor", namespace, tag)
    }

    /// `{prefix}:_tc:tags:{namespace}`: the namespace's tag registry (when each tag set
    /// expires, and which were found evicted; see `l2/multi.rs`).
    pub(crate) fn tag_registry_key(&self, namespace: &str) -> String {
        let prefix = &self.prefix;
        format!("{prefix}{SEPARATOR}_tc{SEPARATOR}tags{SEPARATOR}{namespace}")
    }

    /// The meta hash's field saying the namespace's tag registry exists (see `l2/multi.rs`).
    pub(crate) fn tag_anchor_field(namespace: &str) -> String {
        format!("tags{SEPARATOR}{namespace}")
    }

    fn bookkeeping_key(&self, kind: &str, namespace: &str, tag: &str) -> String {
        let prefix = &self.prefix;
        format!("{prefix}{SEPARATOR}_tc{SEPARATOR}{kind}{SEPARATOR}{namespace}{SEPARATOR}{tag}")
    }
}

/// Checks tag names: the namespace rules (1 to 64 bytes of `[A-Za-z0-9_.-]`).
pub(crate) fn validate_tags(tags: &[&str]) -> crate::error::Result<()> {
    tags.iter()
        .try_for_each(|t| validate_name("tag", t).map_err(crate::error::Error::InvalidTag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<K: CacheKey>(k: K) -> String {
        key_string(&k)
    }

    #[test]
    fn composite_keys_stay_distinct() {
        assert_eq!(s(("CNGN", "USD")), "CNGN:USD");
        assert_ne!(s(("a:b", "c")), s(("a", "b:c")));
        assert_ne!(s(("a%3Ab", "c")), s(("a:b", "c")));
        assert_eq!(s(("100.50", "CNGN", "USD")), "100.50:CNGN:USD");
        assert_eq!(s((7u32, "x")), "7:x");
    }

    #[test]
    fn plain_strings_are_verbatim() {
        assert_eq!(s("a:b{c}"), "a:b{c}");
        with_key_str(&("a", 1u8), |k| assert_eq!(k, "a:1"));
    }

    #[test]
    fn value_keys_follow_the_seed_convention() {
        let ks = KeySpace::new("v1", 0);
        assert_eq!(
            ks.value_key("wallet", "balance:GA1"),
            "v1:wallet:balance:GA1"
        );
        assert_eq!(ks.channel(), "v1:_tc:inv:db0");
        assert_eq!(ks.meta_key(), "v1:_tc:meta");
        assert_eq!(KeySpace::floor_field("rate"), "floor:rate");
        assert_eq!(ks.tag_key("rate", "W1"), "v1:_tc:tag:rate:W1");
        assert_eq!(ks.tag_floor_key("rate", "W1"), "v1:_tc:tagfloor:rate:W1");
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("namespace", "rate").is_ok());
        assert!(validate_name("namespace", "").is_err());
        assert!(validate_name("namespace", "a:b").is_err());
        assert!(validate_name("namespace", "a b").is_err());
        assert!(validate_name("namespace", "a{b}").is_err());
        assert!(validate_name("namespace", &"n".repeat(65)).is_err());
    }
}
