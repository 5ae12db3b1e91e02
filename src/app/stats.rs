//! PgBouncer's statistics per database: totals (sums of the counters of the database's pools)
//! and averages over the last `stats_period`, refreshed by a periodic task started with the
//! app. Pools replaced by RELOAD are kept here so totals never go backwards.

use super::App;
use crate::pool::Pool;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// One row of SHOW STATS_TOTALS (or, from [`Totals::average`], of SHOW STATS_AVERAGES).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub server_assignment_count: u64,
    pub xact_count: u64,
    pub query_count: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Microseconds.
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
    pub client_parse_count: u64,
    pub server_parse_count: u64,
    pub bind_count: u64,
    pub client_login_count: u64,
}

impl Totals {
    /// The counters of one pool now.
    pub fn of_pool(p: &Pool) -> Totals {
        let s = &p.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            server_assignment_count: l(&s.checkouts),
            xact_count: l(&s.xacts),
            query_count: l(&s.queries),
            bytes_received: l(&s.bytes_received),
            bytes_sent: l(&s.bytes_sent),
            xact_time: l(&s.xact_time_us),
            query_time: l(&s.query_time_us),
            wait_time: l(&s.wait_us_total),
            client_parse_count: l(&s.client_parses),
            server_parse_count: l(&s.server_parses),
            bind_count: l(&s.binds),
            client_login_count: l(&s.logins),
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.server_assignment_count += o.server_assignment_count;
        self.xact_count += o.xact_count;
        self.query_count += o.query_count;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.xact_time += o.xact_time;
        self.query_time += o.query_time;
        self.wait_time += o.wait_time;
        self.client_parse_count += o.client_parse_count;
        self.server_parse_count += o.server_parse_count;
        self.bind_count += o.bind_count;
        self.client_login_count += o.client_login_count;
    }

    /// PgBouncer's averages between two snapshots `dur` apart: counts and bytes per second;
    /// xact_time / query_time in µs per transaction / query; wait_time in µs per assignment.
    pub fn average(cur: &Totals, old: &Totals, dur: Duration) -> Totals {
        let us = dur.as_micros() as u64;
        if us == 0 {
            return Totals::default();
        }
        let rate =
            |c: u64, o: u64| (u128::from(c.saturating_sub(o)) * 1_000_000 / u128::from(us)) as u64;
        let mean = |tc: u64, to: u64, nc: u64, no: u64| {
            let n = nc.saturating_sub(no);
            tc.saturating_sub(to).checked_div(n).unwrap_or(0)
        };
        Totals {
            server_assignment_count: rate(cur.server_assignment_count, old.server_assignment_count),
            xact_count: rate(cur.xact_count, old.xact_count),
            query_count: rate(cur.query_count, old.query_count),
            bytes_received: rate(cur.bytes_received, old.bytes_received),
            bytes_sent: rate(cur.bytes_sent, old.bytes_sent),
            xact_time: mean(cur.xact_time, old.xact_time, cur.xact_count, old.xact_count),
            query_time: mean(
                cur.query_time,
                old.query_time,
                cur.query_count,
                old.query_count,
            ),
            wait_time: mean(
                cur.wait_time,
                old.wait_time,
                cur.server_assignment_count,
                old.server_assignment_count,
            ),
            client_parse_count: rate(cur.client_parse_count, old.client_parse_count),
            server_parse_count: rate(cur.server_parse_count, old.server_parse_count),
            bind_count: rate(cur.bind_count, old.bind_count),
            client_login_count: rate(cur.client_login_count, old.client_login_count),
        }
    }
}

/// Statistics state of one instance.
#[derive(Default)]
pub struct StatsState {
    /// Averages per database over the last completed period.
    averages: Mutex<BTreeMap<String, Totals>>,
    /// Totals per database at the last tick.
    last: Mutex<Option<(Instant, BTreeMap<String, Totals>)>>,
    /// Pools a RELOAD replaced; they serve their remaining clients and keep counting.
    pub retired: Mutex<Vec<Arc<Pool>>>,
}

impl App {
    /// Every pool, including those a RELOAD replaced (sorted by database, user).
    pub fn all_pools(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<Arc<Pool>> = self.pools.iter().map(|p| p.value().clone()).collect();
        v.extend(self.stats.retired.lock().iter().cloned());
        v.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        v
    }

    /// Totals per database now (databases with at least one pool).
    pub fn database_totals(&self) -> BTreeMap<String, Totals> {
        let mut out: BTreeMap<String, Totals> = BTreeMap::new();
        for p in self.all_pools() {
            out.entry(p.database.clone())
                .or_default()
                .add(&Totals::of_pool(&p));
        }
        out
    }

    /// Averages per database over the last completed `stats_period` (zero before the first).
    pub fn database_averages(&self) -> BTreeMap<String, Totals> {
        let mut avg = self.stats.averages.lock().clone();
        for db in self.database_totals().into_keys() {
            avg.entry(db).or_default();
        }
        avg
    }

    /// Closes the period: averages become (now − last tick) / elapsed.
    pub fn refresh_averages(&self) {
        let now = Instant::now();
        let cur = self.database_totals();
        let mut last = self.stats.last.lock();
        if let Some((t0, old)) = last.as_ref() {
            let dur = now.duration_since(*t0);
            let avg = cur
                .iter()
                .map(|(db, c)| {
                    let o = old.get(db).copied().unwrap_or_default();
                    (db.clone(), Totals::average(c, &o, dur))
                })
                .collect();
            *self.stats.averages.lock() = avg;
        }
        *last = Some((now, cur));
    }
}

/// Starts the task that refreshes averages every `stats_period` (re-read each time, so SET and
/// RELOAD apply). It ends when the app is dropped.
pub fn spawn(app: &Arc<App>) {
    let weak: Weak<App> = Arc::downgrade(app);
    app.refresh_averages();
    tokio::spawn(async move {
        loop {
            let period = match weak.upgrade() {
                Some(app) => app
                    .config
                    .load()
                    .pgferry
                    .stats_period()
                    .unwrap_or(Duration::from_secs(60)),
                None => return,
            };
            tokio::time::sleep(period).await;
            let Some(app) = weak.upgrade() else { return };
            app.refresh_averages();
            if app.config.load().pgferry.log_stats {
                log_averages(&app);
            }
        }
    });
}

/// Marks clients that have waited query_wait_notify or their pool's query_wait_timeout for a
/// server, and asks clients idle for client_park_delay to park, four times a second (as
/// PgBouncer's periodic check does), so a waiting or idle client arms no timer of its own.
/// It ends when the app is dropped.
pub fn spawn_wait_notices(app: &Arc<App>) {
    let weak: Weak<App> = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            check_clients(&app);
        }
    });
}

fn check_clients(app: &App) {
    use crate::app::registry::ClientState;
    use std::sync::atomic::Ordering::Relaxed;
    let (notify, park) = {
        let cfg = app.config.load();
        let us = |s: f64| crate::config::secs(s).map(|d| d.as_micros() as u64);
        let park = us(cfg.pgferry.client_park_delay).filter(|_| app.lot.enabled());
        (us(cfg.pgferry.query_wait_notify), park)
    };
    let now = crate::app::registry::now_us();
    for c in app.client_list.iter() {
        match c.state() {
            ClientState::Waiting => {}
            ClientState::Idle => {
                if park.is_some_and(|p| now.saturating_sub(c.request_time_us.load(Relaxed)) >= p) {
                    c.kill.ask_to_park();
                }
                continue;
            }
            ClientState::Active => continue,
        }
        let deadline = c.wait_deadline_us.load(Relaxed);
        if deadline != 0 && now >= deadline {
            c.kill.wait_timed_out();
            continue;
        }
        let since = c.wait_start_us.load(Relaxed);
        if notify.is_some_and(|n| since != 0 && now.saturating_sub(since) >= n) {
            c.kill.long_wait();
        }
    }
}

/// `log_stats`: one line per database with the averages of the period just closed, in
/// PgBouncer's wording.
fn log_averages(app: &App) {
    for (db, a) in app.stats.averages.lock().iter() {
        tracing::info!(
            "stats: db {db}: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, \
             {} binds/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
            a.xact_count,
            a.query_count,
            a.client_parse_count,
            a.server_parse_count,
            a.bind_count,
            a.bytes_received,
            a.bytes_sent,
            a.xact_time,
            a.query_time,
            a.wait_time
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_follow_pgbouncer() {
        let old = Totals {
            xact_count: 10,
            xact_time: 1000,
            query_count: 10,
            query_time: 500,
            server_assignment_count: 10,
            wait_time: 0,
            bytes_received: 100,
            ..Totals::default()
        };
        let cur = Totals {
            xact_count: 30,
            xact_time: 5000,
            query_count: 50,
            query_time: 4500,
            server_assignment_count: 30,
            wait_time: 2000,
            bytes_received: 2100,
            ..Totals::default()
        };
        let a = Totals::average(&cur, &old, Duration::from_secs(2));
        assert_eq!(a.xact_count, 10);
        assert_eq!(a.query_count, 20);
        assert_eq!(a.bytes_received, 1000);
        assert_eq!(a.xact_time, 200);
        assert_eq!(a.query_time, 100);
        assert_eq!(a.wait_time, 100);
        assert_eq!(
            Totals::average(&cur, &cur, Duration::ZERO),
            Totals::default()
        );
    }
}
