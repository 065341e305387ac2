//! The trading design (`examples/trading`) against a private Redis, across nodes: exact
//! `Decimal` prices and timestamps through Redis, the big valuation stored compressed, a batch
//! written on A read as a batch on B, a namespace cleared on A emptied from B's L1 (that
//! namespace only), a memoized function called once across nodes, and a session kept alive by
//! use past its TTL.

#[path = "../examples/trading/scenario.rs"]
mod scenario;
mod support;

use rust_decimal::Decimal;
use scenario::{Fleet, PortfolioId, Quote, RiskFigures, RiskKey, Session, Symbol, TradingConfig};
use std::str::FromStr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{await_applied, envelope, eventually, keys, RedisServer, PATIENCE};

/// The seed's key prefix (its default `CACHE_KEY_PREFIX`, which `fleet` leaves alone).
const PREFIX: &str = "trading";

/// The Redis key of `key` in the seed's namespace `ns`.
fn redis_key(ns: &str, key: &str) -> String {
    keys::with_prefix(PREFIX).value_key(ns, key)
}

async fn fleet(server: &RedisServer, nodes: usize) -> Fleet {
    let config = TradingConfig::from_lookup(|var| match var {
        "REDIS_URL" => Some(server.url()),
        // The secure pass's CA bundle: the seed's variables are the cache's own.
        "REDIS_TLS_CA_FILE" => std::env::var(var).ok(),
        "CACHE_SESSION_TTL" => Some("1".into()),
        _ => None,
    })
    .unwrap();
    let fleet = Fleet::start(&config, nodes, Some(support::LOOSE_BOUND), |b| {
        b.heartbeat(Duration::from_millis(50))
    })
    .await
    .unwrap();
    assert!(fleet.subscribed(PATIENCE).await, "nodes did not subscribe");
    fleet
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

#[tokio::test]
async fn decimals_and_timestamps_round_trip_exactly_through_redis() {
    let server = RedisServer::start();
    let f = fleet(&server, 2).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    // Negative zero: the parser drops the sign, so it is made by hand.
    let mut neg_zero = Decimal::new(0, 2);
    neg_zero.set_sign_negative(true);
    let q = Quote {
        symbol: "AAPL".into(),
        price: dec("150.0000"),
        bid: neg_zero,
        ask: dec("79228162514264337593543950335"),
        volume: 1_000_000,
        timestamp: UNIX_EPOCH + Duration::new(1_764_000_000, 123_456_789),
    };
    a.market
        .set(&Symbol("AAPL".into()), q.clone())
        .await
        .unwrap();
    let before = b.cache.stats().namespace(scenario::MARKET).unwrap().l2_hits;
    let got = b.market.get(&Symbol("AAPL".into())).await.unwrap();
    assert_eq!(
        b.cache.stats().namespace(scenario::MARKET).unwrap().l2_hits,
        before + 1,
        "B did not read it from Redis"
    );
    assert_eq!(*got, q);
    for (sent, back) in [(q.price, got.price), (q.bid, got.bid), (q.ask, got.ask)] {
        assert_eq!(
            sent.serialize(),
            back.serialize(),
            "{sent} came back as {back}"
        );
    }
    assert_eq!(got.price.to_string(), "150.0000");
    assert!(got.bid.is_sign_negative(), "negative zero lost its sign");
    assert_eq!(got.timestamp, q.timestamp);
    let risk = RiskFigures {
        var_95: dec("1000.00"),
        beta: dec("1.2"),
        computed_at: SystemTime::now(),
    };
    let key = RiskKey {
        portfolio: "portfolio_123".into(),
        metric: "var".into(),
    };
    a.risk.set(&key, risk.clone()).await.unwrap();
    let back = b.risk.get(&key).await.unwrap();
    assert_eq!(*back, risk);
    assert_eq!(back.beta.to_string(), "1.2");
}

#[tokio::test]
async fn big_valuation_is_stored_compressed() {
    let server = RedisServer::start();
    let f = fleet(&server, 2).await;
    let id = PortfolioId("portfolio_123".into());
    let value = f.nodes[0].valuation.get(&id).await.unwrap();
    let plain = rmp_serde::to_vec_named(&*value).unwrap().len();
    assert!(plain > 1024, "the valuation is only {plain} bytes");
    let stored: Vec<u8> = server.cmd(&[
        b"GET",
        redis_key(scenario::PORTFOLIO, "portfolio_123").as_bytes(),
    ]);
    assert!(envelope::is_envelope(&stored), "not an envelope");
    assert!(
        envelope::has_flag(&stored, envelope::FLAG_COMPRESSED),
        "compressed flag not set"
    );
    assert!(
        stored.len() < plain,
        "{} bytes stored for {plain}",
        stored.len()
    );
    // And it decompresses on the other node, exactly.
    let on_b = f.nodes[1].valuation.get(&id).await.unwrap();
    assert_eq!(*on_b, *value);
    assert_eq!(f.sources.valuations.load(Relaxed), 1);
    // A small quote is not compressed.
    f.nodes[0]
        .market
        .set(&scenario::symbol(1), scenario::quote(1, 0))
        .await
        .unwrap();
    let small: Vec<u8> = server.cmd(&[b"GET", redis_key(scenario::MARKET, "SYM0001").as_bytes()]);
    assert!(
        !envelope::has_flag(&small, envelope::FLAG_COMPRESSED),
        "a small value was compressed"
    );
}

#[tokio::test]
async fn batch_set_on_a_is_a_batch_get_on_b() {
    let server = RedisServer::start();
    let f = fleet(&server, 2).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    const N: usize = 250;
    let quotes: Vec<Quote> = (0..N).map(|i| scenario::quote(i, 7)).collect();
    let batches = a.publish_quotes(quotes.clone(), 100).await;
    assert_eq!(
        batches.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        [&100, &100, &50]
    );
    // One message per batch. B reads after applying them: a read racing the invalidation of
    // the very write it reads is (correctly) evicted again when the message lands, which
    // would turn some of the second read's L1 hits into Redis hits.
    await_applied(&b.cache, scenario::MARKET, 3).await;
    let keys: Vec<Symbol> = (0..N).map(scenario::symbol).collect();
    let before = *b.cache.stats().namespace(scenario::MARKET).unwrap();
    let got = b.market.batch().get(keys.iter()).await;
    let after = *b.cache.stats().namespace(scenario::MARKET).unwrap();
    assert_eq!(
        after.l2_hits - before.l2_hits,
        N as u64,
        "not all from Redis"
    );
    for (q, g) in quotes.iter().zip(&got) {
        assert_eq!(g.as_deref(), Some(q));
    }
    // Now in B's L1: a second batch read is all L1.
    let again = b.market.batch().get(keys.iter()).await;
    assert!(again.iter().all(Option::is_some));
    let last = *b.cache.stats().namespace(scenario::MARKET).unwrap();
    assert_eq!(last.l1_hits - after.l1_hits, N as u64);
}

#[tokio::test]
async fn clearing_a_namespace_on_a_empties_it_on_b_only_there() {
    let server = RedisServer::start();
    let f = fleet(&server, 2).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    a.publish_quotes((0..20).map(|i| scenario::quote(i, 0)).collect(), 100)
        .await;
    let key = RiskKey {
        portfolio: "p1".into(),
        metric: "beta".into(),
    };
    let risk = RiskFigures {
        var_95: dec("10"),
        beta: dec("0.9"),
        computed_at: SystemTime::now(),
    };
    a.risk.set(&key, risk).await.unwrap();
    await_applied(&b.cache, scenario::RISK, 1).await;
    let keys: Vec<Symbol> = (0..20).map(scenario::symbol).collect();
    assert!(b
        .market
        .batch()
        .get(keys.iter())
        .await
        .iter()
        .all(Option::is_some));
    assert!(b.risk.get(&key).await.is_some());
    assert!(keys.iter().all(|k| b.market.get_local(k).is_some()));

    a.market.invalidate_namespace().await.unwrap();
    eventually("B's market L1 emptied", PATIENCE, || async {
        keys.iter().all(|k| b.market.get_local(k).is_none())
    })
    .await;
    assert!(
        b.risk.get_local(&key).is_some(),
        "another namespace was cleared"
    );
    // Redis no longer serves them either.
    assert!(b
        .market
        .batch()
        .get(keys.iter())
        .await
        .iter()
        .all(Option::is_none));
}

#[tokio::test]
async fn memoized_fetch_runs_once_across_nodes() {
    let server = RedisServer::start();
    let f = fleet(&server, 3).await;
    let sym = Symbol("SYM0042".into());
    // Every node, several callers each, all at once.
    let mut calls = Vec::new();
    for n in &f.nodes {
        for _ in 0..4 {
            let (price, sym) = (n.price.clone(), sym.clone());
            calls.push(tokio::spawn(async move { price.get(&sym).await.unwrap() }));
        }
    }
    for c in calls {
        assert_eq!(*c.await.unwrap(), scenario::quote(42, 0));
    }
    assert_eq!(
        f.sources.price_fetches.load(Relaxed),
        1,
        "fetched more than once"
    );
    // Later callers on any node: no fetch either.
    for n in &f.nodes {
        n.price.get(&sym).await.unwrap();
    }
    assert_eq!(f.sources.price_fetches.load(Relaxed), 1);
    // Another symbol is another fetch.
    f.nodes[2]
        .price
        .get(&Symbol("SYM0043".into()))
        .await
        .unwrap();
    assert_eq!(f.sources.price_fetches.load(Relaxed), 2);
}

#[tokio::test]
async fn a_session_in_use_outlives_its_ttl() {
    let server = RedisServer::start();
    let f = fleet(&server, 2).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let ttl = Duration::from_secs(1); // CACHE_SESSION_TTL=1
    let session = |user: &str| Session {
        user: user.into(),
        started: SystemTime::now(),
    };
    a.sessions.set("active", session("trader_1")).await.unwrap();
    a.sessions.set("idle", session("trader_2")).await.unwrap();
    let start = Instant::now();
    let pttl =
        |k: &str| -> i64 { server.cmd(&[b"PTTL", redis_key(scenario::SESSION, k).as_bytes()]) };
    while start.elapsed() < ttl * 2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = pttl("active");
        assert!(a.sessions.get_and_touch("active").await.is_some());
        assert!(pttl("active") > before, "PTTL did not grow");
    }
    assert!(
        b.sessions.get("active").await.is_some(),
        "B lost the session in use"
    );
    eventually("the idle session expires", PATIENCE, || async {
        b.sessions.get("idle").await.is_none() && pttl("idle") == -2
    })
    .await;
}
