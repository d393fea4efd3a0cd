//! A tiny echo-relay test double of the gateway, written independently of the
//! client's codec so that a bug shared by both sides cannot hide.
//!
//! It accepts TCP and WebSocket (`/ws`) connections on port 0, each also
//! inside TLS on a port of its own (rustls, a self-signed certificate for
//! `localhost` and 127.0.0.1 made per test process), answers HELLO
//! with WELCOME and HEARTBEAT with HEARTBEAT, and forwards DATA by `dst` to the
//! registered connection (or answers `dst_offline`). On WebSocket it takes
//! binary frames and JSON text frames (PROTOCOL.md section 8: HELLO, HEARTBEAT
//! and DATA); a connection whose HELLO came as text gets JSON text back, with
//! payloads as `payload` when they are UTF-8 and `payload_b64` otherwise. Optionally it refuses
//! every HELLO, or answers every Nth DATA with `slow_consumer` instead of
//! forwarding it. It counts what it did so tests can check the client's
//! report against it. It runs on its own glommio executor thread and stops
//! accepting after `RELAY_LIFETIME`.

pub mod run;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use futures_rustls::TlsAcceptor;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The double stops accepting after this long; tests finish well before.
pub const RELAY_LIFETIME: Duration = Duration::from_secs(300);
const READ_BUFFER_BYTES: usize = 4096;
const HTTP_REQUEST_MAX_BYTES: usize = 4096;
const PAYLOAD_MAX: u32 = 1 << 20;

const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const HEARTBEAT: u8 = 0x03;
const DATA: u8 = 0x10;
const ERROR: u8 = 0x7F;

const ERR_BAD_FRAME: u16 = 1;
const ERR_NOT_REGISTERED: u16 = 2;
const ERR_AUTH_FAILED: u16 = 3;
const ERR_DST_OFFLINE: u16 = 4;
const ERR_SLOW_CONSUMER: u16 = 7;

#[derive(Debug, Clone, Copy, Default)]
pub struct RelayOptions {
    /// Answer every HELLO with ERROR auth_failed and close.
    pub refuse_hello: bool,
    /// When > 0, every Nth DATA is answered `slow_consumer` instead of forwarded.
    pub error_every: u64,
}

#[derive(Debug, Default)]
pub struct RelayStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub ws_upgrades: AtomicU64,
    pub hellos: AtomicU64,
    pub heartbeats: AtomicU64,
    pub data_forwarded: AtomicU64,
    pub errors_sent: AtomicU64,
    /// WebSocket frames from the client without the mask bit (must stay 0).
    pub unmasked_ws_frames: AtomicU64,
    /// Frames the double could not make sense of (must stay 0).
    pub bad_frames: AtomicU64,
    /// TLS handshakes completed on the TLS and WSS ports, and how many of
    /// them resumed a session.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
    /// TLS handshakes that failed (e.g. the client refused the certificate).
    pub tls_failed: AtomicU64,
}

impl RelayStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

#[allow(dead_code)] // not every test file uses every port
pub struct Relay {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// The TCP and WebSocket listeners inside TLS.
    pub tls: SocketAddr,
    pub wss: SocketAddr,
    /// The PEM file of the TLS ports' self-signed certificate, for --ca.
    pub ca: PathBuf,
    pub stats: Arc<RelayStats>,
}

/// The TLS ports' certificate: self-signed, no CA flag (so it can serve as
/// its own trust root), for the names `localhost` and 127.0.0.1.
struct TestCert {
    pem_path: PathBuf,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn test_cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names).expect("test certificate");
        let pem_path =
            std::env::temp_dir().join(format!("bench-client-relay-{}.pem", std::process::id()));
        std::fs::write(&pem_path, made.cert.pem()).expect("write test certificate");
        TestCert {
            pem_path,
            cert: made.cert.der().clone(),
            key: made.signing_key.serialize_der(),
        }
    })
}

fn tls_acceptor() -> TlsAcceptor {
    let cert = test_cert();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.clone()], key)
        .expect("test certificate and key");
    TlsAcceptor::from(Arc::new(config))
}

impl Relay {
    /// Waits until every connection the double accepted has ended.
    pub fn wait_all_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if RelayStats::get(&self.stats.open) == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

pub fn start(opts: RelayOptions) -> Relay {
    let stats = Arc::new(RelayStats::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_stats = stats.clone();
    std::thread::spawn(move || {
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .name("relay-double")
            .io_memory(256 << 10)
            .ring_depth(1024)
            .make()
            .expect("relay executor");
        ex.run(async move {
            let bind = || TcpListener::bind("127.0.0.1:0").expect("bind");
            let listeners = [bind(), bind(), bind(), bind()];
            tx.send(listeners.each_ref().map(|l| l.local_addr().unwrap()))
                .unwrap();
            let shared = Rc::new(Shared {
                opts,
                stats: thread_stats,
                routes: RefCell::new(HashMap::new()),
                next_conn: Cell::new(0),
                data_seen: Cell::new(0),
            });
            let acceptor = tls_acceptor();
            let kinds = [
                (false, None),
                (true, None),
                (false, Some(acceptor.clone())),
                (true, Some(acceptor)),
            ];
            let loops: Vec<_> = listeners
                .into_iter()
                .zip(kinds)
                .map(|(l, (ws, tls))| glommio::spawn_local(accept_loop(l, ws, tls, shared.clone())))
                .collect();
            for l in loops {
                l.await;
            }
        });
    });
    let [tcp, ws, tls, wss] = rx.recv().expect("relay started");
    Relay {
        tcp,
        ws,
        tls,
        wss,
        ca: test_cert().pem_path.clone(),
        stats,
    }
}

/// Registered address -> (connection id, its outbox).
type Routes = HashMap<[u8; 16], (u64, Rc<Outbox>)>;

struct Shared {
    opts: RelayOptions,
    stats: Arc<RelayStats>,
    routes: RefCell<Routes>,
    next_conn: Cell<u64>,
    data_seen: Cell<u64>,
}

async fn accept_loop(
    listener: TcpListener,
    ws: bool,
    tls: Option<TlsAcceptor>,
    shared: Rc<Shared>,
) {
    let end = Instant::now() + RELAY_LIFETIME;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        let Some(Ok(stream)) = accepted else {
            if Instant::now() >= end {
                return;
            }
            continue;
        };
        shared.stats.accepted.fetch_add(1, Ordering::SeqCst);
        shared.stats.open.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        glommio::spawn_local(async move {
            match tls {
                None => serve(stream, ws, &shared).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let stats = &shared.stats;
                        stats.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                        let kind = stream.get_ref().1.handshake_kind();
                        if kind == Some(rustls::HandshakeKind::Resumed) {
                            stats.tls_resumed.fetch_add(1, Ordering::SeqCst);
                        }
                        serve(stream, ws, &shared).await;
                    }
                    Err(_) => {
                        shared.stats.tls_failed.fetch_add(1, Ordering::SeqCst);
                    }
                },
            }
            shared.stats.open.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
}

fn frame(kind: u8, dst: [u8; 16], id: u64, payload: &[u8]) -> Vec<u8> {
    frame_from(kind, [0; 16], dst, id, payload)
}

fn frame_from(kind: u8, src: [u8; 16], dst: [u8; 16], id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(48 + payload.len());
    f.push(1);
    f.push(kind);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn error_frame(dst: [u8; 16], id: u64, code: u16, msg: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(msg.as_bytes());
    frame(ERROR, dst, id, &p)
}

const JSON_KINDS: [(&str, u8); 5] = [
    ("hello", HELLO),
    ("welcome", WELCOME),
    ("heartbeat", HEARTBEAT),
    ("data", DATA),
    ("error", ERROR),
];

/// A client JSON text frame as a binary frame; `None` if it is not one.
fn json_to_frame(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let name = v.get("kind")?.as_str()?;
    let kind = JSON_KINDS.iter().find(|(n, _)| *n == name)?.1;
    let addr = |key: &str| match v.get(key) {
        None | Some(serde_json::Value::Null) => Some([0; 16]),
        Some(s) => Some(uuid::Uuid::parse_str(s.as_str()?).ok()?.into_bytes()),
    };
    let id = v.get("id").map_or(Some(0), |i| i.as_u64())?;
    let payload = match (v.get("payload"), v.get("payload_b64")) {
        (Some(p), None) => p.as_str()?.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_str()?)
            .ok()?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => return None,
    };
    Some(frame_from(kind, addr("src")?, addr("dst")?, id, &payload))
}

/// A binary frame from the double as the gateway's JSON text.
fn frame_to_json(f: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let uuid = |b: &[u8]| uuid::Uuid::from_slice(b).unwrap().hyphenated().to_string();
    let kind = JSON_KINDS.iter().find(|(_, k)| *k == f[1]).unwrap().0;
    let num = |r: std::ops::Range<usize>| {
        r.clone()
            .fold(0u64, |acc, i| (acc << 8) | u64::from(f[48 + i]))
    };
    let mut o = serde_json::json!({
        "kind": kind, "src": uuid(&f[8..24]), "dst": uuid(&f[24..40]),
        "id": u64::from_be_bytes(f[40..48].try_into().unwrap()),
    });
    let payload = &f[48..];
    match f[1] {
        WELCOME => {
            o["server_time_us"] = num(0..8).into();
            o["heartbeat_timeout_ms"] = num(8..12).into();
            o["max_payload"] = num(12..16).into();
        }
        ERROR => {
            o["code"] = num(0..2).into();
            o["message"] = String::from_utf8_lossy(&payload[2..]).into();
        }
        HEARTBEAT => {}
        _ => match std::str::from_utf8(payload) {
            Ok(text) => o["payload"] = text.into(),
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
                o["payload_b64"] = b64.into();
            }
        },
    }
    o.to_string().into_bytes()
}

/// Header of a server (unmasked) WebSocket message of `len` bytes.
fn ws_header(opcode: u8, len: usize) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match len {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out
}

/// Outgoing bytes of one connection. Frames are appended here and one writer
/// task sends whatever has piled up in one write, so the double batches the
/// way a real gateway does and is not the first bottleneck of a benchmark.
struct Outbox {
    ws: bool,
    /// The HELLO came as JSON text: everything goes back as JSON text.
    json: Cell<bool>,
    buf: RefCell<Vec<u8>>,
    closed: Cell<bool>,
    notify: LocalSender<()>,
}

impl Outbox {
    fn push(&self, frame: &[u8]) {
        let mut buf = self.buf.borrow_mut();
        let was_empty = buf.is_empty();
        if self.json.get() {
            let text = frame_to_json(frame);
            buf.extend_from_slice(&ws_header(0x1, text.len()));
            buf.extend_from_slice(&text);
        } else {
            if self.ws {
                buf.extend_from_slice(&ws_header(0x2, frame.len()));
            }
            buf.extend_from_slice(frame);
        }
        if was_empty {
            let _ = self.notify.try_send(());
        }
    }

    fn close(&self) {
        self.closed.set(true);
        let _ = self.notify.try_send(());
    }
}

async fn serve<S>(stream: S, ws: bool, shared: &Rc<Shared>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    if ws && !ws_accept(&mut reader, &mut writer, shared).await {
        return;
    }
    let (notify, wakeups) = local_channel::new_unbounded::<()>();
    let outbox = Rc::new(Outbox {
        ws,
        json: Cell::new(false),
        buf: RefCell::new(Vec::new()),
        closed: Cell::new(false),
        notify,
    });
    let out = outbox.clone();
    let writer_task = glommio::spawn_local(async move {
        let mut sending = Vec::new();
        while wakeups.recv().await.is_some() {
            std::mem::swap(&mut sending, &mut *out.buf.borrow_mut());
            if !sending.is_empty() && writer.write_all(&sending).await.is_err() {
                break;
            }
            sending.clear();
            if out.closed.get() && out.buf.borrow().is_empty() {
                break;
            }
        }
        let _ = writer.close().await;
    });
    let conn_id = shared.next_conn.get();
    shared.next_conn.set(conn_id + 1);
    let registered = read_frames(&mut reader, ws, conn_id, &outbox, shared).await;
    if let Some(addr) = registered {
        let mut routes = shared.routes.borrow_mut();
        if routes.get(&addr).is_some_and(|(id, _)| *id == conn_id) {
            routes.remove(&addr);
        }
    }
    outbox.close();
    writer_task.await;
}

/// Reads the HTTP upgrade and answers 101. False when the request is bad.
async fn ws_accept<R, W>(reader: &mut BufReader<R>, writer: &mut W, shared: &Shared) -> bool
where
    R: futures_lite::AsyncRead + Unpin,
    W: futures_lite::AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let before = request.len();
        if reader.read_until(b'\n', &mut request).await.unwrap_or(0) == 0 || request.len() == before
        {
            return false;
        }
        if request.len() > HTTP_REQUEST_MAX_BYTES {
            return false;
        }
    }
    let text = String::from_utf8_lossy(&request);
    if !text.starts_with("GET /ws HTTP/1.1\r\n") {
        shared.stats.bad_frames.fetch_add(1, Ordering::SeqCst);
        return false;
    }
    let key = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_string())
    });
    let Some(key) = key else { return false };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if writer.write_all(response.as_bytes()).await.is_err() {
        return false;
    }
    shared.stats.ws_upgrades.fetch_add(1, Ordering::SeqCst);
    true
}

/// Reads the next client frame: raw on TCP, one masked binary or JSON text
/// message on WebSocket (then also whether it was text). `None` ends the
/// connection.
async fn next_frame<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    ws: bool,
    shared: &Shared,
) -> Option<(Vec<u8>, bool)> {
    if !ws {
        let mut header = [0u8; 48];
        reader.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes(header[4..8].try_into().unwrap());
        if header[0] != 1 || len > PAYLOAD_MAX {
            shared.stats.bad_frames.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        let mut f = header.to_vec();
        f.resize(48 + len as usize, 0);
        reader.read_exact(&mut f[48..]).await.ok()?;
        return Some((f, false));
    }
    let mut h = [0u8; 2];
    reader.read_exact(&mut h).await.ok()?;
    if h[1] & 0x80 == 0 {
        shared
            .stats
            .unmasked_ws_frames
            .fetch_add(1, Ordering::SeqCst);
        return None;
    }
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b).await.ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            reader.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut mask = [0u8; 4];
    reader.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    match h[0] {
        0x82 if payload.len() >= 48 && payload[0] == 1 => {
            let len = u32::from_be_bytes(payload[4..8].try_into().unwrap()) as usize;
            if payload.len() != 48 + len {
                shared.stats.bad_frames.fetch_add(1, Ordering::SeqCst);
                return None;
            }
            Some((payload, false))
        }
        0x81 => {
            let f = json_to_frame(&payload);
            if f.is_none() {
                shared.stats.bad_frames.fetch_add(1, Ordering::SeqCst);
            }
            Some((f?, true))
        }
        0x88 => None,
        _ => {
            shared.stats.bad_frames.fetch_add(1, Ordering::SeqCst);
            None
        }
    }
}

/// Handles frames until the connection ends; returns the registered address.
async fn read_frames<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    ws: bool,
    conn_id: u64,
    tx: &Rc<Outbox>,
    shared: &Shared,
) -> Option<[u8; 16]> {
    let stats = &shared.stats;
    let mut me: Option<[u8; 16]> = None;
    let send = |f: Vec<u8>| tx.push(&f);
    while let Some((f, text)) = next_frame(reader, ws, shared).await {
        let kind = f[1];
        let src: [u8; 16] = f[8..24].try_into().unwrap();
        let dst: [u8; 16] = f[24..40].try_into().unwrap();
        let id = u64::from_be_bytes(f[40..48].try_into().unwrap());
        let reply_to = me.unwrap_or([0; 16]);
        match (kind, me) {
            (HELLO, _) => {
                tx.json.set(text);
                if shared.opts.refuse_hello {
                    stats.errors_sent.fetch_add(1, Ordering::SeqCst);
                    send(error_frame(
                        [0; 16],
                        id,
                        ERR_AUTH_FAILED,
                        "refused by test double",
                    ));
                    return me;
                }
                stats.hellos.fetch_add(1, Ordering::SeqCst);
                me = Some(src);
                shared
                    .routes
                    .borrow_mut()
                    .insert(src, (conn_id, tx.clone()));
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as u64;
                let mut p = now.to_be_bytes().to_vec();
                p.extend_from_slice(&90_000u32.to_be_bytes());
                p.extend_from_slice(&PAYLOAD_MAX.to_be_bytes());
                send(frame(WELCOME, src, id, &p));
            }
            (_, None) => {
                stats.errors_sent.fetch_add(1, Ordering::SeqCst);
                send(error_frame(
                    [0; 16],
                    id,
                    ERR_NOT_REGISTERED,
                    "say HELLO first",
                ));
            }
            (HEARTBEAT, Some(_)) => {
                stats.heartbeats.fetch_add(1, Ordering::SeqCst);
                send(frame(HEARTBEAT, reply_to, id, &[]));
            }
            (DATA, Some(_)) => {
                let n = shared.data_seen.get() + 1;
                shared.data_seen.set(n);
                let every = shared.opts.error_every;
                if every > 0 && n.is_multiple_of(every) {
                    stats.errors_sent.fetch_add(1, Ordering::SeqCst);
                    send(error_frame(
                        reply_to,
                        id,
                        ERR_SLOW_CONSUMER,
                        "injected by test double",
                    ));
                    continue;
                }
                let route = shared.routes.borrow().get(&dst).map(|(_, s)| s.clone());
                match route {
                    Some(peer) => {
                        stats.data_forwarded.fetch_add(1, Ordering::SeqCst);
                        peer.push(&f);
                    }
                    None => {
                        stats.errors_sent.fetch_add(1, Ordering::SeqCst);
                        send(error_frame(
                            reply_to,
                            id,
                            ERR_DST_OFFLINE,
                            "no such address",
                        ));
                    }
                }
            }
            (_, Some(_)) => {
                stats.bad_frames.fetch_add(1, Ordering::SeqCst);
                stats.errors_sent.fetch_add(1, Ordering::SeqCst);
                send(error_frame(
                    reply_to,
                    id,
                    ERR_BAD_FRAME,
                    "test double knows few kinds",
                ));
            }
        }
    }
    me
}
