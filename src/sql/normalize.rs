//! Statement normalization for fingerprints: from the lexer's tokens, collapse `IN (…)`
//! lists, `ARRAY[…]` lists and `VALUES (…), (…)` rows whose elements have the same shape,
//! drop trailing semicolons, then render canonical text — unquoted words lower-cased, one
//! space between tokens (none inside brackets or around `.`/`::`), every literal and
//! parameter numbered `$1, $2, …` by position. Same tokens ⇒ same text ⇒ same id.

use super::lexer::{lex, Tok};

/// Result of normalizing one statement text.
pub(crate) struct Normalized {
    pub text: String,
    /// True when the statement is small and shallow enough to give to sqlparser.
    pub parse_safe: bool,
    /// More than one statement (a `;` followed by more tokens).
    pub multi_statement: bool,
}

/// Input over these limits is fingerprinted but not parsed (deep ASTs can overflow a stack).
const MAX_OPERATORS: usize = 1_000;
const MAX_DEPTH: usize = 64;
/// Deeper input is rendered without list collapsing (collapsing recurses per bracket level).
const MAX_COLLAPSE_DEPTH: usize = 256;
/// At most this many distinct VALUES row shapes are compared against each new row.
const MAX_ROW_SHAPES: usize = 16;

pub(crate) fn normalize(src: &str) -> Normalized {
    let lexed = lex(src);
    let mut toks = lexed.toks.as_slice();
    while let [rest @ .., Tok::Punct(b';')] = toks {
        toks = rest;
    }
    let multi_statement = toks.contains(&Tok::Punct(b';'));
    let text = if lexed.max_depth <= MAX_COLLAPSE_DEPTH {
        let mut collapsed = Vec::with_capacity(toks.len());
        collapse(toks, &mut collapsed);
        render(&collapsed)
    } else {
        render(toks)
    };
    Normalized {
        text,
        parse_safe: lexed.operators <= MAX_OPERATORS && lexed.max_depth <= MAX_DEPTH,
        multi_statement,
    }
}

fn same_seq(a: &[Tok<'_>], b: &[Tok<'_>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
}

/// Index of the bracket closing the one at `open`, if any.
fn closing(toks: &[Tok<'_>], open: usize) -> Option<usize> {
    let (o, c) = match toks.get(open) {
        Some(Tok::Punct(b'(')) => (b'(', b')'),
        Some(Tok::Punct(b'[')) => (b'[', b']'),
        _ => return None,
    };
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct(p) if *p == o => depth += 1,
            Tok::Punct(p) if *p == c => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits `toks` at top-level commas.
fn split_commas<'t, 'a>(toks: &'t [Tok<'a>]) -> Vec<&'t [Tok<'a>]> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct(b'(' | b'[') => depth += 1,
            Tok::Punct(b')' | b']') => depth = depth.saturating_sub(1),
            Tok::Punct(b',') if depth == 0 => {
                parts.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts
}

fn collapse<'a>(toks: &[Tok<'a>], out: &mut Vec<Tok<'a>>) {
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        out.push(t);
        i += 1;
        let list_open = match t {
            Tok::Word(_) if t.is_word("in") => Some(b'('),
            Tok::Word(_) if t.is_word("array") => Some(b'['),
            Tok::Word(_) if t.is_word("values") => {
                i = collapse_rows(toks, i, out);
                None
            }
            _ => None,
        };
        let Some(open) = list_open else { continue };
        if toks.get(i) != Some(&Tok::Punct(open)) {
            continue;
        }
        let Some(close) = closing(toks, i) else {
            continue;
        };
        let elems: Vec<Vec<Tok<'a>>> = split_commas(&toks[i + 1..close])
            .into_iter()
            .map(|e| {
                let mut v = Vec::with_capacity(e.len());
                collapse(e, &mut v);
                v
            })
            .collect();
        out.push(toks[i]);
        if elems.iter().all(|e| same_seq(e, &elems[0])) {
            out.extend_from_slice(&elems[0]);
        } else {
            for (k, e) in elems.iter().enumerate() {
                if k > 0 {
                    out.push(Tok::Punct(b','));
                }
                out.extend_from_slice(e);
            }
        }
        out.push(toks[close]);
        i = close + 1;
    }
}

/// After `VALUES` at `i`: rows `(…), (…)`; a row with the shape of an earlier one is dropped.
/// Returns the index after the rows.
fn collapse_rows<'a>(toks: &[Tok<'a>], mut i: usize, out: &mut Vec<Tok<'a>>) -> usize {
    let mut shapes: Vec<Vec<Tok<'a>>> = Vec::new();
    loop {
        let Some(close) = closing(toks, i) else {
            return i;
        };
        let mut row = Vec::with_capacity(close + 1 - i);
        collapse(&toks[i..=close], &mut row);
        if !shapes.iter().any(|s| same_seq(s, &row)) {
            if !shapes.is_empty() {
                out.push(Tok::Punct(b','));
            }
            out.extend_from_slice(&row);
            if shapes.len() < MAX_ROW_SHAPES {
                shapes.push(row);
            }
        }
        i = close + 1;
        if toks.get(i) == Some(&Tok::Punct(b',')) && toks.get(i + 1) == Some(&Tok::Punct(b'(')) {
            i += 1;
        } else {
            return i;
        }
    }
}

/// Words after which `(` is written with a space (`in (…)`, `values (…)`); after any other
/// word it is a call (`count(*)`).
#[rustfmt::skip]
const SPACED_BEFORE_PAREN: &[&str] = &[
    "and", "or", "not", "in", "exists", "values", "as", "from", "join", "on", "where", "select",
    "using", "into", "set", "when", "then", "else", "returning", "with", "union", "intersect",
    "except", "by", "over", "filter", "within", "between", "like", "ilike", "is", "case",
    "distinct", "lateral", "having", "limit", "offset", "table", "conflict", "do", "update",
];

fn needs_space(prev: &Tok<'_>, cur: &Tok<'_>) -> bool {
    match cur {
        Tok::Punct(b')' | b']' | b',' | b';' | b'.' | b':') | Tok::Cast => return false,
        _ => {}
    }
    match prev {
        Tok::Punct(b'(' | b'[' | b'.' | b':') | Tok::Cast => return false,
        _ => {}
    }
    match cur {
        Tok::Punct(b'(') => match prev {
            Tok::Word(w) => SPACED_BEFORE_PAREN
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k)),
            Tok::Quoted(_) => false,
            _ => true,
        },
        Tok::Punct(b'[') => !matches!(
            prev,
            Tok::Word(_) | Tok::Quoted(_) | Tok::Value | Tok::Punct(b')' | b']')
        ),
        _ => true,
    }
}

fn render(toks: &[Tok<'_>]) -> String {
    let mut out = String::with_capacity(toks.len() * 6);
    let mut param = 0u32;
    let mut prev: Option<&Tok<'_>> = None;
    for t in toks {
        if prev.is_some_and(|p| needs_space(p, t)) {
            out.push(' ');
        }
        match t {
            Tok::Word(w) => out.extend(w.chars().map(|c| c.to_ascii_lowercase())),
            Tok::Quoted(q) | Tok::Op(q) => out.push_str(q),
            Tok::Value => {
                param += 1;
                out.push('$');
                out.push_str(itoa(param, &mut [0u8; 10]));
            }
            Tok::Cast => out.push_str("::"),
            Tok::Punct(p) => out.push(char::from(*p)),
        }
        prev = Some(t);
    }
    out
}

fn itoa(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).text
    }

    #[test]
    fn canonical_text() {
        assert_eq!(
            n("SELECT  a, B FROM Orders WHERE id = 42 AND \"Name\" = 'x';"),
            "select a, b from orders where id = $1 and \"Name\" = $2"
        );
        assert_eq!(n("select count(*) from t"), "select count(*) from t");
        assert_eq!(n("select count (*) from t"), "select count(*) from t");
        assert_eq!(
            n("select x::int, t.y, a[1] from t"),
            "select x::int, t.y, a[$1] from t"
        );
        assert_eq!(n("select 1; select 2;;"), "select $1; select $2");
        assert_eq!(n("where a = $3 and b = $1"), "where a = $1 and b = $2");
    }

    #[test]
    fn lists_collapse() {
        assert_eq!(
            n("select * from t where id in (1,2,3)"),
            n("select * from t where id IN (4, 5)")
        );
        assert_eq!(
            n("select * from t where id in (1,2,3)"),
            "select * from t where id in ($1)"
        );
        assert_eq!(
            n("select * from t where (a,b) in ((1,2),(3,4))"),
            "select * from t where (a, b) in (($1, $2))"
        );
        assert_eq!(n("select array[1,2,3]"), "select array[$1]");
        assert_eq!(
            n("insert into t (a,b) values (1,'x'), (2,'y'), (3, 'z')"),
            "insert into t(a, b) values ($1, $2)"
        );
        // Rows of different shapes are kept (so classification is shape-invariant).
        assert_eq!(
            n("insert into t values (1), (nextval('s')), (2)"),
            "insert into t values ($1), (nextval($2))"
        );
        // Mixed lists stay whole.
        assert_eq!(
            n("select * from t where a in (1, b)"),
            "select * from t where a in ($1, b)"
        );
        assert_eq!(
            n("select * from t where a in (select b from u where c = 1)"),
            "select * from t where a in (select b from u where c = $1)"
        );
    }

    #[test]
    fn parse_guard() {
        let deep = format!("select {}1{}", "(".repeat(100), ")".repeat(100));
        assert!(!normalize(&deep).parse_safe);
        let long = format!("select 1{}", " + 1".repeat(2000));
        assert!(!normalize(&long).parse_safe);
        assert!(normalize("select 1").parse_safe);
        assert!(normalize("select 1; select 2").multi_statement);
        assert!(!normalize("select 1;").multi_statement);
    }
}
