//! The auth_file (PgBouncer's userlist.txt format): the [`Secret`] kinds a
//! user may have, [`parse_secret`] and [`parse_userlist`].
//!
//! Format: one user per line, `"username" "secret"`, both double-quoted, a
//! doubled `""` inside quotes standing for one literal `"`. Anything after
//! the second quoted string is ignored. Empty lines and lines whose first
//! non-blank character is `;` or `#` are skipped.

use std::collections::HashMap;

use super::error::AuthError;
use super::scram_secret::ScramSecret;

/// What pgferry knows about a user's password. `Debug` never shows the secret itself, so a
/// stray `{:?}` cannot put a password in a log line.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// PostgreSQL's md5 hash: `"md5"` followed by 32 lowercase hex digits of
    /// md5(password + username).
    Md5(String),
    /// A SCRAM-SHA-256 verifier as PostgreSQL stores it.
    Scram(ScramSecret),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(<redacted>)",
            Secret::Md5(_) => "Secret::Md5(<redacted>)",
            Secret::Scram(_) => "Secret::Scram(<redacted>)",
        })
    }
}

/// Classifies a secret string the way PostgreSQL and PgBouncer do:
/// `md5` + 32 hex digits is an md5 hash (normalised to lowercase hex),
/// a well-formed `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` is a
/// SCRAM verifier, and anything else is a plain password.
pub fn parse_secret(s: &str) -> Secret {
    if let Some(hex) = s.strip_prefix("md5") {
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Secret::Md5(format!("md5{}", hex.to_ascii_lowercase()));
        }
    }
    match ScramSecret::parse(s) {
        Some(scram) => Secret::Scram(scram),
        None => Secret::Plain(s.to_owned()),
    }
}

/// Parses a whole auth_file. A later line for the same username replaces an
/// earlier one. Fails on the first malformed line, naming it (1-based).
pub fn parse_userlist(text: &str) -> Result<HashMap<String, Secret>, AuthError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut users = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| AuthError::BadUserlist {
            line: index + 1,
            reason: reason.to_owned(),
        };
        let (user, rest) = read_quoted(line).map_err(|r| bad(&format!("username: {r}")))?;
        if user.is_empty() {
            return Err(bad("empty username"));
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Err(bad("missing secret after username"));
        }
        let (secret, _ignored) = read_quoted(rest).map_err(|r| bad(&format!("secret: {r}")))?;
        users.insert(user, parse_secret(&secret));
    }
    Ok(users)
}

/// Reads one double-quoted string at the start of `s`, returning its unquoted
/// content and whatever follows the closing quote.
fn read_quoted(s: &str) -> Result<(String, &str), &'static str> {
    let Some(mut rest) = s.strip_prefix('"') else {
        return Err("expected a double-quoted string");
    };
    let mut out = String::new();
    loop {
        let Some((chunk, after)) = rest.split_once('"') else {
            return Err("unterminated quoted string");
        };
        out.push_str(chunk);
        match after.strip_prefix('"') {
            Some(next) => {
                out.push('"');
                rest = next;
            }
            None => return Ok((out, after)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SCRAM: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
        AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=:\
        HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=";

    #[test]
    fn classifies_secrets() {
        assert_eq!(parse_secret("hunter2"), Secret::Plain("hunter2".into()));
        assert_eq!(parse_secret(""), Secret::Plain(String::new()));
        let md5 = "md55e0a1d1b2f8e3c4a1a2b3c4d5e6f7a8b";
        assert_eq!(parse_secret(md5), Secret::Md5(md5.into()));
        assert_eq!(
            parse_secret("md55E0A1D1B2F8E3C4A1A2B3C4D5E6F7A8B"),
            Secret::Md5(md5.into())
        );
        // wrong length or non-hex: a plain password that merely looks similar
        let short = "md55e0a1d1b2f8e3c4a1a2b3c4d5e6f7a8";
        assert_eq!(parse_secret(short), Secret::Plain(short.into()));
        let nonhex = "md55e0a1d1b2f8e3c4a1a2b3c4d5e6f7a8z";
        assert_eq!(parse_secret(nonhex), Secret::Plain(nonhex.into()));
        match parse_secret(SCRAM) {
            Secret::Scram(s) => {
                assert_eq!(s.iterations, 4096);
                assert_eq!(s.salt, b"saltsaltsaltsalt");
                assert_eq!(s.stored_key[31], 31);
                assert_eq!(s.server_key[0], 31);
            }
            other => panic!("not scram: {other:?}"),
        }
        let broken = "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB";
        assert_eq!(parse_secret(broken), Secret::Plain(broken.into()));
    }

    #[test]
    fn parses_a_userlist() {
        let text = format!(
            "\u{feff}; pgbouncer style comment\n\
             # another comment\n\
             \n   \t\n\
             \"alice\" \"wonderland\"\n\
             \"bob\"\t\"md55e0a1d1b2f8e3c4a1a2b3c4d5e6f7a8b\" trailing junk\n\
             \"carol\" \"{SCRAM}\"\r\n\
             \"say \"\"hi\"\"\" \"pa\"\"ss\"\n\
             \"eve\"\"x\"\"\" \"\"\n\
             \"alice\" \"replaced\"\n"
        );
        let users = parse_userlist(&text).unwrap();
        assert_eq!(users.len(), 5);
        assert_eq!(users["alice"], Secret::Plain("replaced".into()));
        assert!(matches!(users["bob"], Secret::Md5(_)));
        assert!(matches!(users["carol"], Secret::Scram(_)));
        assert_eq!(users["say \"hi\""], Secret::Plain("pa\"ss".into()));
        assert_eq!(users["eve\"x\""], Secret::Plain(String::new()));
    }

    #[test]
    fn empty_input_is_an_empty_list() {
        assert!(parse_userlist("").unwrap().is_empty());
        assert!(parse_userlist("\n\n; c\n").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_their_line() {
        let cases: &[(&str, usize)] = &[
            ("alice secret", 1),
            ("; ok\n\"alice\"", 2),
            ("\"a\" \"b\"\n\n\"alice\" secret", 3),
            ("\"alice\" \"unterminated", 1),
            ("\"unterminated", 1),
            ("\"\" \"x\"", 1),
            ("# c\n; c\n\"x\" \"y\"\n\"z\"x", 4),
            // `"dave"""` is the single string `dave"`, so the secret is missing
            ("\"dave\"\"\"", 1),
        ];
        for (text, line) in cases {
            match parse_userlist(text) {
                Err(AuthError::BadUserlist { line: got, reason }) => {
                    assert_eq!(got, *line, "{text:?}: {reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{text:?}: expected BadUserlist, got {other:?}"),
            }
        }
        let err = parse_userlist("\n\"alice\"").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
