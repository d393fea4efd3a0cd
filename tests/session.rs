//! Session rules: HELLO/WELCOME, heartbeats, time sync, the validation
//! order, and the handshake and heartbeat timeouts.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::frame::header;
use common::json::get_uuid;
use common::{
    assert_time_between, code, kind, now_us, Event, Frame, Gateway, Presence, TcpClient, WsClient,
    NIL,
};
use uuid::Uuid;

/// How early a timeout may fire, allowing for a coarse timer tick on the
/// gateway and the time our own connect took.
const TIMEOUT_EARLY_MS: u64 = 100;

/// Sends a frame and expects the connection to survive it, checked with a
/// HEARTBEAT round trip.
fn assert_still_open(client: &mut TcpClient, id: u64) {
    client.heartbeat(id);
}

#[test]
fn hello_gets_welcome_with_configured_limits() {
    let gw = Gateway::start(
        "[limits]\nmax_payload_bytes = 65536\n[timeouts]\nheartbeat_timeout_ms = 45000",
    );
    let me = Uuid::new_v4();
    let mut client = TcpClient::connect(gw.tcp_addr());
    let before = now_us();
    client.send(kind::HELLO, me, NIL, 0x0102_0304_0506_0708, b"");
    let welcome = client.recv();
    let after = now_us();

    assert_eq!(welcome.version, 1);
    assert_eq!(welcome.kind, kind::WELCOME);
    assert_eq!(welcome.flags, 0);
    assert_eq!(welcome.src, NIL);
    assert_eq!(welcome.dst, me);
    assert_eq!(welcome.id, 0x0102_0304_0506_0708);
    assert_eq!(welcome.payload.len(), 16);
    let fields = welcome.welcome();
    assert_eq!(fields.heartbeat_timeout_ms, 45_000);
    assert_eq!(fields.max_payload, 65_536);
    assert_time_between("server_time_us", fields.server_time_us, before, after);
}

#[test]
fn welcome_reports_default_limits() {
    let gw = Gateway::start("");
    let mut client = TcpClient::connect(gw.tcp_addr());
    let welcome = client.register(Uuid::new_v4());
    assert_eq!(welcome.heartbeat_timeout_ms, 90_000);
    assert_eq!(welcome.max_payload, 1_048_576);
}

#[test]
fn heartbeat_is_echoed_with_the_same_id() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    for id in [0, 1, 0xdead_beef, u64::MAX] {
        client.send(kind::HEARTBEAT, me, NIL, id, b"");
        let reply = client.recv();
        assert_eq!(reply.kind, kind::HEARTBEAT);
        assert_eq!(reply.src, NIL);
        assert_eq!(reply.dst, me);
        assert_eq!(reply.id, id);
        assert!(reply.payload.is_empty());
    }
}

#[test]
fn unknown_flag_bits_are_ignored() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    let mut frame = Frame::new(kind::HEARTBEAT, me, NIL, 41, Vec::new());
    frame.flags = 0x8001;
    client.send_frame(&frame);
    client.expect_frame(kind::HEARTBEAT, 41);
}

#[test]
fn frame_before_hello_gets_not_registered_and_connection_stays_open() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let peer = Uuid::new_v4();
    let mut client = TcpClient::connect(gw.tcp_addr());

    client.send(kind::HEARTBEAT, me, NIL, 5, b"");
    let error = client.expect_error(code::NOT_REGISTERED, 5);
    assert_eq!(error.dst, NIL, "dst before HELLO is nil");
    client.send(kind::DATA, me, peer, 6, b"early");
    client.expect_error(code::NOT_REGISTERED, 6);
    client.send(kind::TIME_REQ, me, NIL, 7, &1u64.to_be_bytes());
    client.expect_error(code::NOT_REGISTERED, 7);

    // Still open: HELLO now succeeds on the same connection.
    client.register(me);
    assert_still_open(&mut client, 8);
}

#[test]
fn time_req_gets_time_resp_with_t0_echoed() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    let t0: u64 = 0x0011_2233_4455_6677;
    let before = now_us();
    client.send(kind::TIME_REQ, me, NIL, 9, &t0.to_be_bytes());
    let reply = client.expect_frame(kind::TIME_RESP, 9);
    let after = now_us();
    assert_eq!(reply.src, NIL);
    assert_eq!(reply.dst, me);
    assert_eq!(reply.payload.len(), 24);
    let times = reply.time_resp();
    assert_eq!(times.t0, t0);
    assert!(times.t1 <= times.t2, "t1 {} > t2 {}", times.t1, times.t2);
    assert_time_between("t1", times.t1, before, after);
    assert_time_between("t2", times.t2, before, after);
}

#[test]
fn src_mismatch_is_answered_dropped_and_connection_kept() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let other = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    let mut peer = TcpClient::hello(gw.tcp_addr(), other);

    client.send(kind::HEARTBEAT, other, NIL, 11, b"");
    let error = client.expect_error(code::SRC_MISMATCH, 11);
    assert_eq!(error.dst, me);

    // A forged DATA is dropped: the peer's first frame is the honest one.
    client.send(kind::DATA, other, other, 12, b"forged");
    client.expect_error(code::SRC_MISMATCH, 12);
    client.data(other, 13, b"honest");
    let data = peer.recv();
    assert_eq!(data.kind, kind::DATA);
    assert_eq!(data.id, 13);
    assert_eq!(data.src, me);
    assert_eq!(data.payload, b"honest");

    assert_still_open(&mut client, 14);
}

#[test]
fn unknown_kind_gets_unknown_kind_and_connection_kept() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    client.send(0x55, me, NIL, 13, b"");
    let error = client.expect_error(code::UNKNOWN_KIND, 13);
    assert_eq!(error.dst, me);
    client.send(0x55, me, NIL, 14, b"some payload");
    client.expect_error(code::UNKNOWN_KIND, 14);
    assert_still_open(&mut client, 15);
}

#[test]
fn gateway_only_kinds_from_a_client_get_unknown_kind() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    // Each with the payload size its kind would have, so only the direction
    // is wrong.
    let cases: [(u8, usize); 6] = [
        (kind::WELCOME, 16),
        (kind::TIME_RESP, 24),
        (kind::STATE_ACK, 8),
        (kind::STATE, 41),
        (kind::PRESENCE, 25),
        (kind::ERROR, 2),
    ];
    for (index, (kind, size)) in cases.into_iter().enumerate() {
        let id = 100 + index as u64;
        client.send(kind, me, NIL, id, &vec![0u8; size]);
        client.expect_error(code::UNKNOWN_KIND, id);
    }
    assert_still_open(&mut client, 200);
}

#[test]
fn wrong_payload_size_gets_bad_frame_and_close() {
    let gw = Gateway::start("");
    let cases: [(u8, usize); 5] = [
        (kind::TIME_REQ, 4),
        (kind::TIME_REQ, 9),
        (kind::SUBSCRIBE, 3),
        (kind::UNSUBSCRIBE, 17),
        (kind::STATE_GET, 15),
    ];
    for (index, (kind, size)) in cases.into_iter().enumerate() {
        let me = Uuid::new_v4();
        let mut client = TcpClient::hello(gw.tcp_addr(), me);
        let id = 300 + index as u64;
        client.send(kind, me, NIL, id, &vec![7u8; size]);
        let error = client.expect_error(code::BAD_FRAME, id);
        assert_eq!(error.dst, me);
        client.expect_closed();
    }
}

#[test]
fn unknown_version_gets_bad_frame_with_header_id_and_close() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();

    let mut before_hello = TcpClient::connect(gw.tcp_addr());
    before_hello.send_bytes(&header(2, kind::HELLO, 0, 0, me, NIL, 0x00ab_cdef));
    let error = before_hello.expect_error(code::BAD_FRAME, 0x00ab_cdef);
    assert_eq!(error.dst, NIL);
    before_hello.expect_closed();

    let mut after_hello = TcpClient::hello(gw.tcp_addr(), me);
    after_hello.send_bytes(&header(0, kind::HEARTBEAT, 0, 0, me, NIL, 77));
    let error = after_hello.expect_error(code::BAD_FRAME, 77);
    assert_eq!(error.dst, me);
    after_hello.expect_closed();
}

#[test]
fn declared_length_above_max_gets_too_large_from_header_alone() {
    let gw = Gateway::start("[limits]\nmax_payload_bytes = 1024");
    let me = Uuid::new_v4();
    let peer = Uuid::new_v4();

    // Only the header is sent: the answer must not wait for a payload.
    let mut before_hello = TcpClient::connect(gw.tcp_addr());
    before_hello.send_bytes(&header(1, kind::DATA, 0, 1025, me, peer, 31));
    before_hello.expect_error_then_close(code::TOO_LARGE, 31);

    let mut receiver = TcpClient::hello(gw.tcp_addr(), peer);
    let mut sender = TcpClient::hello(gw.tcp_addr(), me);
    // Exactly the maximum is allowed.
    let payload: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    sender.data(peer, 32, &payload);
    let data = receiver.recv();
    assert_eq!(data.id, 32);
    assert_eq!(data.payload, payload);

    sender.send_bytes(&header(1, kind::DATA, 0, 1025, me, peer, 33));
    let error = sender.expect_error(code::TOO_LARGE, 33);
    assert_eq!(error.dst, me);
    sender.expect_closed();
}

#[test]
fn validation_order_version_then_length_then_registration() {
    let gw = Gateway::start("[limits]\nmax_payload_bytes = 1024");
    let me = Uuid::new_v4();

    // Wrong version and too large: version wins.
    let mut client = TcpClient::connect(gw.tcp_addr());
    client.send_bytes(&header(2, kind::DATA, 0, 1_000_000, me, NIL, 41));
    client.expect_error_then_close(code::BAD_FRAME, 41);

    // Too large and not registered: length wins.
    let mut client = TcpClient::connect(gw.tcp_addr());
    client.send_bytes(&header(1, kind::DATA, 0, 1_000_000, me, NIL, 42));
    client.expect_error_then_close(code::TOO_LARGE, 42);

    // Too large and unknown kind after HELLO: length wins.
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    client.send_bytes(&header(1, 0x55, 0, 1_000_000, me, NIL, 43));
    client.expect_error_then_close(code::TOO_LARGE, 43);
}

#[test]
fn validation_order_registration_then_kind_then_size() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let mut client = TcpClient::connect(gw.tcp_addr());

    // Not registered and unknown kind: not_registered, kept.
    client.send(0x55, me, NIL, 51, b"");
    client.expect_error(code::NOT_REGISTERED, 51);
    // Not registered and a gateway-only kind: not_registered, kept.
    client.send(kind::WELCOME, me, NIL, 52, &[0u8; 16]);
    client.expect_error(code::NOT_REGISTERED, 52);
    // Not registered and wrong size: not_registered, kept.
    client.send(kind::TIME_REQ, me, NIL, 53, &[0u8; 4]);
    client.expect_error(code::NOT_REGISTERED, 53);

    client.register(me);
    // Unknown kind and wrong size: unknown_kind, kept.
    client.send(kind::PRESENCE, me, NIL, 54, &[0u8; 3]);
    client.expect_error(code::UNKNOWN_KIND, 54);
    client.send(kind::WELCOME, me, NIL, 55, &[0u8; 3]);
    client.expect_error(code::UNKNOWN_KIND, 55);
    assert_still_open(&mut client, 56);
}

#[test]
fn validation_order_kind_and_size_before_src() {
    let gw = Gateway::start("");
    let me = Uuid::new_v4();
    let other = Uuid::new_v4();

    // Unknown kind and wrong src: unknown_kind, kept.
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    client.send(0x55, other, NIL, 61, b"");
    client.expect_error(code::UNKNOWN_KIND, 61);
    assert_still_open(&mut client, 62);

    // Wrong size and wrong src: bad_frame, closed.
    client.send(kind::TIME_REQ, other, NIL, 63, &[0u8; 4]);
    client.expect_error_then_close(code::BAD_FRAME, 63);
}

#[test]
fn handshake_timeout_on_tcp_sends_timeout_with_id_zero_and_closes() {
    let gw = Gateway::start("[timeouts]\nhandshake_timeout_ms = 300\ntimer_tick_ms = 20");
    let started = Instant::now();
    let mut client = TcpClient::connect(gw.tcp_addr());
    let error = client.recv();
    let elapsed = started.elapsed();
    common::tcp::assert_error(&error, code::TIMEOUT, 0);
    assert_eq!(error.dst, NIL);
    client.expect_closed();
    assert!(
        elapsed >= Duration::from_millis(300 - TIMEOUT_EARLY_MS),
        "handshake timeout fired after {elapsed:?}"
    );
}

#[test]
fn frames_other_than_hello_do_not_extend_the_handshake_timeout() {
    let gw = Gateway::start("[timeouts]\nhandshake_timeout_ms = 300\ntimer_tick_ms = 20");
    let me = Uuid::new_v4();
    let mut client = TcpClient::connect(gw.tcp_addr());
    let deadline = Instant::now() + Duration::from_secs(5);
    let started = Instant::now();
    let mut id = 0;
    let mut writable = true;
    // Send an unregistered frame every 100 ms: each is answered, none is a
    // HELLO, and none may keep the connection alive.
    let error = 'waiting: loop {
        assert!(Instant::now() < deadline, "no handshake timeout within 5 s");
        let round = Instant::now() + Duration::from_millis(100);
        if writable {
            id += 1;
            let frame = Frame::new(kind::HEARTBEAT, me, NIL, id, Vec::new());
            // A failed write means the gateway closed; its ERROR may still be
            // waiting in our receive buffer.
            writable = client.write_bytes(&frame.encode()).is_ok();
        }
        loop {
            let left = round.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match client.poll(left) {
                Event::Frame(frame)
                    if frame.kind == kind::ERROR && frame.error().0 == code::NOT_REGISTERED => {}
                Event::Frame(frame) => break 'waiting frame,
                Event::Silent => {}
                Event::Closed => panic!("connection closed without ERROR timeout"),
            }
        }
    };
    let elapsed = started.elapsed();
    common::tcp::assert_error(&error, code::TIMEOUT, 0);
    client.expect_closed();
    assert!(id >= 2, "only {id} frames sent before the timeout");
    assert!(
        elapsed >= Duration::from_millis(300 - TIMEOUT_EARLY_MS),
        "handshake timeout fired after {elapsed:?}"
    );
}

#[test]
fn handshake_timeout_on_websocket_is_sent_as_json() {
    let gw = Gateway::start("[timeouts]\nhandshake_timeout_ms = 300\ntimer_tick_ms = 20");
    let mut client = WsClient::connect(gw.ws_addr());
    let error = client.expect_json_error(code::TIMEOUT, 0);
    assert_eq!(get_uuid(&error, "dst"), NIL);
    assert_eq!(get_uuid(&error, "src"), NIL);
    client.expect_closed();
}

#[test]
fn registered_connection_is_not_subject_to_handshake_timeout() {
    let gw = Gateway::start("[timeouts]\nhandshake_timeout_ms = 300\ntimer_tick_ms = 20");
    let mut client = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    client.expect_silence(Duration::from_millis(900));
    assert_still_open(&mut client, 1);
}

#[test]
fn silent_client_times_out_and_its_subscriber_sees_offline() {
    let gw = Gateway::start("[timeouts]\nheartbeat_timeout_ms = 500\ntimer_tick_ms = 20");
    let silent_addr = Uuid::new_v4();
    let mut watcher = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());
    assert_eq!(
        watcher.subscribe(silent_addr, 1),
        Presence {
            address: silent_addr,
            online: 0,
            at_us: 0
        }
    );
    // The watcher must stay alive on its own thread while the main thread
    // watches the silent client.
    let watching = thread::spawn(move || {
        let online = watcher.recv_keepalive(Duration::from_secs(5), Duration::from_millis(150));
        let offline = watcher.recv_keepalive(Duration::from_secs(5), Duration::from_millis(150));
        (online, offline)
    });

    let mut silent = TcpClient::hello(gw.tcp_addr(), silent_addr);
    let welcomed = Instant::now();
    let error = silent.recv();
    let elapsed = welcomed.elapsed();
    common::tcp::assert_error(&error, code::TIMEOUT, 0);
    assert_eq!(error.dst, silent_addr);
    silent.expect_closed();
    assert!(
        elapsed >= Duration::from_millis(500 - TIMEOUT_EARLY_MS),
        "heartbeat timeout fired after {elapsed:?}"
    );

    let (online, offline) = watching.join().expect("watcher thread");
    assert_eq!(online.kind, kind::PRESENCE);
    assert_eq!(online.id, 0);
    let online = online.presence();
    assert_eq!((online.address, online.online), (silent_addr, 1));
    assert!(online.at_us > 0);
    assert_eq!(offline.kind, kind::PRESENCE);
    assert_eq!(offline.id, 0);
    let offline = offline.presence();
    assert_eq!((offline.address, offline.online), (silent_addr, 0));
    assert!(offline.at_us >= online.at_us);
}

#[test]
fn heartbeating_client_stays_connected_past_the_timeout() {
    let gw = Gateway::start("[timeouts]\nheartbeat_timeout_ms = 500\ntimer_tick_ms = 20");
    let me = Uuid::new_v4();
    let mut client = TcpClient::hello(gw.tcp_addr(), me);
    // A silent control proves the timeout is live in this gateway.
    let mut control = TcpClient::hello(gw.tcp_addr(), Uuid::new_v4());

    let started = Instant::now();
    let mut id = 1000;
    while started.elapsed() < Duration::from_millis(1600) {
        id += 1;
        client.heartbeat(id);
        thread::sleep(Duration::from_millis(150));
    }
    client.send(kind::TIME_REQ, me, NIL, 1, &5u64.to_be_bytes());
    client.expect_frame(kind::TIME_RESP, 1);

    control.expect_error_then_close(code::TIMEOUT, 0);
}
