//! Bounds named in the configuration, each with its documented behaviour
//! when hit (docs/PROTOCOL.md, "Choices where the contract is silent").

mod common;

use common::tcp::assert_error;
use common::*;
use std::time::Duration;

/// A shard at `max_connections_per_shard` closes new connections at once,
/// and the connections it holds keep working.
#[test]
fn connections_beyond_the_shard_limit_are_closed_and_the_others_keep_working() {
    let gw = Gateway::start("[runtime]\nshards = 1\n[limits]\nmax_connections_per_shard = 2");
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let mut ca = TcpClient::hello(gw.tcp_addr(), a);
    let mut cb = TcpClient::hello(gw.tcp_addr(), b);
    let mut extra = TcpClient::connect(gw.tcp_addr());
    extra.expect_closed();
    ca.data(b, 1, b"still here");
    let got = cb.expect_frame(kind::DATA, 1);
    assert_eq!(got.payload, b"still here");
    assert_eq!(got.src, a);
}

/// A HELLO whose owner shard is full is refused with auth_failed.
#[test]
fn hello_handed_to_a_full_owner_shard_gets_auth_failed() {
    // Two shards, one connection each at most. Fill shard 1 with a
    // registered address; then a second address owned by shard 1 must be
    // refused whichever shard accepts it (a connection accepted on shard 1
    // is refused at accept time, one accepted on shard 0 at handover).
    let gw = Gateway::start("[runtime]\nshards = 2\n[limits]\nmax_connections_per_shard = 1");
    let first = addr_on_shard(1, 2);
    // Shard 1 is empty, so this registers whichever shard accepts it.
    let mut holder = TcpClient::hello(gw.tcp_addr(), first);
    let second = addr_on_shard(1, 2);
    let mut auth_failed = 0;
    for attempt in 0..20u64 {
        let mut c = TcpClient::connect(gw.tcp_addr());
        let hello = Frame::new(kind::HELLO, second, NIL, attempt, Vec::new()).encode();
        if c.write_bytes(&hello).is_err() {
            // Closed at accept by the full shard before the HELLO went out.
            continue;
        }
        match c.poll(Duration::from_secs(2)) {
            Event::Frame(f) => {
                assert_error(&f, code::AUTH_FAILED, attempt);
                c.expect_closed();
                auth_failed += 1;
            }
            Event::Closed => {}
            Event::Silent => panic!("a HELLO for a full shard got no answer"),
        }
    }
    // Connections accepted by the other shard (about half) are handed over
    // and refused with auth_failed.
    assert!(auth_failed > 0, "no HELLO was refused at handover");
    holder.heartbeat(9);
}

/// DATA to another shard beyond `channel_pending_bytes` is answered with
/// slow_consumer (never stalled, never lost silently); smaller frames still
/// pass.
#[test]
fn data_beyond_the_cross_shard_byte_bound_gets_slow_consumer() {
    let gw = Gateway::start("[runtime]\nshards = 2\n[limits]\nchannel_pending_bytes = 1000");
    let src = addr_on_shard(0, 2);
    let dst = addr_on_shard(1, 2);
    let mut receiver = TcpClient::hello(gw.tcp_addr(), dst);
    let mut sender = TcpClient::hello(gw.tcp_addr(), src);
    sender.data(dst, 7, &[0x55; 2000]);
    sender.expect_error(code::SLOW_CONSUMER, 7);
    sender.data(dst, 8, b"small");
    let got = receiver.expect_frame(kind::DATA, 8);
    assert_eq!(got.payload, b"small");
    receiver.expect_silence(Duration::from_millis(200));
}
