//! The per-connection footprint of an idle registered connection, built
//! without sockets so that a million fit on a host that allows 20,000 open
//! files: the connection record (with a stand-in of the glommio stream's
//! size), its routing entry, its wheel entry and a parked task of the
//! reader's size. What this leaves out is the heap record glommio keeps per
//! armed socket poll; the real measurement at ~19,000 sockets includes it
//! (see BENCHMARKS.md).

use super::conn::{Conn, Slab, State, Wire};
use super::state::Route;
use super::wheel::Wheel;
use crate::routing::ConnKey;
use glommio::net::TcpStream;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use uuid::Uuid;

/// Bytes of the glommio stream value inside a connection record.
pub const STREAM_BYTES: usize = std::mem::size_of::<TcpStream>();

/// A stand-in for the glommio stream, of the same size.
pub type FakeStream = [u8; STREAM_BYTES];

/// What the simulation measured.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub connections: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    /// `size_of` of the connection record.
    pub conn_record_bytes: usize,
    /// `size_of` of the parked reader future.
    pub reader_future_bytes: usize,
}

impl Footprint {
    pub fn bytes_per_connection(&self) -> f64 {
        (self.rss_after.saturating_sub(self.rss_before)) as f64 / self.connections as f64
    }
}

/// A future that never completes, of the reader's size: what an idle
/// connection's task holds while it waits for input.
struct Parked<const N: usize> {
    _state: [u8; N],
}

impl<const N: usize> Future for Parked<N> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// Resident set size of this process, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// Must run inside a glommio executor (it spawns the parked tasks there).
/// Builds `n` registered idle connections and returns the RSS they added.
pub fn idle_footprint(n: usize, reader_future_bytes: usize) -> (Footprint, Population) {
    assert!(reader_future_bytes <= 256, "raise the Parked size table");
    let rss_before = rss_bytes();
    let mut slab: Slab<Conn<FakeStream>> = Slab::default();
    let mut table: HashMap<Uuid, Route> = HashMap::new();
    let mut wheel = Wheel::new(100, Wheel::slots_for(90_000, 100), 0);
    let mut tasks = Vec::with_capacity(0);
    for i in 0..n {
        let mut conn = Conn::new([0u8; STREAM_BYTES], Wire::Tcp, 0);
        conn.state = State::Open;
        conn.addr = Uuid::new_v4();
        // An idle connection holds no output buffer: it went back to the
        // shard's pool when the WELCOME was flushed.
        let addr = conn.addr;
        let key: ConnKey = slab.insert(conn);
        table.insert(
            addr,
            Route {
                conn: key,
                since_us: i as u64,
            },
        );
        let tick = wheel.insert(key, 90_000 + (i as u64 % 90_000));
        if let Some(c) = slab.get_mut(key) {
            c.wheel_tick = tick;
        }
        tasks.push(spawn_parked(reader_future_bytes));
    }
    let rss_after = rss_bytes();
    let fp = Footprint {
        connections: n,
        rss_before,
        rss_after,
        conn_record_bytes: std::mem::size_of::<Conn<FakeStream>>(),
        reader_future_bytes,
    };
    // The vector of task handles is the simulation's own bookkeeping; it
    // grows inside the measured window (8 bytes each), a deliberate
    // overestimate rather than an allocation made up front and left out.
    let population = Population {
        _slab: slab,
        _table: table,
        _wheel: wheel,
        _tasks: tasks,
    };
    (fp, population)
}

/// The simulated connections; they live until this is dropped.
pub struct Population {
    _slab: Slab<Conn<FakeStream>>,
    _table: HashMap<Uuid, Route>,
    _wheel: Wheel,
    _tasks: Vec<glommio::task::JoinHandle<()>>,
}

fn spawn_parked(bytes: usize) -> glommio::task::JoinHandle<()> {
    // Round the reader's size up to a multiple of 16.
    match bytes.div_ceil(16) {
        0 | 1 => glommio::spawn_local(Parked::<16> { _state: [0; 16] }).detach(),
        2 => glommio::spawn_local(Parked::<32> { _state: [0; 32] }).detach(),
        3 => glommio::spawn_local(Parked::<48> { _state: [0; 48] }).detach(),
        4 => glommio::spawn_local(Parked::<64> { _state: [0; 64] }).detach(),
        5..=6 => glommio::spawn_local(Parked::<96> { _state: [0; 96] }).detach(),
        7..=8 => glommio::spawn_local(Parked::<128> { _state: [0; 128] }).detach(),
        9..=12 => glommio::spawn_local(Parked::<192> { _state: [0; 192] }).detach(),
        _ => glommio::spawn_local(Parked::<256> { _state: [0; 256] }).detach(),
    }
}
