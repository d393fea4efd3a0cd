//! NATS client protocol framing for the `pingpong --nats` target, sans-IO.
//!
//! Only what pingpong needs: the setup lines (CONNECT, SUB, PING), PUB and
//! PONG to send, and an incremental parser for what the server sends (INFO,
//! MSG, PING, PONG, +OK, -ERR). The parser looks at whatever bytes have
//! arrived and either returns one whole operation with the bytes it used, or
//! `None` when more are needed; it keeps no state between calls and never
//! allocates, so a caller just calls it again once more bytes are in.
//!
//! Mapping from the gateway protocol: an endpoint's address (a UUID) becomes
//! its subject, the 32 lowercase hex digits of the UUID; HELLO/WELCOME becomes
//! CONNECT + SUB + PING / PONG; DATA becomes PUB (sent) and MSG (received).

use std::ops::Range;

use crate::proto::Addr;

/// Subscription id every connection uses for its one subscription.
pub const SID: u64 = 1;
/// Bytes of a subject: the address in hex.
pub const SUBJECT_LEN: usize = 32;
/// Longest control line accepted (INFO from a clustered server can list many
/// URLs); a line longer than this without CRLF is a protocol error.
pub const MAX_LINE: usize = 16 * 1024;
/// Upper bound on the bytes a MSG adds around its payload for our subjects:
/// `MSG ` + subject + ` ` + sid + ` ` + reply-to + ` ` + length + 2 x CRLF.
pub const MSG_OVERHEAD_MAX: usize = 4 + SUBJECT_LEN + 1 + 20 + 1 + 64 + 1 + 20 + 4;
/// Bytes a PUB adds around its payload, at most.
pub const PUB_OVERHEAD_MAX: usize = 4 + SUBJECT_LEN + 1 + 20 + 4;

pub const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n";
pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";
pub const CRLF: &[u8] = b"\r\n";

pub type Subject = [u8; SUBJECT_LEN];

/// The subject of an address: lowercase hex, no dashes.
pub fn subject(addr: &Addr) -> Subject {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; SUBJECT_LEN];
    for (i, b) in addr.iter().enumerate() {
        s[2 * i] = HEX[usize::from(b >> 4)];
        s[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    s
}

/// Appends the setup lines: CONNECT, SUB to `own` with [`SID`], PING. The
/// matching PONG tells that the server has processed all three.
pub fn encode_setup(out: &mut Vec<u8>, own: &Subject) {
    out.extend_from_slice(CONNECT);
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(own);
    out.push(b' ');
    push_decimal(out, SID);
    out.extend_from_slice(CRLF);
    out.extend_from_slice(PING);
}

/// Appends `PUB <dst> <len>\r\n`; the caller appends `len` payload bytes and
/// then [`CRLF`].
pub fn encode_pub_head(out: &mut Vec<u8>, dst: &Subject, len: usize) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(dst);
    out.push(b' ');
    push_decimal(out, len as u64);
    out.extend_from_slice(CRLF);
}

/// Appends a whole PUB: head, payload, CRLF.
pub fn encode_pub(out: &mut Vec<u8>, dst: &Subject, payload: &[u8]) {
    encode_pub_head(out, dst, payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(CRLF);
}

/// Decimal digits without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// One operation from the server. Ranges index the buffer given to [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Info,
    Msg {
        subject: Range<usize>,
        sid: u64,
        payload: Range<usize>,
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR <text>`: the text, quotes removed.
    Err(Range<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    LineTooLong,
    UnknownOp,
    BadMsgLine,
    /// MSG payload not followed by CRLF.
    BadPayloadEnd,
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::LineTooLong => "nats_line_too_long",
            ParseError::UnknownOp => "nats_unknown_op",
            ParseError::BadMsgLine => "nats_bad_msg_line",
            ParseError::BadPayloadEnd => "nats_bad_payload_end",
        }
    }
}

/// Parses the operation at the start of `buf`. `Ok(Some((op, used)))`: one
/// whole operation in `buf[..used]`. `Ok(None)`: incomplete, call again with
/// more bytes (the same prefix included).
pub fn parse(buf: &[u8]) -> Result<Option<(Op, usize)>, ParseError> {
    let Some(line_len) = find_crlf(buf) else {
        if buf.len() > MAX_LINE {
            return Err(ParseError::LineTooLong);
        }
        // An operation name that can never become valid fails early.
        if !buf.is_empty() && !could_start_op(buf) {
            return Err(ParseError::UnknownOp);
        }
        return Ok(None);
    };
    if line_len > MAX_LINE {
        return Err(ParseError::LineTooLong);
    }
    let line = &buf[..line_len];
    let after_line = line_len + 2;
    let (name, rest_at) = match line.iter().position(|&c| c == b' ' || c == b'\t') {
        Some(i) => (&line[..i], i + 1),
        None => (line, line.len()),
    };
    let op = if name.eq_ignore_ascii_case(b"MSG") {
        return parse_msg(buf, rest_at, line_len);
    } else if name.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if name.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if name.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if name.eq_ignore_ascii_case(b"INFO") {
        Op::Info
    } else if name.eq_ignore_ascii_case(b"-ERR") {
        let mut text = trim(line, rest_at..line_len);
        if text.len() >= 2 && line[text.start] == b'\'' && line[text.end - 1] == b'\'' {
            text = text.start + 1..text.end - 1;
        }
        Op::Err(text)
    } else {
        return Err(ParseError::UnknownOp);
    };
    Ok(Some((op, after_line)))
}

/// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n`
fn parse_msg(
    buf: &[u8],
    rest_at: usize,
    line_len: usize,
) -> Result<Option<(Op, usize)>, ParseError> {
    let mut fields: [Range<usize>; 4] = [0..0, 0..0, 0..0, 0..0];
    let mut n = 0;
    let mut i = rest_at;
    while i < line_len {
        if buf[i] == b' ' || buf[i] == b'\t' {
            i += 1;
            continue;
        }
        let start = i;
        while i < line_len && buf[i] != b' ' && buf[i] != b'\t' {
            i += 1;
        }
        if n == fields.len() {
            return Err(ParseError::BadMsgLine);
        }
        fields[n] = start..i;
        n += 1;
    }
    if n != 3 && n != 4 {
        return Err(ParseError::BadMsgLine);
    }
    let sid = parse_decimal(&buf[fields[1].clone()]).ok_or(ParseError::BadMsgLine)?;
    let len = parse_decimal(&buf[fields[n - 1].clone()]).ok_or(ParseError::BadMsgLine)?;
    let len = usize::try_from(len).map_err(|_| ParseError::BadMsgLine)?;
    let payload_at = line_len + 2;
    let payload_end = payload_at.checked_add(len).ok_or(ParseError::BadMsgLine)?;
    let total = payload_end + 2;
    if buf.len() < total {
        return Ok(None);
    }
    if &buf[payload_end..total] != CRLF {
        return Err(ParseError::BadPayloadEnd);
    }
    let op = Op::Msg {
        subject: fields[0].clone(),
        sid,
        payload: payload_at..payload_end,
    };
    Ok(Some((op, total)))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    // Lines are short; a plain scan for '\n' and a check of the byte before.
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&c| c == b'\n') {
        let at = from + i;
        if at > 0 && buf[at - 1] == b'\r' {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// Whether `prefix` (no CRLF yet) can still be the start of a known op.
fn could_start_op(prefix: &[u8]) -> bool {
    const OPS: [&[u8]; 6] = [b"MSG", b"PING", b"PONG", b"+OK", b"-ERR", b"INFO"];
    let name_len = prefix
        .iter()
        .position(|&c| c == b' ' || c == b'\t' || c == b'\r')
        .unwrap_or(prefix.len());
    let name = &prefix[..name_len];
    let whole = name_len < prefix.len();
    OPS.iter().any(|op| {
        if whole {
            op.eq_ignore_ascii_case(name)
        } else {
            op.len() >= name.len() && op[..name.len()].eq_ignore_ascii_case(name)
        }
    })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
    })
}

fn trim(line: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && line[r.start].is_ascii_whitespace() {
        r.start += 1;
    }
    while r.end > r.start && line[r.end - 1].is_ascii_whitespace() {
        r.end -= 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses every operation in `bytes`, feeding them in growing prefixes
    /// the way a socket would, cut at `cut` first.
    fn parse_all_with_cut(bytes: &[u8], cut: usize) -> Vec<(Op, Vec<u8>)> {
        let mut out = Vec::new();
        let mut head = 0;
        let mut avail = cut.min(bytes.len());
        loop {
            match parse(&bytes[head..avail]).expect("valid stream") {
                Some((op, used)) => {
                    let base = head;
                    let payload = match &op {
                        Op::Msg { payload, .. } => {
                            bytes[base + payload.start..base + payload.end].to_vec()
                        }
                        Op::Err(r) => bytes[base + r.start..base + r.end].to_vec(),
                        _ => Vec::new(),
                    };
                    out.push((op, payload));
                    head += used;
                }
                None if avail == bytes.len() => break,
                None => avail = bytes.len(),
            }
        }
        assert_eq!(head, bytes.len(), "every byte consumed");
        out
    }

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n");
        s.extend_from_slice(b"PONG\r\n");
        s.extend_from_slice(b"MSG 0123456789abcdef0123456789abcdef 1 5\r\nhello\r\n");
        s.extend_from_slice(b"PING\r\n");
        // A payload holding CRLF, and one with a reply subject.
        s.extend_from_slice(b"MSG s 1 reply.to 4\r\n\r\n\r\n\r\n");
        s.extend_from_slice(b"+OK\r\n");
        s.extend_from_slice(b"-ERR 'Maximum Payload Violation'\r\n");
        s.extend_from_slice(b"MSG s 7 0\r\n\r\n");
        s
    }

    #[test]
    fn subject_is_lowercase_hex() {
        let addr: Addr = *uuid::Uuid::parse_str("0123456789ABCDEF0011223344556677")
            .unwrap()
            .as_bytes();
        assert_eq!(&subject(&addr), b"0123456789abcdef0011223344556677");
    }

    #[test]
    fn encodes_setup_and_pub() {
        let s = subject(&[0xab; 16]);
        let mut out = Vec::new();
        encode_setup(&mut out, &s);
        let want = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false}}\r\nSUB {} 1\r\nPING\r\n",
            "ab".repeat(16)
        );
        assert_eq!(out, want.as_bytes());
        out.clear();
        encode_pub(&mut out, &s, b"0123456789");
        assert_eq!(
            out,
            format!("PUB {} 10\r\n0123456789\r\n", "ab".repeat(16)).as_bytes()
        );
        assert!(out.len() - 10 <= PUB_OVERHEAD_MAX);
        out.clear();
        encode_pub(&mut out, &s, b"");
        assert_eq!(out, format!("PUB {} 0\r\n\r\n", "ab".repeat(16)).as_bytes());
    }

    #[test]
    fn decimal_encoding() {
        for n in [0u64, 7, 10, 99, 100, 65_536, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn parses_every_op() {
        let s = stream();
        let ops = parse_all_with_cut(&s, s.len());
        let kinds: Vec<&Op> = ops.iter().map(|(o, _)| o).collect();
        assert_eq!(kinds.len(), 8);
        assert_eq!(*kinds[0], Op::Info);
        assert_eq!(*kinds[1], Op::Pong);
        assert!(matches!(kinds[2], Op::Msg { sid: 1, .. }));
        assert_eq!(ops[2].1, b"hello");
        assert_eq!(*kinds[3], Op::Ping);
        assert_eq!(ops[4].1, b"\r\n\r\n");
        assert_eq!(*kinds[5], Op::Ok);
        assert_eq!(ops[6].1, b"Maximum Payload Violation");
        assert!(matches!(kinds[7], Op::Msg { sid: 7, .. }));
        assert_eq!(ops[7].1, b"");
    }

    #[test]
    fn msg_subject_range() {
        let buf = b"MSG abc 1 3\r\nxyz\r\n";
        let (op, used) = parse(buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        let Op::Msg {
            subject,
            sid,
            payload,
        } = op
        else {
            panic!("msg")
        };
        assert_eq!(&buf[subject], b"abc");
        assert_eq!(sid, 1);
        assert_eq!(&buf[payload], b"xyz");
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let s = stream();
        let whole = parse_all_with_cut(&s, s.len());
        for cut in 0..=s.len() {
            assert_eq!(parse_all_with_cut(&s, cut), whole, "cut at {cut}");
        }
    }

    #[test]
    fn every_prefix_of_one_op_is_incomplete() {
        let one = b"MSG 0123456789abcdef0123456789abcdef 1 5\r\nhello\r\n";
        for end in 0..one.len() {
            assert_eq!(parse(&one[..end]), Ok(None), "prefix {end}");
        }
        assert!(parse(one).unwrap().is_some());
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(b"XYZ\r\n"), Err(ParseError::UnknownOp));
        assert_eq!(parse(b"XY"), Err(ParseError::UnknownOp));
        assert_eq!(parse(b"MSG a\r\n"), Err(ParseError::BadMsgLine));
        assert_eq!(parse(b"MSG a 1 x\r\n"), Err(ParseError::BadMsgLine));
        assert_eq!(parse(b"MSG a 1 b c 2\r\n"), Err(ParseError::BadMsgLine));
        assert_eq!(parse(b"MSG a 1 2\r\nabXY"), Err(ParseError::BadPayloadEnd));
        let mut long = b"INFO ".to_vec();
        long.resize(MAX_LINE + 10, b'x');
        assert_eq!(parse(&long), Err(ParseError::LineTooLong));
        // Lowercase op names are accepted, as the server does.
        assert_eq!(parse(b"ping\r\n"), Ok(Some((Op::Ping, 6))));
    }
}
