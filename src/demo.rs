//! `pgferry demo`: a throwaway PostgreSQL, pgferry in front of it in transaction mode, and a
//! short concurrent workload (many clients, a small pool), then a report of what happened.

use crate::app;
use crate::config::{AuthType, Config, Database, PoolMode};
use crate::testkit::{PasswordMethod, PgCluster};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of the demo workload.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Concurrent client connections.
    #[arg(long, default_value_t = 300)]
    pub clients: usize,
    /// Server connections in the pool.
    #[arg(long, default_value_t = 10)]
    pub pool_size: u32,
    /// Transactions per client.
    #[arg(long, default_value_t = 20)]
    pub transactions: usize,
}

const PASSWORD: &str = "ferry-demo";
const ACCOUNTS: i32 = 1000;

#[derive(Default)]
struct Tally {
    queries: AtomicU64,
    transactions: AtomicU64,
    errors: AtomicU64,
    latency_us_total: AtomicU64,
    latency_us_max: AtomicU64,
}

/// Runs the demo end to end and prints the report.
pub async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    println!("pgferry demo: starting a throwaway PostgreSQL …");
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start()?;
        c.create_user("app", PASSWORD, PasswordMethod::Scram)?;
        c.create_database("shop", "app")?;
        c.psql(
            "shop",
            &format!(
                "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
                 INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g;
                 ALTER TABLE accounts OWNER TO app;"
            ),
        )?;
        Ok::<_, crate::testkit::TestkitError>(c)
    })
    .await??;
    let pg_port = cluster.port();

    let mut config = Config::default();
    config.pgferry.listen_port = 0;
    config.pgferry.pool_mode = PoolMode::Transaction;
    config.pgferry.default_pool_size = args.pool_size;
    config.pgferry.max_client_conn = (args.clients as u32 + 10).max(100);
    config.pgferry.auth_type = AuthType::ScramSha256;
    config.pgferry.log_connections = false;
    config.pgferry.log_disconnections = false;
    config.inline_users.insert("app".into(), PASSWORD.into());
    config.databases.insert(
        "shop".into(),
        Database {
            host: "127.0.0.1".into(),
            port: pg_port,
            ..Database::default()
        },
    );
    let running = app::start(config).await?;
    let addr = running.addr;
    println!(
        "  PostgreSQL on 127.0.0.1:{pg_port}; pgferry on {addr} (transaction pooling, pool_size {})",
        args.pool_size
    );
    println!(
        "  running {} clients × {} transactions (a read, then a transfer between two accounts) …",
        args.clients, args.transactions
    );

    let (watch_client, watch_conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg_port} user=postgres dbname=shop"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(watch_conn);
    let peak_backends = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let peak = peak_backends.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(row) = watch_client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
                        &[],
                    )
                    .await
                {
                    let n: i64 = row.get(0);
                    peak.fetch_max(n as u64, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stop.notified() => return watch_client,
                }
            }
        })
    };

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let tally = tally.clone();
        let n = args.transactions;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = one_client(addr, i, n, &tally).await {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("  client {i}: {e}");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    stop.notify_one();
    let watch_client = watcher.await?;
    let total: i64 = watch_client
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await?
        .get(0);

    let (opened, waited_total, waited_max, checkouts) =
        running
            .app
            .pools
            .iter()
            .fold((0, 0, 0, 0), |(o, w, m, c), p| {
                let s = &p.stats;
                (
                    o + s.connects.load(Ordering::Relaxed),
                    w + s.wait_us_total.load(Ordering::Relaxed),
                    m.max(s.wait_us_max.load(Ordering::Relaxed)),
                    c + s.checkouts.load(Ordering::Relaxed),
                )
            });
    let counters = &running.app.counters;
    let txs = tally.transactions.load(Ordering::Relaxed);
    let queries = tally.queries.load(Ordering::Relaxed);
    println!();
    println!("Results");
    println!(
        "  clients served              {} (peak {} connected at once)",
        counters.logins.load(Ordering::Relaxed),
        counters.peak_clients.load(Ordering::Relaxed)
    );
    println!(
        "  server connections          {opened} opened; at most {} PostgreSQL backends seen for the app",
        peak_backends.load(Ordering::Relaxed)
    );
    println!(
        "  queries / transactions      {queries} / {txs} in {:.2} s ({:.0} tx/s)",
        elapsed.as_secs_f64(),
        txs as f64 / elapsed.as_secs_f64()
    );
    let lat_avg =
        tally.latency_us_total.load(Ordering::Relaxed) as f64 / txs.max(1) as f64 / 1000.0;
    println!(
        "  transaction latency         avg {lat_avg:.2} ms, max {:.2} ms",
        tally.latency_us_max.load(Ordering::Relaxed) as f64 / 1000.0
    );
    println!(
        "  waiting for a server        {checkouts} checkouts, avg {:.3} ms, max {:.2} ms",
        waited_total as f64 / checkouts.max(1) as f64 / 1000.0,
        waited_max as f64 / 1000.0
    );
    println!(
        "  errors                      {}",
        tally.errors.load(Ordering::Relaxed)
    );
    let expected = i64::from(ACCOUNTS) * 1000;
    println!(
        "  money conserved             {} (sum of balances {total}, expected {expected})",
        if total == expected { "yes" } else { "NO" }
    );
    running.shutdown().await;
    drop(watch_client);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    println!("  cleaned up: pgferry stopped, throwaway PostgreSQL removed");
    if tally.errors.load(Ordering::Relaxed) > 0 || total != expected {
        return Err("the workload saw errors".into());
    }
    Ok(())
}

async fn one_client(
    addr: std::net::SocketAddr,
    i: usize,
    n: usize,
    tally: &Tally,
) -> Result<(), tokio_postgres::Error> {
    let (mut client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=app password={PASSWORD} dbname=shop application_name=demo-{i}",
            addr.ip(),
            addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    let read = client
        .prepare("SELECT balance FROM accounts WHERE id = $1")
        .await?;
    for k in 0..n {
        let t0 = Instant::now();
        let a = ((i * 7919 + k * 104_729) % ACCOUNTS as usize) as i32 + 1;
        let b = (a % ACCOUNTS) + 1;
        let _: i64 = client.query_one(&read, &[&a]).await?.get(0);
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE accounts SET balance = balance - 1 WHERE id = $1",
            &[&a],
        )
        .await?;
        tx.execute(
            "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
            &[&b],
        )
        .await?;
        tx.commit().await?;
        let us = t0.elapsed().as_micros() as u64;
        tally.latency_us_total.fetch_add(us, Ordering::Relaxed);
        tally.latency_us_max.fetch_max(us, Ordering::Relaxed);
        tally.queries.fetch_add(3, Ordering::Relaxed);
        tally.transactions.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
