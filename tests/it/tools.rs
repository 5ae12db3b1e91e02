//! Real PostgreSQL client programs through pgferry: pgbench (simple, extended and prepared
//! protocol, 50 clients, transaction mode) and psql (COPY via \copy, multi-statement scripts).

use crate::common::*;
use pgferry::config::PoolMode;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// Runs a client program with a clean libpq environment, failing the test after `limit`.
async fn run(program: &Path, args: &[&str], limit: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGPASSWORD", APP_PW)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable");
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish in {limit:?}", program.display()))
        .expect("run client program")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_50_clients_simple_extended_prepared() {
    let pgbench = pgferry::testkit::pgbench_path().expect("pgbench installed");
    // `shopwide`: the same database through a pool as large as pgbench's client count.
    let env = env(PoolMode::Transaction, 8, |c| {
        let mut wide = c.databases["shop"].clone();
        wide.dbname = Some("shop".into());
        wide.pool_size = Some(50);
        c.databases.insert("shopwide".into(), wide);
    })
    .await;
    let pg_port = env.pg.port().to_string();
    let init = run(
        &pgbench,
        &[
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port,
            "-U",
            "app",
            "shop",
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(init.status.success(), "pgbench -i: {}", text(&init));

    let port = env.addr.port().to_string();
    let direct = env.direct().await;
    // pgbench -M prepared runs PQprepare synchronously the first time each client uses a
    // command, blocking its whole thread. With 25 clients per thread and only 8 servers, the
    // 9th client's Parse waits for a server that only the blocked thread's open transactions
    // could free: a client-side deadlock any transaction pooler has (PgBouncer too). So the
    // prepared run on the 8-server pool uses one thread per client, and the -j 2 prepared run
    // uses the 50-server pool.
    let runs = [
        ("simple", "2", "shop"),
        ("extended", "2", "shop"),
        ("prepared", "50", "shop"),
        ("prepared", "2", "shopwide"),
    ];
    for (k, (mode, threads, db)) in runs.into_iter().enumerate() {
        let out = run(
            &pgbench,
            &[
                "-M",
                mode,
                "-c",
                "50",
                "-j",
                threads,
                "-t",
                "50",
                "-n",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                db,
            ],
            Duration::from_secs(300),
        )
        .await;
        let t = text(&out);
        let what = format!("pgbench -M {mode} -j {threads} {db}");
        assert!(out.status.success(), "{what}: {t}");
        assert!(
            t.contains("number of transactions actually processed: 2500/2500"),
            "{what}: {t}"
        );
        assert!(
            t.contains("number of failed transactions: 0 (0.000%)"),
            "{what}: {t}"
        );
        // Every transaction really ran once, and the TPC-B invariants hold.
        let history: i64 = direct
            .query_one("SELECT count(*) FROM pgbench_history", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(history, 2500 * (k as i64 + 1), "after {what}");
        let row = direct
            .query_one(
                "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint,
                        (SELECT sum(bbalance) FROM pgbench_branches)::bigint,
                        (SELECT sum(tbalance) FROM pgbench_tellers)::bigint,
                        (SELECT sum(delta) FROM pgbench_history)::bigint",
                &[],
            )
            .await
            .unwrap();
        let sums: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "balances diverge: {sums:?}"
        );
        if db == "shop" {
            assert!(env.backends(&direct, "app").await <= 8, "after {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_and_scripts() {
    let psql = pgferry::testkit::psql_path().expect("psql installed");
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let csv_in = dir.path().join("in.csv");
    let csv_out = dir.path().join("out.csv");
    let mut data = String::new();
    for i in 1..=5000 {
        data.push_str(&format!("{i},\"row, {i}\"\n"));
    }
    std::fs::write(&csv_in, &data).unwrap();
    let port = env.addr.port().to_string();
    let base = [
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "app",
        "-d",
        "shop",
    ];
    let copy_in = format!("\\copy copied FROM '{}' CSV", csv_in.display());
    let copy_out = format!(
        "\\copy (SELECT * FROM copied WHERE n % 1000 = 0 ORDER BY n) TO '{}' CSV",
        csv_out.display()
    );
    let mut args: Vec<&str> = base.to_vec();
    args.extend([
        "-c",
        "CREATE TABLE copied (n int PRIMARY KEY, label text)",
        "-c",
        &copy_in,
        "-c",
        &copy_out,
        "-c",
        "SELECT count(*), sum(n), max(label) FROM copied",
    ]);
    let out = run(&psql, &args, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l == "5000|12502500|row, 999"),
        "{}",
        text(&out)
    );
    let exported = std::fs::read_to_string(&csv_out).unwrap();
    assert_eq!(
        exported,
        "1000,\"row, 1000\"\n2000,\"row, 2000\"\n3000,\"row, 3000\"\n4000,\"row, 4000\"\n5000,\"row, 5000\"\n"
    );

    // A multi-statement script: a committed and a rolled-back transaction, one string with
    // several statements, and a failing statement that must stop psql with an error.
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        "BEGIN;\n\
         UPDATE items SET qty = 0 WHERE id <= 10;\n\
         SAVEPOINT sp; UPDATE items SET qty = -1; ROLLBACK TO sp;\n\
         COMMIT;\n\
         BEGIN;\nDELETE FROM items;\nROLLBACK;\n\
         SELECT count(*) FILTER (WHERE qty = 0), count(*) FROM items;\n",
    )
    .unwrap();
    let mut args: Vec<&str> = base.to_vec();
    let script_path = script.display().to_string();
    args.extend(["-f", &script_path]);
    let out = run(&psql, &args, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10|100",
        "{}",
        text(&out)
    );

    let mut args: Vec<&str> = base.to_vec();
    args.extend(["-c", "SELECT 1; SELECT nope; SELECT 3"]);
    let out = run(&psql, &args, Duration::from_secs(60)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("column \"nope\" does not exist"),
        "{}",
        text(&out)
    );
    // pgferry still serves after psql's error.
    let c = env.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM copied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5000);
}
