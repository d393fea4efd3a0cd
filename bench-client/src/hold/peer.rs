//! `hold --nats` / `hold --mqtt`: the same idle connections, counters,
//! phases and report as against the gateway, held against a NATS server or
//! an MQTT broker, so that the servers' memory per connection compares.
//!
//! - NATS: CONNECT + SUB to the connection's own subject (its address in
//!   hex) + PING; up at the PONG. The heartbeat is a PING, its answer the
//!   PONG. The server's own PINGs (every 2 minutes by default; it closes a
//!   client after 2 unanswered) get a PONG.
//! - MQTT: CONNECT (clean session, keepalive [`mqtt_keepalive_s`]), then
//!   SUBSCRIBE to the own topic at QoS 0; up at the SUBACK that grants it.
//!   The heartbeat is a PINGREQ, its answer the PINGRESP. Ends with
//!   DISCONNECT.
//!
//! A connection keeps a 64-byte receive buffer, as a gateway one does, and
//! sends only constant packets once set up: nothing is allocated per
//! heartbeat. The server's first INFO line, longer than the buffer, is
//! skipped on the fly (nothing in it is needed); any other operation that
//! does not fit ends the connection.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;

use super::{bounded, next_wake, Beats, HoldCtx, Wake};
use crate::conn::{self, ConnError, RX_SMALL_BYTES};
use crate::mqtt;
use crate::nats;
use crate::pingpong::setup::SetupError;
use crate::pingpong::Wire;
use crate::proto::Addr;
use crate::report;

/// Packet id of the one SUBSCRIBE an MQTT connection sends.
const SUBSCRIBE_ID: u16 = 1;
/// Largest MQTT packet body taken: every whole packet fits the buffer.
const MQTT_MAX_REMAINING: usize = RX_SMALL_BYTES - mqtt::FIXED_HEADER_MAX;

/// MQTT keepalive for a heartbeat interval: three intervals (the broker
/// closes a connection silent for 1.5 x keepalive), at most 65535 s.
pub(super) fn mqtt_keepalive_s(heartbeat: Duration) -> u16 {
    heartbeat
        .as_secs()
        .saturating_mul(3)
        .min(u64::from(u16::MAX)) as u16
}

/// What the server sent, as far as a held connection cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum In {
    /// NATS PONG or MQTT PINGRESP: the answer to our PING / PINGREQ (and,
    /// while a NATS connection sets up, to the setup's PING).
    Pong,
    /// A NATS PING from the server, to be answered with PONG.
    Ping,
    /// NATS `-ERR`, by its text.
    Err(String),
    ConnAck(u8),
    SubAck {
        packet_id: u16,
        granted: u8,
    },
    /// A NATS MSG or MQTT PUBLISH: nobody publishes to these subjects or
    /// topics, so it is counted by this name.
    Unexpected(&'static str),
}

fn proto_err(wire: Wire, name: &'static str) -> SetupError {
    match wire {
        Wire::Mqtt => SetupError::Mqtt(name),
        _ => SetupError::Nats(name),
    }
}

fn io_err(e: impl Into<std::io::Error>) -> SetupError {
    SetupError::Conn(ConnError::Io(conn::io_reason(&e.into())))
}

/// The event at the start of `buf` and the bytes it used; `Some((None, n))`
/// for an operation that needs nothing done (NATS INFO, +OK).
fn decode(wire: Wire, buf: &[u8]) -> Result<Option<(Option<In>, usize)>, SetupError> {
    if wire == Wire::Mqtt {
        let parsed = mqtt::parse(buf, MQTT_MAX_REMAINING).map_err(|e| proto_err(wire, e.name()))?;
        return Ok(parsed.map(|(packet, used)| {
            let ev = match packet {
                mqtt::Packet::PingResp => In::Pong,
                mqtt::Packet::ConnAck { code, .. } => In::ConnAck(code),
                mqtt::Packet::SubAck { packet_id, granted } => In::SubAck { packet_id, granted },
                mqtt::Packet::Publish { .. } => In::Unexpected("mqtt_publish"),
            };
            (Some(ev), used)
        }));
    }
    let parsed = nats::parse(buf).map_err(|e| proto_err(wire, e.name()))?;
    Ok(parsed.map(|(op, used)| {
        let ev = match op {
            nats::Op::Pong => Some(In::Pong),
            nats::Op::Ping => Some(In::Ping),
            nats::Op::Info | nats::Op::Ok => None,
            nats::Op::Err(text) => Some(In::Err(String::from_utf8_lossy(&buf[text]).into_owned())),
            nats::Op::Msg { .. } => Some(In::Unexpected("nats_msg")),
        };
        (ev, used)
    }))
}

/// A connection's receive buffer: bytes read and not yet decoded.
struct RxBuf {
    bytes: [u8; RX_SMALL_BYTES],
    head: u8,
    tail: u8,
    /// Dropping the rest of an INFO line longer than the buffer.
    skipping: bool,
}

impl RxBuf {
    fn new() -> RxBuf {
        RxBuf {
            bytes: [0; RX_SMALL_BYTES],
            head: 0,
            tail: 0,
            skipping: false,
        }
    }

    /// Where the next read goes; never empty after [`RxBuf::next`] gave
    /// `Ok(None)`.
    fn space(&mut self) -> &mut [u8] {
        &mut self.bytes[usize::from(self.tail)..]
    }

    fn filled(&mut self, n: usize) {
        self.tail += n as u8;
    }

    /// The next event among the buffered bytes, or `None` once they hold no
    /// whole one; then the partial one is moved to the front.
    fn next(&mut self, wire: Wire) -> Result<Option<In>, SetupError> {
        // Every pass consumes bytes or returns.
        loop {
            let (head, tail) = (usize::from(self.head), usize::from(self.tail));
            let pending = &self.bytes[head..tail];
            if self.skipping {
                let Some(at) = pending.iter().position(|&c| c == b'\n') else {
                    (self.head, self.tail) = (0, 0);
                    return Ok(None);
                };
                self.head += at as u8 + 1;
                self.skipping = false;
                continue;
            }
            let Some((ev, used)) = decode(wire, pending)? else {
                break;
            };
            self.head += used as u8;
            if ev.is_some() {
                return Ok(ev);
            }
        }
        let (head, tail) = (usize::from(self.head), usize::from(self.tail));
        self.bytes.copy_within(head..tail, 0);
        (self.head, self.tail) = (0, (tail - head) as u8);
        if tail - head == RX_SMALL_BYTES {
            // A full buffer without an end: an INFO line is dropped as it
            // comes, anything else cannot be held.
            if wire != Wire::Nats || !self.bytes[..4].eq_ignore_ascii_case(b"INFO") {
                return Err(match wire {
                    Wire::Mqtt => proto_err(wire, mqtt::ParseError::TooLarge.name()),
                    _ => proto_err(wire, nats::ParseError::LineTooLong.name()),
                });
            }
            (self.tail, self.skipping) = (0, true);
        }
        Ok(None)
    }
}

/// One connection to a NATS server or MQTT broker.
struct PeerConn {
    stream: TcpStream,
    wire: Wire,
    rx: RxBuf,
}

impl PeerConn {
    /// Connects from `source`, and registers: NATS up to the PONG, MQTT up
    /// to the SUBACK. The caller bounds the whole setup in time.
    async fn open(
        target: SocketAddrV4,
        source: Ipv4Addr,
        wire: Wire,
        addr: &Addr,
        keepalive_s: u16,
    ) -> Result<PeerConn, SetupError> {
        let stream = conn::start_connect(target, source).map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        let mut conn = PeerConn {
            stream,
            wire,
            rx: RxBuf::new(),
        };
        let mut out = Vec::with_capacity(128);
        match wire {
            Wire::Mqtt => mqtt::encode_connect(&mut out, addr, keepalive_s),
            _ => nats::encode_setup(&mut out, &nats::subject(addr)),
        }
        // The first write waits for the connect to finish and reports its error.
        conn.send(&out).await?;
        let mut connected = false;
        // Bounded by the caller's setup timeout; every pass reads or returns.
        loop {
            match (wire, conn.recv().await?) {
                (Wire::Nats, In::Pong) => return Ok(conn),
                (_, In::Ping) => conn.send(nats::PONG).await?,
                (_, In::Err(text)) => return Err(SetupError::NatsErr(text)),
                (_, In::ConnAck(code)) if !connected => {
                    if let Some(refusal) = mqtt::connack_refusal(code) {
                        return Err(SetupError::MqttRefused(refusal));
                    }
                    connected = true;
                    out.clear();
                    mqtt::encode_subscribe(&mut out, SUBSCRIBE_ID, &mqtt::topic(addr));
                    conn.send(&out).await?;
                }
                (_, In::SubAck { packet_id, granted })
                    if connected && packet_id == SUBSCRIBE_ID =>
                {
                    return match granted {
                        mqtt::SUBACK_FAILURE => Err(SetupError::MqttRefused("mqtt_suback_failure")),
                        _ => Ok(conn),
                    };
                }
                (_, In::Unexpected(name)) => return Err(proto_err(wire, name)),
                (_, In::Pong) => return Err(proto_err(wire, "mqtt_unasked_pingresp")),
                (_, In::ConnAck(_)) => return Err(proto_err(wire, "mqtt_second_connack")),
                (_, In::SubAck { .. }) => return Err(proto_err(wire, "mqtt_unasked_suback")),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SetupError> {
        self.stream.write_all(bytes).await.map_err(io_err)
    }

    /// Waits for the next event. Cancel-safe: all state is in `self`.
    async fn recv(&mut self) -> Result<In, SetupError> {
        // Every pass returns an event or reads, and a read of 0 ends it.
        loop {
            if let Some(ev) = self.rx.next(self.wire)? {
                return Ok(ev);
            }
            let n = self.stream.read(self.rx.space()).await.map_err(io_err)?;
            if n == 0 {
                return Err(SetupError::Conn(ConnError::Eof));
            }
            self.rx.filled(n);
        }
    }

    /// MQTT: DISCONNECT first. Then FIN, so the server sees an orderly end.
    async fn close(&mut self) {
        if self.wire == Wire::Mqtt {
            // Best effort: the connection is being dropped either way.
            let _ = self.stream.write_all(mqtt::DISCONNECT).await;
        }
        let _ = self.stream.close().await;
    }
}

/// One connection: set up, then heartbeat until told to stop or dropped.
pub(super) async fn conn_task(idx: u64, ctx: Rc<HoldCtx>, permit: StaticPermit) {
    let cfg = &ctx.cfg;
    let addr = uuid::Uuid::new_v4().into_bytes();
    let source = conn::source_addr(idx, cfg.shared.source_addrs);
    let keepalive_s = mqtt_keepalive_s(cfg.heartbeat);
    let setup = PeerConn::open(cfg.target(idx), source, cfg.wire, &addr, keepalive_s);
    let setup = async { setup.await.map(Box::new) };
    let result = bounded(cfg.shared.setup_timeout, setup).await;
    drop(permit);
    let mut conn = match result {
        Ok(conn) => conn,
        Err(e) => return ctx.setup_failed(&e),
    };
    ctx.registered(idx, source);
    let reason = heartbeat_loop(&ctx, &mut conn, idx).await;
    if reason.is_none() {
        conn.close().await;
    }
    ctx.ended(reason.as_deref());
}

/// Sends the heartbeats, answers the server's PINGs and counts the rest.
/// Returns `None` when told to stop, or why the connection ended.
async fn heartbeat_loop(ctx: &HoldCtx, conn: &mut PeerConn, idx: u64) -> Option<String> {
    let mut beats = Beats::new(ctx, idx);
    let ping = match conn.wire {
        Wire::Mqtt => mqtt::PINGREQ,
        _ => nats::PING,
    };
    // Ends on stop (the hold is bounded in time) or when the connection ends.
    loop {
        let none = futures_lite::future::pending();
        let wake = next_wake(ctx, conn.recv(), &mut beats.timer, none).await;
        let ev = match wake {
            Wake::Stop => return None,
            Wake::Data => continue,
            Wake::Heartbeat => {
                let id = beats.due(ctx);
                if let Err(e) = conn.send(ping).await {
                    return Some(e.reason());
                }
                beats.sent(ctx, id);
                continue;
            }
            Wake::In(Err(e)) => return Some(e.reason()),
            Wake::In(Ok(ev)) => ev,
        };
        let surprise = match ev {
            In::Pong => {
                beats.answered(ctx, None);
                continue;
            }
            In::Ping => match conn.send(nats::PONG).await {
                Ok(()) => continue,
                Err(e) => return Some(e.reason()),
            },
            In::Err(text) => {
                ctx.errors.borrow_mut().add_text(text.as_bytes());
                continue;
            }
            In::Unexpected(name) => name,
            In::ConnAck(_) | In::SubAck { .. } => "mqtt_ack_after_setup",
        };
        report::bump(&mut ctx.unexpected.borrow_mut(), surprise);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` into a buffer `chunk` bytes at a time, as reads would,
    /// and collects the events.
    fn events(wire: Wire, bytes: &[u8], chunk: usize) -> Result<Vec<In>, SetupError> {
        let mut rx = RxBuf::new();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            while let Some(ev) = rx.next(wire)? {
                out.push(ev);
            }
            if at == bytes.len() {
                return Ok(out);
            }
            let space = rx.space();
            let n = chunk.min(space.len()).min(bytes.len() - at);
            space[..n].copy_from_slice(&bytes[at..at + n]);
            rx.filled(n);
            at += n;
        }
    }

    #[test]
    fn keepalive_is_three_heartbeats_capped() {
        assert_eq!(mqtt_keepalive_s(Duration::from_secs(1)), 3);
        assert_eq!(mqtt_keepalive_s(Duration::from_secs(30)), 90);
        assert_eq!(mqtt_keepalive_s(Duration::from_secs(21_845)), 65_535);
        assert_eq!(mqtt_keepalive_s(Duration::from_secs(86_400)), 65_535);
    }

    #[test]
    fn nats_long_info_is_skipped_at_every_read_size() {
        let mut s = b"INFO {\"server_id\":\"".to_vec();
        s.extend_from_slice(&[b'x'; 300]);
        s.extend_from_slice(b"\",\"max_payload\":1048576}\r\n");
        s.extend_from_slice(b"PONG\r\n+OK\r\nPING\r\n-ERR 'Stale Connection'\r\n");
        s.extend_from_slice(b"MSG 0123 1 3\r\nabc\r\nINFO {}\r\npong\r\n");
        let want = [
            In::Pong,
            In::Ping,
            In::Err("Stale Connection".into()),
            In::Unexpected("nats_msg"),
            In::Pong,
        ];
        for chunk in 1..=RX_SMALL_BYTES {
            assert_eq!(
                events(Wire::Nats, &s, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn nats_other_long_lines_end_the_connection() {
        let mut s = b"-ERR '".to_vec();
        s.extend_from_slice(&[b'x'; 100]);
        s.extend_from_slice(b"'\r\n");
        let e = events(Wire::Nats, &s, 16).unwrap_err();
        assert_eq!(e.reason(), "nats_line_too_long");
        let e = events(Wire::Nats, b"HELLO\r\n", 16).unwrap_err();
        assert_eq!(e.reason(), "nats_unknown_op");
    }

    #[test]
    fn mqtt_packets() {
        let mut s = vec![0x20, 0x02, 0x00, 0x00]; // CONNACK accepted
        s.extend_from_slice(&[0x90, 0x03, 0x00, 0x01, 0x00]); // SUBACK id 1, QoS 0
        s.extend_from_slice(&[0xD0, 0x00, 0xD0, 0x00]); // 2 x PINGRESP
        s.extend_from_slice(&[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i']); // PUBLISH
        let want = [
            In::ConnAck(0),
            In::SubAck {
                packet_id: 1,
                granted: 0,
            },
            In::Pong,
            In::Pong,
            In::Unexpected("mqtt_publish"),
        ];
        for chunk in 1..=8 {
            assert_eq!(
                events(Wire::Mqtt, &s, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
        // A PUBLISH that would not fit is refused once its length is known.
        let e = events(Wire::Mqtt, &[0x30, 0x7f, 0x00], 3).unwrap_err();
        assert_eq!(e.reason(), "mqtt_packet_too_large");
    }
}
