//! Frame kinds and error codes, with the lowercase names the JSON form and
//! the logs use.

use thiserror::Error;

use super::payload::{Presence, TimeResp, Welcome};

/// The `kind` byte of a frame (PROTOCOL.md "Kinds").
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Hello = 0x01,
    Welcome = 0x02,
    Heartbeat = 0x03,
    Data = 0x10,
    TimeReq = 0x20,
    TimeResp = 0x21,
    StatePut = 0x30,
    StateAck = 0x31,
    StateGet = 0x32,
    State = 0x33,
    Subscribe = 0x40,
    Unsubscribe = 0x41,
    Presence = 0x42,
    Error = 0x7F,
}

/// Size of a payload that is one 16-byte address (STATE_GET, SUBSCRIBE,
/// UNSUBSCRIBE).
pub const ADDRESS_LEN: usize = 16;

/// Size of the TIME_REQ payload, `t0 u64`.
pub const TIME_REQ_LEN: usize = 8;

/// Size of the STATE_ACK payload, `updated_at_us u64`.
pub const STATE_ACK_LEN: usize = 8;

impl Kind {
    /// Every kind, in the order of the protocol table.
    pub const ALL: [Kind; 14] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Heartbeat,
        Kind::Data,
        Kind::TimeReq,
        Kind::TimeResp,
        Kind::StatePut,
        Kind::StateAck,
        Kind::StateGet,
        Kind::State,
        Kind::Subscribe,
        Kind::Unsubscribe,
        Kind::Presence,
        Kind::Error,
    ];

    /// The kind with wire code `v`, or `None` for a code the protocol does not
    /// define (such a frame is still parsed; validation answers `unknown_kind`).
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0x01 => Kind::Hello,
            0x02 => Kind::Welcome,
            0x03 => Kind::Heartbeat,
            0x10 => Kind::Data,
            0x20 => Kind::TimeReq,
            0x21 => Kind::TimeResp,
            0x30 => Kind::StatePut,
            0x31 => Kind::StateAck,
            0x32 => Kind::StateGet,
            0x33 => Kind::State,
            0x40 => Kind::Subscribe,
            0x41 => Kind::Unsubscribe,
            0x42 => Kind::Presence,
            0x7F => Kind::Error,
            _ => return None,
        })
    }

    /// The lowercase name used as `kind` in the JSON form.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Welcome => "welcome",
            Kind::Heartbeat => "heartbeat",
            Kind::Data => "data",
            Kind::TimeReq => "time_req",
            Kind::TimeResp => "time_resp",
            Kind::StatePut => "state_put",
            Kind::StateAck => "state_ack",
            Kind::StateGet => "state_get",
            Kind::State => "state",
            Kind::Subscribe => "subscribe",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Presence => "presence",
            Kind::Error => "error",
        }
    }

    /// The kind whose JSON name is exactly `s`. Names are case-sensitive
    /// because the protocol defines only the lowercase spelling.
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == s)
    }

    /// Whether a client may send this kind (validation step 4); every other
    /// kind from a client is answered `unknown_kind`.
    pub fn client_may_send(self) -> bool {
        matches!(
            self,
            Kind::Hello
                | Kind::Heartbeat
                | Kind::Data
                | Kind::TimeReq
                | Kind::StatePut
                | Kind::StateGet
                | Kind::Subscribe
                | Kind::Unsubscribe
        )
    }

    /// The payload size the kind always has, or `None` when its payload is
    /// variable (HELLO, DATA, STATE_PUT, STATE, ERROR).
    pub fn fixed_payload_len(self) -> Option<usize> {
        match self {
            Kind::Heartbeat => Some(0),
            Kind::Welcome => Some(Welcome::LEN),
            Kind::TimeReq => Some(TIME_REQ_LEN),
            Kind::TimeResp => Some(TimeResp::LEN),
            Kind::StateAck => Some(STATE_ACK_LEN),
            Kind::StateGet | Kind::Subscribe | Kind::Unsubscribe => Some(ADDRESS_LEN),
            Kind::Presence => Some(Presence::LEN),
            Kind::Hello | Kind::Data | Kind::StatePut | Kind::State | Kind::Error => None,
        }
    }
}

/// The `code` of an ERROR frame (PROTOCOL.md "Error codes"). It is also the
/// error type of this layer: every rejection the codec decides is one of
/// these, because that is exactly what the peer is told.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum ErrorCode {
    #[error("bad_frame")]
    BadFrame = 1,
    #[error("not_registered")]
    NotRegistered = 2,
    #[error("auth_failed")]
    AuthFailed = 3,
    #[error("dst_offline")]
    DstOffline = 4,
    #[error("src_mismatch")]
    SrcMismatch = 5,
    #[error("too_large")]
    TooLarge = 6,
    #[error("slow_consumer")]
    SlowConsumer = 7,
    #[error("unknown_kind")]
    UnknownKind = 8,
    #[error("taken_over")]
    TakenOver = 9,
    #[error("not_found")]
    NotFound = 10,
    #[error("forbidden")]
    Forbidden = 11,
    #[error("store_unavailable")]
    StoreUnavailable = 12,
    #[error("shutting_down")]
    ShuttingDown = 13,
    #[error("timeout")]
    Timeout = 14,
}

impl ErrorCode {
    /// Every code, in the order of the protocol table.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadFrame,
        ErrorCode::NotRegistered,
        ErrorCode::AuthFailed,
        ErrorCode::DstOffline,
        ErrorCode::SrcMismatch,
        ErrorCode::TooLarge,
        ErrorCode::SlowConsumer,
        ErrorCode::UnknownKind,
        ErrorCode::TakenOver,
        ErrorCode::NotFound,
        ErrorCode::Forbidden,
        ErrorCode::StoreUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::Timeout,
    ];

    /// The code with wire value `v`, or `None` for a value the protocol does
    /// not define.
    pub fn from_u16(v: u16) -> Option<Self> {
        ErrorCode::ALL.into_iter().find(|code| *code as u16 == v)
    }

    /// The name from the error table, sent as `error` in the JSON form.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::DstOffline => "dst_offline",
            ErrorCode::SrcMismatch => "src_mismatch",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::TakenOver => "taken_over",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// The code whose name is exactly `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        ErrorCode::ALL.into_iter().find(|code| code.name() == s)
    }

    /// Whether the gateway closes the connection after sending this error
    /// (the "connection" column of the table).
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame
                | ErrorCode::AuthFailed
                | ErrorCode::TooLarge
                | ErrorCode::TakenOver
                | ErrorCode::ShuttingDown
                | ErrorCode::Timeout
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds table of PROTOCOL.md, transcribed independently of the code
    /// under test: code, name, whether a client may send it.
    const KIND_TABLE: [(u8, &str, bool); 14] = [
        (0x01, "hello", true),
        (0x02, "welcome", false),
        (0x03, "heartbeat", true),
        (0x10, "data", true),
        (0x20, "time_req", true),
        (0x21, "time_resp", false),
        (0x30, "state_put", true),
        (0x31, "state_ack", false),
        (0x32, "state_get", true),
        (0x33, "state", false),
        (0x40, "subscribe", true),
        (0x41, "unsubscribe", true),
        (0x42, "presence", false),
        (0x7F, "error", false),
    ];

    /// The error table of PROTOCOL.md: code, name, whether it closes.
    const ERROR_TABLE: [(u16, &str, bool); 14] = [
        (1, "bad_frame", true),
        (2, "not_registered", false),
        (3, "auth_failed", true),
        (4, "dst_offline", false),
        (5, "src_mismatch", false),
        (6, "too_large", true),
        (7, "slow_consumer", false),
        (8, "unknown_kind", false),
        (9, "taken_over", true),
        (10, "not_found", false),
        (11, "forbidden", false),
        (12, "store_unavailable", false),
        (13, "shutting_down", true),
        (14, "timeout", true),
    ];

    #[test]
    fn kinds_match_the_protocol_table() {
        for (i, (code, name, client)) in KIND_TABLE.into_iter().enumerate() {
            let kind = Kind::from_u8(code).unwrap_or_else(|| panic!("code {code:#x} unknown"));
            assert_eq!(kind as u8, code);
            assert_eq!(kind.name(), name);
            assert_eq!(Kind::from_name(name), Some(kind));
            assert_eq!(kind.client_may_send(), client, "{name}");
            assert_eq!(Kind::ALL[i], kind);
        }
    }

    #[test]
    fn codes_outside_the_table_are_unknown() {
        let known: Vec<u8> = KIND_TABLE.iter().map(|row| row.0).collect();
        for v in 0..=u8::MAX {
            assert_eq!(
                Kind::from_u8(v).is_some(),
                known.contains(&v),
                "code {v:#x}"
            );
        }
    }

    #[test]
    fn kind_names_are_exact_and_lowercase() {
        for bad in [
            "", "HELLO", "Hello", "time-req", "timereq", " data", "data ",
        ] {
            assert_eq!(Kind::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fixed_payload_sizes() {
        let expected = [
            (Kind::Hello, None),
            (Kind::Welcome, Some(16)),
            (Kind::Heartbeat, Some(0)),
            (Kind::Data, None),
            (Kind::TimeReq, Some(8)),
            (Kind::TimeResp, Some(24)),
            (Kind::StatePut, None),
            (Kind::StateAck, Some(8)),
            (Kind::StateGet, Some(16)),
            (Kind::State, None),
            (Kind::Subscribe, Some(16)),
            (Kind::Unsubscribe, Some(16)),
            (Kind::Presence, Some(25)),
            (Kind::Error, None),
        ];
        for (kind, len) in expected {
            assert_eq!(kind.fixed_payload_len(), len, "{kind:?}");
        }
    }

    #[test]
    fn error_codes_match_the_protocol_table() {
        assert_eq!(ErrorCode::ALL.len(), ERROR_TABLE.len());
        for (i, (value, name, closes)) in ERROR_TABLE.into_iter().enumerate() {
            let code = ErrorCode::from_u16(value).unwrap_or_else(|| panic!("code {value}"));
            assert_eq!(code as u16, value);
            assert_eq!(code.name(), name);
            assert_eq!(code.to_string(), name, "Display is the wire name");
            assert_eq!(ErrorCode::from_name(name), Some(code));
            assert_eq!(code.closes_connection(), closes, "{name}");
            assert_eq!(ErrorCode::ALL[i], code);
        }
    }

    #[test]
    fn error_values_outside_the_table_are_unknown() {
        for v in [0, 15, 0x7F, u16::MAX] {
            assert_eq!(ErrorCode::from_u16(v), None, "{v}");
        }
        assert_eq!(ErrorCode::from_name("BAD_FRAME"), None);
    }
}
