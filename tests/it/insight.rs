#![allow(clippy::unwrap_used)]
//! Query insight through a real proxy: N+1 bursts and duplicates attributed to the right
//! client in transaction mode, simple and extended protocol, the opt-in NOTICE, statistics.

use crate::common::*;
use futures_util::StreamExt;
use pgferry::config::PoolMode;
use pgferry::insight::PatternKind;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

fn events_of(env: &Env, kind: PatternKind) -> Vec<pgferry::insight::PatternEvent> {
    env.app()
        .insight
        .events()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_query_then_fifty_lookups_is_one_n_plus_one_event() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let c = env.connect().await;
    // Simple protocol: literals inline.
    list_then_lookups(&c, 50).await;
    c.simple_query("SELECT count(*) FROM items").await.unwrap();
    let ev = events_of(&env, PatternKind::NPlusOne);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    let e = &ev[0];
    assert_eq!(e.count, 50);
    assert_eq!(e.distinct_params, 50);
    assert!(
        e.statement.contains("from items where id ="),
        "{}",
        e.statement
    );
    assert!(
        e.source.as_deref().unwrap_or("").contains("qty <"),
        "{:?}",
        e.source
    );
    assert_eq!(&*e.database, "shop");
    assert_eq!(&*e.user, "app");
    assert!(
        e.suggestion.as_deref().unwrap_or("").contains("any("),
        "{:?}",
        e.suggestion
    );
    // Statistics saw every execution of the shape.
    let q = env.app().insight.query_summaries();
    let lookup = q
        .iter()
        .find(|s| s.query.contains("from items where id ="))
        .unwrap();
    assert_eq!(lookup.calls, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_lookups_are_detected_and_identical_ones_are_duplicates() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let c = env.connect().await;
    let by_id = c
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=30i32 {
        c.query_one(&by_id, &[&id]).await.unwrap();
    }
    let other = c
        .prepare("SELECT qty FROM items WHERE id = $1")
        .await
        .unwrap();
    for _ in 0..30 {
        c.query_one(&other, &[&7i32]).await.unwrap();
    }
    c.simple_query("SELECT 1").await.unwrap();
    let n1 = events_of(&env, PatternKind::NPlusOne);
    assert_eq!(n1.len(), 1, "{n1:#?}");
    assert_eq!(n1[0].count, 30);
    let dup = events_of(&env, PatternKind::Duplicate);
    assert_eq!(dup.len(), 1, "{dup:#?}");
    assert!(
        dup[0].statement.contains("select qty"),
        "{}",
        dup[0].statement
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_clients_on_one_server_are_each_attributed() {
    // One server connection: the two clients' statements run on the same backend.
    let env = env(PoolMode::Transaction, 1, |_| {}).await;
    let a = env.connect().await;
    let b = env.connect().await;
    for id in 1..=20 {
        a.simple_query(&format!("SELECT name FROM items WHERE id = {id}"))
            .await
            .unwrap();
        b.simple_query(&format!("SELECT qty FROM items WHERE id = {id}"))
            .await
            .unwrap();
    }
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    let ev = events_of(&env, PatternKind::NPlusOne);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    let name_ev = ev
        .iter()
        .find(|e| e.statement.contains("select name"))
        .unwrap();
    let qty_ev = ev
        .iter()
        .find(|e| e.statement.contains("select qty"))
        .unwrap();
    assert_ne!(
        name_ev.client_addr, qty_ev.client_addr,
        "both events attributed to one client"
    );
    assert!(ev.iter().all(|e| e.count == 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_spread_beyond_the_window_are_not_a_burst() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.n_plus_one_window = 0.2
    })
    .await;
    let c = env.connect().await;
    for id in 1..=15 {
        c.simple_query(&format!("SELECT name FROM items WHERE id = {id}"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    c.simple_query("SELECT 1").await.unwrap();
    assert!(events_of(&env, PatternKind::NPlusOne).is_empty());
}

async fn collect_notices(env: &Env) -> Vec<String> {
    let (client, mut conn) = tokio_postgres::connect(&env.url("app", APP_PW), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let AsyncMessage::Notice(n) = m {
                let _ = tx.send(format!(
                    "{} {} {}",
                    n.severity(),
                    n.code().code(),
                    n.message()
                ));
            }
        }
    });
    for id in 1..=12 {
        client
            .simple_query(&format!("SELECT name FROM items WHERE id = {id}"))
            .await
            .unwrap();
    }
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let mut out = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        out.push(n);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_reaches_the_client_only_when_enabled() {
    let on = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.n_plus_one_notice = true
    })
    .await;
    let notices = collect_notices(&on).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].starts_with("WARNING 01000"), "{notices:?}");
    assert!(notices[0].contains("N+1"), "{notices:?}");
    let off = env_with(
        tokio::task::spawn_blocking(cluster).await.unwrap(),
        PoolMode::Transaction,
        2,
        |_| {},
    )
    .await;
    assert!(collect_notices(&off).await.is_empty());
    assert_eq!(
        events_of(&off, PatternKind::NPlusOne).len(),
        1,
        "detection stays on without notices"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_statements_pass_through_and_are_counted() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    let c = env.connect().await;
    // PostgreSQL-only syntax that a generic SQL parser may reject.
    for _ in 0..3 {
        c.simple_query("SELECT 1 OPERATOR(pg_catalog.+) 2")
            .await
            .unwrap();
        c.batch_execute("LISTEN pgferry_channel; UNLISTEN pgferry_channel")
            .await
            .unwrap();
    }
    let q = env.app().insight.query_summaries();
    assert!(
        q.iter()
            .any(|s| s.calls == 3 && s.query.contains("operator")),
        "{q:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_and_metrics_show_queries_and_bursts() {
    use std::io::Write;
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.admin_users = vec!["admin".into()];
        c.pgferry.metrics_addr = "127.0.0.1:0".into();
        let path = c.pgferry.auth_file.clone().unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "\"admin\" \"admin-pw\"").unwrap();
    })
    .await;
    let c = env.connect().await;
    list_then_lookups(&c, 50).await;
    c.simple_query("SELECT 1").await.unwrap();
    let console = connect_url(&format!(
        "host=127.0.0.1 port={} user=admin password=admin-pw dbname=pgbouncer",
        env.addr.port()
    ))
    .await
    .unwrap();
    let rows =
        |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<tokio_postgres::SimpleQueryRow> {
            msgs.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                })
                .collect()
        };
    let q = rows(console.simple_query("SHOW QUERIES").await.unwrap());
    let lookup = q
        .iter()
        .find(|r| {
            r.get("query")
                .unwrap_or("")
                .contains("from items where id =")
        })
        .expect("lookup shape listed in SHOW QUERIES");
    assert_eq!(lookup.get("calls"), Some("50"));
    let n1 = rows(console.simple_query("SHOW N_PLUS_ONE;").await.unwrap());
    assert_eq!(n1.len(), 1);
    assert_eq!(n1[0].get("count"), Some("50"));
    let totals = rows(
        console
            .simple_query("show n_plus_one_totals")
            .await
            .unwrap(),
    );
    assert_eq!(totals.len(), 1);

    // Prometheus counter for the burst, labelled by database and user.
    let addr = env
        .app()
        .metrics
        .as_ref()
        .and_then(|m| m.local_addr())
        .expect("metrics listener");
    let body = http_get(addr).await;
    let line = body
        .lines()
        .find(|l| l.starts_with("pgferry_n_plus_one_bursts_total{"))
        .unwrap_or_else(|| panic!("no burst counter in:\n{body}"));
    assert!(
        line.contains("database=\"shop\"") && line.contains("user=\"app\""),
        "{line}"
    );
    assert!(line.ends_with(" 1"), "{line}");
}

async fn http_get(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
