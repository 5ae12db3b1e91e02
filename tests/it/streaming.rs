#![allow(clippy::unwrap_used)]
//! Bulk data through pgferry: COPY in both directions (and failed COPY), and a large result
//! streamed without pgferry buffering it.

use crate::support::process;

use crate::common::*;
use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use pgferry::config::PoolMode;
use std::time::Duration;
use tokio::time::timeout;

const ROWS: usize = 100_000;

/// The COPY text of the test rows, in chunks of 1,000 rows.
fn copy_chunks() -> Vec<Bytes> {
    (0..ROWS / 1000)
        .map(|c| {
            let mut s = String::new();
            for id in c * 1000 + 1..=(c + 1) * 1000 {
                s.push_str(&format!("{id}\tpayload number {id}\n"));
            }
            Bytes::from(s)
        })
        .collect()
}

/// With pool_size 1, another client can only run a query if the first one's server
/// connection went back to the pool in a clean state.
async fn other_client_gets_the_server(env: &Env) {
    let other = env.connect().await;
    let n: i64 = timeout(
        Duration::from_secs(15),
        other.query_one("SELECT count(*) FROM items", &[]),
    )
    .await
    .expect("the server connection was not given back after COPY")
    .unwrap()
    .get(0);
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_100k_rows() {
    let env = env(PoolMode::Transaction, 1, |_| {}).await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE big (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();

    let chunks = copy_chunks();
    let sink = c
        .copy_in::<_, Bytes>("COPY big (id, payload) FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    for chunk in &chunks {
        sink.send(chunk.clone()).await.unwrap();
    }
    let n = timeout(Duration::from_secs(60), sink.finish())
        .await
        .expect("COPY FROM STDIN hung")
        .unwrap();
    assert_eq!(n, ROWS as u64);
    assert_eq!(count_rows(&c, "big").await, ROWS as i64);
    let direct = env.direct().await;
    assert_eq!(count_rows(&direct, "big").await, ROWS as i64);
    other_client_gets_the_server(&env).await;

    let stream = c
        .copy_out("COPY (SELECT id, payload FROM big ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let got: Vec<Bytes> = timeout(Duration::from_secs(60), stream.try_collect())
        .await
        .expect("COPY TO STDOUT hung")
        .unwrap();
    let got: Vec<u8> = got.concat();
    let sent: Vec<u8> = chunks.concat();
    assert_eq!(got.len(), sent.len(), "COPY TO STDOUT byte count");
    assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), ROWS);
    assert!(
        got == sent,
        "COPY TO STDOUT returned other data than was copied in"
    );
    // The session and the pool are fine afterwards.
    assert_eq!(count_rows(&c, "items").await, 100);
    other_client_gets_the_server(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copy_inserts_nothing_and_keeps_the_session() {
    let env = env(PoolMode::Transaction, 1, |_| {}).await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE target (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let chunks = copy_chunks();
    let direct = env.direct().await;

    // CopyFail: the sink is dropped half-way.
    {
        let sink = c
            .copy_in::<_, Bytes>("COPY target FROM STDIN")
            .await
            .unwrap();
        pin_mut!(sink);
        for chunk in &chunks[..50] {
            sink.send(chunk.clone()).await.unwrap();
        }
    }
    let n = timeout(
        Duration::from_secs(15),
        c.query_one("SELECT count(*) FROM target", &[]),
    )
    .await
    .expect("session hung after CopyFail")
    .expect("session unusable after CopyFail")
    .get::<_, i64>(0);
    assert_eq!(n, 0);
    assert_eq!(count_rows(&direct, "target").await, 0);
    other_client_gets_the_server(&env).await;

    // Bad data: the server rejects the COPY.
    let sink = c
        .copy_in::<_, Bytes>("COPY target FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    let mut sent = Ok(());
    for chunk in &chunks[..20] {
        sent = sink.send(chunk.clone()).await;
        if sent.is_err() {
            break;
        }
    }
    if sent.is_ok() {
        sent = sink
            .send(Bytes::from_static(b"not-a-number\tbad row\n"))
            .await;
    }
    let r = match sent {
        Ok(()) => timeout(Duration::from_secs(15), sink.finish())
            .await
            .expect("COPY with bad data hung"),
        Err(e) => Err(e),
    };
    let e = r.expect_err("COPY with bad data succeeded");
    assert_eq!(sqlstate(&e).as_deref(), Some("22P02"), "{e:?}");
    assert_eq!(count_rows(&c, "target").await, 0);
    assert_eq!(count_rows(&direct, "target").await, 0);
    other_client_gets_the_server(&env).await;

    // Inside a transaction a failed COPY aborts the transaction, as on PostgreSQL.
    c.batch_execute("BEGIN; INSERT INTO target VALUES (0, 'before')")
        .await
        .unwrap();
    let sink = c
        .copy_in::<_, Bytes>("COPY target FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    let r = async {
        sink.send(Bytes::from_static(b"1\tok\nx\tbad\n")).await?;
        sink.finish().await
    };
    assert!(timeout(Duration::from_secs(15), r).await.unwrap().is_err());
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"));
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count_rows(&c, "target").await, 0);

    // A good COPY on the same session works.
    let sink = c
        .copy_in::<_, Bytes>("COPY target FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(chunks[0].clone()).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1000);
    assert_eq!(count_rows(&direct, "target").await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_result_streams_without_growing_pgferry_memory() {
    const ROWS: u64 = 200_000;
    const WIDTH: u64 = 1000;
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let config = process::write_config(
        dir.path(),
        pg.port(),
        port,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 2",
        "",
    );
    let ferry = process::Ferry::with_config(&config, port, dir.path()).await;
    let c = connect_url(&ferry.url()).await.unwrap();
    // Warm up: a login, a server connection and a small query.
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let before = ferry.rss_kb();

    let pid = ferry.pid();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut max = process::rss_kb(pid);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    max = max.max(process::rss_kb(pid));
                }
                _ = &mut stop_rx => return max.max(process::rss_kb(pid)),
            }
        }
    });

    let consume = async {
        let rows = c
            .query_raw(
                "SELECT repeat('x', 1000) FROM generate_series(1, 200000)",
                Vec::<i32>::new(),
            )
            .await
            .unwrap();
        pin_mut!(rows);
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(row) = rows.next().await {
            let row = row.unwrap();
            let v: &str = row.get(0);
            bytes += v.len() as u64;
            n += 1;
        }
        (n, bytes)
    };
    let (n, bytes) = timeout(Duration::from_secs(300), consume)
        .await
        .expect("large result did not arrive");
    stop_tx.send(()).unwrap();
    let max = sampler.await.unwrap();
    assert_eq!(n, ROWS);
    assert_eq!(bytes, ROWS * WIDTH);
    let growth_mb = max.saturating_sub(before) / 1024;
    assert!(
        growth_mb < 50,
        "pgferry's RSS grew by {growth_mb} MB (from {before} kB to {max} kB) while relaying a \
         200 MB result"
    );
    // Still serving afterwards.
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    drop(pg);
}
