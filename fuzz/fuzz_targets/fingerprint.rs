//! The SQL fingerprinter and classifier: any UTF-8 text yields an analysis through
//! `SqlCache::analyze`, never a panic or a stack overflow; normalization is idempotent and
//! the cached and uncached paths agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
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
});
