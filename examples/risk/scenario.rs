//! The risk module's caches on `tiered-cache`: the domain types, the system of record the caches
//! sit in front of, the cache wiring (`RiskNode`, and `TenantRisk`, the only way to reach a
//! tenant's entries) and the dashboard simulation. `tests/seed_risk.rs` includes this file and
//! drives the same wiring.
//!
//! What the design document's `RiskCacheService` did, and where it lives here:
//!
//! | document | here |
//! |---|---|
//! | `risk:metrics:{user}:{tenant}`, 30 s | namespace `risk_metrics`, key [`RiskKey`] (user, tenant) |
//! | `risk:profile:{user}:{tenant}`, 1 h | namespace `risk_profile` |
//! | `getCachedMetrics` + calculate + `cacheMetrics` | `calculate_risk_metrics`: one call, loads once per key at a time |
//! | `updateRiskProfile`: invalidate profile, cache new one, invalidate metrics | `update_risk_profile`: database, `set` (every node drops its copy), metrics `invalidate` |
//! | create/update/delete limit: invalidate metrics | `create_risk_limit`, `update_risk_limit`, `delete_risk_limit` |
//! | `invalidateAll`, `batchInvalidate` | `invalidate_all`, `batch_invalidate`; a whole tenant: `invalidate_tenant` (tag) |
//! | `warmUpCache` | `warm_up`: one batch load per namespace |
//! | `getCacheStats` | `cache_presence` (this node) and `RiskNode::stats` |
//! | "tenant isolation via key prefixes" | by construction: a `TenantRisk` only builds keys and tags of its own tenant |

// Each user of this file (the example, the test) calls a different part of it.
#![allow(dead_code)]

#[path = "../common/workload.rs"]
pub mod workload;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiered_cache::{CacheKey, EntryOptions, Namespace, NamespacePolicy, Stats, TieredCache};

/// The document's TTLs.
pub const METRICS_TTL: Duration = Duration::from_secs(30);
pub const PROFILE_TTL: Duration = Duration::from_secs(3600);
/// The document's uncached costs: `calculateRiskMetrics` ~1000 ms, `getRiskProfile` 50 ms.
pub const METRICS_COST: Duration = Duration::from_millis(1000);
pub const PROFILE_COST: Duration = Duration::from_millis(50);
/// The document's dashboard: a refresh every 5 s.
pub const DASHBOARD_REFRESH: Duration = Duration::from_secs(5);
/// The document's arithmetic: (1000 + 5 × 50) / 6.
pub const DOC_DASHBOARD_AVG_MS: f64 = 208.0;

/// How the example compresses time: TTLs and the dashboard's pace are divided by `ttl_divisor`,
/// backend costs by `cost_divisor`. The example divides both by the same factor, so its
/// figures scale back to the document's; the tests keep real TTLs and make costs negligible.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl_divisor: u32,
    pub cost_divisor: u32,
}

impl Timing {
    pub const REAL_TTLS_FAST_BACKEND: Timing = Timing {
        ttl_divisor: 1,
        cost_divisor: 1000,
    };
    pub fn metrics_ttl(&self) -> Duration {
        METRICS_TTL / self.ttl_divisor
    }
    pub fn profile_ttl(&self) -> Duration {
        PROFILE_TTL / self.ttl_divisor
    }
    pub fn refresh(&self) -> Duration {
        DASHBOARD_REFRESH / self.ttl_divisor
    }
}

// ---------------------------------------------------------------------------------------------
// Domain types
// ---------------------------------------------------------------------------------------------

/// A tenant id. Checked when made, so it is always usable as a tag name (a tenant's tag is
/// derived from it): 1 to 48 bytes of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn new(id: &str) -> Result<Self, String> {
        let ok = (1..=48).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        ok.then(|| Self(id.to_owned()))
            .ok_or_else(|| format!("tenant id {id:?}: 1 to 48 bytes of [A-Za-z0-9_.-]"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user id: any string (the key layout escapes it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub String);

impl UserId {
    pub fn new(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// `risk:{kind}:{user}:{tenant}`. Its fields are private: only a [`TenantRisk`] makes one, and
/// only for its own tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RiskKey {
    user: UserId,
    tenant: TenantId,
}

impl CacheKey for RiskKey {
    fn write_key(&self, out: &mut String) {
        (&self.user.0, &self.tenant.0).write_key(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tolerance {
    Conservative,
    Moderate,
    Aggressive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskProfile {
    pub user: String,
    pub tenant: String,
    pub tolerance: Tolerance,
    /// The database row's version: every update bumps it.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskLimit {
    pub id: u64,
    pub kind: String,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub value: Decimal,
}

/// What `calculateRiskMetrics` returns, with what it was computed from (for freshness checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskMetrics {
    pub user: String,
    pub tenant: String,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub overall_risk_score: Decimal,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub exposure: Decimal,
    pub limits: u32,
    pub profile_version: u64,
    pub limits_revision: u64,
}

// ---------------------------------------------------------------------------------------------
// The system of record
// ---------------------------------------------------------------------------------------------

/// Calls the caches made to the backend.
#[derive(Debug, Default)]
pub struct BackendCalls {
    pub profile_queries: AtomicU64,
    pub profile_rows: AtomicU64,
    pub metrics_calculations: AtomicU64,
    pub metrics_rows: AtomicU64,
}

type Owner = (TenantId, UserId);

#[derive(Default)]
struct Tables {
    profiles: HashMap<Owner, RiskProfile>,
    /// Per user: the revision of their limits (bumped on every change) and the limits.
    limits: HashMap<Owner, (u64, Vec<RiskLimit>)>,
    exposure: HashMap<Owner, Decimal>,
    next_id: u64,
}

/// The risk module's database and calculation engine, in process: the only source of truth.
pub struct RiskStore {
    tables: Mutex<Tables>,
    pub metrics_cost: Duration,
    pub profile_cost: Duration,
    pub calls: BackendCalls,
}

impl RiskStore {
    pub fn new(timing: Timing) -> Arc<Self> {
        Arc::new(Self {
            tables: Mutex::default(),
            metrics_cost: METRICS_COST / timing.cost_divisor,
            profile_cost: PROFILE_COST / timing.cost_divisor,
            calls: BackendCalls::default(),
        })
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("store lock")
    }

    fn put_profile(&self, owner: &Owner, tolerance: Tolerance) -> RiskProfile {
        let mut t = self.tables();
        let version = t.profiles.get(owner).map_or(1, |p| p.version + 1);
        let p = RiskProfile {
            user: owner.1 .0.clone(),
            tenant: owner.0 .0.clone(),
            tolerance,
            version,
        };
        t.profiles.insert(owner.clone(), p.clone());
        let seed = owner.1 .0.bytes().map(u64::from).sum::<u64>();
        t.exposure
            .entry(owner.clone())
            .or_insert_with(|| Decimal::new(1_000_000 + (seed % 97) as i64 * 10_000, 2));
        p
    }

    fn add_limit(&self, owner: &Owner, kind: &str, value: Decimal) -> u64 {
        let mut t = self.tables();
        t.next_id += 1;
        let id = t.next_id;
        let l = t.limits.entry(owner.clone()).or_default();
        l.0 += 1;
        l.1.push(RiskLimit {
            id,
            kind: kind.to_owned(),
            value,
        });
        id
    }

    /// Changes one of the user's limits (`None`: deletes it). Only the owner's limits.
    fn change_limit(&self, owner: &Owner, id: u64, value: Option<Decimal>) -> Result<(), String> {
        let mut t = self.tables();
        let l = t.limits.get_mut(owner).ok_or("no limits")?;
        let i = l.1.iter().position(|x| x.id == id).ok_or("no such limit")?;
        match value {
            Some(v) => l.1[i].value = v,
            None => {
                l.1.remove(i);
            }
        }
        l.0 += 1;
        Ok(())
    }

    /// The metrics as the engine computes them now (no cost: the computation itself).
    pub fn metrics_now(&self, tenant: &TenantId, user: &UserId) -> Option<RiskMetrics> {
        let t = self.tables();
        let owner = (tenant.clone(), user.clone());
        let profile = t.profiles.get(&owner)?;
        let (revision, limits) = t
            .limits
            .get(&owner)
            .map_or((0, &[][..]), |l| (l.0, &l.1[..]));
        let exposure = t.exposure.get(&owner).copied().unwrap_or_default();
        let appetite = match profile.tolerance {
            Tolerance::Conservative => Decimal::new(50, 2),
            Tolerance::Moderate => Decimal::ONE,
            Tolerance::Aggressive => Decimal::new(150, 2),
        };
        let cap: Decimal = limits
            .iter()
            .map(|l| l.value)
            .sum::<Decimal>()
            .max(Decimal::ONE);
        Some(RiskMetrics {
            user: user.0.clone(),
            tenant: tenant.0.clone(),
            overall_risk_score: (exposure * appetite * Decimal::ONE_HUNDRED / cap).round_dp(2),
            exposure,
            limits: limits.len() as u32,
            profile_version: profile.version,
            limits_revision: revision,
        })
    }

    pub fn profile_now(&self, tenant: &TenantId, user: &UserId) -> Option<RiskProfile> {
        self.tables()
            .profiles
            .get(&(tenant.clone(), user.clone()))
            .cloned()
    }

    /// One calculation run (positions, limits, profile) for many users: one run's cost.
    pub async fn calculate_metrics(
        &self,
        tenant: &TenantId,
        users: &[&UserId],
    ) -> Vec<Option<RiskMetrics>> {
        tokio::time::sleep(self.metrics_cost).await;
        self.calls.metrics_calculations.fetch_add(1, Relaxed);
        (self.calls.metrics_rows).fetch_add(users.len() as u64, Relaxed);
        users.iter().map(|u| self.metrics_now(tenant, u)).collect()
    }

    /// One profile query for many users: one query's cost.
    pub async fn query_profiles(
        &self,
        tenant: &TenantId,
        users: &[&UserId],
    ) -> Vec<Option<RiskProfile>> {
        tokio::time::sleep(self.profile_cost).await;
        self.calls.profile_queries.fetch_add(1, Relaxed);
        (self.calls.profile_rows).fetch_add(users.len() as u64, Relaxed);
        users.iter().map(|u| self.profile_now(tenant, u)).collect()
    }
}

/// The error of a lookup for a user the database does not know.
fn unknown(user: &UserId) -> std::io::Error {
    std::io::Error::other(format!("no risk profile for {:?}", user.0))
}

// ---------------------------------------------------------------------------------------------
// The cache wiring
// ---------------------------------------------------------------------------------------------

/// One risk-service instance's caches: one `TieredCache` per process, shared by every tenant.
/// It hands out [`TenantRisk`] handles and reports; it reads and writes no entry itself.
#[derive(Clone)]
pub struct RiskNode {
    cache: TieredCache,
    metrics: Namespace<RiskKey, RiskMetrics>,
    profiles: Namespace<RiskKey, RiskProfile>,
    store: Arc<RiskStore>,
}

/// The cache, configured with the document's TTLs (divided by `timing.ttl_divisor`).
/// `bound`: the staleness bound; `None` when there is no Redis to coordinate through, so the
/// namespaces keep serving L1 (each node alone) instead of bypassing it: the document's
/// "fallback to in-memory".
pub fn build_cache(url: Option<&str>, bound: Option<Duration>, timing: Timing) -> TieredCache {
    let policy = |ttl: Duration| workload::bounded(NamespacePolicy::new(ttl), bound);
    workload::at(url)
        .prefix("risk")
        .namespace("risk_metrics", policy(timing.metrics_ttl()))
        .namespace("risk_profile", policy(timing.profile_ttl()))
        .build()
        .expect("valid configuration")
}

impl RiskNode {
    pub fn new(cache: TieredCache, store: Arc<RiskStore>) -> Self {
        let ns = "namespace configured in build_cache";
        Self {
            metrics: cache.namespace("risk_metrics").expect(ns),
            profiles: cache.namespace("risk_profile").expect(ns),
            cache,
            store,
        }
    }

    /// The handle through which every read, write and invalidation of one tenant goes.
    pub fn tenant(&self, tenant: &TenantId) -> TenantRisk {
        // Every entry written or loaded through the tenant's handles carries the tenant's tag.
        let tag = format!("tenant.{}", tenant.0);
        let tagged = EntryOptions::new().tag(&tag);
        let bad_tag = "tenant ids are valid tag names";
        TenantRisk {
            metrics: self.metrics.with(tagged.clone()).expect(bad_tag),
            profiles: self.profiles.with(tagged).expect(bad_tag),
            tag,
            tenant: tenant.clone(),
            store: self.store.clone(),
        }
    }

    /// Hit and miss counts per namespace, since this node started.
    pub fn stats(&self) -> Stats {
        self.cache.stats()
    }

    pub fn is_subscribed(&self) -> bool {
        self.cache.is_subscribed()
    }

    /// The document's `clearAllCache` (development and tests): every tenant, every node.
    pub async fn clear_all_cache(&self) -> tiered_cache::Result<()> {
        self.metrics.invalidate_namespace().await?;
        self.profiles.invalidate_namespace().await
    }
}

/// One tenant's risk caches. Keys and tags are built here from the tenant it was made for, and
/// no method takes a tenant: a caller holding it cannot read, write or invalidate another
/// tenant's entries.
#[derive(Clone)]
pub struct TenantRisk {
    tenant: TenantId,
    tag: String,
    metrics: Namespace<RiskKey, RiskMetrics>,
    profiles: Namespace<RiskKey, RiskProfile>,
    store: Arc<RiskStore>,
}

/// What a warm-up did: loader calls (batches) and keys loaded per namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmUp {
    pub profile_batches: u32,
    pub profiles_loaded: usize,
    pub metrics_batches: u32,
    pub metrics_computed: usize,
    pub failed: usize,
}

/// The document's `getCacheStats` for one user, on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub metrics_exists: bool,
    pub profile_exists: bool,
}

impl TenantRisk {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    fn key(&self, user: &UserId) -> RiskKey {
        RiskKey {
            user: user.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// `calculateRiskMetrics`: L1, Redis, then one calculation (shared by concurrent callers).
    pub async fn calculate_risk_metrics(
        &self,
        user: &UserId,
    ) -> tiered_cache::Result<Arc<RiskMetrics>> {
        self.metrics_traced(user).await.map(|(m, _)| m)
    }

    /// Like `calculate_risk_metrics`, and whether this call ran the calculation.
    pub async fn metrics_traced(
        &self,
        user: &UserId,
    ) -> tiered_cache::Result<(Arc<RiskMetrics>, bool)> {
        // The loader runs as a task of its own (single flight): it owns what it uses.
        let ran = Arc::new(AtomicBool::new(false));
        let (store, tenant, who) = (self.store.clone(), self.tenant.clone(), user.clone());
        let ran_here = ran.clone();
        let m = self
            .metrics
            .get_or_load(&self.key(user), move || async move {
                ran_here.store(true, Relaxed);
                let mut out = store.calculate_metrics(&tenant, &[&who]).await;
                out.pop().flatten().ok_or_else(|| unknown(&who))
            })
            .await?;
        Ok((m, ran.load(Relaxed)))
    }

    /// `getRiskProfile`.
    pub async fn get_risk_profile(&self, user: &UserId) -> tiered_cache::Result<Arc<RiskProfile>> {
        let (store, tenant, who) = (self.store.clone(), self.tenant.clone(), user.clone());
        self.profiles
            .get_or_load(&self.key(user), move || async move {
                let mut out = store.query_profiles(&tenant, &[&who]).await;
                out.pop().flatten().ok_or_else(|| unknown(&who))
            })
            .await
    }

    /// `createRiskProfile`: the database, then the new profile cached.
    pub async fn create_risk_profile(
        &self,
        user: &UserId,
        tolerance: Tolerance,
    ) -> tiered_cache::Result<RiskProfile> {
        let p = self
            .store
            .put_profile(&(self.tenant.clone(), user.clone()), tolerance);
        // With Redis unreachable the library queues an invalidation of the key instead: every
        // node drops its copy, and the next read loads this profile from the database.
        (self.profiles).set(&self.key(user), p.clone()).await?;
        Ok(p)
    }

    /// `updateRiskProfile`: the database, then the new profile cached (every other node drops
    /// its copy), then the user's metrics dropped everywhere: they depend on the profile.
    pub async fn update_risk_profile(
        &self,
        user: &UserId,
        tolerance: Tolerance,
    ) -> tiered_cache::Result<RiskProfile> {
        let p = self
            .store
            .put_profile(&(self.tenant.clone(), user.clone()), tolerance);
        let key = self.key(user);
        (self.profiles).set(&key, p.clone()).await?;
        self.metrics.invalidate(&key).await?;
        Ok(p)
    }

    /// `createRiskLimit`: the database, then the user's metrics dropped everywhere.
    pub async fn create_risk_limit(
        &self,
        user: &UserId,
        kind: &str,
        value: Decimal,
    ) -> tiered_cache::Result<u64> {
        let id = self
            .store
            .add_limit(&(self.tenant.clone(), user.clone()), kind, value);
        self.invalidate_metrics(user).await?;
        Ok(id)
    }

    /// `updateRiskLimit`. `Ok(false)`: the user has no such limit (nothing changed).
    pub async fn update_risk_limit(
        &self,
        user: &UserId,
        id: u64,
        value: Decimal,
    ) -> tiered_cache::Result<bool> {
        let owner = (self.tenant.clone(), user.clone());
        if self.store.change_limit(&owner, id, Some(value)).is_err() {
            return Ok(false);
        }
        self.invalidate_metrics(user).await?;
        Ok(true)
    }

    /// `deleteRiskLimit`. `Ok(false)`: the user has no such limit.
    pub async fn delete_risk_limit(&self, user: &UserId, id: u64) -> tiered_cache::Result<bool> {
        let owner = (self.tenant.clone(), user.clone());
        if self.store.change_limit(&owner, id, None).is_err() {
            return Ok(false);
        }
        self.invalidate_metrics(user).await?;
        Ok(true)
    }

    pub async fn invalidate_metrics(&self, user: &UserId) -> tiered_cache::Result<()> {
        self.metrics.invalidate(&self.key(user)).await
    }

    pub async fn invalidate_profile(&self, user: &UserId) -> tiered_cache::Result<()> {
        self.profiles.invalidate(&self.key(user)).await
    }

    /// `invalidateAll` (e.g. on logout): the user's metrics and profile, on every node.
    pub async fn invalidate_all(&self, user: &UserId) -> tiered_cache::Result<()> {
        self.invalidate_metrics(user).await?;
        self.invalidate_profile(user).await
    }

    /// `batchInvalidate`: many users of this tenant, on every node: one script and one message
    /// per namespace (`batch().invalidate`), whatever the number of users. Returns how many
    /// entries were invalidated.
    pub async fn batch_invalidate(&self, users: &[UserId]) -> tiered_cache::Result<usize> {
        let keys: Vec<RiskKey> = users.iter().map(|u| self.key(u)).collect();
        let (m, p) = futures_util::future::join(
            self.metrics.batch().invalidate(&keys),
            self.profiles.batch().invalidate(&keys),
        )
        .await;
        m.and(p)?;
        Ok(keys.len() * 2)
    }

    /// Every cached entry of this tenant, on every node: one tag invalidation per namespace.
    pub async fn invalidate_tenant(&self) -> tiered_cache::Result<usize> {
        let m = self.metrics.invalidate_tag(&self.tag).await?;
        let p = self.profiles.invalidate_tag(&self.tag).await?;
        Ok(m + p)
    }

    /// `warmUpCache`: the active users' profiles and metrics, each namespace in one batch
    /// (one query, one calculation run, one fill script), for what neither tier holds.
    pub async fn warm_up(&self, users: &[UserId]) -> WarmUp {
        let keys: Vec<RiskKey> = users.iter().map(|u| self.key(u)).collect();
        let (store, tenant) = (&self.store, &self.tenant);
        let mut w = WarmUp::default();
        let (pb, mb) = (AtomicU64::new(0), AtomicU64::new(0));
        let (pl, ml) = (AtomicU64::new(0), AtomicU64::new(0));
        let (pb, mb, pl, ml) = (&pb, &mb, &pl, &ml);
        let profiles = self
            .profiles
            .batch()
            .get_or_load(&keys, |missing| async move {
                pb.fetch_add(1, Relaxed);
                pl.fetch_add(missing.len() as u64, Relaxed);
                let users: Vec<&UserId> = missing.iter().map(|k| &k.user).collect();
                Ok::<_, std::io::Error>(store.query_profiles(tenant, &users).await)
            })
            .await;
        let metrics = self
            .metrics
            .batch()
            .get_or_load(&keys, |missing| async move {
                mb.fetch_add(1, Relaxed);
                ml.fetch_add(missing.len() as u64, Relaxed);
                let users: Vec<&UserId> = missing.iter().map(|k| &k.user).collect();
                Ok::<_, std::io::Error>(store.calculate_metrics(tenant, &users).await)
            })
            .await;
        w.failed = profiles
            .iter()
            .filter(|r| !matches!(r, Ok(Some(_))))
            .count()
            + metrics.iter().filter(|r| !matches!(r, Ok(Some(_)))).count();
        w.profile_batches = pb.load(Relaxed) as u32;
        w.profiles_loaded = pl.load(Relaxed) as usize;
        w.metrics_batches = mb.load(Relaxed) as u32;
        w.metrics_computed = ml.load(Relaxed) as usize;
        w
    }

    /// Whether this node holds the user's entries (a copy in L1), without counting a lookup.
    pub fn cache_presence(&self, user: &UserId) -> Presence {
        let key = self.key(user);
        Presence {
            metrics_exists: self.metrics.local_version(&key).is_some(),
            profile_exists: self.profiles.local_version(&key).is_some(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The dashboard simulation
// ---------------------------------------------------------------------------------------------

/// One dashboard per (tenant, user), spread over the nodes, each refreshing `rounds` times.
#[derive(Debug, Default)]
pub struct Dashboards {
    pub dashboards: usize,
    pub requests: usize,
    /// Latency of each metrics request, split by whether it ran the calculation.
    pub hits: Vec<Duration>,
    pub misses: Vec<Duration>,
    pub profile_reads: Vec<Duration>,
    pub errors: usize,
    pub elapsed: Duration,
}

impl Dashboards {
    /// Mean metrics latency over every request.
    pub fn mean(&self) -> Duration {
        let all: Duration = self.hits.iter().chain(&self.misses).sum();
        all / self.requests.max(1) as u32
    }
}

/// Runs the dashboards: every `refresh`, each asks for its user's metrics and profile.
pub async fn run_dashboards(
    nodes: &[RiskNode],
    tenants: &[TenantId],
    users: &[UserId],
    rounds: usize,
    refresh: Duration,
) -> Dashboards {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut i = 0;
    for t in tenants {
        for u in users {
            let handle = nodes[i % nodes.len()].tenant(t);
            let user = u.clone();
            i += 1;
            tasks.push(tokio::spawn(async move {
                let mut out = Dashboards::default();
                let mut tick = tokio::time::interval(refresh);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for _ in 0..rounds {
                    tick.tick().await;
                    let t0 = Instant::now();
                    match handle.metrics_traced(&user).await {
                        Ok((_, true)) => out.misses.push(t0.elapsed()),
                        Ok((_, false)) => out.hits.push(t0.elapsed()),
                        Err(_) => out.errors += 1,
                    }
                    let t1 = Instant::now();
                    match handle.get_risk_profile(&user).await {
                        Ok(_) => out.profile_reads.push(t1.elapsed()),
                        Err(_) => out.errors += 1,
                    }
                    out.requests += 1;
                }
                out
            }));
        }
    }
    let mut all = Dashboards {
        dashboards: tasks.len(),
        ..Dashboards::default()
    };
    for t in tasks {
        let d = t.await.expect("dashboard task");
        all.requests += d.requests;
        all.hits.extend(d.hits);
        all.misses.extend(d.misses);
        all.profile_reads.extend(d.profile_reads);
        all.errors += d.errors;
    }
    all.elapsed = started.elapsed();
    all
}

/// Seeds the database through the caches: a profile per user (cached as created) and two
/// limits each.
pub async fn seed(
    node: &RiskNode,
    tenants: &[TenantId],
    users: &[UserId],
) -> tiered_cache::Result<()> {
    for (ti, t) in tenants.iter().enumerate() {
        let h = node.tenant(t);
        for (ui, u) in users.iter().enumerate() {
            let tolerance = [
                Tolerance::Conservative,
                Tolerance::Moderate,
                Tolerance::Aggressive,
            ][(ti + ui) % 3];
            h.create_risk_profile(u, tolerance).await?;
            h.create_risk_limit(u, "max_position", Decimal::new(5_000_000, 2))
                .await?;
            h.create_risk_limit(
                u,
                "max_daily_loss",
                Decimal::new(250_000 + ti as i64 * 1_000, 2),
            )
            .await?;
        }
    }
    Ok(())
}

pub fn tenants() -> Vec<TenantId> {
    ["tenant-456", "tenant-789"]
        .iter()
        .map(|t| TenantId::new(t).expect("valid"))
        .collect()
}

/// The same user ids in every tenant: isolation is by tenant, not by luck.
pub fn users(n: usize) -> Vec<UserId> {
    (1..=n).map(|i| UserId::new(&format!("user-{i}"))).collect()
}
