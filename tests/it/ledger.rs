#![allow(clippy::unwrap_used)]
//! No lost or misdirected data. A ledger of transfers run by many clients in transaction mode
//! while server connections are killed and cut: every transfer a client saw commit is in the
//! table, none it saw fail is, and money is conserved. And a cross-talk test: many clients
//! (simple and extended protocol, prepared statements, cancels, errors) whose results name
//! the client that asked; nobody ever receives another client's rows.

use crate::support::leaks;
use crate::support::relay;

use crate::common::*;
use leaks::Probe;
use pgferry::config::{AuthType, PoolMode};
use rand::Rng;
use relay::{Cut, Relay};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

const ACCOUNTS: i32 = 50;
const START_BALANCE: i64 = 1000;

/// What one client saw of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Committed,
    Failed,
    /// The connection was lost during COMMIT: either outcome is allowed.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    id: i64,
    from: i32,
    to: i32,
    amount: i64,
}

/// BEGIN; two UPDATEs (lower account id first, so transfers never deadlock); INSERT; COMMIT.
/// Half the clients use the simple protocol, half the extended one (unnamed statements).
async fn run_transfer(c: &Client, t: Transfer, extended: bool) -> Outcome {
    let (first, second) = if t.from < t.to {
        ((t.from, -t.amount), (t.to, t.amount))
    } else {
        ((t.to, t.amount), (t.from, -t.amount))
    };
    let body = async {
        c.batch_execute("BEGIN").await?;
        for (acct, delta) in [first, second] {
            if extended {
                c.query_typed(
                    "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                    &[(&delta, Type::INT8), (&acct, Type::INT4)],
                )
                .await?;
            } else {
                c.batch_execute(&format!(
                    "UPDATE accounts SET balance = balance + {delta} WHERE id = {acct}"
                ))
                .await?;
            }
        }
        if extended {
            c.query_typed(
                "INSERT INTO transfers (id, src, dst, amount) VALUES ($1, $2, $3, $4)",
                &[
                    (&t.id, Type::INT8),
                    (&t.from, Type::INT4),
                    (&t.to, Type::INT4),
                    (&t.amount, Type::INT8),
                ],
            )
            .await?;
        } else {
            c.batch_execute(&format!(
                "INSERT INTO transfers (id, src, dst, amount) VALUES ({}, {}, {}, {})",
                t.id, t.from, t.to, t.amount
            ))
            .await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    match body.await {
        Ok(()) => {}
        Err(_) => {
            if !c.is_closed() {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            return Outcome::Failed;
        }
    }
    match c.batch_execute("COMMIT").await {
        Ok(()) => Outcome::Committed,
        // An ordinary ERROR means PostgreSQL rolled back; anything that ends the connection
        // (FATAL, reset) leaves the outcome unknown.
        Err(e) => match e.as_db_error() {
            Some(d) if d.severity() == "ERROR" && !d.code().code().starts_with("08") => {
                Outcome::Failed
            }
            _ => Outcome::Unknown,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_under_faults_lose_nothing_and_invent_nothing() {
    const CLIENTS: i64 = 40;
    const POOL: u32 = 5;
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    pg.psql(
        "shop",
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, {START_BALANCE} FROM generate_series(1, {ACCOUNTS}) g;
             CREATE TABLE transfers (id bigint PRIMARY KEY, src int, dst int, amount bigint);
             ALTER TABLE accounts OWNER TO app;
             ALTER TABLE transfers OWNER TO app;"
        ),
    )
    .unwrap();
    let relay = Relay::to_port(pg.port()).await;
    let relay_port = relay.port();
    let env = env_with(pg, PoolMode::Transaction, POOL, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        c.pgferry.query_wait_timeout = 30.0;
        leaks::with_admin(c);
        c.databases.get_mut("shop").unwrap().port = relay_port;
    })
    .await;
    let probe = Probe::of(&env, POOL as usize);
    let url = env.url("app", "x");
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<(Transfer, Outcome)> = Vec::new();
            let mut c: Option<Client> = None;
            let mut seq = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let client = match c.take() {
                    Some(c) if !c.is_closed() => c,
                    _ => match timeout(Duration::from_secs(20), connect_url(&url)).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => panic!("client {n}: login failed: {e}"),
                        Err(_) => panic!("client {n}: login hung"),
                    },
                };
                seq += 1;
                let (from, to, amount) = {
                    let mut rng = rand::rng();
                    let from = rng.random_range(1..=ACCOUNTS);
                    let mut to = rng.random_range(1..ACCOUNTS);
                    if to >= from {
                        to += 1;
                    }
                    (from, to, rng.random_range(1..=20i64))
                };
                let t = Transfer {
                    id: n * 1_000_000 + seq,
                    from,
                    to,
                    amount,
                };
                let outcome = timeout(
                    Duration::from_secs(60),
                    run_transfer(&client, t, n % 2 == 1),
                )
                .await
                .unwrap_or_else(|_| panic!("client {n}: transfer {} hung", t.id));
                seen.push((t, outcome));
                c = Some(client);
            }
            seen
        }));
    }

    // Faults: terminate random pgferry backends, and cut every connection (RST or FIN).
    let direct = env.direct().await;
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        match round % 4 {
            0 | 2 => {
                let _ = direct
                    .batch_execute(
                        "SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity \
                         WHERE usename = 'app' ORDER BY random() LIMIT 2) s",
                    )
                    .await;
            }
            1 => relay.cut(Cut::Reset),
            _ => relay.cut(Cut::Fin),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut all: Vec<(Transfer, Outcome)> = Vec::new();
    for c in clients {
        all.extend(
            timeout(Duration::from_secs(90), c)
                .await
                .expect("clients did not stop")
                .unwrap(),
        );
    }

    let in_table: BTreeMap<i64, (i32, i32, i64)> = direct
        .query("SELECT id, src, dst, amount FROM transfers", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    let sent: BTreeSet<i64> = all.iter().map(|(t, _)| t.id).collect();
    for (t, outcome) in &all {
        let name = match outcome {
            Outcome::Committed => "Committed",
            Outcome::Failed => "Failed",
            Outcome::Unknown => "Unknown",
        };
        *counts.entry(name).or_default() += 1;
        let row = in_table.get(&t.id);
        match (outcome, row) {
            (Outcome::Committed, None) => problems.push(format!("committed {t:?} is missing")),
            (Outcome::Failed, Some(_)) => problems.push(format!("failed {t:?} is in the table")),
            _ => {}
        }
        if let Some(&(src, dst, amount)) = row {
            if (src, dst, amount) != (t.from, t.to, t.amount) {
                problems.push(format!("{t:?} stored as {src}->{dst} {amount}"));
            }
        }
    }
    for id in in_table.keys() {
        if !sent.contains(id) {
            problems.push(format!("transfer {id} in the table was never sent"));
        }
    }
    // Balances agree with the transfers table, account by account, and in total.
    let balances: BTreeMap<i32, i64> = direct
        .query("SELECT id, balance FROM accounts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected: BTreeMap<i32, i64> = (1..=ACCOUNTS).map(|a| (a, START_BALANCE)).collect();
    for &(src, dst, amount) in in_table.values() {
        *expected.get_mut(&src).unwrap() -= amount;
        *expected.get_mut(&dst).unwrap() += amount;
    }
    if balances != expected {
        problems.push(format!(
            "balances disagree with the transfers table: {:?}",
            balances
                .iter()
                .filter(|(a, b)| expected[a] != **b)
                .collect::<Vec<_>>()
        ));
    }
    let total: i64 = balances.values().sum();
    if total != i64::from(ACCOUNTS) * START_BALANCE {
        problems.push(format!("money not conserved: {total}"));
    }
    eprintln!(
        "{} transfers: {counts:?}, {} rows in the table",
        all.len(),
        in_table.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        counts.get("Committed").copied().unwrap_or(0) > 200,
        "too few transfers committed to mean anything: {counts:?}"
    );
    assert!(
        counts.get("Failed").copied().unwrap_or(0) > 0,
        "the faults hit no transfer: {counts:?}"
    );
    probe.assert_clean("after the ledger").await;
}

/// One client's view of a row that must name it.
fn expect_tag(client: u32, k: u32, got: &str) -> Result<(), String> {
    let want = format!("c{client}-k{k}");
    if got == want {
        Ok(())
    } else {
        Err(format!("client {client} asked for {want} and got {got}"))
    }
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// What one cross-talk client does on each round.
async fn cross_talk_client(
    url: String,
    direct: Arc<Client>,
    id: u32,
    rounds: u32,
) -> Result<u32, String> {
    let app_name = format!("xt{id}");
    let c = connect_url(&format!("{url} application_name={app_name}"))
        .await
        .map_err(|e| e.to_string())?;
    let named = c
        .prepare("SELECT $1::text AS tag, current_setting('application_name'), pg_sleep($2::float8 / 1000)")
        .await
        .map_err(|e| e.to_string())?;
    let mut cancels = 0;
    for k in 0..rounds {
        let tag = format!("c{id}-k{k}");
        let nap = f64::from((id * 7 + k * 13) % 20);
        match (id + k) % 6 {
            // Simple protocol.
            0 => {
                let rows = simple_rows(
                    &c.simple_query(&format!(
                        "SELECT '{tag}', current_setting('application_name'), pg_sleep({nap} / 1000)"
                    ))
                    .await
                    .map_err(|e| format!("client {id}: {e:?}"))?,
                );
                if rows.len() != 1 {
                    return Err(format!("client {id}: {} rows", rows.len()));
                }
                expect_tag(id, k, &rows[0][0])?;
                if rows[0][1] != app_name {
                    return Err(format!("client {id} saw application_name {}", rows[0][1]));
                }
            }
            // A named prepared statement, reused on whatever server the client gets.
            1 | 2 => {
                let r = c
                    .query_one(&named, &[&tag, &nap])
                    .await
                    .map_err(|e| format!("client {id}: {e:?}"))?;
                expect_tag(id, k, r.get(0))?;
                let name: &str = r.get(1);
                if name != app_name {
                    return Err(format!("client {id} saw application_name {name}"));
                }
            }
            // A transaction of several statements.
            3 => {
                c.batch_execute("BEGIN").await.map_err(|e| e.to_string())?;
                for _ in 0..3 {
                    let rows = c
                        .query_typed("SELECT $1::text", &[(&tag, Type::TEXT)])
                        .await
                        .map_err(|e| format!("client {id}: {e:?}"))?;
                    expect_tag(id, k, rows[0].get(0))?;
                }
                c.batch_execute("COMMIT").await.map_err(|e| e.to_string())?;
            }
            // An error on purpose, then a query that must still be answered for us.
            4 => {
                let e = c
                    .query_one("SELECT 1 / ($1::int - $1::int)", &[&(id as i32)])
                    .await
                    .expect_err("division by zero succeeded");
                if sqlstate(&e).as_deref() != Some("22012") {
                    return Err(format!("client {id}: wrong error {e:?}"));
                }
                let rows = c
                    .query_typed("SELECT $1::text", &[(&tag, Type::TEXT)])
                    .await
                    .map_err(|e| format!("client {id}: {e:?}"))?;
                expect_tag(id, k, rows[0].get(0))?;
            }
            // A query cancelled with the client's cancel token once it runs on a server.
            _ => {
                let token = c.cancel_token();
                let direct = direct.clone();
                let marker = format!("%-- {tag}");
                let canceller = tokio::spawn(async move {
                    // Sleeping, not just `active`: an extended-protocol query shows as active
                    // from its Parse on, and PostgreSQL drops a cancel that lands while the
                    // backend is still reading the Bind or Execute.
                    loop {
                        let n: i64 = direct
                            .query_one(
                                "SELECT count(*) FROM pg_stat_activity \
                                 WHERE state = 'active' AND wait_event = 'PgSleep' \
                                 AND query LIKE $1",
                                &[&marker],
                            )
                            .await
                            .unwrap()
                            .get(0);
                        if n > 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    token.cancel_query(tokio_postgres::NoTls).await
                });
                let r = c
                    .query_typed(
                        &format!("SELECT $1::text, pg_sleep(5) -- {tag}"),
                        &[(&tag, Type::TEXT)],
                    )
                    .await;
                canceller
                    .await
                    .unwrap()
                    .map_err(|e| format!("client {id}: cancel request failed: {e}"))?;
                match r {
                    Err(e) if sqlstate(&e).as_deref() == Some("57014") => cancels += 1,
                    Ok(_) => return Err(format!("client {id}: a cancelled query completed")),
                    Err(e) => return Err(format!("client {id}: {e:?}")),
                }
            }
        }
    }
    // Nobody else's cancel reached us: a final slow query completes.
    let r = c
        .query_typed(
            "SELECT $1::text, pg_sleep(0.2)",
            &[(&format!("c{id}-k{rounds}"), Type::TEXT)],
        )
        .await
        .map_err(|e| format!("client {id}: final query: {e:?}"))?;
    expect_tag(id, rounds, r[0].get(0))?;
    Ok(cancels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_ever_receives_another_clients_rows() {
    const CLIENTS: u32 = 40;
    let env = env(PoolMode::Transaction, 4, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        leaks::with_admin(c);
    })
    .await;
    let probe = Probe::of(&env, 4);
    let url = env.url("app", "x");
    let direct = Arc::new(env.direct().await);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(cross_talk_client(url.clone(), direct.clone(), id, 18)))
        .collect();
    let mut problems = Vec::new();
    let mut cancels = 0;
    for t in tasks {
        match timeout(Duration::from_secs(120), t)
            .await
            .expect("cross-talk clients did not finish")
            .unwrap()
        {
            Ok(n) => cancels += n,
            Err(e) => problems.push(e),
        }
    }
    eprintln!("cross-talk: {cancels} queries cancelled");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(cancels, CLIENTS * 3, "every cancel round cancels its query");
    probe.assert_clean("after cross-talk").await;
}
