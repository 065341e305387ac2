//! Recovery by replay, not flush: a node that missed messages (its subscriber reconnected, or
//! a message was lost on the way) reads them back from the invalidation log and evicts only
//! what they name; where the log cannot vouch for what was missed (trimmed, an entry too large
//! to keep, no log at all) it clears L1 as before. Against a real `redis-server`.

mod support;

use std::time::{Duration, Instant};
use support::wire::Message;
use support::{eventually, keys, meta_field, node, node_with, RedisServer, PATIENCE};
use support::{Fault, FaultProxy, Target};
use tiered_cache::{Namespace, TieredCache};

const WARM: usize = 200;

fn key(i: usize) -> String {
    format!("k{i:06}")
}

/// Writes `n` keys through `writer` and waits until `reader` holds every one in L1.
async fn warm(writer: &Namespace<str, u64>, reader: &Namespace<str, u64>, n: usize) {
    write_all(writer, n).await;
    read_all(reader, n).await;
}

async fn write_all(writer: &Namespace<str, u64>, n: usize) {
    let names: Vec<String> = (0..n).map(key).collect();
    for chunk in names.chunks(1000) {
        let done = writer
            .batch()
            .set(chunk.iter().map(|k| (k.as_str(), 1)))
            .await;
        assert!(done.iter().all(Result::is_ok));
    }
}

/// Reads every key until `reader` holds them all in L1: a read racing the message of the
/// write it reads is (rightly) kept out of L1, so it may take a second pass.
async fn read_all(reader: &Namespace<str, u64>, n: usize) {
    let names: Vec<String> = (0..n).map(key).collect();
    eventually("the reader holds every key in L1", PATIENCE, || async {
        for chunk in names.chunks(1000) {
            reader.batch().get(chunk.iter().map(String::as_str)).await;
        }
        held(reader, n) == n
    })
    .await;
}

fn held(ns: &Namespace<str, u64>, n: usize) -> usize {
    (0..n).filter(|&i| ns.get_local(&key(i)).is_some()).count()
}

/// Drops every subscriber's connection; each resubscribes after its backoff (50 ms at least).
fn kill_subscribers(server: &RedisServer) {
    server.cmd::<i64>(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
}

/// Waits until `c` has resubscribed and its resync is over: L1 trusted again everywhere (a
/// bypassed L1 answers `get_local` with `None`, like an evicted key).
async fn resubscribed(c: &TieredCache, before: u64) {
    eventually("resubscribed and caught up", PATIENCE, || async {
        let s = c.stats();
        c.is_subscribed()
            && s.bus_subscriptions > before
            && s.namespaces.iter().all(|(_, n)| !n.l1_bypassed)
    })
    .await;
}

/// The subscriber's link drops and another node writes meanwhile: the write's message never
/// reaches this node's subscriber, yet after resubscribing it evicts that key alone and keeps
/// the rest of its L1 warm.
#[tokio::test]
async fn a_reconnect_replays_what_was_missed_and_keeps_the_rest_of_l1() {
    let server = RedisServer::start();
    let (a, b) = (node(&server).await, node(&server).await);
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    warm(&ra, &rb, WARM).await;
    let (subs, replays, flushes) = {
        let s = b.stats();
        (s.bus_subscriptions, s.bus_replays, s.bus_flushes)
    };
    kill_subscribers(&server);
    // Lands well before b's resubscription (its backoff alone is 50 ms).
    ra.set(&key(7), 2).await.unwrap();
    ra.invalidate(&key(8)).await.unwrap();
    resubscribed(&b, subs).await;
    eventually("b replayed", PATIENCE, || async {
        b.stats().bus_replays > replays
    })
    .await;
    let s = b.stats();
    assert!(s.bus_replayed >= 2, "both messages replayed: {s:?}");
    assert_eq!(s.bus_flushes, flushes, "no L1 was cleared");
    assert_eq!(rb.get_local(&key(7)), None, "the missed write evicted");
    assert_eq!(
        rb.get_local(&key(8)),
        None,
        "the missed invalidation applied"
    );
    assert_eq!(held(&rb, WARM), WARM - 2, "the rest of L1 kept");
    assert_eq!(rb.get(&key(7)).await.map(|v| *v), Some(2));
}

/// A message drawn, logged and then lost on the way (no reconnect): the next heartbeat shows
/// the hole, and the replay evicts what it named.
#[tokio::test]
async fn a_message_lost_on_the_way_is_replayed_from_the_log() {
    let server = RedisServer::start();
    let (a, b) = (node(&server).await, node(&server).await);
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    warm(&ra, &rb, WARM).await;
    let (gaps, subs) = (b.stats().bus_gaps, b.stats().bus_subscriptions);
    let replays = b.stats().bus_replays;
    // What a's INVALIDATE of key 3 logs, with its message lost between Redis and b: logged
    // first, then drawn, so no heartbeat shows the hole before the log holds it.
    let version = support::meta_version(&server) + 1;
    let epoch = meta_field(&server, keys::EPOCH_FIELD);
    let msg = Message::keys(a.node_id(), "rate", &[&key(3)]).assemble(version, epoch);
    let id = format!("{version}-0");
    server.cmd::<String>(&[
        b"XADD",
        keys::log().as_bytes(),
        id.as_bytes(),
        keys::LOG_FIELD.as_bytes(),
        &msg,
    ]);
    assert_eq!(support::draw_versions(&server, 1), version);
    eventually("the hole was replayed", PATIENCE, || async {
        let s = b.stats();
        s.bus_gaps > gaps && s.bus_replays > replays && !s.namespace("rate").unwrap().l1_bypassed
    })
    .await;
    assert_eq!(rb.get_local(&key(3)), None);
    assert_eq!(b.stats().bus_subscriptions, subs, "no reconnect");
    assert_eq!(held(&rb, WARM), WARM - 1, "the rest of L1 kept");
}

/// Keeps `c`'s subscriber away (its link to Redis silent) until `proxy` heals.
async fn keep_away(proxy: &FaultProxy, c: &TieredCache) {
    proxy.set(Fault::Blackhole, Target::Subscriber);
    eventually("the subscriber gave up on its link", PATIENCE, || async {
        !c.is_subscribed()
    })
    .await;
}

/// What the log cannot vouch for clears L1: more missed than it keeps, an entry too large to
/// keep.
#[tokio::test]
async fn what_the_log_cannot_cover_clears_l1() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let tight = |b: tiered_cache::TieredCacheBuilder| b.replay_log(16);
    let a = node_with(&server, tight).await;
    let url = proxy.url();
    let b = node_with(&server, |b| {
        b.redis_url(url).l2_timeout(Duration::from_millis(300))
    })
    .await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    // Trimmed: the writer keeps 16 messages (Redis trims whole nodes of 100 or so); b
    // misses 300.
    warm(&ra, &rb, WARM).await;
    let (subs, flushes) = (b.stats().bus_subscriptions, b.stats().bus_flushes);
    keep_away(&proxy, &b).await;
    for i in 0..300 {
        ra.set(&format!("other{i}"), 1).await.unwrap();
    }
    proxy.heal();
    resubscribed(&b, subs).await;
    eventually("b cleared L1", PATIENCE, || async {
        b.stats().bus_flushes > flushes
    })
    .await;
    assert_eq!(held(&rb, WARM), 0);

    // Too large: one batch's message over 4 KiB is logged empty.
    warm(&rb, &rb, WARM).await;
    let (subs, flushes) = (b.stats().bus_subscriptions, b.stats().bus_flushes);
    keep_away(&proxy, &b).await;
    let batch: Vec<String> = (0..600).map(|i| format!("batch{i:04}")).collect();
    let done = ra.batch().set(batch.iter().map(|k| (k.as_str(), 1))).await;
    assert!(done.iter().all(Result::is_ok));
    proxy.heal();
    resubscribed(&b, subs).await;
    eventually("b cleared L1", PATIENCE, || async {
        b.stats().bus_flushes > flushes
    })
    .await;
    assert_eq!(held(&rb, WARM), 0);
    // And within what the log keeps, after all that, a replay again.
    warm(&rb, &rb, WARM).await;
    let (subs, replays) = (b.stats().bus_subscriptions, b.stats().bus_replays);
    keep_away(&proxy, &b).await;
    for i in 0..10 {
        ra.invalidate(&key(i)).await.unwrap();
    }
    proxy.heal();
    resubscribed(&b, subs).await;
    eventually("b replayed", PATIENCE, || async {
        b.stats().bus_replays > replays
    })
    .await;
    assert_eq!(held(&rb, WARM), WARM - 10);
}

/// A fleet with no log (`replay_log(0)`) clears L1 after every reconnect with a write missed.
#[tokio::test]
async fn without_a_log_a_reconnect_clears_l1() {
    let server = RedisServer::start();
    let off = |b: tiered_cache::TieredCacheBuilder| b.replay_log(0);
    let (a, b) = (node_with(&server, off).await, node_with(&server, off).await);
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    warm(&ra, &rb, WARM).await;
    let subs = b.stats().bus_subscriptions;
    kill_subscribers(&server);
    ra.set(&key(7), 2).await.unwrap();
    resubscribed(&b, subs).await;
    eventually("b cleared L1", PATIENCE, || async { held(&rb, WARM) == 0 }).await;
    assert!(!server.cmd::<bool>(&[b"EXISTS", keys::log().as_bytes()]));
}

/// The figure the issue asks for: 4 nodes each holding `n` keys in L1, one message lost (the
/// subscribers' links dropped while one key is written). What each node then reads from
/// Redis and its loader to serve every key once, with the log and without.
async fn one_lost_message(replay_log: usize, n: usize) -> (u64, u64, Duration) {
    let server = RedisServer::start();
    let with = move |b: tiered_cache::TieredCacheBuilder| {
        let wide = tiered_cache::NamespacePolicy::new(Duration::from_secs(90))
            .staleness_bound(support::LOOSE_BOUND)
            .l1_capacity(n as u64 + 1000);
        b.replay_log(replay_log).namespace("wide", wide)
    };
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(node_with(&server, with).await);
    }
    let spaces: Vec<_> = nodes
        .iter()
        .map(|c| c.namespace::<str, u64>("wide").unwrap())
        .collect();
    write_all(&spaces[0], n).await;
    for reader in &spaces[1..] {
        read_all(reader, n).await;
    }
    let before: Vec<(u64, u64)> = nodes.iter().map(round_trips).collect();
    let subs: Vec<u64> = nodes.iter().map(|c| c.stats().bus_subscriptions).collect();
    kill_subscribers(&server);
    spaces[0].set(&key(7), 2).await.unwrap();
    for (c, s) in nodes.iter().zip(&subs) {
        resubscribed(c, *s).await;
    }
    let started = Instant::now();
    let names: Vec<String> = (0..n).map(key).collect();
    for ns in &spaces[1..] {
        for chunk in names.chunks(1000) {
            let found = ns.batch().get(chunk.iter().map(String::as_str)).await;
            assert!(found.iter().all(Option::is_some));
        }
    }
    let took = started.elapsed();
    let (mut l2, mut loads) = (0, 0);
    for (c, (l2_before, loads_before)) in nodes.iter().zip(before).skip(1) {
        let (l2_now, loads_now) = round_trips(c);
        l2 += l2_now - l2_before;
        loads += loads_now - loads_before;
    }
    (l2 / 3, loads / 3, took)
}

/// Keys read from Redis (hits and misses) and loader calls, in `wide`.
fn round_trips(c: &TieredCache) -> (u64, u64) {
    let s = c.stats();
    let s = s.namespace("wide").unwrap();
    (s.l2_hits + s.l2_misses, s.loads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lost_message_costs_one_key_per_node_not_the_working_set() {
    let n = if std::env::var_os("REPLAY_FIGURE_KEYS").is_some() {
        std::env::var("REPLAY_FIGURE_KEYS")
            .unwrap()
            .parse()
            .unwrap()
    } else {
        20_000
    };
    let (l2_flush, _, flush_took) = one_lost_message(0, n).await;
    let (l2_replay, _, replay_took) = one_lost_message(10_000, n).await;
    eprintln!(
        "FIGURE replay | 4 nodes, {n} keys warm in each L1, one message lost (links dropped while one key is written) | keys read from Redis per node to serve every key again: {l2_flush} without the log, {l2_replay} with it | all keys served in {:.0} ms vs {:.0} ms |",
        flush_took.as_secs_f64() * 1e3,
        replay_took.as_secs_f64() * 1e3
    );
    assert_eq!(
        l2_flush, n as u64,
        "without the log, every node reloads all"
    );
    assert_eq!(l2_replay, 1, "with it, only the key written");
}

/// Redis's history changed under the same epoch (a lagging replica promoted, whose new writes
/// reuse versions this node saw from the old primary): the log's entry at the last version
/// this node applied is another message, so the node clears L1 rather than replay a run that
/// does not follow what it holds.
#[tokio::test]
async fn a_log_of_another_history_is_not_replayed() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let a = node(&server).await;
    let url = proxy.url();
    let b = node_with(&server, |b| {
        b.redis_url(url).l2_timeout(Duration::from_millis(300))
    })
    .await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    warm(&ra, &rb, WARM).await;
    ra.invalidate("last").await.unwrap();
    support::await_applied(&b, "rate", 2).await;
    let (subs, flushes) = (b.stats().bus_subscriptions, b.stats().bus_flushes);
    keep_away(&proxy, &b).await;
    // The new primary's log: at the version b applied last, and one after, other writes.
    let version = support::meta_version(&server);
    let epoch = meta_field(&server, keys::EPOCH_FIELD);
    server.cmd::<i64>(&[b"DEL", keys::log().as_bytes()]);
    for (v, k) in [(version, "elsewhere"), (version + 1, "other")] {
        let msg = Message::keys(support::wire::FOREIGN_ORIGIN, "rate", &[k]).assemble(v, epoch);
        let id = format!("{v}-0");
        server.cmd::<String>(&[
            b"XADD",
            keys::log().as_bytes(),
            id.as_bytes(),
            keys::LOG_FIELD.as_bytes(),
            &msg,
        ]);
    }
    support::draw_versions(&server, 1);
    proxy.heal();
    resubscribed(&b, subs).await;
    eventually("b cleared L1", PATIENCE, || async {
        b.stats().bus_flushes > flushes
    })
    .await;
    assert_eq!(held(&rb, WARM), 0);
}
