//! Prometheus metrics without a global recorder: each `App` owns a `PrometheusRecorder`
//! (`Metrics`) for gauges and counters, which each scrape refreshes from pgferry's own atomics
//! (`refresh`) before rendering the text format. The per-pool duration histograms are
//! pgferry's own (`histogram`, handed to pools as a `PoolObserver`) and are rendered after the
//! recorder's series. `http` serves `GET /metrics`.
//! Labels are database and user (plus a state or SQLSTATE class): cardinality stays bounded.

mod histogram;
mod http;
mod refresh;

pub use http::start;

use histogram::Histogram;
use metrics::{Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const META: Metadata<'static> = Metadata::new("pgferry", Level::INFO, Some("pgferry::metrics"));

pub const QUERY_SECONDS: &str = "pgferry_query_duration_seconds";
pub const XACT_SECONDS: &str = "pgferry_transaction_duration_seconds";
pub const WAIT_SECONDS: &str = "pgferry_wait_duration_seconds";

/// Which of a pool's histograms a series renders.
type Pick = fn(&PoolHistograms) -> &Histogram;

/// The three duration histograms of one (database, user).
#[derive(Default)]
struct PoolHistograms {
    query: Histogram,
    xact: Histogram,
    wait: Histogram,
}

/// Per-pool histogram handles; a no-op for pools created without metrics. Pools of the same
/// (database, user), a live one and ones a RELOAD replaced, share one set, so the series
/// never go backwards.
#[derive(Clone, Default)]
pub struct PoolObserver(Option<Arc<PoolHistograms>>);

impl std::fmt::Debug for PoolObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolObserver")
    }
}

impl PoolObserver {
    /// Time from a request's first message to its ReadyForQuery.
    pub fn query(&self, d: Duration) {
        if let Some(h) = &self.0 {
            h.query.record(d);
        }
    }
    /// Time from a transaction's first request to its end.
    pub fn xact(&self, d: Duration) {
        if let Some(h) = &self.0 {
            h.xact.record(d);
        }
    }
    /// Time a client waited for a server connection.
    pub fn wait(&self, d: Duration) {
        if let Some(h) = &self.0 {
            h.wait.record(d);
        }
    }
}

/// The recorder of one instance and the address its listener is bound to.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Duration histograms by (database, user), rendered after the recorder's series.
    histograms: parking_lot::Mutex<BTreeMap<(String, String), Arc<PoolHistograms>>>,
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
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder,
            handle,
            histograms: parking_lot::Mutex::new(BTreeMap::new()),
            addr: OnceLock::new(),
            seen: parking_lot::Mutex::new(Default::default()),
        };
        m.describe();
        m
    }

    /// Histograms for the pool of (`database`, `user`).
    pub fn observer(&self, database: &str, user: &str) -> PoolObserver {
        let mut all = self.histograms.lock();
        let h = all
            .entry((database.to_owned(), user.to_owned()))
            .or_default();
        PoolObserver(Some(Arc::clone(h)))
    }

    /// Where `GET /metrics` is served (once the listener is bound).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// The exposition text, refreshed from the app's counters.
    pub fn render(&self, app: &crate::app::App) -> String {
        refresh::refresh(self, app);
        let mut out = self.handle.render();
        self.render_histograms(&mut out);
        out
    }

    fn render_histograms(&self, out: &mut String) {
        let all: Vec<(String, Arc<PoolHistograms>)> = self
            .histograms
            .lock()
            .iter()
            .map(|((db, user), h)| {
                let labels = format!(
                    "database=\"{}\",user=\"{}\"",
                    histogram::escape(db),
                    histogram::escape(user)
                );
                (labels, Arc::clone(h))
            })
            .collect();
        let series: [(&str, Pick); 3] = [
            (QUERY_SECONDS, |h| &h.query),
            (XACT_SECONDS, |h| &h.xact),
            (WAIT_SECONDS, |h| &h.wait),
        ];
        for (name, pick) in series {
            let help = refresh::DESCRIPTIONS
                .iter()
                .find(|d| d.0 == name)
                .map_or("", |d| d.2);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
            for (labels, h) in &all {
                pick(h).render(out, name, labels);
            }
            out.push('\n');
        }
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
                _ => {} // pgferry's own histograms: described where they are rendered
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
