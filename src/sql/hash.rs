//! Stable 64-bit hashing of byte strings: the statement-text hash used as the memo key and
//! the fingerprint id derived from normalized text. Both are pure functions of their input
//! (fixed seeds, explicit little-endian reads), so ids are identical across processes,
//! platforms and releases. Also the key of the numbers-template memo (the text hash with
//! every digit read as `0`), word-at-a-time byte tests shared by the lexer and the renderer,
//! and a pass-through `BuildHasher` for maps keyed by these hashes.

use std::hash::{BuildHasher, Hasher};

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;

/// Seed of [`text_hash`]; distinct from the fingerprint seed so the two never coincide.
const TEXT_SEED: u64 = 0x7067_6665_7272_7931;
/// Seed of the fingerprint id.
const FINGERPRINT_SEED: u64 = 0x7067_6665_7272_7966;
/// Seed of [`digits_masked_hash`].
const TEMPLATE_SEED: u64 = 0x7067_6665_7272_7974;

/// Bit 7 of every byte.
pub(crate) const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
/// One in every byte: `b * ONES` repeats byte `b`.
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;

/// Eight bytes at a time: for `v` whose bytes are all below 0x80, bit 7 of each byte of the
/// result is set iff that byte is in `lo..=hi` (both below 0x80), as (byte >= lo) xor
/// (byte > hi); the additions cannot carry across bytes.
#[inline]
pub(crate) fn within(v: u64, lo: u8, hi: u8) -> u64 {
    ((v + u64::from(0x80 - lo) * ONES) ^ (v + u64::from(0x7f - hi) * ONES)) & HIGH_BITS
}

/// Bit 7 of each byte of the result is set where that byte of `x` is an ASCII digit.
#[inline]
pub(crate) fn ascii_digits(x: u64) -> u64 {
    within(x & !HIGH_BITS, b'0', b'9') & !x
}

#[inline]
fn round(acc: u64, word: u64) -> u64 {
    acc.wrapping_add(word.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// Hashes `data` with `seed`: 8 bytes per round, tail packed with its length, then a final
/// avalanche. Not cryptographic; callers that must not confuse two inputs compare the text.
pub fn hash_with_seed(seed: u64, data: &[u8]) -> u64 {
    hash_words(seed, data, |w| w)
}

/// [`hash_with_seed`] of the words of `data` as passed through `map` (the zero-padded tail
/// word included).
#[inline]
fn hash_words(seed: u64, data: &[u8], mut map: impl FnMut(u64) -> u64) -> u64 {
    let mut acc = seed ^ (data.len() as u64).wrapping_mul(P3);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        acc = round(acc, map(u64::from_le_bytes(w)));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // The tail as a little-endian word, zero-padded: from the (overlapping) last eight
        // bytes when there are that many, which avoids a copy of variable length.
        let tail = match data.len().checked_sub(8).and_then(|at| data.get(at..)) {
            Some(last) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(last);
                u64::from_le_bytes(w) >> (8 * (8 - rest.len()))
            }
            None => rest.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b)),
        };
        acc = round(acc ^ rest.len() as u64, map(tail));
    }
    avalanche(acc)
}

/// Hash of raw statement bytes (a Query text, a Parse text or Bind parameter bytes).
/// Callers hash once and pass the value to [`super::SqlCache::analyze_hashed`] or use it as
/// the `params_hash` of the N+1 detector.
pub fn text_hash(text: &[u8]) -> u64 {
    hash_with_seed(TEXT_SEED, text)
}

/// The key of the numbers-template memo: the hash of `text` with every ASCII digit read as
/// `0`, so texts that differ only in the digits of same-length numbers share it. `None`
/// when `text` has no digit.
pub(crate) fn digits_masked_hash(text: &[u8]) -> Option<u64> {
    let mut digits = 0;
    let hash = hash_words(TEMPLATE_SEED, text, |w| {
        let d = ascii_digits(w);
        digits |= d;
        let whole = (d >> 7) * 0xff;
        (w & !whole) | ((u64::from(b'0') * ONES) & whole)
    });
    (digits != 0).then_some(hash)
}

/// The fingerprint id of a normalized statement text.
pub(crate) fn fingerprint_of(normalized: &str) -> u64 {
    fingerprint_of_bytes(normalized.as_bytes())
}

/// [`fingerprint_of`] the UTF-8 bytes of a normalized text.
pub(crate) fn fingerprint_of_bytes(normalized: &[u8]) -> u64 {
    hash_with_seed(FINGERPRINT_SEED, normalized)
}

/// A `Hasher` that passes a `u64` key through unchanged (keys are already hashes).
#[derive(Default, Clone, Copy)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_with_seed(self.0, bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// `BuildHasher` for [`PassThrough`].
#[derive(Default, Clone, Copy)]
pub(crate) struct BuildPassThrough;

impl BuildHasher for BuildPassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_TEXT: u64 = 0x223c_9f5e_ad44_32d6;
    const PINNED_FP: u64 = 0xccaa_8e0c_750e_332f;

    #[test]
    fn stable_and_seeded() {
        assert_eq!(text_hash(b"select 1"), text_hash(b"select 1"));
        assert_ne!(text_hash(b"select 1"), text_hash(b"select 2"));
        assert_ne!(text_hash(b"abc"), fingerprint_of("abc"));
        // Lengths that differ only by trailing zero bytes must differ.
        assert_ne!(text_hash(b"a"), text_hash(b"a\0"));
        assert_ne!(text_hash(b""), text_hash(b"\0"));
        // Pinned values: ids must never change between releases.
        assert_eq!(text_hash(b"select 1"), PINNED_TEXT);
        assert_eq!(
            fingerprint_of("select * from users where id = $1"),
            PINNED_FP
        );
    }

    #[test]
    fn masked_hash_reads_digits_as_zero() {
        let key = |s: &str| digits_masked_hash(s.as_bytes());
        assert_eq!(
            key("where id = 42 and x = 7"),
            key("where id = 90 and x = 0")
        );
        assert_eq!(key("t1234567890"), key("t0000000000"));
        assert_ne!(key("where id = 42"), key("where id = 421"));
        assert_ne!(key("where id = 42"), key("where id = 4a"));
        assert_eq!(key("no digits here"), None);
        assert_ne!(key("x1"), Some(text_hash(b"x0")));
        // Every byte at every position of a word and of the tail.
        for len in [8, 13] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    let mut masked = v.clone();
                    if b.is_ascii_digit() {
                        masked[pos] = b'0';
                    }
                    let want = b
                        .is_ascii_digit()
                        .then(|| hash_with_seed(TEMPLATE_SEED, &masked));
                    assert_eq!(
                        digits_masked_hash(&v),
                        want,
                        "byte {b:#x} at {pos} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn all_lengths_distinct() {
        let data = [7u8; 40];
        let mut seen = std::collections::HashSet::new();
        for n in 0..data.len() {
            assert!(seen.insert(text_hash(&data[..n])));
        }
    }
}
