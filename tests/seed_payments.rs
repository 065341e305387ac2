//! The payments design (`examples/payments`) against a private Redis, across nodes: a completed
//! transfer drops both balances everywhere, a rate update drops that pair's conversions only,
//! the store is written before the cache is told, and the whole thing keeps working with Redis
//! killed mid-scenario, converging once it is back.

#[path = "../examples/payments/scenario.rs"]
mod scenario;
mod support;

use rust_decimal::Decimal;
use scenario::{BalanceKey, ConversionKey, CurrencyPairKey, Fleet, PaymentsConfig};
use std::str::FromStr;
use std::time::Duration;
use support::{eventually, keys, RedisServer, PATIENCE};

const WALLETS: usize = 50;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

async fn fleet(server: &RedisServer, nodes: usize) -> Fleet {
    let config = PaymentsConfig::from_lookup(|var| match var {
        "REDIS_URL" => Some(server.url()),
        // The secure pass's CA bundle: the seed's variables are the cache's own.
        "REDIS_TLS_CA_FILE" => std::env::var(var).ok(),
        "REDIS_CONNECTION_TIMEOUT" => Some("1".into()),
        _ => None,
    })
    .unwrap();
    let fleet = Fleet::start(&config, nodes, WALLETS, Some(support::LOOSE_BOUND), |b| {
        b.heartbeat(Duration::from_millis(50))
            .l2_timeout(Duration::from_millis(200))
            .breaker_cooldown(Duration::from_millis(100))
            .outbox_retry(Duration::from_millis(100))
            .subscriber_backoff(Duration::from_millis(100))
    })
    .await
    .unwrap();
    assert!(fleet.subscribed(PATIENCE).await, "nodes did not subscribe");
    fleet
}

#[tokio::test]
async fn transfer_on_a_drops_both_balances_on_b() {
    let server = RedisServer::start();
    let f = fleet(&server, 2).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let (w1, w2, w3) = (
        scenario::wallet_id(1),
        scenario::wallet_id(2),
        scenario::wallet_id(3),
    );
    for w in [&w1, &w2, &w3] {
        assert_eq!(b.balance(w).await.unwrap().amount, dec("1000.00"));
        assert!(b.balances.get_local(&BalanceKey(w.clone())).is_some());
    }
    a.complete_transfer(&w1, &w2, dec("125.50")).await.unwrap();
    eventually("B drops both balances", PATIENCE, || async {
        b.balances.get_local(&BalanceKey(w1.clone())).is_none()
            && b.balances.get_local(&BalanceKey(w2.clone())).is_none()
    })
    .await;
    // An uninvolved wallet stays cached.
    assert!(b.balances.get_local(&BalanceKey(w3.clone())).is_some());
    assert_eq!(b.balance(&w1).await.unwrap().amount, dec("874.50"));
    assert_eq!(b.balance(&w2).await.unwrap().amount, dec("1125.50"));
    // Write-through order: every cache step comes after the store step it follows.
    let events = f.log.events();
    let store_at = events.iter().position(|e| e == "store:transfer:1").unwrap();
    for key in [BalanceKey(w1.clone()), BalanceKey(w2.clone())] {
        let inv = format!("cache:invalidate:{key}");
        let at = events.iter().position(|e| *e == inv).unwrap();
        assert!(store_at < at, "cache told before the store: {events:?}");
    }
}

#[tokio::test]
async fn rate_update_drops_that_pairs_conversions_only() {
    let server = RedisServer::start();
    let f = fleet(&server, 2).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let cngn = CurrencyPairKey::cngn_rate("USD");
    let ngn = CurrencyPairKey::new("NGN", "USD");
    let amounts = [dec("100.50"), dec("5000.00")];
    for amount in amounts {
        assert_eq!(
            b.convert(amount, &cngn).await.unwrap().converted,
            (amount * dec("0.00065")).round_dp(2)
        );
        b.convert(amount, &ngn).await.unwrap();
    }
    let conv = |amount, pair: &CurrencyPairKey| ConversionKey {
        amount,
        pair: pair.clone(),
    };
    assert!(b.conversions.get_local(&conv(amounts[0], &cngn)).is_some());
    let seq = a.upsert_rate(&cngn, dec("0.00070")).await.unwrap();
    eventually(
        "B drops CNGN:USD's rate and conversions",
        PATIENCE,
        || async {
            b.rates.get_local(&cngn).is_none()
                && amounts
                    .iter()
                    .all(|m| b.conversions.get_local(&conv(*m, &cngn)).is_none())
        },
    )
    .await;
    // One message dropped them all: NGN:USD's are untouched.
    for m in amounts {
        assert!(
            b.conversions.get_local(&conv(m, &ngn)).is_some(),
            "a conversion of another pair was dropped"
        );
    }
    assert!(b.rates.get_local(&ngn).is_some());
    let fresh = b.convert(amounts[1], &cngn).await.unwrap();
    assert_eq!(fresh.converted, dec("3.50"));
    assert_eq!(fresh.rate_seq, seq);
    let events = f.log.events();
    let store_at = events
        .iter()
        .position(|e| e.starts_with("store:rate:pair.CNGN.USD"))
        .unwrap();
    // The seed logs the Redis key, which follows the crate's layout.
    let inv = format!("cache:invalidate:{}", keys::value("rate", "CNGN:USD"));
    let inv_at = events.iter().position(|e| *e == inv).unwrap();
    assert!(store_at < inv_at, "{events:?}");
}

#[tokio::test]
async fn keeps_working_with_redis_down_and_converges_after() {
    let mut server = RedisServer::start();
    let f = fleet(&server, 3).await;
    let (a, b, c) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    let (w1, w2) = (scenario::wallet_id(4), scenario::wallet_id(5));
    let pair = CurrencyPairKey::cngn_rate("EUR");
    for n in &f.nodes {
        n.balance(&w1).await.unwrap();
        n.balance(&w2).await.unwrap();
        n.convert(dec("250.00"), &pair).await.unwrap();
    }

    server.kill();
    // Writes: the store takes them, the cache queues its invalidations; nothing fails.
    a.complete_transfer(&w1, &w2, dec("10.00")).await.unwrap();
    a.upsert_rate(&pair, dec("0.00061")).await.unwrap();
    a.create_trustline(&w1, "USD").await.unwrap();
    // Reads on every node answer, and answer what the store holds.
    for n in [a, b, c] {
        assert_eq!(n.balance(&w1).await.unwrap().amount, dec("990.00"));
        assert_eq!(n.balance(&w2).await.unwrap().amount, dec("1010.00"));
        assert_eq!(
            n.convert(dec("250.00"), &pair).await.unwrap().converted,
            dec("0.15")
        );
        assert!(n.has_trustline(&w1, "USD").await.unwrap());
        n.fee("transfer").await.unwrap();
    }
    b.complete_transfer(&w2, &w1, dec("5.00")).await.unwrap();
    assert!(!a.cache.health().await.redis_reachable);

    server.restart();
    // Back: every node rejoins, and serves the store's values from the cache again.
    eventually("every node back on the bus", PATIENCE, || async {
        f.nodes.iter().all(|n| n.cache.is_subscribed())
    })
    .await;
    eventually("outboxes replayed", PATIENCE, || async {
        let mut empty = true;
        for n in &f.nodes {
            empty &= n.cache.health().await.outbox_entries == 0;
        }
        empty
    })
    .await;
    for n in &f.nodes {
        let n = n.clone();
        let (w1, w2) = (w1.clone(), w2.clone());
        eventually("node converged on the store", PATIENCE, || {
            let (n, w1, w2) = (n.clone(), w1.clone(), w2.clone());
            async move {
                n.balance(&w1).await.map(|v| v.amount).ok() == Some(dec("995.00"))
                    && n.balance(&w2).await.map(|v| v.amount).ok() == Some(dec("1005.00"))
            }
        })
        .await;
    }
    // And the cache is in use again: a second read is an L1 hit.
    let before = b.cache.stats().namespace("wallet.balance").unwrap().l1_hits;
    b.balance(&w1).await.unwrap();
    b.balance(&w1).await.unwrap();
    let after = b.cache.stats().namespace("wallet.balance").unwrap().l1_hits;
    assert!(after > before, "L1 not serving after recovery");
    // A write after recovery reaches the other nodes through Redis again.
    c.complete_transfer(&w1, &w2, dec("1.00")).await.unwrap();
    eventually("B drops the balance after recovery", PATIENCE, || async {
        b.balances.get_local(&BalanceKey(w1.clone())).is_none()
    })
    .await;
    assert_eq!(b.balance(&w1).await.unwrap().amount, dec("994.00"));
}

#[tokio::test]
async fn workload_runs_and_agrees_with_the_store() {
    let server = RedisServer::start();
    let f = fleet(&server, 3).await;
    let report = scenario::run_fleet(&f, WALLETS, 600).await;
    assert_eq!(report.reads + report.writes, 1800);
    assert!(
        report.hit.0.len() as u64 > report.store_reads,
        "the cache barely served"
    );
    for n in &f.nodes {
        for i in 0..WALLETS {
            let w = scenario::wallet_id(i);
            let want = f.store.balance(&w).unwrap();
            let n = n.clone();
            eventually("balance agrees with the store", PATIENCE, || {
                let (n, w) = (n.clone(), w.clone());
                async move { n.balance(&w).await.unwrap().amount == want }
            })
            .await;
        }
    }
}
