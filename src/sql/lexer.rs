//! A small, total PostgreSQL lexer used for fingerprinting: it never fails and never panics
//! on any UTF-8 input. Literals of every kind (strings, E/B/X/U& strings, dollar-quoted
//! bodies, numbers, negative numbers) and `$n` parameters become [`Tok::Value`]; comments and
//! whitespace disappear. It also measures operator count and bracket depth so the caller can
//! refuse to hand pathological input to sqlparser (whose AST recursion could overflow a
//! small task stack).
//!
//! [`number_spans`] and [`same_but_numbers`] let a caller reuse one text's normalization for
//! another text that differs from it only in the digits of its integer literals.

use super::hash::{within, HIGH_BITS, ONES};

/// One token of a statement. Slices borrow the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    /// Unquoted identifier or keyword, original case.
    Word(&'a str),
    /// Quoted identifier including its double quotes (`"Foo"`, `U&"x"`).
    Quoted(&'a str),
    /// A literal or a `$n` parameter.
    Value,
    /// An operator (`=`, `<>`, `->>`, `||`, …).
    Op(&'a str),
    /// `::`
    Cast,
    /// Single-byte punctuation: `( ) [ ] , ; . :` and any other ASCII byte.
    Punct(u8),
}

impl Tok<'_> {
    /// Token equality that ignores the case of unquoted words.
    pub(crate) fn same(&self, other: &Tok<'_>) -> bool {
        match (self, other) {
            (Tok::Word(a), Tok::Word(b)) => a.eq_ignore_ascii_case(b),
            (Tok::Quoted(a), Tok::Quoted(b)) | (Tok::Op(a), Tok::Op(b)) => a == b,
            (Tok::Value, Tok::Value) | (Tok::Cast, Tok::Cast) => true,
            (Tok::Punct(a), Tok::Punct(b)) => a == b,
            _ => false,
        }
    }

    pub(crate) fn is_word(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// Lexer output.
#[cfg(test)]
pub(crate) struct Lexed<'a> {
    pub toks: Vec<Tok<'a>>,
    /// Operators plus AND/OR/NOT keywords: a bound on expression-tree depth.
    pub operators: usize,
    /// Deepest bracket nesting.
    pub max_depth: usize,
}

/// What [`lex_into`] measured besides the tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LexStats {
    /// Operators plus AND/OR/NOT keywords: a bound on expression-tree depth.
    pub operators: usize,
    /// Deepest bracket nesting.
    pub max_depth: usize,
    /// A literal (not a `$n` parameter) was seen: the text is likely one of many that
    /// differ only in their values.
    pub literals: bool,
    /// An `IN`, `ARRAY` or `VALUES` word was seen: there may be a list to collapse.
    pub lists: bool,
}

const OP_CHARS: &[u8] = b"+-*/<>=~!@#%^&|`?";
const OP_SPECIAL: &[u8] = b"~!@#%^&|`?";

/// Byte classes, looked up in [`CLASSES`] (one load per byte on the hot loops).
const IDENT_START: u8 = 1;
/// Identifier byte: letters, digits, `_`, `$` and every non-ASCII byte.
const IDENT: u8 = 2;
/// Inside a number: letters, digits and `_`.
const NUMBER: u8 = 4;
/// May appear in an operator.
const OP: u8 = 8;
/// Lets a multi-character operator end in `+`/`-`.
const SPECIAL: u8 = 16;

const fn has(set: &[u8], b: u8) -> bool {
    let mut i = 0;
    while i < set.len() {
        if set[i] == b {
            return true;
        }
        i += 1;
    }
    false
}

const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let word = b.is_ascii_alphanumeric() || b == b'_';
        let mut c = 0;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            c |= IDENT_START;
        }
        if word || b == b'$' || b >= 0x80 {
            c |= IDENT;
        }
        if word {
            c |= NUMBER;
        }
        if has(OP_CHARS, b) {
            c |= OP;
        }
        if has(OP_SPECIAL, b) {
            c |= SPECIAL;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[inline]
fn is(class: u8, b: u8) -> bool {
    CLASSES[usize::from(b)] & class != 0
}

fn is_ident_start(b: u8) -> bool {
    is(IDENT_START, b)
}

fn is_ident_char(b: u8) -> bool {
    is(IDENT, b)
}

/// The end of the identifier bytes from `i`: eight bytes at a time while eight remain, so
/// a short word costs one step instead of a loop whose exit is hard to predict.
fn ident_end(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let stops = !ident_bytes(u64::from_le_bytes(w)) & HIGH_BITS;
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && is_ident_char(b[i]) {
        i += 1;
    }
    i
}

/// Bit 7 of each byte of the result is set where that byte of `x` is an identifier byte
/// (the same set as [`IDENT`]: ASCII letters, digits, `_`, `$`, any non-ASCII byte).
fn ident_bytes(x: u64) -> u64 {
    let low = x & !HIGH_BITS;
    let letter = within(low | (0x20 * ONES), b'a', b'z');
    let digit = within(low, b'0', b'9');
    let underscore = within(low, b'_', b'_');
    let dollar = within(low, b'$', b'$');
    (letter | digit | underscore | dollar | x) & HIGH_BITS
}

/// Words the lexer counts or reports.
enum Keyword {
    /// `AND`, `OR`, `NOT`: counted with the operators.
    Logic,
    /// `IN`, `ARRAY`, `VALUES`: a list to collapse may follow.
    List,
}

fn keyword(word: &str) -> Option<Keyword> {
    let (kw, class) = match (word.len(), word.as_bytes().first().map(|c| c | 0x20)) {
        (3, Some(b'a')) => ("and", Keyword::Logic),
        (2, Some(b'o')) => ("or", Keyword::Logic),
        (3, Some(b'n')) => ("not", Keyword::Logic),
        (2, Some(b'i')) => ("in", Keyword::List),
        (5, Some(b'a')) => ("array", Keyword::List),
        (6, Some(b'v')) => ("values", Keyword::List),
        _ => return None,
    };
    word.eq_ignore_ascii_case(kw).then_some(class)
}

/// Words after which a `-`/`+` starts a signed literal rather than a subtraction.
#[rustfmt::skip]
const NON_OPERAND_WORDS: &[&str] = &[
    "select", "where", "and", "or", "not", "when", "then", "else", "by", "limit", "offset",
    "values", "in", "between", "like", "ilike", "is", "return", "returning", "set", "on",
    "having", "as", "case", "array", "any", "all", "some", "distinct",
];

fn is_operand(t: Option<&Tok<'_>>) -> bool {
    match t {
        None => false,
        Some(Tok::Word(w)) => !NON_OPERAND_WORDS.iter().any(|k| w.eq_ignore_ascii_case(k)),
        Some(Tok::Quoted(_)) | Some(Tok::Value) => true,
        Some(Tok::Punct(p)) => *p == b')' || *p == b']',
        Some(Tok::Op(_)) | Some(Tok::Cast) => false,
    }
}

/// Skips a quoted run starting at `i` (the opening quote `q`), where a doubled quote is an
/// escaped quote and, if `backslash`, `\x` escapes any byte. Returns the index past the end.
fn skip_quoted(b: &[u8], mut i: usize, q: u8, backslash: bool) -> usize {
    i += 1;
    while i < b.len() {
        let c = b[i];
        if backslash && c == b'\\' {
            i += 2;
            continue;
        }
        if c == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// At `b[i] == b'$'`: a dollar-quote opener `$tag$`? Returns the tag length including both `$`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if j < b.len() && (b[j].is_ascii_digit()) {
        return None;
    }
    while j < b.len() && b[j] != b'$' {
        if !(b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
            return None;
        }
        j += 1;
    }
    (j < b.len()).then_some(j + 1 - i)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Lexes `src` completely.
#[cfg(test)]
pub(crate) fn lex(src: &str) -> Lexed<'_> {
    let mut toks = Vec::new();
    let stats = lex_into(src, &mut toks);
    Lexed {
        toks,
        operators: stats.operators,
        max_depth: stats.max_depth,
    }
}

/// Lexes `src` completely, appending its tokens to `toks` (a caller's reused buffer).
pub(crate) fn lex_into<'a>(src: &'a str, toks: &mut Vec<Tok<'a>>) -> LexStats {
    lex_recording(src, toks, None)
}

/// The byte ranges of the number literals of `src`, when it has at least one and every one
/// is a run of ASCII digits alone (no sign, point, exponent, letter or `_`).
pub(crate) fn number_spans(src: &str) -> Option<Box<[(u32, u32)]>> {
    let spans = lex_numbers(src, &mut Vec::new());
    let digits_only = |&(start, end): &(usize, usize)| {
        src.as_bytes()
            .get(start..end)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if spans.is_empty() || !spans.iter().all(digits_only) {
        return None;
    }
    spans
        .into_iter()
        .map(|(start, end)| Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?)))
        .collect()
}

/// Lexes `src` completely into `toks` and returns the byte range of every number literal
/// (each a [`Tok::Value`] of `toks`, in order).
pub(crate) fn lex_numbers<'a>(src: &'a str, toks: &mut Vec<Tok<'a>>) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    lex_recording(src, toks, Some(&mut spans));
    spans
}

/// Whether `text` lexes to the same tokens as `template`, whose [`number_spans`] are `spans`:
/// both have the same length and the same bytes outside the spans, and digits inside them.
///
/// Why that suffices: the lexer reads left to right, and no token's extent depends on the
/// digits of a number after it. Each span is a whole number token, so the byte before it is
/// not an identifier byte or `$` (which would have absorbed the digits) and the byte after
/// it neither continues a number (letter, digit, `_`) nor starts a fraction (a `.` not
/// followed by another `.`); those bytes are the same in `text`, so there too each span is
/// exactly one number token, and every other token covers the same bytes in both texts.
pub(crate) fn same_but_numbers(template: &str, spans: &[(u32, u32)], text: &[u8]) -> bool {
    same_but_digits(template, spans.iter().map(|&(s, e)| (s, e, false)), text)
}

/// Whether `text` has `template`'s bytes outside `spans` and ASCII digits inside them; a span
/// marked `exact` must have `template`'s digits. Spans are in order and within `template`.
pub(crate) fn same_but_digits(
    template: &str,
    spans: impl IntoIterator<Item = (u32, u32, bool)>,
    text: &[u8],
) -> bool {
    let (t, u) = (template.as_bytes(), text);
    if t.len() != u.len() {
        return false;
    }
    let mut at = 0;
    for (start, end, exact) in spans {
        let (start, end) = (start as usize, end as usize);
        let inside = match exact {
            true => t.get(start..end) == u.get(start..end),
            false => u
                .get(start..end)
                .is_some_and(|d| d.iter().all(u8::is_ascii_digit)),
        };
        if t.get(at..start) != u.get(at..start) || !inside {
            return false;
        }
        at = end;
    }
    t.get(at..) == u.get(at..)
}

/// [`lex_into`], also noting the byte range of every number literal in `spans`.
fn lex_recording<'a>(
    src: &'a str,
    toks: &mut Vec<Tok<'a>>,
    mut spans: Option<&mut Vec<(usize, usize)>>,
) -> LexStats {
    let b = src.as_bytes();
    toks.reserve(b.len() / 4 + 4);
    let (mut operators, mut depth, mut max_depth) = (0usize, 0usize, 0usize);
    let (mut literals, mut lists) = (false, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = find(b, b"\n", i).map_or(b.len(), |p| p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Nested block comments, as in PostgreSQL.
                let mut level = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        level += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 2;
                        if level == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                i = skip_quoted(b, i, b'\'', false);
                literals = true;
                toks.push(Tok::Value);
            }
            b'"' => {
                let end = skip_quoted(b, i, b'"', false);
                toks.push(Tok::Quoted(&src[i..end]));
                i = end;
            }
            b'$' => {
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    toks.push(Tok::Value);
                } else if let Some(tag_len) = dollar_tag(b, i) {
                    let body = i + tag_len;
                    i = find(b, &b[i..body], body).map_or(b.len(), |p| p + tag_len);
                    literals = true;
                    toks.push(Tok::Value);
                } else {
                    toks.push(Tok::Punct(b'$'));
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' if c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                i = skip_number(b, i);
                if let Some(spans) = spans.as_deref_mut() {
                    spans.push((start, i));
                }
                literals = true;
                push_number(toks);
            }
            _ if is_ident_start(c) => {
                let start = i;
                i = ident_end(b, i + 1);
                let word = &src[start..i];
                let next = b.get(i).copied();
                if word.len() == 1 {
                    let lower = c | 0x20;
                    if matches!(lower, b'e' | b'b' | b'x' | b'n') && next == Some(b'\'') {
                        i = skip_quoted(b, i, b'\'', lower == b'e');
                        literals = true;
                        toks.push(Tok::Value);
                        continue;
                    }
                    if lower == b'u' && next == Some(b'&') {
                        match b.get(i + 1) {
                            Some(b'\'') => {
                                i = skip_quoted(b, i + 1, b'\'', false);
                                literals = true;
                                toks.push(Tok::Value);
                                continue;
                            }
                            Some(b'"') => {
                                let end = skip_quoted(b, i + 1, b'"', false);
                                toks.push(Tok::Quoted(&src[start..end]));
                                i = end;
                                continue;
                            }
                            _ => {}
                        }
                    }
                }
                match keyword(word) {
                    Some(Keyword::Logic) => operators += 1,
                    Some(Keyword::List) => lists = true,
                    None => {}
                }
                toks.push(Tok::Word(word));
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                toks.push(Tok::Cast);
                i += 2;
            }
            b'(' | b'[' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                toks.push(Tok::Punct(c));
                i += 1;
            }
            b')' | b']' => {
                depth = depth.saturating_sub(1);
                toks.push(Tok::Punct(c));
                i += 1;
            }
            _ if is(OP, c) => {
                let end = operator_end(b, i);
                operators += 1;
                toks.push(Tok::Op(&src[i..end]));
                i = end;
            }
            _ => {
                // Any other byte (ASCII punctuation; non-ASCII bytes are identifier bytes).
                toks.push(Tok::Punct(c));
                i += 1;
            }
        }
    }
    LexStats {
        operators,
        max_depth,
        literals,
        lists,
    }
}

/// End of an operator run starting at `i`, following PostgreSQL's rules: a run stops before
/// `--` or `/*`, and a multi-character operator may not end in `+`/`-` unless it contains one
/// of `~ ! @ # % ^ & | \` ?`.
fn operator_end(b: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < b.len() && is(OP, b[end]) {
        if end > start && (b[end..].starts_with(b"--") || b[end..].starts_with(b"/*")) {
            break;
        }
        end += 1;
    }
    if end - start > 1 && !b[start..end].iter().any(|&c| is(SPECIAL, c)) {
        while end - start > 1 && matches!(b[end - 1], b'+' | b'-') {
            end -= 1;
        }
    }
    end.max(start + 1)
}

fn skip_number(b: &[u8], mut i: usize) -> usize {
    // Plain digits (the common case) first; the general rules continue from there.
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if !b.get(i).is_some_and(|&c| c == b'.' || is(NUMBER, c)) {
        return i;
    }
    let digits = |b: &[u8], mut i: usize| {
        while i < b.len() && is(NUMBER, b[i]) {
            if matches!(b[i], b'e' | b'E')
                && b.get(i + 1).is_some_and(|c| matches!(c, b'+' | b'-'))
                && b.get(i + 2).is_some_and(u8::is_ascii_digit)
            {
                i += 2;
            }
            i += 1;
        }
        i
    };
    i = digits(b, i);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(b, i + 1);
    }
    i
}

/// A number; a preceding unary `-`/`+` (one not following an operand) folds into it.
#[inline]
fn push_number(toks: &mut Vec<Tok<'_>>) {
    let n = toks.len();
    let signed = n >= 1 && matches!(toks[n - 1], Tok::Op("-") | Tok::Op("+"));
    let before = if n >= 2 { toks.get(n - 2) } else { None };
    if signed && !is_operand(before) {
        toks.pop();
    }
    toks.push(Tok::Value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<Tok<'_>> {
        lex(s).toks
    }

    #[test]
    fn literals_become_values() {
        use Tok::*;
        assert_eq!(
            kinds("SELECT 'a''b', E'x\\'y', $1, 1.5e-3, $$body$$, $t$ $ $t$ FROM t"),
            vec![
                Word("SELECT"),
                Value,
                Punct(b','),
                Value,
                Punct(b','),
                Value,
                Punct(b','),
                Value,
                Punct(b','),
                Value,
                Punct(b','),
                Value,
                Word("FROM"),
                Word("t")
            ]
        );
    }

    #[test]
    fn negative_numbers_and_operators() {
        use Tok::*;
        assert_eq!(kinds("a=-1"), vec![Word("a"), Op("="), Value]);
        assert_eq!(kinds("a - 1"), vec![Word("a"), Op("-"), Value]);
        assert_eq!(kinds("x->>'k'"), vec![Word("x"), Op("->>"), Value]);
        assert_eq!(kinds("a::int"), vec![Word("a"), Cast, Word("int")]);
        assert_eq!(kinds("a--c\n/* x /* y */ */b"), vec![Word("a"), Word("b")]);
    }

    #[test]
    fn unterminated_input_is_total() {
        for s in [
            "'abc",
            "\"abc",
            "$tag$ body",
            "/* open",
            "E'\\",
            "u&",
            "$",
            "1e+",
            "\u{e9}t\u{e9}",
        ] {
            let _ = lex(s);
        }
    }

    #[test]
    fn word_wise_ident_scan_matches_bytes() {
        // Every byte value at every position of runs long and short enough for both paths.
        for len in [3, 8, 9, 17, 24] {
            for pos in 0..len {
                for c in 0..=255u8 {
                    let mut v: Vec<u8> = (0..len).map(|i| b"aZ_$09\xc3q"[i % 8]).collect();
                    v[pos] = c;
                    let mut want = 1;
                    while want < v.len() && is_ident_char(v[want]) {
                        want += 1;
                    }
                    assert_eq!(ident_end(&v, 1), want, "byte {c:#x} at {pos} of {len}");
                }
            }
        }
    }

    #[test]
    fn depth_and_operators_counted() {
        let l = lex("select ((1)) + 2 and not x");
        assert_eq!(l.max_depth, 2);
        assert_eq!(l.operators, 3);
    }
}
