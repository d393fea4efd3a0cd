//! Unit tests of the JSON mapping.
use serde_json::{json, Value as Json};

use super::*;
use crate::proto::{encode_error, encode_frame, encode_presence, encode_state, validate};

const ME: Uuid = Uuid::from_u128(0x6f1c_2a3b_4d5e_4f60_8172_93a4_b5c6_d7e8);
const ME_TEXT: &str = "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8";
const PEER: Uuid = Uuid::from_u128(0x0a0b_0c0d_0e0f_4011_8213_1415_1617_1819);
const PEER_TEXT: &str = "0a0b0c0d-0e0f-4011-8213-141516171819";
const NIL_TEXT: &str = "00000000-0000-0000-0000-000000000000";

fn dec(text: &str, registered: Option<Uuid>) -> Result<(Header, Vec<u8>), (u64, ErrorCode)> {
    let mut payload = Vec::new();
    decode_json(text, registered, &mut payload).map(|header| (header, payload))
}

fn ok(text: &str, registered: Option<Uuid>) -> (Header, Vec<u8>) {
    dec(text, registered).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn enc(header: &Header, payload: &[u8]) -> String {
    let mut out = Vec::new();
    encode_json(header, payload, &mut out);
    String::from_utf8(out).expect("JSON output is UTF-8")
}

/// Encodes a binary frame as JSON and parses it back as a JSON value.
fn frame_json(frame: &[u8]) -> Json {
    let header = Header::parse(frame).expect("a frame");
    serde_json::from_str(&enc(&header, &frame[crate::proto::HEADER_LEN..])).expect("valid JSON")
}

#[test]
fn hello_maps_src_token_and_id() {
    let text = format!(r#"{{"kind":"hello","src":"{ME_TEXT}","id":1,"payload":"token"}}"#);
    let (header, payload) = ok(&text, None);
    assert_eq!(header, Header::new(Kind::Hello, ME, Uuid::nil(), 1, 5));
    assert_eq!(payload, b"token");
    assert_eq!(validate(&header, payload.len(), None), Ok(Kind::Hello));
}

#[test]
fn hello_requires_src_even_when_registered() {
    for text in [
        r#"{"kind":"hello","id":5}"#,
        r#"{"kind":"hello","src":null,"id":5}"#,
    ] {
        assert_eq!(dec(text, None), Err((5, ErrorCode::BadFrame)), "{text}");
        assert_eq!(dec(text, Some(ME)), Err((5, ErrorCode::BadFrame)), "{text}");
    }
}

#[test]
fn data_maps_every_field() {
    let text = format!(
        r#"{{"kind":"data","src":"{ME_TEXT}","dst":"{PEER_TEXT}","id":7,"payload":"any text"}}"#
    );
    let (header, payload) = ok(&text, Some(ME));
    assert_eq!(header, Header::new(Kind::Data, ME, PEER, 7, 8));
    assert_eq!(payload, b"any text");
    assert_eq!(validate(&header, payload.len(), Some(ME)), Ok(Kind::Data));
}

#[test]
fn heartbeat_defaults_everything() {
    let (header, payload) = ok(r#"{"kind":"heartbeat"}"#, Some(ME));
    assert_eq!(header, Header::new(Kind::Heartbeat, ME, Uuid::nil(), 0, 0));
    assert!(payload.is_empty());
    assert_eq!(validate(&header, 0, Some(ME)), Ok(Kind::Heartbeat));
}

#[test]
fn heartbeat_with_a_payload_fails_validation_like_binary() {
    let (header, payload) = ok(r#"{"kind":"heartbeat","payload":"x"}"#, Some(ME));
    assert_eq!(header.len, 1);
    assert_eq!(
        validate(&header, payload.len(), Some(ME)),
        Err(ErrorCode::BadFrame)
    );
}

#[test]
fn time_req_t0_becomes_eight_bytes() {
    for t0 in [0, 1_700_000_000_123_456, u64::MAX] {
        let (header, payload) = ok(
            &format!(r#"{{"kind":"time_req","id":3,"t0":{t0}}}"#),
            Some(ME),
        );
        assert_eq!(header, Header::new(Kind::TimeReq, ME, Uuid::nil(), 3, 8));
        assert_eq!(payload, t0.to_be_bytes());
        assert_eq!(read_u64(&payload), t0);
        assert_eq!(
            validate(&header, payload.len(), Some(ME)),
            Ok(Kind::TimeReq)
        );
    }
}

#[test]
fn state_put_takes_an_opaque_payload() {
    let (header, payload) = ok(
        r#"{"kind":"state_put","id":4,"payload":"{\"temp\":21}"}"#,
        Some(ME),
    );
    assert_eq!(header, Header::new(Kind::StatePut, ME, Uuid::nil(), 4, 11));
    assert_eq!(payload, br#"{"temp":21}"#);
    assert_eq!(
        validate(&header, payload.len(), Some(ME)),
        Ok(Kind::StatePut)
    );
}

#[test]
fn address_kinds_become_sixteen_bytes() {
    for kind in [Kind::StateGet, Kind::Subscribe, Kind::Unsubscribe] {
        let text = format!(
            r#"{{"kind":"{}","id":9,"address":"{PEER_TEXT}"}}"#,
            kind.name()
        );
        let (header, payload) = ok(&text, Some(ME));
        assert_eq!(header, Header::new(kind, ME, Uuid::nil(), 9, 16));
        assert_eq!(payload, PEER.as_bytes());
        assert_eq!(read_address(&payload), PEER);
        assert_eq!(validate(&header, payload.len(), Some(ME)), Ok(kind));
    }
}

#[test]
fn src_dst_and_id_defaults() {
    // Omitted and null are the same.
    for text in [
        r#"{"kind":"data"}"#,
        r#"{"kind":"data","src":null,"dst":null,"id":null,"payload":null}"#,
    ] {
        let (header, payload) = ok(text, Some(PEER));
        assert_eq!(
            (header.src, header.dst, header.id, header.len),
            (PEER, Uuid::nil(), 0, 0),
            "{text}"
        );
        assert!(payload.is_empty());
        // Before HELLO there is no address to default to.
        let (header, _) = ok(text, None);
        assert_eq!(header.src, Uuid::nil());
        assert_eq!(validate(&header, 0, None), Err(ErrorCode::NotRegistered));
    }
}

#[test]
fn explicit_src_is_kept_and_checked_by_validation() {
    let (header, payload) = ok(
        &format!(r#"{{"kind":"data","src":"{PEER_TEXT}"}}"#),
        Some(ME),
    );
    assert_eq!(header.src, PEER);
    assert_eq!(
        validate(&header, payload.len(), Some(ME)),
        Err(ErrorCode::SrcMismatch)
    );
}

#[test]
fn both_payload_fields_are_bad_frame() {
    let text = r#"{"kind":"data","id":7,"payload":"a","payload_b64":"YQ=="}"#;
    assert_eq!(dec(text, Some(ME)), Err((7, ErrorCode::BadFrame)));
    let text = r#"{"kind":"data","id":7,"payload":"","payload_b64":""}"#;
    assert_eq!(
        dec(text, Some(ME)),
        Err((7, ErrorCode::BadFrame)),
        "empty strings are present"
    );
}

#[test]
fn a_null_payload_field_does_not_count() {
    let (_, payload) = ok(
        r#"{"kind":"data","payload":null,"payload_b64":"YQ=="}"#,
        Some(ME),
    );
    assert_eq!(payload, b"a");
    let (_, payload) = ok(
        r#"{"kind":"data","payload":"b","payload_b64":null}"#,
        Some(ME),
    );
    assert_eq!(payload, b"b");
    let (header, payload) = ok(r#"{"kind":"data","payload":null}"#, Some(ME));
    assert_eq!((header.len, payload.len()), (0, 0));
}

#[test]
fn payload_b64_round_trips_bytes_that_are_not_utf8() {
    let bytes = [0xFF, 0x00, 0xFE, 0x80, b'"', b'\n'];
    let mut frame = Vec::new();
    encode_frame(&mut frame, Kind::Data, PEER, ME, 11, &bytes);
    let json = frame_json(&frame);
    assert_eq!(json["payload_b64"], "/wD+gCIK");
    assert!(json.get("payload").is_none());

    let (header, payload) = ok(&json.to_string(), Some(PEER));
    assert_eq!(payload, bytes);
    assert_eq!(header, Header::new(Kind::Data, PEER, ME, 11, 6));
}

#[test]
fn invalid_base64_is_bad_frame() {
    for b64 in [
        "YQ", "YQ=", "Y===", "!!!!", "YQ==YQ==", "YR==", "-_8=", " YQ==",
    ] {
        let text = format!(r#"{{"kind":"data","id":2,"payload_b64":"{b64}"}}"#);
        assert_eq!(
            dec(&text, Some(ME)),
            Err((2, ErrorCode::BadFrame)),
            "{b64:?}"
        );
    }
}

#[test]
fn mistyped_payload_is_bad_frame() {
    for value in ["1", "true", "[]", "{}"] {
        for field in ["payload", "payload_b64"] {
            let text = format!(r#"{{"kind":"data","id":6,"{field}":{value}}}"#);
            assert_eq!(
                dec(&text, Some(ME)),
                Err((6, ErrorCode::BadFrame)),
                "{text}"
            );
        }
    }
}

#[test]
fn id_must_be_an_unsigned_integer() {
    for id in [
        r#""7""#,
        "7.0",
        "7.5",
        "-1",
        "-0",
        "1e2",
        "18446744073709551616",
        "true",
        "[7]",
    ] {
        let text = format!(r#"{{"kind":"data","id":{id}}}"#);
        assert_eq!(
            dec(&text, Some(ME)),
            Err((0, ErrorCode::BadFrame)),
            "id {id}"
        );
    }
    let (header, _) = ok(r#"{"kind":"data","id":18446744073709551615}"#, Some(ME));
    assert_eq!(header.id, u64::MAX);
}

#[test]
fn malformed_uuids_are_bad_frame() {
    let bad = [
        "not-a-uuid",
        "6f1c2a3b4d5e4f60817293a4b5c6d7e8",
        "{6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8}",
        "urn:uuid:6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8",
        "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e",
        "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7eg",
        "6f1c2a3b_4d5e_4f60_8172_93a4b5c6d7e8",
        "",
    ];
    for uuid in bad {
        for text in [
            format!(r#"{{"kind":"data","id":8,"src":"{uuid}"}}"#),
            format!(r#"{{"kind":"data","id":8,"dst":"{uuid}"}}"#),
            format!(r#"{{"kind":"subscribe","id":8,"address":"{uuid}"}}"#),
        ] {
            assert_eq!(
                dec(&text, Some(ME)),
                Err((8, ErrorCode::BadFrame)),
                "{text}"
            );
        }
    }
    let text = r#"{"kind":"data","id":8,"dst":42}"#;
    assert_eq!(dec(text, Some(ME)), Err((8, ErrorCode::BadFrame)));
}

#[test]
fn uuids_are_read_in_either_case_and_written_lowercase() {
    let upper = ME_TEXT.to_uppercase();
    let mixed = "0A0b0C0d-0E0f-4011-8213-141516171819";
    let text = format!(r#"{{"kind":"data","src":"{upper}","dst":"{mixed}","id":1}}"#);
    let (header, payload) = ok(&text, Some(ME));
    assert_eq!((header.src, header.dst), (ME, PEER));
    let out = enc(&header, &payload);
    assert!(out.contains(ME_TEXT) && out.contains(PEER_TEXT), "{out}");
    assert!(!out.contains(&upper), "{out}");
}

#[test]
fn time_req_needs_an_unsigned_t0() {
    for t0 in [
        "",
        r#","t0":null"#,
        r#","t0":"5""#,
        r#","t0":5.5"#,
        r#","t0":-5"#,
    ] {
        let text = format!(r#"{{"kind":"time_req","id":12{t0}}}"#);
        assert_eq!(
            dec(&text, Some(ME)),
            Err((12, ErrorCode::BadFrame)),
            "{text}"
        );
    }
}

#[test]
fn address_kinds_need_an_address() {
    for address in [
        "",
        r#","address":null"#,
        r#","address":16"#,
        r#","address":["x"]"#,
    ] {
        let text = format!(r#"{{"kind":"state_get","id":13{address}}}"#);
        assert_eq!(
            dec(&text, Some(ME)),
            Err((13, ErrorCode::BadFrame)),
            "{text}"
        );
    }
}

#[test]
fn fields_the_kind_does_not_use_are_ignored() {
    let (_, payload) = ok(
        r#"{"kind":"time_req","t0":1,"payload":"x","payload_b64":"YQ=="}"#,
        Some(ME),
    );
    assert_eq!(payload, 1u64.to_be_bytes());
    let (_, payload) = ok(
        r#"{"kind":"data","payload":"x","t0":"later","address":7}"#,
        Some(ME),
    );
    assert_eq!(payload, b"x");
}

#[test]
fn unknown_fields_are_ignored() {
    let plain = ok(r#"{"kind":"data","id":3,"payload":"p"}"#, Some(ME));
    let text = r#"{"v":2,"kind":"data","meta":{"a":[1,{"b":null}]},"id":3,"x":-1.5,"payload":"p","x":"again"}"#;
    assert_eq!(ok(text, Some(ME)), plain);
}

#[test]
fn unknown_kind_before_and_after_registration() {
    for name in ["reboot", "DATA", "Data", ""] {
        let text = format!(r#"{{"kind":"{name}","id":14,"payload":"ignored"}}"#);
        let (header, payload) = ok(&text, Some(ME));
        assert_eq!(
            (header.kind, header.kind(), header.len),
            (0, None, 0),
            "{name:?}"
        );
        assert!(payload.is_empty());
        assert_eq!(
            validate(&header, 0, None),
            Err(ErrorCode::NotRegistered),
            "{name:?}"
        );
        assert_eq!(
            validate(&header, 0, Some(ME)),
            Err(ErrorCode::UnknownKind),
            "{name:?}"
        );
    }
}

#[test]
fn gateway_kinds_from_a_client_are_unknown_kind() {
    for kind in Kind::ALL.into_iter().filter(|k| !k.client_may_send()) {
        // Their own fields, even mistyped, are not read.
        let text = format!(
            r#"{{"kind":"{}","id":15,"server_time_us":"x","code":"y","address":1}}"#,
            kind.name()
        );
        let (header, payload) = ok(&text, Some(ME));
        assert_eq!(
            (header.kind(), header.len, payload.len()),
            (Some(kind), 0, 0)
        );
        assert_eq!(
            validate(&header, 0, Some(ME)),
            Err(ErrorCode::UnknownKind),
            "{kind:?}"
        );
        assert_eq!(
            validate(&header, 0, None),
            Err(ErrorCode::NotRegistered),
            "{kind:?}"
        );
    }
}

#[test]
fn kind_must_be_a_string() {
    for kind in [
        "",
        r#","kind":null"#,
        r#","kind":16"#,
        r#","kind":["data"]"#,
    ] {
        let text = format!(r#"{{"id":16{kind}}}"#);
        assert_eq!(
            dec(&text, Some(ME)),
            Err((16, ErrorCode::BadFrame)),
            "{text}"
        );
    }
}

#[test]
fn nesting_is_bounded_by_the_parser() {
    let nested = |depth: usize| {
        format!(
            r#"{{"kind":"data","id":4,"x":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    assert_eq!(ok(&nested(100), Some(ME)).0.id, 4);
    assert_eq!(
        dec(&nested(100_000), Some(ME)),
        Err((0, ErrorCode::BadFrame))
    );
}

#[test]
fn unparsable_json_and_non_objects_echo_id_zero() {
    let cases = [
        "",
        "{",
        r#"{"kind":"data","id":9"#,
        r#"{"kind":"data","id":9,}"#,
        r#"{"kind":"data","id":9} x"#,
        r#"{'kind':'data','id':9}"#,
        r#"[{"kind":"data","id":9}]"#,
        r#""data""#,
        "9",
        "null",
    ];
    for text in cases {
        assert_eq!(
            dec(text, Some(ME)),
            Err((0, ErrorCode::BadFrame)),
            "{text:?}"
        );
    }
}

#[test]
fn the_id_is_echoed_whatever_field_is_wrong() {
    let cases = [
        r#"{"id":42,"kind":"data","src":"nope"}"#,
        r#"{"kind":"data","src":"nope","id":42}"#,
        r#"{"kind":"time_req","id":42}"#,
        r#"{"kind":7,"id":42}"#,
        r#"{"kind":"data","kind":"data","id":42}"#,
    ];
    for text in cases {
        assert_eq!(
            dec(text, Some(ME)),
            Err((42, ErrorCode::BadFrame)),
            "{text}"
        );
    }
}

#[test]
fn repeated_known_keys_are_bad_frame() {
    let cases = [
        r#"{"kind":"data","id":1,"payload":null,"payload":"x"}"#,
        r#"{"kind":"data","id":1,"dst":null,"dst":null}"#,
        r#"{"kind":"data","id":1,"id":2}"#,
        r#"{"kind":"time_req","id":1,"t0":1,"t0":1}"#,
    ];
    for text in cases {
        // With two ids, the first is the one echoed.
        assert_eq!(dec(text, Some(ME)), Err((1, ErrorCode::BadFrame)), "{text}");
    }
}

#[test]
fn escapes_in_input_strings() {
    let text = r#"{"kind":"data","payload":"q\"b\\s\/n\nt\tu\u00e9e\ud83d\ude00"}"#;
    let (header, payload) = ok(text, Some(ME));
    assert_eq!(payload, "q\"b\\s/n\nt\tuée😀".as_bytes());
    assert_eq!(header.len as usize, payload.len());
    let escaped_key = r#"{"kin\u0064":"data","payload":"x"}"#;
    assert_eq!(ok(escaped_key, Some(ME)).1, b"x");
}

#[test]
fn payload_buffer_is_cleared_and_reused() {
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(b"left over");
    let ptr = payload.as_ptr();
    let header = decode_json(
        r#"{"kind":"data","payload":"fresh"}"#,
        Some(ME),
        &mut payload,
    )
    .expect("valid");
    assert_eq!((header.len, payload.as_slice()), (5, &b"fresh"[..]));
    assert_eq!(
        (payload.as_ptr(), payload.capacity()),
        (ptr, 64),
        "no allocation"
    );

    let header = decode_json(
        r#"{"kind":"data","payload_b64":"/wD+"}"#,
        Some(ME),
        &mut payload,
    )
    .expect("valid");
    assert_eq!(
        (header.len, payload.as_slice()),
        (3, &[0xFF, 0x00, 0xFE][..])
    );
    assert_eq!(payload.as_ptr(), ptr, "no allocation for base64 either");

    let err = decode_json(
        r#"{"kind":"data","payload":"x","payload_b64":"YQ=="}"#,
        Some(ME),
        &mut payload,
    );
    assert_eq!(err, Err((0, ErrorCode::BadFrame)));
    assert!(payload.is_empty(), "an error leaves no partial payload");

    // Base64 is decoded into the buffer before it turns out to be invalid.
    let err = decode_json(
        r#"{"kind":"data","id":3,"payload_b64":"QUJD*"}"#,
        Some(ME),
        &mut payload,
    );
    assert_eq!(err, Err((3, ErrorCode::BadFrame)));
    assert!(payload.is_empty(), "an error leaves no partial payload");
}

#[test]
fn client_kinds_round_trip_through_json() {
    let texts = [
        format!(
            r#"{{"kind":"hello","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":1,"payload":"tok"}}"#
        ),
        format!(r#"{{"kind":"heartbeat","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":2}}"#),
        format!(r#"{{"kind":"data","src":"{ME_TEXT}","dst":"{PEER_TEXT}","id":3,"payload":"hi"}}"#),
        format!(
            r#"{{"kind":"data","src":"{ME_TEXT}","dst":"{PEER_TEXT}","id":4,"payload_b64":"gA=="}}"#
        ),
        format!(r#"{{"kind":"time_req","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":5,"t0":123}}"#),
        format!(
            r#"{{"kind":"state_put","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":6,"payload":"{{}}"}}"#
        ),
        format!(
            r#"{{"kind":"state_get","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":7,"address":"{PEER_TEXT}"}}"#
        ),
        format!(
            r#"{{"kind":"subscribe","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":8,"address":"{PEER_TEXT}"}}"#
        ),
        format!(
            r#"{{"kind":"unsubscribe","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":9,"address":"{PEER_TEXT}"}}"#
        ),
    ];
    for text in texts {
        let (header, payload) = ok(&text, Some(ME));
        // The canonical text comes back byte for byte.
        assert_eq!(enc(&header, &payload), text);
    }
}

#[test]
fn welcome_text() {
    let mut frame = Vec::new();
    crate::proto::encode_welcome(&mut frame, ME, 1, 1_700_000_000_000_001, 90_000, 1 << 20);
    let header = Header::parse(&frame).expect("frame");
    assert_eq!(
        enc(&header, &frame[48..]),
        format!(
            r#"{{"kind":"welcome","src":"{NIL_TEXT}","dst":"{ME_TEXT}","id":1,"server_time_us":1700000000000001,"heartbeat_timeout_ms":90000,"max_payload":1048576}}"#
        )
    );
}

#[test]
fn heartbeat_text_has_no_payload_field() {
    let mut frame = Vec::new();
    crate::proto::encode_heartbeat(&mut frame, ME, 77);
    let header = Header::parse(&frame).expect("frame");
    assert_eq!(
        enc(&header, &[]),
        format!(r#"{{"kind":"heartbeat","src":"{NIL_TEXT}","dst":"{ME_TEXT}","id":77}}"#)
    );
}

#[test]
fn time_resp_and_state_ack_fields() {
    let mut frame = Vec::new();
    crate::proto::encode_time_resp(&mut frame, ME, 2, 10, 20, u64::MAX);
    assert_eq!(
        frame_json(&frame),
        json!({"kind":"time_resp","src":NIL_TEXT,"dst":ME_TEXT,"id":2,"t0":10,"t1":20,"t2":u64::MAX})
    );
    let mut frame = Vec::new();
    crate::proto::encode_state_ack(&mut frame, ME, 3, 555);
    assert_eq!(
        frame_json(&frame),
        json!({"kind":"state_ack","src":NIL_TEXT,"dst":ME_TEXT,"id":3,"updated_at_us":555})
    );
}

#[test]
fn state_fields_with_text_and_binary_blobs() {
    let mut frame = Vec::new();
    encode_state(&mut frame, ME, 4, PEER, 600, true, br#"{"on":1}"#);
    assert_eq!(
        frame_json(&frame),
        json!({"kind":"state","src":NIL_TEXT,"dst":ME_TEXT,"id":4,
               "address":PEER_TEXT,"updated_at_us":600,"online":true,"payload":"{\"on\":1}"})
    );
    let mut frame = Vec::new();
    encode_state(&mut frame, ME, 0, PEER, 601, false, &[0xC3]);
    assert_eq!(
        frame_json(&frame),
        json!({"kind":"state","src":NIL_TEXT,"dst":ME_TEXT,"id":0,
               "address":PEER_TEXT,"updated_at_us":601,"online":false,"payload_b64":"ww=="})
    );
    let mut frame = Vec::new();
    encode_state(&mut frame, ME, 0, PEER, 602, false, &[]);
    assert_eq!(frame_json(&frame)["payload"], "");
}

#[test]
fn presence_fields() {
    for online in [true, false] {
        let mut frame = Vec::new();
        encode_presence(&mut frame, ME, 5, PEER, online, 700);
        assert_eq!(
            frame_json(&frame),
            json!({"kind":"presence","src":NIL_TEXT,"dst":ME_TEXT,"id":5,
                   "address":PEER_TEXT,"online":online,"at_us":700})
        );
    }
}

#[test]
fn error_fields_for_every_code() {
    for code in ErrorCode::ALL {
        let mut frame = Vec::new();
        encode_error(&mut frame, ME, 6, code, "said \"no\"\n");
        let expected = json!({"kind":"error","src":NIL_TEXT,"dst":ME_TEXT,"id":6,
                              "code":code as u16,"error":code.name(),"message":"said \"no\"\n"});
        assert_eq!(frame_json(&frame), expected);
    }
}

#[test]
fn error_json_matches_the_binary_error() {
    let long = "é".repeat(300);
    for code in ErrorCode::ALL {
        for message in ["", "slow down", long.as_str()] {
            let mut frame = Vec::new();
            encode_error(&mut frame, PEER, 17, code, message);
            let header = Header::parse(&frame).expect("frame");
            let mut direct = Vec::new();
            error_json(&mut direct, PEER, 17, code, message);
            assert_eq!(
                String::from_utf8(direct).expect("UTF-8"),
                enc(&header, &frame[48..])
            );
        }
    }
    let mut out = Vec::new();
    error_json(&mut out, Uuid::nil(), 0, ErrorCode::Timeout, "no hello");
    assert_eq!(
        String::from_utf8(out).expect("UTF-8"),
        format!(
            r#"{{"kind":"error","src":"{NIL_TEXT}","dst":"{NIL_TEXT}","id":0,"code":14,"error":"timeout","message":"no hello"}}"#
        )
    );
}

#[test]
fn data_text_is_escaped_by_json_rules() {
    let text = "q\"b\\s/n\nt\tc\u{1}e\u{7f}ué漢😀\u{2028}";
    let mut frame = Vec::new();
    encode_frame(&mut frame, Kind::Data, ME, PEER, 18, text.as_bytes());
    let header = Header::parse(&frame).expect("frame");
    let out = enc(&header, text.as_bytes());
    assert!(
        out.ends_with(concat!(
            r#","payload":"q\"b\\s/n\nt\tc\u0001e"#,
            "\u{7f}ué漢😀\u{2028}\"}"
        )),
        "{out}"
    );
    let parsed: Json = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(parsed["payload"], text);
    // And back: the same bytes reach a binary client.
    assert_eq!(ok(&out, Some(ME)).1, text.as_bytes());
}

#[test]
fn empty_data_is_an_empty_payload_string() {
    let header = Header::new(Kind::Data, ME, PEER, 19, 0);
    assert_eq!(
        enc(&header, &[]),
        format!(r#"{{"kind":"data","src":"{ME_TEXT}","dst":"{PEER_TEXT}","id":19,"payload":""}}"#)
    );
}

#[test]
fn data_encoding_appends_without_reallocating() {
    let payload = [b'z'; 200];
    let header = Header::new(Kind::Data, ME, PEER, 20, 200);
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"[");
    let ptr = out.as_ptr();
    encode_json(&header, &payload, &mut out);
    assert_eq!(out.as_ptr(), ptr);
    assert_eq!(out[0], b'[');
    let parsed: Json = serde_json::from_slice(&out[1..]).expect("valid JSON");
    assert_eq!(parsed["payload"].as_str().map(str::len), Some(200));
}

#[test]
fn a_binary_data_frame_reaches_a_json_client_with_the_same_bytes() {
    for bytes in [&b"plain"[..], &[0, 159, 146, 150], b""] {
        let mut frame = Vec::new();
        encode_frame(&mut frame, Kind::Data, PEER, ME, 21, bytes);
        let json = frame_json(&frame);
        assert_eq!(
            (json["kind"].as_str(), json["id"].as_u64()),
            (Some("data"), Some(21))
        );
        let (header, payload) = ok(&json.to_string(), Some(PEER));
        assert_eq!(payload, bytes);
        assert_eq!(header, Header::parse(&frame).expect("frame"));
    }
}

#[test]
fn structured_kinds_with_a_wrong_layout_fall_back_to_opaque() {
    let header = Header::new(Kind::Welcome, Uuid::nil(), ME, 22, 3);
    let json: Json = serde_json::from_str(&enc(&header, b"abc")).expect("valid JSON");
    assert_eq!(json["payload"], "abc");
    assert!(json.get("server_time_us").is_none());

    let header = Header::new(Kind::Error, Uuid::nil(), ME, 22, 3);
    let json: Json = serde_json::from_str(&enc(&header, &[0, 99, 0xFF])).expect("valid JSON");
    assert_eq!(json["payload_b64"], "AGP/");
    assert!(json.get("code").is_none());
}

#[test]
fn a_kind_without_a_name_is_written_as_its_number() {
    let header = Header {
        kind: 0x99,
        ..Header::new(Kind::Data, ME, PEER, 23, 1)
    };
    let json: Json = serde_json::from_str(&enc(&header, b"x")).expect("valid JSON");
    assert_eq!(json["kind"], 0x99);
    assert_eq!(json["payload"], "x");
}
