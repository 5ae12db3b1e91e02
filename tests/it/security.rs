#![allow(clippy::unwrap_used)]
//! Security properties an operator relies on: no password or secret in any log line (at the
//! most verbose level), metrics bound to loopback unless configured otherwise, and failed
//! logins visible in metrics. (The console refusing non-admin users is in tests/admin.rs.)

use crate::support::process;

use crate::common::*;
use pgferry::config::{AuthType, Config, PoolMode};
use process::Ferry;
use std::io::Write;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Secrets that must never be logged.
const CLIENT_PW: &str = "app-secret";
const WRONG_PWS: [&str; 3] = ["wrong-Zq9x", "Hunter2-nope", "md5wrong-77"];
const NEW_ROLE_PW: &str = "role-secret-4u";

fn log_env() -> [(&'static str, &'static str); 2] {
    [("PGFERRY_LOG", "trace"), ("RUST_LOG", "debug")]
}

/// Every secret found in `log`, with the line it is on.
fn leaked(log: &str, secrets: &[String]) -> Vec<String> {
    log.lines()
        .flat_map(|l| {
            secrets
                .iter()
                .filter(move |s| l.contains(s.as_str()))
                .map(move |s| format!("{s:?} in: {l}"))
        })
        .collect()
}

fn all_secrets(md5_secret: &str) -> Vec<String> {
    let mut secrets: Vec<String> = [CLIENT_PW, MD5_PW, NEW_ROLE_PW, md5_secret]
        .iter()
        .chain(WRONG_PWS.iter())
        .map(|s| s.to_string())
        .collect();
    // The md5 hash without its prefix, too.
    secrets.push(md5_secret.trim_start_matches("md5").to_owned());
    secrets
}

/// Logs in right and wrong, runs statements that carry secrets and uses the admin console,
/// through a pgferry on `port`.
async fn exercise(port: u16, md5_logins: bool) {
    let url = |user: &str, pw: &str| {
        format!(
            "host=127.0.0.1 port={port} user={user} password={pw} dbname=shop connect_timeout=10"
        )
    };
    let c = connect_url(&url("app", CLIENT_PW)).await.unwrap();
    c.query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap();
    if md5_logins {
        let m = connect_url(&url("md5user", MD5_PW)).await.unwrap();
        m.query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap();
    }
    // A secret as a bind parameter (never part of the statement text).
    let _ = c
        .query_one("SELECT $1::text", &[&NEW_ROLE_PW])
        .await
        .unwrap();
    if let Ok(admin) = connect_url(&format!(
        "host=127.0.0.1 port={port} user=app password={CLIENT_PW} dbname=pgbouncer"
    ))
    .await
    {
        for q in ["SHOW CONFIG", "SHOW USERS", "SHOW CLIENTS", "SHOW SERVERS"] {
            admin.simple_query(q).await.unwrap();
        }
    }
    // Wrong passwords, for both users and for an unknown user.
    for (user, pw) in [
        ("app", WRONG_PWS[0]),
        ("md5user", WRONG_PWS[1]),
        ("nobody", WRONG_PWS[2]),
    ] {
        let e = connect_url(&url(user, pw)).await.err().unwrap();
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{user}: {e:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_secret_in_any_log_line() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let md5_secret = postgres_protocol::password::md5(MD5_PW.as_bytes(), "md5user");
    let secrets = all_secrets(&md5_secret);
    // Client-facing SCRAM and md5; the auth_file holds a plain password and an md5 secret.
    for auth in ["scram-sha-256", "md5"] {
        let dir = tempfile::tempdir().unwrap();
        let port = process::free_port();
        let config = process::write_config(
            dir.path(),
            pg.port(),
            port,
            &format!(
                "pool_mode = \"transaction\"\nauth_type = \"{auth}\"\nlog_connections = true\n\
                 log_disconnections = true\nadmin_users = [\"app\"]"
            ),
            "",
        );
        {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("userlist.txt"))
                .unwrap();
            writeln!(f, "\"md5user\" \"{md5_secret}\"").unwrap();
        }
        let ferry = Ferry::spawn_env(
            &["--config", config.to_str().unwrap()],
            port,
            dir.path(),
            &log_env(),
        )
        .await;
        exercise(port, auth == "md5").await;
        let log = ferry.log_text();
        assert!(
            log.contains("login failed") && log.contains("TRACE") || log.contains("DEBUG"),
            "the log shows no failed login or no debug lines; wrong log level? {log}"
        );
        let found = leaked(&log, &secrets);
        assert!(
            found.is_empty(),
            "secrets in the log ({auth}):\n{}",
            found.join("\n")
        );
    }

    // The --upstream URL carries the server password: it must not be echoed either.
    let port = process::free_port();
    let upstream = format!("postgres://app:{CLIENT_PW}@127.0.0.1:{}/shop", pg.port());
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let ferry = Ferry::spawn_env(
        &["--upstream", &upstream, "--listen", &listen],
        port,
        dir.path(),
        &log_env(),
    )
    .await;
    exercise(port, false).await;
    let found = leaked(&ferry.log_text(), &secrets);
    assert!(
        found.is_empty(),
        "secrets in the log with --upstream:\n{}",
        found.join("\n")
    );
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_text_with_a_password_literal_is_not_logged_at_debug() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let config = process::write_config(
        dir.path(),
        pg.port(),
        port,
        "pool_mode = \"transaction\"",
        "",
    );
    let ferry = Ferry::spawn_env(
        &["--config", config.to_str().unwrap()],
        port,
        dir.path(),
        &[("PGFERRY_LOG", "debug")],
    )
    .await;
    let c = connect_url(&ferry.url()).await.unwrap();
    // What an operator runs to rotate a password, through the pooler (app may not alter
    // md5user: PostgreSQL refuses, but the text has passed through pgferry either way).
    let e = c
        .batch_execute(&format!("ALTER ROLE md5user PASSWORD '{NEW_ROLE_PW}'"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let found = leaked(&ferry.log_text(), &[NEW_ROLE_PW.to_owned()]);
    assert!(
        found.is_empty(),
        "a password literal in SQL text reached the debug log:\n{}",
        found.join("\n")
    );
    drop(pg);
}

/// The addresses (ip:port) on which process `pid` has listening TCP sockets.
fn listening_sockets(pid: u32) -> Vec<std::net::SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st ... inode (field 9)
            if f.len() < 10 || f[3] != "0A" || !inodes.iter().any(|i| i == f[9]) {
                continue;
            }
            let (ip_hex, port_hex) = f[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port_hex, 16).unwrap();
            let ip: std::net::IpAddr = if v6 {
                let mut b = [0u8; 16];
                for (i, chunk) in b.chunks_mut(4).enumerate() {
                    let w = u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16).unwrap();
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
                std::net::Ipv6Addr::from(b).into()
            } else {
                let w = u32::from_str_radix(ip_hex, 16).unwrap();
                std::net::Ipv4Addr::from(w.to_le_bytes()).into()
            };
            out.push(std::net::SocketAddr::new(ip, port));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_on_loopback_unless_configured() {
    // The default, and a configuration file that does not mention metrics_addr.
    let default: std::net::SocketAddr = Config::default().pgferry.metrics_addr.parse().unwrap();
    assert!(default.ip().is_loopback(), "default metrics_addr {default}");
    let parsed = Config::parse_str(
        "[pgferry]\nlisten_port = 6432\nauth_type = \"trust\"\n\
         [databases.shop]\nhost = \"127.0.0.1\"\n",
        None,
    )
    .unwrap();
    assert_eq!(parsed.pgferry.metrics_addr, default.to_string());

    // A running pgferry whose file leaves metrics_addr out listens on loopback only.
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let userlist = dir.path().join("userlist.txt");
    std::fs::write(&userlist, "\"app\" \"app-secret\"\n").unwrap();
    let config = dir.path().join("pgferry.toml");
    std::fs::write(
        &config,
        format!(
            "[pgferry]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\nauth_file = \"{}\"\n\
             [databases.shop]\nhost = \"127.0.0.1\"\nport = {}\n",
            userlist.display(),
            pg.port()
        ),
    )
    .unwrap();
    let ferry = Ferry::with_config(&config, port, dir.path()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let log = ferry.log_text();
            log.contains("metrics at") || log.contains("cannot listen for metrics")
        })
        .await,
        "no word about metrics in the log: {}",
        ferry.log_text()
    );
    let log = ferry.log_text();
    if log.contains("metrics at") {
        let sockets = listening_sockets(ferry.pid());
        assert!(
            sockets.iter().any(|a| a.port() == default.port()),
            "no listener on the metrics port: {sockets:?}"
        );
        assert!(
            sockets.iter().all(|a| a.ip().is_loopback()),
            "pgferry listens beyond loopback: {sockets:?}"
        );
        // And it answers there.
        let mut s = tokio::net::TcpStream::connect(default).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        timeout(Duration::from_secs(10), s.read_to_string(&mut body))
            .await
            .unwrap()
            .unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("pgferry_login_failures_total"), "{body}");
    } else {
        // Port taken on this machine: the attempt itself shows the loopback default.
        assert!(log.contains(&default.to_string()), "{log}");
        eprintln!("metrics port {default} busy here; checked the address from the log only");
    }
    drop(pg);
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the scrape:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_counted_in_metrics() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.metrics_addr = "127.0.0.1:0".into();
        c.pgferry.auth_type = AuthType::ScramSha256;
    })
    .await;
    let addr = env.app().metrics.as_ref().unwrap().local_addr().unwrap();
    let before = scrape(addr).await;
    let (f0, a0) = (
        sample(&before, "pgferry_login_failures_total"),
        sample(&before, "pgferry_login_attempts_total"),
    );
    // Wrong SCRAM password, wrong md5 user password, unknown user, unknown database.
    for (user, pw, db, code) in [
        ("app", "nope", "shop", "28P01"),
        ("md5user", "nope", "shop", "28P01"),
        ("ghost", "nope", "shop", "28P01"),
        ("app", APP_PW, "nosuchdb", "3D000"),
    ] {
        let e = connect_url(&format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname={db}",
            env.addr.port()
        ))
        .await
        .err()
        .unwrap();
        assert_eq!(sqlstate(&e).as_deref(), Some(code), "{user}/{db}: {e:?}");
    }
    // And a good one.
    let _a = env.connect().await;
    let after = scrape(addr).await;
    assert_eq!(
        sample(&after, "pgferry_login_failures_total") - f0,
        4.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "pgferry_login_attempts_total") - a0,
        5.0,
        "{after}"
    );
    assert!(!after.contains("nope") && !after.contains(APP_PW));
}
