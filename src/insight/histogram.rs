//! A fixed-size log-bucketed latency histogram in microseconds: exact below 8 µs, then 8
//! sub-buckets per power of two (≤ 12.5 % bucket width, values reported at the bucket
//! midpoint), up to 2^36 µs (~19 h; larger values land in the last bucket). 272 `u32`
//! counters (saturating), mergeable, so percentiles survive folding rows together.

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const MAX_EXP: u32 = 35;
/// Number of buckets.
pub(crate) const BUCKETS: usize = SUB + (MAX_EXP as usize - SUB_BITS as usize + 1) * SUB;
const MAX_VALUE: u64 = (1 << (MAX_EXP + 1)) - 1;

#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u32; BUCKETS]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
        }
    }
}

fn bucket(us: u64) -> usize {
    let v = us.min(MAX_VALUE);
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// Representative value (midpoint) of bucket `i`.
fn value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = ((i - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((i - SUB) % SUB) as u64;
    let width = 1u64 << (e - SUB_BITS);
    (SUB as u64 + sub) * width + width / 2
}

impl Histogram {
    pub(crate) fn record(&mut self, us: u64) {
        let b = bucket(us);
        self.counts[b] = self.counts[b].saturating_add(1);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// The value at quantile `q` (0..=1), in µs; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let n: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return value(i);
            }
        }
        value(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..5_000u64).chain([1 << 20, (1 << 20) + 1, MAX_VALUE, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS);
            last = b;
            if v > 0 && v < MAX_VALUE {
                let rep = value(b) as f64;
                assert!((rep - v as f64).abs() / v as f64 <= 0.125, "{v} -> {rep}");
            }
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 10);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.1, "{p50}");
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.1, "{p99}");
        let mut other = Histogram::default();
        other.record(1_000_000);
        h.merge(&other);
        assert!(h.quantile(1.0) > 900_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
