#![allow(clippy::unwrap_used)]
//! RELOAD, SET and SIGHUP against a real PostgreSQL: pool sizes change for clients already
//! connected (growing and shrinking), an invalid file changes nothing, a removed database
//! disconnects its clients, and a changed server port moves the pool's server connections.

use crate::support::forward;
use crate::support::peak;
use crate::support::process;

use crate::common::*;
use forward::Forward;
use peak::{count, sleep_all, Peak};
use pgferry::config::{Config, Database, PoolMode};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// pgferry started from a configuration file (so RELOAD has something to read).
async fn reloadable(
    pool_size: u32,
    tweak: impl FnOnce(&mut Config),
) -> (Env, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgferry.toml");
    let file2 = file.clone();
    let env = env(PoolMode::Transaction, pool_size, move |c| {
        tweak(c);
        write(c, &file2);
        c.source_path = Some(file2);
    })
    .await;
    (env, dir, file)
}

/// Writes `c` as a configuration file (an ephemeral listen_port, which a file may not hold,
/// becomes 1: restart-only, so RELOAD keeps the running one and says so).
fn write(c: &Config, path: &Path) {
    let mut c = c.clone();
    if c.pgferry.listen_port == 0 {
        c.pgferry.listen_port = 1;
    }
    std::fs::write(path, toml::to_string(&c).unwrap()).unwrap();
}

async fn clients(env: &Env, n: usize) -> Vec<Arc<Client>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Arc::new(env.connect().await));
    }
    v
}

/// The peak of `app`'s backends while every client sleeps at once.
async fn peak_of(env: &Env, cs: &[Arc<Client>]) -> i64 {
    let direct = env.direct().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&direct, "usename = 'app' AND state <> 'idle'").await == 0
        })
        .await
    );
    let peak = Peak::start(direct, "usename = 'app' AND state = 'active'");
    sleep_all(cs, 0.4).await;
    peak.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_changes_apply_to_connected_clients() {
    let (env, _dir, file) = reloadable(2, |_| {}).await;
    let direct = env.direct().await;
    let cs = clients(&env, 5).await;
    assert_eq!(peak_of(&env, &cs).await, 2);

    // Grow: the same connected clients now get 5 servers at once.
    let mut cfg = env.config.clone();
    cfg.pgferry.default_pool_size = 5;
    cfg.pgferry.listen_backlog = 64;
    write(&cfg, &file);
    let notes = env.app().reload().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("listen_backlog changed")),
        "restart-only setting not reported: {notes:?}"
    );
    assert_eq!(peak_of(&env, &cs).await, 5);

    // Shrink: surplus connections close, and no more than 1 is used at once.
    cfg.pgferry.default_pool_size = 1;
    write(&cfg, &file);
    env.app().reload().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&direct, "usename = 'app'").await <= 1
        })
        .await,
        "surplus idle connections stayed open"
    );
    assert_eq!(peak_of(&env, &cs[..3]).await, 1);

    // SET applies live too.
    env.app().set_setting("default_pool_size", "3").unwrap();
    assert_eq!(peak_of(&env, &cs).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing() {
    let (env, _dir, file) = reloadable(2, |_| {}).await;
    let cs = clients(&env, 4).await;
    std::fs::write(&file, "[pgferry]\ndefault_pool_size = \"many\"\n").unwrap();
    assert!(env.app().reload().is_err());
    assert_eq!(env.app().config.load().pgferry.default_pool_size, 2);
    assert_eq!(peak_of(&env, &cs).await, 2);
    env.connect().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_database_disconnects_its_clients() {
    let (env, _dir, file) = reloadable(2, |c| {
        let shop = c.databases["shop"].clone();
        c.databases.insert(
            "shop2".into(),
            Database {
                dbname: Some("shop".into()),
                ..shop
            },
        );
    })
    .await;
    let url2 = env
        .url("app", APP_PW)
        .replace("dbname=shop", "dbname=shop2");
    let gone = connect_url(&url2).await.unwrap();
    gone.simple_query("SELECT 1").await.unwrap();
    let stays = env.connect().await;
    stays.simple_query("SELECT 1").await.unwrap();

    let mut cfg = env.config.clone();
    cfg.databases.remove("shop2");
    write(&cfg, &file);
    let notes = env.app().reload().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n == "database shop2 removed: 1 connected client(s) disconnected"),
        "{notes:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async { gone.is_closed() }).await,
        "the removed database's client is still connected"
    );
    assert!(gone.simple_query("SELECT 1").await.is_err());
    let e = connect_url(&url2).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"));
    stays.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_port_moves_new_server_connections() {
    let (env, _dir, file) = reloadable(2, |_| {}).await;
    let fwd = Forward::start("127.0.0.1:0", env.pg.port()).await;
    let direct = env.direct().await;
    let c = env.connect().await;
    let old: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let mut cfg = env.config.clone();
    cfg.databases.get_mut("shop").unwrap().port = fwd.port();
    write(&cfg, &file);
    let notes = env.app().reload().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("server address, credentials or TLS settings changed")),
        "{notes:?}"
    );
    // The connected client carries on, on a server reached through the new port.
    let new: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(new, old);
    assert_eq!(fwd.accepted(), 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&direct, &format!("pid = {old}")).await == 0
        })
        .await,
        "the server on the old port was not closed"
    );
    env.connect().await.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        fwd.accepted(),
        1,
        "one server connection serves both clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_resizes_the_running_pool() {
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = process::free_port();
    let general = "pool_mode = \"transaction\"\ndefault_pool_size = 2";
    let config = process::write_config(dir.path(), pg.port(), port, general, "");
    let ferry = process::Ferry::with_config(&config, port, dir.path()).await;
    let direct_url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=shop",
        pg.port()
    );
    let mut cs = Vec::new();
    for _ in 0..5 {
        cs.push(Arc::new(connect_url(&ferry.url()).await.unwrap()));
    }
    let peak = Peak::start(connect_url(&direct_url).await.unwrap(), "usename = 'app'");
    sleep_all(&cs, 0.4).await;
    assert_eq!(peak.stop().await, 2);

    process::write_config(
        dir.path(),
        pg.port(),
        port,
        &format!("{general}\nlisten_backlog = 64").replace("size = 2", "size = 5"),
        "",
    );
    ferry.signal("HUP");
    // The same connected clients get 5 servers at once once the signal is handled.
    let mut peaks = Vec::new();
    for _ in 0..10 {
        let peak = Peak::start(connect_url(&direct_url).await.unwrap(), "usename = 'app'");
        sleep_all(&cs, 0.4).await;
        peaks.push(peak.stop().await);
        if peaks.last() == Some(&5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(peaks.last(), Some(&5), "peaks after SIGHUP: {peaks:?}");
    assert!(peaks.iter().all(|p| *p <= 5), "{peaks:?}");
}
