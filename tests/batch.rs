//! Batch operations against a real Redis: `get_many`, `get_or_load_many` and `set_many` across
//! the tiers, one MGET / one loader call / one script and message, per-key failures, Redis
//! killed mid-test, and the load/invalidate race forced on a batch read.

mod support;

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::gate::{self, Gated};
use support::listener::{command_calls, is_keys, keys_of, BusListener};
use support::{
    await_applied, envelope, eventually, keys, meta_version, node, node_with_fees, RedisServer,
    PATIENCE,
};
use tiered_cache::{EntryOptions, Error, NamespaceStats, TieredCache};

/// "Never hangs": far above the configured timeouts, not a speed claim.
const NO_HANG: Duration = Duration::from_secs(5);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(NO_HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

fn stats(cache: &TieredCache, ns: &str) -> NamespaceStats {
    *cache.stats().namespace(ns).unwrap()
}

fn values(out: &[Option<Arc<u64>>]) -> Vec<Option<u64>> {
    out.iter().map(|v| v.as_deref().copied()).collect()
}

fn loaded(out: &[tiered_cache::Result<Option<Arc<u64>>>]) -> Vec<Option<u64>> {
    out.iter()
        .map(|r| r.as_ref().unwrap().as_deref().copied())
        .collect()
}

#[tokio::test]
async fn get_many_mixes_tiers_and_asks_redis_once() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();
    qa.set("redis_only", 2).await.unwrap();
    qa.set("gone", 3).await.unwrap();
    qa.invalidate("gone").await.unwrap();
    await_applied(&b, "quote", 2).await;
    qb.set("local", 1).await.unwrap();
    let _: () = server.cmd(&[
        b"SET",
        keys::value("quote", "foreign").as_bytes(),
        b"{\"not\":\"ours\"}",
    ]);

    let before = stats(&b, "quote");
    let (mget, get) = (
        command_calls(&server, "mget"),
        command_calls(&server, "get"),
    );
    let keys = [
        "local",
        "redis_only",
        "absent",
        "foreign",
        "gone",
        "local",
        "redis_only",
    ];
    let out = qb.batch().get(keys).await;
    assert_eq!(
        values(&out),
        [Some(1), Some(2), None, None, None, Some(1), Some(2)]
    );
    assert_eq!(command_calls(&server, "mget"), mget + 1, "one MGET");
    assert_eq!(command_calls(&server, "get"), get, "no single GET");
    let after = stats(&b, "quote");
    assert_eq!(after.l1_hits - before.l1_hits, 2);
    assert_eq!(after.l1_misses - before.l1_misses, 5);
    // "redis_only", asked twice, is fetched once.
    assert_eq!(after.l2_hits - before.l2_hits, 1);
    assert_eq!(after.l2_misses - before.l2_misses, 3);
    assert_eq!(
        after.decode_errors - before.decode_errors,
        1,
        "foreign bytes"
    );
    assert_eq!(qb.get_local("redis_only").as_deref(), Some(&2), "L1 filled");
    assert_eq!(qb.get_local("foreign"), None);
    assert!(qb.batch().get(std::iter::empty()).await.is_empty());
}

#[tokio::test]
async fn get_or_load_many_loads_exactly_the_missing_keys_once() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();
    qa.set("remote", 2).await.unwrap();
    await_applied(&b, "quote", 1).await;
    qb.set("local", 1).await.unwrap();

    let asked = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let load = |asked: Arc<Mutex<Vec<Vec<String>>>>| {
        move |missing: Vec<&'static str>| async move {
            asked
                .lock()
                .unwrap()
                .push(missing.iter().map(|k| k.to_string()).collect());
            let db = |k: &str| match k {
                "m1" => Some(10),
                "m2" => Some(20),
                _ => None,
            };
            Ok::<_, std::io::Error>(missing.iter().map(|k| db(k)).collect())
        }
    };
    let keys = ["local", "m1", "remote", "m2", "nope", "m1"];
    let before = stats(&b, "quote");
    let out = qb.batch().get_or_load(keys, load(asked.clone())).await;
    assert_eq!(
        loaded(&out),
        [Some(1), Some(10), Some(2), Some(20), None, Some(10)]
    );
    assert_eq!(
        *asked.lock().unwrap(),
        [["m1", "m2", "nope"]],
        "one loader call, with exactly the keys neither tier had"
    );
    let after = stats(&b, "quote");
    assert_eq!(after.loads - before.loads, 3);
    // The "not found" too, for the negative TTL.
    assert_eq!(after.fills_stored - before.fills_stored, 3);
    // Written back to Redis: the other node reads them without a loader.
    assert_eq!(
        values(&qa.batch().get(["m1", "m2", "nope"]).await),
        [Some(10), Some(20), None]
    );

    // Again: every key is answered by a tier, "nope" by its cached "not found".
    asked.lock().unwrap().clear();
    let out = qb.batch().get_or_load(keys, load(asked.clone())).await;
    assert_eq!(
        loaded(&out),
        [Some(1), Some(10), Some(2), Some(20), None, Some(10)]
    );
    assert!(asked.lock().unwrap().is_empty());
    // Once the "not found" is gone, the key goes to the loader again.
    qa.invalidate("nope").await.unwrap();
    await_applied(&b, "quote", 2).await;
    let out = qb.batch().get_or_load(keys, load(asked.clone())).await;
    assert_eq!(loaded(&out)[4], None);
    assert_eq!(*asked.lock().unwrap(), [["nope"]]);
    // Nothing missing: no loader call at all.
    asked.lock().unwrap().clear();
    qb.batch()
        .get_or_load(["m1", "local"], load(asked.clone()))
        .await;
    assert!(asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn batch_loader_failures_are_per_key_outcomes() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let q = cache.namespace::<str, u64>("quote").unwrap();
    q.set("here", 1).await.unwrap();

    let out = q
        .batch()
        .get_or_load(["here", "x", "y"], |_| async {
            Err::<Vec<Option<u64>>, _>(std::io::Error::other("db down"))
        })
        .await;
    assert_eq!(*out[0].as_ref().unwrap().as_deref().unwrap(), 1);
    for r in &out[1..] {
        let e = r.as_ref().unwrap_err();
        assert!(e.is_loader() && e.to_string().contains("db down"), "{e}");
    }
    // A list of the wrong length is the loader's error, for each key it was asked for.
    let out = q
        .batch()
        .get_or_load(["x", "here", "y"], |missing| async move {
            assert_eq!(missing, ["x", "y"]);
            Ok::<_, std::io::Error>(vec![Some(5)])
        })
        .await;
    assert!(out[1].is_ok());
    for r in [&out[0], &out[2]] {
        let e = r.as_ref().unwrap_err();
        assert!(e.is_loader(), "{e}");
        assert!(
            e.to_string().contains("returned 1 values for 2 keys"),
            "{e}"
        );
    }
    assert_eq!(stats(&cache, "quote").load_errors, 4);
    // Nothing was cached for them.
    let raw: Option<Vec<u8>> = server.cmd(&[b"GET", keys::value("quote", "x").as_bytes()]);
    assert_eq!(raw, None);
    assert_eq!(values(&q.batch().get(["x", "y"]).await), [None, None]);
}

/// A value whose encoding fails for 0.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Flaky(u64);

impl Serialize for Flaky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 0 {
            return Err(serde::ser::Error::custom("zero cannot be encoded"));
        }
        s.serialize_u64(self.0)
    }
}

#[tokio::test]
async fn set_many_fails_an_unencodable_value_alone() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, Flaky>("quote").unwrap();
    let qb = b.namespace::<str, Flaky>("quote").unwrap();
    let out = qa
        .batch()
        .set([("a", Flaky(1)), ("b", Flaky(0)), ("c", Flaky(3))])
        .await;
    assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
    assert!(matches!(out[1], Err(Error::Encode(_))), "{out:?}");
    let read: Vec<Option<Flaky>> = qb
        .batch()
        .get(["a", "b", "c"])
        .await
        .into_iter()
        .map(|v| v.as_deref().cloned())
        .collect();
    assert_eq!(read, [Some(Flaky(1)), None, Some(Flaky(3))]);
    assert!(qa.batch().set(std::iter::empty()).await.is_empty());
}

#[tokio::test]
async fn set_many_is_one_version_one_message_and_evicts_other_nodes() {
    const N: u64 = 50;
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();
    let names: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let keys = || names.iter().map(String::as_str);

    assert!(qa
        .batch()
        .set(keys().zip(0..))
        .await
        .iter()
        .all(Result::is_ok));
    await_applied(&b, "quote", 1).await;
    assert_eq!(
        values(&qb.batch().get(keys()).await),
        (0..N).map(Some).collect::<Vec<_>>()
    );
    assert!(
        keys().all(|k| qb.get_local(k).is_some()),
        "b caches them all"
    );

    let mut bus = BusListener::start(&server).await;
    let version = meta_version(&server);
    let sent = stats(&a, "quote").invalidations_sent;
    let applied = support::applied(&b, "quote");
    let out = qa.batch().set(keys().zip(100..)).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    qa.invalidate("marker").await.unwrap();

    let messages = bus.until(b"marker").await;
    assert_eq!(messages.len(), 2, "one message for the batch, one marker");
    let (ns, listed) = keys_of(&messages[0]);
    assert!(is_keys(&messages[0]), "a keys message");
    assert_eq!(ns, "quote");
    assert_eq!(listed, names);
    let after = meta_version(&server);
    assert_eq!(
        after,
        version + 2,
        "one version for the batch, one for the marker"
    );
    for k in keys() {
        let raw: Vec<u8> = server.cmd(&[b"GET", keys::value("quote", k).as_bytes()]);
        assert_eq!(
            envelope::version(&raw),
            version + 1,
            "{k}: the batch's version"
        );
    }
    assert_eq!(stats(&a, "quote").invalidations_sent, sent + 2);

    // Node b evicted every key on the one message, and reads the new values.
    await_applied(&b, "quote", applied + 2).await;
    assert!(keys().all(|k| qb.get_local(k).is_none()), "b evicted them");
    let expected: Vec<_> = (100..100 + N).map(Some).collect();
    assert_eq!(values(&qb.batch().get(keys()).await), expected);
    // The writer's own L1 holds the new values, at the batch's version.
    assert!(keys()
        .zip(100..)
        .all(|(k, v)| qa.get_local(k).as_deref() == Some(&v)));
    assert_eq!(qa.local_version("k7"), Some(version + 1));
}

#[tokio::test]
async fn batch_calls_degrade_when_redis_is_killed() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let fees = a.namespace::<str, u64>("fees").unwrap();
    let rates = a.namespace::<str, u64>("rate").unwrap();
    assert!(fees
        .batch()
        .set([("x", 1), ("y", 2)])
        .await
        .iter()
        .all(Result::is_ok));

    server.kill();
    // Strict namespace: L1 is bypassed within the bound; the loader answers.
    eventually("rate bypasses L1", PATIENCE, || async {
        stats(&a, "rate").l1_bypassed
    })
    .await;
    let calls = Arc::new(Mutex::new(0));
    let load = |calls: Arc<Mutex<u32>>| {
        move |missing: Vec<&'static str>| async move {
            *calls.lock().unwrap() += 1;
            Ok::<_, std::io::Error>(missing.iter().map(|_| Some(7)).collect())
        }
    };
    let out = bounded(
        "get_or_load_many",
        rates.batch().get_or_load(["p", "q"], load(calls.clone())),
    )
    .await;
    assert_eq!(loaded(&out), [Some(7), Some(7)]);
    assert_eq!(*calls.lock().unwrap(), 1);
    assert_eq!(rates.get_local("p"), None, "nothing enters a bypassed L1");
    assert_eq!(
        values(&bounded("get_many", rates.batch().get(["p"])).await),
        [None]
    );

    // Availability first: L1 keeps answering, loads are kept in L1.
    let out = bounded("get_many", fees.batch().get(["x", "y", "z"])).await;
    assert_eq!(values(&out), [Some(1), Some(2), None]);
    let out = bounded(
        "get_or_load_many",
        fees.batch().get_or_load(["x", "z"], load(calls.clone())),
    )
    .await;
    assert_eq!(loaded(&out), [Some(1), Some(7)]);
    assert_eq!(fees.get_local("z").as_deref(), Some(&7));

    // Writes are queued as `set` queues them: Ok, and (this namespace trades the bound for
    // availability) this node reads its own writes meanwhile.
    let queued = stats(&a, "fees").outbox_queued;
    let out = bounded("set_many", fees.batch().set([("x", 5), ("w", 6)])).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(stats(&a, "fees").outbox_queued, queued + 2);
    assert_eq!(fees.get_local("x").as_deref(), Some(&5));
    // A strict handle refuses instead, and keeps no unpropagated copy.
    let out = bounded(
        "strict set_many",
        fees.with(EntryOptions::new().strict(true))
            .unwrap()
            .batch()
            .set([("v", 9)]),
    )
    .await;
    assert!(out[0].as_ref().unwrap_err().is_unavailable(), "{out:?}");
    assert_eq!(fees.get_local("v"), None);
    // Tagged writes are queued as invalidations (a replay would lose the tags): Ok, and no
    // copy anywhere, not even here.
    let (queued, dropped) = (
        stats(&a, "fees").outbox_queued,
        stats(&a, "fees").outbox_dropped,
    );
    let out = bounded(
        "set_many_tagged",
        fees.with(EntryOptions::new().tags(["tag"]))
            .unwrap()
            .batch()
            .set([("t", 1)]),
    )
    .await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(fees.get_local("t"), None);
    assert_eq!(stats(&a, "fees").outbox_queued, queued + 1);
    assert_eq!(stats(&a, "fees").outbox_dropped, dropped + 1);
    assert!(stats(&a, "fees").l2_errors > 0);

    server.restart();
    eventually("resubscribed", PATIENCE, || async { a.is_subscribed() }).await;
    eventually("the queue is replayed", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
    // Another node finds the queued writes in Redis (which restarted empty).
    let b = node_with_fees(&server).await;
    let fees_b = b.namespace::<str, u64>("fees").unwrap();
    assert_eq!(
        values(&fees_b.batch().get(["x", "w", "v", "t"]).await),
        [Some(5), Some(6), None, None]
    );
    eventually("writes go through again", PATIENCE, || async {
        fees.batch().set([("x", 8)]).await[0].is_ok()
    })
    .await;
    assert_eq!(values(&fees.batch().get(["x"]).await), [Some(8)]);
}

#[tokio::test]
async fn set_many_after_an_outage_leaves_the_batch_value_last() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let fees = a.namespace::<str, u64>("fees").unwrap();
    server.kill();
    bounded("queued set", fees.set("x", 1)).await.unwrap();
    server.restart();
    // Whether the queue is still pending (the batch joins it), the breaker still open (the
    // batch is queued behind it) or the queue replayed (the batch goes straight to Redis), the
    // batch's value is the last word. Which of the three happens is up to timing: this checks
    // the outcome, not the path.
    let out = bounded("set_many", fees.batch().set([("x", 2), ("y", 3)])).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    eventually("the queue is replayed", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
    let b = node_with_fees(&server).await;
    let fees_b = b.namespace::<str, u64>("fees").unwrap();
    assert_eq!(
        values(&fees_b.batch().get(["x", "y"]).await),
        [Some(2), Some(3)]
    );
}

/// The load/invalidate race on a batch read: B holds between its MGET and its L1 insert while
/// A's `set_many` is applied on B. B may answer with what it read, but must not keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_racing_a_set_many_keeps_no_stale_value() {
    let _serial = gate::SERIAL.lock().await;
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    let qa = a.namespace::<str, Gated>("quote").unwrap();
    let qb = b.namespace::<str, Gated>("quote").unwrap();
    qa.batch().set([("K", Gated(1)), ("L", Gated(1))]).await;
    await_applied(&b, "quote", 1).await;

    gate::arm();
    let reader = {
        let qb = qb.clone();
        tokio::spawn(async move { qb.batch().get(["K", "L"]).await })
    };
    gate::wait_reading().await;
    let before = support::applied(&b, "quote");
    qa.batch().set([("K", Gated(2)), ("L", Gated(2))]).await;
    await_applied(&b, "quote", before + 1).await;
    gate::release();
    let read = reader.await.unwrap();
    assert_eq!(read[0].as_deref(), Some(&Gated(1)), "read before the write");
    assert_eq!(qb.get_local("K"), None, "stale value left in B's L1");
    assert_eq!(qb.get_local("L"), None, "stale value left in B's L1");
    let fresh: Vec<_> = qb
        .batch()
        .get(["K", "L"])
        .await
        .into_iter()
        .map(|v| v.as_deref().cloned())
        .collect();
    assert_eq!(fresh, [Some(Gated(2)), Some(Gated(2))]);
}

#[tokio::test]
async fn invalidate_many_is_one_script_and_one_message_and_evicts_other_nodes() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let b = node_with_fees(&server).await;
    let qa = a.namespace::<str, u64>("quote").unwrap();
    let qb = b.namespace::<str, u64>("quote").unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let keys = || names.iter().map(String::as_str);
    assert!(qa
        .batch()
        .set(keys().zip(0..))
        .await
        .iter()
        .all(Result::is_ok));
    await_applied(&b, "quote", 1).await;
    qb.batch().get(keys()).await;
    assert!(
        keys().all(|k| qb.get_local(k).is_some()),
        "b caches them all"
    );

    let mut bus = BusListener::start(&server).await;
    let applied = support::applied(&b, "quote");
    let sent = stats(&a, "quote").invalidations_sent;
    let version = meta_version(&server);
    // Duplicates are invalidated once.
    qa.batch()
        .invalidate(["k1", "k3", "k5", "k3"])
        .await
        .unwrap();
    qa.invalidate("marker").await.unwrap();

    let messages = bus.until(b"marker").await;
    assert_eq!(messages.len(), 2, "one message for the batch, one marker");
    let (ns, listed) = keys_of(&messages[0]);
    assert!(is_keys(&messages[0]), "a keys message");
    assert_eq!(ns, "quote");
    assert_eq!(listed, ["k1", "k3", "k5"]);
    let after = meta_version(&server);
    assert_eq!(after, version + 2, "one version for the batch");
    assert_eq!(stats(&a, "quote").invalidations_sent, sent + 2);

    await_applied(&b, "quote", applied + 2).await;
    for (i, k) in keys().enumerate() {
        assert_eq!(
            qb.get_local(k).is_some(),
            i % 2 == 0,
            "{k}: only the listed keys leave b's L1"
        );
    }
    // Redis holds tombstones: a node with an empty L1 finds nothing for the listed keys.
    let c = node(&server).await;
    let qc = c.namespace::<str, u64>("quote").unwrap();
    assert_eq!(
        values(&qc.batch().get(keys()).await),
        [Some(0), None, Some(2), None, Some(4), None]
    );

    // Redis down: queued like single invalidations, and the local copies go at once.
    let fees_a = a.namespace::<str, u64>("fees").unwrap();
    let fees_b = b.namespace::<str, u64>("fees").unwrap();
    assert!(fees_a
        .batch()
        .set([("x", 1), ("y", 2), ("z", 3)])
        .await
        .iter()
        .all(Result::is_ok));
    await_applied(&b, "fees", 1).await;
    fees_b.batch().get(["x", "y", "z"]).await;
    assert!(fees_b.get_local("y").is_some());
    server.kill();
    let queued = stats(&a, "fees").outbox_queued;
    bounded("invalidate_many", fees_a.batch().invalidate(["x", "y"]))
        .await
        .unwrap();
    assert_eq!(stats(&a, "fees").outbox_queued, queued + 2);
    assert_eq!(fees_a.get_local("x"), None);
    // A strict handle refuses instead of queuing.
    let strict = fees_a.with(EntryOptions::new().strict(true)).unwrap();
    let err = bounded(
        "strict invalidate_many",
        strict.batch().invalidate(["z", "w"]),
    )
    .await
    .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");

    // Back up: the queue is replayed, and b drops its copies of the queued keys.
    server.restart();
    eventually("b drops the queued keys", PATIENCE, || async {
        fees_b.get_local("x").is_none() && fees_b.get_local("y").is_none()
    })
    .await;
    eventually("outbox drained", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
    // The restarted Redis kept nothing: the tombstones there are the replayed invalidations.
    for k in ["x", "y"] {
        let raw: Vec<u8> = server.cmd(&[b"GET", keys::value("fees", k).as_bytes()]);
        assert!(
            envelope::has_flag(&raw, envelope::FLAG_TOMBSTONE),
            "{k}: a tombstone in Redis"
        );
    }
}

#[tokio::test]
async fn invalidate_many_sends_one_message_per_thousand_keys_and_lands_after_queued_writes() {
    let mut server = RedisServer::start();
    // The message sizes are checked on a node with a long L2 timeout: with the 200 ms of
    // `node_with_fees`, a 1000-key script on a loaded machine can time out, and the chunk is
    // then queued and replayed in smaller batches. Only the second half kills Redis.
    let big = support::node_with(&server, |b| b.l2_timeout(Duration::from_secs(5))).await;
    let qa = big.namespace::<str, u64>("quote").unwrap();
    let names: Vec<String> = (0..2001).map(|i| format!("k{i}")).collect();
    let mut bus = BusListener::start(&server).await;
    qa.batch()
        .invalidate(names.iter().map(String::as_str))
        .await
        .unwrap();
    qa.invalidate("marker").await.unwrap();
    let messages = bus.until(b"marker").await;
    let sizes: Vec<usize> = messages.iter().map(|m| keys_of(m).1.len()).collect();
    assert_eq!(sizes, [1000, 1000, 1, 1], "three batches, then the marker");

    // A strict call after a queued write of one of its keys: whichever drains the queue (the
    // replayer, or the strict call key by key), the write lands first, then the invalidation,
    // so Redis ends with the key invalidated, never with the queued value.
    let a = node_with_fees(&server).await;
    let b = node_with_fees(&server).await;
    let fa = a.namespace::<str, u64>("fees").unwrap();
    let fb = b.namespace::<str, u64>("fees").unwrap();
    server.kill();
    bounded("queued set", fa.set("x", 1)).await.unwrap();
    assert_eq!(stats(&a, "fees").outbox_queued, 1);
    server.restart();
    eventually("strict invalidate_many lands", PATIENCE, || async {
        fa.with(EntryOptions::new().strict(true))
            .unwrap()
            .batch()
            .invalidate(["x", "y"])
            .await
            .is_ok()
    })
    .await;
    eventually("outbox drained", PATIENCE, || async {
        a.stats().outbox_entries == 0
    })
    .await;
    assert_eq!(fb.get("x").await, None, "the invalidation is the last word");
    let raw: Vec<u8> = server.cmd(&[b"GET", keys::value("fees", "x").as_bytes()]);
    assert!(
        envelope::has_flag(&raw, envelope::FLAG_TOMBSTONE),
        "a tombstone in Redis"
    );
}

#[tokio::test]
async fn a_failed_invalidate_many_evicts_every_listed_key_locally() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let fees = a.namespace::<str, u64>("fees").unwrap();
    let names: Vec<String> = (0..1500).map(|i| format!("k{i:04}")).collect();
    let keys = || names.iter().map(String::as_str);
    assert!(fees
        .batch()
        .set(keys().zip(0..))
        .await
        .iter()
        .all(Result::is_ok));
    assert!(keys().all(|k| fees.get_local(k).is_some()));
    server.kill();
    // Strict: the first batch of 1000 fails, and the keys of the second batch, never sent,
    // must not stay in L1 either.
    let err = bounded(
        "strict invalidate_many",
        fees.with(EntryOptions::new().strict(true))
            .unwrap()
            .batch()
            .invalidate(keys()),
    )
    .await
    .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(fees.get_local("k1499"), None, "a key of the second batch");
    assert!(keys().all(|k| fees.get_local(k).is_none()));
}

/// A node with batch-policy namespaces: `slow` (hard timeout 100 ms), `safe` (300 ms TTL,
/// fail-safe 30 s), `locked` (fleet lock) and `soft` (soft and hard timeouts).
async fn policy_node(server: &RedisServer) -> TieredCache {
    use tiered_cache::NamespacePolicy;
    let p = |ttl: Duration| NamespacePolicy::new(ttl).staleness_bound(support::LOOSE_BOUND);
    let ms = Duration::from_millis;
    support::node_with(server, |b| {
        b.namespace("slow", p(Duration::from_secs(60)).hard_timeout(ms(100)))
            .namespace("safe", p(ms(300)).fail_safe(Duration::from_secs(30)))
            .namespace(
                "locked",
                p(Duration::from_secs(60)).fleet_single_flight(Duration::from_secs(1)),
            )
            .namespace(
                "soft",
                p(Duration::from_secs(60))
                    .fail_safe(Duration::from_secs(30))
                    .soft_timeout(ms(50))
                    .hard_timeout(ms(500)),
            )
            // Not about Redis's timeouts: a loaded machine's slow MGET must not turn a
            // fail-safe copy into a miss (seen once in ten runs with both cores busy).
            .l2_timeout(Duration::from_secs(2))
    })
    .await
}

#[tokio::test]
async fn a_batch_load_meets_the_namespaces_hard_timeout() {
    let server = RedisServer::start();
    let cache = policy_node(&server).await;
    let slow = cache.namespace::<str, u64>("slow").unwrap();
    let out = slow
        .batch()
        .get_or_load(["a", "b"], |_| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, std::io::Error>(vec![Some(1), Some(2)])
        })
        .await;
    for r in &out {
        assert!(matches!(r, Err(Error::LoaderTimeout(_))), "{out:?}");
    }
    assert_eq!(cache.stats().namespace("slow").unwrap().loader_timeouts, 1);
}

#[tokio::test]
async fn a_failed_batch_load_serves_fail_safe_copies_nobody_invalidated() {
    let server = RedisServer::start();
    let cache = policy_node(&server).await;
    let safe = cache.namespace::<str, u64>("safe").unwrap();
    let loaded = safe
        .batch()
        .get_or_load(["a", "b", "c"], |_| async {
            Ok::<_, std::io::Error>(vec![Some(1), Some(2), Some(3)])
        })
        .await;
    assert!(loaded.iter().all(|r| r.is_ok()), "{loaded:?}");
    eventually("the values expire (300 ms TTL)", PATIENCE, || async {
        ["a", "b", "c"].iter().all(|k| safe.get_local(k).is_none())
    })
    .await;
    // "b" is invalidated: its copy must not be served.
    safe.invalidate("b").await.unwrap();
    let out = safe
        .batch()
        .get_or_load(["a", "b", "c"], |_| async {
            Err::<Vec<Option<u64>>, _>(std::io::Error::other("source down"))
        })
        .await;
    assert_eq!(out[0].as_ref().unwrap().as_deref(), Some(&1), "{out:?}");
    assert!(out[1].as_ref().unwrap_err().is_loader(), "{out:?}");
    assert_eq!(out[2].as_ref().unwrap().as_deref(), Some(&3), "{out:?}");
    assert_eq!(cache.stats().namespace("safe").unwrap().stale_served, 2);
    // Served as fresh for the throttle: the failing source is not asked again at once.
    assert_eq!(safe.get_local("a").as_deref(), Some(&1));
}

#[tokio::test]
async fn a_batch_load_refuses_policies_it_cannot_apply() {
    let server = RedisServer::start();
    let cache = policy_node(&server).await;
    for ns in ["locked", "soft"] {
        let handle = cache.namespace::<str, u64>(ns).unwrap();
        let out = handle
            .batch()
            .get_or_load(["a"], |_| async {
                Err::<Vec<Option<u64>>, _>(std::io::Error::other("loader called"))
            })
            .await;
        assert!(
            out[0].as_ref().unwrap_err().is_invalid_options(),
            "{ns}: {out:?}"
        );
        // Batch reads and writes are fine there, and so is a batch load the tiers answer:
        // only the keys its loader would be asked for are refused.
        handle.batch().set([("a", 1)]).await[0].as_ref().unwrap();
        assert_eq!(handle.batch().get(["a"]).await[0].as_deref(), Some(&1));
        let out = handle
            .batch()
            .get_or_load(["a", "b"], |_| async {
                Err::<Vec<Option<u64>>, _>(std::io::Error::other("loader called"))
            })
            .await;
        assert_eq!(
            out[0].as_ref().unwrap().as_deref(),
            Some(&1),
            "{ns}: {out:?}"
        );
        assert!(
            out[1].as_ref().unwrap_err().is_invalid_options(),
            "{ns}: {out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_loads_and_single_loads_share_flights_both_ways() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let server = RedisServer::start();
    let cache = node(&server).await;
    let quotes = cache.namespace::<str, u64>("quote").unwrap();
    let coalesced = |c: &TieredCache| stats(c, "quote").coalesced_loads;

    // A single-key load is in flight for "a": a batch asking for "a" and "b" waits for it
    // and asks its own loader for "b" only.
    let single_calls = Arc::new(AtomicU32::new(0));
    let single = {
        let (quotes, calls, node) = (quotes.clone(), single_calls.clone(), cache.clone());
        tokio::spawn(async move {
            quotes
                .get_or_load("a", move || async move {
                    calls.fetch_add(1, SeqCst);
                    // Held until the batch has joined this flight.
                    eventually("the batch joins the flight", PATIENCE, || async {
                        coalesced(&node) >= 1
                    })
                    .await;
                    Ok::<_, std::io::Error>(1)
                })
                .await
                .unwrap()
        })
    };
    eventually("the single load starts", PATIENCE, || async {
        single_calls.load(SeqCst) == 1
    })
    .await;
    let asked = Arc::new(Mutex::new(Vec::new()));
    let out = bounded(
        "a batch joining a single flight",
        quotes.batch().get_or_load(["a", "b"], |keys| {
            let asked = asked.clone();
            async move {
                asked
                    .lock()
                    .unwrap()
                    .extend(keys.iter().map(|k| k.to_string()));
                Ok::<_, std::io::Error>(keys.iter().map(|_| Some(2)).collect())
            }
        }),
    )
    .await;
    assert_eq!(
        loaded(&out),
        vec![Some(1), Some(2)],
        "\"a\" came from the single flight"
    );
    assert_eq!(*asked.lock().unwrap(), vec!["b".to_string()]);
    assert_eq!(*single.await.unwrap(), 1);
    assert_eq!(single_calls.load(SeqCst), 1);

    // The reverse: a batch leads the load of "c"; a get_or_load of "c" meanwhile waits for it
    // and never calls its own loader.
    let before = coalesced(&cache);
    let started = Arc::new(AtomicU32::new(0));
    let batch = {
        let (quotes, node, started) = (quotes.clone(), cache.clone(), started.clone());
        tokio::spawn(async move {
            let out = quotes
                .batch()
                .get_or_load(["c"], move |keys| async move {
                    started.fetch_add(1, SeqCst);
                    eventually(
                        "the single caller joins the batch's flight",
                        PATIENCE,
                        || async { coalesced(&node) > before },
                    )
                    .await;
                    Ok::<_, std::io::Error>(keys.iter().map(|_| Some(3)).collect())
                })
                .await;
            loaded(&out)
        })
    };
    eventually("the batch's load starts", PATIENCE, || async {
        started.load(SeqCst) == 1
    })
    .await;
    let got = bounded(
        "a single load joining a batch's flight",
        quotes.get_or_load("c", || async {
            Err::<u64, _>(std::io::Error::other("the single loader ran"))
        }),
    )
    .await
    .unwrap();
    assert_eq!(*got, 3);
    assert_eq!(batch.await.unwrap(), vec![Some(3)]);
}

#[tokio::test]
async fn batch_loads_cache_not_found_for_the_negative_ttl_on_both_tiers() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let server = RedisServer::start();
    let a = node(&server).await;
    let b = node(&server).await;
    for (i, cache) in [&a, &b, &a].into_iter().enumerate() {
        let quotes = cache.namespace::<str, u64>("quote").unwrap();
        let tagged = quotes.with(EntryOptions::new().tag("t")).unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let load = |keys: Vec<&str>| {
            calls.fetch_add(keys.len() as u32, SeqCst);
            let values: Vec<Option<u64>> =
                keys.iter().map(|k| (*k == "here").then_some(5)).collect();
            async move { Ok::<_, std::io::Error>(values) }
        };
        // Untagged and tagged batches, on the first node then a second one (from Redis) then
        // the first again (from L1).
        let plain = quotes.batch().get_or_load(["here", "gone"], load).await;
        assert_eq!(loaded(&plain), vec![Some(5), None], "pass {i}");
        let out = tagged.batch().get_or_load(["t_here", "t_gone"], load).await;
        assert_eq!(loaded(&out), vec![None, None], "pass {i}");
        let expected = if i == 0 { 4 } else { 0 };
        assert_eq!(
            calls.load(SeqCst),
            expected,
            "pass {i}: \"not found\" was cached"
        );
        // A single optional load finds the batch's "not found" too.
        let single = quotes
            .get_or_load_optional("gone", || async {
                Err::<Option<u64>, _>(std::io::Error::other("loader ran"))
            })
            .await
            .unwrap();
        assert_eq!(single, None, "pass {i}");
    }
    // The tagged "not found"s joined their tag: invalidating it drops them everywhere.
    let quotes = a.namespace::<str, u64>("quote").unwrap();
    assert_eq!(quotes.invalidate_tag("t").await.unwrap(), 2);
    await_applied(&b, "quote", 1).await;
    let calls = Arc::new(AtomicU32::new(0));
    let out = {
        let calls = calls.clone();
        b.namespace::<str, u64>("quote")
            .unwrap()
            .batch()
            .get_or_load(["t_gone"], move |keys| async move {
                calls.fetch_add(1, SeqCst);
                Ok::<_, std::io::Error>(keys.iter().map(|_| Some(9)).collect())
            })
            .await
    };
    assert_eq!(loaded(&out), vec![Some(9)]);
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_on_a_cancelled_batch_loads_the_key_itself() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let server = RedisServer::start();
    let cache = node(&server).await;
    let quotes = cache.namespace::<str, u64>("quote").unwrap();
    // Batch A leads "k" and never finishes its load.
    let started = Arc::new(AtomicU32::new(0));
    let a = {
        let (quotes, started) = (quotes.clone(), started.clone());
        tokio::spawn(async move {
            quotes
                .batch()
                .get_or_load(["k"], move |_| async move {
                    started.fetch_add(1, SeqCst);
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(vec![Some(0)])
                })
                .await
        })
    };
    eventually("A's load starts", PATIENCE, || async {
        started.load(SeqCst) == 1
    })
    .await;
    // Batch B waits on A's flight for "k", its own loader unspent.
    let b = {
        let quotes = quotes.clone();
        tokio::spawn(async move {
            quotes
                .batch()
                .get_or_load(["k"], |keys| async move {
                    Ok::<_, std::io::Error>(keys.iter().map(|_| Some(2)).collect())
                })
                .await
        })
    };
    eventually("B joins A's flight", PATIENCE, || async {
        stats(&cache, "quote").coalesced_loads >= 1
    })
    .await;
    // A's caller gives up: B loads "k" itself rather than failing.
    a.abort();
    let out = bounded("B after A was cancelled", b).await.unwrap();
    assert_eq!(loaded(&out), vec![Some(2)]);
}
