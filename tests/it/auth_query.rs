#![allow(clippy::unwrap_used)]
//! auth_user / auth_query and SCRAM pass-through against a real PostgreSQL: users absent from
//! the auth_file are looked up in pg_authid (md5- and SCRAM-stored roles, wrong passwords,
//! unknown users, cached answers, PostgreSQL down), and pgferry logs in to the server as a
//! user it knows only by a SCRAM secret, with keys recovered from the client's proof.

use crate::common::*;
use pgferry::config::{AuthType, Database, PoolMode};
use pgferry::testkit::PasswordMethod;
use std::io::Write;
use std::time::Duration;
use tokio_postgres::Client;

const AUTH_PW: &str = "auth-user-pw";

/// A connection string through pgferry to database `db`.
fn url(env: &Env, db: &str, user: &str, pw: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={pw} dbname={db} connect_timeout=10",
        env.addr.port()
    )
}

fn failed_message(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// Asserts that a login failed with 28P01 and the wrong-password message.
fn assert_password_failed(r: Result<Client, tokio_postgres::Error>, user: &str) {
    let e = r.err().unwrap_or_else(|| panic!("{user} logged in"));
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e:?}");
    assert_eq!(e.as_db_error().unwrap().message(), failed_message(user));
}

/// `clients` clients of `user` each run a transaction that holds its server connection for a
/// moment, at the same time; returns the peak number of backends of `user`.
async fn concurrent_transactions(env: &Env, db: &str, user: &'static str, pw: &str) -> i64 {
    let watcher = env.watch_backends(user).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let url = url(env, db, user, pw);
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.unwrap();
            c.batch_execute("BEGIN").await.unwrap();
            c.simple_query("SELECT pg_sleep(0.4)").await.unwrap();
            let n: i64 = c
                .query_one("SELECT count(*) FROM items WHERE id <= $1", &[&(i + 1)])
                .await
                .unwrap()
                .get(0);
            c.batch_execute("COMMIT").await.unwrap();
            n
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as i64 + 1);
    }
    watcher.stop().await
}

fn append_user(path: &std::path::Path, user: &str, secret: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\"{user}\" \"{secret}\"").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_md5_and_scram_roles() {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = cluster();
        pg.create_user("aq_md5", "md5-pass", PasswordMethod::Md5)
            .unwrap();
        pg.create_user("aq_scram", "scram-pass", PasswordMethod::Scram)
            .unwrap();
        pg.create_user("ferry_auth", AUTH_PW, PasswordMethod::Scram)
            .unwrap();
        // The usual PgBouncer setup: auth_user reads pg_authid through a SECURITY DEFINER
        // function instead of being a superuser.
        pg.psql(
            "shop",
            "GRANT SELECT ON items TO aq_md5, aq_scram;
             CREATE FUNCTION public.ferry_lookup(uname text, OUT usename name, OUT passwd text)
               RETURNS record LANGUAGE sql SECURITY DEFINER AS
               $$ SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
                  FROM pg_authid WHERE rolname = uname AND rolcanlogin $$;
             REVOKE ALL ON FUNCTION public.ferry_lookup(text) FROM public;
             GRANT EXECUTE ON FUNCTION public.ferry_lookup(text) TO ferry_auth;",
        )
        .unwrap();
        pg
    })
    .await
    .unwrap();
    let env = env_with(pg, PoolMode::Transaction, 3, |c| {
        c.pgferry.auth_type = AuthType::Md5;
        append_user(c.pgferry.auth_file.as_ref().unwrap(), "ferry_auth", AUTH_PW);
        let shop = c.databases.get_mut("shop").unwrap();
        shop.auth_user = Some("ferry_auth".into());
        shop.auth_query = Some("SELECT usename, passwd FROM public.ferry_lookup($1)".into());
    })
    .await;

    // An md5-stored role: md5 with the client, md5 secret for the server logins.
    let peak = concurrent_transactions(&env, "shop", "aq_md5", "md5-pass").await;
    assert!(peak >= 2, "only {peak} server connection(s) for aq_md5");
    // A SCRAM-stored role under auth_type md5: SCRAM with the client, pass-through keys for
    // the server logins.
    let peak = concurrent_transactions(&env, "shop", "aq_scram", "scram-pass").await;
    assert!(peak >= 2, "only {peak} server connection(s) for aq_scram");

    // Wrong passwords and unknown users get the same answer.
    assert_password_failed(env.try_connect("aq_md5", "nope").await, "aq_md5");
    assert_password_failed(env.try_connect("aq_scram", "nope").await, "aq_scram");
    assert_password_failed(env.try_connect("ghost", "nope").await, "ghost");
    // auth_file users are still served from the auth_file.
    env.try_connect("md5user", MD5_PW).await.unwrap();

    // A flood of unknown users is refused over one lookup connection.
    let watcher = env.watch_backends("ferry_auth").await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let url = url(&env, "shop", &format!("nobody{i}"), "x");
        tasks.push(tokio::spawn(async move { connect_url(&url).await.err() }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let e = t.await.unwrap().expect("unknown user logged in");
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
        assert_eq!(
            e.as_db_error().unwrap().message(),
            failed_message(&format!("nobody{i}"))
        );
    }
    assert_eq!(watcher.stop().await, 1, "lookup connections to PostgreSQL");

    // auth_type scram-sha-256: the SCRAM-stored role logs in; an md5 secret cannot check a
    // SCRAM proof, so the md5-stored role is refused like a wrong password.
    env.app().set_setting("auth_type", "scram-sha-256").unwrap();
    let c = env.try_connect("aq_scram", "scram-pass").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    assert_password_failed(env.try_connect("aq_md5", "md5-pass").await, "aq_md5");
    assert_password_failed(env.try_connect("aq_scram", "md5-pass").await, "aq_scram");
    assert_password_failed(env.try_connect("ghost", "nope").await, "ghost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_answers_are_cached_then_refreshed() {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = cluster();
        pg.create_user("rot", "one", PasswordMethod::Md5).unwrap();
        pg.psql("shop", "GRANT SELECT ON items TO rot").unwrap();
        pg
    })
    .await
    .unwrap();
    // The default auth_query, run as the superuser (trusted on 127.0.0.1 by the test cluster).
    let mut env = env_with(pg, PoolMode::Transaction, 2, |c| {
        c.pgferry.auth_type = AuthType::Md5;
        c.pgferry.auth_user = Some("postgres".into());
    })
    .await;
    let lookup = &env.app().auth_lookup;
    assert_eq!(lookup.cache_ttl(), pgferry::auth::AUTH_CACHE_TTL);
    lookup.set_cache_ttl(Duration::from_secs(3600));

    let c = env.try_connect("rot", "one").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    assert_password_failed(env.try_connect("ghost", "boo").await, "ghost");

    let pg = &env.pg;
    tokio::task::block_in_place(|| {
        pg.psql(
            "postgres",
            "SET password_encryption = 'md5'; ALTER ROLE rot PASSWORD 'two';
             CREATE ROLE ghost LOGIN PASSWORD 'boo'; GRANT pg_read_all_data TO ghost;",
        )
        .unwrap()
    });
    // Cached: the old password still works, the new one and the new role do not yet.
    env.try_connect("rot", "one").await.unwrap();
    assert_password_failed(env.try_connect("rot", "two").await, "rot");
    assert_password_failed(env.try_connect("ghost", "boo").await, "ghost");

    // Once the answers expire, PostgreSQL's current secrets apply.
    env.app()
        .auth_lookup
        .set_cache_ttl(Duration::from_millis(200));
    let ok = eventually(Duration::from_secs(10), || async {
        env.try_connect("rot", "two").await.is_ok()
    })
    .await;
    assert!(ok, "the new password never took effect");
    assert_password_failed(env.try_connect("rot", "one").await, "rot");
    let ok = eventually(Duration::from_secs(10), || async {
        env.try_connect("ghost", "boo").await.is_ok()
    })
    .await;
    assert!(ok, "the new role never could log in");
    let c = env.try_connect("ghost", "boo").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);

    // PostgreSQL down: a user that needs a lookup gets a connection error naming it.
    tokio::task::block_in_place(|| env.pg.stop().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = env.try_connect("somebody", "x").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{e:?}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("auth_query"), "{msg}");
    assert!(msg.contains("\"somebody\""), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_with_only_the_stored_secret() {
    let (pg, secret) = tokio::task::spawn_blocking(|| {
        let pg = cluster();
        let secret = pg
            .psql(
                "postgres",
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            )
            .unwrap();
        (pg, secret)
    })
    .await
    .unwrap();
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let dir = tempfile::tempdir().unwrap();
    let userlist = dir.path().join("scram-only.txt");
    std::fs::write(&userlist, format!("\"app\" \"{secret}\"\n")).unwrap();
    let env = env_with(pg, PoolMode::Transaction, 4, |c| {
        c.pgferry.auth_file = Some(userlist.clone());
        // A second database entry for the same server database: a pool of its own, whose
        // server logins depend on the keys its own clients' logins leave behind.
        c.databases.insert(
            "shop_plain".into(),
            Database {
                host: "127.0.0.1".into(),
                port: c.databases["shop"].port,
                dbname: Some("shop".into()),
                ..Database::default()
            },
        );
    })
    .await;
    // No plain password anywhere pgferry looks.
    let text = std::fs::read_to_string(&userlist).unwrap();
    assert!(!text.contains(APP_PW));
    assert!(env.config.databases.values().all(|d| d.password.is_none()));

    assert_password_failed(env.try_connect("app", "wrong").await, "app");
    let peak = concurrent_transactions(&env, "shop", "app", APP_PW).await;
    assert!(peak >= 2, "only {peak} server connection(s) for app");

    // auth_type md5 with a SCRAM secret: the client is asked for SCRAM instead.
    env.app().set_setting("auth_type", "md5").unwrap();
    let c = env.try_connect("app", APP_PW).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    // auth_type plain: the clear-text password is checked against the secret, and the keys it
    // yields log the new pool in.
    env.app().set_setting("auth_type", "plain").unwrap();
    assert_password_failed(
        connect_url(&url(&env, "shop_plain", "app", "wrong")).await,
        "app",
    );
    // Close the first pool's server connections, so the backends counted are the new pool's.
    let direct = env.direct().await;
    direct
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
            &[],
        )
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(10), || async {
        env.backends(&direct, "app").await == 0
    })
    .await;
    assert!(gone, "app's backends did not go away");
    let peak = concurrent_transactions(&env, "shop_plain", "app", APP_PW).await;
    assert!(peak >= 2, "only {peak} server connection(s) for shop_plain");
}
