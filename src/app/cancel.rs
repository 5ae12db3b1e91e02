//! Cancel keys: every client gets pgferry's own BackendKeyData; a CancelRequest carrying it is
//! forwarded, over a new connection, to the server running that client's query. When the
//! client has no server, a request of its still waiting for one is answered with 57014 (it
//! never runs); otherwise the cancel is dropped. A client cannot give its server back while a cancel for it is
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
    /// Told when a cancel arrives while the client has no server: a request still waiting
    /// for one is then answered with 57014 without ever running.
    waiting: tokio::sync::Notify,
}

impl CancelSlot {
    pub async fn set(&self, t: Option<CancelTarget>) {
        *self.target.lock().await = t;
    }

    /// Sets the target without waiting; false (nothing changed) while a cancel is being
    /// delivered, when the caller must use [`CancelSlot::set`].
    pub fn try_set(&self, t: Option<CancelTarget>) -> bool {
        match self.target.try_lock() {
            Ok(mut g) => {
                *g = t;
                true
            }
            Err(_) => false,
        }
    }

    /// Completes when a cancel arrives for this client while it has no server. Only cancels
    /// sent after this future was created count.
    pub fn cancelled_while_waiting(&self) -> tokio::sync::futures::Notified<'_> {
        self.waiting.notified()
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

    /// Registers a client under a key it was given elsewhere (session mode hands out the
    /// server's own BackendKeyData). Falls back to a fresh key if `pid` is taken, which happens
    /// only when two servers behind pgferry reuse one process id.
    pub fn register_as(&self, pid: i32, secret: i32) -> (i32, i32, Arc<CancelSlot>) {
        let slot = Arc::new(CancelSlot::default());
        if pid != 0 {
            if let dashmap::Entry::Vacant(v) = self.keys.entry(pid) {
                v.insert(Entry {
                    secret,
                    slot: slot.clone(),
                });
                return (pid, secret, slot);
            }
        }
        tracing::debug!(pid, "backend key already in use; issuing pgferry's own");
        self.register()
    }

    /// Handles a CancelRequest (delivery bounded by `wait`, PgBouncer's
    /// cancel_wait_timeout); returns true if it was forwarded to a server.
    pub async fn cancel(&self, pid: i32, secret: i32, wait: Option<Duration>) -> bool {
        let slot = match self.keys.get(&pid) {
            Some(e) if e.secret == secret => e.slot.clone(),
            _ => return false,
        };
        // Hold the slot while delivering: the client cannot release its server meanwhile.
        let guard = slot.target.lock().await;
        let Some(t) = *guard else {
            // No server: a request waiting for one (if any) is cancelled before it runs.
            slot.waiting.notify_waiters();
            return false;
        };
        let sent = send_cancel_bounded(t, wait).await;
        drop(guard);
        sent
    }
}

/// Sends a CancelRequest for `t`, giving up after `wait` (`None` = no bound). True if sent.
pub async fn send_cancel_bounded(t: CancelTarget, wait: Option<Duration>) -> bool {
    match wait {
        Some(w) => matches!(tokio::time::timeout(w, send_cancel(t)).await, Ok(Ok(()))),
        None => send_cancel(t).await.is_ok(),
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
