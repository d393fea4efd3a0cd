//! `hold`: open C connections at a bounded rate and concurrency, register
//! each with its own address, keep them alive with heartbeats spread over the
//! interval, and measure the server's memory per connection: the gateway's,
//! or for comparison a NATS server's or an MQTT broker's (`peer.rs`: the
//! same counters, phases and report over those wires).
//!
//! One small task per connection (about a kilobyte of client memory each): it
//! races a cancel-safe read against its heartbeat timer and a shared stop
//! signal, so an idle connection costs no CPU between heartbeats.
//!
//! Connection i goes to the gateway's listen address i mod T (round robin over
//! the T given) from source address 127.0.0.(1 + i mod N).
//!
//! With `--tls` every gateway connection runs a TLS handshake first (the
//! gateway's TLS or WSS port), so the server's bytes per connection include
//! its TLS state; the client's own cost per connection is reported too.
//!
//! `soak` is this same run with [`HoldConfig::data`] set: a few of the held
//! connections also carry DATA in pairs (`soak.rs`), and the report gets the
//! DATA figures.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::sync::{Semaphore, StaticPermit};
use glommio::timer::{sleep, Timer};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::{self, HoldArgs, Shared};
use crate::conn::{self, Conn, ConnError, Incoming, Transport};
use crate::pingpong::setup::SetupError;
use crate::pingpong::Wire;
use crate::proto::{self, kind};
use crate::report::{self, ErrorCounts, JsonLine, Latency, Reasons, Table};
use crate::soak::{self, DataConfig, Endpoint, Pairs};
use crate::sys;
use crate::tls::{TlsClient, TlsTally};

mod peer;

/// How often the waiting loops look at the shared counters.
const POLL_STEP: Duration = Duration::from_millis(50);
/// Progress line interval while connecting, and (by default) while holding.
const CONNECT_PROGRESS_EVERY: Duration = Duration::from_secs(1);
const HOLD_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Time given to connections to close gracefully at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A pacing sleep shorter than this is skipped (timer granularity).
const PACING_MIN: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub shared: Shared,
    /// The gateway, or a NATS server or MQTT broker to compare with.
    pub wire: Wire,
    /// How the gateway is reached (NATS and MQTT: always TCP).
    pub transport: Transport,
    /// TLS around every gateway connection (`--tls`).
    pub tls: Option<TlsClient>,
    /// The server's listen addresses, used round robin (`shared.target` is
    /// the first).
    pub targets: Vec<SocketAddrV4>,
    pub conns: u32,
    pub heartbeat: Duration,
    pub hold: Duration,
    pub connect_rate: u32,
    /// The server process whose RSS is read (`--server-pid`).
    pub server_pid: Option<u32>,
    pub settle: Duration,
    /// Progress line interval while holding.
    pub progress_every: Duration,
    /// DATA pairs among the held connections: set for `soak`.
    pub data: Option<DataConfig>,
}

impl HoldConfig {
    /// Validates hold's arguments: loopback targets, no address twice, no
    /// token or TLS for NATS or MQTT, a readable trust root for --ca, and a
    /// readable `/proc/PID/status` for --server-pid.
    pub fn from_args(args: &HoldArgs) -> anyhow::Result<HoldConfig> {
        let (wire, transport, texts) = args.targets();
        if wire != Wire::Gateway && !args.common.token.is_empty() {
            bail!("--token is only for the gateway (NATS and MQTT targets run without auth)");
        }
        if wire != Wire::Gateway && args.tls.tls {
            bail!("--tls is only for the gateway (--tcp or --ws)");
        }
        let mut targets = Vec::with_capacity(texts.len());
        for text in texts {
            let target = cli::loopback_target(text)?;
            if targets.contains(&target) {
                bail!("server address {target} is given twice");
            }
            targets.push(target);
        }
        let cfg = HoldConfig {
            shared: args
                .common
                .shared_named(&texts[0], wire.default_target_name())?,
            wire,
            transport,
            tls: args.tls.client()?,
            targets,
            conns: args.conns,
            heartbeat: Duration::from_secs(args.heartbeat_s),
            hold: Duration::from_secs(args.hold_s),
            connect_rate: args.connect_rate,
            server_pid: args.server_pid,
            settle: Duration::from_secs(args.settle_s),
            progress_every: HOLD_PROGRESS_EVERY,
            data: None,
        };
        if let Some(pid) = cfg.server_pid {
            sys::rss_bytes(Some(pid)).with_context(|| format!("--server-pid {pid}"))?;
        }
        Ok(cfg)
    }

    /// The JSON line's `transport`: tcp, ws, tls or wss for the gateway,
    /// else the wire's name (nats, mqtt), as pingpong writes it.
    pub fn transport_name(&self) -> &'static str {
        match self.wire {
            Wire::Gateway => self.transport.name(self.tls.is_some()),
            wire => wire.transport_name(),
        }
    }

    /// The scenario's name, for progress lines and the report.
    pub fn scenario(&self) -> &'static str {
        if self.data.is_some() {
            "soak"
        } else {
            "hold"
        }
    }

    /// The server address connection `idx` goes to.
    fn target(&self, idx: u64) -> SocketAddrV4 {
        self.targets[(idx % self.targets.len() as u64) as usize]
    }
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
    /// TLS handshakes of the connections that registered.
    tls_tally: TlsTally,
    /// Never has permits; closing it tells every connection to end.
    stop: Semaphore,
    /// Connections up per gateway address (index into `cfg.targets`) and per
    /// source address (127.0.0.1 + index).
    up_by_target: RefCell<Vec<u64>>,
    up_by_source: RefCell<Vec<u64>>,
    /// The DATA pairs (`soak` only).
    pairs: Option<Pairs>,
}

impl HoldCtx {
    fn setups_done(&self) -> u64 {
        self.up.get() + self.failed.get()
    }

    /// Counts a failed setup by reason, and what the server refused it with.
    fn setup_failed(&self, e: &SetupError) {
        e.record(
            &mut self.failures.borrow_mut(),
            &mut self.errors.borrow_mut(),
        );
        self.failed.set(self.failed.get() + 1);
    }

    /// Counts connection `idx`, from `source`, as registered and alive.
    fn registered(&self, idx: u64, source: Ipv4Addr) {
        self.up.set(self.up.get() + 1);
        self.alive.set(self.alive.get() + 1);
        self.last_welcome.set(Some(Instant::now()));
        self.up_by_target.borrow_mut()[(idx % self.cfg.targets.len() as u64) as usize] += 1;
        let source_slot = usize::from(source.octets()[3] - 1);
        self.up_by_source.borrow_mut()[source_slot] += 1;
    }

    /// Counts a registered connection as gone: told to stop (`None`), or
    /// dropped for `reason`.
    fn ended(&self, reason: Option<&str>) {
        if let Some(reason) = reason {
            report::bump(&mut self.dropped.borrow_mut(), reason);
        }
        self.alive.set(self.alive.get() - 1);
    }
}

/// Runs a connection's setup on the heap, bounded by `timeout`: the setup
/// state (upgrade buffers, HELLO) is freed once done, and the task that stays
/// parked for the whole hold keeps only its loop's state.
fn bounded<T, E: From<ConnError>>(
    timeout: Duration,
    setup: impl Future<Output = Result<T, E>>,
) -> Pin<Box<impl Future<Output = Result<T, E>>>> {
    Box::pin(futures_lite::future::or(setup, async move {
        sleep(timeout).await;
        Err(ConnError::Timeout.into())
    }))
}

/// A connection's heartbeat schedule and the one heartbeat it has out.
struct Beats {
    next: Instant,
    timer: Timer,
    /// Id of the last heartbeat sent.
    id: u64,
    /// Id and send time of the heartbeat not answered yet.
    outstanding: Option<(u64, Instant)>,
}

impl Beats {
    /// Connection i beats at offset i/C of the interval, so C connections
    /// spread evenly instead of beating together.
    fn new(ctx: &HoldCtx, idx: u64) -> Beats {
        let phase_ns = ctx.cfg.heartbeat.as_nanos() as u64 * idx / u64::from(ctx.cfg.conns);
        let next = Instant::now() + Duration::from_nanos(phase_ns);
        Beats {
            next,
            timer: Timer::new(next.saturating_duration_since(Instant::now())),
            id: 1,
            outstanding: None,
        }
    }

    /// The timer went off: counts the previous heartbeat as missed if it is
    /// still unanswered, and returns the id of the one to send.
    fn due(&mut self, ctx: &HoldCtx) -> u64 {
        if self.outstanding.is_some() {
            ctx.hb_missed.set(ctx.hb_missed.get() + 1);
        }
        self.id += 1;
        self.id
    }

    /// Heartbeat `id` went out: waits for its answer, sets the next beat.
    fn sent(&mut self, ctx: &HoldCtx, id: u64) {
        let now = Instant::now();
        self.outstanding = Some((id, now));
        ctx.hb_sent.set(ctx.hb_sent.get() + 1);
        self.next += ctx.cfg.heartbeat;
        self.timer.reset(self.next.saturating_duration_since(now));
    }

    /// A heartbeat answer came: for heartbeat `id`, or (`None`, a wire whose
    /// answers name nothing) for the one out.
    fn answered(&mut self, ctx: &HoldCtx, id: Option<u64>) {
        match self.outstanding {
            Some((sent_id, at)) if id.is_none_or(|id| id == sent_id) => {
                let rtt = at.elapsed().as_nanos() as u64;
                ctx.hb_rtt
                    .borrow_mut()
                    .saturating_record(rtt.clamp(1, report::LATENCY_MAX_NS));
                ctx.hb_acked.set(ctx.hb_acked.get() + 1);
                self.outstanding = None;
            }
            _ => report::bump(&mut ctx.unexpected.borrow_mut(), "unmatched_heartbeat"),
        }
    }
}

pub struct HoldReport {
    pub table: Table,
    pub json: JsonLine,
}

pub async fn run(cfg: HoldConfig) -> anyhow::Result<HoldReport> {
    let rss_gw_base = server_rss(cfg.server_pid)?;
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
        tls_tally: TlsTally::default(),
        stop: Semaphore::new(0),
        up_by_target: RefCell::new(vec![0; cfg.targets.len()]),
        up_by_source: RefCell::new(vec![0; cfg.shared.source_addrs.clamp(1, 250) as usize]),
        pairs: cfg.data.map(|d| Pairs::new(d, cfg.conns)),
    });
    let name = cfg.scenario();

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
            "[{name}] warning: --heartbeat-s {} is not below the gateway's heartbeat timeout \
             of {hb_timeout_ms} ms; expect ERROR timeout",
            cfg.heartbeat.as_secs()
        );
    }
    eprintln!(
        "[{name}] setup finished: {} up, {} failed, last one up after {connect_s:.2}s",
        ctx.up.get(),
        ctx.failed.get()
    );
    if let Some(pairs) = &ctx.pairs {
        pairs.start();
    }

    let settle = cfg.settle.min(cfg.hold);
    hold_for(&ctx, held_from, settle).await;
    let rss_gw_loaded = server_rss_later(cfg.server_pid, name);
    let rss_self_loaded = sys::rss_bytes(None)?;
    let alive_loaded = ctx.alive.get();
    eprintln!(
        "[{name}] loaded RSS: server {}, client {}",
        report::bytes_text(rss_gw_loaded),
        report::bytes_text(Some(rss_self_loaded))
    );
    hold_for(&ctx, held_from, cfg.hold).await;
    let rss_gw_end = server_rss_later(cfg.server_pid, name);
    let alive_end = ctx.alive.get();

    if let Some(pairs) = &ctx.pairs {
        drain_data(pairs, name).await;
    }
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

/// Stops new DATA and waits (at most [`soak::DRAIN`]) for the messages still
/// out; what is missing after that is reported as lost.
async fn drain_data(pairs: &Pairs, name: &str) {
    pairs.stop();
    let deadline = Instant::now() + soak::DRAIN;
    while pairs.in_flight() > 0 && Instant::now() < deadline {
        sleep(POLL_STEP).await;
    }
    eprintln!(
        "[{name}] DATA stopped: {} still unanswered after the drain",
        pairs.in_flight()
    );
}

fn server_rss(pid: Option<u32>) -> anyhow::Result<Option<u64>> {
    pid.map(|p| sys::rss_bytes(Some(p))).transpose()
}

/// A reading after the baseline: if the server is gone by then, the run
/// still reports what it saw (the dropped connections say why), with no RSS.
fn server_rss_later(pid: Option<u32>, name: &str) -> Option<u64> {
    server_rss(pid).unwrap_or_else(|e| {
        eprintln!("[{name}] cannot read the server's RSS: {e:#}");
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
        let task = match cfg.wire {
            Wire::Gateway => glommio::spawn_local_into(conn_task(i, ctx.clone(), permit), tq),
            _ => glommio::spawn_local_into(peer::conn_task(i, ctx.clone(), permit), tq),
        }
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
        "[{} connect {secs:>6.1}s] up {up}/{} failed {} in-flight {} ({:.0} up/s) errors {}",
        ctx.cfg.scenario(),
        ctx.cfg.conns,
        ctx.failed.get(),
        started - ctx.setups_done(),
        up as f64 / secs.max(1e-9),
        ctx.errors.borrow().total()
    );
}

/// Where the previous progress line left the counters, for rates.
struct ProgressMark {
    at: Instant,
    hb_sent: u64,
    data_msgs: u64,
}

/// Sleeps until `held_from + until`, printing a status line every
/// `progress_every`: connections alive, heartbeats per second, DATA messages
/// per second and their recent p99 (soak), ERROR frames and drops so far.
async fn hold_for(ctx: &HoldCtx, held_from: Instant, until: Duration) {
    let end = held_from + until;
    let every = ctx.cfg.progress_every;
    let mut next_progress = Instant::now() + every;
    let mut mark = ProgressMark {
        at: Instant::now(),
        hb_sent: ctx.hb_sent.get(),
        data_msgs: ctx.pairs.as_ref().map_or(0, Pairs::received),
    };
    // Bounded by `end`: each pass sleeps at least until the next line or end.
    while Instant::now() < end {
        let step = next_progress
            .min(end)
            .saturating_duration_since(Instant::now());
        sleep(step).await;
        if Instant::now() >= next_progress {
            hold_progress(ctx, held_from, &mut mark);
            next_progress += every;
        }
    }
}

fn hold_progress(ctx: &HoldCtx, held_from: Instant, mark: &mut ProgressMark) {
    let now = Instant::now();
    let secs = now.duration_since(mark.at).as_secs_f64().max(1e-9);
    let hb_sent = ctx.hb_sent.get();
    let data = ctx.pairs.as_ref().map_or(String::new(), |p| {
        let text = p.progress(mark.data_msgs, secs);
        mark.data_msgs = p.received();
        text
    });
    eprintln!(
        "[{} {:>6.1}s] alive {}/{} | heartbeats {:.0}/s, sent {} acked {} missed {} {data}\
         | ERROR frames {} dropped {}",
        ctx.cfg.scenario(),
        held_from.elapsed().as_secs_f64(),
        ctx.alive.get(),
        ctx.up.get(),
        (hb_sent - mark.hb_sent) as f64 / secs,
        hb_sent,
        ctx.hb_acked.get(),
        ctx.hb_missed.get(),
        ctx.errors.borrow().total(),
        report::total(&ctx.dropped.borrow())
    );
    mark.at = now;
    mark.hb_sent = hb_sent;
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

/// One connection: set up, then heartbeat (and, for a pair member, carry
/// DATA) until told to stop or dropped.
async fn conn_task(idx: u64, ctx: Rc<HoldCtx>, permit: StaticPermit) {
    let cfg = &ctx.cfg;
    // A pair member's address was chosen up front, so its peer knows it.
    let mut data = ctx.pairs.as_ref().and_then(|p| p.endpoint(idx));
    let src = data
        .as_ref()
        .map_or_else(|| uuid::Uuid::new_v4().into_bytes(), |ep| ep.me);
    let source = conn::source_addr(idx, cfg.shared.source_addrs);
    // The connection lives on the heap too: the parked task stays small.
    let setup = async {
        let open = Conn::open(cfg.target(idx), source, cfg.transport, cfg.tls.as_ref());
        let mut conn = Box::new(open.await?);
        let welcome = conn.hello(src, &cfg.shared.token, 1).await?;
        Ok::<_, ConnError>((conn, welcome.heartbeat_timeout_ms))
    };
    let result = bounded(cfg.shared.setup_timeout, setup).await;
    drop(permit);
    let mut conn = match result {
        Ok((conn, timeout_ms)) => {
            let seen = ctx.hb_timeout_ms.get();
            ctx.hb_timeout_ms.set(seen.min(u64::from(timeout_ms)));
            ctx.tls_tally.record(conn.tls_info());
            conn
        }
        Err(e) => return ctx.setup_failed(&SetupError::Conn(e)),
    };
    ctx.registered(idx, source);

    let reason = heartbeat_loop(&ctx, &mut conn, src, idx, data.as_deref_mut()).await;
    if let (Some(ep), Some(pairs)) = (data.as_deref_mut(), &ctx.pairs) {
        ep.on_exit(pairs);
    }
    if reason.is_none() {
        conn.close().await;
    }
    ctx.ended(reason.as_deref());
}

/// What woke a held connection; `T` is what its receive gave.
enum Wake<T> {
    In(T),
    Heartbeat,
    Stop,
    /// A pair's sending side is due for its next DATA message.
    Data,
}

/// Waits for whichever comes first: `recv` (cancel-safe), the heartbeat
/// timer, the stop signal, or `other` (a pair's DATA timer).
async fn next_wake<T>(
    ctx: &HoldCtx,
    recv: impl Future<Output = T>,
    timer: &mut Timer,
    other: impl Future<Output = Wake<T>>,
) -> Wake<T> {
    futures_lite::future::or(
        async { Wake::In(recv.await) },
        futures_lite::future::or(
            async {
                timer.await;
                Wake::Heartbeat
            },
            futures_lite::future::or(
                async {
                    let _ = ctx.stop.acquire(1).await;
                    Wake::Stop
                },
                other,
            ),
        ),
    )
    .await
}

/// Keeps the connection alive, and for a pair member (`data`) sends, echoes
/// and checks DATA. Returns `None` when told to stop, or why the connection
/// ended.
async fn heartbeat_loop(
    ctx: &HoldCtx,
    conn: &mut Conn,
    src: proto::Addr,
    idx: u64,
    mut data: Option<&mut Endpoint>,
) -> Option<String> {
    let mut beats = Beats::new(ctx, idx);
    // Ends on stop (the hold is bounded in time) or when the connection ends.
    loop {
        let mut data_timer = data.as_deref_mut().and_then(Endpoint::timer);
        // One pointer of state: idle connections carry it too.
        let data_due = futures_lite::future::poll_fn(move |cx| match &mut data_timer {
            Some(t) => Pin::new(&mut **t).poll(cx).map(|_| Wake::Data),
            None => Poll::Pending,
        });
        let wake = next_wake(ctx, conn.recv(), &mut beats.timer, data_due).await;
        // A DATA message to write: side a's next, or side b's echo. Kept out
        // of the other arms' awaits, so idle connections pay nothing for it.
        let out = match wake {
            Wake::Stop => return None,
            Wake::Data => match (data.as_deref_mut(), &ctx.pairs) {
                (Some(ep), Some(pairs)) => ep.on_tick(pairs),
                _ => None,
            },
            Wake::Heartbeat => {
                let id = beats.due(ctx);
                if let Err(e) = conn
                    .send_frame(kind::HEARTBEAT, src, proto::NIL, id, &[])
                    .await
                {
                    return Some(e.reason());
                }
                beats.sent(ctx, id);
                None
            }
            Wake::In(Err(e)) => return Some(e.reason()),
            Wake::In(Ok(Incoming::Frame(f))) => match f.header.kind {
                kind::HEARTBEAT => {
                    beats.answered(ctx, Some(f.header.id));
                    None
                }
                kind::ERROR => {
                    ctx.errors.borrow_mut().add_payload(f.prefix());
                    let out = match (data.as_deref_mut(), &ctx.pairs) {
                        (Some(ep), Some(pairs)) if soak::is_data_id(f.header.id) => {
                            ep.on_error(f.header.id, f.prefix(), pairs)
                        }
                        _ => None,
                    };
                    let code = proto::decode_error(f.prefix()).map_or(0, |(c, _)| c);
                    if proto::error_closes(code) {
                        return Some(format!("error_{}", proto::error_name(code)));
                    }
                    out
                }
                kind::DATA if data.is_some() => match (data.as_deref_mut(), &ctx.pairs) {
                    (Some(ep), Some(pairs)) => ep.on_data(&f, pairs),
                    _ => None,
                },
                other => {
                    report::bump(
                        &mut ctx.unexpected.borrow_mut(),
                        &format!("unexpected_kind_0x{other:02x}"),
                    );
                    None
                }
            },
            Wake::In(Ok(Incoming::Ping)) => {
                if let Err(e) = conn.send_pong().await {
                    return Some(e.reason());
                }
                None
            }
            Wake::In(Ok(Incoming::Text)) => {
                report::bump(&mut ctx.unexpected.borrow_mut(), "ws_text_message");
                None
            }
            Wake::In(Ok(Incoming::Close(code))) => {
                return Some(match code {
                    Some(code) => format!("ws_close_{code}"),
                    None => "ws_close_without_code".into(),
                })
            }
        };
        if let Some(out) = out {
            // Boxed: only pair members ever hold this future's buffers.
            if let Err(e) = Box::pin(soak::send(conn, src, out)).await {
                return Some(e.reason());
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
    let spread = Spread::new(ctx);

    let mut table = Table::default();
    table
        .row(
            "target",
            format!(
                "{} {} ({})",
                cfg.shared.target_name,
                spread.targets_text(),
                cfg.transport_name()
            ),
        )
        .row(
            "connections up / asked",
            format!("{} / {}", ctx.up.get(), cfg.conns),
        )
        .row(
            "spread",
            format!(
                "{} server address(es) used of {}, {} source address(es) used of {} (127.0.0.1..)",
                spread.targets_used,
                cfg.targets.len(),
                spread.sources_used,
                cfg.shared.source_addrs
            ),
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
        .reasons("dropped after set up", &dropped)
        .row("server RSS baseline", report::bytes_text(rss.gw_base))
        .row("server RSS loaded", report::bytes_text(rss.gw_loaded))
        .row("server RSS at end", report::bytes_text(rss.gw_end))
        .row("server bytes per conn", opt(gw_per_conn))
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
    m.insert("scenario", json!(cfg.scenario()));
    m.insert("target", json!(cfg.shared.target_name));
    m.insert("transport", json!(cfg.transport_name()));
    m.insert("targets", json!(spread.addrs));
    m.insert("up_by_target", json!(spread.up_by_target));
    m.insert("target_ports_used", json!(spread.targets_used));
    m.insert("source_addrs", json!(cfg.shared.source_addrs));
    m.insert("source_addrs_used", json!(spread.sources_used));
    m.insert("conns", json!(cfg.conns));
    m.insert("up", json!(ctx.up.get()));
    m.insert("failures", report::reasons_json(&failures));
    m.insert("failures_total", json!(report::total(&failures)));
    m.insert("connect_s", json!((connect_s * 1000.0).round() / 1000.0));
    m.insert("connect_rate", json!(cfg.connect_rate));
    m.insert("heartbeat_s", json!(cfg.heartbeat.as_secs()));
    if cfg.wire == Wire::Mqtt {
        let keepalive_s = peer::mqtt_keepalive_s(cfg.heartbeat);
        table.row("MQTT keepalive", format!("{keepalive_s} s"));
        m.insert("mqtt_keepalive_s", json!(keepalive_s));
    }
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
    if cfg.wire == Wire::Gateway {
        ctx.tls_tally
            .add_report(cfg.tls.as_ref(), &mut table, &mut m);
    }
    if let Some(pairs) = &ctx.pairs {
        pairs.add_report(&mut table, &mut m);
    }
    HoldReport { table, json: m }
}

/// How the connections that came up were spread over the gateway's listen
/// addresses and the client's source addresses.
struct Spread {
    addrs: Vec<String>,
    up_by_target: Vec<u64>,
    targets_used: usize,
    sources_used: usize,
}

impl Spread {
    fn new(ctx: &HoldCtx) -> Spread {
        let up_by_target = ctx.up_by_target.borrow().clone();
        Spread {
            addrs: ctx.cfg.targets.iter().map(|t| t.to_string()).collect(),
            targets_used: up_by_target.iter().filter(|&&n| n > 0).count(),
            sources_used: ctx.up_by_source.borrow().iter().filter(|&&n| n > 0).count(),
            up_by_target,
        }
    }

    /// `127.0.0.1:7000` or `127.0.0.1:7000 (2500 up), 127.0.0.1:7002 (2500 up)`.
    fn targets_text(&self) -> String {
        if self.addrs.len() == 1 {
            return self.addrs[0].clone();
        }
        let parts: Vec<String> = self
            .addrs
            .iter()
            .zip(&self.up_by_target)
            .map(|(a, n)| format!("{a} ({n} up)"))
            .collect();
        parts.join(", ")
    }
}
