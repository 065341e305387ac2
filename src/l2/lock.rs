//! The fleet-wide load lock: one node loads a missing key while the others wait for its fill.

use super::{ttl_ms, L2Result, L2Tier, Target};
use std::time::Duration;

impl L2Tier {
    /// Takes the fleet-wide load lock on a key for `ttl`, if free. Returns whether it was taken.
    pub(crate) async fn try_lock(
        &self,
        ns: Target<'_>,
        key: &str,
        token: u64,
        ttl: Duration,
    ) -> L2Result<bool> {
        let (namespace, ns) = (ns.name, Some(ns));
        let k = &self.keys.lock_key(namespace, key);
        self.call(ns, |mut c| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(k)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Releases a load lock if this caller still holds it (it may have expired and been taken
    /// by another node meanwhile: that one is left alone).
    pub(crate) async fn unlock(&self, ns: Target<'_>, key: &str, token: u64) -> L2Result<()> {
        let (namespace, ns) = (ns.name, Some(ns));
        let mut inv = self.unlock.prepare_invoke();
        inv.key(self.keys.lock_key(namespace, key)).arg(token);
        let inv = &inv;
        self.call(
            ns,
            |mut c| async move { inv.invoke_async::<u8>(&mut c).await },
        )
        .await
        .map(drop)
    }

    /// Whether a load lock is held on a key (by anyone).
    pub(crate) async fn is_locked(&self, ns: Target<'_>, key: &str) -> L2Result<bool> {
        let (namespace, ns) = (ns.name, Some(ns));
        let k = &self.keys.lock_key(namespace, key);
        self.call(ns, |mut c| async move {
            redis::cmd("EXISTS").arg(k).query_async(&mut c).await
        })
        .await
    }
}
