//! Semantic checks that serde cannot express: ranges, cross-field rules and
//! reserved names. Reports the first problem, keyed by its dotted TOML path,
//! so the caller can attach the source line.

use std::net::SocketAddr;

use super::{AuthType, Config, ConfigError, TlsMode};

/// Database names the admin console answers to; a real database with one of
/// these names would be unreachable.
const RESERVED_DATABASES: [&str; 2] = ["pgbouncer", "pgferry"];

/// PgBouncer's lower bound; smaller values could not hold a startup packet.
const MIN_PACKET_SIZE: u32 = 1024;

impl Config {
    /// Checks the rules serde cannot. Errors carry the dotted key and the
    /// source path but no line (there is no source text here); `load` and
    /// `parse_str` add the line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|e| e.with_path(self.source_path.as_deref()))
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.check_general()?;
        if self.databases.is_empty() {
            return Err(ConfigError::at_key(
                &["databases"],
                "at least one [databases.NAME] table is required",
            ));
        }
        for (name, db) in &self.databases {
            let key = |field: &'static str| ConfigError::at_key(&["databases", name, field], "");
            if name.is_empty() {
                return Err(ConfigError::at_key(
                    &["databases", name],
                    "database name must not be empty",
                ));
            }
            if RESERVED_DATABASES
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            {
                return Err(ConfigError::at_key(
                    &["databases", name],
                    format!("database name `{name}` is reserved for the admin console"),
                ));
            }
            if db.host.is_empty() {
                return Err(msg(key("host"), "must not be empty"));
            }
            if db.port == 0 {
                return Err(msg(key("port"), "must be between 1 and 65535"));
            }
            if db.pool_size == Some(0) {
                return Err(msg(key("pool_size"), "must be at least 1"));
            }
            if db.host.split(',').any(|h| h.trim().is_empty()) {
                return Err(msg(key("host"), "a host in the list is empty"));
            }
            if db.host.split(',').any(|h| h.trim().starts_with('@')) {
                return Err(msg(
                    key("host"),
                    "abstract Unix sockets (`@name`) are not supported; give the socket's directory",
                ));
            }
            if let Some(t) = db.server_lifetime {
                check_timeout(&["databases", name, "server_lifetime"], t)?;
            }
            if let Some(t) = db.query_wait_timeout {
                check_timeout(&["databases", name, "query_wait_timeout"], t)?;
            }
            for (field, value) in [
                ("client_encoding", &db.client_encoding),
                ("datestyle", &db.datestyle),
                ("timezone", &db.timezone),
            ] {
                if value.as_deref().is_some_and(|v| v.contains('\0')) {
                    return Err(msg(key(field), "must not contain a NUL character"));
                }
            }
            if db
                .connect_query
                .as_deref()
                .is_some_and(|q| q.contains('\0'))
            {
                return Err(msg(
                    key("connect_query"),
                    "must not contain a NUL character",
                ));
            }
        }
        for (name, user) in &self.users {
            if user.pool_size == Some(0) {
                return Err(ConfigError::at_key(
                    &["users", name, "pool_size"],
                    "must be at least 1",
                ));
            }
            for (field, value) in [
                ("query_wait_timeout", user.query_wait_timeout),
                ("query_timeout", user.query_timeout),
                ("idle_transaction_timeout", user.idle_transaction_timeout),
                ("transaction_timeout", user.transaction_timeout),
                ("client_idle_timeout", user.client_idle_timeout),
            ] {
                if let Some(t) = value {
                    check_timeout(&["users", name, field], t)?;
                }
            }
        }
        Ok(())
    }

    fn check_general(&self) -> Result<(), ConfigError> {
        let g = &self.pgferry;
        let key = |field: &str| ConfigError::at_key(&["pgferry", field], "");
        self.check_refused()?;
        for (field, value) in [
            ("client_tls_protocols", &g.client_tls_protocols),
            ("server_tls_protocols", &g.server_tls_protocols),
        ] {
            tls_versions(value).map_err(|m| msg(key(field), m))?;
        }
        for (field, value, accepted) in [
            ("client_tls_ciphers", &g.client_tls_ciphers, CIPHER_DEFAULTS),
            ("server_tls_ciphers", &g.server_tls_ciphers, CIPHER_DEFAULTS),
            (
                "client_tls13_ciphers",
                &g.client_tls13_ciphers,
                TLS13_CIPHER_DEFAULTS,
            ),
            (
                "server_tls13_ciphers",
                &g.server_tls13_ciphers,
                TLS13_CIPHER_DEFAULTS,
            ),
            (
                "client_tls_ecdhcurve",
                &g.client_tls_ecdhcurve,
                CURVE_DEFAULTS,
            ),
            (
                "client_tls_dheparams",
                &g.client_tls_dheparams,
                CURVE_DEFAULTS,
            ),
        ] {
            if !accepted
                .iter()
                .any(|a| a.eq_ignore_ascii_case(value.trim()))
            {
                return Err(msg(
                    key(field),
                    format!(
                        "`{value}` cannot be honoured: pgferry uses rustls' safe defaults for \
                         ciphers and key exchange; accepted values: {}",
                        accepted
                            .iter()
                            .map(|a| format!("\"{a}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        if g.scram_iterations == 0 {
            return Err(msg(key("scram_iterations"), "must be at least 1"));
        }
        if g.listen_port == 0 {
            return Err(msg(key("listen_port"), "must be between 1 and 65535"));
        }
        if g.default_pool_size == 0 {
            return Err(msg(key("default_pool_size"), "must be at least 1"));
        }
        if g.max_client_conn == 0 {
            return Err(msg(key("max_client_conn"), "must be at least 1"));
        }
        if g.max_packet_size < MIN_PACKET_SIZE {
            return Err(msg(
                key("max_packet_size"),
                format!("must be at least {MIN_PACKET_SIZE}"),
            ));
        }
        for (name, value) in g.timeouts() {
            check_timeout(&["pgferry", name], value)?;
        }
        // Inline users (from --upstream) and auth_query stand in for an auth_file.
        let auth_query =
            g.auth_user.is_some() || self.databases.values().any(|d| d.auth_user.is_some());
        if !matches!(g.auth_type, AuthType::Trust | AuthType::Cert)
            && g.auth_file.is_none()
            && self.inline_users.is_empty()
            && !auth_query
        {
            return Err(msg(
                key("auth_type"),
                format!(
                    "auth_type = \"{}\" requires auth_file (or use auth_type = \"trust\")",
                    g.auth_type
                ),
            ));
        }
        if u32::from_str_radix(&g.unix_socket_mode, 8).map_or(true, |m| m > 0o777) {
            return Err(msg(
                key("unix_socket_mode"),
                "must be an octal permission such as \"0777\"",
            ));
        }
        if g.client_tls_sslmode != TlsMode::Disable
            && (g.client_tls_key_file.is_none() || g.client_tls_cert_file.is_none())
        {
            return Err(msg(
                key("client_tls_sslmode"),
                "client TLS needs client_tls_key_file and client_tls_cert_file",
            ));
        }
        if g.client_tls_sslmode.verifies() && g.client_tls_ca_file.is_none() {
            return Err(msg(
                key("client_tls_ca_file"),
                format!(
                    "client_tls_sslmode = \"{}\" needs client_tls_ca_file",
                    g.client_tls_sslmode
                ),
            ));
        }
        if g.auth_type == AuthType::Cert && !g.client_tls_sslmode.verifies() {
            return Err(msg(
                key("auth_type"),
                "auth_type = \"cert\" needs client_tls_sslmode = \"verify-ca\" or \"verify-full\"",
            ));
        }
        if g.server_tls_sslmode.verifies() && g.server_tls_ca_file.is_none() {
            return Err(msg(
                key("server_tls_ca_file"),
                format!(
                    "server_tls_sslmode = \"{}\" needs server_tls_ca_file",
                    g.server_tls_sslmode
                ),
            ));
        }
        if g.server_tls_key_file.is_some() != g.server_tls_cert_file.is_some() {
            return Err(msg(
                key("server_tls_cert_file"),
                "server_tls_key_file and server_tls_cert_file go together",
            ));
        }
        if !g.metrics_addr.is_empty() && g.metrics_addr.parse::<SocketAddr>().is_err() {
            return Err(msg(
                key("metrics_addr"),
                format!(
                    "`{}` is not an IP:port address (use \"\" to disable metrics)",
                    g.metrics_addr
                ),
            ));
        }
        Ok(())
    }
}

/// Values of `*_tls_ciphers` that mean "the library's defaults" in PgBouncer.
const CIPHER_DEFAULTS: &[&str] = &["default", "secure", "fast", "normal"];
/// `*_tls13_ciphers`: empty means "as `*_tls_ciphers`".
const TLS13_CIPHER_DEFAULTS: &[&str] = &["", "default", "secure", "fast", "normal"];
/// `client_tls_ecdhcurve` / `client_tls_dheparams`.
const CURVE_DEFAULTS: &[&str] = &["auto"];

/// TLS protocol versions allowed by a `*_tls_protocols` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsVersions {
    pub tls12: bool,
    pub tls13: bool,
}

/// Parses PgBouncer's `*_tls_protocols`: `secure`, `all`, `tlsv1.2`, `tlsv1.3`, in a list
/// separated by commas or spaces. TLS 1.0 / 1.1 (and `legacy`) are refused: rustls does not
/// implement them.
pub fn tls_versions(spec: &str) -> Result<TlsVersions, String> {
    let mut v = TlsVersions {
        tls12: false,
        tls13: false,
    };
    for word in spec
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        match word.to_ascii_lowercase().as_str() {
            "secure" | "all" => {
                v.tls12 = true;
                v.tls13 = true;
            }
            "tlsv1.2" => v.tls12 = true,
            "tlsv1.3" => v.tls13 = true,
            "tlsv1.0" | "tlsv1" | "tlsv1.1" | "legacy" => {
                return Err(format!(
                    "`{word}` is not available: pgferry's TLS (rustls) speaks only TLS 1.2 and \
                     1.3; use \"secure\", \"tlsv1.2\" or \"tlsv1.3\""
                ))
            }
            _ => {
                return Err(format!(
                    "unknown TLS protocol `{word}`; expected secure, all, tlsv1.2 or tlsv1.3"
                ))
            }
        }
    }
    if !v.tls12 && !v.tls13 {
        return Err("lists no TLS protocol; expected secure, all, tlsv1.2 or tlsv1.3".into());
    }
    Ok(v)
}

impl Config {
    /// PgBouncer settings whose meaning pgferry cannot honour safely: refusing them beats
    /// silently running with weaker or different access control.
    fn check_refused(&self) -> Result<(), ConfigError> {
        let g = &self.pgferry;
        let refused = [
            (&g.auth_hba_file, "auth_hba_file", "pgferry evaluates no HBA rules; auth_type applies to every connection"),
            (&g.auth_ident_file, "auth_ident_file", "pgferry has no peer/ident authentication"),
            (&g.auth_ldap_options, "auth_ldap_options", "pgferry has no LDAP authentication"),
            (&g.unix_socket_group, "unix_socket_group", "pgferry does not change the socket's group; use unix_socket_mode and the directory's permissions"),
            (&g.user, "user", "pgferry does not switch user; start it as the account it should run as"),
        ];
        for (value, name, why) in refused {
            if value.is_some() {
                return Err(ConfigError::at_key(
                    &["pgferry", name],
                    format!("not supported: {why}"),
                ));
            }
        }
        let peer_off = |v: &toml::Value| v.as_integer() == Some(0) || v.as_str() == Some("0");
        if g.peer_id.as_ref().is_some_and(|v| !peer_off(v)) {
            return Err(ConfigError::at_key(
                &["pgferry", "peer_id"],
                "not supported: pgferry has no peering (cancel requests must reach the pgferry \
                 that owns the client)",
            ));
        }
        if self.peers.is_some() {
            return Err(ConfigError::at_key(
                &["peers"],
                "not supported: pgferry has no peering (cancel requests must reach the pgferry \
                 that owns the client)",
            ));
        }
        Ok(())
    }
}

fn msg(mut err: ConfigError, message: impl Into<String>) -> ConfigError {
    err.message = message.into();
    err
}

fn check_timeout(key: &[&str], value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::at_key(
            key,
            "must be a finite number of seconds, 0 or more",
        ))
    }
}
