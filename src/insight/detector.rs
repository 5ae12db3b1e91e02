//! The per-client N+1 detector. It watches the *run* of consecutive statements with one
//! fingerprint (transaction control and empty statements are transparent). A run becomes
//! * an N+1 burst once ≥ `threshold` of its executions fall within `window` and it has seen
//!   ≥ `threshold` distinct parameter sets;
//! * a duplicate burst once ≥ `threshold` executions fall within `window` and one parameter
//!   set repeated ≥ `threshold` times.
//!
//! A different statement, or a pause longer than `window`, ends the run. The statement just
//! before the run is its "source". One event per burst; a burst of the same (fingerprint,
//! kind) within `cooldown` of the previous one is counted but emits no event, log or notice.
//! Memory: one run (≤ 256 parameter hashes, ≤ `threshold` timestamps) and ≤ 64 cooldowns.
//! A finished run's buffers are reused by the next (its parameter table keeps room for at
//! most 32), so the per-statement path allocates only to grow a long run's table; while a
//! burst is open each statement updates its event under the event's (uncontended) lock.
//! When the client parks, `settle` ends a run whose window has passed and lets the spare
//! buffers go.

use super::events::{EventLog, PatternEvent, PatternKind};
use super::notice::{notice_for, Notice};
use super::SessionContext;
use crate::clock::Tick;
use crate::sql::{Analysis, BuildPassThrough, StatementKind};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const MAX_PARAMS: usize = 256;
/// Parameter hashes a finished run's table may keep room for when it is kept for the next
/// run: a table that grew to `MAX_PARAMS` is ~9 KB, which an idle client should not hold.
const SPARE_PARAMS: usize = 32;
const MAX_COOLDOWNS: usize = 64;
const MAX_THRESHOLD: u32 = 1024;

#[derive(Default)]
struct Burst {
    event: Option<Arc<Mutex<PatternEvent>>>,
    /// Its detection was logged, so its end is too (see `EventLog::may_log`).
    logged: bool,
    /// `count` already added to the totals.
    reported: u64,
}

struct Run {
    analysis: Arc<Analysis>,
    source: Option<Arc<Analysis>>,
    count: u64,
    first: Tick,
    last: Tick,
    recent: VecDeque<Tick>,
    params: HashMap<u64, u32, BuildPassThrough>,
    distinct: u64,
    max_repeat: u32,
    server_time: Duration,
    bursts: [Option<Burst>; 2],
}

impl Run {
    /// Whether the run is still going at `now`: no pause longer than `window` since its last
    /// statement (a pause that long ends it).
    fn goes_on_at(&self, now: Tick, window: Duration) -> bool {
        now.since(self.last) <= window
    }
}

/// Detects N+1 and duplicate bursts for one client connection. Owned by the client task.
pub struct SessionDetector {
    enabled: bool,
    threshold: u32,
    window: Duration,
    cooldown: Duration,
    ctx: Ctx,
    log: Arc<EventLog>,
    last: Option<Arc<Analysis>>,
    run: Option<Run>,
    /// Spare buffers of a finished run, reused by the next.
    spare: Option<(VecDeque<Tick>, HashMap<u64, u32, BuildPassThrough>)>,
    cooldowns: Vec<(u64, PatternKind, Tick)>,
}

pub(crate) struct Ctx {
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub application_name: Arc<str>,
    pub client_addr: Arc<str>,
}

impl SessionDetector {
    pub(crate) fn new(
        config: &super::InsightConfig,
        ctx: SessionContext,
        log: Arc<EventLog>,
    ) -> Self {
        SessionDetector {
            enabled: config.enabled,
            threshold: config.n_plus_one_threshold.clamp(2, MAX_THRESHOLD),
            window: config.n_plus_one_window,
            cooldown: config.n_plus_one_cooldown,
            ctx: Ctx {
                database: Arc::from(ctx.database),
                user: Arc::from(ctx.user),
                application_name: Arc::from(ctx.application_name),
                client_addr: Arc::from(ctx.client_addr),
            },
            log,
            last: None,
            run: None,
            spare: None,
            cooldowns: Vec::new(),
        }
    }

    /// The client changed `application_name` (SET or ParameterStatus).
    pub fn set_application_name(&mut self, name: &str) {
        self.ctx.application_name = Arc::from(name);
    }

    /// The client has gone idle (it is being parked). A run whose window has passed ends now,
    /// as the client's next statement would end it; buffers kept for the next run and expired
    /// cooldowns are let go, so an idle client that ran a burst holds no parameter table.
    /// A run still within its window (`n_plus_one_window` longer than `client_park_delay`)
    /// is kept as it is: a statement soon after continues it.
    pub fn settle(&mut self, now: Tick) {
        if self
            .run
            .as_ref()
            .is_some_and(|r| !r.goes_on_at(now, self.window))
        {
            self.close_run();
        }
        self.spare = None;
        expire_cooldowns(&mut self.cooldowns, now);
        self.cooldowns.shrink_to_fit();
    }

    /// Parameter hashes the detector has room for, in its run and its spare table.
    #[cfg(test)]
    pub(crate) fn params_room(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.params.capacity())
            + self.spare.as_ref().map_or(0, |s| s.1.capacity())
    }

    /// A statement was sent. `params_hash`: hash of the Bind parameter bytes (extended
    /// protocol) or of the raw text (simple protocol, literals inline). Returns a notice
    /// exactly once per reported burst, when it is detected.
    pub fn on_statement(
        &mut self,
        now: Tick,
        a: &Arc<Analysis>,
        params_hash: u64,
    ) -> Option<Notice> {
        if !self.enabled || matches!(a.kind, StatementKind::Transaction | StatementKind::Empty) {
            return None;
        }
        let continues = self.run.as_ref().is_some_and(|r| {
            r.analysis.fingerprint == a.fingerprint && r.goes_on_at(now, self.window)
        });
        if !continues {
            self.close_run();
            let source = self.last.take().filter(|l| l.fingerprint != a.fingerprint);
            let (recent, params) = self.spare.take().unwrap_or_default();
            self.run = Some(Run {
                analysis: Arc::clone(a),
                source,
                count: 0,
                first: now,
                last: now,
                recent,
                params,
                distinct: 0,
                max_repeat: 0,
                server_time: Duration::ZERO,
                bursts: [None, None],
            });
            self.last = Some(Arc::clone(a));
        }
        let threshold = self.threshold;
        let window = self.window;
        let run = self.run.as_mut()?;
        run.count += 1;
        run.last = now;
        run.recent.push_back(now);
        if run.recent.len() > threshold as usize {
            run.recent.pop_front();
        }
        if let Some(c) = run.params.get_mut(&params_hash) {
            *c += 1;
            run.max_repeat = run.max_repeat.max(*c);
        } else {
            if run.params.len() < MAX_PARAMS {
                run.params.insert(params_hash, 1);
            }
            run.distinct += 1;
            run.max_repeat = run.max_repeat.max(1);
        }
        let in_window = run.recent.len() >= threshold as usize
            && run.recent.front().is_some_and(|f| now.since(*f) <= window);
        for open in run.bursts.iter() {
            if let Some(Burst { event: Some(e), .. }) = open {
                update(&mut e.lock(), run);
            }
        }
        let mut notice = None;
        if in_window && run.bursts[0].is_none() && run.distinct >= u64::from(threshold) {
            notice = self.detect(now, PatternKind::NPlusOne);
        }
        let run = self.run.as_ref()?;
        if in_window && run.bursts[1].is_none() && run.max_repeat >= threshold {
            notice = notice.or(self.detect(now, PatternKind::Duplicate));
        }
        notice
    }

    /// The server finished the last statement after `duration`.
    pub fn on_complete(&mut self, duration: Duration) {
        let Some(run) = self.run.as_mut() else { return };
        run.server_time += duration;
        for b in run.bursts.iter().flatten() {
            if let Some(e) = &b.event {
                e.lock().server_time = run.server_time;
            }
        }
    }

    fn detect(&mut self, now: Tick, kind: PatternKind) -> Option<Notice> {
        let ctx = &self.ctx;
        let run = self.run.as_mut()?;
        let fp = run.analysis.fingerprint;
        self.log.count_burst(&ctx.database, &ctx.user, kind);
        self.log.add_totals(
            &ctx.database,
            fp,
            &run.analysis.normalized,
            Some(kind),
            run.count,
        );
        let mut burst = Burst {
            event: None,
            logged: false,
            reported: run.count,
        };
        expire_cooldowns(&mut self.cooldowns, now);
        if self.cooldowns.iter().any(|c| c.0 == fp && c.1 == kind) {
            run.bursts[kind as usize] = Some(burst);
            return None;
        }
        if self.cooldowns.len() >= MAX_COOLDOWNS {
            self.cooldowns.remove(0);
        }
        self.cooldowns.push((fp, kind, now + self.cooldown));
        let suggestion = match kind {
            PatternKind::NPlusOne => run.analysis.lookup.as_ref().and_then(|l| l.rewrite.clone()),
            PatternKind::Duplicate => None,
        };
        let mut ev = PatternEvent {
            id: self.log.next_id(),
            kind,
            database: Arc::clone(&ctx.database),
            user: Arc::clone(&ctx.user),
            application_name: Arc::clone(&ctx.application_name),
            client_addr: Arc::clone(&ctx.client_addr),
            fingerprint: fp,
            statement: Arc::clone(&run.analysis.normalized),
            source: run.source.as_ref().map(|s| Arc::clone(&s.normalized)),
            count: 0,
            distinct_params: 0,
            detected_at: SystemTime::now(),
            span: Duration::ZERO,
            server_time: Duration::ZERO,
            suggestion,
            open: true,
        };
        update(&mut ev, run);
        let unlogged = self
            .log
            .may_log(&ctx.database, fp, kind, now, self.cooldown);
        burst.logged = unlogged.is_some();
        if let Some(unlogged) = unlogged {
            tracing::warn!(
                kind = kind.as_str(),
                database = &*ev.database,
                user = &*ev.user,
                application_name = &*ev.application_name,
                client_addr = &*ev.client_addr,
                fingerprint = %format_args!("{fp:016x}"),
                statement = &*ev.statement,
                source = ev.source.as_deref().unwrap_or(""),
                count = ev.count,
                distinct_params = ev.distinct_params,
                span_ms = ev.span.as_millis() as u64,
                unlogged,
                "query pattern detected"
            );
        }
        let notice = notice_for(&ev, run.analysis.lookup.as_ref());
        burst.event = Some(self.log.push(ev));
        run.bursts[kind as usize] = Some(burst);
        Some(notice)
    }

    /// Ends the current run: final numbers into its events and totals, cooldowns refreshed.
    fn close_run(&mut self) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        let bursts = std::mem::take(&mut run.bursts);
        for (i, b) in bursts.into_iter().enumerate() {
            let Some(b) = b else { continue };
            let kind = if i == 0 {
                PatternKind::NPlusOne
            } else {
                PatternKind::Duplicate
            };
            let fp = run.analysis.fingerprint;
            let extra = run.count.saturating_sub(b.reported);
            self.log.add_totals(
                &self.ctx.database,
                fp,
                &run.analysis.normalized,
                None,
                extra,
            );
            if let Some(c) = self.cooldowns.iter_mut().find(|c| c.0 == fp && c.1 == kind) {
                c.2 = c.2.max(run.last + self.cooldown);
            }
            if let Some(e) = b.event {
                let mut e = e.lock();
                update(&mut e, &run);
                e.open = false;
                if b.logged {
                    tracing::info!(
                        kind = kind.as_str(),
                        database = &*e.database,
                        user = &*e.user,
                        fingerprint = %format_args!("{fp:016x}"),
                        count = e.count,
                        span_ms = e.span.as_millis() as u64,
                        server_time_ms = e.server_time.as_millis() as u64,
                        "query pattern ended"
                    );
                }
            }
        }
        run.recent.clear();
        run.params.clear();
        run.params.shrink_to(SPARE_PARAMS);
        self.spare = Some((run.recent, run.params));
    }
}

/// Drops the cooldowns (fingerprint, kind, until) that have run out by `now`.
fn expire_cooldowns(cooldowns: &mut Vec<(u64, PatternKind, Tick)>, now: Tick) {
    cooldowns.retain(|c| c.2 > now);
}

fn update(e: &mut PatternEvent, run: &Run) {
    e.count = run.count;
    e.distinct_params = run.distinct;
    e.span = run.last.since(run.first);
    e.server_time = run.server_time;
}

impl Drop for SessionDetector {
    fn drop(&mut self) {
        self.close_run();
    }
}
