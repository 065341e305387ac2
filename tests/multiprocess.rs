//! Two OS processes share one Redis and see each other's invalidations. The test binary runs
//! itself again as the second process (the `child_node` test, only active when the parent sets
//! `TC_CHILD_REDIS_URL`), and the two talk over the child's stdin and stdout.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::{eventually, node, RedisServer, PATIENCE};
use tiered_cache::{NamespacePolicy, TieredCache};

const CHILD_ENV: &str = "TC_CHILD_REDIS_URL";

#[tokio::test]
async fn two_processes_see_each_others_invalidations() {
    let server = RedisServer::start();
    let parent = node(&server).await;
    let rates = parent.namespace::<str, u64>("rate").unwrap();
    rates.set("k", 1).await.unwrap();
    rates.set("from_child", 0).await.unwrap();
    assert_eq!(rates.get_local("from_child").map(|v| *v), Some(0));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_node",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, server.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let expect = |want: &str| loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("child never said {want:?}"));
        if line.ends_with(want) {
            break;
        }
    };

    expect("CACHED 1"); // the child has k=1 in its own L1
    rates.set("k", 2).await.unwrap();
    writeln!(to_child, "WAIT 2").unwrap();
    expect("SAW 2"); // its L1 dropped 1 and it read 2 from Redis

    writeln!(to_child, "WRITE").unwrap();
    expect("WROTE");
    eventually("parent L1 dropped its copy", PATIENCE, || async {
        rates.get_local("from_child").is_none()
    })
    .await;
    assert_eq!(rates.get("from_child").await.map(|v| *v), Some(7));
    writeln!(to_child, "EXIT").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
}

/// The second process. Does nothing unless started by the test above.
#[tokio::test]
async fn child_node() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cache = TieredCache::builder()
        .redis_url(url)
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).staleness_bound(support::LOOSE_BOUND),
        )
        .namespace(
            "quote",
            NamespacePolicy::new(Duration::from_secs(60)).staleness_bound(support::LOOSE_BOUND),
        )
        .build()
        .unwrap();
    eventually("child subscribed", PATIENCE, || async {
        cache.is_subscribed()
    })
    .await;
    let rates = cache.namespace::<str, u64>("rate").unwrap();
    assert_eq!(rates.get("k").await.map(|v| *v), Some(1));
    assert!(rates.get_local("k").is_some());
    println!("CACHED 1");
    let mut stdin = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(cmd)) = stdin.next() {
        match cmd.as_str() {
            "WAIT 2" => {
                eventually("child L1 evicted k", PATIENCE, || async {
                    rates.get_local("k").is_none_or(|v| *v == 2)
                })
                .await;
                assert_eq!(rates.get("k").await.map(|v| *v), Some(2));
                println!("SAW 2");
            }
            "WRITE" => {
                rates.set("from_child", 7).await.unwrap();
                println!("WROTE");
            }
            _ => break,
        }
        std::io::stdout().flush().unwrap();
    }
}
