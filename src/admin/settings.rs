//! SET key = value and SHOW CONFIG. Values are the `[pgferry]` table of the running
//! configuration; `changeable` says whether SET (and RELOAD) can change a setting live.

use super::result::{Table, Type::Text};
use super::Ctx;
use crate::admin_row as row;
use crate::app::reload::RESTART_ONLY;
use crate::config::General;

/// Client parameters drivers SET on connect; accepted and ignored, as PgBouncer does.
const FAKE_SETTINGS: [&str; 7] = [
    "client_encoding",
    "datestyle",
    "timezone",
    "standard_conforming_strings",
    "application_name",
    "extra_float_digits",
    "default_transaction_isolation",
];

pub fn set(ctx: &mut Ctx<'_>, key: &str, value: &str) {
    if FAKE_SETTINGS.contains(&key) {
        ctx.done("SET");
        return;
    }
    if !ctx.require_admin() {
        return;
    }
    match ctx.app.set_setting(key, value) {
        Ok(notes) => {
            for n in notes {
                ctx.notice(&n);
            }
            ctx.done(&format!("SET {key}={value}"));
        }
        Err(e) => ctx.error(&format!("SET failed: {e}")),
    }
}

/// Every `[pgferry]` setting as (key, value), values printed as PgBouncer does (booleans as
/// 1/0, whole seconds without a fraction, lists comma-separated).
pub fn settings(g: &General) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = match toml::Value::try_from(g) {
        Ok(toml::Value::Table(t)) => t.into_iter().map(|(k, v)| (k, text(&v))).collect(),
        _ => Vec::new(),
    };
    if g.auth_file.is_none() {
        out.push(("auth_file".into(), String::new()));
    }
    out.sort();
    out
}

fn text(v: &toml::Value) -> String {
    use toml::Value as V;
    match v {
        V::String(s) => s.clone(),
        V::Integer(i) => i.to_string(),
        V::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        V::Float(f) => f.to_string(),
        V::Boolean(b) => if *b { "1" } else { "0" }.to_owned(),
        V::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub fn show_config(ctx: &mut Ctx<'_>) {
    let cfg = ctx.app.config.load();
    let defaults: std::collections::BTreeMap<String, String> =
        settings(&General::default()).into_iter().collect();
    let mut t = Table::new(
        &mut ctx.out,
        &[
            ("key", Text),
            ("value", Text),
            ("default", Text),
            ("changeable", Text),
        ],
    );
    for (k, v) in settings(&cfg.pgferry) {
        let changeable = if RESTART_ONLY.contains(&k.as_str()) {
            "no"
        } else {
            "yes"
        };
        let default = defaults.get(&k).cloned().unwrap_or_default();
        t.row(row![k, v, default, changeable]);
    }
    t.finish();
}
