#![allow(clippy::unwrap_used)]
//! The admin console against a real PostgreSQL: PgBouncer 1.25's SHOW columns, exact
//! counters after a scripted workload, client states, PAUSE/RESUME under load, RECONNECT,
//! DISABLE, KILL, access control, RELOAD and SET.

use crate::common::*;
use pgferry::config::{Config, PoolMode};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN_PW: &str = "admin-secret";
const STATS_PW: &str = "stats-secret";

/// Admin and stats users in the auth_file, metrics on an ephemeral port.
fn with_admin(c: &mut Config) {
    c.pgferry.admin_users = vec!["admin".into()];
    c.pgferry.stats_users = vec!["stats".into()];
    c.pgferry.metrics_addr = "127.0.0.1:0".into();
    let path = c.pgferry.auth_file.clone().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\"admin\" \"{ADMIN_PW}\"").unwrap();
    writeln!(f, "\"stats\" \"{STATS_PW}\"").unwrap();
}

async fn console(env: &Env, user: &str, pw: &str) -> Result<Client, tokio_postgres::Error> {
    connect_url(&format!(
        "host=127.0.0.1 port={} user={user} password={pw} dbname=pgbouncer connect_timeout=10",
        env.addr.port()
    ))
    .await
}

async fn admin(env: &Env) -> Client {
    console(env, "admin", ADMIN_PW).await.unwrap()
}

async fn error_of(c: &Client, q: &str) -> String {
    let e = c.simple_query(q).await.unwrap_err();
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

fn cols(s: &str) -> Vec<String> {
    s.split(',').map(|c| c.trim().to_owned()).collect()
}

/// PgBouncer 1.25's column lists, written out independently of the implementation.
const PGBOUNCER_COLUMNS: &[(&str, &str)] = &[
    ("POOLS", "database, user, cl_active, cl_waiting, cl_active_cancel_req, cl_waiting_cancel_req, sv_active, sv_active_cancel, sv_being_canceled, sv_idle, sv_used, sv_tested, sv_login, maxwait, maxwait_us, pool_mode, load_balance_hosts"),
    ("STATS", "database, total_server_assignment_count, total_xact_count, total_query_count, total_received, total_sent, total_xact_time, total_query_time, total_wait_time, total_client_parse_count, total_server_parse_count, total_bind_count, total_client_login_count, avg_server_assignment_count, avg_xact_count, avg_query_count, avg_recv, avg_sent, avg_xact_time, avg_query_time, avg_wait_time, avg_client_parse_count, avg_server_parse_count, avg_bind_count, avg_client_login_count"),
    ("STATS_TOTALS", "database, server_assignment_count, xact_count, query_count, bytes_received, bytes_sent, xact_time, query_time, wait_time, client_parse_count, server_parse_count, bind_count, client_login_count"),
    ("STATS_AVERAGES", "database, server_assignment_count, xact_count, query_count, bytes_received, bytes_sent, xact_time, query_time, wait_time, avg_client_parse_count, avg_server_parse_count, avg_bind_count, avg_client_login_count"),
    ("TOTALS", "name, value"),
    ("SERVERS", "type, user, database, replication, state, addr, port, local_addr, local_port, connect_time, request_time, wait, wait_us, close_needed, ptr, link, remote_pid, tls, application_name, prepared_statements, id"),
    ("CLIENTS", "type, user, database, replication, state, addr, port, local_addr, local_port, connect_time, request_time, wait, wait_us, close_needed, ptr, link, remote_pid, tls, application_name, prepared_statements, id"),
    ("DATABASES", "name, host, port, database, force_user, pool_size, min_pool_size, reserve_pool_size, server_lifetime, pool_mode, load_balance_hosts, max_connections, current_connections, max_client_connections, current_client_connections, paused, disabled"),
    ("USERS", "name, pool_size, reserve_pool_size, pool_mode, max_user_connections, current_connections, max_user_client_connections, current_client_connections"),
    ("CONFIG", "key, value, default, changeable"),
    ("LISTS", "list, items"),
    ("STATE", "key, value"),
    ("VERSION", "version"),
    ("MEM", "name, size, used, free, memtotal"),
    ("DNS_HOSTS", "hostname, ttl, addrs"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_columns_match_pgbouncer_and_console_rules() {
    let env = env(PoolMode::Transaction, 2, with_admin).await;
    let app = env.connect().await;
    app.simple_query("SELECT 1").await.unwrap();
    let c = admin(&env).await;
    for (cmd, expected) in PGBOUNCER_COLUMNS {
        let (got, _) = show(&c, &format!("SHOW {cmd}")).await;
        assert_eq!(got, cols(expected), "SHOW {cmd}");
        // Case-insensitive, with or without a semicolon.
        let (lower, _) = show(&c, &format!("show {};", cmd.to_lowercase())).await;
        assert_eq!(lower, cols(expected), "show {cmd};");
    }
    // SHOW HELP answers with a notice and no rows.
    assert!(show(&c, "SHOW HELP").await.1.is_empty());
    let (_, v) = show(&c, "SHOW VERSION").await;
    assert!(v[0][0].as_deref().unwrap().starts_with("PgBouncer 1.25"));
    let state = records(&c, "SHOW STATE").await;
    assert_eq!(state[0]["key"], "active");
    assert_eq!(state[0]["value"], "yes");
    // The pool and the two clients (app and this console) are listed.
    let pools = records(&c, "SHOW POOLS").await;
    assert!(pools
        .iter()
        .any(|p| p["database"] == "shop" && p["user"] == "app" && p["pool_mode"] == "transaction"));
    let clients = records(&c, "SHOW CLIENTS").await;
    assert!(clients
        .iter()
        .any(|r| r["database"] == "shop" && r["type"] == "C"));
    assert!(clients
        .iter()
        .any(|r| r["database"] == "pgbouncer" && r["user"] == "admin"));
    let servers = records(&c, "SHOW SERVERS").await;
    assert!(servers
        .iter()
        .all(|r| r["type"] == "S" && r["remote_pid"].parse::<i32>().unwrap() > 0));

    // Unknown commands and extended protocol are errors; the session continues.
    assert_eq!(
        error_of(&c, "SHOW NONSENSE").await,
        "invalid command 'SHOW NONSENSE', use SHOW HELP;"
    );
    assert!(error_of(&c, "FROBNICATE")
        .await
        .starts_with("invalid command"));
    let e = c.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "extended query protocol not supported by admin console"
    );
    assert_eq!(show(&c, "SHOW LISTS").await.0, cols("list, items"));

    // A user that is neither admin nor stats cannot log in to the console.
    let e = console(&env, "app", APP_PW).await.err().unwrap();
    assert_eq!(e.as_db_error().unwrap().message(), "not allowed");
    // A stats user may SHOW but not control.
    let s = console(&env, "stats", STATS_PW).await.unwrap();
    assert_eq!(show(&s, "SHOW POOLS").await.0.len(), 17);
    for cmd in [
        "PAUSE",
        "RESUME",
        "KILL shop",
        "RECONNECT",
        "DISABLE shop",
        "RELOAD",
        "SHUTDOWN",
        "SET max_client_conn = 5",
        "KILL_CLIENT 1",
    ] {
        assert_eq!(error_of(&s, cmd).await, "admin access needed", "{cmd}");
    }
    // Nothing was paused by the refused commands.
    app.simple_query("SELECT 1").await.unwrap();
}

/// SHOW CLIENTS and SHOW SERVERS count the prepared statements of each side in transaction
/// mode: the client's names, and the statements pgferry prepared on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_counted_on_both_sides() {
    let env = env(PoolMode::Transaction, 1, with_admin).await;
    let app = env.connect().await;
    let c = admin(&env).await;
    let count = |rows: Vec<std::collections::HashMap<String, String>>| -> Vec<String> {
        rows.iter()
            .filter(|r| r["database"] == "shop")
            .map(|r| r["prepared_statements"].clone())
            .collect()
    };
    let a = app.prepare("SELECT $1::int + 1").await.unwrap();
    let b = app.prepare("SELECT $1::text || 'x'").await.unwrap();
    app.query_one(&a, &[&1i32]).await.unwrap();
    app.query_one(&b, &[&"y"]).await.unwrap();
    assert_eq!(count(records(&c, "SHOW CLIENTS").await), ["2"]);
    assert_eq!(count(records(&c, "SHOW SERVERS").await), ["2"]);
    app.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_eq!(count(records(&c, "SHOW CLIENTS").await), ["0"]);
    assert_eq!(count(records(&c, "SHOW SERVERS").await), ["0"]);
}

async fn totals_row(c: &Client, db: &str) -> std::collections::HashMap<String, String> {
    records(c, "SHOW STATS_TOTALS")
        .await
        .into_iter()
        .find(|r| r["database"] == db)
        .unwrap()
}

/// Query and transaction times run from the request to the reply, whatever else the session
/// did in between (they are read from a clock shared by everything handled between two waits,
/// so a reading kept across a wait would show here as times near zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_times_span_the_server_work() {
    query_times_in(PoolMode::Transaction).await;
}

/// The same in session mode, where the server stays linked between transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_times_span_the_server_work_in_session_mode() {
    query_times_in(PoolMode::Session).await;
}

async fn query_times_in(mode: PoolMode) {
    const SLEEP_MS: u64 = 150;
    let env = env(mode, 2, with_admin).await;
    let c = env.connect().await;
    let wall = std::time::Instant::now();
    // Two in the simple protocol, two in the extended one (Parse, Bind, Describe, Execute,
    // Sync in one write), and two pipelined in one write: the second waits for the first.
    for _ in 0..2 {
        c.simple_query(&format!("SELECT pg_sleep({SLEEP_MS} / 1000.0)"))
            .await
            .unwrap();
        c.query(
            "SELECT pg_sleep($1::float8 / 1000.0)",
            &[&(SLEEP_MS as f64)],
        )
        .await
        .unwrap();
    }
    let q = "SELECT pg_sleep($1::float8 / 1000.0)";
    let (a, b) = tokio::join!(
        c.query(q, &[&(SLEEP_MS as f64)]),
        c.query(q, &[&(SLEEP_MS as f64)])
    );
    a.unwrap();
    b.unwrap();
    // tokio-postgres closes each statement it prepared for `query` after it returns, without
    // waiting: one round trip more makes sure those Closes were answered inside the window.
    c.simple_query("SELECT 1").await.unwrap();
    let wall_us = u64::try_from(wall.elapsed().as_micros()).unwrap();
    let sleeps_us = 6 * SLEEP_MS * 1000;

    let admin = admin(&env).await;
    let t = totals_row(&admin, "shop").await;
    let query_us: u64 = t["query_time"].parse().unwrap();
    let xact_us: u64 = t["xact_time"].parse().unwrap();
    assert!(
        (sleeps_us..=wall_us).contains(&query_us),
        "query_time {query_us} µs: the server slept {sleeps_us} µs, the test took {wall_us} µs"
    );
    assert!(
        (sleeps_us..=wall_us).contains(&xact_us),
        "xact_time {xact_us} µs: the server slept {sleeps_us} µs, the test took {wall_us} µs"
    );
    // Insight times each statement: the pipelined second one from its arrival to its reply.
    let q = records(&admin, "SHOW QUERIES").await;
    let total_us: u64 = q
        .iter()
        .filter(|r| r["query"].to_lowercase().contains("pg_sleep"))
        .map(|r| r["total_time_us"].parse::<u64>().unwrap())
        .sum();
    assert!(
        (sleeps_us..=wall_us + sleeps_us).contains(&total_us),
        "SHOW QUERIES total {total_us} µs for {sleeps_us} µs of sleeps in {wall_us} µs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counters_after_a_scripted_workload() {
    let env = env(PoolMode::Transaction, 2, with_admin).await;
    // 5 logins; 6 transactions; 15 queries (one Query message each).
    let mut cl = Vec::new();
    for _ in 0..5 {
        cl.push(env.connect().await);
    }
    let script: [&[&str]; 5] = [
        &["BEGIN", "SELECT 1", "SELECT 2", "SELECT 3", "COMMIT"],
        &["BEGIN", "SELECT count(*) FROM items", "COMMIT"],
        &["SELECT 1", "SELECT 2"],
        &[
            "BEGIN",
            "SELECT 1",
            "UPDATE items SET qty = qty WHERE id = 1",
            "COMMIT",
        ],
        &["SELECT name FROM items WHERE id = 3"],
    ];
    for (c, queries) in cl.iter().zip(script) {
        for q in queries {
            c.simple_query(q).await.unwrap();
        }
    }
    let c = admin(&env).await;
    let t = totals_row(&c, "shop").await;
    assert_eq!(t["client_login_count"], "5");
    assert_eq!(t["xact_count"], "6");
    assert_eq!(t["query_count"], "15");
    // One assignment per transaction (plus the first login's, which learns the server's
    // parameters).
    let assignments: u64 = t["server_assignment_count"].parse().unwrap();
    assert!((6..=7).contains(&assignments), "{assignments}");
    assert!(t["bytes_received"].parse::<u64>().unwrap() > 15 * 5);
    assert!(t["bytes_sent"].parse::<u64>().unwrap() > 0);
    assert!(t["xact_time"].parse::<u64>().unwrap() > 0);
    assert!(t["query_time"].parse::<u64>().unwrap() > 0);
    // SHOW STATS and SHOW TOTALS agree.
    let s = records(&c, "SHOW STATS").await;
    let s = s.iter().find(|r| r["database"] == "shop").unwrap();
    assert_eq!(s["total_xact_count"], "6");
    assert_eq!(s["total_query_count"], "15");
    assert_eq!(s["total_client_login_count"], "5");
    assert_eq!(s["total_received"], t["bytes_received"]);
    let totals = records(&c, "SHOW TOTALS").await;
    let get = |n: &str| totals.iter().find(|r| r["name"] == n).unwrap()["value"].clone();
    assert_eq!(get("total_xact_count"), "6");
    assert_eq!(get("total_query_count"), "15");
    assert_eq!(get("total_client_bytes"), t["bytes_received"]);
    // Averages come from the last stats_period.
    env.app().refresh_averages();
    let a = records(&c, "SHOW STATS_AVERAGES").await;
    assert!(a.iter().any(|r| r["database"] == "shop"));
}

fn app_url(env: &Env, name: &str) -> String {
    format!("{} application_name={name}", env.url("app", APP_PW))
}

async fn client_state(c: &Client, name: &str) -> String {
    records(c, "SHOW CLIENTS")
        .await
        .into_iter()
        .find(|r| r["application_name"] == name)
        .map(|r| r["state"].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_states_idle_waiting_active_with_a_pool_of_one() {
    let env = env(PoolMode::Transaction, 1, with_admin).await;
    let c = admin(&env).await;
    let a = connect_url(&app_url(&env, "holder")).await.unwrap();
    let b = Arc::new(connect_url(&app_url(&env, "waiter")).await.unwrap());
    assert_eq!(client_state(&c, "holder").await, "idle");
    assert_eq!(client_state(&c, "waiter").await, "idle");
    a.simple_query("BEGIN").await.unwrap();
    assert_eq!(client_state(&c, "holder").await, "active");
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.simple_query("SELECT 42").await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            client_state(&c, "waiter").await == "waiting"
        })
        .await
    );
    let pools = records(&c, "SHOW POOLS").await;
    let p = pools.iter().find(|p| p["database"] == "shop").unwrap();
    assert_eq!(p["cl_waiting"], "1");
    assert_eq!(p["sv_active"], "1");
    let clients = records(&c, "SHOW CLIENTS").await;
    let holder = clients
        .iter()
        .find(|r| r["application_name"] == "holder")
        .unwrap();
    let servers = records(&c, "SHOW SERVERS").await;
    let server = servers.iter().find(|s| s["database"] == "shop").unwrap();
    assert_eq!(holder["link"], server["ptr"]);
    assert_eq!(server["link"], holder["ptr"]);
    assert_eq!(server["state"], "active");
    a.simple_query("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            client_state(&c, "waiter").await == "idle" && client_state(&c, "holder").await == "idle"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_lose_nothing_across_five_pause_resume_cycles() {
    let env = env(PoolMode::Transaction, 4, with_admin).await;
    let c = admin(&env).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..20i64 {
        let url = env.url("app", APP_PW);
        let (stop, ok) = (stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            let mut failed = 0u64;
            let mut k = 0i64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let r = if k % 3 == 0 {
                    c.batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT")
                        .await
                        .map(|_| ())
                } else {
                    c.query_one("SELECT $1::int8 * 2", &[&(i * 1000 + k)])
                        .await
                        .map(|row| assert_eq!(row.get::<_, i64>(0), (i * 1000 + k) * 2))
                };
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("client {i}: {e}");
                        failed += 1;
                    }
                }
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for cycle in 0..5 {
        let t0 = std::time::Instant::now();
        c.simple_query("PAUSE shop").await.unwrap();
        // Paused: no server connection is left, the database says so.
        let servers = records(&c, "SHOW SERVERS").await;
        assert!(
            servers.iter().all(|s| s["database"] != "shop"),
            "cycle {cycle}"
        );
        let dbs = records(&c, "SHOW DATABASES").await;
        assert_eq!(
            dbs.iter().find(|d| d["name"] == "shop").unwrap()["paused"],
            "1"
        );
        // Replies sent before PAUSE finished may still be read by their clients: settle first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = ok.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ok.load(Ordering::Relaxed), before, "work ran while paused");
        c.simple_query("RESUME shop").await.unwrap();
        eprintln!("cycle {cycle}: paused after {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The global form too, and PgBouncer's errors around it.
    c.simple_query("PAUSE").await.unwrap();
    assert_eq!(error_of(&c, "PAUSE").await, "already suspended/paused");
    let state = records(&c, "SHOW STATE").await;
    assert_eq!(state[1]["value"], "yes");
    c.simple_query("RESUME").await.unwrap();
    assert_eq!(
        error_of(&c, "RESUME").await,
        "pooler is not paused/suspended"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    assert_eq!(failed, 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_gives_the_next_transaction_a_new_server() {
    let env = env(PoolMode::Transaction, 1, with_admin).await;
    let c = admin(&env).await;
    let app = env.connect().await;
    let pid1 = backend_pid(&app).await;
    assert_eq!(backend_pid(&app).await, pid1);
    c.simple_query("RECONNECT shop").await.unwrap();
    let pid2 = backend_pid(&app).await;
    assert_ne!(pid2, pid1);
    // A server in use is closed when released; WAIT_CLOSE waits for that.
    app.simple_query("BEGIN").await.unwrap();
    c.simple_query("RECONNECT").await.unwrap();
    let servers = records(&c, "SHOW SERVERS").await;
    assert_eq!(servers[0]["close_needed"], "1");
    let c = Arc::new(c);
    let c2 = c.clone();
    let wait = tokio::spawn(async move { c2.simple_query("WAIT_CLOSE shop").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!wait.is_finished());
    assert_eq!(backend_pid(&app).await, pid2);
    app.simple_query("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(backend_pid(&app).await, pid2);
    assert_eq!(
        error_of(&c, "RECONNECT nope").await,
        "no such database: nope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_clients_and_enable_lets_them_in() {
    let env = env(PoolMode::Transaction, 2, with_admin).await;
    let c = admin(&env).await;
    let before = env.connect().await;
    c.simple_query("DISABLE shop").await.unwrap();
    let e = env.try_connect("app", APP_PW).await.err().unwrap();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "database \"shop\" is disabled"
    );
    // Clients already in keep working.
    before.simple_query("SELECT 1").await.unwrap();
    let dbs = records(&c, "SHOW DATABASES").await;
    assert_eq!(
        dbs.iter().find(|d| d["name"] == "shop").unwrap()["disabled"],
        "1"
    );
    assert_eq!(error_of(&c, "DISABLE").await, "a database is required");
    assert_eq!(
        error_of(&c, "DISABLE pgbouncer").await,
        "cannot disable admin db: pgbouncer"
    );
    c.simple_query("ENABLE shop").await.unwrap();
    env.connect().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_clients_and_kill_client_drops_one() {
    let env = env(PoolMode::Transaction, 2, with_admin).await;
    let c = admin(&env).await;
    let one = connect_url(&app_url(&env, "one")).await.unwrap();
    let two = connect_url(&app_url(&env, "two")).await.unwrap();
    one.simple_query("SELECT 1").await.unwrap();
    two.simple_query("SELECT 1").await.unwrap();
    let id = records(&c, "SHOW CLIENTS")
        .await
        .into_iter()
        .find(|r| r["application_name"] == "one")
        .unwrap()["id"]
        .clone();
    c.simple_query(&format!("KILL_CLIENT {id}")).await.unwrap();
    assert!(one.simple_query("SELECT 1").await.is_err());
    two.simple_query("SELECT 1").await.unwrap();
    assert_eq!(error_of(&c, "KILL_CLIENT 999999").await, "client not found");
    assert_eq!(
        error_of(&c, "KILL_CLIENT x").await,
        "invalid client pointer supplied"
    );

    c.simple_query("KILL shop").await.unwrap();
    assert!(two.simple_query("SELECT 1").await.is_err());
    assert!(
        eventually(Duration::from_secs(5), || async {
            records(&c, "SHOW CLIENTS")
                .await
                .iter()
                .all(|r| r["database"] != "shop")
        })
        .await
    );
    assert!(records(&c, "SHOW SERVERS").await.is_empty());
    // As in PgBouncer, KILL leaves the database paused until RESUME.
    c.simple_query("RESUME shop").await.unwrap();
    env.connect().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_set_change_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgferry.toml");
    let file2 = file.clone();
    let env = env(PoolMode::Transaction, 2, move |c| {
        with_admin(c);
        std::fs::write(&file2, toml::to_string(c).unwrap()).unwrap();
        c.source_path = Some(file2);
    })
    .await;
    let c = admin(&env).await;
    let app = env.connect().await;
    app.simple_query("SELECT 1").await.unwrap();
    let value = |rows: &[std::collections::HashMap<String, String>], k: &str| {
        rows.iter().find(|r| r["key"] == k).unwrap()["value"].clone()
    };

    // SET: live settings change, start-only ones are refused.
    c.simple_query("SET max_client_conn = 77").await.unwrap();
    assert_eq!(
        value(&records(&c, "SHOW CONFIG").await, "max_client_conn"),
        "77"
    );
    assert!(error_of(&c, "SET listen_port = 1")
        .await
        .starts_with("SET failed"));
    assert!(error_of(&c, "SET no_such_thing = 1")
        .await
        .starts_with("SET failed"));
    assert!(error_of(&c, "SET pool_mode = 'sideways'")
        .await
        .starts_with("SET failed"));
    c.simple_query("SET stats_users = 'stats, other'")
        .await
        .unwrap();
    assert_eq!(
        value(&records(&c, "SHOW CONFIG").await, "stats_users"),
        "stats,other"
    );

    // RELOAD: the file's values replace the running ones (SET ones included).
    let mut cfg = env.config.clone();
    cfg.pgferry.default_pool_size = 3;
    cfg.pgferry.listen_port = 1;
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    let msgs = c.simple_query("RELOAD").await.unwrap();
    assert!(matches!(
        msgs.last(),
        Some(SimpleQueryMessage::CommandComplete(_))
    ));
    let rows = records(&c, "SHOW CONFIG").await;
    assert_eq!(value(&rows, "default_pool_size"), "3");
    assert_eq!(value(&rows, "max_client_conn"), "5000");
    assert_eq!(
        value(&rows, "listen_port"),
        "0",
        "listen_port needs a restart"
    );
    // The pool is rebuilt with the new size for new clients; the old client keeps working.
    app.simple_query("SELECT 1").await.unwrap();
    env.connect().await.simple_query("SELECT 1").await.unwrap();
    let dbs = records(&c, "SHOW DATABASES").await;
    assert_eq!(
        dbs.iter().find(|d| d["name"] == "shop").unwrap()["pool_size"],
        "3"
    );

    // An invalid file changes nothing.
    std::fs::write(&file, "[pgferry]\ndefault_pool_size = \"many\"\n").unwrap();
    assert!(error_of(&c, "RELOAD").await.starts_with("RELOAD failed"));
    assert_eq!(
        value(&records(&c, "SHOW CONFIG").await, "default_pool_size"),
        "3"
    );
    env.connect().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_20_clients_across_five_pause_resume_cycles() {
    let Some(pgbench) = pgferry::testkit::pgbench_path() else {
        eprintln!("pgbench not installed; skipped");
        return;
    };
    let env = env(PoolMode::Transaction, 4, with_admin).await;
    let pgbench_cmd = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(&pgbench);
        cmd.args(args).kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("PGPASSWORD", APP_PW).env("PGSSLMODE", "disable");
        cmd
    };
    let args = |port: u16, extra: &[&str]| {
        let mut v: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        v.extend(
            [
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "app",
                "shop",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        v
    };
    let init = pgbench_cmd(args(env.pg.port(), &["-i", "-s", "1", "-q"]))
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = pgbench_cmd(args(
        env.addr.port(),
        &["-M", "extended", "-c", "20", "-j", "2", "-T", "8", "-n"],
    ))
    .output();
    let run = tokio::spawn(run);
    let c = admin(&env).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        // (-M prepared would deadlock here, with PgBouncer too: pgbench prepares synchronously,
        // so one client waiting for a server blocks its thread's clients that hold one.)
        tokio::time::timeout(Duration::from_secs(10), c.simple_query("PAUSE shop"))
            .await
            .expect("PAUSE completes")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.simple_query("RESUME shop").await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("number of failed transactions: 0 (0.000%)"),
        "{text}"
    );
    assert!(!text.contains("aborted"), "{text}");
}
