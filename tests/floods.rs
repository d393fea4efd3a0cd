//! Floods and abuse: connection limits per source address and in total, the
//! new-connection rate per source, the DATA rate per connection, slow
//! handshakes (slowloris), and a thousand garbage connections. In each case
//! the offender is limited and every other client keeps being served.
//!
//! Loopback is exempt from the per-address limits by default; these tests
//! clear the exemption and play several hosts with source addresses
//! 127.0.0.x.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::frame::header;
use common::{code, kind, random_bytes, Event, Frame, Gateway, TcpClient, NIL};
use uuid::Uuid;

fn host(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Connects from `source` and registers; None if the gateway closed the
/// connection instead of answering the HELLO.
fn try_hello_from(gw: &Gateway, source: IpAddr) -> Option<TcpClient> {
    let mut c = TcpClient::try_connect_from(gw.tcp_addr(), source).ok()?;
    let me = Uuid::new_v4();
    let hello = Frame::new(kind::HELLO, me, NIL, 1, Vec::new()).encode();
    c.write_bytes(&hello).ok()?;
    match c.poll(Duration::from_secs(5)) {
        Event::Frame(f) => {
            assert_eq!(f.kind, kind::WELCOME, "unexpected answer to HELLO: {f:?}");
            c.addr = me;
            Some(c)
        }
        Event::Closed => None,
        Event::Silent => panic!("HELLO from {source} neither answered nor closed"),
    }
}

/// Two fresh clients from `source` trade a DATA frame.
fn assert_serves_from(gw: &Gateway, source: IpAddr, id: u64) {
    let mut a = try_hello_from(gw, source).expect("client a refused");
    let mut b = try_hello_from(gw, source).expect("client b refused");
    a.data(b.addr, id, b"still served");
    let got = b.expect_frame(kind::DATA, id);
    assert_eq!(got.payload, b"still served");
}

#[test]
fn one_source_at_its_connection_limit_is_refused_while_others_are_served() {
    let gw = Gateway::start(
        "[limits]\nlimit_exempt = []\nmax_connections_per_ip = 20\nnew_connections_per_ip_per_s = 0",
    );
    let flooder = host(3);
    let mut held: Vec<TcpClient> = (0..20)
        .map(|i| try_hello_from(&gw, flooder).unwrap_or_else(|| panic!("connection {i} refused")))
        .collect();
    // The flood goes on: every further connection is closed before any frame.
    for _ in 0..50 {
        assert!(
            try_hello_from(&gw, flooder).is_none(),
            "21st connection admitted"
        );
    }
    // Another host is not affected, and the held connections still work.
    assert_serves_from(&gw, host(2), 1);
    let dst = held[1].addr;
    held[0].data(dst, 2, b"x");
    held[1].expect_frame(kind::DATA, 2);
    // A closed connection frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if try_hello_from(&gw, flooder).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "a freed place was never reused");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn new_connections_from_one_source_are_rate_limited_while_others_are_served() {
    let gw = Gateway::start(
        "[limits]\nlimit_exempt = []\nnew_connections_per_ip_per_s = 2\n\
         new_connections_per_ip_burst = 10",
    );
    let flooder = host(4);
    let mut admitted = Vec::new();
    let started = Instant::now();
    for _ in 0..100 {
        if let Some(c) = try_hello_from(&gw, flooder) {
            admitted.push(c);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The burst, plus two per second of the loop's own time.
    let most = 10 + (secs * 2.0).ceil() as usize + 1;
    assert!(
        (10..=most).contains(&admitted.len()),
        "{} of 100 admitted in {secs:.1} s",
        admitted.len()
    );
    assert_serves_from(&gw, host(5), 1);
    // Admitted connections are served normally.
    let dst = admitted[1].addr;
    admitted[0].data(dst, 2, b"y");
    admitted[1].expect_frame(kind::DATA, 2);
}

#[test]
fn total_connection_limit_spans_every_shard() {
    let gw = Gateway::start("[runtime]\nshards = 2\n[limits]\nmax_connections = 4");
    let held: Vec<TcpClient> = (0..4)
        .map(|_| TcpClient::hello(gw.tcp_addr(), Uuid::new_v4()))
        .collect();
    for _ in 0..10 {
        assert!(
            try_hello_from(&gw, host(1)).is_none(),
            "5th connection admitted"
        );
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_hello_from(&gw, host(1)).is_none() {
        assert!(
            Instant::now() < deadline,
            "closed connections were not released"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn data_beyond_the_per_connection_rate_gets_slow_consumer_and_the_connection_stays() {
    let gw = Gateway::start("[limits]\nmax_data_frames_per_s = 10");
    let mut receiver = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let mut sender = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    let mut burst = Vec::new();
    for id in 1..=30u64 {
        burst
            .extend(Frame::new(kind::DATA, sender.addr, receiver.addr, id, b"d".to_vec()).encode());
    }
    sender.send_bytes(&burst);
    let mut refused = Vec::new();
    while let Event::Frame(f) = sender.poll(Duration::from_millis(500)) {
        common::tcp::assert_error(&f, code::SLOW_CONSUMER, f.id);
        refused.push(f.id);
    }
    let mut delivered = Vec::new();
    while let Event::Frame(f) = receiver.poll(Duration::from_millis(500)) {
        assert_eq!(f.kind, kind::DATA);
        delivered.push(f.id);
    }
    // 10 per second: the burst may straddle one second boundary.
    assert!(
        (10..=20).contains(&delivered.len()),
        "delivered {delivered:?}"
    );
    assert_eq!(
        delivered.len() + refused.len(),
        30,
        "every frame delivered or refused"
    );
    let mut all: Vec<u64> = delivered.iter().chain(&refused).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=30).collect::<Vec<_>>());
    // Delivered frames kept their order.
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
    // The next second the sender may send again.
    thread::sleep(Duration::from_millis(1100));
    sender.data(receiver.addr, 31, b"later");
    receiver.expect_frame(kind::DATA, 31);
    sender.heartbeat(32);
}

/// A WebSocket upgrade sent one byte every 100 ms never completes; the
/// gateway closes it at the handshake timeout, and serves others meanwhile.
#[test]
fn slowloris_websocket_upgrade_is_closed_at_the_handshake_timeout() {
    let gw = Gateway::start("[timeouts]\nhandshake_timeout_ms = 1000");
    let mut slow = TcpStream::connect(gw.ws_addr()).expect("connect");
    slow.set_nodelay(true).unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nX-Padding: {}\r\n",
        gw.ws_addr(),
        "a".repeat(200)
    );
    let started = Instant::now();
    let mut closed_after = None;
    for byte in request.bytes() {
        if slow.write_all(&[byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(1) {
            // Meanwhile a normal client is served.
            let mut c = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
            c.heartbeat(1);
        }
        thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let closed_after = closed_after.expect("slow upgrade still open after 6 s");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}"
    );
}

/// A HELLO header sent one byte every 100 ms: `ERROR timeout` at the
/// handshake timeout, then closed.
#[test]
fn slowloris_hello_on_tcp_is_closed_at_the_handshake_timeout() {
    let gw = Gateway::start("[timeouts]\nhandshake_timeout_ms = 1000");
    let mut slow = TcpClient::connect(gw.tcp_addr());
    let hello = header(1, kind::HELLO, 0, 0, Uuid::new_v4(), NIL, 9);
    let started = Instant::now();
    for byte in &hello[..40] {
        slow.send_bytes(&[*byte]);
        thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    slow.expect_error_then_close(code::TIMEOUT, 0);
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// A thousand connections sending garbage of every kind (random bytes,
/// headers that promise large payloads, a valid HELLO then garbage, huge
/// HTTP requests on the WebSocket port), 100 at a time. After they are gone
/// the gateway serves as before and its memory has come back close to where
/// it was.
#[test]
fn a_thousand_garbage_connections_leave_the_gateway_serving_at_the_same_memory() {
    let gw = Gateway::start("");
    // Warm up: buffers and tables that a first client allocates.
    assert_serves_from(&gw, host(1), 1);
    let before = gw.rss_kib();
    for wave in 0..10 {
        let mut vandals = Vec::new();
        for i in 0..100 {
            let n = wave * 100 + i;
            let target = if n % 5 == 4 {
                gw.ws_addr()
            } else {
                gw.tcp_addr()
            };
            let Ok(mut s) = TcpStream::connect(target) else {
                continue;
            };
            let bytes = match n % 5 {
                0 => random_bytes(1 + n % 4000),
                // Promises a 1 MiB payload, sends 100 bytes of it.
                1 => {
                    let mut b = header(1, kind::DATA, 0, 1 << 20, Uuid::new_v4(), NIL, 1).to_vec();
                    b.extend(random_bytes(100));
                    b
                }
                2 => {
                    let mut b =
                        Frame::new(kind::HELLO, Uuid::new_v4(), NIL, 1, Vec::new()).encode();
                    b.extend(random_bytes(500));
                    b
                }
                // A frame header cut short.
                3 => header(1, kind::HELLO, 0, 0, Uuid::new_v4(), NIL, 1)[..20].to_vec(),
                // An endless HTTP header on the WebSocket port.
                _ => {
                    let mut b = b"GET /ws HTTP/1.1\r\nX-Junk: ".to_vec();
                    b.extend(std::iter::repeat_n(b'j', 20_000));
                    b
                }
            };
            let _ = s.write_all(&bytes);
            vandals.push(s);
        }
        thread::sleep(Duration::from_millis(50));
        drop(vandals);
    }
    // Closing connections linger for at most `close_linger_ms` (2 s).
    thread::sleep(Duration::from_millis(2500));
    assert_serves_from(&gw, host(1), 2);
    let after = gw.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}
