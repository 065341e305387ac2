//! Sliding expiry: one script extends a live value's expiry in Redis (see `l2/touch.rs`), then
//! this node's L1 copy of that very version gets the new expiry. Publishes nothing.

use crate::engine::Engine;
use crate::error::Result;
use crate::l2::touch::Extension;
use crate::space::{NamespaceCore, TtlOverride};

/// Runs the touch script (extending the sets of `tags` too) and, when it extended a version
/// this node's L1 holds, gives that L1 copy the new expiry.
pub(crate) async fn touch(
    shared: &Engine,
    core: &NamespaceCore,
    key: &str,
    (expected, ttl): (Option<u64>, TtlOverride),
    tags: &[&str],
) -> Result<bool> {
    let life = core.l2_life(false, ttl);
    let ext = Extension {
        expected,
        expires_ms: life.expires_ms,
        keep_for: life.keep_for,
    };
    let touched = (shared.l2)
        .touch(core.target(), key, ext, tags)
        .await
        .map_err(|e| e.into_error("touch"))?;
    let Some(touched) = touched else {
        return Ok(false);
    };
    if let Some(held) = core.l1.get(key) {
        if held.version == touched.version && held.value.is_some() {
            let weight = held.weight as usize;
            let expires = Some(touched.expires_ms);
            let entry = core.l1_entry_within(held.value, held.version, expires, ttl.l1, weight);
            // Only over the very version extended: an invalidation meanwhile removed it.
            core.l1.replace_same_version(key, entry);
        }
    }
    Ok(true)
}
