//! Pools of server connections, one per (database, user): at most `pool_size` clients served
//! at once (FIFO: tokio's semaphore is fair), `reserve_pool_size` more once a client has waited
//! `reserve_pool_timeout`, connection caps shared with other pools (`max_db_connections`,
//! `max_user_connections`), idle connections reused LIFO (or round robin) after a liveness probe
//! and, past `server_check_delay`, `server_check_query`; a checkout guard that closes its
//! connection unless it is explicitly released clean; a janitor (`janitor`) that keeps
//! `min_pool_size` connections open and closes idle, dead, old and surplus ones. Settings and
//! the server address can change while clients are connected (RELOAD).

mod checkout;
pub mod hosts;
mod janitor;
pub mod limits;

use crate::app::registry::DbControl;
use crate::clock::Tick;
use crate::config::PoolMode;
use crate::server::{ServerConn, ServerError, ServerMap, ServerPassword, ServerTarget};
use arc_swap::ArcSwap;
use hosts::{HostRegistry, HostSet};
use limits::{CapGuard, Limit, PoolCaps};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

pub use checkout::Checkout;
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

impl PoolError {
    /// As [`ServerError::detail`]: the reason, for a message that says "could not connect".
    pub fn detail(&self) -> String {
        match self {
            PoolError::Server(e) => e.detail(),
            other => other.to_string(),
        }
    }
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
    /// Simple queries run as executions of their `auto_prepare` statement.
    pub auto_prepared: AtomicU64,
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

/// The parameters a server reported at login, announced to clients as ParameterStatus.
pub type Welcome = Arc<Vec<(String, String)>>;

/// An open server connection, counted in its caps until it is dropped.
/// Boxed: connections move between the idle list and checkouts on every transaction, and a
/// pointer moves cheaper than the connection.
type Pooled = Box<PooledConn>;

struct PooledConn {
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
    /// The last few distinct client parameter sets, shared by clients that want the same.
    pub param_sets: Mutex<Vec<crate::server::ParamSet>>,
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
        let hosts = HostSet::for_target(&init.hosts, &init.target);
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
            param_sets: Mutex::new(Vec::new()),
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

    /// True when server_reset_query runs after every transaction (server_reset_query_always).
    pub fn resets_always(&self) -> bool {
        let s = self.settings.load();
        s.server_reset_query_always && !s.server_reset_query.is_empty()
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
        if old.host != t.host || old.port != t.port || old.load_balance != t.load_balance {
            self.hosts
                .store(Arc::new(HostSet::for_target(&self.host_registry, &t)));
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
        self.checkout_inner(true, true).await
    }

    /// [`Pool::checkout`] without its own query_wait_timeout timer, for a caller that enforces
    /// the bound itself ([`Pool::query_wait_timeout`]; a client session relies on the periodic
    /// check of waiting clients, so no timer is armed per wait).
    pub async fn checkout_untimed(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_inner(true, false).await
    }

    /// query_wait_timeout of this pool now (`None`: wait forever).
    pub fn query_wait_timeout(&self) -> Option<Duration> {
        self.settings.load().query_wait_timeout
    }

    /// Like [`Pool::checkout`] but reports a failed connection attempt at once (logins); it
    /// tries hosts that are cooling off too, so a login is never refused without an attempt.
    pub async fn checkout_once(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_inner(false, true).await
    }

    /// Past server_lifetime, or opened before the last RECONNECT or change of server.
    fn is_stale(&self, c: &ServerConn, s: &PoolSettings) -> bool {
        self.is_stale_at(c, s, Tick::now())
    }

    fn is_stale_at(&self, c: &ServerConn, s: &PoolSettings, now: Tick) -> bool {
        c.generation != self.generation()
            || s.server_lifetime.is_some_and(|l| now.since(c.created) >= l)
    }

    /// Changes whenever RECONNECT or RELOAD means existing connections must go.
    fn generation(&self) -> u64 {
        self.control
            .generation()
            .wrapping_add(self.generation.load(Ordering::Acquire))
    }

    /// The schema of the database may have changed under the statements prepared on this
    /// pool's connections: each deallocates those of them that a client would prepare again
    /// (`ServerConn::statements_stale`) before it serves another transaction.
    pub fn statements_changed(&self) {
        for s in self.servers.iter() {
            s.statements_outdated.store(true, Ordering::Relaxed);
        }
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

    fn put_back(&self, mut p: Pooled, now: Tick) {
        p.conn.info.active.store(false, Ordering::Relaxed);
        p.conn.info.client.store(0, Ordering::Relaxed);
        let s = self.settings.load();
        if self.is_closed() || self.is_stale_at(&p.conn, &s, now) {
            return; // closed: database removed, RECONNECT, new server, or server_lifetime
        }
        if self.caps.pool.count() > self.caps.pool.limit() {
            return; // closed: the pool shrank
        }
        p.conn.last_used = now;
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

fn same_password(a: &ServerPassword, b: &ServerPassword) -> bool {
    match (a, b) {
        (ServerPassword::None, ServerPassword::None) => true,
        (ServerPassword::Plain(x), ServerPassword::Plain(y)) => x == y,
        (ServerPassword::Md5(x), ServerPassword::Md5(y)) => x == y,
        (ServerPassword::Learned(x), ServerPassword::Learned(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}
