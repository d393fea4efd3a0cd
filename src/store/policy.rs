//! When to commit a batch and how long to wait after a failure. Pure: no
//! I/O and no clock; the caller passes the time in milliseconds of whatever
//! monotonic clock it keeps, so every decision is unit-tested.

/// When to flush the queued writes: once `max_rows` are queued, or once the
/// oldest of them has waited `max_delay_ms`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_rows: usize,
    pub max_delay_ms: u64,
}

impl BatchPolicy {
    /// Whether to flush now: `rows` are queued, the oldest of them since
    /// `oldest_ms`, and it is `now_ms`.
    ///
    /// Nothing queued never flushes. Rows queued with no known age
    /// (`oldest_ms` is `None`) count as due: flushing early loses nothing,
    /// waiting with no deadline could wait forever.
    pub fn should_flush(&self, rows: usize, oldest_ms: Option<u64>, now_ms: u64) -> bool {
        match self.next_flush_at(rows, oldest_ms) {
            Some(at_ms) => at_ms <= now_ms,
            None => false,
        }
    }

    /// When to wake up next to flush (`None` when nothing is queued). A time
    /// at or before now means "flush now".
    pub fn next_flush_at(&self, rows: usize, oldest_ms: Option<u64>) -> Option<u64> {
        if rows == 0 {
            return None;
        }
        match oldest_ms {
            // A full batch is due since the moment its oldest row came in,
            // which is never later than now.
            Some(oldest) if rows >= self.max_rows => Some(oldest),
            Some(oldest) => Some(oldest.saturating_add(self.max_delay_ms)),
            None => Some(0),
        }
    }
}

/// Exponential backoff with a cap and no randomness: `initial_ms`, twice
/// that, four times that, ... up to `max_ms`, then `max_ms` until
/// [`Backoff::reset`]. Deterministic so the retry schedule is testable; one
/// gateway retrying one database has no herd to spread out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    /// `initial_ms` is raised to 1 (a zero delay would never grow) and
    /// `max_ms` to `initial_ms`.
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        let initial_ms = initial_ms.max(1);
        let max_ms = max_ms.max(initial_ms);
        Backoff {
            initial_ms,
            max_ms,
            next_ms: initial_ms,
        }
    }

    /// The delay before the next attempt; each call doubles the following
    /// one, up to the cap.
    pub fn next_delay_ms(&mut self) -> u64 {
        let delay_ms = self.next_ms;
        self.next_ms = delay_ms.saturating_mul(2).min(self.max_ms);
        delay_ms
    }

    /// After a success: the next failure waits `initial_ms` again.
    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BatchPolicy = BatchPolicy {
        max_rows: 512,
        max_delay_ms: 5,
    };

    #[test]
    fn nothing_queued_never_flushes() {
        assert!(!POLICY.should_flush(0, None, 1_000));
        assert!(!POLICY.should_flush(0, Some(0), 1_000));
        assert_eq!(POLICY.next_flush_at(0, None), None);
        assert_eq!(POLICY.next_flush_at(0, Some(10)), None);
    }

    #[test]
    fn flushes_on_rows() {
        assert!(POLICY.should_flush(512, Some(100), 100));
        assert!(POLICY.should_flush(600, Some(100), 100));
        assert!(!POLICY.should_flush(511, Some(100), 100));
        assert_eq!(POLICY.next_flush_at(512, Some(100)), Some(100));
    }

    #[test]
    fn flushes_on_delay_and_not_before() {
        assert!(!POLICY.should_flush(1, Some(100), 100));
        assert!(!POLICY.should_flush(1, Some(100), 104));
        assert!(POLICY.should_flush(1, Some(100), 105));
        assert!(POLICY.should_flush(1, Some(100), 10_000));
        assert_eq!(POLICY.next_flush_at(1, Some(100)), Some(105));
        assert_eq!(POLICY.next_flush_at(511, Some(100)), Some(105));
    }

    #[test]
    fn rows_without_an_age_are_due() {
        assert!(POLICY.should_flush(1, None, 0));
        assert_eq!(POLICY.next_flush_at(1, None), Some(0));
    }

    #[test]
    fn zero_delay_flushes_every_row_at_once() {
        let p = BatchPolicy {
            max_rows: 512,
            max_delay_ms: 0,
        };
        assert!(p.should_flush(1, Some(100), 100));
    }

    #[test]
    fn the_deadline_does_not_overflow() {
        assert_eq!(POLICY.next_flush_at(1, Some(u64::MAX)), Some(u64::MAX));
        assert!(!POLICY.should_flush(1, Some(u64::MAX), u64::MAX - 1));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new(100, 1_000);
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay_ms()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000, 1_000]);
    }

    #[test]
    fn backoff_reset_starts_over() {
        let mut b = Backoff::new(100, 1_000);
        b.next_delay_ms();
        b.next_delay_ms();
        b.reset();
        assert_eq!(b.next_delay_ms(), 100);
        assert_eq!(b.next_delay_ms(), 200);
    }

    #[test]
    fn backoff_degenerate_bounds() {
        let mut zero = Backoff::new(0, 0);
        assert_eq!(zero.next_delay_ms(), 1);
        assert_eq!(zero.next_delay_ms(), 1);
        let mut capped = Backoff::new(500, 100);
        assert_eq!(capped.next_delay_ms(), 500);
        assert_eq!(capped.next_delay_ms(), 500);
        let mut huge = Backoff::new(u64::MAX / 2 + 1, u64::MAX);
        huge.next_delay_ms();
        assert_eq!(huge.next_delay_ms(), u64::MAX);
        assert_eq!(huge.next_delay_ms(), u64::MAX);
    }
}
