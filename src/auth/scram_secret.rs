//! SCRAM-SHA-256 verifiers (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`,
//! as PostgreSQL stores them in `pg_authid.rolpassword`): [`ScramSecret`],
//! deriving one from a password, [`secret_for_scram`], and the SHA-256/HMAC
//! primitives the SCRAM server shares.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::userlist::Secret;

const PREFIX: &str = "SCRAM-SHA-256$";
const DEFAULT_ITERATIONS: u32 = 4096;
const DEFAULT_SALT_LEN: usize = 16;

/// A parsed SCRAM-SHA-256 verifier. `Debug` shows the iteration count only.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count (at least 1).
    pub iterations: u32,
    /// The salt (non-empty).
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`
    /// (standard base64 with padding, keys of exactly 32 bytes). `None` if the
    /// string is anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(PREFIX)?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iterations: u32 = iterations.parse().ok()?;
        let salt = STANDARD.decode(salt).ok()?;
        if iterations == 0 || salt.is_empty() {
            return None;
        }
        Some(Self {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// Derives a verifier for `password` with a random 16-byte salt and 4096
    /// iterations, applying SASLprep the way PostgreSQL does (skipped when
    /// the password contains prohibited characters).
    pub fn from_password(password: &str) -> Self {
        // postgres-protocol implements PostgreSQL's SASLprep rules; its output
        // always parses, the fallback (no SASLprep) only keeps this total.
        let encoded = postgres_protocol::password::scram_sha_256(password.as_bytes());
        Self::parse(&encoded).unwrap_or_else(|| {
            let mut salt = [0u8; DEFAULT_SALT_LEN];
            rand::rng().fill_bytes(&mut salt);
            Self::derive(password.as_bytes(), &salt, DEFAULT_ITERATIONS)
        })
    }

    /// Derives a verifier from an already SASLprep'ed password.
    pub(super) fn derive(prepared_password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = hi(prepared_password, salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }
}

impl fmt::Display for ScramSecret {
    /// Formats in PostgreSQL's storage format, the inverse of [`ScramSecret::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

/// The SCRAM verifier to authenticate a client against: a stored verifier
/// as is, one freshly derived (random salt, so callers should cache it) for
/// a plain password, and `None` for an md5 hash, from which SCRAM keys
/// cannot be computed.
pub fn secret_for_scram(secret: &Secret) -> Option<ScramSecret> {
    match secret {
        Secret::Scram(scram) => Some(scram.clone()),
        Secret::Plain(password) => Some(ScramSecret::from_password(password)),
        Secret::Md5(_) => None,
    }
}

fn decode_key(b64: &str) -> Option<[u8; 32]> {
    STANDARD.decode(b64).ok()?.try_into().ok()
}

pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub(super) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with a single output block (RFC 5802's `Hi`).
pub(super) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut prev = hmac_sha256(password, &[salt, &[0, 0, 0, 1]]);
    let mut out = prev;
    for _ in 1..iterations {
        prev = hmac_sha256(password, &[&prev]);
        for (o, p) in out.iter_mut().zip(prev) {
            *o ^= p;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_protocol_output_and_round_trips() {
        let encoded = postgres_protocol::password::scram_sha_256(b"pencil");
        let secret = ScramSecret::parse(&encoded).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt.len(), 16);
        assert_eq!(secret.to_string(), encoded);
        // our own derivation agrees with postgres-protocol's for ASCII
        let ours = ScramSecret::derive(b"pencil", &secret.salt, secret.iterations);
        assert_eq!(ours, secret);
    }

    #[test]
    fn rfc7677_vector() {
        // RFC 7677 section 3: user "user", password "pencil",
        // salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations; the server
        // signature in the example is HMAC(ServerKey, AuthMessage).
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::derive(b"pencil", &salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_sig = hmac_sha256(&secret.server_key, &[auth_message.as_bytes()]);
        assert_eq!(
            STANDARD.encode(server_sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn rejects_malformed_verifiers() {
        let good = ScramSecret::from_password("x").to_string();
        assert!(ScramSecret::parse(&good).is_some());
        let (head, keys) = good.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        for bad in [
            String::new(),
            "SCRAM-SHA-256$".to_owned(),
            good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1),
            good.replacen("4096", "0", 1),
            good.replacen("4096", "+4096", 1),
            good.replacen("4096", "99999999999", 1),
            good.replacen("4096:", "4096", 1),
            format!("{head}${stored}"),
            format!("{head}${stored}:{}", &server[1..]),
            format!("{head}${stored}:{server}:"),
            format!("{head}${stored}:AAAA"),
            format!("{head}$!!!!:{server}"),
            format!("SCRAM-SHA-256$4096:$${stored}:{server}"),
        ] {
            assert_eq!(ScramSecret::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn from_password_applies_saslprep() {
        // SASLprep maps U+00A0 (no-break space) to U+0020 and strips soft
        // hyphens, so these passwords must yield the same keys.
        let a = ScramSecret::from_password("pass\u{a0}word\u{ad}");
        let b = ScramSecret::derive(b"pass word", &a.salt, a.iterations);
        assert_eq!(a, b);
        let c = ScramSecret::from_password("pencil");
        assert_ne!(c.salt, a.salt, "salts are random");
    }

    #[test]
    fn secret_for_scram_by_kind() {
        let scram = ScramSecret::from_password("pw");
        assert_eq!(secret_for_scram(&Secret::Scram(scram.clone())), Some(scram));
        let derived = secret_for_scram(&Secret::Plain("pw".into())).unwrap();
        assert_eq!(derived, ScramSecret::derive(b"pw", &derived.salt, 4096));
        let md5 = postgres_protocol::password::md5(b"pw", "u");
        assert_eq!(secret_for_scram(&Secret::Md5(md5)), None);
    }
}
