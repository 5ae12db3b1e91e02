//! The error type of `pgferry::auth`: auth_file problems, malformed or
//! unsupported authentication messages, and wrong passwords.

/// Everything that can go wrong while loading secrets or authenticating a
/// client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A line of the auth_file (userlist.txt format) could not be parsed.
    #[error("auth_file line {line}: {reason}")]
    BadUserlist {
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A client's authentication message violates the protocol.
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    /// The client proved knowledge of a different password.
    #[error("password authentication failed")]
    PasswordMismatch,
    /// The client asked for a feature pgferry does not offer.
    #[error("unsupported authentication feature: {0}")]
    Unsupported(&'static str),
}
