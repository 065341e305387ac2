//! The clearing and netting engine's caches on `tiered-cache`: the domain types, the system of
//! record the caches sit in front of, the cache wiring (`ClearingNode`) and the scenario the
//! example runs. `tests/seed_clearing.rs` includes this file and drives the same wiring.
//!
//! What the design document asked of its hand-written Redis layer, and where it lives here:
//!
//! | document | here |
//! |---|---|
//! | `clearing:window:active:{region}`, 300 s, dropped on every status change and new window | namespace `window`, written through (a tagged `set`) on every change |
//! | `netting:bilateral:{window}:{ccy}:{a}:{b}`, `netting:multilateral:{window}:{ccy}:{bank}`, 600 s | namespaces `net_bilateral`, `net_multilateral`, tagged with the window |
//! | warm-up when a window opens | `warm_window`: one loader call per kind, one fill script (a tagged `batch().get_or_load`) |
//! | `iso20022:{type}:{txn}`, 3600 s | namespace `iso20022`, tagged with the window of the transaction |
//! | obligation Created/Updated: `KEYS netting:*:{window}:*` + `DEL` | `Namespace::invalidate_tag` on both netting namespaces: no `KEYS`, every node |
//! | Settled: every cache of the window | `TieredCache::invalidate_tag`: every namespace, one script, one message |

// Each user of this file (the example, the test) calls a different part of it.
#![allow(dead_code)]

#[path = "../common/workload.rs"]
pub mod workload;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiered_cache::{
    CacheKey, EntryOptions, Namespace, NamespacePolicy, NamespaceStats, TieredCache,
};
use workload::{rng, skewed};

/// The document's TTLs.
pub const WINDOW_TTL: Duration = Duration::from_secs(300);
pub const NET_TTL: Duration = Duration::from_secs(600);
pub const MESSAGE_TTL: Duration = Duration::from_secs(3600);

/// The document's hit-rate targets (active window, net positions, ISO 20022), in percent.
pub const TARGETS: [(&str, f64); 4] = [
    ("window", 95.0),
    ("net_bilateral", 85.0),
    ("net_multilateral", 85.0),
    ("iso20022", 70.0),
];

/// The document's "Without Cache" and "With Cache" latencies per namespace, in ms.
pub fn doc_costs(ns: &str) -> (f64, f64) {
    match ns {
        "window" => (15.0, 2.0),
        "net_bilateral" | "net_multilateral" => (45.0, 3.0),
        _ => (25.0, 1.0),
    }
}

/// Every namespace this service caches, in the order reports list them.
pub const NAMESPACES: [&str; 4] = ["window", "net_bilateral", "net_multilateral", "iso20022"];

// ---------------------------------------------------------------------------------------------
// Domain types
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowStatus {
    Scheduled,
    Open,
    InProgress,
    Completed,
}

/// A clearing window, as the clearing engine's database holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearingWindow {
    pub id: String,
    pub region: String,
    pub status: WindowStatus,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The database row's version: every change bumps it.
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObligationEventType {
    Created,
    Updated,
    Settled,
}

/// What the obligation engine publishes (on NATS in the document).
#[derive(Debug, Clone)]
pub struct ObligationEvent {
    pub event_type: ObligationEventType,
    pub clearing_window_id: String,
}

#[derive(Debug, Clone)]
pub struct Obligation {
    pub debtor: String,
    pub creditor: String,
    pub currency: String,
    pub amount: Decimal,
}

/// `netting:bilateral:{window_id}:{currency}:{bank_a}:{bank_b}`, banks in either order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BilateralKey {
    pub window: String,
    pub currency: String,
    pub bank_a: String,
    pub bank_b: String,
}

impl CacheKey for BilateralKey {
    fn write_key(&self, out: &mut String) {
        (&self.window, &self.currency, &self.bank_a, &self.bank_b).write_key(out)
    }
}

/// `netting:multilateral:{window_id}:{currency}:{bank_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MultilateralKey {
    pub window: String,
    pub currency: String,
    pub bank: String,
}

impl CacheKey for MultilateralKey {
    fn write_key(&self, out: &mut String) {
        (&self.window, &self.currency, &self.bank).write_key(out)
    }
}

/// `iso20022:{message_type}:{transaction_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageKey {
    pub message_type: String,
    pub transaction_id: String,
}

impl CacheKey for MessageKey {
    fn write_key(&self, out: &mut String) {
        (&self.message_type, &self.transaction_id).write_key(out)
    }
}

/// A bilateral net position: positive `net_amount` flows from `bank_a` to `bank_b`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilateralNet {
    #[serde(with = "tiered_cache::exact::decimal")]
    pub net_amount: Decimal,
    pub direction: String,
    pub obligation_count: u32,
    /// The window's obligation revision this was computed from (for freshness checks).
    pub revision: u64,
}

/// A multilateral net position of one bank: positive means it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultilateralNet {
    #[serde(with = "tiered_cache::exact::decimal")]
    pub net_amount: Decimal,
    pub obligation_count: u32,
    pub revision: u64,
}

/// A parsed pacs.008 (the fields the clearing engine uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedMessage {
    pub debtor: String,
    pub creditor: String,
    #[serde(with = "tiered_cache::exact::decimal")]
    pub amount: Decimal,
    pub currency: String,
}

/// The tag every cache entry of a window carries: its id, under the tag name rules.
pub fn window_tag(window_id: &str) -> String {
    format!("win.{window_id}")
}

// ---------------------------------------------------------------------------------------------
// The system of record
// ---------------------------------------------------------------------------------------------

/// What one backend call costs in this simulation: the document's "Without Cache" column,
/// divided by `divisor` so a run stays short.
#[derive(Debug, Clone, Copy)]
pub struct BackendCosts {
    pub window_query: Duration,
    pub netting_query: Duration,
    pub iso_parse: Duration,
}

impl BackendCosts {
    pub fn scaled(divisor: u32) -> Self {
        Self {
            window_query: Duration::from_millis(15) / divisor,
            netting_query: Duration::from_millis(45) / divisor,
            iso_parse: Duration::from_millis(25) / divisor,
        }
    }
}

/// Calls the caches made to the backend.
#[derive(Debug, Default)]
pub struct BackendCalls {
    pub window_queries: AtomicU64,
    /// Netting engine passes (one per loader call, whatever the number of keys).
    pub bilateral_passes: AtomicU64,
    pub bilateral_rows: AtomicU64,
    pub multilateral_passes: AtomicU64,
    pub multilateral_rows: AtomicU64,
    pub parses: AtomicU64,
}

#[derive(Default)]
struct Tables {
    /// The active window per region.
    active: HashMap<String, ClearingWindow>,
    /// Per window: its obligations and their revision (bumped on every change).
    obligations: HashMap<String, (u64, Vec<Obligation>)>,
    /// Raw ISO 20022 XML by (type, transaction id).
    raw: HashMap<(String, String), String>,
    next_version: u64,
}

/// The clearing engine's database, in process: the only source of truth.
pub struct ClearingStore {
    tables: Mutex<Tables>,
    pub costs: BackendCosts,
    pub calls: BackendCalls,
}

impl ClearingStore {
    pub fn new(costs: BackendCosts) -> Arc<Self> {
        Arc::new(Self {
            tables: Mutex::default(),
            costs,
            calls: BackendCalls::default(),
        })
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("store lock")
    }

    /// Creates a Scheduled window `{region}-{seq}` and makes it the region's active one.
    pub fn new_window(&self, region: &str, seq: u32) -> ClearingWindow {
        let mut t = self.tables();
        t.next_version += 1;
        let w = ClearingWindow {
            id: format!("{region}-{seq}"),
            region: region.to_owned(),
            status: WindowStatus::Scheduled,
            start_ms: 1_763_683_200_000 + i64::from(seq) * 86_400_000,
            end_ms: 1_763_769_599_000 + i64::from(seq) * 86_400_000,
            version: t.next_version,
        };
        t.obligations.entry(w.id.clone()).or_default();
        t.active.insert(region.to_owned(), w.clone());
        w
    }

    pub fn set_status(&self, region: &str, status: WindowStatus) -> ClearingWindow {
        let mut t = self.tables();
        t.next_version += 1;
        let v = t.next_version;
        let w = t.active.get_mut(region).expect("region has a window");
        w.status = status;
        w.version = v;
        w.clone()
    }

    /// The active window as the database has it now (no cost: for checks).
    pub fn active_now(&self, region: &str) -> Option<ClearingWindow> {
        self.tables().active.get(region).cloned()
    }

    pub async fn query_active_window(&self, region: &str) -> Option<ClearingWindow> {
        tokio::time::sleep(self.costs.window_query).await;
        self.calls.window_queries.fetch_add(1, Relaxed);
        self.active_now(region)
    }

    pub fn add_obligation(&self, window: &str, o: Obligation) -> ObligationEvent {
        let mut t = self.tables();
        let entry = t.obligations.entry(window.to_owned()).or_default();
        entry.0 += 1;
        entry.1.push(o);
        ObligationEvent {
            event_type: ObligationEventType::Created,
            clearing_window_id: window.to_owned(),
        }
    }

    /// Amends the amount of the window's `index`-th obligation.
    pub fn update_obligation(
        &self,
        window: &str,
        index: usize,
        amount: Decimal,
    ) -> ObligationEvent {
        let mut t = self.tables();
        let entry = t.obligations.get_mut(window).expect("window exists");
        entry.0 += 1;
        let n = entry.1.len();
        entry.1[index % n].amount = amount;
        ObligationEvent {
            event_type: ObligationEventType::Updated,
            clearing_window_id: window.to_owned(),
        }
    }

    /// Marks the window's obligations settled: netting over them is over.
    pub fn settle(&self, window: &str) -> ObligationEvent {
        let mut t = self.tables();
        let entry = t.obligations.entry(window.to_owned()).or_default();
        entry.0 += 1;
        entry.1.clear();
        ObligationEvent {
            event_type: ObligationEventType::Settled,
            clearing_window_id: window.to_owned(),
        }
    }

    pub fn revision(&self, window: &str) -> u64 {
        self.tables().obligations.get(window).map_or(0, |o| o.0)
    }

    /// Every bilateral and multilateral key the window's obligations touch, sorted.
    pub fn netting_keys(&self, window: &str) -> (Vec<BilateralKey>, Vec<MultilateralKey>) {
        let t = self.tables();
        let mut bi = BTreeSet::new();
        let mut multi = BTreeSet::new();
        for o in t.obligations.get(window).map_or(&[][..], |o| &o.1[..]) {
            bi.insert(bilateral_key(window, &o.currency, &o.debtor, &o.creditor));
            for bank in [&o.debtor, &o.creditor] {
                multi.insert(MultilateralKey {
                    window: window.to_owned(),
                    currency: o.currency.clone(),
                    bank: bank.clone(),
                });
            }
        }
        (bi.into_iter().collect(), multi.into_iter().collect())
    }

    /// Bilateral nets as of now (no cost: the computation itself, and for checks).
    pub fn bilateral_now(&self, k: &BilateralKey) -> Option<BilateralNet> {
        let t = self.tables();
        let (revision, obligations) = t.obligations.get(&k.window)?;
        let (mut net, mut count) = (Decimal::ZERO, 0);
        for o in obligations.iter().filter(|o| o.currency == k.currency) {
            if o.debtor == k.bank_a && o.creditor == k.bank_b {
                net += o.amount;
            } else if o.debtor == k.bank_b && o.creditor == k.bank_a {
                net -= o.amount;
            } else {
                continue;
            }
            count += 1;
        }
        let direction = if net >= Decimal::ZERO {
            format!("{}_TO_{}", k.bank_a, k.bank_b)
        } else {
            format!("{}_TO_{}", k.bank_b, k.bank_a)
        };
        Some(BilateralNet {
            net_amount: net,
            direction,
            obligation_count: count,
            revision: *revision,
        })
    }

    pub fn multilateral_now(&self, k: &MultilateralKey) -> Option<MultilateralNet> {
        let t = self.tables();
        let (revision, obligations) = t.obligations.get(&k.window)?;
        let (mut net, mut count) = (Decimal::ZERO, 0);
        for o in obligations.iter().filter(|o| o.currency == k.currency) {
            if o.creditor == k.bank {
                net += o.amount;
            } else if o.debtor == k.bank {
                net -= o.amount;
            } else {
                continue;
            }
            count += 1;
        }
        Some(MultilateralNet {
            net_amount: net,
            obligation_count: count,
            revision: *revision,
        })
    }

    /// One netting-engine pass over the window's obligations for many keys: one query's cost.
    pub async fn compute_bilateral(&self, keys: &[&BilateralKey]) -> Vec<Option<BilateralNet>> {
        tokio::time::sleep(self.costs.netting_query).await;
        self.calls.bilateral_passes.fetch_add(1, Relaxed);
        (self.calls.bilateral_rows).fetch_add(keys.len() as u64, Relaxed);
        keys.iter().map(|k| self.bilateral_now(k)).collect()
    }

    pub async fn compute_multilateral(
        &self,
        keys: &[&MultilateralKey],
    ) -> Vec<Option<MultilateralNet>> {
        tokio::time::sleep(self.costs.netting_query).await;
        self.calls.multilateral_passes.fetch_add(1, Relaxed);
        (self.calls.multilateral_rows).fetch_add(keys.len() as u64, Relaxed);
        keys.iter().map(|k| self.multilateral_now(k)).collect()
    }

    /// A pacs.008 arrives (raw XML kept by the gateway).
    pub fn receive_message(&self, txn: &str, debtor: &str, creditor: &str, amount: Decimal) {
        let xml = format!(
            "<Document><FIToFICstmrCdtTrf><CdtTrfTxInf><PmtId><TxId>{txn}</TxId></PmtId>\
             <IntrBkSttlmAmt Ccy=\"USD\">{amount}</IntrBkSttlmAmt><Dbtr><Nm>{debtor}</Nm></Dbtr>\
             <Cdtr><Nm>{creditor}</Nm></Cdtr></CdtTrfTxInf></FIToFICstmrCdtTrf></Document>"
        );
        let key = ("pacs.008".to_owned(), txn.to_owned());
        self.tables().raw.insert(key, xml);
    }

    /// Parses a stored message: the cost the ISO 20022 cache exists to avoid.
    pub async fn parse_message(&self, key: &MessageKey) -> Result<ParsedMessage, std::io::Error> {
        tokio::time::sleep(self.costs.iso_parse).await;
        self.calls.parses.fetch_add(1, Relaxed);
        let raw = self
            .tables()
            .raw
            .get(&(key.message_type.clone(), key.transaction_id.clone()))
            .cloned()
            .ok_or_else(|| std::io::Error::other(format!("no message {key:?}")))?;
        let field = |open: &str, close: &str| -> String {
            let from = raw.find(open).map_or(0, |i| i + open.len());
            let to = raw[from..].find(close).map_or(from, |i| from + i);
            raw[from..to].to_owned()
        };
        let amount = field("\">", "</IntrBkSttlmAmt>");
        Ok(ParsedMessage {
            debtor: field("<Dbtr><Nm>", "</Nm>"),
            creditor: field("<Cdtr><Nm>", "</Nm>"),
            amount: amount.parse().map_err(std::io::Error::other)?,
            currency: field("Ccy=\"", "\""),
        })
    }
}

/// The bilateral key of a pair, banks in a fixed order so both directions share one entry.
pub fn bilateral_key(window: &str, currency: &str, x: &str, y: &str) -> BilateralKey {
    let (a, b) = if x <= y { (x, y) } else { (y, x) };
    BilateralKey {
        window: window.to_owned(),
        currency: currency.to_owned(),
        bank_a: a.to_owned(),
        bank_b: b.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The cache wiring
// ---------------------------------------------------------------------------------------------

/// One clearing-engine instance's caches. Builds on a `TieredCache` per process; every
/// instance on the same Redis sees every other's invalidations.
#[derive(Clone)]
pub struct ClearingNode {
    pub cache: TieredCache,
    pub windows: Namespace<str, ClearingWindow>,
    pub bilateral: Namespace<BilateralKey, BilateralNet>,
    pub multilateral: Namespace<MultilateralKey, MultilateralNet>,
    pub messages: Namespace<MessageKey, ParsedMessage>,
    pub store: Arc<ClearingStore>,
}

/// Warm-up of one window: keys, and the netting passes (loader calls) it took, per kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Warmed {
    pub bilateral_keys: usize,
    pub multilateral_keys: usize,
    pub bilateral_passes: u32,
    pub multilateral_passes: u32,
    pub failed: usize,
}

/// The cache, configured with the document's TTLs and the staleness `bound` (`None`: there is
/// no Redis to coordinate through, so the namespaces keep serving L1, each node alone, instead
/// of bypassing it).
pub fn build_cache(url: Option<&str>, bound: Option<Duration>) -> TieredCache {
    let policy = |ttl: Duration| workload::bounded(NamespacePolicy::new(ttl), bound);
    workload::at(url)
        .prefix("deltran")
        .namespace("window", policy(WINDOW_TTL))
        .namespace("net_bilateral", policy(NET_TTL).l1_capacity(100_000))
        .namespace("net_multilateral", policy(NET_TTL))
        .namespace("iso20022", policy(MESSAGE_TTL).l1_capacity(50_000))
        .build()
        .expect("valid configuration")
}

impl ClearingNode {
    pub fn new(cache: TieredCache, store: Arc<ClearingStore>) -> Self {
        let ns = "namespace configured in build_cache";
        Self {
            windows: cache.namespace("window").expect(ns),
            bilateral: cache.namespace("net_bilateral").expect(ns),
            multilateral: cache.namespace("net_multilateral").expect(ns),
            messages: cache.namespace("iso20022").expect(ns),
            cache,
            store,
        }
    }

    /// `get_active_window`: L1, Redis, then the database. A loaded window is not tagged (its
    /// id is known only once loaded); every status change rewrites it tagged.
    pub async fn active_window(
        &self,
        region: &str,
    ) -> tiered_cache::Result<Option<Arc<ClearingWindow>>> {
        let store = self.store.clone();
        let region_owned = region.to_owned();
        self.windows
            .get_or_load_optional(region, move || async move {
                Ok::<_, std::io::Error>(store.query_active_window(&region_owned).await)
            })
            .await
    }

    /// A window's row changed (status, or a new window): the database first, then the cache,
    /// tagged with the window so a settlement drops it too. With Redis unreachable the
    /// library queues an invalidation of the region instead (a replay could not carry the
    /// tag): every node drops its copy and the next read loads the row.
    pub async fn publish_window(&self, w: &ClearingWindow) -> tiered_cache::Result<()> {
        let windowed = EntryOptions::new().tag(window_tag(&w.id));
        self.windows.with(windowed)?.set(&w.region, w.clone()).await
    }

    /// Scheduled → Open → InProgress → Completed: database, then cache.
    pub async fn set_status(
        &self,
        region: &str,
        status: WindowStatus,
    ) -> tiered_cache::Result<ClearingWindow> {
        let w = self.store.set_status(region, status);
        self.publish_window(&w).await?;
        Ok(w)
    }

    /// The window opens: its status written through, then its netting warmed in one batch.
    pub async fn open_window(
        &self,
        region: &str,
    ) -> tiered_cache::Result<(ClearingWindow, Warmed)> {
        let w = self.set_status(region, WindowStatus::Open).await?;
        let warmed = self.warm_window(&w.id).await;
        Ok((w, warmed))
    }

    /// A new window for the region (the old one is no longer active).
    pub async fn new_window(&self, region: &str, seq: u32) -> tiered_cache::Result<ClearingWindow> {
        let w = self.store.new_window(region, seq);
        self.publish_window(&w).await?;
        Ok(w)
    }

    /// The document's warm-up, as batches: every net position of the window in one netting
    /// pass per kind, written back to Redis in one script each, tagged with the window.
    pub async fn warm_window(&self, window: &str) -> Warmed {
        let windowed = EntryOptions::new().tag(window_tag(window));
        let (bi, multi) = self.store.netting_keys(window);
        let store = &self.store;
        let (b_passes, m_passes) = (AtomicU32::new(0), AtomicU32::new(0));
        let (b_passes, m_passes) = (&b_passes, &m_passes);
        let b = self
            .bilateral
            .with(windowed.clone())
            .expect("window tags are valid tag names")
            .batch()
            .get_or_load(&bi, |missing| async move {
                b_passes.fetch_add(1, Relaxed);
                Ok::<_, std::io::Error>(store.compute_bilateral(&missing).await)
            })
            .await;
        let m = self
            .multilateral
            .with(windowed)
            .expect("window tags are valid tag names")
            .batch()
            .get_or_load(&multi, |missing| async move {
                m_passes.fetch_add(1, Relaxed);
                Ok::<_, std::io::Error>(store.compute_multilateral(&missing).await)
            })
            .await;
        Warmed {
            bilateral_keys: bi.len(),
            multilateral_keys: multi.len(),
            bilateral_passes: b_passes.load(Relaxed),
            multilateral_passes: m_passes.load(Relaxed),
            failed: b.iter().filter(|r| r.is_err()).count()
                + m.iter().filter(|r| r.is_err()).count(),
        }
    }

    pub async fn bilateral_net(
        &self,
        key: &BilateralKey,
    ) -> tiered_cache::Result<Arc<BilateralNet>> {
        let (store, owned) = (self.store.clone(), key.clone());
        let windowed = EntryOptions::new().tag(window_tag(&key.window));
        self.bilateral
            .with(windowed)?
            .get_or_load(key, || async move {
                let mut out = store.compute_bilateral(&[&owned]).await;
                out.pop().flatten().ok_or("window unknown")
            })
            .await
    }

    pub async fn multilateral_net(
        &self,
        key: &MultilateralKey,
    ) -> tiered_cache::Result<Arc<MultilateralNet>> {
        let (store, owned) = (self.store.clone(), key.clone());
        let windowed = EntryOptions::new().tag(window_tag(&key.window));
        self.multilateral
            .with(windowed)?
            .get_or_load(key, || async move {
                let mut out = store.compute_multilateral(&[&owned]).await;
                out.pop().flatten().ok_or("window unknown")
            })
            .await
    }

    /// A parsed message: parsed once in the fleet, then served from L1 or Redis.
    pub async fn message(
        &self,
        window: &str,
        key: &MessageKey,
    ) -> tiered_cache::Result<Arc<ParsedMessage>> {
        let (store, owned) = (self.store.clone(), key.clone());
        self.messages
            .with(EntryOptions::new().tag(window_tag(window)))?
            .get_or_load(key, || async move { store.parse_message(&owned).await })
            .await
    }

    /// The document's `handle_obligation_event`, without `KEYS`: Created/Updated drop the
    /// window's netting on every node; Settled drops every cache of the window.
    pub async fn handle_obligation_event(
        &self,
        event: &ObligationEvent,
    ) -> tiered_cache::Result<usize> {
        let tag = window_tag(&event.clearing_window_id);
        match event.event_type {
            ObligationEventType::Created | ObligationEventType::Updated => {
                let b = self.bilateral.invalidate_tag(&tag).await?;
                let m = self.multilateral.invalidate_tag(&tag).await?;
                Ok(b + m)
            }
            ObligationEventType::Settled => self.cache.invalidate_tag(&tag).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

pub const REGIONS: [&str; 3] = ["Global", "APAC", "EMEA"];
pub const BANKS: [&str; 6] = ["ICICI", "HDFC", "SBI", "AXIS", "KOTAK", "YES"];
pub const CURRENCIES: [&str; 3] = ["USD", "EUR", "INR"];

/// The scenario's knobs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub nodes: usize,
    /// Reads each node makes.
    pub ops_per_node: usize,
    /// Each node posts an obligation (and its event) every this many operations.
    pub obligation_every: usize,
    /// Each node receives a new pacs.008 every this many operations.
    pub message_every: usize,
    /// Obligations seeded per window.
    pub seed_obligations: usize,
    pub backend_divisor: u32,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            nodes: 3,
            ops_per_node: 6_000,
            obligation_every: 1_000,
            message_every: 40,
            seed_obligations: 60,
            backend_divisor: 10,
        }
    }
}

/// Reads of one namespace on one node, by the tier that answered.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    pub l1: Vec<Duration>,
    pub l2: Vec<Duration>,
    pub loader: Vec<Duration>,
    pub errors: u64,
}

impl Reads {
    pub fn total(&self) -> usize {
        self.l1.len() + self.l2.len() + self.loader.len()
    }

    pub fn merge(&mut self, other: &Reads) {
        self.l1.extend_from_slice(&other.l1);
        self.l2.extend_from_slice(&other.l2);
        self.loader.extend_from_slice(&other.loader);
        self.errors += other.errors;
    }

    pub fn all(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .l1
            .iter()
            .chain(&self.l2)
            .chain(&self.loader)
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per namespace, every node's reads.
    pub reads: HashMap<&'static str, Reads>,
    pub warmups: Vec<(String, Warmed)>,
    pub obligation_events: u64,
    pub settled: Vec<(String, usize)>,
    pub status_changes: u64,
    pub write_errors: u64,
    pub elapsed: Duration,
    /// Node/key reads that disagreed with the database after the run, and when that was checked.
    pub disagreements: usize,
    pub converged_after: Duration,
}

fn obligation(x: u64) -> Obligation {
    let d = (x % BANKS.len() as u64) as usize;
    let c = (d + 1 + ((x >> 8) % (BANKS.len() as u64 - 1)) as usize) % BANKS.len();
    Obligation {
        debtor: BANKS[d].to_owned(),
        creditor: BANKS[c].to_owned(),
        currency: CURRENCIES[((x >> 16) % 3) as usize].to_owned(),
        amount: Decimal::new(((x >> 20) % 9_000_000 + 100_000) as i64, 2),
    }
}

/// Seeds the database: a Scheduled window per region with its pending obligations.
pub fn seed(store: &ClearingStore, plan: &Plan) {
    let mut x = 0xC1EA_u64;
    for region in REGIONS {
        let w = store.new_window(region, 1);
        for _ in 0..plan.seed_obligations {
            store.add_obligation(&w.id, obligation(rng(&mut x)));
        }
    }
}

/// The tier that answered, from the node's counts before and after a read (one reader per
/// node, so nothing else moves them meanwhile).
fn tier(before: &NamespaceStats, after: &NamespaceStats) -> Option<u8> {
    if after.l1_hits > before.l1_hits {
        Some(1)
    } else if after.l2_hits > before.l2_hits {
        Some(2)
    } else if after.loads > before.loads || after.load_errors > before.load_errors {
        Some(3)
    } else {
        None
    }
}

/// The recent messages every node reads, with the window each belongs to.
type Inbox = Arc<Mutex<Vec<(String, MessageKey)>>>;

/// One read of the workload, chosen before the clock starts.
enum Read {
    Window(&'static str),
    Bilateral(BilateralKey),
    Multilateral(MultilateralKey),
    Message(String, MessageKey),
}

impl Read {
    fn namespace(&self) -> &'static str {
        match self {
            Read::Window(_) => "window",
            Read::Bilateral(_) => "net_bilateral",
            Read::Multilateral(_) => "net_multilateral",
            Read::Message(..) => "iso20022",
        }
    }
}

/// Half the reads are of a region's active window, a third of net positions of the region's
/// window (hot corridors most), the rest of recent messages. The window id of a netting read
/// comes from the database here, outside the timed call (a real engine holds it already).
fn choose_read(store: &ClearingStore, x: u64, inbox: &Inbox) -> Option<Read> {
    let region = REGIONS[skewed(REGIONS.len(), x >> 4)];
    let pick = x % 100;
    if pick < 50 {
        return Some(Read::Window(region));
    }
    if pick < 85 {
        let window = store.active_now(region)?.id;
        let a = skewed(BANKS.len(), x >> 20);
        let b = (a + 1 + skewed(BANKS.len() - 1, x >> 28)) % BANKS.len();
        let ccy = CURRENCIES[skewed(CURRENCIES.len(), x >> 36)];
        if pick < 78 {
            return Some(Read::Bilateral(bilateral_key(
                &window, ccy, BANKS[a], BANKS[b],
            )));
        }
        return Some(Read::Multilateral(MultilateralKey {
            window,
            currency: ccy.into(),
            bank: BANKS[a].into(),
        }));
    }
    let m = inbox.lock().unwrap();
    // Recent messages are read most (validation, routing, settlement).
    let (window, key) = m.get(m.len().checked_sub(1 + skewed(m.len().min(60), x >> 12))?)?;
    Some(Read::Message(window.clone(), key.clone()))
}

/// Runs one read through the cache; false when it failed.
async fn perform(node: &ClearingNode, read: &Read) -> bool {
    match read {
        Read::Window(region) => node.active_window(region).await.is_ok(),
        Read::Bilateral(k) => node.bilateral_net(k).await.is_ok(),
        Read::Multilateral(k) => node.multilateral_net(k).await.is_ok(),
        Read::Message(window, k) => node.message(window, k).await.is_ok(),
    }
}

/// The obligation engine posts (or amends) an obligation: database first, then the event.
async fn post_obligation(
    node: &ClearingNode,
    x: u64,
    seed: &mut u64,
) -> tiered_cache::Result<usize> {
    let region = REGIONS[(x % REGIONS.len() as u64) as usize];
    let w = node.store.active_now(region).expect("seeded");
    let event = if x % 3 == 0 {
        let amount = Decimal::new((x % 1_000_000) as i64, 2);
        node.store
            .update_obligation(&w.id, (x >> 5) as usize, amount)
    } else {
        node.store.add_obligation(&w.id, obligation(rng(seed)))
    };
    node.handle_obligation_event(&event).await
}

/// A pacs.008 arrives at the gateway for a region's window; every node will read it.
fn receive_message(store: &ClearingStore, txn: String, x: u64, inbox: &Inbox) {
    let window = store
        .active_now(REGIONS[(x % 3) as usize])
        .expect("seeded")
        .id;
    let (d, c) = (BANKS[(x % 6) as usize], BANKS[((x >> 3) % 6) as usize]);
    store.receive_message(&txn, d, c, Decimal::new((x % 10_000_000) as i64, 2));
    let key = MessageKey {
        message_type: "pacs.008".into(),
        transaction_id: txn,
    };
    inbox.lock().unwrap().push((window, key));
}

/// One node's share of the run: reads, and every so often an obligation posted and a message
/// received. Node 0 also walks EMEA's window through its lifecycle and settles it half-way.
async fn node_run(
    node: ClearingNode,
    index: usize,
    plan: Plan,
    inbox: Inbox,
) -> (HashMap<&'static str, Reads>, Outcome) {
    let mut reads: HashMap<&'static str, Reads> = HashMap::new();
    let mut out = Outcome::default();
    let mut seed = 0xFEED_u64 + index as u64 * 7919;
    for op in 0..plan.ops_per_node {
        if index == 0 && op == plan.ops_per_node / 2 {
            settle_cycle(&node, "EMEA", &mut out).await;
        }
        let x = rng(&mut seed);
        if op % plan.obligation_every == plan.obligation_every / 2 {
            out.obligation_events += 1;
            out.write_errors += u64::from(post_obligation(&node, x, &mut seed).await.is_err());
        }
        if op % plan.message_every == 0 {
            receive_message(&node.store, format!("txn-{index}-{op}"), x, &inbox);
        }
        let Some(read) = choose_read(&node.store, x, &inbox) else {
            continue;
        };
        let ns = read.namespace();
        let before = node
            .cache
            .stats()
            .namespace(ns)
            .copied()
            .unwrap_or_default();
        let started = Instant::now();
        let ok = perform(&node, &read).await;
        record(&mut reads, ns, &node, &before, started, ok);
    }
    (reads, out)
}

fn record(
    reads: &mut HashMap<&'static str, Reads>,
    ns: &'static str,
    node: &ClearingNode,
    before: &NamespaceStats,
    started: Instant,
    ok: bool,
) {
    let took = started.elapsed();
    let after = node
        .cache
        .stats()
        .namespace(ns)
        .copied()
        .unwrap_or_default();
    let r = reads.entry(ns).or_default();
    if !ok {
        r.errors += 1;
        return;
    }
    match tier(before, &after) {
        Some(1) => r.l1.push(took),
        Some(2) => r.l2.push(took),
        _ => r.loader.push(took),
    }
}

/// InProgress → Completed → Settled → a new window, opened and warmed.
async fn settle_cycle(node: &ClearingNode, region: &str, out: &mut Outcome) {
    for status in [WindowStatus::InProgress, WindowStatus::Completed] {
        out.write_errors += u64::from(node.set_status(region, status).await.is_err());
        out.status_changes += 1;
    }
    let old = node.store.active_now(region).expect("seeded").id;
    let event = node.store.settle(&old);
    match node.handle_obligation_event(&event).await {
        Ok(n) => out.settled.push((old, n)),
        Err(_) => out.write_errors += 1,
    }
    if node.new_window(region, 2).await.is_err() {
        out.write_errors += 1;
    }
    let id = node.store.active_now(region).expect("just created").id;
    let mut x = 0xE3EA_u64;
    for _ in 0..20 {
        node.store.add_obligation(&id, obligation(rng(&mut x)));
    }
    match node.open_window(region).await {
        Ok((_, warmed)) => out.warmups.push((id, warmed)),
        Err(_) => out.write_errors += 1,
    }
    out.status_changes += 2;
}

/// Every node's reads of every region's window and net positions, against the database.
pub async fn disagreements(nodes: &[ClearingNode]) -> usize {
    let mut n = 0;
    for node in nodes {
        for region in REGIONS {
            let want = node.store.active_now(region);
            let got = node.active_window(region).await.ok().flatten();
            n += usize::from(got.as_deref() != want.as_ref());
            let Some(w) = want else { continue };
            let (bi, multi) = node.store.netting_keys(&w.id);
            for k in &bi {
                let got = node.bilateral_net(k).await.ok();
                n += usize::from(got.as_deref() != node.store.bilateral_now(k).as_ref());
            }
            for k in &multi {
                let got = node.multilateral_net(k).await.ok();
                n += usize::from(got.as_deref() != node.store.multilateral_now(k).as_ref());
            }
        }
    }
    n
}

/// Runs the scenario on `nodes` (already built on one Redis, or L1-only).
pub async fn run(nodes: &[ClearingNode], plan: Plan, shared_redis: bool) -> Outcome {
    let mut out = Outcome::default();
    let first = &nodes[0];
    let started = Instant::now();
    // The windows open: status written through, netting warmed in one batch per kind.
    for region in REGIONS {
        out.status_changes += 1;
        match first.open_window(region).await {
            Ok((w, warmed)) => out.warmups.push((w.id, warmed)),
            Err(_) => out.write_errors += 1,
        }
    }
    let inbox: Inbox = Arc::default();
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        tasks.push(tokio::spawn(node_run(node.clone(), i, plan, inbox.clone())));
    }
    for t in tasks {
        let (reads, o) = t.await.expect("node task");
        for (ns, r) in reads {
            out.reads.entry(ns).or_default().merge(&r);
        }
        out.obligation_events += o.obligation_events;
        out.status_changes += o.status_changes;
        out.write_errors += o.write_errors;
        out.settled.extend(o.settled);
        out.warmups.extend(o.warmups);
    }
    out.elapsed = started.elapsed();
    if shared_redis {
        // Every node must agree with the database once the bus has delivered: poll until so.
        let stopped = Instant::now();
        loop {
            out.disagreements = disagreements(nodes).await;
            if out.disagreements == 0 || stopped.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.converged_after = stopped.elapsed();
    }
    out
}
