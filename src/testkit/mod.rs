//! Test kit: throw-away PostgreSQL clusters for integration tests and `pgferry demo`.
//!
//! Each [`PgCluster`] lives in its own temporary directory (data directory,
//! unix socket directory and server log), listens on its own free TCP port on
//! `127.0.0.1` and is torn down (server stopped, directory removed) when it is
//! dropped, so many clusters can run side by side in one process.
//!
//! PostgreSQL refuses to run as root; when the current process is root the
//! server-side binaries are run as the `postgres` OS user via `runuser`.

mod bins;
mod cluster;
mod error;

pub use bins::{find_pg_bin_dir, pgbench_path, psql_path, BIN_DIR_ENV};
pub use cluster::{give_to_server_user, ClusterOptions, PasswordMethod, PgCluster};
pub use error::TestkitError;

#[cfg(test)]
mod tests;
