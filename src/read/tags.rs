//! Tagged single-key loads: the batch miss path for one key, under single flight in the
//! caller's task (its loader may borrow from the caller).

use super::{batch::Pending, downcast, Reads};
use crate::error::Result;
use crate::key::{key_string, CacheKey};
use crate::space::TtlOverride;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

impl Reads<'_> {
    /// `get_or_load` with tags for the fill (see `Namespace::get_or_load` on a tagged handle);
    /// tags are checked by the caller.
    pub(crate) async fn load_tagged<K, V, F, Fut, E>(
        &self,
        key: &K,
        (tags, ttl): (&[&str], TtlOverride),
        loader: F,
    ) -> Result<Arc<V>>
    where
        K: CacheKey + ?Sized,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(v) = self.local_value(key).and_then(downcast::<V>) {
            return Ok(v);
        }
        self.core.metrics.l1_miss.inc();
        let lead = |string: String| async move {
            let ticket = self.core.gens.ticket(&string);
            let pending = [Pending::one(key, string, ticket)];
            let batch_loader = |_| async move { loader().await.map(|v| vec![Some(v)]) };
            let mut loaded = self.load_pending(&pending, (tags, ttl), batch_loader).await;
            match loaded.pop() {
                Some(Ok(Some(v))) => Ok(v),
                Some(Err(e)) => Err(e),
                // The one-key loader above always returns a value.
                Some(Ok(None)) | None => unreachable!("a one-key load returns one value"),
            }
        };
        let flights = &self.core.flights;
        Box::pin(crate::flight::run(
            flights,
            &self.core.metrics.coalesced,
            key_string(key),
            lead,
        ))
        .await
    }
}
