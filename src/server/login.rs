//! Opening a server connection: TCP connect under `server_connect_timeout`, TLS negotiation per
//! `server_tls_sslmode`, StartupMessage, cleartext / md5 / SCRAM-SHA-256 authentication (SCRAM
//! with a password or with the keys a client's login left behind), then the parameters and
//! backend key the server reports until its first ReadyForQuery.

use super::{socket_path, ServerAddr, ServerConn, ServerError, ServerInfo};
use crate::auth::{AuthError, LearnedCredentials, ScramKeysClient, ServerCredentials};
use crate::config::TlsMode;
use crate::net::tls::SharedTls;
use crate::net::Stream;
use crate::net::{Conn, NetError};
use crate::protocol::{build, tag, views};
use bytes::BytesMut;
use md5::{Digest, Md5};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{lookup_host, TcpStream, UnixStream};

/// The password pgferry presents to a server. Its `Debug` never shows a secret.
#[derive(Clone)]
pub enum ServerPassword {
    None,
    Plain(String),
    /// `md5` + md5(password + user), as stored by PostgreSQL and PgBouncer's auth_file.
    Md5(String),
    /// Whatever the latest client login of this user left behind (SCRAM keys recovered from
    /// its proof, or a secret from auth_query); empty until a client has logged in once.
    Learned(Arc<LearnedCredentials>),
}

impl std::fmt::Debug for ServerPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerPassword::None => "None",
            ServerPassword::Plain(_) => "Plain(<redacted>)",
            ServerPassword::Md5(_) => "Md5(<redacted>)",
            ServerPassword::Learned(_) => "Learned",
        })
    }
}

impl ServerPassword {
    /// The credentials to use now.
    fn current(&self) -> Option<ServerCredentials> {
        match self {
            ServerPassword::None => None,
            ServerPassword::Plain(p) => Some(ServerCredentials::Plain(p.clone())),
            ServerPassword::Md5(m) => Some(ServerCredentials::Md5(m.clone())),
            ServerPassword::Learned(slot) => slot.get(),
        }
    }
}

/// A SCRAM exchange with the server, driven by a password or by pass-through keys.
enum Sasl {
    Password(ScramSha256),
    Keys(ScramKeysClient),
}

fn scram_error(e: AuthError) -> ServerError {
    ServerError::Scram(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        e.to_string(),
    ))
}

/// Where and as whom to log in.
#[derive(Clone, Debug)]
pub struct ServerTarget {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: ServerPassword,
    pub connect_timeout: Duration,
    pub max_packet_size: usize,
    pub max_prepared: usize,
    /// TLS towards servers (`server_tls_*`), shared with the App so RELOAD reaches every pool.
    pub tls: SharedTls,
    /// The `server_tls_*` settings `tls` was built from: when RELOAD changes them, the pool
    /// replaces its server connections, as it does for a changed address.
    pub tls_settings: String,
    /// Keepalive and `tcp_user_timeout` for the server socket.
    pub tcp: crate::net::TcpTuning,
    /// Extra startup parameters (the database's `client_encoding`, `datestyle`, `timezone`).
    pub startup_params: Vec<(String, String)>,
    /// The database's `connect_query`, run once after login before first use.
    pub connect_query: Option<String>,
    /// The database's `load_balance_hosts`.
    pub load_balance: crate::config::LoadBalanceHosts,
}

/// Connects and logs in; on success the connection is idle and ready for queries.
pub async fn connect(t: &ServerTarget) -> Result<ServerConn, ServerError> {
    let timeout = if t.connect_timeout.is_zero() {
        Duration::from_secs(3600)
    } else {
        t.connect_timeout
    };
    let (stream, addr) = tokio::time::timeout(timeout, open_socket(t))
        .await
        .map_err(|_| ServerError::ConnectTimeout)??;
    let setup = async {
        let mut server =
            ServerConn::new(Conn::new(stream, t.max_packet_size), addr, t.max_prepared);
        login(&mut server, t).await?;
        run_connect_query(&mut server, t).await?;
        Ok::<_, ServerError>(server)
    };
    tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| ServerError::ConnectTimeout)?
}

/// The server's socket, before the StartupMessage: a Unix socket when `host` is a directory
/// (never TLS there, as in PgBouncer and libpq), otherwise TCP to the first address of `host`
/// that accepts, with TCP_NODELAY, the keepalive settings and TLS per `server_tls_sslmode`.
async fn open_socket(t: &ServerTarget) -> Result<(Stream, ServerAddr), ServerError> {
    if let Some(path) = socket_path(&t.host, t.port) {
        let s = UnixStream::connect(&*path)
            .await
            .map_err(|e| ServerError::Connect(with_path(e, &path)))?;
        let addr = ServerAddr::Unix { path, port: t.port };
        return Ok((Stream::from(s), addr));
    }
    let mut last = None;
    for addr in lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(ServerError::Connect)?
    {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                tcp.set_nodelay(true).map_err(ServerError::Connect)?;
                t.tcp.apply(&tcp).map_err(ServerError::Connect)?;
                let stream = negotiate_tls(t, tcp, addr).await?;
                return Ok((stream, ServerAddr::Tcp(addr)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ServerError::Connect(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "host resolved to no address")
    })))
}

/// An I/O error that names the socket file (`No such file or directory` alone says nothing).
fn with_path(e: std::io::Error, path: &std::path::Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// SSLRequest per `server_tls_sslmode`: prefer takes TLS if the server offers it and plain
/// otherwise; require and verify-* insist on it; disable and allow never ask (as PgBouncer).
async fn negotiate_tls(
    t: &ServerTarget,
    mut tcp: TcpStream,
    addr: SocketAddr,
) -> Result<Stream, ServerError> {
    let tls = t.tls.load();
    let Some(server_tls) = &tls.server else {
        return Ok(Stream::from(tcp));
    };
    tcp.write_all(&SSL_REQUEST)
        .await
        .map_err(ServerError::Connect)?;
    // Exactly one byte: anything after it belongs to the TLS handshake (or is an injection the
    // handshake will reject), never to the plaintext protocol.
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(ServerError::Connect)?;
    match answer[0] {
        b'S' => crate::net::tls::connect(server_tls, &t.host, addr.ip(), tcp)
            .await
            .map_err(|e| ServerError::Tls(format!("TLS handshake with {addr} failed: {e}"))),
        b'N' if server_tls.mode == TlsMode::Prefer => Ok(Stream::from(tcp)),
        b'N' => Err(ServerError::Tls(format!(
            "server {addr} does not support TLS (server_tls_sslmode = \"{}\")",
            server_tls.mode
        ))),
        _ => Err(ServerError::Protocol("unexpected answer to SSLRequest")),
    }
}

/// Runs the database's `connect_query`; a failure (an error, or a transaction left open)
/// fails the login, so the connection is closed and never lent to a client.
async fn run_connect_query(server: &mut ServerConn, t: &ServerTarget) -> Result<(), ServerError> {
    let Some(sql) = t.connect_query.as_deref().filter(|q| !q.trim().is_empty()) else {
        return Ok(());
    };
    match server.hidden_query(sql).await {
        Ok((_, b'I')) => Ok(()),
        Ok(_) => {
            tracing::warn!(db = %t.dbname, "connect_query left a transaction open; closing the server connection");
            Err(ServerError::ConnectQuery(
                "connect_query left a transaction open".into(),
            ))
        }
        Err(ServerError::Server(raw)) => {
            let why = super::error_message(&raw);
            tracing::warn!(db = %t.dbname, error = %why, "connect_query failed; closing the server connection");
            Err(ServerError::ConnectQuery(why))
        }
        Err(e) => Err(e),
    }
}

async fn login(server: &mut ServerConn, t: &ServerTarget) -> Result<(), ServerError> {
    let mut params: Vec<(&str, &str)> = vec![("user", &t.user), ("database", &t.dbname)];
    params.extend(
        t.startup_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    build::startup_message(server.conn.out(), &params);
    server.conn.flush().await.map_err(NetError::Io)?;
    let mut sasl: Option<Sasl> = None;
    loop {
        let f = server.conn.read_frame().await?;
        match f.tag() {
            tag::AUTHENTICATION => {
                let body = f.body();
                let code = body
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or(ServerError::Protocol("short authentication request"))?;
                let rest = &body[4..];
                match code {
                    0 => {}
                    3 => {
                        let Some(ServerCredentials::Plain(pw)) = t.password.current() else {
                            return Err(ServerError::NoPassword);
                        };
                        password_message(server, pw.as_bytes()).await?;
                    }
                    5 => {
                        let salt: [u8; 4] = rest
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(ServerError::Protocol("short md5 salt"))?;
                        let hashed = match t.password.current() {
                            Some(ServerCredentials::Plain(p)) => {
                                postgres_protocol::authentication::md5_hash(
                                    t.user.as_bytes(),
                                    p.as_bytes(),
                                    salt,
                                )
                            }
                            Some(ServerCredentials::Md5(secret)) => md5_from_secret(&secret, salt),
                            Some(ServerCredentials::Scram(_)) | None => {
                                return Err(ServerError::NoPassword)
                            }
                        };
                        password_message(server, hashed.as_bytes()).await?;
                    }
                    10 => {
                        if !mechanisms(rest).any(|m| m == b"SCRAM-SHA-256") {
                            return Err(ServerError::UnsupportedAuth(10));
                        }
                        let (s, first) = match t.password.current() {
                            Some(ServerCredentials::Plain(pw)) => {
                                let s =
                                    ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                                let first = s.message().to_vec();
                                (Sasl::Password(s), first)
                            }
                            Some(ServerCredentials::Scram(keys)) => {
                                let mut s = ScramKeysClient::new(keys);
                                let first = s.client_first();
                                (Sasl::Keys(s), first)
                            }
                            Some(ServerCredentials::Md5(_)) | None => {
                                return Err(ServerError::NoPassword)
                            }
                        };
                        let mut body = BytesMut::new();
                        body.extend_from_slice(b"SCRAM-SHA-256\0");
                        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                        body.extend_from_slice(&first);
                        build::tagged(server.conn.out(), tag::PASSWORD, &body);
                        server.conn.flush().await.map_err(NetError::Io)?;
                        sasl = Some(s);
                    }
                    11 => {
                        let msg = match sasl.as_mut() {
                            Some(Sasl::Password(s)) => {
                                s.update(rest).map_err(ServerError::Scram)?;
                                s.message().to_vec()
                            }
                            Some(Sasl::Keys(s)) => s.server_first(rest).map_err(scram_error)?,
                            None => {
                                return Err(ServerError::Protocol("SASL continue without SASL"))
                            }
                        };
                        build::tagged(server.conn.out(), tag::PASSWORD, &msg);
                        server.conn.flush().await.map_err(NetError::Io)?;
                    }
                    12 => match sasl.as_mut() {
                        Some(Sasl::Password(s)) => s.finish(rest).map_err(ServerError::Scram)?,
                        Some(Sasl::Keys(s)) => s.server_final(rest).map_err(scram_error)?,
                        None => return Err(ServerError::Protocol("SASL final without SASL")),
                    },
                    other => return Err(ServerError::UnsupportedAuth(other)),
                }
            }
            tag::PARAMETER_STATUS => {
                server.note_parameter(f.body());
            }
            tag::BACKEND_KEY_DATA => {
                let (pid, secret) = views::backend_key(f.body())?;
                server.pid = pid;
                server.secret = secret;
            }
            tag::READY_FOR_QUERY => {
                // The backend key is known only now; publish it for the admin console.
                let mut info = ServerInfo {
                    pid: server.pid,
                    ..ServerInfo::clone_base(&server.info)
                };
                info.local_addr = server.conn.stream().local_addr();
                server.info = std::sync::Arc::new(info);
                return Ok(());
            }
            tag::ERROR_RESPONSE => return Err(ServerError::Server(f.raw().clone())),
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL => {}
            _ => return Err(ServerError::Protocol("unexpected message during login")),
        }
    }
}

async fn password_message(server: &mut ServerConn, pw: &[u8]) -> Result<(), ServerError> {
    let mut body = pw.to_vec();
    body.push(0);
    build::tagged(server.conn.out(), tag::PASSWORD, &body);
    server.conn.flush().await.map_err(NetError::Io)?;
    Ok(())
}

/// The SASL mechanism names in an AuthenticationSASL body.
fn mechanisms(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (name, after) = views::split_cstr(rest)?;
        if name.is_empty() {
            return None;
        }
        rest = after;
        Some(name)
    })
}

/// md5 response from a stored `md5…` secret: "md5" + md5(hex(secret) + salt).
fn md5_from_secret(secret: &str, salt: [u8; 4]) -> String {
    let hex = secret.strip_prefix("md5").unwrap_or(secret);
    let mut h = Md5::new();
    h.update(hex.as_bytes());
    h.update(salt);
    let digest = h.finalize();
    let mut out = String::from("md5");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn md5_secret_matches_plain_password_hash() {
        let salt = [1, 2, 3, 4];
        let plain = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        let stored = postgres_protocol::password::md5(b"secret", "app");
        assert_eq!(super::md5_from_secret(&stored, salt), plain);
    }
}
