//! Error type of the test kit.

/// Everything that can go wrong while managing a throw-away cluster.
#[derive(thiserror::Error, Debug)]
pub enum TestkitError {
    /// A required program is missing; the message says what to install.
    #[error("{0}")]
    NotInstalled(String),
    /// An external command exited unsuccessfully.
    #[error("command `{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line that was run.
        cmd: String,
        /// Its exit status, as text.
        status: String,
        /// Its standard error (for server start failures, plus the tail of the server log).
        stderr: String,
    },
    /// An I/O error while preparing or cleaning up a cluster.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
