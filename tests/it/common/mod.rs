//! Shared harness for the integration tests: a throwaway PostgreSQL (testkit), pgferry started
//! in-process in front of it, and helpers to connect through pgferry or directly.
#![allow(dead_code, clippy::unwrap_used)]

use pgferry::app::{self, Running};
use pgferry::config::{AuthType, Config, Database, PoolMode};
use pgferry::testkit::{ClusterOptions, PasswordMethod, PgCluster};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub const APP_PW: &str = "app-secret";
pub const MD5_PW: &str = "md5-secret";

/// A PostgreSQL cluster with pgferry in front of it.
pub struct Env {
    pub pg: PgCluster,
    pub ferry: Option<Running>,
    pub addr: SocketAddr,
    pub config: Config,
    _dir: tempfile::TempDir,
}

/// Starts PostgreSQL with roles `app` (SCRAM) and `md5user` (md5), database `shop` owned by
/// `app` holding table `items(id int primary key, name text, qty int)` with 100 rows.
pub fn cluster() -> PgCluster {
    cluster_with(ClusterOptions::default())
}

/// [`cluster`] on a cluster started with `opts` (e.g. ssl = on).
pub fn cluster_with(opts: ClusterOptions) -> PgCluster {
    let pg = PgCluster::start_with(opts).expect("start PostgreSQL");
    pg.create_user("app", APP_PW, PasswordMethod::Scram)
        .unwrap();
    pg.create_user("md5user", MD5_PW, PasswordMethod::Md5)
        .unwrap();
    pg.create_database("shop", "app").unwrap();
    pg.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
         INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 100) g;
         ALTER TABLE items OWNER TO app;
         GRANT ALL ON items TO md5user;",
    )
    .unwrap();
    pg
}

/// `pg` with one more role, `user` with an md5-stored password `pw` (a user pgferry can find
/// only through auth_query), created off the async runtime.
pub async fn with_md5_role(pg: PgCluster, user: &'static str, pw: &'static str) -> PgCluster {
    tokio::task::spawn_blocking(move || {
        pg.create_user(user, pw, PasswordMethod::Md5).unwrap();
        pg
    })
    .await
    .unwrap()
}

/// pgferry settings used by most tests: auth_file with both users, SCRAM for clients.
pub fn base_config(pg_port: u16, mode: PoolMode, pool_size: u32, dir: &std::path::Path) -> Config {
    let userlist = dir.join("userlist.txt");
    let mut f = std::fs::File::create(&userlist).unwrap();
    writeln!(f, "\"app\" \"{APP_PW}\"").unwrap();
    writeln!(
        f,
        "\"md5user\" \"{}\"",
        postgres_protocol::password::md5(MD5_PW.as_bytes(), "md5user")
    )
    .unwrap();
    let mut c = Config::default();
    c.pgferry.listen_addr = "127.0.0.1".into();
    c.pgferry.listen_port = 0;
    c.pgferry.pool_mode = mode;
    c.pgferry.default_pool_size = pool_size;
    c.pgferry.max_client_conn = 5000;
    c.pgferry.auth_type = AuthType::ScramSha256;
    c.pgferry.auth_file = Some(userlist);
    c.databases.insert(
        "shop".into(),
        Database {
            host: "127.0.0.1".into(),
            port: pg_port,
            ..Database::default()
        },
    );
    c
}

/// PostgreSQL + pgferry with the given pool mode and size; `tweak` edits the config.
pub async fn env(mode: PoolMode, pool_size: u32, tweak: impl FnOnce(&mut Config)) -> Env {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    env_with(pg, mode, pool_size, tweak).await
}

pub async fn env_with(
    pg: PgCluster,
    mode: PoolMode,
    pool_size: u32,
    tweak: impl FnOnce(&mut Config),
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(pg.port(), mode, pool_size, dir.path());
    tweak(&mut config);
    let ferry = app::start(config.clone()).await.expect("start pgferry");
    Env {
        addr: ferry.addr,
        pg,
        ferry: Some(ferry),
        config,
        _dir: dir,
    }
}

impl Env {
    /// Connection string through pgferry.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=shop connect_timeout=10",
            self.addr.port()
        )
    }

    /// A client of pgferry as `app`.
    pub async fn connect(&self) -> Client {
        self.try_connect("app", APP_PW)
            .await
            .expect("connect through pgferry")
    }

    pub async fn try_connect(&self, user: &str, pw: &str) -> Result<Client, tokio_postgres::Error> {
        connect_url(&self.url(user, pw)).await
    }

    /// A superuser connection straight to PostgreSQL (for assertions).
    pub async fn direct(&self) -> Client {
        connect_url(&format!(
            "host=127.0.0.1 port={} user=postgres dbname=shop",
            self.pg.port()
        ))
        .await
        .expect("connect to PostgreSQL")
    }

    /// Backends of `user` on PostgreSQL now.
    pub async fn backends(&self, direct: &Client, user: &str) -> i64 {
        direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&user],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub fn app(&self) -> &std::sync::Arc<pgferry::app::App> {
        &self.ferry.as_ref().unwrap().app
    }
}

/// Samples how many backends a user has on PostgreSQL every 10 ms, until stopped.
pub struct PeakWatcher {
    stop: std::sync::Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<i64>,
}

impl PeakWatcher {
    /// Stops sampling; returns the highest count seen.
    pub async fn stop(self) -> i64 {
        self.stop.notify_one();
        self.task.await.unwrap()
    }
}

impl Env {
    /// Starts a [`PeakWatcher`] for `user` over a direct superuser connection.
    pub async fn watch_backends(&self, user: &'static str) -> PeakWatcher {
        let direct = self.direct().await;
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                let n: i64 = direct
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                        &[&user],
                    )
                    .await
                    .unwrap()
                    .get(0);
                peak = peak.max(n);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stopped.notified() => return peak,
                }
            }
        });
        PeakWatcher { stop, task }
    }
}

pub async fn connect_url(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// SQLSTATE of a tokio-postgres error, if the server (or pgferry) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}

/// Polls `f` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Backends in `pg_stat_activity` matching the SQL condition `cond`.
pub async fn activity_count(direct: &Client, cond: &str) -> i64 {
    direct
        .query_one(
            &format!("SELECT count(*) FROM pg_stat_activity WHERE {cond}"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The backend process id behind `c`.
pub async fn backend_pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs `SELECT pg_sleep(secs)` on `n` new clients at once.
pub async fn sleepers(env: &Env, n: usize, secs: f64) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let c = env.connect().await;
        tasks.push(tokio::spawn(async move {
            c.simple_query(&format!("SELECT pg_sleep({secs})"))
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("sleeper failed");
    }
}

/// Column names and rows (NULL as None) of one console command.
pub async fn show(c: &Client, q: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let mut cols = Vec::new();
    let mut rows = Vec::new();
    for m in c.simple_query(q).await.unwrap() {
        match m {
            SimpleQueryMessage::RowDescription(d) => {
                cols = d.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
            _ => {}
        }
    }
    (cols, rows)
}

/// An N+1 loop in the simple protocol: a list query, then `n` lookups by id (1..=n).
pub async fn list_then_lookups(c: &Client, n: u32) {
    c.simple_query(&format!("SELECT id FROM items WHERE qty < {}", n + 1))
        .await
        .unwrap();
    for id in 1..=n {
        c.simple_query(&format!("SELECT name FROM items WHERE id = {id}"))
            .await
            .unwrap();
    }
}

/// Rows as maps column → value.
pub async fn records(c: &Client, q: &str) -> Vec<std::collections::HashMap<String, String>> {
    let (cols, rows) = show(c, q).await;
    rows.into_iter()
        .map(|r| {
            cols.iter()
                .cloned()
                .zip(r.into_iter().map(Option::unwrap_or_default))
                .collect()
        })
        .collect()
}

/// A superuser connection straight to PostgreSQL on `port` (database `shop`).
pub async fn direct_to(port: u16) -> Client {
    connect_url(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=shop connect_timeout=10"
    ))
    .await
    .expect("connect to PostgreSQL")
}

/// Ends backend `pid` with pg_terminate_backend; fails the test if there is no such backend.
pub async fn terminate_backend(direct: &Client, pid: i32) {
    let ok: bool = direct
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(ok, "pg_terminate_backend({pid}) found no backend");
}

/// The pid of a backend of `app` running a query LIKE `pattern`, waited for up to 15 s.
pub async fn running_backend(direct: &Client, pattern: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = direct
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE usename = 'app' AND state = 'active' AND query LIKE $1",
                &[&pattern],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            return r.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend of app is running {pattern}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `SELECT count(*) FROM table`.
pub async fn count_rows(c: &Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}
