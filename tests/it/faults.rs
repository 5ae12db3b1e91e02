#![allow(clippy::unwrap_used)]
//! Faults between pgferry and PostgreSQL, injected with a TCP relay (tests/support/relay.rs)
//! or with pg_terminate_backend, and clients that vanish or stop reading. After every scenario
//! the pool is checked from both sides (tests/support/leaks.rs): no dirty or leaked server
//! connection. Scenarios already covered elsewhere are listed in docs/reliability.md.

use crate::support::leaks;
use crate::support::process;
use crate::support::raw;
use crate::support::relay;

use crate::common::*;
use bytes::Bytes;
use futures_util::{pin_mut, SinkExt};
use leaks::Probe;
use pgferry::config::{AuthType, Config, PoolMode};
use raw::{Raw, Read};
use relay::{Cut, Relay};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::timeout;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// PostgreSQL, a relay in front of it, and pgferry (trust auth, transaction mode) pointing at
/// the relay. `env.direct()` still reaches PostgreSQL straight.
struct RelayEnv {
    env: Env,
    relay: Relay,
    probe: Probe,
}

async fn relay_env(pool_size: u32, tweak: impl FnOnce(&mut Config)) -> RelayEnv {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let relay = Relay::to_port(pg.port()).await;
    let relay_port = relay.port();
    let env = env_with(pg, PoolMode::Transaction, pool_size, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        leaks::with_admin(c);
        c.databases.get_mut("shop").unwrap().port = relay_port;
        tweak(c);
    })
    .await;
    let probe = Probe::of(&env, pool_size as usize);
    RelayEnv { env, relay, probe }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}: {}", d.severity(), d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// One unit of work of a load client, checked for the right answer.
async fn work(c: &Client, kind: u32, id: i32, k: i32) -> Result<(), tokio_postgres::Error> {
    match kind {
        0 => {
            let rows = c.simple_query(&format!("SELECT {id} * 1000 + {k}")).await?;
            let v = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(v, Some((id * 1000 + k).to_string()), "client {id}");
        }
        1 => {
            let v: i32 = c
                .query_one("SELECT $1::int * 1000 + $2::int", &[&id, &k])
                .await?
                .get(0);
            assert_eq!(v, id * 1000 + k, "client {id}");
        }
        _ => {
            // Unnamed statements only: tokio-postgres closes a dropped named statement with a
            // request whose reply nobody reads, which would swallow a FATAL meant for us.
            c.batch_execute("BEGIN").await?;
            let rows = c
                .query_typed("SELECT $1::int + 1", &[(&k, Type::INT4)])
                .await?;
            assert_eq!(rows[0].get::<_, i32>(0), k + 1, "client {id}");
            let rows = c.query_typed("SELECT count(*) FROM items", &[]).await?;
            assert_eq!(rows[0].get::<_, i64>(0), 100);
            c.batch_execute("COMMIT").await?;
        }
    }
    Ok(())
}

/// A client whose connection task reports how the connection ended: the SQLSTATE and text of
/// an error the server (pgferry) sent while no request was waiting for it (a FATAL while the
/// client was idle in a transaction), or None for a plain close.
struct Watched {
    client: Client,
    ended: tokio::task::JoinHandle<Option<(String, String)>>,
}

async fn connect_watched(url: &str) -> Result<Watched, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let ended = tokio::spawn(async move {
        conn.await
            .err()
            .and_then(|e| e.code().map(|c| (c.code().to_owned(), describe(&e))))
    });
    Ok(Watched { client, ended })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_under_load_cost_each_client_at_most_one_error_per_cut() {
    const CLIENTS: i32 = 30;
    const CUTS: [Cut; 3] = [Cut::Reset, Cut::Fin, Cut::Reset];
    let e = relay_env(4, |c| c.pgferry.query_wait_timeout = 30.0).await;
    let url = e.env.url("app", "x");
    let cutting_done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let (url, cutting_done) = (url.clone(), cutting_done.clone());
        tasks.push(tokio::spawn(async move {
            let kind = (id % 3) as u32;
            let mut w = connect_watched(&url).await.unwrap();
            let mut errors: Vec<String> = Vec::new();
            let mut ok_after = 0;
            let mut k = 0;
            while ok_after < 10 {
                k += 1;
                let done = cutting_done.load(Ordering::SeqCst);
                let r = timeout(Duration::from_secs(30), work(&w.client, kind, id, k))
                    .await
                    .unwrap_or_else(|_| panic!("client {id}: request hung"));
                match r {
                    Ok(()) => ok_after += u32::from(done),
                    Err(err) if err.code().is_some() => {
                        let text = describe(&err);
                        ok_after = 0;
                        if text.starts_with("FATAL") {
                            // The connection is closing; don't count its closed state again.
                            let _ = timeout(Duration::from_secs(10), &mut w.ended).await;
                        } else if kind == 2 {
                            let _ = w.client.batch_execute("ROLLBACK").await;
                        }
                        errors.push(text);
                    }
                    Err(err) => {
                        // Closed while idle inside a transaction: pgferry must have said why
                        // (a FATAL with a SQLSTATE) before closing.
                        assert!(w.client.is_closed(), "client {id}: {err:?}");
                        let why = timeout(Duration::from_secs(10), &mut w.ended)
                            .await
                            .expect("connection task did not end")
                            .unwrap();
                        let Some((_, text)) = why else {
                            panic!("client {id}: closed without an error message ({err:?})");
                        };
                        errors.push(text);
                        ok_after = 0;
                    }
                }
                if w.client.is_closed() || w.ended.is_finished() {
                    w = timeout(Duration::from_secs(20), connect_watched(&url))
                        .await
                        .unwrap_or_else(|_| panic!("client {id}: reconnect hung"))
                        .unwrap_or_else(|e| panic!("client {id}: reconnect failed: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (id, errors)
        }));
    }
    for how in CUTS {
        tokio::time::sleep(Duration::from_millis(600)).await;
        e.relay.cut(how);
    }
    cutting_done.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    let (mut total_errors, mut fatal_told) = (0, 0);
    for t in tasks {
        let (id, errors) = timeout(Duration::from_secs(120), t)
            .await
            .expect("load clients did not finish")
            .unwrap();
        total_errors += errors.len();
        fatal_told += errors
            .iter()
            .filter(|e| e.starts_with("FATAL 08006"))
            .count();
        if errors.len() > CUTS.len() {
            failures.push(format!("client {id}: {errors:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "clients saw more errors than there were cuts:\n{}",
        failures.join("\n")
    );
    assert!(
        e.relay.accepted() > 4,
        "the cuts did not force new server connections"
    );
    assert!(
        fatal_told > 0,
        "no client in a transaction was told its server connection was lost"
    );
    eprintln!(
        "{total_errors} errors over {CLIENTS} clients and {} cuts ({fatal_told} FATAL 08006)",
        CUTS.len()
    );
    e.probe.assert_clean("after cuts under load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_copy_from_stdin_extended_protocol() {
    let (env, probe) = leaks::probed_env(2).await;
    let direct = env.direct().await;
    direct
        .batch_execute("CREATE TABLE sink (id int, payload text); ALTER TABLE sink OWNER TO app")
        .await
        .unwrap();

    // Extended protocol (tokio-postgres copy_in): rows keep coming when the backend dies.
    let c = env.connect().await;
    let copy = async {
        let sink = c
            .copy_in::<_, Bytes>("COPY sink (id, payload) FROM STDIN")
            .await?;
        pin_mut!(sink);
        for i in 0..400 {
            let chunk: String = (0..100)
                .map(|j| format!("{}\tpayload\n", i * 100 + j))
                .collect();
            sink.send(Bytes::from(chunk)).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.finish().await
    };
    let killer = async {
        let pid = running_backend(&direct, "COPY sink%").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        terminate_backend(&direct, pid).await;
    };
    let (r, ()) = timeout(Duration::from_secs(30), async {
        tokio::join!(copy, killer)
    })
    .await
    .expect("COPY hung after its backend was killed");
    let err = r.expect_err("a COPY whose backend was killed succeeded");
    assert!(err.code().is_some(), "no ErrorResponse: {err:?}");
    // The session goes on (it was not inside a transaction) and nothing was copied.
    let n = timeout(
        Duration::from_secs(15),
        c.query_one("SELECT count(*) FROM sink", &[]),
    )
    .await
    .expect("session hung after the failed COPY")
    .expect("session unusable after the failed COPY")
    .get::<_, i64>(0);
    assert_eq!(n, 0);
    drop(c);
    probe.assert_clean("after a COPY kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_copy_from_stdin_simple_protocol() {
    let (env, probe) = leaks::probed_env(2).await;
    let direct = env.direct().await;
    direct
        .batch_execute("CREATE TABLE sink (id int, payload text); ALTER TABLE sink OWNER TO app")
        .await
        .unwrap();
    // A raw client that keeps sending CopyData after the error.
    let mut r = Raw::ready(env.addr).await;
    r.send(&raw::query("COPY sink FROM STDIN")).await;
    assert_eq!(r.expect_msg().await.tag, b'G');
    r.send(&raw::msg(b'd', b"1\tfirst\n")).await;
    let pid = running_backend(&direct, "COPY sink%").await;
    terminate_backend(&direct, pid).await;
    let msgs = r.until_ready().await;
    let errs = raw::errors(&msgs);
    assert_eq!(errs.len(), 1, "{msgs:?}");
    assert_eq!(errs[0].0, "57P01", "{msgs:?}");
    assert_eq!(msgs.last().unwrap().ready_status(), b'I');
    // Late copy messages the client had in flight are dropped; the next query works.
    r.send(&raw::msg(b'd', b"2\tlate\n")).await;
    r.send(&raw::msg(b'c', b"")).await;
    assert_eq!(
        r.simple("SELECT count(*) FROM sink").await,
        [Some("0".into())]
    );
    assert_eq!(count_rows(&direct, "sink").await, 0);
    drop(r);
    probe.assert_clean("after a COPY kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_server_fails_new_connections_within_server_connect_timeout() {
    const CONNECT_TIMEOUT: f64 = 1.0;
    const WAIT_TIMEOUT: f64 = 3.0;
    let e = relay_env(2, |c| {
        c.pgferry.server_connect_timeout = CONNECT_TIMEOUT;
        c.pgferry.query_wait_timeout = WAIT_TIMEOUT;
        // After a failed server login, new logins fail fast until server_login_retry has
        // passed (as PgBouncer); keep that short so recovery is quick to see.
        c.pgferry.server_login_retry = 0.5;
    })
    .await;

    // The first login needs a server connection (for the server's parameters).
    e.relay.blackhole(true);
    let t = Instant::now();
    let r = timeout(Duration::from_secs(20), e.env.try_connect("app", "x"))
        .await
        .expect("login hung while the server is blackholed");
    let Err(err) = r else {
        panic!("login succeeded while the server is blackholed");
    };
    let took = t.elapsed().as_secs_f64();
    assert!(err.code().is_some(), "no ErrorResponse: {err:?}");
    assert!(
        took < CONNECT_TIMEOUT + 2.0,
        "login failed only after {took:.1} s ({})",
        describe(&err)
    );

    e.relay.blackhole(false);
    let c = e.env.connect().await;
    assert_eq!(count_rows(&c, "items").await, 100);

    // A logged-in client whose next transaction needs a new server connection: the dead one
    // is discarded, new attempts time out and are retried within query_wait_timeout.
    e.relay.cut(Cut::Fin);
    e.relay.blackhole(true);
    let t = Instant::now();
    let r = timeout(
        Duration::from_secs(30),
        c.query_one("SELECT count(*) FROM items", &[]),
    )
    .await
    .expect("query hung while the server is blackholed");
    let Err(err) = r else {
        panic!("query succeeded while the server is blackholed");
    };
    let took = t.elapsed().as_secs_f64();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("08006"),
        "{}",
        describe(&err)
    );
    assert!(
        took < WAIT_TIMEOUT + CONNECT_TIMEOUT + 2.0,
        "query failed only after {took:.1} s"
    );
    e.relay.blackhole(false);
    assert_eq!(
        timeout(
            Duration::from_secs(15),
            c.query_one("SELECT count(*) FROM items", &[])
        )
        .await
        .expect("query hung after the black hole ended")
        .expect("the session did not survive the black hole")
        .get::<_, i64>(0),
        100
    );
    drop(c);
    e.probe.assert_clean("after a black hole").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_server_fails_a_running_query_within_query_timeout() {
    const QUERY_TIMEOUT: f64 = 2.0;
    let e = relay_env(2, |c| {
        c.pgferry.query_timeout = QUERY_TIMEOUT;
        c.pgferry.server_connect_timeout = 1.0;
    })
    .await;
    let c = e.env.connect().await;
    assert_eq!(count_rows(&c, "items").await, 100);

    // The query leaves and its answer never comes back.
    e.relay.blackhole(true);
    let t = Instant::now();
    let r = timeout(
        Duration::from_secs_f64(QUERY_TIMEOUT + 8.0),
        c.simple_query("SELECT 1"),
    )
    .await;
    let took = t.elapsed().as_secs_f64();
    e.relay.blackhole(false);
    let r = r.unwrap_or_else(|_| {
        panic!("no answer {took:.1} s after a query was sent to a blackholed server (query_timeout = {QUERY_TIMEOUT})")
    });
    assert!(r.is_err(), "a query to a blackholed server succeeded");
    assert!(
        took >= QUERY_TIMEOUT - 0.2,
        "failed after {took:.1} s, before query_timeout"
    );

    // Others are served once the server answers again.
    let c2 = e.env.connect().await;
    assert_eq!(count_rows(&c2, "items").await, 100);
    drop((c, c2));
    e.probe.assert_clean("after query_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_gives_correct_results_and_no_errors() {
    let e = relay_env(3, |c| c.pgferry.query_wait_timeout = 60.0).await;
    e.relay.set_delay(Duration::from_millis(25));
    {
        let d = e.env.direct().await;
        d.batch_execute(
            "CREATE TABLE slow (id int PRIMARY KEY, v text); ALTER TABLE slow OWNER TO app",
        )
        .await
        .unwrap();
    }
    let url = e.env.url("app", "x");
    let mut tasks = Vec::new();
    for id in 0..8i32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            let st = c
                .prepare("SELECT name, qty FROM items WHERE id = $1")
                .await
                .unwrap();
            for k in 1..=8i32 {
                let item = (id * 8 + k) % 100 + 1;
                let row = c.query_one(&st, &[&item]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("item {item}"));
                assert_eq!(row.get::<_, i32>(1), item);
                let key = id * 100 + k;
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO slow VALUES ({key}, 'v{key}'); COMMIT"
                ))
                .await
                .unwrap();
            }
            // A result of a few MB, byte-exact.
            let rows = c
                .query(
                    "SELECT g, md5(g::text) FROM generate_series(1, 20000) g ORDER BY g",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), 20000);
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(r.get::<_, i32>(0), i as i32 + 1);
            }
            let check: String = c
                .query_one(
                    "SELECT md5(string_agg(md5(g::text), '' ORDER BY g)) FROM generate_series(1, 20000) g",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            let direct: Vec<String> = rows.iter().map(|r| r.get::<_, String>(1)).collect();
            let local = md5_hex(direct.concat().as_bytes());
            assert_eq!(local, check, "client {id}: rows differ from the server's");
            id
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(120), t)
            .await
            .expect("clients behind a slow server did not finish")
            .unwrap();
    }
    let d = e.env.direct().await;
    assert_eq!(count_rows(&d, "slow").await, 64);
    e.relay.set_delay(Duration::ZERO);
    e.probe.assert_clean("after a slow server").await;
}

fn md5_hex(b: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Closes a raw client's socket abruptly: with RST (`reset`) or FIN.
fn vanish(r: Raw, reset: bool) {
    if reset {
        r.stream.set_zero_linger().unwrap();
    }
    drop(r);
}

/// A second client can lock and update item 1 (nothing left holding its row lock).
async fn row_is_free(env: &Env) {
    let c = env.connect().await;
    let r = timeout(
        Duration::from_secs(20),
        c.batch_execute(
            "BEGIN; SET LOCAL lock_timeout = '3s'; \
             UPDATE items SET qty = qty WHERE id = 1; COMMIT",
        ),
    )
    .await
    .expect("the pool was not given back");
    r.expect("item 1 is still locked by a vanished client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_copy_or_result_leaves_nothing_behind() {
    let (env, probe) = leaks::probed_env(1).await;
    let direct = env.direct().await;
    direct
        .batch_execute("CREATE TABLE dropped (id int, v text); ALTER TABLE dropped OWNER TO app")
        .await
        .unwrap();

    for reset in [false, true] {
        // Inside a transaction holding a row lock.
        let mut r = Raw::ready(env.addr).await;
        let msgs = r
            .roundtrip(&raw::query(
                "BEGIN; UPDATE items SET qty = -1 WHERE id = 1; INSERT INTO dropped VALUES (1, 'tx')",
            ))
            .await;
        assert_eq!(msgs.last().unwrap().ready_status(), b'T', "{msgs:?}");
        vanish(r, reset);
        row_is_free(&env).await;

        // Extended protocol without the Sync: the implicit transaction is still open.
        let mut r = Raw::ready(env.addr).await;
        let mut b = raw::parse("", "UPDATE items SET qty = -2 WHERE id = 1");
        b.extend(raw::bind_execute("", &[]));
        b.extend(raw::flush());
        r.send(&b).await;
        let m = r.expect_msg().await;
        assert_eq!(m.tag, b'1', "{m:?}");
        vanish(r, reset);
        row_is_free(&env).await;

        // In the middle of COPY FROM STDIN.
        let mut r = Raw::ready(env.addr).await;
        r.send(&raw::query("COPY dropped FROM STDIN")).await;
        assert_eq!(r.expect_msg().await.tag, b'G');
        r.send(&raw::msg(b'd', b"2\tcopy\n")).await;
        vanish(r, reset);
        row_is_free(&env).await;

        // While a large result streams to it.
        let mut r = Raw::ready(env.addr).await;
        r.send(&raw::query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)",
        ))
        .await;
        for _ in 0..10 {
            let m = r.expect_msg().await;
            assert!(m.tag == b'T' || m.tag == b'D', "{m:?}");
        }
        vanish(r, reset);
        row_is_free(&env).await;
    }
    let qty: i32 = direct
        .query_one("SELECT qty FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(qty, 1, "a vanished client's update was committed");
    assert_eq!(count_rows(&direct, "dropped").await, 0);
    probe.assert_clean("after vanished clients").await;
    // Nothing of theirs is still running either.
    let running: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state <> 'idle'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_a_huge_result_does_not_grow_pgferry() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let config = process::write_config(
        dir.path(),
        pg.port(),
        port,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 2\n\
         admin_users = [\"admin\"]",
        "",
    );
    leaks::add_admin_to_userlist(&dir.path().join("userlist.txt"));
    let ferry = process::Ferry::with_config(&config, port, dir.path()).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let probe = Probe {
        ferry_port: port,
        pg_port: pg.port(),
        pool_size: 2,
    };
    let other = connect_url(&ferry.url()).await.unwrap();
    assert_eq!(count_rows(&other, "items").await, 100);
    let before = ferry.rss_kb();

    // About 200 MB of rows; the client reads the first few and then nothing.
    let mut stuck = Raw::ready(addr).await;
    stuck
        .send(&raw::query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 200000)",
        ))
        .await;
    for _ in 0..3 {
        stuck.expect_msg().await;
    }
    let mut max = before;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut served = 0;
    while tokio::time::Instant::now() < until {
        // Other clients are served meanwhile, on the pool's other server connection.
        let n: i64 = timeout(
            Duration::from_secs(10),
            other.query_one("SELECT count(*) FROM items", &[]),
        )
        .await
        .expect("another client was not served while one stopped reading")
        .unwrap()
        .get(0);
        assert_eq!(n, 100);
        served += 1;
        max = max.max(ferry.rss_kb());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let growth_mb = max.saturating_sub(before) / 1024;
    assert!(served > 10);
    assert!(
        growth_mb < 50,
        "pgferry grew by {growth_mb} MB ({before} kB → {max} kB) holding a result nobody reads"
    );
    // The rest is still there for the client if it wakes up.
    match stuck.read_within(Duration::from_secs(5)).await {
        Read::Msg(m) => assert_eq!(m.tag, b'D'),
        other => panic!("the stuck client lost its result: {other:?}"),
    }
    vanish(stuck, false);
    probe
        .assert_clean("after a client that stopped reading")
        .await;
    drop(pg);
}

/// The message sequence behind the tokio-postgres test above: an extended-protocol COPY has no
/// Sync outstanding while data flows, so the error must come at once, and the client's later
/// CopyData / CopyDone / Sync get exactly one ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_extended_copy_errors_at_once_then_one_ready() {
    let (env, probe) = leaks::probed_env(2).await;
    let direct = env.direct().await;
    direct
        .batch_execute("CREATE TABLE sink (id int, payload text); ALTER TABLE sink OWNER TO app")
        .await
        .unwrap();
    let mut r = Raw::ready(env.addr).await;
    let mut b = raw::parse("", "COPY sink (id, payload) FROM STDIN");
    b.extend(raw::bind("", "", &[]));
    b.extend(raw::execute("", 0));
    b.extend(raw::sync());
    r.send(&b).await;
    assert_eq!(r.expect_msg().await.tag, b'1');
    assert_eq!(r.expect_msg().await.tag, b'2');
    assert_eq!(r.expect_msg().await.tag, b'G');
    r.send(&raw::msg(b'd', b"1\tfirst\n")).await;
    let pid = running_backend(&direct, "COPY sink%").await;
    terminate_backend(&direct, pid).await;
    let err = r.expect_msg().await;
    assert_eq!(err.tag, b'E');
    assert_eq!(err.sqlstate().as_deref(), Some("57P01"));
    // What the client had in flight, then its copy end and Sync: one ReadyForQuery, no error.
    let mut b = raw::msg(b'd', b"2\tlate\n");
    b.extend(raw::msg(b'c', b""));
    b.extend(raw::sync());
    r.send(&b).await;
    let msgs = r.until_ready().await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].ready_status(), b'I');
    assert_eq!(
        r.simple("SELECT count(*) FROM sink").await,
        [Some("0".into())]
    );
    drop(r);
    probe.assert_clean("after an extended COPY kill").await;
}
