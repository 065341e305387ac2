//! Batches and tags on the L2 tier: one MGET for many keys, one script writing many keys under
//! one version and one message, tagged fills, and tag invalidation.
//!
//! Tags are kept in Redis as one sorted set per namespace and tag,
//! `{prefix}:_tc:tag:{ns}:{tag}`, listing the value keys written or filled with the tag. The
//! write and fill scripts add to it in the same atomic step as the value, and keep it alive at
//! least as long as the values it lists. `INVALIDATE_TAG` reads the set, replaces every listed
//! key by a tombstone, records the version as the tag's *floor*
//! (`{prefix}:_tc:tagfloor:{ns}:{tag}`, kept one L2 TTL), deletes the set and publishes one
//! message, all in one script. The floor closes the race the set cannot: a load of a key no set
//! lists yet (never cached) that started before the invalidation; its tagged fill is refused, as
//! FILL refuses one older than a tombstone.
//!
//! A listed key may since have been rewritten without the tag, or evicted: it is tombstoned
//! anyway. That is a spurious invalidation (the next read reloads it), never a stale read. A
//! member's score is when no node can still hold a copy of what it was joined with (see
//! `TAG_HELPERS`); only then is it pruned, so a set tracks the keys live in the last two TTLs
//! and no longer grows with every key ever tagged. A set Redis evicted is noticed through the
//! namespace's tag registry, and its tag invalidation clears the namespace instead.

use super::{codec, script, ttl_ms, L2Result, L2Tier, Payload, Stamp, Target, FILL};
use crate::key::KeySpace;
use crate::wire::Outgoing;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

// Makes a key live at least `ttl` ms more, never less than it had: a tag set must outlive
// every value it lists (values may carry TTLs of their own, so a set is only ever extended).
//
// A member's score is a time (unix ms, Redis's clock) after which no node can hold a copy of
// the value it was joined with: the value leaves Redis after `ttl` (its PX, fail-safe
// included), and an L1 copy made just before then lives at most the namespace's L1 TTL plus
// its fail-safe window, which build() keeps under that TTL; a second of slack on top. (A
// value given a shorter TTL than the namespace's L1 TTL is fresh in L1 only up to its own
// expiry; fail-safe may keep a stale copy longer, served only while its loader fails.) A
// score only grows. Members past theirs are pruned as the set is joined, and the set itself
// lives as long as its highest score. A plain set left by an older version (`legacy`) is converted as
// it is first joined, each member scored by the set's own end plus the joining value's life.
// (Nodes of the older version then fail on it with WRONGTYPE: upgrade a fleet together.)
//
// Eviction (`allkeys-*`, `volatile-*`) can take a tag set while the values it lists live on,
// and a set that is only written goes cold first. So each namespace keeps a registry hash
// (`{prefix}:_tc:tags:{ns}`, no TTL): per tag set, when it expires (unix ms, Redis's clock),
// negated once the set was found gone before its time (its members are then unknown), and a
// sentinel field '' (the cursor of the scan that prunes records past their time) so it never
// empties. The meta hash's field `tags:{ns}` anchors the
// registry ('1'; 'lost' once the registry itself was found gone). INVALIDATE_TAG clears the
// namespace rather than trust a set that may be incomplete.
pub(super) const TAG_HELPERS: &str = r"
local function extend(k, ttl)
  if redis.call('PTTL', k) < tonumber(ttl) then redis.call('PEXPIRE', k, ttl) end
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function members_of(set)
  if redis.call('TYPE', set).ok == 'set' then return redis.call('SMEMBERS', set) end
  return redis.call('ZRANGE', set, 0, -1)
end
local function legacy(set, now, life)
  if redis.call('TYPE', set).ok ~= 'set' then return end
  local left = math.max(redis.call('PTTL', set), 0)
  local ms = redis.call('SMEMBERS', set)
  redis.call('DEL', set)
  for _, m in ipairs(ms) do redis.call('ZADD', set, now + left + life, m) end
  redis.call('PEXPIRE', set, left + life)
end
local function registered(reg, anchor)
  local a = redis.call('HGET', KEYS[1], anchor)
  if redis.call('EXISTS', reg) == 0 then
    redis.call('HSET', reg, '', '0')
    if a then a = 'lost' else a = '1' end
    redis.call('HSET', KEYS[1], anchor, a)
  elseif not a then
    redis.call('HSET', KEYS[1], anchor, '1')
  end
end
local function join(reg, set, members, ttl, now)
  local was = tonumber(redis.call('HGET', reg, set) or '0') or 0
  local gone = redis.call('EXISTS', set) == 0
  local life = 2 * tonumber(ttl) + 1000
  legacy(set, now, life)
  for _, m in ipairs(members) do
    local had = tonumber(redis.call('ZSCORE', set, m))
    if not had or had < now + life then redis.call('ZADD', set, now + life, m) end
  end
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
  extend(set, life)
  local exp = now + redis.call('PTTL', set)
  if (was < 0 and -was > now) or (gone and was > now) then
    exp = -math.max(exp, math.abs(was))
  end
  redis.call('HSET', reg, set, exp)
  -- Prunes records past their time a few at a time, the scan's cursor kept in the sentinel.
  local page = redis.call('HSCAN', reg, redis.call('HGET', reg, '') or '0', 'COUNT', 4)
  for i = 1, #page[2], 2 do
    local v = tonumber(page[2][i + 1])
    if page[2][i] ~= '' and v and math.abs(v) < now then redis.call('HDEL', reg, page[2][i]) end
  end
  redis.call('HSET', reg, '', page[1])
end
local function untrusted(reg, anchor, set, now)
  local a = redis.call('HGET', KEYS[1], anchor)
  if a == 'lost' or (a and redis.call('EXISTS', reg) == 0) then return true end
  local was = tonumber(redis.call('HGET', reg, set) or '0') or 0
  return (was < 0 and -was > now) or (was > now and redis.call('EXISTS', set) == 0)
end
";

// KEYS: meta, n value keys, the tag sets, then the registry. ARGV: epoch, channel, message
// head, message tail, n, then per key its envelope head, body and ttl ms (each value has its
// own flags and, with jitter, its own TTL), then the registry's anchor field. One version for
// every key, one message listing them all (built by the caller, as for INVALIDATE).
const WRITE_MANY: &str = r"
local anchor = table.remove(ARGV)
local reg = table.remove(KEYS)
local e = epoch()
local v = draw()
local n = tonumber(ARGV[5])
local ver = struct.pack('>I8', v)
local longest = 1
local members = {}
for i = 1, n do
  local at = 3 * i + 3
  redis.call('SET', KEYS[1 + i], ARGV[at] .. ver .. ARGV[at + 1], 'PX', ARGV[at + 2])
  longest = math.max(longest, tonumber(ARGV[at + 2]))
  members[i] = KEYS[1 + i]
end
if #KEYS > n + 1 then
  registered(reg, anchor)
  local now = clock()
  for t = n + 2, #KEYS do join(reg, KEYS[t], members, longest, now) end
end
publish(ARGV[2], ARGV[3] .. stamp(v, e) .. ARGV[4], v)
return {v, e}
";

// FILL, wrapped: FILL's own keys and arguments come first, untouched, so its layout stays its
// own. The caller appends the tag sets, the tag floors and the registry to KEYS, and the
// version and epoch noted before the load, the TTL, the registry's anchor field and the
// number of tags to ARGV; they are popped off before FILL's text runs. A tag invalidated after
// the load began refuses the fill; a stored fill joins every tag's set.
const TAGGED_FILL_HEAD: &str = r"
local ntags = tonumber(table.remove(ARGV))
local anchor = table.remove(ARGV)
local ttl = table.remove(ARGV)
local seen_e = tonumber(table.remove(ARGV))
local seen = tonumber(table.remove(ARGV))
local reg = table.remove(KEYS)
local floors, sets = {}, {}
for i = ntags, 1, -1 do floors[i] = table.remove(KEYS) end
for i = ntags, 1, -1 do sets[i] = table.remove(KEYS) end
for i = 1, ntags do
  local f = redis.call('HMGET', floors[i], 'version', 'epoch')
  if tonumber(f[2]) == seen_e and (tonumber(f[1]) or 0) > seen then
    return {0, 0, tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0}
  end
end
local function fill()
";
const TAGGED_FILL_TAIL: &str = r"
end
local r = fill()
if r[1] == 1 then
  registered(reg, anchor)
  local now = clock()
  for i = 1, ntags do join(reg, sets[i], {KEYS[2]}, ttl, now) end
end
return r
";

// KEYS: meta, then per namespace its tag set, its tag floor and its registry. ARGV: epoch,
// tombstone head, channel, message head, message tail, then per namespace its value key
// prefix (`{prefix}:{ns}:`), its TTL in ms, its section head, its floor field, its clear
// message's head and tail and its registry's anchor field, then the message cap in bytes.
// Tombstones every key the sets list (as INVALIDATE does), sets each tag floor to the version,
// deletes the sets and publishes the keys in one message. Every byte a script publishes sits
// in each subscriber's output buffer at once, so a namespace whose keys would take the
// message over the cap is cleared instead of listed: its keys are still tombstoned, and its
// floor is raised under a version of its own, published as CLEAR_NAMESPACE does. So is one
// whose set the registry cannot vouch for (see TAG_HELPERS); a clear resets the namespace's
// registry, since every value it could have missed is now dead.
// Returns {version, epoch, {keys of each namespace, without the prefix}, {version of each
// namespace's clear, 0 where none}}.
const INVALIDATE_TAG: &str = r"
local cap = tonumber(table.remove(ARGV))
local e = epoch()
local v = draw()
local now = clock()
local parts, sections, bytes, evicted, cleared = {}, 0, 0, {}, {}
for i = 1, (#KEYS - 1) / 3 do
  local set, floor, reg = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local at = 7 * i - 1
  local prefix, ttl, section = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local keys, size = {}, #section + 4
  for _, m in ipairs(members_of(set)) do
    if string.sub(m, 1, #prefix) == prefix then
      keys[#keys + 1] = string.sub(m, #prefix + 1)
      size = size + 4 + #keys[#keys]
    end
  end
  for _, k in ipairs(keys) do
    redis.call('SET', prefix .. k, tombstone(prefix .. k, ARGV[2], v), 'PX', ttl)
  end
  cleared[i] = 0
  if untrusted(reg, ARGV[at + 6], set, now) or (#keys > 0 and bytes + size > cap) then
    cleared[i] = -1
    redis.call('DEL', reg)
    redis.call('HDEL', KEYS[1], ARGV[at + 6])
  elseif #keys > 0 then
    bytes = bytes + size
    sections = sections + 1
    parts[#parts + 1] = section .. struct.pack('>I4', #keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = struct.pack('>I4', #k) .. k end
  end
  redis.call('DEL', set)
  if cleared[i] == 0 then redis.call('HDEL', reg, set) end
  redis.call('HSET', floor, 'version', v, 'epoch', e)
  extend(floor, ttl)
  evicted[i] = keys
end
publish(ARGV[3], ARGV[4] .. stamp(v, e) .. ARGV[5]
  .. struct.pack('>I2', sections) .. table.concat(parts), v)
for i = 1, #cleared do
  if cleared[i] == -1 then
    local at = 7 * i - 1
    local c = draw()
    redis.call('HSET', KEYS[1], ARGV[at + 3], c)
    publish(ARGV[3], ARGV[at + 4] .. stamp(c, e) .. ARGV[at + 5], c)
    cleared[i] = c
  end
end
return {v, e, evicted, cleared}
";

static WRITE_MANY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&format!("{TAG_HELPERS}{WRITE_MANY}")));
static TAGGED_FILL_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{TAG_HELPERS}{TAGGED_FILL_HEAD}{FILL}{TAGGED_FILL_TAIL}"
    ))
});
static INVALIDATE_TAG_SCRIPT: LazyLock<super::scripts::Flagged> = LazyLock::new(|| {
    super::scripts::invalidating_script(&format!("{TAG_HELPERS}{INVALIDATE_TAG}"))
});

/// What a batch read (`get_many`) read: the raw envelopes, in key order, and when asked, the version counter
/// read right after them (what a load notes before calling its loader).
pub(crate) type ManyRead = (Vec<Option<Vec<u8>>>, Option<Stamp>);

impl L2Tier {
    /// Reads many keys in one round trip (one MGET). With `stamp`, the version counter is read
    /// in the same pipeline, after the values, as a single load reads it after its GET.
    pub(crate) async fn get_many(
        &self,
        ns: Target<'_>,
        keys: &[&str],
        stamp: bool,
    ) -> L2Result<ManyRead> {
        let (namespace, ns) = (ns.name, Some(ns));
        let mut pipe = redis::pipe();
        pipe.cmd("MGET");
        for k in keys {
            pipe.arg(self.keys.value_key(namespace, k));
        }
        if stamp {
            pipe.cmd("HMGET")
                .arg(self.keys.meta_key())
                .arg(KeySpace::VERSION_FIELD)
                .arg(KeySpace::EPOCH_FIELD);
        }
        let pipe = &pipe;
        self.call(ns, |mut c| async move {
            if stamp {
                let (values, (v, e)): (_, (Option<String>, Option<String>)) =
                    pipe.query_async(&mut c).await?;
                let stamp = Stamp {
                    version: super::lenient_u64(v.as_deref()),
                    epoch: super::lenient_u64(e.as_deref()),
                };
                Ok((values, Some(stamp)))
            } else {
                let (values,) = pipe.query_async(&mut c).await?;
                Ok((values, None))
            }
        })
        .await
        .inspect(|(_, stamp)| {
            if let Some(stamp) = stamp {
                self.epochs.observe(stamp.epoch, stamp.version);
            }
        })
    }

    /// Stores many values (key, encoded value, how long Redis keeps it) under one version
    /// drawn once, adds their keys to each tag's set, and publishes `message` (one
    /// invalidation listing every key), atomically.
    pub(crate) async fn write_many(
        &self,
        ns: Target<'_>,
        entries: &[(&str, &codec::Encoded, Duration)],
        tags: &[&str],
        message: &Outgoing,
    ) -> L2Result<Stamp> {
        if let ([(key, encoded, ttl)], []) = (entries, tags) {
            // One untagged value: the single-key script, which needs no loop.
            let payload = Payload { encoded, ttl: *ttl };
            return self.write(ns, key, payload, message).await;
        }
        let (namespace, ns) = (ns.name, Some(ns));
        let mut inv = WRITE_MANY_SCRIPT.prepare_invoke();
        inv.key(self.keys.meta_key());
        for (k, ..) in entries {
            inv.key(self.keys.value_key(namespace, k));
        }
        for t in tags {
            inv.key(self.keys.tag_key(namespace, t));
        }
        inv.key(self.keys.tag_registry_key(namespace));
        inv.arg(self.first_arg())
            .arg(self.keys.channel())
            .arg(message.head())
            .arg(message.tail())
            .arg(entries.len());
        for (_, encoded, keep) in entries {
            inv.arg(&encoded.head[..])
                .arg(&encoded.body)
                .arg(ttl_ms(*keep));
        }
        inv.arg(KeySpace::tag_anchor_field(namespace));
        self.invoke(ns, &inv).await
    }

    /// [`fill`](L2Tier::fill), and with tags: refused as well if any tag was invalidated after
    /// `seen`; when stored, the key joins every tag's set.
    pub(crate) async fn fill_tagged(
        &self,
        ns: Target<'_>,
        key: &str,
        (seen, replaces): (Stamp, Option<u64>),
        value: Payload<'_>,
        tags: &[&str],
    ) -> L2Result<Result<Stamp, u64>> {
        let namespace = ns.name;
        if tags.is_empty() {
            return self.fill(ns, key, seen, replaces, value).await;
        }
        let ttl = ttl_ms(value.ttl);
        let extra = |inv: &mut redis::ScriptInvocation<'_>| {
            for t in tags {
                inv.key(self.keys.tag_key(namespace, t));
            }
            for t in tags {
                inv.key(self.keys.tag_floor_key(namespace, t));
            }
            inv.key(self.keys.tag_registry_key(namespace));
            inv.arg(seen.version)
                .arg(seen.epoch)
                .arg(ttl)
                .arg(KeySpace::tag_anchor_field(namespace))
                .arg(tags.len());
        };
        self.fill_with(&TAGGED_FILL_SCRIPT, ns, key, (seen, replaces), value, extra)
            .await
    }

    /// Invalidates `tag` in each namespace (with its L2 TTL) in one script and one message from
    /// `origin`; a namespace whose keys would take the message over the cap is cleared instead
    /// (see `INVALIDATE_TAG`). Returns the version and, per namespace, what was done. A failure
    /// counts for every namespace.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        targets: &[(Target<'_>, Duration)],
        origin: u64,
    ) -> L2Result<(Stamp, Vec<TagInvalidated>)> {
        let message = Outgoing::multi(origin);
        let namespaces: Vec<(&str, Duration, Outgoing)> = targets
            .iter()
            .map(|(t, d)| (t.name, *d, Outgoing::namespace(origin, t.name)))
            .collect();
        let args = |inv: &mut redis::ScriptInvocation<'_>| {
            inv.key(self.keys.meta_key());
            for (ns, ..) in &namespaces {
                inv.key(self.keys.tag_key(ns, tag))
                    .key(self.keys.tag_floor_key(ns, tag))
                    .key(self.keys.tag_registry_key(ns));
            }
            inv.arg(self.first_arg())
                .arg(&codec::tombstone_head()[..])
                .arg(self.keys.channel())
                .arg(message.head())
                .arg(message.tail());
            for (ns, ttl, clear) in &namespaces {
                inv.arg(self.keys.value_key(ns, ""))
                    .arg(ttl_ms(*ttl))
                    .arg(Outgoing::section_head(ns))
                    .arg(KeySpace::floor_field(ns))
                    .arg(clear.head())
                    .arg(clear.tail())
                    .arg(KeySpace::tag_anchor_field(ns));
            }
            inv.arg(crate::wire::MAX_MESSAGE - message.overhead());
        };
        let called = self.call_flagged(None, &INVALIDATE_TAG_SCRIPT, args).await;
        if let Err(e) = &called {
            targets.iter().for_each(|(t, _)| t.count(e));
        }
        let (version, epoch, keys, cleared): (u64, u64, Vec<Vec<String>>, Vec<u64>) = called?;
        let highest = cleared.iter().copied().fold(version, u64::max);
        self.epochs.observe(epoch, highest);
        let done = keys
            .into_iter()
            .zip(cleared)
            .map(|(keys, c)| TagInvalidated {
                keys,
                cleared_at: (c != 0).then_some(c),
            })
            .collect();
        Ok((Stamp { version, epoch }, done))
    }
}

/// What a tag invalidation did in one namespace.
pub(crate) struct TagInvalidated {
    /// The keys the tag's set listed (without the prefix).
    pub(crate) keys: Vec<String>,
    /// Too many keys for one message: the namespace was cleared instead, at this version (its
    /// new floor).
    pub(crate) cleared_at: Option<u64>,
}
