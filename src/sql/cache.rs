//! [`SqlCache`]: the bounded, thread-safe memo of statement analyses. Two levels, each a
//! set of mutex-guarded shards keyed by a 64-bit hash and verified against the full text (so
//! a hash collision can never hand one statement another's classification):
//! 1. statement text → `Arc<Analysis>` (the hot path: one hash, one lock, one compare, one
//!    `Arc` clone, no allocation);
//! 2. normalized text → `Arc<Analysis>`, so a new text that differs only in literals (simple
//!    protocol, `WHERE id = 42`) is lexed but not parsed again (and, rendered into a reused
//!    buffer, allocates nothing).
//!
//! A text with literals that misses level 1 but hits level 2 is usually a one-off (a new
//! value each time), so it enters level 1 only on its second sighting: level 1 remembers the
//! hashes of recent misses in a small direct-mapped table per shard. That keeps literal churn
//! from costing an allocation and eviction sweeps per statement, while a repeated text still
//! reaches level 1 on its second use. Texts that are new shapes, or have no literals, enter
//! at once.
//!
//! Eviction is second-chance "clear half": when a shard is full, entries not read since the
//! last sweep are dropped; if that frees too little, the shard is cut to half.

use super::hash::{fingerprint_of_bytes, text_hash, BuildPassThrough};
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
    /// Statement text (level 1); empty at level 2, where the analysis holds the key text.
    text: Box<str>,
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
    /// hash was recorded recently (always false without an admission filter).
    fn get(&self, hash: u64, matches: impl Fn(&Slot) -> bool) -> Result<Arc<Analysis>, bool> {
        let mut shard = self.shard(hash).lock();
        match shard.map.get_mut(&hash) {
            Some(slot) if matches(slot) => {
                slot.referenced = true;
                let a = Arc::clone(&slot.analysis);
                shard.hits += 1;
                Ok(a)
            }
            _ => {
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

    fn insert(&self, hash: u64, slot: Slot) {
        let mut shard = self.shard(hash).lock();
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
    /// Level-2 lookups answered (same shape, new literals: lexed, not parsed).
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
    shapes: Level,
}

impl Default for SqlCache {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl SqlCache {
    /// A cache holding about `max_entries` texts and as many shapes.
    pub fn new(max_entries: usize) -> Self {
        SqlCache {
            texts: Level::new(max_entries, true),
            shapes: Level::new(max_entries, false),
        }
    }

    /// The analysis of `text`, computed at most once per distinct text while it stays cached.
    pub fn analyze(&self, text: &str) -> Arc<Analysis> {
        self.analyze_hashed(text_hash(text.as_bytes()), text)
    }

    /// As [`analyze`](Self::analyze) when the caller already has `text_hash(text)`.
    pub fn analyze_hashed(&self, hash: u64, text: &str) -> Arc<Analysis> {
        let seen_before = match self.texts.get(hash, |s| *s.text == *text) {
            Ok(a) => return a,
            Err(seen) => seen,
        };
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
        if admit && text.len() <= MAX_TEXT_LEN {
            self.texts.insert(
                hash,
                Slot {
                    text: Box::from(text),
                    analysis: Arc::clone(&analysis),
                    referenced: false,
                },
            );
        }
        analysis
    }

    /// A new shape: full analysis, memoized at level 2.
    fn parse(&self, text: &str, fp: u64, n: Normalized) -> Arc<Analysis> {
        let cache_shape = n.text.len() <= MAX_SHAPE_LEN;
        let a = Arc::new(super::build(text, n));
        if cache_shape {
            self.shapes.insert(
                fp,
                Slot {
                    text: Box::from(""),
                    analysis: Arc::clone(&a),
                    referenced: false,
                },
            );
        }
        a
    }

    /// Hit/miss/eviction counters and sizes (locks every shard briefly).
    pub fn stats(&self) -> SqlCacheStats {
        let (text_hits, text_misses, e1, text_entries) = self.texts.totals();
        let (shape_hits, shape_misses, e2, shape_entries) = self.shapes.totals();
        SqlCacheStats {
            text_hits,
            text_misses,
            shape_hits,
            shape_misses,
            evictions: e1 + e2,
            text_entries,
            shape_entries,
        }
    }
}
