//! The N+1 detector's log lines: many clients running one pattern write one line per
//! cooldown, not one each. Its own test binary, so the capturing subscriber is the global
//! one and no other test can race it.

#![allow(clippy::unwrap_used)]

use pgferry::clock::Tick;
use pgferry::insight::{Insight, InsightConfig, SessionContext, SessionDetector};
use pgferry::sql::{text_hash, SqlCache};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// The lines written since the last call.
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

const LIST: &str = "select id, customer_id from orders where created_at > '2024-01-01' limit 50";

/// One client: the list query, then twenty lookups a millisecond apart. Returns how many
/// notices the client was sent.
fn burst(ins: &Insight, c: &SqlCache, addr: &str, start: Tick, lookup: &str) -> usize {
    let mut d: SessionDetector = ins.new_session(SessionContext {
        database: "shop".into(),
        user: "app".into(),
        application_name: "web".into(),
        client_addr: addr.into(),
    });
    let mut send = |t: Tick, sql: &str| {
        let a = c.analyze(sql);
        let n = d.on_statement(t, &a, text_hash(sql.as_bytes()));
        d.on_complete(Duration::from_micros(300));
        usize::from(n.is_some())
    };
    send(start, LIST);
    (0..20u64)
        .map(|i| {
            send(
                start + Duration::from_millis(i + 1),
                &format!("{lookup} {i}"),
            )
        })
        .sum()
}

fn detected(lines: &str) -> usize {
    lines.matches("query pattern detected").count()
}

#[test]
fn many_clients_with_one_pattern_write_one_log_line_per_cooldown() {
    let out = Capture::default();
    let writer = out.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    let (ins, c) = (Insight::new(InsightConfig::default()), SqlCache::default());
    let customers = "select * from customers where id =";
    let t0 = Tick::now();

    // Fifty clients run the same N+1 burst at about the same time.
    let notices: usize = (0..50u64)
        .map(|k| {
            let at = t0 + Duration::from_millis(k);
            burst(&ins, &c, &format!("10.0.0.{k}:5000"), at, customers)
        })
        .sum();
    assert_eq!(notices, 50, "every client still gets its notice");
    assert_eq!(ins.events().len(), 50, "and its event");
    assert_eq!(ins.n_plus_one_bursts_total()[0].1, 50);
    let lines = out.take();
    assert_eq!(detected(&lines), 1, "{lines}");
    assert_eq!(lines.matches("query pattern ended").count(), 1, "{lines}");
    assert!(lines.contains("unlogged=0"), "{lines}");

    // After the cooldown (60 s by default) the next burst is logged again, with the number
    // of bursts that were not.
    let later = t0 + Duration::from_secs(61);
    burst(&ins, &c, "10.0.0.99:5000", later, customers);
    let lines = out.take();
    assert_eq!(detected(&lines), 1, "{lines}");
    assert!(lines.contains("unlogged=49"), "{lines}");

    // Another statement is another pattern: logged at once.
    let orders = "select * from orders where id =";
    burst(&ins, &c, "10.0.0.1:5001", t0, orders);
    let lines = out.take();
    assert_eq!(detected(&lines), 1, "{lines}");
    assert!(lines.contains("from orders where id = $1"), "{lines}");
}
