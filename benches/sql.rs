//! Micro-benchmarks of SQL insight: fingerprint + classification of typical statements cold
//! (lex, normalize, parse, walk), via `SqlCache` with a known shape but a new literal (lex +
//! normalize, no parse), and warm (text seen before: one hash + one lookup); plus the
//! per-statement cost of the N+1 detector and of statistics recording.

use criterion::{criterion_group, criterion_main, Criterion};
use pgferry::clock::Tick;
use pgferry::insight::{Insight, InsightConfig, SessionContext};
use pgferry::sql::{analyze_uncached, text_hash, SqlCache};
use std::hint::black_box;
use std::time::Duration;

const STATEMENTS: &[(&str, &str)] = &[
    ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
    (
        "orm_lookup",
        "SELECT \"users\".\"id\", \"users\".\"email\", \"users\".\"created_at\" FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
    ),
    (
        "join_in_list",
        "select o.id, o.total, c.name, sum(l.qty) from orders o join customers c on c.id = o.customer_id \
         left join order_lines l on l.order_id = o.id where o.status in ('new', 'paid', 'shipped') \
         and o.created_at > $1 group by o.id, o.total, c.name order by o.total desc limit 50",
    ),
    (
        "insert_values",
        "INSERT INTO events (kind, payload, at) VALUES ('click', '{\"x\":1}', 1700000000), \
         ('view', '{\"x\":2}', 1700000001), ('click', '{\"x\":3}', 1700000002) RETURNING id",
    ),
];

fn analysis(c: &mut Criterion) {
    let mut g = c.benchmark_group("sql");
    for (name, sql) in STATEMENTS {
        g.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| analyze_uncached(black_box(sql)))
        });
    }
    for (name, sql) in STATEMENTS {
        let cache = SqlCache::default();
        cache.analyze(sql);
        g.bench_function(format!("warm/{name}"), |b| {
            b.iter(|| cache.analyze(black_box(sql)))
        });
    }
    // Same shape, new literal every time (simple protocol with inline values): a tiny text
    // level so texts keep missing while the one shape stays cached.
    let cache = SqlCache::new(0);
    let texts: Vec<String> = (0..4096)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i * 7919
            )
        })
        .collect();
    let mut i = 0;
    g.bench_function("new_literal/pgbench_select", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            cache.analyze(black_box(&texts[i]))
        })
    });
    let sql = STATEMENTS[0].1;
    g.bench_function("text_hash/pgbench_select", |b| {
        b.iter(|| text_hash(black_box(sql.as_bytes())))
    });
    g.finish();
}

fn detector(c: &mut Criterion) {
    let mut g = c.benchmark_group("insight");
    let insight = Insight::new(InsightConfig::default());
    let cache = SqlCache::default();
    let list = cache.analyze("select id from orders");
    let get = cache.analyze("select * from customers where id = $1");
    let mut d = insight.new_session(SessionContext::default());
    let mut t = Tick::now();
    let mut n = 0u64;
    // Alternating shapes: the common no-burst path.
    g.bench_function("on_statement/no_burst", |b| {
        b.iter(|| {
            n += 1;
            t = t + Duration::from_millis(1);
            let a = if n % 2 == 0 { &list } else { &get };
            d.on_statement(t, a, n)
        })
    });
    let a = cache.analyze(STATEMENTS[0].1);
    g.bench_function("record", |b| {
        b.iter(|| insight.record("db", "app", &a, Duration::from_micros(250), 1, false))
    });
    g.finish();
}

criterion_group!(benches, analysis, detector);
criterion_main!(benches);
