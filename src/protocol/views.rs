//! Typed read-only views of the messages pgferry must understand, borrowed from a frame's body,
//! plus the rewrites it performs on them (statement names in transaction mode). Every accessor
//! checks bounds; malformed input yields `FrameError::Malformed`.

use super::FrameError;
use bytes::{BufMut, Bytes, BytesMut};

/// Splits a NUL-terminated string off the front of `b`.
pub fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, b)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// Parse ('P'): statement name, query text, parameter type OIDs (raw).
#[derive(Debug, Clone, Copy)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The parameter-count word and the OIDs, exactly as sent.
    pub param_types: &'a [u8],
}

impl<'a> ParseView<'a> {
    pub fn new(body: &'a [u8]) -> Result<Self, FrameError> {
        const E: FrameError = FrameError::Malformed("Parse");
        let (name, rest) = split_cstr(body).ok_or(E)?;
        let (query, rest) = split_cstr(rest).ok_or(E)?;
        let count = rest.get(..2).ok_or(E)?;
        let n = i16::from_be_bytes([count[0], count[1]]);
        let n = usize::try_from(n).map_err(|_| E)?;
        if rest.len() != 2 + 4 * n {
            return Err(E);
        }
        Ok(ParseView {
            name,
            query,
            param_types: rest,
        })
    }
}

/// Bind ('B'): portal and statement names, then the rest (formats, values) untouched.
#[derive(Debug, Clone, Copy)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> BindView<'a> {
    pub fn new(body: &'a [u8]) -> Result<Self, FrameError> {
        const E: FrameError = FrameError::Malformed("Bind");
        let (portal, rest) = split_cstr(body).ok_or(E)?;
        let (statement, rest) = split_cstr(rest).ok_or(E)?;
        Ok(BindView {
            portal,
            statement,
            rest,
        })
    }
}

/// Describe ('D') and Close ('C') share a shape: 'S' or 'P', then a name.
#[derive(Debug, Clone, Copy)]
pub struct TargetView<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> TargetView<'a> {
    pub fn new(body: &'a [u8]) -> Result<Self, FrameError> {
        const E: FrameError = FrameError::Malformed("Describe/Close");
        let (&kind, rest) = body.split_first().ok_or(E)?;
        if kind != b'S' && kind != b'P' {
            return Err(E);
        }
        let (name, rest) = split_cstr(rest).ok_or(E)?;
        if !rest.is_empty() {
            return Err(E);
        }
        Ok(TargetView { kind, name })
    }
}

/// The query text of a simple Query ('Q'), without its NUL.
pub fn query_text(body: &[u8]) -> Result<&[u8], FrameError> {
    match split_cstr(body) {
        Some((q, [])) => Ok(q),
        _ => Err(FrameError::Malformed("Query")),
    }
}

/// The transaction status byte of a ReadyForQuery.
pub fn ready_status(body: &[u8]) -> Result<u8, FrameError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(FrameError::Malformed("ReadyForQuery")),
    }
}

/// The command tag of a CommandComplete, without its NUL.
pub fn command_tag(body: &[u8]) -> &[u8] {
    split_cstr(body).map_or(body, |(t, _)| t)
}

/// Name and value of a ParameterStatus.
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), FrameError> {
    const E: FrameError = FrameError::Malformed("ParameterStatus");
    let (name, rest) = split_cstr(body).ok_or(E)?;
    let (value, _) = split_cstr(rest).ok_or(E)?;
    Ok((
        std::str::from_utf8(name).map_err(|_| E)?,
        std::str::from_utf8(value).map_err(|_| E)?,
    ))
}

/// One field (by its one-byte code) of an ErrorResponse or NoticeResponse.
pub fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    error_fields(body).find(|&(c, _)| c == code).map(|(_, v)| v)
}

/// The fields of an ErrorResponse or NoticeResponse as (code, value), up to the terminator; a
/// malformed field ends them.
pub fn error_fields(body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let (&code, after) = rest.split_first()?;
        if code == 0 {
            return None;
        }
        let (value, after) = split_cstr(after)?;
        rest = after;
        Some((code, value))
    })
}

/// BackendKeyData ('K'): process id and secret key (protocol 3.0, 4-byte key).
pub fn backend_key(body: &[u8]) -> Result<(i32, i32), FrameError> {
    match body {
        [a, b, c, d, e, f, g, h] => Ok((
            i32::from_be_bytes([*a, *b, *c, *d]),
            i32::from_be_bytes([*e, *f, *g, *h]),
        )),
        _ => Err(FrameError::Malformed("BackendKeyData")),
    }
}

/// Starts a message in `out` (its tag and a length [`end`] fills in), with room reserved for
/// a body of `body_len` bytes; returns where the message starts.
fn begin(out: &mut BytesMut, tag: u8, body_len: usize) -> usize {
    out.reserve(5 + body_len);
    let at = out.len();
    out.put_u8(tag);
    out.put_u32(0);
    at
}

/// Writes the length of the message started at `at`, now that its body is in `out`.
fn end(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 1) as i32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

/// A Parse with the statement renamed.
pub fn rewrite_parse(p: &ParseView<'_>, new_name: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    let at = begin(
        &mut buf,
        b'P',
        new_name.len() + p.query.len() + p.param_types.len() + 2,
    );
    buf.put_slice(new_name);
    buf.put_u8(0);
    buf.put_slice(p.query);
    buf.put_u8(0);
    buf.put_slice(p.param_types);
    end(&mut buf, at);
    buf.freeze()
}

/// Appends to `out` a Bind with the statement renamed (straight into the server's output
/// buffer: no message of its own is allocated).
pub fn put_bind(out: &mut BytesMut, b: &BindView<'_>, new_statement: &[u8]) {
    let at = begin(
        out,
        b'B',
        b.portal.len() + new_statement.len() + b.rest.len() + 2,
    );
    out.put_slice(b.portal);
    out.put_u8(0);
    out.put_slice(new_statement);
    out.put_u8(0);
    out.put_slice(b.rest);
    end(out, at);
}

/// Appends to `out` a Describe or Close ('D'/'C') of a statement under another name.
pub fn put_target(out: &mut BytesMut, tag: u8, kind: u8, new_name: &[u8]) {
    let at = begin(out, tag, new_name.len() + 2);
    out.put_u8(kind);
    out.put_slice(new_name);
    out.put_u8(0);
    end(out, at);
}

/// Appends a Bind of the unnamed portal to `statement`: `values` as text parameters, every
/// result column as text.
pub fn put_text_bind<'v>(
    out: &mut BytesMut,
    statement: &[u8],
    values: impl Iterator<Item = &'v [u8]> + Clone,
) {
    let count = values.clone().count();
    let at = begin(out, b'B', statement.len() + 10 + count * 8);
    out.put_u8(0);
    out.put_slice(statement);
    out.put_u8(0);
    out.put_i16(1);
    out.put_i16(0);
    out.put_i16(count as i16);
    for v in values {
        out.put_i32(v.len() as i32);
        out.put_slice(v);
    }
    out.put_i16(0);
    end(out, at);
}

/// A simple Query message.
pub fn query(sql: &str) -> Bytes {
    let mut buf = BytesMut::new();
    let at = begin(&mut buf, b'Q', sql.len() + 1);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
    end(&mut buf, at);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;

    #[test]
    fn parse_view_and_rewrite_round_trip() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&23i32.to_be_bytes());
        let p = ParseView::new(&body).unwrap();
        assert_eq!(p.name, b"s1");
        let raw = rewrite_parse(&p, b"pgf_1");
        let f = Frame::from_raw(raw);
        let q = ParseView::new(f.body()).unwrap();
        assert_eq!(q.name, b"pgf_1");
        assert_eq!(q.query, b"select $1");
        assert_eq!(q.param_types, p.param_types);
    }

    #[test]
    fn parse_view_rejects_wrong_counts() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&23i32.to_be_bytes());
        assert!(ParseView::new(&body).is_err());
        assert!(ParseView::new(b"s1\0select").is_err());
        let mut neg = b"\0q\0".to_vec();
        neg.extend_from_slice(&(-1i16).to_be_bytes());
        assert!(ParseView::new(&neg).is_err());
    }

    #[test]
    fn bind_and_target_views() {
        let b = BindView::new(b"\0st\0\0\0\0\0").unwrap();
        assert_eq!(b.statement, b"st");
        let mut out = BytesMut::from(&b"x"[..]); // appended after what is queued
        put_bind(&mut out, &b, b"pgf_2");
        let f = Frame::from_raw(out.split_off(1).freeze());
        let b2 = BindView::new(f.body()).unwrap();
        assert_eq!(
            (b2.portal, b2.statement, b2.rest),
            (&b""[..], &b"pgf_2"[..], b.rest)
        );
        put_target(&mut out, b'D', b'S', b"pgf_3");
        assert_eq!(&out[..], b"xD\0\0\0\x0bSpgf_3\0");
        assert!(TargetView::new(b"Sname\0").is_ok());
        assert!(TargetView::new(b"Xname\0").is_err());
        assert!(TargetView::new(b"S").is_err());
    }

    #[test]
    fn error_fields_are_found_and_bounded() {
        let body = b"SERROR\0C42P05\0Mdup\0\0";
        assert_eq!(error_field(body, b'C'), Some(&b"42P05"[..]));
        assert_eq!(error_field(body, b'D'), None);
        assert_eq!(error_field(b"Cabc", b'C'), None);
    }
}
