//! The error type of `pgferry::auth`: auth_file problems, malformed or
//! unsupported authentication messages, wrong passwords, and server-side SCRAM failures.

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
    /// A server's SCRAM salt or iteration count differs from the verifier pgferry
    /// authenticated the client against: the server's secret changed.
    #[error(
        "the server's SCRAM secret differs from the one pgferry authenticated the client with"
    )]
    SecretChanged,
    /// A server's SCRAM signature is wrong: it does not know the user's ServerKey.
    #[error("server SCRAM signature does not match")]
    ServerSignature,
    /// The client asked for a feature pgferry does not offer.
    #[error("unsupported authentication feature: {0}")]
    Unsupported(&'static str),
}
