//! `fan`: flow-controlled one-way traffic between S senders and R receivers,
//! for fan-in (many senders, few receivers) and fan-out (the reverse).
//!
//! There are K = max(S, R) streams; stream k goes from sender k % S to
//! receiver k % R ([`StreamMap`]), so every endpoint on the larger side has
//! one stream and every endpoint on the smaller side about K / its count.
//! Each stream keeps at most W DATA frames outstanding: the receiver sends a
//! small credit message back to the stream's sender every ceil(W/2) frames
//! it received on that stream ([`CreditCounter`]), and the sender never has
//! more than W frames out that were neither credited nor refused with an
//! ERROR ([`SendWindow`]). The volume is one-way, but bounded: no queue in
//! the gateway (or the NATS server, or the MQTT broker) can grow without
//! limit.
//!
//! A DATA payload carries the send time (bytes 0..8, nanoseconds since the
//! run started; sender and receiver share the process, hence the clock), the
//! stream (8..12) and its sequence number (12..16): the receiver measures
//! the one-way latency and checks the order. A credit is 8 bytes: the stream
//! and the number of frames it gives back. Credits travel as DATA (NATS
//! PUB/MSG, MQTT PUBLISH) like everything else, but are counted apart from
//! delivered messages. The frame id of a DATA names its stream, so an ERROR
//! refusing it (`slow_consumer`, `dst_offline`) frees that stream's slot; a
//! credit's id names its stream and count, so one refused with
//! `slow_consumer` is sent again.
//!
//! One task per connection, built from pingpong's pieces: its setup
//! (HELLO/WELCOME; CONNECT/SUB/PING/PONG on NATS; CONNECT/SUBSCRIBE on
//! MQTT), its [`Side`] buffers, progress lines and report helpers. What
//! depends on the wire is in [`next_event`], [`push_head`] and
//! [`push_tail`]; another wire is one arm in each (plus its setup in
//! pingpong).
//!
//! When the sending time ends, senders stop; the run waits until every frame
//! sent was delivered or refused and every credit received or refused, or
//! `--drain-s` passed, then stops every task. Per stream, lost = sent -
//! delivered - refused.
//!
//! Here: configuration, the run and its report; `fan/flow.rs`: the
//! flow-control pieces; `fan/endpoint.rs`: the endpoint task and the
//! wire-dependent parts.
//!
//! [`CreditCounter`]: flow::CreditCounter
//! [`SendWindow`]: flow::SendWindow
//! [`Side`]: crate::pingpong::Side
//! [`next_event`]: endpoint::next_event
//! [`push_head`]: endpoint::push_head
//! [`push_tail`]: endpoint::push_tail

mod endpoint;
mod flow;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use serde_json::json;

use crate::cli::{FanArgs, Shared};
use crate::pingpong::setup::{self, TcpConn};
use crate::pingpong::{self, RunCtx, Wire, CLIENT_BOUND_PCT, JOIN_GRACE};
use crate::proto::Addr;
use crate::report::{self, ErrorCounts, JsonLine, Latency, Reasons, Table};
use endpoint::{Endpoint, Incoming, Outgoing, Peer, Role};
use flow::{credit_every, End, StreamMap};

/// Payload bytes the scenario itself uses: send time, stream, sequence.
pub const PAYLOAD_MIN: u32 = 16;
/// How often the drain looks whether everything sent has been settled.
const DRAIN_STEP: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct FanConfig {
    pub shared: Shared,
    pub wire: Wire,
    pub senders: u32,
    pub receivers: u32,
    pub window: u32,
    pub payload: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub drain: Duration,
}

impl FanConfig {
    pub fn from_args(args: &FanArgs) -> anyhow::Result<FanConfig> {
        let (wire, target) = args.wire_and_target();
        if wire != Wire::Gateway && !args.common.token.is_empty() {
            anyhow::bail!(
                "--token is for the gateway only; {} must run without auth",
                wire.default_target_name()
            );
        }
        Ok(FanConfig {
            shared: args
                .common
                .shared_named(target, wire.default_target_name())?,
            wire,
            senders: args.senders,
            receivers: args.receivers,
            window: args.window,
            payload: args.payload,
            duration: Duration::from_secs(args.timing.duration_s),
            warmup: Duration::from_secs(args.timing.warmup_s),
            drain: Duration::from_secs(args.timing.drain_s),
        })
    }
}

/// Run-wide state the endpoint tasks share. Single-threaded: plain cells.
struct FanCtx {
    /// Timing, payload filler, latency histogram (one-way here), delivered
    /// DATA for the progress lines.
    run: RunCtx,
    map: StreamMap,
    credit_every: u32,
    /// DATA frames queued by senders, and delivered or refused.
    data: Flow,
    /// Credits queued by receivers, and received or refused.
    credits: Flow,
    /// Set once the drain is over: every task ends.
    stop: Cell<bool>,
}

/// Messages of one kind queued so far, and settled (arrived, or refused with
/// an ERROR). The drain lasts until every flow is settled.
#[derive(Debug, Default)]
struct Flow {
    queued: Cell<u64>,
    settled: Cell<u64>,
}

impl Flow {
    fn queue(&self, n: u64) {
        self.queued.set(self.queued.get() + n);
    }

    fn settle(&self) {
        self.settled.set(self.settled.get() + 1);
    }

    fn open(&self) -> bool {
        self.settled.get() < self.queued.get()
    }
}

/// One stream's counts; senders fill `sent` and `refused`, receivers
/// `delivered`.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u64,
    refused: u64,
    delivered: u64,
}

/// Counts summed over endpoints.
#[derive(Debug, Default)]
struct Counts {
    delivered_window: u64,
    credits_sent: u64,
    credits_received: u64,
    credits_refused: u64,
    /// Frames missing in a stream's sequence when a later one arrived.
    skipped: u64,
    errors: ErrorCounts,
    client_errors: Reasons,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.delivered_window += o.delivered_window;
        self.credits_sent += o.credits_sent;
        self.credits_received += o.credits_received;
        self.credits_refused += o.credits_refused;
        self.skipped += o.skipped;
        self.errors.merge(&o.errors);
        report::merge(&mut self.client_errors, &o.client_errors);
    }
}

pub struct FanReport {
    pub table: Table,
    pub json: JsonLine,
}

/// Connects and registers every sender (indexes 0..S) and receiver (S..S+R)
/// with at most `connect_concurrency` setups in flight. A failed setup is a
/// None in its place, counted by reason.
async fn set_up(cfg: &FanConfig) -> (Vec<Option<TcpConn>>, Reasons, ErrorCounts) {
    let total = u64::from(cfg.senders) + u64::from(cfg.receivers);
    let sem = Rc::new(Semaphore::new(cfg.shared.connect_concurrency as u64));
    let shared = Rc::new(cfg.shared.clone());
    let tq = glommio::executor().current_task_queue();
    let mut tasks = Vec::with_capacity(total as usize);
    for index in 0..total {
        let permit = sem
            .acquire_static_permit(1)
            .await
            .expect("semaphore is never closed");
        let (shared, wire) = (shared.clone(), cfg.wire);
        let task = glommio::spawn_local_into(
            async move {
                let conn = setup::set_up_one(&shared, wire, index).await;
                drop(permit);
                conn
            },
            tq,
        )
        .expect("current task queue exists");
        tasks.push(task);
    }
    let mut conns = Vec::with_capacity(tasks.len());
    let (mut failures, mut errors) = (Reasons::new(), ErrorCounts::default());
    // Each setup is bounded by the setup timeout, so these awaits end.
    for task in tasks {
        conns.push(
            task.await
                .map_err(|e| e.record(&mut failures, &mut errors))
                .ok(),
        );
    }
    (conns, failures, errors)
}

/// Everything a run measured, for the report.
struct Outcome {
    senders_up: usize,
    receivers_up: usize,
    streams_up: u32,
    setup_s: f64,
    drain_s: f64,
    setup_failures: Reasons,
    errors: ErrorCounts,
    counts: Counts,
    total: Tally,
    lost: u64,
    latency: Latency,
    cpu_pct: f64,
}

pub async fn run(cfg: FanConfig) -> anyhow::Result<FanReport> {
    let map = StreamMap {
        senders: cfg.senders,
        receivers: cfg.receivers,
    };
    let name = cfg.shared.target_name.clone();
    let setup_start = Instant::now();
    let (mut conns, setup_failures, setup_errors) = set_up(&cfg).await;
    let setup_s = setup_start.elapsed().as_secs_f64();
    let receivers = conns.split_off(cfg.senders as usize);
    let senders = conns;
    let addr_of = |c: &Option<TcpConn>| c.as_ref().map(|c| c.addr);
    let sender_addrs: Vec<Option<Addr>> = senders.iter().map(addr_of).collect();
    let receiver_addrs: Vec<Option<Addr>> = receivers.iter().map(addr_of).collect();
    let ends = |k: u32| {
        let s = sender_addrs[map.sender(k) as usize]?;
        let r = receiver_addrs[map.receiver(k) as usize]?;
        Some((s, r))
    };
    let streams_up = (0..map.count()).filter(|&k| ends(k).is_some()).count() as u32;
    let senders_up = senders.iter().flatten().count();
    let receivers_up = receivers.iter().flatten().count();
    eprintln!(
        "[fan] {senders_up} of {} senders and {receivers_up} of {} receivers registered \
         with {name} in {setup_s:.2}s; {streams_up} of {} streams have both ends; failures: {:?}",
        cfg.senders,
        cfg.receivers,
        map.count(),
        setup_failures
    );
    if streams_up == 0 {
        anyhow::bail!("no stream has both ends registered with {name}: {setup_failures:?}");
    }

    let t0 = Instant::now();
    let send_end = t0 + cfg.warmup + cfg.duration;
    let ctx = Rc::new(FanCtx {
        run: RunCtx {
            wire: cfg.wire,
            t0,
            warm_end: t0 + cfg.warmup,
            send_end,
            drain_end: send_end + cfg.drain,
            window: u64::from(cfg.window),
            payload: cfg.payload as usize,
            fill: vec![0xA5; cfg.payload as usize],
            rtt: std::cell::RefCell::new(report::latency_histogram()),
            delivered_live: Cell::new(0),
        },
        map,
        credit_every: credit_every(cfg.window),
        data: Flow::default(),
        credits: Flow::default(),
        stop: Cell::new(false),
    });
    let tq = glommio::executor().current_task_queue();
    let mut tasks = Vec::new();
    for (end, conns) in [(End::Sender, senders), (End::Receiver, receivers)] {
        for (i, conn) in conns.into_iter().enumerate() {
            let Some(conn) = conn else { continue };
            let i = i as u32;
            let peers = map.streams_of(end, i).map(|k| {
                let (s, r) = ends(k)?;
                Some((k, Peer::new(if end == End::Sender { r } else { s })))
            });
            let role = match end {
                End::Sender => Role::Sender {
                    streams: peers
                        .map(|p| p.map(|(k, to)| Outgoing::new(k, to)))
                        .collect(),
                    refill: true,
                    cursor: 0,
                },
                End::Receiver => Role::Receiver {
                    streams: peers
                        .map(|p| p.map(|(k, from)| Incoming::new(k, from)))
                        .collect(),
                    repay_at: None,
                },
            };
            let n = map.streams_of(end, i).count();
            let endpoint = Endpoint::new(ctx.clone(), conn, role, i, n);
            let task = glommio::spawn_local_into(endpoint, tq).expect("current task queue exists");
            tasks.push(task);
        }
    }

    let cpu = pingpong::progress(&ctx.run, "fan").await;
    let drain_start = Instant::now();
    // Bounded by the drain deadline.
    while (ctx.data.open() || ctx.credits.open()) && Instant::now() < ctx.run.drain_end {
        glommio::timer::sleep(DRAIN_STEP).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    ctx.stop.set(true);

    // Every task sees `stop` within one tick; the limit only guards
    // against a bug leaving one running.
    let started = tasks.len();
    let mut results = Vec::with_capacity(started);
    futures_lite::future::or(
        async {
            for task in tasks {
                results.push(task.await);
            }
        },
        glommio::timer::sleep(JOIN_GRACE),
    )
    .await;

    let mut counts = Counts::default();
    let mut tallies = vec![Tally::default(); map.count() as usize];
    for r in &results {
        counts.add(&r.counts);
        for &(k, t) in &r.tallies {
            let sum = &mut tallies[k as usize];
            sum.sent += t.sent;
            sum.refused += t.refused;
            sum.delivered += t.delivered;
        }
    }
    if results.len() < started {
        let n = (started - results.len()) as u64;
        report::bump_by(&mut counts.client_errors, "task_did_not_finish", n);
    }
    let (mut total, mut lost, mut excess) = (Tally::default(), 0, 0);
    for t in &tallies {
        total.sent += t.sent;
        total.refused += t.refused;
        total.delivered += t.delivered;
        lost += t.sent.saturating_sub(t.delivered + t.refused);
        excess += (t.delivered + t.refused).saturating_sub(t.sent);
    }
    if excess > 0 {
        report::bump_by(
            &mut counts.client_errors,
            "delivered_more_than_sent",
            excess,
        );
    }
    let mut errors = setup_errors;
    errors.merge(&counts.errors);
    let latency = Latency::from_histogram(&ctx.run.rtt.borrow());
    let outcome = Outcome {
        senders_up,
        receivers_up,
        streams_up,
        setup_s,
        drain_s,
        setup_failures,
        errors,
        counts,
        total,
        lost,
        latency,
        cpu_pct: cpu.pct,
    };
    Ok(build_report(&cfg, &outcome))
}

/// The client's CPU use, marked when it is high enough that the client,
/// not `target`, may have set the pace.
pub(crate) fn cpu_text(pct: f64, target: &str) -> String {
    let note = if pct >= CLIENT_BOUND_PCT {
        format!(" (client-bound: {target} may be faster than shown)")
    } else {
        String::new()
    };
    format!("{pct}%{note}")
}

fn build_report(cfg: &FanConfig, o: &Outcome) -> FanReport {
    let name = &cfg.shared.target_name;
    let secs = cfg.duration.as_secs_f64();
    let msgs_per_s = (o.counts.delivered_window as f64 / secs).round();
    let map = StreamMap {
        senders: cfg.senders,
        receivers: cfg.receivers,
    };
    let shape = match cfg.senders.cmp(&cfg.receivers) {
        std::cmp::Ordering::Greater => "fan-in",
        std::cmp::Ordering::Less => "fan-out",
        std::cmp::Ordering::Equal => "one to one",
    };
    let mut table = Table::default();
    table
        .row(
            "target",
            format!(
                "{name} {} ({})",
                cfg.shared.target,
                cfg.wire.transport_name()
            ),
        )
        .row(
            "senders / receivers up",
            format!(
                "{} of {} / {} of {} ({shape})",
                o.senders_up, cfg.senders, o.receivers_up, cfg.receivers
            ),
        )
        .row(
            "streams with both ends",
            format!("{} of {}", o.streams_up, map.count()),
        )
        .row(
            "window, payload",
            format!(
                "{} frames per stream, credit every {}; {} B",
                cfg.window,
                credit_every(cfg.window),
                cfg.payload
            ),
        )
        .row("setup", format!("{:.2} s", o.setup_s))
        .row(
            "measured",
            format!("{secs} s after {} s warmup", cfg.warmup.as_secs()),
        )
        .row(
            "delivered msgs/s",
            format!("{msgs_per_s} (one way, DATA only)"),
        )
        .row("delivered in window", o.counts.delivered_window)
        .latency("one-way latency", &o.latency)
        .row(
            "sent / delivered / refused",
            format!(
                "{} / {} / {} (refused: ERROR from {name})",
                o.total.sent, o.total.delivered, o.total.refused
            ),
        )
        .row(
            "lost (no delivery, no ERROR)",
            format!("{} after {:.2} s of drain", o.lost, o.drain_s),
        )
        .row(
            "credits sent / received / refused",
            format!(
                "{} / {} / {}",
                o.counts.credits_sent, o.counts.credits_received, o.counts.credits_refused
            ),
        )
        .row("sequence gaps (frames)", o.counts.skipped)
        .row("client CPU (one core)", cpu_text(o.cpu_pct, name))
        .errors(&format!("ERROR frames from {name}"), &o.errors)
        .reasons("client-detected errors", &o.counts.client_errors)
        .reasons("setup failures", &o.setup_failures);
    let mut m = JsonLine::default();
    m.insert("scenario", json!("fan"));
    m.insert("target", json!(name));
    m.insert("transport", json!(cfg.wire.transport_name()));
    m.insert("senders", json!(cfg.senders));
    m.insert("receivers", json!(cfg.receivers));
    m.insert("senders_up", json!(o.senders_up));
    m.insert("receivers_up", json!(o.receivers_up));
    m.insert("streams", json!(map.count()));
    m.insert("streams_up", json!(o.streams_up));
    m.insert("window", json!(cfg.window));
    m.insert("credit_every", json!(credit_every(cfg.window)));
    m.insert("payload", json!(cfg.payload));
    m.insert("duration_s", json!(secs));
    m.insert("warmup_s", json!(cfg.warmup.as_secs()));
    m.insert("msgs_per_s", json!(msgs_per_s));
    o.latency.add_to("", &mut m);
    m.insert("delivered", json!(o.counts.delivered_window));
    m.insert("delivered_total", json!(o.total.delivered));
    m.insert("sent", json!(o.total.sent));
    m.insert("refused", json!(o.total.refused));
    m.insert("lost", json!(o.lost));
    m.insert("credits_sent", json!(o.counts.credits_sent));
    m.insert("credits_received", json!(o.counts.credits_received));
    m.insert("credits_refused", json!(o.counts.credits_refused));
    m.insert("seq_gaps", json!(o.counts.skipped));
    m.insert("errors", o.errors.to_json());
    m.insert("errors_total", json!(o.errors.total()));
    m.insert(
        "client_errors",
        report::reasons_json(&o.counts.client_errors),
    );
    m.insert("setup_failures", report::reasons_json(&o.setup_failures));
    m.insert("client_cpu_pct", json!(o.cpu_pct));
    m.insert("setup_s", json!((o.setup_s * 1000.0).round() / 1000.0));
    m.insert("drain_s", json!((o.drain_s * 1000.0).round() / 1000.0));
    FanReport { table, json: m }
}
