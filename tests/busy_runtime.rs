//! The bus runs on the library's own thread: an application runtime that does not yield
//! (a CPU-bound handler on a current-thread runtime) neither switches L1 off nor holds back
//! the invalidations other nodes publish meanwhile. Against a real `redis-server`.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{eventually, node_with, RedisServer, PATIENCE};
use tiered_cache::NamespacePolicy;

/// The namespace's bound: far below the block, so a starved bus would trip it many times over.
const BOUND: Duration = Duration::from_millis(250);

fn fx(b: tiered_cache::TieredCacheBuilder) -> tiered_cache::TieredCacheBuilder {
    b.namespace(
        "fx",
        NamespacePolicy::new(Duration::from_secs(60)).staleness_bound(BOUND),
    )
}

/// The writer: a node on a runtime of its own thread, writing `key` once asked.
fn writer(url: String) -> (mpsc::Sender<(String, u64)>, mpsc::Receiver<Instant>) {
    let (ask, asked) = mpsc::channel::<(String, u64)>();
    let (done, written) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let cache = fx(tiered_cache::TieredCache::builder().redis_url(url))
                .build()
                .unwrap();
            cache.ready(PATIENCE).await.unwrap();
            let fx = cache.namespace::<str, u64>("fx").unwrap();
            while let Ok((key, value)) = asked.recv() {
                fx.set(&key, value).await.unwrap();
                let _ = done.send(Instant::now());
            }
        });
    });
    (ask, written)
}

/// Waits for the writer without blocking this runtime (only the block below may).
async fn written_by(written: &mpsc::Receiver<Instant>) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(at) = written.try_recv() {
            return at;
        }
        assert!(Instant::now() < deadline, "the writer did not write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A current-thread runtime (the test's own) blocked for 1 s: L1 keeps serving what no one
/// changed, and a write another node made during the block has been applied when it ends,
/// before this runtime ran anything again.
#[tokio::test]
async fn a_blocked_runtime_keeps_l1_on_and_still_applies_invalidations() {
    let server = RedisServer::start();
    let node = node_with(&server, fx).await;
    let fx = node.namespace::<str, u64>("fx").unwrap();
    let (ask, written) = writer(server.url());
    for key in ["EURUSD", "USDJPY"] {
        ask.send((key.into(), 1)).unwrap();
        written_by(&written).await;
        eventually("the value in Redis", PATIENCE, || async {
            fx.get(key).await.as_deref() == Some(&1)
        })
        .await;
    }
    eventually("both in L1, served", PATIENCE, || async {
        fx.get_local("EURUSD").is_some() && fx.get_local("USDJPY").is_some()
    })
    .await;
    let applied = node.stats().namespace("fx").unwrap().invalidations_applied;

    // The handler that does not yield: 1 s of this runtime's only thread.
    let blocked = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    ask.send(("EURUSD".into(), 2)).unwrap();
    let at = written.recv_timeout(PATIENCE).unwrap();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(blocked.elapsed()));

    // Checked before this runtime gets a chance to run any task.
    let stats = node.stats();
    assert_eq!(
        stats.namespace("fx").unwrap().invalidations_applied,
        applied + 1,
        "the write {:?} into the block was applied during it",
        at - blocked
    );
    assert!(fx.get_local("EURUSD").is_none(), "the old rate is gone");
    assert_eq!(
        fx.get_local("USDJPY").as_deref(),
        Some(&1),
        "L1 stayed on through the block: {:?}",
        node.health().await.bypassing
    );
    assert_eq!(fx.get("EURUSD").await.as_deref(), Some(&2));
}
