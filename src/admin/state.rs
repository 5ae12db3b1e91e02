//! State the admin console keeps between commands, hung off `App` (no globals): the
//! process-wide PAUSE / SUSPEND mode, the server connections RECONNECT marked for closing
//! (SHOW SERVERS `close_needed`, WAIT_CLOSE), and SHUTDOWN requests for `run_until_signal`.

use dashmap::DashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::watch;

/// Process-wide pause mode (SHOW STATE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PauseMode {
    None = 0,
    Paused = 1,
    Suspended = 2,
}

/// How the process was asked to stop (admin SHUTDOWN or a signal), mildest first: a
/// request only ever escalates an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShutdownMode {
    /// No new clients; connected ones stay until they leave (bounded by `shutdown_timeout`).
    WaitForClients,
    /// No new clients; each client is closed once it has no transaction open.
    WaitForServers,
    /// Exit now.
    Immediate,
}

/// The admin console's shared state.
#[derive(Debug)]
pub struct AdminState {
    mode: AtomicU8,
    /// Server connection ids marked by RECONNECT: closed when released.
    close_needed: DashSet<u64>,
    shutdown: watch::Sender<Option<ShutdownMode>>,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            mode: AtomicU8::new(PauseMode::None as u8),
            close_needed: DashSet::new(),
            shutdown: watch::channel(None).0,
        }
    }
}

impl AdminState {
    pub fn mode(&self) -> PauseMode {
        match self.mode.load(Ordering::Acquire) {
            1 => PauseMode::Paused,
            2 => PauseMode::Suspended,
            _ => PauseMode::None,
        }
    }

    pub fn set_mode(&self, m: PauseMode) {
        self.mode.store(m as u8, Ordering::Release);
    }

    /// Marks a server connection as to be closed once released.
    pub fn mark_close_needed(&self, server_id: u64) {
        self.close_needed.insert(server_id);
    }

    pub fn is_close_needed(&self, server_id: u64) -> bool {
        self.close_needed.contains(&server_id)
    }

    /// Forgets marked ids for which `alive` is false (connections already closed).
    pub fn prune_close_needed(&self, alive: impl Fn(u64) -> bool) {
        self.close_needed.retain(|id| alive(*id));
    }

    /// Records a shutdown request for `run_until_signal` (and the listeners), unless a
    /// stronger one was made already. Use [`crate::app::App::shutdown`], which also acts on it.
    pub fn request_shutdown(&self, mode: ShutdownMode) {
        self.shutdown.send_if_modified(|cur| {
            let stronger = cur.is_none_or(|c| mode > c);
            if stronger {
                *cur = Some(mode);
            }
            stronger
        });
    }

    /// The shutdown requested so far, if any.
    pub fn shutdown_mode(&self) -> Option<ShutdownMode> {
        *self.shutdown.borrow()
    }

    /// Receives SHUTDOWN requests (the value is `Some` once one was made).
    pub fn shutdown_requests(&self) -> watch::Receiver<Option<ShutdownMode>> {
        self.shutdown.subscribe()
    }
}
