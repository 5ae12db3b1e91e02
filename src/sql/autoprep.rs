//! `auto_prepare`: which integer literals of a simple-protocol statement can become
//! parameters of a server-side prepared statement without changing what the statement means.
//!
//! A literal like `42` is a constant of type `integer` (int4) when its value fits in 32 bits.
//! A parameter declared `int4` is an expression of that same type, so in an *expression*
//! position the two resolve to the same operators, casts and result types, and give the same
//! value. The planner therefore only turns a number into a parameter where the grammar is
//! certain to read an expression, and leaves every other number in the text as written:
//! - it follows `=` `<>` `!=` `<` `>` `<=` `>=` `+` `-` `*` `/` `%`, or `LIMIT`, `OFFSET`,
//!   `BETWEEN`, `AND`, `OR`, `WHEN`, `THEN`, `ELSE`, or it is an item of an `IN (…)` list or
//!   of a `VALUES (…), (…)` row;
//! - it has at most 9 digits (so its value fits in int4 whatever the digits are).
//!
//! That keeps, for instance, `ORDER BY 2` (an output-column position, which a parameter would
//! turn into a constant sort key), type modifiers (`varchar(10)`), array subscripts and
//! select-list constants exactly as they were.
//!
//! Only single `SELECT`/`INSERT`/`UPDATE`/`DELETE`/`WITH` statements whose literals are all
//! plain integers are planned, and only when at least one number becomes a parameter: a text
//! with string literals would make a new server statement for every distinct string.
//! Statements with `GROUP`, `DISTINCT` or `CONFLICT` are not: there PostgreSQL requires one
//! expression to equal another, which two parameters never are.

use super::lexer::{lex_numbers, same_but_digits, Tok};

/// Type OID of `int4`, declared for every parameter.
const INT4_OID: u32 = 23;

/// One number token of the planned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number {
    pub start: u32,
    pub end: u32,
    /// Sent as a parameter; otherwise it stays in the statement text.
    pub param: bool,
}

/// The prepared form of a statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every number token of the text, in order.
    pub numbers: Box<[Number]>,
    /// The statement for the server: the text with the k-th parameter number as `$k`.
    pub statement: String,
    /// The Parse message's parameter-type section: count, then one int4 OID per parameter.
    pub param_types: Vec<u8>,
    /// How many numbers are parameters.
    params: usize,
}

impl Plan {
    pub fn params(&self) -> usize {
        self.params
    }

    /// Maps a 1-based character position in `statement` (an error's `P` field) to the
    /// position of the same character in the original text; a position inside `$k` maps to
    /// the start of the number it replaced. Only ASCII is replaced, so characters and bytes
    /// shift alike.
    pub fn original_position(&self, pos: u64) -> u64 {
        let mut shift: i64 = 0; // original length minus statement length, so far
        let mut k = 0usize;
        for n in self.numbers.iter().filter(|n| n.param) {
            k += 1;
            let len = i64::from(n.end - n.start);
            let placeholder = 1 + digits(k) as i64;
            // The placeholder's first character, 1-based, in the statement.
            let at = i64::from(n.start) + 1 - shift;
            let p = pos as i64;
            if p < at {
                break;
            }
            if p < at + placeholder {
                return (at + shift) as u64;
            }
            shift += len - placeholder;
        }
        (pos as i64 + shift).max(1) as u64
    }
}

/// Whether a unary sign (folded into the number by the lexer) comes before `start`.
fn signed(b: &[u8], start: usize) -> bool {
    b[..start]
        .iter()
        .rev()
        .find(|c| !c.is_ascii_whitespace())
        .is_some_and(|c| matches!(c, b'-' | b'+'))
}

fn digits(mut k: usize) -> usize {
    let mut d = 1;
    while k >= 10 {
        k /= 10;
        d += 1;
    }
    d
}

/// Keywords after which an expression always follows.
const BEFORE_EXPR: &[&str] = &[
    "LIMIT", "OFFSET", "BETWEEN", "AND", "OR", "WHEN", "THEN", "ELSE",
];
/// Operators after which an expression always follows.
const OPS: &[&str] = &[
    "=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%",
];
/// Statements that take parameters.
const FIRST: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"];
/// Clauses whose expressions PostgreSQL matches against others.
const MATCHED: &[&str] = &["GROUP", "DISTINCT", "CONFLICT"];
/// Numbers with more digits may not fit in int4.
const MAX_PARAM_DIGITS: u32 = 9;

/// The plan for `text`, or `None` when it has nothing to gain or is not a statement the
/// planner can prove safe.
pub fn plan(text: &str) -> Option<Plan> {
    let mut toks = Vec::new();
    let spans = lex_numbers(text, &mut toks);
    let first = toks.first()?;
    if !FIRST.iter().any(|k| first.is_word(k)) {
        return None;
    }
    // One statement: a `;` only at the end.
    let body = toks.len()
        - toks
            .iter()
            .rev()
            .take_while(|t| **t == Tok::Punct(b';'))
            .count();
    if toks[..body].contains(&Tok::Punct(b';')) {
        return None;
    }
    // PostgreSQL compares expressions for equality in GROUP BY (a grouped select-list
    // expression), DISTINCT (ON) against ORDER BY and ON CONFLICT against an index: `x / 10`
    // written twice would become `x / $1` and `x / $2`, which are not equal.
    if toks.iter().any(|t| MATCHED.iter().any(|k| t.is_word(k))) {
        return None;
    }
    let values = toks.iter().filter(|t| **t == Tok::Value).count();
    let b = text.as_bytes();
    let plain = |&(s, e): &(usize, usize)| b[s..e].iter().all(u8::is_ascii_digit);
    if values != spans.len() || !spans.iter().all(plain) {
        return None; // strings, parameters, or numbers with a point, exponent or `_`
    }
    // Bracket stack: whether each open bracket holds a list of expressions (the values of
    // `IN (…)`, a row of `VALUES (…), (…)`) and whether it is a row; and whether the last one
    // closed was a row (so `, (` after it opens the next row).
    let mut lists: Vec<(bool, bool)> = Vec::new();
    let mut closed_row = false;
    let mut numbers = Vec::with_capacity(spans.len());
    let mut next = spans.iter();
    for (i, t) in toks.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| toks[j]);
        match *t {
            Tok::Punct(b'(') => {
                let next_row = prev == Some(Tok::Punct(b','))
                    && i >= 2
                    && toks[i - 2] == Tok::Punct(b')')
                    && closed_row;
                let row = prev.is_some_and(|p| p.is_word("VALUES")) || next_row;
                // `IN (SELECT …)` is a subquery, `IN ((1, 2), …)` a list of rows.
                let in_list = prev.is_some_and(|p| p.is_word("IN"))
                    && !matches!(toks.get(i + 1), Some(Tok::Word(_)) | Some(Tok::Punct(b'(')));
                lists.push((row || in_list, row));
            }
            Tok::Punct(b'[') => lists.push((false, false)),
            Tok::Punct(b')') | Tok::Punct(b']') => {
                closed_row = lists.pop().is_some_and(|(_, row)| row);
            }
            Tok::Value => {
                let &(start, end) = next.next()?;
                let in_list = lists.last().is_some_and(|&(list, _)| list);
                let expr = match prev {
                    Some(Tok::Op(op)) => OPS.contains(&op),
                    // `OFFSET n ROWS` takes a signed constant, not `-$1`.
                    Some(w @ Tok::Word(_)) => {
                        BEFORE_EXPR.iter().any(|k| w.is_word(k))
                            && !(w.is_word("OFFSET") && signed(b, start))
                    }
                    Some(Tok::Punct(b'(')) | Some(Tok::Punct(b',')) => in_list,
                    _ => false,
                };
                let short = u32::try_from(end - start).ok()? <= MAX_PARAM_DIGITS;
                numbers.push(Number {
                    start: u32::try_from(start).ok()?,
                    end: u32::try_from(end).ok()?,
                    param: expr && short,
                });
            }
            _ => {}
        }
    }
    let params = numbers.iter().filter(|n| n.param).count();
    if params == 0 || params > usize::from(u16::MAX >> 1) {
        return None;
    }
    let mut statement = String::with_capacity(text.len() + params);
    let mut at = 0usize;
    let mut k = 0usize;
    for n in numbers.iter().filter(|n| n.param) {
        k += 1;
        statement.push_str(&text[at..n.start as usize]);
        statement.push('$');
        statement.push_str(&k.to_string());
        at = n.end as usize;
    }
    statement.push_str(&text[at..]);
    let mut param_types = Vec::with_capacity(2 + 4 * params);
    param_types.extend_from_slice(&(params as i16).to_be_bytes());
    for _ in 0..params {
        param_types.extend_from_slice(&INT4_OID.to_be_bytes());
    }
    Some(Plan {
        numbers: numbers.into_boxed_slice(),
        statement,
        param_types,
        params,
    })
}

/// Whether `text` has the same tokens as the text `plan` was made from (`template`), with
/// the same digits in every number that stays in the statement: then the plan's statement,
/// bound to `text`'s parameter numbers, means what `text` means.
pub fn fits(template: &str, plan: &Plan, text: &[u8]) -> bool {
    let spans = plan.numbers.iter().map(|n| (n.start, n.end, !n.param));
    same_but_digits(template, spans, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(text: &str) -> Option<String> {
        plan(text).map(|p| p.statement)
    }

    /// Each text is planned into the statement next to it.
    fn assert_planned(cases: &[(&str, &str)]) {
        for &(text, want) in cases {
            assert_eq!(stmt(text).as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn numbers_in_expression_positions_become_int4_parameters() {
        assert_planned(&[(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        )]);
        let p = plan(
            "update t set v = v + -5 where id in (1, 2,3) and x between 4 and 70 limit 10 offset 0",
        )
        .unwrap();
        assert_eq!(
            p.statement,
            "update t set v = v + -$1 where id in ($2, $3,$4) and x between $5 and $6 limit $7 offset $8"
        );
        assert_eq!(p.params(), 8);
        assert_planned(&[
            // pgbench's tpcb-like INSERT; the column list is not a row.
            (
                "INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (7, 1, 48213, -1234, CURRENT_TIMESTAMP);",
                "INSERT INTO h (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, -$4, CURRENT_TIMESTAMP);",
            ),
            (
                "insert into t values (1, f(2)), (3, 4) returning (5)",
                "insert into t values ($1, f(2)), ($2, $3) returning (5)",
            ),
        ]);
        assert_eq!(&p.param_types[..2], &8i16.to_be_bytes());
        assert_eq!(&p.param_types[2..6], &23u32.to_be_bytes());
    }

    #[test]
    fn positions_that_are_not_expressions_keep_their_numbers() {
        // Output-column positions, a select-list constant, a type modifier, a subscript,
        // DISTINCT ON, a 10-digit number.
        assert_planned(&[
            (
                "select a, 1, b::varchar(10), c[2] from t where d = 3 order by 2 desc, 1",
                "select a, 1, b::varchar(10), c[2] from t where d = $1 order by 2 desc, 1",
            ),
            (
                "select a from t where id = 1234567890 and k = 5",
                "select a from t where id = 1234567890 and k = $1",
            ),
            // After an IN list, `, (2)` is not a row.
            (
                "select f(a in (1), (2)) from t where b = 3",
                "select f(a in ($1), (2)) from t where b = $2",
            ),
            // A subquery inside IN is not a list of values.
            (
                "select * from t where a in (select b from u order by 1, 2) and c = 7",
                "select * from t where a in (select b from u order by 1, 2) and c = $1",
            ),
        ]);
    }

    #[test]
    fn statements_that_cannot_gain_or_take_parameters_are_not_planned() {
        for text in [
            "select 1",
            "select * from t where name = 'x' and id = 5",
            "select * from t where id = $1 and k = 5",
            "select * from t where x = 1.5",
            "select * from t where x = 1e5",
            "set statement_timeout = 5000",
            "explain select * from t where id = 5",
            "select * from t where id = 5; select 2",
            // Expressions that must equal others.
            "select x / 10, count(*) from t where y = 1 group by x / 10",
            "select distinct x + 1 from t where y = 2 order by x + 1",
            "select distinct on (x / 10) x from t order by x / 10, y = 3",
            "insert into t values (1) on conflict ((x / 10)) do nothing",
            "begin",
            "",
        ] {
            assert_eq!(stmt(text), None, "{text}");
        }
        assert!(stmt("select * from t where id = 5;;").is_some());
        assert_planned(&[(
            "select * from t where a = 1 offset -5 rows",
            "select * from t where a = $1 offset -5 rows",
        )]);
        assert!(stmt("with x as (select 1) select * from x where y = 2").is_some());
    }

    #[test]
    fn a_text_fits_its_template_when_only_parameter_digits_differ() {
        let template = "select a from t where id = 123 order by 1";
        let p = plan(template).unwrap();
        assert!(fits(
            template,
            &p,
            b"select a from t where id = 987 order by 1"
        ));
        assert!(!fits(
            template,
            &p,
            b"select a from t where id = 987 order by 2"
        ));
        assert!(!fits(
            template,
            &p,
            b"select a from t where id = 98 order by 1"
        ));
        assert!(!fits(
            template,
            &p,
            b"select a from t where id = 9x7 order by 1"
        ));
        assert!(!fits(
            template,
            &p,
            b"select b from t where id = 987 order by 1"
        ));
    }

    #[test]
    fn error_positions_map_back_to_the_original_text() {
        let text = "select x from t where id = 12345 and nosuch = 678901 and z = 3";
        let p = plan(text).unwrap();
        assert_eq!(
            p.statement,
            "select x from t where id = $1 and nosuch = $2 and z = $3"
        );
        let in_statement = |s: &str| p.statement.find(s).unwrap() as u64 + 1;
        let in_text = |s: &str| text.find(s).unwrap() as u64 + 1;
        assert_eq!(
            p.original_position(in_statement("x from")),
            in_text("x from")
        );
        assert_eq!(
            p.original_position(in_statement("nosuch")),
            in_text("nosuch")
        );
        assert_eq!(p.original_position(in_statement("z =")), in_text("z ="));
        assert_eq!(p.original_position(in_statement("$2")), in_text("678901"));
        assert_eq!(
            p.original_position(in_statement("$2") + 1),
            in_text("678901")
        );
    }
}
