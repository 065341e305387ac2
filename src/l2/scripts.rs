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
//
// ARGV[1] is `candidate:least`: with the candidate epoch, the highest version this node has
// seen. A draw never returns a version at or below it, so the counter never goes back behind
// what any node saw: after a restore, a lagging replica's promotion or the loss of the meta
// hash, versions drawn afterwards stay comparable with everything before. A draw that has to
// jump found such a history: it sets `rollback_floor` above it, a floor of every namespace
// (`floor_of`), so no value from before can pass for live; the jump is a hole every node's
// sequence sees, and their resync reads it.
//
// ARGV[1] goes on with the invalidation log's length and its largest entry in bytes:
// `candidate:least:entries:bytes`. Every message a drawn version publishes is also appended
// to the log, a stream beside the meta hash (`KeySpace::log_key`) whose entry ids are the
// versions, so a node that missed messages reads them back instead of clearing its L1 (see
// `l2/log.rs`): field `m`, the message. A message over the byte limit keeps only its first 35
// bytes (`wire::HEADER`), in field `h`: a reader cannot replay past it, but can tell which
// message it was.
// The append is a `pcall`: a log Redis refuses (an ACL line without XADD, a stream id behind
// one already there) costs replays, never the write. A new epoch starts a new log.
const PREAMBLE: &str = r"
-- Effects replication (Redis 5 and 6 may be configured to replicate the script instead,
-- where XADD, being flagged random, would refuse every write after it; a no-op on Redis 7).
if redis.replicate_commands then redis.replicate_commands() end
local candidate, least, log_len, log_max = string.match(ARGV[1], '^(%d+):(%d+):(%d+):(%d+)$')
if not candidate then
  candidate, least = string.match(ARGV[1], '^(%d+):(%d+)$')
  if not candidate then candidate, least = ARGV[1], '0' end
  log_len, log_max = '0', '0'
end
least, log_len, log_max = tonumber(least), tonumber(log_len), tonumber(log_max)
local log_key = KEYS[1] .. ':log'
local function epoch()
  local e = redis.call('HGET', KEYS[1], 'epoch')
  if not e then
    redis.call('HSET', KEYS[1], 'epoch', candidate)
    redis.call('DEL', log_key)
    e = candidate
  end
  return tonumber(e)
end
local function publish(channel, msg, v)
  redis.call('PUBLISH', channel, msg)
  if log_len > 0 then
    local field = 'm'
    if #msg > log_max then field, msg = 'h', string.sub(msg, 1, 35) end
    redis.pcall('XADD', log_key, 'MAXLEN', '~', log_len, string.format('%d-0', v), field, msg)
  end
end
local function draw()
  local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
  if v <= least then
    v = least + 1
    redis.call('HSET', KEYS[1], 'version', v)
    local rf = tonumber(redis.call('HGET', KEYS[1], 'rollback_floor') or '0') or 0
    if rf < v then redis.call('HSET', KEYS[1], 'rollback_floor', v) end
  end
  return v
end
local function floor_of(field)
  local f = tonumber(redis.call('HGET', KEYS[1], field) or '0') or 0
  local rf = tonumber(redis.call('HGET', KEYS[1], 'rollback_floor') or '0') or 0
  return math.max(f, rf)
end
local function stamp(v, e)
  return struct.pack('>I8', v) .. struct.pack('>I8', e)
end
local function source_of(cur)
  if not cur or string.len(cur) < 11 or string.byte(cur, 1) ~= 193 or string.byte(cur, 2) ~= 1 then
    return nil
  end
  local flags = string.byte(cur, 3)
  if bit.band(flags, 16) == 0 then return nil end
  local at = 12
  if bit.band(flags, 4) == 4 then at = 20 end
  if string.len(cur) < at + 7 then return nil end
  return string.sub(cur, at, at + 7)
end
-- The tombstone of key k at version v, from its 3-byte head: carrying the source version of
-- the entry it replaces (see `l2/source.rs`), so a late older `set_if_newer` stays out. The
-- first 27 bytes hold any envelope's head, version, expiry and source version. A GETRANGE
-- Redis refuses (an ACL line without it) only loses the source version, never the tombstone.
local function tombstone(k, head, v)
  local prefix = redis.pcall('GETRANGE', k, 0, 26)
  if type(prefix) ~= 'string' then prefix = nil end
  local src = source_of(prefix)
  if not src then return head .. struct.pack('>I8', v) end
  local flags = bit.bor(string.byte(head, 3), 16)
  return string.sub(head, 1, 2) .. string.char(flags) .. struct.pack('>I8', v) .. src
end
";

// KEYS: meta, value key. ARGV: epoch, envelope head, payload, ttl ms, channel, message head,
// message tail.
pub(super) const WRITE: &str = r"
local e = epoch()
local v = draw()
redis.call('SET', KEYS[2], ARGV[2] .. struct.pack('>I8', v) .. ARGV[3], 'PX', ARGV[4])
publish(ARGV[5], ARGV[6] .. stamp(v, e) .. ARGV[7], v)
return {v, e}
";

// The replay of a write queued while Redis was unreachable. KEYS: meta, value key. ARGV:
// epoch, envelope head, payload, ttl ms, channel, message head, message tail, the version and
// epoch the queuing node had seen when it queued the write, floor field, tombstone head, the
// version and epoch of a clear this node queued before the write and has landed (0 0: none),
// the tombstone's ttl ms.
// The value is stored only if nothing newer than that knowledge touched the key: no write or
// tombstone of it with a higher version, no clear of its namespace after it other than the
// node's own, and the same history: in another epoch, or once a rollback was found after the
// write was queued (`rollback_floor` above what it knew), any stored version is taken as
// newer, so only a key nobody holds takes it. Otherwise the key is tombstoned instead (kept
// the namespace's L2 TTL, as by INVALIDATE): a replay never lands over a write it did not
// know of, and a tombstone is safe whichever of the two was newer. Both publish. Returns
// {version, epoch, 1 if stored | 0 if tombstoned}.
pub(super) const REPLAY_WRITE: &str = r"
local e = epoch()
local known = tonumber(ARGV[8])
local rf = tonumber(redis.call('HGET', KEYS[1], 'rollback_floor') or '0') or 0
if e ~= tonumber(ARGV[9]) or rf > known then known = 0 end
local own = 0
if e == tonumber(ARGV[13]) then own = tonumber(ARGV[12]) end
local floor = tonumber(redis.call('HGET', KEYS[1], ARGV[10]) or '0') or 0
local newer = floor > math.max(known, own)
if not newer then
  local cur = redis.call('GET', KEYS[2])
  if cur then
    if string.byte(cur, 1) == 193 and string.byte(cur, 2) == 1 and string.len(cur) >= 11 then
      newer = struct.unpack('>I8', cur, 4) > known
    else
      -- Bytes this build cannot date: not overwritten by a value.
      newer = true
    end
  end
end
local v = draw()
if newer then
  redis.call('SET', KEYS[2], tombstone(KEYS[2], ARGV[11], v), 'PX', ARGV[14])
else
  redis.call('SET', KEYS[2], ARGV[2] .. struct.pack('>I8', v) .. ARGV[3], 'PX', ARGV[4])
end
publish(ARGV[5], ARGV[6] .. stamp(v, e) .. ARGV[7], v)
return {v, e, newer and 0 or 1}
";

// KEYS: meta, value keys... ARGV: epoch, tombstone head, ttl ms, channel, message head,
// message tail.
pub(super) const INVALIDATE: &str = r"
local e = epoch()
local v = draw()
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], tombstone(KEYS[i], ARGV[2], v), 'PX', ARGV[3])
end
publish(ARGV[4], ARGV[5] .. stamp(v, e) .. ARGV[6], v)
return {v, e}
";

// KEYS: meta. ARGV: epoch, floor field, channel, message head, message tail.
pub(super) const CLEAR_NAMESPACE: &str = r"
local e = epoch()
local v = draw()
redis.call('HSET', KEYS[1], ARGV[2], v)
publish(ARGV[3], ARGV[4] .. stamp(v, e) .. ARGV[5], v)
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
local floor = floor_of(ARGV[7])
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
local head, body = ARGV[4], ARGV[5]
local src = source_of(cur)
local flags = string.byte(head, 3)
if src and bit.band(flags, 16) == 0 then
  -- The load began after that entry was written: it is at least as new at the source, and
  -- keeps its source version, or a late older source-ordered write could land over it.
  local at = 0
  if bit.band(flags, 4) == 4 then at = 8 end
  head = string.sub(head, 1, 2) .. string.char(bit.bor(flags, 16))
  body = string.sub(body, 1, at) .. src .. string.sub(body, at + 1)
end
local e = epoch()
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
redis.call('SET', KEYS[2], head .. struct.pack('>I8', v) .. body, 'PX', ARGV[6])
return {1, v, e}
";

// The repair of a history that went back, found by a resync before any draw did. KEYS: meta.
// ARGV: the highest version this node has seen. Raises the counter to it and `rollback_floor`
// above it (values of the old history are dead; versions drawn since are above it, see
// PREAMBLE's `draw`). Publishes nothing: the counter's jump is a hole every other node's
// sequence sees, and their resync reads the floor. Returns the counter as it was.
pub(super) const RAISE_COUNTER: &str = r"
local least = tonumber(ARGV[1])
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
if v < least then redis.call('HSET', KEYS[1], 'version', least) end
local rf = tonumber(redis.call('HGET', KEYS[1], 'rollback_floor') or '0') or 0
if rf <= least then redis.call('HSET', KEYS[1], 'rollback_floor', least + 1) end
return v
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

/// A script in two forms: with a `#!lua` line, whose flags Redis 7 honours, and plain, for a
/// Redis older than 7 (which cannot compile the line; the tier falls back at the first
/// compile failure and loses only what the flags gave).
pub(crate) struct Flagged {
    modern: Script,
    legacy: Script,
}

impl Flagged {
    pub(crate) fn pick(&self, legacy: bool) -> &Script {
        if legacy {
            &self.legacy
        } else {
            &self.modern
        }
    }
}

/// An invalidation (or the heartbeat): with a `#!lua` line and no `no-writes` flag, Redis 7
/// refuses it on a read-only replica (READONLY) before running it, so a heartbeat stops
/// vouching for a node left on a demoted primary, which hears READONLY and moves. But it
/// runs under `noeviction` with memory full (`allow-oom`): a tombstone or a floor is a few
/// bytes, and an invalidation Redis refused would leave the old value served everywhere
/// (Redis lets a plain `DEL` through when full for the same reason); since invalidations
/// land, so does the heartbeat that vouches for them.
pub(crate) fn invalidating_script(body: &str) -> Flagged {
    Flagged {
        modern: Script::new(&format!("#!lua flags=allow-oom\n{PREAMBLE}{body}")),
        legacy: script(body),
    }
}
