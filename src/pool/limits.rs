//! Counting limits of the pools: a resizable fair semaphore (a pool's `pool_size` and
//! `reserve_pool_size` permits) and connection caps shared by several pools
//! (`max_db_connections`, `max_user_connections`), whose members can be asked to close an idle
//! connection to make room.

use super::{Pool, Pooled};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A fair (FIFO) semaphore whose size can change while permits are out: growing adds permits;
/// shrinking removes free permits at once and the rest as they come back.
pub struct Limit {
    sem: Arc<Semaphore>,
    /// Permits that exist (free or out), including those still owed. The lock also orders
    /// every change of `owed`.
    issued: Mutex<usize>,
    /// Permits to forget as they come back (the size shrank while they were out). Changed
    /// only under `issued`'s lock, read without it: a permit coming back while nothing is
    /// owed (every release but those after a shrink) goes straight to the semaphore.
    owed: AtomicUsize,
}

impl Limit {
    pub fn new(size: usize) -> Limit {
        Limit {
            sem: Arc::new(Semaphore::new(size)),
            issued: Mutex::new(size),
            owed: AtomicUsize::new(0),
        }
    }

    /// The size the limit is converging to.
    pub fn size(&self) -> usize {
        let issued = self.issued.lock();
        *issued - self.owed.load(Ordering::Relaxed)
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Permits held now.
    pub fn in_use(&self) -> usize {
        let issued = self.issued.lock();
        issued.saturating_sub(self.sem.available_permits())
    }

    pub fn resize(&self, new: usize) {
        let mut issued = self.issued.lock();
        let mut owed = self.owed.load(Ordering::Relaxed);
        let current = *issued - owed;
        if new > current {
            let mut add = new - current;
            let cancelled = add.min(owed);
            owed -= cancelled;
            add -= cancelled;
            *issued += add;
            self.sem.add_permits(add);
        } else if new < current {
            let remove = current - new;
            let forgotten = self.sem.forget_permits(remove);
            *issued -= forgotten;
            owed += remove - forgotten;
        }
        self.owed.store(owed, Ordering::Release);
    }

    /// Waits (FIFO) for a permit.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().acquire_owned().await.ok()
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }

    /// Returns a permit, forgetting it instead if the limit shrank while it was out.
    ///
    /// A permit that comes back through the lock-free path just as a shrink starts is not
    /// forgotten, but the count owed is: the next permit back is forgotten in its place, so
    /// the size still converges.
    pub fn give_back(&self, permit: OwnedSemaphorePermit) {
        if self.owed.load(Ordering::Acquire) == 0 {
            drop(permit);
            return;
        }
        let mut issued = self.issued.lock();
        let owed = self.owed.load(Ordering::Relaxed);
        if owed > 0 {
            self.owed.store(owed - 1, Ordering::Release);
            *issued -= 1;
            permit.forget();
        } else {
            drop(issued);
            drop(permit);
        }
    }
}

/// A cap on server connections shared by the pools of one database or one user. Every open
/// connection is counted (also with no cap), so a cap set by RELOAD sees the true number.
#[derive(Default)]
pub struct Cap {
    /// 0 = unlimited.
    limit: AtomicU32,
    count: AtomicU32,
    /// Notified when a counted connection closes, or goes idle while the cap is full (so a
    /// waiter of another pool may close it).
    pub freed: Notify,
    members: Mutex<Vec<Weak<Pool>>>,
}

impl Cap {
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn set_limit(&self, limit: u32) {
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if old != limit {
            self.freed.notify_waiters();
        }
    }

    /// Connections counted now.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_full(&self) -> bool {
        let limit = self.limit();
        limit > 0 && self.count() >= limit
    }

    fn try_take(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                let limit = self.limit.load(Ordering::Acquire);
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// A counted connection closed: waiters may open one.
    fn put(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// Takes back a count that was never used (another cap refused). No one is woken: nothing
    /// was freed, and a waiter woken by its own refusal would spin.
    fn untake(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// Lists `pool` among the pools sharing this cap.
    pub fn join(&self, pool: &Arc<Pool>) {
        let mut m = self.members.lock();
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(pool));
    }

    /// Takes one idle connection of a member other than `except`, for the caller to close.
    pub(super) fn evict_idle(&self, except: &Pool) -> Option<Pooled> {
        let members: Vec<Arc<Pool>> = self
            .members
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        members
            .iter()
            .filter(|p| !std::ptr::eq(p.as_ref(), except))
            .find_map(|p| p.evict_one_idle())
    }
}

/// The caps one pool is subject to: its own (`pool_size` + `reserve_pool_size`), its
/// database's and its user's.
#[derive(Clone)]
pub struct PoolCaps {
    pub pool: Arc<Cap>,
    pub db: Arc<Cap>,
    pub user: Arc<Cap>,
}

/// Which cap refused a new connection.
#[derive(Debug)]
pub enum Blocked {
    Pool,
    Db,
    User,
}

impl PoolCaps {
    /// Counts a new connection in every cap, or says which one is full.
    pub fn try_acquire(&self) -> Result<CapGuard, Blocked> {
        if !self.pool.try_take() {
            return Err(Blocked::Pool);
        }
        if !self.db.try_take() {
            self.pool.untake();
            return Err(Blocked::Db);
        }
        if !self.user.try_take() {
            self.db.untake();
            self.pool.untake();
            return Err(Blocked::User);
        }
        Ok(CapGuard { caps: self.clone() })
    }

    /// Tells waiters that an idle connection they could use or close exists.
    pub fn announce_idle(&self) {
        for c in [&self.pool, &self.db, &self.user] {
            if c.is_full() {
                c.freed.notify_waiters();
            }
        }
    }
}

/// The caps of every database and user, created on first use.
#[derive(Default)]
pub struct CapRegistry {
    dbs: dashmap::DashMap<String, Arc<Cap>>,
    users: dashmap::DashMap<String, Arc<Cap>>,
}

impl CapRegistry {
    /// The cap of database `db` (`max_db_connections`).
    pub fn db(&self, db: &str, limit: u32) -> Arc<Cap> {
        let cap = self.dbs.entry(db.to_owned()).or_default().clone();
        cap.set_limit(limit);
        cap
    }

    /// The cap of server user `user` (`max_user_connections`).
    pub fn user(&self, user: &str, limit: u32) -> Arc<Cap> {
        let cap = self.users.entry(user.to_owned()).or_default().clone();
        cap.set_limit(limit);
        cap
    }

    /// Sets every cap's limit from the configuration (RELOAD, SET).
    pub fn apply(&self, cfg: &crate::config::Config) {
        for c in self.dbs.iter() {
            c.set_limit(cfg.max_db_connections_for(c.key()));
        }
        for c in self.users.iter() {
            c.set_limit(cfg.max_user_connections_for(c.key()));
        }
    }

    /// Server connections open now for database `db`.
    pub fn db_count(&self, db: &str) -> u32 {
        self.dbs.get(db).map_or(0, |c| c.count())
    }

    /// Server connections open now for user `user`.
    pub fn user_count(&self, user: &str) -> u32 {
        self.users.get(user).map_or(0, |c| c.count())
    }
}

/// One connection counted in its caps until dropped.
pub struct CapGuard {
    caps: PoolCaps,
}

impl Drop for CapGuard {
    fn drop(&mut self) {
        self.caps.pool.put();
        self.caps.db.put();
        self.caps.user.put();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_forgets_permits_as_they_come_back() {
        let l = Limit::new(3);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        l.resize(1); // one free permit forgotten now, one owed
        assert_eq!(l.available(), 0);
        assert_eq!(l.size(), 1);
        l.give_back(a); // forgotten
        assert_eq!(l.available(), 0);
        l.give_back(b); // back for real
        assert_eq!(l.available(), 1);
        l.resize(4);
        assert_eq!(l.available(), 4);
        assert_eq!(l.size(), 4);
    }

    #[test]
    fn growing_cancels_what_is_owed_first() {
        let l = Limit::new(2);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        l.resize(0);
        l.resize(1);
        l.give_back(a);
        l.give_back(b);
        assert_eq!(l.available(), 1);
        assert_eq!(l.in_use(), 0);
    }

    #[test]
    fn caps_count_and_refuse() {
        let caps = PoolCaps {
            pool: Arc::new(Cap::default()),
            db: Arc::new(Cap::default()),
            user: Arc::new(Cap::default()),
        };
        caps.db.set_limit(1);
        let g = caps.try_acquire().ok().unwrap();
        assert!(matches!(caps.try_acquire(), Err(Blocked::Db)));
        drop(g);
        caps.db.set_limit(0);
        caps.user.set_limit(1);
        let _g = caps.try_acquire().ok().unwrap();
        assert!(matches!(caps.try_acquire(), Err(Blocked::User)));
        assert_eq!(
            caps.db.count(),
            1,
            "a refused user slot gives the db slot back"
        );
        assert_eq!(caps.pool.count(), 1);
    }
}
