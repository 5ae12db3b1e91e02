//! Fixed-bucket histograms on plain atomics. Recording a sample is a short scan of the bounds
//! and two relaxed additions: no allocation, no epoch, no upkeep (the recorder's own
//! histograms queue every sample and fold them later, which cost more per query than the rest
//! of the accounting together). Rendered by hand in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in seconds (0.1 ms to 1 min), as rendered in `le`.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// The same bounds in nanoseconds, for the comparison on the recording path.
const BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    60_000_000_000,
];

/// One histogram: per-bucket counts (not cumulative; the last counts samples above every
/// bound) and the sum of all samples in nanoseconds.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 17],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (the last is `+Inf`, the total) and the sum in seconds.
    fn snapshot(&self) -> ([u64; 17], f64) {
        let mut out = [0u64; 17];
        let mut total = 0u64;
        for (o, c) in out.iter_mut().zip(&self.counts) {
            total += c.load(Ordering::Relaxed);
            *o = total;
        }
        (out, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }

    /// Appends the `_bucket`, `_sum` and `_count` series of `name` with `labels` (already
    /// rendered as `k="v",…`, without braces).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (cumulative, sum) = self.snapshot();
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, n) in BUCKETS.iter().zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let total = cumulative[16];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {total}");
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        for (s, ns) in BUCKETS.iter().zip(BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
    }

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100)); // exactly on the first bound
        h.record(Duration::from_micros(101));
        h.record(Duration::from_secs(61)); // above every bound
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.00025\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"60\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 3\n"), "{s}");
        assert!(s.contains("x_sum{a=\"b\"} 61.000201\n"), "{s}");
    }

    #[test]
    fn without_labels_no_braces() {
        let h = Histogram::default();
        h.record(Duration::from_millis(2));
        let mut s = String::new();
        h.render(&mut s, "x", "");
        assert!(s.contains("x_bucket{le=\"0.0025\"} 1\n"), "{s}");
        assert!(s.contains("x_count 1\n"), "{s}");
        assert!(s.contains("x_sum 0.002\n"), "{s}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
