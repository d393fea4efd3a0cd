//! JSON frame helpers and standard base64 (RFC 4648 section 4, padded).

use serde_json::Value;
use uuid::Uuid;

use super::frame::{self, NIL};

const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(B64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64; panics on anything else, since the
/// protocol names that exact form.
pub fn b64_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    assert!(
        bytes.len().is_multiple_of(4),
        "base64 {text:?} is not padded to a multiple of 4"
    );
    let value = |c: u8| -> u32 {
        let index = B64_ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("{:?} is not in the standard base64 alphabet", c as char));
        index as u32
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, quad) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        assert!(
            pad <= 2 && (pad == 0 || last),
            "bad base64 padding in {text:?}"
        );
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c);
        }
        n <<= 6 * pad as u32;
        let group = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    out
}

/// A UUID as the gateway must print it: lowercase, hyphenated.
pub fn uuid_str(addr: Uuid) -> String {
    addr.hyphenated().to_string()
}

/// A field that must be an unsigned integer.
pub fn get_u64(value: &Value, key: &str) -> u64 {
    value
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {key:?} is not an unsigned number in {value}"))
}

/// A field that must be a string.
pub fn get_str<'a>(value: &'a Value, key: &str) -> &'a str {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("field {key:?} is not a string in {value}"))
}

/// A field that must be a lowercase hyphenated UUID string.
pub fn get_uuid(value: &Value, key: &str) -> Uuid {
    let text = get_str(value, key);
    let addr = Uuid::parse_str(text)
        .unwrap_or_else(|e| panic!("field {key:?} = {text:?} is not a UUID ({e}) in {value}"));
    assert_eq!(
        text,
        uuid_str(addr),
        "field {key:?} must be a lowercase hyphenated UUID in {value}"
    );
    addr
}

/// A field that must be a JSON boolean.
pub fn get_bool(value: &Value, key: &str) -> bool {
    value
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("field {key:?} is not a JSON boolean in {value}"))
}

/// Checks what every JSON frame from the gateway carries: `kind`, `src`,
/// `dst` and `id`, with `src` nil except on forwarded data and `dst` the
/// connection's address except on welcome.
pub fn check_gateway_json(value: &Value, registered: Uuid) {
    assert!(value.is_object(), "JSON frame is not an object: {value}");
    let kind = get_str(value, "kind");
    let src = get_uuid(value, "src");
    let dst = get_uuid(value, "dst");
    get_u64(value, "id");
    if kind != "data" {
        assert_eq!(src, NIL, "src of gateway JSON frame {value}");
    }
    if kind != "welcome" {
        assert_eq!(dst, registered, "dst of JSON frame {value}");
    }
}

/// Asserts a JSON error frame: `code`, its name in `error`, a string
/// `message`, and `id`.
pub fn assert_json_error(value: &Value, code: u16, id: u64) {
    assert_eq!(
        get_str(value, "kind"),
        "error",
        "expected error {code}, got {value}"
    );
    assert_eq!(
        get_u64(value, "code"),
        u64::from(code),
        "error code in {value}, expected {}",
        frame::error_name(code)
    );
    assert_eq!(
        get_str(value, "error"),
        frame::error_name(code),
        "error name in {value}"
    );
    get_str(value, "message");
    assert_eq!(get_u64(value, "id"), id, "id of error in {value}");
}
