//! A hashed timing wheel for connection deadlines (handshake, heartbeat,
//! close linger). Sans-IO: time is passed in as milliseconds.
//!
//! Activity never touches the wheel: a connection's entry is only looked at
//! when its slot comes due, and the caller then either acts (the deadline
//! really passed) or schedules the entry again at the real deadline. A
//! connection thus costs one 12-byte entry, however often it talks.

use crate::routing::ConnKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub conn: ConnKey,
    /// The tick the entry was scheduled for; the caller compares it with the
    /// connection's own record to recognise stale entries.
    pub tick: u32,
}

pub struct Wheel {
    slots: Vec<Vec<Entry>>,
    tick_ms: u64,
    /// Next tick to expire.
    cursor: u64,
    len: usize,
}

impl Wheel {
    /// A wheel with `slots` slots of `tick_ms` each; deadlines further out than
    /// the span are parked in the last slot of the span and re-examined then.
    pub fn new(tick_ms: u64, slots: usize, now_ms: u64) -> Self {
        assert!(tick_ms > 0 && slots > 1);
        Wheel {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            tick_ms,
            cursor: now_ms / tick_ms,
            len: 0,
        }
    }

    /// Slots needed so that `longest_ms` fits in one turn.
    pub fn slots_for(longest_ms: u64, tick_ms: u64) -> usize {
        (longest_ms.div_ceil(tick_ms) as usize + 2).max(2)
    }

    /// Schedules `conn` at `deadline_ms` (rounded up to the next tick) and
    /// returns the tick it was filed under.
    pub fn insert(&mut self, conn: ConnKey, deadline_ms: u64) -> u32 {
        let span = self.slots.len() as u64 - 1;
        let tick = deadline_ms
            .div_ceil(self.tick_ms)
            .clamp(self.cursor, self.cursor + span - 1);
        let slot = (tick % self.slots.len() as u64) as usize;
        let entry = Entry {
            conn,
            tick: tick as u32,
        };
        self.slots[slot].push(entry);
        self.len += 1;
        entry.tick
    }

    /// Moves time to `now_ms`, appending every entry whose tick has come to
    /// `due` (a reused buffer). Returns how many were appended.
    pub fn expire(&mut self, now_ms: u64, due: &mut Vec<Entry>) -> usize {
        let target = now_ms / self.tick_ms;
        let before = due.len();
        // Never walk more than one turn: after a long stall every slot is due
        // once, and entries filed beyond it were clamped into the turn.
        let steps = (target + 1).saturating_sub(self.cursor);
        let steps = steps.min(self.slots.len() as u64);
        for _ in 0..steps {
            let slot = (self.cursor % self.slots.len() as u64) as usize;
            let bucket = &mut self.slots[slot];
            self.len -= bucket.len();
            due.append(bucket);
            self.cursor += 1;
        }
        if self.cursor <= target {
            self.cursor = target + 1;
        }
        due.len() - before
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Milliseconds at the start of `tick`.
    pub fn tick_start_ms(&self, tick: u32) -> u64 {
        tick as u64 * self.tick_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32) -> ConnKey {
        ConnKey { slot, gen: 0 }
    }

    fn due_at(w: &mut Wheel, now: u64) -> Vec<u32> {
        let mut v = Vec::new();
        w.expire(now, &mut v);
        v.iter().map(|e| e.conn.slot).collect()
    }

    #[test]
    fn entries_fire_at_their_tick_not_before() {
        let mut w = Wheel::new(100, 20, 0);
        w.insert(key(1), 250);
        w.insert(key(2), 1000);
        assert!(due_at(&mut w, 200).is_empty());
        assert_eq!(due_at(&mut w, 300), vec![1]);
        assert!(due_at(&mut w, 900).is_empty());
        assert_eq!(due_at(&mut w, 1000), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn far_deadlines_are_parked_within_one_turn() {
        let mut w = Wheel::new(10, 5, 0);
        let tick = w.insert(key(1), 100_000);
        assert!(tick <= 4, "{tick}");
        // It comes due early; the caller re-files it at the real deadline.
        let mut now = 0;
        let mut seen = false;
        while now <= 50 {
            if !due_at(&mut w, now).is_empty() {
                seen = true;
            }
            now += 10;
        }
        assert!(seen);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_expire() {
        let mut w = Wheel::new(10, 8, 1000);
        w.insert(key(7), 5);
        assert_eq!(due_at(&mut w, 1000), vec![7]);
    }

    #[test]
    fn a_long_stall_fires_everything_once() {
        let mut w = Wheel::new(10, 8, 0);
        for i in 0..8 {
            w.insert(key(i), i as u64 * 10);
        }
        let mut fired = due_at(&mut w, 1_000_000);
        fired.sort();
        assert_eq!(fired, (0..8).collect::<Vec<_>>());
        assert!(w.is_empty());
        // Time keeps moving normally after the stall.
        w.insert(key(9), 1_000_020);
        assert!(due_at(&mut w, 1_000_010).is_empty());
        assert_eq!(due_at(&mut w, 1_000_020), vec![9]);
    }

    #[test]
    fn slots_for_covers_the_longest_timeout() {
        assert_eq!(Wheel::slots_for(90_000, 100), 902);
        assert_eq!(Wheel::slots_for(0, 100), 2);
    }
}
