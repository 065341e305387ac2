//! A node that may have missed something resynchronises (reloads the namespace floors, clears
//! L1) instead of trusting what it has: after its own namespace clear timed out, after a
//! write whose message it could not read (the gap it leaves), after Redis's version counter started over (FLUSHALL) without any
//! reconnect, and even when a bookkeeping field in Redis is corrupt.

mod support;

use support::wire::{self, Message};
use support::{await_applied, eventually, keys, meta_field, node, RedisServer, PATIENCE};
use tiered_cache::TieredCache;

/// What the clear script stores for namespace `rate` at version `floor`, with no message.
fn record_clear_in_redis(server: &RedisServer, floor: u64) {
    let floor = floor.to_string();
    // One command, as the clear script's: a resync between two would see the version without
    // its floor (the bus runs on its own thread, beside this blocking call).
    server.cmd::<()>(&[
        b"HSET",
        keys::meta().as_bytes(),
        keys::VERSION_FIELD.as_bytes(),
        floor.as_bytes(),
        keys::floor_field("rate").as_bytes(),
        floor.as_bytes(),
    ]);
}

/// Publishes `msg` on the invalidation channel.
fn publish(server: &RedisServer, msg: &[u8]) {
    server.cmd::<i64>(&[b"PUBLISH", keys::channel().as_bytes(), msg]);
}

fn own_skipped(c: &TieredCache) -> u64 {
    c.stats().bus_own_skipped
}

/// The clear script ran and published, but the caller timed out before the reply: the node
/// learns its own floor from its own echo.
#[tokio::test]
async fn an_own_namespace_clear_whose_reply_was_lost_still_sets_the_floor() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    rb.set("k", 1).await.unwrap();
    let version = meta_field(&server, keys::VERSION_FIELD);
    let epoch = meta_field(&server, keys::EPOCH_FIELD);
    // What `invalidate_namespace` on `a` would have published, as if its reply never came.
    let floor = version + 1;
    record_clear_in_redis(&server, floor);
    let before = own_skipped(&a);
    // A whole-namespace message as the clear script publishes it.
    let msg = Message::namespace(a.node_id(), "rate").assemble(floor, epoch);
    publish(&server, &msg);
    eventually("a saw its own echo", PATIENCE, || async {
        own_skipped(&a) > before
    })
    .await;
    assert_eq!(
        ra.get("k").await,
        None,
        "a value from before the clear was served"
    );
}

#[tokio::test]
async fn a_clear_whose_message_was_unreadable_is_caught_by_the_gap_it_leaves() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set("k", 1).await.unwrap();
    // A clear this node never heard of (say, its message was the unreadable one).
    let floor = meta_field(&server, keys::VERSION_FIELD) + 1;
    record_clear_in_redis(&server, floor);
    // Skipped as unreadable: the next heartbeat carries the version the clear drew.
    publish(&server, &wire::from_a_newer_build(b"from a newer build"));
    eventually("L1 cleared", PATIENCE, || async {
        ra.get_local("k").is_none()
    })
    .await;
    eventually("floor reloaded", PATIENCE, || async {
        ra.get("k").await.is_none()
    })
    .await;
    assert_eq!(a.stats().bus_malformed, 1);
    assert!(
        a.is_subscribed(),
        "resynchronised in place, still subscribed"
    );
}

/// FLUSHALL empties Redis, version counter included, but leaves pub/sub connections alone: no
/// reconnect tells the nodes. The new epoch does.
#[tokio::test]
async fn a_counter_that_starts_over_without_a_reconnect_does_not_hide_new_writes() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    for i in 0..20 {
        ra.set(&format!("k{i}"), 1).await.unwrap();
    }
    ra.invalidate_namespace().await.unwrap(); // floor 21 on both nodes
    await_applied(&b, "rate", 1).await;
    let subscriptions = (a.stats().bus_subscriptions, b.stats().bus_subscriptions);

    server.cmd::<()>(&[b"FLUSHALL"]);
    rb.set("new", 2).await.unwrap(); // version 1 of a new epoch
    for (name, ns) in [("a", &ra), ("b", &rb)] {
        eventually(&format!("{name} reads the new write"), PATIENCE, || async {
            ns.get("new").await.map(|v| *v) == Some(2)
        })
        .await;
    }
    rb.set("k3", 3).await.unwrap();
    eventually("a follows writes of the new epoch", PATIENCE, || async {
        ra.get("k3").await.map(|v| *v) == Some(3)
    })
    .await;
    assert_eq!(
        (a.stats().bus_subscriptions, b.stats().bus_subscriptions),
        subscriptions,
        "resynchronised without reconnecting"
    );
}

#[tokio::test]
async fn a_corrupt_floor_field_does_not_stop_resubscription() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set("k", 1).await.unwrap();
    server.cmd::<()>(&[
        b"HSET",
        keys::meta().as_bytes(),
        keys::floor_field("rate").as_bytes(),
        b"not-a-number",
    ]);
    let before = a.stats().bus_subscriptions;
    server.cmd::<i64>(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    eventually("resubscribed", PATIENCE, || async {
        a.stats().bus_subscriptions > before && a.is_subscribed()
    })
    .await;
    assert_eq!(ra.get("k").await.map(|v| *v), Some(1));
}

fn gaps(c: &TieredCache) -> u64 {
    c.stats().bus_gaps
}

/// A message lost on the way (here: a version drawn, its message never published) is noticed
/// at the next heartbeat, even though no write follows, and costs one resync, not a reconnect.
#[tokio::test]
async fn a_lost_message_is_caught_by_the_next_heartbeat() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set("k", 1).await.unwrap();
    assert!(ra.get_local("k").is_some());
    let subscriptions = a.stats().bus_subscriptions;

    let flushes = a.stats().bus_flushes;
    support::draw_versions(&server, 1);
    eventually("gap detected", PATIENCE, || async { gaps(&a) >= 1 }).await;
    // The hole is not in the invalidation log: the resync clears L1 (and only then trusts it).
    eventually("L1 cleared by the resync", PATIENCE, || async {
        let s = a.stats();
        s.bus_flushes > flushes && !s.namespace("rate").unwrap().l1_bypassed
    })
    .await;
    assert!(ra.get_local("k").is_none());
    assert_eq!(
        a.stats().bus_subscriptions,
        subscriptions,
        "no reconnect needed"
    );
    assert_eq!(ra.get("k").await.map(|v| *v), Some(1));
    // In sequence again: L1 is used and nothing more is flagged.
    let before = gaps(&a);
    ra.set("k", 2).await.unwrap();
    assert_eq!(ra.get_local("k").map(|v| *v), Some(2));
    let b = node(&server).await;
    b.namespace::<str, u64>("rate")
        .unwrap()
        .set("j", 1)
        .await
        .unwrap();
    await_applied(&a, "rate", 1).await;
    assert_eq!(gaps(&a), before);
}
