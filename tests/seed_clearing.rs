//! The clearing and netting engine's caches (`examples/clearing`) against a real Redis, across
//! nodes: status changes seen by the next read elsewhere, obligation events dropping exactly
//! their window's netting everywhere, settlement dropping every cache of the window, the
//! warm-up as one batch, and parsed messages shared without parsing again.

#[path = "../examples/clearing/scenario.rs"]
mod scenario;
mod support;

use rust_decimal::Decimal;
use scenario::{
    bilateral_key, BilateralKey, ClearingNode, ClearingStore, MessageKey, MultilateralKey,
    ObligationEventType, Plan, WindowStatus,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use support::{eventually, RedisServer, PATIENCE};

async fn node(server: &RedisServer, store: &Arc<ClearingStore>) -> ClearingNode {
    let cache = scenario::build_cache(Some(&server.url()), Some(support::LOOSE_BOUND));
    let c = cache.clone();
    eventually("subscribed", PATIENCE, || {
        let c = c.clone();
        async move { c.is_subscribed() }
    })
    .await;
    ClearingNode::new(cache, store.clone())
}

/// A store with every region's window seeded, backend costs cut to a millisecond or so.
fn store() -> Arc<ClearingStore> {
    let store = ClearingStore::new(scenario::BackendCosts::scaled(45));
    scenario::seed(&store, &Plan::default());
    store
}

fn applied(node: &ClearingNode, ns: &str) -> u64 {
    support::applied(&node.cache, ns)
}

async fn await_applied(node: &ClearingNode, ns: &str, n: u64) {
    support::await_applied(&node.cache, ns, n).await
}

fn message_key(txn: &str) -> MessageKey {
    MessageKey {
        message_type: "pacs.008".into(),
        transaction_id: txn.into(),
    }
}

/// Reads every netting key of `window` on `node` (so its L1 holds them).
async fn read_netting(
    node: &ClearingNode,
    window: &str,
) -> (Vec<BilateralKey>, Vec<MultilateralKey>) {
    let (bi, multi) = node.store.netting_keys(window);
    for k in &bi {
        node.bilateral_net(k).await.unwrap();
    }
    for k in &multi {
        node.multilateral_net(k).await.unwrap();
    }
    (bi, multi)
}

/// How many of the window's netting keys `node` holds in L1.
fn held(node: &ClearingNode, keys: &(Vec<BilateralKey>, Vec<MultilateralKey>)) -> usize {
    keys.0
        .iter()
        .filter(|k| node.bilateral.get_local(k).is_some())
        .count()
        + keys
            .1
            .iter()
            .filter(|k| node.multilateral.get_local(k).is_some())
            .count()
}

#[tokio::test]
async fn a_status_change_on_one_node_is_read_by_the_next_read_on_another() {
    let server = RedisServer::start();
    let store = store();
    let a = node(&server, &store).await;
    let b = node(&server, &store).await;
    a.open_window("Global").await.unwrap();
    await_applied(&b, "window", 1).await;
    let seen = b.active_window("Global").await.unwrap().unwrap();
    assert_eq!(seen.status, WindowStatus::Open);
    assert!(
        b.windows.get_local("Global").is_some(),
        "b caches the window"
    );

    let mut expected = 1;
    for status in [WindowStatus::InProgress, WindowStatus::Completed] {
        let written = a.set_status("Global", status).await.unwrap();
        // Acknowledged: b's next reads converge on it (poll with a deadline)...
        eventually(&format!("b reads {status:?}"), PATIENCE, || async {
            b.active_window("Global").await.unwrap().unwrap().status == status
        })
        .await;
        // ... and once the write's message is applied there, no read returns the old row.
        expected += 1;
        await_applied(&b, "window", expected).await;
        for _ in 0..50 {
            assert_eq!(*b.active_window("Global").await.unwrap().unwrap(), written);
        }
    }
    // A new window replaces the active one everywhere.
    let fresh = a.new_window("Global", 2).await.unwrap();
    await_applied(&b, "window", expected + 1).await;
    assert_eq!(*b.active_window("Global").await.unwrap().unwrap(), fresh);
    // Every change was written through: no node ever queried the database for the window.
    assert_eq!(store.calls.window_queries.load(Relaxed), 0);
}

#[tokio::test]
async fn an_obligation_event_drops_that_windows_netting_on_every_node_and_only_it() {
    let server = RedisServer::start();
    let store = store();
    let a = node(&server, &store).await;
    let b = node(&server, &store).await;
    let (global, _) = a.open_window("Global").await.unwrap();
    let (apac, _) = a.open_window("APAC").await.unwrap();
    let g = read_netting(&b, &global.id).await;
    let p = read_netting(&b, &apac.id).await;
    let (g_count, p_count) = (g.0.len() + g.1.len(), p.0.len() + p.1.len());
    assert_eq!(held(&b, &g), g_count);
    assert_eq!(held(&b, &p), p_count);

    // The obligation engine posts one: database first, then the event.
    let before = (
        applied(&b, "net_bilateral"),
        applied(&b, "net_multilateral"),
    );
    let event = store.add_obligation(
        &global.id,
        scenario::Obligation {
            debtor: "ICICI".into(),
            creditor: "HDFC".into(),
            currency: "USD".into(),
            amount: Decimal::new(5_000_000, 2),
        },
    );
    assert_eq!(event.event_type, ObligationEventType::Created);
    let dropped = a.handle_obligation_event(&event).await.unwrap();
    assert_eq!(
        dropped, g_count,
        "every netting key of the window, from Redis's tag sets"
    );
    await_applied(&b, "net_bilateral", before.0 + 1).await;
    await_applied(&b, "net_multilateral", before.1 + 1).await;
    assert_eq!(held(&b, &g), 0, "b dropped the window's netting");
    assert_eq!(
        held(&b, &p),
        p_count,
        "another window's netting stays in b's L1"
    );

    // b's next read recomputes, with the new obligation in it.
    let key = bilateral_key(&global.id, "USD", "ICICI", "HDFC");
    let got = b.bilateral_net(&key).await.unwrap();
    assert_eq!(Some(&*got), store.bilateral_now(&key).as_ref());
    assert_eq!(got.revision, store.revision(&global.id));

    // An update works the same way.
    let before = applied(&b, "net_bilateral");
    let event = store.update_obligation(&global.id, 0, Decimal::new(1, 2));
    a.handle_obligation_event(&event).await.unwrap();
    await_applied(&b, "net_bilateral", before + 1).await;
    assert!(b.bilateral.get_local(&key).is_none());

    // Without KEYS or SCAN: Redis never ran either.
    let stats: String = server.cmd(&[b"INFO", b"commandstats"]);
    assert!(!stats.contains("cmdstat_keys:"), "{stats}");
    assert!(!stats.contains("cmdstat_scan:"), "{stats}");
}

#[tokio::test]
async fn settlement_drops_every_cache_of_the_window_on_every_node() {
    let server = RedisServer::start();
    let store = store();
    let a = node(&server, &store).await;
    let b = node(&server, &store).await;
    let (emea, _) = a.open_window("EMEA").await.unwrap();
    let (global, _) = a.open_window("Global").await.unwrap();
    await_applied(&b, "window", 2).await;
    store.receive_message("txn-e", "SBI", "AXIS", Decimal::new(12_345, 2));
    store.receive_message("txn-g", "ICICI", "YES", Decimal::new(67_890, 2));
    for n in [&a, &b] {
        n.active_window("EMEA").await.unwrap();
        n.active_window("Global").await.unwrap();
        n.message(&emea.id, &message_key("txn-e")).await.unwrap();
        n.message(&global.id, &message_key("txn-g")).await.unwrap();
    }
    let e = read_netting(&b, &emea.id).await;
    let g = read_netting(&b, &global.id).await;
    let _ = read_netting(&a, &emea.id).await;
    let _ = read_netting(&a, &global.id).await;

    let before: Vec<u64> = scenario::NAMESPACES
        .iter()
        .map(|ns| applied(&b, ns))
        .collect();
    let event = store.settle(&emea.id);
    let dropped = a.handle_obligation_event(&event).await.unwrap();
    // The window's row, its netting and its message.
    assert_eq!(dropped, 1 + e.0.len() + e.1.len() + 1);
    // One message for all namespaces: each of b's namespaces applied it.
    for (ns, was) in scenario::NAMESPACES.iter().zip(before) {
        await_applied(&b, ns, was + 1).await;
    }
    for n in [&a, &b] {
        assert!(n.windows.get_local("EMEA").is_none());
        assert!(n.messages.get_local(&message_key("txn-e")).is_none());
        assert_eq!(held(n, &e), 0, "the settled window's netting is gone");
        // Other windows' entries stay.
        assert!(n.windows.get_local("Global").is_some());
        assert!(n.messages.get_local(&message_key("txn-g")).is_some());
        assert_eq!(held(n, &g), g.0.len() + g.1.len());
    }
    // And from Redis: a node with nothing in L1 finds nothing for the settled window.
    let c = node(&server, &store).await;
    assert!(c.messages.get(&message_key("txn-e")).await.is_none());
    assert!(c.bilateral.get(&e.0[0]).await.is_none());
    assert!(c.messages.get(&message_key("txn-g")).await.is_some());
}

#[tokio::test]
async fn opening_a_window_warms_its_netting_in_one_batch() {
    let server = RedisServer::start();
    let store = store();
    let a = node(&server, &store).await;
    let b = node(&server, &store).await;
    let (w, warmed) = a.open_window("APAC").await.unwrap();
    let (bi, multi) = store.netting_keys(&w.id);
    assert!(
        bi.len() > 10 && multi.len() > 10,
        "{} {}",
        bi.len(),
        multi.len()
    );
    assert_eq!(
        (warmed.bilateral_keys, warmed.multilateral_keys),
        (bi.len(), multi.len())
    );
    // One netting pass per kind, for every key, and every value written back to Redis.
    assert_eq!(
        (warmed.bilateral_passes, warmed.multilateral_passes),
        (1, 1)
    );
    assert_eq!(store.calls.bilateral_passes.load(Relaxed), 1);
    assert_eq!(store.calls.bilateral_rows.load(Relaxed), bi.len() as u64);
    assert_eq!(store.calls.multilateral_passes.load(Relaxed), 1);
    let sa = a.cache.stats();
    assert_eq!(
        sa.namespace("net_bilateral").unwrap().fills_stored,
        bi.len() as u64
    );
    assert_eq!(
        sa.namespace("net_multilateral").unwrap().fills_stored,
        multi.len() as u64
    );

    // The other node's first reads: Redis hits, no netting pass.
    let got = b.bilateral.batch().get(&bi).await;
    assert!(got.iter().all(Option::is_some));
    for k in &multi {
        b.multilateral_net(k).await.unwrap();
    }
    let sb = b.cache.stats();
    let (nb, nm) = (
        sb.namespace("net_bilateral").unwrap(),
        sb.namespace("net_multilateral").unwrap(),
    );
    assert_eq!((nb.l2_hits, nb.loads), (bi.len() as u64, 0));
    assert_eq!((nm.l2_hits, nm.loads), (multi.len() as u64, 0));
    assert_eq!(store.calls.bilateral_passes.load(Relaxed), 1);
    assert_eq!(store.calls.multilateral_passes.load(Relaxed), 1);
    // And the warming node answers from L1.
    for k in &bi {
        a.bilateral_net(k).await.unwrap();
    }
    assert_eq!(
        a.cache.stats().namespace("net_bilateral").unwrap().l1_hits,
        bi.len() as u64
    );
}

#[tokio::test]
async fn a_message_parsed_on_one_node_is_not_parsed_again_on_another() {
    let server = RedisServer::start();
    let store = store();
    let a = node(&server, &store).await;
    let b = node(&server, &store).await;
    let window = store.active_now("Global").unwrap().id;
    store.receive_message(
        "txn-uuid-123",
        "ICICI Bank",
        "HDFC Bank",
        Decimal::new(5_000_000, 2),
    );
    let key = message_key("txn-uuid-123");
    let first = a.message(&window, &key).await.unwrap();
    assert_eq!(first.debtor, "ICICI Bank");
    assert_eq!(first.amount, Decimal::new(5_000_000, 2));
    assert_eq!(store.calls.parses.load(Relaxed), 1);
    let second = b.message(&window, &key).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(store.calls.parses.load(Relaxed), 1, "b used a's parse");
    let s = *b.cache.stats().namespace("iso20022").unwrap();
    assert_eq!((s.l2_hits, s.loads), (1, 0));
    b.message(&window, &key).await.unwrap();
    assert_eq!(b.cache.stats().namespace("iso20022").unwrap().l1_hits, 1);
}

#[tokio::test]
async fn the_example_scenario_ends_with_every_node_agreeing_with_the_database() {
    let server = RedisServer::start();
    let store = store();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&server, &store).await);
    }
    let plan = Plan {
        ops_per_node: 1_500,
        obligation_every: 300,
        ..Plan::default()
    };
    let out = scenario::run(&nodes, plan, true).await;
    assert_eq!(out.write_errors, 0);
    assert_eq!(out.disagreements, 0);
    assert_eq!(
        out.warmups.len(),
        4,
        "three windows opened, one reopened after settlement"
    );
    for (w, warmed) in &out.warmups {
        assert_eq!(
            (
                warmed.bilateral_passes,
                warmed.multilateral_passes,
                warmed.failed
            ),
            (1, 1, 0),
            "{w}"
        );
    }
    assert_eq!(out.settled.len(), 1);
    assert!(out.settled[0].1 > 0);
}
