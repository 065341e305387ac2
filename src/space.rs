//! A namespace's state (its "space"): the L1 tier, the generation guard, the floor, the flights
//! in progress, the bypass flag and the metric handles, shared by every typed handle on the
//! namespace, by the read and write paths, by the outbox and by the bus subscriber. Also the
//! rules that turn a policy into an entry's life (TTLs, jitter, fail-safe, refresh-ahead).

use crate::codec;
use crate::config::NamespacePolicy;
use crate::error::{Error, Result};
use crate::guard::{Generations, Ticket};
use crate::l1::{AnyValue, Bound, L1Entry, L1Tier};
use crate::l2::Target;
use crate::metrics::NamespaceMetrics;
use std::any::{type_name, TypeId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The key and value types a namespace was first opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types {
    key: TypeId,
    value: TypeId,
    key_name: &'static str,
    value_name: &'static str,
}

/// A namespace's state, shared by all its handles and by the bus subscriber.
pub(crate) struct NamespaceCore {
    pub(crate) name: String,
    pub(crate) policy: NamespacePolicy,
    pub(crate) l1: L1Tier,
    pub(crate) gens: Generations,
    /// Version of the last whole-namespace invalidation: L2 values older than it are dead.
    floor: AtomicU64,
    pub(crate) metrics: NamespaceMetrics,
    pub(crate) flights: crate::flight::Flights,
    types: OnceLock<Types>,
    /// Set while the bus cannot vouch for this namespace's staleness bound: L1 is neither read
    /// nor filled.
    pub(crate) bypass: AtomicBool,
}

impl NamespaceCore {
    pub(crate) fn new(name: String, policy: NamespacePolicy) -> Self {
        let core = Self {
            l1: L1Tier::new(
                match policy.l1_max_bytes {
                    Some(bytes) => Bound::Bytes(bytes),
                    None => Bound::Entries(policy.l1_capacity),
                },
                policy.l1_ttl_value() + policy.fail_safe.unwrap_or(Duration::ZERO),
            ),
            metrics: NamespaceMetrics::new(&name),
            gens: Generations::new(),
            flights: Default::default(),
            floor: AtomicU64::new(0),
            types: OnceLock::new(),
            // Until the first subscription proves the bus works.
            bypass: AtomicBool::new(policy.staleness_bound.is_some()),
            name,
            policy,
        };
        // The gauge follows changes only: a namespace that starts bypassed (and may stay so,
        // Redis being down) must say so from the start.
        if core.bypass.load(Relaxed) {
            core.metrics.bypassing.set(1.0);
            core.metrics.bypass_time.follow(|| true);
        }
        core
    }

    /// Pins the namespace's types on first use; later uses must match.
    pub(crate) fn check_types<K: ?Sized + 'static, V: 'static>(&self) -> Result<()> {
        let want = Types {
            key: TypeId::of::<K>(),
            value: TypeId::of::<V>(),
            key_name: type_name::<K>(),
            value_name: type_name::<V>(),
        };
        let have = self.types.get_or_init(|| want);
        if *have == want {
            return Ok(());
        }
        Err(Error::Namespace(format!(
            "namespace {:?} holds <{}, {}>, not <{}, {}>",
            self.name, have.key_name, have.value_name, want.key_name, want.value_name
        )))
    }

    /// What L2 calls made for this namespace are made for (their failures count here).
    pub(crate) fn target(&self) -> Target<'_> {
        Target {
            name: &self.name,
            metrics: &self.metrics,
            quiet_skips: false,
        }
    }

    /// [`target`](Self::target) for replays, which do not count a skipped call again.
    pub(crate) fn replay_target(&self) -> Target<'_> {
        Target {
            quiet_skips: true,
            ..self.target()
        }
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor.load(SeqCst)
    }

    pub(crate) fn raise_floor(&self, version: u64) {
        self.floor.fetch_max(version, SeqCst);
    }

    /// Raises the floor to a version no message of this namespace brought (a rollback floor
    /// a read found): what L1 holds from below it is dead, and no resync will clear it, since
    /// the floor it reads is no longer above this node's.
    pub(crate) fn raise_floor_over_l1(&self, version: u64) {
        if self.floor.fetch_max(version, SeqCst) < version {
            self.clear_l1();
        }
    }

    /// Adopts the floor Redis holds, even if lower: a Redis that restarted without persistence
    /// starts its versions over, and an old floor would hide every new write. `local_before` is
    /// the floor read before asking Redis; if it moved meanwhile (this node cleared the
    /// namespace), only raise.
    pub(crate) fn reset_floor(&self, local_before: u64, from_redis: u64) {
        if self
            .floor
            .compare_exchange(local_before, from_redis, SeqCst, SeqCst)
            .is_err()
        {
            self.raise_floor(from_redis);
        }
    }

    /// Inserts a value read under `ticket`, and takes it back out if the key was invalidated
    /// meanwhile (see `guard.rs` for why the re-check comes after the insert).
    pub(crate) fn insert_guarded(&self, key: String, entry: L1Entry, ticket: &Ticket) -> bool {
        if self.bypass.load(Relaxed) || !self.gens.is_current(ticket) {
            // An older copy must not outlive the refusal: this node's own messages are never
            // applied to its L1, live or replayed, so only this write can take it out.
            self.l1.remove_older(&key, entry.version);
            return false;
        }
        let check = key.clone();
        if !self.l1.insert_if_newer(key, entry) {
            return false;
        }
        // Orders the insert before the re-check on every architecture (see guard.rs).
        std::sync::atomic::fence(SeqCst);
        if self.gens.is_current(ticket) {
            return true;
        }
        self.l1.remove(&check);
        false
    }

    /// Writes a fail-safe fallback (or the current value of a failed refresh) back into L1 and
    /// says whether it may be served. A copy read from L1 (`from_l1`, before `ticket` was
    /// taken) is only put back over that same version, never into a key an invalidation
    /// emptied; one read from Redis under `ticket` only while the ticket is current.
    pub(crate) fn put_back(
        &self,
        key: &str,
        entry: L1Entry,
        from_l1: bool,
        ticket: &Ticket,
    ) -> bool {
        if from_l1 {
            if !self.l1.replace_same_version(key, entry) {
                return false;
            }
        } else {
            // Not cached while L1 is bypassed (or holds a newer version), yet servable.
            self.insert_guarded(key.to_owned(), entry, ticket);
        }
        // As in `insert_guarded`: an invalidation that raced the write-back takes it out.
        std::sync::atomic::fence(SeqCst);
        if self.gens.is_current(ticket) {
            return true;
        }
        self.l1.remove(key);
        false
    }

    /// Invalidates one key locally: bump first, then evict, so a load in flight either sees
    /// the bump or has its insert removed (see `guard.rs`).
    pub(crate) fn evict(&self, key: &str) {
        self.gens.bump_key(key);
        self.l1.remove(key);
        self.flights.detach(key);
    }

    /// Evicts keys another node invalidated.
    pub(crate) fn apply_remote_keys(&self, keys: &[&str]) {
        for k in keys {
            self.evict(k);
        }
        self.metrics.inv_applied.inc();
        if keys.len() > 1 {
            self.metrics.inv_coalesced.add(keys.len() as u64 - 1);
        }
    }

    /// Refreshes the gauges that follow state rather than events (L1 size, time bypassed).
    pub(crate) fn refresh_gauges(&self) -> (u64, u64) {
        let (entries, weight) = self.l1.size();
        self.metrics.l1_entries.set(entries as f64);
        self.metrics.l1_weighted_size.set(weight as f64);
        self.metrics.bypass_time.total();
        (entries, weight)
    }

    /// Evicts a key Redis reported modified (see `tracking.rs`).
    pub(crate) fn apply_tracked_key(&self, key: &str) {
        self.evict(key);
        self.metrics.inv_tracked.inc();
    }

    /// Forgets a namespace another node cleared.
    pub(crate) fn apply_remote_clear(&self, version: u64) {
        self.raise_floor(version);
        self.clear_l1();
        self.metrics.inv_applied.inc();
    }

    /// Starts or stops bypassing L1, logging and exporting the change.
    pub(crate) fn set_bypass(&self, bypass: bool, delivery_age: Option<std::time::Duration>) {
        if self.bypass.swap(bypass, SeqCst) == bypass {
            return;
        }
        self.metrics.bypassing.set(if bypass { 1.0 } else { 0.0 });
        self.metrics.bypass_time.follow(|| self.bypass.load(SeqCst));
        if bypass {
            tracing::warn!(target: "tiered_cache::bus", namespace = %self.name, ?delivery_age,
                bound = ?self.policy.staleness_bound, "bus cannot vouch for L1: bypassing it");
        } else {
            tracing::info!(target: "tiered_cache::bus", namespace = %self.name,
                "bus back in sequence: serving L1 again");
        }
    }

    /// Empties L1 and fences every load in flight.
    pub(crate) fn clear_l1(&self) {
        self.gens.bump_namespace();
        self.l1.clear();
        self.flights.detach_all();
    }

    /// A TTL shortened by the namespace's jitter (never below 1 ms).
    fn jittered(&self, ttl: Duration) -> Duration {
        let jitter = self.policy.ttl_jitter.as_millis() as u64;
        if jitter == 0 {
            return ttl;
        }
        let cut = Duration::from_millis(rand::random_range(0..=jitter));
        ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// How long a value written now stays fresh, and how long Redis keeps it: the namespace's
    /// TTLs, or the call's overrides.
    pub(crate) fn l2_life(&self, negative: bool, ttl: TtlOverride) -> Life {
        let policy = &self.policy;
        // "Not found" entries are short-lived already: jitter is for values.
        let ttl_l2 = if negative {
            policy.negative_ttl_value()
        } else {
            self.jittered(ttl.l2.unwrap_or(policy.l2_ttl))
        };
        Life {
            expires_ms: codec::unix_ms() + ttl_l2.as_millis() as u64,
            keep_for: ttl_l2 + policy.fail_safe.unwrap_or(Duration::ZERO),
            l1: ttl.l1.filter(|_| !negative),
        }
    }

    /// The L1 entry of a value this node wrote or loaded with `life`: as
    /// [`l1_entry`](Self::l1_entry), within the call's L1 TTL if it set one.
    pub(crate) fn l1_entry_for(
        &self,
        value: Option<AnyValue>,
        version: u64,
        life: &Life,
        weight: usize,
    ) -> L1Entry {
        self.l1_entry_within(value, version, Some(life.expires_ms), life.l1, weight)
    }

    /// An L1 entry for a value that stops being fresh at `expires_ms` in Redis (unix ms),
    /// living at most the L1 TTL (the negative TTL for a "not found") here.
    pub(crate) fn l1_entry(
        &self,
        value: Option<AnyValue>,
        version: u64,
        expires_ms: Option<u64>,
        weight: usize,
    ) -> L1Entry {
        self.l1_entry_within(value, version, expires_ms, None, weight)
    }

    /// [`l1_entry`](Self::l1_entry), living at most `l1_ttl` (a call's override) too.
    pub(crate) fn l1_entry_within(
        &self,
        value: Option<AnyValue>,
        version: u64,
        expires_ms: Option<u64>,
        l1_ttl: Option<Duration>,
        weight: usize,
    ) -> L1Entry {
        let policy = &self.policy;
        let now = Instant::now();
        // Not jittered: L1 copies are made at different times anyway, and jitter here would
        // make every hit read the clock. The jittered TTL in Redis spreads the reloads.
        let cap = if value.is_some() {
            l1_ttl.map_or(policy.l1_ttl_value(), |t| t.min(policy.l1_ttl_value()))
        } else {
            policy.negative_ttl_value()
        };
        let left = expires_ms.map_or(cap, |at| {
            Duration::from_millis(at.saturating_sub(codec::unix_ms()))
        });
        let fresh = cap.min(left);
        let refresh_at = policy
            .refresh_ahead
            .filter(|_| value.is_some())
            .map(|f| now + fresh.mul_f64(f));
        self.entry_at(value, version, now + fresh, refresh_at, weight)
    }

    /// Builds an entry. Hits check `fresh_until` only where L1's own TTL would not enforce it
    /// (fail-safe keeps entries longer; or the entry was given a shorter life).
    fn entry_at(
        &self,
        value: Option<AnyValue>,
        version: u64,
        fresh_until: Instant,
        refresh_at: Option<Instant>,
        weight: usize,
    ) -> L1Entry {
        let l1_ttl = self.policy.l1_ttl_value();
        let shorter = fresh_until + Duration::from_millis(1) < Instant::now() + l1_ttl;
        let stale_at = (self.policy.fail_safe.is_some() || shorter).then_some(fresh_until);
        L1Entry {
            value,
            version,
            fresh_until,
            watch_at: match (stale_at, refresh_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            weight: weight.max(1).try_into().unwrap_or(u32::MAX),
        }
    }

    /// A stale entry served by fail-safe, fresh again for the throttle.
    pub(crate) fn throttled(&self, stale: L1Entry) -> L1Entry {
        let until = Instant::now() + self.policy.fail_safe_throttle;
        self.entry_at(
            stale.value,
            stale.version,
            until,
            None,
            stale.weight as usize,
        )
    }

    /// The same entry, not to be refreshed again (its refresh failed).
    pub(crate) fn without_refresh(&self, entry: L1Entry) -> L1Entry {
        let fresh_until = entry.fresh_until;
        self.entry_at(
            entry.value,
            entry.version,
            fresh_until,
            None,
            entry.weight as usize,
        )
    }

    /// Whether a value Redis holds until `expires_ms` would, copied now, live past its own
    /// refresh point: then a refresh-ahead can take it instead of calling the loader.
    /// `l1_ttl` is the loading call's L1 TTL, if it set one.
    pub(crate) fn outlives_refresh(
        &self,
        expires_ms: Option<u64>,
        l1_ttl: Option<Duration>,
    ) -> bool {
        let (Some(at), Some(f)) = (expires_ms, self.policy.refresh_ahead) else {
            return false;
        };
        let l1 = l1_ttl.map_or(self.policy.l1_ttl_value(), |t| {
            t.min(self.policy.l1_ttl_value())
        });
        let left = at.saturating_sub(codec::unix_ms());
        left as f64 > l1.as_millis() as f64 * (1.0 - f)
    }

    /// Looks a key up in L1, without counting.
    #[inline(always)]
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        let Some(entry) = self.l1.get(key) else {
            return Lookup::Miss;
        };
        match entry.watch_at {
            None => Lookup::Fresh(entry),
            Some(at) => {
                let now = Instant::now();
                if now < at {
                    Lookup::Fresh(entry)
                } else if entry.is_stale(now) {
                    Lookup::Stale(entry)
                } else {
                    Lookup::Due(entry)
                }
            }
        }
    }
}

/// How long a value written now lives.
pub(crate) struct Life {
    /// When it stops being fresh (unix ms), written into its envelope.
    pub(crate) expires_ms: u64,
    /// How long Redis keeps it: its TTL plus the fail-safe window.
    pub(crate) keep_for: Duration,
    /// The call's L1 TTL, if it set one.
    pub(crate) l1: Option<Duration>,
}

/// A call's TTL overrides (none: the namespace's policy; see `EntryOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TtlOverride {
    pub(crate) l2: Option<Duration>,
    pub(crate) l1: Option<Duration>,
}

/// What L1 holds for a key.
pub(crate) enum Lookup {
    Fresh(L1Entry),
    /// Fresh, and due for a refresh-ahead.
    Due(L1Entry),
    /// Past its freshness; kept only for fail-safe.
    Stale(L1Entry),
    Miss,
}
