//! Redis behind Sentinel, on loopback: one primary, one replica, three `redis-server
//! --sentinel` processes. Nodes reach Redis through a `redis+sentinel://` URL and follow a
//! manual failover (`SENTINEL FAILOVER`) and the primary's SIGKILL: writes succeed again on
//! the new primary within a measured bound, another node reads the newest value within the
//! staleness bound, and a node whose connections still point at the demoted primary (which
//! answers READONLY) moves by itself.

mod support;

#[path = "support/checker.rs"]
mod checker;
// The checker's connections are made as the other tests' are.
use support::client;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{eventually, RedisServer, PATIENCE};
use tiered_cache::{NamespacePolicy, TieredCache};

const MASTER: &str = "mymaster";
/// How long the Sentinels wait before calling a silent primary down.
const DOWN_AFTER_MS: u64 = 400;
/// The longest a failover may take to be usable by the nodes: measured here 1.3 s (manual)
/// and 1.4 s (SIGKILL, with a 400 ms down-after), printed by each test; Sentinel's own
/// detection and election, then the nodes' switch. Without following `+switch-master` the
/// manual failover takes 11 s (until Sentinel demotes the old primary), which fails this.
const FAILOVER_BOUND: Duration = Duration::from_secs(6);
const BOUND: Duration = Duration::from_millis(250);

struct Sentinel {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sentinel(master_port: u16) -> Sentinel {
    let port = support::free_port();
    let dir = std::env::temp_dir().join(format!("tiered-sentinel-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER} 3000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel (the test command installs redis-server)");
    Sentinel { port, child, dir }
}

fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut c = client.get_connection_with_timeout(Duration::from_millis(500))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c)
}

/// A primary, a replica and three Sentinels that know both and each other.
struct Setup {
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

impl Setup {
    async fn start() -> Self {
        let primary = RedisServer::start();
        let replica = RedisServer::start();
        let p = primary.port().to_string();
        let _: () = query(replica.port(), &["REPLICAOF", "127.0.0.1", &p]).unwrap();
        let sentinels: Vec<Sentinel> = (0..3).map(|_| sentinel(primary.port())).collect();
        let setup = Self {
            servers: vec![primary, replica],
            sentinels,
        };
        eventually(
            "the Sentinels know the replica and each other",
            PATIENCE,
            || async {
                setup.sentinels.iter().all(|s| {
                    let replicas: Vec<redis::Value> =
                        query(s.port, &["SENTINEL", "REPLICAS", MASTER]).unwrap_or_default();
                    let peers: Vec<redis::Value> =
                        query(s.port, &["SENTINEL", "SENTINELS", MASTER]).unwrap_or_default();
                    replicas.len() == 1 && peers.len() == 2
                })
            },
        )
        .await;
        setup
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = (self.sentinels.iter())
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", nodes.join(","))
    }

    /// The port the Sentinels name as primary now.
    fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let addr: Vec<String> =
                query(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]).ok()?;
            addr.get(1)?.parse().ok()
        })
    }

    fn node(&self) -> TieredCache {
        TieredCache::builder()
            .redis_url(self.url())
            .namespace(
                "rate",
                NamespacePolicy::new(Duration::from_secs(60)).staleness_bound(BOUND),
            )
            .heartbeat(Duration::from_millis(50))
            .l2_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300))
            .breaker_cooldown(Duration::from_millis(100))
            .outbox_retry(Duration::from_millis(100))
            .subscriber_backoff(Duration::from_millis(100))
            .strict_writes(true)
            .build()
            .unwrap()
    }
}

/// `key`'s value as the server at `port` holds it, read by a fresh node straight from it.
async fn held_by(port: u16, key: &str) -> Option<u64> {
    let node = TieredCache::builder()
        .redis_url(format!("redis://127.0.0.1:{port}"))
        .namespace("rate", NamespacePolicy::new(Duration::from_secs(60)))
        .build()
        .unwrap();
    let value = node.namespace::<str, u64>("rate").unwrap().get(key).await;
    value.map(|v| *v)
}

/// Writes `k` on `a` until one lands on the primary at `port`; returns how long it took.
async fn writes_resume(a: &TieredCache, port: u16, from: Instant, value: u64) -> Duration {
    let ra = a.namespace::<str, u64>("rate").unwrap();
    loop {
        assert!(
            from.elapsed() < FAILOVER_BOUND,
            "writes did not resume on the new primary within {FAILOVER_BOUND:?}"
        );
        if ra.set("k", value).await.is_ok() && held_by(port, "k").await == Some(value) {
            return from.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the move: a write on `a` is read by `b` within the staleness bound, and both name
/// the new primary.
async fn coherent_after(a: &TieredCache, b: &TieredCache, port: u16) {
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    eventually("b listens on the new primary", PATIENCE, || async {
        b.health()
            .await
            .redis
            .contains(&format!("127.0.0.1:{port}"))
            && b.is_subscribed()
    })
    .await;
    // b caches the current value, then a overwrites it: b must not serve the old one past
    // the bound.
    ra.set("c", 1).await.unwrap();
    // Redis's copy is trusted once the grace after the failover has passed: poll.
    eventually("b reads the first write", PATIENCE, || async {
        rb.get("c").await.as_deref() == Some(&1)
    })
    .await;
    ra.set("c", 2).await.unwrap();
    let acked = Instant::now();
    loop {
        match rb.get("c").await.as_deref() {
            Some(2) => break,
            seen => assert!(
                acked.elapsed() < BOUND,
                "b still read {seen:?} {:?} after the write",
                acked.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_manual_failover_and_a_demoted_primary_is_left() {
    let setup = Setup::start().await;
    let (a, b, idle) = (setup.node(), setup.node(), setup.node());
    for n in [&a, &b, &idle] {
        n.ready(PATIENCE).await.unwrap();
    }
    let old = setup.primary_port().unwrap();
    // `idle` has connections to the primary, and makes no call during the failover.
    let ri = idle.namespace::<str, u64>("rate").unwrap();
    ri.set("idle", 1).await.unwrap();
    a.namespace::<str, u64>("rate")
        .unwrap()
        .set("k", 1)
        .await
        .unwrap();

    let started = Instant::now();
    let _: () = query(setup.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]).unwrap();
    eventually("the Sentinels name the replica", FAILOVER_BOUND, || async {
        setup.primary_port().is_some_and(|p| p != old)
    })
    .await;
    let new = setup.primary_port().unwrap();
    let took = writes_resume(&a, new, started, 2).await;
    println!("manual failover: writes resumed on the new primary {took:?} after SENTINEL FAILOVER");
    coherent_after(&a, &b, new).await;

    // The demoted primary answers READONLY to `idle`'s open connections: it moves.
    let t = Instant::now();
    ri.set("idle", 2).await.unwrap();
    println!(
        "a node left on the demoted primary wrote again after {:?}",
        t.elapsed()
    );
    assert_eq!(held_by(new, "idle").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_the_replica_promoted_after_the_primary_is_killed() {
    let mut setup = Setup::start().await;
    let (a, b) = (setup.node(), setup.node());
    for n in [&a, &b] {
        n.ready(PATIENCE).await.unwrap();
    }
    let old = setup.primary_port().unwrap();
    a.namespace::<str, u64>("rate")
        .unwrap()
        .set("k", 1)
        .await
        .unwrap();
    // The write reached the replica before the kill: nothing is lost to the promotion.
    eventually("the replica has the write", PATIENCE, || async {
        let raw: Option<Vec<u8>> = query(
            setup.servers[1].port(),
            &["GET", &support::value_key("rate", "k")],
        )
        .unwrap_or(None);
        raw.is_some()
    })
    .await;

    let started = Instant::now();
    setup.servers[0].kill();
    // While no primary is reachable, b's bounded L1 is not trusted.
    eventually("b stops trusting L1", PATIENCE, || async {
        b.health().await.bypassing == ["rate"]
    })
    .await;
    eventually(
        "the Sentinels promote the replica",
        FAILOVER_BOUND,
        || async { setup.primary_port().is_some_and(|p| p != old) },
    )
    .await;
    let new = setup.primary_port().unwrap();
    let took = writes_resume(&a, new, started, 2).await;
    println!("primary SIGKILLed: writes resumed on the promoted replica {took:?} after the kill");
    coherent_after(&a, &b, new).await;
}

/// The staleness checker's workload on three nodes (250 ms bound, writes queued while no
/// primary is reachable) for 8 s,
/// with `fault` 1 s in: no read may be staler than the bound, and every node ends on the new
/// primary.
async fn staleness_through(scenario: &str, kill: bool) {
    let mut setup = Setup::start().await;
    let nodes: Vec<TieredCache> = (0..3).map(|_| support::strict_node(&setup.url())).collect();
    for n in &nodes {
        n.ready(PATIENCE).await.unwrap();
    }
    let old = setup.primary_port().unwrap();
    let workload = checker::Workload {
        duration: Duration::from_secs(8),
        ..Default::default()
    };
    let sentinel = setup.sentinels[0].port;
    let fault = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match kill {
            true => setup.servers[0].kill(),
            false => query(sentinel, &["SENTINEL", "FAILOVER", MASTER]).unwrap(),
        }
    };
    let (report, ()) = tokio::join!(checker::run(&nodes, "rate", &workload), fault);
    eprintln!("{}", report.row(scenario));
    eprintln!("  {report:?}");
    eventually(
        "the Sentinels name a new primary",
        FAILOVER_BOUND,
        || async { setup.primary_port().is_some_and(|p| p != old) },
    )
    .await;
    let new = setup.primary_port().unwrap();
    for n in &nodes {
        let health = n.health().await;
        assert!(
            health.redis.contains(&format!(":{new})")),
            "{}",
            health.redis
        );
    }
    assert!(report.cold_reads_after_writes_stopped > 0, "{report:?}");
    assert!(
        report.max_staleness <= BOUND,
        "{scenario}: a read was {:?} stale (bound {BOUND:?}): {report:?}",
        report.max_staleness
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_within_the_staleness_bound_through_a_manual_failover() {
    staleness_through("Sentinel: `SENTINEL FAILOVER` at 1 s of 8 s", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_within_the_staleness_bound_when_the_primary_is_killed() {
    staleness_through("Sentinel: primary SIGKILLed at 1 s of 8 s", true).await;
}
