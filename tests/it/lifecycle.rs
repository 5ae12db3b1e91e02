#![allow(clippy::unwrap_used)]
//! The pgferry binary as an operator runs it: SIGINT (WAIT_FOR_SERVERS), SIGTERM's bound,
//! SIGQUIT, `check-config`, and
//! `--upstream` without a configuration file.

use crate::support::process;

use crate::common::*;
use process::Ferry;
use std::time::Duration;
use tokio::time::timeout;
use tokio_postgres::Client;

async fn names_like(direct: &Client, pattern: &str) -> Vec<String> {
    direct
        .query(
            "SELECT name FROM items WHERE name LIKE $1 ORDER BY id",
            &[&pattern],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// True once a new login through `url` fails (refused, closed or an error).
async fn logins_refused(url: &str) -> bool {
    matches!(
        timeout(Duration::from_secs(5), connect_url(url)).await,
        Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_the_open_transaction_finish_then_exits() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let config = process::write_config(
        dir.path(),
        pg.port(),
        port,
        "pool_mode = \"transaction\"\nshutdown_timeout = 60",
        "",
    );
    let mut ferry = Ferry::with_config(&config, port, dir.path()).await;
    let url = ferry.url();
    let c = connect_url(&url).await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO items VALUES (1001, 'sigterm a', 1)")
        .await
        .unwrap();
    // An idle client (no transaction) is let go at shutdown.
    let idle = connect_url(&url).await.unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();

    // SIGINT = SHUTDOWN WAIT_FOR_SERVERS (SIGTERM waits for clients: tests/listeners.rs).
    ferry.signal("INT");
    assert!(
        eventually(Duration::from_secs(10), || logins_refused(&url)).await,
        "new logins are still accepted after SIGINT"
    );
    assert!(
        eventually(Duration::from_secs(10), || async { idle.is_closed() }).await,
        "an idle client was not disconnected at SIGINT"
    );
    assert!(
        ferry.child.try_wait().unwrap().is_none(),
        "pgferry exited while a transaction was open"
    );

    // The open transaction goes on and commits.
    c.batch_execute("INSERT INTO items VALUES (1002, 'sigterm b', 2)")
        .await
        .expect("statement in the open transaction after SIGINT");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE name LIKE 'sigterm%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    c.batch_execute("COMMIT")
        .await
        .expect("COMMIT after SIGINT");
    let direct = direct_to(pg.port()).await;
    assert_eq!(
        names_like(&direct, "sigterm%").await,
        ["sigterm a", "sigterm b"]
    );

    // Then the client is disconnected and pgferry exits by itself, long before the 60 s bound.
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.batch_execute("SELECT 1").await.is_err() && c.is_closed()
        })
        .await,
        "the client was not disconnected after its transaction ended"
    );
    let st = ferry
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("pgferry did not exit: {}", ferry.log_text()));
    assert!(st.success(), "exit status {st}: {}", ferry.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_a_stuck_transaction_after_shutdown_timeout() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let config = process::write_config(
        dir.path(),
        pg.port(),
        port,
        "pool_mode = \"transaction\"\nshutdown_timeout = 2",
        "",
    );
    let mut ferry = Ferry::with_config(&config, port, dir.path()).await;
    let c = connect_url(&ferry.url()).await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO items VALUES (1003, 'stuck', 3)")
        .await
        .unwrap();
    ferry.signal("TERM");
    let st = ferry
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("pgferry did not exit: {}", ferry.log_text()));
    assert!(st.success(), "exit status {st}: {}", ferry.log_text());
    assert!(c.batch_execute("COMMIT").await.is_err());
    // The transaction that never committed is not in the database.
    let direct = direct_to(pg.port()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await
    );
    assert!(names_like(&direct, "stuck").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_exits_at_once() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let config = process::write_config(
        dir.path(),
        pg.port(),
        port,
        "pool_mode = \"transaction\"\nshutdown_timeout = 600",
        "",
    );
    let mut ferry = Ferry::with_config(&config, port, dir.path()).await;
    let c = connect_url(&ferry.url()).await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO items VALUES (1004, 'sigint', 4)")
        .await
        .unwrap();
    ferry.signal("QUIT");
    // A graceful stop would wait for the open transaction for up to 600 s.
    ferry
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("pgferry ignored SIGQUIT: {}", ferry.log_text()));
    assert!(
        timeout(Duration::from_secs(10), c.batch_execute("COMMIT"))
            .await
            .expect("client hung after pgferry exited")
            .is_err(),
        "COMMIT succeeded after pgferry was told to quit"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "port still open after SIGQUIT"
    );
    let direct = direct_to(pg.port()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            names_like(&direct, "sigint").await.is_empty()
                && direct
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    == 0
        })
        .await
    );
}

#[test]
fn check_config_accepts_a_good_file_and_names_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = process::write_config(dir.path(), 5432, 6432, "pool_mode = \"transaction\"", "");
    let (st, out, err) = process::run_bin(&["check-config", good.to_str().unwrap()]);
    assert!(st.success(), "good file rejected: {out}{err}");

    let bad = dir.path().join("bad.toml");
    let text = "[pgferry]\n\
                listen_port = 6432\n\
                auth_type = \"trust\"\n\
                \n\
                [databases.shop]\n\
                host = \"127.0.0.1\"\n\
                port = 5432\n\
                pool_size = 0\n";
    std::fs::write(&bad, text).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("pool_size"))
        .unwrap()
        + 1;
    let (st, out, err) = process::run_bin(&["check-config", bad.to_str().unwrap()]);
    assert!(!st.success(), "pool_size = 0 accepted: {out}{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains(&format!(":{line}: databases.shop.pool_size")),
        "error does not name line {line} and databases.shop.pool_size: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_url_serves_the_same_credentials() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let upstream = format!("postgres://app:{APP_PW}@127.0.0.1:{}/shop", pg.port());
    let listen = format!("127.0.0.1:{port}");
    let ferry = Ferry::spawn(
        &["--upstream", &upstream, "--listen", &listen],
        port,
        dir.path(),
    )
    .await;
    let c = connect_url(&ferry.url()).await.expect("login as app");
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let user: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "app");
    // Only the URL's credentials log in.
    let wrong = connect_url(&format!(
        "host=127.0.0.1 port={port} user=app password=wrong dbname=shop"
    ))
    .await
    .expect_err("a wrong password was accepted");
    assert_eq!(sqlstate(&wrong).as_deref(), Some("28P01"));
}
