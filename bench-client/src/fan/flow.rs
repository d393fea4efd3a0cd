//! `fan`'s flow control, pure and sans-IO: which streams exist, send windows,
//! credits, order checks, and the payload and frame-id layouts.

/// Bytes of a credit message: stream and count.
pub(super) const CREDIT_LEN: usize = 8;

/// Which streams exist and who is at their ends: stream k goes from sender
/// k % senders to receiver k % receivers, for k < max(senders, receivers).
/// Every (sender, receiver) pair occurs at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMap {
    pub senders: u32,
    pub receivers: u32,
}

impl StreamMap {
    pub fn count(self) -> u32 {
        self.senders.max(self.receivers)
    }

    pub fn sender(self, k: u32) -> u32 {
        k % self.senders
    }

    pub fn receiver(self, k: u32) -> u32 {
        k % self.receivers
    }

    /// Endpoints on one end's side.
    fn side_len(self, end: End) -> u32 {
        match end {
            End::Sender => self.senders,
            End::Receiver => self.receivers,
        }
    }

    /// The streams of endpoint `i` at `end`, in order: i, i + n, i + 2n, ...
    /// with n the endpoints on that side.
    pub fn streams_of(self, end: End, i: u32) -> impl Iterator<Item = u32> {
        (i..self.count()).step_by(self.side_len(end) as usize)
    }

    /// Where stream `k` sits among [`StreamMap::streams_of`] its endpoint
    /// `i` at `end`, or None when it is not one of that endpoint's streams.
    pub fn slot(self, end: End, i: u32, k: u32) -> Option<usize> {
        let n = self.side_len(end);
        (k < self.count() && k % n == i).then_some((k / n) as usize)
    }
}

/// The two ends of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Sender,
    Receiver,
}

/// A receiver credits every this many frames of a stream: ceil(W / 2).
pub fn credit_every(window: u32) -> u32 {
    window.div_ceil(2)
}

/// A sender's view of one stream's window: frames sent and neither credited
/// back nor refused. With credits every ceil(W/2) frames the window never
/// stalls: a full window means at least W - ceil(W/2) + 1 frames were not yet
/// received, or a credit is on its way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    outstanding: u32,
}

impl SendWindow {
    /// Frames that may be sent now.
    pub fn room(self, window: u32) -> u32 {
        window.saturating_sub(self.outstanding)
    }

    pub fn outstanding(self) -> u32 {
        self.outstanding
    }

    pub fn on_send(&mut self) {
        self.outstanding += 1;
    }

    /// A credit for `n` frames. False, and nothing changes, when it gives
    /// back more frames than are outstanding.
    pub fn on_credit(&mut self, n: u32) -> bool {
        match self.outstanding.checked_sub(n) {
            Some(left) => {
                self.outstanding = left;
                true
            }
            None => false,
        }
    }

    /// One frame refused with an ERROR: it is over and its slot is free.
    pub fn on_refused(&mut self) -> bool {
        self.on_credit(1)
    }
}

/// A receiver's count of one stream's frames since its last credit.
#[derive(Debug, Default, Clone, Copy)]
pub struct CreditCounter {
    since_credit: u32,
}

impl CreditCounter {
    /// Counts one frame; returns the credit to send once `every` came.
    pub fn on_frame(&mut self, every: u32) -> Option<u32> {
        self.since_credit += 1;
        (self.since_credit >= every).then(|| std::mem::take(&mut self.since_credit))
    }
}

/// Where a frame's sequence number stands against the one expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Next,
    /// This many frames before it never came (refused with an ERROR, or lost).
    Skipped(u32),
    /// Older than one already received: reordered or duplicated.
    Behind,
}

/// Order check of one stream at its receiver (sequence numbers wrap).
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqCheck {
    next: u32,
}

impl SeqCheck {
    pub fn on_frame(&mut self, seq: u32) -> Order {
        let ahead = seq.wrapping_sub(self.next);
        if ahead >= 1 << 31 {
            return Order::Behind;
        }
        self.next = seq.wrapping_add(1);
        if ahead == 0 {
            Order::Next
        } else {
            Order::Skipped(ahead)
        }
    }
}

/// Payload bytes 0..16 of a DATA frame.
pub(super) fn data_fields(sent_ns: u64, k: u32, seq: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sent_ns.to_be_bytes());
    b[8..12].copy_from_slice(&k.to_be_bytes());
    b[12..].copy_from_slice(&seq.to_be_bytes());
    b
}

/// (send time, stream, sequence) of a DATA payload.
pub(super) fn decode_data(payload: &[u8]) -> Option<(u64, u32, u32)> {
    let sent_ns = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let k = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?);
    let seq = u32::from_be_bytes(payload.get(12..16)?.try_into().ok()?);
    Some((sent_ns, k, seq))
}

pub(super) fn credit_payload(k: u32, n: u32) -> [u8; CREDIT_LEN] {
    let mut b = [0u8; CREDIT_LEN];
    b[..4].copy_from_slice(&k.to_be_bytes());
    b[4..].copy_from_slice(&n.to_be_bytes());
    b
}

/// (stream, frames given back) of a credit payload.
pub(super) fn decode_credit(payload: &[u8]) -> Option<(u32, u32)> {
    if payload.len() != CREDIT_LEN {
        return None;
    }
    let k = u32::from_be_bytes(payload[..4].try_into().ok()?);
    let n = u32::from_be_bytes(payload[4..].try_into().ok()?);
    Some((k, n))
}

/// Frame id of a DATA: the stream (plus one, so no id is 0) and its sequence
/// number. An ERROR echoes it, which names the stream whose slot to free.
pub(super) fn data_id(k: u32, seq: u32) -> u64 {
    (u64::from(k) + 1) << 32 | u64::from(seq)
}

pub(super) fn stream_of_id(id: u64) -> Option<u32> {
    u32::try_from((id >> 32).checked_sub(1)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stream's ends, from both sides' point of view, agree with the
    /// mapping, and every stream belongs to exactly one endpoint per side.
    fn check_map(senders: u32, receivers: u32) {
        let map = StreamMap { senders, receivers };
        let k_max = senders.max(receivers);
        assert_eq!(map.count(), k_max);
        for (end, n) in [(End::Sender, senders), (End::Receiver, receivers)] {
            let mut seen = vec![0u32; k_max as usize];
            for i in 0..n {
                for (slot, k) in map.streams_of(end, i).enumerate() {
                    seen[k as usize] += 1;
                    let owner = match end {
                        End::Sender => map.sender(k),
                        End::Receiver => map.receiver(k),
                    };
                    assert_eq!(owner, i);
                    assert_eq!(map.slot(end, i, k), Some(slot));
                    assert_eq!(map.slot(end, (i + 1) % n, k).is_some(), n == 1);
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{end:?} {seen:?}");
        }
        // No (sender, receiver) pair carries two streams.
        let mut pairs: Vec<(u32, u32)> = (0..k_max)
            .map(|k| (map.sender(k), map.receiver(k)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        assert_eq!(pairs.len(), k_max as usize);
        assert_eq!(map.slot(End::Sender, 0, k_max), None);
    }

    #[test]
    fn stream_mapping() {
        for (s, r) in [
            (1, 1),
            (1, 7),
            (7, 1),
            (100, 100),
            (100, 10),
            (10, 100),
            (6, 4),
        ] {
            check_map(s, r);
        }
        let fan_in = StreamMap {
            senders: 100,
            receivers: 10,
        };
        assert_eq!(fan_in.streams_of(End::Sender, 42).collect::<Vec<_>>(), [42]);
        assert_eq!(fan_in.streams_of(End::Receiver, 3).count(), 10);
        assert_eq!(fan_in.receiver(42), 2);
        assert_eq!(fan_in.slot(End::Receiver, 2, 42), Some(4));
        let fan_out = StreamMap {
            senders: 10,
            receivers: 100,
        };
        assert_eq!(
            fan_out.streams_of(End::Sender, 3).collect::<Vec<_>>(),
            (0..10).map(|m| 3 + 10 * m).collect::<Vec<_>>()
        );
        assert_eq!(fan_out.sender(57), 7);
        assert_eq!(fan_out.receiver(57), 57);
    }

    #[test]
    fn credit_every_is_half_the_window_rounded_up() {
        assert_eq!(credit_every(1), 1);
        assert_eq!(credit_every(2), 1);
        assert_eq!(credit_every(3), 2);
        assert_eq!(credit_every(64), 32);
        assert_eq!(credit_every(4096), 2048);
    }

    #[test]
    fn receiver_credits_every_half_window() {
        let mut c = CreditCounter::default();
        let got: Vec<Option<u32>> = (0..7).map(|_| c.on_frame(3)).collect();
        assert_eq!(got, [None, None, Some(3), None, None, Some(3), None]);
        let mut one = CreditCounter::default();
        assert!((0..5).all(|_| one.on_frame(1) == Some(1)));
    }

    #[test]
    fn send_window_accounting() {
        let w = 4;
        let mut s = SendWindow::default();
        assert_eq!(s.room(w), 4);
        for _ in 0..4 {
            s.on_send();
        }
        assert_eq!(s.room(w), 0);
        assert!(s.on_credit(2));
        assert_eq!(s.room(w), 2);
        assert!(s.on_refused());
        assert_eq!(s.outstanding(), 1);
        // A credit for more than is outstanding changes nothing.
        assert!(!s.on_credit(2));
        assert_eq!(s.outstanding(), 1);
        assert!(s.on_credit(1));
        assert!(!s.on_refused());
        assert_eq!(s.room(w), 4);
    }

    /// A sender and a receiver exchanging credits through a FIFO "network"
    /// never stall, never exceed the window, and settle every frame, for
    /// every window size and with some frames refused on the way.
    #[test]
    fn windows_never_stall_and_settle() {
        for w in 1..=9u32 {
            for refuse_every in [0u64, 5] {
                let every = credit_every(w);
                let (mut win, mut rx) = (SendWindow::default(), CreditCounter::default());
                let mut wire: std::collections::VecDeque<u64> = Default::default();
                let (mut sent, mut delivered, mut refused) = (0u64, 0u64, 0u64);
                while sent < 1000 {
                    assert!(win.room(w) > 0 || !wire.is_empty(), "stalled at w={w}");
                    for _ in 0..win.room(w) {
                        win.on_send();
                        sent += 1;
                        wire.push_back(sent);
                    }
                    assert!(win.outstanding() <= w);
                    // Deliver one frame (or refuse it), credits go straight back.
                    let Some(f) = wire.pop_front() else { continue };
                    if refuse_every > 0 && f % refuse_every == 0 {
                        refused += 1;
                        assert!(win.on_refused());
                    } else {
                        delivered += 1;
                        if let Some(n) = rx.on_frame(every) {
                            assert!(win.on_credit(n));
                        }
                    }
                }
                while let Some(f) = wire.pop_front() {
                    if refuse_every > 0 && f % refuse_every == 0 {
                        refused += 1;
                    } else {
                        delivered += 1;
                    }
                }
                assert_eq!(sent, delivered + refused, "w={w}");
            }
        }
    }

    #[test]
    fn sequence_check() {
        let mut s = SeqCheck::default();
        assert_eq!(s.on_frame(0), Order::Next);
        assert_eq!(s.on_frame(1), Order::Next);
        assert_eq!(s.on_frame(4), Order::Skipped(2));
        assert_eq!(s.on_frame(3), Order::Behind);
        assert_eq!(s.on_frame(5), Order::Next);
        let mut w = SeqCheck { next: u32::MAX };
        assert_eq!(w.on_frame(u32::MAX), Order::Next);
        assert_eq!(w.on_frame(0), Order::Next);
    }

    #[test]
    fn payloads_and_ids_round_trip() {
        let mut p = data_fields(123_456_789, 77, 9).to_vec();
        p.extend_from_slice(&[0xA5; 48]);
        assert_eq!(decode_data(&p), Some((123_456_789, 77, 9)));
        assert_eq!(decode_data(&p[..15]), None);
        assert_eq!(decode_credit(&credit_payload(5, 32)), Some((5, 32)));
        assert_eq!(decode_credit(&p), None);
        for (k, seq) in [(0, 0), (0, u32::MAX), (8999, 12), (u32::MAX - 1, 3)] {
            let id = data_id(k, seq);
            assert_ne!(id, 0);
            assert_eq!(stream_of_id(id), Some(k));
        }
        assert_eq!(stream_of_id(0), None);
        assert_eq!(stream_of_id(7), None);
    }
}
