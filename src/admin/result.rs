//! Result sets of the admin console: RowDescription, DataRows and CommandComplete encoded with
//! pgwire's message types, in text format with PgBouncer's column types.

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription, FORMAT_CODE_TEXT};
use pgwire::messages::response::CommandComplete;
use pgwire::messages::Message;

/// Column types the console uses (PgBouncer's `s`, `i`, `q`, `N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Text,
    Int4,
    Int8,
    Numeric,
}

impl Type {
    /// (type OID, type size)
    fn oid(self) -> (u32, i16) {
        match self {
            Type::Text => (25, -1),
            Type::Int4 => (23, 4),
            Type::Int8 => (20, 8),
            Type::Numeric => (1700, -1),
        }
    }
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Null,
    Text(String),
    Int(i128),
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Text(s.to_owned())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Text(s)
    }
}
impl From<Option<&str>> for Val {
    fn from(s: Option<&str>) -> Self {
        s.map_or(Val::Null, Val::from)
    }
}
impl From<Option<String>> for Val {
    fn from(s: Option<String>) -> Self {
        s.map_or(Val::Null, Val::Text)
    }
}
macro_rules! int_val {
    ($($t:ty),*) => {$(
        impl From<$t> for Val {
            fn from(v: $t) -> Self {
                Val::Int(v as i128)
            }
        }
    )*};
}
int_val!(u64, i64, u32, i32, u16, usize, bool);

/// Appends one pgwire message; console messages are far below pgwire's size limits.
pub fn put<M: Message>(out: &mut BytesMut, m: &M) {
    let before = out.len();
    if m.encode(out).is_err() {
        out.truncate(before);
        tracing::error!("pgwire refused to encode an admin console message");
    }
}

/// CommandComplete with `tag`.
pub fn complete(out: &mut BytesMut, tag: &str) {
    put(out, &CommandComplete::new(tag.to_owned()));
}

/// A result set being written to `out`.
pub struct Table<'a> {
    out: &'a mut BytesMut,
    types: Vec<Type>,
}

impl<'a> Table<'a> {
    /// Writes the RowDescription.
    pub fn new(out: &'a mut BytesMut, cols: &[(&str, Type)]) -> Self {
        let fields = cols
            .iter()
            .map(|(name, t)| {
                let (oid, size) = t.oid();
                FieldDescription::new((*name).to_owned(), 0, 0, oid, size, -1, FORMAT_CODE_TEXT)
            })
            .collect();
        put(out, &RowDescription::new(fields));
        Table {
            out,
            types: cols.iter().map(|(_, t)| *t).collect(),
        }
    }

    /// Writes one DataRow; missing trailing cells are NULL, extra cells are dropped.
    pub fn row(&mut self, vals: Vec<Val>) {
        let mut data = BytesMut::new();
        for i in 0..self.types.len() {
            match vals.get(i) {
                None | Some(Val::Null) => data.put_i32(-1),
                Some(Val::Text(s)) => {
                    data.put_i32(s.len() as i32);
                    data.put_slice(s.as_bytes());
                }
                Some(Val::Int(v)) => {
                    let s = v.to_string();
                    data.put_i32(s.len() as i32);
                    data.put_slice(s.as_bytes());
                }
            }
        }
        put(self.out, &DataRow::new(data, self.types.len() as i16));
    }

    /// Writes CommandComplete `SHOW`.
    pub fn finish(self) {
        complete(self.out, "SHOW");
    }
}

/// Shorthand for a row: `row![a, b, c]` → `vec![Val::from(a), …]`.
#[macro_export]
#[doc(hidden)]
macro_rules! admin_row {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::admin::result::Val::from($v)),*]
    };
}

/// A timestamp (µs since the epoch) as PgBouncer prints it: `YYYY-MM-DD HH:MM:SS UTC`.
pub fn timestamp(us: u64) -> String {
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_like_pgbouncer() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(1_767_225_599_000_000), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn rows_are_text_with_nulls() {
        let mut out = BytesMut::new();
        let mut t = Table::new(&mut out, &[("a", Type::Text), ("b", Type::Int8)]);
        t.row(vec![Val::from("x"), Val::Null]);
        t.row(vec![Val::from(7u64)]);
        t.finish();
        // RowDescription: 'T', length, 2 fields; "a" is text (25), "b" int8 (20).
        assert_eq!(out[0], b'T');
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(&out[5..7], &[0, 2]);
        assert_eq!(&out[7..9], b"a\0");
        assert_eq!(&out[15..19], &25u32.to_be_bytes());
        let rows = &out[1 + len..];
        // DataRow 1: 'x', then NULL (-1).
        let first: &[u8] = &[
            b'D', 0, 0, 0, 15, 0, 2, 0, 0, 0, 1, b'x', 255, 255, 255, 255,
        ];
        assert_eq!(&rows[..16], first);
        // DataRow 2: "7", then NULL for the missing cell; then CommandComplete SHOW.
        let second: &[u8] = &[
            b'D', 0, 0, 0, 15, 0, 2, 0, 0, 0, 1, b'7', 255, 255, 255, 255,
        ];
        assert_eq!(&rows[16..32], second);
        assert_eq!(rows[32], b'C');
    }
}
