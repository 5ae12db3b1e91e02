//! auth_query: the secret of a user absent from the auth_file, looked up in PostgreSQL by
//! running `auth_query` (with `$1` = the user name) as `auth_user` in `auth_dbname`.
//!
//! [`AuthSource`] says where and how to ask (resolved from the configuration by
//! [`auth_source`]); [`AuthLookup`] asks, over one tokio-postgres connection per source
//! (opened on first use, reopened when broken, lookups on it one at a time), and caches the
//! answers, missing users included, for [`AUTH_CACHE_TTL`], so a flood of logins (or of
//! unknown user names) costs PostgreSQL one query per user and lifetime.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TlsMode;
use crate::net::tls::ServerTls;
use dashmap::DashMap;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::scram_secret::{hmac_sha256, ScramSecret};
use super::userlist::{parse_secret, Secret};
use crate::config::Config;

/// How long an auth_query answer (a secret, or "no such user") is reused.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// Cached answers kept per source; past this, expired ones are dropped, and if that is not
/// enough (a flood of distinct names) the cache starts over.
const CACHE_MAX_ENTRIES: usize = 10_000;

/// Where and how to look a user up. Two databases sharing all of this share one connection
/// and one cache.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AuthSource {
    /// Hosts tried in order (a path starting with `/` is a Unix socket directory).
    pub hosts: Vec<String>,
    pub port: u16,
    /// Database name on the server.
    pub dbname: String,
    /// `auth_user`.
    pub user: String,
    /// `auth_user`'s password; `None` when PostgreSQL asks for none.
    pub password: Option<String>,
    pub query: String,
}

impl fmt::Debug for AuthSource {
    /// Everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSource")
            .field("hosts", &self.hosts)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

/// Why a lookup could not say whether the user exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("auth_dbname \"{0}\" is not a configured database")]
    UnknownDatabase(String),
    #[error(
        "auth_user \"{0}\" has an md5 or SCRAM secret in auth_file; auth_query needs its plain password"
    )]
    AuthUserSecret(String),
    #[error("cannot connect to PostgreSQL as auth_user: {0}")]
    Connect(String),
    #[error("auth_query failed: {0}")]
    Query(String),
    #[error("auth_query must return two columns (user name, secret)")]
    Shape,
    #[error("auth_query timed out")]
    Timeout,
}

/// The auth_query settings that apply to clients of database `db`: the database's
/// `auth_user` / `auth_query` / `auth_dbname` override `[pgferry]`'s, and `auth_dbname`
/// defaults to `db` itself. `Ok(None)` when no `auth_user` applies, or when `db` is not
/// configured and there is no `auth_dbname` to fall back on (the user is then unknown).
pub fn auth_source(
    cfg: &Config,
    userlist: &HashMap<String, Secret>,
    db: &str,
) -> Result<Option<AuthSource>, LookupError> {
    let dbc = cfg.database(db);
    let g = &cfg.pgferry;
    let Some(user) = dbc
        .and_then(|d| d.auth_user.as_ref())
        .or(g.auth_user.as_ref())
    else {
        return Ok(None);
    };
    let query = dbc
        .and_then(|d| d.auth_query.clone())
        .unwrap_or_else(|| g.auth_query.clone());
    let auth_db = match dbc
        .and_then(|d| d.auth_dbname.as_deref())
        .or(g.auth_dbname.as_deref())
    {
        Some(name) => name,
        None if dbc.is_some() => db,
        None => return Ok(None),
    };
    let target = cfg
        .database(auth_db)
        .ok_or_else(|| LookupError::UnknownDatabase(auth_db.to_owned()))?;
    // The password: the auth database's own `user`/`password` pair if it names auth_user,
    // else auth_user's auth_file entry; none at all is fine for trust/peer in pg_hba.
    let password = match (&target.user, &target.password) {
        (Some(u), Some(p)) if u == user => Some(p.clone()),
        _ => match userlist.get(user) {
            Some(Secret::Plain(p)) => Some(p.clone()),
            Some(_) => return Err(LookupError::AuthUserSecret(user.clone())),
            None => None,
        },
    };
    Ok(Some(AuthSource {
        hosts: cfg.hosts_of(auth_db),
        port: target.port,
        dbname: cfg.server_dbname(auth_db).to_owned(),
        user: user.clone(),
        password,
        query,
    }))
}

/// Looks secrets up and caches the answers. Connections and cache live per [`AuthSource`].
pub struct AuthLookup {
    ttl_ms: AtomicU64,
    sources: DashMap<AuthSource, Arc<SourceState>>,
    /// Random per instance: seeds the salts of [`AuthLookup::mock_secret`].
    mock_key: [u8; 32],
}

#[derive(Default)]
struct SourceState {
    /// The lookup connection; held for the whole of a lookup, so lookups on one source run
    /// one at a time and a burst for one user waits for the first answer.
    conn: tokio::sync::Mutex<Option<Client>>,
    cache: parking_lot::Mutex<HashMap<String, Cached>>,
}

struct Cached {
    secret: Option<Secret>,
    at: Instant,
}

impl Default for AuthLookup {
    fn default() -> Self {
        Self {
            ttl_ms: AtomicU64::new(AUTH_CACHE_TTL.as_millis() as u64),
            sources: DashMap::new(),
            mock_key: rand::random(),
        }
    }
}

impl fmt::Debug for AuthLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLookup")
            .field("ttl", &self.cache_ttl())
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl AuthLookup {
    /// How long answers are reused.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Changes how long answers are reused (default [`AUTH_CACHE_TTL`]).
    pub fn set_cache_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A SCRAM verifier no password matches, to run a convincing exchange with a client whose
    /// user does not exist (as PostgreSQL does): its salt is the same on every attempt for the
    /// same name, so retries cannot tell it from a real user's.
    pub fn mock_secret(&self, user: &str) -> ScramSecret {
        let salt = hmac_sha256(&self.mock_key, &[user.as_bytes()]);
        ScramSecret {
            iterations: 4096,
            salt: salt[..16].to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    /// Forgets every answer and closes the lookup connections (RELOAD: the settings they
    /// were made with may have changed).
    pub fn clear(&self) {
        self.sources.clear();
    }

    /// The secret of `user` according to `src`: `Ok(None)` when the query returns no row or
    /// a NULL / empty secret. `timeout` bounds connecting and querying together; a new lookup
    /// connection uses TLS as server connections do (`tls`: `server_tls_*`, `None` = plain).
    pub async fn lookup(
        &self,
        src: &AuthSource,
        user: &str,
        timeout: Duration,
        tls: Option<&ServerTls>,
    ) -> Result<Option<Secret>, LookupError> {
        let state = match self.sources.get(src) {
            Some(s) => s.clone(),
            None => self.sources.entry(src.clone()).or_default().clone(),
        };
        if let Some(hit) = self.cached(&state, user) {
            return Ok(hit);
        }
        let mut conn = state.conn.lock().await;
        // Someone else may have asked while we waited.
        if let Some(hit) = self.cached(&state, user) {
            return Ok(hit);
        }
        let answer = tokio::time::timeout(timeout, query_secret(&mut conn, src, user, tls))
            .await
            .unwrap_or(Err(LookupError::Timeout));
        match answer {
            Ok(secret) => {
                self.remember(&state, user, secret.clone());
                Ok(secret)
            }
            Err(e) => {
                // Whatever state the connection is in, start afresh next time.
                *conn = None;
                Err(e)
            }
        }
    }

    fn cached(&self, state: &SourceState, user: &str) -> Option<Option<Secret>> {
        let ttl = self.cache_ttl();
        let cache = state.cache.lock();
        let hit = cache.get(user)?;
        (hit.at.elapsed() < ttl).then(|| hit.secret.clone())
    }

    fn remember(&self, state: &SourceState, user: &str, secret: Option<Secret>) {
        let ttl = self.cache_ttl();
        let mut cache = state.cache.lock();
        if cache.len() >= CACHE_MAX_ENTRIES && !cache.contains_key(user) {
            cache.retain(|_, c| c.at.elapsed() < ttl);
            if cache.len() >= CACHE_MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            user.to_owned(),
            Cached {
                secret,
                at: Instant::now(),
            },
        );
    }
}

/// Runs the query on `conn`, (re)connecting first if needed. A connection found broken by
/// the query (PostgreSQL restarted since the last lookup) is replaced once.
async fn query_secret(
    conn: &mut Option<Client>,
    src: &AuthSource,
    user: &str,
    tls: Option<&ServerTls>,
) -> Result<Option<Secret>, LookupError> {
    let mut retried = false;
    loop {
        if conn.as_ref().is_none_or(Client::is_closed) {
            *conn = Some(connect(src, tls).await?);
        }
        let Some(client) = conn.as_ref() else {
            return Err(LookupError::Connect("no connection".into()));
        };
        match client.query(src.query.as_str(), &[&user]).await {
            Ok(rows) => return secret_of(&rows),
            Err(e) if client.is_closed() && !retried => {
                tracing::debug!("auth_query connection lost ({e}); reconnecting");
                *conn = None;
                retried = true;
            }
            Err(e) => return Err(LookupError::Query(error_text(&e))),
        }
    }
}

/// Connects as `auth_user` to the first host that answers. TLS as for server connections
/// (the lookup's answers are password secrets): `server_tls_sslmode` prefer asks for it,
/// require and verify-* insist (verify-* check the certificate as pool connections do), and
/// a Unix socket directory never uses it.
async fn connect(src: &AuthSource, tls: Option<&ServerTls>) -> Result<Client, LookupError> {
    let mut last = LookupError::Connect("no host".into());
    for host in &src.hosts {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(src.port)
            .user(&src.user)
            .dbname(&src.dbname)
            .application_name("pgferry auth_query");
        if let Some(p) = &src.password {
            cfg.password(p);
        }
        let r = match tls.filter(|_| !crate::server::is_socket_dir(host)) {
            None => {
                cfg.ssl_mode(SslMode::Disable);
                spawn_connection(cfg.connect(NoTls).await)
            }
            Some(t) => {
                cfg.ssl_mode(match t.mode {
                    TlsMode::Prefer => SslMode::Prefer,
                    _ => SslMode::Require,
                });
                let tls = MakeRustlsConnect::new((*t.config).clone());
                spawn_connection(cfg.connect(tls).await)
            }
        };
        match r {
            Ok(client) => return Ok(client),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Runs a new connection's I/O in its own task; the client is what lookups use.
fn spawn_connection<S, T>(
    r: Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
) -> Result<Client, LookupError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = r.map_err(|e| LookupError::Connect(error_text(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("auth_query connection closed: {e}");
        }
    });
    Ok(client)
}

/// The secret in the second column of the first row.
fn secret_of(rows: &[tokio_postgres::Row]) -> Result<Option<Secret>, LookupError> {
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    if row.len() < 2 {
        return Err(LookupError::Shape);
    }
    let secret: Option<String> = row
        .try_get(1)
        .map_err(|e| LookupError::Query(error_text(&e)))?;
    Ok(secret.filter(|s| !s.is_empty()).map(|s| parse_secret(&s)))
}

/// A tokio-postgres error with the server's message when there is one (its `Display` says
/// only "db error").
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The cause says what went wrong ("error performing TLS handshake" alone does not).
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Database;

    fn config() -> Config {
        let mut c = Config::default();
        c.pgferry.auth_user = Some("ferry".into());
        c.databases.insert(
            "shop".into(),
            Database {
                host: "db1, db2".into(),
                port: 5433,
                dbname: Some("shop_prod".into()),
                ..Database::default()
            },
        );
        c.databases.insert(
            "auth".into(),
            Database {
                user: Some("ferry".into()),
                password: Some("from-db".into()),
                ..Database::default()
            },
        );
        c
    }

    #[test]
    fn source_defaults_to_the_clients_database() {
        let c = config();
        let users = HashMap::from([("ferry".to_owned(), Secret::Plain("pw".into()))]);
        let src = auth_source(&c, &users, "shop").unwrap().unwrap();
        assert_eq!(src.hosts, ["db1", "db2"]);
        assert_eq!(src.port, 5433);
        assert_eq!(src.dbname, "shop_prod");
        assert_eq!(src.user, "ferry");
        assert_eq!(src.password.as_deref(), Some("pw"));
        assert_eq!(src.query, crate::config::DEFAULT_AUTH_QUERY);
        assert!(!format!("{src:?}").contains("pw\""));
        // unknown database, no auth_dbname: nobody to ask
        assert_eq!(auth_source(&c, &users, "nope").unwrap(), None);
    }

    #[test]
    fn overrides_and_auth_dbname() {
        let mut c = config();
        c.pgferry.auth_dbname = Some("auth".into());
        let users = HashMap::new();
        let src = auth_source(&c, &users, "nope").unwrap().unwrap();
        assert_eq!(src.dbname, "auth");
        assert_eq!(src.password.as_deref(), Some("from-db"));
        let shop = c.databases.get_mut("shop").unwrap();
        shop.auth_user = Some("other".into());
        shop.auth_query = Some("SELECT $1, NULL".into());
        shop.auth_dbname = Some("missing".into());
        assert_eq!(
            auth_source(&c, &users, "shop"),
            Err(LookupError::UnknownDatabase("missing".into()))
        );
        c.databases.get_mut("shop").unwrap().auth_dbname = Some("auth".into());
        let src = auth_source(&c, &users, "shop").unwrap().unwrap();
        assert_eq!(src.user, "other");
        assert_eq!(src.password, None);
        assert_eq!(src.query, "SELECT $1, NULL");
        c.pgferry.auth_user = None;
        assert_eq!(auth_source(&c, &users, "nope").unwrap(), None);
    }

    #[test]
    fn auth_user_needs_a_plain_password() {
        let c = config();
        let users = HashMap::from([(
            "ferry".to_owned(),
            parse_secret(&postgres_protocol::password::md5(b"pw", "ferry")),
        )]);
        assert_eq!(
            auth_source(&c, &users, "shop"),
            Err(LookupError::AuthUserSecret("ferry".into()))
        );
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let lookup = AuthLookup::default();
        assert_eq!(lookup.cache_ttl(), AUTH_CACHE_TTL);
        let state = SourceState::default();
        lookup.remember(&state, "a", Some(Secret::Plain("x".into())));
        lookup.remember(&state, "b", None);
        assert_eq!(
            lookup.cached(&state, "a"),
            Some(Some(Secret::Plain("x".into())))
        );
        assert_eq!(lookup.cached(&state, "b"), Some(None));
        assert_eq!(lookup.cached(&state, "c"), None);
        lookup.set_cache_ttl(Duration::ZERO);
        assert_eq!(lookup.cached(&state, "a"), None);
        for i in 0..CACHE_MAX_ENTRIES + 10 {
            lookup.remember(&state, &i.to_string(), None);
        }
        assert!(state.cache.lock().len() <= CACHE_MAX_ENTRIES);
    }

    #[test]
    fn mock_secret_salt_is_stable_per_user() {
        let lookup = AuthLookup::default();
        let a = lookup.mock_secret("alice");
        assert_eq!(a.salt, lookup.mock_secret("alice").salt);
        assert_ne!(a.salt, lookup.mock_secret("bob").salt);
        assert_ne!(a.salt, AuthLookup::default().mock_secret("alice").salt);
        assert_eq!(a.salt.len(), 16);
    }
}
