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
use tiered_cache::TieredCache;

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
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(3),
            hot_keys: 4,
            cold_keys: 12,
            write_every: Duration::from_millis(2),
            read_every: Duration::from_micros(200),
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
    /// Reads of cold keys after their last write, and how many of those were stale.
    pub cold_reads_after_writes_stopped: usize,
}

impl Report {
    /// One row of the README's table.
    pub fn row(&self, scenario: &str) -> String {
        format!(
            "| {scenario} | {} | {} ({} failed) | {} | {:.1} ms | {:.1} ms |",
            self.reads,
            self.writes,
            self.failed_writes,
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
    key: usize,
    value: u64,
    started: Instant,
}

fn key_name(k: usize) -> String {
    format!("chk{k}")
}

/// Runs the workload on `nodes` (namespace `ns`, values `u64`) and analyses the history.
pub async fn run(nodes: &[TieredCache], ns: &str, w: &Workload) -> Report {
    let keys = w.hot_keys + w.cold_keys;
    let acks: Arc<Vec<Mutex<Vec<Ack>>>> =
        Arc::new((0..keys).map(|_| Mutex::new(Vec::new())).collect());
    let start = Instant::now();
    let cold_until = start + w.duration / 2;
    let end = start + w.duration;
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let handle = node.namespace::<str, u64>(ns).unwrap();
        // Writer: this node owns keys i, i + n, i + 2n, ...
        let mine: Vec<usize> = (i..keys).step_by(nodes.len()).collect();
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
    analyse(&acks, &reads, w, cold_until, failed_writes)
}

fn analyse(
    acks: &[Vec<Ack>],
    reads: &[Read],
    w: &Workload,
    cold_until: Instant,
    failed_writes: usize,
) -> Report {
    let mut staleness: Vec<Duration> = Vec::with_capacity(reads.len());
    let mut cold_after = 0;
    for r in reads {
        let log = &acks[r.key];
        // The first acknowledged value newer than what was read: if it was acknowledged
        // before the read started, the read was stale by the difference.
        let newer = log.iter().find(|a| a.value > r.value);
        let s = match newer {
            Some(a) if a.at < r.started => r.started - a.at,
            _ => Duration::ZERO,
        };
        staleness.push(s);
        if r.key >= w.hot_keys && r.started > cold_until {
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
    }
}
