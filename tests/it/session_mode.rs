//! Session pooling (a client keeps one server for its whole life; the server is reset before
//! the next client gets it) and statement pooling (transaction blocks refused).

use crate::support::raw;

use crate::common::*;
use futures_util::StreamExt;
use pgferry::config::{AuthType, PoolMode};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

/// A client whose connection task hands over notifications and reports how it ended.
struct Watched {
    client: tokio_postgres::Client,
    notes: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ended: tokio::sync::oneshot::Receiver<Option<tokio_postgres::Error>>,
}

async fn watched(url: &str) -> Watched {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("test helper");
    let (tx, notes) = tokio::sync::mpsc::unbounded_channel();
    let (end_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let mut err = None;
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let _ = end_tx.send(err);
    });
    Watched {
        client,
        notes,
        ended,
    }
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("test helper")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_is_delivered() {
    let env = env(PoolMode::Session, 3, |_| {}).await;
    let mut listener = watched(&env.url("app", APP_PW)).await;
    listener
        .client
        .batch_execute("LISTEN ferry_events")
        .await
        .unwrap();
    let sender = env.connect().await;
    sender
        .batch_execute("NOTIFY ferry_events, 'hello'")
        .await
        .unwrap();
    sender
        .query("SELECT pg_notify('ferry_events', $1)", &[&"second"])
        .await
        .unwrap();
    // A notification on a channel nobody listens to must not show up.
    sender
        .batch_execute("NOTIFY other_channel, 'nope'")
        .await
        .unwrap();
    let listener_pid = pid(&listener.client).await;
    for want in ["hello", "second"] {
        let n = tokio::time::timeout(Duration::from_secs(15), listener.notes.recv())
            .await
            .expect("notification not delivered")
            .expect("connection ended");
        assert_eq!(n.channel(), "ferry_events");
        assert_eq!(n.payload(), want);
        assert_ne!(n.process_id(), listener_pid, "sent by the other session");
    }
    // Delivered while the listener is idle too (no query of its own in flight).
    sender
        .batch_execute("NOTIFY ferry_events, 'idle'")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(15), listener.notes.recv())
        .await
        .expect("idle notification not delivered")
        .unwrap();
    assert_eq!(n.payload(), "idle");
    assert!(listener.notes.try_recv().is_err(), "nothing else arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_server() {
    let env = env(PoolMode::Session, 4, |_| {}).await;
    let a = env.connect().await;
    let b = env.connect().await;
    let pa = pid(&a).await;
    let pb = pid(&b).await;
    assert_ne!(pa, pb);
    a.batch_execute("SET work_mem = '5MB'; CREATE TEMP TABLE t (n int)")
        .await
        .unwrap();
    for i in 0..20i32 {
        a.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
        if i % 5 == 0 {
            a.batch_execute("BEGIN; INSERT INTO t VALUES (100); COMMIT")
                .await
                .unwrap();
            let e = a.batch_execute("SELECT 1/0").await.unwrap_err();
            assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
        }
        assert_eq!(pid(&a).await, pa);
        assert_eq!(pid(&b).await, pb);
    }
    let n: i64 = a
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 24);
    let wm: String = a.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "5MB");
    // Session state is private: b has no table t.
    let e = b.query("SELECT * FROM t", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_execute_and_protocol_statements() {
    let env = env(PoolMode::Session, 2, |_| {}).await;
    let c = env.connect().await;
    c.batch_execute("PREPARE by_id(int) AS SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    for id in [1, 50, 100] {
        let rows = c
            .simple_query(&format!("EXECUTE by_id({id})"))
            .await
            .unwrap();
        let name = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(name, Some(format!("item {id}")));
    }
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'by_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let e = c
        .batch_execute("PREPARE by_id AS SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P05"));
    c.batch_execute("DEALLOCATE by_id").await.unwrap();
    let e = c.batch_execute("EXECUTE by_id(1)").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    // Protocol-level named statements pass straight through in session mode.
    let st = c
        .prepare("SELECT qty FROM items WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=10i32 {
        let q: i32 = c.query_one(&st, &[&id]).await.unwrap().get(0);
        assert_eq!(q, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_is_reset_before_the_next_client() {
    let env = env(PoolMode::Session, 1, |_| {}).await;
    let first = env.connect().await;
    let p1 = pid(&first).await;
    let tz0: String = first.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    first
        .batch_execute(
            "CREATE TEMP TABLE secret (v text); INSERT INTO secret VALUES ('mine');
             SET work_mem = '77MB'; SET TimeZone = 'Pacific/Chatham';
             SET search_path = pg_catalog; PREPARE leftover AS SELECT 1; LISTEN leftover_chan;
             SELECT set_config('ferry.custom', 'leaked', false)",
        )
        .await
        .unwrap();
    // A protocol-level statement, named "s0"-ish by tokio-postgres, as the next client's will be.
    let st = first.prepare("SELECT 1").await.unwrap();
    first.query_one(&st, &[]).await.unwrap();
    drop(st);
    drop(first);

    let second = env.connect().await;
    // The same server (pool_size 1), so the reset is what hides the state.
    assert!(
        eventually(Duration::from_secs(10), || async {
            second
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map(|r| r.get::<_, i32>(0))
                .ok()
                == Some(p1)
        })
        .await,
        "the second client should get the same server"
    );
    let e = second.query("SELECT * FROM secret", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
    let wm: String = second.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "4MB");
    let tz: String = second.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, tz0);
    let sp: String = second
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sp, "\"$user\", public");
    let custom: Option<String> = second
        .query_one("SELECT current_setting('ferry.custom', true)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(custom.as_deref().unwrap_or("").is_empty(), "{custom:?}");
    let n: i64 = second
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements
             WHERE name = 'leftover' OR statement = 'SELECT 1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the first client's statements are gone");
    let n: i64 = second
        .query_one("SELECT count(*) FROM pg_listening_channels()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // tokio-postgres reuses its statement names; nothing collides.
    let st = second.prepare("SELECT 2").await.unwrap();
    let v: i32 = second.query_one(&st, &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transaction_is_not_handed_on() {
    let env = env(PoolMode::Session, 1, |_| {}).await;
    let first = env.connect().await;
    first
        .batch_execute("BEGIN; INSERT INTO items VALUES (1001, 'ghost', 1)")
        .await
        .unwrap();
    drop(first);
    let second = env.connect().await;
    let n: i64 = second
        .query_one("SELECT count(*) FROM items WHERE id = 1001", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let xid: Option<i64> = second
        .query_one("SELECT txid_current_if_assigned()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(xid, None, "not inside the first client's transaction");
    second.batch_execute("BEGIN; COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_stay_within_pool_size() {
    let env = env(PoolMode::Session, 2, |_| {}).await;
    let watcher = env.watch_backends("app").await;
    let mut tasks = Vec::new();
    for i in 0..8i32 {
        let url = env.url("app", APP_PW);
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            let p = pid(&c).await;
            c.batch_execute(&format!("SET application_name = 'client{i}'"))
                .await
                .unwrap();
            for k in 0..5i32 {
                let v: i32 = c
                    .query_one("SELECT $1::int FROM pg_sleep(0.02)", &[&k])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(v, k);
                assert_eq!(pid(&c).await, p);
            }
            let app: String = c
                .query_one("SHOW application_name", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(app, format!("client{i}"));
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("a session client hung")
            .unwrap();
    }
    let p = watcher.stop().await;
    assert!((1..=2).contains(&p), "peak app backends {p}");
}

// ----- statement mode ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_transaction_blocks() {
    let env = env(PoolMode::Statement, 1, |c| {
        c.pgferry.auth_type = AuthType::Trust;
    })
    .await;
    // Raw: the error names the rule, then the connection is closed.
    let mut r = raw::Raw::ready(env.addr).await;
    r.send(&raw::query(
        "BEGIN; INSERT INTO items VALUES (2001, 'stmt', 1)",
    ))
    .await;
    let msgs = r.until_eof().await;
    let errs = raw::errors(&msgs);
    assert_eq!(errs.len(), 1, "{msgs:?}");
    assert!(
        errs[0]
            .1
            .contains("transaction blocks not allowed in statement pooling mode"),
        "{errs:?}"
    );
    // tokio-postgres: BEGIN alone.
    let mut w = watched(&env.url("app", "x")).await;
    let begin = w.client.batch_execute("BEGIN").await;
    let after = w.client.batch_execute("SELECT 1").await;
    assert!(
        begin.is_err() || after.is_err(),
        "BEGIN must not go unnoticed"
    );
    let ended = tokio::time::timeout(Duration::from_secs(15), &mut w.ended)
        .await
        .expect("connection not closed")
        .unwrap();
    let text = format!("{ended:?} {begin:?} {after:?}");
    assert!(
        text.contains("transaction blocks not allowed in statement pooling mode"),
        "{text}"
    );

    // Single statements (simple and extended) work, and the refused transaction left nothing.
    let c = env.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE id = 2001", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let xid: Option<i64> = c
        .query_one("SELECT txid_current_if_assigned()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(xid, None);
    c.execute("UPDATE items SET qty = qty + 1 WHERE id = 3", &[])
        .await
        .unwrap();
    let st = c
        .prepare("SELECT qty FROM items WHERE id = $1")
        .await
        .unwrap();
    let q: i32 = c.query_one(&st, &[&3i32]).await.unwrap().get(0);
    assert_eq!(q, 4);
    let rows = c.simple_query("SELECT 1; SELECT 2").await.unwrap();
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        2
    );
}
