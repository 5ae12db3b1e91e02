//! After a fault: proof that pgferry holds no dirty or leaked server connection. Seen from
//! PostgreSQL (pg_stat_activity: no `idle in transaction` backend of the pooled user, no more
//! backends than the pool allows) and from pgferry's own admin console (SHOW POOLS: nobody
//! waiting, no server active; SHOW SERVERS: within the pool size, and every backend of the
//! pooled user is one pgferry knows about).
#![allow(dead_code, clippy::unwrap_used)]

use crate::common::{env, Env};
use pgferry::config::{AuthType, PoolMode};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PW: &str = "admin-secret";

/// Appends the console's admin user to an auth_file.
pub fn add_admin_to_userlist(userlist: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(userlist)
        .unwrap();
    writeln!(f, "\"{ADMIN_USER}\" \"{ADMIN_PW}\"").unwrap();
}

/// Config tweak for in-process pgferry: `admin` may use the console.
pub fn with_admin(c: &mut pgferry::config::Config) {
    c.pgferry.admin_users = vec![ADMIN_USER.into()];
    add_admin_to_userlist(c.pgferry.auth_file.as_ref().unwrap());
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Rows of one console command as maps column → value.
pub async fn console_rows(c: &Client, q: &str) -> Vec<HashMap<String, String>> {
    let mut cols: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for m in c.simple_query(q).await.unwrap() {
        match m {
            SimpleQueryMessage::RowDescription(d) => {
                cols = d.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                out.push(
                    cols.iter()
                        .enumerate()
                        .map(|(i, k)| (k.clone(), r.get(i).unwrap_or("").to_owned()))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    out
}

/// Where to look: pgferry's port (admin console) and PostgreSQL's port.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub ferry_port: u16,
    pub pg_port: u16,
    /// Most server connections the pool of (shop, app) may hold.
    pub pool_size: usize,
}

/// One look at both sides.
#[derive(Debug)]
struct Look {
    /// (pid, state) of app's backends.
    backends: Vec<(i32, String)>,
    /// remote_pid and state of each server pgferry lists.
    servers: Vec<(i32, String)>,
    cl_waiting: i64,
    sv_active: i64,
}

impl Look {
    fn problems(&self, pool_size: usize) -> Vec<String> {
        let mut p = Vec::new();
        for (pid, state) in &self.backends {
            if state.starts_with("idle in transaction") {
                p.push(format!("backend {pid} is '{state}'"));
            }
        }
        if self.backends.len() > pool_size {
            p.push(format!(
                "{} backends > pool size {pool_size}",
                self.backends.len()
            ));
        }
        if self.servers.len() > pool_size {
            p.push(format!(
                "SHOW SERVERS lists {} > pool size {pool_size}",
                self.servers.len()
            ));
        }
        if self.cl_waiting != 0 || self.sv_active != 0 {
            p.push(format!(
                "SHOW POOLS: cl_waiting {} sv_active {}",
                self.cl_waiting, self.sv_active
            ));
        }
        let known: BTreeSet<i32> = self.servers.iter().map(|s| s.0).collect();
        for (pid, state) in &self.backends {
            if !known.contains(pid) {
                p.push(format!(
                    "backend {pid} ('{state}') is not among pgferry's servers"
                ));
            }
        }
        p
    }
}

impl Probe {
    /// The probe of `env`'s pgferry and PostgreSQL, for a pool of `pool_size`.
    pub fn of(env: &Env, pool_size: usize) -> Probe {
        Probe {
            ferry_port: env.addr.port(),
            pg_port: env.pg.port(),
            pool_size,
        }
    }

    pub fn admin_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={ADMIN_USER} password={ADMIN_PW} dbname=pgbouncer \
             connect_timeout=10",
            self.ferry_port
        )
    }

    async fn look(&self, direct: &Client, admin: &Client) -> Look {
        let backends = direct
            .query(
                "SELECT pid, coalesce(state, '') FROM pg_stat_activity \
                 WHERE usename = 'app' AND pid <> pg_backend_pid() ORDER BY pid",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let servers = console_rows(admin, "SHOW SERVERS")
            .await
            .into_iter()
            .filter(|r| r["user"] == "app" && r["database"] == "shop")
            .map(|r| (r["remote_pid"].parse().unwrap_or(0), r["state"].clone()))
            .collect();
        let pools = console_rows(admin, "SHOW POOLS").await;
        let shop = pools
            .iter()
            .find(|r| r["database"] == "shop" && r["user"] == "app");
        let n = |k: &str| shop.map_or(0, |r| r[k].parse::<i64>().unwrap_or(-1));
        Look {
            backends,
            servers,
            cl_waiting: n("cl_waiting"),
            sv_active: n("sv_active"),
        }
    }

    /// Waits (up to 20 s) until nothing is dirty or leaked; panics with the last look
    /// otherwise. Call when no client is inside a request.
    pub async fn assert_clean(&self, context: &str) {
        let direct = connect(&format!(
            "host=127.0.0.1 port={} user=postgres dbname=shop connect_timeout=10",
            self.pg_port
        ))
        .await
        .expect("connect to PostgreSQL");
        let admin = connect(&self.admin_url())
            .await
            .expect("connect to the admin console");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let look = self.look(&direct, &admin).await;
            let problems = look.problems(self.pool_size);
            if problems.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{context}: leaked or dirty server connections: {problems:?}\n{look:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// pgferry in transaction mode (trust auth, the admin console open to `admin`) and the probe
/// that checks it afterwards.
pub async fn probed_env(pool_size: u32) -> (Env, Probe) {
    let env = env(PoolMode::Transaction, pool_size, |c| {
        c.pgferry.auth_type = AuthType::Trust;
        with_admin(c);
    })
    .await;
    let probe = Probe::of(&env, pool_size as usize);
    (env, probe)
}
