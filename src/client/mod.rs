//! One task per client: startup negotiation, authentication, login, then the session loop
//! (`session`) that routes the client's messages to pooled server connections.

pub mod autoprep;
mod login;
pub mod params;
pub mod park;
mod session;
pub mod statements;
mod tls;

use crate::app::listen::LiveGuard;
use crate::app::App;
use crate::net::Stream;
use crate::net::{Conn, NetError};
use crate::protocol::build::{self, Severity};
use std::net::SocketAddr;
use std::sync::Arc;

/// How a client connection ended badly (logged; the client was already told if possible).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{0}")]
    Refused(String),
    #[error("client_login_timeout")]
    LoginTimeout,
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Net(NetError::Io(e))
    }
}

/// Serves one accepted client connection to its end (holding `guard` until then), or until
/// it is parked (`park`), which hands the connection and `guard` on.
///
/// The setup runs before the future is built, so the future holds the connection once (an
/// `async fn` keeps its arguments and the locals moved out of them in separate slots, and an
/// idle client's memory is mostly the size of this future).
pub fn serve(
    app: Arc<App>,
    stream: Stream,
    peer: SocketAddr,
    guard: LiveGuard,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay();
    let count = app.client_enter();
    let max_packet = app.config.load().pgferry.max_packet_size as usize;
    let mut conn = Conn::new(stream, max_packet);
    async move {
        let result = session_for(&app, &mut conn, peer, count).await;
        if let Some(parked) = ended(&peer, result) {
            return park::park(&app, conn, parked, guard);
        }
        conn.close().await;
        app.client_leave();
    }
}

/// Runs the session of a parked client again, once it sent something (or was killed, or
/// the shutdown began). Called in the runtime's context (the socket is registered here).
pub(crate) fn resume(
    app: Arc<App>,
    parked: park::Parked,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let max_packet = app.config.load().pgferry.max_packet_size as usize;
    let park::Parked {
        stream,
        guard,
        session,
    } = parked;
    let conn = stream.into_stream().map(|s| Conn::new(s, max_packet));
    resume_conn(app, conn, Box::new(session), guard)
}

/// Runs a session that was stopped for parking on `conn`.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice in the task"
)]
pub(crate) fn resume_conn(
    app: Arc<App>,
    conn: std::io::Result<Conn<Stream>>,
    session: Box<session::Parked>,
    guard: LiveGuard,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot resume a parked client");
                session.abandon(&app);
                app.client_leave();
                return;
            }
        };
        let peer = session.info().addr();
        let result = session::resume(&app, &mut conn, session).await;
        if let Some(parked) = ended(&peer, result) {
            return park::park(&app, conn, parked, guard);
        }
        conn.close().await;
        app.client_leave();
    }
}

/// Logs how a session ended; the session's state if it is to be parked.
fn ended(
    peer: &SocketAddr,
    result: Result<Option<session::Parked>, ClientError>,
) -> Option<session::Parked> {
    match result {
        Ok(parked) => parked,
        Err(ClientError::Net(NetError::Closed)) => None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "client connection ended");
            None
        }
    }
}

/// A plain function returning an `async move` block: an `async fn` would keep each argument
/// twice (as itself and as the local it is moved into), in every client's task.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice in the task"
)]
fn session_for<'a>(
    app: &'a Arc<App>,
    conn: &'a mut Conn<Stream>,
    peer: SocketAddr,
    count: usize,
) -> impl std::future::Future<Output = Result<Option<session::Parked>, ClientError>> + Send + 'a {
    async move {
        // The login future (SCRAM state and all) is boxed so it is freed once the client is in.
        let login = match Box::pin(login::login(app, conn, peer, count)).await? {
            Some(login::Outcome::Session(login)) => login,
            Some(login::Outcome::Admin { user, role }) => {
                tracing::info!(%peer, %user, "admin console login");
                return Box::pin(crate::admin::serve(app, conn, &user, role))
                    .await
                    .map(|()| None);
            }
            None => return Ok(None), // a cancel request, already answered
        };
        if app.config.load().pgferry.log_connections {
            tracing::info!(%peer, db = %login.pool.database, user = %login.user, "login");
        }
        // The session lists the client (SHOW CLIENTS) and unregisters it when it ends (not
        // when it is parked).
        session::run(app, conn, login, peer).await
    }
}

/// Sends an error and marks the connection for closing.
pub(crate) async fn refuse(
    conn: &mut Conn<Stream>,
    code: &str,
    message: &str,
) -> Result<(), ClientError> {
    build::error(conn.out(), Severity::Fatal, code, message);
    conn.flush().await?;
    Err(ClientError::Refused(message.to_owned()))
}
