#![allow(clippy::unwrap_used)]
//! Server health and timeouts against a real PostgreSQL (after PgBouncer's test_timeouts):
//! server_idle_timeout, server_lifetime per database, server_check_query / server_check_delay,
//! and server_round_robin (server_login_retry and several hosts are in tests/hosts.rs).

use crate::common::*;
use pgferry::config::PoolMode;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_servers_down_to_min_pool_size() {
    let env = env(PoolMode::Transaction, 4, |c| {
        c.pgferry.server_idle_timeout = 1.0;
        c.pgferry.min_pool_size = 1;
    })
    .await;
    let direct = env.direct().await;
    let c = env.connect().await;
    sleepers(&env, 3, 0.3).await;
    assert!(activity_count(&direct, "usename = 'app'").await >= 3);
    assert!(
        eventually(Duration::from_secs(6), || async {
            activity_count(&direct, "usename = 'app'").await == 1
        })
        .await,
        "idle servers were not closed"
    );
    // min_pool_size keeps one, however long it idles.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(activity_count(&direct, "usename = 'app'").await, 1);
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_per_database_closes_old_servers() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.databases.get_mut("shop").unwrap().server_lifetime = Some(1.0);
    })
    .await;
    let direct = env.direct().await;
    let c = env.connect().await;
    let first = backend_pid(&c).await;
    // Idle past its lifetime: closed without any client activity.
    assert!(
        eventually(Duration::from_secs(6), || async {
            activity_count(&direct, "usename = 'app'").await == 0
        })
        .await,
        "an idle server outlived server_lifetime"
    );
    assert_ne!(backend_pid(&c).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_runs_only_after_server_check_delay() {
    let env = env(PoolMode::Transaction, 1, |c| {
        c.pgferry.server_check_query = "SELECT nextval('checks')".into();
        c.pgferry.server_check_delay = 3.0;
    })
    .await;
    let direct = env.direct().await;
    direct
        .batch_execute("CREATE SEQUENCE checks; ALTER SEQUENCE checks OWNER TO app")
        .await
        .unwrap();
    let checks = || async {
        let r = direct
            .query_one("SELECT last_value, is_called FROM checks", &[])
            .await
            .unwrap();
        if r.get::<_, bool>(1) {
            r.get::<_, i64>(0)
        } else {
            0
        }
    };
    let c = env.connect().await;
    for _ in 0..5 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(checks().await, 0, "checked a connection used a moment ago");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    c.simple_query("SELECT 1").await.unwrap();
    assert_eq!(checks().await, 1, "no check after server_check_delay");
    c.simple_query("SELECT 1").await.unwrap();
    assert_eq!(checks().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_check_closes_the_server_and_the_client_gets_another() {
    let env = env(PoolMode::Transaction, 1, |c| {
        // (A divisor PostgreSQL cannot fold at plan time.)
        c.pgferry.server_check_query = "SELECT 1 / (CASE WHEN \
             current_setting('pgferry_test.bad', true) = 'yes' THEN 0 ELSE 1 END)"
            .into();
        c.pgferry.server_check_delay = 0.0;
    })
    .await;
    let direct = env.direct().await;
    let a = env.connect().await;
    let b = env.connect().await;
    // Client a leaves a mark on the pool's only server connection.
    let msgs = a
        .simple_query("SET pgferry_test.bad = 'yes'; SELECT pg_backend_pid()")
        .await
        .unwrap();
    let bad: i32 = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap();
    // The check fails on it: closed, and b gets a fresh one without seeing an error.
    let good = backend_pid(&b).await;
    assert_ne!(good, bad);
    assert!(
        eventually(Duration::from_secs(5), || async {
            activity_count(&direct, &format!("pid = {bad}")).await == 0
        })
        .await,
        "the server that failed its check is still open"
    );
    assert_eq!(backend_pid(&a).await, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_servers_killed_behind_pgferrys_back_are_never_handed_out() {
    // The default check query: an empty one.
    let env = env(PoolMode::Transaction, 1, |c| {
        c.pgferry.server_check_delay = 0.0
    })
    .await;
    let direct = env.direct().await;
    let c = env.connect().await;
    for i in 0..5 {
        let old = backend_pid(&c).await;
        direct
            .query_one("SELECT pg_terminate_backend($1)", &[&old])
            .await
            .unwrap();
        // Straight away: the dead server is caught by the probe or the check, never the client.
        let new = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap_or_else(|e| panic!("round {i}: the client saw {e:?}"))
            .get::<_, i32>(0);
        assert_ne!(new, old);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_round_robin_reuses_every_idle_server_in_turn() {
    let env = env(PoolMode::Transaction, 3, |_| {}).await;
    sleepers(&env, 3, 0.3).await;
    let c = env.connect().await;
    let mut lifo = BTreeSet::new();
    for _ in 0..6 {
        lifo.insert(backend_pid(&c).await);
    }
    assert_eq!(lifo.len(), 1, "LIFO used {lifo:?}");
    // Switched on live (SET, as RELOAD would).
    env.app().set_setting("server_round_robin", "1").unwrap();
    let mut rr = BTreeSet::new();
    for _ in 0..6 {
        rr.insert(backend_pid(&c).await);
    }
    assert_eq!(rr.len(), 3, "round robin used {rr:?}");
}
