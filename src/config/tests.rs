//! Unit tests for `pgferry::config`: PgBouncer-compatible defaults, parsing,
//! error location, validation rules, override precedence and `--upstream`
//! URLs.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::upstream::parse_url;
use super::*;

const EXAMPLE: &str = r#"
[pgferry]
listen_addr = "127.0.0.1"
listen_port = 6432
pool_mode = "transaction"
default_pool_size = 20
max_client_conn = 10000
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
admin_users = ["admin"]
metrics_addr = "127.0.0.1:9127"
query_wait_timeout = 120
server_connect_timeout = 15
max_packet_size = 1073741823

[databases.shop]
host = "127.0.0.1"
port = 5432
dbname = "shop"
pool_size = 20

[users.reporting]
pool_mode = "session"
"#;

const MINIMAL: &str = "[pgferry]\nauth_type = \"trust\"\n\n[databases.shop]\n";

fn listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_str(text, Some(Path::new("config.toml")))
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn defaults_match_pgbouncer() {
    let g = General::default();
    assert_eq!(g.listen_addr, "127.0.0.1");
    assert_eq!(g.listen_port, 6432);
    assert_eq!(g.pool_mode, PoolMode::Session);
    assert_eq!(g.default_pool_size, 20);
    assert_eq!(g.min_pool_size, 0);
    assert_eq!(g.max_client_conn, 100);
    assert_eq!(g.max_db_connections, 0);
    assert_eq!(g.max_user_connections, 0);
    assert_eq!(g.auth_type, AuthType::Md5);
    assert_eq!(g.auth_file, None);
    assert!(g.admin_users.is_empty() && g.stats_users.is_empty());
    assert_eq!(g.metrics_addr, "127.0.0.1:9127");
    assert_eq!(g.query_wait_timeout, 120.0);
    assert_eq!(g.query_timeout, 0.0);
    assert_eq!(g.server_connect_timeout, 15.0);
    assert_eq!(g.server_login_retry, 15.0);
    assert_eq!(g.server_lifetime, 3600.0);
    assert_eq!(g.server_idle_timeout, 600.0);
    assert_eq!(g.client_login_timeout, 60.0);
    assert_eq!(g.client_idle_timeout, 0.0);
    assert_eq!(g.idle_transaction_timeout, 0.0);
    assert_eq!(g.shutdown_timeout, 30.0);
    assert_eq!(g.max_packet_size, 2_147_483_647);
    assert_eq!(g.server_reset_query, "DISCARD ALL");
    assert!(!g.server_reset_query_always);
    assert_eq!(g.max_prepared_statements, 200);
    assert_eq!(g.track_extra_parameters, vec!["IntervalStyle".to_string()]);
    assert!(g.ignore_startup_parameters.is_empty());
    assert!(!g.application_name_add_host);
    assert_eq!(g.stats_period, 60.0);
    assert!(g.log_connections && g.log_disconnections);
    assert_eq!(g.workers, 0);

    let d = Database::default();
    assert_eq!((d.host.as_str(), d.port), ("127.0.0.1", 5432));
    assert_eq!(d.dbname, None);
    assert_eq!(d.pool_size, None);
}

#[test]
fn missing_keys_take_defaults() {
    let c = parse(MINIMAL).unwrap();
    let expected = General {
        auth_type: AuthType::Trust,
        ..General::default()
    };
    assert_eq!(c.pgferry, expected);
    assert_eq!(c.databases["shop"], Database::default());
    // The [pgferry] table itself is optional.
    let c = parse("[databases.shop]\n[pgferry]\nauth_type = \"trust\"").unwrap();
    assert_eq!(c.pgferry.listen_port, 6432);
}

#[test]
fn full_example_parses() {
    let c = Config::parse_str(EXAMPLE, Some(Path::new("/etc/pgferry/pgferry.toml"))).unwrap();
    assert_eq!(c.pgferry.pool_mode, PoolMode::Transaction);
    assert_eq!(c.pgferry.max_client_conn, 10000);
    assert_eq!(c.pgferry.auth_type, AuthType::ScramSha256);
    // Relative auth_file is anchored at the config file's directory.
    assert_eq!(
        c.pgferry.auth_file,
        Some(PathBuf::from("/etc/pgferry/userlist.txt"))
    );
    assert_eq!(c.pgferry.admin_users, vec!["admin".to_string()]);
    // Integers are accepted for the f64 timeouts.
    assert_eq!(c.pgferry.query_wait_timeout, 120.0);
    assert_eq!(c.pgferry.server_connect_timeout, 15.0);
    assert_eq!(c.pgferry.max_packet_size, 1_073_741_823);
    assert_eq!(c.databases["shop"].pool_size, Some(20));
    assert_eq!(c.users["reporting"].pool_mode, Some(PoolMode::Session));
    assert_eq!(
        c.source_path,
        Some(PathBuf::from("/etc/pgferry/pgferry.toml"))
    );
}

#[test]
fn shipped_example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgferry.toml");
    let c = Config::load(&path).unwrap();
    assert!(c.databases.contains_key("shop"));
    assert_eq!(c.pgferry.pool_mode, PoolMode::Transaction);
}

#[test]
fn absolute_auth_file_is_kept() {
    let text = MINIMAL.replace(
        "auth_type = \"trust\"",
        "auth_type = \"md5\"\nauth_file = \"/x/users.txt\"",
    );
    let c = Config::parse_str(&text, Some(Path::new("/etc/pgferry.toml"))).unwrap();
    assert_eq!(c.pgferry.auth_file, Some(PathBuf::from("/x/users.txt")));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = parse_err("[pgferry]\nauth_type = \"trust\"\npool_sise = 3\n\n[databases.shop]\n");
    assert!(e.message.contains("pool_sise"), "{e}");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.key.as_deref(), Some("pgferry.pool_sise"));
    assert_eq!(e.path, Some(PathBuf::from("config.toml")));
    assert!(
        e.to_string()
            .starts_with("config.toml:3: pgferry.pool_sise: "),
        "{e}"
    );
}

#[test]
fn unknown_key_in_database_and_unknown_table() {
    let e = parse_err("[databases.shop]\nhost = \"h\"\nport = 1\nhots = \"x\"\n");
    assert!(e.message.contains("hots"), "{e}");
    assert_eq!(e.line, Some(4));
    assert_eq!(e.key.as_deref(), Some("databases.shop.hots"));

    let e = parse_err("[databases.shop]\n\n[pgbouncer]\nlisten_port = 1\n");
    assert!(e.message.contains("pgbouncer"), "{e}");
    assert_eq!(e.line, Some(3));
}

#[test]
fn syntax_and_type_errors_have_lines() {
    let e = parse_err("[pgferry]\nlisten_port = \n[databases.shop]\n");
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse_err("[pgferry]\n\nlisten_port = \"six\"\n[databases.shop]\n");
    assert_eq!(e.line, Some(3), "{e}");
    let e = parse_err("[pgferry]\npool_mode = \"sessions\"\n[databases.shop]\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("sessions"), "{e}");
    let e = parse_err("[pgferry]\ndefault_pool_size = -1\n[databases.shop]\n");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn socket_directories_load_and_abstract_sockets_are_refused() {
    let c = parse(&format!("{MINIMAL}host = \"/var/run/postgresql\"\n")).unwrap();
    assert_eq!(c.databases["shop"].host, "/var/run/postgresql");
    let e = parse_err(&format!("{MINIMAL}host = \"127.0.0.1, @pg\"\n"));
    assert_eq!(e.key.as_deref(), Some("databases.shop.host"), "{e}");
    assert!(e.message.contains("abstract"), "{e}");
}

#[test]
fn zero_pool_size_names_key_and_line() {
    let text = "[pgferry]\nauth_type = \"trust\"\n\n[databases.other]\npool_size = 5\n\n\
                [databases.shop]\nhost = \"db\"\npool_size = 0\n";
    let e = parse_err(text);
    assert_eq!(e.key.as_deref(), Some("databases.shop.pool_size"));
    assert_eq!(e.line, Some(9));
    assert_eq!(
        e.to_string(),
        "config.toml:9: databases.shop.pool_size: must be at least 1"
    );
}

#[test]
fn validation_line_for_dotted_and_inline_keys() {
    let e = parse_err("databases.shop.pool_size = 0\npgferry.auth_type = \"trust\"\n");
    assert_eq!(e.line, Some(1), "{e}");
    let e = parse_err("[pgferry]\nauth_type = \"trust\"\n[databases]\nshop = { pool_size = 0 }\n");
    assert_eq!(e.key.as_deref(), Some("databases.shop.pool_size"));
    assert_eq!(e.line, Some(4), "{e}");
    let e = parse_err("[pgferry]\nauth_type = \"trust\"\n[databases.\"a.b\"]\npool_size = 0\n");
    assert_eq!(e.key.as_deref(), Some("databases.\"a.b\".pool_size"));
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn validation_falls_back_to_header_line() {
    // auth_type defaults to md5 and no auth_file: the key is absent, so the
    // [pgferry] header is the best line.
    let e = parse_err("# comment\n[pgferry]\nlisten_port = 7000\n[databases.shop]\n");
    assert_eq!(e.key.as_deref(), Some("pgferry.auth_type"));
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("auth_file"), "{e}");
    // No [pgferry] table at all: no line, but still the key.
    let e = parse_err("[databases.shop]\n");
    assert_eq!(e.line, None);
    assert_eq!(
        e.to_string(),
        format!("config.toml: pgferry.auth_type: {}", e.message)
    );
}

#[test]
fn fractional_and_integer_timeouts() {
    let c = parse(&format!("{MINIMAL}[users.a]\nquery_wait_timeout = 2\n")).unwrap();
    assert_eq!(
        c.query_wait_timeout_for("db", "a"),
        Some(Duration::from_secs(2))
    );
    let text = MINIMAL.replace(
        "[pgferry]\n",
        "[pgferry]\nquery_wait_timeout = 0.5\nquery_timeout = 0\n",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.pgferry.query_wait_timeout, 0.5);
    assert_eq!(
        c.pgferry.query_wait_timeout(),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        c.query_wait_timeout_for("db", "nobody"),
        Some(Duration::from_millis(500))
    );
    assert_eq!(c.pgferry.query_timeout(), None);
}

#[test]
fn secs_helper() {
    assert_eq!(secs(0.0), None);
    assert_eq!(secs(-1.0), None);
    assert_eq!(secs(f64::NAN), None);
    assert_eq!(secs(1.5), Some(Duration::from_millis(1500)));
}

#[test]
fn validation_rules() {
    let cases: &[(&str, &str)] = &[
        ("listen_port = 0", "pgferry.listen_port"),
        ("default_pool_size = 0", "pgferry.default_pool_size"),
        ("max_client_conn = 0", "pgferry.max_client_conn"),
        ("max_packet_size = 1023", "pgferry.max_packet_size"),
        ("server_lifetime = -1", "pgferry.server_lifetime"),
        ("query_timeout = inf", "pgferry.query_timeout"),
        ("shutdown_timeout = nan", "pgferry.shutdown_timeout"),
        ("metrics_addr = \"localhost:9127\"", "pgferry.metrics_addr"),
    ];
    for (line, key) in cases {
        let text = MINIMAL.replace("[pgferry]\n", &format!("[pgferry]\n{line}\n"));
        let e = parse_err(&text);
        assert_eq!(e.key.as_deref(), Some(*key), "{line}: {e}");
        assert_eq!(e.line, Some(2), "{line}: {e}");
    }
    // Boundary values are fine; "" disables metrics.
    let text = MINIMAL.replace(
        "[pgferry]\n",
        "[pgferry]\nmax_packet_size = 1024\nmetrics_addr = \"\"\n",
    );
    assert!(parse(&text).is_ok());
}

#[test]
fn database_and_user_rules() {
    let e = parse_err("[pgferry]\nauth_type = \"trust\"\n");
    assert_eq!(e.key.as_deref(), Some("databases"));
    for name in ["pgbouncer", "pgferry", "PgFerry"] {
        let e = parse_err(&format!("{MINIMAL}[databases.{name}]\n"));
        assert!(e.message.contains("reserved"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
    }
    let e = parse_err(&format!("{MINIMAL}[databases.\"\"]\n"));
    assert!(e.message.contains("empty"), "{e}");
    let e = parse_err(&format!("{MINIMAL}[users.bob]\npool_size = 0\n"));
    assert_eq!(e.key.as_deref(), Some("users.bob.pool_size"));
    assert_eq!(e.line, Some(6));
    let e = parse_err(&format!("{MINIMAL}[users.bob]\nquery_wait_timeout = -2\n"));
    assert_eq!(e.key.as_deref(), Some("users.bob.query_wait_timeout"));
    let e = parse_err(&format!("{MINIMAL}port = 0\n"));
    assert_eq!(e.key.as_deref(), Some("databases.shop.port"));
}

#[test]
fn validate_without_source_has_no_line() {
    let mut c = parse(MINIMAL).unwrap();
    c.pgferry.default_pool_size = 0;
    let e = c.validate().unwrap_err();
    assert_eq!(e.line, None);
    assert_eq!(
        e.to_string(),
        "config.toml: pgferry.default_pool_size: must be at least 1"
    );
}

#[test]
fn load_reports_missing_file() {
    let e = Config::load(Path::new("/nonexistent/pgferry.toml")).unwrap_err();
    assert_eq!(e.path, Some(PathBuf::from("/nonexistent/pgferry.toml")));
    assert!(e
        .to_string()
        .starts_with("/nonexistent/pgferry.toml: cannot read"));
}

#[test]
fn override_precedence() {
    let text = format!(
        "{MINIMAL}pool_mode = \"statement\"\npool_size = 7\n\
         [databases.plain]\n\
         [users.rep]\npool_mode = \"session\"\npool_size = 3\n\
         [users.half]\npool_mode = \"transaction\"\n"
    );
    let c = parse(&text).unwrap();
    // user > database > general
    assert_eq!(c.pool_mode_for("shop", "rep"), PoolMode::Session);
    assert_eq!(c.pool_size_for("shop", "rep"), 3);
    assert_eq!(c.pool_mode_for("shop", "half"), PoolMode::Transaction);
    assert_eq!(c.pool_size_for("shop", "half"), 7);
    assert_eq!(c.pool_mode_for("shop", "anyone"), PoolMode::Statement);
    assert_eq!(c.pool_size_for("shop", "anyone"), 7);
    assert_eq!(c.pool_mode_for("plain", "anyone"), PoolMode::Session);
    assert_eq!(c.pool_size_for("plain", "anyone"), 20);
    assert_eq!(c.pool_size_for("missing", "rep"), 3);
}

#[test]
fn server_dbname_defaults_to_table_name() {
    let c = parse(&format!("{MINIMAL}[databases.alias]\ndbname = \"real\"\n")).unwrap();
    assert_eq!(c.server_dbname("alias"), "real");
    assert_eq!(c.server_dbname("shop"), "shop");
    assert_eq!(c.server_dbname("unknown"), "unknown");
}

#[test]
fn enums_display_and_parse_as_toml() {
    for m in [
        PoolMode::Session,
        PoolMode::Transaction,
        PoolMode::Statement,
    ] {
        assert_eq!(m.to_string().parse::<PoolMode>(), Ok(m));
    }
    for a in [
        AuthType::Trust,
        AuthType::Md5,
        AuthType::ScramSha256,
        AuthType::Plain,
    ] {
        assert_eq!(a.to_string().parse::<AuthType>(), Ok(a));
    }
    assert_eq!(AuthType::ScramSha256.to_string(), "scram-sha-256");
    assert!("Session".parse::<PoolMode>().is_err());
}

#[test]
fn config_round_trips_through_toml() {
    let c = parse(EXAMPLE).unwrap();
    let text = toml::to_string(&c).unwrap();
    let back = parse(&text).unwrap();
    assert_eq!(back.pgferry, c.pgferry);
    assert_eq!(back.databases, c.databases);
    assert_eq!(back.users, c.users);
}

#[test]
fn upstream_with_password() {
    let c = Config::from_upstream(
        "postgres://app:secret@db.example:5433/shop",
        listen(),
        PoolMode::Transaction,
        10,
    )
    .unwrap();
    assert_eq!(c.pgferry.listen_addr, "127.0.0.1");
    assert_eq!(c.pgferry.listen_port, 6432);
    assert_eq!(c.pgferry.pool_mode, PoolMode::Transaction);
    assert_eq!(c.pgferry.default_pool_size, 10);
    assert_eq!(c.pgferry.auth_type, AuthType::ScramSha256);
    assert_eq!(
        c.inline_users.get("app").map(String::as_str),
        Some("secret")
    );
    let db = &c.databases["shop"];
    assert_eq!((db.host.as_str(), db.port), ("db.example", 5433));
    assert_eq!(db.dbname.as_deref(), Some("shop"));
    assert_eq!(c.databases.len(), 1);
}

#[test]
fn upstream_without_password_is_trust() {
    let listen6: SocketAddr = "[::1]:7000".parse().unwrap();
    let c = Config::from_upstream(
        "postgresql://app@localhost/shop?sslmode=disable",
        listen6,
        PoolMode::Session,
        20,
    )
    .unwrap();
    assert_eq!(c.pgferry.auth_type, AuthType::Trust);
    assert!(c.inline_users.is_empty());
    assert_eq!(c.pgferry.listen_addr, "::1");
    assert_eq!(c.pgferry.listen_port, 7000);
    assert_eq!(c.databases["shop"].port, 5432);
}

#[test]
fn upstream_url_variants() {
    // A percent-encoded directory: the server's Unix socket there.
    let u = parse_url("postgres://app@%2Fvar%2Frun%2Fpostgresql:5433/shop").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("/var/run/postgresql", 5433));
    let u = parse_url("postgres://us%40er:p%40ss%3Aw%2Fd@h/").unwrap();
    assert_eq!(u.user, "us@er");
    assert_eq!(u.password.as_deref(), Some("p@ss:w/d"));
    assert_eq!((u.host.as_str(), u.port), ("h", 5432));
    // Database defaults to the user name.
    assert_eq!(u.dbname, "us@er");
    let u = parse_url("POSTGRES://bob:@[::1]:6000").unwrap();
    assert_eq!(u.password.as_deref(), Some(""));
    assert_eq!(
        (u.host.as_str(), u.port, u.dbname.as_str()),
        ("::1", 6000, "bob")
    );
    let u = parse_url("postgres://bob:a+b@h:5432/my%20db#frag").unwrap();
    assert_eq!(u.password.as_deref(), Some("a+b"));
    assert_eq!(u.dbname, "my db");
}

#[test]
fn upstream_bad_urls() {
    let cases = [
        ("not a url", "postgres://"),
        ("mysql://u@h/db", "postgres://"),
        ("postgres://h:5432/db", "user"),
        ("postgres://:pw@h/db", "user"),
        ("postgres://u@/db", "host"),
        ("postgres://u@h:notaport/db", "port"),
        ("postgres://u@h:0/db", "port"),
        ("postgres://u@h:70000/db", "port"),
        ("postgres://u:%zz@h/db", "percent-encoding in password"),
        ("postgres://u:%+1@h/db", "percent-encoding in password"),
        ("postgres://u:%ff@h/db", "UTF-8"),
        ("postgres://u@h1,h2/db", "multiple hosts"),
        ("postgres://u@[::1/db", "IPv6"),
    ];
    for (url, needle) in cases {
        let e = Config::from_upstream(url, listen(), PoolMode::Session, 20).unwrap_err();
        assert!(e.message.contains(needle), "{url}: {e}");
        assert!(e.message.starts_with("upstream URL: "), "{url}: {e}");
    }
    // A bad pool size is caught by validation.
    let e = Config::from_upstream("postgres://u@h/db", listen(), PoolMode::Session, 0).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("pgferry.default_pool_size"));
}

#[test]
fn pgbouncer_settings_without_effect_load_and_are_listed() {
    let text = MINIMAL.replace(
        "[pgferry]\n",
        "[pgferry]\npkt_buf = 4096\ntcp_defer_accept = 1\nsyslog = 0\nresolv_conf = \"\"\n",
    );
    let c = parse(&text).unwrap();
    let names: Vec<&str> = c.ineffective_settings().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["pkt_buf", "tcp_defer_accept", "resolv_conf", "syslog"]
    );
    assert!(parse(MINIMAL).unwrap().ineffective_settings().is_empty());
}

#[test]
fn unsafe_pgbouncer_settings_are_refused_with_a_reason() {
    for (line, key, words) in [
        (
            "auth_type = \"hba\"",
            "auth_type",
            "not supported by pgferry",
        ),
        ("auth_type = \"pam\"", "auth_type", "PAM"),
        ("auth_type = \"ldap\"", "auth_type", "LDAP"),
        (
            "auth_hba_file = \"/etc/hba\"",
            "pgferry.auth_hba_file",
            "not supported",
        ),
        (
            "auth_ident_file = \"/etc/ident\"",
            "pgferry.auth_ident_file",
            "not supported",
        ),
        (
            "auth_ldap_options = \"x\"",
            "pgferry.auth_ldap_options",
            "LDAP",
        ),
        (
            "unix_socket_group = \"pg\"",
            "pgferry.unix_socket_group",
            "group",
        ),
        (
            "user = \"postgres\"",
            "pgferry.user",
            "does not switch user",
        ),
        ("peer_id = 3", "pgferry.peer_id", "peering"),
        (
            "client_tls_protocols = \"tlsv1.0\"",
            "pgferry.client_tls_protocols",
            "TLS 1.2 and 1.3",
        ),
        (
            "server_tls_protocols = \"legacy\"",
            "pgferry.server_tls_protocols",
            "TLS 1.2 and 1.3",
        ),
        (
            "client_tls_ciphers = \"HIGH:!aNULL\"",
            "pgferry.client_tls_ciphers",
            "rustls' safe defaults",
        ),
        (
            "server_tls13_ciphers = \"TLS_AES_128_CCM_SHA256\"",
            "pgferry.server_tls13_ciphers",
            "rustls",
        ),
        (
            "client_tls_ecdhcurve = \"prime256v1\"",
            "pgferry.client_tls_ecdhcurve",
            "rustls",
        ),
        (
            "client_tls_dheparams = \"legacy\"",
            "pgferry.client_tls_dheparams",
            "rustls",
        ),
    ] {
        let text = MINIMAL.replace(
            "auth_type = \"trust\"\n",
            &format!("auth_type = \"trust\"\n{line}\n"),
        );
        let text = if line.starts_with("auth_type") {
            MINIMAL.replace("auth_type = \"trust\"", line)
        } else {
            text
        };
        let e = parse_err(&text);
        assert!(e.to_string().contains(words), "{line}: {e}");
        assert!(e.to_string().contains(key), "{line}: {e}");
    }
    let e = parse_err(&format!("{MINIMAL}[peers.1]\nhost = \"x\"\n"));
    assert!(e.to_string().contains("peering"), "{e}");
    // PgBouncer's defaults are accepted.
    let ok = MINIMAL.replace(
        "[pgferry]\n",
        "[pgferry]\npeer_id = 0\nclient_tls_protocols = \"tlsv1.2, tlsv1.3\"\nserver_tls_protocols = \"all\"\n\
         client_tls_ciphers = \"default\"\nserver_tls_ciphers = \"secure\"\nclient_tls13_ciphers = \"\"\n\
         client_tls_ecdhcurve = \"auto\"\nclient_tls_dheparams = \"auto\"\n",
    );
    parse(&ok).unwrap();
}

#[test]
fn tls_protocol_lists() {
    let v = super::tls_versions("tlsv1.3").unwrap();
    assert!(v.tls13 && !v.tls12);
    let v = super::tls_versions("secure").unwrap();
    assert!(v.tls13 && v.tls12);
    let v = super::tls_versions("tlsv1.2 tlsv1.3").unwrap();
    assert!(v.tls13 && v.tls12);
    assert!(super::tls_versions("").is_err());
    assert!(super::tls_versions("tlsv1.1,tlsv1.2").is_err());
    assert!(super::tls_versions("sslv3").is_err());
}

#[test]
fn database_settings_from_pgbouncer() {
    let text = format!(
        "{MINIMAL}connect_query = \"SET x.y = 1\"\ntimezone = \"UTC\"\ndatestyle = \"ISO, DMY\"\n\
         client_encoding = \"LATIN1\"\nquery_wait_timeout = 7\nload_balance_hosts = \"disable\"\n\
         [users.a]\nquery_wait_timeout = 2\n"
    );
    let c = parse(&text).unwrap();
    let d = c.database("shop").unwrap();
    assert_eq!(d.load_balance_hosts, super::LoadBalanceHosts::Disable);
    assert_eq!(d.connect_query.as_deref(), Some("SET x.y = 1"));
    assert_eq!(
        c.server_startup_params_for("shop"),
        [
            ("client_encoding".to_string(), "LATIN1".to_string()),
            ("DateStyle".to_string(), "ISO, DMY".to_string()),
            ("TimeZone".to_string(), "UTC".to_string()),
        ]
    );
    // user > database > general
    assert_eq!(
        c.query_wait_timeout_for("shop", "a"),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        c.query_wait_timeout_for("shop", "b"),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        c.query_wait_timeout_for("other", "b"),
        Some(Duration::from_secs(120))
    );
    let bad = format!("{MINIMAL}load_balance_hosts = \"random\"\n");
    assert!(parse_err(&bad).to_string().contains("load_balance_hosts"));
}
