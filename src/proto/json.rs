//! The JSON text form of frames for WebSocket pages (PROTOCOL.md "WebSocket").
//!
//! Decoding maps one text message to the header and payload the same frame
//! would have in binary, so everything after it (validation, routing,
//! forwarding to binary clients) is shared. Encoding does the reverse for
//! clients whose HELLO came as text.
//!
//! Choices where the protocol is silent:
//! - Known fields are kept untyped until `kind` is known, because it may come
//!   last; a field the kind does not use is ignored like an unknown one, even
//!   if its type is wrong. A kind a client may not send, or an unknown name,
//!   maps to an empty payload: validation rejects it before the payload
//!   matters, as it would the binary frame. `src`, `dst` and `id` stand for
//!   the header and are checked for every kind, so a malformed one is
//!   `bad_frame` even next to an unknown kind name.
//! - `null` means "absent" for every optional field, `id` included.
//! - A repeated known key is `bad_frame` (which of the values would count is
//!   ambiguous); repeated unknown keys are ignored like the keys themselves.
//! - UUIDs must be in the hyphenated `8-4-4-4-12` form, in any case; the
//!   simple, braced and URN forms the `uuid` crate also reads are refused.
//! - Output writes `payload` for every opaque payload, as `""` when it is
//!   empty, so a page can read the field unconditionally; HEARTBEAT, which has
//!   no payload, is written without one. A structured payload with the wrong
//!   size (never produced by the gateway) is written as an opaque payload
//!   rather than dropped. A kind byte without a name is written as a number.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use uuid::Uuid;

use super::frame::{bounded_message, read_address, read_u64};
use super::header::{Header, VERSION};
use super::kind::{ErrorCode, Kind, ADDRESS_LEN, STATE_ACK_LEN, TIME_REQ_LEN};
use super::payload::{ErrorPayload, Presence, State, TimeResp, Welcome};

/// The kind byte given to a JSON frame whose `kind` name is unknown. No
/// version 1 kind has code 0, so validation answers `not_registered` or
/// `unknown_kind` exactly as for an unknown binary kind.
const UNKNOWN_KIND: u8 = 0;

/// Room reserved for the fixed part of an encoded object (`kind`, two UUIDs,
/// `id` and punctuation), so a typical frame grows `out` at most once.
const JSON_ENVELOPE_BYTES: usize = 160;

/// Maps one JSON text message to the binary-equivalent header and payload.
///
/// The payload is written into `payload`, which is cleared first and meant to
/// be reused: nothing is allocated when it has the capacity and the JSON
/// strings have no escapes. The header has version 1, flags 0 and
/// `len = payload.len()`; the caller still runs
/// [`check_header`](super::check_header) for `too_large`, then
/// [`validate`](super::validate()). Base64 makes a text message about 4/3 of
/// its payload, which the WebSocket message limit has to allow for.
///
/// Every failure is `bad_frame` (`too_large` for a payload beyond `u32`).
/// `Err` carries the id to echo: the `id` field when the text is a JSON object
/// whose `id` is a valid unsigned integer, else 0.
pub fn decode_json(
    text: &str,
    registered: Option<Uuid>,
    payload: &mut Vec<u8>,
) -> Result<Header, (u64, ErrorCode)> {
    payload.clear();
    // Unparsable JSON, or JSON that is not an object, has no id to echo.
    let fields: Fields<'_> = serde_json::from_str(text).map_err(|_| (0, ErrorCode::BadFrame))?;
    let echo = match fields.id {
        Some(Value::Uint(id)) => id,
        _ => 0,
    };
    match fields.into_frame(registered, payload) {
        Ok(header) => Ok(header),
        Err(code) => {
            payload.clear();
            Err((echo, code))
        }
    }
}

/// A value of a known field, typed only once the kind says what it should be.
/// Strings borrow from the message unless they contain escapes.
enum Value<'a> {
    Null,
    Str(Cow<'a, str>),
    Uint(u64),
    /// Anything else: bool, float, negative number, array, object.
    Other,
}

/// The known fields of a message; `None` is "absent".
#[derive(Default)]
struct Fields<'a> {
    kind: Option<Value<'a>>,
    src: Option<Value<'a>>,
    dst: Option<Value<'a>>,
    id: Option<Value<'a>>,
    payload: Option<Value<'a>>,
    payload_b64: Option<Value<'a>>,
    t0: Option<Value<'a>>,
    address: Option<Value<'a>>,
    /// A known key appeared twice. Recorded rather than failed at once so the
    /// error can still echo the id.
    duplicate: bool,
}

impl Fields<'_> {
    fn into_frame(
        self,
        registered: Option<Uuid>,
        payload: &mut Vec<u8>,
    ) -> Result<Header, ErrorCode> {
        if self.duplicate {
            return Err(ErrorCode::BadFrame);
        }
        let kind = match self.kind {
            Some(Value::Str(name)) => Kind::from_name(&name),
            _ => return Err(ErrorCode::BadFrame),
        };
        let id = opt_u64(self.id)?.unwrap_or(0);
        let src = match (opt_uuid(self.src)?, kind) {
            (Some(src), _) => src,
            // HELLO is the frame that declares the address, so it cannot default.
            (None, Some(Kind::Hello)) => return Err(ErrorCode::BadFrame),
            (None, _) => registered.unwrap_or_else(Uuid::nil),
        };
        let dst = opt_uuid(self.dst)?.unwrap_or_else(Uuid::nil);

        match kind {
            Some(Kind::Hello | Kind::Heartbeat | Kind::Data | Kind::StatePut) => {
                opaque(self.payload, self.payload_b64, payload)?;
            }
            Some(Kind::TimeReq) => {
                let t0 = opt_u64(self.t0)?.ok_or(ErrorCode::BadFrame)?;
                payload.extend_from_slice(&t0.to_be_bytes());
            }
            Some(Kind::StateGet | Kind::Subscribe | Kind::Unsubscribe) => {
                let address = opt_uuid(self.address)?.ok_or(ErrorCode::BadFrame)?;
                payload.extend_from_slice(address.as_bytes());
            }
            Some(
                Kind::Welcome
                | Kind::TimeResp
                | Kind::StateAck
                | Kind::State
                | Kind::Presence
                | Kind::Error,
            )
            | None => {}
        }

        let len = u32::try_from(payload.len()).map_err(|_| ErrorCode::TooLarge)?;
        Ok(Header {
            version: VERSION,
            kind: kind.map_or(UNKNOWN_KIND, |kind| kind as u8),
            flags: 0,
            len,
            src,
            dst,
            id,
        })
    }
}

/// An optional unsigned integer field.
fn opt_u64(value: Option<Value<'_>>) -> Result<Option<u64>, ErrorCode> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Uint(v)) => Ok(Some(v)),
        Some(_) => Err(ErrorCode::BadFrame),
    }
}

/// An optional string field.
fn opt_str(value: Option<Value<'_>>) -> Result<Option<Cow<'_, str>>, ErrorCode> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(_) => Err(ErrorCode::BadFrame),
    }
}

/// An optional UUID field, hyphenated form only.
fn opt_uuid(value: Option<Value<'_>>) -> Result<Option<Uuid>, ErrorCode> {
    let Some(s) = opt_str(value)? else {
        return Ok(None);
    };
    if s.len() != uuid::fmt::Hyphenated::LENGTH {
        return Err(ErrorCode::BadFrame);
    }
    Uuid::parse_str(&s)
        .map(Some)
        .map_err(|_| ErrorCode::BadFrame)
}

/// An opaque payload from `payload` (its UTF-8 bytes) or `payload_b64`.
fn opaque(
    text: Option<Value<'_>>,
    b64: Option<Value<'_>>,
    payload: &mut Vec<u8>,
) -> Result<(), ErrorCode> {
    match (opt_str(text)?, opt_str(b64)?) {
        (Some(_), Some(_)) => Err(ErrorCode::BadFrame),
        (Some(text), None) => {
            payload.extend_from_slice(text.as_bytes());
            Ok(())
        }
        (None, Some(b64)) => STANDARD
            .decode_vec(b64.as_bytes(), payload)
            .map_err(|_| ErrorCode::BadFrame),
        (None, None) => Ok(()),
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Kind => &mut fields.kind,
                Key::Src => &mut fields.src,
                Key::Dst => &mut fields.dst,
                Key::Id => &mut fields.id,
                Key::Payload => &mut fields.payload,
                Key::PayloadB64 => &mut fields.payload_b64,
                Key::T0 => &mut fields.t0,
                Key::Address => &mut fields.address,
                // Unknown fields are for later versions: skip them unread.
                Key::Unknown => {
                    map.next_value::<Skip>()?;
                    continue;
                }
            };
            if slot.is_some() {
                fields.duplicate = true;
                map.next_value::<Skip>()?;
            } else {
                *slot = Some(map.next_value()?);
            }
        }
        Ok(fields)
    }
}

/// An object key; only which field it names is kept, never its text.
enum Key {
    Kind,
    Src,
    Dst,
    Id,
    Payload,
    PayloadB64,
    T0,
    Address,
    Unknown,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(match name {
            "kind" => Key::Kind,
            "src" => Key::Src,
            "dst" => Key::Dst,
            "id" => Key::Id,
            "payload" => Key::Payload,
            "payload_b64" => Key::PayloadB64,
            "t0" => Key::T0,
            "address" => Key::Address,
            _ => Key::Unknown,
        })
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value<'de>, E> {
        Ok(Value::Other)
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Uint(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(u64::try_from(v).map_or(Value::Other, Value::Uint))
    }

    /// Floats are never integers here, even `7.0`: the protocol's numbers
    /// are integers, and a page writing `7.0` has a bug worth reporting.
    fn visit_f64<E>(self, _: f64) -> Result<Value<'de>, E> {
        Ok(Value::Other)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }

    /// Only strings with escapes get here; they must be unescaped into a copy.
    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Value::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Value::Other)
    }
}

/// Any JSON value, read and dropped. serde's `IgnoredAny` would do, but
/// serde_json skips nested arrays and objects with a stack on the heap, and
/// recursion here (depth-bounded by serde_json) keeps the decoder
/// allocation-free for messages carrying structured unknown fields.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// Appends the JSON text of a binary frame to `out`, for a client whose HELLO
/// came as text. Nothing is allocated beyond `out` growing, which matters on
/// the DATA path.
///
/// The object always has `kind`, `src`, `dst` and `id`, then the kind's named
/// fields. Opaque payloads come as `payload` when they are UTF-8 and as
/// `payload_b64` otherwise.
pub fn encode_json(header: &Header, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(JSON_ENVELOPE_BYTES + payload.len());
    open_object(out, header.kind, header.src, header.dst, header.id);
    if structured_fields(header.kind(), payload, out).is_none() {
        opaque_field(out, payload);
    }
    out.push(b'}');
}

/// Appends the JSON text of an ERROR from the gateway, the same text
/// `encode_json` gives for the frame [`encode_error`](super::encode_error)
/// builds, without building it.
pub fn error_json(out: &mut Vec<u8>, dst: Uuid, id: u64, code: ErrorCode, message: &str) {
    let message = bounded_message(message);
    out.reserve(JSON_ENVELOPE_BYTES + message.len());
    open_object(out, Kind::Error as u8, Uuid::nil(), dst, id);
    error_fields(out, ErrorPayload { code, message });
    out.push(b'}');
}

fn open_object(out: &mut Vec<u8>, kind: u8, src: Uuid, dst: Uuid, id: u64) {
    out.extend_from_slice(b"{\"kind\":");
    match Kind::from_u8(kind) {
        Some(kind) => push_str(out, kind.name()),
        None => push_u64(out, kind.into()),
    }
    uuid_field(out, "src", src);
    uuid_field(out, "dst", dst);
    u64_field(out, "id", id);
}

/// Writes the named fields of a kind with a structured payload. `None` when
/// the payload is opaque, or does not have the kind's layout, and nothing has
/// been written: every payload is parsed before the first field is written.
fn structured_fields(kind: Option<Kind>, payload: &[u8], out: &mut Vec<u8>) -> Option<()> {
    match kind? {
        Kind::Welcome => {
            let w = Welcome::parse(payload)?;
            u64_field(out, "server_time_us", w.server_time_us);
            u64_field(out, "heartbeat_timeout_ms", w.heartbeat_timeout_ms.into());
            u64_field(out, "max_payload", w.max_payload.into());
        }
        Kind::Heartbeat if payload.is_empty() => {}
        Kind::TimeReq if payload.len() == TIME_REQ_LEN => u64_field(out, "t0", read_u64(payload)),
        Kind::TimeResp => {
            let t = TimeResp::parse(payload)?;
            u64_field(out, "t0", t.t0);
            u64_field(out, "t1", t.t1);
            u64_field(out, "t2", t.t2);
        }
        Kind::StateAck if payload.len() == STATE_ACK_LEN => {
            u64_field(out, "updated_at_us", read_u64(payload));
        }
        Kind::StateGet | Kind::Subscribe | Kind::Unsubscribe if payload.len() == ADDRESS_LEN => {
            uuid_field(out, "address", read_address(payload));
        }
        Kind::State => {
            let s = State::parse(payload)?;
            uuid_field(out, "address", s.address);
            u64_field(out, "updated_at_us", s.updated_at_us);
            bool_field(out, "online", s.online);
            opaque_field(out, s.blob);
        }
        Kind::Presence => {
            let p = Presence::parse(payload)?;
            uuid_field(out, "address", p.address);
            bool_field(out, "online", p.online);
            u64_field(out, "at_us", p.at_us);
        }
        Kind::Error => error_fields(out, ErrorPayload::parse(payload)?),
        _ => return None,
    }
    Some(())
}

fn error_fields(out: &mut Vec<u8>, error: ErrorPayload<'_>) {
    u64_field(out, "code", (error.code as u16).into());
    key(out, "error");
    push_str(out, error.code.name());
    key(out, "message");
    push_str(out, error.message);
}

/// `payload` with the bytes as a string when they are UTF-8, else
/// `payload_b64`.
fn opaque_field(out: &mut Vec<u8>, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => {
            key(out, "payload");
            push_str(out, text);
        }
        Err(_) => {
            key(out, "payload_b64");
            push_base64(out, payload);
        }
    }
}

/// `,"name":` — every field but `kind` follows another one.
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn u64_field(out: &mut Vec<u8>, name: &str, value: u64) {
    key(out, name);
    push_u64(out, value);
}

fn bool_field(out: &mut Vec<u8>, name: &str, value: bool) {
    key(out, name);
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn uuid_field(out: &mut Vec<u8>, name: &str, value: Uuid) {
    key(out, name);
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(value.hyphenated().encode_lower(&mut text).as_bytes());
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A JSON string; serde_json does the escaping so it is right for every
/// control character and writes straight into `out`.
fn push_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing a str into a Vec cannot fail");
}

/// A JSON string of standard padded base64, which never needs escaping.
fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let encoded_len =
        base64::encoded_len(bytes.len(), true).expect("payloads are far below usize::MAX / 2");
    let start = out.len();
    // Fill with quotes, then encode between the first and the last.
    out.resize(start + encoded_len + 2, b'"');
    STANDARD
        .encode_slice(bytes, &mut out[start + 1..start + 1 + encoded_len])
        .expect("the slice has the encoded length");
}

#[cfg(test)]
mod tests {
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
            format!(
                r#"{{"kind":"data","src":"{ME_TEXT}","dst":"{PEER_TEXT}","id":3,"payload":"hi"}}"#
            ),
            format!(
                r#"{{"kind":"data","src":"{ME_TEXT}","dst":"{PEER_TEXT}","id":4,"payload_b64":"gA=="}}"#
            ),
            format!(
                r#"{{"kind":"time_req","src":"{ME_TEXT}","dst":"{NIL_TEXT}","id":5,"t0":123}}"#
            ),
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
            format!(
                r#"{{"kind":"data","src":"{ME_TEXT}","dst":"{PEER_TEXT}","id":19,"payload":""}}"#
            )
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
}
