//! Protocol v1 binary frames, the client's own small codec.
//!
//! Sans-IO: no sockets, no clock. Two decoders exist on purpose:
//! [`Header::decode`] works on a contiguous buffer (the pingpong hot path,
//! which owns large per-connection buffers), and [`FrameStream`] takes bytes
//! in any chunking with a fixed footprint of about a hundred bytes (the hold
//! path, which keeps 19,000 idle connections and must stay small).

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 48;
/// The only protocol version this client speaks.
pub const VERSION: u8 = 1;
/// Largest payload the client accepts from the gateway. The gateway's default
/// maximum is 1 MiB; anything above it means the stream is out of sync.
pub const PAYLOAD_MAX_BYTES: u32 = 1 << 20;
/// Payload bytes [`FrameStream`] keeps per frame: enough for WELCOME (16) and
/// an ERROR code plus the start of its message. The rest is skipped.
pub const KEEP_BYTES: usize = 32;
/// Size of a WELCOME payload.
pub const WELCOME_LEN: usize = 16;

/// A 16-byte endpoint address (the bytes of a UUID).
pub type Addr = [u8; 16];
/// The gateway's own address.
pub const NIL: Addr = [0; 16];

/// Frame kinds used by the bench client.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const HEARTBEAT: u8 = 0x03;
    pub const DATA: u8 = 0x10;
    pub const STATE_PUT: u8 = 0x30;
    pub const STATE_ACK: u8 = 0x31;
    pub const ERROR: u8 = 0x7F;
}

/// Name of an error code from the protocol's error table.
pub fn error_name(code: u16) -> &'static str {
    match code {
        1 => "bad_frame",
        2 => "not_registered",
        3 => "auth_failed",
        4 => "dst_offline",
        5 => "src_mismatch",
        6 => "too_large",
        7 => "slow_consumer",
        8 => "unknown_kind",
        9 => "taken_over",
        10 => "not_found",
        11 => "forbidden",
        12 => "store_unavailable",
        13 => "shutting_down",
        14 => "timeout",
        _ => "unknown_code",
    }
}

/// Whether the gateway closes the connection after sending this error code.
pub fn error_closes(code: u16) -> bool {
    matches!(code, 1 | 3 | 6 | 9 | 13 | 14)
}

/// Why bytes from the gateway could not be decoded. Either means the stream
/// can no longer be trusted and the connection should be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    BadVersion(u8),
    TooLarge(u32),
}

impl DecodeError {
    pub fn name(self) -> &'static str {
        match self {
            DecodeError::BadVersion(_) => "bad_version_from_gateway",
            DecodeError::TooLarge(_) => "oversized_frame_from_gateway",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u16,
    pub len: u32,
    pub src: Addr,
    pub dst: Addr,
    pub id: u64,
}

impl Header {
    pub fn new(kind: u8, src: Addr, dst: Addr, id: u64, len: usize) -> Header {
        let len = u32::try_from(len).expect("payload length fits in u32");
        Header {
            kind,
            flags: 0,
            len,
            src,
            dst,
            id,
        }
    }

    /// Whole frame size, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = self.kind;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.len.to_be_bytes());
        b[8..24].copy_from_slice(&self.src);
        b[24..40].copy_from_slice(&self.dst);
        b[40..48].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    /// Decodes the header at the start of `buf`. `Ok(None)` means fewer than
    /// 48 bytes are there yet, which is a normal state, not an error.
    pub fn decode(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
        let Some(b) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if b[0] != VERSION {
            return Err(DecodeError::BadVersion(b[0]));
        }
        let len = u32::from_be_bytes(b[4..8].try_into().expect("4 bytes"));
        if len > PAYLOAD_MAX_BYTES {
            return Err(DecodeError::TooLarge(len));
        }
        Ok(Some(Header {
            kind: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            len,
            src: b[8..24].try_into().expect("16 bytes"),
            dst: b[24..40].try_into().expect("16 bytes"),
            id: u64::from_be_bytes(b[40..48].try_into().expect("8 bytes")),
        }))
    }
}

/// The WELCOME payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    pub server_time_us: u64,
    pub heartbeat_timeout_ms: u32,
    pub max_payload: u32,
}

impl Welcome {
    pub fn decode(payload: &[u8]) -> Option<Welcome> {
        if payload.len() != WELCOME_LEN {
            return None;
        }
        Some(Welcome {
            server_time_us: u64::from_be_bytes(payload[0..8].try_into().ok()?),
            heartbeat_timeout_ms: u32::from_be_bytes(payload[8..12].try_into().ok()?),
            max_payload: u32::from_be_bytes(payload[12..16].try_into().ok()?),
        })
    }
}

/// Splits an ERROR payload into its code and (possibly truncated) message.
/// `None` when the payload is too short to carry a code.
pub fn decode_error(payload: &[u8]) -> Option<(u16, &[u8])> {
    let code = u16::from_be_bytes(payload.get(0..2)?.try_into().ok()?);
    Some((code, &payload[2..]))
}

/// A frame whose payload was cut to its first [`KEEP_BYTES`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct SmallFrame {
    pub header: Header,
    prefix: [u8; KEEP_BYTES],
    prefix_len: u8,
}

impl SmallFrame {
    /// The kept start of the payload (all of it when `len <= KEEP_BYTES`).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..self.prefix_len as usize]
    }

    /// Whether the whole payload fits in the prefix.
    pub fn is_whole(&self) -> bool {
        self.header.len as usize == self.prefix_len as usize
    }
}

/// Incremental decoder with a fixed footprint: assembles the header, keeps the
/// first [`KEEP_BYTES`] of the payload and skips the rest.
#[derive(Debug)]
pub struct FrameStream {
    head: [u8; HEADER_LEN],
    head_got: u8,
    current: Option<Header>,
    keep: [u8; KEEP_BYTES],
    payload_got: u32,
}

impl Default for FrameStream {
    fn default() -> Self {
        FrameStream {
            head: [0; HEADER_LEN],
            head_got: 0,
            current: None,
            keep: [0; KEEP_BYTES],
            payload_got: 0,
        }
    }
}

impl FrameStream {
    /// True when no partial frame is buffered.
    pub fn at_boundary(&self) -> bool {
        self.head_got == 0 && self.current.is_none()
    }

    /// Consumes bytes from `input` up to the end of at most one frame.
    /// Returns how many bytes were used and the frame if one completed. After
    /// an error the decoder is reset, but the stream should be dropped.
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<Result<SmallFrame, DecodeError>>) {
        let mut used = 0;
        if self.current.is_none() {
            let need = HEADER_LEN - self.head_got as usize;
            let n = need.min(input.len());
            let at = self.head_got as usize;
            self.head[at..at + n].copy_from_slice(&input[..n]);
            self.head_got += n as u8;
            used = n;
            if (self.head_got as usize) < HEADER_LEN {
                return (used, None);
            }
            match Header::decode(&self.head) {
                Ok(Some(h)) => {
                    self.current = Some(h);
                    self.payload_got = 0;
                }
                Ok(None) => unreachable!("header buffer is complete"),
                Err(e) => {
                    *self = FrameStream::default();
                    return (used, Some(Err(e)));
                }
            }
        }
        let header = self.current.expect("header decoded above");
        let rest = &input[used..];
        let remaining = (header.len - self.payload_got) as usize;
        let n = remaining.min(rest.len());
        let got = self.payload_got as usize;
        if got < KEEP_BYTES {
            let k = (KEEP_BYTES - got).min(n);
            self.keep[got..got + k].copy_from_slice(&rest[..k]);
        }
        self.payload_got += n as u32;
        used += n;
        if self.payload_got < header.len {
            return (used, None);
        }
        let frame = SmallFrame {
            header,
            prefix: self.keep,
            prefix_len: (header.len as usize).min(KEEP_BYTES) as u8,
        };
        self.head_got = 0;
        self.current = None;
        self.payload_got = 0;
        (used, Some(Ok(frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_frame(out: &mut Vec<u8>, kind: u8, src: Addr, dst: Addr, id: u64, payload: &[u8]) {
        let header = Header::new(kind, src, dst, id, payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(payload);
    }

    const A: Addr = [0xAA; 16];
    const B: Addr = [0xBB; 16];

    #[test]
    fn header_round_trip_is_big_endian() {
        let h = Header::new(kind::DATA, A, B, 0x0102_0304_0506_0708, 0x1234);
        let b = h.encode();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 0x10);
        assert_eq!(&b[2..4], &[0, 0]);
        assert_eq!(&b[4..8], &[0, 0, 0x12, 0x34]);
        assert_eq!(&b[8..24], &A);
        assert_eq!(&b[24..40], &B);
        assert_eq!(&b[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Header::decode(&b), Ok(Some(h)));
    }

    #[test]
    fn short_header_is_incomplete_not_error() {
        let b = Header::new(kind::HELLO, A, NIL, 1, 0).encode();
        assert_eq!(Header::decode(&b[..47]), Ok(None));
    }

    #[test]
    fn bad_version_and_oversize_are_rejected() {
        let mut b = Header::new(kind::DATA, A, B, 1, 0).encode();
        b[0] = 2;
        assert_eq!(Header::decode(&b), Err(DecodeError::BadVersion(2)));
        let b = Header::new(kind::DATA, A, B, 1, PAYLOAD_MAX_BYTES as usize + 1).encode();
        assert!(matches!(Header::decode(&b), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn welcome_and_error_payloads() {
        let mut p = Vec::new();
        p.extend_from_slice(&7u64.to_be_bytes());
        p.extend_from_slice(&90_000u32.to_be_bytes());
        p.extend_from_slice(&(1u32 << 20).to_be_bytes());
        let w = Welcome::decode(&p).unwrap();
        assert_eq!(w.server_time_us, 7);
        assert_eq!(w.heartbeat_timeout_ms, 90_000);
        assert_eq!(w.max_payload, 1 << 20);
        assert!(Welcome::decode(&p[..15]).is_none());
        assert_eq!(decode_error(&[0, 4, b'x']), Some((4, &b"x"[..])));
        assert_eq!(decode_error(&[0]), None);
        assert_eq!(error_name(7), "slow_consumer");
        assert!(error_closes(9) && !error_closes(4));
    }

    fn stream_of_frames() -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, kind::WELCOME, NIL, A, 1, &[9; 16]);
        push_frame(&mut out, kind::HEARTBEAT, NIL, A, 2, &[]);
        let mut err = vec![0, 14];
        err.extend_from_slice(&[b'm'; 100]);
        push_frame(&mut out, kind::ERROR, NIL, A, 0, &err);
        out
    }

    /// Feeding the same bytes in every chunk size must give the same frames.
    #[test]
    fn frame_stream_is_chunking_independent() {
        let bytes = stream_of_frames();
        for chunk in 1..=bytes.len() {
            let mut fs = FrameStream::default();
            let mut frames = Vec::new();
            for piece in bytes.chunks(chunk) {
                let mut at = 0;
                while at < piece.len() {
                    let (n, ev) = fs.push(&piece[at..]);
                    at += n;
                    if let Some(ev) = ev {
                        frames.push(ev.unwrap());
                    }
                }
            }
            assert!(fs.at_boundary());
            assert_eq!(frames.len(), 3, "chunk {chunk}");
            assert_eq!(frames[0].header.kind, kind::WELCOME);
            assert!(frames[0].is_whole());
            assert_eq!(frames[0].prefix(), &[9; 16]);
            assert_eq!(frames[1].header.id, 2);
            assert_eq!(frames[1].prefix(), &[] as &[u8]);
            assert_eq!(frames[2].header.len, 102);
            assert!(!frames[2].is_whole());
            assert_eq!(decode_error(frames[2].prefix()).unwrap().0, 14);
        }
    }

    #[test]
    fn frame_stream_reports_bad_version() {
        let mut b = Header::new(kind::HEARTBEAT, NIL, A, 1, 0).encode();
        b[0] = 9;
        let mut fs = FrameStream::default();
        let (n, ev) = fs.push(&b);
        assert_eq!(n, HEADER_LEN);
        assert_eq!(ev.unwrap().unwrap_err(), DecodeError::BadVersion(9));
    }
}
