//! One Redis read of one key, judged (a live value, one past its expiry kept for fail-safe, or
//! a counted miss: absent, a tombstone, below the namespace floor, undecodable), and the L1
//! settle after a fill. Shared by the single-key flight (`load.rs`) and batch reads.

use crate::codec::{self, Stored};
use crate::engine::Engine;
use crate::guard::Ticket;
use crate::l1::AnyValue;
use crate::l2::{L2Result, Stamp};
use crate::metrics::key_hash;
use crate::space::{Life, NamespaceCore};
use serde::de::DeserializeOwned;
use std::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;

/// The outcome of one Redis read.
pub(crate) enum L2Read<V> {
    /// A live entry (`value: None` is a cached "not found").
    Hit {
        version: u64,
        expires_ms: Option<u64>,
        value: Option<V>,
        weight: usize,
    },
    /// A value past its expiry that Redis keeps for fail-safe.
    Expired {
        version: u64,
        value: Option<V>,
        weight: usize,
    },
    /// No live value: absent, a tombstone, older than the namespace floor, or undecodable.
    Miss,
    /// Redis could not be asked.
    Unavailable,
}

/// Reads and decodes one key from Redis, counting the outcome. Bad bytes are a counted miss,
/// never a panic.
pub(crate) async fn read_l2<V: DeserializeOwned>(
    core: &NamespaceCore,
    shared: &Engine,
    key: &str,
) -> L2Read<V> {
    let read = peek_l2(core, shared, key).await;
    let m = &core.metrics;
    match &read {
        L2Read::Hit { .. } => m.l2_hit.inc(),
        L2Read::Expired { .. } | L2Read::Miss => m.l2_miss.inc(),
        L2Read::Unavailable => {}
    }
    read
}

/// Reads one key from Redis without counting a hit or miss (errors are still counted), timed
/// with its decode, under a span `l2_read`.
pub(super) async fn peek_l2<V: DeserializeOwned>(
    core: &NamespaceCore,
    shared: &Engine,
    key: &str,
) -> L2Read<V> {
    let span = tracing::debug_span!(target: "tiered_cache::loader", "l2_read", namespace = %core.name, tier = "l2",
        key_hash = key_hash(key), outcome = Empty);
    let read = async {
        let start = Instant::now();
        // While a resync is due (the subscriber reconnects, perhaps to a restarted Redis), a
        // bounded namespace checks Redis's history in the same round trip: the resync that
        // would repair a rollback has not run yet.
        let checked = core.policy.staleness_bound.is_some() && shared.bus.resync_pending();
        let got = match checked {
            false => shared.l2.get(core.target(), key).await,
            true => match shared.l2.get_checked(core.target(), key).await {
                Ok((value, checked)) if checked.intact => {
                    // A draw found the history gone back before this node's resync did.
                    core.raise_floor_over_l1(checked.rollback_floor);
                    Ok(value)
                }
                Ok(_) => {
                    core.metrics.l2_bypass.inc();
                    Ok(None)
                }
                Err(e) => Err(e),
            },
        };
        let (read, asked) = match got {
            // Asked even when it cannot be vouched for: a Redis that does not answer is an
            // error to count, not a bypass.
            Ok(Some(_)) if !vouched(core, shared, key) => (L2Read::Miss, true),
            Ok(Some(bytes)) => (classify(core, shared, &bytes).await, true),
            Ok(None) => (L2Read::Miss, true),
            Err(e) => {
                // Skipped by the open breaker: Redis was not asked, no latency to speak of.
                (L2Read::Unavailable, e.kind() != "skipped")
            }
        };
        if asked {
            core.metrics.latency.l2.record(start.elapsed());
        }
        read
    }
    .instrument(span.clone())
    .await;
    span.record("outcome", read.outcome());
    read
}

/// Whether Redis's copy of `key` may be served, given the namespace's staleness bound; if
/// not, the read is a miss (counted `bypass`) and the loader answers. Its fill is still
/// conditional, so it cannot put back an old value either. Not vouched for:
/// - a key this node acknowledged a write or invalidation of that Redis has not taken yet
///   (queued in the outbox): Redis's copy is older than it;
/// - any key of a bounded namespace while Redis has not taken this node's heartbeat for
///   70 % of the bound (paused by `CLIENT PAUSE`, demoted to a replica): other nodes'
///   invalidations are then as stuck as this node's, and Redis may hold what they replaced.
pub(crate) fn vouched(core: &NamespaceCore, shared: &Engine, key: &str) -> bool {
    let bound = core.policy.staleness_bound;
    let stuck = bound.is_some_and(|b| shared.bus.writes_stuck(b));
    if stuck || shared.outbox.holds(&core.name, key) {
        core.metrics.l2_bypass.inc();
        return false;
    }
    true
}

impl<V> L2Read<V> {
    /// The outcome's name in spans.
    fn outcome(&self) -> &'static str {
        match self {
            L2Read::Hit { .. } => "hit",
            L2Read::Expired { .. } => "expired",
            L2Read::Miss => "miss",
            L2Read::Unavailable => "unavailable",
        }
    }
}

/// Judges bytes read from Redis under a key, counting the outcome as `read_l2` does (for
/// batch reads, which fetch many keys at once).
pub(crate) async fn judge_l2<V: DeserializeOwned>(
    core: &NamespaceCore,
    shared: &Engine,
    bytes: &[u8],
) -> L2Read<V> {
    let read = classify(core, shared, bytes).await;
    match &read {
        L2Read::Hit { .. } => core.metrics.l2_hit.inc(),
        _ => core.metrics.l2_miss.inc(),
    }
    read
}

/// A live value at or above the namespace floor is a hit (or, past its expiry and kept for
/// fail-safe, expired); a tombstone, an older value or bytes that do not decode are misses.
async fn classify<V: DeserializeOwned>(
    core: &NamespaceCore,
    shared: &Engine,
    bytes: &[u8],
) -> L2Read<V> {
    match codec::decode::<V>(bytes) {
        Ok(Stored::Value {
            version,
            expires_ms,
            value,
        }) if version >= core.floor() => {
            let weight = codec::plain_len(bytes);
            match expires_ms {
                Some(at) if core.policy.fail_safe.is_some() && at <= codec::unix_ms() => {
                    L2Read::Expired {
                        version,
                        value,
                        weight,
                    }
                }
                _ => L2Read::Hit {
                    version,
                    expires_ms,
                    value,
                    weight,
                },
            }
        }
        Ok(Stored::Value { .. }) => {
            // Below the floor: cleared, or written after the counter started over while this
            // node still holds the old floor. Asking for the epoch tells the two apart (the
            // L2 tier acts on a new one).
            let _ = shared.l2.current_stamp(None).await;
            L2Read::Miss
        }
        Ok(Stored::Tombstone) => L2Read::Miss,
        Err(e) => {
            core.metrics.decode_error.inc();
            tracing::warn!(
                target: "tiered_cache::loader",
                namespace = %core.name,
                kind = e.kind(),
                len = bytes.len(),
                error = %e,
                "undecodable value in redis, served as a miss"
            );
            L2Read::Miss
        }
    }
}

/// After a fill (or a load Redis could not be asked before, as `Err`): the one place L1 is
/// settled after a load. L1 gets the value at the fill's version if Redis stored it, nothing
/// if Redis refused it (the key changed while loading), and version 0 if Redis could not be
/// reached, unless the fill was `tagged` (its key would be in no tag's set, out of reach of a tag
/// invalidation). `life` is the value's (its expiry, the call's L1 TTL), `weight` its
/// serialized size.
pub(crate) fn settle_fill(
    core: &NamespaceCore,
    (key, tagged): (String, bool),
    value: Option<AnyValue>,
    (life, weight): (&Life, usize),
    ticket: &Ticket,
    filled: L2Result<Result<Stamp, u64>>,
) {
    let version = match filled {
        Ok(Err(_)) => {
            core.metrics.fill_refused.inc();
            return;
        }
        Ok(Ok(stamp)) => {
            core.metrics.fill_stored.inc();
            stamp.version
        }
        // Counted by the tier.
        Err(_) if tagged => return,
        Err(_) => 0,
    };
    let entry = core.l1_entry_for(value, version, life, weight);
    core.insert_guarded(key, entry, ticket);
}
