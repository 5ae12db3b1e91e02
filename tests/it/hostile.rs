//! Hostile and broken clients: protocol violations after login, bad lengths, login timeouts,
//! and extended-protocol error recovery. Each case checks the offender is told (08P01) and
//! cut off while other clients' sessions carry on and pgferry keeps accepting logins.

use crate::support::raw;

use crate::common::*;
use pgferry::config::{AuthType, Config, PoolMode};
use raw::*;
use std::time::Duration;

async fn trust_env(mode: PoolMode, pool_size: u32, tweak: impl FnOnce(&mut Config)) -> Env {
    env(mode, pool_size, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        tweak(c);
    })
    .await
}

/// Sends `bytes` on a fresh logged-in raw connection and asserts pgferry answers with one
/// 08P01 error and closes. Returns the error message.
async fn violation(env: &Env, bytes: &[u8]) -> String {
    let mut r = Raw::ready(env.addr).await;
    r.send(bytes).await;
    let msgs = r.until_eof().await;
    let errs = errors(&msgs);
    assert_eq!(errs.len(), 1, "one error expected: {msgs:?}");
    assert_eq!(errs[0].0, "08P01", "{msgs:?}");
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'E'), "{msgs:?}");
    errs[0].1.clone()
}

/// A tokio-postgres client in the middle of a transaction, checked before and after.
struct Bystander {
    client: tokio_postgres::Client,
    pid: i32,
}

impl Bystander {
    async fn start(env: &Env) -> Bystander {
        let client = env.connect().await;
        client
            .batch_execute(
                "BEGIN; CREATE TEMP TABLE bystander (n int); INSERT INTO bystander VALUES (1)",
            )
            .await
            .expect("test helper");
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("test helper")
            .get(0);
        Bystander { client, pid }
    }

    /// The transaction is intact, on the same server, and commits.
    async fn check(self) {
        let c = &self.client;
        c.execute("INSERT INTO bystander VALUES (2)", &[])
            .await
            .expect("test helper");
        let n: i64 = c
            .query_one("SELECT sum(n) FROM bystander", &[])
            .await
            .expect("test helper")
            .get(0);
        assert_eq!(n, 3);
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("test helper")
            .get(0);
        assert_eq!(pid, self.pid);
        c.batch_execute("COMMIT").await.expect("test helper");
        let n: i64 = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("test helper")
            .get(0);
        assert_eq!(n, 100);
    }
}

async fn assert_new_logins_work(env: &Env) {
    let c = env.connect().await;
    let v: i32 = c
        .query_one("SELECT 41 + 1", &[])
        .await
        .expect("test helper")
        .get(0);
    assert_eq!(v, 42);
    let mut r = Raw::ready(env.addr).await;
    assert_eq!(r.simple("SELECT 'raw ok'").await, [Some("raw ok".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_fatal_08p01() {
    let env = trust_env(PoolMode::Transaction, 3, |_| {}).await;
    let by = Bystander::start(&env).await;
    for t in [b'z', b'p', b'!', 0u8, 0xff, b'A'] {
        let m = violation(&env, &msg(t, b"whatever")).await;
        assert!(m.contains("invalid frontend message type"), "{m}");
    }
    // After a normal query on the same connection, too.
    let mut r = Raw::ready(env.addr).await;
    assert_eq!(r.simple("SELECT 1").await, [Some("1".into())]);
    r.send(&msg(b'y', &[])).await;
    let msgs = r.until_eof().await;
    assert_eq!(errors(&msgs)[0].0, "08P01");
    assert_eq!(msgs[0].severity().as_deref(), Some("FATAL"));
    by.check().await;
    assert_new_logins_work(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_lengths_are_08p01() {
    let env = trust_env(PoolMode::Transaction, 3, |c| {
        c.pgferry.max_packet_size = 4096
    })
    .await;
    let by = Bystander::start(&env).await;
    for len in [0i32, 1, 3, -1, i32::MIN] {
        let mut b = vec![b'Q'];
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(b"SELECT 1\0");
        violation(&env, &b).await;
    }
    // Declared over max_packet_size: refused from the header alone, before the body arrives.
    let mut b = vec![b'Q'];
    b.extend_from_slice(&4097i32.to_be_bytes());
    let m = violation(&env, &b).await;
    assert!(m.contains("max_packet_size"), "{m}");
    // A real oversized query.
    let big = format!("SELECT '{}'", "x".repeat(5000));
    violation(&env, &query(&big)).await;
    // Under the limit is fine.
    let mut r = Raw::ready(env.addr).await;
    let ok = format!("SELECT length('{}')", "x".repeat(3000));
    assert_eq!(r.simple(&ok).await, [Some("3000".into())]);
    by.check().await;
    assert_new_logins_work(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_08p01() {
    let env = trust_env(PoolMode::Transaction, 3, |_| {}).await;
    let by = Bystander::start(&env).await;
    // Query without its terminating NUL.
    let m = violation(&env, &msg(b'Q', b"SELECT 1")).await;
    assert!(m.to_lowercase().contains("query"), "{m}");
    // Empty Query body.
    violation(&env, &msg(b'Q', b"")).await;
    // Parse whose name is not terminated, and one whose parameter count lies.
    violation(&env, &msg(b'P', b"s1")).await;
    let mut p = b"s1\0SELECT 1\0".to_vec();
    p.extend_from_slice(&3i16.to_be_bytes());
    violation(&env, &msg(b'P', &p)).await;
    // Bind with no statement name terminator; Describe/Close with no body.
    violation(&env, &msg(b'B', b"\0s1")).await;
    violation(&env, &msg(b'D', b"")).await;
    violation(&env, &msg(b'C', b"")).await;
    by.check().await;
    assert_new_logins_work(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violation_inside_a_transaction_does_not_leak_the_server() {
    let env = trust_env(PoolMode::Transaction, 1, |_| {}).await;
    let mut r = Raw::ready(env.addr).await;
    let msgs = r
        .roundtrip(&query(
            "BEGIN; INSERT INTO items VALUES (1001, 'ghost', 1); SET LOCAL work_mem = '77MB'",
        ))
        .await;
    assert_eq!(msgs.last().unwrap().ready_status(), b'T', "{msgs:?}");
    r.send(&msg(b'z', b"")).await;
    let msgs = r.until_eof().await;
    assert_eq!(errors(&msgs)[0].0, "08P01");
    // Also a violation while a query is still running on the server.
    let mut r2 = Raw::ready(env.addr).await;
    let mut b = query("SELECT pg_sleep(1)");
    b.extend(msg(b'Q', b"no terminator"));
    r2.send(&b).await;
    let msgs = r2.until_eof().await;
    assert!(errors(&msgs).iter().any(|e| e.0 == "08P01"), "{msgs:?}");

    // The single server is not handed on inside the abandoned transaction or mid-query.
    let c = env.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE id = 1001", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let wm: String = c.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "4MB");
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_storm_while_others_work() {
    let env = trust_env(PoolMode::Transaction, 3, |c| {
        c.pgferry.max_packet_size = 65536
    })
    .await;
    let worker = {
        let url = env.url("app", APP_PW);
        tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            let st = c
                .prepare("SELECT name FROM items WHERE id = $1")
                .await
                .unwrap();
            for i in 0..200i32 {
                let id = i % 100 + 1;
                let name: String = c.query_one(&st, &[&id]).await.unwrap().get(0);
                assert_eq!(name, format!("item {id}"));
            }
        })
    };
    let mut tasks = Vec::new();
    for k in 0..40u32 {
        let addr = env.addr;
        tasks.push(tokio::spawn(async move {
            let mut r = Raw::connect(addr).await;
            // Pseudo-random junk, some before login and some after.
            let mut x = k.wrapping_mul(2_654_435_761).wrapping_add(12345);
            let junk: Vec<u8> = (0..200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if k % 2 == 0 {
                r.send(&startup_packet(
                    3,
                    0,
                    &[("user", "app"), ("database", "shop")],
                ))
                .await;
                r.until_ready().await;
            }
            r.send(&junk).await;
            // Whatever it is, pgferry must either answer or close; never hang forever.
            // (Some junk is a valid-looking prefix of a long message: close our side.)
            let _ = r.read_within(Duration::from_secs(3)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("bystander hung")
        .unwrap();
    assert_new_logins_work(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_login_timeout_closes_silent_and_slow_clients() {
    let env = trust_env(PoolMode::Transaction, 2, |c| {
        c.pgferry.client_login_timeout = 1.0
    })
    .await;
    // Silent client: closed, with at most an 08P01 error first.
    let mut r = Raw::connect(env.addr).await;
    let msgs = r.until_eof().await;
    assert!(errors(&msgs).iter().all(|e| e.0 == "08P01"), "{msgs:?}");
    assert!(msgs.iter().all(|m| m.tag == b'E'), "{msgs:?}");

    // A startup trickled one byte every 200ms never completes: cut off midway.
    let pkt = startup_packet(3, 0, &[("user", "app"), ("database", "shop")]);
    let mut r = Raw::connect(env.addr).await;
    let mut closed_after = None;
    for (i, b) in pkt.iter().enumerate() {
        if r.try_send(&[*b]).await.is_err() {
            closed_after = Some(i);
            break;
        }
        match r.read_within(Duration::from_millis(200)).await {
            Read::Timeout => {}
            Read::Eof => {
                closed_after = Some(i);
                break;
            }
            Read::Msg(m) => {
                assert_eq!(m.tag, b'E', "only an error may come: {m:?}");
                assert_eq!(m.sqlstate().as_deref(), Some("08P01"));
            }
        }
    }
    let i = closed_after.expect("slow startup was never cut off");
    assert!(
        i < pkt.len() - 1,
        "closed only after the whole packet ({i})"
    );

    // A client that negotiates SSL (refused with 'N') and then goes silent is cut off too.
    let mut r = Raw::connect(env.addr).await;
    r.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    assert_eq!(r.read_byte().await, Some(b'N'));
    let msgs = r.until_eof().await;
    assert!(msgs.iter().all(|m| m.tag == b'E'), "{msgs:?}");

    // A logged-in client is not subject to the login timeout.
    let mut ok = Raw::ready(env.addr).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        ok.simple("SELECT 'still here'").await,
        [Some("still here".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_is_fatal_even_while_skipping_to_sync() {
    // PostgreSQL validates the message type before honouring "ignore till Sync".
    let env = trust_env(PoolMode::Transaction, 2, |_| {}).await;
    let mut r = Raw::ready(env.addr).await;
    let mut b = bind("", "missing", &[]);
    b.extend(msg(b'z', b"junk"));
    b.extend(sync());
    r.send(&b).await;
    let msgs = r.until_eof().await;
    let errs = errors(&msgs);
    assert_eq!(
        errs.first().map(|e| e.0.as_str()),
        Some("26000"),
        "{msgs:?}"
    );
    assert!(
        errs.iter().any(|e| e.0 == "08P01"),
        "the unknown message type must be fatal: {msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_skipped_after_an_error_does_not_close_the_statement() {
    let env = trust_env(PoolMode::Transaction, 1, |_| {}).await;
    let mut r = Raw::ready(env.addr).await;
    let mut b = parse("s2", "SELECT 'two'");
    b.extend(sync());
    assert_eq!(tags(&r.roundtrip(&b).await), "1Z");
    // The Parse fails on the server, so PostgreSQL skips the Close that follows it.
    let mut b = parse("", "SELEC oops");
    b.extend(close(b'S', "s2"));
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("42601"));
    // s2 must still exist.
    let mut b = bind_execute("s2", &[]);
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(
        tags(&msgs),
        "2DCZ",
        "s2 was closed by a skipped Close: {msgs:?}"
    );
    assert_eq!(first_column(&msgs), ["two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_skipped_after_an_error_does_not_create_the_name() {
    let env = trust_env(PoolMode::Transaction, 1, |_| {}).await;
    let mut r = Raw::ready(env.addr).await;
    // The server keeps "SELECT 3" prepared after the client closes its name for it.
    let mut b = parse("s3", "SELECT 3");
    b.extend(sync());
    b.extend(close(b'S', "s3"));
    b.extend(sync());
    assert_eq!(tags(&r.roundtrip(&b).await), "1Z");
    assert_eq!(tags(&r.until_ready().await), "3Z");
    // A failing message, then Parses that PostgreSQL skips: a text the server already has
    // (s4) and a new one (s5).
    let mut b = parse("", "SELEC oops");
    b.extend(parse("s4", "SELECT 3"));
    b.extend(parse("s5", "SELECT 5"));
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("42601"));
    // Neither name exists; retrying the Parses succeeds.
    for (name, text, want) in [("s5", "SELECT 5", "5"), ("s4", "SELECT 3", "3")] {
        let mut b = parse(name, text);
        b.extend(bind_execute(name, &[]));
        b.extend(sync());
        let msgs = r.roundtrip(&b).await;
        assert_eq!(tags(&msgs), "12DCZ", "retrying Parse {name}: {msgs:?}");
        assert_eq!(first_column(&msgs), [want]);
    }
}
