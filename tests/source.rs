//! Writes ordered by the source (`set_if_newer`, `invalidate_if_newer`): writers that carry a
//! database LSN or log offset land in the source's order whatever order they arrive in, on
//! every node, against a real `redis-server`.

mod support;

use std::sync::Arc;
use support::{await_applied, eventually, node, node_with_fees, RedisServer, PATIENCE};
use tiered_cache::{EntryOptions, Error, SourceWrite};

#[tokio::test]
async fn a_late_older_write_is_superseded_on_every_node() {
    let server = RedisServer::start();
    let (a, b) = (node(&server).await, node(&server).await);
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    assert_eq!(
        ra.set_if_newer("k", 12, 12).await.unwrap(),
        SourceWrite::Applied
    );
    await_applied(&b, "rate", 1).await;
    assert_eq!(rb.get("k").await.map(|v| *v), Some(12));
    // Version 11 arrives late, through the other node.
    assert_eq!(
        rb.set_if_newer("k", 11, 11).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(
        rb.get_local("k"),
        None,
        "a superseded write drops b's copy, older or not"
    );
    assert_eq!(rb.get("k").await.map(|v| *v), Some(12));
    assert_eq!(ra.get("k").await.map(|v| *v), Some(12));
    // The same version again (a redelivery) changes nothing; a newer one lands.
    assert_eq!(
        ra.set_if_newer("k", 99, 12).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(
        rb.set_if_newer("k", 13, 13).await.unwrap(),
        SourceWrite::Applied
    );
    eventually("a reads 13", PATIENCE, || async {
        ra.get("k").await.map(|v| *v) == Some(13)
    })
    .await;
}

#[tokio::test]
async fn a_delete_at_the_source_is_not_undone_by_an_older_update() {
    let server = RedisServer::start();
    let (a, b) = (node(&server).await, node(&server).await);
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    ra.set_if_newer("k", 10, 10).await.unwrap();
    assert_eq!(
        ra.invalidate_if_newer("k", 13).await.unwrap(),
        SourceWrite::Applied
    );
    assert_eq!(
        rb.set_if_newer("k", 12, 12).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(rb.get("k").await, None, "the delete holds");
    // A load after the delete keeps its source version: the late update still cannot land.
    let loaded = rb
        .get_or_load("k", || async { Ok::<_, std::io::Error>(14) })
        .await
        .unwrap();
    assert_eq!(*loaded, 14);
    assert_eq!(
        ra.set_if_newer("k", 12, 12).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(ra.get("k").await.map(|v| *v), Some(14));
    assert_eq!(
        ra.invalidate_if_newer("k", 11).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(
        ra.set_if_newer("k", 15, 15).await.unwrap(),
        SourceWrite::Applied
    );
}

/// A plain invalidation, a tag's, keeps the source version of what it replaces: a late older
/// `set_if_newer` still cannot land after it.
#[tokio::test]
async fn plain_invalidations_keep_the_source_version() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    ra.set_if_newer("k", 5, 5).await.unwrap();
    ra.invalidate("k").await.unwrap();
    assert_eq!(
        ra.set_if_newer("k", 3, 3).await.unwrap(),
        SourceWrite::Superseded
    );
    ra.batch().invalidate(["k"]).await.unwrap();
    assert_eq!(
        ra.set_if_newer("k", 4, 4).await.unwrap(),
        SourceWrite::Superseded
    );
    let tagged = ra.with(EntryOptions::new().tag("t")).unwrap();
    tagged.set("j", 1).await.unwrap();
    ra.set_if_newer("j", 9, 9).await.unwrap();
    // j stays in the tag's set (a plain tagged write put it there).
    ra.invalidate_tag("t").await.unwrap();
    assert_eq!(
        ra.set_if_newer("j", 8, 8).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(ra.get("j").await, None);
    assert_eq!(
        ra.set_if_newer("k", 6, 6).await.unwrap(),
        SourceWrite::Applied
    );
}

/// A library user without `+getrange` (an ACL line from before it was needed): its plain
/// invalidation still lands, a tombstone without the source version, and reaches the other
/// node; Redis logs the denial.
#[tokio::test]
async fn an_invalidation_without_getrange_rights_still_lands() {
    let server = RedisServer::start();
    let rules = support::acl_rules("v1").replace(" +getrange", "");
    let mut setuser = vec![
        "ACL",
        "SETUSER",
        "oldline",
        "on",
        ">pw",
        "resetkeys",
        "resetchannels",
    ];
    setuser.extend(rules.split(' '));
    let args: Vec<&[u8]> = setuser.iter().map(|a| a.as_bytes()).collect();
    server.cmd::<()>(&args);
    let scheme = if support::secure().is_some() {
        "rediss"
    } else {
        "redis"
    };
    let url = format!("{scheme}://oldline:pw@127.0.0.1:{}", server.port());
    let a = support::node_with(&server, |b| b.redis_url(url)).await;
    let b = node(&server).await;
    let (ra, rb) = (
        a.namespace::<str, u64>("rate").unwrap(),
        b.namespace::<str, u64>("rate").unwrap(),
    );
    rb.set_if_newer("k", 5, 5).await.unwrap();
    eventually("a reads it", PATIENCE, || async {
        ra.get("k").await.as_deref() == Some(&5)
    })
    .await;
    assert!(rb.get_local("k").is_some());
    ra.invalidate("k").await.unwrap();
    eventually("b dropped its copy", PATIENCE, || async {
        rb.get_local("k").is_none()
    })
    .await;
    assert_eq!(rb.get("k").await, None, "a tombstone in Redis");
    let denied: Vec<redis::Value> = server.cmd(&[b"ACL", b"LOG"]);
    assert!(
        format!("{denied:?}").contains("getrange"),
        "the denial is in Redis's ACL log: {denied:?}"
    );
    // What the fallback costs: the source version is not kept, so an older one lands.
    assert_eq!(
        rb.set_if_newer("k", 3, 3).await.unwrap(),
        SourceWrite::Applied
    );
}

/// Source versions use all 64 bits: two above 2^53, one apart, are told apart (Lua's doubles
/// would not).
#[tokio::test]
async fn source_versions_are_compared_exactly() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let ra = a.namespace::<str, u64>("rate").unwrap();
    let base = (1u64 << 60) + 1;
    ra.set_if_newer("k", 1, base).await.unwrap();
    assert_eq!(
        ra.set_if_newer("k", 2, base + 1).await.unwrap(),
        SourceWrite::Applied
    );
    assert_eq!(
        ra.set_if_newer("k", 3, base).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(
        ra.set_if_newer("k", 4, u64::MAX).await.unwrap(),
        SourceWrite::Applied
    );
    assert_eq!(
        ra.set_if_newer("k", 5, u64::MAX - 1).await.unwrap(),
        SourceWrite::Superseded
    );
    assert_eq!(ra.get("k").await.map(|v| *v), Some(4));
    // A plain write carries no source version: it lands, and the next ordered write too.
    ra.set("k", 6).await.unwrap();
    assert_eq!(
        ra.set_if_newer("k", 7, 1).await.unwrap(),
        SourceWrite::Applied
    );
}

/// Three nodes apply the same change stream, each in its own shuffled order, concurrently:
/// every node ends on the newest version's value, never an older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_converge_on_the_newest_source_version() {
    let server = RedisServer::start();
    let nodes = [
        node(&server).await,
        node(&server).await,
        node(&server).await,
    ];
    const KEYS: u64 = 20;
    const VERSIONS: u64 = 30;
    let mut tasks = Vec::new();
    for (n, c) in nodes.iter().enumerate() {
        let ns = Arc::new(c.namespace::<str, u64>("rate").unwrap());
        for k in 0..KEYS {
            let ns = ns.clone();
            tasks.push(tokio::spawn(async move {
                // A different order per node and key: a fixed permutation of 1..=VERSIONS.
                let step = [7, 11, 13][n];
                for i in 0..VERSIONS {
                    let v = (i * step + k) % VERSIONS + 1;
                    ns.set_if_newer(&format!("k{k}"), v * 100, v).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for c in &nodes {
        let ns = c.namespace::<str, u64>("rate").unwrap();
        for k in 0..KEYS {
            let key = format!("k{k}");
            eventually("the newest value everywhere", PATIENCE, || async {
                ns.get(&key).await.map(|v| *v) == Some(VERSIONS * 100)
            })
            .await;
        }
    }
}

#[tokio::test]
async fn without_redis_it_fails_and_drops_the_local_copy() {
    let mut server = RedisServer::start();
    let a = node_with_fees(&server).await;
    let fees = a.namespace::<str, u64>("fees").unwrap();
    fees.set_if_newer("k", 1, 1).await.unwrap();
    assert!(fees.get_local("k").is_some());
    server.kill();
    let err = fees.set_if_newer("k", 2, 2).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(fees.get_local("k"), None);
    assert!(matches!(
        fees.invalidate_if_newer("k", 3).await.unwrap_err(),
        Error::Unavailable { .. }
    ));
    assert_eq!(a.stats().outbox_entries, 0, "nothing queued");
    let tagged = fees.with(EntryOptions::new().tag("t")).unwrap();
    assert!(matches!(
        tagged.set_if_newer("k", 4, 4).await.unwrap_err(),
        Error::InvalidOptions(_)
    ));
}
