//! Tests of the public `sql` API: fingerprint equivalences, classification of typical
//! statements, the unparseable fallback and the memo cache.

use super::*;

fn a(s: &str) -> Analysis {
    analyze_uncached(s)
}

fn fp(s: &str) -> u64 {
    a(s).fingerprint
}

#[test]
fn fingerprint_equivalences() {
    let base = fp("select * from users where id = 1");
    assert_eq!(base, fp("select * from users where id = 2"));
    assert_eq!(base, fp("select * from users where id = $1"));
    assert_eq!(base, fp("SELECT *\n  FROM Users\tWHERE ID = -7 ;"));
    assert_eq!(
        base,
        fp("select * from users /* c */ where id = 'x' -- tail")
    );
    assert_ne!(base, fp("select * from users where email = 1"));
    assert_ne!(base, fp("select * from accounts where id = 1"));
    assert_ne!(base, fp("select * from \"Users\" where id = 1"));
    assert_eq!(
        fp("select * from t where id in (1,2,3)"),
        fp("select * from t where id in (4,5)")
    );
    assert_eq!(
        fp("insert into t values (1,'a'),(2,'b')"),
        fp("insert into t values ($1, $2)")
    );
    assert_eq!(
        a("select * from users where id = 1").normalized.as_ref(),
        "select * from users where id = $1"
    );
}

#[test]
fn unparseable_still_fingerprinted() {
    // PostgreSQL-only syntax sqlparser rejects.
    for s in [
        "select * from t where id in ((select 1) union (select 2))",
        "create extension if not exists hstore with schema public version '1.4'",
        "select $$x$$ operator(pg_catalog.+) 1",
        "\\copy x from stdin",
        "this is not sql at all 'x' 42",
    ] {
        let r = a(s);
        if !r.parsed {
            assert_eq!(r.kind, StatementKind::Unknown, "{s}");
            assert!(r.volatile && !r.read_only, "{s}");
        }
        assert_ne!(r.fingerprint, 0, "{s}");
    }
    let x = a("this is not sql at all 'x' 42");
    assert!(!x.parsed);
    assert_eq!(x.normalized.as_ref(), "this is not sql at all $1 $2");
    assert_eq!(x.fingerprint, fp("this is NOT sql at all 'y' 7"));
}

#[test]
fn classification_select() {
    let r = a("select o.id, lower(c.name) from shop.orders o join customers c on c.id = o.cid where o.id = $1");
    assert_eq!(r.kind, StatementKind::Select);
    assert!(r.parsed && r.read_only && !r.volatile && r.cacheable());
    assert_eq!(r.tables_read, vec!["shop.orders", "customers"]);
    assert!(r.tables_written.is_empty());
    assert_eq!(r.functions, vec!["lower"]);

    for v in [
        "select now()",
        "select random()",
        "select current_user",
        "select * from t where ts > current_timestamp",
        "select my_func(1)",
        "select public.lower(x) from t",
        "select '2020-01-01'::timestamptz",
        "select concat(a, b) from t",
    ] {
        let r = a(v);
        assert!(r.volatile, "{v}");
        assert!(!r.cacheable(), "{v}");
    }
    for w in [
        "select nextval('s')",
        "select set_config('a', 'b', false)",
        "select pg_advisory_lock(1)",
    ] {
        let r = a(w);
        assert!(r.volatile && !r.read_only, "{w}");
    }
}

#[test]
fn classification_flags() {
    let r = a("select * from t where id = 1 for update");
    assert!(r.flags.for_update_share && !r.read_only);
    let r = a("select * into newt from t");
    assert!(r.flags.select_into && !r.read_only);
    let r = a("with d as (delete from q where id = 1 returning *) select * from d");
    assert!(r.flags.writable_cte && !r.read_only);
    assert_eq!(r.tables_written, vec!["q"]);
    assert!(r.tables_read.is_empty(), "{:?}", r.tables_read);
    let r = a("create temp table x (id int)");
    assert!(r.flags.temp_table);
    assert_eq!(r.kind, StatementKind::Ddl);
    let r = a("select 1; select 2");
    assert!(r.flags.multi_statement && !r.read_only);
    let r = a("select * from pg_catalog.pg_class");
    assert!(r.flags.catalog && !r.cacheable());
    let r = a("with x as (select id from a) select * from x join b using (id)");
    assert_eq!(r.tables_read, vec!["a", "b"]);
}

#[test]
fn classification_writes_and_others() {
    let r = a("insert into public.orders (id) select id from staging on conflict (id) do nothing");
    assert_eq!(r.kind, StatementKind::Insert);
    assert_eq!(r.tables_written, vec!["public.orders"]);
    assert_eq!(r.tables_read, vec!["staging"]);
    let r = a("update t set x = x + 1 from u where t.id = u.id");
    assert_eq!(
        (r.kind, r.tables_written.clone(), r.tables_read),
        (
            StatementKind::Update,
            vec!["t".to_string()],
            vec!["u".to_string()]
        )
    );
    let r = a("delete from t using u where t.id = u.id");
    assert_eq!(r.tables_written, vec!["t"]);
    assert_eq!(r.tables_read, vec!["u"]);
    assert_eq!(a("begin").kind, StatementKind::Transaction);
    assert_eq!(a("COMMIT").kind, StatementKind::Transaction);
    assert_eq!(a("set search_path = x").kind, StatementKind::Session);
    assert_eq!(a("truncate a, b").tables_written, vec!["a", "b"]);
    assert_eq!(a("").kind, StatementKind::Empty);
    assert_eq!(a("vacuum t").kind, StatementKind::Utility);
    let r = a("copy t to stdout");
    assert_eq!(
        (r.kind, r.tables_read),
        (StatementKind::Copy, vec!["t".to_string()])
    );
}

#[test]
fn lookup_shape() {
    let r = a("select id, total from orders where customer_id = 17");
    let l = r.lookup.as_ref().expect("lookup");
    assert_eq!(
        (l.table.as_str(), l.column.as_str()),
        ("orders", "customer_id")
    );
    assert_eq!(
        l.rewrite.as_deref(),
        Some("select id, total from orders where customer_id = any($1)")
    );
    assert!(a("select * from o where $1 = o.id").lookup.is_some());
    assert!(a("select * from o where id = 1 and x = 2").lookup.is_none());
    assert!(a("select * from o join p on p.id = o.pid where o.id = 1")
        .lookup
        .is_none());
    assert!(a("select * from o where id > 1").lookup.is_none());
}

#[test]
fn deep_input_is_not_parsed() {
    let long = format!("select 1{}", " + 1".repeat(50_000));
    let r = a(&long);
    assert!(!r.parsed);
    let deep = format!("select {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(!a(&deep).parsed);
    let nested_in = format!("select {} 1", "x in (".repeat(5_000));
    let _ = a(&nested_in);
}

#[test]
fn cache_memoizes_and_shares_shapes() {
    let c = SqlCache::new(64);
    let x = c.analyze("select * from t where id = 1");
    let y = c.analyze("select * from t where id = 1");
    assert!(Arc::ptr_eq(&x, &y));
    let z = c.analyze("select * from t where id = 2");
    assert!(Arc::ptr_eq(&x, &z), "same shape shares one analysis");
    let s = c.stats();
    assert_eq!((s.text_hits, s.shape_hits, s.shape_misses), (1, 1, 1));
    for i in 0..10_000 {
        let _ = c.analyze(&format!("select * from t{} where id = {i}", i % 500));
    }
    let s = c.stats();
    assert!(s.text_entries <= 128 && s.shape_entries <= 128, "{s:?}");
    assert!(s.evictions > 0);
    // Hashed entry point agrees.
    let t = "select 1";
    assert!(Arc::ptr_eq(
        &c.analyze(t),
        &c.analyze_hashed(text_hash(t.as_bytes()), t)
    ));
}

#[test]
fn cache_is_shareable() {
    let c = Arc::new(SqlCache::default());
    let hs: Vec<_> = (0..4)
        .map(|k| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for i in 0..500 {
                    let r = c.analyze(&format!("select * from t where id = {}", i * k));
                    assert_eq!(r.kind, StatementKind::Select);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("thread");
    }
}

/// Deterministic token soup (a poor man's fuzzer): never panics, normalization is stable.
#[test]
fn random_token_soup_is_total() {
    const PIECES: &str = "select|from|where|in|values|array|(|)|[|]|,|;|'|\"|$|$$|$1|$a$|--|/*|*/|-|+|::|:|.|1|1.5e-3|e'\\|u&|x'|é|ü\"|\n| |=|<>|->>|t|id|insert into t|with x as|for update|union|not|and|or|case when|end|null";
    let pieces: Vec<&str> = PIECES.split('|').collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let cache = SqlCache::new(256);
    for _ in 0..20_000 {
        let n = (next() % 24) as usize;
        let text: String = (0..n)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(if next() % 3 == 0 { "" } else { " " });
        let a = cache.analyze(&text);
        let b = analyze_uncached(&text);
        assert_eq!(a.fingerprint, b.fingerprint, "{text:?}");
        assert_eq!(
            fingerprint(&a.normalized).1,
            *a.normalized,
            "idempotent: {text:?}"
        );
    }
}
