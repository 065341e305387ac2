//! Per-call options: tags, strictness and TTL overrides for the writes and loads made through
//! one handle, as values instead of method variants.

use crate::config::NamespacePolicy;
use crate::error::{Error, Result};
use crate::key::validate_name;
use crate::space::TtlOverride;
use std::time::Duration;

/// Options for the writes and loads made through a [`Namespace`](crate::Namespace) handle:
/// [`Namespace::with`](crate::Namespace::with) gives a handle whose every verb (single key and
/// batch) applies them. Unset options take the namespace's policy and the cache's defaults.
///
/// ```
/// use std::time::Duration;
/// use tiered_cache::EntryOptions;
///
/// // A clearing window's positions: tagged with the window, kept 10 minutes, and a write that
/// // cannot reach Redis fails instead of being queued.
/// let window = EntryOptions::new()
///     .tag("window-2026-12-01")
///     .ttl(Duration::from_secs(600))
///     .strict(true);
/// ```
///
/// What each option covers:
///
/// | option | writes (`set`, `batch().set`) | loads (`get_or_load`, `batch().get_or_load`) | `touch` | invalidations |
/// |---|---|---|---|---|
/// | [`tag`](Self::tag) | the key joins each tag's set | the fill joins them, refused if a tag was invalidated meanwhile | – | – |
/// | [`strict`](Self::strict) | fail instead of queuing | – | – | fail instead of queuing |
/// | [`ttl`](Self::ttl) | the value's L2 TTL | the fill's L2 TTL | extends by it | – |
/// | [`l1_ttl`](Self::l1_ttl) | this node's L1 copy | this node's L1 copy, whether the loader or Redis answered (also for `get`) | the copy's new expiry | – |
///
/// Concurrent loads of one key share one flight (single flight): the leader's options apply
/// to the value it stores. Tagged loads take every policy of the namespace, as untagged ones
/// do (single flight, fleet lock, timeouts, fail-safe, refresh-ahead, negative caching).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryOptions {
    pub(crate) tags: Vec<String>,
    pub(crate) strict: Option<bool>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) l1_ttl: Option<Duration>,
}

impl EntryOptions {
    /// No option set: the namespace's policy and the cache's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tag (1 to 64 bytes of `[A-Za-z0-9_.-]`, checked by
    /// [`Namespace::with`](crate::Namespace::with)). Default: no tags.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds several tags, as [`tag`](Self::tag) does.
    pub fn tags<T: AsRef<str>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags
            .extend(tags.into_iter().map(|t| t.as_ref().to_owned()));
        self
    }

    /// `true`: writes and invalidations fail with `Err(Unavailable)` when Redis is unreachable;
    /// `false`: they are queued and replayed when it is back. Default: the builder's
    /// [`strict_writes`](crate::TieredCacheBuilder::strict_writes).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = Some(strict);
        self
    }

    /// How long written and loaded values live in Redis (shortened by the namespace's jitter,
    /// as the namespace's own TTL is). This node's L1 copy lives at most the shorter of this
    /// and the namespace's L1 TTL. A cached "not found" keeps the namespace's
    /// [negative TTL](crate::NamespacePolicy::negative_ttl). Default: the namespace's
    /// [L2 TTL](crate::NamespacePolicy::new).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long this node's L1 copy of a value written, loaded or read through the handle
    /// lives (also when the load or the read is answered by Redis): at most the
    /// namespace's [L1 TTL](crate::NamespacePolicy::l1_ttl) (which bounds every L1 entry) and
    /// at most the call's L2 TTL. Default: the namespace's L1 TTL.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// The tags set.
    pub fn tag_names(&self) -> &[String] {
        &self.tags
    }

    /// The strictness set (`None`: the builder's default).
    pub fn strict_value(&self) -> Option<bool> {
        self.strict
    }

    /// The L2 TTL set (`None`: the namespace's).
    pub fn ttl_value(&self) -> Option<Duration> {
        self.ttl
    }

    /// The L1 TTL set (`None`: the namespace's).
    pub fn l1_ttl_value(&self) -> Option<Duration> {
        self.l1_ttl
    }

    /// These options with `over`'s on top: its settings win, its tags are added.
    pub(crate) fn layered(mut self, over: EntryOptions) -> Self {
        for tag in over.tags {
            if !self.tags.contains(&tag) {
                self.tags.push(tag);
            }
        }
        self.strict = over.strict.or(self.strict);
        self.ttl = over.ttl.or(self.ttl);
        self.l1_ttl = over.l1_ttl.or(self.l1_ttl);
        self
    }

    /// The tags, as the paths take them.
    pub(crate) fn tag_refs(&self) -> Vec<&str> {
        self.tags.iter().map(String::as_str).collect()
    }

    /// Checks the options against a namespace's policy.
    pub(crate) fn validate(&self, name: &str, policy: &NamespacePolicy) -> Result<()> {
        for tag in &self.tags {
            validate_name("tag", tag).map_err(Error::InvalidTag)?;
        }
        let invalid =
            |what: String| Err(Error::InvalidOptions(format!("namespace {name:?}: {what}")));
        // As the builder's bound: far beyond any sensible TTL, short of what `Instant` holds.
        const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        for (what, ttl) in [("ttl", self.ttl), ("l1_ttl", self.l1_ttl)] {
            match ttl {
                Some(t) if t.is_zero() => {
                    return invalid(format!("{what} must be greater than zero"))
                }
                Some(t) if t > LONGEST => {
                    return invalid(format!("{what} must be under 100 years"))
                }
                _ => {}
            }
        }
        if let Some(l1) = self.l1_ttl {
            let cap = policy.l1_ttl_value();
            if l1 > cap {
                return invalid(format!(
                    "l1_ttl {l1:?} is longer than the namespace's L1 TTL {cap:?}, which bounds every L1 entry"
                ));
            }
            let l2 = self.ttl.unwrap_or(policy.l2_ttl_value());
            if l1 > l2 {
                return invalid(format!("l1_ttl {l1:?} is longer than the L2 TTL {l2:?}"));
            }
        }
        Ok(())
    }

    /// The TTL overrides, as the paths take them.
    pub(crate) fn ttl_override(&self) -> TtlOverride {
        TtlOverride {
            l2: self.ttl,
            l1: self.l1_ttl,
        }
    }
}
