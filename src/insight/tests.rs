//! Workload tests of the insight API with synthetic `Tick`s: N+1 bursts, duplicates,
//! slow spreads, interleaved clients, cooldowns, statistics and the SHOW tables.

use super::*;
use crate::clock::Tick;
use crate::sql::{text_hash, SqlCache};

fn ctx(addr: &str) -> SessionContext {
    SessionContext {
        database: "shop".into(),
        user: "app".into(),
        application_name: "web".into(),
        client_addr: addr.into(),
    }
}

/// Sends a simple-protocol statement: params hash = hash of the text.
fn send(d: &mut SessionDetector, c: &SqlCache, t: Tick, sql: &str) -> Option<Notice> {
    let a = c.analyze(sql);
    let n = d.on_statement(t, &a, text_hash(sql.as_bytes()));
    d.on_complete(Duration::from_micros(300));
    n
}

const LIST: &str = "select id, customer_id from orders where created_at > '2024-01-01' limit 50";

fn lookup(i: u64) -> String {
    format!("select * from customers where id = {i}")
}

#[test]
fn list_then_fifty_lookups_is_one_burst() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut d = ins.new_session(ctx("10.0.0.1:5000"));
    let t0 = Tick::now();
    assert!(send(&mut d, &c, t0, LIST).is_none());
    let mut notices = Vec::new();
    for i in 0..50u64 {
        let t = t0 + Duration::from_millis(4 * (i + 1)); // 50 lookups in 200 ms
        notices.extend(send(&mut d, &c, t, &lookup(i)));
    }
    assert_eq!(notices.len(), 1, "one notice per burst");
    let n = &notices[0];
    assert_eq!(n.kind, PatternKind::NPlusOne);
    assert!(
        n.message.contains("select * from customers where id = $1"),
        "{}",
        n.message
    );
    assert!(n.message.contains("ran 10 times"), "{}", n.message);
    assert!(
        n.message
            .contains("after \"select id, customer_id from orders"),
        "{}",
        n.message
    );
    assert!(n.hint.as_deref().unwrap_or("").contains("id = any($1)"));

    // While the burst is open the event is updated in place.
    let ev = ins.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].count, ev[0].distinct_params, ev[0].open),
        (50, 50, true)
    );
    assert_eq!(ev[0].source.as_deref(), Some(&*c.analyze(LIST).normalized));
    assert_eq!(ev[0].client_addr.as_ref(), "10.0.0.1:5000");
    assert_eq!(ev[0].span, Duration::from_millis(196));
    assert_eq!(ev[0].server_time, Duration::from_micros(300 * 50));
    assert_eq!(
        ev[0].suggestion.as_deref(),
        Some("select * from customers where id = any($1)")
    );

    // The next shape closes the burst.
    send(&mut d, &c, t0 + Duration::from_millis(300), LIST);
    let ev = ins.events();
    assert_eq!((ev.len(), ev[0].count, ev[0].open), (1, 50, false));
    assert_eq!(
        ins.n_plus_one_bursts_total(),
        vec![(("shop".into(), "app".into()), 1)]
    );
    let totals = ins.pattern_totals();
    assert_eq!((totals[0].n_plus_one_bursts, totals[0].queries), (1, 50));
    assert!(ins.duplicate_queries_total().iter().all(|(_, n)| *n == 0));
}

#[test]
fn slow_lookups_are_not_a_burst() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut d = ins.new_session(ctx("a"));
    let t0 = Tick::now();
    send(&mut d, &c, t0, LIST);
    for i in 0..50u64 {
        let t = t0 + Duration::from_millis(1_200 * (i + 1)); // over 60 s
        assert!(send(&mut d, &c, t, &lookup(i)).is_none());
    }
    drop(d);
    assert!(ins.events().is_empty());
    assert!(ins.n_plus_one_bursts_total().is_empty());
}

#[test]
fn an_idle_client_lets_a_finished_burst_go() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut d = ins.new_session(ctx("a"));
    let t0 = Tick::now();
    send(&mut d, &c, t0, LIST);
    // 300 lookups with distinct ids in 300 ms: the table fills to its 256 hashes.
    for i in 0..300u64 {
        send(&mut d, &c, t0 + Duration::from_millis(i + 1), &lookup(i));
    }
    assert!(d.params_room() >= 256, "{}", d.params_room());
    let last = t0 + Duration::from_millis(300);

    // Parked within the window: the run goes on, and the next lookup continues the event.
    d.settle(last + Duration::from_millis(500));
    send(
        &mut d,
        &c,
        last + Duration::from_millis(600),
        &lookup(1_000),
    );
    let ev = ins.events();
    assert_eq!((ev.len(), ev[0].count, ev[0].open), (1, 301, true));

    // Parked after the window: the burst ends then (not at the next statement), with the
    // same final numbers, and no parameter table is kept.
    d.settle(last + Duration::from_secs(2));
    let ev = ins.events();
    assert_eq!(
        (ev.len(), ev[0].count, ev[0].distinct_params, ev[0].open),
        (1, 301, 301, false)
    );
    assert_eq!(d.params_room(), 0);
    assert_eq!(ins.pattern_totals()[0].queries, 301);

    // A run that ends at the next shape keeps a small table for the next run, not its 256.
    let t1 = last + Duration::from_secs(3);
    for i in 0..300u64 {
        send(&mut d, &c, t1 + Duration::from_millis(i), &lookup(i));
    }
    send(&mut d, &c, t1 + Duration::from_millis(400), LIST);
    assert!(d.params_room() <= 64, "{}", d.params_room());
    // That second burst fell within the first one's cooldown: counted, no second event.
    assert_eq!(ins.events().len(), 1);
    assert_eq!(ins.n_plus_one_bursts_total()[0].1, 2);
}

#[test]
fn identical_parameters_are_a_duplicate() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut d = ins.new_session(ctx("a"));
    let t0 = Tick::now();
    let mut notices = Vec::new();
    for i in 0..50u64 {
        notices.extend(send(&mut d, &c, t0 + Duration::from_millis(i), &lookup(7)));
    }
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].kind, PatternKind::Duplicate);
    let ev = ins.events();
    assert_eq!(
        (ev.len(), ev[0].kind, ev[0].count, ev[0].distinct_params),
        (1, PatternKind::Duplicate, 50, 1)
    );
    assert!(ins.n_plus_one_bursts_total().iter().all(|(_, n)| *n == 0));
    assert_eq!(ins.duplicate_queries_total()[0].1, 1);
}

#[test]
fn interleaved_clients_are_attributed_separately() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut a = ins.new_session(ctx("client-a"));
    let mut b = ins.new_session(ctx("client-b"));
    let t0 = Tick::now();
    send(&mut a, &c, t0, LIST);
    send(&mut b, &c, t0, "select id from invoices");
    for i in 0..30u64 {
        let t = t0 + Duration::from_millis(2 * i + 1);
        send(&mut a, &c, t, &lookup(i));
        send(&mut b, &c, t, &lookup(1_000 + i));
    }
    let ev = ins.events();
    assert_eq!(ev.len(), 2);
    let mut by_client: Vec<_> = ev
        .iter()
        .map(|e| (e.client_addr.to_string(), e.count, e.source.clone()))
        .collect();
    by_client.sort();
    assert_eq!((by_client[0].0.as_str(), by_client[0].1), ("client-a", 30));
    assert_eq!((by_client[1].0.as_str(), by_client[1].1), ("client-b", 30));
    assert_eq!(by_client[1].2.as_deref(), Some("select id from invoices"));
}

#[test]
fn extended_protocol_and_transparent_transaction_control() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut d = ins.new_session(ctx("a"));
    let prepared = c.analyze("select * from order_lines where order_id = $1");
    let begin = c.analyze("BEGIN");
    let t0 = Tick::now();
    d.on_statement(t0, &c.analyze(LIST), 1);
    d.on_statement(t0, &begin, 2);
    let mut notices = 0;
    for i in 0..12u64 {
        let bind = i.to_be_bytes(); // Bind parameter bytes
        notices += usize::from(
            d.on_statement(t0 + Duration::from_millis(i), &prepared, text_hash(&bind))
                .is_some(),
        );
    }
    d.on_statement(t0 + Duration::from_millis(20), &c.analyze("COMMIT"), 3);
    assert_eq!(notices, 1);
    let ev = ins.events();
    assert_eq!(
        (ev[0].count, ev[0].open),
        (12, true),
        "COMMIT does not end the run"
    );
    assert_eq!(ev[0].source.as_deref(), Some(&*c.analyze(LIST).normalized));
}

#[test]
fn cooldown_suppresses_repeat_events_but_counts_them() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut d = ins.new_session(ctx("a"));
    let t0 = Tick::now();
    let mut notices = 0;
    for page in 0..3u64 {
        let tp = t0 + Duration::from_millis(500 * page);
        send(&mut d, &c, tp, LIST);
        for i in 0..20u64 {
            notices += usize::from(
                send(&mut d, &c, tp + Duration::from_millis(i + 1), &lookup(i)).is_some(),
            );
        }
    }
    assert_eq!(notices, 1);
    assert_eq!(ins.events().len(), 1);
    assert_eq!(ins.n_plus_one_bursts_total()[0].1, 3);
    drop(d);
    assert_eq!(ins.pattern_totals()[0].queries, 60);
}

#[test]
fn disabled_does_nothing() {
    let ins = Insight::new(InsightConfig {
        enabled: false,
        ..InsightConfig::default()
    });
    let c = SqlCache::default();
    let mut d = ins.new_session(ctx("a"));
    for i in 0..50u64 {
        assert!(send(&mut d, &c, Tick::now(), &lookup(i)).is_none());
        ins.record(
            "shop",
            "web",
            &c.analyze(&lookup(i)),
            Duration::from_millis(1),
            1,
            false,
        );
    }
    assert!(ins.events().is_empty() && ins.show_queries().rows.is_empty());
}

#[test]
fn statistics_and_show_queries() {
    let ins = Insight::new(InsightConfig::default());
    let c = SqlCache::default();
    for i in 0..100u64 {
        let a = c.analyze(&lookup(i));
        ins.record(
            "shop",
            if i % 10 == 0 { "batch" } else { "web" },
            &a,
            Duration::from_micros(100 + i),
            1,
            i == 3,
        );
    }
    ins.record(
        "shop",
        "web",
        &c.analyze(LIST),
        Duration::from_millis(50),
        50,
        false,
    );
    ins.record(
        "other",
        "web",
        &c.analyze(LIST),
        Duration::from_millis(1),
        0,
        false,
    );
    let t = ins.show_queries();
    assert_eq!(t.columns.len(), t.rows[0].len());
    assert_eq!(t.rows.len(), 3);
    let col = |name: &str| t.columns.iter().position(|c| *c == name).expect("column");
    // Ordered by total time: the list query (50 ms) first.
    assert_eq!(
        t.rows[0][col("query")].as_deref(),
        Some(&*c.analyze(LIST).normalized)
    );
    let r = &t.rows[1];
    assert_eq!(r[col("calls")].as_deref(), Some("100"));
    assert_eq!(r[col("errors")].as_deref(), Some("1"));
    assert_eq!(
        r[col("application_names")].as_deref(),
        Some("web:90,batch:10")
    );
    let p50: f64 = r[col("p50_us")]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("p50");
    assert!((p50 - 150.0).abs() < 15.0, "{p50}");
    let p99: u64 = r[col("p99_us")]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("p99");
    assert!(p99 >= 180, "{p99}");
}

#[test]
fn statistics_are_bounded_with_an_other_row() {
    let ins = Insight::new(InsightConfig {
        query_stats_max: 50,
        ..InsightConfig::default()
    });
    let c = SqlCache::default();
    for i in 0..500u64 {
        let a = c.analyze(&format!("select * from t{i} where id = 1"));
        ins.record("db", "app", &a, Duration::from_micros(1 + i), 1, false);
    }
    assert!(ins.tracked_fingerprints() <= 50);
    let rows = ins.query_summaries();
    let other: Vec<_> = rows.iter().filter(|r| r.fingerprint.is_none()).collect();
    assert_eq!(other.len(), 1);
    let total_calls: u64 = rows.iter().map(|r| r.calls).sum();
    assert_eq!(total_calls, 500, "nothing lost, only folded");
    // The slowest statements survive.
    assert!(rows.iter().any(|r| r.query.contains("t499")));
}

#[test]
fn show_tables_have_consistent_shapes() {
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let mut d = ins.new_session(ctx("a"));
    let t0 = Tick::now();
    for i in 0..15u64 {
        send(&mut d, &c, t0 + Duration::from_millis(i), &lookup(i));
    }
    for t in [
        ins.show_n_plus_one(),
        ins.show_n_plus_one_totals(),
        ins.show_queries(),
    ] {
        assert!(t.rows.iter().all(|r| r.len() == t.columns.len()));
    }
    assert_eq!(ins.show_n_plus_one().rows.len(), 1);
    assert_eq!(ins.show_n_plus_one_totals().rows.len(), 1);
}
