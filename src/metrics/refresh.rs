//! Scrape-time refresh: copies pgferry's counters and current state into the recorder's gauges
//! and counters. Pools of the same (database, user) — a live one and ones a RELOAD replaced —
//! are summed, so counters never go backwards.

use super::{labels, Metrics};
use crate::app::registry::{now_us, ClientState};
use crate::app::App;
use metrics::Label;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// (name, unit, help, kind: c = counter, g = gauge, h = histogram), for `# HELP` lines and
/// docs/metrics.md.
pub(super) const DESCRIPTIONS: &[(&str, &str, &str, char)] = &[
    (
        "pgferry_client_connections",
        "",
        "Client connections by state (active, waiting, idle).",
        'g',
    ),
    (
        "pgferry_server_connections",
        "",
        "Server connections by state (active, idle).",
        'g',
    ),
    (
        "pgferry_waiting_clients",
        "",
        "Clients waiting for a server connection.",
        'g',
    ),
    (
        "pgferry_max_wait_seconds",
        "seconds",
        "How long the oldest waiting client has waited.",
        'g',
    ),
    (
        "pgferry_pool_size",
        "",
        "Configured server connections per pool.",
        'g',
    ),
    (
        "pgferry_max_client_connections",
        "",
        "max_client_conn setting.",
        'g',
    ),
    (
        "pgferry_connected_clients",
        "",
        "Client connections open now, including logins in progress.",
        'g',
    ),
    (
        "pgferry_parked_clients",
        "",
        "Idle clients parked now (client_park_delay).",
        'g',
    ),
    (
        "pgferry_database_paused",
        "",
        "1 while the database is paused (PAUSE, KILL, SUSPEND).",
        'g',
    ),
    (
        "pgferry_database_disabled",
        "",
        "1 while the database is disabled (DISABLE).",
        'g',
    ),
    (
        "pgferry_transactions_total",
        "",
        "Transactions completed.",
        'c',
    ),
    ("pgferry_queries_total", "", "Queries completed.", 'c'),
    (
        "pgferry_server_assignments_total",
        "",
        "Times a server connection was assigned to a client.",
        'c',
    ),
    (
        "pgferry_server_connects_total",
        "",
        "Server connections opened.",
        'c',
    ),
    (
        "pgferry_received_bytes_total",
        "bytes",
        "Bytes received from clients.",
        'c',
    ),
    (
        "pgferry_sent_bytes_total",
        "bytes",
        "Bytes sent to clients.",
        'c',
    ),
    (
        "pgferry_client_parses_total",
        "",
        "Parse messages received from clients.",
        'c',
    ),
    (
        "pgferry_server_parses_total",
        "",
        "Parse messages sent to servers.",
        'c',
    ),
    (
        "pgferry_auto_prepared_total",
        "",
        "Simple queries run as executions of a prepared statement (auto_prepare).",
        'c',
    ),
    (
        "pgferry_binds_total",
        "",
        "Bind messages received from clients.",
        'c',
    ),
    (
        "pgferry_client_logins_total",
        "",
        "Successful client logins.",
        'c',
    ),
    (
        "pgferry_login_attempts_total",
        "",
        "Client logins attempted (successes and failures, all databases).",
        'c',
    ),
    (
        "pgferry_login_failures_total",
        "",
        "Client logins that failed (all databases).",
        'c',
    ),
    (
        "pgferry_n_plus_one_bursts_total",
        "",
        "N+1 bursts detected (one statement shape run many times with distinct parameters by one client).",
        'c',
    ),
    (
        "pgferry_duplicate_queries_total",
        "",
        "Duplicate-query bursts detected (one statement repeated with identical parameters by one client).",
        'c',
    ),
    (
        "pgferry_errors_total",
        "",
        "ErrorResponses sent to clients, by SQLSTATE class.",
        'c',
    ),
    (
        super::QUERY_SECONDS,
        "seconds",
        "Query time, first message to ReadyForQuery.",
        'h',
    ),
    (
        super::XACT_SECONDS,
        "seconds",
        "Transaction time, first request to the end of the transaction.",
        'h',
    ),
    (
        super::WAIT_SECONDS,
        "seconds",
        "Time clients waited for a server connection.",
        'h',
    ),
];

#[derive(Default)]
struct PerPool {
    xacts: u64,
    queries: u64,
    assignments: u64,
    connects: u64,
    received: u64,
    sent: u64,
    client_parses: u64,
    server_parses: u64,
    binds: u64,
    auto_prepared: u64,
    logins: u64,
    waiting: usize,
    size: u32,
    sv_active: usize,
    sv_idle: usize,
    errors: BTreeMap<[u8; 2], u64>,
}

#[derive(Default)]
struct PerClientKey {
    active: usize,
    waiting: usize,
    idle: usize,
    max_wait_us: u64,
}

pub(super) fn refresh(m: &Metrics, app: &App) {
    let mut pools: BTreeMap<(String, String), PerPool> = BTreeMap::new();
    for p in app.all_pools() {
        let e = pools
            .entry((p.database.clone(), p.user.clone()))
            .or_default();
        let s = &p.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        e.xacts += l(&s.xacts);
        e.queries += l(&s.queries);
        e.assignments += l(&s.checkouts);
        e.connects += l(&s.connects);
        e.received += l(&s.bytes_received);
        e.sent += l(&s.bytes_sent);
        e.client_parses += l(&s.client_parses);
        e.server_parses += l(&s.server_parses);
        e.binds += l(&s.binds);
        e.auto_prepared += l(&s.auto_prepared);
        e.logins += l(&s.logins);
        e.waiting += s.waiting.load(Ordering::Relaxed);
        e.size = e.size.max(p.settings().size);
        for srv in p.servers.iter() {
            if srv.active.load(Ordering::Relaxed) {
                e.sv_active += 1;
            } else {
                e.sv_idle += 1;
            }
        }
        for err in p.stats.errors.iter() {
            *e.errors.entry(*err.key()).or_insert(0) += *err.value();
        }
    }

    let now = now_us();
    let mut clients: BTreeMap<(String, String), PerClientKey> = BTreeMap::new();
    for c in app.client_list.iter() {
        let e = clients
            .entry((c.database.to_string(), c.user.to_string()))
            .or_default();
        match c.state() {
            ClientState::Active => e.active += 1,
            ClientState::Idle => e.idle += 1,
            ClientState::Waiting => {
                e.waiting += 1;
                let since = c.wait_start_us.load(Ordering::Relaxed);
                if since > 0 {
                    e.max_wait_us = e.max_wait_us.max(now.saturating_sub(since));
                }
            }
        }
    }

    for ((db, user), p) in &pools {
        let lb = || labels(db, user);
        m.counter("pgferry_transactions_total", lb(), p.xacts);
        m.counter("pgferry_queries_total", lb(), p.queries);
        m.counter("pgferry_server_assignments_total", lb(), p.assignments);
        m.counter("pgferry_server_connects_total", lb(), p.connects);
        m.counter("pgferry_received_bytes_total", lb(), p.received);
        m.counter("pgferry_sent_bytes_total", lb(), p.sent);
        m.counter("pgferry_client_parses_total", lb(), p.client_parses);
        m.counter("pgferry_server_parses_total", lb(), p.server_parses);
        m.counter("pgferry_binds_total", lb(), p.binds);
        m.counter("pgferry_auto_prepared_total", lb(), p.auto_prepared);
        m.counter("pgferry_client_logins_total", lb(), p.logins);
        m.gauge("pgferry_waiting_clients", lb(), p.waiting as f64);
        m.gauge("pgferry_pool_size", lb(), f64::from(p.size));
        for (state, n) in [("active", p.sv_active), ("idle", p.sv_idle)] {
            m.gauge(
                "pgferry_server_connections",
                with(lb(), "state", state),
                n as f64,
            );
        }
        for (class, n) in &p.errors {
            let class: String = class
                .iter()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        char::from(*b)
                    } else {
                        '?'
                    }
                })
                .collect();
            m.counter("pgferry_errors_total", with(lb(), "class", &class), *n);
        }
    }

    // Client gauges for every key seen now or at an earlier scrape (gone ones drop to zero).
    let mut seen = m.seen.lock();
    seen.extend(clients.keys().cloned());
    seen.extend(pools.keys().cloned());
    let zero = PerClientKey::default();
    for key in seen.iter() {
        let c = clients.get(key).unwrap_or(&zero);
        let lb = || labels(&key.0, &key.1);
        for (state, n) in [
            ("active", c.active),
            ("waiting", c.waiting),
            ("idle", c.idle),
        ] {
            m.gauge(
                "pgferry_client_connections",
                with(lb(), "state", state),
                n as f64,
            );
        }
        m.gauge("pgferry_max_wait_seconds", lb(), c.max_wait_us as f64 / 1e6);
    }
    drop(seen);

    let cfg = app.config.load();
    for (db, ctl) in app
        .db_controls
        .iter()
        .map(|e| (e.key().clone(), e.value().clone()))
    {
        let lb = vec![Label::new("database", db)];
        m.gauge(
            "pgferry_database_paused",
            lb.clone(),
            f64::from(u8::from(ctl.is_paused())),
        );
        m.gauge(
            "pgferry_database_disabled",
            lb,
            f64::from(u8::from(ctl.is_disabled())),
        );
    }
    m.gauge(
        "pgferry_max_client_connections",
        vec![],
        f64::from(cfg.pgferry.max_client_conn),
    );
    m.gauge(
        "pgferry_connected_clients",
        vec![],
        app.clients.load(Ordering::Relaxed) as f64,
    );
    m.gauge("pgferry_parked_clients", vec![], app.lot.len() as f64);
    let logins = app.counters.logins.load(Ordering::Relaxed);
    let failures = app.counters.login_failures.load(Ordering::Relaxed);
    m.counter("pgferry_login_attempts_total", vec![], logins + failures);
    m.counter("pgferry_login_failures_total", vec![], failures);
    for ((db, user), n) in app.insight.n_plus_one_bursts_total() {
        let lb = vec![Label::new("database", db), Label::new("user", user)];
        m.counter("pgferry_n_plus_one_bursts_total", lb, n);
    }
    for ((db, user), n) in app.insight.duplicate_queries_total() {
        let lb = vec![Label::new("database", db), Label::new("user", user)];
        m.counter("pgferry_duplicate_queries_total", lb, n);
    }
}

fn with(mut l: Vec<Label>, key: &'static str, value: &str) -> Vec<Label> {
    l.push(Label::new(key, value.to_owned()));
    l
}
