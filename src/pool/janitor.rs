//! The maintenance task of one pool. Every tick it closes idle connections that are dead
//! (the server went away), stale (RECONNECT, a new server address, `server_lifetime`), idle for
//! `server_idle_timeout` (down to `min_pool_size`) or beyond the pool's size (it shrank), then
//! opens connections until `min_pool_size` are open, within the pool's and the shared caps.
//! It ends with the pool, when its database is removed, or when the instance shuts down.

use super::{Pool, Pooled, PooledConn};
use crate::clock::Tick;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

const TICK: Duration = Duration::from_millis(250);

/// Starts the janitor of `pool`; it stops when `shutdown` turns true or is dropped.
pub fn spawn(pool: &Arc<Pool>, shutdown: watch::Receiver<bool>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(run(Arc::downgrade(pool), shutdown));
}

async fn run(pool: Weak<Pool>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = shutdown.changed() => if r.is_err() { return },
        }
        if *shutdown.borrow() {
            return;
        }
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if pool.is_closed() {
            return;
        }
        pool.prune_idle(Tick::now());
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = pool.fill_min() => {}
            _ = stop.changed() => return,
        }
    }
}

impl Pool {
    /// Closes idle connections that are dead, stale, surplus, or idle too long.
    pub(super) fn prune_idle(&self, now: Tick) {
        let s = self.settings();
        let min = s.min_size.min(s.size) as usize;
        let limit = self.caps.pool.limit() as usize;
        let mut closing: Vec<Pooled> = Vec::new();
        {
            let mut idle = self.idle.lock();
            // Connections of the pool, idle or not; closing one lowers it.
            let mut remaining = self.caps.pool.count() as usize;
            let mut keep = std::collections::VecDeque::with_capacity(idle.len());
            // Oldest (least recently used) first.
            while let Some(mut p) = idle.pop_front() {
                let dead = self.is_stale(&p.conn, &s) || !p.conn.is_alive_idle();
                let surplus = remaining > limit;
                let expired = remaining > min
                    && s.server_idle_timeout
                        .is_some_and(|t| now.since(p.conn.last_used) >= t);
                if dead || surplus || expired {
                    remaining = remaining.saturating_sub(1);
                    closing.push(p);
                } else {
                    keep.push_back(p);
                }
            }
            *idle = keep;
        }
        if !closing.is_empty() {
            tracing::debug!(db = %self.database, user = %self.user, n = closing.len(), "closing idle server connections");
        }
    }

    /// Opens connections, one at a time, until min_pool_size are open. Each is opened under a
    /// pool permit it does not wait for, so clients are never queued behind it, and within the
    /// caps without closing anyone else's connection.
    pub(super) async fn fill_min(&self) {
        if self.control.is_paused() || self.is_closed() {
            return;
        }
        let s = self.settings();
        let want = s.min_size.min(s.size);
        while self.caps.pool.count() < want {
            let Some(permit) = self.main.try_acquire() else {
                return;
            };
            let Ok(guard) = self.caps.try_acquire() else {
                self.main.give_back(permit);
                return;
            };
            let hosts = self.hosts.load_full();
            if hosts.next_up_at().is_some() {
                self.main.give_back(permit);
                return; // every host is cooling off after a failure
            }
            let r = self.open(&hosts, false, &s).await;
            match r {
                Ok(conn) => {
                    tracing::debug!(server = conn.id, db = %self.database, user = %self.user, "opened server connection for min_pool_size");
                    self.put_back(Box::new(PooledConn { conn, _caps: guard }), Tick::now());
                    self.main.give_back(permit);
                }
                Err(e) => {
                    tracing::debug!(db = %self.database, user = %self.user, error = %e, "min_pool_size: cannot open a server connection");
                    self.main.give_back(permit);
                    return;
                }
            }
        }
    }
}
