//! The client-facing listeners: one TCP socket per address of `listen_addr` (IPv4 and IPv6
//! literals, host names, `*`), the Unix socket `<unix_socket_dir>/.s.PGSQL.<port>`, and the
//! socket options pgferry sets (`listen_backlog`, `so_reuseport`, TCP keepalive and user
//! timeout on accepted clients). Sockets are built with `socket2` because the standard
//! library offers neither a backlog nor SO_REUSEPORT.

use crate::config::General;
use crate::net::Stream;
pub use crate::net::TcpTuning;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;

use super::AppError;

/// One listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// The socket file of a Unix listener: removed when the listener is closed, unless another
/// process has put its own socket at the same path meanwhile.
pub struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the file this process created.
    id: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Every listener of one instance.
pub struct Bound {
    pub listeners: Vec<Listener>,
    /// Addresses of the TCP listeners, in `listen_addr` order.
    pub tcp: Vec<SocketAddr>,
    /// Path of the Unix socket, if there is one.
    pub unix: Option<PathBuf>,
}

/// The `listen_addr` entries: comma-separated, blanks ignored.
pub fn listen_entries(listen_addr: &str) -> Vec<&str> {
    listen_addr
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The path of the Unix socket for `port` in `dir` (the name PostgreSQL and libpq use).
pub fn unix_socket_path(dir: &str, port: u16) -> PathBuf {
    Path::new(dir).join(format!(".s.PGSQL.{port}"))
}

fn listen_error(addr: impl Into<String>, source: io::Error) -> AppError {
    AppError::Listen {
        addr: addr.into(),
        source,
    }
}

/// The addresses one `listen_addr` entry stands for, and whether each one must bind (a
/// literal address must; of `*` or a host name's addresses, one is enough).
async fn resolve(entry: &str, port: u16) -> Result<(Vec<SocketAddr>, bool), AppError> {
    if entry == "*" {
        let all = vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ];
        return Ok((all, false));
    }
    let literal = entry
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(entry);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok((vec![SocketAddr::new(ip, port)], true));
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((entry, port))
        .await
        .map_err(|e| listen_error(format!("{entry}:{port}"), e))?
        .collect();
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    if addrs.is_empty() {
        let e = io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address");
        return Err(listen_error(format!("{entry}:{port}"), e));
    }
    Ok((addrs, false))
}

fn tcp_socket(addr: SocketAddr, g: &General) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if g.so_reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // `*` binds 0.0.0.0 and :: separately, as PgBouncer does.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog(g))?;
    TcpListener::from_std(socket.into())
}

fn backlog(g: &General) -> i32 {
    i32::try_from(g.listen_backlog.max(1)).unwrap_or(i32::MAX)
}

/// Binds every address of `listen_addr`, then the Unix socket. Port 0 (tests) picks a free
/// port once and uses it for every address and for the socket file name.
pub async fn bind_all(g: &General) -> Result<Bound, AppError> {
    let mut port = g.listen_port;
    let mut listeners = Vec::new();
    let mut tcp = Vec::new();
    for entry in listen_entries(&g.listen_addr) {
        let (addrs, strict) = resolve(entry, port).await?;
        let mut bound_one = false;
        let mut last_err = None;
        for addr in addrs {
            let addr = SocketAddr::new(addr.ip(), port);
            match tcp_socket(addr, g).and_then(|l| Ok((l.local_addr()?, l))) {
                Ok((local, l)) => {
                    port = local.port();
                    tcp.push(local);
                    listeners.push(Listener::Tcp(l));
                    bound_one = true;
                }
                Err(e) if strict => return Err(listen_error(addr.to_string(), e)),
                Err(e) => {
                    tracing::warn!(%addr, entry, error = %e, "cannot listen on this address");
                    last_err = Some((addr, e));
                }
            }
        }
        if let (false, Some((addr, e))) = (bound_one, last_err) {
            return Err(listen_error(format!("{entry} ({addr})"), e));
        }
    }
    let mut unix = None;
    if !g.unix_socket_dir.is_empty() {
        let path = unix_socket_path(&g.unix_socket_dir, port);
        let (l, file) = unix_socket(&path, g)
            .await
            .map_err(|e| listen_error(path.display().to_string(), e))?;
        unix = Some(path);
        listeners.push(Listener::Unix(l, file));
    }
    if listeners.is_empty() {
        let e = io::Error::new(
            io::ErrorKind::InvalidInput,
            "listen_addr and unix_socket_dir are both empty",
        );
        return Err(listen_error("(nothing)", e));
    }
    Ok(Bound {
        listeners,
        tcp,
        unix,
    })
}

/// Creates the Unix socket at `path`, replacing a stale file left by a process that died, but
/// never one another live process still listens on.
async fn unix_socket(path: &Path, g: &General) -> io::Result<(UnixListener, SocketFile)> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on this socket",
            ));
        }
        tracing::info!(path = %path.display(), "removing stale Unix socket");
        std::fs::remove_file(path)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    // Validated as octal at load time; fall back to PgBouncer's default all the same.
    let mode = u32::from_str_radix(&g.unix_socket_mode, 8).unwrap_or(0o777);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    socket.listen(backlog(g))?;
    let std_listener: std::os::unix::net::UnixListener = socket.into();
    Ok((UnixListener::from_std(std_listener)?, file))
}

impl Listener {
    /// Waits for the next client. A Unix-socket client has no IP address: it is reported as
    /// `0.0.0.0:<port>` (as PgBouncer reports `unix` with the listening port).
    pub async fn accept(&self, unix_port: u16) -> io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Stream::Tcp(s), a)),
            Listener::Unix(l, _) => l
                .accept()
                .await
                .map(|(s, _)| (Stream::Unix(s), unix_peer(unix_port))),
        }
    }

    /// A connection that is already waiting in the queue, without blocking; `None` when
    /// the queue is empty.
    pub async fn try_accept(&self, unix_port: u16) -> Option<io::Result<(Stream, SocketAddr)>> {
        std::future::poll_fn(|cx| {
            let r = match self {
                Listener::Tcp(l) => match l.poll_accept(cx) {
                    Poll::Ready(r) => Some(r.map(|(s, a)| (Stream::Tcp(s), a))),
                    Poll::Pending => None,
                },
                Listener::Unix(l, _) => match l.poll_accept(cx) {
                    Poll::Ready(r) => Some(r.map(|(s, _)| (Stream::Unix(s), unix_peer(unix_port)))),
                    Poll::Pending => None,
                },
            };
            Poll::Ready(r)
        })
        .await
    }

    /// What to call this listener in logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".to_owned(), |a| a.to_string()),
            Listener::Unix(_, f) => f.path().display().to_string(),
        }
    }
}

/// Connections accepted and not yet finished, counted from the moment of `accept` (a client
/// task counts itself in `App::clients` only once it first runs, which is too late to decide
/// that a draining process may exit).
#[derive(Debug, Default)]
pub struct Live {
    n: AtomicUsize,
    gone: Notify,
}

/// One accepted connection in [`Live`]; dropped when its task ends (or is dropped).
pub struct LiveGuard(Arc<Live>);

impl Live {
    pub fn enter(self: &Arc<Self>) -> LiveGuard {
        self.n.fetch_add(1, Ordering::AcqRel);
        LiveGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    /// Returns once no accepted connection is left.
    pub async fn wait_zero(&self) {
        loop {
            let notified = self.gone.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.gone.notify_waiters();
        }
    }
}

/// The address a Unix-socket client is listed under.
pub fn unix_peer(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;
    use std::time::Duration;
    use tokio::net::TcpStream;

    #[test]
    fn entries_split_on_commas_and_skip_blanks() {
        assert_eq!(
            listen_entries(" 127.0.0.1, ::1 ,,*"),
            ["127.0.0.1", "::1", "*"]
        );
        assert!(listen_entries("").is_empty());
        assert!(listen_entries(" , ").is_empty());
    }

    #[test]
    fn socket_file_name_follows_postgresql() {
        assert_eq!(
            unix_socket_path("/tmp", 6432),
            PathBuf::from("/tmp/.s.PGSQL.6432")
        );
    }

    #[tokio::test]
    async fn literals_must_bind_names_and_star_need_one() {
        let (a, strict) = resolve("::1", 5).await.unwrap();
        assert_eq!(a, ["[::1]:5".parse().unwrap()]);
        assert!(strict);
        let (a, strict) = resolve("[::1]", 5).await.unwrap();
        assert_eq!(a, ["[::1]:5".parse().unwrap()]);
        assert!(strict);
        let (a, strict) = resolve("*", 7).await.unwrap();
        assert_eq!(a.len(), 2);
        assert!(!strict);
        let (a, strict) = resolve("localhost", 9).await.unwrap();
        assert!(a.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        assert!(!strict);
    }

    #[tokio::test]
    async fn keepalive_settings_reach_the_socket() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let g = General {
            tcp_keepidle: 7,
            tcp_keepintvl: 3,
            tcp_keepcnt: 4,
            tcp_user_timeout: 1500,
            ..General::default()
        };
        TcpTuning::from_config(&g).apply(&s).unwrap();
        let r = SockRef::from(&s);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(r.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            r.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        let off = General {
            tcp_keepalive: false,
            ..General::default()
        };
        TcpTuning::from_config(&off).apply(&s).unwrap();
        assert!(!r.keepalive().unwrap());
    }

    #[tokio::test]
    async fn a_second_bind_names_the_address() {
        let mut g = General {
            listen_addr: "127.0.0.1".into(),
            listen_port: 0,
            ..General::default()
        };
        let first = bind_all(&g).await.unwrap();
        g.listen_port = first.tcp[0].port();
        let Err(e) = bind_all(&g).await else {
            panic!("second bind on the same port without so_reuseport succeeded");
        };
        assert!(
            e.to_string()
                .contains(&format!("127.0.0.1:{}", g.listen_port)),
            "{e}"
        );
    }

    #[tokio::test]
    async fn unix_socket_replaces_a_stale_file_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let g = General {
            listen_addr: String::new(),
            listen_port: 6999,
            unix_socket_dir: dir.path().display().to_string(),
            unix_socket_mode: "0700".into(),
            ..General::default()
        };
        let path = unix_socket_path(&g.unix_socket_dir, 6999);
        // A socket file nobody listens on (a crashed process) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let b = bind_all(&g).await.unwrap();
        assert_eq!(b.unix.as_deref(), Some(path.as_path()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A live one is not.
        let e = bind_all(&g).await.err().unwrap().to_string();
        assert!(e.contains(".s.PGSQL.6999"), "{e}");
        assert!(path.exists());
        // Closing the listener removes its file.
        drop(b);
        assert!(!path.exists());
    }
}
