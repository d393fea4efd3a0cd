//! A blocking WebSocket client over tungstenite, in binary or JSON mode.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::{Error as WsError, Message};
use uuid::Uuid;

use super::frame::{self, kind, Frame, Welcome, NIL};
use super::json::{self, check_gateway_json, get_str, get_u64, get_uuid, uuid_str};
use super::tcp::assert_error;
use super::tls::{Stream, TestCert};
use super::{random_id, RECV_TIMEOUT};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_READ_WAIT: Duration = Duration::from_millis(1);

/// What one wait for a message produced.
#[derive(Debug)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    /// Close frame, EOF or reset.
    Closed,
    /// Nothing within the timeout.
    Silent,
}

pub struct WsClient {
    ws: WebSocket<Stream>,
    /// Registered address, nil before welcome.
    pub addr: Uuid,
}

impl WsClient {
    /// Opens a WebSocket on `/ws`.
    pub fn connect(gateway: SocketAddr) -> WsClient {
        let stream = TcpStream::connect_timeout(&gateway, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to gateway ws {gateway}: {e}"));
        WsClient::upgrade(Stream::Plain(stream), &format!("ws://{gateway}/ws"))
    }

    /// Opens a WebSocket on `/ws` over TLS (wss://).
    pub fn connect_tls(gateway: SocketAddr, cert: &TestCert) -> WsClient {
        let stream = Stream::connect_tls(gateway, cert.client_config())
            .unwrap_or_else(|e| panic!("TLS connect to gateway wss {gateway}: {e}"));
        WsClient::upgrade(stream, &format!("wss://localhost:{}/ws", gateway.port()))
    }

    fn upgrade(stream: Stream, url: &str) -> WsClient {
        let tcp = stream.tcp();
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        let (ws, response) = tungstenite::client::client(url, stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        assert_eq!(response.status().as_u16(), 101, "upgrade status");
        WsClient { ws, addr: NIL }
    }

    /// Connects and registers `addr` with a JSON hello.
    pub fn hello_json(gateway: SocketAddr, addr: Uuid) -> WsClient {
        let mut client = WsClient::connect(gateway);
        client.register_json(addr);
        client
    }

    /// Connects and registers `addr` with a binary HELLO.
    pub fn hello_binary(gateway: SocketAddr, addr: Uuid) -> WsClient {
        let mut client = WsClient::connect(gateway);
        client.register_binary(addr);
        client
    }

    /// Sends a JSON hello and checks the JSON welcome; returns it.
    pub fn register_json(&mut self, addr: Uuid) -> Value {
        let id = random_id();
        self.send_json(&json!({"kind": "hello", "src": uuid_str(addr), "id": id}));
        let welcome = self.recv_json_unchecked();
        assert_eq!(
            get_str(&welcome, "kind"),
            "welcome",
            "answer to hello: {welcome}"
        );
        assert_eq!(get_uuid(&welcome, "src"), NIL, "welcome src");
        assert_eq!(get_uuid(&welcome, "dst"), addr, "welcome dst");
        assert_eq!(get_u64(&welcome, "id"), id, "welcome id");
        self.addr = addr;
        welcome
    }

    /// Sends a binary HELLO and checks the binary WELCOME.
    pub fn register_binary(&mut self, addr: Uuid) -> Welcome {
        let id = random_id();
        self.send_frame(&Frame::new(kind::HELLO, addr, NIL, id, Vec::new()));
        let welcome = self.recv_frame();
        assert_eq!(welcome.kind, kind::WELCOME, "answer to HELLO: {welcome:?}");
        assert_eq!(welcome.dst, addr, "WELCOME dst");
        assert_eq!(welcome.id, id, "WELCOME id");
        self.addr = addr;
        welcome.welcome()
    }

    /// Sends a message; the error is the caller's to judge.
    pub fn try_send(&mut self, message: Message) -> Result<(), WsError> {
        self.ws.send(message)
    }

    fn send(&mut self, message: Message) {
        self.try_send(message)
            .unwrap_or_else(|e| panic!("WebSocket send: {e}"));
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(Message::text(text.to_string()));
    }

    pub fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string());
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.send(Message::binary(bytes.to_vec()));
    }

    pub fn send_frame(&mut self, frame: &Frame) {
        self.send_binary(&frame.encode());
    }

    pub fn ping(&mut self, payload: &[u8]) {
        self.send(Message::Ping(payload.to_vec().into()));
    }

    /// An unsolicited pong, which RFC 6455 allows as a one-way heartbeat.
    pub fn pong(&mut self, payload: &[u8]) {
        self.send(Message::Pong(payload.to_vec().into()));
    }

    /// Waits up to `timeout` for one message. Pings are answered by
    /// tungstenite and not reported.
    pub fn poll(&mut self, timeout: Duration) -> WsEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return WsEvent::Silent;
            }
            let wait = (deadline - now).max(MIN_READ_WAIT);
            self.ws
                .get_ref()
                .tcp()
                .set_read_timeout(Some(wait))
                .expect("set read timeout");
            match self.ws.read() {
                Ok(Message::Text(text)) => return WsEvent::Text(text.as_str().to_string()),
                Ok(Message::Binary(bytes)) => return WsEvent::Binary(bytes.to_vec()),
                Ok(Message::Pong(bytes)) => return WsEvent::Pong(bytes.to_vec()),
                Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(_)) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return WsEvent::Closed
                }
                Err(WsError::Io(e)) => match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => {}
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof => return WsEvent::Closed,
                    _ => panic!("WebSocket read: {e}"),
                },
                Err(WsError::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return WsEvent::Closed,
                Err(e) => panic!("WebSocket read: {e}"),
            }
        }
    }

    /// The next data message within `timeout`, skipping pongs.
    fn recv_message(&mut self, timeout: Duration) -> WsEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.poll(left) {
                WsEvent::Pong(_) => {}
                WsEvent::Silent => panic!("no message for {} within {timeout:?}", self.addr),
                WsEvent::Closed => panic!(
                    "WebSocket of {} closed while a message was expected",
                    self.addr
                ),
                event => return event,
            }
        }
    }

    fn recv_json_unchecked(&mut self) -> Value {
        match self.recv_message(RECV_TIMEOUT) {
            WsEvent::Text(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("gateway sent text that is not JSON ({e}): {text}")),
            WsEvent::Binary(bytes) => panic!(
                "expected a JSON text message, got binary {:?}",
                Frame::parse(&bytes)
            ),
            event => unreachable!("recv_message returned {event:?}"),
        }
    }

    /// The next message, which must be a JSON text frame; checked for
    /// `kind`, `src`, `dst` and `id`.
    pub fn recv_json(&mut self) -> Value {
        let value = self.recv_json_unchecked();
        check_gateway_json(&value, self.addr);
        value
    }

    /// The next message, which must be JSON of `kind` echoing `id`.
    pub fn expect_json(&mut self, kind: &str, id: u64) -> Value {
        let value = self.recv_json();
        assert_eq!(get_str(&value, "kind"), kind, "kind of {value}");
        assert_eq!(get_u64(&value, "id"), id, "id of {value}");
        value
    }

    /// The next message, which must be a binary frame holding exactly one
    /// frame; checked like TCP frames.
    pub fn recv_frame(&mut self) -> Frame {
        match self.recv_message(RECV_TIMEOUT) {
            WsEvent::Binary(bytes) => {
                let frame = Frame::parse_exact(&bytes);
                assert_eq!(frame.version, frame::VERSION, "version of {frame:?}");
                assert_eq!(frame.flags, 0, "flags of {frame:?}");
                if frame.kind != kind::DATA {
                    assert_eq!(frame.src, NIL, "src of gateway frame {frame:?}");
                }
                if frame.kind != kind::WELCOME {
                    assert_eq!(frame.dst, self.addr, "dst of {frame:?}");
                }
                frame
            }
            WsEvent::Text(text) => panic!("expected a binary message, got text {text}"),
            event => unreachable!("recv_message returned {event:?}"),
        }
    }

    /// The next message must be a JSON error `code` echoing `id`.
    pub fn expect_json_error(&mut self, code: u16, id: u64) -> Value {
        let value = self.recv_json();
        json::assert_json_error(&value, code, id);
        value
    }

    /// The next message must be a binary ERROR `code` echoing `id`.
    pub fn expect_binary_error(&mut self, code: u16, id: u64) -> Frame {
        let frame = self.recv_frame();
        assert_error(&frame, code, id);
        frame
    }

    /// Asserts a close (frame, EOF or reset) within 5 s with no data
    /// message before it.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.poll(left) {
                WsEvent::Closed => return,
                WsEvent::Pong(_) => {}
                WsEvent::Silent => panic!(
                    "WebSocket of {} still open after {RECV_TIMEOUT:?}",
                    self.addr
                ),
                event => panic!("expected close, got {event:?}"),
            }
        }
    }

    /// Asserts that no data message arrives and the socket stays open.
    pub fn expect_silence(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.poll(left) {
                WsEvent::Silent => return,
                WsEvent::Pong(_) => {}
                WsEvent::Closed => panic!("WebSocket of {} closed, expected it open", self.addr),
                event => panic!("expected silence, got {event:?}"),
            }
        }
    }
}
