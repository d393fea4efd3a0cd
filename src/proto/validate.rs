//! The validation order of PROTOCOL.md: the first failing step decides the
//! answer. Steps 1-2 need only the header and run before any payload byte is
//! awaited ([`check_header`]); steps 3-6 run on a complete frame
//! ([`validate`]).

use uuid::Uuid;

use super::header::{Header, VERSION};
use super::kind::{ErrorCode, Kind};

/// Steps 1-2: version is 1, and `len` is within `max_payload`. Both failures
/// close the connection.
///
/// [`decode`](super::decode) and [`decode_message`](super::decode_message)
/// call it; a JSON frame needs it after [`decode_json`](super::decode_json),
/// whose header always has version 1 but may carry any length.
pub fn check_header(header: &Header, max_payload: u32) -> Result<(), ErrorCode> {
    if header.version != VERSION {
        return Err(ErrorCode::BadFrame);
    }
    if header.len > max_payload {
        return Err(ErrorCode::TooLarge);
    }
    Ok(())
}

/// Steps 3-6 for a frame whose header passed steps 1-2, returning its kind
/// when the frame is acceptable.
///
/// `payload_len` is the number of payload bytes actually received: always
/// `header.len` on TCP, `msg.len() - 48` for a WebSocket binary message.
/// `registered` is the connection's address, `None` before HELLO. A HELLO on
/// a registered connection gets no special treatment: its `src` must be the
/// registered address like any other frame's.
pub fn validate(
    header: &Header,
    payload_len: usize,
    registered: Option<Uuid>,
) -> Result<Kind, ErrorCode> {
    debug_assert_eq!(header.version, VERSION, "steps 1-2 run before validate");

    // Step 3: an unknown kind before HELLO is not_registered too, since only
    // HELLO is acceptable there.
    if registered.is_none() && header.kind != Kind::Hello as u8 {
        return Err(ErrorCode::NotRegistered);
    }

    // Step 4.
    let kind = header
        .kind()
        .filter(|kind| kind.client_may_send())
        .ok_or(ErrorCode::UnknownKind)?;

    // Step 5: the received bytes must match the header, and the header the kind.
    let len_matches = usize::try_from(header.len).is_ok_and(|len| len == payload_len);
    let size_fits_kind = kind
        .fixed_payload_len()
        .is_none_or(|fixed| fixed == payload_len);
    if !(len_matches && size_fits_kind) {
        return Err(ErrorCode::BadFrame);
    }

    // Step 6. Before registration only a HELLO gets here, and it is the frame
    // that declares the address.
    if registered.is_some_and(|address| address != header.src) {
        return Err(ErrorCode::SrcMismatch);
    }

    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
    const OTHER: Uuid = Uuid::from_u128(0x9999_AAAA_BBBB_CCCC_DDDD_EEEE_FFFF_0000);
    const UNKNOWN_KIND: u8 = 0x99;

    fn header(kind: u8, src: Uuid, len: u32) -> Header {
        Header {
            version: 1,
            kind,
            flags: 0,
            len,
            src,
            dst: Uuid::nil(),
            id: 12,
        }
    }

    /// Validates a frame whose received payload matches its header.
    fn check(kind: u8, src: Uuid, len: u32, registered: Option<Uuid>) -> Result<Kind, ErrorCode> {
        validate(&header(kind, src, len), len as usize, registered)
    }

    #[test]
    fn step_one_bad_version() {
        for version in [0, 2] {
            let h = Header {
                version,
                ..header(Kind::Data as u8, ME, 0)
            };
            assert_eq!(check_header(&h, 100), Err(ErrorCode::BadFrame));
        }
    }

    #[test]
    fn step_one_beats_step_two() {
        let h = Header {
            version: 2,
            ..header(Kind::Data as u8, ME, 101)
        };
        assert_eq!(check_header(&h, 100), Err(ErrorCode::BadFrame));
    }

    #[test]
    fn step_two_too_large_is_strictly_above_the_maximum() {
        assert_eq!(
            check_header(&header(Kind::Data as u8, ME, 101), 100),
            Err(ErrorCode::TooLarge)
        );
        assert_eq!(
            check_header(&header(Kind::Data as u8, ME, 100), 100),
            Ok(())
        );
        assert_eq!(
            check_header(&header(0x99, ME, 0), 0),
            Ok(()),
            "the kind is not steps 1-2"
        );
    }

    #[test]
    fn step_three_beats_step_four() {
        assert_eq!(
            check(UNKNOWN_KIND, ME, 0, None),
            Err(ErrorCode::NotRegistered)
        );
        assert_eq!(
            check(Kind::Welcome as u8, ME, 16, None),
            Err(ErrorCode::NotRegistered)
        );
        assert_eq!(check(0, ME, 0, None), Err(ErrorCode::NotRegistered));
    }

    #[test]
    fn step_three_beats_steps_five_and_six() {
        // Wrong size for a heartbeat, and a received length that differs.
        assert_eq!(
            check(Kind::Heartbeat as u8, ME, 3, None),
            Err(ErrorCode::NotRegistered)
        );
        assert_eq!(
            validate(&header(Kind::Data as u8, ME, 5), 4, None),
            Err(ErrorCode::NotRegistered)
        );
    }

    #[test]
    fn every_client_kind_but_hello_needs_registration() {
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Hello) {
            let len = kind.fixed_payload_len().unwrap_or(0) as u32;
            assert_eq!(
                check(kind as u8, ME, len, None),
                Err(ErrorCode::NotRegistered),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn step_four_rejects_unknown_and_gateway_kinds() {
        assert_eq!(
            check(UNKNOWN_KIND, ME, 0, Some(ME)),
            Err(ErrorCode::UnknownKind)
        );
        for kind in Kind::ALL.into_iter().filter(|k| !k.client_may_send()) {
            let len = kind.fixed_payload_len().unwrap_or(0) as u32;
            assert_eq!(
                check(kind as u8, ME, len, Some(ME)),
                Err(ErrorCode::UnknownKind),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn step_four_beats_step_five() {
        assert_eq!(
            validate(&header(UNKNOWN_KIND, ME, 5), 9, Some(ME)),
            Err(ErrorCode::UnknownKind)
        );
        assert_eq!(
            check(Kind::Welcome as u8, ME, 3, Some(ME)),
            Err(ErrorCode::UnknownKind)
        );
    }

    #[test]
    fn step_four_beats_step_six() {
        assert_eq!(
            check(UNKNOWN_KIND, OTHER, 0, Some(ME)),
            Err(ErrorCode::UnknownKind)
        );
        assert_eq!(
            check(Kind::Presence as u8, OTHER, 25, Some(ME)),
            Err(ErrorCode::UnknownKind)
        );
    }

    #[test]
    fn step_five_fixed_sizes() {
        let cases = [
            (Kind::Heartbeat, 0, [1, 8]),
            (Kind::TimeReq, 8, [7, 9]),
            (Kind::StateGet, 16, [15, 17]),
            (Kind::Subscribe, 16, [0, 17]),
            (Kind::Unsubscribe, 16, [15, 32]),
        ];
        for (kind, good, bads) in cases {
            assert_eq!(check(kind as u8, ME, good, Some(ME)), Ok(kind), "{kind:?}");
            for bad in bads {
                assert_eq!(
                    check(kind as u8, ME, bad, Some(ME)),
                    Err(ErrorCode::BadFrame),
                    "{kind:?} {bad}"
                );
            }
        }
    }

    #[test]
    fn step_five_variable_sizes_accept_any_length() {
        for kind in [Kind::Hello, Kind::Data, Kind::StatePut] {
            for len in [0, 1, 16, 4096] {
                assert_eq!(
                    check(kind as u8, ME, len, Some(ME)),
                    Ok(kind),
                    "{kind:?} {len}"
                );
            }
        }
    }

    #[test]
    fn step_five_received_length_must_match_the_header() {
        let h = header(Kind::Data as u8, ME, 10);
        assert_eq!(validate(&h, 9, Some(ME)), Err(ErrorCode::BadFrame));
        assert_eq!(validate(&h, 11, Some(ME)), Err(ErrorCode::BadFrame));
        assert_eq!(validate(&h, 10, Some(ME)), Ok(Kind::Data));
        // A fixed-size kind whose header is right but whose message is not.
        let h = header(Kind::TimeReq as u8, ME, 8);
        assert_eq!(validate(&h, 9, Some(ME)), Err(ErrorCode::BadFrame));
    }

    #[test]
    fn step_five_beats_step_six() {
        assert_eq!(
            check(Kind::Heartbeat as u8, OTHER, 1, Some(ME)),
            Err(ErrorCode::BadFrame)
        );
        assert_eq!(
            validate(&header(Kind::Data as u8, OTHER, 4), 5, Some(ME)),
            Err(ErrorCode::BadFrame)
        );
    }

    #[test]
    fn step_six_src_mismatch() {
        assert_eq!(
            check(Kind::Data as u8, OTHER, 3, Some(ME)),
            Err(ErrorCode::SrcMismatch)
        );
        assert_eq!(
            check(Kind::Heartbeat as u8, Uuid::nil(), 0, Some(ME)),
            Err(ErrorCode::SrcMismatch)
        );
        assert_eq!(check(Kind::Data as u8, ME, 3, Some(ME)), Ok(Kind::Data));
    }

    #[test]
    fn hello_before_registration_declares_the_address() {
        assert_eq!(check(Kind::Hello as u8, ME, 0, None), Ok(Kind::Hello));
        assert_eq!(check(Kind::Hello as u8, OTHER, 40, None), Ok(Kind::Hello));
        assert_eq!(
            validate(&header(Kind::Hello as u8, ME, 2), 3, None),
            Err(ErrorCode::BadFrame)
        );
    }

    #[test]
    fn hello_after_registration_is_checked_like_any_frame() {
        assert_eq!(check(Kind::Hello as u8, ME, 5, Some(ME)), Ok(Kind::Hello));
        assert_eq!(
            check(Kind::Hello as u8, OTHER, 5, Some(ME)),
            Err(ErrorCode::SrcMismatch)
        );
    }

    #[test]
    fn flags_are_ignored() {
        let h = Header {
            flags: 0xFFFF,
            ..header(Kind::Data as u8, ME, 0)
        };
        assert_eq!(validate(&h, 0, Some(ME)), Ok(Kind::Data));
        assert_eq!(check_header(&h, 0), Ok(()));
    }
}
