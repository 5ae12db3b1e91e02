//! Pools of server connections, one per (database, user): at most `pool_size` connections,
//! waiting clients served FIFO (tokio's semaphore is fair), idle connections reused LIFO, and a
//! checkout guard that closes its connection unless it is explicitly released clean.

use crate::app::registry::{now_us, DbControl};
use crate::config::PoolMode;
use crate::server::{self, ServerConn, ServerError, ServerMap, ServerTarget};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pause between connection attempts while a server is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

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

/// Per-pool settings derived from the configuration.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: u32,
    pub query_wait_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
}

/// The parameters a server reported at login, announced to clients as ParameterStatus.
pub type Welcome = Arc<Vec<(String, String)>>;

/// Server connections for one (database, user).
pub struct Pool {
    pub database: String,
    pub user: String,
    pub target: ServerTarget,
    pub settings: PoolSettings,
    /// PAUSE / DISABLE / RECONNECT state of the database.
    pub control: Arc<DbControl>,
    /// Every open server connection of this pool (idle and in use).
    pub servers: ServerMap,
    /// Histograms for Prometheus (query, transaction and wait times).
    pub observer: crate::metrics::PoolObserver,
    sem: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
    welcome: Mutex<Option<Welcome>>,
    /// Serialises the first login's fetch of `welcome`, so a burst of new clients opens one
    /// server connection for it rather than queueing them all.
    welcome_fetch: tokio::sync::Mutex<()>,
    pub stats: PoolStats,
}

impl Pool {
    pub fn new(
        database: &str,
        user: &str,
        target: ServerTarget,
        settings: PoolSettings,
        control: Arc<DbControl>,
        observer: crate::metrics::PoolObserver,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            observer,
            database: database.to_owned(),
            user: user.to_owned(),
            target,
            control,
            servers: ServerMap::default(),
            sem: Arc::new(Semaphore::new(settings.size as usize)),
            settings,
            idle: Mutex::new(Vec::new()),
            welcome: Mutex::new(None),
            welcome_fetch: tokio::sync::Mutex::new(()),
            stats: PoolStats::default(),
        })
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
    /// is unreachable or restarting, keeps trying within the same bound, so a PostgreSQL
    /// restart costs waiting clients time, not errors.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_inner(true).await
    }

    /// Like [`Pool::checkout`] but reports a failed connection attempt at once (logins).
    pub async fn checkout_once(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_inner(false).await
    }

    async fn checkout_inner(self: &Arc<Self>, retry: bool) -> Result<Checkout, PoolError> {
        let start = Instant::now();
        let permit = {
            let _waiting = Gauge::inc(&self.stats.waiting);
            let sem = self.sem.clone();
            let control = self.control.clone();
            // PAUSE holds new work here, counted as waiting; RESUME lets it go.
            let acquire = async move {
                control.wait_resumed().await;
                sem.acquire_owned().await
            };
            match self.settings.query_wait_timeout {
                Some(d) => tokio::time::timeout(d, acquire)
                    .await
                    .map_err(|_| PoolError::WaitTimeout)?,
                None => acquire.await,
            }
            .map_err(|_| PoolError::Closed)?
        };
        let waited_for = start.elapsed();
        self.observer.wait(waited_for);
        let waited = waited_for.as_micros() as u64;
        self.stats
            .wait_us_total
            .fetch_add(waited, Ordering::Relaxed);
        self.stats.wait_us_max.fetch_max(waited, Ordering::Relaxed);
        let conn = match self.take_idle() {
            Some(c) => c,
            None => self.open_retrying(start, retry).await?,
        };
        conn.info.active.store(true, Ordering::Relaxed);
        conn.info.request_time_us.store(now_us(), Ordering::Relaxed);
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        Ok(Checkout {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// The most recently used idle connection that is still alive (LIFO keeps few warm).
    fn take_idle(&self) -> Option<ServerConn> {
        loop {
            let mut c = self.idle.lock().pop()?;
            if !self.is_stale(&c) && c.is_alive_idle() {
                return Some(c);
            }
            tracing::debug!(server = c.id, "discarding idle server connection");
        }
    }

    async fn open_retrying(&self, start: Instant, retry: bool) -> Result<ServerConn, ServerError> {
        let limit = self
            .settings
            .query_wait_timeout
            .unwrap_or(Duration::from_secs(3600));
        loop {
            match self.open().await {
                Ok(c) => return Ok(c),
                Err(e) if retry && e.is_transient() && start.elapsed() + RETRY_PAUSE < limit => {
                    tracing::debug!(db = %self.database, error = %e, "server not available; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Past server_lifetime, or opened before the last RECONNECT.
    fn is_stale(&self, c: &ServerConn) -> bool {
        c.generation != self.control.generation()
            || self
                .settings
                .server_lifetime
                .is_some_and(|l| c.created.elapsed() >= l)
    }

    async fn open(&self) -> Result<ServerConn, ServerError> {
        let generation = self.control.generation();
        let mut conn = server::connect(&self.target).await?;
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
        tracing::debug!(server = conn.id, db = %self.database, user = %self.user, "opened server connection");
        Ok(conn)
    }

    /// Idle server connections now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Server connections open now (idle and in use).
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Closes every idle connection (shutdown, PAUSE, RECONNECT, KILL).
    pub fn close_idle(&self) {
        let drained: Vec<ServerConn> = std::mem::take(&mut *self.idle.lock());
        drop(drained);
    }

    fn put_back(&self, mut conn: ServerConn) {
        conn.info.active.store(false, Ordering::Relaxed);
        conn.info.client.store(0, Ordering::Relaxed);
        if self.is_stale(&conn) {
            return; // closed: RECONNECT or server_lifetime
        }
        conn.last_used = Instant::now();
        conn.conn.shrink();
        self.idle.lock().push(conn);
    }

    /// Counts an ErrorResponse sent to a client.
    pub fn count_error(&self, sqlstate: &[u8]) {
        if let [a, b, ..] = sqlstate {
            *self.stats.errors.entry([*a, *b]).or_insert(0) += 1;
        }
    }
}

/// A server connection lent to one client. Dropping it closes the connection: only a
/// connection known to be idle and clean is returned, through [`Checkout::release`].
pub struct Checkout {
    conn: Option<ServerConn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Checkout {
    pub fn conn(&mut self) -> &mut ServerConn {
        // `conn` is Some for the whole life of a Checkout; it is taken only by release/drop.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("checkout without connection"))
    }

    pub fn conn_ref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("checkout without connection"))
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
            tracing::debug!(server = c.id, "closing server connection in unknown state");
            self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
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
