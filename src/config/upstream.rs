//! `Config::from_upstream`: a complete configuration from one libpq-style URL,
//! for running pgferry in front of a single server without writing a file.

use std::net::SocketAddr;

use super::{AuthType, Config, ConfigError, Database, General, PoolMode};

/// The parts of `postgres://user:pass@host:port/db` pgferry uses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UpstreamUrl {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl Config {
    /// Builds a validated configuration with one database, named after the
    /// URL's database, pointing at the URL's server.
    ///
    /// With a password in the URL, clients must log in to pgferry with the
    /// same user and password (SCRAM) and pgferry reuses them upstream; with
    /// none, clients are trusted and the server does the authenticating.
    pub fn from_upstream(
        url: &str,
        listen: SocketAddr,
        pool_mode: PoolMode,
        pool_size: u32,
    ) -> Result<Config, ConfigError> {
        let up = parse_url(url)?;
        let mut config = Config {
            pgferry: General {
                listen_addr: listen.ip().to_string(),
                listen_port: listen.port(),
                pool_mode,
                default_pool_size: pool_size,
                auth_type: AuthType::Trust,
                ..General::default()
            },
            ..Config::default()
        };
        if let Some(password) = up.password {
            config.pgferry.auth_type = AuthType::ScramSha256;
            config.inline_users.insert(up.user, password);
        }
        config.databases.insert(
            up.dbname.clone(),
            Database {
                host: up.host,
                port: up.port,
                dbname: Some(up.dbname),
                ..Database::default()
            },
        );
        config.validate()?;
        Ok(config)
    }
}

fn bad(message: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("upstream URL: {}", message.into()))
}

pub(crate) fn parse_url(url: &str) -> Result<UpstreamUrl, ConfigError> {
    let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("postgresql://") {
        &url[13..]
    } else if lower.starts_with("postgres://") {
        &url[11..]
    } else {
        return Err(bad("must start with postgres:// or postgresql://"));
    };
    // Connection options in the query string (sslmode=...) and any fragment
    // do not affect where we connect, so they are dropped.
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    // rfind: an unencoded '@' in a password is a common mistake and harmless
    // to accept, since the host part cannot contain one.
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (&authority[..i], &authority[i + 1..]),
        None => return Err(bad("missing user name (expected user[:password]@host)")),
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let user = percent_decode(user, "user name")?;
    if user.is_empty() {
        return Err(bad("missing user name (expected user[:password]@host)"));
    }
    let password = password
        .map(|p| percent_decode(p, "password"))
        .transpose()?;
    let (host, port) = split_host_port(hostport)?;
    let dbname = percent_decode(path, "database name")?;
    let dbname = if dbname.is_empty() {
        user.clone()
    } else {
        dbname
    };
    Ok(UpstreamUrl {
        user,
        password,
        host,
        port,
        dbname,
    })
}

fn split_host_port(hostport: &str) -> Result<(String, u16), ConfigError> {
    if hostport.contains(',') {
        return Err(bad("multiple hosts are not supported"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| bad("unterminated IPv6 address (missing `]`)"))?;
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad(format!("unexpected `{after}` after IPv6 address"))),
        };
        (v6[..end].to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (percent_decode(h, "host")?, Some(p)),
            None => (percent_decode(hostport, "host")?, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None | Some("") => 5432,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return Err(bad(format!("invalid port `{p}`"))),
        },
    };
    Ok((host, port))
}

/// Decodes `%XX` escapes (RFC 3986); `+` stays a plus, as libpq treats it.
fn percent_decode(s: &str, what: &str) -> Result<String, ConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                // from_str_radix alone would accept a sign, e.g. `%+1`.
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("invalid percent-encoding in {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("{what} is not valid UTF-8 after decoding")))
}
