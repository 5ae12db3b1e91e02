//! Socket options pgferry sets on the TCP connections it accepts and opens: keepalive and
//! `tcp_user_timeout`, with PgBouncer's setting names.

use crate::config::General;
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

/// Socket options for accepted client connections and for server connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTuning {
    keepalive: bool,
    idle: u32,
    interval: u32,
    count: u32,
    user_timeout_ms: u32,
}

impl TcpTuning {
    pub fn from_config(g: &General) -> TcpTuning {
        TcpTuning {
            keepalive: g.tcp_keepalive,
            idle: g.tcp_keepidle,
            interval: g.tcp_keepintvl,
            count: g.tcp_keepcnt,
            user_timeout_ms: g.tcp_user_timeout,
        }
    }

    /// Applies keepalive (`tcp_keepalive`, `tcp_keepidle`, `tcp_keepintvl`, `tcp_keepcnt`;
    /// 0 keeps the OS default) and `tcp_user_timeout` to a connected socket.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let sock = SockRef::from(stream);
        if self.keepalive {
            let mut ka = TcpKeepalive::new();
            if self.idle > 0 {
                ka = ka.with_time(Duration::from_secs(u64::from(self.idle)));
            }
            if self.interval > 0 {
                ka = ka.with_interval(Duration::from_secs(u64::from(self.interval)));
            }
            if self.count > 0 {
                ka = ka.with_retries(self.count);
            }
            sock.set_tcp_keepalive(&ka)?;
        } else {
            sock.set_keepalive(false)?;
        }
        if self.user_timeout_ms > 0 {
            let t = Duration::from_millis(u64::from(self.user_timeout_ms));
            sock.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}
