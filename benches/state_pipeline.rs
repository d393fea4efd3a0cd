//! The state-write pipeline without sockets: simulated connection shards
//! hand STATE_PUT requests to the real service shard (its queue, batch
//! policy, store and acknowledgements, over the same channels a shard uses)
//! and time each write from the shard's request to the shard's STATE_ACK.
//!
//! It measures what the store side of the gateway sustains when the TCP
//! front end does not share the host's cores with it; `bench-client state`
//! measures the whole path. Writers behave as in `bench-client state`: each
//! has at most one write in flight; with `--rate` (writes/s over all
//! writers) they send on a fixed schedule, without it each sends its next
//! write on its ACK.
//!
//! Run (MariaDB; without a URL the embedded SQLite store in a temporary
//! directory):
//!
//! ```sh
//! GATEWAY_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//!   cargo bench --bench state_pipeline -- --writers 10000 --rate 150000
//! ```
//!
//! Writers have the same addresses in every run (`--address-seed`), so the
//! state table holds just their rows however often the bench runs.
//!
//! `cargo test` runs this target with no arguments. It is then a short check
//! rather than a measurement: a few hundred writers for a second, closed loop
//! and at a set rate, against SQLite and against MariaDB (`GATEWAY_MYSQL_URL`,
//! else the test server at [`TEST_MYSQL_URL`]). It fails unless every write
//! was acknowledged.

use clap::Parser;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uring_gateway::config::{Cluster, Store};
use uring_gateway::routing::ConnKey;
use uring_gateway::shard::msg::{Origin, ServiceEvent, ServiceReq};
use uuid::Uuid;

#[derive(Parser, Debug, Clone)]
#[command(about = "State writes through the service shard, without sockets")]
struct Args {
    /// Writers (simulated connections), spread over the shards.
    #[arg(long, default_value_t = 10_000)]
    writers: u32,
    /// Simulated connection shards (each its own request batch per tick).
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// Offered writes per second over all writers; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// State blob bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long = "duration-s", default_value_t = 10)]
    duration_s: u64,
    #[arg(long = "warmup-s", default_value_t = 2)]
    warmup_s: u64,
    /// `[store] batch_rows`; the gateway's default when not given (as for
    /// the three below).
    #[arg(long = "batch-rows")]
    batch_rows: Option<usize>,
    /// `[store] batch_rows_max`.
    #[arg(long = "batch-rows-max")]
    batch_rows_max: Option<usize>,
    /// `[store] batch_interval_ms`.
    #[arg(long = "batch-interval-ms")]
    batch_interval_ms: Option<u64>,
    /// `[store] commits_in_flight`.
    #[arg(long = "commits-in-flight")]
    commits_in_flight: Option<usize>,
    /// Writer i's address is derived from (seed, i), so every run writes
    /// the same rows and the table stays at `writers` rows; 0 = new random
    /// addresses each run (the table grows by `writers` rows per run).
    #[arg(long = "address-seed", default_value_t = 1)]
    address_seed: u64,
    /// criterion passes `--bench`; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The MariaDB server of the test suite, for the check `cargo test` runs.
const TEST_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A simulated shard flushes its request batch at least this often.
const TICK: Duration = Duration::from_millis(1);
/// After sending stops, how long acks of writes still in flight may take.
const DRAIN: Duration = Duration::from_secs(10);

struct Writer {
    addr: Uuid,
    shard: u16,
    id: u64,
    busy: bool,
    /// Scheduled writes that came due while the previous one was in flight.
    owed: u32,
    sent_at: Instant,
}

struct Sim {
    writers: Vec<Writer>,
    outbox: Vec<Vec<ServiceReq>>,
    blob: Vec<u8>,
    closed_loop: bool,
    warm_end: Instant,
    send_end: Instant,
    latency: Histogram<u64>,
    sent: u64,
    acked: u64,
    acked_measured: u64,
    store_errors: u64,
    queue_full: u64,
    in_flight: u64,
}

impl Sim {
    fn send(&mut self, w: usize, now: Instant) {
        if now >= self.send_end {
            return;
        }
        let writer = &mut self.writers[w];
        if writer.busy {
            writer.owed += 1;
            return;
        }
        writer.busy = true;
        writer.id += 1;
        writer.sent_at = now;
        self.blob[..8].copy_from_slice(&writer.id.to_be_bytes());
        let blob = std::sync::Arc::from(&self.blob[..]);
        self.outbox[writer.shard as usize].push(ServiceReq::StatePut {
            from: Origin {
                shard: writer.shard,
                conn: ConnKey {
                    slot: w as u32,
                    gen: 0,
                },
                id: writer.id,
            },
            addr: writer.addr,
            blob,
        });
        self.sent += 1;
        self.in_flight += 1;
    }

    fn answered(&mut self, slot: u32, id: u64, ok: bool, now: Instant) {
        let w = slot as usize;
        let writer = &mut self.writers[w];
        if !writer.busy || writer.id != id {
            return;
        }
        writer.busy = false;
        self.in_flight -= 1;
        if ok {
            self.acked += 1;
            if writer.sent_at >= self.warm_end && now <= self.send_end {
                self.acked_measured += 1;
                let ns = now.duration_since(writer.sent_at).as_nanos() as u64;
                let _ = self.latency.record(ns.max(1));
            }
        } else {
            self.store_errors += 1;
        }
        if self.closed_loop {
            self.send(w, now);
        } else if writer.owed > 0 {
            writer.owed -= 1;
            self.send(w, now);
        }
    }

    /// One request batch per shard, as a shard sends once per loop tick.
    fn flush(&mut self, to_service: &mpsc::Sender<Vec<ServiceReq>>) {
        for shard in 0..self.outbox.len() {
            if self.outbox[shard].is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut self.outbox[shard]);
            if let Err(e) = to_service.try_send(batch) {
                // A real shard answers these writers store_unavailable.
                let batch = match e {
                    mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
                };
                self.queue_full += batch.len() as u64;
                for req in batch {
                    if let ServiceReq::StatePut { from, .. } = req {
                        self.writers[from.conn.slot as usize].busy = false;
                        self.in_flight -= 1;
                    }
                }
            }
        }
    }
}

fn main() {
    let mysql_url = std::env::var("GATEWAY_MYSQL_URL").unwrap_or_default();
    let checking = std::env::args_os().len() == 1;
    if checking {
        // The service reads the variable too, and it would turn the SQLite
        // run into a second MariaDB run; the check passes the URL itself.
        // SAFETY: no other thread exists yet to read the environment.
        unsafe { std::env::remove_var("GATEWAY_MYSQL_URL") };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if checking {
        check(&mysql_url);
        return;
    }
    let args = Args::parse();
    let sim = run(&args, &mysql_url);
    if sim.in_flight > 0 || sim.acked == 0 {
        std::process::exit(1);
    }
}

/// What `cargo test` runs: every store, closed loop and at a set rate, every
/// write acknowledged.
fn check(mysql_url: &str) {
    let mysql_url = if mysql_url.is_empty() {
        TEST_MYSQL_URL
    } else {
        mysql_url
    };
    let short = Args::parse_from([
        "state_pipeline",
        "--writers",
        "300",
        "--shards",
        "2",
        "--duration-s",
        "1",
        "--warmup-s",
        "0",
    ]);
    for url in ["", mysql_url] {
        for rate in [0.0, 3_000.0] {
            let args = Args {
                rate,
                ..short.clone()
            };
            let sim = run(&args, url);
            let what = format!(
                "store {}, rate {rate}",
                if url.is_empty() { "sqlite" } else { "mysql" }
            );
            assert!(sim.acked_measured > 0, "{what}: no write acknowledged");
            assert_eq!(sim.in_flight, 0, "{what}: writes left unanswered");
            assert_eq!(sim.store_errors, 0, "{what}: writes refused");
            assert_eq!(sim.queue_full, 0, "{what}: the service queue overflowed");
            assert_eq!(sim.acked, sim.sent, "{what}: sent and acknowledged differ");
        }
    }
}

/// One measurement against the store `mysql_url` names (SQLite when empty),
/// reported on stdout.
fn run(args: &Args, mysql_url: &str) -> Sim {
    let shards = args.shards.max(1) as usize;
    let data_dir = std::env::temp_dir().join(format!(
        "state-pipeline-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let defaults = Store::default();
    let store = Store {
        mysql_url: mysql_url.to_string(),
        data_dir: data_dir.clone(),
        batch_rows: args.batch_rows.unwrap_or(defaults.batch_rows),
        batch_rows_max: args.batch_rows_max.unwrap_or(defaults.batch_rows_max),
        batch_interval_ms: args.batch_interval_ms.unwrap_or(defaults.batch_interval_ms),
        commits_in_flight: args.commits_in_flight.unwrap_or(defaults.commits_in_flight),
        ..defaults
    };
    let (batch_rows, batch_rows_max, batch_interval_ms, commits_in_flight) = (
        store.batch_rows,
        store.batch_rows_max,
        store.batch_interval_ms,
        store.commits_in_flight,
    );
    let (req_tx, req_rx) = mpsc::channel(1024);
    let mut event_txs = Vec::new();
    let mut event_rxs = Vec::new();
    for _ in 0..shards {
        let (t, r) = mpsc::channel(65_536);
        event_txs.push(t);
        event_rxs.push(r);
    }
    let metrics = uring_gateway::metrics::Registry::new(shards, &[]);
    let service =
        uring_gateway::service::start(req_rx, event_txs, store, Cluster::default(), metrics)
            .expect("service shard starts");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let cpu_before = thread_cpu();
    let sim = rt.block_on(drive(args, shards, req_tx, event_rxs));
    let sim_cpu = thread_cpu() - cpu_before;
    service.stop();
    let _ = std::fs::remove_dir_all(&data_dir);

    let measured_s = args.duration_s as f64;
    let rate = sim.acked_measured as f64 / measured_s;
    let q = |p: f64| sim.latency.value_at_quantile(p) as f64 / 1e6;
    let store_name = if mysql_url.is_empty() {
        "sqlite"
    } else {
        "mysql"
    };
    println!(
        "store {store_name}; writers {}; shards {shards}; offered {}; batch_rows {} (max {}), \
         interval {} ms, commits in flight {}",
        args.writers,
        if args.rate > 0.0 {
            format!("{:.0} writes/s", args.rate)
        } else {
            "closed loop".to_string()
        },
        batch_rows,
        batch_rows_max,
        batch_interval_ms,
        commits_in_flight
    );
    println!(
        "acknowledged writes/s {rate:.0}; ack p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, \
         p99.9 {:.2} ms, max {:.2} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        sim.latency.max() as f64 / 1e6
    );
    println!(
        "sent {}, acknowledged {}, store_unavailable {}, service queue full {}, \
         unanswered {}; simulated shards' CPU {:.0}% of a core",
        sim.sent,
        sim.acked,
        sim.store_errors,
        sim.queue_full,
        sim.in_flight,
        sim_cpu.as_secs_f64() / (args.warmup_s + args.duration_s) as f64 * 100.0
    );
    let line = serde_json::json!({
        "bench": "state_pipeline",
        "store": store_name,
        "writers": args.writers,
        "rate": args.rate,
        "commits_in_flight": commits_in_flight,
        "acks_per_s": rate.round(),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "store_unavailable": sim.store_errors,
        "queue_full": sim.queue_full,
        "unanswered": sim.in_flight,
    });
    println!("{line}");
    sim
}

/// Runs so far in this process, for a data directory of each run's own.
static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

async fn drive(
    args: &Args,
    shards: usize,
    to_service: mpsc::Sender<Vec<ServiceReq>>,
    from_service: Vec<mpsc::Receiver<Vec<ServiceEvent>>>,
) -> Sim {
    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_secs(args.warmup_s);
    let send_end = warm_end + Duration::from_secs(args.duration_s);
    let writers = (0..args.writers)
        .map(|i| Writer {
            addr: writer_address(args.address_seed, i),
            shard: (i as usize % shards) as u16,
            id: 0,
            busy: false,
            owed: 0,
            sent_at: t0,
        })
        .collect();
    let sim = Rc::new(RefCell::new(Sim {
        writers,
        outbox: (0..shards).map(|_| Vec::new()).collect(),
        blob: vec![0x5A; args.payload.max(8)],
        closed_loop: args.rate <= 0.0,
        warm_end,
        send_end,
        latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram"),
        sent: 0,
        acked: 0,
        acked_measured: 0,
        store_errors: 0,
        queue_full: 0,
        in_flight: 0,
    }));
    let local = tokio::task::LocalSet::new();
    for mut rx in from_service {
        let sim = sim.clone();
        let to_service = to_service.clone();
        local.spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                let now = Instant::now();
                let mut s = sim.borrow_mut();
                for ev in batch {
                    match ev {
                        ServiceEvent::StateAck { conn, id, .. } => {
                            s.answered(conn.slot, id, true, now)
                        }
                        ServiceEvent::StateError { conn, id, .. } => {
                            s.answered(conn.slot, id, false, now)
                        }
                        _ => {}
                    }
                }
                s.flush(&to_service);
            }
        });
    }
    let writers_n = args.writers as usize;
    let rate = args.rate;
    {
        let sim = sim.clone();
        let to_service = to_service.clone();
        local.spawn_local(async move {
            if rate <= 0.0 {
                let now = Instant::now();
                let mut s = sim.borrow_mut();
                for w in 0..writers_n {
                    s.send(w, now);
                }
                s.flush(&to_service);
                return;
            }
            // Write k (over all writers, round robin) is due at t0 + k / rate.
            let mut issued = 0u64;
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticker.tick().await;
                let now = Instant::now();
                if now >= send_end {
                    return;
                }
                let due = (now.duration_since(t0).as_secs_f64() * rate) as u64;
                let mut s = sim.borrow_mut();
                while issued < due {
                    s.send((issued % writers_n as u64) as usize, now);
                    issued += 1;
                }
                s.flush(&to_service);
            }
        });
    }
    drop(to_service);
    local
        .run_until(async {
            tokio::time::sleep_until(send_end.into()).await;
            let deadline = Instant::now() + DRAIN;
            while sim.borrow().in_flight > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    drop(local);
    Rc::try_unwrap(sim)
        .ok()
        .expect("every task is gone")
        .into_inner()
}

/// A random-looking address that is the same in every run with this seed.
fn writer_address(seed: u64, i: u32) -> Uuid {
    if seed == 0 {
        return Uuid::new_v4();
    }
    Uuid::new_v5(&Uuid::from_u64_pair(seed, 0), &i.to_be_bytes())
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
