#![allow(clippy::unwrap_used)]
//! Listeners and zero-downtime restarts: the Unix socket (tokio-postgres and psql), several
//! `listen_addr` addresses (IPv4, IPv6, `*`, a host name), two processes on one port with
//! `so_reuseport` under a pgbench rolling restart, and the shutdown signals (SIGTERM = SHUTDOWN
//! WAIT_FOR_CLIENTS, a second signal = immediate, the admin command on the same path).

use crate::support::process;

use crate::common::*;
use pgferry::config::PoolMode;
use process::Ferry;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::timeout;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Writes `pgferry.toml` and `userlist.txt` (`"app" "app-secret"`) into `dir`; `general` holds
/// extra `[pgferry]` lines.
fn write_config(dir: &Path, pg_port: u16, listen_addr: &str, port: u16, general: &str) -> PathBuf {
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, "\"app\" \"app-secret\"\n").unwrap();
    let path = dir.join("pgferry.toml");
    let text = format!(
        "[pgferry]\nlisten_addr = \"{listen_addr}\"\nlisten_port = {port}\n\
         auth_file = \"{}\"\nmetrics_addr = \"\"\npool_mode = \"transaction\"\n{general}\n\n\
         [databases.shop]\nhost = \"127.0.0.1\"\nport = {pg_port}\n",
        userlist.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `pgferry --config FILE` with its log in `dir`, and waits until it has bound its
/// listeners (a sibling may already answer on the same port, so connecting proves nothing).
async fn spawn(config: &Path, dir: &Path, port: u16) -> Ferry {
    let log = dir.join("pgferry.log");
    // Logs go to stderr, the report to stdout: both into the one file.
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(process::BIN)
        .args(["--config", config.to_str().unwrap()])
        .env("PGFERRY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn pgferry");
    let mut f = Ferry { child, port, log };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f.log_text().contains("pgferry listening") {
        if let Some(st) = f.child.try_wait().unwrap() {
            panic!("pgferry exited early ({st}): {}", f.log_text());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pgferry did not start: {}",
            f.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f
}

/// Client logins a pgferry process has logged so far.
fn logins(f: &Ferry) -> usize {
    f.log_text()
        .lines()
        .filter(|l| l.contains(" login ") && l.contains("db=shop"))
        .count()
}

fn url_tcp(host: &str, port: u16) -> String {
    format!("host={host} port={port} user=app password=app-secret dbname=shop connect_timeout=10")
}

async fn one(c: &Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

async fn direct(pg_port: u16) -> Client {
    connect_url(&format!(
        "host=127.0.0.1 port={pg_port} user=postgres dbname=shop connect_timeout=10"
    ))
    .await
    .unwrap()
}

async fn port_refuses(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}

/// The time left on the keepalive timer in `ss -o` output (`timer:(keepalive,119min,0)`).
fn keepalive_timer(ss: &str) -> Option<&str> {
    let rest = ss.split("timer:(keepalive,").nth(1)?;
    rest.split(',').next()
}

fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_serves_like_postgresql() {
    let sock = tempfile::tempdir().unwrap();
    let sock_dir = sock.path().display().to_string();
    let d = sock_dir.clone();
    let mut env = env(PoolMode::Transaction, 2, move |c| {
        c.pgferry.unix_socket_dir = d;
        c.pgferry.unix_socket_mode = "0770".into();
        c.pgferry.admin_users = vec!["app".into()];
    })
    .await;
    let port = env.addr.port();
    let path = sock.path().join(format!(".s.PGSQL.{port}"));
    assert_eq!(
        env.ferry.as_ref().unwrap().unix_socket.as_deref(),
        Some(path.as_path())
    );
    let meta = std::fs::metadata(&path).expect("socket file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o770);

    // tokio-postgres, as libpq does, takes a directory as host.
    let c = connect_url(&format!(
        "host={sock_dir} port={port} user=app password=app-secret dbname=shop"
    ))
    .await
    .expect("login over the Unix socket");
    assert_eq!(one(&c, "SELECT count(*) FROM items").await, "100");

    // psql -h DIR -p PORT, exactly as against PostgreSQL.
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-h", &sock_dir, "-p", &port.to_string()])
        .args(["-U", "app", "-d", "shop", "-c", "SELECT 40 + 2"])
        .env("PGPASSWORD", APP_PW)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    // SHOW CLIENTS lists the Unix-socket client as PgBouncer does: addr "unix".
    let tcp = env.connect().await;
    tcp.simple_query("SELECT 1").await.unwrap();
    let admin = connect_url(&format!(
        "host=127.0.0.1 port={port} user=app password=app-secret dbname=pgbouncer"
    ))
    .await
    .unwrap();
    let mut addrs: Vec<String> = admin
        .simple_query("SHOW CLIENTS")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("database") == Some("shop") => Some(format!(
                "{}:{}",
                r.get("addr").unwrap(),
                r.get("port").unwrap()
            )),
            _ => None,
        })
        .collect();
    addrs.sort();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].starts_with("127.0.0.1:"), "{addrs:?}");
    assert_eq!(addrs[1], format!("unix:{port}"));

    drop((c, tcp, admin));
    env.ferry.take().unwrap().shutdown().await;
    assert!(!path.exists(), "the socket file outlived pgferry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listen_addr_answers() {
    let ipv6 = has_ipv6_loopback();
    let list = if ipv6 { "127.0.0.1,::1" } else { "127.0.0.1" };
    let mut env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.listen_addr = list.into();
        c.pgferry.tcp_keepidle = 7;
    })
    .await;
    let addrs = env.ferry.as_ref().unwrap().addrs.clone();
    let port = env.addr.port();
    assert_eq!(addrs[0], SocketAddr::from(([127, 0, 0, 1], port)));
    let c = connect_url(&url_tcp("127.0.0.1", port)).await.unwrap();
    assert_eq!(one(&c, "SELECT 1").await, "1");
    // The accepted socket has TCP keepalive on, first probe after tcp_keepidle = 7 s (the OS
    // default is 2 hours): ss(8) shows the timer once no data is in flight.
    if Command::new("ss").arg("-V").output().is_ok() {
        let ok = eventually(Duration::from_secs(5), || async {
            let out = Command::new("ss")
                .args(["-tnoH", "state", "established", "sport", "="])
                .arg(format!(":{port}"))
                .output()
                .unwrap();
            // Seconds, not the default's "119min" (ss prints seconds oddly: "6.476ms").
            keepalive_timer(&String::from_utf8_lossy(&out.stdout))
                .is_some_and(|t| !t.ends_with("min"))
        })
        .await;
        assert!(
            ok,
            "no keepalive timer of at most 7 s on the accepted socket"
        );
    } else {
        eprintln!("no ss(8): keepalive on accepted sockets not checked here");
    }
    if ipv6 {
        assert_eq!(addrs.len(), 2);
        assert_eq!(
            addrs[1],
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
        );
        let c6 = connect_url(&url_tcp("::1", port))
            .await
            .expect("login over ::1");
        assert_eq!(one(&c6, "SELECT 2").await, "2");
    } else {
        eprintln!("no IPv6 loopback on this machine: ::1 not tested");
    }
    let config = env.config.clone();
    env.ferry.take().unwrap().shutdown().await;

    // `*`: every IPv4 and IPv6 address; a host name: whatever it resolves to.
    for listen in ["*", "localhost"] {
        let mut c = config.clone();
        c.pgferry.listen_addr = listen.into();
        let r = pgferry::app::start(c).await.expect(listen);
        let min = if listen == "*" && ipv6 { 2 } else { 1 };
        assert!(r.addrs.len() >= min, "{listen}: {:?}", r.addrs);
        let port = r.addr.port();
        let v4 = connect_url(&url_tcp("127.0.0.1", port)).await.unwrap();
        assert_eq!(one(&v4, "SELECT 3").await, "3");
        if ipv6 && listen == "*" {
            let v6 = connect_url(&url_tcp("::1", port)).await.unwrap();
            assert_eq!(one(&v6, "SELECT 4").await, "4");
        }
        drop(v4);
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_on_a_shared_port_loses_no_transaction() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let d = direct(pg.port()).await;
    d.batch_execute(
        "CREATE TABLE rr (id bigserial PRIMARY KEY, v int NOT NULL); ALTER TABLE rr OWNER TO app",
    )
    .await
    .unwrap();
    let port = process::free_port();
    let general = "so_reuseport = true\ndefault_pool_size = 10\nshutdown_timeout = 30";
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let conf_a = write_config(dir_a.path(), pg.port(), "127.0.0.1", port, general);
    let conf_b = write_config(dir_b.path(), pg.port(), "127.0.0.1", port, general);
    let mut a = spawn(&conf_a, dir_a.path(), port).await;

    // Without so_reuseport a second process cannot have the port, and says which address.
    let dir_c = tempfile::tempdir().unwrap();
    let conf_c = write_config(dir_c.path(), pg.port(), "127.0.0.1", port, "");
    let out = Command::new(process::BIN)
        .args(["--config", conf_c.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    // pgbench: 20 clients, a new connection for every transaction, simple protocol.
    let script = dir_a.path().join("rr.sql");
    std::fs::write(
        &script,
        "\\set v random(1, 1000000)\nBEGIN;\nINSERT INTO rr (v) VALUES (:v);\n\
         SELECT count(*) FROM rr WHERE v = :v;\nEND;\n",
    )
    .unwrap();
    let bench = Command::new("pgbench")
        .args(["-n", "-C", "-c", "20", "-j", "2", "-T", "8", "-M", "simple"])
        .args(["-f", script.to_str().unwrap(), "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", "app", "shop"])
        .env("PGPASSWORD", APP_PW)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bench = tokio::task::spawn_blocking(move || bench.wait_with_output());
    assert!(
        eventually(Duration::from_secs(5), || async { logins(&a) > 20 }).await,
        "pgbench did not reach pgferry A: {}",
        a.log_text()
    );

    // B joins on the same port: both processes serve new connections.
    let mut b = spawn(&conf_b, dir_b.path(), port).await;
    assert!(
        eventually(Duration::from_secs(5), || async { logins(&b) > 5 }).await,
        "no new connection reached B while A was running"
    );
    let a_before = logins(&a);
    assert!(
        eventually(Duration::from_secs(5), || async { logins(&a) > a_before }).await,
        "A got no new connection once B was up"
    );

    // SIGTERM A: it closes its socket, finishes with its clients and exits; B takes over.
    a.signal("TERM");
    let st = a
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("A did not exit after SIGTERM: {}", a.log_text()));
    assert!(st.success(), "A exit status {st}: {}", a.log_text());
    let b_after_a = logins(&b);
    let out = bench.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("pgbench: {stdout}\n{stderr}");
    eprintln!("logins: A {}, B {}", logins(&a), logins(&b));
    assert!(
        out.status.success(),
        "pgbench failed ({}): {stdout}\n{stderr}\nA: {}",
        out.status,
        a.log_text()
    );
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}\n{stderr}"
    );
    assert!(logins(&b) > b_after_a, "B got no connection after A left");
    let done: i64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in: {stdout}"));
    assert!(done > 40, "{stdout}");
    // Every transaction pgbench counted is in the table, and nothing else.
    let rows = one(&d, "SELECT count(*) FROM rr").await;
    assert_eq!(rows, done.to_string());

    b.signal("TERM");
    let st = b.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_clients_and_takes_no_new_ones() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().display().to_string();
    let port = process::free_port();
    let general = format!("unix_socket_dir = \"{sock}\"\nshutdown_timeout = 60");
    let config = write_config(dir.path(), pg.port(), "127.0.0.1", port, &general);
    let mut ferry = spawn(&config, dir.path(), port).await;
    let path = dir.path().join(format!(".s.PGSQL.{port}"));
    assert!(path.exists());

    let in_tx = connect_url(&url_tcp("127.0.0.1", port)).await.unwrap();
    in_tx
        .batch_execute("BEGIN; INSERT INTO items VALUES (2001, 'term a', 1)")
        .await
        .unwrap();
    // An idle client over the Unix socket: under WAIT_FOR_CLIENTS it is not closed.
    let idle = connect_url(&format!(
        "host={sock} port={port} user=app password=app-secret dbname=shop"
    ))
    .await
    .unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();

    ferry.signal("TERM");
    assert!(
        eventually(Duration::from_secs(10), || port_refuses(port)).await,
        "the TCP port still accepts after SIGTERM"
    );
    // Each listener closes in its own accept loop: the Unix one may follow the TCP one by a
    // moment.
    assert!(
        eventually(Duration::from_secs(10), || async { !path.exists() }).await,
        "the Unix socket is still there after SIGTERM"
    );

    // Both clients go on: the open transaction commits, the idle one runs new transactions.
    in_tx
        .batch_execute("INSERT INTO items VALUES (2002, 'term b', 2)")
        .await
        .expect("statement in the open transaction after SIGTERM");
    in_tx
        .batch_execute("COMMIT")
        .await
        .expect("COMMIT after SIGTERM");
    for i in 0..3 {
        assert_eq!(one(&idle, &format!("SELECT {i}")).await, i.to_string());
    }
    let d = direct(pg.port()).await;
    assert_eq!(
        one(
            &d,
            "SELECT string_agg(name, ',' ORDER BY id) FROM items WHERE id > 2000"
        )
        .await,
        "term a,term b"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ferry.child.try_wait().unwrap().is_none(),
        "pgferry exited with clients connected"
    );

    // One client leaves: still running; the last one leaves: pgferry exits by itself.
    drop(in_tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ferry.child.try_wait().unwrap().is_none());
    assert_eq!(one(&idle, "SELECT 'still here'").await, "still here");
    drop(idle);
    let st = ferry
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("pgferry did not exit: {}", ferry.log_text()));
    assert!(st.success(), "exit status {st}: {}", ferry.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_wait_for_clients_then_a_signal_exits_at_once() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let general = "admin_users = [\"app\"]\nshutdown_timeout = 600";
    let config = write_config(dir.path(), pg.port(), "127.0.0.1", port, general);
    let mut ferry = spawn(&config, dir.path(), port).await;
    let c = connect_url(&url_tcp("127.0.0.1", port)).await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO items VALUES (3001, 'admin', 1)")
        .await
        .unwrap();
    let admin = connect_url(&format!(
        "host=127.0.0.1 port={port} user=app password=app-secret dbname=pgbouncer"
    ))
    .await
    .unwrap();
    admin
        .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
        .await
        .expect("SHUTDOWN WAIT_FOR_CLIENTS");
    assert!(
        eventually(Duration::from_secs(10), || port_refuses(port)).await,
        "new connections are still accepted after SHUTDOWN WAIT_FOR_CLIENTS"
    );
    c.batch_execute("INSERT INTO items VALUES (3002, 'admin', 2)")
        .await
        .expect("the client is served after SHUTDOWN WAIT_FOR_CLIENTS");
    assert!(ferry.child.try_wait().unwrap().is_none());

    // A signal on top of a shutdown in progress means now (the bound is 600 s).
    ferry.signal("TERM");
    let st = ferry
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("second shutdown request ignored: {}", ferry.log_text()));
    assert!(st.success(), "exit status {st}: {}", ferry.log_text());
    let r = timeout(Duration::from_secs(10), c.batch_execute("COMMIT"))
        .await
        .expect("client hung after pgferry exited");
    assert!(r.is_err(), "COMMIT succeeded after pgferry exited");
    let d = direct(pg.port()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            one(&d, "SELECT count(*) FROM items WHERE id > 3000").await == "0"
        })
        .await
    );
}
