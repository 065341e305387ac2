//! Redis evicting the library's bookkeeping under memory pressure (`allkeys-lru`): a tag set
//! evicted while the values it listed live on (in Redis or in some node's L1) must not turn
//! `invalidate_tag` into a no-op. The tag registry sees the set gone before its time and the
//! namespace is cleared instead; a set that merely expired with its values clears nothing.

mod support;

use std::time::Duration;
use support::{eventually, keys, RedisServer, PATIENCE};
use tiered_cache::{EntryOptions, Namespace, TieredCache};

const TAG: &str = "window-1";

fn tagged(node: &TieredCache) -> Namespace<str, u64> {
    node.namespace::<str, u64>("rate")
        .unwrap()
        .with(EntryOptions::new().tag(TAG))
        .unwrap()
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.cmd::<i64>(&[b"EXISTS", key.as_bytes()]) == 1
}

/// Puts Redis under `allkeys-lru` and makes it evict every key of `gone` and none of `hot`.
/// Redis's LRU clock ticks in seconds and looks at a sample of keys, so: few large fillers
/// and the largest sample (every key is looked at on each eviction, as exact LRU would);
/// `gone` idle two seconds, a first batch of filler one, `hot` just touched; then more
/// filler, each evicting the idlest first. Returns the keys evicted, or, when Redis's sampling
/// took a key of `hot` or kept one of `gone` (it is approximate), why the setting failed.
async fn evict_by_pressure(
    server: &RedisServer,
    gone: &[String],
    hot: &[String],
) -> Result<u64, String> {
    let set = |k: &[u8], v: &[u8]| server.cmd::<()>(&[b"CONFIG", b"SET", k, v]);
    set(b"maxmemory-policy", b"allkeys-lru");
    set(b"maxmemory-samples", b"64");
    let limit = server.info().used_memory.unwrap() + 6 * 1024 * 1024;
    set(b"maxmemory", limit.to_string().as_bytes());
    let mut conn = server.conn();
    // Just under 256 KiB: the allocator's size class, so 16 of them take 4 MiB.
    let filler = vec![b'x'; 250_000];
    let mut put = |name: String| {
        let _: () = redis::cmd("SET")
            .arg(&name)
            .arg(&filler)
            .query(&mut conn)
            .unwrap();
        name
    };
    let first: Vec<String> = (0..16).map(|i| put(format!("filler:old:{i}"))).collect();
    let idle = |k: &str| {
        let idle = server.cmd::<Option<i64>>(&[b"OBJECT", b"IDLETIME", k.as_bytes()]);
        idle.unwrap_or_else(|| panic!("{k} was evicted before the pressure"))
    };
    eventually("the keys to evict idle longest", PATIENCE, || async {
        gone.iter().all(|k| idle(k) >= 2) && first.iter().all(|k| idle(k) >= 1)
    })
    .await;
    let mut touch = redis::cmd("TOUCH");
    touch.arg(hot);
    let touched: usize = touch.query(&mut server.conn()).unwrap();
    assert_eq!(touched, hot.len(), "a hot key was gone before the pressure");
    for i in 0..64 {
        put(format!("filler:new:{i}"));
        if gone.iter().all(|k| !exists(server, k)) {
            if let Some(k) = hot.iter().find(|k| !exists(server, k)) {
                return Err(format!("{k} was evicted as well, at filler {i}"));
            }
            set(b"maxmemory", b"0");
            let evicted = server.info().evicted_keys.unwrap();
            return Ok(evicted);
        }
    }
    Err(format!("{gone:?} survived 16 MiB of filler"))
}

/// Tagged values on a, in b's L1 and in Redis; Redis evicts the tag set (and, unless
/// `registry_kept`, the namespace's tag registry) but keeps the values and the meta hash;
/// with `written_after`, a tagged write then starts a new set holding only its own key.
/// Invalidating the tag must still drop every value on both nodes.
async fn evicted_tag_scenario(registry_kept: bool, written_after: bool) {
    // Only the setting is tried again (a fresh server each time), never what is asserted.
    let mut failed = Vec::new();
    while failed.len() < 4 {
        match attempt(registry_kept, written_after).await {
            Ok(()) => return,
            Err(why) => failed.push(why),
        }
    }
    panic!("the eviction could not be set up: {failed:?}");
}

async fn attempt(registry_kept: bool, written_after: bool) -> Result<(), String> {
    let server = RedisServer::start();
    let (a, b) = (support::node(&server).await, support::node(&server).await);
    let (ta, tb) = (tagged(&a), tagged(&b));
    let names: Vec<String> = (0..20).map(|i| format!("pos{i}")).collect();
    for r in ta.batch().set(names.iter().map(|k| (k.as_str(), 1))).await {
        r.unwrap();
    }
    for k in &names {
        eventually("b holds the tagged value in L1", PATIENCE, || async {
            tb.get(k).await.map(|v| *v) == Some(1) && tb.get_local(k).is_some()
        })
        .await;
    }
    let registry = keys::default().tag_registry_key("rate");
    let mut hot: Vec<String> = names.iter().map(|k| keys::value("rate", k)).collect();
    hot.push(keys::meta());
    let mut gone = vec![keys::tag("rate", TAG)];
    if registry_kept {
        hot.push(registry);
    } else {
        gone.push(registry);
    }
    let evicted = evict_by_pressure(&server, &gone, &hot).await?;
    println!("FIGURE eviction: {gone:?} went after {evicted} keys were evicted");
    if written_after {
        ta.set("late", 1).await.unwrap();
    }
    a.invalidate_tag(TAG).await.unwrap();
    for k in &names {
        eventually("b dropped every tagged value", PATIENCE, || async {
            tb.get_local(k).is_none()
        })
        .await;
        assert_eq!(
            tb.get(k).await,
            None,
            "b read {k} from Redis after the tag went"
        );
        assert_eq!(ta.get(k).await, None, "a read {k} after the tag went");
    }
    // Tagged writes after it start a fresh registry and are invalidated by key again.
    ta.set("fresh", 2).await.unwrap();
    eventually("b reads the fresh value", PATIENCE, || async {
        tb.get("fresh").await.map(|v| *v) == Some(2)
    })
    .await;
    assert_eq!(a.invalidate_tag(TAG).await.unwrap(), 1, "listed by its set");
    eventually("b dropped the fresh value", PATIENCE, || async {
        tb.get_local("fresh").is_none()
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_whose_set_was_evicted_still_drops_every_value_it_listed() {
    evicted_tag_scenario(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_set_evicted_then_restarted_by_a_write_is_not_trusted() {
    evicted_tag_scenario(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_whose_set_and_registry_were_evicted_still_drops_every_value() {
    evicted_tag_scenario(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_set_that_expired_with_its_values_clears_nothing() {
    let server = RedisServer::start();
    let (a, b) = (support::node(&server).await, support::node(&server).await);
    let short = a
        .namespace::<str, u64>("rate")
        .unwrap()
        .with(EntryOptions::new().tag(TAG).ttl(Duration::from_millis(300)))
        .unwrap();
    short.set("brief", 1).await.unwrap();
    let other = b.namespace::<str, u64>("rate").unwrap();
    a.namespace::<str, u64>("rate")
        .unwrap()
        .set("other", 1)
        .await
        .unwrap();
    eventually("b holds the untagged value in L1", PATIENCE, || async {
        other.get("other").await.map(|v| *v) == Some(1) && other.get_local("other").is_some()
    })
    .await;
    let set = keys::tag("rate", TAG);
    eventually("the tag set expired", PATIENCE, || async {
        !exists(&server, &set)
    })
    .await;
    assert_eq!(a.invalidate_tag(TAG).await.unwrap(), 0);
    // The clear, had there been one, would have reached b with the tag message: a write
    // after it, seen by b, proves b has applied both.
    a.namespace::<str, u64>("rate")
        .unwrap()
        .set("marker", 1)
        .await
        .unwrap();
    eventually("b saw the marker", PATIENCE, || async {
        other.get("marker").await.map(|v| *v) == Some(1)
    })
    .await;
    // Nothing reads `other` into b's L1 again: if a clear dropped it, this times out (a
    // loaded machine may only have it bypassed a while).
    eventually("b still holds the untagged value", PATIENCE, || async {
        other.get_local("other").map(|v| *v) == Some(1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touched_tagged_value_keeps_its_tag_set_alive() {
    let server = RedisServer::start();
    let (a, b) = (support::node(&server).await, support::node(&server).await);
    let with = |n: &TieredCache, ttl: u64| {
        n.namespace::<str, u64>("rate")
            .unwrap()
            .with(EntryOptions::new().tag(TAG).ttl(Duration::from_millis(ttl)))
            .unwrap()
    };
    with(&a, 3_000).set("slide", 1).await.unwrap();
    // Extended well past the 3 s its set was made for: the set must follow, or it expires
    // first and the tag no longer finds the value.
    assert!(with(&a, 20_000).touch("slide").await.unwrap());
    let set = keys::tag("rate", TAG);
    let pttl: i64 = server.cmd(&[b"PTTL", set.as_bytes()]);
    assert!(pttl > 10_000, "the tag set lives {pttl} ms, the value 20 s");
    let tb = tagged(&b);
    eventually("b holds the value in L1", PATIENCE, || async {
        tb.get("slide").await.map(|v| *v) == Some(1) && tb.get_local("slide").is_some()
    })
    .await;
    assert_eq!(a.invalidate_tag(TAG).await.unwrap(), 1);
    eventually("b dropped it", PATIENCE, || async {
        tb.get_local("slide").is_none()
    })
    .await;
    assert_eq!(tb.get("slide").await, None);
}
