//! Soak run (a benchmark, not a CI test): a throw-away PostgreSQL, the pgferry binary in
//! transaction mode in front of it, and 1,000 clients for a configurable time (default 10
//! minutes) doing simple and extended queries and transfer transactions, with periodic
//! cancels and reconnects. Reports unexpected errors, pgferry's RSS at start, peak and end,
//! and checks afterwards that money was conserved and no server connection was left dirty.
//!
//! ```text
//! cargo bench --bench soak                      # 10 minutes, 1,000 clients
//! cargo bench --bench soak -- --secs 60         # 1 minute
//! cargo bench --bench soak -- --secs 60 --clients 500 --pool 20
//! ```
//! Exit status 1 if any unexpected error or leak was seen.
#![allow(clippy::unwrap_used)]

use pgferry::testkit::{ClusterOptions, PasswordMethod, PgCluster};
use rand::Rng;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

const ACCOUNTS: i32 = 1000;
const START_BALANCE: i64 = 1000;

struct Options {
    secs: u64,
    clients: u32,
    pool: u32,
}

fn options() -> Options {
    let mut o = Options {
        secs: std::env::var("PGFERRY_SOAK_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
        clients: 1000,
        pool: 20,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let next = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), next) {
            ("--secs" | "--duration", Some(v)) => o.secs = v,
            ("--clients", Some(v)) => o.clients = v as u32,
            ("--pool", Some(v)) => o.pool = v as u32,
            // `cargo bench` adds `--bench`; ignore anything else.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    transfers: AtomicU64,
    cancelled: AtomicU64,
    cancel_missed: AtomicU64,
    reconnects: AtomicU64,
    unexpected: AtomicU64,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Ferry(Child);

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

/// One unit of work; Err only for what is unexpected.
async fn step(c: &Client, id: u32, k: u64, tally: &Tally) -> Result<(), String> {
    let roll = rand::rng().random_range(0..100);
    match roll {
        0..=39 => {
            let rows = c
                .simple_query(&format!("SELECT {id}, {k}"))
                .await
                .map_err(|e| e.to_string())?;
            let ok = rows.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
                    if r.get(0) == Some(id.to_string().as_str()))
            });
            if !ok {
                return Err(format!("client {id}: wrong simple result"));
            }
        }
        40..=74 => {
            let r = c
                .query_typed(
                    "SELECT $1::int4, $2::int8",
                    &[(&(id as i32), Type::INT4), (&(k as i64), Type::INT8)],
                )
                .await
                .map_err(|e| e.to_string())?;
            if r[0].get::<_, i32>(0) != id as i32 || r[0].get::<_, i64>(1) != k as i64 {
                return Err(format!("client {id}: wrong extended result"));
            }
        }
        75..=97 => {
            let (a, b, amount) = {
                let mut rng = rand::rng();
                let a = rng.random_range(1..=ACCOUNTS);
                let mut b = rng.random_range(1..ACCOUNTS);
                if b >= a {
                    b += 1;
                }
                (a.min(b), a.max(b), rng.random_range(1..=10i64))
            };
            c.batch_execute(&format!(
                "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {a}; \
                 UPDATE accounts SET balance = balance + {amount} WHERE id = {b}; COMMIT"
            ))
            .await
            .map_err(|e| format!("client {id}: transfer: {e}"))?;
            tally.transfers.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            // A cancel: the query sleeps, the cancel token interrupts it.
            let token = c.cancel_token();
            let cancel = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                token.cancel_query(NoTls).await
            });
            let r = c.simple_query("SELECT pg_sleep(1)").await;
            let _ = cancel.await;
            match r {
                Err(e) if e.code().map(|c| c.code()) == Some("57014") => {
                    tally.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                // The cancel arrived while the query still waited for a server connection.
                Ok(_) => {
                    tally.cancel_missed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(format!("client {id}: cancelled query: {e}")),
            }
        }
    }
    tally.ok.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn client_loop(url: String, id: u32, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut k = 0u64;
    let mut c: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let client = match c.take() {
            Some(c) => c,
            None => match connect(&url).await {
                Ok(c) => c,
                Err(e) => {
                    tally.unexpected.fetch_add(1, Ordering::Relaxed);
                    eprintln!("client {id}: connect: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        k += 1;
        let r = tokio::time::timeout(Duration::from_secs(60), step(&client, id, k, &tally)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tally.unexpected.fetch_add(1, Ordering::Relaxed);
                eprintln!("unexpected: {e}");
            }
            Err(_) => {
                tally.unexpected.fetch_add(1, Ordering::Relaxed);
                eprintln!("client {id}: request hung for 60 s");
            }
        }
        // Now and then a client goes away and comes back.
        let reconnect = rand::rng().random_range(0..200) == 0;
        if reconnect || client.is_closed() {
            tally.reconnects.fetch_add(1, Ordering::Relaxed);
        } else {
            c = Some(client);
        }
        let think = rand::rng().random_range(5..50);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failed = rt.block_on(run(o));
    std::process::exit(i32::from(failed));
}

async fn run(o: Options) -> bool {
    // One descriptor per client here and in pgferry.
    let want = u64::from(o.clients) * 2 + 1000;
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if soft < want {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, want.min(hard), hard);
        }
    }
    println!("soak: {} clients, pool {}, {} s", o.clients, o.pool, o.secs);
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PgCluster::start_with(ClusterOptions {
            max_connections: Some(100),
            ..ClusterOptions::default()
        })
        .expect("start PostgreSQL");
        pg.create_user("app", "app-secret", PasswordMethod::Scram)
            .unwrap();
        pg.create_database("shop", "app").unwrap();
        pg.psql(
            "shop",
            &format!(
                "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
                 INSERT INTO accounts SELECT g, {START_BALANCE} FROM generate_series(1, {ACCOUNTS}) g;
                 ALTER TABLE accounts OWNER TO app;"
            ),
        )
        .unwrap();
        pg
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let userlist = dir.path().join("userlist.txt");
    std::fs::write(
        &userlist,
        "\"app\" \"app-secret\"\n\"admin\" \"admin-secret\"\n",
    )
    .unwrap();
    let config = dir.path().join("pgferry.toml");
    std::fs::write(
        &config,
        format!(
            "[pgferry]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\nauth_file = \"{}\"\n\
             metrics_addr = \"\"\npool_mode = \"transaction\"\ndefault_pool_size = {}\n\
             max_client_conn = {}\nquery_wait_timeout = 60\nadmin_users = [\"admin\"]\n\
             [databases.shop]\nhost = \"127.0.0.1\"\nport = {}\n",
            userlist.display(),
            o.pool,
            o.clients + 100,
            pg.port()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("pgferry.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["--config", config.to_str().unwrap()])
        .env("PGFERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn pgferry");
    let ferry = Ferry(child);
    let pid = ferry.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "pgferry did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!(
        "host=127.0.0.1 port={port} user=app password=app-secret dbname=shop connect_timeout=30"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for id in 0..o.clients {
        tasks.push(tokio::spawn(client_loop(
            url.clone(),
            id,
            stop.clone(),
            tally.clone(),
        )));
    }
    // Warm-up: all clients connected and running.
    tokio::time::sleep(Duration::from_secs(5.min(o.secs))).await;
    let rss_start = rss_kb(pid);
    let mut rss_peak = rss_start;
    let end = t0 + Duration::from_secs(o.secs);
    let mut last = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kb(pid));
        if last.elapsed() >= Duration::from_secs(30) {
            last = Instant::now();
            println!(
                "  t={:>4}s ok={} transfers={} cancelled={} reconnects={} unexpected={} rss={} kB",
                t0.elapsed().as_secs(),
                tally.ok.load(Ordering::Relaxed),
                tally.transfers.load(Ordering::Relaxed),
                tally.cancelled.load(Ordering::Relaxed),
                tally.reconnects.load(Ordering::Relaxed),
                tally.unexpected.load(Ordering::Relaxed),
                rss_kb(pid)
            );
        }
    }
    let rss_end_loaded = rss_kb(pid);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(90), t).await;
    }
    let elapsed = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end_idle = rss_kb(pid);

    // Afterwards: money conserved, no dirty server connection.
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=shop",
        pg.port()
    ))
    .await
    .unwrap();
    let total: i64 = direct
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    let dirty: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
             AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let backends: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let alive = rss_kb(pid) > 0;

    let ok = tally.ok.load(Ordering::Relaxed);
    let unexpected = tally.unexpected.load(Ordering::Relaxed);
    println!("soak finished after {:.0} s", elapsed.as_secs_f64());
    println!(
        "  requests ok          {ok} ({:.0}/s)",
        ok as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  transfers            {}",
        tally.transfers.load(Ordering::Relaxed)
    );
    println!(
        "  cancels              {} took effect, {} arrived before the query reached a server",
        tally.cancelled.load(Ordering::Relaxed),
        tally.cancel_missed.load(Ordering::Relaxed)
    );
    println!(
        "  reconnects           {}",
        tally.reconnects.load(Ordering::Relaxed)
    );
    println!("  unexpected errors    {unexpected}");
    println!(
        "  pgferry RSS          start {rss_start} kB, peak {rss_peak} kB, end (loaded) {rss_end_loaded} kB, end (idle) {rss_end_idle} kB"
    );
    println!(
        "  money conserved      {} (sum {total}, expected {})",
        total == i64::from(ACCOUNTS) * START_BALANCE,
        i64::from(ACCOUNTS) * START_BALANCE
    );
    println!(
        "  backends after       {backends} (pool {}), idle in transaction {dirty}",
        o.pool
    );
    println!("  pgferry alive        {alive}");
    drop(ferry);
    drop(pg);
    unexpected > 0
        || dirty > 0
        || !alive
        || backends > i64::from(o.pool)
        || total != i64::from(ACCOUNTS) * START_BALANCE
}
