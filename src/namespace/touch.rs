//! Sliding expiry: values whose life is extended each time they are used (sessions).
//!
//! A touch pushes the value's expiry to "now + the namespace's L2 TTL" (less its jitter, if
//! any, as for a write) in Redis (the key's TTL
//! and the expiry in its envelope, in one script: see `l2/touch.rs`) and in this node's L1.
//! It publishes nothing: other nodes' L1 copies keep the expiry they were read with, and when
//! it passes they re-read Redis and find the extended value. That costs them one Redis read,
//! never a wrong answer. An expiry is only ever pushed later, never earlier.
//!
//! ```no_run
//! # use std::time::Duration;
//! # async fn run(cache: tiered_cache::TieredCache) -> tiered_cache::Result<()> {
//! // Sessions live 30 minutes after their last use.
//! let sessions = cache.namespace::<str, String>("session")?;
//! sessions.set("session_123", "user_42".to_string()).await?;
//! if let Some(user) = sessions.get_and_touch("session_123").await {
//!     println!("{user} is still signed in, for 30 more minutes");
//! }
//! # Ok(()) }
//! ```

use crate::error::Result;
use crate::key::{key_string, CacheKey};
use crate::namespace::Namespace;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

impl<K, V> Namespace<K, V>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Extends the live value of `key` by the namespace's L2 TTL (or the handle's
    /// [`ttl`](crate::EntryOptions::ttl)) from now, in Redis and in
    /// this node's L1. Returns `Ok(false)` when Redis holds no live value for the key (never
    /// written, invalidated, expired, or a cached "not found"): nothing is revived.
    ///
    /// Extends whichever version is live when the script runs: a write that landed just
    /// before is the value extended; one that lands after brings its own TTL. Returns
    /// `Err(Unavailable)` when Redis cannot be reached: the value keeps its old expiry.
    ///
    /// Through a tagged handle, the sets of its tags are extended with the value (touch a
    /// tagged key through a handle carrying its tags, as writes and loads must give them).
    ///
    /// Other nodes are not told: their L1 copies expire at the time they were read with, and
    /// the next read there finds the extended value in Redis (one Redis read, never a wrong
    /// answer).
    pub async fn touch(&self, key: &K) -> Result<bool> {
        let how = (None, self.ttl());
        let key = key_string(key);
        crate::write::touch(self.cache.shared(), &self.core, &key, how, &self.tags()).await
    }

    /// Reads a value as [`get`](Self::get) does and, if there is one, extends it as
    /// [`touch`](Self::touch) does: the version this node's L1 holds after the read (the one
    /// read, unless a newer one arrived meanwhile), so a write that landed in Redis after that
    /// keeps its own TTL. When the read left nothing in L1 (bypassed, or raced by an
    /// invalidation), whichever version is live is extended, as `touch` does. When Redis cannot be reached the value is returned unextended (the failure is
    /// counted in [`NamespaceStats::l2_errors`](crate::NamespaceStats)).
    pub async fn get_and_touch(&self, key: &K) -> Option<Arc<V>> {
        let value = self.get(key).await?;
        let key = key_string(key);
        // The version this node holds; none if the read was not cached here (L1 bypassed, or
        // an invalidation raced it), and then whichever version is live is extended.
        let expected = self.core.l1.get(&key).map(|e| e.version).filter(|v| *v > 0);
        // A failure is already counted, and the value stays valid until its old expiry.
        let how = (expected, self.ttl());
        let tags = self.tags();
        let _ = crate::write::touch(self.cache.shared(), &self.core, &key, how, &tags).await;
        Some(value)
    }
}
