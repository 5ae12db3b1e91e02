//! Pools of server connections, one per (database, user): at most `pool_size` clients served
//! at once (FIFO: tokio's semaphore is fair), `reserve_pool_size` more once a client has waited
//! `reserve_pool_timeout`, connection caps shared with other pools (`max_db_connections`,
//! `max_user_connections`), idle connections reused LIFO (or round robin) after a liveness probe
//! and, past `server_check_delay`, `server_check_query`; a checkout guard that closes its
//! connection unless it is explicitly released clean; a janitor (`janitor`) that keeps
//! `min_pool_size` connections open and closes idle, dead, old and surplus ones. Settings and
//! the server address can change while clients are connected (RELOAD).

pub mod hosts;
mod janitor;
pub mod limits;

use crate::app::registry::{now_us, DbControl};
use crate::config::PoolMode;
use crate::server::{self, ServerConn, ServerError, ServerMap, ServerPassword, ServerTarget};
use arc_swap::ArcSwap;
use hosts::{HostRegistry, HostSet};
use limits::{Blocked, CapGuard, Limit, PoolCaps};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

pub use janitor::spawn as spawn_janitor;

/// Pause between connection attempts while a server is unreachable (and the shortest time a
/// failed host is skipped).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How often a client blocked by a connection cap looks again even without a wake-up.
const CAP_POLL: Duration = Duration::from_millis(100);

/// Bound on `server_check_query` when no `server_connect_timeout` is set.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("query_wait_timeout")]
    WaitTimeout,
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("pool is closed")]
    Closed,
}

/// Counters for one pool (read by the demo, the admin console and metrics). Totals are
/// PgBouncer's: times in microseconds, bytes as seen on the client side.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Server connections in use now.
    pub active: AtomicUsize,
    /// Clients waiting for a server now.
    pub waiting: AtomicUsize,
    /// Server connections logging in now.
    pub opening: AtomicUsize,
    /// Idle server connections running `server_check_query` now.
    pub testing: AtomicUsize,
    /// Server connections ever opened.
    pub connects: AtomicU64,
    /// Checkouts served (PgBouncer's server_assignment_count).
    pub checkouts: AtomicU64,
    /// Total and maximum time clients spent waiting for a server, in microseconds.
    pub wait_us_total: AtomicU64,
    pub wait_us_max: AtomicU64,
    /// Transactions (and single statements outside one) completed.
    pub xacts: AtomicU64,
    /// Queries: simple Query messages and extended Execute messages.
    pub queries: AtomicU64,
    /// Bytes received from and sent to clients.
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub xact_time_us: AtomicU64,
    pub query_time_us: AtomicU64,
    /// Parse messages from clients, Parse messages sent to servers, Bind messages.
    pub client_parses: AtomicU64,
    pub server_parses: AtomicU64,
    pub binds: AtomicU64,
    pub logins: AtomicU64,
    /// ErrorResponses sent to clients, by SQLSTATE class (first two characters).
    pub errors: dashmap::DashMap<[u8; 2], u64>,
}

/// Per-pool settings derived from the configuration; replaced as a whole by RELOAD and SET.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: u32,
    /// Connections kept open even when unused (at most `size`).
    pub min_size: u32,
    /// Extra connections for clients that waited `reserve_timeout`.
    pub reserve_size: u32,
    /// `None`: the reserve is used as soon as the pool is full.
    pub reserve_timeout: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub server_idle_timeout: Option<Duration>,
    /// How long a host that failed a login is skipped (`None`: retry after a short pause).
    pub server_login_retry: Option<Duration>,
    pub server_check_query: String,
    /// `None`: check on every reuse.
    pub server_check_delay: Option<Duration>,
    /// Reuse the least recently used idle connection (FIFO) rather than the most recent.
    pub server_round_robin: bool,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            mode: PoolMode::Session,
            size: 20,
            min_size: 0,
            reserve_size: 0,
            reserve_timeout: Some(Duration::from_secs(5)),
            query_wait_timeout: Some(Duration::from_secs(120)),
            server_lifetime: Some(Duration::from_secs(3600)),
            server_idle_timeout: Some(Duration::from_secs(600)),
            server_login_retry: Some(Duration::from_secs(15)),
            server_check_query: String::new(),
            server_check_delay: Some(Duration::from_secs(30)),
            server_round_robin: false,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
        }
    }
}

/// The parameters a server reported at login, announced to clients as ParameterStatus.
pub type Welcome = Arc<Vec<(String, String)>>;

/// An open server connection, counted in its caps until it is dropped.
struct Pooled {
    conn: ServerConn,
    _caps: CapGuard,
}

/// The right to use one connection of the pool.
enum Permit {
    Main(OwnedSemaphorePermit),
    Reserve(OwnedSemaphorePermit),
}

/// What a pool is built from.
pub struct PoolInit {
    pub database: String,
    pub user: String,
    pub target: ServerTarget,
    pub settings: PoolSettings,
    pub control: Arc<DbControl>,
    pub observer: crate::metrics::PoolObserver,
    /// Caps of the database and of the user (shared with their other pools).
    pub db_cap: Arc<limits::Cap>,
    pub user_cap: Arc<limits::Cap>,
    pub hosts: Arc<HostRegistry>,
}

/// Server connections for one (database, user).
pub struct Pool {
    pub database: String,
    pub user: String,
    target: ArcSwap<ServerTarget>,
    hosts: ArcSwap<HostSet>,
    host_registry: Arc<HostRegistry>,
    settings: ArcSwap<PoolSettings>,
    /// PAUSE / DISABLE / RECONNECT state of the database.
    pub control: Arc<DbControl>,
    /// Every open server connection of this pool (idle and in use).
    pub servers: ServerMap,
    /// Histograms for Prometheus (query, transaction and wait times).
    pub observer: crate::metrics::PoolObserver,
    main: Limit,
    reserve: Limit,
    caps: PoolCaps,
    idle: Mutex<VecDeque<Pooled>>,
    /// Bumped when the server address or credentials change: older connections close.
    generation: AtomicU64,
    /// The database was removed: nothing goes back to the pool, the janitor stops.
    closed: AtomicBool,
    welcome: Mutex<Option<Welcome>>,
    /// Serialises the first login's fetch of `welcome`, so a burst of new clients opens one
    /// server connection for it rather than queueing them all.
    welcome_fetch: tokio::sync::Mutex<()>,
    pub stats: PoolStats,
}

impl Pool {
    pub fn new(init: PoolInit) -> Arc<Pool> {
        let s = init.settings;
        let pool_cap = Arc::new(limits::Cap::default());
        pool_cap.set_limit(s.size.max(1) + s.reserve_size);
        let hosts = HostSet::new(&init.hosts, &init.target.host, init.target.port);
        let pool = Arc::new(Pool {
            observer: init.observer,
            database: init.database,
            user: init.user,
            target: ArcSwap::from_pointee(init.target),
            hosts: ArcSwap::from_pointee(hosts),
            host_registry: init.hosts,
            control: init.control,
            servers: ServerMap::default(),
            main: Limit::new(s.size as usize),
            reserve: Limit::new(s.reserve_size as usize),
            caps: PoolCaps {
                pool: pool_cap,
                db: init.db_cap,
                user: init.user_cap,
            },
            settings: ArcSwap::from_pointee(s),
            idle: Mutex::new(VecDeque::new()),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            welcome: Mutex::new(None),
            welcome_fetch: tokio::sync::Mutex::new(()),
            stats: PoolStats::default(),
        });
        pool.caps.db.join(&pool);
        pool.caps.user.join(&pool);
        pool
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Where and as whom server connections are opened now.
    pub fn target(&self) -> Arc<ServerTarget> {
        self.target.load_full()
    }

    /// Applies new settings to the running pool: sizes change at once (a smaller pool closes
    /// connections as they are released), timeouts apply from their next check.
    pub fn apply(&self, s: PoolSettings) {
        self.main.resize(s.size as usize);
        self.reserve.resize(s.reserve_size as usize);
        self.caps.pool.set_limit(s.size.max(1) + s.reserve_size);
        self.settings.store(Arc::new(s));
    }

    /// Points the pool at a new server address or credentials. Returns false if nothing that
    /// matters changed; otherwise idle connections close now and the others when released.
    pub fn set_target(&self, t: ServerTarget) -> bool {
        let old = self.target.load_full();
        let same =
            format!("{:?}", *old) == format!("{t:?}") && same_password(&old.password, &t.password);
        if same {
            return false;
        }
        if old.host != t.host || old.port != t.port {
            self.hosts
                .store(Arc::new(HostSet::new(&self.host_registry, &t.host, t.port)));
        }
        self.target.store(Arc::new(t));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.close_idle();
        true
    }

    /// Marks the pool closed (its database was removed) and closes its idle connections;
    /// connections in use close when released.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.close_idle();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The parameters the server reported at login, sent to clients as ParameterStatus.
    pub fn welcome(&self) -> Option<Welcome> {
        self.welcome.lock().clone()
    }

    /// The welcome parameters, opening a server connection to learn them the first time.
    pub async fn fetch_welcome(self: &Arc<Self>) -> Result<Welcome, PoolError> {
        if let Some(w) = self.welcome() {
            return Ok(w);
        }
        let _only_one = self.welcome_fetch.lock().await;
        if let Some(w) = self.welcome() {
            return Ok(w);
        }
        self.checkout_once().await?.release();
        Ok(self.welcome().unwrap_or_default())
    }

    /// Waits (FIFO, bounded by query_wait_timeout) for a server connection. While the server
    /// is unreachable or restarting, keeps trying within the same bound (each host being
    /// skipped for `server_login_retry` after a failure), so a PostgreSQL restart costs
    /// waiting clients time, not errors.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_inner(true).await
    }

    /// Like [`Pool::checkout`] but reports a failed connection attempt at once (logins); it
    /// tries hosts that are cooling off too, so a login is never refused without an attempt.
    pub async fn checkout_once(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_inner(false).await
    }

    async fn checkout_inner(self: &Arc<Self>, retry: bool) -> Result<Checkout, PoolError> {
        let start = Instant::now();
        let s = self.settings();
        let deadline = s.query_wait_timeout.map(|d| start + d);
        let permit = {
            let _waiting = Gauge::inc(&self.stats.waiting);
            // PAUSE holds new work here, counted as waiting; RESUME lets it go.
            let acquire = async {
                self.control.wait_resumed().await;
                self.acquire_permit(&s).await
            };
            match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), acquire)
                    .await
                    .map_err(|_| PoolError::WaitTimeout)?,
                None => acquire.await,
            }
            .ok_or(PoolError::Closed)?
        };
        // From here on the checkout owns the permit and gives it back however this ends.
        let mut checkout = Checkout {
            conn: None,
            pool: self.clone(),
            permit: Some(permit),
        };
        let waited_for = start.elapsed();
        self.observer.wait(waited_for);
        let waited = waited_for.as_micros() as u64;
        self.stats
            .wait_us_total
            .fetch_add(waited, Ordering::Relaxed);
        self.stats.wait_us_max.fetch_max(waited, Ordering::Relaxed);
        let p = self.obtain(&s, deadline, retry).await?;
        p.conn.info.active.store(true, Ordering::Relaxed);
        p.conn
            .info
            .request_time_us
            .store(now_us(), Ordering::Relaxed);
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        checkout.conn = Some(p);
        Ok(checkout)
    }

    /// A permit of the pool, or of its reserve once the client has waited reserve_pool_timeout.
    async fn acquire_permit(&self, s: &PoolSettings) -> Option<Permit> {
        if let Some(p) = self.main.try_acquire() {
            return Some(Permit::Main(p));
        }
        let reserve = async {
            if let Some(t) = s.reserve_timeout {
                tokio::time::sleep(t).await;
            }
            self.reserve.acquire().await
        };
        tokio::select! {
            biased;
            p = self.main.acquire() => p.map(Permit::Main),
            p = reserve => {
                tracing::info!(db = %self.database, user = %self.user, "taking connection from reserve_pool");
                p.map(Permit::Reserve)
            }
        }
    }

    /// An idle connection, or a new one once the caps allow it (closing an idle connection of
    /// another pool of the same database or user to make room, as PgBouncer does).
    async fn obtain(
        &self,
        s: &PoolSettings,
        deadline: Option<Instant>,
        retry: bool,
    ) -> Result<Pooled, PoolError> {
        loop {
            // Each round does work only when something changed; never hog the worker anyway.
            tokio::task::consume_budget().await;
            let pool_freed = self.caps.pool.freed.notified();
            let db_freed = self.caps.db.freed.notified();
            let user_freed = self.caps.user.freed.notified();
            tokio::pin!(pool_freed, db_freed, user_freed);
            pool_freed.as_mut().enable();
            db_freed.as_mut().enable();
            user_freed.as_mut().enable();
            if let Some(p) = self.take_idle(s).await {
                return Ok(p);
            }
            let blocked = match self.caps.try_acquire() {
                Ok(guard) => return Ok(self.open_retrying(guard, s, deadline, retry).await?),
                Err(b) => b,
            };
            let evicted = match blocked {
                Blocked::Pool => None,
                Blocked::Db => self.caps.db.evict_idle(self),
                Blocked::User => self.caps.user.evict_idle(self),
            };
            if let Some(p) = evicted {
                close_gracefully(p).await;
                continue;
            }
            let wait = async {
                tokio::select! {
                    _ = pool_freed.as_mut() => {}
                    _ = db_freed.as_mut() => {}
                    _ = user_freed.as_mut() => {}
                    _ = tokio::time::sleep(CAP_POLL) => {}
                }
            };
            match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), wait)
                    .await
                    .map_err(|_| PoolError::WaitTimeout)?,
                None => wait.await,
            }
        }
    }

    /// The next idle connection that is alive, current, and (past server_check_delay) passes
    /// server_check_query. LIFO keeps few connections warm; server_round_robin uses FIFO.
    async fn take_idle(&self, s: &PoolSettings) -> Option<Pooled> {
        loop {
            let mut p = {
                let mut idle = self.idle.lock();
                if s.server_round_robin {
                    idle.pop_front()
                } else {
                    idle.pop_back()
                }
            }?;
            if self.is_stale(&p.conn, s) || !p.conn.is_alive_idle() {
                tracing::debug!(server = p.conn.id, "discarding idle server connection");
                continue;
            }
            let due = s
                .server_check_delay
                .is_none_or(|d| p.conn.last_used.elapsed() >= d);
            if due && !self.check(&mut p.conn, s).await {
                continue;
            }
            return Some(p);
        }
    }

    /// Runs server_check_query (an empty query when it is empty) on an idle connection.
    async fn check(&self, c: &mut ServerConn, s: &PoolSettings) -> bool {
        let _testing = Gauge::inc(&self.stats.testing);
        let t = self.target.load().connect_timeout;
        let limit = if t.is_zero() { CHECK_TIMEOUT } else { t };
        match tokio::time::timeout(limit, c.hidden_query(&s.server_check_query)).await {
            Ok(Ok((_, b'I'))) => true,
            r => {
                let why = match r {
                    Ok(Ok(_)) => "left a transaction open".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                tracing::info!(server = c.id, db = %self.database, why, "server_check_query failed; closing the connection");
                false
            }
        }
    }

    async fn open_retrying(
        &self,
        caps: CapGuard,
        s: &PoolSettings,
        deadline: Option<Instant>,
        retry: bool,
    ) -> Result<Pooled, ServerError> {
        let limit = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        loop {
            let hosts = self.hosts.load_full();
            if retry {
                // Every host failed recently: wait for the first to come off its cool-down
                // (server_login_retry), looking again now and then in case a login found the
                // server back meanwhile.
                if let Some(up_at) = hosts.next_up_at() {
                    if up_at >= limit {
                        return Err(down_error(&hosts));
                    }
                    let wake = up_at.min(Instant::now() + RETRY_PAUSE);
                    tokio::time::sleep_until(wake.into()).await;
                    continue;
                }
            }
            match self.open(&hosts, !retry, s).await {
                Ok(conn) => return Ok(Pooled { conn, _caps: caps }),
                Err(e) if retry && e.is_transient() && Instant::now() + RETRY_PAUSE < limit => {
                    tracing::debug!(db = %self.database, error = %e, "server not available; retrying");
                    // The hosts that failed are marked down; the loop waits for them.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Past server_lifetime, or opened before the last RECONNECT or change of server.
    fn is_stale(&self, c: &ServerConn, s: &PoolSettings) -> bool {
        c.generation != self.generation()
            || s.server_lifetime.is_some_and(|l| c.created.elapsed() >= l)
    }

    /// Changes whenever RECONNECT or RELOAD means existing connections must go.
    fn generation(&self) -> u64 {
        self.control
            .generation()
            .wrapping_add(self.generation.load(Ordering::Acquire))
    }

    /// Opens a connection to the first host that answers (round robin over those up; with
    /// `include_down`, then those cooling off). A host that fails is skipped for
    /// server_login_retry.
    async fn open(
        &self,
        hosts: &HostSet,
        include_down: bool,
        s: &PoolSettings,
    ) -> Result<ServerConn, ServerError> {
        let target = self.target.load_full();
        let generation = self.generation();
        let cool_down = s.server_login_retry.unwrap_or(RETRY_PAUSE).max(RETRY_PAUSE);
        let _opening = Gauge::inc(&self.stats.opening);
        let mut last = None;
        for h in hosts.order(include_down) {
            let r = if h.name == target.host {
                server::connect(&target).await
            } else {
                let mut t = (*target).clone();
                t.host.clone_from(&h.name);
                server::connect(&t).await
            };
            let mut conn = match r {
                Ok(c) => c,
                Err(e) if e.is_transient() => {
                    h.mark_down(cool_down, reason(&e));
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            h.mark_up();
            conn.generation = generation;
            conn.track(&self.servers);
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            let mut welcome = self.welcome.lock();
            if welcome.is_none() {
                let mut params: Vec<(String, String)> = conn.params.values().cloned().collect();
                params.sort();
                *welcome = Some(Arc::new(params));
            }
            drop(welcome);
            tracing::debug!(server = conn.id, db = %self.database, user = %self.user, host = %h.name, "opened server connection");
            return Ok(conn);
        }
        Err(last.unwrap_or_else(|| down_error(hosts)))
    }

    /// Idle server connections now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Server connections open now (idle and in use).
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Server connections open or logging in now (what the pool's limit counts).
    pub fn connection_count(&self) -> u32 {
        self.caps.pool.count()
    }

    /// Clients using a reserve connection now.
    pub fn reserve_in_use(&self) -> usize {
        self.reserve.in_use()
    }

    /// Closes every idle connection (shutdown, PAUSE, RECONNECT, KILL).
    pub fn close_idle(&self) {
        let drained: VecDeque<Pooled> = std::mem::take(&mut *self.idle.lock());
        drop(drained);
    }

    /// Takes the least recently used idle connection, to be closed to make room for another
    /// pool under a shared cap.
    fn evict_one_idle(&self) -> Option<Pooled> {
        let p = self.idle.lock().pop_front()?;
        tracing::info!(server = p.conn.id, db = %self.database, user = %self.user, "closing an idle server connection to make room for another pool");
        Some(p)
    }

    fn put_back(&self, mut p: Pooled) {
        p.conn.info.active.store(false, Ordering::Relaxed);
        p.conn.info.client.store(0, Ordering::Relaxed);
        let s = self.settings.load();
        if self.is_closed() || self.is_stale(&p.conn, &s) {
            return; // closed: database removed, RECONNECT, new server, or server_lifetime
        }
        if self.caps.pool.count() > self.caps.pool.limit() {
            return; // closed: the pool shrank
        }
        p.conn.last_used = Instant::now();
        p.conn.conn.shrink();
        self.idle.lock().push_back(p);
        self.caps.announce_idle();
    }

    fn give_back(&self, permit: Permit) {
        match permit {
            Permit::Main(p) => self.main.give_back(p),
            Permit::Reserve(p) => self.reserve.give_back(p),
        }
    }

    /// Counts an ErrorResponse sent to a client.
    pub fn count_error(&self, sqlstate: &[u8]) {
        if let [a, b, ..] = sqlstate {
            *self.stats.errors.entry([*a, *b]).or_insert(0) += 1;
        }
    }
}

/// Closes a connection with Terminate and waits (briefly) until the server has closed its
/// end, so its backend is gone before the slot it frees is used: a cap holds on the server
/// too, not only in pgferry's count.
async fn close_gracefully(mut p: Pooled) {
    let c = &mut p.conn.conn;
    crate::protocol::build::tagged(c.out(), crate::protocol::tag::TERMINATE, &[]);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if c.flush().await.is_ok() {
            while c.read_frame().await.is_ok() {}
        }
    })
    .await;
}

/// The error reported while every host is cooling off after a failure.
fn down_error(hosts: &HostSet) -> ServerError {
    let why = hosts
        .down_reason()
        .unwrap_or_else(|| "no server host is available".into());
    ServerError::Connect(std::io::Error::other(why))
}

/// A failure as remembered for a host (without the "could not connect" prefix).
fn reason(e: &ServerError) -> String {
    match e {
        ServerError::Connect(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn same_password(a: &ServerPassword, b: &ServerPassword) -> bool {
    match (a, b) {
        (ServerPassword::None, ServerPassword::None) => true,
        (ServerPassword::Plain(x), ServerPassword::Plain(y)) => x == y,
        (ServerPassword::Md5(x), ServerPassword::Md5(y)) => x == y,
        _ => false,
    }
}

/// A server connection lent to one client. Dropping it closes the connection: only a
/// connection known to be idle and clean is returned, through [`Checkout::release`].
pub struct Checkout {
    conn: Option<Pooled>,
    pool: Arc<Pool>,
    permit: Option<Permit>,
}

impl Checkout {
    pub fn conn(&mut self) -> &mut ServerConn {
        // `conn` is Some for the whole life of a Checkout handed out; it is taken only by
        // release/drop.
        &mut self
            .conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("checkout without connection"))
            .conn
    }

    pub fn conn_ref(&self) -> &ServerConn {
        &self
            .conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("checkout without connection"))
            .conn
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns a clean, idle connection to the pool.
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
            self.pool.put_back(c);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            tracing::debug!(
                server = c.conn.id,
                "closing server connection in unknown state"
            );
            self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
            drop(c);
        }
        // After the connection is back (or closed), so the next waiter finds it.
        if let Some(p) = self.permit.take() {
            self.pool.give_back(p);
        }
    }
}

/// Increments a gauge for as long as it lives (also when the future holding it is dropped).
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn inc(g: &'a AtomicUsize) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
