//! Watching backends on PostgreSQL while clients of pgferry work: a peak sampler over any
//! `pg_stat_activity` condition, a counter, and concurrent sleepers.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// Samples `SELECT count(*) FROM pg_stat_activity WHERE <cond>` every 10 ms until stopped.
pub struct Peak {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<i64>,
}

impl Peak {
    /// Starts sampling over `direct`, a superuser connection to PostgreSQL.
    pub fn start(direct: Client, cond: &str) -> Peak {
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {cond}");
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                let n: i64 = direct.query_one(&sql, &[]).await.unwrap().get(0);
                peak = peak.max(n);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stopped.notified() => return peak,
                }
            }
        });
        Peak { stop, task }
    }

    /// Stops sampling; returns the highest count seen.
    pub async fn stop(self) -> i64 {
        self.stop.notify_one();
        self.task.await.unwrap()
    }
}

/// `SELECT count(*) FROM pg_stat_activity WHERE <cond>` now.
pub async fn count(direct: &Client, cond: &str) -> i64 {
    direct
        .query_one(
            &format!("SELECT count(*) FROM pg_stat_activity WHERE {cond}"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs `SELECT pg_sleep(secs)` on each client at once; panics if one fails or hangs.
pub async fn sleep_all(clients: &[Arc<Client>], secs: f64) {
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.simple_query(&format!("SELECT pg_sleep({secs})")).await })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a sleeper hung")
            .unwrap()
            .expect("a sleeper failed");
    }
}
