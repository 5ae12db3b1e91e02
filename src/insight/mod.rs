//! Query insight: per-fingerprint statistics (`SHOW QUERIES`), per-client N+1 and
//! duplicate-query detection (`SHOW N_PLUS_ONE`, `SHOW N_PLUS_ONE_TOTALS`, Prometheus
//! counters, WARN log lines, optional client notices). [`Insight`] is shared by all client
//! tasks; each client owns a [`SessionDetector`]. Built on [`crate::sql::Analysis`].

mod detector;
mod events;
mod histogram;
mod notice;
mod stats;
mod table;

#[cfg(test)]
mod tests;

pub use detector::SessionDetector;
pub use events::{PatternEvent, PatternKind, PatternTotals};
pub use notice::{Notice, NOTICE_SEVERITY, NOTICE_SQLSTATE};
pub use stats::QuerySummary;
pub use table::Table;

use crate::clock::Tick;
use crate::sql::Analysis;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Insight settings (the `[insight]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsightConfig {
    /// Master switch: when false, `record` and the detectors do nothing.
    pub enabled: bool,
    /// Fingerprints kept in `SHOW QUERIES` (all databases together); the rest are folded
    /// into one "other" row per database.
    pub query_stats_max: usize,
    /// Executions (and distinct parameter sets) that make a burst.
    pub n_plus_one_threshold: u32,
    /// Time within which `n_plus_one_threshold` executions must fall.
    pub n_plus_one_window: Duration,
    /// After an event for a (client, fingerprint, kind), further bursts within this time are
    /// counted but raise no event, log line or notice.
    pub n_plus_one_cooldown: Duration,
    /// Events kept for `SHOW N_PLUS_ONE`.
    pub events_max: usize,
}

impl Default for InsightConfig {
    fn default() -> Self {
        InsightConfig {
            enabled: true,
            query_stats_max: 5_000,
            n_plus_one_threshold: 10,
            n_plus_one_window: Duration::from_secs(1),
            n_plus_one_cooldown: Duration::from_secs(60),
            events_max: 1_000,
        }
    }
}

/// Who a client session is, for attributing its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    pub database: String,
    pub user: String,
    pub application_name: String,
    pub client_addr: String,
}

/// The per-statement statistics of one database (see [`Insight::queries_of`]).
pub struct DbQueries(Arc<stats::DbStats>);

/// Shared insight state. `&self` everywhere; put it in an `Arc`.
pub struct Insight {
    config: InsightConfig,
    stats: stats::QueryStore,
    events: Arc<events::EventLog>,
}

impl Insight {
    pub fn new(config: InsightConfig) -> Self {
        Insight {
            stats: stats::QueryStore::new(config.query_stats_max),
            events: Arc::new(events::EventLog::new(config.events_max)),
            config,
        }
    }

    pub fn config(&self) -> &InsightConfig {
        &self.config
    }

    /// Records one completed statement (call at CommandComplete/ErrorResponse).
    pub fn record(
        &self,
        database: &str,
        application_name: &str,
        a: &Analysis,
        duration: Duration,
        rows: u64,
        error: bool,
    ) {
        let at = Tick::now();
        let db = self.queries_of(database);
        self.record_to(&db, application_name, a, (duration, at), rows, error);
    }

    /// The statistics of one database, for a caller that records many statements there (a
    /// client session): [`Insight::record_to`] then skips finding them by name.
    pub fn queries_of(&self, database: &str) -> DbQueries {
        DbQueries(self.stats.db(database))
    }

    /// [`Insight::record`] into `db`; `done` is the statement's duration and when it ended.
    pub fn record_to(
        &self,
        db: &DbQueries,
        application_name: &str,
        a: &Analysis,
        done: (Duration, Tick),
        rows: u64,
        error: bool,
    ) {
        if !self.config.enabled {
            return;
        }
        let us = u64::try_from(done.0.as_micros()).unwrap_or(u64::MAX);
        let at = UNIX_EPOCH + Duration::from_micros(done.1.wall_us());
        self.stats
            .add(&db.0, application_name, a, us, rows, error, at);
        self.stats.maybe_sweep();
    }

    /// A detector for a new client session.
    pub fn new_session(&self, ctx: SessionContext) -> SessionDetector {
        SessionDetector::new(&self.config, ctx, Arc::clone(&self.events))
    }

    /// Statistics rows, by total time descending (the "other" rows included).
    pub fn query_summaries(&self) -> Vec<QuerySummary> {
        self.stats.snapshot()
    }

    /// Distinct fingerprints currently tracked (excluding "other" rows).
    pub fn tracked_fingerprints(&self) -> usize {
        self.stats.len()
    }

    /// Recent pattern events, newest first.
    pub fn events(&self) -> Vec<PatternEvent> {
        self.events.events()
    }

    /// Per-(database, fingerprint) pattern totals, most executions first.
    pub fn pattern_totals(&self) -> Vec<PatternTotals> {
        self.events.totals()
    }

    /// `pgferry_n_plus_one_bursts_total{database,user}`: every detected N+1 burst, including
    /// those whose event was suppressed by the cooldown.
    pub fn n_plus_one_bursts_total(&self) -> Vec<((String, String), u64)> {
        self.events.counters(PatternKind::NPlusOne)
    }

    /// `pgferry_duplicate_queries_total{database,user}`: every detected duplicate burst.
    pub fn duplicate_queries_total(&self) -> Vec<((String, String), u64)> {
        self.events.counters(PatternKind::Duplicate)
    }
}
