//! Cancel keys: every client gets pgferry's own BackendKeyData; a CancelRequest carrying it is
//! forwarded, over a new connection, to the server running that client's query — and dropped
//! when the client has none. A client cannot give its server back while a cancel for it is
//! being delivered, so a late cancel never lands on another client's query.

use crate::protocol::build;
use bytes::BytesMut;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Where a client's query is running now.
#[derive(Clone, Copy, Debug)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

/// The slot a client updates when it gets or gives back a server.
#[derive(Debug, Default)]
pub struct CancelSlot {
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    pub async fn set(&self, t: Option<CancelTarget>) {
        *self.target.lock().await = t;
    }
}

struct Entry {
    secret: i32,
    slot: Arc<CancelSlot>,
}

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    keys: DashMap<i32, Entry>,
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) for a client.
    pub fn register(&self) -> (i32, i32, Arc<CancelSlot>) {
        let slot = Arc::new(CancelSlot::default());
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 {
                continue;
            }
            let secret = rand::random::<i32>();
            if let dashmap::Entry::Vacant(v) = self.keys.entry(pid) {
                v.insert(Entry {
                    secret,
                    slot: slot.clone(),
                });
                return (pid, secret, slot);
            }
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.keys.remove(&pid);
    }

    /// Handles a CancelRequest; returns true if it was forwarded to a server.
    pub async fn cancel(&self, pid: i32, secret: i32) -> bool {
        let slot = match self.keys.get(&pid) {
            Some(e) if e.secret == secret => e.slot.clone(),
            _ => return false,
        };
        // Hold the slot while delivering: the client cannot release its server meanwhile.
        let guard = slot.target.lock().await;
        let Some(t) = *guard else { return false };
        let sent = tokio::time::timeout(Duration::from_secs(5), send_cancel(t)).await;
        drop(guard);
        matches!(sent, Ok(Ok(())))
    }
}

async fn send_cancel(t: CancelTarget) -> std::io::Result<()> {
    let mut s = TcpStream::connect(t.addr).await?;
    let mut buf = BytesMut::new();
    build::cancel_request(&mut buf, t.pid, t.secret);
    s.write_all(&buf).await?;
    // PostgreSQL closes the connection once it has signalled the backend.
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink).await;
    Ok(())
}
