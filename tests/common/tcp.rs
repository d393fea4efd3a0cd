//! A blocking TCP client. Reads go through a buffer so that a read timeout
//! never loses a partly received frame.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::frame::{self, code, kind, Frame, Presence, State, Welcome, NIL};
use super::tls::{Stream, TestCert};
use super::{random_id, RECV_TIMEOUT};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes asked of the socket per read.
const CHUNK_BYTES: usize = 16 * 1024;

/// Shortest read timeout; the socket API rejects zero.
const MIN_READ_WAIT: Duration = Duration::from_millis(1);

/// Ids of the HEARTBEATs `recv_keepalive` sends on its own, so that their
/// answers can be told apart from a test's frames.
const KEEPALIVE_ID_BASE: u64 = 0x4b41_0000_0000_0000;

/// What one wait for a frame produced.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// EOF or reset.
    Closed,
    /// Nothing within the timeout.
    Silent,
}

pub struct TcpClient {
    stream: Stream,
    buf: Vec<u8>,
    chunk: Vec<u8>,
    closed: bool,
    /// Registered address, nil before WELCOME. Every frame from the gateway
    /// except WELCOME must carry it as `dst`.
    pub addr: Uuid,
    keepalive_sent: u64,
}

impl TcpClient {
    pub fn try_connect(gateway: SocketAddr) -> io::Result<TcpClient> {
        let stream = TcpStream::connect_timeout(&gateway, CONNECT_TIMEOUT)?;
        TcpClient::wrap(stream)
    }

    /// Connects from the source address `source` (any 127.x.y.z works on
    /// loopback), so a test can play several client hosts.
    pub fn try_connect_from(gateway: SocketAddr, source: IpAddr) -> io::Result<TcpClient> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(gateway),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&gateway.into(), CONNECT_TIMEOUT)?;
        TcpClient::wrap(socket.into())
    }

    /// Connects to a TLS listener and completes the TLS handshake.
    pub fn connect_tls(gateway: SocketAddr, cert: &TestCert) -> TcpClient {
        let stream = Stream::connect_tls(gateway, cert.client_config())
            .unwrap_or_else(|e| panic!("TLS connect to gateway {gateway}: {e}"));
        TcpClient::wrap_stream(stream).expect("socket options")
    }

    /// Connects over TLS and registers `addr`.
    pub fn hello_tls(gateway: SocketAddr, cert: &TestCert, addr: Uuid) -> TcpClient {
        let mut client = TcpClient::connect_tls(gateway, cert);
        client.register(addr);
        client
    }

    fn wrap(stream: TcpStream) -> io::Result<TcpClient> {
        TcpClient::wrap_stream(Stream::Plain(stream))
    }

    fn wrap_stream(stream: Stream) -> io::Result<TcpClient> {
        stream.tcp().set_nodelay(true)?;
        stream.tcp().set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(TcpClient {
            stream,
            buf: Vec::new(),
            chunk: vec![0; CHUNK_BYTES],
            closed: false,
            addr: NIL,
            keepalive_sent: 0,
        })
    }

    pub fn connect(gateway: SocketAddr) -> TcpClient {
        TcpClient::try_connect(gateway)
            .unwrap_or_else(|e| panic!("connect to gateway {gateway}: {e}"))
    }

    /// Connects and registers `addr`.
    pub fn hello(gateway: SocketAddr, addr: Uuid) -> TcpClient {
        let mut client = TcpClient::connect(gateway);
        client.register(addr);
        client
    }

    /// Sends HELLO for `addr`, checks the WELCOME field by field, and
    /// remembers `addr` as this connection's address.
    pub fn register(&mut self, addr: Uuid) -> Welcome {
        self.register_with_token(addr, b"")
    }

    /// Like `register`, with `token` as HELLO's payload.
    pub fn register_with_token(&mut self, addr: Uuid, token: &[u8]) -> Welcome {
        let id = random_id();
        self.send(kind::HELLO, addr, NIL, id, token);
        let welcome = self.recv();
        assert_eq!(welcome.kind, kind::WELCOME, "answer to HELLO: {welcome:?}");
        assert_eq!(welcome.src, NIL, "WELCOME src");
        assert_eq!(welcome.dst, addr, "WELCOME dst");
        assert_eq!(welcome.id, id, "WELCOME id");
        self.addr = addr;
        welcome.welcome()
    }

    /// Writes raw bytes; the error is the caller's to judge.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes raw bytes and panics if the socket refuses them.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.write_bytes(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes to gateway: {e}", bytes.len()));
    }

    pub fn send_frame(&mut self, frame: &Frame) {
        self.send_bytes(&frame.encode());
    }

    pub fn send(&mut self, kind: u8, src: Uuid, dst: Uuid, id: u64, payload: &[u8]) {
        self.send_frame(&Frame::new(kind, src, dst, id, payload));
    }

    /// DATA from this connection's address.
    pub fn data(&mut self, dst: Uuid, id: u64, payload: &[u8]) {
        self.send(kind::DATA, self.addr, dst, id, payload);
    }

    /// Half-closes the write side, as a client that is done sending.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Write);
    }

    /// Waits up to `timeout` for one frame. Every frame from the gateway
    /// is checked for version 1, flags 0, `src` nil (except forwarded DATA)
    /// and `dst` = this connection's address (except WELCOME).
    pub fn poll(&mut self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = Frame::parse(&self.buf) {
                self.buf.drain(..used);
                self.check(&frame);
                return Event::Frame(frame);
            }
            if self.closed {
                assert!(
                    self.buf.is_empty(),
                    "gateway closed the connection in the middle of a frame ({} bytes pending)",
                    self.buf.len()
                );
                return Event::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Event::Silent;
            }
            let wait = (deadline - now).max(MIN_READ_WAIT);
            self.stream
                .tcp()
                .set_read_timeout(Some(wait))
                .expect("set read timeout");
            match self.stream.read(&mut self.chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&self.chunk[..n]),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => {}
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => self.closed = true,
                    _ => panic!("read from gateway: {e}"),
                },
            }
        }
    }

    fn check(&self, frame: &Frame) {
        assert_eq!(frame.version, frame::VERSION, "version of {frame:?}");
        assert_eq!(frame.flags, 0, "flags of {frame:?}");
        if frame.kind != kind::DATA {
            assert_eq!(frame.src, NIL, "src of gateway frame {frame:?}");
        }
        if frame.kind != kind::WELCOME {
            assert_eq!(frame.dst, self.addr, "dst of {frame:?}");
        }
    }

    /// The next frame within `timeout`; panics on close or silence.
    pub fn recv_within(&mut self, timeout: Duration) -> Frame {
        match self.poll(timeout) {
            Event::Frame(frame) => frame,
            Event::Closed => panic!(
                "connection of {} closed while a frame was expected",
                self.addr
            ),
            Event::Silent => panic!("no frame for {} within {timeout:?}", self.addr),
        }
    }

    /// The next frame within the default 5 s.
    pub fn recv(&mut self) -> Frame {
        self.recv_within(RECV_TIMEOUT)
    }

    /// The next frame, which must be `kind` echoing `id`.
    pub fn expect_frame(&mut self, kind: u8, id: u64) -> Frame {
        let frame = self.recv();
        assert_eq!(frame.kind, kind, "kind of {frame:?}");
        assert_eq!(frame.id, id, "id of {frame:?}");
        frame
    }

    /// The next frame, which must be ERROR `code` with `id`.
    pub fn expect_error(&mut self, code: u16, id: u64) -> Frame {
        let frame = self.recv();
        assert_error(&frame, code, id);
        frame
    }

    /// The next frame must be ERROR `code` with `id`, and then the
    /// connection must close.
    pub fn expect_error_then_close(&mut self, code: u16, id: u64) {
        self.expect_error(code, id);
        self.expect_closed();
    }

    /// Asserts EOF or reset within 5 s, with no frame before it.
    pub fn expect_closed(&mut self) {
        match self.poll(RECV_TIMEOUT) {
            Event::Closed => {}
            Event::Frame(frame) => panic!("expected close, got {frame:?}"),
            Event::Silent => panic!(
                "connection of {} still open after {RECV_TIMEOUT:?}",
                self.addr
            ),
        }
    }

    /// Asserts that nothing arrives and the connection stays open for `time`.
    pub fn expect_silence(&mut self, time: Duration) {
        match self.poll(time) {
            Event::Silent => {}
            Event::Frame(frame) => panic!("expected silence, got {frame:?}"),
            Event::Closed => panic!("connection of {} closed, expected it open", self.addr),
        }
    }

    /// Sends HEARTBEAT `id` and expects it back.
    pub fn heartbeat(&mut self, id: u64) {
        self.send(kind::HEARTBEAT, self.addr, NIL, id, b"");
        let reply = self.expect_frame(kind::HEARTBEAT, id);
        assert!(
            reply.payload.is_empty(),
            "HEARTBEAT payload {:?}",
            reply.payload
        );
    }

    /// Sends SUBSCRIBE and returns the PRESENCE that must answer it at once.
    pub fn subscribe(&mut self, target: Uuid, id: u64) -> Presence {
        self.send(kind::SUBSCRIBE, self.addr, NIL, id, target.as_bytes());
        let presence = self.expect_frame(kind::PRESENCE, id).presence();
        assert_eq!(presence.address, target, "PRESENCE address");
        presence
    }

    pub fn unsubscribe(&mut self, target: Uuid, id: u64) {
        self.send(kind::UNSUBSCRIBE, self.addr, NIL, id, target.as_bytes());
    }

    /// The next frame other than the answers to its own HEARTBEATs, sent
    /// every `every` while waiting so the connection stays alive under a
    /// short heartbeat timeout.
    pub fn recv_keepalive(&mut self, timeout: Duration, every: Duration) -> Frame {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            assert!(
                now < deadline,
                "no frame for {} within {timeout:?}",
                self.addr
            );
            self.keepalive_sent += 1;
            let id = KEEPALIVE_ID_BASE + self.keepalive_sent;
            self.send(kind::HEARTBEAT, self.addr, NIL, id, b"");
            let until = (now + every).min(deadline);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.poll(left) {
                    Event::Frame(frame)
                        if frame.kind == kind::HEARTBEAT && frame.id > KEEPALIVE_ID_BASE => {}
                    Event::Frame(frame) => return frame,
                    Event::Closed => panic!("connection of {} closed while waiting", self.addr),
                    Event::Silent => break,
                }
            }
        }
    }

    /// Sends STATE_PUT `id` with `blob` as this connection's state.
    pub fn state_put(&mut self, id: u64, blob: &[u8]) {
        self.send(kind::STATE_PUT, self.addr, NIL, id, blob);
    }

    /// Sends STATE_PUT and waits up to `timeout` for its STATE_ACK, which
    /// must be the next frame; returns `updated_at_us`.
    pub fn put_acked_within(&mut self, id: u64, blob: &[u8], timeout: Duration) -> u64 {
        self.state_put(id, blob);
        let frame = self.recv_within(timeout);
        assert_eq!(
            frame.kind,
            kind::STATE_ACK,
            "answer to STATE_PUT id {id}: {frame:?}"
        );
        assert_eq!(frame.id, id, "id of STATE_ACK {frame:?}");
        frame.state_ack()
    }

    /// STATE_PUT and its STATE_ACK within the default 5 s.
    pub fn put_acked(&mut self, id: u64, blob: &[u8]) -> u64 {
        self.put_acked_within(id, blob, RECV_TIMEOUT)
    }

    /// Sends STATE_GET `id` for `target`.
    pub fn state_get(&mut self, target: Uuid, id: u64) {
        self.send(kind::STATE_GET, self.addr, NIL, id, target.as_bytes());
    }

    /// STATE_GET whose answer must be the next frame, a STATE for `target`
    /// echoing `id`.
    pub fn get_state(&mut self, target: Uuid, id: u64) -> State {
        self.state_get(target, id);
        let state = self.expect_frame(kind::STATE, id).state();
        assert_eq!(state.address, target, "STATE address");
        state
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.tcp().local_addr().expect("local addr")
    }
}

/// Asserts that `frame` is ERROR `code` echoing `id`, with a UTF-8 message.
pub fn assert_error(frame: &Frame, code: u16, id: u64) {
    assert_eq!(
        frame.kind,
        kind::ERROR,
        "expected ERROR {code}, got {frame:?}"
    );
    let (got, message) = frame.error();
    assert_eq!(
        got,
        code,
        "ERROR code {got} ({}) message {message:?}, expected {code} ({})",
        frame::error_name(got),
        frame::error_name(code)
    );
    assert_eq!(frame.id, id, "id of ERROR {}", frame::error_name(code));
}

/// Codes whose table row says the connection is kept.
pub fn is_kept_code(error: u16) -> bool {
    (code::BAD_FRAME..=code::TIMEOUT).contains(&error) && !frame::error_closes(error)
}
