//! A fault-injecting TCP relay for tests: it sits between pgferry and PostgreSQL (pgferry's
//! `[databases]` host/port point at [`Relay::addr`]) and is steered at run time:
//!
//! - pass-through (the default);
//! - [`Relay::set_delay`]: every chunk is delivered that much later, in both directions
//!   (latency, not a throughput cap: chunks are read as they come and queued);
//! - [`Relay::blackhole`]: nothing is forwarded on any connection, old or new, and no
//!   connection is closed or reset — like a network partition; lifting it delivers what was
//!   held, in order;
//! - [`Relay::cut`]: every current connection is closed on both sides, with RST
//!   ([`Cut::Reset`]) or FIN ([`Cut::Fin`]);
//! - [`Relay::refuse`]: the listening socket is closed, so new connections are refused
//!   (ECONNREFUSED) until [`Relay::accept`] binds the same port again.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How [`Relay::cut`] closes connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// SO_LINGER 0 then close: both peers see "connection reset".
    Reset,
    /// An orderly shutdown: both peers read EOF.
    Fin,
}

struct Shared {
    upstream: SocketAddr,
    delay_ms: AtomicU64,
    /// True while blackholed.
    hole: watch::Sender<bool>,
    /// Bumped by every cut; connections opened before it close.
    cut: watch::Sender<(u64, Cut)>,
    open: AtomicUsize,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A running relay; stops accepting (existing connections keep going) when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            delay_ms: AtomicU64::new(0),
            hole: watch::channel(false).0,
            cut: watch::channel((0, Cut::Fin)).0,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let acceptor = Some(tokio::spawn(accept_loop(listener, shared.clone())));
        Relay {
            addr,
            shared,
            acceptor,
        }
    }

    /// A relay in front of a PostgreSQL on 127.0.0.1:`port`.
    pub async fn to_port(port: u16) -> Relay {
        Relay::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Delays every chunk by `d` (zero: pass-through).
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Starts (true) or ends (false) a black hole.
    pub fn blackhole(&self, on: bool) {
        self.shared.hole.send_replace(on);
    }

    /// Closes every connection open now, both sides, with RST or FIN.
    pub fn cut(&self, how: Cut) {
        self.shared.cut.send_modify(|(gen, kind)| {
            *gen += 1;
            *kind = how;
        });
    }

    /// Closes the listening socket: new connections are refused until [`Relay::accept`].
    pub async fn refuse(&mut self) {
        if let Some(t) = self.acceptor.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port after [`Relay::refuse`].
    pub async fn accept(&mut self) {
        if self.acceptor.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.acceptor = Some(tokio::spawn(accept_loop(listener, self.shared.clone())));
    }

    /// Connections being relayed now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded towards PostgreSQL and back, so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_up.load(Ordering::SeqCst),
            self.shared.bytes_down.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.acceptor.take() {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(relay_one(client, shared.clone()));
    }
}

/// Removes one from the open count when the connection's last task ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn relay_one(client: TcpStream, shared: Arc<Shared>) {
    let born = shared.cut.borrow().0;
    shared.open.fetch_add(1, Ordering::SeqCst);
    let guard = Arc::new(OpenGuard(shared.clone()));
    // A black hole also swallows the connection attempt: wait before dialling upstream.
    wait_open(&mut shared.hole.subscribe()).await;
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::spawn(pump(cr, sw, shared.clone(), born, true, guard.clone()));
    tokio::spawn(pump(sr, cw, shared.clone(), born, false, guard));
}

async fn wait_open(hole: &mut watch::Receiver<bool>) {
    let _ = hole.wait_for(|on| !*on).await;
}

/// True once a cut newer than `born` was ordered; returns how.
fn cut_since(cut: &watch::Receiver<(u64, Cut)>, born: u64) -> Option<Cut> {
    let (gen, how) = *cut.borrow();
    (gen > born).then_some(how)
}

/// One direction: the reader future reads chunks and stamps each with its due time; this
/// task writes each at its due time. A cut stops both and closes the way it asks.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Arc<Shared>,
    born: u64,
    up: bool,
    _guard: Arc<OpenGuard>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut cut = shared.cut.subscribe();
    let mut hole = shared.hole.subscribe();
    let reader = {
        let shared = shared.clone();
        let mut hole = shared.hole.subscribe();
        async move {
            loop {
                wait_open(&mut hole).await;
                let mut buf = vec![0u8; 16 * 1024];
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return from,
                    Ok(n) => {
                        buf.truncate(n);
                        let delay = shared.delay_ms.load(Ordering::SeqCst);
                        let due = Instant::now() + Duration::from_millis(delay);
                        if tx.send((due, buf)).await.is_err() {
                            return from;
                        }
                    }
                }
            }
        }
    };
    tokio::pin!(reader);
    // Keeps the read half (and so the socket) open after the source's EOF until the rest is
    // written.
    let mut _source_done: Option<OwnedReadHalf> = None;
    loop {
        if let Some(how) = cut_since(&cut, born) {
            match how {
                Cut::Fin => {
                    let _ = to.shutdown().await;
                }
                Cut::Reset => {
                    // No FIN first: the socket is reset when its last half is dropped.
                    let _ = to.as_ref().set_zero_linger();
                    to.forget();
                }
            }
            return;
        }
        tokio::select! {
            _ = cut.changed() => {}
            r = &mut reader, if _source_done.is_none() => _source_done = Some(r),
            chunk = rx.recv() => {
                let Some((due, data)) = chunk else {
                    // The source closed and everything was delivered: pass the EOF on.
                    let _ = to.shutdown().await;
                    return;
                };
                let delivered = async {
                    tokio::time::sleep_until(due).await;
                    wait_open(&mut hole).await;
                    to.write_all(&data).await
                };
                tokio::select! {
                    r = delivered => if r.is_err() { return },
                    _ = cut.changed() => continue,
                }
                let n = data.len() as u64;
                let counter = if up { &shared.bytes_up } else { &shared.bytes_down };
                counter.fetch_add(n, Ordering::SeqCst);
            }
        }
    }
}
