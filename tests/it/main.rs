//! pgferry's integration tests, one binary: each module is one area, run against a real
//! PostgreSQL the harness starts (`common`). One binary instead of one per file: the test
//! code and what it instantiates of tokio, tokio-postgres and pgferry are compiled and linked
//! once, not 26 times. Run one area with `cargo test --release --test it -- FILE::`.
//! `tests/insight_log.rs` stays a binary of its own: it installs a global log subscriber.

mod common;
mod support;

mod admin;
mod auth_query;
mod auto_prepare;
mod compat;
mod failures;
mod faults;
mod health;
mod hostile;
mod hostile_more;
mod hosts;
mod insight;
mod ledger;
mod lifecycle;
mod limits;
mod listeners;
mod metrics;
mod params;
mod park;
mod protocol_raw;
mod reload;
mod security;
mod session_mode;
mod streaming;
mod timeouts;
mod tls;
mod tools;
mod transaction_mode;
