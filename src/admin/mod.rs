//! The admin console: the virtual database `pgbouncer` (alias `pgferry`) with PgBouncer's SHOW
//! and control commands over the simple query protocol. This file holds the session loop and
//! the command parser; `show` and `stats` answer SHOW, `control` the commands that change
//! state, `settings` SET and SHOW CONFIG, `state` what persists between commands.

mod control;
pub mod result;
mod settings;
mod show;
pub mod state;
mod stats;

pub use state::{AdminState, PauseMode, ShutdownMode};

use crate::app::registry::ClientInfo;
use crate::app::App;
use crate::client::ClientError;
use crate::net::Conn;
use crate::net::Stream;
use crate::protocol::build::{self, Severity};
use crate::protocol::{tag, views};
use bytes::BytesMut;
use std::sync::Arc;

/// Names clients use to reach the console.
pub const DATABASES: [&str; 2] = ["pgbouncer", "pgferry"];

/// PgBouncer version whose console this one follows.
pub const PGBOUNCER_VERSION: &str = "1.25.0";

/// What a console user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRole {
    /// `admin_users`: every command.
    Admin,
    /// `stats_users`: every SHOW.
    Stats,
}

/// One console session while it runs a command.
pub(crate) struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub role: AdminRole,
    pub info: &'a Arc<ClientInfo>,
    pub out: BytesMut,
    /// This session suspended the pooler (RESUME happens if it leaves without doing so).
    pub suspended_here: bool,
}

impl Ctx<'_> {
    /// PgBouncer's error reply (SQLSTATE 08P01 for every console error).
    pub fn error(&mut self, msg: &str) {
        self.error_code("08P01", msg);
    }

    pub fn error_code(&mut self, code: &str, msg: &str) {
        tracing::info!(user = %self.info.user, "admin console error: {msg}");
        build::error(&mut self.out, Severity::Error, code, msg);
    }

    pub fn notice(&mut self, msg: &str) {
        build::notice(&mut self.out, Severity::Notice, "00000", msg);
    }

    pub fn done(&mut self, tag: &str) {
        result::complete(&mut self.out, tag);
    }

    /// False (and the error sent) unless the session may change state.
    pub fn require_admin(&mut self) -> bool {
        if self.role == AdminRole::Admin {
            return true;
        }
        self.error("admin access needed");
        false
    }
}

/// Removes the console client from the client list however the session ends.
struct Listed<'a>(&'a App, u64);

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.0.unregister_client(self.1);
    }
}

/// Serves an authenticated console client until it leaves.
pub async fn serve(
    app: &Arc<App>,
    conn: &mut Conn<Stream>,
    user: &str,
    role: AdminRole,
) -> Result<(), ClientError> {
    let peer = conn
        .stream()
        .peer_addr()
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let admission = app.admit_console(DATABASES[0], user);
    let info = app.register_client(peer, conn.stream(), "", admission);
    let _listed = Listed(app, info.id);
    welcome(conn.out());
    conn.flush().await?;
    let mut ctx = Ctx {
        app,
        role,
        info: &info,
        out: BytesMut::new(),
        suspended_here: false,
    };
    let r = session(&mut ctx, conn).await;
    if ctx.suspended_here && app.admin.mode() == PauseMode::Suspended {
        tracing::info!("admin console that suspended the pooler left; resuming");
        control::resume_all(app);
    }
    r
}

async fn session(ctx: &mut Ctx<'_>, conn: &mut Conn<Stream>) -> Result<(), ClientError> {
    // After an extended-protocol message, everything up to Sync is ignored.
    let mut skipping = false;
    loop {
        let frame = tokio::select! {
            f = conn.read_frame() => f?,
            _ = ctx.info.kill.killed() => {
                build::error(conn.out(), Severity::Fatal, "57P01",
                    "terminating connection due to administrator command");
                conn.flush().await?;
                return Ok(());
            }
        };
        match frame.tag() {
            tag::QUERY if !skipping => {
                let text = match views::query_text(frame.body()) {
                    Ok(t) => String::from_utf8_lossy(t).into_owned(),
                    Err(_) => {
                        build::error(conn.out(), Severity::Fatal, "08P01", "incomplete query");
                        conn.flush().await?;
                        return Ok(());
                    }
                };
                tracing::debug!(user = %ctx.info.user, query = %text, "admin command");
                let keep_open = execute(ctx, &text).await;
                conn.queue(&ctx.out);
                ctx.out.clear();
                if !keep_open {
                    conn.flush().await?;
                    return Ok(());
                }
                build::ready_for_query(conn.out(), b'I');
            }
            tag::SYNC => {
                skipping = false;
                build::ready_for_query(conn.out(), b'I');
            }
            tag::TERMINATE => return Ok(()),
            tag::FLUSH => {}
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => {
                if !skipping {
                    build::error(
                        conn.out(),
                        Severity::Error,
                        "08P01",
                        "extended query protocol not supported by admin console",
                    );
                    skipping = true;
                }
            }
            _ if skipping => {}
            t => {
                let msg = format!(
                    "unsupported packet type for admin console: {}",
                    char::from(t)
                );
                build::error(conn.out(), Severity::Fatal, "08P01", &msg);
                conn.flush().await?;
                return Ok(());
            }
        }
        conn.flush().await?;
    }
}

/// AuthenticationOk, the console's parameters, BackendKeyData, ReadyForQuery.
fn welcome(out: &mut BytesMut) {
    build::auth_ok(out);
    let version = format!("{PGBOUNCER_VERSION}/pgferry");
    for (k, v) in [
        ("server_version", version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
        ("integer_datetimes", "on"),
    ] {
        build::parameter_status(out, k, v);
    }
    let (pid, secret): (i32, i32) = rand::random();
    build::backend_key_data(out, pid & 0x7fff_ffff, secret);
    build::ready_for_query(out, b'I');
}

/// A parsed console command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Command word (lowercase) and its optional argument.
    Word(String, Option<String>),
    Set(String, String),
    Invalid,
}

/// Runs one query; false when the session must end (SHUTDOWN).
async fn execute(ctx: &mut Ctx<'_>, query: &str) -> bool {
    let (cmd, arg) = match parse(query) {
        Command::Word(c, a) => (c, a),
        Command::Set(k, v) => {
            settings::set(ctx, &k, &v);
            return true;
        }
        Command::Invalid => {
            syntax_error(ctx, query);
            return true;
        }
    };
    let arg_str = arg.as_deref().unwrap_or("");
    if cmd == "show" || cmd == "select" {
        match arg {
            Some(what) => show::show(ctx, &what.to_ascii_lowercase(), query),
            None => syntax_error(ctx, query),
        }
        return true;
    }
    if !control::COMMANDS.contains(&cmd.as_str()) {
        syntax_error(ctx, query);
        return true;
    }
    if !ctx.require_admin() {
        return true;
    }
    control::run(ctx, &cmd, arg_str, query).await
}

pub(crate) fn syntax_error(ctx: &mut Ctx<'_>, query: &str) {
    ctx.error(&format!("invalid command '{query}', use SHOW HELP;"));
}

/// `CMD [arg] [;]` or `SET key = value [;]` (also `SET key TO value`), case-insensitive;
/// identifiers may be double-quoted, SET values single- or double-quoted.
fn parse(query: &str) -> Command {
    let q = query.trim();
    let q = q.strip_suffix(';').unwrap_or(q).trim_end();
    let (first, rest) = match q.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&q[..i], q[i..].trim_start()),
        None => (q, ""),
    };
    if first.eq_ignore_ascii_case("set") && !rest.is_empty() {
        return parse_set(rest);
    }
    if !is_word(first) {
        return Command::Invalid;
    }
    let cmd = first.to_ascii_lowercase();
    if rest.is_empty() {
        return Command::Word(cmd, None);
    }
    match take_ident(rest) {
        Some((arg, tail)) if tail.trim().is_empty() => Command::Word(cmd, Some(arg)),
        _ => Command::Invalid,
    }
}

fn parse_set(rest: &str) -> Command {
    let Some((key, tail)) = take_ident(rest) else {
        return Command::Invalid;
    };
    let tail = tail.trim_start();
    let tail = if let Some(t) = tail.strip_prefix('=') {
        t
    } else if tail.len() > 2 && tail[..2].eq_ignore_ascii_case("to") && tail[2..].starts_with(' ') {
        &tail[2..]
    } else {
        return Command::Invalid;
    };
    let value = tail.trim();
    let value = if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        inner.replace("\"\"", "\"")
    } else if value.is_empty() || value.contains(char::is_whitespace) {
        return Command::Invalid;
    } else {
        value.to_owned()
    };
    Command::Set(key.to_ascii_lowercase(), value)
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A word or a double-quoted identifier at the start of `s`, and what follows it.
fn take_ident(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, n)| *n) == Some('"') {
                    chars.next();
                    out.push('"');
                } else {
                    return (!out.is_empty()).then(|| (out, &body[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_owned(), &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(c: &str, a: Option<&str>) -> Command {
        Command::Word(c.into(), a.map(Into::into))
    }

    #[test]
    fn commands_parse_like_pgbouncer() {
        assert_eq!(parse("SHOW POOLS;"), w("show", Some("POOLS")));
        assert_eq!(parse("  show   stats  ;  "), w("show", Some("stats")));
        assert_eq!(parse("pause"), w("pause", None));
        assert_eq!(parse("PAUSE \"my db\""), w("pause", Some("my db")));
        assert_eq!(parse("kill_client 42"), w("kill_client", Some("42")));
        assert_eq!(parse("show pools stats"), Command::Invalid);
        assert_eq!(parse("show pools; show stats"), Command::Invalid);
        assert_eq!(parse(""), Command::Invalid);
        assert_eq!(
            parse("SET default_pool_size = 7"),
            Command::Set("default_pool_size".into(), "7".into())
        );
        assert_eq!(
            parse("set admin_users to 'a, b';"),
            Command::Set("admin_users".into(), "a, b".into())
        );
        assert_eq!(
            parse("set server_reset_query = 'it''s'"),
            Command::Set("server_reset_query".into(), "it's".into())
        );
        assert_eq!(parse("set x = a b"), Command::Invalid);
    }
}
