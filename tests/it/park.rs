#![allow(clippy::unwrap_used)]
//! Parking of idle clients (`client_park_delay`): a parked client keeps its session (prepared
//! statements, parameters, cancel key, place in SHOW CLIENTS), resumes on its next request,
//! and can still be killed, shut down or hang up while parked.

use crate::common::*;
use pgferry::config::{Config, PoolMode};
use std::io::Write;
use std::time::Duration;

const ADMIN_PW: &str = "admin-pw";

fn parking(c: &mut Config) {
    c.pgferry.client_park_delay = 0.2;
    c.pgferry.admin_users = vec!["admin".into()];
    let path = c.pgferry.auth_file.clone().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\"admin\" \"{ADMIN_PW}\"").unwrap();
}

async fn admin(env: &Env) -> tokio_postgres::Client {
    connect_url(&format!(
        "host=127.0.0.1 port={} user=admin password={ADMIN_PW} dbname=pgbouncer connect_timeout=10",
        env.addr.port()
    ))
    .await
    .unwrap()
}

/// Values of column `col` in SHOW CLIENTS.
async fn clients_column(admin: &tokio_postgres::Client, col: &str) -> Vec<String> {
    records(admin, "SHOW CLIENTS")
        .await
        .into_iter()
        .map(|mut r| r.remove(col).unwrap_or_default())
        .collect()
}

/// Waits until `n` clients are parked.
async fn parked(env: &Env, n: usize) -> bool {
    eventually(Duration::from_secs(10), || async {
        env.app().lot.len() == n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_keeps_its_session() {
    let env = env(PoolMode::Transaction, 2, parking).await;
    let c = env.connect().await;
    c.simple_query("SET application_name = 'parked-app'")
        .await
        .unwrap();
    c.simple_query("SET TimeZone = 'Asia/Tokyo'").await.unwrap();
    let stmt = c
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    assert!(parked(&env, 1).await, "an idle client was not parked");

    // Still listed, as idle, with its application_name.
    let a = admin(&env).await;
    let names = clients_column(&a, "application_name").await;
    assert!(names.contains(&"parked-app".to_owned()), "{names:?}");

    // Its prepared statement and parameters are there after it resumes.
    let row = c.query_one(&stmt, &[&7i32]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "item 7");
    assert!(parked(&env, 1).await);
    let tz = c.query_one("SHOW TimeZone", &[]).await.unwrap();
    assert_eq!(tz.get::<_, String>(0), "Asia/Tokyo");

    // Its cancel key still works: a request after parking can be cancelled.
    assert!(parked(&env, 1).await);
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(30)").await;
        (c, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (c, r) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel did not reach the query")
        .unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("57014"));
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parked_clients_resume_together_within_the_pool() {
    let env = env(PoolMode::Transaction, 2, parking).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(env.connect().await);
    }
    assert!(
        parked(&env, 100).await,
        "100 idle clients were not all parked"
    );
    let direct = env.direct().await;
    let peak = env.watch_backends("app").await;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(async move {
                let id = (i % 100 + 1) as i32;
                let row = c
                    .query_one("SELECT id FROM items WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), id);
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let peak = peak.stop().await;
    assert!(peak <= 2, "pool size exceeded: {peak}");
    assert!(env.backends(&direct, "app").await <= 2);
    assert!(
        parked(&env, 100).await,
        "resumed clients were not parked again"
    );
    drop(clients);
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.app().client_list.is_empty() && env.app().lot.is_empty()
        })
        .await,
        "clients that hung up while parked are still listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_hangs_up_is_gone() {
    let env = env(PoolMode::Transaction, 2, parking).await;
    let a = admin(&env).await;
    let c = env.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    assert!(parked(&env, 1).await);
    // The console's own connection is listed too.
    assert_eq!(clients_column(&a, "state").await, vec!["idle"; 2]);
    drop(c);
    assert!(parked(&env, 0).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            clients_column(&a, "state").await.len() == 1
        })
        .await,
        "a client that hung up while parked is still in SHOW CLIENTS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_reaches_a_parked_client() {
    let env = env(PoolMode::Transaction, 2, parking).await;
    let a = admin(&env).await;
    let c = env.connect().await;
    let other = env.connect().await;
    c.simple_query("SET application_name = 'victim'")
        .await
        .unwrap();
    other.simple_query("SELECT 1").await.unwrap();
    assert!(parked(&env, 2).await);
    let ids = clients_column(&a, "id").await;
    let names = clients_column(&a, "application_name").await;
    let id = &ids[names.iter().position(|n| n == "victim").unwrap()];
    a.simple_query(&format!("KILL_CLIENT {id}")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async { c.is_closed() }).await,
        "the killed parked client was not disconnected"
    );
    assert!(c.simple_query("SELECT 1").await.is_err());
    // The other parked client is untouched.
    assert_eq!(env.app().lot.len(), 1);
    other.simple_query("SELECT 2").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_clients() {
    let env = env(PoolMode::Transaction, 2, parking).await;
    let a = admin(&env).await;
    let c = env.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    assert!(parked(&env, 1).await);
    a.simple_query("SHUTDOWN WAIT_FOR_SERVERS").await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async { c.is_closed() }).await,
        "a parked client was not closed by the shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_clients_and_zero_delay_are_not_parked() {
    let session = env(PoolMode::Session, 2, parking).await;
    let c = session.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    let off = env(PoolMode::Transaction, 2, |c| {
        parking(c);
        c.pgferry.client_park_delay = 0.0;
    })
    .await;
    let d = off.connect().await;
    d.simple_query("SELECT 1").await.unwrap();
    // Well past the 0.2 s delay of the first and the sweep's 250 ms period.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(session.app().lot.len(), 0);
    assert_eq!(off.app().lot.len(), 0);
    c.simple_query("SELECT 1").await.unwrap();
    d.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_ends_its_n_plus_one_burst() {
    let env = env(PoolMode::Transaction, 2, |c| {
        parking(c);
        c.pgferry.n_plus_one_window = 0.1;
    })
    .await;
    let c = env.connect().await;
    list_then_lookups(&c, 30).await;
    // The client says nothing more. Once it is parked, its burst is over: SHOW N_PLUS_ONE
    // shows it closed with its final count, without waiting for the client's next statement.
    assert!(parked(&env, 1).await, "an idle client was not parked");
    let a = admin(&env).await;
    let n1 = records(&a, "SHOW N_PLUS_ONE").await;
    assert_eq!(n1.len(), 1, "{n1:?}");
    assert_eq!(n1[0].get("state").map(String::as_str), Some("closed"));
    assert_eq!(n1[0].get("count").map(String::as_str), Some("30"));
    assert_eq!(n1[0].get("distinct_params").map(String::as_str), Some("30"));

    // It resumes; a statement after the pause starts a new run and leaves the event as it was.
    c.simple_query("SELECT name FROM items WHERE id = 31")
        .await
        .unwrap();
    let rows = records(&a, "SHOW N_PLUS_ONE").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].get("count").map(String::as_str), Some("30"));
}
