//! Wire codec of the gateway protocol (`PROTOCOL.md`, version 1) and its JSON
//! mapping.
//!
//! The module is sans-IO, like quinn-proto: it turns bytes into frames and
//! frames into bytes, and never touches a socket, a thread or a clock. Every
//! time it writes is a parameter.
//!
//! # Layout
//!
//! - `kind.rs`: frame kinds and error codes with their wire names.
//! - `header.rs`: the 48-byte header.
//! - `payload.rs`: layouts of the structured payloads the gateway sends.
//! - `frame.rs`: encoding frames; decoding them from a TCP stream or a
//!   WebSocket binary message.
//! - `validate.rs`: the validation order.
//! - `json.rs`: the JSON text form for WebSocket pages.
//!
//! # Receiving a frame
//!
//! 1. TCP: [`decode`] the front of the receive buffer. `Incomplete` means
//!    read more; `Reject` means answer ERROR and close. WebSocket:
//!    [`decode_message`] a binary message, or [`decode_json`] then
//!    [`check_header`] a text one.
//! 2. [`validate()`] the frame against the connection's registered address; an
//!    `Err` is the ERROR to answer, and [`ErrorCode::closes_connection`] says
//!    whether to close.
//! 3. Read the payload by kind ([`read_u64`], [`read_address`]).

mod frame;
mod header;
mod json;
mod kind;
mod payload;
mod validate;

pub use frame::{
    decode, decode_message, encode_error, encode_frame, encode_heartbeat, encode_presence,
    encode_state, encode_state_ack, encode_time_resp, encode_welcome, read_address, read_u64,
    Decoded, DEFAULT_MAX_PAYLOAD, ERROR_MESSAGE_BYTES_MAX,
};
pub use header::{Header, HEADER_LEN, VERSION};
pub use json::{decode_json, encode_json, error_json};
pub use kind::{ErrorCode, Kind, ADDRESS_LEN, STATE_ACK_LEN, TIME_REQ_LEN};
pub use payload::{ErrorPayload, Presence, State, TimeResp, Welcome};
pub use validate::{check_header, validate};
