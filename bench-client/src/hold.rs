//! `hold`: open C connections at a bounded rate and concurrency, register
//! each with its own address, keep them alive with heartbeats spread over the
//! interval, and measure the gateway's memory per connection.
//!
//! One small task per connection (about a kilobyte of client memory each): it
//! races a cancel-safe read against its heartbeat timer and a shared stop
//! signal, so an idle connection costs no CPU between heartbeats.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::{Semaphore, StaticPermit};
use glommio::timer::{sleep, Timer};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::Shared;
use crate::conn::{self, Conn, ConnError, Incoming, Transport};
use crate::proto::{self, kind};
use crate::report::{self, ErrorCounts, JsonLine, Latency, Reasons, Table};
use crate::sys;

/// How often the waiting loops look at the shared counters.
const POLL_STEP: Duration = Duration::from_millis(50);
/// Progress line interval while connecting, and while holding.
const CONNECT_PROGRESS_EVERY: Duration = Duration::from_secs(1);
const HOLD_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Time given to connections to close gracefully at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A pacing sleep shorter than this is skipped (timer granularity).
const PACING_MIN: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub shared: Shared,
    pub transport: Transport,
    pub conns: u32,
    pub heartbeat: Duration,
    pub hold: Duration,
    pub connect_rate: u32,
    pub gateway_pid: Option<u32>,
    pub settle: Duration,
}

/// Counters every connection task updates. Single-threaded: plain cells.
struct HoldCtx {
    cfg: HoldConfig,
    up: Cell<u64>,
    failed: Cell<u64>,
    alive: Cell<u64>,
    last_welcome: Cell<Option<Instant>>,
    failures: RefCell<Reasons>,
    dropped: RefCell<Reasons>,
    errors: RefCell<ErrorCounts>,
    unexpected: RefCell<Reasons>,
    hb_sent: Cell<u64>,
    hb_acked: Cell<u64>,
    hb_missed: Cell<u64>,
    hb_rtt: RefCell<Histogram<u64>>,
    /// Smallest heartbeat timeout any WELCOME announced (u64::MAX: none yet).
    hb_timeout_ms: Cell<u64>,
    /// Never has permits; closing it tells every connection to end.
    stop: Semaphore,
}

impl HoldCtx {
    fn setups_done(&self) -> u64 {
        self.up.get() + self.failed.get()
    }
}

pub struct HoldReport {
    pub table: Table,
    pub json: JsonLine,
}

pub async fn run(cfg: HoldConfig) -> anyhow::Result<HoldReport> {
    let rss_gw_base = gateway_rss(cfg.gateway_pid)?;
    let rss_self_base = sys::rss_bytes(None)?;
    let ctx = Rc::new(HoldCtx {
        cfg: cfg.clone(),
        up: Cell::new(0),
        failed: Cell::new(0),
        alive: Cell::new(0),
        last_welcome: Cell::new(None),
        failures: RefCell::default(),
        dropped: RefCell::default(),
        errors: RefCell::default(),
        unexpected: RefCell::default(),
        hb_sent: Cell::new(0),
        hb_acked: Cell::new(0),
        hb_missed: Cell::new(0),
        hb_rtt: RefCell::new(report::latency_histogram()),
        hb_timeout_ms: Cell::new(u64::MAX),
        stop: Semaphore::new(0),
    });

    let connect_start = Instant::now();
    let tasks = connect_all(&ctx, connect_start).await;
    let connect_s = ctx
        .last_welcome
        .get()
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(connect_start)
        .as_secs_f64();
    let held_from = Instant::now();
    let hb_timeout_ms = ctx.hb_timeout_ms.get();
    if hb_timeout_ms != u64::MAX && cfg.heartbeat.as_millis() as u64 >= hb_timeout_ms {
        eprintln!(
            "[hold] warning: --heartbeat-s {} is not below the gateway's heartbeat timeout \
             of {hb_timeout_ms} ms; expect ERROR timeout",
            cfg.heartbeat.as_secs()
        );
    }
    eprintln!(
        "[hold] setup finished: {} up, {} failed, last WELCOME after {connect_s:.2}s",
        ctx.up.get(),
        ctx.failed.get()
    );

    let settle = cfg.settle.min(cfg.hold);
    hold_for(&ctx, held_from, settle).await;
    let rss_gw_loaded = gateway_rss_later(cfg.gateway_pid);
    let rss_self_loaded = sys::rss_bytes(None)?;
    let alive_loaded = ctx.alive.get();
    eprintln!(
        "[hold] loaded RSS: gateway {}, client {}",
        report::bytes_text(rss_gw_loaded),
        report::bytes_text(Some(rss_self_loaded))
    );
    hold_for(&ctx, held_from, cfg.hold).await;
    let rss_gw_end = gateway_rss_later(cfg.gateway_pid);
    let alive_end = ctx.alive.get();

    close_all(&ctx, tasks).await;

    let rss = RssFigures {
        gw_base: rss_gw_base,
        gw_loaded: rss_gw_loaded,
        gw_end: rss_gw_end,
        self_base: rss_self_base,
        self_loaded: rss_self_loaded,
        alive_loaded,
    };
    Ok(build_report(&ctx, connect_s, alive_end, &rss))
}

fn gateway_rss(pid: Option<u32>) -> anyhow::Result<Option<u64>> {
    pid.map(|p| sys::rss_bytes(Some(p))).transpose()
}

/// A reading after the baseline: if the gateway is gone by then, the run
/// still reports what it saw (the dropped connections say why), with no RSS.
fn gateway_rss_later(pid: Option<u32>) -> Option<u64> {
    gateway_rss(pid).unwrap_or_else(|e| {
        eprintln!("[hold] cannot read the gateway's RSS: {e:#}");
        None
    })
}

/// Starts every connection at the configured rate with at most
/// `connect_concurrency` setups in flight, and waits until each setup has
/// succeeded or failed. Returns the connection tasks (dropping one cancels it).
async fn connect_all(ctx: &Rc<HoldCtx>, start: Instant) -> Vec<glommio::task::JoinHandle<()>> {
    let cfg = &ctx.cfg;
    let conns = u64::from(cfg.conns);
    let in_flight = Rc::new(Semaphore::new(cfg.shared.connect_concurrency as u64));
    let tq = glommio::executor().current_task_queue();
    let mut tasks = Vec::with_capacity(cfg.conns as usize);
    let mut next_progress = start + CONNECT_PROGRESS_EVERY;
    for i in 0..conns {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(cfg.connect_rate));
        let wait = due.saturating_duration_since(Instant::now());
        if wait >= PACING_MIN {
            sleep(wait).await;
        }
        let permit = in_flight
            .acquire_static_permit(1)
            .await
            .expect("semaphore is never closed");
        let task = glommio::spawn_local_into(conn_task(i, ctx.clone(), permit), tq)
            .expect("current task queue exists");
        tasks.push(task.detach());
        if Instant::now() >= next_progress {
            connect_progress(ctx, start, i + 1);
            next_progress += CONNECT_PROGRESS_EVERY;
        }
    }
    // Every setup ends within the setup timeout; the deadline is a backstop.
    let deadline = Instant::now() + cfg.shared.setup_timeout + Duration::from_secs(5);
    while ctx.setups_done() < conns && Instant::now() < deadline {
        sleep(POLL_STEP).await;
        if Instant::now() >= next_progress {
            connect_progress(ctx, start, conns);
            next_progress += CONNECT_PROGRESS_EVERY;
        }
    }
    connect_progress(ctx, start, conns);
    let missing = conns - ctx.setups_done();
    if missing > 0 {
        report::bump_by(
            &mut ctx.failures.borrow_mut(),
            "setup_never_finished",
            missing,
        );
        ctx.failed.set(ctx.failed.get() + missing);
    }
    tasks
}

fn connect_progress(ctx: &HoldCtx, start: Instant, started: u64) {
    let secs = start.elapsed().as_secs_f64();
    let up = ctx.up.get();
    eprintln!(
        "[hold connect {secs:>6.1}s] up {up}/{} failed {} in-flight {} ({:.0} up/s) errors {}",
        ctx.cfg.conns,
        ctx.failed.get(),
        started - ctx.setups_done(),
        up as f64 / secs.max(1e-9),
        ctx.errors.borrow().total()
    );
}

/// Sleeps until `held_from + until`, printing a status line now and then.
async fn hold_for(ctx: &HoldCtx, held_from: Instant, until: Duration) {
    let end = held_from + until;
    let mut next_progress = Instant::now() + HOLD_PROGRESS_EVERY;
    // Bounded by `end`: each pass sleeps at least until the next line or end.
    while Instant::now() < end {
        let step = next_progress
            .min(end)
            .saturating_duration_since(Instant::now());
        sleep(step).await;
        if Instant::now() >= next_progress {
            eprintln!(
                "[hold {:>6.1}s] alive {} heartbeats sent {} acked {} missed {} errors {} dropped {}",
                held_from.elapsed().as_secs_f64(),
                ctx.alive.get(),
                ctx.hb_sent.get(),
                ctx.hb_acked.get(),
                ctx.hb_missed.get(),
                ctx.errors.borrow().total(),
                report::total(&ctx.dropped.borrow())
            );
            next_progress += HOLD_PROGRESS_EVERY;
        }
    }
}

/// Tells every connection to close, waits a little, then cancels stragglers.
async fn close_all(ctx: &HoldCtx, tasks: Vec<glommio::task::JoinHandle<()>>) {
    ctx.stop.close();
    let deadline = Instant::now() + CLOSE_GRACE;
    while ctx.alive.get() > 0 && Instant::now() < deadline {
        sleep(POLL_STEP).await;
    }
    for task in &tasks {
        task.cancel();
    }
}

/// One connection: set up, then heartbeat until told to stop or dropped.
async fn conn_task(idx: u64, ctx: Rc<HoldCtx>, permit: StaticPermit) {
    let src = uuid::Uuid::new_v4().into_bytes();
    let cfg = &ctx.cfg;
    let source = conn::source_addr(idx, cfg.shared.source_addrs);
    let timeout = cfg.shared.setup_timeout;
    // The connection and the setup future live on the heap: the setup state
    // (upgrade buffers, HELLO) is freed once done, and the task that stays
    // parked for the whole hold keeps only the heartbeat loop's state.
    let setup = async {
        let mut conn = Box::new(Conn::open(cfg.shared.target, source, cfg.transport).await?);
        let welcome = conn.hello(src, &cfg.shared.token, 1).await?;
        Ok((conn, welcome.heartbeat_timeout_ms))
    };
    let result = Box::pin(futures_lite::future::or(setup, async {
        sleep(timeout).await;
        Err(ConnError::Timeout)
    }))
    .await;
    drop(permit);
    let mut conn = match result {
        Ok((conn, timeout_ms)) => {
            let seen = ctx.hb_timeout_ms.get();
            ctx.hb_timeout_ms.set(seen.min(u64::from(timeout_ms)));
            conn
        }
        Err(e) => {
            if let ConnError::Refused(code) = e {
                ctx.errors.borrow_mut().add(code, b"");
            }
            report::bump(&mut ctx.failures.borrow_mut(), &e.reason());
            ctx.failed.set(ctx.failed.get() + 1);
            return;
        }
    };
    ctx.up.set(ctx.up.get() + 1);
    ctx.alive.set(ctx.alive.get() + 1);
    ctx.last_welcome.set(Some(Instant::now()));

    let reason = heartbeat_loop(&ctx, &mut conn, src, idx).await;
    match reason {
        None => conn.close().await,
        Some(reason) => report::bump(&mut ctx.dropped.borrow_mut(), &reason),
    }
    ctx.alive.set(ctx.alive.get() - 1);
}

enum Wake {
    In(Result<Incoming, ConnError>),
    Heartbeat,
    Stop,
}

/// Keeps the connection alive. Returns `None` when told to stop, or why the
/// connection ended.
async fn heartbeat_loop(
    ctx: &HoldCtx,
    conn: &mut Conn,
    src: proto::Addr,
    idx: u64,
) -> Option<String> {
    let interval = ctx.cfg.heartbeat;
    // Connection i beats at offset i/C of the interval, so C connections
    // spread evenly instead of beating together.
    let phase_ns = interval.as_nanos() as u64 * idx / u64::from(ctx.cfg.conns);
    let mut next_beat = Instant::now() + Duration::from_nanos(phase_ns);
    let mut timer = Timer::new(next_beat.saturating_duration_since(Instant::now()));
    let mut id = 1u64;
    let mut outstanding: Option<(u64, Instant)> = None;
    // Ends on stop (the hold is bounded in time) or when the connection ends.
    loop {
        let wake = futures_lite::future::or(
            async { Wake::In(conn.recv().await) },
            futures_lite::future::or(
                async {
                    (&mut timer).await;
                    Wake::Heartbeat
                },
                async {
                    let _ = ctx.stop.acquire(1).await;
                    Wake::Stop
                },
            ),
        )
        .await;
        match wake {
            Wake::Stop => return None,
            Wake::Heartbeat => {
                if outstanding.is_some() {
                    ctx.hb_missed.set(ctx.hb_missed.get() + 1);
                }
                id += 1;
                if let Err(e) = conn
                    .send_frame(kind::HEARTBEAT, src, proto::NIL, id, &[])
                    .await
                {
                    return Some(e.reason());
                }
                let now = Instant::now();
                outstanding = Some((id, now));
                ctx.hb_sent.set(ctx.hb_sent.get() + 1);
                next_beat += interval;
                timer.reset(next_beat.saturating_duration_since(now));
            }
            Wake::In(Err(e)) => return Some(e.reason()),
            Wake::In(Ok(Incoming::Frame(f))) => match f.header.kind {
                kind::HEARTBEAT => match outstanding {
                    Some((sent_id, at)) if sent_id == f.header.id => {
                        let rtt = at.elapsed().as_nanos() as u64;
                        ctx.hb_rtt
                            .borrow_mut()
                            .saturating_record(rtt.clamp(1, report::LATENCY_MAX_NS));
                        ctx.hb_acked.set(ctx.hb_acked.get() + 1);
                        outstanding = None;
                    }
                    _ => report::bump(&mut ctx.unexpected.borrow_mut(), "unmatched_heartbeat"),
                },
                kind::ERROR => {
                    ctx.errors.borrow_mut().add_payload(f.prefix());
                    let code = proto::decode_error(f.prefix()).map_or(0, |(c, _)| c);
                    if proto::error_closes(code) {
                        return Some(format!("error_{}", proto::error_name(code)));
                    }
                }
                other => report::bump(
                    &mut ctx.unexpected.borrow_mut(),
                    &format!("unexpected_kind_0x{other:02x}"),
                ),
            },
            Wake::In(Ok(Incoming::Ping)) => {
                if let Err(e) = conn.send_pong().await {
                    return Some(e.reason());
                }
            }
            Wake::In(Ok(Incoming::Text)) => {
                report::bump(&mut ctx.unexpected.borrow_mut(), "ws_text_message")
            }
            Wake::In(Ok(Incoming::Close(code))) => {
                return Some(match code {
                    Some(code) => format!("ws_close_{code}"),
                    None => "ws_close_without_code".into(),
                })
            }
        }
    }
}

struct RssFigures {
    gw_base: Option<u64>,
    gw_loaded: Option<u64>,
    gw_end: Option<u64>,
    self_base: u64,
    self_loaded: u64,
    alive_loaded: u64,
}

fn per_conn(base: Option<u64>, loaded: Option<u64>, conns: u64) -> Option<i64> {
    let (base, loaded) = (base?, loaded?);
    (conns > 0).then(|| (loaded as i64 - base as i64) / conns as i64)
}

fn build_report(ctx: &HoldCtx, connect_s: f64, alive_end: u64, rss: &RssFigures) -> HoldReport {
    let cfg = &ctx.cfg;
    let failures = ctx.failures.borrow();
    let dropped = ctx.dropped.borrow();
    let errors = ctx.errors.borrow();
    let unexpected = ctx.unexpected.borrow();
    let hb = Latency::from_histogram(&ctx.hb_rtt.borrow());
    let gw_per_conn = per_conn(rss.gw_base, rss.gw_loaded, rss.alive_loaded);
    let self_per_conn = per_conn(Some(rss.self_base), Some(rss.self_loaded), rss.alive_loaded);
    let opt = |v: Option<i64>| v.map_or("n/a".to_string(), |b| format!("{b} B"));

    let mut table = Table::default();
    table
        .row(
            "target",
            format!(
                "{} {} ({})",
                cfg.shared.target_name,
                cfg.shared.target,
                cfg.transport.name()
            ),
        )
        .row(
            "connections up / asked",
            format!("{} / {}", ctx.up.get(), cfg.conns),
        )
        .reasons("setup failures", &failures)
        .row(
            "time to connect all",
            format!(
                "{connect_s:.2} s at {} /s, {} in flight max",
                cfg.connect_rate, cfg.shared.connect_concurrency
            ),
        )
        .row(
            "alive when RSS read / at end",
            format!("{} / {alive_end}", rss.alive_loaded),
        )
        .reasons("dropped after WELCOME", &dropped)
        .row("gateway RSS baseline", report::bytes_text(rss.gw_base))
        .row("gateway RSS loaded", report::bytes_text(rss.gw_loaded))
        .row("gateway RSS at end", report::bytes_text(rss.gw_end))
        .row("gateway bytes per conn", opt(gw_per_conn))
        .row("client bytes per conn", opt(self_per_conn))
        .row(
            "heartbeats sent / acked / missed",
            format!(
                "{} / {} / {}",
                ctx.hb_sent.get(),
                ctx.hb_acked.get(),
                ctx.hb_missed.get()
            ),
        )
        .latency("heartbeat round trip", &hb)
        .errors("ERROR frames", &errors)
        .reasons("client-detected errors", &unexpected);

    let mut m = JsonLine::default();
    m.insert("scenario", json!("hold"));
    m.insert("target", json!(cfg.shared.target_name));
    m.insert("transport", json!(cfg.transport.name()));
    m.insert("conns", json!(cfg.conns));
    m.insert("up", json!(ctx.up.get()));
    m.insert("failures", report::reasons_json(&failures));
    m.insert("failures_total", json!(report::total(&failures)));
    m.insert("connect_s", json!((connect_s * 1000.0).round() / 1000.0));
    m.insert("connect_rate", json!(cfg.connect_rate));
    m.insert("heartbeat_s", json!(cfg.heartbeat.as_secs()));
    let timeout_ms = ctx.hb_timeout_ms.get();
    m.insert(
        "gateway_heartbeat_timeout_ms",
        json!((timeout_ms != u64::MAX).then_some(timeout_ms)),
    );
    m.insert("hold_s", json!(cfg.hold.as_secs()));
    m.insert("alive_loaded", json!(rss.alive_loaded));
    m.insert("alive_end", json!(alive_end));
    m.insert("dropped", report::reasons_json(&dropped));
    m.insert("rss_baseline_bytes", json!(rss.gw_base));
    m.insert("rss_loaded_bytes", json!(rss.gw_loaded));
    m.insert("rss_end_bytes", json!(rss.gw_end));
    m.insert("bytes_per_conn", json!(gw_per_conn));
    m.insert("client_rss_baseline_bytes", json!(rss.self_base));
    m.insert("client_rss_loaded_bytes", json!(rss.self_loaded));
    m.insert("client_bytes_per_conn", json!(self_per_conn));
    m.insert("hb_sent", json!(ctx.hb_sent.get()));
    m.insert("hb_acked", json!(ctx.hb_acked.get()));
    m.insert("hb_missed", json!(ctx.hb_missed.get()));
    hb.add_to("hb_rtt_", &mut m);
    m.insert("errors", errors.to_json());
    m.insert("errors_total", json!(errors.total()));
    m.insert("client_errors", report::reasons_json(&unexpected));
    HoldReport { table, json: m }
}
