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
#[path = "json_tests.rs"]
mod tests;
