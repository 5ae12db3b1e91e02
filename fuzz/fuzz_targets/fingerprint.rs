//! The SQL fingerprinter and classifier: any UTF-8 text yields an analysis through
//! `SqlCache::analyze`, never a panic or a stack overflow; normalization is idempotent and
//! the cached and uncached paths agree. The `auto_prepare` planner never panics either, a
//! planned text fits its own plan, and error positions map into the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgferry::sql::autoprep::{fits, plan};
use pgferry::sql::{analyze_uncached, fingerprint, SqlCache};
use std::sync::OnceLock;

fn cache() -> &'static SqlCache {
    static CACHE: OnceLock<SqlCache> = OnceLock::new();
    CACHE.get_or_init(|| SqlCache::new(1024))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cached = cache().analyze(text);
    let fresh = analyze_uncached(text);
    assert_eq!(cached.fingerprint, fresh.fingerprint);
    assert_eq!(cached.normalized, fresh.normalized);
    let (fp, normalized) = fingerprint(&fresh.normalized);
    assert_eq!(normalized, *fresh.normalized);
    assert_eq!(fp, fresh.fingerprint);
    if let Some(p) = plan(text) {
        assert!(p.params() > 0);
        assert!(fits(text, &p, text.as_bytes()));
        let chars = p.statement.chars().count() as u64;
        for pos in (1..=chars + 1).take(256) {
            let at = p.original_position(pos);
            assert!(at >= 1 && at <= text.len() as u64 + 1, "{pos} -> {at}");
        }
    }
});
