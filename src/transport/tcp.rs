//! Plain TCP: binary frames back to back.

use crate::proto::{self, Decoded};
use crate::routing::ConnKey;
use crate::shard::conn::Form;
use crate::shard::handle::{reject_message, Flow};
use crate::shard::state::ShardState;

/// Most a carry-over buffer reserves beyond the bytes it holds; a larger
/// frame's buffer grows as its bytes arrive.
pub const CARRY_RESERVE_MAX: usize = 64 * 1024;

/// How far processing got through a buffer.
pub enum Progress {
    /// Frames up to this offset were handled; the rest is an incomplete
    /// frame needing `needed` bytes in total.
    Partial { consumed: usize, needed: usize },
    /// The connection stopped reading (closing or handed over); drop the rest.
    Done,
}

impl ShardState {
    pub fn on_tcp_input(&mut self, key: ConnKey, data: &mut [u8]) {
        let carried = match self.conns.get_mut(key) {
            Some(conn) if conn.has_inbuf() => Some(conn.take_inbuf()),
            Some(_) => None,
            None => return,
        };
        match carried {
            None => {
                if let Progress::Partial { consumed, needed } = self.process_tcp(key, data) {
                    self.carry(key, &data[consumed..], needed);
                }
            }
            Some(mut buf) => {
                buf.extend_from_slice(data);
                if let Progress::Partial { consumed, .. } = self.process_tcp(key, &mut buf) {
                    if consumed < buf.len() {
                        buf.drain(..consumed);
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.set_inbuf(buf);
                        }
                    }
                }
            }
        }
    }

    /// Keeps the start of an incomplete frame for the next read. What the
    /// frame needs in all is reserved only up to [`CARRY_RESERVE_MAX`] bytes
    /// beyond what arrived: a header that promises a large payload and never
    /// sends it must not make the gateway reserve the whole payload.
    pub fn carry(&mut self, key: ConnKey, rest: &[u8], needed: usize) {
        if rest.is_empty() {
            return;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            let reserve = needed.min(rest.len() + CARRY_RESERVE_MAX).max(rest.len());
            let mut buf = Vec::with_capacity(reserve);
            buf.extend_from_slice(rest);
            conn.set_inbuf(buf);
        }
    }

    fn process_tcp(&mut self, key: ConnKey, buf: &mut [u8]) -> Progress {
        let max = self.cfg.limits.max_payload_bytes;
        let mut off = 0;
        loop {
            if !self.conns.get(key).is_some_and(|c| c.accepts_input()) {
                return Progress::Done;
            }
            match proto::decode(&buf[off..], max) {
                Decoded::Incomplete { needed } => {
                    return Progress::Partial {
                        consumed: off,
                        needed,
                    }
                }
                Decoded::Reject { header, code } => {
                    self.send_error(key, Form::Binary, header.id, code, reject_message(code));
                    return Progress::Done;
                }
                Decoded::Frame {
                    header,
                    payload,
                    consumed,
                } => {
                    let raw = &buf[off..off + consumed];
                    let flow = self.on_frame(key, Form::Binary, &header, payload, Some(raw));
                    off += consumed;
                    match flow {
                        Flow::Continue => {}
                        Flow::Stop => return Progress::Done,
                        Flow::Handover { addr, hello_id } => {
                            self.hand_over(key, addr, hello_id, &buf[off..]);
                            return Progress::Done;
                        }
                    }
                }
            }
        }
    }
}
