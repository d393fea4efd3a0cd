//! Criterion benchmarks of the gateway's pure hot-path pieces: the codec and
//! JSON mapping, owner hashing, the routing table at a million entries, and
//! the timing wheel. Run: `cargo bench --bench core`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::collections::HashMap;
use std::hint::black_box;
use uring_gateway::proto::{self, Decoded, Kind};
use uring_gateway::routing::{owner_shard, ConnKey};
use uring_gateway::shard::state::Route;
use uring_gateway::shard::wheel::Wheel;
use uuid::Uuid;

const PAYLOAD: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn codec(c: &mut Criterion) {
    let (src, dst) = (Uuid::new_v4(), Uuid::new_v4());
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    g.bench_function("encode_data_64B", |b| {
        b.iter(|| {
            out.clear();
            proto::encode_frame(&mut out, Kind::Data, src, dst, 7, black_box(PAYLOAD));
            black_box(out.len())
        })
    });
    let mut frame = Vec::new();
    proto::encode_frame(&mut frame, Kind::Data, src, dst, 7, PAYLOAD);
    g.bench_function("decode_data_64B", |b| {
        b.iter(|| match proto::decode(black_box(&frame), 1 << 20) {
            Decoded::Frame { consumed, .. } => consumed,
            _ => unreachable!(),
        })
    });
    let header = proto::Header::parse(&frame).expect("header");
    g.bench_function("validate_data", |b| {
        b.iter(|| proto::validate(black_box(&header), PAYLOAD.len(), Some(src)))
    });
    g.bench_function("encode_json_data_64B", |b| {
        b.iter(|| {
            out.clear();
            proto::encode_json(black_box(&header), PAYLOAD, &mut out);
            black_box(out.len())
        })
    });
    let text = format!(
        r#"{{"kind":"data","dst":"{dst}","id":7,"payload":"{}"}}"#,
        std::str::from_utf8(PAYLOAD).unwrap()
    );
    let mut payload = Vec::with_capacity(256);
    g.bench_function("decode_json_data_64B", |b| {
        b.iter(|| proto::decode_json(black_box(&text), Some(src), &mut payload).expect("valid"))
    });
    g.finish();
}

fn owner(c: &mut Criterion) {
    let addrs: Vec<Uuid> = (0..1024).map(|_| Uuid::new_v4()).collect();
    let mut i = 0;
    c.bench_function("owner_shard", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            owner_shard(black_box(&addrs[i]), 16)
        })
    });
}

fn routing_table(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let addrs: Vec<Uuid> = (0..N).map(|_| Uuid::new_v4()).collect();
    let mut table: HashMap<Uuid, Route> = HashMap::with_capacity(N);
    for (i, a) in addrs.iter().enumerate() {
        table.insert(
            *a,
            Route {
                conn: ConnKey {
                    slot: i as u32,
                    gen: 0,
                },
                since_us: 0,
            },
        );
    }
    let mut g = c.benchmark_group("routing_table_1M");
    let mut i = 0usize;
    g.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(table.get(&addrs[i]).map(|r| r.conn.slot))
        })
    });
    g.bench_function("remove_insert", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            let r = table.remove(&addrs[i]).expect("present");
            table.insert(addrs[i], r);
        })
    });
    g.finish();
}

fn wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("wheel");
    g.bench_function("insert_then_expire_1k", |b| {
        b.iter_batched(
            || Wheel::new(100, Wheel::slots_for(90_000, 100), 0),
            |mut w| {
                for i in 0..1000u32 {
                    w.insert(ConnKey { slot: i, gen: 0 }, 90_000 + u64::from(i) * 10);
                }
                let mut due = Vec::with_capacity(1000);
                w.expire(200_000, &mut due);
                due.len()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec, owner, routing_table, wheel);
criterion_main!(benches);
