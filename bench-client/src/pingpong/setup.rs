//! `pingpong` connection setup per wire: gateway HELLO/WELCOME (over TCP, or
//! WebSocket in binary or JSON form), NATS CONNECT/SUB/PING/PONG, MQTT
//! CONNECT/SUBSCRIBE; also used by `fan`.

use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use super::ws_wire::{self, WsLink};
use super::{PingpongConfig, Wire};
use crate::cli::Shared;
use crate::conn::{self, io_reason, Conn, ConnError, Transport};
use crate::mqtt;
use crate::nats;
use crate::proto::{kind, Addr};
use crate::report::{self, ErrorCounts, Reasons};

/// MQTT keepalive sent in CONNECT: the broker closes a connection silent for
/// 1.5 x this, 90 s, which is the gateway's default heartbeat timeout. As on
/// the gateway wire, pairs send no keepalives of their own: traffic is enough.
const MQTT_KEEPALIVE_S: u16 = 60;
/// Packet id of the one SUBSCRIBE each MQTT connection sends.
const MQTT_SUBSCRIBE_ID: u16 = 1;
/// Longest remaining length accepted during MQTT setup: CONNACK and SUBACK
/// are 2 and 3 bytes.
const MQTT_SETUP_MAX_REMAINING: usize = 16;

type PairConns = (TcpConn, TcpConn);

/// A registered connection handed to a driver.
pub(crate) struct TcpConn {
    pub(crate) stream: TcpStream,
    pub(crate) addr: Addr,
    pub(crate) leftover: Vec<u8>,
    /// WebSocket framing state ([`Wire::Ws`], [`Wire::WsJson`]).
    pub(crate) ws: Option<WsLink>,
}

/// Connects and registers every pair with at most `connect_concurrency`
/// setups in flight; b sides at `cfg.peer` when given. Returns the pairs
/// that made it, failures by reason, and ERROR frames seen during setup.
pub(super) async fn set_up_pairs(cfg: &PingpongConfig) -> (Vec<PairConns>, Reasons, ErrorCounts) {
    let b_shared = Shared {
        target: cfg.peer.unwrap_or(cfg.shared.target),
        ..cfg.shared.clone()
    };
    let sem = Rc::new(Semaphore::new(cfg.shared.connect_concurrency as u64));
    let tq = glommio::executor().current_task_queue();
    let mut tasks = Vec::with_capacity(cfg.pairs as usize);
    // A pair's two setups count as two in flight (or one when the limit is 1).
    let units = 2.min(cfg.shared.connect_concurrency as u64);
    for i in 0..u64::from(cfg.pairs) {
        let permit = sem
            .acquire_static_permit(units)
            .await
            .expect("semaphore is never closed");
        let (a_shared, b_shared) = (cfg.shared.clone(), b_shared.clone());
        let wire = cfg.wire;
        let task = glommio::spawn_local_into(
            async move {
                let (a, b) = futures_lite::future::zip(
                    set_up_one(&a_shared, wire, 2 * i),
                    set_up_one(&b_shared, wire, 2 * i + 1),
                )
                .await;
                drop(permit);
                (a, b)
            },
            tq,
        )
        .expect("current task queue exists");
        tasks.push(task);
    }
    let mut pairs = Vec::with_capacity(tasks.len());
    let mut failures = Reasons::new();
    let mut errors = ErrorCounts::default();
    // Each setup is bounded by the setup timeout, so these awaits end.
    for task in tasks {
        match task.await {
            (Ok(a), Ok(b)) => pairs.push((a, b)),
            (a, b) => {
                for e in [a.err(), b.err()].into_iter().flatten() {
                    e.record(&mut failures, &mut errors);
                }
            }
        }
    }
    (pairs, failures, errors)
}

/// Why one connection's setup failed.
#[derive(Debug)]
pub(crate) enum SetupError {
    Conn(ConnError),
    /// The NATS server answered the setup with `-ERR <text>`.
    NatsErr(String),
    /// Anything else wrong with the NATS server's answer.
    Nats(&'static str),
    /// The MQTT broker refused CONNECT (CONNACK return code, by name) or the
    /// subscription (SUBACK failure).
    MqttRefused(&'static str),
    /// Anything else wrong with the MQTT broker's answer.
    Mqtt(&'static str),
    /// Anything wrong with the gateway's WebSocket or JSON answer.
    Ws(&'static str),
}

impl SetupError {
    /// Counts the failure by reason, and what the target refused it with
    /// among the errors.
    pub(crate) fn record(&self, failures: &mut Reasons, errors: &mut ErrorCounts) {
        match self {
            SetupError::Conn(ConnError::Refused(code)) => errors.add(*code, b""),
            SetupError::NatsErr(text) => errors.add_text(text.as_bytes()),
            SetupError::MqttRefused(name) => errors.add_text(name.as_bytes()),
            _ => {}
        }
        report::bump(failures, &self.reason());
    }

    pub(crate) fn reason(&self) -> String {
        match self {
            SetupError::Conn(e) => e.reason(),
            SetupError::NatsErr(_) => "nats_err".into(),
            SetupError::Nats(r) => (*r).into(),
            SetupError::MqttRefused(_) => "mqtt_refused".into(),
            SetupError::Mqtt(r) | SetupError::Ws(r) => (*r).into(),
        }
    }
}

impl From<ConnError> for SetupError {
    fn from(e: ConnError) -> SetupError {
        SetupError::Conn(e)
    }
}

fn io_setup_err(e: impl Into<std::io::Error>) -> SetupError {
    SetupError::Conn(ConnError::Io(io_reason(&e.into())))
}

pub(crate) async fn set_up_one(
    shared: &Shared,
    wire: Wire,
    index: u64,
) -> Result<TcpConn, SetupError> {
    let addr = uuid::Uuid::new_v4().into_bytes();
    let timeout = shared.setup_timeout;
    let source = conn::source_addr(index, shared.source_addrs);
    let setup = async {
        let no_ws = |(stream, leftover)| (stream, leftover, None);
        match wire {
            Wire::Gateway => {
                let mut conn = Conn::open(shared.target, source, Transport::Tcp, None).await?;
                conn.hello(addr, &shared.token, 1).await?;
                Ok(no_ws(conn.into_tcp_parts()))
            }
            Wire::Ws | Wire::WsJson => ws_setup(shared, source, &addr, wire == Wire::WsJson).await,
            Wire::Nats => nats_setup(shared, source, &addr).await.map(no_ws),
            Wire::Mqtt => mqtt_setup(shared, source, &addr).await.map(no_ws),
        }
    };
    let (stream, leftover, ws) = futures_lite::future::or(setup, async {
        glommio::timer::sleep(timeout).await;
        Err(SetupError::Conn(ConnError::Timeout))
    })
    .await?;
    Ok(TcpConn {
        stream,
        addr,
        leftover,
        ws,
    })
}

/// TCP connect, upgrade to /ws, HELLO, WELCOME: binary as `hold --ws` does,
/// or with `json` a text HELLO, which puts the connection in JSON mode, and
/// a JSON WELCOME. Returns the stream, the bytes read past WELCOME and the
/// framing state.
async fn ws_setup(
    shared: &Shared,
    source: std::net::Ipv4Addr,
    addr: &Addr,
    json: bool,
) -> Result<(TcpStream, Vec<u8>, Option<WsLink>), SetupError> {
    let mut conn = Conn::open(shared.target, source, Transport::Ws, None).await?;
    if !json {
        conn.hello(*addr, &shared.token, 1).await?;
        let (stream, leftover, mask) = conn.into_ws_parts();
        return Ok((stream, leftover, Some(WsLink::new(mask, false))));
    }
    let mut hello = Vec::with_capacity(256);
    ws_wire::encode_json(&mut hello, kind::HELLO, addr, None, 1, &shared.token);
    conn.send_text(&hello).await?;
    let (mut stream, early, mask) = conn.into_ws_parts();
    let mut link = WsLink::new(mask, true);
    let leftover = link.json_welcome(&mut stream, early).await?;
    Ok((stream, leftover, Some(link)))
}

/// A connection to the peer broker from `source`, Nagle off; the first
/// write waits for the connect to finish.
fn peer_connect(shared: &Shared, source: std::net::Ipv4Addr) -> Result<TcpStream, SetupError> {
    let stream = conn::start_connect(shared.target, source).map_err(io_setup_err)?;
    stream.set_nodelay(true).map_err(io_setup_err)?;
    Ok(stream)
}

/// The NATS equivalent of HELLO/WELCOME: CONNECT, SUB to the own subject,
/// PING, then wait for PONG (INFO, +OK and PING may come before it). Returns
/// the stream and any bytes read past the PONG.
async fn nats_setup(
    shared: &Shared,
    source: std::net::Ipv4Addr,
    addr: &Addr,
) -> Result<(TcpStream, Vec<u8>), SetupError> {
    let mut stream = peer_connect(shared, source)?;
    let mut out = Vec::with_capacity(128);
    nats::encode_setup(&mut out, &nats::subject(addr));
    // The first write waits for the connect to finish and reports its error.
    stream.write_all(&out).await.map_err(io_setup_err)?;
    // Heap buffer for setup only: room for the longest line the parser takes.
    let mut buf = vec![0u8; nats::MAX_LINE + 1024];
    let (mut head, mut got) = (0, 0);
    // Bounded by the caller's setup timeout; every pass reads or returns.
    loop {
        while let Some((op, used)) =
            nats::parse(&buf[head..got]).map_err(|e| SetupError::Nats(e.name()))?
        {
            let base = head;
            head += used;
            match op {
                nats::Op::Pong => return Ok((stream, buf[head..got].to_vec())),
                nats::Op::Err(r) => {
                    let text = &buf[base + r.start..base + r.end];
                    return Err(SetupError::NatsErr(
                        String::from_utf8_lossy(text).into_owned(),
                    ));
                }
                nats::Op::Ping => stream.write_all(nats::PONG).await.map_err(io_setup_err)?,
                nats::Op::Info | nats::Op::Ok => {}
                nats::Op::Msg { .. } => return Err(SetupError::Nats("nats_msg_before_pong")),
            }
        }
        buf.copy_within(head..got, 0);
        got -= head;
        head = 0;
        if got == buf.len() {
            return Err(SetupError::Nats(nats::ParseError::LineTooLong.name()));
        }
        let n = stream.read(&mut buf[got..]).await.map_err(io_setup_err)?;
        if n == 0 {
            return Err(SetupError::Conn(ConnError::Eof));
        }
        got += n;
    }
}

/// The MQTT equivalent of HELLO/WELCOME: CONNECT (clean session), wait for
/// CONNACK and check its code, SUBSCRIBE to the own topic at QoS 0, wait for
/// SUBACK and check that it granted the subscription. Only then does the
/// broker deliver to this endpoint. Returns the stream and any bytes read
/// past the SUBACK.
async fn mqtt_setup(
    shared: &Shared,
    source: std::net::Ipv4Addr,
    addr: &Addr,
) -> Result<(TcpStream, Vec<u8>), SetupError> {
    let mut stream = peer_connect(shared, source)?;
    let mut out = Vec::with_capacity(64);
    mqtt::encode_connect(&mut out, addr, MQTT_KEEPALIVE_S);
    // The first write waits for the connect to finish and reports its error.
    stream.write_all(&out).await.map_err(io_setup_err)?;
    let mut buf = [0u8; 256];
    let (mut head, mut got) = (0, 0);
    let mut connected = false;
    // Bounded by the caller's setup timeout; every pass reads or returns.
    loop {
        while let Some((packet, used)) = mqtt::parse(&buf[head..got], MQTT_SETUP_MAX_REMAINING)
            .map_err(|e| SetupError::Mqtt(e.name()))?
        {
            head += used;
            match packet {
                mqtt::Packet::ConnAck { code, .. } if !connected => {
                    if let Some(refusal) = mqtt::connack_refusal(code) {
                        return Err(SetupError::MqttRefused(refusal));
                    }
                    connected = true;
                    out.clear();
                    mqtt::encode_subscribe(&mut out, MQTT_SUBSCRIBE_ID, &mqtt::topic(addr));
                    stream.write_all(&out).await.map_err(io_setup_err)?;
                }
                mqtt::Packet::SubAck { packet_id, granted }
                    if connected && packet_id == MQTT_SUBSCRIBE_ID =>
                {
                    if granted == mqtt::SUBACK_FAILURE {
                        return Err(SetupError::MqttRefused("mqtt_suback_failure"));
                    }
                    return Ok((stream, buf[head..got].to_vec()));
                }
                mqtt::Packet::ConnAck { .. } => {
                    return Err(SetupError::Mqtt("mqtt_second_connack"))
                }
                mqtt::Packet::SubAck { .. } => return Err(SetupError::Mqtt("mqtt_unasked_suback")),
                mqtt::Packet::Publish { .. } => {
                    return Err(SetupError::Mqtt("mqtt_publish_before_suback"))
                }
                mqtt::Packet::PingResp => return Err(SetupError::Mqtt("mqtt_unasked_pingresp")),
            }
        }
        buf.copy_within(head..got, 0);
        got -= head;
        head = 0;
        // The parser refuses anything longer than fits, so there is room.
        let n = stream.read(&mut buf[got..]).await.map_err(io_setup_err)?;
        if n == 0 {
            return Err(SetupError::Conn(ConnError::Eof));
        }
        got += n;
    }
}
