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
use crate::transport::tcp::Progress;
use std::io::Cursor;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

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
        let parsed = Request::try_parse(&buf);
        let pending = buf.len();
        conn.set_inbuf(buf);
        let (size, request) = match parsed {
            Ok(Some(r)) => r,
            Ok(None) if pending <= limit => return,
            Ok(None) => return self.refuse_http(key, TOO_LARGE),
            Err(_) => return self.refuse_http(key, BAD_REQUEST),
        };
        if size > limit {
            return self.refuse_http(key, TOO_LARGE);
        }
        if request.uri().path() != WS_PATH {
            return self.refuse_http(key, NOT_FOUND);
        }
        let Ok(response) = create_response(&request) else {
            return self.refuse_http(key, BAD_REQUEST);
        };
        let mut head = Vec::with_capacity(160);
        write_response(&mut head, &response).expect("writing to a Vec cannot fail");
        self.send_raw(key, &head);
        let conn = self.conns.get_mut(key).expect("checked above");
        conn.wire = Wire::Ws;
        let mut rest = conn.take_inbuf();
        rest.drain(..size);
        if !rest.is_empty() {
            self.on_ws_input(key, &mut rest);
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
