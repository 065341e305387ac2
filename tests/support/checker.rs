//! The staleness history checker.
//!
//! Nodes read and write a small set of keys while faults are injected. Each key has one writer
//! (so its acknowledged writes are totally ordered) whose values count up. Every acknowledged
//! write is logged (key, value, ack time), and every read that returned a value (node, key,
//! value, start time). A read is stale by Δ if it started Δ after a newer value of its key had
//! been acknowledged. Hot keys are written throughout; cold keys only in the first half, so an
//! invalidation lost near the end is not healed by a later write and shows up as staleness.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiered_cache::testing::{self, Keys};
use tiered_cache::TieredCache;

/// The Redis names of the nodes under test (default prefix, database 0). Straight from the
/// crate's `testing` module: this file is also compiled alone, by `examples/staleness.rs`.
fn default_keys() -> Keys {
    Keys::new(tiered_cache::DEFAULT_PREFIX, 0)
}

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Workload {
    pub duration: Duration,
    pub hot_keys: usize,
    pub cold_keys: usize,
    /// Pause between one writer's writes.
    pub write_every: Duration,
    /// Pause between one reader's reads.
    pub read_every: Duration,
    /// Writes whose invalidation is lost: every this often, a rogue client (this URL) writes
    /// one of `rogue_keys` keys exactly as the library would (a version drawn, the value
    /// stored) but publishes nothing. Only the sequence check can catch them.
    pub rogue: Option<(String, Duration)>,
    pub rogue_keys: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(3),
            hot_keys: 4,
            cold_keys: 12,
            write_every: Duration::from_millis(2),
            read_every: Duration::from_micros(200),
            rogue: None,
            rogue_keys: 4,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub writes: usize,
    pub failed_writes: usize,
    pub reads: usize,
    pub stale_reads: usize,
    pub max_staleness: Duration,
    pub p999_staleness: Duration,
    /// Reads of cold keys after their last write.
    pub cold_reads_after_writes_stopped: usize,
    /// Share of reads L1 answered: a run where L1 never served proves nothing.
    pub l1_share: f64,
    /// Writes made without their invalidation being published.
    pub rogue_writes: usize,
    /// The stalest read, for a failure message: its node, key, value, start, and the newer
    /// value acknowledged before it (times in ms from the run's start).
    pub worst: Option<String>,
}

impl Report {
    /// One row of the table in docs/coherence.md (Coherence under faults).
    pub fn row(&self, scenario: &str) -> String {
        format!(
            "| {scenario} | {} ({:.0} % from L1) | {} ({} failed, {} unannounced) | {} | {:.1} ms | {:.1} ms |",
            self.reads,
            self.l1_share * 100.0,
            self.writes,
            self.failed_writes,
            self.rogue_writes,
            self.stale_reads,
            self.max_staleness.as_secs_f64() * 1e3,
            self.p999_staleness.as_secs_f64() * 1e3,
        )
    }
}

struct Ack {
    value: u64,
    at: Instant,
}

struct Read {
    node: usize,
    key: usize,
    value: u64,
    started: Instant,
}

fn key_name(k: usize) -> String {
    format!("chk{k}")
}

/// Runs the workload on `nodes` (namespace `ns`, values `u64`) and analyses the history.
pub async fn run(nodes: &[TieredCache], ns: &str, w: &Workload) -> Report {
    let writer_keys = w.hot_keys + w.cold_keys;
    let rogue_keys = if w.rogue.is_some() { w.rogue_keys } else { 0 };
    let keys = writer_keys + rogue_keys;
    let l1_before: u64 = nodes
        .iter()
        .map(|n| n.stats().namespace(ns).unwrap().l1_hits)
        .sum();
    let acks: Arc<Vec<Mutex<Vec<Ack>>>> =
        Arc::new((0..keys).map(|_| Mutex::new(Vec::new())).collect());
    let start = Instant::now();
    let cold_until = start + w.duration / 2;
    let end = start + w.duration;
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let handle = node.namespace::<str, u64>(ns).unwrap();
        // Writer: this node owns keys i, i + n, i + 2n, ...
        let mine: Vec<usize> = (i..writer_keys).step_by(nodes.len()).collect();
        let (h, acks, w2) = (handle.clone(), acks.clone(), w.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = vec![1u64; keys];
            let mut failed = 0;
            let mut turn = 0usize;
            while Instant::now() < end {
                let k = mine[turn % mine.len()];
                turn += 1;
                if k >= w2.hot_keys && Instant::now() >= cold_until {
                    continue;
                }
                let value = next[k];
                next[k] += 1;
                match h.set(&key_name(k), value).await {
                    Ok(()) => acks[k].lock().unwrap().push(Ack {
                        value,
                        at: Instant::now(),
                    }),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(w2.write_every).await;
            }
            (Vec::new(), failed)
        }));
        // Reader.
        let (h, w2) = (handle, w.clone());
        let seed = 0x9E37_79B9 + i as u64;
        tasks.push(tokio::spawn(async move {
            let mut reads = Vec::new();
            let mut x = seed;
            while Instant::now() < end {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = (x % keys as u64) as usize;
                let started = Instant::now();
                if let Some(v) = h.get(&key_name(key)).await {
                    reads.push(Read {
                        node: i,
                        key,
                        value: *v,
                        started,
                    });
                }
                tokio::time::sleep(w2.read_every).await;
            }
            (reads, 0)
        }));
    }
    if let Some((url, every)) = w.rogue.clone() {
        let (acks, prefix) = (acks.clone(), default_keys().value_key(ns, ""));
        tasks.push(tokio::spawn(async move {
            rogue_writer(&url, &prefix, writer_keys, rogue_keys, every, end, &acks).await;
            (Vec::new(), 0)
        }));
    }
    let mut reads = Vec::new();
    let mut failed_writes = 0;
    for t in tasks {
        let (r, f) = t.await.unwrap();
        reads.extend(r);
        failed_writes += f;
    }
    let acks: Vec<Vec<Ack>> = Arc::try_unwrap(acks)
        .ok()
        .unwrap()
        .into_iter()
        .map(|m| m.into_inner().unwrap())
        .collect();
    let mut report = analyse(&acks, &reads, w, (start, cold_until), failed_writes);
    let l1_after: u64 = nodes
        .iter()
        .map(|n| n.stats().namespace(ns).unwrap().l1_hits)
        .sum();
    report.l1_share = (l1_after - l1_before) as f64 / report.reads.max(1) as f64;
    report.rogue_writes = acks[writer_keys..].iter().map(Vec::len).sum();
    report.writes -= report.rogue_writes;
    report
}

/// What the library's write script does, minus the PUBLISH: the value changes, the version
/// is drawn, and nobody is told.
const ROGUE_WRITE: &str = r"
local v = redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
redis.call('SET', KEYS[2], ARGV[1] .. struct.pack('>I8', v) .. ARGV[2], 'PX', 90000)
return v
";

async fn rogue_writer(
    url: &str,
    prefix: &str,
    first: usize,
    count: usize,
    every: Duration,
    end: Instant,
    acks: &[Mutex<Vec<Ack>>],
) {
    let mut conn = super::client(url)
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let script = redis::Script::new(ROGUE_WRITE);
    let mut value = 1u64;
    let mut turn = 0;
    while Instant::now() < end {
        tokio::time::sleep(every).await;
        let k = first + turn % count;
        turn += 1;
        let payload = rmp_serde::to_vec_named(&value).unwrap();
        let ok: redis::RedisResult<u64> = script
            .key(default_keys().meta_key())
            .key(format!("{prefix}{}", key_name(k)))
            .arg(&testing::envelope_head(testing::ENVELOPE_FORMAT, 0)[..])
            .arg(payload)
            .arg(testing::VERSION_FIELD)
            .invoke_async(&mut conn)
            .await;
        if ok.is_ok() {
            acks[k].lock().unwrap().push(Ack {
                value,
                at: Instant::now(),
            });
        }
        value += 1;
    }
}

fn analyse(
    acks: &[Vec<Ack>],
    reads: &[Read],
    w: &Workload,
    (start, cold_until): (Instant, Instant),
    failed_writes: usize,
) -> Report {
    let mut staleness: Vec<Duration> = Vec::with_capacity(reads.len());
    let mut cold_after = 0;
    let mut worst: Option<(Duration, String)> = None;
    let ms = |t: Instant| (t - start).as_secs_f64() * 1e3;
    for r in reads {
        let log = &acks[r.key];
        // The first acknowledged value newer than what was read: if it was acknowledged
        // before the read started, the read was stale by the difference.
        let newer = log.iter().find(|a| a.value > r.value);
        let s = match newer {
            Some(a) if a.at < r.started => r.started - a.at,
            _ => Duration::ZERO,
        };
        if let Some(a) =
            newer.filter(|_| !s.is_zero() && worst.as_ref().is_none_or(|(d, _)| s > *d))
        {
            let last = log.iter().rfind(|a| a.value <= r.value).map(|a| ms(a.at));
            let text = format!(
                "node {} read chk{} = {} at {:.1} ms; {} was acknowledged at {:.1} ms ({} at {:?} ms)",
                r.node, r.key, r.value, ms(r.started), a.value, ms(a.at), r.value, last
            );
            worst = Some((s, text));
        }
        staleness.push(s);
        if (w.hot_keys..w.hot_keys + w.cold_keys).contains(&r.key) && r.started > cold_until {
            cold_after += 1;
        }
    }
    staleness.sort_unstable();
    let stale_reads = staleness.iter().filter(|s| !s.is_zero()).count();
    let pick = |q: f64| {
        staleness
            .get(((staleness.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Report {
        writes: acks.iter().map(Vec::len).sum(),
        failed_writes,
        reads: reads.len(),
        stale_reads,
        max_staleness: staleness.last().copied().unwrap_or_default(),
        p999_staleness: pick(0.999),
        cold_reads_after_writes_stopped: cold_after,
        l1_share: 0.0,
        rogue_writes: 0,
        worst: worst.map(|(_, text)| text),
    }
}
