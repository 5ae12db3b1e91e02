#![allow(clippy::unwrap_used)]
//! Session parameters follow their client: SET values of tracked parameters
//! (PgBouncer's list plus track_extra_parameters) and startup parameters (including
//! `options=-c …`) reach whichever server a client is given, in every pool mode, and never
//! leak to another client; ignore_startup_parameters drops what it lists.

use crate::support::raw;

use crate::common::*;
use pgferry::config::{AuthType, PoolMode};
use raw::*;
use tokio_postgres::Client;

async fn show(c: &Client, name: &str) -> String {
    let rows = c.simple_query(&format!("SHOW {name}")).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_one_server_each_keep_their_settings() {
    // Pool size 1: both clients run on the same server connection, turn by turn.
    let env = env(PoolMode::Transaction, 1, |c| {
        c.pgferry.track_extra_parameters = vec![
            "IntervalStyle".into(),
            "default_transaction_read_only".into(),
        ];
    })
    .await;
    let a = env.connect().await;
    let b = env.connect().await;
    a.batch_execute(
        "SET IntervalStyle = 'iso_8601'; SET TimeZone = 'Asia/Tokyo'; \
         SET DateStyle = 'German, DMY'; SET application_name = 'client-a'; \
         SET client_encoding = 'LATIN1'; SET default_transaction_read_only = on",
    )
    .await
    .unwrap();
    b.batch_execute(
        "SET IntervalStyle = 'sql_standard'; SET TimeZone = 'America/Lima'; \
         SET DateStyle = 'SQL, MDY'; SET application_name = 'client-b'",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&a, "IntervalStyle").await, "iso_8601");
        assert_eq!(show(&b, "IntervalStyle").await, "sql_standard");
        assert_eq!(show(&a, "TimeZone").await, "Asia/Tokyo");
        assert_eq!(show(&b, "TimeZone").await, "America/Lima");
        assert_eq!(show(&a, "DateStyle").await, "German, DMY");
        assert_eq!(show(&b, "DateStyle").await, "SQL, MDY");
        assert_eq!(show(&a, "application_name").await, "client-a");
        assert_eq!(show(&b, "application_name").await, "client-b");
        assert_eq!(show(&a, "client_encoding").await, "LATIN1");
        assert_eq!(show(&b, "client_encoding").await, "UTF8");
        assert_eq!(show(&a, "default_transaction_read_only").await, "on");
        assert_eq!(show(&b, "default_transaction_read_only").await, "off");
    }
    // The read-only default really is in force for a, and only for a.
    let err = a
        .batch_execute("CREATE TABLE a_was_here (x int)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
    b.batch_execute("CREATE TABLE b_was_here (x int)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_apply_in_every_mode_and_stay_with_their_client() {
    // One logical database per pool mode, all on the same PostgreSQL database, pool size 1.
    let env = env(PoolMode::Transaction, 1, |c| {
        let shop = c.databases["shop"].clone();
        for (name, mode) in [
            ("in_session", PoolMode::Session),
            ("in_transaction", PoolMode::Transaction),
            ("in_statement", PoolMode::Statement),
        ] {
            let mut d = shop.clone();
            d.dbname = Some("shop".into());
            d.pool_mode = Some(mode);
            c.databases.insert(name.into(), d);
        }
    })
    .await;
    for db in ["in_session", "in_transaction", "in_statement"] {
        let base = env
            .url("app", APP_PW)
            .replace("dbname=shop", &format!("dbname={db}"));
        let url = format!(
            "{base} options='-c statement_timeout=1234 -c lock_timeout=4321' application_name=starter"
        );
        {
            let with = connect_url(&url).await.unwrap();
            for _ in 0..2 {
                assert_eq!(show(&with, "statement_timeout").await, "1234ms", "{db}");
                assert_eq!(show(&with, "lock_timeout").await, "4321ms", "{db}");
                assert_eq!(show(&with, "application_name").await, "starter", "{db}");
            }
        }
        // The next client on the same (single) server connection sees the defaults.
        let without = connect_url(&base).await.unwrap();
        assert_eq!(show(&without, "statement_timeout").await, "0", "{db}");
        assert_eq!(show(&without, "lock_timeout").await, "0", "{db}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_startup_parameters_drops_what_it_lists() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        c.pgferry.ignore_startup_parameters = vec!["lock_timeout".into()];
    })
    .await;
    let mut r = Raw::connect(env.addr).await;
    r.send(&startup_packet(
        3,
        0,
        &[
            ("user", "app"),
            ("database", "shop"),
            ("lock_timeout", "4321"),
            ("statement_timeout", "1234"),
        ],
    ))
    .await;
    let login = r.until_ready().await;
    assert!(errors(&login).is_empty(), "{login:?}");
    assert_eq!(r.simple("SHOW lock_timeout").await, vec![Some("0".into())]);
    assert_eq!(
        r.simple("SHOW statement_timeout").await,
        vec![Some("1234ms".into())]
    );
}
