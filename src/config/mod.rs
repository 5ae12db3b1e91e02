//! `pgferry::config`: loading, validating and querying pgferry's TOML
//! configuration, whose settings follow PgBouncer 1.25 in name, unit and
//! default.
//!
//! This file owns the top-level `Config`, file loading and the lookup helpers
//! that resolve per-user / per-database overrides. The tables themselves live
//! in `schema`, the rules in `validate`, URL-based configs in `upstream`, and
//! error location in `error` / `locate`.

mod error;
mod locate;
mod schema;
mod upstream;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use schema::{
    AuthType, Database, General, LoadBalanceHosts, PoolMode, TlsMode, User, DEFAULT_AUTH_QUERY,
};
pub use validate::{tls_versions, TlsVersions};

/// A whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The `[pgferry]` table; every key is optional.
    pub pgferry: General,
    /// `[databases.NAME]` tables, keyed by the name clients connect to.
    pub databases: BTreeMap<String, Database>,
    /// `[users.NAME]` tables with per-user overrides.
    pub users: BTreeMap<String, User>,
    /// PgBouncer's `[peers]`: accepted by the parser only so validation can refuse it with a
    /// reason (pgferry has no peering).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<toml::Value>,
    /// user -> plain password, set by `from_upstream`; never read from TOML
    /// so secrets given on the command line cannot be confused with a file.
    #[serde(skip)]
    pub inline_users: BTreeMap<String, String>,
    /// The file this configuration was loaded from.
    #[serde(skip)]
    pub source_path: Option<PathBuf>,
}

impl Config {
    /// Reads, parses and validates `path`. A relative `auth_file` is resolved
    /// against the directory of `path`, as PgBouncer does, so the pooler
    /// behaves the same whatever its working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("cannot read configuration: {e}")).with_path(Some(path))
        })?;
        Config::parse_str(&text, Some(path))
    }

    /// Parses and validates TOML text. `path`, when given, is used in error
    /// messages, recorded as `source_path`, and anchors a relative `auth_file` and TLS files.
    pub fn parse_str(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(&e, text, path))?;
        config.source_path = path.map(Path::to_path_buf);
        if let Some(dir) = path.and_then(Path::parent) {
            let g = &mut config.pgferry;
            for file in [
                &mut g.auth_file,
                &mut g.client_tls_key_file,
                &mut g.client_tls_cert_file,
                &mut g.client_tls_ca_file,
                &mut g.server_tls_ca_file,
                &mut g.server_tls_key_file,
                &mut g.server_tls_cert_file,
            ] {
                if let Some(f) = file.as_mut().filter(|f| f.is_relative()) {
                    *f = dir.join(&*f);
                }
            }
        }
        config
            .validate()
            .map_err(|e| e.with_path(path).with_line_from(text))?;
        tracing::debug!(
            path = ?path,
            databases = config.databases.len(),
            users = config.users.len(),
            "configuration loaded"
        );
        Ok(config)
    }

    /// The `[databases.NAME]` table clients reach as `db`.
    pub fn database(&self, db: &str) -> Option<&Database> {
        self.databases.get(db)
    }

    /// Pool mode for (`db`, `user`): user override, then database override,
    /// then `[pgferry] pool_mode`.
    pub fn pool_mode_for(&self, db: &str, user: &str) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or_else(|| self.databases.get(db).and_then(|d| d.pool_mode))
            .unwrap_or(self.pgferry.pool_mode)
    }

    /// Pool size for (`db`, `user`): user override, then database
    /// `pool_size`, then `default_pool_size`.
    pub fn pool_size_for(&self, db: &str, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.pool_size)
            .or_else(|| self.databases.get(db).and_then(|d| d.pool_size))
            .unwrap_or(self.pgferry.default_pool_size)
    }

    /// How long a client of `user` on `db` may wait for a server connection; `None`
    /// means forever. The user's override wins over the database's, which wins over the
    /// general setting.
    pub fn query_wait_timeout_for(&self, db: &str, user: &str) -> Option<Duration> {
        let v = self
            .users
            .get(user)
            .and_then(|u| u.query_wait_timeout)
            .or_else(|| self.databases.get(db).and_then(|d| d.query_wait_timeout))
            .unwrap_or(self.pgferry.query_wait_timeout);
        secs(v)
    }

    /// Startup parameters pgferry adds to the server connections of `db`
    /// (`client_encoding`, `datestyle`, `timezone`), with PostgreSQL's names.
    pub fn server_startup_params_for(&self, db: &str) -> Vec<(String, String)> {
        let Some(d) = self.databases.get(db) else {
            return Vec::new();
        };
        [
            ("client_encoding", &d.client_encoding),
            ("DateStyle", &d.datestyle),
            ("TimeZone", &d.timezone),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
        .collect()
    }

    /// PgBouncer settings present in the file that change nothing in pgferry, each with the
    /// reason; logged as one WARNING each at start.
    pub fn ineffective_settings(&self) -> Vec<(&'static str, &'static str)> {
        let g = &self.pgferry;
        [
            (&g.pkt_buf, "pkt_buf", "buffers grow to fit each message"),
            (
                &g.sbuf_loopcnt,
                "sbuf_loopcnt",
                "the tokio scheduler keeps connections fair",
            ),
            (
                &g.tcp_defer_accept,
                "tcp_defer_accept",
                "the socket option is not set",
            ),
            (
                &g.suspend_timeout,
                "suspend_timeout",
                "there is no SUSPEND / online restart",
            ),
            (
                &g.dns_max_ttl,
                "dns_max_ttl",
                "host names are resolved on every new server connection",
            ),
            (
                &g.dns_nxdomain_ttl,
                "dns_nxdomain_ttl",
                "host names are resolved on every new server connection",
            ),
            (
                &g.dns_zone_check_period,
                "dns_zone_check_period",
                "there is no DNS zone polling",
            ),
            (&g.resolv_conf, "resolv_conf", "the system resolver is used"),
            (
                &g.autodb_idle_timeout,
                "autodb_idle_timeout",
                "there is no \"*\" auto-database",
            ),
            (
                &g.pool_idle_timeout,
                "pool_idle_timeout",
                "pools are kept until their database is removed",
            ),
            (
                &g.disable_pqexec,
                "disable_pqexec",
                "the simple query protocol is always allowed",
            ),
            (
                &g.server_fast_close,
                "server_fast_close",
                "session-mode servers of a changed target close when their client leaves",
            ),
            (&g.syslog, "syslog", "logs go to stderr and logfile"),
            (
                &g.syslog_ident,
                "syslog_ident",
                "logs go to stderr and logfile",
            ),
            (
                &g.syslog_facility,
                "syslog_facility",
                "logs go to stderr and logfile",
            ),
            (&g.job_name, "job_name", "it names a Windows service"),
            (
                &g.service_name,
                "service_name",
                "it names a Windows service",
            ),
            (
                &g.conffile,
                "conffile",
                "the file given with --config is the one RELOAD reads",
            ),
        ]
        .into_iter()
        .filter(|(v, _, _)| v.is_some())
        .map(|(_, name, why)| (name, why))
        .chain((g.scram_iterations != 4096).then_some((
            "scram_iterations",
            "SCRAM secrets derived from plain auth_file passwords always use 4096 iterations",
        )))
        .chain((!g.log_pooler_errors).then_some((
            "log_pooler_errors",
            "pgferry does not log the errors it sends separately; log_disconnections gives the reason a client was closed",
        )))
        .collect()
    }

    /// Reserve connections for (`db`, `user`): user, then database, then general setting.
    pub fn reserve_pool_size_for(&self, db: &str, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.reserve_pool_size)
            .or_else(|| self.databases.get(db).and_then(|d| d.reserve_pool_size))
            .unwrap_or(self.pgferry.reserve_pool_size)
    }

    /// Connections kept open for each pool of `db`.
    pub fn min_pool_size_for(&self, db: &str) -> u32 {
        self.databases
            .get(db)
            .and_then(|d| d.min_pool_size)
            .unwrap_or(self.pgferry.min_pool_size)
    }

    /// Cap on server connections of `db` across its pools (0 = none).
    pub fn max_db_connections_for(&self, db: &str) -> u32 {
        self.databases
            .get(db)
            .and_then(|d| d.max_db_connections)
            .unwrap_or(self.pgferry.max_db_connections)
    }

    /// Cap on client connections to `db` (0 = none).
    pub fn max_db_client_connections_for(&self, db: &str) -> u32 {
        self.databases
            .get(db)
            .and_then(|d| d.max_db_client_connections)
            .unwrap_or(self.pgferry.max_db_client_connections)
    }

    /// Cap on server connections of `user` across their pools (0 = none).
    pub fn max_user_connections_for(&self, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.pgferry.max_user_connections)
    }

    /// Cap on client connections of `user` (0 = none).
    pub fn max_user_client_connections_for(&self, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.max_user_client_connections)
            .unwrap_or(self.pgferry.max_user_client_connections)
    }

    /// server_lifetime for `db`'s pools (`None` = unlimited).
    pub fn server_lifetime_for(&self, db: &str) -> Option<Duration> {
        secs(
            self.databases
                .get(db)
                .and_then(|d| d.server_lifetime)
                .unwrap_or(self.pgferry.server_lifetime),
        )
    }

    /// The per-client timeouts of `user`: the user's overrides win over the general ones.
    pub fn client_timeouts_for(&self, user: &str) -> ClientTimeouts {
        let u = self.users.get(user);
        let g = &self.pgferry;
        let pick = |o: Option<f64>, d: f64| secs(o.unwrap_or(d));
        ClientTimeouts {
            query_timeout: pick(u.and_then(|u| u.query_timeout), g.query_timeout),
            idle_transaction_timeout: pick(
                u.and_then(|u| u.idle_transaction_timeout),
                g.idle_transaction_timeout,
            ),
            transaction_timeout: pick(u.and_then(|u| u.transaction_timeout), g.transaction_timeout),
            client_idle_timeout: pick(u.and_then(|u| u.client_idle_timeout), g.client_idle_timeout),
        }
    }

    /// The hosts of `db` (`host = "a,b"` lists several), in order.
    pub fn hosts_of(&self, db: &str) -> Vec<String> {
        self.databases
            .get(db)
            .map(|d| {
                d.host
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The database name sent to the server for client database `db`: its
    /// `dbname` if set, else `db` itself (also for databases not configured).
    pub fn server_dbname<'a>(&'a self, db: &'a str) -> &'a str {
        self.databases
            .get(db)
            .and_then(|d| d.dbname.as_deref())
            .unwrap_or(db)
    }
}

/// Timeouts that apply to one client's session (`None` = disabled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientTimeouts {
    pub query_timeout: Option<Duration>,
    pub idle_transaction_timeout: Option<Duration>,
    pub transaction_timeout: Option<Duration>,
    pub client_idle_timeout: Option<Duration>,
}

/// Converts a timeout in seconds to a `Duration`; `None` for 0, which means
/// "disabled" in PgBouncer's units. Negative or non-finite values (rejected by
/// `validate`) also give `None`, as do values too large for a `Duration`,
/// which are effectively infinite anyway.
pub fn secs(v: f64) -> Option<Duration> {
    if v > 0.0 {
        Duration::try_from_secs_f64(v).ok()
    } else {
        None
    }
}

impl General {
    /// `query_wait_timeout` as a Duration (`None` = wait forever).
    pub fn query_wait_timeout(&self) -> Option<Duration> {
        secs(self.query_wait_timeout)
    }
    /// `query_timeout` as a Duration (`None` = disabled).
    pub fn query_timeout(&self) -> Option<Duration> {
        secs(self.query_timeout)
    }
    /// `server_connect_timeout` as a Duration (`None` = disabled).
    pub fn server_connect_timeout(&self) -> Option<Duration> {
        secs(self.server_connect_timeout)
    }
    /// `server_login_retry` as a Duration (`None` = retry at once).
    pub fn server_login_retry(&self) -> Option<Duration> {
        secs(self.server_login_retry)
    }
    /// `server_lifetime` as a Duration (`None` = unlimited).
    pub fn server_lifetime(&self) -> Option<Duration> {
        secs(self.server_lifetime)
    }
    /// `server_idle_timeout` as a Duration (`None` = disabled).
    pub fn server_idle_timeout(&self) -> Option<Duration> {
        secs(self.server_idle_timeout)
    }
    /// `client_login_timeout` as a Duration (`None` = disabled).
    pub fn client_login_timeout(&self) -> Option<Duration> {
        secs(self.client_login_timeout)
    }
    /// `client_idle_timeout` as a Duration (`None` = disabled).
    pub fn client_idle_timeout(&self) -> Option<Duration> {
        secs(self.client_idle_timeout)
    }
    /// `idle_transaction_timeout` as a Duration (`None` = disabled).
    pub fn idle_transaction_timeout(&self) -> Option<Duration> {
        secs(self.idle_transaction_timeout)
    }
    /// `transaction_timeout` as a Duration (`None` = disabled).
    pub fn transaction_timeout(&self) -> Option<Duration> {
        secs(self.transaction_timeout)
    }
    /// `cancel_wait_timeout` as a Duration (`None` = wait forever).
    pub fn cancel_wait_timeout(&self) -> Option<Duration> {
        secs(self.cancel_wait_timeout)
    }
    /// `server_check_delay` as a Duration (`None` = check on every reuse).
    pub fn server_check_delay(&self) -> Option<Duration> {
        secs(self.server_check_delay)
    }
    /// `reserve_pool_timeout` as a Duration (`None` = use the reserve at once).
    pub fn reserve_pool_timeout(&self) -> Option<Duration> {
        secs(self.reserve_pool_timeout)
    }
    /// `shutdown_timeout` as a Duration (`None` = wait for clients forever).
    pub fn shutdown_timeout(&self) -> Option<Duration> {
        secs(self.shutdown_timeout)
    }
    /// `stats_period` as a Duration (`None` = disabled).
    pub fn stats_period(&self) -> Option<Duration> {
        secs(self.stats_period)
    }
}
