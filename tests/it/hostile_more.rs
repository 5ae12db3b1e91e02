#![allow(clippy::unwrap_used)]
//! More hostile clients (tests/hostile.rs and tests/protocol_raw.rs have the basics): ten
//! thousand connections at once, a crowd of slowloris logins (startup and password phase),
//! non-UTF-8 names and query text, and wrong message types during authentication and COPY.
//! Each offender gets an error and a close; everyone else keeps being served.

use crate::support::leaks;
use crate::support::process;
use crate::support::raw;

use crate::common::*;
use leaks::Probe;
use pgferry::config::PoolMode;
use raw::{errors, msg, query, startup_packet, Raw, Read};
use std::time::{Duration, Instant};
use tokio::time::timeout;

/// Raises this process's open-file limit (children inherit it) so that it can hold `want`
/// descriptors; returns the limit obtained.
fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap();
    if soft >= want {
        return soft;
    }
    // Root may raise the hard limit too; otherwise go as far as the hard limit allows.
    if rlimit::setrlimit(Resource::NOFILE, want, want.max(hard)).is_ok() {
        return want;
    }
    let _ = rlimit::setrlimit(Resource::NOFILE, hard, hard);
    rlimit::getrlimit(Resource::NOFILE).unwrap().0
}

/// `SHOW LISTS` as a map.
async fn lists(admin: &tokio_postgres::Client) -> std::collections::HashMap<String, i64> {
    leaks::console_rows(admin, "SHOW LISTS")
        .await
        .into_iter()
        .map(|r| (r["list"].clone(), r["items"].parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_at_once() {
    const WANT: usize = 10_000;
    // Both this process and pgferry hold one descriptor per connection.
    let limit = raise_nofile(WANT as u64 + 2_000) as usize;
    let n = WANT.min(limit.saturating_sub(1_000));
    if n < WANT {
        eprintln!("open-file limit {limit}: opening {n} connections instead of {WANT}");
    }
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let config = process::write_config(
        dir.path(),
        pg.port(),
        port,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 4\n\
         max_client_conn = 20000\nclient_login_timeout = 30\nadmin_users = [\"admin\"]",
        "",
    );
    leaks::add_admin_to_userlist(&dir.path().join("userlist.txt"));
    let ferry = process::Ferry::with_config(&config, port, dir.path()).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let probe = Probe {
        ferry_port: port,
        pg_port: pg.port(),
        pool_size: 4,
    };
    let rss_before = ferry.rss_kb();

    // All at once; every other one also sends its startup packet and logs in.
    let t = Instant::now();
    let startup = startup_packet(3, 0, &[("user", "app"), ("database", "shop")]);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let startup = startup.clone();
            tokio::spawn(async move {
                let mut s = timeout(
                    Duration::from_secs(60),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .ok()?
                .ok()?;
                if i % 2 == 0 {
                    use tokio::io::AsyncWriteExt;
                    s.write_all(&startup).await.ok()?;
                }
                Some(s)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    for task in tasks {
        if let Some(s) = task.await.unwrap() {
            held.push(s);
        }
    }
    let opened = t.elapsed();
    assert_eq!(held.len(), n, "some connections were never accepted");

    // pgferry is up and a normal client is served while all of them are open.
    let t = Instant::now();
    let c = timeout(Duration::from_secs(30), connect_url(&ferry.url()))
        .await
        .expect("a normal login hung behind 10,000 connections")
        .expect("a normal login failed behind 10,000 connections");
    let v: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 100);
    let served = t.elapsed();
    let admin = connect_url(&probe.admin_url()).await.unwrap();
    // Every connection that sent its startup is logged in. (Silent ones the kernel completed
    // with SYN cookies while the accept queue overflowed may never reach pgferry at all.)
    let logged_in = |l: &std::collections::HashMap<String, i64>| {
        (l["used_clients"] - l["login_clients"]) as usize
    };
    assert!(
        eventually(Duration::from_secs(60), || async {
            logged_in(&lists(&admin).await) >= n / 2 + 2
        })
        .await,
        "not every client that sent a startup packet got in: {:?}",
        lists(&admin).await
    );
    let l = lists(&admin).await;
    let rss_full = ferry.rss_kb();
    eprintln!(
        "{n} connections opened in {opened:?}; a normal client served in {served:?}; \
         pgferry holds {} ({} logged in); RSS {rss_before} kB -> {rss_full} kB",
        l["used_clients"],
        logged_in(&l)
    );

    drop(held);
    // Closed connections are noticed and forgotten. A handful that the kernel completed while
    // the accept queue overflowed can stay in the login phase until client_login_timeout
    // (30 s here) disposes of them, so the wait covers that bound.
    assert!(
        eventually(Duration::from_secs(75), || async {
            lists(&admin).await["used_clients"] <= 2
        })
        .await,
        "closed connections are still counted: {:?}",
        lists(&admin).await
    );
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    drop(c);
    probe.assert_clean("after 10,000 connections").await;
    assert!(ferry.child.id() > 0);
    drop(pg);
}

/// Sends `bytes` one at a time every `every`; returns the index of the byte at which pgferry
/// was seen to close the connection (None if all were sent and it stayed open), checking that
/// nothing but an 08P01 error came back.
async fn trickle(r: &mut Raw, bytes: &[u8], every: Duration) -> Option<usize> {
    for (i, b) in bytes.iter().enumerate() {
        if r.try_send(&[*b]).await.is_err() {
            return Some(i);
        }
        match r.read_within(every).await {
            Read::Timeout => {}
            Read::Eof => return Some(i),
            Read::Msg(m) => {
                assert_eq!(m.tag, b'E', "only an error may come: {m:?}");
                assert_eq!(m.sqlstate().as_deref(), Some("08P01"), "{m:?}");
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_slowloris_logins_is_cut_off_by_client_login_timeout() {
    const LOGIN_TIMEOUT: f64 = 1.0;
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.client_login_timeout = LOGIN_TIMEOUT;
        leaks::with_admin(c);
    })
    .await;
    let probe = Probe::of(&env, 2);
    let addr = env.addr;
    let startup = startup_packet(3, 0, &[("user", "app"), ("database", "shop")]);
    let mut loris = Vec::new();
    for i in 0..300 {
        let startup = startup.clone();
        loris.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut r = Raw::connect(addr).await;
            let closed_at = if i % 2 == 0 {
                // Byte by byte through the startup packet.
                trickle(&mut r, &startup, Duration::from_millis(300)).await
            } else {
                // A whole startup, then the SCRAM first message byte by byte.
                r.send(&startup).await;
                let m = r.expect_msg().await;
                assert_eq!(m.tag, b'R', "{m:?}");
                assert_eq!(&m.body[..4], &10i32.to_be_bytes(), "SASL expected: {m:?}");
                let mut body = b"SCRAM-SHA-256\0".to_vec();
                let first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
                body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                body.extend_from_slice(first);
                trickle(&mut r, &msg(b'p', &body), Duration::from_millis(300)).await
            };
            (i, closed_at, t.elapsed())
        }));
    }
    // Meanwhile normal clients log in (SCRAM) and are served.
    for _ in 0..10 {
        let t = Instant::now();
        let c = timeout(Duration::from_secs(10), env.connect())
            .await
            .expect("a normal login hung behind the slowloris crowd");
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for l in loris {
        let (i, closed_at, took) = timeout(Duration::from_secs(60), l)
            .await
            .expect("slowloris task hung")
            .unwrap();
        assert!(
            closed_at.is_some(),
            "slowloris {i} was never cut off ({took:?})"
        );
        assert!(
            took < Duration::from_secs_f64(LOGIN_TIMEOUT + 3.0),
            "slowloris {i} lasted {took:?}"
        );
    }
    let admin = connect_url(&probe.admin_url()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            lists(&admin).await["login_clients"] == 0
        })
        .await,
        "logins in progress remain: {:?}",
        lists(&admin).await
    );
    probe.assert_clean("after slowloris").await;
}

/// A startup packet with raw (possibly non-UTF-8) parameter bytes.
fn raw_startup(params: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_names_and_query_text() {
    let (env, probe) = leaks::probed_env(2).await;
    // Startup: a non-UTF-8 database name, parameter name or parameter value.
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "database",
            raw_startup(&[(b"user", b"app"), (b"database", b"sh\xc3\x28op")]),
        ),
        (
            "parameter name",
            raw_startup(&[
                (b"user", b"app"),
                (b"database", b"shop"),
                (b"\xff\xfe", b"x"),
            ]),
        ),
        (
            "application_name",
            raw_startup(&[
                (b"user", b"app"),
                (b"database", b"shop"),
                (b"application_name", b"\xe2\x28\xa1"),
            ]),
        ),
        (
            "options",
            raw_startup(&[
                (b"user", b"app"),
                (b"database", b"shop"),
                (b"options", b"-c search_path=\xff"),
            ]),
        ),
    ];
    for (what, pkt) in cases {
        let mut r = Raw::connect(env.addr).await;
        r.send(&pkt).await;
        let msgs = r.until_eof().await;
        let errs = errors(&msgs);
        assert_eq!(errs.len(), 1, "{what}: {msgs:?}");
        assert_eq!(errs[0].0, "08P01", "{what}: {msgs:?}");
    }

    // After login: non-UTF-8 bytes in query text, statement names and parameters are
    // PostgreSQL's to judge (22021); the session goes on.
    let mut r = Raw::ready(env.addr).await;
    let msgs = r.roundtrip(&msg(b'Q', b"SELECT '\xff\xfe'\0")).await;
    assert_eq!(errors(&msgs)[0].0, "22021", "{msgs:?}");
    assert_eq!(msgs.last().unwrap().ready_status(), b'I');
    let mut b = msg(b'P', b"st\xff\0SELECT $1::text\0\0\0");
    b.extend(msg(b'B', b"\0st\xff\0\0\0\0\x01\0\0\0\x02\xc3\x28\0\0"));
    b.extend(raw::execute("", 0));
    b.extend(raw::sync());
    let msgs = r.roundtrip(&b).await;
    let errs = errors(&msgs);
    assert_eq!(errs.len(), 1, "{msgs:?}");
    assert_eq!(errs[0].0, "22021", "{msgs:?}");
    assert_eq!(r.simple("SELECT 'fine'").await, [Some("fine".into())]);
    // A client name that is valid UTF-8 but odd works like any other.
    let mut b = raw::parse("名前 \u{1F600}", "SELECT 'ok'::text");
    b.extend(raw::bind_execute("名前 \u{1F600}", &[]));
    b.extend(raw::sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(raw::first_column(&msgs), ["ok"], "{msgs:?}");
    drop(r);
    probe.assert_clean("after non-UTF-8 input").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_message_types_during_the_scram_exchange() {
    let env = env(PoolMode::Transaction, 1, leaks::with_admin).await;
    let probe = Probe::of(&env, 1);
    let startup = startup_packet(3, 0, &[("user", "app"), ("database", "shop")]);
    // A Query, a Terminate, an empty password message and a zero tag where the SCRAM
    // exchange expects SASLInitialResponse.
    for bad in [
        query("SELECT 1"),
        msg(b'X', b""),
        msg(b'p', b""),
        msg(0, b""),
    ] {
        let mut r = Raw::connect(env.addr).await;
        r.send(&startup).await;
        assert_eq!(r.expect_msg().await.tag, b'R');
        r.send(&bad).await;
        let msgs = r.until_eof().await;
        let errs = errors(&msgs);
        assert!(
            msgs.iter().all(|m| m.tag == b'E') && errs.len() <= 1,
            "nothing but one error may come: {msgs:?}"
        );
        match errs.first() {
            Some((code, _)) => assert!(code == "08P01" || code == "28P01", "{msgs:?}"),
            None => assert_eq!(bad[0], b'X', "closed without an error: {msgs:?}"),
        }
    }
    let c = env.connect().await;
    assert_eq!(count_items(&c).await, 100);
    drop(c);
    probe
        .assert_clean("after violations during authentication")
        .await;
}

async fn count_items(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_inside_copy_is_fatal_and_frees_the_server() {
    let (env, probe) = leaks::probed_env(1).await;
    let mut r = Raw::ready(env.addr).await;
    r.send(&query("COPY items FROM STDIN")).await;
    assert_eq!(r.expect_msg().await.tag, b'G');
    r.send(&msg(b'd', b"500\tin copy\t1\n")).await;
    r.send(&msg(b'z', b"junk")).await;
    let msgs = r.until_eof().await;
    assert!(
        errors(&msgs).iter().any(|e| e.0 == "08P01"),
        "an unknown message in COPY must be fatal: {msgs:?}"
    );
    // Nothing was copied and the single server connection serves the next client.
    let c = env.connect().await;
    let n: i64 = timeout(
        Duration::from_secs(15),
        c.query_one("SELECT count(*) FROM items WHERE id = 500", &[]),
    )
    .await
    .expect("the server was not given back after a violation in COPY")
    .unwrap()
    .get(0);
    assert_eq!(n, 0);
    assert_eq!(count_items(&c).await, 100);
    drop(c);
    probe.assert_clean("after a violation in COPY").await;
}
