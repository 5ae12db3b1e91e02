//! Micro-benchmarks of the per-message hot path: framing a server reply, parsing a startup
//! packet, renaming a Bind, hashing a statement.

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgferry::protocol::startup::parse_startup;
use pgferry::protocol::views::{put_bind, BindView};
use pgferry::protocol::{split_frame, Split};
use std::hint::black_box;

fn data_rows(n: usize) -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..n {
        let v = format!("row {i}");
        b.put_u8(b'D');
        b.put_i32((4 + 2 + 4 + v.len()) as i32);
        b.put_i16(1);
        b.put_i32(v.len() as i32);
        b.put_slice(v.as_bytes());
    }
    b
}

fn framing(c: &mut Criterion) {
    let rows = data_rows(1000);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(rows.len() as u64));
    g.bench_function("split 1000 DataRows", |b| {
        b.iter(|| {
            let mut buf = rows.clone();
            let mut n = 0;
            while let Ok(Split::Frame(f)) = split_frame(&mut buf, 1 << 30) {
                n += f.len();
            }
            black_box(n)
        })
    });
    g.finish();
}

fn startup(c: &mut Criterion) {
    let mut p = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", "app"),
        ("database", "shop"),
        ("application_name", "web-1"),
    ] {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p.push(0);
    c.bench_function("parse startup", |b| {
        b.iter(|| black_box(parse_startup(black_box(&p))))
    });
}

fn statements(c: &mut Criterion) {
    let bind = b"\0s1\0\0\x01\0\x01\0\0\0\x04\0\0\0\x07\0\0";
    // Into a reused output buffer, as a session writes to its server's.
    let mut out = BytesMut::with_capacity(256);
    c.bench_function("rename Bind", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(v) = BindView::new(black_box(bind)) {
                put_bind(&mut out, &v, b"pgf_00000000000000ab");
            }
            black_box(out.len())
        })
    });
    let q = b"SELECT name, qty FROM items WHERE id = $1 AND owner = $2";
    c.bench_function("statement id", |b| {
        b.iter(|| {
            black_box(pgferry::client::statements::statement_id(
                black_box(q),
                b"\0\0",
            ))
        })
    });
}

criterion_group!(benches, framing, startup, statements);
criterion_main!(benches);
