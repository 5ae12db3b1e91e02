//! Prometheus metrics. (Skeleton: the exporter arrives with the metrics work.)

use std::time::Duration;

/// Per-pool histogram handles; a no-op when metrics are disabled.
#[derive(Clone, Debug, Default)]
pub struct PoolObserver {}

impl PoolObserver {
    /// Time from a request's first message to its ReadyForQuery.
    pub fn query(&self, _d: Duration) {}
    /// Time from a transaction's first request to its end.
    pub fn xact(&self, _d: Duration) {}
    /// Time a client waited for a server connection.
    pub fn wait(&self, _d: Duration) {}
}
