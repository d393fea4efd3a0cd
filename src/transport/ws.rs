//! WebSocket on the gateway's own sockets: tungstenite parses the upgrade
//! request, builds the 101 answer and codes frame headers; the gateway keeps
//! the buffers (the shard's read buffer, a per-connection carry-over only for
//! a partial frame), so an idle WebSocket holds no read buffer at all.
//! tungstenite's `WebSocket` type would keep a read buffer per connection
//! (128 KiB by default, still 4 KiB when shrunk).

use crate::proto;
use crate::routing::ConnKey;
use crate::shard::conn::{Form, State, Wire, WsPartial};
use crate::shard::handle::{reject_message, Flow};
use crate::shard::state::ShardState;
use crate::transport::http;
use crate::transport::tcp::Progress;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::io::Cursor;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

/// The answer to a request for any path but [`WS_PATH`].
pub const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// The answer to a request that is not HTTP, or not a WebSocket upgrade.
pub const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// The answer to a request whose head is longer than the limit.
pub const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What the bytes received so far on the WebSocket port make of the HTTP
/// upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The request head is not complete and is still within the limit: keep
    /// the bytes, read more and parse them all again.
    NeedMore,
    /// Send this HTTP answer ([`NOT_FOUND`], [`BAD_REQUEST`] or
    /// [`TOO_LARGE`]) and close.
    Refuse(&'static [u8]),
    /// Send `response`, the `101 Switching Protocols` answer; the request head
    /// is `buf[..consumed]` and every byte after it is WebSocket framing.
    Accept { consumed: usize, response: Vec<u8> },
}

/// Parses the HTTP upgrade request at the front of `buf`, everything received
/// on the connection so far. A head longer than `limit` bytes is refused,
/// whether it is complete or not. Pure: no socket and no connection state, so
/// it is unit-tested and fuzzed on its own.
pub fn parse_upgrade(buf: &[u8], limit: usize) -> Upgrade {
    let (size, request) = match Request::try_parse(buf) {
        Ok(Some(r)) => r,
        Ok(None) if buf.len() <= limit => return Upgrade::NeedMore,
        Ok(None) => return Upgrade::Refuse(TOO_LARGE),
        Err(_) => return Upgrade::Refuse(BAD_REQUEST),
    };
    if size > limit {
        return Upgrade::Refuse(TOO_LARGE);
    }
    if request.uri().path() != WS_PATH {
        return Upgrade::Refuse(NOT_FOUND);
    }
    if !request
        .headers()
        .get("Sec-WebSocket-Key")
        .is_some_and(|key| valid_key(key.as_bytes()))
    {
        return Upgrade::Refuse(BAD_REQUEST);
    }
    let Ok(response) = create_response(&request) else {
        return Upgrade::Refuse(BAD_REQUEST);
    };
    let mut head = Vec::with_capacity(160);
    write_response(&mut head, &response).expect("writing to a Vec cannot fail");
    Upgrade::Accept {
        consumed: size,
        response: head,
    }
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 (4.2.1, item 5) requires:
/// base64 of 16 bytes. tungstenite checks only that the header is there, and
/// the RFC has the server refuse any other key with 400.
fn valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut decoded) == Ok(16)
}

/// Largest control frame payload (RFC 6455, 5.5).
const CONTROL_PAYLOAD_MAX: u64 = 125;

/// Appends the header of a final, unmasked server frame.
pub fn put_header(out: &mut Vec<u8>, text: bool, len: usize) {
    let opcode = if text {
        OpCode::Data(Data::Text)
    } else {
        OpCode::Data(Data::Binary)
    };
    format_header(out, opcode, len);
}

fn format_header(out: &mut Vec<u8>, opcode: OpCode, len: usize) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    header
        .format(len as u64, out)
        .expect("writing to a Vec cannot fail");
}

/// Appends a close frame with a status code.
pub fn put_close(out: &mut Vec<u8>, code: u16) {
    format_header(out, OpCode::Control(Control::Close), 2);
    out.extend_from_slice(&code.to_be_bytes());
}

fn put_pong(out: &mut Vec<u8>, payload: &[u8]) {
    format_header(out, OpCode::Control(Control::Pong), payload.len());
    out.extend_from_slice(payload);
}

/// XORs a client frame's payload with its mask, eight bytes at a time.
pub fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let m = u32::from_ne_bytes(mask) as u64;
    let m = m | (m << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

impl ShardState {
    pub fn on_ws_input(&mut self, key: ConnKey, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.wire == Wire::WsUpgrade {
            self.on_upgrade_input(key, data);
            return;
        }
        let carried = if conn.has_inbuf() {
            Some(conn.take_inbuf())
        } else {
            None
        };
        match carried {
            None => {
                if let Progress::Partial { consumed, needed } = self.process_ws(key, data) {
                    self.carry(key, &data[consumed..], needed);
                }
            }
            Some(mut buf) => {
                buf.extend_from_slice(data);
                if let Progress::Partial { consumed, .. } = self.process_ws(key, &mut buf) {
                    if consumed < buf.len() {
                        buf.drain(..consumed);
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.set_inbuf(buf);
                        }
                    }
                }
            }
        }
    }

    /// The HTTP request on the WebSocket port, up to the upgrade.
    fn on_upgrade_input(&mut self, key: ConnKey, data: &[u8]) {
        let limit = self.cfg.limits.max_http_request_bytes;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut buf = conn.take_inbuf();
        buf.extend_from_slice(data);
        match parse_upgrade(&buf, limit) {
            Upgrade::NeedMore => conn.set_inbuf(buf),
            Upgrade::Refuse(NOT_FOUND) if http::page_for(&buf).is_some() => {
                let page = http::page_for(&buf).expect("checked in the guard");
                let peer = conn.stream.peer_addr().ok().map(|a| a.ip());
                self.serve_page(key, page, peer);
            }
            Upgrade::Refuse(answer) => {
                conn.set_inbuf(buf);
                self.refuse_http(key, answer);
            }
            Upgrade::Accept { consumed, response } => {
                self.send_raw(key, &response);
                let conn = self.conns.get_mut(key).expect("checked above");
                conn.wire = Wire::Ws;
                buf.drain(..consumed);
                if !buf.is_empty() {
                    self.on_ws_input(key, &mut buf);
                }
            }
        }
    }

    fn refuse_http(&mut self, key: ConnKey, response: &[u8]) {
        self.send_raw(key, response);
        self.begin_close(key);
    }

    fn process_ws(&mut self, key: ConnKey, buf: &mut [u8]) -> Progress {
        let max_msg = self.cfg.max_ws_message_bytes();
        let mut off = 0;
        loop {
            if !self.conns.get(key).is_some_and(|c| c.accepts_input()) {
                return Progress::Done;
            }
            if off == buf.len() {
                return Progress::Partial {
                    consumed: off,
                    needed: 2,
                };
            }
            let mut cur = Cursor::new(&buf[off..]);
            let (header, len) = match FrameHeader::parse(&mut cur) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    return Progress::Partial {
                        consumed: off,
                        needed: 14,
                    }
                }
                Err(_) => return self.ws_fail(key, "malformed WebSocket frame"),
            };
            let head = cur.position() as usize;
            if len > max_msg as u64 {
                self.send_error(
                    key,
                    self.ws_form(key, Form::Binary),
                    0,
                    proto::ErrorCode::TooLarge,
                    "WebSocket message larger than the maximum",
                );
                return Progress::Done;
            }
            let total = head + len as usize;
            if buf.len() - off < total {
                return Progress::Partial {
                    consumed: off,
                    needed: total,
                };
            }
            let Some(mask) = header.mask else {
                return self.ws_fail(key, "client frames must be masked");
            };
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return self.ws_fail(key, "no WebSocket extension was negotiated");
            }
            let payload = &mut buf[off + head..off + total];
            unmask(payload, mask);
            off += total;
            let flow = match header.opcode {
                OpCode::Control(Control::Close) => {
                    // The peer closes: answer its close and go.
                    self.begin_close(key);
                    Flow::Stop
                }
                OpCode::Control(Control::Ping) => {
                    if len > CONTROL_PAYLOAD_MAX || !header.is_final {
                        return self.ws_fail(key, "invalid ping");
                    }
                    let mut pong = Vec::with_capacity(2 + payload.len());
                    put_pong(&mut pong, payload);
                    self.send_raw(key, &pong);
                    Flow::Continue
                }
                OpCode::Control(Control::Pong) => Flow::Continue,
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return self.ws_fail(key, "reserved WebSocket opcode");
                }
                OpCode::Data(Data::Continue) => {
                    let conn = self.conns.get_mut(key).expect("checked above");
                    let Some(mut partial) = conn.take_ws_partial() else {
                        return self.ws_fail(key, "continuation without a message");
                    };
                    if partial.data.len() + payload.len() > max_msg {
                        self.send_error(
                            key,
                            self.ws_form(key, Form::Binary),
                            0,
                            proto::ErrorCode::TooLarge,
                            "WebSocket message larger than the maximum",
                        );
                        return Progress::Done;
                    }
                    partial.data.extend_from_slice(payload);
                    if header.is_final {
                        self.on_ws_message(key, partial.text, &partial.data)
                    } else {
                        conn.set_ws_partial(partial);
                        Flow::Continue
                    }
                }
                OpCode::Data(data) => {
                    let text = data == Data::Text;
                    let conn = self.conns.get_mut(key).expect("checked above");
                    if conn.has_ws_partial() {
                        return self.ws_fail(key, "new message inside a fragmented one");
                    }
                    if header.is_final {
                        self.on_ws_message(key, text, payload)
                    } else {
                        conn.set_ws_partial(WsPartial {
                            text,
                            data: payload.to_vec(),
                        });
                        Flow::Continue
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => return Progress::Done,
                Flow::Handover { addr, hello_id } => {
                    self.hand_over(key, addr, hello_id, &buf[off..]);
                    return Progress::Done;
                }
            }
        }
    }

    /// The form of an answer on a WebSocket: the connection's once it is
    /// registered, else the form of the message being answered.
    fn ws_form(&self, key: ConnKey, message: Form) -> Form {
        match self.conns.get(key) {
            Some(c) if c.state == State::Open => c.form(),
            _ => message,
        }
    }

    /// A WebSocket-level protocol error: ERROR bad_frame, then close.
    fn ws_fail(&mut self, key: ConnKey, message: &str) -> Progress {
        let form = self.ws_form(key, Form::Json);
        self.send_error(key, form, 0, proto::ErrorCode::BadFrame, message);
        Progress::Done
    }

    /// One complete WebSocket message: a binary frame, or a JSON frame.
    fn on_ws_message(&mut self, key: ConnKey, text: bool, data: &[u8]) -> Flow {
        if text {
            let form = self.ws_form(key, Form::Json);
            let Ok(text) = std::str::from_utf8(data) else {
                self.send_error(
                    key,
                    form,
                    0,
                    proto::ErrorCode::BadFrame,
                    "text message is not UTF-8",
                );
                return Flow::Stop;
            };
            let registered = self.conns.get(key).and_then(|c| c.registered());
            let mut payload = std::mem::take(&mut self.payload_scratch);
            let max = self.cfg.limits.max_payload_bytes;
            let decoded = proto::decode_json(text, registered, &mut payload).and_then(|h| {
                proto::check_header(&h, max)
                    .map(|()| h)
                    .map_err(|code| (h.id, code))
            });
            let flow = match decoded {
                Ok(header) => self.on_frame(key, Form::Json, &header, &payload, None),
                Err((id, code)) => {
                    if let Some(conn) = self.conns.get_mut(key) {
                        if registered.is_none() {
                            conn.json = true;
                        }
                    }
                    self.send_error(key, form, id, code, reject_message(code));
                    if code.closes_connection() {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                }
            };
            self.payload_scratch = payload;
            flow
        } else {
            let max = self.cfg.limits.max_payload_bytes;
            match proto::decode_message(data, max) {
                Ok((header, payload)) => {
                    let raw = (payload.len() == header.len as usize).then_some(data);
                    self.on_frame(key, Form::Binary, &header, payload, raw)
                }
                Err((id, code)) => {
                    let form = self.ws_form(key, Form::Binary);
                    self.send_error(key, form, id, code, reject_message(code));
                    if code.closes_connection() {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample handshake of RFC 6455 (1.3), for `path`.
    fn request(path: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    const LIMIT: usize = 8192;

    #[test]
    fn upgrade_accepts_the_rfc_sample_with_its_accept_key() {
        let req = request("/ws");
        let Upgrade::Accept { consumed, response } = parse_upgrade(req.as_bytes(), LIMIT) else {
            panic!("refused");
        };
        assert_eq!(consumed, req.len());
        // The accept value is the one RFC 6455 gives for this key.
        assert_eq!(
            String::from_utf8(response).expect("ASCII"),
            "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn upgrade_leaves_the_bytes_after_the_head() {
        let mut bytes = request("/ws?page=1").into_bytes();
        let head = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        assert!(matches!(
            parse_upgrade(&bytes, LIMIT),
            Upgrade::Accept { consumed, .. } if consumed == head
        ));
    }

    #[test]
    fn upgrade_needs_the_whole_head() {
        let req = request("/ws");
        for end in 0..req.len() {
            assert_eq!(
                parse_upgrade(&req.as_bytes()[..end], LIMIT),
                Upgrade::NeedMore,
                "{end} bytes"
            );
        }
    }

    #[test]
    fn upgrade_refuses_other_paths() {
        for path in ["/", "/other", "/wsx", "/ws/extra", "/WS"] {
            assert_eq!(
                parse_upgrade(request(path).as_bytes(), LIMIT),
                Upgrade::Refuse(NOT_FOUND),
                "{path}"
            );
        }
    }

    #[test]
    fn upgrade_limit_counts_the_whole_head() {
        let req = request("/ws");
        let len = req.len();
        assert!(matches!(
            parse_upgrade(req.as_bytes(), len),
            Upgrade::Accept { .. }
        ));
        assert_eq!(
            parse_upgrade(req.as_bytes(), len - 1),
            Upgrade::Refuse(TOO_LARGE)
        );
        // An incomplete head waits up to the limit, and is refused beyond it.
        let partial = &req.as_bytes()[..len - 2];
        assert_eq!(parse_upgrade(partial, len - 2), Upgrade::NeedMore);
        assert_eq!(parse_upgrade(partial, len - 3), Upgrade::Refuse(TOO_LARGE));
    }

    #[test]
    fn upgrade_refuses_what_is_not_a_websocket_request() {
        let good = request("/ws");
        let cases = [
            "\x16\x03\x01 not HTTP\r\n\r\n".to_string(),
            good.replacen("GET", "POST", 1),
            good.replacen("HTTP/1.1", "HTTP/1.0", 1),
            good.replacen("Upgrade: websocket\r\n", "", 1),
            good.replacen("Connection: Upgrade", "Connection: keep-alive", 1),
            good.replacen("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 1),
            good.replacen("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 1),
        ];
        for case in cases {
            assert_eq!(
                parse_upgrade(case.as_bytes(), LIMIT),
                Upgrade::Refuse(BAD_REQUEST),
                "{case:?}"
            );
        }
    }

    #[test]
    fn upgrade_refuses_a_key_that_is_not_base64_of_16_bytes() {
        let good = request("/ws");
        let sample = "dGhlIHNhbXBsZSBub25jZQ==";
        for key in [
            "",
            "x",
            "dGhlIHNhbXBsZSBub25jZQ",       // unpadded
            "dGhlIHNhbXBsZSBub25j",         // 15 bytes
            "dGhlIHNhbXBsZSBub25jZQo=",     // 17 bytes
            "dGhlIHNhbXBsZSB;;;ub25jZQ==",  // found by the fuzzer
            "dGhlIHNhbXBsZSBub25jZR==",     // non-zero trailing bits
            "dGhlIHNhbXBsZSBub25j\u{e9}Q=", // not ASCII
        ] {
            let req = good.replacen(sample, key, 1);
            assert_eq!(
                parse_upgrade(req.as_bytes(), LIMIT),
                Upgrade::Refuse(BAD_REQUEST),
                "{key:?}"
            );
        }
        // Any 16 bytes will do, and the header name is case-insensitive.
        let req = good
            .replacen(sample, "AAAAAAAAAAAAAAAAAAAAAA==", 1)
            .replacen("Sec-WebSocket-Key", "sec-websocket-key", 1);
        assert!(matches!(
            parse_upgrade(req.as_bytes(), LIMIT),
            Upgrade::Accept { .. }
        ));
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn server_headers_are_unmasked_and_sized() {
        let mut out = Vec::new();
        put_header(&mut out, false, 5);
        assert_eq!(out, [0x82, 5]);
        out.clear();
        put_header(&mut out, true, 300);
        assert_eq!(out, [0x81, 126, 1, 44]);
        out.clear();
        put_header(&mut out, false, 70_000);
        assert_eq!(out[..2], [0x82, 127]);
        assert_eq!(u64::from_be_bytes(out[2..10].try_into().unwrap()), 70_000);
        out.clear();
        put_close(&mut out, 1000);
        assert_eq!(out, [0x88, 2, 0x03, 0xE8]);
    }
}
