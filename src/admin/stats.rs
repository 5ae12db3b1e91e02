//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: per-database sums of the pools'
//! counters (`App::database_totals`) and the averages of the last `stats_period`
//! (`App::database_averages`). Numeric columns, times in microseconds, as PgBouncer.

use super::result::{Table, Type, Val};
use super::Ctx;
use crate::app::stats::Totals;

const COUNTERS: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_login_count",
];

/// SHOW STATS_TOTALS columns after `database`.
pub const TOTALS_COLUMNS: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_login_count",
];

/// SHOW STATS_AVERAGES column `i` after `database`: the STATS_TOTALS name, with PgBouncer's
/// `avg_` prefix on the last four (the prepared-statement and login counters) only.
fn averages_column(i: usize) -> String {
    let name = TOTALS_COLUMNS[i];
    if i >= TOTALS_COLUMNS.len() - 4 {
        format!("avg_{name}")
    } else {
        name.to_owned()
    }
}

/// SHOW TOTALS row names after `total_` / `avg_`.
const TOTALS_ROWS: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "client_bytes",
    "server_bytes",
    "xact_time",
    "query_time",
    "wait_time",
    "ps_client_parse_count",
    "ps_server_parse_count",
    "ps_bind_count",
    "client_login_count",
];

fn values(t: &Totals) -> [u64; 12] {
    [
        t.server_assignment_count,
        t.xact_count,
        t.query_count,
        t.bytes_received,
        t.bytes_sent,
        t.xact_time,
        t.query_time,
        t.wait_time,
        t.client_parse_count,
        t.server_parse_count,
        t.bind_count,
        t.client_login_count,
    ]
}

/// Column names of SHOW STATS (`total_*` then `avg_*`).
pub fn stats_columns() -> Vec<String> {
    let mut cols = vec!["database".to_owned()];
    cols.extend(COUNTERS.iter().map(|c| format!("total_{c}")));
    cols.extend(COUNTERS.iter().map(|c| match *c {
        "received" => "avg_recv".to_owned(),
        c => format!("avg_{c}"),
    }));
    cols
}

pub fn show(ctx: &mut Ctx<'_>, what: &str) {
    let app = ctx.app.clone();
    let totals = app.database_totals();
    let averages = app.database_averages();
    match what {
        "stats" => {
            let names = stats_columns();
            let cols: Vec<(&str, Type)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), if i == 0 { Type::Text } else { Type::Numeric }))
                .collect();
            let mut t = Table::new(&mut ctx.out, &cols);
            for (db, tot) in &totals {
                let avg = averages.get(db).copied().unwrap_or_default();
                let mut row = vec![Val::from(db.as_str())];
                row.extend(values(tot).into_iter().map(Val::from));
                row.extend(values(&avg).into_iter().map(Val::from));
                t.row(row);
            }
            t.finish();
        }
        "stats_totals" | "stats_averages" => {
            let (names, source): (Vec<String>, _) = if what == "stats_totals" {
                (
                    TOTALS_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
                    &totals,
                )
            } else {
                (
                    (0..TOTALS_COLUMNS.len()).map(averages_column).collect(),
                    &averages,
                )
            };
            let mut cols = vec![("database", Type::Text)];
            cols.extend(names.iter().map(|n| (n.as_str(), Type::Numeric)));
            let mut t = Table::new(&mut ctx.out, &cols);
            for (db, v) in source {
                let mut row = vec![Val::from(db.as_str())];
                row.extend(values(v).into_iter().map(Val::from));
                t.row(row);
            }
            t.finish();
        }
        _ => {
            // TOTALS: sums over all databases; averages over the last period.
            let mut sum = Totals::default();
            let mut avg = Totals::default();
            for v in totals.values() {
                sum.add(v);
            }
            for v in averages.values() {
                avg.add(v);
            }
            // Mean times add up per database; recompute them over all databases instead.
            let weighted = |f: fn(&Totals) -> (u64, u64)| {
                let (mut time, mut n) = (0u128, 0u128);
                for a in averages.values() {
                    let (t, c) = f(a);
                    time += u128::from(t) * u128::from(c);
                    n += u128::from(c);
                }
                time.checked_div(n).unwrap_or(0) as u64
            };
            avg.xact_time = weighted(|a| (a.xact_time, a.xact_count));
            avg.query_time = weighted(|a| (a.query_time, a.query_count));
            avg.wait_time = weighted(|a| (a.wait_time, a.server_assignment_count));
            let mut t = Table::new(
                &mut ctx.out,
                &[("name", Type::Text), ("value", Type::Numeric)],
            );
            for (n, v) in TOTALS_ROWS.iter().zip(values(&sum)) {
                t.row(vec![Val::from(format!("total_{n}")), Val::from(v)]);
            }
            for (n, v) in TOTALS_ROWS.iter().zip(values(&avg)) {
                t.row(vec![Val::from(format!("avg_{n}")), Val::from(v)]);
            }
            t.finish();
        }
    }
}
