//! Authentication for pgferry: parsing the auth_file (PgBouncer's userlist.txt format),
//! verifying md5 password responses, the server side of SCRAM-SHA-256, the client side of
//! SCRAM driven by keys recovered from a client's proof (pass-through, `passthrough`), and
//! auth_query lookups of users absent from the auth_file (`query`).
//!
//! Everything but `query` is pure functions and state machines: the connection code feeds
//! message bodies in and writes the returned bytes out. `query` talks to PostgreSQL through
//! tokio-postgres.

mod error;
mod md5;
mod passthrough;
mod query;
mod scram;
mod scram_secret;
mod userlist;

#[cfg(test)]
mod scram_tests;

pub use self::md5::{md5_expected_response, md5_verify};
pub use error::AuthError;
pub use passthrough::{
    scram_keys_from_password, LearnedCredentials, ScramKeys, ScramKeysClient, ServerCredentials,
};
pub use query::{auth_source, AuthLookup, AuthSource, LookupError, AUTH_CACHE_TTL};
pub use scram::ScramServer;
pub use scram_secret::{secret_for_scram, ScramSecret};
pub use userlist::{parse_secret, parse_userlist, Secret};

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
