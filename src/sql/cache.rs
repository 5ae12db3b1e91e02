//! [`SqlCache`]: the bounded, thread-safe memo of statement analyses. Three tables, each a
//! set of mutex-guarded shards keyed by a 64-bit hash and verified against text (so a hash
//! collision can never hand one statement another's classification):
//! 1. statement text → `Arc<Analysis>` (the hot path: one hash, one lock, one compare, one
//!    `Arc` clone, no allocation), verified against the full text;
//! 2. numbers templates: a text whose only literals are integers, keyed by its hash with
//!    every digit read as `0`, so a new text that differs only in the digits of those
//!    integers (`WHERE aid = 48213`, the simple protocol of `pgbench -S`) is answered
//!    without being lexed. It is verified byte for byte outside the template's number
//!    tokens, which proves it lexes to the same tokens ([`same_but_numbers`]);
//! 3. normalized text → `Arc<Analysis>`, so any other text that differs only in literals is
//!    lexed but not parsed again (and, rendered into a reused buffer, allocates nothing),
//!    verified against the normalized text.
//!
//! A text with literals that misses level 1 but hits level 2 is usually a one-off (a new
//! value each time), so it enters level 1 only on its second sighting: level 1 remembers the
//! hashes of recent misses in a small direct-mapped table per shard. That keeps literal churn
//! from costing an allocation and eviction sweeps per statement, while a repeated text still
//! reaches level 1 on its second use. Texts that are new shapes, or have no literals, enter
//! at once. A template is made, the same way, on the second sighting of its key.
//!
//! Eviction is second-chance "clear half": when a shard is full, entries not read since the
//! last sweep are dropped; if that frees too little, the shard is cut to half.

use super::hash::{digits_masked_hash, fingerprint_of_bytes, text_hash, BuildPassThrough};
use super::lexer::{number_spans, same_but_numbers};
use super::normalize::{with_normalized, Normalized};
use super::Analysis;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

const SHARDS: usize = 32;
/// Statement texts longer than this are not memoized at level 1 (their shape still is).
const MAX_TEXT_LEN: usize = 16 * 1024;
/// Normalized texts longer than this are not memoized at level 2.
const MAX_SHAPE_LEN: usize = 64 * 1024;

struct Slot {
    /// Statement text (level 1, templates); empty at level 2, where the analysis holds the
    /// key text, and for a key that has no template.
    text: Box<str>,
    /// A template's number tokens (empty elsewhere).
    spans: Box<[(u32, u32)]>,
    analysis: Arc<Analysis>,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Slot, BuildPassThrough>,
    /// Recent misses (empty at level 2), the admission filter: slot `hash & (len - 1)` holds
    /// the high half of the hash that last missed there.
    seen: Box<[u32]>,
    hits: u64,
    misses: u64,
    evictions: u64,
}

struct Level {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl Level {
    /// A level of about `max_entries`; with `admission`, it remembers as many recent misses.
    fn new(max_entries: usize, admission: bool) -> Self {
        let per_shard = (max_entries / SHARDS).max(4);
        let seen = if admission {
            per_shard.next_power_of_two()
        } else {
            0
        };
        Level {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        seen: vec![0; seen].into_boxed_slice(),
                        ..Shard::default()
                    })
                })
                .collect(),
            per_shard,
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash >> 40) as usize % SHARDS]
    }

    /// The entry under `hash` if `matches` accepts it; on a miss, whether a miss of the same
    /// hash was recorded recently (always false without an admission filter, and when
    /// another entry holds the hash: it is not displaced).
    fn get(&self, hash: u64, matches: impl Fn(&Slot) -> bool) -> Result<Arc<Analysis>, bool> {
        let mut shard = self.shard(hash).lock();
        match shard.map.get_mut(&hash) {
            Some(slot) if matches(slot) => {
                slot.referenced = true;
                let a = Arc::clone(&slot.analysis);
                shard.hits += 1;
                Ok(a)
            }
            Some(_) => {
                shard.misses += 1;
                Err(false)
            }
            None => {
                shard.misses += 1;
                // The table's length is a power of two (or zero: no slot, never seen).
                let mask = shard.seen.len().wrapping_sub(1);
                let tag = (hash >> 32) as u32;
                Err(match shard.seen.get_mut(hash as usize & mask) {
                    Some(last) => std::mem::replace(last, tag) == tag,
                    None => false,
                })
            }
        }
    }

    /// Stores `slot` under `hash`, replacing an entry there only if `replace`.
    fn insert(&self, hash: u64, slot: Slot, replace: bool) {
        let mut shard = self.shard(hash).lock();
        if shard.map.contains_key(&hash) && !replace {
            return;
        }
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&hash) {
            let before = shard.map.len();
            shard.map.retain(|_, s| std::mem::take(&mut s.referenced));
            let mut keep = self.per_shard / 2;
            if shard.map.len() > keep {
                shard.map.retain(|_, _| {
                    let k = keep > 0;
                    keep = keep.saturating_sub(1);
                    k
                });
            }
            shard.evictions += (before - shard.map.len()) as u64;
        }
        shard.map.insert(hash, slot);
    }

    fn totals(&self) -> (u64, u64, u64, usize) {
        self.shards.iter().fold((0, 0, 0, 0), |acc, s| {
            let s = s.lock();
            (
                acc.0 + s.hits,
                acc.1 + s.misses,
                acc.2 + s.evictions,
                acc.3 + s.map.len(),
            )
        })
    }
}

/// Counters of a [`SqlCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqlCacheStats {
    /// Level-1 lookups answered (text seen before).
    pub text_hits: u64,
    pub text_misses: u64,
    /// New texts of a known shape (new literals: answered from a numbers template, or lexed
    /// and found at level 2; not parsed).
    pub shape_hits: u64,
    /// Full parses.
    pub shape_misses: u64,
    pub evictions: u64,
    pub text_entries: usize,
    pub shape_entries: usize,
}

/// Thread-safe memo of [`Analysis`] by statement text. Share it with `Arc<SqlCache>`.
pub struct SqlCache {
    texts: Level,
    templates: Level,
    shapes: Level,
}

impl Default for SqlCache {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl SqlCache {
    /// A cache holding about `max_entries` texts and as many shapes (and a quarter as many
    /// numbers templates).
    pub fn new(max_entries: usize) -> Self {
        SqlCache {
            texts: Level::new(max_entries, true),
            templates: Level::new(max_entries / 4, true),
            shapes: Level::new(max_entries, false),
        }
    }

    /// The analysis of `text`, computed at most once per distinct text while it stays cached.
    pub fn analyze(&self, text: &str) -> Arc<Analysis> {
        self.analyze_hashed(text_hash(text.as_bytes()), text)
    }

    /// As [`analyze`](Self::analyze) when the caller already has `text_hash(text)`.
    pub fn analyze_hashed(&self, hash: u64, text: &str) -> Arc<Analysis> {
        match self.analyze_bytes(hash, text.as_bytes()) {
            Some(a) => a,
            None => unreachable!("a str is UTF-8"),
        }
    }

    /// As [`analyze_hashed`](Self::analyze_hashed) for a text straight from the wire: `None`
    /// if it is not UTF-8. A text answered at level 1, or by a template, is not checked: it
    /// equals a text that was, or differs from one only in ASCII digits.
    pub fn analyze_bytes(&self, hash: u64, text: &[u8]) -> Option<Arc<Analysis>> {
        let seen_before = match self.texts.get(hash, |s| s.text.as_bytes() == text) {
            Ok(a) => return Some(a),
            Err(seen) => seen,
        };
        let key = match text.len() {
            0..=MAX_TEXT_LEN => digits_masked_hash(text),
            _ => None,
        };
        let mut make_template = false;
        if let Some(key) = key {
            match self
                .templates
                .get(key, |s| same_but_numbers(&s.text, &s.spans, text))
            {
                Ok(a) => {
                    // Its literals are numbers: a one-off unless seen before.
                    if seen_before {
                        if let Ok(text) = std::str::from_utf8(text) {
                            self.remember(hash, text, &a);
                        }
                    }
                    return Some(a);
                }
                Err(seen) => make_template = seen,
            }
        }
        let text = std::str::from_utf8(text).ok()?;
        // The normalized text stays in a reused buffer unless the shape is new.
        let known = with_normalized(text, |shape, normalized| {
            let fp = fingerprint_of_bytes(normalized);
            match self
                .shapes
                .get(fp, |s| s.analysis.normalized.as_bytes() == normalized)
            {
                Ok(a) => Ok((a, shape.literals)),
                Err(_) => Err((fp, shape.with_text(normalized))),
            }
        });
        let (analysis, admit) = match known {
            Ok((a, literals)) => (a, seen_before || !literals),
            Err((fp, n)) => (self.parse(text, fp, n), true),
        };
        if let (Some(key), true) = (key, make_template) {
            // Without integer literals alone (digits in names or strings), an empty entry
            // that matches nothing keeps the key from being lexed for spans again.
            let (kept, spans) = match number_spans(text) {
                Some(spans) => (Box::from(text), spans),
                None => (Box::default(), Box::default()),
            };
            let template = Slot {
                text: kept,
                spans,
                analysis: Arc::clone(&analysis),
                referenced: false,
            };
            self.templates.insert(key, template, false);
        }
        if admit {
            self.remember(hash, text, &analysis);
        }
        Some(analysis)
    }

    /// Memoizes `text` at level 1.
    fn remember(&self, hash: u64, text: &str, analysis: &Arc<Analysis>) {
        if text.len() <= MAX_TEXT_LEN {
            let slot = Slot {
                text: Box::from(text),
                spans: Box::default(),
                analysis: Arc::clone(analysis),
                referenced: false,
            };
            self.texts.insert(hash, slot, true);
        }
    }

    /// A new shape: full analysis, memoized at level 2.
    fn parse(&self, text: &str, fp: u64, n: Normalized) -> Arc<Analysis> {
        let cache_shape = n.text.len() <= MAX_SHAPE_LEN;
        let a = Arc::new(super::build(text, n));
        if cache_shape {
            let slot = Slot {
                text: Box::default(),
                spans: Box::default(),
                analysis: Arc::clone(&a),
                referenced: false,
            };
            self.shapes.insert(fp, slot, true);
        }
        a
    }

    /// Hit/miss/eviction counters and sizes (locks every shard briefly).
    pub fn stats(&self) -> SqlCacheStats {
        let (text_hits, text_misses, e1, text_entries) = self.texts.totals();
        let (template_hits, _, e2, _) = self.templates.totals();
        let (shape_hits, shape_misses, e3, shape_entries) = self.shapes.totals();
        SqlCacheStats {
            text_hits,
            text_misses,
            shape_hits: template_hits + shape_hits,
            shape_misses,
            evictions: e1 + e2 + e3,
            text_entries,
            shape_entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template_hits(c: &SqlCache) -> u64 {
        c.templates.totals().0
    }

    #[test]
    fn integer_literals_are_answered_from_a_template() {
        let c = SqlCache::new(1024);
        let first = c.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 10000;");
        for aid in 10_001..10_200 {
            let t = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            assert!(Arc::ptr_eq(&first, &c.analyze(&t)));
        }
        // The second text made the template; every later one was answered from it.
        assert_eq!(template_hits(&c), 198);
        let s = c.stats();
        assert_eq!((s.shape_hits, s.shape_misses, s.text_entries), (199, 1, 1));
        // Another number of digits is another template.
        c.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 7;");
        c.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 8;");
        c.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 9;");
        assert_eq!(template_hits(&c), 199);
    }

    #[test]
    fn digits_outside_integer_literals_make_no_template() {
        let c = SqlCache::new(1024);
        for i in 10..60 {
            // Digits in a name and in a string: no template, and after the second sighting
            // of the key the empty entry stops further span lexing.
            let a = c.analyze(&format!("select * from t{i} where email = 'u{i}@x'"));
            assert_eq!(
                a.normalized.as_ref(),
                format!("select * from t{i} where email = $1")
            );
        }
        assert_eq!(template_hits(&c), 0);
        // Only the name differs: a template of one table never answers for another.
        c.analyze("select * from t1 where id = 5");
        c.analyze("select * from t1 where id = 6");
        let other = c.analyze("select * from t2 where id = 7");
        assert_eq!(other.normalized.as_ref(), "select * from t2 where id = $1");
    }
}
