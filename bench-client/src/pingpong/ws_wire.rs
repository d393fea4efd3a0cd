//! `pingpong --ws` ([`Wire::Ws`]) and `--ws --json` ([`Wire::WsJson`]): the
//! gateway protocol inside WebSocket messages (PROTOCOL.md section 8).
//!
//! Binary: each protocol frame is one binary message. JSON: each frame is one
//! text message with named fields; the connection enters JSON mode with a
//! text HELLO, after which the gateway answers in text only. DATA payloads
//! (send time, id, fill: arbitrary bytes) are sent as `payload_b64`; the
//! gateway delivers bytes that are not valid UTF-8 as `payload_b64` and the
//! rest as `payload`, so both are read.
//!
//! Incoming messages are gathered into a reused buffer (the WebSocket decoder
//! of `ws.rs` hands out pieces), JSON is parsed into a struct that borrows
//! from it, and base64 is decoded into another reused buffer. Outgoing JSON is
//! written into a reused buffer and then masked into the side's output. The
//! only per-message allocation left is for a `payload` string with escapes,
//! which only payloads of 16 bytes or less can produce (longer ones carry the
//! 0xA5 fill, which is not UTF-8, so they arrive in base64).
//!
//! Every JSON frame is turned into its binary equivalent (header + payload,
//! WELCOME and ERROR payloads included), so the pair logic is the same as on
//! TCP.
//!
//! [`Wire::Ws`]: super::Wire::Ws
//! [`Wire::WsJson`]: super::Wire::WsJson

use std::borrow::Cow;
use std::io::Write;

use base64::Engine;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde::Deserialize;

use super::setup::SetupError;
use super::{PairState, Role, Side};
use crate::conn::{io_reason, ConnError, WsMask};
use crate::proto::{self, kind, Addr, Header, Welcome, HEADER_LEN};
use crate::ws::{self, opcode, WsDecoder, WsEvent};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Largest number of bytes a JSON DATA message adds around its payload's
/// base64: `{"kind":"data","src":"<36>","dst":"<36>","id":<20 digits>,
/// "payload_b64":""}` is 148, plus room for fields the gateway may add.
pub(crate) const JSON_OVERHEAD_MAX: usize = 256;

/// JSON `kind` names and their binary codes (PROTOCOL.md sections 4 and 8).
const KINDS: [(&str, u8); 14] = [
    ("hello", kind::HELLO),
    ("welcome", kind::WELCOME),
    ("heartbeat", kind::HEARTBEAT),
    ("data", kind::DATA),
    ("time_req", 0x20),
    ("time_resp", 0x21),
    ("state_put", kind::STATE_PUT),
    ("state_ack", kind::STATE_ACK),
    ("state_get", 0x32),
    ("state", 0x33),
    ("subscribe", 0x40),
    ("unsubscribe", 0x41),
    ("presence", 0x42),
    ("error", kind::ERROR),
];

/// The JSON name of a kind ("unknown" for a code not in the table).
pub(crate) fn kind_name(code: u8) -> &'static str {
    KINDS
        .iter()
        .find_map(|&(name, c)| (c == code).then_some(name))
        .unwrap_or("unknown")
}

/// Appends one JSON frame to `out`: `kind`, `src`, `dst` (when given), `id`,
/// and the payload as `payload_b64` (left out when empty: "neither means
/// empty"). No allocation once `out` has the capacity.
pub(crate) fn encode_json(
    out: &mut Vec<u8>,
    kind: u8,
    src: &Addr,
    dst: Option<&Addr>,
    id: u64,
    payload: &[u8],
) {
    let uuid = |a: &Addr| uuid::Uuid::from_bytes_ref(a).hyphenated();
    let name = kind_name(kind);
    write!(out, r#"{{"kind":"{name}","src":"{}""#, uuid(src)).expect("Vec write");
    if let Some(dst) = dst {
        write!(out, r#","dst":"{}""#, uuid(dst)).expect("Vec write");
    }
    write!(out, r#","id":{id}"#).expect("Vec write");
    if !payload.is_empty() {
        out.extend_from_slice(br#","payload_b64":""#);
        let at = out.len();
        let len = base64::encoded_len(payload.len(), true).expect("payload fits in memory");
        out.resize(at + len, 0);
        B64.encode_slice(payload, &mut out[at..])
            .expect("sized by encoded_len");
        out.push(b'"');
    }
    out.push(b'}');
}

/// The fields of a gateway JSON frame that pingpong reads; others are
/// ignored. Strings borrow from the message unless they hold escapes.
#[derive(Deserialize)]
struct JsonFrame<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    src: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dst: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload_b64: Option<Cow<'a, str>>,
    server_time_us: Option<u64>,
    heartbeat_timeout_ms: Option<u32>,
    max_payload: Option<u32>,
    code: Option<u16>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

fn json_addr(field: Option<&Cow<'_, str>>) -> Result<Addr, &'static str> {
    match field {
        None => Ok(proto::NIL),
        Some(s) => uuid::Uuid::try_parse(s)
            .map(|u| u.into_bytes())
            .map_err(|_| "json_bad_uuid"),
    }
}

/// One gateway JSON frame as its binary equivalent: the header and the
/// payload bytes (for WELCOME and ERROR the binary payload layout). The
/// payload is in `text` or, when it had to be decoded, in `scratch`.
pub(crate) fn decode_json<'a>(
    text: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<(Header, &'a [u8]), &'static str> {
    let f: JsonFrame<'a> = serde_json::from_slice(text).map_err(|_| "json_invalid")?;
    let code = KINDS
        .iter()
        .find_map(|&(name, c)| (name == f.kind).then_some(c))
        .unwrap_or(0);
    let (src, dst) = (json_addr(f.src.as_ref())?, json_addr(f.dst.as_ref())?);
    scratch.clear();
    let payload: &'a [u8] = match (code, f.payload, f.payload_b64) {
        (kind::WELCOME, ..) => {
            let (Some(t), Some(hb), Some(max)) =
                (f.server_time_us, f.heartbeat_timeout_ms, f.max_payload)
            else {
                return Err("json_bad_welcome");
            };
            scratch.extend_from_slice(&t.to_be_bytes());
            scratch.extend_from_slice(&hb.to_be_bytes());
            scratch.extend_from_slice(&max.to_be_bytes());
            scratch
        }
        (kind::ERROR, ..) => {
            scratch.extend_from_slice(&f.code.ok_or("json_bad_error")?.to_be_bytes());
            scratch.extend_from_slice(f.message.as_deref().unwrap_or("").as_bytes());
            scratch
        }
        (_, Some(_), Some(_)) => return Err("json_payload_and_payload_b64"),
        (_, None, Some(b64)) => {
            B64.decode_vec(b64.as_bytes(), scratch)
                .map_err(|_| "json_bad_base64")?;
            scratch
        }
        (_, Some(Cow::Borrowed(s)), None) => s.as_bytes(),
        (_, Some(Cow::Owned(s)), None) => {
            scratch.extend_from_slice(s.as_bytes());
            scratch
        }
        (_, None, None) => &[],
    };
    let id = f.id.unwrap_or(0);
    Ok((Header::new(code, src, dst, id, payload.len()), payload))
}

/// A whole binary message as one protocol frame.
fn binary_frame(msg: &[u8]) -> Result<(Header, &[u8]), &'static str> {
    match Header::decode(msg) {
        Ok(Some(h)) if h.frame_len() == msg.len() => Ok((h, &msg[HEADER_LEN..])),
        Ok(_) => Err("ws_message_not_one_frame"),
        Err(e) => Err(e.name()),
    }
}

/// Appends one frame as a masked WebSocket message to `tx`: binary, or JSON
/// text built in `out` first.
fn push_frame(
    tx: &mut Vec<u8>,
    out: &mut Vec<u8>,
    mask: &mut WsMask,
    json: bool,
    h: &Header,
    payload: &[u8],
) {
    if json {
        out.clear();
        encode_json(out, h.kind, &h.src, Some(&h.dst), h.id, payload);
        ws::push_client_frame(tx, opcode::TEXT, &[out], mask.next_mask());
    } else {
        let head = h.encode();
        ws::push_client_frame(tx, opcode::BINARY, &[&head, payload], mask.next_mask());
    }
}

/// What [`WsLink::push`] completed.
enum Msg {
    Binary,
    Text,
    Ping,
}

/// One connection's WebSocket state inside a pair driver.
pub(crate) struct WsLink {
    decoder: WsDecoder,
    mask: WsMask,
    json: bool,
    /// The data message being gathered.
    msg: Vec<u8>,
    /// `msg` is whole and was handed out; cleared at the next push.
    msg_done: bool,
    /// A decoded JSON payload, or the payload of a DATA being sent.
    payload: Vec<u8>,
    /// A JSON message before it is masked into the output.
    out: Vec<u8>,
}

impl WsLink {
    pub(crate) fn new(mask: WsMask, json: bool) -> WsLink {
        WsLink {
            decoder: WsDecoder::default(),
            mask,
            json,
            msg: Vec::new(),
            msg_done: false,
            payload: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Consumes bytes until a data message is whole or a ping arrived.
    /// Returns the bytes used; fewer than `input` only with an event.
    fn push(&mut self, input: &[u8]) -> (usize, Result<Option<Msg>, &'static str>) {
        if self.msg_done {
            self.msg.clear();
            self.msg_done = false;
        }
        let (used, ev) = self.decoder.push(input);
        let (data, end, msg) = match ev {
            None | Some(Ok(WsEvent::Pong)) => return (used, Ok(None)),
            Some(Err(e)) => return (used, Err(e.name())),
            Some(Ok(WsEvent::Close(_))) => return (used, Err("ws_closed_by_gateway")),
            Some(Ok(WsEvent::Ping)) => return (used, Ok(Some(Msg::Ping))),
            Some(Ok(WsEvent::Binary { data, end })) => (data, end, Msg::Binary),
            Some(Ok(WsEvent::Text { data, end })) => (data, end, Msg::Text),
        };
        self.msg.extend_from_slice(data);
        self.msg_done = end;
        (used, Ok(end.then_some(msg)))
    }

    fn push_pong(&mut self, tx: &mut Vec<u8>) {
        let mask = self.mask.next_mask();
        ws::push_client_frame(tx, opcode::PONG, &[self.decoder.ping_payload()], mask);
    }

    /// Appends a DATA frame whose payload `fill` writes.
    pub(super) fn send_data(
        &mut self,
        tx: &mut Vec<u8>,
        h: &Header,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        self.payload.clear();
        fill(&mut self.payload);
        push_frame(
            tx,
            &mut self.out,
            &mut self.mask,
            self.json,
            h,
            &self.payload,
        );
    }

    /// A close frame (1000, normal) in `buf`; returns its length.
    pub(super) fn close_frame(&mut self, buf: &mut [u8; 8]) -> usize {
        let mask = self.mask.next_mask();
        ws::write_client_frame(buf, opcode::CLOSE, &1000u16.to_be_bytes(), mask)
    }

    /// After a text HELLO: waits for the JSON WELCOME (or the ERROR refusing
    /// it), starting with `early`, bytes already read. Returns the bytes read
    /// past it. Setup only; bounded by the caller's setup timeout.
    pub(super) async fn json_welcome(
        &mut self,
        stream: &mut TcpStream,
        early: Vec<u8>,
    ) -> Result<Vec<u8>, SetupError> {
        let (mut buf, mut head) = (early, 0);
        let mut chunk = [0u8; 2048];
        // Every pass consumes buffered bytes, reads new ones or returns.
        loop {
            while head < buf.len() {
                let (used, msg) = self.push(&buf[head..]);
                head += used;
                match msg.map_err(SetupError::Ws)? {
                    None => {}
                    Some(Msg::Ping) => {
                        let mut pong = Vec::new();
                        self.push_pong(&mut pong);
                        stream.write_all(&pong).await.map_err(io_setup_err)?;
                    }
                    Some(Msg::Binary) => return Err(SetupError::Ws("ws_binary_in_json_mode")),
                    Some(Msg::Text) => {
                        let (h, payload) =
                            decode_json(&self.msg, &mut self.payload).map_err(SetupError::Ws)?;
                        return match h.kind {
                            kind::WELCOME if Welcome::decode(payload).is_some() => {
                                Ok(buf[head..].to_vec())
                            }
                            kind::WELCOME => Err(ConnError::BadWelcome.into()),
                            kind::ERROR => {
                                let code = proto::decode_error(payload).map_or(0, |(c, _)| c);
                                Err(ConnError::Refused(code).into())
                            }
                            other => Err(ConnError::Unexpected(other).into()),
                        };
                    }
                }
            }
            let n = stream.read(&mut chunk).await.map_err(io_setup_err)?;
            if n == 0 {
                return Err(ConnError::Eof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn io_setup_err(e: std::io::Error) -> SetupError {
    SetupError::Conn(ConnError::Io(io_reason(&e)))
}

/// Gateway frames inside WebSocket messages for `pair`; returns the DATA
/// frames delivered. b's echoes go back in the form they came in.
pub(super) fn process(
    pair: &mut PairState,
    side: &mut Side,
    peer: Addr,
    role: Role,
    now_ns: u64,
) -> Result<u64, &'static str> {
    let Side {
        ws,
        rx,
        rx_head,
        rx_tail,
        tx,
        addr,
        ..
    } = side;
    let link = ws.as_mut().expect("a WebSocket wire's sides have a link");
    let mut delivered = 0;
    // Every pass consumes bytes or completes a message.
    while *rx_head < *rx_tail {
        let (used, msg) = link.push(&rx[*rx_head..*rx_tail]);
        *rx_head += used;
        let (h, payload) = match msg? {
            None if used == 0 => break,
            None => continue,
            Some(Msg::Ping) => {
                link.push_pong(tx);
                continue;
            }
            Some(Msg::Binary) if !link.json => binary_frame(&link.msg)?,
            Some(Msg::Text) if link.json => decode_json(&link.msg, &mut link.payload)?,
            Some(Msg::Binary) => return Err("ws_binary_in_json_mode"),
            Some(Msg::Text) => return Err("ws_text_message"),
        };
        let data = pair.on_frame(&h, payload, *addr, peer, role, now_ns)?;
        if data && role == Role::B {
            let echo = Header::new(kind::DATA, *addr, peer, h.id, payload.len());
            push_frame(tx, &mut link.out, &mut link.mask, link.json, &echo, payload);
        }
        delivered += u64::from(data);
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses and frames from PROTOCOL.md section 8.
    const A: &str = "6fa76274-4205-419a-990f-dc6cbcef8305";
    const B: &str = "52400404-10b1-4012-aab8-68ebf36ce014";
    const PAGE: &str = "0b5e1a3c-7d1f-4c6e-9a55-2f0c8e7b9d11";
    const DOC_DATA: &str = r#"{"kind":"data","src":"6fa76274-4205-419a-990f-dc6cbcef8305","dst":"52400404-10b1-4012-aab8-68ebf36ce014","id":7,"payload":"any text"}"#;
    const DOC_HELLO: &str =
        r#"{"kind":"hello","src":"0b5e1a3c-7d1f-4c6e-9a55-2f0c8e7b9d11","id":1}"#;
    const DOC_WELCOME: &str = r#"{"kind":"welcome","src":"00000000-0000-0000-0000-000000000000","dst":"0b5e1a3c-7d1f-4c6e-9a55-2f0c8e7b9d11","id":1,"server_time_us":1795691830378451,"heartbeat_timeout_ms":90000,"max_payload":1048576}"#;

    fn addr(s: &str) -> Addr {
        uuid::Uuid::parse_str(s).unwrap().into_bytes()
    }

    fn encoded(kind: u8, src: &str, dst: Option<&str>, id: u64, payload: &[u8]) -> String {
        let mut out = Vec::new();
        encode_json(
            &mut out,
            kind,
            &addr(src),
            dst.map(addr).as_ref(),
            id,
            payload,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_the_documented_hello() {
        assert_eq!(encoded(kind::HELLO, PAGE, None, 1, b""), DOC_HELLO);
    }

    #[test]
    fn encodes_data_like_the_documented_example_with_payload_b64() {
        // The document's DATA with its payload bytes in base64 ("any text").
        let expected = r#"{"kind":"data","src":"6fa76274-4205-419a-990f-dc6cbcef8305","dst":"52400404-10b1-4012-aab8-68ebf36ce014","id":7,"payload_b64":"YW55IHRleHQ="}"#;
        assert_eq!(encoded(kind::DATA, A, Some(B), 7, b"any text"), expected);
        // Arbitrary bytes, padding of both lengths.
        let bin = encoded(kind::DATA, A, Some(B), 8, &[0xA5, 0x00, 0xFF, 0x10]);
        assert!(
            bin.ends_with(r#","id":8,"payload_b64":"pQD/EA=="}"#),
            "{bin}"
        );
    }

    #[test]
    fn encoding_reuses_the_buffer() {
        let mut out = Vec::with_capacity(512);
        let cap = out.capacity();
        for id in 0..100 {
            out.clear();
            encode_json(
                &mut out,
                kind::DATA,
                &addr(A),
                Some(&addr(B)),
                id,
                &[0xA5; 64],
            );
        }
        assert_eq!(out.capacity(), cap);
    }

    #[test]
    fn decodes_the_documented_data() {
        let mut scratch = Vec::new();
        let (h, payload) = decode_json(DOC_DATA.as_bytes(), &mut scratch).unwrap();
        assert_eq!(h, Header::new(kind::DATA, addr(A), addr(B), 7, 8));
        assert_eq!(payload, b"any text");
    }

    #[test]
    fn decodes_payload_b64_escapes_and_defaults() {
        let mut scratch = Vec::new();
        let text =
            format!(r#"{{"kind":"data","src":"{A}","dst":"{B}","id":9,"payload_b64":"pQD/EA=="}}"#);
        let (h, payload) = decode_json(text.as_bytes(), &mut scratch).unwrap();
        assert_eq!(
            (h.id, h.len, payload),
            (9, 4, &[0xA5, 0x00, 0xFF, 0x10][..])
        );
        let text =
            format!(r#"{{"kind":"data","src":"{A}","dst":"{B}","id":3,"payload":"a\u0000\"b"}}"#);
        let (_, payload) = decode_json(text.as_bytes(), &mut scratch).unwrap();
        assert_eq!(payload, b"a\0\"b");
        // dst and id left out, null payload: nil, 0, empty.
        let text = format!(r#"{{"kind":"heartbeat","src":"{A}","payload":null}}"#);
        let (h, payload) = decode_json(text.as_bytes(), &mut scratch).unwrap();
        assert_eq!(h, Header::new(kind::HEARTBEAT, addr(A), proto::NIL, 0, 0));
        assert!(payload.is_empty());
    }

    #[test]
    fn decodes_the_documented_welcome_and_an_error() {
        let mut scratch = Vec::new();
        let (h, payload) = decode_json(DOC_WELCOME.as_bytes(), &mut scratch).unwrap();
        assert_eq!((h.kind, h.dst, h.id), (kind::WELCOME, addr(PAGE), 1));
        let w = Welcome::decode(payload).unwrap();
        assert_eq!(w.server_time_us, 1795691830378451);
        assert_eq!((w.heartbeat_timeout_ms, w.max_payload), (90000, 1048576));
        let text = format!(
            r#"{{"kind":"error","src":"00000000-0000-0000-0000-000000000000","dst":"{A}","id":5,"code":4,"error":"dst_offline","message":"no such address"}}"#
        );
        let (h, payload) = decode_json(text.as_bytes(), &mut scratch).unwrap();
        assert_eq!((h.kind, h.id), (kind::ERROR, 5));
        assert_eq!(
            proto::decode_error(payload),
            Some((4, &b"no such address"[..]))
        );
    }

    #[test]
    fn refuses_broken_json_frames() {
        let mut scratch = Vec::new();
        let both = format!(r#"{{"kind":"data","src":"{A}","payload":"x","payload_b64":"eA=="}}"#);
        for (text, reason) in [
            ("{", "json_invalid"),
            (r#"{"kind":"data","src":"nope"}"#, "json_bad_uuid"),
            (r#"{"kind":"data","payload_b64":"!!"}"#, "json_bad_base64"),
            (both.as_str(), "json_payload_and_payload_b64"),
            (r#"{"kind":"welcome","id":1}"#, "json_bad_welcome"),
        ] {
            assert_eq!(
                decode_json(text.as_bytes(), &mut scratch).unwrap_err(),
                reason,
                "{text}"
            );
        }
    }

    #[test]
    fn link_gathers_fragmented_messages_and_answers_pings() {
        let mut link = WsLink::new(WsMask::new(), true);
        // Text message in two fragments with a ping between them.
        let mut bytes = vec![0x01, 3];
        bytes.extend_from_slice(b"{\"k");
        bytes.extend_from_slice(&[0x89, 1, b'p', 0x80, 2]);
        bytes.extend_from_slice(b"\"}");
        let (mut at, mut seen) = (0, Vec::new());
        while at < bytes.len() {
            let (used, msg) = link.push(&bytes[at..]);
            at += used;
            match msg.unwrap() {
                Some(Msg::Text) => seen.push(String::from_utf8(link.msg.clone()).unwrap()),
                Some(Msg::Ping) => {
                    let mut tx = Vec::new();
                    link.push_pong(&mut tx);
                    assert_eq!(tx[..2], [0x8A, 0x81]);
                    assert_eq!(tx[6] ^ tx[2], b'p');
                    seen.push("ping".into());
                }
                Some(Msg::Binary) => panic!("binary"),
                None => {}
            }
        }
        assert_eq!(seen, ["ping", "{\"k\"}"]);
    }
}
