//! The staleness history checker, for runs longer than the tests' 3 s: nodes read and write
//! while faults are injected, and every read is checked against every acknowledged write
//! (see `tests/support/checker.rs`). Prints the table rows of docs/coherence.md.
//!
//! ```text
//! cargo run --release --example staleness                 # 30 s per scenario
//! CHECK_SECS=300 CHECK_NODES=5 cargo run --release --example staleness
//! ```
//!
//! Uses a private `redis-server` (it restarts and kills nothing it does not own).

#[path = "../tests/support/checker.rs"]
mod checker;
#[path = "../tests/support/server.rs"]
mod server;
// The checker's connections are made as the tests make them.
use server::client;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiered_cache::{NamespacePolicy, TieredCache};

const BOUND: Duration = Duration::from_millis(250);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn build(url: &str) -> TieredCache {
    TieredCache::builder()
        .redis_url(url)
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).staleness_bound(BOUND),
        )
        .heartbeat(Duration::from_millis(50))
        .build()
        .expect("valid configuration")
}

/// A Redis command sent on a connection of its own, as a fault.
fn redis_cmd(url: &str, args: &[&str]) {
    if let Ok(mut c) = redis::Client::open(url).and_then(|c| c.get_connection()) {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::RedisResult<redis::Value> = cmd.query(&mut c);
    }
}

async fn scenario(
    name: &str,
    url: &str,
    nodes: usize,
    workload: &checker::Workload,
    fault: Option<(Duration, Vec<&'static str>)>,
) {
    let caches: Vec<_> = (0..nodes).map(|_| build(url)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !caches.iter().all(|c| c.is_subscribed()) {
        assert!(Instant::now() < deadline, "nodes could not subscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let injector = fault.map(|(every, args)| {
        let (stop, url) = (stop.clone(), url.to_string());
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                std::thread::sleep(every);
                redis_cmd(&url, &args);
            }
        })
    });
    let report = checker::run(&caches, "rate", workload).await;
    stop.store(true, SeqCst);
    if let Some(t) = injector {
        t.join().unwrap();
    }
    let gaps: u64 = caches.iter().map(|c| c.stats().bus_gaps).sum();
    let subs: u64 = caches.iter().map(|c| c.stats().bus_subscriptions).sum();
    println!("{}", report.row(name));
    eprintln!("    gaps detected {gaps}, subscriptions {subs}, {report:?}");
    if report.max_staleness > BOUND {
        eprintln!("    OVER THE BOUND ({BOUND:?})");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env("CHECK_SECS", 30);
    let nodes = env("CHECK_NODES", 3) as usize;
    let workload = checker::Workload {
        duration: Duration::from_secs(secs),
        ..Default::default()
    };
    let server = server::RedisServer::start();
    let url = server.url();
    println!("{nodes} nodes, {secs} s per scenario, staleness bound {BOUND:?}\n");
    println!("| scenario | reads | writes | stale reads | max Δ | p99.9 Δ |");
    println!("|---|---|---|---|---|---|");
    scenario("no faults", &url, nodes, &workload, None).await;
    let lossy = checker::Workload {
        rogue: Some((url.clone(), Duration::from_millis(150))),
        ..workload.clone()
    };
    scenario(
        "writes whose invalidation is lost, every 150 ms",
        &url,
        nodes,
        &lossy,
        None,
    )
    .await;
    scenario(
        "`CLIENT KILL TYPE pubsub` every 200 ms",
        &url,
        nodes,
        &workload,
        Some((
            Duration::from_millis(200),
            vec!["CLIENT", "KILL", "TYPE", "pubsub"],
        )),
    )
    .await;
}
