//! The byte stream under a [`super::Conn`]: TCP, a Unix socket, or TLS over TCP when a peer
//! negotiates it (`TlsServer`: a client of pgferry; `TlsClient`: pgferry's connection to a
//! server). One enum rather than a generic parameter keeps the session loop and login code
//! monomorphic, so every transport shares one compiled copy of them. The TLS variants are boxed
//! so the enum, and with it every idle plain connection, stays small.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A client or server connection's transport.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client that negotiated TLS with pgferry.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// pgferry's TLS connection to a server.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// No transport: taken away for a TLS handshake that did not complete. Reads see EOF,
    /// writes fail.
    Detached,
}

impl Stream {
    /// The local address of a TCP connection (`None` for Unix sockets).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.as_tcp().and_then(|s| s.local_addr().ok())
    }

    /// The peer's address of a TCP connection (`None` for Unix sockets).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.as_tcp().and_then(|s| s.peer_addr().ok())
    }

    /// Checks without blocking that an idle peer has sent nothing: false on EOF, on pending
    /// bytes or on an error (for a server connection any of these means it must not be reused).
    ///
    /// Over TLS, a healthy idle peer has sent no record at all (session tickets and the like
    /// come during login, before the first ReadyForQuery), so the socket under TLS must be
    /// silent too, and rustls must hold no decrypted bytes nor a close_notify. A probed byte is
    /// consumed, which is fine: a connection that is not quiet is discarded.
    pub fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        let r = match self {
            Stream::Tcp(s) => s.try_read(&mut probe),
            Stream::Unix(s) => s.try_read(&mut probe),
            Stream::TlsClient(s) => {
                let (tcp, tls) = s.get_ref();
                if !tls.wants_read() {
                    return false;
                }
                tcp.try_read(&mut probe)
            }
            Stream::TlsServer(s) => {
                let (tcp, tls) = s.get_ref();
                if !tls.wants_read() {
                    return false;
                }
                tcp.try_read(&mut probe)
            }
            Stream::Detached => return false,
        };
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Disables Nagle's algorithm where there is one.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self.as_tcp() {
            Some(s) => s.set_nodelay(true),
            None => Ok(()),
        }
    }

    /// The TCP socket, if the transport is TCP (plain or under TLS), for addresses and socket
    /// options.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::TlsServer(s) => Some(s.get_ref().0),
            Stream::TlsClient(s) => Some(s.get_ref().0),
            Stream::Unix(_) | Stream::Detached => None,
        }
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsServer(_) | Stream::TlsClient(_))
    }

    /// The protocol and cipher suite of a TLS connection, as SHOW CLIENTS / SERVERS print
    /// them (`TLSv1.3/TLS13_AES_256_GCM_SHA384`); `None` for plain connections.
    pub fn tls_description(&self) -> Option<String> {
        let (version, suite) = match self {
            Stream::TlsServer(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            Stream::TlsClient(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            _ => return None,
        };
        let version = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(v) => format!("{v:?}"),
            None => "TLS".to_owned(),
        };
        Some(match suite {
            Some(s) => format!("{version}/{:?}", s.suite()),
            None => version,
        })
    }

    /// The certificate a TLS client presented (already verified against `client_tls_ca_file`).
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::TlsServer(s) => s.get_ref().1.peer_certificates()?.first().map(|c| &c[..]),
            _ => None,
        }
    }

    /// Waits until a read would not block. Returns `Ok(false)` when the transport cannot tell
    /// without reading (the caller then reads into a buffer directly): over TLS, decrypted
    /// bytes may already wait inside rustls while the socket is silent.
    ///
    /// Polls the socket's own read-readiness slot (the one reads use) rather than awaiting
    /// `readable()`, whose future carries a waiter node: the wait of every idle client costs
    /// a few bytes of its task instead of about 170. Only the task that reads the stream
    /// waits on it.
    pub fn readable(&self) -> impl std::future::Future<Output = io::Result<bool>> + '_ {
        std::future::poll_fn(move |cx| match self {
            Stream::Tcp(s) => s.poll_read_ready(cx).map_ok(|()| true),
            Stream::Unix(s) => s.poll_read_ready(cx).map_ok(|()| true),
            Stream::TlsServer(_) | Stream::TlsClient(_) | Stream::Detached => {
                Poll::Ready(Ok(false))
            }
        })
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection has no transport")
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::TlsServer(s) => s.is_write_vectored(),
            Stream::TlsClient(s) => s.is_write_vectored(),
            Stream::Detached => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}
