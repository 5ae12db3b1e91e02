//! The client's way in: SSL/GSS negotiation (TLS per `client_tls_sslmode`, see `tls`), cancel
//! requests, protocol version negotiation, limits, authentication against the configured
//! credentials (trust, cleartext, md5, SCRAM-SHA-256), and the login reply.

use super::params::ClientParams;
use super::{refuse, ClientError};
use crate::admin::{self, AdminRole};
use crate::app::cancel::CancelSlot;
use crate::app::{Admission, App};
use crate::auth::{self, ScramKeys, ScramServer, Secret, ServerCredentials};
use crate::config::AuthType;
use crate::config::PoolMode;
use crate::net::Stream;
use crate::net::{Conn, NetError};
use crate::pool::{Checkout, Pool};
use crate::protocol::build;
use crate::protocol::startup::{StartupMessage, StartupPacket};
use crate::protocol::{tag, views};
use crate::server::ServerError;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A logged-in client, ready for its session.
pub struct Login {
    pub pool: Arc<Pool>,
    /// Session mode: the client's server, taken at login so its BackendKeyData is the
    /// server's own (already carrying the client's startup parameters).
    pub server: Option<Checkout>,
    pub user: String,
    pub params: ClientParams,
    pub pid: i32,
    pub cancel: Arc<CancelSlot>,
    /// The client's place under the client caps; registering the client takes it over.
    pub admission: Admission,
}

/// Where a successful login leads.
pub enum Outcome {
    Session(Box<Login>),
    /// The admin console (the virtual database `pgbouncer` / `pgferry`).
    Admin {
        user: String,
        role: AdminRole,
    },
}

/// Runs the startup phase under `client_login_timeout`. `Ok(None)` means the connection was
/// fully handled here (a cancel request).
pub async fn login(
    app: &Arc<App>,
    conn: &mut Conn<Stream>,
    peer: SocketAddr,
    count: usize,
) -> Result<Option<Outcome>, ClientError> {
    let timeout = app
        .config
        .load()
        .pgferry
        .client_login_timeout()
        .unwrap_or(Duration::from_secs(24 * 3600));
    match tokio::time::timeout(timeout, startup(app, conn, peer, count)).await {
        Ok(r) => r,
        Err(_) => {
            let _ = refuse(conn, "08P01", "client_login_timeout").await;
            Err(ClientError::LoginTimeout)
        }
    }
}

async fn startup(
    app: &Arc<App>,
    conn: &mut Conn<Stream>,
    peer: SocketAddr,
    count: usize,
) -> Result<Option<Outcome>, ClientError> {
    let msg = loop {
        match conn.read_startup().await {
            Ok(StartupPacket::SslRequest) => {
                super::tls::answer_ssl_request(app, conn, peer).await?;
            }
            Ok(StartupPacket::GssEncRequest) => super::tls::answer_gss_request(conn).await?,
            Ok(StartupPacket::Cancel { pid, secret }) => {
                let wait = app.config.load().pgferry.cancel_wait_timeout();
                app.cancels.cancel(pid, secret, wait).await;
                return Ok(None);
            }
            Ok(StartupPacket::Startup(m)) => break m,
            Err(NetError::Frame(e)) => {
                refuse(conn, "08P01", &format!("invalid startup packet: {e}")).await?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    super::tls::require_tls(app, conn).await?;
    negotiate_version(conn, &msg).await?;
    let cfg = app.config.load_full();
    if count > cfg.pgferry.max_client_conn as usize {
        refuse(
            conn,
            "53300",
            "no more connections allowed (max_client_conn)",
        )
        .await?;
    }
    if app.is_shutting_down() {
        refuse(conn, "57P03", "pgferry is shutting down").await?;
    }
    let Some(user) = msg
        .param("user")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
    else {
        return refuse(
            conn,
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
        .await
        .map(|_| None);
    };
    if msg
        .param("replication")
        .is_some_and(|r| r != "false" && r != "0")
    {
        refuse(
            conn,
            "0A000",
            "replication connections are not supported by pgferry",
        )
        .await?;
    }
    let database = msg
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();

    if let Err(e) = authenticate(app, conn, &user, &database, cfg.pgferry.auth_type).await {
        app.counters.login_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %user, %database, "login failed: {e}");
        return Err(e);
    }
    if admin::DATABASES.contains(&database.as_str()) {
        let role = if cfg.pgferry.admin_users.contains(&user) {
            AdminRole::Admin
        } else if cfg.pgferry.stats_users.contains(&user) {
            AdminRole::Stats
        } else {
            return refuse(conn, "28000", "not allowed").await.map(|_| None);
        };
        return Ok(Some(Outcome::Admin { user, role }));
    }
    let admission = match app.admit_client(&database, &user) {
        Ok(a) => a,
        Err(why) => return refuse(conn, "53300", why).await.map(|_| None),
    };
    let Some(pool) = app.pool(&database, &user) else {
        app.counters.login_failures.fetch_add(1, Ordering::Relaxed);
        return refuse(
            conn,
            "3D000",
            &format!("database \"{database}\" does not exist"),
        )
        .await
        .map(|_| None);
    };
    if pool.control.is_disabled() {
        return refuse(
            conn,
            "08P01",
            &format!("database \"{database}\" is disabled"),
        )
        .await
        .map(|_| None);
    }
    let welcome = match pool.fetch_welcome().await {
        Ok(w) => w,
        Err(e) => {
            app.counters.login_failures.fetch_add(1, Ordering::Relaxed);
            return refuse_for_server(conn, e).await.map(|_| None);
        }
    };
    let mut startup_params = msg.params;
    if cfg.pgferry.application_name_add_host {
        // PgBouncer's format: "name - host:port", so server-side logs show the real client.
        let suffix = format!("{}:{}", peer.ip(), peer.port());
        match startup_params
            .iter_mut()
            .find(|(k, _)| k == "application_name")
        {
            Some((_, v)) => *v = format!("{v} - {suffix}"),
            None => startup_params.push(("application_name".into(), format!(" - {suffix}"))),
        }
    }
    let mut params = ClientParams::new(
        &welcome,
        &startup_params,
        &cfg.pgferry.track_extra_parameters,
        &cfg.pgferry.ignore_startup_parameters,
    );
    params.share(&pool.param_sets);
    let mut server = None;
    let (pid, secret, cancel) = if pool.settings().mode == PoolMode::Session {
        // Session mode tells the truth: the client gets its server's real BackendKeyData, so
        // pg_backend_pid() and the key agree (cancels still go through pgferry).
        let c = match session_server(&pool, &mut params).await {
            Ok(c) => c,
            Err(e) => return refuse_login(app, conn, e).await.map(|_| None),
        };
        let (pid, secret) = (c.conn_ref().pid, c.conn_ref().secret);
        server = Some(c);
        app.cancels.register_as(pid, secret)
    } else {
        app.cancels.register()
    };
    let out = conn.out();
    build::auth_ok(out);
    for (k, v) in params.announce(&welcome) {
        build::parameter_status(out, &k, &v);
    }
    build::backend_key_data(out, pid, secret);
    if !cfg.pgferry.login_notify_message.is_empty() {
        build::notice(
            out,
            crate::protocol::build::Severity::Notice,
            "00000",
            &cfg.pgferry.login_notify_message,
        );
    }
    // Sent by the session loop, after the client is registered: a client that has its
    // ReadyForQuery counts toward max_db/user_client_connections.
    build::ready_for_query(out, b'I');
    app.counters.logins.fetch_add(1, Ordering::Relaxed);
    pool.stats.logins.fetch_add(1, Ordering::Relaxed);
    Ok(Some(Outcome::Session(Box::new(Login {
        pool,
        server,
        user,
        params,
        pid,
        cancel,
        admission,
    }))))
}

/// Why a session-mode login could not get its server ready.
enum SessionServerError {
    Pool(crate::pool::PoolError),
    /// The server rejected the client's startup parameters (e.g. an unknown TimeZone).
    Rejected(bytes::Bytes),
    Broken(String),
}

/// Checks out the server a session-mode client keeps, with the client's parameters applied.
async fn session_server(
    pool: &Arc<Pool>,
    params: &mut ClientParams,
) -> Result<Checkout, SessionServerError> {
    let mut c = pool.checkout().await.map_err(SessionServerError::Pool)?;
    if let Some(sql) = params.sync_sql(c.conn_ref()) {
        match c.conn().hidden_query(&sql).await {
            Ok((_, b'I')) => params.after_sync(c.conn()),
            Ok(_) => {
                return Err(SessionServerError::Broken(
                    "server left a transaction open while applying parameters".into(),
                ))
            }
            Err(ServerError::Server(raw)) => {
                c.release();
                return Err(SessionServerError::Rejected(raw));
            }
            Err(e) => return Err(SessionServerError::Broken(e.to_string())),
        }
    }
    Ok(c)
}

async fn refuse_login(
    app: &Arc<App>,
    conn: &mut Conn<Stream>,
    e: SessionServerError,
) -> Result<(), ClientError> {
    app.counters.login_failures.fetch_add(1, Ordering::Relaxed);
    match e {
        SessionServerError::Pool(e) => refuse_for_server(conn, e).await,
        SessionServerError::Rejected(raw) => {
            conn.queue(&raw);
            conn.flush().await?;
            Err(ClientError::Refused(crate::server::error_message(&raw)))
        }
        SessionServerError::Broken(why) => {
            refuse(
                conn,
                "08006",
                &format!("pgferry could not prepare server connection: {why}"),
            )
            .await
        }
    }
}

/// Answers a request for a newer 3.x minor version or `_pq_.` options the way PostgreSQL does.
async fn negotiate_version(
    conn: &mut Conn<Stream>,
    msg: &StartupMessage,
) -> Result<(), ClientError> {
    if msg.major != 3 {
        refuse(
            conn,
            "0A000",
            &format!(
                "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
                msg.major, msg.minor
            ),
        )
        .await?;
    }
    let unsupported: Vec<String> = msg
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if msg.minor > 0 || !unsupported.is_empty() {
        build::negotiate_protocol_version(conn.out(), 0, unsupported);
    }
    Ok(())
}

/// Reports a failed server checkout during login.
pub(super) async fn refuse_for_server(
    conn: &mut Conn<Stream>,
    e: crate::pool::PoolError,
) -> Result<(), ClientError> {
    match e {
        crate::pool::PoolError::Server(ServerError::Server(raw)) => {
            conn.queue(&raw);
            conn.flush().await?;
            Err(ClientError::Refused(crate::server::error_message(&raw)))
        }
        crate::pool::PoolError::WaitTimeout => refuse(conn, "08P01", "query_wait_timeout").await,
        e => {
            refuse(
                conn,
                "08006",
                &format!("pgferry could not connect to server: {}", e.detail()),
            )
            .await
        }
    }
}

fn password_failed(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// Authenticates `user` (logging in to `database`) by `auth_type` against the auth_file, or
/// for users absent from it, against the secret `auth_query` finds. On success, keeps what a
/// server login as this user will need (the secret, or SCRAM keys recovered from the
/// client's proof) with the (database, user) pool.
async fn authenticate(
    app: &Arc<App>,
    conn: &mut Conn<Stream>,
    user: &str,
    database: &str,
    auth_type: AuthType,
) -> Result<(), ClientError> {
    if auth_type == AuthType::Cert {
        // The verified client certificate names the user; the server login uses what the
        // auth_file (or the database's forced user) holds for it.
        return super::tls::cert_login(conn, user).await;
    }
    let secret = match app.secret(user) {
        Some(s) => Some(s),
        None => match app.lookup_secret(database, user).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%user, %database, "auth_query lookup failed: {e}");
                return refuse(
                    conn,
                    "08006",
                    &format!("pgferry could not look up user \"{user}\" (auth_query): {e}"),
                )
                .await;
            }
        },
    };
    let Some(secret) = secret else {
        return match auth_type {
            AuthType::Trust if !app.has_userlist() && !app.has_auth_query(database) => Ok(()),
            AuthType::Trust => {
                refuse(conn, "28000", &format!("role \"{user}\" does not exist")).await
            }
            _ => unknown_user(app, conn, user, auth_type).await,
        };
    };
    let learned = match (auth_type, &secret) {
        (AuthType::Trust, _) => None,
        (AuthType::Plain, _) => {
            build::auth_cleartext(conn.out());
            conn.flush().await?;
            let given = read_password(conn).await?;
            let (ok, keys) = match &secret {
                Secret::Plain(p) => (constant_time_eq(p.as_bytes(), &given), None),
                Secret::Md5(m) => {
                    let computed = postgres_protocol::password::md5(&given, user);
                    (constant_time_eq(m.as_bytes(), computed.as_bytes()), None)
                }
                Secret::Scram(s) => match auth::scram_keys_from_password(s, &given) {
                    Some(keys) => (true, Some(keys)),
                    None => (false, None),
                },
            };
            if !ok {
                return refuse(conn, "28P01", &password_failed(user)).await;
            }
            keys
        }
        (AuthType::Md5, Secret::Scram(s)) => Some(scram(conn, user, s.clone()).await?),
        (AuthType::Md5, _) => {
            let salt: [u8; 4] = rand::random();
            build::auth_md5(conn.out(), salt);
            conn.flush().await?;
            let given = read_password(conn).await?;
            if !auth::md5_verify(&secret, user, salt, &given) {
                return refuse(conn, "28P01", &password_failed(user)).await;
            }
            None
        }
        (AuthType::ScramSha256 | AuthType::Cert, _) => match app.scram_secret(user, &secret) {
            Some(s) => Some(scram(conn, user, s).await?),
            // An md5 secret cannot check a SCRAM proof (nor can PostgreSQL's).
            None => return unknown_user(app, conn, user, auth_type).await,
        },
    };
    let creds = match secret {
        Secret::Plain(p) => Some(ServerCredentials::Plain(p)),
        Secret::Md5(m) => Some(ServerCredentials::Md5(m)),
        Secret::Scram(_) => learned.map(ServerCredentials::Scram),
    };
    if let Some(creds) = creds {
        app.learn(database, user, creds);
    }
    Ok(())
}

/// Refuses a user that cannot log in with 28P01, after the same exchange a real user gets,
/// so the answer does not tell whether the user exists.
async fn unknown_user(
    app: &Arc<App>,
    conn: &mut Conn<Stream>,
    user: &str,
    auth_type: AuthType,
) -> Result<(), ClientError> {
    match auth_type {
        AuthType::ScramSha256 => {
            scram(conn, user, app.auth_lookup.mock_secret(user)).await?;
        }
        AuthType::Md5 => {
            build::auth_md5(conn.out(), rand::random());
            conn.flush().await?;
            read_password(conn).await?;
        }
        _ => {
            build::auth_cleartext(conn.out());
            conn.flush().await?;
            read_password(conn).await?;
        }
    }
    refuse(conn, "28P01", &password_failed(user)).await
}

/// Reads a PasswordMessage body without its trailing NUL.
async fn read_password(conn: &mut Conn<Stream>) -> Result<Vec<u8>, ClientError> {
    let f = conn.read_frame().await?;
    if f.tag() != tag::PASSWORD {
        return refuse(conn, "08P01", "expected a password message")
            .await
            .map(|_| Vec::new());
    }
    let body = f.body();
    Ok(body.strip_suffix(&[0]).unwrap_or(body).to_vec())
}

/// Runs a SCRAM-SHA-256 exchange with the client; on success returns the keys recovered from
/// its proof.
async fn scram(
    conn: &mut Conn<Stream>,
    user: &str,
    secret: auth::ScramSecret,
) -> Result<ScramKeys, ClientError> {
    build::auth_sasl(conn.out());
    conn.flush().await?;
    let f = conn.read_frame().await?;
    if f.tag() != tag::PASSWORD {
        return fail(conn, "08P01", "expected SASL response").await;
    }
    // SASLInitialResponse: mechanism name, then the length-prefixed client-first-message.
    let body = f.body();
    let Some((mech, rest)) = views::split_cstr(body) else {
        return fail(conn, "08P01", "malformed SASLInitialResponse").await;
    };
    if mech != b"SCRAM-SHA-256" {
        return fail(
            conn,
            "28000",
            "client selected an invalid SASL authentication mechanism",
        )
        .await;
    }
    let Some(data) = rest.get(4..) else {
        return fail(conn, "08P01", "malformed SASLInitialResponse").await;
    };
    let mut server = ScramServer::new(secret);
    let first = match server.client_first(data) {
        Ok(m) => m,
        Err(e) => return fail(conn, "08P01", &format!("malformed SCRAM message: {e}")).await,
    };
    build::auth_sasl_continue(conn.out(), first);
    conn.flush().await?;
    let f = conn.read_frame().await?;
    if f.tag() != tag::PASSWORD {
        return fail(conn, "08P01", "expected SASL response").await;
    }
    match server.client_final(f.body()) {
        Ok(fin) => {
            build::auth_sasl_final(conn.out(), fin);
            match server.keys() {
                Some(keys) => Ok(keys),
                None => fail(conn, "XX000", "SCRAM exchange ended without keys").await,
            }
        }
        Err(auth::AuthError::PasswordMismatch) => fail(conn, "28P01", &password_failed(user)).await,
        Err(e) => fail(conn, "08P01", &format!("malformed SCRAM message: {e}")).await,
    }
}

/// Compares secrets without an early exit, so timing reveals nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// [`refuse`] for functions that return a value on success.
async fn fail<T>(conn: &mut Conn<Stream>, code: &str, message: &str) -> Result<T, ClientError> {
    refuse(conn, code, message).await?;
    Err(ClientError::Refused(message.to_owned()))
}
