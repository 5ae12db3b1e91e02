//! The shape of a pgferry TOML file: the `[pgferry]`, `[databases.NAME]` and
//! `[users.NAME]` tables, their enums, and their defaults.
//!
//! Setting names, units and defaults deliberately follow PgBouncer 1.25 so an
//! operator can carry a `pgbouncer.ini` over by changing syntax only. Every
//! table rejects unknown keys so a typo fails loudly instead of silently
//! falling back to a default.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// When a server connection goes back to the pool (PgBouncer's `pool_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Released when the client disconnects.
    Session,
    /// Released when a transaction finishes.
    Transaction,
    /// Released after each statement; multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    /// The spelling used in the TOML file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PoolMode {
    type Err = String;

    /// Accepts the TOML spelling, so `--pool-mode transaction` means the same
    /// as `pool_mode = "transaction"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            "statement" => Ok(PoolMode::Statement),
            other => Err(format!(
                "unknown pool mode `{other}`, expected session, transaction or statement"
            )),
        }
    }
}

/// How clients authenticate to pgferry (PgBouncer's `auth_type`). PgBouncer's `hba`, `pam`,
/// `ldap` and `any` are refused with a reason (see `FromStr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String")]
pub enum AuthType {
    /// No password is asked for.
    #[serde(rename = "trust")]
    Trust,
    /// MD5 challenge; the auth_file may hold plain or `md5...` passwords.
    #[serde(rename = "md5")]
    Md5,
    /// SCRAM-SHA-256; the auth_file may hold plain or `SCRAM-SHA-256$...` secrets.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// Clear-text password over the wire.
    #[serde(rename = "plain")]
    Plain,
    /// The client's TLS certificate: its common name must equal the user name.
    #[serde(rename = "cert")]
    Cert,
}

impl AuthType {
    /// The spelling used in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Trust => "trust",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Plain => "plain",
            AuthType::Cert => "cert",
        }
    }
}

impl TryFrom<String> for AuthType {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "trust" => Ok(AuthType::Trust),
            "md5" => Ok(AuthType::Md5),
            "scram-sha-256" => Ok(AuthType::ScramSha256),
            "plain" => Ok(AuthType::Plain),
            "cert" => Ok(AuthType::Cert),
            "hba" | "pam" | "ldap" | "any" => Err(format!(
                "auth_type = \"{s}\" is not supported by pgferry ({}); use trust, md5, \
                 scram-sha-256, plain or cert",
                match s {
                    "hba" => "no pg_hba.conf-style rules are evaluated",
                    "pam" => "pgferry does not link PAM",
                    "ldap" => "pgferry has no LDAP client",
                    _ => "every client would log in as the database's forced user unchecked",
                }
            )),
            other => Err(format!(
                "unknown auth type `{other}`, expected trust, md5, scram-sha-256, plain or cert"
            )),
        }
    }
}

/// TLS requirement on one side of the proxy (PgBouncer's `client_tls_sslmode` /
/// `server_tls_sslmode`, libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP only.
    Disable,
    /// Plain unless the peer insists on TLS (server side: TLS only if asked; the client side
    /// accepts TLS when offered).
    Allow,
    /// TLS when the peer supports it, plain otherwise.
    Prefer,
    /// TLS always; certificates are not checked.
    Require,
    /// TLS always; the peer's certificate must chain to the configured CA.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host.
    VerifyFull,
}

impl TlsMode {
    /// The spelling used in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// True for modes that refuse a connection without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull
        )
    }

    /// True for modes that check the peer's certificate against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// The `[pgferry]` table: process-wide settings (PgBouncer's `[pgbouncer]`).
///
/// Timeouts are seconds as `f64`, like PgBouncer; `0` disables a timeout.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct General {
    pub listen_addr: String,
    pub listen_port: u16,
    /// Directory for the Unix socket `.s.PGSQL.<listen_port>`; empty = no Unix socket.
    pub unix_socket_dir: String,
    /// Permissions of the Unix socket file (octal string, as PgBouncer).
    pub unix_socket_mode: String,
    pub listen_backlog: u32,
    pub so_reuseport: bool,
    pub tcp_keepalive: bool,
    /// Seconds; 0 = the OS default.
    pub tcp_keepidle: u32,
    pub tcp_keepintvl: u32,
    pub tcp_keepcnt: u32,
    /// Milliseconds; 0 = the OS default.
    pub tcp_user_timeout: u32,
    pub client_tls_sslmode: TlsMode,
    pub client_tls_key_file: Option<PathBuf>,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_ca_file: Option<PathBuf>,
    pub server_tls_sslmode: TlsMode,
    pub server_tls_ca_file: Option<PathBuf>,
    pub server_tls_key_file: Option<PathBuf>,
    pub server_tls_cert_file: Option<PathBuf>,
    pub pool_mode: PoolMode,
    pub default_pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: f64,
    pub max_client_conn: u32,
    pub max_db_connections: u32,
    pub max_user_connections: u32,
    pub max_db_client_connections: u32,
    pub max_user_client_connections: u32,
    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    /// User that runs `auth_query` for users absent from `auth_file`.
    pub auth_user: Option<String>,
    pub auth_query: String,
    /// Database `auth_query` runs in; default: the database the client asked for.
    pub auth_dbname: Option<String>,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    /// Prometheus listener; the empty string disables it.
    pub metrics_addr: String,
    pub query_wait_timeout: f64,
    pub query_timeout: f64,
    pub server_connect_timeout: f64,
    pub server_login_retry: f64,
    pub server_lifetime: f64,
    pub server_idle_timeout: f64,
    pub client_login_timeout: f64,
    pub client_idle_timeout: f64,
    pub idle_transaction_timeout: f64,
    pub transaction_timeout: f64,
    pub cancel_wait_timeout: f64,
    /// Run on an idle server connection unused for `server_check_delay` before reuse;
    /// empty = an empty query.
    pub server_check_query: String,
    pub server_check_delay: f64,
    /// Reuse idle servers round robin (oldest first) rather than LIFO.
    pub server_round_robin: bool,
    /// pgferry's own: how long SIGTERM waits for clients to drain.
    pub shutdown_timeout: f64,
    pub max_packet_size: u32,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub max_prepared_statements: u32,
    /// pgferry's own: run simple-protocol statements whose integer literals can be
    /// parameters as server-side prepared statements (transaction and statement mode).
    pub auto_prepare: bool,
    pub track_extra_parameters: Vec<String>,
    pub ignore_startup_parameters: Vec<String>,
    pub application_name_add_host: bool,
    pub stats_period: f64,
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// Tokio worker threads; 0 means one per core.
    pub workers: u32,
    /// pgferry's own: seconds a client must be idle (logged in, no server, no transaction)
    /// before it is parked, which frees its task; 0 = never park.
    pub client_park_delay: f64,
    /// pgferry's own: per-fingerprint statistics and N+1 detection (docs/insight.md).
    pub query_insight: bool,
    /// Fingerprints kept in SHOW QUERIES; the rest fold into one "other" row per database.
    pub query_stats_max: u32,
    /// Executions (with as many distinct parameter sets) of one statement shape that make an
    /// N+1 burst.
    pub n_plus_one_threshold: u32,
    /// Seconds within which those executions must fall.
    pub n_plus_one_window: f64,
    /// Seconds after an event during which the same client and shape raise no new event.
    pub n_plus_one_cooldown: f64,
    /// Send the client a NoticeResponse (WARNING, 01000) when its burst is detected.
    pub n_plus_one_notice: bool,

    // ---- logging and process (PgBouncer's generic / log settings) ----
    /// Also append log lines to this file (stderr keeps getting them).
    pub logfile: Option<PathBuf>,
    /// Write the process id here at start; a live process named there refuses the start.
    pub pidfile: Option<PathBuf>,
    /// 0 = info, 1 = debug, 2 or more = trace (each `-v` adds one).
    pub verbose: u32,
    /// Log the errors pgferry itself sends to clients.
    pub log_pooler_errors: bool,
    /// Log a one-line stats summary every `stats_period`.
    pub log_stats: bool,

    // ---- TLS details; rustls fixes ciphers and curves to safe defaults ----
    /// `secure` (TLS 1.2 + 1.3), `all`, or a list of `tlsv1.2` / `tlsv1.3`.
    pub client_tls_protocols: String,
    pub server_tls_protocols: String,
    pub client_tls_ciphers: String,
    pub server_tls_ciphers: String,
    pub client_tls13_ciphers: String,
    pub server_tls13_ciphers: String,
    pub client_tls_ecdhcurve: String,
    pub client_tls_dheparams: String,

    // ---- notices ----
    /// Seconds a client waits for a server before it gets a NOTICE saying so; 0 = never.
    pub query_wait_notify: f64,
    /// NOTICE sent to every client after login; empty = none.
    pub login_notify_message: String,

    /// PBKDF2 iterations when deriving a SCRAM secret from a plain auth_file password.
    pub scram_iterations: u32,
    /// SO_SNDBUF / SO_RCVBUF in bytes for client and server sockets; 0 = OS default.
    pub tcp_socket_buffer: u32,

    // ---- PgBouncer settings accepted so a migrated file loads; they change nothing here
    // (see `Config::ineffective_settings`). Any TOML value is accepted. ----
    pub pkt_buf: Option<toml::Value>,
    pub sbuf_loopcnt: Option<toml::Value>,
    pub tcp_defer_accept: Option<toml::Value>,
    pub suspend_timeout: Option<toml::Value>,
    pub dns_max_ttl: Option<toml::Value>,
    pub dns_nxdomain_ttl: Option<toml::Value>,
    pub dns_zone_check_period: Option<toml::Value>,
    pub resolv_conf: Option<toml::Value>,
    pub autodb_idle_timeout: Option<toml::Value>,
    pub pool_idle_timeout: Option<toml::Value>,
    pub disable_pqexec: Option<toml::Value>,
    pub server_fast_close: Option<toml::Value>,
    pub syslog: Option<toml::Value>,
    pub syslog_ident: Option<toml::Value>,
    pub syslog_facility: Option<toml::Value>,
    pub job_name: Option<toml::Value>,
    pub service_name: Option<toml::Value>,
    pub conffile: Option<toml::Value>,

    // ---- PgBouncer settings pgferry refuses (validation explains why) ----
    pub auth_hba_file: Option<toml::Value>,
    pub auth_ident_file: Option<toml::Value>,
    pub auth_ldap_options: Option<toml::Value>,
    pub peer_id: Option<toml::Value>,
    pub unix_socket_group: Option<toml::Value>,
    pub user: Option<toml::Value>,
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: "127.0.0.1".to_string(),
            listen_port: 6432,
            unix_socket_dir: String::new(),
            unix_socket_mode: "0777".to_string(),
            listen_backlog: 128,
            so_reuseport: false,
            tcp_keepalive: true,
            tcp_keepidle: 0,
            tcp_keepintvl: 0,
            tcp_keepcnt: 0,
            tcp_user_timeout: 0,
            client_tls_sslmode: TlsMode::Disable,
            client_tls_key_file: None,
            client_tls_cert_file: None,
            client_tls_ca_file: None,
            server_tls_sslmode: TlsMode::Prefer,
            server_tls_ca_file: None,
            server_tls_key_file: None,
            server_tls_cert_file: None,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: 5.0,
            max_client_conn: 100,
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.to_string(),
            auth_dbname: None,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            metrics_addr: "127.0.0.1:9127".to_string(),
            query_wait_timeout: 120.0,
            query_timeout: 0.0,
            server_connect_timeout: 15.0,
            server_login_retry: 15.0,
            server_lifetime: 3600.0,
            server_idle_timeout: 600.0,
            client_login_timeout: 60.0,
            client_idle_timeout: 0.0,
            idle_transaction_timeout: 0.0,
            transaction_timeout: 0.0,
            cancel_wait_timeout: 10.0,
            server_check_query: String::new(),
            server_check_delay: 30.0,
            server_round_robin: false,
            shutdown_timeout: 30.0,
            max_packet_size: 2_147_483_647,
            server_reset_query: "DISCARD ALL".to_string(),
            server_reset_query_always: false,
            max_prepared_statements: 200,
            auto_prepare: false,
            track_extra_parameters: vec!["IntervalStyle".to_string()],
            ignore_startup_parameters: Vec::new(),
            application_name_add_host: false,
            stats_period: 60.0,
            log_connections: true,
            log_disconnections: true,
            workers: 0,
            client_park_delay: 1.0,
            query_insight: true,
            query_stats_max: 5_000,
            n_plus_one_threshold: 10,
            n_plus_one_window: 1.0,
            n_plus_one_cooldown: 60.0,
            n_plus_one_notice: false,
            logfile: None,
            pidfile: None,
            verbose: 0,
            log_pooler_errors: true,
            log_stats: true,
            client_tls_protocols: "secure".to_string(),
            server_tls_protocols: "secure".to_string(),
            client_tls_ciphers: "default".to_string(),
            server_tls_ciphers: "default".to_string(),
            client_tls13_ciphers: String::new(),
            server_tls13_ciphers: String::new(),
            client_tls_ecdhcurve: "auto".to_string(),
            client_tls_dheparams: "auto".to_string(),
            query_wait_notify: 5.0,
            login_notify_message: String::new(),
            scram_iterations: 4096,
            tcp_socket_buffer: 0,
            pkt_buf: None,
            sbuf_loopcnt: None,
            tcp_defer_accept: None,
            suspend_timeout: None,
            dns_max_ttl: None,
            dns_nxdomain_ttl: None,
            dns_zone_check_period: None,
            resolv_conf: None,
            autodb_idle_timeout: None,
            pool_idle_timeout: None,
            disable_pqexec: None,
            server_fast_close: None,
            syslog: None,
            syslog_ident: None,
            syslog_facility: None,
            job_name: None,
            service_name: None,
            conffile: None,
            auth_hba_file: None,
            auth_ident_file: None,
            auth_ldap_options: None,
            peer_id: None,
            unix_socket_group: None,
            user: None,
        }
    }
}

impl General {
    /// The insight settings as the insight module takes them.
    pub fn insight_config(&self) -> crate::insight::InsightConfig {
        crate::insight::InsightConfig {
            enabled: self.query_insight,
            query_stats_max: self.query_stats_max.max(1) as usize,
            n_plus_one_threshold: self.n_plus_one_threshold.max(2),
            n_plus_one_window: crate::config::secs(self.n_plus_one_window)
                .unwrap_or(std::time::Duration::from_secs(1)),
            n_plus_one_cooldown: crate::config::secs(self.n_plus_one_cooldown).unwrap_or_default(),
            ..crate::insight::InsightConfig::default()
        }
    }

    /// Every timeout with its key name, so validation and the docs cannot
    /// drift apart from the struct when a timeout is added.
    pub(crate) fn timeouts(&self) -> [(&'static str, f64); 19] {
        [
            ("query_wait_timeout", self.query_wait_timeout),
            ("query_timeout", self.query_timeout),
            ("server_connect_timeout", self.server_connect_timeout),
            ("server_login_retry", self.server_login_retry),
            ("server_lifetime", self.server_lifetime),
            ("server_idle_timeout", self.server_idle_timeout),
            ("client_login_timeout", self.client_login_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("idle_transaction_timeout", self.idle_transaction_timeout),
            ("transaction_timeout", self.transaction_timeout),
            ("cancel_wait_timeout", self.cancel_wait_timeout),
            ("server_check_delay", self.server_check_delay),
            ("reserve_pool_timeout", self.reserve_pool_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("stats_period", self.stats_period),
            ("n_plus_one_window", self.n_plus_one_window),
            ("n_plus_one_cooldown", self.n_plus_one_cooldown),
            ("query_wait_notify", self.query_wait_notify),
            ("client_park_delay", self.client_park_delay),
        ]
    }
}

/// A `[databases.NAME]` table: where clients asking for database NAME are
/// sent, with optional per-database overrides of the `[pgferry]` settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// One host, or several separated by commas (tried in turn, dead ones skipped).
    pub host: String,
    pub port: u16,
    /// Server-side database name; defaults to NAME.
    pub dbname: Option<String>,
    /// Forces the server login user, as PgBouncer's `user=` does.
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub pool_mode: Option<PoolMode>,
    pub max_db_connections: Option<u32>,
    pub max_db_client_connections: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub server_lifetime: Option<f64>,
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
    /// Run on every new server connection after login, before any client uses it.
    pub connect_query: Option<String>,
    /// Startup parameters of this database's server connections (clients that do not set
    /// them see these values).
    pub client_encoding: Option<String>,
    pub datestyle: Option<String>,
    pub timezone: Option<String>,
    /// Per-database override of `query_wait_timeout` (a user's override still wins).
    pub query_wait_timeout: Option<f64>,
    /// How new connections pick among the hosts of `host = "a,b"`.
    pub load_balance_hosts: LoadBalanceHosts,
}

/// PgBouncer 1.24's `load_balance_hosts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceHosts {
    /// Each new connection starts at the next host of the list.
    #[default]
    RoundRobin,
    /// Always the listed order: the first host that answers.
    Disable,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            host: "127.0.0.1".to_string(),
            port: 5432,
            dbname: None,
            user: None,
            password: None,
            pool_size: None,
            min_pool_size: None,
            pool_mode: None,
            max_db_connections: None,
            max_db_client_connections: None,
            reserve_pool_size: None,
            server_lifetime: None,
            auth_user: None,
            auth_query: None,
            auth_dbname: None,
            connect_query: None,
            client_encoding: None,
            datestyle: None,
            timezone: None,
            query_wait_timeout: None,
            load_balance_hosts: LoadBalanceHosts::RoundRobin,
        }
    }
}

/// A `[users.NAME]` table: per-user overrides, which win over both the
/// database's and the general settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct User {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub max_user_connections: Option<u32>,
    pub max_user_client_connections: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub query_wait_timeout: Option<f64>,
    pub query_timeout: Option<f64>,
    pub idle_transaction_timeout: Option<f64>,
    pub transaction_timeout: Option<f64>,
    pub client_idle_timeout: Option<f64>,
}
