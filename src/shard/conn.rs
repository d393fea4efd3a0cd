//! Per-connection state and the slab that holds a shard's connections.
//!
//! A connection costs this struct (its glommio stream included), one routing
//! entry, one wheel entry and one small reader task. Buffers are empty while
//! a connection is idle: reads land in the shard's shared buffer, and only a
//! partial frame or unsent output is kept per connection.

use crate::admission::Ticket;
use crate::auth::Allow;
use crate::config::Timeouts;
use crate::routing::ConnKey;
use crate::transport::tls::Tls;
use glommio::net::TcpStream;
use uuid::Uuid;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Accepted, no HELLO yet; `mark_ms` is when it was accepted.
    Handshake,
    /// Registered; `mark_ms` is when it last sent anything.
    Open,
    /// An ERROR that closes it is queued; input is ignored; once the output
    /// is flushed the write side is shut. `mark_ms` is when closing began.
    Closing,
    /// Write side shut; input is read and discarded until the peer closes or
    /// the linger time passes.
    Draining,
    /// The socket went to its owner shard; the reader stops and frees the slot.
    HandedOver,
}

/// The timeout policy: when a connection in `state`, marked at `mark_ms`,
/// must be acted on. None for a connection that has left the shard.
pub fn deadline_ms(state: State, mark_ms: u64, t: &Timeouts) -> Option<u64> {
    let after = match state {
        State::Handshake => t.handshake_timeout_ms,
        State::Open => t.heartbeat_timeout_ms,
        State::Closing | State::Draining => t.close_linger_ms,
        State::HandedOver => return None,
    };
    Some(mark_ms + after as u64)
}

/// How bytes are framed on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Binary frames back to back.
    Tcp,
    /// WebSocket port before the HTTP upgrade completed.
    WsUpgrade,
    /// WebSocket messages, one frame each.
    Ws,
}

/// The form of one gateway frame: binary, or JSON text (WebSocket only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Binary,
    Json,
}

/// A WebSocket message arriving in fragments.
pub struct WsPartial {
    pub text: bool,
    pub data: Vec<u8>,
}

/// `S` is the socket; the gateway uses glommio's `TcpStream`, the memory
/// simulation a stand-in of the same size.
pub struct Conn<S = TcpStream> {
    pub stream: S,
    pub state: State,
    pub wire: Wire,
    /// WebSocket: frames to this client are JSON text. Before HELLO it is the
    /// form of the last message received (JSON until one arrives).
    pub json: bool,
    /// Queued in the shard's dirty list for the flusher.
    pub dirty: bool,
    /// The socket buffer was full; a writer task waits for room.
    pub write_blocked: bool,
    /// The registered address (nil before HELLO).
    pub addr: Uuid,
    /// Milliseconds (shard clock); meaning depends on `state`.
    pub mark_ms: u64,
    /// Tick of this connection's live wheel entry.
    pub wheel_tick: u32,
    /// Bytes waiting to be written, already framed for the wire.
    pub out: Vec<u8>,
    /// What admission gave it (`Admission::release` takes it back).
    pub ticket: Ticket,
    /// DATA frames received in the current second (`data_second`, the
    /// shard clock's second modulo 256), for `max_data_frames_per_s`.
    pub data_count: u16,
    pub data_second: u8,
    /// What most idle connections never need, out of line.
    extra: Option<Box<Extra>>,
}

/// Per-connection state that exists only while in use.
#[derive(Default)]
struct Extra {
    /// A partial frame (or HTTP request) carried over between reads.
    inbuf: Vec<u8>,
    /// Addresses this connection watches (bounded by the subscription limit).
    watching: Vec<Uuid>,
    ws_partial: Option<WsPartial>,
    /// What the HELLO's token allows; only set when authentication is on.
    allow: Option<Allow>,
    /// The TLS session of a connection accepted on a tls or wss listener.
    tls: Option<Box<Tls>>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.inbuf.capacity() == 0
            && self.watching.is_empty()
            && self.ws_partial.is_none()
            && self.allow.is_none()
            && self.tls.is_none()
    }
}

impl<S> Conn<S> {
    pub fn new(stream: S, wire: Wire, now_ms: u64) -> Conn<S> {
        Conn {
            stream,
            state: State::Handshake,
            wire,
            json: true,
            dirty: false,
            write_blocked: false,
            addr: Uuid::nil(),
            mark_ms: now_ms,
            wheel_tick: 0,
            out: Vec::new(),
            ticket: 0,
            data_count: 0,
            data_second: 0,
            extra: None,
        }
    }

    /// Input arrived at `now_ms` on an open connection whose previous
    /// input came at `mark_ms`: a new second restarts the DATA count. The
    /// stored second is modulo 256, so a count is also stale once the
    /// connection was silent for a second or more.
    pub fn roll_data_second(&mut self, now_ms: u64) {
        let second = (now_ms / 1000) as u8;
        if second != self.data_second || now_ms.saturating_sub(self.mark_ms) >= 1000 {
            self.data_second = second;
            self.data_count = 0;
        }
    }

    /// Counts one DATA frame against `limit` per second (0 = no limit);
    /// false when it is over.
    pub fn count_data(&mut self, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        if u32::from(self.data_count) >= limit {
            return false;
        }
        self.data_count += 1;
        true
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the out-of-line part once nothing is left in it.
    fn tidy(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    pub fn has_inbuf(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| !e.inbuf.is_empty())
    }

    /// Takes the carried-over input (empty when there is none).
    pub fn take_inbuf(&mut self) -> Vec<u8> {
        let Some(e) = self.extra.as_mut() else {
            return Vec::new();
        };
        let buf = std::mem::take(&mut e.inbuf);
        self.tidy();
        buf
    }

    pub fn set_inbuf(&mut self, buf: Vec<u8>) {
        if buf.capacity() == 0 && self.extra.is_none() {
            return;
        }
        self.extra_mut().inbuf = buf;
        self.tidy();
    }

    pub fn watching(&self) -> &[Uuid] {
        self.extra
            .as_ref()
            .map(|e| e.watching.as_slice())
            .unwrap_or(&[])
    }

    pub fn watch(&mut self, addr: Uuid) {
        self.extra_mut().watching.push(addr);
    }

    /// Stops watching `addr`; false if it was not watched.
    pub fn unwatch(&mut self, addr: &Uuid) -> bool {
        let Some(e) = self.extra.as_mut() else {
            return false;
        };
        let Some(i) = e.watching.iter().position(|w| w == addr) else {
            return false;
        };
        e.watching.swap_remove(i);
        if e.watching.is_empty() {
            e.watching = Vec::new();
        }
        self.tidy();
        true
    }

    pub fn take_watching(&mut self) -> Vec<Uuid> {
        let Some(e) = self.extra.as_mut() else {
            return Vec::new();
        };
        let w = std::mem::take(&mut e.watching);
        self.tidy();
        w
    }

    pub fn has_ws_partial(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.ws_partial.is_some())
    }

    pub fn take_ws_partial(&mut self) -> Option<WsPartial> {
        let p = self.extra.as_mut()?.ws_partial.take();
        self.tidy();
        p
    }

    pub fn set_ws_partial(&mut self, p: WsPartial) {
        self.extra_mut().ws_partial = Some(p);
    }

    /// Keeps what the connection's token allows (authentication on).
    pub fn set_allow(&mut self, allow: Allow) {
        self.extra_mut().allow = Some(allow);
    }

    pub fn take_allow(&mut self) -> Option<Allow> {
        let a = self.extra.as_mut()?.allow.take();
        self.tidy();
        a
    }

    pub fn set_tls(&mut self, tls: Box<Tls>) {
        self.extra_mut().tls = Some(tls);
    }

    pub fn take_tls(&mut self) -> Option<Box<Tls>> {
        let t = self.extra.as_mut()?.tls.take();
        self.tidy();
        t
    }

    pub fn tls_mut(&mut self) -> Option<&mut Tls> {
        self.extra.as_mut()?.tls.as_deref_mut()
    }

    /// The listener kind it came from, as an index of
    /// `metrics::TRANSPORTS`: tcp, ws, tls, wss.
    pub fn transport(&self) -> usize {
        let ws = usize::from(self.wire != Wire::Tcp);
        let tls = usize::from(self.extra.as_ref().is_some_and(|e| e.tls.is_some()));
        ws + 2 * tls
    }

    /// Bytes queued towards the peer: frames not yet sealed plus, on TLS,
    /// records not yet written.
    pub fn queued_len(&self) -> usize {
        let records = self
            .extra
            .as_ref()
            .and_then(|e| e.tls.as_ref())
            .map_or(0, |t| t.out.len());
        self.out.len() + records
    }

    /// The socket and the bytes to write to it next: `out` itself, or on
    /// TLS the records `out` was just sealed into.
    pub fn wire_parts(&mut self) -> (&mut S, &mut Vec<u8>) {
        match self.extra.as_mut().and_then(|e| e.tls.as_deref_mut()) {
            Some(tls) => {
                tls.seal(&mut self.out);
                (&mut self.stream, &mut tls.out)
            }
            None => (&mut self.stream, &mut self.out),
        }
    }

    /// Whether the token allows reaching `addr`; false when no token was
    /// kept (callers ask only when authentication is on).
    pub fn allows(&self, addr: &Uuid) -> bool {
        self.extra
            .as_ref()
            .and_then(|e| e.allow.as_ref())
            .is_some_and(|a| a.allows(addr))
    }

    /// Forgets buffered input (the connection stops reading).
    pub fn clear_input(&mut self) {
        if let Some(e) = self.extra.as_mut() {
            e.inbuf = Vec::new();
            e.ws_partial = None;
        }
        self.tidy();
    }

    pub fn registered(&self) -> Option<Uuid> {
        match self.state {
            State::Open => Some(self.addr),
            _ => None,
        }
    }

    /// The form gateway frames to this connection take when they answer
    /// nothing in particular (pushes, timeouts) or once it is registered.
    pub fn form(&self) -> Form {
        match (self.wire, self.json) {
            (Wire::Ws, true) => Form::Json,
            _ => Form::Binary,
        }
    }

    pub fn accepts_input(&self) -> bool {
        matches!(self.state, State::Handshake | State::Open)
    }
}

/// A slab of connections addressed by [`ConnKey`]; a freed slot's generation
/// moves on so stale keys miss.
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

struct Slot<T> {
    gen: u32,
    conn: Option<T>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, conn: T) -> ConnKey {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.conn = Some(conn);
            return ConnKey { slot, gen: s.gen };
        }
        let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 connections");
        self.slots.push(Slot {
            gen: 0,
            conn: Some(conn),
        });
        ConnKey { slot, gen: 0 }
    }

    pub fn get(&self, key: ConnKey) -> Option<&T> {
        let s = self.slots.get(key.slot as usize)?;
        if s.gen == key.gen {
            s.conn.as_ref()
        } else {
            None
        }
    }

    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut T> {
        let s = self.slots.get_mut(key.slot as usize)?;
        if s.gen == key.gen {
            s.conn.as_mut()
        } else {
            None
        }
    }

    pub fn remove(&mut self, key: ConnKey) -> Option<T> {
        let s = self.slots.get_mut(key.slot as usize)?;
        if s.gen != key.gen {
            return None;
        }
        let conn = s.conn.take()?;
        s.gen = s.gen.wrapping_add(1);
        self.free.push(key.slot);
        self.len -= 1;
        Some(conn)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys of every live connection (for shutdown).
    pub fn keys(&self) -> Vec<ConnKey> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| ConnKey {
                slot: i as u32,
                gen: s.gen,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_its_own_timeout() {
        let t = Timeouts {
            heartbeat_timeout_ms: 90_000,
            handshake_timeout_ms: 10_000,
            close_linger_ms: 2_000,
            ..Timeouts::default()
        };
        assert_eq!(deadline_ms(State::Handshake, 5, &t), Some(10_005));
        assert_eq!(deadline_ms(State::Open, 5, &t), Some(90_005));
        assert_eq!(deadline_ms(State::Closing, 5, &t), Some(2_005));
        assert_eq!(deadline_ms(State::Draining, 5, &t), Some(2_005));
        assert_eq!(deadline_ms(State::HandedOver, 5, &t), None);
    }

    #[test]
    fn data_count_restarts_each_second_and_after_silence() {
        let mut c: Conn<()> = Conn::new((), Wire::Tcp, 0);
        c.roll_data_second(10_000);
        c.mark_ms = 10_000;
        assert!(c.count_data(2) && c.count_data(2));
        assert!(!c.count_data(2), "third in the same second");
        c.roll_data_second(10_999);
        c.mark_ms = 10_999;
        assert!(!c.count_data(2), "still the same second");
        c.roll_data_second(11_000);
        c.mark_ms = 11_000;
        assert!(c.count_data(2), "a new second");
        assert!(c.count_data(0) && c.count_data(0), "0 is no limit");
        // 256 s later the stored second matches again, but the connection
        // was silent: the count starts over.
        c.count_data(2);
        assert!(!c.count_data(2));
        c.roll_data_second(11_000 + 256_000);
        assert!(c.count_data(2));
    }

    #[test]
    fn stale_keys_miss_after_reuse() {
        let mut s: Slab<u32> = Slab::default();
        let a = s.insert(1);
        let b = s.insert(2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(a), Some(1));
        assert_eq!(s.get(a), None);
        let c = s.insert(3);
        assert_eq!(c.slot, a.slot);
        assert_ne!(c.gen, a.gen);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(c), Some(&3));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.keys(), vec![c, b]);
        assert_eq!(s.len(), 2);
    }
}
