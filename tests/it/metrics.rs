#![allow(clippy::unwrap_used)]
//! Prometheus endpoint: served per instance without a global recorder, valid text format,
//! values that agree with SHOW STATS_TOTALS, histograms, login failures, bounded labels.

use crate::common::*;
use pgferry::config::{Config, PoolMode};
use std::collections::HashMap;
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::SimpleQueryMessage;

fn with_metrics(c: &mut Config) {
    c.pgferry.admin_users = vec!["admin".into()];
    c.pgferry.metrics_addr = "127.0.0.1:0".into();
    let path = c.pgferry.auth_file.clone().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\"admin\" \"admin-pw\"").unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// A sample: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses the Prometheus text format strictly enough to catch malformed output.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            assert!(name_ok(name), "{line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        assert!(name_ok(name), "{line}");
        let mut map = HashMap::new();
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap();
                assert!(name_ok(k), "{line}");
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
        }
        out.push((name.to_owned(), map, value));
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree_with_show_stats() {
    let env = env(PoolMode::Transaction, 2, with_metrics).await;
    let addr = env.app().metrics.as_ref().unwrap().local_addr().unwrap();
    let c = env.connect().await;
    for i in 0..10 {
        c.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    let _ = c.query("SELECT 1/0", &[]).await.unwrap_err();
    // tokio-postgres closes its statement in the background; this orders us after it.
    c.simple_query("SELECT 1").await.unwrap();
    assert!(env.try_connect("app", "wrong").await.is_err());
    let admin = connect_url(&format!(
        "host=127.0.0.1 port={} user=admin password=admin-pw dbname=pgbouncer",
        env.addr.port()
    ))
    .await
    .unwrap();
    let mut cols = Vec::new();
    let mut totals = HashMap::new();
    for m in admin.simple_query("SHOW STATS_TOTALS").await.unwrap() {
        match m {
            SimpleQueryMessage::RowDescription(d) => {
                cols = d.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) if r.get(0) == Some("shop") => {
                for (i, name) in cols.iter().enumerate() {
                    totals.insert(
                        name.clone(),
                        r.get(i).unwrap().parse::<f64>().unwrap_or(0.0),
                    );
                }
            }
            _ => {}
        }
    }

    // The client's state turns idle just after its ReadyForQuery was forwarded.
    let idle = [("database", "shop"), ("user", "app"), ("state", "idle")];
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            let s = parse_prometheus(&http_get(addr, "/metrics").await.1);
            value(&s, "pgferry_client_connections", &idle) == Some(1.0)
        })
        .await
    );
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain"));
    let s = parse_prometheus(&body);
    let shop = [("database", "shop"), ("user", "app")];
    for (metric, column) in [
        ("pgferry_transactions_total", "xact_count"),
        ("pgferry_queries_total", "query_count"),
        ("pgferry_received_bytes_total", "bytes_received"),
        ("pgferry_sent_bytes_total", "bytes_sent"),
        (
            "pgferry_server_assignments_total",
            "server_assignment_count",
        ),
        ("pgferry_client_logins_total", "client_login_count"),
        ("pgferry_binds_total", "bind_count"),
    ] {
        assert_eq!(value(&s, metric, &shop), Some(totals[column]), "{metric}");
    }
    assert_eq!(
        value(
            &s,
            "pgferry_errors_total",
            &[("database", "shop"), ("class", "22")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "pgferry_login_failures_total", &[]), Some(1.0));
    assert!(value(&s, "pgferry_login_attempts_total", &[]).unwrap() >= 2.0);
    assert_eq!(value(&s, "pgferry_pool_size", &shop), Some(2.0));
    assert_eq!(
        value(
            &s,
            "pgferry_client_connections",
            &[("database", "shop"), ("user", "app"), ("state", "idle")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "pgferry_waiting_clients", &shop), Some(0.0));
    assert!(
        value(
            &s,
            "pgferry_server_connections",
            &[("database", "shop"), ("state", "idle")]
        )
        .unwrap()
            >= 1.0
    );
    // Histograms: buckets, sum and count per pool.
    let count = value(&s, "pgferry_query_duration_seconds_count", &shop).unwrap();
    assert!(count >= 12.0, "{count}");
    assert!(value(
        &s,
        "pgferry_query_duration_seconds_bucket",
        &[("database", "shop"), ("le", "+Inf")]
    )
    .is_some());
    assert!(value(&s, "pgferry_transaction_duration_seconds_sum", &shop).unwrap() > 0.0);
    assert!(value(&s, "pgferry_wait_duration_seconds_count", &shop).unwrap() >= 1.0);
    // Bounded labels: only database, user and state/class/le.
    for (name, labels, _) in &s {
        for k in labels.keys() {
            assert!(
                ["database", "user", "state", "class", "le"].contains(&k.as_str()),
                "{name}: {k}"
            );
        }
    }
    assert!(http_get(addr, "/nope").await.0.starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_metrics_addr_disables_metrics_and_instances_do_not_share_a_recorder() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let port = pg.port();
    let off = env_with(pg, PoolMode::Transaction, 2, |c| {
        c.pgferry.metrics_addr = String::new()
    })
    .await;
    assert!(off.app().metrics.is_none());
    off.connect().await.simple_query("SELECT 1").await.unwrap();
    // Two instances in one process, each with its own numbers.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port, PoolMode::Transaction, 2, dir.path());
    cfg.pgferry.metrics_addr = "127.0.0.1:0".into();
    let a = pgferry::app::start(cfg.clone()).await.unwrap();
    let b = pgferry::app::start(cfg).await.unwrap();
    let url = |addr: std::net::SocketAddr| {
        format!(
            "host=127.0.0.1 port={} user=app password={APP_PW} dbname=shop",
            addr.port()
        )
    };
    let ca = connect_url(&url(a.addr)).await.unwrap();
    for _ in 0..3 {
        ca.simple_query("SELECT 1").await.unwrap();
    }
    let cb = connect_url(&url(b.addr)).await.unwrap();
    cb.simple_query("SELECT 1").await.unwrap();
    let shop = [("database", "shop"), ("user", "app")];
    let qa = parse_prometheus(
        &http_get(
            a.app.metrics.as_ref().unwrap().local_addr().unwrap(),
            "/metrics",
        )
        .await
        .1,
    );
    let qb = parse_prometheus(
        &http_get(
            b.app.metrics.as_ref().unwrap().local_addr().unwrap(),
            "/metrics",
        )
        .await
        .1,
    );
    assert_eq!(value(&qa, "pgferry_queries_total", &shop), Some(3.0));
    assert_eq!(value(&qb, "pgferry_queries_total", &shop), Some(1.0));
}
