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

/// Bytes from the wire: a text that is not UTF-8 gets no analysis (and no statistics), at
/// any level; one that is gets the same analysis as through `analyze`, including when it is
/// answered by a numbers template without being checked.
#[test]
fn wire_bytes_are_analyzed_only_when_utf8() {
    let c = SqlCache::new(64);
    let bytes = |t: &[u8]| c.analyze_bytes(text_hash(t), t);
    assert!(bytes(b"select \xff").is_none());
    assert!(bytes(b"select '\xc3'").is_none(), "a cut-off sequence");
    let first = c.analyze("select * from t where id = 10");
    // The second sighting of the key makes the template; the third is answered by it.
    for t in [
        &b"select * from t where id = 11"[..],
        b"select * from t where id = 12",
    ] {
        let a = bytes(t).expect("UTF-8");
        assert!(Arc::ptr_eq(&first, &a));
    }
    let before = c.stats();
    // Same length as the template, an invalid byte where a digit was: not the template's.
    assert!(bytes(b"select * from t where id = \xf0\x9f").is_none());
    assert!(bytes(b"select * from t where id = 1\xff").is_none());
    // Invalid bytes outside the numbers.
    assert!(bytes(b"select * from \xff where id = 13").is_none());
    let after = c.stats();
    assert_eq!(after.shape_entries, before.shape_entries, "{after:?}");
    let a = bytes("select * from t where id = 99".as_bytes()).expect("UTF-8");
    assert!(Arc::ptr_eq(&first, &a));
    let text = "select 'é' from t";
    assert!(Arc::ptr_eq(
        &c.analyze(text),
        &bytes(text.as_bytes()).expect("UTF-8")
    ));
}

#[test]
fn literal_churn_stays_out_of_level_one() {
    let c = SqlCache::new(1024);
    let first = c.analyze("select * from t where id = 0");
    for i in 1..2_000 {
        let r = c.analyze(&format!("select * from t where id = {i}"));
        assert!(Arc::ptr_eq(&first, &r));
    }
    let s = c.stats();
    // Only the text that brought the new shape was memoized; nothing had to be evicted.
    assert_eq!(
        (s.text_entries, s.shape_entries, s.evictions),
        (1, 1, 0),
        "{s:?}"
    );
    assert_eq!((s.shape_hits, s.shape_misses), (1_999, 1));

    // A repeated text reaches level 1 on its second use and is a level-1 hit on its third.
    let t = "select * from t where id = 7";
    for _ in 0..3 {
        assert!(Arc::ptr_eq(&first, &c.analyze(t)));
    }
    let s2 = c.stats();
    assert_eq!(s2.text_entries, 2, "{s2:?}");
    assert_eq!(s2.text_hits, s.text_hits + 1, "{s2:?}");

    // A text without literals (parameters only) enters level 1 at once.
    let p = "SELECT * FROM t WHERE id = $1";
    assert!(Arc::ptr_eq(&first, &c.analyze(p)));
    assert!(Arc::ptr_eq(&first, &c.analyze(p)));
    let s3 = c.stats();
    assert_eq!(
        (s3.text_entries, s3.text_hits),
        (3, s2.text_hits + 1),
        "{s3:?}"
    );
}

#[test]
fn hot_text_stays_a_level_one_hit_through_sweeps() {
    let c = SqlCache::new(64);
    let hot = "select * from hot where id = 1";
    let first = c.analyze(hot);
    for i in 0..2_000 {
        // A new shape each time: admitted to level 1 at once, so shards keep filling up.
        let _ = c.analyze(&format!("select * from t{i} where id = 1"));
        let before = c.stats().text_hits;
        assert!(Arc::ptr_eq(&first, &c.analyze(hot)));
        assert_eq!(c.stats().text_hits, before + 1, "lookup {i}");
    }
    assert!(c.stats().evictions > 1_000);
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

/// A deterministic pseudo-random sequence (xorshift64) for the token-soup tests.
pub(super) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A random statement of fewer than `max_len` of `pieces`, joined by nothing one time in
/// `glue_one_in` and by a space otherwise.
pub(super) fn soup(
    pieces: &[&str],
    next: &mut impl FnMut() -> u64,
    max_len: u64,
    glue_one_in: u64,
) -> String {
    let len = (next() % max_len) as usize;
    let sep = if next() % glue_one_in == 0 { "" } else { " " };
    let parts: Vec<&str> = (0..len)
        .map(|_| pieces[(next() % pieces.len() as u64) as usize])
        .collect();
    parts.join(sep)
}

/// Deterministic token soup (a poor man's fuzzer): never panics, normalization is stable.
#[test]
fn random_token_soup_is_total() {
    const PIECES: &str = "select|from|where|in|values|array|(|)|[|]|,|;|'|\"|$|$$|$1|$a$|--|/*|*/|-|+|::|:|.|1|1.5e-3|e'\\|u&|x'|é|ü\"|\n| |=|<>|->>|t|id|insert into t|with x as|for update|union|not|and|or|case when|end|null";
    let pieces: Vec<&str> = PIECES.split('|').collect();
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
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

/// Tricky inputs whose fingerprints are pinned (computed with the char-by-char renderer
/// before the byte renderer and the scratch buffers replaced it): ids are shown to users and
/// must never change.
pub(super) fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        "SELECT Ünïcode, Café, ÀBC FROM Tëst WHERE ÉTÉ = 1 AND naïve_Ü <> 'x'",
        "SELECT \"MixedCase\".\"Col\", \"Ta\"\"ble\".x FROM \"Ta\"\"ble\" WHERE \"É\" IN (1, 2)",
        "select U&\"d\\0061t\\+000061\", u&'x' , U&x from t",
        "select $$a$$, $tag$ b $ c $tag$, $1, $2::int, $é$x$é$ from t where a = $3",
        "SELECT '1'::INT, x::Text[], CAST(y AS NUMERIC(10,2)), z :: varchar, a:b, t.*",
        "select * from t where (a,b) in ((1,2),(3,4)) and c IN (select 1) and d in () and e in (1, f)",
        "INSERT INTO t (A, b) VALUES (1,'a'),(2,'b'),(nextval('s'),'c'), (3, 'd') ON CONFLICT DO NOTHING",
        "select /* a /* nested */ */ 1 -- tail\n from t -- end",
        "select array[1,2,3], ARRAY[[1,2],[3,4]], a[1:2], b[1][2], (c)[1], \"q\"[1], f(x)[2]",
        "select a->>'k', b#>>'{a}', c @> '{}'::jsonb, -1, 1 - -2, x<>y, a!=b, +3, a*-4, d||e",
        "select E'\\n\\'', B'101', X'ff', N'foo', e'x', b, x, n from t",
        "select 1.5e-3, .5, 1e10, 0x1F, 1_000, 1..2, 12.e5, 3.14 from t",
        "SELECT COUNT(*), count (*), \"f\"(x), EXISTS (select 1), coalesce(a, 1) FROM t",
        "where a = $3 and b = $1 and c = $10",
        "select 1; select 2;;",
        ";;",
        "",
        "   -- only a comment",
        "'abc",
        "$tag$ unclosed",
        "select \"unterminated",
        "with x as (select * from a where id = any(array[1,2])) select * from x join b using (id) order by 1 desc limit 10 offset 5",
        "update t set a = 1, b = 'x' where id in (1,2,3) returning *",
        "select case when a then 1 else 2 end, not x, a between 1 and 2 from t for update",
        "select x from t where y like 'a%' and z ilike any (values ('b'), ('c'))",
        "select 日本語, \"日本\" from テーブル where 列 = 'あ'",
        "SELECT\tA\r\nFROM\x0bB\x0cWHERE c=-1",
        "select @ x, ~y, !z, a ?| b, a # b, a ` b",
        "select :a, ::b, a::, a: :b, a. b, a .b",
        "select e'\\\\', u&'', U&\"\", $1a, $, $$, $a$",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("select {}1{}", "(".repeat(300), ")".repeat(300)));
    v.push(format!("select * from t where a in ({})", "(".repeat(70)));
    v.push(format!(
        "select * from t where a in ({})",
        (0..200)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));
    v.push(format!(
        "insert into t values {}",
        (0..40)
            .map(|i| format!("({i}, {})", if i % 3 == 0 { "f(1)" } else { "2" }))
            .collect::<Vec<_>>()
            .join(",")
    ));
    v.push(format!("select {} from t", "É".repeat(100)));
    v
}

#[test]
fn corpus_fingerprints_are_pinned() {
    #[rustfmt::skip]
    const PINNED: &[u64] = &[
        0x2e06777ad76280fe,
        0x220cbc4370846448,
        0x3c87fd1afd0bacc9,
        0xfd76e3f86263f4aa,
        0x6a723c7a3d1b918d,
        0x24dac4fc34be8fbc,
        0x22b10e520ad26551,
        0x1eda9ef9e0ad8a6d,
        0x399a7f9f1a4e8c88,
        0xc4cfbe72caef2a6a,
        0x70c7d9b3c5da2d5f,
        0xbafcac98e62985b4,
        0xafe2c3ec92cbfd82,
        0xd254719b04734418,
        0xdf313b062a0c75a2,
        0x855b78b977f7b32b,
        0xef4b461b045786fb,
        0xef4b461b045786fb,
        0xef4b461b045786fb,
        0x2539551d72aabad3,
        0x2539551d72aabad3,
        0xfbc4d4b1a1600b14,
        0x216b0a15073a6353,
        0xce02480d647c6503,
        0xae7187e39b740678,
        0x73a0cdfe578d7117,
        0x838fbd155fdb239e,
        0x73896deaf9f2d1ee,
        0x3efdb8118efc3b22,
        0xd2d3e27ef46a60ca,
        0x0d621f823d451684,
        0x35e6b1405c470623,
        0x2d3154ef464307a8,
        0xb02ef6aa2d0f55a4,
        0x4f0b10b03391b3c2,
        0x89a149c04358cc22,
    ];
    let corpus = corpus();
    assert_eq!(corpus.len(), PINNED.len());
    let cache = SqlCache::new(64);
    for (s, want) in corpus.iter().zip(PINNED) {
        let (id, normalized) = fingerprint(s);
        assert_eq!(id, *want, "{s:?} -> {normalized:?}");
        assert_eq!(a(s).fingerprint, *want, "{s:?}");
        // Cached: a new text, the same text again (level 1), then texts of a known shape
        // (level 2), each seen a few times (so a second sighting reaches level 1).
        for t in [s.clone(), format!(" {s}"), format!("\n\t{s}")] {
            for _ in 0..3 {
                let c = cache.analyze(&t);
                assert_eq!(
                    (c.fingerprint, &*c.normalized),
                    (*want, normalized.as_str())
                );
            }
        }
    }
}

/// Replaces every ASCII digit of `s` with a digit drawn from `next` (positions unchanged).
fn redigit(s: &str, next: &mut impl FnMut() -> u64) -> String {
    s.chars()
        .map(|c| match c {
            '0'..='9' => char::from(b'0' + (next() % 10) as u8),
            c => c,
        })
        .collect()
}

/// A text accepted by `same_but_numbers` against a template normalizes exactly as the
/// template does; one that only changes the digits of the template's numbers is accepted.
#[test]
fn numbers_templates_are_sound() {
    use super::lexer::{number_spans, same_but_numbers};
    const PIECES: &str = "select|from|where|in|values|(|)|[|]|,|;|=|-|+|*|.|..|::|:|$|$1|$12|$$9$$|$a1$ 2 $a1$|1|42|007|1.5|.5|5.|1e5|1e-5|0x1f|1_000|12ab|t1|t22|x1y|_9|é1|'12'|'a 3'|\"q4\"|e'5'|x'6'|b'7'|n'8'|u&'9'|U&\"1\"|--1\n|/*2*/|::int4|-1|- 2|+3|a-1|(-4)|not|and|limit|offset|id";
    let pieces: Vec<&str> = PIECES.split('|').collect();
    let mut next = xorshift(0xA076_1D64_78BD_642F);
    let (mut accepted, mut templates) = (0, 0);
    for _ in 0..20_000 {
        let template = soup(&pieces, &mut next, 12, 3);
        let Some(spans) = number_spans(&template) else {
            continue;
        };
        templates += 1;
        let want = normalize::normalize(&template);
        // Only the template's numbers re-drawn: always accepted.
        let mut numbers_only = template.clone().into_bytes();
        for &(start, end) in spans.iter() {
            for b in &mut numbers_only[start as usize..end as usize] {
                *b = b'0' + (next() % 10) as u8;
            }
        }
        let numbers_only = String::from_utf8(numbers_only).unwrap();
        assert!(
            same_but_numbers(&template, &spans, numbers_only.as_bytes()),
            "{template:?} vs {numbers_only:?}"
        );
        // Every digit re-drawn (identifiers, strings, parameters too): accepted only when sound.
        for text in [numbers_only, redigit(&template, &mut next)] {
            if same_but_numbers(&template, &spans, text.as_bytes()) {
                accepted += 1;
                let got = normalize::normalize(&text);
                assert_eq!(got.text, want.text, "{template:?} vs {text:?}");
                assert_eq!(
                    (got.parse_safe, got.multi_statement),
                    (want.parse_safe, want.multi_statement),
                    "{template:?} vs {text:?}"
                );
            }
        }
    }
    assert!(
        templates > 2_000 && accepted > templates,
        "{templates} {accepted}"
    );
}

/// Through the cache, texts that differ from earlier ones only in digits (of numbers,
/// identifiers, strings or parameters) get exactly their uncached analysis.
#[test]
fn cached_digit_variants_match_uncached() {
    let c = SqlCache::new(64);
    let mut next = xorshift(0x5851_F42D_4C95_7F2D);
    let mut texts = corpus();
    texts.extend(
        [
            "select * from t1 where id = 5",
            "select * from t2 where id = 6",
            "select * from events_2024_01 where id = 17",
            "select * from events_2024_02 where id = 18",
            "select $1, 7 from t where a = '12' and b = 34",
            "select 5; select 6",
            "select 1.5, 2 from t",
            "select -1, - 2, x-3 from t limit 10 offset 20",
        ]
        .map(String::from),
    );
    for t in &texts {
        for _ in 0..6 {
            let v = redigit(t, &mut next);
            let (cached, fresh) = (c.analyze(&v), analyze_uncached(&v));
            assert_eq!(
                (cached.fingerprint, &*cached.normalized),
                (fresh.fingerprint, &*fresh.normalized),
                "{v:?}"
            );
        }
    }
}
