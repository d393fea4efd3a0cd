//! Bytes of user-space memory per idle registered connection, simulated at
//! a million connections in one shard (no sockets: this host allows 20,000
//! open files per process). Run: `cargo bench --bench idle_memory` or
//! `cargo bench --bench idle_memory -- 1000000`.

use glommio::LocalExecutorBuilder;
use uring_gateway::shard::{reader_future_bytes, sim};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let handle = LocalExecutorBuilder::default()
        .io_memory(512 * 1024)
        .spawn(move || async move {
            let reader = reader_future_bytes();
            let (fp, population) = sim::idle_footprint(n, reader);
            // Let every parked task be polled once, as a real reader is.
            glommio::executor().yield_task_queue_now().await;
            let settled = sim::rss_bytes();
            let per = (settled.saturating_sub(fp.rss_before)) as f64 / n as f64;
            println!("simulated idle registered connections: {n}");
            println!("connection record: {} bytes (glommio stream stand-in {} bytes)", fp.conn_record_bytes, sim::STREAM_BYTES);
            println!("reader future: {} bytes", fp.reader_future_bytes);
            println!("RSS before: {} KiB, after: {} KiB", fp.rss_before / 1024, settled / 1024);
            println!("bytes per connection: {per:.0}");
            println!(
                "{{\"bench\":\"idle_memory\",\"connections\":{n},\"bytes_per_connection\":{per:.0},\"conn_record_bytes\":{},\"reader_future_bytes\":{}}}",
                fp.conn_record_bytes, fp.reader_future_bytes
            );
            drop(population);
        })
        .expect("executor");
    handle.join().expect("simulation");
}
