//! Client authentication for pgferry, as pure functions and state machines
//! with no I/O: parsing the auth_file (PgBouncer's userlist.txt format),
//! verifying md5 password responses, and the server side of SCRAM-SHA-256.
//!
//! The connection code feeds message bodies in and writes the returned bytes
//! out; nothing here touches a socket.

mod error;
mod md5;
mod scram;
mod scram_secret;
mod userlist;

#[cfg(test)]
mod scram_tests;

pub use self::md5::{md5_expected_response, md5_verify};
pub use error::AuthError;
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
