//! The binary frame of PROTOCOL.md, written again from the text.
//!
//! Header, 48 bytes, all integers big-endian: version u8, kind u8, flags u16,
//! len u32, src [16], dst [16], id u64; then `len` payload bytes.

use uuid::Uuid;

/// The only protocol version.
pub const VERSION: u8 = 1;

/// Size of the fixed frame header.
pub const HEADER_BYTES: usize = 48;

/// The gateway's own address, and `dst` before HELLO.
pub const NIL: Uuid = Uuid::nil();

/// Frame kinds (PROTOCOL.md, "Kinds").
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const HEARTBEAT: u8 = 0x03;
    pub const DATA: u8 = 0x10;
    pub const TIME_REQ: u8 = 0x20;
    pub const TIME_RESP: u8 = 0x21;
    pub const STATE_PUT: u8 = 0x30;
    pub const STATE_ACK: u8 = 0x31;
    pub const STATE_GET: u8 = 0x32;
    pub const STATE: u8 = 0x33;
    pub const SUBSCRIBE: u8 = 0x40;
    pub const UNSUBSCRIBE: u8 = 0x41;
    pub const PRESENCE: u8 = 0x42;
    pub const ERROR: u8 = 0x7F;
}

/// Error codes (PROTOCOL.md, "Error codes").
pub mod code {
    pub const BAD_FRAME: u16 = 1;
    pub const NOT_REGISTERED: u16 = 2;
    pub const AUTH_FAILED: u16 = 3;
    pub const DST_OFFLINE: u16 = 4;
    pub const SRC_MISMATCH: u16 = 5;
    pub const TOO_LARGE: u16 = 6;
    pub const SLOW_CONSUMER: u16 = 7;
    pub const UNKNOWN_KIND: u16 = 8;
    pub const TAKEN_OVER: u16 = 9;
    pub const NOT_FOUND: u16 = 10;
    pub const FORBIDDEN: u16 = 11;
    pub const STORE_UNAVAILABLE: u16 = 12;
    pub const SHUTTING_DOWN: u16 = 13;
    pub const TIMEOUT: u16 = 14;
}

/// The name of an error code, as JSON carries it in `error`.
pub fn error_name(code: u16) -> &'static str {
    match code {
        code::BAD_FRAME => "bad_frame",
        code::NOT_REGISTERED => "not_registered",
        code::AUTH_FAILED => "auth_failed",
        code::DST_OFFLINE => "dst_offline",
        code::SRC_MISMATCH => "src_mismatch",
        code::TOO_LARGE => "too_large",
        code::SLOW_CONSUMER => "slow_consumer",
        code::UNKNOWN_KIND => "unknown_kind",
        code::TAKEN_OVER => "taken_over",
        code::NOT_FOUND => "not_found",
        code::FORBIDDEN => "forbidden",
        code::STORE_UNAVAILABLE => "store_unavailable",
        code::SHUTTING_DOWN => "shutting_down",
        code::TIMEOUT => "timeout",
        _ => "<unnamed>",
    }
}

/// Whether the error table says the connection is closed after this code.
pub fn error_closes(code: u16) -> bool {
    matches!(
        code,
        code::BAD_FRAME
            | code::AUTH_FAILED
            | code::TOO_LARGE
            | code::TAKEN_OVER
            | code::SHUTTING_DOWN
            | code::TIMEOUT
    )
}

/// One frame, header fields as sent on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub kind: u8,
    pub flags: u16,
    pub src: Uuid,
    pub dst: Uuid,
    pub id: u64,
    pub payload: Vec<u8>,
}

/// WELCOME payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub server_time_us: u64,
    pub heartbeat_timeout_ms: u32,
    pub max_payload: u32,
}

/// TIME_RESP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeResp {
    pub t0: u64,
    pub t1: u64,
    pub t2: u64,
}

/// PRESENCE payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    pub address: Uuid,
    pub online: u8,
    pub at_us: u64,
}

/// STATE payload: `address [16]`, `updated_at_us u64`, `online u8`, blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub address: Uuid,
    pub updated_at_us: u64,
    pub online: u8,
    pub blob: Vec<u8>,
}

/// Size of the fixed part of a STATE payload before the blob.
pub const STATE_PREFIX_BYTES: usize = 25;

/// Encodes a header whose `len` may disagree with what follows, for tests
/// that lie to the gateway.
#[allow(clippy::too_many_arguments)] // one argument per header field reads best here
pub fn header(
    version: u8,
    kind: u8,
    flags: u16,
    len: u32,
    src: Uuid,
    dst: Uuid,
    id: u64,
) -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    out[0] = version;
    out[1] = kind;
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out[4..8].copy_from_slice(&len.to_be_bytes());
    out[8..24].copy_from_slice(src.as_bytes());
    out[24..40].copy_from_slice(dst.as_bytes());
    out[40..48].copy_from_slice(&id.to_be_bytes());
    out
}

fn be_u16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes(bytes.try_into().expect("2 bytes"))
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().expect("4 bytes"))
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

fn uuid_at(bytes: &[u8]) -> Uuid {
    Uuid::from_bytes(bytes.try_into().expect("16 bytes"))
}

impl Frame {
    /// A version 1 frame with no flags.
    pub fn new(kind: u8, src: Uuid, dst: Uuid, id: u64, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            version: VERSION,
            kind,
            flags: 0,
            src,
            dst,
            id,
            payload: payload.into(),
        }
    }

    /// Header and payload, with `len` set to the payload's length.
    pub fn encode(&self) -> Vec<u8> {
        let len = u32::try_from(self.payload.len()).expect("payload fits u32");
        let mut out = Vec::with_capacity(HEADER_BYTES + self.payload.len());
        out.extend_from_slice(&header(
            self.version,
            self.kind,
            self.flags,
            len,
            self.src,
            self.dst,
            self.id,
        ));
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses one frame from the front of `buf`. `None` means more bytes are
    /// needed; the second value is how many bytes the frame used.
    pub fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
        if buf.len() < HEADER_BYTES {
            return None;
        }
        let len = be_u32(&buf[4..8]) as usize;
        let total = HEADER_BYTES + len;
        if buf.len() < total {
            return None;
        }
        let frame = Frame {
            version: buf[0],
            kind: buf[1],
            flags: be_u16(&buf[2..4]),
            src: uuid_at(&buf[8..24]),
            dst: uuid_at(&buf[24..40]),
            id: be_u64(&buf[40..48]),
            payload: buf[HEADER_BYTES..total].to_vec(),
        };
        Some((frame, total))
    }

    /// Parses a WebSocket binary message that must hold exactly one frame.
    pub fn parse_exact(bytes: &[u8]) -> Frame {
        let (frame, used) = Frame::parse(bytes)
            .unwrap_or_else(|| panic!("binary message of {} bytes is not a frame", bytes.len()));
        assert_eq!(
            used,
            bytes.len(),
            "binary message holds {} bytes but its frame is {used}",
            bytes.len()
        );
        frame
    }

    /// ERROR payload: `code u16` then a UTF-8 message.
    pub fn error(&self) -> (u16, String) {
        assert_eq!(self.kind, kind::ERROR, "not an ERROR frame: {self:?}");
        assert!(
            self.payload.len() >= 2,
            "ERROR payload is {} bytes, shorter than its code",
            self.payload.len()
        );
        let message = String::from_utf8(self.payload[2..].to_vec())
            .unwrap_or_else(|e| panic!("ERROR message is not UTF-8: {e}"));
        (be_u16(&self.payload[0..2]), message)
    }

    /// WELCOME payload, which must be exactly 16 bytes.
    pub fn welcome(&self) -> Welcome {
        assert_eq!(self.kind, kind::WELCOME, "not a WELCOME frame: {self:?}");
        assert_eq!(self.payload.len(), 16, "WELCOME payload size");
        Welcome {
            server_time_us: be_u64(&self.payload[0..8]),
            heartbeat_timeout_ms: be_u32(&self.payload[8..12]),
            max_payload: be_u32(&self.payload[12..16]),
        }
    }

    /// TIME_RESP payload, which must be exactly 24 bytes.
    pub fn time_resp(&self) -> TimeResp {
        assert_eq!(
            self.kind,
            kind::TIME_RESP,
            "not a TIME_RESP frame: {self:?}"
        );
        assert_eq!(self.payload.len(), 24, "TIME_RESP payload size");
        TimeResp {
            t0: be_u64(&self.payload[0..8]),
            t1: be_u64(&self.payload[8..16]),
            t2: be_u64(&self.payload[16..24]),
        }
    }

    /// STATE_ACK payload, which must be exactly the 8-byte `updated_at_us`.
    pub fn state_ack(&self) -> u64 {
        assert_eq!(
            self.kind,
            kind::STATE_ACK,
            "not a STATE_ACK frame: {self:?}"
        );
        assert_eq!(self.payload.len(), 8, "STATE_ACK payload size");
        be_u64(&self.payload)
    }

    /// STATE payload: at least 25 bytes, `online` 0 or 1, the rest the blob.
    pub fn state(&self) -> State {
        assert_eq!(self.kind, kind::STATE, "not a STATE frame: {self:?}");
        assert!(
            self.payload.len() >= STATE_PREFIX_BYTES,
            "STATE payload is {} bytes, shorter than its {STATE_PREFIX_BYTES}-byte prefix",
            self.payload.len()
        );
        let online = self.payload[24];
        assert!(online <= 1, "STATE online byte is {online}");
        State {
            address: uuid_at(&self.payload[0..16]),
            updated_at_us: be_u64(&self.payload[16..24]),
            online,
            blob: self.payload[STATE_PREFIX_BYTES..].to_vec(),
        }
    }

    /// PRESENCE payload, which must be exactly 25 bytes with `online` 0 or 1.
    pub fn presence(&self) -> Presence {
        assert_eq!(self.kind, kind::PRESENCE, "not a PRESENCE frame: {self:?}");
        assert_eq!(self.payload.len(), 25, "PRESENCE payload size");
        let online = self.payload[16];
        assert!(online <= 1, "PRESENCE online byte is {online}");
        Presence {
            address: uuid_at(&self.payload[0..16]),
            online,
            at_us: be_u64(&self.payload[17..25]),
        }
    }
}
