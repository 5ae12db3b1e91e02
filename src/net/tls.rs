//! TLS on both sides of the proxy (rustls with the `ring` provider): the server configuration
//! pgferry presents to clients (`client_tls_*`) and the client configuration it uses towards
//! PostgreSQL (`server_tls_*`). Both are built from the configured PEM files when pgferry starts
//! (and again on RELOAD, so renewed certificates are picked up); a file that cannot be read or
//! parsed stops startup with its setting and path in the message.

use super::Stream;
use crate::config::{General, TlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN protocol name PostgreSQL 17 and libpq use; offered and accepted so such peers are happy.
const ALPN: &[u8] = b"postgresql";

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {path}: {message}")]
    File {
        setting: &'static str,
        path: String,
        message: String,
    },
    #[error("{setting}: {message}")]
    Setup {
        setting: &'static str,
        message: String,
    },
}

/// The TLS state shared by the App and every pool's server target; RELOAD swaps it.
pub type SharedTls = Arc<arc_swap::ArcSwap<Tls>>;

/// Everything TLS of one running instance.
#[derive(Debug)]
pub struct Tls {
    /// `client_tls_sslmode`.
    pub client_mode: TlsMode,
    /// What pgferry presents to clients; `None` when client TLS is disabled.
    pub acceptor: Option<Arc<ServerConfig>>,
    /// How pgferry talks to servers; `None` when it never asks for TLS (disable, allow).
    pub server: Option<ServerTls>,
}

/// TLS towards PostgreSQL: the mode and the rustls configuration that implements it.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub mode: TlsMode,
    pub config: Arc<ClientConfig>,
}

impl Tls {
    /// Builds both sides from the `[pgferry]` settings (already validated: the files each mode
    /// needs are named).
    pub fn from_config(g: &General) -> Result<Tls, TlsError> {
        let provider = Arc::new(crypto::ring::default_provider());
        let acceptor = match g.client_tls_sslmode {
            TlsMode::Disable => None,
            mode => Some(Arc::new(client_facing(g, mode, &provider)?)),
        };
        let server = match g.server_tls_sslmode {
            TlsMode::Disable | TlsMode::Allow => None,
            mode => Some(ServerTls {
                mode,
                config: Arc::new(server_facing(g, mode, &provider)?),
            }),
        };
        Ok(Tls {
            client_mode: g.client_tls_sslmode,
            acceptor,
            server,
        })
    }

    /// True when a client connected over `stream` must use TLS (Unix sockets are exempt, as in
    /// PgBouncer: they are local and never offered TLS).
    pub fn client_needs_tls(&self, stream: &Stream) -> bool {
        self.client_mode.requires_tls() && !stream.is_tls() && stream.as_tcp().is_some()
    }
}

/// The server side of client connections.
fn client_facing(
    g: &General,
    mode: TlsMode,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerConfig, TlsError> {
    const SETTING: &str = "client_tls_sslmode";
    let certs = load_certs("client_tls_cert_file", g.client_tls_cert_file.as_deref())?;
    let key = load_key("client_tls_key_file", g.client_tls_key_file.as_deref())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions("client_tls_protocols", &g.client_tls_protocols)?)
        .map_err(|e| setup(SETTING, e))?;
    let builder = if mode.verifies() {
        let roots = load_roots("client_tls_ca_file", g.client_tls_ca_file.as_deref())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| setup("client_tls_ca_file", e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| setup("client_tls_key_file", e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side of server connections.
fn server_facing(
    g: &General,
    mode: TlsMode,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, TlsError> {
    const SETTING: &str = "server_tls_sslmode";
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions("server_tls_protocols", &g.server_tls_protocols)?)
        .map_err(|e| setup(SETTING, e))?;
    let builder = match mode {
        TlsMode::VerifyFull => builder.with_root_certificates(load_roots(
            "server_tls_ca_file",
            g.server_tls_ca_file.as_deref(),
        )?),
        TlsMode::VerifyCa => {
            let roots = load_roots("server_tls_ca_file", g.server_tls_ca_file.as_deref())?;
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| setup("server_tls_ca_file", e))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified {
                provider: provider.clone(),
            })),
    };
    let mut config = match (&g.server_tls_cert_file, &g.server_tls_key_file) {
        (Some(cert), Some(key)) => {
            let certs = load_certs("server_tls_cert_file", Some(cert))?;
            let key = load_key("server_tls_key_file", Some(key))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| setup("server_tls_key_file", e))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The rustls protocol versions a `*_tls_protocols` setting allows (validated at load; an
/// invalid value here still fails cleanly).
fn versions(
    setting: &'static str,
    spec: &str,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let v = crate::config::tls_versions(spec).map_err(|e| setup(setting, e))?;
    let mut out = Vec::new();
    if v.tls13 {
        out.push(&rustls::version::TLS13);
    }
    if v.tls12 {
        out.push(&rustls::version::TLS12);
    }
    Ok(out)
}

fn setup(setting: &'static str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Setup {
        setting,
        message: e.to_string(),
    }
}

fn read(setting: &'static str, path: Option<&Path>) -> Result<(Vec<u8>, String), TlsError> {
    let path = path.ok_or(TlsError::Setup {
        setting,
        message: "not set".into(),
    })?;
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TlsError::File {
        setting,
        path: shown.clone(),
        message: format!("cannot read: {e}"),
    })?;
    Ok((bytes, shown))
}

fn load_certs(
    setting: &'static str,
    path: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let (bytes, shown) = read(setting, path)?;
    let bad = |message: String| TlsError::File {
        setting,
        path: shown.clone(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn load_key(
    setting: &'static str,
    path: Option<&Path>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let (bytes, shown) = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        setting,
        path: shown,
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

fn load_roots(setting: &'static str, path: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let shown = path.map(|p| p.display().to_string()).unwrap_or_default();
    let mut roots = RootCertStore::empty();
    for cert in load_certs(setting, path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            setting,
            path: shown.clone(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Performs the server side of a client's TLS handshake (after pgferry answered 'S').
pub async fn accept(config: &Arc<ServerConfig>, stream: Stream) -> io::Result<Stream> {
    match stream {
        Stream::Tcp(tcp) => {
            let tls = TlsAcceptor::from(config.clone()).accept(tcp).await?;
            Ok(Stream::TlsServer(Box::new(tls)))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TLS is only offered on TCP connections",
        )),
    }
}

/// Performs the client side of the TLS handshake with a server that answered 'S'. `host` is
/// the configured host name (checked against the certificate under verify-full); `ip` stands
/// in when it is not a valid name.
pub async fn connect(
    tls: &ServerTls,
    host: &str,
    ip: IpAddr,
    tcp: TcpStream,
) -> io::Result<Stream> {
    let name = ServerName::try_from(host.to_owned()).unwrap_or(ServerName::IpAddress(ip.into()));
    let stream = TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await?;
    Ok(Stream::TlsClient(Box::new(stream)))
}

/// verify-ca: the chain must lead to a trusted CA; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last, so a name error means the chain
        // was found valid.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// prefer / require: encryption without authentication of the server, as libpq and PgBouncer
/// do in these modes. Handshake signatures are still checked, so the session key is bound to
/// whatever certificate the server sent.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
