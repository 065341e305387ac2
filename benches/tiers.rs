//! Each tier against what a user would write instead, side by side in one run.
//!
//! ```text
//! cargo bench --bench tiers                  # a private redis-server is started
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench tiers
//! ```
//!
//! Every group is paired: its benchmarks run their operations in turn (Redis groups one
//! operation each, back to back; the L1 group in batches of 256) and each reports its own
//! share, so drift in loopback latency or CPU placement hits all sides alike.
//!
//! - `l1_hit/*`: a hit through the public API (`get_local`, and the async `get` polled once)
//!   against a raw `moka::sync::Cache<String, Arc<V>>` get of the same value, on 16 hot keys
//!   and on 10 000 keys read in a seeded random order.
//! - `l2_hit`: an L1 miss answered by Redis (`get` on a namespace whose L1 entries live 1 ms,
//!   over 10 000 keys: GET, envelope check, decode, guarded L1 insert) against a raw redis-rs
//!   GET plus rmp-serde decode on a connection to the same server.
//! - `write`: `set` (encode, one script: version, SET PX, PUBLISH, then the L1 update) against
//!   a raw MULTI of SET PX + PUBLISH of the same encoded bytes.
//! - `l1_features`: the cost of the resilience policies on an L1 hit: `get_local` and
//!   `get_or_load` on 16 hot keys of a namespace with every policy off and one with every
//!   policy on (fail-safe, timeouts, refresh-ahead, jitter, fleet lock, byte bound), against
//!   a raw moka get.
//! - `metrics`: the cost of an installed recorder on the L1 hit path: `get_local` and the
//!   async `get` on 16 hot keys of a cache built with no recorder and of one built inside
//!   `metrics::with_local_recorder` with a `metrics-exporter-prometheus` recorder (handles
//!   bind at `build()`; L1 hits are timed on 1 lookup in 64). `cargo bench --bench tiers --
//!   metrics`. Measured (2 shared cores, 16 keys, ~220-340 ns per hit): with / without a
//!   recorder, `get_local` 1.05-1.10x, `get` 1.07-1.08x over three runs.
//! - `get_many`: one `get_many` of 100 keys against 100 sequential `get`s of 100 other keys,
//!   all L1 misses answered by Redis (L1 entries live 1 ms, and a key comes round again only
//!   after 50 pairs). `cargo bench --bench tiers -- get_many`.
//!
//! The L1 groups (`l1_hit`, `l1_features`, `metrics`) measure hits, so their namespaces have
//! no staleness bound: on a starved machine the watchdog could otherwise switch L1 off
//! mid-run (the hit path reads the same bypass flag either way). Should a lookup miss all the
//! same (a subscriber reconnect's resync empties L1), the key is read back from Redis on the
//! runtime and the lookup retried; the refill's time is left out of the op's, and the group
//! says how many it needed.

#[path = "../tests/support/server.rs"]
mod server;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use futures_util::FutureExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiered_cache::{Namespace, NamespacePolicy, TieredCache};

/// A market quote: the trading seed's hot value (about 60 bytes encoded).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    bid: Decimal,
    ask: Decimal,
    ts_ms: i64,
}

fn quote(i: usize) -> Quote {
    Quote {
        symbol: format!("SYM{i:05}"),
        bid: Decimal::new(10_000 + i as i64, 2),
        ask: Decimal::new(10_001 + i as i64, 2),
        ts_ms: 1_763_700_000_000 + i as i64,
    }
}

/// A seeded, reproducible key order.
fn order(n: usize, len: usize) -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
        })
        .collect()
}

struct Env {
    rt: tokio::runtime::Runtime,
    url: String,
    _server: Option<server::RedisServer>,
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Env {
            rt,
            url,
            _server: None,
        },
        _ => {
            let s = server::RedisServer::start();
            Env {
                rt,
                url: s.url(),
                _server: Some(s),
            }
        }
    }
}

fn cache(env: &Env, l1_capacity: u64, l1_ttl: Option<Duration>) -> TieredCache {
    cache_from(
        env,
        NamespacePolicy::new(Duration::from_secs(600)),
        l1_capacity,
        l1_ttl,
    )
}

/// The L1 groups' cache: [`cache`]'s, with no staleness bound (see the module doc).
fn hot_cache(env: &Env) -> TieredCache {
    let p = NamespacePolicy::new(Duration::from_secs(600)).unbounded_staleness();
    cache_from(env, p, 100_000, None)
}

fn cache_from(
    env: &Env,
    p: NamespacePolicy,
    l1_capacity: u64,
    l1_ttl: Option<Duration>,
) -> TieredCache {
    let p = p.l1_capacity(l1_capacity);
    cache_with(
        env,
        "bench",
        match l1_ttl {
            Some(ttl) => p.l1_ttl(ttl),
            None => p,
        },
    )
}

fn cache_with(env: &Env, prefix: &str, policy: NamespacePolicy) -> TieredCache {
    let _guard = env.rt.enter();
    let c = TieredCache::builder()
        .redis_url(&env.url)
        .prefix(prefix)
        .namespace("quote", policy)
        .build()
        .unwrap();
    env.rt.block_on(async {
        while !c.is_subscribed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    c
}

/// How many L1 lookups of the L1 groups missed and were refilled, and the time the refills
/// took (left out of the ops' times by `rotate`).
static REFILLS: AtomicU64 = AtomicU64::new(0);
static REFILL_NANOS: AtomicU64 = AtomicU64::new(0);

/// An L1 group's op: `op` is the measured lookup, tried again after a refill of `key` should
/// it miss. Misses only when L1 was emptied or switched off under it (see [`refill`]).
#[inline(always)]
fn hit<T>(
    env: &Env,
    ns: &Namespace<str, Quote>,
    key: &str,
    mut op: impl FnMut() -> Option<T>,
) -> T {
    loop {
        if let Some(v) = op() {
            return v;
        }
        refill(env, ns, key);
    }
}

/// Puts `key` back in L1 after a lookup that should have hit did not: on a loaded machine
/// the subscriber can reconnect, and its resync empties L1 (as can L1's own 60 s TTL, if a
/// group runs that long). Reads the key through `get` on the runtime, which fills L1 from
/// Redis, until L1 holds it; a resync still in flight may fence a fill, hence the retries.
#[cold]
#[inline(never)]
fn refill(env: &Env, ns: &Namespace<str, Quote>, key: &str) {
    let start = Instant::now();
    REFILLS.fetch_add(1, Relaxed);
    while ns.get_local(key).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{key}: L1 still misses after 30 s of refills"
        );
        if env.rt.block_on(ns.get(key)).is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    REFILL_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
}

/// Resets the refill count for an L1 group; see [`report_refills`].
fn reset_refills() {
    REFILLS.store(0, Relaxed);
}

/// Says how many lookups of an L1 group had to refill L1, if any did.
fn report_refills(group: &str) {
    let n = REFILLS.load(Relaxed);
    if n > 0 {
        eprintln!("{group}: {n} lookups missed L1 and refilled it (time left out)");
    }
}

/// Runs the operations in turn, in batches of 256, and returns the time spent in `ops[which]`:
/// the same pairing as the Redis groups, at a granularity where timer overhead is amortized.
static ROTATE_TOTALS: std::sync::Mutex<[Duration; 5]> = std::sync::Mutex::new([Duration::ZERO; 5]);

fn rotate(iters: u64, which: usize, ops: &mut [&mut dyn FnMut(u64)]) -> Duration {
    const BATCH: u64 = 256;
    let mut spent = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = BATCH.min(iters - done);
        for (k, op) in ops.iter_mut().enumerate() {
            let refilling = REFILL_NANOS.load(Relaxed);
            let t = Instant::now();
            for i in done..done + n {
                op(i);
            }
            let took = t.elapsed();
            let refilled = Duration::from_nanos(REFILL_NANOS.load(Relaxed) - refilling);
            let took = took.saturating_sub(refilled);
            ROTATE_TOTALS.lock().unwrap()[k] += took;
            if k == which {
                spent += took;
            }
        }
        done += n;
    }
    spent
}

/// Benchmarks `ops` under `ids`, one benchmark each, all rotated together (see `rotate`), and
/// returns each op's time summed over every rotation: ratios between them are measured over
/// the very same rotations. Zero totals: the group was filtered out.
fn rotated(
    g: &mut BenchmarkGroup<'_, WallTime>,
    ids: impl IntoIterator<Item = BenchmarkId>,
    ops: &mut [&mut dyn FnMut(u64)],
) -> [Duration; 5] {
    *ROTATE_TOTALS.lock().unwrap() = [Duration::ZERO; 5];
    for (which, id) in ids.into_iter().enumerate() {
        g.bench_function(id, |b| b.iter_custom(|iters| rotate(iters, which, ops)));
    }
    *ROTATE_TOTALS.lock().unwrap()
}

fn l1_hit(c: &mut Criterion) {
    let env = env();
    let cache = hot_cache(&env);
    let ns = cache.namespace::<str, Quote>("quote").unwrap();
    // A `get` that misses L1 reaches Redis: it needs the runtime's reactor to be polled.
    let _rt = env.rt.enter();
    let mut g = c.benchmark_group("l1_hit");
    g.throughput(Throughput::Elements(1));
    for keys in [16usize, 10_000] {
        let names: Vec<String> = (0..keys).map(|i| format!("SYM{i:05}")).collect();
        let raw: moka::sync::Cache<String, Arc<Quote>> =
            moka::sync::Cache::builder().max_capacity(100_000).build();
        env.rt.block_on(async {
            for (i, k) in names.iter().enumerate() {
                ns.set(k, quote(i)).await.unwrap();
                raw.insert(k.clone(), Arc::new(quote(i)));
            }
        });
        reset_refills();
        for k in &names {
            hit(&env, &ns, k, || ns.get_local(k));
        }
        let seq: Vec<&str> = order(keys, 1 << 16)
            .into_iter()
            .map(|i| names[i].as_str())
            .collect();
        // Each op walks its own stretch of the sequence, so none reads keys another op has
        // just warmed in the CPU cache.
        let at = |i: u64, op: u64| seq[((i + op * 21_845) & 0xFFFF) as usize];
        let mut raw_get = |i| {
            std::hint::black_box(raw.get(at(i, 0)).unwrap());
        };
        let mut get_local = |i| {
            let k = at(i, 1);
            std::hint::black_box(hit(&env, &ns, k, || ns.get_local(k)));
        };
        let mut get_polled = |i| {
            let k = at(i, 2);
            std::hint::black_box(hit(&env, &ns, k, || ns.get(k).now_or_never().flatten()));
        };
        let ids = ["raw_moka_get", "get_local", "get_async_polled_once"]
            .map(|name| BenchmarkId::new(name, keys));
        let t = rotated(
            &mut g,
            ids,
            &mut [&mut raw_get, &mut get_local, &mut get_polled],
        );
        if t[0].is_zero() {
            continue; // filtered out
        }
        let r = |k: usize| t[k].as_secs_f64() / t[0].as_secs_f64().max(f64::MIN_POSITIVE);
        eprintln!(
            "l1_hit/{keys}: over the same rotations, get_local/raw = {:.2}x, get_async/raw = {:.2}x",
            r(1),
            r(2)
        );
        report_refills(&format!("l1_hit/{keys}"));
    }
    g.finish();
}

/// The cost of the resilience features on the L1 hit path: the same 16 hot keys read through
/// a namespace with every feature off and one with every feature on, against raw moka.
fn l1_features(c: &mut Criterion) {
    let env = env();
    let plain = hot_cache(&env);
    // Its own prefix: the two caches must not evict each other's keys.
    let all = cache_with(
        &env,
        "bench-all",
        NamespacePolicy::new(Duration::from_secs(600))
            .unbounded_staleness()
            .l1_max_bytes(64 << 20)
            .fail_safe(Duration::from_secs(600))
            .soft_timeout(Duration::from_millis(100))
            .hard_timeout(Duration::from_secs(1))
            .refresh_ahead(0.9)
            .ttl_jitter(Duration::from_secs(1))
            .fleet_single_flight(Duration::from_secs(1)),
    );
    let (off, on) = (
        plain.namespace::<str, Quote>("quote").unwrap(),
        all.namespace::<str, Quote>("quote").unwrap(),
    );
    let names: Vec<String> = (0..16).map(|i| format!("SYM{i:05}")).collect();
    let raw: moka::sync::Cache<String, Arc<Quote>> =
        moka::sync::Cache::builder().max_capacity(100_000).build();
    env.rt.block_on(async {
        for (i, k) in names.iter().enumerate() {
            off.set(k, quote(i)).await.unwrap();
            on.set(k, quote(i)).await.unwrap();
            raw.insert(k.clone(), Arc::new(quote(i)));
        }
    });
    let at = |i: u64| names[(i % 16) as usize].as_str();
    let load = || async { Ok::<_, std::io::Error>(quote(0)) };
    // A `get_or_load` that misses L1 reaches Redis: it needs the runtime's reactor.
    let _rt = env.rt.enter();
    reset_refills();
    let mut raw_get = |i| {
        std::hint::black_box(raw.get(at(i)).unwrap());
    };
    let mut local_off = |i| {
        let k = at(i);
        std::hint::black_box(hit(&env, &off, k, || off.get_local(k)));
    };
    let mut local_on = |i| {
        let k = at(i);
        std::hint::black_box(hit(&env, &on, k, || on.get_local(k)));
    };
    let mut load_off = |i| {
        let k = at(i);
        let v = hit(&env, &off, k, || off.get_or_load(k, load).now_or_never());
        std::hint::black_box(v.unwrap());
    };
    let mut load_on = |i| {
        let k = at(i);
        let v = hit(&env, &on, k, || on.get_or_load(k, load).now_or_never());
        std::hint::black_box(v.unwrap());
    };
    let mut g = c.benchmark_group("l1_features");
    g.throughput(Throughput::Elements(1));
    let labels = [
        "raw_moka_get",
        "get_local_features_off",
        "get_local_features_on",
        "get_or_load_features_off",
        "get_or_load_features_on",
    ];
    let t = rotated(
        &mut g,
        labels.map(BenchmarkId::from_parameter),
        &mut [
            &mut raw_get,
            &mut local_off,
            &mut local_on,
            &mut load_off,
            &mut load_on,
        ],
    );
    if !t[0].is_zero() {
        let r = |k: usize| t[k].as_secs_f64() / t[0].as_secs_f64();
        eprintln!(
            "l1_features: over the same rotations, vs raw moka: get_local off {:.2}x, on {:.2}x; \
             get_or_load off {:.2}x, on {:.2}x",
            r(1),
            r(2),
            r(3),
            r(4)
        );
    }
    report_refills("l1_features");
    g.finish();
}

/// The L1 hit path with and without a recorder bound to the cache's metric handles: every
/// hit bumps an exported counter, and one in 64 records a latency sample.
fn metrics_cost(c: &mut Criterion) {
    let env = env();
    let policy = || NamespacePolicy::new(Duration::from_secs(600)).unbounded_staleness();
    let bare = cache_with(&env, "bench-bare", policy());
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0])
        .unwrap()
        .build_recorder();
    let recorded =
        metrics::with_local_recorder(&recorder, || cache_with(&env, "bench-recorded", policy()));
    let (off, on) = (
        bare.namespace::<str, Quote>("quote").unwrap(),
        recorded.namespace::<str, Quote>("quote").unwrap(),
    );
    let names: Vec<String> = (0..16).map(|i| format!("SYM{i:05}")).collect();
    env.rt.block_on(async {
        for (i, k) in names.iter().enumerate() {
            off.set(k, quote(i)).await.unwrap();
            on.set(k, quote(i)).await.unwrap();
        }
    });
    let at = |i: u64| names[(i % 16) as usize].as_str();
    // A `get` that misses L1 reaches Redis: it needs the runtime's reactor to be polled.
    let _rt = env.rt.enter();
    reset_refills();
    let mut local_off = |i| {
        let k = at(i);
        std::hint::black_box(hit(&env, &off, k, || off.get_local(k)));
    };
    let mut local_on = |i| {
        let k = at(i);
        std::hint::black_box(hit(&env, &on, k, || on.get_local(k)));
    };
    let mut get_off = |i| {
        let k = at(i);
        std::hint::black_box(hit(&env, &off, k, || off.get(k).now_or_never().flatten()));
    };
    let mut get_on = |i| {
        let k = at(i);
        std::hint::black_box(hit(&env, &on, k, || on.get(k).now_or_never().flatten()));
    };
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    let labels = [
        "get_local_no_recorder",
        "get_local_prometheus",
        "get_async_no_recorder",
        "get_async_prometheus",
    ];
    let t = rotated(
        &mut g,
        labels.map(BenchmarkId::from_parameter),
        &mut [&mut local_off, &mut local_on, &mut get_off, &mut get_on],
    );
    if !t[0].is_zero() {
        let r = |a: usize, b: usize| t[a].as_secs_f64() / t[b].as_secs_f64();
        eprintln!(
            "metrics: over the same rotations, with a prometheus recorder / without: \
             get_local {:.2}x, get {:.2}x",
            r(1, 0),
            r(3, 2)
        );
    }
    report_refills("metrics");
    g.finish();
}

/// Which half of a paired measurement a benchmark reports.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Raw,
    Tiered,
}

/// Both halves of every paired iteration of a group, summed: their ratio is measured over the
/// very same iterations, so no drift between two benchmark runs can enter it.
static PAIRED_TOTALS: std::sync::Mutex<(Duration, Duration)> =
    std::sync::Mutex::new((Duration::ZERO, Duration::ZERO));

fn reset_paired_totals() {
    *PAIRED_TOTALS.lock().unwrap() = (Duration::ZERO, Duration::ZERO);
}

fn report_paired_ratio(group: &str) {
    let (raw, tiered) = *PAIRED_TOTALS.lock().unwrap();
    if raw.is_zero() {
        return; // the group was filtered out
    }
    eprintln!(
        "{group}: tiered/raw over the same paired iterations = {:.2}x",
        tiered.as_secs_f64() / raw.as_secs_f64().max(f64::MIN_POSITIVE)
    );
}

/// Runs `iters` pairs of (raw, tiered) operations back to back and returns the time spent in
/// `side`'s half. Loopback latency drifts with CPU placement over seconds; pairing makes both
/// benchmarks of a group see the same conditions, so their ratio means something.
async fn paired<R, T, FR, FT>(iters: u64, side: Side, mut raw: FR, mut tiered: FT) -> Duration
where
    FR: FnMut(u64) -> R,
    FT: FnMut(u64) -> T,
    R: std::future::Future<Output = ()>,
    T: std::future::Future<Output = ()>,
{
    let mut spent = Duration::ZERO;
    for i in 0..iters {
        let t = std::time::Instant::now();
        raw(i).await;
        let r = t.elapsed();
        let t = std::time::Instant::now();
        tiered(i).await;
        let d = t.elapsed();
        spent += if side == Side::Raw { r } else { d };
        let mut totals = PAIRED_TOTALS.lock().unwrap();
        totals.0 += r;
        totals.1 += d;
    }
    spent
}

fn l2_hit(c: &mut Criterion) {
    const KEYS: usize = 10_000;
    let env = env();
    // L1 entries live 1 ms, and a key comes round again only after ~10 000 reads: every read
    // misses L1, asks Redis, decodes, and pays the L1 insert, as a real miss does.
    let cache = cache(&env, 100_000, Some(Duration::from_millis(1)));
    let ns = cache.namespace::<str, Quote>("quote").unwrap();
    let names: Vec<String> = (0..KEYS).map(|i| format!("SYM{i:05}")).collect();
    env.rt.block_on(async {
        for (i, k) in names.iter().enumerate() {
            ns.set(k, quote(i)).await.unwrap();
        }
    });
    let raw = env.rt.block_on(async {
        let client = redis::Client::open(env.url.as_str()).unwrap();
        client.get_connection_manager().await.unwrap()
    });
    let seq = order(KEYS, 1 << 16);
    let raw_get = |i: u64| {
        let key = format!("bench:quote:{}", names[seq[(i as usize * 2) & 0xFFFF]]);
        let mut conn = raw.clone();
        async move {
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            // The payload the cache decodes: skip its 11-byte envelope header and 8-byte expiry.
            let q: Quote = rmp_serde::from_slice(&bytes[19..]).unwrap();
            std::hint::black_box(q);
        }
    };
    let tiered_get = |i: u64| {
        let ns = &ns;
        let key = names[seq[(i as usize * 2 + 1) & 0xFFFF]].as_str();
        async move {
            std::hint::black_box(ns.get(key).await.unwrap());
        }
    };
    let mut g = c.benchmark_group("l2_hit");
    g.throughput(Throughput::Elements(1));
    let before = cache.stats().namespace("quote").copied().unwrap();
    reset_paired_totals();
    for (name, side) in [
        ("raw_get_and_decode", Side::Raw),
        ("tiered_get_l1_miss", Side::Tiered),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&env.rt)
                .iter_custom(|iters| paired(iters, side, raw_get, tiered_get))
        });
    }
    let after = cache.stats().namespace("quote").copied().unwrap();
    report_paired_ratio("l2_hit");
    let (l1, l2) = (
        after.l1_hits - before.l1_hits,
        after.l2_hits - before.l2_hits,
    );
    eprintln!(
        "l2_hit/tiered_get_l1_miss: {:.1}% of reads went to Redis ({l2} of {})",
        100.0 * l2 as f64 / (l1 + l2).max(1) as f64,
        l1 + l2
    );
    g.finish();
}

fn write(c: &mut Criterion) {
    let env = env();
    let cache = cache(&env, 100_000, None);
    let ns = cache.namespace::<str, Quote>("quote").unwrap();
    let raw = env.rt.block_on(async {
        let client = redis::Client::open(env.url.as_str()).unwrap();
        client.get_connection_manager().await.unwrap()
    });
    let raw_write = |i: u64| {
        let mut conn = raw.clone();
        let key = format!("bench:raw:SYM{:05}", i % 1000);
        let payload = rmp_serde::to_vec_named(&quote(i as usize)).unwrap();
        async move {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(payload)
                .arg("PX")
                .arg(600_000)
                .ignore()
                .cmd("PUBLISH")
                .arg("bench:raw-channel")
                .arg(&key)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .unwrap()
        }
    };
    let tiered_write = |i: u64| {
        let ns = &ns;
        async move {
            ns.set(&format!("SYM{:05}", i % 1000), quote(i as usize))
                .await
                .unwrap()
        }
    };
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Elements(1));
    reset_paired_totals();
    for (name, side) in [
        ("raw_multi_set_px_publish", Side::Raw),
        ("tiered_set", Side::Tiered),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&env.rt)
                .iter_custom(|iters| paired(iters, side, raw_write, tiered_write))
        });
    }
    report_paired_ratio("write");
    g.finish();
}

fn get_many(c: &mut Criterion) {
    const KEYS: usize = 10_000;
    const BATCH: usize = 100;
    let env = env();
    let cache = cache(&env, 100_000, Some(Duration::from_millis(1)));
    let ns = cache.namespace::<str, Quote>("quote").unwrap();
    let names: Vec<String> = (0..KEYS).map(|i| format!("SYM{i:05}")).collect();
    env.rt.block_on(async {
        for chunk in names.chunks(500).enumerate() {
            let (c, keys) = chunk;
            let entries = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), quote(c * 500 + i)));
            assert!(ns.batch().set(entries).await.iter().all(Result::is_ok));
        }
    });
    // Pair i reads slot 2i sequentially and slot 2i+1 in one batch: distinct keys each side.
    let slot = |i: u64, side: u64| {
        let start = ((i * 2 + side) as usize * BATCH) % KEYS;
        &names[start..start + BATCH]
    };
    let sequential = |i: u64| {
        let (ns, keys) = (&ns, slot(i, 0));
        async move {
            for k in keys {
                std::hint::black_box(ns.get(k).await.unwrap());
            }
        }
    };
    let batch = |i: u64| {
        let (ns, keys) = (&ns, slot(i, 1));
        async move {
            let out = ns.batch().get(keys.iter().map(String::as_str)).await;
            assert!(out.iter().all(Option::is_some));
            std::hint::black_box(out);
        }
    };
    let mut g = c.benchmark_group("get_many");
    g.throughput(Throughput::Elements(BATCH as u64));
    // A pair takes ~20 ms: 10 samples keep the group within seconds.
    g.sample_size(10);
    let before = cache.stats().namespace("quote").copied().unwrap();
    reset_paired_totals();
    for (name, side) in [
        ("sequential_get_x100", Side::Raw),
        ("get_many_x100", Side::Tiered),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&env.rt)
                .iter_custom(|iters| paired(iters, side, sequential, batch))
        });
    }
    let after = cache.stats().namespace("quote").copied().unwrap();
    let (raw, tiered) = *PAIRED_TOTALS.lock().unwrap();
    if !raw.is_zero() {
        eprintln!(
            "get_many: get_many/sequential gets over the same paired iterations = {:.2}x ({:.1}x faster)",
            tiered.as_secs_f64() / raw.as_secs_f64(),
            raw.as_secs_f64() / tiered.as_secs_f64().max(f64::MIN_POSITIVE)
        );
        let (l1, l2) = (
            after.l1_hits - before.l1_hits,
            after.l2_hits - before.l2_hits,
        );
        eprintln!(
            "get_many: {:.1}% of reads went to Redis ({l2} of {})",
            100.0 * l2 as f64 / (l1 + l2).max(1) as f64,
            l1 + l2
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = l1_hit, l1_features, metrics_cost, l2_hit, write, get_many
}
criterion_main!(benches);
