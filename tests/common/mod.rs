//! Black-box harness for the gateway's integration tests.
//!
//! The tests talk to a real `gateway` process over real sockets and check it
//! against `PROTOCOL.md` alone. Nothing here uses the gateway's own codec: a
//! shared codec would hide a misreading of the protocol on both sides at once.
//! The only thing taken from the library is `routing::owner_shard`, so that a
//! test can pick addresses that land on the shards it wants.
//!
//! # Layout
//!
//! - `gateway.rs`: spawns the binary with a temporary config on port 0, waits
//!   for the ready line, drains its logs, kills it on drop.
//! - `frame.rs`: the binary frame codec, kinds, error codes and payloads.
//! - `tcp.rs`: a blocking TCP client with a deadline on every read and write.
//! - `tls.rs`: a certificate made at test time and a client stream that is
//!   plain TCP or TLS, used by both clients below.
//! - `ws.rs`: a WebSocket client over tungstenite, binary and JSON text modes.
//! - `json.rs`: JSON field helpers and a small base64 codec.
//! - `mariadb.rs`: the `mysql` command line client, a MariaDB server of the
//!   test's own for fault injection, temporary directories.
//!
//! Every network call has a timeout, every loop has a bound, and every socket
//! is on 127.0.0.1.

// Each test binary uses a different subset of this harness, so some items and
// re-exports are unused in any one of them.
#![allow(dead_code, unused_imports)]

pub mod frame;
pub mod gateway;
pub mod json;
pub mod mariadb;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

pub use frame::{code, kind, Frame, Presence, State, TimeResp, Welcome, NIL};
pub use gateway::Gateway;
pub use tcp::{Event, TcpClient};
pub use ws::{WsClient, WsEvent};

/// How long a test waits for a frame it expects.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// How far a gateway timestamp may be from the test's own clock. Both run on
/// the same machine; the slack covers a gateway that caches its clock per tick
/// and a loaded CI machine.
pub const CLOCK_SLACK_US: u64 = 2_000_000;

/// Upper bound on random draws when looking for an address on a given shard.
const ADDRESS_DRAWS_MAX: usize = 100_000;

/// Unix time in microseconds, the unit of every time in the protocol.
pub fn now_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970");
    u64::try_from(since.as_micros()).expect("time fits in u64")
}

/// Asserts that a gateway timestamp lies within `[before, after]`, widened by
/// the clock slack.
pub fn assert_time_between(what: &str, value_us: u64, before_us: u64, after_us: u64) {
    assert!(
        value_us + CLOCK_SLACK_US >= before_us && value_us <= after_us + CLOCK_SLACK_US,
        "{what} = {value_us} us is not near the test's clock window [{before_us}, {after_us}]"
    );
}

/// A random v4 address whose owner shard is `shard` out of `shards`.
pub fn addr_on_shard(shard: usize, shards: usize) -> Uuid {
    assert!(shard < shards, "shard {shard} out of {shards}");
    for _ in 0..ADDRESS_DRAWS_MAX {
        let addr = Uuid::new_v4();
        if uring_gateway::routing::owner_shard(&addr, shards) == shard {
            return addr;
        }
    }
    panic!("no address on shard {shard} of {shards} after {ADDRESS_DRAWS_MAX} draws");
}

/// `n` random bytes. v4 UUIDs come from the OS random source, which is all a
/// test needs and saves a dependency.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

/// A random correlation id below 2^53, so the same value is safe in JSON.
pub fn random_id() -> u64 {
    let bytes = random_bytes(8);
    let value = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    (value >> 11).max(1)
}
