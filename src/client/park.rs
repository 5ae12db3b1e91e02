//! Parking of idle clients: a client that has been idle for `client_park_delay` (logged in,
//! no server, no transaction, nothing buffered) gives up its task, its buffers and its
//! registration with the runtime's poller. What is left is its session state (about 300
//! bytes, see [`super::session::Parked`]) and its socket, registered with one shared `mio`
//! poller that a single thread sleeps on. When the socket turns readable (a request, or the
//! client hanging up), when the client is killed, or when the shutdown begins, a new task
//! takes the session up where it stopped.
//!
//! The client stays in SHOW CLIENTS as `idle` and keeps its cancel key, its prepared
//! statements and its parameters; nothing it can observe changes, except the added latency
//! of its first request after parking (a task spawn and two epoll registrations).
//!
//! Who asks: the periodic sweep in `app::stats` (four times a second) asks idle clients
//! whose last request is older than the delay; the client's own task decides, at its idle
//! wait, whether it can go (TLS clients, session mode and clients with a
//! `client_idle_timeout` are never parked).

use super::session;
use crate::app::listen::LiveGuard;
use crate::app::App;
use crate::net::{Conn, Stream};
use dashmap::DashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Wake, Waker};

/// The parking lot of one running instance.
#[derive(Default)]
pub struct Lot {
    /// The shared poller's registry and the runtime that resumes clients; unset until
    /// [`spawn`] ran (parking is off until then).
    poller: OnceLock<Poller>,
    parked: DashMap<u64, Box<Parked>>,
    next_token: AtomicU64,
}

struct Poller {
    registry: mio::Registry,
    runtime: tokio::runtime::Handle,
    /// Ends the poller's thread.
    stop: mio::Waker,
}

impl Lot {
    /// True when clients can be parked.
    pub fn enabled(&self) -> bool {
        self.poller.get().is_some()
    }

    /// Clients parked now.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }
}

/// A parked client: its socket, its place in the listener's count and its session (one
/// allocation).
pub(crate) struct Parked {
    pub(super) stream: ParkedStream,
    pub(super) guard: LiveGuard,
    pub(super) session: session::Parked,
}

/// A parked client's socket, out of the runtime's poller.
pub(crate) enum ParkedStream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl ParkedStream {
    /// Takes the socket out of the runtime (plain TCP and Unix sockets only). `Err(None)`:
    /// the socket could not be deregistered and is closed.
    fn from_stream(s: Stream) -> Result<ParkedStream, Option<Stream>> {
        match s {
            Stream::Tcp(t) => match t.into_std() {
                Ok(t) => Ok(ParkedStream::Tcp(mio::net::TcpStream::from_std(t))),
                Err(_) => Err(None),
            },
            Stream::Unix(u) => match u.into_std() {
                Ok(u) => Ok(ParkedStream::Unix(mio::net::UnixStream::from_std(u))),
                Err(_) => Err(None),
            },
            other => Err(Some(other)),
        }
    }

    /// The socket registered with the runtime again (in its context).
    pub(super) fn into_stream(self) -> io::Result<Stream> {
        Ok(match self {
            ParkedStream::Tcp(t) => Stream::Tcp(tokio::net::TcpStream::from_std(
                std::net::TcpStream::from(t),
            )?),
            ParkedStream::Unix(u) => Stream::Unix(tokio::net::UnixStream::from_std(
                std::os::unix::net::UnixStream::from(u),
            )?),
        })
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            ParkedStream::Tcp(t) => t,
            ParkedStream::Unix(u) => u,
        }
    }
}

/// Stands in for a parked client's task in its [`crate::app::registry::ClientSignal`]:
/// KILL and the shutdown's nudge resume it.
struct ParkWaker {
    app: Weak<App>,
    token: u64,
}

impl Wake for ParkWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(app) = self.app.upgrade() {
            unpark(&app, self.token);
        }
    }
}

/// Parks a client whose session loop stopped at an idle wait (`session` came from it and the
/// connection holds nothing buffered). Where the socket cannot be parked after all, the
/// session goes on in a new task; where it is lost, the session ends.
pub(crate) fn park(app: &Arc<App>, conn: Conn<Stream>, session: session::Parked, guard: LiveGuard) {
    let Some(poller) = app.lot.poller.get() else {
        return settle(app, conn.into_stream(), session, guard);
    };
    let stream = match ParkedStream::from_stream(conn.into_stream()) {
        Ok(s) => s,
        Err(back) => {
            return match back {
                Some(stream) => settle(app, stream, session, guard),
                None => {
                    session.abandon(app);
                    app.client_leave();
                }
            };
        }
    };
    let token = app.lot.next_token.fetch_add(1, Ordering::Relaxed);
    let info = session.info().clone();
    app.lot.parked.insert(
        token,
        Box::new(Parked {
            stream,
            guard,
            session,
        }),
    );
    // The waker first: once the socket is registered, the client can resume (and register
    // its task's own waker) at any moment.
    let waker = Waker::from(Arc::new(ParkWaker {
        app: Arc::downgrade(app),
        token,
    }));
    if info.kill.parked(&waker, &app.shutting_down) {
        return unpark(app, token);
    }
    // Registered while the entry is held: an event that comes at once waits for it. The
    // entry is gone if a KILL resumed the client meanwhile.
    let failed = match app.lot.parked.get_mut(&token) {
        Some(mut p) => poller
            .registry
            .register(
                p.stream.source(),
                mio::Token(token as usize),
                mio::Interest::READABLE,
            )
            .map_err(|e| tracing::debug!(error = %e, "cannot park a client"))
            .is_err(),
        None => false,
    };
    if failed {
        unpark(app, token);
    }
}

/// A session that could not be parked goes on in a task of its own.
fn settle(app: &Arc<App>, stream: Stream, session: session::Parked, guard: LiveGuard) {
    let max_packet = app.config.load().pgferry.max_packet_size as usize;
    let conn = Conn::new(stream, max_packet);
    tokio::spawn(super::resume_conn(
        app.clone(),
        Ok(conn),
        Box::new(session),
        guard,
    ));
}

/// Resumes a parked client (no-op if it already was).
fn unpark(app: &Arc<App>, token: u64) {
    let Some((_, mut p)) = app.lot.parked.remove(&token) else {
        return;
    };
    let Some(poller) = app.lot.poller.get() else {
        return;
    };
    // A socket that was never registered fails here harmlessly.
    let _ = poller.registry.deregister(p.stream.source());
    let _enter = poller.runtime.enter();
    poller.runtime.spawn(super::resume(app.clone(), *p));
}

/// The token of the poller's stop signal (parked clients' tokens count up from 0).
const STOP: mio::Token = mio::Token(usize::MAX);

impl Drop for Lot {
    fn drop(&mut self) {
        if let Some(p) = self.poller.get() {
            let _ = p.stop.wake();
        }
    }
}

/// Starts the lot's poller: a thread that sleeps in `epoll_wait` on the parked sockets and
/// resumes each client whose socket turns readable (parking stays off if it cannot be
/// started). The thread ends when the app is dropped.
pub fn spawn(app: &Arc<App>) {
    if let Err(e) = start_poller(app) {
        tracing::warn!(error = %e, "cannot start the parking poller: idle clients are not parked");
    }
}

fn start_poller(app: &Arc<App>) -> io::Result<()> {
    let mut poll = mio::Poll::new()?;
    let poller = Poller {
        registry: poll.registry().try_clone()?,
        runtime: tokio::runtime::Handle::current(),
        stop: mio::Waker::new(poll.registry(), STOP)?,
    };
    let weak = Arc::downgrade(app);
    let run = move || {
        let mut events = mio::Events::with_capacity(256);
        loop {
            match poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "parking poller failed");
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() == STOP {
                    return;
                }
                let Some(app) = weak.upgrade() else { return };
                unpark(&app, ev.token().0 as u64);
            }
        }
    };
    if app.lot.enabled() {
        return Ok(()); // already running
    }
    std::thread::Builder::new()
        .name("pgferry-park".into())
        .spawn(run)?;
    // Only now: a client parked before the thread ran would never be resumed.
    let _ = app.lot.poller.set(poller);
    Ok(())
}
