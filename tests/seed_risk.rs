//! The risk module's caches (`examples/risk`) against a real Redis, across nodes: a profile
//! update re-read and metrics recomputed elsewhere, limit changes dropping metrics everywhere,
//! a tenant's batch invalidation sparing another tenant's same user ids, the warm-up, tenant
//! isolation, and the document's dashboard pattern (one calculation, then cache hits).

#[path = "../examples/risk/scenario.rs"]
mod scenario;
mod support;

use rust_decimal::Decimal;
use scenario::{Presence, RiskNode, RiskStore, TenantId, Timing, Tolerance, UserId};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, RedisServer, PATIENCE};

async fn node(server: &RedisServer, store: &Arc<RiskStore>) -> RiskNode {
    let timing = Timing::REAL_TTLS_FAST_BACKEND;
    let n = RiskNode::new(
        scenario::build_cache(Some(&server.url()), Some(support::LOOSE_BOUND), timing),
        store.clone(),
    );
    eventually("subscribed", PATIENCE, || async { n.is_subscribed() }).await;
    n
}

fn store() -> Arc<RiskStore> {
    RiskStore::new(Timing::REAL_TTLS_FAST_BACKEND)
}

/// Invalidations from other nodes that `node` applied in `ns`.
fn applied(node: &RiskNode, ns: &str) -> u64 {
    node.stats().namespace(ns).unwrap().invalidations_applied
}

fn calculations(store: &RiskStore) -> u64 {
    store.calls.metrics_calculations.load(Relaxed)
}

const NONE: Presence = Presence {
    metrics_exists: false,
    profile_exists: false,
};
const BOTH: Presence = Presence {
    metrics_exists: true,
    profile_exists: true,
};

#[tokio::test]
async fn a_profile_update_on_one_node_is_read_and_metrics_recomputed_on_another() {
    let server = RedisServer::start();
    let store = store();
    let (a, b) = (node(&server, &store).await, node(&server, &store).await);
    let tenants = scenario::tenants();
    let user = UserId::new("user-123");
    scenario::seed(&a, &tenants, std::slice::from_ref(&user))
        .await
        .unwrap();
    let (ta, tb) = (a.tenant(&tenants[0]), b.tenant(&tenants[0]));
    let old_profile = tb.get_risk_profile(&user).await.unwrap();
    let old = tb.calculate_risk_metrics(&user).await.unwrap();
    assert_eq!(tb.cache_presence(&user), BOTH);
    let calcs = calculations(&store);

    let new = ta
        .update_risk_profile(&user, Tolerance::Aggressive)
        .await
        .unwrap();
    assert_ne!(new.version, old_profile.version);
    eventually("b reads the new profile", PATIENCE, || async {
        *tb.get_risk_profile(&user).await.unwrap() == new
    })
    .await;
    // The metrics were dropped with it: b's next read recomputes them with the new profile.
    eventually("b recomputes the metrics", PATIENCE, || async {
        tb.calculate_risk_metrics(&user)
            .await
            .unwrap()
            .profile_version
            == new.version
    })
    .await;
    assert_eq!(calculations(&store), calcs + 1, "one calculation, on b");
    let m = tb.calculate_risk_metrics(&user).await.unwrap();
    assert_eq!(Some(&*m), store.metrics_now(&tenants[0], &user).as_ref());
    assert_ne!(m.overall_risk_score, old.overall_risk_score);
    // The updating node re-cached the profile: its own next read is an L1 hit.
    let hits = a.stats().namespace("risk_profile").unwrap().l1_hits;
    assert_eq!(*ta.get_risk_profile(&user).await.unwrap(), new);
    assert_eq!(
        a.stats().namespace("risk_profile").unwrap().l1_hits,
        hits + 1
    );
}

#[tokio::test]
async fn creating_updating_and_deleting_a_limit_drops_metrics_on_every_node() {
    let server = RedisServer::start();
    let store = store();
    let nodes = [
        node(&server, &store).await,
        node(&server, &store).await,
        node(&server, &store).await,
    ];
    let tenants = scenario::tenants();
    let user = UserId::new("user-7");
    scenario::seed(&nodes[0], &tenants, std::slice::from_ref(&user))
        .await
        .unwrap();

    let id = Arc::new(std::sync::Mutex::new(0));
    for step in ["create", "update", "delete"] {
        for n in &nodes {
            let t = n.tenant(&tenants[0]);
            t.calculate_risk_metrics(&user).await.unwrap();
            t.get_risk_profile(&user).await.unwrap();
            assert_eq!(t.cache_presence(&user), BOTH);
        }
        let writer = nodes[0].tenant(&tenants[0]);
        match step {
            "create" => {
                let new = writer
                    .create_risk_limit(&user, "max_leverage", Decimal::new(300, 2))
                    .await
                    .unwrap();
                *id.lock().unwrap() = new;
            }
            "update" => {
                let l = *id.lock().unwrap();
                assert!(writer
                    .update_risk_limit(&user, l, Decimal::new(500, 2))
                    .await
                    .unwrap());
            }
            _ => {
                let l = *id.lock().unwrap();
                assert!(writer.delete_risk_limit(&user, l).await.unwrap());
            }
        }
        for n in &nodes[1..] {
            let t = n.tenant(&tenants[0]);
            eventually(&format!("{step}: metrics dropped"), PATIENCE, || async {
                !t.cache_presence(&user).metrics_exists
            })
            .await;
            // The profile is not a limit's business.
            assert!(t.cache_presence(&user).profile_exists);
        }
        let want = store.metrics_now(&tenants[0], &user).unwrap();
        for n in &nodes {
            assert_eq!(
                *n.tenant(&tenants[0])
                    .calculate_risk_metrics(&user)
                    .await
                    .unwrap(),
                want,
                "{step}"
            );
        }
    }
    // A limit of another user (or tenant) cannot be changed through this user.
    let other = nodes[0].tenant(&tenants[1]);
    let l = *id.lock().unwrap();
    assert!(!other
        .update_risk_limit(&user, l, Decimal::ONE)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_tenants_batch_invalidation_spares_another_tenants_same_user_ids() {
    let server = RedisServer::start();
    let store = store();
    let (a, b) = (node(&server, &store).await, node(&server, &store).await);
    let tenants = scenario::tenants();
    let users = scenario::users(8);
    scenario::seed(&a, &tenants, &users).await.unwrap();
    for t in &tenants {
        let h = b.tenant(t);
        for u in &users {
            h.calculate_risk_metrics(u).await.unwrap();
            h.get_risk_profile(u).await.unwrap();
            assert_eq!(h.cache_presence(u), BOTH);
        }
    }
    let (x, y) = (b.tenant(&tenants[0]), b.tenant(&tenants[1]));
    let other_tenant_keeps_everything = || {
        for u in &users {
            assert_eq!(
                y.cache_presence(u),
                BOTH,
                "the other tenant's {} stays",
                u.0
            );
        }
    };
    let batch = &users[..5];
    assert_eq!(
        a.tenant(&tenants[0]).batch_invalidate(batch).await.unwrap(),
        10
    );
    for u in batch {
        eventually(&format!("{} dropped on b", u.0), PATIENCE, || async {
            x.cache_presence(u) == NONE
        })
        .await;
    }
    other_tenant_keeps_everything();
    for u in &users[5..] {
        assert_eq!(x.cache_presence(u), BOTH, "{} was not in the batch", u.0);
    }
    // The whole tenant, by tag: again only its own entries.
    let dropped = a.tenant(&tenants[0]).invalidate_tenant().await.unwrap();
    assert!(dropped >= 6, "{dropped}");
    for u in &users[5..] {
        eventually(
            "the tenant's other users dropped on b",
            PATIENCE,
            || async { x.cache_presence(u) == NONE },
        )
        .await;
    }
    other_tenant_keeps_everything();
}

#[tokio::test]
async fn warm_up_makes_first_reads_cache_hits_on_every_node() {
    let server = RedisServer::start();
    let store = store();
    let (a, b) = (node(&server, &store).await, node(&server, &store).await);
    let tenants = scenario::tenants();
    let users = scenario::users(12);
    scenario::seed(&a, &tenants, &users).await.unwrap();
    a.clear_all_cache().await.unwrap();
    let ta = a.tenant(&tenants[0]);
    let (calcs, queries) = (
        calculations(&store),
        store.calls.profile_queries.load(Relaxed),
    );
    let w = ta.warm_up(&users).await;
    assert_eq!(
        (
            w.profile_batches,
            w.profiles_loaded,
            w.metrics_batches,
            w.metrics_computed,
            w.failed
        ),
        (1, 12, 1, 12, 0)
    );
    assert_eq!(
        calculations(&store),
        calcs + 1,
        "one calculation run for every user"
    );
    assert_eq!(store.calls.profile_queries.load(Relaxed), queries + 1);

    let stats = |n: &RiskNode, ns: &str| *n.stats().namespace(ns).unwrap();
    let (a0, b0) = (stats(&a, "risk_metrics"), stats(&b, "risk_metrics"));
    let (ap0, bp0) = (stats(&a, "risk_profile"), stats(&b, "risk_profile"));
    let tb = b.tenant(&tenants[0]);
    for u in &users {
        ta.calculate_risk_metrics(u).await.unwrap();
        ta.get_risk_profile(u).await.unwrap();
        tb.calculate_risk_metrics(u).await.unwrap();
        tb.get_risk_profile(u).await.unwrap();
    }
    let n = users.len() as u64;
    let (a1, b1) = (stats(&a, "risk_metrics"), stats(&b, "risk_metrics"));
    let (ap1, bp1) = (stats(&a, "risk_profile"), stats(&b, "risk_profile"));
    assert_eq!(
        a1.l1_hits - a0.l1_hits,
        n,
        "the warming node answers from L1"
    );
    assert_eq!(ap1.l1_hits - ap0.l1_hits, n);
    assert_eq!(
        (b1.l2_hits - b0.l2_hits, b1.loads - b0.loads),
        (n, 0),
        "the other node from Redis"
    );
    assert_eq!((bp1.l2_hits - bp0.l2_hits, bp1.loads - bp0.loads), (n, 0));
    assert_eq!(
        calculations(&store),
        calcs + 1,
        "no calculation on the first reads"
    );
}

#[tokio::test]
async fn tenants_cannot_see_or_invalidate_each_others_entries() {
    let server = RedisServer::start();
    let store = store();
    let (a, b) = (node(&server, &store).await, node(&server, &store).await);
    let tenants = scenario::tenants();
    let user = UserId::new("user-1");
    let (x, y) = (a.tenant(&tenants[0]), a.tenant(&tenants[1]));
    x.create_risk_profile(&user, Tolerance::Conservative)
        .await
        .unwrap();
    y.create_risk_profile(&user, Tolerance::Aggressive)
        .await
        .unwrap();
    // Same user id, two tenants: two entries, each its own tenant's.
    let (px, py) = (
        x.get_risk_profile(&user).await.unwrap(),
        y.get_risk_profile(&user).await.unwrap(),
    );
    assert_eq!(
        (px.tenant.as_str(), px.tolerance),
        ("tenant-456", Tolerance::Conservative)
    );
    assert_eq!(
        (py.tenant.as_str(), py.tolerance),
        ("tenant-789", Tolerance::Aggressive)
    );
    let exists = |k: &str| server.cmd::<bool>(&[b"EXISTS", k.as_bytes()]);
    assert!(
        exists("risk:risk_profile:user-1:tenant-456")
            && exists("risk:risk_profile:user-1:tenant-789")
    );
    // A tenant with no such user sees nothing of the other's.
    let z = b.tenant(&TenantId::new("tenant-000").unwrap());
    assert!(z.get_risk_profile(&user).await.is_err());
    assert!(z.calculate_risk_metrics(&user).await.is_err());

    let (bx, by) = (b.tenant(&tenants[0]), b.tenant(&tenants[1]));
    for h in [&bx, &by] {
        h.calculate_risk_metrics(&user).await.unwrap();
        h.get_risk_profile(&user).await.unwrap();
    }
    // Everything x can do to its user leaves y's alone, on every node.
    let applied = applied(&b, "risk_profile");
    x.update_risk_profile(&user, Tolerance::Moderate)
        .await
        .unwrap();
    x.invalidate_all(&user).await.unwrap();
    x.batch_invalidate(std::slice::from_ref(&user))
        .await
        .unwrap();
    x.invalidate_tenant().await.unwrap();
    eventually("b applied the profile update", PATIENCE, || async {
        self::applied(&b, "risk_profile") > applied
    })
    .await;
    eventually("x's entries dropped on b", PATIENCE, || async {
        bx.cache_presence(&user) == NONE
    })
    .await;
    assert_eq!(by.cache_presence(&user), BOTH);
    assert_eq!(
        by.get_risk_profile(&user).await.unwrap().tolerance,
        Tolerance::Aggressive
    );
    // Tenant ids are checked, so a tenant's tag cannot name another's keys.
    for bad in ["", "a:b", "tenant*", "t e"] {
        assert!(TenantId::new(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn a_dashboard_refresh_is_one_calculation_then_cache_hits() {
    let server = RedisServer::start();
    let store = store();
    let nodes = [node(&server, &store).await, node(&server, &store).await];
    let tenants = scenario::tenants();
    let users = scenario::users(5);
    scenario::seed(&nodes[0], &tenants, &users).await.unwrap();
    // Real TTLs (30 s): six refreshes are one calculation and five hits per dashboard.
    let d = scenario::run_dashboards(&nodes, &tenants, &users, 6, Duration::from_millis(5)).await;
    assert_eq!(d.errors, 0);
    assert_eq!(d.requests, 60);
    assert_eq!(d.misses.len(), 10, "one calculation per dashboard");
    assert_eq!(d.hits.len(), 50);
    assert_eq!(calculations(&store), 10);
}
