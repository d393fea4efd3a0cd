//! One gateway connection over TCP or WebSocket, either of them optionally
//! inside TLS, sized for holding tens of thousands of idle connections: a
//! 64-byte receive buffer, decoders of fixed size, and small frames built on
//! the stack. No allocation after setup. A TLS connection adds rustls' state
//! on the heap (`tls.rs`: about 6 KiB, most of it rustls' receive buffer).
//!
//! Only [`Conn::recv`] awaits a read, and it keeps all state in `self`, so it
//! is cancel-safe: racing it against a timer loses no bytes. Writes happen
//! outside such races.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::client::TlsStream;
use glommio::net::TcpStream;

use crate::proto::{self, kind, Addr, DecodeError, FrameStream, Header, SmallFrame, Welcome};
use crate::tls::{self, TlsClient, TlsInfo};
use crate::ws::{self, HandshakeError, WsDecoder, WsError, WsEvent};

/// Receive buffer per connection. Idle connections get 48-byte heartbeats,
/// so this is one read per frame at worst.
pub const RX_SMALL_BYTES: usize = 64;
/// Largest payload sent from the on-stack buffer; larger ones (a long HELLO
/// token) use a one-off heap buffer at setup time.
const TX_STACK_PAYLOAD_BYTES: usize = 16;
const TX_STACK_BYTES: usize =
    ws::CLIENT_HEADER_MAX_BYTES + proto::HEADER_LEN + TX_STACK_PAYLOAD_BYTES;
/// Longest HELLO token accepted on the command line.
pub const TOKEN_MAX_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

impl Transport {
    /// The name in reports: tcp or ws, inside TLS tls or wss.
    pub fn name(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Transport::Tcp, false) => "tcp",
            (Transport::Ws, false) => "ws",
            (Transport::Tcp, true) => "tls",
            (Transport::Ws, true) => "wss",
        }
    }
}

/// What [`Conn::recv`] hands back.
#[derive(Debug)]
pub enum Incoming {
    Frame(SmallFrame),
    /// A WebSocket ping; answer with [`Conn::send_pong`].
    Ping,
    /// A WebSocket text message (the gateway speaks JSON to us only when it
    /// could not tell our form, e.g. a handshake timeout).
    Text,
    /// A WebSocket close frame.
    Close(Option<u16>),
}

/// Why a connection could not be set up or ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnError {
    Io(&'static str),
    Eof,
    Timeout,
    Decode(DecodeError),
    Ws(WsError),
    Handshake(HandshakeError),
    /// A WebSocket message did not hold exactly one protocol frame.
    WsFrameMismatch,
    WsClosed,
    WsText,
    BadWelcome,
    /// The gateway answered HELLO with this ERROR code.
    Refused(u16),
    /// A frame of this kind arrived before WELCOME.
    Unexpected(u8),
}

impl ConnError {
    /// A stable name used as a key in reports.
    pub fn reason(self) -> String {
        match self {
            ConnError::Io(r) => r.to_string(),
            ConnError::Eof => "closed_by_peer".into(),
            ConnError::Timeout => "setup_timeout".into(),
            ConnError::Decode(e) => e.name().into(),
            ConnError::Ws(e) => e.name().into(),
            ConnError::Handshake(e) => e.name().into(),
            ConnError::WsFrameMismatch => "ws_message_not_one_frame".into(),
            ConnError::WsClosed => "ws_closed_by_peer".into(),
            ConnError::WsText => "ws_text_message".into(),
            ConnError::BadWelcome => "bad_welcome".into(),
            ConnError::Refused(code) => format!("error_{}", proto::error_name(code)),
            ConnError::Unexpected(k) => format!("unexpected_kind_0x{k:02x}"),
        }
    }
}

/// Maps an I/O error to a report reason.
pub fn io_reason(e: &io::Error) -> &'static str {
    if let Some(reason) = tls::error_reason(e) {
        return reason;
    }
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect_refused",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files",
        Some(libc::EADDRNOTAVAIL) => "no_local_port",
        Some(libc::ETIMEDOUT) => "connect_timeout",
        Some(libc::ECONNRESET) => "connection_reset",
        Some(libc::EPIPE) => "broken_pipe",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "out_of_memory",
        _ if e.kind() == io::ErrorKind::TimedOut => "connect_timeout",
        _ => "io_other",
    }
}

fn io_err(e: impl Into<io::Error>) -> ConnError {
    ConnError::Io(io_reason(&e.into()))
}

/// Number of loopback source addresses connections are spread over
/// (127.0.0.1 up to 127.0.0.N).
///
/// Why: with one source address, every connect() to the same gateway port
/// makes the kernel scan the ports already in use for a free 4-tuple
/// (`__inet_hash_connect`), which grows with the connections held; at 19,000
/// connections it took 60% of the client's CPU and stalled the executor for
/// 300 ms at a time. With distinct source addresses the first port tried is
/// almost always free.
pub const SOURCE_ADDRS_DEFAULT: u32 = 32;

/// The source address for the `index`-th connection out of `spread` addresses.
pub fn source_addr(index: u64, spread: u32) -> Ipv4Addr {
    let spread = u64::from(spread.clamp(1, 250));
    Ipv4Addr::new(127, 0, 0, 1 + (index % spread) as u8)
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Opens a non-blocking socket bound to `source` (port chosen at connect
/// time, thanks to IP_BIND_ADDRESS_NO_PORT) and starts connecting it.
pub fn start_connect(target: SocketAddrV4, source: Ipv4Addr) -> io::Result<TcpStream> {
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket owned by nobody else; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value points to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let src = sockaddr_in(SocketAddrV4::new(source, 0));
    // SAFETY: valid fd and a sockaddr_in of the given length.
    if unsafe { libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let dst = sockaddr_in(target);
    // SAFETY: valid fd and a sockaddr_in of the given length.
    if unsafe { libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// Mask keys for client frames: xorshift64* seeded per connection from the
/// OS random source. RFC 6455 wants unpredictable masks so that a page cannot
/// steer bytes on the wire; a seeded fast generator is plenty for a load
/// generator and costs nothing per frame.
#[derive(Debug)]
pub struct WsMask(u64);

impl Default for WsMask {
    fn default() -> WsMask {
        WsMask::new()
    }
}

impl WsMask {
    pub fn new() -> WsMask {
        WsMask(uuid::Uuid::new_v4().as_u64_pair().0 | 1)
    }

    pub fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_ne_bytes()
    }
}

/// Per-connection WebSocket state.
#[derive(Debug)]
struct WsState {
    decoder: WsDecoder,
    mask: WsMask,
    /// A frame that completed inside the current message, kept until the
    /// message ends so that "exactly one frame per message" can be checked.
    frame: Option<SmallFrame>,
}

/// The socket, or TLS over it. The TLS state is boxed: plain connections
/// stay as small as they were.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    /// On TLS: close_notify, then the socket's write side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

impl Stream {
    /// Writes all of `bytes` and, on TLS, flushes the record rustls may
    /// still hold (a plain socket's flush does nothing).
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.write_all(bytes).await.map_err(io_err)?;
        self.flush().await.map_err(io_err)
    }

    fn into_plain(self) -> TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(_) => panic!("pingpong runs without TLS"),
        }
    }
}

pub struct Conn {
    stream: Stream,
    ws: Option<WsState>,
    frames: FrameStream,
    rx: [u8; RX_SMALL_BYTES],
    rx_head: u8,
    rx_tail: u8,
}

impl Conn {
    /// Connects from `source`, with `tls` runs the TLS handshake, and for
    /// WebSocket performs the upgrade to `/ws`. The caller bounds the whole
    /// setup in time. The connect itself is not awaited: the first write (the
    /// ClientHello, HELLO or the upgrade request) waits for the socket to
    /// become writable, which is when the TCP handshake finished, and reports
    /// a refused or failed connect as its error.
    pub async fn open(
        target: SocketAddrV4,
        source: Ipv4Addr,
        transport: Transport,
        tls: Option<&TlsClient>,
    ) -> Result<Conn, ConnError> {
        let tcp = start_connect(target, source).map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::Tls(Box::new(tls.connect(tcp).await.map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    ConnError::Io("closed_during_tls_handshake")
                } else {
                    io_err(e)
                }
            })?)),
        };
        let mut conn = Conn {
            stream,
            ws: None,
            frames: FrameStream::default(),
            rx: [0; RX_SMALL_BYTES],
            rx_head: 0,
            rx_tail: 0,
        };
        if transport == Transport::Ws {
            conn.ws_upgrade(target).await?;
        }
        Ok(conn)
    }

    async fn ws_upgrade(&mut self, target: SocketAddrV4) -> Result<(), ConnError> {
        let key = tungstenite::handshake::client::generate_key();
        let request = ws::handshake_request(&target.to_string(), &key);
        self.stream.send(request.as_bytes()).await?;
        // Heap buffer for the one response only; freed before the idle phase.
        let mut buf = vec![0u8; ws::RESPONSE_MAX_BYTES];
        let mut got = 0;
        let head_len = loop {
            let n = self.stream.read(&mut buf[got..]).await.map_err(io_err)?;
            if n == 0 {
                return Err(ConnError::Eof);
            }
            got += n;
            match ws::parse_handshake_response(&buf[..got], &key) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                Err(e) => return Err(ConnError::Handshake(e)),
            }
        };
        let early = &buf[head_len..got];
        if early.len() > RX_SMALL_BYTES {
            return Err(ConnError::Handshake(HandshakeError::TooLong));
        }
        self.rx[..early.len()].copy_from_slice(early);
        self.rx_head = 0;
        self.rx_tail = early.len() as u8;
        self.ws = Some(WsState {
            decoder: WsDecoder::default(),
            mask: WsMask::new(),
            frame: None,
        });
        Ok(())
    }

    /// Sends HELLO and waits for WELCOME (or the ERROR that refuses it).
    pub async fn hello(&mut self, src: Addr, token: &[u8], id: u64) -> Result<Welcome, ConnError> {
        self.send_frame(kind::HELLO, src, proto::NIL, id, token)
            .await?;
        // Bounded by the caller's setup timeout; every pass reads or returns.
        loop {
            match self.recv().await? {
                Incoming::Frame(f) => match f.header.kind {
                    kind::WELCOME => {
                        if !f.is_whole() {
                            return Err(ConnError::BadWelcome);
                        }
                        return Welcome::decode(f.prefix()).ok_or(ConnError::BadWelcome);
                    }
                    kind::ERROR => {
                        let code = proto::decode_error(f.prefix()).map_or(0, |(c, _)| c);
                        return Err(ConnError::Refused(code));
                    }
                    other => return Err(ConnError::Unexpected(other)),
                },
                Incoming::Ping => self.send_pong().await?,
                Incoming::Text => return Err(ConnError::WsText),
                Incoming::Close(_) => return Err(ConnError::WsClosed),
            }
        }
    }

    /// Sends one protocol frame (binary message on WebSocket).
    pub async fn send_frame(
        &mut self,
        kind: u8,
        src: Addr,
        dst: Addr,
        id: u64,
        payload: &[u8],
    ) -> Result<(), ConnError> {
        let header = Header::new(kind, src, dst, id, payload.len()).encode();
        if payload.len() > TX_STACK_PAYLOAD_BYTES {
            let mut inner = header.to_vec();
            inner.extend_from_slice(payload);
            let mut out = vec![0u8; ws::client_frame_len(inner.len())];
            let n = self.wrap(&inner, &mut out);
            return self.stream.send(&out[..n]).await;
        }
        let mut inner = [0u8; proto::HEADER_LEN + TX_STACK_PAYLOAD_BYTES];
        inner[..proto::HEADER_LEN].copy_from_slice(&header);
        let len = proto::HEADER_LEN + payload.len();
        inner[proto::HEADER_LEN..len].copy_from_slice(payload);
        let mut out = [0u8; TX_STACK_BYTES];
        let n = self.wrap(&inner[..len], &mut out);
        self.stream.send(&out[..n]).await
    }

    /// Copies a frame into `out`, inside a masked binary message on WebSocket.
    fn wrap(&mut self, frame: &[u8], out: &mut [u8]) -> usize {
        match &mut self.ws {
            None => {
                out[..frame.len()].copy_from_slice(frame);
                frame.len()
            }
            Some(ws) => {
                let mask = ws.mask.next_mask();
                ws::write_client_frame(out, ws::opcode::BINARY, frame, mask)
            }
        }
    }

    /// Answers the last ping with a pong carrying the same payload.
    pub async fn send_pong(&mut self) -> Result<(), ConnError> {
        let Some(state) = &mut self.ws else {
            return Ok(());
        };
        let mut out = [0u8; ws::CLIENT_HEADER_MAX_BYTES + ws::CONTROL_MAX_BYTES];
        let mask = state.mask.next_mask();
        let ping = state.decoder.ping_payload();
        let n = ws::write_client_frame(&mut out, ws::opcode::PONG, ping, mask);
        self.stream.send(&out[..n]).await
    }

    /// Sends a WebSocket close (1000, normal) or shuts down the TCP write
    /// side, so the gateway sees an orderly end rather than a reset.
    pub async fn close(&mut self) {
        if let Some(state) = &mut self.ws {
            let mask = state.mask.next_mask();
            let mut out = [0u8; 8];
            let n =
                ws::write_client_frame(&mut out, ws::opcode::CLOSE, &1000u16.to_be_bytes(), mask);
            // Best effort: the connection is being dropped either way.
            let _ = self.stream.send(&out[..n]).await;
        }
        let _ = self.stream.close().await;
    }

    /// Waits for the next frame or WebSocket event. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Incoming, ConnError> {
        // Every pass either consumes buffered bytes or reads new ones, and a
        // read of 0 ends the loop, so it runs only as long as bytes arrive.
        loop {
            if self.rx_head < self.rx_tail {
                if let Some(ev) = self.process()? {
                    return Ok(ev);
                }
                continue;
            }
            self.rx_head = 0;
            self.rx_tail = 0;
            let n = self.stream.read(&mut self.rx).await.map_err(io_err)?;
            if n == 0 {
                return Err(ConnError::Eof);
            }
            self.rx_tail = n as u8;
        }
    }

    /// Runs the decoders over buffered bytes until one event is complete.
    fn process(&mut self) -> Result<Option<Incoming>, ConnError> {
        let Conn {
            ws,
            frames,
            rx,
            rx_head,
            rx_tail,
            ..
        } = self;
        let input = &rx[*rx_head as usize..*rx_tail as usize];
        let Some(state) = ws else {
            let (n, ev) = frames.push(input);
            *rx_head += n as u8;
            return match ev {
                None => Ok(None),
                Some(Ok(f)) => Ok(Some(Incoming::Frame(f))),
                Some(Err(e)) => Err(ConnError::Decode(e)),
            };
        };
        let (n, ev) = state.decoder.push(input);
        *rx_head += n as u8;
        match ev {
            None | Some(Ok(WsEvent::Pong)) => Ok(None),
            Some(Err(e)) => Err(ConnError::Ws(e)),
            Some(Ok(WsEvent::Ping)) => Ok(Some(Incoming::Ping)),
            Some(Ok(WsEvent::Text { end, .. })) => Ok(end.then_some(Incoming::Text)),
            Some(Ok(WsEvent::Close(code))) => Ok(Some(Incoming::Close(code))),
            Some(Ok(WsEvent::Binary { data, end })) => {
                let mut at = 0;
                while at < data.len() {
                    let (m, fev) = frames.push(&data[at..]);
                    at += m;
                    match fev {
                        None => {}
                        Some(Err(e)) => return Err(ConnError::Decode(e)),
                        Some(Ok(f)) => {
                            let earlier = state.frame.replace(f);
                            if earlier.is_some() {
                                return Err(ConnError::WsFrameMismatch);
                            }
                        }
                    }
                }
                if !end {
                    return Ok(None);
                }
                match state.frame.take() {
                    Some(f) if frames.at_boundary() => Ok(Some(Incoming::Frame(f))),
                    _ => Err(ConnError::WsFrameMismatch),
                }
            }
        }
    }

    /// Sends one text message (a JSON frame) on WebSocket. Setup only: it
    /// allocates the message buffer.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), ConnError> {
        let state = self.ws.as_mut().expect("text messages need WebSocket");
        let mut out = Vec::with_capacity(ws::client_frame_len(text.len()));
        ws::push_client_frame(&mut out, ws::opcode::TEXT, &[text], state.mask.next_mask());
        self.stream.send(&out).await
    }

    /// Gives up the stream, the undecoded bytes already read and the mask
    /// generator of a WebSocket connection, right after a whole message, for
    /// the pingpong driver, which does its own framing in large buffers.
    pub fn into_ws_parts(self) -> (TcpStream, Vec<u8>, WsMask) {
        let state = self.ws.expect("a WebSocket connection");
        assert!(state.frame.is_none(), "taken right after a whole message");
        let rest = self.rx[self.rx_head as usize..self.rx_tail as usize].to_vec();
        (self.stream.into_plain(), rest, state.mask)
    }

    /// Gives up the stream and any bytes already read past the last frame,
    /// for the pingpong driver, which uses its own large buffers. TCP only.
    pub fn into_tcp_parts(self) -> (TcpStream, Vec<u8>) {
        assert!(self.ws.is_none(), "pingpong runs over TCP only");
        assert!(self.frames.at_boundary(), "taken right after a whole frame");
        let rest = self.rx[self.rx_head as usize..self.rx_tail as usize].to_vec();
        (self.stream.into_plain(), rest)
    }

    /// What the TLS handshake negotiated; `None` without TLS.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match &self.stream {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(TlsInfo::of(s)),
        }
    }
}
