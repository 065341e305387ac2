//! Sliding expiry on the L2 tier: one script that pushes a live value's expiry later, both
//! Redis's TTL on the key and the logical expiry inside its envelope (bytes 11-18, see
//! `codec.rs`), without rewriting the value.
//!
//! The script is atomic, so a write can only land before it (and is the value extended) or
//! after it (and brings its own TTL): a touch never puts an older value back, because it never
//! writes value bytes at all. A caller that read a version first passes it, and the touch is
//! refused if the key holds another one by then: the concurrent write wins, with its own TTL.
//!
//! A touch publishes nothing: other nodes' L1 copies keep the expiry they were read with, and
//! when it passes they re-read the key from Redis, where they find the extended value.

use super::{ttl_ms, L2Result, L2Tier, Target};
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

// KEYS: meta, value key. ARGV: expected version ('' for whichever is live), new expiry (unix
// ms), how long Redis keeps the key (ms), now (unix ms), floor field.
// Returns {1, version, expiry} when extended (expiry: the later of the old and the new one),
// {0, version or 0, 0} when refused. Refused: no key, foreign bytes, an envelope format or
// flag this build does not know (`codec::decode` refuses the same), a tombstone, a cached "not found", an entry without expiry, another
// version than expected, a value below the namespace floor (cleared), or one already past its
// expiry (kept only for fail-safe: a touch does not revive it).
const TOUCH: &str = r"
local cur = redis.call('GET', KEYS[2])
if not cur or string.len(cur) < 19 or string.byte(cur, 1) ~= 193 or string.byte(cur, 2) ~= 1 then
  return {0, 0, 0}
end
local flags = string.byte(cur, 3)
if bit.band(flags, 224) ~= 0 then return {0, 0, 0} end
if bit.band(flags, 1) == 1 or bit.band(flags, 8) == 8 or bit.band(flags, 4) == 0 then
  return {0, 0, 0}
end
local ver = struct.unpack('>I8', cur, 4)
if ARGV[1] ~= '' and ver ~= tonumber(ARGV[1]) then return {0, ver, 0} end
local floor = tonumber(redis.call('HGET', KEYS[1], ARGV[5]) or '0') or 0
local rf = tonumber(redis.call('HGET', KEYS[1], 'rollback_floor') or '0') or 0
if ver < math.max(floor, rf) then return {0, ver, 0} end
local exp = struct.unpack('>I8', cur, 12)
if exp <= tonumber(ARGV[4]) then return {0, ver, 0} end
local new = tonumber(ARGV[2])
if new > exp then
  redis.call('SETRANGE', KEYS[2], 11, struct.pack('>I8', new))
  exp = new
end
local keep = tonumber(ARGV[3])
local pttl = redis.call('PTTL', KEYS[2])
if pttl >= 0 and pttl < keep then redis.call('PEXPIRE', KEYS[2], keep) end
return {1, ver, exp}
";

// TOUCH, wrapped for a tagged key: the caller appends the key's tag sets and the namespace's
// tag registry to KEYS and the registry's anchor field to ARGV; popped off before TOUCH runs.
// A value extended past its tag sets would outlive them, and the registry would take a set
// that expired first as gone with its values: every set is extended with it (`join`).
const TAGGED_HEAD: &str = r"
local anchor = table.remove(ARGV)
local reg = table.remove(KEYS)
local sets = {}
for i = #KEYS, 3, -1 do sets[i - 2] = table.remove(KEYS) end
local before = redis.call('PTTL', KEYS[2])
local function touch()
";
// Only a touch that made Redis keep the value longer has sets to extend (and a touch that
// wrote nothing stays a no-op a full Redis takes).
const TAGGED_TAIL: &str = r"
end
local r = touch()
if r[1] == 1 and redis.call('PTTL', KEYS[2]) > before then
  registered(reg, anchor)
  local now = clock()
  for i = 1, #sets do join(reg, sets[i], {KEYS[2]}, ARGV[3], now) end
end
return r
";

/// Effects replication first, as in `scripts::PREAMBLE`: PTTL, TIME and HSCAN (flagged
/// random on Redis 5 and 6) come before writes, which script replication would refuse.
const REPLICATE: &str = "if redis.replicate_commands then redis.replicate_commands() end\n";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{REPLICATE}{TOUCH}")));
static TAGGED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    let helpers = super::multi::TAG_HELPERS;
    Script::new(&format!(
        "{REPLICATE}{helpers}{TAGGED_HEAD}{TOUCH}{TAGGED_TAIL}"
    ))
});

/// A value whose expiry a touch pushed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Touched {
    /// The version extended.
    pub(crate) version: u64,
    /// Its logical expiry now (unix ms).
    pub(crate) expires_ms: u64,
}

/// What the touch should extend, and until when.
pub(crate) struct Extension {
    /// Only this version (`None`: whichever is live).
    pub(crate) expected: Option<u64>,
    /// The new logical expiry (unix ms); an expiry already later is kept.
    pub(crate) expires_ms: u64,
    /// How long Redis keeps the key from now on (at least).
    pub(crate) keep_for: Duration,
}

impl L2Tier {
    /// Extends a live value's expiry in Redis and in its envelope, atomically, and with it
    /// the sets of its `tags`. `None` when the key holds no live value (of the expected
    /// version).
    pub(crate) async fn touch(
        &self,
        ns: Target<'_>,
        key: &str,
        ext: Extension,
        tags: &[&str],
    ) -> L2Result<Option<Touched>> {
        let (namespace, ns) = (ns.name, Some(ns));
        let script = if tags.is_empty() {
            &*SCRIPT
        } else {
            &*TAGGED_SCRIPT
        };
        let mut inv = script.prepare_invoke();
        inv.key(self.keys().meta_key())
            .key(self.keys().value_key(namespace, key))
            .arg(ext.expected.map_or_else(String::new, |v| v.to_string()))
            .arg(ext.expires_ms)
            .arg(ttl_ms(ext.keep_for))
            .arg(crate::codec::unix_ms())
            .arg(crate::key::KeySpace::floor_field(namespace));
        if !tags.is_empty() {
            for t in tags {
                inv.key(self.keys().tag_key(namespace, t));
            }
            inv.key(self.keys().tag_registry_key(namespace))
                .arg(crate::key::KeySpace::tag_anchor_field(namespace));
        }
        let inv = &inv;
        let (done, version, expires_ms): (u8, u64, u64) = self
            .call(ns, |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok((done == 1).then_some(Touched {
            version,
            expires_ms,
        }))
    }
}
