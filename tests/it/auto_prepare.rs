#![allow(clippy::unwrap_used)]
//! `auto_prepare`: simple-protocol statements with integer literals run as server-side
//! prepared statements, and the client cannot tell except by speed.

use crate::common::*;
use pgferry::config::PoolMode;
use tokio_postgres::{Client, SimpleQueryMessage};

/// What a client sees of a simple query: column names, rows as text, command tags.
async fn answer(c: &Client, q: &str) -> Result<Vec<String>, String> {
    let msgs = c.simple_query(q).await.map_err(|e| {
        let db = e.as_db_error().unwrap();
        format!("{} {} {:?}", db.code().code(), db.message(), db.position())
    })?;
    let mut out = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                out.push(cols.iter().map(|c| c.name()).collect::<Vec<_>>().join("|"));
            }
            SimpleQueryMessage::Row(r) => out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL"))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            SimpleQueryMessage::CommandComplete(n) => out.push(format!("complete {n}")),
            _ => {}
        }
    }
    Ok(out)
}

async fn prepared_statements(c: &Client) -> Vec<String> {
    let rows = c
        .simple_query("SELECT statement FROM pg_prepared_statements ORDER BY statement")
        .await
        .unwrap();
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// One server, `auto_prepare` on, trust authentication (for the raw-protocol client).
async fn trust_env() -> Env {
    env(PoolMode::Transaction, 1, |c| {
        c.pgferry.auth_type = pgferry::config::AuthType::Trust;
        c.pgferry.auto_prepare = true;
    })
    .await
}

async fn table(env: &Env) -> Client {
    let direct = env.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE ap (id bigint PRIMARY KEY, s smallint, n numeric, t text);
             INSERT INTO ap SELECT g, g % 3, g / 2, 'row ' || (g % 4) FROM generate_series(1, 20) g;
             GRANT ALL ON ap TO app;",
        )
        .await
        .unwrap();
    direct
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_run_prepared_and_answer_as_before() {
    let env = env(PoolMode::Transaction, 1, |c| c.pgferry.auto_prepare = true).await;
    let direct = table(&env).await;
    let c = env.connect().await;
    // Each twice: the second run uses the statement already prepared on the server.
    let queries = [
        "SELECT id, s, t FROM ap WHERE id = 3",
        "SELECT id, s, t FROM ap WHERE id = 999999",
        // int2 + int4 is int4: a parameter typed like the literal keeps the result type.
        "SELECT s + 1 AS x, pg_typeof(s + 1), pg_typeof(id = 4) FROM ap WHERE id = 4",
        // Output-column positions stay positions.
        "SELECT id FROM ap WHERE id IN (1, 2, 5) ORDER BY 1 DESC",
        "SELECT t, id % 3, id FROM ap WHERE id > 0 ORDER BY 2 DESC, 3 LIMIT 5",
        "SELECT id FROM ap WHERE n = 2 ORDER BY id",
        "SELECT id, id * 3 - -2 FROM ap WHERE id BETWEEN 2 AND 7 ORDER BY id OFFSET 1 LIMIT 4",
        "select id from ap where s = 1 and id < 10 order by id desc;",
    ];
    // Grouped expressions must equal the select list's: left to the simple protocol.
    let grouped = [
        "SELECT id / 10 AS b, count(*) FROM ap WHERE id > 0 GROUP BY id / 10 ORDER BY 1",
        "SELECT DISTINCT id % 4 FROM ap WHERE id < 9 ORDER BY id % 4",
    ];
    for q in grouped {
        assert_eq!(answer(&c, q).await, answer(&direct, q).await, "{q}");
    }
    for q in queries {
        let want = answer(&direct, q).await;
        assert_eq!(answer(&c, q).await, want, "{q}");
        assert_eq!(answer(&c, q).await, want, "{q} (again)");
        let other = q.replace("= 3", "= 7").replace("= 4", "= 9");
        assert_eq!(
            answer(&c, &other).await,
            answer(&direct, &other).await,
            "{other}"
        );
    }
    // Rows of VALUES take parameters too.
    let insert = "INSERT INTO ap (id, s, n) VALUES (100, 1, 5), (101, -2, 6)";
    assert_eq!(answer(&c, insert).await, Ok(vec!["complete 2".to_string()]));
    assert_eq!(
        answer(
            &direct,
            "SELECT id, s, n FROM ap WHERE id >= 100 ORDER BY id"
        )
        .await,
        Ok(["id|s|n", "100|1|5", "101|-2|6", "complete 2"]
            .map(String::from)
            .to_vec())
    );
    // Writes report their row counts like simple queries.
    let want_update = vec!["complete 2".to_string()];
    assert_eq!(
        answer(&c, "UPDATE ap SET s = s + 10 WHERE id IN (1, 2)").await,
        Ok(want_update)
    );
    assert_eq!(
        answer(&direct, "SELECT s FROM ap WHERE id <= 2 ORDER BY id").await,
        Ok(vec![
            "s".into(),
            "11".into(),
            "12".into(),
            "complete 2".into()
        ])
    );
    // The server (pool size 1: the one the client used) holds the statements, parameterized.
    let held = prepared_statements(&c).await;
    assert!(
        held.contains(&"SELECT id, s, t FROM ap WHERE id = $1".to_string()),
        "{held:?}"
    );
    assert!(
        held.contains(&"SELECT id FROM ap WHERE id IN ($1, $2, $3) ORDER BY 1 DESC".to_string()),
        "{held:?}"
    );
    assert!(
        held.iter().all(|s| !s.contains("'")),
        "no text with a string literal is prepared: {held:?}"
    );
    // 8 statements three times each, the INSERT and the UPDATE, as
    // pgferry_auto_prepared_total counts.
    let auto: u64 = env
        .app()
        .all_pools()
        .iter()
        .map(|p| {
            p.stats
                .auto_prepared
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(auto, 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_and_set_turns_it_on() {
    let env = env(PoolMode::Transaction, 1, |_| {}).await;
    table(&env).await;
    let c = env.connect().await;
    c.simple_query("SELECT id FROM ap WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(prepared_statements(&c).await, Vec::<String>::new());
    // SET (as on the admin console) turns it on for a client already connected.
    env.app().set_setting("auto_prepare", "1").unwrap();
    c.simple_query("SELECT id FROM ap WHERE id = 4")
        .await
        .unwrap();
    assert_eq!(
        prepared_statements(&c).await,
        vec!["SELECT id FROM ap WHERE id = $1".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_point_into_the_clients_text_and_transactions_behave() {
    let env = env(PoolMode::Transaction, 1, |c| c.pgferry.auto_prepare = true).await;
    let direct = table(&env).await;
    let c = env.connect().await;
    // The position is where the client's text has the unknown column, not where the
    // shorter `$1` text has it.
    let q = "SELECT id FROM ap WHERE id = 123456 AND nosuch = 7890";
    let want = answer(&direct, q).await;
    assert!(want.as_ref().unwrap_err().starts_with("42703"), "{want:?}");
    assert_eq!(answer(&c, q).await, want);
    assert_eq!(answer(&c, q).await, want);
    // A value that does not fit its column fails the same way.
    let q = "INSERT INTO ap (id, s) VALUES (200, 100000)";
    let want = answer(&direct, q).await;
    assert!(want.as_ref().unwrap_err().starts_with("22003"), "{want:?}");
    assert_eq!(answer(&c, q).await, want);
    // An error while executing (division by zero) aborts the transaction as usual.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE ap SET t = 'changed' WHERE id = 5")
        .await
        .unwrap();
    let e = c
        .simple_query("SELECT id FROM ap WHERE id = 1 / 0")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
    let e = c
        .simple_query("SELECT id FROM ap WHERE id = 6")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"));
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(
        answer(&c, "SELECT t FROM ap WHERE id = 5").await,
        Ok(vec!["t".into(), "row 1".into(), "complete 1".into()])
    );
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE ap SET s = 99 WHERE id = 6")
        .await
        .unwrap();
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        answer(&direct, "SELECT s FROM ap WHERE id = 6").await,
        Ok(vec!["s".into(), "99".into(), "complete 1".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_few_servers_each_gets_its_own_values() {
    // Three servers, two statements kept per server: statements are evicted and prepared
    // again while 30 clients share them.
    let env = env(PoolMode::Transaction, 3, |c| {
        c.pgferry.auto_prepare = true;
        c.pgferry.max_prepared_statements = 2;
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..30i64 {
        let url = env.url("app", APP_PW);
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            for k in 0..30i64 {
                let id = (i * 31 + k) % 100 + 1;
                let q = match k % 3 {
                    0 => format!("SELECT qty FROM items WHERE id = {id}"),
                    1 => format!("SELECT qty + 0 FROM items WHERE id = {id} AND qty > 0"),
                    _ => format!("SELECT qty FROM items WHERE id IN ({id}, 0)"),
                };
                let got = answer(&c, &q).await.unwrap();
                assert_eq!(got[1], id.to_string(), "{q}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_are_prepared_once_per_server() {
    use crate::support::raw::*;
    let env = trust_env().await;
    let mut r = Raw::ready(env.addr).await;
    let by_id = "SELECT qty FROM items WHERE id = $1";
    for id in ["7", "8"] {
        let mut b = parse("", by_id);
        b.extend(bind_execute("", &[Some(id)]));
        b.extend(sync());
        let msgs = r.roundtrip(&b).await;
        assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
        assert_eq!(first_column(&msgs), [id]);
    }
    // The unnamed statement outlives its transaction, as on a direct connection.
    let mut b = bind_execute("", &[Some("9")]);
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(first_column(&msgs), ["9"], "{msgs:?}");
    // The server holds it under a pgferry name.
    let msgs = r
        .roundtrip(&query(
            "SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'pgf%'",
        ))
        .await;
    assert_eq!(first_column(&msgs).len(), 1, "{msgs:?}");
    let rows: Vec<_> = msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.data_row())
        .collect();
    assert_eq!(rows[0][1].as_deref(), Some(by_id), "{rows:?}");
    // A simple query destroys the unnamed statement.
    let mut b = bind_execute("", &[Some("9")]);
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(errors(&msgs)[0].0, "26000", "{msgs:?}");
    // A driver's typed query (tokio-postgres query_typed: unnamed Parse, Bind, Execute).
    let c = env.connect().await;
    let row = c
        .query_typed_one(by_id, &[(&11i32, tokio_postgres::types::Type::INT4)])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_table_runs_the_query_again_or_errs_once_in_a_transaction() {
    use crate::support::raw::{errors, first_column, query, Raw};
    let env = trust_env().await;
    let direct = table(&env).await;
    let c = env.connect().await;
    let q = "SELECT * FROM ap WHERE id = 2";
    assert_eq!(answer(&c, q).await.unwrap()[0], "id|s|n|t");
    direct
        .batch_execute("ALTER TABLE ap ADD COLUMN extra int DEFAULT 7")
        .await
        .unwrap();
    // The server refuses the statement prepared for the old columns. Outside a transaction
    // the failed attempt did nothing, and pgferry runs the client's text instead: the client
    // sees the new columns and no error, as without auto_prepare.
    let want = answer(&direct, q).await.unwrap();
    assert_eq!(want[0], "id|s|n|t|extra");
    assert_eq!(answer(&c, q).await, Ok(want.clone()));
    // The statement is prepared again from the new definition.
    assert_eq!(answer(&c, q).await, Ok(want.clone()));
    assert_eq!(answer(&c, q).await, Ok(want));
    // Query insight counts what the client saw: four calls, no error.
    let summaries = env.app().insight.query_summaries();
    let ap = summaries
        .iter()
        .find(|s| s.query.contains("from ap where id ="))
        .unwrap_or_else(|| panic!("{summaries:?}"));
    assert_eq!((ap.calls, ap.errors), (4, 0), "{ap:?}");
    // Inside a transaction block the error stands (it aborted the transaction, as it would
    // with a driver's own prepared statement); the next transaction has the new columns.
    direct
        .batch_execute("ALTER TABLE ap ADD COLUMN later int DEFAULT 9")
        .await
        .unwrap();
    c.simple_query("BEGIN").await.unwrap();
    let failed = answer(&c, q).await;
    assert!(
        failed.as_ref().is_err_and(|e| e.starts_with("0A000")),
        "{failed:?}"
    );
    c.simple_query("ROLLBACK").await.unwrap();
    let want = answer(&direct, q).await.unwrap();
    assert_eq!(want[0], "id|s|n|t|extra|later");
    assert_eq!(answer(&c, q).await, Ok(want));
    // A client's own named statement: after the error, preparing it again works (before,
    // pgferry kept handing out the server's stale statement for the same text).
    let by_id = "SELECT * FROM ap WHERE id = $1";
    let named = c.prepare(by_id).await.unwrap();
    assert_eq!(c.query_one(&named, &[&2i64]).await.unwrap().len(), 6);
    direct
        .batch_execute("ALTER TABLE ap ADD COLUMN more int DEFAULT 8")
        .await
        .unwrap();
    let e = c.query(&named, &[&2i64]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
    c.simple_query("SELECT 'x'").await.unwrap();
    let again = c.prepare(by_id).await.unwrap();
    let row = c.query_one(&again, &[&2i64]).await.unwrap();
    assert_eq!(row.len(), 7);
    assert_eq!(row.get::<_, Option<i32>>("more"), Some(8));
    // Pipelined ahead of another query the refused one is not run again (it would then run
    // after it): the client gets the error, then the next query's answer, in order.
    c.simple_query("SELECT 'x'").await.unwrap();
    assert_eq!(answer(&c, q).await.unwrap()[0], "id|s|n|t|extra|later|more");
    direct
        .batch_execute("ALTER TABLE ap ADD COLUMN piped int")
        .await
        .unwrap();
    let mut r = Raw::ready(env.addr).await;
    let mut b = query(q);
    b.extend(query("SELECT 'next'"));
    r.send(&b).await;
    let refused = r.until_ready().await;
    assert_eq!(errors(&refused)[0].0, "0A000", "{refused:?}");
    assert_eq!(first_column(&r.until_ready().await), ["next"]);
    assert_eq!(r.simple(q).await, [Some("2".to_string())]);
}

/// A statement as a client runs it: its text, sent with every execution (unnamed Parse,
/// Bind, Execute: what most drivers send), or a named statement it prepared earlier.
enum Run<'a> {
    Text(&'a str),
    /// The text, inside a transaction block (rolled back).
    TextInTx(&'a str),
    Named(&'a tokio_postgres::Statement),
}

/// What `c` gets for `run`: the server's pid and the column count, or the SQLSTATE.
async fn run_on(c: &Client, run: &Run<'_>) -> Result<(i32, usize), String> {
    let id = tokio_postgres::types::Type::INT8;
    let rows = match run {
        Run::Text(q) => c.query_typed(q, &[(&2i64, id)]).await,
        Run::TextInTx(q) => {
            c.batch_execute("BEGIN").await.unwrap();
            let rows = c.query_typed(q, &[(&2i64, id)]).await;
            c.batch_execute("ROLLBACK").await.unwrap();
            rows
        }
        Run::Named(st) => c.query(*st, &[&2i64]).await,
    };
    match rows {
        Ok(rows) => Ok((rows[0].get("pid"), rows[0].len())),
        Err(e) => Err(sqlstate(&e).unwrap_or_default()),
    }
}

/// Runs `run` on each connection of a two-server pool: `h` keeps one in a transaction while
/// `a` runs it on the other; then `b` keeps that one while `c` runs it on the first.
async fn on_both([h, a, b, c]: [&Client; 4], run: &Run<'_>) -> [Result<usize, String>; 2] {
    h.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let first = run_on(a, run).await;
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    h.batch_execute("COMMIT").await.unwrap();
    let second = run_on(c, run).await;
    b.batch_execute("COMMIT").await.unwrap();
    if let (Ok((p1, _)), Ok((p2, _))) = (&first, &second) {
        assert_ne!(p1, p2, "both ran on one server");
    }
    [first.map(|r| r.1), second.map(|r| r.1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_refreshes_the_statements_of_every_server() {
    let env = env(PoolMode::Transaction, 2, |c| c.pgferry.auto_prepare = true).await;
    let direct = table(&env).await;
    direct
        .batch_execute("ALTER TABLE ap OWNER TO app")
        .await
        .unwrap();
    let (h, x, y) = (
        env.connect().await,
        env.connect().await,
        env.connect().await,
    );
    let q = "SELECT *, pg_backend_pid() AS pid FROM ap WHERE id = $1";
    let text = Run::Text(q);
    let by_text = [&h, &x, &x, &y];
    assert_eq!(on_both(by_text, &text).await, [Ok(5), Ok(5)]);
    // Changed behind pgferry's back: the first server to run the statement refuses it; the
    // refused attempt did nothing, so pgferry prepares the statement anew and sends the
    // client's Bind, Describe, Execute and Sync again (the client saw the error before).
    direct
        .batch_execute("ALTER TABLE ap ADD COLUMN extra int DEFAULT 7")
        .await
        .unwrap();
    assert_eq!(on_both(by_text, &text).await, [Ok(6), Ok(6)]);
    assert_eq!(on_both(by_text, &text).await, [Ok(6), Ok(6)]);
    // In a transaction block the refusal stands (it aborted the transaction), but it tells
    // pgferry the schema changed: the other server deallocates its statements before its
    // next transaction (before, each server refused the statement once).
    direct
        .batch_execute("ALTER TABLE ap ADD COLUMN again int DEFAULT 8")
        .await
        .unwrap();
    let [refused, fresh] = on_both(by_text, &Run::TextInTx(q)).await;
    assert_eq!(refused, Err("0A000".to_owned()));
    assert_eq!(fresh, Ok(7));
    assert_eq!(on_both(by_text, &text).await, [Ok(7), Ok(7)]);
    // A statement `y` prepared, on both servers.
    let st = y.prepare(q).await.unwrap();
    let named = Run::Named(&st);
    let by_y = [&h, &y, &x, &y];
    assert_eq!(on_both(by_y, &named).await, [Ok(7), Ok(7)]);
    // Changed through pgferry (here in a transaction block): no server runs a statement
    // prepared for the old columns for a client that sends the text, and no such client sees
    // an error.
    x.batch_execute("BEGIN; ALTER TABLE ap ADD COLUMN later int DEFAULT 9; COMMIT")
        .await
        .unwrap();
    assert_eq!(on_both(by_text, &text).await, [Ok(8), Ok(8)]);
    // A client's own named statement is refused, as on a direct connection: its driver
    // learns the columns changed (it would otherwise read rows of eight columns with the
    // description of seven).
    let stale = Err("0A000".to_owned());
    assert_eq!(on_both(by_y, &named).await, [stale.clone(), stale]);
    let st = y.prepare(q).await.unwrap();
    assert_eq!(on_both(by_y, &Run::Named(&st)).await, [Ok(8), Ok(8)]);
}
