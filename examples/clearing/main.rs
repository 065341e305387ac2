//! The clearing and netting engine's caches (design document "DelTran MVP - Redis Caching
//! Strategy") on `tiered-cache`: three engine instances in one process share one Redis; the
//! clearing windows open and are warmed in one batch, obligations arrive and drop their
//! window's netting on every node, messages are parsed once for the fleet, and a window runs
//! to settlement, which drops every cache of it. Prints hit ratios per tier against the
//! document's 95 / 85 / 70 % targets and read latencies against its "With Cache" column.
//!
//! Redis: where the cache's `REDIS_*` variables say (`REDIS_URL`, or `REDIS_HOST`...), if set;
//! else a private `redis-server` started for the run; else L1-only (each node alone), with a
//! warning.
//!
//! ```text
//! cargo run --release --example clearing
//! ```

#[path = "../common/redis.rs"]
mod redis_discovery;
mod scenario;

use redis_discovery::RedisMode;
use scenario::workload::{mean, ms, p99, pct};
use scenario::{ClearingNode, ClearingStore, Plan, Reads, NAMESPACES, TARGETS};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let mode = RedisMode::discover();
    // Without Redis every node warns that it cannot reach it, over and over: errors only then.
    let quiet = if mode.is_none() { "error" } else { "warn" };
    scenario::workload::init_logging(quiet);
    let url = mode.url();
    let plan = Plan::default();
    let store = ClearingStore::new(scenario::BackendCosts::scaled(plan.backend_divisor));
    scenario::seed(&store, &plan);

    let nodes: Vec<ClearingNode> = (0..plan.nodes)
        .map(|_| {
            ClearingNode::new(
                scenario::build_cache(url.as_deref(), mode.staleness_bound()),
                store.clone(),
            )
        })
        .collect();
    if !mode.is_none() {
        let subscribed = scenario::workload::wait_until(Duration::from_secs(10), || {
            nodes.iter().all(|n| n.cache.is_subscribed())
        })
        .await;
        assert!(subscribed, "nodes could not subscribe to {mode}");
        // A fresh start: forget what an earlier run left under these keys.
        let n = &nodes[0];
        let _ = n.windows.invalidate_namespace().await;
        let _ = n.bilateral.invalidate_namespace().await;
        let _ = n.multilateral.invalidate_namespace().await;
        let _ = n.messages.invalidate_namespace().await;
    }
    let costs = store.costs;
    println!(
        "{} clearing engine nodes, {} reads each; {} regions, {} banks, {} currencies",
        plan.nodes,
        plan.ops_per_node,
        scenario::REGIONS.len(),
        scenario::BANKS.len(),
        scenario::CURRENCIES.len()
    );
    println!(
        "backend costs (the document's \"Without Cache\" column / {}): window query {:.1} ms, netting pass {:.1} ms, ISO 20022 parse {:.1} ms\n",
        plan.backend_divisor,
        ms(costs.window_query),
        ms(costs.netting_query),
        ms(costs.iso_parse)
    );

    let out = scenario::run(&nodes, plan, !mode.is_none()).await;

    for (window, w) in &out.warmups {
        println!(
            "warm-up of {window}: {} bilateral + {} multilateral positions, {} + {} netting pass(es), {} failed",
            w.bilateral_keys, w.multilateral_keys, w.bilateral_passes, w.multilateral_passes, w.failed
        );
    }
    for (window, keys) in &out.settled {
        println!("settled {window}: one tag invalidation dropped {keys} keys across every namespace, on every node");
    }
    println!(
        "{} obligation events (each: the window's netting dropped on every node by tag, no KEYS), {} window status changes, {} write errors\n",
        out.obligation_events, out.status_changes, out.write_errors
    );

    println!(
        "{:<17} {:>6} {:>6} {:>6} {:>7} {:>6} {:>7} | {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8}",
        "namespace",
        "reads",
        "L1 %",
        "L2 %",
        "load %",
        "hit %",
        "target",
        "mean ms",
        "p99 ms",
        "doc ms",
        "L1 µs",
        "L2 µs",
        "load ms"
    );
    let mut all = Reads::default();
    for ns in NAMESPACES {
        let r = out.reads.get(ns).cloned().unwrap_or_default();
        all.merge(&r);
        print_row(ns, &r);
    }
    print_row("all", &all);
    println!("(hit %: answered by L1 or Redis; doc ms: the document's \"With Cache\" latency; L1 µs, L2 µs, load ms: mean latency of the reads each tier answered)\n");

    let c = &store.calls;
    println!(
        "backend calls: {} window queries, {} bilateral passes ({} positions), {} multilateral passes ({} positions), {} parses",
        c.window_queries.load(Relaxed),
        c.bilateral_passes.load(Relaxed),
        c.bilateral_rows.load(Relaxed),
        c.multilateral_passes.load(Relaxed),
        c.multilateral_rows.load(Relaxed),
        c.parses.load(Relaxed)
    );
    println!("run took {:.1} s", out.elapsed.as_secs_f64());
    if !mode.is_none() {
        println!(
            "after the run: {} node/key reads disagree with the database (checked {:.1} ms after the last write)",
            out.disagreements,
            ms(out.converged_after)
        );
        if out.disagreements > 0 {
            std::process::exit(1);
        }
    }
}

fn print_row(ns: &str, r: &Reads) {
    let total = r.total();
    let target = TARGETS.iter().find(|(n, _)| *n == ns).map(|(_, t)| *t);
    let hit = pct(r.l1.len() + r.l2.len(), total);
    let all = r.all();
    let (doc, verdict) = match target {
        Some(t) => (
            format!("{:.0}", scenario::doc_costs(ns).1),
            format!("{:>5.0}%{}", t, if hit >= t { "✓" } else { "✗" }),
        ),
        None => ("-".into(), "-".into()),
    };
    println!(
        "{:<17} {:>6} {:>6.1} {:>6.1} {:>7.1} {:>6.1} {:>7} | {:>9.3} {:>9.3} {:>9} | {:>8.1} {:>8.1} {:>8.2}",
        ns,
        total,
        pct(r.l1.len(), total),
        pct(r.l2.len(), total),
        pct(r.loader.len(), total),
        hit,
        verdict,
        ms(mean(&all)),
        ms(p99(&all)),
        doc,
        mean(&r.l1).as_secs_f64() * 1e6,
        mean(&r.l2).as_secs_f64() * 1e6,
        ms(mean(&r.loader)),
    );
}
