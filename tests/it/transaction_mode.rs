#![allow(clippy::unwrap_used)]
//! Transaction pooling against a real PostgreSQL: protocol coverage, prepared statements
//! across server connections, pool bounds, parameter isolation, waits and limits, cancel.

use crate::common::*;
use pgferry::config::PoolMode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_protocol() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let c = env.connect().await;
    let rows = c
        .simple_query("SELECT 1 AS one; SELECT 'two'")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);
    let row = c
        .query_one("SELECT name, qty FROM items WHERE id = $1", &[&7i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "item 7");
    assert_eq!(row.get::<_, i32>(1), 7);
    // An error in the extended protocol leaves the session usable.
    let err = c
        .query("SELECT nonexistent FROM items", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42703"));
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_survive_changing_servers_50_clients_pool_3() {
    let env = env(PoolMode::Transaction, 3, |_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..50i32 {
        let url = env.url("app", APP_PW);
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            let by_id = c
                .prepare("SELECT name FROM items WHERE id = $1")
                .await
                .unwrap();
            let plus = c.prepare("SELECT $1::int + $2::int").await.unwrap();
            for k in 0..20i32 {
                let id = (i * 20 + k) % 100 + 1;
                let name: String = c.query_one(&by_id, &[&id]).await.unwrap().get(0);
                assert_eq!(name, format!("item {id}"));
                let sum: i32 = c.query_one(&plus, &[&i, &k]).await.unwrap().get(0);
                assert_eq!(sum, i + k);
                if k % 5 == 0 {
                    // A transaction keeps one server for all its statements.
                    c.batch_execute("BEGIN").await.unwrap();
                    let a: i32 = c.query_one(&plus, &[&1i32, &k]).await.unwrap().get(0);
                    let pid1: i32 = c
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .unwrap()
                        .get(0);
                    let _: String = c.query_one(&by_id, &[&1i32]).await.unwrap().get(0);
                    let pid2: i32 = c
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .unwrap()
                        .get(0);
                    c.batch_execute("COMMIT").await.unwrap();
                    assert_eq!(a, 1 + k);
                    assert_eq!(pid1, pid2);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let direct = env.direct().await;
    assert!(env.backends(&direct, "app").await <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_batches_keep_their_order() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let c = env.connect().await;
    let stmts = [
        c.prepare("SELECT $1::int * 2").await.unwrap(),
        c.prepare("SELECT $1::int * 3").await.unwrap(),
        c.prepare("SELECT $1::int * 5").await.unwrap(),
    ];
    // tokio-postgres pipelines concurrent requests on one connection.
    let futs = (0..60i32).map(|i| {
        let s = &stmts[(i % 3) as usize];
        let c = &c;
        async move { (i, c.query_one(s, &[&i]).await.unwrap().get::<_, i32>(0)) }
    });
    for (i, v) in futures_util::future::join_all(futs).await {
        let factor = [2, 3, 5][(i % 3) as usize];
        assert_eq!(v, i * factor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_share_five_server_connections() {
    // Trust auth: 500 client-side SCRAM derivations would only measure the test's own CPU.
    let env = env(PoolMode::Transaction, 5, |c| {
        c.pgferry.auth_type = pgferry::config::AuthType::Trust;
    })
    .await;
    let watcher = env.watch_backends("app").await;
    let mut tasks = Vec::new();
    for i in 0..500i32 {
        let url = env.url("app", APP_PW);
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            for _ in 0..3 {
                let v: i32 = c.query_one("SELECT $1::int", &[&i]).await.unwrap().get(0);
                assert_eq!(v, i);
            }
            c.simple_query("SELECT pg_sleep(0.005)").await.unwrap();
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let peak = watcher.stop().await;
    assert!(peak >= 1, "watcher saw no backend at all");
    assert!(peak <= 5, "saw {peak} backends for a pool of 5");
    assert_eq!(env.app().counters.logins.load(Ordering::Relaxed), 500);
}

async fn show(c: &tokio_postgres::Client, what: &str) -> String {
    c.query_one(&format!("SHOW {what}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_parameters_stay_with_their_client() {
    // One server connection: both clients necessarily share it.
    let env = env(PoolMode::Transaction, 1, |_| {}).await;
    let a = env.connect().await;
    let b = env.connect().await;
    let default_tz = show(&b, "TimeZone").await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    a.batch_execute("SET search_path = pg_catalog, public")
        .await
        .unwrap();
    a.batch_execute("SET application_name = 'client-a'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&b, "TimeZone").await, default_tz);
        assert_eq!(show(&b, "search_path").await, "\"$user\", public");
        assert_eq!(show(&b, "application_name").await, "");
        assert_eq!(show(&a, "TimeZone").await, "Asia/Tokyo");
        assert_eq!(show(&a, "search_path").await, "pg_catalog, public");
        assert_eq!(show(&a, "application_name").await, "client-a");
    }
    // B's own change does not leak back to A.
    b.batch_execute("SET DateStyle = 'German'").await.unwrap();
    assert_eq!(show(&a, "DateStyle").await, "ISO, MDY");
    assert_eq!(show(&b, "DateStyle").await, "German, DMY");
    // RESET brings A back to the default.
    a.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_fails_only_the_waiting_client() {
    let env = env(PoolMode::Transaction, 1, |c| {
        c.pgferry.query_wait_timeout = 0.5
    })
    .await;
    let holder = env.connect().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = env.connect().await;
    let t0 = Instant::now();
    let err = waiter.simple_query("SELECT 2").await.unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"), "{err:?}");
    assert!(format!("{err:?}").contains("query_wait_timeout"), "{err:?}");
    // The client holding the server is unaffected.
    let n: i64 = holder
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    holder.batch_execute("COMMIT").await.unwrap();
    let again = env.connect().await;
    again.simple_query("SELECT 3").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_extra_client() {
    let env = env(PoolMode::Transaction, 2, |c| c.pgferry.max_client_conn = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(env.connect().await);
    }
    let err = env.try_connect("app", APP_PW).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    for c in &held {
        c.simple_query("SELECT 1").await.unwrap();
    }
    drop(held.pop());
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.try_connect("app", APP_PW).await.is_ok()
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_right_query() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let a = env.connect().await;
    let b = env.connect().await;
    let token = a.cancel_token();
    let sleeper = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = a.simple_query("SELECT pg_sleep(10)").await;
        (r, t0.elapsed(), a)
    });
    let neighbour = tokio::spawn(async move {
        let r = b.simple_query("SELECT pg_sleep(0.6), 'done'").await;
        (r, b)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, took, a) = sleeper.await.unwrap();
    let err = r.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    assert!(took < Duration::from_millis(1300), "cancel took {took:?}");
    let (r, _b) = neighbour.await.unwrap();
    assert!(r.is_ok(), "neighbour's query was disturbed: {r:?}");
    // A cancel sent while the client is idle is dropped and harms nobody.
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_waiting_for_a_server_answers_57014_and_nothing_runs() {
    let env = env(PoolMode::Transaction, 1, |_| {}).await;
    let direct = env.direct().await;
    direct
        .batch_execute("CREATE TABLE waited (n int); GRANT ALL ON waited TO app")
        .await
        .unwrap();
    // The only server is busy with another client's transaction.
    let holder = env.connect().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = env.connect().await;
    let token = waiter.cancel_token();
    let queued = tokio::spawn(async move {
        let r = waiter
            .simple_query("INSERT INTO waited VALUES (1)")
            .await
            .map(|_| ());
        (r, waiter)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, waiter) = tokio::time::timeout(Duration::from_secs(5), queued)
        .await
        .expect("the cancelled request kept waiting for a server")
        .unwrap();
    let err = r.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // The request never ran, not even once the server became free.
    holder.batch_execute("COMMIT").await.unwrap();
    let n: i64 = waiter
        .query_one("SELECT count(*) FROM waited", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Extended protocol: the same, and the session goes on.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let token = waiter.cancel_token();
    let queued = tokio::spawn(async move {
        let r = waiter
            .execute("INSERT INTO waited VALUES ($1)", &[&2i32])
            .await
            .map(|_| ());
        (r, waiter)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, waiter) = queued.await.unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("57014"));
    holder.batch_execute("COMMIT").await.unwrap();
    let n: i64 = waiter
        .query_one("SELECT count(*) FROM waited", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transaction_leaves_no_lock_behind() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let direct = env.direct().await;
    {
        let victim = env.connect().await;
        victim
            .batch_execute("BEGIN; UPDATE items SET qty = -1 WHERE id = 1")
            .await
            .unwrap();
        // The client vanishes without COMMIT or Terminate.
        drop(victim);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await,
        "an idle-in-transaction backend was left behind"
    );
    let c = env.connect().await;
    c.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    c.batch_execute("UPDATE items SET qty = 5 WHERE id = 1")
        .await
        .unwrap();
    let q: i32 = c
        .query_one("SELECT qty FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        q, 5,
        "the vanished client's uncommitted update must not survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_md5_scram_and_wrong_password() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    // SCRAM (auth_type = scram-sha-256) with a plain secret in auth_file.
    env.try_connect("app", APP_PW)
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
    let err = env.try_connect("app", "wrong").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    let err = env.try_connect("nobody", "x").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    // Nothing reached the server for the failed logins.
    let direct = env.direct().await;
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'nobody'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // md5: the md5user has only an md5 secret; server login uses it too.
    let md5 = env_with(
        tokio::task::spawn_blocking(cluster).await.unwrap(),
        PoolMode::Transaction,
        2,
        |c| c.pgferry.auth_type = pgferry::config::AuthType::Md5,
    )
    .await;
    let c = md5.try_connect("md5user", MD5_PW).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let err = md5.try_connect("md5user", "wrong").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    // auth_type md5 with a plain secret also works.
    md5.try_connect("app", APP_PW).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_gets_3d000() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let url = format!(
        "host=127.0.0.1 port={} user=app password={APP_PW} dbname=nowhere",
        env.addr.port()
    );
    let err = connect_url(&url).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_behaves_as_on_a_direct_connection() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let c = env.connect().await;
    let s = c.prepare("SELECT $1::int + 1").await.unwrap();
    assert_eq!(c.query_one(&s, &[&1i32]).await.unwrap().get::<_, i32>(0), 2);
    c.batch_execute("DEALLOCATE ALL").await.unwrap();
    let err = c.query_one(&s, &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("26000"));
    let s2 = c.prepare("SELECT $1::int + 1").await.unwrap();
    assert_eq!(
        c.query_one(&s2, &[&2i32]).await.unwrap().get::<_, i32>(0),
        3
    );
    // Another client's statements are untouched by this client's DISCARD ALL.
    let other = env.connect().await;
    let so = other.prepare("SELECT $1::int * 10").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(
        other
            .query_one(&so, &[&4i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_add_host_shows_the_client_address() {
    let env = env(PoolMode::Transaction, 1, |c| {
        c.pgferry.application_name_add_host = true
    })
    .await;
    let url = format!("{} application_name=web", env.url("app", APP_PW));
    let c = connect_url(&url).await.unwrap();
    let name = show(&c, "application_name").await;
    assert!(name.starts_with("web - 127.0.0.1:"), "{name}");
    // Another client on the same (only) server sees its own name, not this one.
    let other = env.connect().await;
    let other_name = show(&other, "application_name").await;
    assert!(other_name.starts_with(" - 127.0.0.1:"), "{other_name}");
    assert_ne!(other_name, name);
}
