#![allow(clippy::unwrap_used)]
//! Pool limits against a real PostgreSQL (after PgBouncer's test_limits): the reserve pool,
//! min_pool_size, max_db_connections and max_user_connections across pools, and the client
//! caps max_db_client_connections / max_user_client_connections.

use crate::support::peak;

use crate::common::*;
use peak::{count, sleep_all, Peak};
use pgferry::config::{AuthType, Config, Database, PoolMode, User};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// A client of pgferry as `user` on database `db`.
async fn client(
    env: &Env,
    user: &str,
    pw: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_url(&format!(
        "host=127.0.0.1 port={} user={user} password={pw} dbname={db} connect_timeout=10",
        env.addr.port()
    ))
    .await
}

async fn clients(env: &Env, n: usize, user: &str, pw: &str, db: &str) -> Vec<Arc<Client>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Arc::new(client(env, user, pw, db).await.unwrap()));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_opens_extra_connections_after_the_timeout() {
    let env = env(PoolMode::Transaction, 2, |c| {
        c.pgferry.reserve_pool_size = 2;
        c.pgferry.reserve_pool_timeout = 1.0;
    })
    .await;
    let direct = env.direct().await;
    let cs = clients(&env, 6, "app", APP_PW, "shop").await;
    let early = Peak::start(env.direct().await, "usename = 'app'");
    let all = env.watch_backends("app").await;
    let run = {
        let cs = cs.clone();
        tokio::spawn(async move { sleep_all(&cs, 2.0).await })
    };
    // Before anyone has waited reserve_pool_timeout, only pool_size connections.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        early.stop().await <= 2,
        "reserve used before reserve_pool_timeout"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            count(&direct, "usename = 'app'").await == 4
        })
        .await,
        "the reserve did not open 2 more connections"
    );
    run.await.unwrap();
    assert_eq!(
        all.stop().await,
        4,
        "pool_size + reserve_pool_size is the limit"
    );
    // The reserve connections are ordinary connections afterwards: everything still works.
    cs[0].simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_opens_and_refills_connections() {
    let env = env(PoolMode::Transaction, 5, |c| {
        c.pgferry.min_pool_size = 1;
        c.databases.get_mut("shop").unwrap().min_pool_size = Some(3);
    })
    .await;
    let direct = env.direct().await;
    // Only logging in: no query. (The login's own connection may come on top.)
    let c = env.connect().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&direct, "usename = 'app'").await >= 3
        })
        .await,
        "min_pool_size connections were not opened"
    );
    // Killed behind pgferry's back, they come back (exactly min_pool_size, nobody is busy).
    direct
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&direct, "usename = 'app' AND state = 'idle'").await == 3
        })
        .await,
        "min_pool_size connections were not reopened"
    );
    c.simple_query("SELECT 1").await.unwrap();
    // Never above it while idle.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count(&direct, "usename = 'app'").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_never_exceeds_pool_size() {
    let env = env(PoolMode::Transaction, 2, |c| c.pgferry.min_pool_size = 4).await;
    let direct = env.direct().await;
    let _c = env.connect().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            count(&direct, "usename = 'app'").await == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count(&direct, "usename = 'app'").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_all_pools_of_a_database() {
    let env = env(PoolMode::Transaction, 5, |c| {
        c.pgferry.auth_type = AuthType::Md5;
        c.databases.get_mut("shop").unwrap().max_db_connections = Some(3);
    })
    .await;
    let shop_cond = "datname = 'shop' AND usename IN ('app', 'md5user')";
    let peak = Peak::start(env.direct().await, shop_cond);
    let apps = clients(&env, 4, "app", APP_PW, "shop").await;
    sleep_all(&apps, 0.3).await;
    // app's pool now holds the 3 allowed connections, idle: md5user's pool takes one over.
    let md5 = clients(&env, 4, "md5user", MD5_PW, "shop").await;
    tokio::time::timeout(Duration::from_secs(5), md5[0].simple_query("SELECT 1"))
        .await
        .expect("md5user starved by app's idle connections")
        .unwrap();
    // Both users at once.
    let both: Vec<Arc<Client>> = apps.iter().chain(md5.iter()).cloned().collect();
    sleep_all(&both, 0.3).await;
    assert_eq!(
        peak.stop().await,
        3,
        "max_db_connections = 3 across both pools"
    );
    let admin_view = env.app().caps.db_count("shop");
    assert!(admin_view <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_caps_a_user_across_databases() {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = cluster();
        pg.create_database("shop2", "app").unwrap();
        pg
    })
    .await
    .unwrap();
    let env = env_with(pg, PoolMode::Transaction, 5, |c| {
        let port = c.databases["shop"].port;
        c.databases.insert(
            "shop2".into(),
            Database {
                host: "127.0.0.1".into(),
                port,
                ..Database::default()
            },
        );
        c.users.insert(
            "app".into(),
            User {
                max_user_connections: Some(2),
                ..User::default()
            },
        );
    })
    .await;
    let peak = env.watch_backends("app").await;
    let mut all = clients(&env, 3, "app", APP_PW, "shop").await;
    all.extend(clients(&env, 3, "app", APP_PW, "shop2").await);
    sleep_all(&all, 0.3).await;
    sleep_all(&all[3..], 0.2).await;
    sleep_all(&all[..3], 0.2).await;
    assert_eq!(
        peak.stop().await,
        2,
        "max_user_connections = 2 across shop and shop2"
    );
}

/// md5 logins, and at most `cap` clients of database shop.
fn md5_with_db_client_cap(c: &mut Config, cap: u32) {
    c.pgferry.auth_type = AuthType::Md5;
    c.databases
        .get_mut("shop")
        .unwrap()
        .max_db_client_connections = Some(cap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_caps_per_database_and_per_user() {
    let env = env(PoolMode::Transaction, 2, |c| {
        md5_with_db_client_cap(c, 3);
        c.users.insert(
            "app".into(),
            User {
                max_user_client_connections: Some(2),
                ..User::default()
            },
        );
    })
    .await;
    let a1 = client(&env, "app", APP_PW, "shop").await.unwrap();
    let _a2 = client(&env, "app", APP_PW, "shop").await.unwrap();
    let e = client(&env, "app", APP_PW, "shop").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"));
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "no more connections allowed (max_user_client_connections)"
    );
    // Another user still gets in, up to the database's cap.
    let m1 = client(&env, "md5user", MD5_PW, "shop").await.unwrap();
    let e = client(&env, "md5user", MD5_PW, "shop").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"));
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "no more connections allowed (max_db_client_connections)"
    );
    m1.simple_query("SELECT 1").await.unwrap();
    // A client leaving makes room.
    drop(a1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            client(&env, "app", APP_PW, "shop").await.is_ok()
        })
        .await
    );
}

/// A burst of logins at once (an application restarting its workers against a fresh pool)
/// stays within the client caps: a login takes its place under the caps when it is admitted,
/// not when it has finished, and gives it back if it fails after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_caps_hold_for_a_burst_of_concurrent_logins() {
    let env = env(PoolMode::Transaction, 2, |c| md5_with_db_client_cap(c, 5)).await;
    let env = Arc::new(env);
    let burst = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let env = env.clone();
                tokio::spawn(async move { client(&env, "app", APP_PW, "shop").await })
            })
            .collect();
        async move {
            let mut ok = Vec::new();
            let mut refused = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(c) => ok.push(c),
                    Err(e) => {
                        assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
                        refused += 1;
                    }
                }
            }
            (ok, refused)
        }
    };
    let (ok, refused) = burst(40).await;
    assert_eq!((ok.len(), refused), (5, 35));
    for c in &ok {
        c.simple_query("SELECT 1").await.unwrap();
    }
    // Every place comes back when its client leaves: five fit again, and no sixth.
    drop(ok);
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.app().client_list.is_empty()
        })
        .await
    );
    let (ok, refused) = burst(8).await;
    assert_eq!((ok.len(), refused), (5, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_limits_and_current_counts() {
    let env = env(PoolMode::Transaction, 4, |c| {
        c.pgferry.admin_users = vec!["admin".into()];
        let path = c.pgferry.auth_file.clone().unwrap();
        let mut list = std::fs::read_to_string(&path).unwrap();
        list.push_str("\"admin\" \"admin-secret\"\n");
        std::fs::write(&path, list).unwrap();
        c.pgferry.reserve_pool_size = 1;
        let d = c.databases.get_mut("shop").unwrap();
        d.max_db_connections = Some(3);
        d.max_db_client_connections = Some(10);
        d.min_pool_size = Some(2);
        d.server_lifetime = Some(100.0);
        c.users.insert(
            "app".into(),
            User {
                reserve_pool_size: Some(2),
                max_user_connections: Some(5),
                max_user_client_connections: Some(7),
                ..User::default()
            },
        );
    })
    .await;
    let direct = env.direct().await;
    let _a = env.connect().await;
    let _b = env.connect().await;
    let admin = client(&env, "admin", "admin-secret", "pgbouncer")
        .await
        .unwrap();
    let row = |rows: Vec<tokio_postgres::SimpleQueryMessage>, key: &str, name: &str| {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) if r.get(key) == Some(name) => Some(
                    r.columns()
                        .iter()
                        .map(|c| {
                            (
                                c.name().to_owned(),
                                r.get(c.name()).unwrap_or("").to_owned(),
                            )
                        })
                        .collect::<std::collections::HashMap<_, _>>(),
                ),
                _ => None,
            })
            .unwrap()
    };
    // min_pool_size fills in the background; then the console agrees with PostgreSQL.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let servers = count(&direct, "usename = 'app'").await;
            let db = row(
                admin.simple_query("SHOW DATABASES").await.unwrap(),
                "name",
                "shop",
            );
            servers >= 2 && db["current_connections"] == servers.to_string()
        })
        .await
    );
    let db = row(
        admin.simple_query("SHOW DATABASES").await.unwrap(),
        "name",
        "shop",
    );
    for (k, v) in [
        ("pool_size", "4"),
        ("min_pool_size", "2"),
        ("reserve_pool_size", "1"),
        ("server_lifetime", "100"),
        ("max_connections", "3"),
        ("max_client_connections", "10"),
        ("current_client_connections", "2"),
    ] {
        assert_eq!(db[k], v, "SHOW DATABASES {k}");
    }
    let user = row(
        admin.simple_query("SHOW USERS").await.unwrap(),
        "name",
        "app",
    );
    for (k, v) in [
        ("reserve_pool_size", "2"),
        ("max_user_connections", "5"),
        ("max_user_client_connections", "7"),
        ("current_client_connections", "2"),
    ] {
        assert_eq!(user[k], v, "SHOW USERS {k}");
    }
    assert_eq!(user["current_connections"], db["current_connections"]);
    let pool = row(
        admin.simple_query("SHOW POOLS").await.unwrap(),
        "user",
        "app",
    );
    assert_eq!(pool["cl_active"], "2");
    assert_eq!(pool["sv_login"], "0");
}
