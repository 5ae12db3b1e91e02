//! SHOW commands other than the statistics ones: POOLS, CLIENTS, SERVERS, DATABASES, USERS,
//! LISTS, STATE, VERSION, MEM, DNS_HOSTS/DNS_ZONES, PEERS/PEER_POOLS (always empty), HELP, and
//! the parameters drivers ask for. Column names, order and types are PgBouncer 1.25's.

use super::result::{timestamp, Table, Type, Type::*};
use super::state::PauseMode;
use super::{stats, Ctx};
use crate::admin_row as row;
use crate::app::registry::{now_us, ClientInfo, ClientState};
use crate::app::App;
use crate::config::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

pub const POOLS: &[(&str, Type)] = &[
    ("database", Text),
    ("user", Text),
    ("cl_active", Int4),
    ("cl_waiting", Int4),
    ("cl_active_cancel_req", Int4),
    ("cl_waiting_cancel_req", Int4),
    ("sv_active", Int4),
    ("sv_active_cancel", Int4),
    ("sv_being_canceled", Int4),
    ("sv_idle", Int4),
    ("sv_used", Int4),
    ("sv_tested", Int4),
    ("sv_login", Int4),
    ("maxwait", Int4),
    ("maxwait_us", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
];

pub const SOCKETS: &[(&str, Type)] = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("replication", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
    ("prepared_statements", Int4),
    ("id", Int4),
];

pub const DATABASES: &[(&str, Type)] = &[
    ("name", Text),
    ("host", Text),
    ("port", Int4),
    ("database", Text),
    ("force_user", Text),
    ("pool_size", Int4),
    ("min_pool_size", Int4),
    ("reserve_pool_size", Int4),
    ("server_lifetime", Int4),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
    ("max_connections", Int4),
    ("current_connections", Int4),
    ("max_client_connections", Int4),
    ("current_client_connections", Int4),
    ("paused", Int4),
    ("disabled", Int4),
];

pub const USERS: &[(&str, Type)] = &[
    ("name", Text),
    ("pool_size", Text),
    ("reserve_pool_size", Text),
    ("pool_mode", Text),
    ("max_user_connections", Int4),
    ("current_connections", Int4),
    ("max_user_client_connections", Int4),
    ("current_client_connections", Int4),
];

/// Parameters some drivers SHOW on connect, answered with fixed values as PgBouncer does.
const FAKE_PARAMS: &[(&str, &str)] = &[
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
];

const HELP: &str = "
\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION
\tSHOW PEERS|PEER_POOLS
\tSHOW LISTS|MEM|STATE
\tSHOW DNS_HOSTS|DNS_ZONES
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS
\tSET key = arg
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL [<db>]
\tKILL_CLIENT <client_id>
\tSUSPEND
\tSHUTDOWN
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS
\tWAIT_CLOSE [<db>]";

/// SHOW QUERIES / N_PLUS_ONE / N_PLUS_ONE_TOTALS: pgferry's own views (docs/insight.md).
fn insight_table(ctx: &mut Ctx<'_>, table: crate::insight::Table) {
    let cols: Vec<(&str, super::result::Type)> = table.columns.iter().map(|c| (*c, Text)).collect();
    let mut t = Table::new(&mut ctx.out, &cols);
    for r in table.rows {
        t.row(r.into_iter().map(super::result::Val::from).collect());
    }
    t.finish();
}

/// Answers `SHOW what` (`what` lowercase).
pub fn show(ctx: &mut Ctx<'_>, what: &str, query: &str) {
    let app = ctx.app.clone();
    match what {
        "pools" => pools(ctx, &app),
        "clients" => clients(ctx, &app),
        "servers" => servers(ctx, &app),
        "databases" => databases(ctx, &app),
        "users" => users(ctx, &app),
        "config" => super::settings::show_config(ctx),
        "lists" => lists(ctx, &app),
        "state" => state(ctx, &app),
        "version" => {
            let mut t = Table::new(&mut ctx.out, &[("version", Text)]);
            t.row(row![version()]);
            t.finish();
        }
        "mem" => mem(ctx, &app),
        "dns_hosts" => Table::new(
            &mut ctx.out,
            &[("hostname", Text), ("ttl", Int8), ("addrs", Text)],
        )
        .finish(),
        "dns_zones" => Table::new(
            &mut ctx.out,
            &[("zonename", Text), ("serial", Int8), ("count", Int4)],
        )
        .finish(),
        "peers" => Table::new(
            &mut ctx.out,
            &[
                ("peer_id", Int4),
                ("host", Text),
                ("port", Int4),
                ("pool_size", Int4),
            ],
        )
        .finish(),
        "peer_pools" => Table::new(
            &mut ctx.out,
            &[
                ("peer_id", Int4),
                ("cl_active_cancel_req", Int4),
                ("cl_waiting_cancel_req", Int4),
                ("sv_active_cancel", Int4),
                ("sv_login", Int4),
            ],
        )
        .finish(),
        "help" => {
            build_help(ctx);
            ctx.done("SHOW");
        }
        "stats" | "stats_totals" | "stats_averages" | "totals" => stats::show(ctx, what),
        "queries" => insight_table(ctx, app.insight.show_queries()),
        "n_plus_one" => insight_table(ctx, app.insight.show_n_plus_one()),
        "n_plus_one_totals" => insight_table(ctx, app.insight.show_n_plus_one_totals()),
        other => match FAKE_PARAMS.iter().find(|(k, _)| *k == other) {
            Some((k, v)) => {
                let mut t = Table::new(&mut ctx.out, &[(k, Text)]);
                t.row(row![*v]);
                t.finish();
            }
            None => super::syntax_error(ctx, query),
        },
    }
}

pub fn version() -> String {
    format!(
        "PgBouncer {} (pgferry {})",
        super::PGBOUNCER_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

fn build_help(ctx: &mut Ctx<'_>) {
    use pgwire::messages::response::NoticeResponse;
    let fields = vec![
        (b'S', "NOTICE".to_owned()),
        (b'V', "NOTICE".to_owned()),
        (b'C', "00000".to_owned()),
        (b'M', "Console usage".to_owned()),
        (b'D', HELP.to_owned()),
    ];
    super::result::put(&mut ctx.out, &NoticeResponse::new(fields));
}

/// The pool (database, server user) a client belongs to.
fn pool_key(cfg: &Config, c: &ClientInfo) -> (String, String) {
    let user = cfg
        .databases
        .get(&*c.database)
        .and_then(|d| d.user.clone())
        .unwrap_or_else(|| c.user.to_string());
    (c.database.to_string(), user)
}

#[derive(Default)]
struct PoolRow {
    cl_active: usize,
    cl_waiting: usize,
    sv_active: usize,
    sv_idle: usize,
    sv_tested: usize,
    sv_login: usize,
    max_wait_us: u64,
    mode: String,
    load_balance: Option<&'static str>,
}

/// PgBouncer's `load_balance_hosts` for a host list: `round-robin` when there are several.
fn load_balance(hosts: &str) -> Option<&'static str> {
    (hosts.split(',').filter(|h| !h.trim().is_empty()).count() > 1).then_some("round-robin")
}

fn pools(ctx: &mut Ctx<'_>, app: &App) {
    let cfg = app.config.load();
    let mut rows: BTreeMap<(String, String), PoolRow> = BTreeMap::new();
    for p in app.all_pools() {
        let r = rows
            .entry((p.database.clone(), p.user.clone()))
            .or_default();
        r.mode = p.settings().mode.as_str().to_owned();
        r.load_balance = load_balance(&p.target().host);
        r.sv_tested += p.stats.testing.load(Ordering::Relaxed);
        r.sv_login += p.stats.opening.load(Ordering::Relaxed);
        for s in p.servers.iter() {
            if s.active.load(Ordering::Relaxed) {
                r.sv_active += 1;
            } else {
                r.sv_idle += 1;
            }
        }
    }
    let now = now_us();
    for c in app.client_list.iter() {
        let Some(r) = rows.get_mut(&pool_key(&cfg, &c)) else {
            continue;
        };
        if c.state() == ClientState::Waiting {
            r.cl_waiting += 1;
            let since = c.wait_start_us.load(Ordering::Relaxed);
            if since > 0 {
                r.max_wait_us = r.max_wait_us.max(now.saturating_sub(since));
            }
        } else {
            r.cl_active += 1;
        }
    }
    let mut t = Table::new(&mut ctx.out, POOLS);
    for ((db, user), r) in rows {
        t.row(row![
            db,
            user,
            r.cl_active,
            r.cl_waiting,
            0,
            0,
            r.sv_active,
            0,
            0,
            r.sv_idle.saturating_sub(r.sv_tested),
            0,
            r.sv_tested,
            r.sv_login,
            r.max_wait_us / 1_000_000,
            r.max_wait_us % 1_000_000,
            r.mode,
            r.load_balance,
        ]);
    }
    t.finish();
}

fn clients(ctx: &mut Ctx<'_>, app: &App) {
    let now = now_us();
    let mut list: Vec<_> = app.client_list.iter().map(|c| c.value().clone()).collect();
    list.sort_by_key(|c| c.id);
    let mut t = Table::new(&mut ctx.out, SOCKETS);
    for c in list {
        let server = c.server.load(Ordering::Relaxed);
        let addr = c.addr();
        let (local_addr, local_port) = local_end(c.local_addr(), addr.port());
        let state = c.state();
        let since = c.wait_start_us.load(Ordering::Relaxed);
        let wait = if state == ClientState::Waiting && since > 0 {
            now.saturating_sub(since)
        } else {
            0
        };
        t.row(row![
            "C",
            &*c.user,
            &*c.database,
            "none",
            state.as_str(),
            // A Unix-socket client has no local address: "unix" and the port, as PgBouncer.
            c.local_addr()
                .map_or_else(|| "unix".to_owned(), |_| addr.ip().to_string()),
            addr.port(),
            Some(local_addr),
            local_port,
            timestamp(c.connect_time_us),
            timestamp(c.request_time_us.load(Ordering::Relaxed)),
            wait / 1_000_000,
            wait % 1_000_000,
            0,
            format!("c{}", c.id),
            (server != 0).then(|| format!("s{server}")),
            0,
            c.tls.as_deref().unwrap_or(""),
            c.application_name.lock().clone(),
            c.prepared_statements.load(Ordering::Relaxed),
            c.id,
        ]);
    }
    t.finish();
}

/// `local_addr` and `local_port` of a connection: pgferry's end, or on a Unix socket (which has
/// no local address) `unix` and `port`, as PgBouncer shows them.
fn local_end(local: Option<std::net::SocketAddr>, port: u16) -> (String, u16) {
    local.map_or_else(
        || ("unix".to_owned(), port),
        |a| (a.ip().to_string(), a.port()),
    )
}

fn servers(ctx: &mut Ctx<'_>, app: &App) {
    let mut t = Table::new(&mut ctx.out, SOCKETS);
    for p in app.all_pools() {
        let mut list: Vec<_> = p.servers.iter().map(|s| s.value().clone()).collect();
        list.sort_by_key(|s| s.id);
        for s in list {
            let client = s.client.load(Ordering::Relaxed);
            let active = s.active.load(Ordering::Relaxed);
            let (local_addr, local_port) = local_end(s.local_addr, s.addr.port());
            t.row(row![
                "S",
                p.user.as_str(),
                p.database.as_str(),
                "none",
                if active { "active" } else { "idle" },
                s.addr.ip_text(),
                s.addr.port(),
                Some(local_addr),
                local_port,
                timestamp(s.connect_time_us),
                timestamp(s.request_time_us.load(Ordering::Relaxed)),
                0,
                0,
                app.admin.is_close_needed(s.id),
                format!("s{}", s.id),
                (client != 0).then(|| format!("c{client}")),
                s.pid,
                s.tls.as_deref().unwrap_or(""),
                s.application_name.lock().clone(),
                s.prepared_statements.load(Ordering::Relaxed),
                s.id,
            ]);
        }
    }
    t.finish();
}

fn databases(ctx: &mut Ctx<'_>, app: &App) {
    let cfg = app.config.load();
    let g = &cfg.pgferry;
    let mut clients: BTreeMap<String, usize> = BTreeMap::new();
    for c in app.client_list.iter() {
        *clients.entry(c.database.to_string()).or_default() += 1;
    }
    let mut t = Table::new(&mut ctx.out, DATABASES);
    for (name, d) in &cfg.databases {
        let ctl = app.db_controls.get(name).map(|c| c.value().clone());
        t.row(row![
            name.as_str(),
            d.host.as_str(),
            d.port,
            cfg.server_dbname(name),
            d.user.as_deref(),
            d.pool_size.unwrap_or(g.default_pool_size),
            cfg.min_pool_size_for(name),
            d.reserve_pool_size.unwrap_or(g.reserve_pool_size),
            d.server_lifetime.unwrap_or(g.server_lifetime) as i64,
            d.pool_mode.map(|m| m.as_str()),
            load_balance(&d.host),
            cfg.max_db_connections_for(name),
            app.caps.db_count(name),
            cfg.max_db_client_connections_for(name),
            clients.get(name).copied().unwrap_or(0),
            ctl.as_ref().is_some_and(|c| c.is_paused()),
            ctl.as_ref().is_some_and(|c| c.is_disabled()),
        ]);
    }
    // The console itself, as PgBouncer lists it.
    t.row(row![
        "pgbouncer",
        None::<&str>,
        g.listen_port,
        "pgbouncer",
        "pgbouncer",
        2,
        0,
        0,
        g.server_lifetime as i64,
        "statement",
        None::<&str>,
        0,
        0,
        0,
        clients.get("pgbouncer").copied().unwrap_or(0),
        0,
        0,
    ]);
    t.finish();
}

fn users(ctx: &mut Ctx<'_>, app: &App) {
    let cfg = app.config.load();
    let mut names: BTreeSet<String> = cfg.users.keys().cloned().collect();
    names.extend(app.userlist.load().keys().cloned());
    for p in app.all_pools() {
        names.insert(p.user.clone());
    }
    let mut clients: BTreeMap<String, usize> = BTreeMap::new();
    for c in app.client_list.iter() {
        names.insert(c.user.to_string());
        *clients.entry(c.user.to_string()).or_default() += 1;
    }
    let mut t = Table::new(&mut ctx.out, USERS);
    for name in names {
        let u = cfg.users.get(&name);
        let text = |v: Option<u32>| v.map_or(String::new(), |s| s.to_string());
        t.row(row![
            name.as_str(),
            text(u.and_then(|u| u.pool_size)),
            text(u.and_then(|u| u.reserve_pool_size)),
            u.and_then(|u| u.pool_mode).map(|m| m.as_str()),
            cfg.max_user_connections_for(&name),
            app.caps.user_count(&name),
            cfg.max_user_client_connections_for(&name),
            clients.get(&name).copied().unwrap_or(0),
        ]);
    }
    t.finish();
}

fn lists(ctx: &mut Ctx<'_>, app: &App) {
    let cfg = app.config.load();
    let pools = app.all_pools();
    let logged_in = app.client_list.len();
    let connected = app.clients.load(Ordering::Relaxed);
    let servers: usize = pools.iter().map(|p| p.server_count()).sum();
    let users: BTreeSet<&str> = pools.iter().map(|p| p.user.as_str()).collect();
    let mut t = Table::new(&mut ctx.out, &[("list", Text), ("items", Int4)]);
    for (name, n) in [
        ("databases", cfg.databases.len() + 1),
        ("users", users.len().max(app.userlist.load().len())),
        ("peers", 0),
        ("pools", pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", connected),
        ("login_clients", connected.saturating_sub(logged_in)),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(row![name, n]);
    }
    t.finish();
}

fn state(ctx: &mut Ctx<'_>, app: &App) {
    let mode = app.admin.mode();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut t = Table::new(&mut ctx.out, &[("key", Text), ("value", Text)]);
    t.row(row!["active", yes(mode == PauseMode::None)]);
    t.row(row!["paused", yes(mode == PauseMode::Paused)]);
    t.row(row!["suspended", yes(mode == PauseMode::Suspended)]);
    t.finish();
}

fn mem(ctx: &mut Ctx<'_>, app: &App) {
    use std::mem::size_of;
    let pools = app.all_pools();
    let servers: usize = pools.iter().map(|p| p.server_count()).sum();
    let clients = app.client_list.len();
    let mut t = Table::new(
        &mut ctx.out,
        &[
            ("name", Text),
            ("size", Int4),
            ("used", Int4),
            ("free", Int4),
            ("memtotal", Int4),
        ],
    );
    for (name, size, used) in [
        ("client_cache", size_of::<ClientInfo>(), clients),
        (
            "server_cache",
            size_of::<crate::server::ServerInfo>(),
            servers,
        ),
        ("pool_cache", size_of::<crate::pool::Pool>(), pools.len()),
        (
            "db_cache",
            size_of::<crate::app::registry::DbControl>(),
            app.db_controls.len(),
        ),
    ] {
        t.row(row![name, size, used, 0, size * used]);
    }
    t.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PgBouncer's type letters: s text, i int4, q int8, N numeric (T timestamps are text).
    fn letters(cols: &[(&str, Type)]) -> String {
        cols.iter()
            .map(|(_, t)| match t {
                Text => 's',
                Int4 => 'i',
                Int8 => 'q',
                Numeric => 'N',
            })
            .collect()
    }

    #[test]
    fn column_types_match_pgbouncer() {
        assert_eq!(letters(POOLS), "ssiiiiiiiiiiiiiss");
        assert_eq!(letters(SOCKETS), "ssssssisissiiississii");
        assert_eq!(letters(DATABASES), "ssissiiiissiiiiii");
        assert_eq!(letters(USERS), "ssssiiii");
    }
}
