//! Faults injected between cache nodes and a real redis-server: a fault-injecting proxy
//! (half-open links, stalled readers, cut connections) and the server's own levers (SIGKILL,
//! output-buffer limits). Each scenario is bounded in time and asserts its pass criterion.

mod support;

use futures_util::StreamExt;
use std::time::{Duration, Instant};
use support::{
    await_applied, eventually, keys, wire, Fault, FaultProxy, RedisServer, Target, PATIENCE,
};
use tiered_cache::{EntryOptions, NamespacePolicy, TieredCache};

use support::BOUND;
/// Slack for a loaded 2-core machine on top of a bound the code promises; a functional bound,
/// not a speed claim.
const SLACK: Duration = Duration::from_millis(500);

fn build(url: &str) -> TieredCache {
    support::strict_node(url)
}

async fn subscribed(c: &TieredCache) {
    let c2 = c.clone();
    eventually("subscribed", PATIENCE, || {
        let c = c2.clone();
        async move { c.is_subscribed() }
    })
    .await;
}

/// Whether any namespace bypasses L1, read without touching Redis.
async fn bypassing(c: &TieredCache) -> bool {
    c.stats().namespaces.iter().any(|(_, s)| s.l1_bypassed)
}

/// The subscriber's link dies silently (no FIN): the node stops trusting L1 within the bound,
/// serves fresh values from Redis meanwhile, and recovers when the link heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_subscriber_link_degrades_within_the_bound_and_recovers() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let a = build(&server.url());
    let b = build(&proxy.url());
    subscribed(&a).await;
    subscribed(&b).await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    ra.set("k", 1).await.unwrap();
    await_applied(&b, "rate", 1).await;
    // Polled: a heartbeat that timed out on a loaded machine is a stall, after which Redis's
    // copy is skipped for a grace.
    eventually("b caches k", PATIENCE, || async {
        rb.get("k").await.map(|v| *v) == Some(1) && rb.get_local("k").is_some()
    })
    .await;

    proxy.set(Fault::Blackhole, Target::Subscriber);
    let cut = Instant::now();
    ra.set("k", 2).await.unwrap(); // b never hears of this
    eventually("b bypasses L1", PATIENCE, || bypassing(&b)).await;
    let detected = cut.elapsed();
    assert!(
        detected <= BOUND + SLACK,
        "bypass after {detected:?}, bound {BOUND:?}"
    );
    // Meanwhile b answers from Redis, never from its stale copy.
    assert_eq!(rb.get("k").await.map(|v| *v), Some(2));
    assert_eq!(rb.get_local("k"), None);

    proxy.heal();
    let healed = Instant::now();
    eventually("b resubscribed and trusts L1 again", PATIENCE, || async {
        b.is_subscribed() && !bypassing(&b).await
    })
    .await;
    eprintln!(
        "FIGURE | half-open subscriber link | L1 bypassed {:.0} ms after the link died | trusted again {:.0} ms after it healed |",
        detected.as_secs_f64() * 1e3,
        healed.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(rb.get("k").await.map(|v| *v), Some(2));
    ra.set("k", 3).await.unwrap();
    eventually("b follows writes again", PATIENCE, || async {
        rb.get("k").await.map(|v| *v) == Some(3)
    })
    .await;
}

/// The writer's data connection is cut after the write script ran but before its reply came
/// back: the write and its broadcast happened together, so every node converges anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_between_write_and_reply_leaves_every_node_converged() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    // The cut takes the first reply on the writer's data connection, so the strict `set` must
    // be the only request there: its heartbeat, which runs over that connection, sends once at
    // start (awaited below) and not again within this test. The bound must be at least 2.5
    // heartbeats, so `rate` is unbounded here; the claim (every node converges, the writer
    // drops its copy) is about the write path, not about the bound, and an L1 that is always
    // trusted makes "the writer dropped its copy" a stricter check.
    let mut bus = support::client(&server.url())
        .get_async_pubsub()
        .await
        .unwrap();
    bus.subscribe(keys::channel()).await.unwrap();
    let writer = TieredCache::builder()
        .redis_url(proxy.url())
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness(),
        )
        .heartbeat(Duration::from_secs(600))
        .l2_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(300))
        .breaker_cooldown(Duration::from_millis(100))
        .outbox_retry(Duration::from_millis(100))
        .subscriber_backoff(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut messages = bus.into_on_message();
    let origin = writer.node_id();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = messages.next().await.expect("listener connection closed");
            let bytes = m.get_payload_bytes();
            if wire::is_heartbeat(bytes) && wire::decode(bytes).is_some_and(|m| m.origin == origin)
            {
                return;
            }
        }
    })
    .await
    .expect("the writer's start-up heartbeat");
    drop(messages);
    let others = [build(&server.url()), build(&server.url())];
    subscribed(&writer).await;
    for o in &others {
        subscribed(o).await;
    }
    let w = writer.namespace::<str, u64>("rate").unwrap();
    let rs: Vec<_> = others
        .iter()
        .map(|o| o.namespace::<str, u64>("rate").unwrap())
        .collect();
    w.set("k", 1).await.unwrap();
    for (o, r) in others.iter().zip(&rs) {
        await_applied(o, "rate", 1).await;
        assert_eq!(r.get("k").await.map(|v| *v), Some(1));
    }

    proxy.set(Fault::CutAfter(0), Target::Data);
    let e = w
        .with(EntryOptions::new().strict(true))
        .unwrap()
        .set("k", 2)
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    proxy.heal();
    // The script ran: Redis has 2, the others were told, the writer dropped its copy.
    assert_eq!(support::meta_version(&server), 2);
    for (i, r) in rs.iter().enumerate() {
        eventually(&format!("node {i} converges"), PATIENCE, || async {
            r.get("k").await.map(|v| *v) == Some(2)
        })
        .await;
    }
    assert_ne!(w.get_local("k").map(|v| *v), Some(1));
    eventually("writer converges", PATIENCE, || async {
        w.get("k").await.map(|v| *v) == Some(2)
    })
    .await;
}

/// A subscriber that stops reading is disconnected by Redis once its output buffer passes
/// the pub/sub limit; everything published meanwhile is lost to it. It must notice, stop
/// trusting L1, and come back clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_forced_off_by_the_output_buffer_limit_loses_nothing_silently() {
    let server = RedisServer::start();
    server.cmd::<()>(&[
        b"CONFIG",
        b"SET",
        b"client-output-buffer-limit",
        b"pubsub 64kb 0 0",
    ]);
    let proxy = FaultProxy::start(server.port()).await;
    let a = build(&server.url());
    // A long L2 timeout: its own PING must not give up on the link before Redis does.
    let b = TieredCache::builder()
        .redis_url(proxy.url())
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).staleness_bound(BOUND),
        )
        .heartbeat(Duration::from_millis(50))
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    subscribed(&a).await;
    subscribed(&b).await;
    let (ra, rb) = (
        a.namespace::<String, u64>("rate").unwrap(),
        b.namespace::<String, u64>("rate").unwrap(),
    );
    let k = "victim".to_string();
    ra.set(&k, 1).await.unwrap();
    await_applied(&b, "rate", 1).await;
    assert_eq!(rb.get(&k).await.map(|v| *v), Some(1));

    proxy.set(Fault::StopReading, Target::Subscriber);
    let subscriptions = b.stats().bus_subscriptions;
    ra.set(&k, 2).await.unwrap(); // lost to b along with everything after it
                                  // Invalidations of 60 KB keys, until the kernel's socket buffers are full and Redis's own
                                  // output buffer for b passes 64 KiB: Redis then drops b, and logs it.
    let long = "x".repeat(60_000);
    let deadline = Instant::now() + PATIENCE;
    let mut i = 0;
    while !server.log().contains("overcoming of output buffer limits") {
        assert!(
            Instant::now() < deadline,
            "Redis never dropped the slow subscriber"
        );
        ra.invalidate(&format!("{long}{i}")).await.unwrap();
        i += 1;
    }
    let dropped = Instant::now();
    eventually("b stops trusting L1", PATIENCE, || bypassing(&b)).await;
    let detected = dropped.elapsed();
    let stale = rb.get(&k).await.map(|v| *v);
    assert_eq!(stale, Some(2), "stale value served after the drop");
    proxy.heal();
    let healed = Instant::now();
    eventually("b is back", PATIENCE, || async {
        b.stats().bus_subscriptions > subscriptions && b.is_subscribed()
    })
    .await;
    assert_eq!(rb.get_local(&k), None, "L1 flushed on resubscription");
    assert_eq!(rb.get(&k).await.map(|v| *v), Some(2));
    eprintln!(
        "FIGURE | slow subscriber dropped by `client-output-buffer-limit pubsub 64kb` | L1 bypassed {:.1} ms after Redis dropped it | resubscribed and flushed {:.0} ms after it read again |",
        detected.as_secs_f64() * 1e3,
        healed.elapsed().as_secs_f64() * 1e3
    );
}

async fn sigkill_for(outage: Duration) {
    let mut server = RedisServer::start();
    let nodes = [build(&server.url()), build(&server.url())];
    for n in &nodes {
        subscribed(n).await;
    }
    let r = nodes[0].namespace::<str, u64>("rate").unwrap();
    r.set("k", 1).await.unwrap();

    server.kill();
    let down = Instant::now();
    // Calls during the outage fail fast or degrade; none hangs.
    while down.elapsed() < outage {
        let t = Instant::now();
        let v = r
            .get_or_load("k", || async { Ok::<_, std::io::Error>(7) })
            .await
            .unwrap();
        // Within the staleness bound L1 may still answer; past it, only the loader.
        if down.elapsed() > BOUND + SLACK {
            assert_eq!(*v, 7, "L1 served {:?} into the outage", down.elapsed());
        } else {
            assert!(*v == 1 || *v == 7);
        }
        r.set("k", 8).await.unwrap(); // queued in the outbox, not failed
        assert!(r
            .with(EntryOptions::new().strict(true))
            .unwrap()
            .set("k", 8)
            .await
            .unwrap_err()
            .is_unavailable());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a call hung for {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // the outage's pace, not a wait
    }
    server.restart();
    let back = Instant::now();
    // No application call from here: the subscribers must come back on their own.
    eventually("every node resubscribed", PATIENCE, || async {
        nodes.iter().all(|n| n.is_subscribed())
    })
    .await;
    let took = back.elapsed();
    assert!(
        took <= Duration::from_secs(1) + SLACK,
        "resubscribed {took:?} after Redis returned"
    );
    // The first calls after the return may still fail fast while the data connection is
    // re-established (a degraded answer, by design); writes go through again promptly.
    eventually("a write goes through", PATIENCE, || async {
        r.with(EntryOptions::new().strict(true))
            .unwrap()
            .set("k", 2)
            .await
            .is_ok()
    })
    .await;
    let r1 = nodes[1].namespace::<str, u64>("rate").unwrap();
    eventually("coherent again", PATIENCE, || async {
        r1.get("k").await.map(|v| *v) == Some(2)
    })
    .await;
    eprintln!(
        "FIGURE | Redis SIGKILLed for {} s | calls answered throughout (loader, or L1 within the bound), none over 2 s | resubscribed {:.0} ms after Redis returned, no application call |",
        outage.as_secs(),
        took.as_secs_f64() * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkilled_for_5s_resubscribes_within_a_second_of_returning() {
    sigkill_for(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkilled_for_20s_resubscribes_within_a_second_of_returning() {
    sigkill_for(Duration::from_secs(20)).await;
}

/// Redis stalls for a second (`DEBUG SLEEP`), longer than the staleness bound but shorter
/// than this node's L2 timeout: every connection stays up and nothing is lost, but nothing
/// arrives either. The node stops trusting L1 within the bound, and trust returns when the
/// stall ends without a reconnect or a flush, since the sequence shows nothing was missed.
/// (A stall longer than the L2 timeout looks like a dead link: the node reconnects and
/// flushes, as in the half-open scenario.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_degrades_within_the_bound_and_recovers_without_a_flush() {
    let server = RedisServer::start();
    let a = TieredCache::builder()
        .redis_url(server.url())
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).staleness_bound(BOUND),
        )
        .heartbeat(Duration::from_millis(50))
        .l2_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    subscribed(&a).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set("k", 1).await.unwrap();
    assert!(ra.get_local("k").is_some());
    let subscriptions = a.stats().bus_subscriptions;
    let gaps = a.stats().bus_gaps;

    let url = server.admin_url();
    let sleeper = std::thread::spawn(move || {
        let mut c = support::client(url.as_str()).get_connection().unwrap();
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1)
            .query(&mut c)
            .unwrap();
    });
    let stalled = Instant::now();
    eventually("L1 bypassed during the stall", PATIENCE, || bypassing(&a)).await;
    let detected = stalled.elapsed();
    assert!(detected <= BOUND + SLACK, "bypass after {detected:?}");
    // A read now goes to Redis and waits for it, within the L2 timeout.
    let t = Instant::now();
    let v = ra
        .get_or_load("k", || async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    assert!(*v == 1 || *v == 7);
    assert!(
        t.elapsed() < Duration::from_secs(2) + SLACK,
        "a call outlived the L2 timeout"
    );
    sleeper.join().unwrap();
    let resumed = Instant::now();
    eventually("trusted again", PATIENCE, || async { !bypassing(&a).await }).await;
    let recovered = resumed.elapsed();
    assert_eq!(a.stats().bus_subscriptions, subscriptions, "no reconnect");
    assert_eq!(a.stats().bus_gaps, gaps, "nothing was lost");
    assert_eq!(
        ra.get_local("k").map(|v| *v),
        Some(1),
        "L1 kept: no flush was needed"
    );
    eprintln!(
        "FIGURE | Redis stalled 1 s (`DEBUG SLEEP 1`), under the node's L2 timeout | L1 bypassed {:.0} ms into the stall | trusted again {:.0} ms after it ended, without a reconnect or a flush |",
        detected.as_secs_f64() * 1e3,
        recovered.as_secs_f64() * 1e3
    );
}
