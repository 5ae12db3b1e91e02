#![allow(clippy::unwrap_used)]
//! TLS on both sides against a real PostgreSQL: clients negotiating TLS with pgferry
//! (require, verify-full with client certificates, auth_type = "cert", the admin console,
//! libpq's psql), plain clients refused, plaintext injected before the handshake refused;
//! pgferry negotiating TLS with an `ssl = on` PostgreSQL (require, verify-ca, verify-full,
//! its own client certificate) and refusing untrusted servers; startup errors for bad files.
//! Certificates are generated with rcgen for each run.

use crate::common::*;
use pgferry::app::{self, Running};
use pgferry::config::{AuthType, Config, PoolMode, TlsMode};
use pgferry::testkit::{give_to_server_user, ClusterOptions, PgCluster};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A certificate and its key, as PEM files and in memory.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    key_pem: String,
}

/// Everything one test run needs, in a directory PostgreSQL can read.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    ca_pem: String,
    wrong_ca: PathBuf,
    wrong_ca_pem: String,
    /// pgferry's certificate for clients: 127.0.0.1 and localhost.
    ferry: Pair,
    /// PostgreSQL's certificate: the name `localhost` only, so verify-ca and verify-full differ
    /// when pgferry connects to 127.0.0.1.
    pg: Pair,
    /// Client certificates with CN `app`: from the CA, and from a CA nobody trusts.
    client_app: Pair,
    client_app_wrong_ca: Pair,
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    fn new() -> Pki {
        // PostgreSQL (the `postgres` OS user when we are root) must reach its key and cert.
        let dir = tempfile::Builder::new()
            .prefix("pgferry-tls-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca = make_ca("pgferry test CA");
        let wrong = make_ca("someone else's CA");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let leaf = |name: &str,
                    cn: &str,
                    sans: &[&str],
                    usage: ExtendedKeyUsagePurpose,
                    issuer: &CertifiedIssuer<'static, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, issuer).unwrap();
            let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
            let key_path = write(&format!("{name}.key"), &key_pem);
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
            Pair {
                cert: write(&format!("{name}.crt"), &cert_pem),
                key: key_path,
                cert_pem,
                key_pem,
            }
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ferry = leaf(
            "ferry",
            "pgferry",
            &["127.0.0.1", "localhost"],
            ServerAuth,
            &ca,
        );
        let pg = leaf("pg", "localhost", &["localhost"], ServerAuth, &ca);
        let client_app = leaf("client-app", "app", &[], ClientAuth, &ca);
        let client_app_wrong_ca = leaf("client-app-wrong", "app", &[], ClientAuth, &wrong);
        for f in [&pg.cert, &pg.key] {
            give_to_server_user(f).unwrap();
        }
        let ca_pem = ca.pem();
        let wrong_ca_pem = wrong.pem();
        Pki {
            ca: write("ca.crt", &ca_pem),
            wrong_ca: write("wrong-ca.crt", &wrong_ca_pem),
            ca_pem,
            wrong_ca_pem,
            ferry,
            pg,
            client_app,
            client_app_wrong_ca,
            dir,
        }
    }
}

/// PostgreSQL with `ssl = on`, its certificate from `pki`, asking clients for certificates
/// signed by the test CA (optional: pg_hba does not require them).
async fn ssl_cluster(pki: &Pki) -> PgCluster {
    let opts = ClusterOptions {
        extra_conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", pki.pg.cert.display()),
            format!("ssl_key_file = '{}'", pki.pg.key.display()),
            format!("ssl_ca_file = '{}'", pki.ca.display()),
        ],
        ..ClusterOptions::default()
    };
    tokio::task::spawn_blocking(move || cluster_with(opts))
        .await
        .unwrap()
}

/// Client TLS settings for pgferry from `pki`.
fn client_tls(c: &mut Config, pki: &Pki, mode: TlsMode) {
    c.pgferry.client_tls_sslmode = mode;
    c.pgferry.client_tls_cert_file = Some(pki.ferry.cert.clone());
    c.pgferry.client_tls_key_file = Some(pki.ferry.key.clone());
    c.pgferry.client_tls_ca_file = Some(pki.ca.clone());
}

/// A rustls client configuration trusting `ca_pem`, presenting `cert` if given.
fn connector(ca_pem: &str, cert: Option<&Pair>) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        Some(p) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(p.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    MakeRustlsConnect::new(config)
}

/// Connects through pgferry at `port` over TLS (sslmode=require: TLS or nothing).
async fn connect_tls(
    port: u16,
    user: &str,
    pw: &str,
    db: &str,
    tls: MakeRustlsConnect,
) -> Result<Client, tokio_postgres::Error> {
    let url = format!(
        "host=127.0.0.1 port={port} user={user} password={pw} dbname={db} \
         sslmode=require connect_timeout=10"
    );
    let (client, conn) = tokio_postgres::connect(&url, tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Another pgferry in front of PostgreSQL at `pg_port` (the caller keeps the directory).
async fn ferry(
    pg_port: u16,
    tweak: impl FnOnce(&mut Config),
) -> (Result<Running, app::AppError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = base_config(pg_port, PoolMode::Transaction, 2, dir.path());
    tweak(&mut c);
    (app::start(c).await, dir)
}

/// `ssl` and `client_dn` of the backend serving this client, as PostgreSQL sees it.
async fn backend_ssl(c: &Client) -> (bool, Option<String>) {
    let row = c
        .query_one(
            "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<(String, Option<String>)>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| {
                        (
                            r.columns()[i].name().to_owned(),
                            r.get(i).map(str::to_owned),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn col<'a>(row: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_require_serves_tls_clients_and_refuses_plain_ones() {
    let pki = Pki::new();
    let env = env(PoolMode::Transaction, 2, |c| {
        client_tls(c, &pki, TlsMode::Require);
        c.pgferry.admin_users = vec!["app".into()];
    })
    .await;
    let port = env.addr.port();

    // A TLS client (checking pgferry's certificate against the CA) works.
    let client = connect_tls(port, "app", APP_PW, "shop", connector(&pki.ca_pem, None))
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);

    // The admin console over TLS lists that client with its TLS protocol.
    let console = connect_tls(
        port,
        "app",
        APP_PW,
        "pgbouncer",
        connector(&pki.ca_pem, None),
    )
    .await
    .unwrap();
    let clients = rows(console.simple_query("SHOW CLIENTS").await.unwrap());
    let shop = clients
        .iter()
        .find(|r| col(r, "database") == Some("shop"))
        .expect("the shop client in SHOW CLIENTS");
    let tls = col(shop, "tls").unwrap_or("");
    assert!(tls.starts_with("TLSv1."), "tls column: {tls:?}");

    // A plain client is refused as PostgreSQL refuses one its pg_hba.conf does not admit.
    let err = env.try_connect("app", APP_PW).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:?}");
    assert!(msg(&err).contains("SSL required"), "{err:?}");

    // A client trusting another CA does not accept pgferry's certificate.
    assert!(connect_tls(
        port,
        "app",
        APP_PW,
        "shop",
        connector(&pki.wrong_ca_pem, None)
    )
    .await
    .is_err());

    // Plaintext sent after the SSLRequest, before the handshake, is refused (CVE-2021-23222).
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    bytes.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
    s.write_all(&bytes).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("08P01") && text.contains("unencrypted data after SSL request"),
        "{text}"
    );

    // GSSAPI encryption is still declined, and the client may go on to ask for TLS.
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"N");
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"S");

    // libpq (OpenSSL) verifying pgferry's certificate and host name.
    if let Some(psql) = pgferry::testkit::psql_path() {
        let out = std::process::Command::new(psql)
            .arg(format!(
                "host=127.0.0.1 port={port} user=app dbname=shop sslmode=verify-full sslrootcert={}",
                pki.ca.display()
            ))
            .args(["-XAtc", "SELECT count(*) FROM items"])
            .env("PGPASSWORD", APP_PW)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100");
    }
    drop(pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verify_full_needs_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let env = env(PoolMode::Transaction, 2, |c| {
        client_tls(c, &pki, TlsMode::VerifyFull)
    })
    .await;
    let port = env.addr.port();

    let good = connect_tls(
        port,
        "app",
        APP_PW,
        "shop",
        connector(&pki.ca_pem, Some(&pki.client_app)),
    )
    .await
    .unwrap();
    assert_eq!(
        good.query_one("SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );

    // No certificate, or one from a CA pgferry does not trust: no session.
    for cert in [None, Some(&pki.client_app_wrong_ca)] {
        let r = connect_tls(port, "app", APP_PW, "shop", connector(&pki.ca_pem, cert)).await;
        match r {
            Err(_) => {}
            Ok(c) => {
                // TLS 1.3 finishes the client's side of the handshake before the server has
                // judged its certificate: the refusal then arrives on first use.
                assert!(c.query_one("SELECT 1", &[]).await.is_err());
            }
        }
    }
    // And a plain client is refused.
    let err = env.try_connect("app", APP_PW).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_logs_in_by_common_name() {
    let pki = Pki::new();
    let env = env(PoolMode::Transaction, 2, |c| {
        client_tls(c, &pki, TlsMode::VerifyCa);
        c.pgferry.auth_type = AuthType::Cert;
    })
    .await;
    let port = env.addr.port();
    let with_cert = || connector(&pki.ca_pem, Some(&pki.client_app));

    // CN "app" logs in as app without a password; the server login uses app's auth_file entry.
    let c = connect_tls(port, "app", "not-asked", "shop", with_cert())
        .await
        .unwrap();
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app");

    // The same certificate does not open md5user's door.
    let err = connect_tls(port, "md5user", MD5_PW, "shop", with_cert())
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:?}");
    assert!(
        msg(&err).contains("certificate authentication failed for user \"md5user\""),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_modes_against_an_ssl_postgres() {
    let pki = Pki::new();
    let pg = ssl_cluster(&pki).await;
    let port = pg.port();

    // prefer (the default): TLS because the server offers it; SHOW SERVERS says so.
    let env = env_with(pg, PoolMode::Transaction, 2, |c| {
        c.pgferry.admin_users = vec!["app".into()];
    })
    .await;
    let c = env.connect().await;
    assert_eq!(backend_ssl(&c).await, (true, None));
    // In transaction mode every statement checks the server out of the pool again: the idle
    // TLS connection passes the liveness probe and is reused, not replaced.
    let mut pids = std::collections::HashSet::new();
    for _ in 0..20 {
        let p: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pids.insert(p);
    }
    assert_eq!(pids.len(), 1, "{pids:?}");
    // A TLS server connection killed while idle is noticed and replaced.
    env.direct()
        .await
        .execute(
            "SELECT pg_terminate_backend($1)",
            &[pids.iter().next().unwrap()],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ssl, _) = backend_ssl(&c).await;
    assert!(ssl);
    let console = plain_to(env.addr.port(), "pgbouncer").await;
    let servers = rows(console.simple_query("SHOW SERVERS").await.unwrap());
    assert!(!servers.is_empty());
    for s in &servers {
        let tls = col(s, "tls").unwrap_or("");
        assert!(tls.starts_with("TLSv1."), "tls column: {tls:?}");
    }

    // disable: plain even though the server offers TLS.
    let (ferry_plain, _d1) = ferry(port, |c| c.pgferry.server_tls_sslmode = TlsMode::Disable).await;
    let c = connect_url(&url(ferry_plain.as_ref().unwrap()))
        .await
        .unwrap();
    assert_eq!(backend_ssl(&c).await, (false, None));

    // require: TLS without checking the certificate.
    let (ferry_req, _d2) = ferry(port, |c| c.pgferry.server_tls_sslmode = TlsMode::Require).await;
    let c = connect_url(&url(ferry_req.as_ref().unwrap()))
        .await
        .unwrap();
    assert_eq!(backend_ssl(&c).await, (true, None));

    // verify-full to `localhost` (the name in PostgreSQL's certificate), presenting pgferry's
    // own client certificate, which PostgreSQL sees.
    let (ferry_full, _d3) = ferry(port, |c| {
        c.pgferry.server_tls_sslmode = TlsMode::VerifyFull;
        c.pgferry.server_tls_ca_file = Some(pki.ca.clone());
        c.pgferry.server_tls_cert_file = Some(pki.client_app.cert.clone());
        c.pgferry.server_tls_key_file = Some(pki.client_app.key.clone());
        c.databases.get_mut("shop").unwrap().host = "localhost".into();
    })
    .await;
    let c = connect_url(&url(ferry_full.as_ref().unwrap()))
        .await
        .unwrap();
    assert_eq!(backend_ssl(&c).await, (true, Some("/CN=app".to_owned())));

    // verify-full to 127.0.0.1: the certificate does not name it.
    let (ferry_ip, _d4) = ferry(port, |c| {
        c.pgferry.server_tls_sslmode = TlsMode::VerifyFull;
        c.pgferry.server_tls_ca_file = Some(pki.ca.clone());
    })
    .await;
    let err = connect_url(&url(ferry_ip.as_ref().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(
        msg(&err).contains("certificate not valid for name"),
        "{err:?}"
    );

    // verify-ca to 127.0.0.1: the chain is all that is checked.
    let (ferry_ca, _d5) = ferry(port, |c| {
        c.pgferry.server_tls_sslmode = TlsMode::VerifyCa;
        c.pgferry.server_tls_ca_file = Some(pki.ca.clone());
    })
    .await;
    let c = connect_url(&url(ferry_ca.as_ref().unwrap())).await.unwrap();
    assert_eq!(backend_ssl(&c).await, (true, None));

    // A CA that did not sign PostgreSQL's certificate: the login fails and says why.
    for mode in [TlsMode::VerifyCa, TlsMode::VerifyFull] {
        let (ferry_wrong, _d) = ferry(port, |c| {
            c.pgferry.server_tls_sslmode = mode;
            c.pgferry.server_tls_ca_file = Some(pki.wrong_ca.clone());
            c.databases.get_mut("shop").unwrap().host = "localhost".into();
        })
        .await;
        let err = connect_url(&url(ferry_wrong.as_ref().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
        let text = msg(&err);
        assert!(
            text.contains("TLS handshake") && text.contains("UnknownIssuer"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_against_a_plain_postgres() {
    let env = env(PoolMode::Transaction, 2, |_| {}).await;
    // prefer (the default) falls back to plain.
    let c = env.connect().await;
    assert_eq!(backend_ssl(&c).await, (false, None));
    // require refuses to go on in plain text.
    let (ferry_req, _d) = ferry(env.pg.port(), |c| {
        c.pgferry.server_tls_sslmode = TlsMode::Require
    })
    .await;
    let err = connect_url(&url(ferry_req.as_ref().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(msg(&err).contains("does not support TLS"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_startup_with_their_path() {
    let pki = Pki::new();
    let missing = pki.dir.path().join("missing.crt");
    let (r, _d) = ferry(1, |c| {
        client_tls(c, &pki, TlsMode::Require);
        c.pgferry.client_tls_cert_file = Some(missing.clone());
    })
    .await;
    let err = r.err().expect("pgferry must not start").to_string();
    assert!(
        err.contains("client_tls_cert_file") && err.contains(&missing.display().to_string()),
        "{err:?}"
    );

    // A key file holding a certificate.
    let (r, _d) = ferry(1, |c| {
        client_tls(c, &pki, TlsMode::Require);
        c.pgferry.client_tls_key_file = Some(pki.ferry.cert.clone());
    })
    .await;
    let err = r.err().expect("pgferry must not start").to_string();
    assert!(
        err.contains("client_tls_key_file") && err.contains(&pki.ferry.cert.display().to_string()),
        "{err:?}"
    );

    // A CA file without certificates.
    let empty = pki.dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let (r, _d) = ferry(1, |c| {
        c.pgferry.server_tls_sslmode = TlsMode::VerifyFull;
        c.pgferry.server_tls_ca_file = Some(empty.clone());
    })
    .await;
    let err = r.err().expect("pgferry must not start").to_string();
    assert!(
        err.contains("server_tls_ca_file") && err.contains(&empty.display().to_string()),
        "{err:?}"
    );
}

/// Plain connection string through the pgferry `r` as app.
fn url(r: &Running) -> String {
    format!(
        "host=127.0.0.1 port={} user=app password={APP_PW} dbname=shop connect_timeout=10",
        r.addr.port()
    )
}

/// The server's message of a tokio-postgres error (its Display says only "db error").
fn msg(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| format!("{e:?}"), |d| d.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_client_tls_sslmode_applies_to_new_clients() {
    let pki = Pki::new();
    let env = env(PoolMode::Transaction, 2, |c| {
        client_tls(c, &pki, TlsMode::Disable);
        c.pgferry.admin_users = vec!["app".into()];
    })
    .await;
    let port = env.addr.port();
    // Disabled: SSLRequest is declined, plain clients are welcome.
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"N");
    let plain = env.connect().await;
    assert!(
        connect_tls(port, "app", APP_PW, "shop", connector(&pki.ca_pem, None))
            .await
            .is_err()
    );

    let console = plain_to(port, "pgbouncer").await;
    console
        .simple_query("SET client_tls_sslmode = 'require'")
        .await
        .unwrap();
    let tls = connect_tls(port, "app", APP_PW, "shop", connector(&pki.ca_pem, None))
        .await
        .unwrap();
    tls.simple_query("SELECT 1").await.unwrap();
    let err = env.try_connect("app", APP_PW).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:?}");
    // A client already in stays.
    plain.simple_query("SELECT 1").await.unwrap();
}

/// A plain client of pgferry at `port` as app, on `db`.
async fn plain_to(port: u16, db: &str) -> Client {
    connect_url(&format!(
        "host=127.0.0.1 port={port} user=app password={APP_PW} dbname={db} connect_timeout=10"
    ))
    .await
    .unwrap()
}

/// auth_query's own connection follows server_tls_sslmode like pool connections: it carries
/// password secrets, so under require it must not go in plain text, and under verify-full a
/// certificate that does not name the host stops the lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_connections_use_server_tls() {
    let pki = Pki::new();
    let pg = with_md5_role(ssl_cluster(&pki).await, "aq", "aq-pass").await;
    let port = pg.port();
    let looked_up = |c: &mut Config, mode: TlsMode| {
        c.pgferry.auth_type = AuthType::Md5;
        c.pgferry.auth_user = Some("postgres".into());
        c.pgferry.server_tls_sslmode = mode;
        c.pgferry.server_tls_ca_file = Some(pki.ca.clone());
    };
    let aq_url =
        |r: &Running| url(r).replace("user=app password=app-secret", "user=aq password=aq-pass");
    let direct = direct_to(port).await;

    let (ferry_req, _d1) = ferry(port, |c| looked_up(c, TlsMode::Require)).await;
    let c = connect_url(&aq_url(ferry_req.as_ref().unwrap()))
        .await
        .unwrap();
    assert_eq!(backend_ssl(&c).await, (true, None));
    let lookups: Vec<bool> = direct
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'pgferry auth_query'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lookups, vec![true], "auth_query connections (ssl of each)");

    // verify-full to 127.0.0.1: PostgreSQL's certificate names only localhost.
    let (ferry_full, _d2) = ferry(port, |c| looked_up(c, TlsMode::VerifyFull)).await;
    let err = connect_url(&aq_url(ferry_full.as_ref().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(msg(&err).contains("auth_user"), "{err:?}");
    assert!(msg(&err).contains("certificate"), "{err:?}");
}
