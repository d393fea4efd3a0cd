//! `fan`'s endpoint task: one connection (a sender or a receiver) as a
//! future, and what depends on the wire: reading events, framing messages.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use super::flow::{
    credit_payload, data_fields, data_id, decode_credit, decode_data, stream_of_id, CreditCounter,
    End, Order, SendWindow, SeqCheck, CREDIT_LEN,
};
use super::{Counts, FanCtx, Tally, PAYLOAD_MIN};
use crate::mqtt;
use crate::nats::{self, Subject};
use crate::pingpong::setup::TcpConn;
use crate::pingpong::{Side, Wire, ROUNDS_PER_POLL, RX_MIN_BYTES, TICK};
use crate::proto::{self, kind, Addr, Header, HEADER_LEN};
use crate::report::{self, ErrorCounts};

/// ERROR code of `slow_consumer` (PROTOCOL.md section 7).
const ERROR_SLOW_CONSUMER: u16 = 7;

/// A credit refused with `slow_consumer` is sent again after this long.
const REPAY_DELAY: Duration = Duration::from_millis(10);

/// Bytes a sender queues per refill at most; the rest of its windows are
/// filled once these are written, so a fan-out sender's buffer stays small.
const TX_BATCH_BYTES: usize = 256 * 1024;

/// Queues a credit of `n` frames of stream `st` back to its sender. Its id
/// carries the stream and `n`, so a refused credit can be sent again.
fn push_credit(ctx: &FanCtx, side: &mut Side, st: &Incoming, n: u32, counts: &mut Counts) {
    let wire = ctx.run.wire;
    let id = data_id(st.k, n);
    push_head(wire, &mut side.tx, side.addr, &st.from, id, CREDIT_LEN);
    side.tx.extend_from_slice(&credit_payload(st.k, n));
    push_tail(wire, &mut side.tx);
    counts.credits_sent += 1;
    ctx.credits.queue(1);
}

/// The far end of a stream, as each wire names it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    addr: Addr,
    /// `addr` as a NATS subject, which is also its MQTT topic.
    subject: Subject,
}

impl Peer {
    pub(super) fn new(addr: Addr) -> Peer {
        Peer {
            addr,
            subject: nats::subject(&addr),
        }
    }
}

/// Appends what goes before a message's payload to `to`.
pub(super) fn push_head(wire: Wire, tx: &mut Vec<u8>, src: Addr, to: &Peer, id: u64, len: usize) {
    match wire {
        Wire::Gateway => {
            tx.extend_from_slice(&Header::new(kind::DATA, src, to.addr, id, len).encode())
        }
        Wire::Nats => nats::encode_pub_head(tx, &to.subject, len),
        Wire::Mqtt => mqtt::encode_publish_head(tx, &to.subject, len),
        Wire::Ws | Wire::WsJson => unreachable!("fan has no WebSocket wire"),
    }
}

/// Appends what goes after a message's payload.
pub(super) fn push_tail(wire: Wire, tx: &mut Vec<u8>) {
    match wire {
        Wire::Gateway | Wire::Mqtt => {}
        Wire::Nats => tx.extend_from_slice(nats::CRLF),
        Wire::Ws | Wire::WsJson => unreachable!("fan has no WebSocket wire"),
    }
}

/// One thing read from the target, whatever the wire. Ranges index `side.rx`.
#[derive(Debug)]
pub(super) enum Event {
    /// A message for an endpoint: DATA, or a NATS MSG. `src` when the wire
    /// names the sender; `ours` when it is addressed to this endpoint.
    Msg {
        payload: Range<usize>,
        src: Option<Addr>,
        ours: bool,
    },
    /// The gateway refused our frame `id` (0: it could not tell which)
    /// with ERROR `code`.
    Refused {
        id: u64,
        code: u16,
    },
    /// Nothing for the scenario: HEARTBEAT, INFO, +OK, PONG, an answered
    /// PING, a NATS -ERR (counted already).
    Other,
    Unexpected,
}

/// Takes the next whole message out of `side`'s receive buffer (advancing
/// `rx_head`; the caller compacts), answering keepalives and counting
/// errors on the way. Messages carry at most `max_payload` bytes. `Err`: the
/// connection can no longer be used.
pub(super) fn next_event(
    wire: Wire,
    side: &mut Side,
    max_payload: usize,
    errors: &mut ErrorCounts,
) -> Result<Option<Event>, &'static str> {
    match wire {
        Wire::Gateway => {
            let Some((h, at)) = side.next_frame()? else {
                return Ok(None);
            };
            let payload = at + HEADER_LEN..at + h.frame_len();
            side.rx_head = payload.end;
            Ok(Some(match h.kind {
                kind::DATA => Event::Msg {
                    payload,
                    src: Some(h.src),
                    ours: h.dst == side.addr,
                },
                kind::ERROR => {
                    let bytes = &side.rx[payload];
                    errors.add_payload(bytes);
                    let code = proto::decode_error(bytes).map_or(0, |(c, _)| c);
                    if proto::error_closes(code) {
                        return Err("connection_closed_by_gateway_error");
                    }
                    Event::Refused { id: h.id, code }
                }
                kind::HEARTBEAT => Event::Other,
                _ => Event::Unexpected,
            }))
        }
        Wire::Nats => {
            let base = side.rx_head;
            let Some((op, used)) =
                nats::parse(&side.rx[base..side.rx_tail]).map_err(|e| e.name())?
            else {
                return Ok(None);
            };
            side.rx_head = base + used;
            Ok(Some(match op {
                nats::Op::Msg {
                    subject,
                    sid,
                    payload,
                } => Event::Msg {
                    payload: base + payload.start..base + payload.end,
                    src: None,
                    ours: sid == nats::SID
                        && side.rx[base + subject.start..base + subject.end] == side.subject,
                },
                nats::Op::Ping => {
                    side.tx.extend_from_slice(nats::PONG);
                    Event::Other
                }
                nats::Op::Err(r) => {
                    errors.add_text(&side.rx[base + r.start..base + r.end]);
                    Event::Other
                }
                nats::Op::Info | nats::Op::Pong | nats::Op::Ok => Event::Other,
            }))
        }
        Wire::Mqtt => {
            let base = side.rx_head;
            // Room for a packet id: a QoS above 0 is refused below, not here.
            let limit = mqtt::publish_remaining(max_payload) + 2;
            let Some((packet, used)) =
                mqtt::parse(&side.rx[base..side.rx_tail], limit).map_err(|e| e.name())?
            else {
                return Ok(None);
            };
            side.rx_head = base + used;
            Ok(Some(match packet {
                mqtt::Packet::Publish {
                    topic,
                    payload,
                    qos,
                    ..
                } => Event::Msg {
                    payload: base + payload.start..base + payload.end,
                    src: None,
                    ours: qos == 0 && side.rx[base + topic.start..base + topic.end] == side.subject,
                },
                mqtt::Packet::PingResp => Event::Other,
                mqtt::Packet::ConnAck { .. } | mqtt::Packet::SubAck { .. } => Event::Unexpected,
            }))
        }
        Wire::Ws | Wire::WsJson => unreachable!("fan has no WebSocket wire"),
    }
}

/// One stream at its sender.
pub(super) struct Outgoing {
    k: u32,
    to: Peer,
    window: SendWindow,
    next_seq: u32,
    tally: Tally,
}

impl Outgoing {
    pub(super) fn new(k: u32, to: Peer) -> Outgoing {
        Outgoing {
            k,
            to,
            window: SendWindow::default(),
            next_seq: 0,
            tally: Tally::default(),
        }
    }
}

/// One stream at its receiver.
pub(super) struct Incoming {
    k: u32,
    from: Peer,
    credit: CreditCounter,
    seq: SeqCheck,
    /// Frames of credits refused with `slow_consumer`, to be sent again.
    owed: u32,
    tally: Tally,
}

impl Incoming {
    pub(super) fn new(k: u32, from: Peer) -> Incoming {
        Incoming {
            k,
            from,
            credit: CreditCounter::default(),
            seq: SeqCheck::default(),
            owed: 0,
            tally: Tally::default(),
        }
    }
}

pub(super) enum Role {
    Sender {
        /// This sender's streams whose receiver is up, by slot (None: down).
        streams: Vec<Option<Outgoing>>,
        /// Windows may have room: top them up.
        refill: bool,
        /// Slot the next refill starts at, so a partial refill is fair.
        cursor: usize,
    },
    Receiver {
        streams: Vec<Option<Incoming>>,
        /// When to send owed credits again (None: nothing owed).
        repay_at: Option<Instant>,
    },
}

/// This instant as the handlers need it.
struct At {
    now: Instant,
    now_ns: u64,
    /// Inside the measurement window.
    measuring: bool,
}

/// Drives one connection (a sender or a receiver) until the run stops.
pub(super) struct Endpoint {
    ctx: Rc<FanCtx>,
    side: Side,
    role: Role,
    index: u32,
    counts: Counts,
    tick: Timer,
    started: bool,
}

pub(super) struct EndpointResult {
    pub(super) counts: Counts,
    pub(super) tallies: Vec<(u32, Tally)>,
}

impl Endpoint {
    pub(super) fn new(
        ctx: Rc<FanCtx>,
        conn: TcpConn,
        role: Role,
        index: u32,
        streams: usize,
    ) -> Endpoint {
        let frame = ctx.run.wire.overhead() + ctx.run.payload;
        let rx_bytes = RX_MIN_BYTES.max(2 * frame);
        let tx_bytes = match role {
            Role::Sender { .. } => (frame * ctx.run.window as usize * streams).min(TX_BATCH_BYTES),
            Role::Receiver { .. } => (ctx.run.wire.overhead() + CREDIT_LEN) * streams.min(64),
        };
        let side = Side::new(conn, ctx.run.wire, rx_bytes, tx_bytes + frame);
        Endpoint {
            ctx,
            side,
            role,
            index,
            counts: Counts::default(),
            tick: Timer::new(TICK),
            started: false,
        }
    }

    /// One round: read, handle what came, top windows up, write.
    fn round(&mut self, cx: &mut Context<'_>) -> Result<bool, &'static str> {
        let now = Instant::now();
        let run = &self.ctx.run;
        let at = At {
            now,
            now_ns: run.ns_since_t0(now),
            measuring: now >= run.warm_end && now < run.send_end,
        };
        let got = self.side.read(cx)?;
        // The first round also handles bytes read together with WELCOME.
        if got || !self.started {
            self.started = true;
            self.handle(&at)?;
        }
        match self.role {
            Role::Sender { .. } => self.refill(&at),
            Role::Receiver { .. } => self.repay(&at),
        }
        let wrote = self.side.flush(cx)?;
        Ok(got || wrote)
    }

    fn handle(&mut self, at: &At) -> Result<(), &'static str> {
        let (wire, max_payload) = (self.ctx.run.wire, self.ctx.run.payload.max(CREDIT_LEN));
        // Bounded by the bytes in the buffer: every event consumes some.
        while let Some(ev) = next_event(wire, &mut self.side, max_payload, &mut self.counts.errors)?
        {
            match ev {
                Event::Msg { payload, src, ours } => match self.role {
                    Role::Sender { .. } => self.on_credit(payload, src, ours),
                    Role::Receiver { .. } => self.on_data(payload, src, ours, at),
                },
                Event::Refused { id, code } => self.on_refused(id, code),
                Event::Other => {}
                Event::Unexpected => {
                    report::bump(&mut self.counts.client_errors, "unexpected_kind")
                }
            }
        }
        self.side.compact();
        Ok(())
    }

    /// A receiver got a DATA frame (or what should be one).
    fn on_data(&mut self, payload: Range<usize>, src: Option<Addr>, ours: bool, at: &At) {
        let ctx = &*self.ctx;
        let Role::Receiver { streams, .. } = &mut self.role else {
            return;
        };
        let bytes = &self.side.rx[payload];
        let found = decode_data(bytes)
            .filter(|_| ours && bytes.len() == ctx.run.payload)
            .and_then(|(sent_ns, k, seq)| {
                let slot = ctx.map.slot(End::Receiver, self.index, k)?;
                let st = streams.get_mut(slot)?.as_mut()?;
                src.is_none_or(|s| s == st.from.addr)
                    .then_some((st, sent_ns, seq))
            });
        let Some((st, sent_ns, seq)) = found else {
            report::bump(&mut self.counts.client_errors, "bad_data");
            return;
        };
        match st.seq.on_frame(seq) {
            Order::Next => {}
            Order::Skipped(n) => self.counts.skipped += u64::from(n),
            Order::Behind => report::bump(&mut self.counts.client_errors, "out_of_order"),
        }
        st.tally.delivered += 1;
        ctx.data.settle();
        ctx.run.delivered_live.set(ctx.run.delivered_live.get() + 1);
        if at.measuring {
            self.counts.delivered_window += 1;
            if sent_ns >= ctx.run.ns_since_t0(ctx.run.warm_end) {
                let one_way = at.now_ns.saturating_sub(sent_ns);
                ctx.run
                    .rtt
                    .borrow_mut()
                    .saturating_record(one_way.clamp(1, report::LATENCY_MAX_NS));
            }
        }
        if let Some(n) = st.credit.on_frame(ctx.credit_every) {
            push_credit(ctx, &mut self.side, st, n, &mut self.counts);
        }
    }

    /// Sends owed credits again, once their delay is over.
    fn repay(&mut self, at: &At) {
        let ctx = &*self.ctx;
        let Role::Receiver { streams, repay_at } = &mut self.role else {
            return;
        };
        if repay_at.is_none_or(|t| at.now < t) {
            return;
        }
        *repay_at = None;
        for st in streams.iter_mut().flatten().filter(|st| st.owed > 0) {
            let n = std::mem::take(&mut st.owed);
            push_credit(ctx, &mut self.side, st, n, &mut self.counts);
        }
    }

    /// A sender got a credit (or what should be one).
    fn on_credit(&mut self, payload: Range<usize>, src: Option<Addr>, ours: bool) {
        let ctx = &*self.ctx;
        let Role::Sender {
            streams, refill, ..
        } = &mut self.role
        else {
            return;
        };
        let found = decode_credit(&self.side.rx[payload])
            .filter(|_| ours)
            .and_then(|(k, n)| {
                let slot = ctx.map.slot(End::Sender, self.index, k)?;
                let st = streams.get_mut(slot)?.as_mut()?;
                src.is_none_or(|s| s == st.to.addr).then_some((st, n))
            });
        let Some((st, n)) = found else {
            report::bump(&mut self.counts.client_errors, "bad_credit");
            return;
        };
        ctx.credits.settle();
        if st.window.on_credit(n) {
            self.counts.credits_received += 1;
            *refill = true;
        } else {
            report::bump(&mut self.counts.client_errors, "credit_above_outstanding");
        }
    }

    /// The gateway refused one of our frames: a sender's DATA (its slot is
    /// free again) or a receiver's credit. The ERROR is counted already.
    fn on_refused(&mut self, id: u64, code: u16) {
        let ctx = &*self.ctx;
        if id == 0 {
            return;
        }
        let Role::Sender {
            streams, refill, ..
        } = &mut self.role
        else {
            self.on_credit_refused(id, code);
            return;
        };
        let st = stream_of_id(id)
            .and_then(|k| ctx.map.slot(End::Sender, self.index, k))
            .and_then(|slot| streams.get_mut(slot)?.as_mut());
        let Some(st) = st.filter(|st| st.window.outstanding() > 0) else {
            report::bump(&mut self.counts.client_errors, "error_for_unknown_frame");
            return;
        };
        st.window.on_refused();
        st.tally.refused += 1;
        ctx.data.settle();
        *refill = true;
    }

    /// A receiver's credit was refused. When its sender is only busy
    /// (`slow_consumer`, also what a full queue between gateway shards
    /// gives), the credit is owed and sent again after [`REPAY_DELAY`]:
    /// without it that stream's window would stay smaller for good. Any other
    /// refusal (`dst_offline`: the sender is gone) drops it.
    fn on_credit_refused(&mut self, id: u64, code: u16) {
        let ctx = &*self.ctx;
        self.counts.credits_refused += 1;
        ctx.credits.settle();
        let Role::Receiver { streams, repay_at } = &mut self.role else {
            return;
        };
        let st = stream_of_id(id)
            .and_then(|k| ctx.map.slot(End::Receiver, self.index, k))
            .and_then(|slot| streams.get_mut(slot)?.as_mut());
        match st {
            Some(st) if code == ERROR_SLOW_CONSUMER => {
                // A credit's id carries its count (see `push_credit`).
                st.owed += id as u32;
                repay_at.get_or_insert(Instant::now() + REPAY_DELAY);
            }
            Some(_) => {}
            None => report::bump(&mut self.counts.client_errors, "error_for_unknown_frame"),
        }
    }

    /// Tops every window up while sending is on, at most [`TX_BATCH_BYTES`]
    /// at a time; what does not fit waits for the next round.
    fn refill(&mut self, at: &At) {
        let ctx = &*self.ctx;
        let Role::Sender {
            streams,
            refill,
            cursor,
        } = &mut self.role
        else {
            return;
        };
        if !*refill || at.now >= ctx.run.send_end {
            return;
        }
        *refill = false;
        let (wire, payload) = (ctx.run.wire, ctx.run.payload);
        let window = ctx.run.window as u32;
        let tx = &mut self.side.tx;
        let mut queued = 0;
        for i in 0..streams.len() {
            let slot = (*cursor + i) % streams.len();
            let Some(st) = &mut streams[slot] else {
                continue;
            };
            if tx.len() >= TX_BATCH_BYTES {
                *cursor = slot;
                *refill = true;
                break;
            }
            for _ in 0..st.window.room(window) {
                let seq = st.next_seq;
                st.next_seq = seq.wrapping_add(1);
                push_head(
                    wire,
                    tx,
                    self.side.addr,
                    &st.to,
                    data_id(st.k, seq),
                    payload,
                );
                tx.extend_from_slice(&data_fields(at.now_ns, st.k, seq));
                tx.extend_from_slice(&ctx.run.fill[PAYLOAD_MIN as usize..payload]);
                push_tail(wire, tx);
                st.window.on_send();
                st.tally.sent += 1;
                queued += 1;
            }
        }
        ctx.data.queue(queued);
    }

    fn finish(&mut self, failure: Option<&str>) -> EndpointResult {
        if let Some(reason) = failure {
            report::bump(&mut self.counts.client_errors, reason);
        }
        let tallies = match &self.role {
            Role::Sender { streams, .. } => {
                streams.iter().flatten().map(|s| (s.k, s.tally)).collect()
            }
            Role::Receiver { streams, .. } => {
                streams.iter().flatten().map(|s| (s.k, s.tally)).collect()
            }
        };
        EndpointResult {
            counts: std::mem::take(&mut self.counts),
            tallies,
        }
    }
}

impl Future for Endpoint {
    type Output = EndpointResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<EndpointResult> {
        let this = self.get_mut();
        for _ in 0..ROUNDS_PER_POLL {
            if this.ctx.stop.get() {
                return Poll::Ready(this.finish(None));
            }
            match this.round(cx) {
                Err(reason) => return Poll::Ready(this.finish(Some(reason))),
                Ok(true) => continue,
                Ok(false) => {
                    // Idle: the socket has a wakeup registered, and the tick
                    // brings the end of the run to our notice.
                    while Pin::new(&mut this.tick).poll(cx).is_ready() {
                        this.tick.reset(TICK);
                    }
                    return Poll::Pending;
                }
            }
        }
        // Busy: give the other endpoints a turn first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_the_gateway() {
        on_executor(events_from_the_gateway_inner);
    }

    fn events_from_the_gateway_inner() {
        let me = [1u8; 16];
        let peer = [2u8; 16];
        let mut rx = Vec::new();
        rx.extend_from_slice(&Header::new(kind::DATA, peer, me, 5, 3).encode());
        rx.extend_from_slice(b"abc");
        rx.extend_from_slice(&Header::new(kind::ERROR, proto::NIL, me, 9, 4).encode());
        rx.extend_from_slice(&[0, 7, b'n', b'o']);
        rx.extend_from_slice(&Header::new(kind::HEARTBEAT, proto::NIL, me, 1, 0).encode());
        let mut side = test_side(me, &rx);
        let mut errors = ErrorCounts::default();
        let ev = next_event(Wire::Gateway, &mut side, 64, &mut errors).unwrap();
        let Some(Event::Msg { payload, src, ours }) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(&side.rx[payload], b"abc");
        assert_eq!((src, ours), (Some(peer), true));
        let ev = next_event(Wire::Gateway, &mut side, 64, &mut errors).unwrap();
        assert!(
            matches!(ev, Some(Event::Refused { id: 9, code: 7 })),
            "{ev:?}"
        );
        assert_eq!(errors.to_json()["slow_consumer"], 1);
        let ev = next_event(Wire::Gateway, &mut side, 64, &mut errors).unwrap();
        assert!(matches!(ev, Some(Event::Other)), "{ev:?}");
        assert!(next_event(Wire::Gateway, &mut side, 64, &mut errors)
            .unwrap()
            .is_none());
    }

    #[test]
    fn events_from_nats() {
        on_executor(events_from_nats_inner);
    }

    fn events_from_nats_inner() {
        let me = [0xabu8; 16];
        let mut rx = Vec::new();
        rx.extend_from_slice(b"PING\r\n-ERR 'Slow Consumer'\r\nMSG ");
        rx.extend_from_slice(&nats::subject(&me));
        rx.extend_from_slice(b" 1 3\r\nxyz\r\nMSG other 1 0\r\n\r\n");
        let mut side = test_side(me, &rx);
        let mut errors = ErrorCounts::default();
        let mut events = Vec::new();
        while let Some(ev) = next_event(Wire::Nats, &mut side, 64, &mut errors).unwrap() {
            events.push(ev);
        }
        assert_eq!(side.tx, nats::PONG);
        assert_eq!(errors.to_json()["Slow Consumer"], 1);
        let [Event::Other, Event::Other, Event::Msg {
            payload,
            src: None,
            ours: true,
        }, Event::Msg { ours: false, .. }] = &events[..]
        else {
            panic!("{events:?}")
        };
        assert_eq!(&side.rx[payload.clone()], b"xyz");
    }

    #[test]
    fn messages_frame_per_wire() {
        let to = Peer::new([3u8; 16]);
        let mut tx = Vec::new();
        push_head(Wire::Gateway, &mut tx, [4u8; 16], &to, 11, 8);
        push_tail(Wire::Gateway, &mut tx);
        let h = Header::decode(&tx).unwrap().unwrap();
        assert_eq!((h.kind, h.dst, h.id, h.len), (kind::DATA, to.addr, 11, 8));
        assert_eq!(tx.len(), HEADER_LEN);
        tx.clear();
        push_head(Wire::Nats, &mut tx, [4u8; 16], &to, 11, 2);
        tx.extend_from_slice(b"hi");
        push_tail(Wire::Nats, &mut tx);
        let mut want = b"PUB ".to_vec();
        want.extend_from_slice(&to.subject);
        want.extend_from_slice(b" 2\r\nhi\r\n");
        assert_eq!(tx, want);
    }

    /// A side over a socket that is never used, with `rx` as received bytes.
    fn test_side(addr: Addr, rx: &[u8]) -> Side {
        let stream = test_stream();
        let mut side = Side::new(
            TcpConn {
                stream,
                addr,
                leftover: rx.to_vec(),
                ws: None,
            },
            Wire::Gateway,
            RX_MIN_BYTES,
            0,
        );
        side.compact();
        side
    }

    fn test_stream() -> glommio::net::TcpStream {
        use std::os::fd::FromRawFd;
        // SAFETY: a fresh socket owned by nobody else; the stream closes it.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            glommio::net::TcpStream::from_raw_fd(fd)
        }
    }

    /// Runs `f` on a small executor: a glommio stream needs one to exist.
    fn on_executor(f: impl FnOnce() + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 << 10)
            .ring_depth(64)
            .make()
            .expect("test executor")
            .run(async move { f() });
    }
}
