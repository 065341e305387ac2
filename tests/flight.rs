//! Single flight (stampede protection) in one process: concurrent `get_or_load` calls for a
//! key run the loader once and share its value or error; a cancelled caller does not cancel the
//! shared load, and a panicking loader does not wedge the others.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use support::{eventually, node, RedisServer, PATIENCE};
use tiered_cache::Namespace;
use tokio::sync::Semaphore;

const CALLERS: usize = 16;

/// A gate loaders wait at until the test opens it (permits persist: no wake-up is lost).
fn gate() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(0))
}

fn open(gate: &Semaphore) {
    gate.add_permits(1_000);
}

/// Starts `n` concurrent `get_or_load`s of `key`; the loader counts its calls and waits at
/// `release` before answering (or failing).
fn stampede(
    ns: &Namespace<str, u64>,
    key: &'static str,
    n: usize,
    calls: &Arc<AtomicUsize>,
    release: &Arc<Semaphore>,
    fail: bool,
) -> Vec<tokio::task::JoinHandle<tiered_cache::Result<Arc<u64>>>> {
    (0..n)
        .map(|_| {
            let (ns, calls, release) = (ns.clone(), calls.clone(), release.clone());
            tokio::spawn(async move {
                ns.get_or_load(key, move || async move {
                    calls.fetch_add(1, SeqCst);
                    release.acquire().await.unwrap().forget();
                    if fail {
                        Err(std::io::Error::other("database down"))
                    } else {
                        Ok(42)
                    }
                })
                .await
            })
        })
        .collect()
}

async fn coalesced(cache: &tiered_cache::TieredCache, n: u64) {
    eventually("callers joined the flight", PATIENCE, || async {
        cache.stats().namespace("rate").unwrap().coalesced_loads >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_key_run_the_loader_once() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let ns = cache.namespace::<str, u64>("rate").unwrap();
    let (calls, release) = (Arc::new(AtomicUsize::new(0)), gate());
    let tasks = stampede(&ns, "hot", CALLERS, &calls, &release, false);
    coalesced(&cache, CALLERS as u64 - 1).await;
    open(&release);
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap(), 42);
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(
        ns.get("hot").await.map(|v| *v),
        Some(42),
        "cached for the next caller"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_is_shared_not_retried_by_every_waiter() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let ns = cache.namespace::<str, u64>("rate").unwrap();
    let (calls, release) = (Arc::new(AtomicUsize::new(0)), gate());
    let tasks = stampede(&ns, "hot", CALLERS, &calls, &release, true);
    coalesced(&cache, CALLERS as u64 - 1).await;
    open(&release);
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert!(
            e.is_loader() && e.to_string().contains("database down"),
            "{e}"
        );
    }
    assert_eq!(calls.load(SeqCst), 1);
    // Not cached: the next call loads again.
    let v = ns
        .get_or_load("hot", || async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    assert_eq!(*v, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_caller_does_not_cancel_the_shared_load() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let ns = cache.namespace::<str, u64>("rate").unwrap();
    let (calls, release) = (Arc::new(AtomicUsize::new(0)), gate());
    let first = stampede(&ns, "hot", 1, &calls, &release, false)
        .pop()
        .unwrap();
    eventually("first caller's load running", PATIENCE, || async {
        calls.load(SeqCst) == 1
    })
    .await;
    let waiters = stampede(&ns, "hot", 4, &calls, &release, false);
    coalesced(&cache, 4).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    open(&release);
    for t in waiters {
        assert_eq!(*t.await.unwrap().unwrap(), 42);
    }
    assert_eq!(calls.load(SeqCst), 1, "the load outlived its first caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_fails_only_its_own_caller() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let ns = cache.namespace::<str, u64>("rate").unwrap();
    let (started, go) = (Arc::new(AtomicUsize::new(0)), gate());
    let leader = {
        let (ns, started, go) = (ns.clone(), started.clone(), go.clone());
        tokio::spawn(async move {
            ns.get_or_load("hot", || async move {
                started.fetch_add(1, SeqCst);
                go.acquire().await.unwrap().forget();
                panic!("loader bug");
                #[allow(unreachable_code)]
                Ok::<u64, std::io::Error>(0)
            })
            .await
        })
    };
    eventually("leader loading", PATIENCE, || async {
        started.load(SeqCst) == 1
    })
    .await;
    let (calls, release) = (Arc::new(AtomicUsize::new(0)), gate());
    let waiters = stampede(&ns, "hot", 4, &calls, &release, false);
    coalesced(&cache, 4).await;
    open(&go);
    let e = leader.await.unwrap().unwrap_err();
    assert!(e.is_loader() && e.to_string().contains("panicked"), "{e}");
    eventually("a waiter took over", PATIENCE, || async {
        calls.load(SeqCst) == 1
    })
    .await;
    open(&release);
    for t in waiters {
        assert_eq!(*t.await.unwrap().unwrap(), 42);
    }
}
