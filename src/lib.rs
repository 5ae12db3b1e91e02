//! pgferry: a PostgreSQL connection pooler and query proxy.
//!
//! Module map (one responsibility each; see docs/architecture.md):
//! - [`protocol`]: framing, typed views and builders of wire messages (no I/O)
//! - [`net`]: buffered, cancel-safe frame I/O over a socket
//! - [`auth`]: auth_file, client-facing md5/SCRAM
//! - [`server`]: one server connection: login, parameters, prepared-statement registry
//! - [`pool`]: pools per (database, user), FIFO waiters, checkout guard
//! - [`client`]: one task per client: startup, routing, transaction-mode bookkeeping
//! - [`clock`]: the hot path's monotonic clock
//! - [`config`]: TOML schema and validation
//! - [`app`]: shared state, listener, cancel registry, shutdown
//! - [`logging`]: the log subscriber (stderr + logfile), the pid file
//! - [`testkit`]: throwaway PostgreSQL clusters for tests and the demo

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod insight;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod server;
pub mod sql;
pub mod testkit;
