//! How values are stored: compression of large payloads in Redis, and an L1 bounded in bytes.

mod support;

use std::time::Duration;
use support::envelope::{self, FLAG_COMPRESSED};
use support::{keys, RedisServer, PATIENCE};
use tiered_cache::{NamespacePolicy, TieredCache};

/// Whether stored bytes hold a compressed payload.
fn compressed(raw: &[u8]) -> bool {
    envelope::has_flag(raw, FLAG_COMPRESSED)
}

async fn node(server: &RedisServer, policy: NamespacePolicy) -> TieredCache {
    support::node_with(server, |b| b.namespace("book", policy)).await
}

/// A quote book of `n` levels: about 40 bytes a level once serialized, and repetitive.
fn book(n: usize) -> Vec<(String, u64, u64)> {
    (0..n)
        .map(|i| (format!("level-{}", i % 10), 100 + i as u64, 5))
        .collect()
}

fn raw(server: &RedisServer, key: &str) -> Vec<u8> {
    let raw: Option<Vec<u8>> = server.cmd(&[b"GET", keys::value("book", key).as_bytes()]);
    raw.expect("stored")
}

#[tokio::test]
async fn payloads_over_the_threshold_are_compressed_and_read_back_exactly() {
    let server = RedisServer::start();
    let policy =
        || NamespacePolicy::new(Duration::from_secs(60)).staleness_bound(support::LOOSE_BOUND);
    let a = node(&server, policy()).await;
    let b = node(&server, policy()).await;
    let na = a.namespace::<str, Vec<(String, u64, u64)>>("book").unwrap();
    let nb = b.namespace::<str, Vec<(String, u64, u64)>>("book").unwrap();

    let (big, small) = (book(200), book(3));
    na.set("big", big.clone()).await.unwrap();
    na.set("small", small.clone()).await.unwrap();
    let (raw_big, raw_small) = (raw(&server, "big"), raw(&server, "small"));
    assert!(compressed(&raw_big), "over 1 KiB: compressed");
    assert!(
        raw_big.len() < 200 * 20,
        "and smaller: {} bytes",
        raw_big.len()
    );
    assert!(!compressed(&raw_small), "under 1 KiB: stored as it is");
    // Node b decodes both from Redis.
    assert_eq!(*nb.get("big").await.unwrap(), big);
    assert_eq!(*nb.get("small").await.unwrap(), small);
}

#[tokio::test]
async fn compression_can_be_turned_off() {
    let server = RedisServer::start();
    let a = node(
        &server,
        NamespacePolicy::new(Duration::from_secs(60)).compress_above(None),
    )
    .await;
    let na = a.namespace::<str, Vec<(String, u64, u64)>>("book").unwrap();
    na.set("big", book(200)).await.unwrap();
    assert!(!compressed(&raw(&server, "big")));
}

#[tokio::test]
async fn an_l1_bounded_in_bytes_stays_within_its_budget() {
    let server = RedisServer::start();
    let budget = 20_000;
    let a = node(
        &server,
        NamespacePolicy::new(Duration::from_secs(60))
            .l1_max_bytes(budget)
            .staleness_bound(support::LOOSE_BOUND),
    )
    .await;
    let na = a.namespace::<str, Vec<(String, u64, u64)>>("book").unwrap();
    // 100 values of about 2 KB: 200 KB offered to a 20 KB L1.
    for i in 0..100 {
        na.set(&format!("k{i}"), book(100)).await.unwrap();
    }
    support::eventually("L1 evicted down to its budget", PATIENCE, || async {
        let s = *a.stats().namespace("book").unwrap();
        s.l1_weight <= budget && s.l1_entries < 20
    })
    .await;
    let s = *a.stats().namespace("book").unwrap();
    assert!(s.l1_entries >= 5, "but still holds what fits: {s:?}");
}
