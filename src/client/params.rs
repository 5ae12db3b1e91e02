//! The session parameters one client expects (client_encoding, DateStyle, TimeZone,
//! IntervalStyle, application_name, standard_conforming_strings, track_extra_parameters,
//! search_path, and any GUC it sent at startup), and the SQL that makes a server connection
//! match them before the client uses it.

use crate::server::{quote_literal, ParamSet, ServerConn};
use std::sync::Arc;

/// Parameters tracked for every client (lowercase).
const TRACKED: &[&str] = &[
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "application_name",
    "standard_conforming_strings",
    "search_path",
];

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// What one client expects of the server it is given (lowercase name → value).
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    /// Shared with other clients that want the same ([`ClientParams::share`]); copied on
    /// write.
    wanted: ParamSet,
    /// track_extra_parameters beyond [`TRACKED`], lowercase (none by default: its default,
    /// IntervalStyle, is tracked anyway, and an empty list costs an idle client nothing).
    extra_tracked: Box<[String]>,
}

impl ClientParams {
    /// Starts from the pool's welcome parameters and the client's startup parameters.
    pub fn new(
        welcome: &[(String, String)],
        startup: &[(String, String)],
        extra_tracked: &[String],
        ignored: &[String],
    ) -> Self {
        let mut p = ClientParams {
            wanted: Arc::new(Vec::new()),
            extra_tracked: extra_tracked
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .filter(|s| !TRACKED.contains(&s.as_str()))
                .collect(),
        };
        for (k, v) in welcome {
            let lower = k.to_ascii_lowercase();
            if p.is_tracked(&lower) {
                p.set(lower, v.clone());
            }
        }
        for (k, v) in startup_settings(startup) {
            let lower = k.to_ascii_lowercase();
            if NOT_SETTINGS.contains(&lower.as_str())
                || ignored.iter().any(|i| i.eq_ignore_ascii_case(&lower))
            {
                continue;
            }
            p.set(lower, v);
        }
        p
    }

    fn is_tracked(&self, lower: &str) -> bool {
        TRACKED.contains(&lower) || self.extra_tracked.iter().any(|e| e == lower)
    }

    pub fn get(&self, lower: &str) -> Option<&str> {
        self.wanted
            .iter()
            .find(|(k, _)| k == lower)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, lower: String, value: String) {
        match self.wanted.iter().position(|(k, _)| *k == lower) {
            Some(i) if self.wanted[i].1 == value => {}
            Some(i) => Arc::make_mut(&mut self.wanted)[i].1 = value,
            None => Arc::make_mut(&mut self.wanted).push((lower, value)),
        }
    }

    /// Uses an equal parameter set another client already has (from `known`, which keeps
    /// the last few distinct ones), so a server connection found to match one client is known
    /// to match every client with the same settings without comparing them again.
    pub fn share(&mut self, known: &parking_lot::Mutex<Vec<ParamSet>>) {
        const KEEP: usize = 8;
        let mut known = known.lock();
        if let Some(same) = known.iter().find(|k| **k == self.wanted) {
            self.wanted = Arc::clone(same);
            return;
        }
        if known.len() >= KEEP {
            known.remove(0);
        }
        known.push(Arc::clone(&self.wanted));
    }

    /// True when `server` has this client's settings; no SQL is then needed. Cheap when the
    /// connection last served a client with the same (shared) settings.
    pub fn in_sync(&self, server: &mut ServerConn) -> bool {
        if server.matches(&self.wanted) {
            return true;
        }
        let same = self
            .wanted
            .iter()
            .all(|(k, v)| server.param(k) == Some(v.as_str()))
            && server.unreported_names().all(|k| self.get(k).is_some());
        if same {
            server.mark_in_sync(&self.wanted);
        }
        same
    }

    /// Records a ParameterStatus the client's server sent while the client held it.
    pub fn note_reported(&mut self, name: &str, value: &str) {
        let lower = name.to_ascii_lowercase();
        if self.is_tracked(&lower) || self.get(&lower).is_some() {
            self.set(lower, value.to_owned());
        }
    }

    /// The SQL that makes `server` match this client, or None when it already does.
    pub fn sync_sql(&self, server: &ServerConn) -> Option<String> {
        if server.matches(&self.wanted) {
            return None;
        }
        let mut sets = Vec::new();
        for (k, v) in self.wanted.iter() {
            if server.param(k) != Some(v.as_str()) {
                sets.push(format!(
                    "set_config({}, {}, false)",
                    quote_literal(k),
                    quote_literal(v)
                ));
            }
        }
        let mut sql = String::new();
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            sql.push_str(&sets.join(", "));
            sql.push(';');
        }
        for k in server.unreported_names() {
            if self.get(k).is_none() {
                // Names come from the client's own settings and were accepted by set_config
                // before; quote them as identifiers all the same.
                sql.push_str(&format!("RESET \"{}\";", k.replace('"', "\"\"")));
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// After a successful sync: remember what the server now has, and adopt the server's
    /// canonical spelling of reported values (`ISO` → `ISO, MDY`).
    pub fn after_sync(&mut self, server: &mut ServerConn) {
        let wanted = Arc::clone(&self.wanted);
        server.retain_unreported(|k, _| wanted.iter().any(|(w, _)| w == k));
        for (k, v) in wanted.iter() {
            if server.is_reported(k) {
                if let Some(actual) = server.param(k) {
                    if actual != v {
                        let actual = actual.to_owned();
                        self.set(k.clone(), actual);
                    }
                }
            } else {
                server.set_unreported(k.clone(), v.clone());
            }
        }
        server.mark_in_sync(&self.wanted);
    }

    /// ParameterStatus values to announce at login: the welcome set with the client's own.
    pub fn announce(&self, welcome: &[(String, String)]) -> Vec<(String, String)> {
        welcome
            .iter()
            .map(|(k, v)| {
                let own = self.get(&k.to_ascii_lowercase()).unwrap_or(v);
                (k.clone(), own.to_owned())
            })
            .collect()
    }
}

/// Startup parameters as settings, with `options=-c a=b --c=d` expanded.
fn startup_settings(startup: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in startup {
        if k == "options" {
            let mut words = v.split_ascii_whitespace();
            while let Some(w) = words.next() {
                let setting = if w == "-c" {
                    words.next()
                } else if let Some(rest) = w.strip_prefix("-c") {
                    Some(rest)
                } else {
                    w.strip_prefix("--")
                };
                if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
                    out.push((name.replace('-', "_"), value.to_owned()));
                }
            }
        } else {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn startup_overrides_welcome_and_options_expand() {
        let welcome = vec![
            s("TimeZone", "UTC"),
            s("server_version", "15"),
            s("application_name", ""),
        ];
        let startup = vec![
            s("user", "app"),
            s("application_name", "web"),
            s("options", "-c statement_timeout=5s --search-path=a,b"),
        ];
        let p = ClientParams::new(&welcome, &startup, &[], &[]);
        assert_eq!(p.get("timezone"), Some("UTC"));
        assert_eq!(p.get("application_name"), Some("web"));
        assert_eq!(p.get("statement_timeout"), Some("5s"));
        assert_eq!(p.get("search_path"), Some("a,b"));
        assert_eq!(p.get("server_version"), None);
        assert_eq!(p.get("user"), None);
        let ann = p.announce(&welcome);
        assert!(ann.contains(&s("application_name", "web")));
    }

    #[test]
    fn ignored_startup_parameters_are_dropped() {
        let p = ClientParams::new(
            &[],
            &[s("extra_float_digits", "3")],
            &[],
            &["extra_float_digits".into()],
        );
        assert_eq!(p.get("extra_float_digits"), None);
    }
}
