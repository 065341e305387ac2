//! Memoized functions: "cache this async function's result under this namespace".
//!
//! A [`Memoized`] is a [`Namespace`] plus the function that computes a value from its key.
//! `get(&key)` is [`Namespace::get_or_load`] with that function as the loader, so it has the
//! same guarantees: one call per key at a time in this process (single flight), L1 then Redis
//! before calling, results shared with every node through Redis, and a value computed while
//! another node wrote or invalidated the key returned but not cached.
//!
//! The TTL, L1 size and every other knob are the namespace's [`NamespacePolicy`]: give each
//! memoized function a namespace of its own in the builder.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use tiered_cache::{NamespacePolicy, TieredCache};
//! # async fn fetch_price(symbol: String) -> Result<f64, std::io::Error> { Ok(150.0) }
//! # async fn run() -> tiered_cache::Result<()> {
//! let cache = TieredCache::builder()
//!     .namespace("price", NamespacePolicy::new(Duration::from_secs(60)))
//!     .build()?;
//! let price = cache.memoize::<String, f64, _, _, _>("price", |symbol| async move {
//!     fetch_price(symbol).await
//! })?;
//! let aapl = price.get(&"AAPL".to_string()).await?; // fetched once, then cached for 60 s
//! # Ok(()) }
//! ```
//!
//! [`NamespacePolicy`]: crate::NamespacePolicy

use crate::cache::TieredCache;
use crate::error::Result;
use crate::key::CacheKey;
use crate::namespace::Namespace;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// An async function whose results are cached by key. Cheap to clone (a few `Arc`s).
///
/// Made by [`TieredCache::memoize`]. The function's type is erased (it is called through a
/// pointer, and its future boxed, on misses only), so a `Memoized<K, V>` can be a struct field.
/// A fresh hit is a `get_or_load` hit: nothing is allocated, the key is not copied (a hit due
/// for refresh-ahead copies it for the refresh).
pub struct Memoized<K, V> {
    namespace: Namespace<K, V>,
    f: Arc<SourceFn<K, V>>,
}

/// The memoized function, its future boxed and its error converted.
type SourceFn<K, V> = dyn Fn(K) -> Pin<Box<dyn Future<Output = std::result::Result<V, BoxError>> + Send>>
    + Send
    + Sync;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<K, V> Clone for Memoized<K, V> {
    fn clone(&self) -> Self {
        Self {
            namespace: self.namespace.clone(),
            f: self.f.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Memoized<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memoized")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TieredCache {
    /// Caches `f`'s results in the configured namespace `namespace`, keyed by its argument.
    ///
    /// `f` takes the key by value (clone what it needs into its future) and may be called
    /// again for a key once its value expires or is invalidated. Fails as
    /// [`namespace`](Self::namespace) does: the namespace must be configured, and its types
    /// are pinned to `K` and `V`.
    pub fn memoize<K, V, F, Fut, E>(&self, namespace: &str, f: F) -> Result<Memoized<K, V>>
    where
        K: CacheKey + Clone + Send + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let f: Arc<SourceFn<K, V>> = Arc::new(move |key: K| {
            let fut = f(key);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        Ok(Memoized {
            namespace: self.namespace(namespace)?,
            f,
        })
    }
}

impl<K, V> Memoized<K, V>
where
    K: CacheKey + Clone + Send + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The function's result for `key`: from L1, else Redis, else by calling the function
    /// (once per key at a time in this process) and caching what it returns on both tiers.
    /// Its error comes back as [`Error::Loader`](crate::Error::Loader) and is not cached.
    pub async fn get(&self, key: &K) -> Result<Arc<V>> {
        // The call (and the key's copy it owns) is made only when a load or refresh starts: a
        // fresh hit allocates nothing.
        let make = || {
            let (f, arg) = (self.f.clone(), key.clone());
            move || async move { f(arg).await.map(Some) }
        };
        let fill = self.namespace.fill();
        let found = self
            .namespace
            .reads()
            .get_or_load_with(key, make, fill)
            .await?;
        found.ok_or(crate::Error::NotFound)
    }

    /// The namespace the results are cached in: to invalidate a key when its source changed,
    /// read without computing, or read the namespace's stats.
    pub fn namespace(&self) -> &Namespace<K, V> {
        &self.namespace
    }
}
