//! The Lua scripts of the tier's single-key calls: write, invalidate, clear a namespace, fill,
//! unlock, heartbeat. Redis runs each one atomically, so a write and its broadcast land together
//! or not at all. The multi-key and tag scripts (which wrap `FILL`) are in `multi.rs`, the
//! sliding-expiry one in `touch.rs`.

use redis::Script;

// KEYS[1] is always the meta hash (see `KeySpace::meta_key`): field `version` is the counter
// every published write draws from (and only those: a fill takes the current version without
// drawing, so within one epoch the messages on the bus carry versions 1, 2, 3... with no
// hole, and a receiver that sees a hole knows it missed a message), `epoch` identifies this incarnation of the counter, `floor:{ns}` are
// the namespace floors. ARGV[1] is always a candidate epoch: the first write after the hash
// was created (a new, flushed or restarted Redis) installs it. Every write returns
// {version, epoch}, and every message carries both, so a node notices when the counter starts
// over and resynchronises instead of comparing versions across incarnations.
const PREAMBLE: &str = r"
local function epoch()
  local e = redis.call('HGET', KEYS[1], 'epoch')
  if not e then
    redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
    e = ARGV[1]
  end
  return tonumber(e)
end
local function stamp(v, e)
  return struct.pack('>I8', v) .. struct.pack('>I8', e)
end
";

// KEYS: meta, value key. ARGV: epoch, envelope head, payload, ttl ms, channel, message head,
// message tail.
pub(super) const WRITE: &str = r"
local e = epoch()
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('SET', KEYS[2], ARGV[2] .. struct.pack('>I8', v) .. ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. stamp(v, e) .. ARGV[7])
return {v, e}
";

// KEYS: meta, value keys... ARGV: epoch, tombstone head, ttl ms, channel, message head,
// message tail.
pub(super) const INVALIDATE: &str = r"
local e = epoch()
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2] .. struct.pack('>I8', v), 'PX', ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. stamp(v, e) .. ARGV[6])
return {v, e}
";

// KEYS: meta. ARGV: epoch, floor field, channel, message head, message tail.
pub(super) const CLEAR_NAMESPACE: &str = r"
local e = epoch()
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], ARGV[2], v)
redis.call('PUBLISH', ARGV[3], ARGV[4] .. stamp(v, e) .. ARGV[5])
return {v, e}
";

// KEYS: meta, value key. ARGV: epoch, version and epoch noted before the load, envelope head,
// body, ttl ms, floor field, now (unix ms), version the caller may replace (2^64-1: none). Returns
// {1, version, epoch} when stored, {0, 0, epoch} when refused. The fill takes the current
// version (it is as fresh as everything written up to it) without drawing one: it publishes
// nothing, and must leave no hole in the sequence. A live value is kept unless it is past its
// expiry (kept only for fail-safe) or is the very version a refresh-ahead set out to replace.
pub(super) const FILL: &str = r"
local cur_e = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0
if cur_e ~= tonumber(ARGV[3]) then return {0, 0, cur_e} end
local seen = tonumber(ARGV[2])
local floor = tonumber(redis.call('HGET', KEYS[1], ARGV[7]) or '0') or 0
if floor > seen then return {0, 0, cur_e} end
local cur = redis.call('GET', KEYS[2])
if cur and string.byte(cur, 1) == 193 then
  -- A format this build cannot read may be a newer deploy's: keep it.
  if string.byte(cur, 2) ~= 1 then return {0, 0, cur_e} end
  if string.len(cur) >= 11 then
    local ver = struct.unpack('>I8', cur, 4)
    local flags = string.byte(cur, 3)
    if bit.band(flags, 1) == 1 then
      if ver > seen then return {0, 0, cur_e} end
    elseif ver >= floor then
      local expired = bit.band(flags, 4) == 4 and string.len(cur) >= 19
        and struct.unpack('>I8', cur, 12) <= tonumber(ARGV[8])
      local replaceable = ver == tonumber(ARGV[9])
      -- An expired value is replaced only if it is older than the load: a write that landed
      -- during the load (a replay, say) wins even if it is past its expiry.
      local stale = expired and ver <= seen
      -- A live value, even one this node cannot decode (a newer schema?), is kept.
      if not stale and not replaceable then return {0, 0, cur_e} end
    end
  end
end
local e = epoch()
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
redis.call('SET', KEYS[2], ARGV[4] .. struct.pack('>I8', v) .. ARGV[5], 'PX', ARGV[6])
return {1, v, e}
";

// KEYS: lock. ARGV: token. Deletes the lock only if this caller still holds it.
pub(super) const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

// KEYS: meta. ARGV: epoch, channel, message head, message tail. Publishes the current version
// without drawing one: a receiver behind it has missed a message.
pub(super) const HEARTBEAT: &str = r"
local e = epoch()
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
redis.call('PUBLISH', ARGV[2], ARGV[3] .. stamp(v, e) .. ARGV[4])
return {v, e}
";

pub(super) fn script(body: &str) -> Script {
    Script::new(&format!("{PREAMBLE}{body}"))
}

/// A script Redis runs only where it could write: with a `#!lua` line and no `no-writes`
/// flag, Redis 7 refuses it on a read-only replica (READONLY) and under `noeviction` with
/// memory full (OOM) before running it, so a heartbeat stops vouching for a node whose writes
/// would be refused, and a node left on a demoted primary hears READONLY and moves.
pub(super) fn writing_script(body: &str) -> Script {
    Script::new(&format!("#!lua\n{PREAMBLE}{body}"))
}
