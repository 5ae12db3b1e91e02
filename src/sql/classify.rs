//! Statement classification from the sqlparser (PostgreSQL dialect) AST: statement kind,
//! tables read and written, functions called, volatility, and flags. The walk is explicit
//! (sqlparser's `visitor` feature is not enabled); any construct it does not understand sets
//! `Flags::opaque`, which makes the statement volatile — the classifier fails closed.

use super::walk::Walker;
use super::{Analysis, Flags, Lookup, StatementKind};
use sqlparser::ast::{BinaryOperator, Expr, SetExpr, Statement, TableFactor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::sync::Arc;

/// Classifies `text` into its [`Analysis`]; `normalized` is its fingerprint text (with id
/// `fingerprint`), `parse_safe` whether it may be handed to sqlparser, `multi` what the
/// lexer saw.
pub(crate) fn classify(
    text: &str,
    normalized: Arc<str>,
    fingerprint: u64,
    parse_safe: bool,
    multi: bool,
) -> Analysis {
    let statements = if parse_safe {
        Parser::parse_sql(&PostgreSqlDialect {}, text).ok()
    } else {
        None
    };
    let Some(statements) = statements else {
        return Analysis {
            fingerprint,
            normalized,
            kind: StatementKind::Unknown,
            parsed: false,
            read_only: false,
            volatile: true,
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            functions: Vec::new(),
            flags: Flags {
                multi_statement: multi,
                opaque: true,
                ..Flags::default()
            },
            lookup: None,
        };
    };
    let mut w = Walker::default();
    let mut kind = StatementKind::Empty;
    let mut all_read_only = true;
    for (i, s) in statements.iter().enumerate() {
        let (k, ro) = w.statement(s);
        if i == 0 {
            kind = if w.unmodelled {
                kind_from_first_word(&normalized)
            } else {
                k
            };
        }
        all_read_only &= ro;
    }
    let mut flags = w.flags;
    flags.multi_statement = statements.len() > 1 || multi;
    let read_only = all_read_only
        && !flags.multi_statement
        && !w.side_effects
        && !flags.for_update_share
        && !flags.select_into
        && !flags.writable_cte
        && w.writes.is_empty();
    let lookup = single_lookup(&statements, &normalized, &mut w);
    Analysis {
        fingerprint,
        normalized,
        kind,
        parsed: true,
        read_only,
        volatile: w.volatile || flags.opaque,
        tables_read: w.reads,
        tables_written: w.writes,
        functions: w.functions,
        flags,
        lookup,
    }
}

/// Kind of a statement sqlparser parsed into a variant the walker does not model.
fn kind_from_first_word(normalized: &str) -> StatementKind {
    let first = normalized.split([' ', '(']).next().unwrap_or("");
    match first {
        "create" | "alter" | "drop" | "grant" | "revoke" | "comment" | "reindex" | "cluster"
        | "refresh" | "security" | "truncate" | "rename" => StatementKind::Ddl,
        _ => StatementKind::Utility,
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip(inner),
        _ => e,
    }
}

fn is_param_or_literal(e: &Expr) -> bool {
    match strip(e) {
        Expr::Value(_) => true,
        Expr::Cast { expr, .. } => matches!(strip(expr), Expr::Value(_)),
        _ => false,
    }
}

/// `SELECT … FROM one_table WHERE col = $n` (or a literal): the N+1 lookup shape.
fn single_lookup(stmts: &[Statement], normalized: &str, w: &mut Walker) -> Option<Lookup> {
    let [Statement::Query(q)] = stmts else {
        return None;
    };
    if q.with.is_some() || !q.locks.is_empty() {
        return None;
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let [from] = s.from.as_slice() else {
        return None;
    };
    let TableFactor::Table {
        name, args: None, ..
    } = &from.relation
    else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::Eq,
        right,
    } = strip(s.selection.as_ref()?)
    else {
        return None;
    };
    let column = match (strip(left), strip(right)) {
        (c, v) | (v, c) if is_param_or_literal(v) && !is_param_or_literal(c) => c,
        _ => return None,
    };
    let parts = match column {
        Expr::Identifier(id) => vec![Walker::ident_text(id)],
        Expr::CompoundIdentifier(ids) => ids.iter().map(Walker::ident_text).collect(),
        _ => return None,
    };
    let table = w.table_name(name)?;
    let column_expr = parts.join(".");
    let rewrite = any_rewrite(normalized, &column_expr);
    Some(Lookup {
        table,
        column: parts.last().cloned().unwrap_or_default(),
        rewrite,
    })
}

/// `… col = $n …` → `… col = any($n) …` when the pattern occurs exactly once.
fn any_rewrite(normalized: &str, column_expr: &str) -> Option<String> {
    let needle = format!("{column_expr} = $");
    let mut hits = normalized.match_indices(&needle);
    let (at, _) = hits.next()?;
    if hits.next().is_some() {
        return None;
    }
    let before = normalized[..at].chars().next_back();
    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '"') {
        return None;
    }
    let digits_at = at + needle.len();
    let digits = normalized[digits_at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let end = digits_at + digits;
    let tail = &normalized[end..];
    if digits == 0 || !(tail.is_empty() || tail.starts_with([' ', ')'])) {
        return None;
    }
    Some(format!(
        "{}{column_expr} = any(${}){tail}",
        &normalized[..at],
        &normalized[digits_at..end]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_shapes() {
        assert_eq!(
            any_rewrite("select * from t where id = $1", "id").as_deref(),
            Some("select * from t where id = any($1)")
        );
        assert_eq!(
            any_rewrite("select * from t where t.id = $1 limit $2", "t.id").as_deref(),
            Some("select * from t where t.id = any($1) limit $2")
        );
        assert_eq!(any_rewrite("select * from t where xid = $1", "id"), None);
        assert_eq!(
            any_rewrite("select * from t where id = $1::int", "id"),
            None
        );
    }

    #[test]
    fn first_word_fallback() {
        assert_eq!(
            kind_from_first_word("create extension x"),
            StatementKind::Ddl
        );
        assert_eq!(kind_from_first_word("vacuum t"), StatementKind::Utility);
    }
}
