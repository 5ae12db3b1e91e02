//! SQL insight primitives: statement fingerprints (normalized text + stable 64-bit id) and
//! classification (kind, read-only, tables, volatility, flags, N+1 lookup shape), memoized
//! per statement text by [`SqlCache`]. Pure: no I/O, never an error — text sqlparser rejects
//! still gets a fingerprint and is classified [`StatementKind::Unknown`].
//!
//! Pipeline: [`lexer`] (total PostgreSQL tokenizer) → [`normalize`] (collapse lists, render
//! `$n` text) → [`hash`] (fingerprint id) → [`classify`] (sqlparser AST walk).

pub mod autoprep;
mod cache;
mod classify;
mod expr;
mod functions;
mod hash;
mod lexer;
mod normalize;
mod walk;

#[cfg(test)]
mod tests;

pub use cache::{SqlCache, SqlCacheStats};
pub use hash::text_hash;
pub(crate) use hash::{digits_masked_hash, BuildPassThrough};

use std::sync::Arc;

/// What a statement is, from its first statement when there are several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    /// CREATE/ALTER/DROP/TRUNCATE/GRANT/REVOKE/COMMENT/….
    Ddl,
    /// BEGIN/START TRANSACTION/COMMIT/ROLLBACK/SAVEPOINT/RELEASE.
    Transaction,
    /// SET/RESET/DISCARD/SHOW.
    Session,
    /// EXPLAIN, VACUUM, ANALYZE, LISTEN/NOTIFY, LOCK, PREPARE/EXECUTE, cursors, CALL, ….
    Utility,
    /// Empty query (only whitespace, comments or `;`).
    Empty,
    /// sqlparser could not parse it (or it was too large/deep to parse safely).
    Unknown,
}

impl StatementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::Copy => "copy",
            Self::Ddl => "ddl",
            Self::Transaction => "transaction",
            Self::Session => "session",
            Self::Utility => "utility",
            Self::Empty => "empty",
            Self::Unknown => "unknown",
        }
    }
}

/// Boolean properties of a statement that matter to caching and routing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE` anywhere.
    pub for_update_share: bool,
    /// `SELECT … INTO`.
    pub select_into: bool,
    /// A data-modifying statement inside `WITH`.
    pub writable_cte: bool,
    /// Creates a temporary table/view or names a `pg_temp` relation.
    pub temp_table: bool,
    /// More than one statement in the text.
    pub multi_statement: bool,
    /// Reads `pg_catalog`, `information_schema` or an unqualified `pg_*` relation.
    pub catalog: bool,
    /// `TABLESAMPLE`.
    pub tablesample: bool,
    /// Changes session state: SET/RESET/DISCARD/`set_config()`.
    pub session_state: bool,
    /// DECLARE/FETCH/CLOSE.
    pub cursor: bool,
    /// Contains a construct the classifier does not model (implies `volatile`), or was not
    /// parsed at all.
    pub opaque: bool,
}

/// `SELECT … FROM table WHERE column = $n` (or `= literal`): one row fetched by key — the
/// statement shape an N+1 burst repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Relation as written (schema-qualified if it was).
    pub table: String,
    /// Column compared, without qualifier.
    pub column: String,
    /// The normalized text with `col = $n` replaced by `col = any($n)`, when unambiguous.
    pub rewrite: Option<String>,
}

/// Fingerprint and classification of one statement text. Everything here is a function of
/// the normalized text, so texts differing only in literals share one `Arc<Analysis>`.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Stable 64-bit id of `normalized`.
    pub fingerprint: u64,
    /// Canonical text: literals and parameters as `$1, $2, …`, lists collapsed.
    pub normalized: Arc<str>,
    pub kind: StatementKind,
    /// sqlparser parsed it; when false, the flags below are fail-closed defaults.
    pub parsed: bool,
    /// Writes nothing, locks nothing, changes no session state, single statement.
    pub read_only: bool,
    /// May return different results for the same text: calls a function off the IMMUTABLE
    /// allowlist, reads the clock/session (`now()`, `current_user`, date/time casts), samples,
    /// or was not (fully) understood.
    pub volatile: bool,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    /// Functions called, lower-cased, as written (`lower`, `myschema.f`).
    pub functions: Vec<String>,
    pub flags: Flags,
    pub lookup: Option<Lookup>,
}

impl Analysis {
    /// Safe to serve from a result cache as far as the text alone can tell: parsed,
    /// read-only, not volatile, no locking, no temp or catalog relations.
    pub fn cacheable(&self) -> bool {
        self.parsed
            && self.kind == StatementKind::Select
            && self.read_only
            && !self.volatile
            && !self.flags.opaque
            && !self.flags.temp_table
            && !self.flags.catalog
    }

    /// The fingerprint as 16 lower-case hex digits.
    pub fn fingerprint_hex(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }
}

/// Fingerprints and classifies `text` without any memoization (the cold path).
pub fn analyze_uncached(text: &str) -> Analysis {
    let n = normalize::normalize(text);
    build(text, n)
}

fn build(text: &str, n: normalize::Normalized) -> Analysis {
    let fingerprint = hash::fingerprint_of(&n.text);
    classify::classify(
        text,
        Arc::from(n.text),
        fingerprint,
        n.parse_safe,
        n.multi_statement,
    )
}

/// Normalized text and fingerprint only (no parse): what [`SqlCache`] computes before it
/// looks the shape up.
pub fn fingerprint(text: &str) -> (u64, String) {
    let n = normalize::normalize(text);
    (hash::fingerprint_of(&n.text), n.text)
}
