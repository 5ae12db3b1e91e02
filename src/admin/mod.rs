//! The admin console: the virtual database `pgbouncer` (alias `pgferry`) with PgBouncer's SHOW
//! and control commands. (Skeleton: commands arrive with the admin-console work.)

use crate::app::App;
use crate::client::ClientError;
use crate::net::Conn;
use crate::protocol::build::{self, Severity};
use std::sync::Arc;
use tokio::net::TcpStream;

/// Names clients use to reach the console.
pub const DATABASES: [&str; 2] = ["pgbouncer", "pgferry"];

/// What a console user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRole {
    /// `admin_users`: every command.
    Admin,
    /// `stats_users`: every SHOW.
    Stats,
}

/// Serves an authenticated console client until it leaves.
pub async fn serve(
    _app: &Arc<App>,
    conn: &mut Conn<TcpStream>,
    _user: &str,
    _role: AdminRole,
) -> Result<(), ClientError> {
    build::error(
        conn.out(),
        Severity::Fatal,
        "0A000",
        "admin console not available yet",
    );
    conn.flush().await?;
    Ok(())
}
