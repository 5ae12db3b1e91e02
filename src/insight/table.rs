//! Admin-console result sets: [`Table`] and the `SHOW QUERIES`, `SHOW N_PLUS_ONE` and
//! `SHOW N_PLUS_ONE_TOTALS` renderings, plus UTC timestamp formatting (no date crate).

use super::Insight;
use std::time::{SystemTime, UNIX_EPOCH};

/// A text result set: column names and rows of nullable text cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// `YYYY-MM-DD HH:MM:SS.mmmZ` in UTC.
pub(crate) fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn s<T: ToString>(v: T) -> Option<String> {
    Some(v.to_string())
}

impl Insight {
    /// `SHOW QUERIES`: one row per (database, fingerprint), by total time descending.
    pub fn show_queries(&self) -> Table {
        let rows = self
            .query_summaries()
            .into_iter()
            .map(|q| {
                let apps = q
                    .application_names
                    .iter()
                    .map(|(a, n)| format!("{a}:{n}"))
                    .collect::<Vec<_>>()
                    .join(",");
                vec![
                    s(&q.database),
                    q.fingerprint.map(|f| format!("{f:016x}")),
                    s(&q.query),
                    s(q.calls),
                    s(q.errors),
                    s(q.rows),
                    s(q.total_time.as_micros()),
                    s(q.mean_us),
                    s(q.p50_us),
                    s(q.p95_us),
                    s(q.p99_us),
                    s(format_time(q.first_seen)),
                    s(format_time(q.last_seen)),
                    s(apps),
                ]
            })
            .collect();
        Table {
            columns: vec![
                "database",
                "fingerprint",
                "query",
                "calls",
                "errors",
                "rows",
                "total_time_us",
                "mean_time_us",
                "p50_us",
                "p95_us",
                "p99_us",
                "first_seen",
                "last_seen",
                "application_names",
            ],
            rows,
        }
    }

    /// `SHOW N_PLUS_ONE`: recent N+1 and duplicate events, newest first.
    pub fn show_n_plus_one(&self) -> Table {
        let rows = self
            .events()
            .into_iter()
            .map(|e| {
                vec![
                    s(e.id),
                    s(e.kind.as_str()),
                    s(&e.database),
                    s(&e.user),
                    s(&e.application_name),
                    s(&e.client_addr),
                    s(format!("{:016x}", e.fingerprint)),
                    s(&e.statement),
                    e.source.as_deref().map(str::to_string),
                    s(e.count),
                    s(e.distinct_params),
                    s(e.span.as_millis()),
                    s(format!("{:.3}", e.server_time.as_secs_f64() * 1e3)),
                    s(format_time(e.detected_at)),
                    s(if e.open { "open" } else { "closed" }),
                    e.suggestion,
                ]
            })
            .collect();
        Table {
            columns: vec![
                "id",
                "kind",
                "database",
                "user",
                "application_name",
                "client_addr",
                "fingerprint",
                "statement",
                "source",
                "count",
                "distinct_params",
                "span_ms",
                "server_time_ms",
                "detected_at",
                "state",
                "suggestion",
            ],
            rows,
        }
    }

    /// `SHOW N_PLUS_ONE_TOTALS`: per (database, fingerprint) burst counts.
    pub fn show_n_plus_one_totals(&self) -> Table {
        let rows = self
            .pattern_totals()
            .into_iter()
            .map(|t| {
                vec![
                    s(&t.database),
                    s(format!("{:016x}", t.fingerprint)),
                    s(&t.statement),
                    s(t.n_plus_one_bursts),
                    s(t.duplicate_bursts),
                    s(t.queries),
                    s(format_time(t.last_seen)),
                ]
            })
            .collect();
        Table {
            columns: vec![
                "database",
                "fingerprint",
                "statement",
                "n_plus_one_bursts",
                "duplicate_bursts",
                "queries",
                "last_seen",
            ],
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_format() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29 23:59:59
        assert_eq!(format_time(t), "2024-02-29 23:59:59.123Z");
    }
}
