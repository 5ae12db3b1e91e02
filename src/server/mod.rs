//! One server connection: login (see `login`), the parameters the server reported, the
//! prepared statements pgferry created on it, and hidden queries pgferry runs on it
//! (parameter sync, reset, health).

mod login;
pub mod prepared;
pub mod replay;

pub use login::{connect, ServerPassword, ServerTarget};

use crate::clock::Tick;
use crate::net::Stream;
use crate::net::{Conn, NetError};
use crate::protocol::{tag, views};
use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a server connection goes: a TCP address, or a Unix socket when the database's `host`
/// is a directory (starts with `/`, as in PgBouncer and libpq): `<dir>/.s.PGSQL.<port>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    Unix { path: Arc<Path>, port: u16 },
}

impl ServerAddr {
    /// SHOW SERVERS' `addr`: the IP address, or `unix` (as PgBouncer).
    pub fn ip_text(&self) -> String {
        match self {
            ServerAddr::Tcp(a) => a.ip().to_string(),
            ServerAddr::Unix { .. } => "unix".to_owned(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            ServerAddr::Tcp(a) => a.port(),
            ServerAddr::Unix { port, .. } => *port,
        }
    }
}

/// True when a database's `host` names the directory of the server's Unix socket (starts with
/// `/`, as in PgBouncer and libpq) rather than a host.
pub fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// The socket of PostgreSQL's `port` in directory `host`, when `host` is one.
pub fn socket_path(host: &str, port: u16) -> Option<Arc<Path>> {
    is_socket_dir(host)
        .then(|| Arc::from(Path::new(host).join(format!(".s.PGSQL.{port}")).as_path()))
}

/// Why talking to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server: {0}")]
    Connect(std::io::Error),
    #[error("timed out connecting to server")]
    ConnectTimeout,
    #[error("server connection lost: {0}")]
    Net(#[from] NetError),
    /// The server answered with an ErrorResponse (kept whole so it can be forwarded).
    #[error("server error: {}", error_message(.0))]
    Server(Bytes),
    #[error("server requested a password but none is configured for this user")]
    NoPassword,
    #[error("unsupported server authentication request {0}")]
    UnsupportedAuth(i32),
    #[error("server SCRAM exchange failed: {0}")]
    Scram(std::io::Error),
    /// TLS was required but refused, or the handshake failed (certificate not trusted, …).
    #[error("{0}")]
    Tls(String),
    #[error("protocol violation from server: {0}")]
    Protocol(&'static str),
    /// The database's connect_query failed: the connection is closed, as after a failed login.
    #[error("connect_query failed: {0}")]
    ConnectQuery(String),
    #[error("malformed message from server: {0}")]
    Frame(#[from] crate::protocol::FrameError),
}

impl ServerError {
    /// The error without the "could not connect to server" of a failed connect, for messages
    /// that already say it (the client's "pgferry could not connect to server: …", a host's
    /// remembered failure).
    pub fn detail(&self) -> String {
        match self {
            ServerError::Connect(io) => io.to_string(),
            other => other.to_string(),
        }
    }

    /// True when trying again shortly may succeed: the server is unreachable, restarting
    /// (57P01–57P03), out of connection slots (53300), or dropped the connection mid-login.
    pub fn is_transient(&self) -> bool {
        match self {
            ServerError::Connect(_)
            | ServerError::ConnectTimeout
            | ServerError::Net(_)
            | ServerError::ConnectQuery(_) => true,
            ServerError::Server(raw) => {
                let code = views::error_field(raw.get(5..).unwrap_or_default(), b'C');
                matches!(code, Some(c) if c.starts_with(b"57P0") || c == b"53300" || c.starts_with(b"08"))
            }
            _ => false,
        }
    }
}

/// The human-readable message of a raw ErrorResponse frame.
pub fn error_message(raw: &Bytes) -> String {
    let body = raw.get(5..).unwrap_or_default();
    let msg = views::error_field(body, b'M').unwrap_or(b"unknown error");
    String::from_utf8_lossy(msg).into_owned()
}

/// What the admin console shows of one server connection.
#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    pub addr: ServerAddr,
    pub local_addr: Option<SocketAddr>,
    pub pid: i32,
    pub connect_time_us: u64,
    /// Held by a client now.
    pub active: AtomicBool,
    /// Id of the client holding it, 0 if none.
    pub client: AtomicU64,
    /// When it was last handed to a client (µs since epoch).
    pub request_time_us: AtomicU64,
    pub prepared_statements: AtomicUsize,
    /// A schema change (DDL through pgferry, or a server refusing a statement whose result
    /// columns changed) may have made this connection's prepared statements stale: those its
    /// clients send as text with every use are deallocated before it serves another
    /// transaction (see [`ServerConn::statements_stale`]).
    pub statements_outdated: AtomicBool,
    pub application_name: Mutex<String>,
    /// Protocol and cipher when the connection uses TLS (SHOW SERVERS `tls`).
    pub tls: Option<String>,
}

impl ServerInfo {
    /// A fresh copy of the identity fields (counters start from zero).
    fn clone_base(o: &ServerInfo) -> ServerInfo {
        ServerInfo {
            id: o.id,
            addr: o.addr.clone(),
            local_addr: o.local_addr,
            pid: o.pid,
            connect_time_us: o.connect_time_us,
            active: AtomicBool::new(false),
            client: AtomicU64::new(0),
            request_time_us: AtomicU64::new(o.request_time_us.load(Ordering::Relaxed)),
            prepared_statements: AtomicUsize::new(0),
            statements_outdated: AtomicBool::new(false),
            application_name: Mutex::new(String::new()),
            tls: o.tls.clone(),
        }
    }
}

/// Servers of one pool, by id; each connection removes itself when it closes.
pub type ServerMap = Arc<DashMap<u64, Arc<ServerInfo>>>;

/// Keeps a connection listed in its pool's map for exactly as long as it lives.
struct Tracker {
    map: ServerMap,
    id: u64,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.map.remove(&self.id);
    }
}

/// One logged-in server connection.
/// One client's wanted session parameters (lowercase name → value), shared by clients that
/// want the same and never changed while shared.
pub type ParamSet = Arc<Vec<(String, String)>>;

pub struct ServerConn {
    pub conn: Conn<Stream>,
    /// Unique id for logs and the admin console.
    pub id: u64,
    /// The server's BackendKeyData (for cancel requests).
    pub pid: i32,
    pub secret: i32,
    /// Reported parameters: lowercase name → (name as reported, value).
    pub params: HashMap<String, (String, String)>,
    /// Unreported parameters pgferry set on this connection (lowercase name → value).
    unreported: HashMap<String, String>,
    /// The client parameter set this connection was last found to match (see
    /// [`ServerConn::matches`]); forgotten whenever a parameter of the connection changes.
    in_sync_with: Option<ParamSet>,
    /// pgferry-named prepared statements on this connection.
    pub prepared: prepared::Registry,
    /// What to send again if the server refuses a statement because a table changed under it.
    pub replay: replay::Replay,
    pub created: Tick,
    pub last_used: Tick,
    /// The database generation it was opened under (RECONNECT bumps it).
    pub generation: u64,
    pub info: Arc<ServerInfo>,
    tracker: Option<Tracker>,
}

impl ServerConn {
    fn new(conn: Conn<Stream>, addr: ServerAddr, max_prepared: usize) -> Self {
        let now = Tick::now();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let local_addr = conn.stream().local_addr();
        ServerConn {
            info: Arc::new(ServerInfo {
                id,
                addr,
                local_addr,
                pid: 0,
                connect_time_us: now.wall_us(),
                active: AtomicBool::new(false),
                client: AtomicU64::new(0),
                request_time_us: AtomicU64::new(now.wall_us()),
                prepared_statements: AtomicUsize::new(0),
                statements_outdated: AtomicBool::new(false),
                application_name: Mutex::new(String::new()),
                tls: conn.stream().tls_description(),
            }),
            tracker: None,
            generation: 0,
            conn,
            id,
            pid: 0,
            secret: 0,
            params: HashMap::new(),
            unreported: HashMap::new(),
            in_sync_with: None,
            prepared: prepared::Registry::new(max_prepared),
            replay: replay::Replay::default(),
            created: now,
            last_used: now,
        }
    }

    /// Lists the connection in `map` until it is dropped.
    pub fn track(&mut self, map: &ServerMap) {
        map.insert(self.id, self.info.clone());
        self.tracker = Some(Tracker {
            map: map.clone(),
            id: self.id,
        });
    }

    /// Records a ParameterStatus; returns the (name, value) it carried.
    pub fn note_parameter(&mut self, body: &[u8]) -> Option<(String, String)> {
        let (name, value) = views::parameter_status(body).ok()?;
        self.in_sync_with = None;
        self.params.insert(
            name.to_ascii_lowercase(),
            (name.to_owned(), value.to_owned()),
        );
        Some((name.to_owned(), value.to_owned()))
    }

    /// The current value of a parameter, reported or set by pgferry.
    pub fn param(&self, lower: &str) -> Option<&str> {
        self.params
            .get(lower)
            .map(|(_, v)| v.as_str())
            .or_else(|| self.unreported.get(lower).map(String::as_str))
    }

    /// Names of the unreported parameters pgferry set on this connection.
    pub fn unreported_names(&self) -> impl Iterator<Item = &String> {
        self.unreported.keys()
    }

    /// Records an unreported parameter pgferry set (or learned) on this connection.
    pub fn set_unreported(&mut self, lower: String, value: String) {
        self.in_sync_with = None;
        self.unreported.insert(lower, value);
    }

    /// Forgets unreported parameters, keeping those `keep` says yes to (all are forgotten
    /// after DISCARD ALL or server_reset_query).
    pub fn retain_unreported(&mut self, keep: impl FnMut(&String, &mut String) -> bool) {
        self.in_sync_with = None;
        self.unreported.retain(keep);
    }

    /// True when this connection was found to have exactly the settings `set` asks for and
    /// nothing changed since. `set` is immutable while shared (clients copy on write), and
    /// held here, so pointer equality means equal contents.
    pub fn matches(&self, set: &ParamSet) -> bool {
        self.in_sync_with
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, set))
    }

    /// Remembers that this connection has the settings `set` asks for.
    pub fn mark_in_sync(&mut self, set: &ParamSet) {
        self.in_sync_with = Some(Arc::clone(set));
    }

    /// True if the server reports this parameter (GUC_REPORT).
    pub fn is_reported(&self, lower: &str) -> bool {
        self.params.contains_key(lower)
    }

    /// Checks, without blocking, that an idle connection is still usable: a healthy idle
    /// server has sent nothing; EOF or unexpected bytes (e.g. the FATAL of a terminated
    /// backend) mean it must be discarded.
    pub fn is_alive_idle(&mut self) -> bool {
        if self.conn.buffered() > 0 {
            return false;
        }
        self.conn.stream().is_quiet()
    }

    /// True if statements must be deallocated before the connection serves another
    /// transaction: this server refused one because a table changed under it (then all go),
    /// or a schema change elsewhere may have done the same to the statements whose clients
    /// send their text with every use ([`prepared::RESENT`]). A client's own named statements
    /// stay in that case: as on a direct connection, the server refuses them if their columns
    /// changed, which tells the client's driver to prepare them again.
    pub fn statements_stale(&self) -> bool {
        self.prepared.is_stale()
            || (self.info.statements_outdated.load(Ordering::Relaxed) && self.prepared.has_resent())
    }

    /// Shows the number of statements prepared here in SHOW SERVERS.
    pub fn publish_statement_count(&self) {
        let n = self.prepared.len();
        if self.info.prepared_statements.load(Ordering::Relaxed) != n {
            self.info.prepared_statements.store(n, Ordering::Relaxed);
        }
    }

    /// A statement is about to be prepared here: if no statement that a schema change could
    /// have outdated is left, the mark is cleared (what is prepared from now on is current).
    pub fn statements_fresh(&self) {
        if self.info.statements_outdated.load(Ordering::Relaxed) && !self.prepared.has_resent() {
            self.info
                .statements_outdated
                .store(false, Ordering::Relaxed);
        }
    }

    /// Deallocates the statements [`ServerConn::statements_stale`] names, so each is prepared
    /// again from the new definition at its next use. False when the server did not answer
    /// as expected: the connection must be closed.
    pub async fn drop_stale_statements(&mut self) -> bool {
        // Cleared first: a schema change announced while the statements go marks them again.
        let outdated = self.info.statements_outdated.swap(false, Ordering::Relaxed);
        if self.prepared.is_stale() {
            if !matches!(self.hidden_query("DEALLOCATE ALL").await, Ok((_, b'I'))) {
                return false;
            }
            self.prepared.clear();
            self.publish_statement_count();
            return true;
        }
        if !outdated {
            return true;
        }
        let ids = self.prepared.remove_resent();
        if ids.is_empty() {
            return true;
        }
        self.publish_statement_count();
        let sql: Vec<String> = ids
            .iter()
            .map(|id| {
                format!(
                    "DEALLOCATE {}",
                    String::from_utf8_lossy(&prepared::server_name(*id))
                )
            })
            .collect();
        matches!(self.hidden_query(&sql.join("; ")).await, Ok((_, b'I')))
    }

    /// Runs a simple query whose replies are consumed here, never shown to a client.
    /// Returns the first column of each DataRow (for `SHOW`), and fails with the server's
    /// ErrorResponse if one came. The connection is idle ('I') again on success.
    pub async fn hidden_query(&mut self, sql: &str) -> Result<(Vec<String>, u8), ServerError> {
        self.conn.queue(&views::query(sql));
        self.conn.flush().await.map_err(NetError::Io)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag() {
                tag::READY_FOR_QUERY => {
                    let status = views::ready_status(f.body())?;
                    return match error {
                        Some(e) => Err(ServerError::Server(e)),
                        None => Ok((rows, status)),
                    };
                }
                tag::ERROR_RESPONSE => error = Some(f.raw().clone()),
                tag::PARAMETER_STATUS => {
                    self.note_parameter(f.body());
                }
                tag::DATA_ROW => {
                    if let Some(v) = first_column(f.body()) {
                        rows.push(v);
                    }
                }
                tag::COPY_IN => return Err(ServerError::Protocol("COPY in a hidden query")),
                _ => {}
            }
        }
    }
}

/// The first column of a DataRow as text (None for NULL or malformed rows).
fn first_column(body: &[u8]) -> Option<String> {
    let n = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if n < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let v = body.get(6..6 + len)?;
    Some(String::from_utf8_lossy(v).into_owned())
}

/// Quotes a string as an escape-string SQL literal (`E'it''s'`), which reads the same whatever
/// `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}
