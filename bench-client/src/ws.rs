//! The client side of RFC 6455, only as much as `hold --ws` needs.
//!
//! Sans-IO. The HTTP upgrade is written by hand (one fixed request, one
//! response to check) and tungstenite supplies only the key and the
//! `Sec-WebSocket-Accept` derivation. Framing is by hand too, because a
//! general WebSocket stream keeps kilobytes of buffers per connection while
//! this decoder keeps under 200 bytes and never allocates.

/// The gateway's WebSocket path.
pub const WS_PATH: &str = "/ws";
/// Longest upgrade response accepted; a real one is about 150 bytes.
pub const RESPONSE_MAX_BYTES: usize = 1024;
/// Largest control-frame payload (RFC 6455 section 5.5).
pub const CONTROL_MAX_BYTES: usize = 125;
/// Largest client frame header: 2 + 8 (length) + 4 (mask).
pub const CLIENT_HEADER_MAX_BYTES: usize = 14;
/// Largest binary message accepted from the gateway: one protocol frame with
/// the gateway's default maximum payload.
pub const MESSAGE_MAX_BYTES: u64 =
    crate::proto::HEADER_LEN as u64 + crate::proto::PAYLOAD_MAX_BYTES as u64;
/// Largest text (JSON) message accepted from the gateway: the maximum payload
/// in base64 plus 1 KiB for the named fields, the gateway's own limit.
pub const TEXT_MESSAGE_MAX_BYTES: u64 =
    4 * (crate::proto::PAYLOAD_MAX_BYTES as u64).div_ceil(3) + 1024;

pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The upgrade request for `host` (as sent in the `Host` header).
pub fn handshake_request(host: &str, key: &str) -> String {
    format!(
        "GET {WS_PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    TooLong,
    Malformed,
    NotSwitching,
    MissingUpgrade,
    BadAccept,
}

impl HandshakeError {
    pub fn name(self) -> &'static str {
        match self {
            HandshakeError::TooLong => "ws_response_too_long",
            HandshakeError::Malformed => "ws_response_malformed",
            HandshakeError::NotSwitching => "ws_status_not_101",
            HandshakeError::MissingUpgrade => "ws_missing_upgrade_headers",
            HandshakeError::BadAccept => "ws_bad_accept_key",
        }
    }
}

/// Checks the upgrade response at the start of `buf`. `Ok(None)`: the header
/// block is not complete yet. `Ok(Some(n))`: valid, and the first `n` bytes
/// were the HTTP response (bytes after it are already WebSocket frames).
pub fn parse_handshake_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= RESPONSE_MAX_BYTES {
            return Err(HandshakeError::TooLong);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HandshakeError::Malformed)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().ok_or(HandshakeError::Malformed)?;
    let mut parts = status.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HandshakeError::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HandshakeError::Malformed);
    }
    if code != "101" {
        return Err(HandshakeError::NotSwitching);
    }
    let expected_accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let (mut upgrade, mut connection, mut accept) = (false, false, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HandshakeError::Malformed)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            if value != expected_accept {
                return Err(HandshakeError::BadAccept);
            }
            accept = true;
        }
    }
    if !(upgrade && connection) {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !accept {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(end + 4))
}

/// Bytes a masked client frame with this payload length takes.
pub fn client_frame_len(payload_len: usize) -> usize {
    let ext = match payload_len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + ext + 4 + payload_len
}

/// Writes one final (FIN) client frame, masked with `mask` as RFC 6455
/// section 5.3 requires of every client frame. Returns the bytes written.
/// Panics when `out` is shorter than [`client_frame_len`].
pub fn write_client_frame(out: &mut [u8], op: u8, payload: &[u8], mask: [u8; 4]) -> usize {
    let total = client_frame_len(payload.len());
    assert!(out.len() >= total, "frame buffer too small");
    let at = write_client_header(out, op, payload.len(), mask);
    for (i, (dst, src)) in out[at..total].iter_mut().zip(payload).enumerate() {
        *dst = src ^ mask[i & 3];
    }
    total
}

/// Appends one final client frame whose payload is `parts` one after the
/// other, masked, to `out`. No allocation once `out` has the capacity.
pub fn push_client_frame(out: &mut Vec<u8>, op: u8, parts: &[&[u8]], mask: [u8; 4]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; CLIENT_HEADER_MAX_BYTES];
    let n = write_client_header(&mut head, op, len, mask);
    out.extend_from_slice(&head[..n]);
    let mut i = 0;
    for part in parts {
        out.extend(part.iter().map(|b| {
            let masked = b ^ mask[i & 3];
            i += 1;
            masked
        }));
    }
}

/// Writes a client frame header (FIN, opcode, length, mask key) for a
/// payload of `len` bytes; returns its length.
fn write_client_header(out: &mut [u8], op: u8, len: usize, mask: [u8; 4]) -> usize {
    out[0] = 0x80 | op;
    let mut at = 2;
    match len {
        n @ 0..=125 => out[1] = 0x80 | n as u8,
        n @ 126..=0xFFFF => {
            out[1] = 0x80 | 126;
            out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            at = 4;
        }
        n => {
            out[1] = 0x80 | 127;
            out[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            at = 10;
        }
    }
    out[at..at + 4].copy_from_slice(&mask);
    at + 4
}

/// Protocol violations by the server. Any of them ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    MaskedServerFrame,
    ReservedBits,
    BadOpcode,
    BadControlFrame,
    UnexpectedContinuation,
    InterleavedMessage,
    TooLarge,
}

impl WsError {
    pub fn name(self) -> &'static str {
        match self {
            WsError::MaskedServerFrame => "ws_masked_server_frame",
            WsError::ReservedBits => "ws_reserved_bits",
            WsError::BadOpcode => "ws_bad_opcode",
            WsError::BadControlFrame => "ws_bad_control_frame",
            WsError::UnexpectedContinuation => "ws_unexpected_continuation",
            WsError::InterleavedMessage => "ws_interleaved_message",
            WsError::TooLarge => "ws_message_too_large",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent<'a> {
    /// Bytes of a binary message; `end` is set on its last piece.
    Binary {
        data: &'a [u8],
        end: bool,
    },
    /// Bytes of a text message; `end` is set on its last piece.
    Text {
        data: &'a [u8],
        end: bool,
    },
    /// A ping arrived; its payload is [`WsDecoder::ping_payload`].
    Ping,
    Pong,
    /// A close frame, with its status code when it carried one.
    Close(Option<u16>),
}

/// Incremental decoder of server frames with a fixed footprint.
#[derive(Debug)]
pub struct WsDecoder {
    head: [u8; CLIENT_HEADER_MAX_BYTES],
    head_got: u8,
    in_frame: bool,
    op: u8,
    fin: bool,
    remaining: u64,
    /// Opcode of the data message in progress, if any.
    message: Option<u8>,
    message_bytes: u64,
    control: [u8; CONTROL_MAX_BYTES],
    control_len: u8,
}

impl Default for WsDecoder {
    fn default() -> Self {
        WsDecoder {
            head: [0; CLIENT_HEADER_MAX_BYTES],
            head_got: 0,
            in_frame: false,
            op: 0,
            fin: false,
            remaining: 0,
            message: None,
            message_bytes: 0,
            control: [0; CONTROL_MAX_BYTES],
            control_len: 0,
        }
    }
}

impl WsDecoder {
    /// Payload of the last ping, to be echoed in a pong.
    pub fn ping_payload(&self) -> &[u8] {
        &self.control[..self.control_len as usize]
    }

    /// Consumes bytes from `input` until one event is ready or the input is
    /// used up. Returns the bytes used and the event, if any.
    pub fn push<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Result<WsEvent<'a>, WsError>>) {
        let mut used = 0;
        // Each pass consumes header bytes or finishes a frame, so the loop
        // ends within `input.len()` + 1 passes.
        loop {
            if !self.in_frame {
                match self.push_header(&input[used..]) {
                    (n, Ok(true)) => used += n,
                    (n, Ok(false)) => return (used + n, None),
                    (n, Err(e)) => return (used + n, Some(Err(e))),
                }
            }
            let avail = &input[used..];
            let n = (self.remaining.min(avail.len() as u64)) as usize;
            let chunk = &avail[..n];
            used += n;
            self.remaining -= n as u64;
            let done = self.remaining == 0;
            if done {
                self.in_frame = false;
            }
            if self.op >= opcode::CLOSE {
                let at = self.control_len as usize;
                self.control[at..at + n].copy_from_slice(chunk);
                self.control_len += n as u8;
                if !done {
                    return (used, None);
                }
                return (used, Some(Ok(self.control_event())));
            }
            let end = done && self.fin;
            let text = self.message == Some(opcode::TEXT);
            if end {
                self.message = None;
            }
            if n > 0 || end {
                let data = chunk;
                let ev = if text {
                    WsEvent::Text { data, end }
                } else {
                    WsEvent::Binary { data, end }
                };
                return (used, Some(Ok(ev)));
            }
            if !done {
                return (used, None);
            }
        }
    }

    fn control_event(&self) -> WsEvent<'static> {
        match self.op {
            opcode::PING => WsEvent::Ping,
            opcode::PONG => WsEvent::Pong,
            _ => {
                let p = &self.control[..self.control_len as usize];
                WsEvent::Close((p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
            }
        }
    }

    /// Assembles and validates a frame header. `Ok(true)` once a frame starts.
    fn push_header(&mut self, input: &[u8]) -> (usize, Result<bool, WsError>) {
        let mut used = self.fill_head(2, input);
        if self.head_got < 2 {
            return (used, Ok(false));
        }
        let len7 = self.head[1] & 0x7F;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if self.head[1] & 0x80 != 0 {
            self.head_got = 0;
            return (used, Err(WsError::MaskedServerFrame));
        }
        used += self.fill_head(2 + ext, &input[used..]);
        if (self.head_got as usize) < 2 + ext {
            return (used, Ok(false));
        }
        self.head_got = 0;
        let len = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            _ => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
        };
        (used, self.start_frame(self.head[0], len).map(|()| true))
    }

    fn fill_head(&mut self, want: usize, input: &[u8]) -> usize {
        let have = self.head_got as usize;
        if have >= want {
            return 0;
        }
        let n = (want - have).min(input.len());
        self.head[have..have + n].copy_from_slice(&input[..n]);
        self.head_got += n as u8;
        n
    }

    fn start_frame(&mut self, b0: u8, len: u64) -> Result<(), WsError> {
        if b0 & 0x70 != 0 {
            return Err(WsError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0F;
        match op {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin || len > CONTROL_MAX_BYTES as u64 {
                    return Err(WsError::BadControlFrame);
                }
                self.control_len = 0;
            }
            opcode::CONTINUATION => {
                if self.message.is_none() {
                    return Err(WsError::UnexpectedContinuation);
                }
            }
            opcode::TEXT | opcode::BINARY => {
                if self.message.is_some() {
                    return Err(WsError::InterleavedMessage);
                }
                self.message = Some(op);
                self.message_bytes = 0;
            }
            _ => return Err(WsError::BadOpcode),
        }
        if op < opcode::CLOSE {
            self.message_bytes = self.message_bytes.saturating_add(len);
            let limit = if self.message == Some(opcode::TEXT) {
                TEXT_MESSAGE_MAX_BYTES
            } else {
                MESSAGE_MAX_BYTES
            };
            if self.message_bytes > limit {
                return Err(WsError::TooLarge);
            }
        }
        self.in_frame = true;
        self.op = op;
        self.fin = fin;
        self.remaining = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (never masked).
    fn server_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![b0];
        match payload.len() {
            n @ 0..=125 => v.push(n as u8),
            n @ 126..=0xFFFF => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(payload);
        v
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        Message(Vec<u8>),
        Text(Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Owned>, WsError> {
        let mut d = WsDecoder::default();
        let mut out = Vec::new();
        let mut msg = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut at = 0;
            while at < piece.len() {
                let (n, ev) = d.push(&piece[at..]);
                at += n;
                match ev {
                    None => {}
                    Some(Err(e)) => return Err(e),
                    Some(Ok(WsEvent::Binary { data, end })) => {
                        msg.extend_from_slice(data);
                        if end {
                            out.push(Owned::Message(std::mem::take(&mut msg)));
                        }
                    }
                    Some(Ok(WsEvent::Text { data, end })) => {
                        msg.extend_from_slice(data);
                        if end {
                            out.push(Owned::Text(std::mem::take(&mut msg)));
                        }
                    }
                    Some(Ok(WsEvent::Ping)) => out.push(Owned::Ping(d.ping_payload().to_vec())),
                    Some(Ok(WsEvent::Pong)) => out.push(Owned::Pong),
                    Some(Ok(WsEvent::Close(c))) => out.push(Owned::Close(c)),
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn rfc_sample_accept_key() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nXY";
        assert_eq!(
            parse_handshake_response(resp, key),
            Ok(Some(resp.len() - 2))
        );
        assert_eq!(parse_handshake_response(&resp[..40], key), Ok(None));
        let wrong = String::from_utf8_lossy(resp).replace("s3pP", "AAAA");
        assert_eq!(
            parse_handshake_response(wrong.as_bytes(), key),
            Err(HandshakeError::BadAccept)
        );
        let not101 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_handshake_response(not101, key),
            Err(HandshakeError::NotSwitching)
        );
    }

    #[test]
    fn request_has_required_headers() {
        let r = handshake_request("127.0.0.1:7001", "abc");
        assert!(r.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn client_frames_are_masked() {
        for len in [0usize, 48, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mask = [1, 2, 3, 4];
            let mut buf = vec![0; client_frame_len(len)];
            let n = write_client_frame(&mut buf, opcode::BINARY, &payload, mask);
            assert_eq!(n, buf.len());
            assert_eq!(buf[0], 0x82);
            assert_eq!(buf[1] & 0x80, 0x80, "mask bit");
            let at = n - len - 4;
            assert_eq!(&buf[at..at + 4], &mask);
            let unmasked: Vec<u8> = buf[at + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn decoder_handles_fragments_and_interleaved_control() {
        let mut bytes = Vec::new();
        bytes.extend(server_frame(0x82, &[7; 48]));
        bytes.extend(server_frame(0x02, &[1; 20]));
        bytes.extend(server_frame(0x89, b"hi"));
        bytes.extend(server_frame(0x00, &[]));
        bytes.extend(server_frame(0x80, &[2; 300]));
        bytes.extend(server_frame(0x81, b"{}"));
        bytes.extend(server_frame(0x8A, &[]));
        bytes.extend(server_frame(0x88, &[0x03, 0xE8]));
        let mut big = vec![1; 20];
        big.extend(vec![2; 300]);
        let expected = vec![
            Owned::Message(vec![7; 48]),
            Owned::Ping(b"hi".to_vec()),
            Owned::Message(big),
            Owned::Text(b"{}".to_vec()),
            Owned::Pong,
            Owned::Close(Some(1000)),
        ];
        for chunk in 1..=bytes.len() {
            assert_eq!(
                decode_all(&bytes, chunk).unwrap(),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn decoder_rejects_protocol_violations() {
        let masked = [0x82, 0x81, 0, 0, 0, 0, 5];
        assert_eq!(decode_all(&masked, 99), Err(WsError::MaskedServerFrame));
        assert_eq!(
            decode_all(&server_frame(0x80, &[1]), 99),
            Err(WsError::UnexpectedContinuation)
        );
        assert_eq!(
            decode_all(&server_frame(0x09, &[]), 99),
            Err(WsError::BadControlFrame)
        );
        assert_eq!(
            decode_all(&server_frame(0xC2, &[]), 99),
            Err(WsError::ReservedBits)
        );
        let mut two = server_frame(0x02, &[1]);
        two.extend(server_frame(0x82, &[1]));
        assert_eq!(decode_all(&two, 99), Err(WsError::InterleavedMessage));
        let huge = [0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(decode_all(&huge, 99), Err(WsError::TooLarge));
    }
}
