//! The payments backend's cache design (exchange rates, wallet balances, trustlines, fees,
//! transaction status), on `tiered-cache`: typed keys, the design's TTL table, write-through
//! against a real store (SQLite), tag invalidation of conversions, configuration from the
//! design's environment variables, and a mixed workload over several nodes.
//!
//! Shared by `main.rs` (which prints the figures) and `tests/seed_payments.rs` (which asserts
//! the design's promises across nodes, Redis killed mid-run included).
//!
//! Key layout. The design writes `v1:wallet:balance:GA123`; here a namespace is one key
//! segment (each has its own TTL and L1), so the same key is `v1:wallet.balance:GA123`:
//! `v1:{namespace}:{id}`, built by one key type per namespace.

#![allow(dead_code)]

#[path = "../common/workload.rs"]
pub mod workload;

use rusqlite::{params, Connection, OptionalExtension};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiered_cache::{
    CacheKey, EntryOptions, Namespace, NamespacePolicy, TieredCache, TieredCacheBuilder,
};
pub use workload::Samples;
use workload::{rng, skewed, wait_until, RedisEnv};

// ---------------------------------------------------------------------------------------------
// Keys: one type per namespace, `v1:{namespace}:{id}`.

/// Every key starts with it, as the design's versioning rule asks.
pub const PREFIX: &str = "v1";

/// A key type and the namespace its values live in.
pub trait PaymentKey: CacheKey {
    /// The namespace (second segment of the Redis key).
    const NAMESPACE: &'static str;
}

macro_rules! payment_key {
    ($t:ty, $ns:literal) => {
        impl PaymentKey for $t {
            const NAMESPACE: &'static str = $ns;
        }
        /// The full Redis key, as `redis-cli` shows it.
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut id = String::new();
                self.write_key(&mut id);
                write!(f, "{PREFIX}:{}:{id}", $ns)
            }
        }
    };
}

/// A wallet's balance: `v1:wallet.balance:GA123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BalanceKey(pub String);
impl CacheKey for BalanceKey {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}
payment_key!(BalanceKey, "wallet.balance");

/// A currency pair's rate: `v1:rate:CNGN:USD`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CurrencyPairKey {
    pub base: String,
    pub quote: String,
}
impl CurrencyPairKey {
    pub fn new(base: &str, quote: &str) -> Self {
        Self {
            base: base.into(),
            quote: quote.into(),
        }
    }
    /// The design's shorthand: cNGN against `quote`.
    pub fn cngn_rate(quote: &str) -> Self {
        Self::new("CNGN", quote)
    }
    /// The tag every conversion of this pair carries (tags allow `[A-Za-z0-9_.-]`).
    pub fn tag(&self) -> String {
        format!("pair.{}.{}", self.base, self.quote)
    }
}
impl CacheKey for CurrencyPairKey {
    fn write_key(&self, out: &mut String) {
        (self.base.as_str(), self.quote.as_str()).write_key(out)
    }
}
payment_key!(CurrencyPairKey, "rate");

/// A conversion of an amount: `v1:rate.convert:100.50:CNGN:USD`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConversionKey {
    pub amount: Decimal,
    pub pair: CurrencyPairKey,
}
impl CacheKey for ConversionKey {
    fn write_key(&self, out: &mut String) {
        let amount = self.amount.to_string();
        (
            amount.as_str(),
            self.pair.base.as_str(),
            self.pair.quote.as_str(),
        )
            .write_key(out)
    }
}
payment_key!(ConversionKey, "rate.convert");

/// Whether a wallet trusts an asset: `v1:wallet.trustline:GA123:CNGN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustlineKey {
    pub wallet: String,
    pub asset: String,
}
impl CacheKey for TrustlineKey {
    fn write_key(&self, out: &mut String) {
        (self.wallet.as_str(), self.asset.as_str()).write_key(out)
    }
}
payment_key!(TrustlineKey, "wallet.trustline");

/// A fee structure by operation: `v1:fee:transfer`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FeeKey(pub String);
impl CacheKey for FeeKey {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}
payment_key!(FeeKey, "fee");

/// A transaction's status: `v1:tx.status:42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxStatusKey(pub u64);
impl CacheKey for TxStatusKey {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}
payment_key!(TxStatusKey, "tx.status");

/// A wallet's recent transactions: `v1:tx.recent:GA123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecentTxKey(pub String);
impl CacheKey for RecentTxKey {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}
payment_key!(RecentTxKey, "tx.recent");

/// A session: `v1:auth.session:session_123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey(pub String);
impl CacheKey for SessionKey {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}
payment_key!(SessionKey, "auth.session");

/// A JWT's validation result, by token id: `v1:auth.jwt:jti_9`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwtKey(pub String);
impl CacheKey for JwtKey {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}
payment_key!(JwtKey, "auth.jwt");

/// A rate-limit window: `v1:auth.rate_limit:user_123:login`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimitKey {
    pub user: String,
    pub action: String,
}
impl CacheKey for RateLimitKey {
    fn write_key(&self, out: &mut String) {
        (self.user.as_str(), self.action.as_str()).write_key(out)
    }
}
payment_key!(RateLimitKey, "auth.rate_limit");

/// A bill provider's configuration: `v1:bill.provider:provider_456`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BillProviderKey(pub String);
impl CacheKey for BillProviderKey {
    fn write_key(&self, out: &mut String) {
        self.0.write_key(out)
    }
}
payment_key!(BillProviderKey, "bill.provider");

/// The design's TTL table, by namespace. Conversions live as long as the rate they use.
pub const TTLS: &[(&str, Duration)] = &[
    ("rate", Duration::from_secs(90)),
    ("rate.convert", Duration::from_secs(90)),
    ("wallet.balance", Duration::from_secs(45)),
    ("wallet.trustline", Duration::from_secs(3600)),
    ("fee", Duration::from_secs(3600)),
    ("auth.session", Duration::from_secs(30 * 60)),
    ("tx.status", Duration::from_secs(5 * 60)),
    ("tx.recent", Duration::from_secs(10 * 60)),
    ("auth.jwt", Duration::from_secs(15 * 60)),
    ("auth.rate_limit", Duration::from_secs(60)),
    ("bill.provider", Duration::from_secs(30 * 60)),
];

// ---------------------------------------------------------------------------------------------
// Values. Amounts are `Decimal` in their exact 16-byte form.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    pub wallet: String,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    #[serde(with = "tiered_cache::exact::decimal")]
    pub rate: Decimal,
    /// The store's update counter when this rate was written.
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    #[serde(with = "tiered_cache::exact::decimal")]
    pub converted: Decimal,
    /// The rate's `seq` it was computed from.
    pub rate_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fee {
    pub basis_points: u32,
}

// ---------------------------------------------------------------------------------------------
// The store: SQLite, the system of record.

/// The database the cache sits in front of. Counts its queries, to report the load saved.
pub struct Store {
    db: Mutex<Connection>,
    queries: AtomicU64,
}

/// What the store failed at.
pub type DbResult<T> = Result<T, rusqlite::Error>;

impl Store {
    /// An in-memory SQLite database with the payments schema.
    pub fn open() -> DbResult<Self> {
        let db = Connection::open_in_memory()?;
        db.execute_batch(
            "CREATE TABLE wallet (id TEXT PRIMARY KEY, balance TEXT NOT NULL);
             CREATE TABLE rate (base TEXT, quote TEXT, rate TEXT NOT NULL, seq INTEGER NOT NULL,
                                PRIMARY KEY (base, quote));
             CREATE TABLE trustline (wallet TEXT, asset TEXT, PRIMARY KEY (wallet, asset));
             CREATE TABLE fee (kind TEXT PRIMARY KEY, bps INTEGER NOT NULL);
             CREATE TABLE tx (id INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT NOT NULL,
                              receiver TEXT NOT NULL, amount TEXT NOT NULL, status TEXT NOT NULL);
             CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO counter VALUES ('rate_seq', 0);",
        )?;
        Ok(Self {
            db: Mutex::new(db),
            queries: AtomicU64::new(0),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> DbResult<T>) -> DbResult<T> {
        self.queries.fetch_add(1, Relaxed);
        f(&mut self.db.lock().unwrap())
    }

    /// Queries run so far (reads and writes).
    pub fn queries(&self) -> u64 {
        self.queries.load(Relaxed)
    }

    /// `wallets` wallets holding 1000.00 each, the given pairs, fees, and a trustline to CNGN
    /// for every even wallet.
    pub fn seed(&self, wallets: usize, pairs: &[(&str, &str, Decimal)]) -> DbResult<()> {
        self.with(|db| {
            let t = db.transaction()?;
            for i in 0..wallets {
                t.execute(
                    "INSERT INTO wallet VALUES (?1, '1000.00')",
                    params![wallet_id(i)],
                )?;
                if i % 2 == 0 {
                    t.execute(
                        "INSERT INTO trustline VALUES (?1, 'CNGN')",
                        params![wallet_id(i)],
                    )?;
                }
            }
            for (base, quote, rate) in pairs {
                t.execute(
                    "INSERT INTO rate VALUES (?1, ?2, ?3, 0)",
                    params![base, quote, rate.to_string()],
                )?;
            }
            for (kind, bps) in [("transfer", 25), ("withdrawal", 100), ("bill", 50)] {
                t.execute("INSERT INTO fee VALUES (?1, ?2)", params![kind, bps])?;
            }
            t.commit()
        })
    }

    pub fn balance(&self, wallet: &str) -> DbResult<Decimal> {
        self.with(|db| {
            let s: String = db.query_row(
                "SELECT balance FROM wallet WHERE id = ?1",
                params![wallet],
                |r| r.get(0),
            )?;
            parse_decimal(&s)
        })
    }

    pub fn rate(&self, pair: &CurrencyPairKey) -> DbResult<Rate> {
        self.with(|db| {
            let (s, seq): (String, i64) = db.query_row(
                "SELECT rate, seq FROM rate WHERE base = ?1 AND quote = ?2",
                params![pair.base, pair.quote],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(Rate {
                rate: parse_decimal(&s)?,
                seq: seq as u64,
            })
        })
    }

    pub fn has_trustline(&self, wallet: &str, asset: &str) -> DbResult<bool> {
        self.with(|db| {
            db.query_row(
                "SELECT 1 FROM trustline WHERE wallet = ?1 AND asset = ?2",
                params![wallet, asset],
                |_| Ok(()),
            )
            .optional()
            .map(|row| row.is_some())
        })
    }

    pub fn fee(&self, kind: &str) -> DbResult<Fee> {
        self.with(|db| {
            db.query_row("SELECT bps FROM fee WHERE kind = ?1", params![kind], |r| {
                Ok(Fee {
                    basis_points: r.get(0)?,
                })
            })
        })
    }

    pub fn tx_status(&self, id: u64) -> DbResult<String> {
        self.with(|db| {
            db.query_row(
                "SELECT status FROM tx WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
        })
    }

    /// The ids of a wallet's last ten transactions, newest first.
    pub fn recent(&self, wallet: &str) -> DbResult<Vec<u64>> {
        self.with(|db| {
            let mut q = db.prepare(
                "SELECT id FROM tx WHERE sender = ?1 OR receiver = ?1 ORDER BY id DESC LIMIT 10",
            )?;
            let ids = q.query_map(params![wallet], |r| r.get::<_, i64>(0))?;
            ids.map(|id| id.map(|id| id as u64)).collect()
        })
    }

    /// Moves `amount` between two wallets and records the transaction as completed, in one
    /// database transaction. Returns its id.
    pub fn transfer(&self, from: &str, to: &str, amount: Decimal) -> DbResult<u64> {
        self.with(|db| {
            let t = db.transaction()?;
            for (wallet, delta) in [(from, -amount), (to, amount)] {
                let s: String = t.query_row(
                    "SELECT balance FROM wallet WHERE id = ?1",
                    params![wallet],
                    |r| r.get(0),
                )?;
                let new = parse_decimal(&s)? + delta;
                t.execute(
                    "UPDATE wallet SET balance = ?2 WHERE id = ?1",
                    params![wallet, new.to_string()],
                )?;
            }
            t.execute(
                "INSERT INTO tx (sender, receiver, amount, status) VALUES (?1, ?2, ?3, 'completed')",
                params![from, to, amount.to_string()],
            )?;
            let id = t.last_insert_rowid() as u64;
            t.commit()?;
            Ok(id)
        })
    }

    /// Upserts a rate; returns its new `seq`.
    pub fn upsert_rate(&self, pair: &CurrencyPairKey, rate: Decimal) -> DbResult<u64> {
        self.with(|db| {
            let t = db.transaction()?;
            let seq: i64 = t.query_row(
                "UPDATE counter SET value = value + 1 WHERE name = 'rate_seq' RETURNING value",
                [],
                |r| r.get(0),
            )?;
            t.execute(
                "INSERT INTO rate VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (base, quote) DO UPDATE SET rate = ?3, seq = ?4",
                params![pair.base, pair.quote, rate.to_string(), seq],
            )?;
            t.commit()?;
            Ok(seq as u64)
        })
    }

    pub fn create_trustline(&self, wallet: &str, asset: &str) -> DbResult<()> {
        self.with(|db| {
            db.execute(
                "INSERT OR IGNORE INTO trustline VALUES (?1, ?2)",
                params![wallet, asset],
            )
            .map(drop)
        })
    }
}

fn parse_decimal(s: &str) -> DbResult<Decimal> {
    Decimal::from_str(s).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

pub fn wallet_id(i: usize) -> String {
    format!("GA{i:09}")
}

// ---------------------------------------------------------------------------------------------
// Configuration from the design's environment variables.

/// A variable that was set to something unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Not a number of the expected kind.
    NotANumber { var: &'static str, value: String },
    /// A number outside what the variable allows.
    OutOfRange {
        var: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    /// Two variables that contradict each other.
    Inconsistent(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotANumber { var, value } => {
                write!(f, "{var}={value:?} is not a whole number")
            }
            ConfigError::OutOfRange {
                var,
                value,
                min,
                max,
            } => write!(f, "{var}={value} is outside {min}..={max}"),
            ConfigError::Inconsistent(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The design's `REDIS_*` variables, parsed and checked.
///
/// | variable | default | used as |
/// |---|---|---|
/// | `REDIS_URL` | `redis://127.0.0.1:6379` | the cache's Redis: read, with every `REDIS_*` variable of `docs/configuration.md` (`REDIS_PASSWORD`, `REDIS_SSL`...), by the cache itself, which checks them at `build()` |
/// | `REDIS_CONNECTION_TIMEOUT` (s) | 5 | `connect_timeout`, 1..=60 |
/// | `REDIS_MAX_CONNECTIONS` | 20 | the multiplexed connections the cache spreads its commands over (`redis_connections`); 1..=256 |
/// | `REDIS_MIN_IDLE` | 5 | checked (at most `REDIS_MAX_CONNECTIONS`); done differently: a multiplexed connection carries every concurrent command, so there are no idle connections to keep warm. Each is opened on first use and re-opened when it fails |
/// | `REDIS_MAX_LIFETIME` (s) | 300 | checked, 1..=86 400; done differently: a connection is replaced when it fails (and after a failover), not by age |
/// | `REDIS_IDLE_TIMEOUT` (s) | 60 | checked, 1..=86 400; done differently: an idle multiplexed connection costs Redis one client slot and is kept |
/// | `REDIS_HEALTH_CHECK_INTERVAL` (s) | 30 | how often the example reads `health()` (connections open and reconnecting, subscriber, breaker); the cache's own heartbeat checks Redis every 100 ms; 1..=3600 |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentsConfig {
    /// The `REDIS_*` variables, for the cache to read.
    pub redis_env: RedisEnv,
    /// Where Redis is when the run chose it (a private server): over the variables.
    pub redis_url: Option<String>,
    pub connection_timeout: Duration,
    pub max_connections: u64,
    pub min_idle: u64,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    pub health_check_interval: Duration,
}

fn number(
    var: &'static str,
    raw: Option<String>,
    default: u64,
    (min, max): (u64, u64),
) -> Result<u64, ConfigError> {
    let value = match raw.as_deref().map(str::trim) {
        None | Some("") => default,
        Some(s) => s.parse().map_err(|_| ConfigError::NotANumber {
            var,
            value: s.to_string(),
        })?,
    };
    if !(min..=max).contains(&value) {
        return Err(ConfigError::OutOfRange {
            var,
            value,
            min,
            max,
        });
    }
    Ok(value)
}

impl PaymentsConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let redis_env = RedisEnv::read(&get);
        let secs =
            |var, default, range| number(var, get(var), default, range).map(Duration::from_secs);
        let max_connections = number(
            "REDIS_MAX_CONNECTIONS",
            get("REDIS_MAX_CONNECTIONS"),
            20,
            (1, 256),
        )?;
        let min_idle = number("REDIS_MIN_IDLE", get("REDIS_MIN_IDLE"), 5, (0, 256))?;
        if min_idle > max_connections {
            return Err(ConfigError::Inconsistent(format!(
                "REDIS_MIN_IDLE={min_idle} exceeds REDIS_MAX_CONNECTIONS={max_connections}"
            )));
        }
        Ok(Self {
            redis_env,
            redis_url: None,
            connection_timeout: secs("REDIS_CONNECTION_TIMEOUT", 5, (1, 60))?,
            max_connections,
            min_idle,
            max_lifetime: secs("REDIS_MAX_LIFETIME", 300, (1, 86_400))?,
            idle_timeout: secs("REDIS_IDLE_TIMEOUT", 60, (1, 86_400))?,
            health_check_interval: secs("REDIS_HEALTH_CHECK_INTERVAL", 30, (1, 3600))?,
        })
    }

    /// The cache builder: Redis, timeouts, and one namespace per row of the TTL table.
    /// `bound`: the namespaces' staleness bound (`None`: no Redis to coordinate through, so
    /// they keep serving L1, each node alone).
    pub fn builder(&self, bound: Option<Duration>) -> TieredCacheBuilder {
        let mut b = (self.redis_env.builder(self.redis_url.as_deref()))
            .prefix(PREFIX)
            .connect_timeout(self.connection_timeout)
            .redis_connections(self.max_connections as usize);
        for (name, ttl) in TTLS {
            let policy = workload::bounded(NamespacePolicy::new(*ttl), bound);
            b = b.namespace(*name, policy);
        }
        b
    }
}

// ---------------------------------------------------------------------------------------------
// The repository: cache-first reads, write-through writes (database first, then invalidate).

/// What happened, in order, across every node: the test checks the store is written before
/// the cache is told.
#[derive(Default)]
pub struct EventLog(Mutex<Vec<String>>);

impl EventLog {
    fn push(&self, event: String) {
        self.0.lock().unwrap().push(event);
    }
    pub fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// One node's view of the payments data.
#[derive(Clone)]
pub struct Payments {
    pub cache: TieredCache,
    pub store: Arc<Store>,
    pub log: Arc<EventLog>,
    pub balances: Namespace<BalanceKey, Balance>,
    pub rates: Namespace<CurrencyPairKey, Rate>,
    pub conversions: Namespace<ConversionKey, Conversion>,
    pub trustlines: Namespace<TrustlineKey, bool>,
    pub fees: Namespace<FeeKey, Fee>,
    pub statuses: Namespace<TxStatusKey, String>,
    pub recent: Namespace<RecentTxKey, Vec<u64>>,
}

/// A cache failure the repository does not hide (Redis trouble is degraded, never this).
pub type RepoResult<T> = Result<T, tiered_cache::Error>;

fn ns<K: PaymentKey + 'static, V>(cache: &TieredCache) -> RepoResult<Namespace<K, V>>
where
    V: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    cache.namespace(K::NAMESPACE)
}

impl Payments {
    pub fn new(cache: TieredCache, store: Arc<Store>, log: Arc<EventLog>) -> RepoResult<Self> {
        Ok(Self {
            balances: ns::<BalanceKey, _>(&cache)?,
            rates: ns::<CurrencyPairKey, _>(&cache)?,
            conversions: ns::<ConversionKey, _>(&cache)?,
            trustlines: ns::<TrustlineKey, _>(&cache)?,
            fees: ns::<FeeKey, _>(&cache)?,
            statuses: ns::<TxStatusKey, _>(&cache)?,
            recent: ns::<RecentTxKey, _>(&cache)?,
            cache,
            store,
            log,
        })
    }

    pub async fn balance(&self, wallet: &str) -> RepoResult<Arc<Balance>> {
        let store = self.store.clone();
        let w = wallet.to_string();
        self.balances
            .get_or_load(&BalanceKey(wallet.into()), move || async move {
                let amount = store.balance(&w)?;
                Ok::<_, rusqlite::Error>(Balance { wallet: w, amount })
            })
            .await
    }

    pub async fn rate(&self, pair: &CurrencyPairKey) -> RepoResult<Arc<Rate>> {
        let store = self.store.clone();
        let p = pair.clone();
        self.rates
            .get_or_load(pair, move || async move { store.rate(&p) })
            .await
    }

    /// `amount` of the pair's base in its quote currency, cached with the pair's tag so a
    /// rate update drops every conversion of that pair (and only those).
    pub async fn convert(
        &self,
        amount: Decimal,
        pair: &CurrencyPairKey,
    ) -> RepoResult<Arc<Conversion>> {
        let rate = self.rate(pair).await?;
        let key = ConversionKey {
            amount,
            pair: pair.clone(),
        };
        self.conversions
            .with(EntryOptions::new().tag(pair.tag()))?
            .get_or_load(&key, move || async move {
                Ok::<_, std::io::Error>(Conversion {
                    converted: (amount * rate.rate).round_dp(2),
                    rate_seq: rate.seq,
                })
            })
            .await
    }

    pub async fn has_trustline(&self, wallet: &str, asset: &str) -> RepoResult<bool> {
        let store = self.store.clone();
        let key = TrustlineKey {
            wallet: wallet.into(),
            asset: asset.into(),
        };
        let (w, a) = (wallet.to_string(), asset.to_string());
        let found = self
            .trustlines
            .get_or_load(&key, move || async move { store.has_trustline(&w, &a) })
            .await?;
        Ok(*found)
    }

    pub async fn fee(&self, kind: &str) -> RepoResult<Arc<Fee>> {
        let store = self.store.clone();
        let k = kind.to_string();
        self.fees
            .get_or_load(&FeeKey(kind.into()), move || async move { store.fee(&k) })
            .await
    }

    pub async fn tx_status(&self, id: u64) -> RepoResult<Arc<String>> {
        let store = self.store.clone();
        self.statuses
            .get_or_load(&TxStatusKey(id), move || async move { store.tx_status(id) })
            .await
    }

    pub async fn recent(&self, wallet: &str) -> RepoResult<Arc<Vec<u64>>> {
        let store = self.store.clone();
        let w = wallet.to_string();
        self.recent
            .get_or_load(&RecentTxKey(wallet.into()), move || async move {
                store.recent(&w)
            })
            .await
    }

    /// Completes a transfer: the store first, then both wallets' balances and recent lists
    /// are invalidated on every node. While Redis is down the invalidations are queued and
    /// replayed (the cache returns `Ok`), so the transfer never fails for the cache's sake.
    pub async fn complete_transfer(
        &self,
        from: &str,
        to: &str,
        amount: Decimal,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let id = self.store.transfer(from, to, amount)?;
        self.log.push(format!("store:transfer:{id}"));
        // One script and one message per namespace for both wallets.
        let balances = [BalanceKey(from.into()), BalanceKey(to.into())];
        self.balances.batch().invalidate(&balances).await?;
        for key in &balances {
            self.log.push(format!("cache:invalidate:{key}"));
        }
        let recent = [RecentTxKey(from.into()), RecentTxKey(to.into())];
        self.recent.batch().invalidate(&recent).await?;
        Ok(id)
    }

    /// Updates a rate: the store first, then the rate and every conversion of the pair (by
    /// its tag). With Redis unreachable the library queues a clear of the conversions
    /// namespace instead (which keys the tag covers only Redis knows) and replays it.
    pub async fn upsert_rate(
        &self,
        pair: &CurrencyPairKey,
        rate: Decimal,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let seq = self.store.upsert_rate(pair, rate)?;
        self.log.push(format!("store:rate:{}:{seq}", pair.tag()));
        self.rates.invalidate(pair).await?;
        self.conversions.invalidate_tag(&pair.tag()).await?;
        self.log.push(format!("cache:invalidate:{pair}"));
        Ok(seq)
    }

    /// Opens a trustline: the store first, then the positive result is cached at once.
    pub async fn create_trustline(
        &self,
        wallet: &str,
        asset: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.store.create_trustline(wallet, asset)?;
        let key = TrustlineKey {
            wallet: wallet.into(),
            asset: asset.into(),
        };
        self.log.push(format!("store:trustline:{key}"));
        self.trustlines.set(&key, true).await?;
        self.log.push(format!("cache:set:{key}"));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet and the workload.

pub const PAIRS: &[(&str, &str, &str)] = &[
    ("CNGN", "USD", "0.00065"),
    ("CNGN", "EUR", "0.00060"),
    ("NGN", "USD", "0.00065"),
    ("USD", "EUR", "0.92"),
    ("USD", "GBP", "0.79"),
    ("USD", "KES", "129.50"),
];
pub const AMOUNTS: &[&str] = &["100.50", "250.00", "1000.00", "5000.00"];

/// Several nodes (cache instances) on one Redis, over one shared store.
pub struct Fleet {
    pub nodes: Vec<Payments>,
    pub store: Arc<Store>,
    pub log: Arc<EventLog>,
}

impl Fleet {
    /// A seeded store with `wallets` wallets, and `nodes` cache nodes built from `config`.
    pub async fn start(
        config: &PaymentsConfig,
        nodes: usize,
        wallets: usize,
        bound: Option<Duration>,
        tweak: impl Fn(TieredCacheBuilder) -> TieredCacheBuilder,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let store = Arc::new(Store::open()?);
        let pairs: Vec<_> = PAIRS
            .iter()
            .map(|(b, q, r)| (*b, *q, Decimal::from_str(r).unwrap()))
            .collect();
        store.seed(wallets, &pairs)?;
        let log = Arc::new(EventLog::default());
        let mut built = Vec::new();
        for _ in 0..nodes {
            let cache = tweak(config.builder(bound)).build()?;
            built.push(Payments::new(cache, store.clone(), log.clone())?);
        }
        Ok(Self {
            nodes: built,
            store,
            log,
        })
    }

    /// Waits (up to `within`) until every node listens on the bus.
    pub async fn subscribed(&self, within: Duration) -> bool {
        wait_until(within, || {
            self.nodes.iter().all(|n| n.cache.is_subscribed())
        })
        .await
    }
}

/// What a workload run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Reads answered without the store (L1 or Redis).
    pub hit: Samples,
    /// Reads that went to the store.
    pub miss: Samples,
    /// Write-through writes (store + invalidation).
    pub write: Samples,
    pub reads: u64,
    pub writes: u64,
    /// Store queries made by reads (misses).
    pub store_reads: u64,
}

/// One node's share of the workload: `ops` operations, about 3 % transfers and 0.5 % rate
/// updates, the rest reads of balances, rates, conversions, trustlines and fees.
pub async fn run_node(node: Payments, wallets: usize, ops: usize, mut seed: u64) -> Report {
    let mut r = Report::default();
    let pairs: Vec<CurrencyPairKey> = PAIRS
        .iter()
        .map(|(b, q, _)| CurrencyPairKey::new(b, q))
        .collect();
    for _ in 0..ops {
        let x = rng(&mut seed);
        let roll = x % 1000;
        let wallet = wallet_id(skewed(wallets, x >> 10));
        let pair = &pairs[skewed(pairs.len(), x >> 20)];
        let started = Instant::now();
        if roll < 30 {
            let to = wallet_id(skewed(wallets, x >> 30));
            if to != wallet {
                node.complete_transfer(&wallet, &to, Decimal::new(100 + (x % 900) as i64, 2))
                    .await
                    .expect("transfer");
            }
            r.write.0.push(started.elapsed());
            r.writes += 1;
            continue;
        }
        if roll < 35 {
            let rate = Decimal::from_str(
                PAIRS
                    .iter()
                    .find(|p| p.0 == pair.base && p.1 == pair.quote)
                    .unwrap()
                    .2,
            )
            .unwrap()
                + Decimal::new((x % 7) as i64, 6);
            node.upsert_rate(pair, rate).await.expect("rate update");
            r.write.0.push(started.elapsed());
            r.writes += 1;
            continue;
        }
        let before = node.store.queries();
        match roll {
            35..=499 => drop(node.balance(&wallet).await.expect("balance")),
            500..=749 => drop(node.rate(pair).await.expect("rate")),
            750..=849 => {
                let amount =
                    Decimal::from_str(AMOUNTS[(x >> 40) as usize % AMOUNTS.len()]).unwrap();
                drop(node.convert(amount, pair).await.expect("conversion"))
            }
            850..=949 => drop(
                node.has_trustline(&wallet, "CNGN")
                    .await
                    .expect("trustline"),
            ),
            _ => drop(node.fee("transfer").await.expect("fee")),
        }
        let took = started.elapsed();
        // The store is shared by every node: a query counted meanwhile may be another node's,
        // which at worst files a hit under "miss".
        if node.store.queries() > before {
            r.miss.0.push(took);
            r.store_reads += 1;
        } else {
            r.hit.0.push(took);
        }
        r.reads += 1;
    }
    r
}

/// Runs every node's workload at once and merges the reports.
pub async fn run_fleet(fleet: &Fleet, wallets: usize, ops_per_node: usize) -> Report {
    let tasks: Vec<_> = fleet
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            tokio::spawn(run_node(
                n.clone(),
                wallets,
                ops_per_node,
                0xFEE5 + i as u64,
            ))
        })
        .collect();
    let mut total = Report::default();
    for t in tasks {
        let r = t.await.expect("workload task");
        total.hit.0.extend(r.hit.0);
        total.miss.0.extend(r.miss.0);
        total.write.0.extend(r.write.0);
        total.reads += r.reads;
        total.writes += r.writes;
        total.store_reads += r.store_reads;
    }
    total
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<PaymentsConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PaymentsConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn the_documents_values_parse() {
        let c = parse(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_MAX_CONNECTIONS", "20"),
            ("REDIS_MIN_IDLE", "5"),
            ("REDIS_CONNECTION_TIMEOUT", "5"),
            ("REDIS_MAX_LIFETIME", "300"),
            ("REDIS_IDLE_TIMEOUT", "60"),
            ("REDIS_HEALTH_CHECK_INTERVAL", "30"),
        ])
        .unwrap();
        assert_eq!(c.connection_timeout, Duration::from_secs(5));
        assert_eq!(c.max_connections, 20);
        assert_eq!(c.redis_env.0["REDIS_URL"], "redis://127.0.0.1:6379");
        let defaults = PaymentsConfig {
            redis_env: c.redis_env.clone(),
            ..parse(&[]).unwrap()
        };
        assert_eq!(c, defaults, "the defaults are the document's");
    }

    #[test]
    fn bad_values_are_typed_errors() {
        assert_eq!(
            parse(&[("REDIS_CONNECTION_TIMEOUT", "5s")]),
            Err(ConfigError::NotANumber {
                var: "REDIS_CONNECTION_TIMEOUT",
                value: "5s".into()
            })
        );
        assert!(matches!(
            parse(&[("REDIS_CONNECTION_TIMEOUT", "0")]),
            Err(ConfigError::OutOfRange {
                var: "REDIS_CONNECTION_TIMEOUT",
                ..
            })
        ));
        assert!(matches!(
            parse(&[("REDIS_MAX_CONNECTIONS", "-1")]),
            Err(ConfigError::NotANumber { .. })
        ));
        assert!(matches!(
            parse(&[("REDIS_MAX_CONNECTIONS", "0")]),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse(&[("REDIS_MIN_IDLE", "30")]),
            Err(ConfigError::Inconsistent(_))
        ));
        assert!(matches!(
            parse(&[("REDIS_HEALTH_CHECK_INTERVAL", "99999")]),
            Err(ConfigError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn the_cache_checks_the_redis_variables_at_build() {
        let build = |vars: &[(&str, &str)]| {
            let config = parse(vars).unwrap();
            workload::try_build(config.builder(Some(NamespacePolicy::DEFAULT_STALENESS_BOUND)))
        };
        let err = build(&[("REDIS_URL", "http://:marker-51c2@cache:6380")]).unwrap_err();
        assert!(!err.contains("marker-51c2"), "{err}");
        let err = build(&[("REDIS_SSL", "maybe")]).unwrap_err();
        assert!(err.contains("REDIS_SSL"), "{err}");
        build(&[
            ("REDIS_URL", "rediss://cache:6380"),
            ("REDIS_PASSWORD", "marker-51c2"),
            ("REDIS_MAX_CONNECTIONS", "20"),
        ])
        .unwrap();
    }

    #[test]
    fn keys_follow_the_design() {
        assert_eq!(
            BalanceKey("GA123456789".into()).to_string(),
            "v1:wallet.balance:GA123456789"
        );
        assert_eq!(
            CurrencyPairKey::cngn_rate("USD").to_string(),
            "v1:rate:CNGN:USD"
        );
        let conv = ConversionKey {
            amount: Decimal::from_str("100.50").unwrap(),
            pair: CurrencyPairKey::cngn_rate("USD"),
        };
        assert_eq!(conv.to_string(), "v1:rate.convert:100.50:CNGN:USD");
        let rl = RateLimitKey {
            user: "user_123".into(),
            action: "login".into(),
        };
        assert_eq!(rl.to_string(), "v1:auth.rate_limit:user_123:login");
        assert_eq!(
            SessionKey("session_123".into()).to_string(),
            "v1:auth.session:session_123"
        );
    }

    #[test]
    fn every_namespace_has_its_ttl() {
        let ttl = |ns: &str| TTLS.iter().find(|(n, _)| *n == ns).unwrap().1;
        assert_eq!(ttl(CurrencyPairKey::NAMESPACE), Duration::from_secs(90));
        assert_eq!(ttl(BalanceKey::NAMESPACE), Duration::from_secs(45));
        assert_eq!(ttl(TrustlineKey::NAMESPACE), Duration::from_secs(3600));
        assert_eq!(ttl(FeeKey::NAMESPACE), Duration::from_secs(3600));
        assert_eq!(ttl(SessionKey::NAMESPACE), Duration::from_secs(1800));
        assert_eq!(ttl(TxStatusKey::NAMESPACE), Duration::from_secs(300));
        assert_eq!(ttl(RecentTxKey::NAMESPACE), Duration::from_secs(600));
        assert_eq!(ttl(JwtKey::NAMESPACE), Duration::from_secs(900));
        assert_eq!(ttl(RateLimitKey::NAMESPACE), Duration::from_secs(60));
        assert_eq!(ttl(BillProviderKey::NAMESPACE), Duration::from_secs(1800));
    }
}
