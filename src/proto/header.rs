//! The 48-byte frame header (PROTOCOL.md "Frame (binary)").

use uuid::Uuid;

use super::kind::Kind;

/// Size of the header that starts every binary frame.
pub const HEADER_LEN: usize = 48;

/// The only protocol version; any other value is answered `bad_frame`.
pub const VERSION: u8 = 1;

// Field offsets, all big-endian.
const KIND_AT: usize = 1;
const FLAGS_AT: usize = 2;
const LEN_AT: usize = 4;
const SRC_AT: usize = 8;
const DST_AT: usize = 24;
const ID_AT: usize = 40;

/// A parsed header. Every field is kept as received, including a `kind` this
/// version does not know and non-zero `flags`, so that validation (not
/// parsing) decides what the peer is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// Raw kind byte; see [`Header::kind`].
    pub kind: u8,
    /// Zero in v1; receivers ignore unknown bits.
    pub flags: u16,
    /// Payload length in bytes.
    pub len: u32,
    pub src: Uuid,
    pub dst: Uuid,
    /// Sender-chosen correlation id, echoed by replies.
    pub id: u64,
}

impl Header {
    /// A version 1 header with no flags.
    pub fn new(kind: Kind, src: Uuid, dst: Uuid, id: u64, len: u32) -> Header {
        Header {
            version: VERSION,
            kind: kind as u8,
            flags: 0,
            len,
            src,
            dst,
            id,
        }
    }

    /// Reads the first 48 bytes of `buf`. Returns `None` only when `buf` is
    /// shorter than a header: any 48 bytes are a header, and whether it is an
    /// acceptable one is for validation to say.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..HEADER_LEN)?;
        Some(Header {
            version: h[0],
            kind: h[KIND_AT],
            flags: u16::from_be_bytes(array(h, FLAGS_AT)),
            len: u32::from_be_bytes(array(h, LEN_AT)),
            src: Uuid::from_bytes(array(h, SRC_AT)),
            dst: Uuid::from_bytes(array(h, DST_AT)),
            id: u64::from_be_bytes(array(h, ID_AT)),
        })
    }

    /// Writes the header in wire order.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = self.version;
        out[KIND_AT] = self.kind;
        out[FLAGS_AT..LEN_AT].copy_from_slice(&self.flags.to_be_bytes());
        out[LEN_AT..SRC_AT].copy_from_slice(&self.len.to_be_bytes());
        out[SRC_AT..DST_AT].copy_from_slice(self.src.as_bytes());
        out[DST_AT..ID_AT].copy_from_slice(self.dst.as_bytes());
        out[ID_AT..HEADER_LEN].copy_from_slice(&self.id.to_be_bytes());
    }

    /// The kind, or `None` when the kind byte is not one this version defines.
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind)
    }
}

/// Copies `N` bytes starting at `at`; the caller guarantees they exist.
pub(super) fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&buf[at..at + N]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 1,
            kind: 0x10,
            flags: 0xA1B2,
            len: 0x0102_0304,
            src: Uuid::from_bytes([0x11; 16]),
            dst: Uuid::from_u128(0x2021_2223_2425_2627_2829_2A2B_2C2D_2E2F),
            id: 0x3031_3233_3435_3637,
        }
    }

    /// The same header, written out by hand from the offset table.
    fn sample_bytes() -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = 1;
        b[1] = 0x10;
        b[2..4].copy_from_slice(&[0xA1, 0xB2]);
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[8..24].fill(0x11);
        for (i, byte) in b[24..40].iter_mut().enumerate() {
            *byte = 0x20 + i as u8;
        }
        for (i, byte) in b[40..48].iter_mut().enumerate() {
            *byte = 0x30 + i as u8;
        }
        b
    }

    #[test]
    fn write_follows_the_offset_table() {
        let mut out = [0u8; HEADER_LEN];
        sample().write(&mut out);
        assert_eq!(out, sample_bytes());
    }

    #[test]
    fn parse_reads_every_field() {
        assert_eq!(Header::parse(&sample_bytes()), Some(sample()));
    }

    #[test]
    fn parse_needs_48_bytes_and_reads_only_those() {
        let bytes = sample_bytes();
        assert_eq!(Header::parse(&[]), None);
        assert_eq!(Header::parse(&bytes[..HEADER_LEN - 1]), None);
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&[0xEE; 10]);
        assert_eq!(Header::parse(&longer), Some(sample()));
    }

    #[test]
    fn parse_keeps_unknown_version_kind_and_flags() {
        let mut bytes = sample_bytes();
        bytes[0] = 7;
        bytes[1] = 0x99;
        bytes[2..4].copy_from_slice(&[0xFF, 0xFF]);
        let header = Header::parse(&bytes).expect("48 bytes");
        assert_eq!(
            (header.version, header.kind, header.flags),
            (7, 0x99, 0xFFFF)
        );
        assert_eq!(header.kind(), None);
    }

    #[test]
    fn new_sets_version_one_and_no_flags() {
        let header = Header::new(Kind::Presence, Uuid::nil(), Uuid::max(), 9, 25);
        assert_eq!(header.version, VERSION);
        assert_eq!(header.flags, 0);
        assert_eq!(header.kind(), Some(Kind::Presence));
        assert_eq!(header.kind, 0x42);
    }
}
