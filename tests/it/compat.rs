#![allow(clippy::unwrap_used)]
//! Settings carried over from PgBouncer: per-database connect_query and startup parameters,
//! the login and queueing notices, and the process-level pidfile / logfile / warnings.

use crate::support::process;

use crate::common::*;
use futures_util::StreamExt;
use pgferry::config::PoolMode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A client whose NOTICE messages are collected.
async fn connect_with_notices(url: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let AsyncMessage::Notice(n) = m {
                sink.lock().unwrap().push(n.message().to_owned());
            }
        }
    });
    (client, notices)
}

async fn show(c: &Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_settings_and_notices_reach_clients() {
    let env = env(PoolMode::Transaction, 1, |c| {
        let db = c.databases.get_mut("shop").unwrap();
        db.connect_query = Some("SET myapp.tag = 'from-connect-query'".into());
        db.timezone = Some("Asia/Tokyo".into());
        db.datestyle = Some("SQL, DMY".into());
        c.pgferry.login_notify_message = "you are talking to pgferry".into();
        c.pgferry.query_wait_notify = 1.0;
    })
    .await;
    let url = env.url("app", APP_PW);
    let (a, a_notices) = connect_with_notices(&url).await;
    // The server connection ran connect_query before the client got it, and was opened with
    // the database's startup parameters.
    assert_eq!(
        show(&a, "SELECT current_setting('myapp.tag')").await,
        "from-connect-query"
    );
    assert_eq!(show(&a, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(show(&a, "SHOW DateStyle").await, "SQL, DMY");
    assert_eq!(
        a_notices.lock().unwrap().as_slice(),
        ["you are talking to pgferry"],
        "login_notify_message arrives once, after login"
    );

    // The only server is held in a transaction: the next client waits and, after
    // query_wait_notify, is told why.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let (b, b_notices) = connect_with_notices(&url).await;
    let waiter = tokio::spawn(async move {
        let v = show(&b, "SELECT 'done'").await;
        (b, v)
    });
    let queued = "No server connection available in postgres backend, client being queued";
    assert!(
        eventually(Duration::from_secs(10), || {
            let n = b_notices.clone();
            async move { n.lock().unwrap().iter().any(|m| m == queued) }
        })
        .await,
        "no queueing notice: {:?}",
        b_notices.lock().unwrap()
    );
    a.batch_execute("COMMIT").await.unwrap();
    let (_b, v) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, "done");
    let n = b_notices.lock().unwrap().clone();
    assert_eq!(
        n.iter().filter(|m| *m == queued).count(),
        1,
        "one notice per wait: {n:?}"
    );

    // A connect_query that fails: the login fails cleanly and no server connection of the
    // failing pool stays open on PostgreSQL.
    let mut cfg = env.config.clone();
    cfg.pgferry.login_notify_message.clear();
    let db = cfg.databases.get_mut("shop").unwrap();
    db.connect_query = Some("SELECT * FROM no_such_table".into());
    db.timezone = None;
    db.datestyle = None;
    // Its own host name, so marking the host down does not touch the first instance.
    db.host = "localhost".into();
    let broken = pgferry::app::start(cfg).await.unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=app password={APP_PW} dbname=shop connect_timeout=10",
        broken.addr.port()
    );
    let Err(err) = connect_url(&url).await else {
        panic!("login must fail")
    };
    assert!(
        err.to_string().contains("connect_query") || format!("{err:?}").contains("connect_query"),
        "{err:?}"
    );
    let direct = env.direct().await;
    let leftover: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
             AND query LIKE '%no_such_table%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        eventually(Duration::from_secs(5), || {
            let d = &direct;
            async move {
                let n: i64 = d
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                         AND query LIKE '%no_such_table%'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                n == 0
            }
        })
        .await,
        "a connection whose connect_query failed stayed open ({leftover} at first)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pidfile_logfile_and_ineffective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let pidfile = dir.path().join("pgferry.pid");
    let logfile = dir.path().join("ferry-file.log");
    // No PostgreSQL needed: pgferry opens server connections only for clients.
    let general = format!(
        "pidfile = \"{}\"\nlogfile = \"{}\"\npkt_buf = 4096\nsbuf_loopcnt = 5\n",
        pidfile.display(),
        logfile.display()
    );
    let config = process::write_config(dir.path(), 1, port, &general, "");
    let mut first = process::Ferry::with_config(&config, port, dir.path()).await;
    let written = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(written.trim(), first.pid().to_string());
    let warning = "setting pkt_buf has no effect in pgferry";
    assert!(first.log_text().contains(warning), "{}", first.log_text());
    assert!(first
        .log_text()
        .contains("setting sbuf_loopcnt has no effect"));
    let file_text = std::fs::read_to_string(&logfile).unwrap();
    assert!(file_text.contains(warning), "logfile: {file_text}");

    // A second start with the same pidfile is refused while the first runs.
    let other_port = process::free_port();
    let dir2 = tempfile::tempdir().unwrap();
    let general2 = format!("pidfile = \"{}\"\n", pidfile.display());
    let config2 = process::write_config(dir2.path(), 1, other_port, &general2, "");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(process::BIN)
            .args(["--config", config2.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is still running"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        first.pid().to_string(),
        "the refused start left the pidfile alone"
    );

    first.signal("TERM");
    let st = first.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(st.success(), "{st}");
    assert!(!pidfile.exists(), "pidfile removed at clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_what_pgferry_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    for (general, words) in [
        ("client_tls_protocols = \"tlsv1.0\"", "TLS 1.2 and 1.3"),
        (
            "auth_hba_file = \"/etc/pgbouncer/hba.conf\"",
            "auth_hba_file",
        ),
    ] {
        let config = process::write_config(dir.path(), 1, 1, general, "");
        let out = std::process::Command::new(process::BIN)
            .args(["check-config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{general} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(words), "{general}: {stderr}");
    }
}
