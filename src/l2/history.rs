//! Redis's history: replaying a queued write without landing over a newer one, and finding
//! and repairing a history that went back (see `scripts::REPLAY_WRITE`, `RAISE_COUNTER` and
//! `PREAMBLE`, and docs/coherence.md).

use super::{codec, lenient_u64, ttl_ms, KeySpace, L2Result, L2Tier, Payload, Stamp, Target};
use crate::wire::Outgoing;
use std::time::Duration;

/// What a queued write knew of Redis when it was queued (see `scripts::REPLAY_WRITE`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Known {
    /// The latest version this node had seen (a message in sequence, or a reply).
    pub(crate) seen: Stamp,
    /// A clear of the namespace this node queued before the write, once it has landed.
    pub(crate) own_clear: Stamp,
}

/// What a read checked of Redis's history (see [`L2Tier::get_checked`]).
pub(crate) struct Checked {
    /// The counter is not behind any version Redis reported before.
    pub(crate) intact: bool,
    /// The floor of every namespace after a history that went back (0: none).
    pub(crate) rollback_floor: u64,
}

impl L2Tier {
    /// Reads the raw envelope stored under a key, and whether Redis's history is intact: its
    /// counter, read in the same round trip, is not behind any version it reported before
    /// this call. `false` means it went back (restored, a lagging replica promoted): the
    /// value may be older than what was written since. For reads while a resync is due.
    pub(crate) async fn get_checked(
        &self,
        ns: Target<'_>,
        key: &str,
    ) -> L2Result<(Option<Vec<u8>>, Checked)> {
        let highest = self.epochs.highest();
        let (namespace, ns) = (ns.name, Some(ns));
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.keys.value_key(namespace, key))
            .cmd("HMGET")
            .arg(self.keys.meta_key())
            .arg(KeySpace::VERSION_FIELD)
            .arg(KeySpace::ROLLBACK_FLOOR_FIELD);
        let pipe = &pipe;
        type Fields = (Option<String>, Option<String>);
        let (value, (counter, floor)): (Option<Vec<u8>>, Fields) = self
            .call(ns, |mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        let checked = Checked {
            intact: lenient_u64(counter.as_deref()) >= highest,
            rollback_floor: lenient_u64(floor.as_deref()),
        };
        Ok((value, checked))
    }

    /// Replays a write queued while Redis was unreachable (see `scripts::REPLAY_WRITE`): stored
    /// only if nothing newer than `known` (what this node had seen when it queued it) touched
    /// the key, else tombstoned; published either way. `true` when stored.
    pub(crate) async fn replay_write(
        &self,
        ns: Target<'_>,
        key: &str,
        value: Payload<'_>,
        (known, tombstone_ttl): (Known, Duration),
        message: &Outgoing,
    ) -> L2Result<(Stamp, bool)> {
        let (namespace, ns) = (ns.name, Some(ns));
        let mut inv = self.write_invocation(&self.replay_write, (namespace, key), value, message);
        inv.arg(known.seen.version)
            .arg(known.seen.epoch)
            .arg(KeySpace::floor_field(namespace))
            .arg(&codec::tombstone_head()[..])
            .arg(known.own_clear.version)
            .arg(known.own_clear.epoch)
            .arg(ttl_ms(tombstone_ttl));
        let inv = &inv;
        let (version, epoch, stored): (u64, u64, u8) = self
            .call(ns, |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        self.epochs.observe(epoch, version);
        Ok((Stamp { version, epoch }, stored == 1))
    }

    /// Repairs a history that went back (see `scripts::RAISE_COUNTER`): the counter raised to
    /// `at_least`, the floor of every namespace above it.
    pub(crate) async fn raise_counter(&self, at_least: u64) -> L2Result<()> {
        let args = |inv: &mut redis::ScriptInvocation<'_>| {
            inv.key(self.keys.meta_key()).arg(at_least);
        };
        let _: u64 = self.call_flagged(None, &self.raise_counter, args).await?;
        Ok(())
    }

    /// Whether Redis's history is intact now (see [`get_checked`](Self::get_checked)), for
    /// batch reads while a resync is due: read after their values.
    pub(crate) async fn check_history(&self, highest: u64) -> L2Result<Checked> {
        let meta = self.keys.meta_key();
        let (counter, floor): (Option<String>, Option<String>) = self
            .call(None, |mut c| async move {
                redis::cmd("HMGET")
                    .arg(meta)
                    .arg(KeySpace::VERSION_FIELD)
                    .arg(KeySpace::ROLLBACK_FLOOR_FIELD)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(Checked {
            intact: lenient_u64(counter.as_deref()) >= highest,
            rollback_floor: lenient_u64(floor.as_deref()),
        })
    }
}
