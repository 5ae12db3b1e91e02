//! Prometheus metrics without a global recorder: each `App` owns a `PrometheusRecorder`
//! (`Metrics`), registers per-pool histograms through the `metrics::Recorder` trait
//! (`PoolObserver`), and at each scrape refreshes gauges and counters from pgferry's own
//! atomics (`refresh`), then renders the text format. `http` serves `GET /metrics`.
//! Labels are database and user (plus a state or SQLSTATE class): cardinality stays bounded.

mod http;
mod refresh;

pub use http::start;

use metrics::{Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// Histogram bucket bounds, in seconds (0.1 ms to 1 min).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

const META: Metadata<'static> = Metadata::new("pgferry", Level::INFO, Some("pgferry::metrics"));

pub const QUERY_SECONDS: &str = "pgferry_query_duration_seconds";
pub const XACT_SECONDS: &str = "pgferry_transaction_duration_seconds";
pub const WAIT_SECONDS: &str = "pgferry_wait_duration_seconds";

/// Per-pool histogram handles; a no-op for pools created without metrics.
#[derive(Clone)]
pub struct PoolObserver {
    query: Histogram,
    xact: Histogram,
    wait: Histogram,
}

impl Default for PoolObserver {
    fn default() -> Self {
        PoolObserver {
            query: Histogram::noop(),
            xact: Histogram::noop(),
            wait: Histogram::noop(),
        }
    }
}

impl std::fmt::Debug for PoolObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolObserver")
    }
}

impl PoolObserver {
    /// Time from a request's first message to its ReadyForQuery.
    pub fn query(&self, d: Duration) {
        self.query.record(d.as_secs_f64());
    }
    /// Time from a transaction's first request to its end.
    pub fn xact(&self, d: Duration) {
        self.xact.record(d.as_secs_f64());
    }
    /// Time a client waited for a server connection.
    pub fn wait(&self, d: Duration) {
        self.wait.record(d.as_secs_f64());
    }
}

/// The recorder of one instance and the address its listener is bound to.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    addr: OnceLock<SocketAddr>,
    /// Label sets seen at earlier scrapes, so series of vanished clients drop to zero.
    seen: parking_lot::Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // `set_buckets` only fails on an empty list; without buckets histograms become summaries.
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder,
            handle,
            addr: OnceLock::new(),
            seen: parking_lot::Mutex::new(Default::default()),
        };
        m.describe();
        m
    }

    /// Histograms for the pool of (`database`, `user`).
    pub fn observer(&self, database: &str, user: &str) -> PoolObserver {
        let h = |name: &'static str| {
            self.recorder
                .register_histogram(&Key::from_parts(name, labels(database, user)), &META)
        };
        PoolObserver {
            query: h(QUERY_SECONDS),
            xact: h(XACT_SECONDS),
            wait: h(WAIT_SECONDS),
        }
    }

    /// Where `GET /metrics` is served (once the listener is bound).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// Drains histogram samples into their buckets (run periodically).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The exposition text, refreshed from the app's counters.
    pub fn render(&self, app: &crate::app::App) -> String {
        refresh::refresh(self, app);
        self.handle.render()
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>, v: f64) {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
            .set(v);
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>, v: u64) {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
            .absolute(v);
    }

    fn describe(&self) {
        for (name, unit, help, kind) in refresh::DESCRIPTIONS {
            let unit = match *unit {
                "seconds" => Some(Unit::Seconds),
                "bytes" => Some(Unit::Bytes),
                _ => None,
            };
            let help = (*help).into();
            let name = (*name).into();
            match kind {
                'c' => self.recorder.describe_counter(name, unit, help),
                'g' => self.recorder.describe_gauge(name, unit, help),
                _ => self.recorder.describe_histogram(name, unit, help),
            }
        }
    }
}

fn labels(database: &str, user: &str) -> Vec<Label> {
    vec![
        Label::new("database", database.to_owned()),
        Label::new("user", user.to_owned()),
    ]
}
