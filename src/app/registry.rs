//! What the admin console and metrics can see of live clients and databases: one
//! `ClientInfo` per logged-in client (state, timing, server link) and one `DbControl` per
//! database (PAUSE / DISABLE / RECONNECT state shared by all its pools). Updated by the client
//! tasks with relaxed atomics; read without stopping anyone.

use crate::clock::Tick;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// PgBouncer's client states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, no server, nothing waiting.
    Idle = 0,
    /// Holds a server connection.
    Active = 1,
    /// Waiting for a server connection.
    Waiting = 2,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }
}

/// Microseconds since the Unix epoch, now, from pgferry's clock ([`Tick::wall_us`]): every
/// time pgferry stores and compares comes from one source.
pub fn now_us() -> u64 {
    Tick::now().wall_us()
}

/// A connection end as SHOW CLIENTS and the logs show it, IP and port, in 20 bytes (a
/// `SocketAddr` takes 32; an IPv6 address's flow label and scope id are not kept). Every
/// logged-in client, idle or parked, holds two in its [`ClientInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortAddr {
    ip: [u8; 16],
    port: u16,
    v6: bool,
}

impl From<SocketAddr> for ShortAddr {
    fn from(a: SocketAddr) -> Self {
        let (ip, v6) = match a.ip() {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), false),
            IpAddr::V6(v6) => (v6.octets(), true),
        };
        ShortAddr {
            ip,
            port: a.port(),
            v6,
        }
    }
}

impl From<ShortAddr> for SocketAddr {
    fn from(a: ShortAddr) -> Self {
        let v6 = Ipv6Addr::from(a.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) if !a.v6 => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, a.port)
    }
}

/// One logged-in client, as the console shows it. Parked clients keep theirs: it is the
/// largest part of what an idle client costs (`client_info_stays_small`).
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    addr: ShortAddr,
    local_addr: Option<ShortAddr>,
    pub user: Box<str>,
    pub database: Box<str>,
    pub connect_time_us: u64,
    /// When the client last sent a request (µs since epoch).
    pub request_time_us: AtomicU64,
    /// When the client started waiting for a server (µs since epoch), 0 if not waiting.
    pub wait_start_us: AtomicU64,
    /// When that wait exceeds query_wait_timeout (µs since epoch), 0 if never.
    pub wait_deadline_us: AtomicU64,
    /// Id of the server connection it holds, 0 if none.
    pub server: AtomicU64,
    pub prepared_statements: AtomicU32,
    state: AtomicU8,
    pub application_name: Mutex<String>,
    /// Protocol and cipher when the client uses TLS (SHOW CLIENTS `tls`).
    pub tls: Option<Box<str>>,
    /// Tells the client's task to disconnect (KILL, KILL_CLIENT, removed database) or to look
    /// at the shutdown state.
    pub kill: ClientSignal,
}

/// What woke a client's task through its [`ClientSignal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Killed,
    ShuttingDown,
    /// The client has waited query_wait_notify for a server (set by `app::stats::notify_long_waits`).
    LongWait,
    /// The client has waited query_wait_timeout for a server.
    WaitTimedOut,
    /// The client has been idle for client_park_delay: park it if it still is (reported only
    /// to an idle session's wait, see [`ClientSignal::poll_idle`]).
    Park,
}

/// Where a client stands as to parking (see `client::park`).
const PARK_NO: u8 = 0;
const PARK_ASKED: u8 = 1;
const PARK_PARKED: u8 = 2;
const PARK_NEVER: u8 = 3;

/// A flag plus the waker of the one task that waits on it (the client's own). Waiting costs
/// no allocation and no registration in a shared list: the task re-registers its waker (a
/// no-op when unchanged) and reads the flags each time it is about to sleep.
#[derive(Debug, Default)]
pub struct ClientSignal {
    killed: AtomicBool,
    long_wait: AtomicBool,
    wait_timed_out: AtomicBool,
    /// PARK_NO, PARK_ASKED (by the sweep), PARK_PARKED, or PARK_NEVER (this client cannot be
    /// parked: TLS, session mode, a client idle timeout).
    park: AtomicU8,
    waker: AtomicWaker,
}

impl ClientSignal {
    /// Disconnects the client at its next wait (also a wait for a server).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Wakes the task so it looks at shared state again (shutdown began).
    pub fn nudge(&self) {
        self.waker.wake();
    }

    /// Tells a client waiting for a server that it has waited query_wait_notify.
    pub fn long_wait(&self) {
        self.long_wait.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Tells a client waiting for a server that it has waited query_wait_timeout.
    pub fn wait_timed_out(&self) {
        self.wait_timed_out.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Ready once the client is killed, or (with `shutdown`) once that flag is set.
    pub fn poll(&self, cx: &mut Context<'_>, shutdown: Option<&AtomicBool>) -> Poll<Wake> {
        self.waker.register(cx.waker());
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Wake::Killed);
        }
        if shutdown.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return Poll::Ready(Wake::ShuttingDown);
        }
        Poll::Pending
    }

    /// Completes once the client is killed ([`Wake::Killed`]), has waited query_wait_timeout
    /// ([`Wake::WaitTimedOut`]) or, with `long_wait`, has waited query_wait_notify
    /// ([`Wake::LongWait`], reported once).
    pub async fn killed_or_long_wait(&self, long_wait: bool) -> Wake {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(w) = self.poll(cx, None) {
                return Poll::Ready(w);
            }
            if self.wait_timed_out.swap(false, Ordering::SeqCst) {
                return Poll::Ready(Wake::WaitTimedOut);
            }
            if long_wait && self.long_wait.swap(false, Ordering::SeqCst) {
                return Poll::Ready(Wake::LongWait);
            }
            Poll::Pending
        })
        .await
    }

    /// Completes once the client is killed.
    pub async fn killed(&self) {
        self.killed_or_long_wait(false).await;
    }

    /// Ready like [`ClientSignal::poll`], and also with [`Wake::Park`] once the sweep asked
    /// this (idle) client to park.
    pub fn poll_idle(&self, cx: &mut Context<'_>, shutdown: Option<&AtomicBool>) -> Poll<Wake> {
        if let Poll::Ready(w) = self.poll(cx, shutdown) {
            return Poll::Ready(w);
        }
        if self.park.load(Ordering::Relaxed) == PARK_ASKED {
            return Poll::Ready(Wake::Park);
        }
        Poll::Pending
    }

    /// Asks the client to park at its next idle wait; false if it was asked already, is
    /// parked or cannot be parked.
    pub fn ask_to_park(&self) -> bool {
        let asked = self
            .park
            .compare_exchange(PARK_NO, PARK_ASKED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if asked {
            self.waker.wake();
        }
        asked
    }

    /// The client declined to park: `never` when it never can (it is not asked again).
    pub fn decline_park(&self, never: bool) {
        self.park
            .store(if never { PARK_NEVER } else { PARK_NO }, Ordering::Relaxed);
    }

    /// A RELOAD may have changed what kept the client from being parked: it may be asked
    /// again.
    pub fn reconsider_park(&self) {
        let _ =
            self.park
                .compare_exchange(PARK_NEVER, PARK_NO, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The client is parked: `waker` stands in for its task until it resumes. True when it
    /// must resume at once (killed, or shutting down, since before the waker was in place).
    pub fn parked(&self, waker: &std::task::Waker, shutdown: &AtomicBool) -> bool {
        self.park.store(PARK_PARKED, Ordering::Relaxed);
        self.waker.register(waker);
        self.killed.load(Ordering::SeqCst) || shutdown.load(Ordering::SeqCst)
    }

    /// The client's task runs again after parking.
    pub fn resumed(&self) {
        self.park.store(PARK_NO, Ordering::Relaxed);
    }

    /// True while the client is parked.
    pub fn is_parked(&self) -> bool {
        self.park.load(Ordering::Relaxed) == PARK_PARKED
    }

    /// Forgets marks left from an earlier wait.
    pub fn clear_long_wait(&self) {
        self.long_wait.store(false, Ordering::SeqCst);
        self.wait_timed_out.store(false, Ordering::SeqCst);
    }
}

impl ClientInfo {
    pub fn new(
        id: u64,
        addr: SocketAddr,
        local_addr: Option<SocketAddr>,
        user: &str,
        database: &str,
        application_name: &str,
        tls: Option<String>,
    ) -> Self {
        let now = now_us();
        ClientInfo {
            id,
            addr: addr.into(),
            local_addr: local_addr.map(ShortAddr::from),
            user: user.into(),
            database: database.into(),
            connect_time_us: now,
            state: AtomicU8::new(ClientState::Idle as u8),
            request_time_us: AtomicU64::new(now),
            wait_start_us: AtomicU64::new(0),
            wait_deadline_us: AtomicU64::new(0),
            server: AtomicU64::new(0),
            prepared_statements: AtomicU32::new(0),
            application_name: Mutex::new(application_name.to_owned()),
            tls: tls.map(String::into_boxed_str),
            kill: ClientSignal::default(),
        }
    }

    /// The client's address (for a Unix-socket client, what its listener reported).
    pub fn addr(&self) -> SocketAddr {
        self.addr.into()
    }

    /// pgferry's end of the connection; `None` on a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr.map(SocketAddr::from)
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: ClientState) {
        if s == ClientState::Waiting {
            self.start_waiting(None);
            return;
        }
        self.state.store(s as u8, Ordering::Relaxed);
        self.wait_start_us.store(0, Ordering::Relaxed);
        self.wait_deadline_us.store(0, Ordering::Relaxed);
    }

    /// The client starts waiting for a server, for at most `timeout` (query_wait_timeout,
    /// enforced by the periodic check of waiting clients).
    pub fn start_waiting(&self, timeout: Option<std::time::Duration>) {
        let now = now_us();
        let deadline = timeout.map_or(0, |t| now.saturating_add(t.as_micros() as u64).max(1));
        self.wait_start_us.store(now, Ordering::Relaxed);
        self.wait_deadline_us.store(deadline, Ordering::Relaxed);
        self.state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
    }
}

/// Control state of one logical database, shared by all its pools.
#[derive(Debug, Default)]
pub struct DbControl {
    paused: AtomicBool,
    disabled: AtomicBool,
    /// Bumped by RECONNECT (and reloads that change the server): connections opened under an
    /// older generation are closed when released.
    generation: AtomicU64,
    resumed: Notify,
}

impl DbControl {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Waits while the database is paused.
    pub async fn wait_resumed(&self) {
        loop {
            let notified = self.resumed.notified();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Clients per database and per user: those logged in and those admitted and still logging
/// in. What max_db_client_connections and max_user_client_connections are checked against;
/// a check and the place it grants are one step under the lock, so logins that run at the
/// same time cannot all pass a cap that only one more fits under.
#[derive(Default)]
pub struct ClientTally {
    counts: Mutex<TallyCounts>,
}

#[derive(Default)]
struct TallyCounts {
    db: std::collections::HashMap<Box<str>, usize>,
    user: std::collections::HashMap<Box<str>, usize>,
}

/// Which cap refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCap {
    Db,
    User,
}

impl ClientTally {
    /// Takes a place for a client of `db` as `user` unless that would pass `max_db` or
    /// `max_user` (0: no cap).
    pub fn try_add(
        &self,
        db: &str,
        user: &str,
        max_db: usize,
        max_user: usize,
    ) -> Result<(), ClientCap> {
        let mut c = self.counts.lock();
        if max_db > 0 && c.db.get(db).copied().unwrap_or(0) >= max_db {
            return Err(ClientCap::Db);
        }
        if max_user > 0 && c.user.get(user).copied().unwrap_or(0) >= max_user {
            return Err(ClientCap::User);
        }
        bump(&mut c.db, db);
        bump(&mut c.user, user);
        Ok(())
    }

    /// Takes a place without a cap (admin console clients).
    pub fn add(&self, db: &str, user: &str) {
        let mut c = self.counts.lock();
        bump(&mut c.db, db);
        bump(&mut c.user, user);
    }

    /// Gives back a place taken by [`ClientTally::try_add`] or [`ClientTally::add`].
    pub fn remove(&self, db: &str, user: &str) {
        let mut c = self.counts.lock();
        drop_one(&mut c.db, db);
        drop_one(&mut c.user, user);
    }

    /// Clients of database `db` and of user `user` now.
    #[cfg(test)]
    fn counts(&self, db: &str, user: &str) -> (usize, usize) {
        let c = self.counts.lock();
        (
            c.db.get(db).copied().unwrap_or(0),
            c.user.get(user).copied().unwrap_or(0),
        )
    }
}

fn bump(m: &mut std::collections::HashMap<Box<str>, usize>, key: &str) {
    match m.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            m.insert(key.into(), 1);
        }
    }
}

/// One fewer under `key`; the entry goes at zero, so names no client uses take no memory.
fn drop_one(m: &mut std::collections::HashMap<Box<str>, usize>, key: &str) {
    if let Some(n) = m.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(key);
        }
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;

    #[test]
    fn caps_count_admitted_clients_and_places_come_back() {
        let t = ClientTally::default();
        assert_eq!(t.try_add("shop", "app", 2, 0), Ok(()));
        assert_eq!(t.try_add("shop", "bob", 2, 0), Ok(()));
        assert_eq!(t.try_add("shop", "carl", 2, 0), Err(ClientCap::Db));
        assert_eq!(t.try_add("blog", "app", 0, 1), Err(ClientCap::User));
        assert_eq!(t.counts("shop", "app"), (2, 1));
        t.remove("shop", "app");
        assert_eq!(t.try_add("blog", "app", 0, 1), Ok(()));
        t.add("pgbouncer", "app"); // the console is counted, never refused
        assert_eq!(t.counts("pgbouncer", "app"), (1, 2));
        for (db, user) in [("shop", "bob"), ("blog", "app"), ("pgbouncer", "app")] {
            t.remove(db, user);
        }
        assert_eq!(t.counts("shop", "app"), (0, 0));
        assert!(t.counts.lock().db.is_empty() && t.counts.lock().user.is_empty());
    }
}

#[cfg(test)]
mod client_info_tests {
    use super::*;

    #[test]
    fn short_addr_keeps_ip_and_port() {
        for s in [
            "10.1.2.3:5432",
            "[2001:db8::7]:6432",
            "[::ffff:10.1.2.3]:1",
            "0.0.0.0:0",
            "[::1]:65535",
        ] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(SocketAddr::from(ShortAddr::from(a)), a, "{s}");
        }
    }

    #[test]
    fn client_info_stays_small() {
        // Every idle client, parked or not, holds one in an Arc (two 8-byte counters):
        // 224 bytes is the allocator's size class it has to fit (the next is 256).
        let size = std::mem::size_of::<ClientInfo>();
        assert!(size + 16 <= 224, "ClientInfo is {size} bytes");
        assert_eq!(std::mem::size_of::<Option<ShortAddr>>(), 20);
    }
}
