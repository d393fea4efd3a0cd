//! Connection handles and the bounded memory of offline addresses.

use std::collections::HashMap;
use uuid::Uuid;

/// A connection inside one shard: its slot and the slot's generation, so a
/// message for a connection that has gone (and whose slot was reused) is
/// recognised and dropped instead of reaching a stranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub slot: u32,
    pub gen: u32,
}

/// When each recently offline address went offline, for PRESENCE `at_us`.
/// Bounded: when full, the oldest half is forgotten (their `at_us` reads 0,
/// as for an address never seen), which keeps memory flat under churn.
pub struct PresenceMemory {
    last_seen: HashMap<Uuid, (u64, u64)>,
    seq: u64,
    cap: usize,
}

impl PresenceMemory {
    pub fn new(cap: usize) -> Self {
        PresenceMemory {
            last_seen: HashMap::new(),
            seq: 0,
            cap,
        }
    }

    pub fn went_offline(&mut self, addr: Uuid, at_us: u64) {
        if self.cap == 0 {
            return;
        }
        if self.last_seen.len() >= self.cap && !self.last_seen.contains_key(&addr) {
            self.forget_oldest_half();
        }
        self.seq += 1;
        self.last_seen.insert(addr, (at_us, self.seq));
    }

    pub fn came_online(&mut self, addr: &Uuid) {
        self.last_seen.remove(addr);
    }

    /// Unix µs at which `addr` went offline, 0 if not remembered.
    pub fn offline_since(&self, addr: &Uuid) -> u64 {
        self.last_seen.get(addr).map(|&(at, _)| at).unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }

    fn forget_oldest_half(&mut self) {
        let cut = self.seq - (self.last_seen.len() as u64) / 2;
        self.last_seen.retain(|_, &mut (_, seq)| seq > cut);
        self.last_seen.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_online_again() {
        let mut m = PresenceMemory::new(10);
        let a = Uuid::new_v4();
        assert_eq!(m.offline_since(&a), 0);
        m.went_offline(a, 42);
        assert_eq!(m.offline_since(&a), 42);
        m.came_online(&a);
        assert_eq!(m.offline_since(&a), 0);
    }

    #[test]
    fn stays_bounded_and_keeps_the_newest() {
        let mut m = PresenceMemory::new(100);
        let addrs: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
        for (i, a) in addrs.iter().enumerate() {
            m.went_offline(*a, i as u64 + 1);
            assert!(m.len() <= 100);
        }
        assert_eq!(m.offline_since(&addrs[999]), 1000);
        assert_eq!(m.offline_since(&addrs[0]), 0);
    }
}
