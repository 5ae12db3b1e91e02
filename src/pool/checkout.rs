//! Lending a server connection: the FIFO wait for a permit (or, after reserve_pool_timeout,
//! a reserve one), then an idle connection that passes its probe and server_check_query, or a
//! new one once the caps allow it (waiting, or closing another pool's idle connection); new
//! connections go round robin to the hosts that answer. The `Checkout` guard gives the permit
//! back and closes its connection unless it is released clean.

use super::hosts::HostSet;
use super::limits::{Blocked, CapGuard};
use super::{
    Permit, Pool, PoolError, PoolSettings, Pooled, PooledConn, CAP_POLL, CHECK_TIMEOUT, RETRY_PAUSE,
};
use crate::clock::Tick;
use crate::server::{self, ServerConn, ServerError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Pool {
    pub(super) async fn checkout_inner(
        self: &Arc<Self>,
        retry: bool,
        timed: bool,
    ) -> Result<Checkout, PoolError> {
        let start = Instant::now();
        let s = self.settings();
        // The bound also limits connection retries below; `timed` adds the timer on the wait
        // for a permit (without it the caller enforces the bound).
        let deadline = s.query_wait_timeout.map(|d| start + d);
        let permit = {
            let _waiting = Gauge::inc(&self.stats.waiting);
            // PAUSE holds new work here, counted as waiting; RESUME lets it go.
            let acquire = async {
                self.control.wait_resumed().await;
                self.acquire_permit(&s).await
            };
            match deadline.filter(|_| timed) {
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
        self.lend(&mut checkout, p, Tick::now());
        Ok(checkout)
    }

    /// Hands `p` to `checkout`, counted as in use.
    fn lend(&self, checkout: &mut Checkout, p: Pooled, now: Tick) {
        p.conn.info.active.store(true, Ordering::Relaxed);
        p.conn
            .info
            .request_time_us
            .store(now.wall_us(), Ordering::Relaxed);
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        checkout.conn = Some(p);
    }

    /// A checkout that needs no waiting: the database is not paused, a permit of the pool is
    /// free and an idle connection is ready without `server_check_query`. `None` sends the
    /// caller to [`Pool::checkout`] (which also covers everything this skips). No future, no
    /// timer: the common case of a busy pool with idle connections stays synchronous.
    pub fn try_checkout_now(self: &Arc<Self>, now: Tick) -> Option<Checkout> {
        if self.control.is_paused() {
            return None;
        }
        let permit = Permit::Main(self.main.try_acquire()?);
        let mut checkout = Checkout {
            conn: None,
            pool: self.clone(),
            permit: Some(permit),
        };
        let s = self.settings.load();
        let p = self.pop_ready_idle(&s, now)?; // none ready: the permit goes back with `checkout`
        self.observer.wait(Duration::ZERO);
        self.lend(&mut checkout, p, now);
        Some(checkout)
    }

    /// The most recently used (or, with server_round_robin, the oldest) idle connection if it
    /// can be lent without a query: current, alive, and not due for server_check_query. One
    /// that is due stays where it was and `None` sends the caller to [`Pool::take_idle`].
    fn pop_ready_idle(&self, s: &PoolSettings, now: Tick) -> Option<Pooled> {
        loop {
            let mut idle = self.idle.lock();
            let p = if s.server_round_robin {
                idle.pop_front()
            } else {
                idle.pop_back()
            }?;
            if self.is_stale_at(&p.conn, s, now) {
                drop(idle);
                drop(p);
                continue;
            }
            let due = s
                .server_check_delay
                .is_none_or(|d| now.since(p.conn.last_used) >= d);
            if due {
                if s.server_round_robin {
                    idle.push_front(p);
                } else {
                    idle.push_back(p);
                }
                return None;
            }
            drop(idle);
            let mut p = p;
            if !p.conn.is_alive_idle() {
                tracing::debug!(server = p.conn.id, "discarding idle server connection");
                continue;
            }
            return Some(p);
        }
    }

    /// A permit of the pool, or of its reserve once the client has waited reserve_pool_timeout.
    async fn acquire_permit(&self, s: &PoolSettings) -> Option<Permit> {
        if let Some(p) = self.main.try_acquire() {
            return Some(Permit::Main(p));
        }
        if self.reserve.size() == 0 {
            return self.main.acquire().await.map(Permit::Main);
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
            // Usually an idle connection is ready: take it before arming the wake-ups below.
            if let Some(p) = self.pop_ready_idle(s, Tick::now()) {
                return Ok(p);
            }
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
                Ok(guard) => {
                    // Boxed: connecting (TCP, TLS, authentication) needs about 3 KB of future
                    // state, and every client waiting for a server would otherwise carry it
                    // (in the allocation each wait makes), though few ever connect.
                    let open = Box::pin(self.open_retrying(guard, s, deadline, retry));
                    return Ok(open.await?);
                }
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
                .is_none_or(|d| Tick::now().since(p.conn.last_used) >= d);
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
                Ok(conn) => return Ok(Box::new(PooledConn { conn, _caps: caps })),
                Err(e) if retry && e.is_transient() && Instant::now() + RETRY_PAUSE < limit => {
                    tracing::debug!(db = %self.database, error = %e, "server not available; retrying");
                    // The hosts that failed are marked down; the loop waits for them.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a connection to the first host that answers (round robin over those up; with
    /// `include_down`, then those cooling off). A host that fails is skipped for
    /// server_login_retry.
    pub(super) async fn open(
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
                    h.mark_down(cool_down, e.detail());
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
    pub fn release(self) {
        self.release_at(Tick::now());
    }

    /// [`Checkout::release`] when the caller has read the clock already.
    pub fn release_at(mut self, now: Tick) {
        if let Some(c) = self.conn.take() {
            self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
            self.pool.put_back(c, now);
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
