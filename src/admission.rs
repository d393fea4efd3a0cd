//! Admission of new connections, shared by every shard: the number of open
//! connections in total and per source IP, and the rate of new connections
//! per source IP.
//!
//! Shards accept on their own listeners (SO_REUSEPORT spreads one source's
//! connections over all of them), so the counts must be shared. They are
//! atomics, touched once per accept and once per close, never per message;
//! no lock is taken.
//!
//! Per-IP state lives in two fixed tables indexed by two keyed hashes of the
//! address (a count-min sketch): a table never grows, whatever the number of
//! sources, and an address's figure is the smaller of its two entries. A
//! collision can only make a limit stricter for the colliding addresses,
//! never looser, and with 65,536 entries per table two addresses share both
//! entries rarely. The tables are allocated zeroed and untouched pages cost
//! no memory, so a gateway whose clients all come from exempt addresses pays
//! nothing for them.
//!
//! The rate is a GCRA (a token bucket kept as one "theoretical arrival time"
//! per entry): `rate` new connections per second, `burst` at once.

use crate::config::Limits;
use ipnet::IpNet;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Entries of each per-IP table (a power of two).
const TABLE_ENTRIES: usize = 1 << 16;

/// Why a new connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// Its source has `max_connections_per_ip` open.
    PerIp,
    /// Its source opened more than `new_connections_per_ip_per_s` (beyond the
    /// burst).
    Rate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "connection limit reached",
            Refusal::PerIp => "connection limit per source address reached",
            Refusal::Rate => "too many new connections from one source address",
        }
    }
}

/// What an admitted connection holds, given back when it closes: 0 for a
/// source that is not counted (exempt, or no per-IP limit), else the
/// address's hash (never 0).
pub type Ticket = u32;

pub struct Admission {
    open: AtomicUsize,
    max_total: usize,
    max_per_ip: u32,
    /// GCRA emission interval and burst tolerance, in microseconds; 0 = no
    /// rate limit.
    interval_us: u64,
    tolerance_us: u64,
    exempt: Vec<IpNet>,
    hasher: RandomState,
    epoch: Instant,
    counts: Option<Tables<AtomicU32>>,
    arrivals: Option<Tables<AtomicU64>>,
}

/// Two tables, one per hash.
struct Tables<A> {
    a: Box<[A]>,
    b: Box<[A]>,
}

impl<A: ZeroedAtomic> Tables<A> {
    fn new() -> Self {
        Tables {
            a: A::zeroed_slice(TABLE_ENTRIES),
            b: A::zeroed_slice(TABLE_ENTRIES),
        }
    }

    fn pair(&self, ticket: Ticket) -> [&A; 2] {
        let mask = TABLE_ENTRIES as u32 - 1;
        [
            &self.a[(ticket & mask) as usize],
            &self.b[((ticket >> 16) & mask) as usize],
        ]
    }
}

/// Atomics that are valid when all their bytes are zero.
trait ZeroedAtomic: Sized {
    fn zeroed_slice(n: usize) -> Box<[Self]> {
        let layout = std::alloc::Layout::array::<Self>(n).expect("table size fits");
        // SAFETY: `layout` has a non-zero size; an all-zero atomic integer is
        // a valid value, and the box takes ownership of exactly this
        // allocation with the same layout.
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout).cast::<Self>();
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n))
        }
    }
}

impl ZeroedAtomic for AtomicU32 {}
impl ZeroedAtomic for AtomicU64 {}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        let rate = limits.new_connections_per_ip_per_s;
        let (interval_us, tolerance_us) = if rate == 0 {
            (0, 0)
        } else {
            let interval = (1_000_000 / u64::from(rate)).max(1);
            let burst = u64::from(limits.new_connections_per_ip_burst.max(1));
            (interval, interval * (burst - 1))
        };
        Admission {
            open: AtomicUsize::new(0),
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            interval_us,
            tolerance_us,
            exempt: limits.limit_exempt.clone(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            counts: (limits.max_connections_per_ip > 0).then(Tables::new),
            arrivals: (rate > 0).then(Tables::new),
        }
    }

    /// Connections open now (admitted and not yet released).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether any per-IP limit is set (when none is, the caller need not
    /// look up the peer's address).
    pub fn per_ip_limits(&self) -> bool {
        self.counts.is_some() || self.arrivals.is_some()
    }

    /// Admits a new connection from `peer` (None when its address is
    /// unknown: counted in the total only). The ticket goes back to
    /// [`Admission::release`] when the connection closes.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<Ticket, Refusal> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        // An IPv4 client on an IPv6 listener is the same source as on IPv4.
        let peer = peer.map(|ip| ip.to_canonical());
        let ticket = match peer {
            Some(ip) if self.per_ip_limits() && !self.is_exempt(ip) => self.ticket(ip),
            _ => return Ok(0),
        };
        if let Some(arrivals) = &self.arrivals {
            if !self.arrive(arrivals.pair(ticket)) {
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::Rate);
            }
        }
        if let Some(counts) = &self.counts {
            let pair = counts.pair(ticket);
            let now = pair.map(|c| c.fetch_add(1, Ordering::Relaxed) + 1);
            if now[0].min(now[1]) > self.max_per_ip {
                for c in pair {
                    c.fetch_sub(1, Ordering::Relaxed);
                }
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::PerIp);
            }
        }
        Ok(ticket)
    }

    /// A connection admitted with `ticket` closed.
    pub fn release(&self, ticket: Ticket) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if ticket == 0 {
            return;
        }
        if let Some(counts) = &self.counts {
            for c in counts.pair(ticket) {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|net| net.contains(&ip))
    }

    fn ticket(&self, ip: IpAddr) -> Ticket {
        let h = self.hasher.hash_one(ip);
        ((h ^ (h >> 32)) as u32).max(1)
    }

    /// GCRA over both entries: the connection is admitted when either entry
    /// is within its burst (an address's rate is at most the smaller of its
    /// entries'), and then counted in both, each capped so that a long flood
    /// does not push an entry further than one burst into the future.
    fn arrive(&self, pair: [&AtomicU64; 2]) -> bool {
        let now = self.epoch.elapsed().as_micros() as u64 + 1;
        let within = |tat: u64| tat.max(now) - now <= self.tolerance_us;
        if !pair.iter().any(|e| within(e.load(Ordering::Relaxed))) {
            return false;
        }
        let cap = now + self.tolerance_us + self.interval_us;
        for e in pair {
            let _ = e.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some((tat.max(now) + self.interval_us).min(cap))
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: u32, rate: u32, burst: u32) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            new_connections_per_ip_per_s: rate,
            new_connections_per_ip_burst: burst,
            limit_exempt: vec!["127.0.0.0/8".parse().unwrap()],
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn total_limit_counts_every_source_and_frees_on_release() {
        let a = Admission::new(&limits(2, 0, 0, 0));
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let _t2 = a.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.2")), Err(Refusal::Total));
        assert_eq!(a.open(), 2);
        a.release(t1);
        assert!(a.admit(None).is_ok());
    }

    #[test]
    fn per_ip_limit_is_per_address_and_exempt_addresses_are_not_counted() {
        let a = Admission::new(&limits(100, 3, 0, 0));
        let tickets: Vec<_> = (0..3).map(|_| a.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(a.admit(ip("10.0.0.1")), Err(Refusal::PerIp));
        assert!(a.admit(ip("10.0.0.2")).is_ok());
        for _ in 0..10 {
            assert_eq!(a.admit(ip("127.0.0.5")), Ok(0));
        }
        // Mapped IPv4 is the same source as IPv4.
        assert_eq!(a.admit(ip("::ffff:10.0.0.1")), Err(Refusal::PerIp));
        a.release(tickets[0]);
        assert!(a.admit(ip("10.0.0.1")).is_ok());
        assert_eq!(a.open(), 3 + 1 + 10);
    }

    #[test]
    fn rate_allows_a_burst_then_refuses_until_time_passes() {
        let a = Admission::new(&limits(1000, 0, 20, 5));
        let mut admitted = 0;
        for _ in 0..50 {
            if let Ok(t) = a.admit(ip("192.0.2.7")) {
                admitted += 1;
                a.release(t);
            }
        }
        // The burst of 5, plus at most one more if the loop crossed an
        // interval (50 ms).
        assert!((5..=6).contains(&admitted), "admitted {admitted}");
        assert_eq!(a.admit(ip("192.0.2.7")), Err(Refusal::Rate));
        // Another source is not affected.
        assert!(a.admit(ip("192.0.2.8")).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(a.admit(ip("192.0.2.7")).is_ok());
        assert_eq!(a.open(), 2);
    }

    #[test]
    fn refused_connections_hold_nothing() {
        let a = Admission::new(&limits(1000, 1, 0, 0));
        let t = a.admit(ip("198.51.100.1")).unwrap();
        for _ in 0..100 {
            assert_eq!(a.admit(ip("198.51.100.1")), Err(Refusal::PerIp));
        }
        assert_eq!(a.open(), 1);
        a.release(t);
        assert_eq!(a.open(), 0);
        assert!(a.admit(ip("198.51.100.1")).is_ok());
    }

    #[test]
    fn tickets_are_never_zero_for_counted_sources() {
        let a = Admission::new(&limits(1 << 20, 1 << 20, 0, 0));
        for i in 0..10_000u32 {
            let t = a.admit(Some(IpAddr::from(i.to_be_bytes()))).unwrap();
            assert_ne!(t, 0);
        }
    }
}
