//! Socket options pgferry sets on the TCP connections it accepts and opens: keepalive and
//! `tcp_user_timeout` and `tcp_socket_buffer`, with PgBouncer's setting names.

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
    /// SO_SNDBUF and SO_RCVBUF in bytes; 0 keeps the OS default.
    socket_buffer: u32,
}

impl TcpTuning {
    pub fn from_config(g: &General) -> TcpTuning {
        TcpTuning {
            keepalive: g.tcp_keepalive,
            idle: g.tcp_keepidle,
            interval: g.tcp_keepintvl,
            count: g.tcp_keepcnt,
            user_timeout_ms: g.tcp_user_timeout,
            socket_buffer: g.tcp_socket_buffer,
        }
    }

    /// Applies keepalive (`tcp_keepalive`, `tcp_keepidle`, `tcp_keepintvl`, `tcp_keepcnt`;
    /// 0 keeps the OS default), `tcp_user_timeout` and `tcp_socket_buffer` to a connected socket.
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
        if self.socket_buffer > 0 {
            let size = self.socket_buffer as usize;
            sock.set_send_buffer_size(size)?;
            sock.set_recv_buffer_size(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_buffer_is_applied_and_zero_keeps_the_default() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let default = TcpStream::connect(addr).await.unwrap();
        let default_rcv = SockRef::from(&default).recv_buffer_size().unwrap();
        let g = General {
            tcp_socket_buffer: 0,
            ..General::default()
        };
        TcpTuning::from_config(&g).apply(&default).unwrap();
        assert_eq!(
            SockRef::from(&default).recv_buffer_size().unwrap(),
            default_rcv
        );
        let s = TcpStream::connect(addr).await.unwrap();
        let g = General {
            tcp_socket_buffer: 24_576,
            ..General::default()
        };
        TcpTuning::from_config(&g).apply(&s).unwrap();
        // Linux doubles the requested size for its own bookkeeping.
        let rcv = SockRef::from(&s).recv_buffer_size().unwrap();
        let snd = SockRef::from(&s).send_buffer_size().unwrap();
        assert!((24_576..=49_152).contains(&rcv), "SO_RCVBUF {rcv}");
        assert!((24_576..=49_152).contains(&snd), "SO_SNDBUF {snd}");
        assert_ne!(rcv, default_rcv);
    }
}
