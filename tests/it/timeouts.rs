#![allow(clippy::unwrap_used)]
//! Per-client timeouts (client_idle_timeout, idle_transaction_timeout, transaction_timeout,
//! query_timeout): each ends only the client it concerns, names itself in the FATAL the
//! client receives, leaves no open transaction or running query on the server, and a long
//! query is not mistaken for an idle client. Also: session mode hands out the server's own
//! BackendKeyData.

use crate::support::raw;

use crate::common::*;
use pgferry::config::{AuthType, PoolMode};
use raw::*;
use std::time::{Duration, Instant};

/// The FATAL a client receives when a timeout ends it (waits up to `within`).
async fn fatal_within(r: &mut Raw, within: Duration) -> (String, String) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match r.read_within(left).await {
            Read::Msg(m) if m.tag == b'E' => {
                assert_eq!(m.severity().as_deref(), Some("FATAL"), "{m:?}");
                return (m.sqlstate().unwrap(), m.message().unwrap());
            }
            Read::Msg(_) => continue,
            Read::Eof => panic!("closed without a FATAL"),
            Read::Timeout => panic!("no FATAL within {within:?}"),
        }
    }
}

/// True once pgferry has closed the connection (EOF, after any messages).
async fn closed(r: &mut Raw) -> bool {
    loop {
        match r.read_within(Duration::from_secs(5)).await {
            Read::Msg(_) => continue,
            Read::Eof => return true,
            Read::Timeout => return false,
        }
    }
}

async fn count(direct: &tokio_postgres::Client, sql: &str) -> i64 {
    direct.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_only_the_silent_client() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        c.pgferry.client_idle_timeout = 1.0;
    })
    .await;
    let mut idle = Raw::ready(env.addr).await;
    let mut busy = Raw::ready(env.addr).await;
    let started = Instant::now();
    // `busy` keeps talking; `idle` says nothing.
    for _ in 0..6 {
        assert_eq!(busy.simple("SELECT 1").await, vec![Some("1".to_string())]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, msg) = fatal_within(&mut idle, Duration::from_secs(3)).await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "client_idle_timeout")
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(closed(&mut idle).await);
    // A query longer than the timeout is work, not idleness.
    let rows = busy.simple("SELECT pg_sleep(1.5)::text").await;
    assert_eq!(rows.len(), 1, "long query answered: {rows:?}");
    assert_eq!(busy.simple("SELECT 2").await, vec![Some("2".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_rolls_back_and_frees_the_server() {
    let env = env(PoolMode::Transaction, 1, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        c.pgferry.idle_transaction_timeout = 1.0;
    })
    .await;
    let direct = env.direct().await;
    let mut r = Raw::ready(env.addr).await;
    r.roundtrip(&query("BEGIN")).await;
    r.roundtrip(&query("UPDATE items SET qty = qty + 1000 WHERE id = 1"))
        .await;
    // A slow statement inside the transaction is not idle time.
    let rows = r.simple("SELECT pg_sleep(1.3)::text").await;
    assert_eq!(rows.len(), 1);
    let (code, msg) = fatal_within(&mut r, Duration::from_secs(3)).await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "idle_transaction_timeout")
    );
    assert!(closed(&mut r).await);
    // The transaction was rolled back and the pool (size 1) serves the next client.
    let c = env.connect().await;
    let qty: i32 = c
        .query_one("SELECT qty FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(qty < 1000, "uncommitted update must be gone, qty = {qty}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(
                &direct,
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                 AND state LIKE 'idle in transaction%'",
            )
            .await
                == 0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_a_long_transaction_even_while_busy() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        c.pgferry.transaction_timeout = 1.0;
    })
    .await;
    let direct = env.direct().await;
    let mut r = Raw::ready(env.addr).await;
    r.roundtrip(&query("BEGIN")).await;
    r.roundtrip(&query(
        "INSERT INTO items (id, name, qty) VALUES (9001, 'tt', 1)",
    ))
    .await;
    // Each statement is short, but the transaction outlives the timeout.
    r.send(&query("SELECT pg_sleep(3)")).await;
    let (code, msg) = fatal_within(&mut r, Duration::from_secs(3)).await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "transaction_timeout")
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(
                &direct,
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                 AND query LIKE '%pg_sleep(3)%' AND state <> 'idle'",
            )
            .await
                == 0
        })
        .await,
        "the backend's statement was cancelled"
    );
    assert_eq!(
        count(&direct, "SELECT count(*) FROM items WHERE id = 9001").await,
        0,
        "nothing of the timed-out transaction is committed"
    );
    // Autocommit statements are transactions too: short ones pass.
    let c = env.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_query_and_spares_the_neighbour() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        c.pgferry.query_timeout = 1.0;
    })
    .await;
    let direct = env.direct().await;
    let neighbour = env.connect().await;
    let mut r = Raw::ready(env.addr).await;
    let started = Instant::now();
    r.send(&query("SELECT pg_sleep(30)")).await;
    let (code, msg) = fatal_within(&mut r, Duration::from_secs(5)).await;
    assert_eq!((code.as_str(), msg.as_str()), ("08P01", "query_timeout"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(
                &direct,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            )
            .await
                == 0
        })
        .await,
        "the backend stopped working on the timed-out query"
    );
    let v: i32 = neighbour.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    // Just under the timeout is fine.
    neighbour
        .simple_query("SELECT pg_sleep(0.5)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_timeout_overrides_the_general_one() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        c.pgferry.query_timeout = 30.0;
        c.users.entry("app".into()).or_default().query_timeout = Some(0.5);
    })
    .await;
    let mut app = Raw::ready(env.addr).await;
    app.send(&query("SELECT pg_sleep(10)")).await;
    let (_, msg) = fatal_within(&mut app, Duration::from_secs(4)).await;
    assert_eq!(msg, "query_timeout");
    // md5user keeps the general 30 s.
    let (mut other, _) = Raw::login_as(env.addr, "md5user", "shop").await;
    let rows = other.simple("SELECT pg_sleep(1)::text").await;
    assert_eq!(rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_backend_key_is_the_servers() {
    let env = env(PoolMode::Session, 2, |c| {
        c.pgferry.auth_type = AuthType::Trust;
    })
    .await;
    let (mut r, login) = Raw::login(env.addr).await;
    let key = login
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    let pid = i32::from_be_bytes(key.body[..4].try_into().unwrap());
    let rows = r.simple("SELECT pg_backend_pid()::text").await;
    assert_eq!(rows, vec![Some(pid.to_string())]);
    // Cancelling through pgferry with that key reaches the query.
    let sleeper = env.connect().await;
    let token = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move {
        let r = sleeper.simple_query("SELECT pg_sleep(20)").await;
        (sleeper, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (_s, res) = tokio::time::timeout(Duration::from_secs(5), sleeping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sqlstate(&res.unwrap_err()).as_deref(), Some("57014"));
    // A session-mode login takes its server at once: give both back first.
    drop(_s);
    r.send(&terminate()).await;
    // A startup parameter the server rejects refuses the login, as PostgreSQL would.
    let mut bad = Raw::connect(env.addr).await;
    bad.send(&startup_packet(
        3,
        0,
        &[
            ("user", "app"),
            ("database", "shop"),
            ("TimeZone", "Mars/Olympus"),
        ],
    ))
    .await;
    let msgs = bad.until_eof().await;
    let errs = errors(&msgs);
    assert_eq!(errs.len(), 1, "{msgs:?}");
    assert_eq!(errs[0].0, "22023", "{errs:?}");
    assert!(errs[0].1.contains("TimeZone"), "{errs:?}");
}
