//! Statement normalization for fingerprints: from the lexer's tokens, collapse `IN (…)`
//! lists, `ARRAY[…]` lists and `VALUES (…), (…)` rows whose elements have the same shape,
//! drop trailing semicolons, then render canonical text — unquoted words lower-cased, one
//! space between tokens (none inside brackets or around `.`/`::`), every literal and
//! parameter numbered `$1, $2, …` by position. Same tokens ⇒ same text ⇒ same id.
//!
//! The token vectors and the rendered text live in a per-thread scratch that is reused, so
//! normalizing a statement of a known shape ([`with_normalized`]) allocates nothing. The text
//! is rendered as bytes: every piece is a slice of the UTF-8 input cut at ASCII bytes (or its
//! end), and lower-casing touches ASCII letters only, so the bytes are always valid UTF-8.

use super::hash::{within, HIGH_BITS};
use super::lexer::{lex_into, LexStats, Tok};
use std::cell::RefCell;

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

/// Scratch buffers larger than these are dropped after use rather than kept per thread.
const MAX_KEPT_TOKENS: usize = 2 * 1024;
const MAX_KEPT_TEXT: usize = 8 * 1024;

/// What normalization learned about a statement besides its text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// True when the statement is small and shallow enough to give to sqlparser.
    pub parse_safe: bool,
    /// More than one statement (a `;` followed by more tokens).
    pub multi_statement: bool,
    /// The text holds a literal (not only `$n` parameters).
    pub literals: bool,
}

impl Shape {
    /// The owned result for `text`, the normalized text this shape was rendered with.
    pub(crate) fn with_text(self, text: &[u8]) -> Normalized {
        Normalized {
            // Always valid (see the module docs); lossy only so that no path can panic.
            text: String::from_utf8_lossy(text).into_owned(),
            parse_safe: self.parse_safe,
            multi_statement: self.multi_statement,
        }
    }
}

/// Reusable per-thread buffers (token vectors are kept empty between uses).
#[derive(Default)]
struct Scratch {
    toks: Vec<Tok<'static>>,
    collapsed: Vec<Tok<'static>>,
    text: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            toks: Vec::new(),
            collapsed: Vec::new(),
            text: Vec::new(),
        })
    };
}

impl Scratch {
    fn normalize<R>(&mut self, src: &str, f: impl FnOnce(Shape, &[u8]) -> R) -> R {
        let mut toks: Vec<Tok<'_>> = std::mem::take(&mut self.toks);
        let mut collapsed: Vec<Tok<'_>> = std::mem::take(&mut self.collapsed);
        self.text.clear();
        let shape = normalize_into(src, &mut toks, &mut collapsed, &mut self.text);
        self.toks = recycle(toks);
        self.collapsed = recycle(collapsed);
        let r = f(shape, &self.text);
        if self.text.capacity() > MAX_KEPT_TEXT {
            self.text = Vec::new();
        }
        r
    }
}

/// An emptied token vector with its capacity, retyped so it can be kept past the input's
/// lifetime (collecting an empty `vec::IntoIter` into a same-layout `Vec` keeps its buffer).
fn recycle(mut toks: Vec<Tok<'_>>) -> Vec<Tok<'static>> {
    if toks.capacity() > MAX_KEPT_TOKENS {
        return Vec::new();
    }
    toks.clear();
    toks.into_iter().map(|_| Tok::Value).collect()
}

/// Normalizes `src` and calls `f` with its shape and normalized text (UTF-8 bytes), which
/// lives in a reused per-thread buffer: nothing is allocated unless `f` does.
pub(crate) fn with_normalized<R>(src: &str, f: impl FnOnce(Shape, &[u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => scratch.normalize(src, f),
        // A call from inside `f` gets buffers of its own.
        Err(_) => Scratch::default().normalize(src, f),
    })
}

pub(crate) fn normalize(src: &str) -> Normalized {
    with_normalized(src, Shape::with_text)
}

/// Lexes `src` into `toks`, collapses lists into `collapsed` (when there may be any) and
/// renders the normalized text into `out`. The vectors and `out` must be empty.
fn normalize_into<'a>(
    src: &'a str,
    toks: &mut Vec<Tok<'a>>,
    collapsed: &mut Vec<Tok<'a>>,
    out: &mut Vec<u8>,
) -> Shape {
    let LexStats {
        operators,
        max_depth,
        literals,
        lists,
    } = lex_into(src, toks);
    let mut toks = toks.as_slice();
    while let [rest @ .., Tok::Punct(b';')] = toks {
        toks = rest;
    }
    let multi_statement = toks.contains(&Tok::Punct(b';'));
    // Without an IN/ARRAY/VALUES word, collapsing would copy the tokens unchanged.
    if lists && max_depth <= MAX_COLLAPSE_DEPTH {
        collapse(toks, collapsed);
        render(collapsed, src, out);
    } else {
        render(toks, src, out);
    }
    Shape {
        parse_safe: operators <= MAX_OPERATORS && max_depth <= MAX_DEPTH,
        multi_statement,
        literals,
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

/// Appends the canonical text of `toks` (lexed from `src`) to `out`.
fn render(toks: &[Tok<'_>], src: &str, out: &mut Vec<u8>) {
    // Rarely exceeded: literals become `$n` and spaces are added only between tokens.
    out.reserve(src.len() + src.len() / 4 + 16);
    let src = src.as_bytes();
    let mut param = 0u32;
    let mut prev: Option<&Tok<'_>> = None;
    for t in toks {
        if prev.is_some_and(|p| needs_space(p, t)) {
            out.push(b' ');
        }
        match t {
            Tok::Word(w) => push_piece(out, src, w.as_bytes(), true),
            Tok::Op(o) => push_piece(out, src, o.as_bytes(), false),
            Tok::Quoted(q) => out.extend_from_slice(q.as_bytes()),
            Tok::Value => {
                param += 1;
                out.push(b'$');
                push_decimal(param, out);
            }
            Tok::Cast => out.extend_from_slice(b"::"),
            Tok::Punct(p) => out.push(*p),
        }
        prev = Some(t);
    }
}

/// Appends `piece`, which is a slice of `src` (as every token's text is). Up to 16 bytes
/// are copied as a fixed 16-byte window of `src` with the excess cut off, which is cheaper
/// than a copy of variable length per token.
#[inline]
fn push_piece(out: &mut Vec<u8>, src: &[u8], piece: &[u8], lower: bool) {
    const WINDOW: usize = 16;
    let at = (piece.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize);
    let window = src
        .get(at..at.wrapping_add(WINDOW))
        .filter(|_| piece.len() <= WINDOW);
    match window {
        Some(w) => {
            let mut a = [0u8; WINDOW];
            a.copy_from_slice(w);
            if lower {
                lowercase(&mut a);
            }
            let end = out.len() + piece.len();
            out.extend_from_slice(&a);
            out.truncate(end);
        }
        None => {
            let start = out.len();
            out.extend_from_slice(piece);
            if lower {
                lowercase(&mut out[start..]);
            }
        }
    }
}

/// ASCII-only lower-casing (any UTF-8 stays intact): eight bytes at a time.
fn lowercase(bytes: &mut [u8]) {
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        let upper = within(x & !HIGH_BITS, b'A', b'Z') & !x;
        chunk.copy_from_slice(&(x | (upper >> 2)).to_le_bytes());
    }
    chunks.into_remainder().make_ascii_lowercase();
}

fn push_decimal(n: u32, out: &mut Vec<u8>) {
    if n >= 10 {
        push_decimal(n / 10, out);
    }
    out.push(b'0' + (n % 10) as u8);
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

    /// The renderer as it was before it wrote into a reused buffer: char by char, every
    /// statement collapsed (the reference the byte renderer must match exactly).
    fn reference(src: &str) -> String {
        let lexed = crate::sql::lexer::lex(src);
        let mut toks = lexed.toks.as_slice();
        while let [rest @ .., Tok::Punct(b';')] = toks {
            toks = rest;
        }
        let mut collapsed = Vec::new();
        if lexed.max_depth <= MAX_COLLAPSE_DEPTH {
            collapse(toks, &mut collapsed);
            toks = &collapsed;
        }
        let mut out = String::new();
        let mut param = 0u32;
        for (k, t) in toks.iter().enumerate() {
            if k > 0 && needs_space(&toks[k - 1], t) {
                out.push(' ');
            }
            let piece: String = match t {
                Tok::Word(w) => w.chars().map(|c| c.to_ascii_lowercase()).collect(),
                Tok::Quoted(q) | Tok::Op(q) => q.to_string(),
                Tok::Value => {
                    param += 1;
                    format!("${param}")
                }
                Tok::Cast => "::".into(),
                Tok::Punct(p) => char::from(*p).into(),
            };
            out += &piece;
        }
        out
    }

    #[test]
    fn byte_render_matches_reference() {
        for s in crate::sql::tests::corpus() {
            // As is, upper-cased (non-ASCII letters change too), and run together.
            for v in [s.clone(), s.to_uppercase(), s.replace(' ', "")] {
                assert_eq!(n(&v), reference(&v), "{v:?}");
            }
        }
    }

    /// Random statements built from pieces that exercise trailing `;`, signs, lists after
    /// other tokens, quoting and comments: the renderer equals the reference.
    #[test]
    fn render_matches_reference_on_token_soup() {
        const PIECES: &str = "select|SELECT|in|IN|values|array|(|)|[|]|,|;|;|-|+|-1|- 2|+3|1|'x'|$1|\"Q\"|a|B|t.c|::int|=|<>|*|--c\n|/*c*/|not|and|or|é|Ü|$$d$$|x'1f'|.5|1e-3|case|when|then|end|limit|(1, 2)|((1),(2))";
        let pieces: Vec<&str> = PIECES.split('|').collect();
        let mut next = crate::sql::tests::xorshift(0x2545_F491_4F6C_DD1D);
        for _ in 0..20_000 {
            let text = crate::sql::tests::soup(&pieces, &mut next, 20, 4);
            let got = normalize(&text);
            assert_eq!(got.text, reference(&text), "{text:?}");
            let lexed = crate::sql::lexer::lex(&text);
            let mut toks = lexed.toks.as_slice();
            while let [rest @ .., Tok::Punct(b';')] = toks {
                toks = rest;
            }
            assert_eq!(
                got.multi_statement,
                toks.contains(&Tok::Punct(b';')),
                "{text:?}"
            );
        }
    }

    #[test]
    fn word_wise_lowercase_matches_std() {
        // Every byte value at every position of a chunk and of the tail.
        for len in [8, 13, 16] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut v: Vec<u8> = (0..len).map(|i| b"AzZa@[`{"[i % 8]).collect();
                    v[pos] = b;
                    let mut want = v.clone();
                    want.make_ascii_lowercase();
                    lowercase(&mut v);
                    assert_eq!(v, want, "byte {b:#x} at {pos} of {len}");
                }
            }
        }
    }

    #[test]
    fn nested_use_and_large_input_are_independent() {
        // A call inside another's callback gets its own buffers.
        let (outer, inner) = with_normalized("SELECT A FROM B WHERE C IN (1, 2)", |_, o| {
            (o.to_owned(), n("select x from y where z = 'q'"))
        });
        assert_eq!(outer, b"select a from b where c in ($1)");
        assert_eq!(inner, "select x from y where z = $1");
        // A huge statement (whose buffers are not kept) then a small one.
        let big = format!("select {} from t", "a, ".repeat(20_000));
        assert!(n(&big).ends_with("a, a, from t"));
        assert_eq!(n("select 1"), "select $1");
        let shape = with_normalized("select 1 where a = $1", |s, _| s);
        assert!(shape.literals && shape.parse_safe && !shape.multi_statement);
        assert!(!with_normalized("select $1, $2", |s, _| s).literals);
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
