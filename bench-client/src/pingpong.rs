//! `pingpong`: P pairs of connections; a keeps W DATA frames in flight to b,
//! b echoes each back, a measures the round trip.
//!
//! One task drives both connections of a pair: it reads whatever both sockets
//! have into per-connection buffers, answers every complete frame into
//! per-connection output buffers, and sends each output buffer with one
//! non-blocking write per wakeup. Buffers keep their capacity, so the steady
//! state allocates nothing. The send time travels in the payload (bytes 0..8,
//! nanoseconds since the run started) and the id is repeated in bytes 8..16,
//! so echoes are checked without any per-message state in the client.
//!
//! With `--nats` the same engine drives a NATS server instead ([`Wire::Nats`]):
//! each endpoint subscribes to its own subject (its address in hex), DATA
//! becomes PUB to the peer's subject and arrives as MSG; framing is in
//! `nats.rs`. Payloads, window, timing and counting are the same, so the
//! numbers compare directly. NATS `-ERR` names no message, so a message it
//! refused shows up as lost at the end of the drain, and the error is
//! counted by its text.
//!
//! With `--mqtt` it drives an MQTT 3.1.1 broker such as Mosquitto
//! ([`Wire::Mqtt`]): each endpoint connects with a clean session (client id
//! and topic = its address in hex), subscribes to its own topic at QoS 0 and
//! is ready once the SUBACK is in; DATA becomes a QoS 0 PUBLISH to the peer's
//! topic and arrives as PUBLISH on the own one, with the same payload bytes.
//! Framing is in `mqtt.rs`. An MQTT broker sends no error packets: it closes
//! the connection, which shows up among the client-detected errors, and the
//! messages in flight as lost.
//!
//! With `--ws` it drives the gateway over WebSocket ([`Wire::Ws`]): each
//! frame is one masked binary message; with `--ws --json` ([`Wire::WsJson`])
//! one JSON text message, the payload in base64. The per-message code is in
//! `pingpong/ws_wire.rs`.
//!
//! Connection setup per wire is in `pingpong/setup.rs`; `fan` uses it too.
//!
//! With `--peer-tcp` (gateway TCP wire only) every pair's b side connects
//! and registers at that address instead of the target, such as a second
//! node of a cluster: a's DATA and b's echoes then cross nodes, and the
//! report names the peer.

pub(crate) mod setup;
mod ws_wire;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::Shared;
use crate::conn::io_reason;
use crate::mqtt;
use crate::nats::{self, Subject};
use crate::proto::{self, kind, Addr, Header, HEADER_LEN};
use crate::report::{self, ErrorCounts, JsonLine, Latency, Reasons, Table};
use crate::sys;
use crate::ws;
use setup::{set_up_pairs, TcpConn};

/// Smallest receive buffer per connection; larger payloads get room for two
/// frames so one is always readable whole.
pub(crate) const RX_MIN_BYTES: usize = 64 * 1024;
/// Read/process/write rounds per wakeup before yielding to other pairs.
pub(crate) const ROUNDS_PER_POLL: u32 = 16;
/// Wakes an idle pair so it notices phase changes even with no traffic.
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// Client CPU use (percent of its core) from which a result is flagged as
/// limited by the client rather than by the gateway.
pub(crate) const CLIENT_BOUND_PCT: f64 = 90.0;
/// Extra time the main task waits for drivers beyond the drain deadline.
pub(crate) const JOIN_GRACE: Duration = Duration::from_secs(5);

/// What the pairs talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The gateway, protocol v1 over TCP.
    Gateway,
    /// A NATS server (for comparison), client protocol over TCP.
    Nats,
    /// An MQTT 3.1.1 broker such as Mosquitto (for comparison), over TCP.
    Mqtt,
    /// The gateway over WebSocket, one binary message per frame.
    Ws,
    /// The gateway over WebSocket, one JSON text message per frame.
    WsJson,
}

impl Wire {
    /// `--target-name` when none is given.
    pub fn default_target_name(self) -> &'static str {
        match self {
            Wire::Gateway | Wire::Ws | Wire::WsJson => "gateway",
            Wire::Nats => "nats",
            Wire::Mqtt => "mosquitto",
        }
    }

    /// The JSON line's `transport`.
    pub(crate) fn transport_name(self) -> &'static str {
        match self {
            Wire::Gateway => "tcp",
            Wire::Nats => "nats",
            Wire::Mqtt => "mqtt",
            Wire::Ws => "ws",
            Wire::WsJson => "ws-json",
        }
    }

    /// Largest number of bytes a message adds around its payload.
    pub(crate) fn overhead(self) -> usize {
        match self {
            Wire::Gateway => HEADER_LEN,
            Wire::Nats => nats::MSG_OVERHEAD_MAX.max(nats::PUB_OVERHEAD_MAX),
            Wire::Mqtt => mqtt::PUBLISH_OVERHEAD_MAX,
            Wire::Ws => ws::CLIENT_HEADER_MAX_BYTES + HEADER_LEN,
            Wire::WsJson => ws::CLIENT_HEADER_MAX_BYTES + ws_wire::JSON_OVERHEAD_MAX,
        }
    }

    /// Largest message carrying `payload` bytes (JSON: in base64).
    fn message_max(self, payload: usize) -> usize {
        match self {
            Wire::WsJson => self.overhead() + 4 * payload.div_ceil(3),
            _ => self.overhead() + payload,
        }
    }

    pub(crate) fn closed_reason(self) -> &'static str {
        match self {
            Wire::Gateway | Wire::Ws | Wire::WsJson => "closed_by_gateway",
            Wire::Nats => "closed_by_nats_server",
            Wire::Mqtt => "closed_by_mqtt_broker",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PingpongConfig {
    pub shared: Shared,
    pub wire: Wire,
    /// `--peer-tcp` ([`Wire::Gateway`] only): where every pair's b side
    /// connects and registers instead of `shared.target`, such as another
    /// node of a cluster, so DATA crosses nodes both ways.
    pub peer: Option<SocketAddrV4>,
    pub pairs: u32,
    pub window: u32,
    pub payload: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub drain: Duration,
}

/// Run-wide state the pair drivers share. Single-threaded: plain cells.
pub(crate) struct RunCtx {
    pub(crate) wire: Wire,
    pub(crate) t0: Instant,
    pub(crate) warm_end: Instant,
    pub(crate) send_end: Instant,
    pub(crate) drain_end: Instant,
    pub(crate) window: u64,
    pub(crate) payload: usize,
    /// Payload bytes 16.. of every DATA frame.
    pub(crate) fill: Vec<u8>,
    pub(crate) rtt: RefCell<Histogram<u64>>,
    /// DATA frames delivered so far (both directions), for progress lines.
    pub(crate) delivered_live: Cell<u64>,
}

impl RunCtx {
    pub(crate) fn ns_since_t0(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.t0).as_nanos() as u64
    }

    /// Appends a DATA payload: send time, id (from 16 bytes on), fill.
    fn push_payload(&self, out: &mut Vec<u8>, now_ns: [u8; 8], id: u64) {
        out.extend_from_slice(&now_ns);
        if self.payload >= 16 {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&self.fill[16..self.payload]);
        } else {
            out.extend_from_slice(&self.fill[8..self.payload]);
        }
    }
}

/// What one pair counted.
#[derive(Debug, Default)]
struct PairResult {
    /// DATA frames a originated.
    sent: u64,
    /// Echoes b sent.
    echoes_sent: u64,
    /// DATA frames received by a or b inside the measurement window.
    delivered_window: u64,
    /// DATA frames received by a or b over the whole run.
    delivered_total: u64,
    /// a's messages whose echo came back.
    echoed: u64,
    /// a's messages with neither echo nor ERROR when the pair ended.
    lost: u64,
    errors: ErrorCounts,
    /// Problems the client itself detected (bad echoes, closed sockets).
    client_errors: Reasons,
}

pub struct PingpongReport {
    pub table: Table,
    pub json: JsonLine,
}

pub async fn run(cfg: PingpongConfig) -> anyhow::Result<PingpongReport> {
    let setup_start = Instant::now();
    let (pairs, setup_failures, setup_errors) = set_up_pairs(&cfg).await;
    let setup_s = setup_start.elapsed().as_secs_f64();
    eprintln!(
        "[pingpong] {} of {} pairs registered in {:.2}s; failures: {:?}",
        pairs.len(),
        cfg.pairs,
        setup_s,
        setup_failures
    );
    if pairs.is_empty() {
        anyhow::bail!("no pair could be set up: {setup_failures:?}");
    }
    let pairs_up = pairs.len();

    let t0 = Instant::now();
    let warm_end = t0 + cfg.warmup;
    let send_end = warm_end + cfg.duration;
    let ctx = Rc::new(RunCtx {
        wire: cfg.wire,
        t0,
        warm_end,
        send_end,
        drain_end: send_end + cfg.drain,
        window: u64::from(cfg.window),
        payload: cfg.payload as usize,
        fill: vec![0xA5; cfg.payload as usize],
        rtt: RefCell::new(report::latency_histogram()),
        delivered_live: Cell::new(0),
    });
    let tq = glommio::executor().current_task_queue();
    let mut drivers = Vec::with_capacity(pairs.len());
    for (a, b) in pairs {
        let driver = PairDriver::new(a, b, ctx.clone());
        let task = glommio::spawn_local_into(driver, tq).expect("current task queue exists");
        drivers.push(task);
    }
    let cpu = progress(&ctx, "pingpong").await;

    let mut total = PairResult::default();
    let join_deadline = ctx.drain_end + JOIN_GRACE;
    for task in drivers {
        // Drivers end by the drain deadline on their own; the race only
        // guards against a bug leaving one running forever.
        let left = join_deadline.saturating_duration_since(Instant::now());
        let res = futures_lite::future::or(async { Some(task.await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match res {
            Some(r) => total.add(&r),
            None => report::bump(&mut total.client_errors, "driver_did_not_finish"),
        }
    }
    let mut errors = setup_errors;
    errors.merge(&total.errors);
    let latency = Latency::from_histogram(&ctx.rtt.borrow());
    let outcome = Outcome {
        pairs_up,
        setup_s,
        setup_failures,
        errors,
        total,
        latency,
        cpu,
    };
    Ok(build_report(&cfg, &outcome))
}

/// Everything a run measured, for the report.
struct Outcome {
    pairs_up: usize,
    setup_s: f64,
    setup_failures: Reasons,
    errors: ErrorCounts,
    total: PairResult,
    latency: Latency,
    cpu: CpuWindow,
}

/// Client CPU use over the measurement window.
pub(crate) struct CpuWindow {
    /// Percent of one core (the client runs on one).
    pub(crate) pct: f64,
}

/// Prints delivered messages per second once a second until sending stops,
/// and measures the client's own CPU use over the measurement window: a
/// client near 100% of its core means the result is client-bound.
pub(crate) async fn progress(ctx: &RunCtx, label: &str) -> CpuWindow {
    let mut last = 0;
    let mut last_at = Instant::now();
    let mut second = 0u64;
    let mut cpu_start = None;
    // Two phases (warmup, measure), each bounded by its end instant.
    for (phase, end) in [("warmup", ctx.warm_end), ("measure", ctx.send_end)] {
        while Instant::now() < end {
            let step = Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()));
            glommio::timer::sleep(step).await;
            let now = Instant::now();
            if now.duration_since(last_at) < Duration::from_millis(900) && now < end {
                continue;
            }
            second += 1;
            let delivered = ctx.delivered_live.get();
            let rate =
                (delivered - last) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-9);
            eprintln!("[{label} {second:>4}s {phase}] delivered {delivered} ({rate:.0} msgs/s)");
            last = delivered;
            last_at = now;
        }
        if cpu_start.is_none() {
            cpu_start = Some((Instant::now(), sys::cpu_time()));
        }
    }
    let (t0, c0) = cpu_start.expect("set after the warmup phase");
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let cpu = (sys::cpu_time() - c0).as_secs_f64();
    CpuWindow {
        pct: (cpu / wall * 1000.0).round() / 10.0,
    }
}

/// One connection's buffers inside a pair driver.
pub(crate) struct Side {
    stream: TcpStream,
    pub(crate) addr: Addr,
    /// `addr` as a NATS subject or MQTT topic (the same hex text; used with
    /// [`Wire::Nats`] and [`Wire::Mqtt`]).
    pub(crate) subject: Subject,
    closed_reason: &'static str,
    pub(crate) rx: Vec<u8>,
    pub(crate) rx_head: usize,
    pub(crate) rx_tail: usize,
    pub(crate) tx: Vec<u8>,
    tx_off: usize,
    /// WebSocket framing state ([`Wire::Ws`] and [`Wire::WsJson`]).
    ws: Option<ws_wire::WsLink>,
}

impl Side {
    pub(crate) fn new(conn: TcpConn, wire: Wire, rx_bytes: usize, tx_bytes: usize) -> Side {
        let mut rx = vec![0; rx_bytes.max(conn.leftover.len())];
        rx[..conn.leftover.len()].copy_from_slice(&conn.leftover);
        Side {
            stream: conn.stream,
            addr: conn.addr,
            subject: nats::subject(&conn.addr),
            closed_reason: wire.closed_reason(),
            rx,
            rx_head: 0,
            rx_tail: conn.leftover.len(),
            tx: Vec::with_capacity(tx_bytes),
            tx_off: 0,
            ws: conn.ws,
        }
    }

    /// One non-blocking read. `Ok(true)`: bytes arrived. `Ok(false)`: none
    /// ready, and the task will be woken when there are.
    pub(crate) fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, &'static str> {
        if self.rx_tail == self.rx.len() {
            self.compact();
            if self.rx_tail == self.rx.len() {
                return Err("frame_larger_than_rx_buffer");
            }
        }
        match Pin::new(&mut self.stream).poll_read(cx, &mut self.rx[self.rx_tail..]) {
            Poll::Ready(Ok(0)) => Err(self.closed_reason),
            Poll::Ready(Ok(n)) => {
                self.rx_tail += n;
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(io_reason(&e)),
            Poll::Pending => Ok(false),
        }
    }

    /// One non-blocking write of everything queued. `Ok(true)`: bytes left.
    pub(crate) fn flush(&mut self, cx: &mut Context<'_>) -> Result<bool, &'static str> {
        if self.tx_off == self.tx.len() {
            return Ok(false);
        }
        match Pin::new(&mut self.stream).poll_write(cx, &self.tx[self.tx_off..]) {
            Poll::Ready(Ok(n)) => {
                self.tx_off += n;
                if self.tx_off == self.tx.len() {
                    self.tx.clear();
                    self.tx_off = 0;
                }
                Ok(n > 0)
            }
            Poll::Ready(Err(e)) => Err(io_reason(&e)),
            Poll::Pending => Ok(false),
        }
    }

    pub(crate) fn compact(&mut self) {
        if self.rx_head == self.rx_tail {
            self.rx_head = 0;
            self.rx_tail = 0;
        } else if self.rx_head > 0 {
            self.rx.copy_within(self.rx_head..self.rx_tail, 0);
            self.rx_tail -= self.rx_head;
            self.rx_head = 0;
        }
    }

    /// The next complete frame in the receive buffer, if any.
    pub(crate) fn next_frame(&self) -> Result<Option<(Header, usize)>, &'static str> {
        let buf = &self.rx[self.rx_head..self.rx_tail];
        match Header::decode(buf) {
            Ok(Some(h)) if buf.len() >= h.frame_len() => Ok(Some((h, self.rx_head))),
            Ok(Some(h)) if h.frame_len() > self.rx.len() => Err("frame_larger_than_rx_buffer"),
            Ok(_) => Ok(None),
            Err(e) => Err(e.name()),
        }
    }
}

/// The counters and phase logic of one pair, apart from its sockets so that
/// both sides' buffers can be borrowed at the same time.
struct PairState {
    ctx: Rc<RunCtx>,
    next_id: u64,
    in_flight: u64,
    result: PairResult,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    A,
    B,
}

impl PairState {
    /// Handles every complete frame that arrived on one side. Answers go into
    /// that side's own output buffer (b's echoes); a's new messages are added
    /// by `refill` afterwards.
    fn process(
        &mut self,
        side: &mut Side,
        peer: Addr,
        role: Role,
        now: Instant,
    ) -> Result<(), &'static str> {
        let now_ns = self.ctx.ns_since_t0(now);
        let in_window = now >= self.ctx.warm_end && now < self.ctx.send_end;
        let delivered = match self.ctx.wire {
            Wire::Gateway => self.process_gateway(side, peer, role, now_ns)?,
            Wire::Nats => self.process_nats(side, &nats::subject(&peer), role, now_ns)?,
            Wire::Mqtt => self.process_mqtt(side, &mqtt::topic(&peer), role, now_ns)?,
            Wire::Ws | Wire::WsJson => ws_wire::process(self, side, peer, role, now_ns)?,
        };
        side.compact();
        self.result.delivered_total += delivered;
        if in_window {
            self.result.delivered_window += delivered;
        }
        self.ctx
            .delivered_live
            .set(self.ctx.delivered_live.get() + delivered);
        Ok(())
    }

    /// Gateway frames; returns the DATA frames delivered.
    fn process_gateway(
        &mut self,
        side: &mut Side,
        peer: Addr,
        role: Role,
        now_ns: u64,
    ) -> Result<u64, &'static str> {
        let mut delivered = 0;
        // Bounded by the bytes in the buffer: every pass consumes one frame.
        while let Some((h, at)) = side.next_frame()? {
            let payload = at + HEADER_LEN..at + h.frame_len();
            let data =
                self.on_frame(&h, &side.rx[payload.clone()], side.addr, peer, role, now_ns)?;
            if data && role == Role::B {
                let echo = Header::new(kind::DATA, side.addr, peer, h.id, h.len as usize);
                side.tx.extend_from_slice(&echo.encode());
                side.tx.extend_from_slice(&side.rx[payload.clone()]);
            }
            delivered += u64::from(data);
            side.rx_head = payload.end;
        }
        Ok(delivered)
    }

    /// One gateway frame (on any of the gateway's wires); whether it was a
    /// DATA frame. For b the caller then sends the echo, counted here.
    fn on_frame(
        &mut self,
        h: &Header,
        payload: &[u8],
        own: Addr,
        peer: Addr,
        role: Role,
        now_ns: u64,
    ) -> Result<bool, &'static str> {
        match h.kind {
            kind::DATA => {
                let ok = h.src == peer && h.dst == own && self.payload_ok(h, payload);
                self.check(ok, role);
                match role {
                    Role::A => self.on_echo(payload, now_ns),
                    Role::B => self.result.echoes_sent += 1,
                }
                return Ok(true);
            }
            kind::ERROR => {
                self.result.errors.add_payload(payload);
                let code = proto::decode_error(payload).map_or(0, |(c, _)| c);
                if proto::error_closes(code) {
                    return Err("connection_closed_by_gateway_error");
                }
                // An ERROR with our id means that DATA (or its echo) was
                // refused; the message is over and its slot is free.
                if h.id != 0 {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
            }
            kind::HEARTBEAT => {}
            _ => report::bump(&mut self.result.client_errors, "unexpected_kind"),
        }
        Ok(false)
    }

    /// NATS operations; returns the MSGs delivered. b's echoes are PUBs to
    /// a's subject with the payload as received.
    fn process_nats(
        &mut self,
        side: &mut Side,
        peer: &Subject,
        role: Role,
        now_ns: u64,
    ) -> Result<u64, &'static str> {
        let mut delivered = 0;
        // Bounded by the bytes in the buffer: every pass consumes one op.
        while let Some((op, used)) =
            nats::parse(&side.rx[side.rx_head..side.rx_tail]).map_err(|e| e.name())?
        {
            let base = side.rx_head;
            match op {
                nats::Op::Msg {
                    subject,
                    sid,
                    payload,
                } => {
                    delivered += 1;
                    let payload = base + payload.start..base + payload.end;
                    let ok = sid == nats::SID
                        && side.rx[base + subject.start..base + subject.end] == side.subject
                        && payload.len() == self.ctx.payload;
                    self.check(ok, role);
                    match role {
                        Role::A => self.on_echo(&side.rx[payload], now_ns),
                        Role::B => {
                            nats::encode_pub(&mut side.tx, peer, &side.rx[payload]);
                            self.result.echoes_sent += 1;
                        }
                    }
                }
                nats::Op::Ping => side.tx.extend_from_slice(nats::PONG),
                nats::Op::Err(r) => self
                    .result
                    .errors
                    .add_text(&side.rx[base + r.start..base + r.end]),
                nats::Op::Info | nats::Op::Pong | nats::Op::Ok => {}
            }
            side.rx_head = base + used;
        }
        Ok(delivered)
    }

    /// MQTT packets; returns the PUBLISHes delivered. b's echoes are QoS 0
    /// PUBLISHes to a's topic with the payload as received.
    fn process_mqtt(
        &mut self,
        side: &mut Side,
        peer: &mqtt::Topic,
        role: Role,
        now_ns: u64,
    ) -> Result<u64, &'static str> {
        // A PUBLISH of the run's payload to one of our topics, with room for
        // a packet id; anything larger means the stream is out of step.
        let max_remaining = mqtt::publish_remaining(self.ctx.payload) + 2;
        let mut delivered = 0;
        // Bounded by the bytes in the buffer: every pass consumes one packet.
        while let Some((packet, used)) =
            mqtt::parse(&side.rx[side.rx_head..side.rx_tail], max_remaining)
                .map_err(|e| e.name())?
        {
            let base = side.rx_head;
            match packet {
                mqtt::Packet::Publish {
                    topic,
                    payload,
                    qos,
                    ..
                } => {
                    delivered += 1;
                    let payload = base + payload.start..base + payload.end;
                    let ok = qos == 0
                        && side.rx[base + topic.start..base + topic.end] == side.subject
                        && payload.len() == self.ctx.payload;
                    self.check(ok, role);
                    match role {
                        Role::A => self.on_echo(&side.rx[payload], now_ns),
                        Role::B => {
                            mqtt::encode_publish(&mut side.tx, peer, &side.rx[payload]);
                            self.result.echoes_sent += 1;
                        }
                    }
                }
                mqtt::Packet::PingResp => {}
                mqtt::Packet::ConnAck { .. } | mqtt::Packet::SubAck { .. } => {
                    report::bump(&mut self.result.client_errors, "mqtt_unasked_ack")
                }
            }
            side.rx_head = base + used;
        }
        Ok(delivered)
    }

    /// Counts a message that is not what was sent (a's echo, or what b got).
    fn check(&mut self, ok: bool, role: Role) {
        if !ok {
            let what = if role == Role::A {
                "bad_echo"
            } else {
                "bad_data"
            };
            report::bump(&mut self.result.client_errors, what);
        }
    }

    fn payload_ok(&self, h: &Header, payload: &[u8]) -> bool {
        payload.len() == self.ctx.payload
            && (payload.len() < 16 || payload[8..16] == h.id.to_be_bytes())
    }

    fn on_echo(&mut self, payload: &[u8], now_ns: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.result.echoed += 1;
        let Some(ts) = payload.get(0..8) else { return };
        let sent_ns = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
        let warm_ns = self.ctx.ns_since_t0(self.ctx.warm_end);
        let send_end_ns = self.ctx.ns_since_t0(self.ctx.send_end);
        if sent_ns >= warm_ns && now_ns < send_end_ns {
            let rtt = now_ns
                .saturating_sub(sent_ns)
                .clamp(1, report::LATENCY_MAX_NS);
            self.ctx.rtt.borrow_mut().saturating_record(rtt);
        }
    }

    /// Tops a's window up to W while sending is still on.
    fn refill(&mut self, a: &mut Side, b_addr: Addr, b_subject: &Subject, now: Instant) {
        if now >= self.ctx.send_end {
            return;
        }
        let now_ns = self.ctx.ns_since_t0(now).to_be_bytes();
        let payload = self.ctx.payload;
        while self.in_flight < self.ctx.window {
            self.next_id += 1;
            let id = self.next_id;
            let header = Header::new(kind::DATA, a.addr, b_addr, id, payload);
            match self.ctx.wire {
                Wire::Gateway => a.tx.extend_from_slice(&header.encode()),
                Wire::Nats => nats::encode_pub_head(&mut a.tx, b_subject, payload),
                Wire::Mqtt => mqtt::encode_publish_head(&mut a.tx, b_subject, payload),
                Wire::Ws | Wire::WsJson => {
                    let link = a.ws.as_mut().expect("a WebSocket wire's sides have a link");
                    let ctx = &self.ctx;
                    link.send_data(&mut a.tx, &header, |p| ctx.push_payload(p, now_ns, id));
                }
            }
            if a.ws.is_none() {
                self.ctx.push_payload(&mut a.tx, now_ns, id);
            }
            if self.ctx.wire == Wire::Nats {
                a.tx.extend_from_slice(nats::CRLF);
            }
            self.in_flight += 1;
            self.result.sent += 1;
        }
    }

    /// Whether the pair is done: sending has stopped and every message is
    /// answered, or the drain deadline passed (what is missing is lost).
    fn finished(&mut self, now: Instant, tx_empty: bool) -> bool {
        if now < self.ctx.send_end {
            return false;
        }
        if self.in_flight == 0 && tx_empty {
            return true;
        }
        if now >= self.ctx.drain_end {
            self.result.lost += self.in_flight;
            self.in_flight = 0;
            return true;
        }
        false
    }

    fn fail(&mut self, reason: &str) {
        report::bump(&mut self.result.client_errors, reason);
        self.result.lost += self.in_flight;
        self.in_flight = 0;
    }
}

/// Drives one pair until its run ends; resolves to what it counted.
struct PairDriver {
    a: Side,
    b: Side,
    state: PairState,
    tick: Timer,
    started: bool,
    done: bool,
}

impl PairDriver {
    fn new(a: TcpConn, b: TcpConn, ctx: Rc<RunCtx>) -> PairDriver {
        let frame = ctx.wire.message_max(ctx.payload);
        let rx_bytes = RX_MIN_BYTES.max(2 * frame);
        let tx_bytes = frame * ctx.window as usize;
        let wire = ctx.wire;
        PairDriver {
            a: Side::new(a, wire, rx_bytes, tx_bytes),
            b: Side::new(b, wire, rx_bytes, tx_bytes),
            state: PairState {
                ctx,
                next_id: 0,
                in_flight: 0,
                result: PairResult::default(),
            },
            tick: Timer::new(TICK),
            started: false,
            done: false,
        }
    }

    /// One round: read both sides, answer, top up, write both sides.
    fn round(&mut self, cx: &mut Context<'_>, now: Instant) -> Result<bool, &'static str> {
        let mut progress = false;
        let (a_addr, b_addr, b_subject) = (self.a.addr, self.b.addr, self.b.subject);
        if self.a.read(cx)? {
            progress = true;
            self.state.process(&mut self.a, b_addr, Role::A, now)?;
        }
        if self.b.read(cx)? {
            progress = true;
            self.state.process(&mut self.b, a_addr, Role::B, now)?;
        }
        self.state.refill(&mut self.a, b_addr, &b_subject, now);
        progress |= self.a.flush(cx)?;
        progress |= self.b.flush(cx)?;
        Ok(progress)
    }

    /// On the MQTT wire a DISCONNECT, on WebSocket a close frame, on each
    /// side with nothing left to send, so the server sees a clean goodbye
    /// rather than a dropped connection. One non-blocking write each;
    /// whatever it returns, the pair is done.
    fn goodbye(&mut self, cx: &mut Context<'_>) {
        let mqtt = self.state.ctx.wire == Wire::Mqtt;
        for side in [&mut self.a, &mut self.b] {
            let mut close = [0u8; 8];
            let bye: &[u8] = match &mut side.ws {
                _ if !side.tx.is_empty() => continue,
                Some(link) => {
                    let n = link.close_frame(&mut close);
                    &close[..n]
                }
                None if mqtt => mqtt::DISCONNECT,
                None => continue,
            };
            let _ = Pin::new(&mut side.stream).poll_write(cx, bye);
        }
    }

    fn take_result(&mut self) -> PairResult {
        self.done = true;
        std::mem::take(&mut self.state.result)
    }
}

impl Future for PairDriver {
    type Output = PairResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PairResult> {
        let this = self.get_mut();
        assert!(!this.done, "pair driver polled after completion");
        if !this.started {
            this.started = true;
            // Bytes read together with WELCOME are handled before anything else.
            let now = Instant::now();
            let b_addr = this.b.addr;
            let a_addr = this.a.addr;
            let first = this
                .state
                .process(&mut this.a, b_addr, Role::A, now)
                .and_then(|()| this.state.process(&mut this.b, a_addr, Role::B, now));
            if let Err(reason) = first {
                this.state.fail(reason);
                return Poll::Ready(this.take_result());
            }
        }
        for _ in 0..ROUNDS_PER_POLL {
            let now = Instant::now();
            let tx_empty = this.a.tx.is_empty() && this.b.tx.is_empty();
            if this.state.finished(now, tx_empty) {
                this.goodbye(cx);
                return Poll::Ready(this.take_result());
            }
            match this.round(cx, now) {
                Ok(true) => {}
                Ok(false) => {
                    // Nothing moved: every socket has a wakeup registered.
                    // The tick makes sure phase changes are noticed too.
                    while Pin::new(&mut this.tick).poll(cx).is_ready() {
                        this.tick.reset(TICK);
                    }
                    return Poll::Pending;
                }
                Err(reason) => {
                    this.state.fail(reason);
                    return Poll::Ready(this.take_result());
                }
            }
        }
        // Still busy: let the other pairs run before continuing.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl PairResult {
    fn add(&mut self, o: &PairResult) {
        self.sent += o.sent;
        self.echoes_sent += o.echoes_sent;
        self.delivered_window += o.delivered_window;
        self.delivered_total += o.delivered_total;
        self.echoed += o.echoed;
        self.lost += o.lost;
        self.errors.merge(&o.errors);
        report::merge(&mut self.client_errors, &o.client_errors);
    }
}

fn build_report(cfg: &PingpongConfig, o: &Outcome) -> PingpongReport {
    let Outcome {
        pairs_up,
        setup_s,
        setup_failures,
        errors,
        total,
        latency,
        cpu,
    } = o;
    let secs = cfg.duration.as_secs_f64();
    let msgs_per_s = (total.delivered_window as f64 / secs).round();
    let mut table = Table::default();
    table.row(
        "target",
        format!(
            "{} {} ({})",
            cfg.shared.target_name,
            cfg.shared.target,
            cfg.wire.transport_name()
        ),
    );
    if let Some(peer) = cfg.peer {
        table.row(
            "b sides at (--peer-tcp)",
            format!("{peer} (a sides at the target)"),
        );
    }
    table
        .row("pairs up / asked", format!("{pairs_up} / {}", cfg.pairs))
        .row(
            "window, payload",
            format!("{} frames, {} B", cfg.window, cfg.payload),
        )
        .row("setup", format!("{setup_s:.2} s"))
        .row(
            "measured",
            format!("{secs} s after {} s warmup", cfg.warmup.as_secs()),
        )
        .row(
            "delivered msgs/s",
            format!("{msgs_per_s} (both directions)"),
        )
        .row("delivered in window", total.delivered_window)
        .latency("round trip", latency)
        .row(
            "sent by a / echoed by b",
            format!("{} / {}", total.sent, total.echoes_sent),
        )
        .row(
            "client CPU (one core)",
            format!(
                "{}%{}",
                cpu.pct,
                if cpu.pct >= CLIENT_BOUND_PCT {
                    format!(
                        " (client-bound: {} may be faster than shown)",
                        cfg.shared.target_name
                    )
                } else {
                    String::new()
                }
            ),
        )
        .row("echoes received", total.echoed)
        .row("lost (no echo, no ERROR)", total.lost)
        .errors("ERROR frames", errors)
        .reasons("client-detected errors", &total.client_errors)
        .reasons("setup failures", setup_failures);
    let mut m = JsonLine::default();
    m.insert("scenario", json!("pingpong"));
    m.insert("target", json!(cfg.shared.target_name));
    m.insert("transport", json!(cfg.wire.transport_name()));
    if let Some(peer) = cfg.peer {
        // Where the b sides registered: the pairs crossed from the target
        // to this address (another node).
        m.insert("peer", json!(peer.to_string()));
    }
    m.insert("pairs", json!(cfg.pairs));
    m.insert("pairs_up", json!(pairs_up));
    m.insert("window", json!(cfg.window));
    m.insert("payload", json!(cfg.payload));
    m.insert("duration_s", json!(secs));
    m.insert("warmup_s", json!(cfg.warmup.as_secs()));
    m.insert("msgs_per_s", json!(msgs_per_s));
    latency.add_to("", &mut m);
    m.insert("delivered", json!(total.delivered_window));
    m.insert("delivered_total", json!(total.delivered_total));
    m.insert("sent", json!(total.sent));
    m.insert("echoes_sent", json!(total.echoes_sent));
    m.insert("echoed", json!(total.echoed));
    m.insert("lost", json!(total.lost));
    m.insert("errors", errors.to_json());
    m.insert("errors_total", json!(errors.total()));
    m.insert("client_errors", report::reasons_json(&total.client_errors));
    m.insert("setup_failures", report::reasons_json(setup_failures));
    m.insert("client_cpu_pct", json!(cpu.pct));
    m.insert("setup_s", json!((setup_s * 1000.0).round() / 1000.0));
    PingpongReport { table, json: m }
}
