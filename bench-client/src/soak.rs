//! `soak`: `hold` plus a little DATA. While the C connections are held, P
//! pairs taken from them ping-pong one 64-byte DATA message at a time at a
//! fixed rate per pair, and the round trips, errors and losses are reported
//! next to hold's figures. The connection tasks, heartbeats, RSS readings and
//! report are hold's (`hold.rs`); this module adds the pairs: which
//! connections they are, the pinger's schedule, the payload and its checks,
//! the counters and their report fields.
//!
//! Pair k is two consecutive connections, `a` = k * 2S and `b` = a + 1 with
//! stride S = C / 2P, so the pairs are spread over the connect order (and
//! therefore over the source addresses, the gateway's listen addresses and
//! the heartbeat phases). `a` sends DATA to `b` on its schedule, `b` echoes it
//! back to `a`, and `a` sends the next only once the previous is answered: a
//! tick that finds the message still out is counted as late, and the next
//! message goes as soon as the answer comes.
//!
//! Message ids have the top bit set, so an ERROR that answers a DATA is told
//! apart from one about a heartbeat (whose ids count up from 2).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use anyhow::bail;
use glommio::timer::Timer;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::conn::{Conn, ConnError};
use crate::proto::{self, kind, Addr, SmallFrame};
use crate::report::{self, ErrorCounts, JsonLine, Latency, Reasons, Table};

/// DATA payload bytes. Only the first [`proto::KEEP_BYTES`] are kept by the
/// receiving connection's decoder, so those are what the checks compare.
pub const PAYLOAD_BYTES: usize = 64;
/// A message still unanswered this long after it was sent is given up on at
/// the pair's next tick (and counted as lost), so one lost message does not
/// stop its pair for the rest of the run.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(5);
/// After sending stops, how long the last messages may take to come back.
pub const DRAIN: Duration = Duration::from_secs(2);
/// Highest --data-rate accepted (messages per second per pair).
pub const RATE_MAX: f64 = 10_000.0;
/// Set in every DATA id.
const ID_FLAG: u64 = 1 << 63;

/// The DATA part of a soak run, validated.
#[derive(Debug, Clone, Copy)]
pub struct DataConfig {
    pub pairs: u32,
    /// Messages per second per pair.
    pub rate: f64,
}

impl DataConfig {
    /// Checks the pairs fit in `conns` connections and the rate is usable.
    pub fn new(pairs: u32, rate: f64, conns: u32) -> anyhow::Result<DataConfig> {
        if u64::from(pairs) * 2 > u64::from(conns) {
            bail!(
                "--data-pairs {pairs} needs {} connections, but --conns is {conns}",
                u64::from(pairs) * 2
            );
        }
        if !(rate.is_finite() && rate > 0.0 && rate <= RATE_MAX) {
            bail!("--data-rate must be above 0 and at most {RATE_MAX} messages/s per pair, got {rate}");
        }
        Ok(DataConfig { pairs, rate })
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

/// Which side of which pair connection `idx` (of `conns`) is, if any.
pub fn role(idx: u64, conns: u64, pairs: u64) -> Option<(u32, Side)> {
    if pairs == 0 || pairs * 2 > conns {
        return None;
    }
    let span = 2 * (conns / (2 * pairs));
    let pair = idx / span;
    if pair >= pairs {
        return None;
    }
    match idx % span {
        0 => Some((pair as u32, Side::A)),
        1 => Some((pair as u32, Side::B)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sends on the schedule and measures the round trip.
    A,
    /// Echoes.
    B,
}

pub fn wire_id(seq: u64) -> u64 {
    seq | ID_FLAG
}

pub fn is_data_id(id: u64) -> bool {
    id & ID_FLAG != 0
}

/// The payload of message `seq` of pair `pair`: the sequence number, the
/// pair, then bytes that depend on both, so a misrouted or mixed-up message
/// does not pass the check.
pub fn payload(pair: u32, seq: u64) -> [u8; PAYLOAD_BYTES] {
    let mut p = [0u8; PAYLOAD_BYTES];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&pair.to_be_bytes());
    let salt = (seq as u8) ^ (pair as u8).rotate_left(3);
    for (i, b) in p.iter_mut().enumerate().skip(12) {
        *b = (i as u8).wrapping_mul(31) ^ salt;
    }
    p
}

/// Whether a received DATA frame is message `id` of pair `pair`: the right
/// length, and the kept start of its payload as sent.
pub fn payload_matches(pair: u32, id: u64, f: &SmallFrame) -> bool {
    let kept = f.prefix();
    f.header.len as usize == PAYLOAD_BYTES
        && kept.len() == PAYLOAD_BYTES.min(proto::KEEP_BYTES)
        && kept == &payload(pair, id & !ID_FLAG)[..kept.len()]
}

/// What a pinger's tick decided.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The message out was older than [`GIVE_UP_AFTER`] and was given up.
    pub gave_up: bool,
    /// The message out is still awaited; the next goes when it is answered.
    pub late: bool,
    /// Send this sequence number now.
    pub send: Option<u64>,
}

/// The sending side's schedule and its one message in flight. Sans-IO: the
/// caller passes the time.
#[derive(Debug)]
pub struct Pinger {
    period: Duration,
    next_at: Instant,
    seq: u64,
    in_flight: Option<(u64, Instant)>,
    late: bool,
}

impl Pinger {
    pub fn new(first_at: Instant, period: Duration) -> Pinger {
        Pinger {
            period,
            next_at: first_at,
            seq: 0,
            in_flight: None,
            late: false,
        }
    }

    /// When the next tick is due.
    pub fn next_at(&self) -> Instant {
        self.next_at
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The schedule came due at `now`. With `sending` false (before the
    /// hold starts) it only moves the schedule on.
    pub fn tick(&mut self, now: Instant, sending: bool) -> Tick {
        self.next_at += self.period;
        if self.next_at <= now {
            // Behind by more than a period (a stalled executor): skip the
            // missed slots rather than firing them back to back.
            self.next_at = now + self.period;
        }
        let mut t = Tick::default();
        if !sending {
            return t;
        }
        if let Some((_, at)) = self.in_flight {
            if now.saturating_duration_since(at) < GIVE_UP_AFTER {
                self.late = true;
                t.late = true;
                return t;
            }
            self.in_flight = None;
            t.gave_up = true;
        }
        t.send = Some(self.start(now));
        t
    }

    fn start(&mut self, now: Instant) -> u64 {
        self.seq += 1;
        self.in_flight = Some((self.seq, now));
        self.late = false;
        self.seq
    }

    /// An echo or an ERROR carrying `id` arrived at `now`. If it answers the
    /// message in flight, returns its round trip and, when a tick came due
    /// meanwhile and `sending` still holds, the next sequence number to send.
    pub fn answered(
        &mut self,
        id: u64,
        now: Instant,
        sending: bool,
    ) -> Option<(Duration, Option<u64>)> {
        let (seq, at) = self.in_flight?;
        if wire_id(seq) != id {
            return None;
        }
        self.in_flight = None;
        let next = (self.late && sending).then(|| self.start(now));
        self.late = false;
        Some((now.saturating_duration_since(at), next))
    }

    /// Drops the message in flight (the connection ended); whether there was one.
    pub fn abandon(&mut self) -> bool {
        self.late = false;
        self.in_flight.take().is_some()
    }
}

/// Where the pairs' traffic stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Sending,
    Stopped,
}

/// The pairs, shared by every connection task. Single-threaded: plain cells.
pub struct Pairs {
    pub cfg: DataConfig,
    conns: u64,
    /// Addresses of pair k's a and b, chosen up front so each knows its peer.
    addrs: Vec<(Addr, Addr)>,
    phase: Cell<Phase>,
    started: Cell<Option<Instant>>,
    stopped: Cell<Option<Instant>>,
    /// DATA messages a sent (each counted before its write).
    sent: Cell<u64>,
    /// a's messages answered by their echo.
    answered: Cell<u64>,
    /// a's messages answered by an ERROR.
    refused: Cell<u64>,
    /// a's messages given up after [`GIVE_UP_AFTER`].
    gave_up: Cell<u64>,
    /// Ticks that found the previous message still out.
    late: Cell<u64>,
    /// Echoes b sent.
    echoed: Cell<u64>,
    /// DATA frames received by either side of a pair.
    received: Cell<u64>,
    /// a's messages neither answered nor refused nor given up yet.
    in_flight: Cell<u64>,
    /// ERROR frames answering DATA (either side), also counted in hold's
    /// `errors`.
    errors: RefCell<ErrorCounts>,
    /// What the client found wrong with DATA (wrong payload, unmatched echo).
    client_errors: RefCell<Reasons>,
    rtt: RefCell<Histogram<u64>>,
    /// Round trips since the last progress line.
    rtt_recent: RefCell<Histogram<u64>>,
}

impl Pairs {
    pub fn new(cfg: DataConfig, conns: u32) -> Pairs {
        let addrs = (0..cfg.pairs)
            .map(|_| {
                (
                    uuid::Uuid::new_v4().into_bytes(),
                    uuid::Uuid::new_v4().into_bytes(),
                )
            })
            .collect();
        Pairs {
            cfg,
            conns: u64::from(conns),
            addrs,
            phase: Cell::new(Phase::Waiting),
            started: Cell::new(None),
            stopped: Cell::new(None),
            sent: Cell::new(0),
            answered: Cell::new(0),
            refused: Cell::new(0),
            gave_up: Cell::new(0),
            late: Cell::new(0),
            echoed: Cell::new(0),
            received: Cell::new(0),
            in_flight: Cell::new(0),
            errors: RefCell::default(),
            client_errors: RefCell::default(),
            rtt: RefCell::new(report::latency_histogram()),
            rtt_recent: RefCell::new(report::latency_histogram()),
        }
    }

    /// The pair endpoint connection `idx` plays, if any. Needs the executor
    /// (the sending side gets a timer).
    pub fn endpoint(&self, idx: u64) -> Option<Box<Endpoint>> {
        let (pair, side) = role(idx, self.conns, u64::from(self.cfg.pairs))?;
        let (a, b) = self.addrs[pair as usize];
        let (me, peer) = match side {
            Side::A => (a, b),
            Side::B => (b, a),
        };
        let pinger = (side == Side::A).then(|| {
            // Pairs start spread over one period rather than all at once.
            let period = self.cfg.period();
            let offset = period.mul_f64(f64::from(pair) / f64::from(self.cfg.pairs));
            let first = Instant::now() + offset;
            (Pinger::new(first, period), Timer::new(offset))
        });
        Some(Box::new(Endpoint {
            me,
            peer,
            pair,
            pinger,
            armed: true,
        }))
    }

    fn sending(&self) -> bool {
        self.phase.get() == Phase::Sending
    }

    /// The hold has begun: pairs send from their next tick on.
    pub fn start(&self) {
        self.phase.set(Phase::Sending);
        self.started.set(Some(Instant::now()));
    }

    /// No new messages from now on; answers still count.
    pub fn stop(&self) {
        if self.phase.get() == Phase::Sending {
            self.stopped.set(Some(Instant::now()));
        }
        self.phase.set(Phase::Stopped);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// DATA frames received so far by either side of a pair.
    pub fn received(&self) -> u64 {
        self.received.get()
    }

    /// Messages sent that got neither their echo nor an ERROR.
    pub fn lost(&self) -> u64 {
        self.sent.get() - self.answered.get() - self.refused.get()
    }

    fn bump_client_error(&self, reason: &str) {
        report::bump(&mut self.client_errors.borrow_mut(), reason);
    }

    fn record_rtt(&self, rtt: Duration) {
        let ns = (rtt.as_nanos() as u64).clamp(1, report::LATENCY_MAX_NS);
        self.rtt.borrow_mut().saturating_record(ns);
        self.rtt_recent.borrow_mut().saturating_record(ns);
    }

    /// The data part of a progress line; `msgs_before` is [`Pairs::received`]
    /// at the previous line, `secs` the time since. Starts a new interval for
    /// the round-trip figure.
    pub fn progress(&self, msgs_before: u64, secs: f64) -> String {
        let mut recent = self.rtt_recent.borrow_mut();
        let p99 = Latency::from_histogram(&recent).p99_us;
        recent.reset();
        format!(
            "| data {:.0} msgs/s, rtt p99 {p99} us, {} round trips, {} in flight, \
             {} given up, {} late, client errors {} ",
            (self.received.get() - msgs_before) as f64 / secs.max(1e-9),
            self.answered.get(),
            self.in_flight.get(),
            self.gave_up.get(),
            self.late.get(),
            report::total(&self.client_errors.borrow()),
        )
    }

    /// Seconds between the start and the stop of sending.
    fn window_s(&self) -> f64 {
        match (self.started.get(), self.stopped.get()) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            (Some(a), None) => a.elapsed().as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Adds the DATA rows and fields to hold's report.
    pub fn add_report(&self, table: &mut Table, m: &mut JsonLine) {
        let rtt = Latency::from_histogram(&self.rtt.borrow());
        let errors = self.errors.borrow();
        let client_errors = self.client_errors.borrow();
        let window_s = self.window_s();
        let per_s = |n: u64| {
            if window_s > 0.0 {
                (n as f64 / window_s * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        let msgs_per_s = per_s(self.received.get());
        table
            .row(
                "DATA pairs",
                format!(
                    "{} pairs x {} msgs/s, {PAYLOAD_BYTES}-byte payload, one message in flight per pair",
                    self.cfg.pairs, self.cfg.rate
                ),
            )
            .row(
                "DATA sent / answered / lost",
                format!(
                    "{} / {} / {} (ERROR-answered {}, given up {}, late ticks {})",
                    self.sent.get(),
                    self.answered.get(),
                    self.lost(),
                    self.refused.get(),
                    self.gave_up.get(),
                    self.late.get()
                ),
            )
            .row(
                "DATA msgs received",
                format!(
                    "{} ({msgs_per_s} msgs/s over {window_s:.1} s, both directions)",
                    self.received.get()
                ),
            )
            .latency("DATA round trip", &rtt)
            .errors("DATA ERROR frames", &errors)
            .reasons("DATA client-detected errors", &client_errors);

        m.insert("data_pairs", json!(self.cfg.pairs));
        m.insert("data_rate", json!(self.cfg.rate));
        m.insert("data_payload", json!(PAYLOAD_BYTES));
        m.insert("data_window_s", json!((window_s * 1000.0).round() / 1000.0));
        m.insert("data_sent", json!(self.sent.get()));
        m.insert("data_answered", json!(self.answered.get()));
        m.insert("data_refused", json!(self.refused.get()));
        m.insert("data_echoed", json!(self.echoed.get()));
        m.insert("data_msgs", json!(self.received.get()));
        m.insert("data_msgs_per_s", json!(msgs_per_s));
        m.insert("data_round_trips_per_s", json!(per_s(self.answered.get())));
        m.insert("data_lost", json!(self.lost()));
        m.insert("data_gave_up", json!(self.gave_up.get()));
        m.insert("data_late", json!(self.late.get()));
        rtt.add_to("data_rtt_", m);
        m.insert("data_errors", errors.to_json());
        m.insert("data_errors_total", json!(errors.total()));
        m.insert("data_client_errors", report::reasons_json(&client_errors));
    }
}

/// A message for [`send`] to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Out {
    pub dst: Addr,
    pub pair: u32,
    pub seq: u64,
}

/// Writes one DATA message. Boxed by the caller, so the payload buffer lives
/// only in the few pair tasks, not in every held connection's state.
pub async fn send(conn: &mut Conn, src: Addr, out: Out) -> Result<(), ConnError> {
    let p = payload(out.pair, out.seq);
    conn.send_frame(kind::DATA, src, out.dst, wire_id(out.seq), &p)
        .await
}

/// One side of a pair, owned by its connection task.
pub struct Endpoint {
    pub me: Addr,
    peer: Addr,
    pair: u32,
    /// Side a only.
    pinger: Option<(Pinger, Timer)>,
    /// Cleared once sending has stopped: the timer is no longer waited on.
    armed: bool,
}

impl Endpoint {
    /// The timer to race in the connection's loop, if this side has one
    /// running.
    pub fn timer(&mut self) -> Option<&mut Timer> {
        match &mut self.pinger {
            Some((_, timer)) if self.armed => Some(timer),
            _ => None,
        }
    }

    /// The timer fired.
    pub fn on_tick(&mut self, pairs: &Pairs) -> Option<Out> {
        let (pinger, timer) = self.pinger.as_mut()?;
        if pairs.phase.get() == Phase::Stopped {
            self.armed = false;
            return None;
        }
        let now = Instant::now();
        let t = pinger.tick(now, pairs.sending());
        timer.reset(pinger.next_at().saturating_duration_since(now));
        if t.gave_up {
            pairs.gave_up.set(pairs.gave_up.get() + 1);
            pairs.in_flight.set(pairs.in_flight.get() - 1);
        }
        if t.late {
            pairs.late.set(pairs.late.get() + 1);
        }
        t.send.map(|seq| self.sent(pairs, seq))
    }

    fn sent(&self, pairs: &Pairs, seq: u64) -> Out {
        pairs.sent.set(pairs.sent.get() + 1);
        pairs.in_flight.set(pairs.in_flight.get() + 1);
        Out {
            dst: self.peer,
            pair: self.pair,
            seq,
        }
    }

    /// A DATA frame arrived. Side b answers with the echo to send, side a
    /// possibly with its next message.
    pub fn on_data(&mut self, f: &SmallFrame, pairs: &Pairs) -> Option<Out> {
        pairs.received.set(pairs.received.get() + 1);
        let id = f.header.id;
        let valid =
            f.header.src == self.peer && is_data_id(id) && payload_matches(self.pair, id, f);
        let Some((pinger, _)) = self.pinger.as_mut() else {
            if !valid {
                pairs.bump_client_error("bad_request");
                return None;
            }
            pairs.echoed.set(pairs.echoed.get() + 1);
            return Some(Out {
                dst: self.peer,
                pair: self.pair,
                seq: id & !ID_FLAG,
            });
        };
        let Some((rtt, next)) = pinger.answered(id, Instant::now(), pairs.sending()) else {
            pairs.bump_client_error("unmatched_echo");
            return None;
        };
        if !valid {
            pairs.bump_client_error("bad_echo");
        }
        pairs.answered.set(pairs.answered.get() + 1);
        pairs.in_flight.set(pairs.in_flight.get() - 1);
        pairs.record_rtt(rtt);
        next.map(|seq| self.sent(pairs, seq))
    }

    /// An ERROR frame with a DATA id arrived (hold has counted it already).
    /// On side a it answers the message in flight if the ids match.
    pub fn on_error(&mut self, id: u64, payload: &[u8], pairs: &Pairs) -> Option<Out> {
        pairs.errors.borrow_mut().add_payload(payload);
        let (pinger, _) = self.pinger.as_mut()?;
        let (_, next) = pinger.answered(id, Instant::now(), pairs.sending())?;
        pairs.refused.set(pairs.refused.get() + 1);
        pairs.in_flight.set(pairs.in_flight.get() - 1);
        next.map(|seq| self.sent(pairs, seq))
    }

    /// The connection ended: a message still out will not be answered.
    pub fn on_exit(&mut self, pairs: &Pairs) {
        if let Some((pinger, _)) = self.pinger.as_mut() {
            if pinger.abandon() {
                pairs.in_flight.set(pairs.in_flight.get() - 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FrameStream, Header};

    #[test]
    fn roles_spread_pairs_over_the_connections() {
        // 5000 connections, 100 pairs: every 50th connection and the next.
        assert_eq!(role(0, 5000, 100), Some((0, Side::A)));
        assert_eq!(role(1, 5000, 100), Some((0, Side::B)));
        assert_eq!(role(2, 5000, 100), None);
        assert_eq!(role(50, 5000, 100), Some((1, Side::A)));
        assert_eq!(role(4951, 5000, 100), Some((99, Side::B)));
        assert_eq!(role(4999, 5000, 100), None);
        let count = |conns: u64, pairs: u64| {
            let mut seen = vec![[false; 2]; pairs as usize];
            for idx in 0..conns {
                if let Some((p, s)) = role(idx, conns, pairs) {
                    let slot = &mut seen[p as usize][(s == Side::B) as usize];
                    assert!(!*slot, "pair {p} side {s:?} twice");
                    *slot = true;
                }
            }
            seen.iter().all(|s| s[0] && s[1])
        };
        assert!(count(5000, 100));
        assert!(count(7, 3));
        assert!(count(6, 3));
        assert!(count(19_900, 9950));
        assert!(count(101, 1));
        // Nothing when the pairs do not fit or there are none.
        assert_eq!(role(0, 5, 3), None);
        assert_eq!(role(0, 5, 0), None);
    }

    #[test]
    fn config_is_checked() {
        assert!(DataConfig::new(100, 10.0, 200).is_ok());
        assert!(DataConfig::new(0, 10.0, 1).is_ok());
        assert!(DataConfig::new(101, 10.0, 200).is_err());
        assert!(DataConfig::new(1, 0.0, 2).is_err());
        assert!(DataConfig::new(1, f64::NAN, 2).is_err());
        assert!(DataConfig::new(1, RATE_MAX * 2.0, 2).is_err());
        assert_eq!(
            DataConfig::new(1, 20.0, 2).unwrap().period(),
            Duration::from_millis(50)
        );
    }

    /// The frame a connection's decoder makes of a DATA message.
    fn frame(id: u64, payload: &[u8]) -> SmallFrame {
        let mut b = Header::new(kind::DATA, [1; 16], [2; 16], id, payload.len())
            .encode()
            .to_vec();
        b.extend_from_slice(payload);
        let (n, ev) = FrameStream::default().push(&b);
        assert_eq!(n, b.len());
        ev.unwrap().unwrap()
    }

    #[test]
    fn ids_and_payloads_are_checked() {
        assert!(is_data_id(wire_id(1)) && !is_data_id(1) && !is_data_id(0));
        let p = payload(7, 42);
        assert_eq!(&p[..8], &42u64.to_be_bytes());
        assert_eq!(&p[8..12], &7u32.to_be_bytes());
        assert_ne!(payload(7, 43), p);
        assert_ne!(payload(8, 42), p);
        assert!(payload_matches(7, wire_id(42), &frame(wire_id(42), &p)));
        // Wrong pair, wrong sequence, cut short, changed within the kept bytes.
        assert!(!payload_matches(8, wire_id(42), &frame(wire_id(42), &p)));
        assert!(!payload_matches(7, wire_id(41), &frame(wire_id(41), &p)));
        assert!(!payload_matches(
            7,
            wire_id(42),
            &frame(wire_id(42), &p[..40])
        ));
        let mut bad = p;
        bad[20] ^= 1;
        assert!(!payload_matches(7, wire_id(42), &frame(wire_id(42), &bad)));
    }

    #[test]
    fn pinger_sends_one_at_a_time_on_schedule() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pinger::new(t0, ms(100));
        // Before the hold: the schedule moves, nothing is sent.
        assert_eq!(p.tick(t0, false), Tick::default());
        assert_eq!(p.next_at(), t0 + ms(100));
        let t = p.tick(t0 + ms(100), true);
        assert_eq!(t.send, Some(1));
        assert!(p.in_flight());
        // Answered in 3 ms; nothing was due meanwhile.
        assert_eq!(
            p.answered(wire_id(1), t0 + ms(103), true),
            Some((ms(3), None))
        );
        assert!(!p.in_flight());
        // A wrong id answers nothing.
        assert_eq!(p.tick(t0 + ms(200), true).send, Some(2));
        assert_eq!(p.answered(wire_id(1), t0 + ms(201), true), None);
        assert_eq!(p.answered(2, t0 + ms(201), true), None);
        // Still out at the next tick: late, then sent on the answer.
        let t = p.tick(t0 + ms(300), true);
        assert_eq!((t.late, t.send), (true, None));
        assert_eq!(
            p.answered(wire_id(2), t0 + ms(350), true),
            Some((ms(150), Some(3)))
        );
        // Given up after GIVE_UP_AFTER at a tick, and the next one sent.
        let late_tick = t0 + ms(350) + GIVE_UP_AFTER;
        let t = p.tick(late_tick, true);
        assert!(t.gave_up);
        assert_eq!(t.send, Some(4));
        // Far behind schedule: the missed slots are skipped.
        assert_eq!(p.next_at(), late_tick + ms(100));
        // Once sending stopped, a late message is not followed by another.
        assert!(p.tick(late_tick + ms(100), true).late);
        assert_eq!(
            p.answered(wire_id(4), late_tick + ms(150), false),
            Some((ms(150), None))
        );
        assert_eq!(p.tick(late_tick + ms(200), true).send, Some(5));
        assert!(p.abandon());
        assert!(!p.abandon());
    }
}
