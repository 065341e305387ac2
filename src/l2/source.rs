//! Writes ordered by the writer's own version (a database LSN, a log offset): `set_if_newer`
//! and `invalidate_if_newer`. The entry carries that source version in its envelope (flag bit
//! 4, see `codec.rs`), and the script stores it only if the key does not already hold an entry
//! (value or tombstone) with the same or a newer one: the cache then orders writes by the
//! source, whatever order they arrive in. An entry without a source version (a plain `set`, a
//! fill, a plain invalidation) is taken as older.

use super::scripts::{invalidating_script, script, Flagged};
use super::{ttl_ms, L2Result, L2Tier, Payload, Stamp, Target};
use crate::codec::Encoded;
use crate::wire::Outgoing;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

// KEYS: meta, value key. ARGV: epoch, envelope head, body (with the source version: see
// `Encoded::with_source`), ttl ms, channel, message head, message tail, the source version as
// 8 big-endian bytes. Compared as two 32-bit halves: Lua's numbers are doubles, exact only
// below 2^53, and a source version may use all 64 bits. Returns {version, epoch, 1} when
// stored (and published), {0, epoch, 0} when the key holds this source version or a newer one.
const WRITE_IF_NEWER: &str = r"
local held = source_of(redis.call('GET', KEYS[2]))
if held then
  local hh, hl = struct.unpack('>I4', held, 1), struct.unpack('>I4', held, 5)
  local nh, nl = struct.unpack('>I4', ARGV[8], 1), struct.unpack('>I4', ARGV[8], 5)
  if hh > nh or (hh == nh and hl >= nl) then
    return {0, tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0, 0}
  end
end
local e = epoch()
local v = draw()
redis.call('SET', KEYS[2], ARGV[2] .. struct.pack('>I8', v) .. ARGV[3], 'PX', ARGV[4])
publish(ARGV[5], ARGV[6] .. stamp(v, e) .. ARGV[7], v)
return {v, e, 1}
";

static WRITE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(WRITE_IF_NEWER));
/// The tombstone form runs where invalidations do (see `scripts::invalidating_script`).
static TOMBSTONE_SCRIPT: LazyLock<Flagged> = LazyLock::new(|| invalidating_script(WRITE_IF_NEWER));

impl L2Tier {
    /// Stores `value` (encoded with its source version) unless the key holds `source` or a
    /// newer one. `None` when it does (nothing written, nothing published).
    pub(crate) async fn write_if_newer(
        &self,
        ns: Target<'_>,
        key: &str,
        value: Payload<'_>,
        source: u64,
        message: &Outgoing,
    ) -> L2Result<Option<Stamp>> {
        let inv = &self.source_invocation(&WRITE_SCRIPT, (ns.name, key), value, source, message);
        let (version, epoch, stored): (u64, u64, u8) = self
            .call(
                Some(ns),
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        self.settle(version, epoch, stored)
    }

    /// Tombstones the key (for `ttl`, as `invalidate` does) with `source`, unless it holds
    /// `source` or a newer one.
    pub(crate) async fn invalidate_if_newer(
        &self,
        ns: Target<'_>,
        key: &str,
        ttl: Duration,
        source: u64,
        origin: u64,
    ) -> L2Result<Option<Stamp>> {
        let message = Outgoing::keys(origin, ns.name, &[key]);
        let tomb = Encoded::source_tombstone(source);
        let payload = Payload {
            encoded: &tomb,
            ttl,
        };
        let name = ns.name;
        let (version, epoch, stored): (u64, u64, u8) = self
            .call_flagged(Some(ns), &TOMBSTONE_SCRIPT, |inv| {
                self.source_args(inv, (name, key), &payload, source, &message)
            })
            .await?;
        self.settle(version, epoch, stored)
    }

    fn settle(&self, version: u64, epoch: u64, stored: u8) -> L2Result<Option<Stamp>> {
        self.epochs.observe(epoch, version);
        Ok((stored == 1).then_some(Stamp { version, epoch }))
    }

    fn source_invocation<'a>(
        &'a self,
        script: &'a Script,
        key: (&str, &str),
        value: Payload<'_>,
        source: u64,
        message: &Outgoing,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        self.source_args(&mut inv, key, &value, source, message);
        inv
    }

    fn source_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        (namespace, key): (&str, &str),
        value: &Payload<'_>,
        source: u64,
        message: &Outgoing,
    ) {
        inv.key(self.keys.meta_key())
            .key(self.keys.value_key(namespace, key))
            .arg(self.first_arg())
            .arg(&value.encoded.head[..])
            .arg(&value.encoded.body)
            .arg(ttl_ms(value.ttl))
            .arg(self.keys.channel())
            .arg(message.head())
            .arg(message.tail())
            .arg(&source.to_be_bytes()[..]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_source_tombstone_is_a_tombstone() {
        let t = super::Encoded::source_tombstone(7);
        let bytes = crate::codec::envelope(3, &t);
        assert!(matches!(
            crate::codec::decode::<u8>(&bytes),
            Ok(crate::codec::Stored::Tombstone)
        ));
    }
}
