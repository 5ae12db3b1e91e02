//! Console commands that change state: PAUSE, RESUME, SUSPEND, RECONNECT, KILL, KILL_CLIENT,
//! DISABLE, ENABLE, RELOAD, WAIT_CLOSE, SHUTDOWN. Semantics follow PgBouncer 1.25: PAUSE waits
//! until the database's server connections are released, then closes them, while new work
//! queues in the pool; RESUME lets it go.

use super::state::{PauseMode, ShutdownMode};
use super::{syntax_error, Ctx, DATABASES};
use crate::app::App;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Command words handled here (all need `admin_users`).
pub const COMMANDS: [&str; 11] = [
    "pause",
    "resume",
    "suspend",
    "reconnect",
    "kill",
    "kill_client",
    "disable",
    "enable",
    "reload",
    "wait_close",
    "shutdown",
];

const POLL: Duration = Duration::from_millis(10);

/// Runs a control command; false when the session must end.
pub async fn run(ctx: &mut Ctx<'_>, cmd: &str, arg: &str, query: &str) -> bool {
    let app = ctx.app.clone();
    match cmd {
        "pause" => pause(ctx, &app, arg).await,
        "resume" => resume(ctx, &app, arg),
        "suspend" => suspend(ctx, &app, arg, query).await,
        "reconnect" => {
            if let Some(dbs) = target_dbs(ctx, &app, arg, "reconnect") {
                reconnect(&app, &dbs);
                ctx.done("RECONNECT");
            }
        }
        "kill" => kill(ctx, &app, arg),
        "kill_client" => kill_client(ctx, &app, arg),
        "disable" | "enable" => disable(ctx, &app, arg, cmd == "disable"),
        "reload" if arg.is_empty() => match app.reload() {
            Ok(notes) => {
                for n in notes {
                    tracing::info!("RELOAD: {n}");
                    ctx.notice(&n);
                }
                ctx.done("RELOAD");
            }
            Err(e) => ctx.error_code("F0000", &format!("RELOAD failed: {e}")),
        },
        "wait_close" => {
            if let Some(dbs) = target_dbs(ctx, &app, arg, "wait in") {
                wait_close(&app, &dbs).await;
                ctx.done("WAIT_CLOSE");
            }
        }
        "shutdown" => return shutdown(ctx, &app, arg, query),
        _ => syntax_error(ctx, query),
    }
    true
}

/// Databases pgferry knows: configured ones and any with pools or controls.
fn known_dbs(app: &App) -> BTreeSet<String> {
    let mut dbs: BTreeSet<String> = app.config.load().databases.keys().cloned().collect();
    dbs.extend(app.db_controls.iter().map(|e| e.key().clone()));
    dbs
}

/// The databases a command with optional `arg` applies to; None (error sent) if unknown.
fn target_dbs(ctx: &mut Ctx<'_>, app: &App, arg: &str, verb: &str) -> Option<Vec<String>> {
    if arg.is_empty() {
        return Some(known_dbs(app).into_iter().collect());
    }
    if DATABASES.contains(&arg) {
        ctx.error(&format!("cannot {verb} admin db: {arg}"));
        return None;
    }
    if !known_dbs(app).contains(arg) {
        ctx.error(&format!("no such database: {arg}"));
        return None;
    }
    Some(vec![arg.to_owned()])
}

async fn pause(ctx: &mut Ctx<'_>, app: &Arc<App>, arg: &str) {
    if app.admin.mode() != PauseMode::None {
        return ctx.error("already suspended/paused");
    }
    let Some(dbs) = target_dbs(ctx, app, arg, "pause") else {
        return;
    };
    if arg.is_empty() {
        app.admin.set_mode(PauseMode::Paused);
    }
    tracing::info!(databases = ?dbs, "PAUSE");
    for db in &dbs {
        app.db_control(db).set_paused(true);
    }
    wait_released(app, &dbs).await;
    ctx.done("PAUSE");
}

/// Waits until every server connection of `dbs` is back in its pool, closing them as they
/// come back; new checkouts wait on the pause meanwhile.
pub async fn wait_released(app: &App, dbs: &[String]) {
    let mut quiet = 0;
    loop {
        let mut open = 0;
        for p in app.all_pools() {
            if dbs.contains(&p.database) {
                p.close_idle();
                open +=
                    p.server_count() + p.stats.active.load(std::sync::atomic::Ordering::Relaxed);
            }
        }
        // RESUME from another session ends the wait.
        if !dbs.iter().any(|d| app.db_control(d).is_paused()) {
            return;
        }
        // Twice in a row, so a checkout that passed the pause gate just before is seen.
        quiet = if open == 0 { quiet + 1 } else { 0 };
        if quiet >= 2 {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// RESUME without argument: everything paused, suspended or killed runs again.
pub fn resume_all(app: &App) {
    app.admin.set_mode(PauseMode::None);
    for c in app.db_controls.iter() {
        c.set_paused(false);
    }
}

fn resume(ctx: &mut Ctx<'_>, app: &App, arg: &str) {
    if arg.is_empty() {
        if app.is_shutting_down() {
            return ctx.error("pooler is shutting down");
        }
        let any_paused = app.db_controls.iter().any(|c| c.is_paused());
        if app.admin.mode() == PauseMode::None && !any_paused {
            return ctx.error("pooler is not paused/suspended");
        }
        tracing::info!("RESUME");
        resume_all(app);
    } else {
        if !known_dbs(app).contains(arg) {
            return ctx.error(&format!("no such database: {arg}"));
        }
        let ctl = app.db_control(arg);
        if !ctl.is_paused() {
            return ctx.error(&format!("database {arg} is not paused"));
        }
        tracing::info!(db = arg, "RESUME");
        ctl.set_paused(false);
    }
    ctx.done("RESUME");
}

async fn suspend(ctx: &mut Ctx<'_>, app: &Arc<App>, arg: &str, query: &str) {
    if !arg.is_empty() {
        return syntax_error(ctx, query);
    }
    if app.admin.mode() != PauseMode::None {
        return ctx.error("already suspended/paused");
    }
    if app.db_controls.iter().any(|c| c.is_paused()) {
        return ctx.error("cannot suspend with paused databases");
    }
    tracing::info!("SUSPEND");
    app.admin.set_mode(PauseMode::Suspended);
    ctx.suspended_here = true;
    let dbs: Vec<String> = known_dbs(app).into_iter().collect();
    for db in &dbs {
        app.db_control(db).set_paused(true);
    }
    wait_released(app, &dbs).await;
    ctx.done("SUSPEND");
}

/// Server connections open now close when released; idle ones close at once.
fn reconnect(app: &App, dbs: &[String]) {
    tracing::info!(databases = ?dbs, "RECONNECT");
    for db in dbs {
        app.db_control(db).bump_generation();
    }
    for p in app.all_pools() {
        if dbs.contains(&p.database) {
            for s in p.servers.iter() {
                app.admin.mark_close_needed(*s.key());
            }
            p.close_idle();
        }
    }
}

async fn wait_close(app: &App, dbs: &[String]) {
    loop {
        let pools = app.all_pools();
        let mut alive = BTreeSet::new();
        let mut pending = false;
        for p in &pools {
            for s in p.servers.iter() {
                alive.insert(*s.key());
                if dbs.contains(&p.database) && app.admin.is_close_needed(*s.key()) {
                    pending = true;
                }
            }
        }
        app.admin.prune_close_needed(|id| alive.contains(&id));
        if !pending {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn kill(ctx: &mut Ctx<'_>, app: &App, arg: &str) {
    if app.admin.mode() != PauseMode::None {
        return ctx.error("already suspended/paused");
    }
    let Some(dbs) = target_dbs(ctx, app, arg, "kill") else {
        return;
    };
    tracing::info!(databases = ?dbs, "KILL");
    for db in &dbs {
        // As PgBouncer: the database stays paused until RESUME.
        app.db_control(db).set_paused(true);
    }
    for c in app.client_list.iter() {
        if dbs.iter().any(|d| **d == *c.database) {
            c.kill.kill();
        }
    }
    for p in app.all_pools() {
        if dbs.contains(&p.database) {
            p.close_idle();
        }
    }
    ctx.done("KILL");
}

fn kill_client(ctx: &mut Ctx<'_>, app: &App, arg: &str) {
    let id = arg.strip_prefix('c').unwrap_or(arg);
    let Ok(id) = id.parse::<u64>() else {
        return ctx.error("invalid client pointer supplied");
    };
    match app.client_list.get(&id) {
        Some(c) => {
            tracing::info!(client = id, "KILL_CLIENT");
            c.kill.kill();
            ctx.done("KILL_CLIENT");
        }
        None => ctx.error("client not found"),
    }
}

fn disable(ctx: &mut Ctx<'_>, app: &App, arg: &str, disable: bool) {
    let verb = if disable { "disable" } else { "enable" };
    if arg.is_empty() {
        return ctx.error("a database is required");
    }
    let Some(dbs) = target_dbs(ctx, app, arg, verb) else {
        return;
    };
    for db in dbs {
        tracing::info!(db, "{}", verb.to_ascii_uppercase());
        app.db_control(&db).set_disabled(disable);
    }
    ctx.done(if disable { "DISABLE" } else { "ENABLE" });
}

/// SHUTDOWN [WAIT_FOR_CLIENTS|WAIT_FOR_SERVERS]: the same path as SIGQUIT, SIGTERM, SIGINT
/// (`App::shutdown`; `run_until_signal` waits and exits).
fn shutdown(ctx: &mut Ctx<'_>, app: &Arc<App>, arg: &str, query: &str) -> bool {
    let mode = match arg.to_ascii_lowercase().as_str() {
        "" => ShutdownMode::Immediate,
        "wait_for_clients" => ShutdownMode::WaitForClients,
        "wait_for_servers" => ShutdownMode::WaitForServers,
        _ => {
            syntax_error(ctx, query);
            return true;
        }
    };
    tracing::info!(?mode, "SHUTDOWN");
    app.shutdown(mode);
    if mode == ShutdownMode::Immediate {
        return false;
    }
    ctx.done("SHUTDOWN");
    true
}
