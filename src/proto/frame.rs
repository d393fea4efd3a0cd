//! Binary frames: encoding, and decoding from a TCP byte stream or a
//! WebSocket binary message.
//!
//! Encoders append to a caller-owned `Vec<u8>` and allocate nothing else, so a
//! connection can reuse one output buffer for its whole life.

use uuid::Uuid;

use super::header::{array, Header, HEADER_LEN};
use super::kind::{ErrorCode, Kind, STATE_ACK_LEN};
use super::payload::{ErrorPayload, Presence, State, TimeResp, Welcome};
use super::validate::check_header;

/// The maximum payload when the configuration does not set one (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// Longest ERROR message the gateway sends, in bytes. Messages are for humans
/// and may quote client input, so a bound keeps an ERROR small whatever
/// provoked it; longer ones are cut at a character boundary.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;

/// Appends one complete binary frame (version 1, flags 0,
/// `len = payload.len()`) to `out`.
///
/// # Panics
/// When `payload` is longer than `u32::MAX` bytes, which no caller can
/// produce because every payload is bounded by the maximum payload.
pub fn encode_frame(out: &mut Vec<u8>, kind: Kind, src: Uuid, dst: Uuid, id: u64, payload: &[u8]) {
    start_frame(out, kind, src, dst, id, payload.len());
    out.extend_from_slice(payload);
}

/// WELCOME, the answer to an accepted HELLO.
pub fn encode_welcome(
    out: &mut Vec<u8>,
    dst: Uuid,
    id: u64,
    server_time_us: u64,
    heartbeat_timeout_ms: u32,
    max_payload: u32,
) {
    start_frame(out, Kind::Welcome, Uuid::nil(), dst, id, Welcome::LEN);
    Welcome {
        server_time_us,
        heartbeat_timeout_ms,
        max_payload,
    }
    .write(out);
}

/// HEARTBEAT, the answer to a client HEARTBEAT with the same id.
pub fn encode_heartbeat(out: &mut Vec<u8>, dst: Uuid, id: u64) {
    start_frame(out, Kind::Heartbeat, Uuid::nil(), dst, id, 0);
}

/// TIME_RESP: `t0` echoed from the TIME_REQ, `t1` when the gateway received
/// it, `t2` when it answered.
pub fn encode_time_resp(out: &mut Vec<u8>, dst: Uuid, id: u64, t0: u64, t1: u64, t2: u64) {
    start_frame(out, Kind::TimeResp, Uuid::nil(), dst, id, TimeResp::LEN);
    TimeResp { t0, t1, t2 }.write(out);
}

/// PRESENCE of `address`: the answer to SUBSCRIBE (with its id) or a pushed
/// change (id 0).
pub fn encode_presence(
    out: &mut Vec<u8>,
    dst: Uuid,
    id: u64,
    address: Uuid,
    online: bool,
    at_us: u64,
) {
    start_frame(out, Kind::Presence, Uuid::nil(), dst, id, Presence::LEN);
    Presence {
        address,
        online,
        at_us,
    }
    .write(out);
}

/// STATE_ACK, sent once the state write is committed.
pub fn encode_state_ack(out: &mut Vec<u8>, dst: Uuid, id: u64, updated_at_us: u64) {
    start_frame(out, Kind::StateAck, Uuid::nil(), dst, id, STATE_ACK_LEN);
    out.extend_from_slice(&updated_at_us.to_be_bytes());
}

/// STATE of `address`: the answer to STATE_GET (with its id) or a pushed
/// update (id 0). The frame is 25 bytes longer than `blob`.
pub fn encode_state(
    out: &mut Vec<u8>,
    dst: Uuid,
    id: u64,
    address: Uuid,
    updated_at_us: u64,
    online: bool,
    blob: &[u8],
) {
    start_frame(
        out,
        Kind::State,
        Uuid::nil(),
        dst,
        id,
        State::FIXED_LEN + blob.len(),
    );
    State {
        address,
        updated_at_us,
        online,
        blob,
    }
    .write(out);
}

/// ERROR with `code`; `message` is cut to [`ERROR_MESSAGE_BYTES_MAX`].
pub fn encode_error(out: &mut Vec<u8>, dst: Uuid, id: u64, code: ErrorCode, message: &str) {
    let message = bounded_message(message);
    start_frame(
        out,
        Kind::Error,
        Uuid::nil(),
        dst,
        id,
        ErrorPayload::FIXED_LEN + message.len(),
    );
    ErrorPayload { code, message }.write(out);
}

/// The longest prefix of `message` within [`ERROR_MESSAGE_BYTES_MAX`] that
/// ends on a character boundary, so the message stays valid UTF-8.
pub(super) fn bounded_message(message: &str) -> &str {
    if message.len() <= ERROR_MESSAGE_BYTES_MAX {
        return message;
    }
    let mut end = ERROR_MESSAGE_BYTES_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Reserves room for the whole frame, so one frame costs at most one growth
/// of `out`, then appends its header.
fn start_frame(out: &mut Vec<u8>, kind: Kind, src: Uuid, dst: Uuid, id: u64, payload_len: usize) {
    let len = u32::try_from(payload_len).expect("payloads are bounded by the u32 maximum payload");
    out.reserve(HEADER_LEN + payload_len);
    let mut header = [0u8; HEADER_LEN];
    Header::new(kind, src, dst, id, len).write(&mut header);
    out.extend_from_slice(&header);
}

/// What the front of a TCP receive buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not enough bytes yet; `needed` is the total number of bytes the front
    /// frame needs (48 while the header is incomplete, 48 + len after). Not an
    /// error: read more and call again.
    Incomplete { needed: usize },
    /// One complete frame; drop `consumed` (= 48 + `header.len`) bytes after
    /// handling it.
    Frame {
        header: Header,
        payload: &'a [u8],
        consumed: usize,
    },
    /// Validation steps 1-2 failed, decided from the 48-byte header alone
    /// before waiting for any payload byte. Answer ERROR `code` with
    /// `header.id` and close (both codes close the connection).
    Reject { header: Header, code: ErrorCode },
}

/// Decodes the frame at the front of `buf`, a TCP receive buffer.
///
/// A header is judged only once all 48 bytes are present, so even a wrong
/// version byte waits for the rest of the header: the ERROR must echo the id,
/// which comes last.
pub fn decode(buf: &[u8], max_payload: u32) -> Decoded<'_> {
    let Some(header) = Header::parse(buf) else {
        return Decoded::Incomplete { needed: HEADER_LEN };
    };
    if let Err(code) = check_header(&header, max_payload) {
        return Decoded::Reject { header, code };
    }
    let needed = frame_len(header.len);
    match buf.get(HEADER_LEN..needed) {
        Some(payload) => Decoded::Frame {
            header,
            payload,
            consumed: needed,
        },
        None => Decoded::Incomplete { needed },
    }
}

/// Total size of a frame with a `len`-byte payload. Saturates instead of
/// wrapping on targets where it would not fit a `usize`, so such a frame
/// simply never completes (and is rejected as too large first anyway).
fn frame_len(len: u32) -> usize {
    usize::try_from(len).map_or(usize::MAX, |len| len.saturating_add(HEADER_LEN))
}

/// Decodes one WebSocket binary message, which holds exactly one frame.
///
/// A message shorter than a header has no id to echo: `Err((0, BadFrame))`.
/// Steps 1-2 fail as `Err((header.id, code))`. Otherwise the payload is
/// everything after the header even when its length differs from
/// `header.len`: that is step 5, and [`validate`](super::validate()) must run
/// steps 3-4 before it.
pub fn decode_message(msg: &[u8], max_payload: u32) -> Result<(Header, &[u8]), (u64, ErrorCode)> {
    let header = Header::parse(msg).ok_or((0, ErrorCode::BadFrame))?;
    check_header(&header, max_payload).map_err(|code| (header.id, code))?;
    Ok((header, &msg[HEADER_LEN..]))
}

/// The big-endian `u64` at the start of a payload (TIME_REQ `t0`).
///
/// # Panics
/// When `payload` is shorter than 8 bytes; validation guarantees the size.
pub fn read_u64(payload: &[u8]) -> u64 {
    u64::from_be_bytes(array(payload, 0))
}

/// The address at the start of a payload (STATE_GET, SUBSCRIBE, UNSUBSCRIBE).
///
/// # Panics
/// When `payload` is shorter than 16 bytes; validation guarantees the size.
pub fn read_address(payload: &[u8]) -> Uuid {
    Uuid::from_bytes(array(payload, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = DEFAULT_MAX_PAYLOAD;
    const CLIENT: Uuid = Uuid::from_u128(0xA1A2_A3A4_B1B2_C1C2_D1D2_E1E2_E3E4_E5E6);
    const PEER: Uuid = Uuid::from_u128(0x0F0E_0D0C_0B0A_0908_0706_0504_0302_0100);

    /// Decodes `buf`, which must hold exactly one complete frame.
    fn one_frame(buf: &[u8]) -> (Header, &[u8]) {
        match decode(buf, MAX) {
            Decoded::Frame {
                header,
                payload,
                consumed,
            } => {
                assert_eq!(consumed, buf.len(), "the frame is the whole buffer");
                (header, payload)
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    fn raw_header(version: u8, kind: u8, len: u32, id: u64) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        Header {
            version,
            kind,
            flags: 0,
            len,
            src: CLIENT,
            dst: Uuid::nil(),
            id,
        }
        .write(&mut h);
        h
    }

    #[test]
    fn encode_frame_round_trips_every_kind() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let payload: Vec<u8> = (0..i as u8 * 3).collect();
            let id = 1000 + i as u64;
            let mut out = Vec::new();
            encode_frame(&mut out, kind, CLIENT, PEER, id, &payload);
            assert_eq!(out.len(), HEADER_LEN + payload.len());
            let (header, got) = one_frame(&out);
            assert_eq!(
                header,
                Header::new(kind, CLIENT, PEER, id, payload.len() as u32)
            );
            assert_eq!(header.kind(), Some(kind));
            assert_eq!(got, payload.as_slice());
        }
    }

    #[test]
    fn encode_frame_appends_and_stays_within_capacity() {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"already queued");
        let before = out.as_ptr();
        encode_frame(&mut out, Kind::Data, CLIENT, PEER, 3, &[9; 100]);
        assert_eq!(
            out.as_ptr(),
            before,
            "no reallocation when capacity suffices"
        );
        assert_eq!(&out[..14], b"already queued");
        let (header, payload) = one_frame(&out[14..]);
        assert_eq!((header.id, payload), (3, &[9u8; 100][..]));
    }

    /// Checks the invariants every gateway frame shares and returns it.
    fn gateway_frame(out: &[u8], kind: Kind, dst: Uuid, id: u64) -> &[u8] {
        let (header, payload) = one_frame(out);
        assert_eq!(header.kind(), Some(kind));
        assert_eq!(header.src, Uuid::nil(), "the gateway's address is nil");
        assert_eq!((header.dst, header.id, header.flags), (dst, id, 0));
        assert_eq!(header.len as usize, payload.len());
        payload
    }

    #[test]
    fn welcome_round_trip() {
        let mut out = Vec::new();
        encode_welcome(&mut out, CLIENT, 7, 1_700_000_000_000_000, 90_000, MAX);
        let payload = gateway_frame(&out, Kind::Welcome, CLIENT, 7);
        assert_eq!(
            Welcome::parse(payload),
            Some(Welcome {
                server_time_us: 1_700_000_000_000_000,
                heartbeat_timeout_ms: 90_000,
                max_payload: MAX
            })
        );
    }

    #[test]
    fn heartbeat_round_trip() {
        let mut out = Vec::new();
        encode_heartbeat(&mut out, CLIENT, u64::MAX);
        assert_eq!(gateway_frame(&out, Kind::Heartbeat, CLIENT, u64::MAX), b"");
        assert_eq!(out.len(), HEADER_LEN);
    }

    #[test]
    fn time_resp_round_trip() {
        let mut out = Vec::new();
        encode_time_resp(&mut out, CLIENT, 5, 10, 20, 30);
        let payload = gateway_frame(&out, Kind::TimeResp, CLIENT, 5);
        assert_eq!(
            TimeResp::parse(payload),
            Some(TimeResp {
                t0: 10,
                t1: 20,
                t2: 30
            })
        );
    }

    #[test]
    fn presence_round_trip() {
        for online in [false, true] {
            let mut out = Vec::new();
            encode_presence(&mut out, CLIENT, 0, PEER, online, 123);
            let payload = gateway_frame(&out, Kind::Presence, CLIENT, 0);
            assert_eq!(
                Presence::parse(payload),
                Some(Presence {
                    address: PEER,
                    online,
                    at_us: 123
                })
            );
        }
    }

    #[test]
    fn state_ack_round_trip() {
        let mut out = Vec::new();
        encode_state_ack(&mut out, CLIENT, 8, 0x0102_0304_0506_0708);
        let payload = gateway_frame(&out, Kind::StateAck, CLIENT, 8);
        assert_eq!(payload, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(read_u64(payload), 0x0102_0304_0506_0708);
    }

    #[test]
    fn state_round_trip() {
        let mut out = Vec::new();
        encode_state(&mut out, CLIENT, 4, PEER, 99, true, b"{\"temp\":21}");
        let payload = gateway_frame(&out, Kind::State, CLIENT, 4);
        assert_eq!(
            State::parse(payload),
            Some(State {
                address: PEER,
                updated_at_us: 99,
                online: true,
                blob: b"{\"temp\":21}"
            })
        );
    }

    #[test]
    fn error_round_trip_for_every_code() {
        for code in ErrorCode::ALL {
            let mut out = Vec::new();
            encode_error(&mut out, Uuid::nil(), 6, code, "why");
            let payload = gateway_frame(&out, Kind::Error, Uuid::nil(), 6);
            assert_eq!(&payload[..2], &(code as u16).to_be_bytes());
            assert_eq!(
                ErrorPayload::parse(payload),
                Some(ErrorPayload {
                    code,
                    message: "why"
                })
            );
        }
    }

    #[test]
    fn error_message_is_cut_on_a_char_boundary() {
        // 255 ASCII bytes then a 2-byte 'é' straddling the bound.
        let message = format!("{}é tail", "a".repeat(ERROR_MESSAGE_BYTES_MAX - 1));
        let mut out = Vec::new();
        encode_error(&mut out, CLIENT, 1, ErrorCode::BadFrame, &message);
        let payload = gateway_frame(&out, Kind::Error, CLIENT, 1);
        let parsed = ErrorPayload::parse(payload).expect("still UTF-8");
        assert_eq!(parsed.message, "a".repeat(ERROR_MESSAGE_BYTES_MAX - 1));

        let exact = "b".repeat(ERROR_MESSAGE_BYTES_MAX);
        assert_eq!(bounded_message(&exact), exact);
        assert_eq!(bounded_message(&format!("{exact}c")), exact);
    }

    /// Several frames of different sizes back to back, and the total length
    /// of each.
    fn stream() -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut lens = Vec::new();
        let payloads: [&[u8]; 4] = [b"", b"x", &[7; 100], b"hello world"];
        for (i, payload) in payloads.into_iter().enumerate() {
            encode_frame(&mut out, Kind::Data, CLIENT, PEER, i as u64, payload);
            lens.push(HEADER_LEN + payload.len());
        }
        (out, lens)
    }

    /// Decodes every complete frame at the front of `buf` and returns their
    /// ids, the bytes consumed, and what the first incomplete one needs.
    fn drain(buf: &[u8]) -> (Vec<u64>, usize, usize) {
        let mut ids = Vec::new();
        let mut at = 0;
        loop {
            match decode(&buf[at..], MAX) {
                Decoded::Frame {
                    header,
                    payload,
                    consumed,
                } => {
                    assert_eq!(payload.len(), header.len as usize);
                    assert_eq!(consumed, HEADER_LEN + payload.len());
                    ids.push(header.id);
                    at += consumed;
                }
                Decoded::Incomplete { needed } => return (ids, at, needed),
                Decoded::Reject { code, .. } => panic!("valid stream rejected: {code}"),
            }
        }
    }

    #[test]
    fn decode_at_every_split_point() {
        let (bytes, lens) = stream();
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |at, len| {
                let s = *at;
                *at += len;
                Some(s)
            })
            .collect();
        for split in 0..=bytes.len() {
            let (ids, consumed, needed) = drain(&bytes[..split]);
            // The frames entirely inside the first part are the ones decoded.
            let complete = starts
                .iter()
                .zip(&lens)
                .filter(|(s, l)| *s + *l <= split)
                .count();
            assert_eq!(
                ids,
                (0..complete as u64).collect::<Vec<_>>(),
                "split {split}"
            );
            assert_eq!(
                consumed,
                starts.get(complete).copied().unwrap_or(bytes.len())
            );
            if complete < lens.len() {
                let have = split - consumed;
                let expected = if have < HEADER_LEN {
                    HEADER_LEN
                } else {
                    lens[complete]
                };
                assert_eq!(needed, expected, "split {split}");
            }
            // The rest arrives: the remaining frames follow, nothing is lost.
            let (rest_ids, rest_consumed, _) = drain(&bytes[consumed..]);
            assert_eq!(
                rest_ids,
                (complete as u64..lens.len() as u64).collect::<Vec<_>>()
            );
            assert_eq!(consumed + rest_consumed, bytes.len());
        }
    }

    #[test]
    fn empty_buffer_needs_a_header() {
        assert_eq!(decode(&[], MAX), Decoded::Incomplete { needed: HEADER_LEN });
    }

    #[test]
    fn a_partial_header_is_not_judged_yet() {
        // Even a wrong version byte waits for the id at the end of the header.
        let header = raw_header(2, Kind::Data as u8, 0, 77);
        assert_eq!(
            decode(&header[..HEADER_LEN - 1], MAX),
            Decoded::Incomplete { needed: HEADER_LEN }
        );
    }

    #[test]
    fn reject_unknown_versions_from_the_header_alone() {
        for version in [0, 2, 0xFF] {
            let bytes = raw_header(version, Kind::Data as u8, 10, 41);
            match decode(&bytes, MAX) {
                Decoded::Reject { header, code } => {
                    assert_eq!(code, ErrorCode::BadFrame);
                    assert_eq!((header.version, header.id), (version, 41));
                }
                other => panic!("version {version}: {other:?}"),
            }
        }
    }

    #[test]
    fn reject_too_large_from_the_header_alone() {
        let bytes = raw_header(1, Kind::Data as u8, MAX + 1, 42);
        match decode(&bytes, MAX) {
            Decoded::Reject { header, code } => {
                assert_eq!(code, ErrorCode::TooLarge);
                assert_eq!((header.len, header.id), (MAX + 1, 42));
            }
            other => panic!("{other:?}"),
        }
        // Exactly the maximum is allowed, and waits for its payload.
        let bytes = raw_header(1, Kind::Data as u8, MAX, 43);
        assert_eq!(
            decode(&bytes, MAX),
            Decoded::Incomplete {
                needed: HEADER_LEN + MAX as usize
            }
        );
    }

    #[test]
    fn bad_version_beats_too_large() {
        let bytes = raw_header(2, Kind::Data as u8, u32::MAX, 44);
        assert!(matches!(
            decode(&bytes, MAX),
            Decoded::Reject {
                code: ErrorCode::BadFrame,
                ..
            }
        ));
    }

    #[test]
    fn too_large_follows_the_configured_maximum() {
        let bytes = raw_header(1, Kind::Data as u8, 11, 45);
        assert!(matches!(
            decode(&bytes, 10),
            Decoded::Reject {
                code: ErrorCode::TooLarge,
                ..
            }
        ));
        assert_eq!(
            decode(&bytes, 11),
            Decoded::Incomplete {
                needed: HEADER_LEN + 11
            }
        );
    }

    #[test]
    fn unknown_kind_and_flags_still_decode() {
        let mut bytes = raw_header(1, 0x99, 2, 46).to_vec();
        bytes[2..4].copy_from_slice(&[0x80, 0x01]);
        bytes.extend_from_slice(b"ok");
        let (header, payload) = one_frame(&bytes);
        assert_eq!(
            (header.kind, header.flags, payload),
            (0x99, 0x8001, &b"ok"[..])
        );
    }

    #[test]
    fn message_shorter_than_a_header_echoes_id_zero() {
        let full = raw_header(1, Kind::Data as u8, 0, 55);
        for len in [0, 1, HEADER_LEN - 1] {
            assert_eq!(
                decode_message(&full[..len], MAX),
                Err((0, ErrorCode::BadFrame)),
                "len {len}"
            );
        }
    }

    #[test]
    fn message_steps_one_and_two_echo_the_id() {
        assert_eq!(
            decode_message(&raw_header(0, 0x10, 0, 56), MAX),
            Err((56, ErrorCode::BadFrame))
        );
        assert_eq!(
            decode_message(&raw_header(2, 0x10, MAX + 1, 57), MAX),
            Err((57, ErrorCode::BadFrame))
        );
        assert_eq!(
            decode_message(&raw_header(1, 0x10, MAX + 1, 58), MAX),
            Err((58, ErrorCode::TooLarge))
        );
    }

    #[test]
    fn message_payload_is_everything_after_the_header() {
        let mut msg = Vec::new();
        encode_frame(&mut msg, Kind::Data, CLIENT, PEER, 59, b"abc");
        let (header, payload) = decode_message(&msg, MAX).expect("valid");
        assert_eq!((header.len, header.id, payload), (3, 59, &b"abc"[..]));

        // A length mismatch is left for validation step 5, in both directions.
        msg.push(b'd');
        assert_eq!(
            decode_message(&msg, MAX).map(|(h, p)| (h.len, p)),
            Ok((3, &b"abcd"[..]))
        );
        msg.truncate(HEADER_LEN + 1);
        assert_eq!(
            decode_message(&msg, MAX).map(|(h, p)| (h.len, p)),
            Ok((3, &b"a"[..]))
        );
    }

    #[test]
    fn readers_take_the_leading_bytes() {
        let mut payload = PEER.as_bytes().to_vec();
        payload.extend_from_slice(&[0xAA; 4]);
        assert_eq!(read_address(&payload), PEER);
        assert_eq!(
            read_u64(&payload),
            u64::from_be_bytes([0x0F, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0x09, 0x08])
        );
    }
}
