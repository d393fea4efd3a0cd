//! Layouts of the structured payloads the gateway sends. Each type writes
//! itself into a frame and parses itself back, so the layout lives in one
//! place for the encoder, the JSON mapping and clients written in Rust.

use uuid::Uuid;

use super::header::array;
use super::kind::ErrorCode;

/// Reads big-endian fields off the front of a payload, like rustls' `Reader`.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(payload: &'a [u8]) -> Self {
        Reader { rest: payload }
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.rest.len() < N {
            return None;
        }
        let (head, rest) = self.rest.split_at(N);
        self.rest = rest;
        Some(array(head, 0))
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }

    /// A flag byte. Any non-zero value reads as true: the gateway writes only
    /// 0 and 1, and a lenient reader costs nothing here.
    fn flag(&mut self) -> Option<bool> {
        self.take::<1>().map(|[b]| b != 0)
    }

    fn address(&mut self) -> Option<Uuid> {
        self.take().map(Uuid::from_bytes)
    }

    /// The bytes not read yet.
    fn rest(self) -> &'a [u8] {
        self.rest
    }

    /// Succeeds only when every byte was read, for fixed-size payloads.
    fn finish(self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

/// WELCOME: `server_time_us u64`, `heartbeat_timeout_ms u32`, `max_payload u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub server_time_us: u64,
    pub heartbeat_timeout_ms: u32,
    pub max_payload: u32,
}

impl Welcome {
    pub const LEN: usize = 16;

    pub fn parse(payload: &[u8]) -> Option<Self> {
        let mut r = Reader::new(payload);
        let welcome = Welcome {
            server_time_us: r.u64()?,
            heartbeat_timeout_ms: r.u32()?,
            max_payload: r.u32()?,
        };
        r.finish()?;
        Some(welcome)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.server_time_us.to_be_bytes());
        out.extend_from_slice(&self.heartbeat_timeout_ms.to_be_bytes());
        out.extend_from_slice(&self.max_payload.to_be_bytes());
    }
}

/// TIME_RESP: `t0` (the client's, echoed), `t1` gateway receive time, `t2`
/// gateway send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeResp {
    pub t0: u64,
    pub t1: u64,
    pub t2: u64,
}

impl TimeResp {
    pub const LEN: usize = 24;

    pub fn parse(payload: &[u8]) -> Option<Self> {
        let mut r = Reader::new(payload);
        let resp = TimeResp {
            t0: r.u64()?,
            t1: r.u64()?,
            t2: r.u64()?,
        };
        r.finish()?;
        Some(resp)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        for t in [self.t0, self.t1, self.t2] {
            out.extend_from_slice(&t.to_be_bytes());
        }
    }
}

/// PRESENCE: `address [16]`, `online u8`, `at_us u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    pub address: Uuid,
    pub online: bool,
    pub at_us: u64,
}

impl Presence {
    pub const LEN: usize = 25;

    pub fn parse(payload: &[u8]) -> Option<Self> {
        let mut r = Reader::new(payload);
        let presence = Presence {
            address: r.address()?,
            online: r.flag()?,
            at_us: r.u64()?,
        };
        r.finish()?;
        Some(presence)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.address.as_bytes());
        out.push(u8::from(self.online));
        out.extend_from_slice(&self.at_us.to_be_bytes());
    }
}

/// STATE: `address [16]`, `updated_at_us u64`, `online u8`, then the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State<'a> {
    pub address: Uuid,
    pub updated_at_us: u64,
    pub online: bool,
    pub blob: &'a [u8],
}

impl<'a> State<'a> {
    /// Size of the fields before the blob.
    pub const FIXED_LEN: usize = 25;

    pub fn parse(payload: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(payload);
        Some(State {
            address: r.address()?,
            updated_at_us: r.u64()?,
            online: r.flag()?,
            blob: r.rest(),
        })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.address.as_bytes());
        out.extend_from_slice(&self.updated_at_us.to_be_bytes());
        out.push(u8::from(self.online));
        out.extend_from_slice(self.blob);
    }
}

/// ERROR: `code u16`, then a UTF-8 message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorPayload<'a> {
    pub code: ErrorCode,
    pub message: &'a str,
}

impl<'a> ErrorPayload<'a> {
    /// Size of the code before the message.
    pub const FIXED_LEN: usize = 2;

    /// `None` for an undefined code or a message that is not UTF-8, neither
    /// of which the gateway sends.
    pub fn parse(payload: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(payload);
        let code = ErrorCode::from_u16(r.u16()?)?;
        let message = std::str::from_utf8(r.rest()).ok()?;
        Some(ErrorPayload { code, message })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.code as u16).to_be_bytes());
        out.extend_from_slice(self.message.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Uuid = Uuid::from_u128(0x0102_0304_0506_0708_090A_0B0C_0D0E_0F10);

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out);
        out
    }

    #[test]
    fn welcome_layout() {
        let w = Welcome {
            server_time_us: 0x0102_0304_0506_0708,
            heartbeat_timeout_ms: 90_000,
            max_payload: 1 << 20,
        };
        let bytes = written(|out| w.write(out));
        assert_eq!(
            bytes,
            [1, 2, 3, 4, 5, 6, 7, 8, 0, 0x01, 0x5F, 0x90, 0, 0x10, 0, 0]
        );
        assert_eq!(Welcome::parse(&bytes), Some(w));
        assert_eq!(Welcome::parse(&bytes[..15]), None);
        assert_eq!(Welcome::parse(&[bytes.as_slice(), &[0]].concat()), None);
    }

    #[test]
    fn time_resp_layout() {
        let t = TimeResp {
            t0: 1,
            t1: 2,
            t2: u64::MAX,
        };
        let bytes = written(|out| t.write(out));
        assert_eq!(bytes.len(), TimeResp::LEN);
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&bytes[8..16], &[0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(&bytes[16..], &[0xFF; 8]);
        assert_eq!(TimeResp::parse(&bytes), Some(t));
        assert_eq!(TimeResp::parse(&bytes[..23]), None);
    }

    #[test]
    fn presence_layout() {
        let p = Presence {
            address: ADDR,
            online: true,
            at_us: 0x1122,
        };
        let bytes = written(|out| p.write(out));
        assert_eq!(&bytes[..16], ADDR.as_bytes());
        assert_eq!(bytes[16], 1);
        assert_eq!(&bytes[17..], &[0, 0, 0, 0, 0, 0, 0x11, 0x22]);
        assert_eq!(Presence::parse(&bytes), Some(p));
        assert_eq!(Presence::parse(&bytes[..24]), None);

        let offline = written(|out| Presence { online: false, ..p }.write(out));
        assert_eq!(offline[16], 0);
        assert_eq!(Presence::parse(&offline).map(|p| p.online), Some(false));
    }

    #[test]
    fn online_reads_any_nonzero_byte_as_true() {
        let mut bytes = written(|out| {
            Presence {
                address: ADDR,
                online: true,
                at_us: 5,
            }
            .write(out)
        });
        bytes[16] = 0x80;
        assert_eq!(Presence::parse(&bytes).map(|p| p.online), Some(true));
    }

    #[test]
    fn state_layout_keeps_the_blob() {
        let s = State {
            address: ADDR,
            updated_at_us: 77,
            online: true,
            blob: b"{\"t\":1}",
        };
        let bytes = written(|out| s.write(out));
        assert_eq!(&bytes[..16], ADDR.as_bytes());
        assert_eq!(&bytes[16..24], &77u64.to_be_bytes());
        assert_eq!(bytes[24], 1);
        assert_eq!(&bytes[25..], b"{\"t\":1}");
        assert_eq!(State::parse(&bytes), Some(s));

        let empty = written(|out| State { blob: b"", ..s }.write(out));
        assert_eq!(empty.len(), State::FIXED_LEN);
        assert_eq!(State::parse(&empty).map(|s| s.blob), Some(&b""[..]));
        assert_eq!(State::parse(&empty[..24]), None);
    }

    #[test]
    fn error_layout() {
        let e = ErrorPayload {
            code: ErrorCode::SlowConsumer,
            message: "queue full",
        };
        let bytes = written(|out| e.write(out));
        assert_eq!(&bytes[..2], &[0, 7]);
        assert_eq!(&bytes[2..], b"queue full");
        assert_eq!(ErrorPayload::parse(&bytes), Some(e));
        assert_eq!(ErrorPayload::parse(&[0]), None);
        assert_eq!(ErrorPayload::parse(&[0, 99]), None, "undefined code");
        assert_eq!(
            ErrorPayload::parse(&[0, 1, 0xFF]),
            None,
            "message not UTF-8"
        );
        assert_eq!(
            ErrorPayload::parse(&[0, 14]),
            Some(ErrorPayload {
                code: ErrorCode::Timeout,
                message: ""
            })
        );
    }
}
