//! Client-facing md5 password authentication (`AuthenticationMD5Password`):
//! computing the response a client must send for a given salt and checking
//! the one it did send. pgferry is the server here.

use md5::{Digest, Md5};

use super::ct_eq;
use super::userlist::Secret;

/// The PasswordMessage content a client must send in answer to
/// `AuthenticationMD5Password` with `salt`:
/// `"md5" + md5hex(md5hex(password + user) + salt)`.
///
/// Works for plain passwords and for stored md5 hashes (which already are
/// `"md5" + md5hex(password + user)`); `None` for SCRAM verifiers, from which
/// the md5 hash cannot be derived.
pub fn md5_expected_response(secret: &Secret, user: &str, salt: [u8; 4]) -> Option<String> {
    let inner = match secret {
        Secret::Plain(password) => {
            let mut h = Md5::new();
            h.update(password.as_bytes());
            h.update(user.as_bytes());
            hex(&h.finalize())
        }
        Secret::Md5(stored) => stored.get(3..)?.to_ascii_lowercase(),
        Secret::Scram(_) => return None,
    };
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    Some(format!("md5{}", hex(&h.finalize())))
}

/// Checks a client's md5 PasswordMessage body (without the trailing NUL; one
/// trailing NUL is tolerated) against `secret`, in constant time with
/// respect to the content. Always false for SCRAM verifiers.
pub fn md5_verify(secret: &Secret, user: &str, salt: [u8; 4], client_response: &[u8]) -> bool {
    let Some(expected) = md5_expected_response(secret, user, salt) else {
        return false;
    };
    let response = client_response
        .strip_suffix(&[0])
        .unwrap_or(client_response);
    ct_eq(expected.as_bytes(), response)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::{parse_secret, ScramSecret};

    /// md5 hex computed with the md-5 crate's own formatting, independently
    /// of the code under test.
    fn md5hex(data: &[u8]) -> String {
        format!("{:x}", Md5::digest(data))
    }

    #[test]
    fn known_vector_postgres_secret() {
        // PostgreSQL stores md5(password || username) for user "postgres",
        // password "secret".
        let stored = format!("md5{}", md5hex(b"secretpostgres"));
        assert_eq!(stored, "md553f48b7c4b76a86ce72276c5755f217d");
        let salt = [0x01, 0x02, 0x03, 0x04];
        let mut salted = md5hex(b"secretpostgres").into_bytes();
        salted.extend_from_slice(&salt);
        let want = format!("md5{}", md5hex(&salted));
        assert_eq!(want, "md5bb41a296aab6baccb36ff243a562abff");

        let plain = Secret::Plain("secret".into());
        let hashed = parse_secret(&stored);
        assert!(matches!(hashed, Secret::Md5(_)));
        assert_eq!(
            md5_expected_response(&plain, "postgres", salt).unwrap(),
            want
        );
        assert_eq!(
            md5_expected_response(&hashed, "postgres", salt).unwrap(),
            want
        );
        // and agrees with what postgres-protocol's client would send
        assert_eq!(
            postgres_protocol::authentication::md5_hash(b"postgres", b"secret", salt),
            want
        );
        assert_eq!(
            postgres_protocol::password::md5(b"secret", "postgres"),
            stored
        );

        assert!(md5_verify(&plain, "postgres", salt, want.as_bytes()));
        assert!(md5_verify(&hashed, "postgres", salt, want.as_bytes()));
        let mut with_nul = want.into_bytes();
        with_nul.push(0);
        assert!(md5_verify(&hashed, "postgres", salt, &with_nul));
    }

    #[test]
    fn rejects_wrong_responses() {
        let plain = Secret::Plain("secret".into());
        let salt = [9, 8, 7, 6];
        let good = md5_expected_response(&plain, "postgres", salt).unwrap();
        assert!(!md5_verify(
            &plain,
            "postgres",
            [9, 8, 7, 5],
            good.as_bytes()
        ));
        assert!(!md5_verify(&plain, "other", salt, good.as_bytes()));
        assert!(!md5_verify(&plain, "postgres", salt, b""));
        assert!(!md5_verify(
            &plain,
            "postgres",
            salt,
            &good.as_bytes()[..34]
        ));
        let mut flipped = good.into_bytes();
        flipped[10] ^= 1;
        assert!(!md5_verify(&plain, "postgres", salt, &flipped));
        let wrong = Secret::Plain("Secret".into());
        let good = md5_expected_response(&plain, "postgres", salt).unwrap();
        assert!(!md5_verify(&wrong, "postgres", salt, good.as_bytes()));
    }

    #[test]
    fn scram_secrets_cannot_do_md5() {
        let scram = Secret::Scram(ScramSecret::from_password("secret"));
        assert_eq!(md5_expected_response(&scram, "postgres", [0; 4]), None);
        assert!(!md5_verify(&scram, "postgres", [0; 4], b"md5"));
    }
}
