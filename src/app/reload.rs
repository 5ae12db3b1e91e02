//! RELOAD (admin command and SIGHUP) and SET: re-read the configuration file and the
//! auth_file, or change one `[pgferry]` setting. An invalid file changes nothing. Settings that
//! cannot change while running keep their running values and are reported. Everything else
//! applies live, to the pools clients are connected to: sizes, reserve, min_pool_size, caps,
//! timeouts, pool mode (for sessions that start after), checks and reset queries. A changed
//! server address or password makes each pool replace its server connections as they are
//! released; a removed database disconnects its clients, as PgBouncer does. TLS files are read
//! again, so renewed certificates apply to new connections.

use super::{load_userlist, pool_settings, App};
use crate::config::Config;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl App {
    /// Reloads configuration and credentials. Returns notes for the operator (settings that
    /// need a restart, pools whose server changed, databases removed); `Err` (old
    /// configuration kept) if the new one is invalid.
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
        let tls = crate::net::tls::Tls::from_config(&new.pgferry).map_err(|e| {
            tracing::error!("RELOAD: {e}; keeping the old configuration");
            e.to_string()
        })?;
        let mut notes = keep_restart_only(&old, &mut new);
        self.scram_cache.clear();
        self.auth_lookup.clear();
        self.userlist.store(Arc::new(users));
        self.tls.store(Arc::new(tls));
        self.config.store(Arc::new(new));
        self.config_gen.fetch_add(1, Ordering::Release);
        notes.extend(self.apply_to_pools());
        for n in &notes {
            tracing::info!("RELOAD: {n}");
        }
        tracing::info!(path = %path.display(), "configuration reloaded");
        Ok(notes)
    }

    /// SET key = value: changes one `[pgferry]` setting of the running configuration.
    /// Settings read only at start are refused; the rest apply as RELOAD applies them.
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
        let tls = crate::net::tls::Tls::from_config(&new.pgferry).map_err(|e| e.to_string())?;
        tracing::info!(key, value, "SET");
        self.tls.store(Arc::new(tls));
        self.config.store(Arc::new(new));
        self.config_gen.fetch_add(1, Ordering::Release);
        Ok(self.apply_to_pools())
    }

    /// Brings every pool in line with the running configuration and credentials. Returns a
    /// note for each pool whose server changed and each database removed.
    fn apply_to_pools(&self) -> Vec<String> {
        let cfg = self.config.load_full();
        self.caps.apply(&cfg);
        let pools: Vec<_> = self.pools.iter().map(|e| e.value().clone()).collect();
        let mut notes = Vec::new();
        let mut removed = BTreeSet::new();
        for pool in pools {
            let (db, user) = (pool.database.clone(), pool.user.clone());
            let Some(dbc) = cfg.databases.get(&db) else {
                self.pools.remove(&(db.clone(), user));
                pool.close();
                removed.insert(db);
                continue;
            };
            if let Some(forced) = dbc.user.as_ref().filter(|f| **f != user) {
                // New clients of the database now get the pool of the forced user.
                self.pools.remove(&(db.clone(), user.clone()));
                pool.close_idle();
                let clients = self
                    .client_list
                    .iter()
                    .filter(|c| *c.database == *db && *c.user == *user)
                    .count();
                self.stats.retired.lock().push(pool);
                notes.push(format!(
                    "pool {db}/{user}: database {db} now logs in as {forced}; {clients} \
                     connected client(s) keep the old pool until they reconnect"
                ));
                continue;
            }
            pool.apply(pool_settings(&cfg, &db, &user));
            if let Some(t) = self.server_target(&cfg, &db, &user) {
                if pool.set_target(t) {
                    notes.push(format!(
                        "pool {db}/{user}: server address, credentials or TLS settings changed; its server \
                         connections are replaced as they are released"
                    ));
                }
            }
        }
        for p in self.stats.retired.lock().iter() {
            if removed.contains(&p.database) {
                p.close();
            }
        }
        for db in removed {
            let mut n = 0;
            for c in self.client_list.iter().filter(|c| *c.database == *db) {
                c.kill.kill();
                n += 1;
            }
            notes.push(format!(
                "database {db} removed: {n} connected client(s) disconnected"
            ));
        }
        notes
    }
}

/// `[pgferry]` settings read only at start (SHOW CONFIG `changeable` = no).
pub const RESTART_ONLY: &[&str] = &[
    "listen_addr",
    "listen_port",
    "listen_backlog",
    "unix_socket_dir",
    "unix_socket_mode",
    "so_reuseport",
    "track_extra_parameters",
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
    keep!(
        listen_addr,
        listen_port,
        listen_backlog,
        unix_socket_dir,
        unix_socket_mode,
        so_reuseport,
        track_extra_parameters,
        metrics_addr,
        workers
    );
    notes
}
