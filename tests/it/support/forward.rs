//! A TCP forwarder for server-side tests: listens on an address, counts the connections it
//! accepts, and either forwards them to PostgreSQL or closes them at once (a host that is up
//! but refuses logins), switchable while running.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

pub struct Forward {
    pub addr: SocketAddr,
    /// Connections accepted so far (forwarded or refused).
    accepted: Arc<AtomicUsize>,
    refusing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// Listens on `bind` (port 0 for any) and forwards to 127.0.0.1:`to_port`.
    pub async fn start(bind: &str, to_port: u16) -> Forward {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicBool::new(false));
        let (a, r) = (accepted.clone(), refusing.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                if r.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", to_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forward {
            addr,
            accepted,
            refusing,
            task,
        }
    }

    /// Like [`Forward::start`], refusing every connection from the start.
    pub async fn refusing(bind: &str, to_port: u16) -> Forward {
        let f = Forward::start(bind, to_port).await;
        f.set_refusing(true);
        f
    }

    pub fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
