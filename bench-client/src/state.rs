//! `state`: W writers, each keeping one STATE_PUT in flight. Reports
//! acknowledged writes per second (a STATE_ACK means the write is committed
//! to the gateway's store) and the time from STATE_PUT to STATE_ACK.
//!
//! Run it against the gateway configured with the store under test; the
//! batching settings (`[store] batch_rows`, `batch_interval_ms`) decide
//! whether it measures batched commits or one row per transaction.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::Shared;
use crate::conn::{self, Conn, ConnError, Incoming, Transport};
use crate::proto::{self, kind, Addr};
use crate::report::{self, ErrorCounts, JsonLine, Latency, Reasons, Table};
use crate::sys;

/// Extra time the main task waits for writers beyond their last ack timeout.
const JOIN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub shared: Shared,
    pub writers: u32,
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub ack_timeout: Duration,
    pub rate_per_writer: f64,
    pub address_seed: Option<u64>,
}

pub struct StateReport {
    pub table: Table,
    pub json: JsonLine,
}

/// What all writers share. Single-threaded: plain cells.
struct Run {
    warm_end: Instant,
    send_end: Instant,
    payload: usize,
    ack_timeout: Duration,
    /// Time between two writes of one writer; None = closed loop.
    interval: Option<Duration>,
    latency: RefCell<Histogram<u64>>,
    acked_measured: Cell<u64>,
    acked_total: Cell<u64>,
    errors: RefCell<ErrorCounts>,
    client_errors: RefCell<Reasons>,
    timed_out: Cell<u64>,
}

pub async fn run(cfg: StateConfig) -> anyhow::Result<StateReport> {
    let setup_start = Instant::now();
    let (conns, setup_failures) = set_up(&cfg).await;
    let setup_s = setup_start.elapsed().as_secs_f64();
    eprintln!(
        "[state] {} of {} writers registered in {setup_s:.2}s; failures: {setup_failures:?}",
        conns.len(),
        cfg.writers
    );
    if conns.is_empty() {
        anyhow::bail!("no writer could be set up: {setup_failures:?}");
    }
    let writers_up = conns.len();
    let t0 = Instant::now();
    let run = Rc::new(Run {
        warm_end: t0 + cfg.warmup,
        send_end: t0 + cfg.warmup + cfg.duration,
        payload: cfg.payload,
        ack_timeout: cfg.ack_timeout,
        interval: (cfg.rate_per_writer > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / cfg.rate_per_writer)),
        latency: RefCell::new(report::latency_histogram()),
        acked_measured: Cell::new(0),
        acked_total: Cell::new(0),
        errors: RefCell::new(ErrorCounts::default()),
        client_errors: RefCell::new(Reasons::new()),
        timed_out: Cell::new(0),
    });
    let tq = glommio::executor().current_task_queue();
    let mut tasks = Vec::with_capacity(conns.len());
    let writers_n = conns.len() as u32;
    for (i, (conn, addr)) in conns.into_iter().enumerate() {
        // Spread the writers' schedules over one interval.
        let offset = run
            .interval
            .map(|iv| iv.mul_f64(i as f64 / writers_n as f64))
            .unwrap_or_default();
        let task = glommio::spawn_local_into(writer(conn, addr, run.clone(), offset), tq)
            .expect("current task queue exists");
        tasks.push(task);
    }
    let cpu_pct = progress(&run).await;
    let join_deadline = run.send_end + run.ack_timeout + JOIN_GRACE;
    for task in tasks {
        let left = join_deadline.saturating_duration_since(Instant::now());
        let done = futures_lite::future::or(
            async {
                task.await;
                Some(())
            },
            async {
                glommio::timer::sleep(left).await;
                None
            },
        )
        .await;
        if done.is_none() {
            report::bump(&mut run.client_errors.borrow_mut(), "writer_did_not_finish");
        }
    }
    let measured_s = cfg.duration.as_secs_f64();
    let acks_per_s = run.acked_measured.get() as f64 / measured_s;
    let latency = Latency::from_histogram(&run.latency.borrow());
    let errors = run.errors.borrow().clone();

    let mut table = Table::default();
    table
        .row(
            "target",
            format!("{} {}", cfg.shared.target_name, cfg.shared.target),
        )
        .row(
            "writers up / asked",
            format!("{writers_up} / {}", cfg.writers),
        )
        .row("state blob", format!("{} B", cfg.payload))
        .row(
            "offered load",
            if cfg.rate_per_writer > 0.0 {
                format!(
                    "{:.0} writes/s ({} per writer)",
                    cfg.rate_per_writer * writers_up as f64,
                    cfg.rate_per_writer
                )
            } else {
                "closed loop (next write on each ACK)".to_string()
            },
        )
        .row(
            "measured",
            format!(
                "{} s after {} s warmup",
                cfg.duration.as_secs(),
                cfg.warmup.as_secs()
            ),
        )
        .row("acknowledged writes/s", format!("{acks_per_s:.0}"))
        .row("acknowledged in window", run.acked_measured.get())
        .row(
            "ack latency",
            format!(
                "p50 {} / p90 {} / p99 {} / p99.9 {} / max {} us ({} samples)",
                latency.p50_us,
                latency.p90_us,
                latency.p99_us,
                latency.p999_us,
                latency.max_us,
                latency.samples
            ),
        )
        .row("timed out (no ack)", run.timed_out.get())
        .row("ERROR frames", errors.to_json().to_string())
        .row(
            "client-detected errors",
            report::reasons_json(&run.client_errors.borrow()).to_string(),
        )
        .row(
            "setup failures",
            report::reasons_json(&setup_failures).to_string(),
        )
        .row("client cpu", format!("{cpu_pct:.1}%"));

    let mut json_line = JsonLine::default();
    json_line.insert("scenario", json!("state"));
    json_line.insert("target", json!(cfg.shared.target_name));
    json_line.insert("writers", json!(cfg.writers));
    json_line.insert("writers_up", json!(writers_up));
    json_line.insert("payload", json!(cfg.payload));
    json_line.insert("rate_per_writer", json!(cfg.rate_per_writer));
    json_line.insert("address_seed", json!(cfg.address_seed));
    json_line.insert("duration_s", json!(measured_s));
    json_line.insert("acks_per_s", json!(acks_per_s.round()));
    latency.add_to("ack_", &mut json_line);
    json_line.insert("acked_total", json!(run.acked_total.get()));
    json_line.insert("timed_out", json!(run.timed_out.get()));
    json_line.insert("errors", errors.to_json());
    json_line.insert("errors_total", json!(errors.total()));
    json_line.insert(
        "client_errors",
        report::reasons_json(&run.client_errors.borrow()),
    );
    json_line.insert("setup_failures", report::reasons_json(&setup_failures));
    json_line.insert("client_cpu_pct", json!(cpu_pct));
    json_line.insert("setup_s", json!((setup_s * 1000.0).round() / 1000.0));
    Ok(StateReport {
        table,
        json: json_line,
    })
}

/// One writer: STATE_PUT, wait for its STATE_ACK (or an ERROR), repeat until
/// the sending window closes. Every wait is bounded by the ack timeout.
async fn writer(mut conn: Conn, addr: Addr, run: Rc<Run>, offset: Duration) {
    let mut blob = vec![0x5Au8; run.payload];
    let mut id = 0u64;
    let mut next_at = Instant::now() + offset;
    while Instant::now() < run.send_end {
        if let Some(interval) = run.interval {
            let now = Instant::now();
            if next_at > now {
                glommio::timer::sleep(next_at - now).await;
            }
            next_at = next_at.max(now) + interval;
        }
        id += 1;
        blob[..8].copy_from_slice(&id.to_be_bytes());
        let sent_at = Instant::now();
        if let Err(e) = conn
            .send_frame(kind::STATE_PUT, addr, proto::NIL, id, &blob)
            .await
        {
            report::bump(&mut run.client_errors.borrow_mut(), &e.reason());
            return;
        }
        let answer = futures_lite::future::or(wait_answer(&mut conn, id), async {
            glommio::timer::sleep(run.ack_timeout).await;
            Err(ConnError::Timeout)
        })
        .await;
        match answer {
            Ok(None) => {
                run.acked_total.set(run.acked_total.get() + 1);
                let now = Instant::now();
                if sent_at >= run.warm_end && now <= run.send_end {
                    run.acked_measured.set(run.acked_measured.get() + 1);
                    let ns = now.duration_since(sent_at).as_nanos() as u64;
                    let _ = run.latency.borrow_mut().record(ns.max(1));
                }
            }
            Ok(Some((code, message))) => {
                run.errors.borrow_mut().add(code, &message);
            }
            Err(ConnError::Timeout) => {
                run.timed_out.set(run.timed_out.get() + 1);
                return;
            }
            Err(e) => {
                report::bump(&mut run.client_errors.borrow_mut(), &e.reason());
                return;
            }
        }
    }
    conn.close().await;
}

/// Ok(None) for the STATE_ACK of `id`, Ok(Some(code, message)) for an ERROR
/// answering it. Other frames (none are expected) are skipped.
async fn wait_answer(conn: &mut Conn, id: u64) -> Result<Option<(u16, Vec<u8>)>, ConnError> {
    loop {
        match conn.recv().await? {
            Incoming::Frame(f) if f.header.id == id && f.header.kind == kind::STATE_ACK => {
                return Ok(None)
            }
            Incoming::Frame(f) if f.header.id == id && f.header.kind == kind::ERROR => {
                let (code, message) = proto::decode_error(f.prefix()).unwrap_or((0, b""));
                return Ok(Some((code, message.to_vec())));
            }
            Incoming::Frame(_) | Incoming::Ping | Incoming::Text => {}
            Incoming::Close(_) => return Err(ConnError::WsClosed),
        }
    }
}

/// Acknowledged writes per second, once a second, on stderr; returns the
/// client's CPU use over the measured window (percent of one core).
async fn progress(run: &Run) -> f64 {
    let mut last = 0;
    let mut last_at = Instant::now();
    let mut cpu_start = None;
    for (phase, end) in [("warmup", run.warm_end), ("measure", run.send_end)] {
        while Instant::now() < end {
            let step = Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()));
            glommio::timer::sleep(step).await;
            let now = Instant::now();
            let acked = run.acked_total.get();
            let rate = (acked - last) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-9);
            eprintln!("[state {phase}] acknowledged {acked} ({rate:.0} writes/s)");
            last = acked;
            last_at = now;
        }
        if cpu_start.is_none() {
            cpu_start = Some((Instant::now(), sys::cpu_time()));
        }
    }
    let (t0, c0) = cpu_start.expect("set after the warmup");
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    ((sys::cpu_time() - c0).as_secs_f64() / wall * 1000.0).round() / 10.0
}

/// Connects and registers every writer, at most `connect_concurrency` at once.
async fn set_up(cfg: &StateConfig) -> (Vec<(Conn, Addr)>, Reasons) {
    let sem = Rc::new(Semaphore::new(cfg.shared.connect_concurrency as u64));
    let tq = glommio::executor().current_task_queue();
    let mut tasks = Vec::with_capacity(cfg.writers as usize);
    for i in 0..u64::from(cfg.writers) {
        let permit = sem
            .acquire_static_permit(1)
            .await
            .expect("semaphore is never closed");
        let shared = cfg.shared.clone();
        let seed = cfg.address_seed;
        let task = glommio::spawn_local_into(
            async move {
                let addr = writer_address(seed, i).into_bytes();
                let source = conn::source_addr(i, shared.source_addrs);
                let timeout = shared.setup_timeout;
                let setup = async {
                    let mut c = Conn::open(shared.target, source, Transport::Tcp, None).await?;
                    c.hello(addr, &shared.token, 1).await?;
                    Ok((c, addr))
                };
                let r = futures_lite::future::or(setup, async {
                    glommio::timer::sleep(timeout).await;
                    Err(ConnError::Timeout)
                })
                .await;
                drop(permit);
                r
            },
            tq,
        )
        .expect("current task queue exists");
        tasks.push(task);
    }
    let mut conns = Vec::with_capacity(tasks.len());
    let mut failures = Reasons::new();
    for task in tasks {
        match task.await {
            Ok(c) => conns.push(c),
            Err(e) => report::bump(&mut failures, &e.reason()),
        }
    }
    (conns, failures)
}

/// Writer `i`'s address: derived from (seed, i) when a seed is given, so it
/// is the same in every run; otherwise random.
fn writer_address(seed: Option<u64>, i: u64) -> uuid::Uuid {
    match seed {
        Some(seed) => uuid::Uuid::new_v5(&uuid::Uuid::from_u64_pair(seed, 0), &i.to_be_bytes()),
        None => uuid::Uuid::new_v4(),
    }
}

#[cfg(test)]
mod tests {
    use super::writer_address;

    #[test]
    fn seeded_addresses_repeat_across_runs_and_differ_per_writer() {
        assert_eq!(writer_address(Some(1), 7), writer_address(Some(1), 7));
        assert_ne!(writer_address(Some(1), 7), writer_address(Some(1), 8));
        assert_ne!(writer_address(Some(1), 7), writer_address(Some(2), 7));
        assert_ne!(writer_address(None, 7), writer_address(None, 7));
    }
}
