//! Simulated controllers for the gateway and its web console.
//!
//! Each simulated controller keeps a TCP connection to the gateway: HELLO,
//! HEARTBEATs when quiet, a STATE_PUT of its state (a temperature and two
//! relays, as JSON) at start, every `--state-every-s` seconds and after every
//! change, and answers commands sent to it as DATA with a DATA reply to the
//! sender, with the command's id:
//!
//! - `{"set":"relay1","on":true}` switches a relay (`relay1`, `relay2`),
//!   replies `{"ok":true,"relay1":true}` and stores the new state;
//! - `{"get":"state"}` replies `{"ok":true,"state":{...}}`;
//! - anything else replies `{"ok":false,"error":"..."}`.
//!
//! When the gateway goes away it reconnects with backoff (0.5 s doubling to
//! 30 s, with jitter), like a real device.
//!
//! ```sh
//! cargo run --example controller -- --code 6fa76274-4205-419a-990f-dc6cbcef8305
//! cargo run --example controller -- --count 50 --state-every-s 5   # prints the generated codes
//! ```
//!
//! It speaks the binary protocol through the gateway's own codec
//! (`uring_gateway::proto`) over blocking std sockets, one thread per
//! controller.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use uring_gateway::proto::{self, Decoded, ErrorCode, ErrorPayload, Header, Kind, Welcome};
use uuid::Uuid;

/// Most controllers one process simulates (one thread each).
const MAX_CONTROLLERS: usize = 2000;
/// Stack of a controller thread; it holds a few small buffers.
const THREAD_STACK_BYTES: usize = 256 * 1024;
/// How long a read waits before the loop looks at its timers.
const TICK: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for WELCOME after HELLO.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Relays a controller has, named `relay1`, `relay2`, ...
const RELAYS: usize = 2;
/// Frames up to this much above the announced maximum payload are accepted
/// (STATE frames carry a 25-byte prefix).
const PAYLOAD_SLACK: u32 = 1024;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulated controllers for uring-gateway (see examples/controller.rs)")]
struct Args {
    /// The gateway's TCP address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    gateway: String,
    /// A controller code (UUID) to simulate; may be repeated.
    #[arg(long = "code", value_name = "UUID")]
    codes: Vec<Uuid>,
    /// How many controllers in all: random codes are added to the `--code`s
    /// up to this number, and printed.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Seconds between periodic STATE_PUTs (0: only at start and on change).
    #[arg(long, default_value_t = 10)]
    state_every_s: u64,
    /// The HELLO token, when the gateway runs with `[auth] mode = "jwt"`.
    #[arg(long, default_value = "")]
    token: String,
    /// Log only errors and connection changes, not every command.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut codes = args.codes.clone();
    while codes.len() < args.count {
        codes.push(Uuid::new_v4());
    }
    if codes.len() > MAX_CONTROLLERS {
        bail!("at most {MAX_CONTROLLERS} controllers per process");
    }
    let gateway = args
        .gateway
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.gateway))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.gateway))?;
    let mut out = io::stdout().lock();
    for code in &codes {
        writeln!(out, "controller {code}")?;
    }
    out.flush()?;
    drop(out);

    let threads = codes
        .into_iter()
        .map(|code| {
            let args = args.clone();
            thread::Builder::new()
                .name(format!("ctl-{}", short(code)))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || run(Device::new(code), gateway, &args))
        })
        .collect::<io::Result<Vec<_>>>()
        .context("starting controller threads")?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn short(code: Uuid) -> String {
    code.simple().to_string()[..8].to_string()
}

fn log(code: Uuid, message: &str) {
    eprintln!("[{}] {message}", short(code));
}

// ----- the simulated device ---------------------------------------------

struct Device {
    code: Uuid,
    relays: [bool; RELAYS],
    temperature_c: f64,
    started: Instant,
    rng: u64,
}

impl Device {
    fn new(code: Uuid) -> Device {
        let (high, low) = code.as_u64_pair();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        Device {
            code,
            relays: [false; RELAYS],
            temperature_c: 21.5,
            started: Instant::now(),
            rng: (high ^ low ^ nanos) | 1,
        }
    }

    /// xorshift64: enough randomness for jitter and a drifting temperature.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Lets the temperature drift a little, pulled back towards 21.5 °C.
    fn step(&mut self) {
        let noise = self.random() - 0.5;
        self.temperature_c += noise * 0.4 + (21.5 - self.temperature_c) * 0.1;
    }

    fn state(&self) -> Value {
        let mut state = serde_json::Map::new();
        let tenths = (self.temperature_c * 10.0).round() / 10.0;
        state.insert("temperature_c".into(), json!(tenths));
        for (i, on) in self.relays.iter().enumerate() {
            state.insert(format!("relay{}", i + 1), json!(on));
        }
        state.insert("uptime_s".into(), json!(self.started.elapsed().as_secs()));
        Value::Object(state)
    }

    /// Runs one command; returns the reply and whether the state changed.
    fn command(&mut self, payload: &[u8]) -> (Value, bool) {
        let Ok(cmd) = serde_json::from_slice::<Value>(payload) else {
            return (json!({"ok": false, "error": "commands are JSON"}), false);
        };
        if let Some(name) = cmd.get("set").and_then(Value::as_str) {
            let relay = name
                .strip_prefix("relay")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=RELAYS).contains(n));
            let (Some(n), Some(on)) = (relay, cmd.get("on").and_then(Value::as_bool)) else {
                return (
                    json!({"ok": false, "error": format!("set takes relay1..relay{RELAYS} and \"on\": true or false")}),
                    false,
                );
            };
            let changed = self.relays[n - 1] != on;
            self.relays[n - 1] = on;
            return (json!({"ok": true, name: on}), changed);
        }
        if cmd.get("get").and_then(Value::as_str) == Some("state") {
            return (json!({"ok": true, "state": self.state()}), false);
        }
        let error = r#"unknown command; try {"set":"relay1","on":true} or {"get":"state"}"#;
        (json!({"ok": false, "error": error}), false)
    }

    /// A random duration between half of `ceiling` and `ceiling`.
    fn jitter(&mut self, ceiling: Duration) -> Duration {
        ceiling.mul_f64(0.5 + self.random() / 2.0)
    }
}

// ----- the connection -------------------------------------------------------

/// How a session ended.
enum End {
    /// Try again after a backoff.
    Retry(String),
    /// Give up on this controller (a refused token, or another connection
    /// took the code over: reconnecting would only take it back).
    Stop(String),
}

/// Connects, reconnects with backoff, forever (or until [`End::Stop`]).
fn run(mut device: Device, gateway: SocketAddr, args: &Args) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut welcomed = false;
        let end = session(&mut device, gateway, args, &mut welcomed)
            .unwrap_or_else(|e| End::Retry(e.to_string()));
        if welcomed {
            backoff = BACKOFF_MIN;
        }
        match end {
            End::Stop(reason) => {
                log(device.code, &format!("stopped: {reason}"));
                return;
            }
            End::Retry(reason) => {
                let wait = device.jitter(backoff);
                log(
                    device.code,
                    &format!("offline: {reason}; retrying in {:.1} s", wait.as_secs_f64()),
                );
                thread::sleep(wait);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

struct Link {
    code: Uuid,
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    next_id: u64,
    max_payload: u32,
    last_sent: Instant,
    last_heard: Instant,
}

impl Link {
    fn connect(code: Uuid, gateway: SocketAddr) -> io::Result<Link> {
        let stream = TcpStream::connect_timeout(&gateway, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Link {
            code,
            stream,
            inbuf: Vec::new(),
            out: Vec::new(),
            next_id: 1,
            max_payload: proto::DEFAULT_MAX_PAYLOAD,
            last_sent: Instant::now(),
            last_heard: Instant::now(),
        })
    }

    /// Sends a frame with the given id.
    fn send_id(&mut self, kind: Kind, dst: Uuid, id: u64, payload: &[u8]) -> io::Result<()> {
        self.out.clear();
        proto::encode_frame(&mut self.out, kind, self.code, dst, id, payload);
        self.stream.write_all(&self.out)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Sends a frame with the next id of our own.
    fn send(&mut self, kind: Kind, dst: Uuid, payload: &[u8]) -> io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_id(kind, dst, id, payload)
    }

    /// Waits up to one tick for input; returns the complete frames.
    fn read_frames(&mut self) -> anyhow::Result<Vec<(Header, Vec<u8>)>> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => bail!("the gateway closed the connection"),
            Ok(n) => {
                self.inbuf.extend_from_slice(&chunk[..n]);
                self.last_heard = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
        let mut frames = Vec::new();
        loop {
            match proto::decode(&self.inbuf, self.max_payload.saturating_add(PAYLOAD_SLACK)) {
                Decoded::Incomplete { .. } => return Ok(frames),
                Decoded::Frame {
                    header,
                    payload,
                    consumed,
                } => {
                    frames.push((header, payload.to_vec()));
                    self.inbuf.drain(..consumed);
                }
                Decoded::Reject { code, .. } => bail!("unreadable frame from the gateway: {code}"),
            }
        }
    }
}

/// One connection, from HELLO until it breaks.
fn session(
    device: &mut Device,
    gateway: SocketAddr,
    args: &Args,
    welcomed: &mut bool,
) -> anyhow::Result<End> {
    let code = device.code;
    let mut link = Link::connect(code, gateway)?;
    link.send(Kind::Hello, Uuid::nil(), args.token.as_bytes())?;
    let asked = Instant::now();
    let heartbeat_timeout = loop {
        if asked.elapsed() > WELCOME_TIMEOUT {
            return Ok(End::Retry("no WELCOME".into()));
        }
        let mut welcome = None;
        for (header, payload) in link.read_frames()? {
            match header.kind() {
                Some(Kind::Welcome) => welcome = Welcome::parse(&payload),
                Some(Kind::Error) => {
                    if let Some(end) = on_error(code, &header, &payload) {
                        return Ok(end);
                    }
                }
                _ => {}
            }
        }
        if let Some(w) = welcome {
            link.max_payload = w.max_payload;
            break Duration::from_millis(w.heartbeat_timeout_ms.into());
        }
    };
    *welcomed = true;
    log(code, &format!("online at {gateway}"));

    let state_every = Duration::from_secs(args.state_every_s);
    put_state(&mut link, device)?;
    let mut last_state = Instant::now();
    loop {
        for (header, payload) in link.read_frames()? {
            match header.kind() {
                Some(Kind::Data) => {
                    let (reply, changed) = device.command(&payload);
                    if !args.quiet {
                        let cmd = String::from_utf8_lossy(&payload);
                        log(code, &format!("{} says {cmd}; reply {reply}", header.src));
                    }
                    let reply = reply.to_string();
                    link.send_id(Kind::Data, header.src, header.id, reply.as_bytes())?;
                    if changed {
                        put_state(&mut link, device)?;
                        last_state = Instant::now();
                    }
                }
                Some(Kind::Error) => {
                    if let Some(end) = on_error(code, &header, &payload) {
                        return Ok(end);
                    }
                }
                _ => {} // WELCOME again, HEARTBEAT, STATE_ACK, TIME_RESP
            }
        }
        if !state_every.is_zero() && last_state.elapsed() >= state_every {
            device.step();
            put_state(&mut link, device)?;
            last_state = Instant::now();
        }
        if link.last_sent.elapsed() >= heartbeat_timeout / 3 {
            link.send(Kind::Heartbeat, Uuid::nil(), &[])?;
        }
        if link.last_heard.elapsed() >= heartbeat_timeout {
            return Ok(End::Retry("the gateway went silent".into()));
        }
    }
}

fn put_state(link: &mut Link, device: &Device) -> io::Result<()> {
    let state = device.state().to_string();
    link.send(Kind::StatePut, Uuid::nil(), state.as_bytes())
}

/// Logs an ERROR; `Some` ends the session now. Other errors that close the
/// connection end it through the closed socket.
fn on_error(code: Uuid, header: &Header, payload: &[u8]) -> Option<End> {
    let Some(error) = ErrorPayload::parse(payload) else {
        return Some(End::Retry("unreadable ERROR from the gateway".into()));
    };
    let text = format!(
        "ERROR {} (frame {}): {}",
        error.code, header.id, error.message
    );
    log(code, &text);
    matches!(error.code, ErrorCode::AuthFailed | ErrorCode::TakenOver).then_some(End::Stop(text))
}
