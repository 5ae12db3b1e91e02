//! Cancel keys: every client gets pgferry's own BackendKeyData; a CancelRequest carrying it is
//! forwarded, over a new connection, to the server running that client's query. When the
//! client has no server, a request of its still waiting for one is answered with 57014 (it
//! never runs); otherwise the cancel is dropped. A client cannot give its server back while a cancel for it is
//! being delivered, so a late cancel never lands on another client's query.

use crate::protocol::build;
use crate::server::ServerAddr;
use bytes::BytesMut;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;

/// Where a client's query is running now.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub addr: ServerAddr,
    pub pid: i32,
    pub secret: i32,
}

/// The slot a client updates when it gets or gives back a server.
#[derive(Debug, Default)]
pub struct CancelSlot {
    /// The lock is held only to read or change the state, never across an await: a client
    /// sets its target twice per transaction, so this is a plain lock, not an async one.
    state: parking_lot::Mutex<SlotState>,
    /// Told when the last delivery in progress ends.
    delivered: Notify,
    /// Told when a cancel arrives while the client has no server: a request still waiting
    /// for one is then answered with 57014 without ever running.
    waiting: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    target: Option<CancelTarget>,
    /// Cancels being delivered to `target` now; it cannot change until they are done.
    delivering: u32,
    /// A cancel was delivered (or is being delivered) to `target` since it was set.
    hit: bool,
}

impl CancelSlot {
    /// Sets the target, first waiting for any cancel being delivered to finish. True if a
    /// cancel was delivered to the previous target (see [`CancelSlot::try_set`]).
    pub async fn set(&self, t: Option<CancelTarget>) -> bool {
        loop {
            let done = self.delivered.notified();
            tokio::pin!(done);
            // Registered before the check, so the end of a delivery cannot slip in between.
            done.as_mut().enable();
            if let Some(hit) = self.try_set(t.clone()) {
                return hit;
            }
            done.await;
        }
    }

    /// Sets the target without waiting; `None` (nothing changed) while a cancel is being
    /// delivered, when the caller must use [`CancelSlot::set`]. `Some(true)` says a cancel
    /// was delivered to the previous target while it was set: that server must not serve
    /// another client. PostgreSQL signals a cancelled backend twice (the process and its
    /// group), and a signal that lands after the query ended is held while the backend reads
    /// its next message and then cancels that one.
    pub fn try_set(&self, t: Option<CancelTarget>) -> Option<bool> {
        let mut s = self.state.lock();
        if s.delivering > 0 {
            return None;
        }
        s.target = t;
        Some(std::mem::take(&mut s.hit))
    }

    /// A cancel was (or is being) delivered to the current target. Set before the cancel
    /// leaves pgferry, so a reply that the cancel caused is never read before this is true.
    /// Asked only after the server reported an error, not per message.
    pub fn was_hit(&self) -> bool {
        self.state.lock().hit
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
        let t = {
            let mut s = slot.state.lock();
            let Some(t) = s.target.clone() else {
                drop(s);
                // No server: a request waiting for one (if any) is cancelled before it runs.
                slot.waiting.notify_waiters();
                return false;
            };
            s.delivering += 1;
            s.hit = true;
            t
        };
        let _delivering = Delivering(&slot);
        send_cancel_bounded(t, wait).await
    }
}

/// One cancel being delivered; when the last one ends (also if its future is dropped), the
/// client may change its target again.
struct Delivering<'a>(&'a CancelSlot);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.delivering -= 1;
        if s.delivering == 0 {
            drop(s);
            self.0.delivered.notify_waiters();
        }
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
    let mut buf = BytesMut::new();
    build::cancel_request(&mut buf, t.pid, t.secret);
    match &t.addr {
        ServerAddr::Tcp(a) => deliver(TcpStream::connect(a).await?, &buf).await,
        ServerAddr::Unix { path, .. } => deliver(UnixStream::connect(&**path).await?, &buf).await,
    }
}

async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> std::io::Result<()> {
    s.write_all(request).await?;
    // PostgreSQL closes the connection once it has signalled the backend.
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// While a cancel is on its way to the server, the client cannot change (or give up) its
    /// target; once the server has it, the client goes on.
    #[tokio::test]
    async fn the_target_is_held_while_a_cancel_is_delivered() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let registry = Arc::new(CancelRegistry::default());
        let (pid, secret, slot) = registry.register();
        let target = CancelTarget {
            addr: ServerAddr::Tcp(server.local_addr().unwrap()),
            pid: 42,
            secret: 7,
        };
        assert_eq!(slot.try_set(Some(target.clone())), Some(false));
        assert!(!slot.was_hit());
        let r = registry.clone();
        let delivery =
            tokio::spawn(async move { r.cancel(pid, secret, Some(Duration::from_secs(30))).await });
        let (mut conn, _) = server.accept().await.unwrap();
        let mut packet = [0u8; 16];
        conn.read_exact(&mut packet).await.unwrap();
        assert_eq!(&packet[8..12], &42i32.to_be_bytes(), "the server's pid");
        // The cancel is being delivered: the client must wait.
        assert!(
            slot.was_hit(),
            "the hit shows before the server has the cancel"
        );
        assert_eq!(slot.try_set(None), None);
        let s = slot.clone();
        let mut release = tokio::spawn(async move { s.set(None).await });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut release)
                .await
                .is_err(),
            "the target changed during the delivery"
        );
        drop(conn); // the server closes the connection: delivered
        assert!(delivery.await.unwrap());
        let hit = tokio::time::timeout(Duration::from_secs(5), release)
            .await
            .expect("the client goes on once the cancel is delivered")
            .unwrap();
        assert!(
            hit,
            "the server the cancel went to is reported, so it is not reused"
        );
        assert!(!slot.was_hit(), "a hit is reported once");
        assert_eq!(slot.try_set(Some(target)), Some(false));
        // A wrong secret is not delivered and holds nothing.
        assert!(!registry.cancel(pid, secret ^ 1, None).await);
        assert_eq!(slot.try_set(None), Some(false));
    }
}
