//! RELOAD (admin command and SIGHUP): re-reads the configuration file and the auth_file. An
//! invalid file changes nothing. Settings that cannot change while running are kept at their
//! running values and reported. Pools whose settings changed are replaced: new clients get a
//! pool built from the new settings, connected clients finish on the old one.

use super::{load_userlist, App};
use crate::config::Config;
use std::sync::Arc;

impl App {
    /// Reloads configuration and credentials. Returns notes for the operator (settings that
    /// need a restart, pools replaced); `Err` (old configuration kept) if the new one is invalid.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let old = self.config.load_full();
        let Some(path) = old.source_path.clone() else {
            return Err("no configuration file to reload (started without --config)".into());
        };
        let mut new = Config::load(&path).map_err(|e| {
            tracing::error!("RELOAD: {e}; keeping the old configuration");
            e.to_string()
        })?;
        new.inline_users = old.inline_users.clone();
        let users = load_userlist(&new).map_err(|e| {
            tracing::error!("RELOAD: {e}; keeping the old configuration");
            e.to_string()
        })?;
        let mut notes = keep_restart_only(&old, &mut new);
        let old_users = self.userlist.load_full();
        for (db, user, clients) in self.retire_changed_pools(&old, &new, &old_users, &users) {
            notes.push(if new.databases.contains_key(&db) {
                format!(
                    "pool {db}/{user}: settings changed; new clients use the new settings, \
                     {clients} connected client(s) keep the old pool until they reconnect"
                )
            } else {
                format!("database {db} removed; its {clients} connected client(s) stay until they leave")
            });
        }
        self.scram_cache.clear();
        self.auth_lookup.clear();
        self.userlist.store(Arc::new(users));
        self.config.store(Arc::new(new));
        tracing::info!(path = %path.display(), "configuration reloaded");
        Ok(notes)
    }

    /// SET key = value: changes one `[pgferry]` setting of the running configuration.
    /// Settings read only at start are refused; pool settings apply as RELOAD applies them.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<Vec<String>, String> {
        if RESTART_ONLY.contains(&key) {
            return Err(format!("{key} cannot be changed while running"));
        }
        let old = self.config.load_full();
        let mut table = match toml::Value::try_from(&old.pgferry) {
            Ok(toml::Value::Table(t)) => t,
            _ => return Err("cannot serialise the configuration".into()),
        };
        let Some(current) = table.get(key) else {
            return Err(format!("unknown setting {key}"));
        };
        let parsed = parse_like(current, value)
            .ok_or_else(|| format!("invalid value for {key}: {value}"))?;
        table.insert(key.to_owned(), parsed);
        let general: crate::config::General = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("invalid value for {key}: {}", e.message()))?;
        let mut new = (*old).clone();
        new.pgferry = general;
        // Port 0 (an ephemeral port, as tests and the demo use) is fine once bound.
        let mut probe = new.clone();
        if probe.pgferry.listen_port == 0 {
            probe.pgferry.listen_port = 6432;
        }
        probe.validate().map_err(|e| e.to_string())?;
        let users = self.userlist.load_full();
        let mut notes = Vec::new();
        for (db, user, clients) in self.retire_changed_pools(&old, &new, &users, &users) {
            notes.push(format!(
                "pool {db}/{user}: new clients use the new setting, {clients} connected \
                 client(s) keep the old pool until they reconnect"
            ));
        }
        tracing::info!(key, value, "SET");
        self.config.store(Arc::new(new));
        Ok(notes)
    }

    /// Moves pools whose (database, user) settings changed out of `pools` into the retired list.
    /// Returns (database, user, clients still on it) for each.
    fn retire_changed_pools(
        &self,
        old: &Config,
        new: &Config,
        old_users: &std::collections::HashMap<String, crate::auth::Secret>,
        new_users: &std::collections::HashMap<String, crate::auth::Secret>,
    ) -> Vec<(String, String, usize)> {
        let (og, ng) = (&old.pgferry, &new.pgferry);
        let global_changed = og.server_lifetime != ng.server_lifetime
            || og.server_reset_query != ng.server_reset_query
            || og.server_reset_query_always != ng.server_reset_query_always
            || og.server_connect_timeout != ng.server_connect_timeout
            || og.max_packet_size != ng.max_packet_size
            || og.max_prepared_statements != ng.max_prepared_statements;
        let keys: Vec<(String, String)> = self.pools.iter().map(|e| e.key().clone()).collect();
        let mut out = Vec::new();
        for (db, user) in keys {
            let changed = global_changed
                || old.databases.get(&db) != new.databases.get(&db)
                || old.pool_size_for(&db, &user) != new.pool_size_for(&db, &user)
                || old.pool_mode_for(&db, &user) != new.pool_mode_for(&db, &user)
                || old.query_wait_timeout_for(&user) != new.query_wait_timeout_for(&user)
                || old_users.get(&user) != new_users.get(&user);
            if !changed {
                continue;
            }
            if let Some((_, pool)) = self.pools.remove(&(db.clone(), user.clone())) {
                pool.close_idle();
                let clients = self
                    .client_list
                    .iter()
                    .filter(|c| c.database == db && c.user == user)
                    .count();
                self.stats.retired.lock().push(pool);
                out.push((db, user, clients));
            }
        }
        out
    }
}

/// `[pgferry]` settings read only at start (SHOW CONFIG `changeable` = no).
pub const RESTART_ONLY: [&str; 5] = [
    "listen_addr",
    "listen_port",
    "metrics_addr",
    "workers",
    "auth_file",
];

/// `value` converted to the TOML type of `current` (lists are comma-separated).
fn parse_like(current: &toml::Value, value: &str) -> Option<toml::Value> {
    use toml::Value as V;
    Some(match current {
        V::String(_) => V::String(value.to_owned()),
        V::Integer(_) => V::Integer(value.trim().parse().ok()?),
        V::Float(_) => V::Float(value.trim().parse().ok()?),
        V::Boolean(_) => V::Boolean(match value.trim().to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" => true,
            "0" | "off" | "false" | "no" => false,
            _ => return None,
        }),
        V::Array(_) => V::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| V::String(s.to_owned()))
                .collect(),
        ),
        _ => return None,
    })
}

/// Settings that only take effect at start: the running values are kept; returns a note for each
/// that the file changed.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut notes = Vec::new();
    let (o, n) = (&old.pgferry, &mut new.pgferry);
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if o.$field != n.$field {
                notes.push(format!(
                    "{} changed from {:?} to {:?}: takes effect after a restart",
                    stringify!($field), o.$field, n.$field
                ));
                n.$field = o.$field.clone();
            }
        )*};
    }
    keep!(listen_addr, listen_port, metrics_addr, workers);
    notes
}
