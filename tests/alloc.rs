//! An L1 hit allocates nothing: `get_local`, async `get`, `get_or_load` and a memoized
//! function's `get`, counted by a global allocator that counts this thread's allocations only
//! while asked to.

mod support;

use futures_util::FutureExt;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use support::{node, RedisServer};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const`: no lazy initialisation, so reading it never allocates (no recursion here).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, SeqCst);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.load(SeqCst);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.load(SeqCst) - before, out)
}

#[tokio::test(flavor = "current_thread")]
async fn l1_hits_allocate_nothing() {
    let server = RedisServer::start();
    let cache = node(&server).await;
    let quotes = cache.namespace::<str, u64>("quote").unwrap();
    quotes.set("AAPL", 7).await.unwrap();
    let memo = cache
        .memoize::<String, u64, _, _, _>("rate", |pair: String| async move {
            Ok::<_, std::io::Error>(pair.len() as u64)
        })
        .unwrap();
    let pair = "CNGN:USD".to_string();
    assert_eq!(*memo.get(&pair).await.unwrap(), 8);
    // Warm every path once (thread-locals, lazily built statics) before counting.
    for _ in 0..2 {
        quotes.get_local("AAPL");
        quotes.get("AAPL").now_or_never();
        memo.get(&pair).now_or_never();
    }

    // moka's pending bookkeeping done now, not inside a counted read.
    cache.stats();
    // A hit completes on its first poll: `now_or_never` polls once, with no runtime involved.
    let (n, v) = allocations(|| quotes.get_local("AAPL"));
    assert_eq!((n, v.as_deref()), (0, Some(&7)), "get_local");
    let (n, v) = allocations(|| quotes.get("AAPL").now_or_never());
    assert_eq!((n, v.flatten().as_deref()), (0, Some(&7)), "get");
    let (n, v) = allocations(|| {
        quotes
            .get_or_load("AAPL", || async { Ok::<_, std::io::Error>(0) })
            .now_or_never()
    });
    assert_eq!(n, 0, "get_or_load");
    assert_eq!(*v.unwrap().unwrap(), 7);
    let (n, v) = allocations(|| memo.get(&pair).now_or_never());
    assert_eq!(n, 0, "memoized get");
    assert_eq!(*v.unwrap().unwrap(), 8);

    // The counter counts: a miss path allocates.
    let (n, _) = allocations(|| quotes.get("absent").now_or_never());
    assert!(
        n > 0,
        "a miss allocated nothing: the allocator is not counting"
    );
}
