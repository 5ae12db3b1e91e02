//! Byte-level protocol behaviour: startup negotiation (SSL/GSS refusal, protocol version
//! negotiation, malformed startup packets) and transaction-mode named prepared statements
//! driven with hand-built Parse/Bind/Describe/Execute/Close/Sync messages.

use crate::support::raw;

use crate::common::*;
use pgferry::config::{AuthType, PoolMode};
use raw::*;

async fn trust_env(mode: PoolMode, pool_size: u32) -> Env {
    env(mode, pool_size, |c| c.pgferry.auth_type = AuthType::Trust).await
}

async fn trust_env_with(
    mode: PoolMode,
    pool_size: u32,
    tweak: impl FnOnce(&mut pgferry::config::Config),
) -> Env {
    env(mode, pool_size, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        tweak(c);
    })
    .await
}

/// Asserts that `msgs` is exactly one FATAL/ERROR with `code` and then EOF followed.
fn assert_refused(msgs: &[Msg], code: &str) {
    assert_eq!(tags(msgs), "E", "expected a single ErrorResponse: {msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some(code), "{msgs:?}");
}

// ----- startup ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_refused_with_n_then_login_proceeds() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    for first in [&ssl[..], &gss[..]] {
        let mut r = Raw::connect(env.addr).await;
        r.send(first).await;
        assert_eq!(r.read_byte().await, Some(b'N'));
        r.send(&startup_packet(
            3,
            0,
            &[("user", "app"), ("database", "shop")],
        ))
        .await;
        let msgs = r.until_ready().await;
        assert_eq!(msgs[0].tag, b'R');
        assert_eq!(msgs[0].body, 0i32.to_be_bytes(), "AuthenticationOk");
        assert!(
            msgs.iter().any(|m| m.tag == b'K'),
            "BackendKeyData: {msgs:?}"
        );
        assert_eq!(r.simple("SELECT 40 + 2").await, [Some("42".into())]);
    }
    // Both requests on the same connection, one after the other, then the startup.
    let mut r = Raw::connect(env.addr).await;
    r.send(&gss).await;
    assert_eq!(r.read_byte().await, Some(b'N'));
    r.send(&ssl).await;
    assert_eq!(r.read_byte().await, Some(b'N'));
    r.send(&startup_packet(
        3,
        0,
        &[("user", "app"), ("database", "shop")],
    ))
    .await;
    r.until_ready().await;
    assert_eq!(r.simple("SELECT 'ok'").await, [Some("ok".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_is_negotiated_down_to_3_0() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let mut r = Raw::connect(env.addr).await;
    r.send(&startup_packet(
        3,
        2,
        &[("user", "app"), ("database", "shop"), ("_pq_.fancy", "on")],
    ))
    .await;
    let msgs = r.until_ready().await;
    let v = &msgs[0];
    assert_eq!(v.tag, b'v', "NegotiateProtocolVersion first: {msgs:?}");
    assert_eq!(&v.body[0..4], &0i32.to_be_bytes(), "newest minor is 0");
    assert_eq!(&v.body[4..8], &1i32.to_be_bytes(), "one unsupported option");
    assert_eq!(&v.body[8..], b"_pq_.fancy\0");
    assert_eq!(msgs[1].tag, b'R');
    assert_eq!(msgs[1].body, 0i32.to_be_bytes());
    // The session works with 3.0 messages and keeps 4-byte cancel keys.
    let k = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    assert_eq!(k.body.len(), 8);
    assert_eq!(r.simple("SELECT 7 * 6").await, [Some("42".into())]);

    // 3.2 without options: newest minor 0, no option names.
    let mut r = Raw::connect(env.addr).await;
    r.send(&startup_packet(
        3,
        2,
        &[("user", "app"), ("database", "shop")],
    ))
    .await;
    let msgs = r.until_ready().await;
    assert_eq!(msgs[0].tag, b'v');
    assert_eq!(msgs[0].body, [0, 0, 0, 0, 0, 0, 0, 0]);
    // Plain 3.0 gets no NegotiateProtocolVersion at all.
    let (_r, msgs) = Raw::login(env.addr).await;
    assert!(msgs.iter().all(|m| m.tag != b'v'), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_packets_get_08p01_and_close() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let valid_len = startup_packet(3, 0, &[("user", "app")]);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 4", vec![0, 0, 0, 4, 0, 3, 0, 0]),
        ("length 7", vec![0, 0, 0, 7, 0, 3, 0, 0]),
        ("length 0", vec![0, 0, 0, 0]),
        ("negative length", vec![0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
        ("length 10001", {
            let mut v = 10_001i32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 3, 0, 0]);
            v
        }),
        ("huge length", {
            let mut v = i32::MAX.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 3, 0, 0]);
            v
        }),
        // 3.0 with parameters but no terminating empty name.
        ("unterminated params", {
            let mut body = 196_608u32.to_be_bytes().to_vec();
            body.extend_from_slice(b"user\0app\0database");
            let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        }),
        // Valid framing, but a value that is not UTF-8.
        ("non-utf8 value", {
            let mut body = 196_608u32.to_be_bytes().to_vec();
            body.extend_from_slice(b"user\0\xff\xfe\0\0");
            let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        }),
        // Trailing garbage after the terminating NUL.
        ("garbage after terminator", {
            let mut v = valid_len.clone();
            v.extend_from_slice(b"junk");
            let len = (v.len()) as i32;
            v[0..4].copy_from_slice(&len.to_be_bytes());
            v
        }),
        // SSLRequest code with a body (length 12).
        (
            "oversized ssl request",
            vec![0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2f, 1, 2, 3, 4],
        ),
    ];
    // A regular tagged message sent before any startup packet.
    cases.push(("tagged message instead of startup", query("SELECT 1")));
    for (what, bytes) in cases {
        let mut r = Raw::connect(env.addr).await;
        r.send(&bytes).await;
        let msgs = r.until_eof().await;
        assert_refused(&msgs, "08P01");
        let m = msgs[0].message().unwrap_or_default();
        assert!(
            m.contains("startup") || m.contains("length"),
            "{what}: unexpected message {m:?}"
        );
    }
    // The listener is unharmed.
    let c = env.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_of_exactly_10000_bytes_is_accepted() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let base = startup_packet(3, 0, &[("user", "app"), ("database", "shop"), ("x", "")]);
    let pad = "p".repeat(10_000 - base.len());
    let pkt = startup_packet(3, 0, &[("user", "app"), ("database", "shop"), ("x", &pad)]);
    assert_eq!(pkt.len(), 10_000);
    let mut r = Raw::connect(env.addr).await;
    r.send(&pkt).await;
    let msgs = r.until_ready().await;
    assert!(errors(&msgs).is_empty(), "{msgs:?}");
}

// ----- transaction-mode prepared statements -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_parse_is_42p05_and_skips_to_sync() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let mut r = Raw::ready(env.addr).await;
    let mut b = parse("s1", "SELECT $1::int + 1");
    b.extend(sync());
    assert_eq!(tags(&r.roundtrip(&b).await), "1Z");

    // Duplicate name: error, the rest up to Sync is ignored, then ReadyForQuery.
    let mut b = parse("s1", "SELECT 'other'");
    b.extend(bind_execute("s1", &[Some("5")]));
    b.extend(parse("s2", "SELECT 2"));
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("42P05"));
    assert_eq!(
        msgs[0].message().as_deref(),
        Some("prepared statement \"s1\" already exists")
    );
    assert_eq!(msgs[0].severity().as_deref(), Some("ERROR"));
    assert_eq!(msgs[1].ready_status(), b'I');

    // s1 still means its original text; s2 was skipped.
    let mut b = bind_execute("s1", &[Some("5")]);
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "2DCZ");
    assert_eq!(first_column(&msgs), ["6"]);
    let mut b = bind_execute("s2", &[]);
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(errors(&msgs)[0].0, "26000", "{msgs:?}");

    // Messages before the error in the same batch are answered first, in order.
    let mut b = parse("s3", "SELECT 3");
    b.extend(bind_execute("s3", &[]));
    b.extend(parse("s1", "SELECT 'dup'"));
    b.extend(bind_execute("s3", &[]));
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "12DCEZ", "{msgs:?}");
    assert_eq!(msgs[4].sqlstate().as_deref(), Some("42P05"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_statement_in_bind_or_describe_is_26000() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let mut r = Raw::ready(env.addr).await;
    let mut b = bind("", "nope", &[]);
    b.extend(execute("", 0));
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("26000"));
    assert!(msgs[0].message().unwrap().contains("\"nope\""));

    let mut b = describe(b'S', "nope");
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("26000"));

    // The session is fine afterwards, and Describe of a known statement works.
    let mut b = parse("s1", "SELECT $1::int AS n, 'x'::text AS t");
    b.extend(describe(b'S', "s1"));
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "1tTZ", "{msgs:?}");
    assert_eq!(r.simple("SELECT 'alive'").await, [Some("alive".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_parse_same_name_uses_new_text() {
    let env = trust_env(PoolMode::Transaction, 1).await;
    let mut r = Raw::ready(env.addr).await;
    let mut b = parse("s1", "SELECT 'first'");
    b.extend(bind_execute("s1", &[]));
    b.extend(sync());
    assert_eq!(first_column(&r.roundtrip(&b).await), ["first"]);

    let mut b = close(b'S', "s1");
    b.extend(parse("s1", "SELECT 'second'"));
    b.extend(bind_execute("s1", &[]));
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), "312DCZ", "{msgs:?}");
    assert_eq!(first_column(&msgs), ["second"]);

    // Closing in one batch, re-parsing in the next.
    let mut b = close(b'S', "s1");
    b.extend(sync());
    assert_eq!(tags(&r.roundtrip(&b).await), "3Z");
    let mut b = bind_execute("s1", &[]);
    b.extend(sync());
    assert_eq!(errors(&r.roundtrip(&b).await)[0].0, "26000");
    let mut b = parse("s1", "SELECT 'first'");
    b.extend(bind_execute("s1", &[]));
    b.extend(sync());
    assert_eq!(first_column(&r.roundtrip(&b).await), ["first"]);
    // Closing a name that does not exist is not an error (as in PostgreSQL).
    let mut b = close(b'S', "never");
    b.extend(sync());
    assert_eq!(tags(&r.roundtrip(&b).await), "3Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_same_statement_name_different_text_pool_1() {
    let env = trust_env(PoolMode::Transaction, 1).await;
    let mut a = Raw::ready(env.addr).await;
    let mut b = Raw::ready(env.addr).await;
    let mut m = parse("s1", "SELECT 'from a', $1::int * 2");
    m.extend(sync());
    assert_eq!(tags(&a.roundtrip(&m).await), "1Z");
    let mut m = parse("s1", "SELECT 'from b', $1::int * 3");
    m.extend(sync());
    assert_eq!(tags(&b.roundtrip(&m).await), "1Z");
    let mut pids = std::collections::HashSet::new();
    for i in 0..10 {
        let arg = i.to_string();
        let mut m = bind_execute("s1", &[Some(&arg)]);
        m.extend(sync());
        let ra = a.roundtrip(&m).await;
        let rb = b.roundtrip(&m).await;
        let row_a = ra.iter().find(|x| x.tag == b'D').expect("row a").data_row();
        let row_b = rb.iter().find(|x| x.tag == b'D').expect("row b").data_row();
        assert_eq!(row_a, [Some("from a".into()), Some((i * 2).to_string())]);
        assert_eq!(row_b, [Some("from b".into()), Some((i * 3).to_string())]);
        pids.insert(a.simple("SELECT pg_backend_pid()").await);
        pids.insert(b.simple("SELECT pg_backend_pid()").await);
    }
    assert_eq!(pids.len(), 1, "pool_size 1 means one server: {pids:?}");
}

/// Bind/Execute/Describe of `s1` (pid text, $1 * 10); returns the backend pid.
async fn run_s1(a: &mut Raw, x: i32) -> String {
    let arg = x.to_string();
    let mut m = bind_execute("s1", &[Some(&arg)]);
    m.extend(describe(b'S', "s1"));
    m.extend(sync());
    let msgs = a.roundtrip(&m).await;
    assert_eq!(tags(&msgs), "2DCtTZ", "{msgs:?}");
    let row = msgs[1].data_row();
    assert_eq!(row[1].as_deref(), Some((x * 10).to_string().as_str()));
    row[0].clone().expect("test helper")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_follow_the_client_to_another_server() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let mut a = Raw::ready(env.addr).await;
    let mut m = parse("s1", "SELECT pg_backend_pid()::text, $1::int * 10");
    m.extend(sync());
    assert_eq!(tags(&a.roundtrip(&m).await), "1Z");
    let p1 = run_s1(&mut a, 1).await;

    // Two other clients take both servers inside transactions...
    let b = env.connect().await;
    let c = env.connect().await;
    b.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let pb: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pc: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pb, pc);
    // ...then the one not on p1 finishes, so `a` can only get the other server.
    let (holder, other) = if pb.to_string() == p1 {
        (&b, &c)
    } else {
        (&c, &b)
    };
    assert!(
        pb.to_string() == p1 || pc.to_string() == p1,
        "p1 is one of the pool's servers"
    );
    other.batch_execute("COMMIT").await.unwrap();
    let p2 = run_s1(&mut a, 2).await;
    assert_ne!(p1, p2, "the client moved to the other server");
    holder.batch_execute("COMMIT").await.unwrap();
    // And back and forth still works.
    for x in 3..8 {
        let p = run_s1(&mut a, x).await;
        assert!(p == p1 || p == p2);
    }
    let direct = env.direct().await;
    assert!(env.backends(&direct, "app").await <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batch_with_one_sync_answers_in_order() {
    let env = trust_env(PoolMode::Transaction, 2).await;
    let mut r = Raw::ready(env.addr).await;
    const N: usize = 40;
    let mut b = Vec::new();
    for i in 0..N {
        let name = format!("p{i}");
        b.extend(parse(&name, &format!("SELECT {i} AS v, $1::text AS t")));
        let arg = format!("arg{i}");
        b.extend(bind_execute(&name, &[Some(&arg)]));
    }
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), format!("{}Z", "12DC".repeat(N)));
    for (i, d) in msgs.iter().filter(|m| m.tag == b'D').enumerate() {
        assert_eq!(d.data_row(), [Some(i.to_string()), Some(format!("arg{i}"))]);
    }
    // Second round reusing the names, in reverse, again with a single Sync.
    let mut b = Vec::new();
    for i in (0..N).rev() {
        let arg = format!("again{i}");
        b.extend(bind_execute(&format!("p{i}"), &[Some(&arg)]));
    }
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    assert_eq!(tags(&msgs), format!("{}Z", "2DC".repeat(N)));
    let rows: Vec<_> = msgs.iter().filter(|m| m.tag == b'D').collect();
    for (k, d) in rows.iter().enumerate() {
        let i = N - 1 - k;
        assert_eq!(
            d.data_row(),
            [Some(i.to_string()), Some(format!("again{i}"))]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prepared_statements_evicts_with_close() {
    let env = trust_env_with(PoolMode::Transaction, 1, |c| {
        c.pgferry.max_prepared_statements = 2;
    })
    .await;
    let mut r = Raw::ready(env.addr).await;
    let mut b = Vec::new();
    for i in 0..5 {
        b.extend(parse(&format!("r{i}"), &format!("SELECT {i} * $1::int")));
    }
    b.extend(sync());
    assert_eq!(tags(&r.roundtrip(&b).await), "11111Z");
    for round in 0..6 {
        for i in 0..5 {
            let arg = (round + 1).to_string();
            let mut b = bind_execute(&format!("r{i}"), &[Some(&arg)]);
            b.extend(sync());
            let msgs = r.roundtrip(&b).await;
            assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
            assert_eq!(first_column(&msgs), [(i * (round + 1)).to_string()]);
            let n = r
                .simple("SELECT count(*) FROM pg_prepared_statements")
                .await;
            let n: i64 = n[0].as_deref().unwrap().parse().unwrap();
            assert!(n <= 2, "server holds {n} prepared statements");
        }
    }
    // The same in one pipelined batch, with rotation inside it.
    let mut b = Vec::new();
    for k in 0..10 {
        let arg = (k + 1).to_string();
        b.extend(bind_execute(&format!("r{}", k % 5), &[Some(&arg)]));
    }
    b.extend(sync());
    let msgs = r.roundtrip(&b).await;
    let want: Vec<String> = (0..10).map(|k| ((k % 5) * (k + 1)).to_string()).collect();
    assert_eq!(first_column(&msgs), want);
    let n = r
        .simple("SELECT count(*) FROM pg_prepared_statements")
        .await;
    assert!(n[0].as_deref().unwrap().parse::<i64>().unwrap() <= 2);
}

/// A Parse pgferry answers itself (the server already has the text) waits for the reply to
/// what the client sent after it, and goes out in the same write; but a Flush still gets it
/// without a Sync, alone or ahead of the rows, in PostgreSQL's order. Named and unnamed
/// statements (the unnamed one is recorded with `auto_prepare`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locally_answered_parse_comes_on_flush_in_order() {
    let env = trust_env_with(PoolMode::Transaction, 1, |c| c.pgferry.auto_prepare = true).await;
    let mut a = Raw::ready(env.addr).await;
    let mut b = Raw::ready(env.addr).await;
    const TEXT: &str = "SELECT $1::int * 7 AS v";
    let mut m = parse("a1", TEXT);
    m.extend(sync());
    assert_eq!(tags(&a.roundtrip(&m).await), "1Z");
    for (first, name) in [("b1", "b2"), ("", ""), ("", "")] {
        // Parse and Flush alone.
        let mut m = parse(first, TEXT);
        m.extend(flush());
        b.send(&m).await;
        assert_eq!(b.expect_msg().await.tag, b'1', "{first:?}");
        // The same, then rows, up to a Flush: nothing waits for the Sync.
        let mut m = parse(name, TEXT);
        m.extend(bind("", name, &[Some("6")]));
        m.extend(describe(b'P', ""));
        m.extend(execute("", 0));
        m.extend(flush());
        b.send(&m).await;
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(b.expect_msg().await);
        }
        assert_eq!(tags(&got), "12TDC", "{name:?}");
        assert_eq!(got[3].data_row(), [Some("42".to_string())]);
        b.send(&sync()).await;
        assert_eq!(tags(&b.until_ready().await), "Z");
    }
    // pgferry answered every other Parse of b: the server prepared the text once as a named
    // statement (a1, b1, b2) and once as an unnamed one (kept apart: after a schema change
    // pgferry prepares the unnamed one again, never a client's named one).
    let n = b
        .simple("SELECT count(*) FROM pg_prepared_statements")
        .await;
    assert_eq!(n, [Some("2".to_string())]);
}
