//! Invariant checks on untrusted input, one per fuzz target.
//!
//! The cargo-fuzz targets in `fuzz/` and the corpus regression test
//! (`tests/fuzz_corpus.rs`) call the same functions, so the fuzzer and CI
//! check exactly the same things. Each function takes arbitrary bytes, returns
//! when every invariant holds and panics when one does not; none of them
//! allocates more than a small multiple of its input.
//!
//! - [`decoder`]: the binary codec ([`decode`], [`decode_message`],
//!   [`validate()`], [`encode_frame`]).
//! - [`json`]: the JSON mapping ([`decode_json`], [`encode_json`],
//!   [`error_json`]), in both directions.
//! - [`upgrade`]: the WebSocket upgrade request ([`parse_upgrade`]).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};
use tungstenite::handshake::derive_accept_key;
use uuid::Uuid;

use crate::proto::{
    check_header, decode, decode_json, decode_message, encode_error, encode_frame, encode_json,
    error_json, read_address, read_u64, validate, Decoded, ErrorCode, Header, Kind,
    DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};
use crate::transport::ws::{parse_upgrade, Upgrade, BAD_REQUEST, NOT_FOUND, TOO_LARGE, WS_PATH};

/// A check: returns when every invariant holds for the input, panics
/// otherwise.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its corpus, the fuzz target's
/// name) and its check.
pub const TARGETS: [(&str, Check); 3] =
    [("decoder", decoder), ("json", json), ("upgrade", upgrade)];

/// Maximum payloads the decoder is checked with: none allowed, a small one
/// that fuzzed frames reach, the default and no bound at all.
const MAX_PAYLOADS: [u32; 4] = [0, 16, DEFAULT_MAX_PAYLOAD, u32::MAX];

/// The kinds a client may send, in the order of the protocol table.
const CLIENT_KINDS: [Kind; 8] = [
    Kind::Hello,
    Kind::Heartbeat,
    Kind::Data,
    Kind::TimeReq,
    Kind::StatePut,
    Kind::StateGet,
    Kind::Subscribe,
    Kind::Unsubscribe,
];

/// A cheap hash of the input, to derive split points and choices from it
/// deterministically (FNV-1a).
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// Binary decoder
// ---------------------------------------------------------------------------

/// `data` as the front of a TCP receive buffer and as one WebSocket binary
/// message, under several maximum payloads.
///
/// - [`decode`] never panics, and each outcome is consistent with the header:
///   `Incomplete { needed }` has `needed > data.len()` and
///   `needed <= 48 + max`; `Frame` has version 1, `len <= max`,
///   `consumed == 48 + len`, the payload is `data[48..consumed]`, and
///   re-encoding it gives back `data[..consumed]` exactly except the flags,
///   which [`encode_frame`] writes as 0; `Reject` is `bad_frame` exactly for
///   a version other than 1 and `too_large` exactly for `len > max`.
/// - Every prefix of `data` decodes to what the stream so far allows: 48
///   bytes needed below a header, the same rejection once the header is
///   there, the same `needed` until the frame is complete, then the same
///   frame.
/// - Decoding a stream of frames gives the same frames, rejection and
///   leftover whatever the sizes of the reads that brought the bytes.
/// - [`decode_message`] agrees with [`decode`].
/// - [`validate()`] accepts exactly the frames the protocol allows, and the
///   payload readers do not panic on an accepted one.
pub fn decoder(data: &[u8]) {
    for max in MAX_PAYLOADS {
        let whole = decode(data, max);
        check_decoded(data, max, &whole);
        check_prefixes(data, max, &whole);
        check_message(data, max, &whole);
        check_stream(data, max);
    }
}

fn check_decoded(data: &[u8], max: u32, decoded: &Decoded<'_>) {
    let parsed = Header::parse(data);
    match *decoded {
        Decoded::Incomplete { needed } => {
            assert!(
                needed > data.len(),
                "incomplete, yet {needed} bytes are here"
            );
            match parsed {
                None => assert_eq!(needed, HEADER_LEN),
                Some(header) => {
                    assert_eq!(check_header(&header, max), Ok(()));
                    assert_eq!(needed, HEADER_LEN + header.len as usize);
                    assert!(needed <= HEADER_LEN + max as usize);
                }
            }
        }
        Decoded::Reject { header, code } => {
            assert_eq!(Some(header), parsed);
            let expected = if header.version != 1 {
                ErrorCode::BadFrame
            } else {
                assert!(header.len > max, "rejected a frame within the maximum");
                ErrorCode::TooLarge
            };
            assert_eq!(code, expected);
        }
        Decoded::Frame {
            header,
            payload,
            consumed,
        } => {
            assert_eq!(Some(header), parsed);
            assert_eq!(header.version, 1);
            assert!(header.len <= max);
            assert_eq!(consumed, HEADER_LEN + header.len as usize);
            assert_eq!(payload.len(), header.len as usize);
            assert!(std::ptr::eq(payload, &data[HEADER_LEN..consumed]));
            check_reencode(&data[..consumed], &header, payload);
            check_validate(&header, payload);
        }
    }
}

/// The header writes back to its 48 bytes, and a known kind re-encodes to
/// the same frame with the flags cleared.
fn check_reencode(frame: &[u8], header: &Header, payload: &[u8]) {
    let mut written = [0u8; HEADER_LEN];
    header.write(&mut written);
    assert_eq!(&written[..], &frame[..HEADER_LEN]);
    let Some(kind) = header.kind() else {
        return;
    };
    let mut out = Vec::new();
    encode_frame(&mut out, kind, header.src, header.dst, header.id, payload);
    assert_eq!(out.len(), frame.len());
    assert_eq!(&out[..2], &frame[..2]);
    assert_eq!(&out[2..4], &[0, 0], "encode_frame writes flags 0");
    assert_eq!(&out[4..], &frame[4..]);
}

/// Validation against the protocol's rules, stated independently of the
/// order in which `validate` applies them: a frame is acceptable exactly when
/// its kind is one a client may send, HELLO before registration, its received
/// length is the header's and fits the kind, and its `src` is the registered
/// address.
fn check_validate(header: &Header, payload: &[u8]) {
    let other = Uuid::from_u128(!header.src.as_u128());
    for registered in [None, Some(header.src), Some(other)] {
        let result = validate(header, payload.len(), registered);
        let kind = header.kind().filter(|kind| kind.client_may_send());
        let acceptable = kind.is_some_and(|kind| {
            let registration_ok = match registered {
                None => kind == Kind::Hello,
                Some(address) => address == header.src,
            };
            let size_ok = header.len as usize == payload.len()
                && kind
                    .fixed_payload_len()
                    .is_none_or(|len| len == payload.len());
            registration_ok && size_ok
        });
        match result {
            Ok(got) => {
                assert!(acceptable, "accepted {header:?} for {registered:?}");
                assert_eq!(Some(got), kind);
                read_payload(got, payload);
            }
            Err(code) => {
                assert!(!acceptable, "refused {header:?} for {registered:?}: {code}");
                assert!(matches!(
                    code,
                    ErrorCode::NotRegistered
                        | ErrorCode::UnknownKind
                        | ErrorCode::BadFrame
                        | ErrorCode::SrcMismatch
                ));
            }
        }
    }
}

/// Reads an accepted payload the way the gateway does.
fn read_payload(kind: Kind, payload: &[u8]) {
    match kind {
        Kind::TimeReq => {
            read_u64(payload);
        }
        Kind::StateGet | Kind::Subscribe | Kind::Unsubscribe => {
            read_address(payload);
        }
        _ => {}
    }
}

/// A few prefixes of `data`, among them every boundary where the outcome may
/// change, and what each must decode to given what the whole decodes to.
fn check_prefixes(data: &[u8], max: u32, whole: &Decoded<'_>) {
    let consumed = match whole {
        Decoded::Frame { consumed, .. } => *consumed,
        _ => data.len(),
    };
    let h = fnv(data) as usize;
    let cuts = [
        0,
        1,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 1,
        consumed.saturating_sub(1),
        consumed,
        consumed + 1,
        data.len() / 2,
        h % (data.len() + 1),
        data.len(),
    ];
    for cut in cuts.into_iter().filter(|&cut| cut <= data.len()) {
        let got = decode(&data[..cut], max);
        let expected = if cut < HEADER_LEN {
            Decoded::Incomplete { needed: HEADER_LEN }
        } else {
            match *whole {
                Decoded::Frame { .. } if cut < consumed => Decoded::Incomplete { needed: consumed },
                other => other,
            }
        };
        assert!(same_decoded(&got, &expected), "prefix {cut}: {got:?}");
    }
}

/// Equality of two outcomes on the same buffer, comparing a payload by where
/// it is rather than byte by byte.
fn same_decoded(a: &Decoded<'_>, b: &Decoded<'_>) -> bool {
    match (a, b) {
        (
            Decoded::Frame {
                header: ha,
                payload: pa,
                consumed: ca,
            },
            Decoded::Frame {
                header: hb,
                payload: pb,
                consumed: cb,
            },
        ) => ha == hb && ca == cb && std::ptr::eq(*pa, *pb),
        _ => a == b,
    }
}

fn check_message(data: &[u8], max: u32, whole: &Decoded<'_>) {
    let message = decode_message(data, max);
    if data.len() < HEADER_LEN {
        assert_eq!(message, Err((0, ErrorCode::BadFrame)));
        return;
    }
    match (*whole, message) {
        (Decoded::Reject { header, code }, got) => assert_eq!(got, Err((header.id, code))),
        (_, Ok((header, payload))) => {
            assert_eq!(Some(header), Header::parse(data));
            assert!(std::ptr::eq(payload, &data[HEADER_LEN..]));
            if payload.len() != header.len as usize {
                // Step 5 catches the mismatch whoever sent it.
                for registered in [None, Some(header.src)] {
                    assert!(validate(&header, payload.len(), registered).is_err());
                }
            }
        }
        (decoded, Err(e)) => panic!("decode gave {decoded:?}, decode_message {e:?}"),
    }
}

/// What a TCP connection makes of a byte stream: every frame, then either
/// the rejection that ended it or the leftover bytes and what they need.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame(Header, Vec<u8>),
    Reject(Header, ErrorCode),
    Leftover { bytes: usize, needed: usize },
}

/// Feeds `data` in reads of the given sizes (the last read takes the rest)
/// to a receive buffer drained like the gateway's.
fn stream_events(data: &[u8], max: u32, reads: &[usize]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut reads = reads.iter();
    while at < data.len() || at == 0 {
        let size = reads.next().copied().unwrap_or(data.len());
        let end = at.saturating_add(size).min(data.len());
        buf.extend_from_slice(&data[at..end]);
        at = end;
        loop {
            match decode(&buf, max) {
                Decoded::Frame {
                    header,
                    payload,
                    consumed,
                } => {
                    events.push(Event::Frame(header, payload.to_vec()));
                    buf.drain(..consumed);
                }
                Decoded::Reject { header, code } => {
                    events.push(Event::Reject(header, code));
                    return events;
                }
                Decoded::Incomplete { needed } => {
                    assert!(needed > buf.len());
                    if at == data.len() {
                        events.push(Event::Leftover {
                            bytes: buf.len(),
                            needed,
                        });
                        return events;
                    }
                    break;
                }
            }
        }
    }
    unreachable!("the last read ends the stream")
}

fn check_stream(data: &[u8], max: u32) {
    let whole = stream_events(data, max, &[]);
    let h = fnv(data);
    let first = (h as usize) % (data.len() + 1);
    let small = 1 + (h >> 32) as usize % 64;
    let splits: [&[usize]; 3] = [&[data.len() / 2], &[first, 1, HEADER_LEN], &[small; 64]];
    for reads in splits {
        assert_eq!(stream_events(data, max, reads), whole, "reads {reads:?}");
    }
}

// ---------------------------------------------------------------------------
// JSON mapping
// ---------------------------------------------------------------------------

/// The address a connection is registered with when the JSON check needs
/// one.
const REGISTERED: Uuid = Uuid::from_u128(0x6f1c_2a3b_4d5e_4f60_8172_93a4_b5c6_d7e8);

/// `data` as a text message from a page, and as the material of binary
/// frames to send to one.
///
/// Text (invalid UTF-8 replaced, as only UTF-8 reaches the decoder), before
/// and after registration:
/// - [`decode_json`] never panics. Text that is not a JSON object is
///   `bad_frame` with id 0; a failure clears the payload buffer.
/// - An accepted object gives a version 1 header with flags 0 and
///   `len == payload.len()`, whose kind, `src`, `dst`, `id` and payload are
///   what PROTOCOL.md section 8 says the fields mean (defaults included).
/// - Round trip: [`encode_json`] of the result decodes to the same header and
///   payload, except a kind name the protocol does not know, which is written
///   as a number and so decodes to `bad_frame` (documented).
///
/// Binary frames built from the same bytes:
/// - For every kind a client may send, with a payload of the kind's size:
///   binary → JSON → binary gives back the same frame (flags are not in JSON
///   and come back 0).
/// - For every kind, and the raw kind byte of the input, with the input's
///   payload: the JSON is UTF-8 and an object with exactly the fields the
///   protocol lists for that kind and payload, and decoding it does not
///   panic.
/// - [`error_json`] writes exactly what [`encode_json`] writes for the frame
///   [`encode_error`] builds.
pub fn json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let value: Option<Map<String, Value>> = match serde_json::from_str(&text) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    for registered in [None, Some(REGISTERED)] {
        check_json_text(&text, value.as_ref(), registered);
    }
    check_binary_to_json(data);
}

fn check_json_text(text: &str, object: Option<&Map<String, Value>>, registered: Option<Uuid>) {
    let mut payload = b"stale".to_vec();
    let result = decode_json(text, registered, &mut payload);
    let Some(object) = object else {
        assert_eq!(result, Err((0, ErrorCode::BadFrame)), "not an object");
        assert!(payload.is_empty());
        return;
    };
    let header = match result {
        Ok(header) => header,
        Err((_, code)) => {
            assert!(matches!(code, ErrorCode::BadFrame | ErrorCode::TooLarge));
            assert!(payload.is_empty());
            return;
        }
    };
    assert_eq!((header.version, header.flags), (1, 0));
    assert_eq!(header.len as usize, payload.len());
    assert_eq!(
        (header, payload.as_slice()),
        (
            expected_header(object, registered, payload.len()),
            &expected_payload(object)[..]
        ),
        "{text}"
    );

    // Round trip.
    let mut out = Vec::new();
    encode_json(&header, &payload, &mut out);
    let again = std::str::from_utf8(&out).expect("encode_json writes UTF-8");
    let mut payload_again = Vec::new();
    let result = decode_json(again, registered, &mut payload_again);
    if header.kind().is_some() {
        assert_eq!(result, Ok(header), "{text} -> {again}");
        assert_eq!(payload_again, payload, "{text} -> {again}");
    } else {
        assert_eq!(result, Err((header.id, ErrorCode::BadFrame)), "{again}");
    }
}

/// A field of an accepted object; `null` is absent.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

fn uuid_field(object: &Map<String, Value>, name: &str) -> Option<Uuid> {
    field(object, name).map(|v| {
        let text = v.as_str().expect("an accepted UUID field is a string");
        assert_eq!(text.len(), 36, "only the hyphenated form is accepted");
        Uuid::parse_str(text).expect("an accepted UUID parses")
    })
}

/// The header PROTOCOL.md section 8 gives an object that was accepted.
fn expected_header(object: &Map<String, Value>, registered: Option<Uuid>, len: usize) -> Header {
    let name = object["kind"]
        .as_str()
        .expect("an accepted kind is a string");
    let kind = Kind::from_name(name);
    let src = uuid_field(object, "src");
    if kind == Some(Kind::Hello) {
        assert!(src.is_some(), "HELLO without src accepted");
    }
    Header {
        version: 1,
        kind: kind.map_or(0, |kind| kind as u8),
        flags: 0,
        len: len as u32,
        src: src.or(registered).unwrap_or_else(Uuid::nil),
        dst: uuid_field(object, "dst").unwrap_or_else(Uuid::nil),
        id: field(object, "id").map_or(0, |v| v.as_u64().expect("an accepted id is a u64")),
    }
}

/// The payload PROTOCOL.md section 8 gives an object that was accepted.
fn expected_payload(object: &Map<String, Value>) -> Vec<u8> {
    let kind = object["kind"].as_str().and_then(Kind::from_name);
    match kind {
        Some(Kind::Hello | Kind::Heartbeat | Kind::Data | Kind::StatePut) => {
            let text = field(object, "payload").map(|v| v.as_str().expect("a string"));
            let b64 = field(object, "payload_b64").map(|v| v.as_str().expect("a string"));
            match (text, b64) {
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(b64)) => STANDARD.decode(b64).expect("accepted base64"),
                (None, None) => Vec::new(),
                (Some(_), Some(_)) => panic!("both payload fields accepted"),
            }
        }
        Some(Kind::TimeReq) => {
            let t0 = field(object, "t0").and_then(Value::as_u64);
            t0.expect("an accepted t0").to_be_bytes().to_vec()
        }
        Some(Kind::StateGet | Kind::Subscribe | Kind::Unsubscribe) => {
            let address = uuid_field(object, "address").expect("an accepted address");
            address.as_bytes().to_vec()
        }
        _ => Vec::new(),
    }
}

/// Header fields and payload taken from the input: its first 48 bytes
/// (zero-padded) as a header, the rest as the payload.
fn frame_material(data: &[u8]) -> (Header, &[u8]) {
    let mut head = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    head[..n].copy_from_slice(&data[..n]);
    let header = Header::parse(&head).expect("48 bytes");
    (header, data.get(HEADER_LEN..).unwrap_or_default())
}

fn check_binary_to_json(data: &[u8]) {
    let (raw, bytes) = frame_material(data);
    for kind in CLIENT_KINDS {
        let payload = match kind.fixed_payload_len() {
            Some(len) => {
                let mut fixed = bytes[..bytes.len().min(len)].to_vec();
                fixed.resize(len, 0);
                fixed
            }
            None => bytes.to_vec(),
        };
        let mut frame = Vec::new();
        encode_frame(&mut frame, kind, raw.src, raw.dst, raw.id, &payload);
        let header = Header::parse(&frame).expect("a frame");
        assert_eq!(validate(&header, payload.len(), Some(raw.src)), Ok(kind));
        let mut text = Vec::new();
        encode_json(&header, &payload, &mut text);
        let text = std::str::from_utf8(&text).expect("encode_json writes UTF-8");
        for registered in [None, Some(raw.src), Some(REGISTERED)] {
            let mut back = Vec::new();
            assert_eq!(
                decode_json(text, registered, &mut back),
                Ok(header),
                "{text}"
            );
            assert_eq!(back, payload, "{text}");
        }
    }

    let kinds = Kind::ALL.into_iter().map(|kind| kind as u8);
    for kind in kinds.chain([raw.kind]) {
        let header = Header { kind, ..raw };
        let mut out = Vec::new();
        encode_json(&header, bytes, &mut out);
        let text = std::str::from_utf8(&out).expect("encode_json writes UTF-8");
        let value: Value = serde_json::from_str(text).expect("encode_json writes JSON");
        assert_eq!(value, expected_json(&header, bytes), "{text}");
        let mut back = Vec::new();
        let _ = decode_json(text, Some(raw.src), &mut back);
    }

    let code = ErrorCode::ALL[raw.id as usize % ErrorCode::ALL.len()];
    let message = String::from_utf8_lossy(bytes);
    let mut frame = Vec::new();
    encode_error(&mut frame, raw.dst, raw.id, code, &message);
    let header = Header::parse(&frame).expect("a frame");
    let mut via_frame = Vec::new();
    encode_json(&header, &frame[HEADER_LEN..], &mut via_frame);
    let mut direct = Vec::new();
    error_json(&mut direct, raw.dst, raw.id, code, &message);
    assert_eq!(direct, via_frame);
}

/// The JSON object PROTOCOL.md section 8 describes for a frame, written from
/// the payload layouts of section 5 independently of the encoder.
fn expected_json(header: &Header, payload: &[u8]) -> Value {
    let mut object = Map::new();
    let kind = Kind::from_u8(header.kind);
    object.insert(
        "kind".into(),
        kind.map_or(header.kind.into(), |kind| kind.name().into()),
    );
    object.insert("src".into(), header.src.to_string().into());
    object.insert("dst".into(), header.dst.to_string().into());
    object.insert("id".into(), header.id.into());
    let structured = kind.and_then(|kind| structured_json(kind, payload));
    let fields = structured.unwrap_or_else(|| vec![opaque_json(payload)]);
    object.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Value::Object(object)
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |v, &b| (v << 8) | u64::from(b))
}

fn address_at(bytes: &[u8]) -> Value {
    Uuid::from_slice(&bytes[..16])
        .expect("16 bytes")
        .to_string()
        .into()
}

/// The named fields of a structured payload, `None` when the kind's payload
/// is opaque or this payload does not have the kind's layout.
fn structured_json(kind: Kind, p: &[u8]) -> Option<Vec<(&'static str, Value)>> {
    let fields = match (kind, p.len()) {
        (Kind::Welcome, 16) => vec![
            ("server_time_us", be(&p[..8]).into()),
            ("heartbeat_timeout_ms", be(&p[8..12]).into()),
            ("max_payload", be(&p[12..]).into()),
        ],
        (Kind::Heartbeat, 0) => vec![],
        (Kind::TimeReq, 8) => vec![("t0", be(p).into())],
        (Kind::TimeResp, 24) => vec![
            ("t0", be(&p[..8]).into()),
            ("t1", be(&p[8..16]).into()),
            ("t2", be(&p[16..]).into()),
        ],
        (Kind::StateAck, 8) => vec![("updated_at_us", be(p).into())],
        (Kind::StateGet | Kind::Subscribe | Kind::Unsubscribe, 16) => {
            vec![("address", address_at(p))]
        }
        (Kind::State, 25..) => {
            let mut fields = vec![
                ("address", address_at(p)),
                ("updated_at_us", be(&p[16..24]).into()),
                ("online", (p[24] != 0).into()),
            ];
            fields.push(opaque_json(&p[25..]));
            fields
        }
        (Kind::Presence, 25) => vec![
            ("address", address_at(p)),
            ("online", (p[16] != 0).into()),
            ("at_us", be(&p[17..]).into()),
        ],
        (Kind::Error, 2..) => {
            let code = ErrorCode::from_u16(be(&p[..2]) as u16)?;
            let message = std::str::from_utf8(&p[2..]).ok()?;
            vec![
                ("code", (code as u16).into()),
                ("error", code.name().into()),
                ("message", message.into()),
            ]
        }
        _ => return None,
    };
    Some(fields)
}

/// `payload` as text when it is UTF-8, else `payload_b64`.
fn opaque_json(payload: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(payload) {
        Ok(text) => ("payload", text.into()),
        Err(_) => ("payload_b64", STANDARD.encode(payload).into()),
    }
}

// ---------------------------------------------------------------------------
// WebSocket upgrade
// ---------------------------------------------------------------------------

/// The `max_http_request_bytes` default.
const HTTP_LIMIT: usize = 8192;

/// `data` as the bytes received on the WebSocket port before the upgrade.
///
/// - [`parse_upgrade`] never panics; it waits only while under the limit and
///   refuses with one of its three answers, `431` only beyond the limit.
/// - An accepted request was complete within the limit (`consumed <=
///   data.len()`, `consumed <= limit`, the head ends with a blank line), is a
///   `GET` for path `/ws` with `Upgrade: websocket`, `Connection: Upgrade`,
///   `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` that is base64 of
///   16 bytes, all read by a parser written here. The answer is a
///   well-formed `101` whose `Sec-WebSocket-Accept` is the key's RFC 6455
///   digest. `404` is for a complete request for another path.
/// - The limit is exact: the same request is accepted with a limit of
///   `consumed` bytes and refused `431` with one byte less.
/// - Once a prefix is decided, more bytes do not change the decision: an
///   accepted prefix accepts the same way, a refused one stays refused.
pub fn upgrade(data: &[u8]) {
    let whole = parse_upgrade(data, HTTP_LIMIT);
    check_upgrade(data, HTTP_LIMIT, &whole);
    let h = fnv(data) as usize;
    let consumed = match &whole {
        Upgrade::Accept { consumed, .. } => *consumed,
        _ => data.len(),
    };
    for cut in [
        consumed.saturating_sub(1),
        data.len() / 2,
        h % (data.len() + 1),
    ] {
        let prefix = parse_upgrade(&data[..cut], HTTP_LIMIT);
        check_upgrade(&data[..cut], HTTP_LIMIT, &prefix);
        match prefix {
            Upgrade::NeedMore => {}
            Upgrade::Refuse(_) => assert!(
                matches!(whole, Upgrade::Refuse(_)),
                "prefix {cut} refused, the whole accepted"
            ),
            accept @ Upgrade::Accept { .. } => assert_eq!(accept, whole, "prefix {cut}"),
        }
    }
    if let Upgrade::Accept { consumed, .. } = whole {
        assert_eq!(parse_upgrade(data, consumed), whole);
        assert_eq!(
            parse_upgrade(data, consumed - 1),
            Upgrade::Refuse(TOO_LARGE)
        );
    }
    // A small limit, so that refusals for size are reached too.
    let small = h % 256;
    check_upgrade(data, small, &parse_upgrade(data, small));
}

fn check_upgrade(data: &[u8], limit: usize, got: &Upgrade) {
    match got {
        Upgrade::NeedMore => {
            assert!(data.len() <= limit, "waiting beyond the limit");
            assert!(head_end(data).is_none(), "waiting on a complete head");
        }
        Upgrade::Refuse(answer) => {
            assert!([NOT_FOUND, BAD_REQUEST, TOO_LARGE].contains(answer));
            if *answer == TOO_LARGE {
                assert!(data.len() > limit, "431 within the limit");
            }
            if *answer == NOT_FOUND {
                let request = Request::read(&data[..head_end(data).expect("a complete head")]);
                assert_ne!(request.path(), Some(WS_PATH), "404 for the WebSocket path");
            }
        }
        Upgrade::Accept { consumed, response } => {
            let consumed = *consumed;
            assert!(consumed <= data.len() && consumed <= limit);
            assert_eq!(head_end(data), Some(consumed));
            let request = Request::read(&data[..consumed]);
            assert!(request.method == b"GET");
            assert_eq!(request.path(), Some(WS_PATH));
            assert!(request.header_is(b"upgrade", b"websocket"));
            assert!(request.connection_upgrade());
            assert_eq!(request.header(b"sec-websocket-version"), Some(&b"13"[..]));
            let key = request.header(b"sec-websocket-key").expect("a key");
            let decoded = STANDARD.decode(key).expect("a base64 key");
            assert_eq!(decoded.len(), 16, "the key is 16 bytes");
            let expected = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n\
                 upgrade: websocket\r\nsec-websocket-accept: {}\r\n\r\n",
                derive_accept_key(key)
            );
            assert_eq!(
                String::from_utf8_lossy(response),
                expected,
                "request {:?}",
                String::from_utf8_lossy(&data[..consumed])
            );
        }
    }
}

/// Where the request line starts: after any empty lines, which HTTP parsers
/// skip (RFC 9112, 2.2).
fn head_start(data: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &data[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

/// Where the request head ends: just after the first empty line that follows
/// the request line (`\r\n` or a bare `\n`, as HTTP parsers accept both).
fn head_end(data: &[u8]) -> Option<usize> {
    let start = head_start(data);
    let mut line_start = start;
    for (i, &b) in data.iter().enumerate().skip(start) {
        if b == b'\n' {
            let line = &data[line_start..i];
            if (line.is_empty() || line == b"\r") && line_start > start {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// A request head read line by line, independently of the parser under test.
struct Request<'a> {
    method: &'a [u8],
    target: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Request<'a> {
    fn read(head: &'a [u8]) -> Request<'a> {
        let mut lines = head[head_start(head)..]
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(|&b| b == b' ').filter(|p| !p.is_empty());
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let headers = lines
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], trim(&line[colon + 1..])))
            })
            .collect();
        Request {
            method,
            target,
            headers,
        }
    }

    /// The path of the request target, origin form or absolute form.
    fn path(&self) -> Option<&str> {
        let target = std::str::from_utf8(self.target).ok()?;
        let after_scheme = match target.find("://") {
            Some(at) if !target.starts_with('/') => {
                // The authority ends at the first '/', '?' or '#' (RFC 3986, 3.2).
                let rest = &target[at + 3..];
                match rest.find(['/', '?', '#']) {
                    Some(end) if rest[end..].starts_with('/') => &rest[end..],
                    _ => "/",
                }
            }
            _ => target,
        };
        Some(after_scheme.split(['?', '#']).next().unwrap_or_default())
    }

    /// The first value of a header, as `http`'s `HeaderMap::get` reads it.
    fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    fn header_is(&self, name: &[u8], value: &[u8]) -> bool {
        self.header(name)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    }

    fn connection_upgrade(&self) -> bool {
        self.header(b"connection").is_some_and(|v| {
            v.split(|&b| b == b',' || b == b' ')
                .any(|token| token.eq_ignore_ascii_case(b"upgrade"))
        })
    }
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}
