//! TLS for clients: answering SSLRequest / GSSENCRequest, the TLS handshake, refusing plain
//! logins under `client_tls_sslmode = require` or stricter, and `auth_type = "cert"`.

use super::{refuse, ClientError};
use crate::app::App;
use crate::net::{Conn, NetError, Stream};
use std::net::SocketAddr;

/// Answers an SSLRequest: 'S' and the TLS handshake when client TLS is enabled and the client
/// came over TCP, 'N' otherwise (the client may then continue in plain text).
pub(super) async fn answer_ssl_request(
    app: &App,
    conn: &mut Conn<Stream>,
    peer: SocketAddr,
) -> Result<(), ClientError> {
    if conn.stream().is_tls() {
        return refuse(
            conn,
            "08P01",
            "SSLRequest on a connection that already uses TLS",
        )
        .await;
    }
    let config = app.tls.load().acceptor.clone();
    let Some(config) = config.filter(|_| conn.stream().as_tcp().is_some()) else {
        conn.queue(b"N");
        conn.flush().await?;
        return Ok(());
    };
    // A client waits for 'S' before it starts the handshake; bytes already here were sent in
    // plain text and could have been injected by a man in the middle (CVE-2021-23222).
    if conn.buffered() > 0 {
        return refuse(conn, "08P01", "received unencrypted data after SSL request").await;
    }
    conn.queue(b"S");
    conn.flush().await?;
    if let Err(e) = conn
        .upgrade(|plain| crate::net::tls::accept(&config, plain))
        .await
    {
        tracing::info!(%peer, "client TLS handshake failed: {e}");
        return Err(ClientError::Net(NetError::Io(e)));
    }
    Ok(())
}

/// Answers a GSSENCRequest: GSSAPI encryption is not offered.
pub(super) async fn answer_gss_request(conn: &mut Conn<Stream>) -> Result<(), ClientError> {
    if conn.stream().is_tls() {
        return refuse(
            conn,
            "08P01",
            "GSSENCRequest on a connection that already uses TLS",
        )
        .await;
    }
    conn.queue(b"N");
    conn.flush().await?;
    Ok(())
}

/// Refuses a TCP client that logs in without TLS when `client_tls_sslmode` requires it.
pub(super) async fn require_tls(app: &App, conn: &mut Conn<Stream>) -> Result<(), ClientError> {
    if app.tls.load().client_needs_tls(conn.stream()) {
        return refuse(conn, "28000", "SSL required").await;
    }
    Ok(())
}

/// `auth_type = "cert"`: the verified client certificate's common name must be the user name.
pub(super) async fn cert_login(conn: &mut Conn<Stream>, user: &str) -> Result<(), ClientError> {
    let Some(cert) = conn.stream().peer_certificate() else {
        return refuse(
            conn,
            "28000",
            "connection requires a valid client certificate",
        )
        .await;
    };
    match crate::net::common_name(cert) {
        Some(cn) if cn == user => Ok(()),
        cn => {
            tracing::info!(
                %user,
                cn = cn.as_deref().unwrap_or("(none)"),
                "certificate common name does not match the user name"
            );
            refuse(
                conn,
                "28000",
                &format!("certificate authentication failed for user \"{user}\""),
            )
            .await
        }
    }
}
