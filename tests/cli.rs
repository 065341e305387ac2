//! The `tiered-cache-admin` binary against a private Redis, next to library nodes: what it
//! prints is checked against what the nodes wrote, and what it flushes against what other
//! nodes then hold in L1.
#![cfg(feature = "cli")]

mod support;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::process::{Output, Stdio};
use std::str::FromStr;
use std::time::Duration;
use support::{eventually, keys, RedisServer, PATIENCE};
use tiered_cache::{EntryOptions, NamespacePolicy, TieredCache};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tiered-cache-admin");

/// The longest any CLI run may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    /// The default serde form: a string.
    bid: Decimal,
    /// The bit-exact form: 16 bytes.
    #[serde(with = "tiered_cache::exact::decimal")]
    ask: Decimal,
}

/// A node with `rate` (f64), `quote` (Quote), `doc` (Vec<String>, compressed over 1 KiB), all
/// `unbounded_staleness()`: what L1 holds changes only by invalidation, never by a bypass on a
/// busy machine, so "B dropped its copy" means the flush reached B.
async fn node(server: &RedisServer) -> TieredCache {
    let policy = || NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness();
    let a = TieredCache::builder()
        .redis_url(server.url())
        .namespace("rate", policy())
        .namespace("quote", policy())
        .namespace("doc", policy().compress_above(Some(1024)))
        .heartbeat(Duration::from_millis(50))
        .build()
        .unwrap();
    eventually("subscribed", PATIENCE, || async { a.is_subscribed() }).await;
    a
}

/// Runs the tool as an operator would: as Redis's `default` user (the library's own user, in
/// the tests' secure mode, has too few rights for SCAN, INFO and friends).
async fn cli(server: &RedisServer, args: &[&str]) -> Output {
    cli_at(&server.admin_url(), args).await
}

async fn cli_at(url: &str, args: &[&str]) -> Output {
    let run = Command::new(BIN)
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("REDIS_URL")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(HANG, run)
        .await
        .unwrap_or_else(|_| panic!("tiered-cache-admin {args:?} hung"))
        .expect("run tiered-cache-admin")
}

/// The JSON it printed, after checking it exited 0.
fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// The one-line message, after checking it exited 1 and printed nothing on stdout.
fn error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_what_a_node_wrote_exactly() {
    let server = RedisServer::start();
    let a = node(&server).await;

    let rates = a.namespace::<str, f64>("rate").unwrap();
    rates.set("CNGN:USD", 0.00065).await.unwrap();
    let seen = ok_json(&cli(&server, &["inspect", "rate", "CNGN:USD"]).await);
    assert_eq!(seen["value"], json!(0.00065));
    assert_eq!(seen["redis_key"], keys::value("rate", "CNGN:USD"));
    assert_eq!(
        seen["version"],
        json!(rates.local_version("CNGN:USD").unwrap())
    );
    assert_eq!(seen["format"], 1);
    assert_eq!(seen["flags"]["expiry"], true);
    assert_eq!(seen["flags"]["compressed"], false);
    assert_eq!(seen["flags"]["tombstone"], false);
    assert_eq!(seen["problem"], Value::Null);
    let ttl = seen["ttl_ms"].as_u64().expect("a TTL");
    assert!(ttl > 0 && ttl <= 90_000, "ttl {ttl}");
    let expires = seen["expires_at_ms"].as_u64().expect("an expiry");
    let now = unix_ms();
    assert!(
        expires > now && expires <= now + 90_000,
        "{expires} vs {now}"
    );

    // Over 1 KiB: stored compressed, shown as it was written.
    let docs = a.namespace::<str, Vec<String>>("doc").unwrap();
    let big: Vec<String> = (0..300)
        .map(|i| format!("line {i} of the report"))
        .collect();
    docs.set("report", big.clone()).await.unwrap();
    let seen = ok_json(&cli(&server, &["inspect", "doc", "report"]).await);
    assert_eq!(seen["flags"]["compressed"], true);
    assert!(seen["stored_bytes"].as_u64().unwrap() < 1024 * 8);
    assert_eq!(seen["value"], json!(big));

    // Decimals: the string form verbatim (trailing zeros kept), the exact form as its bytes.
    let quotes = a.namespace::<str, Quote>("quote").unwrap();
    let q = Quote {
        bid: Decimal::from_str("-1.500").unwrap(),
        ask: Decimal::from_str("79228162514264337593543950335").unwrap(),
    };
    quotes.set("AAPL", q.clone()).await.unwrap();
    let seen = ok_json(&cli(&server, &["inspect", "quote", "AAPL"]).await);
    assert_eq!(seen["value"]["bid"], "-1.500");
    assert_eq!(seen["value"]["ask"], json!(q.ask.serialize().to_vec()));

    // A cached "not found": flagged absent, no value.
    let none = rates
        .get_or_load_optional("delisted", || async { Ok::<_, std::io::Error>(None) })
        .await
        .unwrap();
    assert_eq!(none, None);
    let seen = ok_json(&cli(&server, &["inspect", "rate", "delisted"]).await);
    assert_eq!(seen["flags"]["absent"], true);
    assert_eq!(seen["value"], Value::Null);
    assert_eq!(seen["problem"], Value::Null);

    // A tombstone is shown as one, with its version.
    rates.invalidate("CNGN:USD").await.unwrap();
    let seen = ok_json(&cli(&server, &["inspect", "rate", "CNGN:USD"]).await);
    assert_eq!(seen["flags"]["tombstone"], true);
    assert_eq!(seen["value"], Value::Null);
    assert!(seen["version"].as_u64().unwrap() > 1);
    assert_eq!(seen["source_version"], Value::Null);

    // A source-ordered write shows its source version, and so does the tombstone after it.
    let lsn = (1u64 << 60) + 7;
    rates.set_if_newer("EUR:USD", 1.08, lsn).await.unwrap();
    let seen = ok_json(&cli(&server, &["inspect", "rate", "EUR:USD"]).await);
    assert_eq!(seen["flags"]["source"], true);
    assert_eq!(seen["source_version"], json!(lsn));
    assert_eq!(seen["value"], json!(1.08));
    assert_eq!(seen["problem"], Value::Null);
    rates.invalidate("EUR:USD").await.unwrap();
    let seen = ok_json(&cli(&server, &["inspect", "rate", "EUR:USD"]).await);
    assert_eq!(seen["flags"]["tombstone"], true);
    assert_eq!(seen["source_version"], json!(lsn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_missing_and_unknown_are_clear_errors() {
    let server = RedisServer::start();
    let a = node(&server).await;
    a.namespace::<str, f64>("rate")
        .unwrap()
        .set("known", 1.0)
        .await
        .unwrap();
    let foreign = keys::value("rate", "foreign");
    let _: () = server.cmd(&[b"SET", foreign.as_bytes(), b"{\"json\":true}"]);

    let err = error_line(&cli(&server, &["inspect", "rate", "foreign"]).await);
    assert!(
        err.contains("foreign value") && err.contains(&foreign),
        "{err}"
    );
    let err = error_line(&cli(&server, &["inspect", "rate", "absent"]).await);
    assert!(
        err.contains("no such key") && err.contains(&keys::value("rate", "absent")),
        "{err}"
    );
    let err = error_line(&cli(&server, &["inspect", "ratez", "known"]).await);
    assert!(err.contains("unknown namespace \"ratez\""), "{err}");
    assert!(err.contains("known: rate"), "{err}");
    let err = error_line(&cli(&server, &["flush", "--namespace", "ratez"]).await);
    assert!(err.contains("unknown namespace"), "{err}");
    // Nothing was flushed by the refused command: no floor for the typo.
    let floors: Vec<String> = server.cmd(&[b"HKEYS", keys::meta().as_bytes()]);
    assert!(!floors.iter().any(|f| f.contains("ratez")), "{floors:?}");

    // Usage errors are clap's: exit 2.
    let out = cli(&server, &["flush"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_and_unreachable_redis_fail_with_one_line() {
    let err = error_line(&cli_at("not a url", &["stats"]).await);
    // Not echoed: a string that is not a URL may be a password pasted in the wrong place.
    assert!(err.contains("redis URL <not a URL> is not valid"), "{err}");

    // A port nobody listens on: refused.
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    for args in [
        &["stats"][..],
        &["inspect", "rate", "x"],
        &["watch", "--count", "1"],
    ] {
        let err = error_line(&cli_at(&url, args).await);
        assert!(
            err.contains(&format!(
                "cannot reach Redis at {}",
                tiered_cache::config::redact_url(&url)
            )),
            "{args:?}: {err}"
        );
    }
    let out = cli_at(&url, &["health"]).await;
    assert_eq!(out.status.code(), Some(1));
    let health: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(health["redis_reachable"], false);

    // A port that accepts connections and never answers: the timeout ends it, not the test.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = support::url_for_port(silent.local_addr().unwrap().port());
    let err = error_line(&cli_at(&url, &["--timeout-ms", "300", "stats"]).await);
    assert!(err.contains("cannot reach Redis"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_what_was_written() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let rates = a.namespace::<str, f64>("rate").unwrap();
    for i in 0..7 {
        rates.set(&format!("r{i}"), f64::from(i)).await.unwrap();
    }
    // A tombstone is still a key of the namespace.
    rates.invalidate("r0").await.unwrap();
    let docs = a.namespace::<str, Vec<String>>("doc").unwrap();
    for i in 0..3 {
        docs.with(EntryOptions::new().tags(["W1"]))
            .unwrap()
            .set(&format!("d{i}"), vec![format!("{i}")])
            .await
            .unwrap();
    }
    // Bookkeeping keys exist (meta hash, tag set) but belong to no namespace's count.
    let stats = ok_json(&cli(&server, &["stats", "--sample", "2"]).await);
    let ns = |name: &str| {
        stats["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {stats}"))
    };
    assert_eq!(ns("rate")["keys"], 7);
    assert_eq!(ns("doc")["keys"], 3);
    assert_eq!(ns("doc")["tag_sets"], 1);
    // The meta hash, the invalidation log, the tag's set and `doc`'s tag registry.
    assert_eq!(stats["internal_keys"], 4, "{stats}");
    assert!(stats["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["name"] != "_tc"));
    assert_eq!(ns("rate")["memory"]["sampled_keys"], 2);
    let estimate = ns("rate")["memory"]["estimate_bytes"].as_u64().unwrap();
    let sampled = ns("rate")["memory"]["sampled_bytes"].as_u64().unwrap();
    assert_eq!(estimate, sampled * 7 / 2);
    // The version counter: 7 writes, 1 invalidation, 3 tagged writes.
    assert_eq!(stats["version"], 11);
    // Redis's own figures.
    assert!(stats["redis"]["version"].as_str().is_some());
    assert!(stats["redis"]["used_memory"].as_u64().unwrap() > 0);
    assert!(stats["redis"]["slowlog_len"].as_u64().is_some());
    let ratio = stats["redis"]["hit_ratio"].as_f64().expect("a hit ratio");
    assert!((0.0..=1.0).contains(&ratio));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_info_reports_the_servers_figures() {
    let server = RedisServer::start();
    // Keyspace counts are server-wide: a node whose heartbeat (a script reading the meta
    // hash) waits an hour, so that only the test's own lookups count after RESETSTAT.
    let a = TieredCache::builder()
        .redis_url(server.url())
        .namespace(
            "rate",
            NamespacePolicy::new(Duration::from_secs(90)).unbounded_staleness(),
        )
        .heartbeat(Duration::from_secs(3600))
        .build()
        .unwrap();
    eventually("subscribed, first heartbeat sent", PATIENCE, || async {
        let sent: bool = server.cmd(&[
            b"HEXISTS",
            keys::meta().as_bytes(),
            keys::EPOCH_FIELD.as_bytes(),
        ]);
        a.is_subscribed() && sent
    })
    .await;
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lfu"]);
    let _: () = server.cmd(&[b"CONFIG", b"RESETSTAT"]);
    let _: Option<String> = server.cmd(&[b"GET", b"absent"]);
    let _: () = server.cmd(&[b"SET", b"present", b"1"]);
    for _ in 0..3 {
        let _: Option<String> = server.cmd(&[b"GET", b"present"]);
    }
    let info = a.redis_info().await.unwrap();
    assert_eq!(info.maxmemory_policy.as_deref(), Some("allkeys-lfu"));
    assert_eq!(info.keyspace_misses, Some(1));
    assert_eq!(info.keyspace_hits, Some(3));
    assert_eq!(info.hit_ratio(), Some(0.75));
    assert!(info.connected_clients.unwrap() >= 2);
    assert!(info.redis_version.is_some() && info.slowlog_len.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_namespace_reaches_other_nodes_l1() {
    let server = RedisServer::start();
    let (a, b) = (node(&server).await, node(&server).await);
    let (ra, rb) = (
        a.namespace::<str, f64>("rate").unwrap(),
        b.namespace::<str, f64>("rate").unwrap(),
    );
    let (qa, qb) = (
        a.namespace::<str, Quote>("quote").unwrap(),
        b.namespace::<str, Quote>("quote").unwrap(),
    );
    let q = Quote {
        bid: Decimal::ONE,
        ask: Decimal::TWO,
    };
    ra.set("CNGN:USD", 0.00065).await.unwrap();
    qa.set("AAPL", q.clone()).await.unwrap();
    support::await_applied(&b, "quote", 1).await;
    assert_eq!(rb.get("CNGN:USD").await.as_deref(), Some(&0.00065));
    assert_eq!(qb.get("AAPL").await.as_deref(), Some(&q));
    assert!(rb.get_local("CNGN:USD").is_some());

    let out = ok_json(&cli(&server, &["flush", "--namespace", "rate"]).await);
    assert_eq!(out, json!({ "flushed": "namespace", "namespace": "rate" }));
    for (name, ns) in [("a", &ra), ("b", &rb)] {
        eventually(
            &format!("node {name} drops its L1 copy"),
            PATIENCE,
            || async { ns.get_local("CNGN:USD").is_none() },
        )
        .await;
    }
    // And Redis's copy is dead for every node: read through, nothing.
    assert_eq!(rb.get("CNGN:USD").await, None);
    // The other namespace is untouched.
    assert_eq!(qb.get_local("AAPL").as_deref(), Some(&q));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_tag_reaches_other_nodes_l1() {
    let server = RedisServer::start();
    let (a, b) = (node(&server).await, node(&server).await);
    let (da, db) = (
        a.namespace::<str, Vec<String>>("doc").unwrap(),
        b.namespace::<str, Vec<String>>("doc").unwrap(),
    );
    let (ra, rb) = (
        a.namespace::<str, f64>("rate").unwrap(),
        b.namespace::<str, f64>("rate").unwrap(),
    );
    da.with(EntryOptions::new().tags(["W1"]))
        .unwrap()
        .set("d1", vec!["one".into()])
        .await
        .unwrap();
    ra.with(EntryOptions::new().tags(["W1"]))
        .unwrap()
        .set("r1", 1.0)
        .await
        .unwrap();
    ra.with(EntryOptions::new().tags(["W2"]))
        .unwrap()
        .set("r2", 2.0)
        .await
        .unwrap();
    support::await_applied(&b, "rate", 2).await;
    assert!(db.get("d1").await.is_some());
    assert!(rb.get("r1").await.is_some() && rb.get("r2").await.is_some());

    // In one namespace only.
    let out = ok_json(&cli(&server, &["flush", "--tag", "W1", "--namespace", "doc"]).await);
    assert_eq!(out["keys"], 1, "{out}");
    eventually("b drops d1", PATIENCE, || async {
        db.get_local("d1").is_none()
    })
    .await;
    assert!(rb.get_local("r1").is_some(), "rate was not asked for");

    // In every namespace Redis knows.
    let out = ok_json(&cli(&server, &["flush", "--tag", "W1"]).await);
    assert_eq!(out["keys"], 1, "{out}");
    eventually("b drops r1", PATIENCE, || async {
        rb.get_local("r1").is_none()
    })
    .await;
    assert!(rb.get_local("r2").is_some(), "another tag is untouched");
    assert_eq!(rb.get("r1").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_invalidation_with_its_lag() {
    let server = RedisServer::start();
    let a = node(&server).await;
    let rates = a.namespace::<str, f64>("rate").unwrap();

    let mut child = Command::new(BIN)
        .args([
            "--url",
            &server.admin_url(),
            "watch",
            "--count",
            "3",
            "--for",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Publish only once the subscription is confirmed: pub/sub keeps nothing for later.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(HANG, stderr.next_line())
        .await
        .expect("watch says when it listens")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(first, format!("watching {}", keys::channel()));

    let before = unix_ms();
    rates.set("CNGN:USD", 0.00065).await.unwrap();
    rates.invalidate("CNGN:USD").await.unwrap();
    rates.invalidate_namespace().await.unwrap();
    let after = unix_ms();
    let out = tokio::time::timeout(HANG, child.wait_with_output())
        .await
        .expect("watch stops after --count events")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["keys", "keys", "namespace"]);
    let origin = format!("{:016x}", a.node_id());
    for e in &events {
        assert_eq!(e["origin"], origin.as_str());
        assert_eq!(e["targets"][0]["namespace"], "rate");
        // Same host, same clock: sent during the calls, received after, lag between.
        let sent = e["sent_ms"].as_u64().unwrap();
        let received = e["received_ms"].as_u64().unwrap();
        assert!((before..=after).contains(&sent), "{before} {e} {after}");
        assert!(received >= sent, "{e}");
        assert_eq!(e["lag_ms"], received - sent, "{e}");
    }
    assert_eq!(events[0]["targets"][0]["keys"], json!(["CNGN:USD"]));
    assert_eq!(events[2]["targets"][0]["keys"], Value::Null);
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);

    // `--for` ends a quiet watch; the nodes' heartbeats (every 50 ms) are not printed.
    let out = cli(&server, &["watch", "--for", "0.5"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = cli(&server, &["watch", "--for", "0.5", "--heartbeats"]).await;
    let beats = String::from_utf8(out.stdout).unwrap();
    assert!(beats.lines().count() >= 2, "{beats}");
    assert!(
        beats.lines().all(|l| l.contains("\"kind\":\"heartbeat\"")),
        "{beats}"
    );
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_ping_subscription_and_listeners() {
    let server = RedisServer::start();
    let (_a, _b) = (node(&server).await, node(&server).await);
    let health = ok_json(&cli(&server, &["health"]).await);
    assert_eq!(health["redis_reachable"], true);
    assert_eq!(health["subscribed"], true);
    assert_eq!(health["breaker"], "closed");
    assert_eq!(health["listeners"], 2, "two nodes listen: {health}");
    assert!(health["ping_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_with_an_error_when_redis_goes_away() {
    let mut server = RedisServer::start();
    let mut child = Command::new(BIN)
        .args(["--url", &server.admin_url(), "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(HANG, stderr.next_line())
        .await
        .expect("watch says when it listens")
        .unwrap();
    assert_eq!(first, Some(format!("watching {}", keys::channel())));
    server.kill();
    let status = tokio::time::timeout(HANG, child.wait())
        .await
        .expect("watch ends when its connection is lost")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let err = stderr.next_line().await.unwrap().unwrap_or_default();
    assert!(err.contains("cannot reach Redis"), "{err}");
    assert_eq!(stderr.next_line().await.unwrap(), None, "one line");
}
