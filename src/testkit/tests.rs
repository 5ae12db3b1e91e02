//! Tests of the test kit itself; they start real PostgreSQL clusters.
//!
//! When the server binaries are missing they are skipped with a message,
//! except under CI (`CI` set), where that is a failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;

/// Whether PostgreSQL is available; panics in CI when it is not.
fn pg_available() -> bool {
    if find_pg_bin_dir().is_some() && psql_path().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "PostgreSQL (initdb, pg_ctl, psql) not installed but CI is set"
    );
    eprintln!("skipping: PostgreSQL (initdb, pg_ctl, psql) not installed");
    false
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .expect("pid line")
        .trim()
        .parse()
        .expect("numeric pid")
}

/// Whether a live (non-zombie) process with `pid` exists.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state != "Z"
        }
        Err(_) => false,
    }
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) && process_alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

#[test]
fn finds_binaries() {
    if !pg_available() {
        return;
    }
    let dir = find_pg_bin_dir().expect("bin dir");
    assert!(dir.join("initdb").exists());
    assert!(dir.join("pg_ctl").exists());
    assert!(psql_path().expect("psql").exists());
}

#[test]
fn cluster_lifecycle() {
    if !pg_available() {
        return;
    }
    let mut pg = PgCluster::start().expect("start cluster");
    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.superuser(), "postgres");
    assert_ne!(pg.port(), 0);
    assert!(pg.data_dir().join("PG_VERSION").exists());
    assert!(pg.bin_dir().join("pg_ctl").exists());
    assert_eq!(pg.psql("postgres", "select 1").expect("select 1"), "1");
    assert_eq!(
        pg.psql("postgres", "show port").expect("show port"),
        pg.port().to_string()
    );
    assert_eq!(
        pg.psql("postgres", "show max_connections").expect("show"),
        "200"
    );
    assert_eq!(pg.psql("postgres", "show fsync").expect("show"), "off");

    // Roles with md5 and SCRAM secrets, and a database.
    pg.create_user("md5_user", "md5 pass'word", PasswordMethod::Md5)
        .expect("md5 user");
    pg.create_user("scram_user", "scr\"am", PasswordMethod::Scram)
        .expect("scram user");
    pg.create_database("appdb", "scram_user").expect("database");
    let secret_kind = |role: &str| {
        pg.psql(
            "postgres",
            &format!("select rolpassword like 'SCRAM%' from pg_authid where rolname = '{role}'"),
        )
        .expect("pg_authid")
    };
    assert_eq!(secret_kind("scram_user"), "t");
    assert_eq!(secret_kind("md5_user"), "f");
    assert_eq!(
        pg.psql(
            "postgres",
            "select rolpassword like 'md5%' from pg_authid where rolname = 'md5_user'"
        )
        .expect("pg_authid"),
        "t"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "select pg_get_userbyid(datdba) from pg_database where datname = 'appdb'"
        )
        .expect("owner"),
        "scram_user"
    );

    // Errors carry psql's stderr.
    match pg.psql("postgres", "select * from no_such_table") {
        Err(TestkitError::Command { stderr, .. }) => {
            assert!(stderr.contains("no_such_table"), "stderr: {stderr}")
        }
        other => panic!("expected a command error, got {other:?}"),
    }

    // Data survives stop + start_again, on the same port.
    pg.psql(
        "appdb",
        "create table kept(v int); insert into kept values (42)",
    )
    .expect("create table");
    let port = pg.port();
    pg.stop().expect("stop");
    assert!(!pg.is_running());
    assert!(pg.psql("postgres", "select 1").is_err());
    pg.stop().expect("second stop is a no-op");
    pg.start_again().expect("start again");
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql("appdb", "select v from kept").expect("select"),
        "42"
    );

    // Restart: new postmaster, same port, data intact.
    let before = pg
        .psql("postgres", "select pg_postmaster_start_time()")
        .expect("start time");
    pg.restart().expect("restart");
    let after = pg
        .psql("postgres", "select pg_postmaster_start_time()")
        .expect("start time");
    assert_ne!(before, after);
    assert_eq!(
        pg.psql("appdb", "select v from kept").expect("select"),
        "42"
    );

    // Drop stops the server and removes the directory.
    let pid = postmaster_pid(pg.data_dir());
    let data_dir: PathBuf = pg.data_dir().to_path_buf();
    let root = data_dir.parent().expect("root").to_path_buf();
    assert!(process_alive(pid));
    drop(pg);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(!process_alive(pid), "postmaster {pid} still alive");
    let leftovers = processes_mentioning(&data_dir.to_string_lossy());
    assert!(leftovers.is_empty(), "leftover processes: {leftovers:?}");
}

#[test]
fn options_are_applied() {
    if !pg_available() {
        return;
    }
    let pg = PgCluster::start_with(ClusterOptions {
        extra_conf: vec![
            "application_name = 'from_conf'".to_string(),
            "work_mem = '7MB'".to_string(),
        ],
        max_connections: Some(37),
    })
    .expect("start");
    assert_eq!(
        pg.psql("postgres", "show max_connections").expect("show"),
        "37"
    );
    assert_eq!(pg.psql("postgres", "show work_mem").expect("show"), "7MB");
    let log = std::fs::metadata(pg.log_file()).expect("log file");
    assert!(log.is_file());
}

#[test]
fn bad_config_reports_server_log() {
    if !pg_available() {
        return;
    }
    let err = PgCluster::start_with(ClusterOptions {
        extra_conf: vec!["shared_buffers = 'lots'".to_string()],
        max_connections: None,
    })
    .expect_err("start must fail");
    let text = err.to_string();
    assert!(text.contains("server log"), "error: {text}");
    assert!(text.contains("shared_buffers"), "error: {text}");
}

#[test]
fn retries_when_port_is_taken() {
    if !pg_available() {
        return;
    }
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    super::cluster::NEXT_PORT.with(|p| p.set(Some(taken)));
    let pg = PgCluster::start().expect("start despite taken port");
    assert_ne!(pg.port(), taken);
    assert_eq!(pg.psql("postgres", "select 1").expect("select"), "1");
    let log = std::fs::read_to_string(pg.log_file()).expect("log");
    assert!(log.contains("Address already in use"), "log: {log}");
}

#[test]
fn many_clusters_in_parallel() {
    if !pg_available() {
        return;
    }
    const N: usize = 8;
    let handles: Vec<_> = (0..N)
        .map(|i| {
            std::thread::spawn(move || {
                let pg = PgCluster::start().expect("start cluster");
                pg.psql("postgres", &format!("create table t{i}(x int)"))
                    .expect("create");
                let tables = pg
                    .psql(
                        "postgres",
                        "select string_agg(relname, ',') from pg_class where relname ~ '^t[0-9]$'",
                    )
                    .expect("tables");
                assert_eq!(tables, format!("t{i}"));
                pg
            })
        })
        .collect();
    let clusters: Vec<PgCluster> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let ports: BTreeSet<u16> = clusters.iter().map(PgCluster::port).collect();
    let dirs: BTreeSet<PathBuf> = clusters
        .iter()
        .map(|c| c.data_dir().to_path_buf())
        .collect();
    assert_eq!(ports.len(), N);
    assert_eq!(dirs.len(), N);
    // Dropping concurrently works too.
    let drops: Vec<_> = clusters
        .into_iter()
        .map(|c| std::thread::spawn(move || drop(c)))
        .collect();
    for d in drops {
        d.join().expect("drop thread");
    }
    for dir in dirs {
        assert!(!dir.exists());
    }
}
