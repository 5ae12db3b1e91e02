//! Semantic checks that serde cannot express: ranges, cross-field rules and
//! reserved names. Reports the first problem, keyed by its dotted TOML path,
//! so the caller can attach the source line.

use std::net::SocketAddr;

use super::{AuthType, Config, ConfigError};

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
        }
        for (name, user) in &self.users {
            if user.pool_size == Some(0) {
                return Err(ConfigError::at_key(
                    &["users", name, "pool_size"],
                    "must be at least 1",
                ));
            }
            if let Some(t) = user.query_wait_timeout {
                check_timeout(&["users", name, "query_wait_timeout"], t)?;
            }
        }
        Ok(())
    }

    fn check_general(&self) -> Result<(), ConfigError> {
        let g = &self.pgferry;
        let key = |field: &str| ConfigError::at_key(&["pgferry", field], "");
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
        // Inline users (from --upstream) stand in for an auth_file.
        if g.auth_type != AuthType::Trust && g.auth_file.is_none() && self.inline_users.is_empty() {
            return Err(msg(
                key("auth_type"),
                format!(
                    "auth_type = \"{}\" requires auth_file (or use auth_type = \"trust\")",
                    g.auth_type
                ),
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
