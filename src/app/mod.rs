//! Shared state of one pgferry instance (configuration, credentials, pools, cancel keys,
//! counters), the listener that accepts clients, and staged shutdown. State is passed as an
//! `Arc<App>`; nothing is global, so tests run many instances in one process.

pub mod cancel;
pub mod listen;
pub mod registry;
pub mod reload;
pub mod stats;

use crate::auth::{self, ScramSecret, Secret};
use crate::config::{Config, PoolMode};
use crate::pool::{Pool, PoolInit, PoolSettings};
use crate::server::{ServerPassword, ServerTarget};
use arc_swap::ArcSwap;
use cancel::CancelRegistry;
use dashmap::DashMap;
use registry::{ClientCap, ClientInfo, ClientTally, DbControl};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    #[error("TLS: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
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

/// A client's place under the client caps, taken by [`App::admit_client`] while it logs in.
/// Dropped before [`App::register_client`] took it over, it gives the place back.
pub struct Admission {
    app: Option<Arc<App>>,
    db: Box<str>,
    user: Box<str>,
}

impl Admission {
    /// A place already counted in `app`'s tally under `db` and `user`.
    fn new(app: &Arc<App>, db: &str, user: &str) -> Admission {
        Admission {
            app: Some(Arc::clone(app)),
            db: db.into(),
            user: user.into(),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.client_tally.remove(&self.db, &self.user);
        }
    }
}

/// Shared state of one running instance.
pub struct App {
    pub config: ArcSwap<Config>,
    /// Bumped after each change of `config` (RELOAD, SET): sessions compare it with the one
    /// they read instead of loading the configuration on every wait.
    pub config_gen: AtomicU64,
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
    /// Clients per database and per user, admitted or logged in (the client caps).
    pub client_tally: ClientTally,
    next_client_id: AtomicU64,
    /// PAUSE / DISABLE / RECONNECT state per database.
    pub db_controls: DashMap<String, Arc<DbControl>>,
    /// Clients connected now (including those still logging in).
    pub clients: AtomicUsize,
    clients_gone: Notify,
    pub counters: Counters,
    shutdown: watch::Sender<bool>,
    /// True once shutdown began (what client sessions read; they are nudged when it changes).
    pub shutting_down: AtomicBool,
    /// Prometheus recorder (None when `metrics_addr` is empty).
    pub metrics: Option<crate::metrics::Metrics>,
    /// Averages per `stats_period`, pools replaced by RELOAD (SHOW STATS).
    pub stats: stats::StatsState,
    /// Admin console state: PAUSE / SUSPEND mode, RECONNECT marks, SHUTDOWN requests.
    pub admin: crate::admin::AdminState,
    /// Statement analysis, memoized by text (fingerprints, classification).
    pub sql: crate::sql::SqlCache,
    /// `auto_prepare` plans by statement shape.
    pub autoprep: crate::client::autoprep::Memo,
    /// Per-fingerprint statistics and N+1 events.
    pub insight: crate::insight::Insight,
    /// Server connection caps per database and per user (max_db/max_user_connections).
    pub caps: crate::pool::limits::CapRegistry,
    /// Health of the server hosts (multi-host databases, server_login_retry).
    pub hosts: Arc<crate::pool::hosts::HostRegistry>,
    /// TLS configurations for clients and servers (rebuilt by RELOAD).
    pub tls: crate::net::tls::SharedTls,
    /// Idle clients parked without a task (client_park_delay).
    pub lot: crate::client::park::Lot,
}

impl App {
    pub fn new(config: Config) -> Result<Arc<App>, AppError> {
        let userlist = load_userlist(&config)?;
        let metrics = (!config.pgferry.metrics_addr.is_empty()).then(crate::metrics::Metrics::new);
        let insight = crate::insight::Insight::new(config.pgferry.insight_config());
        let tls = crate::net::tls::Tls::from_config(&config.pgferry)?;
        Ok(Arc::new(App {
            tls: Arc::new(ArcSwap::from_pointee(tls)),
            lot: Default::default(),
            sql: crate::sql::SqlCache::default(),
            autoprep: Default::default(),
            insight,
            caps: Default::default(),
            hosts: Default::default(),
            metrics,
            stats: stats::StatsState::default(),
            admin: crate::admin::AdminState::default(),
            config: ArcSwap::from_pointee(config),
            config_gen: AtomicU64::new(0),
            userlist: ArcSwap::from_pointee(userlist),
            scram_cache: DashMap::new(),
            auth_lookup: auth::AuthLookup::default(),
            learned: DashMap::new(),
            pools: DashMap::new(),
            cancels: CancelRegistry::default(),
            client_list: DashMap::new(),
            client_tally: ClientTally::default(),
            next_client_id: AtomicU64::new(1),
            db_controls: DashMap::new(),
            clients: AtomicUsize::new(0),
            clients_gone: Notify::new(),
            counters: Counters::default(),
            shutdown: watch::channel(false).0,
            shutting_down: AtomicBool::new(false),
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
            Some(src) => {
                let tls = self.tls.load().server.clone();
                self.auth_lookup
                    .lookup(&src, user, timeout, tls.as_ref())
                    .await
            }
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

    /// A schema change in logical database `db`: on its servers (of every user's pool), the
    /// statements whose clients send the text with every use are deallocated before the
    /// server serves another transaction (see `ServerConn::statements_stale`).
    pub fn schema_changed(&self, db: &str) {
        for p in self.pools.iter() {
            if p.database == db {
                p.statements_changed();
            }
        }
    }

    /// The pool serving `user` on logical database `db`, created on first use (with its
    /// janitor, which keeps min_pool_size connections open and closes idle ones).
    pub fn pool(&self, db: &str, user: &str) -> Option<Arc<Pool>> {
        let cfg = self.config.load();
        let dbc = cfg.databases.get(db)?;
        let server_user = dbc.user.clone().unwrap_or_else(|| user.to_owned());
        let key = (db.to_owned(), server_user.clone());
        if let Some(p) = self.pools.get(&key) {
            return Some(p.clone());
        }
        let target = self.server_target(&cfg, db, &server_user)?;
        let settings = pool_settings(&cfg, db, &server_user);
        let pool = match self.pools.entry(key) {
            dashmap::Entry::Occupied(e) => return Some(e.get().clone()),
            dashmap::Entry::Vacant(v) => {
                let pool = Pool::new(PoolInit {
                    database: db.to_owned(),
                    user: server_user.clone(),
                    target,
                    settings,
                    control: self.db_control(db),
                    observer: self
                        .metrics
                        .as_ref()
                        .map(|m| m.observer(db, &server_user))
                        .unwrap_or_default(),
                    db_cap: self.caps.db(db, cfg.max_db_connections_for(db)),
                    user_cap: self
                        .caps
                        .user(&server_user, cfg.max_user_connections_for(&server_user)),
                    hosts: self.hosts.clone(),
                });
                v.insert(pool.clone());
                pool
            }
        };
        crate::pool::spawn_janitor(&pool, self.shutdown_signal());
        Some(pool)
    }

    /// How the pools of `db` reach the server as `server_user` under `cfg`.
    pub(crate) fn server_target(
        &self,
        cfg: &Config,
        db: &str,
        server_user: &str,
    ) -> Option<ServerTarget> {
        let dbc = cfg.databases.get(db)?;
        let password = match (&dbc.user, &dbc.password) {
            (Some(_), Some(p)) => ServerPassword::Plain(p.clone()),
            _ => match self.secret(server_user) {
                Some(Secret::Plain(p)) => ServerPassword::Plain(p),
                Some(Secret::Md5(m)) => ServerPassword::Md5(m),
                // A SCRAM secret, or a user known through auth_query: log in with what the
                // client's login left behind. A forced user has no client login to learn from.
                _ if dbc.user.is_none() => {
                    ServerPassword::Learned(self.learned_slot(db, server_user))
                }
                _ => ServerPassword::None,
            },
        };
        let g = &cfg.pgferry;
        let target = ServerTarget {
            host: dbc.host.clone(),
            port: dbc.port,
            dbname: cfg.server_dbname(db).to_owned(),
            user: server_user.to_owned(),
            password,
            connect_timeout: g.server_connect_timeout().unwrap_or(Duration::ZERO),
            max_packet_size: g.max_packet_size as usize,
            max_prepared: g.max_prepared_statements.max(1) as usize,
            tls: self.tls.clone(),
            tls_settings: format!(
                "{:?} {:?} {:?} {:?} {}",
                g.server_tls_sslmode,
                g.server_tls_ca_file,
                g.server_tls_cert_file,
                g.server_tls_key_file,
                g.server_tls_protocols
            ),
            tcp: crate::net::TcpTuning::from_config(g),
            startup_params: cfg.server_startup_params_for(db),
            connect_query: dbc.connect_query.clone(),
            load_balance: dbc.load_balance_hosts,
        };
        Some(target)
    }

    /// Admits a client of `db` as `user` under max_db_client_connections and
    /// max_user_client_connections, or says which cap refuses it. The place is taken now,
    /// before the rest of the login: logins at the same time see each other. It is the
    /// client's once registered ([`App::register_client`]) and comes back when the client is
    /// unregistered, or when the [`Admission`] is dropped (a login that failed after this).
    pub fn admit_client(self: &Arc<Self>, db: &str, user: &str) -> Result<Admission, &'static str> {
        let cfg = self.config.load();
        let max_db = cfg.max_db_client_connections_for(db) as usize;
        let max_user = cfg.max_user_client_connections_for(user) as usize;
        match self.client_tally.try_add(db, user, max_db, max_user) {
            Ok(()) => Ok(Admission::new(self, db, user)),
            Err(ClientCap::Db) => Err("no more connections allowed (max_db_client_connections)"),
            Err(ClientCap::User) => {
                Err("no more connections allowed (max_user_client_connections)")
            }
        }
    }

    /// The place of an admin console client: counted under its database and user like any
    /// client, never refused by a cap.
    pub fn admit_console(self: &Arc<Self>, db: &str, user: &str) -> Admission {
        self.client_tally.add(db, user);
        Admission::new(self, db, user)
    }

    /// The control state of a database (created on first use).
    pub fn db_control(&self, db: &str) -> Arc<DbControl> {
        self.db_controls.entry(db.to_owned()).or_default().clone()
    }

    /// Lists a logged-in client under the database and user of its `admission`, whose place
    /// becomes the client's; [`App::unregister_client`] removes it and gives the place back.
    pub fn register_client(
        &self,
        addr: SocketAddr,
        stream: &crate::net::Stream,
        application_name: &str,
        mut admission: Admission,
    ) -> Arc<ClientInfo> {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo::new(
            id,
            addr,
            stream.local_addr(),
            &admission.user,
            &admission.db,
            application_name,
            stream.tls_description(),
        ));
        self.client_list.insert(id, info.clone());
        admission.app = None; // the place is the listed client's now
        info
    }

    pub fn unregister_client(&self, id: u64) {
        if let Some((_, info)) = self.client_list.remove(&id) {
            self.client_tally.remove(&info.database, &info.user);
        }
    }

    /// A receiver that turns true when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops accepting clients; each client is closed once it holds no open transaction.
    pub fn begin_shutdown(&self) {
        // The flag first, then the nudges: a session registers its waker before it reads the
        // flag, so either it sees the flag or the nudge wakes it.
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
        for c in self.client_list.iter() {
            c.kill.nudge();
        }
    }

    /// Starts or escalates a shutdown; signals and the admin SHUTDOWN commands all come here,
    /// and `run_until_signal` waits for the outcome and exits. Any mode closes the listeners.
    /// `WaitForClients` leaves connected clients alone; `WaitForServers` closes each client
    /// once it has no transaction open; `Immediate` disconnects everyone now.
    pub fn shutdown(&self, mode: crate::admin::ShutdownMode) {
        use crate::admin::ShutdownMode;
        match mode {
            ShutdownMode::WaitForClients => {}
            ShutdownMode::WaitForServers => self.begin_shutdown(),
            ShutdownMode::Immediate => {
                self.begin_shutdown();
                for c in self.client_list.iter() {
                    c.kill.kill();
                }
                for p in self.all_pools() {
                    p.close_idle();
                }
            }
        }
        self.admin.request_shutdown(mode);
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

/// The settings of the pool of (`db`, server user `user`) under `cfg`.
pub(crate) fn pool_settings(cfg: &Config, db: &str, user: &str) -> PoolSettings {
    let g = &cfg.pgferry;
    let size = cfg.pool_size_for(db, user);
    PoolSettings {
        mode: cfg.pool_mode_for(db, user),
        size,
        min_size: cfg.min_pool_size_for(db).min(size),
        reserve_size: cfg.reserve_pool_size_for(db, user),
        reserve_timeout: g.reserve_pool_timeout(),
        query_wait_timeout: cfg.query_wait_timeout_for(db, user),
        server_lifetime: cfg.server_lifetime_for(db),
        server_idle_timeout: g.server_idle_timeout(),
        server_login_retry: g.server_login_retry(),
        server_check_query: g.server_check_query.clone(),
        server_check_delay: g.server_check_delay(),
        server_round_robin: g.server_round_robin,
        server_reset_query: g.server_reset_query.clone(),
        server_reset_query_always: g.server_reset_query_always,
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

/// A running instance: its addresses and a handle to stop it.
pub struct Running {
    /// The first TCP listener's address (`0.0.0.0:0` when only the Unix socket listens).
    pub addr: SocketAddr,
    /// Every TCP listener's address, in `listen_addr` order.
    pub addrs: Vec<SocketAddr>,
    /// The Unix socket (`<unix_socket_dir>/.s.PGSQL.<port>`), if there is one.
    pub unix_socket: Option<PathBuf>,
    pub app: Arc<App>,
    accept: Vec<tokio::task::JoinHandle<()>>,
    /// Connections accepted and still open.
    live: Arc<listen::Live>,
}

impl Running {
    /// Graceful stop: no new clients, open transactions finish (bounded by shutdown_timeout).
    pub async fn shutdown(mut self) -> bool {
        self.app.begin_shutdown();
        self.close_listeners().await;
        let timeout = self
            .app
            .config
            .load()
            .pgferry
            .shutdown_timeout()
            .unwrap_or(Duration::from_secs(30));
        let clean = tokio::time::timeout(timeout, self.live.wait_zero())
            .await
            .is_ok();
        for p in self.app.pools.iter() {
            p.close_idle();
        }
        clean
    }

    /// Waits for the accept loops to close their sockets (they stop once a shutdown began).
    async fn close_listeners(&mut self) {
        for mut h in std::mem::take(&mut self.accept) {
            if tokio::time::timeout(Duration::from_secs(5), &mut h)
                .await
                .is_err()
            {
                h.abort();
            }
        }
    }
}

/// Binds the listeners (every `listen_addr` address and the Unix socket) and starts
/// accepting clients.
pub async fn start(config: Config) -> Result<Running, AppError> {
    let bound = listen::bind_all(&config.pgferry).await?;
    let tuning = listen::TcpTuning::from_config(&config.pgferry);
    let port = bound
        .tcp
        .first()
        .map_or(config.pgferry.listen_port, |a| a.port());
    let app = App::new(config)?;
    for l in &bound.listeners {
        tracing::info!(listener = %l.describe(), "pgferry listening");
    }
    stats::spawn(&app);
    stats::spawn_wait_notices(&app);
    crate::client::park::spawn(&app);
    crate::metrics::start(&app).await;
    let live = Arc::new(listen::Live::default());
    let accept = bound
        .listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(app.clone(), l, tuning, port, live.clone())))
        .collect();
    Ok(Running {
        addr: bound
            .tcp
            .first()
            .copied()
            .unwrap_or_else(|| listen::unix_peer(0)),
        addrs: bound.tcp,
        unix_socket: bound.unix,
        app,
        accept,
        live,
    })
}

/// Accepts clients on one listener until a shutdown begins, then closes it. Connections
/// already waiting in the queue at that moment are taken and served (or refused with an error
/// if the shutdown refuses logins) rather than reset, so a sibling process on the same
/// `so_reuseport` port takes over without losing a client.
async fn accept_loop(
    app: Arc<App>,
    listener: listen::Listener,
    tuning: listen::TcpTuning,
    port: u16,
    live: Arc<listen::Live>,
) {
    let mut stop = app.shutdown_signal();
    let mut requests = app.admin.shutdown_requests();
    loop {
        if *stop.borrow_and_update() || requests.borrow_and_update().is_some() {
            break;
        }
        tokio::select! {
            r = listener.accept(port) => match r {
                Ok((stream, peer)) => spawn_client(&app, stream, peer, tuning, &live),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => if r.is_err() { break },
            r = requests.changed() => if r.is_err() { break },
        }
    }
    while let Some(Ok((stream, peer))) = listener.try_accept(port).await {
        spawn_client(&app, stream, peer, tuning, &live);
    }
    let name = listener.describe();
    drop(listener);
    tracing::info!(listener = %name, "listener closed");
}

fn spawn_client(
    app: &Arc<App>,
    stream: crate::net::Stream,
    peer: SocketAddr,
    t: listen::TcpTuning,
    live: &Arc<listen::Live>,
) {
    if let Some(tcp) = stream.as_tcp() {
        if let Err(e) = t.apply(tcp) {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive options");
        }
    }
    // The task is the serve future itself: wrapping it in an async block that captures its
    // inputs would hold them twice in every client's task.
    let guard = live.enter();
    tokio::spawn(crate::client::serve(app.clone(), stream, peer, guard));
}

/// Reacts to SIGTERM / SIGINT: the first one starts `mode`, a second one exits at once.
fn on_signal(app: &App, name: &str, mode: crate::admin::ShutdownMode) {
    use crate::admin::ShutdownMode;
    if app.admin.shutdown_mode().is_some() {
        tracing::info!("{name} during shutdown: exiting now");
        app.shutdown(ShutdownMode::Immediate);
    } else {
        tracing::info!("{name}: shutting down ({mode:?})");
        app.shutdown(mode);
    }
}

/// Runs until a signal or an admin SHUTDOWN, with PgBouncer's meanings:
/// SIGTERM = SHUTDOWN WAIT_FOR_CLIENTS (close the listeners, keep serving connected clients,
/// exit when the last one has left); SIGINT = SHUTDOWN WAIT_FOR_SERVERS (close the listeners,
/// close each client as soon as it has no transaction open, exit when all are gone);
/// SIGQUIT = SHUTDOWN (exit now). Both waits are bounded by `shutdown_timeout` (0 = no bound);
/// a second SIGTERM or SIGINT exits at once. SIGHUP reloads the configuration (as RELOAD).
pub async fn run_until_signal(config: Config) -> Result<(), AppError> {
    use crate::admin::ShutdownMode;
    use tokio::signal::unix::{signal, SignalKind};
    let mut running = start(config).await?;
    let app = running.app.clone();
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    let mut quit = signal(SignalKind::quit()).map_err(AppError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
    let mut requests = app.admin.shutdown_requests();
    let mut draining = false;
    let mut deadline = None;
    loop {
        let mode = *requests.borrow_and_update();
        match mode {
            Some(ShutdownMode::Immediate) => break,
            Some(m) if !draining => {
                draining = true;
                // The accept loops take what is queued and close; only then is the count final.
                running.close_listeners().await;
                let limit = app.config.load().pgferry.shutdown_timeout();
                deadline = limit.map(|d| tokio::time::Instant::now() + d);
                let clients = running.live.count();
                tracing::info!(?m, clients, timeout = ?limit, "waiting for clients to leave");
                continue;
            }
            Some(_) if running.live.count() == 0 => {
                tracing::info!("the last client has left");
                break;
            }
            _ => {}
        }
        tokio::select! {
            _ = hup.recv() => match app.reload() {
                Ok(notes) => {
                    tracing::info!("SIGHUP: configuration reloaded");
                    for n in notes {
                        tracing::info!("reload: {n}");
                    }
                }
                Err(e) => tracing::error!("SIGHUP: reload failed, keeping the old configuration: {e}"),
            },
            _ = term.recv() => on_signal(&app, "SIGTERM", ShutdownMode::WaitForClients),
            _ = int.recv() => on_signal(&app, "SIGINT", ShutdownMode::WaitForServers),
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: exiting now");
                app.shutdown(ShutdownMode::Immediate);
            }
            r = requests.changed() => if r.is_err() { break },
            _ = running.live.wait_zero(), if draining => {}
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                let clients = running.live.count();
                tracing::warn!(clients, "shutdown_timeout reached: disconnecting the remaining clients");
                break;
            }
        }
    }
    // Whatever is left goes now; give the clients a moment to be told why.
    app.shutdown(ShutdownMode::Immediate);
    app.wait_clients_gone(Duration::from_millis(500)).await;
    running.close_listeners().await;
    for p in app.all_pools() {
        p.close_idle();
    }
    tracing::info!("shut down");
    Ok(())
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
