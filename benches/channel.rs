//! The cross-shard channel: DATA messages per second from one executor to
//! another, the way two shards exchange them.
//!
//! Each side is a glommio executor on its own thread (pinned to CPUs 0 and 1
//! when the host has them). The sender packs `batch` DATA messages of 64
//! bytes into one [`Batch`] (the message records plus one byte buffer, as a
//! shard's outbox does in one loop tick) and sends it over a bounded
//! `shared_channel` of the gateway's default capacity; the receiver walks
//! every message and touches its bytes, as the owner shard's inbox does
//! before delivering. A measurement is the time from the first send to the
//! receiver having seen the last message; executor start-up is outside it.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use uring_gateway::config::Config;
use uring_gateway::routing::ConnKey;
use uring_gateway::shard::msg::{Batch, Msg};

const PAYLOAD_BYTES: usize = 64;

/// Sends `batches` batches of `batch` messages; returns the transfer time.
fn transfer(batches: u64, batch: usize) -> Duration {
    let capacity = Config::default().limits.channel_capacity_batches;
    let (tx, rx) = shared_channel::new_bounded::<Batch>(capacity);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let placement = |cpu: usize| {
        if cpus > cpu {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        }
    };
    let (start_tx, start_rx) = std::sync::mpsc::channel::<Instant>();
    let receiver = LocalExecutorBuilder::new(placement(1))
        .name("bench-inbox")
        .spawn(move || async move {
            let rx = rx.connect().await;
            let mut seen = 0u64;
            let mut checksum = 0u64;
            while let Some(b) = rx.recv().await {
                for m in &b.msgs {
                    if let Msg::Data { start, len, .. } = m {
                        let bytes = &b.bytes[*start as usize..(*start + *len) as usize];
                        checksum = checksum.wrapping_add(u64::from(bytes[0]));
                        seen += 1;
                    }
                }
                if seen == batches * batch as u64 {
                    break;
                }
            }
            let end = Instant::now();
            std::hint::black_box(checksum);
            end
        })
        .expect("receiver executor");
    let sender = LocalExecutorBuilder::new(placement(0))
        .name("bench-outbox")
        .spawn(move || async move {
            let tx = tx.connect().await;
            start_tx.send(Instant::now()).expect("start time");
            let payload = [7u8; PAYLOAD_BYTES];
            for _ in 0..batches {
                let mut b = Batch {
                    msgs: Vec::with_capacity(batch),
                    bytes: Vec::with_capacity(batch * PAYLOAD_BYTES),
                    since: None,
                };
                for i in 0..batch {
                    let start = b.bytes.len() as u32;
                    b.bytes.extend_from_slice(&payload);
                    b.msgs.push(Msg::Data {
                        origin: ConnKey {
                            slot: i as u32,
                            gen: 1,
                        },
                        start,
                        len: PAYLOAD_BYTES as u32,
                    });
                }
                if tx.send(b).await.is_err() {
                    panic!("receiver stopped early");
                }
            }
        })
        .expect("sender executor");
    sender.join().expect("sender");
    let end = receiver.join().expect("receiver");
    let start = start_rx.recv().expect("start time");
    end.duration_since(start)
}

fn channel(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_channel");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    for batch in [1usize, 16, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(
            BenchmarkId::new("data_64B_batch", batch),
            &batch,
            |b, &n| {
                b.iter_custom(|iters| transfer(iters, n));
            },
        );
    }
    g.finish();
}

criterion_group!(benches, channel);
criterion_main!(benches);
