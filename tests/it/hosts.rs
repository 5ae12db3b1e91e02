#![allow(clippy::unwrap_used)]
//! Reaching servers that fail: server_login_retry spaces out attempts while clients wait, and a
//! database with several hosts skips a dead one instead of paying for it on every connection.

use crate::support::forward;

use crate::common::*;
use forward::Forward;
use pgferry::config::{AuthType, PoolMode};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_retry_spaces_out_attempts_while_clients_wait() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let fwd = Forward::start("127.0.0.1:0", pg.port()).await;
    let port = fwd.port();
    let env = env_with(pg, PoolMode::Transaction, 1, |c| {
        c.pgferry.server_login_retry = 2.0;
        c.databases.get_mut("shop").unwrap().port = port;
    })
    .await;
    let direct = env.direct().await;
    let c = Arc::new(env.connect().await);
    let old = backend_pid(&c).await;
    // The server connection dies and, for a while, logins fail.
    fwd.set_refusing(true);
    direct
        .query_one("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap();
    // Wait until pgferry has seen it go (its janitor drops dead idle connections).
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.app().pools.iter().all(|p| p.server_count() == 0)
        })
        .await
    );
    let before = fwd.accepted();
    let q = {
        let c = c.clone();
        tokio::spawn(async move { c.query_one("SELECT 42", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    fwd.set_refusing(false);
    let row = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("the waiting client hung")
        .unwrap()
        .expect("the waiting client got an error instead of a server");
    assert_eq!(row.get::<_, i32>(0), 42);
    // One failed attempt, then nothing until server_login_retry passed: not one every 200 ms.
    let attempts = fwd.accepted() - before;
    assert_eq!(attempts, 2, "attempts while refusing and after: {attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_host_is_skipped_not_retried_per_connection() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    // 127.0.0.2 is loopback too; PostgreSQL listens on 127.0.0.1 only. A listener there that
    // drops every connection is a host that is up but useless, and counts the attempts.
    let dead = Forward::refusing(&format!("127.0.0.2:{}", pg.port()), pg.port()).await;
    let env = env_with(pg, PoolMode::Transaction, 4, |c| {
        c.pgferry.auth_type = AuthType::Md5;
        c.pgferry.server_login_retry = 60.0;
        c.databases.get_mut("shop").unwrap().host = "127.0.0.2, 127.0.0.1".into();
    })
    .await;
    let c = env.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    assert_eq!(dead.accepted(), 1, "the dead host is tried once");
    // More server connections, for this pool and another one: none goes to the dead host.
    sleepers(&env, 4, 0.3).await;
    let m = env.try_connect("md5user", MD5_PW).await.unwrap();
    m.simple_query("SELECT 1").await.unwrap();
    let direct = env.direct().await;
    assert!(activity_count(&direct, "usename IN ('app', 'md5user')").await >= 5);
    assert_eq!(dead.accepted(), 1, "the dead host was retried");

    // A host with nothing listening (connections refused) is skipped the same way.
    let mut cfg = env.config.clone();
    cfg.databases.get_mut("shop").unwrap().host = "127.0.0.3,127.0.0.1".into();
    cfg.pgferry.metrics_addr = String::new();
    let other = pgferry::app::start(cfg).await.unwrap();
    for _ in 0..3 {
        let url = env.url("app", APP_PW).replace(
            &format!("port={}", env.addr.port()),
            &format!("port={}", other.addr.port()),
        );
        let c = connect_url(&url).await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
    }
    other.shutdown().await;
}

/// `host` = a directory reaches PostgreSQL over its Unix socket there (as PgBouncer and libpq):
/// queries, auth_query lookups and cancels go through the socket, TLS is not attempted on it
/// even when server_tls_sslmode requires it, SHOW SERVERS says `unix`, and a directory without
/// the server's socket fails the login with the socket's path in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_directory_as_host_uses_the_unix_socket() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let pg = with_md5_role(pg, "sock_aq", "sock-pass").await;
    let dir = pg.socket_dir().to_str().unwrap().to_owned();
    let env = env_with(pg, PoolMode::Transaction, 2, |c| {
        c.databases.get_mut("shop").unwrap().host = dir.clone();
        c.pgferry.server_tls_sslmode = pgferry::config::TlsMode::Require;
        c.pgferry.admin_users = vec!["app".into()];
        c.pgferry.auth_type = AuthType::Md5;
        c.pgferry.auth_user = Some("postgres".into());
    })
    .await;
    // A user pgferry knows only through auth_query, run over the socket.
    let aq = env.try_connect("sock_aq", "sock-pass").await.unwrap();
    aq.simple_query("SELECT 1").await.unwrap();
    let c = env.connect().await;
    let row = c
        .query_one(
            "SELECT client_addr IS NULL, count(*) FROM pg_stat_activity, items \
             WHERE pid = pg_backend_pid() GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the server connection is not a Unix socket"
    );
    assert_eq!(row.get::<_, i64>(1), 100);

    let admin = connect_url(
        &env.url("app", APP_PW)
            .replace("dbname=shop", "dbname=pgbouncer"),
    )
    .await
    .unwrap();
    let servers = records(&admin, "SHOW SERVERS").await;
    assert!(!servers.is_empty());
    for s in &servers {
        assert_eq!(s["addr"], "unix", "{s:?}");
        assert_eq!(s["port"], env.pg.port().to_string(), "{s:?}");
        assert_eq!(s["tls"], "", "{s:?}");
    }

    // A cancel reaches the query over the socket.
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    let direct = env.direct().await;
    running_backend(&direct, "%pg_sleep(30)%").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel did not reach the server")
        .unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("57014"));

    // No socket in the directory: the login fails and says where pgferry looked.
    let mut cfg = env.config.clone();
    cfg.databases.get_mut("shop").unwrap().host = "/nonexistent-pgferry-dir".into();
    cfg.pgferry.metrics_addr = String::new();
    let other = pgferry::app::start(cfg).await.unwrap();
    let url = env.url("app", APP_PW).replace(
        &format!("port={}", env.addr.port()),
        &format!("port={}", other.addr.port()),
    );
    let err = match connect_url(&url).await {
        Ok(c) => c.simple_query("SELECT 1").await.unwrap_err(),
        Err(e) => e,
    };
    let text = format!("{err:?}");
    let socket = format!("/nonexistent-pgferry-dir/.s.PGSQL.{}", env.pg.port());
    assert!(
        text.contains(&format!("pgferry could not connect to server: {socket}: ")),
        "{text}"
    );
    other.shutdown().await;
}
