//! Shared record of detected query patterns: the bounded ring of recent events (`SHOW
//! N_PLUS_ONE`, newest first; an open burst's event is updated in place), per-fingerprint
//! totals (`SHOW N_PLUS_ONE_TOTALS`) and the per-(database, user) counters exported to
//! Prometheus. Touched only when a burst is detected, continues or ends — never per query.

use crate::clock::Tick;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Per-fingerprint totals kept at most (least recently seen evicted).
const TOTALS_MAX: usize = 10_000;

/// Which pattern a burst is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// Same statement shape, many distinct parameter sets, back to back: N+1.
    NPlusOne,
    /// Same statement shape with identical parameters repeated: a cache candidate.
    Duplicate,
}

impl PatternKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PatternKind::NPlusOne => "n+1",
            PatternKind::Duplicate => "duplicate",
        }
    }
}

/// One detected burst, as shown by `SHOW N_PLUS_ONE`. Parameters are never stored.
#[derive(Debug, Clone)]
pub struct PatternEvent {
    pub id: u64,
    pub kind: PatternKind,
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub application_name: Arc<str>,
    pub client_addr: Arc<str>,
    pub fingerprint: u64,
    /// Normalized statement that repeated.
    pub statement: Arc<str>,
    /// Normalized statement that preceded the run (the list query), if any.
    pub source: Option<Arc<str>>,
    /// Executions in the run so far (including those before detection).
    pub count: u64,
    /// Distinct parameter sets seen (exact up to 256, estimated above).
    pub distinct_params: u64,
    /// Wall-clock time of detection.
    pub detected_at: SystemTime,
    /// First to latest execution of the run.
    pub span: Duration,
    /// Server time reported via `on_complete` for the run's executions.
    pub server_time: Duration,
    /// Suggested single-query rewrite (`col = any($1)`), for lookups.
    pub suggestion: Option<String>,
    /// The run is still going on.
    pub open: bool,
}

/// Totals of one (database, fingerprint) row.
#[derive(Debug, Clone)]
pub struct PatternTotals {
    pub database: Arc<str>,
    pub fingerprint: u64,
    pub statement: Arc<str>,
    pub n_plus_one_bursts: u64,
    pub duplicate_bursts: u64,
    /// Executions inside those bursts.
    pub queries: u64,
    pub last_seen: SystemTime,
}

/// (database, user) of a counter.
type DbUser = (Arc<str>, Arc<str>);
/// (database, fingerprint, kind) of a log limit.
type Pattern = (Arc<str>, u64, PatternKind);

pub(crate) struct EventLog {
    ring: Mutex<VecDeque<Arc<Mutex<PatternEvent>>>>,
    max: usize,
    next_id: AtomicU64,
    totals: Mutex<HashMap<(Arc<str>, u64), PatternTotals>>,
    counters: Mutex<HashMap<DbUser, [u64; 2]>>,
    /// When the WARN line of a (database, fingerprint, kind) may next be written, and the
    /// bursts not logged since the last one: shared by every client.
    logged: Mutex<HashMap<Pattern, (Tick, u64)>>,
}

impl EventLog {
    pub(crate) fn new(max: usize) -> Self {
        EventLog {
            ring: Mutex::new(VecDeque::new()),
            max: max.max(1),
            next_id: AtomicU64::new(1),
            totals: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds an event to the ring; the caller keeps the handle to update it in place.
    pub(crate) fn push(&self, e: PatternEvent) -> Arc<Mutex<PatternEvent>> {
        let e = Arc::new(Mutex::new(e));
        let mut ring = self.ring.lock();
        if ring.len() >= self.max {
            ring.pop_front();
        }
        ring.push_back(Arc::clone(&e));
        e
    }

    /// Whether a burst detected at `now` gets its log lines: the first burst of a
    /// (database, fingerprint, kind) does, and then the first after `cooldown` has passed,
    /// whichever client it comes from, so a thousand clients running one pattern write one
    /// line per cooldown, not one each. `Some(n)`: log it, `n` bursts went unlogged since the
    /// last line. Events, notices and counters are not limited.
    pub(crate) fn may_log(
        &self,
        db: &Arc<str>,
        fingerprint: u64,
        kind: PatternKind,
        now: Tick,
        cooldown: Duration,
    ) -> Option<u64> {
        let mut m = self.logged.lock();
        if m.len() >= TOTALS_MAX {
            m.retain(|_, (until, _)| *until > now);
            if m.len() >= TOTALS_MAX {
                m.clear();
            }
        }
        let (until, skipped) = m
            .entry((Arc::clone(db), fingerprint, kind))
            .or_insert((now, 0));
        if *until > now {
            *skipped += 1;
            return None;
        }
        *until = now + cooldown;
        Some(std::mem::take(skipped))
    }

    /// Counts a detected burst (also those suppressed by the cooldown).
    pub(crate) fn count_burst(&self, db: &Arc<str>, user: &Arc<str>, kind: PatternKind) {
        let mut c = self.counters.lock();
        let slot = c.entry((Arc::clone(db), Arc::clone(user))).or_default();
        slot[kind as usize] += 1;
    }

    /// Adds to the totals row of (db, fingerprint): `burst` counts a new burst of `kind`,
    /// `queries` executions.
    pub(crate) fn add_totals(
        &self,
        db: &Arc<str>,
        fingerprint: u64,
        statement: &Arc<str>,
        kind: Option<PatternKind>,
        queries: u64,
    ) {
        let now = SystemTime::now();
        let mut t = self.totals.lock();
        let key = (Arc::clone(db), fingerprint);
        if !t.contains_key(&key) && t.len() >= TOTALS_MAX {
            let oldest = t
                .iter()
                .min_by_key(|(_, v)| v.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                t.remove(&k);
            }
        }
        let row = t.entry(key).or_insert_with(|| PatternTotals {
            database: Arc::clone(db),
            fingerprint,
            statement: Arc::clone(statement),
            n_plus_one_bursts: 0,
            duplicate_bursts: 0,
            queries: 0,
            last_seen: now,
        });
        match kind {
            Some(PatternKind::NPlusOne) => row.n_plus_one_bursts += 1,
            Some(PatternKind::Duplicate) => row.duplicate_bursts += 1,
            None => {}
        }
        row.queries += queries;
        row.last_seen = now;
    }

    /// Recent events, newest first.
    pub(crate) fn events(&self) -> Vec<PatternEvent> {
        let ring = self.ring.lock();
        ring.iter().rev().map(|e| e.lock().clone()).collect()
    }

    /// Totals rows ordered by executions in bursts, descending.
    pub(crate) fn totals(&self) -> Vec<PatternTotals> {
        let mut v: Vec<PatternTotals> = self.totals.lock().values().cloned().collect();
        v.sort_by(|a, b| {
            b.queries
                .cmp(&a.queries)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        v
    }

    /// Counter values for `kind`, keyed (database, user), sorted.
    pub(crate) fn counters(&self, kind: PatternKind) -> Vec<((String, String), u64)> {
        let mut v: Vec<_> = self
            .counters
            .lock()
            .iter()
            .map(|((d, u), c)| ((d.to_string(), u.to_string()), c[kind as usize]))
            .collect();
        v.sort();
        v
    }
}
