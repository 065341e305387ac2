//! Tag invalidation: one script tombstones every key a tag's set lists in each namespace,
//! records the tag's floor and publishes one message; with Redis unreachable, a queued clear of
//! each namespace (see `tags.rs` for the design).

use crate::engine::Engine;
use crate::error::Result;
use crate::key::validate_tags;
use crate::space::NamespaceCore;

/// The tag invalidation script over `cores`; with Redis unreachable, a queued clear of each
/// (unless `strict`).
pub(crate) async fn invalidate_tag(
    shared: &Engine,
    cores: &[&NamespaceCore],
    tag: &str,
    strict: bool,
) -> Result<usize> {
    validate_tags(&[tag])?;
    let targets: Vec<_> = cores
        .iter()
        .map(|c| (c.target(), c.policy.l2_ttl))
        .collect();
    match shared
        .l2
        .invalidate_tag(tag, &targets, shared.node_id)
        .await
    {
        Ok((_, done)) => {
            let mut count = 0;
            // This node skips its own message: evict here (bump, then remove, as always).
            for (core, done) in cores.iter().zip(&done) {
                if let Some(floor) = done.cleared_at {
                    // Too many keys for one message: the namespace went instead.
                    core.raise_floor(floor);
                    core.clear_l1();
                } else {
                    done.keys.iter().for_each(|key| core.evict(key));
                }
                count += done.keys.len();
                core.metrics.inv_sent.inc();
            }
            Ok(count)
        }
        Err(e) if !strict => {
            // Degraded, not failed (Redis unreachable, or refusing writes): the tag's keys are
            // unknown here, its namespaces are not.
            if let Some(core) = cores.first() {
                super::refused(core, &e, "invalidate_tag");
            }
            for core in cores {
                shared.outbox.enqueue_clear(core);
            }
            Ok(0)
        }
        Err(e) => {
            for core in cores {
                core.clear_l1();
            }
            Err(e.into_error("invalidate_tag"))
        }
    }
}
