//! The client-facing notice for a detected burst (sent as a NoticeResponse, severity
//! WARNING, SQLSTATE 01000, when `n_plus_one_notice` is on) and its wording. Statements in
//! the text are normalized (no parameter values) and shortened.

use super::events::{PatternEvent, PatternKind};
use crate::sql::Lookup;

/// SQLSTATE of the notice (`warning`).
pub const NOTICE_SQLSTATE: &str = "01000";
/// Severity of the notice.
pub const NOTICE_SEVERITY: &str = "WARNING";

const MAX_STATEMENT_CHARS: usize = 160;

/// What the proxy sends the client when a burst is detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: PatternKind,
    /// The primary message (`M` field).
    pub message: String,
    /// `D` field, when any.
    pub detail: Option<String>,
    /// `H` field: the suggested rewrite.
    pub hint: Option<String>,
}

/// `s` cut to at most `max` characters, with `…` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

pub(crate) fn notice_for(e: &PatternEvent, lookup: Option<&Lookup>) -> Notice {
    let stmt = shorten(&e.statement, MAX_STATEMENT_CHARS);
    let ms = e.span.as_millis();
    match e.kind {
        PatternKind::NPlusOne => {
            let source = e
                .source
                .as_deref()
                .map(|s| format!(" after \"{}\"", shorten(s, MAX_STATEMENT_CHARS)))
                .unwrap_or_default();
            let hint = match lookup {
                Some(l) => {
                    let example = l.rewrite.as_deref().map_or_else(
                        || format!("… where {} = any($1)", l.column),
                        |r| shorten(r, MAX_STATEMENT_CHARS),
                    );
                    format!(
                        "fetch all rows in one query: \"{example}\" with $1 an array of the {} values (e.g. '{{101,102,103}}'), or eager-load them in the ORM",
                        l.column
                    )
                }
                None => "fetch the rows in one query (a join, or = any($1) with an array of keys) or eager-load them in the ORM".to_string(),
            };
            Notice {
                kind: e.kind,
                message: format!(
                    "pgferry: N+1 query pattern: \"{stmt}\" ran {} times with {} different parameters in {ms} ms{source}",
                    e.count, e.distinct_params
                ),
                detail: Some(format!("fingerprint {:016x}", e.fingerprint)),
                hint: Some(hint),
            }
        }
        PatternKind::Duplicate => Notice {
            kind: e.kind,
            message: format!(
                "pgferry: duplicate query: \"{stmt}\" ran {} times with identical parameters in {ms} ms",
                e.count
            ),
            detail: Some(format!("fingerprint {:016x}", e.fingerprint)),
            hint: Some("reuse the first result (cache it in the application) instead of asking again".to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_is_char_safe() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
