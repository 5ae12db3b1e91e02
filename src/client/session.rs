//! The session loop of one logged-in client. Client messages are routed to a server
//! connection borrowed from the pool (per pool mode) and server replies are forwarded as they
//! come. In transaction and statement mode the loop also keeps the client's named prepared
//! statements (renamed and prepared lazily on each server), re-applies the client's parameters
//! on every server it gets, and answers locally what no server needs to see.

use super::autoprep::{error_in_client_text, AutoPrepared};
use super::login::Login;
use super::params::ClientParams;
use super::statements::{ByName, Statements, Stmt};
use super::ClientError;
use crate::app::cancel::{CancelSlot, CancelTarget};
use crate::app::registry::{now_us, ClientInfo, ClientState, Wake};
use crate::app::App;
use crate::clock::Tick;
use crate::config::{ClientTimeouts, PoolMode};
use crate::insight::{DbQueries, SessionContext, SessionDetector};
use crate::net::Stream;
use crate::net::{Conn, NetError};
use crate::pool::{Checkout, Pool, PoolError};
use crate::protocol::build::{self, Severity};
use crate::protocol::views::{self, BindView, ParseView, TargetView};
use crate::protocol::{tag, FrameRef};
use crate::server::prepared::{server_name, Held};
use crate::server::ServerError;
use crate::sql::{text_hash, Analysis};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A request sent to the server (or answered locally) whose reply is still to come, in order.
#[derive(Debug)]
enum Pending {
    /// `hidden`: injected by pgferry, its ParseComplete is not shown to the client.
    /// `id`: pgferry statement registered on the server by this Parse (undone on error).
    /// `name`: client statement name created by this Parse (undone on error).
    Parse {
        hidden: bool,
        id: Option<u64>,
        name: Option<Box<[u8]>>,
    },
    /// `hidden`: sent by pgferry for an auto-prepared simple query (its BindComplete, and the
    /// NoData of its Describe, are not shown to the client).
    Bind {
        hidden: bool,
    },
    Describe {
        hidden: bool,
    },
    /// `copy_ends`: CopyDone/CopyFail messages the client had sent when this was forwarded.
    Execute {
        copy_ends: u64,
        stat: Option<Stat>,
    },
    Close {
        hidden: bool,
    },
    /// `auto`: ends an auto-prepared simple query (an error's position is mapped back to
    /// the client's text).
    Sync {
        copy_ends: u64,
        auto: Option<Arc<AutoPrepared>>,
    },
    /// A simple Query or FunctionCall: answered up to its ReadyForQuery.
    Query {
        stat: Option<Stat>,
    },
    /// A reply pgferry makes itself, sent when everything before it has been answered. If an
    /// earlier request fails, the server skips to Sync and so must this: `undo` reverts what
    /// pgferry already did for it.
    Local(Bytes, Option<LocalUndo>),
}

impl Pending {
    fn ends_at_ready(&self) -> bool {
        matches!(self, Pending::Sync { .. } | Pending::Query { .. })
    }
}

/// A refused execution waiting to run again (see `Session::retry`).
#[derive(Debug)]
struct Retry {
    /// The error as the client would see it, sent only if the query cannot run again.
    error: Bytes,
    /// Its timing for query insight, carried over to the run that replaces it.
    stat: Option<Stat>,
    /// `None`: an auto-prepared simple query, run again as text. `Some(describe)`: a client's
    /// unnamed Parse (answered by pgferry), Bind, Describe if `describe`, Execute and Sync,
    /// sent again after preparing the statement anew (`ServerConn::replay`).
    batch: Option<bool>,
}

/// Bookkeeping to revert when a locally answered message turns out to be skipped.
#[derive(Debug)]
enum LocalUndo {
    /// A Parse answered locally created this client name.
    Created(Box<[u8]>),
    /// A Close answered locally removed this client name.
    Closed(Box<[u8]>, Option<Arc<Stmt>>, Option<Arc<Analysis>>),
}

/// One statement being timed for query insight.
#[derive(Debug)]
struct Stat {
    analysis: Arc<Analysis>,
    start: Tick,
    rows: u64,
    error: bool,
}

impl Stat {
    fn new(analysis: Arc<Analysis>, start: Tick) -> Self {
        Stat {
            analysis,
            start,
            rows: 0,
            error: false,
        }
    }
}

enum Flow {
    Continue,
    Exit,
}

/// How the session loop ended without an error.
enum End {
    Closed,
    Park,
}

/// The per-client timeout that ends the current wait first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timeout {
    ClientIdle,
    IdleTransaction,
    Transaction,
    Query,
}

impl Timeout {
    /// The setting's name, which is also what the client is told.
    fn name(self) -> &'static str {
        match self {
            Timeout::ClientIdle => "client_idle_timeout",
            Timeout::IdleTransaction => "idle_transaction_timeout",
            Timeout::Transaction => "transaction_timeout",
            Timeout::Query => "query_timeout",
        }
    }
}

/// Counters kept locally and added to the pool's totals once per request, so the per-message
/// path touches no shared cache line.
#[derive(Default)]
struct Tally {
    queries: u64,
    bytes_in: u64,
    bytes_out: u64,
    client_parses: u64,
    server_parses: u64,
    binds: u64,
    auto_prepared: u64,
}

/// What ended one wait of the session loop.
enum Event {
    Client(Result<(), NetError>),
    Server(Result<(), NetError>),
    Signal(Wake),
    Expired(Timeout),
}

struct Session<'a> {
    app: &'a Arc<App>,
    client: &'a mut Conn<Stream>,
    pool: Arc<Pool>,
    mode: PoolMode,
    /// Rename protocol-level statements (transaction and statement mode).
    rewrite: bool,
    server: Option<Checkout>,
    params: ClientParams,
    stmts: Statements,
    pending: VecDeque<Pending>,
    /// Extended-protocol messages went to the server since the last Sync.
    unsynced: bool,
    /// What the client's output holds is only pgferry's own replies (a ParseComplete
    /// answered locally, …), queued since the server last had something for the client.
    /// While the server owes a reply they wait for it and go in the same write, as
    /// PostgreSQL itself sends nothing before the Sync or Flush that follows them.
    own_replies_only: bool,
    /// A request the server refused with 0A000 (a table changed under its statement) outside
    /// a transaction, held back: it runs again after the ReadyForQuery that ends the failed
    /// attempt (see `Retry`; boxed: rare, and kept out of every client's size).
    retry: Option<Box<Retry>>,
    /// A locally raised error: drop messages until Sync, as PostgreSQL does.
    skipping: bool,
    /// The server already reported an error for the current request.
    errored: bool,
    /// Transaction status last reported to the client.
    tx: u8,
    /// The client may have changed search_path (not reported by the server): re-read it
    /// before the server is given back.
    search_path_dirty: bool,
    /// The client changed the schema (ALTER TABLE, CREATE OR REPLACE VIEW, …): when its
    /// transaction ends, every server of the database deallocates the statements whose
    /// clients send the text with every use before it serves another transaction, so none
    /// runs a plan for the old columns (see `App::schema_changed`).
    schema_changed: bool,
    cancel: Arc<CancelSlot>,
    info: Arc<ClientInfo>,
    tally: Tally,
    /// CopyDone/CopyFail messages forwarded so far.
    copy_ends: u64,
    /// The server is in extended-protocol COPY FROM STDIN until the client's next copy end:
    /// PostgreSQL ignores Sync meanwhile, so no ReadyForQuery will answer one.
    copy_in_until: Option<u64>,
    /// Query insight is on: statements are analyzed and timed.
    insight: bool,
    /// N+1 detector of this client, made at its first statement (idle clients go without).
    detector: Option<Box<SessionDetector>>,
    /// The statistics of the client's database, once it has completed a statement.
    queries: Option<DbQueries>,
    /// Analysis of the client's statements by name ("" = unnamed), and of its last Bind.
    analyses: ByName<Arc<Analysis>>,
    bound: Option<(Arc<Analysis>, u64)>,
    /// A NoticeResponse to send before the next ReadyForQuery (n_plus_one_notice).
    notice: Option<Bytes>,
    /// When the outstanding request and the open transaction started.
    request_start: Option<Tick>,
    xact_start: Option<Tick>,
    /// The configuration `timeouts` were read from (re-read when a reload replaces it).
    config: Arc<crate::config::Config>,
    /// `app.config_gen` when `config` was read.
    config_gen: u64,
    /// None when every one is off (the default; kept out of the session's size).
    timeouts: Option<Box<ClientTimeouts>>,
    /// The time, read at most once per turn of the session loop (see [`Session::now`]).
    clock: Option<Tick>,
    /// The timer of the per-client timeouts, made at the first wait that has one and reset
    /// for each later wait (boxed: clients without timeouts, and every client's future, go
    /// without its space).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What an idle session keeps while it is parked (see `client::park`): the state of a
/// client between transactions, without its task, its socket registration or its buffers.
/// Kept small: a client with no prepared statement and no N+1 detector has no `extras`.
pub struct Parked {
    pool: Arc<Pool>,
    params: ClientParams,
    cancel: Arc<CancelSlot>,
    info: Arc<ClientInfo>,
    extras: Option<Box<ParkedExtras>>,
    pid: i32,
    mode: PoolMode,
    insight: bool,
}

/// The parts of a parked session that most idle clients do not have.
struct ParkedExtras {
    stmts: Statements,
    analyses: ByName<Arc<Analysis>>,
    bound: Option<(Arc<Analysis>, u64)>,
    detector: Option<Box<SessionDetector>>,
    copy_ends: u64,
}

impl Parked {
    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.info
    }

    /// The parked client's connection is gone before it could resume: its session ends
    /// here (it holds no server, so there is nothing to give back).
    pub fn abandon(self, app: &App) {
        app.cancels.unregister(self.pid);
        app.unregister_client(self.info.id);
        log_logout(app, &self.info, &Ok(()));
    }
}

/// Lists the logged-in client connected from `peer` and runs its session until it ends, or
/// until it is parked (then its state is returned for `client::park`).
pub async fn run(
    app: &Arc<App>,
    client: &mut Conn<Stream>,
    login: Box<Login>,
    peer: std::net::SocketAddr,
) -> Result<Option<Parked>, ClientError> {
    // Moved out through a function so the box is freed now, not when the session ends.
    let unbox = |b: Box<Login>| *b;
    let Login {
        pool,
        server,
        user: _,
        params,
        pid,
        cancel,
        admission,
    } = unbox(login);
    let info = app.register_client(
        peer,
        client.stream(),
        params.get("application_name").unwrap_or(""),
        admission,
    );
    let mode = pool.settings().mode;
    let mut s = Session::new(app, client, pool, mode, params, cancel, info);
    s.begin(server).await;
    let r = s.run_loop().await;
    s.conclude(r, pid).await
}

/// Runs the session of a client that was parked, from where it stopped.
pub async fn resume(
    app: &Arc<App>,
    client: &mut Conn<Stream>,
    parked: Box<Parked>,
) -> Result<Option<Parked>, ClientError> {
    let unbox = |b: Box<Parked>| *b;
    let p = unbox(parked);
    p.info.kill.resumed();
    let mut s = Session::new(app, client, p.pool, p.mode, p.params, p.cancel, p.info);
    s.insight = p.insight;
    if let Some(x) = p.extras {
        let x = *x;
        s.stmts = x.stmts;
        s.analyses = x.analyses;
        s.bound = x.bound;
        s.detector = x.detector;
        s.copy_ends = x.copy_ends;
    }
    let r = s.run_loop().await;
    s.conclude(r, p.pid).await
}

/// The logout line (log_disconnections).
fn log_logout(app: &App, info: &ClientInfo, r: &Result<(), ClientError>) {
    if app.config.load().pgferry.log_disconnections {
        let (db, user) = (&info.database, &info.user);
        tracing::info!(peer = %info.addr(), %db, %user, outcome = %match r { Ok(()) => "closed".to_owned(), Err(e) => e.to_string() }, "logout");
    }
}

impl<'a> Session<'a> {
    fn new(
        app: &'a Arc<App>,
        client: &'a mut Conn<Stream>,
        pool: Arc<Pool>,
        mode: PoolMode,
        params: ClientParams,
        cancel: Arc<CancelSlot>,
        info: Arc<ClientInfo>,
    ) -> Self {
        // The timeouts as configured now (for a resumed client too: a RELOAD while it was
        // parked applies from its next wait on).
        let config_gen = app.config_gen.load(Ordering::Acquire);
        let config = app.config.load_full();
        let timeouts = boxed_timeouts(config.client_timeouts_for(&info.user));
        Session {
            app,
            client,
            mode,
            rewrite: mode != PoolMode::Session,
            pool,
            server: None,
            params,
            stmts: Statements::default(),
            pending: VecDeque::new(),
            unsynced: false,
            own_replies_only: false,
            retry: None,
            skipping: false,
            errored: false,
            tx: b'I',
            search_path_dirty: false,
            schema_changed: false,
            cancel,
            info,
            tally: Tally::default(),
            copy_ends: 0,
            copy_in_until: None,
            insight: app.insight.config().enabled,
            detector: None,
            queries: None,
            analyses: ByName::default(),
            bound: None,
            notice: None,
            request_start: None,
            xact_start: None,
            config,
            config_gen,
            timeouts,
            clock: None,
            timer: None,
        }
    }
}

impl Session<'_> {
    /// How the session loop ended: the session is over, or the client is parked.
    async fn conclude(
        &mut self,
        r: Result<End, ClientError>,
        pid: i32,
    ) -> Result<Option<Parked>, ClientError> {
        if let Ok(End::Park) = r {
            return Ok(Some(self.take_parked(pid)));
        }
        let r = r.map(|_| ());
        Box::pin(self.finish()).await;
        self.app.cancels.unregister(pid);
        self.app.unregister_client(self.info.id);
        log_logout(self.app, &self.info, &r);
        r.map(|()| None)
    }

    /// Whether the client can be parked now (`Err(true)`: and never will be).
    fn parkable(&mut self) -> Result<(), bool> {
        let plain = matches!(self.client.stream(), Stream::Tcp(_) | Stream::Unix(_));
        if !plain || self.mode == PoolMode::Session || !self.app.lot.enabled() {
            return Err(true);
        }
        if self.deadline().is_some() {
            // A client idle timeout runs in the task (a RELOAD that removes it lets the
            // client be parked again: see `deadline`).
            return Err(true);
        }
        let quiet = self.server.is_none()
            && self.is_idle()
            && !self.skipping
            && !self.errored
            && !self.search_path_dirty
            && self.copy_in_until.is_none()
            && self.notice.is_none()
            && self.client.buffered() == 0
            && self.client.pending_out() == 0;
        if !quiet || self.app.is_shutting_down() {
            return Err(false);
        }
        let delay = crate::config::secs(self.config.pgferry.client_park_delay);
        let idle_us = now_us().saturating_sub(self.info.request_time_us.load(Ordering::Relaxed));
        match delay {
            Some(d) if u128::from(idle_us) >= d.as_micros() => Ok(()),
            Some(_) => Err(false),
            None => Err(true),
        }
    }

    /// The state kept while parked (the session is dropped right after).
    fn take_parked(&mut self, pid: i32) -> Parked {
        self.add_tally();
        let now = self.now();
        if let Some(d) = self.detector.as_mut() {
            d.settle(now);
        }
        let extras = (!self.stmts.is_empty()
            || !self.analyses.is_empty()
            || self.bound.is_some()
            || self.detector.is_some()
            || self.copy_ends != 0)
            .then(|| {
                Box::new(ParkedExtras {
                    stmts: std::mem::take(&mut self.stmts),
                    analyses: std::mem::take(&mut self.analyses),
                    bound: self.bound.take(),
                    detector: self.detector.take(),
                    copy_ends: self.copy_ends,
                })
            });
        Parked {
            pool: self.pool.clone(),
            params: std::mem::take(&mut self.params),
            cancel: self.cancel.clone(),
            info: self.info.clone(),
            extras,
            pid,
            mode: self.mode,
            insight: self.insight,
        }
    }

    /// Takes the server given at login (session mode). A separate future, so the login's
    /// checkout does not keep a slot in the session's future after it is attached. Its
    /// transactions are timed from their first requests, not from here (see `linked`).
    async fn begin(&mut self, server: Option<Checkout>) {
        if let Some(c) = server {
            self.attach(c).await;
        }
    }

    async fn run_loop(&mut self) -> Result<End, ClientError> {
        // Until the session has seen the shutdown begin (afterwards it only checks, each
        // turn, whether it is idle enough to go).
        let mut watch_shutdown = true;
        let mut server_first = false;
        // Server messages small enough to copy are handled from here, not split off the read
        // buffer (see `Conn::take_frame`).
        let mut small = Vec::new();
        self.clock = None;
        loop {
            if let Some(c) = self.server.as_mut() {
                let conn = &mut c.conn().conn;
                // Rows go to the client as they came, a run at a time.
                let moved = match conn.front_tag() {
                    Some(tag::DATA_ROW) => conn.move_run(tag::DATA_ROW, self.client.out()),
                    _ => 0,
                };
                if moved > 0 {
                    self.own_replies_only = false;
                    self.tally.bytes_out += moved as u64;
                    self.flush_client_if_full().await?;
                    continue;
                }
                match conn.take_frame(&mut small) {
                    Ok(Some(taken)) => {
                        self.own_replies_only = false;
                        self.on_server_frame(taken.view(&small)).await?;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.server_lost(&NetError::Frame(e)).await?;
                        continue;
                    }
                }
            }
            let hold = self.holds_client();
            let frame = if hold {
                Ok(None)
            } else {
                self.client.take_frame(&mut small)
            };
            match frame {
                Ok(Some(taken)) => {
                    if let Flow::Exit = self.on_client_frame(taken.view(&small)).await? {
                        return Ok(End::Closed);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.protocol_violation(&e.to_string()).await?;
                    return Ok(End::Closed);
                }
            }
            // Nothing complete is buffered on either side: send what is queued, then wait.
            if !self.owed_reply_follows() {
                self.client.flush().await?;
                self.own_replies_only = false;
            }
            if let Some(c) = self.server.as_mut() {
                if c.conn().conn.pending_out() > 0 {
                    if let Err(e) = c.conn().conn.flush().await {
                        self.server_lost(&NetError::Io(e)).await?;
                        continue;
                    }
                }
            }
            if self.app.is_shutting_down() && self.is_idle() {
                build::error(
                    self.client.out(),
                    Severity::Fatal,
                    "57P01",
                    "terminating connection due to administrator command",
                );
                return Ok(End::Closed);
            }
            if self.server.is_none() {
                // Between transactions the client holds no server and needs no buffers.
                self.client.release_buffers();
            }
            let timer = match self.deadline() {
                Some((at, which)) => {
                    let at = at.to_instant();
                    let t = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    t.as_mut().reset(at);
                    Some((t, which))
                }
                None => None,
            };
            let expired = async move {
                match timer {
                    Some((t, which)) => {
                        t.as_mut().await;
                        which
                    }
                    None => std::future::pending().await,
                }
            };
            // KILL and the start of a shutdown wake the session through its signal: no
            // registration in a shared list per wait. An idle client also hears the sweep's
            // request to park. The signal is polled first; then the two sockets take turns at
            // being polled first, so neither side of a busy session starves the other
            // (without tokio::select!'s random start, which showed in the profile).
            let info = &self.info;
            let shutdown = watch_shutdown.then_some(&self.app.shutting_down);
            let idle = self.server.is_none();
            server_first = !server_first;
            let event = {
                let mut client = std::pin::pin!(self.client.fill_when_readable());
                let mut server = std::pin::pin!(async {
                    match self.server.as_mut() {
                        Some(c) => c.conn().conn.fill().await,
                        None => std::future::pending().await,
                    }
                });
                let mut expired = std::pin::pin!(expired);
                std::future::poll_fn(|cx| {
                    use std::future::Future as _;
                    use std::task::Poll::Ready;
                    // The signal first: a killed client runs nothing more, even when its next
                    // request is already readable.
                    let signal = if idle {
                        info.kill.poll_idle(cx, shutdown)
                    } else {
                        info.kill.poll(cx, shutdown)
                    };
                    if let Ready(w) = signal {
                        return Ready(Event::Signal(w));
                    }
                    if server_first {
                        if let Ready(r) = server.as_mut().poll(cx) {
                            return Ready(Event::Server(r));
                        }
                    }
                    if !hold {
                        if let Ready(r) = client.as_mut().poll(cx) {
                            return Ready(Event::Client(r));
                        }
                    }
                    if !server_first {
                        if let Ready(r) = server.as_mut().poll(cx) {
                            return Ready(Event::Server(r));
                        }
                    }
                    expired.as_mut().poll(cx).map(Event::Expired)
                })
                .await
            };
            // A new turn: what it handles is timed from here.
            self.clock = None;
            let server_err = match event {
                Event::Client(r) => {
                    r?;
                    None
                }
                Event::Server(r) => r.err(),
                Event::Signal(Wake::Killed) => return self.killed().await.map(|()| End::Closed),
                Event::Signal(Wake::ShuttingDown) => {
                    watch_shutdown = false;
                    None
                }
                Event::Signal(Wake::Park) if idle => match self.parkable() {
                    Ok(()) => return Ok(End::Park),
                    Err(never) => {
                        self.info.kill.decline_park(never);
                        None
                    }
                },
                // LongWait and WaitTimedOut are only reported while waiting for a server; Park
                // only to an idle client.
                Event::Signal(_) => None,
                Event::Expired(which) => {
                    return Box::pin(self.timed_out(which)).await.map(|()| End::Closed)
                }
            };
            if let Some(e) = server_err {
                self.server_lost(&e).await?;
            }
        }
    }

    /// Now, as far as timing one turn of the loop goes: everything handled between two waits
    /// (a client's pipelined Parse, Bind, Execute and Sync and its checkout; a server's reply
    /// and the release) shares one clock read, taken when first asked for. Anything that can
    /// wait within a turn (a checkout, a full output buffer's flush, a reset query) resets it.
    fn now(&mut self) -> Tick {
        *self.clock.get_or_insert_with(Tick::now)
    }

    /// Whether `auto_prepare` is on (as of the latest RELOAD or SET).
    fn auto_prepare(&mut self) -> bool {
        self.refresh_config();
        self.config.pgferry.auto_prepare
    }

    /// Drops the client's unnamed statement, if `auto_prepare` made it a prepared one.
    fn forget_unnamed(&mut self) {
        if !self.stmts.is_empty() {
            self.stmts.remove(b"");
        }
    }

    /// Takes up the configuration of the latest RELOAD or SET, if there was one since.
    fn refresh_config(&mut self) {
        let gen = self.app.config_gen.load(Ordering::Acquire);
        if gen != self.config_gen {
            self.config_gen = gen;
            self.config = self.app.config.load_full();
            self.timeouts = boxed_timeouts(self.config.client_timeouts_for(&self.info.user));
            // What kept the client from being parked may have changed too.
            self.info.kill.reconsider_park();
        }
    }

    /// The earliest per-client timeout that can end the coming wait, if any is set. The idle
    /// timeouts count from the start of the wait: the client has been silent since then.
    fn deadline(&mut self) -> Option<(Tick, Timeout)> {
        // RELOAD: the new timeouts apply from the next wait on.
        self.refresh_config();
        let t = **self.timeouts.as_ref()?;
        let now = Tick::now();
        let in_tx = self.tx != b'I';
        let waiting_on_server = !self.pending.is_empty();
        let mut best: Option<(Tick, Timeout)> = None;
        let mut consider = |at: Option<Tick>, which| {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, which));
                }
            }
        };
        if waiting_on_server {
            let start = self.request_start.unwrap_or(now);
            consider(t.query_timeout.map(|d| start + d), Timeout::Query);
        } else if in_tx || self.unsynced {
            consider(
                t.idle_transaction_timeout.map(|d| now + d),
                Timeout::IdleTransaction,
            );
        } else {
            consider(t.client_idle_timeout.map(|d| now + d), Timeout::ClientIdle);
        }
        if in_tx {
            let start = self.xact_start.unwrap_or(now);
            consider(
                t.transaction_timeout.map(|d| start + d),
                Timeout::Transaction,
            );
        }
        best
    }

    /// A per-client timeout expired: the client is told which one and disconnected; a server
    /// that was working for it is cancelled and closed (its transaction rolls back).
    async fn timed_out(&mut self, which: Timeout) -> Result<(), ClientError> {
        tracing::info!(
            client = self.info.id,
            db = %self.pool.database,
            user = %self.info.user,
            timeout = which.name(),
            "closing client"
        );
        if let Some(c) = self.server.take() {
            if self.is_idle() {
                self.server = Some(c); // clean: finish() gives it back
            } else {
                let target = cancel_target(&c);
                drop(c); // closed, never pooled
                self.cancel.set(None).await;
                if !self.pending.is_empty() {
                    // Stop the backend's work now rather than when it next writes.
                    let wait = self.config.pgferry.cancel_wait_timeout();
                    tokio::spawn(crate::app::cancel::send_cancel_bounded(target, wait));
                }
                self.pending.clear();
                self.unsynced = false;
                self.tx = b'I';
            }
        }
        build::error(self.client.out(), Severity::Fatal, "08P01", which.name());
        self.client.flush().await?;
        Err(ClientError::Refused(which.name().to_owned()))
    }

    /// True while the client's next requests must wait: its server answered a request with
    /// an error after a cancel went to it, and will reach ReadyForQuery without more input
    /// from the client. PostgreSQL may still hold that cancel (see
    /// [`CancelSlot::try_set`]), and a request sent to the backend now would be cancelled
    /// too. Once the ReadyForQuery is in, the client outside a transaction gives the server
    /// back (it is closed) and its next request runs on another; inside a transaction, or in
    /// session mode, the client keeps the server as it would with PostgreSQL itself.
    fn holds_client(&self) -> bool {
        self.errored
            && self.mode != PoolMode::Session
            && !self.unsynced
            && self.copy_in_until.is_none()
            && self.server.is_some()
            && self.cancel.was_hit()
    }

    /// No request outstanding and no transaction open.
    fn is_idle(&self) -> bool {
        self.pending.is_empty() && !self.unsynced && self.tx == b'I'
    }

    /// KILL / KILL_CLIENT from the admin console.
    async fn killed(&mut self) -> Result<(), ClientError> {
        build::error(
            self.client.out(),
            Severity::Fatal,
            "57P01",
            "terminating connection due to administrator command",
        );
        self.client.flush().await?;
        Err(ClientError::Refused("killed by admin".into()))
    }

    async fn protocol_violation(&mut self, why: &str) -> Result<(), ClientError> {
        build::error(self.client.out(), Severity::Fatal, "08P01", why);
        self.client.flush().await?;
        Err(ClientError::Refused(why.to_owned()))
    }

    // ----- client → server -------------------------------------------------------------

    async fn on_client_frame(&mut self, f: FrameRef<'_>) -> Result<Flow, ClientError> {
        let t = f.tag();
        self.tally.bytes_in += f.len() as u64;
        if matches!(t, tag::QUERY | tag::PARSE | tag::BIND | tag::FUNCTION_CALL) {
            let now = self.now();
            self.info
                .request_time_us
                .store(now.wall_us(), Ordering::Relaxed);
        }
        if t == tag::TERMINATE {
            return Ok(Flow::Exit);
        }
        if !FRONTEND_TAGS.contains(&t) {
            let why = format!("invalid frontend message type {}", t);
            self.protocol_violation(&why).await?;
            return Ok(Flow::Exit);
        }
        if self.skipping && t != tag::SYNC {
            if t == tag::QUERY && views::query_text(f.body()).is_err() {
                self.protocol_violation("malformed Query message").await?;
                return Ok(Flow::Exit);
            }
            return Ok(Flow::Continue);
        }
        let kept_from = self.replay_from(t);
        match t {
            tag::QUERY => {
                self.tally.queries += 1;
                let Ok(q) = views::query_text(f.body()) else {
                    self.protocol_violation("malformed Query message").await?;
                    return Ok(Flow::Exit);
                };
                if self.rewrite && mentions_search_path(q) {
                    self.search_path_dirty = true;
                }
                // Literals are inline in a simple query: the text itself is the parameter set.
                let stat = self.analyze(q).map(|(a, h)| self.observe(a, h));
                // A simple query destroys the unnamed statement.
                self.forget_unnamed();
                let auto = match self.rewrite && !self.unsynced && self.auto_prepare() {
                    true => self.app.autoprep.get(q),
                    false => None,
                };
                if self.ensure_server(false).await? {
                    match auto {
                        Some(a) => self.execute_prepared(a, q, stat),
                        None => self.forward(f, Some(Pending::Query { stat })),
                    }
                }
            }
            tag::FUNCTION_CALL => {
                if self.ensure_server(false).await? {
                    self.forward(f, Some(Pending::Query { stat: None }));
                }
            }
            tag::PARSE => self.on_parse(f).await?,
            tag::BIND => self.on_bind(f).await?,
            tag::DESCRIBE => self.on_describe(f).await?,
            tag::EXECUTE => {
                self.tally.queries += 1;
                let stat = self.bound.clone().map(|(a, h)| self.observe(a, h));
                if self.ensure_server(true).await? {
                    let copy_ends = self.copy_ends;
                    self.forward(f, Some(Pending::Execute { copy_ends, stat }));
                    self.unsynced = true;
                }
            }
            tag::CLOSE => self.on_close(f).await?,
            tag::SYNC => {
                self.skipping = false;
                if self.server.is_some() {
                    if self.copy_in_until == Some(self.copy_ends) {
                        self.forward(f, None); // ignored by the server during COPY
                    } else {
                        let copy_ends = self.copy_ends;
                        let auto = None;
                        self.forward(f, Some(Pending::Sync { copy_ends, auto }));
                    }
                    self.unsynced = false;
                } else {
                    let mut b = BytesMut::new();
                    build::ready_for_query(&mut b, self.tx);
                    self.local(b.freeze());
                }
            }
            tag::FLUSH => {
                if self.server.is_some() {
                    self.forward(f, None);
                }
            }
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                if t != tag::COPY_DATA {
                    self.copy_ends += 1;
                    self.copy_in_until = None;
                }
                if self.server.is_some() {
                    self.forward(f, None);
                    self.flush_server_if_full().await?;
                }
            }
            other => {
                let why = format!("invalid frontend message type {}", other as char);
                self.protocol_violation(&why).await?;
                return Ok(Flow::Exit);
            }
        }
        if let Some(from) = kept_from {
            self.keep_for_replay(from, t);
        }
        Ok(Flow::Continue)
    }

    /// Where the server's output stands before message `t` is handled, if `t` is to be kept
    /// for a replay ([`crate::server::replay::Replay::mark`]).
    fn replay_from(&mut self, t: u8) -> Option<usize> {
        let sc = self.server.as_mut()?.conn();
        sc.replay.mark(t, sc.conn.pending_out())
    }

    /// Keeps what handling message `t` queued for the server since `from`.
    fn keep_for_replay(&mut self, from: usize, t: u8) {
        if let Some(c) = self.server.as_mut() {
            let sc = c.conn();
            sc.replay.keep(sc.conn.queued(), from, t);
        }
    }

    async fn on_parse(&mut self, f: FrameRef<'_>) -> Result<(), ClientError> {
        let Ok(p) = ParseView::new(f.body()) else {
            return self.protocol_violation("malformed Parse message").await;
        };
        self.tally.client_parses += 1;
        if let Some((a, _)) = self.analyze(p.query) {
            self.analyses.insert(p.name.into(), a);
        }
        if self.rewrite && mentions_search_path(p.query) {
            self.search_path_dirty = true;
        }
        let unnamed = p.name.is_empty();
        if !self.rewrite || (unnamed && !self.auto_prepare()) {
            if unnamed {
                self.forget_unnamed();
            }
            if self.ensure_server(true).await? {
                self.forward(
                    f,
                    Some(Pending::Parse {
                        hidden: false,
                        id: None,
                        name: None,
                    }),
                );
                self.unsynced = true;
            }
            return Ok(());
        }
        // The unnamed statement is replaced by the next one (auto_prepare: it is prepared
        // on servers like a named one).
        if !unnamed && self.stmts.contains(p.name) {
            let msg = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(p.name)
            );
            self.local_error("42P05", &msg);
            return Ok(());
        }
        // A driver that sends the same unnamed statement before every execution keeps it.
        let same = match self.stmts.get(p.name) {
            Some(s) if unnamed && s.is(&p) => Some(Arc::clone(s)),
            _ => None,
        };
        let kept = same.is_some();
        let stmt = same.unwrap_or_else(|| Arc::new(Stmt::from_parse(&p)));
        if !self.ensure_server(true).await? {
            return Ok(());
        }
        if !kept {
            self.stmts.insert(p.name, stmt.clone());
        }
        let batch_starts = self.pending.is_empty() && self.tx == b'I';
        let c = self.server_conn();
        let held = c.prepared.touch(stmt.id);
        if held == Held::Ready {
            if unnamed && batch_starts {
                // What follows up to the Sync is kept, to be sent again should the server
                // refuse the statement because a table changed under it.
                c.replay.start_batch(stmt.id, stmt.parse.clone());
            }
            let reply = Bytes::from_static(build::PARSE_COMPLETE);
            match kept {
                true => self.local(reply),
                false => self.local_undoable(reply, LocalUndo::Created(p.name.into())),
            }
        } else {
            let name = (!kept).then(|| p.name.into());
            self.register_on_server(&stmt, held, false, name);
        }
        self.unsynced = true;
        Ok(())
    }

    /// Queues the statement's Parse on the current server (closing the least recently used
    /// statement first if the server is at max_prepared_statements, and the statement itself
    /// if the server has it and it may be stale: `held`, from
    /// [`crate::server::prepared::Registry::touch`]).
    fn register_on_server(
        &mut self,
        stmt: &Stmt,
        held: Held,
        hidden: bool,
        name: Option<Box<[u8]>>,
    ) {
        if self.server.is_none() {
            return;
        }
        self.server_conn().statements_fresh();
        if held == Held::Stale {
            self.close_hidden(stmt.id);
        }
        if let Some(evicted) = self.server_conn().prepared.insert(stmt.id) {
            self.close_hidden(evicted);
        }
        self.server_conn().conn.queue(&stmt.parse);
        self.tally.server_parses += 1;
        self.pending.push_back(Pending::Parse {
            hidden,
            id: Some(stmt.id),
            name,
        });
    }

    /// Queues a Close of the server's statement `id`; the client never sees its CloseComplete.
    fn close_hidden(&mut self, id: u64) {
        views::put_target(
            self.server_conn().conn.out(),
            tag::CLOSE,
            b'S',
            &server_name(id),
        );
        self.pending.push_back(Pending::Close { hidden: true });
    }

    /// Makes sure the current server has the statement, preparing it invisibly if not.
    fn ensure_prepared(&mut self, stmt: &Stmt) {
        let held = self.server_conn().prepared.touch(stmt.id);
        if held != Held::Ready {
            self.register_on_server(stmt, held, true, None);
        }
    }

    /// The client's statement by name, or a 26000 error (and skip to Sync) if unknown.
    fn lookup(&mut self, name: &[u8]) -> Option<Arc<Stmt>> {
        let found = self.stmts.get(name).cloned();
        if found.is_none() {
            let msg = format!(
                "prepared statement \"{}\" does not exist",
                String::from_utf8_lossy(name)
            );
            self.local_error("26000", &msg);
        }
        found
    }

    async fn on_bind(&mut self, f: FrameRef<'_>) -> Result<(), ClientError> {
        let Ok(b) = BindView::new(f.body()) else {
            return self.protocol_violation("malformed Bind message").await;
        };
        self.tally.binds += 1;
        if self.insight {
            self.bound = self
                .analyses
                .get(b.statement)
                .map(|a| (a.clone(), text_hash(b.rest)));
        }
        if !self.rewrite || (b.statement.is_empty() && !self.stmts.contains(b"")) {
            if self.ensure_server(true).await? {
                self.forward(f, Some(Pending::Bind { hidden: false }));
                self.unsynced = true;
            }
            return Ok(());
        }
        let Some(stmt) = self.lookup(b.statement) else {
            return Ok(());
        };
        if !self.ensure_server(true).await? {
            return Ok(());
        }
        self.ensure_prepared(&stmt);
        views::put_bind(self.server_conn().conn.out(), &b, stmt.server_name());
        self.pending.push_back(Pending::Bind { hidden: false });
        self.unsynced = true;
        Ok(())
    }

    async fn on_describe(&mut self, f: FrameRef<'_>) -> Result<(), ClientError> {
        let Ok(d) = TargetView::new(f.body()) else {
            return self.protocol_violation("malformed Describe message").await;
        };
        if !self.rewrite || d.kind != b'S' || (d.name.is_empty() && !self.stmts.contains(b"")) {
            if self.ensure_server(true).await? {
                self.forward(f, Some(Pending::Describe { hidden: false }));
                self.unsynced = true;
            }
            return Ok(());
        }
        let Some(stmt) = self.lookup(d.name) else {
            return Ok(());
        };
        if !self.ensure_server(true).await? {
            return Ok(());
        }
        self.ensure_prepared(&stmt);
        views::put_target(
            self.server_conn().conn.out(),
            tag::DESCRIBE,
            b'S',
            stmt.server_name(),
        );
        self.pending.push_back(Pending::Describe { hidden: false });
        self.unsynced = true;
        Ok(())
    }

    async fn on_close(&mut self, f: FrameRef<'_>) -> Result<(), ClientError> {
        let Ok(c) = TargetView::new(f.body()) else {
            return self.protocol_violation("malformed Close message").await;
        };
        let analysis = if c.kind == b'S' {
            self.analyses.remove(c.name)
        } else {
            None
        };
        let mut b = BytesMut::new();
        build::close_complete(&mut b);
        if self.rewrite && c.kind == b'S' && (!c.name.is_empty() || self.stmts.contains(b"")) {
            // The server keeps the statement for reuse; only the client's name goes away.
            let stmt = self.stmts.remove(c.name);
            let undo = LocalUndo::Closed(c.name.into(), stmt, analysis);
            self.local_undoable(b.freeze(), undo);
        } else if self.server.is_some() {
            self.forward(f, Some(Pending::Close { hidden: false }));
            self.unsynced = true;
        } else {
            self.local(b.freeze());
        }
        Ok(())
    }

    fn server_conn(&mut self) -> &mut crate::server::ServerConn {
        match self.server.as_mut() {
            Some(c) => c.conn(),
            None => unreachable!("server_conn called without a server"),
        }
    }

    fn forward(&mut self, f: FrameRef<'_>, p: Option<Pending>) {
        if let Some(c) = self.server.as_mut() {
            c.conn().conn.queue(f.raw());
            if let Some(p) = p {
                self.expect(p);
            }
        }
    }

    /// Awaits the reply to a request sent to the server.
    fn expect(&mut self, p: Pending) {
        if self.request_start.is_none() {
            let now = self.now();
            self.request_start = Some(now);
            // The first request outside a transaction starts one (in session mode the server
            // stays between them).
            self.xact_start.get_or_insert(now);
        }
        self.pending.push_back(p);
    }

    /// Runs the simple query `text` as an execution of its auto-prepared statement (prepared
    /// on this server first if it lacks it); the client sees the replies of a simple query.
    fn execute_prepared(&mut self, a: Arc<AutoPrepared>, text: &[u8], stat: Option<Stat>) {
        self.tally.auto_prepared += 1;
        self.ensure_prepared(&a.stmt);
        let sc = self.server_conn();
        a.put_execution(sc.conn.out(), text);
        sc.replay.keep_text(text);
        self.expect(Pending::Bind { hidden: true });
        self.expect(Pending::Describe { hidden: true });
        let copy_ends = self.copy_ends;
        self.expect(Pending::Execute { copy_ends, stat });
        self.expect(Pending::Sync {
            copy_ends,
            auto: Some(a),
        });
    }

    async fn flush_server_if_full(&mut self) -> Result<(), ClientError> {
        let r = match self.server.as_mut() {
            Some(c) => c.conn().conn.flush_if_full().await,
            None => Ok(false),
        };
        match r {
            Ok(wrote) => {
                if wrote {
                    self.clock = None; // the write may have waited for the server
                }
            }
            Err(e) => self.server_lost(&NetError::Io(e)).await?,
        }
        Ok(())
    }

    /// Flushes the client's output if enough has piled up (a large result streaming).
    async fn flush_client_if_full(&mut self) -> Result<(), ClientError> {
        if self.client.flush_if_full().await? {
            self.clock = None; // the write may have waited for the client
        }
        Ok(())
    }

    /// A reply pgferry makes itself, kept in order behind outstanding server replies.
    fn local(&mut self, reply: Bytes) {
        if self.pending.is_empty() {
            self.queue_own(&reply);
        } else {
            self.pending.push_back(Pending::Local(reply, None));
        }
    }

    /// A local reply whose effect is reverted if an earlier request fails.
    fn local_undoable(&mut self, reply: Bytes, undo: LocalUndo) {
        if self.pending.is_empty() {
            self.queue_own(&reply);
        } else {
            self.pending.push_back(Pending::Local(reply, Some(undo)));
        }
    }

    fn queue_own(&mut self, reply: &[u8]) {
        if self.client.pending_out() == 0 {
            self.own_replies_only = true;
        }
        self.client.queue(reply);
    }

    /// The client's output is only pgferry's own replies and a server request sent after
    /// them is still unanswered: its reply will come (the client sent the Sync or Flush that
    /// asks for it, or expects nothing yet) and both go to the client in one write. This
    /// saves a write and a wakeup of the client per `pgbench -M extended` transaction.
    fn owed_reply_follows(&self) -> bool {
        self.own_replies_only
            && self.server.is_some()
            && self
                .pending
                .front()
                .is_some_and(|p| !matches!(p, Pending::Local(..)))
    }

    /// An error raised by pgferry in the extended protocol: reported in order, then the
    /// client's messages are ignored up to its Sync, as PostgreSQL does.
    fn local_error(&mut self, code: &str, msg: &str) {
        let mut b = BytesMut::new();
        build::error(&mut b, Severity::Error, code, msg);
        self.local(b.freeze());
        self.skipping = true;
    }

    /// Gets a server for the client if it has none. Returns false when none could be had and
    /// the client was told so (the session goes on).
    async fn ensure_server(&mut self, extended: bool) -> Result<bool, ClientError> {
        if self.server.is_some() {
            return Ok(true);
        }
        // The common case, without a future: an idle server is free, already has the client's
        // parameters, and no cancel is being delivered.
        let now = self.now();
        let ready = match self.pool.try_checkout_now(now) {
            Some(mut c) => {
                if !self.params.in_sync(c.conn()) || c.conn_ref().statements_stale() {
                    Some(c)
                } else if let Err(c) = self.try_attach(c) {
                    Some(c)
                } else {
                    return Ok(true);
                }
            }
            None => None,
        };
        // Boxed: waiting, connecting and applying parameters keep their state out of every
        // client's resident task.
        Box::pin(self.get_server(extended, ready)).await
    }

    /// [`Session::ensure_server`] beyond the fast path: waits for a server unless `ready` is
    /// one, applies the client's parameters, attaches it.
    async fn get_server(
        &mut self,
        extended: bool,
        ready: Option<Checkout>,
    ) -> Result<bool, ClientError> {
        let checkout = match ready {
            Some(c) => Ok(c),
            None => match self.wait_for_server(extended).await? {
                Some(r) => r,
                None => return Ok(false),
            },
        };
        self.clock = None; // the wait may have been long
        let mut c = match checkout {
            Ok(c) => c,
            Err(PoolError::WaitTimeout) => {
                build::error(
                    self.client.out(),
                    Severity::Fatal,
                    "08P01",
                    "query_wait_timeout",
                );
                self.client.flush().await?;
                return Err(ClientError::Refused("query_wait_timeout".into()));
            }
            Err(PoolError::Server(ServerError::Server(raw)))
                if !ServerError::Server(raw.clone()).is_transient() =>
            {
                // The server refused pgferry's login (e.g. the database is gone): every
                // query would fail the same way, so end the session with the server's words.
                self.client.queue(&raw);
                self.client.flush().await?;
                return Err(ClientError::Refused(crate::server::error_message(&raw)));
            }
            Err(e) => {
                tracing::warn!(db = %self.pool.database, error = %e, "no server connection");
                let msg = format!("pgferry could not connect to server: {}", e.detail());
                if extended {
                    self.local_error("08006", &msg);
                } else {
                    build::error(self.client.out(), Severity::Error, "08006", &msg);
                    build::ready_for_query(self.client.out(), self.tx);
                }
                return Ok(false);
            }
        };
        if c.conn_ref().statements_stale() && !c.conn().drop_stale_statements().await {
            drop(c); // unknown state: closed
            self.server_unprepared(extended, "it did not deallocate its statements");
            return Ok(false);
        }
        if let Some(sql) = self.params.sync_sql(c.conn_ref()) {
            match c.conn().hidden_query(&sql).await {
                Ok((_, b'I')) => self.params.after_sync(c.conn()),
                Ok(_) => {
                    return self
                        .protocol_violation(
                            "server left a transaction open while applying parameters",
                        )
                        .await
                        .map(|_| false)
                }
                Err(ServerError::Server(raw)) => {
                    // The client's own settings are invalid (e.g. a bad TimeZone at startup).
                    c.release();
                    self.client.queue(&raw);
                    self.client.flush().await?;
                    return Err(ClientError::Refused(crate::server::error_message(&raw)));
                }
                Err(e) => {
                    drop(c);
                    self.server_unprepared(extended, &e.to_string());
                    return Ok(false);
                }
            }
        }
        self.attach(c).await;
        Ok(true)
    }

    /// Tells the client its request failed because the server it got could not be made ready
    /// for it (the connection was closed); the session goes on.
    fn server_unprepared(&mut self, extended: bool, why: &str) {
        let msg = format!("pgferry could not prepare server connection: {why}");
        build::error(self.client.out(), Severity::Error, "08006", &msg);
        if extended {
            self.skipping = true;
        } else {
            build::ready_for_query(self.client.out(), self.tx);
        }
    }

    /// Waits for a checkout. `Ok(None)`: the wait ended without one and the client was told
    /// (cancelled); errors of the checkout itself are returned for the caller to report.
    async fn wait_for_server(
        &mut self,
        extended: bool,
    ) -> Result<Option<Result<Checkout, PoolError>>, ClientError> {
        self.info.start_waiting(self.pool.query_wait_timeout());
        // KILL / KILL_CLIENT also reach a client that is waiting for a server, and so does the
        // client's own CancelRequest (the request is answered as cancelled, never run); a client
        // waiting longer than query_wait_notify is told so once (PgBouncer's NOTICE).
        // The query_wait_notify mark comes from a periodic check over all clients
        // (app::stats), not from a timer per wait.
        let pool = self.pool.clone();
        let cancel = self.cancel.clone();
        let checkout = pool.checkout_untimed();
        tokio::pin!(checkout);
        self.info.kill.clear_long_wait();
        let mut notified = false;
        let checkout = loop {
            tokio::select! {
                biased;
                c = &mut checkout => break c,
                w = self.info.kill.killed_or_long_wait(!notified) => {
                    if w == Wake::WaitTimedOut {
                        break Err(PoolError::WaitTimeout);
                    }
                    if w == Wake::LongWait {
                        notified = true;
                        build::notice(
                            self.client.out(),
                            Severity::Notice,
                            "00000",
                            "No server connection available in postgres backend, client being queued",
                        );
                        self.client.flush().await?;
                        continue;
                    }
                    self.info.set_state(ClientState::Idle);
                    return self.killed().await.map(|_| None);
                }
                _ = cancel.cancelled_while_waiting() => {
                    self.info.set_state(ClientState::Idle);
                    let msg = "canceling statement due to user request";
                    if extended {
                        self.local_error("57014", msg);
                    } else {
                        build::error(self.client.out(), Severity::Error, "57014", msg);
                        build::ready_for_query(self.client.out(), self.tx);
                    }
                    return Ok(None);
                }
            }
        };
        self.info.set_state(ClientState::Idle);
        Ok(Some(checkout))
    }

    /// Makes `c` the client's server: cancels now reach it, the console shows the link.
    async fn attach(&mut self, c: Checkout) {
        if let Err(c) = self.try_attach(c) {
            // A cancel is being delivered for this client: wait for it to finish.
            self.cancel.set(Some(cancel_target(&c))).await;
            self.linked(c);
        }
    }

    /// [`Session::attach`] without waiting; gives `c` back while a cancel is being delivered.
    fn try_attach(&mut self, c: Checkout) -> Result<(), Checkout> {
        if self.cancel.try_set(Some(cancel_target(&c))).is_none() {
            return Err(c);
        }
        self.linked(c);
        Ok(())
    }

    fn linked(&mut self, c: Checkout) {
        let sc = c.conn_ref();
        sc.info.client.store(self.info.id, Ordering::Relaxed);
        self.info.server.store(sc.id, Ordering::Relaxed);
        self.info.set_state(ClientState::Active);
        if self.mode != PoolMode::Session && self.xact_start.is_none() {
            // Transaction mode links for a request: its transaction starts with the checkout.
            // A session links at login, long before its first transaction.
            self.xact_start = Some(self.now());
        }
        self.server = Some(c);
    }

    // ----- server → client -------------------------------------------------------------

    async fn on_server_frame(&mut self, f: FrameRef<'_>) -> Result<(), ClientError> {
        self.tally.bytes_out += f.len() as u64;
        match f.tag() {
            tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE => self.client.queue(f.raw()),
            tag::PARAMETER_STATUS => {
                if let Some((name, value)) = self.server_conn().note_parameter(f.body()) {
                    if name == "application_name" {
                        value.clone_into(&mut self.info.application_name.lock());
                    }
                    self.params.note_reported(&name, &value);
                }
                self.client.queue(f.raw());
            }
            tag::READY_FOR_QUERY => return self.on_ready(f.raw()).await,
            tag::ERROR_RESPONSE if is_fatal(f.body()) => {
                // The server is going away (terminated backend, shutdown): the connection is
                // finished, whatever follows.
                let code = views::error_field(f.body(), b'C').unwrap_or(b"08006");
                let code = String::from_utf8_lossy(code).into_owned();
                let msg =
                    views::error_field(f.body(), b'M').unwrap_or(b"server closed the connection");
                let why = format!("server connection lost: {}", String::from_utf8_lossy(msg));
                self.pool.count_error(code.as_bytes());
                return Box::pin(self.server_lost_with(&code, &why)).await;
            }
            tag::ERROR_RESPONSE => {
                let stale = self.rewrite && is_stale_plan(f.body());
                if stale {
                    self.server_conn().prepared.mark_stale();
                    // A table changed outside pgferry: the other servers' statements for it
                    // are stale too; they go before the next transaction, not after an error.
                    self.app.schema_changed(&self.pool.database);
                }
                // In the extended protocol the server now skips everything up to Sync.
                if let Some(Pending::Query { stat: Some(st) }) = self.pending.front_mut() {
                    st.error = true;
                }
                // The timing of a refused execution that may yet run again.
                let mut refused = None;
                // What the server skipped: (Binds, Describes, Executes, anything else).
                let mut skipped = (0, 0, 0, 0);
                if !matches!(self.pending.front(), Some(Pending::Query { .. }) | None) {
                    while let Some(p) = self.pending.front() {
                        if p.ends_at_ready() {
                            break;
                        }
                        match self.pending.pop_front() {
                            Some(Pending::Execute { stat, .. }) if stale && refused.is_none() => {
                                skipped.2 += 1;
                                refused = stat;
                            }
                            Some(p) => {
                                match p {
                                    Pending::Bind { hidden: false } => skipped.0 += 1,
                                    Pending::Describe { hidden: false } => skipped.1 += 1,
                                    Pending::Execute { .. } => skipped.2 += 1,
                                    _ => skipped.3 += 1,
                                }
                                self.undo(p);
                            }
                            None => {}
                        }
                    }
                }
                self.errored = true;
                let moved = match self.pending.front() {
                    Some(Pending::Sync { auto: Some(a), .. }) => {
                        error_in_client_text(f.body(), &a.plan)
                    }
                    _ => None,
                };
                // The Sync of an auto-prepared query, nothing sent after it, no transaction
                // open: the failed Bind did nothing, so the query can run again as text.
                let auto_alone = self.pending.len() == 1
                    && matches!(
                        self.pending.front(),
                        Some(Pending::Sync { auto: Some(_), .. })
                    );
                // A client's unnamed Parse that pgferry answered, then Bind, Execute (and a
                // Describe) up to the Sync, nothing after it, no transaction open: kept, and
                // it can run again once the statement is prepared anew.
                let batch_alone = self.pending.len() == 1
                    && matches!(self.pending.front(), Some(Pending::Sync { auto: None, .. }))
                    && matches!(skipped, (1, 0 | 1, 1, 0))
                    && self
                        .server
                        .as_ref()
                        .is_some_and(|c| c.conn_ref().replay.batch_complete());
                if stale && (auto_alone || batch_alone) && self.tx == b'I' {
                    let error = match moved {
                        Some(e) => e.freeze(),
                        None => Bytes::copy_from_slice(f.raw()),
                    };
                    let stat = refused;
                    let batch = batch_alone.then_some(skipped.1 == 1);
                    self.retry = Some(Box::new(Retry { error, stat, batch }));
                    return Ok(());
                }
                if let Some(st) = refused {
                    self.complete_failed(st);
                }
                self.pool
                    .count_error(views::error_field(f.body(), b'C').unwrap_or(b"XX"));
                match moved {
                    Some(e) => self.client.queue(&e),
                    None => self.client.queue(f.raw()),
                }
            }
            tag::PARSE_COMPLETE => match self.pending.pop_front() {
                Some(Pending::Parse { hidden, .. }) => {
                    if !hidden {
                        self.client.queue(f.raw());
                    }
                }
                _ => return self.desync("ParseComplete").await,
            },
            tag::BIND_COMPLETE => match self.pending.pop_front() {
                Some(Pending::Bind { hidden }) => {
                    if !hidden {
                        self.client.queue(f.raw());
                    }
                }
                _ => return self.desync("BindComplete").await,
            },
            tag::CLOSE_COMPLETE => match self.pending.pop_front() {
                Some(Pending::Close { hidden }) => {
                    if !hidden {
                        self.client.queue(f.raw());
                    }
                }
                _ => return self.desync("CloseComplete").await,
            },
            tag::ROW_DESCRIPTION | tag::NO_DATA => {
                let mut show = true;
                if let Some(&Pending::Describe { hidden }) = self.pending.front() {
                    self.pending.pop_front();
                    // A simple query that returns no rows has no NoData.
                    show = !hidden || f.tag() == tag::ROW_DESCRIPTION;
                }
                if show {
                    self.client.queue(f.raw());
                }
            }
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY | tag::PORTAL_SUSPENDED => {
                let rows = if f.tag() == tag::COMMAND_COMPLETE {
                    let t = views::command_tag(f.body());
                    self.on_command_tag(t);
                    tag_rows(t)
                } else {
                    0
                };
                match self.pending.front_mut() {
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute {
                            stat: Some(mut st), ..
                        }) = self.pending.pop_front()
                        {
                            st.rows = rows;
                            self.complete(st);
                        }
                    }
                    Some(Pending::Query { stat: Some(st) }) => st.rows += rows,
                    _ => {}
                }
                self.client.queue(f.raw());
            }
            tag::COPY_IN => {
                if let Some(&Pending::Execute { copy_ends, .. }) = self.pending.front() {
                    // Extended-protocol COPY FROM STDIN: the Syncs the client sent after this
                    // Execute and before its copy end are ignored by the server.
                    self.pending.retain(
                        |p| !matches!(p, Pending::Sync { copy_ends: c, .. } if *c == copy_ends),
                    );
                    if self.copy_ends == copy_ends {
                        self.copy_in_until = Some(copy_ends);
                    }
                }
                self.client.queue(f.raw());
            }
            tag::BACKEND_KEY_DATA | tag::AUTHENTICATION => {
                return self.desync("login message in a session").await
            }
            _ => self.client.queue(f.raw()),
        }
        self.drain_local();
        self.flush_client_if_full().await?;
        Ok(())
    }

    async fn on_ready(&mut self, raw: &[u8]) -> Result<(), ClientError> {
        let Ok(status) = views::ready_status(&raw[5..]) else {
            return self.desync("malformed ReadyForQuery").await;
        };
        let retry = self.retry.take();
        // Some(whether auto-prepared) when a Sync ended.
        let ended_sync = match self.pending.pop_front() {
            Some(Pending::Query { stat: Some(st) }) => {
                self.complete(st);
                None
            }
            Some(Pending::Sync { auto, .. }) => Some(auto.is_some()),
            Some(p) if p.ends_at_ready() => None,
            _ => return self.desync("ReadyForQuery").await,
        };
        if let Some(retry) = retry {
            let Retry { error, stat, batch } = *retry;
            // The kept batch is gone if the client sent anything after it (a Flush).
            let kept = batch.is_none()
                || self
                    .server
                    .as_ref()
                    .is_some_and(|c| c.conn_ref().replay.batch_complete());
            if kept
                && ended_sync == Some(batch.is_none())
                && status == b'I'
                && self.pending.is_empty()
            {
                self.tx = status;
                self.errored = false;
                match batch {
                    None => {
                        let sc = self.server_conn();
                        build::tagged(sc.conn.out(), tag::QUERY, sc.replay.bytes());
                        self.expect(Pending::Query { stat });
                    }
                    Some(describe) => self.replay_batch(describe, stat),
                }
                return Ok(());
            }
            // The client sent more meanwhile: the retry would run after it.
            self.pool.count_error(b"0A000");
            self.client.queue(&error);
            if let Some(st) = stat {
                self.complete_failed(st);
            }
        }
        if let Some(n) = self.notice.take() {
            self.client.queue(&n);
        }
        if self.schema_changed && status == b'I' {
            // Committed (or rolled back: deallocating then costs a Parse per statement).
            self.schema_changed = false;
            self.app.schema_changed(&self.pool.database);
        }
        self.tx = status;
        self.errored = false;
        self.client.queue(raw);
        self.drain_local();
        self.account(status);
        if self.mode == PoolMode::Statement && status != b'I' {
            // The server stays in the transaction: close it with the client.
            self.server = None;
            self.pending.clear();
            build::error(
                self.client.out(),
                Severity::Fatal,
                "08P01",
                "transaction blocks not allowed in statement pooling mode",
            );
            self.client.flush().await?;
            return Err(ClientError::Refused("transaction in statement mode".into()));
        }
        if self.mode != PoolMode::Session && self.is_idle() {
            let now = self.now();
            if !self.try_release(now) {
                // Boxed: rarely large, and kept out of every client's resident task size.
                Box::pin(self.release()).await;
                self.clock = None; // the reset query may have taken a while
            }
        }
        Ok(())
    }

    /// Sends the kept Bind … Sync again (see `ServerConn::replay`), after closing the stale
    /// statement and preparing it anew, both unseen by the client (which has its
    /// ParseComplete already).
    fn replay_batch(&mut self, describe: bool, stat: Option<Stat>) {
        let Some((id, parse)) = self.server_conn().replay.take_batch() else {
            return;
        };
        self.close_hidden(id);
        let sc = self.server_conn();
        sc.conn.queue(&parse);
        sc.conn.queue(sc.replay.bytes());
        self.tally.server_parses += 1;
        self.expect(Pending::Parse {
            hidden: true,
            id: None,
            name: None,
        });
        self.expect(Pending::Bind { hidden: false });
        if describe {
            self.expect(Pending::Describe { hidden: false });
        }
        let copy_ends = self.copy_ends;
        self.expect(Pending::Execute { copy_ends, stat });
        self.expect(Pending::Sync {
            copy_ends,
            auto: None,
        });
    }

    /// The statement's analysis (memoized by text) and the hash of its text, when insight is on.
    fn analyze(&self, text: &[u8]) -> Option<(Arc<Analysis>, u64)> {
        if !self.insight {
            return None;
        }
        let h = text_hash(text);
        Some((self.app.sql.analyze_bytes(h, text)?, h))
    }

    /// Feeds a statement to the N+1 detector and starts timing it.
    fn observe(&mut self, a: Arc<Analysis>, params_hash: u64) -> Stat {
        let now = self.now();
        if self.detector.is_none() {
            self.detector = Some(Box::new(self.new_detector()));
        }
        if let Some(d) = self.detector.as_mut() {
            if let Some(n) = d.on_statement(now, &a, params_hash) {
                if self.app.config.load().pgferry.n_plus_one_notice {
                    let mut b = BytesMut::new();
                    build::notice_full(
                        &mut b,
                        Severity::Warning,
                        crate::insight::NOTICE_SQLSTATE,
                        &n.message,
                        n.detail.as_deref(),
                        n.hint.as_deref(),
                    );
                    self.notice = Some(b.freeze());
                }
            }
        }
        Stat::new(a, now)
    }

    /// The N+1 detector of this client, with what its reports name.
    fn new_detector(&self) -> SessionDetector {
        self.app.insight.new_session(SessionContext {
            database: self.pool.database.clone(),
            user: self.info.user.to_string(),
            application_name: self.params.get("application_name").unwrap_or("").to_owned(),
            client_addr: self.info.addr().to_string(),
        })
    }

    /// [`Session::complete`] for a statement that failed (or was skipped after an error).
    fn complete_failed(&mut self, mut st: Stat) {
        st.error = true;
        self.complete(st);
    }

    /// A timed statement finished: statistics and the detector's server time.
    fn complete(&mut self, st: Stat) {
        let now = self.now();
        let d = now.since(st.start);
        if let Some(det) = self.detector.as_mut() {
            det.on_complete(d);
        }
        let insight = &self.app.insight;
        let db = self
            .queries
            .get_or_insert_with(|| insight.queries_of(&self.pool.database));
        let app_name = self.params.get("application_name").unwrap_or("");
        insight.record_to(db, app_name, &st.analysis, (d, now), st.rows, st.error);
    }

    /// Adds this request's counters and times to the pool's totals (once per ReadyForQuery).
    fn account(&mut self, status: u8) {
        let now = self.now();
        let st = &self.pool.stats;
        if self.pending.is_empty() {
            if let Some(t0) = self.request_start.take() {
                let d = now.since(t0);
                self.pool.observer.query(d);
                st.query_time_us
                    .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
            }
        }
        if status == b'I' {
            st.xacts.fetch_add(1, Ordering::Relaxed);
            self.app
                .counters
                .transactions
                .fetch_add(1, Ordering::Relaxed);
            if let Some(t0) = self.xact_start.take() {
                let d = now.since(t0);
                self.pool.observer.xact(d);
                st.xact_time_us
                    .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
            }
            if !self.pending.is_empty() {
                // Requests the client pipelined behind this one: the server starts on the next
                // transaction now. Otherwise the next request starts it (`forward`).
                self.xact_start = Some(now);
            }
        } else if self.xact_start.is_none() {
            self.xact_start = Some(now);
        }
        self.add_tally();
        self.info.prepared_statements.store(
            u32::try_from(self.stmts.len()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        if let Some(c) = self.server.as_ref() {
            c.conn_ref().publish_statement_count();
        }
    }

    /// Adds the counters gathered since the last time to the pool's totals.
    fn add_tally(&mut self) {
        let (st, t) = (&self.pool.stats, std::mem::take(&mut self.tally));
        add(&st.queries, t.queries);
        add(&self.app.counters.queries, t.queries);
        add(&st.bytes_received, t.bytes_in);
        add(&st.bytes_sent, t.bytes_out);
        add(&st.client_parses, t.client_parses);
        add(&st.server_parses, t.server_parses);
        add(&st.auto_prepared, t.auto_prepared);
        add(&st.binds, t.binds);
    }

    /// CommandComplete tags that change state pgferry keeps for the client.
    fn on_command_tag(&mut self, t: &[u8]) {
        // Whatever the pool mode: migrations often run through a session-mode pool.
        if changes_result_types(t) {
            self.schema_changed = true;
        }
        if !self.rewrite {
            return;
        }
        if t == b"DEALLOCATE ALL" || t == b"DISCARD ALL" {
            self.stmts.clear();
            self.analyses.clear();
            if let Some(c) = self.server.as_mut() {
                let sc = c.conn();
                sc.prepared.clear();
                if t == b"DISCARD ALL" {
                    sc.retain_unreported(|_, _| false);
                }
            }
        }
    }

    /// Reverts the bookkeeping of a request the server skipped after an error.
    fn undo(&mut self, p: Pending) {
        if let Pending::Local(_, Some(undo)) = p {
            match undo {
                LocalUndo::Created(name) => {
                    self.stmts.remove(&name);
                    self.analyses.remove(&name);
                }
                LocalUndo::Closed(name, stmt, analysis) => {
                    if let Some(stmt) = stmt {
                        self.stmts.insert(&name, stmt);
                    }
                    if let Some(a) = analysis {
                        self.analyses.insert(name, a);
                    }
                }
            }
            return;
        }
        if let Pending::Execute { stat: Some(st), .. } = p {
            self.complete_failed(st);
            return;
        }
        if let Pending::Parse { id, name, .. } = p {
            if let (Some(id), Some(c)) = (id, self.server.as_mut()) {
                c.conn().prepared.remove(id);
            }
            if let Some(name) = name {
                self.stmts.remove(&name);
            }
        }
    }

    fn drain_local(&mut self) {
        while let Some(Pending::Local(..)) = self.pending.front() {
            if let Some(Pending::Local(b, _)) = self.pending.pop_front() {
                self.client.queue(&b);
            }
        }
    }

    /// [`Session::release`] when it needs no query and no wait (the common case); false when
    /// the caller must use `release`.
    fn try_release(&mut self, now: Tick) -> bool {
        let stale = |c: &Checkout| c.conn_ref().statements_stale();
        if self.server.as_ref().is_none_or(stale)
            || self.search_path_dirty
            || self.pool.resets_always()
        {
            return false;
        }
        let Some(cancelled) = self.cancel.try_set(None) else {
            return false;
        };
        if let Some(c) = self.server.take() {
            self.info.server.store(0, Ordering::Relaxed);
            self.info.set_state(ClientState::Idle);
            give_back(c, cancelled, now);
        }
        true
    }

    /// Gives the server back to the pool once the client's transaction is over.
    async fn release(&mut self) {
        let Some(mut c) = self.server.take() else {
            return;
        };
        if self.search_path_dirty {
            self.search_path_dirty = false;
            match c.conn().hidden_query("SHOW search_path").await {
                Ok((rows, b'I')) => {
                    if let Some(v) = rows.into_iter().next() {
                        c.conn().set_unreported("search_path".into(), v.clone());
                        self.params.set("search_path".into(), v);
                    }
                }
                _ => {
                    self.cancel.set(None).await;
                    return; // unknown state: `c` is dropped and closed
                }
            }
        }
        if !c.conn().drop_stale_statements().await {
            self.cancel.set(None).await;
            return;
        }
        let settings = self.pool.settings();
        if settings.server_reset_query_always && !settings.server_reset_query.is_empty() {
            let q = settings.server_reset_query.clone();
            if !matches!(c.conn().hidden_query(&q).await, Ok((_, b'I'))) {
                self.cancel.set(None).await;
                return;
            }
            c.conn().prepared.clear();
            c.conn().retain_unreported(|_, _| false);
        }
        // Clear the cancel target first: a cancel being delivered finishes before the server
        // can run anyone else's query.
        let cancelled = self.cancel.set(None).await;
        self.info.server.store(0, Ordering::Relaxed);
        self.info.set_state(ClientState::Idle);
        give_back(c, cancelled, Tick::now());
    }

    /// Boxed: a rare path, kept out of the size of every client's task.
    fn desync<'s>(
        &'s mut self,
        what: &'static str,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), ClientError>> + Send + 's>> {
        Box::pin(async move {
            tracing::error!(what, "protocol desynchronisation with server; closing it");
            self.server_lost(&NetError::Frame(crate::protocol::FrameError::Malformed(
                "unexpected server message",
            )))
            .await
        })
    }

    /// The server connection failed. The client keeps its session when nothing of its state
    /// was on that server (transaction mode, between transactions, one request in flight);
    /// otherwise it is told and disconnected, since its transaction or session is gone.
    async fn server_lost(&mut self, e: &NetError) -> Result<(), ClientError> {
        Box::pin(self.server_lost_with("08006", &format!("server connection lost: {e}"))).await
    }

    /// The server connection failed. Outside a transaction (transaction and statement mode)
    /// the client keeps its session: each request it had outstanding is answered with an
    /// error and ReadyForQuery, and its next request gets a fresh server. Inside a
    /// transaction, or in session mode, its state is gone: it gets FATAL and is disconnected.
    async fn server_lost_with(&mut self, code: &str, why: &str) -> Result<(), ClientError> {
        let pending = std::mem::take(&mut self.pending);
        if self.retry.take().is_some() {
            self.errored = false; // the client was not told of the error a retry would hide
        }
        let in_copy_in = self.copy_in_until.is_some();
        self.server = None; // dropped: closed, never returned to the pool
        self.cancel.set(None).await;
        self.info.server.store(0, Ordering::Relaxed);
        self.info.set_state(ClientState::Idle);
        self.request_start = None;
        self.xact_start = None;
        self.copy_in_until = None;
        let recoverable = self.mode != PoolMode::Session && self.tx == b'I';
        tracing::warn!(db = %self.pool.database, why, recoverable, "server connection lost");
        if !recoverable {
            build::error(self.client.out(), Severity::Fatal, code, why);
            self.client.flush().await?;
            return Err(ClientError::Refused("server connection lost".into()));
        }
        let mut first = true;
        for _ in pending.iter().filter(|p| p.ends_at_ready()) {
            if !(first && self.errored) {
                build::error(self.client.out(), Severity::Error, code, why);
            }
            build::ready_for_query(self.client.out(), b'I');
            first = false;
        }
        self.errored = false;
        self.skipping = false;
        // An extended-protocol COPY FROM STDIN has no Sync outstanding (the server ignores
        // those sent before the copy ends): the client is still sending data and will send
        // its Sync after CopyDone. It gets the error now; the rest up to that Sync is dropped.
        if self.unsynced || (in_copy_in && first) {
            // Extended messages still waiting for their Sync: fail them, answer the Sync.
            self.unsynced = false;
            self.local_error(code, why);
        }
        self.client.flush().await?;
        self.clock = None; // the flush may have waited for the client
        Ok(())
    }

    /// At the end of the session: a clean server goes back (after the reset query in session
    /// mode); one with a transaction or request open is closed.
    async fn finish(&mut self) {
        let Some(mut c) = self.server.take() else {
            return;
        };
        let cancelled = self.cancel.set(None).await;
        let clean = !cancelled && self.is_idle() && c.conn_ref().conn.pending_out() == 0;
        if !clean {
            return;
        }
        let dropped =
            tokio::time::timeout(Duration::from_secs(10), c.conn().drop_stale_statements());
        if !matches!(dropped.await, Ok(true)) {
            return;
        }
        let settings = self.pool.settings();
        if (self.mode == PoolMode::Session || settings.server_reset_query_always)
            && !settings.server_reset_query.is_empty()
        {
            let q = settings.server_reset_query.clone();
            let reset = tokio::time::timeout(Duration::from_secs(10), c.conn().hidden_query(&q));
            if !matches!(reset.await, Ok(Ok((_, b'I')))) {
                return;
            }
            c.conn().prepared.clear();
            c.conn().retain_unreported(|_, _| false);
        }
        c.release();
    }
}

/// Message types a client may send after login.
const FRONTEND_TAGS: &[u8] = &[
    tag::QUERY,
    tag::PARSE,
    tag::BIND,
    tag::DESCRIBE,
    tag::EXECUTE,
    tag::CLOSE,
    tag::SYNC,
    tag::FLUSH,
    tag::TERMINATE,
    tag::COPY_DATA,
    tag::COPY_DONE,
    tag::COPY_FAIL,
    tag::FUNCTION_CALL,
];

/// Returns a clean server to the pool, unless a cancel was delivered to it while the client
/// had it: PostgreSQL may still hold that cancel for the backend's next query (see
/// [`CancelSlot::try_set`]), so the connection is closed instead of serving another client.
fn give_back(c: Checkout, cancelled: bool, now: Tick) {
    if cancelled {
        drop(c);
    } else {
        c.release_at(now);
    }
}

/// `t` boxed, or None when every timeout is off.
fn boxed_timeouts(t: ClientTimeouts) -> Option<Box<ClientTimeouts>> {
    (t != ClientTimeouts::default()).then(|| Box::new(t))
}

fn cancel_target(c: &Checkout) -> CancelTarget {
    let sc = c.conn_ref();
    CancelTarget {
        addr: sc.info.addr.clone(),
        pid: sc.pid,
        secret: sc.secret,
    }
}

/// Rows reported by a CommandComplete tag (`SELECT 5`, `INSERT 0 1`, `UPDATE 3`), else 0.
fn tag_rows(t: &[u8]) -> u64 {
    let last = t.rsplit(|b| *b == b' ').next().unwrap_or_default();
    std::str::from_utf8(last)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// "cached plan must not change result type": a prepared statement outlived a change of the
/// columns it returns.
fn is_stale_plan(body: &[u8]) -> bool {
    views::error_field(body, b'C') == Some(b"0A000")
        && views::error_field(body, b'M') == Some(b"cached plan must not change result type")
}

/// Command tags of statements that can change the columns an existing statement returns
/// (PostgreSQL then refuses that statement's next execution). Creating or dropping a table
/// is not among them: a statement cannot have been prepared on a table that did not exist,
/// and applications create and drop temporary tables per request (deallocating every
/// statement each time would undo `auto_prepare`); a table dropped and made again with other
/// columns is caught by the server's refusal instead.
fn changes_result_types(tag: &[u8]) -> bool {
    matches!(
        tag,
        b"ALTER TABLE"
            | b"ALTER VIEW"
            | b"ALTER MATERIALIZED VIEW"
            | b"ALTER TYPE"
            | b"ALTER DOMAIN"
            | b"CREATE VIEW"
            | b"DROP VIEW"
            | b"DROP MATERIALIZED VIEW"
            | b"DROP TYPE"
            | b"DROP DOMAIN"
    )
}

/// True for an ErrorResponse of severity FATAL or PANIC (the server closes after it).
fn is_fatal(body: &[u8]) -> bool {
    let sev = views::error_field(body, b'V').or_else(|| views::error_field(body, b'S'));
    matches!(sev, Some(b"FATAL" | b"PANIC"))
}

fn add(counter: &std::sync::atomic::AtomicU64, v: u64) {
    if v > 0 {
        counter.fetch_add(v, Ordering::Relaxed);
    }
}

/// True if a statement may change search_path (which PostgreSQL 15 does not report).
fn mentions_search_path(q: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"search_path";
    let trimmed = q.trim_ascii_start();
    let starts = |w: &[u8]| trimmed.len() >= w.len() && trimmed[..w.len()].eq_ignore_ascii_case(w);
    if starts(b"discard") || starts(b"reset") {
        return true;
    }
    // Anchored on the underscore (found with SIMD) rather than comparing at every byte.
    const AT: usize = 6; // b"search".len()
    memchr::memchr_iter(b'_', q).any(|i| {
        i >= AT
            && q.get(i - AT..i - AT + NEEDLE.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn search_path_detection() {
        assert!(super::mentions_search_path(b"SET SEARCH_PATH TO a"));
        assert!(super::mentions_search_path(b"  reset all"));
        assert!(!super::mentions_search_path(b"select 1"));
        assert!(super::mentions_search_path(b"search_path"));
        assert!(super::mentions_search_path(
            b"select set_config('Search_Path', 'a', false)"
        ));
        assert!(!super::mentions_search_path(b"search_pat"));
        assert!(!super::mentions_search_path(b"_search_pat_h"));
        assert!(!super::mentions_search_path(
            b"select a_b from pgbench_accounts where c_d = 1"
        ));
    }
}
