//! Tags against a real Redis: tagged writes and loads, invalidation by tag across nodes in one
//! message (per namespace and cache-wide), loads and reads racing a tag invalidation, tag name
//! validation, and Redis unreachable.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use support::gate::{self, Gated};
use support::listener::{is_multi, sections_of, BusListener};
use support::{
    await_applied, eventually, keys, node, node_with, node_with_fees, RedisServer, PATIENCE,
};
use tiered_cache::{EntryOptions, NamespacePolicy, TieredCache};

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

fn values(out: &[Option<Arc<u64>>]) -> Vec<Option<u64>> {
    out.iter().map(|v| v.as_deref().copied()).collect()
}

fn members(server: &RedisServer, set: &str) -> BTreeSet<String> {
    server.cmd(&[b"ZRANGE", set.as_bytes(), b"0", b"-1"])
}

fn names_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|k| k.to_string()).collect()
}

/// The Redis keys of `names` in `ns`, as a tag's set lists them.
fn set_of(ns: &str, names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|k| keys::value(ns, k)).collect()
}

#[tokio::test]
async fn invalidate_tag_reaches_every_node_and_spares_other_keys() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();
    qa.with(EntryOptions::new().tags(["W1"]))
        .unwrap()
        .set("p1", 1)
        .await
        .unwrap();
    let out = qa
        .with(EntryOptions::new().tags(["W1", "T9"]))
        .unwrap()
        .batch()
        .set([("p2", 2), ("p3", 3)])
        .await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    qa.set("u1", 4).await.unwrap();
    qa.with(EntryOptions::new().tags(["W2"]))
        .unwrap()
        .set("p4", 5)
        .await
        .unwrap();
    // Tagged, then rewritten without the tag: still listed (a spurious invalidation later).
    qa.with(EntryOptions::new().tags(["W1"]))
        .unwrap()
        .set("p5", 6)
        .await
        .unwrap();
    qa.set("p5", 7).await.unwrap();
    await_applied(&b, "quote", 6).await;
    let all = ["p1", "p2", "p3", "u1", "p4", "p5"];
    assert_eq!(
        values(&qb.batch().get(all).await),
        [Some(1), Some(2), Some(3), Some(4), Some(5), Some(7)]
    );
    assert!(
        all.iter().all(|k| qb.get_local(k).is_some()),
        "b caches them"
    );

    // The bookkeeping in Redis: value keys per tag, living at least as long as the values.
    assert_eq!(
        members(&server, &keys::tag("quote", "W1")),
        set_of("quote", &["p1", "p2", "p3", "p5"])
    );
    assert_eq!(
        members(&server, &keys::tag("quote", "T9")),
        set_of("quote", &["p2", "p3"])
    );
    let set_ttl: i64 = server.cmd(&[b"PTTL", keys::tag("quote", "W1").as_bytes()]);
    let value_ttl: i64 = server.cmd(&[b"PTTL", keys::value("quote", "p1").as_bytes()]);
    // Twice the TTL and a second: an L1 copy made as the value leaves Redis outlives it.
    assert!(
        set_ttl >= 2 * value_ttl && set_ttl <= 121_000,
        "{set_ttl} vs {value_ttl}"
    );

    let mut bus = BusListener::start(&server).await;
    let applied = support::applied(&b, "quote");
    let sent = a.stats().namespace("quote").unwrap().invalidations_sent;
    assert_eq!(qa.invalidate_tag("W1").await.unwrap(), 4);
    qa.invalidate("marker").await.unwrap();
    let messages = bus.until(b"marker").await;
    assert_eq!(messages.len(), 2, "one message for the tag, one marker");
    assert!(is_multi(&messages[0]), "a multi-namespace message");
    let sections = sections_of(&messages[0]);
    assert_eq!(sections.len(), 1);
    assert_eq!(sections[0].0, "quote");
    let listed: BTreeSet<String> = sections[0].1.iter().cloned().collect();
    assert_eq!(listed, names_of(&["p1", "p2", "p3", "p5"]));
    assert_eq!(
        a.stats().namespace("quote").unwrap().invalidations_sent,
        sent + 2
    );

    // Node b: the tagged keys are gone from L1 and from Redis; the others stay.
    await_applied(&b, "quote", applied + 2).await;
    for k in ["p1", "p2", "p3", "p5"] {
        assert_eq!(qb.get_local(k), None, "{k} still in b's L1");
    }
    assert_eq!(qb.get_local("u1").as_deref(), Some(&4));
    assert_eq!(qb.get_local("p4").as_deref(), Some(&5));
    assert_eq!(
        values(&qb.batch().get(all).await),
        [None, None, None, Some(4), Some(5), None]
    );
    // The writer skips its own message: its L1 was evicted from the script's answer.
    assert!(["p1", "p2", "p3", "p5"]
        .iter()
        .all(|k| qa.get_local(k).is_none()));
    assert_eq!(qa.get_local("u1").as_deref(), Some(&4));

    // The set is gone; the tag's floor stays for the namespace's L2 TTL.
    let exists: u64 = server.cmd(&[b"EXISTS", keys::tag("quote", "W1").as_bytes()]);
    assert_eq!(exists, 0);
    let floor_ttl: i64 = server.cmd(&[b"PTTL", keys::tag_floor("quote", "W1").as_bytes()]);
    assert!(floor_ttl > 0 && floor_ttl <= 60_000, "{floor_ttl}");
    // Another tag of p2 and p3 still lists them: tombstoning them again is harmless.
    assert_eq!(qa.invalidate_tag("T9").await.unwrap(), 2);
    assert_eq!(qa.invalidate_tag("never-used").await.unwrap(), 0);
}

/// A tag joined by a new key every 50 ms or more (order ids under one trading day, say), 50
/// times, with a 300 ms TTL: its set holds the keys of the last two TTLs and a second (33 at
/// most), not every key ever tagged, and no member leaves before an L1 copy of its value
/// could have expired.
#[tokio::test]
async fn a_tag_set_tracks_live_keys_instead_of_growing_forever() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(300);
    let a = node_with(&server, |b| {
        b.namespace("order", NamespacePolicy::new(ttl).unbounded_staleness())
    })
    .await;
    let orders = a.namespace::<str, u64>("order").unwrap();
    let day = orders.with(EntryOptions::new().tags(["day"])).unwrap();
    let set = keys::tag("order", "day");
    let mut conn = server.conn();
    let mut largest = 0;
    for i in 0..50u64 {
        day.set(&format!("o{i}"), i).await.unwrap();
        // Every member is kept while its value is in Redis or an L1 copy of it may be.
        let ((s, us), scored): ((i64, i64), Vec<(String, f64)>) = redis::pipe()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(&set)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        let now = s * 1000 + us / 1000;
        let mut pttl = redis::pipe();
        for (member, _) in &scored {
            pttl.cmd("PTTL").arg(member);
        }
        let left: Vec<i64> = pttl.query(&mut conn).unwrap();
        for ((member, score), left) in scored.iter().zip(left) {
            let l1 = ttl.as_millis() as i64;
            assert!(
                left < 0 || *score as i64 >= now + left + l1,
                "{member} scored {score} at {now}, {left} ms left in Redis"
            );
        }
        largest = largest.max(scored.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(largest <= 34, "the set grew to {largest} of 50 keys");
    assert!(!members(&server, &set).contains(&keys::value("order", "o0")));
}

/// A plain set left by an older version is read by a tag invalidation and converted, with its
/// members, by the first tagged write.
#[tokio::test]
async fn a_plain_tag_set_from_an_older_version_is_still_honoured() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let (qa, qb) = (
        a.namespace::<str, u64>("quote").unwrap(),
        b.namespace::<str, u64>("quote").unwrap(),
    );
    for (set, key) in [("old", "q1"), ("mixed", "q2")] {
        qa.set(key, 1).await.unwrap();
        let (set, member) = (keys::tag("quote", set), keys::value("quote", key));
        let _: i64 = server.cmd(&[b"SADD", set.as_bytes(), member.as_bytes()]);
        let _: i64 = server.cmd(&[b"PEXPIRE", set.as_bytes(), b"60000"]);
    }
    qa.with(EntryOptions::new().tags(["mixed"]))
        .unwrap()
        .set("q3", 3)
        .await
        .unwrap();
    let kind: String = server.cmd(&[b"TYPE", keys::tag("quote", "mixed").as_bytes()]);
    assert_eq!(kind, "zset");
    assert_eq!(
        members(&server, &keys::tag("quote", "mixed")),
        set_of("quote", &["q2", "q3"])
    );
    await_applied(&b, "quote", 3).await;
    for k in ["q1", "q2", "q3"] {
        assert!(qb.get(k).await.is_some());
    }
    assert_eq!(qa.invalidate_tag("old").await.unwrap(), 1);
    assert_eq!(qa.invalidate_tag("mixed").await.unwrap(), 2);
    eventually("b dropped every tagged copy", PATIENCE, || async {
        ["q1", "q2", "q3"].iter().all(|k| qb.get_local(k).is_none())
    })
    .await;
    for k in ["q1", "q2", "q3"] {
        assert_eq!(qb.get(k).await, None, "{k} is tombstoned");
    }
}

#[tokio::test]
async fn cache_wide_invalidate_tag_covers_every_namespace_in_one_message() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let (qa, ra) = (
        a.namespace::<str, u64>("quote").unwrap(),
        a.namespace::<str, u64>("rate").unwrap(),
    );
    let (qb, rb) = (
        b.namespace::<str, u64>("quote").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    qa.with(EntryOptions::new().tags(["S1"]))
        .unwrap()
        .set("q1", 1)
        .await
        .unwrap();
    assert!(ra
        .with(EntryOptions::new().tags(["S1"]))
        .unwrap()
        .batch()
        .set([("r1", 1), ("r2", 2)])
        .await
        .iter()
        .all(Result::is_ok));
    ra.set("r3", 3).await.unwrap();
    await_applied(&b, "rate", 2).await;
    await_applied(&b, "quote", 1).await;
    assert_eq!(values(&qb.batch().get(["q1"]).await), [Some(1)]);
    assert_eq!(
        values(&rb.batch().get(["r1", "r2", "r3"]).await),
        [Some(1), Some(2), Some(3)]
    );

    let mut bus = BusListener::start(&server).await;
    let (applied_q, applied_r) = (support::applied(&b, "quote"), support::applied(&b, "rate"));
    assert_eq!(a.invalidate_tag("S1").await.unwrap(), 3);
    qa.invalidate("marker").await.unwrap();
    let messages = bus.until(b"marker").await;
    assert_eq!(
        messages.len(),
        2,
        "one message for every namespace, one marker"
    );
    let mut sections = sections_of(&messages[0]);
    for (_, keys) in &mut sections {
        keys.sort();
    }
    sections.sort();
    assert_eq!(
        sections,
        [
            ("quote".to_string(), vec!["q1".to_string()]),
            ("rate".to_string(), vec!["r1".to_string(), "r2".to_string()])
        ]
    );

    await_applied(&b, "rate", applied_r + 1).await;
    await_applied(&b, "quote", applied_q + 2).await;
    assert_eq!(qb.get_local("q1"), None);
    assert_eq!((rb.get_local("r1"), rb.get_local("r2")), (None, None));
    assert_eq!(rb.get_local("r3").as_deref(), Some(&3));
    assert_eq!(
        values(&rb.batch().get(["r1", "r2", "r3"]).await),
        [None, None, Some(3)]
    );
    assert_eq!(values(&qb.batch().get(["q1"]).await), [None]);
}

/// B loads keys nobody has cached yet (no tag set lists them) while A invalidates their tag:
/// B's loader read the database before the change, so its fill must be refused by the tag's
/// floor, on the single-key path and on the batch path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_load_racing_a_tag_invalidation_cannot_fill_back() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();

    for (batch, tag) in [(false, "W1"), (true, "W2")] {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let reader = {
            let qb = qb.clone();
            tokio::spawn(async move {
                let slow = async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    1 // what the database held when the load began
                };
                if batch {
                    let out = qb
                        .with(EntryOptions::new().tags([tag]))
                        .unwrap()
                        .batch()
                        .get_or_load(["b1", "b2"], |keys| async move {
                            let v = slow.await;
                            Ok::<_, std::io::Error>(keys.iter().map(|_| Some(v)).collect())
                        })
                        .await;
                    out.into_iter().map(|r| *r.unwrap().unwrap()).collect()
                } else {
                    let v = qb
                        .with(EntryOptions::new().tags([tag]))
                        .unwrap()
                        .get_or_load("s1", || async move { Ok::<_, std::io::Error>(slow.await) })
                        .await;
                    vec![*v.unwrap()]
                }
            })
        };
        started_rx.await.unwrap();
        // The window settles: the database changed, then the tag is invalidated.
        assert_eq!(
            qa.invalidate_tag(tag).await.unwrap(),
            0,
            "nothing listed yet"
        );
        release_tx.send(()).unwrap();
        let read = reader.await.unwrap();
        assert!(read.iter().all(|v| *v == 1), "answered with what it loaded");
    }
    for k in ["s1", "b1", "b2"] {
        let raw: Option<Vec<u8>> = server.cmd(&[b"GET", keys::value("quote", k).as_bytes()]);
        assert_eq!(raw, None, "{k}: stale value written back to Redis");
        assert_eq!(qb.get_local(k), None, "{k}: stale value kept in L1");
    }
    let s = b.stats();
    assert_eq!(s.namespace("quote").unwrap().fills_refused, 3);

    // Loads that start after the invalidation are cached, and join the tag again.
    let v = qb
        .with(EntryOptions::new().tags(["W1"]))
        .unwrap()
        .get_or_load("s1", || async { Ok::<_, std::io::Error>(2) })
        .await
        .unwrap();
    assert_eq!(*v, 2);
    assert_eq!(qa.get("s1").await.as_deref(), Some(&2), "written back");
    assert_eq!(
        members(&server, &keys::tag("quote", "W1")),
        set_of("quote", &["s1"])
    );
    // And the next invalidation of the tag reaches them.
    let applied = support::applied(&b, "quote");
    assert_eq!(qa.invalidate_tag("W1").await.unwrap(), 1);
    await_applied(&b, "quote", applied + 1).await;
    assert_eq!(qb.get_local("s1"), None);
}

/// The load/invalidate race on the read path, through a tag: B holds between its Redis read and
/// its L1 insert while A's tag invalidation is applied on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_a_tag_invalidation_keeps_no_stale_value() {
    let _serial = gate::SERIAL.lock().await;
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, Gated>("quote").unwrap();
    let qb = b.namespace::<str, Gated>("quote").unwrap();
    qa.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("K", Gated(1))
        .await
        .unwrap();
    await_applied(&b, "quote", 1).await;

    gate::arm();
    let reader = {
        let qb = qb.clone();
        tokio::spawn(async move { qb.get("K").await })
    };
    gate::wait_reading().await;
    assert_eq!(qa.invalidate_tag("T").await.unwrap(), 1);
    await_applied(&b, "quote", 2).await;
    gate::release();
    assert_eq!(reader.await.unwrap().as_deref(), Some(&Gated(1)));
    assert_eq!(qb.get_local("K"), None, "stale value left in B's L1");
    assert_eq!(qb.get("K").await, None);
}

#[tokio::test]
async fn tag_names_are_validated_before_any_io() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let q = cache.namespace::<str, u64>("quote").unwrap();
    let long = "n".repeat(65);
    for bad in ["a:b", "", "a b", "x{y}", long.as_str()] {
        // Options are checked when the handle is made: no verb of it runs.
        let e = q.with(EntryOptions::new().tags(["ok", bad])).unwrap_err();
        assert!(e.is_invalid_tag(), "{bad:?}: {e}");
        assert!(q
            .with(EntryOptions::new().tag(bad))
            .unwrap_err()
            .is_invalid_tag());
        assert!(q.invalidate_tag(bad).await.unwrap_err().is_invalid_tag());
        assert!(cache
            .invalidate_tag(bad)
            .await
            .unwrap_err()
            .is_invalid_tag());
    }
    let written: u64 = server.cmd(&[
        b"EXISTS",
        keys::value("quote", "k").as_bytes(),
        keys::value("quote", "l").as_bytes(),
    ]);
    assert_eq!(written, 0, "nothing was written");
    assert!(q
        .with(EntryOptions::new().tags(["W-2025.11.21_a"]))
        .unwrap()
        .set("k", 1)
        .await
        .is_ok());
}

/// Raw bytes of a value key (`None`: absent).
fn raw(server: &RedisServer, ns: &str, key: &str) -> Option<Vec<u8>> {
    server.cmd(&[b"GET", keys::value(ns, key).as_bytes()])
}

/// Stops Redis as a crash would, keeping its data (as a persistent Redis does): the values
/// written before the outage are back after the restart, so whatever was not replayed is read
/// again. Returns once both nodes have noticed.
async fn crash_keeping_data(server: &mut RedisServer, nodes: &[&TieredCache]) {
    let _: String = server.cmd(&[b"SAVE"]);
    server.kill();
    eventually("every node notices", PATIENCE, || async {
        nodes.iter().all(|n| !n.is_subscribed())
    })
    .await;
}

/// Restarts Redis from its saved data and waits until every node has resubscribed (its L1
/// resynced) and `replayer` has replayed its whole outbox.
async fn recover(server: &mut RedisServer, nodes: &[&TieredCache], replayer: &TieredCache) {
    server.restart();
    eventually("resubscribed", PATIENCE, || async {
        nodes.iter().all(|n| n.is_subscribed())
    })
    .await;
    eventually("the outbox is replayed", PATIENCE, || async {
        replayer.stats().outbox_entries == 0
    })
    .await;
}

fn outbox(cache: &TieredCache, ns: &str) -> (u64, u64, u64) {
    let s = cache.stats();
    let s = s.namespace(ns).unwrap();
    (s.outbox_queued, s.outbox_dropped, s.outbox_replayed)
}

/// A tagged write with Redis down is queued as an invalidation of its key, not as its value
/// (a replay would lose the tags) and not kept in L1 (the tag's set would not list it): once
/// replayed, no node reads the value from before the outage, and the value written during it
/// is cached nowhere, so the next read loads afresh.
#[tokio::test]
async fn a_tagged_write_without_redis_is_queued_as_an_invalidation() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let b = node_with_fees(&server).await;
    let fa = a.namespace::<str, u64>("fees").unwrap();
    let fb = b.namespace::<str, u64>("fees").unwrap();
    fa.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("x", 1)
        .await
        .unwrap();
    fa.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("x2", 2)
        .await
        .unwrap();
    fa.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("y", 3)
        .await
        .unwrap();
    await_applied(&b, "fees", 3).await;
    let all = ["x", "x2", "y"];
    assert_eq!(
        values(&fb.batch().get(all).await),
        [Some(1), Some(2), Some(3)]
    );
    assert!(
        all.iter().all(|k| fb.get_local(k).is_some()),
        "b caches them"
    );
    let old_x = raw(&server, "fees", "x").expect("x in Redis");
    let old_y = raw(&server, "fees", "y").expect("y in Redis");

    crash_keeping_data(&mut server, &[&a, &b]).await;
    bounded(
        "set_tagged",
        fa.with(EntryOptions::new().tags(["T"]))
            .unwrap()
            .set("x", 10),
    )
    .await
    .unwrap();
    let out = bounded(
        "set_many_tagged",
        fa.with(EntryOptions::new().tags(["T"]))
            .unwrap()
            .batch()
            .set([("x2", 20)]),
    )
    .await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(
        (fa.get_local("x"), fa.get_local("x2")),
        (None, None),
        "a kept a copy no tag set lists"
    );
    assert_eq!(a.stats().outbox_entries, 2);
    assert_eq!(
        outbox(&a, "fees"),
        (2, 2, 0),
        "queued and dropped, once each"
    );

    recover(&mut server, &[&a, &b], &a).await;
    assert_eq!(outbox(&a, "fees"), (2, 2, 2), "both replayed");
    // The restart kept what was saved: y, untouched during the outage, is back.
    assert_eq!(raw(&server, "fees", "y"), Some(old_y));
    assert_ne!(
        raw(&server, "fees", "x"),
        Some(old_x),
        "x's old value survived"
    );
    // b (its L1 resynced) reads through Redis: a miss, never the old value; its loader runs.
    assert_eq!(values(&fb.batch().get(all).await), [None, None, Some(3)]);
    assert_eq!(fb.get("x").await, None);
    let v = fb
        .get_or_load("x", || async { Ok::<_, std::io::Error>(10) })
        .await
        .unwrap();
    assert_eq!(*v, 10);
    assert_eq!(
        fa.get("x").await.as_deref(),
        Some(&10),
        "loaded afresh, shared"
    );
}

/// `Namespace::invalidate_tag` with Redis down queues a clear of its namespace (the tag's keys
/// are unknown here): `Ok(0)`; once replayed, no node reads the tag's old values (nor the
/// namespace's untagged ones: the clear is a superset), and other namespaces keep theirs.
/// A tagged write made behind the queued clear lands behind it, as an invalidation.
#[tokio::test]
async fn invalidate_tag_without_redis_queues_a_clear_of_its_namespace() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let b = node_with_fees(&server).await;
    let fa = a.namespace::<str, u64>("fees").unwrap();
    let fb = b.namespace::<str, u64>("fees").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();
    let qa = a.namespace::<str, u64>("quote").unwrap();
    fa.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("x", 1)
        .await
        .unwrap();
    fa.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("z", 2)
        .await
        .unwrap();
    fa.set("u", 3).await.unwrap();
    qa.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("q", 4)
        .await
        .unwrap();
    await_applied(&b, "fees", 3).await;
    await_applied(&b, "quote", 1).await;
    assert_eq!(
        values(&fb.batch().get(["x", "z", "u"]).await),
        [Some(1), Some(2), Some(3)]
    );
    assert_eq!(qb.get("q").await.as_deref(), Some(&4));
    assert_eq!(
        (fa.get_local("x").as_deref(), fa.get_local("u").as_deref()),
        (Some(&1), Some(&3))
    );

    crash_keeping_data(&mut server, &[&a, &b]).await;
    assert_eq!(
        bounded("invalidate_tag", fa.invalidate_tag("T"))
            .await
            .unwrap(),
        0,
        "the tag's keys are unknown without Redis"
    );
    assert_eq!(
        (fa.get_local("x"), fa.get_local("u")),
        (None, None),
        "the namespace's L1 is cleared"
    );
    assert_eq!(a.stats().outbox_entries, 1, "one clear");
    // Behind the queued clear (which cannot be replayed first): queued as an invalidation.
    bounded(
        "set_tagged",
        fa.with(EntryOptions::new().tags(["T"]))
            .unwrap()
            .set("z", 20),
    )
    .await
    .unwrap();
    assert_eq!(fa.get_local("z"), None);
    assert_eq!(
        a.stats().outbox_entries,
        2,
        "the clear and z's invalidation"
    );

    recover(&mut server, &[&a, &b], &a).await;
    assert_eq!(outbox(&a, "fees").2, 2, "both replayed");
    assert_eq!(
        values(&fb.batch().get(["x", "z", "u"]).await),
        [None, None, None],
        "old values read after the replay"
    );
    assert_eq!(fb.get("x").await, None);
    // Other namespaces are untouched, in Redis and for b.
    assert!(raw(&server, "quote", "q").is_some());
    assert_eq!(qb.get("q").await.as_deref(), Some(&4));
}

/// The cache-wide `invalidate_tag` with Redis down: a clear of every namespace this node
/// configures is queued (`Ok(0)`) and replayed; on a cache with strict writes it fails with
/// `Unavailable`, queues nothing and leaves no local copy.
#[tokio::test]
async fn cache_wide_invalidate_tag_without_redis_queues_a_clear_of_every_namespace() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let b = node_with_fees(&server).await;
    let strict = node_with(&server, |b| {
        b.namespace(
            "fees",
            NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness(),
        )
        .l2_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(300))
        .strict_writes(true)
    })
    .await;
    let fa = a.namespace::<str, u64>("fees").unwrap();
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let fs = strict.namespace::<str, u64>("fees").unwrap();
    fa.with(EntryOptions::new().tags(["S"]))
        .unwrap()
        .set("f", 1)
        .await
        .unwrap();
    qa.with(EntryOptions::new().tags(["S"]))
        .unwrap()
        .set("q", 2)
        .await
        .unwrap();
    a.namespace::<str, u64>("rate")
        .unwrap()
        .set("r", 3)
        .await
        .unwrap();
    await_applied(&strict, "fees", 1).await;
    assert_eq!(fs.get("f").await.as_deref(), Some(&1));

    crash_keeping_data(&mut server, &[&a, &b, &strict]).await;
    assert_eq!(
        fs.get_local("f").as_deref(),
        Some(&1),
        "unbounded: L1 serves"
    );
    let e = bounded("strict cache-wide", strict.invalidate_tag("S"))
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert_eq!(
        fs.get_local("f"),
        None,
        "a strict failure drops the local copy"
    );
    assert_eq!(strict.stats().outbox_entries, 0, "strict: nothing queued");

    assert_eq!(fa.get_local("f").as_deref(), Some(&1));
    let queued = outbox(&a, "rate").0;
    assert_eq!(
        bounded("cache-wide", a.invalidate_tag("S")).await.unwrap(),
        0
    );
    assert_eq!(fa.get_local("f"), None);
    assert_eq!(a.stats().outbox_entries, 3, "one clear per namespace");
    assert_eq!(outbox(&a, "rate").0, queued + 1);

    recover(&mut server, &[&a, &b, &strict], &a).await;
    let fb = b.namespace::<str, u64>("fees").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();
    let rb = b.namespace::<str, u64>("rate").unwrap();
    assert_eq!(
        (fb.get("f").await, qb.get("q").await, rb.get("r").await),
        (None, None, None),
        "every namespace cleared, untagged keys too"
    );
}

/// Strict tagged calls keep failing fast with Redis down, queue nothing, and leave no local
/// copy; once Redis is back they go through again.
#[tokio::test]
async fn strict_tagged_calls_without_redis_fail_fast_and_drop_local_copies() {
    let mut server = RedisServer::start();
    let cache = node_with_fees(&server).await;
    let fees = cache
        .namespace::<str, u64>("fees")
        .unwrap()
        .with(EntryOptions::new().strict(true))
        .unwrap();
    fees.with(EntryOptions::new().tags(["T"]))
        .unwrap()
        .set("x", 1)
        .await
        .unwrap();
    fees.set("y", 2).await.unwrap();
    server.kill();
    assert_eq!(
        fees.get_local("x").as_deref(),
        Some(&1),
        "unbounded: L1 serves"
    );
    let e = bounded(
        "set_tagged",
        fees.with(EntryOptions::new().tags(["T"]))
            .unwrap()
            .set("x", 3),
    )
    .await
    .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert_eq!(
        fees.get_local("x"),
        None,
        "an unpropagated write leaves no copy"
    );
    let out = bounded(
        "set_many_tagged",
        fees.with(EntryOptions::new().tags(["T"]))
            .unwrap()
            .batch()
            .set([("y", 4)]),
    )
    .await;
    assert!(out[0].as_ref().unwrap_err().is_unavailable(), "{out:?}");
    assert_eq!(fees.get_local("y"), None);
    fees.get_or_load("w", || async { Ok::<_, std::io::Error>(5) })
        .await
        .unwrap();
    assert!(fees.get_local("w").is_some());
    let e = bounded("invalidate_tag", fees.invalidate_tag("T"))
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    // Which keys the tag covered is unknown here: the namespace's L1 is dropped.
    assert_eq!(fees.get_local("w"), None);
    assert_eq!(cache.stats().outbox_entries, 0, "strict: nothing queued");

    server.restart();
    eventually("resubscribed", PATIENCE, || async { cache.is_subscribed() }).await;
    eventually("tagged writes go through again", PATIENCE, || async {
        fees.with(EntryOptions::new().tags(["T"]))
            .unwrap()
            .set("x", 6)
            .await
            .is_ok()
    })
    .await;
    assert_eq!(fees.invalidate_tag("T").await.unwrap(), 1);
}
