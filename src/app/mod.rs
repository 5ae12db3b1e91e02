//! Shared state of one pgferry instance (configuration, credentials, pools, cancel keys,
//! counters), the listener that accepts clients, and staged shutdown. State is passed as an
//! `Arc<App>`; nothing is global, so tests run many instances in one process.

pub mod cancel;
pub mod registry;
pub mod reload;
pub mod stats;

use crate::auth::{self, ScramSecret, Secret};
use crate::config::{Config, PoolMode};
use crate::pool::{Pool, PoolSettings};
use crate::server::{ServerPassword, ServerTarget};
use arc_swap::ArcSwap;
use cancel::CancelRegistry;
use dashmap::DashMap;
use registry::{ClientInfo, DbControl};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Errors that stop pgferry from starting.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot read auth_file {path}: {source}")]
    AuthFileRead {
        path: String,
        source: std::io::Error,
    },
    #[error("auth_file {path}: {source}")]
    AuthFile {
        path: String,
        source: auth::AuthError,
    },
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Process-wide counters (per-pool ones live in `PoolStats`).
#[derive(Debug, Default)]
pub struct Counters {
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub queries: AtomicU64,
    pub transactions: AtomicU64,
    pub peak_clients: AtomicUsize,
}

/// Shared state of one running instance.
pub struct App {
    pub config: ArcSwap<Config>,
    pub(crate) userlist: ArcSwap<HashMap<String, Secret>>,
    pub(crate) scram_cache: DashMap<String, ScramSecret>,
    /// auth_query lookups and their cache.
    pub auth_lookup: auth::AuthLookup,
    /// Server credentials learned from client logins, per (database, user): SCRAM keys
    /// (pass-through) and auth_query secrets, for pools that have no password of their own.
    learned: DashMap<(String, String), Arc<auth::LearnedCredentials>>,
    pub pools: DashMap<(String, String), Arc<Pool>>,
    pub cancels: CancelRegistry,
    /// Logged-in clients, by id (SHOW CLIENTS, KILL_CLIENT).
    pub client_list: DashMap<u64, Arc<ClientInfo>>,
    next_client_id: AtomicU64,
    /// PAUSE / DISABLE / RECONNECT state per database.
    pub db_controls: DashMap<String, Arc<DbControl>>,
    /// Clients connected now (including those still logging in).
    pub clients: AtomicUsize,
    clients_gone: Notify,
    pub counters: Counters,
    shutdown: watch::Sender<bool>,
    /// Prometheus recorder (None when `metrics_addr` is empty).
    pub metrics: Option<crate::metrics::Metrics>,
    /// Averages per `stats_period`, pools replaced by RELOAD (SHOW STATS).
    pub stats: stats::StatsState,
    /// Admin console state: PAUSE / SUSPEND mode, RECONNECT marks, SHUTDOWN requests.
    pub admin: crate::admin::AdminState,
    /// Statement analysis, memoized by text (fingerprints, classification).
    pub sql: crate::sql::SqlCache,
    /// Per-fingerprint statistics and N+1 events.
    pub insight: crate::insight::Insight,
}

impl App {
    pub fn new(config: Config) -> Result<Arc<App>, AppError> {
        let userlist = load_userlist(&config)?;
        let metrics = (!config.pgferry.metrics_addr.is_empty()).then(crate::metrics::Metrics::new);
        let insight = crate::insight::Insight::new(config.pgferry.insight_config());
        Ok(Arc::new(App {
            sql: crate::sql::SqlCache::default(),
            insight,
            metrics,
            stats: stats::StatsState::default(),
            admin: crate::admin::AdminState::default(),
            config: ArcSwap::from_pointee(config),
            userlist: ArcSwap::from_pointee(userlist),
            scram_cache: DashMap::new(),
            auth_lookup: auth::AuthLookup::default(),
            learned: DashMap::new(),
            pools: DashMap::new(),
            cancels: CancelRegistry::default(),
            client_list: DashMap::new(),
            next_client_id: AtomicU64::new(1),
            db_controls: DashMap::new(),
            clients: AtomicUsize::new(0),
            clients_gone: Notify::new(),
            counters: Counters::default(),
            shutdown: watch::channel(false).0,
        }))
    }

    /// The stored secret of a user (auth_file or the --upstream credentials).
    pub fn secret(&self, user: &str) -> Option<Secret> {
        self.userlist.load().get(user).cloned()
    }

    /// True when credentials are configured, so unknown users are refused.
    pub fn has_userlist(&self) -> bool {
        !self.userlist.load().is_empty()
    }

    /// True when users of `db` absent from the auth_file are looked up with `auth_query`
    /// (an `auth_user` applies, and there is a database to run it in).
    pub fn has_auth_query(&self, db: &str) -> bool {
        let cfg = self.config.load();
        let users = self.userlist.load();
        auth::auth_source(&cfg, &users, db).map_or(true, |src| src.is_some())
    }

    /// The secret of a user absent from the auth_file, by `auth_query` for database `db`
    /// (cached; see [`auth::AuthLookup`]). `Ok(None)`: no such user, or no auth_query applies.
    pub async fn lookup_secret(
        &self,
        db: &str,
        user: &str,
    ) -> Result<Option<Secret>, auth::LookupError> {
        let (src, timeout) = {
            let cfg = self.config.load();
            let users = self.userlist.load();
            let timeout = cfg
                .pgferry
                .server_connect_timeout()
                .unwrap_or(Duration::from_secs(15));
            (auth::auth_source(&cfg, &users, db)?, timeout)
        };
        match src {
            Some(src) => self.auth_lookup.lookup(&src, user, timeout).await,
            None => Ok(None),
        }
    }

    /// Keeps what a successful client login of `user` to `db` leaves behind, for server
    /// logins of that pool (only for configured databases, so the map stays bounded).
    pub fn learn(&self, db: &str, user: &str, creds: auth::ServerCredentials) {
        if self.config.load().database(db).is_none() {
            return;
        }
        self.learned_slot(db, user).set(creds);
    }

    fn learned_slot(&self, db: &str, user: &str) -> Arc<auth::LearnedCredentials> {
        let key = (db.to_owned(), user.to_owned());
        if let Some(slot) = self.learned.get(&key) {
            return slot.clone();
        }
        self.learned.entry(key).or_default().clone()
    }

    /// The SCRAM secret for a user, derived once from a plain password and cached.
    pub fn scram_secret(&self, user: &str, secret: &Secret) -> Option<ScramSecret> {
        if let Secret::Plain(_) = secret {
            if let Some(s) = self.scram_cache.get(user) {
                return Some(s.clone());
            }
            let s = auth::secret_for_scram(secret)?;
            self.scram_cache.insert(user.to_owned(), s.clone());
            return Some(s);
        }
        auth::secret_for_scram(secret)
    }

    /// The pool serving `user` on logical database `db`, created on first use.
    pub fn pool(&self, db: &str, user: &str) -> Option<Arc<Pool>> {
        let cfg = self.config.load();
        let dbc = cfg.databases.get(db)?;
        let server_user = dbc.user.clone().unwrap_or_else(|| user.to_owned());
        let key = (db.to_owned(), server_user.clone());
        if let Some(p) = self.pools.get(&key) {
            return Some(p.clone());
        }
        let password = match (&dbc.user, &dbc.password) {
            (Some(_), Some(p)) => ServerPassword::Plain(p.clone()),
            _ => match self.secret(&server_user) {
                Some(Secret::Plain(p)) => ServerPassword::Plain(p),
                Some(Secret::Md5(m)) => ServerPassword::Md5(m),
                // A SCRAM secret, or a user known through auth_query: log in with what the
                // client's login left behind. A forced user has no client login to learn from.
                _ if dbc.user.is_none() => ServerPassword::Learned(self.learned_slot(db, user)),
                _ => ServerPassword::None,
            },
        };
        let g = &cfg.pgferry;
        let target = ServerTarget {
            host: dbc.host.clone(),
            port: dbc.port,
            dbname: cfg.server_dbname(db).to_owned(),
            user: server_user.clone(),
            password,
            connect_timeout: g.server_connect_timeout().unwrap_or(Duration::ZERO),
            max_packet_size: g.max_packet_size as usize,
            max_prepared: g.max_prepared_statements.max(1) as usize,
        };
        let settings = PoolSettings {
            mode: cfg.pool_mode_for(db, user),
            size: cfg.pool_size_for(db, user),
            query_wait_timeout: cfg.query_wait_timeout_for(user),
            server_lifetime: g.server_lifetime(),
            server_reset_query: g.server_reset_query.clone(),
            server_reset_query_always: g.server_reset_query_always,
        };
        let pool = self
            .pools
            .entry(key)
            .or_insert_with(|| {
                Pool::new(
                    db,
                    &server_user,
                    target,
                    settings,
                    self.db_control(db),
                    self.metrics
                        .as_ref()
                        .map(|m| m.observer(db, &server_user))
                        .unwrap_or_default(),
                )
            })
            .clone();
        Some(pool)
    }

    /// The control state of a database (created on first use).
    pub fn db_control(&self, db: &str) -> Arc<DbControl> {
        self.db_controls.entry(db.to_owned()).or_default().clone()
    }

    /// Lists a logged-in client; it is removed by [`App::unregister_client`].
    pub fn register_client(
        &self,
        addr: SocketAddr,
        local_addr: Option<SocketAddr>,
        user: &str,
        database: &str,
        application_name: &str,
    ) -> Arc<ClientInfo> {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo::new(
            id,
            addr,
            local_addr,
            user,
            database,
            application_name,
        ));
        self.client_list.insert(id, info.clone());
        info
    }

    pub fn unregister_client(&self, id: u64) {
        self.client_list.remove(&id);
    }

    /// A receiver that turns true when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Stops accepting clients; each client is closed once it holds no open transaction.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Counts a client in (returns the number now connected).
    pub fn client_enter(&self) -> usize {
        let n = self.clients.fetch_add(1, Ordering::AcqRel) + 1;
        self.counters.peak_clients.fetch_max(n, Ordering::Relaxed);
        n
    }

    pub fn client_leave(&self) {
        if self.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.clients_gone.notify_waiters();
        }
    }

    /// Waits until no client is connected, or the timeout passes; true if all left.
    pub async fn wait_clients_gone(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.clients_gone.notified();
                if self.clients.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Default pool mode (for logs and the demo).
    pub fn default_pool_mode(&self) -> PoolMode {
        self.config.load().pgferry.pool_mode
    }
}

pub(crate) fn load_userlist(config: &Config) -> Result<HashMap<String, Secret>, AppError> {
    let mut users = HashMap::new();
    if let Some(path) = &config.pgferry.auth_file {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AppError::AuthFileRead {
            path: shown.clone(),
            source,
        })?;
        users = auth::parse_userlist(&text).map_err(|source| AppError::AuthFile {
            path: shown,
            source,
        })?;
    }
    for (user, password) in &config.inline_users {
        users.insert(user.clone(), Secret::Plain(password.clone()));
    }
    Ok(users)
}

/// A running instance: its address and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    accept: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Graceful stop: no new clients, open transactions finish (bounded by shutdown_timeout).
    pub async fn shutdown(self) -> bool {
        self.app.begin_shutdown();
        let _ = self.accept.await;
        let timeout = self
            .app
            .config
            .load()
            .pgferry
            .shutdown_timeout()
            .unwrap_or(Duration::from_secs(30));
        let clean = self.app.wait_clients_gone(timeout).await;
        for p in self.app.pools.iter() {
            p.close_idle();
        }
        clean
    }
}

/// Binds the listener and starts accepting clients.
pub async fn start(config: Config) -> Result<Running, AppError> {
    let addr = format!(
        "{}:{}",
        config.pgferry.listen_addr, config.pgferry.listen_port
    );
    let app = App::new(config)?;
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| AppError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AppError::Listen {
        addr: addr.clone(),
        source,
    })?;
    tracing::info!(%local, "pgferry listening");
    stats::spawn(&app);
    crate::metrics::start(&app).await;
    let accept = tokio::spawn(accept_loop(app.clone(), listener));
    Ok(Running {
        addr: local,
        app,
        accept,
    })
}

async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    let mut stop = app.shutdown_signal();
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let app = app.clone();
                    tokio::spawn(crate::client::serve(app, stream.into(), peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => if r.is_err() { break },
        }
    }
    tracing::info!("listener closed");
}

/// Runs until a signal or an admin SHUTDOWN: SIGTERM (and SHUTDOWN WAIT_FOR_CLIENTS) stops
/// accepting and lets open transactions finish (bounded by `shutdown_timeout`); SIGINT (or a
/// second SIGTERM, or SHUTDOWN) exits at once; SIGHUP reloads the configuration (as RELOAD).
pub async fn run_until_signal(config: Config) -> Result<(), AppError> {
    use crate::admin::ShutdownMode;
    use tokio::signal::unix::{signal, SignalKind};
    let running = start(config).await?;
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
    let mut admin = running.app.admin.shutdown_requests();
    let graceful = loop {
        tokio::select! {
            _ = hup.recv() => match running.app.reload() {
                Ok(notes) => {
                    tracing::info!("SIGHUP: configuration reloaded");
                    for n in notes {
                        tracing::info!("reload: {n}");
                    }
                }
                Err(e) => tracing::error!("SIGHUP: reload failed, keeping the old configuration: {e}"),
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: no new clients; waiting for open transactions");
                break true;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting now");
                break false;
            }
            r = admin.changed() => {
                if r.is_err() {
                    continue;
                }
                let mode = *admin.borrow_and_update();
                match mode {
                    Some(ShutdownMode::Immediate) => {
                        tracing::info!("SHUTDOWN: exiting now");
                        break false;
                    }
                    Some(ShutdownMode::WaitForClients) => {
                        tracing::info!("SHUTDOWN WAIT_FOR_CLIENTS: no new clients");
                        break true;
                    }
                    None => {}
                }
            }
        }
    };
    if graceful {
        let drain = running.shutdown();
        tokio::select! {
            clean = drain => tracing::info!(clean, "shut down"),
            _ = int.recv() => tracing::info!("SIGINT: exiting now"),
            _ = term.recv() => tracing::info!("second SIGTERM: exiting now"),
            _ = async {
                while admin.changed().await.is_ok() {
                    if *admin.borrow() == Some(ShutdownMode::Immediate) {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            } => tracing::info!("SHUTDOWN: exiting now"),
        }
    }
    Ok(())
}
