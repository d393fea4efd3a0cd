//! MQTT 3.1.1 client packets for the `pingpong --mqtt` target, sans-IO.
//!
//! Only what a benchmark client needs: CONNECT (clean session), SUBSCRIBE to
//! one topic at QoS 0, PUBLISH at QoS 0, PINGREQ and DISCONNECT to send, and
//! an incremental parser for what a broker sends back (CONNACK, SUBACK,
//! PUBLISH, PINGRESP). The parser looks at whatever bytes have arrived and
//! either returns one whole packet with the bytes it used, or `None` when
//! more are needed; it keeps no state between calls and never allocates, so
//! a caller just calls it again once more bytes are in. A remaining length
//! above the caller's limit, a remaining length longer than four bytes, and
//! any packet a broker may not send a client are named errors.
//!
//! Mapping from the gateway protocol: an endpoint's address (a UUID) becomes
//! its topic, the 32 lowercase hex digits of the UUID (the same text as the
//! NATS subject, [`nats::subject`]), and also its client id; HELLO/WELCOME
//! becomes CONNECT/CONNACK + SUBSCRIBE/SUBACK; DATA becomes PUBLISH (sent to
//! the peer's topic, received on the own topic); HEARTBEAT becomes
//! PINGREQ/PINGRESP.

use std::ops::Range;

use crate::nats;
use crate::proto::Addr;

/// Bytes of a topic (and of a client id): the address in hex.
pub const TOPIC_LEN: usize = nats::SUBJECT_LEN;
/// A topic: the address in lowercase hex, as [`nats::subject`] writes it.
pub type Topic = nats::Subject;
/// Largest remaining length the encoding can express (four varint bytes).
pub const MAX_REMAINING: usize = 268_435_455;
/// Bytes of a fixed header, at most: type/flags byte and four length bytes.
pub const FIXED_HEADER_MAX: usize = 1 + 4;
/// Bytes a PUBLISH to one of our topics adds around its payload, at most
/// (fixed header, topic length and topic, and a packet id if QoS > 0).
pub const PUBLISH_OVERHEAD_MAX: usize = FIXED_HEADER_MAX + 2 + TOPIC_LEN + 2;
/// Granted-QoS byte of a SUBACK that refuses the subscription.
pub const SUBACK_FAILURE: u8 = 0x80;

/// PINGREQ: the client's keepalive. The broker answers PINGRESP. Pingpong
/// needs none (its traffic keeps connections alive); it is here for idle
/// connections held against a broker.
#[allow(dead_code)]
pub const PINGREQ: &[u8] = &[0xC0, 0x00];
/// DISCONNECT: a clean goodbye; the broker closes the connection.
pub const DISCONNECT: &[u8] = &[0xE0, 0x00];

/// Packet types (the high nibble of the first byte).
mod ty {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const PINGRESP: u8 = 13;
}

/// The topic of an address: its 32 lowercase hex digits.
pub fn topic(addr: &Addr) -> Topic {
    nats::subject(addr)
}

/// Appends CONNECT: protocol "MQTT" level 4, clean session, no will, no
/// user name or password, client id = the address's [`topic`].
/// `keepalive_s` = 0 turns the broker's keepalive timeout off; otherwise the
/// broker closes a connection that sent nothing for 1.5 x `keepalive_s`.
pub fn encode_connect(out: &mut Vec<u8>, addr: &Addr, keepalive_s: u16) {
    const CLEAN_SESSION: u8 = 0x02;
    let client_id = topic(addr);
    // Protocol name (2 + 4), level, flags, keepalive (2), client id (2 + n).
    let remaining = 6 + 1 + 1 + 2 + 2 + client_id.len();
    out.push(ty::CONNECT << 4);
    push_remaining(out, remaining);
    out.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, CLEAN_SESSION]);
    out.extend_from_slice(&keepalive_s.to_be_bytes());
    push_u16_len(out, client_id.len());
    out.extend_from_slice(&client_id);
}

/// Appends SUBSCRIBE with `packet_id` (must not be 0) for one topic at QoS 0.
/// The broker answers SUBACK with the same packet id.
pub fn encode_subscribe(out: &mut Vec<u8>, packet_id: u16, topic: &Topic) {
    assert_ne!(packet_id, 0, "MQTT packet ids start at 1");
    // Packet id, topic filter (2 + n), requested QoS.
    let remaining = 2 + 2 + topic.len() + 1;
    // The reserved flags of SUBSCRIBE are 0b0010.
    out.push(ty::SUBSCRIBE << 4 | 0x02);
    push_remaining(out, remaining);
    out.extend_from_slice(&packet_id.to_be_bytes());
    push_u16_len(out, topic.len());
    out.extend_from_slice(topic);
    out.push(0x00);
}

/// Appends the head of a QoS 0 PUBLISH to `dst` (not retained); the caller
/// appends exactly `payload_len` payload bytes after it.
///
/// Panics if the packet would exceed [`MAX_REMAINING`].
pub fn encode_publish_head(out: &mut Vec<u8>, dst: &Topic, payload_len: usize) {
    let remaining = publish_remaining(payload_len);
    assert!(remaining <= MAX_REMAINING, "MQTT PUBLISH too large");
    out.push(ty::PUBLISH << 4);
    push_remaining(out, remaining);
    push_u16_len(out, dst.len());
    out.extend_from_slice(dst);
}

/// Appends a whole QoS 0 PUBLISH of `payload` to `dst`.
pub fn encode_publish(out: &mut Vec<u8>, dst: &Topic, payload: &[u8]) {
    encode_publish_head(out, dst, payload.len());
    out.extend_from_slice(payload);
}

/// Remaining length of a PUBLISH to one of our topics with `payload_len`
/// payload bytes: at QoS 0 exactly, at QoS 1 or 2 two bytes (the packet id)
/// more. A receiver's limit for [`parse`] is this plus 2.
pub const fn publish_remaining(payload_len: usize) -> usize {
    2 + TOPIC_LEN + payload_len
}

fn push_u16_len(out: &mut Vec<u8>, len: usize) {
    let len = u16::try_from(len).expect("MQTT strings are at most 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
}

/// The remaining length as 1 to 4 bytes, 7 bits each, least significant
/// first, high bit set on every byte but the last.
fn push_remaining(out: &mut Vec<u8>, mut n: usize) {
    debug_assert!(n <= MAX_REMAINING);
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// One packet from the broker. Ranges index the buffer given to [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Answer to CONNECT. `code` 0 is accepted; see [`connack_refusal`].
    ConnAck {
        session_present: bool,
        code: u8,
    },
    /// Answer to a one-topic SUBSCRIBE: the granted QoS (0, 1, 2) or
    /// [`SUBACK_FAILURE`].
    SubAck {
        packet_id: u16,
        granted: u8,
    },
    /// An application message. `packet_id` is 0 at QoS 0.
    Publish {
        topic: Range<usize>,
        payload: Range<usize>,
        qos: u8,
        retain: bool,
        packet_id: u16,
    },
    PingResp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The remaining length has a continuation bit on its fourth byte.
    BadRemainingLength,
    /// The remaining length is above the caller's limit.
    TooLarge,
    /// Fixed-header flags that are reserved for this packet type.
    BadFlags,
    /// CONNACK not 2 bytes long, or reserved acknowledge flags set.
    BadConnAck,
    /// SUBACK not 3 bytes long (one topic), packet id 0, or a granted QoS
    /// that does not exist.
    BadSubAck,
    /// PUBLISH with QoS 3, DUP on QoS 0, an empty or overlong topic, or
    /// packet id 0 at QoS 1 or 2.
    BadPublish,
    /// PINGRESP with a body.
    BadPingResp,
    /// A packet type a broker does not send to a client that only publishes
    /// and subscribes at QoS 0 (the type number is kept).
    Unexpected(u8),
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::BadRemainingLength => "mqtt_bad_remaining_length",
            ParseError::TooLarge => "mqtt_packet_too_large",
            ParseError::BadFlags => "mqtt_bad_header_flags",
            ParseError::BadConnAck => "mqtt_bad_connack",
            ParseError::BadSubAck => "mqtt_bad_suback",
            ParseError::BadPublish => "mqtt_bad_publish",
            ParseError::BadPingResp => "mqtt_bad_pingresp",
            ParseError::Unexpected(t) => match t {
                1 => "mqtt_unexpected_connect",
                4 => "mqtt_unexpected_puback",
                5 => "mqtt_unexpected_pubrec",
                6 => "mqtt_unexpected_pubrel",
                7 => "mqtt_unexpected_pubcomp",
                8 => "mqtt_unexpected_subscribe",
                10 => "mqtt_unexpected_unsubscribe",
                11 => "mqtt_unexpected_unsuback",
                12 => "mqtt_unexpected_pingreq",
                14 => "mqtt_unexpected_disconnect",
                _ => "mqtt_reserved_packet_type",
            },
        }
    }
}

/// `None` when CONNACK's return code accepts the connection, else the
/// reason the broker gave, by its MQTT 3.1.1 name.
pub fn connack_refusal(code: u8) -> Option<&'static str> {
    match code {
        0 => None,
        1 => Some("mqtt_connack_unacceptable_protocol_version"),
        2 => Some("mqtt_connack_identifier_rejected"),
        3 => Some("mqtt_connack_server_unavailable"),
        4 => Some("mqtt_connack_bad_user_name_or_password"),
        5 => Some("mqtt_connack_not_authorized"),
        _ => Some("mqtt_connack_reserved_code"),
    }
}

/// Parses the packet at the start of `buf`, accepting remaining lengths up to
/// `max_remaining`. `Ok(Some((packet, used)))`: one whole packet in
/// `buf[..used]`. `Ok(None)`: incomplete, call again with more bytes (the
/// same prefix included). Errors are found as early as the bytes allow: a
/// bad type or flags from the first byte, a bad or too large length as soon
/// as it is complete, before the body arrives.
pub fn parse(buf: &[u8], max_remaining: usize) -> Result<Option<(Packet, usize)>, ParseError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (kind, flags) = (first >> 4, first & 0x0f);
    match kind {
        ty::CONNACK | ty::SUBACK | ty::PINGRESP if flags != 0 => return Err(ParseError::BadFlags),
        ty::CONNACK | ty::SUBACK | ty::PINGRESP => {}
        // QoS 3 does not exist; DUP is only for QoS 1 and 2.
        ty::PUBLISH if flags & 0x06 == 0x06 || flags & 0x0e == 0x08 => {
            return Err(ParseError::BadPublish)
        }
        ty::PUBLISH => {}
        other => return Err(ParseError::Unexpected(other)),
    }
    let Some((remaining, len_bytes)) = decode_remaining(&buf[1..])? else {
        return Ok(None);
    };
    if remaining > max_remaining {
        return Err(ParseError::TooLarge);
    }
    let qos = (flags >> 1) & 0x03;
    match kind {
        ty::CONNACK if remaining != 2 => return Err(ParseError::BadConnAck),
        ty::SUBACK if remaining != 3 => return Err(ParseError::BadSubAck),
        ty::PINGRESP if remaining != 0 => return Err(ParseError::BadPingResp),
        // Topic length, at least one topic byte, and the packet id if any.
        ty::PUBLISH if remaining < 2 + 1 + 2 * usize::from(qos > 0) => {
            return Err(ParseError::BadPublish)
        }
        _ => {}
    }
    let body_at = 1 + len_bytes;
    let total = body_at + remaining;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[body_at..total];
    let packet = match kind {
        ty::CONNACK => {
            if body[0] & 0xfe != 0 {
                return Err(ParseError::BadConnAck);
            }
            Packet::ConnAck {
                session_present: body[0] & 0x01 != 0,
                code: body[1],
            }
        }
        ty::SUBACK => {
            let packet_id = u16::from_be_bytes([body[0], body[1]]);
            let granted = body[2];
            if packet_id == 0 || !matches!(granted, 0..=2 | SUBACK_FAILURE) {
                return Err(ParseError::BadSubAck);
            }
            Packet::SubAck { packet_id, granted }
        }
        ty::PINGRESP => Packet::PingResp,
        ty::PUBLISH => {
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic_at = 2;
            let mut at = topic_at + topic_len;
            let id_len = if qos > 0 { 2 } else { 0 };
            if topic_len == 0 || at + id_len > body.len() {
                return Err(ParseError::BadPublish);
            }
            let mut packet_id = 0;
            if qos > 0 {
                packet_id = u16::from_be_bytes([body[at], body[at + 1]]);
                if packet_id == 0 {
                    return Err(ParseError::BadPublish);
                }
                at += 2;
            }
            Packet::Publish {
                topic: body_at + topic_at..body_at + topic_at + topic_len,
                payload: body_at + at..total,
                qos,
                retain: flags & 0x01 != 0,
                packet_id,
            }
        }
        _ => unreachable!("packet types were checked above"),
    };
    Ok(Some((packet, total)))
}

/// Decodes the remaining length at the start of `buf`: `Some((value, bytes
/// used))`, or `None` when its last byte has not arrived yet.
fn decode_remaining(buf: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(ParseError::BadRemainingLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn addr(b: u8) -> Addr {
        [b; 16]
    }

    /// Parses every packet in `bytes`, feeding them in growing prefixes the
    /// way a socket would, cut at `cut` first. Returns each packet with its
    /// topic and payload bytes.
    fn parse_all_with_cut(bytes: &[u8], cut: usize) -> Vec<(Packet, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let mut head = 0;
        let mut avail = cut.min(bytes.len());
        loop {
            match parse(&bytes[head..avail], MAX).expect("valid stream") {
                Some((p, used)) => {
                    let base = head;
                    let (topic, payload) = match &p {
                        Packet::Publish { topic, payload, .. } => (
                            bytes[base + topic.start..base + topic.end].to_vec(),
                            bytes[base + payload.start..base + payload.end].to_vec(),
                        ),
                        _ => (Vec::new(), Vec::new()),
                    };
                    out.push((p, topic, payload));
                    head += used;
                }
                None if avail == bytes.len() => break,
                None => avail = bytes.len(),
            }
        }
        assert_eq!(head, bytes.len(), "every byte consumed");
        out
    }

    /// What a broker sends: CONNACK, SUBACK, PUBLISHes of several sizes
    /// (1-, 2- and 3-byte remaining lengths, empty payload, QoS 1 with a
    /// packet id, retained), PINGRESP.
    fn stream() -> Vec<u8> {
        let t = topic(&addr(0x5a));
        let mut s = vec![0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00];
        encode_publish(&mut s, &t, b"hello");
        encode_publish(&mut s, &t, &[7u8; 200]);
        encode_publish(&mut s, &t, b"");
        s.extend_from_slice(&[0xD0, 0x00]);
        // QoS 1, retained, packet id 0x1234, topic "a/b", payload "xy".
        s.extend_from_slice(&[
            0x33, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34, b'x', b'y',
        ]);
        encode_publish(&mut s, &t, &[9u8; 20_000]);
        s
    }

    #[test]
    fn topic_is_the_nats_subject() {
        let a: Addr = *uuid::Uuid::parse_str("0123456789ABCDEF0011223344556677")
            .unwrap()
            .as_bytes();
        assert_eq!(&topic(&a), b"0123456789abcdef0011223344556677");
        assert_eq!(topic(&a), nats::subject(&a));
    }

    #[test]
    fn encodes_connect() {
        let mut out = Vec::new();
        encode_connect(&mut out, &addr(0xab), 60);
        let mut want = vec![
            0x10, 44, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 60,
        ];
        want.extend_from_slice(&[0x00, 32]);
        want.extend_from_slice("ab".repeat(16).as_bytes());
        assert_eq!(out, want);
        out.clear();
        encode_connect(&mut out, &addr(0xab), 0x1234);
        assert_eq!(&out[10..12], &[0x12, 0x34]);
    }

    #[test]
    fn encodes_subscribe_and_control_packets() {
        let mut out = Vec::new();
        encode_subscribe(&mut out, 1, &topic(&addr(0x01)));
        let mut want = vec![0x82, 37, 0x00, 0x01, 0x00, 32];
        want.extend_from_slice("01".repeat(16).as_bytes());
        want.push(0x00);
        assert_eq!(out, want);
        // Client-to-broker packets are never accepted from a broker.
        assert_eq!(parse(&out, MAX), Err(ParseError::Unexpected(8)));
        assert_eq!(parse(PINGREQ, MAX), Err(ParseError::Unexpected(12)));
        assert_eq!(parse(DISCONNECT, MAX), Err(ParseError::Unexpected(14)));
        out.clear();
        encode_connect(&mut out, &addr(0), 0);
        assert_eq!(parse(&out, MAX), Err(ParseError::Unexpected(1)));
    }

    #[test]
    fn publish_round_trips() {
        let t = topic(&addr(0x42));
        for len in [
            0usize, 1, 64, 93, 94, 127, 16_000, 16_349, 16_350, 70_000, 2_097_200,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode_publish(&mut out, &t, &payload);
            assert!(out.len() - len <= PUBLISH_OVERHEAD_MAX);
            let max = publish_remaining(len);
            let (p, used) = parse(&out, max).unwrap().expect("whole packet");
            assert_eq!(used, out.len(), "len {len}");
            let Packet::Publish {
                topic,
                payload: range,
                qos,
                retain,
                packet_id,
            } = p
            else {
                panic!("publish")
            };
            assert_eq!(&out[topic], &t);
            assert_eq!(&out[range], &payload[..]);
            assert_eq!((qos, retain, packet_id), (0, false, 0));
            // One byte under the limit it needs: refused as soon as the
            // length is known.
            assert_eq!(parse(&out, max - 1), Err(ParseError::TooLarge));
        }
    }

    #[test]
    fn remaining_length_encoding() {
        // The boundaries from the MQTT 3.1.1 table (section 2.2.3).
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (n, bytes) in cases {
            let mut out = Vec::new();
            push_remaining(&mut out, n);
            assert_eq!(out, bytes, "{n}");
            assert_eq!(decode_remaining(bytes), Ok(Some((n, bytes.len()))));
            for end in 0..bytes.len() {
                assert_eq!(decode_remaining(&bytes[..end]), Ok(None));
            }
        }
    }

    #[test]
    fn parses_every_packet() {
        let s = stream();
        let t = topic(&addr(0x5a));
        let got = parse_all_with_cut(&s, s.len());
        assert_eq!(got.len(), 8);
        assert_eq!(
            got[0].0,
            Packet::ConnAck {
                session_present: false,
                code: 0
            }
        );
        assert_eq!(
            got[1].0,
            Packet::SubAck {
                packet_id: 1,
                granted: 0
            }
        );
        assert_eq!((&got[2].1[..], &got[2].2[..]), (&t[..], &b"hello"[..]));
        assert_eq!(got[3].2, vec![7u8; 200]);
        assert_eq!((&got[4].1[..], got[4].2.len()), (&t[..], 0));
        assert_eq!(got[5].0, Packet::PingResp);
        assert!(matches!(
            got[6].0,
            Packet::Publish {
                qos: 1,
                retain: true,
                packet_id: 0x1234,
                ..
            }
        ));
        assert_eq!((&got[6].1[..], &got[6].2[..]), (&b"a/b"[..], &b"xy"[..]));
        assert_eq!(got[7].2, vec![9u8; 20_000]);
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let s = stream();
        let whole = parse_all_with_cut(&s, s.len());
        for cut in 0..=s.len() {
            assert_eq!(parse_all_with_cut(&s, cut), whole, "cut at {cut}");
        }
    }

    #[test]
    fn every_prefix_of_one_packet_is_incomplete() {
        let mut one = Vec::new();
        encode_publish(&mut one, &topic(&addr(3)), &[1u8; 300]);
        for end in 0..one.len() {
            assert_eq!(parse(&one[..end], MAX), Ok(None), "prefix {end}");
        }
        assert!(parse(&one, MAX).unwrap().is_some());
    }

    #[test]
    fn bad_remaining_length() {
        // A continuation bit on the fourth length byte.
        for first in [0x30u8, 0x20, 0x90, 0xD0] {
            let bad = [first, 0x80, 0x80, 0x80, 0x80, 0x01];
            assert_eq!(parse(&bad, MAX), Err(ParseError::BadRemainingLength));
            // Known as soon as the fourth byte is in, not before.
            assert_eq!(parse(&bad[..4], MAX), Ok(None));
            assert_eq!(parse(&bad[..5], MAX), Err(ParseError::BadRemainingLength));
        }
    }

    #[test]
    fn oversize_is_refused_before_the_body() {
        // Remaining length 2,097,152 announced; only the header is here.
        let head = [0x30, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(parse(&head, MAX), Err(ParseError::TooLarge));
        assert_eq!(parse(&head, 2_097_152), Ok(None));
        let mut p = Vec::new();
        encode_publish(&mut p, &topic(&addr(1)), &[0u8; 100]);
        assert_eq!(parse(&p, 133), Err(ParseError::TooLarge));
        assert!(parse(&p, 134).unwrap().is_some());
    }

    #[test]
    fn connack_codes() {
        for code in 0u8..=255 {
            let (p, used) = parse(&[0x20, 0x02, 0x00, code], MAX).unwrap().unwrap();
            assert_eq!(used, 4);
            assert_eq!(
                p,
                Packet::ConnAck {
                    session_present: false,
                    code
                }
            );
            assert_eq!(connack_refusal(code).is_none(), code == 0);
        }
        assert_eq!(connack_refusal(5), Some("mqtt_connack_not_authorized"));
        assert_eq!(connack_refusal(6), Some("mqtt_connack_reserved_code"));
        assert_eq!(
            parse(&[0x20, 0x02, 0x01, 0x00], MAX).unwrap().unwrap().0,
            Packet::ConnAck {
                session_present: true,
                code: 0
            }
        );
        // Reserved acknowledge flags, wrong length, flags in the fixed header.
        assert_eq!(
            parse(&[0x20, 0x02, 0x02, 0x00], MAX),
            Err(ParseError::BadConnAck)
        );
        assert_eq!(
            parse(&[0x20, 0x03, 0, 0, 0], MAX),
            Err(ParseError::BadConnAck)
        );
        assert_eq!(parse(&[0x20, 0x01], MAX), Err(ParseError::BadConnAck));
        assert_eq!(parse(&[0x21, 0x02, 0, 0], MAX), Err(ParseError::BadFlags));
    }

    #[test]
    fn suback_codes() {
        for granted in [0u8, 1, 2, SUBACK_FAILURE] {
            let (p, _) = parse(&[0x90, 0x03, 0x00, 0x07, granted], MAX)
                .unwrap()
                .unwrap();
            assert_eq!(
                p,
                Packet::SubAck {
                    packet_id: 7,
                    granted
                }
            );
        }
        assert_eq!(
            parse(&[0x90, 0x03, 0, 1, 3], MAX),
            Err(ParseError::BadSubAck)
        );
        assert_eq!(
            parse(&[0x90, 0x03, 0, 0, 0], MAX),
            Err(ParseError::BadSubAck)
        );
        assert_eq!(
            parse(&[0x90, 0x04, 0, 1, 0, 0], MAX),
            Err(ParseError::BadSubAck)
        );
        assert_eq!(
            parse(&[0x92, 0x03, 0, 1, 0], MAX),
            Err(ParseError::BadFlags)
        );
    }

    #[test]
    fn rejects_bad_packets() {
        // Reserved packet types 0 and 15, and ones a broker only sends for
        // QoS 1/2 or UNSUBSCRIBE: known from the first byte alone.
        for (byte, t) in [
            (0x00u8, 0u8),
            (0xF0, 15),
            (0x40, 4),
            (0x50, 5),
            (0x62, 6),
            (0x70, 7),
            (0xB0, 11),
        ] {
            assert_eq!(parse(&[byte], MAX), Err(ParseError::Unexpected(t)));
        }
        assert_eq!(
            parse(&[0xD0, 0x01, 0x00], MAX),
            Err(ParseError::BadPingResp)
        );
        assert_eq!(parse(&[0xD1], MAX), Err(ParseError::BadFlags));
        // QoS 3; DUP at QoS 0.
        assert_eq!(parse(&[0x36], MAX), Err(ParseError::BadPublish));
        assert_eq!(parse(&[0x38], MAX), Err(ParseError::BadPublish));
        // Empty topic; topic longer than the packet; QoS 1 without room
        // for the packet id; QoS 1 with packet id 0.
        assert_eq!(
            parse(&[0x30, 0x03, 0, 0, b'x'], MAX),
            Err(ParseError::BadPublish)
        );
        assert_eq!(
            parse(&[0x30, 0x03, 0, 5, b'x'], MAX),
            Err(ParseError::BadPublish)
        );
        assert_eq!(
            parse(&[0x32, 0x04, 0, 1, b'x', 0], MAX),
            Err(ParseError::BadPublish)
        );
        assert_eq!(
            parse(&[0x32, 0x05, 0, 1, b'x', 0, 0], MAX),
            Err(ParseError::BadPublish)
        );
        assert_eq!(parse(&[0x30, 0x02, 0, 0], MAX), Err(ParseError::BadPublish));
        // Every error has its own name.
        let names = [
            ParseError::BadRemainingLength,
            ParseError::TooLarge,
            ParseError::BadFlags,
            ParseError::BadConnAck,
            ParseError::BadSubAck,
            ParseError::BadPublish,
            ParseError::BadPingResp,
        ]
        .map(ParseError::name);
        for (i, n) in names.iter().enumerate() {
            assert!(n.starts_with("mqtt_"));
            assert!(!names[i + 1..].contains(n), "{n}");
        }
    }
}
