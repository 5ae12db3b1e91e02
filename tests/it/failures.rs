#![allow(clippy::unwrap_used)]
//! Server failures behind pgferry: backends terminated between and during queries, a
//! PostgreSQL restart under load, and PostgreSQL being down when pgferry starts.

use crate::common::*;
use pgferry::config::PoolMode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tokio_postgres::Client;

async fn backend_pid(c: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
}

async fn backend_gone(direct: &Client, pid: i32) -> bool {
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    n == 0
}

/// The pids of `app`'s backends on PostgreSQL now.
async fn app_backends(direct: &Client) -> Vec<i32> {
    direct
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'app' ORDER BY pid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_between_queries_is_replaced() {
    let env = env(PoolMode::Transaction, 1, |_| {}).await;
    let direct = env.direct().await;
    let c = env.connect().await;

    // Round 1: terminate and query straight away (the backend may still be exiting).
    let old = backend_pid(&c).await.unwrap();
    assert_eq!(app_backends(&direct).await, [old]);
    terminate_backend(&direct, old).await;
    let mut errors = Vec::new();
    for i in 0..5i32 {
        match timeout(
            Duration::from_secs(10),
            c.query_one("SELECT $1::int + 1", &[&i]),
        )
        .await
        .expect("query hung after pg_terminate_backend")
        {
            Ok(row) => assert_eq!(row.get::<_, i32>(0), i + 1),
            Err(e) => {
                assert!(
                    errors.is_empty() && i == 0,
                    "a failure other than the first query after the termination: {e:?} \
                     (earlier: {errors:?})"
                );
                errors.push(e);
            }
        }
    }
    assert!(!c.is_closed(), "the client lost its session");
    let new = backend_pid(&c).await.unwrap();
    assert_ne!(new, old);
    assert!(
        eventually(Duration::from_secs(10), || backend_gone(&direct, old)).await,
        "terminated backend {old} still listed"
    );
    assert_eq!(app_backends(&direct).await, [new], "pool did not recover");

    // Round 2: once the terminated backend is gone, the dead idle connection is detected at
    // checkout and replaced without any error at all.
    terminate_backend(&direct, new).await;
    assert!(eventually(Duration::from_secs(10), || backend_gone(&direct, new)).await);
    for i in 0..5i32 {
        let row = timeout(
            Duration::from_secs(10),
            c.query_one("SELECT $1::int * 2", &[&i]),
        )
        .await
        .expect("query hung")
        .expect("query after an idle backend was terminated");
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
    let newer = backend_pid(&c).await.unwrap();
    assert_ne!(newer, new);
    assert_eq!(app_backends(&direct).await, [newer], "pool did not recover");
    // Another client shares the one recovered server connection.
    let c2 = env.connect().await;
    assert_eq!(backend_pid(&c2).await.unwrap(), newer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_during_a_query_fails_that_query_only() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let direct = env.direct().await;
    let c = Arc::new(env.connect().await);

    // Extended protocol.
    let q = {
        let c = c.clone();
        tokio::spawn(async move { c.query("SELECT pg_sleep(5)", &[]).await })
    };
    let pid = running_backend(&direct, "SELECT pg_sleep(5)%").await;
    terminate_backend(&direct, pid).await;
    let r = timeout(Duration::from_secs(10), q)
        .await
        .expect("the client hung after its backend was terminated")
        .unwrap();
    let e = r.expect_err("a query whose backend was terminated succeeded");
    assert!(e.code().is_some(), "no ErrorResponse, only {e:?}");
    assert!(!c.is_closed(), "the client lost its session");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("next query on the same client")
        .get(0);
    assert_eq!(n, 100);

    // Simple protocol.
    let q = {
        let c = c.clone();
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(5.01)").await })
    };
    let pid = running_backend(&direct, "SELECT pg_sleep(5.01)%").await;
    terminate_backend(&direct, pid).await;
    let r = timeout(Duration::from_secs(10), q)
        .await
        .expect("the client hung after its backend was terminated")
        .unwrap();
    let e = r.expect_err("a query whose backend was terminated succeeded");
    assert!(e.code().is_some(), "no ErrorResponse, only {e:?}");
    let rows = c
        .simple_query("SELECT 'still here'")
        .await
        .expect("next query on the same client");
    assert!(matches!(
        &rows[1],
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("still here")
    ));
    assert!(eventually(Duration::from_secs(10), || backend_gone(&direct, pid)).await);
    assert!(!app_backends(&direct).await.contains(&pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load() {
    let env = env(PoolMode::Transaction, 4, |c| {
        c.pgferry.query_wait_timeout = 30.0;
    })
    .await;
    let url = env.url("app", APP_PW);
    let pg_port = env.pg.port();
    {
        let direct = env.direct().await;
        direct
            .batch_execute("CREATE TABLE tx_probe (v int); ALTER TABLE tx_probe OWNER TO app")
            .await
            .unwrap();
    }
    let restarted = Arc::new(AtomicBool::new(false));

    // Ten clients looping queries across the restart.
    let mut loops = Vec::new();
    for i in 0..10i32 {
        let c = connect_url(&url).await.unwrap();
        let restarted = restarted.clone();
        loops.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut ok_after = 0;
            let mut k = 0i32;
            while ok_after < 20 {
                k += 1;
                let after = restarted.load(Ordering::SeqCst);
                let r = timeout(
                    Duration::from_secs(30),
                    c.query_one("SELECT $1::int + $2::int", &[&i, &k]),
                )
                .await
                .unwrap_or_else(|_| panic!("client {i}: query hung"));
                match r {
                    Ok(row) => {
                        assert_eq!(row.get::<_, i32>(0), i + k);
                        if after {
                            ok_after += 1;
                        }
                    }
                    Err(e) => {
                        errors.push(match e.as_db_error() {
                            Some(d) => {
                                format!("{} {}: {}", d.severity(), d.code().code(), d.message())
                            }
                            None => e.to_string(),
                        });
                        if c.is_closed() {
                            errors.push("(disconnected)".into());
                            break;
                        }
                        ok_after = 0;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (i, errors)
        }));
    }

    // A client inside a transaction while PostgreSQL restarts.
    let tx_client = connect_url(&url).await.unwrap();
    tx_client
        .batch_execute("BEGIN; INSERT INTO tx_probe VALUES (1)")
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pg = env.pg;
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("restart PostgreSQL");
        pg
    })
    .await
    .unwrap();
    restarted.store(true, Ordering::SeqCst);

    let mut failures = Vec::new();
    for l in loops {
        let (i, errors) = timeout(Duration::from_secs(120), l)
            .await
            .expect("clients did not recover")
            .unwrap();
        if errors.len() > 1 {
            failures.push(format!(
                "client {i} (at most one error allowed): {errors:?}"
            ));
        }
    }

    // The transaction did not survive: its next statement or its COMMIT fails.
    let rest = async {
        tx_client
            .batch_execute("INSERT INTO tx_probe VALUES (2)")
            .await?;
        tx_client.batch_execute("COMMIT").await
    };
    let r = timeout(Duration::from_secs(30), rest)
        .await
        .expect("transaction client hung");
    assert!(
        r.is_err(),
        "a transaction open across a PostgreSQL restart committed"
    );
    let direct = direct_to(pg_port).await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM tx_probe", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "rows of the broken transaction were committed");
    // New clients are served normally.
    let c = connect_url(&url).await.unwrap();
    assert_eq!(backend_pid(&c).await.map(|p| p > 0).ok(), Some(true));
    drop(pg);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_then_up() {
    let mut pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let pg_port = pg.port();
    pg = tokio::task::spawn_blocking(move || {
        pg.stop().unwrap();
        pg
    })
    .await
    .unwrap();
    let env = env_with(pg, PoolMode::Transaction, 2, |_| {}).await;
    let url = env.url("app", APP_PW);

    for _ in 0..2 {
        let r = timeout(Duration::from_secs(10), connect_url(&url))
            .await
            .expect("login hung while PostgreSQL is down");
        let Err(e) = r else {
            panic!("login succeeded while PostgreSQL is down");
        };
        assert!(
            e.code().is_some(),
            "login failed without an error message: {e:?}"
        );
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(
            sqlstate(&e).as_deref() == Some("08006") || sqlstate(&e).as_deref() == Some("57P03"),
            "unexpected error: {e:?}"
        );
        assert!(!msg.is_empty());
    }

    let mut pg = env.pg;
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again().unwrap();
        pg
    })
    .await
    .unwrap();
    let c = timeout(Duration::from_secs(20), connect_url(&url))
        .await
        .expect("login hung")
        .expect("login after PostgreSQL came back");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    assert_eq!(pg.port(), pg_port);
}
