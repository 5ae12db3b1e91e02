//! Per-database, per-fingerprint query statistics (the data behind `SHOW QUERIES`): calls,
//! errors, rows, total time, a latency histogram, first/last seen and the top
//! application_names. Bounded: above `max` fingerprints (all databases together) a sweep
//! folds the ~10 % with the least total time into one "other" row per database.
//! Hot path: a shared read lock on the database map, one shard mutex, no allocation for a
//! known fingerprint and application_name.

use super::histogram::Histogram;
use crate::sql::Analysis;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const SHARDS: usize = 16;
/// application_names remembered per row (space-saving top-k).
const TOP_APPS: usize = 5;

/// Accumulated statistics of one row.
#[derive(Clone)]
pub(crate) struct QueryStats {
    pub normalized: Arc<str>,
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    pub total_us: u64,
    pub hist: Histogram,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub apps: Vec<(Box<str>, u64)>,
}

impl QueryStats {
    fn new(normalized: Arc<str>, now: SystemTime) -> Self {
        QueryStats {
            normalized,
            calls: 0,
            errors: 0,
            rows: 0,
            total_us: 0,
            hist: Histogram::default(),
            first_seen: now,
            last_seen: now,
            apps: Vec::new(),
        }
    }

    fn add(&mut self, app: &str, us: u64, rows: u64, error: bool, now: SystemTime) {
        self.calls += 1;
        self.errors += u64::from(error);
        self.rows += rows;
        self.total_us = self.total_us.saturating_add(us);
        self.hist.record(us);
        self.last_seen = self.last_seen.max(now);
        self.add_app(app, 1);
    }

    fn add_app(&mut self, app: &str, n: u64) {
        if let Some(e) = self.apps.iter_mut().find(|(a, _)| &**a == app) {
            e.1 += n;
        } else if self.apps.len() < TOP_APPS {
            self.apps.push((Box::from(app), n));
        } else if let Some(min) = self.apps.iter_mut().min_by_key(|(_, c)| *c) {
            // Space-saving: the newcomer inherits the smallest count.
            *min = (Box::from(app), min.1 + n);
        }
    }

    fn fold(&mut self, other: &QueryStats) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.rows += other.rows;
        self.total_us = self.total_us.saturating_add(other.total_us);
        self.hist.merge(&other.hist);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        for (app, n) in &other.apps {
            self.add_app(app, *n);
        }
    }
}

type Shard = Mutex<HashMap<u64, Box<QueryStats>, crate::sql::BuildPassThrough>>;

pub(crate) struct DbStats {
    shards: Box<[Shard]>,
    other: Mutex<Option<QueryStats>>,
}

impl DbStats {
    fn new() -> Self {
        DbStats {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            other: Mutex::new(None),
        }
    }
    fn shard(&self, fp: u64) -> &Shard {
        &self.shards[(fp >> 40) as usize % SHARDS]
    }
}

/// One row of a statistics snapshot.
#[derive(Debug, Clone)]
pub struct QuerySummary {
    pub database: String,
    /// `None` for the "other" row (fingerprints folded away by the bound).
    pub fingerprint: Option<u64>,
    pub query: Arc<str>,
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    pub total_time: Duration,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Top application_names by calls, most frequent first.
    pub application_names: Vec<(String, u64)>,
}

pub(crate) struct QueryStore {
    dbs: RwLock<HashMap<Box<str>, Arc<DbStats>>>,
    count: AtomicUsize,
    max: usize,
    sweeping: Mutex<()>,
}

impl QueryStore {
    pub(crate) fn new(max: usize) -> Self {
        QueryStore {
            dbs: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
            max: max.max(1),
            sweeping: Mutex::new(()),
        }
    }

    /// The statistics of database `db` (created empty if it has none yet; never removed, so
    /// a caller may keep the handle).
    pub(crate) fn db(&self, db: &str) -> Arc<DbStats> {
        if let Some(stats) = self.dbs.read().get(db) {
            return Arc::clone(stats);
        }
        Arc::clone(
            self.dbs
                .write()
                .entry(Box::from(db))
                .or_insert_with(|| Arc::new(DbStats::new())),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &self,
        stats: &DbStats,
        app: &str,
        a: &Analysis,
        us: u64,
        rows: u64,
        err: bool,
        now: SystemTime,
    ) {
        let mut shard = stats.shard(a.fingerprint).lock();
        let row = shard.entry(a.fingerprint).or_insert_with(|| {
            self.count.fetch_add(1, Ordering::Relaxed);
            Box::new(QueryStats::new(Arc::clone(&a.normalized), now))
        });
        row.add(app, us, rows, err, now);
    }

    /// Call after `record` (with no lock held): sweeps when over the bound.
    pub(crate) fn maybe_sweep(&self) {
        if self.count.load(Ordering::Relaxed) > self.max {
            self.sweep();
        }
    }

    /// Folds the rows with the least total time into "other" until 90 % of `max` remain.
    fn sweep(&self) {
        let Some(_guard) = self.sweeping.try_lock() else {
            return;
        };
        let dbs = self.dbs.read();
        let mut all: Vec<(&str, u64, u64)> = Vec::new();
        for (name, db) in dbs.iter() {
            for shard in db.shards.iter() {
                all.extend(
                    shard
                        .lock()
                        .iter()
                        .map(|(fp, s)| (&**name, *fp, s.total_us)),
                );
            }
        }
        let keep = self.max - self.max / 10;
        if all.len() <= keep {
            return;
        }
        let victims = all.len() - keep;
        all.select_nth_unstable_by_key(victims - 1, |v| v.2);
        for (name, fp, _) in &all[..victims] {
            let Some(db) = dbs.get(*name) else { continue };
            let Some(row) = db.shard(*fp).lock().remove(fp) else {
                continue;
            };
            self.count.fetch_sub(1, Ordering::Relaxed);
            let mut other = db.other.lock();
            other
                .get_or_insert_with(|| QueryStats::new(Arc::from("<other>"), row.first_seen))
                .fold(&row);
        }
    }

    /// All rows, ordered by total time, descending.
    pub(crate) fn snapshot(&self) -> Vec<QuerySummary> {
        let dbs = self.dbs.read();
        let mut out = Vec::new();
        for (name, db) in dbs.iter() {
            for shard in db.shards.iter() {
                for (fp, s) in shard.lock().iter() {
                    out.push(summary(name, Some(*fp), s));
                }
            }
            if let Some(o) = db.other.lock().as_ref() {
                out.push(summary(name, None, o));
            }
        }
        out.sort_by(|a, b| b.total_time.cmp(&a.total_time).then(a.query.cmp(&b.query)));
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

fn summary(db: &str, fingerprint: Option<u64>, s: &QueryStats) -> QuerySummary {
    let mut apps: Vec<(String, u64)> = s.apps.iter().map(|(a, n)| (a.to_string(), *n)).collect();
    apps.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    QuerySummary {
        database: db.to_string(),
        fingerprint,
        query: Arc::clone(&s.normalized),
        calls: s.calls,
        errors: s.errors,
        rows: s.rows,
        total_time: Duration::from_micros(s.total_us),
        mean_us: s.total_us.checked_div(s.calls).unwrap_or(0),
        p50_us: s.hist.quantile(0.50),
        p95_us: s.hist.quantile(0.95),
        p99_us: s.hist.quantile(0.99),
        first_seen: s.first_seen,
        last_seen: s.last_seen,
        application_names: apps,
    }
}
