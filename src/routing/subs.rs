//! Who watches which address. Lives on the owner shard of the watched
//! address; a subscriber may sit on any shard.

use super::ConnKey;
use std::collections::HashMap;
use uuid::Uuid;

/// A subscriber: its shard and its connection there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubRef {
    pub shard: u16,
    pub conn: ConnKey,
}

#[derive(Default)]
pub struct Subscriptions {
    by_watched: HashMap<Uuid, Vec<SubRef>>,
    total: usize,
}

impl Subscriptions {
    /// Adds `sub` as a watcher of `watched`; idempotent.
    pub fn add(&mut self, watched: Uuid, sub: SubRef) {
        let list = self.by_watched.entry(watched).or_default();
        if !list.contains(&sub) {
            list.push(sub);
            self.total += 1;
        }
    }

    /// Removes `sub`; returns whether it was there.
    pub fn remove(&mut self, watched: &Uuid, sub: SubRef) -> bool {
        let Some(list) = self.by_watched.get_mut(watched) else {
            return false;
        };
        let Some(i) = list.iter().position(|s| *s == sub) else {
            return false;
        };
        list.swap_remove(i);
        self.total -= 1;
        if list.is_empty() {
            self.by_watched.remove(watched);
        }
        true
    }

    pub fn watchers(&self, watched: &Uuid) -> &[SubRef] {
        self.by_watched
            .get(watched)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(shard: u16, slot: u32) -> SubRef {
        SubRef {
            shard,
            conn: ConnKey { slot, gen: 1 },
        }
    }

    #[test]
    fn add_is_idempotent_and_remove_cleans_up() {
        let mut s = Subscriptions::default();
        let w = Uuid::new_v4();
        s.add(w, sub(0, 1));
        s.add(w, sub(0, 1));
        s.add(w, sub(1, 1));
        assert_eq!(s.watchers(&w).len(), 2);
        assert_eq!(s.total(), 2);
        assert!(s.remove(&w, sub(0, 1)));
        assert!(!s.remove(&w, sub(0, 1)));
        assert!(s.remove(&w, sub(1, 1)));
        assert!(s.watchers(&w).is_empty());
        assert_eq!(s.total(), 0);
        assert!(s.by_watched.is_empty());
    }
}
