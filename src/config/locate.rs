//! Maps between dotted TOML keys and source lines, so errors found after
//! deserialisation (which keeps no spans) can still point at a line.
//!
//! This is a line scanner, not a TOML parser: it understands table headers,
//! `key = value` lines with bare, quoted and dotted keys, and skips comments
//! and multi-line strings. The file has already parsed successfully when this
//! runs, so that is enough to find keys without a second, span-keeping
//! deserialisation pass.

/// A key-bearing line: a table header or a `key = value` entry, with its full
/// key path (header path plus the entry's own dotted key).
struct Entry {
    line: usize,
    path: Vec<String>,
}

/// Joins segments into a dotted key, quoting those that are not bare keys.
pub(crate) fn join_key(segments: &[&str]) -> String {
    segments
        .iter()
        .map(|s| {
            if !s.is_empty() && s.chars().all(is_bare_char) {
                (*s).to_string()
            } else {
                let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
                format!("\"{escaped}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// 1-based line containing byte `offset`.
pub(crate) fn line_of_offset(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of `key`, or of its nearest enclosing table or inline-table entry.
pub(crate) fn line_of_key(source: &str, key: &str) -> Option<usize> {
    let (target, rest) = parse_key(key)?;
    if !rest.trim().is_empty() {
        return None;
    }
    let mut best: Option<(usize, usize)> = None; // (matched segments, line)
    for entry in entries(source) {
        if entry.path == target {
            return Some(entry.line);
        }
        let is_prefix = entry.path.len() < target.len() && target.starts_with(&entry.path);
        if is_prefix && best.is_none_or(|(len, _)| entry.path.len() > len) {
            best = Some((entry.path.len(), entry.line));
        }
    }
    best.map(|(_, line)| line)
}

/// The dotted key defined (or table opened) on `line`, if any.
pub(crate) fn key_at_line(source: &str, line: usize) -> Option<String> {
    let entry = entries(source).into_iter().find(|e| e.line == line)?;
    let segments: Vec<&str> = entry.path.iter().map(String::as_str).collect();
    Some(join_key(&segments))
}

fn entries(source: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut table: Vec<String> = Vec::new();
    let mut in_multiline = false;
    for (index, raw) in source.lines().enumerate() {
        let line = raw.trim_start();
        // An odd number of triple quotes opens or closes a multi-line string;
        // lines inside one may look like `key = value` but are not keys.
        let toggles = (line.matches("\"\"\"").count() + line.matches("'''").count()) % 2 == 1;
        let was_inside = in_multiline;
        if toggles {
            in_multiline = !in_multiline;
        }
        if was_inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let rest = rest.strip_prefix('[').unwrap_or(rest);
            if let Some((segments, after)) = parse_key(rest) {
                if after.trim_start().starts_with(']') {
                    table = segments;
                    out.push(Entry {
                        line: index + 1,
                        path: table.clone(),
                    });
                }
            }
        } else if let Some((segments, after)) = parse_key(line) {
            if after.trim_start().starts_with('=') {
                let mut path = table.clone();
                path.extend(segments);
                out.push(Entry {
                    line: index + 1,
                    path,
                });
            }
        }
    }
    out
}

fn is_bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Parses a (possibly dotted, possibly quoted) key at the start of `s`,
/// returning its segments and the unparsed remainder.
fn parse_key(s: &str) -> Option<(Vec<String>, &str)> {
    let mut segments = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        let (segment, after) = parse_segment(rest)?;
        segments.push(segment);
        let after_ws = after.trim_start();
        match after_ws.strip_prefix('.') {
            Some(next) => rest = next,
            None => return Some((segments, after)),
        }
    }
}

fn parse_segment(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((value, &body[i + 1..])),
                // Only the escapes a key plausibly uses matter for matching;
                // anything else is taken literally.
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    value.push(escaped);
                }
                _ => value.push(c),
            }
        }
        None
    } else if let Some(body) = s.strip_prefix('\'') {
        let end = body.find('\'')?;
        Some((body[..end].to_string(), &body[end + 1..]))
    } else {
        let end = s.find(|c: char| !is_bare_char(c)).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        Some((s[..end].to_string(), &s[end..]))
    }
}
