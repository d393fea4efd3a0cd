//! What gateway nodes send each other through NATS: four message kinds, each
//! a header naming the sending node followed by records, big-endian. Pure
//! encoding and decoding; nothing here touches the network.
//!
//! ```text
//! header   u8 version (1), u8 name length, name, u64 incarnation
//! node     (<prefix>.node.<name>)  records of
//!            0x01 DATA    u16 shard, u32 slot, u32 gen, u32 len, frame
//!            0x02 BOUNCE  u16 shard, u32 slot, u32 gen, u64 id, u16 code, [16] dst
//! presence (<prefix>.presence)     records of [16] addr, u8 online, u64 at_us
//! state    (<prefix>.state)        records of [16] addr, u64 updated_at_us, u32 len, blob
//! hb       (<prefix>.hb)           the header alone
//! ```
//!
//! `shard, slot, gen` name the sending connection on its node; a BOUNCE
//! carries them back with the reason the frame was not delivered.

use crate::proto::ErrorCode;
use crate::routing::ConnKey;
use bytes::{Buf, BufMut};
use uuid::Uuid;

pub const VERSION: u8 = 1;

/// The longest node name (it is a NATS subject token too).
pub const MAX_NAME: usize = 64;

const DATA: u8 = 1;
const BOUNCE: u8 = 2;

/// Bytes of a DATA record before its frame.
pub const DATA_OVERHEAD: usize = 1 + 2 + 4 + 4 + 4;

/// Whether `name` can be a node name: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The sender of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender<'a> {
    pub name: &'a str,
    /// Changes every time the node starts, so a restart is told apart from
    /// a node that never went away.
    pub incarnation: u64,
}

/// A connection on the node that sent a DATA frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireConn {
    pub shard: u16,
    pub conn: ConnKey,
}

#[derive(Debug, PartialEq, Eq)]
pub enum NodeRecord<'a> {
    Data {
        from: WireConn,
        frame: &'a [u8],
    },
    Bounce {
        to: WireConn,
        id: u64,
        code: ErrorCode,
        dst: Uuid,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceRecord {
    pub addr: Uuid,
    pub online: bool,
    pub at_us: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct StateRecord<'a> {
    pub addr: Uuid,
    pub updated_at_us: u64,
    pub blob: &'a [u8],
}

/// Why a message could not be read (a peer of another version, or a bug).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("bad node name")]
    Name,
    #[error("unknown record tag {0}")]
    Tag(u8),
    #[error("unknown error code {0}")]
    Code(u16),
}

pub fn put_header(buf: &mut Vec<u8>, me: &Sender<'_>) {
    debug_assert!(valid_name(me.name));
    buf.put_u8(VERSION);
    buf.put_u8(me.name.len() as u8);
    buf.put_slice(me.name.as_bytes());
    buf.put_u64(me.incarnation);
}

pub fn header_len(name: &str) -> usize {
    2 + name.len() + 8
}

/// Reads the header; returns the sender and the records after it.
pub fn split_header(mut msg: &[u8]) -> Result<(Sender<'_>, &[u8]), WireError> {
    if msg.len() < 2 {
        return Err(WireError::Truncated);
    }
    let version = msg.get_u8();
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let n = msg.get_u8() as usize;
    if msg.len() < n + 8 {
        return Err(WireError::Truncated);
    }
    let name = std::str::from_utf8(&msg[..n]).map_err(|_| WireError::Name)?;
    if !valid_name(name) {
        return Err(WireError::Name);
    }
    msg.advance(n);
    let incarnation = msg.get_u64();
    Ok((Sender { name, incarnation }, msg))
}

pub fn put_data(buf: &mut Vec<u8>, from: WireConn, frame: &[u8]) {
    buf.put_u8(DATA);
    buf.put_u16(from.shard);
    buf.put_u32(from.conn.slot);
    buf.put_u32(from.conn.gen);
    buf.put_u32(frame.len() as u32);
    buf.put_slice(frame);
}

pub fn put_bounce(buf: &mut Vec<u8>, to: WireConn, id: u64, code: ErrorCode, dst: Uuid) {
    buf.put_u8(BOUNCE);
    buf.put_u16(to.shard);
    buf.put_u32(to.conn.slot);
    buf.put_u32(to.conn.gen);
    buf.put_u64(id);
    buf.put_u16(code as u16);
    buf.put_slice(dst.as_bytes());
}

pub fn put_presence(buf: &mut Vec<u8>, r: PresenceRecord) {
    buf.put_slice(r.addr.as_bytes());
    buf.put_u8(r.online as u8);
    buf.put_u64(r.at_us);
}

pub fn put_state(buf: &mut Vec<u8>, addr: Uuid, updated_at_us: u64, blob: &[u8]) {
    buf.put_slice(addr.as_bytes());
    buf.put_u64(updated_at_us);
    buf.put_u32(blob.len() as u32);
    buf.put_slice(blob);
}

fn need(b: &[u8], n: usize) -> Result<(), WireError> {
    if b.len() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn get_uuid(b: &mut &[u8]) -> Uuid {
    let u = Uuid::from_slice(&b[..16]).expect("16 bytes");
    b.advance(16);
    u
}

fn get_conn(b: &mut &[u8]) -> WireConn {
    WireConn {
        shard: b.get_u16(),
        conn: ConnKey {
            slot: b.get_u32(),
            gen: b.get_u32(),
        },
    }
}

/// The records of a node message, in order.
pub struct NodeRecords<'a>(pub &'a [u8]);

impl<'a> Iterator for NodeRecords<'a> {
    type Item = Result<NodeRecord<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let r = read_node_record(&mut self.0);
        if r.is_err() {
            self.0 = &[];
        }
        Some(r)
    }
}

fn read_node_record<'a>(b: &mut &'a [u8]) -> Result<NodeRecord<'a>, WireError> {
    let tag = b.get_u8();
    match tag {
        DATA => {
            need(b, DATA_OVERHEAD - 1)?;
            let from = get_conn(b);
            let len = b.get_u32() as usize;
            need(b, len)?;
            let frame = &b[..len];
            b.advance(len);
            Ok(NodeRecord::Data { from, frame })
        }
        BOUNCE => {
            need(b, 2 + 4 + 4 + 8 + 2 + 16)?;
            let to = get_conn(b);
            let id = b.get_u64();
            let raw = b.get_u16();
            let code = ErrorCode::from_u16(raw).ok_or(WireError::Code(raw))?;
            let dst = get_uuid(b);
            Ok(NodeRecord::Bounce { to, id, code, dst })
        }
        other => Err(WireError::Tag(other)),
    }
}

/// The records of a presence message.
pub struct PresenceRecords<'a>(pub &'a [u8]);

impl Iterator for PresenceRecords<'_> {
    type Item = Result<PresenceRecord, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        if self.0.len() < 25 {
            self.0 = &[];
            return Some(Err(WireError::Truncated));
        }
        let b = &mut self.0;
        let addr = get_uuid(b);
        let online = b.get_u8() != 0;
        let at_us = b.get_u64();
        Some(Ok(PresenceRecord {
            addr,
            online,
            at_us,
        }))
    }
}

/// The records of a state message.
pub struct StateRecords<'a>(pub &'a [u8]);

impl<'a> Iterator for StateRecords<'a> {
    type Item = Result<StateRecord<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let r = (|| {
            let b = &mut self.0;
            need(b, 28)?;
            let addr = get_uuid(b);
            let updated_at_us = b.get_u64();
            let len = b.get_u32() as usize;
            need(b, len)?;
            let blob = &b[..len];
            b.advance(len);
            Ok(StateRecord {
                addr,
                updated_at_us,
                blob,
            })
        })();
        if r.is_err() {
            self.0 = &[];
        }
        Some(r)
    }
}

/// A directory entry's value: where an address is connected and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub since_us: u64,
    pub incarnation: u64,
    pub node: String,
}

pub fn encode_dir(since_us: u64, me: &Sender<'_>) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + me.name.len());
    v.put_u64(since_us);
    v.put_u64(me.incarnation);
    v.put_slice(me.name.as_bytes());
    v
}

pub fn decode_dir(mut v: &[u8]) -> Option<DirEntry> {
    if v.len() < 17 {
        return None;
    }
    let since_us = v.get_u64();
    let incarnation = v.get_u64();
    let node = std::str::from_utf8(v).ok().filter(|n| valid_name(n))?;
    Some(DirEntry {
        since_us,
        incarnation,
        node: node.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Sender<'static> {
        Sender {
            name: "node-a",
            incarnation: 42,
        }
    }

    #[test]
    fn node_records_round_trip() {
        let mut buf = Vec::new();
        put_header(&mut buf, &me());
        let from = WireConn {
            shard: 3,
            conn: ConnKey { slot: 7, gen: 9 },
        };
        put_data(&mut buf, from, b"frame bytes");
        let dst = Uuid::from_u128(5);
        put_bounce(&mut buf, from, 77, ErrorCode::DstOffline, dst);
        put_data(&mut buf, from, b"");
        let (sender, rest) = split_header(&buf).unwrap();
        assert_eq!(sender, me());
        let got: Vec<_> = NodeRecords(rest).map(Result::unwrap).collect();
        assert_eq!(
            got,
            vec![
                NodeRecord::Data {
                    from,
                    frame: b"frame bytes"
                },
                NodeRecord::Bounce {
                    to: from,
                    id: 77,
                    code: ErrorCode::DstOffline,
                    dst
                },
                NodeRecord::Data { from, frame: b"" },
            ]
        );
    }

    #[test]
    fn presence_and_state_round_trip() {
        let mut buf = Vec::new();
        let p = PresenceRecord {
            addr: Uuid::from_u128(1),
            online: true,
            at_us: 123,
        };
        put_presence(&mut buf, p);
        put_presence(&mut buf, PresenceRecord { online: false, ..p });
        let got: Vec<_> = PresenceRecords(&buf).map(Result::unwrap).collect();
        assert_eq!(got, vec![p, PresenceRecord { online: false, ..p }]);

        let mut buf = Vec::new();
        put_state(&mut buf, Uuid::from_u128(2), 9, b"{\"t\":1}");
        put_state(&mut buf, Uuid::from_u128(3), 10, b"");
        let got: Vec<_> = StateRecords(&buf).map(Result::unwrap).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].blob, b"{\"t\":1}");
        assert_eq!(got[1].addr, Uuid::from_u128(3));
    }

    #[test]
    fn truncated_and_foreign_messages_are_errors_not_panics() {
        let mut buf = Vec::new();
        put_header(&mut buf, &me());
        put_data(
            &mut buf,
            WireConn {
                shard: 0,
                conn: ConnKey { slot: 0, gen: 0 },
            },
            b"0123456789",
        );
        for cut in 0..buf.len() {
            match split_header(&buf[..cut]) {
                Err(_) => {}
                Ok((_, rest)) => {
                    // Every prefix either ends cleanly or reports an error.
                    for r in NodeRecords(rest) {
                        let _ = r;
                    }
                    assert!(NodeRecords(rest).any(|r| r.is_err()) || rest.is_empty());
                }
            }
        }
        assert_eq!(split_header(&[2, 0]).unwrap_err(), WireError::Version(2));
        assert_eq!(
            NodeRecords(&[9]).next().unwrap().unwrap_err(),
            WireError::Tag(9)
        );
        assert!(PresenceRecords(&[0; 24]).next().unwrap().is_err());
        let mut long = [0u8; 30];
        long[27] = 100; // a blob longer than what follows
        assert!(StateRecords(&long).next().unwrap().is_err());
    }

    #[test]
    fn directory_values_round_trip_and_reject_garbage() {
        let v = encode_dir(99, &me());
        assert_eq!(
            decode_dir(&v),
            Some(DirEntry {
                since_us: 99,
                incarnation: 42,
                node: "node-a".into()
            })
        );
        assert_eq!(decode_dir(&v[..16]), None);
        let mut bad = v.clone();
        bad.push(b' ');
        assert_eq!(decode_dir(&bad), None);
    }

    #[test]
    fn node_names_are_subject_tokens() {
        assert!(valid_name("a"));
        assert!(valid_name("gw-eu_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("a.b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("*"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
